#!/bin/bash
# bench/scripts/raid1-vs-malloc.sh — RAID1 over two malloc bdevs against one
# bare malloc bdev, 4 KiB random reads and writes, one reactor, same
# process and run, alternating rounds; prints medians. A benchmark, not a
# test: nothing is asserted.
#
# Usage: bench/scripts/raid1-vs-malloc.sh [ROUNDS] [SECS] [QD] [CPU]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
rounds=${1:-5}; secs=${2:-3}; qd=${3:-32}; cpu=${4:-1}
strata=${STRATA:-target/release/strata}
[ -x "$strata" ] || cargo build --release -p strata
dir=$root/target/bench/raid1; mkdir -p "$dir"
cat > "$dir/raid1.json" <<JSON
{"calls": [
  {"method": "bdev_malloc_create", "params": {"name": "m0", "num_blocks": 262144, "block_size": 4096}},
  {"method": "bdev_malloc_create", "params": {"name": "m1", "num_blocks": 262144, "block_size": 4096}},
  {"method": "bdev_raid1_create", "params": {"name": "r0", "members": ["m0", "m1"]}},
  {"method": "bdev_malloc_create", "params": {"name": "bare", "num_blocks": 262144, "block_size": 4096}}]}
JSON
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
: > "$dir/rounds.txt"
for r in $(seq "$rounds"); do
    for rw in randread randwrite; do
        for b in bare r0; do
            j=$("$strata" bench bdev --config "$dir/raid1.json" --bdev "$b" --cores "$cpu" --qd "$qd" --bs 4096 --rw $rw --time "$secs" --json)
            i=$(jq .iops <<<"$j"); p50=$(jq .latency.p50_us <<<"$j")
            echo "$rw $b $i $p50" >> "$dir/rounds.txt"
            printf 'round %d %-9s %-4s %10.0f IOPS  p50 %.2f us\n' "$r" "$rw" "$b" "$i" "$p50"
        done
    done
done
echo
echo "4 KiB, qd $qd, one reactor on CPU $cpu, $rounds alternating rounds x ${secs}s, medians:"
echo "| workload | bare malloc IOPS | raid1(malloc, malloc) IOPS | raid1 / bare |"
echo "|---|---|---|---|"
for rw in randread randwrite; do
    b=$(awk -v w=$rw '$1==w && $2=="bare" {print $3}' "$dir/rounds.txt" | median)
    r=$(awk -v w=$rw '$1==w && $2=="r0" {print $3}' "$dir/rounds.txt" | median)
    awk -v w=$rw -v b="$b" -v r="$r" 'BEGIN { printf "| %s | %.0f | %.0f | %.1f%% |\n", w, b, r, 100*r/b }'
done
