#!/bin/bash
# bench/scripts/rdma-vs-perftest.sh — `strata bench rdma` against perftest
# (ib_send_lat, ib_write_bw, ib_read_bw) on the same RDMA device, same sizes,
# iterations, depth and completion moderation, server and client as two
# processes on two CPUs, alternating rounds; prints a markdown table of
# medians. A benchmark, not a test: nothing about speed is asserted (it exits
# non-zero only if a run fails or cannot be parsed).
#
# Runs INSIDE the CI guest (Soft-RoCE rxe0 on 10.0.2.15), from the host:
#
#     cargo build --release -p strata
#     ci/vm/run --timeout 900 -- bench/scripts/rdma-vs-perftest.sh [ROUNDS]
#
# or on any machine with an RDMA device (DEV=..., ADDR=<an IP of it>).
# Environment (defaults): ROUNDS (3, or $1), DEV (rxe0), ADDR (10.0.2.15),
# LAT_SIZE (2) LAT_ITERS (300), BW_SIZE (65536) BW_ITERS (200), TX_DEPTH (128),
# CQ_MOD (100, perftest's default), SERVER_CPU (0), CLIENT_CPU (1),
# STRATA (target/release/strata), TESTS ("send_lat write_bw read_bw").
# LOGDIR (unset): keep every run's client output there.
# perftest's "MB/sec" is 2^20 bytes/s, compared with strata's MiB/s.
# Under TCG (the CI guest) absolute figures mean little: compare ratios.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
rounds=${1:-${ROUNDS:-3}}
dev=${DEV:-rxe0}
addr=${ADDR:-10.0.2.15}
lat_size=${LAT_SIZE:-2}
lat_iters=${LAT_ITERS:-300}
bw_size=${BW_SIZE:-65536}
bw_iters=${BW_ITERS:-200}
tx_depth=${TX_DEPTH:-128}
cq_mod=${CQ_MOD:-100}
server_cpu=${SERVER_CPU:-0}
client_cpu=${CLIENT_CPU:-1}
tests=${TESTS:-send_lat write_bw read_bw}
strata=${STRATA:-target/release/strata}
run_timeout=${RUN_TIMEOUT:-120}

die() { echo "rdma-vs-perftest: $*" >&2; exit 1; }
[ -x "$strata" ] || die "$strata not built (cargo build --release -p strata on the host first)"
for t in ib_send_lat ib_write_bw ib_read_bw jq taskset rdma; do
    command -v "$t" >/dev/null || die "$t not installed (perftest, jq, util-linux, iproute2)"
done
[ "${STRATA_VM:-}" = 1 ] || echo "rdma-vs-perftest: not in the CI guest; using $dev at $addr" >&2
ncpu=$(nproc)
[ "$server_cpu" -lt "$ncpu" ] && [ "$client_cpu" -lt "$ncpu" ] || die "need CPUs $server_cpu and $client_cpu (have $ncpu)"

work=$(mktemp -d "${TMPDIR:-/tmp}/rdma-vs-perftest.XXXXXX")
spid=
cleanup() {
    if [ -n "$spid" ]; then kill "$spid" 2>/dev/null || true; wait "$spid" 2>/dev/null || true; fi
    spid=
}
trap 'cleanup; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

port=20000
failures=0

# wait_listen PORT: until an rdma_cm id listens on PORT (at most 30 s).
wait_listen() {
    local i
    for i in $(seq 300); do
        rdma res show cm_id 2>/dev/null | grep -q "state LISTEN .*src-addr [^ ]*:$1 " && return 0
        [ -n "$spid" ] && ! kill -0 "$spid" 2>/dev/null && return 1
        sleep 0.1
    done
    return 1
}

size_of() { [ "$1" = send_lat ] && echo "$lat_size" || echo "$bw_size"; }
iters_of() { [ "$1" = send_lat ] && echo "$lat_iters" || echo "$bw_iters"; }

# run_strata TEST -> prints "v1 [v2]" (send_lat: p50 p99 us; bw: MiB/s)
run_strata() {
    local t=$1 size iters
    size=$(size_of "$t"); iters=$(iters_of "$t")
    port=$((port + 1))
    taskset -c "$server_cpu" timeout "$run_timeout" "$strata" bench rdma --test "$t" --dev "$dev" \
        --listen "$addr:$port" --timeout 60 >"$work/server.log" 2>&1 & spid=$!
    wait_listen "$port" || { cat "$work/server.log" >&2; cleanup; return 1; }
    if ! taskset -c "$client_cpu" timeout "$run_timeout" "$strata" bench rdma --test "$t" --dev "$dev" \
        --connect "$addr:$port" --size "$size" --iters "$iters" --tx-depth "$tx_depth" --cq-mod "$cq_mod" \
        --timeout 60 --json >"$work/client.json" 2>"$work/client.err"; then
        cat "$work/client.err" "$work/server.log" >&2; cleanup; return 1
    fi
    wait "$spid" || { cat "$work/server.log" >&2; spid=; return 1; }
    spid=
    if [ "$t" = send_lat ]; then
        jq -er '"\(.latency.p50_us) \(.latency.p99_us)"' "$work/client.json"
    else
        jq -er '"\(.bandwidth.mib_per_s)"' "$work/client.json"
    fi
}

# run_perftest TEST -> same fields as run_strata, from the client's report.
run_perftest() {
    local t=$1 size iters tool args line
    size=$(size_of "$t"); iters=$(iters_of "$t")
    port=$((port + 1))
    case $t in
        send_lat) tool=ib_send_lat; args=() ;;
        write_bw) tool=ib_write_bw; args=(-t "$tx_depth" -Q "$cq_mod") ;;
        read_bw) tool=ib_read_bw; args=(-t "$tx_depth" -Q "$cq_mod") ;;
    esac
    args=(-d "$dev" -R -F -s "$size" -n "$iters" -p "$port" "${args[@]}")
    taskset -c "$server_cpu" timeout "$run_timeout" "$tool" "${args[@]}" >"$work/server.log" 2>&1 & spid=$!
    wait_listen "$port" || { cat "$work/server.log" >&2; cleanup; return 1; }
    if ! taskset -c "$client_cpu" timeout "$run_timeout" "$tool" "${args[@]}" "$addr" >"$work/client.log" 2>&1; then
        cat "$work/client.log" >&2; cleanup; return 1
    fi
    wait "$spid" || true   # the server's status is not the measurement
    spid=
    # The result line: "#bytes #iterations ..." values, first two fields = size, iterations.
    line=$(awk -v s="$size" -v n="$iters" '$1 == s && $2 == n && NF >= 4 {print; exit}' "$work/client.log")
    [ -n "$line" ] || { echo "cannot parse $tool output:" >&2; cat "$work/client.log" >&2; return 1; }
    if [ "$t" = send_lat ]; then
        # bytes iterations t_min t_max t_typical t_avg t_stdev 99% 99.9%
        awk '{print $5, $8}' <<<"$line"
    else
        # bytes iterations BW_peak BW_average MsgRate; perftest now and then
        # reports 0.00 (its own timing glitch): not a measurement.
        awk '$4 + 0 > 0 {print $4; ok = 1} END {exit !ok}' <<<"$line" \
            || { echo "$tool reported no bandwidth: $line" >&2; return 1; }
    fi
}

median() { sort -g | awk '{a[NR]=$1} END {if (NR == 0) print "nan"; else print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

: >"$work/rounds.txt"
echo "strata bench rdma vs perftest on $dev ($addr), $(uname -r), $ncpu CPUs, server CPU $server_cpu, client CPU $client_cpu, $rounds rounds"
for r in $(seq "$rounds"); do
    order="strata perftest"
    [ $((r % 2)) = 0 ] && order="perftest strata"
    for t in $tests; do
        for tool in $order; do
            ok=0
            "run_$tool" "$t" >"$work/out" && ok=1
            if [ -n "${LOGDIR:-}" ]; then
                mkdir -p "$LOGDIR"
                cat "$work"/client.* >"$LOGDIR/round$r-$tool-$t.log" 2>/dev/null || true
            fi
            rm -f "$work"/client.*
            if [ $ok = 1 ]; then
                out=$(cat "$work/out")
                echo "$tool $t $out" >>"$work/rounds.txt"
                printf 'round %d %-8s %-8s %s\n' "$r" "$tool" "$t" "$out"
            else
                # Only strata's failures fail the script; a perftest run that
                # fails is left out of its medians.
                [ "$tool" = strata ] && failures=$((failures + 1))
                printf 'round %d %-8s %-8s FAILED\n' "$r" "$tool" "$t"
            fi
        done
    done
done

col() { awk -v tool="$1" -v t="$2" -v c="$3" '$1 == tool && $2 == t {print $c}' "$work/rounds.txt" | median; }
row() {  # row TEST SIZE ITERS METRIC COLUMN
    local s p ratio
    s=$(col strata "$1" "$5"); p=$(col perftest "$1" "$5")
    ratio=$(awk -v s="$s" -v p="$p" 'BEGIN {if (p + 0 > 0 && s != "nan") printf "%.2f", s / p; else print "-"}')
    printf '| %s | %s | %s | %s | %.2f | %.2f | %s |\n' "$1" "$2" "$3" "$4" "$s" "$p" "$ratio"
}
echo
echo "Medians of $rounds alternating rounds (server CPU $server_cpu, client CPU $client_cpu; bandwidth tests: tx-depth $tx_depth, completion every $cq_mod):"
echo
echo "| test | size (B) | iterations | metric | strata | perftest | strata / perftest |"
echo "|---|---|---|---|---|---|---|"
for t in $tests; do
    case $t in
        send_lat)
            row send_lat "$lat_size" "$lat_iters" "one-way latency p50 (typical), us" 3
            row send_lat "$lat_size" "$lat_iters" "one-way latency p99, us" 4 ;;
        write_bw) row write_bw "$bw_size" "$bw_iters" "bandwidth, MiB/s" 3 ;;
        read_bw) row read_bw "$bw_size" "$bw_iters" "bandwidth, MiB/s" 3 ;;
    esac
done
if [ "$failures" -gt 0 ]; then
    echo "rdma-vs-perftest: $failures run(s) failed" >&2
    exit 1
fi
