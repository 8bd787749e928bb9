//! `strata bench rdma`: RDMA micro-benchmarks between two processes over the
//! `rdma` crate, in the manner of perftest (`ib_send_lat`, `ib_write_bw`,
//! `ib_read_bw`), so that the two can be run side by side on the same device.
//!
//! - [`Test::SendLat`]: ping-pong of `size`-byte SENDs. The client sends,
//!   the server answers each message with one of the same size; the client
//!   records one sample per iteration, the round trip halved (as
//!   `ib_send_lat` reports it), from the post of its SEND to the poll of the
//!   answer's RECV completion, read from the TSC (like perftest's cycle
//!   counter) and scaled by the monotonic clock over the whole run.
//! - [`Test::WriteBw`] / [`Test::ReadBw`]: the client posts RDMA WRITEs /
//!   READs of `size` bytes to (from) a buffer the server registered, keeping
//!   `tx_depth` in flight and asking for a completion every `cq_mod` work
//!   requests (perftest's `--cq-mod`). Bandwidth is bytes over the time from
//!   the first post to the last completion, in MiB/s (perftest's "MB/sec" is
//!   2^20 bytes per second too) and messages per second.
//!
//! Connection set-up uses rdma_cm: the server listens, the client connects
//! with its test, size, iteration count and depth in the connect private
//! data (the server takes them from there; only the test must agree), and
//! the server returns its buffer's address, length and rkey in the accept
//! private data. The server serves one connection and returns when the
//! client disconnects. Completion queues are polled, never armed; nothing is
//! allocated on the data path.
//!
//! The loopback provider is an in-process fabric: both ends must live in
//! the same process, which [`Role::Both`] does (a server thread and the
//! client in the calling thread); it also works on verbs.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use rdma::{
    AccessFlags, CmChannel, CmEventKind, CmId, Completion, ConnectOptions, Context, Cq, MrBuf, Pd,
    QpCaps, SendWr, Sge, REJECT_NO_LISTENER,
};
use serde::Serialize;

pub use rdma::Provider;

use crate::{new_histogram, Latency};

/// Which benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Test {
    /// SEND/RECV ping-pong, one-way latency (RTT/2).
    SendLat,
    /// RDMA WRITE bandwidth.
    WriteBw,
    /// RDMA READ bandwidth.
    ReadBw,
}

impl Test {
    /// `send_lat`, `write_bw` or `read_bw`.
    pub fn name(self) -> &'static str {
        match self {
            Test::SendLat => "send_lat",
            Test::WriteBw => "write_bw",
            Test::ReadBw => "read_bw",
        }
    }
    fn code(self) -> u8 {
        match self {
            Test::SendLat => 1,
            Test::WriteBw => 2,
            Test::ReadBw => 3,
        }
    }
    fn from_code(c: u8) -> Option<Test> {
        match c {
            1 => Some(Test::SendLat),
            2 => Some(Test::WriteBw),
            3 => Some(Test::ReadBw),
            _ => None,
        }
    }
    /// perftest's default message size for the equivalent tool (2 bytes for
    /// `ib_send_lat`, 64 KiB for the bandwidth tests).
    pub fn default_size(self) -> usize {
        match self {
            Test::SendLat => 2,
            Test::WriteBw | Test::ReadBw => 65536,
        }
    }
    /// perftest's default iteration count (1000 for latency, 5000 for bandwidth).
    pub fn default_iters(self) -> u64 {
        match self {
            Test::SendLat => 1000,
            Test::WriteBw | Test::ReadBw => 5000,
        }
    }
}

impl FromStr for Test {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "send_lat" => Ok(Test::SendLat),
            "write_bw" => Ok(Test::WriteBw),
            "read_bw" => Ok(Test::ReadBw),
            _ => Err(format!("unknown test `{s}` (send_lat, write_bw, read_bw)")),
        }
    }
}

/// Which end(s) this process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Listen on the address, serve one client, return when it disconnects.
    Server(SocketAddr),
    /// Connect to the address and measure.
    Client(SocketAddr),
    /// Both ends in this process (a server thread plus the client): needed
    /// for the loopback provider, works on verbs too.
    Both(SocketAddr),
}

/// Parameters. The client's `size`, `iters`, `tx_depth` and `cq_mod` are
/// the ones used; a server takes them from the client's connect request.
#[derive(Clone, Debug, Serialize)]
pub struct Params {
    /// The benchmark.
    pub test: Test,
    /// verbs or loopback.
    #[serde(serialize_with = "ser_provider")]
    pub provider: Provider,
    /// Device name; `None`: the one rdma_cm binds the address to.
    pub dev: Option<String>,
    /// Server, client or both.
    pub role: Role,
    /// Bytes per message.
    pub size: usize,
    /// Iterations (messages, or ping-pongs for `send_lat`).
    pub iters: u64,
    /// Work requests in flight (bandwidth tests); send queue depth (`send_lat`
    /// has one SEND in flight and signals each, like `ib_send_lat`).
    pub tx_depth: usize,
    /// Ask for a completion every this many work requests (bandwidth tests;
    /// 0: `min(tx_depth, 64)`).
    pub cq_mod: usize,
    /// Bound on connection set-up, on any wait without progress, and on the
    /// server's wait for the client to finish a bandwidth test.
    pub timeout: Duration,
}

fn ser_provider<S: serde::Serializer>(p: &Provider, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(p.name())
}

impl Params {
    /// Defaults for `test` (perftest's size and iterations, depth 128,
    /// 60 s time-out), device chosen by rdma_cm.
    pub fn new(test: Test, provider: Provider, role: Role) -> Params {
        Params {
            test,
            provider,
            dev: None,
            role,
            size: test.default_size(),
            iters: test.default_iters(),
            tx_depth: 128,
            cq_mod: 0,
            timeout: Duration::from_secs(60),
        }
    }
}

/// Errors.
#[derive(Debug, thiserror::Error)]
pub enum RdmaBenchError {
    /// A parameter is wrong.
    #[error("invalid parameter `{0}`: {1}")]
    Param(&'static str, String),
    /// An rdma call failed.
    #[error("{0}: {1}")]
    Rdma(&'static str, rdma::Error),
    /// Connection management went wrong (rejected, unreachable, bad data).
    #[error("connection: {0}")]
    Connect(String),
    /// A work request completed with an error.
    #[error("{0} completed with {1:?} (vendor error {2:#x})")]
    Completion(&'static str, rdma::WcStatus, u32),
    /// Nothing happened for the time-out.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, &'static str),
    /// The peer went away before the test ended.
    #[error("the peer disconnected {0}")]
    PeerGone(&'static str),
    /// The server thread of a `Both` run panicked.
    #[error("server thread panicked")]
    ServerPanicked,
}

type Result<T, E = RdmaBenchError> = std::result::Result<T, E>;

trait Ctx<T> {
    fn ctx(self, what: &'static str) -> Result<T>;
}

impl<T> Ctx<T> for rdma::Result<T> {
    fn ctx(self, what: &'static str) -> Result<T> {
        self.map_err(|e| RdmaBenchError::Rdma(what, e))
    }
}

/// Bandwidth figures.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Bandwidth {
    /// Bytes moved.
    pub bytes: u64,
    /// MiB (2^20 bytes) per second, perftest's "MB/sec".
    pub mib_per_s: f64,
    /// Decimal MB (10^6 bytes) per second.
    pub mb_per_s: f64,
    /// Gbit/s (10^9 bits), perftest's `--report_gbits`.
    pub gbit_per_s: f64,
    /// Messages per second.
    pub msg_per_s: f64,
}

/// One end's result.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The test.
    pub test: Test,
    /// `"client"` or `"server"`.
    pub role: &'static str,
    /// verbs or loopback.
    pub provider: &'static str,
    /// Device used.
    pub dev: String,
    /// The server's address.
    pub addr: SocketAddr,
    /// Bytes per message.
    pub size: usize,
    /// Iterations run.
    pub iters: u64,
    /// Work requests in flight (bandwidth tests).
    pub tx_depth: usize,
    /// Completion every this many work requests (bandwidth tests).
    pub cq_mod: usize,
    /// Seconds from the first post to the last completion (client), or
    /// connected time (server).
    pub seconds: f64,
    /// `send_lat` client: one-way latency (RTT/2) per iteration; p50 is
    /// perftest's "typical".
    pub latency: Option<Latency>,
    /// `send_lat` client: the smallest one-way sample, µs.
    pub min_us: Option<f64>,
    /// Bandwidth tests, client.
    pub bandwidth: Option<Bandwidth>,
}

impl Report {
    /// A human-readable summary.
    pub fn to_text(&self) -> String {
        let head = format!(
            "rdma {} {} ({} {}, server {}): {} bytes x {} iterations",
            self.test.name(),
            self.role,
            self.provider,
            self.dev,
            self.addr,
            self.size,
            self.iters
        );
        if let (Some(l), Some(min)) = (&self.latency, self.min_us) {
            format!(
                "{head}\n  one-way latency us (RTT/2): min {:.2}  typical(p50) {:.2}  mean {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
                min, l.p50_us, l.mean_us, l.p99_us, l.p999_us, l.max_us
            )
        } else if let Some(b) = &self.bandwidth {
            format!(
                "{head}, tx-depth {}, cq-mod {}\n  BW {:.2} MiB/s ({:.2} MB/s, {:.3} Gb/s)  msg rate {} /s  ({:.3} s)",
                self.tx_depth,
                self.cq_mod,
                b.mib_per_s,
                b.mb_per_s,
                b.gbit_per_s,
                crate::human(b.msg_per_s),
                self.seconds
            )
        } else {
            format!(
                "{head}\n  served one client ({:.3} s connected)",
                self.seconds
            )
        }
    }
}

/// Largest message.
pub const MAX_SIZE: usize = 1 << 30;
/// Deepest send queue.
pub const MAX_TX_DEPTH: usize = 8192;
/// Cap on the registered bytes per side: buffers hold `min(tx_depth,
/// MAX_BUFFER_BYTES / size)` message slots (at least one).
pub const MAX_BUFFER_BYTES: usize = 64 << 20;
/// RECVs kept posted for `send_lat`.
const RECV_DEPTH: usize = 16;

const REQ_MAGIC: &[u8; 4] = b"SBR1";
const REP_MAGIC: &[u8; 4] = b"SBA1";

/// What the client asks for (connect private data, 28 of 56 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Request {
    test: Test,
    size: u64,
    iters: u64,
    tx_depth: u32,
}

impl Request {
    fn encode(&self) -> [u8; 28] {
        let mut b = [0u8; 28];
        b[..4].copy_from_slice(REQ_MAGIC);
        b[4] = self.test.code();
        b[8..16].copy_from_slice(&self.size.to_le_bytes());
        b[16..24].copy_from_slice(&self.iters.to_le_bytes());
        b[24..28].copy_from_slice(&self.tx_depth.to_le_bytes());
        b
    }
    fn decode(b: &[u8]) -> Option<Request> {
        if b.len() < 28 || &b[..4] != REQ_MAGIC {
            return None;
        }
        Some(Request {
            test: Test::from_code(b[4])?,
            size: u64::from_le_bytes(b[8..16].try_into().ok()?),
            iters: u64::from_le_bytes(b[16..24].try_into().ok()?),
            tx_depth: u32::from_le_bytes(b[24..28].try_into().ok()?),
        })
    }
}

/// The server's buffer (accept private data, 28 of 196 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Reply {
    rkey: u32,
    addr: u64,
    len: u64,
    slots: u32,
}

impl Reply {
    fn encode(&self) -> [u8; 28] {
        let mut b = [0u8; 28];
        b[..4].copy_from_slice(REP_MAGIC);
        b[4..8].copy_from_slice(&self.rkey.to_le_bytes());
        b[8..16].copy_from_slice(&self.addr.to_le_bytes());
        b[16..24].copy_from_slice(&self.len.to_le_bytes());
        b[24..28].copy_from_slice(&self.slots.to_le_bytes());
        b
    }
    fn decode(b: &[u8]) -> Option<Reply> {
        if b.len() < 28 || &b[..4] != REP_MAGIC {
            return None;
        }
        Some(Reply {
            rkey: u32::from_le_bytes(b[4..8].try_into().ok()?),
            addr: u64::from_le_bytes(b[8..16].try_into().ok()?),
            len: u64::from_le_bytes(b[16..24].try_into().ok()?),
            slots: u32::from_le_bytes(b[24..28].try_into().ok()?),
        })
    }
}

fn slots_for(size: usize, depth: usize) -> usize {
    depth.min(MAX_BUFFER_BYTES / size.max(1)).max(1)
}

fn effective_cq_mod(p: &Params) -> usize {
    if p.cq_mod == 0 {
        p.tx_depth.min(64)
    } else {
        p.cq_mod.min(p.tx_depth)
    }
}

fn validate(p: &Params) -> Result<()> {
    if p.size == 0 || p.size > MAX_SIZE {
        return Err(RdmaBenchError::Param(
            "size",
            format!("must be 1..={MAX_SIZE}"),
        ));
    }
    if p.iters == 0 {
        return Err(RdmaBenchError::Param("iters", "must be at least 1".into()));
    }
    if p.tx_depth == 0 || p.tx_depth > MAX_TX_DEPTH {
        return Err(RdmaBenchError::Param(
            "tx_depth",
            format!("must be 1..={MAX_TX_DEPTH}"),
        ));
    }
    if p.test == Test::SendLat && p.size > MAX_BUFFER_BYTES / RECV_DEPTH {
        return Err(RdmaBenchError::Param(
            "size",
            format!(
                "send_lat messages must be at most {} bytes",
                MAX_BUFFER_BYTES / RECV_DEPTH
            ),
        ));
    }
    if p.timeout.is_zero() {
        return Err(RdmaBenchError::Param("timeout", "must be positive".into()));
    }
    Ok(())
}

/// Runs this process's end(s); returns the client's report for
/// [`Role::Client`] and [`Role::Both`], the server's for [`Role::Server`].
pub fn run(p: &Params) -> Result<Report> {
    validate(p)?;
    match p.role {
        Role::Server(addr) => serve(p, addr),
        Role::Client(addr) => client(p, addr),
        Role::Both(addr) => {
            let sp = p.clone();
            let server = std::thread::Builder::new()
                .name("rdma-bench-server".into())
                .spawn(move || serve(&sp, addr))
                .map_err(|e| {
                    RdmaBenchError::Connect(format!("cannot start the server thread: {e}"))
                })?;
            let c = client(p, addr);
            let s = server.join().map_err(|_| RdmaBenchError::ServerPanicked)?;
            let c = c?;
            s?;
            Ok(c)
        }
    }
}

/// Waits a little between empty polls of the CM channel (never on the data path).
fn cm_pause() {
    std::thread::sleep(Duration::from_micros(200));
}

fn next_event(
    chan: &mut CmChannel,
    deadline: Instant,
    timeout: Duration,
    what: &'static str,
) -> Result<CmEventKind> {
    loop {
        if let Some(ev) = chan.poll_event().ctx("rdma_get_cm_event")? {
            if matches!(ev.kind, CmEventKind::TimewaitExit) {
                continue;
            }
            return Ok(ev.kind);
        }
        if Instant::now() > deadline {
            return Err(RdmaBenchError::Timeout(timeout, what));
        }
        cm_pause();
    }
}

struct Dev {
    ctx: Context,
    pd: Pd,
    cq: Cq,
}

fn open_dev(p: &Params, id: &CmId) -> Result<Dev> {
    let name = match (&p.dev, id.device_name()) {
        (Some(d), _) => d.clone(),
        (None, Some(d)) => d,
        (None, None) => {
            return Err(RdmaBenchError::Connect(
                "rdma_cm bound the id to no device".into(),
            ))
        }
    };
    let ctx = Context::open(p.provider, &name).ctx("open device")?;
    let pd = Pd::new(&ctx).ctx("alloc PD")?;
    let cqe = (2 * p.tx_depth + 2 * RECV_DEPTH + 64) as u32;
    let cq = Cq::new(&ctx, cqe).ctx("create CQ")?;
    Ok(Dev { ctx, pd, cq })
}

fn caps(tx_depth: usize) -> QpCaps {
    QpCaps {
        max_send_wr: (tx_depth + 1) as u32,
        max_recv_wr: RECV_DEPTH as u32,
        max_send_sge: 1,
        max_recv_sge: 1,
        max_inline_data: 0,
    }
}

/// Polls `cq` for one batch, failing on error completions; counts empty polls
/// and checks the deadline now and then.
///
/// The clock is read only after every 4096 empty polls in a row (the first
/// such read starts the idle time): the hot path reads no clock (on a TCG
/// guest `clock_gettime` is a system call and an emulated HPET read).
struct Poller {
    wc: [Completion; 32],
    empty: u32,
    idle_since: Option<Instant>,
    timeout: Duration,
}

impl Poller {
    fn new(timeout: Duration) -> Poller {
        Poller {
            wc: [Completion::EMPTY; 32],
            empty: 0,
            idle_since: None,
            timeout,
        }
    }
    /// Polls once; returns the completions (all successful).
    #[inline]
    fn poll(&mut self, cq: &mut Cq, what: &'static str) -> Result<&[Completion]> {
        let n = cq.poll(&mut self.wc);
        if n == 0 {
            self.empty = self.empty.wrapping_add(1);
            if self.empty.is_multiple_of(4096) {
                match self.idle_since {
                    None => self.idle_since = Some(Instant::now()),
                    Some(t) if t.elapsed() > self.timeout => {
                        return Err(RdmaBenchError::Timeout(self.timeout, what))
                    }
                    Some(_) => {}
                }
            }
            return Ok(&[]);
        }
        self.empty = 0;
        self.idle_since = None;
        for c in &self.wc[..n] {
            if !c.status.is_ok() {
                return Err(RdmaBenchError::Completion(what, c.status, c.vendor_err));
            }
        }
        Ok(&self.wc[..n])
    }
}

/// A cheap cycle counter for per-iteration samples (the TSC on x86-64, as
/// perftest's `get_cycles`), converted to time by calibrating it against
/// [`Instant`] over the whole run; nanoseconds elsewhere.
#[inline]
fn ticks() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: RDTSC has no preconditions on x86-64.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }
}

// ---------------------------------------------------------------------------
// server
// ---------------------------------------------------------------------------

fn serve(p: &Params, addr: SocketAddr) -> Result<Report> {
    let mut chan = CmChannel::new(p.provider).ctx("create CM channel")?;
    let _listener = chan.listen(addr, 4).ctx("listen")?;
    let deadline = Instant::now() + p.timeout;
    let (mut id, pdata) = loop {
        match next_event(&mut chan, deadline, p.timeout, "a client to connect")? {
            CmEventKind::ConnectRequest { id, private_data } => break (id, private_data),
            other => tracing::debug!(event = ?other, "rdma bench server: ignoring CM event"),
        }
    };
    let Some(req) = Request::decode(pdata.as_bytes()) else {
        let _ = id.reject(b"strata bench rdma: not a bench client");
        return Err(RdmaBenchError::Connect(
            "a client sent unknown connect private data".into(),
        ));
    };
    if req.test != p.test {
        let msg = format!(
            "strata bench rdma: server runs {}, client asked for {}",
            p.test.name(),
            req.test.name()
        );
        let _ = id.reject(&msg.as_bytes()[..msg.len().min(rdma::MAX_REJECT_PRIVATE_DATA)]);
        return Err(RdmaBenchError::Connect(msg));
    }
    let size = usize::try_from(req.size).unwrap_or(usize::MAX);
    let tx_depth = req.tx_depth as usize;
    let mut sp = p.clone();
    sp.size = size;
    sp.iters = req.iters;
    sp.tx_depth = tx_depth;
    if let Err(e) = validate(&sp) {
        let msg = format!("strata bench rdma: {e}");
        let _ = id.reject(&msg.as_bytes()[..msg.len().min(rdma::MAX_REJECT_PRIVATE_DATA)]);
        return Err(e);
    }
    let mut dev = open_dev(&sp, &id)?;
    id.create_qp(&dev.pd, &dev.cq, &dev.cq, caps(tx_depth))
        .ctx("create QP")?;
    let dev_name = dev.ctx.name().to_string();
    let report = |seconds: f64| Report {
        test: p.test,
        role: "server",
        provider: p.provider.name(),
        dev: dev_name.clone(),
        addr,
        size,
        iters: req.iters,
        tx_depth,
        cq_mod: effective_cq_mod(&sp),
        seconds,
        latency: None,
        min_us: None,
        bandwidth: None,
    };
    match p.test {
        Test::SendLat => {
            let rbuf = MrBuf::new(&dev.pd, size * RECV_DEPTH).ctx("register RECV buffers")?;
            let sbuf = MrBuf::new(&dev.pd, size).ctx("register SEND buffer")?;
            let rsges: Vec<Sge> = (0..RECV_DEPTH)
                .map(|i| rbuf.sge(i * size, size as u32))
                .collect::<rdma::Result<_>>()
                .ctx("SGE")?;
            for (i, s) in rsges.iter().enumerate() {
                // SAFETY: `rbuf` outlives the QP (`id` is dropped first, below)
                // and is never read while RECVs are outstanding.
                unsafe { id.post_recv(i as u64, std::slice::from_ref(s)) }.ctx("post RECV")?;
            }
            id.accept(&[]).ctx("accept")?;
            wait_established(&mut chan, p.timeout)?;
            let t0 = Instant::now();
            let r = serve_pingpong(
                &mut id,
                &mut dev.cq,
                &rsges,
                &sbuf,
                size,
                req.iters,
                p.timeout,
            );
            let secs = t0.elapsed().as_secs_f64();
            if r.is_ok() {
                wait_disconnect(&mut chan, p.timeout);
            }
            // The QP goes before the buffers its work refers to.
            drop(id);
            drop((rbuf, sbuf));
            r?;
            Ok(report(secs))
        }
        Test::WriteBw | Test::ReadBw => {
            let slots = slots_for(size, tx_depth);
            let access =
                AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE | AccessFlags::REMOTE_READ;
            // SAFETY: this process never looks at the buffer: the peer may
            // write and read it at will.
            let buf = unsafe { MrBuf::with_access(&dev.pd, size * slots, access) }
                .ctx("register the target buffer")?;
            let rep = Reply {
                rkey: buf.rkey(),
                addr: buf.addr(),
                len: buf.len() as u64,
                slots: slots as u32,
            };
            id.accept(&rep.encode()).ctx("accept")?;
            wait_established(&mut chan, p.timeout)?;
            let t0 = Instant::now();
            // The client does the work; wait for it to disconnect.
            let deadline = Instant::now() + p.timeout;
            loop {
                match next_event(&mut chan, deadline, p.timeout, "the client to finish")? {
                    CmEventKind::Disconnected => break,
                    CmEventKind::DeviceRemoval => {
                        return Err(RdmaBenchError::PeerGone("(device removed)"))
                    }
                    _ => {}
                }
            }
            let secs = t0.elapsed().as_secs_f64();
            let _ = id.disconnect();
            drop(id);
            drop(buf);
            Ok(report(secs))
        }
    }
}

fn wait_established(chan: &mut CmChannel, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match next_event(chan, deadline, timeout, "Established")? {
            CmEventKind::Established { .. } => return Ok(()),
            CmEventKind::Disconnected => {
                return Err(RdmaBenchError::PeerGone("before the connection was up"))
            }
            k @ (CmEventKind::ConnectError { .. }
            | CmEventKind::Unreachable { .. }
            | CmEventKind::Rejected { .. }) => {
                return Err(RdmaBenchError::Connect(format!("{k:?}")))
            }
            _ => {}
        }
    }
}

/// Waits (bounded) for the peer's disconnect, answers it.
fn wait_disconnect(chan: &mut CmChannel, timeout: Duration) {
    let deadline = Instant::now() + timeout.min(Duration::from_secs(10));
    while let Ok(k) = next_event(chan, deadline, timeout, "Disconnected") {
        if matches!(k, CmEventKind::Disconnected) {
            break;
        }
    }
}

fn serve_pingpong(
    id: &mut CmId,
    cq: &mut Cq,
    rsges: &[Sge],
    sbuf: &MrBuf,
    size: usize,
    iters: u64,
    timeout: Duration,
) -> Result<()> {
    let ssge = sbuf.sge(0, size as u32).ctx("SGE")?;
    let mut poller = Poller::new(timeout);
    let mut received = 0u64;
    let mut last_signaled_done = false;
    while received < iters || !last_signaled_done {
        let wcs = poller.poll(cq, "the client's next message")?;
        let mut got = 0u64;
        let mut repost = [u64::MAX; 32];
        for c in wcs {
            match c.opcode {
                rdma::WcOpcode::Recv => {
                    repost[got as usize] = c.wr_id;
                    got += 1;
                }
                _ if c.wr_id == iters - 1 => last_signaled_done = true,
                _ => {}
            }
        }
        for &slot in &repost[..got as usize] {
            let i = received;
            received += 1;
            if i + (RECV_DEPTH as u64) < iters {
                // SAFETY: the slot's buffer is registered, outlives the QP
                // (the caller drops the id first) and is never read here.
                unsafe { id.post_recv(slot, std::slice::from_ref(&rsges[slot as usize])) }
                    .ctx("post RECV")?;
            }
            // Every SEND signaled, as ib_send_lat (TX depth 1) does.
            let wr = SendWr::send(i, std::slice::from_ref(&ssge));
            // SAFETY: `sbuf` outlives the QP and is never written.
            unsafe { id.post_send(&wr) }.ctx("post SEND")?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// client
// ---------------------------------------------------------------------------

fn client(p: &Params, addr: SocketAddr) -> Result<Report> {
    let mut chan = CmChannel::new(p.provider).ctx("create CM channel")?;
    let deadline = Instant::now() + p.timeout;
    let req = Request {
        test: p.test,
        size: p.size as u64,
        iters: p.iters,
        tx_depth: p.tx_depth as u32,
    };
    let mut dev: Option<Dev> = None;
    // Connect, retrying while nobody listens yet (the server may still be starting).
    let (mut id, reply) = loop {
        let mut id = chan.create_id().ctx("rdma_create_id")?;
        id.resolve_addr(None, addr, p.timeout).ctx("resolve_addr")?;
        match next_event(&mut chan, deadline, p.timeout, "address resolution")? {
            CmEventKind::AddrResolved => {}
            k => return Err(RdmaBenchError::Connect(format!("resolving {addr}: {k:?}"))),
        }
        id.resolve_route(p.timeout).ctx("resolve_route")?;
        match next_event(&mut chan, deadline, p.timeout, "route resolution")? {
            CmEventKind::RouteResolved => {}
            k => return Err(RdmaBenchError::Connect(format!("route to {addr}: {k:?}"))),
        }
        if dev.is_none() {
            dev = Some(open_dev(p, &id)?);
        }
        let d = dev.as_ref().expect("opened above");
        id.create_qp(&d.pd, &d.cq, &d.cq, caps(p.tx_depth))
            .ctx("create QP")?;
        let opts = ConnectOptions {
            initiator_depth: p.tx_depth.min(255) as u8,
            ..ConnectOptions::default()
        };
        id.connect_with(&req.encode(), &opts).ctx("connect")?;
        match next_event(&mut chan, deadline, p.timeout, "the server to accept")? {
            CmEventKind::Established { private_data } => {
                break (id, Reply::decode(private_data.as_bytes()))
            }
            CmEventKind::Rejected { reason, .. } if reason == REJECT_NO_LISTENER => {
                drop(id);
                if Instant::now() > deadline {
                    return Err(RdmaBenchError::Connect(format!("nobody listens on {addr}")));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            CmEventKind::Rejected {
                reason,
                private_data,
            } => {
                let text = String::from_utf8_lossy(private_data.as_bytes());
                return Err(RdmaBenchError::Connect(format!(
                    "rejected (reason {reason}): {}",
                    text.trim_end_matches('\0')
                )));
            }
            k => {
                return Err(RdmaBenchError::Connect(format!(
                    "connecting to {addr}: {k:?}"
                )))
            }
        }
    };
    let mut dev = dev.expect("opened before connecting");
    let cq_mod = effective_cq_mod(p);
    let mut report = Report {
        test: p.test,
        role: "client",
        provider: p.provider.name(),
        dev: dev.ctx.name().to_string(),
        addr,
        size: p.size,
        iters: p.iters,
        tx_depth: p.tx_depth,
        cq_mod,
        seconds: 0.0,
        latency: None,
        min_us: None,
        bandwidth: None,
    };
    let r = match p.test {
        Test::SendLat => {
            let rbuf = MrBuf::new(&dev.pd, p.size * RECV_DEPTH).ctx("register RECV buffers")?;
            let sbuf = MrBuf::new(&dev.pd, p.size).ctx("register SEND buffer")?;
            let r = pingpong(&mut id, &mut dev.cq, &rbuf, &sbuf, p, &mut report);
            // The QP goes before the buffers its work refers to.
            let _ = id.disconnect();
            drop(id);
            drop((rbuf, sbuf));
            r
        }
        Test::WriteBw | Test::ReadBw => {
            let reply = reply.ok_or_else(|| {
                RdmaBenchError::Connect("the server's accept carried no buffer".into())
            })?;
            let slots = slots_for(p.size, p.tx_depth);
            let rslots = reply.slots.max(1) as usize;
            if (rslots as u64) * (p.size as u64) > reply.len {
                return Err(RdmaBenchError::Connect(format!(
                    "the server's buffer ({} bytes) is smaller than {rslots} x {} bytes",
                    reply.len, p.size
                )));
            }
            let buf = MrBuf::new(&dev.pd, p.size * slots).ctx("register the local buffer")?;
            let r = bandwidth(
                &mut id,
                &mut dev.cq,
                &buf,
                slots,
                &reply,
                rslots,
                p,
                cq_mod,
                &mut report,
            );
            let _ = id.disconnect();
            drop(id);
            drop(buf);
            r
        }
    };
    r.map(|()| report)
}

fn pingpong(
    id: &mut CmId,
    cq: &mut Cq,
    rbuf: &MrBuf,
    sbuf: &MrBuf,
    p: &Params,
    report: &mut Report,
) -> Result<()> {
    let size = p.size;
    let rsges: Vec<Sge> = (0..RECV_DEPTH)
        .map(|i| rbuf.sge(i * size, size as u32))
        .collect::<rdma::Result<_>>()
        .ctx("SGE")?;
    // The server answers only after our first SEND, so RECVs posted now are in time.
    for (i, s) in rsges.iter().enumerate() {
        // SAFETY: `rbuf` outlives the QP (the caller drops the id first) and
        // is never read while the RECVs are outstanding.
        unsafe { id.post_recv(i as u64, std::slice::from_ref(s)) }.ctx("post RECV")?;
    }
    let ssge = sbuf.sge(0, size as u32).ctx("SGE")?;
    // Samples are in ticks (see `ticks`), scaled to time at the end.
    let mut hist = new_histogram();
    let mut min_ticks = u64::MAX;
    let mut poller = Poller::new(p.timeout);
    let mut last_send_done = false;
    let (t_start, c_start) = (Instant::now(), ticks());
    for i in 0..p.iters {
        // Every SEND signaled, as ib_send_lat (TX depth 1) does; their
        // completions are reaped while waiting for the answer.
        let wr = SendWr::send(i, std::slice::from_ref(&ssge));
        let t0 = ticks();
        // SAFETY: `sbuf` outlives the QP and is never written.
        unsafe { id.post_send(&wr) }.ctx("post SEND")?;
        let slot = 'wait: loop {
            let wcs = poller.poll(cq, "the server's answer")?;
            let mut slot = None;
            for c in wcs {
                if c.opcode == rdma::WcOpcode::Recv {
                    slot = Some(c.wr_id);
                } else if c.wr_id + 1 == p.iters {
                    last_send_done = true;
                }
            }
            if let Some(s) = slot {
                break 'wait s;
            }
        };
        let one_way = (ticks().wrapping_sub(t0) / 2).max(1);
        hist.saturating_record(one_way);
        min_ticks = min_ticks.min(one_way);
        if i + (RECV_DEPTH as u64) < p.iters {
            // SAFETY: as above; the slot's previous RECV has completed.
            unsafe { id.post_recv(slot, std::slice::from_ref(&rsges[slot as usize])) }
                .ctx("post RECV")?;
        }
    }
    let (secs, c_end) = (t_start.elapsed().as_secs_f64(), ticks());
    let us_per_tick = secs * 1e6 / c_end.wrapping_sub(c_start).max(1) as f64;
    // Reap the last signaled SEND before tearing the QP down.
    while !last_send_done {
        for c in poller.poll(cq, "the last SEND's completion")? {
            if c.opcode != rdma::WcOpcode::Recv && c.wr_id + 1 == p.iters {
                last_send_done = true;
            }
        }
    }
    report.seconds = secs;
    let us = |t: u64| t as f64 * us_per_tick;
    report.latency = Some(Latency {
        mean_us: hist.mean() * us_per_tick,
        p50_us: us(hist.value_at_quantile(0.50)),
        p99_us: us(hist.value_at_quantile(0.99)),
        p999_us: us(hist.value_at_quantile(0.999)),
        max_us: us(hist.max()),
    });
    report.min_us = Some(us(min_ticks));
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn bandwidth(
    id: &mut CmId,
    cq: &mut Cq,
    buf: &MrBuf,
    slots: usize,
    reply: &Reply,
    rslots: usize,
    p: &Params,
    cq_mod: usize,
    report: &mut Report,
) -> Result<()> {
    let size = p.size;
    let sges: Vec<Sge> = (0..slots)
        .map(|i| buf.sge(i * size, size as u32))
        .collect::<rdma::Result<_>>()
        .ctx("SGE")?;
    let (what, read) = match p.test {
        Test::ReadBw => ("RDMA READ", true),
        _ => ("RDMA WRITE", false),
    };
    let depth = p.tx_depth as u64;
    let cq_mod = cq_mod as u64;
    let mut posted = 0u64;
    let mut completed = 0u64;
    let mut poller = Poller::new(p.timeout);
    let t0 = Instant::now();
    while completed < p.iters {
        while posted < p.iters && posted - completed < depth {
            let sge = &sges[(posted % slots as u64) as usize];
            let raddr = reply.addr + (posted % rslots as u64) * size as u64;
            let mut wr = if read {
                SendWr::read(posted, std::slice::from_ref(sge), raddr, reply.rkey)
            } else {
                SendWr::write(posted, std::slice::from_ref(sge), raddr, reply.rkey)
            };
            wr.signaled = (posted + 1).is_multiple_of(cq_mod) || posted + 1 == p.iters;
            // SAFETY: `buf` outlives the QP (the caller drops the id first);
            // it is never touched by this process, and each in-flight work
            // request of a slot is executed in order by the QP.
            unsafe { id.post_send(&wr) }.ctx(if read {
                "post RDMA READ"
            } else {
                "post RDMA WRITE"
            })?;
            posted += 1;
        }
        let wcs = poller.poll(cq, what)?;
        if let Some(c) = wcs.last() {
            completed = completed.max(c.wr_id + 1);
        }
    }
    let secs = t0.elapsed().as_secs_f64().max(1e-9);
    let bytes = p.iters * size as u64;
    report.seconds = secs;
    report.bandwidth = Some(Bandwidth {
        bytes,
        mib_per_s: bytes as f64 / secs / 1048576.0,
        mb_per_s: bytes as f64 / secs / 1e6,
        gbit_per_s: bytes as f64 * 8.0 / secs / 1e9,
        msg_per_s: p.iters as f64 / secs,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback(test: Test, port: u16) -> Params {
        let mut p = Params::new(
            test,
            Provider::Loopback,
            Role::Both(SocketAddr::from(([127, 0, 0, 1], port))),
        );
        p.timeout = Duration::from_secs(20);
        p
    }

    #[test]
    fn private_data_round_trips() {
        let r = Request {
            test: Test::ReadBw,
            size: 65536,
            iters: 7,
            tx_depth: 9,
        };
        assert_eq!(Request::decode(&r.encode()), Some(r));
        let mut padded = r.encode().to_vec();
        padded.resize(56, 0);
        assert_eq!(Request::decode(&padded), Some(r));
        assert_eq!(Request::decode(b"nonsense"), None);
        let a = Reply {
            rkey: 5,
            addr: 0x1000,
            len: 8192,
            slots: 2,
        };
        assert_eq!(Reply::decode(&a.encode()), Some(a));
    }

    #[test]
    fn send_lat_on_loopback() {
        let mut p = loopback(Test::SendLat, 41801);
        p.iters = 300;
        p.size = 64;
        let r = run(&p).unwrap();
        assert_eq!(r.role, "client");
        let l = r.latency.unwrap();
        assert!(l.p50_us > 0.0 && l.max_us >= l.p50_us);
        assert!(r.min_us.unwrap() <= l.p50_us);
    }

    #[test]
    fn write_and_read_bw_on_loopback() {
        for (test, port) in [(Test::WriteBw, 41802), (Test::ReadBw, 41803)] {
            let mut p = loopback(test, port);
            p.iters = 500;
            p.size = 4096;
            p.tx_depth = 16;
            p.cq_mod = 5;
            let r = run(&p).unwrap();
            let b = r.bandwidth.unwrap();
            assert_eq!(b.bytes, 500 * 4096);
            assert!(b.mib_per_s > 0.0 && b.msg_per_s > 0.0);
            assert_eq!(r.cq_mod, 5);
        }
    }

    #[test]
    fn test_mismatch_is_rejected() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 41804));
        let mut sp = Params::new(Test::WriteBw, Provider::Loopback, Role::Server(addr));
        sp.timeout = Duration::from_secs(10);
        let server = std::thread::spawn(move || run(&sp));
        let mut cp = Params::new(Test::ReadBw, Provider::Loopback, Role::Client(addr));
        cp.timeout = Duration::from_secs(10);
        let e = run(&cp).unwrap_err().to_string();
        assert!(e.contains("server runs write_bw"), "{e}");
        assert!(server.join().unwrap().is_err());
    }

    #[test]
    fn bad_parameters() {
        let mut p = loopback(Test::SendLat, 41805);
        p.size = 0;
        assert!(matches!(run(&p), Err(RdmaBenchError::Param("size", _))));
        p.size = 8;
        p.tx_depth = 0;
        assert!(matches!(run(&p), Err(RdmaBenchError::Param("tx_depth", _))));
    }
}
