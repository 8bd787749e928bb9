//! Byte-level tests against encodings built by hand from the struct
//! layouts in Linux `include/scsi/srp.h` (offsets in the comments), and
//! from how `ib_srp.c` fills them.

use srp::*;

/// Writes `v` big-endian at `off`.
fn put(b: &mut [u8], off: usize, v: &[u8]) {
    b[off..off + v.len()].copy_from_slice(v);
}

const PORT_GUID: u64 = 0x0002_c903_00a1_b2c3;
const IOC_GUID: u64 = 0x0002_c903_00a1_b2c4;
const ID_EXT: u64 = 0x0002_c903_00a1_b2c4;

/// The 56-byte `struct srp_login_req_rdma` as the Linux initiator puts it
/// in rdma_cm private data for the first channel of a target with
/// immediate data enabled: SRP_MULTICHAN_SINGLE | SRP_IMMED_REQUESTED,
/// req_buf_fmt DIRECT|INDIRECT, req_it_iu_len = 8192 + SRP_IMM_DATA_OFFSET
/// = 8260, imm_data_offset = 68.
fn linux_login_rdma_bytes() -> [u8; 56] {
    let mut b = [0u8; 56];
    // 0..8   u64    tag (ib_srp leaves it zero; use a marker here)
    put(&mut b, 0, &[0, 0, 0, 0, 0, 0, 0, 0x2a]);
    // 8..10  __be16 req_buf_fmt = SRP_BUF_FORMAT_DIRECT | SRP_BUF_FORMAT_INDIRECT
    put(&mut b, 8, &[0x00, 0x06]);
    // 10     u8     req_flags = SRP_MULTICHAN_SINGLE (0) | SRP_IMMED_REQUESTED (0x80)
    b[10] = 0x80;
    // 11     u8     opcode = SRP_LOGIN_REQ (0)
    b[11] = 0x00;
    // 12..16 __be32 req_it_iu_len = 8260 = 0x2044
    put(&mut b, 12, &[0x00, 0x00, 0x20, 0x44]);
    // 16..32 initiator_port_id = initiator_ext (0) ‖ port GUID
    put(&mut b, 24, &PORT_GUID.to_be_bytes());
    // 32..48 target_port_id = id_ext ‖ ioc_guid
    put(&mut b, 32, &ID_EXT.to_be_bytes());
    put(&mut b, 40, &IOC_GUID.to_be_bytes());
    // 48..50 __be16 imm_data_offset = 68
    put(&mut b, 48, &[0x00, 0x44]);
    // 50..56 reserved
    b
}

fn expected_login() -> LoginReq {
    LoginReq {
        tag: 0x2a,
        req_it_iu_len: 8260,
        req_buf_fmt: BufFormats::BOTH,
        multichannel: MultiChannelAction::Single,
        immediate_data_requested: true,
        imm_data_offset: LINUX_IMM_DATA_OFFSET,
        initiator_port_id: PortId::from_parts(0, PORT_GUID),
        target_port_id: PortId::from_parts(ID_EXT, IOC_GUID),
    }
}

#[test]
fn login_req_rdma_from_linux_initiator() {
    let b = linux_login_rdma_bytes();
    let req = LoginReq::decode_rdma(&b).unwrap();
    assert_eq!(req, expected_login());
    assert!(req.req_buf_fmt.contains(BufFormats::DIRECT));
    assert!(req.req_buf_fmt.contains(BufFormats::INDIRECT));
    assert_eq!(req.target_port_id.id_ext(), ID_EXT);
    assert_eq!(req.target_port_id.guid(), IOC_GUID);
    assert_eq!(req.to_rdma_bytes(), b);
    let mut buf = [0xffu8; 60];
    assert_eq!(req.encode_rdma(&mut buf).unwrap(), 56);
    assert_eq!(&buf[..56], &b[..]);
    // The IB CM pads private data; trailing bytes are ignored.
    let mut padded = b.to_vec();
    padded.extend_from_slice(&[0xee; 36]);
    assert_eq!(LoginReq::decode_rdma(&padded).unwrap(), req);
}

#[test]
fn login_req_iu_form_matches_struct_srp_login_req() {
    let mut b = [0u8; 64];
    b[0] = 0x00; // 0 opcode SRP_LOGIN_REQ
    put(&mut b, 8, &[0, 0, 0, 0, 0, 0, 0, 0x2a]); // 8..16 tag
    put(&mut b, 16, &8260u32.to_be_bytes()); // 16..20 req_it_iu_len
    put(&mut b, 24, &[0x00, 0x06]); // 24..26 req_buf_fmt
    b[26] = 0x80; // 26 req_flags
    put(&mut b, 28, &[0x00, 0x44]); // 28..30 imm_data_offset
    put(&mut b, 40, &PORT_GUID.to_be_bytes()); // 32..48 initiator_port_id
    put(&mut b, 48, &ID_EXT.to_be_bytes()); // 48..64 target_port_id
    put(&mut b, 56, &IOC_GUID.to_be_bytes());
    let req = LoginReq::decode(&b).unwrap();
    assert_eq!(req, expected_login());
    assert_eq!(req.to_vec().unwrap(), b);
    assert_eq!(decode_iu(&b).unwrap(), Iu::LoginReq(req));
    // Both forms carry the same information.
    assert_eq!(
        LoginReq::decode_rdma(&linux_login_rdma_bytes()).unwrap(),
        req
    );
}

#[test]
fn login_req_multichannel_multi_without_immediate() {
    let mut b = linux_login_rdma_bytes();
    b[10] = 0x01; // SRP_MULTICHAN_MULTI
    let req = LoginReq::decode_rdma(&b).unwrap();
    assert_eq!(req.multichannel, MultiChannelAction::Multi);
    assert!(!req.immediate_data_requested);
    assert_eq!(req.to_rdma_bytes(), b);
}

#[test]
fn login_rsp_as_ib_srpt_sends_it() {
    let mut b = [0u8; 52];
    b[0] = 0xc0; // 0 opcode SRP_LOGIN_RSP
    put(&mut b, 4, &128u32.to_be_bytes()); // 4..8 req_lim_delta = rq_size
    put(&mut b, 8, &[0, 0, 0, 0, 0, 0, 0, 0x2a]); // 8..16 tag
    put(&mut b, 16, &8260u32.to_be_bytes()); // 16..20 max_it_iu_len
    put(&mut b, 20, &8260u32.to_be_bytes()); // 20..24 max_ti_iu_len
    put(&mut b, 24, &[0x00, 0x06]); // 24..26 buf_fmt
    b[26] = 0x80 | 0x01; // 26 rsp_flags: IMMED_SUPP | MULTICHAN_TERMINATED
    let rsp = LoginRsp::decode(&b).unwrap();
    assert_eq!(
        rsp,
        LoginRsp {
            req_lim_delta: 128,
            tag: 0x2a,
            max_it_iu_len: 8260,
            max_ti_iu_len: 8260,
            buf_fmt: BufFormats::BOTH,
            multichannel: MultiChannelResult::Terminated,
            immediate_data_supported: true,
        }
    );
    assert_eq!(rsp.to_vec().unwrap(), b);
    assert_eq!(decode_iu(&b).unwrap(), Iu::LoginRsp(rsp));
}

#[test]
fn login_rej_reasons_and_bytes() {
    let mut b = [0u8; 32];
    b[0] = 0xc2; // 0 opcode SRP_LOGIN_REJ
    put(&mut b, 4, &0x0001_0003u32.to_be_bytes()); // 4..8 reason
    put(&mut b, 8, &[0, 0, 0, 0, 0, 0, 0, 7]); // 8..16 tag
    put(&mut b, 24, &[0x00, 0x06]); // 24..26 buf_fmt
    let rej = LoginRej::decode(&b).unwrap();
    assert_eq!(rej.reason, LoginRejReason::UnableAssociateChannel);
    assert_eq!(rej.tag, 7);
    assert_eq!(rej.buf_fmt, BufFormats::BOTH);
    assert_eq!(rej.to_vec().unwrap(), b);

    let all = [
        (0x0001_0000, LoginRejReason::UnableEstablishChannel),
        (0x0001_0001, LoginRejReason::InsufficientResources),
        (0x0001_0002, LoginRejReason::ReqItIuLengthTooLarge),
        (0x0001_0003, LoginRejReason::UnableAssociateChannel),
        (0x0001_0004, LoginRejReason::UnsupportedDescriptorFormat),
        (0x0001_0005, LoginRejReason::MultiChannelUnsupported),
        (0x0001_0006, LoginRejReason::ChannelLimitReached),
        (0x0001_0007, LoginRejReason::Other(0x0001_0007)),
    ];
    for (v, r) in all {
        assert_eq!(LoginRejReason::from_u32(v), r);
        assert_eq!(r.to_u32(), v);
    }
}

/// Common SRP_CMD header: opcode, tag, LUN 0, SIMPLE.
fn cmd_header(buf_fmt: u8, out_cnt: u8, in_cnt: u8, cdb: &[u8], len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    b[0] = 0x02; // 0 opcode SRP_CMD
    b[5] = buf_fmt; // 5 buf_fmt (data-out << 4 | data-in)
    b[6] = out_cnt; // 6 data_out_desc_cnt
    b[7] = in_cnt; // 7 data_in_desc_cnt
    put(&mut b, 8, &0x0000_0000_0001_0005u64.to_be_bytes()); // 8..16 tag
                                                             // 20..28 lun: int_to_scsilun(0) = all zero; 29 task_attr SIMPLE = 0
                                                             // 31 add_cdb_len = 0; 32..48 cdb
    put(&mut b, 32, cdb);
    b
}

const READ10: [u8; 10] = [0x28, 0, 0x00, 0x00, 0x10, 0x00, 0, 0x00, 0x08, 0];
const WRITE10: [u8; 10] = [0x2a, 0, 0x00, 0x00, 0x20, 0x00, 0, 0x00, 0x08, 0];

#[test]
fn cmd_read10_one_direct_descriptor() {
    // ib_srp: fmt = SRP_DATA_DESC_DIRECT in the low nibble for DMA_FROM_DEVICE,
    // counts left 0, descriptor at add_data (offset 48).
    let mut b = cmd_header(0x01, 0, 0, &READ10, 64);
    put(&mut b, 48, &0xffff_8800_1234_5000u64.to_be_bytes()); // 48..56 va
    put(&mut b, 56, &0x0000_1234u32.to_be_bytes()); // 56..60 key
    put(&mut b, 60, &4096u32.to_be_bytes()); // 60..64 len
    let cmd = SrpCmd::decode(&b).unwrap();
    assert_eq!(cmd.tag, 0x1_0005);
    assert_eq!(cmd.lun.single_level(), Some(0));
    assert_eq!(cmd.task_attr, TaskAttr::Simple);
    assert_eq!(&cmd.cdb[..10], &READ10);
    assert_eq!(cmd.cdb.len(), 16);
    assert_eq!(cmd.data_out, DataDesc::None);
    let d = DirectBuf {
        va: 0xffff_8800_1234_5000,
        key: 0x1234,
        len: 4096,
    };
    assert_eq!(cmd.data_in, DataDesc::Direct(d));
    assert_eq!(cmd.data_in.descriptors().collect::<Vec<_>>(), vec![d]);
    assert_eq!(cmd.data_in.transfer_len(), 4096);

    // Encoding the same command from a short CDB gives the same bytes.
    let built = SrpCmd {
        sol_not: 0,
        tag: 0x1_0005,
        lun: Lun::from_single_level(0).unwrap(),
        task_attr: TaskAttr::Simple,
        cdb: &READ10,
        data_out: DataDesc::None,
        data_in: DataDesc::Direct(d),
    };
    assert_eq!(built.to_vec().unwrap(), b);
    assert_eq!(cmd.to_vec().unwrap(), b);
    assert_eq!(decode_iu(&b).unwrap(), Iu::Cmd(cmd));
}

#[test]
fn cmd_write10_indirect_table_inline() {
    // ib_srp: fmt = SRP_DATA_DESC_INDIRECT << 4, data_out_desc_cnt = count,
    // srp_indirect_buf at 48: table_desc (16) + len (4) + desc_list.
    let descs = [
        DirectBuf {
            va: 0x1000,
            key: 0x11,
            len: 1024,
        },
        DirectBuf {
            va: 0x5000,
            key: 0x22,
            len: 2048,
        },
        DirectBuf {
            va: 0x9000,
            key: 0x33,
            len: 1024,
        },
    ];
    let mut b = cmd_header(0x20, 3, 0, &WRITE10, 48 + 20 + 3 * 16);
    put(&mut b, 48, &0x7777_0000u64.to_be_bytes()); // 48..56 table_desc.va
    put(&mut b, 56, &0xabcdu32.to_be_bytes()); // 56..60 table_desc.key
    put(&mut b, 60, &48u32.to_be_bytes()); // 60..64 table_desc.len = 3 * 16
    put(&mut b, 64, &4096u32.to_be_bytes()); // 64..68 len (total)
    for (i, d) in descs.iter().enumerate() {
        let o = 68 + 16 * i; // desc_list[i]
        put(&mut b, o, &d.va.to_be_bytes());
        put(&mut b, o + 8, &d.key.to_be_bytes());
        put(&mut b, o + 12, &d.len.to_be_bytes());
    }
    let cmd = SrpCmd::decode(&b).unwrap();
    let DataDesc::Indirect(ind) = cmd.data_out else {
        panic!("expected indirect, got {:?}", cmd.data_out)
    };
    assert_eq!(
        ind.table_desc,
        DirectBuf {
            va: 0x7777_0000,
            key: 0xabcd,
            len: 48
        }
    );
    assert_eq!(ind.total_len, 4096);
    assert_eq!(ind.table_entries(), 3);
    assert!(ind.is_complete());
    assert_eq!(ind.partial.len(), 3);
    assert_eq!(ind.partial.get(1), Some(descs[1]));
    assert_eq!(ind.partial.get(3), None);
    assert!(cmd.data_out.descriptors().eq(descs.iter().copied()));
    assert_eq!(cmd.data_out.descriptors().len(), 3);
    assert_eq!(cmd.data_in, DataDesc::None);

    let built = SrpCmd {
        data_out: DataDesc::Indirect(IndirectBuf {
            table_desc: ind.table_desc,
            total_len: 4096,
            partial: DescList::from_slice(&descs),
        }),
        ..cmd
    };
    assert_eq!(built, cmd);
    assert_eq!(built.to_vec().unwrap(), b);
}

#[test]
fn cmd_indirect_partial_table() {
    // allow_ext_sg: only the first 2 of 4 descriptors inline.
    let mut b = cmd_header(0x02, 0, 2, &READ10, 48 + 20 + 2 * 16);
    put(&mut b, 60, &64u32.to_be_bytes()); // table_desc.len = 4 * 16
    put(&mut b, 64, &8192u32.to_be_bytes()); // total len
    put(&mut b, 68 + 12, &1024u32.to_be_bytes());
    put(&mut b, 84 + 12, &1024u32.to_be_bytes());
    let cmd = SrpCmd::decode(&b).unwrap();
    let DataDesc::Indirect(ind) = cmd.data_in else {
        panic!("expected indirect")
    };
    assert!(!ind.is_complete());
    assert_eq!(ind.table_entries(), 4);
    assert_eq!(ind.partial.len(), 2);
    assert_eq!(cmd.data_in.transfer_len(), 8192);
    assert_eq!(cmd.to_vec().unwrap(), b);
}

#[test]
fn cmd_write10_immediate_data() {
    // ib_srp: fmt = SRP_DATA_DESC_IMM << 4; srp_imm_buf (4 bytes, len) at
    // add_data (48); data at SRP_IMM_DATA_OFFSET = 68; 52..68 unused.
    let data: Vec<u8> = (0..32u8).collect();
    let mut b = cmd_header(0x30, 0, 0, &WRITE10, 68 + data.len());
    put(&mut b, 48, &(data.len() as u32).to_be_bytes()); // 48..52 imm len
    put(&mut b, 68, &data); // 68.. data
    let cmd = SrpCmd::decode(&b).unwrap();
    assert_eq!(
        cmd.data_out,
        DataDesc::Immediate(ImmediateData {
            offset: 68,
            data: &data
        })
    );
    assert_eq!(cmd.data_out.transfer_len(), 32);
    assert_eq!(cmd.data_out.descriptors().count(), 0);
    assert_eq!(cmd.to_vec().unwrap(), b);

    // A channel that negotiated imm_data_offset 52 (right after the
    // descriptor) sees different data at the same bytes.
    let cmd52 = SrpCmd::decode_with_imm_offset(&b, 52).unwrap();
    let DataDesc::Immediate(im) = cmd52.data_out else {
        panic!()
    };
    assert_eq!(im.offset, 52);
    assert_eq!(&im.data[..16], &[0u8; 16]);
    assert_eq!(&im.data[16..], &data[..16]);
}

#[test]
fn cmd_32_byte_cdb_with_additional_cdb() {
    // A 32-byte CDB (variable length): add_cdb_len = round_up(32 - 16, 4) = 16,
    // the extra 16 bytes at 48..64, the direct descriptor at 64..80.
    let cdb: Vec<u8> = (0..32u8).map(|i| 0x7f ^ i).collect();
    let mut b = cmd_header(0x01, 0, 0, &cdb[..16], 80);
    b[31] = 16;
    put(&mut b, 48, &cdb[16..]);
    put(&mut b, 76, &512u32.to_be_bytes());
    let cmd = SrpCmd::decode(&b).unwrap();
    assert_eq!(cmd.cdb, &cdb[..]);
    assert_eq!(cmd.data_in.transfer_len(), 512);
    assert_eq!(cmd.to_vec().unwrap(), b);
    // Reserved low bits of add_cdb_len are masked, as ib_srpt does.
    b[31] = 16 | 0x3;
    assert_eq!(SrpCmd::decode(&b).unwrap().cdb, &cdb[..]);
}

#[test]
fn rsp_check_condition_with_sense() {
    let sense = [
        0x70, 0, 0x03, 0, 0, 0, 0, 0x0a, 0, 0, 0, 0, 0x11, 0x00, 0, 0, 0, 0,
    ];
    let mut b = vec![0u8; 36 + sense.len()];
    b[0] = 0xc1; // 0 opcode SRP_RSP
    put(&mut b, 4, &1u32.to_be_bytes()); // 4..8 req_lim_delta
    put(&mut b, 8, &0x1_0005u64.to_be_bytes()); // 8..16 tag
    b[18] = 0x02 | 0x20; // 18 flags SNSVALID | DIUNDER
    b[19] = 0x02; // 19 status CHECK CONDITION
    put(&mut b, 24, &512u32.to_be_bytes()); // 24..28 data_in_res_cnt
    put(&mut b, 28, &(sense.len() as u32).to_be_bytes()); // 28..32 sense_data_len
    put(&mut b, 36, &sense); // data: resp data (none), then sense
    let rsp = SrpRsp::decode(&b).unwrap();
    assert_eq!(rsp.req_lim_delta, 1);
    assert_eq!(rsp.status, 2);
    assert!(rsp.flags.contains(RspFlags::SNSVALID));
    assert!(rsp.flags.contains(RspFlags::DIUNDER));
    assert!(!rsp.flags.contains(RspFlags::RSPVALID));
    assert_eq!(rsp.data_in_res_cnt, 512);
    assert_eq!(rsp.sense_data, &sense);
    assert!(rsp.response_data.is_empty());
    assert_eq!(rsp.to_vec().unwrap(), b);
}

#[test]
fn rsp_task_management_response_data() {
    let mut b = vec![0u8; 40];
    b[0] = 0xc1;
    put(&mut b, 4, &1u32.to_be_bytes());
    put(&mut b, 8, &0x8000_0000u64.to_be_bytes());
    b[18] = 0x01; // RSPVALID
    put(&mut b, 32, &4u32.to_be_bytes()); // 32..36 resp_data_len
    b[39] = tsk_mgmt_rsp::NOT_SUPPORTED; // response code in byte 3
    let rsp = SrpRsp::decode(&b).unwrap();
    assert_eq!(rsp.tsk_mgmt_response_code(), Some(0x04));
    assert!(rsp.sense_data.is_empty());
    assert_eq!(rsp.to_vec().unwrap(), b);
    // The encoder sets RSPVALID/SNSVALID from non-empty lists.
    let built = SrpRsp {
        flags: RspFlags::default(),
        ..rsp
    };
    assert_eq!(built.to_vec().unwrap(), b);
}

#[test]
fn rsp_lengths_without_valid_bits_are_ignored() {
    let mut b = vec![0u8; 36];
    b[0] = 0xc1;
    put(&mut b, 28, &1000u32.to_be_bytes());
    put(&mut b, 32, &1000u32.to_be_bytes());
    let rsp = SrpRsp::decode(&b).unwrap();
    assert!(rsp.sense_data.is_empty() && rsp.response_data.is_empty());
}

#[test]
fn tsk_mgmt_abort_task() {
    let mut b = [0u8; 48];
    b[0] = 0x01; // 0 opcode SRP_TSK_MGMT
    put(&mut b, 8, &0x8000_0001u64.to_be_bytes()); // 8..16 tag
    put(&mut b, 20, &[0x00, 0x05]); // 20..28 lun 5
    b[30] = 0x01; // 30 tsk_mgmt_func ABORT TASK
    put(&mut b, 32, &0x1_0005u64.to_be_bytes()); // 32..40 task_tag
    let t = TskMgmt::decode(&b).unwrap();
    assert_eq!(t.function, TaskMgmtFunction::AbortTask);
    assert_eq!(t.lun.single_level(), Some(5));
    assert_eq!(t.task_tag, 0x1_0005);
    assert_eq!(t.to_vec().unwrap(), b);
    for (v, f) in [
        (0x01, TaskMgmtFunction::AbortTask),
        (0x02, TaskMgmtFunction::AbortTaskSet),
        (0x04, TaskMgmtFunction::ClearTaskSet),
        (0x08, TaskMgmtFunction::LunReset),
        (0x40, TaskMgmtFunction::ClearAca),
        (0x20, TaskMgmtFunction::Other(0x20)),
    ] {
        assert_eq!(TaskMgmtFunction::from_u8(v), f);
        assert_eq!(f.to_u8(), v);
    }
}

#[test]
fn small_ius() {
    // SRP_I_LOGOUT: 0 opcode, 8..16 tag
    let mut b = [0u8; 16];
    b[0] = 0x03;
    b[15] = 9;
    assert_eq!(decode_iu(&b).unwrap(), Iu::ILogout(ILogout { tag: 9 }));
    assert_eq!(ILogout { tag: 9 }.to_vec().unwrap(), b);

    // SRP_T_LOGOUT: 0 opcode, 1 sol_not, 4..8 reason, 8..16 tag
    let mut b = [0u8; 16];
    b[0] = 0x80;
    b[1] = 1;
    b[7] = 2;
    b[15] = 3;
    let t = TLogout::decode(&b).unwrap();
    assert_eq!(
        t,
        TLogout {
            sol_not: 1,
            reason: TLogoutReason::InvalidIuType,
            tag: 3
        }
    );
    assert_eq!(t.to_vec().unwrap(), b);

    // SRP_CRED_REQ: 0 opcode, 1 sol_not, 4..8 req_lim_delta (signed), 8..16 tag
    let mut b = [0u8; 16];
    b[0] = 0x81;
    put(&mut b, 4, &(-2i32).to_be_bytes());
    b[15] = 4;
    let c = CredReq::decode(&b).unwrap();
    assert_eq!(
        c,
        CredReq {
            sol_not: 0,
            req_lim_delta: -2,
            tag: 4
        }
    );
    assert_eq!(c.to_vec().unwrap(), b);

    // SRP_CRED_RSP and SRP_AER_RSP: 0 opcode, 8..16 tag
    let mut b = [0u8; 16];
    b[0] = 0x41;
    b[15] = 5;
    assert_eq!(decode_iu(&b).unwrap(), Iu::CredRsp(CredRsp { tag: 5 }));
    b[0] = 0x42;
    assert_eq!(decode_iu(&b).unwrap(), Iu::AerRsp(AerRsp { tag: 5 }));
    assert_eq!(AerRsp { tag: 5 }.to_vec().unwrap(), b);

    // SRP_AER_REQ: 4..8 req_lim_delta, 8..16 tag, 20..28 lun,
    // 28..32 sense_data_len, 36.. sense
    let mut b = vec![0u8; 36 + 8];
    b[0] = 0x82;
    put(&mut b, 4, &1u32.to_be_bytes());
    b[15] = 6;
    put(&mut b, 20, &[0x41, 0x2c]); // flat space LUN 300
    put(&mut b, 28, &8u32.to_be_bytes());
    put(&mut b, 36, &[0x70, 0, 6, 0, 0, 0, 0, 0]);
    let a = AerReq::decode(&b).unwrap();
    assert_eq!(a.lun.single_level(), Some(300));
    assert_eq!(a.sense_data, &[0x70, 0, 6, 0, 0, 0, 0, 0]);
    assert_eq!(a.to_vec().unwrap(), b);
    assert_eq!(decode_iu(&b).unwrap().opcode(), Opcode::AerReq);
}

#[test]
fn t_logout_reasons() {
    for v in 0..12u32 {
        assert_eq!(TLogoutReason::from_u32(v).to_u32(), v);
    }
    assert_eq!(
        TLogoutReason::from_u32(4),
        TLogoutReason::MultiChannelAction
    );
    assert_eq!(TLogoutReason::from_u32(5), TLogoutReason::Other(5));
}

#[test]
fn lun_encodings() {
    assert_eq!(
        Lun::from_single_level(5).unwrap().0,
        [0, 5, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(
        Lun::from_single_level(300).unwrap().0,
        [0x41, 0x2c, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(
        Lun::from_single_level(0x3fff).unwrap().single_level(),
        Some(0x3fff)
    );
    // Linux int_to_scsilun keeps the address method in the number.
    assert_eq!(Lun::from_linux(5), Lun::from_single_level(5).unwrap());
    assert_eq!(
        Lun::from_linux(0x412c),
        Lun::from_single_level(300).unwrap()
    );
    assert_eq!(Lun::from_linux(0x412c).to_linux(), 0x412c);
    assert_eq!(
        Lun::from_linux(0x0001_0002_0003_0004).0,
        [0, 4, 0, 3, 0, 2, 0, 1]
    );
    // Multi-level / other address methods are not single-level.
    assert_eq!(Lun([0, 1, 0, 2, 0, 0, 0, 0]).single_level(), None);
    assert_eq!(Lun([0x81, 0, 0, 0, 0, 0, 0, 0]).single_level(), None);
    assert_eq!(Lun([0x01, 0, 0, 0, 0, 0, 0, 0]).single_level(), None);
}

#[test]
fn encode_into_preregistered_buffer_leaves_tail_alone() {
    let mut buf = [0xaau8; 128];
    let n = ILogout { tag: 1 }.encode(&mut buf).unwrap();
    assert_eq!(n, 16);
    assert_eq!(buf[0], 0x03);
    assert!(buf[1..15].iter().all(|&x| x == 0));
    assert!(buf[16..].iter().all(|&x| x == 0xaa));
}

#[test]
fn tag_of_decoded_and_undecodable_ius() {
    let mut b = cmd_header(0x01, 0, 0, &READ10, 48); // direct descriptor missing
    assert!(SrpCmd::decode(&b).is_err());
    assert_eq!(peek_tag(&b), Some(0x1_0005));
    assert_eq!(peek_tag(&b[..15]), None);
    b[5] = 0; // no data: now it decodes
    let iu = decode_iu(&b).unwrap();
    assert_eq!((iu.opcode(), iu.tag()), (Opcode::Cmd, 0x1_0005));
}
