//! `malloc`: a RAM disk. Unmapped and write-zeroed blocks read as zeroes.

use std::any::Any;
use std::sync::Arc;

use crate::{
    check_geometry, check_name, uuid_from_name, Bdev, BdevChannel, BdevError, BdevInfo, BdevStats,
    Capabilities, CompletionQueue, IoRequest, IoStatus, IoType, QueueFull, DEFAULT_QUEUE_DEPTH,
    MAX_SEGMENTS,
};

/// The memory of a malloc bdev, shared by its channels.
///
/// Like a disk, concurrent overlapping I/O from two reactors gives
/// unspecified (possibly mixed) contents; the bytes carry no invariants, so
/// that is a data-integrity question for the submitter, not a memory-safety
/// one. Channels only copy through raw pointers, never form references.
struct Memory {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

// SAFETY: `Memory` is a plain byte allocation accessed only through raw
// pointer copies bounded by `layout.size()`; it has no thread affinity.
unsafe impl Send for Memory {}
// SAFETY: as above; shared access is via raw copies (see type docs).
unsafe impl Sync for Memory {}

impl Drop for Memory {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `alloc_zeroed(layout)` and is freed once.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// A malloc bdev.
pub struct MallocBdev {
    info: BdevInfo,
    stats: BdevStats,
    mem: Arc<Memory>,
}

/// Creates a malloc bdev of `num_blocks` × `block_size` bytes, zeroed.
pub fn create(name: &str, num_blocks: u64, block_size: u32) -> Result<MallocBdev, BdevError> {
    check_name(name)?;
    check_geometry(block_size, num_blocks)?;
    let size = num_blocks * block_size as u64;
    let size = usize::try_from(size)
        .ok()
        .filter(|s| *s <= isize::MAX as usize / 2)
        .ok_or_else(|| {
            BdevError::param(
                "num_blocks",
                format!("{size} bytes is too large for memory"),
            )
        })?;
    let layout = std::alloc::Layout::from_size_align(size, 4096)
        .map_err(|e| BdevError::param("num_blocks", e.to_string()))?;
    // SAFETY: layout has a non-zero size (check_geometry rejects 0 blocks).
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
    if ptr.is_null() {
        return Err(BdevError::param(
            "num_blocks",
            format!("cannot allocate {size} bytes"),
        ));
    }
    Ok(MallocBdev {
        info: BdevInfo {
            name: name.to_string(),
            kind: "malloc",
            block_size,
            num_blocks,
            uuid: uuid_from_name("malloc", name),
            caps: Capabilities {
                flush: false,
                ..Capabilities::ALL
            },
            buf_align: 1,
            max_segments: MAX_SEGMENTS,
            queue_depth: DEFAULT_QUEUE_DEPTH,
        },
        stats: BdevStats::default(),
        mem: Arc::new(Memory { ptr, layout }),
    })
}

impl Bdev for MallocBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }
    fn open_module_channel(&self) -> Result<Box<dyn BdevChannel>, BdevError> {
        Ok(Box::new(MallocChannel {
            info: self.info.clone(),
            mem: Arc::clone(&self.mem),
            cq: CompletionQueue::with_capacity(self.info.queue_depth),
        }))
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn stats(&self) -> &BdevStats {
        &self.stats
    }
}

struct MallocChannel {
    info: BdevInfo,
    mem: Arc<Memory>,
    cq: CompletionQueue,
}

impl BdevChannel for MallocChannel {
    unsafe fn submit(&mut self, req: &IoRequest<'_>, tag: u64) -> Result<(), QueueFull> {
        let bs = self.info.block_size as usize;
        let mem = self.mem.ptr;
        self.cq.submit_sync(&self.info, req, tag, || {
            // In range: validate() checked offset + num_blocks <= num_blocks.
            let mut off = req.offset_blocks as usize * bs;
            match req.io_type {
                IoType::Read | IoType::Write => {
                    for v in req.iovs {
                        // SAFETY: `off + v.len` stays within the allocation
                        // because the iovec lengths sum to num_blocks * bs
                        // (validate); the iovec memory is lent to us by the
                        // submit contract; the two ranges belong to
                        // different allocations.
                        unsafe {
                            let disk = mem.add(off);
                            if req.io_type == IoType::Read {
                                std::ptr::copy_nonoverlapping(disk, v.base, v.len);
                            } else {
                                std::ptr::copy_nonoverlapping(v.base, disk, v.len);
                            }
                        }
                        off += v.len;
                    }
                }
                IoType::Unmap | IoType::WriteZeroes => {
                    let len = req.num_blocks as usize * bs;
                    // SAFETY: range checked by validate() as above.
                    unsafe { std::ptr::write_bytes(mem.add(off), 0, len) };
                }
                IoType::Flush | IoType::Reset => {}
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
        let b: Arc<dyn Bdev> = Arc::new(create("m0", 2048, 512).unwrap());
        testing::conformance(&b, testing::Persistence::Zeroing);
        let b: Arc<dyn Bdev> = Arc::new(create("m1", 256, 4096).unwrap());
        testing::conformance(&b, testing::Persistence::Zeroing);
    }

    #[test]
    fn too_large_is_a_clear_error() {
        let e = create("huge", u64::MAX / 65536, 65536)
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with("invalid parameter `num_blocks`"), "{e}");
    }
}
