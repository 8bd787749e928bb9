//! `delay`: a pass-through bdev that adds a fixed latency per I/O kind
//! (reads; writes and everything else). An I/O completes no earlier than
//! its submission time plus the configured latency, and never before the
//! base has completed it.

use std::any::Any;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{
    check_name, open_channel, Bdev, BdevChannel, BdevError, BdevInfo, BdevStats, Channel,
    IoRequest, IoStatus, IoType, QueueFull, Slab,
};

/// A delay bdev.
pub struct DelayBdev {
    info: BdevInfo,
    stats: BdevStats,
    base: Arc<dyn Bdev>,
    read_us: Arc<AtomicU64>,
    write_us: Arc<AtomicU64>,
}

/// Creates a delay bdev over `base`.
pub fn create(
    name: &str,
    base: Arc<dyn Bdev>,
    read_us: u64,
    write_us: u64,
) -> Result<DelayBdev, BdevError> {
    check_name(name)?;
    const MAX_US: u64 = 60_000_000;
    if read_us > MAX_US {
        return Err(BdevError::param(
            "read_us",
            format!("{read_us} exceeds {MAX_US} µs"),
        ));
    }
    if write_us > MAX_US {
        return Err(BdevError::param(
            "write_us",
            format!("{write_us} exceeds {MAX_US} µs"),
        ));
    }
    let mut info = base.info().clone();
    info.name = name.to_string();
    info.kind = "delay";
    info.uuid = crate::uuid_from_name("delay", name);
    Ok(DelayBdev {
        info,
        stats: BdevStats::default(),
        base,
        read_us: Arc::new(AtomicU64::new(read_us)),
        write_us: Arc::new(AtomicU64::new(write_us)),
    })
}

impl DelayBdev {
    /// Changes the latencies at run time.
    pub fn set_latency(&self, read_us: u64, write_us: u64) {
        self.read_us.store(read_us, Ordering::Relaxed);
        self.write_us.store(write_us, Ordering::Relaxed);
    }
}

impl Bdev for DelayBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }
    fn open_module_channel(&self) -> Result<Box<dyn BdevChannel>, BdevError> {
        let depth = self.info.queue_depth;
        Ok(Box::new(DelayChannel {
            base: open_channel(&self.base)?,
            read_us: Arc::clone(&self.read_us),
            write_us: Arc::clone(&self.write_us),
            slots: Slab::with_capacity(depth),
            held: VecDeque::with_capacity(depth),
        }))
    }
    fn base_bdevs(&self) -> Vec<String> {
        vec![self.base.info().name.clone()]
    }
    fn driver_specific(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({"delay": {
            "base": self.base.info().name,
            "read_us": self.read_us.load(Ordering::Relaxed),
            "write_us": self.write_us.load(Ordering::Relaxed),
        }}))
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn stats(&self) -> &BdevStats {
        &self.stats
    }
}

struct DelayChannel {
    base: Channel,
    read_us: Arc<AtomicU64>,
    write_us: Arc<AtomicU64>,
    /// Per request: caller tag and earliest completion time.
    slots: Slab<(u64, Instant)>,
    /// Completed by the base, waiting for their time: (tag, due, status).
    held: VecDeque<(u64, Instant, IoStatus)>,
}

impl BdevChannel for DelayChannel {
    unsafe fn submit(&mut self, req: &IoRequest<'_>, tag: u64) -> Result<(), QueueFull> {
        let us = if req.io_type == IoType::Read {
            &self.read_us
        } else {
            &self.write_us
        };
        let due = Instant::now() + Duration::from_micros(us.load(Ordering::Relaxed));
        let slot = self.slots.insert((tag, due)).map_err(|_| QueueFull)?;
        // SAFETY: forwarded contract.
        let r = unsafe { self.base.submit(req, slot as u64) };
        if r.is_err() {
            self.slots.remove(slot);
        }
        r
    }

    fn poll(&mut self, done: &mut dyn FnMut(u64, IoStatus)) -> usize {
        let DelayChannel {
            base, slots, held, ..
        } = self;
        base.poll(&mut |slot, st| {
            if let Some((tag, due)) = u32::try_from(slot).ok().and_then(|s| slots.remove(s)) {
                held.push_back((tag, due, st));
            }
        });
        if held.is_empty() {
            return 0;
        }
        let now = Instant::now();
        let mut n = 0;
        // Release everything due; entries are nearly in deadline order, and a
        // not-yet-due one only holds back those behind it briefly.
        let mut i = 0;
        while i < held.len() {
            if held[i].1 <= now {
                if let Some((tag, _, st)) = held.remove(i) {
                    done(tag, st);
                    n += 1;
                }
            } else {
                i += 1;
            }
        }
        n
    }

    fn inflight(&self) -> usize {
        self.slots.len() + self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self, AlignedBuf};
    use crate::{malloc, open_channel};

    #[test]
    fn conformance() {
        let base: Arc<dyn Bdev> = Arc::new(malloc::create("m", 256, 512).unwrap());
        let d: Arc<dyn Bdev> = Arc::new(create("d", base, 10, 20).unwrap());
        testing::conformance(&d, testing::Persistence::Zeroing);
    }

    #[test]
    fn adds_at_least_the_latency() {
        let base: Arc<dyn Bdev> = Arc::new(malloc::create("m", 256, 512).unwrap());
        let d: Arc<dyn Bdev> = Arc::new(create("d", base, 20_000, 0).unwrap());
        let mut ch = open_channel(&d).unwrap();
        let mut b = AlignedBuf::new(512);
        let t = Instant::now();
        assert_eq!(testing::read(&mut ch, 0, &mut b), IoStatus::Success);
        // A lower bound only: the delay is a minimum, never an upper bound.
        assert!(t.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn rejects_absurd_latency() {
        let base: Arc<dyn Bdev> = Arc::new(malloc::create("m", 256, 512).unwrap());
        let e = create("d", base, 61_000_000, 0).err().unwrap().to_string();
        assert_eq!(
            e,
            "invalid parameter `read_us`: 61000000 exceeds 60000000 µs"
        );
    }
}
