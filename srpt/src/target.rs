//! The control plane: a [`Target`] owns its configuration, its LUNs and the
//! list of its channels; its rdma_cm event channel and listener live in a
//! poller on one reactor, which decides logins and routes connection events
//! to the reactors that own the channels.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bdev::Bdev;
use rdma::{CmChannel, CmEventKind, CmId, CmToken, PrivateData};
use srp::{
    BufFormats, Encode, LoginRej, LoginRejReason, LoginReq, LoginRsp, MultiChannelAction,
    MultiChannelResult, PortId, TLogoutReason,
};

use crate::channel::{self, with_channel, ChanParams};
use crate::config::{format_port_id, ConfigError, SrptTargetParams, TargetConfig};

/// Largest `max_it_iu_len` a login may ask for (64 KiB of immediate data
/// behind the 68-byte header, rounded).
pub const MAX_IT_IU_LEN: u32 = 65536 + 128;
/// Smallest `max_it_iu_len` (an `SRP_CMD` with one descriptor).
pub const MIN_IT_IU_LEN: u32 = 64;

/// Tunables that are not RPC parameters.
#[derive(Clone, Debug)]
pub struct TargetOptions {
    /// Registered data-buffer pool per channel, bytes.
    pub pool_bytes: usize,
    /// Largest buffer window one command uses at a time, bytes.
    pub max_window: usize,
    /// Reactor (index) that runs the rdma_cm poller.
    pub cm_reactor: usize,
    /// Reactors (indices) that own channels, round robin; empty = all.
    pub data_reactors: Vec<usize>,
}

impl Default for TargetOptions {
    fn default() -> Self {
        TargetOptions {
            pool_bytes: 16 << 20,
            max_window: 1 << 20,
            cm_reactor: 0,
            data_reactors: Vec::new(),
        }
    }
}

/// Errors of the control plane.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// A parameter is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The LUNs handed in do not match the parameters.
    #[error("invalid parameter `luns`: {0}")]
    Luns(String),
    /// A LUN's description was refused by the SCSI layer.
    #[error("LUN {lun}: {source}")]
    Scsi {
        /// The LUN.
        lun: u16,
        /// Why.
        #[source]
        source: scsi::ConfigError,
    },
    /// Creating the listener failed.
    #[error("listening on {addr} failed")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The RDMA error.
        #[source]
        source: rdma::Error,
    },
    /// A reactor is missing or shutting down.
    #[error(transparent)]
    Reactor(#[from] reactor::ReactorError),
    /// Sessions did not drain in time when deleting.
    #[error("target {0}: sessions did not log out within {1:?}")]
    DrainTimeout(String, Duration),
}

/// Channel life cycle (shared with [`crate::channel`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(crate) enum ChanState {
    Connecting = 0,
    Live = 1,
    LoggingOut = 2,
    Closing = 3,
    Disconnected = 4,
    Released = 5,
}

impl ChanState {
    fn from_u8(v: u8) -> ChanState {
        match v {
            0 => ChanState::Connecting,
            1 => ChanState::Live,
            2 => ChanState::LoggingOut,
            3 => ChanState::Closing,
            4 => ChanState::Disconnected,
            _ => ChanState::Released,
        }
    }

    fn name(self) -> &'static str {
        match self {
            ChanState::Connecting => "connecting",
            ChanState::Live => "live",
            ChanState::LoggingOut => "logging_out",
            ChanState::Closing => "closing",
            ChanState::Disconnected => "disconnected",
            ChanState::Released => "released",
        }
    }
}

/// What the control plane knows about a channel; the channel updates the
/// counters with relaxed stores once per busy poll.
pub(crate) struct ChanInfo {
    pub token: CmToken,
    pub reactor: usize,
    pub initiator: PortId,
    pub initiator_str: String,
    pub queue_depth: u32,
    pub iu_len: u32,
    pub immediate: bool,
    pub qp_num: AtomicU32,
    pub state: AtomicU8,
    pub inflight: AtomicU32,
    pub credits: AtomicU32,
    pub commands: AtomicU64,
}

pub(crate) struct LunEntry {
    pub lun: u16,
    pub scsi: scsi::Lun,
    pub bdev: Arc<dyn Bdev>,
}

#[derive(Default)]
struct Registry {
    chans: Vec<Arc<ChanInfo>>,
    next: usize,
}

/// State shared by the control plane, the CM poller and the channels.
pub(crate) struct TargetShared {
    pub cfg: TargetConfig,
    pub opts: TargetOptions,
    pub luns: Vec<LunEntry>,
    /// Sorted LUN numbers (index = position in `luns`).
    pub lun_numbers: Vec<u16>,
    registry: Mutex<Registry>,
    deleting: AtomicBool,
    cm_done: AtomicBool,
    reactors: usize,
}

impl TargetShared {
    fn reg(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn deleting(&self) -> bool {
        self.deleting.load(Ordering::SeqCst)
    }

    pub fn remove_channel(&self, token: CmToken) {
        self.reg().chans.retain(|c| c.token != token);
    }

    /// The other live channels of `initiator` (same I_T nexus).
    pub fn siblings(&self, initiator: &PortId, except: CmToken) -> Vec<(usize, CmToken)> {
        self.reg()
            .chans
            .iter()
            .filter(|c| c.initiator == *initiator && c.token != except)
            .filter(|c| {
                ChanState::from_u8(c.state.load(Ordering::Relaxed)) < ChanState::Disconnected
            })
            .map(|c| (c.reactor, c.token))
            .collect()
    }

    fn route(&self, token: CmToken) -> Option<usize> {
        self.reg()
            .chans
            .iter()
            .find(|c| c.token == token)
            .map(|c| c.reactor)
    }
}

/// An SRP target: listens with rdma_cm on one address, admits initiators by
/// ACL, and exports its LUNs on every channel. See the crate docs.
pub struct Target {
    shared: Arc<TargetShared>,
    reactors: reactor::ReactorHandle,
    deleted: bool,
}

/// Builds the SCSI description of a bdev-backed LUN: serial = the bdev's
/// UUID as 32 hex digits, device id (VPD 0x83) = the UUID folded to 64 bits
/// as an EUI-64 designator (Linux ranks EUI-64 above the T10 vendor id
/// designator, so the disk's `wwid` becomes `eui.<16 hex digits>`; an NAA
/// "locally assigned" designator ties with T10 and loses), capabilities from
/// the bdev.
pub fn lun_config(bdev: &dyn Bdev) -> scsi::LunConfig {
    let info = bdev.info();
    let serial: String = info.uuid.iter().map(|b| format!("{b:02x}")).collect();
    let mut a = [0u8; 8];
    let mut b = [0u8; 8];
    a.copy_from_slice(&info.uuid[..8]);
    b.copy_from_slice(&info.uuid[8..]);
    let id = u64::from_be_bytes(a) ^ u64::from_be_bytes(b).rotate_left(17);
    let bs = info.block_size;
    scsi::LunConfig {
        block_size: bs,
        num_blocks: info.num_blocks,
        vendor: "STRATA".into(),
        product: "SRP disk".into(),
        revision: "0001".into(),
        serial,
        id,
        designator: scsi::DesignatorKind::Eui64,
        caps: scsi::Capabilities {
            unmap: info.caps.unmap,
            unmap_reads_zero: info.caps.unmap_reads_zeroes,
            write_zeroes: info.caps.write_zeroes,
            write_cache: info.caps.flush,
            read_only: info.caps.read_only,
        },
        limits: scsi::Limits {
            // 64 MiB: what ib_srp's largest max_sect (131072) can send.
            max_transfer_blocks: ((64u64 << 20) / u64::from(bs)) as u32,
            ..Default::default()
        },
    }
}

impl Target {
    /// Creates a target: validates `params`, builds the LUNs over `luns`
    /// (`(lun, bdev)` for every LUN of `params`, the bdev names matching),
    /// and starts listening on the CM reactor.
    pub fn create(
        params: &SrptTargetParams,
        luns: Vec<(u16, Arc<dyn Bdev>)>,
        reactors: reactor::ReactorHandle,
    ) -> Result<Target, TargetError> {
        Self::create_with_options(params, luns, reactors, TargetOptions::default())
    }

    /// [`Target::create`] with explicit [`TargetOptions`].
    pub fn create_with_options(
        params: &SrptTargetParams,
        mut luns: Vec<(u16, Arc<dyn Bdev>)>,
        reactors: reactor::ReactorHandle,
        opts: TargetOptions,
    ) -> Result<Target, TargetError> {
        let cfg = params.validate()?;
        luns.sort_by_key(|(n, _)| *n);
        if luns.len() != cfg.luns.len() {
            return Err(TargetError::Luns(format!(
                "{} bdevs given for {} LUNs",
                luns.len(),
                cfg.luns.len()
            )));
        }
        let mut entries = Vec::with_capacity(luns.len());
        for ((n, bdev), (want_n, want_name)) in luns.into_iter().zip(cfg.luns.iter()) {
            if n != *want_n || bdev.info().name != *want_name {
                return Err(TargetError::Luns(format!(
                    "LUN {want_n} should be bdev `{want_name}`, got LUN {n} bdev `{}`",
                    bdev.info().name
                )));
            }
            let info = scsi::LunInfo::new(lun_config(&*bdev))
                .map_err(|source| TargetError::Scsi { lun: n, source })?;
            entries.push(LunEntry {
                lun: n,
                scsi: scsi::Lun::new(info),
                bdev,
            });
        }
        if opts.cm_reactor >= reactors.len()
            || opts.data_reactors.iter().any(|&r| r >= reactors.len())
        {
            return Err(reactor::ReactorError::NoSuchReactor(opts.cm_reactor).into());
        }
        let shared = Arc::new(TargetShared {
            lun_numbers: entries.iter().map(|e| e.lun).collect(),
            luns: entries,
            registry: Mutex::new(Registry::default()),
            deleting: AtomicBool::new(false),
            cm_done: AtomicBool::new(false),
            reactors: reactors.len(),
            cfg,
            opts,
        });
        let s = Arc::clone(&shared);
        let started = reactors.call(shared.opts.cm_reactor, move || CmPoller::start(s))?;
        if let Err(e) = started {
            return Err(TargetError::Listen {
                addr: shared.cfg.listen,
                source: e,
            });
        }
        tracing::info!(
            target_name = %shared.cfg.name,
            listen = %shared.cfg.listen,
            port_id = %format_port_id(&shared.cfg.port_id),
            luns = shared.luns.len(),
            provider = shared.cfg.provider.name(),
            "SRP target listening"
        );
        Ok(Target {
            shared,
            reactors,
            deleted: false,
        })
    }

    /// The target's name.
    pub fn name(&self) -> &str {
        &self.shared.cfg.name
    }

    /// The validated configuration.
    pub fn config(&self) -> &TargetConfig {
        &self.shared.cfg
    }

    /// The SCSI unit serial number (VPD page 0x80) of `lun`.
    pub fn lun_serial(&self, lun: u16) -> Option<String> {
        self.shared
            .luns
            .iter()
            .find(|l| l.lun == lun)
            .map(|l| l.scsi.info().serial().to_string())
    }

    /// The 8-byte VPD page 0x83 designator (EUI-64) of `lun`, as 16 hex
    /// digits: Linux shows it as `wwid` = `eui.<this>`.
    pub fn lun_designator(&self, lun: u16) -> Option<String> {
        self.shared.luns.iter().find(|l| l.lun == lun).map(|l| {
            l.scsi
                .info()
                .designator_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        })
    }

    /// Number of channels (connecting or logged in).
    pub fn channel_count(&self) -> usize {
        self.shared.reg().chans.len()
    }

    /// `srpt_get_sessions` for this target: one entry per initiator port id
    /// with its channels (QP number, reactor, state, credits the initiator
    /// holds as seen by the target, commands in flight).
    pub fn sessions_json(&self) -> serde_json::Value {
        let reg = self.shared.reg();
        let mut sessions: Vec<(PortId, Vec<serde_json::Value>)> = Vec::new();
        for c in &reg.chans {
            let v = serde_json::json!({
                "qp_num": c.qp_num.load(Ordering::Relaxed),
                "reactor": c.reactor,
                "state": ChanState::from_u8(c.state.load(Ordering::Relaxed)).name(),
                "req_lim": c.queue_depth,
                "credits": c.credits.load(Ordering::Relaxed),
                "inflight": c.inflight.load(Ordering::Relaxed),
                "commands": c.commands.load(Ordering::Relaxed),
                "max_it_iu_len": c.iu_len,
                "immediate_data": c.immediate,
            });
            match sessions.iter_mut().find(|(p, _)| *p == c.initiator) {
                Some((_, chans)) => chans.push(v),
                None => sessions.push((c.initiator, vec![v])),
            }
        }
        let list: Vec<serde_json::Value> = sessions
            .into_iter()
            .map(|(p, chans)| serde_json::json!({ "initiator_port_id": format_port_id(&p), "channels": chans }))
            .collect();
        serde_json::json!({
            "name": self.shared.cfg.name,
            "listen": self.shared.cfg.listen.to_string(),
            "target_port_id": format_port_id(&self.shared.cfg.port_id),
            "sessions": list,
        })
    }

    /// Logs out every channel of `initiator` (`SRP_T_LOGOUT`, then
    /// disconnect). Returns how many channels were told.
    pub fn logout_initiator(&self, initiator: &PortId) -> usize {
        let chans: Vec<(usize, CmToken)> = self
            .shared
            .reg()
            .chans
            .iter()
            .filter(|c| c.initiator == *initiator)
            .map(|c| (c.reactor, c.token))
            .collect();
        for &(r, token) in &chans {
            let _ = self.reactors.send(r, move || {
                with_channel(token, |c| c.logout(TLogoutReason::NoReason));
            });
        }
        chans.len()
    }

    /// Logs out every channel of every initiator (they may log in again).
    /// Returns how many channels were told.
    pub fn logout_all(&self) -> usize {
        let chans: Vec<(usize, CmToken)> = self
            .shared
            .reg()
            .chans
            .iter()
            .map(|c| (c.reactor, c.token))
            .collect();
        for &(r, token) in &chans {
            let _ = self.reactors.send(r, move || {
                with_channel(token, |c| c.logout(TLogoutReason::NoReason));
            });
        }
        chans.len()
    }

    /// `srpt_target_delete`: stops listening, logs every channel out
    /// (`SRP_T_LOGOUT` then disconnect), waits until each has drained its
    /// in-flight bdev I/O and released its resources (at most `timeout`),
    /// and stops the CM poller.
    pub fn delete(mut self, timeout: Duration) -> Result<(), TargetError> {
        self.delete_inner(timeout)
    }

    fn delete_inner(&mut self, timeout: Duration) -> Result<(), TargetError> {
        if self.deleted {
            return Ok(());
        }
        self.deleted = true;
        self.shared.deleting.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + timeout;
        let mut told: Vec<CmToken> = Vec::new();
        loop {
            let chans: Vec<(usize, CmToken)> = self
                .shared
                .reg()
                .chans
                .iter()
                .map(|c| (c.reactor, c.token))
                .collect();
            for &(r, token) in &chans {
                if !told.contains(&token) {
                    told.push(token);
                    let _ = self.reactors.send(r, move || {
                        with_channel(token, |c| c.logout(TLogoutReason::NoReason));
                    });
                }
            }
            let cm_done = self.shared.cm_done.load(Ordering::SeqCst);
            if chans.is_empty() && (cm_done || self.reactors.is_draining()) {
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!(target_name = %self.shared.cfg.name, channels = chans.len(), "target delete timed out");
                return Err(TargetError::DrainTimeout(
                    self.shared.cfg.name.clone(),
                    timeout,
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        tracing::info!(target_name = %self.shared.cfg.name, "SRP target deleted");
        Ok(())
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.delete_inner(Duration::from_secs(5));
    }
}

/// The rdma_cm side of a target, polled on the CM reactor.
struct CmPoller {
    shared: Arc<TargetShared>,
    chan: CmChannel,
    listener: Option<CmId>,
    poller: Option<reactor::PollerId>,
    next_reactor: usize,
    error_logged: bool,
    /// When to look at the event channel next: `rdma_get_cm_event` is a
    /// syscall, and connection events are control-plane, so an idle
    /// listener is checked once a millisecond, not on every reactor loop.
    next_check: Instant,
}

/// How often an idle CM poller reads the event channel.
const CM_POLL_INTERVAL: Duration = Duration::from_millis(1);

impl CmPoller {
    fn start(shared: Arc<TargetShared>) -> rdma::Result<()> {
        let chan = CmChannel::new(shared.cfg.provider)?;
        let listener = chan.listen(shared.cfg.listen, 128)?;
        let me = std::rc::Rc::new(std::cell::RefCell::new(CmPoller {
            shared,
            chan,
            listener: Some(listener),
            poller: None,
            next_reactor: 0,
            error_logged: false,
            next_check: Instant::now(),
        }));
        let p = std::rc::Rc::clone(&me);
        let id = reactor::register_poller("srpt_cm", move || p.borrow_mut().poll());
        me.borrow_mut().poller = Some(id);
        Ok(())
    }

    fn poll(&mut self) -> reactor::Poll {
        let now = Instant::now();
        if now < self.next_check && !self.shared.deleting() {
            return reactor::Poll::Idle;
        }
        let mut n = 0;
        if self.shared.deleting() && self.listener.take().is_some() {
            tracing::debug!(target_name = %self.shared.cfg.name, "listener closed");
        }
        for _ in 0..32 {
            match self.chan.poll_event() {
                Ok(Some(ev)) => {
                    n += 1;
                    self.handle(ev.token, ev.kind);
                }
                Ok(None) => break,
                Err(e) => {
                    if !self.error_logged {
                        self.error_logged = true;
                        tracing::error!(error = %e, "rdma_cm event channel failed");
                    }
                    break;
                }
            }
        }
        if n == 0 {
            self.next_check = now + CM_POLL_INTERVAL;
        }
        if self.shared.deleting() && self.listener.is_none() && self.shared.reg().chans.is_empty() {
            if let Some(id) = self.poller.take() {
                reactor::unregister_poller(id);
                self.shared.cm_done.store(true, Ordering::SeqCst);
            }
        }
        reactor::Poll::from_count(n)
    }

    fn handle(&mut self, token: CmToken, kind: CmEventKind) {
        match kind {
            CmEventKind::ConnectRequest { id, private_data } => self.login(id, private_data),
            CmEventKind::Established { .. } => self.forward(token, |c| c.on_established()),
            CmEventKind::Disconnected | CmEventKind::DeviceRemoval => {
                self.forward(token, |c| c.on_disconnected())
            }
            CmEventKind::ConnectError { status } | CmEventKind::Unreachable { status } => {
                tracing::warn!(status, "connection attempt failed");
                self.forward(token, |c| c.on_disconnected())
            }
            _ => {}
        }
    }

    fn forward(&self, token: CmToken, f: fn(&mut channel::Channel)) {
        if let Some(r) = self.shared.route(token) {
            reactor::send(r, move || {
                with_channel(token, f);
            });
        }
    }

    fn reject(&self, mut id: CmId, tag: u64, reason: LoginRejReason) {
        let rej = LoginRej {
            reason,
            tag,
            buf_fmt: BufFormats::BOTH,
        };
        let mut b = [0u8; LoginRej::SIZE];
        let _ = rej.encode(&mut b);
        if let Err(e) = id.reject(&b) {
            tracing::warn!(error = %e, "rdma_reject failed");
        }
    }

    fn pick_reactor(&mut self) -> usize {
        let o = &self.shared.opts;
        let r = if o.data_reactors.is_empty() {
            self.next_reactor % self.shared.reactors
        } else {
            o.data_reactors[self.next_reactor % o.data_reactors.len()]
        };
        self.next_reactor = self.next_reactor.wrapping_add(1);
        r
    }

    fn login(&mut self, id: CmId, pd: PrivateData) {
        let s = Arc::clone(&self.shared);
        let name = &s.cfg.name;
        let req = match LoginReq::decode_rdma(pd.as_bytes()) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(target_name = %name, error = %e, "login rejected: undecodable SRP_LOGIN_REQ");
                return self.reject(id, 0, LoginRejReason::UnableEstablishChannel);
            }
        };
        let ini = format_port_id(&req.initiator_port_id);
        let refuse = |why: &str, reason: LoginRejReason| {
            tracing::warn!(target_name = %name, initiator = %ini, reason = ?reason, "SRP login rejected: {why}");
            reason
        };
        let reason = if s.deleting() {
            Some(refuse(
                "target is being deleted",
                LoginRejReason::UnableEstablishChannel,
            ))
        } else if req.target_port_id != s.cfg.port_id {
            Some(refuse(
                &format!(
                    "target port id {} is not ours",
                    format_port_id(&req.target_port_id)
                ),
                LoginRejReason::UnableAssociateChannel,
            ))
        } else if !s.cfg.acl.admits(&req.initiator_port_id) {
            Some(refuse(
                "initiator not in the ACL",
                LoginRejReason::ChannelLimitReached,
            ))
        } else if req.req_it_iu_len > MAX_IT_IU_LEN || req.req_it_iu_len < MIN_IT_IU_LEN {
            Some(refuse(
                &format!("max_it_iu_len {}", req.req_it_iu_len),
                LoginRejReason::ReqItIuLengthTooLarge,
            ))
        } else if req.req_buf_fmt.0 & BufFormats::BOTH.0 == 0 {
            Some(refuse(
                "no supported descriptor format",
                LoginRejReason::UnsupportedDescriptorFormat,
            ))
        } else {
            None
        };
        if let Some(reason) = reason {
            return self.reject(id, req.tag, reason);
        }
        // Immediate data: accepted at the initiator's offset if it leaves room
        // for the header, a 16-byte additional CDB and the descriptor.
        let imm_offset = if req.immediate_data_requested
            && req.imm_data_offset >= 68
            && u32::from(req.imm_data_offset) < req.req_it_iu_len
        {
            req.imm_data_offset
        } else {
            0
        };
        let reactor = self.pick_reactor();
        let info = Arc::new(ChanInfo {
            token: id.token(),
            reactor,
            initiator: req.initiator_port_id,
            initiator_str: ini.clone(),
            queue_depth: s.cfg.queue_depth,
            iu_len: req.req_it_iu_len,
            immediate: imm_offset != 0,
            qp_num: AtomicU32::new(0),
            state: AtomicU8::new(ChanState::Connecting as u8),
            inflight: AtomicU32::new(0),
            credits: AtomicU32::new(s.cfg.queue_depth),
            commands: AtomicU64::new(0),
        });
        let (mc, terminate) = {
            let mut reg = s.reg();
            let others: Vec<(usize, CmToken)> = reg
                .chans
                .iter()
                .filter(|c| c.initiator == req.initiator_port_id)
                .filter(|c| {
                    ChanState::from_u8(c.state.load(Ordering::Relaxed)) < ChanState::Disconnected
                })
                .map(|c| (c.reactor, c.token))
                .collect();
            reg.chans.push(Arc::clone(&info));
            reg.next += 1;
            match (req.multichannel, others.is_empty()) {
                (_, true) => (MultiChannelResult::NoChannel, Vec::new()),
                (MultiChannelAction::Single, false) => (MultiChannelResult::Terminated, others),
                (MultiChannelAction::Multi, false) => (MultiChannelResult::Maintained, Vec::new()),
            }
        };
        for (r, token) in terminate {
            reactor::send(r, move || {
                with_channel(token, |c| c.logout(TLogoutReason::MultiChannelAction));
            });
        }
        let rsp = LoginRsp {
            req_lim_delta: s.cfg.queue_depth,
            tag: req.tag,
            max_it_iu_len: req.req_it_iu_len,
            max_ti_iu_len: req.req_it_iu_len,
            buf_fmt: BufFormats::BOTH,
            multichannel: mc,
            immediate_data_supported: imm_offset != 0,
        };
        let p = ChanParams {
            queue_depth: s.cfg.queue_depth,
            iu_len: req.req_it_iu_len,
            imm_offset,
            pool_bytes: s.opts.pool_bytes,
            max_window: s.opts.max_window,
        };
        let shared = Arc::clone(&self.shared);
        reactor::send(reactor, move || {
            channel::setup(shared, info, id, req, p, rsp)
        });
    }
}
