# ci/vm/lio.sh — LIO's ib_srpt through configfs, as blktests' tests/srp/rc
# (start_lio_srpt) sets it up: one backstore, a target port named after the
# port GID's interface id (the GUID form, whose ACLs rdma_cm logins match by
# initiator IP address), LUN 0, one ACL mapping LUN 0. Sourced (not run) by
# the guest scripts that need LIO; they run lio_up / lio_down in their own
# process under `timeout`, so that a configfs write that hangs is bounded.
#
# Needs: CFS (/sys/kernel/config/target), LIO_HBA (fileio_0 | iblock_0),
# LIO_BS ($CFS/core/$LIO_HBA/<name>), LIO_CONTROL (the backstore's control
# string: fd_dev_name=...,fd_dev_size=... or udev_path=...), LIO_SERIAL,
# LIO_PORT (rdma_cm port), LIO_WWN, LIO_TPG, LIO_ACL.

lio_up() {
    set -e
    mkdir -p "$LIO_BS"
    echo "$LIO_CONTROL" > "$LIO_BS/control"
    echo "$LIO_SERIAL" > "$LIO_BS/wwn/vpd_unit_serial"
    echo 1 > "$LIO_BS/enable"
    [ -d "$CFS/srpt" ] || mkdir "$CFS/srpt"
    echo "$LIO_PORT" > "$CFS/srpt/discovery_auth/rdma_cm_port"
    local t=$CFS/srpt/$LIO_WWN/$LIO_TPG
    mkdir -p "$t"
    mkdir "$t/lun/lun_0"
    ln -s "$LIO_BS" "$t/lun/lun_0/$(basename "$LIO_BS")"
    mkdir -p "$t/acls/$LIO_ACL/lun_0"
    ln -s "$t/lun/lun_0" "$t/acls/$LIO_ACL/lun_0/lun_0"
    echo 1 > "$t/enable"
}

# lio_down: undoes lio_up (whatever part of it happened); status 0 if all
# of it went.
lio_down() {
    local t=$CFS/srpt/$LIO_WWN/$LIO_TPG rc=0
    if [ -d "$t" ]; then
        [ -e "$t/enable" ] && { echo 0 > "$t/enable" || rc=1; }
        rm -f "$t/acls/$LIO_ACL/lun_0/lun_0"
        rmdir "$t/acls/$LIO_ACL/lun_0" "$t/acls/$LIO_ACL" 2>/dev/null || rc=1
        rm -f "$t/lun/lun_0/$(basename "$LIO_BS")"
        rmdir "$t/lun/lun_0" || rc=1
        rmdir "$t" || rc=1
    fi
    [ -d "$CFS/srpt/$LIO_WWN" ] && { rmdir "$CFS/srpt/$LIO_WWN" || rc=1; }
    [ -d "$LIO_BS" ] && { rmdir "$LIO_BS" || rc=1; }
    [ -d "$CFS/core/$LIO_HBA" ] && { rmdir "$CFS/core/$LIO_HBA" || rc=1; }
    return $rc
}
