//! The one error type of the crate.

use thiserror::Error;

/// Everything that can go wrong while decoding an SRP information unit from
/// untrusted bytes, or while encoding one into a caller-provided buffer.
///
/// Decoders never panic: every malformed input maps to exactly one of these
/// variants, so a target can pick the matching `SRP_T_LOGOUT` / `SRP_RSP`
/// reaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SrpError {
    /// The IU (or a fixed part of it) is shorter than its layout requires.
    #[error("IU too short: need {needed} bytes, got {got}")]
    TooShort {
        /// Bytes required to decode what was asked for.
        needed: usize,
        /// Bytes available.
        got: usize,
    },
    /// The opcode byte names no SRP IU (only from [`crate::decode_iu`]).
    #[error("unknown SRP opcode {0:#04x}")]
    UnknownOpcode(u8),
    /// A type-specific decoder was handed an IU with another opcode.
    #[error("wrong SRP opcode: expected {expected:#04x}, got {got:#04x}")]
    WrongOpcode {
        /// The opcode this decoder accepts.
        expected: u8,
        /// The opcode found in byte 0 (byte 11 of the rdma_cm login form).
        got: u8,
    },
    /// The output buffer given to an encoder is too small.
    #[error("output buffer too small: need {needed} bytes, got {got}")]
    BufferTooSmall {
        /// Bytes the encoded IU needs.
        needed: usize,
        /// Bytes the caller provided.
        got: usize,
    },
    /// `SRP_LOGIN_REQ` multi-channel action field holds a reserved value (2 or 3).
    #[error("reserved multi-channel action {0}")]
    InvalidMultiChannelAction(u8),
    /// `SRP_LOGIN_RSP` multi-channel result field holds a reserved value (3).
    #[error("reserved multi-channel result {0}")]
    InvalidMultiChannelResult(u8),
    /// `SRP_CMD` data-out descriptor format (high nibble of buf_fmt) is not
    /// one of none/direct/indirect/immediate.
    #[error("unsupported data-out buffer descriptor format {0}")]
    UnsupportedDataOutFormat(u8),
    /// `SRP_CMD` data-in descriptor format (low nibble of buf_fmt) is not one
    /// of none/direct/indirect (immediate data only exists for data-out).
    #[error("unsupported data-in buffer descriptor format {0}")]
    UnsupportedDataInFormat(u8),
    /// Immediate data-out combined with a data-in descriptor (bidirectional
    /// commands cannot use immediate data).
    #[error("immediate data cannot be combined with a data-in descriptor")]
    ImmediateDataWithDataIn,
    /// The descriptors announced by buf_fmt and the descriptor counts do not
    /// fit in the IU.
    #[error("data descriptors need {needed} bytes but the IU has {iu_len}")]
    DescriptorsExceedIu {
        /// Bytes (from IU start) the descriptors claim to occupy.
        needed: usize,
        /// Length of the IU.
        iu_len: usize,
    },
    /// An indirect descriptor's table length is not a multiple of 16
    /// (the size of one `srp_direct_buf`).
    #[error("indirect table length {0} is not a multiple of 16")]
    IndirectTableLenNotMultiple(u32),
    /// The inline partial table has more entries than the whole table.
    #[error("partial table of {count} descriptors exceeds table length {table_len}")]
    PartialTableTooLarge {
        /// Descriptor count from the SRP_CMD.
        count: u8,
        /// table_desc.len of the indirect descriptor.
        table_len: u32,
    },
    /// A complete inline table whose descriptor lengths do not add up to
    /// the indirect descriptor's total length.
    #[error("indirect total length {total_len} != sum of descriptor lengths {sum}")]
    IndirectTotalLenMismatch {
        /// The total length field.
        total_len: u32,
        /// Sum of the inline descriptors' lengths.
        sum: u64,
    },
    /// The immediate data offset points into the CDB or the descriptors.
    #[error("immediate data offset {offset} overlaps the descriptors (minimum {min})")]
    ImmediateDataOverlapsDescriptors {
        /// Immediate data offset (negotiated at login).
        offset: usize,
        /// First byte after the immediate data descriptor.
        min: usize,
    },
    /// Immediate data (offset + length) reaches past the end of the IU.
    #[error("immediate data at {offset} of length {len} exceeds IU length {iu_len}")]
    ImmediateDataOutOfIu {
        /// Immediate data offset.
        offset: usize,
        /// Length from the immediate data descriptor.
        len: u32,
        /// Length of the IU.
        iu_len: usize,
    },
    /// `SRP_RSP` response data and/or sense data lengths reach past the IU.
    #[error("response + sense data need {needed} bytes but the IU has {iu_len}")]
    RspDataOutOfIu {
        /// Bytes (from IU start) the data lists claim to occupy.
        needed: u64,
        /// Length of the IU.
        iu_len: usize,
    },
    /// `SRP_AER_REQ` sense data length reaches past the IU.
    #[error("AER sense data needs {needed} bytes but the IU has {iu_len}")]
    AerSenseOutOfIu {
        /// Bytes (from IU start) the sense data claims to occupy.
        needed: u64,
        /// Length of the IU.
        iu_len: usize,
    },
    /// Encoder: the CDB is longer than 16 + 252 bytes.
    #[error("CDB of {0} bytes is too long (max 268)")]
    CdbTooLong(usize),
    /// Encoder: more than 255 descriptors in an inline partial table.
    #[error("{0} inline descriptors do not fit the 8-bit descriptor count")]
    TooManyDescriptors(usize),
    /// Encoder: a length does not fit its 32-bit wire field.
    #[error("length {0} does not fit a 32-bit field")]
    LengthOverflow(usize),
    /// A single-level LUN above 16383 (the flat-space maximum).
    #[error("LUN {0} out of range for single-level addressing")]
    LunOutOfRange(u64),
}
