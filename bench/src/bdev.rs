//! `strata bench bdev`: a fixed-queue-depth workload on any bdev, one job
//! per reactor.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::bdev::testing::{fill_pattern, AlignedBuf};
use ::bdev::{open_channel, Bdev, IoRequest, IoStatus, IoVec};
use hdrhistogram::Histogram;
use reactor::{Poll, ReactorHandle};
use serde::Serialize;

use crate::{new_histogram, Latency, Rng};

/// Access pattern.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    /// Sequential reads.
    Read,
    /// Sequential writes.
    Write,
    /// Random reads.
    RandRead,
    /// Random writes.
    RandWrite,
    /// Random mix (see `read_pct`).
    RandRw,
    /// Sequential mix.
    Rw,
}

impl std::str::FromStr for Pattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "read" => Pattern::Read,
            "write" => Pattern::Write,
            "randread" => Pattern::RandRead,
            "randwrite" => Pattern::RandWrite,
            "randrw" => Pattern::RandRw,
            "rw" | "readwrite" => Pattern::Rw,
            _ => {
                return Err(format!(
                    "unknown pattern `{s}` (read, write, randread, randwrite, randrw, rw)"
                ))
            }
        })
    }
}

impl Pattern {
    fn random(self) -> bool {
        matches!(
            self,
            Pattern::RandRead | Pattern::RandWrite | Pattern::RandRw
        )
    }
    fn read_pct(self, mix: u8) -> u8 {
        match self {
            Pattern::Read | Pattern::RandRead => 100,
            Pattern::Write | Pattern::RandWrite => 0,
            Pattern::RandRw | Pattern::Rw => mix,
        }
    }
}

/// Workload parameters.
#[derive(Clone, Debug, Serialize)]
pub struct Params {
    /// Bytes per I/O (a multiple of the block size).
    pub io_size: usize,
    /// I/Os in flight per reactor.
    pub queue_depth: usize,
    /// Access pattern.
    pub pattern: Pattern,
    /// Reads as a percentage of a mixed workload.
    pub read_pct: u8,
    /// Measured run time.
    pub duration: Duration,
    /// Reactor indices to run jobs on.
    pub reactors: Vec<usize>,
}

/// Errors.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A parameter is wrong.
    #[error("invalid parameter `{0}`: {1}")]
    Param(&'static str, String),
    /// The bdev could not be opened.
    #[error("opening bdev: {0}")]
    Open(String),
    /// Reactor messaging failed.
    #[error(transparent)]
    Reactor(#[from] reactor::ReactorError),
    /// A job did not finish in time.
    #[error("job on reactor {0} did not finish")]
    Hung(usize),
}

/// The result of a run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Bdev name.
    pub bdev: String,
    /// Parameters.
    pub params: Params,
    /// I/Os completed in the measured period.
    pub ios: u64,
    /// I/Os that failed.
    pub errors: u64,
    /// Seconds measured.
    pub seconds: f64,
    /// I/Os per second.
    pub iops: f64,
    /// Megabytes (10^6) per second.
    pub mb_per_s: f64,
    /// Completion latency.
    pub latency: Latency,
}

impl Report {
    /// A human-readable summary.
    pub fn to_text(&self) -> String {
        format!(
            "bdev {} {:?} bs={} qd={} reactors={:?} {:.1}s\n  IOPS {} ({:.0})  {:.1} MB/s  errors {}\n  latency us: mean {:.2}  p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            self.bdev,
            self.params.pattern,
            self.params.io_size,
            self.params.queue_depth,
            self.params.reactors,
            self.seconds,
            crate::human(self.iops),
            self.iops,
            self.mb_per_s,
            self.errors,
            self.latency.mean_us,
            self.latency.p50_us,
            self.latency.p99_us,
            self.latency.p999_us,
            self.latency.max_us
        )
    }
}

/// Where a job leaves its result for the control thread.
type ResultSlot = Arc<Mutex<Option<Result<JobResult, String>>>>;

struct JobResult {
    hist: Histogram<u64>,
    ios: u64,
    errors: u64,
    elapsed: Duration,
}

/// Runs the workload and returns the merged report.
pub fn run(reactors: &ReactorHandle, bdev: Arc<dyn Bdev>, p: Params) -> Result<Report, BenchError> {
    let info = bdev.info().clone();
    let bs = info.block_size as usize;
    if p.io_size == 0 || !p.io_size.is_multiple_of(bs) {
        return Err(BenchError::Param(
            "io_size",
            format!("{} is not a multiple of the block size {bs}", p.io_size),
        ));
    }
    let blocks_per_io = (p.io_size / bs) as u64;
    if blocks_per_io > info.num_blocks {
        return Err(BenchError::Param("io_size", "larger than the bdev".into()));
    }
    if p.queue_depth == 0 || p.queue_depth > info.queue_depth {
        return Err(BenchError::Param(
            "queue_depth",
            format!(
                "{} must be between 1 and the bdev's {}",
                p.queue_depth, info.queue_depth
            ),
        ));
    }
    if p.read_pct > 100 {
        return Err(BenchError::Param("read_pct", "must be 0..=100".into()));
    }
    if p.reactors.is_empty() || p.reactors.iter().any(|&r| r >= reactors.len()) {
        return Err(BenchError::Param(
            "reactors",
            format!("must be indices below {}", reactors.len()),
        ));
    }
    let slots: Vec<ResultSlot> = p
        .reactors
        .iter()
        .map(|_| Arc::new(Mutex::new(None)))
        .collect();
    for (job, &r) in p.reactors.iter().enumerate() {
        let slot = Arc::clone(&slots[job]);
        let bdev = Arc::clone(&bdev);
        let p = p.clone();
        reactors.send(r, move || start_job(job, bdev, p, blocks_per_io, slot))?;
    }
    let deadline = Instant::now() + p.duration + Duration::from_secs(60);
    let mut hist = new_histogram();
    let (mut ios, mut errors, mut secs) = (0u64, 0u64, 0f64);
    for (job, slot) in slots.iter().enumerate() {
        loop {
            if let Some(r) = slot.lock().unwrap_or_else(|e| e.into_inner()).take() {
                let r = r.map_err(BenchError::Open)?;
                hist.add(&r.hist).ok();
                ios += r.ios;
                errors += r.errors;
                secs = secs.max(r.elapsed.as_secs_f64());
                break;
            }
            if Instant::now() > deadline {
                return Err(BenchError::Hung(p.reactors[job]));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let secs = secs.max(1e-9);
    let iops = ios as f64 / secs;
    Ok(Report {
        bdev: info.name,
        ios,
        errors,
        seconds: secs,
        iops,
        mb_per_s: iops * p.io_size as f64 / 1e6,
        latency: Latency::from_histogram(&hist),
        params: p,
    })
}

struct Slot {
    buf: AlignedBuf,
    started: Instant,
}

fn start_job(job: usize, bdev: Arc<dyn Bdev>, p: Params, blocks_per_io: u64, out: ResultSlot) {
    let mut ch = match open_channel(&bdev) {
        Ok(c) => c,
        Err(e) => {
            *out.lock().unwrap_or_else(|e| e.into_inner()) = Some(Err(e.to_string()));
            return;
        }
    };
    let bs = bdev.info().block_size as usize;
    let span = bdev.info().num_blocks / blocks_per_io;
    let read_pct = p.pattern.read_pct(p.read_pct) as u64;
    let random = p.pattern.random();
    let mut rng = Rng::new(0x5157_a7a0 ^ (job as u64 + 1).wrapping_mul(0x9e37_79b9));
    // Sequential jobs start at different places so they do not overlap.
    let mut next_seq = (span / p.reactors.len().max(1) as u64) * job as u64;
    let now = Instant::now();
    let mut slots: Vec<Slot> = (0..p.queue_depth)
        .map(|_| {
            let mut buf = AlignedBuf::new(p.io_size);
            fill_pattern(buf.as_mut_slice(), 0, bs, job as u64);
            Slot { buf, started: now }
        })
        .collect();
    let mut hist = new_histogram();
    let mut ios = 0u64;
    let mut errors = 0u64;
    let start = Instant::now();
    let end = start + p.duration;
    let mut stopping = false;
    reactor::inflight_add(p.queue_depth as u64);

    let mut submit = move |ch: &mut ::bdev::Channel, slots: &mut [Slot], i: usize, t: Instant| {
        let lba = if random {
            rng.below(span) * blocks_per_io
        } else {
            let l = next_seq * blocks_per_io;
            next_seq = (next_seq + 1) % span;
            l
        };
        let is_read = read_pct == 100 || (read_pct > 0 && rng.below(100) < read_pct);
        let s = &mut slots[i];
        s.started = t;
        let v = [IoVec {
            base: s.buf.as_mut_slice().as_mut_ptr(),
            len: s.buf.len(),
        }];
        let req = if is_read {
            IoRequest::read(lba, blocks_per_io, &v)
        } else {
            IoRequest::write(lba, blocks_per_io, &v)
        };
        // SAFETY: the slot's buffer is owned by this job, lent to exactly
        // one request at a time (a slot is resubmitted only after its
        // completion), and outlives the channel's requests because the job
        // waits for all completions before dropping `slots`.
        unsafe { ch.submit(&req, i as u64) }.is_ok()
    };
    let mut outstanding = 0usize;
    for i in 0..p.queue_depth {
        if submit(&mut ch, &mut slots, i, now) {
            outstanding += 1;
        }
    }
    let mut completed: Vec<(usize, IoStatus)> = Vec::with_capacity(p.queue_depth);
    let mut finished = false;
    let id_cell = std::rc::Rc::new(std::cell::Cell::new(None));
    let id_for_poller = std::rc::Rc::clone(&id_cell);
    let id = reactor::register_poller("bench_bdev", move || {
        if finished {
            return Poll::Idle;
        }
        completed.clear();
        ch.poll(&mut |tag, st| completed.push((tag as usize, st)));
        if completed.is_empty() && !stopping {
            return Poll::Idle;
        }
        let t = Instant::now();
        if !stopping && t >= end {
            stopping = true;
        }
        for &(i, st) in completed.iter() {
            outstanding -= 1;
            let lat = t.duration_since(slots[i].started).as_nanos() as u64;
            hist.saturating_record(lat.max(1));
            ios += 1;
            if st != IoStatus::Success {
                errors += 1;
            }
            if !stopping && !reactor::draining() && submit(&mut ch, &mut slots, i, t) {
                outstanding += 1;
            }
        }
        reactor::inflight_sub(completed.len() as u64);
        if !stopping && !reactor::draining() {
            reactor::inflight_add(completed.len() as u64);
        }
        if (stopping || reactor::draining()) && outstanding == 0 {
            let elapsed = t
                .duration_since(start)
                .min(p.duration.max(Duration::from_nanos(1)));
            let hist = std::mem::replace(&mut hist, new_histogram());
            *out.lock().unwrap_or_else(|e| e.into_inner()) = Some(Ok(JobResult {
                hist,
                ios,
                errors,
                elapsed,
            }));
            if let Some(id) = id_for_poller.get() {
                reactor::unregister_poller(id);
            }
            finished = true;
            return Poll::Busy;
        }
        Poll::Busy
    });
    id_cell.set(Some(id));
}

#[cfg(test)]
mod tests {
    use super::*;
    use reactor::{ReactorOptions, ReactorSet};

    #[test]
    fn runs_on_null_and_malloc_and_rejects_bad_params() {
        let set = ReactorSet::start(
            &[0, 1],
            ReactorOptions {
                pin: false,
                idle_sleep_us: 50,
                ..Default::default()
            },
        )
        .unwrap();
        let h = set.handle();
        let null: Arc<dyn Bdev> = Arc::new(::bdev::null::create("n", 1 << 20, 512).unwrap());
        let p = Params {
            io_size: 4096,
            queue_depth: 32,
            pattern: Pattern::RandRead,
            read_pct: 100,
            duration: Duration::from_millis(200),
            reactors: vec![0, 1],
        };
        let r = run(&h, Arc::clone(&null), p.clone()).unwrap();
        assert!(r.ios > 0 && r.errors == 0, "{r:?}");
        assert!(r.latency.p50_us <= r.latency.p99_us && r.latency.p99_us <= r.latency.max_us);
        let m: Arc<dyn Bdev> = Arc::new(::bdev::malloc::create("m", 4096, 512).unwrap());
        let r = run(
            &h,
            m,
            Params {
                pattern: Pattern::RandRw,
                read_pct: 70,
                ..p.clone()
            },
        )
        .unwrap();
        assert!(r.ios > 0 && r.errors == 0);
        let e = run(
            &h,
            Arc::clone(&null),
            Params {
                io_size: 1000,
                ..p.clone()
            },
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid parameter `io_size`: 1000 is not a multiple of the block size 512"
        );
        let e = run(
            &h,
            Arc::clone(&null),
            Params {
                queue_depth: 0,
                ..p.clone()
            },
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("invalid parameter `queue_depth`"));
        let e = run(
            &h,
            null,
            Params {
                reactors: vec![5],
                ..p
            },
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("invalid parameter `reactors`"));
        assert!(set.shutdown());
    }
}
