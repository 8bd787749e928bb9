//! A scriptable fake SRP target for the initiator's hostile-target tests.
//!
//! It speaks SRP over the loopback RDMA provider directly (no reactor, no
//! bdev): one thread polls its rdma_cm event channel and the CQ of each
//! connection. It answers the initiator's discovery (TEST UNIT READY,
//! INQUIRY standard and VPD 0x00/0x80/0x83/0xB0/0xB2, READ CAPACITY(16))
//! with plausible data from a 4 MiB RAM disk, and does what the test
//! scripted for everything else:
//!
//! - each login ([`Login`]): the SRP_LOGIN_RSP to accept with (tweaked
//!   fields, or raw bytes), or a reject;
//! - each data command (READ/WRITE/SYNCHRONIZE CACHE/..., in arrival
//!   order, over every connection) and each task management request: a
//!   list of [`Step`]s — move the data, send an SRP_RSP (any tag, status,
//!   sense, residual, lying length fields), raw bytes, SRP_CRED_REQ,
//!   SRP_AER_REQ, SRP_T_LOGOUT, disconnect, or hold (the rest runs when the
//!   test calls [`FakeTarget::release`]); an empty list never answers;
//! - unsolicited steps ([`FakeTarget::inject`]) on the live connection.
//!
//! Unscripted commands are answered properly ([`Step::Good`]), unscripted
//! task management with FUNCTION COMPLETE. Everything the initiator sends is
//! logged ([`Log`]), and the target checks the initiator's credit
//! accounting: a command that arrives without a credit, or that takes the
//! credit the initiator says it holds back for task management, is logged
//! as a violation.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bdev::testing::{check_pattern, fill_pattern};
use rdma::{
    CmChannel, CmEventKind, CmId, CmToken, Completion, Context, Cq, MrBuf, Pd, PrivateData,
    Provider, QpCaps, SendWr, WcStatus,
};
use srp::{
    tsk_mgmt_rsp, AerReq, BufFormats, CredReq, DataDesc, DirectBuf, Encode, Iu, LoginRej,
    LoginRejReason, LoginReq, LoginRsp, Lun, MultiChannelResult, RspFlags, SrpRsp, TLogout,
    TLogoutReason, TaskMgmtFunction,
};

/// Block size of the RAM disk.
pub const BLOCK_SIZE: usize = 4096;
/// Blocks of the RAM disk (4 MiB).
pub const NUM_BLOCKS: u64 = 1024;
/// Credits granted at login unless a [`LoginTweak`] says otherwise.
pub const CREDITS: u32 = 16;
/// The EUI-64 of the LU (VPD 0x83): the initiator's device id is
/// `eui.` and these bytes in hex.
pub const EUI64: [u8; 8] = [0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77];
/// The unit serial number (VPD 0x80).
pub const SERIAL: &str = "HOSTILE0001";
/// Receives posted per connection (more than the initiator may send).
const RECVS: usize = 64;
const SEND_SLOTS: usize = 64;
const SEND_SLOT: usize = 4096;
const STAGE_SLOTS: usize = 16;
const STAGE_BYTES: usize = 512 * 1024;
/// MAXIMUM TRANSFER LENGTH reported in VPD 0xB0 (what one staging slot holds).
pub const MAX_TRANSFER_BLOCKS: u32 = (STAGE_BYTES / BLOCK_SIZE) as u32;

const WR_RECV: u64 = 0;
const WR_SEND: u64 = 1;
const WR_WRITE: u64 = 2;
const WR_READ: u64 = 3;

fn wr(kind: u64, idx: usize) -> u64 {
    kind << 56 | idx as u64
}

/// Which tag an [`Rsp`] carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Tag {
    /// The tag of the command (or task management request) it answers.
    #[default]
    This,
    /// This exact tag.
    Fixed(u64),
    /// The command's tag plus this (e.g. `1 << 16`: the same command slot
    /// of the initiator, another generation).
    Plus(u64),
}

/// An SRP_RSP to send. [`Rsp::good`] is what a sane target sends.
#[derive(Clone, Debug, Default)]
pub struct Rsp {
    /// Its tag.
    pub tag: Tag,
    /// SCSI status.
    pub status: u8,
    /// Sense data (SNSVALID is set when not empty).
    pub sense: Vec<u8>,
    /// Response data (RSPVALID is set when not empty).
    pub resp_data: Vec<u8>,
    /// Flags besides the valid bits (residual over/underflow).
    pub flags: u8,
    /// Data-in residual count.
    pub di: u32,
    /// Data-out residual count.
    pub dout: u32,
    /// Credits returned.
    pub delta: i32,
    /// Lie in SENSE DATA LIST LENGTH (and set SNSVALID).
    pub sense_len: Option<u32>,
    /// Lie in RESPONSE DATA LIST LENGTH (and set RSPVALID).
    pub resp_len: Option<u32>,
}

impl Rsp {
    /// GOOD, one credit back.
    pub fn good() -> Rsp {
        Rsp {
            delta: 1,
            ..Rsp::default()
        }
    }
    /// CHECK CONDITION with fixed-format sense `key`/`asc`/`ascq`.
    pub fn check(key: u8, asc: u8, ascq: u8) -> Rsp {
        Rsp {
            status: 0x02,
            sense: sense(key, asc, ascq),
            delta: 1,
            ..Rsp::default()
        }
    }
    /// A task management answer with response `code`.
    pub fn tmf(code: u8) -> Rsp {
        Rsp {
            resp_data: vec![0, 0, 0, code],
            delta: 1,
            ..Rsp::default()
        }
    }
    /// The same, with another tag.
    pub fn tag(mut self, t: Tag) -> Rsp {
        self.tag = t;
        self
    }
    /// The same, returning `delta` credits.
    pub fn delta(mut self, delta: i32) -> Rsp {
        self.delta = delta;
        self
    }
}

/// Fixed-format sense data (18 bytes).
pub fn sense(key: u8, asc: u8, ascq: u8) -> Vec<u8> {
    let mut s = vec![0u8; 18];
    s[0] = 0x70;
    s[2] = key;
    s[7] = 10;
    s[12] = asc;
    s[13] = ascq;
    s
}

/// One thing the fake target does for a command (see the module docs).
#[derive(Clone, Debug)]
pub enum Step {
    /// Move the command's data: READ(16) RDMA WRITEs the RAM disk's blocks
    /// into the data-in descriptors; WRITE(16) takes immediate data or RDMA
    /// READs the data-out descriptors into the disk (the next step waits
    /// for the READs). Other commands move nothing.
    Data,
    /// [`Step::Data`], then [`Rsp::good`].
    Good,
    /// Send this SRP_RSP.
    Rsp(Rsp),
    /// Send these bytes as an IU.
    Raw(Vec<u8>),
    /// Send an SRP_CRED_REQ granting `delta` credits (logged in
    /// [`Log::sent_reqs`] with its tag).
    CredReq(i32),
    /// Send an SRP_AER_REQ (UNIT ATTENTION sense) granting `delta` credits.
    AerReq(i32),
    /// Send an SRP_T_LOGOUT (and do not disconnect: the initiator must).
    TLogout,
    /// Disconnect the connection.
    Disconnect,
    /// Stop; the rest runs at the next [`FakeTarget::release`].
    Hold,
    /// Answer a discovery command (internal).
    #[doc(hidden)]
    Discover,
}

/// Tweaks over the default SRP_LOGIN_RSP (the initiator's IU length both
/// ways, [`CREDITS`] credits, both descriptor formats, immediate data as
/// requested).
#[derive(Clone, Copy, Debug, Default)]
pub struct LoginTweak {
    /// REQUEST LIMIT DELTA.
    pub req_lim_delta: Option<u32>,
    /// MAXIMUM INITIATOR TO TARGET IU LENGTH.
    pub max_it_iu_len: Option<u32>,
    /// MAXIMUM TARGET TO INITIATOR IU LENGTH.
    pub max_ti_iu_len: Option<u32>,
    /// SUPPORTED BUFFER FORMATS.
    pub buf_fmt: Option<u16>,
    /// IMMEDIATE DATA SUPPORTED.
    pub immediate: Option<bool>,
}

/// How to answer one login.
#[derive(Clone, Debug)]
pub enum Login {
    /// Accept with the default response, tweaked.
    Accept(LoginTweak),
    /// Accept with these bytes as the private data.
    Raw(Vec<u8>),
    /// Reject with an SRP_LOGIN_REJ.
    Reject(LoginRejReason),
}

/// What the test scripted and the target has not used yet.
#[derive(Default)]
struct Script {
    logins: VecDeque<Login>,
    cmds: VecDeque<Vec<Step>>,
    tmfs: VecDeque<Vec<Step>>,
    inject: VecDeque<Step>,
}

/// One SRP_CMD received.
#[derive(Clone, Debug)]
pub struct CmdRecord {
    /// Connection number (1 = the first accepted).
    pub conn: u32,
    /// Its tag.
    pub tag: u64,
    /// The CDB.
    pub cdb: Vec<u8>,
}

impl CmdRecord {
    /// The operation code.
    pub fn opcode(&self) -> u8 {
        self.cdb.first().copied().unwrap_or(0xff)
    }
}

/// One SRP_TSK_MGMT received.
#[derive(Clone, Debug)]
pub struct TmfRecord {
    /// Connection number.
    pub conn: u32,
    /// Its tag.
    pub tag: u64,
    /// The function.
    pub function: TaskMgmtFunction,
    /// The task it names (ABORT TASK).
    pub task_tag: u64,
}

/// Everything the initiator sent, and what the target saw wrong.
#[derive(Clone, Debug, Default)]
pub struct Log {
    /// Login requests (each connect).
    pub logins: Vec<LoginReq>,
    /// Connections accepted.
    pub accepted: u32,
    /// Connections that ended (the initiator disconnected, or we did).
    pub disconnected: u32,
    /// Every SRP_CMD, discovery included.
    pub cmds: Vec<CmdRecord>,
    /// Every SRP_TSK_MGMT.
    pub tmfs: Vec<TmfRecord>,
    /// Tags of SRP_CRED_REQ / SRP_AER_REQ we sent: (opcode, tag).
    pub sent_reqs: Vec<(u8, u64)>,
    /// Tags of the SRP_CRED_RSPs received.
    pub cred_rsps: Vec<u64>,
    /// Tags of the SRP_AER_RSPs received.
    pub aer_rsps: Vec<u64>,
    /// Anything else received (decoded or not), described.
    pub other_ius: Vec<String>,
    /// IUs that arrived without a credit, or commands that took the credit
    /// held back for task management.
    pub credit_violations: Vec<String>,
    /// Failures of the fake target's own work (posting, completions).
    pub errors: Vec<String>,
}

impl Log {
    /// The data commands (everything but discovery) received.
    pub fn data_cmds(&self) -> Vec<&CmdRecord> {
        self.cmds
            .iter()
            .filter(|c| !is_discovery(c.opcode()))
            .collect()
    }
}

struct Shared {
    script: Mutex<Script>,
    log: Mutex<Log>,
    disk: Mutex<Vec<u8>>,
    stop: AtomicBool,
    held: AtomicUsize,
    releases: AtomicUsize,
    /// What MODE SENSE of the Caching page reports: DPOFUA (bit 0), WCE (bit 1).
    caching: AtomicUsize,
    /// SYNCHRONIZE CACHE commands received.
    syncs: AtomicUsize,
    /// WRITEs received with the FUA bit.
    fua_writes: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The fake target: a thread listening on `127.0.0.1:port` of the loopback
/// fabric. Dropping it stops the thread and drops every connection.
pub struct FakeTarget {
    sh: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// The port it listens on.
    pub port: u16,
}

impl FakeTarget {
    /// Starts listening on `127.0.0.1:port` (loopback provider).
    pub fn start(port: u16) -> FakeTarget {
        let sh = Arc::new(Shared {
            script: Mutex::new(Script::default()),
            log: Mutex::new(Log::default()),
            disk: Mutex::new(vec![0u8; NUM_BLOCKS as usize * BLOCK_SIZE]),
            stop: AtomicBool::new(false),
            held: AtomicUsize::new(0),
            releases: AtomicUsize::new(0),
            caching: AtomicUsize::new(3),
            syncs: AtomicUsize::new(0),
            fua_writes: AtomicUsize::new(0),
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let s2 = Arc::clone(&sh);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
        let thread = std::thread::Builder::new()
            .name(format!("fake-srpt-{port}"))
            .spawn(move || {
                let started = CmChannel::new(Provider::Loopback).and_then(|cm| {
                    let l = cm.listen(addr, 16)?;
                    Ok((cm, l))
                });
                let (cm, listener) = match started {
                    Ok(x) => {
                        let _ = tx.send(Ok(()));
                        x
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let mut t = Target {
                    cm,
                    _listener: listener,
                    conns: Vec::new(),
                    sh: s2,
                    next_conn: 0,
                    seq: 0,
                    next_req_tag: 0x7000_0000_0000_0000,
                };
                t.run();
            })
            .expect("spawn the fake target");
        rx.recv()
            .expect("fake target thread")
            .unwrap_or_else(|e| panic!("fake target on port {port}: {e}"));
        FakeTarget {
            sh,
            thread: Some(thread),
            port,
        }
    }

    /// What MODE SENSE(10) of the Caching page answers from now on.
    pub fn set_caching(&self, write_cache: bool, dpofua: bool) {
        self.sh.caching.store(
            usize::from(dpofua) | usize::from(write_cache) << 1,
            Ordering::SeqCst,
        );
    }

    /// (SYNCHRONIZE CACHE commands, WRITEs with FUA) received so far.
    pub fn durability_cmds(&self) -> (usize, usize) {
        (
            self.sh.syncs.load(Ordering::SeqCst),
            self.sh.fua_writes.load(Ordering::SeqCst),
        )
    }

    /// How to answer the next login (unscripted: a good login).
    pub fn push_login(&self, l: Login) {
        lock(&self.sh.script).logins.push_back(l);
    }

    /// What to do for the next data command not yet scripted.
    pub fn push_cmd(&self, steps: Vec<Step>) {
        lock(&self.sh.script).cmds.push_back(steps);
    }

    /// What to do for the next task management request not yet scripted.
    pub fn push_tmf(&self, steps: Vec<Step>) {
        lock(&self.sh.script).tmfs.push_back(steps);
    }

    /// Runs `step` on the live connection (tag 0 for an [`Rsp`] with
    /// [`Tag::This`]).
    pub fn inject(&self, step: Step) {
        lock(&self.sh.script).inject.push_back(step);
    }

    /// Resumes the oldest held command (when one is held).
    pub fn release(&self) {
        self.sh.releases.fetch_add(1, Ordering::AcqRel);
    }

    /// Commands now held.
    pub fn held(&self) -> usize {
        self.sh.held.load(Ordering::Acquire)
    }

    /// Scripted data commands not yet used.
    pub fn unused_cmd_scripts(&self) -> usize {
        lock(&self.sh.script).cmds.len()
    }

    /// A copy of the log.
    pub fn log(&self) -> Log {
        lock(&self.sh.log).clone()
    }

    /// Waits (at most `limit`) until `f(log)` holds.
    pub fn wait_log(&self, limit: Duration, mut f: impl FnMut(&Log) -> bool) -> bool {
        let t0 = Instant::now();
        loop {
            if f(&lock(&self.sh.log)) {
                return true;
            }
            if t0.elapsed() > limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until `n` commands are held.
    pub fn wait_held(&self, n: usize, limit: Duration) -> bool {
        let t0 = Instant::now();
        while self.held() < n {
            if t0.elapsed() > limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// Writes pattern `seed` into `blocks` blocks of the RAM disk at `lba`.
    pub fn disk_fill(&self, lba: u64, blocks: usize, seed: u64) {
        let mut d = lock(&self.sh.disk);
        let off = lba as usize * BLOCK_SIZE;
        fill_pattern(
            &mut d[off..off + blocks * BLOCK_SIZE],
            lba,
            BLOCK_SIZE,
            seed,
        );
    }

    /// Blocks at `lba` that do not hold pattern `seed`.
    pub fn disk_mismatches(&self, lba: u64, blocks: usize, seed: u64) -> usize {
        let d = lock(&self.sh.disk);
        (0..blocks)
            .filter(|&k| {
                let off = (lba as usize + k) * BLOCK_SIZE;
                !check_pattern(&d[off..off + BLOCK_SIZE], lba + k as u64, BLOCK_SIZE, seed)
            })
            .count()
    }
}

impl Drop for FakeTarget {
    fn drop(&mut self) {
        self.sh.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn is_discovery(op: u8) -> bool {
    matches!(op, 0x00 | 0x12 | 0x5a | 0x9e)
}

// ---------------------------------------------------------------------------
// The target thread

struct Target {
    cm: CmChannel,
    _listener: CmId,
    conns: Vec<Conn>,
    sh: Arc<Shared>,
    next_conn: u32,
    seq: u64,
    next_req_tag: u64,
}

/// One command (or task management request, or injected step) being
/// worked on.
struct Ctx {
    tag: u64,
    cdb: Vec<u8>,
    data_in: Vec<DirectBuf>,
    data_out: Vec<DirectBuf>,
    imm: Vec<u8>,
    /// The data-out is described by a table the initiator wants fetched
    /// (not supported here: logged, no data moved).
    fetch_table: bool,
    steps: VecDeque<Step>,
    held: bool,
    /// RDMA READs outstanding (the steps wait for them).
    reads: u32,
    /// Work requests outstanding that use the staging slot.
    wrs: u32,
    stage: Option<usize>,
    /// (lba, bytes) to store from the staging slot once the READs are done.
    store: Option<(u64, usize)>,
    seq: u64,
}

/// One accepted connection. Field order is drop order: the QP (in `id`)
/// goes before the buffers it may use.
struct Conn {
    id: CmId,
    cq: Cq,
    recv: MrBuf,
    send: MrBuf,
    stage: MrBuf,
    _pd: Pd,
    _dev: Context,
    num: u32,
    slot_len: usize,
    send_free: Vec<usize>,
    stage_free: Vec<usize>,
    ctxs: Vec<Option<Ctx>>,
    credits: i64,
    established: bool,
    closing: bool,
    wc: [Completion; 32],
}

impl Target {
    fn run(&mut self) {
        while !self.sh.stop.load(Ordering::Acquire) {
            let mut work = 0;
            loop {
                match self.cm.poll_event() {
                    Ok(Some(ev)) => {
                        work += 1;
                        self.on_cm(ev.token, ev.kind);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        lock(&self.sh.log).errors.push(format!("poll_event: {e}"));
                        break;
                    }
                }
            }
            for c in &mut self.conns {
                work += c.poll(&self.sh, &mut self.seq, &mut self.next_req_tag);
            }
            work += self.injections();
            work += self.releases();
            if work == 0 {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        for c in &mut self.conns {
            let _ = c.id.disconnect();
        }
    }

    fn on_cm(&mut self, token: CmToken, kind: CmEventKind) {
        match kind {
            CmEventKind::ConnectRequest { id, private_data } => self.login(id, private_data),
            CmEventKind::Established { .. } => {
                if let Some(c) = self.conns.iter_mut().find(|c| c.id.token() == token) {
                    c.established = true;
                }
            }
            CmEventKind::Disconnected
            | CmEventKind::DeviceRemoval
            | CmEventKind::ConnectError { .. }
            | CmEventKind::Unreachable { .. } => {
                if let Some(k) = self.conns.iter().position(|c| c.id.token() == token) {
                    let mut c = self.conns.remove(k);
                    let _ = c.id.disconnect();
                    let held = c.ctxs.iter().flatten().filter(|x| x.held).count();
                    self.sh.held.fetch_sub(held, Ordering::AcqRel);
                    lock(&self.sh.log).disconnected += 1;
                }
            }
            _ => {}
        }
    }

    fn login(&mut self, mut id: CmId, pd: PrivateData) {
        let req = match LoginReq::decode_rdma(pd.as_bytes()) {
            Ok(r) => r,
            Err(e) => {
                lock(&self.sh.log)
                    .errors
                    .push(format!("undecodable SRP_LOGIN_REQ: {e}"));
                reject(&mut id, 0, LoginRejReason::UnableEstablishChannel);
                return;
            }
        };
        lock(&self.sh.log).logins.push(req);
        let plan = lock(&self.sh.script)
            .logins
            .pop_front()
            .unwrap_or(Login::Accept(LoginTweak::default()));
        let (bytes, credits) = match plan {
            Login::Reject(reason) => {
                reject(&mut id, req.tag, reason);
                return;
            }
            Login::Raw(b) => (b, 0),
            Login::Accept(t) => {
                let rsp = LoginRsp {
                    req_lim_delta: t.req_lim_delta.unwrap_or(CREDITS),
                    tag: req.tag,
                    max_it_iu_len: t.max_it_iu_len.unwrap_or(req.req_it_iu_len),
                    max_ti_iu_len: t.max_ti_iu_len.unwrap_or(req.req_it_iu_len),
                    buf_fmt: BufFormats(t.buf_fmt.unwrap_or(BufFormats::BOTH.0)),
                    multichannel: MultiChannelResult::NoChannel,
                    immediate_data_supported: t.immediate.unwrap_or(req.immediate_data_requested),
                };
                let mut b = vec![0u8; LoginRsp::SIZE];
                let _ = rsp.encode(&mut b);
                (b, i64::from(rsp.req_lim_delta))
            }
        };
        let slot_len = (req.req_it_iu_len.max(64) as usize).div_ceil(64) * 64;
        match Conn::parts(&mut id, slot_len) {
            Ok((dev, pd, cq, recv, send, stage)) => {
                if let Err(e) = id.accept(&bytes) {
                    lock(&self.sh.log).errors.push(format!("rdma_accept: {e}"));
                    return;
                }
                self.next_conn += 1;
                lock(&self.sh.log).accepted += 1;
                self.conns.push(Conn {
                    id,
                    cq,
                    recv,
                    send,
                    stage,
                    _pd: pd,
                    _dev: dev,
                    num: self.next_conn,
                    slot_len,
                    send_free: (0..SEND_SLOTS).rev().collect(),
                    stage_free: (0..STAGE_SLOTS).rev().collect(),
                    ctxs: Vec::new(),
                    credits,
                    established: false,
                    closing: false,
                    wc: [Completion::EMPTY; 32],
                });
            }
            Err(e) => {
                lock(&self.sh.log)
                    .errors
                    .push(format!("setting up a connection: {e}"));
                reject(&mut id, req.tag, LoginRejReason::InsufficientResources);
            }
        }
    }

    fn live(&mut self) -> Option<&mut Conn> {
        self.conns.iter_mut().rev().find(|c| !c.closing)
    }

    fn injections(&mut self) -> usize {
        let step = {
            let mut s = lock(&self.sh.script);
            if s.inject.is_empty() || self.conns.iter().all(|c| c.closing || !c.established) {
                return 0;
            }
            s.inject.pop_front()
        };
        let Some(step) = step else { return 0 };
        self.seq += 1;
        let seq = self.seq;
        let sh = Arc::clone(&self.sh);
        let mut rt = self.next_req_tag;
        if let Some(c) = self.live() {
            let ci = c.add_ctx(Ctx::new(0, seq, vec![step]));
            c.run(&sh, ci, &mut rt);
        }
        self.next_req_tag = rt;
        1
    }

    fn releases(&mut self) -> usize {
        if self.sh.releases.load(Ordering::Acquire) == 0 {
            return 0;
        }
        // The oldest held context of any connection.
        let mut best: Option<(usize, usize, u64)> = None;
        for (k, c) in self.conns.iter().enumerate() {
            for (i, x) in c.ctxs.iter().enumerate() {
                if let Some(x) = x {
                    if x.held && best.is_none_or(|b| x.seq < b.2) {
                        best = Some((k, i, x.seq));
                    }
                }
            }
        }
        let Some((k, i, _)) = best else { return 0 };
        self.sh.releases.fetch_sub(1, Ordering::AcqRel);
        self.sh.held.fetch_sub(1, Ordering::AcqRel);
        let sh = Arc::clone(&self.sh);
        let mut rt = self.next_req_tag;
        let c = &mut self.conns[k];
        if let Some(x) = c.ctxs[i].as_mut() {
            x.held = false;
        }
        c.run(&sh, i, &mut rt);
        self.next_req_tag = rt;
        1
    }
}

fn reject(id: &mut CmId, tag: u64, reason: LoginRejReason) {
    let rej = LoginRej {
        reason,
        tag,
        buf_fmt: BufFormats::BOTH,
    };
    let mut b = [0u8; LoginRej::SIZE];
    let _ = rej.encode(&mut b);
    let _ = id.reject(&b);
}

impl Ctx {
    fn new(tag: u64, seq: u64, steps: Vec<Step>) -> Ctx {
        Ctx {
            tag,
            cdb: Vec::new(),
            data_in: Vec::new(),
            data_out: Vec::new(),
            imm: Vec::new(),
            fetch_table: false,
            steps: steps.into(),
            held: false,
            reads: 0,
            wrs: 0,
            stage: None,
            store: None,
            seq,
        }
    }
}

type Parts = (Context, Pd, Cq, MrBuf, MrBuf, MrBuf);

impl Conn {
    fn parts(id: &mut CmId, slot_len: usize) -> rdma::Result<Parts> {
        let name = id.device_name().unwrap_or_else(|| "loopback0".into());
        let dev = Context::open(Provider::Loopback, &name)?;
        let pd = Pd::new(&dev)?;
        let cq = Cq::new(&dev, 1024)?;
        id.create_qp(
            &pd,
            &cq,
            &cq,
            QpCaps {
                max_send_wr: 512,
                max_recv_wr: RECVS as u32,
                max_send_sge: 1,
                max_recv_sge: 1,
                max_inline_data: 0,
            },
        )?;
        let recv = MrBuf::new(&pd, RECVS * slot_len)?;
        for slot in 0..RECVS {
            let sge = recv.sge(slot * slot_len, slot_len as u32)?;
            // SAFETY: the slot lies in `recv`, which the connection owns and
            // drops after its QP (field order); it is read only after its
            // completion.
            unsafe { id.post_recv(wr(WR_RECV, slot), &[sge])? };
        }
        let send = MrBuf::new(&pd, SEND_SLOTS * SEND_SLOT)?;
        let stage = MrBuf::new(&pd, STAGE_SLOTS * STAGE_BYTES)?;
        Ok((dev, pd, cq, recv, send, stage))
    }

    fn add_ctx(&mut self, c: Ctx) -> usize {
        if let Some(i) = self.ctxs.iter().position(|x| x.is_none()) {
            self.ctxs[i] = Some(c);
            return i;
        }
        self.ctxs.push(Some(c));
        self.ctxs.len() - 1
    }

    fn err(&self, sh: &Shared, what: String) {
        lock(&sh.log)
            .errors
            .push(format!("connection {}: {what}", self.num));
    }

    fn poll(&mut self, sh: &Shared, seq: &mut u64, rt: &mut u64) -> usize {
        let mut total = 0;
        loop {
            let n = self.cq.poll(&mut self.wc);
            if n == 0 {
                break;
            }
            total += n;
            for k in 0..n {
                let c = self.wc[k];
                self.on_completion(sh, &c, seq, rt);
            }
        }
        total
    }

    fn on_completion(&mut self, sh: &Shared, c: &Completion, seq: &mut u64, rt: &mut u64) {
        let kind = c.wr_id >> 56;
        let idx = (c.wr_id & 0xffff_ffff) as usize;
        if c.status != WcStatus::Success {
            if kind == WR_SEND {
                self.send_free.push(idx);
            } else if kind == WR_WRITE || kind == WR_READ {
                self.wr_done(sh, idx, kind == WR_READ, false, rt);
            }
            if c.status != WcStatus::WrFlush && !self.closing {
                self.err(sh, format!("work request {:#x}: {:?}", c.wr_id, c.status));
            }
            return;
        }
        match kind {
            WR_RECV => self.on_recv(sh, idx, c.byte_len as usize, seq, rt),
            WR_SEND => self.send_free.push(idx),
            WR_WRITE | WR_READ => self.wr_done(sh, idx, kind == WR_READ, true, rt),
            _ => {}
        }
    }

    fn wr_done(&mut self, sh: &Shared, ci: usize, read: bool, ok: bool, rt: &mut u64) {
        let Some(Some(x)) = self.ctxs.get_mut(ci) else {
            return;
        };
        x.wrs = x.wrs.saturating_sub(1);
        if read {
            x.reads = x.reads.saturating_sub(1);
            if x.reads == 0 {
                if let (Some((lba, n)), Some(s), true) = (x.store.take(), x.stage, ok) {
                    let src = &self.stage.as_slice()[s * STAGE_BYTES..s * STAGE_BYTES + n];
                    let off = lba as usize * BLOCK_SIZE;
                    lock(&sh.disk)[off..off + n].copy_from_slice(src);
                }
                self.run(sh, ci, rt);
                return;
            }
        }
        self.maybe_free(ci);
    }

    fn on_recv(&mut self, sh: &Shared, slot: usize, len: usize, seq: &mut u64, rt: &mut u64) {
        let off = slot * self.slot_len;
        let bytes = self.recv.as_slice()[off..off + len.min(self.slot_len)].to_vec();
        // The bytes are copied: give the slot back at once.
        match self.recv.sge(off, self.slot_len as u32) {
            Ok(sge) => {
                // SAFETY: as in `Conn::parts`.
                if let Err(e) = unsafe { self.id.post_recv(wr(WR_RECV, slot), &[sge]) } {
                    self.err(sh, format!("post_recv: {e}"));
                }
            }
            Err(e) => self.err(sh, format!("recv sge: {e}")),
        }
        *seq += 1;
        let ctx = match srp::decode_iu(&bytes) {
            Ok(Iu::Cmd(c)) => {
                let cdb = c.cdb.to_vec();
                self.take_credit(
                    sh,
                    2,
                    &format!("SRP_CMD {:#x} (opcode {:#x})", c.tag, cdb[0]),
                );
                lock(&sh.log).cmds.push(CmdRecord {
                    conn: self.num,
                    tag: c.tag,
                    cdb: cdb.clone(),
                });
                match cdb.first() {
                    Some(0x91) => {
                        sh.syncs.fetch_add(1, Ordering::SeqCst);
                    }
                    Some(0x8a) if cdb.get(1).is_some_and(|b| b & 0x08 != 0) => {
                        sh.fua_writes.fetch_add(1, Ordering::SeqCst);
                    }
                    _ => {}
                }
                let steps = if is_discovery(cdb[0]) {
                    vec![Step::Discover]
                } else {
                    lock(&sh.script)
                        .cmds
                        .pop_front()
                        .unwrap_or_else(|| vec![Step::Good])
                };
                let mut x = Ctx::new(c.tag, *seq, steps);
                x.cdb = cdb;
                x.data_in = c.data_in.descriptors().collect();
                match c.data_out {
                    DataDesc::Immediate(im) => x.imm = im.data.to_vec(),
                    DataDesc::Indirect(i) if !i.is_complete() => x.fetch_table = true,
                    d => x.data_out = d.descriptors().collect(),
                }
                if let DataDesc::Indirect(i) = c.data_in {
                    x.fetch_table |= !i.is_complete();
                }
                x
            }
            Ok(Iu::TskMgmt(t)) => {
                self.take_credit(sh, 1, &format!("SRP_TSK_MGMT {:#x}", t.tag));
                lock(&sh.log).tmfs.push(TmfRecord {
                    conn: self.num,
                    tag: t.tag,
                    function: t.function,
                    task_tag: t.task_tag,
                });
                let steps = lock(&sh.script)
                    .tmfs
                    .pop_front()
                    .unwrap_or_else(|| vec![Step::Rsp(Rsp::tmf(tsk_mgmt_rsp::COMPLETE))]);
                Ctx::new(t.tag, *seq, steps)
            }
            Ok(Iu::CredRsp(r)) => {
                lock(&sh.log).cred_rsps.push(r.tag);
                return;
            }
            Ok(Iu::AerRsp(r)) => {
                lock(&sh.log).aer_rsps.push(r.tag);
                return;
            }
            Ok(other) => {
                lock(&sh.log).other_ius.push(format!(
                    "{:?} tag {:#x}",
                    other.opcode(),
                    other.tag()
                ));
                return;
            }
            Err(e) => {
                lock(&sh.log).other_ius.push(format!(
                    "undecodable IU ({e}): {:02x?}",
                    &bytes[..bytes.len().min(16)]
                ));
                return;
            }
        };
        let ci = self.add_ctx(ctx);
        self.run(sh, ci, rt);
    }

    /// Accounts one credit for an IU that needs `need` available (2 for a
    /// command: the initiator holds one back for task management).
    fn take_credit(&mut self, sh: &Shared, need: i64, what: &str) {
        if self.credits < need {
            lock(&sh.log).credit_violations.push(format!(
                "connection {}: {what} arrived with {} credit(s) available",
                self.num, self.credits
            ));
        }
        self.credits -= 1;
    }

    fn maybe_free(&mut self, ci: usize) {
        let Some(Some(x)) = self.ctxs.get(ci) else {
            return;
        };
        if x.held || x.reads > 0 || x.wrs > 0 || !x.steps.is_empty() {
            return;
        }
        if let Some(Some(x)) = self.ctxs.get_mut(ci).map(Option::take) {
            if let Some(s) = x.stage {
                self.stage_free.push(s);
            }
        }
    }

    /// Runs the steps of context `ci` until one waits (hold, RDMA READs).
    fn run(&mut self, sh: &Shared, ci: usize, rt: &mut u64) {
        loop {
            let Some(Some(x)) = self.ctxs.get_mut(ci) else {
                return;
            };
            if x.held || x.reads > 0 {
                return;
            }
            let Some(step) = x.steps.pop_front() else {
                break;
            };
            match step {
                Step::Hold => {
                    x.held = true;
                    sh.held.fetch_add(1, Ordering::AcqRel);
                    return;
                }
                Step::Good => {
                    x.steps.push_front(Step::Rsp(Rsp::good()));
                    self.data(sh, ci);
                }
                Step::Data => self.data(sh, ci),
                Step::Discover => self.discover(sh, ci),
                Step::Rsp(r) => {
                    let tag = match r.tag {
                        Tag::This => x.tag,
                        Tag::Fixed(t) => t,
                        Tag::Plus(k) => x.tag.wrapping_add(k),
                    };
                    self.send_rsp(sh, tag, &r);
                }
                Step::Raw(b) => self.send_iu(sh, &b),
                Step::CredReq(delta) => {
                    let tag = next_tag(rt);
                    lock(&sh.log).sent_reqs.push((0x81, tag));
                    let iu = CredReq {
                        sol_not: 0,
                        req_lim_delta: delta,
                        tag,
                    };
                    let mut b = vec![0u8; CredReq::SIZE];
                    let _ = iu.encode(&mut b);
                    self.credits += i64::from(delta);
                    self.send_iu(sh, &b);
                }
                Step::AerReq(delta) => {
                    let tag = next_tag(rt);
                    lock(&sh.log).sent_reqs.push((0x82, tag));
                    let s = sense(0x06, 0x2a, 0x09); // CAPACITY DATA HAS CHANGED
                    let iu = AerReq {
                        sol_not: 0,
                        req_lim_delta: delta,
                        tag,
                        lun: Lun([0; 8]),
                        sense_data: &s,
                    };
                    let mut b = vec![0u8; iu.encoded_len()];
                    let _ = iu.encode(&mut b);
                    self.credits += i64::from(delta);
                    self.send_iu(sh, &b);
                }
                Step::TLogout => {
                    let iu = TLogout {
                        sol_not: 0,
                        reason: TLogoutReason::InactiveChannel,
                        tag: 0,
                    };
                    let mut b = vec![0u8; TLogout::SIZE];
                    let _ = iu.encode(&mut b);
                    self.send_iu(sh, &b);
                }
                Step::Disconnect => {
                    self.closing = true;
                    let _ = self.id.disconnect();
                }
            }
        }
        self.maybe_free(ci);
    }

    fn stage_slot(&mut self, sh: &Shared, ci: usize) -> Option<usize> {
        let x = self.ctxs[ci].as_mut()?;
        if let Some(s) = x.stage {
            return Some(s);
        }
        let Some(s) = self.stage_free.pop() else {
            self.err(sh, "no staging slot".into());
            return None;
        };
        if let Some(x) = self.ctxs[ci].as_mut() {
            x.stage = Some(s);
        }
        Some(s)
    }

    /// RDMA WRITEs `data` into the data-in descriptors of `ci`; returns the
    /// bytes moved.
    fn data_in(&mut self, sh: &Shared, ci: usize, data: &[u8]) -> usize {
        let Some(s) = self.stage_slot(sh, ci) else {
            return 0;
        };
        let n = data.len().min(STAGE_BYTES);
        let base = s * STAGE_BYTES;
        self.stage.as_mut_slice()[base..base + n].copy_from_slice(&data[..n]);
        let descs = self.ctxs[ci]
            .as_ref()
            .map(|x| x.data_in.clone())
            .unwrap_or_default();
        let mut done = 0usize;
        for d in descs {
            if done == n {
                break;
            }
            let k = (d.len as usize).min(n - done);
            let sge = match self.stage.sge(base + done, k as u32) {
                Ok(s) => s,
                Err(e) => {
                    self.err(sh, format!("stage sge: {e}"));
                    break;
                }
            };
            // SAFETY: the staging slot belongs to this context until its
            // work requests complete (`wrs`); the stage buffer outlives the
            // QP (field order).
            let r = unsafe {
                self.id
                    .post_send(&SendWr::write(wr(WR_WRITE, ci), &[sge], d.va, d.key))
            };
            match r {
                Ok(()) => {
                    if let Some(x) = self.ctxs[ci].as_mut() {
                        x.wrs += 1;
                    }
                }
                Err(e) => {
                    self.err(sh, format!("RDMA WRITE: {e}"));
                    break;
                }
            }
            done += k;
        }
        done
    }

    fn data(&mut self, sh: &Shared, ci: usize) {
        let Some(x) = self.ctxs[ci].as_ref() else {
            return;
        };
        let cdb = x.cdb.clone();
        if cdb.len() < 16 || x.fetch_table {
            if x.fetch_table {
                self.err(sh, "descriptor table to fetch: not supported".into());
            }
            return;
        }
        let lba = u64::from_be_bytes(cdb[2..10].try_into().unwrap_or([0; 8]));
        let blocks = u32::from_be_bytes(cdb[10..14].try_into().unwrap_or([0; 4])) as u64;
        if lba.saturating_add(blocks) > NUM_BLOCKS {
            return;
        }
        let off = lba as usize * BLOCK_SIZE;
        let n = (blocks as usize * BLOCK_SIZE).min(STAGE_BYTES);
        match cdb[0] {
            0x88 => {
                let data = lock(&sh.disk)[off..off + n].to_vec();
                self.data_in(sh, ci, &data);
            }
            0x8a => {
                if !x.imm.is_empty() {
                    let k = x.imm.len().min(n);
                    lock(&sh.disk)[off..off + k].copy_from_slice(&x.imm[..k]);
                    return;
                }
                let descs = x.data_out.clone();
                let Some(s) = self.stage_slot(sh, ci) else {
                    return;
                };
                let base = s * STAGE_BYTES;
                let mut done = 0usize;
                for d in descs {
                    if done == n {
                        break;
                    }
                    let k = (d.len as usize).min(n - done);
                    let sge = match self.stage.sge(base + done, k as u32) {
                        Ok(s) => s,
                        Err(e) => {
                            self.err(sh, format!("stage sge: {e}"));
                            break;
                        }
                    };
                    // SAFETY: as in `data_in`; the device writes the slot, and
                    // we read it only after the READ completions.
                    let r = unsafe {
                        self.id
                            .post_send(&SendWr::read(wr(WR_READ, ci), &[sge], d.va, d.key))
                    };
                    match r {
                        Ok(()) => {
                            if let Some(x) = self.ctxs[ci].as_mut() {
                                x.wrs += 1;
                                x.reads += 1;
                            }
                        }
                        Err(e) => {
                            self.err(sh, format!("RDMA READ: {e}"));
                            break;
                        }
                    }
                    done += k;
                }
                if let Some(x) = self.ctxs[ci].as_mut() {
                    x.store = Some((lba, done));
                }
            }
            _ => {}
        }
    }

    /// Answers a discovery command: data (from [`discovery_data`]) and a
    /// GOOD response with the data-in residual, or CHECK CONDITION.
    fn discover(&mut self, sh: &Shared, ci: usize) {
        let Some(x) = self.ctxs[ci].as_ref() else {
            return;
        };
        let tag = x.tag;
        let want: u64 = x.data_in.iter().map(|d| u64::from(d.len)).sum();
        match discovery_data(&x.cdb, sh.caching.load(Ordering::SeqCst)) {
            Ok(data) => {
                let moved = if data.is_empty() {
                    0
                } else {
                    self.data_in(sh, ci, &data) as u64
                };
                let mut r = Rsp::good();
                if moved < want {
                    r.flags = RspFlags::DIUNDER.0;
                    r.di = (want - moved) as u32;
                }
                self.send_rsp(sh, tag, &r);
            }
            Err(s) => {
                let mut r = Rsp::check(s.0, s.1, 0);
                if want > 0 {
                    r.flags = RspFlags::DIUNDER.0;
                    r.di = want as u32;
                }
                self.send_rsp(sh, tag, &r);
            }
        }
    }

    fn send_rsp(&mut self, sh: &Shared, tag: u64, r: &Rsp) {
        let rsp = SrpRsp {
            sol_not: 0,
            req_lim_delta: r.delta,
            tag,
            flags: RspFlags(r.flags),
            status: r.status,
            data_out_res_cnt: r.dout,
            data_in_res_cnt: r.di,
            response_data: &r.resp_data,
            sense_data: &r.sense,
        };
        let mut b = vec![0u8; rsp.encoded_len()];
        if let Err(e) = rsp.encode(&mut b) {
            self.err(sh, format!("encoding SRP_RSP: {e}"));
            return;
        }
        if let Some(l) = r.sense_len {
            b[18] |= RspFlags::SNSVALID.0;
            b[28..32].copy_from_slice(&l.to_be_bytes());
        }
        if let Some(l) = r.resp_len {
            b[18] |= RspFlags::RSPVALID.0;
            b[32..36].copy_from_slice(&l.to_be_bytes());
        }
        self.credits += i64::from(r.delta);
        self.send_iu(sh, &b);
    }

    fn send_iu(&mut self, sh: &Shared, bytes: &[u8]) {
        let Some(slot) = self.send_free.pop() else {
            self.err(sh, "no send slot".into());
            return;
        };
        let n = bytes.len().min(SEND_SLOT);
        let off = slot * SEND_SLOT;
        self.send.as_mut_slice()[off..off + n].copy_from_slice(&bytes[..n]);
        let sge = match self.send.sge(off, n as u32) {
            Ok(s) => s,
            Err(e) => {
                self.send_free.push(slot);
                self.err(sh, format!("send sge: {e}"));
                return;
            }
        };
        // SAFETY: the slot is ours until its completion (`send_free`); the
        // send buffer outlives the QP (field order).
        if let Err(e) = unsafe { self.id.post_send(&SendWr::send(wr(WR_SEND, slot), &[sge])) } {
            self.send_free.push(slot);
            if !self.closing {
                self.err(sh, format!("post_send: {e}"));
            }
        }
    }
}

fn next_tag(rt: &mut u64) -> u64 {
    *rt += 1;
    *rt
}

/// The data a discovery command returns, or (sense key, ASC) of the
/// CHECK CONDITION it gets.
fn discovery_data(cdb: &[u8], caching: usize) -> Result<Vec<u8>, (u8, u8)> {
    let be16 = |o: usize| u16::from_be_bytes([cdb[o], cdb[o + 1]]) as usize;
    let be32 = |o: usize| u32::from_be_bytes([cdb[o], cdb[o + 1], cdb[o + 2], cdb[o + 3]]) as usize;
    let (mut data, alloc) = match cdb[0] {
        0x00 => return Ok(Vec::new()),
        0x12 if cdb[1] & 1 == 0 => {
            let mut d = vec![0u8; 96];
            d[0] = 0x00; // direct access block device
            d[2] = 0x06; // SPC-4
            d[3] = 0x02;
            d[4] = 91;
            d[7] = 0x02; // CMDQUE
            d[8..16].copy_from_slice(b"FAKE    ");
            d[16..32].copy_from_slice(b"HOSTILE TARGET  ");
            d[32..36].copy_from_slice(b"0001");
            (d, be16(3))
        }
        0x12 => {
            let page = cdb[2];
            let payload: Vec<u8> = match page {
                0x00 => vec![0x00, 0x80, 0x83, 0xb0, 0xb2],
                0x80 => SERIAL.as_bytes().to_vec(),
                0x83 => {
                    let mut p = vec![0x01, 0x02, 0x00, 0x08];
                    p.extend_from_slice(&EUI64);
                    p
                }
                0xb0 => {
                    let mut p = vec![0u8; 0x3c];
                    // Page offsets minus the 4-byte header.
                    p[4..8].copy_from_slice(&MAX_TRANSFER_BLOCKS.to_be_bytes());
                    p
                }
                0xb2 => vec![0, 0, 0, 0],
                _ => return Err((0x05, 0x24)),
            };
            let mut d = vec![0x00, page];
            d.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            d.extend_from_slice(&payload);
            (d, be16(3))
        }
        // MODE SENSE(10), Caching page: write cache on, DPOFUA.
        0x5a if cdb[2] & 0x3f == 0x08 => {
            let dpofua = if caching & 1 != 0 { 0x10 } else { 0 };
            let wce = if caching & 2 != 0 { 0x04 } else { 0 };
            let d = vec![
                0, 26, 0, dpofua, 0, 0, 0, 0, 0x08, 18, wce, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ];
            (d, be16(7))
        }
        0x9e if cdb[1] & 0x1f == 0x10 => {
            let mut d = vec![0u8; 32];
            d[0..8].copy_from_slice(&(NUM_BLOCKS - 1).to_be_bytes());
            d[8..12].copy_from_slice(&(BLOCK_SIZE as u32).to_be_bytes());
            (d, be32(10))
        }
        _ => return Err((0x05, 0x20)),
    };
    data.truncate(alloc);
    Ok(data)
}
