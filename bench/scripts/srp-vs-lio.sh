#!/bin/bash
# bench/scripts/srp-vs-lio.sh — strata's SRP target against the kernel's LIO
# ib_srpt, both driven by the kernel initiator (ib_srp) over Soft-RoCE in the
# CI guest, same backing file, alternating rounds in the same run; fio 4 KiB
# randread and randwrite (libaio, direct, one job, depth 32). Prints each
# round and a markdown table of medians. A benchmark, not a test.
#
# Usage: bench/scripts/srp-vs-lio.sh [--] [ARGS for srp-vs-lio-inner.sh]
#   Knobs (environment, forwarded into the guest; defaults in the inner
#   script's header): ROUNDS RUNTIME RAMP IODEPTH QUEUE_SIZE SIZE_MB
#   STRATA_CORES STRATA_IDLE_US TARGETS FIO_CPUS BACKEND
#   e.g. ROUNDS=3 STRATA_CORES=0,1 bench/scripts/srp-vs-lio.sh
#
# The guest is TCG (no KVM): absolute numbers are emulation-bound; only the
# side-by-side ratio within one run means something. Per-run fio JSON, the
# strata log and dmesg land in target/bench/srp-vs-lio/.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
strata=target/release/strata
[ -x "$strata" ] || cargo build --release -p strata
res=target/bench/srp-vs-lio
mkdir -p "$res"
envs=()
for v in ROUNDS RUNTIME RAMP IODEPTH QUEUE_SIZE SIZE_MB STRATA_CORES STRATA_IDLE_US TARGETS FIO_CPUS STRATA_LOG BACKEND; do
    if [ -n "${!v:-}" ]; then envs+=(--env "$v=${!v}"); fi
done
[ "${1:-}" = -- ] && shift
exec ci/vm/run --timeout "${VM_TIMEOUT:-1200}" --results "$res" "${envs[@]}" -- bench/scripts/srp-vs-lio-inner.sh "$@"
