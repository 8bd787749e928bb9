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
pub struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
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
        AlignedBuf { ptr, len }
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
}
