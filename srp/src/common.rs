//! Types shared by several IUs: opcodes, LUNs, port identifiers, buffer
//! format masks, the direct buffer descriptor, and the encoder trait.

use crate::wire;
use crate::SrpError;

/// SRP information unit type codes (byte 0 of every IU; `srp.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    /// `SRP_LOGIN_REQ` (initiator to target).
    LoginReq = 0x00,
    /// `SRP_TSK_MGMT` (initiator to target).
    TskMgmt = 0x01,
    /// `SRP_CMD` (initiator to target).
    Cmd = 0x02,
    /// `SRP_I_LOGOUT` (initiator to target).
    ILogout = 0x03,
    /// `SRP_LOGIN_RSP` (target to initiator).
    LoginRsp = 0xc0,
    /// `SRP_RSP` (target to initiator).
    Rsp = 0xc1,
    /// `SRP_LOGIN_REJ` (target to initiator).
    LoginRej = 0xc2,
    /// `SRP_T_LOGOUT` (target to initiator).
    TLogout = 0x80,
    /// `SRP_CRED_REQ` (target to initiator).
    CredReq = 0x81,
    /// `SRP_AER_REQ` (target to initiator).
    AerReq = 0x82,
    /// `SRP_CRED_RSP` (initiator to target).
    CredRsp = 0x41,
    /// `SRP_AER_RSP` (initiator to target).
    AerRsp = 0x42,
}

impl Opcode {
    /// Maps a wire opcode byte to an [`Opcode`].
    pub fn from_u8(v: u8) -> Option<Opcode> {
        Some(match v {
            0x00 => Opcode::LoginReq,
            0x01 => Opcode::TskMgmt,
            0x02 => Opcode::Cmd,
            0x03 => Opcode::ILogout,
            0xc0 => Opcode::LoginRsp,
            0xc1 => Opcode::Rsp,
            0xc2 => Opcode::LoginRej,
            0x80 => Opcode::TLogout,
            0x81 => Opcode::CredReq,
            0x82 => Opcode::AerReq,
            0x41 => Opcode::CredRsp,
            0x42 => Opcode::AerRsp,
            _ => return None,
        })
    }
}

/// Encoding into a caller-provided buffer (e.g. a pre-registered RDMA
/// send buffer); no allocation.
pub trait Encode {
    /// Exact number of bytes [`Encode::encode`] writes.
    fn encoded_len(&self) -> usize;

    /// Writes the IU at the start of `buf` (reserved bytes zeroed) and
    /// returns its length. Fails with [`SrpError::BufferTooSmall`] if `buf`
    /// is shorter than [`Encode::encoded_len`], or with an argument error if
    /// a field cannot be represented on the wire.
    fn encode(&self, buf: &mut [u8]) -> Result<usize, SrpError>;

    /// Convenience for tests and control paths: encodes into a new `Vec`.
    fn to_vec(&self) -> Result<Vec<u8>, SrpError> {
        let mut v = vec![0u8; self.encoded_len()];
        let n = self.encode(&mut v)?;
        v.truncate(n);
        Ok(v)
    }
}

/// An 8-byte SCSI logical unit number as carried in `SRP_CMD`,
/// `SRP_TSK_MGMT` and `SRP_AER_REQ` (`struct scsi_lun`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Lun(pub [u8; 8]);

impl Lun {
    /// Single-level LUN per SAM: 0..=255 use peripheral device addressing
    /// (`00 nn`), 256..=16383 flat space addressing (`01b` in the top two
    /// bits: `4h hh ll`); the remaining six bytes are zero.
    pub fn from_single_level(lun: u16) -> Result<Lun, SrpError> {
        let mut b = [0u8; 8];
        if lun < 256 {
            b[1] = lun as u8;
        } else if lun <= 0x3fff {
            b[0] = 0x40 | (lun >> 8) as u8;
            b[1] = lun as u8;
        } else {
            return Err(SrpError::LunOutOfRange(u64::from(lun)));
        }
        Ok(Lun(b))
    }

    /// The LUN number if this is a single-level LUN in peripheral (bus 0)
    /// or flat space addressing; `None` for anything else.
    pub fn single_level(&self) -> Option<u16> {
        let b = self.0;
        if b[2..].iter().any(|&x| x != 0) {
            return None;
        }
        match b[0] >> 6 {
            0b00 if b[0] == 0 => Some(u16::from(b[1])),
            0b01 => Some(u16::from(b[0] & 0x3f) << 8 | u16::from(b[1])),
            _ => None,
        }
    }

    /// Linux `int_to_scsilun()`: the kernel's 64-bit LUN number (which
    /// keeps the address-method bits) to the 8-byte wire form.
    pub fn from_linux(mut lun: u64) -> Lun {
        let mut b = [0u8; 8];
        for pair in b.chunks_exact_mut(2) {
            pair[0] = (lun >> 8) as u8;
            pair[1] = lun as u8;
            lun >>= 16;
        }
        Lun(b)
    }

    /// Linux `scsilun_to_int()`: inverse of [`Lun::from_linux`].
    pub fn to_linux(&self) -> u64 {
        let mut lun = 0u64;
        for (i, pair) in self.0.chunks_exact(2).enumerate() {
            lun |= (u64::from(pair[0]) << 8 | u64::from(pair[1])) << (16 * i);
        }
        lun
    }
}

/// A 16-byte SRP port identifier.
///
/// As the Linux initiator builds them: the target port id is `id_ext`
/// (bytes 0..8, big-endian) followed by `ioc_guid` (bytes 8..16); the
/// initiator port id is `initiator_ext` followed by the port GUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PortId(pub [u8; 16]);

impl PortId {
    /// Builds a port id from its two big-endian halves (`id_ext`, `guid`).
    pub fn from_parts(id_ext: u64, guid: u64) -> PortId {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&id_ext.to_be_bytes());
        b[8..].copy_from_slice(&guid.to_be_bytes());
        PortId(b)
    }

    /// Bytes 0..8 as a big-endian integer (`id_ext` / `initiator_ext`).
    pub fn id_ext(&self) -> u64 {
        let mut h = [0u8; 8];
        h.copy_from_slice(&self.0[..8]);
        u64::from_be_bytes(h)
    }

    /// Bytes 8..16 as a big-endian integer (`ioc_guid` / port GUID).
    pub fn guid(&self) -> u64 {
        let mut l = [0u8; 8];
        l.copy_from_slice(&self.0[8..]);
        u64::from_be_bytes(l)
    }

    /// `0x` followed by the 32 hexadecimal digits.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(34);
        s.push_str("0x");
        for b in self.0 {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// Parses one half of a port id (`id_ext`, `ioc_guid`,
    /// `initiator_ext`) as ib_srp's `add_target` writes it: 1 to 16
    /// hexadecimal digits, optional `0x`. The error is the reason.
    pub fn parse_half(s: &str) -> Result<u64, String> {
        let h = s
            .strip_prefix("0x")
            .or_else(|| s.strip_prefix("0X"))
            .unwrap_or(s);
        if h.is_empty() || h.len() > 16 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("`{s}` is not 1 to 16 hexadecimal digits"));
        }
        u64::from_str_radix(h, 16).map_err(|e| e.to_string())
    }
}

/// Supported/requested data buffer descriptor formats (`req_buf_fmt` /
/// `buf_fmt` of the login IUs; `SRP_BUF_FORMAT_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct BufFormats(pub u16);

impl BufFormats {
    /// `SRP_BUF_FORMAT_DIRECT`: direct data buffer descriptors.
    pub const DIRECT: BufFormats = BufFormats(1 << 1);
    /// `SRP_BUF_FORMAT_INDIRECT`: indirect data buffer descriptors.
    pub const INDIRECT: BufFormats = BufFormats(1 << 2);
    /// Both, as Linux `ib_srp` requests and `ib_srpt` answers.
    pub const BOTH: BufFormats = BufFormats((1 << 1) | (1 << 2));

    /// Whether every bit of `other` is set in `self`.
    pub fn contains(self, other: BufFormats) -> bool {
        self.0 & other.0 == other.0
    }
}

/// `SRP_CMD` buffer descriptor format codes (one nibble each for data-out
/// and data-in).
pub mod desc_fmt {
    /// `SRP_NO_DATA_DESC`.
    pub const NONE: u8 = 0;
    /// `SRP_DATA_DESC_DIRECT`.
    pub const DIRECT: u8 = 1;
    /// `SRP_DATA_DESC_INDIRECT`.
    pub const INDIRECT: u8 = 2;
    /// `SRP_DATA_DESC_IMM` (SRP-2; data-out only).
    pub const IMM: u8 = 3;
}

/// A memory descriptor (`struct srp_direct_buf`, 16 bytes): remote virtual
/// address, remote key (rkey), length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct DirectBuf {
    /// Virtual address (bytes 0..8).
    pub va: u64,
    /// Memory key / rkey (bytes 8..12).
    pub key: u32,
    /// Length in bytes (bytes 12..16).
    pub len: u32,
}

impl DirectBuf {
    /// Wire size of one descriptor.
    pub const SIZE: usize = 16;

    /// Decodes a descriptor at `off` of `b`.
    pub fn decode_at(b: &[u8], off: usize) -> Result<DirectBuf, SrpError> {
        Ok(DirectBuf {
            va: wire::be64(b, off)?,
            key: wire::be32(b, off + 8)?,
            len: wire::be32(b, off + 12)?,
        })
    }

    /// Decodes from exactly 16 bytes (infallible).
    pub fn from_bytes(b: &[u8; 16]) -> DirectBuf {
        let mut va = [0u8; 8];
        let mut key = [0u8; 4];
        let mut len = [0u8; 4];
        va.copy_from_slice(&b[0..8]);
        key.copy_from_slice(&b[8..12]);
        len.copy_from_slice(&b[12..16]);
        DirectBuf {
            va: u64::from_be_bytes(va),
            key: u32::from_be_bytes(key),
            len: u32::from_be_bytes(len),
        }
    }

    /// Encodes at `off` of `b`.
    pub fn encode_at(&self, b: &mut [u8], off: usize) -> Result<(), SrpError> {
        wire::put64(b, off, self.va)?;
        wire::put32(b, off + 8, self.key)?;
        wire::put32(b, off + 12, self.len)
    }
}

/// SCSI task attribute of an `SRP_CMD` (byte 29).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TaskAttr {
    /// SIMPLE (0), what Linux `ib_srp` always sends.
    #[default]
    Simple,
    /// HEAD OF QUEUE (1).
    HeadOfQueue,
    /// ORDERED (2).
    Ordered,
    /// ACA (4).
    Aca,
    /// Any other (reserved) value, kept verbatim.
    Other(u8),
}

impl TaskAttr {
    /// From the wire byte.
    pub fn from_u8(v: u8) -> TaskAttr {
        match v {
            0 => TaskAttr::Simple,
            1 => TaskAttr::HeadOfQueue,
            2 => TaskAttr::Ordered,
            4 => TaskAttr::Aca,
            o => TaskAttr::Other(o),
        }
    }

    /// To the wire byte.
    pub fn to_u8(self) -> u8 {
        match self {
            TaskAttr::Simple => 0,
            TaskAttr::HeadOfQueue => 1,
            TaskAttr::Ordered => 2,
            TaskAttr::Aca => 4,
            TaskAttr::Other(o) => o,
        }
    }
}
