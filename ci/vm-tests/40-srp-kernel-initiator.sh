#!/bin/bash
# The SRP target against the Linux kernel's ib_srp initiator on rxe: login,
# capacity, VPD serial and device id, fio crc32c verify, 4 MiB direct I/O
# with cmd_sg_entries=255 and =1, ext4 across logout/login, logout loops
# under fio, ACL reject, sg_reset during I/O. Bounded by a time-out.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build -q --release -p srpt --example srpt-server
exec ci/vm/run --timeout 1500 -- srpt/tests/vm/srp-kernel-initiator.sh
