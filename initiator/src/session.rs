//! The session: state shared by its channels, the port state machine of
//! `scsi_transport_srp` (RUNNING, BLOCKED, FAIL_FAST, LOST) and the
//! coordinator that logs channels in and reconnects them.
//!
//! The coordinator runs on the reactor of channel 0 (the *home* reactor);
//! channels report to it with reactor messages and it answers the same way,
//! so nothing here is locked on the data path: channels read the port
//! state with one relaxed load.
//!
//! Transitions (as `srp_start_tl_fail_timers` and `srp_reconnect_rport`):
//! - a channel loses its connection (QP error, DREQ, T_LOGOUT, a task
//!   management escalation that ran out) → every channel drops its
//!   connection, keeps what was in flight to resubmit, and holds new I/O;
//!   the port is BLOCKED; a reconnect is tried after `reconnect_delay`,
//!   `fast_io_fail_tmo` and `dev_loss_tmo` start counting;
//! - reconnect: channel 0 logs in with MULTICHAN_SINGLE, then the others
//!   with MULTICHAN_MULTI; all up → RUNNING, held and in-flight I/O is sent
//!   again; any failure → every channel down again, the next try after
//!   `reconnect_delay` × (failures − 10, between 1 and 100) as the kernel;
//! - `fast_io_fail_tmo` → FAIL_FAST: held and in-flight I/O completes with
//!   a path error, new I/O fails at once (multipath moves away);
//! - `dev_loss_tmo` → LOST: reconnecting stops, everything fails, the
//!   session's `on_lost` hook removes the bdev.

use std::sync::atomic::{
    AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use srp::MultiChannelAction;

use crate::conn::{self, with_conn};
use crate::discovery::Geometry;
use crate::mrmap::MrTable;
use crate::params::SessionConfig;

/// Port states (`enum srp_rport_state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PortState {
    /// Logged in, I/O flows.
    Running = 0,
    /// Connection lost: I/O is held while reconnecting.
    Blocked = 1,
    /// `fast_io_fail_tmo` passed: I/O fails at once.
    FailFast = 2,
    /// `dev_loss_tmo` passed (or detached): the device is gone.
    Lost = 3,
}

impl PortState {
    pub(crate) fn from_u8(v: u8) -> PortState {
        match v {
            0 => PortState::Running,
            1 => PortState::Blocked,
            2 => PortState::FailFast,
            _ => PortState::Lost,
        }
    }

    /// Lower-case name, as sysfs `state` prints it.
    pub fn name(self) -> &'static str {
        match self {
            PortState::Running => "running",
            PortState::Blocked => "blocked",
            PortState::FailFast => "fail-fast",
            PortState::Lost => "lost",
        }
    }
}

/// Channel connection states, as published for `bdev_srp_get_sessions`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum LinkState {
    Down = 0,
    Connecting = 1,
    Live = 2,
    Unused = 3,
}

impl LinkState {
    fn name(v: u8) -> &'static str {
        match v {
            0 => "down",
            1 => "connecting",
            2 => "live",
            _ => "unused",
        }
    }
}

/// Counters of a session.
#[derive(Default, Debug)]
pub(crate) struct Stats {
    pub reconnects: AtomicU64,
    pub failed_reconnects: AtomicU64,
    pub connection_losses: AtomicU64,
    pub timeouts: AtomicU64,
    pub aborts_sent: AtomicU64,
    pub aborts_succeeded: AtomicU64,
    pub lun_resets_sent: AtomicU64,
    pub lun_resets_succeeded: AtomicU64,
    pub retries: AtomicU64,
    pub bounce_cmds: AtomicU64,
    pub bounce_bytes: AtomicU64,
    pub zero_copy_cmds: AtomicU64,
    pub immediate_cmds: AtomicU64,
    pub indirect_cmds: AtomicU64,
    pub external_tables: AtomicU64,
    pub unknown_tags: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub cred_reqs: AtomicU64,
    pub aer_reqs: AtomicU64,
    pub failed_fast: AtomicU64,
}

/// What `bdev_srp_get_sessions` shows of one channel; written by the
/// channel with relaxed stores.
#[derive(Debug)]
pub(crate) struct ChanInfo {
    pub reactor: usize,
    pub state: AtomicU8,
    pub req_lim: AtomicI64,
    pub inflight: AtomicU32,
    pub qp_num: AtomicU32,
    pub max_it_iu_len: AtomicU32,
    pub immediate: AtomicBool,
    pub commands: AtomicU64,
}

/// Session state shared by the coordinator, the channels and the bdev.
pub(crate) struct Shared {
    pub cfg: SessionConfig,
    /// Process-unique id (key of the per-reactor channel maps).
    pub id: u64,
    pub state: AtomicU8,
    pub stats: Stats,
    pub chans: Vec<ChanInfo>,
    /// Channels in use (after truncation at login).
    pub active: AtomicUsize,
    pub reactors: reactor::ReactorHandle,
    pub geometry: Mutex<Option<Geometry>>,
    pub mrs: Mutex<Option<(String, Arc<MrTable>, bdev::memmap::Subscription)>>,
    pub coord: Mutex<Coord>,
    /// Called once when the port is lost (dev_loss_tmo).
    pub on_lost: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    pub detaching: AtomicBool,
    /// Initiator port id in use (hex), for the status.
    pub initiator_port_id: Mutex<String>,
}

impl Shared {
    pub fn port_state(&self) -> PortState {
        PortState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Moves the port to `s`; LOST is final (as `srp_rport_set_state`):
    /// a reconnect finishing after a detach or dev_loss does not revive it.
    fn set_state(&self, s: PortState) {
        let r = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                (PortState::from_u8(v) != PortState::Lost).then_some(s as u8)
            });
        let Ok(old) = r else {
            return;
        };
        let old = PortState::from_u8(old);
        if old != s {
            tracing::info!(bdev = %self.cfg.name, from = old.name(), to = s.name(), "SRP port state");
        }
    }

    pub fn home(&self) -> usize {
        self.chans[0].reactor
    }

    /// The session's MR table, created on the first connection's device.
    pub fn mr_table(&self, ctx: &rdma::Context) -> Result<Arc<MrTable>, String> {
        let mut g = self.mrs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((dev, t, _)) = g.as_ref() {
            if dev != ctx.name() {
                return Err(format!(
                    "the route to {} moved from device {dev} to {}; the session's memory is registered on {dev}",
                    self.cfg.dest,
                    ctx.name()
                ));
            }
            return Ok(Arc::clone(t));
        }
        let pd = rdma::Pd::new(ctx).map_err(|e| format!("ibv_alloc_pd: {e}"))?;
        let t = MrTable::new(pd);
        let sub = bdev::memmap::subscribe(Arc::clone(&t) as Arc<dyn bdev::memmap::Listener>);
        *g = Some((ctx.name().to_string(), Arc::clone(&t), sub));
        Ok(t)
    }

    /// Sends `f` to channel `ch`'s reactor, to run on its connection.
    pub fn to_chan(self: &Arc<Self>, ch: usize, f: impl FnOnce(&mut conn::Conn) + Send + 'static) {
        let id = self.id;
        let r = self.chans[ch].reactor;
        let msg = move || {
            with_conn(id, f);
        };
        if reactor::on_reactor() {
            reactor::send(r, msg);
        } else if let Err(e) = self.reactors.send(r, msg) {
            tracing::warn!(error = %e, "message to an SRP channel dropped");
        }
    }

    /// Sends an event to the coordinator (on the home reactor).
    pub fn to_coord(self: &Arc<Self>, ev: Event) {
        let s = Arc::clone(self);
        let home = self.home();
        let msg = move || on_event(&s, ev);
        if reactor::on_reactor() {
            reactor::send(home, msg);
        } else if let Err(e) = self.reactors.send(home, msg) {
            tracing::warn!(error = %e, "message to the SRP coordinator dropped");
        }
    }

    pub fn json(&self) -> serde_json::Value {
        let s = &self.stats;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let active = self.active.load(Ordering::Relaxed);
        let chans: Vec<serde_json::Value> = self
            .chans
            .iter()
            .enumerate()
            .map(|(i, c)| {
                serde_json::json!({
                    "channel": i,
                    "reactor": c.reactor,
                    "state": if i < active { LinkState::name(c.state.load(Ordering::Relaxed)) } else { "unused" },
                    "req_lim": c.req_lim.load(Ordering::Relaxed),
                    "inflight": c.inflight.load(Ordering::Relaxed),
                    "qp_num": c.qp_num.load(Ordering::Relaxed),
                    "max_it_iu_len": c.max_it_iu_len.load(Ordering::Relaxed),
                    "immediate_data": c.immediate.load(Ordering::Relaxed),
                    "commands": c.commands.load(Ordering::Relaxed),
                })
            })
            .collect();
        let geo = self
            .geometry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mrs = self.mrs.lock().unwrap_or_else(|e| e.into_inner());
        serde_json::json!({
            "name": self.cfg.name,
            "dest": self.cfg.dest.to_string(),
            "target_port_id": format_port_id(&self.cfg.target_port_id),
            "initiator_port_id": *self.initiator_port_id.lock().unwrap_or_else(|e| e.into_inner()),
            "lun": self.cfg.lun,
            "provider": self.cfg.provider.name(),
            "port_state": self.port_state().name(),
            "ch_count": active,
            "channels": chans,
            "reconnects": g(&s.reconnects),
            "failed_reconnects": g(&s.failed_reconnects),
            "connection_losses": g(&s.connection_losses),
            "timeouts": g(&s.timeouts),
            "aborts_sent": g(&s.aborts_sent),
            "aborts_succeeded": g(&s.aborts_succeeded),
            "lun_resets_sent": g(&s.lun_resets_sent),
            "lun_resets_succeeded": g(&s.lun_resets_succeeded),
            "retries": g(&s.retries),
            "failed_fast": g(&s.failed_fast),
            "zero_copy_cmds": g(&s.zero_copy_cmds),
            "bounce_cmds": g(&s.bounce_cmds),
            "bounce_bytes": g(&s.bounce_bytes),
            "immediate_cmds": g(&s.immediate_cmds),
            "indirect_cmds": g(&s.indirect_cmds),
            "external_tables": g(&s.external_tables),
            "unknown_tags": g(&s.unknown_tags),
            "protocol_errors": g(&s.protocol_errors),
            "cred_reqs": g(&s.cred_reqs),
            "aer_reqs": g(&s.aer_reqs),
            "registered_regions": mrs.as_ref().map(|(_, t, _)| t.len()).unwrap_or(0),
            "unregistrable_regions": mrs.as_ref().map(|(_, t, _)| t.failures()).unwrap_or(0),
            "timeouts_config": {
                "cmd_timeout_s": self.cfg.cmd_timeout.as_secs_f64(),
                "reconnect_delay_s": tmo_json(self.cfg.reconnect_delay),
                "fast_io_fail_tmo_s": tmo_json(self.cfg.fast_io_fail_tmo),
                "dev_loss_tmo_s": tmo_json(self.cfg.dev_loss_tmo),
            },
            "lu": geo.map(|g| g.json()),
        })
    }
}

fn tmo_json(d: Option<Duration>) -> serde_json::Value {
    match d {
        Some(d) => serde_json::json!(d.as_secs_f64()),
        None => serde_json::json!("off"),
    }
}

/// `0x` + 32 hex digits.
pub fn format_port_id(p: &srp::PortId) -> String {
    p.to_hex()
}

/// What channels tell the coordinator.
#[derive(Debug)]
pub(crate) enum Event {
    /// The login of channel `ch` for attempt `attempt` finished.
    Connected {
        ch: usize,
        attempt: u64,
        result: Result<(), String>,
    },
    /// Channel `ch` lost its connection.
    LinkDown { ch: usize, why: String },
    /// Discovery on channel 0 finished.
    Discovered(Result<Geometry, String>),
    /// Channel `ch` reset the LU (LUN RESET succeeded).
    LunReset { ch: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// First login and discovery.
    Attaching,
    Running,
    /// Down, a reconnect is scheduled (or disabled).
    Waiting,
    Reconnecting,
    Lost,
    Detached,
}

/// The coordinator's state (touched only on the home reactor, or by the
/// control plane before the session starts).
pub(crate) struct Coord {
    pub phase: Phase,
    /// Login attempt number: results of older attempts are ignored.
    pub attempt: u64,
    /// Channels that still have to answer the current attempt.
    pub waiting: usize,
    pub failed: Option<String>,
    /// Successes of the first login, by channel.
    pub first_ok: Vec<bool>,
    /// Bumped when the port comes back, so that old fail timers do nothing.
    pub outage: u64,
    pub consecutive_failures: u32,
    pub attach_tx: Option<std::sync::mpsc::Sender<Result<Geometry, String>>>,
    pub down_since: Option<Instant>,
}

impl Coord {
    pub fn new(chans: usize, tx: std::sync::mpsc::Sender<Result<Geometry, String>>) -> Coord {
        Coord {
            phase: Phase::Attaching,
            attempt: 0,
            waiting: 0,
            failed: None,
            first_ok: vec![false; chans],
            outage: 0,
            consecutive_failures: 0,
            attach_tx: Some(tx),
            down_since: None,
        }
    }
}

fn coord(s: &Shared) -> std::sync::MutexGuard<'_, Coord> {
    s.coord.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts the first login (on the home reactor).
pub(crate) fn start(s: &Arc<Shared>) {
    let attempt = {
        let mut c = coord(s);
        c.attempt += 1;
        c.waiting = 1;
        c.attempt
    };
    s.to_chan(0, move |c| c.connect(MultiChannelAction::Single, attempt));
}

/// Handles one event, on the home reactor.
pub(crate) fn on_event(s: &Arc<Shared>, ev: Event) {
    match ev {
        Event::Connected {
            ch,
            attempt,
            result,
        } => connected(s, ch, attempt, result),
        Event::LinkDown { ch, why } => link_down(s, ch, why),
        Event::Discovered(r) => discovered(s, r),
        Event::LunReset { ch } => {
            for k in (0..s.active.load(Ordering::Relaxed)).filter(|&k| k != ch) {
                s.to_chan(k, |cn| cn.lun_reset_elsewhere());
            }
        }
    }
}

fn connected(s: &Arc<Shared>, ch: usize, attempt: u64, result: Result<(), String>) {
    let mut c = coord(s);
    if attempt != c.attempt || c.waiting == 0 {
        return;
    }
    c.waiting -= 1;
    match c.phase {
        Phase::Attaching => {
            if let Err(e) = &result {
                if ch == 0 {
                    let tx = c.attach_tx.take();
                    c.phase = Phase::Detached;
                    drop(c);
                    if let Some(tx) = tx {
                        let _ = tx.send(Err(e.clone()));
                    }
                    return;
                }
                tracing::warn!(bdev = %s.cfg.name, channel = ch, error = %e,
                    "SRP channel failed to connect; ch_count truncated");
            } else {
                c.first_ok[ch] = true;
            }
            if ch == 0 {
                // Channel 0 is up (MULTICHAN_SINGLE): the others join.
                if join_others(s, c, s.chans.len()) {
                    first_login_done(s);
                }
                return;
            }
            if c.waiting == 0 {
                drop(c);
                first_login_done(s);
            }
        }
        Phase::Reconnecting => {
            if let Err(e) = &result {
                if c.failed.is_none() {
                    c.failed = Some(format!("channel {ch}: {e}"));
                }
            }
            if ch == 0 && result.is_ok() && c.failed.is_none() {
                if join_others(s, c, s.active.load(Ordering::Relaxed)) {
                    reconnect_done(s);
                }
                return;
            }
            if c.waiting == 0 || (ch == 0 && result.is_err()) {
                c.waiting = 0;
                drop(c);
                reconnect_done(s);
            }
        }
        _ => {}
    }
}

/// Channel 0 logged in: channels 1..n log in with MULTICHAN_MULTI for the
/// same attempt. True if there are none (the attempt is complete).
fn join_others(s: &Arc<Shared>, mut c: std::sync::MutexGuard<'_, Coord>, n: usize) -> bool {
    c.waiting = n - 1;
    let attempt = c.attempt;
    drop(c);
    for k in 1..n {
        s.to_chan(k, move |cn| cn.connect(MultiChannelAction::Multi, attempt));
    }
    n == 1
}

fn first_login_done(s: &Arc<Shared>) {
    let n = {
        let c = coord(s);
        c.first_ok.iter().take_while(|ok| **ok).count()
    };
    s.active.store(n, Ordering::Release);
    for k in n..s.chans.len() {
        s.chans[k]
            .state
            .store(LinkState::Unused as u8, Ordering::Relaxed);
        s.to_chan(k, |cn| {
            cn.teardown("channel not used (ch_count truncated)", false)
        });
    }
    tracing::info!(bdev = %s.cfg.name, ch_count = n, "SRP channels logged in; discovering the LU");
    s.to_chan(0, |cn| cn.discover());
}

fn discovered(s: &Arc<Shared>, r: Result<Geometry, String>) {
    let mut c = coord(s);
    if c.phase != Phase::Attaching {
        return;
    }
    let tx = c.attach_tx.take();
    match &r {
        Ok(g) => {
            *s.geometry.lock().unwrap_or_else(|e| e.into_inner()) = Some(g.clone());
            c.phase = Phase::Running;
            s.set_state(PortState::Running);
            let n = s.active.load(Ordering::Relaxed);
            let g2 = g.clone();
            drop(c);
            for k in 0..n {
                let g = g2.clone();
                s.to_chan(k, move |cn| cn.set_geometry(&g));
            }
        }
        Err(_) => {
            c.phase = Phase::Detached;
        }
    }
    if let Some(tx) = tx {
        let _ = tx.send(r);
    }
}

fn link_down(s: &Arc<Shared>, ch: usize, why: String) {
    let mut c = coord(s);
    match c.phase {
        Phase::Running => {
            s.stats.connection_losses.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(bdev = %s.cfg.name, channel = ch, reason = %why,
                "SRP connection lost; port blocked, I/O held");
            c.phase = Phase::Waiting;
            c.outage += 1;
            c.consecutive_failures = 0;
            c.down_since = Some(Instant::now());
            let outage = c.outage;
            drop(c);
            s.set_state(PortState::Blocked);
            all_down(s, "another channel of the session lost its connection");
            start_fail_timers(s, outage);
            schedule_reconnect(s, 1);
        }
        Phase::Attaching => {
            // Lost during the first login or discovery: the attach fails.
            let tx = c.attach_tx.take();
            c.phase = Phase::Detached;
            drop(c);
            if let Some(tx) = tx {
                let _ = tx.send(Err(format!("channel {ch}: {why}")));
            }
        }
        // A channel of this attempt went down again: the attempt fails.
        Phase::Reconnecting if c.failed.is_none() => {
            c.failed = Some(format!("channel {ch}: {why}"));
        }
        _ => {}
    }
}

/// Every active channel drops its connection (keeping its I/O).
fn all_down(s: &Arc<Shared>, why: &'static str) {
    for k in 0..s.active.load(Ordering::Relaxed) {
        s.to_chan(k, move |cn| cn.teardown(why, true));
    }
}

fn start_fail_timers(s: &Arc<Shared>, outage: u64) {
    if let Some(d) = s.cfg.fast_io_fail_tmo {
        let s2 = Arc::clone(s);
        reactor::timer_after(d, move || {
            let c = coord(&s2);
            if c.outage == outage && matches!(c.phase, Phase::Waiting | Phase::Reconnecting) {
                drop(c);
                tracing::warn!(bdev = %s2.cfg.name, "fast_io_fail_tmo expired: failing I/O");
                s2.set_state(PortState::FailFast);
                fail_all(&s2);
            }
        });
    }
    if let Some(d) = s.cfg.dev_loss_tmo {
        let s2 = Arc::clone(s);
        reactor::timer_after(d, move || {
            let mut c = coord(&s2);
            if c.outage == outage && matches!(c.phase, Phase::Waiting | Phase::Reconnecting) {
                c.phase = Phase::Lost;
                c.attempt += 1;
                drop(c);
                tracing::error!(bdev = %s2.cfg.name, "dev_loss_tmo expired: the SRP port is lost");
                lose(&s2);
            }
        });
    }
}

/// LOST: everything fails, the hook runs once.
pub(crate) fn lose(s: &Arc<Shared>) {
    s.set_state(PortState::Lost);
    for k in 0..s.chans.len() {
        s.to_chan(k, |cn| {
            cn.teardown("port lost", true);
            cn.fail_all();
        });
    }
    let hook = s.on_lost.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(h) = hook {
        // The hook takes control-plane locks: run it off the reactor.
        let _ = std::thread::Builder::new()
            .name("srp-dev-loss".into())
            .spawn(h);
    }
}

fn fail_all(s: &Arc<Shared>) {
    for k in 0..s.active.load(Ordering::Relaxed) {
        s.to_chan(k, |cn| cn.fail_all());
    }
}

/// Schedules reconnect try number `n` (1-based) after the kernel's delay.
fn schedule_reconnect(s: &Arc<Shared>, n: u32) {
    let Some(base) = s.cfg.reconnect_delay else {
        tracing::warn!(bdev = %s.cfg.name, "reconnect_delay is off: not reconnecting");
        return;
    };
    // srp_reconnect_work: delay × min(100, max(1, failures - 10)).
    let factor = n.saturating_sub(10).clamp(1, 100);
    let delay = base * factor;
    let s2 = Arc::clone(s);
    let outage = coord(s).outage;
    reactor::timer_after(delay, move || {
        let mut c = coord(&s2);
        if c.outage != outage || c.phase != Phase::Waiting || s2.detaching.load(Ordering::Acquire) {
            return;
        }
        c.phase = Phase::Reconnecting;
        c.attempt += 1;
        c.failed = None;
        c.waiting = 1;
        let attempt = c.attempt;
        drop(c);
        tracing::info!(bdev = %s2.cfg.name, attempt = n, "SRP reconnecting");
        s2.to_chan(0, move |cn| cn.connect(MultiChannelAction::Single, attempt));
    });
}

fn reconnect_done(s: &Arc<Shared>) {
    let mut c = coord(s);
    if c.phase != Phase::Reconnecting {
        return;
    }
    match c.failed.take() {
        None => {
            c.phase = Phase::Running;
            c.consecutive_failures = 0;
            c.outage += 1;
            let down = c.down_since.take().map(|t| t.elapsed());
            drop(c);
            s.stats.reconnects.fetch_add(1, Ordering::Relaxed);
            tracing::info!(bdev = %s.cfg.name, down_ms = down.map(|d| d.as_millis() as u64),
                "SRP reconnected; resubmitting held I/O");
            s.set_state(PortState::Running);
            for k in 0..s.active.load(Ordering::Relaxed) {
                s.to_chan(k, |cn| cn.resume());
            }
        }
        Some(why) => {
            c.phase = Phase::Waiting;
            c.consecutive_failures += 1;
            let n = c.consecutive_failures;
            drop(c);
            s.stats.failed_reconnects.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(bdev = %s.cfg.name, attempt = n, error = %why, "SRP reconnect failed");
            all_down(s, "reconnect attempt failed");
            schedule_reconnect(s, n + 1);
        }
    }
}
