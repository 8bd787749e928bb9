//! `strata bench vhost`: drives any vhost-user-blk server through libblkio's
//! `virtio-blk-vhost-user` driver (an independent frontend: the `blkio`
//! crate), from one client thread, at a fixed queue depth, with polling or
//! event-driven queues.

use std::mem::MaybeUninit;
use std::time::{Duration, Instant};

use blkio::{Blkio, Completion, ReqFlags};
use serde::Serialize;

use crate::{new_histogram, Latency, Rng};

/// Parameters.
#[derive(Clone, Debug, Serialize)]
pub struct Params {
    /// Socket of the vhost-user-blk server.
    pub socket: String,
    /// Bytes per I/O.
    pub io_size: usize,
    /// I/Os in flight.
    pub queue_depth: usize,
    /// Random writes instead of random reads.
    pub write: bool,
    /// A polling queue (`num-poll-queues`) instead of an event-driven one.
    pub poll: bool,
    /// Measured time.
    pub duration: Duration,
    /// Warm-up before measuring.
    pub warmup: Duration,
}

/// Errors.
#[derive(Debug, thiserror::Error)]
pub enum VhostBenchError {
    /// libblkio failed.
    #[error("libblkio: {0}")]
    Blkio(String),
    /// A parameter is wrong.
    #[error("invalid parameter `{0}`: {1}")]
    Param(&'static str, String),
    /// An I/O failed.
    #[error("an I/O failed with {0}")]
    Io(i32),
}

/// Connects libblkio's `virtio-blk-vhost-user` driver to `socket` with
/// one queue, polled or event-driven, and starts it. `None` for the queue
/// if the driver gave none.
pub(crate) fn connect(
    socket: &str,
    poll: bool,
) -> Result<(Blkio, Option<blkio::Blkioq>), blkio::Error> {
    let mut b = Blkio::new("virtio-blk-vhost-user")?;
    b.set_str("path", socket)?;
    b.connect()?;
    b.set_i32("num-queues", if poll { 0 } else { 1 })?;
    b.set_i32("num-poll-queues", if poll { 1 } else { 0 })?;
    let out = b.start()?;
    let q = out.queues.into_iter().chain(out.poll_queues).next();
    Ok((b, q))
}

fn be(e: blkio::Error) -> VhostBenchError {
    VhostBenchError::Blkio(e.to_string())
}

/// The result.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Parameters.
    pub params: Params,
    /// I/Os measured.
    pub ios: u64,
    /// Seconds measured.
    pub seconds: f64,
    /// I/Os per second.
    pub iops: f64,
    /// Completion latency.
    pub latency: Latency,
}

impl Report {
    /// A human-readable summary.
    pub fn to_text(&self) -> String {
        format!(
            "vhost {} {} qd={} bs={} {} queue {:.1}s\n  IOPS {} ({:.0})\n  latency us: mean {:.2}  p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            self.params.socket,
            if self.params.write { "randwrite" } else { "randread" },
            self.params.queue_depth,
            self.params.io_size,
            if self.params.poll { "polling" } else { "event-driven" },
            self.seconds,
            crate::human(self.iops),
            self.iops,
            self.latency.mean_us,
            self.latency.p50_us,
            self.latency.p99_us,
            self.latency.p999_us,
            self.latency.max_us
        )
    }
}

/// Connects, runs the workload, disconnects.
pub fn run(p: Params) -> Result<Report, VhostBenchError> {
    if p.queue_depth == 0 || p.queue_depth > 1024 {
        return Err(VhostBenchError::Param(
            "queue_depth",
            "must be 1..=1024".into(),
        ));
    }
    if p.io_size == 0 || !p.io_size.is_multiple_of(512) {
        return Err(VhostBenchError::Param(
            "io_size",
            "must be a positive multiple of 512".into(),
        ));
    }
    let (mut b, q) = connect(&p.socket, p.poll).map_err(be)?;
    let mut q = q.ok_or_else(|| VhostBenchError::Blkio("no queue".into()))?;
    let capacity = b.get_u64("capacity").map_err(be)?;
    let span = capacity / p.io_size as u64;
    if span == 0 {
        return Err(VhostBenchError::Param(
            "io_size",
            "larger than the device".into(),
        ));
    }
    let region_len = (p.io_size * p.queue_depth).next_multiple_of(2 << 20);
    let mem = b.alloc_mem_region(region_len).map_err(be)?;
    b.map_mem_region(&mem).map_err(be)?;
    let base = mem.addr as *mut u8;
    let mut rng = Rng::new(0x7e57);
    let mut started = vec![Instant::now(); p.queue_depth];
    let mut comps: Vec<MaybeUninit<Completion>> =
        (0..p.queue_depth).map(|_| MaybeUninit::uninit()).collect();
    let submit = |q: &mut blkio::Blkioq, slot: usize, rng: &mut Rng| {
        let off = rng.below(span) * p.io_size as u64;
        let buf = base.wrapping_add(slot * p.io_size);
        if p.write {
            q.write(off, buf, p.io_size, slot, ReqFlags::empty());
        } else {
            q.read(off, buf, p.io_size, slot, ReqFlags::empty());
        }
    };
    let t0 = Instant::now();
    for (slot, s) in started.iter_mut().enumerate() {
        *s = t0;
        submit(&mut q, slot, &mut rng);
    }
    let mut hist = new_histogram();
    let mut ios = 0u64;
    let measure_from = t0 + p.warmup;
    let end = measure_from + p.duration;
    let mut measuring = false;
    let mut measure_start = measure_from;
    let mut outstanding = p.queue_depth;
    let min = if p.poll { 0 } else { 1 };
    loop {
        let mut timeout = Duration::from_secs(20);
        let n = q
            .do_io(&mut comps, min, Some(&mut timeout), None)
            .map_err(be)?;
        if n == 0 {
            if !p.poll {
                return Err(VhostBenchError::Blkio("no completion within 20 s".into()));
            }
            continue;
        }
        let now = Instant::now();
        if !measuring && now >= measure_from {
            measuring = true;
            measure_start = now;
        }
        let stop = now >= end;
        for c in &comps[..n] {
            // SAFETY: do_io initialised the first `n` completions.
            let c = unsafe { c.assume_init_read() };
            outstanding -= 1;
            if c.ret < 0 {
                return Err(VhostBenchError::Io(c.ret));
            }
            let slot = c.user_data;
            if measuring {
                hist.saturating_record(now.duration_since(started[slot]).as_nanos().max(1) as u64);
                ios += 1;
            }
            if !stop {
                started[slot] = now;
                submit(&mut q, slot, &mut rng);
                outstanding += 1;
            }
        }
        if stop && outstanding == 0 {
            let secs = now.duration_since(measure_start).as_secs_f64().max(1e-9);
            drop(q);
            drop(b);
            return Ok(Report {
                iops: ios as f64 / secs,
                ios,
                seconds: secs,
                latency: Latency::from_histogram(&hist),
                params: p,
            });
        }
    }
}
