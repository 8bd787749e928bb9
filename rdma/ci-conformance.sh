#!/bin/bash
# rdma/ci-conformance.sh — the rdma conformance suite on real verbs (Soft-RoCE)
# inside the CI VM. Builds the suite on the host (the guest runs the host's
# root read-only), then runs it in a TCG guest with rxe0 on 10.0.2.15.
# Fails (non-zero) if any case fails, if rxe cannot be brought up (the
# harness exits 125), or on the time-out (124).
#
# Usage: rdma/ci-conformance.sh [extra rdma-conformance args, e.g. --case NAME]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build -p rdma --release --bins
target=$(cargo metadata --format-version 1 --no-deps 2>/dev/null \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
bin=${target:-$root/target}/release/rdma-conformance
[ -x "$bin" ] || { echo "ci-conformance: $bin not built" >&2; exit 1; }
case "$bin" in /tmp/*) echo "ci-conformance: $bin is under /tmp, hidden in the guest" >&2; exit 1 ;; esac
# Loopback first (cheap, same binary), then the real thing.
"$bin" --provider loopback "$@"
exec ci/vm/run --timeout 300 -- "$bin" --provider verbs --dev rxe0 --addr 10.0.2.15 --timeout 20 "$@"
