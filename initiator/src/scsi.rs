//! The initiator's side of SCSI: CDBs it sends, how it reads the answers
//! (sense data → bdev status, INQUIRY / VPD / READ CAPACITY parsing). Pure:
//! byte slices in, values out; every parser takes untrusted bytes.

use bdev::IoStatus;

/// SCSI status codes (SAM-5).
pub mod status {
    /// GOOD.
    pub const GOOD: u8 = 0x00;
    /// CHECK CONDITION.
    pub const CHECK_CONDITION: u8 = 0x02;
    /// CONDITION MET.
    pub const CONDITION_MET: u8 = 0x04;
    /// BUSY.
    pub const BUSY: u8 = 0x08;
    /// RESERVATION CONFLICT.
    pub const RESERVATION_CONFLICT: u8 = 0x18;
    /// TASK SET FULL.
    pub const TASK_SET_FULL: u8 = 0x28;
    /// ACA ACTIVE.
    pub const ACA_ACTIVE: u8 = 0x30;
    /// TASK ABORTED.
    pub const TASK_ABORTED: u8 = 0x40;
}

/// A 16-byte CDB (shorter CDBs are zero-padded; `len` is the real length).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cdb {
    /// The bytes.
    pub bytes: [u8; 16],
    /// The CDB's length.
    pub len: u8,
}

impl Cdb {
    /// The CDB as a slice.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    fn rw16(op: u8, lba: u64, blocks: u32, fua: bool) -> Cdb {
        let mut b = [0u8; 16];
        b[0] = op;
        b[1] = if fua { 0x08 } else { 0 };
        b[2..10].copy_from_slice(&lba.to_be_bytes());
        b[10..14].copy_from_slice(&blocks.to_be_bytes());
        Cdb { bytes: b, len: 16 }
    }

    /// READ(16).
    pub fn read16(lba: u64, blocks: u32) -> Cdb {
        Self::rw16(0x88, lba, blocks, false)
    }

    /// WRITE(16), FUA bit as asked.
    pub fn write16(lba: u64, blocks: u32, fua: bool) -> Cdb {
        Self::rw16(0x8a, lba, blocks, fua)
    }

    /// SYNCHRONIZE CACHE(16) of the whole medium.
    pub fn sync_cache16() -> Cdb {
        let mut b = [0u8; 16];
        b[0] = 0x91;
        Cdb { bytes: b, len: 16 }
    }

    /// WRITE SAME(16) of one block of data-out over `blocks` blocks, with
    /// the UNMAP bit as asked.
    pub fn write_same16(lba: u64, blocks: u32, unmap: bool) -> Cdb {
        let mut c = Self::rw16(0x93, lba, blocks, false);
        c.bytes[1] = if unmap { 0x08 } else { 0 };
        c
    }

    /// UNMAP with a parameter list of `param_len` bytes.
    pub fn unmap(param_len: u16) -> Cdb {
        let mut b = [0u8; 16];
        b[0] = 0x42;
        b[7..9].copy_from_slice(&param_len.to_be_bytes());
        Cdb { bytes: b, len: 10 }
    }

    /// TEST UNIT READY.
    pub fn test_unit_ready() -> Cdb {
        Cdb {
            bytes: [0; 16],
            len: 6,
        }
    }

    /// INQUIRY: standard data (`page` None) or a VPD page.
    pub fn inquiry(page: Option<u8>, alloc: u16) -> Cdb {
        let mut b = [0u8; 16];
        b[0] = 0x12;
        if let Some(p) = page {
            b[1] = 1;
            b[2] = p;
        }
        b[3..5].copy_from_slice(&alloc.to_be_bytes());
        Cdb { bytes: b, len: 6 }
    }

    /// MODE SENSE(10) of the current values of `page`, no block
    /// descriptors.
    pub fn mode_sense10(page: u8, alloc: u16) -> Cdb {
        let mut b = [0u8; 16];
        b[0] = 0x5a;
        b[1] = 0x08;
        b[2] = page & 0x3f;
        b[7..9].copy_from_slice(&alloc.to_be_bytes());
        Cdb { bytes: b, len: 10 }
    }

    /// READ CAPACITY(16).
    pub fn read_capacity16(alloc: u32) -> Cdb {
        let mut b = [0u8; 16];
        b[0] = 0x9e;
        b[1] = 0x10;
        b[10..14].copy_from_slice(&alloc.to_be_bytes());
        Cdb { bytes: b, len: 16 }
    }
}

/// Encodes an UNMAP parameter list with one descriptor into `buf`
/// (24 bytes); returns its length.
pub fn unmap_param_list(buf: &mut [u8], lba: u64, blocks: u32) -> usize {
    buf[..24].fill(0);
    buf[0..2].copy_from_slice(&22u16.to_be_bytes());
    buf[2..4].copy_from_slice(&16u16.to_be_bytes());
    buf[8..16].copy_from_slice(&lba.to_be_bytes());
    buf[16..20].copy_from_slice(&blocks.to_be_bytes());
    24
}

/// Sense data, reduced to what decides the outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SenseInfo {
    /// Sense key.
    pub key: u8,
    /// Additional sense code.
    pub asc: u8,
    /// Qualifier.
    pub ascq: u8,
}

impl SenseInfo {
    /// Parses fixed (0x70/0x71) or descriptor (0x72/0x73) format sense.
    pub fn parse(b: &[u8]) -> Option<SenseInfo> {
        let code = *b.first()? & 0x7f;
        match code {
            0x70 | 0x71 if b.len() >= 3 => Some(SenseInfo {
                key: b[2] & 0x0f,
                asc: b.get(12).copied().unwrap_or(0),
                ascq: b.get(13).copied().unwrap_or(0),
            }),
            0x72 | 0x73 if b.len() >= 4 => Some(SenseInfo {
                key: b[1] & 0x0f,
                asc: b[2],
                ascq: b[3],
            }),
            _ => None,
        }
    }
}

/// Sense keys.
pub mod key {
    /// NOT READY.
    pub const NOT_READY: u8 = 0x2;
    /// MEDIUM ERROR.
    pub const MEDIUM_ERROR: u8 = 0x3;
    /// HARDWARE ERROR.
    pub const HARDWARE_ERROR: u8 = 0x4;
    /// ILLEGAL REQUEST.
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    /// UNIT ATTENTION.
    pub const UNIT_ATTENTION: u8 = 0x6;
    /// DATA PROTECT.
    pub const DATA_PROTECT: u8 = 0x7;
    /// ABORTED COMMAND.
    pub const ABORTED_COMMAND: u8 = 0xb;
}

/// What to do with a command's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Complete the request with this status.
    Done(IoStatus),
    /// Send the command again (unit attention, aborted command): a
    /// bounded number of times.
    Retry,
    /// The target is busy (BUSY, TASK SET FULL): send again after a pause,
    /// for as long as the command time-out allows.
    Busy,
}

/// Maps a SCSI status and its sense data to an outcome, as the issue and
/// the Linux midlayer's `scsi_decide_disposition` do it: MEDIUM/HARDWARE
/// ERROR → medium error; ILLEGAL REQUEST → invalid request; DATA PROTECT
/// → read-only; NOT READY → path error (multipath tries another path);
/// UNIT ATTENTION, ABORTED COMMAND, BUSY, TASK SET FULL → retry.
pub fn classify(scsi_status: u8, sense: &[u8]) -> Outcome {
    match scsi_status {
        status::GOOD | status::CONDITION_MET => Outcome::Done(IoStatus::Success),
        status::BUSY | status::TASK_SET_FULL => Outcome::Busy,
        status::TASK_ABORTED => Outcome::Retry,
        status::RESERVATION_CONFLICT => Outcome::Done(IoStatus::InvalidRequest),
        status::CHECK_CONDITION => match SenseInfo::parse(sense) {
            None => Outcome::Done(IoStatus::PathError),
            Some(s) => match s.key {
                key::MEDIUM_ERROR | key::HARDWARE_ERROR => Outcome::Done(IoStatus::MediumError),
                key::ILLEGAL_REQUEST => Outcome::Done(IoStatus::InvalidRequest),
                key::DATA_PROTECT => Outcome::Done(IoStatus::ReadOnly),
                key::UNIT_ATTENTION | key::ABORTED_COMMAND => Outcome::Retry,
                // NO SENSE / RECOVERED ERROR with CHECK CONDITION: the
                // command did complete.
                0x0 | 0x1 => Outcome::Done(IoStatus::Success),
                _ => Outcome::Done(IoStatus::PathError),
            },
        },
        _ => Outcome::Done(IoStatus::PathError),
    }
}

/// The parts of standard INQUIRY data we keep.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Inquiry {
    /// Peripheral device type (0 = direct access block device).
    pub device_type: u8,
    /// Vendor (8 chars, trimmed).
    pub vendor: String,
    /// Product (16 chars, trimmed).
    pub product: String,
    /// Revision (4 chars, trimmed).
    pub revision: String,
}

fn ascii(b: &[u8]) -> String {
    b.iter()
        .map(|&c| {
            if (0x20..0x7f).contains(&c) {
                c as char
            } else {
                ' '
            }
        })
        .collect::<String>()
        .trim()
        .to_string()
}

impl Inquiry {
    /// Parses standard INQUIRY data (at least 36 bytes).
    pub fn parse(b: &[u8]) -> Option<Inquiry> {
        if b.len() < 36 {
            return None;
        }
        Some(Inquiry {
            device_type: b[0] & 0x1f,
            vendor: ascii(&b[8..16]),
            product: ascii(&b[16..32]),
            revision: ascii(&b[32..36]),
        })
    }
}

/// The payload of a VPD page (after its 4-byte header), bounded by both
/// the page length field and the bytes received.
pub fn vpd_payload(b: &[u8], page: u8) -> Option<&[u8]> {
    if b.len() < 4 || b[1] != page {
        return None;
    }
    let len = u16::from_be_bytes([b[2], b[3]]) as usize;
    Some(&b[4..(4 + len).min(b.len())])
}

/// VPD 0x00: the supported pages.
pub fn supported_pages(b: &[u8]) -> Vec<u8> {
    vpd_payload(b, 0x00).map(|p| p.to_vec()).unwrap_or_default()
}

/// VPD 0x80: the unit serial number.
pub fn unit_serial(b: &[u8]) -> Option<String> {
    vpd_payload(b, 0x80).map(ascii).filter(|s| !s.is_empty())
}

/// VPD 0x83: the best LU designator, formatted as Linux's `wwid`
/// (`naa.`, `eui.`, `t10.`): NAA over EUI-64 over T10 vendor id, logical
/// unit association only.
pub fn device_id(b: &[u8]) -> Option<String> {
    let p = vpd_payload(b, 0x83)?;
    let mut best: Option<(u8, String)> = None;
    let mut off = 0;
    while off + 4 <= p.len() {
        let code_set = p[off] & 0x0f;
        let assoc = (p[off + 1] >> 4) & 0x03;
        let dtype = p[off + 1] & 0x0f;
        let len = p[off + 3] as usize;
        let Some(id) = p.get(off + 4..off + 4 + len) else {
            break;
        };
        off += 4 + len;
        if assoc != 0 || id.is_empty() {
            continue;
        }
        let hex = || id.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let cand = match dtype {
            3 if code_set == 1 => Some((3, format!("naa.{}", hex()))),
            2 if code_set == 1 => Some((2, format!("eui.{}", hex()))),
            1 => Some((1, format!("t10.{}", ascii(id).replace(' ', "_")))),
            8 if code_set == 3 => Some((0, ascii(id))),
            _ => None,
        };
        if let Some(c) = cand {
            if best.as_ref().is_none_or(|b| c.0 > b.0) {
                best = Some(c);
            }
        }
    }
    best.map(|b| b.1)
}

/// VPD 0xB0 (Block Limits), the fields we use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockLimits {
    /// MAXIMUM TRANSFER LENGTH in blocks (0: no limit).
    pub max_transfer_blocks: u32,
    /// MAXIMUM UNMAP LBA COUNT (0: UNMAP not supported).
    pub max_unmap_blocks: u32,
    /// MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT.
    pub max_unmap_descriptors: u32,
    /// OPTIMAL UNMAP GRANULARITY in blocks.
    pub unmap_granularity: u32,
    /// MAXIMUM WRITE SAME LENGTH in blocks (0: no limit reported).
    pub max_write_same_blocks: u64,
}

impl BlockLimits {
    /// Parses VPD 0xB0.
    pub fn parse(b: &[u8]) -> Option<BlockLimits> {
        let p = vpd_payload(b, 0xb0)?;
        let be32 = |o: usize| {
            p.get(o..o + 4)
                .map(|x| u32::from_be_bytes([x[0], x[1], x[2], x[3]]))
                .unwrap_or(0)
        };
        let be64 = |o: usize| {
            p.get(o..o + 8)
                .map(|x| u64::from_be_bytes(x.try_into().unwrap_or([0; 8])))
                .unwrap_or(0)
        };
        // Payload offsets are the page offsets minus the 4-byte header.
        Some(BlockLimits {
            max_transfer_blocks: be32(4),
            max_unmap_blocks: be32(16),
            max_unmap_descriptors: be32(20),
            unmap_granularity: be32(24),
            max_write_same_blocks: be64(32),
        })
    }
}

/// VPD 0xB2 (Logical Block Provisioning), the fields we use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Provisioning {
    /// LBPU: UNMAP supported.
    pub unmap: bool,
    /// LBPWS: WRITE SAME(16) with UNMAP supported.
    pub write_same16_unmap: bool,
    /// LBPRZ: unmapped blocks read as zeroes.
    pub reads_zeroes: bool,
}

impl Provisioning {
    /// Parses VPD 0xB2.
    pub fn parse(b: &[u8]) -> Option<Provisioning> {
        let p = vpd_payload(b, 0xb2)?;
        let flags = *p.get(1)?;
        Some(Provisioning {
            unmap: flags & 0x80 != 0,
            write_same16_unmap: flags & 0x40 != 0,
            reads_zeroes: flags & 0x04 != 0,
        })
    }
}

/// What MODE SENSE(10) of the Caching page (0x08) says about writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caching {
    /// WCE: the LU has a volatile write cache that is on.
    pub write_cache: bool,
    /// DPOFUA (mode parameter header): the FUA bit is supported.
    pub dpofua: bool,
}

impl Caching {
    /// Parses MODE SENSE(10) data holding the Caching page.
    pub fn parse(b: &[u8]) -> Option<Caching> {
        if b.len() < 8 {
            return None;
        }
        let dpofua = b[3] & 0x10 != 0;
        let bdl = u16::from_be_bytes([b[6], b[7]]) as usize;
        let p = 8usize.checked_add(bdl)?;
        let page = b.get(p..p + 3)?;
        if page[0] & 0x3f != 0x08 {
            return None;
        }
        Some(Caching {
            write_cache: page[2] & 0x04 != 0,
            dpofua,
        })
    }
}

/// READ CAPACITY(16) data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Number of blocks (last LBA + 1).
    pub num_blocks: u64,
    /// Block size in bytes.
    pub block_size: u32,
    /// LBPME: thin provisioning enabled.
    pub thin: bool,
}

impl Capacity {
    /// Parses READ CAPACITY(16) data.
    pub fn parse(b: &[u8]) -> Option<Capacity> {
        if b.len() < 32 {
            return None;
        }
        let last = u64::from_be_bytes(b[0..8].try_into().ok()?);
        Some(Capacity {
            num_blocks: last.checked_add(1)?,
            block_size: u32::from_be_bytes(b[8..12].try_into().ok()?),
            thin: b[14] & 0x80 != 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdbs_have_known_bytes() {
        let c = Cdb::write16(0x0102030405060708, 0x10, true);
        assert_eq!(
            c.as_slice(),
            &[0x8a, 0x08, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0x10, 0, 0]
        );
        assert_eq!(Cdb::read16(1, 2).bytes[0], 0x88);
        assert_eq!(Cdb::read16(1, 2).bytes[1], 0);
        assert_eq!(
            Cdb::inquiry(Some(0x83), 255).as_slice(),
            &[0x12, 1, 0x83, 0, 255, 0]
        );
        assert_eq!(Cdb::inquiry(None, 96).as_slice(), &[0x12, 0, 0, 0, 96, 0]);
        assert_eq!(Cdb::read_capacity16(32).as_slice()[..2], [0x9e, 0x10]);
        assert_eq!(Cdb::read_capacity16(32).bytes[13], 32);
        assert_eq!(
            Cdb::unmap(24).as_slice(),
            &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0]
        );
        assert_eq!(Cdb::write_same16(0, 8, true).bytes[1], 0x08);
        assert_eq!(
            Cdb::mode_sense10(0x08, 64).as_slice(),
            &[0x5a, 0x08, 0x08, 0, 0, 0, 0, 0, 64, 0]
        );
        // Header with DPOFUA, no block descriptors, Caching page with WCE.
        let ms = [0, 26, 0, 0x10, 0, 0, 0, 0, 0x08, 18, 0x04, 0];
        assert_eq!(
            Caching::parse(&ms),
            Some(Caching {
                write_cache: true,
                dpofua: true
            })
        );
        assert_eq!(Caching::parse(&ms[..9]), None);
        let mut other = ms;
        other[8] = 0x0a;
        assert_eq!(Caching::parse(&other), None);
        let mut big_bdl = ms;
        big_bdl[6] = 0xff;
        assert_eq!(Caching::parse(&big_bdl), None);
        let mut b = [0xffu8; 24];
        assert_eq!(unmap_param_list(&mut b, 5, 7), 24);
        assert_eq!(&b[..4], &[0, 22, 0, 16]);
        assert_eq!(b[15], 5);
        assert_eq!(b[19], 7);
    }

    #[test]
    fn sense_maps_to_status() {
        let fixed = |k: u8, asc: u8| {
            let mut s = [0u8; 18];
            s[0] = 0x70;
            s[2] = k;
            s[7] = 10;
            s[12] = asc;
            s
        };
        let cc = status::CHECK_CONDITION;
        assert_eq!(classify(0, &[]), Outcome::Done(IoStatus::Success));
        assert_eq!(
            classify(cc, &fixed(3, 0x11)),
            Outcome::Done(IoStatus::MediumError)
        );
        assert_eq!(
            classify(cc, &fixed(4, 0)),
            Outcome::Done(IoStatus::MediumError)
        );
        assert_eq!(
            classify(cc, &fixed(5, 0x24)),
            Outcome::Done(IoStatus::InvalidRequest)
        );
        assert_eq!(
            classify(cc, &fixed(2, 0x04)),
            Outcome::Done(IoStatus::PathError)
        );
        assert_eq!(classify(cc, &fixed(6, 0x29)), Outcome::Retry);
        assert_eq!(classify(cc, &fixed(0xb, 0)), Outcome::Retry);
        assert_eq!(
            classify(cc, &fixed(7, 0x27)),
            Outcome::Done(IoStatus::ReadOnly)
        );
        assert_eq!(classify(cc, &[]), Outcome::Done(IoStatus::PathError));
        assert_eq!(classify(status::BUSY, &[]), Outcome::Busy);
        assert_eq!(classify(status::TASK_ABORTED, &[]), Outcome::Retry);
        assert_eq!(classify(0x77, &[]), Outcome::Done(IoStatus::PathError));
        // Descriptor format.
        assert_eq!(
            classify(cc, &[0x72, 3, 0x11, 0, 0, 0, 0, 0]),
            Outcome::Done(IoStatus::MediumError)
        );
        // Truncated fixed sense still yields the key.
        assert_eq!(SenseInfo::parse(&[0x70, 0, 6]).unwrap().key, 6);
        assert_eq!(SenseInfo::parse(&[0x70, 0]), None);
    }

    #[test]
    fn vpd_pages_parse_and_survive_garbage() {
        // 0x83 with a T10 and an EUI-64 designator: EUI wins.
        let mut p = vec![0, 0x83, 0, 0];
        p.extend_from_slice(&[2, 0x01, 0, 8]);
        p.extend_from_slice(b"LIO-ORG ");
        p.extend_from_slice(&[1, 0x02, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]);
        p[3] = (p.len() - 4) as u8;
        assert_eq!(device_id(&p).as_deref(), Some("eui.0102030405060708"));
        // A designator claiming more bytes than present stops the walk.
        let bad = [0, 0x83, 0, 8, 1, 3, 0, 200, 1, 2, 3, 4];
        assert_eq!(device_id(&bad), None);
        assert_eq!(device_id(&[0, 0x80, 0, 0]), None);
        let mut s = vec![0, 0x80, 0, 6];
        s.extend_from_slice(b"abc123");
        assert_eq!(unit_serial(&s).as_deref(), Some("abc123"));
        let mut b0 = vec![0u8; 64];
        b0[1] = 0xb0;
        b0[3] = 60;
        b0[8..12].copy_from_slice(&256u32.to_be_bytes());
        b0[20..24].copy_from_slice(&1024u32.to_be_bytes());
        let l = BlockLimits::parse(&b0).unwrap();
        assert_eq!(l.max_transfer_blocks, 256);
        assert_eq!(l.max_unmap_blocks, 1024);
        // Short page: missing fields read as 0, no panic.
        assert_eq!(
            BlockLimits::parse(&[0, 0xb0, 0, 2, 0, 0])
                .unwrap()
                .max_transfer_blocks,
            0
        );
        let b2 = [0, 0xb2, 0, 4, 0, 0xc4, 0, 0];
        let pr = Provisioning::parse(&b2).unwrap();
        assert!(pr.unmap && pr.write_same16_unmap && pr.reads_zeroes);
        let mut rc = [0u8; 32];
        rc[7] = 99;
        rc[10] = 2;
        rc[14] = 0x80;
        let c = Capacity::parse(&rc).unwrap();
        assert_eq!((c.num_blocks, c.block_size, c.thin), (100, 512, true));
        assert_eq!(Capacity::parse(&[0xff; 32]), None);
        let mut inq = vec![0u8; 36];
        inq[8..16].copy_from_slice(b"LIO-ORG ");
        assert_eq!(Inquiry::parse(&inq).unwrap().vendor, "LIO-ORG");
        assert_eq!(Inquiry::parse(&inq[..20]), None);
        assert_eq!(
            supported_pages(&[0, 0, 0, 3, 0, 0x80, 0x83]),
            vec![0, 0x80, 0x83]
        );
    }
}
