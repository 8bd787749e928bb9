//! In-flight I/O tracking (`VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD`), split
//! rings, with the layout of the vhost-user specification:
//!
//! ```text
//! per queue: u64 features; u16 version; u16 desc_num; u16 last_batch_head;
//!            u16 used_idx; DescStateSplit desc[desc_num]
//! DescStateSplit: u8 inflight; u8 padding[5]; u16 next; u64 counter
//! ```
//!
//! The backend allocates the area (`GET_INFLIGHT_FD`, a memfd); QEMU keeps
//! the fd and hands it back after a reconnect (`SET_INFLIGHT_FD`), so a
//! restarted backend knows which requests the previous one had popped from
//! the avail ring and not completed, and resubmits them.
//!
//! Completion is recorded one request at a time: `last_batch_head = head`,
//! add the used element (publishing `used->idx`), `desc[head].inflight = 0`,
//! `used_idx = used->idx`. Whatever instant the process dies at, recovery
//! (`recover`) finds a consistent state: if `used_idx` lags the ring's
//! `used->idx` by one, the last request was published and is cleared.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicU8, Ordering};

const HEADER: usize = 16;
const DESC: usize = 16;
const ALIGN: usize = 64;
const VERSION: u16 = 1;

/// Bytes of the tracking area of one queue of `queue_size` descriptors.
pub(crate) fn queue_region_size(queue_size: u16) -> usize {
    (HEADER + DESC * queue_size as usize).div_ceil(ALIGN) * ALIGN
}

/// A mapped in-flight area shared with the frontend.
pub(crate) struct InflightRegion {
    ptr: *mut u8,
    size: usize,
    file: File,
    num_queues: u16,
    queue_size: u16,
}

// SAFETY: the mapping is plain shared memory accessed only through atomics
// (see `InflightQueue`); it has no thread affinity.
unsafe impl Send for InflightRegion {}
// SAFETY: as above.
unsafe impl Sync for InflightRegion {}

impl InflightRegion {
    /// A new zeroed area for `num_queues` queues of `queue_size` (memfd).
    pub fn create(num_queues: u16, queue_size: u16) -> std::io::Result<InflightRegion> {
        if num_queues == 0 || queue_size == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "empty in-flight area",
            ));
        }
        let size = num_queues as usize * queue_region_size(queue_size);
        // SAFETY: the name is a NUL-terminated literal; flags are valid.
        let fd =
            unsafe { libc::memfd_create(c"strata-vhost-inflight".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size as u64)?;
        let r = Self::map(file, 0, size, num_queues, queue_size)?;
        for q in 0..num_queues {
            if let Some(t) = r.queue(q, queue_size) {
                t.init();
            }
        }
        Ok(r)
    }

    /// Maps an area handed over by the frontend.
    pub fn map(
        file: File,
        offset: u64,
        size: usize,
        num_queues: u16,
        queue_size: u16,
    ) -> std::io::Result<InflightRegion> {
        if size < num_queues as usize * queue_region_size(queue_size) || size == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "in-flight area too small",
            ));
        }
        let Ok(off) = libc::off_t::try_from(offset) else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "in-flight offset too large",
            ));
        };
        // SAFETY: a fresh shared mapping of a file we own; the kernel checks
        // the offset and length. It is unmapped once, in Drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                off,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(InflightRegion {
            ptr: ptr.cast(),
            size,
            file,
            num_queues,
            queue_size,
        })
    }

    /// The file (to send to the frontend).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Size of the mapping.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Queues described.
    pub fn num_queues(&self) -> u16 {
        self.num_queues
    }

    /// Descriptors per queue.
    pub fn queue_size(&self) -> u16 {
        self.queue_size
    }

    /// The tracking area of queue `index` for a ring of `ring_size`
    /// descriptors; `None` if it does not fit.
    pub fn queue(&self, index: u16, ring_size: u16) -> Option<InflightQueue> {
        if index >= self.num_queues || ring_size > self.queue_size {
            return None;
        }
        let off = index as usize * queue_region_size(self.queue_size);
        // SAFETY: `off + queue_region_size(queue_size)` is within the
        // mapping (checked in `map`).
        let base = unsafe { self.ptr.add(off) };
        Some(InflightQueue {
            base,
            desc_num: ring_size,
        })
    }
}

impl Drop for InflightRegion {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`size` are the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.size) };
    }
}

/// One queue's tracking area. Only valid while its `InflightRegion` is
/// alive: holders keep an `Arc<InflightRegion>` next to it.
#[derive(Copy, Clone)]
pub(crate) struct InflightQueue {
    base: *mut u8,
    desc_num: u16,
}

// SAFETY: see `InflightRegion`; the owner keeps the mapping alive.
unsafe impl Send for InflightQueue {}

impl InflightQueue {
    fn u8_at(&self, off: usize) -> &AtomicU8 {
        // SAFETY: `off` is inside this queue's area (callers index
        // descriptors < desc_num); the mapping outlives `self`.
        unsafe { AtomicU8::from_ptr(self.base.add(off)) }
    }
    fn u16_at(&self, off: usize) -> &AtomicU16 {
        // SAFETY: as above; `off` is even and the area is 64-byte aligned.
        unsafe { AtomicU16::from_ptr(self.base.add(off).cast()) }
    }
    fn u64_at(&self, off: usize) -> &AtomicU64 {
        // SAFETY: as above; `off` is a multiple of 8.
        unsafe { AtomicU64::from_ptr(self.base.add(off).cast()) }
    }

    /// Zeroes the area and stamps version and size.
    pub fn init(&self) {
        for i in 0..self.desc_num as usize {
            self.u8_at(HEADER + i * DESC).store(0, Ordering::Relaxed);
            self.u64_at(HEADER + i * DESC + 8)
                .store(0, Ordering::Relaxed);
        }
        self.u64_at(0).store(0, Ordering::Relaxed);
        self.u16_at(10).store(self.desc_num, Ordering::Relaxed);
        self.u16_at(12).store(0, Ordering::Relaxed);
        self.u16_at(14).store(0, Ordering::Relaxed);
        self.u16_at(8).store(VERSION, Ordering::Release);
    }

    /// Recovery at queue start: fixes the last completion if the previous
    /// backend died in the middle of it, then returns the heads still in
    /// flight, oldest first, and the next counter value. `used_idx` is the
    /// ring's current `used->idx`.
    pub fn recover(&self, used_idx: u16, out: &mut Vec<u16>) -> u64 {
        out.clear();
        if self.u16_at(8).load(Ordering::Acquire) != VERSION
            || self.u16_at(10).load(Ordering::Relaxed) != self.desc_num
        {
            self.init();
            self.u16_at(14).store(used_idx, Ordering::Release);
            return 1;
        }
        if self.u16_at(14).load(Ordering::Acquire) != used_idx {
            let last = self.u16_at(12).load(Ordering::Relaxed);
            if last < self.desc_num {
                self.u8_at(HEADER + last as usize * DESC)
                    .store(0, Ordering::Release);
            }
            self.u16_at(14).store(used_idx, Ordering::Release);
        }
        let mut found: Vec<(u64, u16)> = Vec::new();
        let mut max = 0;
        for i in 0..self.desc_num {
            let at = HEADER + i as usize * DESC;
            let c = self.u64_at(at + 8).load(Ordering::Relaxed);
            max = max.max(c);
            if self.u8_at(at).load(Ordering::Acquire) == 1 {
                found.push((c, i));
            }
        }
        found.sort_unstable();
        out.extend(found.into_iter().map(|(_, h)| h));
        max + 1
    }

    /// Marks `head` popped from the avail ring.
    #[inline]
    pub fn start(&self, head: u16, counter: u64) {
        let at = HEADER + head as usize * DESC;
        self.u64_at(at + 8).store(counter, Ordering::Relaxed);
        self.u8_at(at).store(1, Ordering::Release);
    }

    /// Before publishing `head` in the used ring.
    #[inline]
    pub fn completing(&self, head: u16) {
        self.u16_at(12).store(head, Ordering::Release);
    }

    /// After publishing `head`; `used_idx` is the new `used->idx`.
    #[inline]
    pub fn completed(&self, head: u16, used_idx: u16) {
        self.u8_at(HEADER + head as usize * DESC)
            .store(0, Ordering::Release);
        self.u16_at(14).store(used_idx, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_resubmits_in_pop_order_and_fixes_a_torn_completion() {
        let r = InflightRegion::create(2, 8).unwrap();
        assert!(r.size() >= 2 * (16 + 8 * 16));
        let q = r.queue(1, 8).unwrap();
        let mut out = Vec::new();
        assert_eq!(q.recover(0, &mut out), 1);
        assert!(out.is_empty());
        q.start(5, 1);
        q.start(2, 2);
        q.start(7, 3);
        // 2 completes normally: used idx 1.
        q.completing(2);
        q.completed(2, 1);
        // 7 is published (used idx 2) but the process dies before it is
        // cleared.
        q.completing(7);
        let next = q.recover(2, &mut out);
        assert_eq!(out, vec![5]);
        assert_eq!(next, 4);
        // Remapping the same file (a restarted backend) sees the same.
        let again = InflightRegion::map(r.file().try_clone().unwrap(), 0, r.size(), 2, 8).unwrap();
        let mut out2 = Vec::new();
        again.queue(1, 8).unwrap().recover(2, &mut out2);
        assert_eq!(out2, vec![5]);
        assert!(again.queue(2, 8).is_none());
        assert!(again.queue(0, 16).is_none());
    }
}
