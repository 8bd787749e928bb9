//! The conformance suite, written once and run against both providers.
//!
//! Each case is a plain function over an [`Env`] (provider, device, address,
//! ports, time-out) that returns `Ok(())` or a message. `cargo test -p rdma`
//! runs every case on the loopback provider (`tests/conformance_loopback.rs`);
//! the `rdma-conformance` binary runs them on verbs, inside the rxe VM
//! (`rdma/ci-conformance.sh`). Every wait is bounded by [`Env::timeout`].
//!
//! Both ends of each connection live in the calling thread; each case uses
//! its own channels and the two ports `port` and `port + 1`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::{
    AccessFlags, CmChannel, CmEvent, CmEventKind, CmId, Completion, ConnectOptions, Context, Cq,
    Error, MrBuf, Pd, PortState, PrivateData, Provider, QpCaps, SendWr, Sge, WcOpcode, WcStatus,
    MAX_ACCEPT_PRIVATE_DATA, MAX_CONNECT_PRIVATE_DATA, MAX_REJECT_PRIVATE_DATA, REJECT_CONSUMER,
    REJECT_NO_LISTENER,
};

/// Where and how a case runs.
#[derive(Clone, Debug)]
pub struct Env {
    /// The provider under test.
    pub provider: Provider,
    /// Device name (`rxe0`; anything on loopback).
    pub dev: String,
    /// Address both ends use (the listener binds it, the client connects to it).
    pub addr: IpAddr,
    /// First of the two ports the case may use.
    pub port: u16,
    /// Bound on every wait.
    pub timeout: Duration,
}

impl Env {
    /// Loopback defaults: 127.0.0.1, a 5 s bound.
    pub fn loopback(port: u16) -> Env {
        Env {
            provider: Provider::Loopback,
            dev: crate::loopback::DEVICE_NAME.into(),
            addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port,
            timeout: Duration::from_secs(5),
        }
    }
    fn at(&self, off: u16) -> SocketAddr {
        SocketAddr::new(self.addr, self.port + off)
    }
    fn deadline(&self) -> Instant {
        Instant::now() + self.timeout
    }
}

/// A case's outcome.
pub type CaseResult = Result<(), String>;

/// One case: a name and its function.
pub type Case = (&'static str, fn(&Env) -> CaseResult);

/// Every case, in running order.
pub const CASES: &[Case] = &[
    ("device_query", device_query),
    ("connect_accept_private_data", connect_accept_private_data),
    ("reject_private_data", reject_private_data),
    ("connect_no_listener", connect_no_listener),
    ("local_misuse", local_misuse),
    ("send_recv_ordering", send_recv_ordering),
    ("send_with_imm", send_with_imm),
    ("send_waits_for_recv", send_waits_for_recv),
    ("rdma_write_read_3sge", rdma_write_read_3sge),
    (
        "acceptor_reads_with_asymmetric_depths",
        acceptor_reads_with_asymmetric_depths,
    ),
    ("write_beyond_region", write_beyond_region),
    ("wrong_rkey", wrong_rkey),
    ("after_dereg", after_dereg),
    ("access_flags", access_flags),
    ("disconnect_flushes_recvs", disconnect_flushes_recvs),
    ("peer_vanishes", peer_vanishes),
];

/// Runs one case, catching panics (so that a buggy case fails, not aborts).
pub fn run(case: &Case, env: &Env) -> CaseResult {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (case.1)(env))) {
        Ok(r) => r,
        Err(p) => Err(format!(
            "panicked: {}",
            p.downcast_ref::<&str>()
                .copied()
                .or(p.downcast_ref::<String>().map(|s| s.as_str()))
                .unwrap_or("?")
        )),
    }
}

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

trait Ctx<T> {
    fn ctx(self, what: &str) -> Result<T, String>;
}

impl<T> Ctx<T> for Result<T, Error> {
    fn ctx(self, what: &str) -> Result<T, String> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

fn ensure(cond: bool, msg: impl FnOnce() -> String) -> CaseResult {
    if cond {
        Ok(())
    } else {
        Err(msg())
    }
}

const CAPS: QpCaps = QpCaps {
    max_send_wr: 256,
    max_recv_wr: 256,
    max_send_sge: 4,
    max_recv_sge: 4,
    max_inline_data: 0,
};

fn pause(env: &Env) {
    if env.provider == Provider::Verbs {
        std::thread::sleep(Duration::from_micros(100));
    } else {
        std::thread::yield_now();
    }
}

/// The next CM event on `chan`, or an error at the deadline.
fn next_event(
    env: &Env,
    chan: &mut CmChannel,
    deadline: Instant,
    waiting_for: &str,
) -> Result<CmEvent, String> {
    loop {
        if let Some(ev) = chan.poll_event().ctx("poll_event")? {
            return Ok(ev);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "timed out after {:?} waiting for {waiting_for}",
                env.timeout
            ));
        }
        pause(env);
    }
}

/// The next event that is not TimewaitExit.
fn next_real_event(
    env: &Env,
    chan: &mut CmChannel,
    deadline: Instant,
    waiting_for: &str,
) -> Result<CmEvent, String> {
    loop {
        let ev = next_event(env, chan, deadline, waiting_for)?;
        if !matches!(ev.kind, CmEventKind::TimewaitExit) {
            return Ok(ev);
        }
    }
}

/// Polls `cq` until `n` completions arrived.
fn wait_completions(
    env: &Env,
    cq: &mut Cq,
    n: usize,
    what: &str,
) -> Result<Vec<Completion>, String> {
    let deadline = env.deadline();
    let mut got = Vec::with_capacity(n);
    let mut buf = [Completion::EMPTY; 32];
    while got.len() < n {
        let k = cq.poll(&mut buf[..(n - got.len()).min(32)]);
        got.extend_from_slice(&buf[..k]);
        if k == 0 {
            if Instant::now() > deadline {
                return Err(format!(
                    "timed out waiting for {what}: {} of {n} completions: {got:?}",
                    got.len()
                ));
            }
            pause(env);
        }
    }
    Ok(got)
}

fn one_completion(env: &Env, cq: &mut Cq, what: &str) -> Result<Completion, String> {
    Ok(wait_completions(env, cq, 1, what)?[0])
}

/// Checks that nothing completes for `d`.
fn no_completion(cq: &mut Cq, d: Duration) -> CaseResult {
    let end = Instant::now() + d;
    let mut buf = [Completion::EMPTY; 1];
    while Instant::now() < end {
        if cq.poll(&mut buf) > 0 {
            return Err(format!("unexpected completion {:?}", buf[0]));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(())
}

/// One end: channel, device objects, and (once connected) its CM id.
pub struct Side {
    /// The event channel.
    pub chan: CmChannel,
    /// The device.
    pub ctx: Context,
    /// Its protection domain.
    pub pd: Pd,
    /// One CQ for sends and receives.
    pub cq: Cq,
    /// The connection's id.
    pub id: Option<CmId>,
}

impl Side {
    fn new(env: &Env) -> Result<Side, String> {
        let chan = CmChannel::new(env.provider).ctx("create event channel")?;
        let ctx = Context::open(env.provider, &env.dev).ctx("open device")?;
        let pd = Pd::new(&ctx).ctx("alloc PD")?;
        let cq = Cq::new(&ctx, 1024).ctx("create CQ")?;
        Ok(Side {
            chan,
            ctx,
            pd,
            cq,
            id: None,
        })
    }
    /// The connection's id (panics before the side is connected).
    pub fn id(&mut self) -> &mut CmId {
        self.id.as_mut().expect("connected side has an id")
    }
}

/// A listener side plus a client side that has sent a connect request.
struct Pending {
    server: Side,
    client: Side,
    _listener: CmId,
}

fn opts(env: &Env) -> ConnectOptions {
    ConnectOptions {
        retry_count: if env.provider == Provider::Verbs {
            3
        } else {
            7
        },
        ..ConnectOptions::default()
    }
}

/// Client: create id, resolve address and route, create QP.
fn client_prepare(env: &Env, c: &mut Side, dst: SocketAddr) -> CaseResult {
    let deadline = env.deadline();
    let mut id = c.chan.create_id().ctx("rdma_create_id")?;
    id.resolve_addr(None, dst, env.timeout)
        .ctx("resolve_addr")?;
    match next_event(env, &mut c.chan, deadline, "AddrResolved")?.kind {
        CmEventKind::AddrResolved => {}
        k => return Err(format!("expected AddrResolved, got {k:?}")),
    }
    id.resolve_route(env.timeout).ctx("resolve_route")?;
    match next_event(env, &mut c.chan, deadline, "RouteResolved")?.kind {
        CmEventKind::RouteResolved => {}
        k => return Err(format!("expected RouteResolved, got {k:?}")),
    }
    if env.provider == Provider::Verbs {
        // 4.096 µs × 2^14 ≈ 67 ms per try: a vanished peer surfaces in < 1 s.
        id.set_ack_timeout(14).ctx("set_ack_timeout")?;
    }
    id.create_qp(&c.pd, &c.cq, &c.cq, CAPS)
        .ctx("create_qp (client)")?;
    c.id = Some(id);
    Ok(())
}

/// Listener on `port + off`, client resolved with a QP, connect sent.
fn start(env: &Env, off: u16, pdata: &[u8]) -> Result<Pending, String> {
    start_with(env, off, pdata, &opts(env))
}

/// [`start`] with explicit connection parameters for the client.
fn start_with(env: &Env, off: u16, pdata: &[u8], o: &ConnectOptions) -> Result<Pending, String> {
    let server = Side::new(env)?;
    let listener = server.chan.listen(env.at(off), 16).ctx("listen")?;
    let mut client = Side::new(env)?;
    client_prepare(env, &mut client, env.at(off))?;
    client.id().connect_with(pdata, o).ctx("connect")?;
    Ok(Pending {
        server,
        client,
        _listener: listener,
    })
}

/// Server: wait for the connect request; returns the new id and the data.
fn take_request(env: &Env, s: &mut Side) -> Result<(CmId, PrivateData), String> {
    let deadline = env.deadline();
    match next_event(env, &mut s.chan, deadline, "ConnectRequest")?.kind {
        CmEventKind::ConnectRequest { id, private_data } => Ok((id, private_data)),
        k => Err(format!("expected ConnectRequest, got {k:?}")),
    }
}

/// A connected pair.
pub struct Pair {
    /// The passive end.
    pub server: Side,
    /// The active end.
    pub client: Side,
    _listener: CmId,
}

fn accept_pending(
    env: &Env,
    mut p: Pending,
    apdata: &[u8],
) -> Result<(Pair, PrivateData, PrivateData), String> {
    let (mut sid, cpd) = take_request(env, &mut p.server)?;
    if env.provider == Provider::Verbs {
        sid.set_ack_timeout(14).ctx("set_ack_timeout")?;
    }
    sid.create_qp(&p.server.pd, &p.server.cq, &p.server.cq, CAPS)
        .ctx("create_qp (server)")?;
    sid.accept(apdata).ctx("accept")?;
    let deadline = env.deadline();
    let apd = match next_event(env, &mut p.client.chan, deadline, "Established (client)")?.kind {
        CmEventKind::Established { private_data } => private_data,
        k => return Err(format!("client: expected Established, got {k:?}")),
    };
    match next_event(env, &mut p.server.chan, deadline, "Established (server)")?.kind {
        CmEventKind::Established { .. } => {}
        k => return Err(format!("server: expected Established, got {k:?}")),
    }
    p.server.id = Some(sid);
    Ok((
        Pair {
            server: p.server,
            client: p.client,
            _listener: p._listener,
        },
        cpd,
        apd,
    ))
}

/// Listens on `port + off`, connects a client to it, accepts: a connected
/// pair with 256-deep queues and 4 SGEs, one 1024-entry CQ per side.
pub fn connect_pair(env: &Env, off: u16) -> Result<Pair, String> {
    let p = start(env, off, b"strata")?;
    Ok(accept_pending(env, p, b"welcome")?.0)
}

fn pattern(seed: u8, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A buffer a peer may read and write.
fn remote_buf(pd: &Pd, len: usize, access: AccessFlags) -> Result<MrBuf, String> {
    // SAFETY: the cases touch these slices only while no peer operation on
    // them is outstanding (after the completion that ends it).
    unsafe { MrBuf::with_access(pd, len, access) }.ctx("register remote buffer")
}

const RW: AccessFlags = AccessFlags::LOCAL_WRITE
    .union(AccessFlags::REMOTE_WRITE)
    .union(AccessFlags::REMOTE_READ);

/// Posts one SEND of `buf[off..off+len]` and one RECV of the same size on the
/// peer, and checks the data arrived.
fn ping(env: &Env, from: &mut Side, to: &mut Side, payload: &[u8]) -> CaseResult {
    let mut sbuf = MrBuf::new(&from.pd, 4096).ctx("reg")?;
    let rbuf = MrBuf::new(&to.pd, 4096).ctx("reg")?;
    sbuf.as_mut_slice()[..payload.len()].copy_from_slice(payload);
    let rsge = rbuf.sge(0, 4096).ctx("sge")?;
    let ssge = sbuf.sge(0, payload.len() as u32).ctx("sge")?;
    // SAFETY: both buffers outlive the completions awaited below and are not
    // touched until then.
    unsafe {
        to.id().post_recv(7, &[rsge]).ctx("post_recv")?;
        from.id()
            .post_send(&SendWr::send(8, &[ssge]))
            .ctx("post_send")?;
    }
    let s = one_completion(env, &mut from.cq, "send completion")?;
    let r = one_completion(env, &mut to.cq, "recv completion")?;
    ensure(s.status == WcStatus::Success && s.wr_id == 8, || {
        format!("send completion {s:?}")
    })?;
    ensure(
        r.status == WcStatus::Success && r.wr_id == 7 && r.opcode == WcOpcode::Recv,
        || format!("recv {r:?}"),
    )?;
    ensure(r.byte_len as usize == payload.len(), || {
        format!("recv byte_len {}", r.byte_len)
    })?;
    ensure(&rbuf.as_slice()[..payload.len()] == payload, || {
        "payload differs".into()
    })
}

// ---------------------------------------------------------------------------
// cases
// ---------------------------------------------------------------------------

/// Device list, attributes, port 1 active, GID index 1 IPv4-mapped on rxe.
pub fn device_query(env: &Env) -> CaseResult {
    let names = crate::devices(env.provider).ctx("device list")?;
    ensure(names.contains(&env.dev), || {
        format!("device {} not in {names:?}", env.dev)
    })?;
    let ctx = Context::open(env.provider, &env.dev).ctx("open")?;
    let a = ctx.query_device().ctx("query_device")?;
    ensure(
        a.max_qp_wr >= 256 && a.max_sge >= 3 && a.max_mr_size > 0 && a.phys_port_cnt >= 1,
        || format!("{a:?}"),
    )?;
    let p = ctx.query_port(1).ctx("query_port")?;
    ensure(p.state == PortState::Active, || {
        format!("port 1 not active: {p:?}")
    })?;
    ensure(p.active_mtu >= 256, || {
        format!("active MTU {}", p.active_mtu)
    })?;
    if env.provider == Provider::Verbs {
        if let IpAddr::V4(v4) = env.addr {
            let g = ctx.query_gid(1, 1).ctx("query_gid(1, 1)")?;
            ensure(g.as_ipv4() == Some(v4), || {
                format!("GID index 1 is {g}, expected ::ffff:{v4}")
            })?;
        }
    }
    ensure(ctx.query_port(9).is_err(), || {
        "query_port(9) succeeded".into()
    })
}

/// Connect and accept, with the largest private data both ways; one message
/// each way.
pub fn connect_accept_private_data(env: &Env) -> CaseResult {
    let cp = pattern(1, MAX_CONNECT_PRIVATE_DATA);
    let ap = pattern(2, MAX_ACCEPT_PRIVATE_DATA);
    // Oversized private data is refused before anything is sent.
    {
        let mut c = Side::new(env)?;
        let mut id = c.chan.create_id().ctx("create_id")?;
        let e = id.connect(&[0u8; MAX_CONNECT_PRIVATE_DATA + 1]);
        ensure(matches!(e, Err(Error::InvalidArgument(_))), || {
            format!("57-byte connect: {e:?}")
        })?;
        c.id = Some(id);
    }
    let mut p = start(env, 0, &cp)?;
    let (mut sid, got_cp) = take_request(env, &mut p.server)?;
    ensure(
        got_cp.as_bytes().len() >= cp.len() && got_cp.as_bytes()[..cp.len()] == cp[..],
        || format!("connect private data differs: {:?}", got_cp.as_bytes()),
    )?;
    sid.create_qp(&p.server.pd, &p.server.cq, &p.server.cq, CAPS)
        .ctx("create_qp")?;
    let e = sid.accept(&[0u8; MAX_ACCEPT_PRIVATE_DATA + 1]);
    ensure(matches!(e, Err(Error::InvalidArgument(_))), || {
        format!("197-byte accept: {e:?}")
    })?;
    sid.accept(&ap).ctx("accept")?;
    let deadline = env.deadline();
    let got_ap = match next_event(env, &mut p.client.chan, deadline, "Established")?.kind {
        CmEventKind::Established { private_data } => private_data,
        k => return Err(format!("client: expected Established, got {k:?}")),
    };
    ensure(
        got_ap.as_bytes().len() >= ap.len() && got_ap.as_bytes()[..ap.len()] == ap[..],
        || {
            format!(
                "accept private data differs ({} bytes)",
                got_ap.as_bytes().len()
            )
        },
    )?;
    match next_event(env, &mut p.server.chan, deadline, "Established (server)")?.kind {
        CmEventKind::Established { .. } => {}
        k => return Err(format!("server: expected Established, got {k:?}")),
    }
    p.server.id = Some(sid);
    ping(env, &mut p.client, &mut p.server, b"hello target")?;
    ping(env, &mut p.server, &mut p.client, b"hello initiator")
}

/// Reject with 148 bytes of private data: the client sees Rejected with the
/// consumer reason and the data.
pub fn reject_private_data(env: &Env) -> CaseResult {
    let rp = pattern(3, MAX_REJECT_PRIVATE_DATA);
    let mut p = start(env, 0, b"login please")?;
    let (mut sid, _) = take_request(env, &mut p.server)?;
    let e = sid.reject(&[0u8; MAX_REJECT_PRIVATE_DATA + 1]);
    ensure(matches!(e, Err(Error::InvalidArgument(_))), || {
        format!("149-byte reject: {e:?}")
    })?;
    sid.reject(&rp).ctx("reject")?;
    let deadline = env.deadline();
    match next_event(env, &mut p.client.chan, deadline, "Rejected")?.kind {
        CmEventKind::Rejected {
            reason,
            private_data,
        } => {
            ensure(reason == REJECT_CONSUMER, || {
                format!("reject reason {reason}, expected {REJECT_CONSUMER}")
            })?;
            let got = private_data.as_bytes();
            ensure(got.len() >= rp.len() && got[..rp.len()] == rp[..], || {
                format!("reject private data differs ({} bytes)", got.len())
            })
        }
        k => Err(format!("expected Rejected, got {k:?}")),
    }
}

/// A connect to a port nobody listens on fails with an event, in bounded time.
pub fn connect_no_listener(env: &Env) -> CaseResult {
    let mut c = Side::new(env)?;
    let start = Instant::now();
    client_prepare(env, &mut c, env.at(1))?;
    c.id().connect(b"anyone?").ctx("connect")?;
    let deadline = env.deadline();
    let ev = next_real_event(env, &mut c.chan, deadline, "Rejected/Unreachable")?;
    match ev.kind {
        CmEventKind::Rejected {
            reason: REJECT_NO_LISTENER,
            ..
        }
        | CmEventKind::Unreachable { .. }
        | CmEventKind::ConnectError { .. } => {
            tracing::debug!(kind = ?ev.kind, elapsed = ?start.elapsed(), "connect to nobody");
            Ok(())
        }
        k => Err(format!(
            "expected Rejected (reason {REJECT_NO_LISTENER}) or Unreachable, got {k:?}"
        )),
    }
}

/// Local misuse fails at once with the documented error, no completion.
pub fn local_misuse(env: &Env) -> CaseResult {
    let mut c = Side::new(env)?;
    let e = MrBuf::new(&c.pd, 0);
    ensure(matches!(e, Err(Error::InvalidArgument(_))), || {
        format!("zero-length MR: {e:?}")
    })?;
    let buf = MrBuf::new(&c.pd, 4096).ctx("reg")?;
    ensure(buf.sge(4000, 200).is_err(), || {
        "SGE beyond the region accepted".into()
    })?;
    let mut id = c.chan.create_id().ctx("create_id")?;
    let sge = buf.sge(0, 16).ctx("sge")?;
    // SAFETY: rejected before reaching any queue (no QP yet).
    let e = unsafe { id.post_send(&SendWr::send(1, &[sge])) };
    ensure(e.is_err(), || "post_send without a QP accepted".into())?;
    // A QP that is not connected refuses sends.
    let other = Side::new(env)?;
    let _l = other.chan.listen(env.at(0), 4).ctx("listen")?;
    client_prepare(env, &mut c, env.at(0))?;
    // SAFETY: refused at once (QP not connected); `buf` outlives the call anyway.
    let e = unsafe { c.id().post_send(&SendWr::send(2, &[sge])) };
    ensure(
        matches!(
            e,
            Err(Error::Verb {
                verb: "ibv_post_send",
                ..
            })
        ),
        || format!("send before connect: {e:?}"),
    )?;
    let many = [sge; 5];
    // SAFETY: refused at once (5 SGEs > max_recv_sge 4).
    let e = unsafe { c.id().post_recv(3, &many) };
    ensure(
        matches!(
            e,
            Err(Error::Verb {
                errno: libc::EINVAL,
                ..
            })
        ),
        || format!("5 SGEs: {e:?}"),
    )?;
    no_completion(&mut c.cq, Duration::from_millis(50))?;
    let e = c.id().connect(&[0u8; 57]);
    ensure(matches!(e, Err(Error::InvalidArgument(_))), || {
        format!("57-byte connect: {e:?}")
    })?;
    drop(buf);
    Ok(())
}

/// Many SENDs arrive in order, each in the RECV posted for it.
pub fn send_recv_ordering(env: &Env) -> CaseResult {
    const N: u32 = 2000;
    const SLOTS: u32 = 128;
    const MSG: u32 = 64;
    let mut pair = connect_pair(env, 0)?;
    let mut sbuf = MrBuf::new(&pair.client.pd, (SLOTS * MSG) as usize).ctx("reg")?;
    let rbuf = MrBuf::new(&pair.server.pd, (SLOTS * MSG) as usize).ctx("reg")?;
    for slot in 0..SLOTS {
        let sge = rbuf.sge((slot * MSG) as usize, MSG).ctx("sge")?;
        // SAFETY: `rbuf` outlives the QP's use of it (completions awaited below,
        // then the QP is destroyed before `rbuf` is dropped: `pair` is declared first).
        unsafe { pair.server.id().post_recv(u64::from(slot), &[sge]) }.ctx("post_recv")?;
    }
    let (mut sent, mut recvd, mut send_done) = (0u32, 0u32, 0u32);
    let mut credits = SLOTS;
    let deadline = env.deadline();
    let mut wc = [Completion::EMPTY; 32];
    while recvd < N || send_done < N {
        while sent < N && credits > 0 && sent - send_done < SLOTS {
            let slot = sent % SLOTS;
            let off = (slot * MSG) as usize;
            let msg = &mut sbuf.as_mut_slice()[off..off + MSG as usize];
            msg[..4].copy_from_slice(&sent.to_le_bytes());
            msg[4..].fill(sent as u8);
            let sge = sbuf.sge(off, MSG).ctx("sge")?;
            // SAFETY: the slot is rewritten only after this send's completion
            // (at most SLOTS sends outstanding, completions in order).
            unsafe {
                pair.client
                    .id()
                    .post_send(&SendWr::send(u64::from(sent), &[sge]))
            }
            .ctx("post_send")?;
            sent += 1;
            credits -= 1;
        }
        let n = pair.client.cq.poll(&mut wc);
        for c in &wc[..n] {
            ensure(
                c.status == WcStatus::Success && c.wr_id == u64::from(send_done),
                || format!("send {send_done}: {c:?}"),
            )?;
            send_done += 1;
        }
        let m = pair.server.cq.poll(&mut wc);
        for c in &wc[..m] {
            let slot = recvd % SLOTS;
            ensure(
                c.status == WcStatus::Success && c.wr_id == u64::from(slot) && c.byte_len == MSG,
                || format!("recv {recvd}: {c:?}"),
            )?;
            let off = (slot * MSG) as usize;
            let msg = &rbuf.as_slice()[off..off + MSG as usize];
            let seq = u32::from_le_bytes([msg[0], msg[1], msg[2], msg[3]]);
            ensure(
                seq == recvd && msg[4..].iter().all(|&b| b == recvd as u8),
                || format!("message {recvd} arrived as {seq}"),
            )?;
            recvd += 1;
            let sge = rbuf.sge(off, MSG).ctx("sge")?;
            // SAFETY: as above.
            unsafe { pair.server.id().post_recv(u64::from(slot), &[sge]) }.ctx("post_recv")?;
            credits += 1;
        }
        if n == 0 && m == 0 {
            if Instant::now() > deadline {
                return Err(format!(
                    "timed out: sent {sent}, send completions {send_done}, received {recvd}"
                ));
            }
            pause(env);
        }
    }
    Ok(())
}

/// SEND with immediate: the receiver gets the immediate value.
pub fn send_with_imm(env: &Env) -> CaseResult {
    let mut pair = connect_pair(env, 0)?;
    let mut sbuf = MrBuf::new(&pair.client.pd, 64).ctx("reg")?;
    let rbuf = MrBuf::new(&pair.server.pd, 128).ctx("reg")?;
    sbuf.as_mut_slice()[..16].copy_from_slice(b"with immediate!!");
    let (s, r0, r1) = (
        sbuf.sge(0, 16).ctx("sge")?,
        rbuf.sge(0, 64).ctx("sge")?,
        rbuf.sge(64, 64).ctx("sge")?,
    );
    // SAFETY: buffers outlive the completions awaited below.
    unsafe {
        pair.server.id().post_recv(1, &[r0]).ctx("post_recv")?;
        pair.server.id().post_recv(2, &[r1]).ctx("post_recv")?;
        pair.client
            .id()
            .post_send(&SendWr::send_imm(10, &[s], 0xdead_beef))
            .ctx("post_send imm")?;
        pair.client
            .id()
            .post_send(&SendWr::send(11, &[s]).unsignaled())
            .ctx("post_send")?;
        pair.client
            .id()
            .post_send(&SendWr::send_imm(12, &[], 7))
            .ctx("post_send imm, no data")?;
    }
    let rc = wait_completions(env, &mut pair.server.cq, 2, "receive completions")?;
    ensure(
        rc[0].status.is_ok()
            && rc[0].wr_id == 1
            && rc[0].imm == Some(0xdead_beef)
            && rc[0].byte_len == 16,
        || format!("first receive {:?}", rc[0]),
    )?;
    ensure(
        rc[1].status.is_ok() && rc[1].wr_id == 2 && rc[1].imm.is_none(),
        || format!("second receive {:?}", rc[1]),
    )?;
    ensure(&rbuf.as_slice()[..16] == b"with immediate!!", || {
        "payload differs".into()
    })?;
    let sc = wait_completions(env, &mut pair.client.cq, 1, "send completions")?;
    ensure(sc[0].wr_id == 10 && sc[0].status.is_ok(), || {
        format!("send completion {:?}", sc[0])
    })?;
    // The third SEND waits for a RECV.
    // SAFETY: `rbuf` outlives the completion awaited below.
    unsafe { pair.server.id().post_recv(3, &[r0]) }.ctx("post_recv")?;
    let r = one_completion(env, &mut pair.server.cq, "zero-byte imm receive")?;
    ensure(
        r.status.is_ok() && r.imm == Some(7) && r.byte_len == 0,
        || format!("zero-byte imm receive {r:?}"),
    )?;
    let s = one_completion(env, &mut pair.client.cq, "zero-byte imm send")?;
    ensure(s.status.is_ok() && s.wr_id == 12, || {
        format!("zero-byte imm send {s:?}")
    })
}

/// A SEND with no RECV posted waits (RNR retries) until one is posted.
pub fn send_waits_for_recv(env: &Env) -> CaseResult {
    let mut pair = connect_pair(env, 0)?;
    let mut sbuf = MrBuf::new(&pair.client.pd, 64).ctx("reg")?;
    let rbuf = MrBuf::new(&pair.server.pd, 64).ctx("reg")?;
    sbuf.as_mut_slice()[..5].copy_from_slice(b"early");
    let s = sbuf.sge(0, 5).ctx("sge")?;
    // SAFETY: buffers outlive the completions awaited below.
    unsafe { pair.client.id().post_send(&SendWr::send(1, &[s])) }.ctx("post_send")?;
    no_completion(&mut pair.client.cq, Duration::from_millis(100))?;
    let r = rbuf.sge(0, 64).ctx("sge")?;
    // SAFETY: as above.
    unsafe { pair.server.id().post_recv(2, &[r]) }.ctx("post_recv")?;
    let rc = one_completion(env, &mut pair.server.cq, "receive")?;
    let sc = one_completion(env, &mut pair.client.cq, "send")?;
    ensure(
        rc.status.is_ok() && rc.byte_len == 5 && &rbuf.as_slice()[..5] == b"early",
        || format!("receive {rc:?}"),
    )?;
    ensure(sc.status.is_ok(), || format!("send {sc:?}"))
}

/// RDMA WRITE then READ with three SGEs, in both directions.
pub fn rdma_write_read_3sge(env: &Env) -> CaseResult {
    let mut pair = connect_pair(env, 0)?;
    rw_one_way(env, &mut pair, true)?;
    rw_one_way(env, &mut pair, false)
}

/// The Linux SRP initiator connects with responder_resources 4 and
/// initiator_depth 0: it serves RDMA READs and issues none. The acceptor
/// (a target) must still be able to RDMA READ from it — the connect
/// request's parameters arrive already seen from the acceptor's side, and
/// swapping them leaves the acceptor's QP with no RDMA READ credit.
pub fn acceptor_reads_with_asymmetric_depths(env: &Env) -> CaseResult {
    let o = ConnectOptions {
        responder_resources: 4,
        initiator_depth: 0,
        ..opts(env)
    };
    let p = start_with(env, 0, b"srp", &o)?;
    let (mut pair, _, _) = accept_pending(env, p, b"ok")?;
    rw_one_way(env, &mut pair, false)
}

fn rw_one_way(env: &Env, pair: &mut Pair, client_initiates: bool) -> CaseResult {
    let (a, b) = if client_initiates {
        (&mut pair.client, &mut pair.server)
    } else {
        (&mut pair.server, &mut pair.client)
    };
    let remote = remote_buf(&b.pd, 65536, RW)?;
    let mut src = MrBuf::new(&a.pd, 32768).ctx("reg")?;
    let dst = MrBuf::new(&a.pd, 32768).ctx("reg")?;
    let segs = [(0usize, 1000u32), (5000, 3000), (12000, 4096)];
    let mut expect = Vec::new();
    for (i, &(off, len)) in segs.iter().enumerate() {
        let p = pattern(10 + i as u8, len as usize);
        src.as_mut_slice()[off..off + len as usize].copy_from_slice(&p);
        expect.extend_from_slice(&p);
    }
    let sges: Vec<Sge> = segs
        .iter()
        .map(|&(o, l)| src.sge(o, l))
        .collect::<Result<_, _>>()
        .ctx("sge")?;
    let raddr = remote.addr() + 100;
    // SAFETY: `src` and `remote` are not touched until the completion.
    unsafe {
        a.id()
            .post_send(&SendWr::write(1, &sges, raddr, remote.rkey()))
    }
    .ctx("post RDMA WRITE")?;
    let c = one_completion(env, &mut a.cq, "RDMA WRITE")?;
    ensure(
        c.status.is_ok() && c.wr_id == 1 && c.opcode == WcOpcode::RdmaWrite,
        || format!("WRITE completion {c:?}"),
    )?;
    ensure(
        remote.as_slice()[100..100 + expect.len()] == expect[..],
        || "WRITE data differs at the target".into(),
    )?;
    ensure(remote.as_slice()[..100].iter().all(|&b| b == 0), || {
        "WRITE touched bytes before the range".into()
    })?;
    ensure(
        remote.as_slice()[100 + expect.len()..]
            .iter()
            .all(|&b| b == 0),
        || "WRITE touched bytes after".into(),
    )?;
    // READ back into three different segments of `dst`.
    let rsegs = [(7usize, 4096u32), (9000, 1000), (20000, 3000)];
    let rsges: Vec<Sge> = rsegs
        .iter()
        .map(|&(o, l)| dst.sge(o, l))
        .collect::<Result<_, _>>()
        .ctx("sge")?;
    // SAFETY: `dst` and `remote` are not touched until the completion.
    unsafe {
        a.id()
            .post_send(&SendWr::read(2, &rsges, raddr, remote.rkey()))
    }
    .ctx("post RDMA READ")?;
    let c = one_completion(env, &mut a.cq, "RDMA READ")?;
    ensure(
        c.status.is_ok() && c.wr_id == 2 && c.opcode == WcOpcode::RdmaRead,
        || format!("READ completion {c:?}"),
    )?;
    let mut got = Vec::new();
    for &(o, l) in &rsegs {
        got.extend_from_slice(&dst.as_slice()[o..o + l as usize]);
    }
    ensure(got == expect, || "READ data differs".into())?;
    ensure(dst.as_slice()[..7].iter().all(|&b| b == 0), || {
        "READ wrote outside its SGEs".into()
    })
}

/// Posts one RDMA op that must fail with RemoteAccess, leaving `remote` untouched.
fn expect_remote_access(env: &Env, pair: &mut Pair, wr: SendWr<'_>, what: &str) -> CaseResult {
    // SAFETY: the caller's buffers outlive the completion awaited below.
    unsafe { pair.client.id().post_send(&wr) }.ctx("post_send")?;
    let c = one_completion(env, &mut pair.client.cq, what)?;
    ensure(
        c.status == WcStatus::RemoteAccess && c.wr_id == wr.wr_id,
        || format!("{what}: expected RemoteAccess, got {c:?}"),
    )
}

/// RDMA WRITE one byte beyond the peer's region: RemoteAccess, region untouched.
pub fn write_beyond_region(env: &Env) -> CaseResult {
    let mut pair = connect_pair(env, 0)?;
    let remote = remote_buf(&pair.server.pd, 4096, RW)?;
    let mut src = MrBuf::new(&pair.client.pd, 8192).ctx("reg")?;
    src.as_mut_slice().fill(0xab);
    let s = src.sge(0, 4096).ctx("sge")?;
    expect_remote_access(
        env,
        &mut pair,
        SendWr::write(5, &[s], remote.addr() + 1, remote.rkey()),
        "WRITE beyond",
    )?;
    ensure(remote.as_slice().iter().all(|&b| b == 0), || {
        "memory was touched".into()
    })?;
    drop(pair);
    drop(src);
    Ok(())
}

/// RDMA WRITE with a wrong rkey: RemoteAccess, region untouched.
pub fn wrong_rkey(env: &Env) -> CaseResult {
    let mut pair = connect_pair(env, 0)?;
    let remote = remote_buf(&pair.server.pd, 4096, RW)?;
    let mut src = MrBuf::new(&pair.client.pd, 4096).ctx("reg")?;
    src.as_mut_slice().fill(0xcd);
    let s = src.sge(0, 512).ctx("sge")?;
    expect_remote_access(
        env,
        &mut pair,
        SendWr::write(6, &[s], remote.addr(), remote.rkey() ^ 0x80),
        "wrong rkey",
    )?;
    ensure(remote.as_slice().iter().all(|&b| b == 0), || {
        "memory was touched".into()
    })
}

/// RDMA WRITE to a region after its deregistration: RemoteAccess.
pub fn after_dereg(env: &Env) -> CaseResult {
    let mut pair = connect_pair(env, 0)?;
    let remote = remote_buf(&pair.server.pd, 4096, RW)?;
    let (raddr, rkey) = (remote.addr(), remote.rkey());
    drop(remote);
    let src = MrBuf::new(&pair.client.pd, 4096).ctx("reg")?;
    let s = src.sge(0, 512).ctx("sge")?;
    expect_remote_access(
        env,
        &mut pair,
        SendWr::write(7, &[s], raddr, rkey),
        "WRITE after dereg",
    )?;
    Ok(())
}

/// WRITE to a region without REMOTE_WRITE, READ from one without
/// REMOTE_READ: RemoteAccess each (separate connections: the error is fatal
/// to the QP).
pub fn access_flags(env: &Env) -> CaseResult {
    {
        let mut pair = connect_pair(env, 0)?;
        let ro = remote_buf(
            &pair.server.pd,
            4096,
            AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_READ,
        )?;
        let mut src = MrBuf::new(&pair.client.pd, 4096).ctx("reg")?;
        src.as_mut_slice().fill(0xee);
        let s = src.sge(0, 256).ctx("sge")?;
        expect_remote_access(
            env,
            &mut pair,
            SendWr::write(8, &[s], ro.addr(), ro.rkey()),
            "WRITE to read-only",
        )?;
        ensure(ro.as_slice().iter().all(|&b| b == 0), || {
            "read-only memory was written".into()
        })?;
    }
    let mut pair = connect_pair(env, 1)?;
    let wo = remote_buf(
        &pair.server.pd,
        4096,
        AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE,
    )?;
    let dst = MrBuf::new(&pair.client.pd, 4096).ctx("reg")?;
    let d = dst.sge(0, 256).ctx("sge")?;
    expect_remote_access(
        env,
        &mut pair,
        SendWr::read(9, &[d], wo.addr(), wo.rkey()),
        "READ from write-only",
    )
}

fn expect_disconnected(env: &Env, chan: &mut CmChannel, who: &str) -> CaseResult {
    let deadline = env.deadline();
    match next_real_event(env, chan, deadline, &format!("Disconnected ({who})"))?.kind {
        CmEventKind::Disconnected => Ok(()),
        k => Err(format!("{who}: expected Disconnected, got {k:?}")),
    }
}

/// Disconnect flushes posted RECVs with WrFlush, on both sides; the peer
/// gets Disconnected, and the disconnecting side once the peer answers.
pub fn disconnect_flushes_recvs(env: &Env) -> CaseResult {
    const K: u64 = 8;
    let mut pair = connect_pair(env, 0)?;
    let cbuf = MrBuf::new(&pair.client.pd, 4096).ctx("reg")?;
    let sbuf = MrBuf::new(&pair.server.pd, 4096).ctx("reg")?;
    for i in 0..K {
        let (c, s) = (
            cbuf.sge(i as usize * 64, 64).ctx("sge")?,
            sbuf.sge(i as usize * 64, 64).ctx("sge")?,
        );
        // SAFETY: buffers outlive the flush completions awaited below.
        unsafe {
            pair.client.id().post_recv(100 + i, &[c]).ctx("post_recv")?;
            pair.server.id().post_recv(200 + i, &[s]).ctx("post_recv")?;
        }
    }
    pair.client.id().disconnect().ctx("disconnect")?;
    let cc = wait_completions(env, &mut pair.client.cq, K as usize, "client flushes")?;
    for (i, c) in cc.iter().enumerate() {
        ensure(
            c.status == WcStatus::WrFlush && c.wr_id == 100 + i as u64,
            || format!("client flush {i}: {c:?}"),
        )?;
    }
    expect_disconnected(env, &mut pair.server.chan, "server")?;
    // The peer's RECVs stay posted until it disconnects too (which answers
    // the client's disconnect: only then does the client get Disconnected).
    pair.server.id().disconnect().ctx("disconnect (server)")?;
    let sc = wait_completions(env, &mut pair.server.cq, K as usize, "server flushes")?;
    for (i, c) in sc.iter().enumerate() {
        ensure(
            c.status == WcStatus::WrFlush && c.wr_id == 200 + i as u64,
            || format!("server flush {i}: {c:?}"),
        )?;
    }
    expect_disconnected(env, &mut pair.client.chan, "client")?;
    pair.client
        .id()
        .disconnect()
        .ctx("second disconnect is a no-op")?;
    Ok(())
}

/// The peer vanishes (its CM id, QP, PD and CQ dropped) in the middle of a
/// stream of RDMA WRITEs and SENDs: the client sees error completions and
/// Disconnected within the time-out, and every posted WR completes.
pub fn peer_vanishes(env: &Env) -> CaseResult {
    let mut pair = connect_pair(env, 0)?;
    let remote = remote_buf(&pair.server.pd, 1 << 20, RW)?;
    let rbuf = MrBuf::new(&pair.server.pd, 64 * 64).ctx("reg")?;
    for i in 0..64u64 {
        let sge = rbuf.sge(i as usize * 64, 64).ctx("sge")?;
        // SAFETY: `rbuf` outlives the server's QP (dropped below before it).
        unsafe { pair.server.id().post_recv(i, &[sge]) }.ctx("post_recv")?;
    }
    let src = MrBuf::new(&pair.client.pd, 1 << 16).ctx("reg")?;
    let (raddr, rkey) = (remote.addr(), remote.rkey());
    let Pair {
        server,
        mut client,
        _listener,
    } = pair;
    // Drop the server side in an awkward order: PD and CQ handles first
    // (the QP keeps them alive), then the id, then the memory.
    let Side {
        chan: mut schan,
        ctx: sctx,
        pd: spd,
        cq: scq,
        id: sid,
    } = server;
    let mut server_parts = Some((spd, scq, sctx, sid, remote, rbuf));
    let deadline = env.deadline();
    let (mut posted, mut completed, mut errors) = (0u64, 0u64, 0u64);
    let mut disconnected = false;
    let mut disconnect_called = false;
    let mut wc = [Completion::EMPTY; 32];
    loop {
        if server_parts.is_some() && completed >= 20 {
            let (spd, scq, sctx, sid, remote, rbuf) = server_parts.take().expect("present");
            drop(spd);
            drop(scq);
            drop(sctx);
            drop(sid);
            drop(remote);
            drop(rbuf);
        }
        if errors == 0 && !disconnect_called && posted - completed < 16 {
            let off = (posted % 16) * 4096;
            let s = [src.sge(off as usize, 4096).ctx("sge")?];
            let small = [Sge { len: 64, ..s[0] }];
            let wr = if posted % 4 == 3 {
                SendWr::send(posted, &small)
            } else {
                SendWr::write(posted, &s, raddr + off, rkey)
            };
            // SAFETY: `src` and (until it is dropped) the server memory
            // outlive the client's QP use: every posted WR is awaited below.
            unsafe { client.id().post_send(&wr) }.ctx("post_send")?;
            posted += 1;
        } else if errors == 0 && disconnect_called && completed == posted {
            // Make sure at least one WR meets the dead QP.
            let s = src.sge(0, 64).ctx("sge")?;
            // SAFETY: as above.
            unsafe { client.id().post_send(&SendWr::send(posted, &[s])) }
                .ctx("post_send after disconnect")?;
            posted += 1;
        }
        let n = client.cq.poll(&mut wc);
        for c in &wc[..n] {
            completed += 1;
            if !c.status.is_ok() {
                errors += 1;
            }
        }
        if let Some(ev) = client.chan.poll_event().ctx("poll_event")? {
            match ev.kind {
                CmEventKind::Disconnected => disconnected = true,
                CmEventKind::TimewaitExit => {}
                k => return Err(format!("client: unexpected event {k:?}")),
            }
        }
        if disconnected && !disconnect_called {
            client.id().disconnect().ctx("disconnect")?;
            disconnect_called = true;
        }
        if disconnected && errors > 0 && completed == posted {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "timed out: posted {posted}, completed {completed}, errors {errors}, disconnected {disconnected}"
            ));
        }
        if n == 0 {
            pause(env);
        }
    }
    // Drain the server's channel too (it may hold its own Disconnected).
    while schan.poll_event().ctx("poll_event")?.is_some() {}
    Ok(())
}
