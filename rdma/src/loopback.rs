//! The loopback provider: an in-process RDMA fabric with verbs semantics.
//!
//! - Addresses are `IP:port` pairs in one process-wide registry: any address
//!   resolves; a connect finds the listener bound to that port (on that IP or
//!   on `0.0.0.0`) or is rejected with [`crate::REJECT_NO_LISTENER`].
//! - RC semantics: each QP's send queue executes in order. A SEND needs a RECV
//!   posted by the peer; without one it waits (RNR with infinite retries) and
//!   holds everything posted after it, until the peer posts a RECV
//!   ([`Faults::set_rnr_fail`] turns that into `RnrRetryExceeded`).
//! - RDMA WRITE/READ check the peer's region: key valid (a deregistered key is
//!   not), in the QP's PD, bounds, and `REMOTE_WRITE`/`REMOTE_READ`; a
//!   violation completes with `RemoteAccess` without touching memory, and both
//!   QPs enter the error state, as on rxe. Local SGEs are checked the same way
//!   (`LocalProtection`). A message longer than the RECV gives `LocalLength`
//!   on the receiver and `RemoteInvalidRequest` on the sender.
//! - A QP in the error state completes everything posted, and everything
//!   posted later, with `WrFlush`. Disconnect (or dropping the CM id) puts the
//!   local QP in the error state and tells the peer `Disconnected` at once;
//!   the disconnecting side gets its `Disconnected` (then `TimewaitExit`)
//!   when the peer answers by calling `disconnect` or dropping its id — the
//!   IB CM's DREQ/DREP (on verbs it also comes after the DREQ time-out if the
//!   peer never answers; loopback has no such timer). The peer's later sends
//!   complete with `RetryExceeded`, as when a real peer vanishes.
//! - Private data is padded like the IB CM pads it (56 / 196 / 148 bytes).
//!
//! Work executes when posted (or when the RECV it waited for is posted), so
//! data is in place when the completion appears. The data path runs under one
//! process-wide mutex (plus a mutex per CQ); it is fast (a few hundred ns per
//! work request plus the copy) but serial: a test provider, not a fabric.
//! Differences from verbs, by design: a CQ never overflows (it grows), and the
//! send queue depth counts only work not yet executed.
//!
//! Fault injection ([`Faults`], from [`crate::CmId::faults`]): break a
//! connection, delay completions, fail the next N send-queue work requests,
//! fail SENDs that find no RECV.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::types::*;
use crate::{next_token, CmEvent, CmEventKind, CmToken};

/// The name of the loopback device.
pub const DEVICE_NAME: &str = "loopback0";
/// Most SGEs per work request on loopback.
pub const MAX_SGE: usize = 16;
const MAX_WR: u32 = 16384;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------
// Device, PD, MR, CQ
// ---------------------------------------------------------------------------

pub(crate) struct Device {
    name: String,
    guid: u64,
}

impl Device {
    pub(crate) fn open(name: &str) -> Arc<Device> {
        let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        Arc::new(Device {
            name: name.to_string(),
            guid: h,
        })
    }
    pub(crate) fn name(&self) -> &str {
        &self.name
    }
    pub(crate) fn query_device(&self) -> DeviceAttr {
        DeviceAttr {
            fw_ver: "loopback".into(),
            node_guid: self.guid,
            max_mr_size: u64::MAX,
            max_qp: 1 << 20,
            max_qp_wr: MAX_WR,
            max_sge: MAX_SGE as u32,
            max_sge_rd: MAX_SGE as u32,
            max_cq: 1 << 20,
            max_cqe: 1 << 22,
            max_mr: 1 << 24,
            max_qp_rd_atom: 128,
            max_qp_init_rd_atom: 128,
            phys_port_cnt: 1,
        }
    }
    pub(crate) fn query_port(&self, port: u8) -> Result<PortAttr> {
        if port != 1 {
            return Err(Error::verb("ibv_query_port", libc::EINVAL));
        }
        Ok(PortAttr {
            state: PortState::Active,
            max_mtu: 4096,
            active_mtu: 4096,
            gid_tbl_len: 2,
            max_msg_sz: 1 << 31,
            link_layer: LinkLayer::Ethernet,
        })
    }
    pub(crate) fn query_gid(&self, port: u8, index: u32) -> Result<Gid> {
        match (port, index) {
            (1, 0) => {
                let mut g = [0u8; 16];
                g[0] = 0xfe;
                g[1] = 0x80;
                g[8..].copy_from_slice(&self.guid.to_be_bytes());
                Ok(Gid(g))
            }
            (1, 1) => Ok(Gid::from_ipv4(std::net::Ipv4Addr::LOCALHOST)),
            _ => Err(Error::verb("ibv_query_gid", libc::EINVAL)),
        }
    }
}

pub(crate) struct Pd {
    id: u64,
    _dev: Arc<Device>,
}

impl Pd {
    pub(crate) fn new(dev: &Arc<Device>) -> Arc<Pd> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Arc::new(Pd {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            _dev: dev.clone(),
        })
    }
}

pub(crate) struct Mr {
    key: u32,
    _pd: Arc<Pd>,
}

impl Mr {
    /// # Safety
    /// As [`crate::Mr::register_raw`]: the memory stays valid until drop.
    pub(crate) unsafe fn register(
        pd: &Arc<Pd>,
        addr: *mut u8,
        len: usize,
        access: AccessFlags,
    ) -> Result<Mr> {
        if access.contains(AccessFlags::REMOTE_WRITE) && !access.contains(AccessFlags::LOCAL_WRITE)
        {
            return Err(Error::verb("ibv_reg_mr", libc::EINVAL));
        }
        if (addr as u64).checked_add(len as u64).is_none() {
            return Err(Error::verb("ibv_reg_mr", libc::EINVAL));
        }
        let key = engine().mr_alloc(MrSlot {
            gen: 0,
            live: true,
            pd: pd.id,
            addr: addr as u64,
            len: len as u64,
            access,
        })?;
        Ok(Mr {
            key,
            _pd: pd.clone(),
        })
    }
    pub(crate) fn key(&self) -> u32 {
        self.key
    }
}

impl Drop for Mr {
    fn drop(&mut self) {
        // Under the engine lock: no copy can be touching the region once this returns.
        engine().mr_free(self.key);
    }
}

struct CqEntry {
    c: Completion,
    ready: Option<Instant>,
}

pub(crate) struct CqShared {
    q: Mutex<VecDeque<CqEntry>>,
}

impl CqShared {
    fn push(&self, c: Completion, delay: Option<Duration>) {
        let ready = delay.map(|d| Instant::now() + d);
        lock(&self.q).push_back(CqEntry { c, ready });
    }
}

pub(crate) struct Cq {
    shared: Arc<CqShared>,
}

impl Cq {
    pub(crate) fn new(_dev: &Arc<Device>, cqe: u32) -> Cq {
        let cap = (cqe as usize).clamp(1, 1 << 16);
        Cq {
            shared: Arc::new(CqShared {
                q: Mutex::new(VecDeque::with_capacity(cap)),
            }),
        }
    }

    #[inline]
    pub(crate) fn poll(&mut self, out: &mut [Completion]) -> usize {
        let mut q = lock(&self.shared.q);
        let mut now: Option<Instant> = None;
        let mut n = 0;
        while n < out.len() {
            let Some(front) = q.front() else { break };
            if let Some(t) = front.ready {
                let now = *now.get_or_insert_with(Instant::now);
                if t > now {
                    break;
                }
            }
            if let Some(e) = q.pop_front() {
                out[n] = e.c;
                n += 1;
            }
        }
        n
    }
}

// ---------------------------------------------------------------------------
// The engine: every MR and QP of the process
// ---------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct MrSlot {
    gen: u8,
    live: bool,
    pd: u64,
    addr: u64,
    len: u64,
    access: AccessFlags,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct QpRef {
    idx: u32,
    gen: u32,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum QpState {
    Init,
    Rts,
    Error,
}

#[derive(Clone, Copy)]
struct SendWqe {
    wr_id: u64,
    op: SendOp,
    signaled: bool,
    n: u8,
    sges: [Sge; MAX_SGE],
}

#[derive(Clone, Copy)]
struct RecvWqe {
    wr_id: u64,
    n: u8,
    sges: [Sge; MAX_SGE],
}

/// Where a QP's CM events go.
#[derive(Clone)]
struct CmRoute {
    chan: Weak<ChanShared>,
    token: CmToken,
}

struct QpBody {
    qpn: u32,
    pd: u64,
    send_cq: Arc<CqShared>,
    recv_cq: Arc<CqShared>,
    caps: QpCaps,
    state: QpState,
    peer: Option<QpRef>,
    connecting: bool,
    notified: bool,
    /// The QP whose disconnect this one has not answered yet (the IB CM's
    /// DREP): it is told Disconnected when this one disconnects or goes away.
    drep_to: Option<QpRef>,
    route: CmRoute,
    sq: VecDeque<SendWqe>,
    rq: VecDeque<RecvWqe>,
    delay: Option<Duration>,
    fail_next: u32,
    fail_status: WcStatus,
    rnr_fail: bool,
}

struct QpSlot {
    gen: u32,
    body: Option<QpBody>,
}

struct Listener {
    addr: SocketAddr,
    key: u64,
    route: CmRoute,
}

struct Engine {
    mrs: Vec<MrSlot>,
    mr_free: Vec<u32>,
    qps: Vec<QpSlot>,
    qp_free: Vec<u32>,
    listeners: Vec<Listener>,
    next_qpn: u32,
    next_listener: u64,
}

static ENGINE: Mutex<Engine> = Mutex::new(Engine {
    mrs: Vec::new(),
    mr_free: Vec::new(),
    qps: Vec::new(),
    qp_free: Vec::new(),
    listeners: Vec::new(),
    next_qpn: 0x100,
    next_listener: 1,
});

fn engine() -> MutexGuard<'static, Engine> {
    lock(&ENGINE)
}

/// CM events produced under the engine lock, delivered after it is released
/// (delivering may drop channels and CM ids, whose drops take the lock).
#[derive(Default)]
struct Outbox {
    events: Vec<(Weak<ChanShared>, CmEvent)>,
    dead: Vec<QpBody>,
}

impl Outbox {
    fn push(&mut self, route: &CmRoute, kind: CmEventKind) {
        self.events.push((
            route.chan.clone(),
            CmEvent {
                token: route.token,
                kind,
            },
        ));
    }
    fn deliver(self) {
        for (chan, ev) in self.events {
            if let Some(ch) = chan.upgrade() {
                lock(&ch.q).push_back(ev);
            }
        }
        drop(self.dead);
    }
}

fn sge_array(sges: &[Sge]) -> [Sge; MAX_SGE] {
    let mut a = [Sge::default(); MAX_SGE];
    a[..sges.len()].copy_from_slice(sges);
    a
}

impl QpBody {
    fn complete(&self, recv: bool, c: Completion) {
        let cq = if recv { &self.recv_cq } else { &self.send_cq };
        cq.push(c, self.delay);
    }
    fn done(
        &self,
        wr_id: u64,
        status: WcStatus,
        opcode: WcOpcode,
        byte_len: u32,
        imm: Option<u32>,
    ) -> Completion {
        Completion {
            wr_id,
            status,
            opcode,
            byte_len,
            imm,
            qp_num: self.qpn,
            vendor_err: 0,
        }
    }
    /// Error state: everything queued completes with WrFlush.
    fn flush_all(&mut self) {
        self.state = QpState::Error;
        while let Some(w) = self.sq.pop_front() {
            let c = self.done(w.wr_id, WcStatus::WrFlush, send_opcode(w.op), 0, None);
            self.complete(false, c);
        }
        while let Some(r) = self.rq.pop_front() {
            let c = self.done(r.wr_id, WcStatus::WrFlush, WcOpcode::Recv, 0, None);
            self.complete(true, c);
        }
    }
    /// The head of the send queue fails with `status`; the QP enters the error state.
    fn fail(&mut self, status: WcStatus) {
        if let Some(w) = self.sq.pop_front() {
            let c = self.done(w.wr_id, status, send_opcode(w.op), 0, None);
            self.complete(false, c);
        }
        self.flush_all();
    }
}

fn send_opcode(op: SendOp) -> WcOpcode {
    match op {
        SendOp::Send | SendOp::SendWithImm(_) => WcOpcode::Send,
        SendOp::RdmaWrite { .. } => WcOpcode::RdmaWrite,
        SendOp::RdmaRead { .. } => WcOpcode::RdmaRead,
    }
}

type Segs = ([(u64, u32); MAX_SGE], usize, u64);

fn mr_lookup(mrs: &[MrSlot], key: u32, pd: u64) -> Option<&MrSlot> {
    let idx = (key >> 8).checked_sub(1)? as usize;
    let m = mrs.get(idx)?;
    (m.live && m.gen == (key & 0xff) as u8 && m.pd == pd).then_some(m)
}

fn in_mr(m: &MrSlot, addr: u64, len: u64) -> bool {
    match addr.checked_add(len) {
        Some(end) => addr >= m.addr && end <= m.addr + m.len,
        None => false,
    }
}

/// Checks local SGEs against the MRs of `pd`; returns the segments and total.
fn resolve_local(mrs: &[MrSlot], pd: u64, sges: &[Sge], need: AccessFlags) -> Option<Segs> {
    let mut segs = [(0u64, 0u32); MAX_SGE];
    let mut n = 0;
    let mut total = 0u64;
    for s in sges {
        if s.len == 0 {
            continue;
        }
        let m = mr_lookup(mrs, s.lkey, pd)?;
        if !m.access.contains(need) || !in_mr(m, s.addr, u64::from(s.len)) {
            return None;
        }
        segs[n] = (s.addr, s.len);
        n += 1;
        total += u64::from(s.len);
    }
    Some((segs, n, total))
}

fn resolve_remote(
    mrs: &[MrSlot],
    pd: u64,
    rkey: u32,
    addr: u64,
    len: u64,
    need: AccessFlags,
) -> bool {
    match mr_lookup(mrs, rkey, pd) {
        Some(m) => m.access.contains(need) && in_mr(m, addr, len),
        None => false,
    }
}

/// Copies `total` bytes from the `src` segments to the `dst` segments.
///
/// # Safety
/// Every segment must be memory valid for the access (checked against live
/// registered regions under the engine lock, whose registration contract
/// keeps them valid until deregistration, which takes the same lock).
unsafe fn copy_segs(src: &[(u64, u32)], dst: &[(u64, u32)], total: u64) {
    let (mut si, mut so, mut di, mut doff) = (0usize, 0u64, 0usize, 0u64);
    let mut left = total;
    while left > 0 && si < src.len() && di < dst.len() {
        let sa = u64::from(src[si].1) - so;
        let da = u64::from(dst[di].1) - doff;
        let n = sa.min(da).min(left);
        // SAFETY: both ranges lie inside validated, live, registered regions
        // (caller); `ptr::copy` tolerates overlap.
        unsafe {
            std::ptr::copy(
                (src[si].0 + so) as *const u8,
                (dst[di].0 + doff) as *mut u8,
                n as usize,
            );
        }
        so += n;
        doff += n;
        left -= n;
        if so == u64::from(src[si].1) {
            si += 1;
            so = 0;
        }
        if doff == u64::from(dst[di].1) {
            di += 1;
            doff = 0;
        }
    }
}

enum Exec {
    Done,
    Hold,
    Dead,
}

/// Executes the head of `a`'s send queue against its peer `b`.
fn execute(mrs: &[MrSlot], a: &mut QpBody, b: &mut QpBody, w: &SendWqe) -> Exec {
    let local = &w.sges[..w.n as usize];
    if b.state != QpState::Rts {
        // The peer drops everything: the requester's retries run out.
        a.fail(WcStatus::RetryExceeded);
        return Exec::Dead;
    }
    match w.op {
        SendOp::Send | SendOp::SendWithImm(_) => {
            if b.rq.is_empty() {
                if a.rnr_fail {
                    a.fail(WcStatus::RnrRetryExceeded);
                    return Exec::Dead;
                }
                return Exec::Hold;
            }
            let Some((src, sn, total)) = resolve_local(mrs, a.pd, local, AccessFlags::empty())
            else {
                a.fail(WcStatus::LocalProtection);
                return Exec::Dead;
            };
            let Some(r) = b.rq.pop_front() else {
                return Exec::Hold;
            };
            let dst = resolve_local(mrs, b.pd, &r.sges[..r.n as usize], AccessFlags::LOCAL_WRITE);
            let Some((dst, dn, cap)) = dst else {
                let c = b.done(r.wr_id, WcStatus::LocalProtection, WcOpcode::Recv, 0, None);
                b.complete(true, c);
                b.flush_all();
                a.fail(WcStatus::RemoteOperation);
                return Exec::Dead;
            };
            if total > cap {
                let c = b.done(r.wr_id, WcStatus::LocalLength, WcOpcode::Recv, 0, None);
                b.complete(true, c);
                b.flush_all();
                a.fail(WcStatus::RemoteInvalidRequest);
                return Exec::Dead;
            }
            // SAFETY: both segment lists were validated against live MRs above.
            unsafe { copy_segs(&src[..sn], &dst[..dn], total) };
            let imm = match w.op {
                SendOp::SendWithImm(i) => Some(i),
                _ => None,
            };
            let c = b.done(
                r.wr_id,
                WcStatus::Success,
                WcOpcode::Recv,
                total as u32,
                imm,
            );
            b.complete(true, c);
            if w.signaled {
                let c = a.done(
                    w.wr_id,
                    WcStatus::Success,
                    WcOpcode::Send,
                    total as u32,
                    None,
                );
                a.complete(false, c);
            }
            Exec::Done
        }
        SendOp::RdmaWrite { remote_addr, rkey } | SendOp::RdmaRead { remote_addr, rkey } => {
            let read = matches!(w.op, SendOp::RdmaRead { .. });
            let need_local = if read {
                AccessFlags::LOCAL_WRITE
            } else {
                AccessFlags::empty()
            };
            let Some((segs, n, total)) = resolve_local(mrs, a.pd, local, need_local) else {
                a.fail(WcStatus::LocalProtection);
                return Exec::Dead;
            };
            if total > 0 {
                let need = if read {
                    AccessFlags::REMOTE_READ
                } else {
                    AccessFlags::REMOTE_WRITE
                };
                if !resolve_remote(mrs, b.pd, rkey, remote_addr, total, need) {
                    a.fail(WcStatus::RemoteAccess);
                    b.flush_all();
                    return Exec::Dead;
                }
                let remote = [(remote_addr, total as u32)];
                // SAFETY: local segments and the remote range were validated
                // against live MRs above.
                unsafe {
                    if read {
                        copy_segs(&remote, &segs[..n], total);
                    } else {
                        copy_segs(&segs[..n], &remote, total);
                    }
                }
            }
            if w.signaled {
                let op = if read {
                    WcOpcode::RdmaRead
                } else {
                    WcOpcode::RdmaWrite
                };
                let c = a.done(w.wr_id, WcStatus::Success, op, total as u32, None);
                a.complete(false, c);
            }
            Exec::Done
        }
    }
}

impl Engine {
    fn mr_alloc(&mut self, mut m: MrSlot) -> Result<u32> {
        let idx = match self.mr_free.pop() {
            Some(i) => i,
            None => {
                if self.mrs.len() >= (1 << 24) - 1 {
                    return Err(Error::verb("ibv_reg_mr", libc::ENOMEM));
                }
                self.mrs.push(MrSlot {
                    gen: 0,
                    live: false,
                    pd: 0,
                    addr: 0,
                    len: 0,
                    access: AccessFlags::empty(),
                });
                (self.mrs.len() - 1) as u32
            }
        };
        let slot = &mut self.mrs[idx as usize];
        m.gen = slot.gen;
        *slot = m;
        Ok(((idx + 1) << 8) | u32::from(m.gen))
    }

    fn mr_free(&mut self, key: u32) {
        let Some(idx) = (key >> 8).checked_sub(1) else {
            return;
        };
        if let Some(slot) = self.mrs.get_mut(idx as usize) {
            if slot.live && slot.gen == (key & 0xff) as u8 {
                slot.live = false;
                slot.gen = slot.gen.wrapping_add(1);
                self.mr_free.push(idx);
            }
        }
    }

    fn qp(&mut self, r: QpRef) -> Option<&mut QpBody> {
        let s = self.qps.get_mut(r.idx as usize)?;
        if s.gen != r.gen {
            return None;
        }
        s.body.as_mut()
    }

    fn qp_alloc(&mut self, body: QpBody) -> QpRef {
        let idx = match self.qp_free.pop() {
            Some(i) => i,
            None => {
                self.qps.push(QpSlot { gen: 0, body: None });
                (self.qps.len() - 1) as u32
            }
        };
        let slot = &mut self.qps[idx as usize];
        slot.body = Some(body);
        QpRef { idx, gen: slot.gen }
    }

    fn qp_free(&mut self, r: QpRef) -> Option<QpBody> {
        let s = self.qps.get_mut(r.idx as usize)?;
        if s.gen != r.gen {
            return None;
        }
        let body = s.body.take();
        s.gen = s.gen.wrapping_add(1);
        self.qp_free.push(r.idx);
        body
    }

    /// Runs `a`'s send queue as far as it can go.
    fn progress(&mut self, a: QpRef) {
        let Engine { mrs, qps, .. } = self;
        loop {
            let Some(slot) = qps.get(a.idx as usize) else {
                return;
            };
            let Some(qa) = slot.body.as_ref().filter(|_| slot.gen == a.gen) else {
                return;
            };
            if qa.state != QpState::Rts {
                return;
            }
            let Some(w) = qa.sq.front().copied() else {
                return;
            };
            let peer = qa.peer.filter(|p| {
                p.idx != a.idx
                    && qps
                        .get(p.idx as usize)
                        .is_some_and(|s| s.gen == p.gen && s.body.is_some())
            });
            let Some(p) = peer else {
                // No peer any more: the requester's retries run out.
                if let Some(qa) = qps[a.idx as usize].body.as_mut() {
                    qa.fail(WcStatus::RetryExceeded);
                }
                return;
            };
            let (lo, hi) = (a.idx.min(p.idx) as usize, a.idx.max(p.idx) as usize);
            let (left, right) = qps.split_at_mut(hi);
            let (x, y) = (&mut left[lo], &mut right[0]);
            let (sa, sb) = if a.idx < p.idx { (x, y) } else { (y, x) };
            let (Some(qa), Some(qb)) = (sa.body.as_mut(), sb.body.as_mut()) else {
                return;
            };
            match execute(mrs, qa, qb, &w) {
                Exec::Done => {
                    qa.sq.pop_front();
                }
                Exec::Hold | Exec::Dead => return,
            }
        }
    }

    /// Puts `a` in the error state (its work flushes). A connected peer is
    /// told Disconnected at once (the DREQ); `a` itself is told when the peer
    /// answers by disconnecting or going away (the DREP), as with the IB CM.
    /// `a` answers a peer's earlier disconnect the same way.
    fn disconnect(&mut self, a: QpRef, notify_self: bool, out: &mut Outbox) {
        let Some(qa) = self.qp(a) else { return };
        let peer = qa.peer.take();
        let answer = qa.drep_to.take();
        qa.connecting = false;
        if qa.state != QpState::Error {
            qa.flush_all();
        }
        if let Some(p) = peer {
            if let Some(qb) = self.qp(p) {
                qb.peer = None;
                if notify_self {
                    qb.drep_to = Some(a);
                }
                if !qb.notified {
                    qb.notified = true;
                    out.push(&qb.route, CmEventKind::Disconnected);
                }
            }
            self.progress(p);
        }
        if let Some(w) = answer {
            if let Some(qw) = self.qp(w) {
                if !qw.notified {
                    qw.notified = true;
                    out.push(&qw.route, CmEventKind::Disconnected);
                    out.push(&qw.route, CmEventKind::TimewaitExit);
                }
            }
            if let Some(qa) = self.qp(a) {
                if notify_self {
                    out.push(&qa.route, CmEventKind::TimewaitExit);
                }
            }
        }
        tracing::debug!(qp = a.idx, "loopback disconnect");
    }

    /// Fault: both QPs fail (head of each send queue: RetryExceeded) and both
    /// sides get Disconnected.
    fn break_connection(&mut self, a: QpRef, out: &mut Outbox) {
        let Some(qa) = self.qp(a) else { return };
        let peer = qa.peer;
        for r in std::iter::once(a).chain(peer) {
            if let Some(q) = self.qp(r) {
                q.peer = None;
                q.connecting = false;
                if q.state != QpState::Error {
                    q.fail(WcStatus::RetryExceeded);
                }
                if !q.notified {
                    q.notified = true;
                    out.push(&q.route, CmEventKind::Disconnected);
                    out.push(&q.route, CmEventKind::TimewaitExit);
                }
            }
        }
        tracing::info!(qp = a.idx, "loopback fault: connection broken");
    }
}

// ---------------------------------------------------------------------------
// Connection management
// ---------------------------------------------------------------------------

pub(crate) struct ChanShared {
    q: Mutex<VecDeque<CmEvent>>,
}

pub(crate) struct Channel {
    shared: Arc<ChanShared>,
}

impl Channel {
    pub(crate) fn new() -> Channel {
        Channel {
            shared: Arc::new(ChanShared {
                q: Mutex::new(VecDeque::new()),
            }),
        }
    }

    pub(crate) fn poll_event(&mut self) -> Option<CmEvent> {
        lock(&self.shared.q).pop_front()
    }

    pub(crate) fn create_id(&self) -> CmId {
        CmId::new(self.shared.clone())
    }

    pub(crate) fn listen(&self, addr: SocketAddr) -> Result<CmId> {
        let mut id = CmId::new(self.shared.clone());
        let mut e = engine();
        let clash = e.listeners.iter().any(|l| {
            l.addr.port() == addr.port()
                && (l.addr.ip() == addr.ip()
                    || l.addr.ip().is_unspecified()
                    || addr.ip().is_unspecified())
        });
        if clash {
            return Err(Error::verb("rdma_bind_addr", libc::EADDRINUSE));
        }
        let key = e.next_listener;
        e.next_listener += 1;
        e.listeners.push(Listener {
            addr,
            key,
            route: id.route(),
        });
        drop(e);
        id.listener = Some(key);
        tracing::info!(%addr, "loopback rdma_cm listening");
        Ok(id)
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        // Pending ConnectRequest ids hold this channel: drop them (outside the
        // channel's lock) so that nothing leaks.
        let pending: Vec<CmEvent> = lock(&self.shared.q).drain(..).collect();
        drop(pending);
    }
}

struct QpHandle {
    r: QpRef,
    caps: QpCaps,
    qpn: u32,
}

impl Drop for QpHandle {
    fn drop(&mut self) {
        let mut out = Outbox::default();
        let mut e = engine();
        e.disconnect(self.r, false, &mut out);
        if let Some(body) = e.qp_free(self.r) {
            out.dead.push(body);
        }
        drop(e);
        out.deliver();
    }
}

pub(crate) struct CmId {
    token: CmToken,
    dst: Option<SocketAddr>,
    route_resolved: bool,
    /// Active QP of a received connect request not yet accepted/rejected.
    pending: Option<QpRef>,
    listener: Option<u64>,
    qp: Option<QpHandle>,
    chan: Arc<ChanShared>,
}

impl CmId {
    fn new(chan: Arc<ChanShared>) -> CmId {
        CmId {
            token: next_token(),
            dst: None,
            route_resolved: false,
            pending: None,
            listener: None,
            qp: None,
            chan,
        }
    }

    fn route(&self) -> CmRoute {
        CmRoute {
            chan: Arc::downgrade(&self.chan),
            token: self.token,
        }
    }

    fn push_self(&self, kind: CmEventKind) {
        lock(&self.chan.q).push_back(CmEvent {
            token: self.token,
            kind,
        });
    }

    pub(crate) fn token(&self) -> CmToken {
        self.token
    }

    pub(crate) fn device_name(&self) -> Option<String> {
        (self.dst.is_some() || self.pending.is_some() || self.qp.is_some())
            .then(|| DEVICE_NAME.to_string())
    }

    pub(crate) fn resolve_addr(
        &mut self,
        _src: Option<SocketAddr>,
        dst: SocketAddr,
        _ms: i32,
    ) -> Result<()> {
        if self.listener.is_some() || self.pending.is_some() {
            return Err(Error::verb("rdma_resolve_addr", libc::EINVAL));
        }
        self.dst = Some(dst);
        self.push_self(CmEventKind::AddrResolved);
        Ok(())
    }

    pub(crate) fn resolve_route(&mut self, _ms: i32) -> Result<()> {
        if self.dst.is_none() {
            return Err(Error::verb("rdma_resolve_route", libc::EINVAL));
        }
        self.route_resolved = true;
        self.push_self(CmEventKind::RouteResolved);
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
        if self.dst.is_none() && self.pending.is_none() {
            return Err(Error::InvalidState(
                "create_qp before the id is bound to a device",
            ));
        }
        let bad = caps.max_send_sge as usize > MAX_SGE
            || caps.max_recv_sge as usize > MAX_SGE
            || caps.max_send_wr > MAX_WR
            || caps.max_recv_wr > MAX_WR
            || caps.max_send_wr == 0;
        if bad {
            return Err(Error::verb("rdma_create_qp", libc::EINVAL));
        }
        let mut e = engine();
        let qpn = e.next_qpn;
        e.next_qpn = e.next_qpn.wrapping_add(1).max(0x100);
        let body = QpBody {
            qpn,
            pd: pd.id,
            send_cq: scq.shared.clone(),
            recv_cq: rcq.shared.clone(),
            caps,
            state: QpState::Init,
            peer: None,
            connecting: false,
            notified: false,
            drep_to: None,
            route: self.route(),
            sq: VecDeque::with_capacity(caps.max_send_wr as usize),
            rq: VecDeque::with_capacity(caps.max_recv_wr as usize),
            delay: None,
            fail_next: 0,
            fail_status: WcStatus::Success,
            rnr_fail: false,
        };
        let r = e.qp_alloc(body);
        drop(e);
        self.qp = Some(QpHandle { r, caps, qpn });
        Ok(caps)
    }

    pub(crate) fn qp_num(&self) -> Option<u32> {
        self.qp.as_ref().map(|q| q.qpn)
    }

    pub(crate) fn connect(&mut self, pdata: &[u8], _opts: &ConnectOptions) -> Result<()> {
        let Some(qp) = self.qp.as_ref() else {
            return Err(Error::InvalidState("connect without a QP"));
        };
        let (Some(dst), true) = (self.dst, self.route_resolved) else {
            return Err(Error::InvalidState("connect before RouteResolved"));
        };
        let r = qp.r;
        let mut out = Outbox::default();
        let mut e = engine();
        let Some(q) = e.qp(r) else {
            return Err(Error::verb("rdma_connect", libc::EINVAL));
        };
        if q.state != QpState::Init || q.connecting {
            return Err(Error::verb("rdma_connect", libc::EISCONN));
        }
        q.connecting = true;
        let own = q.route.clone();
        let listener = e
            .listeners
            .iter()
            .find(|l| {
                l.addr.port() == dst.port()
                    && (l.addr.ip() == dst.ip() || l.addr.ip().is_unspecified())
            })
            .and_then(|l| l.route.chan.upgrade().map(|ch| (ch, l.route.token)));
        match listener {
            None => {
                if let Some(q) = e.qp(r) {
                    q.connecting = false;
                }
                let private_data = PrivateData::padded(&[], MAX_REJECT_PRIVATE_DATA);
                out.push(
                    &own,
                    CmEventKind::Rejected {
                        reason: REJECT_NO_LISTENER,
                        private_data,
                    },
                );
            }
            Some((ch, ltoken)) => {
                let mut id = CmId::new(ch.clone());
                id.pending = Some(r);
                id.dst = Some(dst);
                let private_data = PrivateData::padded(pdata, MAX_CONNECT_PRIVATE_DATA);
                let route = CmRoute {
                    chan: Arc::downgrade(&ch),
                    token: ltoken,
                };
                out.push(
                    &route,
                    CmEventKind::ConnectRequest {
                        id: crate::CmId {
                            inner: crate::CmIdImpl::Loopback(id),
                        },
                        private_data,
                    },
                );
            }
        }
        drop(e);
        out.deliver();
        Ok(())
    }

    pub(crate) fn accept(&mut self, pdata: &[u8]) -> Result<()> {
        let Some(qp) = self.qp.as_ref() else {
            return Err(Error::InvalidState("accept without a QP"));
        };
        let Some(active) = self.pending else {
            return Err(Error::InvalidState(
                "accept on an id that is not a connect request",
            ));
        };
        let me = qp.r;
        let mut out = Outbox::default();
        let mut e = engine();
        let active_route = match e.qp(active) {
            Some(a) if a.connecting && a.state == QpState::Init => {
                a.connecting = false;
                a.state = QpState::Rts;
                a.peer = Some(me);
                a.route.clone()
            }
            _ => {
                drop(e);
                self.pending = None;
                return Err(Error::verb("rdma_accept", libc::ECONNRESET));
            }
        };
        let Some(q) = e.qp(me) else {
            return Err(Error::verb("rdma_accept", libc::EINVAL));
        };
        q.state = QpState::Rts;
        q.peer = Some(active);
        let own = q.route.clone();
        out.push(
            &active_route,
            CmEventKind::Established {
                private_data: PrivateData::padded(pdata, MAX_ACCEPT_PRIVATE_DATA),
            },
        );
        out.push(
            &own,
            CmEventKind::Established {
                private_data: PrivateData::EMPTY,
            },
        );
        drop(e);
        self.pending = None;
        out.deliver();
        tracing::debug!(token = self.token.0, "loopback connection established");
        Ok(())
    }

    fn reject_pending(&mut self, pdata: &[u8]) -> bool {
        let Some(active) = self.pending.take() else {
            return false;
        };
        let mut out = Outbox::default();
        let mut e = engine();
        if let Some(a) = e.qp(active) {
            if a.connecting {
                a.connecting = false;
                let private_data = PrivateData::padded(pdata, MAX_REJECT_PRIVATE_DATA);
                let route = a.route.clone();
                out.push(
                    &route,
                    CmEventKind::Rejected {
                        reason: REJECT_CONSUMER,
                        private_data,
                    },
                );
            }
        }
        drop(e);
        out.deliver();
        true
    }

    pub(crate) fn reject(&mut self, pdata: &[u8]) -> Result<()> {
        if self.reject_pending(pdata) {
            Ok(())
        } else {
            Err(Error::InvalidState(
                "reject on an id that is not a connect request",
            ))
        }
    }

    pub(crate) fn disconnect(&mut self) -> Result<()> {
        let Some(qp) = self.qp.as_ref() else {
            return Err(Error::verb("rdma_disconnect", libc::EINVAL));
        };
        let mut out = Outbox::default();
        engine().disconnect(qp.r, true, &mut out);
        out.deliver();
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
        let r = qp.r;
        let mut e = engine();
        let Some(q) = e.qp(r) else {
            return Err(Error::verb("ibv_post_send", libc::EINVAL));
        };
        match q.state {
            QpState::Init => return Err(Error::verb("ibv_post_send", libc::EINVAL)),
            QpState::Error => {
                let c = q.done(wr.wr_id, WcStatus::WrFlush, send_opcode(wr.op), 0, None);
                q.complete(false, c);
                return Ok(());
            }
            QpState::Rts => {}
        }
        if q.fail_next > 0 {
            q.fail_next -= 1;
            let c = q.done(wr.wr_id, q.fail_status, send_opcode(wr.op), 0, None);
            q.complete(false, c);
            return Ok(());
        }
        if q.sq.len() >= q.caps.max_send_wr as usize {
            return Err(Error::verb("ibv_post_send", libc::ENOMEM));
        }
        q.sq.push_back(SendWqe {
            wr_id: wr.wr_id,
            op: wr.op,
            signaled: wr.signaled,
            n: wr.sges.len() as u8,
            sges: sge_array(wr.sges),
        });
        if q.sq.len() == 1 {
            e.progress(r);
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
        let r = qp.r;
        let mut e = engine();
        let Some(q) = e.qp(r) else {
            return Err(Error::verb("ibv_post_recv", libc::EINVAL));
        };
        if q.state == QpState::Error {
            let c = q.done(wr_id, WcStatus::WrFlush, WcOpcode::Recv, 0, None);
            q.complete(true, c);
            return Ok(());
        }
        if q.rq.len() >= q.caps.max_recv_wr as usize {
            return Err(Error::verb("ibv_post_recv", libc::ENOMEM));
        }
        q.rq.push_back(RecvWqe {
            wr_id,
            n: sges.len() as u8,
            sges: sge_array(sges),
        });
        if let Some(p) = q.peer {
            e.progress(p);
        }
        Ok(())
    }

    pub(crate) fn faults(&self) -> Option<Faults> {
        self.qp.as_ref().map(|q| Faults { r: q.r })
    }
}

impl Drop for CmId {
    fn drop(&mut self) {
        self.reject_pending(&[]);
        if let Some(key) = self.listener.take() {
            engine().listeners.retain(|l| l.key != key);
        }
        // The QP (if any) disconnects and is freed by QpHandle's Drop.
    }
}

// ---------------------------------------------------------------------------
// Fault injection
// ---------------------------------------------------------------------------

/// Fault injection on one loopback QP (and its connection). Cheap to clone,
/// usable from any thread; does nothing once the QP is destroyed.
#[derive(Clone, Debug)]
pub struct Faults {
    r: QpRef,
}

impl Faults {
    /// Breaks the connection as a failed link would: both QPs enter the error
    /// state (the first outstanding send WR of each completes with
    /// `RetryExceeded`, everything else with `WrFlush`), then both sides get
    /// `Disconnected`.
    pub fn break_connection(&self) {
        let mut out = Outbox::default();
        engine().break_connection(self.r, &mut out);
        out.deliver();
    }

    /// Delays every completion this QP generates (on its send and receive
    /// CQs) by `delay`; `Duration::ZERO` turns it off. Order is kept.
    pub fn delay_completions(&self, delay: Duration) {
        if let Some(q) = engine().qp(self.r) {
            q.delay = (!delay.is_zero()).then_some(delay);
        }
    }

    /// Completes the next `n` send-queue work requests posted on this QP with
    /// `status`, without executing them and without changing the QP's state.
    pub fn fail_next(&self, n: u32, status: WcStatus) {
        if let Some(q) = engine().qp(self.r) {
            q.fail_next = n;
            q.fail_status = status;
        }
    }

    /// When on, a SEND that finds no RECV posted completes with
    /// `RnrRetryExceeded` (the QP enters the error state) instead of waiting.
    pub fn set_rnr_fail(&self, on: bool) {
        let mut e = engine();
        if let Some(q) = e.qp(self.r) {
            q.rnr_fail = on;
        }
        if on {
            e.progress(self.r);
        }
    }
}
