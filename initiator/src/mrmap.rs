//! The session's view of the process-wide memory map: one RDMA memory
//! region per registered DMA-able region (`bdev::memmap`), in the session's
//! protection domain, so that an iovec of guest memory or of a registered
//! buffer pool goes to the wire as (address, key) without a copy.
//!
//! The control plane (whoever registers memory) adds and removes MRs under
//! a lock; the data path keeps a per-channel snapshot of `(start, end,
//! lkey, rkey)` and checks one relaxed generation counter per lookup.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rdma::{AccessFlags, Mr, Pd};

/// One region as the data path sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MrEntry {
    pub start: usize,
    pub end: usize,
    pub lkey: u32,
    pub rkey: u32,
}

/// The MRs of one protection domain, kept in step with `bdev::memmap`.
pub(crate) struct MrTable {
    pd: Pd,
    mrs: Mutex<Vec<(u64, Mr)>>,
    snapshot: Mutex<Arc<Vec<MrEntry>>>,
    gen: AtomicU64,
    failures: AtomicU64,
}

impl MrTable {
    pub fn new(pd: Pd) -> Arc<MrTable> {
        Arc::new(MrTable {
            pd,
            mrs: Mutex::new(Vec::new()),
            snapshot: Mutex::new(Arc::new(Vec::new())),
            gen: AtomicU64::new(1),
            failures: AtomicU64::new(0),
        })
    }

    pub fn pd(&self) -> &Pd {
        &self.pd
    }

    /// Current generation (bumped on every change).
    pub fn generation(&self) -> u64 {
        self.gen.load(Ordering::Acquire)
    }

    /// The current entries.
    pub fn snapshot(&self) -> Arc<Vec<MrEntry>> {
        Arc::clone(&self.snapshot.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Regions that could not be registered.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Number of MRs.
    pub fn len(&self) -> usize {
        self.mrs.lock().map(|m| m.len()).unwrap_or(0)
    }

    fn rebuild(&self, mrs: &[(u64, Mr)]) {
        let mut v: Vec<MrEntry> = mrs
            .iter()
            .map(|(_, m)| MrEntry {
                start: m.addr() as usize,
                end: m.addr() as usize + m.len(),
                lkey: m.lkey(),
                rkey: m.rkey(),
            })
            .collect();
        v.sort_by_key(|e| e.start);
        *self.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(v);
        self.gen.fetch_add(1, Ordering::AcqRel);
    }
}

impl bdev::memmap::Listener for MrTable {
    fn added(&self, r: &bdev::memmap::Region) {
        let access = AccessFlags::LOCAL_WRITE
            .union(AccessFlags::REMOTE_WRITE)
            .union(AccessFlags::REMOTE_READ);
        // SAFETY: `bdev::memmap`'s contract: a region stays allocated and
        // mapped until it is unregistered, and unregistering calls
        // `removed` (which drops this MR) before the memory goes. The
        // registrant lends the memory to bdev I/O, during which the target
        // may read or write it by RDMA; outside I/O nobody sends the rkey.
        let mr = unsafe { Mr::register_raw(&self.pd, r.addr as *mut u8, r.len, access) };
        match mr {
            Ok(mr) => {
                let mut mrs = self.mrs.lock().unwrap_or_else(|e| e.into_inner());
                mrs.push((r.id, mr));
                self.rebuild(&mrs);
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(addr = format_args!("{:#x}", r.addr), len = r.len, error = %e,
                    "memory region not registered for RDMA; I/O there is bounced");
            }
        }
    }

    fn removed(&self, r: &bdev::memmap::Region) {
        let mut mrs = self.mrs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = mrs.iter().position(|(id, _)| *id == r.id) {
            mrs.remove(i);
            self.rebuild(&mrs);
        }
    }
}

/// A channel's cached copy of a table.
pub(crate) struct MrCache {
    table: Arc<MrTable>,
    gen: u64,
    entries: Arc<Vec<MrEntry>>,
}

impl MrCache {
    pub fn new(table: Arc<MrTable>) -> MrCache {
        let gen = table.generation();
        let entries = table.snapshot();
        MrCache {
            table,
            gen,
            entries,
        }
    }

    /// The entry covering `[addr, addr+len)`, if any.
    #[inline]
    pub fn lookup(&mut self, addr: usize, len: usize) -> Option<MrEntry> {
        let g = self.table.generation();
        if g != self.gen {
            self.gen = g;
            self.entries = self.table.snapshot();
        }
        let end = addr.checked_add(len)?;
        let e = &self.entries;
        let i = e.partition_point(|x| x.start <= addr);
        // Regions may overlap: look back from the last one starting at or
        // before `addr` (usually the first candidate fits).
        e[..i].iter().rev().find(|x| x.end >= end).copied()
    }
}
