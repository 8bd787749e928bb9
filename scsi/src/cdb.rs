//! CDB templates: opcode → command kind, CDB length and usage map.
//!
//! Decoding is two-step (as in rust-vmm's vhost-device-scsi): the opcode
//! (and service action) selects a [`CmdDesc`] whose usage map lists the CDB
//! bits this implementation understands; any other bit set in the CDB is
//! rejected with INVALID FIELD IN CDB pointing at it. Then the command's own
//! decoder reads the typed fields. The same usage map is reported by REPORT
//! SUPPORTED OPERATION CODES.

use crate::config::Capabilities;
use crate::sense::Sense;

/// Every command this LUN implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cmd {
    TestUnitReady,
    RequestSense,
    Read6,
    Write6,
    Inquiry,
    ModeSense6,
    StartStopUnit,
    ReadCapacity10,
    Read10,
    Write10,
    Verify10,
    SyncCache10,
    WriteSame10,
    Unmap,
    ModeSense10,
    Read16,
    Write16,
    Verify16,
    SyncCache16,
    WriteSame16,
    ReadCapacity16,
    ReportLuns,
    ReportOpcodes,
    Read12,
    Write12,
}

/// A CDB template.
#[derive(Debug)]
pub(crate) struct CmdDesc {
    pub cmd: Cmd,
    pub opcode: u8,
    /// Service action (in byte 1 bits 4:0), for opcodes that have them.
    pub sa: Option<u8>,
    /// CDB USAGE DATA as reported by RSOC: byte 0 is the opcode, byte 1
    /// holds the service action in its low 5 bits when `sa` is set, the
    /// other bytes are masks of the bits this implementation accepts. Its
    /// length is the CDB length. The last (control) byte is 0: NACA is
    /// not supported.
    pub usage: &'static [u8],
}

impl CmdDesc {
    /// CDB length in bytes.
    pub fn len(&self) -> usize {
        self.usage.len()
    }

    /// Whether this LUN (given its capabilities) offers the command.
    pub fn supported(&self, caps: &Capabilities) -> bool {
        match self.cmd {
            Cmd::WriteSame10 | Cmd::WriteSame16 => caps.write_same(),
            Cmd::Unmap => caps.unmap,
            _ => true,
        }
    }
}

const F: u8 = 0xFF;
const GROUP: u8 = 0x3F;

macro_rules! desc {
    ($cmd:ident, $op:expr, $sa:expr, [$($u:expr),* $(,)?]) => {
        CmdDesc { cmd: Cmd::$cmd, opcode: $op, sa: $sa, usage: &[$op, $($u),*] }
    };
}

/// The command table, in ascending (opcode, service action) order.
pub(crate) static TABLE: [CmdDesc; 25] = [
    desc!(TestUnitReady, 0x00, None, [0, 0, 0, 0, 0]),
    desc!(RequestSense, 0x03, None, [0x01, 0, 0, F, 0]),
    desc!(Read6, 0x08, None, [0x1F, F, F, F, 0]),
    desc!(Write6, 0x0A, None, [0x1F, F, F, F, 0]),
    desc!(Inquiry, 0x12, None, [0x01, F, F, F, 0]),
    desc!(ModeSense6, 0x1A, None, [0x08, F, F, F, 0]),
    // IMMED; POWER CONDITION MODIFIER; POWER CONDITION, NO_FLUSH, LOEJ, START.
    desc!(StartStopUnit, 0x1B, None, [0x01, 0, 0x0F, 0xF7, 0]),
    // LBA and PMI are obsolete in SBC-4 and ignored.
    desc!(ReadCapacity10, 0x25, None, [0, F, F, F, F, 0, 0, 0x01, 0]),
    // DPO, FUA, RARC, FUA_NV (obsolete, ignored); group number ignored.
    desc!(Read10, 0x28, None, [0x1E, F, F, F, F, GROUP, F, F, 0]),
    desc!(Write10, 0x2A, None, [0x1A, F, F, F, F, GROUP, F, F, 0]),
    // DPO only: VRPROTECT and BYTCHK must be zero.
    desc!(Verify10, 0x2F, None, [0x10, F, F, F, F, GROUP, F, F, 0]),
    // IMMED and SYNC_NV (obsolete).
    desc!(SyncCache10, 0x35, None, [0x06, F, F, F, F, GROUP, F, F, 0]),
    // UNMAP; no ANCHOR, PBDATA, LBDATA or WRPROTECT.
    desc!(WriteSame10, 0x41, None, [0x08, F, F, F, F, GROUP, F, F, 0]),
    // No ANCHOR.
    desc!(Unmap, 0x42, None, [0, 0, 0, 0, 0, GROUP, F, F, 0]),
    desc!(ModeSense10, 0x5A, None, [0x18, F, F, 0, 0, 0, F, F, 0]),
    desc!(
        Read16,
        0x88,
        None,
        [0x1E, F, F, F, F, F, F, F, F, F, F, F, F, GROUP, 0]
    ),
    desc!(
        Write16,
        0x8A,
        None,
        [0x1A, F, F, F, F, F, F, F, F, F, F, F, F, GROUP, 0]
    ),
    desc!(
        Verify16,
        0x8F,
        None,
        [0x10, F, F, F, F, F, F, F, F, F, F, F, F, GROUP, 0]
    ),
    desc!(
        SyncCache16,
        0x91,
        None,
        [0x06, F, F, F, F, F, F, F, F, F, F, F, F, GROUP, 0]
    ),
    // UNMAP, NDOB.
    desc!(
        WriteSame16,
        0x93,
        None,
        [0x09, F, F, F, F, F, F, F, F, F, F, F, F, GROUP, 0]
    ),
    desc!(
        ReadCapacity16,
        0x9E,
        Some(0x10),
        [0x10, F, F, F, F, F, F, F, F, F, F, F, F, 0x01, 0]
    ),
    desc!(ReportLuns, 0xA0, None, [0, F, 0, 0, 0, F, F, F, F, 0, 0]),
    // RCTD + REPORTING OPTIONS, requested opcode, requested SA, allocation length.
    desc!(
        ReportOpcodes,
        0xA3,
        Some(0x0C),
        [0x0C, 0x87, F, F, F, F, F, F, F, 0, 0]
    ),
    desc!(Read12, 0xA8, None, [0x1E, F, F, F, F, F, F, F, F, GROUP, 0]),
    desc!(
        Write12,
        0xAA,
        None,
        [0x1A, F, F, F, F, F, F, F, F, GROUP, 0]
    ),
];

/// Index into [`TABLE`] by opcode (`NONE` = unsupported). Every supported
/// opcode has exactly one entry (the opcodes with service actions support
/// exactly one each).
static INDEX: [u8; 256] = {
    let mut idx = [NONE; 256];
    let mut i = 0;
    while i < TABLE.len() {
        idx[TABLE[i].opcode as usize] = i as u8;
        i += 1;
    }
    idx
};
const NONE: u8 = 0xFF;

/// The template for `opcode` regardless of service action and capabilities.
pub(crate) fn by_opcode(opcode: u8) -> Option<&'static CmdDesc> {
    match INDEX[opcode as usize] {
        NONE => None,
        i => Some(&TABLE[i as usize]),
    }
}

/// Step one of decoding: find the template for `cdb` and check its length
/// and reserved bits.
pub(crate) fn decode(cdb: &[u8], caps: &Capabilities) -> Result<&'static CmdDesc, Sense> {
    let Some(&opcode) = cdb.first() else {
        return Err(Sense::invalid_field_in_cdb(0, None));
    };
    let desc = match by_opcode(opcode) {
        Some(d) if d.supported(caps) => d,
        _ => return Err(Sense::INVALID_OPCODE),
    };
    if cdb.len() < desc.len() {
        // The transport handed us fewer bytes than the opcode's CDB length.
        return Err(Sense::invalid_field_in_cdb(cdb.len() as u16, None));
    }
    if let Some(sa) = desc.sa {
        if cdb[1] & 0x1F != sa {
            return Err(Sense::invalid_field_in_cdb(1, Some(4)));
        }
    }
    check_reserved(desc, cdb)
}

fn check_reserved(desc: &'static CmdDesc, cdb: &[u8]) -> Result<&'static CmdDesc, Sense> {
    let last = desc.len() - 1;
    for (i, (&byte, &usage)) in cdb[..last].iter().zip(desc.usage).enumerate().skip(1) {
        let allowed = if i == 1 && desc.sa.is_some() {
            (usage & 0xE0) | 0x1F
        } else {
            usage
        };
        let bad = byte & !allowed;
        if bad != 0 {
            return Err(Sense::invalid_field_in_cdb(
                i as u16,
                Some(7 - bad.leading_zeros() as u8),
            ));
        }
    }
    // Control byte: NACA (bit 2) is not supported; vendor bits and the
    // obsolete LINK/FLAG bits are ignored.
    if cdb[last] & 0x04 != 0 {
        return Err(Sense::invalid_field_in_cdb(last as u16, Some(2)));
    }
    Ok(desc)
}

#[inline]
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline]
pub(crate) fn be24(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([0, b[at], b[at + 1], b[at + 2]])
}

#[inline]
pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[inline]
pub(crate) fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// Direction of a command's data transfer, from the initiator's view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// No data phase.
    None,
    /// Data-in: device to initiator (READ, INQUIRY, ...).
    In,
    /// Data-out: initiator to device (WRITE, UNMAP parameter list, ...).
    Out,
}

/// The data transfer a CDB asks for, to compare with the initiator's data
/// descriptors (overrun / underrun residuals).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Transfer {
    /// Direction of the transfer.
    pub direction: Direction,
    /// Length in bytes (the allocation length for data-in commands that
    /// return parameter data; the device may return less).
    pub len: u64,
}

impl Transfer {
    /// No data phase.
    pub const NONE: Transfer = Transfer {
        direction: Direction::None,
        len: 0,
    };

    pub(crate) const fn data_in(len: u64) -> Transfer {
        if len == 0 {
            Transfer::NONE
        } else {
            Transfer {
                direction: Direction::In,
                len,
            }
        }
    }

    pub(crate) const fn data_out(len: u64) -> Transfer {
        if len == 0 {
            Transfer::NONE
        } else {
            Transfer {
                direction: Direction::Out,
                len,
            }
        }
    }
}

/// What the transport does with a pending UNIT ATTENTION condition when a
/// command arrives (SPC-4 5.14 / SAM-5 5.14).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UaAction {
    /// Terminate the command with CHECK CONDITION carrying the unit
    /// attention, and clear it.
    Report,
    /// Execute the command normally and keep the unit attention pending
    /// (INQUIRY, REPORT LUNS).
    Ignore,
    /// REQUEST SENSE: execute it with the unit attention as
    /// [`crate::Context::pending_sense`], and clear it.
    AsSenseData,
}

/// How a pending unit attention interacts with `cdb`.
pub fn unit_attention_action(cdb: &[u8]) -> UaAction {
    match cdb.first() {
        Some(0x12) | Some(0xA0) => UaAction::Ignore,
        Some(0x03) => UaAction::AsSenseData,
        _ => UaAction::Report,
    }
}
