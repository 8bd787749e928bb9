//! `SRP_RSP`: SCSI command and task management responses.

use crate::common::{Encode, Opcode};
use crate::wire;
use crate::SrpError;

/// `SRP_RSP` flags byte (`SRP_RSP_FLAG_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RspFlags(pub u8);

impl RspFlags {
    /// Response data list is valid.
    pub const RSPVALID: RspFlags = RspFlags(1 << 0);
    /// Sense data list is valid.
    pub const SNSVALID: RspFlags = RspFlags(1 << 1);
    /// Data-out residual count is valid and is an overflow.
    pub const DOOVER: RspFlags = RspFlags(1 << 2);
    /// Data-out residual count is valid and is an underflow.
    pub const DOUNDER: RspFlags = RspFlags(1 << 3);
    /// Data-in residual count is valid and is an overflow.
    pub const DIOVER: RspFlags = RspFlags(1 << 4);
    /// Data-in residual count is valid and is an underflow.
    pub const DIUNDER: RspFlags = RspFlags(1 << 5);

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: RspFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for RspFlags {
    type Output = RspFlags;
    fn bitor(self, rhs: RspFlags) -> RspFlags {
        RspFlags(self.0 | rhs.0)
    }
}

/// Task management response codes carried in byte 3 of the 4-byte
/// response data of an `SRP_RSP` answering `SRP_TSK_MGMT` (as ib_srpt
/// sends them).
pub mod tsk_mgmt_rsp {
    /// Function complete / succeeded.
    pub const COMPLETE: u8 = 0x00;
    /// Request fields invalid.
    pub const FIELDS_INVALID: u8 = 0x02;
    /// Function not supported.
    pub const NOT_SUPPORTED: u8 = 0x04;
    /// Function failed.
    pub const FAILED: u8 = 0x05;
}

/// `SRP_RSP` (36 bytes + response data + sense data, `struct srp_rsp`),
/// offsets: `0` opcode, `1` sol_not, `4..8` req_lim_delta, `8..16` tag,
/// `18` flags, `19` status, `20..24` data_out_res_cnt, `24..28`
/// data_in_res_cnt, `28..32` sense_data_len, `32..36` resp_data_len,
/// `36..` response data, then sense data.
///
/// Decoding: the response data list is present only if `RSPVALID` is set
/// and the sense data only if `SNSVALID` is set (a length whose valid bit
/// is clear is ignored). Encoding: the valid bits are set for every
/// non-empty list, in addition to whatever `flags` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SrpRsp<'a> {
    /// Solicited-notification flags byte.
    pub sol_not: u8,
    /// Signed credit delta returned to the initiator.
    pub req_lim_delta: i32,
    /// Tag of the request this answers.
    pub tag: u64,
    /// Flags (validity and residual over/underflow bits).
    pub flags: RspFlags,
    /// SCSI status.
    pub status: u8,
    /// Data-out residual count.
    pub data_out_res_cnt: u32,
    /// Data-in residual count.
    pub data_in_res_cnt: u32,
    /// Response data (for task management: 4 bytes, code in byte 3).
    pub response_data: &'a [u8],
    /// SCSI sense data.
    pub sense_data: &'a [u8],
}

impl<'a> SrpRsp<'a> {
    /// Size of the fixed part.
    pub const HEADER_SIZE: usize = 36;

    /// Decodes an `SRP_RSP`, borrowing response and sense data from `b`.
    pub fn decode(b: &'a [u8]) -> Result<SrpRsp<'a>, SrpError> {
        wire::need(b, Self::HEADER_SIZE)?;
        wire::opcode_at(b, 0, Opcode::Rsp as u8)?;
        let flags = RspFlags(wire::u8_at(b, 18)?);
        let sense_len = if flags.contains(RspFlags::SNSVALID) {
            wire::be32(b, 28)?
        } else {
            0
        };
        let resp_len = if flags.contains(RspFlags::RSPVALID) {
            wire::be32(b, 32)?
        } else {
            0
        };
        let resp_end = Self::HEADER_SIZE as u64 + u64::from(resp_len);
        let needed = resp_end + u64::from(sense_len);
        let err = SrpError::RspDataOutOfIu {
            needed,
            iu_len: b.len(),
        };
        if needed > b.len() as u64 {
            return Err(err);
        }
        // Both ends are <= b.len() now, so they fit usize.
        let resp_end = resp_end as usize;
        let response_data = b.get(Self::HEADER_SIZE..resp_end).ok_or(err)?;
        let sense_data = b.get(resp_end..needed as usize).ok_or(err)?;
        Ok(SrpRsp {
            sol_not: wire::u8_at(b, 1)?,
            req_lim_delta: wire::be32(b, 4)? as i32,
            tag: wire::be64(b, 8)?,
            flags,
            status: wire::u8_at(b, 19)?,
            data_out_res_cnt: wire::be32(b, 20)?,
            data_in_res_cnt: wire::be32(b, 24)?,
            response_data,
            sense_data,
        })
    }

    /// The task management response code (byte 3 of the response data),
    /// if the response data holds at least 4 bytes.
    pub fn tsk_mgmt_response_code(&self) -> Option<u8> {
        self.response_data.get(3).copied()
    }
}

impl Encode for SrpRsp<'_> {
    fn encoded_len(&self) -> usize {
        Self::HEADER_SIZE + self.response_data.len() + self.sense_data.len()
    }

    fn encode(&self, buf: &mut [u8]) -> Result<usize, SrpError> {
        let resp_len = wire::len32(self.response_data.len())?;
        let sense_len = wire::len32(self.sense_data.len())?;
        let mut flags = self.flags;
        if resp_len != 0 {
            flags = flags | RspFlags::RSPVALID;
        }
        if sense_len != 0 {
            flags = flags | RspFlags::SNSVALID;
        }
        let len = self.encoded_len();
        let b = wire::out(buf, len)?;
        wire::put8(b, 0, Opcode::Rsp as u8)?;
        wire::put8(b, 1, self.sol_not)?;
        wire::put32(b, 4, self.req_lim_delta as u32)?;
        wire::put64(b, 8, self.tag)?;
        wire::put8(b, 18, flags.0)?;
        wire::put8(b, 19, self.status)?;
        wire::put32(b, 20, self.data_out_res_cnt)?;
        wire::put32(b, 24, self.data_in_res_cnt)?;
        wire::put32(b, 28, sense_len)?;
        wire::put32(b, 32, resp_len)?;
        wire::put(b, Self::HEADER_SIZE, self.response_data)?;
        wire::put(
            b,
            Self::HEADER_SIZE + self.response_data.len(),
            self.sense_data,
        )?;
        Ok(len)
    }
}
