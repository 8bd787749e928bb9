//! # initiator — the SRP initiator as a bdev
//!
//! A remote SCSI logical unit reached over SRP (SCSI RDMA Protocol) on RC
//! queue pairs becomes a local bdev that RAID1, multipath and vhost stack
//! on. It interoperates with the Linux kernel's `ib_srpt` (LIO) and with
//! strata's own target (`srpt`), and follows the Linux initiator
//! (`drivers/infiniband/ulp/srp/ib_srp.c`, `drivers/scsi/scsi_transport_srp.c`):
//!
//! - **Login** over rdma_cm: the 56-byte `srp_login_req_rdma` in the
//!   connect private data, SRP_LOGIN_RSP in the accept private data,
//!   SRP_LOGIN_REJ in the reject private data (an RPC error naming the
//!   reason). One RC QP per channel, one channel per reactor by default:
//!   channel 0 logs in with MULTICHAN_SINGLE, the others with
//!   MULTICHAN_MULTI; a channel that fails to connect truncates `ch_count`.
//! - **Discovery** ([`discovery`]): INQUIRY, VPD 0x80/0x83/0xB0/0xB2, READ
//!   CAPACITY(16); the VPD 0x83 designator is the bdev's device id (what
//!   multipath compares).
//! - **Data path** ([`io`]): READ(16)/WRITE(16) (FUA), SYNCHRONIZE
//!   CACHE(16), UNMAP or WRITE SAME(16) with UNMAP, WRITE SAME(16) for
//!   write-zeroes; requests split at `max_sect` and the target's maximum
//!   transfer length; direct descriptors for one segment, indirect tables
//!   for more (inline up to the negotiated IU size, the rest fetched by the
//!   target); immediate data for small writes when the target grants it;
//!   credits from `req_lim` with one held back for task management.
//! - **Zero copy** ([`mrmap`]): every region of `bdev::memmap` (vhost guest
//!   memory, registered buffer pools) is an MR of the session's PD; an
//!   iovec is sent as (address, rkey). Memory outside every region goes
//!   through a registered bounce buffer, counted in the session status.
//! - **Failures** ([`session`]): port states RUNNING, BLOCKED, FAIL_FAST,
//!   LOST with `reconnect_delay`, `fast_io_fail_tmo`, `dev_loss_tmo`;
//!   command time-outs escalate ABORT TASK → LUN RESET → reconnect;
//!   sense data maps to bdev statuses (MEDIUM/HARDWARE ERROR → medium,
//!   ILLEGAL REQUEST → invalid, NOT READY and transport failures → path,
//!   UNIT ATTENTION → retried).

#![warn(missing_docs)]

mod conn;
pub mod discovery;
mod io;
mod mrmap;
pub mod params;
mod proxy;
mod rsp;
pub mod scsi;
pub mod session;
mod tmf;

use std::any::Any;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{
    AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bdev::{
    Bdev, BdevChannel, BdevError, BdevInfo, BdevStats, Capabilities, IoRequest, IoStatus, QueueFull,
};

pub use discovery::Geometry;
pub use params::{ParamError, SrpAttachParams};
pub use session::PortState;

use session::{ChanInfo, Coord, LinkState, Shared, Stats};

/// Errors of attach and detach.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// A parameter is invalid (the message names it).
    #[error(transparent)]
    Param(#[from] ParamError),
    /// Logging in or discovering the LU failed.
    #[error("{0}")]
    Login(String),
    /// The reactors refused a message.
    #[error(transparent)]
    Reactor(#[from] reactor::ReactorError),
    /// No answer in time.
    #[error("SRP login to {dest} did not finish within {secs} s")]
    Timeout {
        /// The target.
        dest: String,
        /// The time waited.
        secs: u64,
    },
}

/// How long `attach` waits for login and discovery.
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `detach` waits for I/O in flight to finish.
pub const DETACH_DRAIN: Duration = Duration::from_secs(10);

/// An SRP-attached LU.
pub struct SrpBdev {
    info: BdevInfo,
    shared: Arc<Shared>,
    geometry: Geometry,
    stats: BdevStats,
    detached: AtomicBool,
}

/// The bdev facts for a discovered LU.
pub(crate) fn bdev_info(name: &str, g: &Geometry, queue_depth: usize) -> BdevInfo {
    let id = g.device_id.clone().unwrap_or_else(|| name.to_string());
    BdevInfo {
        name: name.to_string(),
        kind: "srp",
        block_size: g.block_size,
        num_blocks: g.num_blocks,
        uuid: bdev::uuid_from_name("srp", &id),
        caps: Capabilities {
            flush: true,
            // Honoured either way: the FUA bit where the target takes it,
            // SYNCHRONIZE CACHE after the write where not, nothing needed
            // with the write cache off.
            fua: true,
            unmap: g.use_unmap() || g.use_ws_unmap(),
            write_zeroes: g.limits.max_write_same_blocks > 0
                && g.block_size as usize <= conn::ZERO_BYTES,
            unmap_reads_zeroes: g.provisioning.reads_zeroes,
            read_only: false,
        },
        buf_align: 1,
        max_segments: bdev::MAX_SEGMENTS,
        queue_depth,
    }
}

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

impl SrpBdev {
    /// Logs in to the target, discovers the LU and returns the bdev.
    /// Blocks the calling (control-plane) thread until done.
    pub fn attach(
        params: &SrpAttachParams,
        reactors: reactor::ReactorHandle,
    ) -> Result<Arc<SrpBdev>, AttachError> {
        let cfg = params.validate(reactors.len())?;
        let n = cfg
            .ch_count
            .map(|c| c as usize)
            .unwrap_or(reactors.len())
            .max(1);
        let chans: Vec<ChanInfo> = (0..n)
            .map(|k| ChanInfo {
                reactor: k % reactors.len(),
                state: AtomicU8::new(LinkState::Down as u8),
                req_lim: AtomicI64::new(0),
                inflight: AtomicU32::new(0),
                qp_num: AtomicU32::new(0),
                max_it_iu_len: AtomicU32::new(0),
                immediate: AtomicBool::new(false),
                commands: AtomicU64::new(0),
            })
            .collect();
        let (tx, rx) = std::sync::mpsc::channel();
        let dest = cfg.dest.to_string();
        let shared = Arc::new(Shared {
            id: NEXT_SESSION.fetch_add(1, Ordering::Relaxed),
            state: AtomicU8::new(PortState::Blocked as u8),
            stats: Stats::default(),
            active: AtomicUsize::new(n),
            reactors: reactors.clone(),
            geometry: Mutex::new(None),
            mrs: Mutex::new(None),
            coord: Mutex::new(Coord::new(n, tx)),
            on_lost: Mutex::new(None),
            detaching: AtomicBool::new(false),
            initiator_port_id: Mutex::new(String::new()),
            chans,
            cfg,
        });
        let uninstall_all = |s: &Arc<Shared>| {
            for c in &s.chans {
                let sid = s.id;
                let _ = s.reactors.call(c.reactor, move || conn::uninstall(sid));
            }
        };
        for k in 0..n {
            let s = Arc::clone(&shared);
            let r = shared.chans[k].reactor;
            match reactors.call(r, move || conn::install(s, k)) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    uninstall_all(&shared);
                    return Err(AttachError::Login(format!("{dest}: {e}")));
                }
                Err(e) => {
                    uninstall_all(&shared);
                    return Err(e.into());
                }
            }
        }
        let s = Arc::clone(&shared);
        reactors.send(shared.home(), move || session::start(&s))?;
        let r = rx.recv_timeout(ATTACH_TIMEOUT);
        let geometry = match r {
            Ok(Ok(g)) => g,
            Ok(Err(e)) => {
                shared.detaching.store(true, Ordering::Release);
                uninstall_all(&shared);
                return Err(AttachError::Login(e));
            }
            Err(_) => {
                shared.detaching.store(true, Ordering::Release);
                uninstall_all(&shared);
                return Err(AttachError::Timeout {
                    dest,
                    secs: ATTACH_TIMEOUT.as_secs(),
                });
            }
        };
        // Every channel knows the geometry before the bdev is handed out
        // (the coordinator also sends it, asynchronously).
        for c in &shared.chans[..shared.active.load(Ordering::Acquire)] {
            let (sid, g) = (shared.id, geometry.clone());
            let _ = reactors.call(c.reactor, move || {
                conn::with_conn(sid, |cn| cn.set_geometry(&g));
            });
        }
        let info = bdev_info(&shared.cfg.name, &geometry, io_capacity(&shared.cfg));
        tracing::info!(bdev = %info.name, dest = %shared.cfg.dest, block_size = info.block_size,
            num_blocks = info.num_blocks, device_id = ?geometry.device_id,
            ch_count = shared.active.load(Ordering::Relaxed), "SRP LU attached");
        Ok(Arc::new(SrpBdev {
            info,
            shared,
            geometry,
            stats: BdevStats::default(),
            detached: AtomicBool::new(false),
        }))
    }

    /// What discovery found.
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// The port state.
    pub fn port_state(&self) -> PortState {
        self.shared.port_state()
    }

    /// The session as `bdev_srp_get_sessions` shows it.
    pub fn session_json(&self) -> serde_json::Value {
        self.shared.json()
    }

    /// Runs `f` (once, off the reactors) when `dev_loss_tmo` declares the
    /// port lost: the daemon removes the bdev there.
    pub fn on_lost(&self, f: impl FnOnce() + Send + 'static) {
        *self
            .shared
            .on_lost
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Box::new(f));
    }

    /// Logs out: waits (bounded) for I/O in flight, then disconnects every
    /// channel. Idempotent; also run by `Bdev::shutdown`.
    pub fn detach(&self) {
        if self.detached.swap(true, Ordering::AcqRel) {
            return;
        }
        let s = &self.shared;
        s.detaching.store(true, Ordering::Release);
        let deadline = Instant::now() + DETACH_DRAIN;
        while Instant::now() < deadline
            && s.chans
                .iter()
                .any(|c| c.inflight.load(Ordering::Relaxed) > 0)
            && s.port_state() == PortState::Running
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        {
            let mut c = s.coord.lock().unwrap_or_else(|e| e.into_inner());
            c.phase = session::Phase::Detached;
            c.attempt += 1;
            c.outage += 1;
        }
        s.state.store(PortState::Lost as u8, Ordering::Release);
        for c in &s.chans {
            let sid = s.id;
            let _ = s.reactors.call(c.reactor, move || conn::uninstall(sid));
        }
        // Deregister the MRs and stop following the memory map.
        s.mrs.lock().unwrap_or_else(|e| e.into_inner()).take();
        tracing::info!(bdev = %self.info.name, "SRP session logged out");
    }
}

/// Requests one channel holds (the engine's pool).
fn io_capacity(cfg: &params::SessionConfig) -> usize {
    (2 * cfg.queue_size as usize).max(64)
}

impl Bdev for SrpBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn open_module_channel(&self) -> Result<Box<dyn BdevChannel>, BdevError> {
        if !reactor::on_reactor() {
            // A control-plane thread (raid1 reading superblocks at create).
            return Ok(Box::new(proxy::ThreadChannel::new(Arc::clone(
                &self.shared,
            ))));
        }
        let active = self.shared.active.load(Ordering::Relaxed).max(1);
        let local = conn::lookup(self.shared.id).filter(|c| c.borrow().ch < active);
        match local {
            Some(conn) => {
                let consumer = conn.borrow_mut().add_consumer();
                let cap = conn.borrow().engine.capacity();
                Ok(Box::new(SrpChannel {
                    conn,
                    consumer,
                    ready: std::collections::VecDeque::with_capacity(cap),
                }))
            }
            // No channel of ours on this reactor: borrow one elsewhere.
            None => Ok(Box::new(proxy::ProxyChannel::new(
                Arc::clone(&self.shared),
                reactor::current() % active,
            ))),
        }
    }

    fn device_id(&self) -> String {
        match &self.geometry.device_id {
            Some(id) => id.clone(),
            None => bdev::format_uuid(&self.info.uuid),
        }
    }

    fn driver_specific(&self) -> Option<serde_json::Value> {
        Some(self.shared.json())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn shutdown(&self) {
        self.detach();
    }

    fn stats(&self) -> &BdevStats {
        &self.stats
    }
}

impl Drop for SrpBdev {
    fn drop(&mut self) {
        self.detach();
    }
}

/// A consumer's handle on the reactor's channel of the session.
struct SrpChannel {
    conn: Rc<RefCell<conn::Conn>>,
    consumer: u32,
    /// Completions being reported (swapped with the consumer's queue).
    ready: std::collections::VecDeque<(u64, IoStatus)>,
}

impl BdevChannel for SrpChannel {
    unsafe fn submit(&mut self, req: &IoRequest<'_>, tag: u64) -> Result<(), QueueFull> {
        // SAFETY: forwarded contract.
        unsafe { self.conn.borrow_mut().submit(self.consumer, req, tag) }
    }

    fn poll(&mut self, done: &mut dyn FnMut(u64, IoStatus)) -> usize {
        {
            let mut c = self.conn.borrow_mut();
            c.progress();
            c.take_done(self.consumer, &mut self.ready);
        }
        // The channel is not borrowed while `done` runs.
        let n = self.ready.len();
        while let Some((t, s)) = self.ready.pop_front() {
            done(t, s);
        }
        n
    }

    fn inflight(&self) -> usize {
        self.conn.borrow().consumer_inflight(self.consumer)
    }
}

impl Drop for SrpChannel {
    fn drop(&mut self) {
        if let Ok(mut c) = self.conn.try_borrow_mut() {
            c.remove_consumer(self.consumer);
        }
    }
}
