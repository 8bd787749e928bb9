//! One virtqueue as a reactor poller.
//!
//! The worker owns everything it touches per request: its own
//! `virtio_queue::Queue` (built from the vring addresses the frontend
//! gave), a `bdev::Channel` opened on its reactor, a slab of request slots
//! indexed by descriptor head, fixed scratch space for parsing, and an
//! `Arc` snapshot of guest memory. The control thread talks to it only
//! through [`QueueCtl`]: it posts a change (new memory table, new call fd,
//! stop) under a mutex and bumps a generation counter; the worker reads
//! that counter with one relaxed atomic load per poll and takes the mutex
//! only when it moved. So the per-request path has no lock, no allocation
//! and no syscall; the one syscall is the interrupt (an eventfd write), at
//! most once per poll and only when the driver asked for one (EVENT_IDX).
//!
//! Guest kicks are never read: at start the worker disables notifications
//! (`VRING_USED_F_NO_NOTIFY`, or simply never advancing `avail_event` with
//! EVENT_IDX), and it polls the avail ring instead.

use std::cell::Cell;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bdev::{Bdev, Channel, IoRequest, IoStatus, IoType};
use reactor::{Poll, PollerId, ReactorHandle};
use virtio_queue::{Queue, QueueT};

use crate::chain::ChainWalker;
use crate::inflight::{InflightQueue, InflightRegion};
use crate::mem::GuestMem;
use crate::request::{parse, Plan, Scratch};
use crate::virtio::{Limits, S_IOERR, S_OK, S_UNSUPP};

/// Requests popped per poll at most (completions are reaped in between).
const BATCH: usize = 64;

/// Changes posted by the control thread.
#[derive(Default)]
struct Pending {
    mem: Option<Arc<GuestMem>>,
    call: Option<Option<File>>,
    stop: bool,
}

/// Where a stopped queue left its rings.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct QueueFinal {
    pub next_avail: u16,
    pub next_used: u16,
}

/// The control thread's side of a running queue.
pub(crate) struct QueueCtl {
    pub index: u16,
    pub reactor: usize,
    gen: AtomicU64,
    applied: AtomicU64,
    pending: Mutex<Pending>,
    done: Mutex<Option<QueueFinal>>,
    cv: Condvar,
    /// Requests completed.
    pub requests: AtomicU64,
    /// Requests completed with a status other than OK.
    pub errors: AtomicU64,
    /// Chains dropped without a used entry (head out of range or reused
    /// while in flight: a broken driver).
    pub dropped: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl QueueCtl {
    pub fn new(index: u16, reactor: usize) -> Arc<QueueCtl> {
        Arc::new(QueueCtl {
            index,
            reactor,
            gen: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            pending: Mutex::new(Pending::default()),
            done: Mutex::new(None),
            cv: Condvar::new(),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        })
    }

    fn post(&self, f: impl FnOnce(&mut Pending)) -> u64 {
        let mut p = lock(&self.pending);
        f(&mut p);
        self.gen.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Waits until the worker has taken change `gen` (false on time-out:
    /// the reactor is gone or stuck).
    fn wait_applied(&self, gen: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.applied.load(Ordering::Acquire) < gen {
            if self.done().is_some() || Instant::now() >= deadline {
                return self.applied.load(Ordering::Acquire) >= gen;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        true
    }

    /// Hands the worker a new guest memory snapshot and waits for it.
    pub fn set_mem(&self, mem: Arc<GuestMem>) -> bool {
        let g = self.post(|p| p.mem = Some(mem));
        self.wait_applied(g, Duration::from_secs(5))
    }

    /// Hands the worker a new call eventfd and waits for it.
    pub fn set_call(&self, call: Option<File>) -> bool {
        let g = self.post(|p| p.call = Some(call));
        self.wait_applied(g, Duration::from_secs(5))
    }

    /// Stops the worker: it takes no new request, completes those in
    /// flight, then reports where the rings are. `None` if it did not
    /// finish within `timeout`.
    pub fn stop(&self, timeout: Duration) -> Option<QueueFinal> {
        self.post(|p| p.stop = true);
        let deadline = Instant::now() + timeout;
        let mut g = lock(&self.done);
        loop {
            if let Some(f) = *g {
                return Some(f);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            g = self
                .cv
                .wait_timeout(g, (deadline - now).min(Duration::from_millis(50)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Whether the worker has stopped.
    pub fn done(&self) -> Option<QueueFinal> {
        *lock(&self.done)
    }

    fn finish(&self, f: QueueFinal) {
        *lock(&self.done) = Some(f);
        self.cv.notify_all();
    }
}

/// Everything needed to start a worker (moved to its reactor).
pub(crate) struct QueueSetup {
    pub queue: Queue,
    pub mem: Arc<GuestMem>,
    pub call: Option<File>,
    pub limits: Arc<Limits>,
    pub bdev: Arc<dyn Bdev>,
    pub ctl: Arc<QueueCtl>,
    pub inflight: Option<(Arc<InflightRegion>, InflightQueue)>,
    /// Heads the previous backend left in flight, oldest first.
    pub resubmit: Vec<u16>,
    /// Next in-flight counter value.
    pub counter: u64,
}

#[derive(Copy, Clone)]
struct Slot {
    busy: bool,
    /// Outstanding bdev requests (discard / write-zeroes may have several).
    parts: u16,
    status: u8,
    /// Data bytes written to the guest on success (reads, GET_ID).
    written: u32,
    status_ptr: *mut u8,
}

const FREE: Slot = Slot {
    busy: false,
    parts: 0,
    status: S_OK,
    written: 0,
    status_ptr: std::ptr::null_mut(),
};

/// Per-request state, apart from the bdev channel (so that the channel's
/// completion callback can borrow it).
struct Core {
    q: Queue,
    mem: Arc<GuestMem>,
    /// Older memory snapshots, kept mapped (and in the memory map) until
    /// nothing is in flight.
    retired: Vec<Arc<GuestMem>>,
    slots: Box<[Slot]>,
    inflight: u32,
    tracker: Option<InflightQueue>,
    _region: Option<Arc<InflightRegion>>,
    counter: u64,
    call: Option<File>,
    limits: Arc<Limits>,
    scratch: Scratch,
    /// Since the last flush.
    started: u64,
    completed: u64,
    errors: u64,
    dropped: u64,
}

fn virtio_status(st: IoStatus) -> u8 {
    match st {
        IoStatus::Success => S_OK,
        IoStatus::Unsupported => S_UNSUPP,
        _ => S_IOERR,
    }
}

impl Core {
    /// Finishes request `head`: status byte, used ring, in-flight record.
    fn complete(&mut self, head: u16, status: u8, written: u32) {
        let slot = &mut self.slots[head as usize];
        let len = if slot.status_ptr.is_null() {
            0
        } else {
            // SAFETY: `status_ptr` was translated from a device-writable
            // descriptor inside guest memory that stays mapped while the
            // request is in flight (`mem` or `retired` hold it).
            unsafe { slot.status_ptr.write_volatile(status) };
            if status == S_OK {
                written + 1
            } else {
                1
            }
        };
        *slot = FREE;
        if let Some(t) = &self.tracker {
            t.completing(head);
        }
        if self.q.add_used(self.mem.mmap(), head, len).is_err() {
            self.dropped += 1;
        }
        if let Some(t) = &self.tracker {
            t.completed(head, self.q.next_used());
        }
        self.inflight -= 1;
        self.completed += 1;
        if status != S_OK {
            self.errors += 1;
        }
    }

    /// A bdev completion for `tag` (a head).
    fn part_done(&mut self, tag: u64, st: IoStatus) {
        let Some(slot) = self.slots.get_mut(tag as usize) else {
            return;
        };
        if !slot.busy || slot.parts == 0 {
            return;
        }
        let s = virtio_status(st);
        if s != S_OK && slot.status == S_OK {
            slot.status = s;
        }
        slot.parts -= 1;
        if slot.parts == 0 {
            let (status, written) = (slot.status, slot.written);
            self.complete(tag as u16, status, written);
        }
    }

    /// Starts request `head` (popped now, or left in flight by a previous
    /// backend when `resubmit`).
    fn begin(&mut self, chan: &mut Channel, head: u16, resubmit: bool) {
        let h = head as usize;
        if h >= self.slots.len() || self.slots[h].busy {
            // A head out of range, or one already in flight: the driver is
            // broken; nothing safe can be reported for it.
            self.dropped += 1;
            return;
        }
        if !resubmit {
            if let Some(t) = &self.tracker {
                t.start(head, self.counter);
                self.counter += 1;
            }
        }
        self.started += 1;
        self.inflight += 1;
        let walker = ChainWalker::new(&self.mem, self.q.desc_table(), self.q.size(), head);
        let p = parse(&self.mem, walker, &self.limits, &mut self.scratch);
        self.slots[h] = Slot {
            busy: true,
            parts: 0,
            status: S_OK,
            written: 0,
            status_ptr: p.status,
        };
        let req = match p.plan {
            Plan::Done { status, written } => return self.complete(head, status, written),
            Plan::Data {
                io_type,
                offset_blocks,
                num_blocks,
                niov,
                bytes,
            } => {
                if io_type == IoType::Read {
                    self.slots[h].written = bytes;
                }
                IoRequest {
                    io_type,
                    offset_blocks,
                    num_blocks,
                    iovs: &self.scratch.iovs[..niov],
                    fua: false,
                }
            }
            Plan::Flush => IoRequest::flush(),
            Plan::Ranges { io_type, n } => {
                self.slots[h].parts = n as u16;
                let mut failed = 0;
                for i in 0..n {
                    let (off, num) = self.scratch.ranges[i];
                    let r = IoRequest {
                        io_type,
                        offset_blocks: off,
                        num_blocks: num,
                        iovs: &[],
                        fua: false,
                    };
                    // SAFETY: no memory is lent for unmap / write-zeroes.
                    if unsafe { chan.submit(&r, head as u64) }.is_err() {
                        failed += 1;
                    }
                }
                if failed > 0 {
                    let slot = &mut self.slots[h];
                    slot.status = S_IOERR;
                    slot.parts -= failed;
                    if slot.parts == 0 {
                        self.complete(head, S_IOERR, 0);
                    }
                }
                return;
            }
        };
        self.slots[h].parts = 1;
        // SAFETY: the iovecs point into guest memory (checked by
        // `translate` to lie inside mapped regions), which stays mapped
        // until this request completes: `mem` is only replaced by moving
        // the old snapshot to `retired`, which is cleared only when nothing
        // is in flight. The guest owns the buffers of a request it has
        // submitted until it sees the used entry, so nobody else in this
        // process accesses them.
        let r = unsafe { chan.submit(&req, head as u64) };
        if r.is_err() {
            self.complete(head, S_IOERR, 0);
        }
    }

    /// Publishes counters, raises the interrupt if the driver wants one.
    fn flush(&mut self, ctl: &QueueCtl, on_reactor: bool) {
        // Add before subtracting: the reactor's counter saturates at 0.
        if self.started > 0 {
            if on_reactor {
                reactor::inflight_add(self.started);
            }
            self.started = 0;
        }
        if self.completed > 0 {
            if self.q.needs_notification(self.mem.mmap()).unwrap_or(true) {
                if let Some(call) = &self.call {
                    let one: u64 = 1;
                    // SAFETY: writes 8 bytes from a live u64 to an eventfd
                    // we own.
                    unsafe { libc::write(call.as_raw_fd(), (&one as *const u64).cast(), 8) };
                }
            }
            ctl.requests.fetch_add(self.completed, Ordering::Relaxed);
            if on_reactor {
                reactor::inflight_sub(self.completed);
            }
            self.completed = 0;
        }
        if self.errors > 0 {
            ctl.errors.fetch_add(self.errors, Ordering::Relaxed);
            self.errors = 0;
        }
        if self.dropped > 0 {
            ctl.dropped.fetch_add(self.dropped, Ordering::Relaxed);
            self.dropped = 0;
        }
        if self.inflight == 0 && !self.retired.is_empty() {
            self.retired.clear();
        }
    }
}

/// A running virtqueue.
pub(crate) struct Worker {
    core: Core,
    chan: Channel,
    depth: usize,
    resubmit: Vec<u16>,
    ctl: Arc<QueueCtl>,
    seen_gen: u64,
    stopping: bool,
    finished: bool,
    handle: Option<ReactorHandle>,
    poller: Rc<Cell<Option<PollerId>>>,
}

impl Worker {
    /// Builds a worker on the calling thread (a reactor, or a test thread
    /// when `handle` is `None`).
    pub fn new(
        setup: QueueSetup,
        handle: Option<ReactorHandle>,
    ) -> Result<Worker, bdev::BdevError> {
        let chan = bdev::open_channel(&setup.bdev)?;
        let depth = setup.bdev.info().queue_depth.max(1);
        let mut q = setup.queue;
        // Polled: the driver need not kick.
        let _ = q.disable_notification(setup.mem.mmap());
        let size = q.size() as usize;
        let mut resubmit = setup.resubmit;
        resubmit.reverse(); // popped from the back: oldest first
        let (region, tracker) = match setup.inflight {
            Some((r, t)) => (Some(r), Some(t)),
            None => (None, None),
        };
        Ok(Worker {
            core: Core {
                q,
                mem: setup.mem,
                retired: Vec::new(),
                slots: vec![FREE; size].into_boxed_slice(),
                inflight: 0,
                tracker,
                _region: region,
                counter: setup.counter,
                call: setup.call,
                scratch: Scratch::new(&setup.limits),
                limits: setup.limits,
                started: 0,
                completed: 0,
                errors: 0,
                dropped: 0,
            },
            chan,
            depth,
            resubmit,
            ctl: setup.ctl,
            seen_gen: 0,
            stopping: false,
            finished: false,
            handle,
            poller: Rc::new(Cell::new(None)),
        })
    }

    /// Starts a worker as a poller on the calling reactor.
    pub fn start_on_reactor(setup: QueueSetup) -> Result<(), bdev::BdevError> {
        let w = Worker::new(setup, Some(reactor::handle()))?;
        let id = Rc::clone(&w.poller);
        let mut w = w;
        let pid = reactor::register_poller("vhost-blk-queue", move || w.poll());
        id.set(Some(pid));
        Ok(())
    }

    /// Requests in flight.
    #[cfg(test)]
    pub fn inflight(&self) -> u32 {
        self.core.inflight
    }

    fn apply(&mut self, gen: u64) {
        let mut p = lock(&self.ctl.pending);
        if let Some(m) = p.mem.take() {
            let old = std::mem::replace(&mut self.core.mem, m);
            self.core.retired.push(old);
        }
        if let Some(c) = p.call.take() {
            self.core.call = c;
        }
        if p.stop {
            self.stopping = true;
        }
        drop(p);
        self.seen_gen = gen;
        self.ctl.applied.store(gen, Ordering::Release);
    }

    fn reap(&mut self) -> usize {
        let Worker { chan, core, .. } = self;
        chan.poll(&mut |tag, st| core.part_done(tag, st))
    }

    fn fetch(&mut self) -> usize {
        let Worker {
            chan,
            core,
            depth,
            resubmit,
            ..
        } = self;
        let room = core
            .limits
            .max_discard_seg
            .max(core.limits.max_write_zeroes_seg) as usize;
        let mut n = 0;
        while n < BATCH && chan.inflight() + room <= *depth {
            let (head, again) = match resubmit.pop() {
                Some(h) => (h, true),
                None => match core.q.pop_descriptor_chain(core.mem.mmap()) {
                    Some(c) => (c.head_index(), false),
                    None => break,
                },
            };
            core.begin(chan, head, again);
            n += 1;
        }
        n
    }

    /// One poll: reap completions, take new requests, signal once.
    pub fn poll(&mut self) -> Poll {
        if self.finished {
            return Poll::Idle;
        }
        let gen = self.ctl.gen.load(Ordering::Acquire);
        if gen != self.seen_gen {
            self.apply(gen);
        }
        let mut work = self.reap();
        let draining = self.handle.as_ref().is_some_and(|h| h.is_draining());
        if !self.stopping && !draining {
            let n = self.fetch();
            if n > 0 {
                work += n;
                work += self.reap();
            }
        }
        let on_reactor = self.handle.is_some();
        self.core.flush(&self.ctl, on_reactor);
        if self.stopping && self.core.inflight == 0 {
            self.finished = true;
            self.ctl.finish(QueueFinal {
                next_avail: self.core.q.next_avail(),
                next_used: self.core.q.next_used(),
            });
            if let Some(id) = self.poller.get() {
                reactor::unregister_poller(id);
            }
            return Poll::Busy;
        }
        Poll::from_count(work)
    }
}
