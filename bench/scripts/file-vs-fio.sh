#!/bin/bash
# bench/scripts/file-vs-fio.sh — strata's file bdev (io_uring, O_DIRECT)
# against fio --ioengine=io_uring on the same file, same block size, same
# queue depth, one job, alternating rounds; prints each round and the
# medians. This is a benchmark, not a test: nothing is asserted.
#
# Usage: bench/scripts/file-vs-fio.sh [FILE] [SIZE_MB] [QD] [ROUNDS] [SECS]
#   FILE defaults to target/bench/file-vs-fio.img (created and filled with
#   real data first, so reads hit allocated blocks, not unwritten extents).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
file=${1:-target/bench/file-vs-fio.img}
size_mb=${2:-1024}
qd=${3:-32}
rounds=${4:-5}
secs=${5:-5}
strata=${STRATA:-target/release/strata}
[ -x "$strata" ] || cargo build --release -p strata
mkdir -p "$(dirname "$file")"
if [ ! -f "$file" ] || [ "$(stat -c %s "$file")" -ne $((size_mb << 20)) ]; then
    echo "filling $file ($size_mb MiB)..."
    fio --name=fill --filename="$file" --size="${size_mb}M" --rw=write --bs=1M --direct=1 \
        --ioengine=io_uring --iodepth=8 --output=/dev/null
fi
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
s_iops=(); f_iops=(); s_p50=(); f_p50=(); s_p99=(); f_p99=()
for r in $(seq "$rounds"); do
    j=$("$strata" bench bdev --file "$file" --block-size 512 --cores 1 --bs 4096 --qd "$qd" \
        --rw randread --time "$secs" --json)
    si=$(jq '.iops' <<<"$j"); sp50=$(jq '.latency.p50_us' <<<"$j"); sp99=$(jq '.latency.p99_us' <<<"$j")
    fj=$(fio --name=r --filename="$file" --size="${size_mb}M" --rw=randread --bs=4k --direct=1 \
        --ioengine=io_uring --iodepth="$qd" --numjobs=1 --time_based --runtime="$secs" \
        --cpus_allowed=1 --output-format=json)
    fi_=$(jq '.jobs[0].read.iops' <<<"$fj")
    fp50=$(jq '.jobs[0].read.clat_ns.percentile["50.000000"] / 1000' <<<"$fj")
    fp99=$(jq '.jobs[0].read.clat_ns.percentile["99.000000"] / 1000' <<<"$fj")
    printf 'round %d: strata %8.0f IOPS p50 %6.1f us p99 %7.1f us | fio %8.0f IOPS p50 %6.1f us p99 %7.1f us\n' \
        "$r" "$si" "$sp50" "$sp99" "$fi_" "$fp50" "$fp99"
    s_iops+=("$si"); f_iops+=("$fi_"); s_p50+=("$sp50"); f_p50+=("$fp50"); s_p99+=("$sp99"); f_p99+=("$fp99")
done
ms=$(printf '%s\n' "${s_iops[@]}" | median); mf=$(printf '%s\n' "${f_iops[@]}" | median)
echo
echo "4 KiB randread, qd $qd, 1 job/1 reactor on CPU 1, $rounds rounds x ${secs}s, medians:"
printf '| %-28s | %10s | %8s | %8s |\n' "" IOPS "p50 us" "p99 us"
printf '| %-28s | %10.0f | %8.1f | %8.1f |\n' "strata file bdev (io_uring)" "$ms" \
    "$(printf '%s\n' "${s_p50[@]}" | median)" "$(printf '%s\n' "${s_p99[@]}" | median)"
printf '| %-28s | %10.0f | %8.1f | %8.1f |\n' "fio --ioengine=io_uring" "$mf" \
    "$(printf '%s\n' "${f_p50[@]}" | median)" "$(printf '%s\n' "${f_p99[@]}" | median)"
awk -v a="$ms" -v b="$mf" 'BEGIN { printf "strata / fio = %.1f%%\n", 100 * a / b }'
