#!/bin/bash
# bench/scripts/vhost-vs-qsd.sh — strata's vhost-user-blk target against
# qemu-storage-daemon, both exporting a null device, driven by the same
# libblkio client (`strata bench vhost`), server on one CPU and client on the
# other, alternating rounds; quotes medians (these machines are noisy).
# A benchmark, not a test: nothing is asserted.
#
# Usage: bench/scripts/vhost-vs-qsd.sh [ROUNDS] [SECS] [poll|event]
#   Reports 4 KiB random reads at depth 1 (p50/p99 latency, IOPS) and at
#   depth 32 (IOPS). strata's null bdev runs with zero_reads=false, like
#   qemu-storage-daemon's null-co (read-zeroes=off) and SPDK's null bdev.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
rounds=${1:-13}
secs=${2:-3}
mode=${3:-poll}
server_cpu=${SERVER_CPU:-0}
client_cpu=${CLIENT_CPU:-1}
strata=${STRATA:-target/release/strata}
[ -x "$strata" ] || cargo build --release -p strata
dir=$root/target/bench/vhost-vs-qsd
mkdir -p "$dir"
ssock=$dir/strata.sock; qsock=$dir/qsd.sock; rpc=$dir/rpc.sock
cat > "$dir/strata.json" <<JSON
{"cores": [$server_cpu], "calls": [
  {"method": "bdev_null_create", "params": {"name": "null0", "num_blocks": 2097152, "block_size": 512, "zero_reads": false}},
  {"method": "vhost_blk_create", "params": {"name": "vhost0", "socket": "$ssock", "bdev": "null0", "num_queues": 1}}]}
JSON
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; pid=; rm -f "$ssock" "$qsock"; }
trap cleanup EXIT INT TERM
wait_sock() { for _ in $(seq 200); do [ -S "$1" ] && return 0; sleep 0.05; done; echo "server socket $1 did not appear" >&2; return 1; }
start_strata() {
    "$strata" serve --config "$dir/strata.json" --rpc-socket "$rpc" >"$dir/strata.log" 2>&1 & pid=$!
    wait_sock "$ssock"
}
start_qsd() {
    taskset -c "$server_cpu" qemu-storage-daemon \
        --blockdev driver=null-co,node-name=null0,size=1073741824 \
        --export type=vhost-user-blk,id=exp0,node-name=null0,addr.type=unix,addr.path="$qsock",writable=on,num-queues=1 \
        >"$dir/qsd.log" 2>&1 & pid=$!
    wait_sock "$qsock"
}
flag=; [ "$mode" = poll ] && flag=--poll
client() {  # client SOCK QD -> "iops p50 p99"
    taskset -c "$client_cpu" "$strata" bench vhost --socket "$1" $flag --qd "$2" --time "$secs" --json \
        | jq -r '"\(.iops) \(.latency.p50_us) \(.latency.p99_us)"'
}
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
: > "$dir/rounds.txt"
for r in $(seq "$rounds"); do
    for srv in strata qsd; do
        if [ $srv = strata ]; then start_strata; sock=$ssock; else start_qsd; sock=$qsock; fi
        read -r i1 p50 p99 < <(client "$sock" 1)
        read -r i32 _ _ < <(client "$sock" 32)
        cleanup
        echo "$srv $i1 $p50 $p99 $i32" >> "$dir/rounds.txt"
        printf 'round %2d %-6s qd1: %9.0f IOPS p50 %6.2f us p99 %7.2f us | qd32: %9.0f IOPS\n' "$r" "$srv" "$i1" "$p50" "$p99" "$i32"
    done
done
echo
echo "4 KiB randread, $mode client queue, server on CPU $server_cpu, client on CPU $client_cpu, $rounds alternating rounds x ${secs}s, medians:"
echo "| server | qd1 p50 us | qd1 p99 us | qd1 IOPS | qd32 IOPS |"
echo "|---|---|---|---|---|"
for srv in strata qsd; do
    col() { awk -v s=$srv -v c="$1" '$1==s {print $c}' "$dir/rounds.txt" | median; }
    name=$srv; [ $srv = qsd ] && name="qemu-storage-daemon (null-co)"; [ $srv = strata ] && name="strata (null bdev)"
    printf '| %s | %.2f | %.2f | %.0f | %.0f |\n' "$name" "$(col 3)" "$(col 4)" "$(col 2)" "$(col 5)"
done
