//! One RDMA channel (one RC queue pair) of a logged-in initiator: the data
//! path. Everything here runs on the reactor that owns the channel; nothing
//! takes a lock or allocates per command.
//!
//! ## Contexts and credits
//!
//! The channel posts `N` receive buffers (`N` = queue depth) and grants `N`
//! credits at login. Every received IU takes a *context* from a fixed slab of
//! `2N` (a context lives on after its response is posted, until the SEND
//! completes, so `N` would not be enough; a receive that finds the slab empty
//! waits in a bounded backlog). A command keeps its receive buffer (which
//! holds its descriptors and any immediate data) until its response is
//! posted; the buffer is then reposted and the credit it frees travels in
//! that response's `req_lim_delta`. Credits of IUs that get no response of
//! their own (aborted commands) are added to the next response.
//!
//! ## Data movement
//!
//! Data moves through a per-channel registered pool ([`crate::pool`]). A
//! command gets one *window* (up to `max_window` bytes, contiguous) and
//! moves its data in chunks through it: READ = bdev read → RDMA WRITE(s);
//! WRITE = RDMA READ(s) (or the immediate data) → bdev write. A chunk posts
//! at most [`MAX_PIECES`] RDMA work requests, so a 64 MiB command with 255
//! descriptors moves in bounded steps. The last chunk of a READ posts its
//! RDMA WRITEs and the `SRP_RSP` together (RC ordering delivers the data
//! first). Every work request is signaled; a context is released when its
//! response is posted and all of its work requests have completed.
//! Commands that cannot get a window, send-queue slots or a bdev request
//! slot right now wait in FIFO queues and are resumed from the poller.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bdev::{IoRequest, IoStatus, IoVec};
use rdma::{CmId, CmToken, Completion, Cq, MrBuf, Pd, QpCaps, SendWr, Sge, WcStatus};
use scsi::{BlockFailure, BlockOp, Direction, Outcome, Sense, SenseKey};
use srp::{
    tsk_mgmt_rsp, DataDesc, DescList, DirectBuf, Encode, LoginReq, Opcode, RspFlags, SrpCmd,
    SrpRsp, TLogout, TLogoutReason, TaskMgmtFunction, TskMgmt,
};

use crate::pool::{BufPool, Run, PAGE};
use crate::target::{ChanInfo, ChanState, TargetShared};

/// Most RDMA work requests one chunk of a command posts.
pub(crate) const MAX_PIECES: usize = 64;
/// Bytes of a send buffer slot (responses are at most 36 + 18 bytes).
const SEND_SLOT: usize = 128;
/// Largest response of a command that is not a block transfer (INQUIRY,
/// MODE SENSE, REPORT LUNS, ...).
const DATA_IN_MAX: u64 = 64 * 1024;
/// Largest indirect descriptor table fetched by RDMA READ (2048 entries).
const MAX_TABLE_BYTES: u32 = 2048 * 16;
/// How long a disconnected channel waits for flushed work requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a target logout waits for its SEND before disconnecting.
const LOGOUT_TIMEOUT: Duration = Duration::from_secs(1);

/// ILLEGAL REQUEST, INVALID FIELD IN COMMAND INFORMATION UNIT (0x0E/0x03):
/// an `SRP_CMD` that does not decode, or whose descriptors do not match it.
pub(crate) const INVALID_CMD_IU: Sense = Sense::new(SenseKey::IllegalRequest, 0x0E, 0x03);

const WR_RECV: u64 = 0;
const WR_CTX: u64 = 1;
const WR_LOGOUT: u64 = 2;

fn wr_ctx(i: usize, gen: u32) -> u64 {
    WR_CTX << 62 | u64::from(gen & 0x3fff_ffff) << 32 | i as u64
}

/// Tunables of a channel.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ChanParams {
    /// Receive buffers = credits.
    pub queue_depth: u32,
    /// Receive buffer size (the negotiated max_it_iu_len).
    pub iu_len: u32,
    /// Negotiated immediate data offset (0: no immediate data).
    pub imm_offset: u16,
    /// Data buffer pool bytes.
    pub pool_bytes: usize,
    /// Largest window of one command.
    pub max_window: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Cmd,
    Tmf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Idle,
    TableBuf,
    TablePost,
    TableWait,
    WinBuf,
    Chunk,
    FetchPost,
    FetchWait,
    Bdev,
    BdevWait,
    PushPost,
    PushWait,
    RspPost,
    RspWait,
    TmfWait,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Queue {
    None,
    Buf,
    Sq,
    Bdev,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Job {
    None,
    /// A non-block command's data-in: re-executed into the window.
    DataIn,
    Read {
        lba: u64,
        fua: bool,
    },
    Write {
        lba: u64,
        fua: bool,
    },
    Flush,
    WriteZeroes {
        lba: u64,
        blocks: u32,
    },
    /// WRITE SAME: fetch one block, then zero or replicate.
    WriteSame {
        lba: u64,
        blocks: u32,
        replicate: bool,
    },
    /// UNMAP: fetch the parameter list, then unmap range `next`, ...
    Unmap {
        next: u32,
    },
}

/// Where the initiator's data is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DataSrc {
    None,
    Direct(DirectBuf),
    /// The complete table is inline in the IU (data-in or data-out side).
    Inline {
        data_in: bool,
    },
    /// The table is in initiator memory (fetched into `Ctx::table`).
    Table {
        remote: DirectBuf,
        count: u32,
    },
    /// Immediate data at `off` in the IU.
    Imm {
        off: u16,
        len: u32,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Waiter {
    None,
    Local { idx: u16, gen: u32 },
    Remote(u16),
}

#[derive(Clone, Copy, Debug, Default)]
struct RspInfo {
    status: u8,
    sense: Option<Sense>,
    flags: u8,
    di_res: u32,
    do_res: u32,
    tmf_code: Option<u8>,
}

#[derive(Clone, Copy, Debug)]
struct Ctx {
    gen: u32,
    busy: bool,
    kind: Kind,
    recv: Option<u16>,
    iu_len: u32,
    tag: u64,
    lun: usize,
    step: Step,
    queued: Queue,
    job: Job,
    src: DataSrc,
    block_size: u32,
    total: u64,
    done: u64,
    chunk: u64,
    cur_idx: u32,
    cur_off: u32,
    win: Option<Run>,
    table: Option<Run>,
    outstanding: u32,
    bdev_busy: bool,
    rsp_posted: bool,
    aborted: bool,
    waiter: Waiter,
    tmf_pending: u32,
    rsp: RspInfo,
}

impl Ctx {
    const FREE: Ctx = Ctx {
        gen: 0,
        busy: false,
        kind: Kind::Cmd,
        recv: None,
        iu_len: 0,
        tag: 0,
        lun: usize::MAX,
        step: Step::Idle,
        queued: Queue::None,
        job: Job::None,
        src: DataSrc::None,
        block_size: 512,
        total: 0,
        done: 0,
        chunk: 0,
        cur_idx: 0,
        cur_off: 0,
        win: None,
        table: None,
        outstanding: 0,
        bdev_busy: false,
        rsp_posted: false,
        aborted: false,
        waiter: Waiter::None,
        tmf_pending: 0,
        rsp: RspInfo {
            status: 0,
            sense: None,
            flags: 0,
            di_res: 0,
            do_res: 0,
            tmf_code: None,
        },
    };

    fn quiescent(&self) -> bool {
        self.outstanding == 0 && !self.bdev_busy
    }
}

/// A LUN-wide abort requested by a sibling channel of the same session.
#[derive(Clone, Copy, Debug)]
struct RemoteAbort {
    reply_reactor: usize,
    reply_token: CmToken,
    tmf_idx: u16,
    tmf_gen: u32,
    pending: u32,
}

/// Descriptors of a command, read from where they are.
enum Descs<'a> {
    Empty,
    One(DirectBuf),
    List(DescList<'a>),
    Table(&'a [u8]),
}

impl Descs<'_> {
    fn get(&self, k: u32) -> Option<DirectBuf> {
        match self {
            Descs::Empty => None,
            Descs::One(d) => (k == 0).then_some(*d),
            Descs::List(l) => l.get(k as usize),
            Descs::Table(t) => DirectBuf::decode_at(t, k as usize * 16).ok(),
        }
    }

    /// Walks `len` bytes (or up to `max_pieces` pieces) from `(idx, off)`;
    /// calls `f(offset in chunk, remote piece)` per piece. Returns the bytes
    /// covered, the piece count and the new cursor.
    fn walk(
        &self,
        mut idx: u32,
        mut off: u32,
        len: u64,
        max_pieces: usize,
        mut f: impl FnMut(u64, DirectBuf),
    ) -> (u64, usize, u32, u32) {
        let (mut covered, mut pieces) = (0u64, 0usize);
        while covered < len && pieces < max_pieces {
            let Some(d) = self.get(idx) else { break };
            let avail = d.len.saturating_sub(off);
            if avail == 0 {
                idx += 1;
                off = 0;
                continue;
            }
            let take = u64::from(avail).min(len - covered) as u32;
            f(
                covered,
                DirectBuf {
                    va: d.va.wrapping_add(u64::from(off)),
                    key: d.key,
                    len: take,
                },
            );
            covered += u64::from(take);
            pieces += 1;
            if take == avail {
                idx += 1;
                off = 0;
            } else {
                off += take;
            }
        }
        (covered, pieces, idx, off)
    }
}

/// The bytes of a received IU.
///
/// # Safety
/// `ptr..ptr+len` must be a receive buffer slot that is not posted (the
/// device does not write it) for as long as the slice is used, inside a
/// buffer that outlives that use.
unsafe fn raw<'a>(ptr: u64, len: usize) -> &'a [u8] {
    // SAFETY: forwarded to the caller.
    unsafe { std::slice::from_raw_parts(ptr as *const u8, len) }
}

/// Mutable bytes of a pool run owned by one context.
///
/// # Safety
/// The run must be owned by the caller's context, with no RDMA or bdev I/O
/// in flight on it, inside a pool that outlives the use.
unsafe fn raw_mut<'a>(ptr: *mut u8, len: usize) -> &'a mut [u8] {
    // SAFETY: forwarded to the caller.
    unsafe { std::slice::from_raw_parts_mut(ptr, len) }
}

pub(crate) struct ChanLun {
    ch: bdev::Channel,
    buf_align: usize,
}

/// One RDMA channel. Field order is drop order: the CM id (and with it the
/// QP) goes first, so the device has stopped using the buffers below before
/// they are deregistered and freed.
pub(crate) struct Channel {
    cm_id: CmId,
    cq: Cq,
    recv: MrBuf,
    send: MrBuf,
    pool: BufPool,
    _pd: Pd,
    _dev: rdma::Context,
    shared: Arc<TargetShared>,
    info: Arc<ChanInfo>,
    token: CmToken,
    p: ChanParams,
    slot_len: usize,
    luns: Vec<ChanLun>,
    ctxs: Vec<Ctx>,
    free: Vec<u16>,
    state: ChanState,
    established: bool,
    early: VecDeque<(u16, u32)>,
    buf_wait: VecDeque<u16>,
    sq_wait: VecDeque<u16>,
    bdev_wait: VecDeque<u16>,
    bdev_done: Vec<(u64, IoStatus)>,
    remote: Vec<Option<RemoteAbort>>,
    sq_free: u32,
    posted_recvs: u32,
    pending_credits: i32,
    granted: u64,
    consumed: u64,
    active: u32,
    poller: Option<reactor::PollerId>,
    drain_deadline: Option<Instant>,
    logout_posted: bool,
    fatal_logged: bool,
}

thread_local! {
    static CHANNELS: RefCell<HashMap<CmToken, Rc<RefCell<Channel>>>> = RefCell::new(HashMap::new());
}

/// Runs `f` on the channel `token` of the calling reactor, if it lives here.
pub(crate) fn with_channel<R>(token: CmToken, f: impl FnOnce(&mut Channel) -> R) -> Option<R> {
    let ch = CHANNELS.with(|m| m.borrow().get(&token).cloned())?;
    let mut b = ch.try_borrow_mut().ok()?;
    Some(f(&mut b))
}

/// Creates the channel for an accepted login on the calling reactor, posts
/// its receives and accepts the connection with `rsp` (the encoded
/// `SRP_LOGIN_RSP`). On failure the connection is rejected.
pub(crate) fn setup(
    shared: Arc<TargetShared>,
    info: Arc<ChanInfo>,
    mut id: CmId,
    req: LoginReq,
    p: ChanParams,
    rsp: srp::LoginRsp,
) {
    let reject = |id: &mut CmId, shared: &TargetShared, info: &ChanInfo, why: &str| {
        tracing::warn!(target_name = %shared.cfg.name, initiator = %info.initiator_str, "login failed: {why}");
        let rej = srp::LoginRej {
            reason: srp::LoginRejReason::InsufficientResources,
            tag: req.tag,
            buf_fmt: srp::BufFormats::BOTH,
        };
        let mut b = [0u8; srp::LoginRej::SIZE];
        let _ = rej.encode(&mut b);
        let _ = id.reject(&b);
        shared.remove_channel(info.token);
    };
    if shared.deleting() {
        reject(&mut id, &shared, &info, "target is being deleted");
        return;
    }
    let ch = match Channel::create_parts(&shared, &mut id, p) {
        Ok(parts) => parts,
        Err(e) => {
            reject(&mut id, &shared, &info, &e.to_string());
            return;
        }
    };
    let token = info.token;
    let ch = Channel::assemble(ch, id, Arc::clone(&shared), Arc::clone(&info), p);
    let rc = Rc::new(RefCell::new(ch));
    CHANNELS.with(|m| m.borrow_mut().insert(token, Rc::clone(&rc)));
    let pc = Rc::clone(&rc);
    let pid = reactor::register_poller("srpt_channel", move || match pc.try_borrow_mut() {
        Ok(mut c) => c.poll(),
        Err(_) => reactor::Poll::Idle,
    });
    let mut c = rc.borrow_mut();
    c.poller = Some(pid);
    let mut b = [0u8; srp::LoginRsp::SIZE];
    let _ = rsp.encode(&mut b);
    match c.cm_id.accept(&b) {
        Ok(()) => {
            info.state
                .store(ChanState::Connecting as u8, Ordering::Relaxed);
            tracing::info!(
                target_name = %shared.cfg.name,
                initiator = %info.initiator_str,
                qp = c.cm_id.qp_num().unwrap_or(0),
                reactor = info.reactor,
                credits = p.queue_depth,
                iu_len = p.iu_len,
                imm = p.imm_offset != 0,
                "SRP login accepted"
            );
        }
        Err(e) => {
            tracing::warn!(initiator = %info.initiator_str, error = %e, "rdma_accept failed");
            c.disconnect_now();
        }
    }
}

/// Resources created before the channel is assembled.
struct Parts {
    dev: rdma::Context,
    pd: Pd,
    cq: Cq,
    recv: MrBuf,
    send: MrBuf,
    pool: BufPool,
    luns: Vec<ChanLun>,
    sq_depth: u32,
    slot_len: usize,
}

#[derive(Debug, thiserror::Error)]
enum SetupError {
    #[error("{0}")]
    Rdma(#[from] rdma::Error),
    #[error("bdev channel: {0}")]
    Bdev(#[from] bdev::BdevError),
    #[error("{0}")]
    Other(&'static str),
}

impl Channel {
    fn create_parts(
        shared: &TargetShared,
        id: &mut CmId,
        p: ChanParams,
    ) -> Result<Parts, SetupError> {
        let name = id
            .device_name()
            .ok_or(SetupError::Other("the CM id has no device"))?;
        let dev = rdma::Context::open(shared.cfg.provider, &name)?;
        let pd = Pd::new(&dev)?;
        let attr = dev.query_device()?;
        let n = p.queue_depth;
        let want_sq = (2 * n + 4 * MAX_PIECES as u32 + 8).min(attr.max_qp_wr.max(1));
        if want_sq < MAX_PIECES as u32 + 2 {
            return Err(SetupError::Other("device send queue too shallow"));
        }
        let recv_wr = n.min(attr.max_qp_wr.max(1));
        let cq = Cq::new(&dev, want_sq + recv_wr + 16)?;
        let caps = id.create_qp(
            &pd,
            &cq,
            &cq,
            QpCaps {
                max_send_wr: want_sq,
                max_recv_wr: recv_wr,
                max_send_sge: 1,
                max_recv_sge: 1,
                max_inline_data: 0,
            },
        )?;
        if caps.max_recv_wr < n {
            return Err(SetupError::Other(
                "device receive queue shallower than the queue depth",
            ));
        }
        let slot_len = (p.iu_len as usize).div_ceil(64) * 64;
        let recv = MrBuf::new(&pd, n as usize * slot_len)?;
        let send = MrBuf::new(&pd, (2 * n as usize + 1) * SEND_SLOT)?;
        let pool = BufPool::new(&pd, p.pool_bytes)?;
        let mut luns = Vec::with_capacity(shared.luns.len());
        for l in &shared.luns {
            let ch = bdev::open_channel(&l.bdev)?;
            luns.push(ChanLun {
                buf_align: l.bdev.info().buf_align.max(1),
                ch,
            });
        }
        // Post every receive before accepting: the initiator may send at once.
        for slot in 0..n as usize {
            let sge = recv.sge(slot * slot_len, slot_len as u32)?;
            // SAFETY: the slot lies in `recv`, which the channel owns and
            // keeps registered until after the QP is destroyed (field
            // order); nothing else touches a posted slot.
            unsafe { id.post_recv(WR_RECV << 62 | slot as u64, &[sge]) }?;
        }
        Ok(Parts {
            dev,
            pd,
            cq,
            recv,
            send,
            pool,
            luns,
            sq_depth: caps.max_send_wr,
            slot_len,
        })
    }

    fn assemble(
        parts: Parts,
        cm_id: CmId,
        shared: Arc<TargetShared>,
        info: Arc<ChanInfo>,
        p: ChanParams,
    ) -> Channel {
        let n = p.queue_depth as usize;
        info.qp_num
            .store(cm_id.qp_num().unwrap_or(0), Ordering::Relaxed);
        Channel {
            token: info.token,
            cm_id,
            cq: parts.cq,
            recv: parts.recv,
            send: parts.send,
            pool: parts.pool,
            _pd: parts.pd,
            _dev: parts.dev,
            shared,
            info,
            p,
            slot_len: parts.slot_len,
            luns: parts.luns,
            ctxs: vec![Ctx::FREE; 2 * n],
            free: (0..2 * n as u16).rev().collect(),
            state: ChanState::Connecting,
            established: false,
            early: VecDeque::with_capacity(n),
            buf_wait: VecDeque::with_capacity(2 * n),
            sq_wait: VecDeque::with_capacity(2 * n),
            bdev_wait: VecDeque::with_capacity(2 * n),
            bdev_done: Vec::with_capacity(2 * n),
            remote: Vec::new(),
            sq_free: parts.sq_depth,
            posted_recvs: n as u32,
            pending_credits: 0,
            granted: n as u64,
            consumed: 0,
            active: 0,
            poller: None,
            drain_deadline: None,
            logout_posted: false,
            fatal_logged: false,
        }
    }

    // -----------------------------------------------------------------------
    // Connection events (routed here by the target's CM poller)

    /// The connection is up: commands that arrived before are processed now.
    pub(crate) fn on_established(&mut self) {
        if self.state != ChanState::Connecting {
            return;
        }
        self.established = true;
        self.state = ChanState::Live;
        self.info
            .state
            .store(ChanState::Live as u8, Ordering::Relaxed);
        self.drain_early();
    }

    /// The peer disconnected (or the connection failed).
    pub(crate) fn on_disconnected(&mut self) {
        if self.state < ChanState::Disconnected {
            tracing::info!(initiator = %self.info.initiator_str, qp = self.info.qp_num.load(Ordering::Relaxed), "SRP channel disconnected");
        }
        self.disconnect_now();
    }

    /// Target-initiated logout: `SRP_T_LOGOUT`, then disconnect (when the
    /// SEND completes, or after [`LOGOUT_TIMEOUT`]).
    pub(crate) fn logout(&mut self, reason: TLogoutReason) {
        match self.state {
            ChanState::Connecting => return self.disconnect_now(),
            ChanState::Live | ChanState::LoggingOut => {}
            _ => return,
        }
        tracing::info!(initiator = %self.info.initiator_str, ?reason, "SRP target logout");
        self.state = ChanState::Closing;
        self.info
            .state
            .store(ChanState::Closing as u8, Ordering::Relaxed);
        let off = 2 * self.p.queue_depth as usize * SEND_SLOT;
        let iu = TLogout {
            sol_not: 0,
            reason,
            tag: 0,
        };
        // SAFETY: the last send slot is reserved for T_LOGOUT and posted once.
        let buf = unsafe { raw_mut((self.send.addr() as usize + off) as *mut u8, SEND_SLOT) };
        let posted = match (iu.encode(buf), self.send.sge(off, TLogout::SIZE as u32)) {
            (Ok(n), Ok(mut sge)) if self.sq_free > 0 => {
                sge.len = n as u32;
                // SAFETY: the slot lies in `send`, owned by the channel and
                // registered until after the QP is destroyed; it is not
                // written again.
                unsafe { self.cm_id.post_send(&SendWr::send(WR_LOGOUT << 62, &[sge])) }.is_ok()
            }
            _ => false,
        };
        if posted {
            self.sq_free -= 1;
            self.logout_posted = true;
            let token = self.token;
            reactor::timer_after(LOGOUT_TIMEOUT, move || {
                with_channel(token, |c| c.disconnect_now());
            });
        } else {
            self.disconnect_now();
        }
    }

    /// Moves the QP to the error state and starts draining: nothing new is
    /// started, commands are dropped once their bdev I/O has finished.
    pub(crate) fn disconnect_now(&mut self) {
        if self.state >= ChanState::Disconnected {
            return;
        }
        let _ = self.cm_id.disconnect();
        self.state = ChanState::Disconnected;
        self.info
            .state
            .store(ChanState::Disconnected as u8, Ordering::Relaxed);
        self.drain_deadline = Some(Instant::now() + DRAIN_TIMEOUT);
        self.early.clear();
        for i in 0..self.ctxs.len() {
            if self.ctxs[i].busy {
                self.ctxs[i].aborted = true;
                self.ctxs[i].waiter = Waiter::None;
                if self.ctxs[i].quiescent() {
                    self.unqueue(i);
                    self.free_ctx(i);
                }
            }
        }
        // Sibling aborts we owe an answer: answer now (we abort everything).
        for k in 0..self.remote.len() {
            if let Some(r) = self.remote[k].take() {
                send_tmf_ack(r);
            }
        }
    }

    fn fatal(&mut self, what: &str, status: WcStatus) {
        if !self.fatal_logged {
            self.fatal_logged = true;
            tracing::warn!(initiator = %self.info.initiator_str, what, ?status, "SRP channel error; disconnecting");
        }
        self.disconnect_now();
    }

    // -----------------------------------------------------------------------
    // The poller

    pub(crate) fn poll(&mut self) -> reactor::Poll {
        let mut work = 0usize;
        let mut wcs = [Completion::EMPTY; 32];
        loop {
            let n = self.cq.poll(&mut wcs);
            for c in &wcs[..n] {
                self.on_completion(c);
            }
            work += n;
            if n < wcs.len() {
                break;
            }
        }
        for l in 0..self.luns.len() {
            let Channel {
                luns, bdev_done, ..
            } = self;
            let n = luns[l].ch.poll(&mut |tag, st| bdev_done.push((tag, st)));
            work += n;
            if n > 0 {
                let done = std::mem::take(&mut self.bdev_done);
                for &(tag, st) in &done {
                    self.on_bdev(tag, st);
                }
                self.bdev_done = done;
                self.bdev_done.clear();
            }
        }
        work += self.pump();
        match self.state {
            ChanState::LoggingOut if self.active == 0 => self.disconnect_now(),
            ChanState::Disconnected => self.check_release(),
            _ => {}
        }
        if work > 0 {
            self.publish();
        }
        reactor::Poll::from_count(work)
    }

    fn publish(&self) {
        let i = &self.info;
        i.inflight.store(self.active, Ordering::Relaxed);
        i.credits.store(
            self.granted.saturating_sub(self.consumed) as u32,
            Ordering::Relaxed,
        );
        i.commands.store(self.consumed, Ordering::Relaxed);
    }

    fn check_release(&mut self) {
        let all_free = self.free.len() == self.ctxs.len();
        let timed_out = self.drain_deadline.is_some_and(|d| Instant::now() >= d);
        let bdev_idle = self.ctxs.iter().all(|c| !c.bdev_busy)
            && self.luns.iter().all(|l| l.ch.inflight() == 0);
        if !(all_free || (timed_out && bdev_idle)) {
            return;
        }
        if !all_free {
            // Work requests never completed; the QP is destroyed below, so
            // the device stops touching our buffers. Account for the
            // contexts we drop.
            for i in 0..self.ctxs.len() {
                if self.ctxs[i].busy {
                    self.ctxs[i].outstanding = 0;
                    self.free_ctx(i);
                }
            }
        }
        self.state = ChanState::Released;
        self.info
            .state
            .store(ChanState::Released as u8, Ordering::Relaxed);
        if let Some(p) = self.poller.take() {
            reactor::unregister_poller(p);
        }
        let token = self.token;
        // Dropping the map's handle here is fine: the poller closure keeps
        // the channel alive until the reactor drops it after this loop.
        CHANNELS.with(|m| m.borrow_mut().remove(&token));
        self.shared.remove_channel(token);
        tracing::info!(initiator = %self.info.initiator_str, "SRP channel released");
    }

    fn on_completion(&mut self, c: &Completion) {
        match c.wr_id >> 62 {
            WR_RECV => self.on_recv((c.wr_id & 0xffff) as u16, c.status, c.byte_len),
            WR_CTX => {
                self.sq_free += 1;
                let i = (c.wr_id & 0xffff_ffff) as usize;
                let gen = ((c.wr_id >> 32) & 0x3fff_ffff) as u32;
                self.on_ctx_wr(i, gen, c.status);
            }
            _ => {
                self.sq_free += 1;
                self.disconnect_now();
            }
        }
    }

    fn on_recv(&mut self, slot: u16, status: WcStatus, len: u32) {
        self.posted_recvs = self.posted_recvs.saturating_sub(1);
        if !status.is_ok() {
            if status != WcStatus::WrFlush {
                self.fatal("receive", status);
            }
            return;
        }
        match self.state {
            ChanState::Connecting | ChanState::Live => {}
            // Logging out or gone: the IU is dropped (its slot stays unposted).
            _ => return,
        }
        if !self.established || self.free.is_empty() || !self.early.is_empty() {
            self.early.push_back((slot, len));
            return;
        }
        self.dispatch(slot, len);
    }

    fn drain_early(&mut self) -> usize {
        let mut n = 0;
        while self.established && self.state == ChanState::Live && !self.free.is_empty() {
            let Some((slot, len)) = self.early.pop_front() else {
                break;
            };
            self.dispatch(slot, len);
            n += 1;
        }
        n
    }

    fn repost_recv(&mut self, slot: u16, credit: bool) {
        if self.state >= ChanState::Disconnected {
            return;
        }
        let off = slot as usize * self.slot_len;
        let Ok(sge) = self.recv.sge(off, self.slot_len as u32) else {
            return;
        };
        // SAFETY: the slot lies in `recv`, owned by the channel and registered
        // until after the QP is destroyed; no context holds it any more.
        match unsafe {
            self.cm_id
                .post_recv(WR_RECV << 62 | u64::from(slot), &[sge])
        } {
            Ok(()) => {
                self.posted_recvs += 1;
                if credit {
                    self.pending_credits += 1;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "posting a receive failed");
                self.disconnect_now();
            }
        }
    }

    fn alloc_ctx(&mut self, kind: Kind, slot: u16, len: u32) -> usize {
        let i = self.free.pop().map_or(usize::MAX, usize::from);
        let gen = self.ctxs[i].gen;
        self.ctxs[i] = Ctx {
            gen,
            busy: true,
            kind,
            recv: Some(slot),
            iu_len: len,
            ..Ctx::FREE
        };
        self.active += 1;
        reactor::inflight_add(1);
        i
    }

    fn free_ctx(&mut self, i: usize) {
        let c = self.ctxs[i];
        if !c.busy {
            return;
        }
        self.unqueue(i);
        if let Some(slot) = c.recv {
            self.repost_recv(slot, true);
        }
        if let Some(r) = c.win {
            self.pool.free(r);
        }
        if let Some(r) = c.table {
            self.pool.free(r);
        }
        self.ctxs[i] = Ctx {
            gen: c.gen.wrapping_add(1) & 0x3fff_ffff,
            ..Ctx::FREE
        };
        self.free.push(i as u16);
        self.active -= 1;
        reactor::inflight_sub(1);
        match c.waiter {
            Waiter::None => {}
            Waiter::Local { idx, gen } => self.tmf_done_one(idx as usize, gen),
            Waiter::Remote(k) => {
                if let Some(r) = self.remote.get_mut(k as usize).and_then(|r| r.as_mut()) {
                    r.pending -= 1;
                    if r.pending == 0 {
                        if let Some(r) = self.remote[k as usize].take() {
                            send_tmf_ack(r);
                        }
                    }
                }
            }
        }
    }

    fn dispatch(&mut self, slot: u16, len: u32) {
        let base = self.recv.addr() + (slot as usize * self.slot_len) as u64;
        // SAFETY: the slot's receive completed and it is not reposted until
        // the context we create below (or this function) gives it back.
        let iu = unsafe { raw(base, len as usize) };
        let op = iu.first().copied().and_then(Opcode::from_u8);
        match op {
            Some(Opcode::Cmd) => {
                self.consumed += 1;
                let i = self.alloc_ctx(Kind::Cmd, slot, len);
                self.on_cmd(i, iu);
            }
            Some(Opcode::TskMgmt) => {
                self.consumed += 1;
                let i = self.alloc_ctx(Kind::Tmf, slot, len);
                self.on_tmf(i, iu);
            }
            Some(Opcode::ILogout) => {
                tracing::info!(initiator = %self.info.initiator_str, "SRP_I_LOGOUT received");
                self.state = ChanState::LoggingOut;
                self.info
                    .state
                    .store(ChanState::LoggingOut as u8, Ordering::Relaxed);
                self.early.clear();
            }
            Some(Opcode::CredRsp) | Some(Opcode::AerRsp) => {
                // We never send CRED_REQ / AER_REQ; answers use no credit.
                self.repost_recv(slot, false);
            }
            _ => {
                tracing::warn!(initiator = %self.info.initiator_str, opcode = iu.first().copied(), len, "invalid IU type");
                self.logout(TLogoutReason::InvalidIuType);
            }
        }
    }

    // -----------------------------------------------------------------------
    // SRP_CMD

    fn lun_index(&self, lun: &srp::Lun) -> Option<usize> {
        let n = scsi::decode_lun(&lun.0)?;
        self.shared.lun_numbers.binary_search(&n).ok()
    }

    fn respond_sense(&mut self, i: usize, sense: Sense) {
        let c = &mut self.ctxs[i];
        c.rsp.status = scsi::Status::CheckCondition.code();
        c.rsp.sense = Some(sense);
        c.step = Step::RspPost;
        self.run(i);
    }

    fn on_cmd(&mut self, i: usize, iu: &[u8]) {
        let cmd = match SrpCmd::decode_with_imm_offset(iu, self.p.imm_offset) {
            Ok(c) => c,
            Err(e) => {
                match srp::peek_tag(iu) {
                    Some(tag) => {
                        tracing::debug!(error = %e, "undecodable SRP_CMD");
                        self.ctxs[i].tag = tag;
                        self.respond_sense(i, INVALID_CMD_IU);
                    }
                    None => {
                        self.ctxs[i].recv = None;
                        self.free_ctx(i);
                        self.logout(TLogoutReason::NoReason);
                    }
                }
                return;
            }
        };
        self.ctxs[i].tag = cmd.tag;
        if reactor::draining() {
            self.ctxs[i].rsp.status = scsi::Status::Busy.code();
            self.ctxs[i].step = Step::RspPost;
            return self.run(i);
        }
        let lun = self.lun_index(&cmd.lun);
        self.ctxs[i].lun = lun.unwrap_or(usize::MAX);
        let sctx = scsi::Context {
            luns: &self.shared.lun_numbers,
            pending_sense: None,
        };
        let (out, exp) = match lun {
            Some(l) => {
                let s = &self.shared.luns[l].scsi;
                self.ctxs[i].block_size = s.info().block_size();
                (
                    s.execute(cmd.cdb, &sctx, &mut []),
                    s.expected_transfer(cmd.cdb),
                )
            }
            None => {
                let exp = match cmd.cdb.first() {
                    Some(0x12) | Some(0xA0) | Some(0x03) => scsi::Transfer {
                        direction: Direction::In,
                        len: cmd.data_in.transfer_len().min(4096),
                    },
                    _ => scsi::Transfer::NONE,
                };
                (scsi::execute_absent_lun(cmd.cdb, &sctx, &mut []), exp)
            }
        };
        let desc_in = cmd.data_in.transfer_len();
        let desc_out = cmd.data_out.transfer_len();
        match out {
            Outcome::Check(s) => self.respond_sense(i, s),
            Outcome::Done { .. } => {
                let c = &mut self.ctxs[i];
                if exp.direction == Direction::In && exp.len > 0 && desc_in > 0 {
                    let total = exp.len.min(desc_in).min(DATA_IN_MAX);
                    match data_src(&cmd.data_in, true) {
                        Ok(src) => {
                            c.src = src;
                            c.job = Job::DataIn;
                            c.total = total;
                            c.step = if matches!(src, DataSrc::Table { .. }) {
                                Step::TableBuf
                            } else {
                                Step::WinBuf
                            };
                        }
                        Err(s) => return self.respond_sense(i, s),
                    }
                } else {
                    set_under(&mut c.rsp, desc_in, desc_out);
                    c.step = Step::RspPost;
                }
                self.run(i);
            }
            Outcome::Block(op) => self.start_block(i, op, &cmd, desc_in, desc_out),
        }
    }

    fn start_block(
        &mut self,
        i: usize,
        op: BlockOp,
        cmd: &SrpCmd<'_>,
        desc_in: u64,
        desc_out: u64,
    ) {
        let bs = u64::from(self.ctxs[i].block_size);
        let (job, total, data_in) = match op {
            BlockOp::Read { lba, blocks, fua } => {
                (Job::Read { lba, fua }, u64::from(blocks) * bs, Some(true))
            }
            BlockOp::Write { lba, blocks, fua } => {
                (Job::Write { lba, fua }, u64::from(blocks) * bs, Some(false))
            }
            BlockOp::Flush { .. } => (Job::Flush, 0, None),
            BlockOp::WriteZeroes { lba, blocks, .. } => (Job::WriteZeroes { lba, blocks }, 0, None),
            BlockOp::WriteSame { lba, blocks, .. } => (
                Job::WriteSame {
                    lba,
                    blocks,
                    replicate: false,
                },
                bs,
                Some(false),
            ),
            BlockOp::UnmapParams { param_len } => {
                (Job::Unmap { next: 0 }, u64::from(param_len), Some(false))
            }
        };
        let c = &mut self.ctxs[i];
        c.job = job;
        c.total = total;
        let Some(data_in) = data_in else {
            set_under(&mut c.rsp, desc_in, desc_out);
            c.step = Step::Bdev;
            return self.run(i);
        };
        let (desc, have) = if data_in {
            (&cmd.data_in, desc_in)
        } else {
            (&cmd.data_out, desc_out)
        };
        if have < total {
            // The initiator's buffer is too small for what the CDB asks for.
            let res = u32::try_from(total - have).unwrap_or(u32::MAX);
            if data_in {
                c.rsp.flags |= RspFlags::DIOVER.0;
                c.rsp.di_res = res;
            } else {
                c.rsp.flags |= RspFlags::DOOVER.0;
                c.rsp.do_res = res;
            }
            return self.respond_sense(i, INVALID_CMD_IU);
        }
        if have > total {
            let res = u32::try_from(have - total).unwrap_or(u32::MAX);
            if data_in {
                c.rsp.flags |= RspFlags::DIUNDER.0;
                c.rsp.di_res = res;
            } else {
                c.rsp.flags |= RspFlags::DOUNDER.0;
                c.rsp.do_res = res;
            }
        }
        match data_src(desc, data_in) {
            Ok(src) => {
                c.src = src;
                c.step = match src {
                    DataSrc::Table { .. } => Step::TableBuf,
                    DataSrc::Imm { .. }
                        if matches!(job, Job::Write { .. }) && self.luns[c.lun].buf_align == 1 =>
                    {
                        // Zero copy: the bdev writes straight from the IU.
                        c.chunk = total;
                        Step::Bdev
                    }
                    _ => Step::WinBuf,
                };
                self.run(i)
            }
            Err(s) => self.respond_sense(i, s),
        }
    }

    // -----------------------------------------------------------------------
    // The per-command driver

    fn enqueue(&mut self, q: Queue, i: usize) {
        let c = &mut self.ctxs[i];
        if c.queued == q {
            return;
        }
        debug_assert_eq!(c.queued, Queue::None);
        c.queued = q;
        let list = match q {
            Queue::Buf => &mut self.buf_wait,
            Queue::Sq => &mut self.sq_wait,
            Queue::Bdev => &mut self.bdev_wait,
            Queue::None => return,
        };
        list.push_back(i as u16);
    }

    fn dequeue_head(&mut self, q: Queue, i: usize) {
        if self.ctxs[i].queued != q {
            return;
        }
        let list = match q {
            Queue::Buf => &mut self.buf_wait,
            Queue::Sq => &mut self.sq_wait,
            Queue::Bdev => &mut self.bdev_wait,
            Queue::None => return,
        };
        if list.front() == Some(&(i as u16)) {
            list.pop_front();
            self.ctxs[i].queued = Queue::None;
        }
    }

    fn unqueue(&mut self, i: usize) {
        let q = self.ctxs[i].queued;
        let list = match q {
            Queue::Buf => &mut self.buf_wait,
            Queue::Sq => &mut self.sq_wait,
            Queue::Bdev => &mut self.bdev_wait,
            Queue::None => return,
        };
        list.retain(|&x| x as usize != i);
        self.ctxs[i].queued = Queue::None;
    }

    /// Whether `i` may take from queue `q` now (FIFO: only its head, or
    /// anyone when nobody waits).
    fn my_turn(&self, q: &VecDeque<u16>, i: usize) -> bool {
        q.front().is_none_or(|&h| h as usize == i)
    }

    fn take_sq(&mut self, i: usize, k: u32) -> bool {
        if self.my_turn(&self.sq_wait, i) && self.sq_free >= k {
            self.sq_free -= k;
            self.dequeue_head(Queue::Sq, i);
            true
        } else {
            self.enqueue(Queue::Sq, i);
            false
        }
    }

    fn take_buf(&mut self, i: usize, want: usize, min: usize) -> Option<Run> {
        if self.my_turn(&self.buf_wait, i) {
            if let Some(r) = self.pool.alloc(want, min) {
                self.dequeue_head(Queue::Buf, i);
                return Some(r);
            }
        }
        self.enqueue(Queue::Buf, i);
        None
    }

    /// Resumes waiters whose resources may have freed up.
    fn pump(&mut self) -> usize {
        let mut n = 0;
        for q in [Queue::Sq, Queue::Buf, Queue::Bdev] {
            loop {
                let head = match q {
                    Queue::Sq => self.sq_wait.front(),
                    Queue::Buf => self.buf_wait.front(),
                    Queue::Bdev => self.bdev_wait.front(),
                    Queue::None => None,
                };
                let Some(&h) = head else { break };
                let h = h as usize;
                let before = (self.ctxs[h].step, self.ctxs[h].queued);
                self.run(h);
                if (self.ctxs[h].step, self.ctxs[h].queued) == before && self.ctxs[h].busy {
                    break;
                }
                n += 1;
            }
        }
        n + self.drain_early()
    }

    fn descs(&self, i: usize) -> Descs<'static> {
        let c = &self.ctxs[i];
        match c.src {
            DataSrc::None | DataSrc::Imm { .. } => Descs::Empty,
            DataSrc::Direct(d) => Descs::One(d),
            DataSrc::Inline { data_in } => {
                let Some(slot) = c.recv else {
                    return Descs::Empty;
                };
                let base = self.recv.addr() + (slot as usize * self.slot_len) as u64;
                // SAFETY: the context holds the slot (not posted) and the
                // receive buffer lives as long as the channel; the slice is
                // used only while the context holds the slot.
                let iu = unsafe { raw(base, c.iu_len as usize) };
                match SrpCmd::decode_with_imm_offset(iu, self.p.imm_offset) {
                    Ok(cmd) => match if data_in { cmd.data_in } else { cmd.data_out } {
                        DataDesc::Indirect(ib) => Descs::List(ib.partial),
                        _ => Descs::Empty,
                    },
                    Err(_) => Descs::Empty,
                }
            }
            DataSrc::Table { count, .. } => match c.table {
                // SAFETY: the context owns the table run; the READ that filled
                // it has completed; nothing writes it until it is freed.
                Some(r) => Descs::Table(unsafe { raw(self.pool.addr(r, 0), count as usize * 16) }),
                None => Descs::Empty,
            },
        }
    }

    fn run(&mut self, i: usize) {
        loop {
            let c = self.ctxs[i];
            if !c.busy {
                return;
            }
            if c.aborted {
                if c.quiescent() && c.step != Step::RspWait {
                    self.unqueue(i);
                    self.free_ctx(i);
                }
                return;
            }
            match c.step {
                Step::Idle
                | Step::TableWait
                | Step::FetchWait
                | Step::BdevWait
                | Step::PushWait
                | Step::RspWait
                | Step::TmfWait => return,
                Step::TableBuf => {
                    let DataSrc::Table { remote, .. } = c.src else {
                        return self.respond_sense(i, INVALID_CMD_IU);
                    };
                    let len = remote.len as usize;
                    let Some(r) = self.take_buf(i, len, len) else {
                        return;
                    };
                    self.ctxs[i].table = Some(r);
                    self.ctxs[i].step = Step::TablePost;
                }
                Step::TablePost => {
                    let (DataSrc::Table { remote, .. }, Some(r)) = (c.src, c.table) else {
                        return;
                    };
                    if !self.take_sq(i, 1) {
                        return;
                    }
                    let sge = Sge {
                        addr: self.pool.addr(r, 0),
                        len: remote.len,
                        lkey: self.pool.lkey(),
                    };
                    self.ctxs[i].step = Step::TableWait;
                    self.post(
                        i,
                        &SendWr::read(wr_ctx(i, c.gen), &[sge], remote.va, remote.key),
                    );
                    return;
                }
                Step::WinBuf => {
                    let align = match c.job {
                        Job::DataIn | Job::Unmap { .. } => 1,
                        _ => c.block_size as usize,
                    };
                    let want = match c.job {
                        Job::WriteSame { blocks, .. } => {
                            (u64::from(blocks) * u64::from(c.block_size))
                                .min(self.p.max_window as u64) as usize
                        }
                        _ => (c.total as usize).min(self.p.max_window),
                    };
                    // Responses built in one piece need the whole window.
                    let min = match c.job {
                        Job::DataIn | Job::Unmap { .. } => c.total as usize,
                        _ => align.max(PAGE),
                    };
                    if min > self.pool.capacity() {
                        return self.respond_sense(i, Sense::INTERNAL_TARGET_FAILURE);
                    }
                    let Some(r) = self.take_buf(i, want.max(1), min.max(1)) else {
                        return;
                    };
                    self.ctxs[i].win = Some(r);
                    self.ctxs[i].step = Step::Chunk;
                }
                Step::Chunk => self.start_chunk(i),
                Step::FetchPost => {
                    let descs = self.descs(i);
                    let (_, k, _, _) =
                        descs.walk(c.cur_idx, c.cur_off, c.chunk, usize::MAX, |_, _| {});
                    if !self.take_sq(i, k as u32) {
                        return;
                    }
                    self.ctxs[i].step = Step::FetchWait;
                    self.post_pieces(i, &descs, false);
                    if self.ctxs[i].outstanding == 0 && self.ctxs[i].step == Step::FetchWait {
                        // Nothing to read (zero-length pieces only).
                        self.fetched(i);
                    }
                    return;
                }
                Step::Bdev => return self.submit_bdev(i),
                Step::PushPost => {
                    let descs = self.descs(i);
                    let last = c.done + c.chunk >= c.total;
                    let (_, k, _, _) =
                        descs.walk(c.cur_idx, c.cur_off, c.chunk, usize::MAX, |_, _| {});
                    if !self.take_sq(i, k as u32 + u32::from(last)) {
                        return;
                    }
                    self.post_pieces(i, &descs, true);
                    if last {
                        self.ctxs[i].done += self.ctxs[i].chunk;
                        self.post_rsp(i);
                    } else {
                        self.ctxs[i].step = Step::PushWait;
                        if self.ctxs[i].outstanding == 0 {
                            self.ctxs[i].done += self.ctxs[i].chunk;
                            self.ctxs[i].step = Step::Chunk;
                            continue;
                        }
                    }
                    return;
                }
                Step::RspPost => {
                    if !self.take_sq(i, 1) {
                        return;
                    }
                    self.post_rsp(i);
                    return;
                }
            }
        }
    }

    /// Posts one work request for context `i`.
    fn post(&mut self, i: usize, wr: &SendWr<'_>) -> bool {
        // SAFETY: every SGE we build lies in the channel's registered send
        // buffer or data pool, in a part owned by context `i` until the work
        // request completes (the context is not freed while `outstanding` is
        // non-zero, and the buffers outlive the QP by field order).
        match unsafe { self.cm_id.post_send(wr) } {
            Ok(()) => {
                self.ctxs[i].outstanding += 1;
                true
            }
            Err(e) => {
                // Slots were reserved: an immediate refusal means the QP is
                // unusable.
                self.sq_free += 1;
                tracing::warn!(error = %e, "post_send refused");
                self.ctxs[i].aborted = true;
                self.disconnect_now();
                false
            }
        }
    }

    /// Posts the RDMA WRITEs (`write`) or READs of the current chunk.
    fn post_pieces(&mut self, i: usize, descs: &Descs<'_>, write: bool) {
        let c = self.ctxs[i];
        let Some(win) = c.win else { return };
        let base = self.pool.addr(win, 0);
        let lkey = self.pool.lkey();
        let wr_id = wr_ctx(i, c.gen);
        let mut pieces: [(u64, DirectBuf); MAX_PIECES] = [(0, DirectBuf::default()); MAX_PIECES];
        let mut n = 0;
        let (_, _, idx, off) = descs.walk(c.cur_idx, c.cur_off, c.chunk, MAX_PIECES, |o, d| {
            pieces[n] = (o, d);
            n += 1;
        });
        self.ctxs[i].cur_idx = idx;
        self.ctxs[i].cur_off = off;
        for &(o, d) in &pieces[..n] {
            let sges = [Sge {
                addr: base + o,
                len: d.len,
                lkey,
            }];
            let wr = if write {
                SendWr::write(wr_id, &sges, d.va, d.key)
            } else {
                SendWr::read(wr_id, &sges, d.va, d.key)
            };
            if !self.post(i, &wr) {
                return;
            }
        }
    }

    /// Plans the next chunk of a data command.
    fn start_chunk(&mut self, i: usize) {
        let c = self.ctxs[i];
        let remaining = c.total.saturating_sub(c.done);
        if remaining == 0 {
            self.ctxs[i].step = Step::RspPost;
            return;
        }
        let cap = c.win.map_or(0, |w| w.bytes()) as u64;
        if c.job == Job::DataIn {
            let Some(win) = c.win else {
                return self.respond_sense(i, Sense::INTERNAL_TARGET_FAILURE);
            };
            let Some(slot) = c.recv else { return };
            let base = self.recv.addr() + (slot as usize * self.slot_len) as u64;
            // SAFETY: the context holds the slot; see `descs`.
            let iu = unsafe { raw(base, c.iu_len as usize) };
            let Ok(cmd) = SrpCmd::decode_with_imm_offset(iu, self.p.imm_offset) else {
                return self.respond_sense(i, INVALID_CMD_IU);
            };
            let len = (c.total.min(cap)) as usize;
            // SAFETY: the context owns the window; no I/O is in flight on it.
            let out = unsafe { raw_mut(self.pool.ptr(win), len) };
            let sctx = scsi::Context {
                luns: &self.shared.lun_numbers,
                pending_sense: None,
            };
            let r = match self.shared.luns.get(c.lun) {
                Some(l) => l.scsi.execute(cmd.cdb, &sctx, out),
                None => scsi::execute_absent_lun(cmd.cdb, &sctx, out),
            };
            let desc_in = cmd.data_in.transfer_len();
            match r {
                Outcome::Done { data_in_len } => {
                    let n = data_in_len as u64;
                    let cc = &mut self.ctxs[i];
                    cc.total = n;
                    cc.chunk = n;
                    if desc_in > n {
                        cc.rsp.flags |= RspFlags::DIUNDER.0;
                        cc.rsp.di_res = u32::try_from(desc_in - n).unwrap_or(u32::MAX);
                    }
                    cc.step = if n == 0 {
                        Step::RspPost
                    } else {
                        Step::PushPost
                    };
                    let (covered, _, _, _) = self.descs(i).walk(0, 0, n, MAX_PIECES, |_, _| {});
                    if covered < n {
                        self.respond_sense(i, INVALID_CMD_IU);
                    }
                }
                Outcome::Check(s) => self.respond_sense(i, s),
                Outcome::Block(_) => self.respond_sense(i, Sense::INTERNAL_TARGET_FAILURE),
            }
            return;
        }
        if let DataSrc::Imm { off, len } = c.src {
            // One chunk: the immediate data, copied into the window.
            let Some(slot) = c.recv else { return };
            let Some(win) = c.win else {
                return self.respond_sense(i, Sense::INTERNAL_TARGET_FAILURE);
            };
            let n = remaining.min(u64::from(len)).min(cap);
            if n < remaining {
                return self.respond_sense(i, INVALID_CMD_IU);
            }
            let src = self.recv.addr() + (slot as usize * self.slot_len + off as usize) as u64;
            // SAFETY: the IU's slot is held by this context and the window is
            // owned by it; they are different allocations.
            unsafe {
                std::ptr::copy_nonoverlapping(src as *const u8, self.pool.ptr(win), n as usize)
            };
            self.ctxs[i].chunk = n;
            return self.fetched(i);
        }
        let align = match c.job {
            Job::Unmap { .. } => 1,
            _ => u64::from(c.block_size),
        };
        let descs = self.descs(i);
        let max = remaining.min(cap);
        let (covered, _, _, _) = descs.walk(c.cur_idx, c.cur_off, max, MAX_PIECES, |_, _| {});
        let chunk = if covered == max {
            covered
        } else {
            covered / align * align
        };
        if chunk == 0 {
            // Descriptors exhausted or too fragmented to move one block in
            // MAX_PIECES work requests.
            return self.respond_sense(i, INVALID_CMD_IU);
        }
        let cc = &mut self.ctxs[i];
        cc.chunk = chunk;
        cc.step = match c.job {
            Job::Read { .. } => Step::Bdev,
            _ => Step::FetchPost,
        };
    }

    /// The data-out bytes of the current chunk are in the window.
    fn fetched(&mut self, i: usize) {
        let c = self.ctxs[i];
        match c.job {
            Job::Write { .. } => self.ctxs[i].step = Step::Bdev,
            Job::WriteSame { lba, blocks, .. } => {
                let Some(win) = c.win else { return };
                let bs = c.block_size as usize;
                // SAFETY: the context owns the window; the READ completed.
                let w = unsafe { raw_mut(self.pool.ptr(win), win.bytes()) };
                let op = BlockOp::WriteSame {
                    lba,
                    blocks,
                    unmap: false,
                }
                .with_write_same_data(&w[..bs]);
                let cc = &mut self.ctxs[i];
                if let BlockOp::WriteZeroes { .. } = op {
                    cc.job = Job::WriteZeroes { lba, blocks };
                } else {
                    let fit = w.len() / bs;
                    for k in 1..fit {
                        w.copy_within(0..bs, k * bs);
                    }
                    cc.job = Job::WriteSame {
                        lba,
                        blocks,
                        replicate: true,
                    };
                    cc.total = u64::from(blocks) * bs as u64;
                    cc.done = 0;
                }
                cc.step = Step::Bdev;
            }
            Job::Unmap { .. } => self.ctxs[i].step = Step::Bdev,
            _ => self.ctxs[i].step = Step::RspPost,
        }
        self.run(i)
    }

    fn submit_bdev(&mut self, i: usize) {
        let c = self.ctxs[i];
        let Some(lun) = self.shared.luns.get(c.lun) else {
            return self.respond_sense(i, Sense::LUN_NOT_SUPPORTED);
        };
        if !self.my_turn(&self.bdev_wait, i) {
            return self.enqueue(Queue::Bdev, i);
        }
        let bs = u64::from(c.block_size);
        let win_ptr = c.win.map(|w| self.pool.ptr(w));
        let mut iov = [IoVec {
            base: std::ptr::null_mut(),
            len: 0,
        }];
        let req = match c.job {
            Job::Read { lba, fua } | Job::Write { lba, fua } => {
                let base = match (win_ptr, c.src) {
                    (Some(p), _) => p,
                    (None, DataSrc::Imm { off, .. }) => {
                        let slot = c.recv.unwrap_or(0) as usize;
                        (self.recv.addr() as usize + slot * self.slot_len + off as usize) as *mut u8
                    }
                    _ => return self.respond_sense(i, Sense::INTERNAL_TARGET_FAILURE),
                };
                iov[0] = IoVec {
                    base,
                    len: c.chunk as usize,
                };
                let first = lba + c.done / bs;
                let n = c.chunk / bs;
                if matches!(c.job, Job::Read { .. }) {
                    IoRequest::read(first, n, &iov).with_fua(fua)
                } else {
                    IoRequest::write(first, n, &iov).with_fua(fua)
                }
            }
            Job::WriteSame {
                lba,
                replicate: true,
                ..
            } => {
                let Some(p) = win_ptr else { return };
                let cap = c.win.map_or(0, |w| w.bytes()) as u64 / bs * bs;
                let chunk = (c.total - c.done).min(cap);
                self.ctxs[i].chunk = chunk;
                iov[0] = IoVec {
                    base: p,
                    len: chunk as usize,
                };
                IoRequest::write(lba + c.done / bs, chunk / bs, &iov).with_fua(true)
            }
            Job::Flush => IoRequest::flush(),
            Job::WriteZeroes { lba, blocks } => IoRequest::write_zeroes(lba, u64::from(blocks)),
            Job::Unmap { next } => {
                let Some(win) = c.win else { return };
                // SAFETY: the context owns the window; the parameter list
                // READ completed and nothing writes the window now.
                let params = unsafe { raw(self.pool.addr(win, 0), c.total as usize) };
                match lun.scsi.parse_unmap(params) {
                    Err(s) => return self.respond_sense(i, s),
                    Ok(mut it) => match it.nth(next as usize) {
                        None => {
                            self.ctxs[i].step = Step::RspPost;
                            return self.run(i);
                        }
                        Some(r) => IoRequest::unmap(r.lba, u64::from(r.blocks)),
                    },
                }
            }
            Job::None | Job::DataIn | Job::WriteSame { .. } => {
                return self.respond_sense(i, Sense::INTERNAL_TARGET_FAILURE)
            }
        };
        let tag = u64::from(c.gen) << 32 | i as u64;
        // SAFETY: the iovec points into the window or the IU slot owned by
        // context `i`; neither is freed nor reused while `bdev_busy` is set,
        // and the channel is not released before its bdev I/O completes.
        match unsafe { self.luns[c.lun].ch.submit(&req, tag) } {
            Ok(()) => {
                self.dequeue_head(Queue::Bdev, i);
                let cc = &mut self.ctxs[i];
                cc.bdev_busy = true;
                cc.step = Step::BdevWait;
            }
            Err(bdev::QueueFull) => self.enqueue(Queue::Bdev, i),
        }
    }

    fn on_bdev(&mut self, tag: u64, st: IoStatus) {
        let i = (tag & 0xffff_ffff) as usize;
        let gen = (tag >> 32) as u32;
        let Some(c) = self.ctxs.get(i).copied() else {
            return;
        };
        if !c.busy || c.gen != gen || !c.bdev_busy {
            return;
        }
        self.ctxs[i].bdev_busy = false;
        if c.aborted {
            return self.run(i);
        }
        if !st.is_ok() {
            let write = !matches!(c.job, Job::Read { .. });
            let sense = match st {
                IoStatus::MediumError => {
                    scsi::sense_for_block_failure(BlockFailure::Medium { write })
                }
                IoStatus::PathError => scsi::sense_for_block_failure(BlockFailure::Path),
                IoStatus::InvalidRequest => scsi::sense_for_block_failure(BlockFailure::Invalid),
                IoStatus::Unsupported => scsi::sense_for_block_failure(BlockFailure::Unsupported),
                IoStatus::Aborted => scsi::sense_for_block_failure(BlockFailure::Aborted),
                IoStatus::ReadOnly => Sense::WRITE_PROTECTED,
                IoStatus::Success => Sense::NO_SENSE,
            };
            return self.respond_sense(i, sense);
        }
        let cc = &mut self.ctxs[i];
        cc.step = match c.job {
            Job::Read { .. } => Step::PushPost,
            Job::Write { .. } => {
                cc.done += c.chunk;
                if cc.done < cc.total {
                    Step::Chunk
                } else {
                    Step::RspPost
                }
            }
            Job::WriteSame {
                replicate: true, ..
            } => {
                cc.done += c.chunk;
                if cc.done < cc.total {
                    Step::Bdev
                } else {
                    Step::RspPost
                }
            }
            Job::Unmap { next } => {
                cc.job = Job::Unmap { next: next + 1 };
                Step::Bdev
            }
            _ => Step::RspPost,
        };
        self.run(i)
    }

    fn on_ctx_wr(&mut self, i: usize, gen: u32, status: WcStatus) {
        let Some(c) = self.ctxs.get(i).copied() else {
            return;
        };
        if !c.busy || c.gen != gen {
            return;
        }
        self.ctxs[i].outstanding = c.outstanding.saturating_sub(1);
        if !status.is_ok() {
            self.ctxs[i].aborted = true;
            if status != WcStatus::WrFlush {
                self.fatal("RDMA work request", status);
            }
        }
        if self.ctxs[i].outstanding > 0 {
            return;
        }
        let c = self.ctxs[i];
        if c.step == Step::RspWait {
            return self.free_ctx(i);
        }
        if c.aborted {
            return self.run(i);
        }
        match c.step {
            Step::TableWait => {
                let DataSrc::Table { count, .. } = c.src else {
                    return;
                };
                let descs = self.descs(i);
                let sum: u64 = (0..count)
                    .filter_map(|k| descs.get(k))
                    .map(|d| u64::from(d.len))
                    .sum();
                if sum < c.total {
                    return self.respond_sense(i, INVALID_CMD_IU);
                }
                self.ctxs[i].step = Step::WinBuf;
                self.run(i)
            }
            Step::FetchWait => self.fetched(i),
            Step::PushWait => {
                let cc = &mut self.ctxs[i];
                cc.done += cc.chunk;
                cc.step = Step::Chunk;
                self.run(i)
            }
            _ => {}
        }
    }

    /// Posts the response of context `i` (one send-queue slot is reserved
    /// for it by the caller).
    fn post_rsp(&mut self, i: usize) {
        // Give back the IU's receive buffer first: its credit travels in
        // this very response.
        if let Some(slot) = self.ctxs[i].recv.take() {
            self.repost_recv(slot, true);
        }
        if self.state >= ChanState::Disconnected {
            self.sq_free += 1;
            self.ctxs[i].aborted = true;
            return self.run(i);
        }
        let delta = std::mem::take(&mut self.pending_credits);
        self.granted += delta as u64;
        let c = self.ctxs[i];
        let mut sense = [0u8; scsi::FIXED_SENSE_LEN];
        let mut resp = [0u8; 4];
        let mut rsp = SrpRsp {
            sol_not: 0,
            req_lim_delta: delta,
            tag: c.tag,
            flags: RspFlags(c.rsp.flags),
            status: c.rsp.status,
            data_out_res_cnt: c.rsp.do_res,
            data_in_res_cnt: c.rsp.di_res,
            response_data: &[],
            sense_data: &[],
        };
        if let Some(s) = c.rsp.sense {
            s.to_fixed(&mut sense);
            rsp.sense_data = &sense;
        }
        if let Some(code) = c.rsp.tmf_code {
            resp[3] = code;
            rsp.response_data = &resp;
        }
        let off = i * SEND_SLOT;
        // SAFETY: send slot `i` belongs to context `i`; its previous SEND
        // completed before the context was freed.
        let buf = unsafe { raw_mut((self.send.addr() as usize + off) as *mut u8, SEND_SLOT) };
        // Cannot fail: a response is at most 36 + 4 + 18 bytes.
        let n = rsp.encode(buf).unwrap_or(SrpRsp::HEADER_SIZE);
        let sge = Sge {
            addr: self.send.addr() + off as u64,
            len: n as u32,
            lkey: self.send.lkey(),
        };
        self.ctxs[i].rsp_posted = true;
        self.ctxs[i].step = Step::RspWait;
        self.post(i, &SendWr::send(wr_ctx(i, c.gen), &[sge]));
        if self.ctxs[i].outstanding == 0 {
            self.free_ctx(i);
        }
    }

    // -----------------------------------------------------------------------
    // Task management

    fn on_tmf(&mut self, i: usize, iu: &[u8]) {
        let t = match TskMgmt::decode(iu) {
            Ok(t) => t,
            Err(_) => {
                match srp::peek_tag(iu) {
                    Some(tag) => {
                        let c = &mut self.ctxs[i];
                        c.tag = tag;
                        c.rsp.tmf_code = Some(tsk_mgmt_rsp::FIELDS_INVALID);
                        c.step = Step::RspPost;
                        self.run(i);
                    }
                    None => {
                        self.ctxs[i].recv = None;
                        self.free_ctx(i);
                        self.logout(TLogoutReason::NoReason);
                    }
                }
                return;
            }
        };
        let gen = self.ctxs[i].gen;
        self.ctxs[i].tag = t.tag;
        self.ctxs[i].rsp.tmf_code = Some(tsk_mgmt_rsp::COMPLETE);
        self.ctxs[i].step = Step::TmfWait;
        let me = Waiter::Local { idx: i as u16, gen };
        let lun = self.lun_index(&t.lun);
        match t.function {
            TaskMgmtFunction::AbortTask => {
                // SAM: aborting a task that does not exist (or already
                // answered) is FUNCTION COMPLETE.
                let found = (0..self.ctxs.len()).find(|&j| {
                    let c = &self.ctxs[j];
                    j != i
                        && c.busy
                        && c.kind == Kind::Cmd
                        && c.tag == t.task_tag
                        && !c.rsp_posted
                        && !c.aborted
                });
                if let Some(j) = found {
                    self.abort_cmd(j, me);
                }
            }
            TaskMgmtFunction::AbortTaskSet
            | TaskMgmtFunction::ClearTaskSet
            | TaskMgmtFunction::LunReset => {
                let Some(l) = lun else {
                    self.ctxs[i].rsp.tmf_code = Some(tsk_mgmt_rsp::FAILED);
                    self.ctxs[i].step = Step::RspPost;
                    return self.run(i);
                };
                self.abort_lun(l, me);
                // The other channels of this I_T nexus (multichannel).
                let origin = (self.info.reactor, self.token, i as u16, gen);
                for (reactor, token) in self.shared.siblings(&self.info.initiator, self.token) {
                    self.ctxs[i].tmf_pending += 1;
                    reactor::send(reactor, move || {
                        let ra = RemoteAbort {
                            reply_reactor: origin.0,
                            reply_token: origin.1,
                            tmf_idx: origin.2,
                            tmf_gen: origin.3,
                            pending: 0,
                        };
                        if with_channel(token, |c| c.remote_abort(l, ra)).is_none() {
                            send_tmf_ack(ra);
                        }
                    });
                }
                if t.function == TaskMgmtFunction::LunReset {
                    tracing::info!(initiator = %self.info.initiator_str, lun = self.shared.lun_numbers[l], "LUN RESET");
                }
            }
            TaskMgmtFunction::ClearAca | TaskMgmtFunction::Other(_) => {
                self.ctxs[i].rsp.tmf_code = Some(tsk_mgmt_rsp::NOT_SUPPORTED);
            }
        }
        if self.ctxs[i].tmf_pending == 0 {
            self.ctxs[i].step = Step::RspPost;
        }
        self.run(i)
    }

    fn abort_lun(&mut self, l: usize, waiter: Waiter) -> u32 {
        let mut n = 0;
        for j in 0..self.ctxs.len() {
            let c = &self.ctxs[j];
            if c.busy
                && c.kind == Kind::Cmd
                && c.lun == l
                && !c.rsp_posted
                && !c.aborted
                && self.abort_cmd(j, waiter)
            {
                n += 1;
            }
        }
        n
    }

    /// Aborts command `j`; returns whether the waiter must wait for it.
    fn abort_cmd(&mut self, j: usize, waiter: Waiter) -> bool {
        self.ctxs[j].aborted = true;
        if self.ctxs[j].quiescent() {
            self.unqueue(j);
            self.free_ctx(j);
            return false;
        }
        self.ctxs[j].waiter = waiter;
        match waiter {
            Waiter::Local { idx, .. } => self.ctxs[idx as usize].tmf_pending += 1,
            Waiter::Remote(k) => {
                if let Some(r) = self.remote.get_mut(k as usize).and_then(|r| r.as_mut()) {
                    r.pending += 1;
                }
            }
            Waiter::None => {}
        }
        true
    }

    fn remote_abort(&mut self, l: usize, ra: RemoteAbort) {
        if self.state >= ChanState::Disconnected {
            return send_tmf_ack(ra);
        }
        let k = match self.remote.iter().position(|r| r.is_none()) {
            Some(k) => k,
            None => {
                self.remote.push(None);
                self.remote.len() - 1
            }
        };
        self.remote[k] = Some(ra);
        self.abort_lun(l, Waiter::Remote(k as u16));
        if self.remote[k].is_some_and(|r| r.pending == 0) {
            if let Some(r) = self.remote[k].take() {
                send_tmf_ack(r);
            }
        }
    }

    fn tmf_done_one(&mut self, idx: usize, gen: u32) {
        let Some(t) = self.ctxs.get_mut(idx) else {
            return;
        };
        if !t.busy || t.gen != gen || t.kind != Kind::Tmf {
            return;
        }
        t.tmf_pending = t.tmf_pending.saturating_sub(1);
        if t.tmf_pending == 0 && t.step == Step::TmfWait {
            t.step = Step::RspPost;
            self.run(idx);
        }
    }

    pub(crate) fn tmf_ack(&mut self, idx: u16, gen: u32) {
        self.tmf_done_one(idx as usize, gen)
    }
}

fn send_tmf_ack(r: RemoteAbort) {
    let RemoteAbort {
        reply_reactor,
        reply_token,
        tmf_idx,
        tmf_gen,
        ..
    } = r;
    reactor::send(reply_reactor, move || {
        with_channel(reply_token, |c| c.tmf_ack(tmf_idx, tmf_gen));
    });
}

/// Underflow residuals for a command that moves no data although the
/// initiator described buffers.
fn set_under(r: &mut RspInfo, desc_in: u64, desc_out: u64) {
    if desc_in > 0 {
        r.flags |= RspFlags::DIUNDER.0;
        r.di_res = u32::try_from(desc_in).unwrap_or(u32::MAX);
    }
    if desc_out > 0 {
        r.flags |= RspFlags::DOUNDER.0;
        r.do_res = u32::try_from(desc_out).unwrap_or(u32::MAX);
    }
}

fn data_src(d: &DataDesc<'_>, data_in: bool) -> Result<DataSrc, Sense> {
    Ok(match d {
        DataDesc::None => DataSrc::None,
        DataDesc::Direct(b) => DataSrc::Direct(*b),
        DataDesc::Indirect(ib) => {
            if ib.is_complete() {
                DataSrc::Inline { data_in }
            } else {
                let len = ib.table_desc.len;
                if len == 0 || len > MAX_TABLE_BYTES {
                    return Err(INVALID_CMD_IU);
                }
                DataSrc::Table {
                    remote: ib.table_desc,
                    count: len / 16,
                }
            }
        }
        DataDesc::Immediate(im) => {
            if data_in {
                return Err(INVALID_CMD_IU);
            }
            DataSrc::Imm {
                off: im.offset,
                len: im.data.len() as u32,
            }
        }
    })
}
