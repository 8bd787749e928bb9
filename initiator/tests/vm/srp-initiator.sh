#!/bin/bash
# strata's SRP initiator (bdev_srp_attach) against real targets on
# Soft-RoCE, inside the CI guest (started by ci/vm-tests/50-srp-initiator.sh):
#
#   cargo build --release -p strata
#   ci/vm/run --timeout 540 -- initiator/tests/vm/srp-initiator.sh
#
# One strata process ("ini", RPC socket /tmp/ini.sock, reactor on CPU 0)
# attaches SRP bdevs with provider "verbs" over rxe0 and exports them over
# vhost-user-blk; `strata verify vhost` (libblkio, a second frontend in the
# same guest) writes a seeded per-block pattern through them and reads it
# back, with 4 KiB, 1 MiB and 4 MiB requests (4 MiB = four 1 MiB segments,
# vhost's size_max; attached with max_sect 8192, so one SRP_CMD with an
# indirect table of four descriptors, all inline), and 4 MiB in 64 KiB
# segments placed apart (64 descriptors per SRP_CMD, inline in an 8260-byte
# IU; with immediate data off and allow_ext_sg (b_ext_*) the IU holds 12
# and strata's target fetches the rest of the table with RDMA READ).
#
#   tool_*   the verify tool over a malloc bdev on the same vhost path (a
#            baseline: if this fails, the initiator is not to blame)
#   a_*      LIO's ib_srpt (configfs, fileio on guest tmpfs) as blktests'
#            tests/srp/rc sets it up: attach, LU size, verify, bdev_io
#            read-back on the SRP bdev, detach
#   b_*      strata's own SRP target (a second strata, "tgt", CPU 1, file
#            bdev on /tmp): attach, size, verify, the data checked on the
#            target's own bdev with bdev_io, sessions on both sides
#   c_*      kill -9 of the target under load (verify --time), restart on
#            the same file: I/O resumes (no error, no hang), reconnects >= 1,
#            full read-back of the last pass
#   d_*      SIGSTOP of the target with cmd_timeout_s 5, fast_io_fail_tmo_s
#            10: the tool and a bdev_io RPC return (with an error) within a
#            bound, the session counts time-outs, aborts and resets; after
#            SIGCONT the port returns to running and I/O verifies again
#
# Each step prints "STEP <name>: PASS|FAIL"; a SUMMARY ends the output; the
# exit status is non-zero if any step failed. STEPS="tool a b" runs a subset
# of the groups (c and d need b's target). Every command is bounded by
# `timeout`; every process started here is killed on exit (trap).
set -u
SELF=$(readlink -f "$0")
cd "$(dirname "$SELF")/../../.." || exit 125
ROOT=$PWD
STRATA=${STRATA:-$ROOT/target/release/strata}
RES=${VM_RESULTS:-/tmp/srp-initiator-results}
IP=10.0.2.15
LIO_PORT=5556
TGT_PORT=5555
TGT_ID=0002c90300a0b0c0
INI_EXT=0x0000000000000001
INI_SOCK=/tmp/ini.sock
TGT_SOCK=/tmp/tgt.sock
LIO_IMG=/tmp/lio.img
TGT_IMG=/tmp/tgt.img
LIO_MB=64
TGT_MB=64
CFS=/sys/kernel/config/target
GID0=$(cat /sys/class/infiniband/rxe0/ports/1/gids/0 2>/dev/null)
LIO_WWN=${GID0#fe80:0000:0000:0000:}
LIO_TPG=$LIO_WWN
LIO_ACL=$IP
LIO_HBA=fileio_0
LIO_BS=$CFS/core/$LIO_HBA/lio0
IDLE_US=${IDLE_US:-200}

# ------------------------------------------------------------------ LIO
# Run as their own process (`timeout 60 $SELF __lio_up`) so that a configfs
# write that hangs is bounded too. Same layout as bench/scripts/
# srp-vs-lio-inner.sh and blktests' tests/srp/rc (start_lio_srpt): fileio
# backstore, target port named after the port GID's interface id (the GUID
# form, whose ACLs rdma_cm logins match by initiator IP address), LUN 0,
# ACL for 10.0.2.15 mapping LUN 0.
# shellcheck source=../../ci/vm/lio.sh
. "$ROOT/ci/vm/lio.sh"
if [ "${1:-}" = __lio_up ]; then
    LIO_CONTROL="fd_dev_name=$LIO_IMG,fd_dev_size=$((LIO_MB << 20))" LIO_SERIAL=lio0-srp-initiator lio_up
    exit 0
fi
if [ "${1:-}" = __lio_down ]; then
    lio_down
    exit $?
fi

# ------------------------------------------------------------------ helpers
mkdir -p "$RES" /tmp/work
cd /tmp/work || exit 125
: > "$RES/ini.log"; : > "$RES/tgt.log"; : > "$RES/steps.log"
INI_PID=
TGT_PID=
BG_PIDS=()
LIO_UP=0
FAILS=0
PASSES=0
declare -a SUMMARY=()
T_START=$SECONDS

log() { echo "[$(date +%T) +$((SECONDS - T_START))s] $*"; }
result() { # name rc [note]
    if [ "$2" -eq 0 ]; then PASSES=$((PASSES + 1)); SUMMARY+=("PASS $1${3:+ ($3)}"); echo "STEP $1: PASS${3:+ ($3)}"
    else FAILS=$((FAILS + 1)); SUMMARY+=("FAIL $1 (rc $2)${3:+ $3}"); echo "STEP $1: FAIL (rc $2)${3:+ $3}"; fi
    echo "$1 $2 ${3:-}" >> "$RES/steps.log"
}
skip() { result "$1" 99 "skipped: $2"; }
want() { [ -z "${STEPS:-}" ] || [[ " $STEPS " == *" $1 "* ]]; }

irpc() { timeout "${RPC_T:-90}" "$STRATA" rpc --socket "$INI_SOCK" --timeout "${RPC_T:-90}" "$@"; }
trpc() { timeout "${RPC_T:-90}" "$STRATA" rpc --socket "$TGT_SOCK" --timeout "${RPC_T:-90}" "$@"; }

# a number summed over every key $1 anywhere in bdev_srp_get_sessions
sess_sum() { # key json-file
    jq --arg k "$1" '[.. | objects | .[$k]? | numbers] | add // 0' "$2" 2>/dev/null || echo 0
}
# every string value of key $1 anywhere (e.g. state)
sess_strs() { jq -r --arg k "$1" '[.. | objects | .[$k]? | strings] | join(",")' "$2" 2>/dev/null; }

counters() { # sessions-json -> the interesting counters on one line
    jq -r '.[0] | "reconnects \(.reconnects) timeouts \(.timeouts) aborts_sent \(.aborts_sent) lun_resets_sent \(.lun_resets_sent) failed_fast \(.failed_fast) zero_copy_cmds \(.zero_copy_cmds) bounce_cmds \(.bounce_cmds) indirect_cmds \(.indirect_cmds) external_tables \(.external_tables) immediate_cmds \(.immediate_cmds) registered_regions \(.registered_regions)"' "$1" 2>/dev/null
}

tails() {
    echo "---- ini log (tail) ----"; tail -n "${1:-30}" "$RES/ini.log"
    if [ -s "$RES/tgt.log" ]; then echo "---- tgt log (tail) ----"; tail -n "${1:-30}" "$RES/tgt.log"; fi
    echo "---- dmesg (tail) ----"; dmesg | tail -n 15
}

# start_strata ini|tgt CONFIG-FILE CPU -> sets INI_PID / TGT_PID
start_strata() {
    local who=$1 cfg=$2 sock=$INI_SOCK pid
    [ "$who" = tgt ] && sock=$TGT_SOCK
    rm -f "$sock"
    echo "==== start $(date +%T)" >> "$RES/$who.log"
    STRATA_LOG=${STRATA_LOG:-info} "$STRATA" serve --config "$cfg" --rpc-socket "$sock" >> "$RES/$who.log" 2>&1 &
    pid=$!
    if [ "$who" = ini ]; then INI_PID=$pid; else TGT_PID=$pid; fi
    for _ in $(seq 300); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid"; log "strata $who exited (rc $?)"; tail -20 "$RES/$who.log"; return 1; }
        [ -S "$sock" ] && tail -5 "$RES/$who.log" | grep -q "strata ready" && return 0
        sleep 0.2
    done
    log "strata $who not ready after 60 s"; return 1
}

# stop_strata ini|tgt -> SIGTERM, wait 30 s, SIGKILL; returns the exit status
stop_strata() {
    local pid=$INI_PID rc
    [ "$1" = tgt ] && pid=$TGT_PID
    [ -n "$pid" ] || return 0
    kill -CONT "$pid" 2>/dev/null
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then log "strata $1 did not exit on SIGTERM in 30 s: SIGKILL"; kill -KILL "$pid"; fi
    wait "$pid" 2>/dev/null; rc=$?
    if [ "$1" = ini ]; then INI_PID=; else TGT_PID=; fi
    return $rc
}

cleanup() {
    local p
    for p in "${BG_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    [ -n "$TGT_PID" ] && kill -CONT "$TGT_PID" 2>/dev/null
    [ -n "$INI_PID" ] && { kill -TERM "$INI_PID" 2>/dev/null; sleep 2; kill -KILL "$INI_PID" 2>/dev/null; }
    [ -n "$TGT_PID" ] && { kill -TERM "$TGT_PID" 2>/dev/null; sleep 1; kill -KILL "$TGT_PID" 2>/dev/null; }
    [ "$LIO_UP" = 1 ] && timeout 60 "$SELF" __lio_down
    dmesg > "$RES/dmesg.txt" 2>/dev/null
}
trap cleanup EXIT
trap 'echo "srp-initiator.sh: interrupted"; exit 130' INT TERM

# verify NAME SOCKET ARGS... -> runs `strata verify vhost`, JSON in $RES/NAME.json
verify() {
    local name=$1 sock=$2; shift 2
    timeout "${VERIFY_T:-240}" "$STRATA" verify vhost --socket "$sock" --json "$@" \
        > "$RES/$name.json" 2> "$RES/$name.err"
    local rc=$?
    summarize "$name"
    [ $rc -ne 0 ] && { tail -5 "$RES/$name.err"; jq -r '(.mismatches[]? | "  mismatch: \(.)"), (.errors[]? | "  error: \(.)")' "$RES/$name.json" 2>/dev/null | head -8; }
    return $rc
}
# verify_bg NAME SOCKET ARGS... -> the same in the background; VPID is the
# timeout(1) process (SIGTERM to it stops the tool); verify_wait collects it
verify_bg() {
    local name=$1 sock=$2; shift 2
    timeout "${VERIFY_T:-240}" "$STRATA" verify vhost --socket "$sock" --json "$@" \
        > "$RES/$name.json" 2> "$RES/$name.err" &
    VPID=$!; VNAME=$name; BG_PIDS+=("$VPID")
}
verify_wait() {
    wait "$VPID"; local rc=$?
    BG_PIDS=()
    summarize "$VNAME"
    [ $rc -ne 0 ] && { tail -5 "$RES/$VNAME.err"; jq -r '(.mismatches[]? | "  mismatch: \(.)"), (.errors[]? | "  error: \(.)")' "$RES/$VNAME.json" 2>/dev/null | head -8; }
    return $rc
}
summarize() {
    jq -r '"  \(.params.mode) bs=\(.params.io_size) region=\(.region[1]) passes=\(.passes) final_seed=\(.final_seed) written=\(.blocks_written) verified=\(.blocks_verified) mismatched=\(.blocks_mismatched) io_errors=\(.io_errors) hung=\(.hung) \(.seconds*10|floor/10)s stall=\(.max_stall_s*100|floor/100)s segs/req=\(.segments_per_request)"' \
        "$RES/$1.json" 2>/dev/null || echo "  (no report: $(tail -1 "$RES/$1.err" 2>/dev/null))"
}

# verify_sizes PREFIX SOCKET SEED -> steps PREFIX_verify_4k/1m/4m; sets LAST_SEED
verify_sizes() {
    local p=$1 sock=$2 seed=$3
    verify "${p}_verify_4k" "$sock" --bs 4k --qd 8 --size 16m --seed "$seed"; result "${p}_verify_4k" $?
    verify "${p}_verify_1m" "$sock" --bs 1m --qd 4 --size 32m --seed $((seed + 1)); result "${p}_verify_1m" $?
    verify "${p}_verify_4m" "$sock" --bs 4m --qd 2 --size 32m --seed $((seed + 2)); result "${p}_verify_4m" $?
    # 4 MiB in 64 KiB segments placed apart: every SRP_CMD carries many
    # descriptors (an indirect table, more than the inline ones)
    verify "${p}_verify_4m_sg" "$sock" --bs 4m --seg-size 64k --qd 2 --size 32m --seed $((seed + 3)); result "${p}_verify_4m_sg" $?
    LAST_SEED=$((seed + 3))
}

# bdev_io_verify RPCFN BDEV SEED BLOCKS -> 0 if 0 mismatched blocks
bdev_io_verify() {
    local out
    out=$($1 bdev_io "{\"name\": \"$2\", \"op\": \"verify\", \"offset_blocks\": 0, \"num_blocks\": $4, \"seed\": $3}" 2>&1)
    log "bdev_io verify $2 seed $3 blocks 0+$4: $(echo "$out" | tr -d '\n ')"
    [ "$(echo "$out" | jq -r .status 2>/dev/null)" = success ] && [ "$(echo "$out" | jq -r .mismatched_blocks 2>/dev/null)" = 0 ]
}

bdev_size() { # RPCFN BDEV -> bytes
    $1 bdev_get_bdevs "{\"name\": \"$2\"}" 2>/dev/null | jq -r '.[0] | .block_size * .num_blocks'
}

# attach NAME PORT ID [extra JSON fields] -> the bdev name on stdout
attach() {
    local name=$1 port=$2 id=$3 extra=${4:-} out
    local params="{\"name\": \"$name\", \"dest\": \"$IP:$port\", \"id_ext\": \"0x$id\", \"ioc_guid\": \"0x$id\", \"initiator_ext\": \"$INI_EXT\", \"provider\": \"verbs\", \"max_sect\": 8192${extra:+, $extra}}"
    log "bdev_srp_attach $params" >&2
    out=$(irpc bdev_srp_attach "$params" 2>&1); local rc=$?
    echo "$out" > "$RES/attach-$name.out"
    if [ $rc -ne 0 ]; then log "attach failed (rc $rc): $out" >&2; return 1; fi
    echo "$out" | jq -r . 2>/dev/null || echo "$out"
}

sessions() { # FILE [NAME] -> bdev_srp_get_sessions into FILE
    if [ -n "${2:-}" ]; then irpc bdev_srp_get_sessions "{\"name\": \"$2\"}" > "$1" 2>&1
    else irpc bdev_srp_get_sessions > "$1" 2>&1; fi
}

vhost_up() { # CTRL SOCKET BDEV
    rm -f "$2"
    irpc vhost_blk_create "{\"name\": \"$1\", \"socket\": \"$2\", \"bdev\": \"$3\"}" > /dev/null
}
vhost_down() { irpc vhost_delete_controller "{\"name\": \"$1\"}" > /dev/null; }

# ------------------------------------------------------------------ setup
log "guest: $(nproc) vCPUs, kernel $(uname -r); strata $($STRATA --version 2>&1)"
[ -x "$STRATA" ] || { echo "STEP setup: FAIL ($STRATA missing: cargo build --release -p strata)"; exit 1; }
command -v jq > /dev/null || { echo "STEP setup: FAIL (jq missing)"; exit 1; }
cat > /tmp/ini.json <<JSON
{"cores": [0], "idle_sleep_us": $IDLE_US, "calls": [
  {"method": "bdev_malloc_create", "params": {"name": "m0", "num_blocks": 16384, "block_size": 4096}}]}
JSON
start_strata ini /tmp/ini.json 0; result setup_ini $?
[ -n "$INI_PID" ] || { tails; exit 1; }
HAVE_INI=0
irpc rpc_get_methods 2>/dev/null | grep -q '"bdev_srp_attach"' && HAVE_INI=1
log "bdev_srp_attach in rpc_get_methods: $([ $HAVE_INI = 1 ] && echo yes || echo NO)"

# ------------------------------------------------------------------ tool
if want tool; then
    G0=$FAILS
    vhost_up vm0 /tmp/vm0.sock m0; rc=$?
    if [ $rc -eq 0 ]; then
        verify tool_4k /tmp/vm0.sock --bs 4k --qd 8 --size 16m --seed 11; result tool_verify_4k $?
        verify tool_4m /tmp/vm0.sock --bs 4m --qd 2 --size 32m --seed 12; result tool_verify_4m $?
        # a region written with another seed must be caught
        verify tool_neg /tmp/vm0.sock --read-only-verify --bs 1m --size 4m --seed 13 > /dev/null
        rc=$?; [ $rc -eq 4 ]; result tool_detects_mismatch $? "exit $rc, want 4"
        vhost_down vm0
    else
        result tool_vhost 1 "vhost_blk_create on malloc failed"
    fi
fi

# ------------------------------------------------------------------ a: LIO
if want a; then
    G0=$FAILS
    if [ "$(cat /sys/module/ib_srpt/parameters/srp_max_req_size 2>/dev/null)" != 8260 ]; then
        # ib_srpt's default srp_max_req_size (2116) rejects a login that asks
        # for 8 KiB of immediate data; blktests loads it with 8260. The
        # parameter is read-only at run time.
        [ -d "$CFS/srpt" ] && rmdir "$CFS/srpt"
        timeout 60 modprobe -r ib_srpt && timeout 60 modprobe ib_srpt srp_max_req_size=8260
    fi
    LIO_ID=$(cat /sys/module/ib_srpt/parameters/srpt_service_guid); LIO_ID=${LIO_ID#0x}
    rc=1
    timeout 120 dd if=/dev/zero of=$LIO_IMG bs=1M count=$LIO_MB status=none \
        && timeout 60 "$SELF" __lio_up && rc=0 && LIO_UP=1
    result a_lio_setup $rc "ib_srpt port $LIO_WWN, service guid $LIO_ID, rdma_cm port $LIO_PORT"
    if [ $HAVE_INI = 0 ]; then
        skip a_attach "bdev_srp_attach is not in rpc_get_methods"
    elif [ $LIO_UP = 1 ]; then
        B=$(attach lio0 $LIO_PORT "$LIO_ID"); rc=$?
        result a_attach $rc "bdev ${B:-none}"
        if [ $rc -eq 0 ]; then
            got=$(bdev_size irpc "$B"); [ "$got" = $((LIO_MB << 20)) ]
            result a_size $? "bdev_get_bdevs: $got bytes, want $((LIO_MB << 20))"
            irpc bdev_get_bdevs "{\"name\": \"$B\"}" > "$RES/a_bdev.json" 2>&1
            if vhost_up va /tmp/va.sock "$B"; then
                verify_sizes a /tmp/va.sock 100
                # the same data through the bdev layer, without vhost (the
                # last pass's seed, the first 16 MiB)
                bs=$(jq -r '.[0].block_size' "$RES/a_bdev.json" 2>/dev/null)
                [ "$bs" -gt 0 ] 2>/dev/null || bs=512
                bdev_io_verify irpc "$B" "$LAST_SEED" $(((16 << 20) / bs)); result a_bdev_io_verify $?
                # FUA and flush as the LU's Caching page allows (LIO rejects
                # the FUA bit on an LU without a write cache)
                out=$(irpc bdev_io "{\"name\": \"$B\", \"op\": \"write\", \"offset_blocks\": 0, \"num_blocks\": 8, \"seed\": 5, \"fua\": true}" 2>&1)
                out2=$(irpc bdev_io "{\"name\": \"$B\", \"op\": \"flush\"}" 2>&1)
                [ "$(echo "$out" | jq -r .status 2>/dev/null)" = success ] && [ "$(echo "$out2" | jq -r .status 2>/dev/null)" = success ]
                result a_fua_flush $? "fua write: $(echo "$out" | tr -d '\n '), flush: $(echo "$out2" | tr -d '\n '), caching: $(jq -c '.[0].driver_specific.lu | {write_cache, dpofua}' "$RES/a_bdev.json" 2>/dev/null)"
                vhost_down va
            else
                result a_vhost 1 "vhost_blk_create on $B failed"
            fi
            sessions "$RES/a_sessions.json" "$B"; log "a sessions: $(counters "$RES/a_sessions.json")"
            n=$(sess_sum indirect_cmds "$RES/a_sessions.json"); x=$(sess_sum external_tables "$RES/a_sessions.json")
            # (external_tables stays 0 here: up to 255 descriptors fit
            # inline in an 8260-byte IU, vhost's seg_max is 126)
            [ "$n" -ge 1 ] 2>/dev/null; result a_indirect $? "indirect_cmds $n external_tables $x"
            irpc bdev_srp_detach "{\"name\": \"$B\"}" > "$RES/a_detach.out" 2>&1; rc=$?
            irpc bdev_get_bdevs "{\"name\": \"$B\"}" > /dev/null 2>&1 && rc=1
            result a_detach $rc
        fi
    fi
    if [ $LIO_UP = 1 ]; then timeout 60 "$SELF" __lio_down; result a_lio_teardown $?; LIO_UP=0; fi
    [ $FAILS -gt $G0 ] && tails 20
fi

# ------------------------------------------------------------------ b: strata target
cat > /tmp/tgt.json <<JSON
{"cores": [1], "idle_sleep_us": $IDLE_US, "calls": [
  {"method": "bdev_file_create", "params": {"name": "f0", "filename": "$TGT_IMG", "block_size": 4096}},
  {"method": "srpt_target_create", "params": {"name": "t0", "listen": "$IP:$TGT_PORT", "id_ext": "0x$TGT_ID",
     "ioc_guid": "0x$TGT_ID", "luns": [{"lun": 0, "bdev": "f0"}], "acl": ["*"], "provider": "verbs"}}]}
JSON
SB=
if want b || want c || want d; then
    rc=1
    timeout 120 dd if=/dev/zero of=$TGT_IMG bs=1M count=$TGT_MB status=none && start_strata tgt /tmp/tgt.json 1 && rc=0
    result b_target $rc
    if [ $HAVE_INI = 0 ]; then
        skip b_attach "bdev_srp_attach is not in rpc_get_methods"
    elif [ $rc -eq 0 ]; then
        # reconnect_delay_s 2 for c; fast_io_fail_tmo_s high enough that a
        # restart under TCG does not fail I/O
        SB=$(attach st0 $TGT_PORT $TGT_ID '"reconnect_delay_s": 2, "fast_io_fail_tmo_s": 60, "dev_loss_tmo_s": 300'); rc=$?
        result b_attach $rc "bdev ${SB:-none}"
        [ $rc -eq 0 ] || { SB=; tails 20; }
    fi
fi
if [ -n "$SB" ] && want b; then
    G0=$FAILS
    got=$(bdev_size irpc "$SB"); want_b=$(bdev_size trpc f0)
    [ -n "$got" ] && [ "$got" = "$want_b" ]; result b_size $? "$got bytes, target's f0 $want_b"
    if vhost_up vb /tmp/vb.sock "$SB"; then
        verify_sizes b /tmp/vb.sock 200
        # what the initiator wrote is on the target's bdev, block for block
        bdev_io_verify trpc f0 "$LAST_SEED" 4096; result b_target_bdev_io_verify $?
    else
        result b_vhost 1 "vhost_blk_create on $SB failed"
    fi
    trpc srpt_get_sessions > "$RES/b_srpt_sessions.json" 2>&1
    sessions "$RES/b_sessions.json" "$SB"
    log "target sessions: $(jq -c . "$RES/b_srpt_sessions.json" | cut -c1-300)"
    n=$(sess_sum indirect_cmds "$RES/b_sessions.json"); x=$(sess_sum external_tables "$RES/b_sessions.json")
    [ "$n" -ge 1 ] 2>/dev/null; result b_indirect $? "indirect_cmds $n external_tables $x"
    st=$(sess_strs port_state "$RES/b_sessions.json")
    [ "$st" = running ]; result b_sessions $? "port_state $st; $(counters "$RES/b_sessions.json")"
    # No immediate data: 260-byte IUs carry 12 descriptors inline, so the
    # 64 KiB-segment commands (16 descriptors) make the target fetch the
    # rest of the table with RDMA READ. A second initiator port
    # (initiator_ext 2), so st0's session is not terminated (SINGLE).
    out=$(irpc bdev_srp_attach "{\"name\": \"st2\", \"dest\": \"$IP:$TGT_PORT\", \"id_ext\": \"0x$TGT_ID\", \"ioc_guid\": \"0x$TGT_ID\", \"initiator_ext\": \"0x2\", \"provider\": \"verbs\", \"max_sect\": 8192, \"immediate_data\": false, \"allow_ext_sg\": true}" 2>&1); rc=$?
    result b_ext_attach $rc "$out"
    if [ $rc -eq 0 ] && vhost_up vx /tmp/vx.sock st2; then
        verify b_ext_verify_4m_sg /tmp/vx.sock --bs 4m --seg-size 64k --qd 2 --size 16m --seed 250; result b_ext_verify_4m_sg $?
        bdev_io_verify trpc f0 250 4096; result b_ext_target_bdev_io_verify $?
        sessions "$RES/b_ext_sessions.json" st2
        x=$(sess_sum external_tables "$RES/b_ext_sessions.json"); imm=$(sess_sum immediate_cmds "$RES/b_ext_sessions.json")
        [ "$x" -ge 1 ] 2>/dev/null && [ "$imm" = 0 ]; result b_ext_tables $? "external_tables $x immediate_cmds $imm"
        vhost_down vx 2>/dev/null
    fi
    irpc bdev_srp_detach '{"name": "st2"}' > /dev/null 2>&1
    [ $FAILS -gt $G0 ] && tails 20
fi

# ------------------------------------------------------------------ c: kill -9 under load
if [ -n "$SB" ] && want c; then
    G0=$FAILS
    [ -S /tmp/vb.sock ] || vhost_up vb /tmp/vb.sock "$SB"
    sessions "$RES/c_sessions0.json" "$SB"; r0=$(sess_sum reconnects "$RES/c_sessions0.json")
    VERIFY_T=180 verify_bg c_load /tmp/vb.sock --bs 16k --qd 8 --size 8m --seed 300 --time 35 --io-timeout 90
    sleep 8
    log "kill -9 target (pid $TGT_PID) under load"
    kill -KILL "$TGT_PID"; wait "$TGT_PID" 2>/dev/null; TGT_PID=
    sleep 2
    sessions "$RES/c_sessions_down.json" "$SB"; log "initiator port_state, target down: $(sess_strs port_state "$RES/c_sessions_down.json")"
    start_strata tgt /tmp/tgt.json 1; rc=$?
    log "target restarted (rc $rc)"
    result c_target_restart $rc
    verify_wait; rc=$?
    result c_io_resumed $rc "verify under kill -9: exit $rc, longest stall $(jq -r .max_stall_s "$RES/c_load.json" 2>/dev/null)s"
    sessions "$RES/c_sessions.json" "$SB"
    r1=$(sess_sum reconnects "$RES/c_sessions.json")
    log "initiator sessions after: port_state $(sess_strs port_state "$RES/c_sessions.json"); $(counters "$RES/c_sessions.json")"
    [ "$r1" -ge $((r0 + 1)) ] 2>/dev/null; result c_reconnects $? "reconnects $r0 -> $r1"
    seed=$(jq -r .final_seed "$RES/c_load.json" 2>/dev/null)
    if [ -n "$seed" ] && [ "$seed" != null ]; then
        verify c_readback /tmp/vb.sock --read-only-verify --bs 64k --qd 4 --size 8m --seed "$seed"; rc=$?
        # and on the target's file as it came back
        [ $rc -eq 0 ] && { bdev_io_verify trpc f0 "$seed" 2048; rc=$?; }
        result c_readback $rc "seed $seed"
    else
        result c_readback 1 "no final seed from the load run"
    fi
    [ $FAILS -gt $G0 ] && tails 30
fi
[ -n "$SB" ] && { vhost_down vb 2>/dev/null; irpc bdev_srp_detach "{\"name\": \"$SB\"}" > /dev/null 2>&1; }

# ------------------------------------------------------------------ d: SIGSTOP
if [ $HAVE_INI = 1 ] && [ -n "$TGT_PID" ] && want d; then
    G0=$FAILS
    SD=$(attach st1 $TGT_PORT $TGT_ID '"cmd_timeout_s": 5, "reconnect_delay_s": 2, "fast_io_fail_tmo_s": 10, "dev_loss_tmo_s": 300'); rc=$?
    result d_attach $rc "bdev ${SD:-none}"
    if [ $rc -eq 0 ] && vhost_up vd /tmp/vd.sock "$SD"; then
        VERIFY_T=150 verify_bg d_load /tmp/vd.sock --bs 4k --qd 8 --size 4m --seed 400 --time 90 --io-timeout 100
        sleep 5
        log "SIGSTOP target (pid $TGT_PID)"
        kill -STOP "$TGT_PID"; t_stop=$SECONDS
        # the bound: cmd_timeout 5 + abort + reset + fast_io_fail 10, and slack for TCG
        BOUND=${D_BOUND:-75}
        for _ in $(seq $((BOUND * 5))); do kill -0 "$VPID" 2>/dev/null || break; sleep 0.2; done
        if kill -0 "$VPID" 2>/dev/null; then
            log "verify still running ${BOUND}s after SIGSTOP: I/O hangs"; kill -TERM "$VPID"; verify_wait; rc=124
        else
            verify_wait; rc=$?
        fi
        dt=$((SECONDS - t_stop))
        # 3: the tool saw I/O errors (the path failed) - what must happen
        [ $rc -eq 3 ]; result d_io_returns $? "verify exit $rc ${dt}s after SIGSTOP (want 3: I/O error, within ${BOUND}s)"
        # a diagnostic I/O on the failed-fast port must also return
        t0=$SECONDS
        out=$(RPC_T=60 irpc bdev_io "{\"name\": \"$SD\", \"op\": \"read\", \"offset_blocks\": 0, \"num_blocks\": 1}" 2>&1); rc=$?
        dt=$((SECONDS - t0)); st=$(echo "$out" | jq -r .status 2>/dev/null)
        log "bdev_io read while stopped: rc $rc, ${dt}s: $(echo "$out" | tr -d '\n ' | cut -c1-200)"
        [ $rc -ne 124 ] && [ "$dt" -le 45 ] && [ "$st" != success ]; result d_bdev_io_returns $? "status ${st:-?} after ${dt}s"
        sessions "$RES/d_sessions.json" "$SD"
        log "initiator sessions while stopped: port_state $(sess_strs port_state "$RES/d_sessions.json"); $(counters "$RES/d_sessions.json")"
        to=$(sess_sum timeouts "$RES/d_sessions.json"); ab=$(sess_sum aborts_sent "$RES/d_sessions.json"); rs=$(sess_sum lun_resets_sent "$RES/d_sessions.json")
        [ "$to" -ge 1 ] && [ "$ab" -ge 1 ] && [ "$rs" -ge 1 ] 2>/dev/null
        result d_counters $? "timeouts $to aborts_sent $ab lun_resets_sent $rs port_state $(sess_strs port_state "$RES/d_sessions.json")"
        log "SIGCONT target"
        kill -CONT "$TGT_PID"
        rc=1
        for _ in $(seq 60); do
            sessions "$RES/d_sessions_after.json" "$SD"
            st=$(sess_strs port_state "$RES/d_sessions_after.json")
            [ "$st" = running ] && { rc=0; break; }
            sleep 1
        done
        [ $rc -eq 0 ] && { verify d_after /tmp/vd.sock --bs 4k --qd 8 --size 4m --seed 401; rc=$?; }
        result d_recover $rc "port_state $st after SIGCONT"
        vhost_down vd
    else
        [ $rc -eq 0 ] && result d_vhost 1 "vhost_blk_create on $SD failed"
    fi
    [ -n "$SD" ] && irpc bdev_srp_detach "{\"name\": \"$SD\"}" > /dev/null 2>&1
    [ $FAILS -gt $G0 ] && tails 30
fi

# ------------------------------------------------------------------ teardown
rc=0
if [ -n "$TGT_PID" ]; then stop_strata tgt || rc=$?; fi
stop_strata ini || rc=$?
result shutdown $rc "both strata processes exit 0 on SIGTERM"
grep -E " (WARN|ERROR) " "$RES/ini.log" | tail -8
echo "================ SUMMARY: $PASSES passed, $FAILS failed ($((SECONDS - T_START))s)"
printf '%s\n' "${SUMMARY[@]}"
[ $FAILS -eq 0 ]
