//! Run-to-completion reactor threads, in the style of SPDK's `lib/thread`.
//!
//! [`ReactorSet::start`] spawns one thread per configured core, pinned with
//! `sched_setaffinity`. Each thread loops over its pollers (closures that
//! report [`Poll::Busy`] or [`Poll::Idle`]), its inbound message rings and
//! its timers. Nothing here takes a lock on the data path:
//!
//! * reactor → reactor messages travel through one bounded lock-free SPSC
//!   ring per (sender, receiver) pair ([`ring::SpscRing`]);
//! * control-plane threads (RPC, signal handling) send through one extra
//!   ring per reactor whose producer side is serialised by a mutex — the
//!   control plane may block, the reactor never does;
//! * timers are a per-reactor heap checked by the loop (millisecond
//!   resolution).
//!
//! Thread-local functions ([`register_poller`], [`send`], [`timer_after`],
//! [`periodic`], [`core`], [`draining`], [`inflight_add`]) are used by code
//! that runs on a reactor.
//!
//! Shutdown is orderly: [`ReactorSet::shutdown`] moves every reactor to
//! *draining* (front ends stop accepting new I/O, see [`draining`]), waits
//! until all reactors report no in-flight I/O and no queued messages, then
//! stops the threads.
//!
//! Unsafe code here is limited to the SPSC ring and the `sched_setaffinity`
//! call; each block carries a `// SAFETY:` comment.

pub mod ring;

use std::cell::{Cell, RefCell};
use std::collections::{BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ring::SpscRing;

/// What a poller did in one call.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Poll {
    /// It did work (completed or submitted something).
    Busy,
    /// It found nothing to do.
    Idle,
}

impl Poll {
    /// `Busy` if `n > 0`.
    pub fn from_count(n: usize) -> Poll {
        if n > 0 {
            Poll::Busy
        } else {
            Poll::Idle
        }
    }
}

/// A message: a closure run once on the receiving reactor.
pub type Message = Box<dyn FnOnce() + Send + 'static>;

/// Errors starting or talking to reactors.
#[derive(Debug, thiserror::Error)]
pub enum ReactorError {
    /// No cores were given.
    #[error("no reactor cores given")]
    NoCores,
    /// A core was listed twice.
    #[error("core {0} is listed more than once")]
    DuplicateCore(usize),
    /// A core is not one this process may run on.
    #[error("core {core} is not available to this process (allowed: {allowed})")]
    CoreUnavailable {
        /// The requested core.
        core: usize,
        /// The allowed CPUs, as a list.
        allowed: String,
    },
    /// `sched_setaffinity` failed.
    #[error("pinning to core {core} failed")]
    Pin {
        /// The requested core.
        core: usize,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Spawning a thread failed.
    #[error("spawning reactor thread failed")]
    Spawn(#[source] std::io::Error),
    /// The reactor index is out of range.
    #[error("no reactor with index {0}")]
    NoSuchReactor(usize),
    /// The reactors are stopping or stopped.
    #[error("reactors are shutting down")]
    ShuttingDown,
}

/// Options for [`ReactorSet::start`].
#[derive(Clone, Debug)]
pub struct ReactorOptions {
    /// Capacity of each message ring.
    pub ring_capacity: usize,
    /// If non-zero, a reactor that has been idle for at least
    /// `max(idle_sleep_us, 50)` µs sleeps this many microseconds between
    /// loops until it has work again. Zero (the
    /// default) is pure polling, as SPDK does; a positive value trades
    /// latency for CPU on shared machines (CI, laptops).
    pub idle_sleep_us: u64,
    /// Whether to pin threads (tests may turn this off).
    pub pin: bool,
    /// How long [`ReactorSet::shutdown`] waits for in-flight I/O to drain.
    pub drain_timeout: Duration,
}

impl Default for ReactorOptions {
    fn default() -> Self {
        ReactorOptions {
            ring_capacity: 4096,
            idle_sleep_us: 0,
            pin: true,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

const RUNNING: u8 = 0;
const DRAINING: u8 = 1;
const STOPPED: u8 = 2;

/// Per-reactor counters, written only by the owning thread.
#[derive(Default)]
struct StatsCell {
    busy_polls: AtomicU64,
    idle_polls: AtomicU64,
    msgs_sent: AtomicU64,
    msgs_received: AtomicU64,
    pollers: AtomicU64,
    timers: AtomicU64,
    inflight: AtomicU64,
    quiescent: AtomicBool,
}

/// A snapshot of one reactor's statistics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReactorStats {
    /// Reactor index (0-based position in the core list).
    pub index: usize,
    /// The CPU it is pinned to.
    pub core: usize,
    /// Poller calls that did work.
    pub busy_polls: u64,
    /// Poller calls that found nothing.
    pub idle_polls: u64,
    /// Messages sent by this reactor to reactors (itself included).
    pub msgs_sent: u64,
    /// Messages this reactor ran.
    pub msgs_received: u64,
    /// Registered pollers.
    pub pollers: u64,
    /// Armed timers.
    pub timers: u64,
    /// I/Os the front ends on this reactor have in flight.
    pub inflight: u64,
}

struct Shared {
    cores: Vec<usize>,
    /// `rings[receiver][sender]`; sender index `n` is the control plane.
    rings: Vec<Vec<SpscRing<Message>>>,
    control_lock: Vec<Mutex<()>>,
    state: AtomicU8,
    stats: Vec<StatsCell>,
    idle_sleep_us: u64,
    running: AtomicUsize,
}

impl Shared {
    fn control_push(&self, to: usize, msg: Message) -> Result<(), ReactorError> {
        if self.state.load(Ordering::Acquire) == STOPPED {
            return Err(ReactorError::ShuttingDown);
        }
        let n = self.cores.len();
        let ring = self.rings.get(to).ok_or(ReactorError::NoSuchReactor(to))?;
        let _guard = self.control_lock[to]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut msg = msg;
        loop {
            match ring[n].push(msg) {
                Ok(()) => return Ok(()),
                Err(back) => {
                    if self.state.load(Ordering::Acquire) == STOPPED {
                        return Err(ReactorError::ShuttingDown);
                    }
                    msg = back;
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
        }
    }
}

/// A running set of reactors. Dropping it shuts them down.
pub struct ReactorSet {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    drain_timeout: Duration,
}

/// A cloneable, `Send` handle to send messages to reactors from any thread.
#[derive(Clone)]
pub struct ReactorHandle {
    shared: Arc<Shared>,
}

impl ReactorHandle {
    /// Number of reactors.
    pub fn len(&self) -> usize {
        self.shared.cores.len()
    }

    /// Always false: a reactor set has at least one reactor.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The CPU of each reactor, by index.
    pub fn cores(&self) -> &[usize] {
        &self.shared.cores
    }

    /// Runs `f` on reactor `index` (fire and forget).
    pub fn send(
        &self,
        index: usize,
        f: impl FnOnce() + Send + 'static,
    ) -> Result<(), ReactorError> {
        self.shared.control_push(index, Box::new(f))
    }

    /// Runs `f` on reactor `index` and waits for its result.
    pub fn call<R: Send + 'static>(
        &self,
        index: usize,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, ReactorError> {
        let slot = Arc::new((Mutex::new(None), Condvar::new()));
        let back = Arc::clone(&slot);
        self.send(index, move || {
            let r = f();
            let (m, cv) = &*back;
            *m.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
            cv.notify_all();
        })?;
        let (m, cv) = &*slot;
        let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(r) = g.take() {
                return Ok(r);
            }
            if self.shared.state.load(Ordering::Acquire) == STOPPED {
                return Err(ReactorError::ShuttingDown);
            }
            g = cv
                .wait_timeout(g, Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Runs `f(index)` on every reactor and collects the results in order.
    pub fn call_all<R: Send + 'static>(
        &self,
        f: impl Fn(usize) -> R + Send + Sync + 'static,
    ) -> Result<Vec<R>, ReactorError> {
        let f = Arc::new(f);
        (0..self.len())
            .map(|i| {
                let f = Arc::clone(&f);
                self.call(i, move || f(i))
            })
            .collect()
    }

    /// Statistics of every reactor.
    pub fn stats(&self) -> Vec<ReactorStats> {
        self.shared
            .stats
            .iter()
            .enumerate()
            .map(|(i, s)| ReactorStats {
                index: i,
                core: self.shared.cores[i],
                busy_polls: s.busy_polls.load(Ordering::Relaxed),
                idle_polls: s.idle_polls.load(Ordering::Relaxed),
                msgs_sent: s.msgs_sent.load(Ordering::Relaxed),
                msgs_received: s.msgs_received.load(Ordering::Relaxed),
                pollers: s.pollers.load(Ordering::Relaxed),
                timers: s.timers.load(Ordering::Relaxed),
                inflight: s.inflight.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.shared.state.load(Ordering::Acquire) != RUNNING
    }
}

/// Lists the CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; zeroed is a valid empty set, and
    // sched_getaffinity writes at most size_of::<cpu_set_t>() bytes into it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

fn pin_current_thread(core: usize) -> Result<(), ReactorError> {
    // SAFETY: as in `allowed_cpus`; `core` was checked against the allowed
    // set (which is below CPU_SETSIZE) before the thread was spawned.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(ReactorError::Pin {
            core,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

impl ReactorSet {
    /// Starts one reactor per entry of `cores`, pinned to that CPU.
    pub fn start(cores: &[usize], opts: ReactorOptions) -> Result<ReactorSet, ReactorError> {
        if cores.is_empty() {
            return Err(ReactorError::NoCores);
        }
        for (i, c) in cores.iter().enumerate() {
            if cores[..i].contains(c) {
                return Err(ReactorError::DuplicateCore(*c));
            }
        }
        if opts.pin {
            let allowed = allowed_cpus();
            if let Some(&core) = cores.iter().find(|c| !allowed.contains(c)) {
                let allowed = allowed
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(",");
                return Err(ReactorError::CoreUnavailable { core, allowed });
            }
        }
        let n = cores.len();
        let shared = Arc::new(Shared {
            cores: cores.to_vec(),
            rings: (0..n)
                .map(|_| (0..=n).map(|_| SpscRing::new(opts.ring_capacity)).collect())
                .collect(),
            control_lock: (0..n).map(|_| Mutex::new(())).collect(),
            state: AtomicU8::new(RUNNING),
            stats: (0..n).map(|_| StatsCell::default()).collect(),
            idle_sleep_us: opts.idle_sleep_us,
            running: AtomicUsize::new(0),
        });
        let mut threads = Vec::with_capacity(n);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        for (index, &core) in cores.iter().enumerate() {
            let shared = Arc::clone(&shared);
            let ready = ready_tx.clone();
            let pin = opts.pin;
            let t = std::thread::Builder::new()
                .name(format!("reactor_{core}"))
                .spawn(move || {
                    if pin {
                        if let Err(e) = pin_current_thread(core) {
                            let _ = ready.send(Err(e));
                            return;
                        }
                    }
                    let _ = ready.send(Ok(()));
                    run_reactor(index, shared);
                })
                .map_err(ReactorError::Spawn)?;
            threads.push(t);
        }
        drop(ready_tx);
        let mut set = ReactorSet {
            shared,
            threads,
            drain_timeout: opts.drain_timeout,
        };
        for _ in 0..n {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    set.stop_now();
                    return Err(e);
                }
                Err(_) => {
                    set.stop_now();
                    return Err(ReactorError::ShuttingDown);
                }
            }
        }
        tracing::info!(cores = ?cores, "reactors started");
        Ok(set)
    }

    /// A handle for sending messages from other threads.
    pub fn handle(&self) -> ReactorHandle {
        ReactorHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Orderly shutdown: stop accepting new I/O, drain what is in flight
    /// (bounded by `drain_timeout`), stop the threads. Returns whether the
    /// drain finished within the time-out.
    pub fn shutdown(mut self) -> bool {
        self.shutdown_inner()
    }

    fn shutdown_inner(&mut self) -> bool {
        if self.threads.is_empty() {
            return true;
        }
        self.shared.state.store(DRAINING, Ordering::Release);
        let deadline = Instant::now() + self.drain_timeout;
        let mut drained = false;
        // All reactors must be quiescent at the same moment, twice in a row,
        // so that a message in flight between two of them is not missed.
        let mut consecutive = 0;
        while Instant::now() < deadline {
            if self
                .shared
                .stats
                .iter()
                .all(|s| s.quiescent.load(Ordering::Acquire))
            {
                consecutive += 1;
                if consecutive >= 3 {
                    drained = true;
                    break;
                }
            } else {
                consecutive = 0;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if !drained {
            let left: u64 = self
                .shared
                .stats
                .iter()
                .map(|s| s.inflight.load(Ordering::Relaxed))
                .sum();
            tracing::warn!(inflight = left, "drain timed out; stopping reactors anyway");
        }
        self.stop_now();
        drained
    }

    fn stop_now(&mut self) {
        self.shared.state.store(STOPPED, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for ReactorSet {
    fn drop(&mut self) {
        self.shutdown_inner();
    }
}

// ---------------------------------------------------------------------------
// Per-thread state.

type PollerFn = Box<dyn FnMut() -> Poll>;

struct PollerEntry {
    id: u64,
    name: &'static str,
    f: PollerFn,
}

struct Timer {
    deadline: Instant,
    seq: u64,
    period: Option<Duration>,
    f: TimerFn,
}

enum TimerFn {
    Once(Box<dyn FnOnce()>),
    Periodic(Box<dyn FnMut() -> bool>),
}

impl PartialEq for Timer {
    fn eq(&self, o: &Self) -> bool {
        self.deadline == o.deadline && self.seq == o.seq
    }
}
impl Eq for Timer {}
impl PartialOrd for Timer {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Timer {
    // Reversed: BinaryHeap is a max-heap, we want the earliest deadline.
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        o.deadline.cmp(&self.deadline).then(o.seq.cmp(&self.seq))
    }
}

struct Local {
    index: usize,
    shared: Arc<Shared>,
    next_id: Cell<u64>,
    new_pollers: RefCell<Vec<PollerEntry>>,
    removed: RefCell<Vec<u64>>,
    timers: RefCell<BinaryHeap<Timer>>,
    /// Messages that found a full ring; retried every loop.
    overflow: RefCell<VecDeque<(usize, Message)>>,
    inflight: Cell<u64>,
}

thread_local! {
    static LOCAL: RefCell<Option<Rc<Local>>> = const { RefCell::new(None) };
}

use std::rc::Rc;

fn with_local<R>(f: impl FnOnce(&Local) -> R) -> R {
    let local = LOCAL.with(|l| l.borrow().clone());
    let local = local.expect("this function must be called on a reactor thread");
    f(&local)
}

/// Whether the calling thread is a reactor.
pub fn on_reactor() -> bool {
    LOCAL.with(|l| l.borrow().is_some())
}

/// The index of the calling reactor (its position in the core list).
///
/// # Panics
/// If not called on a reactor thread (a programming error).
pub fn current() -> usize {
    with_local(|l| l.index)
}

/// The CPU the calling reactor is pinned to.
pub fn core() -> usize {
    with_local(|l| l.shared.cores[l.index])
}

/// A handle to the reactor set the calling reactor belongs to.
pub fn handle() -> ReactorHandle {
    with_local(|l| ReactorHandle {
        shared: Arc::clone(&l.shared),
    })
}

/// Whether shutdown has begun: front ends must stop taking new I/O and only
/// complete what they already have.
pub fn draining() -> bool {
    with_local(|l| l.shared.state.load(Ordering::Acquire) != RUNNING)
}

/// A front end took `n` new I/Os (shutdown waits for them).
pub fn inflight_add(n: u64) {
    with_local(|l| l.inflight.set(l.inflight.get() + n))
}

/// A front end finished `n` I/Os.
pub fn inflight_sub(n: u64) {
    with_local(|l| l.inflight.set(l.inflight.get().saturating_sub(n)))
}

/// Identifies a registered poller.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct PollerId(u64);

/// Registers a poller on the calling reactor. It runs from the next loop on.
pub fn register_poller(name: &'static str, f: impl FnMut() -> Poll + 'static) -> PollerId {
    with_local(|l| {
        let id = l.next_id.get();
        l.next_id.set(id + 1);
        l.new_pollers.borrow_mut().push(PollerEntry {
            id,
            name,
            f: Box::new(f),
        });
        PollerId(id)
    })
}

/// Removes a poller (it is dropped after the current loop).
pub fn unregister_poller(id: PollerId) {
    with_local(|l| l.removed.borrow_mut().push(id.0))
}

/// Sends `f` to reactor `to` from the calling reactor. Never blocks: a full
/// ring parks the message locally and it is retried every loop.
pub fn send(to: usize, f: impl FnOnce() + Send + 'static) {
    with_local(|l| {
        let msg: Message = Box::new(f);
        l.shared.stats[l.index]
            .msgs_sent
            .fetch_add(1, Ordering::Relaxed);
        let mut overflow = l.overflow.borrow_mut();
        if !overflow.is_empty() {
            overflow.push_back((to, msg));
            return;
        }
        let Some(ring) = l.shared.rings.get(to) else {
            tracing::error!(to, "message to a reactor that does not exist dropped");
            return;
        };
        if let Err(msg) = ring[l.index].push(msg) {
            overflow.push_back((to, msg));
        }
    })
}

/// Runs `f` once, `after` from now, on the calling reactor.
pub fn timer_after(after: Duration, f: impl FnOnce() + 'static) {
    with_local(|l| {
        let seq = l.next_id.get();
        l.next_id.set(seq + 1);
        l.timers.borrow_mut().push(Timer {
            deadline: Instant::now() + after,
            seq,
            period: None,
            f: TimerFn::Once(Box::new(f)),
        });
    })
}

/// Runs `f` every `period` on the calling reactor while it returns `true`.
pub fn periodic(period: Duration, f: impl FnMut() -> bool + 'static) {
    with_local(|l| {
        let seq = l.next_id.get();
        l.next_id.set(seq + 1);
        l.timers.borrow_mut().push(Timer {
            deadline: Instant::now() + period,
            seq,
            period: Some(period),
            f: TimerFn::Periodic(Box::new(f)),
        });
    })
}

fn run_reactor(index: usize, shared: Arc<Shared>) {
    let local = Rc::new(Local {
        index,
        shared: Arc::clone(&shared),
        next_id: Cell::new(1),
        new_pollers: RefCell::new(Vec::new()),
        removed: RefCell::new(Vec::new()),
        timers: RefCell::new(BinaryHeap::new()),
        overflow: RefCell::new(VecDeque::new()),
        inflight: Cell::new(0),
    });
    LOCAL.with(|l| *l.borrow_mut() = Some(Rc::clone(&local)));
    shared.running.fetch_add(1, Ordering::AcqRel);
    let stats = &shared.stats[index];
    let n = shared.cores.len();
    let mut pollers: Vec<PollerEntry> = Vec::new();
    // Start of the current run of idle loops (for napping).
    let mut idle_since: Option<Instant> = None;
    let nap_after = Duration::from_micros(shared.idle_sleep_us.max(50));
    let mut loops: u64 = 0;
    let mut busy_polls: u64 = 0;
    let mut idle_polls: u64 = 0;
    let mut received: u64 = 0;
    loop {
        let state = shared.state.load(Ordering::Acquire);
        if state == STOPPED {
            break;
        }
        let mut busy = false;
        // Messages: from every reactor and from the control plane.
        for sender in 0..=n {
            let ring = &shared.rings[index][sender];
            // Bound the batch so pollers are not starved.
            for _ in 0..64 {
                match ring.pop() {
                    Some(m) => {
                        m();
                        received += 1;
                        busy = true;
                    }
                    None => break,
                }
            }
        }
        // Pollers.
        for p in pollers.iter_mut() {
            match (p.f)() {
                Poll::Busy => {
                    busy_polls += 1;
                    busy = true;
                }
                Poll::Idle => idle_polls += 1,
            }
        }
        // Timers: every idle loop, and every 64th loop otherwise.
        loops += 1;
        if !busy || loops.is_multiple_of(64) {
            let now = Instant::now();
            loop {
                let due = {
                    let mut t = local.timers.borrow_mut();
                    match t.peek() {
                        Some(top) if top.deadline <= now => t.pop(),
                        _ => None,
                    }
                };
                let Some(timer) = due else { break };
                busy = true;
                match timer.f {
                    TimerFn::Once(f) => f(),
                    TimerFn::Periodic(mut f) => {
                        if f() {
                            let period = timer.period.unwrap_or(Duration::from_millis(1));
                            local.timers.borrow_mut().push(Timer {
                                deadline: now + period,
                                seq: timer.seq,
                                period: Some(period),
                                f: TimerFn::Periodic(f),
                            });
                        }
                    }
                }
            }
        }
        // Parked messages.
        {
            let mut overflow = local.overflow.borrow_mut();
            while let Some((to, msg)) = overflow.pop_front() {
                if let Err(msg) = shared.rings[to][index].push(msg) {
                    overflow.push_front((to, msg));
                    break;
                }
            }
        }
        // Poller list changes.
        {
            let mut added = local.new_pollers.borrow_mut();
            if !added.is_empty() {
                for p in added.iter() {
                    tracing::debug!(reactor = index, poller = p.name, "poller registered");
                }
                pollers.append(&mut added);
            }
            let mut removed = local.removed.borrow_mut();
            if !removed.is_empty() {
                pollers.retain(|p| !removed.contains(&p.id));
                removed.clear();
            }
        }
        if loops.is_multiple_of(256) || !busy {
            stats.busy_polls.store(busy_polls, Ordering::Relaxed);
            stats.idle_polls.store(idle_polls, Ordering::Relaxed);
            stats.msgs_received.store(received, Ordering::Relaxed);
            stats.pollers.store(pollers.len() as u64, Ordering::Relaxed);
            stats
                .timers
                .store(local.timers.borrow().len() as u64, Ordering::Relaxed);
            stats
                .inflight
                .store(local.inflight.get(), Ordering::Relaxed);
        }
        if state == DRAINING {
            let quiet = !busy
                && local.inflight.get() == 0
                && local.overflow.borrow().is_empty()
                && shared.rings[index].iter().all(|r| r.is_empty());
            stats.quiescent.store(quiet, Ordering::Release);
        }
        if busy {
            idle_since = None;
        } else if shared.idle_sleep_us > 0 {
            // Nap once idle for a while, by time rather than by loop count:
            // with slow pollers (a syscall per loop) a count is never reached.
            let now = Instant::now();
            let since = *idle_since.get_or_insert(now);
            if now.duration_since(since) >= nap_after {
                std::thread::sleep(Duration::from_micros(shared.idle_sleep_us));
            }
        }
    }
    // Drop pollers (and everything they own) on this thread, then timers.
    drop(pollers);
    local.timers.borrow_mut().clear();
    local.new_pollers.borrow_mut().clear();
    LOCAL.with(|l| *l.borrow_mut() = None);
    shared.running.fetch_sub(1, Ordering::AcqRel);
}

/// Blocks SIGINT and SIGTERM in the calling thread and every thread it
/// spawns afterwards; call first thing in `main`, then wait with
/// [`wait_for_termination`] so that the signals are handled synchronously
/// (no async-signal-safety concerns).
pub fn block_termination_signals() {
    // SAFETY: sigset_t is plain data initialised by sigemptyset; the calls
    // only read/write the local set and the thread's signal mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Waits for SIGINT or SIGTERM (blocked earlier with
/// [`block_termination_signals`]) and returns its number.
pub fn wait_for_termination() -> i32 {
    // SAFETY: as above; sigwait writes the signal number into a local.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        let mut sig: libc::c_int = 0;
        loop {
            if libc::sigwait(&set, &mut sig) == 0 {
                return sig;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    fn opts() -> ReactorOptions {
        ReactorOptions {
            pin: false,
            idle_sleep_us: 100,
            ..Default::default()
        }
    }

    #[test]
    fn rejects_bad_core_lists() {
        assert!(matches!(
            ReactorSet::start(&[], opts()),
            Err(ReactorError::NoCores)
        ));
        assert!(matches!(
            ReactorSet::start(&[0, 0], opts()),
            Err(ReactorError::DuplicateCore(0))
        ));
        let o = ReactorOptions {
            pin: true,
            ..opts()
        };
        match ReactorSet::start(&[100_000], o) {
            Err(ReactorError::CoreUnavailable { core, .. }) => assert_eq!(core, 100_000),
            other => panic!("expected CoreUnavailable, got {:?}", other.err()),
        }
    }

    #[test]
    fn pins_to_the_requested_core() {
        let cpu0 = allowed_cpus()[0];
        let set = ReactorSet::start(
            &[cpu0],
            ReactorOptions {
                pin: true,
                ..opts()
            },
        )
        .unwrap();
        let (cur, on) = set
            .handle()
            .call(0, || (allowed_cpus(), on_reactor()))
            .unwrap();
        assert_eq!(cur, vec![cpu0]);
        assert!(on);
        assert!(set.shutdown());
    }

    #[test]
    fn messages_pollers_and_timers() {
        let set = ReactorSet::start(&[0, 1], opts()).unwrap();
        let h = set.handle();
        // Cross-core ping-pong through the SPSC rings.
        let hits = Arc::new(AtomicU32::new(0));
        let h2 = Arc::clone(&hits);
        h.send(0, move || {
            for _ in 0..1000 {
                let h3 = Arc::clone(&h2);
                send(1, move || {
                    assert_eq!(current(), 1);
                    let h4 = Arc::clone(&h3);
                    send(0, move || {
                        h4.fetch_add(1, Ordering::Relaxed);
                    });
                });
            }
        })
        .unwrap();
        // A poller that counts to 10 and removes itself.
        let n = Arc::new(AtomicU32::new(0));
        let n2 = Arc::clone(&n);
        h.send(1, move || {
            let id = Rc::new(Cell::new(None));
            let id2 = Rc::clone(&id);
            let pid = register_poller("count", move || {
                if n2.fetch_add(1, Ordering::Relaxed) == 9 {
                    unregister_poller(id2.get().unwrap());
                }
                Poll::Busy
            });
            id.set(Some(pid));
        })
        .unwrap();
        // Timers fire in deadline order.
        let order = Arc::new(Mutex::new(Vec::new()));
        let o = Arc::clone(&order);
        h.send(0, move || {
            let a = Arc::clone(&o);
            timer_after(Duration::from_millis(20), move || a.lock().unwrap().push(2));
            let b = Arc::clone(&o);
            timer_after(Duration::from_millis(5), move || b.lock().unwrap().push(1));
            let c = Arc::clone(&o);
            let mut left = 3;
            periodic(Duration::from_millis(2), move || {
                c.lock().unwrap().push(0);
                left -= 1;
                left > 0
            });
        })
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while (hits.load(Ordering::Relaxed) < 1000 || order.lock().unwrap().len() < 5)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(hits.load(Ordering::Relaxed), 1000);
        assert_eq!(n.load(Ordering::Relaxed), 10);
        let order = order.lock().unwrap().clone();
        assert_eq!(
            order.iter().filter(|&&x| x == 0).count(),
            3,
            "periodic timer ran 3 times"
        );
        let one_shots: Vec<_> = order.iter().filter(|&&x| x != 0).collect();
        assert_eq!(
            one_shots,
            vec![&1, &2],
            "one-shot timers fire in deadline order"
        );
        let stats = h.stats();
        assert_eq!(stats.len(), 2);
        assert!(stats[0].msgs_sent >= 1000 && stats[1].msgs_received >= 1000);
        assert!(stats[1].busy_polls >= 10);
        assert!(set.shutdown());
    }

    #[test]
    fn shutdown_waits_for_inflight_io() {
        let set = ReactorSet::start(&[0], opts()).unwrap();
        let h = set.handle();
        let done = Arc::new(AtomicBool::new(false));
        let d = Arc::clone(&done);
        h.call(0, move || {
            inflight_add(1);
            // An "I/O" that completes 50 ms later, during the drain.
            timer_after(Duration::from_millis(50), move || {
                d.store(true, Ordering::Release);
                inflight_sub(1);
            });
        })
        .unwrap();
        let t = Instant::now();
        assert!(set.shutdown());
        assert!(done.load(Ordering::Acquire));
        assert!(t.elapsed() >= Duration::from_millis(40));
        assert!(h.send(0, || {}).is_err());
    }

    #[test]
    fn drain_time_out_is_bounded() {
        let set = ReactorSet::start(
            &[0],
            ReactorOptions {
                drain_timeout: Duration::from_millis(100),
                ..opts()
            },
        )
        .unwrap();
        set.handle().call(0, || inflight_add(1)).unwrap();
        assert!(!set.shutdown());
    }
}
