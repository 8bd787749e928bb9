//! Login: `SRP_LOGIN_REQ` (64-byte IU and the 56-byte rdma_cm private-data
//! form), `SRP_LOGIN_RSP`, `SRP_LOGIN_REJ`.

use crate::common::{BufFormats, Encode, Opcode, PortId};
use crate::wire;
use crate::SrpError;

/// `req_flags` bit: immediate data requested (`SRP_IMMED_REQUESTED`, SRP-2).
pub const SRP_IMMED_REQUESTED: u8 = 0x80;
/// `req_flags` mask of the multi-channel action (`SRP_MTCH_ACTION` in ib_srpt).
pub const SRP_MTCH_ACTION_MASK: u8 = 0x03;
/// `rsp_flags` bit: immediate data supported (`SRP_LOGIN_RSP_IMMED_SUPP`).
pub const SRP_LOGIN_RSP_IMMED_SUPP: u8 = 0x80;

/// Multi-channel action of a login request (`SRP_MULTICHAN_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MultiChannelAction {
    /// `SRP_MULTICHAN_SINGLE` (0): terminate other channels of the I_T nexus.
    #[default]
    Single,
    /// `SRP_MULTICHAN_MULTI` (1): keep them running independently.
    Multi,
}

/// Multi-channel result of a login response (`SRP_LOGIN_RSP_MULTICHAN_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MultiChannelResult {
    /// `SRP_LOGIN_RSP_MULTICHAN_NO_CHAN` (0): no other channel existed.
    #[default]
    NoChannel,
    /// `SRP_LOGIN_RSP_MULTICHAN_TERMINATED` (1): existing channels terminated.
    Terminated,
    /// `SRP_LOGIN_RSP_MULTICHAN_MAINTAINED` (2): existing channels continue.
    Maintained,
}

/// A login request, in either of its two wire forms.
///
/// 64-byte IU (`struct srp_login_req`), offsets:
/// `0` opcode, `8..16` tag, `16..20` req_it_iu_len, `24..26` req_buf_fmt,
/// `26` req_flags, `28..30` imm_data_offset, `32..48` initiator_port_id,
/// `48..64` target_port_id.
///
/// 56-byte rdma_cm private data (`struct srp_login_req_rdma`), offsets:
/// `0..8` tag, `8..10` req_buf_fmt, `10` req_flags, `11` opcode,
/// `12..16` req_it_iu_len, `16..32` initiator_port_id, `32..48`
/// target_port_id, `48..50` imm_data_offset, `50..56` reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct LoginReq {
    /// Opaque tag, echoed in the response (read and written big-endian).
    pub tag: u64,
    /// Requested maximum initiator-to-target IU length.
    pub req_it_iu_len: u32,
    /// Requested descriptor formats.
    pub req_buf_fmt: BufFormats,
    /// Multi-channel action (`req_flags` bits 1..0).
    pub multichannel: MultiChannelAction,
    /// `SRP_IMMED_REQUESTED` (`req_flags` bit 7).
    pub immediate_data_requested: bool,
    /// Offset of immediate data within an `SRP_CMD` (SRP-2; Linux sends
    /// [`crate::LINUX_IMM_DATA_OFFSET`]).
    pub imm_data_offset: u16,
    /// Initiator port identifier.
    pub initiator_port_id: PortId,
    /// Target port identifier (`id_ext` ‖ `ioc_guid`).
    pub target_port_id: PortId,
}

impl LoginReq {
    /// Size of the `SRP_LOGIN_REQ` IU.
    pub const SIZE: usize = 64;
    /// Size of the rdma_cm private-data form.
    pub const RDMA_SIZE: usize = 56;

    fn flags_from(v: u8) -> Result<(MultiChannelAction, bool), SrpError> {
        let mc = match v & SRP_MTCH_ACTION_MASK {
            0 => MultiChannelAction::Single,
            1 => MultiChannelAction::Multi,
            o => return Err(SrpError::InvalidMultiChannelAction(o)),
        };
        Ok((mc, v & SRP_IMMED_REQUESTED != 0))
    }

    fn flags_byte(&self) -> u8 {
        let mc = match self.multichannel {
            MultiChannelAction::Single => 0,
            MultiChannelAction::Multi => 1,
        };
        mc | if self.immediate_data_requested {
            SRP_IMMED_REQUESTED
        } else {
            0
        }
    }

    /// Decodes the 64-byte `SRP_LOGIN_REQ` IU.
    pub fn decode(b: &[u8]) -> Result<LoginReq, SrpError> {
        wire::need(b, Self::SIZE)?;
        wire::opcode_at(b, 0, Opcode::LoginReq as u8)?;
        let (multichannel, imm) = Self::flags_from(wire::u8_at(b, 26)?)?;
        Ok(LoginReq {
            tag: wire::be64(b, 8)?,
            req_it_iu_len: wire::be32(b, 16)?,
            req_buf_fmt: BufFormats(wire::be16(b, 24)?),
            multichannel,
            immediate_data_requested: imm,
            imm_data_offset: wire::be16(b, 28)?,
            initiator_port_id: PortId(wire::array(b, 32)?),
            target_port_id: PortId(wire::array(b, 48)?),
        })
    }

    /// Decodes the 56-byte rdma_cm private-data form (longer private data,
    /// e.g. padded by the CM, is accepted; the excess is ignored).
    pub fn decode_rdma(b: &[u8]) -> Result<LoginReq, SrpError> {
        wire::need(b, Self::RDMA_SIZE)?;
        wire::opcode_at(b, 11, Opcode::LoginReq as u8)?;
        let (multichannel, imm) = Self::flags_from(wire::u8_at(b, 10)?)?;
        Ok(LoginReq {
            tag: wire::be64(b, 0)?,
            req_it_iu_len: wire::be32(b, 12)?,
            req_buf_fmt: BufFormats(wire::be16(b, 8)?),
            multichannel,
            immediate_data_requested: imm,
            imm_data_offset: wire::be16(b, 48)?,
            initiator_port_id: PortId(wire::array(b, 16)?),
            target_port_id: PortId(wire::array(b, 32)?),
        })
    }

    /// Encodes the 56-byte rdma_cm private-data form; returns 56.
    pub fn encode_rdma(&self, buf: &mut [u8]) -> Result<usize, SrpError> {
        let b = wire::out(buf, Self::RDMA_SIZE)?;
        wire::put64(b, 0, self.tag)?;
        wire::put16(b, 8, self.req_buf_fmt.0)?;
        wire::put8(b, 10, self.flags_byte())?;
        wire::put8(b, 11, Opcode::LoginReq as u8)?;
        wire::put32(b, 12, self.req_it_iu_len)?;
        wire::put(b, 16, &self.initiator_port_id.0)?;
        wire::put(b, 32, &self.target_port_id.0)?;
        wire::put16(b, 48, self.imm_data_offset)?;
        Ok(Self::RDMA_SIZE)
    }

    /// The rdma_cm form as a fixed array.
    pub fn to_rdma_bytes(&self) -> [u8; 56] {
        let mut a = [0u8; 56];
        // Cannot fail: the array has exactly RDMA_SIZE bytes.
        let _ = self.encode_rdma(&mut a);
        a
    }
}

impl Encode for LoginReq {
    fn encoded_len(&self) -> usize {
        Self::SIZE
    }

    fn encode(&self, buf: &mut [u8]) -> Result<usize, SrpError> {
        let b = wire::out(buf, Self::SIZE)?;
        wire::put8(b, 0, Opcode::LoginReq as u8)?;
        wire::put64(b, 8, self.tag)?;
        wire::put32(b, 16, self.req_it_iu_len)?;
        wire::put16(b, 24, self.req_buf_fmt.0)?;
        wire::put8(b, 26, self.flags_byte())?;
        wire::put16(b, 28, self.imm_data_offset)?;
        wire::put(b, 32, &self.initiator_port_id.0)?;
        wire::put(b, 48, &self.target_port_id.0)?;
        Ok(Self::SIZE)
    }
}

/// `SRP_LOGIN_RSP` (52 bytes, `struct srp_login_rsp`), offsets:
/// `0` opcode, `4..8` req_lim_delta, `8..16` tag, `16..20` max_it_iu_len,
/// `20..24` max_ti_iu_len, `24..26` buf_fmt, `26` rsp_flags, `27..52`
/// reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct LoginRsp {
    /// Initial request limit (credits) granted to the initiator.
    pub req_lim_delta: u32,
    /// Tag of the login request.
    pub tag: u64,
    /// Maximum initiator-to-target IU length the target accepts.
    pub max_it_iu_len: u32,
    /// Maximum target-to-initiator IU length the target will send.
    pub max_ti_iu_len: u32,
    /// Supported descriptor formats.
    pub buf_fmt: BufFormats,
    /// Multi-channel result (`rsp_flags` bits 1..0).
    pub multichannel: MultiChannelResult,
    /// `SRP_LOGIN_RSP_IMMED_SUPP` (`rsp_flags` bit 7).
    pub immediate_data_supported: bool,
}

impl LoginRsp {
    /// Size of the IU.
    pub const SIZE: usize = 52;

    /// Decodes an `SRP_LOGIN_RSP`.
    pub fn decode(b: &[u8]) -> Result<LoginRsp, SrpError> {
        wire::need(b, Self::SIZE)?;
        wire::opcode_at(b, 0, Opcode::LoginRsp as u8)?;
        let flags = wire::u8_at(b, 26)?;
        let multichannel = match flags & 0x03 {
            0 => MultiChannelResult::NoChannel,
            1 => MultiChannelResult::Terminated,
            2 => MultiChannelResult::Maintained,
            o => return Err(SrpError::InvalidMultiChannelResult(o)),
        };
        Ok(LoginRsp {
            req_lim_delta: wire::be32(b, 4)?,
            tag: wire::be64(b, 8)?,
            max_it_iu_len: wire::be32(b, 16)?,
            max_ti_iu_len: wire::be32(b, 20)?,
            buf_fmt: BufFormats(wire::be16(b, 24)?),
            multichannel,
            immediate_data_supported: flags & SRP_LOGIN_RSP_IMMED_SUPP != 0,
        })
    }
}

impl Encode for LoginRsp {
    fn encoded_len(&self) -> usize {
        Self::SIZE
    }

    fn encode(&self, buf: &mut [u8]) -> Result<usize, SrpError> {
        let b = wire::out(buf, Self::SIZE)?;
        let mc = match self.multichannel {
            MultiChannelResult::NoChannel => 0,
            MultiChannelResult::Terminated => 1,
            MultiChannelResult::Maintained => 2,
        };
        let imm = if self.immediate_data_supported {
            SRP_LOGIN_RSP_IMMED_SUPP
        } else {
            0
        };
        wire::put8(b, 0, Opcode::LoginRsp as u8)?;
        wire::put32(b, 4, self.req_lim_delta)?;
        wire::put64(b, 8, self.tag)?;
        wire::put32(b, 16, self.max_it_iu_len)?;
        wire::put32(b, 20, self.max_ti_iu_len)?;
        wire::put16(b, 24, self.buf_fmt.0)?;
        wire::put8(b, 26, mc | imm)?;
        Ok(Self::SIZE)
    }
}

/// Login reject reason codes (`enum srp_login_rej_reason` in `srp.h`,
/// SRP r16a).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LoginRejReason {
    /// `0x00010000` unable to establish RDMA channel, no reason specified.
    UnableEstablishChannel,
    /// `0x00010001` insufficient RDMA channel resources.
    InsufficientResources,
    /// `0x00010002` requested maximum initiator-to-target IU length too
    /// large (ib_srpt also uses it for lengths below 64).
    ReqItIuLengthTooLarge,
    /// `0x00010003` unable to associate RDMA channel with specified I_T
    /// nexus. SRP defines no separate "unknown target port id" code:
    /// ib_srpt rejects a login whose target port id does not match with
    /// this reason, and so should we.
    UnableAssociateChannel,
    /// `0x00010004` one or more requested data buffer descriptor formats
    /// are not supported.
    UnsupportedDescriptorFormat,
    /// `0x00010005` target port does not support multiple RDMA channels
    /// per I_T nexus.
    MultiChannelUnsupported,
    /// `0x00010006` RDMA channel limit reached for this initiator.
    ChannelLimitReached,
    /// Any other value, kept verbatim.
    Other(u32),
}

impl LoginRejReason {
    /// From the wire value.
    pub fn from_u32(v: u32) -> LoginRejReason {
        match v {
            0x0001_0000 => LoginRejReason::UnableEstablishChannel,
            0x0001_0001 => LoginRejReason::InsufficientResources,
            0x0001_0002 => LoginRejReason::ReqItIuLengthTooLarge,
            0x0001_0003 => LoginRejReason::UnableAssociateChannel,
            0x0001_0004 => LoginRejReason::UnsupportedDescriptorFormat,
            0x0001_0005 => LoginRejReason::MultiChannelUnsupported,
            0x0001_0006 => LoginRejReason::ChannelLimitReached,
            o => LoginRejReason::Other(o),
        }
    }

    /// To the wire value.
    pub fn to_u32(self) -> u32 {
        match self {
            LoginRejReason::UnableEstablishChannel => 0x0001_0000,
            LoginRejReason::InsufficientResources => 0x0001_0001,
            LoginRejReason::ReqItIuLengthTooLarge => 0x0001_0002,
            LoginRejReason::UnableAssociateChannel => 0x0001_0003,
            LoginRejReason::UnsupportedDescriptorFormat => 0x0001_0004,
            LoginRejReason::MultiChannelUnsupported => 0x0001_0005,
            LoginRejReason::ChannelLimitReached => 0x0001_0006,
            LoginRejReason::Other(o) => o,
        }
    }
}

/// `SRP_LOGIN_REJ` (32 bytes, `struct srp_login_rej`), offsets:
/// `0` opcode, `4..8` reason, `8..16` tag, `24..26` buf_fmt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LoginRej {
    /// Why the login was rejected.
    pub reason: LoginRejReason,
    /// Tag of the login request.
    pub tag: u64,
    /// Descriptor formats the target supports.
    pub buf_fmt: BufFormats,
}

impl LoginRej {
    /// Size of the IU.
    pub const SIZE: usize = 32;

    /// Decodes an `SRP_LOGIN_REJ`.
    pub fn decode(b: &[u8]) -> Result<LoginRej, SrpError> {
        wire::need(b, Self::SIZE)?;
        wire::opcode_at(b, 0, Opcode::LoginRej as u8)?;
        Ok(LoginRej {
            reason: LoginRejReason::from_u32(wire::be32(b, 4)?),
            tag: wire::be64(b, 8)?,
            buf_fmt: BufFormats(wire::be16(b, 24)?),
        })
    }
}

impl Encode for LoginRej {
    fn encoded_len(&self) -> usize {
        Self::SIZE
    }

    fn encode(&self, buf: &mut [u8]) -> Result<usize, SrpError> {
        let b = wire::out(buf, Self::SIZE)?;
        wire::put8(b, 0, Opcode::LoginRej as u8)?;
        wire::put32(b, 4, self.reason.to_u32())?;
        wire::put64(b, 8, self.tag)?;
        wire::put16(b, 24, self.buf_fmt.0)?;
        Ok(Self::SIZE)
    }
}
