#!/bin/bash
# bench/scripts/srp-vs-lio-inner.sh — runs inside the CI guest (started by
# bench/scripts/srp-vs-lio.sh through ci/vm/run). strata's SRP target and the
# kernel's LIO ib_srpt export the same file (/tmp, guest tmpfs); the kernel
# initiator ib_srp logs in to each in turn (rdma_cm over rxe0) and fio runs
# 4 KiB randread and randwrite against the /dev/sdX it gets. Rounds
# alternate strata, LIO, strata, LIO, ...; the table quotes medians.
#
# Environment (defaults):
#   ROUNDS=2          rounds (each: strata then LIO)
#   RUNTIME=12 RAMP=2 fio seconds per workload (measured / ramp, not counted)
#   IODEPTH=32        fio iodepth (libaio, direct, numjobs=1)
#   QUEUE_SIZE=64     ib_srp queue_size and max_cmd_per_lun (both targets)
#   SIZE_MB=256       backing file size
#   BACKEND=loop      loop: both targets export /dev/loop0 over the tmpfs file
#                     (strata: file bdev on the block device, O_DIRECT; LIO:
#                     target_core_iblock). file: both open the tmpfs file
#                     itself (strata: buffered, tmpfs has no O_DIRECT; LIO:
#                     target_core_fileio).
#   STRATA_CORES=0    strata reactor cores ("0" or "0,1")
#   STRATA_IDLE_US=10 strata idle_sleep_us (nap after 1024 idle polls)
#   TARGETS="strata lio"  add "lio-spin" for a control: LIO with a busy loop
#                     pinned to strata's first core (what a polling reactor
#                     costs the rest of a 2-vCPU guest, without strata)
#   FIO_CPUS=         pin fio (--cpus_allowed), empty: unpinned
# Every step is bounded by `timeout`; a failure prints the dmesg tail and the
# strata log and exits non-zero.
set -u
SELF=$(readlink -f "$0")
cd "$(dirname "$SELF")/../.." || exit 125
ROOT=$PWD
STRATA=${STRATA:-$ROOT/target/release/strata}
RES=${VM_RESULTS:-/tmp/srp-vs-lio}
ROUNDS=${ROUNDS:-2}
RUNTIME=${RUNTIME:-12}
RAMP=${RAMP:-2}
IODEPTH=${IODEPTH:-32}
QUEUE_SIZE=${QUEUE_SIZE:-64}
SIZE_MB=${SIZE_MB:-256}
STRATA_CORES=${STRATA_CORES:-0}
STRATA_IDLE_US=${STRATA_IDLE_US:-10}
TARGETS=${TARGETS:-strata lio}
FIO_CPUS=${FIO_CPUS:-}
BACKEND=${BACKEND:-loop}

BACKING=/tmp/backing.img
BYTES=$((SIZE_MB << 20))
IP=10.0.2.15
STRATA_PORT=5555
LIO_PORT=5556
STRATA_ID=0002c90300a0b0c0
INI_EXT=0000000000000001
SRPDIR=/sys/class/infiniband_srp/srp-rxe0-1
CFS=/sys/kernel/config/target
SOCK=/tmp/strata.sock
# LIO names the target port after the port GID: the GUID form
# (xxxx:xxxx:xxxx:xxxx, the interface id of GID 0) is the one whose ACLs are
# keyed by the initiator's IP address for rdma_cm logins (ib_srpt:
# sport->port_guid_id, ch->sess_name = "%pIS" of the source address).
GID0=$(cat /sys/class/infiniband/rxe0/ports/1/gids/0)
LIO_WWN=${GID0#fe80:0000:0000:0000:}
LIO_TPG=$LIO_WWN
LIO_ACL=$IP
LIO_HBA=fileio_0
[ "$BACKEND" = loop ] && LIO_HBA=iblock_0
LIO_BS=$CFS/core/$LIO_HBA/lio0
LOOPDEV=/dev/loop0
DISK=$BACKING
[ "$BACKEND" = loop ] && DISK=$LOOPDEV

# shellcheck source=srp-common.sh
. "$ROOT/bench/scripts/srp-common.sh"

# ------------------------------------------------------------------ LIO
# These run as their own process (`timeout 60 $SELF __lio_up`) so that a
# configfs write that hangs is bounded too.
# shellcheck source=../../ci/vm/lio.sh
. "$ROOT/ci/vm/lio.sh"
if [ "${1:-}" = __lio_up ]; then
    LIO_CONTROL="$( [ "$BACKEND" = loop ] && echo "udev_path=$LOOPDEV" || echo "fd_dev_name=$BACKING,fd_dev_size=$BYTES")" LIO_SERIAL=lio0-srp-vs-lio lio_up
    exit 0
fi
if [ "${1:-}" = __lio_down ]; then
    lio_down
    exit $?
fi

# ------------------------------------------------------------------ helpers
mkdir -p "$RES" /tmp/work
cd /tmp/work || exit 125
SPID=
DEV=

diag() {
    echo "---- dmesg (tail) ----"; dmesg | tail -40
    if [ -f "$RES/strata.log" ]; then echo "---- strata log (tail) ----"; tail -40 "$RES/strata.log"; fi
}
stop_strata() {
    [ -n "$SPID" ] || return 0
    kill -TERM "$SPID" 2>/dev/null
    for _ in $(seq 150); do kill -0 "$SPID" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$SPID" 2>/dev/null; then log "strata did not exit on SIGTERM in 30 s; SIGKILL"; kill -KILL "$SPID"; fi
    wait "$SPID" 2>/dev/null; local rc=$?
    SPID=
    return $rc
}
die() {
    log "FAIL: $*"
    diag
    [ -n "$SPID" ] && stop_strata
    dmesg > "$RES/dmesg.txt"
    exit 1
}


logout() {
    local p
    for p in /sys/class/srp_remote_ports/port-*; do
        [ -e "$p/delete" ] || continue
        timeout 60 sh -c "echo 1 > $p/delete" || return 1
    done
    for _ in $(seq 300); do
        remote_ports >/dev/null || return 0
        sleep 0.2
    done
    return 1
}

# login ID PORT -> add_target (both targets get the same options)
login() {
    local opts="id_ext=$1,ioc_guid=$1,dest=$IP:$2,initiator_ext=$INI_EXT,ch_count=1,queue_size=$QUEUE_SIZE,max_cmd_per_lun=$QUEUE_SIZE,max_sect=1024"
    log "add_target $opts"
    timeout 60 sh -c "echo '$opts' > $SRPDIR/add_target"
}


# run_fio NAME RW -> "iops p50_us p99_us" on stdout
run_fio() {
    local name=$1 rw=$2 out="$RES/$1.json" cpus=()
    [ -n "$FIO_CPUS" ] && cpus=(--cpus_allowed="$FIO_CPUS")
    timeout $((RUNTIME + RAMP + 90)) fio --name="$rw" --filename="$DEV" --rw="$rw" --bs=4k --direct=1 \
        --ioengine=libaio --iodepth="$IODEPTH" --numjobs=1 --time_based --runtime="$RUNTIME" \
        --ramp_time="$RAMP" --norandommap --randrepeat=0 --group_reporting "${cpus[@]}" \
        --output-format=json --output="$out" >"$RES/$name.stderr" 2>&1 || {
        { log "fio $name failed (rc $?)"; cat "$RES/$name.stderr"; tail -20 "$out"; } >&2 2>/dev/null; return 1; }
    local dir=read; [ "$rw" = randwrite ] && dir=write
    jq -r --arg d "$dir" '.jobs[0] as $j | if ($j.error // 0) != 0 then "ERR \($j.error)" else
        "\($j[$d].iops) \(($j[$d].clat_ns.percentile["50.000000"] // 0) / 1000) \(($j[$d].clat_ns.percentile["99.000000"] // 0) / 1000)" end' "$out"
}

# bench TARGET ROUND -> appends "target round rr_iops rr_p50 rr_p99 rw_iops rw_p50 rw_p99" to rounds.txt
bench() {
    local t=$1 r=$2 rr rw
    echo none > "/sys/block/${DEV##*/}/queue/scheduler" 2>/dev/null
    rr=$(run_fio "$t-r$r-randread" randread) || return 1
    rw=$(run_fio "$t-r$r-randwrite" randwrite) || return 1
    case "$rr $rw" in *ERR*) log "fio reported an error: $rr / $rw"; return 1 ;; esac
    echo "$t $r $rr $rw" >> "$RES/rounds.txt"
    # shellcheck disable=SC2086
    set -- $rr $rw
    printf 'round %d %-6s randread %8.0f IOPS p50 %8.1f us p99 %8.1f us | randwrite %8.0f IOPS p50 %8.1f us p99 %8.1f us\n' \
        "$r" "$t" "$1" "$2" "$3" "$4" "$5" "$6"
}

start_strata() {
    local cores="[$STRATA_CORES]"
    cat > /tmp/strata.json <<JSON
{"cores": $cores, "idle_sleep_us": $STRATA_IDLE_US, "calls": [
  {"method": "bdev_file_create", "params": {"name": "f0", "filename": "$DISK", "block_size": 512}},
  {"method": "srpt_target_create", "params": {"name": "t0", "listen": "$IP:$STRATA_PORT",
     "id_ext": "0x$STRATA_ID", "ioc_guid": "0x$STRATA_ID", "luns": [{"lun": 0, "bdev": "f0"}], "acl": ["*"]}}]}
JSON
    rm -f "$SOCK"
    echo "==== start (round $1)" >> "$RES/strata.log"
    "$STRATA" serve --config /tmp/strata.json --rpc-socket "$SOCK" --log "${STRATA_LOG:-info}" >>"$RES/strata.log" 2>&1 &
    SPID=$!
    for _ in $(seq 300); do
        kill -0 "$SPID" 2>/dev/null || { wait "$SPID"; log "strata exited (rc $?)"; SPID=; return 1; }
        [ -S "$SOCK" ] && grep -q "strata ready" "$RES/strata.log" && return 0
        sleep 0.2
    done
    log "strata not ready after 60 s"; return 1
}

run_strata() { # ROUND
    start_strata "$1" || die "strata did not start"
    if [ "$1" = 1 ]; then
        timeout 30 "$STRATA" rpc --socket "$SOCK" bdev_get_bdevs > "$RES/strata-bdevs.json" 2>&1
        log "strata bdev f0: $(jq -c ".[0].driver_specific" "$RES/strata-bdevs.json" 2>/dev/null | cut -c1-200)"
    fi
    login "$STRATA_ID" "$STRATA_PORT" || die "strata: add_target failed"
    DEV=$(find_disk STRATA) || die "strata: no STRATA disk appeared"
    log "strata: $DEV ($(blockdev --getsize64 "$DEV") bytes)"
    bench strata "$1" || die "strata: fio failed"
    timeout 30 "$STRATA" rpc --socket "$SOCK" reactor_get_stats > "$RES/strata-r$1-reactors.json" 2>&1
    log "strata reactors: $(jq -c '[.reactors[] | {core, busy_polls, idle_polls}]' "$RES/strata-r$1-reactors.json" 2>/dev/null | cut -c1-300)"
    logout || die "strata: logout did not complete"
    stop_strata || log "strata exited with rc $? after SIGTERM"
    grep -iE " (WARN|ERROR) " "$RES/strata.log" | tail -5
}

run_lio() { # ROUND [LABEL]
    local label=${2:-lio}
    timeout 60 "$SELF" __lio_up || die "LIO configfs setup failed"
    login "$LIO_ID" "$LIO_PORT" || die "LIO: add_target failed"
    DEV=$(find_disk LIO-ORG) || die "LIO: no LIO-ORG disk appeared"
    log "LIO: $DEV ($(blockdev --getsize64 "$DEV") bytes)"
    bench "$label" "$1" || die "LIO: fio failed"
    logout || die "LIO: logout did not complete"
    timeout 60 "$SELF" __lio_down || die "LIO configfs teardown failed"
}

# ------------------------------------------------------------------ setup
log "guest: $(nproc) vCPUs, kernel $(uname -r); strata cores [$STRATA_CORES], idle_sleep_us $STRATA_IDLE_US;" \
    "fio 4k depth $IODEPTH ${RUNTIME}s (+${RAMP}s ramp); ib_srp queue_size $QUEUE_SIZE; $ROUNDS rounds"
[ -x "$STRATA" ] || die "$STRATA missing (build it on the host: cargo build --release -p strata)"
[ -d "$SRPDIR" ] || die "$SRPDIR missing (ib_srp not loaded?)"
: > "$RES/rounds.txt"; : > "$RES/strata.log"
log "backing file $BACKING: $SIZE_MB MiB of zeroes (tmpfs)"
timeout 120 dd if=/dev/zero of="$BACKING" bs=1M count="$SIZE_MB" status=none || die "dd failed"
if [ "$BACKEND" = loop ]; then
    timeout 30 losetup "$LOOPDEV" "$BACKING" || die "losetup $LOOPDEV $BACKING failed"
    echo none > "/sys/block/${LOOPDEV##*/}/queue/scheduler" 2>/dev/null
    log "backend: $LOOPDEV over $BACKING ($(blockdev --getsize64 $LOOPDEV) bytes, loop direct-io $(cat /sys/block/${LOOPDEV##*/}/loop/dio))"
fi

if [[ " $TARGETS " == *" lio "* ]]; then
    # ib_srp asks for an IU of ~8260 bytes (immediate data up to 8 KiB);
    # ib_srpt's default srp_max_req_size (2116) rejects that login. Reload it
    # with blktests' value so both targets serve the same login (immediate
    # data on). The parameter is read-only at run time.
    if [ "$(cat /sys/module/ib_srpt/parameters/srp_max_req_size 2>/dev/null)" != 8260 ]; then
        [ -d "$CFS/srpt" ] && rmdir "$CFS/srpt"
        timeout 60 modprobe -r ib_srpt || die "modprobe -r ib_srpt failed"
        timeout 60 modprobe ib_srpt srp_max_req_size=8260 || die "modprobe ib_srpt failed"
    fi
    LIO_ID=$(cat /sys/module/ib_srpt/parameters/srpt_service_guid)
    LIO_ID=${LIO_ID#0x}
    log "LIO: srpt_service_guid $LIO_ID, srp_max_req_size $(cat /sys/module/ib_srpt/parameters/srp_max_req_size)," \
        "port $CFS/srpt/$LIO_WWN, ACL $LIO_ACL, rdma_cm port $LIO_PORT"
fi

# ------------------------------------------------------------------ rounds
for r in $(seq "$ROUNDS"); do
    for t in $TARGETS; do
        case $t in
            strata) run_strata "$r" ;;
            lio) run_lio "$r" ;;
            lio-spin)
                taskset -c "${STRATA_CORES%%[,-]*}" bash -c 'while :; do :; done' & SPIN=$!
                run_lio "$r" lio-spin
                kill "$SPIN"; wait "$SPIN" 2>/dev/null ;;
            *) die "unknown target $t" ;;
        esac
    done
done
[ -d "$CFS/srpt" ] && rmdir "$CFS/srpt" 2>/dev/null
[ "$BACKEND" = loop ] && timeout 30 losetup -d "$LOOPDEV"
dmesg > "$RES/dmesg.txt"

col() { awk -v t="$1" -v c="$2" '$1 == t {print $c}' "$RES/rounds.txt" | median; }
echo
echo "4 KiB random I/O, fio libaio direct, iodepth $IODEPTH, 1 job, ${RUNTIME}s (+${RAMP}s ramp) per point;"
echo "ib_srp over rxe (TCG guest, $(nproc) vCPUs), ch_count=1 queue_size=$QUEUE_SIZE; $SIZE_MB MiB file on guest tmpfs;"
if [ "$BACKEND" = loop ]; then
    echo "backend $LOOPDEV (loop over the tmpfs file); strata: cores [$STRATA_CORES], idle_sleep_us $STRATA_IDLE_US, file bdev on $LOOPDEV (O_DIRECT, block 512); LIO: ib_srpt + target_core_iblock;"
else
    echo "backend: the tmpfs file itself; strata: cores [$STRATA_CORES], idle_sleep_us $STRATA_IDLE_US, file bdev (buffered, block 512); LIO: ib_srpt + target_core_file;"
fi
echo "medians of $ROUNDS alternating rounds:"
echo
echo "| target | randread IOPS | p50 us | p99 us | randwrite IOPS | p50 us | p99 us |"
echo "|---|---|---|---|---|---|---|"
for t in $TARGETS; do
    name=$t; [ "$t" = strata ] && name="strata (file bdev)"
    [ "$t" = lio ] && { name="LIO ib_srpt (fileio)"; [ "$BACKEND" = loop ] && name="LIO ib_srpt (iblock)"; }
    [ "$t" = lio-spin ] && name="LIO + busy loop on CPU ${STRATA_CORES%%[,-]*} (control)"
    printf '| %s | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f |\n' "$name" \
        "$(col "$t" 3)" "$(col "$t" 4)" "$(col "$t" 5)" "$(col "$t" 6)" "$(col "$t" 7)" "$(col "$t" 8)"
done
if [[ " $TARGETS " == *" strata "* && " $TARGETS " == *" lio "* ]]; then
    awk -v a="$(col strata 3)" -v b="$(col lio 3)" -v c="$(col strata 6)" -v d="$(col lio 6)" \
        'BEGIN {printf "\nstrata/LIO IOPS: randread %.2fx, randwrite %.2fx\n", (b ? a/b : 0), (d ? c/d : 0)}'
fi
