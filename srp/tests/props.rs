//! Property tests: encode/decode round trips for every IU, and decoders
//! that never panic on arbitrary or mutated bytes.

use proptest::collection::vec;
use proptest::prelude::*;
use srp::*;

fn direct_buf() -> impl Strategy<Value = DirectBuf> {
    (any::<u64>(), any::<u32>(), any::<u32>()).prop_map(|(va, key, len)| DirectBuf { va, key, len })
}

fn port_id() -> impl Strategy<Value = PortId> {
    any::<[u8; 16]>().prop_map(PortId)
}

fn lun() -> impl Strategy<Value = Lun> {
    any::<[u8; 8]>().prop_map(Lun)
}

fn login_req() -> impl Strategy<Value = LoginReq> {
    (
        any::<u64>(),
        any::<u32>(),
        any::<u16>(),
        any::<bool>(),
        any::<bool>(),
        any::<u16>(),
        port_id(),
        port_id(),
    )
        .prop_map(|(tag, it, fmt, multi, imm, off, i, t)| LoginReq {
            tag,
            req_it_iu_len: it,
            req_buf_fmt: BufFormats(fmt),
            multichannel: if multi {
                MultiChannelAction::Multi
            } else {
                MultiChannelAction::Single
            },
            immediate_data_requested: imm,
            imm_data_offset: off,
            initiator_port_id: i,
            target_port_id: t,
        })
}

fn login_rsp() -> impl Strategy<Value = LoginRsp> {
    (
        any::<u32>(),
        any::<u64>(),
        any::<u32>(),
        any::<u32>(),
        any::<u16>(),
        0..3u8,
        any::<bool>(),
    )
        .prop_map(|(lim, tag, it, ti, fmt, mc, imm)| LoginRsp {
            req_lim_delta: lim,
            tag,
            max_it_iu_len: it,
            max_ti_iu_len: ti,
            buf_fmt: BufFormats(fmt),
            multichannel: match mc {
                0 => MultiChannelResult::NoChannel,
                1 => MultiChannelResult::Terminated,
                _ => MultiChannelResult::Maintained,
            },
            immediate_data_supported: imm,
        })
}

/// Owned model of one direction's descriptor; borrowed into a `DataDesc`.
#[derive(Debug, Clone)]
enum DescModel {
    None,
    Direct(DirectBuf),
    /// Inline descriptors, extra table entries not inline, table va/key,
    /// total length used when the table is partial.
    Indirect(Vec<DirectBuf>, u8, u64, u32, u32),
    /// Bytes of padding between the descriptor and the data, and the data.
    Immediate(u16, Vec<u8>),
}

fn desc_in() -> impl Strategy<Value = DescModel> {
    let small = (any::<u64>(), any::<u32>(), 0..=1u32 << 24).prop_map(|(va, key, len)| DirectBuf {
        va,
        key,
        len,
    });
    prop_oneof![
        Just(DescModel::None),
        direct_buf().prop_map(DescModel::Direct),
        (
            vec(small, 0..20),
            0..4u8,
            any::<u64>(),
            any::<u32>(),
            any::<u32>()
        )
            .prop_map(|(d, x, va, key, tot)| DescModel::Indirect(d, x, va, key, tot)),
    ]
}

fn desc_out() -> impl Strategy<Value = DescModel> {
    prop_oneof![
        3 => desc_in(),
        1 => (0..64u16, vec(any::<u8>(), 0..200)).prop_map(|(p, d)| DescModel::Immediate(p, d)),
    ]
}

#[derive(Debug, Clone)]
struct CmdModel {
    sol_not: u8,
    tag: u64,
    lun: Lun,
    task_attr: u8,
    cdb: Vec<u8>,
    out: DescModel,
    inn: DescModel,
}

fn cmd_model() -> impl Strategy<Value = CmdModel> {
    (
        any::<u8>(),
        any::<u64>(),
        lun(),
        any::<u8>(),
        prop_oneof![3 => 0..=4usize, 1 => 0..=63usize]
            .prop_flat_map(|k| vec(any::<u8>(), 16 + 4 * k)),
        desc_out(),
        desc_in(),
    )
        .prop_map(|(sol_not, tag, lun, task_attr, cdb, out, inn)| CmdModel {
            sol_not,
            tag,
            lun,
            task_attr,
            cdb,
            // Immediate data excludes a data-in descriptor.
            inn: if matches!(out, DescModel::Immediate(..)) {
                DescModel::None
            } else {
                inn
            },
            out,
        })
}

fn to_desc(m: &DescModel, desc_start: usize) -> DataDesc<'_> {
    match m {
        DescModel::None => DataDesc::None,
        DescModel::Direct(d) => DataDesc::Direct(*d),
        DescModel::Indirect(d, extra, va, key, tot) => {
            let entries = d.len() + usize::from(*extra);
            let total_len = if *extra == 0 {
                d.iter().map(|x| x.len).sum()
            } else {
                *tot
            };
            DataDesc::Indirect(IndirectBuf {
                table_desc: DirectBuf {
                    va: *va,
                    key: *key,
                    len: (entries * 16) as u32,
                },
                total_len,
                partial: DescList::from_slice(d),
            })
        }
        DescModel::Immediate(pad, data) => DataDesc::Immediate(ImmediateData {
            offset: (desc_start + IMM_DESC_SIZE) as u16 + *pad,
            data,
        }),
    }
}

fn build(m: &CmdModel) -> SrpCmd<'_> {
    let desc_start = SRP_CMD_HEADER_SIZE + m.cdb.len() - 16;
    SrpCmd {
        sol_not: m.sol_not,
        tag: m.tag,
        lun: m.lun,
        task_attr: TaskAttr::from_u8(m.task_attr),
        cdb: &m.cdb,
        data_out: to_desc(&m.out, desc_start),
        data_in: to_desc(&m.inn, desc_start),
    }
}

fn imm_offset(c: &SrpCmd<'_>) -> u16 {
    match c.data_out {
        DataDesc::Immediate(im) => im.offset,
        _ => LINUX_IMM_DATA_OFFSET,
    }
}

/// Encodes `v` both into an exact `Vec` and into an oversized dirty
/// buffer; the two must agree.
fn enc<T: Encode>(v: &T) -> Vec<u8> {
    let bytes = v.to_vec().expect("encode");
    assert_eq!(bytes.len(), v.encoded_len());
    let mut big = vec![0x5au8; bytes.len() + 17];
    assert_eq!(v.encode(&mut big).expect("encode"), bytes.len());
    assert_eq!(&big[..bytes.len()], &bytes[..]);
    assert!(big[bytes.len()..].iter().all(|&b| b == 0x5a));
    if !bytes.is_empty() {
        let mut short = vec![0u8; bytes.len() - 1];
        assert!(matches!(
            v.encode(&mut short),
            Err(SrpError::BufferTooSmall { .. })
        ));
    }
    bytes
}

/// A decoded IU re-encodes into bytes that decode to the same IU.
fn reencode_stable(b: &[u8], imm: u16) {
    if let Ok(iu) = decode_iu_with_imm_offset(b, imm) {
        let again = iu.to_vec().expect("a decoded IU must re-encode");
        assert_eq!(decode_iu_with_imm_offset(&again, imm), Ok(iu));
    }
}

/// Runs every decoder over `b`; none may panic.
fn decode_all(b: &[u8], imm: u16) {
    let _ = decode_iu(b);
    let _ = decode_iu_with_imm_offset(b, imm);
    let _ = LoginReq::decode(b);
    let _ = LoginReq::decode_rdma(b);
    let _ = LoginRsp::decode(b);
    let _ = LoginRej::decode(b);
    let _ = ILogout::decode(b);
    let _ = TLogout::decode(b);
    let _ = TskMgmt::decode(b);
    let _ = CredReq::decode(b);
    let _ = CredRsp::decode(b);
    let _ = AerReq::decode(b);
    let _ = AerRsp::decode(b);
    let _ = SrpRsp::decode(b);
    let _ = SrpCmd::decode(b);
    if let Ok(c) = SrpCmd::decode_with_imm_offset(b, imm) {
        // Walk everything a target would touch.
        let _ = c.data_out.descriptors().count();
        let _ = c
            .data_in
            .descriptors()
            .map(|d| u64::from(d.len))
            .sum::<u64>();
        let _ = (
            c.data_out.transfer_len(),
            c.data_in.transfer_len(),
            c.cdb.len(),
        );
    }
    reencode_stable(b, imm);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn login_req_roundtrip(v in login_req()) {
        let b = enc(&v);
        prop_assert_eq!(LoginReq::decode(&b), Ok(v));
        prop_assert_eq!(decode_iu(&b), Ok(Iu::LoginReq(v)));
        let r = v.to_rdma_bytes();
        prop_assert_eq!(LoginReq::decode_rdma(&r), Ok(v));
    }

    #[test]
    fn login_rsp_roundtrip(v in login_rsp()) {
        let b = enc(&v);
        prop_assert_eq!(decode_iu(&b), Ok(Iu::LoginRsp(v)));
    }

    #[test]
    fn login_rej_roundtrip(reason in any::<u32>(), tag in any::<u64>(), fmt in any::<u16>()) {
        let v = LoginRej { reason: LoginRejReason::from_u32(reason), tag, buf_fmt: BufFormats(fmt) };
        prop_assert_eq!(v.reason.to_u32(), reason);
        let b = enc(&v);
        prop_assert_eq!(decode_iu(&b), Ok(Iu::LoginRej(v)));
    }

    #[test]
    fn small_ius_roundtrip(tag in any::<u64>(), sol in any::<u8>(), r in any::<u32>(), d in any::<i32>()) {
        let i = ILogout { tag };
        let eb = enc(&i);
        prop_assert_eq!(decode_iu(&eb), Ok(Iu::ILogout(i)));
        let t = TLogout { sol_not: sol, reason: TLogoutReason::from_u32(r), tag };
        let eb = enc(&t);
        prop_assert_eq!(decode_iu(&eb), Ok(Iu::TLogout(t)));
        let c = CredReq { sol_not: sol, req_lim_delta: d, tag };
        let eb = enc(&c);
        prop_assert_eq!(decode_iu(&eb), Ok(Iu::CredReq(c)));
        let c = CredRsp { tag };
        let eb = enc(&c);
        prop_assert_eq!(decode_iu(&eb), Ok(Iu::CredRsp(c)));
        let a = AerRsp { tag };
        let eb = enc(&a);
        prop_assert_eq!(decode_iu(&eb), Ok(Iu::AerRsp(a)));
    }

    #[test]
    fn tsk_mgmt_roundtrip(sol in any::<u8>(), tag in any::<u64>(), l in lun(), f in any::<u8>(), tt in any::<u64>()) {
        let v = TskMgmt { sol_not: sol, tag, lun: l, function: TaskMgmtFunction::from_u8(f), task_tag: tt };
        prop_assert_eq!(v.function.to_u8(), f);
        let eb = enc(&v);
        prop_assert_eq!(decode_iu(&eb), Ok(Iu::TskMgmt(v)));
    }

    #[test]
    fn aer_req_roundtrip(sol in any::<u8>(), d in any::<i32>(), tag in any::<u64>(), l in lun(), sense in vec(any::<u8>(), 0..96)) {
        let v = AerReq { sol_not: sol, req_lim_delta: d, tag, lun: l, sense_data: &sense };
        let b = enc(&v);
        prop_assert_eq!(decode_iu(&b), Ok(Iu::AerReq(v)));
    }

    #[test]
    fn rsp_roundtrip(
        sol in any::<u8>(), d in any::<i32>(), tag in any::<u64>(), flags in any::<u8>(),
        status in any::<u8>(), dor in any::<u32>(), dir in any::<u32>(),
        resp in vec(any::<u8>(), 0..32), sense in vec(any::<u8>(), 0..96),
    ) {
        // Validity bits must agree with the lists for an exact round trip:
        // the encoder sets them for non-empty lists.
        let mut f = flags & !0x03;
        if !resp.is_empty() || flags & 1 != 0 { f |= 1; }
        if !sense.is_empty() || flags & 2 != 0 { f |= 2; }
        let v = SrpRsp {
            sol_not: sol, req_lim_delta: d, tag, flags: RspFlags(f), status,
            data_out_res_cnt: dor, data_in_res_cnt: dir,
            response_data: &resp, sense_data: &sense,
        };
        let b = enc(&v);
        prop_assert_eq!(decode_iu(&b), Ok(Iu::Rsp(v)));
    }

    #[test]
    fn cmd_roundtrip(m in cmd_model()) {
        let v = build(&m);
        let b = enc(&v);
        let imm = imm_offset(&v);
        let d = SrpCmd::decode_with_imm_offset(&b, imm);
        prop_assert_eq!(d, Ok(v));
        prop_assert_eq!(decode_iu_with_imm_offset(&b, imm), Ok(Iu::Cmd(v)));
        // Descriptor iteration sees exactly what was encoded.
        let d = d.unwrap();
        prop_assert!(d.data_out.descriptors().eq(v.data_out.descriptors()));
        prop_assert!(d.data_in.descriptors().eq(v.data_in.descriptors()));
        // Trailing bytes after the IU's content (larger receive) are fine.
        let mut longer = b.clone();
        longer.extend_from_slice(&[0xff; 8]);
        prop_assert_eq!(SrpCmd::decode_with_imm_offset(&longer, imm).map(|c| c.data_in), Ok(v.data_in));
    }

    #[test]
    fn cmd_truncated_never_decodes_wrongly(m in cmd_model(), cut in any::<prop::sample::Index>()) {
        let v = build(&m);
        let b = enc(&v);
        let imm = imm_offset(&v);
        let n = cut.index(b.len());
        // Every byte of an encoded SRP_CMD is needed: a strict prefix (a
        // short receive) must be rejected, never half-decoded.
        let r = SrpCmd::decode_with_imm_offset(&b[..n], imm);
        prop_assert!(r.is_err(), "prefix of {} of {} decoded: {:?}", n, b.len(), r);
    }

    #[test]
    fn mutated_cmd_never_panics(m in cmd_model(), muts in vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), imm in any::<u16>()) {
        let v = build(&m);
        let mut b = enc(&v);
        for (i, x) in muts {
            let k = i.index(b.len());
            b[k] = x;
        }
        decode_all(&b, imm);
        decode_all(&b, imm_offset(&v));
    }

    #[test]
    fn arbitrary_bytes_never_panic(b in vec(any::<u8>(), 0..512), imm in any::<u16>()) {
        decode_all(&b, imm);
    }

    #[test]
    fn arbitrary_bytes_with_valid_opcode_never_panic(
        op in prop::sample::select(vec![0x00u8, 0x01, 0x02, 0x03, 0x41, 0x42, 0x80, 0x81, 0x82, 0xc0, 0xc1, 0xc2]),
        mut b in vec(any::<u8>(), 0..512),
        imm in any::<u16>(),
    ) {
        if let Some(first) = b.first_mut() { *first = op; }
        decode_all(&b, imm);
    }

    #[test]
    fn lun_single_level_roundtrip(n in 0..=0x3fffu16) {
        let l = Lun::from_single_level(n).unwrap();
        prop_assert_eq!(l.single_level(), Some(n));
        prop_assert_eq!(Lun::from_linux(l.to_linux()), l);
    }

    #[test]
    fn lun_linux_roundtrip(n in any::<u64>()) {
        prop_assert_eq!(Lun::from_linux(n).to_linux(), n);
    }

    #[test]
    fn port_id_parts_roundtrip(a in any::<u64>(), g in any::<u64>()) {
        let p = PortId::from_parts(a, g);
        prop_assert_eq!((p.id_ext(), p.guid()), (a, g));
    }
}

/// The SRP_CMD generator reaches every descriptor kind in both directions
/// (so the round-trip property above is not vacuous).
#[test]
fn cmd_generator_covers_every_descriptor_kind() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut seen = [[false; 4]; 2];
    let mut partial = false;
    let mut add_cdb = false;
    for _ in 0..512 {
        let m = cmd_model().new_tree(&mut runner).unwrap().current();
        let c = build(&m);
        seen[0][usize::from(c.data_out.format())] = true;
        seen[1][usize::from(c.data_in.format())] = true;
        for d in [c.data_out, c.data_in] {
            if let DataDesc::Indirect(i) = d {
                partial |= !i.is_complete();
            }
        }
        add_cdb |= c.cdb.len() > 16;
    }
    assert_eq!(seen[0], [true; 4], "data-out kinds");
    assert_eq!(seen[1], [true, true, true, false], "data-in kinds");
    assert!(partial && add_cdb);
}
