//! # srp — SCSI RDMA Protocol information units
//!
//! A pure codec for the SRP information units (IUs) exchanged by the strata
//! SRP target and initiator. No I/O, no `unsafe`, no allocation on the
//! decode path: decoders take the untrusted received bytes and return a
//! typed value or a precise [`SrpError`]; encoders write into a
//! caller-provided buffer (e.g. a pre-registered RDMA send buffer) and
//! return the length.
//!
//! ## Layout sources
//!
//! Wire layouts follow T10 SRP r16a as implemented by Linux, which both
//! ends must interoperate with:
//!
//! * `include/scsi/srp.h` — every IU struct, opcode, the
//!   `SRP_LOGIN_REJ_*` reasons, task management functions, `SRP_RSP`
//!   flags, and the SRP-2 additions (`SRP_DATA_DESC_IMM`,
//!   `struct srp_imm_buf`, `SRP_IMMED_REQUESTED`,
//!   `SRP_LOGIN_RSP_IMMED_SUPP`, `imm_data_offset`, and the 56-byte
//!   `struct srp_login_req_rdma` carried in rdma_cm private data);
//! * `drivers/infiniband/ulp/srp/ib_srp.c` — how the initiator fills
//!   `SRP_CMD` (buf_fmt nibbles, descriptor counts, the inline partial
//!   table of an indirect descriptor, immediate data at
//!   `SRP_IMM_DATA_OFFSET` = 68, the target port id as
//!   `id_ext ‖ ioc_guid`);
//! * `drivers/infiniband/ulp/srpt/ib_srpt.c` — how the target parses them
//!   (additional CDB length masked with `~3`, the immediate data
//!   descriptor preceding the data, login reject reasons it uses).
//!
//! All multi-byte fields are big-endian. The 8-byte tags are opaque to
//! the protocol (Linux writes them in host order); this crate reads and
//! writes them big-endian, so a tag is echoed byte-for-byte either way.
//! Reserved bytes are written as zero and ignored when read. Each type's
//! doc comment lists its byte offsets.
//!
//! ## Entry points
//!
//! * [`decode_iu`] / [`decode_iu_with_imm_offset`] dispatch on the opcode
//!   byte and return an [`Iu`];
//! * each IU type has `decode(&[u8])` and implements [`Encode`];
//! * [`LoginReq::decode_rdma`] / [`LoginReq::encode_rdma`] handle the
//!   rdma_cm private-data form of the login request (it starts with the
//!   tag, not the opcode, so it is not part of [`decode_iu`]).

//!
//! ## Example: the target's per-I/O path
//!
//! ```
//! use srp::{decode_iu, DataDesc, DirectBuf, Encode, Iu, Lun, SrpCmd, SrpRsp, TaskAttr};
//!
//! // What an initiator sends: READ(10) into one remote buffer.
//! let d = DirectBuf { va: 0x1000, key: 7, len: 4096 };
//! let cdb = [0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0];
//! let cmd = SrpCmd {
//!     sol_not: 0,
//!     tag: 42,
//!     lun: Lun::from_single_level(1)?,
//!     task_attr: TaskAttr::Simple,
//!     cdb: &cdb,
//!     data_out: DataDesc::None,
//!     data_in: DataDesc::Direct(d),
//! };
//! let mut recv_buf = [0u8; 256];
//! let n = cmd.encode(&mut recv_buf)?;
//!
//! // The target decodes exactly the received bytes, without allocating.
//! let Iu::Cmd(c) = decode_iu(&recv_buf[..n])? else { unreachable!() };
//! let total: u64 = c.data_in.descriptors().map(|d| u64::from(d.len)).sum();
//! assert_eq!(total, 4096);
//!
//! // ... RDMA WRITE the data, then answer in a pre-registered send buffer.
//! let rsp = SrpRsp { tag: c.tag, req_lim_delta: 1, ..SrpRsp::default() };
//! let mut send_buf = [0u8; 64];
//! assert_eq!(rsp.encode(&mut send_buf)?, 36);
//! # Ok::<(), srp::SrpError>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod cmd;
mod common;
mod error;
mod login;
mod misc;
mod rsp;
mod wire;

pub use cmd::{
    DataDesc, DescIter, DescList, ImmediateData, IndirectBuf, SrpCmd, IMM_DESC_SIZE,
    INDIRECT_HEADER_SIZE, LINUX_IMM_DATA_OFFSET, MAX_ADD_CDB_LEN, SRP_CMD_HEADER_SIZE,
};
pub use common::{desc_fmt, BufFormats, DirectBuf, Encode, Lun, Opcode, PortId, TaskAttr};
pub use error::SrpError;
pub use login::{
    LoginRej, LoginRejReason, LoginReq, LoginRsp, MultiChannelAction, MultiChannelResult,
    SRP_IMMED_REQUESTED, SRP_LOGIN_RSP_IMMED_SUPP, SRP_MTCH_ACTION_MASK,
};
pub use misc::{
    AerReq, AerRsp, CredReq, CredRsp, ILogout, TLogout, TLogoutReason, TaskMgmtFunction, TskMgmt,
};
pub use rsp::{tsk_mgmt_rsp, RspFlags, SrpRsp};

/// Any SRP information unit, as received on an RC QP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Iu<'a> {
    /// `SRP_LOGIN_REQ` (64-byte IU form).
    LoginReq(LoginReq),
    /// `SRP_LOGIN_RSP`.
    LoginRsp(LoginRsp),
    /// `SRP_LOGIN_REJ`.
    LoginRej(LoginRej),
    /// `SRP_I_LOGOUT`.
    ILogout(ILogout),
    /// `SRP_T_LOGOUT`.
    TLogout(TLogout),
    /// `SRP_TSK_MGMT`.
    TskMgmt(TskMgmt),
    /// `SRP_CMD`.
    Cmd(SrpCmd<'a>),
    /// `SRP_RSP`.
    Rsp(SrpRsp<'a>),
    /// `SRP_CRED_REQ`.
    CredReq(CredReq),
    /// `SRP_CRED_RSP`.
    CredRsp(CredRsp),
    /// `SRP_AER_REQ`.
    AerReq(AerReq<'a>),
    /// `SRP_AER_RSP`.
    AerRsp(AerRsp),
}

impl Iu<'_> {
    /// The IU's opcode.
    pub fn opcode(&self) -> Opcode {
        match self {
            Iu::LoginReq(_) => Opcode::LoginReq,
            Iu::LoginRsp(_) => Opcode::LoginRsp,
            Iu::LoginRej(_) => Opcode::LoginRej,
            Iu::ILogout(_) => Opcode::ILogout,
            Iu::TLogout(_) => Opcode::TLogout,
            Iu::TskMgmt(_) => Opcode::TskMgmt,
            Iu::Cmd(_) => Opcode::Cmd,
            Iu::Rsp(_) => Opcode::Rsp,
            Iu::CredReq(_) => Opcode::CredReq,
            Iu::CredRsp(_) => Opcode::CredRsp,
            Iu::AerReq(_) => Opcode::AerReq,
            Iu::AerRsp(_) => Opcode::AerRsp,
        }
    }

    /// The IU's tag.
    pub fn tag(&self) -> u64 {
        match self {
            Iu::LoginReq(x) => x.tag,
            Iu::LoginRsp(x) => x.tag,
            Iu::LoginRej(x) => x.tag,
            Iu::ILogout(x) => x.tag,
            Iu::TLogout(x) => x.tag,
            Iu::TskMgmt(x) => x.tag,
            Iu::Cmd(x) => x.tag,
            Iu::Rsp(x) => x.tag,
            Iu::CredReq(x) => x.tag,
            Iu::CredRsp(x) => x.tag,
            Iu::AerReq(x) => x.tag,
            Iu::AerRsp(x) => x.tag,
        }
    }

    fn as_encode(&self) -> &dyn Encode {
        match self {
            Iu::LoginReq(x) => x,
            Iu::LoginRsp(x) => x,
            Iu::LoginRej(x) => x,
            Iu::ILogout(x) => x,
            Iu::TLogout(x) => x,
            Iu::TskMgmt(x) => x,
            Iu::Cmd(x) => x,
            Iu::Rsp(x) => x,
            Iu::CredReq(x) => x,
            Iu::CredRsp(x) => x,
            Iu::AerReq(x) => x,
            Iu::AerRsp(x) => x,
        }
    }
}

impl Encode for Iu<'_> {
    fn encoded_len(&self) -> usize {
        self.as_encode().encoded_len()
    }

    fn encode(&self, buf: &mut [u8]) -> Result<usize, SrpError> {
        self.as_encode().encode(buf)
    }
}

/// The tag (bytes 8..16, common to every IU sent on the QP) of an IU that
/// may have failed to decode, so that a target can still answer a
/// malformed `SRP_CMD` with an `SRP_RSP` for that tag. `None` if fewer
/// than 16 bytes arrived.
pub fn peek_tag(b: &[u8]) -> Option<u64> {
    wire::be64(b, 8).ok()
}

/// Decodes any IU by its opcode byte; immediate data of an `SRP_CMD` is
/// looked for at [`LINUX_IMM_DATA_OFFSET`].
pub fn decode_iu(b: &[u8]) -> Result<Iu<'_>, SrpError> {
    decode_iu_with_imm_offset(b, LINUX_IMM_DATA_OFFSET)
}

/// Decodes any IU by its opcode byte, with the immediate data offset
/// negotiated for the channel (used only for `SRP_CMD`).
pub fn decode_iu_with_imm_offset(b: &[u8], imm_data_offset: u16) -> Result<Iu<'_>, SrpError> {
    let op = *b.first().ok_or(SrpError::TooShort { needed: 1, got: 0 })?;
    let opcode = Opcode::from_u8(op).ok_or(SrpError::UnknownOpcode(op))?;
    Ok(match opcode {
        Opcode::LoginReq => Iu::LoginReq(LoginReq::decode(b)?),
        Opcode::LoginRsp => Iu::LoginRsp(LoginRsp::decode(b)?),
        Opcode::LoginRej => Iu::LoginRej(LoginRej::decode(b)?),
        Opcode::ILogout => Iu::ILogout(ILogout::decode(b)?),
        Opcode::TLogout => Iu::TLogout(TLogout::decode(b)?),
        Opcode::TskMgmt => Iu::TskMgmt(TskMgmt::decode(b)?),
        Opcode::Cmd => Iu::Cmd(SrpCmd::decode_with_imm_offset(b, imm_data_offset)?),
        Opcode::Rsp => Iu::Rsp(SrpRsp::decode(b)?),
        Opcode::CredReq => Iu::CredReq(CredReq::decode(b)?),
        Opcode::CredRsp => Iu::CredRsp(CredRsp::decode(b)?),
        Opcode::AerReq => Iu::AerReq(AerReq::decode(b)?),
        Opcode::AerRsp => Iu::AerRsp(AerRsp::decode(b)?),
    })
}
