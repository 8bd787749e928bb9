//! Guest memory snapshots whose regions stay in the process memory map
//! ([`bdev::memmap`]) for exactly as long as they are mapped.
//!
//! A vhost-user region is mapped once ([`Mapping`]) and shared by the
//! control thread's table and every queue's snapshot ([`GuestMem`]),
//! including retired snapshots that requests in flight were translated
//! against. The [`bdev::memmap::Registration`] lives inside the
//! [`Mapping`], so the region leaves the map when the last user lets go —
//! after it left the table and nothing in flight points into it — and
//! just before the `munmap`.

use std::ops::Deref;
use std::sync::Arc;

use vm_memory::{GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap};

/// One mapped guest region and its memory-map registration.
pub(crate) struct Mapping {
    // Field order matters: the registration goes (listeners are told)
    // before the region's last `Arc` is dropped, which unmaps it.
    _reg: Option<bdev::memmap::Registration>,
    region: Arc<GuestRegionMmap>,
}

impl Mapping {
    /// Takes a freshly mapped region and registers its host address range.
    pub fn new(region: GuestRegionMmap) -> Mapping {
        let len = usize::try_from(region.len()).unwrap_or(0);
        let reg = bdev::memmap::register(region.as_ptr(), len);
        if reg.is_none() {
            tracing::warn!(
                gpa = region.start_addr().0,
                len,
                "guest memory region not registered in the memory map"
            );
        }
        Mapping {
            _reg: reg,
            region: Arc::new(region),
        }
    }

    /// The memory-map region (host addresses).
    #[cfg(test)]
    pub fn registered(&self) -> Option<bdev::memmap::Region> {
        self._reg.as_ref().map(|r| r.region())
    }
}

/// A guest memory snapshot: the `GuestMemoryMmap` of the vring code plus
/// the mappings it is built from, which it keeps alive (and registered).
pub(crate) struct GuestMem {
    // Dropped first: its region `Arc`s are never the last ones, the
    // mappings below hold one each.
    mem: GuestMemoryMmap,
    _maps: Vec<Arc<Mapping>>,
}

impl GuestMem {
    /// A snapshot over `maps` (non-overlapping in guest physical space).
    pub fn new(maps: Vec<Arc<Mapping>>) -> Result<GuestMem, vm_memory::GuestRegionCollectionError> {
        let mem = GuestMemoryMmap::from_arc_regions(
            maps.iter().map(|m| Arc::clone(&m.region)).collect(),
        )?;
        Ok(GuestMem { mem, _maps: maps })
    }

    /// A snapshot of memory that is not in the memory map (unit tests over
    /// anonymous memory).
    #[cfg(test)]
    pub fn unregistered(mem: GuestMemoryMmap) -> GuestMem {
        GuestMem {
            mem,
            _maps: Vec::new(),
        }
    }

    /// The guest memory.
    pub fn mmap(&self) -> &GuestMemoryMmap {
        &self.mem
    }
}

impl Deref for GuestMem {
    type Target = GuestMemoryMmap;

    fn deref(&self) -> &GuestMemoryMmap {
        &self.mem
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestAddress, MmapRegion};

    fn mapping(gpa: u64, len: usize) -> Arc<Mapping> {
        let r = GuestRegionMmap::new(MmapRegion::new(len).unwrap(), GuestAddress(gpa)).unwrap();
        Arc::new(Mapping::new(r))
    }

    #[test]
    fn a_region_stays_registered_while_any_snapshot_holds_it() {
        let a = mapping(0, 0x10000);
        let b = mapping(0x10000, 0x10000);
        let ra = a.registered().unwrap();
        let rb = b.registered().unwrap();
        assert_eq!(ra.addr, a.region.as_ptr() as usize);
        assert_eq!(ra.len, 0x10000);
        let old = GuestMem::new(vec![Arc::clone(&a), Arc::clone(&b)]).unwrap();
        let new = GuestMem::new(vec![Arc::clone(&b)]).unwrap();
        // The table lets go of `a`; the old snapshot still has it.
        drop(a);
        assert_eq!(bdev::memmap::find(ra.addr, ra.len), Some(ra));
        drop(old);
        assert!(!bdev::memmap::regions().iter().any(|r| r.id == ra.id));
        drop(b);
        assert_eq!(bdev::memmap::find(rb.addr + 8, 8), Some(rb));
        drop(new);
        assert!(!bdev::memmap::regions().iter().any(|r| r.id == rb.id));
    }
}
