//! Fixed-capacity helpers for the hot path: no allocation after creation.

use crate::{IoStatus, IoVec};
use std::collections::VecDeque;

/// Completions decided at submit time (invalid requests, synchronous
/// modules), delivered from the next `poll` so that completion is never
/// re-entrant.
pub struct CompletionQueue {
    q: VecDeque<(u64, IoStatus)>,
}

impl CompletionQueue {
    /// A queue for up to `capacity` completions (it grows only if a module
    /// misuses it beyond its pool size).
    pub fn with_capacity(capacity: usize) -> Self {
        CompletionQueue {
            q: VecDeque::with_capacity(capacity),
        }
    }

    /// Queues a completion.
    pub fn push(&mut self, tag: u64, status: IoStatus) {
        self.q.push_back((tag, status));
    }

    /// Number queued.
    pub fn len(&self) -> usize {
        self.q.len()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    /// The submit path of a module that completes synchronously: refuses
    /// when `depth` completions are already queued, validates the request
    /// against `info`, runs `work` on valid requests, and queues the status
    /// for the next poll.
    pub fn submit_sync(
        &mut self,
        info: &crate::BdevInfo,
        req: &crate::IoRequest<'_>,
        tag: u64,
        work: impl FnOnce() -> IoStatus,
    ) -> Result<(), crate::QueueFull> {
        if self.len() >= info.queue_depth {
            return Err(crate::QueueFull);
        }
        let status = match crate::validate(info, req) {
            Err(st) => st,
            Ok(()) => work(),
        };
        self.push(tag, status);
        Ok(())
    }

    /// Reports everything queued now (not what `done` queues meanwhile).
    pub fn drain(&mut self, done: &mut dyn FnMut(u64, IoStatus)) -> usize {
        let n = self.q.len();
        for _ in 0..n {
            if let Some((tag, st)) = self.q.pop_front() {
                done(tag, st);
            }
        }
        n
    }
}

/// A fixed-capacity slab: O(1) insert / remove by slot index, free list.
pub struct Slab<T> {
    slots: Vec<Option<T>>,
    free: Vec<u32>,
}

impl<T> Slab<T> {
    /// A slab of `capacity` slots.
    pub fn with_capacity(capacity: usize) -> Self {
        let mut slots = Vec::with_capacity(capacity);
        slots.resize_with(capacity, || None);
        Slab {
            slots,
            free: (0..capacity as u32).rev().collect(),
        }
    }

    /// Stores `v`, returning its slot, or gives it back when full.
    pub fn insert(&mut self, v: T) -> Result<u32, T> {
        match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(v);
                Ok(i)
            }
            None => Err(v),
        }
    }

    /// Removes the value in `slot`.
    pub fn remove(&mut self, slot: u32) -> Option<T> {
        let v = self.slots.get_mut(slot as usize)?.take();
        if v.is_some() {
            self.free.push(slot);
        }
        v
    }

    /// The value in `slot`.
    pub fn get(&self, slot: u32) -> Option<&T> {
        self.slots.get(slot as usize)?.as_ref()
    }

    /// The value in `slot`, mutably.
    pub fn get_mut(&mut self, slot: u32) -> Option<&mut T> {
        self.slots.get_mut(slot as usize)?.as_mut()
    }

    /// Whether every slot is used.
    pub fn is_full(&self) -> bool {
        self.free.is_empty()
    }

    /// Slots in use.
    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Whether no slot is used.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Capacity.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Iterates over used slots.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|v| (i as u32, v)))
    }
}

/// A zeroed heap buffer aligned to 4096 bytes (good for O_DIRECT).
///
/// Registered in the [memory map](crate::memmap) for its whole lifetime
/// (a zero-length buffer is not), so I/O into it takes a transport's
/// zero-copy path.
pub struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
    /// Taken (unregistered) in `drop` before the memory is freed.
    reg: Option<crate::memmap::Registration>,
}

// SAFETY: an owned byte allocation with no thread affinity.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// `len` zeroed bytes (at least 1 byte is allocated).
    pub fn new(len: usize) -> AlignedBuf {
        let layout = std::alloc::Layout::from_size_align(len.max(1), 4096).expect("buffer layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory allocating {len} bytes");
        let reg = crate::memmap::register(ptr, len);
        AlignedBuf { ptr, len, reg }
    }

    /// The memory-map region this buffer is registered as (`None` when
    /// empty).
    pub fn region(&self) -> Option<crate::memmap::Region> {
        self.reg.as_ref().map(|r| r.region())
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points to `len` initialised bytes we own.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// One iovec over `[off, off + len)`.
    pub fn iovec(&mut self, off: usize, len: usize) -> IoVec {
        assert!(off + len <= self.len);
        IoVec {
            base: self.ptr.wrapping_add(off),
            len,
        }
    }

    /// Length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // Fields are dropped only after this body: unregister explicitly,
        // so listeners are told while the memory is still allocated.
        drop(self.reg.take());
        let layout =
            std::alloc::Layout::from_size_align(self.len.max(1), 4096).expect("buffer layout");
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr, layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slab_reuses_slots() {
        let mut s = Slab::with_capacity(2);
        let a = s.insert('a').unwrap();
        let b = s.insert('b').unwrap();
        assert_eq!(s.insert('c'), Err('c'));
        assert!(s.is_full());
        assert_eq!(s.remove(a), Some('a'));
        assert_eq!(s.remove(a), None);
        let c = s.insert('c').unwrap();
        assert_eq!(c, a);
        assert_eq!(s.get(b), Some(&'b'));
        assert_eq!(s.len(), 2);
        assert_eq!(s.remove(99), None);
    }

    #[test]
    fn aligned_buf_is_registered_for_its_lifetime() {
        use crate::memmap;
        use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
        /// Looks at the first byte of region `.0` when it goes.
        struct Watch(u64, AtomicU64);
        impl memmap::Listener for Watch {
            fn added(&self, _: &memmap::Region) {}
            fn removed(&self, r: &memmap::Region) {
                if r.id != self.0 {
                    return; // other tests' regions, some of them fake
                }
                // SAFETY: this is our buffer's region, and `removed` runs
                // before the buffer is freed.
                let first = unsafe { std::ptr::read_volatile(r.addr as *const u8) };
                self.1.store(first.into(), SeqCst);
            }
        }
        let mut buf = AlignedBuf::new(3 * 4096);
        buf.as_mut_slice()[0] = 0x5a;
        let addr = buf.as_slice().as_ptr() as usize;
        let r = buf.region().expect("registered");
        assert_eq!((r.addr, r.len), (addr, 3 * 4096));
        assert_eq!(memmap::find(addr + 4096, 4096), Some(r));
        let v = buf.iovec(512, 1024);
        assert_eq!(memmap::find(v.base as usize, v.len), Some(r));
        let w = std::sync::Arc::new(Watch(r.id, AtomicU64::new(0)));
        let _sub = memmap::subscribe(w.clone());
        drop(buf);
        assert_eq!(w.1.load(SeqCst), 0x5a, "removed() saw the live buffer");
        assert!(!memmap::regions().iter().any(|x| x.id == r.id));
        assert!(AlignedBuf::new(0).region().is_none());
    }
}
