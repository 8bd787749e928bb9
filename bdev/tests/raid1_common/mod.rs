//! Shared helpers for the raid1 tests: a small failing test double
//! (`Flaky`), workload drivers, member comparison.

#![allow(dead_code)]

use std::any::Any;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::*};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bdev::raid1::{self, CreateParams, Raid1Bdev, RebuildTask};
use bdev::testing::{check_pattern, fill_pattern, read, AlignedBuf};
use bdev::{
    malloc, open_channel, Bdev, BdevChannel, BdevError, BdevInfo, BdevStats, Channel,
    CompletionQueue, IoRequest, IoStatus, IoType, QueueFull,
};

/// Run-time failure controls of a [`Flaky`] bdev.
#[derive(Default)]
pub struct Ctl {
    /// Writes, flushes, unmaps fail with a medium error.
    pub fail_writes: AtomicBool,
    /// Every read fails with a path error.
    pub fail_reads: AtomicBool,
    /// Reads overlapping `[bad_start, bad_end)` fail with a medium error
    /// until a write covers the range (a remapped sector).
    pub bad_start: AtomicU64,
    pub bad_end: AtomicU64,
    /// After this many more writes, `fail_writes` turns on (<0: off).
    pub fail_writes_after: AtomicI64,
    /// The next this many writes complete with `Aborted` (not sent).
    pub abort_writes: AtomicU64,
    /// Flushes seen.
    pub flushes: AtomicU64,
    /// Flushes complete here (the bdev advertises a volatile cache over a
    /// base without one).
    pub own_flush: AtomicBool,
    /// Writes and flushes that went through, in order: (kind, lba, fua).
    pub log: std::sync::Mutex<Vec<(IoType, u64, bool)>>,
    /// Writes seen with FUA.
    pub fua_writes: AtomicU64,
    /// Reads that reached the base.
    pub reads: AtomicU64,
}

impl Ctl {
    pub fn set_bad_range(&self, start: u64, end: u64) {
        self.bad_start.store(start, SeqCst);
        self.bad_end.store(end, SeqCst);
    }
    pub fn bad_range(&self) -> (u64, u64) {
        (self.bad_start.load(SeqCst), self.bad_end.load(SeqCst))
    }
}

/// A pass-through bdev that fails on command.
pub struct Flaky {
    info: BdevInfo,
    base: Arc<dyn Bdev>,
    pub ctl: Arc<Ctl>,
    stats: BdevStats,
}

/// A [`flaky`] bdev that claims a volatile write cache (FLUSH and FUA
/// accepted) and logs the writes and flushes it passes on.
pub fn flaky_cached(name: &str, base: Arc<dyn Bdev>) -> (Arc<dyn Bdev>, Arc<Ctl>) {
    flaky_with(name, base, true)
}

pub fn flaky(name: &str, base: Arc<dyn Bdev>) -> (Arc<dyn Bdev>, Arc<Ctl>) {
    flaky_with(name, base, false)
}

fn flaky_with(name: &str, base: Arc<dyn Bdev>, cached: bool) -> (Arc<dyn Bdev>, Arc<Ctl>) {
    let mut info = base.info().clone();
    if cached {
        info.caps.flush = true;
        info.caps.fua = true;
    }
    info.name = name.to_string();
    info.kind = "flaky";
    let ctl = Arc::new(Ctl {
        fail_writes_after: AtomicI64::new(-1),
        own_flush: AtomicBool::new(cached),
        ..Default::default()
    });
    (
        Arc::new(Flaky {
            info,
            base,
            ctl: Arc::clone(&ctl),
            stats: BdevStats::default(),
        }),
        ctl,
    )
}

impl Bdev for Flaky {
    fn info(&self) -> &BdevInfo {
        &self.info
    }
    fn open_module_channel(&self) -> Result<Box<dyn BdevChannel>, BdevError> {
        Ok(Box::new(FlakyCh {
            base: open_channel(&self.base)?,
            ctl: Arc::clone(&self.ctl),
            cq: CompletionQueue::with_capacity(self.info.queue_depth),
        }))
    }
    fn base_bdevs(&self) -> Vec<String> {
        vec![self.base.info().name.clone()]
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn stats(&self) -> &BdevStats {
        &self.stats
    }
}

struct FlakyCh {
    base: Channel,
    ctl: Arc<Ctl>,
    cq: CompletionQueue,
}

impl BdevChannel for FlakyCh {
    unsafe fn submit(&mut self, req: &IoRequest<'_>, tag: u64) -> Result<(), QueueFull> {
        let c = &self.ctl;
        let (bs, be) = c.bad_range();
        let overlaps = req.offset_blocks < be && req.offset_blocks + req.num_blocks > bs;
        let fail = match req.io_type {
            IoType::Read => {
                if c.fail_reads.load(SeqCst) {
                    Some(IoStatus::PathError)
                } else if overlaps {
                    Some(IoStatus::MediumError)
                } else {
                    None
                }
            }
            IoType::Reset => None,
            _ => {
                if req.io_type == IoType::Write
                    && c.fail_writes_after.load(SeqCst) >= 0
                    && c.fail_writes_after.fetch_sub(1, SeqCst) == 0
                {
                    c.fail_writes.store(true, SeqCst);
                }
                c.fail_writes.load(SeqCst).then_some(IoStatus::MediumError)
            }
        };
        let fail = fail.or_else(|| {
            (req.io_type == IoType::Write
                && c.abort_writes
                    .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                    .is_ok())
            .then_some(IoStatus::Aborted)
        });
        if let Some(st) = fail {
            self.cq.push(tag, st);
            return Ok(());
        }
        if req.io_type == IoType::Read {
            c.reads.fetch_add(1, SeqCst);
        }
        if matches!(req.io_type, IoType::Flush | IoType::Write) {
            c.log
                .lock()
                .unwrap()
                .push((req.io_type, req.offset_blocks, req.fua));
        }
        if req.io_type == IoType::Flush {
            c.flushes.fetch_add(1, SeqCst);
            if c.own_flush.load(SeqCst) {
                self.cq.push(tag, IoStatus::Success);
                return Ok(());
            }
        }
        if req.io_type == IoType::Write {
            if req.fua {
                c.fua_writes.fetch_add(1, SeqCst);
            }
            if overlaps && req.offset_blocks <= bs && req.offset_blocks + req.num_blocks >= be {
                c.set_bad_range(0, 0);
            }
        }
        // SAFETY: forwarded contract.
        unsafe { self.base.submit(req, tag) }
    }
    fn poll(&mut self, done: &mut dyn FnMut(u64, IoStatus)) -> usize {
        self.cq.drain(done) + self.base.poll(done)
    }
    fn inflight(&self) -> usize {
        self.cq.len() + self.base.inflight()
    }
}

pub fn mem(name: &str, blocks: u64, bs: u32) -> Arc<dyn Bdev> {
    Arc::new(malloc::create(name, blocks, bs).unwrap())
}

pub fn params(name: &str, chunk_kb: u64) -> CreateParams {
    CreateParams {
        name: name.into(),
        bitmap_chunk_kb: Some(chunk_kb),
        ..Default::default()
    }
}

pub fn make(name: &str, chunk_kb: u64, members: &[&Arc<dyn Bdev>]) -> Arc<Raid1Bdev> {
    let mut p = params(name, chunk_kb);
    p.members = members.iter().map(|b| b.info().name.clone()).collect();
    raid1::create(&p, members.iter().map(|b| Arc::clone(b)).collect()).expect("create raid1")
}

pub fn as_dyn(r: &Arc<Raid1Bdev>) -> Arc<dyn Bdev> {
    r.clone()
}

pub fn data_offset(r: &Raid1Bdev) -> u64 {
    r.status()["data_offset_blocks"].as_u64().unwrap()
}

pub fn member_state(r: &Raid1Bdev, name: &str) -> String {
    let st = r.status();
    st["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .map(|m| m["state"].as_str().unwrap().to_string())
        .unwrap_or_else(|| "absent".into())
}

/// Reads `[lba, lba + n)` of a bdev directly.
pub fn read_direct(b: &Arc<dyn Bdev>, lba: u64, n: u64) -> AlignedBuf {
    let bs = b.info().block_size as usize;
    let mut ch = open_channel(b).unwrap();
    let mut buf = AlignedBuf::new(n as usize * bs);
    assert_eq!(
        read(&mut ch, lba, &mut buf),
        IoStatus::Success,
        "direct read of {}",
        b.info().name
    );
    buf
}

/// Whether two members hold the same array data.
pub fn members_equal(a: &Arc<dyn Bdev>, b: &Arc<dyn Bdev>, off: u64, n: u64) -> bool {
    read_direct(a, off, n).as_slice() == read_direct(b, off, n).as_slice()
}

/// One write or read of a workload.
#[derive(Copy, Clone, Debug)]
pub struct Io {
    pub io_type: IoType,
    pub lba: u64,
    pub blocks: u64,
    pub seed: u64,
}

/// Runs `ios` with up to `qd` in flight; writes carry `fill_pattern(lba,
/// seed)`, reads are checked against it. `tick` runs between polls (drive
/// a rebuild task, flip a failure). Returns the statuses in order.
pub fn run_ios(
    ch: &mut Channel,
    ios: &[Io],
    qd: usize,
    tick: &mut dyn FnMut(usize),
) -> Vec<IoStatus> {
    let bs = ch.info().block_size as usize;
    let max = ios.iter().map(|i| i.blocks).max().unwrap_or(1) as usize * bs;
    let mut bufs: Vec<AlignedBuf> = (0..qd).map(|_| AlignedBuf::new(max)).collect();
    let mut slot_io: Vec<Option<usize>> = vec![None; qd];
    let mut st = vec![None; ios.len()];
    let mut next = 0;
    let mut done = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while done < ios.len() {
        for s in 0..qd {
            if slot_io[s].is_some() || next >= ios.len() {
                continue;
            }
            let io = ios[next];
            let len = io.blocks as usize * bs;
            if io.io_type == IoType::Write {
                fill_pattern(&mut bufs[s].as_mut_slice()[..len], io.lba, bs, io.seed);
            }
            let v = [bufs[s].iovec(0, len)];
            let req = IoRequest {
                io_type: io.io_type,
                offset_blocks: io.lba,
                num_blocks: io.blocks,
                iovs: &v,
                fua: false,
            };
            // SAFETY: the buffers outlive the completions, which we wait for.
            match unsafe { ch.submit(&req, s as u64) } {
                Ok(()) => {
                    slot_io[s] = Some(next);
                    next += 1;
                }
                Err(QueueFull) => break,
            }
        }
        ch.poll(&mut |tag, status| {
            let s = tag as usize;
            let i = slot_io[s].take().expect("completion for an idle slot");
            let io = ios[i];
            let mut status = status;
            if io.io_type == IoType::Read && status.is_ok() {
                let len = io.blocks as usize * bs;
                if !check_pattern(&bufs[s].as_slice()[..len], io.lba, bs, io.seed) {
                    status = IoStatus::Aborted; // marks "bad data" for the caller
                }
            }
            st[i] = Some(status);
            done += 1;
        });
        tick(done);
        assert!(
            Instant::now() < deadline,
            "workload did not finish: {done}/{} done",
            ios.len()
        );
    }
    st.into_iter().map(|s| s.unwrap()).collect()
}

/// Writes of `blocks` each covering `[0, n_chunks * blocks)` once, in a
/// shuffled (deterministic) order.
pub fn shuffled_writes(n_chunks: u64, blocks: u64, seed: u64) -> Vec<Io> {
    let mut order: Vec<u64> = (0..n_chunks).collect();
    let mut x = seed | 1;
    for i in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    order
        .into_iter()
        .map(|c| Io {
            io_type: IoType::Write,
            lba: c * blocks,
            blocks,
            seed,
        })
        .collect()
}

/// Reads back what [`shuffled_writes`] wrote, through `ch`, checking data.
pub fn verify(ch: &mut Channel, n_chunks: u64, blocks: u64, seed: u64) {
    let reads: Vec<Io> = (0..n_chunks)
        .map(|c| Io {
            io_type: IoType::Read,
            lba: c * blocks,
            blocks,
            seed,
        })
        .collect();
    let st = run_ios(ch, &reads, 8, &mut |_| {});
    for (i, s) in st.iter().enumerate() {
        assert_eq!(
            *s,
            IoStatus::Success,
            "read of chunk {i} (Aborted = data mismatch)"
        );
    }
}

/// Polls a task until its work is done (bounded).
pub fn settle(task: &mut RebuildTask) {
    task.run_until_idle(Duration::from_secs(30)).unwrap();
}
