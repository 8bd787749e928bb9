//! `null`: reads return zeroes, writes are dropped. For measuring the stack
//! above the bdev layer.
//!
//! Zeroing a 4 KiB read buffer costs a 4 KiB store: at millions of IOPS per
//! core that is the memory bandwidth, not the stack, being measured. With
//! `zero_reads` off (SPDK's null bdev behaviour) reads leave the caller's
//! buffer untouched.

use std::any::Any;

use crate::{
    check_geometry, check_name, uuid_from_name, Bdev, BdevChannel, BdevError, BdevInfo, BdevStats,
    Capabilities, CompletionQueue, IoRequest, IoStatus, IoType, QueueFull, DEFAULT_QUEUE_DEPTH,
    MAX_SEGMENTS,
};

/// A null bdev.
pub struct NullBdev {
    info: BdevInfo,
    stats: BdevStats,
    zero_reads: bool,
}

impl NullBdev {
    /// Whether reads zero the caller's buffer (the default) or leave it
    /// untouched (SPDK's null bdev behaviour).
    pub fn with_zero_reads(mut self, zero: bool) -> Self {
        self.zero_reads = zero;
        self
    }
}

/// Creates a null bdev.
pub fn create(name: &str, num_blocks: u64, block_size: u32) -> Result<NullBdev, BdevError> {
    check_name(name)?;
    check_geometry(block_size, num_blocks)?;
    Ok(NullBdev {
        info: BdevInfo {
            name: name.to_string(),
            kind: "null",
            block_size,
            num_blocks,
            uuid: uuid_from_name("null", name),
            caps: Capabilities {
                flush: false,
                ..Capabilities::ALL
            },
            buf_align: 1,
            max_segments: MAX_SEGMENTS,
            queue_depth: DEFAULT_QUEUE_DEPTH,
        },
        stats: BdevStats::default(),
        zero_reads: true,
    })
}

impl Bdev for NullBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }
    fn open_module_channel(&self) -> Result<Box<dyn BdevChannel>, BdevError> {
        Ok(Box::new(NullChannel {
            info: self.info.clone(),
            cq: CompletionQueue::with_capacity(self.info.queue_depth),
            zero_reads: self.zero_reads,
        }))
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn stats(&self) -> &BdevStats {
        &self.stats
    }
}

struct NullChannel {
    info: BdevInfo,
    cq: CompletionQueue,
    zero_reads: bool,
}

impl BdevChannel for NullChannel {
    unsafe fn submit(&mut self, req: &IoRequest<'_>, tag: u64) -> Result<(), QueueFull> {
        let zero = req.io_type == IoType::Read && self.zero_reads;
        self.cq.submit_sync(&self.info, req, tag, || {
            if zero {
                for v in req.iovs {
                    // SAFETY: the submitter lends us `v` exclusively until
                    // completion (the `submit` contract) and validate()
                    // checked it is non-null and non-empty.
                    unsafe { std::ptr::write_bytes(v.base, 0, v.len) };
                }
            }
            IoStatus::Success
        })
    }

    fn poll(&mut self, done: &mut dyn FnMut(u64, IoStatus)) -> usize {
        self.cq.drain(done)
    }

    fn inflight(&self) -> usize {
        self.cq.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;

    #[test]
    fn conformance() {
        let b: std::sync::Arc<dyn Bdev> = std::sync::Arc::new(create("null0", 1024, 512).unwrap());
        testing::conformance(&b, testing::Persistence::None);
    }

    #[test]
    fn zero_reads_off_leaves_the_buffer_alone() {
        let b: std::sync::Arc<dyn Bdev> =
            std::sync::Arc::new(create("n", 64, 512).unwrap().with_zero_reads(false));
        let mut ch = crate::open_channel(&b).unwrap();
        let mut buf = testing::AlignedBuf::new(512);
        buf.as_mut_slice().fill(0xab);
        assert_eq!(testing::read(&mut ch, 0, &mut buf), IoStatus::Success);
        assert!(buf.as_slice().iter().all(|&x| x == 0xab));
    }

    #[test]
    fn bad_params() {
        assert_eq!(
            create("n", 0, 512).err().unwrap().to_string(),
            "invalid parameter `num_blocks`: must be greater than zero"
        );
        assert!(create("", 1, 512).is_err());
        assert!(create("n", 1, 513).is_err());
    }
}
