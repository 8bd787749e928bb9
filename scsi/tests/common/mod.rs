#![allow(dead_code)]

use scsi::{
    Capabilities, Context, DesignatorKind, Limits, Lun, LunConfig, LunInfo, Outcome, Sense,
    SenseKey,
};

pub const ID: u64 = 0x0123_4567_89AB_CDEF;

pub fn cfg() -> LunConfig {
    LunConfig {
        block_size: 512,
        num_blocks: 0x10000,
        vendor: "STRATA".into(),
        product: "LUN".into(),
        revision: "0.1".into(),
        serial: "SN0001".into(),
        id: ID,
        designator: DesignatorKind::NaaLocal,
        caps: Capabilities {
            unmap: true,
            unmap_reads_zero: true,
            write_zeroes: true,
            write_cache: true,
            read_only: false,
        },
        limits: Limits {
            max_transfer_blocks: 2048,
            opt_transfer_granularity: 8,
            opt_transfer_blocks: 256,
            max_unmap_lba_count: 0x1000,
            max_unmap_descriptors: 4,
            unmap_granularity: 8,
            max_write_same_blocks: 0x2000,
        },
    }
}

pub fn lun() -> Lun {
    Lun::new(LunInfo::new(cfg()).unwrap())
}

pub fn lun_with(f: impl FnOnce(&mut LunConfig)) -> Lun {
    let mut c = cfg();
    f(&mut c);
    Lun::new(LunInfo::new(c).unwrap())
}

/// Executes with a 4 KiB data-in buffer and returns the outcome and the data.
pub fn run(lun: &Lun, cdb: &[u8]) -> (Outcome, Vec<u8>) {
    run_ctx(lun, cdb, &Context::default())
}

pub fn run_ctx(lun: &Lun, cdb: &[u8], ctx: &Context<'_>) -> (Outcome, Vec<u8>) {
    let mut buf = vec![0xEEu8; 4096];
    let out = lun.execute(cdb, ctx, &mut buf);
    let n = match out {
        Outcome::Done { data_in_len } => data_in_len,
        _ => 0,
    };
    buf.truncate(n);
    (out, buf)
}

/// Executes and expects GOOD; returns the data.
pub fn data(lun: &Lun, cdb: &[u8]) -> Vec<u8> {
    let (out, d) = run(lun, cdb);
    assert!(
        matches!(out, Outcome::Done { .. }),
        "expected Done, got {out:?}"
    );
    d
}

/// Executes and expects CHECK CONDITION; returns the sense.
pub fn check(lun: &Lun, cdb: &[u8]) -> Sense {
    match run(lun, cdb).0 {
        Outcome::Check(s) => s,
        other => panic!("expected CHECK CONDITION, got {other:?}"),
    }
}

pub fn triple(s: Sense) -> (SenseKey, u8, u8) {
    (s.key, s.asc, s.ascq)
}

pub const ILLEGAL: SenseKey = SenseKey::IllegalRequest;

pub fn cdb10(op: u8, b1: u8, lba: u32, len: u16) -> [u8; 10] {
    let l = lba.to_be_bytes();
    let n = len.to_be_bytes();
    [op, b1, l[0], l[1], l[2], l[3], 0, n[0], n[1], 0]
}

pub fn cdb16(op: u8, b1: u8, lba: u64, len: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op;
    c[1] = b1;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&len.to_be_bytes());
    c
}
