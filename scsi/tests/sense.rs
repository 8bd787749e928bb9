//! Sense encoding, failure mapping, unit attention policy, configuration.

mod common;
use common::*;
use scsi::*;

#[test]
fn fixed_sense_bytes() {
    let mut b = [0u8; 18];
    Sense::LBA_OUT_OF_RANGE.to_fixed(&mut b);
    assert_eq!(
        b,
        [0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x21, 0, 0, 0, 0, 0]
    );
    Sense::invalid_field_in_cdb(7, None).to_fixed(&mut b);
    assert_eq!(b[12..], [0x24, 0, 0, 0xC0, 0, 7]);
    Sense::invalid_field_in_cdb(1, Some(5)).to_fixed(&mut b);
    assert_eq!(b[15..], [0xCD, 0, 1]);
    Sense::invalid_field_in_param_list(300, None).to_fixed(&mut b);
    assert_eq!(b[12..], [0x26, 0, 0, 0x80, 0x01, 0x2C]);
    Sense::REPORTED_LUNS_CHANGED.to_fixed(&mut b);
    assert_eq!((b[2], b[12], b[13]), (0x06, 0x3F, 0x0E));
}

#[test]
fn sense_parse_roundtrip() {
    for s in [
        Sense::NO_SENSE,
        Sense::INVALID_OPCODE,
        Sense::invalid_field_in_cdb(9, Some(2)),
        Sense::invalid_field_in_param_list(8, None),
        Sense::WRITE_PROTECTED,
        Sense::POWER_ON_RESET,
    ] {
        let mut b = [0u8; 18];
        s.to_fixed(&mut b);
        assert_eq!(Sense::parse(&b), Some(s));
        let mut d = [0u8; 16];
        let n = s.to_descriptor(&mut d);
        let p = Sense::parse(&d[..n]).unwrap();
        assert_eq!((p.key, p.asc, p.ascq), (s.key, s.asc, s.ascq));
    }
    let mut d = [0u8; 16];
    assert_eq!(
        Sense::invalid_field_in_cdb(2, Some(7)).to_descriptor(&mut d),
        16
    );
    assert_eq!(
        d,
        [0x72, 5, 0x24, 0, 0, 0, 0, 8, 0x02, 0x06, 0, 0, 0xCF, 0, 2, 0]
    );
    assert_eq!(Sense::parse(&[]), None);
    assert_eq!(Sense::parse(&[0x70, 0, 5]), None);
    assert_eq!(Sense::parse(&[0x20; 18]), None);
}

#[test]
fn block_failure_mapping() {
    let t = |f| triple(sense_for_block_failure(f));
    assert_eq!(
        t(BlockFailure::Medium { write: false }),
        (SenseKey::MediumError, 0x11, 0x00)
    );
    assert_eq!(
        t(BlockFailure::Medium { write: true }),
        (SenseKey::MediumError, 0x0C, 0x00)
    );
    assert_eq!(t(BlockFailure::Path), (SenseKey::HardwareError, 0x44, 0x00));
    assert_eq!(
        t(BlockFailure::Invalid),
        (SenseKey::IllegalRequest, 0x24, 0x00)
    );
    assert_eq!(
        t(BlockFailure::Unsupported),
        (SenseKey::IllegalRequest, 0x20, 0x00)
    );
    assert_eq!(
        t(BlockFailure::Aborted),
        (SenseKey::AbortedCommand, 0x00, 0x00)
    );
}

#[test]
fn status_codes_and_ua() {
    assert_eq!(Status::Good.code(), 0);
    assert_eq!(Status::CheckCondition.code(), 2);
    assert_eq!(Status::TaskAborted.code(), 0x40);
    assert_eq!(
        triple(Sense::POWER_ON_RESET),
        (SenseKey::UnitAttention, 0x29, 0x00)
    );
    assert_eq!(
        triple(Sense::BUS_DEVICE_RESET),
        (SenseKey::UnitAttention, 0x29, 0x03)
    );
    assert_eq!(
        triple(Sense::LUN_NOT_SUPPORTED),
        (SenseKey::IllegalRequest, 0x25, 0x00)
    );
    assert_eq!(
        unit_attention_action(&[0x12, 0, 0, 0, 36, 0]),
        UaAction::Ignore
    );
    assert_eq!(unit_attention_action(&[0xA0]), UaAction::Ignore);
    assert_eq!(
        unit_attention_action(&[0x03, 0, 0, 0, 18, 0]),
        UaAction::AsSenseData
    );
    assert_eq!(unit_attention_action(&[0x28]), UaAction::Report);
    assert_eq!(unit_attention_action(&[]), UaAction::Report);
}

#[test]
fn config_validation() {
    let err = |f: fn(&mut LunConfig)| {
        let mut c = cfg();
        f(&mut c);
        LunInfo::new(c).unwrap_err()
    };
    assert_eq!(err(|c| c.block_size = 1000), ConfigError::BlockSize(1000));
    assert_eq!(err(|c| c.block_size = 256), ConfigError::BlockSize(256));
    assert_eq!(err(|c| c.num_blocks = 0), ConfigError::NoBlocks);
    assert!(matches!(
        err(|c| c.num_blocks = u64::MAX),
        ConfigError::CapacityOverflow { .. }
    ));
    assert_eq!(
        err(|c| c.vendor = "TOO LONG!".into()),
        ConfigError::TooLong {
            field: "vendor",
            len: 9,
            max: 8
        }
    );
    assert_eq!(
        err(|c| c.product = "caf\u{e9}".into()),
        ConfigError::NotPrintable { field: "product" }
    );
    assert_eq!(err(|c| c.serial = String::new()), ConfigError::EmptySerial);
    assert!(matches!(
        err(|c| c.serial = "x".repeat(65)),
        ConfigError::TooLong { .. }
    ));
    assert_eq!(
        err(|c| c.limits.max_transfer_blocks = 0),
        ConfigError::ZeroLimit("max_transfer_blocks")
    );
    assert_eq!(
        err(|c| c.limits.max_unmap_descriptors = 0),
        ConfigError::ZeroLimit("max_unmap_descriptors")
    );
    assert!(err(|c| c.block_size = 3)
        .to_string()
        .contains("power of two"));
    let info = LunInfo::new(cfg()).unwrap();
    assert_eq!(
        (info.block_size(), info.num_blocks(), info.id()),
        (512, 0x10000, ID)
    );
    assert_eq!(
        info.designator_bytes(),
        [0x31, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF]
    );
}
