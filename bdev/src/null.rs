//! `null`: reads return zeroes, writes are dropped. For measuring the stack
//! above the bdev layer.

use std::any::Any;

use crate::{
    check_geometry, check_name, uuid_from_name, validate, Bdev, BdevChannel, BdevError, BdevInfo, BdevStats,
    Capabilities, CompletionQueue, IoRequest, IoStatus, IoType, QueueFull, DEFAULT_QUEUE_DEPTH, MAX_SEGMENTS,
};

/// A null bdev.
pub struct NullBdev {
    info: BdevInfo,
    stats: BdevStats,
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
            caps: Capabilities { flush: false, ..Capabilities::ALL },
            buf_align: 1,
            max_segments: MAX_SEGMENTS,
            queue_depth: DEFAULT_QUEUE_DEPTH,
        },
        stats: BdevStats::default(),
    })
}

impl Bdev for NullBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }
    fn open_module_channel(&self) -> Result<Box<dyn BdevChannel>, BdevError> {
        Ok(Box::new(NullChannel { info: self.info.clone(), cq: CompletionQueue::with_capacity(self.info.queue_depth) }))
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
}

impl BdevChannel for NullChannel {
    unsafe fn submit(&mut self, req: &IoRequest<'_>, tag: u64) -> Result<(), QueueFull> {
        if self.cq.len() >= self.info.queue_depth {
            return Err(QueueFull);
        }
        let status = match validate(&self.info, req) {
            Err(st) => st,
            Ok(()) => {
                if req.io_type == IoType::Read {
                    for v in req.iovs {
                        // SAFETY: the submitter lends us `v` exclusively until
                        // completion (the `submit` contract) and validate()
                        // checked it is non-null and non-empty.
                        unsafe { std::ptr::write_bytes(v.base, 0, v.len) };
                    }
                }
                IoStatus::Success
            }
        };
        self.cq.push(tag, status);
        Ok(())
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
    fn bad_params() {
        assert_eq!(
            create("n", 0, 512).err().unwrap().to_string(),
            "invalid parameter `num_blocks`: must be greater than zero"
        );
        assert!(create("", 1, 512).is_err());
        assert!(create("n", 1, 513).is_err());
    }
}
