//! LUN configuration and its validated form.

use thiserror::Error;

/// Which designator the Device Identification VPD page (0x83) carries for
/// the stable 64-bit LUN id (in addition to a T10 vendor ID designator).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DesignatorKind {
    /// NAA designator, NAA type 3 ("locally assigned", SPC-4 7.8.6.6.4), 8
    /// bytes: `0x3` in the top nibble and the **low 60 bits** of the id. No
    /// IEEE company id is needed; the id must be unique within the
    /// deployment (two ids that differ only in their top 4 bits collide).
    #[default]
    NaaLocal,
    /// EUI-64 designator (designator type 2), 8 bytes: the full 64-bit id.
    Eui64,
}

/// What the backend behind the LUN can do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Capabilities {
    /// The backend can unmap (deallocate) ranges: UNMAP and WRITE SAME with
    /// the UNMAP bit are supported; LBPME/LBPU/LBPWS/LBPWS10 are reported and
    /// the provisioning type is thin.
    pub unmap: bool,
    /// Unmapped blocks read back as zeros (LBPRZ). Only reported with `unmap`.
    pub unmap_reads_zero: bool,
    /// The backend can zero ranges efficiently: WRITE SAME is supported.
    /// (WRITE SAME is also supported when `unmap` is.)
    pub write_zeroes: bool,
    /// A volatile write cache is in use (WCE bit in the caching mode page).
    /// When `false`, every write is issued with `fua = true` and SYNCHRONIZE
    /// CACHE completes at once without a backend flush.
    pub write_cache: bool,
    /// The LUN is write protected: writes fail with DATA PROTECT and the WP
    /// bit is set in MODE SENSE.
    pub read_only: bool,
}

impl Capabilities {
    /// Whether the WRITE SAME commands are supported by this LUN.
    pub const fn write_same(&self) -> bool {
        self.unmap || self.write_zeroes
    }
}

/// Transfer and unmap limits, reported in the Block Limits VPD page (0xB0)
/// and enforced on commands. All counts are in logical blocks unless noted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Limits {
    /// Largest READ/WRITE transfer length accepted (MAXIMUM TRANSFER LENGTH).
    pub max_transfer_blocks: u32,
    /// OPTIMAL TRANSFER LENGTH GRANULARITY (0 = not reported).
    pub opt_transfer_granularity: u16,
    /// OPTIMAL TRANSFER LENGTH (0 = not reported).
    pub opt_transfer_blocks: u32,
    /// MAXIMUM UNMAP LBA COUNT: total blocks one UNMAP command may unmap.
    pub max_unmap_lba_count: u32,
    /// MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT.
    pub max_unmap_descriptors: u32,
    /// OPTIMAL UNMAP GRANULARITY (0 = not reported).
    pub unmap_granularity: u32,
    /// MAXIMUM WRITE SAME LENGTH.
    pub max_write_same_blocks: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_transfer_blocks: 8192,
            opt_transfer_granularity: 1,
            opt_transfer_blocks: 0,
            max_unmap_lba_count: 0x0040_0000,
            max_unmap_descriptors: 16,
            unmap_granularity: 1,
            max_write_same_blocks: 0x0040_0000,
        }
    }
}

/// User-facing description of a LUN; validate it with [`LunInfo::new`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LunConfig {
    /// Logical block size in bytes: a power of two in 512..=65536.
    pub block_size: u32,
    /// Number of logical blocks (at least 1).
    pub num_blocks: u64,
    /// T10 VENDOR IDENTIFICATION, at most 8 printable ASCII chars (space padded).
    pub vendor: String,
    /// PRODUCT IDENTIFICATION, at most 16 printable ASCII chars (space padded).
    pub product: String,
    /// PRODUCT REVISION LEVEL, at most 4 printable ASCII chars (space padded).
    pub revision: String,
    /// Unit serial number (VPD 0x80), 1..=64 printable ASCII chars.
    pub serial: String,
    /// Stable 64-bit id for the VPD 0x83 designator; must be the same on
    /// every target port exporting this LU so that multipath can match paths.
    pub id: u64,
    /// How `id` is presented in VPD page 0x83.
    pub designator: DesignatorKind,
    /// Backend capabilities.
    pub caps: Capabilities,
    /// Transfer and unmap limits.
    pub limits: Limits,
}

/// A configuration error found by [`LunInfo::new`].
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// The block size is not a power of two in 512..=65536.
    #[error("block size {0} is not a power of two between 512 and 65536")]
    BlockSize(u32),
    /// The LUN has no blocks.
    #[error("a LUN needs at least one block")]
    NoBlocks,
    /// `num_blocks * block_size` does not fit in a u64.
    #[error("capacity of {num_blocks} blocks of {block_size} bytes overflows u64")]
    CapacityOverflow {
        /// Configured block count.
        num_blocks: u64,
        /// Configured block size.
        block_size: u32,
    },
    /// A text field is longer than its SCSI field.
    #[error("{field} is {len} bytes long, at most {max} allowed")]
    TooLong {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// A text field has a character outside printable ASCII (0x20..=0x7E).
    #[error("{field} must be printable ASCII")]
    NotPrintable {
        /// Which field.
        field: &'static str,
    },
    /// The serial number is empty.
    #[error("the unit serial number must not be empty")]
    EmptySerial,
    /// A limit that must be non-zero is zero.
    #[error("limit {0} must be at least 1")]
    ZeroLimit(&'static str),
}

/// A validated LUN description, ready for [`crate::Lun::new`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LunInfo {
    pub(crate) block_size: u32,
    pub(crate) num_blocks: u64,
    pub(crate) vendor: [u8; 8],
    pub(crate) product: [u8; 16],
    pub(crate) revision: [u8; 4],
    pub(crate) serial: String,
    pub(crate) id: u64,
    pub(crate) designator: DesignatorKind,
    pub(crate) caps: Capabilities,
    pub(crate) limits: Limits,
}

fn padded<const N: usize>(field: &'static str, s: &str) -> Result<[u8; N], ConfigError> {
    printable(field, s)?;
    if s.len() > N {
        return Err(ConfigError::TooLong {
            field,
            len: s.len(),
            max: N,
        });
    }
    let mut out = [b' '; N];
    out[..s.len()].copy_from_slice(s.as_bytes());
    Ok(out)
}

fn printable(field: &'static str, s: &str) -> Result<(), ConfigError> {
    if s.bytes().all(|b| (0x20..=0x7E).contains(&b)) {
        Ok(())
    } else {
        Err(ConfigError::NotPrintable { field })
    }
}

/// Longest accepted unit serial number.
pub const MAX_SERIAL_LEN: usize = 64;

impl LunInfo {
    /// Validates `cfg`: block size, capacity, text fields (padded with
    /// spaces), and limits (`max_transfer_blocks >= 1`; with `caps.unmap`,
    /// `max_unmap_lba_count` and `max_unmap_descriptors >= 1`; with WRITE
    /// SAME supported, `max_write_same_blocks >= 1`).
    pub fn new(cfg: LunConfig) -> Result<LunInfo, ConfigError> {
        let bs = cfg.block_size;
        if !bs.is_power_of_two() || !(512..=65536).contains(&bs) {
            return Err(ConfigError::BlockSize(bs));
        }
        if cfg.num_blocks == 0 {
            return Err(ConfigError::NoBlocks);
        }
        if cfg.num_blocks.checked_mul(u64::from(bs)).is_none() {
            return Err(ConfigError::CapacityOverflow {
                num_blocks: cfg.num_blocks,
                block_size: bs,
            });
        }
        let vendor = padded::<8>("vendor", &cfg.vendor)?;
        let product = padded::<16>("product", &cfg.product)?;
        let revision = padded::<4>("revision", &cfg.revision)?;
        printable("serial", &cfg.serial)?;
        if cfg.serial.is_empty() {
            return Err(ConfigError::EmptySerial);
        }
        if cfg.serial.len() > MAX_SERIAL_LEN {
            return Err(ConfigError::TooLong {
                field: "serial",
                len: cfg.serial.len(),
                max: MAX_SERIAL_LEN,
            });
        }
        let l = &cfg.limits;
        if l.max_transfer_blocks == 0 {
            return Err(ConfigError::ZeroLimit("max_transfer_blocks"));
        }
        if cfg.caps.unmap && l.max_unmap_lba_count == 0 {
            return Err(ConfigError::ZeroLimit("max_unmap_lba_count"));
        }
        if cfg.caps.unmap && l.max_unmap_descriptors == 0 {
            return Err(ConfigError::ZeroLimit("max_unmap_descriptors"));
        }
        if cfg.caps.write_same() && l.max_write_same_blocks == 0 {
            return Err(ConfigError::ZeroLimit("max_write_same_blocks"));
        }
        Ok(LunInfo {
            block_size: bs,
            num_blocks: cfg.num_blocks,
            vendor,
            product,
            revision,
            serial: cfg.serial,
            id: cfg.id,
            designator: cfg.designator,
            caps: cfg.caps,
            limits: cfg.limits,
        })
    }

    /// Logical block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Number of logical blocks.
    pub fn num_blocks(&self) -> u64 {
        self.num_blocks
    }

    /// Backend capabilities.
    pub fn caps(&self) -> Capabilities {
        self.caps
    }

    /// Transfer and unmap limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The stable 64-bit id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The unit serial number.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// The 8-byte designator value presented in VPD page 0x83.
    pub fn designator_bytes(&self) -> [u8; 8] {
        match self.designator {
            DesignatorKind::NaaLocal => {
                ((3u64 << 60) | (self.id & 0x0FFF_FFFF_FFFF_FFFF)).to_be_bytes()
            }
            DesignatorKind::Eui64 => self.id.to_be_bytes(),
        }
    }
}
