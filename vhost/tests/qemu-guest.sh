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
# The server is the real daemon, `strata serve`, configured with a file bdev
# (behind a delay bdev, 0 µs for basic, 2 ms for reconnect so that requests
# are in flight at the kill) exported by vhost_blk_create on two reactors.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
modes=${1:-all}
[ "$modes" = all ] && modes="basic reconnect"

cargo build -q --release -p strata
bin=${CARGO_TARGET_DIR:-$root/target}/release/strata
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
rpc=$work/rpc.sock
disk=$work/disk.img
truncate -s ${size_mib}M "$disk"

start_server() { # log file [per-I/O delay in µs]
    cat > "$work/strata.json" <<JSON
{"cores": [0, 1], "idle_sleep_us": 100, "calls": [
  {"method": "bdev_file_create", "params": {"name": "disk0", "filename": "$disk", "block_size": 512}},
  {"method": "bdev_delay_create", "params": {"name": "$serial", "base": "disk0", "read_us": ${2:-0}, "write_us": ${2:-0}}},
  {"method": "vhost_blk_create", "params": {"name": "vhost0", "socket": "$sock", "bdev": "$serial", "num_queues": $queues}}]}
JSON
    "$bin" serve --config "$work/strata.json" --rpc-socket "$rpc" >"$1.out" 2>"$1" &
    server_pid=$!
    for _ in $(seq 100); do
        "$bin" rpc -s "$rpc" vhost_get_controllers >/dev/null 2>&1 && return 0
        kill -0 $server_pid 2>/dev/null || break
        sleep 0.1
    done
    echo "server did not start:"; cat "$1"; exit 1
}

stats=
stop_server() { # log file; sets $stats to the bdev statistics (one line of JSON)
    local rc=0
    stats=$("$bin" rpc -s "$rpc" bdev_get_bdevs "{\"name\": \"$serial\"}" 2>/dev/null | tr -d ' \n' || true)
    kill -TERM "$server_pid" 2>/dev/null || true
    # (the restarted server is not our child: wait for it by polling)
    wait "$server_pid" 2>/dev/null || rc=$?
    while kill -0 "$server_pid" 2>/dev/null; do sleep 0.1; done
    server_pid=
    echo "host: server stopped: $stats"
    grep -q "stopped cleanly" "$1" || { echo "server did not stop cleanly (rc $rc)"; tail -20 "$1"; return 1; }
    [ -n "$stats" ] || { echo "no bdev statistics"; return 1; }
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
        start_server "$work/server1.log" 2000
        (
            for _ in $(seq 1200); do [ -e "$results/fio-started" ] && break; sleep 0.1; done
            sleep 3
            kill -9 "$server_pid"
            echo "host: killed the server (SIGKILL) under fio"
            sleep 1
            start_server "$work/server2.log" 2000
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
