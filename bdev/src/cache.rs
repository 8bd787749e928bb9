//! `cache`: a volatile write-cache fault model over a base bdev, for
//! crash-consistency tests (in the spirit of Linux's dm-log-writes and
//! dm-flakey).
//!
//! A write completes once its blocks are in a RAM cache of at most
//! `cache_blocks` blocks; reads see the cache first. Only these make data
//! durable (present on the base):
//!
//! - a FLUSH writes every block cached when it was submitted back to the
//!   base (or a newer version of it), then flushes the base (when it has a
//!   cache of its own), then completes;
//! - a FUA write goes through to the base (then flushes the base, when the
//!   base has a cache of its own) before it completes;
//! - when the cache is full, the oldest blocks are written back before the
//!   write that needs the room completes, as a drive's cache does;
//! - unmap and write-zeroes of at most `cache_blocks` blocks are cached
//!   writes of zeroes; longer ones drop the cached copies of the range and
//!   go through to the base.
//!
//! A write is cached whole when submitted, and completes once write-backs
//! of the oldest blocks have brought the cache back within `cache_blocks`
//! (so one write longer than the cache is held whole until part of it is
//! on the base: the cache is over capacity only while a write waits).
//! Deleting the bdev drops its unflushed blocks, as a power cut does.
//!
//! [`CacheBdev::power_cut`] drops everything not yet durable: the whole
//! cache ([`CutMode::All`]), or first a seeded random subset of the dirty
//! blocks is written back in random order ([`CutMode::Random`]: a real
//! drive may have written some of its cache back before the power failed).
//! I/O waiting in the cache at the cut (writes not yet acknowledged,
//! flushes, FUA writes) completes with [`IoStatus::Aborted`]; a write-back
//! already sent to the base may still land, as on a real drive. After a cut
//! the bdev keeps working with an empty cache.
//!
//! # Locking
//!
//! The cache is shared by every channel of the bdev, behind one mutex taken
//! on every I/O, and requests allocate (block copies, write-back buffers).
//! That is deliberate: this is a fault-injection device for tests, not a
//! data path. Each cached block carries a version (a global counter bumped
//! per block written) and the newest version known to be on the base;
//! at most one base write per block is in flight at a time, so write-backs
//! from different channels can never land out of order, and a FLUSH or FUA
//! write waits for exactly the versions it must make durable.

use std::any::Any;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::{
    check_name, open_channel, validate, AlignedBuf, Bdev, BdevChannel, BdevError, BdevInfo,
    BdevStats, Channel, CompletionQueue, IoRequest, IoStatus, IoType, IoVec, QueueFull, Slab,
};

/// How [`CacheBdev::power_cut`] treats dirty blocks.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CutMode {
    /// Drop the whole cache: nothing that was not durable survives.
    #[default]
    All,
    /// Write a random subset of the dirty blocks back first, in random
    /// order (seeded), then drop the rest.
    Random,
}

/// What a power cut did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CutReport {
    /// The mode.
    pub mode: CutMode,
    /// The seed of a random cut (replays the same choice for the same cache
    /// contents).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Dirty blocks lost.
    pub lost_blocks: u64,
    /// Dirty blocks written back to the base by the cut.
    pub written_back_blocks: u64,
    /// Clean cached blocks dropped (already on the base).
    pub dropped_clean_blocks: u64,
}

/// One cached block.
struct Entry {
    data: Box<[u8]>,
    /// Version of `data` (unique per block write, increasing).
    version: u64,
    /// The base holds a version at least this new (a value written at or
    /// after `base_version`).
    base_version: u64,
    /// The last write-back of this block failed with this status.
    error: Option<IoStatus>,
}

impl Entry {
    fn dirty(&self) -> bool {
        self.base_version < self.version
    }
}

/// State shared by all channels, behind [`Shared::state`].
struct State {
    entries: BTreeMap<u64, Entry>,
    /// Cached blocks by version: the oldest write first.
    order: BTreeMap<u64, u64>,
    /// Blocks with a base write in flight (at most one each).
    busy: HashSet<u64>,
    /// Ranges `[start, end)` with a pass-through unmap / write-zeroes in
    /// flight, by id.
    busy_ranges: Vec<(u64, u64, u64)>,
    next_version: u64,
    next_range_id: u64,
    /// Bumped by every power cut.
    epoch: u64,
}

impl State {
    fn in_busy_range(&self, lba: u64) -> bool {
        self.busy_ranges.iter().any(|r| r.0 <= lba && lba < r.1)
    }

    fn can_write_back(&self, lba: u64) -> bool {
        !self.busy.contains(&lba) && !self.in_busy_range(lba)
    }

    fn remove(&mut self, lba: u64) -> Option<Entry> {
        let e = self.entries.remove(&lba)?;
        self.order.remove(&e.version);
        Some(e)
    }

    /// Caches one block's data with a new version; returns the version.
    fn put(&mut self, lba: u64, data: Box<[u8]>) -> u64 {
        let v = self.next_version;
        self.next_version += 1;
        match self.entries.get_mut(&lba) {
            Some(e) => {
                self.order.remove(&e.version);
                e.data = data;
                e.version = v;
                e.error = None;
            }
            None => {
                // Not cached: the base holds every older version's value
                // (what the block had before this write).
                self.entries.insert(
                    lba,
                    Entry {
                        data,
                        version: v,
                        base_version: v - 1,
                        error: None,
                    },
                );
            }
        }
        self.order.insert(v, lba);
        v
    }

    /// Evicts clean blocks, oldest first, while over `cap`.
    fn trim_clean(&mut self, cap: u64) {
        if self.entries.len() as u64 <= cap {
            return;
        }
        let mut excess = self.entries.len() as u64 - cap;
        let victims: Vec<u64> = self
            .order
            .values()
            .copied()
            .filter(|lba| {
                let e = &self.entries[lba];
                !e.dirty() && !self.busy.contains(lba)
            })
            .take_while(|_| {
                let go = excess > 0;
                excess = excess.saturating_sub(1);
                go
            })
            .collect();
        for lba in victims {
            self.remove(lba);
        }
    }

    fn dirty_blocks(&self) -> u64 {
        self.entries.values().filter(|e| e.dirty()).count() as u64
    }
}

/// Counters, for `driver_specific`.
#[derive(Default)]
struct Counters {
    flushes: AtomicU64,
    fua_writes: AtomicU64,
    power_cuts: AtomicU64,
    written_back_blocks: AtomicU64,
    writeback_errors: AtomicU64,
    lost_blocks: AtomicU64,
    passthrough: AtomicU64,
}

struct Shared {
    info: BdevInfo,
    base_flush: bool,
    cache_blocks: u64,
    state: Mutex<State>,
    counters: Counters,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A volatile write-cache bdev.
pub struct CacheBdev {
    shared: Arc<Shared>,
    stats: BdevStats,
    base: Arc<dyn Bdev>,
}

/// Checks the `cache_blocks` parameter (before any base is looked up).
pub fn check_cache_blocks(cache_blocks: u64) -> Result<(), BdevError> {
    if cache_blocks == 0 {
        return Err(BdevError::param("cache_blocks", "must be at least 1"));
    }
    Ok(())
}

/// Creates a cache bdev named `name` over `base` holding up to
/// `cache_blocks` blocks (allocated as they are written).
pub fn create(name: &str, base: Arc<dyn Bdev>, cache_blocks: u64) -> Result<CacheBdev, BdevError> {
    check_name(name)?;
    check_cache_blocks(cache_blocks)?;
    let binfo = base.info();
    let mut info = binfo.clone();
    info.name = name.to_string();
    info.kind = "cache";
    info.uuid = crate::uuid_from_name("cache", name);
    info.caps.flush = true;
    info.caps.fua = true;
    // Short unmaps are cached zeroes, long ones the base's unmap: only
    // promise zeroes when both give them.
    info.caps.unmap_reads_zeroes = binfo.caps.unmap_reads_zeroes;
    Ok(CacheBdev {
        shared: Arc::new(Shared {
            info,
            base_flush: binfo.caps.flush,
            cache_blocks,
            state: Mutex::new(State {
                entries: BTreeMap::new(),
                order: BTreeMap::new(),
                busy: HashSet::new(),
                busy_ranges: Vec::new(),
                next_version: 1,
                next_range_id: 1,
                epoch: 0,
            }),
            counters: Counters::default(),
        }),
        stats: BdevStats::default(),
        base,
    })
}

/// A small seeded generator (splitmix64): reproducible cuts without a
/// dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl CacheBdev {
    /// The configured capacity in blocks.
    pub fn cache_blocks(&self) -> u64 {
        self.shared.cache_blocks
    }

    /// (cached blocks, dirty blocks) now.
    pub fn occupancy(&self) -> (u64, u64) {
        let s = self.shared.lock();
        (s.entries.len() as u64, s.dirty_blocks())
    }

    /// Simulates a power failure: drops everything not yet durable (see
    /// [`CutMode`]; `seed` only matters for [`CutMode::Random`]). Writes
    /// the surviving blocks of a random cut through a base channel opened
    /// on the calling thread (a reactor, in the daemon) and returns once
    /// they are on the base (30 s at most: then an error).
    pub fn power_cut(&self, mode: CutMode, seed: u64) -> Result<CutReport, BdevError> {
        let sh = &self.shared;
        let mut survivors: Vec<(u64, Box<[u8]>)> = Vec::new();
        let (lost, clean) = {
            let mut s = sh.lock();
            s.epoch += 1;
            let entries = std::mem::take(&mut s.entries);
            s.order.clear();
            let mut rng = Rng(seed);
            let (mut lost, mut clean) = (0u64, 0u64);
            for (lba, e) in entries {
                if !e.dirty() {
                    clean += 1;
                } else if mode == CutMode::Random
                    && rng.next() & 1 == 1
                    && !s.busy.contains(&lba)
                    && !s.in_busy_range(lba)
                {
                    survivors.push((lba, e.data));
                } else {
                    lost += 1;
                }
            }
            // Fisher–Yates: the order the drive happened to write them in.
            for i in (1..survivors.len()).rev() {
                let j = (rng.next() % (i as u64 + 1)) as usize;
                survivors.swap(i, j);
            }
            for (lba, _) in &survivors {
                s.busy.insert(*lba);
            }
            (lost, clean)
        };
        sh.counters.power_cuts.fetch_add(1, Ordering::Relaxed);
        sh.counters.lost_blocks.fetch_add(lost, Ordering::Relaxed);
        let written = survivors.len() as u64;
        let r = self.write_survivors(&survivors);
        {
            let mut s = sh.lock();
            for (lba, _) in &survivors {
                s.busy.remove(lba);
            }
        }
        r?;
        sh.counters
            .written_back_blocks
            .fetch_add(written, Ordering::Relaxed);
        let report = CutReport {
            mode,
            seed: (mode == CutMode::Random).then_some(seed),
            lost_blocks: lost,
            written_back_blocks: written,
            dropped_clean_blocks: clean,
        };
        tracing::info!(bdev = %sh.info.name, ?report, "power cut");
        Ok(report)
    }

    /// Writes `blocks` to the base in the given order, one at a time.
    fn write_survivors(&self, blocks: &[(u64, Box<[u8]>)]) -> Result<(), BdevError> {
        if blocks.is_empty() {
            return Ok(());
        }
        let bs = self.shared.info.block_size as usize;
        let mut ch = open_channel(&self.base)?;
        let mut buf = AlignedBuf::new(bs);
        let deadline = Instant::now() + Duration::from_secs(30);
        for (lba, data) in blocks {
            buf.as_mut_slice().copy_from_slice(data);
            let v = [buf.iovec(0, bs)];
            loop {
                // SAFETY: `buf` outlives the request: we poll until it
                // completes (or leak the buffer below if it never does).
                match unsafe { ch.submit(&IoRequest::write(*lba, 1, &v), 1) } {
                    Ok(()) => break,
                    Err(QueueFull) => {
                        ch.poll(&mut |_, _| {});
                    }
                }
            }
            let mut st = None;
            while st.is_none() {
                ch.poll(&mut |_, s| st = Some(s));
                if st.is_none() && Instant::now() > deadline {
                    // The base still owns the buffer: never free it.
                    std::mem::forget(buf);
                    std::mem::forget(ch);
                    return Err(BdevError::Other(format!(
                        "power cut: the base did not complete a write-back of block {lba} within 30 s"
                    )));
                }
            }
            match st {
                Some(IoStatus::Success) => {}
                Some(other) => {
                    return Err(BdevError::Other(format!(
                        "power cut: writing block {lba} back failed: {}",
                        other.name()
                    )))
                }
                None => unreachable!("loop ends with a status"),
            }
        }
        Ok(())
    }
}

impl Bdev for CacheBdev {
    fn info(&self) -> &BdevInfo {
        &self.shared.info
    }
    fn open_module_channel(&self) -> Result<Box<dyn BdevChannel>, BdevError> {
        let depth = self.shared.info.queue_depth;
        Ok(Box::new(CacheChannel {
            shared: Arc::clone(&self.shared),
            base: open_channel(&self.base)?,
            ops: Slab::with_capacity(depth),
            waiting: Vec::with_capacity(depth),
            wbs: Slab::with_capacity(depth),
            deferred: VecDeque::new(),
            cq: CompletionQueue::with_capacity(depth),
        }))
    }
    fn base_bdevs(&self) -> Vec<String> {
        vec![self.base.info().name.clone()]
    }
    fn driver_specific(&self) -> Option<serde_json::Value> {
        let (cached, dirty) = self.occupancy();
        let c = &self.shared.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Some(serde_json::json!({"cache": {
            "base": self.base.info().name,
            "cache_blocks": self.shared.cache_blocks,
            "cached_blocks": cached,
            "dirty_blocks": dirty,
            "flushes": g(&c.flushes),
            "fua_writes": g(&c.fua_writes),
            "power_cuts": g(&c.power_cuts),
            "written_back_blocks": g(&c.written_back_blocks),
            "writeback_errors": g(&c.writeback_errors),
            "lost_blocks": g(&c.lost_blocks),
            "passthrough_ops": g(&c.passthrough),
        }}))
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn shutdown(&self) {
        let (_, dirty) = self.occupancy();
        if dirty > 0 {
            tracing::warn!(bdev = %self.shared.info.name, dirty,
                "cache bdev removed with unflushed blocks: they are lost, as in a power cut");
        }
    }
    fn stats(&self) -> &BdevStats {
        &self.stats
    }
}

/// What a request waits for.
enum Wait {
    /// Base reads of the uncached runs (`Op::pending` of them).
    Reads,
    /// A plain write: until the cache is back within capacity.
    Room,
    /// A FUA write of blocks `lba..lba + n` with versions `v0..v0 + n`:
    /// until the base has them.
    Fua { lba: u64, n: u64, v0: u64 },
    /// A flush submitted when the newest version was `v`: until the base
    /// has every block cached then.
    Flush { v: u64 },
    /// A long unmap / write-zeroes: until no block of the range is being
    /// written back.
    Idle { io_type: IoType, lba: u64, n: u64 },
    /// One base request (flush after a flush or FUA write, pass-through,
    /// reset): its status is the result.
    Base { range_id: Option<u64> },
}

struct Op {
    tag: u64,
    epoch: u64,
    wait: Wait,
    /// Base sub-requests outstanding.
    pending: u32,
    /// First failure.
    status: IoStatus,
    /// The request's kind and FUA flag (for counters).
    kind: IoType,
    fua: bool,
}

/// A write-back in flight: a copy of consecutive blocks and their versions.
struct Wb {
    buf: AlignedBuf,
    lba: u64,
    versions: Vec<u64>,
    epoch: u64,
}

/// A base request not yet accepted by the base channel.
struct Deferred {
    tag: u64,
    io_type: IoType,
    lba: u64,
    n: u64,
    iovs: Vec<IoVec>,
}

const KIND_OP: u64 = 1 << 32;
const KIND_WB: u64 = 2 << 32;
const SLOT_MASK: u64 = 0xffff_ffff;

struct CacheChannel {
    shared: Arc<Shared>,
    base: Channel,
    ops: Slab<Op>,
    /// Ops to re-examine every poll.
    waiting: Vec<u32>,
    wbs: Slab<Wb>,
    deferred: VecDeque<Deferred>,
    cq: CompletionQueue,
}

/// The iovecs covering bytes `[off, off + len)` of `iovs`.
fn sub_iovs(iovs: &[IoVec], mut off: usize, mut len: usize) -> Vec<IoVec> {
    let mut out = Vec::new();
    for v in iovs {
        if len == 0 {
            break;
        }
        if off >= v.len {
            off -= v.len;
            continue;
        }
        let take = (v.len - off).min(len);
        out.push(IoVec {
            base: v.base.wrapping_add(off),
            len: take,
        });
        len -= take;
        off = 0;
    }
    out
}

/// Copies `src` into bytes `[off, off + src.len())` of `iovs`.
///
/// # Safety
/// The iovecs must be lent for writing (the submit contract of a read).
unsafe fn copy_to_iovs(iovs: &[IoVec], off: usize, src: &[u8]) {
    let mut done = 0;
    for v in sub_iovs(iovs, off, src.len()) {
        // SAFETY: `v` lies within a lent iovec (sub_iovs); `src` is ours,
        // a different allocation, and at least `done + v.len` long.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr().add(done), v.base, v.len) };
        done += v.len;
    }
}

/// Copies bytes `[off, off + dst.len())` of `iovs` into `dst`.
///
/// # Safety
/// The iovecs must be lent for reading (the submit contract of a write).
unsafe fn copy_from_iovs(iovs: &[IoVec], off: usize, dst: &mut [u8]) {
    let mut done = 0;
    for v in sub_iovs(iovs, off, dst.len()) {
        // SAFETY: as in `copy_to_iovs`, the other way round.
        unsafe { std::ptr::copy_nonoverlapping(v.base, dst.as_mut_ptr().add(done), v.len) };
        done += v.len;
    }
}

impl CacheChannel {
    fn new_op(&mut self, req: &IoRequest<'_>, tag: u64, epoch: u64, wait: Wait) -> u32 {
        // Room was checked in submit.
        self.ops
            .insert(Op {
                tag,
                epoch,
                wait,
                pending: 0,
                status: IoStatus::Success,
                kind: req.io_type,
                fua: req.fua && req.io_type == IoType::Write,
            })
            .unwrap_or_else(|_| unreachable!("op slab checked before insert"))
    }

    fn finish(&mut self, slot: u32, status: IoStatus) {
        if let Some(op) = self.ops.remove(slot) {
            self.waiting.retain(|s| *s != slot);
            let st = if op.status.is_ok() { status } else { op.status };
            if st.is_ok() {
                let c = &self.shared.counters;
                if op.kind == IoType::Flush {
                    c.flushes.fetch_add(1, Ordering::Relaxed);
                } else if op.fua {
                    c.fua_writes.fetch_add(1, Ordering::Relaxed);
                }
            }
            self.cq.push(op.tag, st);
        }
    }

    /// Starts write-backs of `lbas` (sorted, each cached, dirty and
    /// writable-back) in runs of consecutive blocks.
    fn start_writebacks(&mut self, s: &mut State, lbas: &[u64]) {
        let bs = self.shared.info.block_size as usize;
        let mut i = 0;
        while i < lbas.len() {
            let mut j = i + 1;
            while j < lbas.len() && lbas[j] == lbas[j - 1] + 1 && j - i < 256 {
                j += 1;
            }
            let run = &lbas[i..j];
            let mut buf = AlignedBuf::new(run.len() * bs);
            let mut versions = Vec::with_capacity(run.len());
            for (k, lba) in run.iter().enumerate() {
                let e = &s.entries[lba];
                buf.as_mut_slice()[k * bs..(k + 1) * bs].copy_from_slice(&e.data);
                versions.push(e.version);
                s.busy.insert(*lba);
            }
            let iov = buf.iovec(0, buf.len());
            let wb = Wb {
                buf,
                lba: run[0],
                versions,
                epoch: s.epoch,
            };
            match self.wbs.insert(wb) {
                Ok(slot) => self.deferred.push_back(Deferred {
                    tag: KIND_WB | slot as u64,
                    io_type: IoType::Write,
                    lba: run[0],
                    n: run.len() as u64,
                    iovs: vec![iov],
                }),
                Err(_) => {
                    // Too many write-backs in flight on this channel: try
                    // again next poll.
                    for lba in run {
                        s.busy.remove(lba);
                    }
                    return;
                }
            }
            i = j;
        }
    }

    /// Submits deferred base requests until the base is full.
    fn pump(&mut self) {
        while let Some(d) = self.deferred.front() {
            let req = IoRequest {
                io_type: d.io_type,
                offset_blocks: d.lba,
                num_blocks: d.n,
                iovs: &d.iovs,
                fua: false,
            };
            // SAFETY: read iovecs are the submitter's, lent until we
            // complete the op, which waits for this request; write-back
            // iovecs point into a `Wb` buffer kept until its completion.
            match unsafe { self.base.submit(&req, d.tag) } {
                Ok(()) => {
                    self.deferred.pop_front();
                }
                Err(QueueFull) => break,
            }
        }
    }

    /// Base request for op `slot` (its completion completes the op).
    fn base_op(&mut self, slot: u32, io_type: IoType, lba: u64, n: u64) {
        self.deferred.push_back(Deferred {
            tag: KIND_OP | slot as u64,
            io_type,
            lba,
            n,
            iovs: Vec::new(),
        });
    }

    fn submit_read(&mut self, req: &IoRequest<'_>, tag: u64) {
        let bs = self.shared.info.block_size as usize;
        let sh = Arc::clone(&self.shared);
        let s = sh.lock();
        // Cached blocks are copied now; runs of uncached ones (whose newest
        // acknowledged value the base holds: a block leaves the cache only
        // once clean, or by a cut) are read from the base.
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for k in 0..req.num_blocks {
            let lba = req.offset_blocks + k;
            if let Some(e) = s.entries.get(&lba) {
                // SAFETY: the submitter lent the iovecs for writing.
                unsafe { copy_to_iovs(req.iovs, k as usize * bs, &e.data) };
            } else {
                match runs.last_mut() {
                    Some((start, n)) if *start + *n == lba => *n += 1,
                    _ => runs.push((lba, 1)),
                }
            }
        }
        let epoch = s.epoch;
        drop(s);
        let slot = self.new_op(req, tag, epoch, Wait::Reads);
        if runs.is_empty() {
            self.finish(slot, IoStatus::Success);
            return;
        }
        if let Some(op) = self.ops.get_mut(slot) {
            op.pending = runs.len() as u32;
        }
        for (lba, n) in runs {
            let off = (lba - req.offset_blocks) as usize * bs;
            self.deferred.push_back(Deferred {
                tag: KIND_OP | slot as u64,
                io_type: IoType::Read,
                lba,
                n,
                iovs: sub_iovs(req.iovs, off, n as usize * bs),
            });
        }
    }

    fn submit_write(&mut self, req: &IoRequest<'_>, tag: u64, zeroes: bool) {
        let bs = self.shared.info.block_size as usize;
        let sh = Arc::clone(&self.shared);
        let mut s = sh.lock();
        let mut v0 = 0;
        for k in 0..req.num_blocks {
            let mut data = vec![0u8; bs].into_boxed_slice();
            if !zeroes {
                // SAFETY: the submitter lent the iovecs for reading.
                unsafe { copy_from_iovs(req.iovs, k as usize * bs, &mut data) };
            }
            let v = s.put(req.offset_blocks + k, data);
            if k == 0 {
                v0 = v;
            }
        }
        let wait = if req.fua {
            Wait::Fua {
                lba: req.offset_blocks,
                n: req.num_blocks,
                v0,
            }
        } else {
            Wait::Room
        };
        let epoch = s.epoch;
        let slot = self.new_op(req, tag, epoch, wait);
        self.waiting.push(slot);
        self.progress(&mut s, slot);
    }

    /// Advances a waiting op (the lock held).
    fn progress(&mut self, s: &mut State, slot: u32) {
        let cap = self.shared.cache_blocks;
        let Some(op) = self.ops.get(slot) else {
            return;
        };
        if op.epoch != s.epoch && !matches!(op.wait, Wait::Reads | Wait::Base { .. }) {
            // A power cut dropped what this op was waiting on.
            self.finish(slot, IoStatus::Aborted);
            return;
        }
        let mut to_write: Vec<u64> = Vec::new();
        let mut failed: Option<IoStatus> = None;
        let mut satisfied = true;
        match op.wait {
            Wait::Reads | Wait::Base { .. } => return,
            Wait::Room => {
                s.trim_clean(cap);
                let len = s.entries.len() as u64;
                if len <= cap {
                    self.finish(slot, IoStatus::Success);
                    return;
                }
                // Write back the oldest dirty blocks until, once they are
                // clean, the cache fits.
                let mut needed = len - cap;
                let oldest: Vec<u64> = s.order.values().copied().collect();
                for lba in oldest {
                    if needed == 0 {
                        break;
                    }
                    let busy = s.busy.contains(&lba);
                    let e = s.entries.get_mut(&lba).expect("ordered blocks are cached");
                    if !e.dirty() || busy {
                        needed -= 1;
                        continue;
                    }
                    if let Some(st) = e.error.take() {
                        failed = Some(st);
                        break;
                    }
                    if s.in_busy_range(lba) {
                        continue;
                    }
                    to_write.push(lba);
                    needed -= 1;
                }
                satisfied = false;
            }
            Wait::Fua { lba, n, v0 } => {
                for k in 0..n {
                    let b = lba + k;
                    let free = s.can_write_back(b);
                    let ranged = s.in_busy_range(b);
                    match s.entries.get_mut(&b) {
                        None if !ranged => {}
                        None => satisfied = false,
                        Some(e) if e.base_version >= v0 + k => {}
                        Some(e) => {
                            satisfied = false;
                            if let Some(st) = e.error.take() {
                                failed = Some(st);
                                break;
                            }
                            if free {
                                to_write.push(b);
                            }
                        }
                    }
                }
            }
            Wait::Flush { v } => {
                let lbas: Vec<u64> = s
                    .entries
                    .iter()
                    .filter(|(_, e)| e.base_version < e.version.min(v))
                    .map(|(lba, _)| *lba)
                    .collect();
                for b in lbas {
                    satisfied = false;
                    if let Some(st) = s.entries.get_mut(&b).and_then(|e| e.error.take()) {
                        failed = Some(st);
                        break;
                    }
                    if s.can_write_back(b) {
                        to_write.push(b);
                    }
                }
            }
            Wait::Idle { io_type, lba, n } => {
                let end = lba + n;
                if s.busy.iter().any(|b| (lba..end).contains(b)) {
                    return;
                }
                let cached: Vec<u64> = s.entries.range(lba..end).map(|(b, _)| *b).collect();
                for b in cached {
                    s.remove(b);
                }
                let id = s.next_range_id;
                s.next_range_id += 1;
                s.busy_ranges.push((lba, end, id));
                self.shared
                    .counters
                    .passthrough
                    .fetch_add(1, Ordering::Relaxed);
                if let Some(op) = self.ops.get_mut(slot) {
                    op.wait = Wait::Base { range_id: Some(id) };
                }
                self.waiting.retain(|x| *x != slot);
                self.base_op(slot, io_type, lba, n);
                return;
            }
        }
        if let Some(st) = failed {
            self.finish(slot, st);
            return;
        }
        if satisfied {
            // Flush and FUA: the blocks are on the base; flush the base's
            // own cache (when it has one) before completing.
            if self.shared.base_flush {
                if let Some(op) = self.ops.get_mut(slot) {
                    op.wait = Wait::Base { range_id: None };
                }
                self.waiting.retain(|x| *x != slot);
                self.base_op(slot, IoType::Flush, 0, 0);
            } else {
                self.finish(slot, IoStatus::Success);
            }
            s.trim_clean(cap);
            return;
        }
        to_write.sort_unstable();
        to_write.dedup();
        self.start_writebacks(s, &to_write);
    }

    fn wb_done(&mut self, slot: u32, st: IoStatus) {
        let Some(wb) = self.wbs.remove(slot) else {
            return;
        };
        let c = &self.shared.counters;
        if st.is_ok() {
            c.written_back_blocks
                .fetch_add(wb.versions.len() as u64, Ordering::Relaxed);
        } else {
            c.writeback_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(bdev = %self.shared.info.name, lba = wb.lba,
                blocks = wb.versions.len(), status = st.name(), "cache write-back failed");
        }
        let mut s = self.shared.lock();
        for (k, v) in wb.versions.iter().enumerate() {
            let lba = wb.lba + k as u64;
            s.busy.remove(&lba);
            if wb.epoch != s.epoch {
                continue;
            }
            if let Some(e) = s.entries.get_mut(&lba) {
                if st.is_ok() {
                    e.base_version = e.base_version.max(*v);
                    if !e.dirty() {
                        e.error = None;
                    }
                } else if e.version == *v {
                    e.error = Some(st);
                }
            }
        }
        drop(s);
        drop(wb.buf);
    }

    fn op_base_done(&mut self, slot: u32, st: IoStatus) {
        let Some(op) = self.ops.get_mut(slot) else {
            return;
        };
        if !st.is_ok() && op.status.is_ok() {
            op.status = st;
        }
        match op.wait {
            Wait::Reads => {
                op.pending = op.pending.saturating_sub(1);
                if op.pending == 0 {
                    self.finish(slot, IoStatus::Success);
                }
            }
            Wait::Base { range_id } => {
                if let Some(id) = range_id {
                    self.shared.lock().busy_ranges.retain(|r| r.2 != id);
                }
                self.finish(slot, st);
            }
            _ => {}
        }
    }
}

impl BdevChannel for CacheChannel {
    unsafe fn submit(&mut self, req: &IoRequest<'_>, tag: u64) -> Result<(), QueueFull> {
        if self.ops.is_full() || self.cq.len() >= self.shared.info.queue_depth {
            return Err(QueueFull);
        }
        if let Err(st) = validate(&self.shared.info, req) {
            self.cq.push(tag, st);
            return Ok(());
        }
        match req.io_type {
            IoType::Read => self.submit_read(req, tag),
            IoType::Write => self.submit_write(req, tag, false),
            IoType::Unmap | IoType::WriteZeroes if req.num_blocks <= self.shared.cache_blocks => {
                self.submit_write(req, tag, true)
            }
            IoType::Unmap | IoType::WriteZeroes => {
                let sh = Arc::clone(&self.shared);
                let mut s = sh.lock();
                let wait = Wait::Idle {
                    io_type: req.io_type,
                    lba: req.offset_blocks,
                    n: req.num_blocks,
                };
                let slot = self.new_op(req, tag, s.epoch, wait);
                self.waiting.push(slot);
                self.progress(&mut s, slot);
            }
            IoType::Flush => {
                let sh = Arc::clone(&self.shared);
                let mut s = sh.lock();
                let v = s.next_version - 1;
                let slot = self.new_op(req, tag, s.epoch, Wait::Flush { v });
                self.waiting.push(slot);
                self.progress(&mut s, slot);
            }
            IoType::Reset => {
                let epoch = self.shared.lock().epoch;
                let slot = self.new_op(req, tag, epoch, Wait::Base { range_id: None });
                self.base_op(slot, IoType::Reset, 0, 0);
            }
        }
        self.pump();
        Ok(())
    }

    fn poll(&mut self, done: &mut dyn FnMut(u64, IoStatus)) -> usize {
        let mut results: Vec<(u64, IoStatus)> = Vec::new();
        self.base.poll(&mut |tag, st| results.push((tag, st)));
        for (tag, st) in results {
            let slot = (tag & SLOT_MASK) as u32;
            if tag & !SLOT_MASK == KIND_WB {
                self.wb_done(slot, st);
            } else {
                self.op_base_done(slot, st);
            }
        }
        if !self.waiting.is_empty() {
            let sh = Arc::clone(&self.shared);
            let mut s = sh.lock();
            for slot in self.waiting.clone() {
                self.progress(&mut s, slot);
            }
        }
        self.pump();
        self.cq.drain(done)
    }

    fn inflight(&self) -> usize {
        self.ops.len() + self.cq.len() + self.wbs.len()
    }
}

impl Drop for CacheChannel {
    /// Write-backs still in flight own buffers the base is using and mark
    /// their blocks busy: wait for them (bounded), and past the bound leak
    /// the buffers rather than free memory the base may still touch.
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.wbs.is_empty() && Instant::now() < deadline {
            self.pump();
            let mut results: Vec<(u64, IoStatus)> = Vec::new();
            self.base.poll(&mut |tag, st| results.push((tag, st)));
            for (tag, st) in results {
                if tag & !SLOT_MASK == KIND_WB {
                    self.wb_done((tag & SLOT_MASK) as u32, st);
                }
            }
            std::thread::yield_now();
        }
        if !self.wbs.is_empty() {
            let mut s = self.shared.lock();
            let slots: Vec<u32> = self.wbs.iter().map(|(i, _)| i).collect();
            for i in slots {
                if let Some(wb) = self.wbs.remove(i) {
                    for k in 0..wb.versions.len() as u64 {
                        s.busy.remove(&(wb.lba + k));
                    }
                    std::mem::forget(wb.buf);
                }
            }
        }
    }
}
