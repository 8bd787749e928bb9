#!/bin/bash
# `strata bench rdma` on real verbs: send_lat, write_bw and read_bw, each as
# a server and a client process on rxe0 in the CI guest, a few iterations.
# Proves the benchmark works end to end (rdma_cm, MRs, SEND/RECV, RDMA
# WRITE/READ, polled CQs); asserts no timings. Fails if any run fails.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
bin=${STRATA:-target/release/strata}
[ -x "$bin" ] || cargo build --release -p strata
case "$(readlink -f "$bin")" in /tmp/*) echo "30-bench-rdma-smoke: $bin is under /tmp, hidden in the guest" >&2; exit 1 ;; esac
# The loopback provider first (same binary, both ends in one process).
for t in send_lat write_bw read_bw; do
    "$bin" bench rdma --provider loopback --test "$t" --iters 200 --size 4096 --timeout 20 >/dev/null
done
exec ci/vm/run --timeout 300 -- '
set -euo pipefail
port=18600
for t in send_lat write_bw read_bw; do
    port=$((port + 1))
    timeout 90 '"$bin"' bench rdma --test $t --dev rxe0 --listen 10.0.2.15:$port --timeout 60 --json > /tmp/server.json & spid=$!
    if ! timeout 90 '"$bin"' bench rdma --test $t --dev rxe0 --connect 10.0.2.15:$port --size 8192 --iters 50 --tx-depth 16 --timeout 60 --json > /tmp/client.json; then
        echo "bench rdma $t: client failed"; kill $spid 2>/dev/null; exit 1
    fi
    wait $spid || { echo "bench rdma $t: server failed"; exit 1; }
    jq -e ".role == \"client\" and .iters == 50 and .dev == \"rxe0\" and (if .test == \"send_lat\" then .latency.p50_us > 0 else .bandwidth.bytes == 50 * 8192 end)" /tmp/client.json >/dev/null \
        || { echo "bench rdma $t: unexpected report"; cat /tmp/client.json; exit 1; }
    jq -e ".role == \"server\" and .iters == 50 and .size == 8192" /tmp/server.json >/dev/null \
        || { echo "bench rdma $t: unexpected server report"; cat /tmp/server.json; exit 1; }
    echo "bench rdma $t on rxe0: ok"
done
'
