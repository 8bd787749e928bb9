#!/bin/bash
# Runs INSIDE the QEMU guest (started by vhost/tests/qemu-guest.sh through
# ci/vm/run), as root, in the checkout. Mode: basic | reconnect.
# Expects EXPECT_SIZE (bytes), EXPECT_SERIAL, EXPECT_QUEUES in the env.
set -uo pipefail
mode=${1:?mode}
dev=/dev/vda
fail() { echo "guest: FAIL: $*"; exit 1; }
ok() { echo "guest: ok: $*"; }

for _ in $(seq 100); do [ -b $dev ] && break; sleep 0.1; done
[ -b $dev ] || fail "no $dev"
size=$(blockdev --getsize64 $dev)
[ "$size" = "$EXPECT_SIZE" ] || fail "size $size, expected $EXPECT_SIZE"
ok "size $size"
serial=$(cat /sys/block/vda/serial)
[ "$serial" = "$EXPECT_SERIAL" ] || fail "serial '$serial', expected '$EXPECT_SERIAL'"
ok "serial $serial"
nq=$(ls /sys/block/vda/mq | wc -l)
[ "$nq" = "$EXPECT_QUEUES" ] || fail "$nq queues, expected $EXPECT_QUEUES"
ok "$nq queues"

fio_common=(--filename=$dev --direct=1 --ioengine=libaio --bs=4k --verify=crc32c --verify_fatal=1
            --do_verify=1 --randrepeat=0 --group_reporting)

case "$mode" in
basic)
    fio --name=randwrite --rw=randwrite --size=32M --iodepth=16 --numjobs=1 "${fio_common[@]}" \
        > /tmp/fio.log 2>&1 || { cat /tmp/fio.log; fail "fio verify"; }
    grep -E "WRITE:|READ:|err=" /tmp/fio.log
    ok "fio randwrite + crc32c verify"

    dmax=$(cat /sys/block/vda/queue/discard_max_bytes)
    zmax=$(cat /sys/block/vda/queue/write_zeroes_max_bytes)
    [ "$dmax" -gt 0 ] || fail "discard not advertised"
    [ "$zmax" -gt 0 ] || fail "write zeroes not advertised"
    ok "discard_max_bytes $dmax write_zeroes_max_bytes $zmax"

    dd if=/dev/urandom of=$dev bs=1M count=8 oflag=direct status=none || fail "dd"
    blkdiscard -o 0 -l 4M $dev || fail "blkdiscard"
    cmp -n $((4 << 20)) $dev /dev/zero || fail "discarded range does not read as zeroes"
    ok "blkdiscard"
    blkdiscard -z -o $((4 << 20)) -l 4M $dev || fail "blkdiscard -z"
    cmp -n $((8 << 20)) $dev /dev/zero || fail "zeroed range does not read as zeroes"
    ok "blkdiscard -z"
    blkdiscard $dev || fail "whole-device blkdiscard"
    ok "whole-device blkdiscard"
    ;;
reconnect)
    # ~10 s of random writes at depth 8 (TCG-bound): the host kills and restarts the
    # server in the middle; fio must finish and its verify pass.
    touch "$VM_RESULTS/fio-started"
    fio --name=reconnect --rw=randwrite --size=64M --iodepth=8 "${fio_common[@]}" \
        > /tmp/fio.log 2>&1 || { cat /tmp/fio.log; fail "fio verify across a backend restart"; }
    grep -E "WRITE:|READ:|err=" /tmp/fio.log
    [ -e "$VM_RESULTS/restarted" ] || fail "the host did not restart the server during fio"
    ok "fio randwrite + crc32c verify across a backend kill -9 and restart"
    ;;
*) fail "unknown mode $mode" ;;
esac
echo "guest: PASS $mode"
