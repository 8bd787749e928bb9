//! Property tests: execute and UNMAP parsing never panic on arbitrary input,
//! and every result is well formed.

mod common;
use common::*;
use proptest::prelude::*;
use scsi::{execute_absent_lun, BlockOp, Context, Lun, Outcome, SenseKey};

/// Opcodes worth fuzzing harder: every supported one plus a few others.
const OPS: &[u8] = &[
    0x00, 0x03, 0x08, 0x0A, 0x12, 0x1A, 0x1B, 0x25, 0x28, 0x2A, 0x2F, 0x35, 0x41, 0x42, 0x5A, 0x88,
    0x8A, 0x8F, 0x91, 0x93, 0x9E, 0xA0, 0xA3, 0xA8, 0xAA, 0x55, 0x7F,
];

fn cdbs() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..32),
        (
            proptest::sample::select(OPS),
            proptest::collection::vec(any::<u8>(), 0..31)
        )
            .prop_map(|(op, mut rest)| {
                rest.insert(0, op);
                rest
            }),
        // Mostly-zero CDBs get past the reserved-bit checks more often.
        (
            proptest::sample::select(OPS),
            proptest::collection::vec((0usize..16, any::<u8>()), 0..4)
        )
            .prop_map(|(op, pokes)| {
                let mut c = vec![0u8; 16];
                c[0] = op;
                for (i, v) in pokes {
                    if i > 0 {
                        c[i] = v;
                    }
                }
                if op == 0x9E {
                    c[1] = (c[1] & 0xE0) | 0x10;
                }
                if op == 0xA3 {
                    c[1] = (c[1] & 0xE0) | 0x0C;
                }
                c
            }),
        // Well-formed 16-byte block commands with small ranges.
        (
            proptest::sample::select(&[0x88u8, 0x8A, 0x8F, 0x91, 0x93][..]),
            0u8..0x20,
            0u64..0x20000,
            0u32..0x3000
        )
            .prop_map(|(op, b1, lba, n)| cdb16(op, b1, lba, n).to_vec()),
    ]
}

fn luns() -> impl Strategy<Value = Lun> {
    (any::<[bool; 5]>(), 1u64..1 << 34, 1u32..4096).prop_map(|(b, n, mt)| {
        lun_with(|c| {
            c.caps.unmap = b[0];
            c.caps.unmap_reads_zero = b[1];
            c.caps.write_zeroes = b[2];
            c.caps.write_cache = b[3];
            c.caps.read_only = b[4];
            c.num_blocks = n;
            c.limits.max_transfer_blocks = mt;
        })
    })
}

fn assert_well_formed(lun: &Lun, out: Outcome, buf_len: usize) {
    let info = lun.info();
    let in_range = |lba: u64, blocks: u64| {
        lba.checked_add(blocks)
            .is_some_and(|e| e <= info.num_blocks())
    };
    match out {
        Outcome::Done { data_in_len } => assert!(data_in_len <= buf_len),
        Outcome::Check(s) => assert_ne!(s.key, SenseKey::NoSense),
        Outcome::Block(op) => match op {
            BlockOp::Read { lba, blocks, .. } | BlockOp::Write { lba, blocks, .. } => {
                assert!(blocks >= 1 && blocks <= info.limits().max_transfer_blocks);
                assert!(in_range(lba, blocks.into()));
                if matches!(op, BlockOp::Write { .. }) {
                    assert!(!info.caps().read_only);
                }
            }
            BlockOp::Flush { lba, blocks } => assert!(blocks >= 1 && in_range(lba, blocks)),
            BlockOp::WriteZeroes {
                lba,
                blocks,
                may_unmap,
            }
            | BlockOp::WriteSame {
                lba,
                blocks,
                unmap: may_unmap,
            } => {
                assert!(!info.caps().read_only && info.caps().write_same());
                assert!(blocks >= 1 && blocks <= info.limits().max_write_same_blocks);
                assert!(in_range(lba, blocks.into()));
                assert!(!may_unmap || info.caps().unmap);
            }
            BlockOp::UnmapParams { param_len } => {
                assert!(param_len >= 8 && info.caps().unmap && !info.caps().read_only)
            }
        },
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn execute_never_panics(lun in luns(), cdb in cdbs(), buf_len in 0usize..600, sense in any::<bool>()) {
        let mut buf = vec![0u8; buf_len];
        let luns = [0u16, 1, 2, 300];
        let ctx = Context {
            luns: &luns,
            pending_sense: sense.then_some(scsi::Sense::POWER_ON_RESET),
        };
        let out = lun.execute(&cdb, &ctx, &mut buf);
        assert_well_formed(&lun, out, buf_len);
        // expected_transfer never panics either, and a Block op's transfer
        // agrees with it.
        let t = lun.expected_transfer(&cdb);
        if let Outcome::Block(op) = out {
            prop_assert_eq!(op.transfer(lun.info().block_size()), t);
        }
        let out = execute_absent_lun(&cdb, &ctx, &mut buf);
        prop_assert!(!matches!(out, Outcome::Block(_)));
        scsi::unit_attention_action(&cdb);
    }

    #[test]
    fn unmap_parsing_never_panics(lun in luns(), params in proptest::collection::vec(any::<u8>(), 0..200)) {
        let info = lun.info().clone();
        if let Ok(it) = lun.parse_unmap(&params) {
            let mut total = 0u64;
            for r in it {
                prop_assert!(r.blocks >= 1);
                prop_assert!(r.lba.checked_add(r.blocks.into()).is_some_and(|e| e <= info.num_blocks()));
                total += u64::from(r.blocks);
            }
            prop_assert!(total <= u64::from(info.limits().max_unmap_lba_count));
        }
    }

    #[test]
    fn unmap_parsing_structured(
        descs in proptest::collection::vec((0u64..0x11000, 0u32..0x900), 0..8),
        extra in 0usize..20,
    ) {
        let l = lun();
        let mut v = Vec::new();
        let bd = (descs.len() * 16) as u16;
        v.extend_from_slice(&(bd + 6).to_be_bytes());
        v.extend_from_slice(&bd.to_be_bytes());
        v.extend_from_slice(&[0; 4]);
        for &(lba, n) in &descs {
            v.extend_from_slice(&lba.to_be_bytes());
            v.extend_from_slice(&n.to_be_bytes());
            v.extend_from_slice(&[0; 4]);
        }
        v.extend(std::iter::repeat_n(0xAB, extra));
        let total: u64 = descs.iter().map(|d| u64::from(d.1)).sum();
        let fits = descs.iter().all(|&(lba, n)| lba + u64::from(n) <= 0x10000);
        let res = l.parse_unmap(&v);
        if descs.len() > 4 {
            prop_assert_eq!(res.unwrap_err().asc, 0x26);
        } else if !fits {
            prop_assert!(res.is_err());
        } else if total > 0x1000 {
            prop_assert_eq!(res.unwrap_err().asc, 0x26);
        } else {
            let got: Vec<_> = res.unwrap().map(|r| (r.lba, r.blocks)).collect();
            let want: Vec<_> = descs.iter().copied().filter(|d| d.1 != 0).collect();
            prop_assert_eq!(got, want);
        }
    }
}
