//! LU discovery after login, as a pure state machine: which command comes
//! next, and what its answer means. TEST UNIT READY (unit attentions after
//! login are consumed and retried), standard INQUIRY, the supported VPD
//! pages, 0x80 (serial), 0x83 (device identifier), 0xB0 (block limits),
//! 0xB2 (provisioning), READ CAPACITY(16).

use crate::scsi::{
    self, key, BlockLimits, Caching, Capacity, Cdb, Inquiry, Outcome, Provisioning, SenseInfo,
};

/// Bytes asked for by each discovery command.
pub const ALLOC_LEN: u16 = 512;
/// Unit attentions / busy answers tolerated per step.
const MAX_RETRIES: u32 = 16;

/// What discovery found: the bdev's geometry and identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Block size.
    pub block_size: u32,
    /// Blocks.
    pub num_blocks: u64,
    /// Standard INQUIRY.
    pub inquiry: Inquiry,
    /// VPD 0x80.
    pub serial: Option<String>,
    /// VPD 0x83, as Linux's wwid.
    pub device_id: Option<String>,
    /// VPD 0xB0.
    pub limits: BlockLimits,
    /// VPD 0xB2.
    pub provisioning: Provisioning,
    /// LBPME in READ CAPACITY(16).
    pub thin: bool,
    /// WCE of the Caching mode page (true when the page is not there:
    /// then FUA writes are followed by SYNCHRONIZE CACHE, the safe side).
    pub write_cache: bool,
    /// DPOFUA: the target takes the FUA bit.
    pub dpofua: bool,
}

impl Geometry {
    /// Whether UNMAP is used for unmaps.
    pub fn use_unmap(&self) -> bool {
        self.thin && self.provisioning.unmap && self.limits.max_unmap_blocks > 0
    }
    /// Whether WRITE SAME(16) with UNMAP is used for unmaps.
    pub fn use_ws_unmap(&self) -> bool {
        self.thin && self.provisioning.write_same16_unmap
    }
    /// The JSON of `bdev_srp_get_sessions` / `driver_specific`.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "vendor": self.inquiry.vendor,
            "product": self.inquiry.product,
            "revision": self.inquiry.revision,
            "serial": self.serial,
            "device_id": self.device_id,
            "block_size": self.block_size,
            "num_blocks": self.num_blocks,
            "max_transfer_blocks": self.limits.max_transfer_blocks,
            "max_unmap_blocks": self.limits.max_unmap_blocks,
            "unmap_granularity": self.limits.unmap_granularity,
            "thin_provisioned": self.thin,
            "unmap": self.use_unmap(),
            "write_same16_unmap": self.use_ws_unmap(),
            "unmap_reads_zeroes": self.provisioning.reads_zeroes,
            "write_cache": self.write_cache,
            "dpofua": self.dpofua,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Tur,
    Inquiry,
    Pages,
    Vpd(u8),
    ModeSense,
    Capacity,
    Done,
}

/// The discovery state machine.
#[derive(Debug)]
pub struct Discovery {
    step: Step,
    retries: u32,
    pages: Vec<u8>,
    inquiry: Option<Inquiry>,
    serial: Option<String>,
    device_id: Option<String>,
    limits: BlockLimits,
    provisioning: Provisioning,
    caching: Option<Caching>,
}

impl Default for Discovery {
    fn default() -> Self {
        Self::new()
    }
}

impl Discovery {
    /// Starts at TEST UNIT READY.
    pub fn new() -> Discovery {
        Discovery {
            step: Step::Tur,
            retries: 0,
            pages: Vec::new(),
            inquiry: None,
            serial: None,
            device_id: None,
            limits: BlockLimits::default(),
            provisioning: Provisioning::default(),
            caching: None,
        }
    }

    /// The next command and whether it reads data (all do but TUR).
    pub fn command(&self) -> Option<Cdb> {
        Some(match self.step {
            Step::Tur => Cdb::test_unit_ready(),
            Step::Inquiry => Cdb::inquiry(None, 96),
            Step::Pages => Cdb::inquiry(Some(0), ALLOC_LEN),
            Step::Vpd(p) => Cdb::inquiry(Some(p), ALLOC_LEN),
            Step::ModeSense => Cdb::mode_sense10(0x08, ALLOC_LEN),
            Step::Capacity => Cdb::read_capacity16(32),
            Step::Done => return None,
        })
    }

    /// Whether the current command is a retry (unit attention, busy, not
    /// ready): it is sent after a pause.
    pub fn retrying(&self) -> bool {
        self.retries > 0
    }

    /// Bytes the current command reads.
    pub fn data_len(&self) -> u32 {
        match self.step {
            Step::Tur | Step::Done => 0,
            Step::Inquiry => 96,
            Step::Capacity => 32,
            _ => u32::from(ALLOC_LEN),
        }
    }

    fn next_vpd(&self, after: u8) -> Step {
        for p in [0x80u8, 0x83, 0xb0, 0xb2] {
            if p > after && self.pages.contains(&p) {
                return Step::Vpd(p);
            }
        }
        Step::ModeSense
    }

    /// Feeds the answer to the current command (`data`: the bytes the
    /// target transferred). `Ok(Some(geometry))` when finished.
    pub fn answer(
        &mut self,
        scsi_status: u8,
        sense: &[u8],
        data: &[u8],
    ) -> Result<Option<Geometry>, String> {
        let what = format!("{:?}", self.step);
        match scsi::classify(scsi_status, sense) {
            Outcome::Retry | Outcome::Busy => {
                self.retries += 1;
                if self.retries > MAX_RETRIES {
                    return Err(format!(
                        "{what}: still busy / unit attention after {MAX_RETRIES} tries"
                    ));
                }
                return Ok(None);
            }
            Outcome::Done(st) if !st.is_ok() => {
                // An optional page the target lists but refuses: skip it.
                let s = SenseInfo::parse(sense);
                if let (Step::Vpd(p), Some(s)) = (self.step, s) {
                    if s.key == key::ILLEGAL_REQUEST {
                        self.step = self.next_vpd(p);
                        self.retries = 0;
                        return Ok(None);
                    }
                }
                // No Caching page: keep the safe defaults.
                if self.step == Step::ModeSense {
                    self.step = Step::Capacity;
                    self.retries = 0;
                    return Ok(None);
                }
                if self.step == Step::Tur && s.is_some_and(|s| s.key == key::NOT_READY) {
                    self.retries += 1;
                    if self.retries <= MAX_RETRIES {
                        return Ok(None);
                    }
                }
                return Err(format!("{what} failed: {} (sense {:02x?})", st.name(), s));
            }
            Outcome::Done(_) => {}
        }
        self.retries = 0;
        self.step = match self.step {
            Step::Tur => Step::Inquiry,
            Step::Inquiry => {
                let inq = Inquiry::parse(data).ok_or("INQUIRY: short answer")?;
                if inq.device_type != 0 {
                    return Err(format!(
                        "the LU is not a block device (peripheral device type {:#x})",
                        inq.device_type
                    ));
                }
                self.inquiry = Some(inq);
                Step::Pages
            }
            Step::Pages => {
                self.pages = scsi::supported_pages(data);
                self.next_vpd(0)
            }
            Step::Vpd(p) => {
                match p {
                    0x80 => self.serial = scsi::unit_serial(data),
                    0x83 => self.device_id = scsi::device_id(data),
                    0xb0 => self.limits = BlockLimits::parse(data).unwrap_or_default(),
                    _ => self.provisioning = Provisioning::parse(data).unwrap_or_default(),
                }
                self.next_vpd(p)
            }
            Step::ModeSense => {
                self.caching = Caching::parse(data);
                Step::Capacity
            }
            Step::Capacity => {
                let c =
                    Capacity::parse(data).ok_or("READ CAPACITY(16): short or invalid answer")?;
                if !(512..=65536).contains(&c.block_size) || !c.block_size.is_power_of_two() {
                    return Err(format!(
                        "READ CAPACITY(16): block size {} is not supported",
                        c.block_size
                    ));
                }
                if c.num_blocks.checked_mul(u64::from(c.block_size)).is_none() {
                    return Err("READ CAPACITY(16): capacity overflows".into());
                }
                self.step = Step::Done;
                return Ok(Some(Geometry {
                    block_size: c.block_size,
                    num_blocks: c.num_blocks,
                    inquiry: self.inquiry.clone().unwrap_or_default(),
                    serial: self.serial.clone(),
                    device_id: self.device_id.clone(),
                    limits: self.limits,
                    provisioning: self.provisioning,
                    thin: c.thin,
                    write_cache: self.caching.is_none_or(|m| m.write_cache),
                    dpofua: self.caching.is_some_and(|m| m.dpofua),
                }));
            }
            Step::Done => Step::Done,
        };
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ua() -> [u8; 18] {
        let mut s = [0u8; 18];
        s[0] = 0x70;
        s[2] = 6;
        s[12] = 0x29;
        s
    }

    #[test]
    fn walks_the_pages_the_target_lists() {
        let mut d = Discovery::new();
        assert_eq!(d.command().unwrap().bytes[0], 0x00);
        // POWER ON unit attention, then good.
        assert_eq!(d.answer(2, &ua(), &[]), Ok(None));
        assert_eq!(d.command().unwrap().bytes[0], 0x00);
        assert_eq!(d.answer(0, &[], &[]), Ok(None));
        let mut inq = vec![0u8; 96];
        inq[8..16].copy_from_slice(b"STRATA  ");
        assert_eq!(d.answer(0, &[], &inq), Ok(None));
        assert_eq!(d.command().unwrap().as_slice()[..3], [0x12, 1, 0]);
        d.answer(0, &[], &[0, 0, 0, 3, 0, 0x83, 0xb0]).unwrap();
        assert_eq!(d.command().unwrap().bytes[2], 0x83);
        let mut p83 = vec![0, 0x83, 0, 12, 1, 2, 0, 8];
        p83.extend_from_slice(&[9; 8]);
        d.answer(0, &[], &p83).unwrap();
        assert_eq!(d.command().unwrap().bytes[2], 0xb0);
        // The target refuses a page it listed: skipped.
        let mut ill = [0u8; 18];
        ill[0] = 0x70;
        ill[2] = 5;
        d.answer(2, &ill, &[]).unwrap();
        // MODE SENSE(10) of the Caching page: WCE off.
        assert_eq!(d.command().unwrap().bytes[0], 0x5a);
        d.answer(0, &[], &[0, 18, 0, 0, 0, 0, 0, 0, 0x08, 18, 0, 0])
            .unwrap();
        assert_eq!(d.command().unwrap().bytes[0], 0x9e);
        let mut rc = [0u8; 32];
        rc[7] = 0xff;
        rc[10] = 0x10;
        let g = d.answer(0, &[], &rc).unwrap().unwrap();
        assert_eq!(g.block_size, 4096);
        assert_eq!(g.num_blocks, 256);
        assert_eq!(g.device_id.as_deref(), Some("eui.0909090909090909"));
        assert_eq!(g.inquiry.vendor, "STRATA");
        assert!(!g.write_cache && !g.dpofua);
        assert!(!g.use_unmap());
        assert!(d.command().is_none());
    }

    #[test]
    fn refuses_what_is_not_a_disk() {
        let mut d = Discovery::new();
        d.answer(0, &[], &[]).unwrap();
        let mut inq = vec![0u8; 96];
        inq[0] = 0x05; // CD-ROM
        assert!(d
            .answer(0, &[], &inq)
            .unwrap_err()
            .contains("not a block device"));
        let mut d = Discovery::new();
        for _ in 0..=MAX_RETRIES {
            let _ = d.answer(2, &ua(), &[]);
        }
        assert!(d.answer(2, &ua(), &[]).is_err());
        // A bad block size.
        let mut d = Discovery::new();
        d.step = Step::Capacity;
        let mut rc = [0u8; 32];
        rc[11] = 100;
        assert!(d.answer(0, &[], &rc).is_err());
    }
}
