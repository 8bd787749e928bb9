//! The SRP initiator against a hostile or broken SRP target: a scripted
//! fake target (`fake_target`) on the loopback RDMA provider answers the
//! initiator's logins, commands and task management the way each test
//! says. Each test checks the exact statuses and session counters, and the
//! daemon-level invariants: no panic, every I/O completes within a bound
//! and exactly once, no data lands in a buffer on the strength of a
//! response that is not the request's own, and later I/O still works.

mod common;
mod fake_target;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bdev::testing::{check_pattern, fill_pattern, AlignedBuf};
use bdev::{Bdev, BdevChannel, IoRequest, IoStatus, IoType, IoVec};
use common::*;
use fake_target::{
    FakeTarget, Login, LoginTweak, Rsp, Step, Tag, BLOCK_SIZE, CREDITS, EUI64, SERIAL,
};
use initiator::{AttachError, PortState, SrpBdev};
use srp::{tsk_mgmt_rsp, LoginRsp, RspFlags, TaskMgmtFunction};

/// What a read buffer holds before the read.
const SENTINEL: u8 = 0xa5;

fn attach(fake: &FakeTarget, extra: serde_json::Value, ini: &reactor::ReactorSet) -> Arc<SrpBdev> {
    SrpBdev::attach(&attach_params("srp0", fake.port, extra), ini.handle()).expect("attach")
}

fn unknown(b: &SrpBdev) -> u64 {
    stat(b, "unknown_tags")
}

fn req_lim(b: &SrpBdev) -> i64 {
    b.session_json()["channels"][0]["req_lim"]
        .as_i64()
        .expect("req_lim")
}

/// The fake target saw nothing wrong with the initiator's side.
fn assert_clean(fake: &FakeTarget) {
    let log = fake.log();
    assert!(
        log.credit_violations.is_empty(),
        "credit violations: {:?}",
        log.credit_violations
    );
    assert!(
        log.errors.is_empty(),
        "fake target errors: {:?}",
        log.errors
    );
    assert!(
        log.other_ius.is_empty(),
        "unexpected IUs from the initiator: {:?}",
        log.other_ius
    );
}

// ---------------------------------------------------------------------------
// One I/O in flight, observable while it is outstanding.

/// Memory of an I/O: registered (the initiator sends its address: zero
/// copy) or plain heap (the initiator bounces it through its own
/// registered buffer and copies).
enum Mem {
    Registered(AlignedBuf),
    Plain(Vec<u8>),
}

impl Mem {
    fn slice(&mut self) -> &mut [u8] {
        match self {
            Mem::Registered(b) => b.as_mut_slice(),
            Mem::Plain(v) => v,
        }
    }
}

struct Flight {
    ch: Box<dyn BdevChannel>,
    mem: Mem,
    registered: bool,
    /// Every completion reported for the request (must end up exactly one).
    done: Vec<IoStatus>,
}

type Flights = HashMap<u64, (Rc<RefCell<Flight>>, reactor::PollerId)>;

thread_local! {
    static FLIGHTS: RefCell<Flights> = RefCell::new(HashMap::new());
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    /// Read into a buffer full of [`SENTINEL`].
    Read,
    /// Write pattern `seed`.
    Write(u64),
    /// No data (flush, reset).
    NoData(IoType),
}

/// An I/O submitted on reactor 0 through the module's own channel (not the
/// counting wrapper of `bdev::open_channel`, which would hide a second
/// completion), polled by a reactor poller that records every completion.
struct Io {
    h: reactor::ReactorHandle,
    id: u64,
}

struct Finished {
    done: Vec<IoStatus>,
    data: Vec<u8>,
}

impl Io {
    fn start(
        ini: &reactor::ReactorSet,
        b: &Arc<SrpBdev>,
        kind: Kind,
        lba: u64,
        blocks: u64,
        registered: bool,
    ) -> Io {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let b: Arc<dyn Bdev> = Arc::clone(b) as Arc<dyn Bdev>;
        ini.handle()
            .call(0, move || {
                let ch = b.open_module_channel().expect("open channel");
                let bs = b.info().block_size as usize;
                let (io_type, len) = match kind {
                    Kind::Read => (IoType::Read, blocks as usize * bs),
                    Kind::Write(_) => (IoType::Write, blocks as usize * bs),
                    Kind::NoData(t) => (t, 0),
                };
                let mut mem = if registered {
                    Mem::Registered(AlignedBuf::new(len.max(1)))
                } else {
                    Mem::Plain(vec![0u8; len.max(1)])
                };
                match kind {
                    Kind::Read => mem.slice().fill(SENTINEL),
                    Kind::Write(seed) => fill_pattern(&mut mem.slice()[..len], lba, bs, seed),
                    Kind::NoData(_) => {}
                }
                let iov = [IoVec {
                    base: mem.slice().as_mut_ptr(),
                    len,
                }];
                let req = IoRequest {
                    io_type,
                    offset_blocks: lba,
                    num_blocks: if len > 0 { blocks } else { 0 },
                    iovs: if len > 0 { &iov } else { &[] },
                    fua: false,
                };
                let fl = Rc::new(RefCell::new(Flight {
                    ch,
                    mem,
                    registered,
                    done: Vec::new(),
                }));
                // SAFETY: the memory (a heap allocation: moving `mem` into
                // the flight does not move it) stays in the flight until the
                // completion is reported; `finish` leaks it if none ever is.
                unsafe { fl.borrow_mut().ch.submit(&req, id) }.expect("submit");
                let f2 = Rc::clone(&fl);
                let pid = reactor::register_poller("hostile_io", move || {
                    let Ok(mut f) = f2.try_borrow_mut() else {
                        return reactor::Poll::Idle;
                    };
                    let Flight { ch, done, .. } = &mut *f;
                    reactor::Poll::from_count(ch.poll(&mut |_, s| done.push(s)))
                });
                FLIGHTS.with(|m| m.borrow_mut().insert(id, (fl, pid)));
            })
            .expect("reactor");
        Io {
            h: ini.handle(),
            id,
        }
    }

    /// The completions so far.
    fn done(&self) -> Vec<IoStatus> {
        let id = self.id;
        self.h
            .call(0, move || {
                FLIGHTS.with(|m| {
                    m.borrow()
                        .get(&id)
                        .map(|(f, _)| f.borrow().done.clone())
                        .unwrap_or_default()
                })
            })
            .expect("reactor")
    }

    /// Waits (at most `limit`) for the first completion.
    fn wait(&self, limit: Duration) -> Option<IoStatus> {
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.done().first() {
                return Some(*s);
            }
            if t0.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A copy of the buffer now, taken on the reactor that runs the
    /// initiator's channel. For plain memory the initiator is the only
    /// writer (it copies from its bounce buffer on that reactor), so this
    /// shows exactly what it delivered so far.
    fn snapshot(&self) -> Vec<u8> {
        let id = self.id;
        self.h
            .call(0, move || {
                FLIGHTS.with(|m| {
                    let m = m.borrow();
                    let (f, _) = m.get(&id).expect("flight");
                    let mut f = f.borrow_mut();
                    assert!(
                        !f.registered || !f.done.is_empty(),
                        "a registered buffer in flight may be written by the target"
                    );
                    f.mem.slice().to_vec()
                })
            })
            .expect("reactor")
    }

    /// Keeps polling for `linger` (a second completion would show), then
    /// stops: the completions and the buffer (empty if the request never
    /// completed: its memory is leaked, the initiator may still use it).
    fn finish(self, linger: Duration) -> Finished {
        std::thread::sleep(linger);
        let id = self.id;
        self.h
            .call(0, move || {
                let (fl, pid) = FLIGHTS
                    .with(|m| m.borrow_mut().remove(&id))
                    .expect("flight");
                reactor::unregister_poller(pid);
                let mut f = fl.borrow_mut();
                let done = f.done.clone();
                let data = if done.is_empty() {
                    std::mem::forget(std::mem::replace(&mut f.mem, Mem::Plain(Vec::new())));
                    Vec::new()
                } else {
                    f.mem.slice().to_vec()
                };
                Finished { done, data }
            })
            .expect("reactor")
    }
}

/// Runs one I/O to completion (at most `limit`) and checks it completed
/// exactly once.
fn run_io(
    ini: &reactor::ReactorSet,
    b: &Arc<SrpBdev>,
    kind: Kind,
    lba: u64,
    blocks: u64,
    registered: bool,
    limit: Duration,
) -> (IoStatus, Vec<u8>) {
    let io = Io::start(ini, b, kind, lba, blocks, registered);
    let st = io.wait(limit);
    let f = io.finish(Duration::from_millis(100));
    let st = st.unwrap_or_else(|| panic!("{kind:?} at {lba} did not complete within {limit:?}"));
    assert_eq!(f.done, vec![st], "{kind:?} at {lba}: completions");
    (st, f.data)
}

fn read(ini: &reactor::ReactorSet, b: &Arc<SrpBdev>, lba: u64, blocks: u64) -> IoStatus {
    run_io(
        ini,
        b,
        Kind::Read,
        lba,
        blocks,
        true,
        Duration::from_secs(20),
    )
    .0
}

fn is_pattern(data: &[u8], lba: u64, seed: u64) -> bool {
    !data.is_empty() && check_pattern(data, lba, BLOCK_SIZE, seed)
}

// ---------------------------------------------------------------------------
// 1. Login

#[test]
fn absurd_login_responses_fail_the_attach_and_say_why() {
    init_tracing();
    let port = port();
    let fake = FakeTarget::start(port);
    let ini = reactors(1);
    let tweak = |f: fn(&mut LoginTweak)| {
        let mut t = LoginTweak::default();
        f(&mut t);
        Login::Accept(t)
    };
    let mut bad_opcode = vec![0u8; LoginRsp::SIZE];
    bad_opcode[0] = 0xc2; // SRP_LOGIN_REJ's opcode where SRP_LOGIN_RSP's belongs
    let cases: Vec<(Login, Vec<&str>)> = vec![
        (
            tweak(|t| {
                t.req_lim_delta = Some(0);
                t.max_it_iu_len = Some(10);
                t.max_ti_iu_len = Some(4);
            }),
            vec!["SRP_LOGIN_RSP", "0 credits"],
        ),
        (
            tweak(|t| t.req_lim_delta = Some(0)),
            vec!["SRP_LOGIN_RSP", "0 credits"],
        ),
        (
            tweak(|t| t.req_lim_delta = Some(1)),
            vec!["SRP_LOGIN_RSP", "1 credits"],
        ),
        (
            tweak(|t| t.max_it_iu_len = Some(10)),
            vec!["absurd IU sizes", "max_it_iu_len 10"],
        ),
        (
            tweak(|t| t.max_ti_iu_len = Some(4)),
            vec!["absurd IU sizes", "max_ti_iu_len 4"],
        ),
        (
            tweak(|t| t.buf_fmt = Some(0)),
            vec!["direct data descriptors"],
        ),
        (Login::Raw(bad_opcode), vec!["undecodable SRP_LOGIN_RSP"]),
    ];
    let n = cases.len() as u32;
    for (login, want) in cases {
        let what = format!("{login:?}");
        fake.push_login(login);
        let t0 = Instant::now();
        let e = SrpBdev::attach(
            &attach_params("srp0", port, serde_json::json!({})),
            ini.handle(),
        )
        .err()
        .unwrap_or_else(|| panic!("{what}: attach succeeded"));
        assert!(matches!(e, AttachError::Login(_)), "{what}: {e:?}");
        let msg = e.to_string();
        for w in want {
            assert!(msg.contains(w), "{what}: `{msg}` does not say `{w}`");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "{what}: took {:?}",
            t0.elapsed()
        );
    }
    // Each refused connection was dropped by the initiator, none used.
    assert!(
        fake.wait_log(Duration::from_secs(5), |l| l.accepted == n
            && l.disconnected == n),
        "{:?}",
        fake.log()
    );
    assert!(fake.log().cmds.is_empty(), "{:?}", fake.log().cmds);
    // The same target, sane, is attached and discovered.
    let b = attach(&fake, serde_json::json!({}), &ini);
    assert_eq!(b.info().block_size, BLOCK_SIZE as u32);
    assert_eq!(b.info().num_blocks, fake_target::NUM_BLOCKS);
    let eui: String = EUI64.iter().map(|x| format!("{x:02x}")).collect();
    assert_eq!(b.device_id(), format!("eui.{eui}"));
    assert_eq!(b.geometry().serial.as_deref(), Some(SERIAL));
    assert_eq!(req_lim(&b), i64::from(CREDITS));
    assert_eq!(write(&ini, 0, &b, 8, 2, 3, 1, true), IoStatus::Success);
    assert_eq!(
        verify(&ini, 0, &b, 8, 2, 3, 1, true),
        (IoStatus::Success, 0)
    );
    assert_eq!(fake.disk_mismatches(8, 2, 3), 0);
    assert_clean(&fake);
}

// ---------------------------------------------------------------------------
// 2. Responses for tags that are not outstanding

#[test]
fn responses_for_unknown_and_duplicate_tags_are_counted_and_ignored() {
    init_tracing();
    let fake = FakeTarget::start(port());
    fake.disk_fill(0, 64, 7);
    let ini = reactors(1);
    let b = attach(&fake, serde_json::json!({}), &ini);
    let credits = req_lim(&b);
    assert_eq!(credits, i64::from(CREDITS));

    // A read into plain memory (bounced): the data reaches the initiator's
    // bounce buffer, then come answers for a tag never sent, for the
    // command's slot at another generation, for a slot the initiator
    // never used, and for a task management request never sent. None may
    // complete the read or copy the bounce buffer into the caller's memory.
    let never_sent = Tag::Fixed(0xdead_beef_0000_0001);
    let other_gen = Tag::Plus(1 << 16);
    let unused_slot = Tag::Fixed(7 << 16 | 0x3ff);
    let task_mgmt = Tag::Fixed(1 << 63 | 99);
    fake.push_cmd(vec![
        Step::Data,
        Step::Rsp(Rsp::check(0x03, 0x11, 0).tag(never_sent).delta(0)),
        Step::Rsp(Rsp::good().tag(other_gen).delta(0)),
        Step::Rsp(Rsp::check(0x05, 0x24, 0).tag(unused_slot).delta(0)),
        Step::Rsp(Rsp::tmf(tsk_mgmt_rsp::COMPLETE).tag(task_mgmt).delta(0)),
        Step::Hold,
        Step::Rsp(Rsp::good()),
    ]);
    let io = Io::start(&ini, &b, Kind::Read, 8, 2, false);
    assert!(fake.wait_held(1, Duration::from_secs(10)));
    assert!(wait_until(Duration::from_secs(5), || unknown(&b) == 4));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        io.done(),
        Vec::<IoStatus>::new(),
        "completed by a foreign response"
    );
    assert!(
        io.snapshot().iter().all(|&x| x == SENTINEL),
        "the caller's buffer was written before the read's own response"
    );
    fake.release();
    assert_eq!(io.wait(Duration::from_secs(10)), Some(IoStatus::Success));
    let f = io.finish(Duration::from_millis(200));
    assert_eq!(f.done, vec![IoStatus::Success]);
    assert!(is_pattern(&f.data, 8, 7), "read data");
    assert_eq!(stat(&b, "unknown_tags"), 4);

    // The same response twice: the request completes once.
    fake.push_cmd(vec![
        Step::Data,
        Step::Rsp(Rsp::good()),
        Step::Rsp(Rsp::good().delta(0)),
    ]);
    let (st, data) = run_io(&ini, &b, Kind::Read, 16, 4, true, Duration::from_secs(10));
    assert_eq!(st, IoStatus::Success);
    assert!(is_pattern(&data, 16, 7));
    assert!(wait_until(Duration::from_secs(5), || unknown(&b) == 5));

    // A late answer for the previous command in the same slot (its former
    // generation), ahead of the real one, and a MEDIUM ERROR duplicate of
    // a write's GOOD: neither changes the outcome.
    fake.push_cmd(vec![
        Step::Rsp(
            Rsp::check(0x03, 0x11, 0)
                .tag(Tag::Plus(0u64.wrapping_sub(1 << 16)))
                .delta(0),
        ),
        Step::Good,
    ]);
    let (st, data) = run_io(&ini, &b, Kind::Read, 24, 1, true, Duration::from_secs(10));
    assert_eq!(st, IoStatus::Success);
    assert!(is_pattern(&data, 24, 7));
    fake.push_cmd(vec![
        Step::Good,
        Step::Rsp(Rsp::check(0x03, 0x0c, 0).delta(0)),
    ]);
    let (st, _) = run_io(
        &ini,
        &b,
        Kind::Write(9),
        32,
        4,
        true,
        Duration::from_secs(10),
    );
    assert_eq!(st, IoStatus::Success);
    assert!(wait_until(Duration::from_secs(5), || unknown(&b) == 7));

    // Nothing was dropped for it, credits are intact, later I/O works.
    assert_eq!(stat(&b, "protocol_errors"), 0);
    assert_eq!(stat(&b, "reconnects"), 0);
    assert_eq!(req_lim(&b), credits);
    assert_eq!(
        verify(&ini, 0, &b, 32, 4, 9, 1, true),
        (IoStatus::Success, 0)
    );
    assert_eq!(fake.disk_mismatches(32, 4, 9), 0);
    assert_clean(&fake);
}

// ---------------------------------------------------------------------------
// 3. Malformed IUs

#[test]
fn malformed_ius_drop_the_connection_and_the_command_is_resubmitted() {
    init_tracing();
    let fake = FakeTarget::start(port());
    fake.disk_fill(0, 64, 5);
    let ini = reactors(1);
    let b = attach(&fake, serde_json::json!({"reconnect_delay_s": 0.2}), &ini);
    let mut good = [0u8; 36];
    good[0] = 0xc1;
    let mut login_rsp = vec![0u8; LoginRsp::SIZE];
    login_rsp[0] = 0xc0; // SRP_LOGIN_RSP: a valid IU, but not one for the channel
    let cases: Vec<(&str, Step)> = vec![
        (
            "sense data beyond the IU",
            Step::Rsp(Rsp {
                sense_len: Some(200),
                ..Rsp::check(0x03, 0x11, 0)
            }),
        ),
        (
            "response data beyond the IU",
            Step::Rsp(Rsp {
                resp_len: Some(u32::MAX),
                ..Rsp::good()
            }),
        ),
        (
            "both lengths at their maximum",
            Step::Rsp(Rsp {
                sense_len: Some(u32::MAX),
                resp_len: Some(u32::MAX),
                ..Rsp::check(0x03, 0x11, 0)
            }),
        ),
        ("a truncated SRP_RSP", Step::Raw(good[..20].to_vec())),
        ("an unknown opcode", Step::Raw(vec![0xee; 64])),
        ("an SRP_LOGIN_RSP", Step::Raw(login_rsp)),
    ];
    for (k, (what, step)) in cases.into_iter().enumerate() {
        let k = k as u64 + 1;
        let lba = 4 * k;
        // The data is already in place when the malformed IU arrives.
        fake.push_cmd(vec![Step::Data, step]);
        let t0 = Instant::now();
        let (st, data) = run_io(&ini, &b, Kind::Read, lba, 2, true, Duration::from_secs(20));
        assert_eq!(st, IoStatus::Success, "{what}");
        assert!(is_pattern(&data, lba, 5), "{what}");
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{what}: {:?}",
            t0.elapsed()
        );
        assert_eq!(stat(&b, "protocol_errors"), k, "{what}");
        assert_eq!(stat(&b, "connection_losses"), k, "{what}");
        assert_eq!(stat(&b, "reconnects"), k, "{what}");
        assert_eq!(stat(&b, "unknown_tags"), 0, "{what}");
        assert_eq!(b.port_state(), PortState::Running, "{what}");
        // Sent on connection k, resubmitted on connection k+1.
        let log = fake.log();
        let cmds = log.data_cmds();
        let last: Vec<u32> = cmds.iter().rev().take(2).map(|c| c.conn).collect();
        assert_eq!(last, vec![k as u32 + 1, k as u32], "{what}");
    }
    assert_eq!(req_lim(&b), i64::from(CREDITS));
    assert_eq!(write(&ini, 0, &b, 100, 8, 6, 1, true), IoStatus::Success);
    assert_eq!(
        verify(&ini, 0, &b, 100, 8, 6, 1, true),
        (IoStatus::Success, 0)
    );
    assert_clean(&fake);
}

// ---------------------------------------------------------------------------
// 4. CHECK CONDITION

#[test]
fn check_condition_sense_maps_to_bdev_statuses() {
    init_tracing();
    let fake = FakeTarget::start(port());
    fake.disk_fill(0, 64, 2);
    let ini = reactors(1);
    let b = attach(&fake, serde_json::json!({}), &ini);
    let desc_medium = vec![0x72, 0x03, 0x11, 0x00, 0, 0, 0, 0];
    let cases: Vec<(&str, Rsp, IoStatus)> = vec![
        (
            "MEDIUM ERROR",
            Rsp::check(0x03, 0x11, 0x00),
            IoStatus::MediumError,
        ),
        (
            "HARDWARE ERROR",
            Rsp::check(0x04, 0x44, 0x00),
            IoStatus::MediumError,
        ),
        (
            "MEDIUM ERROR, descriptor format",
            Rsp {
                sense: desc_medium,
                ..Rsp::check(0, 0, 0)
            },
            IoStatus::MediumError,
        ),
        (
            "ILLEGAL REQUEST",
            Rsp::check(0x05, 0x24, 0x00),
            IoStatus::InvalidRequest,
        ),
        (
            "NOT READY",
            Rsp::check(0x02, 0x04, 0x01),
            IoStatus::PathError,
        ),
        (
            "DATA PROTECT",
            Rsp::check(0x07, 0x27, 0x00),
            IoStatus::ReadOnly,
        ),
        (
            "CHECK CONDITION without sense",
            Rsp {
                sense: Vec::new(),
                ..Rsp::check(0, 0, 0)
            },
            IoStatus::PathError,
        ),
    ];
    for (what, rsp, want) in cases {
        fake.push_cmd(vec![Step::Rsp(rsp)]);
        assert_eq!(read(&ini, &b, 4, 2), want, "{what}");
    }
    assert_eq!(stat(&b, "retries"), 0);
    // UNIT ATTENTION once, then GOOD: retried, success.
    fake.push_cmd(vec![Step::Rsp(Rsp::check(0x06, 0x29, 0x00))]);
    let (st, data) = run_io(&ini, &b, Kind::Read, 8, 2, true, Duration::from_secs(10));
    assert_eq!(st, IoStatus::Success);
    assert!(is_pattern(&data, 8, 2));
    assert_eq!(stat(&b, "retries"), 1);
    // BUSY once: retried too.
    fake.push_cmd(vec![Step::Rsp(Rsp {
        status: 0x08,
        ..Rsp::good()
    })]);
    assert_eq!(read(&ini, &b, 10, 1), IoStatus::Success);
    assert_eq!(stat(&b, "retries"), 2);
    // A write answered with UNIT ATTENTION is sent again, data included.
    fake.push_cmd(vec![Step::Rsp(Rsp::check(0x06, 0x2a, 0x09))]);
    let (st, _) = run_io(
        &ini,
        &b,
        Kind::Write(4),
        40,
        8,
        true,
        Duration::from_secs(10),
    );
    assert_eq!(st, IoStatus::Success);
    assert_eq!(fake.disk_mismatches(40, 8, 4), 0);
    assert_eq!(stat(&b, "retries"), 3);
    // A target that never stops reporting UNIT ATTENTION: bounded retries,
    // then a path error.
    let before = fake.log().data_cmds().len();
    for _ in 0..6 {
        fake.push_cmd(vec![Step::Rsp(Rsp::check(0x06, 0x29, 0x00))]);
    }
    let t0 = Instant::now();
    assert_eq!(read(&ini, &b, 12, 1), IoStatus::PathError);
    assert!(t0.elapsed() < Duration::from_secs(10));
    let tries = fake.log().data_cmds().len() - before;
    assert_eq!(tries, 6, "sent {tries} times");
    assert_eq!(stat(&b, "retries"), 3 + 5);
    // Nothing of this is a transport problem.
    assert_eq!(stat(&b, "reconnects"), 0);
    assert_eq!(stat(&b, "protocol_errors"), 0);
    assert_eq!(stat(&b, "unknown_tags"), 0);
    assert_eq!(fake.unused_cmd_scripts(), 0);
    assert_eq!(req_lim(&b), i64::from(CREDITS));
    assert_clean(&fake);
}

// ---------------------------------------------------------------------------
// 5. Residuals

#[test]
fn a_residual_on_a_good_status_fails_the_command() {
    init_tracing();
    let fake = FakeTarget::start(port());
    fake.disk_fill(0, 64, 3);
    let ini = reactors(1);
    let b = attach(&fake, serde_json::json!({}), &ini);
    let under = |di: u32| Rsp {
        flags: RspFlags::DIUNDER.0,
        di,
        ..Rsp::good()
    };
    // GOOD with a data-in underflow of one block: the data is not all
    // there: not a success.
    fake.push_cmd(vec![Step::Data, Step::Rsp(under(4096))]);
    assert_eq!(read(&ini, &b, 0, 2), IoStatus::MediumError);
    assert_eq!(stat(&b, "protocol_errors"), 1);
    // Into plain memory: a failed read leaves the caller's buffer as it was.
    fake.push_cmd(vec![Step::Data, Step::Rsp(under(512))]);
    let (st, data) = run_io(&ini, &b, Kind::Read, 2, 2, false, Duration::from_secs(10));
    assert_eq!(st, IoStatus::MediumError);
    assert!(
        data.iter().all(|&x| x == SENTINEL),
        "failed read delivered data"
    );
    assert_eq!(stat(&b, "protocol_errors"), 2);
    // An overflow, and a data-out underflow on a write.
    fake.push_cmd(vec![
        Step::Data,
        Step::Rsp(Rsp {
            flags: RspFlags::DIOVER.0,
            di: 4096,
            ..Rsp::good()
        }),
    ]);
    assert_eq!(read(&ini, &b, 4, 2), IoStatus::MediumError);
    assert_eq!(stat(&b, "protocol_errors"), 3);
    fake.push_cmd(vec![
        Step::Data,
        Step::Rsp(Rsp {
            flags: RspFlags::DOUNDER.0,
            dout: 4096,
            ..Rsp::good()
        }),
    ]);
    let (st, _) = run_io(
        &ini,
        &b,
        Kind::Write(8),
        8,
        8,
        true,
        Duration::from_secs(10),
    );
    assert_eq!(st, IoStatus::MediumError);
    assert_eq!(stat(&b, "protocol_errors"), 4);
    // An underflow flag with a zero count is no residual.
    fake.push_cmd(vec![Step::Data, Step::Rsp(under(0))]);
    let (st, data) = run_io(&ini, &b, Kind::Read, 16, 2, true, Duration::from_secs(10));
    assert_eq!(st, IoStatus::Success);
    assert!(is_pattern(&data, 16, 3));
    assert_eq!(stat(&b, "protocol_errors"), 4);
    // The connection stays; later I/O works.
    assert_eq!(stat(&b, "reconnects"), 0);
    assert_eq!(stat(&b, "retries"), 0);
    assert_eq!(
        verify(&ini, 0, &b, 20, 4, 3, 1, true),
        (IoStatus::Success, 0)
    );
    assert_eq!(req_lim(&b), i64::from(CREDITS));
    assert_clean(&fake);
}

// ---------------------------------------------------------------------------
// 6. Target requests

#[test]
fn credit_and_event_requests_are_answered_and_grant_credits() {
    init_tracing();
    let fake = FakeTarget::start(port());
    fake.disk_fill(0, 16, 1);
    let ini = reactors(1);
    let b = attach(&fake, serde_json::json!({}), &ini);
    let r0 = req_lim(&b);
    assert_eq!(r0, i64::from(CREDITS));

    fake.inject(Step::CredReq(5));
    assert!(fake.wait_log(Duration::from_secs(5), |l| l.cred_rsps.len() == 1));
    let log = fake.log();
    assert_eq!(log.sent_reqs.len(), 1);
    assert_eq!(log.cred_rsps[0], log.sent_reqs[0].1, "SRP_CRED_RSP tag");
    assert!(wait_until(Duration::from_secs(5), || req_lim(&b) == r0 + 5));
    assert_eq!(stat(&b, "cred_reqs"), 1);

    fake.inject(Step::AerReq(3));
    assert!(fake.wait_log(Duration::from_secs(5), |l| l.aer_rsps.len() == 1));
    let log = fake.log();
    assert_eq!(log.aer_rsps[0], log.sent_reqs[1].1, "SRP_AER_RSP tag");
    assert!(wait_until(Duration::from_secs(5), || req_lim(&b) == r0 + 8));
    assert_eq!(stat(&b, "aer_reqs"), 1);

    // Both in the middle of a command, ahead of its response.
    fake.push_cmd(vec![
        Step::Data,
        Step::CredReq(2),
        Step::AerReq(0),
        Step::Rsp(Rsp::good()),
    ]);
    assert_eq!(
        verify(&ini, 0, &b, 0, 4, 1, 1, true),
        (IoStatus::Success, 0)
    );
    assert!(
        fake.wait_log(Duration::from_secs(5), |l| l.cred_rsps.len() == 2
            && l.aer_rsps.len() == 2)
    );
    let log = fake.log();
    assert_eq!(log.cred_rsps[1], log.sent_reqs[2].1);
    assert_eq!(log.aer_rsps[1], log.sent_reqs[3].1);
    assert!(wait_until(Duration::from_secs(5), || req_lim(&b) == r0 + 10));
    assert_eq!((stat(&b, "cred_reqs"), stat(&b, "aer_reqs")), (2, 2));

    assert_eq!(write(&ini, 0, &b, 8, 4, 2, 1, true), IoStatus::Success);
    assert_eq!(fake.disk_mismatches(8, 4, 2), 0);
    assert_eq!(stat(&b, "protocol_errors"), 0);
    assert_eq!(stat(&b, "reconnects"), 0);
    assert_clean(&fake);
}

/// Twenty SRP_CRED_REQs that the initiator finds in one poll of its CQ
/// (its reactor is kept busy while they arrive): each must be answered.
///
/// Fails (initiator bug): `Conn::answer_target` (src/rsp.rs) takes one of
/// `RSP_SLOTS` (8) send slots per answer and drops the answer with a
/// warning when none is free; the slots come back only when the SEND
/// completions are polled, after the whole batch of receives. 8 of the 20
/// are answered; the credits of all 20 are taken.
#[test]
fn a_burst_of_credit_requests_is_answered_in_full() {
    init_tracing();
    let fake = FakeTarget::start(port());
    let ini = reactors(1);
    let b = attach(&fake, serde_json::json!({}), &ini);
    let r0 = req_lim(&b);
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    ini.handle()
        .send(0, move || {
            let _ = started_tx.send(());
            let _ = go_rx.recv_timeout(Duration::from_secs(10));
        })
        .expect("reactor");
    started_rx.recv().expect("reactor busy");
    for _ in 0..20 {
        fake.inject(Step::CredReq(1));
    }
    assert!(fake.wait_log(Duration::from_secs(5), |l| l.sent_reqs.len() == 20));
    go_tx.send(()).expect("reactor");
    assert!(wait_until(Duration::from_secs(5), || req_lim(&b) == r0 + 20));
    assert_eq!(stat(&b, "cred_reqs"), 20);
    let answered = fake.wait_log(Duration::from_secs(5), |l| l.cred_rsps.len() == 20);
    let log = fake.log();
    assert!(
        answered,
        "{} of 20 SRP_CRED_REQs answered",
        log.cred_rsps.len()
    );
    let sent: Vec<u64> = log.sent_reqs.iter().map(|r| r.1).collect();
    assert_eq!(log.cred_rsps, sent);
    assert_eq!(write(&ini, 0, &b, 0, 2, 1, 1, true), IoStatus::Success);
    assert_eq!(
        verify(&ini, 0, &b, 0, 2, 1, 1, true),
        (IoStatus::Success, 0)
    );
    assert_clean(&fake);
}

// ---------------------------------------------------------------------------
// 7. Target logout

#[test]
fn a_target_logout_reconnects_and_io_continues() {
    init_tracing();
    let fake = FakeTarget::start(port());
    let ini = reactors(1);
    let b = attach(&fake, serde_json::json!({"reconnect_delay_s": 0.2}), &ini);
    assert_eq!(write(&ini, 0, &b, 0, 8, 1, 1, true), IoStatus::Success);
    // SRP_T_LOGOUT while idle; the target leaves the disconnect to us.
    fake.inject(Step::TLogout);
    assert!(wait_until(Duration::from_secs(10), || stat(
        &b,
        "reconnects"
    ) == 1
        && b.port_state() == PortState::Running));
    assert_eq!(stat(&b, "connection_losses"), 1);
    assert!(fake.wait_log(Duration::from_secs(5), |l| l.accepted == 2
        && l.disconnected == 1));
    assert_eq!(
        verify(&ini, 0, &b, 0, 8, 1, 1, true),
        (IoStatus::Success, 0)
    );
    // SRP_T_LOGOUT instead of the answer to a write: the write is sent
    // again on the next connection and completes once.
    fake.push_cmd(vec![Step::Data, Step::TLogout]);
    let (st, _) = run_io(
        &ini,
        &b,
        Kind::Write(3),
        32,
        8,
        true,
        Duration::from_secs(10),
    );
    assert_eq!(st, IoStatus::Success);
    assert_eq!(stat(&b, "reconnects"), 2);
    assert_eq!(stat(&b, "connection_losses"), 2);
    assert_eq!(fake.disk_mismatches(32, 8, 3), 0);
    let log = fake.log();
    let w: Vec<u32> = log
        .data_cmds()
        .iter()
        .filter(|c| c.opcode() == 0x8a && c.cdb[9] == 32)
        .map(|c| c.conn)
        .collect();
    assert_eq!(w, vec![2, 3]);
    assert_eq!(
        verify(&ini, 0, &b, 32, 8, 3, 1, true),
        (IoStatus::Success, 0)
    );
    assert_eq!(req_lim(&b), i64::from(CREDITS));
    assert_eq!(stat(&b, "protocol_errors"), 0);
    assert_clean(&fake);
}

// ---------------------------------------------------------------------------
// 8. Time-outs and task management

#[test]
fn an_unanswered_command_escalates_to_abort_reset_and_reconnect() {
    init_tracing();
    let fake = FakeTarget::start(port());
    fake.disk_fill(0, 16, 4);
    let ini = reactors(1);
    let b = attach(
        &fake,
        serde_json::json!({"cmd_timeout_s": 1, "reconnect_delay_s": 0.2}),
        &ini,
    );
    // Neither the command, nor ABORT TASK, nor LUN RESET is answered; after
    // the reconnect the command is answered.
    fake.push_cmd(vec![]);
    fake.push_tmf(vec![]);
    fake.push_tmf(vec![]);
    let t0 = Instant::now();
    let (st, data) = run_io(&ini, &b, Kind::Read, 4, 2, true, Duration::from_secs(40));
    let took = t0.elapsed();
    assert_eq!(st, IoStatus::Success);
    assert!(is_pattern(&data, 4, 4));
    // 1 s, ABORT TASK's and LUN RESET's min(5 s, cmd_timeout) each, the
    // reconnect.
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert_eq!(stat(&b, "timeouts"), 1);
    assert_eq!(stat(&b, "aborts_sent"), 1);
    assert_eq!(stat(&b, "aborts_succeeded"), 0);
    assert_eq!(stat(&b, "lun_resets_sent"), 1);
    assert_eq!(stat(&b, "lun_resets_succeeded"), 0);
    assert_eq!(stat(&b, "connection_losses"), 1);
    assert_eq!(stat(&b, "reconnects"), 1);
    assert_eq!(b.port_state(), PortState::Running);
    let log = fake.log();
    let cmds = log.data_cmds();
    assert_eq!(cmds.len(), 2, "{cmds:?}");
    assert_eq!((cmds[0].conn, cmds[1].conn), (1, 2));
    assert_eq!(log.tmfs.len(), 2, "{:?}", log.tmfs);
    assert_eq!(log.tmfs[0].function, TaskMgmtFunction::AbortTask);
    assert_eq!(
        log.tmfs[0].task_tag, cmds[0].tag,
        "ABORT TASK names the command"
    );
    assert_eq!(log.tmfs[1].function, TaskMgmtFunction::LunReset);
    assert!(log.tmfs.iter().all(|t| t.conn == 1));
    assert_eq!(
        verify(&ini, 0, &b, 8, 4, 4, 1, true),
        (IoStatus::Success, 0)
    );
    assert_eq!(req_lim(&b), i64::from(CREDITS));
    assert_clean(&fake);
}

#[test]
fn an_aborted_command_is_retried() {
    init_tracing();
    let fake = FakeTarget::start(port());
    fake.disk_fill(0, 16, 6);
    let ini = reactors(1);
    let b = attach(
        &fake,
        serde_json::json!({"cmd_timeout_s": 1, "reconnect_delay_s": 0.2}),
        &ini,
    );
    // The command is held (no answer); ABORT TASK gets FUNCTION COMPLETE
    // (unscripted), the command is sent again and answered. (The held
    // answer moves no data: the caller's buffer is gone by then.)
    fake.push_cmd(vec![Step::Hold, Step::Rsp(Rsp::good())]);
    let t0 = Instant::now();
    let (st, data) = run_io(&ini, &b, Kind::Read, 2, 2, true, Duration::from_secs(20));
    assert_eq!(st, IoStatus::Success);
    assert!(is_pattern(&data, 2, 6));
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert_eq!(stat(&b, "timeouts"), 1);
    assert_eq!(stat(&b, "aborts_sent"), 1);
    assert_eq!(stat(&b, "aborts_succeeded"), 1);
    assert_eq!(stat(&b, "retries"), 1);
    assert_eq!(stat(&b, "lun_resets_sent"), 0);
    assert_eq!(stat(&b, "reconnects"), 0);
    let log = fake.log();
    let cmds = log.data_cmds();
    assert_eq!(cmds.len(), 2);
    assert_ne!(cmds[0].tag, cmds[1].tag, "the retry is a new task");
    assert_eq!(log.tmfs.len(), 1);
    assert_eq!(log.tmfs[0].function, TaskMgmtFunction::AbortTask);
    assert_eq!(log.tmfs[0].task_tag, cmds[0].tag);
    // The aborted command's answer, arriving late, is ignored.
    fake.release();
    assert!(wait_until(Duration::from_secs(5), || stat(
        &b,
        "unknown_tags"
    ) == 1));

    // ABORT TASK refused: LUN RESET (FUNCTION COMPLETE), and what was
    // outstanding is sent again.
    fake.push_cmd(vec![]);
    fake.push_tmf(vec![Step::Rsp(Rsp::tmf(tsk_mgmt_rsp::FAILED))]);
    // (The LUN RESET's answer returns the aborted command's credit too.)
    fake.push_tmf(vec![Step::Rsp(Rsp::tmf(tsk_mgmt_rsp::COMPLETE).delta(2))]);
    let (st, data) = run_io(&ini, &b, Kind::Read, 6, 2, true, Duration::from_secs(20));
    assert_eq!(st, IoStatus::Success);
    assert!(is_pattern(&data, 6, 6));
    assert_eq!(stat(&b, "timeouts"), 2);
    assert_eq!(stat(&b, "aborts_sent"), 2);
    assert_eq!(stat(&b, "aborts_succeeded"), 1);
    assert_eq!(stat(&b, "lun_resets_sent"), 1);
    assert_eq!(stat(&b, "lun_resets_succeeded"), 1);
    assert_eq!(stat(&b, "retries"), 2);
    assert_eq!(stat(&b, "reconnects"), 0);
    let log = fake.log();
    assert_eq!(log.tmfs.len(), 3);
    assert_eq!(log.tmfs[2].function, TaskMgmtFunction::LunReset);
    assert_eq!(
        verify(&ini, 0, &b, 8, 4, 6, 1, true),
        (IoStatus::Success, 0)
    );
    assert_eq!(req_lim(&b), i64::from(CREDITS));
    assert_clean(&fake);
}

/// A LUN RESET aborts the tasks the target had when it got it; a command
/// sent after the LUN RESET is a new task that the target goes on to
/// execute and answer. The initiator must not send it a second time.
///
/// Fails (initiator bug): on FUNCTION COMPLETE, `Conn::on_tmf_rsp`
/// (src/tmf.rs) retries every command in state `Sent`, including those
/// sent after the LUN RESET: the write reaches the target twice and its
/// own answer is then counted as an unknown tag.
#[test]
fn a_lun_reset_resends_only_the_commands_it_aborted() {
    init_tracing();
    let fake = FakeTarget::start(port());
    fake.disk_fill(0, 16, 3);
    let ini = reactors(1);
    let b = attach(&fake, serde_json::json!({}), &ini);
    // A: a read the target sits on (the reset aborts it).
    fake.push_cmd(vec![]);
    let a = Io::start(&ini, &b, Kind::Read, 0, 2, true);
    assert!(fake.wait_log(Duration::from_secs(5), |l| l.data_cmds().len() == 1));
    // A bdev reset: LUN RESET, held by the target for a while.
    fake.push_tmf(vec![
        Step::Hold,
        Step::Rsp(Rsp::tmf(tsk_mgmt_rsp::COMPLETE).delta(2)),
    ]);
    let reset = Io::start(&ini, &b, Kind::NoData(IoType::Reset), 0, 0, true);
    assert!(fake.wait_held(1, Duration::from_secs(5)));
    // B: a write sent while the LUN RESET is outstanding.
    fake.push_cmd(vec![Step::Hold, Step::Good]);
    let w = Io::start(&ini, &b, Kind::Write(8), 8, 2, true);
    assert!(fake.wait_held(2, Duration::from_secs(5)));
    let log = fake.log();
    assert_eq!(log.tmfs.len(), 1);
    assert_eq!(log.tmfs[0].function, TaskMgmtFunction::LunReset);
    // FUNCTION COMPLETE: A is sent again and answered.
    fake.release();
    assert_eq!(reset.wait(Duration::from_secs(5)), Some(IoStatus::Success));
    assert_eq!(a.wait(Duration::from_secs(5)), Some(IoStatus::Success));
    // B's own answer.
    fake.release();
    assert_eq!(w.wait(Duration::from_secs(5)), Some(IoStatus::Success));
    let (fa, fr, fw) = (
        a.finish(Duration::from_millis(100)),
        reset.finish(Duration::ZERO),
        w.finish(Duration::ZERO),
    );
    assert_eq!(
        (fa.done, fr.done, fw.done),
        (
            vec![IoStatus::Success],
            vec![IoStatus::Success],
            vec![IoStatus::Success]
        )
    );
    assert!(is_pattern(&fa.data, 0, 3));
    assert_eq!(fake.disk_mismatches(8, 2, 8), 0);
    assert_eq!(stat(&b, "lun_resets_succeeded"), 1);
    let log = fake.log();
    let writes = log
        .data_cmds()
        .iter()
        .filter(|c| c.opcode() == 0x8a)
        .count();
    assert_eq!(
        (writes, stat(&b, "unknown_tags")),
        (1, 0),
        "the write sent after the LUN RESET was sent again (and its own answer then ignored)"
    );
    assert_clean(&fake);
}

/// With 3 credits the initiator has two commands out at a time (it keeps
/// one for task management); an SRP_CRED_REQ lets more out; the target
/// never sees a command it gave no credit for.
#[test]
fn the_initiator_stays_within_its_credits() {
    init_tracing();
    let fake = FakeTarget::start(port());
    let ini = reactors(1);
    fake.push_login(Login::Accept(LoginTweak {
        req_lim_delta: Some(3),
        ..LoginTweak::default()
    }));
    let b = attach(&fake, serde_json::json!({}), &ini);
    assert_eq!(req_lim(&b), 3);
    for _ in 0..8 {
        fake.push_cmd(vec![Step::Hold, Step::Good]);
    }
    let ios: Vec<Io> = (0..8u64)
        .map(|k| Io::start(&ini, &b, Kind::Write(20 + k), 4 * k, 4, true))
        .collect();
    assert!(fake.wait_held(2, Duration::from_secs(5)));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(fake.log().data_cmds().len(), 2, "sent beyond its credits");
    // Two more credits: two more commands.
    fake.inject(Step::CredReq(2));
    assert!(fake.wait_held(4, Duration::from_secs(5)));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(fake.log().data_cmds().len(), 4);
    for _ in 0..8 {
        assert!(fake.wait_held(1, Duration::from_secs(5)));
        fake.release();
    }
    for (k, io) in ios.into_iter().enumerate() {
        assert_eq!(
            io.wait(Duration::from_secs(10)),
            Some(IoStatus::Success),
            "write {k}"
        );
        assert_eq!(io.finish(Duration::ZERO).done, vec![IoStatus::Success]);
        assert_eq!(fake.disk_mismatches(4 * k as u64, 4, 20 + k as u64), 0);
    }
    assert_eq!(req_lim(&b), 5);
    assert_clean(&fake);
}

/// A target that takes every credit away (a negative delta) and never
/// gives it back: queued I/O must still end within a bound (the command
/// time-out), not wait for ever.
///
/// Fails (initiator gap; ib_srp behaves the same, requeueing while
/// `req_lim` is at the task management reserve): `cmd_timeout` applies
/// only to commands in state `Sent` (`Conn::scan_timeouts`, src/tmf.rs); a
/// request waiting for a credit waits with the port RUNNING and no
/// time-out, so neither a reconnect nor a path error (multipath) comes.
#[test]
fn io_waiting_for_credits_that_never_come_is_bounded() {
    init_tracing();
    let fake = FakeTarget::start(port());
    let ini = reactors(1);
    let b = attach(
        &fake,
        serde_json::json!({"cmd_timeout_s": 1, "reconnect_delay_s": 0.2}),
        &ini,
    );
    fake.inject(Step::CredReq(-i32::try_from(CREDITS).unwrap_or(16)));
    assert!(wait_until(Duration::from_secs(5), || req_lim(&b) == 0));
    let io = Io::start(&ini, &b, Kind::Write(1), 0, 4, true);
    let st = io.wait(Duration::from_secs(20));
    let f = io.finish(Duration::ZERO);
    assert!(
        st.is_some(),
        "a write waiting for credits did not end within 20 s (cmd_timeout_s 1): \
         req_lim {}, timeouts {}, commands received by the target {}",
        req_lim(&b),
        stat(&b, "timeouts"),
        fake.log().data_cmds().len()
    );
    assert_eq!(f.done.len(), 1);
}

/// FUA as the target's Caching mode page allows it: the FUA bit with
/// DPOFUA; SYNCHRONIZE CACHE after the write with a write cache but no
/// DPOFUA (the completion waits for it); nothing with the cache off.
#[test]
fn fua_follows_the_caching_mode_page() {
    init_tracing();
    let ini = reactors(1);
    for (wce, dpofua, want) in [
        (true, true, (0, 1)),
        (true, false, (1, 0)),
        (false, false, (0, 0)),
    ] {
        let fake = FakeTarget::start(port());
        fake.set_caching(wce, dpofua);
        let b = attach(&fake, serde_json::json!({}), &ini);
        assert_eq!(b.geometry().write_cache, wce);
        assert_eq!(b.geometry().dpofua, dpofua);
        let before = fake.durability_cmds();
        let bd: Arc<dyn Bdev> = Arc::clone(&b) as Arc<dyn Bdev>;
        let st = ini
            .handle()
            .call(0, move || {
                let mut ch = bdev::open_channel(&bd).unwrap();
                let mut buf = AlignedBuf::new(8 * BLOCK_SIZE);
                fill_pattern(buf.as_mut_slice(), 0, BLOCK_SIZE, 77);
                let v = [buf.iovec(0, buf.len())];
                let req = IoRequest::write(0, 8, &v).with_fua(true);
                let mut st = None;
                // SAFETY: `buf` outlives the synchronous call.
                unsafe { ch.submit(&req, 1) }.unwrap();
                let t0 = Instant::now();
                while st.is_none() && t0.elapsed() < Duration::from_secs(10) {
                    ch.poll(&mut |_, s| st = Some(s));
                }
                st
            })
            .unwrap();
        assert_eq!(st, Some(IoStatus::Success), "wce {wce} dpofua {dpofua}");
        let after = fake.durability_cmds();
        assert_eq!(
            (after.0 - before.0, after.1 - before.1),
            want,
            "wce {wce} dpofua {dpofua}: (SYNCHRONIZE CACHE, FUA writes)"
        );
        assert_eq!(fake.disk_mismatches(0, 8, 77), 0);
        assert_clean(&fake);
    }
}
