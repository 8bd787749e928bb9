#!/bin/bash
# The strata SRP target against the Linux kernel initiator (ib_srp) on
# Soft-RoCE, inside the CI guest:
#
#   cargo build --release -p srpt --example srpt-server
#   ci/vm/run --timeout 900 -- srpt/tests/vm/srp-kernel-initiator.sh
#
# SRPT_SERVER=path overrides the server binary. With the shared `rdma` crate
# as of this writing, every write larger than the 8 KiB of immediate data
# stalls: its verbs `accept` swaps the connect request's responder_resources
# and initiator_depth (the kernel CM already reports them from the acceptor's
# side), so against ib_srp (responder_resources 4, initiator_depth 0) the
# target's QP gets max_rd_atomic = 0 and rxe never issues its RDMA READs.
# tests/vm/logs/ has a run with that one line fixed (all steps pass) and one
# without.
#
# Every step is bounded by `timeout`; each prints "STEP <name>: PASS|FAIL";
# the script exits non-zero if any step failed. Set STEPS="a b c" to run a
# subset (login and capacity are always run first).
set -u
cd "$(dirname "$0")/../../.." || exit 125
ROOT=$PWD
BIN=${SRPT_SERVER:-$ROOT/target/release/examples/srpt-server}
RES=${VM_RESULTS:-/tmp/srp-results}
mkdir -p "$RES" /tmp/work
cd /tmp/work || exit 125

ID=0002c90300a0b0c0
TGT_IP=10.0.2.15
TGT_PORT=5555
SRPDIR=/sys/class/infiniband_srp/srp-rxe0-1
CTL=/tmp/srpt.ctl
GID0=$(cat /sys/class/infiniband/rxe0/ports/1/gids/0)
IFID=$(echo "$GID0" | cut -d: -f5- | tr -d :)
INI_EXT=0000000000000001
BAD_EXT=00000000000000bd
INI_PORT=0x${INI_EXT}${IFID}
FAILS=0
PASSES=0
declare -a SUMMARY=()

log() { echo "[$(date +%T)] $*"; }
result() { # name rc
    if [ "$2" -eq 0 ]; then PASSES=$((PASSES + 1)); SUMMARY+=("PASS $1"); echo "STEP $1: PASS"
    else FAILS=$((FAILS + 1)); SUMMARY+=("FAIL $1 (rc $2)"); echo "STEP $1: FAIL (rc $2)"; fi
}
want() { [ -z "${STEPS:-}" ] || [[ " $STEPS " == *" $1 "* ]]; }

server_up() {
    log "starting srpt-server (initiator port id $INI_PORT)"
    RUST_LOG=${RUST_LOG:-info} "$BIN" --listen $TGT_IP:$TGT_PORT --id-ext 0x$ID --ioc-guid 0x$ID \
        --acl "$INI_PORT" --malloc 512 --cores 1 --idle-sleep-us 20 --control $CTL \
        >"$RES/server.out" 2>"$RES/server.err" &
    SERVER=$!
    for _ in $(seq 100); do grep -q READY "$RES/server.out" 2>/dev/null && return 0; sleep 0.2; done
    log "server did not come up"; cat "$RES/server.err"; return 1
}

# login [extra add_target options] -> 0 if the write to add_target succeeded
login() {
    local opts="id_ext=$ID,ioc_guid=$ID,initiator_ext=${INI:-$INI_EXT},dest=$TGT_IP:$TGT_PORT,ch_count=1,queue_size=32,max_cmd_per_lun=32${1:+,$1}"
    log "add_target $opts"
    timeout 60 sh -c "echo '$opts' > $SRPDIR/add_target"
}

# the /dev/sdX whose vendor is STRATA (waits up to 30 s)
find_disk() {
    local d
    for _ in $(seq 150); do
        for d in /sys/block/sd*; do
            [ -e "$d/device/vendor" ] || continue
            if grep -q STRATA "$d/device/vendor"; then echo "/dev/${d##*/}"; return 0; fi
        done
        sleep 0.2
    done
    return 1
}

logout() {
    local p
    for p in /sys/class/srp_remote_ports/port-*; do
        [ -e "$p/delete" ] || continue
        log "logout $p"
        timeout 60 sh -c "echo 1 > $p/delete"
    done
    for _ in $(seq 150); do
        ls /sys/class/srp_remote_ports/ 2>/dev/null | grep -q port || return 0
        sleep 0.2
    done
    return 1
}

big_io() { # dev: allow 4 MiB requests to reach the target unsplit
    local q=/sys/block/${1##*/}/queue
    local hw; hw=$(cat $q/max_hw_sectors_kb)
    echo $(( hw < 4096 ? hw : 4096 )) > $q/max_sectors_kb 2>/dev/null
    log "${1}: max_hw_sectors_kb=$hw max_sectors_kb=$(cat $q/max_sectors_kb) max_segments=$(cat $q/max_segments)"
}

FIO="timeout 240 fio --ioengine=libaio --direct=1 --verify_state_save=0 --group_reporting --output-format=terse --terse-version=3"
fio_ok() { # name args...
    local name=$1; shift
    if $FIO --name="$name" "$@" >"$RES/fio-$name.out" 2>&1; then return 0; fi
    tail -20 "$RES/fio-$name.out"; return 1
}

server_up || { echo "STEP server: FAIL"; exit 1; }
grep '"lun":0' "$RES/server.out"
SIZE=$(sed -n 's/.*"bytes":\([0-9]*\).*"lun":0.*/\1/p' "$RES/server.out")
SERIAL=$(sed -n 's/.*"lun":0.*"serial":"\([0-9a-f]*\)".*/\1/p' "$RES/server.out")
EUI=$(sed -n 's/.*"eui":"\([0-9a-f]*\)".*"lun":0.*/\1/p; s/.*"lun":0.*"eui":"\([0-9a-f]*\)".*/\1/p' "$RES/server.out" | head -1)

# 1. login, the disk appears with the right capacity, serial and device id
login "max_sect=131072,cmd_sg_entries=255"; rc=$?
DEV=$(find_disk) || rc=1
result login $rc
log "disk: ${DEV:-none}"
if [ -z "${DEV:-}" ]; then
    dmesg | tail -30; cat "$RES/server.err" | tail -30
    echo "SUMMARY: $PASSES passed, $((FAILS)) failed"; kill $SERVER; exit 1
fi
got=$(blockdev --getsize64 "$DEV"); log "capacity $got, want $SIZE"
[ "$got" = "$SIZE" ]; result capacity $?
S=/sys/block/${DEV##*/}/device
{ grep -aq "$SERIAL" $S/vpd_pg80 || sg_inq -p 0x80 "$DEV" | grep -q "$SERIAL"; }; rc=$?
log "serial: $(sg_inq -p 0x80 "$DEV" 2>/dev/null | tail -1) want $SERIAL"; result serial $rc
log "wwid: $(cat $S/wwid 2>/dev/null) want eui.$EUI"
grep -q "eui.$EUI" $S/wwid 2>/dev/null; result device_id $?

# 2. fio verify: random writes, then reads
if want fio_verify; then
    fio_ok randwrite --filename="$DEV" --rw=randwrite --bs=4k --iodepth=16 --size=64m --verify=crc32c --do_verify=1 \
        && fio_ok randread-verify --filename="$DEV" --rw=randwrite --bs=4k --iodepth=16 --size=64m --verify=crc32c --verify_only
    result fio_verify $?
fi

# 3. 4 MiB direct I/O, max_sect=131072 and cmd_sg_entries=255 (this login)
if want direct_4m_sg255; then
    big_io "$DEV"
    fio_ok direct4m-255 --filename="$DEV" --rw=write --bs=4m --iodepth=4 --size=256m --verify=crc32c --do_verify=1
    result direct_4m_sg255 $?
fi

# 4. ... and again with cmd_sg_entries=1. Without allow_ext_sg the kernel
#    initiator itself fails any I/O that needs more than one descriptor
#    ("Failed to map data (-5)"); with it, the rest of the descriptor table
#    is fetched by the target with RDMA READ.
if want direct_4m_sg1; then
    logout && login "max_sect=131072,cmd_sg_entries=1,allow_ext_sg=1" && DEV=$(find_disk) && big_io "$DEV" \
        && fio_ok direct4m-1 --filename="$DEV" --rw=randwrite --bs=4m --iodepth=4 --size=256m --verify=crc32c --do_verify=1
    result direct_4m_sg1 $?
fi

# 5. ext4: mkfs, mount, write files, unmount, log out, log in, mount, checksums
if want ext4; then
    (
        set -e
        logout
        login "max_sect=131072,cmd_sg_entries=255"
        DEV=$(find_disk)
        mkdir -p /tmp/mnt
        timeout 120 mkfs.ext4 -q -F "$DEV"
        timeout 60 mount "$DEV" /tmp/mnt
        for n in 1 2 3 4 5; do timeout 60 dd if=/dev/urandom of=/tmp/mnt/f$n bs=1M count=$((n * 3)) status=none; done
        (cd /tmp/mnt && sha256sum f* > /tmp/sums)
        timeout 60 umount /tmp/mnt
        logout
        login "max_sect=131072,cmd_sg_entries=255"
        DEV=$(find_disk)
        timeout 60 mount "$DEV" /tmp/mnt
        (cd /tmp/mnt && sha256sum -c /tmp/sums)
        timeout 60 umount /tmp/mnt
    )
    result ext4 $?
    DEV=$(find_disk)
fi

# 6. logout/login loop while fio verifies: the target logs the session out
#    (SRP_T_LOGOUT + disconnect); ib_srp reconnects and retries the I/O.
if want relogin_loop; then
    for p in /sys/class/srp_remote_ports/port-*; do
        echo 1 > $p/reconnect_delay 2>/dev/null; echo 30 > $p/fast_io_fail_tmo 2>/dev/null
    done
    $FIO --name=loop --filename="$DEV" --rw=randwrite --bs=16k --iodepth=8 --size=64m --verify=crc32c \
        --do_verify=1 --time_based --runtime=60 --verify_backlog=256 >"$RES/fio-loop.out" 2>&1 &
    FIOPID=$!
    n=0
    for _ in 1 2 3 4 5; do
        sleep 6
        kill -0 $FIOPID 2>/dev/null || break
        echo logout > $CTL; n=$((n + 1)); log "target-side logout #$n"
    done
    wait $FIOPID; rc=$?
    log "fio exit $rc after $n logouts; reconnects: $(dmesg | grep -c 'reconnect succeeded')"
    [ $rc -eq 0 ] || tail -20 "$RES/fio-loop.out"
    result relogin_loop $rc
    DEV=$(find_disk)
    # and the initiator-side loop: log out, log in, verify, three times
    rc=0
    for k in 1 2 3; do
        logout && login "max_sect=131072,cmd_sg_entries=255" && DEV=$(find_disk) \
            && fio_ok relogin$k --filename="$DEV" --rw=randwrite --bs=8k --iodepth=8 --size=16m --verify=crc32c --do_verify=1 \
            || { rc=1; break; }
    done
    result relogin_initiator_loop $rc
fi

# 7. an initiator that is not in the ACL is rejected
if want acl_reject; then
    INI=$BAD_EXT login "max_sect=131072"; rc=$?
    sleep 1
    if [ $rc -ne 0 ] && grep -q "not in the ACL" "$RES/server.err"; then result acl_reject 0; else
        dmesg | tail -5; result acl_reject 1; fi
    dmesg | grep -i "reject" | tail -3
fi

# 8. sg_reset (LUN reset) during I/O recovers
if want sg_reset; then
    DEV=$(find_disk)
    $FIO --name=reset --filename="$DEV" --rw=randwrite --bs=64k --iodepth=16 --size=64m --verify=crc32c \
        --do_verify=1 --time_based --runtime=25 >"$RES/fio-reset.out" 2>&1 &
    FIOPID=$!
    sleep 5
    timeout 60 sg_reset -d "$DEV"; r1=$?
    sleep 3
    timeout 60 sg_reset -d "$DEV"; r2=$?
    wait $FIOPID; rc=$?
    log "sg_reset rc $r1/$r2, fio rc $rc; $(grep -c 'LUN RESET' "$RES/server.err") LUN RESETs at the target"
    [ $rc -ne 0 ] && tail -20 "$RES/fio-reset.out"
    [ $r1 -eq 0 ] && [ $r2 -eq 0 ] && [ $rc -eq 0 ] && fio_ok after-reset --filename="$DEV" --rw=randread --bs=4k \
        --iodepth=4 --size=8m
    result sg_reset $?
fi

logout
kill -TERM $SERVER; wait $SERVER
dmesg > "$RES/dmesg.txt"
echo "================ SUMMARY: $PASSES passed, $FAILS failed"
printf '%s\n' "${SUMMARY[@]}"
[ $FAILS -eq 0 ]
