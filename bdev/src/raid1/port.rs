//! A set of child channels, one per member, opened on the calling thread,
//! plus the metadata writer (superblocks, bitmap blocks) that any holder
//! of a port (a data channel, the rebuild task, a control-plane call) uses.
//!
//! Child tags: `kind:4 | member:4 | slot_gen:8 | unused:16 | index:32`.
//! A completion from a child that was replaced since (its `slot_gen` no
//! longer matches) is reported with `current == false`.

use std::sync::atomic::Ordering::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::sb::SB_BYTES;
use super::shared::Shared;
use super::MAX_MEMBERS;
use crate::AlignedBuf;
use crate::{open_channel, BdevError, Channel, IoRequest, IoStatus, QueueFull};

pub(crate) const KIND_USER: u64 = 1;
pub(crate) const KIND_META: u64 = 2;
pub(crate) const KIND_COPY: u64 = 3;

/// Metadata slots per port: bitmap blocks written concurrently.
const BM_SLOTS: usize = 4;
/// Index of the superblock slot in meta tags.
const SB_SLOT: u32 = BM_SLOTS as u32;

fn tag(kind: u64, member: usize, gen: u64, idx: u32) -> u64 {
    (kind << 60) | ((member as u64 & 0xf) << 56) | ((gen & 0xff) << 48) | idx as u64
}

/// A completion from a child.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Done {
    pub kind: u64,
    pub member: usize,
    /// The child is still the device attached to this role.
    pub current: bool,
    pub idx: u32,
    pub status: IoStatus,
}

/// Why a child submit did not happen.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum SubmitErr {
    /// The child's queue is full: retry later.
    Full,
    /// No device is attached to this role here.
    Gone,
}

struct Kid {
    gen: u64,
    ch: Channel,
}

/// Times a metadata write aborted on a member is sent to it again.
const META_RETRIES: u8 = 3;

/// Set in a meta tag's index for the FLUSH that precedes a write.
const FLUSH_IDX: u32 = 0x100;

struct BmSlot {
    active: bool,
    block: u64,
    buf: AlignedBuf,
    to_issue: u8,
    pending: u8,
    ok: u8,
    /// Members still to flush before the write (md's PREFLUSH).
    flush_to_issue: u8,
    flush_pending: u8,
    /// Member writes sent again after `Aborted`.
    retries: u8,
}

struct SbSlot {
    active: bool,
    gen: u64,
    bufs: Vec<AlignedBuf>,
    to_issue: u8,
    pending: u8,
    ok: u8,
    flush_to_issue: u8,
    flush_pending: u8,
    retries: u8,
}

pub(crate) struct Port {
    pub shared: Arc<Shared>,
    seen_config: u64,
    kids: Vec<Option<Kid>>,
    grave: Vec<(usize, Kid)>,
    /// I/O in flight per member on this port (read balancing).
    pub outstanding: [u32; MAX_MEMBERS],
    /// Roles with a device attached here (kept by `refresh`).
    attached: u8,
    bm: Vec<BmSlot>,
    sbs: SbSlot,
}

impl Port {
    pub fn new(shared: Arc<Shared>) -> Port {
        let bs = shared.block_size as usize;
        let sb_len = SB_BYTES.max(bs);
        let mut p = Port {
            seen_config: 0,
            kids: (0..MAX_MEMBERS).map(|_| None).collect(),
            grave: Vec::new(),
            outstanding: [0; MAX_MEMBERS],
            attached: 0,
            bm: (0..BM_SLOTS)
                .map(|_| BmSlot {
                    active: false,
                    block: 0,
                    buf: AlignedBuf::new(bs),
                    to_issue: 0,
                    pending: 0,
                    ok: 0,
                    flush_to_issue: 0,
                    flush_pending: 0,
                    retries: 0,
                })
                .collect(),
            sbs: SbSlot {
                active: false,
                gen: 0,
                bufs: (0..MAX_MEMBERS).map(|_| AlignedBuf::new(sb_len)).collect(),
                to_issue: 0,
                pending: 0,
                ok: 0,
                flush_to_issue: 0,
                flush_pending: 0,
                retries: 0,
            },
            shared,
        };
        p.refresh();
        p
    }

    /// Re-reads the member table if it changed (one atomic load otherwise).
    pub fn refresh(&mut self) {
        let g = self.shared.config_gen.load(Acquire);
        if g == self.seen_config {
            return;
        }
        let members = self.shared.members().clone();
        self.attached = 0;
        for (m, bdev) in members.iter().enumerate() {
            let want = self.shared.roles[m].slot_gen.load(Acquire);
            let have = self.kids[m].as_ref().map(|k| k.gen);
            if have == Some(want) && bdev.is_some() {
                continue;
            }
            if let Some(old) = self.kids[m].take() {
                self.grave.push((m, old));
            }
            self.outstanding[m] = 0;
            if let Some(b) = bdev {
                match open_channel(b) {
                    Ok(ch) => self.kids[m] = Some(Kid { gen: want, ch }),
                    Err(e) => {
                        tracing::warn!(raid1 = %self.shared.name, member = %b.info().name, error = %e, "cannot open member channel");
                        self.shared.fail_io(m, "cannot open a channel");
                    }
                }
            }
        }
        for m in 0..MAX_MEMBERS {
            if self.kids[m].is_some() {
                self.attached |= 1 << m;
            }
        }
        self.seen_config = g;
    }

    /// The `config_gen` this port's children reflect.
    pub fn seen_config(&self) -> u64 {
        self.seen_config
    }

    /// Whether a device is attached to role `m` on this port.
    pub fn attached(&self, m: usize) -> bool {
        self.kids[m].is_some()
    }

    /// Roles with a device attached on this port, as a mask.
    pub fn attached_mask(&self) -> u8 {
        self.attached
    }

    /// Nothing in flight on this port (no child I/O, no metadata write,
    /// no replaced child still draining): polling it would find nothing.
    pub fn idle(&self) -> bool {
        self.outstanding.iter().all(|&n| n == 0) && self.grave.is_empty() && !self.meta_busy()
    }

    /// Submits to member `m`.
    ///
    /// # Safety
    /// As [`Channel::submit`].
    pub unsafe fn submit(
        &mut self,
        m: usize,
        req: &IoRequest<'_>,
        kind: u64,
        idx: u32,
    ) -> Result<(), SubmitErr> {
        // SAFETY: forwarded contract.
        unsafe { submit_to(&mut self.kids, &mut self.outstanding, m, req, kind, idx) }
    }

    /// Polls every child; metadata completions are handled here, the rest
    /// reported through `out`. Returns the number of completions seen.
    pub fn poll(&mut self, out: &mut dyn FnMut(Done)) -> usize {
        let Port {
            shared,
            kids,
            grave,
            outstanding,
            bm,
            sbs,
            ..
        } = self;
        let mut n = 0;
        let mut handle = |d: Done, outstanding: &mut [u32; MAX_MEMBERS]| {
            if d.current {
                outstanding[d.member] = outstanding[d.member].saturating_sub(1);
            }
            if d.kind == KIND_META {
                meta_done(shared, bm, sbs, d);
            } else {
                out(d);
            }
        };
        for (m, k) in kids.iter_mut().enumerate() {
            if let Some(k) = k {
                let gen = k.gen & 0xff;
                n += k.ch.poll(&mut |t, st| {
                    let d = untag(t, st, |g| g == gen);
                    handle(Done { member: m, ..d }, outstanding);
                });
            }
        }
        if !grave.is_empty() {
            for (m, k) in grave.iter_mut() {
                let m = *m;
                n += k.ch.poll(&mut |t, st| {
                    let d = untag(t, st, |_| false);
                    handle(Done { member: m, ..d }, outstanding);
                });
            }
            grave.retain(|(_, k)| k.ch.inflight() > 0);
        }
        n + self.meta_progress()
    }

    /// Write targets with a device attached here. Loads states first, then
    /// refreshes: a member made a target after its device was attached is
    /// always seen with its device.
    pub fn live_targets(&mut self) -> u8 {
        let t = self.shared.write_targets();
        self.refresh();
        t & self.attached
    }

    /// Starts writing bitmap block `b` unless one of ours is already under
    /// way, another port holds it, or no slot is free. The caller retries
    /// until the regions it waits for are on disk. With `preflush` (a
    /// write that clears bits) the members are flushed first, so that the
    /// data the bits covered is durable before the record that it was
    /// dirty goes (md's PREFLUSH|FUA).
    pub fn persist_bitmap(&mut self, b: u64, preflush: bool) -> bool {
        if self.bm.iter().any(|s| s.active && s.block == b) {
            return true;
        }
        let Some(i) = self.bm.iter().position(|s| !s.active) else {
            return false;
        };
        if self.shared.bm_busy[b as usize]
            .compare_exchange(false, true, AcqRel, Acquire)
            .is_err()
        {
            return false;
        }
        let targets = self.live_targets();
        let slot = &mut self.bm[i];
        self.shared.snapshot_bitmap(b, slot.buf.as_mut_slice());
        slot.active = true;
        slot.block = b;
        slot.to_issue = targets;
        slot.pending = 0;
        slot.ok = 0;
        slot.flush_to_issue = if preflush {
            flushable(&self.kids, targets)
        } else {
            0
        };
        slot.flush_pending = 0;
        slot.retries = 0;
        self.issue_bm(i);
        true
    }

    /// Starts a superblock write if one is wanted and none is under way.
    pub fn persist_sb(&mut self) {
        if self.sbs.active || self.shared.sb_done.load(Acquire) >= self.shared.sb_gen.load(Acquire)
        {
            return;
        }
        if self
            .shared
            .sb_busy
            .compare_exchange(false, true, AcqRel, Acquire)
            .is_err()
        {
            return;
        }
        let g = self.shared.sb_gen.load(Acquire);
        let targets = self.live_targets();
        for m in 0..MAX_MEMBERS {
            if targets & (1 << m) != 0 {
                self.shared
                    .superblock(m)
                    .encode(self.sbs.bufs[m].as_mut_slice());
            }
        }
        self.sbs.active = true;
        self.sbs.gen = g;
        self.sbs.to_issue = targets;
        self.sbs.pending = 0;
        self.sbs.ok = 0;
        // Every superblock write is preceded by a flush: the clean mark
        // and the checkpoints speak for data written before them.
        self.sbs.flush_to_issue = flushable(&self.kids, targets);
        self.sbs.flush_pending = 0;
        self.sbs.retries = 0;
        self.issue_sb();
    }

    fn issue_bm(&mut self, i: usize) {
        let Port {
            shared,
            kids,
            outstanding,
            bm,
            ..
        } = self;
        let s = &mut bm[i];
        if !issue_flushes(
            kids,
            outstanding,
            &mut s.flush_to_issue,
            &mut s.flush_pending,
            i as u32,
        ) {
            return;
        }
        let lba = shared.layout.bitmap_offset + s.block;
        let v = [s.buf.iovec(0, s.buf.len())];
        let req = IoRequest::write(lba, 1, &v).with_fua(true);
        for m in 0..MAX_MEMBERS {
            if s.to_issue & (1 << m) == 0 {
                continue;
            }
            // SAFETY: the buffer belongs to this port and is not touched
            // until the slot completes (the port outlives its children's
            // I/O: Drop releases the slot only after dropping them).
            match unsafe { submit_to(kids, outstanding, m, &req, KIND_META, i as u32) } {
                Ok(()) => {
                    s.pending += 1;
                    s.to_issue &= !(1 << m);
                }
                Err(SubmitErr::Gone) => s.to_issue &= !(1 << m),
                Err(SubmitErr::Full) => {}
            }
        }
        if s.to_issue == 0 && s.pending == 0 {
            finish_bm(shared, s);
        }
    }

    fn issue_sb(&mut self) {
        let Port {
            shared,
            kids,
            outstanding,
            sbs,
            ..
        } = self;
        if !issue_flushes(
            kids,
            outstanding,
            &mut sbs.flush_to_issue,
            &mut sbs.flush_pending,
            SB_SLOT,
        ) {
            return;
        }
        let sb_blocks = shared.layout.sb_blocks;
        for m in 0..MAX_MEMBERS {
            if sbs.to_issue & (1 << m) == 0 {
                continue;
            }
            let len = sbs.bufs[m].len();
            let v = [sbs.bufs[m].iovec(0, len)];
            let req = IoRequest::write(0, sb_blocks, &v).with_fua(true);
            // SAFETY: as in issue_bm.
            match unsafe { submit_to(kids, outstanding, m, &req, KIND_META, SB_SLOT) } {
                Ok(()) => {
                    sbs.pending += 1;
                    sbs.to_issue &= !(1 << m);
                }
                Err(SubmitErr::Gone) => sbs.to_issue &= !(1 << m),
                Err(SubmitErr::Full) => {}
            }
        }
        if sbs.to_issue == 0 && sbs.pending == 0 {
            finish_sb(shared, sbs);
        }
    }

    /// Re-issues metadata writes that found a full queue.
    fn meta_progress(&mut self) -> usize {
        let mut n = 0;
        for i in 0..BM_SLOTS {
            if self.bm[i].active && self.bm[i].to_issue != 0 && self.bm[i].flush_pending == 0 {
                self.issue_bm(i);
                n += 1;
            }
        }
        if self.sbs.active && self.sbs.to_issue != 0 && self.sbs.flush_pending == 0 {
            self.issue_sb();
            n += 1;
        }
        n
    }

    /// Whether this port has metadata writes under way.
    pub fn meta_busy(&self) -> bool {
        self.sbs.active || self.bm.iter().any(|s| s.active)
    }

    /// Writes the superblock (generation current at the call) to every live
    /// member, polling until done: for control-plane callers.
    pub fn sync_sb(&mut self, deadline: Duration) -> Result<(), BdevError> {
        let want = self.shared.sb_gen.load(Acquire);
        let end = Instant::now() + deadline;
        while self.shared.sb_done.load(Acquire) < want {
            if self.shared.sb_failed.load(Acquire) >= want {
                return Err(BdevError::Other(format!(
                    "raid1 {}: the superblock update reached no in-sync member",
                    self.shared.name
                )));
            }
            self.persist_sb();
            self.poll(&mut |_| {});
            if Instant::now() > end {
                return Err(BdevError::Other(format!(
                    "raid1 {}: superblock update timed out",
                    self.shared.name
                )));
            }
            std::thread::yield_now();
        }
        Ok(())
    }

    /// Writes every bitmap block to every live member (control plane).
    pub fn sync_bitmap(&mut self, deadline: Duration) -> Result<(), BdevError> {
        let end = Instant::now() + deadline;
        for b in 0..self.shared.bm_blocks {
            // Start one of ours for this block and wait for it to finish.
            while !self.persist_bitmap(b, false) {
                self.poll(&mut |_| {});
                if Instant::now() > end {
                    return Err(BdevError::Other(format!(
                        "raid1 {}: bitmap write timed out",
                        self.shared.name
                    )));
                }
            }
            while self.bm.iter().any(|s| s.active && s.block == b) {
                self.poll(&mut |_| {});
                if Instant::now() > end {
                    return Err(BdevError::Other(format!(
                        "raid1 {}: bitmap write timed out",
                        self.shared.name
                    )));
                }
                std::thread::yield_now();
            }
        }
        Ok(())
    }
}

/// # Safety
/// As [`Channel::submit`].
unsafe fn submit_to(
    kids: &mut [Option<Kid>],
    outstanding: &mut [u32; MAX_MEMBERS],
    m: usize,
    req: &IoRequest<'_>,
    kind: u64,
    idx: u32,
) -> Result<(), SubmitErr> {
    let Some(k) = kids[m].as_mut() else {
        return Err(SubmitErr::Gone);
    };
    // SAFETY: forwarded contract.
    match unsafe { k.ch.submit(req, tag(kind, m, k.gen, idx)) } {
        Ok(()) => {
            outstanding[m] += 1;
            Ok(())
        }
        Err(QueueFull) => Err(SubmitErr::Full),
    }
}

/// Of `targets`, the members whose device has a cache to flush.
fn flushable(kids: &[Option<Kid>], targets: u8) -> u8 {
    let mut m = 0u8;
    for (i, k) in kids.iter().enumerate() {
        if targets & (1 << i) != 0 && k.as_ref().is_some_and(|k| k.ch.info().caps.flush) {
            m |= 1 << i;
        }
    }
    m
}

/// Sends the FLUSHes a metadata write waits for; true once they are all
/// done (the write may go).
fn issue_flushes(
    kids: &mut [Option<Kid>],
    outstanding: &mut [u32; MAX_MEMBERS],
    to_issue: &mut u8,
    pending: &mut u8,
    idx: u32,
) -> bool {
    let req = IoRequest::flush();
    for m in 0..MAX_MEMBERS {
        if *to_issue & (1 << m) == 0 {
            continue;
        }
        // SAFETY: a flush carries no buffer.
        match unsafe { submit_to(kids, outstanding, m, &req, KIND_META, idx | FLUSH_IDX) } {
            Ok(()) => {
                *pending += 1;
                *to_issue &= !(1 << m);
            }
            Err(SubmitErr::Gone) => *to_issue &= !(1 << m),
            Err(SubmitErr::Full) => {}
        }
    }
    *to_issue == 0 && *pending == 0
}

fn untag(t: u64, status: IoStatus, current: impl Fn(u64) -> bool) -> Done {
    Done {
        kind: t >> 60,
        member: ((t >> 56) & 0xf) as usize,
        current: current((t >> 48) & 0xff),
        idx: t as u32,
        status,
    }
}

/// A preflush completed.
fn flush_done(shared: &Shared, pending: &mut u8, d: &Done) {
    *pending = pending.saturating_sub(1);
    if !d.status.is_ok() && d.current {
        // Its cache may hold what the metadata is about to vouch for.
        shared.fail_io(d.member, "flush failed");
    }
}

fn meta_done(shared: &Shared, bm: &mut [BmSlot], sbs: &mut SbSlot, d: Done) {
    if d.idx & FLUSH_IDX != 0 {
        // The write itself is issued by `meta_progress` once every flush
        // of its slot is done.
        let i = (d.idx & !FLUSH_IDX) as usize;
        if i == SB_SLOT as usize {
            flush_done(shared, &mut sbs.flush_pending, &d);
        } else if let Some(s) = bm.get_mut(i) {
            flush_done(shared, &mut s.flush_pending, &d);
        }
        return;
    }
    if d.idx == SB_SLOT {
        sbs.pending = sbs.pending.saturating_sub(1);
        if d.status.is_ok() && d.current {
            sbs.ok |= 1 << d.member;
        } else if d.current && d.status == IoStatus::Aborted && sbs.retries < META_RETRIES {
            sbs.retries += 1;
            sbs.to_issue |= 1 << d.member;
        } else if d.current {
            shared.fail_io(d.member, "superblock write failed");
        }
        if sbs.active && sbs.pending == 0 && sbs.to_issue == 0 {
            finish_sb(shared, sbs);
        }
        return;
    }
    let Some(s) = bm.get_mut(d.idx as usize) else {
        return;
    };
    s.pending = s.pending.saturating_sub(1);
    if d.status.is_ok() && d.current {
        s.ok |= 1 << d.member;
    } else if d.current && d.status == IoStatus::Aborted && s.retries < META_RETRIES {
        // Aborted before it reached the device: send it there again.
        s.retries += 1;
        s.to_issue |= 1 << d.member;
    } else if d.current {
        shared.fail_io(d.member, "bitmap write failed");
    }
    if s.active && s.pending == 0 && s.to_issue == 0 {
        finish_bm(shared, s);
    }
}

fn finish_bm(shared: &Shared, s: &mut BmSlot) {
    // Bits count as on disk only if a member in sync has them: after a
    // crash only the in-sync members' bitmaps are read (a member being
    // rebuilt does not count, a failed one is out of the array).
    if s.ok & shared.read_sources() != 0 {
        shared.bitmap_written(s.block, s.buf.as_slice());
    } else {
        shared.bm_failures.fetch_add(1, AcqRel);
    }
    s.active = false;
    shared.bm_busy[s.block as usize].store(false, Release);
}

fn finish_sb(shared: &Shared, s: &mut SbSlot) {
    // Persisted only if an in-sync member took it.
    if s.ok & shared.read_sources() != 0 {
        shared.sb_done.fetch_max(s.gen, AcqRel);
    } else {
        shared.sb_failed.fetch_max(s.gen, AcqRel);
        tracing::warn!(raid1 = %shared.name, gen = s.gen, "superblock write reached no in-sync member");
    }
    s.active = false;
    shared.sb_busy.store(false, Release);
}

impl Drop for Port {
    fn drop(&mut self) {
        // Children go first (their I/O is abandoned with them), then the
        // serialisation flags we hold are released so others can go on.
        self.kids.clear();
        self.grave.clear();
        for s in &mut self.bm {
            if s.active {
                s.active = false;
                self.shared.bm_busy[s.block as usize].store(false, Release);
            }
        }
        if self.sbs.active {
            self.sbs.active = false;
            self.shared.sb_busy.store(false, Release);
        }
    }
}
