#!/bin/bash
# bench/scripts/srp-initiator-vs-ib_srp.sh — strata's SRP initiator against
# the kernel's ib_srp, both logging in to the same LIO ib_srpt target (one
# LU over a file on guest tmpfs) over Soft-RoCE in one CI guest. Rounds
# alternate:
#   ib_srp     add_target, fio (libaio, direct, 1 job) on the /dev/sdX it makes
#   strata     `strata bench bdev --config FILE --bdev srp0`, the config
#              attaching the LU with bdev_srp_attach (provider verbs)
# with 4 KiB randread and randwrite at depth 1 and 32, the same login knobs
# for both (ch_count 1, queue_size, max_sect 1024, immediate data on). Prints
# each measurement and a markdown table of medians (IOPS, p50, p99). A
# benchmark, not a test: nothing about speed is asserted; it exits non-zero
# only when a run fails.
#
# Usage (host): bench/scripts/srp-initiator-vs-ib_srp.sh
#   builds target/release/strata if missing and runs itself in the guest
#   (ci/vm/run); per-run fio/bench JSON, logs and dmesg land in
#   target/bench/srp-initiator-vs-ib_srp/.
# Knobs (environment, forwarded into the guest):
#   ROUNDS=3          rounds (each: ib_srp then strata)
#   RUNTIME=10 RAMP=2 seconds per point (fio: measured / ramp; strata bench
#                     has no ramp: it runs RUNTIME)
#   DEPTHS="1 32"     queue depths
#   WORKLOADS="randread randwrite"
#   QUEUE_SIZE=64     queue_size (credits) and ib_srp's max_cmd_per_lun
#   SIZE_MB=256       LU size
#   BACKEND=file      file: LIO fileio on the tmpfs file; loop: LIO iblock on
#                     /dev/loop0 over it
#   STRATA_CORES=0    strata bench's reactor cores
#   FIO_CPUS=         pin fio (--cpus_allowed); empty: unpinned
#   INITIATORS="ib_srp strata"
#   VM_TIMEOUT=1500   guest time-out (host side)
# The guest is TCG: absolute numbers are emulation-bound; only the
# side-by-side ratio within one run means something. strata's latency is
# submit-to-completion as its poller sees it; fio's is clat.
set -u
SELF=$(readlink -f "$0")
ROOT=$(cd "$(dirname "$SELF")/../.." && pwd)
KNOBS="ROUNDS RUNTIME RAMP DEPTHS WORKLOADS QUEUE_SIZE SIZE_MB BACKEND STRATA_CORES FIO_CPUS INITIATORS STRATA_LOG"

# ------------------------------------------------------------------ host side
if [ -z "${STRATA_VM:-}" ] && [ "${1:-}" != __inner ]; then
    set -e
    cd "$ROOT"
    [ -x target/release/strata ] || cargo build --release -p strata
    res=target/bench/srp-initiator-vs-ib_srp
    mkdir -p "$res"
    envs=()
    for v in $KNOBS; do
        if [ -n "${!v:-}" ]; then envs+=(--env "$v=${!v}"); fi
    done
    exec ci/vm/run --timeout "${VM_TIMEOUT:-1500}" --results "$res" "${envs[@]}" -- "bench/scripts/srp-initiator-vs-ib_srp.sh" __inner
fi

# ------------------------------------------------------------------ guest side
cd "$ROOT" || exit 125
STRATA=${STRATA:-$ROOT/target/release/strata}
RES=${VM_RESULTS:-/tmp/srp-initiator-vs-ib_srp}
ROUNDS=${ROUNDS:-3}
RUNTIME=${RUNTIME:-10}
RAMP=${RAMP:-2}
DEPTHS=${DEPTHS:-1 32}
WORKLOADS=${WORKLOADS:-randread randwrite}
QUEUE_SIZE=${QUEUE_SIZE:-64}
SIZE_MB=${SIZE_MB:-256}
BACKEND=${BACKEND:-file}
STRATA_CORES=${STRATA_CORES:-0}
FIO_CPUS=${FIO_CPUS:-}
INITIATORS=${INITIATORS:-ib_srp strata}

IP=10.0.2.15
LIO_PORT=5556
INI_EXT=0000000000000001
SRPDIR=/sys/class/infiniband_srp/srp-rxe0-1
CFS=/sys/kernel/config/target
BACKING=/tmp/backing.img
LOOPDEV=/dev/loop0
GID0=$(cat /sys/class/infiniband/rxe0/ports/1/gids/0 2>/dev/null)
LIO_WWN=${GID0#fe80:0000:0000:0000:}
LIO_TPG=$LIO_WWN
LIO_ACL=$IP
LIO_HBA=fileio_0
[ "$BACKEND" = loop ] && LIO_HBA=iblock_0
LIO_BS=$CFS/core/$LIO_HBA/lio0

# shellcheck source=srp-common.sh
. "$ROOT/bench/scripts/srp-common.sh"

# LIO up/down: their own processes, so that a configfs write that hangs is
# bounded by `timeout` too (as bench/scripts/srp-vs-lio-inner.sh).
# shellcheck source=../../ci/vm/lio.sh
. "$ROOT/ci/vm/lio.sh"
if [ "${1:-}" = __lio_up ]; then
    LIO_CONTROL="$( [ "$BACKEND" = loop ] && echo "udev_path=$LOOPDEV" || echo "fd_dev_name=$BACKING,fd_dev_size=$((SIZE_MB << 20))")" LIO_SERIAL=lio0-ini-vs-ib_srp lio_up
    exit 0
fi
if [ "${1:-}" = __lio_down ]; then
    lio_down
    exit $?
fi

mkdir -p "$RES" /tmp/work
cd /tmp/work || exit 125
LIO_UP=0
DEV=

diag() { echo "---- dmesg (tail) ----"; dmesg | tail -30; }
cleanup() {
    for p in /sys/class/srp_remote_ports/port-*; do
        [ -e "$p/delete" ] && timeout 60 sh -c "echo 1 > $p/delete"
    done
    [ "$LIO_UP" = 1 ] && timeout 60 "$SELF" __lio_down
    [ "$BACKEND" = loop ] && timeout 30 losetup -d "$LOOPDEV" 2>/dev/null
    dmesg > "$RES/dmesg.txt" 2>/dev/null
}
trap cleanup EXIT
die() { log "FAIL: $*"; diag; exit 1; }

kernel_logout() {
    local p
    for p in /sys/class/srp_remote_ports/port-*; do
        [ -e "$p/delete" ] || continue
        timeout 60 sh -c "echo 1 > $p/delete" || return 1
    done
    for _ in $(seq 300); do remote_ports > /dev/null || return 0; sleep 0.2; done
    return 1
}
kernel_login() {
    local opts="id_ext=$LIO_ID,ioc_guid=$LIO_ID,dest=$IP:$LIO_PORT,initiator_ext=$INI_EXT,ch_count=1,queue_size=$QUEUE_SIZE,max_cmd_per_lun=$QUEUE_SIZE,max_sect=1024"
    log "add_target $opts"
    timeout 60 sh -c "echo '$opts' > $SRPDIR/add_target"
}

# run_fio NAME RW DEPTH -> "iops p50_us p99_us"
run_fio() {
    local name=$1 rw=$2 qd=$3 out="$RES/$1.json" cpus=()
    [ -n "$FIO_CPUS" ] && cpus=(--cpus_allowed="$FIO_CPUS")
    timeout $((RUNTIME + RAMP + 90)) fio --name="$rw" --filename="$DEV" --rw="$rw" --bs=4k --direct=1 \
        --ioengine=libaio --iodepth="$qd" --numjobs=1 --time_based --runtime="$RUNTIME" \
        --ramp_time="$RAMP" --norandommap --randrepeat=0 --group_reporting "${cpus[@]}" \
        --output-format=json --output="$out" > "$RES/$name.stderr" 2>&1 || {
        { log "fio $name failed (rc $?)"; cat "$RES/$name.stderr"; } >&2; return 1; }
    local dir=read; [ "$rw" = randwrite ] && dir=write
    jq -r --arg d "$dir" '.jobs[0] as $j | if ($j.error // 0) != 0 then "ERR \($j.error)" else
        "\($j[$d].iops) \(($j[$d].clat_ns.percentile["50.000000"] // 0) / 1000) \(($j[$d].clat_ns.percentile["99.000000"] // 0) / 1000)" end' "$out"
}

# run_strata NAME RW DEPTH -> "iops p50_us p99_us"
run_strata() {
    local name=$1 rw=$2 qd=$3 out="$RES/$1.json"
    timeout $((RUNTIME + 120)) "$STRATA" bench bdev --config /tmp/srp-bench.json --bdev srp0 \
        --cores "$STRATA_CORES" --bs 4096 --qd "$qd" --rw "$rw" --time "$RUNTIME" --json \
        > "$out" 2> "$RES/$name.stderr" || {
        { log "strata bench $name failed (rc $?)"; tail -20 "$RES/$name.stderr"; } >&2; return 1; }
    jq -r 'if .errors != 0 then "ERR \(.errors)" else "\(.iops) \(.latency.p50_us) \(.latency.p99_us)" end' "$out"
}

# measure INITIATOR ROUND -> appends "initiator workload depth round iops p50 p99" to points.txt
measure() {
    local ini=$1 r=$2 rw qd v
    for rw in $WORKLOADS; do
        for qd in $DEPTHS; do
            if [ "$ini" = ib_srp ]; then v=$(run_fio "$ini-r$r-$rw-qd$qd" "$rw" "$qd") || return 1
            else v=$(run_strata "$ini-r$r-$rw-qd$qd" "$rw" "$qd") || return 1; fi
            case "$v" in *ERR*|"") log "$ini $rw qd$qd: errors ($v)"; return 1 ;; esac
            echo "$ini $rw $qd $r $v" >> "$RES/points.txt"
            # shellcheck disable=SC2086
            set -- $v
            printf 'round %d %-7s %-9s qd %-3d %9.0f IOPS  p50 %9.1f us  p99 %9.1f us\n' "$r" "$ini" "$rw" "$qd" "$1" "$2" "$3"
        done
    done
}

round_ib_srp() {
    kernel_login || die "ib_srp: add_target failed"
    DEV=$(find_disk LIO-ORG) || die "ib_srp: no LIO-ORG disk appeared"
    echo none > "/sys/block/${DEV##*/}/queue/scheduler" 2>/dev/null
    [ "$1" = 1 ] && log "ib_srp: $DEV ($(blockdev --getsize64 "$DEV") bytes)"
    measure ib_srp "$1" || die "ib_srp: a measurement failed"
    kernel_logout || die "ib_srp: logout did not complete"
}
round_strata() {
    measure strata "$1" || die "strata: a measurement failed (see $RES/strata-r$1-*.stderr)"
}

# ------------------------------------------------------------------ setup
log "guest: $(nproc) vCPUs, kernel $(uname -r); $ROUNDS rounds of: $INITIATORS; $WORKLOADS at depths $DEPTHS;" \
    "${RUNTIME}s per point; queue_size $QUEUE_SIZE; LU $SIZE_MB MiB ($BACKEND)"
[ -x "$STRATA" ] || die "$STRATA missing (cargo build --release -p strata on the host)"
[ -d "$SRPDIR" ] || die "$SRPDIR missing (ib_srp not loaded?)"
: > "$RES/points.txt"
timeout 120 dd if=/dev/zero of="$BACKING" bs=1M count="$SIZE_MB" status=none || die "dd failed"
if [ "$BACKEND" = loop ]; then
    timeout 30 losetup "$LOOPDEV" "$BACKING" || die "losetup failed"
    echo none > "/sys/block/${LOOPDEV##*/}/queue/scheduler" 2>/dev/null
fi
# ib_srpt's default srp_max_req_size (2116) rejects a login asking for 8 KiB
# of immediate data (both initiators ask by default); blktests uses 8260.
if [ "$(cat /sys/module/ib_srpt/parameters/srp_max_req_size 2>/dev/null)" != 8260 ]; then
    [ -d "$CFS/srpt" ] && rmdir "$CFS/srpt"
    timeout 60 modprobe -r ib_srpt || die "modprobe -r ib_srpt failed"
    timeout 60 modprobe ib_srpt srp_max_req_size=8260 || die "modprobe ib_srpt failed"
fi
LIO_ID=$(cat /sys/module/ib_srpt/parameters/srpt_service_guid); LIO_ID=${LIO_ID#0x}
timeout 60 "$SELF" __lio_up || die "LIO configfs setup failed"
LIO_UP=1
log "LIO: port $CFS/srpt/$LIO_WWN, service guid $LIO_ID, rdma_cm port $LIO_PORT, backstore $LIO_HBA"
cat > /tmp/srp-bench.json <<JSON
{"calls": [
  {"method": "bdev_srp_attach", "params": {"name": "srp0", "dest": "$IP:$LIO_PORT", "id_ext": "0x$LIO_ID",
     "ioc_guid": "0x$LIO_ID", "initiator_ext": "0x$INI_EXT", "ch_count": 1, "queue_size": $QUEUE_SIZE,
     "max_sect": 1024, "immediate_data": true, "provider": "verbs"}}]}
JSON
cp /tmp/srp-bench.json "$RES/srp-bench.json"

# ------------------------------------------------------------------ rounds
for r in $(seq "$ROUNDS"); do
    for i in $INITIATORS; do
        case $i in
            ib_srp) round_ib_srp "$r" ;;
            strata) round_strata "$r" ;;
            *) die "unknown initiator $i" ;;
        esac
    done
done

col() { # initiator workload depth column
    awk -v i="$1" -v w="$2" -v q="$3" -v c="$4" '$1 == i && $2 == w && $3 == q {print $c}' "$RES/points.txt" | median
}
echo
echo "4 KiB random I/O against LIO ib_srpt ($BACKEND backstore, $SIZE_MB MiB on guest tmpfs) over rxe0 (TCG guest, $(nproc) vCPUs);"
echo "ch_count 1, queue_size $QUEUE_SIZE, max_sect 1024, immediate data; ${RUNTIME}s per point; medians of $ROUNDS alternating rounds."
echo "ib_srp: fio libaio direct, 1 job on /dev/sdX (clat). strata: \`strata bench bdev\` on the bdev_srp_attach bdev, reactor(s) [$STRATA_CORES]."
echo
echo "| workload | depth | ib_srp IOPS | p50 us | p99 us | strata IOPS | p50 us | p99 us | strata/ib_srp IOPS |"
echo "|---|---|---|---|---|---|---|---|---|"
for rw in $WORKLOADS; do
    for qd in $DEPTHS; do
        ki=$(col ib_srp "$rw" "$qd" 5); si=$(col strata "$rw" "$qd" 5)
        printf '| %s | %s | %.0f | %.1f | %.1f | %.0f | %.1f | %.1f | %s |\n' "$rw" "$qd" \
            "$ki" "$(col ib_srp "$rw" "$qd" 6)" "$(col ib_srp "$rw" "$qd" 7)" \
            "$si" "$(col strata "$rw" "$qd" 6)" "$(col strata "$rw" "$qd" 7)" \
            "$(awk -v a="$si" -v b="$ki" 'BEGIN {if (b > 0) printf "%.2fx", a / b; else print "-"}')"
    done
done
