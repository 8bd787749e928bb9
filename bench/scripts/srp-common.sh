# bench/scripts/srp-common.sh — guest-side helpers shared by the SRP bench
# scripts (srp-vs-lio-inner.sh, srp-initiator-vs-ib_srp.sh). Sourced.

log() { echo "[$(date +%T)] $*"; }

# The kernel initiator's remote ports (ib_srp logins).
remote_ports() { ls /sys/class/srp_remote_ports/ 2>/dev/null | grep port; }

# find_disk VENDOR -> /dev/sdX of a SCSI disk of that INQUIRY vendor with a
# non-zero size (waits up to 30 s)
find_disk() {
    local d
    for _ in $(seq 150); do
        for d in /sys/block/sd*; do
            [ -e "$d/device/vendor" ] || continue
            if grep -q "$1" "$d/device/vendor" && [ "$(cat "$d/size")" -gt 0 ]; then
                echo "/dev/${d##*/}"; return 0
            fi
        done
        sleep 0.2
    done
    return 1
}

# median: of the numbers on stdin, one per line (0 when there are none)
median() { sort -g | awk '{a[NR]=$1} END {if (NR == 0) print 0; else print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
