#!/bin/bash
# strata's SRP initiator (bdev_srp_attach, provider verbs on rxe0) against
# LIO's ib_srpt and against strata's own SRP target, each LU exported over
# vhost-user-blk and checked with `strata verify vhost` (4 KiB, 1 MiB and
# 4 MiB requests); kill -9 of the target under load (reconnect, no error,
# full read-back); SIGSTOP of the target (command time-out, abort, reset,
# fast_io_fail: I/O returns with an error within a bound; recovery after
# SIGCONT). Logs land in target/vm-results/50-srp-initiator/. Bounded by a
# time-out.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build -q --release -p strata
res=target/vm-results/50-srp-initiator
rm -rf "$res"; mkdir -p "$res"
exec ci/vm/run --timeout 540 --results "$res" -- initiator/tests/vm/srp-initiator.sh
