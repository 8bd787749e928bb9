//! The small IUs: logout, task management, credit and asynchronous event
//! requests and their responses.

use crate::common::{Encode, Lun, Opcode};
use crate::wire;
use crate::SrpError;

/// `SRP_I_LOGOUT` (16 bytes): `0` opcode, `8..16` tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ILogout {
    /// Tag.
    pub tag: u64,
}

/// Target logout reason codes (SRP r16a; `srp.h` does not define them).
///
/// Values 0..=4 agree across every transcription consulted; 6..=9 follow
/// the OpenFabrics Windows `srp.h` (iPXE numbers the descriptor-format
/// reasons 5 and 6), so treat them with care when talking to other stacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TLogoutReason {
    /// 0: no reason specified.
    NoReason,
    /// 1: inactive RDMA channel (reclaiming resources).
    InactiveChannel,
    /// 2: invalid information unit type code received.
    InvalidIuType,
    /// 3: initiator sent a response with no outstanding target request.
    UnexpectedResponse,
    /// 4: disconnected by the multi-channel action of a new login.
    MultiChannelAction,
    /// 6: unsupported data-out buffer descriptor format.
    UnsupportedDataOutFormat,
    /// 7: unsupported data-in buffer descriptor format.
    UnsupportedDataInFormat,
    /// 8: invalid data-out buffer descriptor count.
    InvalidDataOutCount,
    /// 9: invalid data-in buffer descriptor count.
    InvalidDataInCount,
    /// Any other value, kept verbatim.
    Other(u32),
}

impl TLogoutReason {
    /// From the wire value.
    pub fn from_u32(v: u32) -> TLogoutReason {
        match v {
            0 => TLogoutReason::NoReason,
            1 => TLogoutReason::InactiveChannel,
            2 => TLogoutReason::InvalidIuType,
            3 => TLogoutReason::UnexpectedResponse,
            4 => TLogoutReason::MultiChannelAction,
            6 => TLogoutReason::UnsupportedDataOutFormat,
            7 => TLogoutReason::UnsupportedDataInFormat,
            8 => TLogoutReason::InvalidDataOutCount,
            9 => TLogoutReason::InvalidDataInCount,
            o => TLogoutReason::Other(o),
        }
    }

    /// To the wire value.
    pub fn to_u32(self) -> u32 {
        match self {
            TLogoutReason::NoReason => 0,
            TLogoutReason::InactiveChannel => 1,
            TLogoutReason::InvalidIuType => 2,
            TLogoutReason::UnexpectedResponse => 3,
            TLogoutReason::MultiChannelAction => 4,
            TLogoutReason::UnsupportedDataOutFormat => 6,
            TLogoutReason::UnsupportedDataInFormat => 7,
            TLogoutReason::InvalidDataOutCount => 8,
            TLogoutReason::InvalidDataInCount => 9,
            TLogoutReason::Other(o) => o,
        }
    }
}

/// `SRP_T_LOGOUT` (16 bytes): `0` opcode, `1` sol_not, `4..8` reason,
/// `8..16` tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TLogout {
    /// Solicited-notification flags byte.
    pub sol_not: u8,
    /// Why the target logs the channel out.
    pub reason: TLogoutReason,
    /// Tag.
    pub tag: u64,
}

/// Task management functions (`SRP_TSK_*` in `srp.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskMgmtFunction {
    /// `SRP_TSK_ABORT_TASK` (0x01): abort the task named by `task_tag`.
    AbortTask,
    /// `SRP_TSK_ABORT_TASK_SET` (0x02).
    AbortTaskSet,
    /// `SRP_TSK_CLEAR_TASK_SET` (0x04).
    ClearTaskSet,
    /// `SRP_TSK_LUN_RESET` (0x08).
    LunReset,
    /// `SRP_TSK_CLEAR_ACA` (0x40).
    ClearAca,
    /// Any other value, kept verbatim (answer "function not supported").
    Other(u8),
}

impl TaskMgmtFunction {
    /// From the wire byte.
    pub fn from_u8(v: u8) -> TaskMgmtFunction {
        match v {
            0x01 => TaskMgmtFunction::AbortTask,
            0x02 => TaskMgmtFunction::AbortTaskSet,
            0x04 => TaskMgmtFunction::ClearTaskSet,
            0x08 => TaskMgmtFunction::LunReset,
            0x40 => TaskMgmtFunction::ClearAca,
            o => TaskMgmtFunction::Other(o),
        }
    }

    /// To the wire byte.
    pub fn to_u8(self) -> u8 {
        match self {
            TaskMgmtFunction::AbortTask => 0x01,
            TaskMgmtFunction::AbortTaskSet => 0x02,
            TaskMgmtFunction::ClearTaskSet => 0x04,
            TaskMgmtFunction::LunReset => 0x08,
            TaskMgmtFunction::ClearAca => 0x40,
            TaskMgmtFunction::Other(o) => o,
        }
    }
}

/// `SRP_TSK_MGMT` (48 bytes, `struct srp_tsk_mgmt`), offsets: `0` opcode,
/// `1` sol_not, `8..16` tag, `20..28` LUN, `30` tsk_mgmt_func, `32..40`
/// task_tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TskMgmt {
    /// Solicited-notification flags byte.
    pub sol_not: u8,
    /// Tag of this request (its `SRP_RSP` carries it).
    pub tag: u64,
    /// Logical unit.
    pub lun: Lun,
    /// Function.
    pub function: TaskMgmtFunction,
    /// Tag of the task to abort (ABORT TASK only).
    pub task_tag: u64,
}

/// `SRP_CRED_REQ` (16 bytes): `0` opcode, `1` sol_not, `4..8`
/// req_lim_delta, `8..16` tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CredReq {
    /// Solicited-notification flags byte.
    pub sol_not: u8,
    /// Signed credit delta.
    pub req_lim_delta: i32,
    /// Tag.
    pub tag: u64,
}

/// `SRP_CRED_RSP` (16 bytes): `0` opcode, `8..16` tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CredRsp {
    /// Tag of the `SRP_CRED_REQ`.
    pub tag: u64,
}

/// `SRP_AER_RSP` (16 bytes): `0` opcode, `8..16` tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct AerRsp {
    /// Tag of the `SRP_AER_REQ`.
    pub tag: u64,
}

/// `SRP_AER_REQ` (36 bytes + sense data, `struct srp_aer_req`), offsets:
/// `0` opcode, `1` sol_not, `4..8` req_lim_delta, `8..16` tag, `20..28`
/// LUN, `28..32` sense_data_len, `36..` sense data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AerReq<'a> {
    /// Solicited-notification flags byte.
    pub sol_not: u8,
    /// Signed credit delta.
    pub req_lim_delta: i32,
    /// Tag.
    pub tag: u64,
    /// Logical unit the event is about.
    pub lun: Lun,
    /// Sense data (borrowed from the IU when decoded).
    pub sense_data: &'a [u8],
}

/// The 16-byte IUs that carry only an opcode and a tag.
fn decode_tag_only(b: &[u8], op: Opcode) -> Result<u64, SrpError> {
    wire::need(b, 16)?;
    wire::opcode_at(b, 0, op as u8)?;
    wire::be64(b, 8)
}

fn encode_tag_only(buf: &mut [u8], op: Opcode, tag: u64) -> Result<usize, SrpError> {
    let b = wire::out(buf, 16)?;
    wire::put8(b, 0, op as u8)?;
    wire::put64(b, 8, tag)?;
    Ok(16)
}

macro_rules! tag_only {
    ($t:ident, $op:expr) => {
        impl $t {
            /// Size of the IU.
            pub const SIZE: usize = 16;

            /// Decodes the IU.
            pub fn decode(b: &[u8]) -> Result<$t, SrpError> {
                Ok($t {
                    tag: decode_tag_only(b, $op)?,
                })
            }
        }

        impl Encode for $t {
            fn encoded_len(&self) -> usize {
                16
            }

            fn encode(&self, buf: &mut [u8]) -> Result<usize, SrpError> {
                encode_tag_only(buf, $op, self.tag)
            }
        }
    };
}

tag_only!(ILogout, Opcode::ILogout);
tag_only!(CredRsp, Opcode::CredRsp);
tag_only!(AerRsp, Opcode::AerRsp);

impl TLogout {
    /// Size of the IU.
    pub const SIZE: usize = 16;

    /// Decodes an `SRP_T_LOGOUT`.
    pub fn decode(b: &[u8]) -> Result<TLogout, SrpError> {
        wire::need(b, Self::SIZE)?;
        wire::opcode_at(b, 0, Opcode::TLogout as u8)?;
        Ok(TLogout {
            sol_not: wire::u8_at(b, 1)?,
            reason: TLogoutReason::from_u32(wire::be32(b, 4)?),
            tag: wire::be64(b, 8)?,
        })
    }
}

impl Encode for TLogout {
    fn encoded_len(&self) -> usize {
        Self::SIZE
    }

    fn encode(&self, buf: &mut [u8]) -> Result<usize, SrpError> {
        let b = wire::out(buf, Self::SIZE)?;
        wire::put8(b, 0, Opcode::TLogout as u8)?;
        wire::put8(b, 1, self.sol_not)?;
        wire::put32(b, 4, self.reason.to_u32())?;
        wire::put64(b, 8, self.tag)?;
        Ok(Self::SIZE)
    }
}

impl TskMgmt {
    /// Size of the IU.
    pub const SIZE: usize = 48;

    /// Decodes an `SRP_TSK_MGMT`.
    pub fn decode(b: &[u8]) -> Result<TskMgmt, SrpError> {
        wire::need(b, Self::SIZE)?;
        wire::opcode_at(b, 0, Opcode::TskMgmt as u8)?;
        Ok(TskMgmt {
            sol_not: wire::u8_at(b, 1)?,
            tag: wire::be64(b, 8)?,
            lun: Lun(wire::array(b, 20)?),
            function: TaskMgmtFunction::from_u8(wire::u8_at(b, 30)?),
            task_tag: wire::be64(b, 32)?,
        })
    }
}

impl Encode for TskMgmt {
    fn encoded_len(&self) -> usize {
        Self::SIZE
    }

    fn encode(&self, buf: &mut [u8]) -> Result<usize, SrpError> {
        let b = wire::out(buf, Self::SIZE)?;
        wire::put8(b, 0, Opcode::TskMgmt as u8)?;
        wire::put8(b, 1, self.sol_not)?;
        wire::put64(b, 8, self.tag)?;
        wire::put(b, 20, &self.lun.0)?;
        wire::put8(b, 30, self.function.to_u8())?;
        wire::put64(b, 32, self.task_tag)?;
        Ok(Self::SIZE)
    }
}

impl CredReq {
    /// Size of the IU.
    pub const SIZE: usize = 16;

    /// Decodes an `SRP_CRED_REQ`.
    pub fn decode(b: &[u8]) -> Result<CredReq, SrpError> {
        wire::need(b, Self::SIZE)?;
        wire::opcode_at(b, 0, Opcode::CredReq as u8)?;
        Ok(CredReq {
            sol_not: wire::u8_at(b, 1)?,
            req_lim_delta: wire::be32(b, 4)? as i32,
            tag: wire::be64(b, 8)?,
        })
    }
}

impl Encode for CredReq {
    fn encoded_len(&self) -> usize {
        Self::SIZE
    }

    fn encode(&self, buf: &mut [u8]) -> Result<usize, SrpError> {
        let b = wire::out(buf, Self::SIZE)?;
        wire::put8(b, 0, Opcode::CredReq as u8)?;
        wire::put8(b, 1, self.sol_not)?;
        wire::put32(b, 4, self.req_lim_delta as u32)?;
        wire::put64(b, 8, self.tag)?;
        Ok(Self::SIZE)
    }
}

impl<'a> AerReq<'a> {
    /// Size of the fixed part.
    pub const HEADER_SIZE: usize = 36;

    /// Decodes an `SRP_AER_REQ`, borrowing the sense data from `b`.
    pub fn decode(b: &'a [u8]) -> Result<AerReq<'a>, SrpError> {
        wire::need(b, Self::HEADER_SIZE)?;
        wire::opcode_at(b, 0, Opcode::AerReq as u8)?;
        let sense_len = wire::be32(b, 28)?;
        let needed = Self::HEADER_SIZE as u64 + u64::from(sense_len);
        let sense_data = usize::try_from(needed)
            .ok()
            .and_then(|end| b.get(Self::HEADER_SIZE..end))
            .ok_or(SrpError::AerSenseOutOfIu {
                needed,
                iu_len: b.len(),
            })?;
        Ok(AerReq {
            sol_not: wire::u8_at(b, 1)?,
            req_lim_delta: wire::be32(b, 4)? as i32,
            tag: wire::be64(b, 8)?,
            lun: Lun(wire::array(b, 20)?),
            sense_data,
        })
    }
}

impl Encode for AerReq<'_> {
    fn encoded_len(&self) -> usize {
        Self::HEADER_SIZE + self.sense_data.len()
    }

    fn encode(&self, buf: &mut [u8]) -> Result<usize, SrpError> {
        let sense_len = wire::len32(self.sense_data.len())?;
        let len = self.encoded_len();
        let b = wire::out(buf, len)?;
        wire::put8(b, 0, Opcode::AerReq as u8)?;
        wire::put8(b, 1, self.sol_not)?;
        wire::put32(b, 4, self.req_lim_delta as u32)?;
        wire::put64(b, 8, self.tag)?;
        wire::put(b, 20, &self.lun.0)?;
        wire::put32(b, 28, sense_len)?;
        wire::put(b, Self::HEADER_SIZE, self.sense_data)?;
        Ok(len)
    }
}
