//! One RDMA channel of a session, owned by its reactor: the rdma_cm login
//! (SRP_LOGIN_REQ in the connect private data, as ib_srp sends it), the
//! queue pair, its registered buffers, and the connection's life cycle.
//! The request engine on top of it is in [`crate::io`].
//!
//! A channel keeps its own rdma_cm event channel, so connecting and
//! reconnecting happen on the reactor that owns the QP, with no routing of
//! events between threads. The coordinator ([`crate::session`]) tells it
//! when to connect and when to drop its connection.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bdev::IoStatus;
use rdma::{
    AccessFlags, CmChannel, CmEventKind, CmId, Completion, ConnectOptions, Cq, MrBuf, QpCaps,
};
use srp::{BufFormats, LoginRej, LoginRejReason, LoginReq, LoginRsp, MultiChannelAction, PortId};

use crate::discovery::{Discovery, Geometry};
use crate::io::Engine;
use crate::mrmap::MrCache;
use crate::session::{Event, LinkState, Shared};

thread_local! {
    static CONNS: RefCell<HashMap<u64, Rc<RefCell<Conn>>>> = RefCell::new(HashMap::new());
}

/// Runs `f` on session `sid`'s channel of the calling reactor, if any.
pub(crate) fn with_conn<R>(sid: u64, f: impl FnOnce(&mut Conn) -> R) -> Option<R> {
    let c = lookup(sid)?;
    let mut b = c.try_borrow_mut().ok()?;
    Some(f(&mut b))
}

/// The calling reactor's channel of session `sid`.
pub(crate) fn lookup(sid: u64) -> Option<Rc<RefCell<Conn>>> {
    CONNS.with(|m| m.borrow().get(&sid).cloned())
}

/// Creates channel `ch` of the session on the calling reactor, with its
/// poller (connection events, time-outs and completions while no consumer
/// polls).
pub(crate) fn install(shared: Arc<Shared>, ch: usize) -> Result<(), String> {
    let cm =
        CmChannel::new(shared.cfg.provider).map_err(|e| format!("rdma_cm event channel: {e}"))?;
    let sid = shared.id;
    let conn = Rc::new(RefCell::new(Conn::new(shared, ch, cm)));
    let c2 = Rc::clone(&conn);
    let pid = reactor::register_poller("srp_initiator", move || match c2.try_borrow_mut() {
        Ok(mut c) => reactor::Poll::from_count(c.progress()),
        Err(_) => reactor::Poll::Idle,
    });
    conn.borrow_mut().poller = Some(pid);
    CONNS.with(|m| m.borrow_mut().insert(sid, conn));
    Ok(())
}

/// Removes the calling reactor's channel of session `sid` (after detach).
pub(crate) fn uninstall(sid: u64) {
    if let Some(c) = CONNS.with(|m| m.borrow_mut().remove(&sid)) {
        if let Ok(mut c) = c.try_borrow_mut() {
            c.teardown("detached", false);
            if let Some(p) = c.poller.take() {
                reactor::unregister_poller(p);
            }
        }
    }
}

/// How long address and route resolution may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a connect (login) may take before we give up on it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a live channel reads its rdma_cm events (a syscall on verbs).
const CM_POLL_INTERVAL: Duration = Duration::from_millis(1);
/// Receive buffers beyond the credits, for the target's own requests
/// (SRP_CRED_REQ, SRP_AER_REQ, SRP_T_LOGOUT).
pub(crate) const EXTRA_RECVS: usize = 8;
/// Send slots for task management and for answers to the target.
pub(crate) const TMF_SLOTS: usize = 2;
/// Send slots for SRP_CRED_RSP / SRP_AER_RSP.
pub(crate) const RSP_SLOTS: usize = 8;
/// Bytes of descriptor table per command (256 descriptors).
pub(crate) const TABLE_BYTES: usize = 4096;
/// Largest transfer of one SRP_CMD (`max_sect` is capped here).
pub(crate) const MAX_CMD_BYTES: u32 = 8 << 20;
/// Bytes of bounce buffer per channel (at most; one slot of the largest
/// command at least).
const BOUNCE_TOTAL: usize = 8 << 20;

/// Bounce buffers of a channel: (bytes per slot, slots). A slot holds the
/// largest command, so a bounced command is never split further.
pub(crate) fn bounce_geometry(cfg: &crate::params::SessionConfig) -> (usize, usize) {
    // At least one block of the largest size (max_sect may be below it).
    let slot = (cfg.max_transfer.min(MAX_CMD_BYTES) as usize).max(65536);
    (slot, (BOUNCE_TOTAL / slot).clamp(1, 4))
}
/// Size of the scratch buffer (discovery data).
pub(crate) const SCRATCH_BYTES: usize = 4096;
/// Size of the zero block (WRITE SAME data: one block of the largest size).
pub(crate) const ZERO_BYTES: usize = 65536;

/// Where a channel is in connecting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Down,
    Resolving,
    Routing,
    Connecting,
    Live,
}

/// Registered buffers of a channel (allocated once, in the session PD, and
/// kept across reconnects).
pub(crate) struct Bufs {
    pub recv: MrBuf,
    pub send: MrBuf,
    /// Indirect descriptor tables and UNMAP parameter lists, one
    /// [`TABLE_BYTES`] slot per command; the target may RDMA READ it.
    pub tables: MrBuf,
    /// Bounce buffers for memory outside every registered region.
    pub bounce: MrBuf,
    /// Discovery data (RDMA WRITE target) and the zero block.
    pub scratch: MrBuf,
    pub zero: MrBuf,
    pub recv_slot: usize,
    pub send_slot: usize,
}

/// What the login negotiated.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Negotiated {
    pub req_lim: i64,
    pub immediate: bool,
    pub max_imm: u32,
    /// Descriptors an SRP_CMD carries inline.
    pub inline_descs: usize,
}

/// One opened bdev channel's share of the connection.
pub(crate) struct Consumer {
    pub q: VecDeque<(u64, IoStatus)>,
    pub inflight: usize,
    /// A proxy on another reactor (reactor, key): completions go there.
    pub forward: Option<crate::proxy::Forward>,
    /// The channel was dropped; the slot is kept until its requests drain.
    pub gone: bool,
}

/// One channel.
pub(crate) struct Conn {
    pub sh: Arc<Shared>,
    pub ch: usize,
    cm: CmChannel,
    pub phase: Phase,
    attempt: u64,
    mode: MultiChannelAction,
    deadline: Instant,
    /// The connection (owns the QP). Field order: dropped before `cq` and
    /// the buffers, so the device stops using them first.
    pub id: Option<CmId>,
    pub cq: Option<Cq>,
    pub bufs: Option<Bufs>,
    pub mrs: Option<MrCache>,
    pub neg: Negotiated,
    pub sq_free: u32,
    pub engine: Engine,
    pub discovery: Option<Discovery>,
    pub poller: Option<reactor::PollerId>,
    next_cm: Instant,
    pub now: Instant,
    pub next_scan: Instant,
    /// Completions not yet reported, per consumer.
    pub consumers: Vec<Option<Consumer>>,
    /// Consumers standing for proxies on other reactors, by (reactor, key).
    pub remote: HashMap<(usize, u64), u32>,
    /// Proxied requests that found the channel full.
    pub remote_backlog: VecDeque<(u32, u64, crate::proxy::Forwarded)>,
    wc: [Completion; 32],
    logged_unknown: bool,
}

impl Conn {
    fn new(sh: Arc<Shared>, ch: usize, cm: CmChannel) -> Conn {
        let q = sh.cfg.queue_size as usize;
        let now = Instant::now();
        Conn {
            engine: Engine::new(q, &sh.cfg),
            sh,
            ch,
            cm,
            phase: Phase::Down,
            attempt: 0,
            mode: MultiChannelAction::Single,
            deadline: now,
            id: None,
            cq: None,
            bufs: None,
            mrs: None,
            neg: Negotiated::default(),
            sq_free: 0,
            discovery: None,
            poller: None,
            next_cm: now,
            now,
            next_scan: now,
            consumers: Vec::new(),
            remote: HashMap::new(),
            remote_backlog: VecDeque::new(),
            wc: [Completion::EMPTY; 32],
            logged_unknown: false,
        }
    }

    fn info(&self) -> &crate::session::ChanInfo {
        &self.sh.chans[self.ch]
    }

    fn set_link_state(&self, s: LinkState) {
        self.info().state.store(s as u8, Ordering::Relaxed);
    }

    // -------------------------------------------------------------------
    // Connecting

    /// Logs in (from scratch): drops any old connection, then resolves,
    /// connects and reports the result to the coordinator.
    pub fn connect(&mut self, mode: MultiChannelAction, attempt: u64) {
        self.teardown("reconnecting", true);
        self.attempt = attempt;
        self.mode = mode;
        self.set_link_state(LinkState::Connecting);
        let cfg = &self.sh.cfg;
        let r = self.cm.create_id().and_then(|mut id| {
            id.resolve_addr(cfg.src, cfg.dest, RESOLVE_TIMEOUT)?;
            Ok(id)
        });
        match r {
            Ok(id) => {
                self.id = Some(id);
                self.phase = Phase::Resolving;
                self.deadline = Instant::now() + RESOLVE_TIMEOUT + Duration::from_secs(1);
                self.next_cm = Instant::now();
            }
            Err(e) => self.connect_failed(format!("{}: rdma_resolve_addr: {e}", cfg.dest)),
        }
    }

    fn connect_failed(&mut self, why: String) {
        self.drop_link();
        self.phase = Phase::Down;
        self.set_link_state(LinkState::Down);
        tracing::debug!(bdev = %self.sh.cfg.name, channel = self.ch, error = %why, "SRP login failed");
        self.sh.to_coord(Event::Connected {
            ch: self.ch,
            attempt: self.attempt,
            result: Err(why),
        });
    }

    fn on_addr_resolved(&mut self) -> Result<(), String> {
        let dest = self.sh.cfg.dest;
        let id = self.id.as_mut().ok_or("no CM id")?;
        let dev = id
            .device_name()
            .ok_or_else(|| format!("{dest}: the route has no RDMA device"))?;
        let ctx =
            rdma::Context::open(self.sh.cfg.provider, &dev).map_err(|e| format!("{dev}: {e}"))?;
        let table = self.sh.mr_table(&ctx)?;
        if self.bufs.is_none() {
            self.bufs = Some(
                self.alloc_bufs(table.pd())
                    .map_err(|e| format!("registering buffers: {e}"))?,
            );
        }
        if self.mrs.is_none() {
            self.mrs = Some(MrCache::new(Arc::clone(&table)));
        }
        // Initiator port id: initiator_ext ‖ port GUID (GID 0's interface id).
        let guid = ctx
            .query_gid(1, 0)
            .map(|g| u64::from_be_bytes(g.0[8..16].try_into().unwrap_or([0; 8])))
            .or_else(|_| ctx.query_device().map(|a| a.node_guid))
            .unwrap_or(0);
        let port = PortId::from_parts(self.sh.cfg.initiator_ext, guid);
        *self
            .sh
            .initiator_port_id
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = crate::session::format_port_id(&port);
        self.engine.initiator_port_id = port;
        let id = self.id.as_mut().ok_or("no CM id")?;
        id.resolve_route(RESOLVE_TIMEOUT)
            .map_err(|e| format!("{dest}: rdma_resolve_route: {e}"))?;
        let cq_len =
            (self.sh.cfg.queue_size as usize * 2 + EXTRA_RECVS + TMF_SLOTS + RSP_SLOTS + 16) as u32;
        self.cq = Some(Cq::new(&ctx, cq_len).map_err(|e| format!("{dev}: ibv_create_cq: {e}"))?);
        self.phase = Phase::Routing;
        self.deadline = Instant::now() + RESOLVE_TIMEOUT + Duration::from_secs(1);
        Ok(())
    }

    fn alloc_bufs(&self, pd: &rdma::Pd) -> rdma::Result<Bufs> {
        let q = self.sh.cfg.queue_size as usize;
        let iu = self.sh.cfg.req_it_iu_len() as usize;
        let recv_slot = iu.max(4096).div_ceil(64) * 64;
        let send_slot = iu.div_ceil(64) * 64;
        let rw = AccessFlags::LOCAL_WRITE
            .union(AccessFlags::REMOTE_READ)
            .union(AccessFlags::REMOTE_WRITE);
        let ro = AccessFlags::LOCAL_WRITE.union(AccessFlags::REMOTE_READ);
        // SAFETY: the target gets the rkeys of `tables`, `zero` (read) and
        // of `bounce`, `scratch` (read/write) only in descriptors of
        // commands in flight; the channel touches those bytes only while no
        // command that names them is outstanding (before send, after the
        // response), so no Rust slice aliases a remote access.
        let (tables, bounce, scratch, zero) = unsafe {
            (
                MrBuf::with_access(pd, q * TABLE_BYTES, ro)?,
                {
                    let (slot, n) = bounce_geometry(&self.sh.cfg);
                    MrBuf::with_access(pd, slot * n, rw)?
                },
                MrBuf::with_access(pd, SCRATCH_BYTES, rw)?,
                MrBuf::with_access(pd, ZERO_BYTES, ro)?,
            )
        };
        Ok(Bufs {
            recv: MrBuf::new(pd, (q + EXTRA_RECVS) * recv_slot)?,
            send: MrBuf::new(pd, (q + TMF_SLOTS + RSP_SLOTS) * send_slot)?,
            tables,
            bounce,
            scratch,
            zero,
            recv_slot,
            send_slot,
        })
    }

    fn on_route_resolved(&mut self) -> Result<(), String> {
        let cfg = &self.sh.cfg;
        let q = cfg.queue_size;
        let (Some(id), Some(cq), Some(bufs)) =
            (self.id.as_mut(), self.cq.as_ref(), self.bufs.as_ref())
        else {
            return Err("channel not prepared".into());
        };
        let table = self.sh.mr_table_existing().ok_or("no protection domain")?;
        let want_sq = q + (TMF_SLOTS + RSP_SLOTS) as u32 + 8;
        let caps = id
            .create_qp(
                table.pd(),
                cq,
                cq,
                QpCaps {
                    max_send_wr: want_sq,
                    max_recv_wr: q + EXTRA_RECVS as u32,
                    max_send_sge: 1,
                    max_recv_sge: 1,
                    max_inline_data: 0,
                },
            )
            .map_err(|e| format!("rdma_create_qp: {e}"))?;
        if caps.max_recv_wr < q + EXTRA_RECVS as u32 {
            return Err(format!(
                "the device grants only {} receives",
                caps.max_recv_wr
            ));
        }
        self.sq_free = caps.max_send_wr.min(want_sq);
        for slot in 0..q as usize + EXTRA_RECVS {
            let sge = bufs
                .recv
                .sge(slot * bufs.recv_slot, bufs.recv_slot as u32)
                .map_err(|e| e.to_string())?;
            // SAFETY: the slot lies in `bufs.recv`, owned by this channel and
            // dropped only after the QP (`id`) is destroyed; a posted slot is
            // read only after its completion.
            unsafe { id.post_recv(crate::io::wr_recv(slot), &[sge]) }
                .map_err(|e| format!("post_recv: {e}"))?;
        }
        let req = LoginReq {
            tag: self.attempt,
            req_it_iu_len: cfg.req_it_iu_len(),
            req_buf_fmt: BufFormats::BOTH,
            multichannel: self.mode,
            immediate_data_requested: cfg.immediate_data,
            imm_data_offset: if cfg.immediate_data {
                srp::LINUX_IMM_DATA_OFFSET
            } else {
                0
            },
            initiator_port_id: self.engine.initiator_port_id,
            target_port_id: cfg.target_port_id,
        };
        // ack_timeout 14 (~67 ms × retries) keeps a vanished target from
        // taking minutes to surface as RetryExceeded.
        let _ = id.set_ack_timeout(14);
        id.connect_with(&req.to_rdma_bytes(), &ConnectOptions::default())
            .map_err(|e| format!("{}: rdma_connect: {e}", cfg.dest))?;
        self.phase = Phase::Connecting;
        self.deadline = Instant::now() + CONNECT_TIMEOUT;
        Ok(())
    }

    fn on_established(&mut self, pd: &[u8]) -> Result<(), String> {
        let rsp = LoginRsp::decode(pd).map_err(|e| format!("undecodable SRP_LOGIN_RSP: {e}"))?;
        let cfg = &self.sh.cfg;
        let req_iu = cfg.req_it_iu_len();
        let recv_slot = self.bufs.as_ref().map(|b| b.recv_slot).unwrap_or(0) as u32;
        if rsp.req_lim_delta < 2 || rsp.req_lim_delta > 1 << 20 {
            return Err(format!(
                "SRP_LOGIN_RSP grants {} credits",
                rsp.req_lim_delta
            ));
        }
        if rsp.max_it_iu_len < 64 || rsp.max_ti_iu_len < srp::SrpRsp::HEADER_SIZE as u32 {
            return Err(format!(
                "SRP_LOGIN_RSP has absurd IU sizes (max_it_iu_len {}, max_ti_iu_len {})",
                rsp.max_it_iu_len, rsp.max_ti_iu_len
            ));
        }
        if rsp.max_ti_iu_len > recv_slot {
            tracing::warn!(bdev = %cfg.name, max_ti_iu_len = rsp.max_ti_iu_len, recv_slot,
                "target may send IUs longer than our receive buffers (one would end the connection)");
        }
        if !rsp.buf_fmt.contains(BufFormats::DIRECT) {
            return Err("the target does not support direct data descriptors".into());
        }
        let max_it = rsp.max_it_iu_len.min(req_iu);
        let immediate = cfg.immediate_data
            && rsp.immediate_data_supported
            && max_it > u32::from(srp::LINUX_IMM_DATA_OFFSET);
        let indirect = rsp.buf_fmt.contains(BufFormats::INDIRECT);
        let inline_descs = if indirect {
            ((max_it as usize).saturating_sub(srp::SRP_CMD_HEADER_SIZE + srp::INDIRECT_HEADER_SIZE)
                / srp::DirectBuf::SIZE)
                .min(255)
        } else {
            0
        };
        self.neg = Negotiated {
            // Our command slots bound what we can use.
            req_lim: i64::from(rsp.req_lim_delta),
            immediate,
            max_imm: if immediate {
                cfg.max_imm_data
                    .min(max_it - u32::from(srp::LINUX_IMM_DATA_OFFSET))
            } else {
                0
            },
            inline_descs,
        };
        let info = self.info();
        info.req_lim.store(self.neg.req_lim, Ordering::Relaxed);
        info.max_it_iu_len.store(max_it, Ordering::Relaxed);
        info.immediate.store(immediate, Ordering::Relaxed);
        info.qp_num.store(
            self.id.as_ref().and_then(|i| i.qp_num()).unwrap_or(0),
            Ordering::Relaxed,
        );
        self.phase = Phase::Live;
        self.set_link_state(LinkState::Live);
        tracing::info!(bdev = %cfg.name, channel = self.ch, reactor = self.info().reactor,
            credits = rsp.req_lim_delta, max_it_iu_len = max_it, immediate, inline_descs,
            multichannel = ?rsp.multichannel, "SRP channel logged in");
        self.sh.to_coord(Event::Connected {
            ch: self.ch,
            attempt: self.attempt,
            result: Ok(()),
        });
        Ok(())
    }

    fn rejected(&self, reason: i32, pd: &[u8]) -> String {
        let dest = self.sh.cfg.dest;
        if reason == rdma::REJECT_CONSUMER {
            if let Ok(rej) = LoginRej::decode(pd) {
                return format!("login rejected: {}", rej_text(rej.reason));
            }
            return format!("login rejected by {dest} (no SRP_LOGIN_REJ)");
        }
        if reason == rdma::REJECT_NO_LISTENER {
            return format!("{dest}: connection refused (nobody listens there)");
        }
        format!("{dest}: connection rejected (CM reason {reason})")
    }

    /// Reads rdma_cm events (connecting, disconnects).
    fn poll_cm(&mut self) -> usize {
        let mut n = 0;
        for _ in 0..8 {
            let ev = match self.cm.poll_event() {
                Ok(Some(ev)) => ev,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "rdma_cm event channel failed");
                    break;
                }
            };
            n += 1;
            let mine = self.id.as_ref().is_some_and(|i| i.token() == ev.token);
            if !mine {
                continue;
            }
            let dest = self.sh.cfg.dest;
            let r: Result<(), String> = match (self.phase, ev.kind) {
                (Phase::Resolving, CmEventKind::AddrResolved) => self.on_addr_resolved(),
                (Phase::Resolving, CmEventKind::AddrError { status }) => Err(format!(
                    "{dest}: address resolution failed (status {status})"
                )),
                (Phase::Routing, CmEventKind::RouteResolved) => self.on_route_resolved(),
                (Phase::Routing, CmEventKind::RouteError { status }) => {
                    Err(format!("{dest}: route resolution failed (status {status})"))
                }
                (Phase::Connecting, CmEventKind::Established { private_data }) => {
                    self.on_established(private_data.as_bytes())
                }
                (
                    Phase::Connecting,
                    CmEventKind::Rejected {
                        reason,
                        private_data,
                    },
                ) => Err(self.rejected(reason, private_data.as_bytes())),
                (Phase::Connecting, CmEventKind::Unreachable { status }) => {
                    Err(format!("{dest} is unreachable (status {status})"))
                }
                (Phase::Connecting, CmEventKind::ConnectError { status }) => {
                    Err(format!("{dest}: connect failed (status {status})"))
                }
                (Phase::Live, CmEventKind::Disconnected | CmEventKind::DeviceRemoval) => {
                    self.lose("the target disconnected");
                    Ok(())
                }
                (p, CmEventKind::Disconnected | CmEventKind::DeviceRemoval) if p != Phase::Down => {
                    Err(format!("{dest}: disconnected while logging in"))
                }
                _ => Ok(()),
            };
            if let Err(e) = r {
                self.connect_failed(e);
            }
        }
        n
    }

    // -------------------------------------------------------------------
    // Losing and dropping the connection

    /// The connection failed under us: drop it, keep the I/O, tell the
    /// coordinator.
    pub fn lose(&mut self, why: &str) {
        if self.phase != Phase::Live {
            return;
        }
        self.teardown(why, true);
        self.sh.to_coord(Event::LinkDown {
            ch: self.ch,
            why: why.to_string(),
        });
    }

    fn drop_link(&mut self) {
        if let Some(mut id) = self.id.take() {
            let _ = id.disconnect();
            drop(id);
        }
        self.cq = None;
    }

    /// Drops the connection (the coordinator's order, or ours). With
    /// `keep_io`, what was sent is queued to be sent again after the next
    /// login; otherwise it fails with a path error.
    pub fn teardown(&mut self, why: &str, keep_io: bool) {
        let was = self.phase;
        self.drop_link();
        self.phase = Phase::Down;
        if self.info().state.load(Ordering::Relaxed) != LinkState::Unused as u8 {
            self.set_link_state(LinkState::Down);
        }
        if was != Phase::Down {
            tracing::debug!(bdev = %self.sh.cfg.name, channel = self.ch, reason = why, "SRP channel down");
        }
        self.requeue_all();
        if !keep_io {
            self.fail_all();
        }
    }

    /// Resubmits what is held (the port is back).
    pub fn resume(&mut self) {
        self.pump();
    }

    /// Fails everything held or in flight with a path error (FAIL_FAST,
    /// LOST).
    pub fn fail_all(&mut self) {
        let n = self.fail_everything(IoStatus::PathError);
        if n > 0 {
            self.sh
                .stats
                .failed_fast
                .fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// Starts discovery (channel 0, after the first login).
    pub fn discover(&mut self) {
        self.discovery = Some(Discovery::new());
        self.issue_discovery();
    }

    /// Discovery is done: the data path may start.
    pub fn set_geometry(&mut self, g: &Geometry) {
        self.set_geometry_inner(g);
    }

    pub(crate) fn discovery_answer(&mut self, status: u8, sense: &[u8], data_len: usize) {
        let Some(d) = self.discovery.as_mut() else {
            return;
        };
        let data: Vec<u8> = self
            .bufs
            .as_ref()
            .and_then(|b| {
                b.scratch
                    .range(0, data_len.min(SCRATCH_BYTES))
                    .map(|d| d.to_vec())
            })
            .unwrap_or_default();
        match d.answer(status, sense, &data) {
            Ok(None) => self.issue_discovery(),
            Ok(Some(g)) => {
                self.discovery = None;
                self.sh.to_coord(Event::Discovered(Ok(g)));
            }
            Err(e) => {
                self.discovery = None;
                self.sh
                    .to_coord(Event::Discovered(Err(format!("discovery: {e}"))));
            }
        }
    }

    fn issue_discovery(&mut self) {
        let Some(d) = self.discovery.as_ref() else {
            return;
        };
        let Some(cdb) = d.command() else {
            return;
        };
        let len = d.data_len();
        // A unit attention or NOT READY (an ALUA transition, a LU coming
        // up) is asked again after a pause, not 16 times at once.
        let delay = if d.retrying() {
            Duration::from_millis(100)
        } else {
            Duration::ZERO
        };
        if let Err(e) = self.internal_command(cdb, len, delay) {
            self.discovery = None;
            self.sh
                .to_coord(Event::Discovered(Err(format!("discovery: {e}"))));
        }
    }

    // -------------------------------------------------------------------
    // Polling

    /// One round of work: completions, connection events, time-outs,
    /// queued commands. Returns the amount of work done.
    pub fn progress(&mut self) -> usize {
        let mut n = 0;
        if self.cq.is_some() {
            n += self.poll_cq();
        }
        let now = Instant::now();
        self.now = now;
        if self.phase != Phase::Down && now >= self.next_cm {
            let k = self.poll_cm();
            n += k;
            if k == 0 {
                self.next_cm = now + CM_POLL_INTERVAL;
            }
            if matches!(
                self.phase,
                Phase::Resolving | Phase::Routing | Phase::Connecting
            ) && now > self.deadline
            {
                let why = format!(
                    "{}: no answer to the login within {} s",
                    self.sh.cfg.dest,
                    (CONNECT_TIMEOUT.as_secs())
                );
                self.connect_failed(why);
            }
        }
        if now >= self.next_scan {
            self.next_scan = now + Duration::from_millis(50);
            n += self.scan_timeouts();
        }
        if !self.remote_backlog.is_empty() {
            n += self.retry_remote();
        }
        n + self.pump()
    }

    fn poll_cq(&mut self) -> usize {
        let mut total = 0;
        while let Some(cq) = self.cq.as_mut() {
            let k = cq.poll(&mut self.wc);
            if k == 0 {
                break;
            }
            total += k;
            for i in 0..k {
                let c = self.wc[i];
                self.on_completion(&c);
                if self.cq.is_none() {
                    // The connection was dropped while handling: the rest
                    // belong to the dead QP.
                    return total;
                }
            }
            if k < self.wc.len() {
                break;
            }
        }
        total
    }

    /// Logs a response for a tag we do not know, once per channel.
    pub(crate) fn unknown_tag(&mut self, tag: u64, what: &str) {
        self.sh.stats.unknown_tags.fetch_add(1, Ordering::Relaxed);
        if !self.logged_unknown {
            self.logged_unknown = true;
            tracing::warn!(bdev = %self.sh.cfg.name, channel = self.ch, tag = format_args!("{tag:#x}"),
                "{what} for a tag that is not outstanding (late, duplicate or never sent): ignored");
        }
    }

    /// Registers a consumer (one per opened bdev channel).
    pub fn add_consumer(&mut self) -> u32 {
        let q = Consumer {
            q: VecDeque::with_capacity(self.engine.capacity()),
            inflight: 0,
            forward: None,
            gone: false,
        };
        if let Some(i) = self.consumers.iter().position(|c| c.is_none()) {
            self.consumers[i] = Some(q);
            return i as u32;
        }
        self.consumers.push(Some(q));
        (self.consumers.len() - 1) as u32
    }

    /// Requests of consumer `c` not yet reported.
    pub fn consumer_inflight(&self, c: u32) -> usize {
        match self.consumers.get(c as usize) {
            Some(Some(x)) => x.inflight,
            _ => 0,
        }
    }

    /// Unregisters a consumer (its unreported completions are dropped).
    /// Unsent requests of a removed consumer are dropped (never sent: the
    /// memory is no longer lent); the slot stays taken until what was sent
    /// has come back, so no late completion reaches the slot's next user.
    pub fn remove_consumer(&mut self, c: u32) {
        let Some(slot) = self.consumers.get_mut(c as usize) else {
            return;
        };
        match slot {
            Some(x) if x.inflight > 0 => {
                x.gone = true;
                x.q.clear();
            }
            _ => *slot = None,
        }
        self.pump();
    }

    /// Swaps consumer `c`'s completions with `out` (empty), so that they
    /// can be reported without the channel borrowed: a completion callback
    /// may submit to this bdev again.
    pub fn take_done(&mut self, c: u32, out: &mut VecDeque<(u64, IoStatus)>) {
        if let Some(Some(q)) = self.consumers.get_mut(c as usize) {
            std::mem::swap(&mut q.q, out);
        }
    }

    /// Sends one IU from send slot `slot` (already encoded, `len` bytes).
    pub(crate) fn post_iu(&mut self, slot: usize, len: usize, wr_id: u64) -> Result<(), String> {
        if self.phase != Phase::Live || self.sq_free == 0 {
            return Err("not connected or send queue full".into());
        }
        let (Some(id), Some(bufs)) = (self.id.as_mut(), self.bufs.as_ref()) else {
            return Err("not connected".into());
        };
        let sge = bufs
            .send
            .sge(slot * bufs.send_slot, len as u32)
            .map_err(|e| e.to_string())?;
        // SAFETY: the slot lies in `bufs.send`, owned by the channel and
        // kept registered until after the QP is destroyed; a slot is not
        // rewritten until its command's response (or the SEND completion)
        // shows the device is done with it.
        unsafe { id.post_send(&rdma::SendWr::send(wr_id, &[sge])) }.map_err(|e| e.to_string())?;
        self.sq_free -= 1;
        Ok(())
    }

    /// The bytes of send slot `slot`.
    pub(crate) fn send_slot_mut(&mut self, slot: usize) -> Option<&mut [u8]> {
        let b = self.bufs.as_mut()?;
        let s = b.send_slot;
        b.send.range_mut(slot * s, s)
    }

    /// Reposts receive slot `slot`.
    pub(crate) fn repost_recv(&mut self, slot: usize) {
        let (Some(id), Some(bufs)) = (self.id.as_mut(), self.bufs.as_ref()) else {
            return;
        };
        let Ok(sge) = bufs.recv.sge(slot * bufs.recv_slot, bufs.recv_slot as u32) else {
            return;
        };
        // SAFETY: as in `on_route_resolved`: the slot stays registered and
        // untouched until its completion.
        if unsafe { id.post_recv(crate::io::wr_recv(slot), &[sge]) }.is_err() {
            self.lose("posting a receive failed");
        }
    }

    /// The bytes of receive slot `slot`.
    pub(crate) fn recv_bytes(&self, slot: usize, len: usize) -> Option<&[u8]> {
        let b = self.bufs.as_ref()?;
        let s = b.recv_slot;
        b.recv.range(slot * s, len.min(s))
    }
}

impl Shared {
    /// The MR table, if the first connection made it.
    pub fn mr_table_existing(&self) -> Option<Arc<crate::mrmap::MrTable>> {
        self.mrs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(_, t, _)| Arc::clone(t))
    }
}

/// A login reject reason in words (the ACL case as ib_srpt reports it).
pub fn rej_text(r: LoginRejReason) -> String {
    match r {
        LoginRejReason::UnableEstablishChannel => "unable to establish the RDMA channel".into(),
        LoginRejReason::InsufficientResources => "insufficient RDMA channel resources".into(),
        LoginRejReason::ReqItIuLengthTooLarge => "requested IU length not supported".into(),
        LoginRejReason::UnableAssociateChannel => {
            "unable to associate the channel with the I_T nexus (wrong id_ext/ioc_guid?)".into()
        }
        LoginRejReason::UnsupportedDescriptorFormat => "descriptor formats not supported".into(),
        LoginRejReason::MultiChannelUnsupported => "multiple channels not supported".into(),
        LoginRejReason::ChannelLimitReached => {
            "channel limit reached (the target's answer when the initiator is not authorized by its ACL)".into()
        }
        LoginRejReason::Other(v) => format!("reason {v:#x}"),
    }
}
