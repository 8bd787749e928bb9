//! `error`: a pass-through bdev that injects failures, switchable at run
//! time — every Nth I/O, a block range, reads or writes or all, as medium
//! errors or path errors. RAID1, multipath and the SRP initiator are tested
//! with it.
//!
//! An injected failure never reaches the base bdev: a failed write leaves
//! the base untouched, as a real failed write may.

use std::any::Any;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use serde::Deserialize;

use crate::{
    check_name, open_channel, Bdev, BdevChannel, BdevError, BdevInfo, BdevStats, Channel,
    CompletionQueue, IoRequest, IoStatus, IoType, QueueFull,
};

/// Which I/O kinds to fail.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InjectIoType {
    /// Reads only.
    Read,
    /// Writes only.
    Write,
    /// Flushes only.
    Flush,
    /// Unmaps only.
    Unmap,
    /// Write-zeroes only.
    WriteZeroes,
    /// Every kind.
    All,
}

impl InjectIoType {
    fn mask(self) -> u8 {
        match self {
            InjectIoType::Read => 1 << IoType::Read as u8,
            InjectIoType::Write => 1 << IoType::Write as u8,
            InjectIoType::Flush => 1 << IoType::Flush as u8,
            InjectIoType::Unmap => 1 << IoType::Unmap as u8,
            InjectIoType::WriteZeroes => 1 << IoType::WriteZeroes as u8,
            InjectIoType::All => 0x3f & !(1 << IoType::Reset as u8),
        }
    }
}

/// The status an injected failure completes with.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum InjectStatus {
    /// A medium error (raid1 retries another member).
    #[default]
    Medium,
    /// A path error (multipath retries another path).
    Path,
}

/// `bdev_error_inject` parameters.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectParams {
    /// The error bdev.
    pub name: String,
    /// Which kinds to fail (default all).
    #[serde(default)]
    pub io_type: Option<InjectIoType>,
    /// Fail every Nth matching I/O (1 or absent = every one).
    #[serde(default)]
    pub every: Option<u64>,
    /// Only I/O overlapping `[first_block, first_block + num_blocks)`.
    #[serde(default)]
    pub range: Option<[u64; 2]>,
    /// Status to fail with (default medium).
    #[serde(default)]
    pub status: Option<InjectStatus>,
    /// Stop injecting.
    #[serde(default)]
    pub clear: bool,
}

/// The injection rule, read with relaxed atomics on every I/O.
#[derive(Default)]
struct Rule {
    /// Bit per `IoType` to fail; 0 = off.
    mask: AtomicU8,
    every: AtomicU64,
    range_start: AtomicU64,
    range_end: AtomicU64,
    status: AtomicU8,
    counter: AtomicU64,
    injected: AtomicU64,
}

/// An error-injecting bdev.
pub struct ErrorBdev {
    info: BdevInfo,
    stats: BdevStats,
    base: Arc<dyn Bdev>,
    rule: Arc<Rule>,
}

/// Creates an error bdev named `name` over `base` (injecting nothing yet).
pub fn create(name: &str, base: Arc<dyn Bdev>) -> Result<ErrorBdev, BdevError> {
    check_name(name)?;
    let mut info = base.info().clone();
    info.name = name.to_string();
    info.kind = "error";
    info.uuid = crate::uuid_from_name("error", name);
    let rule = Rule {
        range_end: AtomicU64::new(u64::MAX),
        ..Default::default()
    };
    Ok(ErrorBdev {
        info,
        stats: BdevStats::default(),
        base,
        rule: Arc::new(rule),
    })
}

impl ErrorBdev {
    /// Applies `bdev_error_inject` parameters.
    pub fn inject(&self, p: &InjectParams) -> Result<(), BdevError> {
        let r = &self.rule;
        if p.clear {
            r.mask.store(0, Ordering::Release);
            tracing::info!(bdev = %self.info.name, "error injection cleared");
            return Ok(());
        }
        let every = p.every.unwrap_or(1);
        if every == 0 {
            return Err(BdevError::param("every", "must be at least 1"));
        }
        let (start, end) = match p.range {
            None => (0, u64::MAX),
            Some([first, n]) => {
                if n == 0 {
                    return Err(BdevError::param("range", "block count must be at least 1"));
                }
                let end = first
                    .checked_add(n)
                    .filter(|e| *e <= self.info.num_blocks)
                    .ok_or_else(|| {
                        BdevError::param(
                            "range",
                            format!(
                                "[{first}, {n}] is beyond the bdev's {} blocks",
                                self.info.num_blocks
                            ),
                        )
                    })?;
                (first, end)
            }
        };
        r.mask.store(0, Ordering::Release);
        r.every.store(every, Ordering::Relaxed);
        r.range_start.store(start, Ordering::Relaxed);
        r.range_end.store(end, Ordering::Relaxed);
        r.status
            .store(p.status.unwrap_or_default() as u8, Ordering::Relaxed);
        r.counter.store(0, Ordering::Relaxed);
        r.mask.store(
            p.io_type.unwrap_or(InjectIoType::All).mask(),
            Ordering::Release,
        );
        tracing::info!(bdev = %self.info.name, ?p, "error injection armed");
        Ok(())
    }

    /// How many I/Os failed by injection so far.
    pub fn injected(&self) -> u64 {
        self.rule.injected.load(Ordering::Relaxed)
    }
}

impl Bdev for ErrorBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }
    fn open_module_channel(&self) -> Result<Box<dyn BdevChannel>, BdevError> {
        Ok(Box::new(ErrorChannel {
            base: open_channel(&self.base)?,
            rule: Arc::clone(&self.rule),
            cq: CompletionQueue::with_capacity(self.info.queue_depth),
            depth: self.info.queue_depth,
        }))
    }
    fn base_bdevs(&self) -> Vec<String> {
        vec![self.base.info().name.clone()]
    }
    fn driver_specific(&self) -> Option<serde_json::Value> {
        let r = &self.rule;
        Some(serde_json::json!({"error": {
            "base": self.base.info().name,
            "armed": r.mask.load(Ordering::Relaxed) != 0,
            "every": r.every.load(Ordering::Relaxed),
            "injected": self.injected(),
        }}))
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn stats(&self) -> &BdevStats {
        &self.stats
    }
}

struct ErrorChannel {
    base: Channel,
    rule: Arc<Rule>,
    cq: CompletionQueue,
    depth: usize,
}

impl ErrorChannel {
    fn should_fail(&self, req: &IoRequest<'_>) -> Option<IoStatus> {
        let r = &self.rule;
        let mask = r.mask.load(Ordering::Acquire);
        if mask & (1 << req.io_type as u8) == 0 {
            return None;
        }
        if req.io_type.has_range() {
            let end = req.offset_blocks.saturating_add(req.num_blocks);
            if end <= r.range_start.load(Ordering::Relaxed)
                || req.offset_blocks >= r.range_end.load(Ordering::Relaxed)
            {
                return None;
            }
        }
        let every = r.every.load(Ordering::Relaxed).max(1);
        let n = r.counter.fetch_add(1, Ordering::Relaxed) + 1;
        if !n.is_multiple_of(every) {
            return None;
        }
        r.injected.fetch_add(1, Ordering::Relaxed);
        Some(
            if r.status.load(Ordering::Relaxed) == InjectStatus::Path as u8 {
                IoStatus::PathError
            } else {
                IoStatus::MediumError
            },
        )
    }
}

impl BdevChannel for ErrorChannel {
    unsafe fn submit(&mut self, req: &IoRequest<'_>, tag: u64) -> Result<(), QueueFull> {
        if self.cq.len() + self.base.inflight() >= self.depth {
            return Err(QueueFull);
        }
        if let Some(st) = self.should_fail(req) {
            self.cq.push(tag, st);
            return Ok(());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self, AlignedBuf};
    use crate::{malloc, open_channel};

    fn params(v: serde_json::Value) -> InjectParams {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn conformance_when_not_armed() {
        let base: Arc<dyn Bdev> = Arc::new(malloc::create("m", 256, 512).unwrap());
        let e: Arc<dyn Bdev> = Arc::new(create("e", base).unwrap());
        testing::conformance(&e, testing::Persistence::Zeroing);
    }

    #[test]
    fn injects_by_kind_range_and_count() {
        let base: Arc<dyn Bdev> = Arc::new(malloc::create("m", 256, 512).unwrap());
        let eb = Arc::new(create("e", Arc::clone(&base)).unwrap());
        let e: Arc<dyn Bdev> = eb.clone();
        let mut ch = open_channel(&e).unwrap();
        let mut buf = AlignedBuf::new(512);
        // Reads in blocks [10, 12) fail with a medium error.
        eb.inject(&params(
            serde_json::json!({"name": "e", "io_type": "read", "range": [10, 2]}),
        ))
        .unwrap();
        assert_eq!(testing::read(&mut ch, 9, &mut buf), IoStatus::Success);
        assert_eq!(testing::read(&mut ch, 10, &mut buf), IoStatus::MediumError);
        assert_eq!(testing::read(&mut ch, 11, &mut buf), IoStatus::MediumError);
        assert_eq!(testing::read(&mut ch, 12, &mut buf), IoStatus::Success);
        assert_eq!(
            testing::write(&mut ch, 10, &mut buf),
            IoStatus::Success,
            "writes not armed"
        );
        // Every 3rd write fails with a path error; a failed write never
        // reaches the base.
        eb.inject(&params(
            serde_json::json!({"name": "e", "io_type": "write", "every": 3, "status": "path"}),
        ))
        .unwrap();
        let got: Vec<IoStatus> = (0..6u64)
            .map(|i| {
                testing::fill_pattern(buf.as_mut_slice(), i, 512, 1);
                testing::write(&mut ch, i, &mut buf)
            })
            .collect();
        use IoStatus::*;
        assert_eq!(
            got,
            vec![Success, Success, PathError, Success, Success, PathError]
        );
        let mut bch = open_channel(&base).unwrap();
        let mut back = AlignedBuf::new(512);
        assert_eq!(testing::read(&mut bch, 2, &mut back), Success);
        assert!(
            back.as_slice().iter().all(|&b| b == 0),
            "failed write left the base untouched"
        );
        assert_eq!(eb.injected(), 4);
        eb.inject(&params(serde_json::json!({"name": "e", "clear": true})))
            .unwrap();
        assert_eq!(testing::write(&mut ch, 2, &mut buf), Success);
    }

    #[test]
    fn bad_injection_parameters() {
        let base: Arc<dyn Bdev> = Arc::new(malloc::create("m", 256, 512).unwrap());
        let eb = create("e", base).unwrap();
        let e = eb
            .inject(&params(serde_json::json!({"name": "e", "every": 0})))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid parameter `every`: must be at least 1"
        );
        let e = eb
            .inject(&params(
                serde_json::json!({"name": "e", "range": [250, 10]}),
            ))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid parameter `range`: [250, 10] is beyond the bdev's 256 blocks"
        );
        let bad: Result<InjectParams, _> =
            serde_json::from_value(serde_json::json!({"name": "e", "io_type": "bogus"}));
        assert!(bad
            .unwrap_err()
            .to_string()
            .contains("unknown variant `bogus`"));
    }
}
