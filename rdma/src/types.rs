//! Plain data shared by both providers: SGEs, access flags, work requests,
//! completions, private data, device and port attributes.

use std::fmt;
use std::net::Ipv4Addr;
use std::ops::BitOr;

/// One scatter/gather element: `len` bytes at `addr`, inside a memory region
/// whose local key is `lkey`. Same layout as `struct ibv_sge`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sge {
    /// Virtual address of the first byte.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// Local key of the memory region holding the bytes.
    pub lkey: u32,
}

/// Access rights of a memory region (values of `IBV_ACCESS_*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AccessFlags(u32);

impl AccessFlags {
    /// The local HCA may write (RECV targets, RDMA READ targets).
    pub const LOCAL_WRITE: Self = Self(1);
    /// Peers may RDMA WRITE into the region (requires `LOCAL_WRITE`).
    pub const REMOTE_WRITE: Self = Self(2);
    /// Peers may RDMA READ from the region.
    pub const REMOTE_READ: Self = Self(4);

    /// No rights: the region can only be the source of SEND / RDMA WRITE.
    pub const fn empty() -> Self {
        Self(0)
    }
    /// The raw `IBV_ACCESS_*` bits.
    pub const fn bits(self) -> u32 {
        self.0
    }
    /// Whether every right in `other` is in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
    /// Both sets of rights.
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
    /// Whether the rights allow a peer to touch the region.
    pub const fn is_remote(self) -> bool {
        self.0 & (Self::REMOTE_WRITE.0 | Self::REMOTE_READ.0) != 0
    }
}

impl BitOr for AccessFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

/// What a send-queue work request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendOp {
    /// SEND: consumes a RECV posted by the peer.
    Send,
    /// SEND with 32 bits of immediate data (host order here; big-endian on the
    /// wire) delivered in the peer's receive completion.
    SendWithImm(u32),
    /// RDMA WRITE of the local SGEs to `remote_addr` in the peer's region `rkey`.
    RdmaWrite {
        /// Remote virtual address.
        remote_addr: u64,
        /// Remote key of the peer's memory region.
        rkey: u32,
    },
    /// RDMA READ from `remote_addr` in the peer's region `rkey` into the local SGEs.
    RdmaRead {
        /// Remote virtual address.
        remote_addr: u64,
        /// Remote key of the peer's memory region.
        rkey: u32,
    },
}

/// A send-queue work request.
#[derive(Clone, Copy, Debug)]
pub struct SendWr<'a> {
    /// Returned in the completion.
    pub wr_id: u64,
    /// Local buffers (gathered for SEND / WRITE, scattered into for READ).
    pub sges: &'a [Sge],
    /// The operation.
    pub op: SendOp,
    /// Generate a completion on success (errors always complete).
    pub signaled: bool,
}

impl<'a> SendWr<'a> {
    /// A signaled SEND.
    pub fn send(wr_id: u64, sges: &'a [Sge]) -> Self {
        Self {
            wr_id,
            sges,
            op: SendOp::Send,
            signaled: true,
        }
    }
    /// A signaled SEND with immediate data.
    pub fn send_imm(wr_id: u64, sges: &'a [Sge], imm: u32) -> Self {
        Self {
            wr_id,
            sges,
            op: SendOp::SendWithImm(imm),
            signaled: true,
        }
    }
    /// A signaled RDMA WRITE.
    pub fn write(wr_id: u64, sges: &'a [Sge], remote_addr: u64, rkey: u32) -> Self {
        Self {
            wr_id,
            sges,
            op: SendOp::RdmaWrite { remote_addr, rkey },
            signaled: true,
        }
    }
    /// A signaled RDMA READ.
    pub fn read(wr_id: u64, sges: &'a [Sge], remote_addr: u64, rkey: u32) -> Self {
        Self {
            wr_id,
            sges,
            op: SendOp::RdmaRead { remote_addr, rkey },
            signaled: true,
        }
    }
    /// The same request, unsignaled.
    pub fn unsignaled(mut self) -> Self {
        self.signaled = false;
        self
    }
    /// Total bytes of the SGE list.
    pub fn total_len(&self) -> u64 {
        self.sges.iter().map(|s| u64::from(s.len)).sum()
    }
}

/// Status of a completion (`enum ibv_wc_status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WcStatus {
    /// The work request completed.
    Success,
    /// A RECV buffer was too small for the incoming message.
    LocalLength,
    /// Internal QP consistency error.
    LocalQpOperation,
    /// An SGE is not inside a region of the QP's PD with that lkey (or lacks LOCAL_WRITE).
    LocalProtection,
    /// The QP entered the error state (disconnect, earlier error) before the WR executed.
    WrFlush,
    /// The responder hit a local access error.
    LocalAccess,
    /// The responder found the request invalid (e.g. message longer than its RECV).
    RemoteInvalidRequest,
    /// The responder refused the RDMA access: bad rkey, out of bounds, missing right.
    RemoteAccess,
    /// The responder failed the operation (e.g. its RECV buffer was unusable).
    RemoteOperation,
    /// The peer did not answer (transport retries exhausted): it is gone.
    RetryExceeded,
    /// The peer kept having no RECV posted (RNR retries exhausted).
    RnrRetryExceeded,
    /// Any other `ibv_wc_status` value.
    Other(u32),
}

impl WcStatus {
    /// From an `ibv_wc_status` value.
    pub fn from_raw(v: u32) -> Self {
        match v {
            0 => Self::Success,
            1 => Self::LocalLength,
            2 => Self::LocalQpOperation,
            4 => Self::LocalProtection,
            5 => Self::WrFlush,
            8 => Self::LocalAccess,
            9 => Self::RemoteInvalidRequest,
            10 => Self::RemoteAccess,
            11 => Self::RemoteOperation,
            12 => Self::RetryExceeded,
            13 => Self::RnrRetryExceeded,
            v => Self::Other(v),
        }
    }
    /// The `ibv_wc_status` value.
    pub fn to_raw(self) -> u32 {
        match self {
            Self::Success => 0,
            Self::LocalLength => 1,
            Self::LocalQpOperation => 2,
            Self::LocalProtection => 4,
            Self::WrFlush => 5,
            Self::LocalAccess => 8,
            Self::RemoteInvalidRequest => 9,
            Self::RemoteAccess => 10,
            Self::RemoteOperation => 11,
            Self::RetryExceeded => 12,
            Self::RnrRetryExceeded => 13,
            Self::Other(v) => v,
        }
    }
    /// Whether this is `Success`.
    pub fn is_ok(self) -> bool {
        self == Self::Success
    }
}

/// What completed (`enum ibv_wc_opcode`). Meaningful only for `Success`:
/// verbs leaves it undefined for error completions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WcOpcode {
    /// A SEND (with or without immediate).
    Send,
    /// An RDMA WRITE.
    RdmaWrite,
    /// An RDMA READ.
    RdmaRead,
    /// A RECV consumed by a SEND.
    Recv,
    /// A RECV consumed by an RDMA WRITE with immediate.
    RecvRdmaWithImm,
    /// Anything else.
    Other(u32),
}

impl WcOpcode {
    /// From an `ibv_wc_opcode` value.
    pub fn from_raw(v: u32) -> Self {
        match v {
            0 => Self::Send,
            1 => Self::RdmaWrite,
            2 => Self::RdmaRead,
            128 => Self::Recv,
            129 => Self::RecvRdmaWithImm,
            v => Self::Other(v),
        }
    }
}

/// One work completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The caller's `wr_id` of the work request.
    pub wr_id: u64,
    /// How it ended.
    pub status: WcStatus,
    /// What it was (valid for `Success` only).
    pub opcode: WcOpcode,
    /// Bytes received (RECV) or read (RDMA READ); valid for `Success` only.
    pub byte_len: u32,
    /// Immediate data of a SEND with immediate, host order.
    pub imm: Option<u32>,
    /// The local QP number.
    pub qp_num: u32,
    /// Vendor error syndrome (0 on loopback).
    pub vendor_err: u32,
}

impl Completion {
    /// A placeholder for output arrays.
    pub const EMPTY: Completion = Completion {
        wr_id: 0,
        status: WcStatus::Success,
        opcode: WcOpcode::Send,
        byte_len: 0,
        imm: None,
        qp_num: 0,
        vendor_err: 0,
    };
}

impl Default for Completion {
    fn default() -> Self {
        Self::EMPTY
    }
}

/// Queue pair sizes asked for at creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QpCaps {
    /// Send queue depth.
    pub max_send_wr: u32,
    /// Receive queue depth.
    pub max_recv_wr: u32,
    /// SGEs per send WR.
    pub max_send_sge: u32,
    /// SGEs per receive WR.
    pub max_recv_sge: u32,
    /// Inline data bytes (0: none).
    pub max_inline_data: u32,
}

impl Default for QpCaps {
    fn default() -> Self {
        Self {
            max_send_wr: 128,
            max_recv_wr: 128,
            max_send_sge: 4,
            max_recv_sge: 4,
            max_inline_data: 0,
        }
    }
}

/// Most private data bytes in a connect request of an RC connection (IB CM REQ
/// 92 bytes less rdma_cm's 36-byte header). The kernel SRP login uses all 56.
pub const MAX_CONNECT_PRIVATE_DATA: usize = 56;
/// Most private data bytes in an accept (IB CM REP).
pub const MAX_ACCEPT_PRIVATE_DATA: usize = 196;
/// Most private data bytes in a reject (IB CM REJ).
pub const MAX_REJECT_PRIVATE_DATA: usize = 148;

/// rdma_cm reject reason: nobody listens on that address/port
/// (`IB_CM_REJ_INVALID_SERVICE_ID`).
pub const REJECT_NO_LISTENER: i32 = 8;
/// rdma_cm reject reason: the peer application rejected
/// (`IB_CM_REJ_CONSUMER_DEFINED`).
pub const REJECT_CONSUMER: i32 = 28;

/// Connection private data received with a CM event, stored inline.
///
/// On InfiniBand and RoCE the CM pads private data to the message's fixed
/// size: a connect request arrives as 56 bytes, an accept as 196, a reject as
/// 148, whatever the sender passed. The loopback provider pads the same way;
/// protocols (SRP) carry their own lengths.
#[derive(Clone, Copy)]
pub struct PrivateData {
    len: u8,
    buf: [u8; MAX_ACCEPT_PRIVATE_DATA],
}

impl PrivateData {
    /// No data.
    pub const EMPTY: PrivateData = PrivateData {
        len: 0,
        buf: [0; MAX_ACCEPT_PRIVATE_DATA],
    };

    /// Copies up to 196 bytes (the rest is dropped).
    pub fn new(data: &[u8]) -> Self {
        let n = data.len().min(MAX_ACCEPT_PRIVATE_DATA);
        let mut p = Self::EMPTY;
        p.buf[..n].copy_from_slice(&data[..n]);
        p.len = n as u8;
        p
    }

    /// `data` zero-padded to `len` bytes, as the IB CM delivers it.
    pub(crate) fn padded(data: &[u8], len: usize) -> Self {
        let mut p = Self::new(data);
        p.len = len.clamp(p.len as usize, MAX_ACCEPT_PRIVATE_DATA) as u8;
        p
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }
}

impl fmt::Debug for PrivateData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateData({} bytes)", self.len)
    }
}

/// Device attributes (subset of `struct ibv_device_attr`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceAttr {
    /// Firmware version string.
    pub fw_ver: String,
    /// Node GUID, host order.
    pub node_guid: u64,
    /// Largest memory region in bytes.
    pub max_mr_size: u64,
    /// Most QPs.
    pub max_qp: u32,
    /// Deepest work queue.
    pub max_qp_wr: u32,
    /// Most SGEs per send/recv WR.
    pub max_sge: u32,
    /// Most SGEs per RDMA READ WR.
    pub max_sge_rd: u32,
    /// Most CQs.
    pub max_cq: u32,
    /// Deepest CQ.
    pub max_cqe: u32,
    /// Most memory regions.
    pub max_mr: u32,
    /// Outstanding RDMA READs a QP can serve as responder.
    pub max_qp_rd_atom: u32,
    /// Outstanding RDMA READs a QP can issue.
    pub max_qp_init_rd_atom: u32,
    /// Number of ports.
    pub phys_port_cnt: u8,
}

/// Logical port state (`enum ibv_port_state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortState {
    /// Down.
    Down,
    /// Initializing.
    Init,
    /// Armed.
    Armed,
    /// Up: can carry traffic.
    Active,
    /// Any other value.
    Other(u32),
}

impl PortState {
    pub(crate) fn from_raw(v: u32) -> Self {
        match v {
            1 => Self::Down,
            2 => Self::Init,
            3 => Self::Armed,
            4 => Self::Active,
            v => Self::Other(v),
        }
    }
}

/// Link layer of a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkLayer {
    /// InfiniBand.
    InfiniBand,
    /// Ethernet (RoCE, rxe).
    Ethernet,
    /// Unspecified / other.
    Other(u8),
}

/// Port attributes (subset of `struct ibv_port_attr`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortAttr {
    /// Logical state.
    pub state: PortState,
    /// Largest MTU the port supports, bytes.
    pub max_mtu: u32,
    /// MTU in use, bytes.
    pub active_mtu: u32,
    /// Entries in the GID table.
    pub gid_tbl_len: u32,
    /// Largest message, bytes.
    pub max_msg_sz: u32,
    /// Link layer.
    pub link_layer: LinkLayer,
}

/// `enum ibv_mtu` value to bytes.
pub(crate) fn mtu_bytes(v: u32) -> u32 {
    if (1..=5).contains(&v) {
        128 << v
    } else {
        0
    }
}

/// A 128-bit GID.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Gid(pub [u8; 16]);

impl Gid {
    /// The IPv4 address of an IPv4-mapped GID (`::ffff:a.b.c.d`, RoCE v2).
    pub fn as_ipv4(&self) -> Option<Ipv4Addr> {
        let g = &self.0;
        if g[..10].iter().all(|&b| b == 0) && g[10] == 0xff && g[11] == 0xff {
            Some(Ipv4Addr::new(g[12], g[13], g[14], g[15]))
        } else {
            None
        }
    }
    /// The IPv4-mapped GID of `ip`.
    pub fn from_ipv4(ip: Ipv4Addr) -> Self {
        let mut g = [0u8; 16];
        g[10] = 0xff;
        g[11] = 0xff;
        g[12..].copy_from_slice(&ip.octets());
        Gid(g)
    }
}

impl fmt::Display for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, pair) in self.0.chunks(2).enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{:02x}{:02x}", pair[0], pair[1])?;
        }
        Ok(())
    }
}

impl fmt::Debug for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gid({self})")
    }
}

/// Options of an active connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectOptions {
    /// RDMA READs this side serves at once (capped by the device).
    pub responder_resources: u8,
    /// RDMA READs this side issues at once (capped by the device).
    pub initiator_depth: u8,
    /// Transport retries before `RetryExceeded` (0..=7).
    pub retry_count: u8,
    /// RNR retries before `RnrRetryExceeded` (7: retry for ever).
    pub rnr_retry_count: u8,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            responder_resources: 16,
            initiator_depth: 16,
            retry_count: 7,
            rnr_retry_count: 7,
        }
    }
}
