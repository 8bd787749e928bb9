//! # rdma — one safe layer over RDMA verbs and rdma_cm, with two providers
//!
//! This crate holds all of strata's RDMA FFI. It exposes devices, protection
//! domains, memory regions, completion queues, RC queue pairs and rdma_cm
//! connection management, implemented by two **providers** chosen at run time
//! ([`Provider`]):
//!
//! - [`Provider::Verbs`]: rdma-core's libibverbs and librdmacm through
//!   `rdma-sys` (real HCAs, Soft-RoCE `rxe`, `siw`). The product.
//! - [`Provider::Loopback`]: an in-process fabric with the same interface and
//!   semantics (RC ordering, RNR, key/bounds/access checks, flushes, private
//!   data) plus fault injection ([`Faults`]). For fast deterministic tests.
//!
//! ## Dispatch: concrete enum types
//!
//! Every object ([`Context`], [`Pd`], [`Mr`], [`Cq`], [`CmChannel`],
//! [`CmId`]) is one concrete type wrapping an enum with one variant per
//! provider. Consumers (the SRP target and initiator) are written once, with
//! no generic parameters, and the provider is picked by configuration when the
//! first [`Context`] is opened. The hot path ([`CmId::post_send`],
//! [`CmId::post_recv`], [`Cq::poll`]) is one `match` on the variant followed by
//! a direct (inlinable) call; it never allocates or boxes per work request.
//! Mixing providers (a loopback PD with a verbs CM id) is refused with
//! [`Error::WrongDevice`].
//!
//! ## Example: a provider-agnostic passive side
//!
//! ```no_run
//! use rdma::{CmChannel, CmEventKind, Completion, Context, Cq, MrBuf, Pd, Provider, QpCaps};
//!
//! fn serve(provider: Provider, dev: &str, addr: std::net::SocketAddr) -> rdma::Result<()> {
//!     let ctx = Context::open(provider, dev)?; // "rxe0" on verbs
//!     let (pd, mut cq) = (Pd::new(&ctx)?, Cq::new(&ctx, 256)?);
//!     let mut chan = CmChannel::new(provider)?;
//!     let _listener = chan.listen(addr, 16)?;
//!     let buf = MrBuf::new(&pd, 4096)?;
//!     let mut conns = Vec::new();
//!     let mut wc = [Completion::EMPTY; 16];
//!     loop {
//!         if let Some(ev) = chan.poll_event()? {
//!             if let CmEventKind::ConnectRequest { mut id, private_data } = ev.kind {
//!                 id.create_qp(&pd, &cq, &cq, QpCaps::default())?;
//!                 // SAFETY: `buf` outlives the QP (dropped after `conns`).
//!                 unsafe { id.post_recv(1, &[buf.sge(0, 4096)?])? };
//!                 id.accept(&private_data.as_bytes()[..8])?;
//!                 conns.push(id);
//!             }
//!         }
//!         let n = cq.poll(&mut wc);
//!         for c in &wc[..n] {
//!             println!("{:?} {} bytes", c.status, c.byte_len);
//!         }
//!     }
//! }
//! ```
//!
//! ## Ownership
//!
//! As in the `ibverbs` crate, children hold an `Arc` of their parents:
//! [`Context`] ← [`Pd`] ← [`Mr`]; a queue pair holds its [`Pd`] and both CQs;
//! a [`CmId`] owns its queue pair (created by [`CmId::create_qp`] and destroyed
//! before the id) and keeps its [`CmChannel`] alive. Any drop order of the
//! handles is therefore sound: the verbs objects are destroyed children first.
//! The QP is reachable only through its [`CmId`], so it cannot be moved away
//! from the id it belongs to.
//!
//! ## Posting is `unsafe`
//!
//! Work requests carry raw addresses ([`Sge`]); the device reads and writes
//! them after the call returns. [`CmId::post_send`] and [`CmId::post_recv`] are
//! therefore `unsafe fn`s whose contract is that the buffers stay allocated,
//! registered and unaliased until the work request's completion is polled (or
//! the QP is destroyed).
//!
//! ## Connection management
//!
//! A [`CmChannel`] is non-blocking: a reactor poller calls
//! [`CmChannel::poll_event`] and routes each [`CmEvent`] by its
//! [`CmEvent::token`] (the [`CmId::token`] of the id it concerns). The active
//! side runs `create_id` → `resolve_addr` → *AddrResolved* → `resolve_route`
//! → *RouteResolved* → `create_qp` → `connect(private data)` → *Established*
//! (with the peer's accept private data) | *Rejected* (reason and private
//! data) | *Unreachable* | *ConnectError*. The passive side `listen`s, gets
//! *ConnectRequest* carrying a new [`CmId`] and the peer's private data,
//! creates a QP on it and `accept`s or `reject`s with private data.
//!
//! Time-outs: `resolve_addr`/`resolve_route` take the caller's time-out and
//! end in *AddrError*/*RouteError*. A connect to a port nobody listens on is
//! answered at once by the remote CM with *Rejected* ([`REJECT_NO_LISTENER`],
//! reason 8); a connect to a host that does not answer at all ends in
//! *Unreachable* after the kernel CM's retries (about 4 s × 15 on Linux), so
//! consumers keep their own, shorter, timer and drop the id. On loopback every
//! answer is immediate.
//!
//! After *Disconnected*, call [`CmId::disconnect`] (idempotent) to move the
//! local QP to the error state: its posted work then completes with
//! [`WcStatus::WrFlush`].

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod error;
mod types;

pub mod conformance;
pub mod loopback;
mod verbs;

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use error::{Error, Result};
pub use loopback::Faults;
pub use types::*;

/// Which implementation backs the objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Provider {
    /// rdma-core verbs and rdma_cm.
    Verbs,
    /// The in-process loopback fabric.
    Loopback,
}

impl Provider {
    /// `"verbs"` or `"loopback"`.
    pub fn name(self) -> &'static str {
        match self {
            Provider::Verbs => "verbs",
            Provider::Loopback => "loopback",
        }
    }
}

impl FromStr for Provider {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "verbs" => Ok(Provider::Verbs),
            "loopback" => Ok(Provider::Loopback),
            _ => Err(Error::InvalidArgument(
                "provider must be \"verbs\" or \"loopback\"",
            )),
        }
    }
}

/// Names of the devices a provider offers.
pub fn devices(provider: Provider) -> Result<Vec<String>> {
    match provider {
        Provider::Verbs => verbs::device_names(),
        Provider::Loopback => Ok(vec![loopback::DEVICE_NAME.to_string()]),
    }
}

/// A fresh process-unique token for a CM id.
pub(crate) fn next_token() -> CmToken {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    CmToken(NEXT.fetch_add(1, Ordering::Relaxed))
}

// ---------------------------------------------------------------------------
// Device context
// ---------------------------------------------------------------------------

/// An open RDMA device. Cheap to clone (shared).
#[derive(Clone)]
pub struct Context {
    inner: CtxImpl,
}

#[derive(Clone)]
enum CtxImpl {
    Verbs(Arc<verbs::Context>),
    Loopback(Arc<loopback::Device>),
}

impl Context {
    /// Opens device `name` of `provider` (e.g. `rxe0`; any name on loopback).
    pub fn open(provider: Provider, name: &str) -> Result<Context> {
        let inner = match provider {
            Provider::Verbs => CtxImpl::Verbs(verbs::Context::open(name)?),
            Provider::Loopback => CtxImpl::Loopback(loopback::Device::open(name)),
        };
        Ok(Context { inner })
    }
    /// The provider behind this device.
    pub fn provider(&self) -> Provider {
        match &self.inner {
            CtxImpl::Verbs(_) => Provider::Verbs,
            CtxImpl::Loopback(_) => Provider::Loopback,
        }
    }
    /// The device name.
    pub fn name(&self) -> &str {
        match &self.inner {
            CtxImpl::Verbs(c) => c.name(),
            CtxImpl::Loopback(d) => d.name(),
        }
    }
    /// Device attributes (`ibv_query_device`).
    pub fn query_device(&self) -> Result<DeviceAttr> {
        match &self.inner {
            CtxImpl::Verbs(c) => c.query_device(),
            CtxImpl::Loopback(d) => Ok(d.query_device()),
        }
    }
    /// Attributes of port `port` (1-based, `ibv_query_port`).
    pub fn query_port(&self, port: u8) -> Result<PortAttr> {
        match &self.inner {
            CtxImpl::Verbs(c) => c.query_port(port),
            CtxImpl::Loopback(d) => d.query_port(port),
        }
    }
    /// GID `index` of port `port` (`ibv_query_gid`). On rxe index 1 is the
    /// IPv4-mapped GID of the netdev's address.
    pub fn query_gid(&self, port: u8, index: u32) -> Result<Gid> {
        match &self.inner {
            CtxImpl::Verbs(c) => c.query_gid(port, index),
            CtxImpl::Loopback(d) => d.query_gid(port, index),
        }
    }
}

// ---------------------------------------------------------------------------
// Protection domain and memory regions
// ---------------------------------------------------------------------------

/// A protection domain. Cheap to clone (shared); keeps its [`Context`] alive.
#[derive(Clone)]
pub struct Pd {
    inner: PdImpl,
}

#[derive(Clone)]
enum PdImpl {
    Verbs(Arc<verbs::Pd>),
    Loopback(Arc<loopback::Pd>),
}

impl Pd {
    /// Allocates a protection domain (`ibv_alloc_pd`).
    pub fn new(ctx: &Context) -> Result<Pd> {
        let inner = match &ctx.inner {
            CtxImpl::Verbs(c) => PdImpl::Verbs(verbs::Pd::new(c)?),
            CtxImpl::Loopback(d) => PdImpl::Loopback(loopback::Pd::new(d)),
        };
        Ok(Pd { inner })
    }
    /// The provider behind this PD.
    pub fn provider(&self) -> Provider {
        match &self.inner {
            PdImpl::Verbs(_) => Provider::Verbs,
            PdImpl::Loopback(_) => Provider::Loopback,
        }
    }
}

/// A registered memory region over caller-owned memory. Deregistered on drop;
/// keeps its [`Pd`] alive.
pub struct Mr {
    inner: MrImpl,
    addr: u64,
    len: usize,
    access: AccessFlags,
}

impl std::fmt::Debug for Mr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mr")
            .field("addr", &format_args!("{:#x}", self.addr))
            .field("len", &self.len)
            .field("lkey", &format_args!("{:#x}", self.lkey()))
            .field("rkey", &format_args!("{:#x}", self.rkey()))
            .field("access", &self.access)
            .finish()
    }
}

enum MrImpl {
    Verbs(verbs::Mr),
    Loopback(loopback::Mr),
}

impl Mr {
    /// Registers `len` bytes at `addr` (`ibv_reg_mr`).
    ///
    /// `REMOTE_WRITE` requires `LOCAL_WRITE` (as in verbs). Zero-length
    /// regions are refused.
    ///
    /// # Safety
    ///
    /// `addr..addr+len` must be memory of this process that stays allocated
    /// (and mapped) until the returned `Mr` is dropped. While the region is
    /// registered, the device (for `LOCAL_WRITE`: on completions of posted
    /// work; for `REMOTE_WRITE`: at any time a peer chooses) may write to it
    /// and (for `REMOTE_READ`: at any time) read it: the caller must not hold
    /// Rust references to bytes that a peer may access concurrently.
    pub unsafe fn register_raw(
        pd: &Pd,
        addr: *mut u8,
        len: usize,
        access: AccessFlags,
    ) -> Result<Mr> {
        if len == 0 {
            return Err(Error::InvalidArgument("memory region of zero bytes"));
        }
        let inner = match &pd.inner {
            PdImpl::Verbs(p) => {
                // SAFETY: the caller upholds the contract above, which is `register`'s.
                let mr = unsafe { verbs::Mr::register(p, addr, len, access) }?;
                MrImpl::Verbs(mr)
            }
            PdImpl::Loopback(p) => {
                // SAFETY: as above.
                let mr = unsafe { loopback::Mr::register(p, addr, len, access) }?;
                MrImpl::Loopback(mr)
            }
        };
        Ok(Mr {
            inner,
            addr: addr as u64,
            len,
            access,
        })
    }
    /// Local key, for [`Sge::lkey`].
    pub fn lkey(&self) -> u32 {
        match &self.inner {
            MrImpl::Verbs(m) => m.lkey(),
            MrImpl::Loopback(m) => m.key(),
        }
    }
    /// Remote key, for a peer's RDMA READ/WRITE.
    pub fn rkey(&self) -> u32 {
        match &self.inner {
            MrImpl::Verbs(m) => m.rkey(),
            MrImpl::Loopback(m) => m.key(),
        }
    }
    /// First byte's address.
    pub fn addr(&self) -> u64 {
        self.addr
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Always false (zero-length regions are refused).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The access rights it was registered with.
    pub fn access(&self) -> AccessFlags {
        self.access
    }
    /// An SGE over `len` bytes at `offset` in the region, bounds-checked.
    pub fn sge(&self, offset: usize, len: u32) -> Result<Sge> {
        match offset.checked_add(len as usize) {
            Some(end) if end <= self.len => Ok(Sge {
                addr: self.addr + offset as u64,
                len,
                lkey: self.lkey(),
            }),
            _ => Err(Error::InvalidArgument("SGE outside the memory region")),
        }
    }
}

/// A page-aligned, zeroed buffer owned by this crate and registered as a
/// memory region: the safe way to get registered memory. Dropping it
/// deregisters, then frees.
pub struct MrBuf {
    // Field order is drop order: deregister before freeing the memory.
    mr: Mr,
    buf: AlignedBuf,
}

impl std::fmt::Debug for MrBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("MrBuf").field(&self.mr).finish()
    }
}

impl MrBuf {
    /// Allocates and registers `len` bytes with `LOCAL_WRITE` only: a buffer
    /// for SENDs, RECVs and the local side of RDMA READ/WRITE.
    pub fn new(pd: &Pd, len: usize) -> Result<MrBuf> {
        // SAFETY: LOCAL_WRITE only: the device writes the buffer only on work
        // this process posts, under `post_*`'s own unsafe contract.
        unsafe { Self::with_access(pd, len, AccessFlags::LOCAL_WRITE) }
    }

    /// Allocates and registers `len` bytes with `access`.
    ///
    /// # Safety
    ///
    /// With `REMOTE_WRITE` or `REMOTE_READ`, a peer that learns the rkey can
    /// access the bytes at any time: the caller must not hold a slice from
    /// [`MrBuf::as_slice`] / [`MrBuf::as_mut_slice`] while a peer may write
    /// (or, for a mutable slice, read) the bytes it covers.
    pub unsafe fn with_access(pd: &Pd, len: usize, access: AccessFlags) -> Result<MrBuf> {
        let buf = AlignedBuf::new(len)?;
        // SAFETY: `buf` is a live allocation of `len` bytes owned by the
        // returned MrBuf, freed only after `mr` is dropped (field order); the
        // remote-access part of the contract is forwarded to our caller.
        let mr = unsafe { Mr::register_raw(pd, buf.ptr, len, access) }?;
        Ok(MrBuf { mr, buf })
    }
    /// The memory region.
    pub fn mr(&self) -> &Mr {
        &self.mr
    }
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for `len` initialized (zeroed) bytes for the
        // life of `self`; concurrent device access is excluded by the post
        // and `with_access` contracts.
        unsafe { std::slice::from_raw_parts(self.buf.ptr, self.buf.len) }
    }
    /// The bytes, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes the slice unique.
        unsafe { std::slice::from_raw_parts_mut(self.buf.ptr, self.buf.len) }
    }
    /// `len` bytes at `offset`, or None if out of bounds; the slice covers
    /// only that range (see [`MrBuf::range_mut`]).
    pub fn range(&self, offset: usize, len: usize) -> Option<&[u8]> {
        let end = offset.checked_add(len)?;
        if end > self.buf.len {
            return None;
        }
        // SAFETY: within the live allocation; the caller's contracts
        // exclude device writes to this range while the slice lives.
        Some(unsafe { std::slice::from_raw_parts(self.buf.ptr.add(offset), len) })
    }
    /// `len` bytes at `offset`, mutable, or None if out of bounds. Unlike
    /// [`MrBuf::as_mut_slice`] the slice covers only that range, so the
    /// rest of the buffer may be in use by the device or a peer.
    pub fn range_mut(&mut self, offset: usize, len: usize) -> Option<&mut [u8]> {
        let end = offset.checked_add(len)?;
        if end > self.buf.len {
            return None;
        }
        // SAFETY: `offset..end` lies within the live allocation; `&mut
        // self` makes the slice unique on our side, and the caller's post
        // and `with_access` contracts exclude device access to this range.
        Some(unsafe { std::slice::from_raw_parts_mut(self.buf.ptr.add(offset), len) })
    }
    /// First byte's address.
    pub fn addr(&self) -> u64 {
        self.buf.ptr as u64
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.buf.len
    }
    /// Always false.
    pub fn is_empty(&self) -> bool {
        self.buf.len == 0
    }
    /// Local key.
    pub fn lkey(&self) -> u32 {
        self.mr.lkey()
    }
    /// Remote key.
    pub fn rkey(&self) -> u32 {
        self.mr.rkey()
    }
    /// An SGE over `len` bytes at `offset`, bounds-checked.
    pub fn sge(&self, offset: usize, len: u32) -> Result<Sge> {
        self.mr.sge(offset, len)
    }
}

// SAFETY: the buffer is a plain heap allocation owned by the MrBuf; moving it
// to another thread moves that ownership.
unsafe impl Send for AlignedBuf {}
// SAFETY: `&AlignedBuf` only allows reads (`MrBuf::as_slice`); writes need
// `&mut`, as for a `Vec<u8>`.
unsafe impl Sync for AlignedBuf {}

struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
}

impl AlignedBuf {
    const ALIGN: usize = 4096;
    fn layout(len: usize) -> Result<std::alloc::Layout> {
        std::alloc::Layout::from_size_align(len.max(1), Self::ALIGN)
            .map_err(|_| Error::InvalidArgument("buffer too large"))
    }
    fn new(len: usize) -> Result<Self> {
        if len == 0 {
            return Err(Error::InvalidArgument("memory region of zero bytes"));
        }
        let layout = Self::layout(len)?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(Error::verb("alloc", libc::ENOMEM));
        }
        Ok(Self { ptr, len })
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if let Ok(layout) = Self::layout(self.len) {
            // SAFETY: allocated in `new` with this very layout.
            unsafe { std::alloc::dealloc(self.ptr, layout) };
        }
    }
}

// ---------------------------------------------------------------------------
// Completion queue
// ---------------------------------------------------------------------------

/// A completion queue, polled (never armed) from a reactor. `Send`, not
/// `Sync`: one core polls it through `&mut`. Queue pairs using it keep it
/// alive.
pub struct Cq {
    inner: CqImpl,
}

enum CqImpl {
    Verbs(verbs::Cq),
    Loopback(loopback::Cq),
}

impl Cq {
    /// Creates a CQ with room for at least `cqe` completions (`ibv_create_cq`).
    pub fn new(ctx: &Context, cqe: u32) -> Result<Cq> {
        let inner = match &ctx.inner {
            CtxImpl::Verbs(c) => CqImpl::Verbs(verbs::Cq::new(c, cqe)?),
            CtxImpl::Loopback(d) => CqImpl::Loopback(loopback::Cq::new(d, cqe)),
        };
        Ok(Cq { inner })
    }
    /// Moves up to `out.len()` completions into `out`; returns how many.
    /// Never blocks, never allocates.
    #[inline]
    pub fn poll(&mut self, out: &mut [Completion]) -> usize {
        match &mut self.inner {
            CqImpl::Verbs(c) => c.poll(out),
            CqImpl::Loopback(c) => c.poll(out),
        }
    }
}

// ---------------------------------------------------------------------------
// rdma_cm
// ---------------------------------------------------------------------------

/// Identifies a [`CmId`] in [`CmEvent`]s. Unique within the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CmToken(pub u64);

/// A non-blocking rdma_cm event channel. CM ids created from it deliver their
/// events here; ids keep the channel's resources alive.
pub struct CmChannel {
    inner: ChanImpl,
}

enum ChanImpl {
    Verbs(verbs::Channel),
    Loopback(loopback::Channel),
}

impl CmChannel {
    /// Creates an event channel (`rdma_create_event_channel`, set O_NONBLOCK).
    pub fn new(provider: Provider) -> Result<CmChannel> {
        let inner = match provider {
            Provider::Verbs => ChanImpl::Verbs(verbs::Channel::new()?),
            Provider::Loopback => ChanImpl::Loopback(loopback::Channel::new()),
        };
        Ok(CmChannel { inner })
    }
    /// The provider behind this channel.
    pub fn provider(&self) -> Provider {
        match &self.inner {
            ChanImpl::Verbs(_) => Provider::Verbs,
            ChanImpl::Loopback(_) => Provider::Loopback,
        }
    }
    /// The next event, if any. Never blocks. Events are acknowledged before
    /// this returns (their private data is copied).
    pub fn poll_event(&mut self) -> Result<Option<CmEvent>> {
        match &mut self.inner {
            ChanImpl::Verbs(c) => c.poll_event(),
            ChanImpl::Loopback(c) => Ok(c.poll_event()),
        }
    }
    /// The file descriptor to wait on with epoll (verbs only).
    pub fn fd(&self) -> Option<i32> {
        match &self.inner {
            ChanImpl::Verbs(c) => Some(c.fd()),
            ChanImpl::Loopback(_) => None,
        }
    }
    /// A new CM id for an active connect (`rdma_create_id`, RDMA_PS_TCP).
    pub fn create_id(&self) -> Result<CmId> {
        let inner = match &self.inner {
            ChanImpl::Verbs(c) => CmIdImpl::Verbs(c.create_id()?),
            ChanImpl::Loopback(c) => CmIdImpl::Loopback(c.create_id()),
        };
        Ok(CmId { inner })
    }
    /// A CM id listening on `addr` (`rdma_bind_addr` + `rdma_listen`). Port 0
    /// is refused; `0.0.0.0` listens on every address.
    pub fn listen(&self, addr: SocketAddr, backlog: i32) -> Result<CmId> {
        if addr.port() == 0 {
            return Err(Error::InvalidArgument("listen port 0"));
        }
        let inner = match &self.inner {
            ChanImpl::Verbs(c) => CmIdImpl::Verbs(c.listen(addr, backlog)?),
            ChanImpl::Loopback(c) => CmIdImpl::Loopback(c.listen(addr)?),
        };
        Ok(CmId { inner })
    }
}

/// A connection manager event.
#[derive(Debug)]
pub struct CmEvent {
    /// The id it concerns; for `ConnectRequest`, the listener's.
    pub token: CmToken,
    /// What happened.
    pub kind: CmEventKind,
}

/// What a [`CmEvent`] reports.
#[derive(Debug)]
pub enum CmEventKind {
    /// `resolve_addr` finished: the id is bound to a device.
    AddrResolved,
    /// `resolve_addr` failed (status: negative errno).
    AddrError {
        /// The event status.
        status: i32,
    },
    /// `resolve_route` finished.
    RouteResolved,
    /// `resolve_route` failed.
    RouteError {
        /// The event status.
        status: i32,
    },
    /// A peer wants to connect to a listener. `id` is the new connection's id:
    /// create a QP on it, then `accept` or `reject` (dropping it rejects).
    ConnectRequest {
        /// The new connection.
        id: CmId,
        /// The peer's connect private data (56 bytes on IB/RoCE, zero-padded).
        private_data: PrivateData,
    },
    /// The connection is up. Active side: the peer's accept private data
    /// (196 bytes on IB/RoCE, zero-padded); passive side: empty.
    Established {
        /// The peer's private data.
        private_data: PrivateData,
    },
    /// The peer (or its CM) rejected the connect.
    Rejected {
        /// [`REJECT_CONSUMER`] for an application reject,
        /// [`REJECT_NO_LISTENER`] when nobody listens, other IB CM reasons.
        reason: i32,
        /// The reject private data (148 bytes on IB/RoCE, zero-padded).
        private_data: PrivateData,
    },
    /// The peer did not answer the connect.
    Unreachable {
        /// The event status.
        status: i32,
    },
    /// Connecting failed (e.g. QP transition error).
    ConnectError {
        /// The event status.
        status: i32,
    },
    /// The connection is down (either side disconnected, or the peer vanished).
    Disconnected,
    /// The id left time-wait; its QP number may be reused.
    TimewaitExit,
    /// The device went away.
    DeviceRemoval,
    /// The bound address changed.
    AddrChange,
    /// Any other rdma_cm event.
    Other {
        /// `enum rdma_cm_event_type` value.
        event: u32,
        /// The event status.
        status: i32,
    },
}

/// An rdma_cm identifier: a listener or one connection, owning its RC queue
/// pair. Dropping it destroys the QP, then the id (which disconnects, or
/// rejects a pending request).
pub struct CmId {
    inner: CmIdImpl,
}

impl std::fmt::Debug for CmId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CmId")
            .field("provider", &self.provider())
            .field("token", &self.token())
            .finish()
    }
}

enum CmIdImpl {
    Verbs(verbs::CmId),
    Loopback(loopback::CmId),
}

macro_rules! dispatch {
    ($self:expr, $id:ident => $e:expr) => {
        match &$self.inner {
            CmIdImpl::Verbs($id) => $e,
            CmIdImpl::Loopback($id) => $e,
        }
    };
    (mut $self:expr, $id:ident => $e:expr) => {
        match &mut $self.inner {
            CmIdImpl::Verbs($id) => $e,
            CmIdImpl::Loopback($id) => $e,
        }
    };
}

impl CmId {
    /// The token that events for this id carry.
    pub fn token(&self) -> CmToken {
        dispatch!(self, i => i.token())
    }
    /// The provider behind this id.
    pub fn provider(&self) -> Provider {
        match &self.inner {
            CmIdImpl::Verbs(_) => Provider::Verbs,
            CmIdImpl::Loopback(_) => Provider::Loopback,
        }
    }
    /// The device the id is bound to (after AddrResolved or for a
    /// ConnectRequest id): open a [`Context`] of that name for its PD and CQs.
    pub fn device_name(&self) -> Option<String> {
        dispatch!(self, i => i.device_name())
    }
    /// Starts address resolution of `dst` (optionally from `src`): ends in
    /// AddrResolved or AddrError within `timeout`.
    pub fn resolve_addr(
        &mut self,
        src: Option<SocketAddr>,
        dst: SocketAddr,
        timeout: Duration,
    ) -> Result<()> {
        let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
        dispatch!(mut self, i => i.resolve_addr(src, dst, ms))
    }
    /// Starts route resolution: ends in RouteResolved or RouteError.
    pub fn resolve_route(&mut self, timeout: Duration) -> Result<()> {
        let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
        dispatch!(mut self, i => i.resolve_route(ms))
    }
    /// Sets the local ACK time-out exponent (4.096 µs × 2^t, `rdma_set_option
    /// RDMA_OPTION_ID_ACK_TIMEOUT`): bounds how long a vanished peer takes to
    /// surface as `RetryExceeded`. Call before connect/accept. No-op on loopback.
    pub fn set_ack_timeout(&mut self, t: u8) -> Result<()> {
        match &mut self.inner {
            CmIdImpl::Verbs(i) => i.set_ack_timeout(t),
            CmIdImpl::Loopback(_) => Ok(()),
        }
    }
    /// Creates the id's RC queue pair on `pd` with the given CQs
    /// (`rdma_create_qp`). The PD and CQs must be of the id's device.
    /// Returns the capabilities granted.
    pub fn create_qp(
        &mut self,
        pd: &Pd,
        send_cq: &Cq,
        recv_cq: &Cq,
        caps: QpCaps,
    ) -> Result<QpCaps> {
        match (&mut self.inner, &pd.inner, &send_cq.inner, &recv_cq.inner) {
            (CmIdImpl::Verbs(i), PdImpl::Verbs(p), CqImpl::Verbs(s), CqImpl::Verbs(r)) => {
                i.create_qp(p, s, r, caps)
            }
            (
                CmIdImpl::Loopback(i),
                PdImpl::Loopback(p),
                CqImpl::Loopback(s),
                CqImpl::Loopback(r),
            ) => i.create_qp(p, s, r, caps),
            _ => Err(Error::WrongDevice(
                "PD, CQs and CM id of different providers",
            )),
        }
    }
    /// Whether the id has a queue pair.
    pub fn has_qp(&self) -> bool {
        dispatch!(self, i => i.qp_num().is_some())
    }
    /// The QP number.
    pub fn qp_num(&self) -> Option<u32> {
        dispatch!(self, i => i.qp_num())
    }
    /// Connects with up to 56 bytes of private data and default options.
    pub fn connect(&mut self, private_data: &[u8]) -> Result<()> {
        self.connect_with(private_data, &ConnectOptions::default())
    }
    /// Connects with up to 56 bytes of private data (`rdma_connect`). Needs
    /// RouteResolved and a QP. Ends in Established, Rejected, Unreachable or
    /// ConnectError.
    pub fn connect_with(&mut self, private_data: &[u8], opts: &ConnectOptions) -> Result<()> {
        if private_data.len() > MAX_CONNECT_PRIVATE_DATA {
            return Err(Error::InvalidArgument(
                "connect private data longer than 56 bytes",
            ));
        }
        dispatch!(mut self, i => i.connect(private_data, opts))
    }
    /// Accepts a ConnectRequest id with up to 196 bytes of private data
    /// (`rdma_accept`). Needs a QP. Ends in Established.
    pub fn accept(&mut self, private_data: &[u8]) -> Result<()> {
        if private_data.len() > MAX_ACCEPT_PRIVATE_DATA {
            return Err(Error::InvalidArgument(
                "accept private data longer than 196 bytes",
            ));
        }
        dispatch!(mut self, i => i.accept(private_data))
    }
    /// Rejects a ConnectRequest id with up to 148 bytes of private data
    /// (`rdma_reject`); the peer sees Rejected with [`REJECT_CONSUMER`].
    pub fn reject(&mut self, private_data: &[u8]) -> Result<()> {
        if private_data.len() > MAX_REJECT_PRIVATE_DATA {
            return Err(Error::InvalidArgument(
                "reject private data longer than 148 bytes",
            ));
        }
        dispatch!(mut self, i => i.reject(private_data))
    }
    /// Disconnects (`rdma_disconnect`): the local QP enters the error state
    /// and its posted work completes with `WrFlush`. The peer gets
    /// Disconnected at once; this side gets it when the peer answers (calls
    /// `disconnect` or drops its id), or on verbs after the CM's DREQ
    /// time-out. Call it on Disconnected to answer the peer and flush the
    /// local QP. Idempotent.
    pub fn disconnect(&mut self) -> Result<()> {
        dispatch!(mut self, i => i.disconnect())
    }
    /// Posts one send-queue work request.
    ///
    /// Errors are immediate refusals (no QP, not connected yet, queue full,
    /// too many SGEs): no completion follows. Everything else ends in a
    /// completion on the send CQ (if signaled or failed).
    ///
    /// # Safety
    ///
    /// Every SGE must lie in memory that stays allocated until the WR's
    /// completion is polled (or the QP is destroyed), registered in a region
    /// of this QP's PD; for RDMA READ the SGE bytes must not be accessed by
    /// anyone else until then (the device writes them); for SEND/WRITE they
    /// must not be written until then.
    #[inline]
    pub unsafe fn post_send(&mut self, wr: &SendWr<'_>) -> Result<()> {
        // SAFETY: the caller upholds the contract, identical in both providers.
        dispatch!(mut self, i => unsafe { i.post_send(wr) })
    }
    /// Posts one receive buffer list.
    ///
    /// # Safety
    ///
    /// The SGE memory must stay allocated, registered (with LOCAL_WRITE) and
    /// untouched by anyone else until the WR's completion is polled (or the QP
    /// is destroyed): the device writes into it.
    #[inline]
    pub unsafe fn post_recv(&mut self, wr_id: u64, sges: &[Sge]) -> Result<()> {
        // SAFETY: the caller upholds the contract, identical in both providers.
        dispatch!(mut self, i => unsafe { i.post_recv(wr_id, sges) })
    }
    /// The loopback fault injector of this id's QP (None on verbs or
    /// without a QP).
    pub fn faults(&self) -> Option<Faults> {
        match &self.inner {
            CmIdImpl::Verbs(_) => None,
            CmIdImpl::Loopback(i) => i.faults(),
        }
    }
}
