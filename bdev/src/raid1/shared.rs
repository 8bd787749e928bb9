//! Array-wide state seen by every channel: member states, the bitmap's
//! per-region words, metadata write serialisation, counters. Everything
//! the data path reads is an atomic; the member table (bdev handles) is
//! behind a mutex that channels take only when `config_gen` changed.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering::*};
use std::sync::{Arc, Mutex, MutexGuard};

use super::sb::{self, Layout, RoleEntry, Superblock};
use super::MAX_MEMBERS;
use crate::Bdev;

/// One completed state change in [`Shared::view_word`].
pub(crate) const VIEW_ONE: u64 = 1 << 16;
/// State changes under way in [`Shared::view_word`].
pub(crate) const VIEW_BUSY: u64 = VIEW_ONE - 1;

/// Runtime role state: a role defined in the superblock with no device.
pub const ROLE_MISSING: u8 = 5;

// Region word: in-flight writes in the low bits, flags above.
pub(crate) const INFLIGHT: u32 = 0x00ff_ffff;
/// Set in memory before a write is issued; the on-disk bit follows.
pub(crate) const DIRTY: u32 = 1 << 24;
/// The last completed bitmap write had this region dirty, and it has not
/// been cleared since: writes may go without waiting.
pub(crate) const ON_DISK: u32 = 1 << 25;
/// Written since the clearer last looked.
pub(crate) const TOUCHED: u32 = 1 << 26;
/// Held exclusively (rebuild copy, read repair).
pub(crate) const EXCL: u32 = 1 << 27;
/// Someone waits for exclusive access: new writes wait too.
pub(crate) const WAIT: u32 = 1 << 28;

pub(crate) struct Role {
    pub state: AtomicU8,
    pub dev_uuid: [AtomicU64; 2],
    pub write_mostly: AtomicBool,
    /// Bumped whenever the device attached to this role changes.
    pub slot_gen: AtomicU64,
    /// Rebuild / resync checkpoint of a recovering member: regions before
    /// this one have been copied to it (persisted, md's `recovery_offset`).
    pub recovery_offset: AtomicU64,
}

impl Role {
    fn new() -> Role {
        Role {
            state: AtomicU8::new(sb::ROLE_EMPTY),
            dev_uuid: [AtomicU64::new(0), AtomicU64::new(0)],
            write_mostly: AtomicBool::new(false),
            slot_gen: AtomicU64::new(0),
            recovery_offset: AtomicU64::new(0),
        }
    }
    pub fn uuid(&self) -> [u8; 16] {
        let mut u = [0u8; 16];
        u[..8].copy_from_slice(&self.dev_uuid[0].load(Relaxed).to_le_bytes());
        u[8..].copy_from_slice(&self.dev_uuid[1].load(Relaxed).to_le_bytes());
        u
    }
    pub fn set_uuid(&self, u: &[u8; 16]) {
        self.dev_uuid[0].store(
            u64::from_le_bytes(u[..8].try_into().unwrap_or([0; 8])),
            Relaxed,
        );
        self.dev_uuid[1].store(
            u64::from_le_bytes(u[8..].try_into().unwrap_or([0; 8])),
            Relaxed,
        );
    }
}

/// Name of a runtime role state.
pub fn state_name(s: u8) -> &'static str {
    match s {
        sb::ROLE_IN_SYNC => "in_sync",
        sb::ROLE_FAULTY => "faulty",
        sb::ROLE_RECOVER_FULL => "rebuilding",
        sb::ROLE_RECOVER_BITMAP => "resyncing",
        ROLE_MISSING => "missing",
        _ => "empty",
    }
}

pub(crate) fn is_write_target(s: u8) -> bool {
    matches!(
        s,
        sb::ROLE_IN_SYNC | sb::ROLE_RECOVER_FULL | sb::ROLE_RECOVER_BITMAP
    )
}

pub(crate) struct Shared {
    pub name: String,
    pub uuid: [u8; 16],
    pub layout: Layout,
    pub block_size: u32,
    pub data_blocks: u64,
    pub regions: u64,
    /// log2(blocks per region).
    pub region_shift: u32,
    /// Bitmap blocks in use.
    pub bm_blocks: u64,
    pub region: Box<[AtomicU32]>,
    pub bm_busy: Box<[AtomicBool]>,
    pub roles: [Role; MAX_MEMBERS],
    pub num_roles: AtomicUsize,
    pub members: Mutex<[Option<Arc<dyn Bdev>>; MAX_MEMBERS]>,
    pub config_gen: AtomicU64,
    pub events: AtomicU64,
    pub clean: AtomicBool,
    /// Superblock generations: `sb_gen` is bumped by every state change,
    /// `sb_done` is the newest generation written to every live member.
    pub sb_gen: AtomicU64,
    pub sb_done: AtomicU64,
    pub sb_busy: AtomicBool,
    /// Member-state changes: completed ones above bit 16, those under way
    /// in the low 16 bits. A change announces itself here before it stores
    /// the state and again after: a channel's cached view is trusted only
    /// while this word is what it was built at, with nothing under way.
    pub view_word: AtomicU64,
    /// Newest superblock generation whose write reached no in-sync member:
    /// what waits for it fails.
    pub sb_failed: AtomicU64,
    /// `sb_gen` at the newest member failure: writes are acknowledged only
    /// once it is on disk (md's "superblock change pending").
    pub fail_gen: AtomicU64,
    /// Unclean-shutdown resync in progress: reads at or past the cursor go
    /// to `primary` only. Persisted (`FLAG_RESYNC`, `resync_offset`) so
    /// that a clean shutdown does not end it.
    pub resync_active: AtomicBool,
    pub resync_cursor: AtomicU64,
    pub primary: AtomicUsize,
    // Counters for status.
    pub resynced_regions: AtomicU64,
    pub rebuilt_regions: AtomicU64,
    pub copied_bytes: AtomicU64,
    pub job_total: AtomicU64,
    pub job_done: AtomicU64,
    pub job_active: AtomicBool,
    pub rate_mb_s: AtomicU64,
    pub read_repairs: AtomicU64,
    /// Bitmap writes that reached no member: writes waiting on the bitmap
    /// give up (no member can take writes any more).
    pub bm_failures: AtomicU64,
    pub rebuild_error: Mutex<Option<String>>,
    /// Ranges (array LBA, blocks) a rebuild or resync could read from no
    /// member: the copy went on without them (md's bad-block list).
    pub bad_blocks: Mutex<Vec<(u64, u64)>>,
    /// Entries in `bad_blocks` (the data path looks only when non-zero).
    pub bad_count: AtomicUsize,
}

impl Shared {
    pub fn new(name: &str, uuid: [u8; 16], layout: Layout, data_blocks: u64) -> Shared {
        let bs = layout.block_size;
        let regions = layout.regions(data_blocks);
        let bm_blocks = regions.div_ceil(bs as u64 * 8);
        let region_shift = (layout.chunk_bytes / bs as u64).trailing_zeros();
        Shared {
            name: name.to_string(),
            uuid,
            layout,
            block_size: bs,
            data_blocks,
            regions,
            region_shift,
            bm_blocks,
            region: (0..regions).map(|_| AtomicU32::new(0)).collect(),
            bm_busy: (0..bm_blocks).map(|_| AtomicBool::new(false)).collect(),
            roles: std::array::from_fn(|_| Role::new()),
            num_roles: AtomicUsize::new(0),
            members: Mutex::new(std::array::from_fn(|_| None)),
            config_gen: AtomicU64::new(1),
            events: AtomicU64::new(0),
            clean: AtomicBool::new(false),
            sb_gen: AtomicU64::new(1),
            sb_done: AtomicU64::new(0),
            sb_busy: AtomicBool::new(false),
            view_word: AtomicU64::new(0),
            sb_failed: AtomicU64::new(0),
            fail_gen: AtomicU64::new(0),
            resync_active: AtomicBool::new(false),
            resync_cursor: AtomicU64::new(0),
            primary: AtomicUsize::new(0),
            resynced_regions: AtomicU64::new(0),
            rebuilt_regions: AtomicU64::new(0),
            copied_bytes: AtomicU64::new(0),
            job_total: AtomicU64::new(0),
            job_done: AtomicU64::new(0),
            job_active: AtomicBool::new(false),
            rate_mb_s: AtomicU64::new(0),
            read_repairs: AtomicU64::new(0),
            bm_failures: AtomicU64::new(0),
            rebuild_error: Mutex::new(None),
            bad_blocks: Mutex::new(Vec::new()),
            bad_count: AtomicUsize::new(0),
        }
    }

    pub fn members(&self) -> MutexGuard<'_, [Option<Arc<dyn Bdev>>; MAX_MEMBERS]> {
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn state(&self, m: usize) -> u8 {
        self.roles[m].state.load(Acquire)
    }

    pub fn nroles(&self) -> usize {
        self.num_roles.load(Acquire)
    }

    /// Members that receive writes (in sync or recovering).
    pub fn write_targets(&self) -> u8 {
        let mut mask = 0u8;
        for m in 0..self.nroles() {
            if is_write_target(self.state(m)) {
                mask |= 1 << m;
            }
        }
        mask
    }

    /// Members that may be read (in sync).
    pub fn read_sources(&self) -> u8 {
        let mut mask = 0u8;
        for m in 0..self.nroles() {
            if self.state(m) == sb::ROLE_IN_SYNC {
                mask |= 1 << m;
            }
        }
        mask
    }

    pub fn degraded(&self) -> bool {
        (0..self.nroles()).any(|m| self.state(m) != sb::ROLE_IN_SYNC)
    }

    /// Records a state change: bumps the event counter and asks for a
    /// superblock write. Returns the generation to wait for.
    pub fn state_changed(&self) -> u64 {
        self.events.fetch_add(1, AcqRel);
        self.sb_gen.fetch_add(1, AcqRel) + 1
    }

    /// First half of a member-state change: moves the view word (so that
    /// any write which can see the new state also sees that cached views
    /// are stale), then stores the state (`old`: only if it still is).
    /// [`Shared::end_state`] must follow.
    pub fn begin_state(&self, m: usize, old: Option<u8>, new: u8) -> bool {
        self.view_word.fetch_add(VIEW_ONE + 1, AcqRel);
        match old {
            None => {
                self.roles[m].state.store(new, Release);
                true
            }
            Some(o) => self.roles[m]
                .state
                .compare_exchange(o, new, AcqRel, Acquire)
                .is_ok(),
        }
    }

    /// Second half of a state change.
    pub fn end_state(&self) {
        self.view_word.fetch_add(VIEW_ONE - 1, AcqRel);
    }

    /// Stores a member state, visible to every write that starts after.
    pub fn set_state(&self, m: usize, s: u8) {
        self.begin_state(m, None, s);
        self.end_state();
    }

    /// Changes a member state from `old` to `new` if it still is `old`.
    pub fn cas_state(&self, m: usize, old: u8, new: u8) -> bool {
        let ok = self.begin_state(m, Some(old), new);
        self.end_state();
        ok
    }

    /// Records `[lba, lba + n)` as readable from no member.
    pub fn add_bad(&self, lba: u64, n: u64) {
        let mut b = self.bad_blocks.lock().unwrap_or_else(|e| e.into_inner());
        b.push((lba, n));
        self.bad_count.store(b.len(), Release);
    }

    /// Whether `[lba, lba + n)` overlaps a bad range (reads fail there
    /// rather than return what a rebuilt member was never given).
    pub fn overlaps_bad(&self, lba: u64, n: u64) -> bool {
        self.bad_count.load(Acquire) != 0
            && self
                .bad_blocks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .any(|&(b, m)| b < lba + n && lba < b + m)
    }

    /// A write of `[lba, lba + n)` reached every member: bad ranges it
    /// covers hold good data again.
    pub fn clear_bad(&self, lba: u64, n: u64) {
        if self.bad_count.load(Acquire) == 0 {
            return;
        }
        let mut b = self.bad_blocks.lock().unwrap_or_else(|e| e.into_inner());
        b.retain(|&(s, m)| !(lba <= s && s + m <= lba + n));
        self.bad_count.store(b.len(), Release);
    }

    /// Asks for a superblock write without a state change (checkpoints).
    pub fn request_sb(&self) -> u64 {
        self.sb_gen.fetch_add(1, AcqRel) + 1
    }

    /// A member failed an I/O. Following md, the last in-sync member is
    /// never failed (the I/O fails instead). Returns whether it was failed.
    pub fn fail_io(&self, m: usize, why: &str) -> bool {
        loop {
            let s = self.state(m);
            if !is_write_target(s) {
                return false;
            }
            if s == sb::ROLE_IN_SYNC && self.read_sources() == 1 << m {
                return false;
            }
            if self.cas_state(m, s, sb::ROLE_FAULTY) {
                break;
            }
        }
        let g = self.state_changed();
        self.fail_gen.fetch_max(g, AcqRel);
        tracing::warn!(raid1 = %self.name, role = m, why, "member marked faulty, array degraded");
        true
    }

    pub fn region_of(&self, lba: u64) -> u64 {
        lba >> self.region_shift
    }

    pub fn bm_block_of(&self, r: u64) -> u64 {
        r / (self.block_size as u64 * 8)
    }

    /// Takes region `r` for a write (shared). `Ok(on_disk)`, or `Err` when
    /// an exclusive holder or waiter is there (retry later).
    pub fn acquire_shared(&self, r: u64) -> Result<bool, ()> {
        let a = &self.region[r as usize];
        let mut cur = a.load(Acquire);
        loop {
            if cur & (EXCL | WAIT) != 0 || cur & INFLIGHT == INFLIGHT {
                return Err(());
            }
            let new = (cur + 1) | DIRTY | TOUCHED;
            match a.compare_exchange_weak(cur, new, AcqRel, Acquire) {
                Ok(_) => return Ok(cur & ON_DISK != 0),
                Err(c) => cur = c,
            }
        }
    }

    pub fn release_shared(&self, r: u64) {
        self.region[r as usize].fetch_sub(1, AcqRel);
    }

    /// Tries to take region `r` exclusively; on failure leaves `WAIT` set
    /// so that new writes hold off.
    pub fn acquire_excl(&self, r: u64) -> bool {
        let a = &self.region[r as usize];
        let mut cur = a.load(Acquire);
        loop {
            let new = if cur & EXCL == 0 && cur & INFLIGHT == 0 {
                (cur | EXCL) & !WAIT
            } else {
                cur | WAIT
            };
            match a.compare_exchange_weak(cur, new, AcqRel, Acquire) {
                Ok(_) => return new & EXCL != 0 && cur & EXCL == 0,
                Err(c) => cur = c,
            }
        }
    }

    pub fn release_excl(&self, r: u64) {
        self.region[r as usize].fetch_and(!EXCL, AcqRel);
    }

    /// Gives up waiting for exclusive access.
    pub fn cancel_wait(&self, r: u64) {
        self.region[r as usize].fetch_and(!WAIT, AcqRel);
    }

    pub fn on_disk(&self, r: u64) -> bool {
        self.region[r as usize].load(Acquire) & ON_DISK != 0
    }

    pub fn dirty(&self, r: u64) -> bool {
        self.region[r as usize].load(Acquire) & DIRTY != 0
    }

    pub fn dirty_count(&self) -> u64 {
        self.region
            .iter()
            .filter(|a| a.load(Relaxed) & DIRTY != 0)
            .count() as u64
    }

    /// Fills `buf` (one bitmap block) with the dirty bits of block `b`.
    pub fn snapshot_bitmap(&self, b: u64, buf: &mut [u8]) {
        buf.fill(0);
        let per = self.block_size as u64 * 8;
        let first = b * per;
        let last = (first + per).min(self.regions);
        for r in first..last {
            if self.dirty(r) {
                let i = (r - first) as usize;
                buf[i / 8] |= 1 << (i % 8);
            }
        }
    }

    /// A bitmap write of block `b` with contents `buf` completed.
    pub fn bitmap_written(&self, b: u64, buf: &[u8]) {
        let per = self.block_size as u64 * 8;
        let first = b * per;
        let last = (first + per).min(self.regions);
        for r in first..last {
            let i = (r - first) as usize;
            if buf[i / 8] & (1 << (i % 8)) != 0 {
                let a = &self.region[r as usize];
                let mut cur = a.load(Acquire);
                while cur & DIRTY != 0 && cur & ON_DISK == 0 {
                    match a.compare_exchange_weak(cur, cur | ON_DISK, AcqRel, Acquire) {
                        Ok(_) => break,
                        Err(c) => cur = c,
                    }
                }
            }
        }
    }

    /// The superblock for role `m`.
    pub fn superblock(&self, m: usize) -> Superblock {
        let n = self.nroles();
        let mut roles = [RoleEntry::default(); MAX_MEMBERS];
        for (i, e) in roles.iter_mut().enumerate().take(n) {
            let r = &self.roles[i];
            let s = r.state.load(Acquire);
            e.state = match s {
                ROLE_MISSING => sb::ROLE_FAULTY,
                s => s,
            };
            e.dev_uuid = r.uuid();
            e.write_mostly = r.write_mostly.load(Relaxed);
            if matches!(s, sb::ROLE_RECOVER_FULL | sb::ROLE_RECOVER_BITMAP) {
                e.recovery_offset = r.recovery_offset.load(Acquire);
            }
        }
        let resync = self.resync_active.load(Acquire);
        Superblock {
            uuid: self.uuid,
            name: self.name.clone(),
            events: self.events.load(Acquire),
            flags: if self.clean.load(Acquire) {
                sb::FLAG_CLEAN
            } else {
                0
            } | if resync { sb::FLAG_RESYNC } else { 0 },
            role: m as u32,
            num_roles: n as u32,
            block_size: self.block_size,
            data_offset: self.layout.data_offset,
            data_blocks: self.data_blocks,
            bitmap_offset: self.layout.bitmap_offset,
            chunk_bytes: self.layout.chunk_bytes,
            regions: self.regions,
            dev_uuid: self.roles[m].uuid(),
            resync_offset: if resync {
                self.resync_cursor.load(Acquire)
            } else {
                0
            },
            roles,
        }
    }
}
