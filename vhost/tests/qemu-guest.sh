#!/bin/bash
# vhost/tests/qemu-guest.sh — the vhost-user-blk backend under a real QEMU
# guest (ci/vm/run: TCG guest, host root over 9p).
#
#   basic:     /dev/vda has the right size, serial and queue count; fio
#              randwrite with --verify=crc32c passes; blkdiscard and
#              blkdiscard -z work (and reach the bdev as unmap/write-zeroes).
#   reconnect: QEMU with reconnect=1; the server is killed with SIGKILL and
#              restarted while fio writes; fio finishes and verifies.
#
# Usage: vhost/tests/qemu-guest.sh [basic|reconnect|all]   (default all)
# The server is vhost/examples/vhost-blk-server.rs (to become `strata serve`).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
modes=${1:-all}
[ "$modes" = all ] && modes="basic reconnect"

cargo build -q -p vhost@0.1.0 --example vhost-blk-server
bin=${CARGO_TARGET_DIR:-$root/target}/debug/examples/vhost-blk-server
work=$(mktemp -d /tmp/vhost-qemu.XXXXXX)
results=$root/target/vhost-qemu-results    # not under /tmp: the guest must see it
server_pid=
cleanup() {
    [ -n "$server_pid" ] && kill -9 "$server_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

size_mib=64
queues=2
serial=strata-disk0
sock=$work/vhost.sock
disk=$work/disk.img
truncate -s ${size_mib}M "$disk"

start_server() { # log file [extra server arguments]
    "$bin" --socket "$sock" --file "$disk" --bdev-name $serial --num-queues $queues ${2:-} >"$1.out" 2>"$1" &
    server_pid=$!
    for _ in $(seq 100); do
        grep -q ready "$1.out" 2>/dev/null && return 0
        kill -0 $server_pid 2>/dev/null || break
        sleep 0.1
    done
    echo "server did not start:"; cat "$1"; exit 1
}

stats=
stop_server() { # log file; sets $stats to the bdev statistics line
    local rc=0
    kill -TERM "$server_pid" 2>/dev/null || true
    # (the restarted server is not our child: wait for it by polling)
    wait "$server_pid" 2>/dev/null || rc=$?
    while kill -0 "$server_pid" 2>/dev/null; do sleep 0.1; done
    server_pid=
    stats=$(grep '^stats ' "$1" || true)
    echo "host: server stopped: $stats"
    [ -n "$stats" ] || { echo "server did not stop cleanly (rc $rc)"; tail -20 "$1"; return 1; }
}

vm() { # mode [extra vhost-user-blk options]
    ci/vm/run --timeout 420 --results "$results" --vhost-user-blk "$sock,num-queues=$queues$2" \
        --env EXPECT_SIZE=$((size_mib << 20)) --env EXPECT_SERIAL=$serial --env EXPECT_QUEUES=$queues \
        -- bash vhost/tests/qemu-guest-inner.sh "$1"
}

pass=0
fail=0
for mode in $modes; do
    rm -rf "$results"; mkdir -p "$results"
    echo "== qemu-guest: $mode"
    case $mode in
    basic)
        start_server "$work/server.log"
        if vm basic "" && stop_server "$work/server.log"; then
            if echo "$stats" | grep -q '"num_unmap_ops":[1-9]' && echo "$stats" | grep -q '"num_write_zeroes_ops":[1-9]'; then
                pass=$((pass + 1))
            else
                echo "FAIL: discard / write-zeroes did not reach the bdev"; fail=$((fail + 1))
            fi
        else
            fail=$((fail + 1)); [ -z "$server_pid" ] || stop_server "$work/server.log" || true; tail -40 "$work/server.log"
        fi
        ;;
    reconnect)
        # 2 ms per I/O: requests are in flight when the server is killed.
        start_server "$work/server1.log" "--delay-us 2000"
        (
            for _ in $(seq 1200); do [ -e "$results/fio-started" ] && break; sleep 0.1; done
            sleep 3
            kill -9 "$server_pid"
            echo "host: killed the server (SIGKILL) under fio"
            sleep 1
            start_server "$work/server2.log" "--delay-us 2000"
            echo $server_pid > "$work/server2.pid"
            touch "$results/restarted"
            echo "host: restarted the server"
        ) &
        watcher=$!
        rc=0
        vm reconnect ",reconnect=1" || rc=$?
        wait $watcher || true
        server_pid=$(cat "$work/server2.pid" 2>/dev/null || true)
        grep -h "resubmitting" "$work"/server2.log || echo "host: (no request was in flight at the kill)"
        if [ $rc = 0 ] && stop_server "$work/server2.log"; then
            pass=$((pass + 1))
        else
            fail=$((fail + 1)); cat "$work/server1.log" "$work/server2.log" 2>/dev/null | tail -40
        fi
        ;;
    *) echo "unknown mode $mode"; exit 2 ;;
    esac
done
echo "qemu-guest: $pass passed, $fail failed"
[ $fail = 0 ]
