//! The raid1 data path: one channel per reactor, owning one child channel
//! per member (through a [`Port`]). Per-I/O state lives in a fixed slab;
//! the iovecs of each slot are copied into a per-slot vector allocated when
//! the channel opens. Nothing here allocates or locks per I/O.
//!
//! A write: take its regions (shared) → wait until their bitmap bits are
//! on disk (writing the bitmap block if needed) → fan out to every write
//! target → when all answered: release the regions, fail members that
//! failed, and acknowledge once any failure is recorded in the superblocks.
//! A read: pick an in-sync member (sequential streams stay, otherwise least
//! outstanding, write-mostly members last) → on error try the next → on
//! success after errors, take the regions exclusively, re-read from the
//! good member and write that back over the bad members.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::*;
use std::sync::Arc;

use super::port::{Done, Port, SubmitErr, KIND_USER};
use super::shared::{Shared, VIEW_BUSY};
use super::MAX_MEMBERS;
use crate::{
    validate, BdevChannel, BdevInfo, CompletionQueue, IoRequest, IoStatus, IoType, IoVec,
    QueueFull, Slab,
};

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Phase {
    Acquire,
    WaitBitmap,
    Issue,
    InFlight,
    Finish,
    WaitSb,
    Read,
    ReadInFlight,
    RepairAcquire,
    RepairRead,
    RepairReadInFlight,
    RepairWrite,
    RepairWriteInFlight,
    RepairDone,
}

#[derive(Copy, Clone, Debug)]
struct Op {
    tag: u64,
    io_type: IoType,
    offset: u64,
    num: u64,
    fua: bool,
    phase: Phase,
    waiting: bool,
    /// Regions `[r_first, r_last]`; `[r_first, r_next)` are held.
    r_first: u64,
    r_last: u64,
    r_next: u64,
    need_bm: bool,
    /// `bm_failures` when the op started waiting for the bitmap.
    bm_mark: u64,
    to_issue: u8,
    pending: u8,
    ok: u8,
    insync: u8,
    bad: u8,
    tried: u8,
    src: u8,
    err: IoStatus,
    sb_need: u64,
    /// Member writes sent again after `Aborted`.
    retries: u8,
}

/// Times a write aborted on a member is sent to it again before the
/// member is failed.
const MAX_RETRIES: u8 = 3;

enum Next {
    Wait,
    InFlight,
    Done(IoStatus),
}

/// The array's member states as this channel uses them, recomputed only
/// when `view_word` (moved before and after every state change) or the port's
/// member table moved: the data path reads one atomic per request instead
/// of every role's state.
#[derive(Copy, Clone, Debug, Default)]
struct View {
    /// `view_word` (`u64::MAX`: not trusted) and the port's `config_gen`
    /// this view was built at.
    gen: u64,
    config: u64,
    /// In sync (the array can serve I/O while non-zero).
    insync: u8,
    /// In sync with a device attached here: read sources.
    read: u8,
    /// Read sources that are not write-mostly (all of them if none is).
    fast: u8,
    /// Write targets with a device attached here.
    write: u8,
    resync: bool,
    primary: usize,
}

pub(crate) struct Raid1Channel {
    port: Port,
    shared: Arc<Shared>,
    info: BdevInfo,
    ops: Slab<Op>,
    iovs: Vec<Vec<IoVec>>,
    waitq: VecDeque<u32>,
    cq: CompletionQueue,
    dones: Vec<Done>,
    view: View,
    last_end: [u64; MAX_MEMBERS],
    /// Member the last read went to (its stream is checked first).
    last: usize,
}

impl Raid1Channel {
    pub fn new(shared: Arc<Shared>, info: BdevInfo) -> Raid1Channel {
        let depth = info.queue_depth;
        Raid1Channel {
            port: Port::new(Arc::clone(&shared)),
            shared,
            ops: Slab::with_capacity(depth),
            iovs: (0..depth)
                .map(|_| Vec::with_capacity(info.max_segments))
                .collect(),
            waitq: VecDeque::with_capacity(depth),
            cq: CompletionQueue::with_capacity(depth),
            dones: Vec::with_capacity(depth * (MAX_MEMBERS + 1)),
            view: View {
                gen: u64::MAX,
                ..View::default()
            },
            last_end: [u64::MAX; MAX_MEMBERS],
            last: 0,
            info,
        }
    }

    /// Brings the view up to date: one load when nothing changed. States
    /// are loaded before the port refreshes (see `Port::live_targets`).
    fn update_view(&mut self) {
        let sh = &*self.shared;
        let g = sh.view_word.load(Acquire);
        if g == self.view.gen && self.port.seen_config() == self.view.config {
            return;
        }
        let insync = sh.read_sources();
        let write = sh.write_targets();
        let resync = sh.resync_active.load(Acquire);
        self.port.refresh();
        let attached = self.port.attached_mask();
        let read = insync & attached;
        let mut fast = read;
        for m in 0..MAX_MEMBERS {
            if fast & (1 << m) != 0 && sh.roles[m].write_mostly.load(Relaxed) {
                fast &= !(1 << m);
            }
        }
        if fast == 0 {
            fast = read;
        }
        // Trusted only if no state change was under way or happened while
        // the states were read (a seqlock's check).
        std::sync::atomic::fence(Acquire);
        let g2 = sh.view_word.load(Relaxed);
        let gen = if g2 == g && g & VIEW_BUSY == 0 {
            g
        } else {
            u64::MAX
        };
        self.view = View {
            gen,
            config: self.port.seen_config(),
            insync,
            read,
            fast,
            write: write & attached,
            resync,
            primary: sh.primary.load(Acquire),
        };
    }

    fn step(&mut self, s: u32) {
        let Raid1Channel {
            port,
            shared,
            iovs,
            view,
            last_end,
            last,
            ops,
            waitq,
            cq,
            ..
        } = self;
        // The op is stepped in place: copying it out and back costs a
        // store-forwarding stall behind the child's data copy.
        let Some(op) = ops.get_mut(s) else { return };
        let cx = Cx {
            port,
            sh: shared,
            iovs: &iovs[s as usize],
            view,
            last_end,
            last,
        };
        match step_op(cx, s, op) {
            Next::Done(st) => {
                let tag = op.tag;
                ops.remove(s);
                cq.push(tag, st);
            }
            Next::Wait => {
                if !op.waiting {
                    op.waiting = true;
                    waitq.push_back(s);
                }
            }
            Next::InFlight => {}
        }
    }

    fn on_done(&mut self, d: Done) {
        if d.kind != KIND_USER {
            return;
        }
        let s = d.idx;
        let Raid1Channel {
            port,
            shared,
            ops,
            cq,
            ..
        } = self;
        let Some(op) = ops.get_mut(s) else { return };
        let bit = 1u8 << d.member;
        let ok = d.status.is_ok() && d.current;
        op.pending = op.pending.saturating_sub(1);
        let mut step = false;
        match op.phase {
            Phase::Issue | Phase::InFlight => {
                if ok {
                    op.ok |= bit;
                } else if d.current
                    && d.status == IoStatus::Aborted
                    && op.io_type != IoType::Reset
                    && op.retries < MAX_RETRIES
                {
                    // Aborted before it reached the device (a reset, a
                    // path that bounced): send it there again. No status
                    // but success leaves a member without the write.
                    op.retries += 1;
                    op.to_issue |= bit;
                    op.phase = Phase::Issue;
                } else {
                    if d.current && op.io_type != IoType::Reset {
                        shared.fail_io(d.member, "write failed");
                    }
                    op.bad |= bit;
                    op.err = if d.current {
                        d.status
                    } else {
                        IoStatus::PathError
                    };
                }
                if op.pending == 0 && op.to_issue == 0 {
                    op.phase = Phase::Finish;
                    step = true;
                } else if op.phase == Phase::Issue && !op.waiting {
                    step = true;
                }
            }
            Phase::ReadInFlight => {
                if ok {
                    if op.bad != 0 {
                        op.phase = Phase::RepairAcquire;
                        op.r_next = op.r_first;
                    } else {
                        let tag = op.tag;
                        ops.remove(s);
                        cq.push(tag, IoStatus::Success);
                        return;
                    }
                } else {
                    if d.current {
                        op.bad |= bit;
                    }
                    op.err = if d.current {
                        d.status
                    } else {
                        IoStatus::PathError
                    };
                    op.phase = Phase::Read;
                }
                step = true;
            }
            Phase::RepairReadInFlight => {
                if ok {
                    op.to_issue = op.bad & port.live_targets();
                    op.phase = Phase::RepairWrite;
                } else {
                    release_excl(shared, op);
                    let tag = op.tag;
                    ops.remove(s);
                    cq.push(tag, d.status);
                    return;
                }
                step = true;
            }
            Phase::RepairWrite | Phase::RepairWriteInFlight => {
                if !ok && d.current {
                    shared.fail_io(d.member, "read repair write failed");
                }
                if op.pending == 0 && op.to_issue == 0 {
                    op.phase = Phase::RepairDone;
                    step = true;
                }
            }
            _ => {}
        }
        if step && !op.waiting {
            self.step(s);
        }
    }
}

/// What [`step_op`] needs besides the op (fields disjoint from the slab).
struct Cx<'a> {
    port: &'a mut Port,
    sh: &'a Shared,
    iovs: &'a [IoVec],
    view: &'a View,
    last_end: &'a mut [u64; MAX_MEMBERS],
    last: &'a mut usize,
}

fn step_op(cx: Cx<'_>, s: u32, op: &mut Op) -> Next {
    let Cx {
        port,
        sh,
        iovs,
        view,
        last_end,
        last,
    } = cx;
    loop {
        match op.phase {
            Phase::Acquire => {
                if view.insync == 0 {
                    return Next::Done(IoStatus::PathError);
                }
                while op.r_next <= op.r_last {
                    match sh.acquire_shared(op.r_next) {
                        Ok(on_disk) => {
                            op.need_bm |= !on_disk;
                            op.r_next += 1;
                        }
                        Err(()) => return Next::Wait,
                    }
                }
                op.phase = Phase::WaitBitmap;
                if op.need_bm {
                    op.bm_mark = sh.bm_failures.load(Acquire);
                }
            }
            Phase::WaitBitmap => {
                if op.need_bm {
                    if sh.read_sources() == 0 {
                        release_shared(sh, op);
                        return Next::Done(IoStatus::PathError);
                    }
                    let mut all = true;
                    let mut last_b = u64::MAX;
                    for r in op.r_first..=op.r_last {
                        if !sh.on_disk(r) {
                            all = false;
                            let b = sh.bm_block_of(r);
                            if b != last_b {
                                port.persist_bitmap(b, false);
                                last_b = b;
                            }
                        }
                    }
                    if !all {
                        // Two bitmap writes that reached no member since
                        // we set our bits: the second had them.
                        if sh.bm_failures.load(Acquire) >= op.bm_mark + 2 {
                            release_shared(sh, op);
                            return Next::Done(IoStatus::MediumError);
                        }
                        return Next::Wait;
                    }
                    op.need_bm = false;
                }
                // The targets are read after the regions are held (a rebuild
                // copies a region only while holding it exclusively, so a
                // member it brings in is either seen here or copied after
                // this write): the view only if no state changed since.
                if sh.view_word.load(Acquire) == view.gen {
                    op.to_issue = view.write;
                    op.insync = view.insync & view.write;
                } else {
                    op.to_issue = port.live_targets();
                    op.insync = sh.read_sources() & op.to_issue;
                }
                if op.insync == 0 {
                    release_shared(sh, op);
                    return Next::Done(IoStatus::PathError);
                }
                op.phase = Phase::Issue;
            }
            Phase::Issue => {
                let off = if op.io_type.has_range() {
                    op.offset + sh.layout.data_offset
                } else {
                    0
                };
                let req = IoRequest {
                    io_type: op.io_type,
                    offset_blocks: off,
                    num_blocks: op.num,
                    iovs,
                    fua: op.fua,
                };
                // Masks in locals: the loop does not reload them from
                // the op between child submits.
                let mut left = op.to_issue;
                let mut todo = left;
                let mut pending = op.pending;
                while todo != 0 {
                    let m = todo.trailing_zeros() as usize;
                    todo &= todo - 1;
                    // SAFETY: the iovecs are the submitter's, lent to us
                    // until we report this op, which happens only after
                    // every child completed.
                    match unsafe { port.submit(m, &req, KIND_USER, s) } {
                        Ok(()) => {
                            pending += 1;
                            left &= !(1 << m);
                        }
                        Err(SubmitErr::Gone) => left &= !(1 << m),
                        Err(SubmitErr::Full) => {}
                    }
                }
                op.to_issue = left;
                op.pending = pending;
                if left != 0 {
                    return Next::Wait;
                }
                if pending > 0 {
                    op.phase = Phase::InFlight;
                    return Next::InFlight;
                }
                op.phase = Phase::Finish;
            }
            Phase::InFlight
            | Phase::ReadInFlight
            | Phase::RepairReadInFlight
            | Phase::RepairWriteInFlight => return Next::InFlight,
            Phase::Finish => {
                release_shared(sh, op);
                if op.io_type == IoType::Reset {
                    return Next::Done(IoStatus::Success);
                }
                // Acknowledged only if a member that is in sync now has
                // it: a member that failed the write was failed (or, the
                // last in sync, makes the write fail).
                if op.ok & op.insync & sh.read_sources() == 0 {
                    return Next::Done(if op.err.is_ok() {
                        IoStatus::PathError
                    } else {
                        op.err
                    });
                }
                if op.io_type == IoType::Write && op.bad == 0 {
                    sh.clear_bad(op.offset, op.num);
                }
                op.sb_need = sh.fail_gen.load(Acquire);
                op.phase = Phase::WaitSb;
            }
            Phase::WaitSb => {
                if sh.sb_done.load(Acquire) >= op.sb_need {
                    return Next::Done(IoStatus::Success);
                }
                if sh.sb_failed.load(Acquire) >= op.sb_need {
                    // The member failure could not be recorded: the write
                    // is not acknowledged.
                    return Next::Done(IoStatus::MediumError);
                }
                port.persist_sb();
                return Next::Wait;
            }
            Phase::Read => {
                if op.tried == 0 && sh.overlaps_bad(op.offset, op.num) {
                    return Next::Done(IoStatus::MediumError);
                }
                let sources = view.read & !op.tried;
                if sources == 0 {
                    return Next::Done(if op.err.is_ok() {
                        IoStatus::PathError
                    } else {
                        op.err
                    });
                }
                let m = pick(sh, view, &port.outstanding, last_end, *last, op, sources);
                let req = IoRequest::read(op.offset + sh.layout.data_offset, op.num, iovs);
                // SAFETY: as for writes: lent until we report the op.
                match unsafe { port.submit(m, &req, KIND_USER, s) } {
                    Ok(()) => {
                        op.src = m as u8;
                        op.tried |= 1 << m;
                        op.pending = 1;
                        last_end[m] = op.offset + op.num;
                        *last = m;
                        op.phase = Phase::ReadInFlight;
                        return Next::InFlight;
                    }
                    Err(SubmitErr::Gone) => op.tried |= 1 << m,
                    Err(SubmitErr::Full) => return Next::Wait,
                }
            }
            Phase::RepairAcquire => {
                while op.r_next <= op.r_last {
                    if !sh.acquire_excl(op.r_next) {
                        return Next::Wait;
                    }
                    op.r_next += 1;
                }
                op.phase = Phase::RepairRead;
            }
            Phase::RepairRead => {
                let m = op.src as usize;
                let req = IoRequest::read(op.offset + sh.layout.data_offset, op.num, iovs);
                // SAFETY: as above.
                match unsafe { port.submit(m, &req, KIND_USER, s) } {
                    Ok(()) => {
                        op.pending = 1;
                        op.phase = Phase::RepairReadInFlight;
                        return Next::InFlight;
                    }
                    Err(SubmitErr::Full) => return Next::Wait,
                    Err(SubmitErr::Gone) => {
                        release_excl(sh, op);
                        return Next::Done(IoStatus::PathError);
                    }
                }
            }
            Phase::RepairWrite => {
                let off = op.offset + sh.layout.data_offset;
                let req = IoRequest::write(off, op.num, iovs);
                let mut left = op.to_issue;
                let mut todo = left;
                while todo != 0 {
                    let m = todo.trailing_zeros() as usize;
                    todo &= todo - 1;
                    // SAFETY: as above (we only read the user's buffer).
                    match unsafe { port.submit(m, &req, KIND_USER, s) } {
                        Ok(()) => {
                            op.pending += 1;
                            left &= !(1 << m);
                        }
                        Err(SubmitErr::Gone) => left &= !(1 << m),
                        Err(SubmitErr::Full) => {}
                    }
                }
                op.to_issue = left;
                if left != 0 {
                    return Next::Wait;
                }
                if op.pending > 0 {
                    op.phase = Phase::RepairWriteInFlight;
                    return Next::InFlight;
                }
                op.phase = Phase::RepairDone;
            }
            Phase::RepairDone => {
                release_excl(sh, op);
                sh.read_repairs.fetch_add(1, Relaxed);
                return Next::Done(IoStatus::Success);
            }
        }
    }
}

fn release_shared(sh: &Shared, op: &mut Op) {
    for r in op.r_first..op.r_next {
        sh.release_shared(r);
    }
    op.r_next = op.r_first;
}

fn release_excl(sh: &Shared, op: &mut Op) {
    for r in op.r_first..op.r_next {
        sh.release_excl(r);
    }
    op.r_next = op.r_first;
}

/// Chooses the member to read from among `sources` (a subset of the
/// view's read sources): O(members), no atomics except the resync cursor
/// while an unclean-shutdown resync runs.
fn pick(
    sh: &Shared,
    view: &View,
    outstanding: &[u32; MAX_MEMBERS],
    last_end: &[u64; MAX_MEMBERS],
    last: usize,
    op: &Op,
    sources: u8,
) -> usize {
    if view.resync
        && op.r_last >= sh.resync_cursor.load(Acquire)
        && sources & (1 << view.primary) != 0
    {
        return view.primary;
    }
    let mut cand = sources & view.fast;
    if cand == 0 {
        cand = sources;
    }
    if cand & (cand - 1) == 0 {
        return cand.trailing_zeros() as usize;
    }
    // A sequential stream stays on its member (the latest stream first).
    if cand & (1 << last) != 0 && last_end[last] == op.offset {
        return last;
    }
    let mut c = cand;
    while c != 0 {
        let m = c.trailing_zeros() as usize;
        c &= c - 1;
        if last_end[m] == op.offset {
            return m;
        }
    }
    // Least outstanding on this channel; on a tie the lowest role (as md:
    // an idle member is taken first).
    let mut best = usize::MAX;
    let mut best_q = u32::MAX;
    let mut c = cand;
    while c != 0 {
        let m = c.trailing_zeros() as usize;
        c &= c - 1;
        if outstanding[m] < best_q {
            best = m;
            best_q = outstanding[m];
        }
    }
    best
}

impl BdevChannel for Raid1Channel {
    unsafe fn submit(&mut self, req: &IoRequest<'_>, tag: u64) -> Result<(), QueueFull> {
        if self.ops.is_full() || self.cq.len() >= self.info.queue_depth {
            return Err(QueueFull);
        }
        if let Err(st) = validate(&self.info, req) {
            self.cq.push(tag, st);
            return Ok(());
        }
        let sh = &self.shared;
        let ranged = req.io_type.has_range();
        let (r_first, r_last) = if ranged {
            (
                sh.region_of(req.offset_blocks),
                sh.region_of(req.offset_blocks + req.num_blocks - 1),
            )
        } else {
            (1, 0)
        };
        let op = Op {
            tag,
            io_type: req.io_type,
            offset: req.offset_blocks,
            num: req.num_blocks,
            fua: req.fua,
            phase: if req.io_type == IoType::Read {
                Phase::Read
            } else {
                Phase::Acquire
            },
            waiting: false,
            r_first,
            r_last,
            r_next: r_first,
            need_bm: false,
            bm_mark: 0,
            to_issue: 0,
            pending: 0,
            ok: 0,
            insync: 0,
            bad: 0,
            tried: 0,
            src: 0,
            err: IoStatus::Success,
            sb_need: 0,
            retries: 0,
        };
        let Ok(s) = self.ops.insert(op) else {
            return Err(QueueFull);
        };
        let v = &mut self.iovs[s as usize];
        v.clear();
        match req.iovs {
            // The common single buffer without a memcpy call.
            [one] => v.push(*one),
            more => v.extend_from_slice(more),
        }
        self.update_view();
        self.step(s);
        Ok(())
    }

    fn poll(&mut self, done: &mut dyn FnMut(u64, IoStatus)) -> usize {
        self.update_view();
        let mut dones = std::mem::take(&mut self.dones);
        self.port.poll(&mut |d| dones.push(d));
        for d in dones.drain(..) {
            self.on_done(d);
        }
        self.dones = dones;
        for _ in 0..self.waitq.len() {
            let Some(s) = self.waitq.pop_front() else {
                break;
            };
            match self.ops.get_mut(s) {
                Some(o) if o.waiting => o.waiting = false,
                _ => continue,
            }
            self.step(s);
        }
        self.cq.drain(done)
    }

    fn inflight(&self) -> usize {
        self.ops.len() + self.cq.len()
    }
}

impl Drop for Raid1Channel {
    fn drop(&mut self) {
        // Give back what abandoned requests hold so other channels go on.
        let held: Vec<Op> = self.ops.iter().map(|(_, o)| *o).collect();
        for op in held {
            match op.phase {
                Phase::RepairAcquire
                | Phase::RepairRead
                | Phase::RepairReadInFlight
                | Phase::RepairWrite
                | Phase::RepairWriteInFlight
                | Phase::RepairDone => {
                    for r in op.r_first..op.r_next {
                        self.shared.release_excl(r);
                    }
                    if op.phase == Phase::RepairAcquire && op.r_next <= op.r_last {
                        self.shared.cancel_wait(op.r_next);
                    }
                }
                Phase::Read | Phase::ReadInFlight => {}
                _ => {
                    for r in op.r_first..op.r_next {
                        self.shared.release_shared(r);
                    }
                }
            }
        }
    }
}
