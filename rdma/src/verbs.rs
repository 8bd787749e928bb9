//! The verbs provider: rdma-core (libibverbs + librdmacm) through `rdma-sys`.
//! All FFI of the crate is in this file.
//!
//! Device contexts come from `rdma_get_devices`, so that they are the very
//! contexts librdmacm binds CM ids to (`id->verbs`): a PD allocated on a
//! [`Context`] can then be used for a QP on any id of that device.

use std::ffi::CStr;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::ptr;
use std::sync::Arc;

use rdma_sys as sys;

use crate::error::{Error, Result};
use crate::types::*;
use crate::{next_token, CmEvent, CmEventKind, CmToken};

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Names of the verbs devices present (`ibv_get_device_list`).
pub(crate) fn device_names() -> Result<Vec<String>> {
    let mut n: i32 = 0;
    // SAFETY: `n` is a valid out pointer; the list is freed below.
    let list = unsafe { sys::ibv_get_device_list(&mut n) };
    if list.is_null() {
        return Err(Error::last_os("ibv_get_device_list"));
    }
    let mut names = Vec::new();
    for i in 0..n.max(0) as usize {
        // SAFETY: the list holds `n` valid device pointers until freed.
        let dev = unsafe { *list.add(i) };
        // SAFETY: `dev` is a valid device; the name is a NUL-terminated string it owns.
        names.push(
            unsafe { CStr::from_ptr(sys::ibv_get_device_name(dev)) }
                .to_string_lossy()
                .into_owned(),
        );
    }
    // SAFETY: `list` came from ibv_get_device_list and is freed once.
    unsafe { sys::ibv_free_device_list(list) };
    Ok(names)
}

// ---------------------------------------------------------------------------

/// An open device: one of librdmacm's contexts.
pub(crate) struct Context {
    ctx: *mut sys::ibv_context,
    list: *mut *mut sys::ibv_context,
    name: String,
}

// SAFETY: libibverbs contexts are thread-safe; the pointers are only used in
// thread-safe verbs calls and freed once in Drop.
unsafe impl Send for Context {}
// SAFETY: as above; `&Context` exposes only thread-safe queries.
unsafe impl Sync for Context {}

fn ctx_name(ctx: *mut sys::ibv_context) -> String {
    // SAFETY: `ctx` is a valid open context whose `device` is valid while it is.
    unsafe { CStr::from_ptr(sys::ibv_get_device_name((*ctx).device)) }
        .to_string_lossy()
        .into_owned()
}

impl Context {
    pub(crate) fn open(name: &str) -> Result<Arc<Context>> {
        let mut n: i32 = 0;
        // SAFETY: `n` is a valid out pointer; the list is freed on every path
        // (here on failure, in Drop on success).
        let list = unsafe { sys::rdma_get_devices(&mut n) };
        if list.is_null() {
            let e = errno();
            if e == libc::ENODEV || e == 0 {
                return Err(Error::NoDevice {
                    name: name.into(),
                    present: vec![],
                });
            }
            return Err(Error::verb("rdma_get_devices", e));
        }
        let mut present = Vec::new();
        for i in 0..n.max(0) as usize {
            // SAFETY: the list holds `n` valid contexts.
            let ctx = unsafe { *list.add(i) };
            let cname = ctx_name(ctx);
            if cname == name {
                tracing::debug!(device = name, "opened RDMA device");
                return Ok(Arc::new(Context {
                    ctx,
                    list,
                    name: cname,
                }));
            }
            present.push(cname);
        }
        // SAFETY: from rdma_get_devices, freed once.
        unsafe { sys::rdma_free_devices(list) };
        Err(Error::NoDevice {
            name: name.into(),
            present,
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn query_device(&self) -> Result<DeviceAttr> {
        let mut a = MaybeUninit::<sys::ibv_device_attr>::zeroed();
        // SAFETY: valid context and out pointer.
        let ret = unsafe { sys::ibv_query_device(self.ctx, a.as_mut_ptr()) };
        if ret != 0 {
            return Err(Error::from_ret("ibv_query_device", ret));
        }
        // SAFETY: zero-initialized plain C struct, filled by the call.
        let a = unsafe { a.assume_init() };
        let fw: Vec<u8> = a
            .fw_ver
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        let u = |v: i32| v.max(0) as u32;
        Ok(DeviceAttr {
            fw_ver: String::from_utf8_lossy(&fw).into_owned(),
            node_guid: u64::from_be(a.node_guid),
            max_mr_size: a.max_mr_size,
            max_qp: u(a.max_qp),
            max_qp_wr: u(a.max_qp_wr),
            max_sge: u(a.max_sge),
            max_sge_rd: u(a.max_sge_rd),
            max_cq: u(a.max_cq),
            max_cqe: u(a.max_cqe),
            max_mr: u(a.max_mr),
            max_qp_rd_atom: u(a.max_qp_rd_atom),
            max_qp_init_rd_atom: u(a.max_qp_init_rd_atom),
            phys_port_cnt: a.phys_port_cnt,
        })
    }

    pub(crate) fn query_port(&self, port: u8) -> Result<PortAttr> {
        let mut a = MaybeUninit::<sys::ibv_port_attr>::zeroed();
        // SAFETY: valid context and out pointer of the full struct size.
        let ret = unsafe { sys::___ibv_query_port(self.ctx, port, a.as_mut_ptr()) };
        if ret != 0 {
            return Err(Error::from_ret("ibv_query_port", ret));
        }
        // SAFETY: zero-initialized plain C struct, filled by the call.
        let a = unsafe { a.assume_init() };
        Ok(PortAttr {
            state: PortState::from_raw(a.state),
            max_mtu: mtu_bytes(a.max_mtu),
            active_mtu: mtu_bytes(a.active_mtu),
            gid_tbl_len: a.gid_tbl_len.max(0) as u32,
            max_msg_sz: a.max_msg_sz,
            link_layer: match a.link_layer {
                1 => LinkLayer::InfiniBand,
                2 => LinkLayer::Ethernet,
                v => LinkLayer::Other(v),
            },
        })
    }

    pub(crate) fn query_gid(&self, port: u8, index: u32) -> Result<Gid> {
        let mut g = MaybeUninit::<sys::ibv_gid>::zeroed();
        let idx = i32::try_from(index).map_err(|_| Error::InvalidArgument("GID index"))?;
        // SAFETY: valid context and out pointer.
        let ret = unsafe { sys::ibv_query_gid(self.ctx, port, idx, g.as_mut_ptr()) };
        if ret != 0 {
            return Err(Error::from_ret("ibv_query_gid", ret));
        }
        // SAFETY: filled by the call; every bit pattern is a valid `raw` array.
        Ok(Gid(unsafe { g.assume_init().raw }))
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: `list` came from rdma_get_devices and is freed exactly once;
        // every child (PD, CQ) holds an Arc of this context, so none is left.
        unsafe { sys::rdma_free_devices(self.list) };
    }
}

// ---------------------------------------------------------------------------

pub(crate) struct Pd {
    pd: *mut sys::ibv_pd,
    ctx: Arc<Context>,
}

// SAFETY: PDs are thread-safe handles in libibverbs; freed once in Drop.
unsafe impl Send for Pd {}
// SAFETY: as above; shared use is only reg_mr/create_qp, which are thread-safe.
unsafe impl Sync for Pd {}

impl Pd {
    pub(crate) fn new(ctx: &Arc<Context>) -> Result<Arc<Pd>> {
        // SAFETY: valid context.
        let pd = unsafe { sys::ibv_alloc_pd(ctx.ctx) };
        if pd.is_null() {
            return Err(Error::last_os("ibv_alloc_pd"));
        }
        Ok(Arc::new(Pd {
            pd,
            ctx: ctx.clone(),
        }))
    }
}

impl Drop for Pd {
    fn drop(&mut self) {
        // SAFETY: MRs and QPs hold Arcs of this PD, so none is left.
        let ret = unsafe { sys::ibv_dealloc_pd(self.pd) };
        if ret != 0 {
            tracing::error!(error = %Error::from_ret("ibv_dealloc_pd", ret), "leaking protection domain");
        }
    }
}

pub(crate) struct Mr {
    mr: *mut sys::ibv_mr,
    _pd: Arc<Pd>,
}

// SAFETY: an MR handle may be used and deregistered from any thread.
unsafe impl Send for Mr {}
// SAFETY: `&Mr` only reads the immutable keys.
unsafe impl Sync for Mr {}

impl Mr {
    /// # Safety
    /// As [`crate::Mr::register_raw`].
    pub(crate) unsafe fn register(
        pd: &Arc<Pd>,
        addr: *mut u8,
        len: usize,
        access: AccessFlags,
    ) -> Result<Mr> {
        // SAFETY: valid PD; the caller guarantees the memory outlives the MR.
        let mr = unsafe { sys::ibv_reg_mr(pd.pd, addr.cast(), len, access.bits() as i32) };
        if mr.is_null() {
            return Err(Error::last_os("ibv_reg_mr"));
        }
        Ok(Mr {
            mr,
            _pd: pd.clone(),
        })
    }
    pub(crate) fn lkey(&self) -> u32 {
        // SAFETY: `mr` is valid until Drop.
        unsafe { (*self.mr).lkey }
    }
    pub(crate) fn rkey(&self) -> u32 {
        // SAFETY: `mr` is valid until Drop.
        unsafe { (*self.mr).rkey }
    }
}

impl Drop for Mr {
    fn drop(&mut self) {
        // SAFETY: registered in `register`, deregistered once.
        let ret = unsafe { sys::ibv_dereg_mr(self.mr) };
        if ret != 0 {
            tracing::error!(error = %Error::from_ret("ibv_dereg_mr", ret), "memory region not deregistered");
        }
    }
}

// ---------------------------------------------------------------------------

pub(crate) struct CqInner {
    cq: *mut sys::ibv_cq,
    ctx: Arc<Context>,
}

// SAFETY: CQ handles may be used from any thread (providers lock internally);
// polling goes through `&mut Cq`, QPs hold the Arc only to keep it alive.
unsafe impl Send for CqInner {}
// SAFETY: as above.
unsafe impl Sync for CqInner {}

impl Drop for CqInner {
    fn drop(&mut self) {
        // SAFETY: QPs using this CQ hold Arcs of it, so none is left.
        let ret = unsafe { sys::ibv_destroy_cq(self.cq) };
        if ret != 0 {
            tracing::error!(error = %Error::from_ret("ibv_destroy_cq", ret), "completion queue not destroyed");
        }
    }
}

pub(crate) struct Cq {
    inner: Arc<CqInner>,
}

const POLL_BATCH: usize = 16;

impl Cq {
    pub(crate) fn new(ctx: &Arc<Context>, cqe: u32) -> Result<Cq> {
        let n = i32::try_from(cqe.max(1)).map_err(|_| Error::InvalidArgument("CQ size"))?;
        // SAFETY: valid context; no completion channel, no context pointer.
        let cq = unsafe { sys::ibv_create_cq(ctx.ctx, n, ptr::null_mut(), ptr::null_mut(), 0) };
        if cq.is_null() {
            return Err(Error::last_os("ibv_create_cq"));
        }
        Ok(Cq {
            inner: Arc::new(CqInner {
                cq,
                ctx: ctx.clone(),
            }),
        })
    }

    #[inline]
    pub(crate) fn poll(&mut self, out: &mut [Completion]) -> usize {
        let mut done = 0;
        while done < out.len() {
            let want = (out.len() - done).min(POLL_BATCH);
            let mut wc: [MaybeUninit<sys::ibv_wc>; POLL_BATCH] =
                [const { MaybeUninit::uninit() }; POLL_BATCH];
            // SAFETY: valid CQ; `wc` has room for `want` entries.
            let n = unsafe { sys::ibv_poll_cq(self.inner.cq, want as i32, wc.as_mut_ptr().cast()) };
            if n <= 0 {
                if n < 0 {
                    tracing::error!(ret = n, "ibv_poll_cq failed");
                }
                break;
            }
            for (slot, w) in out[done..].iter_mut().zip(&wc[..n as usize]) {
                // SAFETY: the first `n` entries were written by ibv_poll_cq.
                let w = unsafe { w.assume_init_ref() };
                let imm = if w.wc_flags & sys::ibv_wc_flags::IBV_WC_WITH_IMM.0 != 0 {
                    // SAFETY: with IBV_WC_WITH_IMM the union holds imm_data.
                    Some(u32::from_be(unsafe {
                        w.imm_data_invalidated_rkey_union.imm_data
                    }))
                } else {
                    None
                };
                *slot = Completion {
                    wr_id: w.wr_id,
                    status: WcStatus::from_raw(w.status),
                    opcode: WcOpcode::from_raw(w.opcode),
                    byte_len: w.byte_len,
                    imm,
                    qp_num: w.qp_num,
                    vendor_err: w.vendor_err,
                };
            }
            done += n as usize;
            if (n as usize) < want {
                break;
            }
        }
        done
    }
}

// ---------------------------------------------------------------------------

/// A QP created with `rdma_create_qp` on a CM id; only the id holds it.
struct Qp {
    qp: *mut sys::ibv_qp,
    id: *mut sys::rdma_cm_id,
    caps: QpCaps,
    _pd: Arc<Pd>,
    _send_cq: Arc<CqInner>,
    _recv_cq: Arc<CqInner>,
}

impl Drop for Qp {
    fn drop(&mut self) {
        // SAFETY: `id` is alive (the CmId drops its QP before destroying the
        // id) and `id->qp` is this QP; destroyed once. The CQs and PD are
        // still alive (fields are dropped after this).
        unsafe { sys::rdma_destroy_qp(self.id) };
    }
}

// ---------------------------------------------------------------------------

pub(crate) struct ChannelInner {
    ch: *mut sys::rdma_event_channel,
}

// SAFETY: the channel is an fd plus a heap struct; librdmacm calls on it are
// thread-safe; destroyed once when the last Arc (channel or id) goes.
unsafe impl Send for ChannelInner {}
// SAFETY: as above.
unsafe impl Sync for ChannelInner {}

impl Drop for ChannelInner {
    fn drop(&mut self) {
        // SAFETY: every id of this channel holds an Arc of it, so none is left.
        unsafe { sys::rdma_destroy_event_channel(self.ch) };
    }
}

pub(crate) struct Channel {
    inner: Arc<ChannelInner>,
}

fn sockaddr_of(addr: SocketAddr) -> libc::sockaddr_storage {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo().to_be(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
        }
    }
    ss
}

impl Channel {
    pub(crate) fn new() -> Result<Channel> {
        // SAFETY: plain constructor.
        let ch = unsafe { sys::rdma_create_event_channel() };
        if ch.is_null() {
            let e = errno();
            return Err(Error::verb("rdma_create_event_channel", e));
        }
        let inner = Arc::new(ChannelInner { ch });
        // SAFETY: `ch` is valid; its fd is open.
        let fd = unsafe { (*ch).fd };
        // SAFETY: fcntl on an fd we own.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(Error::last_os("fcntl(O_NONBLOCK)"));
        }
        Ok(Channel { inner })
    }

    pub(crate) fn fd(&self) -> i32 {
        // SAFETY: the channel is valid while `self` is.
        unsafe { (*self.inner.ch).fd }
    }

    fn new_id(&self) -> Result<CmId> {
        let token = next_token();
        let mut id: *mut sys::rdma_cm_id = ptr::null_mut();
        // SAFETY: valid channel and out pointer; the context is the token.
        let ret = unsafe {
            sys::rdma_create_id(
                self.inner.ch,
                &mut id,
                token.0 as *mut libc::c_void,
                sys::rdma_port_space::RDMA_PS_TCP,
            )
        };
        if ret != 0 {
            return Err(Error::from_ret("rdma_create_id", ret));
        }
        Ok(CmId::wrap(id, self.inner.clone(), token))
    }

    pub(crate) fn create_id(&self) -> Result<CmId> {
        self.new_id()
    }

    pub(crate) fn listen(&self, addr: SocketAddr, backlog: i32) -> Result<CmId> {
        let id = self.new_id()?;
        let mut ss = sockaddr_of(addr);
        // SAFETY: valid id; `ss` holds a sockaddr of the right family.
        let ret =
            unsafe { sys::rdma_bind_addr(id.id, (&mut ss as *mut libc::sockaddr_storage).cast()) };
        if ret != 0 {
            return Err(Error::from_ret("rdma_bind_addr", ret));
        }
        // SAFETY: valid bound id.
        let ret = unsafe { sys::rdma_listen(id.id, backlog) };
        if ret != 0 {
            return Err(Error::from_ret("rdma_listen", ret));
        }
        tracing::info!(%addr, "rdma_cm listening");
        Ok(id)
    }

    pub(crate) fn poll_event(&mut self) -> Result<Option<CmEvent>> {
        let mut ev: *mut sys::rdma_cm_event = ptr::null_mut();
        // SAFETY: valid channel (non-blocking) and out pointer.
        let ret = unsafe { sys::rdma_get_cm_event(self.inner.ch, &mut ev) };
        if ret != 0 {
            let e = errno();
            if e == libc::EAGAIN || e == libc::EWOULDBLOCK {
                return Ok(None);
            }
            return Err(Error::verb("rdma_get_cm_event", e));
        }
        // SAFETY: `ev` is a valid event until acked below; its ids are valid
        // until then too (rdma_destroy_id waits for acks of its events).
        let out = unsafe { self.translate(ev) };
        // SAFETY: `ev` came from rdma_get_cm_event and is acked once; nothing
        // borrowed from it survives (private data was copied).
        unsafe { sys::rdma_ack_cm_event(ev) };
        Ok(Some(out))
    }

    /// # Safety
    /// `ev` must be a valid, not yet acked event of this channel.
    unsafe fn translate(&self, ev: *mut sys::rdma_cm_event) -> CmEvent {
        use sys::rdma_cm_event_type as t;
        // SAFETY: valid event (caller).
        let e = unsafe { &*ev };
        let pdata = |pad: usize| {
            // SAFETY: for connection events `param.conn` is the active member;
            // the pointer is valid for `private_data_len` bytes until the ack.
            let (p, n) = unsafe { (e.param.conn.private_data, e.param.conn.private_data_len) };
            let bytes: &[u8] = if p.is_null() || n == 0 {
                &[]
            } else {
                // SAFETY: as above.
                unsafe { std::slice::from_raw_parts(p.cast::<u8>(), n as usize) }
            };
            PrivateData::padded(bytes, pad.min(n as usize))
        };
        // SAFETY: `e.id` is valid until the ack; its context is our token.
        let token = |id: *mut sys::rdma_cm_id| CmToken(unsafe { (*id).context } as u64);
        let status = e.status;
        let kind = match e.event {
            t::RDMA_CM_EVENT_ADDR_RESOLVED => CmEventKind::AddrResolved,
            t::RDMA_CM_EVENT_ADDR_ERROR => CmEventKind::AddrError { status },
            t::RDMA_CM_EVENT_ROUTE_RESOLVED => CmEventKind::RouteResolved,
            t::RDMA_CM_EVENT_ROUTE_ERROR => CmEventKind::RouteError { status },
            t::RDMA_CM_EVENT_CONNECT_REQUEST => {
                let new_token = next_token();
                // SAFETY: the new id is ours from now on (destroyed by the
                // CmId's Drop); setting its context before anyone else sees it.
                unsafe { (*e.id).context = new_token.0 as *mut libc::c_void };
                let mut id = CmId::wrap(e.id, self.inner.clone(), new_token);
                // SAFETY: `param.conn` is the active member for CONNECT_REQUEST.
                let (rr, depth) = unsafe {
                    (
                        e.param.conn.responder_resources,
                        e.param.conn.initiator_depth,
                    )
                };
                id.req = Some((rr, depth));
                let private_data = pdata(MAX_CONNECT_PRIVATE_DATA);
                return CmEvent {
                    token: token(e.listen_id),
                    kind: CmEventKind::ConnectRequest {
                        id: crate::CmId {
                            inner: crate::CmIdImpl::Verbs(id),
                        },
                        private_data,
                    },
                };
            }
            t::RDMA_CM_EVENT_ESTABLISHED => CmEventKind::Established {
                private_data: pdata(MAX_ACCEPT_PRIVATE_DATA),
            },
            t::RDMA_CM_EVENT_REJECTED => CmEventKind::Rejected {
                reason: status,
                private_data: pdata(MAX_REJECT_PRIVATE_DATA),
            },
            t::RDMA_CM_EVENT_UNREACHABLE => CmEventKind::Unreachable { status },
            t::RDMA_CM_EVENT_CONNECT_ERROR => CmEventKind::ConnectError { status },
            t::RDMA_CM_EVENT_DISCONNECTED => CmEventKind::Disconnected,
            t::RDMA_CM_EVENT_TIMEWAIT_EXIT => CmEventKind::TimewaitExit,
            t::RDMA_CM_EVENT_DEVICE_REMOVAL => CmEventKind::DeviceRemoval,
            t::RDMA_CM_EVENT_ADDR_CHANGE => CmEventKind::AddrChange,
            other => CmEventKind::Other {
                event: other,
                status,
            },
        };
        CmEvent {
            token: token(e.id),
            kind,
        }
    }
}

// ---------------------------------------------------------------------------

pub(crate) struct CmId {
    id: *mut sys::rdma_cm_id,
    token: CmToken,
    qp: Option<Qp>,
    /// (responder_resources, initiator_depth) of a received connect request.
    req: Option<(u8, u8)>,
    disconnected: bool,
    // Dropped after the id is destroyed (see Drop).
    _chan: Arc<ChannelInner>,
}

// SAFETY: a CM id and its QP may be used from any thread, one at a time
// (`&mut` for every mutation); librdmacm calls are thread-safe.
unsafe impl Send for CmId {}

impl CmId {
    fn wrap(id: *mut sys::rdma_cm_id, chan: Arc<ChannelInner>, token: CmToken) -> CmId {
        CmId {
            id,
            token,
            qp: None,
            req: None,
            disconnected: false,
            _chan: chan,
        }
    }

    pub(crate) fn token(&self) -> CmToken {
        self.token
    }

    fn verbs(&self) -> *mut sys::ibv_context {
        // SAFETY: `id` is valid until Drop.
        unsafe { (*self.id).verbs }
    }

    pub(crate) fn device_name(&self) -> Option<String> {
        let v = self.verbs();
        (!v.is_null()).then(|| ctx_name(v))
    }

    pub(crate) fn resolve_addr(
        &mut self,
        src: Option<SocketAddr>,
        dst: SocketAddr,
        ms: i32,
    ) -> Result<()> {
        let mut d = sockaddr_of(dst);
        let mut s = src.map(sockaddr_of);
        let sp = s.as_mut().map_or(ptr::null_mut(), |s| {
            (s as *mut libc::sockaddr_storage).cast()
        });
        // SAFETY: valid id; the sockaddrs live across the call (copied by it).
        let ret = unsafe {
            sys::rdma_resolve_addr(
                self.id,
                sp,
                (&mut d as *mut libc::sockaddr_storage).cast(),
                ms,
            )
        };
        if ret != 0 {
            return Err(Error::from_ret("rdma_resolve_addr", ret));
        }
        Ok(())
    }

    pub(crate) fn resolve_route(&mut self, ms: i32) -> Result<()> {
        // SAFETY: valid id.
        let ret = unsafe { sys::rdma_resolve_route(self.id, ms) };
        if ret != 0 {
            return Err(Error::from_ret("rdma_resolve_route", ret));
        }
        Ok(())
    }

    pub(crate) fn set_ack_timeout(&mut self, t: u8) -> Result<()> {
        let mut v = t;
        // SAFETY: valid id; option RDMA_OPTION_ID(0)/RDMA_OPTION_ID_ACK_TIMEOUT(3) takes a u8.
        let ret = unsafe { sys::rdma_set_option(self.id, 0, 3, (&mut v as *mut u8).cast(), 1) };
        if ret != 0 {
            return Err(Error::from_ret("rdma_set_option(ACK_TIMEOUT)", ret));
        }
        Ok(())
    }

    pub(crate) fn create_qp(
        &mut self,
        pd: &Arc<Pd>,
        scq: &Cq,
        rcq: &Cq,
        caps: QpCaps,
    ) -> Result<QpCaps> {
        if self.qp.is_some() {
            return Err(Error::InvalidState("the CM id already has a QP"));
        }
        let v = self.verbs();
        if v.is_null() {
            return Err(Error::InvalidState(
                "create_qp before the id is bound to a device",
            ));
        }
        if pd.ctx.ctx != v || scq.inner.ctx.ctx != v || rcq.inner.ctx.ctx != v {
            return Err(Error::WrongDevice(
                "PD or CQ of another device than the CM id",
            ));
        }
        // SAFETY: all-zero is a valid ibv_qp_init_attr (null pointers, zero caps).
        let mut attr: sys::ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        attr.send_cq = scq.inner.cq;
        attr.recv_cq = rcq.inner.cq;
        attr.cap = sys::ibv_qp_cap {
            max_send_wr: caps.max_send_wr,
            max_recv_wr: caps.max_recv_wr,
            max_send_sge: caps.max_send_sge,
            max_recv_sge: caps.max_recv_sge,
            max_inline_data: caps.max_inline_data,
        };
        attr.qp_type = sys::ibv_qp_type::IBV_QPT_RC;
        attr.sq_sig_all = 0;
        // SAFETY: valid id, PD and CQs of the id's device; `attr` is read and updated.
        let ret = unsafe { sys::rdma_create_qp(self.id, pd.pd, &mut attr) };
        if ret != 0 {
            return Err(Error::from_ret("rdma_create_qp", ret));
        }
        let got = QpCaps {
            max_send_wr: attr.cap.max_send_wr,
            max_recv_wr: attr.cap.max_recv_wr,
            max_send_sge: attr.cap.max_send_sge,
            max_recv_sge: attr.cap.max_recv_sge,
            max_inline_data: attr.cap.max_inline_data,
        };
        self.qp = Some(Qp {
            // SAFETY: rdma_create_qp succeeded, so `id->qp` is the new QP.
            qp: unsafe { (*self.id).qp },
            id: self.id,
            caps: got,
            _pd: pd.clone(),
            _send_cq: scq.inner.clone(),
            _recv_cq: rcq.inner.clone(),
        });
        Ok(got)
    }

    pub(crate) fn qp_num(&self) -> Option<u32> {
        // SAFETY: the QP is valid while held.
        self.qp.as_ref().map(|q| unsafe { (*q.qp).qp_num })
    }

    fn device_rd_atoms(&self) -> (u8, u8) {
        let v = self.verbs();
        let mut a = MaybeUninit::<sys::ibv_device_attr>::zeroed();
        // SAFETY: valid context (the id is bound) and out pointer.
        if v.is_null() || unsafe { sys::ibv_query_device(v, a.as_mut_ptr()) } != 0 {
            return (1, 1);
        }
        // SAFETY: filled by the call.
        let a = unsafe { a.assume_init() };
        (
            a.max_qp_rd_atom.clamp(0, 255) as u8,
            a.max_qp_init_rd_atom.clamp(0, 255) as u8,
        )
    }

    pub(crate) fn connect(&mut self, pdata: &[u8], opts: &ConnectOptions) -> Result<()> {
        if self.qp.is_none() {
            return Err(Error::InvalidState("connect without a QP"));
        }
        let (rd, init) = self.device_rd_atoms();
        // SAFETY: all-zero is a valid rdma_conn_param.
        let mut p: sys::rdma_conn_param = unsafe { std::mem::zeroed() };
        p.private_data = pdata.as_ptr().cast();
        p.private_data_len = pdata.len() as u8;
        p.responder_resources = opts.responder_resources.min(rd);
        p.initiator_depth = opts.initiator_depth.min(init);
        p.retry_count = opts.retry_count.min(7);
        p.rnr_retry_count = opts.rnr_retry_count.min(7);
        p.flow_control = 1;
        // SAFETY: valid id with a QP; `p` and its private data live across the call (copied).
        let ret = unsafe { sys::rdma_connect(self.id, &mut p) };
        if ret != 0 {
            return Err(Error::from_ret("rdma_connect", ret));
        }
        Ok(())
    }

    pub(crate) fn accept(&mut self, pdata: &[u8]) -> Result<()> {
        if self.qp.is_none() {
            return Err(Error::InvalidState("accept without a QP"));
        }
        let Some((peer_rr, peer_depth)) = self.req else {
            return Err(Error::InvalidState(
                "accept on an id that is not a connect request",
            ));
        };
        let (rd, init) = self.device_rd_atoms();
        // SAFETY: all-zero is a valid rdma_conn_param.
        let mut p: sys::rdma_conn_param = unsafe { std::mem::zeroed() };
        p.private_data = pdata.as_ptr().cast();
        p.private_data_len = pdata.len() as u8;
        // The CM reports a connect request's parameters from the
        // acceptor's side already (the kernel's cm_format_req_event sets
        // `responder_resources` from the REQ's initiator depth): use them
        // as they are. Swapping them gave ib_srp's connection (rr 4,
        // depth 0) max_rd_atomic 0 here, and RDMA READs never ran.
        p.responder_resources = peer_rr.min(rd);
        p.initiator_depth = peer_depth.min(init);
        p.retry_count = 7;
        p.rnr_retry_count = 7;
        p.flow_control = 1;
        // SAFETY: valid connect-request id with a QP; `p` lives across the call.
        let ret = unsafe { sys::rdma_accept(self.id, &mut p) };
        if ret != 0 {
            return Err(Error::from_ret("rdma_accept", ret));
        }
        self.req = None;
        Ok(())
    }

    pub(crate) fn reject(&mut self, pdata: &[u8]) -> Result<()> {
        if self.req.is_none() {
            return Err(Error::InvalidState(
                "reject on an id that is not a connect request",
            ));
        }
        // SAFETY: valid connect-request id; the data is copied by the call.
        let ret = unsafe { sys::rdma_reject(self.id, pdata.as_ptr().cast(), pdata.len() as u8) };
        if ret != 0 {
            return Err(Error::from_ret("rdma_reject", ret));
        }
        self.req = None;
        Ok(())
    }

    pub(crate) fn disconnect(&mut self) -> Result<()> {
        if self.disconnected {
            return Ok(());
        }
        // SAFETY: valid id.
        let ret = unsafe { sys::rdma_disconnect(self.id) };
        if ret != 0 {
            let e = Error::from_ret("rdma_disconnect", ret);
            // Already disconnected by the peer: the QP is moved to error anyway.
            if e.errno() != Some(libc::EINVAL) {
                return Err(e);
            }
        }
        self.disconnected = true;
        tracing::debug!(token = self.token.0, "rdma_cm disconnect");
        Ok(())
    }

    #[inline]
    pub(crate) unsafe fn post_send(&mut self, wr: &SendWr<'_>) -> Result<()> {
        let Some(qp) = self.qp.as_ref() else {
            return Err(Error::InvalidState("post_send without a QP"));
        };
        if wr.sges.len() > qp.caps.max_send_sge as usize {
            return Err(Error::verb("ibv_post_send", libc::EINVAL));
        }
        // SAFETY: all-zero is a valid ibv_send_wr (null next, zero unions).
        let mut w: sys::ibv_send_wr = unsafe { std::mem::zeroed() };
        w.wr_id = wr.wr_id;
        // `Sge` is #[repr(C)] with the layout of `ibv_sge`; the device only reads the list.
        w.sg_list = wr.sges.as_ptr() as *mut sys::ibv_sge;
        w.num_sge = wr.sges.len() as i32;
        w.send_flags = if wr.signaled {
            sys::ibv_send_flags::IBV_SEND_SIGNALED.0
        } else {
            0
        };
        use sys::ibv_wr_opcode as op;
        match wr.op {
            SendOp::Send => w.opcode = op::IBV_WR_SEND,
            SendOp::SendWithImm(imm) => {
                w.opcode = op::IBV_WR_SEND_WITH_IMM;
                w.imm_data_invalidated_rkey_union.imm_data = imm.to_be();
            }
            SendOp::RdmaWrite { remote_addr, rkey } => {
                w.opcode = op::IBV_WR_RDMA_WRITE;
                w.wr.rdma = sys::rdma_t { remote_addr, rkey };
            }
            SendOp::RdmaRead { remote_addr, rkey } => {
                w.opcode = op::IBV_WR_RDMA_READ;
                w.wr.rdma = sys::rdma_t { remote_addr, rkey };
            }
        }
        let mut bad: *mut sys::ibv_send_wr = ptr::null_mut();
        // SAFETY: valid QP; `w` and the SGE list live across the call (the
        // provider copies them into the send queue); the buffers' lifetime
        // is the caller's contract.
        let ret = unsafe { sys::ibv_post_send(qp.qp, &mut w, &mut bad) };
        if ret != 0 {
            return Err(Error::from_ret("ibv_post_send", ret));
        }
        Ok(())
    }

    #[inline]
    pub(crate) unsafe fn post_recv(&mut self, wr_id: u64, sges: &[Sge]) -> Result<()> {
        let Some(qp) = self.qp.as_ref() else {
            return Err(Error::InvalidState("post_recv without a QP"));
        };
        if sges.len() > qp.caps.max_recv_sge as usize {
            return Err(Error::verb("ibv_post_recv", libc::EINVAL));
        }
        let mut w = sys::ibv_recv_wr {
            wr_id,
            next: ptr::null_mut(),
            sg_list: sges.as_ptr() as *mut sys::ibv_sge,
            num_sge: sges.len() as i32,
        };
        let mut bad: *mut sys::ibv_recv_wr = ptr::null_mut();
        // SAFETY: valid QP; `w` and the SGE list live across the call; buffer
        // lifetime is the caller's contract.
        let ret = unsafe { sys::ibv_post_recv(qp.qp, &mut w, &mut bad) };
        if ret != 0 {
            return Err(Error::from_ret("ibv_post_recv", ret));
        }
        Ok(())
    }
}

impl Drop for CmId {
    fn drop(&mut self) {
        // QP first (rdma_destroy_qp needs the id), then the id.
        drop(self.qp.take());
        // SAFETY: created by rdma_create_id or handed over by a connect
        // request, destroyed once; its channel is still alive (`_chan`).
        // Events are acked as soon as they are read, so this cannot block on
        // unacked events.
        let ret = unsafe { sys::rdma_destroy_id(self.id) };
        if ret != 0 {
            tracing::error!(error = %Error::from_ret("rdma_destroy_id", ret), "CM id not destroyed");
        }
    }
}

const _: () = {
    assert!(std::mem::size_of::<Sge>() == std::mem::size_of::<sys::ibv_sge>());
    assert!(std::mem::align_of::<Sge>() == std::mem::align_of::<sys::ibv_sge>());
};
