//! Byte-level tests of the commands answered without backend I/O.

mod common;
use common::*;
use scsi::{execute_absent_lun, Context, DesignatorKind, Outcome, Sense, SenseKey};

fn inquiry(evpd: bool, page: u8, alloc: u16) -> [u8; 6] {
    let a = alloc.to_be_bytes();
    [0x12, evpd as u8, page, a[0], a[1], 0]
}

fn std_inquiry_bytes() -> Vec<u8> {
    let mut v = vec![0x00, 0x00, 0x06, 0x12, 0x1F, 0x00, 0x00, 0x02];
    v.extend_from_slice(b"STRATA  LUN             0.1 ");
    v
}

#[test]
fn standard_inquiry_exact() {
    let d = data(&lun(), &inquiry(false, 0, 255));
    assert_eq!(d.len(), 36);
    assert_eq!(d, std_inquiry_bytes());
}

#[test]
fn inquiry_allocation_length_truncates() {
    let l = lun();
    assert_eq!(data(&l, &inquiry(false, 0, 5)), std_inquiry_bytes()[..5]);
    assert_eq!(data(&l, &inquiry(false, 0, 0)), Vec::<u8>::new());
    assert_eq!(data(&l, &inquiry(true, 0x83, 7)).len(), 7);
    // A data-in buffer smaller than the allocation length: never overflow.
    let mut small = [0u8; 10];
    let out = l.execute(&inquiry(false, 0, 255), &Context::default(), &mut small);
    assert_eq!(out, Outcome::Done { data_in_len: 10 });
    assert_eq!(small[..], std_inquiry_bytes()[..10]);
    let out = l.execute(&inquiry(true, 0xB0, 255), &Context::default(), &mut []);
    assert_eq!(out, Outcome::Done { data_in_len: 0 });
}

#[test]
fn vpd_supported_pages() {
    assert_eq!(
        data(&lun(), &inquiry(true, 0x00, 255)),
        [0, 0, 0, 6, 0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2]
    );
}

#[test]
fn vpd_unit_serial() {
    let mut want = vec![0, 0x80, 0, 6];
    want.extend_from_slice(b"SN0001");
    assert_eq!(data(&lun(), &inquiry(true, 0x80, 255)), want);
}

#[test]
fn vpd_device_identification_naa_local() {
    let mut want = vec![0, 0x83, 0, 46];
    want.extend_from_slice(&[0x01, 0x03, 0x00, 0x08]);
    want.extend_from_slice(&[0x31, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF]);
    want.extend_from_slice(&[0x02, 0x01, 0x00, 30]);
    want.extend_from_slice(b"STRATA  LUN             SN0001");
    assert_eq!(data(&lun(), &inquiry(true, 0x83, 255)), want);
}

#[test]
fn vpd_device_identification_eui64() {
    let l = lun_with(|c| {
        c.designator = DesignatorKind::Eui64;
        c.id = 0xF123_4567_89AB_CDEF;
    });
    let d = data(&l, &inquiry(true, 0x83, 255));
    assert_eq!(
        d[4..16],
        [0x01, 0x02, 0x00, 0x08, 0xF1, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF]
    );
}

#[test]
fn vpd_block_limits() {
    let mut want = vec![0, 0xB0, 0, 0x3C, 0x01, 0x00, 0x00, 0x08];
    want.extend_from_slice(&[0, 0, 0x08, 0x00]); // max transfer 2048
    want.extend_from_slice(&[0, 0, 0x01, 0x00]); // optimal 256
    want.extend_from_slice(&[0, 0, 0, 0]); // max prefetch
    want.extend_from_slice(&[0, 0, 0x10, 0x00]); // max unmap LBA count
    want.extend_from_slice(&[0, 0, 0, 4]); // max unmap descriptors
    want.extend_from_slice(&[0, 0, 0, 8]); // optimal unmap granularity
    want.extend_from_slice(&[0, 0, 0, 0]); // UGAVALID / alignment
    want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0x20, 0x00]); // max write same
    want.extend_from_slice(&[0; 20]);
    assert_eq!(want.len(), 64);
    assert_eq!(data(&lun(), &inquiry(true, 0xB0, 255)), want);

    // Without unmap or write-zeroes, those limits are zero.
    let l = lun_with(|c| {
        c.caps.unmap = false;
        c.caps.write_zeroes = false;
    });
    let d = data(&l, &inquiry(true, 0xB0, 255));
    assert_eq!(d[20..32], [0; 12]);
    assert_eq!(d[36..44], [0; 8]);
}

#[test]
fn vpd_block_device_characteristics() {
    let mut want = vec![0, 0xB1, 0, 0x3C, 0x00, 0x01];
    want.extend_from_slice(&[0; 58]);
    assert_eq!(data(&lun(), &inquiry(true, 0xB1, 255)), want);
}

#[test]
fn vpd_logical_block_provisioning() {
    assert_eq!(
        data(&lun(), &inquiry(true, 0xB2, 255)),
        [0, 0xB2, 0, 4, 0, 0xE4, 0x02, 0]
    );
    let l = lun_with(|c| c.caps.unmap_reads_zero = false);
    assert_eq!(
        data(&l, &inquiry(true, 0xB2, 255)),
        [0, 0xB2, 0, 4, 0, 0xE0, 0x02, 0]
    );
    let l = lun_with(|c| c.caps.unmap = false);
    assert_eq!(
        data(&l, &inquiry(true, 0xB2, 255)),
        [0, 0xB2, 0, 4, 0, 0, 0, 0]
    );
}

#[test]
fn inquiry_bad_fields() {
    let l = lun();
    let s = check(&l, &inquiry(false, 0x80, 255));
    assert_eq!(triple(s), (ILLEGAL, 0x24, 0x00));
    assert_eq!(s, Sense::invalid_field_in_cdb(2, None));
    assert_eq!(
        check(&l, &inquiry(true, 0x99, 255)),
        Sense::invalid_field_in_cdb(2, None)
    );
    // CMDDT (obsolete) is a reserved bit here.
    assert_eq!(
        check(&l, &[0x12, 0x02, 0, 0, 36, 0]),
        Sense::invalid_field_in_cdb(1, Some(1))
    );
}

#[test]
fn read_capacity_10() {
    assert_eq!(
        data(&lun(), &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        [0, 0, 0xFF, 0xFF, 0, 0, 2, 0]
    );
    let cases = [
        (0xFFFF_FFFFu64, [0xFF, 0xFF, 0xFF, 0xFE]),
        (0x1_0000_0000, [0xFF; 4]),
        (0x1_0000_0001, [0xFF; 4]),
        (1 << 40, [0xFF; 4]),
    ];
    for (n, last) in cases {
        let l = lun_with(|c| {
            c.num_blocks = n;
            c.block_size = 4096;
        });
        let d = data(&l, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(d[..4], last, "num_blocks {n:#x}");
        assert_eq!(d[4..], [0, 0, 0x10, 0]);
    }
}

fn rc16(alloc: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x9E;
    c[1] = 0x10;
    c[10..14].copy_from_slice(&alloc.to_be_bytes());
    c
}

#[test]
fn read_capacity_16() {
    let mut want = vec![0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0, 0, 2, 0, 0, 0, 0xC0, 0];
    want.extend_from_slice(&[0; 16]);
    assert_eq!(data(&lun(), &rc16(32)), want);

    let l = lun_with(|c| {
        c.num_blocks = 0x1_2345_6789;
        c.caps.unmap = false;
    });
    let mut want = vec![
        0, 0, 0, 0x01, 0x23, 0x45, 0x67, 0x88, 0, 0, 2, 0, 0, 0, 0, 0,
    ];
    want.extend_from_slice(&[0; 16]);
    assert_eq!(data(&l, &rc16(32)), want);
    // Truncated by allocation length.
    assert_eq!(data(&l, &rc16(12)), want[..12]);
    assert_eq!(data(&l, &rc16(0)).len(), 0);
    // LBPME without LBPRZ.
    let l = lun_with(|c| c.caps.unmap_reads_zero = false);
    assert_eq!(data(&l, &rc16(32))[14], 0x80);
}

#[test]
fn service_action_in_other_actions_rejected() {
    let mut c = rc16(32);
    c[1] = 0x12; // GET LBA STATUS
    assert_eq!(check(&lun(), &c), Sense::invalid_field_in_cdb(1, Some(4)));
}

fn mode_sense6(dbd: bool, pc: u8, page: u8, sub: u8, alloc: u8) -> [u8; 6] {
    [
        0x1A,
        if dbd { 0x08 } else { 0 },
        (pc << 6) | page,
        sub,
        alloc,
        0,
    ]
}

fn mode_sense10(b1: u8, pc: u8, page: u8, alloc: u16) -> [u8; 10] {
    let a = alloc.to_be_bytes();
    [0x5A, b1, (pc << 6) | page, 0, 0, 0, 0, a[0], a[1], 0]
}

fn caching(wce: bool) -> Vec<u8> {
    let mut v = vec![0x08, 0x12, if wce { 0x04 } else { 0 }];
    v.extend_from_slice(&[0; 17]);
    v
}

const CONTROL: [u8; 12] = [0x0A, 0x0A, 0x00, 0x10, 0, 0, 0, 0, 0xFF, 0xFF, 0, 0];

#[test]
fn mode_sense6_all_pages() {
    let mut want = vec![43, 0, 0x10, 8, 0, 1, 0, 0, 0, 0, 2, 0];
    want.extend(caching(true));
    want.extend_from_slice(&CONTROL);
    assert_eq!(data(&lun(), &mode_sense6(false, 0, 0x3F, 0, 255)), want);
    // 0x3F/0xFF: all pages and subpages (we have no subpages).
    assert_eq!(data(&lun(), &mode_sense6(false, 0, 0x3F, 0xFF, 255)), want);
    // Allocation length truncation keeps the full MODE DATA LENGTH.
    assert_eq!(
        data(&lun(), &mode_sense6(false, 0, 0x3F, 0, 4)),
        [43, 0, 0x10, 8]
    );
}

#[test]
fn mode_sense6_dbd_single_pages_and_pc() {
    let l = lun();
    let mut want = vec![23, 0, 0x10, 0];
    want.extend(caching(true));
    assert_eq!(data(&l, &mode_sense6(true, 0, 0x08, 0, 255)), want);
    let mut want = vec![15, 0, 0x10, 0];
    want.extend_from_slice(&CONTROL);
    assert_eq!(data(&l, &mode_sense6(true, 0, 0x0A, 0, 255)), want);
    // Default values equal current values.
    assert_eq!(
        data(&l, &mode_sense6(false, 2, 0x3F, 0, 255)),
        data(&l, &mode_sense6(false, 0, 0x3F, 0, 255))
    );
    // Changeable values: nothing is changeable.
    let mut want = vec![43, 0, 0x10, 8, 0, 0, 0, 0, 0, 0, 0, 0];
    want.extend(caching(false));
    want.extend_from_slice(&[0x0A, 0x0A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(data(&l, &mode_sense6(false, 1, 0x3F, 0, 255)), want);
    // Saved values are not supported.
    let s = check(&l, &mode_sense6(false, 3, 0x3F, 0, 255));
    assert_eq!(triple(s), (ILLEGAL, 0x39, 0x00));
}

#[test]
fn mode_sense_write_protect_and_wce() {
    let l = lun_with(|c| {
        c.caps.read_only = true;
        c.caps.write_cache = false;
    });
    let d = data(&l, &mode_sense6(true, 0, 0x08, 0, 255));
    assert_eq!(d[2], 0x90); // WP | DPOFUA
    assert_eq!(d[6], 0x00); // WCE clear
    let d = data(&l, &mode_sense10(0x08, 0, 0x08, 255));
    assert_eq!(d[3], 0x90);
}

#[test]
fn mode_sense_bad_page_and_subpage() {
    let l = lun();
    assert_eq!(
        check(&l, &mode_sense6(false, 0, 0x1C, 0, 255)),
        Sense::invalid_field_in_cdb(2, None)
    );
    assert_eq!(
        check(&l, &mode_sense6(false, 0, 0x08, 1, 255)),
        Sense::invalid_field_in_cdb(3, None)
    );
    assert_eq!(
        check(&l, &mode_sense10(0, 0, 0x00, 255)),
        Sense::invalid_field_in_cdb(2, None)
    );
}

#[test]
fn mode_sense10_exact() {
    let mut want = vec![0, 46, 0, 0x10, 0, 0, 0, 8, 0, 1, 0, 0, 0, 0, 2, 0];
    want.extend(caching(true));
    want.extend_from_slice(&CONTROL);
    assert_eq!(data(&lun(), &mode_sense10(0, 0, 0x3F, 1024)), want);

    // LLBAA: long LBA block descriptor.
    let l = lun_with(|c| c.num_blocks = 0x1_0000_0002);
    let mut want = vec![0, 54, 0, 0x10, 0x01, 0, 0, 16];
    want.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 2, 0]);
    want.extend(caching(true));
    want.extend_from_slice(&CONTROL);
    assert_eq!(data(&l, &mode_sense10(0x10, 0, 0x3F, 1024)), want);
    // Without LLBAA the short descriptor saturates at 0xFFFFFFFF.
    let d = data(&l, &mode_sense10(0, 0, 0x3F, 1024));
    assert_eq!(d[6..16], [0, 8, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 2, 0]);
    // DBD wins over LLBAA.
    let d = data(&l, &mode_sense10(0x18, 0, 0x0A, 1024));
    let mut want = vec![0, 18, 0, 0x10, 0, 0, 0, 0];
    want.extend_from_slice(&CONTROL);
    assert_eq!(d, want);
    // Truncation.
    assert_eq!(data(&l, &mode_sense10(0x18, 0, 0x0A, 3)), [0, 18, 0]);
}

fn report_luns(select: u8, alloc: u32) -> [u8; 12] {
    let a = alloc.to_be_bytes();
    [0xA0, 0, select, 0, 0, 0, a[0], a[1], a[2], a[3], 0, 0]
}

#[test]
fn report_luns_exact() {
    let luns = [0u16, 1, 255, 256, 16383, 16384];
    let ctx = Context {
        luns: &luns,
        pending_sense: None,
    };
    let (out, d) = run_ctx(&lun(), &report_luns(0, 4096), &ctx);
    assert!(matches!(out, Outcome::Done { data_in_len: 48 }));
    let mut want = vec![0, 0, 0, 40, 0, 0, 0, 0];
    for l in [[0, 0], [0, 1], [0, 0xFF], [0x41, 0x00], [0x7F, 0xFF]] {
        want.extend_from_slice(&[l[0], l[1], 0, 0, 0, 0, 0, 0]);
    }
    assert_eq!(d, want);
    // Truncated: the list length still describes the whole list.
    let (_, d) = run_ctx(&lun(), &report_luns(2, 16), &ctx);
    assert_eq!(d, want[..16]);
    // Well-known LUNs only: none.
    let (_, d) = run_ctx(&lun(), &report_luns(1, 4096), &ctx);
    assert_eq!(d, [0; 8]);
    let s = check(&lun(), &report_luns(0x10, 4096));
    assert_eq!(s, Sense::invalid_field_in_cdb(2, None));
}

#[test]
fn lun_addressing() {
    use scsi::{decode_lun, encode_lun};
    assert_eq!(encode_lun(5), Some([0, 5, 0, 0, 0, 0, 0, 0]));
    assert_eq!(encode_lun(0x123), Some([0x41, 0x23, 0, 0, 0, 0, 0, 0]));
    assert_eq!(encode_lun(0x4000), None);
    for l in 0..=scsi::MAX_LUN {
        assert_eq!(decode_lun(&encode_lun(l).unwrap()), Some(l));
    }
    assert_eq!(decode_lun(&[0x40, 5, 0, 0, 0, 0, 0, 0]), Some(5));
    assert_eq!(decode_lun(&[0x01, 5, 0, 0, 0, 0, 0, 0]), None); // bus 1
    assert_eq!(decode_lun(&[0, 5, 0, 1, 0, 0, 0, 0]), None); // multi-level
    assert_eq!(decode_lun(&[0x80, 5, 0, 0, 0, 0, 0, 0]), None); // logical unit addressing
}

#[test]
fn request_sense() {
    let l = lun();
    let mut none = [0u8; 18];
    none[0] = 0x70;
    none[7] = 10;
    assert_eq!(data(&l, &[0x03, 0, 0, 0, 252, 0]), none);
    let ctx = Context {
        luns: &[],
        pending_sense: Some(Sense::POWER_ON_RESET),
    };
    let (_, d) = run_ctx(&l, &[0x03, 0, 0, 0, 252, 0], &ctx);
    let mut ua = [0u8; 18];
    ua[0] = 0x70;
    ua[2] = 0x06;
    ua[7] = 10;
    ua[12] = 0x29;
    assert_eq!(d, ua);
    let (_, d) = run_ctx(&l, &[0x03, 0, 0, 0, 8, 0], &ctx);
    assert_eq!(d, ua[..8]);
    // Descriptor format.
    let (_, d) = run_ctx(&l, &[0x03, 1, 0, 0, 252, 0], &ctx);
    assert_eq!(d, [0x72, 0x06, 0x29, 0x00, 0, 0, 0, 0]);
}

#[test]
fn test_unit_ready_and_start_stop() {
    let l = lun();
    assert_eq!(
        run(&l, &[0, 0, 0, 0, 0, 0]).0,
        Outcome::Done { data_in_len: 0 }
    );
    assert_eq!(
        run(&l, &[0x1B, 1, 0, 0, 1, 0]).0,
        Outcome::Done { data_in_len: 0 }
    );
    assert_eq!(
        run(&l, &[0x1B, 0, 0, 0, 0x02, 0]).0,
        Outcome::Done { data_in_len: 0 }
    );
    assert_eq!(
        check(&l, &[0, 1, 0, 0, 0, 0]),
        Sense::invalid_field_in_cdb(1, Some(0))
    );
}

fn rsoc(rctd: bool, option: u8, op: u8, sa: u16, alloc: u32) -> [u8; 12] {
    let s = sa.to_be_bytes();
    let a = alloc.to_be_bytes();
    [
        0xA3,
        0x0C,
        (rctd as u8) << 7 | option,
        op,
        s[0],
        s[1],
        a[0],
        a[1],
        a[2],
        a[3],
        0,
        0,
    ]
}

#[test]
fn rsoc_all_commands() {
    let d = data(&lun(), &rsoc(false, 0, 0, 0, 4096));
    let n = u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize;
    assert_eq!(n, 25 * 8);
    assert_eq!(d.len(), 4 + n);
    assert_eq!(d[4..12], [0x00, 0, 0, 0, 0, 0, 0, 6]); // TEST UNIT READY
    let entries: Vec<&[u8]> = d[4..].chunks(8).collect();
    let rc16 = entries.iter().find(|e| e[0] == 0x9E).unwrap();
    assert_eq!(**rc16, [0x9E, 0, 0, 0x10, 0, 0x01, 0, 16]);
    let r10 = entries.iter().find(|e| e[0] == 0x28).unwrap();
    assert_eq!(**r10, [0x28, 0, 0, 0, 0, 0, 0, 10]);
    // Opcodes in ascending order.
    assert!(entries.windows(2).all(|w| w[0][0] < w[1][0]));

    // Without unmap/write-zeroes: no WRITE SAME, no UNMAP.
    let l = lun_with(|c| {
        c.caps.unmap = false;
        c.caps.write_zeroes = false;
    });
    let d = data(&l, &rsoc(false, 0, 0, 0, 4096));
    let ops: Vec<u8> = d[4..].chunks(8).map(|e| e[0]).collect();
    assert_eq!(ops.len(), 22);
    assert!(!ops.contains(&0x41) && !ops.contains(&0x42) && !ops.contains(&0x93));

    // RCTD adds a 12-byte command timeouts descriptor to each entry.
    let d = data(&lun(), &rsoc(true, 0, 0, 0, 4096));
    assert_eq!(u32::from_be_bytes([d[0], d[1], d[2], d[3]]), 25 * 20);
    assert_eq!(
        d[4..24],
        [0, 0, 0, 0, 0, 0x02, 0, 6, 0, 0x0A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );

    // Truncation.
    assert_eq!(data(&lun(), &rsoc(false, 0, 0, 0, 6)), [0, 0, 0, 200, 0, 0]);
}

#[test]
fn rsoc_one_command() {
    let l = lun();
    assert_eq!(
        data(&l, &rsoc(false, 1, 0x28, 0, 4096)),
        [0, 0x03, 0, 10, 0x28, 0x1E, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, 0xFF, 0xFF, 0]
    );
    let mut want = vec![0, 0x03, 0, 16, 0x9E, 0x10];
    want.extend_from_slice(&[0xFF; 12]);
    want.extend_from_slice(&[0x01, 0]);
    assert_eq!(data(&l, &rsoc(false, 2, 0x9E, 0x10, 4096)), want);
    // With RCTD.
    let d = data(&l, &rsoc(true, 1, 0x00, 0, 4096));
    assert_eq!(
        d,
        [0, 0x83, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0x0A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
    // Not supported.
    assert_eq!(data(&l, &rsoc(false, 1, 0x55, 0, 4096)), [0, 0x01, 0, 0]);
    assert_eq!(data(&l, &rsoc(false, 2, 0x9E, 0x11, 4096)), [0, 0x01, 0, 0]);
    let l2 = lun_with(|c| c.caps.unmap = false);
    assert_eq!(data(&l2, &rsoc(false, 1, 0x42, 0, 4096)), [0, 0x01, 0, 0]);
    assert_eq!(data(&l2, &rsoc(false, 1, 0x93, 0, 4096))[1], 0x03);
    // Wrong reporting option for the opcode.
    assert_eq!(
        check(&l, &rsoc(false, 1, 0x9E, 0, 4096)),
        Sense::invalid_field_in_cdb(3, None)
    );
    assert_eq!(
        check(&l, &rsoc(false, 2, 0x28, 0, 4096)),
        Sense::invalid_field_in_cdb(3, None)
    );
    assert_eq!(
        check(&l, &rsoc(false, 3, 0x28, 0, 4096)),
        Sense::invalid_field_in_cdb(2, None)
    );
    // Reserved bits in byte 2.
    let mut c = rsoc(false, 0, 0, 0, 4096);
    c[2] |= 0x10;
    assert_eq!(check(&l, &c), Sense::invalid_field_in_cdb(2, Some(4)));
    // Other MAINTENANCE IN service actions.
    let mut c = rsoc(false, 0, 0, 0, 4096);
    c[1] = 0x0A;
    assert_eq!(check(&l, &c), Sense::invalid_field_in_cdb(1, Some(4)));
}

#[test]
fn rsoc_usage_data_matches_accepted_bits() {
    // Every bit the usage map allows is accepted by execute (no reserved-bit
    // CHECK CONDITION pointing at it).
    let l = lun();
    let all = data(&l, &rsoc(false, 0, 0, 0, 4096));
    for e in all[4..].chunks(8) {
        let (op, sa, servactv) = (e[0], u16::from_be_bytes([e[2], e[3]]), e[5] & 1 != 0);
        let d = data(&l, &rsoc(false, if servactv { 2 } else { 1 }, op, sa, 4096));
        let usage = &d[4..];
        assert_eq!(usage.len(), u16::from_be_bytes([d[2], d[3]]) as usize);
        for byte in 1..usage.len() - 1 {
            let cdb = usage.to_vec();
            for bit in 0..8 {
                if usage[byte] & (1 << bit) == 0 {
                    continue;
                }
                let mut c = cdb.clone();
                c[1] = if servactv { sa as u8 } else { 0 };
                c[byte] |= 1 << bit;
                if let Outcome::Check(s) = run(&l, &c).0 {
                    if let Some(f) = s.field {
                        assert!(
                            !(f.in_cdb && f.byte as usize == byte && f.bit == Some(bit)),
                            "op {op:#x} byte {byte} bit {bit} rejected as reserved"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn absent_lun() {
    let ctx = Context {
        luns: &[0],
        pending_sense: None,
    };
    let mut buf = [0u8; 64];
    let out = execute_absent_lun(&[0x12, 0, 0, 0, 36, 0], &ctx, &mut buf);
    assert_eq!(out, Outcome::Done { data_in_len: 36 });
    assert_eq!(buf[..8], [0x7F, 0, 0x06, 0x12, 0x1F, 0, 0, 0]);
    let out = execute_absent_lun(&[0x12, 1, 0x80, 0, 36, 0], &ctx, &mut buf);
    assert_eq!(out, Outcome::Check(Sense::LUN_NOT_SUPPORTED));
    let out = execute_absent_lun(&[0, 0, 0, 0, 0, 0], &ctx, &mut buf);
    let Outcome::Check(s) = out else { panic!() };
    assert_eq!(triple(s), (SenseKey::IllegalRequest, 0x25, 0x00));
    assert_eq!(
        execute_absent_lun(&cdb10(0x28, 0, 0, 1), &ctx, &mut buf),
        Outcome::Check(Sense::LUN_NOT_SUPPORTED)
    );
    let out = execute_absent_lun(&[0x03, 0, 0, 0, 18, 0], &ctx, &mut buf);
    assert_eq!(out, Outcome::Done { data_in_len: 18 });
    assert_eq!((buf[0], buf[2], buf[12], buf[13]), (0x70, 0x05, 0x25, 0x00));
    let out = execute_absent_lun(&report_luns(0, 64), &ctx, &mut buf);
    assert_eq!(out, Outcome::Done { data_in_len: 16 });
    assert_eq!(buf[..16], [0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        execute_absent_lun(&[], &ctx, &mut buf),
        Outcome::Check(Sense::LUN_NOT_SUPPORTED)
    );
}
