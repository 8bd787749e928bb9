//! Every validation error, fed the bad bytes that trigger it.

use srp::*;

fn put(b: &mut [u8], off: usize, v: &[u8]) {
    b[off..off + v.len()].copy_from_slice(v);
}

/// A 48-byte SRP_CMD header with the given format and counts.
fn cmd(buf_fmt: u8, out_cnt: u8, in_cnt: u8, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    b[0] = 0x02;
    b[5] = buf_fmt;
    b[6] = out_cnt;
    b[7] = in_cnt;
    b
}

#[test]
fn too_short() {
    assert_eq!(
        decode_iu(&[]),
        Err(SrpError::TooShort { needed: 1, got: 0 })
    );
    assert_eq!(
        LoginReq::decode(&[0u8; 63]),
        Err(SrpError::TooShort {
            needed: 64,
            got: 63
        })
    );
    assert_eq!(
        LoginReq::decode_rdma(&[0u8; 55]),
        Err(SrpError::TooShort {
            needed: 56,
            got: 55
        })
    );
    let mut rsp = [0u8; 51];
    rsp[0] = 0xc0;
    assert_eq!(
        decode_iu(&rsp),
        Err(SrpError::TooShort {
            needed: 52,
            got: 51
        })
    );
    assert_eq!(
        SrpCmd::decode(&cmd(0, 0, 0, 47)),
        Err(SrpError::TooShort {
            needed: 48,
            got: 47
        })
    );
    assert_eq!(
        decode_iu(&[0x03; 15]),
        Err(SrpError::TooShort {
            needed: 16,
            got: 15
        })
    );
    let mut t = [0u8; 47];
    t[0] = 0x01;
    assert_eq!(
        decode_iu(&t),
        Err(SrpError::TooShort {
            needed: 48,
            got: 47
        })
    );
    let mut r = [0u8; 35];
    r[0] = 0xc1;
    assert_eq!(
        decode_iu(&r),
        Err(SrpError::TooShort {
            needed: 36,
            got: 35
        })
    );
    r[0] = 0x82;
    assert_eq!(
        decode_iu(&r),
        Err(SrpError::TooShort {
            needed: 36,
            got: 35
        })
    );
}

#[test]
fn additional_cdb_past_end_is_too_short() {
    let mut b = cmd(0, 0, 0, 48 + 8);
    b[31] = 16; // 16 additional CDB bytes, only 8 present
    assert_eq!(
        SrpCmd::decode(&b),
        Err(SrpError::TooShort {
            needed: 64,
            got: 56
        })
    );
}

#[test]
fn unknown_opcode() {
    for op in [0x04u8, 0x40, 0x83, 0xc3, 0xff] {
        let mut b = [0u8; 64];
        b[0] = op;
        assert_eq!(decode_iu(&b), Err(SrpError::UnknownOpcode(op)));
    }
}

#[test]
fn wrong_opcode() {
    let mut b = [0u8; 64];
    b[0] = 0x02;
    assert_eq!(
        LoginReq::decode(&b),
        Err(SrpError::WrongOpcode {
            expected: 0x00,
            got: 0x02
        })
    );
    assert_eq!(
        LoginRsp::decode(&b),
        Err(SrpError::WrongOpcode {
            expected: 0xc0,
            got: 0x02
        })
    );
    assert_eq!(
        SrpRsp::decode(&b),
        Err(SrpError::WrongOpcode {
            expected: 0xc1,
            got: 0x02
        })
    );
    b[0] = 0x00;
    assert_eq!(
        SrpCmd::decode(&b),
        Err(SrpError::WrongOpcode {
            expected: 0x02,
            got: 0x00
        })
    );
    assert_eq!(
        ILogout::decode(&b),
        Err(SrpError::WrongOpcode {
            expected: 0x03,
            got: 0x00
        })
    );
    // rdma_cm form: the opcode is byte 11.
    let mut r = [0u8; 56];
    r[11] = 0xc0;
    assert_eq!(
        LoginReq::decode_rdma(&r),
        Err(SrpError::WrongOpcode {
            expected: 0x00,
            got: 0xc0
        })
    );
}

#[test]
fn buffer_too_small() {
    let mut small = [0u8; 15];
    assert_eq!(
        ILogout { tag: 1 }.encode(&mut small),
        Err(SrpError::BufferTooSmall {
            needed: 16,
            got: 15
        })
    );
    let mut b = [0u8; 55];
    assert_eq!(
        LoginReq::default().encode_rdma(&mut b),
        Err(SrpError::BufferTooSmall {
            needed: 56,
            got: 55
        })
    );
    let rsp = SrpRsp {
        sense_data: &[0x70; 18],
        ..SrpRsp::default()
    };
    let mut b = [0u8; 36 + 17];
    assert_eq!(
        rsp.encode(&mut b),
        Err(SrpError::BufferTooSmall {
            needed: 54,
            got: 53
        })
    );
}

#[test]
fn invalid_multichannel_action() {
    let mut b = [0u8; 64];
    b[26] = 0x02;
    assert_eq!(
        LoginReq::decode(&b),
        Err(SrpError::InvalidMultiChannelAction(2))
    );
    let mut r = [0u8; 56];
    r[10] = 0x83;
    assert_eq!(
        LoginReq::decode_rdma(&r),
        Err(SrpError::InvalidMultiChannelAction(3))
    );
}

#[test]
fn invalid_multichannel_result() {
    let mut b = [0u8; 52];
    b[0] = 0xc0;
    b[26] = 0x83;
    assert_eq!(
        LoginRsp::decode(&b),
        Err(SrpError::InvalidMultiChannelResult(3))
    );
}

#[test]
fn unsupported_descriptor_formats() {
    for f in 4..16u8 {
        assert_eq!(
            SrpCmd::decode(&cmd(f << 4, 0, 0, 128)),
            Err(SrpError::UnsupportedDataOutFormat(f))
        );
    }
    // Immediate data is data-out only.
    for f in 3..16u8 {
        assert_eq!(
            SrpCmd::decode(&cmd(f, 0, 0, 128)),
            Err(SrpError::UnsupportedDataInFormat(f))
        );
    }
    let c = SrpCmd {
        sol_not: 0,
        tag: 0,
        lun: Lun::default(),
        task_attr: TaskAttr::Simple,
        cdb: &[0],
        data_out: DataDesc::None,
        data_in: DataDesc::Immediate(ImmediateData {
            offset: 68,
            data: &[1],
        }),
    };
    assert_eq!(c.to_vec(), Err(SrpError::UnsupportedDataInFormat(3)));
}

#[test]
fn immediate_data_with_data_in() {
    assert_eq!(
        SrpCmd::decode(&cmd(0x31, 0, 0, 128)),
        Err(SrpError::ImmediateDataWithDataIn)
    );
    let c = SrpCmd {
        sol_not: 0,
        tag: 0,
        lun: Lun::default(),
        task_attr: TaskAttr::Simple,
        cdb: &[0],
        data_out: DataDesc::Immediate(ImmediateData {
            offset: 68,
            data: &[1],
        }),
        data_in: DataDesc::Direct(DirectBuf::default()),
    };
    assert_eq!(c.to_vec(), Err(SrpError::ImmediateDataWithDataIn));
}

#[test]
fn descriptors_exceed_iu() {
    // Direct data-in descriptor announced, IU ends after the CDB.
    assert_eq!(
        SrpCmd::decode(&cmd(0x01, 0, 0, 48)),
        Err(SrpError::DescriptorsExceedIu {
            needed: 64,
            iu_len: 48
        })
    );
    // Direct data-out + direct data-in, room for one.
    assert_eq!(
        SrpCmd::decode(&cmd(0x11, 0, 0, 70)),
        Err(SrpError::DescriptorsExceedIu {
            needed: 80,
            iu_len: 70
        })
    );
    // Indirect with data_out_desc_cnt = 3 but room for 2.
    let mut b = cmd(0x20, 3, 0, 48 + 20 + 32);
    put(&mut b, 60, &48u32.to_be_bytes());
    assert_eq!(
        SrpCmd::decode(&b),
        Err(SrpError::DescriptorsExceedIu {
            needed: 116,
            iu_len: 100
        })
    );
    // Indirect header itself cut short.
    assert_eq!(
        SrpCmd::decode(&cmd(0x02, 0, 0, 60)),
        Err(SrpError::DescriptorsExceedIu {
            needed: 68,
            iu_len: 60
        })
    );
    // Immediate descriptor cut short.
    assert_eq!(
        SrpCmd::decode(&cmd(0x30, 0, 0, 50)),
        Err(SrpError::DescriptorsExceedIu {
            needed: 52,
            iu_len: 50
        })
    );
}

#[test]
fn indirect_table_len_not_multiple_of_16() {
    let mut b = cmd(0x02, 0, 2, 48 + 20 + 32);
    put(&mut b, 60, &40u32.to_be_bytes());
    assert_eq!(
        SrpCmd::decode(&b),
        Err(SrpError::IndirectTableLenNotMultiple(40))
    );
}

#[test]
fn partial_table_too_large() {
    let mut b = cmd(0x02, 0, 3, 48 + 20 + 48);
    put(&mut b, 60, &32u32.to_be_bytes());
    assert_eq!(
        SrpCmd::decode(&b),
        Err(SrpError::PartialTableTooLarge {
            count: 3,
            table_len: 32
        })
    );
}

#[test]
fn indirect_total_len_mismatch() {
    let mut b = cmd(0x20, 2, 0, 48 + 20 + 32);
    put(&mut b, 60, &32u32.to_be_bytes()); // complete table of 2
    put(&mut b, 64, &1000u32.to_be_bytes()); // total
    put(&mut b, 68 + 12, &512u32.to_be_bytes());
    put(&mut b, 84 + 12, &512u32.to_be_bytes());
    assert_eq!(
        SrpCmd::decode(&b),
        Err(SrpError::IndirectTotalLenMismatch {
            total_len: 1000,
            sum: 1024
        })
    );
    // Encoder refuses it too.
    let descs = [DirectBuf {
        va: 0,
        key: 0,
        len: 512,
    }; 2];
    let c = SrpCmd {
        sol_not: 0,
        tag: 0,
        lun: Lun::default(),
        task_attr: TaskAttr::Simple,
        cdb: &[0x2a],
        data_out: DataDesc::Indirect(IndirectBuf {
            table_desc: DirectBuf {
                va: 0,
                key: 0,
                len: 32,
            },
            total_len: 1000,
            partial: DescList::from_slice(&descs),
        }),
        data_in: DataDesc::None,
    };
    assert_eq!(
        c.to_vec(),
        Err(SrpError::IndirectTotalLenMismatch {
            total_len: 1000,
            sum: 1024
        })
    );
}

#[test]
fn immediate_data_overlaps_descriptors() {
    let mut b = cmd(0x30, 0, 0, 128);
    put(&mut b, 48, &4u32.to_be_bytes());
    assert_eq!(
        SrpCmd::decode_with_imm_offset(&b, 50),
        Err(SrpError::ImmediateDataOverlapsDescriptors {
            offset: 50,
            min: 52
        })
    );
    // With a 32-byte CDB the Linux offset 68 is exactly the minimum; a
    // 36-byte CDB pushes the descriptor past it.
    b[31] = 20;
    assert_eq!(
        SrpCmd::decode(&b),
        Err(SrpError::ImmediateDataOverlapsDescriptors {
            offset: 68,
            min: 72
        })
    );
    let c = SrpCmd {
        sol_not: 0,
        tag: 0,
        lun: Lun::default(),
        task_attr: TaskAttr::Simple,
        cdb: &[0x2a],
        data_out: DataDesc::Immediate(ImmediateData {
            offset: 51,
            data: &[1],
        }),
        data_in: DataDesc::None,
    };
    assert_eq!(
        c.to_vec(),
        Err(SrpError::ImmediateDataOverlapsDescriptors {
            offset: 51,
            min: 52
        })
    );
}

#[test]
fn immediate_data_out_of_iu() {
    let mut b = cmd(0x30, 0, 0, 68 + 100);
    put(&mut b, 48, &101u32.to_be_bytes());
    assert_eq!(
        SrpCmd::decode(&b),
        Err(SrpError::ImmediateDataOutOfIu {
            offset: 68,
            len: 101,
            iu_len: 168
        })
    );
    put(&mut b, 48, &u32::MAX.to_be_bytes());
    assert_eq!(
        SrpCmd::decode(&b),
        Err(SrpError::ImmediateDataOutOfIu {
            offset: 68,
            len: u32::MAX,
            iu_len: 168
        })
    );
    // Offset itself past the IU.
    put(&mut b, 48, &0u32.to_be_bytes());
    assert_eq!(
        SrpCmd::decode_with_imm_offset(&b, 200),
        Err(SrpError::ImmediateDataOutOfIu {
            offset: 200,
            len: 0,
            iu_len: 168
        })
    );
}

#[test]
fn rsp_data_out_of_iu() {
    let mut b = vec![0u8; 36 + 10];
    b[0] = 0xc1;
    b[18] = 0x03; // RSPVALID | SNSVALID
    put(&mut b, 28, &8u32.to_be_bytes()); // sense
    put(&mut b, 32, &4u32.to_be_bytes()); // resp
    assert_eq!(
        SrpRsp::decode(&b),
        Err(SrpError::RspDataOutOfIu {
            needed: 48,
            iu_len: 46
        })
    );
    put(&mut b, 28, &u32::MAX.to_be_bytes());
    put(&mut b, 32, &u32::MAX.to_be_bytes());
    assert_eq!(
        SrpRsp::decode(&b),
        Err(SrpError::RspDataOutOfIu {
            needed: 36 + 2 * u64::from(u32::MAX),
            iu_len: 46
        })
    );
}

#[test]
fn aer_sense_out_of_iu() {
    let mut b = vec![0u8; 40];
    b[0] = 0x82;
    put(&mut b, 28, &5u32.to_be_bytes());
    assert_eq!(
        AerReq::decode(&b),
        Err(SrpError::AerSenseOutOfIu {
            needed: 41,
            iu_len: 40
        })
    );
}

#[test]
fn cdb_too_long() {
    let cdb = [0u8; 16 + 256];
    let c = SrpCmd {
        sol_not: 0,
        tag: 0,
        lun: Lun::default(),
        task_attr: TaskAttr::Simple,
        cdb: &cdb,
        data_out: DataDesc::None,
        data_in: DataDesc::None,
    };
    assert_eq!(c.to_vec(), Err(SrpError::CdbTooLong(272)));
    // 16 + 252 is the maximum and round-trips.
    let c = SrpCmd {
        cdb: &cdb[..268],
        ..c
    };
    let v = c.to_vec().unwrap();
    assert_eq!(v[31], 252);
    assert_eq!(SrpCmd::decode(&v).unwrap(), c);
}

#[test]
fn too_many_descriptors() {
    let descs = vec![
        DirectBuf {
            va: 0,
            key: 0,
            len: 1
        };
        256
    ];
    let c = SrpCmd {
        sol_not: 0,
        tag: 0,
        lun: Lun::default(),
        task_attr: TaskAttr::Simple,
        cdb: &[0x28],
        data_out: DataDesc::None,
        data_in: DataDesc::Indirect(IndirectBuf {
            table_desc: DirectBuf {
                va: 0,
                key: 0,
                len: 256 * 16,
            },
            total_len: 256,
            partial: DescList::from_slice(&descs),
        }),
    };
    assert_eq!(c.to_vec(), Err(SrpError::TooManyDescriptors(256)));
}

#[test]
fn lun_out_of_range() {
    assert_eq!(
        Lun::from_single_level(0x4000),
        Err(SrpError::LunOutOfRange(0x4000))
    );
}

#[test]
fn errors_display() {
    // thiserror messages are human readable and carry the numbers.
    let e = SrpError::DescriptorsExceedIu {
        needed: 80,
        iu_len: 70,
    };
    assert_eq!(
        e.to_string(),
        "data descriptors need 80 bytes but the IU has 70"
    );
    assert_eq!(
        SrpError::UnknownOpcode(0x44).to_string(),
        "unknown SRP opcode 0x44"
    );
}
