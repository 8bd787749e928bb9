//! Commands that become backend operations, and their error cases.

mod common;
use common::*;
use scsi::{BlockOp, Direction, Outcome, Sense, SenseKey, Transfer, UnmapRange};

fn block(lun: &scsi::Lun, cdb: &[u8]) -> BlockOp {
    match run(lun, cdb).0 {
        Outcome::Block(op) => op,
        other => panic!("expected Block, got {other:?}"),
    }
}

const DONE0: Outcome = Outcome::Done { data_in_len: 0 };

#[test]
fn read_write_all_sizes() {
    let l = lun();
    let rd = |lba, blocks, fua| BlockOp::Read { lba, blocks, fua };
    let wr = |lba, blocks, fua| BlockOp::Write { lba, blocks, fua };
    assert_eq!(
        block(&l, &[0x08, 0x00, 0x12, 0x03, 7, 0]),
        rd(0x1203, 7, false)
    );
    assert_eq!(
        block(&l, &[0x0A, 0x00, 0x00, 0x10, 1, 0]),
        wr(0x10, 1, false)
    );
    assert_eq!(
        block(&l, &cdb10(0x28, 0, 0x1234, 16)),
        rd(0x1234, 16, false)
    );
    assert_eq!(
        block(&l, &cdb10(0x28, 0x08, 0x1234, 16)),
        rd(0x1234, 16, true)
    );
    assert_eq!(
        block(&l, &cdb10(0x28, 0x10, 0x1234, 16)),
        rd(0x1234, 16, false)
    ); // DPO ignored
    assert_eq!(block(&l, &cdb10(0x2A, 0x18, 5, 3)), wr(5, 3, true));
    assert_eq!(
        block(&l, &cdb16(0x88, 0, 0xFFF0, 0x10)),
        rd(0xFFF0, 16, false)
    );
    assert_eq!(block(&l, &cdb16(0x8A, 0x08, 0, 2048)), wr(0, 2048, true));
    let r12 = [0xA8, 0x08, 0, 0, 0, 9, 0, 0, 0, 4, 0, 0];
    assert_eq!(block(&l, &r12), rd(9, 4, true));
    let w12 = [0xAA, 0, 0, 0, 0, 9, 0, 0, 0, 4, 0, 0];
    assert_eq!(block(&l, &w12), wr(9, 4, false));
    // Group number bits are accepted and ignored; longer CDB buffers too.
    let mut c = [0u8; 32];
    c[..10].copy_from_slice(&cdb10(0x28, 0, 1, 1));
    c[6] = 0x3F;
    assert_eq!(block(&l, &c), rd(1, 1, false));
}

#[test]
fn six_byte_zero_length_means_256() {
    let l = lun();
    assert_eq!(
        block(&l, &[0x08, 0, 0, 0, 0, 0]),
        BlockOp::Read {
            lba: 0,
            blocks: 256,
            fua: false
        }
    );
    assert_eq!(
        block(&l, &[0x0A, 0, 0, 0, 0, 0]),
        BlockOp::Write {
            lba: 0,
            blocks: 256,
            fua: false
        }
    );
    assert_eq!(
        l.expected_transfer(&[0x08, 0, 0, 0, 0, 0]),
        Transfer {
            direction: Direction::In,
            len: 256 * 512
        }
    );
    // Reserved bits of byte 1 (above the LBA).
    assert_eq!(
        check(&l, &[0x08, 0x20, 0, 0, 0, 0]),
        Sense::invalid_field_in_cdb(1, Some(5))
    );
}

#[test]
fn zero_length_transfer_is_a_noop() {
    let l = lun();
    for c in [cdb10(0x28, 0, 100, 0), cdb10(0x2A, 0, 100, 0)] {
        assert_eq!(run(&l, &c).0, DONE0);
    }
    assert_eq!(run(&l, &cdb16(0x88, 0, 0x10000, 0)).0, DONE0); // LBA == capacity, 0 blocks
    assert_eq!(
        triple(check(&l, &cdb16(0x88, 0, 0x10001, 0))),
        (ILLEGAL, 0x21, 0)
    );
}

#[test]
fn write_without_cache_is_fua() {
    let l = lun_with(|c| c.caps.write_cache = false);
    assert_eq!(
        block(&l, &cdb10(0x2A, 0, 5, 3)),
        BlockOp::Write {
            lba: 5,
            blocks: 3,
            fua: true
        }
    );
    assert_eq!(
        block(&l, &cdb10(0x28, 0, 5, 3)),
        BlockOp::Read {
            lba: 5,
            blocks: 3,
            fua: false
        }
    );
}

#[test]
fn lba_out_of_range() {
    let l = lun();
    let oor = (ILLEGAL, 0x21, 0x00);
    assert_eq!(
        block(&l, &cdb10(0x28, 0, 0xFFFF, 1)),
        BlockOp::Read {
            lba: 0xFFFF,
            blocks: 1,
            fua: false
        }
    );
    assert_eq!(triple(check(&l, &cdb10(0x28, 0, 0xFFFF, 2))), oor);
    assert_eq!(triple(check(&l, &cdb10(0x2A, 0, 0x10000, 1))), oor);
    assert_eq!(triple(check(&l, &cdb16(0x88, 0, u64::MAX, 1))), oor); // overflows u64
    assert_eq!(triple(check(&l, &cdb16(0x8A, 0, u64::MAX - 1, 2048))), oor);
    assert_eq!(triple(check(&l, &[0x08, 0x1F, 0xFF, 0xFF, 1, 0])), oor);
}

#[test]
fn transfer_length_over_limit() {
    let l = lun();
    assert_eq!(
        check(&l, &cdb10(0x28, 0, 0, 2049)),
        Sense::invalid_field_in_cdb(7, None)
    );
    assert_eq!(
        check(&l, &cdb16(0x8A, 0, 0, 4096)),
        Sense::invalid_field_in_cdb(10, None)
    );
    assert_eq!(
        check(&l, &[0xA8, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]),
        Sense::invalid_field_in_cdb(6, None)
    );
    let l = lun_with(|c| c.limits.max_transfer_blocks = 100);
    assert_eq!(
        check(&l, &[0x08, 0, 0, 0, 0, 0]),
        Sense::invalid_field_in_cdb(4, None)
    );
}

#[test]
fn protection_bits_rejected() {
    let l = lun();
    let s = check(&l, &cdb10(0x28, 0x20, 0, 1)); // RDPROTECT = 001b
    assert_eq!(triple(s), (ILLEGAL, 0x24, 0x00));
    assert_eq!(s, Sense::invalid_field_in_cdb(1, Some(5)));
    assert_eq!(
        check(&l, &cdb16(0x8A, 0xE0, 0, 1)),
        Sense::invalid_field_in_cdb(1, Some(7))
    );
    // NACA in the control byte.
    let mut c = cdb10(0x28, 0, 0, 1);
    c[9] = 0x04;
    assert_eq!(check(&l, &c), Sense::invalid_field_in_cdb(9, Some(2)));
}

#[test]
fn read_only_lun() {
    let l = lun_with(|c| c.caps.read_only = true);
    let wp = (SenseKey::DataProtect, 0x27, 0x00);
    assert_eq!(triple(check(&l, &cdb10(0x2A, 0, 0, 1))), wp);
    assert_eq!(triple(check(&l, &cdb16(0x8A, 0, 0, 1))), wp);
    assert_eq!(triple(check(&l, &[0x0A, 0, 0, 0, 1, 0])), wp);
    assert_eq!(
        triple(check(&l, &[0xAA, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0])),
        wp
    );
    assert_eq!(triple(check(&l, &cdb10(0x41, 0, 0, 1))), wp);
    assert_eq!(triple(check(&l, &cdb16(0x93, 0x09, 0, 1))), wp);
    assert_eq!(triple(check(&l, &cdb10(0x42, 0, 0, 24))), wp);
    assert_eq!(l.parse_unmap(&[0; 24]).unwrap_err(), Sense::WRITE_PROTECTED);
    // Reads and flushes are fine.
    assert!(matches!(
        run(&l, &cdb10(0x28, 0, 0, 1)).0,
        Outcome::Block(BlockOp::Read { .. })
    ));
    assert!(matches!(
        run(&l, &cdb10(0x35, 0, 0, 0)).0,
        Outcome::Block(BlockOp::Flush { .. })
    ));
}

#[test]
fn invalid_opcodes() {
    let l = lun();
    for op in [0x04u8, 0x15, 0x55, 0x5E, 0x7F, 0x89, 0xC0, 0xFF] {
        let s = check(&l, &[op, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(triple(s), (ILLEGAL, 0x20, 0x00), "opcode {op:#x}");
    }
    // Empty and short CDBs.
    assert_eq!(triple(check(&l, &[])), (ILLEGAL, 0x24, 0x00));
    assert_eq!(
        triple(check(&l, &[0x28, 0, 0, 0, 0, 0])),
        (ILLEGAL, 0x24, 0x00)
    );
}

#[test]
fn synchronize_cache() {
    let l = lun();
    assert_eq!(
        block(&l, &cdb10(0x35, 0, 0, 0)),
        BlockOp::Flush {
            lba: 0,
            blocks: 0x10000
        }
    );
    assert_eq!(
        block(&l, &cdb10(0x35, 0x02, 0x100, 0)),
        BlockOp::Flush {
            lba: 0x100,
            blocks: 0xFF00
        }
    );
    assert_eq!(
        block(&l, &cdb16(0x91, 0, 10, 20)),
        BlockOp::Flush {
            lba: 10,
            blocks: 20
        }
    );
    assert_eq!(
        triple(check(&l, &cdb16(0x91, 0, 0xFFFF, 2))),
        (ILLEGAL, 0x21, 0)
    );
    assert_eq!(
        triple(check(&l, &cdb10(0x35, 0, 0x10000, 0))),
        (ILLEGAL, 0x21, 0)
    );
    let l = lun_with(|c| c.caps.write_cache = false);
    assert_eq!(run(&l, &cdb10(0x35, 0, 0, 0)).0, DONE0);
}

#[test]
fn verify() {
    let l = lun();
    assert_eq!(run(&l, &cdb10(0x2F, 0, 0, 100)).0, DONE0);
    assert_eq!(run(&l, &cdb16(0x8F, 0x10, 0xFF00, 0x100)).0, DONE0);
    assert_eq!(
        triple(check(&l, &cdb16(0x8F, 0, 0xFF00, 0x101))),
        (ILLEGAL, 0x21, 0)
    );
    // BYTCHK = 1 (compare) is not supported.
    assert_eq!(
        check(&l, &cdb10(0x2F, 0x02, 0, 1)),
        Sense::invalid_field_in_cdb(1, Some(1))
    );
    assert_eq!(l.expected_transfer(&cdb10(0x2F, 0, 0, 100)), Transfer::NONE);
}

#[test]
fn write_same() {
    let l = lun();
    assert_eq!(
        block(&l, &cdb10(0x41, 0, 8, 16)),
        BlockOp::WriteSame {
            lba: 8,
            blocks: 16,
            unmap: false
        }
    );
    let ws = block(&l, &cdb16(0x93, 0x08, 8, 16));
    assert_eq!(
        ws,
        BlockOp::WriteSame {
            lba: 8,
            blocks: 16,
            unmap: true
        }
    );
    assert_eq!(
        ws.transfer(512),
        Transfer {
            direction: Direction::Out,
            len: 512
        }
    );
    assert_eq!(
        ws.with_write_same_data(&[0; 512]),
        BlockOp::WriteZeroes {
            lba: 8,
            blocks: 16,
            may_unmap: true
        }
    );
    let mut pattern = [0u8; 512];
    pattern[100] = 1;
    assert_eq!(ws.with_write_same_data(&pattern), ws);
    // NDOB: no data-out, zeroes.
    let z = block(&l, &cdb16(0x93, 0x01, 8, 16));
    assert_eq!(
        z,
        BlockOp::WriteZeroes {
            lba: 8,
            blocks: 16,
            may_unmap: false
        }
    );
    assert_eq!(z.transfer(512), Transfer::NONE);
    assert_eq!(
        l.expected_transfer(&cdb16(0x93, 0x01, 8, 16)),
        Transfer::NONE
    );
    assert_eq!(
        l.expected_transfer(&cdb16(0x93, 0x08, 8, 16)),
        Transfer {
            direction: Direction::Out,
            len: 512
        }
    );
    // WSNZ: zero blocks rejected; over the limit rejected.
    assert_eq!(
        check(&l, &cdb10(0x41, 0, 8, 0)),
        Sense::invalid_field_in_cdb(7, None)
    );
    assert_eq!(
        check(&l, &cdb16(0x93, 0, 0, 0x2001)),
        Sense::invalid_field_in_cdb(10, None)
    );
    assert_eq!(
        triple(check(&l, &cdb16(0x93, 0, 0xFFFF, 2))),
        (ILLEGAL, 0x21, 0)
    );
    // ANCHOR, PBDATA/LBDATA are not supported.
    assert_eq!(
        check(&l, &cdb16(0x93, 0x10, 0, 1)),
        Sense::invalid_field_in_cdb(1, Some(4))
    );
    assert_eq!(
        check(&l, &cdb10(0x41, 0x02, 0, 1)),
        Sense::invalid_field_in_cdb(1, Some(1))
    );

    // UNMAP bit without unmap support.
    let l = lun_with(|c| c.caps.unmap = false);
    assert_eq!(
        check(&l, &cdb16(0x93, 0x08, 0, 1)),
        Sense::invalid_field_in_cdb(1, Some(3))
    );
    assert!(matches!(
        run(&l, &cdb16(0x93, 0, 0, 1)).0,
        Outcome::Block(_)
    ));
    // Neither unmap nor write-zeroes: WRITE SAME is not offered.
    let l = lun_with(|c| {
        c.caps.unmap = false;
        c.caps.write_zeroes = false;
    });
    assert_eq!(check(&l, &cdb10(0x41, 0, 0, 1)), Sense::INVALID_OPCODE);
    assert_eq!(check(&l, &cdb16(0x93, 0, 0, 1)), Sense::INVALID_OPCODE);
}

fn unmap_list(descs: &[(u64, u32)]) -> Vec<u8> {
    let bd = (descs.len() * 16) as u16;
    let mut v = Vec::new();
    v.extend_from_slice(&(bd + 6).to_be_bytes());
    v.extend_from_slice(&bd.to_be_bytes());
    v.extend_from_slice(&[0; 4]);
    for &(lba, n) in descs {
        v.extend_from_slice(&lba.to_be_bytes());
        v.extend_from_slice(&n.to_be_bytes());
        v.extend_from_slice(&[0; 4]);
    }
    v
}

#[test]
fn unmap_command() {
    let l = lun();
    assert_eq!(run(&l, &cdb10(0x42, 0, 0, 0)).0, DONE0);
    assert_eq!(
        triple(check(&l, &cdb10(0x42, 0, 0, 7))),
        (ILLEGAL, 0x1A, 0x00)
    );
    assert_eq!(
        block(&l, &cdb10(0x42, 0, 0, 40)),
        BlockOp::UnmapParams { param_len: 40 }
    );
    assert_eq!(
        l.expected_transfer(&cdb10(0x42, 0, 0, 40)),
        Transfer {
            direction: Direction::Out,
            len: 40
        }
    );
    // ANCHOR is not supported.
    assert_eq!(
        check(&l, &cdb10(0x42, 1, 0, 40)),
        Sense::invalid_field_in_cdb(1, Some(0))
    );
    // Not offered without unmap.
    let l = lun_with(|c| c.caps.unmap = false);
    assert_eq!(check(&l, &cdb10(0x42, 0, 0, 40)), Sense::INVALID_OPCODE);
    assert_eq!(
        l.parse_unmap(&unmap_list(&[(0, 1)])).unwrap_err(),
        Sense::INVALID_OPCODE
    );
}

#[test]
fn unmap_parameter_list() {
    let l = lun();
    let ranges: Vec<UnmapRange> = l
        .parse_unmap(&unmap_list(&[(0, 8), (100, 0), (0xFF00, 0x100)]))
        .unwrap()
        .collect();
    assert_eq!(
        ranges,
        [
            UnmapRange { lba: 0, blocks: 8 },
            UnmapRange {
                lba: 0xFF00,
                blocks: 0x100
            }
        ]
    );
    assert_eq!(l.parse_unmap(&unmap_list(&[])).unwrap().count(), 0);
    // Header only, or shorter.
    assert_eq!(
        triple(l.parse_unmap(&[0, 6, 0, 0, 0, 0, 0]).unwrap_err()),
        (ILLEGAL, 0x1A, 0)
    );
    // Too many descriptors (limit 4).
    let five = unmap_list(&[(0, 1); 5]);
    let s = l.parse_unmap(&five).unwrap_err();
    assert_eq!(triple(s), (ILLEGAL, 0x26, 0x00));
    assert_eq!(s, Sense::invalid_field_in_param_list(2, None));
    // Total LBA count over the limit (0x1000), even split over descriptors.
    let s = l
        .parse_unmap(&unmap_list(&[(0, 0x800), (0x1000, 0x801)]))
        .unwrap_err();
    assert_eq!(s, Sense::invalid_field_in_param_list(32, None));
    assert!(l
        .parse_unmap(&unmap_list(&[(0, 0x800), (0x1000, 0x800)]))
        .is_ok());
    // Out of range, and overflow.
    assert_eq!(
        triple(l.parse_unmap(&unmap_list(&[(0xFFFF, 2)])).unwrap_err()),
        (ILLEGAL, 0x21, 0)
    );
    assert_eq!(
        triple(l.parse_unmap(&unmap_list(&[(u64::MAX, 1)])).unwrap_err()),
        (ILLEGAL, 0x21, 0)
    );
    // Block descriptor data length longer than the list: clamped; a
    // trailing partial descriptor is ignored.
    let mut v = unmap_list(&[(1, 2), (3, 4)]);
    v.truncate(8 + 16 + 10);
    assert_eq!(
        l.parse_unmap(&v).unwrap().collect::<Vec<_>>(),
        [UnmapRange { lba: 1, blocks: 2 }]
    );
    // Block descriptor data length shorter than the list: only it counts.
    let mut v = unmap_list(&[(1, 2), (0xFFFF_FFFF, 4)]);
    v[3] = 16;
    assert_eq!(l.parse_unmap(&v).unwrap().count(), 1);
}

#[test]
fn expected_transfer() {
    let l = lun();
    let t_in = |len| Transfer {
        direction: Direction::In,
        len,
    };
    let t_out = |len| Transfer {
        direction: Direction::Out,
        len,
    };
    assert_eq!(l.expected_transfer(&cdb10(0x28, 0, 0, 8)), t_in(4096));
    assert_eq!(l.expected_transfer(&cdb10(0x2A, 0, 0, 8)), t_out(4096));
    assert_eq!(
        l.expected_transfer(&cdb16(0x8A, 0, 0, 0x10_0000)),
        t_out(512 << 20)
    );
    assert_eq!(l.expected_transfer(&cdb10(0x28, 0, 0, 0)), Transfer::NONE);
    assert_eq!(l.expected_transfer(&[0x12, 1, 0x83, 1, 0, 0]), t_in(256));
    assert_eq!(l.expected_transfer(&[0x1A, 0, 0x3F, 0, 192, 0]), t_in(192));
    assert_eq!(l.expected_transfer(&cdb10(0x25, 0, 0, 0)), t_in(8));
    assert_eq!(l.expected_transfer(&[0, 0, 0, 0, 0, 0]), Transfer::NONE);
    assert_eq!(l.expected_transfer(&[0x55; 10]), Transfer::NONE);
    assert_eq!(l.expected_transfer(&[0x28, 0, 0]), Transfer::NONE);
    assert_eq!(l.expected_transfer(&[]), Transfer::NONE);
}
