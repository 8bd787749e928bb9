//! A bounded single-producer single-consumer ring (glommio / Lamport style).
//!
//! Producer and consumer indices live on separate cache lines; `push` and
//! `pop` never block and never allocate. One ring exists per (sender,
//! receiver) pair of reactors, so no ring ever has two producers.

use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicUsize, Ordering};

#[repr(align(64))]
struct CachePadded<T>(T);

/// A bounded SPSC ring of `T`.
pub struct SpscRing<T> {
    /// Next slot the consumer reads (only the consumer stores it).
    head: CachePadded<AtomicUsize>,
    /// Next slot the producer writes (only the producer stores it).
    tail: CachePadded<AtomicUsize>,
    mask: usize,
    slots: Box<[UnsafeCell<MaybeUninit<T>>]>,
}

// SAFETY: the ring hands each `T` from exactly one producer thread to exactly
// one consumer thread; slot ownership is transferred by the release/acquire
// pair on `tail` (producer → consumer) and `head` (consumer → producer), so
// no slot is ever accessed by two threads at once. `T: Send` is required
// because values cross threads.
unsafe impl<T: Send> Sync for SpscRing<T> {}
// SAFETY: see above; moving the ring moves owned `T`s, which are `Send`.
unsafe impl<T: Send> Send for SpscRing<T> {}

impl<T> SpscRing<T> {
    /// A ring holding up to `capacity` items, rounded up to a power of two.
    pub fn new(capacity: usize) -> Self {
        let cap = capacity.max(2).next_power_of_two();
        let slots = (0..cap)
            .map(|_| UnsafeCell::new(MaybeUninit::uninit()))
            .collect();
        SpscRing {
            head: CachePadded(AtomicUsize::new(0)),
            tail: CachePadded(AtomicUsize::new(0)),
            mask: cap - 1,
            slots,
        }
    }

    /// Capacity in items.
    pub fn capacity(&self) -> usize {
        self.mask + 1
    }

    /// Producer side. Gives the value back when the ring is full.
    ///
    /// Must only be called by the single producer of this ring (the reactor
    /// API guarantees this: each ring has one sending thread, or a mutex
    /// serialises the control-plane senders).
    pub fn push(&self, value: T) -> Result<(), T> {
        let tail = self.tail.0.load(Ordering::Relaxed);
        let head = self.head.0.load(Ordering::Acquire);
        if tail.wrapping_sub(head) > self.mask {
            return Err(value);
        }
        let slot = &self.slots[tail & self.mask];
        // SAFETY: the slot at `tail` is not visible to the consumer until the
        // release store below, and the producer is unique, so we have
        // exclusive access; it holds no live value (the consumer moved it out
        // before advancing `head` past it).
        unsafe { (*slot.get()).write(value) };
        self.tail.0.store(tail.wrapping_add(1), Ordering::Release);
        Ok(())
    }

    /// Consumer side. `None` when empty. Must only be called by the single
    /// consumer (the owning reactor thread).
    pub fn pop(&self) -> Option<T> {
        let head = self.head.0.load(Ordering::Relaxed);
        let tail = self.tail.0.load(Ordering::Acquire);
        if head == tail {
            return None;
        }
        let slot = &self.slots[head & self.mask];
        // SAFETY: `head != tail` and the acquire load of `tail` make the
        // producer's write of this slot visible; the consumer is unique, and
        // the producer will not reuse the slot until `head` moves past it.
        let value = unsafe { (*slot.get()).assume_init_read() };
        self.head.0.store(head.wrapping_add(1), Ordering::Release);
        Some(value)
    }

    /// Whether the ring is empty (a snapshot).
    pub fn is_empty(&self) -> bool {
        self.head.0.load(Ordering::Acquire) == self.tail.0.load(Ordering::Acquire)
    }
}

impl<T> Drop for SpscRing<T> {
    fn drop(&mut self) {
        while self.pop().is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn fills_and_drains_in_order() {
        let r = SpscRing::new(4);
        for i in 0..4 {
            r.push(i).unwrap();
        }
        assert_eq!(r.push(9), Err(9));
        for i in 0..4 {
            assert_eq!(r.pop(), Some(i));
        }
        assert_eq!(r.pop(), None);
    }

    #[test]
    fn crosses_threads_without_loss() {
        let r = Arc::new(SpscRing::new(64));
        let p = Arc::clone(&r);
        let n = 200_000u64;
        let t = std::thread::spawn(move || {
            for i in 0..n {
                let mut v = i;
                while let Err(back) = p.push(v) {
                    v = back;
                    std::hint::spin_loop();
                }
            }
        });
        let mut next = 0;
        while next < n {
            if let Some(v) = r.pop() {
                assert_eq!(v, next);
                next += 1;
            }
        }
        t.join().unwrap();
    }

    #[test]
    fn drop_releases_queued_values() {
        let marker = Arc::new(());
        let r = SpscRing::new(8);
        r.push(Arc::clone(&marker)).unwrap();
        r.push(Arc::clone(&marker)).unwrap();
        drop(r);
        assert_eq!(Arc::strong_count(&marker), 1);
    }
}
