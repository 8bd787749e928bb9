//! Background work of an array, as a poller: rebuild / resync jobs, lazy
//! bitmap clearing, and superblock writes nobody else is waiting for.
//!
//! A job is fixed when it starts: the members being rebuilt in full, the
//! members resynced from the bitmap (dirty regions only), and, after an
//! unclean shutdown, the in-sync members other than the primary (dirty
//! regions only). It walks regions in order; each region is taken
//! exclusively (user writes to it wait, reads go to in-sync members), read
//! from an in-sync member in pieces and written to the targets. Members
//! added while a job runs are picked up by the next job.

use std::sync::atomic::Ordering::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::port::{Done, Port, SubmitErr, KIND_COPY};
use super::sb::{ROLE_IN_SYNC, ROLE_RECOVER_BITMAP, ROLE_RECOVER_FULL};
use super::shared::{Shared, DIRTY, EXCL, INFLIGHT, ON_DISK, TOUCHED, WAIT};
use super::MAX_MEMBERS;
use crate::AlignedBuf;
use crate::{IoRequest, IoStatus};

/// Largest copy I/O.
const PIECE_BYTES: u64 = 1 << 20;
/// Default period of the lazy bitmap clearer.
pub const DEFAULT_CLEAR_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Step {
    Find,
    Lock,
    Read,
    ReadWait,
    Write,
    WriteWait,
}

struct Job {
    full: u8,
    bm: u8,
    resync: u8,
    cursor: u64,
    started: Instant,
    bytes: u64,
    step: Step,
    region: u64,
    targets: u8,
    lba: u64,
    end: u64,
    n: u64,
    src: usize,
    tried: u8,
    /// Sources whose read of the current piece failed with a medium
    /// error: rewritten from the member that could be read.
    bad_src: u8,
    to_issue: u8,
    pending: u8,
    /// Device generation of each role when the job started: a role whose
    /// device changed since (removed, another added) leaves the job.
    gens: [u64; MAX_MEMBERS],
    /// Where each recovering member's copy resumes (its checkpoint), and
    /// the array resync's.
    start: [u64; MAX_MEMBERS],
    resync_start: u64,
    /// When the checkpoints were last asked to be persisted.
    last_checkpoint: Instant,
}

/// How often a running job's checkpoints are written to the superblocks.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

impl Job {
    /// Regions before `next` are done: moves the cursor and the members'
    /// checkpoints, and now and then asks for them to be persisted (the
    /// superblock write flushes the copies first).
    fn advance(&mut self, sh: &Shared, next: u64) {
        self.cursor = next;
        for m in 0..MAX_MEMBERS {
            if (self.full | self.bm) & (1 << m) != 0 {
                sh.roles[m].recovery_offset.fetch_max(next, AcqRel);
            }
        }
        if self.resync != 0 {
            sh.resync_cursor.store(next, Release);
        }
        if self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
            self.last_checkpoint = Instant::now();
            sh.request_sb();
        }
    }

    fn drop_changed(&mut self, sh: &Shared) {
        for m in 0..MAX_MEMBERS {
            if sh.roles[m].slot_gen.load(Acquire) != self.gens[m] {
                let keep = !(1u8 << m);
                self.full &= keep;
                self.bm &= keep;
                self.resync &= keep;
                self.targets &= keep;
            }
        }
    }
}

/// The background task of one array. Create it on the thread that will
/// poll it (it opens channels there), e.g. inside a reactor message, and
/// register `poll` as a poller; tests call `poll` in a loop.
pub struct RebuildTask {
    shared: Arc<Shared>,
    port: Option<Port>,
    buf: Option<AlignedBuf>,
    job: Option<Job>,
    clear_interval: Duration,
    last_clear: Instant,
    clear_pending: Vec<bool>,
    /// Bitmap blocks in `clear_pending`.
    clear_pending_n: usize,
    dones: Vec<Done>,
    blocked_at: Option<u64>,
    /// `events` when `start_job` last found nothing to start: every state
    /// change that could make a job startable bumps it.
    idle_events: Option<u64>,
    /// Polls since the clock was last read while idle.
    idle_polls: u32,
}

/// Idle polls between two looks at the clock (the clearer's period is
/// seconds; a poll is well under a microsecond).
const CLOCK_EVERY: u32 = 1024;

impl RebuildTask {
    pub(crate) fn new(shared: Arc<Shared>) -> RebuildTask {
        let n = shared.bm_blocks as usize;
        RebuildTask {
            shared,
            port: None,
            buf: None,
            job: None,
            clear_interval: DEFAULT_CLEAR_INTERVAL,
            last_clear: Instant::now(),
            clear_pending: vec![false; n],
            clear_pending_n: 0,
            dones: Vec::with_capacity(4 * MAX_MEMBERS),
            blocked_at: None,
            idle_events: None,
            idle_polls: 0,
        }
    }

    /// How long a dirty region must see no writes before its bit is
    /// cleared (two clearer passes; `ZERO` = every poll).
    pub fn set_clear_interval(&mut self, d: Duration) {
        self.clear_interval = d;
    }

    /// Whether there is (or may be) work: a job running or startable,
    /// metadata to write. Idle clearing does not count.
    pub fn has_work(&self) -> bool {
        let sh = &self.shared;
        let startable = self.blocked_at != Some(sh.events.load(Acquire))
            && ((0..sh.nroles())
                .any(|m| matches!(sh.state(m), ROLE_RECOVER_FULL | ROLE_RECOVER_BITMAP))
                || sh.resync_active.load(Acquire));
        self.job.is_some()
            || startable
            || sh.sb_done.load(Acquire) < sh.sb_gen.load(Acquire)
            || self.clear_pending_n > 0
            || self.port.as_ref().is_some_and(|p| p.meta_busy())
    }

    /// Polls until [`RebuildTask::has_work`] is false; `Err` after `timeout`.
    pub fn run_until_idle(&mut self, timeout: Duration) -> Result<(), String> {
        let end = Instant::now() + timeout;
        while self.has_work() {
            if self.poll() == 0 {
                std::thread::yield_now();
            }
            if Instant::now() > end {
                return Err(format!(
                    "raid1 {}: background work did not finish in {timeout:?}",
                    self.shared.name
                ));
            }
        }
        Ok(())
    }

    /// One step of background work; returns how much was done (0 = idle).
    ///
    /// Idle (no job, nothing in flight, no superblock or bitmap write
    /// wanted, no state change since the last look) it costs a few loads
    /// and reads the clock only every [`CLOCK_EVERY`] polls.
    pub fn poll(&mut self) -> usize {
        if self.job.is_none() && self.clear_pending_n == 0 {
            if let Some(port) = self.port.as_ref() {
                let sh = &*self.shared;
                if port.idle()
                    && self.idle_events == Some(sh.events.load(Acquire))
                    && port.seen_config() == sh.config_gen.load(Acquire)
                    && sh.sb_done.load(Acquire) >= sh.sb_gen.load(Acquire)
                {
                    self.idle_polls += 1;
                    if self.idle_polls < CLOCK_EVERY && !self.clear_interval.is_zero() {
                        return 0;
                    }
                    self.idle_polls = 0;
                    return self.clear();
                }
            }
        }
        let sh = Arc::clone(&self.shared);
        let port = self.port.get_or_insert_with(|| Port::new(Arc::clone(&sh)));
        port.refresh();
        let mut dones = std::mem::take(&mut self.dones);
        let mut n = port.poll(&mut |d| dones.push(d));
        for d in dones.drain(..) {
            self.on_done(d);
        }
        self.dones = dones;
        if let Some(p) = self.port.as_mut() {
            p.persist_sb();
        }
        if self.job.is_none() && !self.start_job() {
            n += self.clear();
            return n;
        }
        n + self.drive()
    }

    fn start_job(&mut self) -> bool {
        let sh = &self.shared;
        let Some(port) = self.port.as_ref() else {
            return false;
        };
        let events = sh.events.load(Acquire);
        if self.blocked_at == Some(events) || self.idle_events == Some(events) {
            return false;
        }
        let (mut full, mut bm) = (0u8, 0u8);
        for m in 0..sh.nroles() {
            if !port.attached(m) {
                continue;
            }
            match sh.state(m) {
                ROLE_RECOVER_FULL => full |= 1 << m,
                ROLE_RECOVER_BITMAP => bm |= 1 << m,
                _ => {}
            }
        }
        let mut resync = 0;
        if sh.resync_active.load(Acquire) {
            resync = sh.read_sources() & !(1 << sh.primary.load(Acquire));
            if resync == 0 {
                sh.resync_active.store(false, Release);
            }
        }
        if full | bm | resync == 0 {
            self.idle_events = Some(events);
            return false;
        }
        let start: [u64; MAX_MEMBERS] = std::array::from_fn(|m| {
            if (full | bm) & (1 << m) != 0 {
                sh.roles[m].recovery_offset.load(Acquire).min(sh.regions)
            } else {
                0
            }
        });
        let resync_start = if resync != 0 {
            sh.resync_cursor.load(Acquire).min(sh.regions)
        } else {
            0
        };
        // A full rebuild walks every region (below a member's checkpoint
        // the dirty ones are copied again); a dirty-only job starts at the
        // lowest checkpoint.
        let cursor = if full != 0 {
            0
        } else {
            let mut c = if resync != 0 {
                resync_start
            } else {
                sh.regions
            };
            for (m, &s) in start.iter().enumerate() {
                if bm & (1 << m) != 0 {
                    c = c.min(s);
                }
            }
            c
        };
        let total = if full != 0 {
            sh.regions
        } else {
            (cursor..sh.regions).filter(|&r| sh.dirty(r)).count() as u64
        };
        sh.job_total.store(total, Relaxed);
        sh.job_done.store(0, Relaxed);
        sh.job_active.store(true, Release);
        tracing::info!(raid1 = %sh.name, full, bitmap = bm, resync, regions = total, from = cursor, "rebuild started");
        self.job = Some(Job {
            full,
            bm,
            resync,
            cursor,
            started: Instant::now(),
            bytes: 0,
            step: Step::Find,
            region: 0,
            targets: 0,
            lba: 0,
            end: 0,
            n: 0,
            src: 0,
            tried: 0,
            bad_src: 0,
            to_issue: 0,
            pending: 0,
            gens: std::array::from_fn(|m| sh.roles[m].slot_gen.load(Acquire)),
            start,
            resync_start,
            last_checkpoint: Instant::now(),
        });
        true
    }

    fn finish_job(&mut self) {
        let sh = &self.shared;
        let Some(mut job) = self.job.take() else {
            return;
        };
        job.drop_changed(sh);
        for m in 0..MAX_MEMBERS {
            if (job.full | job.bm) & (1 << m) != 0 {
                let s = sh.state(m);
                if s == ROLE_RECOVER_FULL || s == ROLE_RECOVER_BITMAP {
                    sh.cas_state(m, s, ROLE_IN_SYNC);
                }
            }
        }
        if job.resync != 0 || sh.resync_active.load(Acquire) {
            sh.resync_active.store(false, Release);
        }
        sh.job_active.store(false, Release);
        sh.state_changed();
        tracing::info!(raid1 = %sh.name, bytes = job.bytes, "rebuild finished");
    }

    fn abort_job(&mut self, why: String) {
        let sh = &self.shared;
        tracing::warn!(raid1 = %sh.name, error = %why, "rebuild stopped");
        *sh.rebuild_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        sh.job_active.store(false, Release);
        self.job = None;
        self.blocked_at = Some(sh.events.load(Acquire));
    }

    fn drive(&mut self) -> usize {
        let sh = Arc::clone(&self.shared);
        let bs = sh.block_size as u64;
        let mut work = 0;
        loop {
            let Some(port) = self.port.as_mut() else {
                return work;
            };
            let Some(job) = self.job.as_mut() else {
                return work;
            };
            match job.step {
                Step::Find => {
                    let rate = sh.rate_mb_s.load(Relaxed);
                    if rate > 0 {
                        let allowed = rate as f64 * 1e6 * job.started.elapsed().as_secs_f64()
                            + PIECE_BYTES as f64;
                        if job.bytes as f64 >= allowed {
                            return work;
                        }
                    }
                    let mut r = job.cursor;
                    if job.full == 0 {
                        while r < sh.regions && !sh.dirty(r) {
                            r += 1;
                        }
                    }
                    if r >= sh.regions {
                        self.finish_job();
                        return work + 1;
                    }
                    job.region = r;
                    job.step = Step::Lock;
                }
                Step::Lock => {
                    let r = job.region;
                    if !sh.acquire_excl(r) {
                        return work;
                    }
                    job.drop_changed(&sh);
                    let dirty = sh.dirty(r);
                    let mut t = 0;
                    for m in 0..MAX_MEMBERS {
                        let bit = 1u8 << m;
                        let past = r >= job.start[m];
                        if (job.full & bit != 0 && (past || dirty))
                            || (job.bm & bit != 0 && past && dirty)
                        {
                            t |= bit;
                        }
                    }
                    if dirty && r >= job.resync_start {
                        t |= job.resync;
                    }
                    t &= port.live_targets();
                    if t == 0 {
                        sh.release_excl(r);
                        job.advance(&sh, r + 1);
                        job.step = Step::Find;
                        continue;
                    }
                    job.targets = t;
                    job.lba = r << sh.region_shift;
                    job.end = ((r + 1) << sh.region_shift).min(sh.data_blocks);
                    job.tried = 0;
                    job.bad_src = 0;
                    job.step = Step::Read;
                }
                Step::Read => {
                    let sources = sh.read_sources() & !job.targets & !job.tried;
                    let p = sh.primary.load(Acquire);
                    let src = if sources & (1 << p) != 0 {
                        Some(p)
                    } else {
                        (0..MAX_MEMBERS).find(|m| sources & (1 << m) != 0 && port.attached(*m))
                    };
                    let Some(src) = src else {
                        if job.bad_src != 0 {
                            // No mirror could read this piece (md: a bad
                            // block): record it and go on with the rest.
                            let (lba, n) = (job.lba, job.n);
                            tracing::error!(raid1 = %sh.name, lba, blocks = n,
                                "rebuild: no member can read these blocks; recorded as bad");
                            sh.add_bad(lba, n);
                            job.bad_src = 0;
                            job.tried = 0;
                            self.piece_done();
                            work += 1;
                            continue;
                        }
                        sh.release_excl(job.region);
                        let r = job.region;
                        self.abort_job(format!("no in-sync member could be read for region {r}"));
                        return work + 1;
                    };
                    job.src = src;
                    job.n = (PIECE_BYTES / bs).min(job.end - job.lba);
                    let buf = self
                        .buf
                        .get_or_insert_with(|| AlignedBuf::new(PIECE_BYTES as usize));
                    let v = [buf.iovec(0, (job.n * bs) as usize)];
                    let req = IoRequest::read(job.lba + sh.layout.data_offset, job.n, &v);
                    // SAFETY: `buf` is owned by the task and only reused
                    // once this copy completed; the task drops its port
                    // (and the child I/O) before the buffer.
                    match unsafe { port.submit(src, &req, KIND_COPY, 0) } {
                        Ok(()) => {
                            job.pending = 1;
                            job.step = Step::ReadWait;
                        }
                        Err(SubmitErr::Full) => return work,
                        Err(SubmitErr::Gone) => job.tried |= 1 << src,
                    }
                    work += 1;
                }
                Step::Write => {
                    let Some(buf) = self.buf.as_mut() else {
                        return work;
                    };
                    let v = [buf.iovec(0, (job.n * bs) as usize)];
                    let req = IoRequest::write(job.lba + sh.layout.data_offset, job.n, &v);
                    for m in 0..MAX_MEMBERS {
                        if job.to_issue & (1 << m) == 0 {
                            continue;
                        }
                        // SAFETY: as for the read.
                        match unsafe { port.submit(m, &req, KIND_COPY, 0) } {
                            Ok(()) => {
                                job.pending += 1;
                                job.to_issue &= !(1 << m);
                            }
                            Err(SubmitErr::Gone) => job.to_issue &= !(1 << m),
                            Err(SubmitErr::Full) => {}
                        }
                    }
                    if job.to_issue != 0 {
                        return work;
                    }
                    job.step = Step::WriteWait;
                    if job.pending == 0 {
                        self.piece_done();
                    }
                    work += 1;
                }
                Step::ReadWait | Step::WriteWait => return work,
            }
        }
    }

    fn on_done(&mut self, d: Done) {
        let sh = Arc::clone(&self.shared);
        if d.kind != KIND_COPY {
            return;
        }
        let Some(job) = self.job.as_mut() else { return };
        job.pending = job.pending.saturating_sub(1);
        let ok = d.status.is_ok() && d.current;
        match job.step {
            Step::ReadWait => {
                if ok {
                    // The sources that failed get the good copy too (as
                    // the read path repairs).
                    job.to_issue = job.targets | job.bad_src;
                    job.step = Step::Write;
                } else {
                    job.tried |= 1 << d.member;
                    if d.current && d.status == IoStatus::MediumError {
                        job.bad_src |= 1 << d.member;
                    } else if d.current {
                        sh.fail_io(d.member, "rebuild read failed");
                    }
                    job.step = Step::Read;
                }
            }
            Step::WriteWait | Step::Write => {
                if !ok {
                    if d.current {
                        sh.fail_io(d.member, "rebuild write failed");
                    }
                    let bit = !(1u8 << d.member);
                    job.targets &= bit;
                    job.full &= bit;
                    job.bm &= bit;
                    job.resync &= bit;
                }
                if job.step == Step::WriteWait && job.pending == 0 {
                    self.piece_done();
                }
            }
            _ => {}
        }
    }

    fn piece_done(&mut self) {
        let sh = Arc::clone(&self.shared);
        let Some(job) = self.job.as_mut() else { return };
        if job.bad_src != 0 {
            sh.read_repairs.fetch_add(1, Relaxed);
            tracing::warn!(raid1 = %sh.name, lba = job.lba, blocks = job.n, members = job.bad_src,
                "rebuild: read error repaired from another mirror");
        }
        job.bad_src = 0;
        job.tried = 0;
        let bytes = job.n * sh.block_size as u64;
        job.bytes += bytes;
        sh.copied_bytes.fetch_add(bytes, Relaxed);
        job.lba += job.n;
        if job.lba < job.end && job.targets != 0 {
            job.step = Step::Read;
            return;
        }
        let r = job.region;
        sh.release_excl(r);
        if job.targets & job.full != 0 {
            sh.rebuilt_regions.fetch_add(1, Relaxed);
        } else if job.targets != 0 {
            sh.resynced_regions.fetch_add(1, Relaxed);
        }
        sh.job_done.fetch_add(1, Relaxed);
        job.advance(&sh, r + 1);
        job.step = Step::Find;
    }

    /// Lazy clearing: a dirty region with no writes in flight is cleared
    /// after a full clearer period without writes; never while degraded or
    /// resyncing (the bits then record what a missing member lacks).
    fn clear(&mut self) -> usize {
        let sh = Arc::clone(&self.shared);
        let Some(port) = self.port.as_mut() else {
            return 0;
        };
        let mut work = 0;
        for b in 0..self.clear_pending.len() {
            if self.clear_pending[b] && port.persist_bitmap(b as u64, true) {
                self.clear_pending[b] = false;
                self.clear_pending_n -= 1;
                work += 1;
            }
        }
        if self.last_clear.elapsed() < self.clear_interval
            || sh.degraded()
            || sh.resync_active.load(Acquire)
        {
            return work;
        }
        self.last_clear = Instant::now();
        for r in 0..sh.regions {
            let a = &sh.region[r as usize];
            let cur = a.load(Acquire);
            if cur & DIRTY == 0 || cur & (INFLIGHT | EXCL | WAIT) != 0 {
                continue;
            }
            let new = if cur & TOUCHED != 0 {
                cur & !TOUCHED
            } else {
                cur & !(DIRTY | ON_DISK)
            };
            if a.compare_exchange(cur, new, AcqRel, Acquire).is_ok() && new & DIRTY == 0 {
                let b = sh.bm_block_of(r) as usize;
                if !self.clear_pending[b] {
                    self.clear_pending[b] = true;
                    self.clear_pending_n += 1;
                }
                work += 1;
            }
        }
        work
    }
}

impl Drop for RebuildTask {
    fn drop(&mut self) {
        if let Some(job) = &self.job {
            if job.step != Step::Find && job.step != Step::Lock {
                self.shared.release_excl(job.region);
            } else if job.step == Step::Lock {
                self.shared.cancel_wait(job.region);
            }
        }
        // The port (and its child I/O) goes before the copy buffer.
        self.port = None;
    }
}
