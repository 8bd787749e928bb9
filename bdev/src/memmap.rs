//! The process-wide memory map: every DMA-able region of this process
//! (SPDK's `spdk_mem_register` idea).
//!
//! Whoever owns memory that I/O may point into — a vhost-user memory table
//! while it is mapped, an [`AlignedBuf`](crate::AlignedBuf) for its
//! lifetime — [`register`]s it and keeps the returned [`Registration`];
//! dropping it unregisters the region. Consumers that need to prepare
//! memory for a device (an RDMA protection domain registers one MR per
//! region) [`subscribe`] a [`Listener`]: it is told about every region
//! already registered, then about each one added or removed, synchronously
//! and under the map's lock, so it never misses or double-sees a region.
//! The data path translates an address with [`find`], or keeps a per-reactor
//! copy of [`regions`] and refreshes it when [`generation`] moves.
//!
//! Regions may overlap (a buffer pool inside a guest region); each
//! registration is its own region with its own id.
//!
//! The map is a sorted `Vec` behind one `Mutex`: adding and removing are
//! control-plane operations (O(n) with a listener call each), [`find`] is a
//! binary search plus a short backward scan.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// One registered DMA-able region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// Unique for the life of the process (never reused).
    pub id: u64,
    /// Host virtual address of the first byte.
    pub addr: usize,
    /// Length in bytes (never 0).
    pub len: usize,
}

impl Region {
    /// One past the last byte (saturating at `usize::MAX`).
    fn end(&self) -> usize {
        self.addr.saturating_add(self.len)
    }

    /// Whether `[addr, end)` lies inside this region.
    fn contains(&self, addr: usize, end: usize) -> bool {
        self.addr <= addr && end <= self.end()
    }
}

/// Told about regions.
///
/// Callbacks run synchronously on the registering / unregistering thread,
/// under the map's lock (so a subscriber never misses or double-sees a
/// region). They must not call into this module ([`register`],
/// [`subscribe`], dropping a [`Registration`] or [`Subscription`], even
/// [`find`]): that deadlocks. They should not panic either: the panic
/// unwinds into whoever registered or unregistered the region.
pub trait Listener: Send + Sync {
    /// `r` is now registered (or was already when the listener subscribed).
    fn added(&self, r: &Region);
    /// `r` is being unregistered; its memory is still valid during the call
    /// and may be unmapped or freed as soon as the call returns.
    fn removed(&self, r: &Region);
}

struct State {
    /// Sorted by `(addr, id)`.
    regions: Vec<Region>,
    /// Longest region now registered (bounds the backward scan of `find`).
    max_len: usize,
    listeners: Vec<(u64, Arc<dyn Listener>)>,
    next_id: u64,
}

static MAP: Mutex<State> = Mutex::new(State {
    regions: Vec::new(),
    max_len: 0,
    listeners: Vec::new(),
    next_id: 1,
});

static GENERATION: AtomicU64 = AtomicU64::new(0);

fn lock() -> MutexGuard<'static, State> {
    // A panicking listener must not take the whole map down: the state
    // itself is updated before listeners run, so it is consistent.
    MAP.lock().unwrap_or_else(|e| e.into_inner())
}

fn key(r: &Region) -> (usize, u64) {
    (r.addr, r.id)
}

/// Keeps a region registered; unregisters it (notifying listeners) on drop.
#[derive(Debug)]
#[must_use = "the region is unregistered when the Registration is dropped"]
pub struct Registration {
    region: Region,
}

impl Registration {
    /// The registered region.
    pub fn region(&self) -> Region {
        self.region
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let r = self.region;
        let mut st = lock();
        let Ok(pos) = st.regions.binary_search_by_key(&key(&r), key) else {
            return;
        };
        st.regions.remove(pos);
        if r.len == st.max_len {
            st.max_len = st.regions.iter().map(|r| r.len).max().unwrap_or(0);
        }
        GENERATION.fetch_add(1, Ordering::Release);
        for (_, l) in &st.listeners {
            l.removed(&r);
        }
    }
}

/// Registers `len` bytes at `addr`; listeners are told (`added`) before
/// this returns. `None` for `len == 0`, or for a range that wraps around
/// the address space.
pub fn register(addr: *const u8, len: usize) -> Option<Registration> {
    let addr = addr as usize;
    if len == 0 || addr.checked_add(len).is_none() {
        return None;
    }
    let mut st = lock();
    let region = Region {
        id: st.next_id,
        addr,
        len,
    };
    st.next_id += 1;
    // Ids grow, so a new region goes after every other one at its address.
    let pos = st.regions.partition_point(|r| r.addr <= addr);
    st.regions.insert(pos, region);
    st.max_len = st.max_len.max(len);
    GENERATION.fetch_add(1, Ordering::Release);
    for (_, l) in &st.listeners {
        l.added(&region);
    }
    Some(Registration { region })
}

/// Keeps a [`Listener`] subscribed; dropping it unsubscribes (no callback
/// runs after the drop returns).
#[derive(Debug)]
#[must_use = "the listener is unsubscribed when the Subscription is dropped"]
pub struct Subscription {
    id: u64,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let removed = {
            let mut st = lock();
            st.listeners
                .iter()
                .position(|(id, _)| *id == self.id)
                .map(|pos| st.listeners.remove(pos))
        };
        // The listener's own Drop (if this was the last Arc) runs outside
        // the lock, so it may use the map.
        drop(removed);
    }
}

/// Subscribes `l`: `added` is called at once for every region already
/// registered (in address order), then for each new one; `removed` for
/// each one that goes.
pub fn subscribe(l: Arc<dyn Listener>) -> Subscription {
    let mut st = lock();
    let id = st.next_id;
    st.next_id += 1;
    for r in &st.regions {
        l.added(r);
    }
    st.listeners.push((id, l));
    Subscription { id }
}

/// A snapshot of the registered regions, sorted by address.
pub fn regions() -> Vec<Region> {
    lock().regions.clone()
}

/// The region containing `[addr, addr + len)`, if one does (a range
/// straddling two regions returns `None`). With overlapping regions, any
/// one that contains the whole range. `len == 0` asks for the region
/// containing the byte at `addr`.
pub fn find(addr: usize, len: usize) -> Option<Region> {
    let end = addr.checked_add(len.max(1))?;
    let st = lock();
    let upto = st.regions.partition_point(|r| r.addr <= addr);
    // Candidates start at or before `addr`; one starting before
    // `end - max_len` cannot reach `end`.
    let floor = end.saturating_sub(st.max_len);
    st.regions[..upto]
        .iter()
        .rev()
        .take_while(|r| r.addr >= floor)
        .find(|r| r.contains(addr, end))
        .copied()
}

/// A counter bumped on every add and remove, so a data-path cache (per
/// reactor) notices with one relaxed load that it must refresh.
pub fn generation() -> u64 {
    GENERATION.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The map is process-wide and other tests (every AlignedBuf) use it
    // concurrently, so these tests register fake addresses above the
    // 47-bit user address space (never dereferenced) and only look at
    // their own regions.
    const BASE: usize = 0x9000_0000_0000_0000;

    fn fake(test: usize, off: usize) -> *const u8 {
        (BASE + (test << 40) + off) as *const u8
    }

    fn mine(test: usize, r: &Region) -> bool {
        let lo = BASE + (test << 40);
        r.addr >= lo && r.addr < lo + (1 << 40)
    }

    #[derive(Debug, PartialEq, Eq)]
    enum Ev {
        Added(Region),
        Removed(Region),
    }

    struct Recorder {
        test: usize,
        events: Mutex<Vec<Ev>>,
    }

    impl Recorder {
        fn new(test: usize) -> Arc<Recorder> {
            Arc::new(Recorder {
                test,
                events: Mutex::new(Vec::new()),
            })
        }
        fn take(&self) -> Vec<Ev> {
            std::mem::take(&mut *self.events.lock().unwrap())
        }
    }

    impl Listener for Recorder {
        fn added(&self, r: &Region) {
            if mine(self.test, r) {
                self.events.lock().unwrap().push(Ev::Added(*r));
            }
        }
        fn removed(&self, r: &Region) {
            if mine(self.test, r) {
                self.events.lock().unwrap().push(Ev::Removed(*r));
            }
        }
    }

    fn my_regions(test: usize) -> Vec<Region> {
        regions().into_iter().filter(|r| mine(test, r)).collect()
    }

    #[test]
    fn register_and_unregister_notify_listeners() {
        let rec = Recorder::new(1);
        let _sub = subscribe(rec.clone());
        let a = register(fake(1, 0x1000), 0x2000).unwrap();
        let ra = a.region();
        assert_eq!((ra.addr, ra.len), (fake(1, 0x1000) as usize, 0x2000));
        assert_eq!(
            rec.take(),
            vec![Ev::Added(ra)],
            "told before register returns"
        );
        let b = register(fake(1, 0x8000), 0x1000).unwrap();
        let rb = b.region();
        assert_ne!(ra.id, rb.id);
        assert_eq!(rec.take(), vec![Ev::Added(rb)]);
        assert_eq!(my_regions(1), vec![ra, rb]);
        drop(a);
        assert_eq!(rec.take(), vec![Ev::Removed(ra)]);
        assert_eq!(my_regions(1), vec![rb]);
        drop(b);
        assert_eq!(rec.take(), vec![Ev::Removed(rb)]);
        assert!(my_regions(1).is_empty());
    }

    #[test]
    fn zero_length_and_wrapping_regions_are_refused() {
        assert!(register(fake(2, 0), 0).is_none());
        assert!(register((usize::MAX - 10) as *const u8, 100).is_none());
    }

    #[test]
    fn subscribe_sees_existing_regions_in_address_order() {
        let hi = register(fake(3, 0x9000), 0x1000).unwrap();
        let lo = register(fake(3, 0x1000), 0x1000).unwrap();
        let rec = Recorder::new(3);
        let sub = subscribe(rec.clone());
        assert_eq!(
            rec.take(),
            vec![Ev::Added(lo.region()), Ev::Added(hi.region())]
        );
        drop(sub);
        drop(lo);
        drop(hi);
    }

    #[test]
    fn dropped_subscription_gets_no_more_callbacks() {
        let rec = Recorder::new(4);
        let sub = subscribe(rec.clone());
        let a = register(fake(4, 0), 0x1000).unwrap();
        assert_eq!(rec.take(), vec![Ev::Added(a.region())]);
        drop(sub);
        let b = register(fake(4, 0x4000), 0x1000).unwrap();
        drop(a);
        drop(b);
        assert!(rec.take().is_empty());
        assert_eq!(Arc::strong_count(&rec), 1, "the map let go of the listener");
    }

    #[test]
    fn find_containing_straddling_and_overlapping_ranges() {
        let base = fake(5, 0) as usize;
        let a = register(fake(5, 0x1000), 0x1000).unwrap(); // [0x1000, 0x2000)
        let b = register(fake(5, 0x2000), 0x1000).unwrap(); // [0x2000, 0x3000), adjacent
        let ra = a.region();
        let rb = b.region();
        assert_eq!(find(base + 0x1000, 0x1000), Some(ra), "the whole region");
        assert_eq!(find(base + 0x1800, 0x10), Some(ra));
        assert_eq!(find(base + 0x1fff, 0), Some(ra), "len 0: the byte at addr");
        assert_eq!(find(base + 0x2000, 1), Some(rb));
        assert_eq!(find(base + 0x1ff0, 0x20), None, "straddles a and b");
        assert_eq!(find(base + 0x1000, 0x1001), None, "runs past a");
        assert_eq!(find(base + 0x800, 0x10), None, "before every region");
        assert_eq!(find(base + 0x3000, 1), None, "after every region");
        assert_eq!(find(usize::MAX, 2), None, "wraps");
        // A large region over both, and a small one inside `a`.
        let big = register(fake(5, 0), 0x10000).unwrap();
        let small = register(fake(5, 0x1100), 0x100).unwrap();
        assert_eq!(
            find(base + 0x1ff0, 0x20),
            Some(big.region()),
            "the straddling range is inside the big region"
        );
        let r = find(base + 0x1100, 0x100).unwrap();
        assert!([ra, big.region(), small.region()].contains(&r));
        let r = find(base + 0x1100, 0x200).unwrap();
        assert!([ra, big.region()].contains(&r), "not the small one");
        drop(big);
        assert_eq!(find(base + 0x1ff0, 0x20), None);
        assert_eq!(find(base + 0x1100, 0x200), Some(ra));
        drop(a);
        assert_eq!(find(base + 0x1100, 0x100), Some(small.region()));
        assert_eq!(find(base + 0x1000, 0x100), None);
        drop(small);
        drop(b);
        assert_eq!(find(base + 0x2000, 1), None);
    }

    #[test]
    fn generation_moves_on_every_change() {
        let g0 = generation();
        let a = register(fake(6, 0), 0x1000).unwrap();
        let g1 = generation();
        assert!(g1 > g0);
        drop(a);
        assert!(generation() > g1);
    }

    #[test]
    fn registration_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Registration>();
        check::<Subscription>();
        let a = register(fake(7, 0), 0x1000).unwrap();
        let r = a.region();
        std::thread::spawn(move || drop(a)).join().unwrap();
        assert_eq!(find(r.addr, 1), None);
    }
}
