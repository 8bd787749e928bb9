//! SCSI status codes, sense data, and the mapping from backend failures to sense.
//!
//! SCSI failures are *data* in this crate: a command that fails produces a
//! [`Sense`] that the transport returns with CHECK CONDITION status. Sense
//! data is encoded in fixed format (response code 0x70, 18 bytes) by
//! [`Sense::to_fixed`], or in descriptor format by [`Sense::to_descriptor`].

/// SAM status byte values (SAM-5 table "Status codes").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Status {
    /// GOOD (0x00).
    Good = 0x00,
    /// CHECK CONDITION (0x02): sense data accompanies the status.
    CheckCondition = 0x02,
    /// CONDITION MET (0x04).
    ConditionMet = 0x04,
    /// BUSY (0x08).
    Busy = 0x08,
    /// RESERVATION CONFLICT (0x18).
    ReservationConflict = 0x18,
    /// TASK SET FULL (0x28).
    TaskSetFull = 0x28,
    /// ACA ACTIVE (0x30).
    AcaActive = 0x30,
    /// TASK ABORTED (0x40).
    TaskAborted = 0x40,
}

impl Status {
    /// The status byte as sent on the wire.
    pub const fn code(self) -> u8 {
        self as u8
    }
}

/// Sense key (SPC-4 table "Sense key descriptions").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SenseKey {
    /// NO SENSE (0x0).
    NoSense = 0x0,
    /// RECOVERED ERROR (0x1).
    RecoveredError = 0x1,
    /// NOT READY (0x2).
    NotReady = 0x2,
    /// MEDIUM ERROR (0x3).
    MediumError = 0x3,
    /// HARDWARE ERROR (0x4).
    HardwareError = 0x4,
    /// ILLEGAL REQUEST (0x5).
    IllegalRequest = 0x5,
    /// UNIT ATTENTION (0x6).
    UnitAttention = 0x6,
    /// DATA PROTECT (0x7).
    DataProtect = 0x7,
    /// BLANK CHECK (0x8).
    BlankCheck = 0x8,
    /// VENDOR SPECIFIC (0x9).
    VendorSpecific = 0x9,
    /// COPY ABORTED (0xA).
    CopyAborted = 0xA,
    /// ABORTED COMMAND (0xB).
    AbortedCommand = 0xB,
    /// VOLUME OVERFLOW (0xD).
    VolumeOverflow = 0xD,
    /// MISCOMPARE (0xE).
    Miscompare = 0xE,
    /// COMPLETED (0xF).
    Completed = 0xF,
}

impl SenseKey {
    /// Decodes the low four bits of `v`; `None` for the reserved value 0xC.
    pub const fn from_u8(v: u8) -> Option<SenseKey> {
        Some(match v & 0x0F {
            0x0 => SenseKey::NoSense,
            0x1 => SenseKey::RecoveredError,
            0x2 => SenseKey::NotReady,
            0x3 => SenseKey::MediumError,
            0x4 => SenseKey::HardwareError,
            0x5 => SenseKey::IllegalRequest,
            0x6 => SenseKey::UnitAttention,
            0x7 => SenseKey::DataProtect,
            0x8 => SenseKey::BlankCheck,
            0x9 => SenseKey::VendorSpecific,
            0xA => SenseKey::CopyAborted,
            0xB => SenseKey::AbortedCommand,
            0xD => SenseKey::VolumeOverflow,
            0xE => SenseKey::Miscompare,
            0xF => SenseKey::Completed,
            _ => return None,
        })
    }
}

/// Sense-key-specific "field pointer" information (SPC-4 4.5.2.4.2): which
/// byte (and optionally bit) of the CDB or parameter list was invalid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FieldPointer {
    /// `true`: the error is in the CDB (C/D = 1); `false`: in the parameter list.
    pub in_cdb: bool,
    /// Byte offset of the offending field.
    pub byte: u16,
    /// Bit (0..=7) of the most significant offending bit, when known.
    pub bit: Option<u8>,
}

/// Sense data for one failed (or, for NO SENSE, successful) command.
///
/// `Sense` is small and `Copy` so that it can be kept as a pending unit
/// attention or returned through the hot path without allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Sense {
    /// The sense key.
    pub key: SenseKey,
    /// Additional sense code.
    pub asc: u8,
    /// Additional sense code qualifier.
    pub ascq: u8,
    /// Optional sense-key-specific field pointer (ILLEGAL REQUEST only).
    pub field: Option<FieldPointer>,
}

/// Length of fixed-format sense data produced by [`Sense::to_fixed`].
pub const FIXED_SENSE_LEN: usize = 18;

impl Sense {
    /// Builds sense data without a field pointer.
    pub const fn new(key: SenseKey, asc: u8, ascq: u8) -> Sense {
        Sense {
            key,
            asc,
            ascq,
            field: None,
        }
    }

    /// NO SENSE, 0x00/0x00: nothing to report (REQUEST SENSE with nothing pending).
    pub const NO_SENSE: Sense = Sense::new(SenseKey::NoSense, 0x00, 0x00);
    /// ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE (0x20/0x00).
    pub const INVALID_OPCODE: Sense = Sense::new(SenseKey::IllegalRequest, 0x20, 0x00);
    /// ILLEGAL REQUEST, LOGICAL BLOCK ADDRESS OUT OF RANGE (0x21/0x00).
    pub const LBA_OUT_OF_RANGE: Sense = Sense::new(SenseKey::IllegalRequest, 0x21, 0x00);
    /// ILLEGAL REQUEST, INVALID FIELD IN CDB (0x24/0x00), without field pointer.
    pub const INVALID_FIELD_IN_CDB: Sense = Sense::new(SenseKey::IllegalRequest, 0x24, 0x00);
    /// ILLEGAL REQUEST, LOGICAL UNIT NOT SUPPORTED (0x25/0x00, per SPC-4).
    pub const LUN_NOT_SUPPORTED: Sense = Sense::new(SenseKey::IllegalRequest, 0x25, 0x00);
    /// ILLEGAL REQUEST, PARAMETER LIST LENGTH ERROR (0x1A/0x00).
    pub const PARAMETER_LIST_LENGTH_ERROR: Sense = Sense::new(SenseKey::IllegalRequest, 0x1A, 0x00);
    /// ILLEGAL REQUEST, INVALID FIELD IN PARAMETER LIST (0x26/0x00), without field pointer.
    pub const INVALID_FIELD_IN_PARAMETER_LIST: Sense =
        Sense::new(SenseKey::IllegalRequest, 0x26, 0x00);
    /// ILLEGAL REQUEST, SAVING PARAMETERS NOT SUPPORTED (0x39/0x00).
    pub const SAVING_PARAMETERS_NOT_SUPPORTED: Sense =
        Sense::new(SenseKey::IllegalRequest, 0x39, 0x00);
    /// DATA PROTECT, WRITE PROTECTED (0x27/0x00).
    pub const WRITE_PROTECTED: Sense = Sense::new(SenseKey::DataProtect, 0x27, 0x00);
    /// MEDIUM ERROR, UNRECOVERED READ ERROR (0x11/0x00).
    pub const UNRECOVERED_READ_ERROR: Sense = Sense::new(SenseKey::MediumError, 0x11, 0x00);
    /// MEDIUM ERROR, WRITE ERROR (0x0C/0x00).
    pub const WRITE_ERROR: Sense = Sense::new(SenseKey::MediumError, 0x0C, 0x00);
    /// HARDWARE ERROR, INTERNAL TARGET FAILURE (0x44/0x00): the backend path
    /// failed; the initiator should fail over to another path.
    pub const INTERNAL_TARGET_FAILURE: Sense = Sense::new(SenseKey::HardwareError, 0x44, 0x00);
    /// ABORTED COMMAND, 0x00/0x00: the command was aborted and may be retried.
    pub const ABORTED_COMMAND: Sense = Sense::new(SenseKey::AbortedCommand, 0x00, 0x00);
    /// UNIT ATTENTION, POWER ON, RESET, OR BUS DEVICE RESET OCCURRED (0x29/0x00).
    pub const POWER_ON_RESET: Sense = Sense::new(SenseKey::UnitAttention, 0x29, 0x00);
    /// UNIT ATTENTION, BUS DEVICE RESET FUNCTION OCCURRED (0x29/0x03), e.g. after a LUN RESET.
    pub const BUS_DEVICE_RESET: Sense = Sense::new(SenseKey::UnitAttention, 0x29, 0x03);
    /// UNIT ATTENTION, CAPACITY DATA HAS CHANGED (0x2A/0x09).
    pub const CAPACITY_CHANGED: Sense = Sense::new(SenseKey::UnitAttention, 0x2A, 0x09);
    /// UNIT ATTENTION, REPORTED LUNS DATA HAS CHANGED (0x3F/0x0E).
    pub const REPORTED_LUNS_CHANGED: Sense = Sense::new(SenseKey::UnitAttention, 0x3F, 0x0E);

    /// INVALID FIELD IN CDB with a field pointer at `byte` (and `bit`, if known).
    pub const fn invalid_field_in_cdb(byte: u16, bit: Option<u8>) -> Sense {
        Sense {
            field: Some(FieldPointer {
                in_cdb: true,
                byte,
                bit,
            }),
            ..Sense::INVALID_FIELD_IN_CDB
        }
    }

    /// INVALID FIELD IN PARAMETER LIST with a field pointer at `byte` (and `bit`).
    pub const fn invalid_field_in_param_list(byte: u16, bit: Option<u8>) -> Sense {
        Sense {
            field: Some(FieldPointer {
                in_cdb: false,
                byte,
                bit,
            }),
            ..Sense::INVALID_FIELD_IN_PARAMETER_LIST
        }
    }

    /// The three sense-key-specific bytes (SKSV set) for the field pointer, if any.
    fn sks(&self) -> Option<[u8; 3]> {
        self.field.map(|f| {
            let mut b0 = 0x80;
            if f.in_cdb {
                b0 |= 0x40;
            }
            if let Some(bit) = f.bit {
                b0 |= 0x08 | (bit & 0x07);
            }
            let [hi, lo] = f.byte.to_be_bytes();
            [b0, hi, lo]
        })
    }

    /// Encodes fixed-format sense data: response code 0x70 (current error),
    /// additional sense length 10, and the field pointer in bytes 15..=17
    /// when present.
    pub fn to_fixed(&self, buf: &mut [u8; FIXED_SENSE_LEN]) {
        *buf = [0; FIXED_SENSE_LEN];
        buf[0] = 0x70;
        buf[2] = self.key as u8;
        buf[7] = 10;
        buf[12] = self.asc;
        buf[13] = self.ascq;
        if let Some(sks) = self.sks() {
            buf[15..18].copy_from_slice(&sks);
        }
    }

    /// Encodes descriptor-format sense data (response code 0x72) into `buf`
    /// and returns its length: 8 bytes, or 16 with a sense-key-specific
    /// descriptor carrying the field pointer.
    pub fn to_descriptor(&self, buf: &mut [u8; 16]) -> usize {
        *buf = [0; 16];
        buf[0] = 0x72;
        buf[1] = self.key as u8;
        buf[2] = self.asc;
        buf[3] = self.ascq;
        match self.sks() {
            Some(sks) => {
                buf[7] = 8;
                buf[8] = 0x02; // sense key specific sense data descriptor
                buf[9] = 0x06;
                buf[12..15].copy_from_slice(&sks);
                16
            }
            None => 8,
        }
    }

    /// Parses fixed (0x70/0x71) or descriptor (0x72/0x73) format sense data.
    /// Returns `None` if `buf` is too short or has an unknown response code.
    /// A field pointer is recovered only from fixed format.
    pub fn parse(buf: &[u8]) -> Option<Sense> {
        let code = *buf.first()? & 0x7F;
        match code {
            0x70 | 0x71 => {
                if buf.len() < 14 {
                    return None;
                }
                let key = SenseKey::from_u8(buf[2])?;
                let mut s = Sense::new(key, buf[12], buf[13]);
                if buf.len() >= 18 && buf[15] & 0x80 != 0 {
                    s.field = Some(FieldPointer {
                        in_cdb: buf[15] & 0x40 != 0,
                        byte: u16::from_be_bytes([buf[16], buf[17]]),
                        bit: (buf[15] & 0x08 != 0).then_some(buf[15] & 0x07),
                    });
                }
                Some(s)
            }
            0x72 | 0x73 => {
                if buf.len() < 4 {
                    return None;
                }
                Some(Sense::new(SenseKey::from_u8(buf[1])?, buf[2], buf[3]))
            }
            _ => None,
        }
    }
}

/// Why a backend (bdev) operation failed, as far as SCSI cares. The target
/// maps its bdev completion status to this and calls
/// [`sense_for_block_failure`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockFailure {
    /// The data is bad (unreadable / unwritable medium).
    Medium {
        /// `true` for a write-side failure (WRITE ERROR), `false` for a read.
        write: bool,
    },
    /// The route to the data is bad (the backend or a path to it failed).
    Path,
    /// The backend rejected the request as invalid.
    Invalid,
    /// The backend does not support the operation.
    Unsupported,
    /// The operation was aborted (reset, task management, shutdown).
    Aborted,
}

/// Maps a backend failure to the sense data returned with CHECK CONDITION.
///
/// | failure | sense |
/// |---|---|
/// | `Medium { write: false }` | MEDIUM ERROR, UNRECOVERED READ ERROR (0x11/0x00) |
/// | `Medium { write: true }` | MEDIUM ERROR, WRITE ERROR (0x0C/0x00) |
/// | `Path` | HARDWARE ERROR, INTERNAL TARGET FAILURE (0x44/0x00) — a Linux initiator fails it as a path error, so dm-multipath fails over |
/// | `Invalid` | ILLEGAL REQUEST, INVALID FIELD IN CDB (0x24/0x00) |
/// | `Unsupported` | ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE (0x20/0x00) |
/// | `Aborted` | ABORTED COMMAND (0x00/0x00) — retryable |
pub const fn sense_for_block_failure(f: BlockFailure) -> Sense {
    match f {
        BlockFailure::Medium { write: false } => Sense::UNRECOVERED_READ_ERROR,
        BlockFailure::Medium { write: true } => Sense::WRITE_ERROR,
        BlockFailure::Path => Sense::INTERNAL_TARGET_FAILURE,
        BlockFailure::Invalid => Sense::INVALID_FIELD_IN_CDB,
        BlockFailure::Unsupported => Sense::INVALID_OPCODE,
        BlockFailure::Aborted => Sense::ABORTED_COMMAND,
    }
}
