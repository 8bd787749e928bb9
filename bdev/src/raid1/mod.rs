//! `raid1`: mirroring over 1..=8 member bdevs of any kind, with md's
//! semantics: per-member superblocks, reassembly, a write-intent bitmap,
//! background rebuild, read balancing and read-error repair.
//!
//! # I/O
//!
//! * Writes (and UNMAP, WRITE_ZEROES) go to every member that takes writes
//!   (in sync or being rebuilt) and complete when all have answered. FUA is
//!   passed down. FLUSH and RESET go to every such member.
//! * A member that fails a write is marked faulty and the array runs on
//!   degraded; the write succeeds if an in-sync member took it. The write
//!   is acknowledged only once the failure is recorded in the superblocks
//!   of the remaining members (md's "superblock change pending"), so a
//!   crash cannot bring the failed member back as current. As in md, the
//!   last in-sync member is never failed by an I/O error: the I/O fails.
//! * Reads go to in-sync members only: a sequential stream stays on its
//!   member, otherwise the member with the fewest outstanding I/Os on this
//!   channel (the lowest role on a tie, as md takes an idle disk first);
//!   the member states are cached per channel and re-read only when the
//!   superblock generation moves (one atomic load per request).
//!   Write-mostly members are read only when nothing else is left. A
//!   failed read is retried on the next member; once one succeeds,
//!   the range is taken exclusively, re-read from the good member and
//!   written back over the members that failed (a failed repair write
//!   marks that member faulty). With no in-sync member left, I/O fails
//!   with `PathError` at once.
//!
//! # On-disk layout (per member; see [`sb`])
//!
//! Superblock in the first 4 KiB, the bitmap after it, data from
//! `data_offset` (1 MiB aligned, large enough for a bitmap covering the
//! whole member). The array has `min(member blocks) - data_offset` blocks.
//!
//! # Bitmap
//!
//! One bit per region of `bitmap_chunk_kb`. A write first marks its regions
//! dirty in memory and, if a region's bit is not yet on disk, waits until
//! the bitmap block holding it has been written (FUA) to every member. The
//! bits are cleared lazily by the background task ([`RebuildTask`]) once a
//! region has had no write in flight for a full clearer period — never
//! while the array is degraded, so that a returning member needs only the
//! regions written in its absence.
//!
//! # Assembly rules ([`create`])
//!
//! * No member has a superblock (or `format` is set): a new array is
//!   formatted (new UUID, event count 1). At least two members. Members
//!   are assumed identical (like `--assume-clean`) unless `initial_sync`
//!   is set, in which case members after the first are rebuilt from it.
//! * Every member has a superblock of the same array: the array is
//!   reassembled. The superblock with the highest event count is
//!   authoritative (role table, geometry). A member whose device UUID no
//!   longer holds its role is refused (add it as a new member). A member the
//!   authoritative table lists as in sync is in sync (even if it missed the
//!   last superblock write: a crash in the middle of a superblock update
//!   is covered by the bitmap); one listed as faulty or being resynced is
//!   *stale*: it takes writes but is not read until the dirty regions of
//!   the bitmap (which covers its absence, since bits are not cleared
//!   while degraded) have been copied to it; one listed as being rebuilt
//!   resumes at its checkpoint (`recovery_offset`, persisted every second
//!   and at shutdown; after a crash the dirty regions before it are copied
//!   again). Roles with no member are `missing`.
//!   At least one in-sync member must be present.
//! * If any in-sync member's superblock lacks the clean flag (the array
//!   was not shut down cleanly), the bitmaps of the in-sync members are
//!   merged and only those dirty regions are copied from the primary
//!   (the in-sync member with the highest event count) to the others;
//!   until then reads of those regions go to the primary. The resync
//!   position is persisted (`FLAG_RESYNC`, `resync_offset`): a clean
//!   shutdown in the middle of it resumes it at the next assembly.
//!   [`Raid1Bdev::status`] counts the regions copied (`resynced_regions`).
//! * Some members have superblocks and some not, or superblocks of
//!   different arrays: an error (add a blank member with
//!   [`Raid1Bdev::add_member`], or pass `format`).
//! * A member whose superblock cannot be read (I/O error, damaged block)
//!   is left out when another member can be assembled from: the array
//!   runs degraded and status lists it in `excluded_at_assembly`.
//! * Split brain (two members whose own role tables each have themselves
//!   in sync and the other out: both ran alone and took writes): an error
//!   naming the member to start with and the one to re-add. A re-added
//!   member's own bitmap joins the resync set.
//!
//! # Ordering and durability
//!
//! * Every superblock write, and every bitmap write that clears bits, is
//!   preceded by a FLUSH of the members with a cache (md's PREFLUSH|FUA).
//! * Bitmap bits and superblocks count as written only once an in-sync
//!   member has them. A write aborted on a member is sent there again
//!   (3 times); any other non-success fails the member (or, the last in
//!   sync, the write).
//! * A member-state change moves a view word before and after storing the
//!   state; channels trust their cached view only while it is unchanged.
//! * A rebuild read error on the source is repaired from another mirror;
//!   with none, the range is recorded in `bad_blocks` (reads of it fail
//!   until a write covers it; the list is not persisted yet).
//!
//! Every state change (member faulty, rebuild done, member added or
//! removed, clean shutdown) bumps the event counter and rewrites the
//! superblocks of the members that take writes. An assembled array is
//! marked unclean at once; [`Bdev::shutdown`] marks it clean.
//!
//! # Background work
//!
//! [`Raid1Bdev::rebuild_task`] returns a [`RebuildTask`]: build it on a
//! reactor and register its `poll` as a poller. It rebuilds added members,
//! resyncs stale members and dirty regions after a crash (rate-limited in
//! MB/s, user I/O going on), clears bitmap bits and writes superblocks.

use std::any::Any;
use std::sync::atomic::Ordering::*;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::AlignedBuf;
use crate::{
    check_name, format_uuid, open_channel, uuid_from_name, Bdev, BdevChannel, BdevError, BdevInfo,
    BdevRegistry, BdevStats, Capabilities, Channel, IoRequest, IoStatus, QueueFull, MAX_SEGMENTS,
};

mod channel;
mod port;
mod rebuild;
pub mod sb;
mod shared;

pub use rebuild::{RebuildTask, DEFAULT_CLEAR_INTERVAL};
use sb::{
    Layout, Superblock, ROLE_EMPTY, ROLE_FAULTY, ROLE_IN_SYNC, ROLE_RECOVER_BITMAP,
    ROLE_RECOVER_FULL,
};
use shared::{state_name, Shared, ROLE_MISSING};

/// Most members of one array.
pub const MAX_MEMBERS: usize = 8;
/// Default bitmap region size.
pub const DEFAULT_BITMAP_CHUNK_KB: u64 = 4096;
/// Requests each raid1 channel holds in flight.
pub const QUEUE_DEPTH: usize = 256;
/// Limit for control-plane metadata I/O.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// Parameters of `bdev_raid1_create`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CreateParams {
    /// Array name.
    pub name: String,
    /// Member bdev names.
    pub members: Vec<String>,
    /// Bitmap region size in KiB (power of two, at least one block).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitmap_chunk_kb: Option<u64>,
    /// Members reads avoid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub write_mostly: Vec<String>,
    /// Format even if members carry superblocks (destroys the old array).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub format: bool,
    /// On format, rebuild members after the first instead of assuming
    /// they are identical.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub initial_sync: bool,
    /// Rebuild rate limit in MB/s (0 or absent: unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuild_rate_mb_s: Option<u64>,
}

/// Parameters of `bdev_raid1_add_member`, `_remove_member`, `_fail_member`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberParams {
    /// Array name.
    pub name: String,
    /// Member bdev name.
    pub member: String,
}

/// Parameters of `bdev_raid1_get_status`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NameParams {
    /// Array name.
    pub name: String,
}

/// A raid1 array.
pub struct Raid1Bdev {
    info: BdevInfo,
    stats: BdevStats,
    shared: Arc<Shared>,
    control: Mutex<()>,
    /// Members left out at assembly (unreadable superblock) and why.
    excluded: Vec<(String, String)>,
}

fn new_uuid(what: &str) -> [u8; 16] {
    use std::sync::atomic::AtomicU64;
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let seq = SEQ.fetch_add(1, Relaxed);
    uuid_from_name("raid1", &format!("{what}/{t}/{seq}/{}", std::process::id()))
}

/// Runs one request to completion on a control-plane channel.
fn sync_io(ch: &mut Channel, req: &IoRequest<'_>) -> Result<IoStatus, BdevError> {
    let end = std::time::Instant::now() + CONTROL_TIMEOUT;
    loop {
        // SAFETY: the caller's buffers outlive this call, which returns only
        // after the completion (or after the deadline, see below).
        match unsafe { ch.submit(req, 1) } {
            Ok(()) => break,
            Err(QueueFull) => {
                ch.poll(&mut |_, _| {});
                if std::time::Instant::now() > end {
                    return Err(BdevError::Other(format!(
                        "{}: queue stayed full",
                        ch.info().name
                    )));
                }
            }
        }
    }
    let mut st = None;
    while st.is_none() {
        ch.poll(&mut |t, s| {
            if t == 1 {
                st = Some(s)
            }
        });
        if st.is_none() {
            if std::time::Instant::now() > end {
                // The buffer is leaked by the caller's contract being
                // unenforceable here; report the hang instead of waiting.
                return Err(BdevError::Other(format!(
                    "{}: metadata I/O timed out",
                    ch.info().name
                )));
            }
            std::thread::yield_now();
        }
    }
    Ok(st.unwrap_or(IoStatus::Aborted))
}

fn read_blocks(bdev: &Arc<dyn Bdev>, lba: u64, n: u64) -> Result<AlignedBuf, BdevError> {
    let bs = bdev.info().block_size as usize;
    let mut ch = open_channel(bdev)?;
    let mut buf = AlignedBuf::new(n as usize * bs);
    let v = [buf.iovec(0, buf.len())];
    let st = sync_io(&mut ch, &IoRequest::read(lba, n, &v))?;
    if !st.is_ok() {
        return Err(BdevError::Other(format!(
            "member `{}`: metadata read failed: {}",
            bdev.info().name,
            st.name()
        )));
    }
    Ok(buf)
}

fn read_superblock(bdev: &Arc<dyn Bdev>) -> Result<Option<Superblock>, BdevError> {
    let bs = bdev.info().block_size as u64;
    let n = (sb::SB_BYTES as u64).div_ceil(bs);
    if bdev.info().num_blocks < n {
        return Ok(None);
    }
    let buf = read_blocks(bdev, 0, n)?;
    Superblock::decode(buf.as_slice()).map_err(|e| {
        BdevError::param(
            "members",
            format!(
                "member `{}`: {e} (pass format to overwrite)",
                bdev.info().name
            ),
        )
    })
}

fn check_member_fits(
    b: &Arc<dyn Bdev>,
    data_offset: u64,
    data_blocks: u64,
) -> Result<(), BdevError> {
    let i = b.info();
    if i.num_blocks < data_offset + data_blocks.max(1) {
        return Err(BdevError::param(
            "members",
            format!(
                "member `{}` is too small: {} blocks of {} bytes, needs at least {} ({} for raid1 metadata)",
                i.name,
                i.num_blocks,
                i.block_size,
                data_offset + data_blocks.max(1),
                data_offset
            ),
        ));
    }
    if i.caps.read_only {
        return Err(BdevError::param(
            "members",
            format!("member `{}` is read-only", i.name),
        ));
    }
    Ok(())
}

/// Creates (formats) or reassembles an array over `members`; see the
/// module docs for the rules. `params.members` is informational (the
/// registry helpers fill it); `members` are the bdevs.
pub fn create(
    params: &CreateParams,
    members: Vec<Arc<dyn Bdev>>,
) -> Result<Arc<Raid1Bdev>, BdevError> {
    check_name(&params.name)?;
    if members.is_empty() {
        return Err(BdevError::param(
            "members",
            "a raid1 needs at least one member (none given)",
        ));
    }
    if members.len() > MAX_MEMBERS {
        return Err(BdevError::param(
            "members",
            format!("at most {MAX_MEMBERS} members, {} given", members.len()),
        ));
    }
    for (i, a) in members.iter().enumerate() {
        if members[..i].iter().any(|b| b.info().name == a.info().name) {
            return Err(BdevError::param(
                "members",
                format!("member `{}` is listed twice", a.info().name),
            ));
        }
        if a.info().name == params.name {
            return Err(BdevError::param(
                "members",
                "a raid1 cannot be its own member",
            ));
        }
    }
    let bs = members[0].info().block_size;
    if let Some(b) = members.iter().find(|b| b.info().block_size != bs) {
        return Err(BdevError::param(
            "members",
            format!(
                "members have different block sizes: `{}` has {bs}, `{}` has {}",
                members[0].info().name,
                b.info().name,
                b.info().block_size
            ),
        ));
    }
    for w in &params.write_mostly {
        if !members.iter().any(|b| b.info().name == *w) {
            return Err(BdevError::param(
                "write_mostly",
                format!("`{w}` is not a member"),
            ));
        }
    }
    let chunk_kb = params.bitmap_chunk_kb.unwrap_or(DEFAULT_BITMAP_CHUNK_KB);
    let chunk_bytes = chunk_kb.saturating_mul(1024);
    if chunk_kb == 0 || !chunk_kb.is_power_of_two() || chunk_bytes < bs as u64 || chunk_kb > 1 << 20
    {
        return Err(BdevError::param(
            "bitmap_chunk_kb",
            format!("{chunk_kb} must be a power of two between the block size and 1 GiB"),
        ));
    }
    let mut members = members;
    let mut excluded: Vec<(String, String)> = Vec::new();
    let sbs: Vec<Option<Superblock>> = if params.format {
        vec![None; members.len()]
    } else {
        let read: Vec<Result<Option<Superblock>, BdevError>> =
            members.iter().map(read_superblock).collect();
        if !read.iter().any(|r| matches!(r, Ok(Some(_)))) {
            // No member to assemble from: the first error is the answer.
            read.into_iter().collect::<Result<_, _>>()?
        } else {
            // A member whose superblock cannot be read (an I/O error, a
            // damaged block) is left out: the array assembles without it
            // (degraded) and says so, as mdadm does.
            let mut keep = Vec::new();
            let mut sbs = Vec::new();
            for (b, r) in members.into_iter().zip(read) {
                match r {
                    Ok(s) => {
                        keep.push(b);
                        sbs.push(s);
                    }
                    Err(e) => {
                        tracing::warn!(raid1 = %params.name, member = %b.info().name, error = %e,
                            "superblock unreadable: assembling without this member");
                        excluded.push((b.info().name.clone(), e.to_string()));
                    }
                }
            }
            members = keep;
            sbs
        }
    };
    let shared = if sbs.iter().all(|s| s.is_none()) {
        format(params, &members, chunk_bytes)?
    } else {
        assemble(params, &members, &sbs)?
    };
    if let Some(r) = params.rebuild_rate_mb_s {
        shared.rate_mb_s.store(r, Relaxed);
    }
    let shared = Arc::new(shared);
    // Bring the metadata on disk up to date: unclean from now on.
    let mut port = port::Port::new(Arc::clone(&shared));
    port.sync_sb(CONTROL_TIMEOUT)?;
    drop(port);
    let caps = Capabilities {
        flush: members.iter().any(|b| b.info().caps.flush),
        unmap: members.iter().all(|b| b.info().caps.unmap),
        write_zeroes: members.iter().all(|b| b.info().caps.write_zeroes),
        fua: members.iter().all(|b| b.info().caps.fua),
        unmap_reads_zeroes: members.iter().all(|b| b.info().caps.unmap_reads_zeroes),
        read_only: false,
    };
    let info = BdevInfo {
        name: params.name.clone(),
        kind: "raid1",
        block_size: bs,
        num_blocks: shared.data_blocks,
        uuid: shared.uuid,
        caps,
        buf_align: members
            .iter()
            .map(|b| b.info().buf_align)
            .max()
            .unwrap_or(1),
        max_segments: members
            .iter()
            .map(|b| b.info().max_segments)
            .min()
            .unwrap_or(1)
            .min(MAX_SEGMENTS),
        queue_depth: QUEUE_DEPTH,
    };
    tracing::info!(raid1 = %params.name, uuid = %format_uuid(&shared.uuid), members = members.len(),
        degraded = shared.degraded(), resync = shared.resync_active.load(Relaxed), "raid1 started");
    Ok(Arc::new(Raid1Bdev {
        info,
        stats: BdevStats::default(),
        shared,
        control: Mutex::new(()),
        excluded,
    }))
}

fn format(
    params: &CreateParams,
    members: &[Arc<dyn Bdev>],
    chunk_bytes: u64,
) -> Result<Shared, BdevError> {
    if members.len() < 2 {
        return Err(BdevError::param(
            "members",
            "a new raid1 needs at least 2 members",
        ));
    }
    let bs = members[0].info().block_size;
    let min_blocks = members
        .iter()
        .map(|b| b.info().num_blocks)
        .min()
        .unwrap_or(0);
    let layout = Layout::new(bs, min_blocks, chunk_bytes);
    for b in members {
        check_member_fits(b, layout.data_offset, 1)?;
    }
    let data_blocks = min_blocks - layout.data_offset;
    let sh = Shared::new(&params.name, new_uuid(&params.name), layout, data_blocks);
    sh.num_roles.store(members.len(), Release);
    {
        let mut table = sh.members();
        for (m, b) in members.iter().enumerate() {
            let r = &sh.roles[m];
            r.set_uuid(&new_uuid(&b.info().name));
            r.write_mostly
                .store(params.write_mostly.contains(&b.info().name), Relaxed);
            r.slot_gen.store(1, Release);
            let st = if params.initial_sync && m > 0 {
                ROLE_RECOVER_FULL
            } else {
                ROLE_IN_SYNC
            };
            r.state.store(st, Release);
            table[m] = Some(Arc::clone(b));
        }
    }
    sh.state_changed();
    // A zeroed bitmap on every member.
    let sh = Arc::new(sh);
    let mut port = port::Port::new(Arc::clone(&sh));
    port.sync_bitmap(CONTROL_TIMEOUT)?;
    drop(port);
    Arc::try_unwrap(sh).map_err(|_| BdevError::Other("raid1: internal reference leak".into()))
}

fn assemble(
    params: &CreateParams,
    members: &[Arc<dyn Bdev>],
    sbs: &[Option<Superblock>],
) -> Result<Shared, BdevError> {
    let name_of = |i: usize| members[i].info().name.clone();
    let first = sbs
        .iter()
        .flatten()
        .next()
        .ok_or_else(|| BdevError::Other("raid1: no superblock".into()))?;
    for (i, s) in sbs.iter().enumerate() {
        match s {
            None => {
                return Err(BdevError::param(
                    "members",
                    format!(
                        "member `{}` has no raid1 superblock while other members belong to array `{}` ({}); \
                         add it with bdev_raid1_add_member, or pass format to start a new array",
                        name_of(i),
                        first.name,
                        format_uuid(&first.uuid)
                    ),
                ))
            }
            Some(s) if s.uuid != first.uuid => {
                return Err(BdevError::param(
                    "members",
                    format!(
                        "members belong to different arrays: `{}` to `{}` ({}), `{}` to `{}` ({})",
                        name_of(0),
                        first.name,
                        format_uuid(&first.uuid),
                        name_of(i),
                        s.name,
                        format_uuid(&s.uuid)
                    ),
                ))
            }
            _ => {}
        }
    }
    let sbs: Vec<&Superblock> = sbs.iter().flatten().collect();
    let fresh = sbs
        .iter()
        .copied()
        .max_by_key(|s| s.events)
        .unwrap_or(first);
    let bs = members[0].info().block_size;
    if fresh.block_size != bs {
        return Err(BdevError::param(
            "members",
            format!(
                "array `{}` was made of {}-byte blocks, members have {bs}",
                fresh.name, fresh.block_size
            ),
        ));
    }
    let layout = Layout::new(bs, 1, fresh.chunk_bytes);
    let layout = Layout {
        bitmap_offset: fresh.bitmap_offset,
        data_offset: fresh.data_offset,
        ..layout
    };
    for (i, s) in sbs.iter().enumerate() {
        if (
            s.data_offset,
            s.data_blocks,
            s.chunk_bytes,
            s.regions,
            s.bitmap_offset,
        ) != (
            fresh.data_offset,
            fresh.data_blocks,
            fresh.chunk_bytes,
            fresh.regions,
            fresh.bitmap_offset,
        ) {
            return Err(BdevError::param(
                "members",
                format!("member `{}` has a different array geometry", name_of(i)),
            ));
        }
        check_member_fits(&members[i], fresh.data_offset, fresh.data_blocks)?;
    }
    let sh = Shared::new(&params.name, fresh.uuid, layout, fresh.data_blocks);
    if sh.regions != fresh.regions {
        return Err(BdevError::param(
            "members",
            "superblock region count does not match its geometry",
        ));
    }
    let nroles = fresh.num_roles as usize;
    sh.num_roles.store(nroles, Release);
    for m in 0..nroles {
        let e = &fresh.roles[m];
        let r = &sh.roles[m];
        r.set_uuid(&e.dev_uuid);
        r.write_mostly.store(e.write_mostly, Relaxed);
        r.state.store(
            if e.state == ROLE_EMPTY {
                ROLE_EMPTY
            } else {
                ROLE_MISSING
            },
            Release,
        );
    }
    let mut present: Vec<Option<usize>> = vec![None; MAX_MEMBERS];
    for (i, s) in sbs.iter().enumerate() {
        let role = s.role as usize;
        let e = fresh.roles.get(role).copied().unwrap_or_default();
        if role >= nroles || e.state == ROLE_EMPTY || e.dev_uuid != s.dev_uuid {
            return Err(BdevError::param(
                "members",
                format!(
                    "member `{}` no longer belongs to array `{}`: its role {role} was given to another device; \
                     add it as a new member with bdev_raid1_add_member",
                    name_of(i),
                    fresh.name
                ),
            ));
        }
        if let Some(j) = present[role] {
            return Err(BdevError::param(
                "members",
                format!(
                    "members `{}` and `{}` both claim role {role}",
                    name_of(j),
                    name_of(i)
                ),
            ));
        }
        present[role] = Some(i);
        let st = match e.state {
            ROLE_IN_SYNC => ROLE_IN_SYNC,
            ROLE_RECOVER_FULL => ROLE_RECOVER_FULL,
            _ => ROLE_RECOVER_BITMAP,
        };
        if st != ROLE_IN_SYNC {
            tracing::info!(raid1 = %params.name, member = %name_of(i), events = s.events, current = fresh.events,
                "stale member: not read until resynced");
        }
        let r = &sh.roles[role];
        r.state.store(st, Release);
        r.slot_gen.store(1, Release);
        // A rebuild or resync that was under way resumes at its
        // checkpoint (regions before it were copied and have taken every
        // write since; after a crash the dirty ones are copied again).
        if st == e.state && st != ROLE_IN_SYNC {
            r.recovery_offset
                .store(e.recovery_offset.min(sh.regions), Release);
        }
        if params.write_mostly.contains(&name_of(i)) {
            r.write_mostly.store(true, Relaxed);
        }
        sh.members()[role] = Some(Arc::clone(&members[i]));
    }
    // Split brain: two members that each ran without the other (each
    // one's own table has itself in sync and the other out) both took
    // writes the other lacks; neither bitmap covers the other's. Refuse,
    // as mdadm does, naming the member to re-add.
    for (i, si) in sbs.iter().enumerate() {
        for (j, sj) in sbs.iter().enumerate().skip(i + 1) {
            let (ri, rj) = (si.role as usize, sj.role as usize);
            let alone = |s: &Superblock, me: usize, other: usize| {
                s.roles[me].state == ROLE_IN_SYNC
                    && matches!(s.roles[other].state, ROLE_FAULTY | ROLE_EMPTY)
            };
            if ri < MAX_MEMBERS && rj < MAX_MEMBERS && alone(si, ri, rj) && alone(sj, rj, ri) {
                let (keep, readd) = if sj.events > si.events {
                    (j, i)
                } else {
                    (i, j)
                };
                return Err(BdevError::param(
                    "members",
                    format!(
                        "members `{}` (event count {}) and `{}` (event count {}) of array `{}` each ran                          without the other (split brain): start the array with `{}` and add `{}` back                          with bdev_raid1_add_member (its writes made alone are lost)",
                        name_of(i),
                        si.events,
                        name_of(j),
                        sj.events,
                        fresh.name,
                        name_of(keep),
                        name_of(readd)
                    ),
                ));
            }
        }
    }
    let in_sync: Vec<usize> = (0..nroles)
        .filter(|&m| sh.state(m) == ROLE_IN_SYNC)
        .collect();
    if in_sync.is_empty() {
        return Err(BdevError::param(
            "members",
            format!(
                "no member of array `{}` holds current data (event count {}); it cannot be started",
                fresh.name, fresh.events
            ),
        ));
    }
    // Merge the bitmaps of the in-sync members.
    let mut unclean = false;
    let mut resync_from: Option<u64> = None;
    let mut primary = in_sync[0];
    let mut best = 0;
    for &m in &in_sync {
        let Some(i) = present[m] else { continue };
        let s = sbs[i];
        unclean |= s.flags & sb::FLAG_CLEAN == 0;
        if s.flags & sb::FLAG_RESYNC != 0 {
            let at = s.resync_offset.min(sh.regions);
            resync_from = Some(resync_from.map_or(at, |r| r.min(at)));
        }
        if s.events > best {
            best = s.events;
            primary = m;
        }
        if sh.bm_blocks == 0 {
            continue;
        }
        let buf = read_blocks(&members[i], layout.bitmap_offset, sh.bm_blocks)?;
        let bits = buf.as_slice();
        for r in 0..sh.regions {
            if bits[(r / 8) as usize] & (1 << (r % 8)) != 0 {
                sh.region[r as usize].fetch_or(shared::DIRTY | shared::ON_DISK, Relaxed);
            }
        }
    }
    sh.primary.store(primary, Release);
    if unclean && in_sync.len() > 1 {
        // Whatever resync was under way starts again: regions it had done
        // may have been left inconsistent by the crash.
        sh.resync_active.store(true, Release);
        sh.resync_cursor.store(0, Release);
        tracing::warn!(raid1 = %params.name, dirty_regions = sh.dirty_count(), "unclean shutdown: resyncing dirty regions");
    } else if let (Some(at), true) = (resync_from, in_sync.len() > 1) {
        // Shut down cleanly in the middle of a resync: resume it.
        sh.resync_active.store(true, Release);
        sh.resync_cursor.store(at, Release);
        tracing::warn!(raid1 = %params.name, dirty_regions = sh.dirty_count(), resync_offset = at,
            "resync interrupted by a shutdown: resuming");
    }
    if unclean {
        // Stale members resync every dirty region again.
        for m in 0..nroles {
            if sh.state(m) == ROLE_RECOVER_BITMAP {
                sh.roles[m].recovery_offset.store(0, Release);
            }
        }
    }
    sh.events.store(fresh.events, Release);
    sh.state_changed();
    Ok(sh)
}

impl Raid1Bdev {
    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.control.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn find(&self, name: &str) -> Result<usize, BdevError> {
        let table = self.shared.members();
        (0..MAX_MEMBERS)
            .find(|&m| table[m].as_ref().is_some_and(|b| b.info().name == name))
            .ok_or_else(|| {
                BdevError::param(
                    "member",
                    format!("`{name}` is not a member of raid1 `{}`", self.info.name),
                )
            })
    }

    fn sync_sb(&self) -> Result<(), BdevError> {
        port::Port::new(Arc::clone(&self.shared)).sync_sb(CONTROL_TIMEOUT)
    }

    /// The array UUID.
    pub fn array_uuid(&self) -> [u8; 16] {
        self.shared.uuid
    }

    /// Names of the attached members, by role.
    pub fn member_names(&self) -> Vec<String> {
        self.shared
            .members()
            .iter()
            .flatten()
            .map(|b| b.info().name.clone())
            .collect()
    }

    /// Adds a member: a member that left this array (its superblock names
    /// this array and its role is free) is resynced from the bitmap; any
    /// other bdev is formatted into a free role (or a new one) and rebuilt
    /// in full. A faulty member added again is re-added the same way.
    pub fn add_member(&self, bdev: Arc<dyn Bdev>) -> Result<(), BdevError> {
        let _g = self.lock();
        let sh = &self.shared;
        let i = bdev.info();
        if i.block_size != self.info.block_size {
            return Err(BdevError::param(
                "member",
                format!(
                    "`{}` has {}-byte blocks, raid1 `{}` has {}",
                    i.name, i.block_size, self.info.name, self.info.block_size
                ),
            ));
        }
        check_member_fits(&bdev, sh.layout.data_offset, sh.data_blocks)?;
        let c = &self.info.caps;
        if (c.unmap && !i.caps.unmap)
            || (c.write_zeroes && !i.caps.write_zeroes)
            || (c.fua && !i.caps.fua)
        {
            return Err(BdevError::param(
                "member",
                format!("`{}` lacks capabilities the array offers", i.name),
            ));
        }
        if i.buf_align > self.info.buf_align || i.max_segments < self.info.max_segments {
            return Err(BdevError::param(
                "member",
                format!("`{}` needs stricter buffers than the array offers", i.name),
            ));
        }
        if let Ok(m) = self.find(&i.name) {
            if sh.state(m) != ROLE_FAULTY {
                return Err(BdevError::param(
                    "member",
                    format!("`{}` is already a member", i.name),
                ));
            }
            // Re-add of a faulty member: detach, then attach again below.
            self.detach(m);
        }
        let old = read_superblock(&bdev).unwrap_or(None);
        let n = sh.nroles();
        let readd = old.as_ref().and_then(|s| {
            let m = s.role as usize;
            (s.uuid == sh.uuid
                && m < n
                && sh.roles[m].uuid() == s.dev_uuid
                && sh.state(m) == ROLE_MISSING)
                .then_some(m)
        });
        let (m, state) = match readd {
            Some(m) => {
                // Its own bitmap joins the resync: the regions it took
                // writes to while apart differ from ours too.
                if sh.bm_blocks > 0 {
                    if let Ok(buf) = read_blocks(&bdev, sh.layout.bitmap_offset, sh.bm_blocks) {
                        let bits = buf.as_slice();
                        for r in 0..sh.regions {
                            if bits[(r / 8) as usize] & (1 << (r % 8)) != 0 {
                                sh.region[r as usize].fetch_or(shared::DIRTY, AcqRel);
                            }
                        }
                    }
                }
                (m, ROLE_RECOVER_BITMAP)
            }
            None => {
                let free = (0..n).find(|&m| matches!(sh.state(m), ROLE_MISSING | ROLE_EMPTY));
                let m = match free {
                    Some(m) => m,
                    None if n < MAX_MEMBERS => n,
                    None => {
                        return Err(BdevError::param(
                            "member",
                            format!(
                                "raid1 `{}` has {MAX_MEMBERS} members already",
                                self.info.name
                            ),
                        ))
                    }
                };
                sh.roles[m].set_uuid(&new_uuid(&i.name));
                (m, ROLE_RECOVER_FULL)
            }
        };
        sh.roles[m].write_mostly.store(false, Relaxed);
        sh.roles[m].recovery_offset.store(0, Release);
        sh.members()[m] = Some(Arc::clone(&bdev));
        sh.roles[m].slot_gen.fetch_add(1, AcqRel);
        if m >= sh.nroles() {
            sh.num_roles.store(m + 1, Release);
        }
        sh.config_gen.fetch_add(1, AcqRel);
        // The state last: a channel that sees the member as a target also
        // sees its device (see Port::live_targets).
        sh.set_state(m, state);
        sh.state_changed();
        tracing::info!(raid1 = %self.info.name, member = %i.name, role = m,
            kind = if state == ROLE_RECOVER_BITMAP { "bitmap resync" } else { "full rebuild" }, "member added");
        let mut port = port::Port::new(Arc::clone(sh));
        port.sync_sb(CONTROL_TIMEOUT)?;
        // The bitmap as it now is (a returning member's bits merged, a
        // new member's view zeroed) goes to every member taking writes.
        port.sync_bitmap(CONTROL_TIMEOUT)?;
        Ok(())
    }

    fn detach(&self, m: usize) -> Option<Arc<dyn Bdev>> {
        let sh = &self.shared;
        let old = sh.members()[m].take();
        sh.set_state(m, ROLE_MISSING);
        sh.roles[m].slot_gen.fetch_add(1, AcqRel);
        sh.config_gen.fetch_add(1, AcqRel);
        sh.state_changed();
        old
    }

    /// Removes a member (failing it first if it is in sync); its role stays,
    /// `missing`, so that the same device added back is resynced from the
    /// bitmap. The last in-sync member cannot be removed.
    pub fn remove_member(&self, name: &str) -> Result<Arc<dyn Bdev>, BdevError> {
        let _g = self.lock();
        let m = self.find(name)?;
        let sh = &self.shared;
        if sh.state(m) == ROLE_IN_SYNC && sh.read_sources() == 1 << m {
            return Err(BdevError::param(
                "member",
                format!(
                    "`{name}` is the last in-sync member of `{}`",
                    self.info.name
                ),
            ));
        }
        let old = self
            .detach(m)
            .ok_or_else(|| BdevError::Gone(name.to_string()))?;
        tracing::info!(raid1 = %self.info.name, member = %name, "member removed");
        // The device is detached either way (its I/O no longer goes there):
        // a superblock update no in-sync member took is reported, not
        // undone.
        if let Err(e) = self.sync_sb() {
            tracing::warn!(raid1 = %self.info.name, member = %name, error = %e,
                "member removed, but the superblocks could not record it");
        }
        Ok(old)
    }

    /// Marks a member faulty (mdadm --fail). The last in-sync member cannot
    /// be failed.
    pub fn fail_member(&self, name: &str) -> Result<(), BdevError> {
        let _g = self.lock();
        let m = self.find(name)?;
        let sh = &self.shared;
        match sh.state(m) {
            ROLE_FAULTY => return Ok(()),
            ROLE_IN_SYNC if sh.read_sources() == 1 << m => {
                return Err(BdevError::param(
                    "member",
                    format!(
                        "`{name}` is the last in-sync member of `{}`",
                        self.info.name
                    ),
                ))
            }
            _ => {}
        }
        sh.set_state(m, ROLE_FAULTY);
        let g = sh.state_changed();
        sh.fail_gen.fetch_max(g, AcqRel);
        tracing::warn!(raid1 = %self.info.name, member = %name, "member failed by request");
        self.sync_sb()
    }

    /// Test hook: the first half of a member-state change (what a write
    /// on another thread sees while the changing thread is paused between
    /// storing the state and finishing the change).
    #[doc(hidden)]
    pub fn debug_begin_state_change(&self, member: &str, state: &str) -> Result<(), BdevError> {
        let m = self.find(member)?;
        let s = match state {
            "in_sync" => ROLE_IN_SYNC,
            "faulty" => ROLE_FAULTY,
            "rebuilding" => ROLE_RECOVER_FULL,
            "resyncing" => ROLE_RECOVER_BITMAP,
            _ => return Err(BdevError::param("state", format!("`{state}`?"))),
        };
        self.shared.begin_state(m, None, s);
        Ok(())
    }

    /// Test hook: the second half of [`Raid1Bdev::debug_begin_state_change`].
    #[doc(hidden)]
    pub fn debug_end_state_change(&self) -> Result<(), BdevError> {
        self.shared.end_state();
        self.shared.state_changed();
        self.sync_sb()
    }

    /// Sets the rebuild rate limit (MB/s, 0 = unlimited).
    pub fn set_rebuild_rate(&self, mb_s: u64) {
        self.shared.rate_mb_s.store(mb_s, Relaxed);
    }

    /// The background task (rebuild, resync, bitmap clearing). Build it on
    /// the thread that polls it.
    pub fn rebuild_task(&self) -> RebuildTask {
        RebuildTask::new(Arc::clone(&self.shared))
    }

    /// Regions copied by bitmap-driven resyncs (unclean shutdown, stale
    /// members) since this array object was created.
    pub fn resynced_regions(&self) -> u64 {
        self.shared.resynced_regions.load(Relaxed)
    }

    /// Whether the array runs without full redundancy.
    pub fn is_degraded(&self) -> bool {
        self.shared.degraded()
    }

    /// Marks the array clean on every live member (orderly shutdown). Call
    /// once I/O has stopped; [`Bdev::shutdown`] does this.
    pub fn clean_shutdown(&self) -> Result<(), BdevError> {
        let _g = self.lock();
        self.shared.clean.store(true, Release);
        self.shared.state_changed();
        self.sync_sb()
    }

    /// Status for `bdev_raid1_get_status`.
    pub fn status(&self) -> Value {
        let sh = &self.shared;
        let table = sh.members().clone();
        let members: Vec<Value> = (0..sh.nroles())
            .map(|m| {
                json!({
                    "role": m,
                    "name": table[m].as_ref().map(|b| b.info().name.clone()),
                    "state": state_name(sh.state(m)),
                    "write_mostly": sh.roles[m].write_mostly.load(Relaxed),
                    "device_uuid": format_uuid(&sh.roles[m].uuid()),
                    "recovery_offset": matches!(sh.state(m), ROLE_RECOVER_FULL | ROLE_RECOVER_BITMAP)
                        .then(|| sh.roles[m].recovery_offset.load(Relaxed)),
                })
            })
            .collect();
        let in_sync = sh.read_sources().count_ones();
        let state = if in_sync == 0 {
            "failed"
        } else if sh.degraded() {
            "degraded"
        } else {
            "online"
        };
        let rate = sh.rate_mb_s.load(Relaxed);
        json!({
            "name": self.info.name,
            "uuid": format_uuid(&sh.uuid),
            "state": state,
            "degraded": sh.degraded(),
            "num_roles": sh.nroles(),
            "in_sync": in_sync,
            "events": sh.events.load(Relaxed),
            "clean": sh.clean.load(Relaxed),
            "num_blocks": sh.data_blocks,
            "block_size": sh.block_size,
            "data_offset_blocks": sh.layout.data_offset,
            "bitmap_chunk_kb": sh.layout.chunk_bytes / 1024,
            "bitmap_regions": sh.regions,
            "dirty_regions": sh.dirty_count(),
            "members": members,
            "rebuild": {
                "active": sh.job_active.load(Relaxed),
                "regions_done": sh.job_done.load(Relaxed),
                "regions_total": sh.job_total.load(Relaxed),
                "rate_mb_s": if rate == 0 { Value::Null } else { json!(rate) },
                "bytes_copied": sh.copied_bytes.load(Relaxed),
                "error": sh.rebuild_error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            },
            "resync_active": sh.resync_active.load(Relaxed),
            "resync_offset": sh.resync_active.load(Relaxed).then(|| sh.resync_cursor.load(Relaxed)),
            "resynced_regions": sh.resynced_regions.load(Relaxed),
            "rebuilt_regions": sh.rebuilt_regions.load(Relaxed),
            "read_repairs": sh.read_repairs.load(Relaxed),
            "bad_blocks": sh
                .bad_blocks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|&(lba, n)| json!({"offset_blocks": lba, "num_blocks": n}))
                .collect::<Vec<_>>(),
            "excluded_at_assembly": self
                .excluded
                .iter()
                .map(|(m, why)| json!({"member": m, "error": why}))
                .collect::<Vec<_>>(),
        })
    }
}

impl Bdev for Raid1Bdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }
    fn open_module_channel(&self) -> Result<Box<dyn BdevChannel>, BdevError> {
        Ok(Box::new(channel::Raid1Channel::new(
            Arc::clone(&self.shared),
            self.info.clone(),
        )))
    }
    fn base_bdevs(&self) -> Vec<String> {
        self.member_names()
    }
    fn driver_specific(&self) -> Option<Value> {
        Some(json!({ "raid1": self.status() }))
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn shutdown(&self) {
        if let Err(e) = self.clean_shutdown() {
            tracing::warn!(raid1 = %self.info.name, error = %e, "could not mark the array clean");
        }
    }
    fn stats(&self) -> &BdevStats {
        &self.stats
    }
}

fn get_raid(reg: &BdevRegistry, name: &str) -> Result<Arc<dyn Bdev>, BdevError> {
    let b = reg
        .get(name)
        .map_err(|e| BdevError::param("name", e.to_string()))?;
    if b.as_any().downcast_ref::<Raid1Bdev>().is_none() {
        return Err(BdevError::param(
            "name",
            format!("`{name}` is not a raid1 bdev"),
        ));
    }
    Ok(b)
}

fn raid(b: &Arc<dyn Bdev>) -> &Raid1Bdev {
    // Checked by get_raid.
    b.as_any()
        .downcast_ref::<Raid1Bdev>()
        .expect("checked raid1")
}

fn record_params(reg: &BdevRegistry, r: &Raid1Bdev) {
    let rate = r.shared.rate_mb_s.load(Relaxed);
    let p = CreateParams {
        name: r.info.name.clone(),
        members: r.member_names(),
        bitmap_chunk_kb: Some(r.shared.layout.chunk_bytes / 1024),
        rebuild_rate_mb_s: (rate > 0).then_some(rate),
        ..Default::default()
    };
    reg.set_params(&r.info.name, serde_json::to_value(p).unwrap_or(Value::Null));
}

/// `bdev_raid1_create`: looks the members up, checks that none is claimed,
/// creates the array and registers it (claiming the members).
pub fn rpc_create(reg: &BdevRegistry, params: &CreateParams) -> Result<Arc<Raid1Bdev>, BdevError> {
    check_name(&params.name)?;
    if params.members.is_empty() {
        return Err(BdevError::param(
            "members",
            "a raid1 needs at least one member (none given)",
        ));
    }
    reg.check_new(&params.name, &params.members)
        .map_err(|e| BdevError::param("members", e.to_string()))?;
    let members = params
        .members
        .iter()
        .map(|n| {
            reg.get(n)
                .map_err(|e| BdevError::param("members", e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let r = create(params, members)?;
    let dynr: Arc<dyn Bdev> = r.clone();
    // Recorded for config replay: replaying must reassemble, never format.
    let replay = CreateParams {
        format: false,
        initial_sync: false,
        ..params.clone()
    };
    reg.add(
        dynr,
        "bdev_raid1_create",
        serde_json::to_value(replay).unwrap_or(Value::Null),
    )
    .map_err(|e| BdevError::param("members", e.to_string()))?;
    Ok(r)
}

/// `bdev_raid1_add_member`.
pub fn rpc_add_member(reg: &BdevRegistry, p: &MemberParams) -> Result<Value, BdevError> {
    let b = get_raid(reg, &p.name)?;
    let r = raid(&b);
    let faulty_readd = r.find(&p.member).is_ok();
    let m = if faulty_readd {
        reg.get(&p.member)
            .map_err(|e| BdevError::param("member", e.to_string()))?
    } else {
        reg.claim(&p.member, &p.name)
            .map_err(|e| BdevError::param("member", e.to_string()))?
    };
    if let Err(e) = r.add_member(m) {
        if !faulty_readd {
            reg.release(&p.member, &p.name);
        }
        return Err(e);
    }
    record_params(reg, r);
    Ok(r.status())
}

/// `bdev_raid1_remove_member`.
pub fn rpc_remove_member(reg: &BdevRegistry, p: &MemberParams) -> Result<Value, BdevError> {
    let b = get_raid(reg, &p.name)?;
    let r = raid(&b);
    r.remove_member(&p.member)?;
    reg.release(&p.member, &p.name);
    record_params(reg, r);
    Ok(r.status())
}

/// `bdev_raid1_fail_member`.
pub fn rpc_fail_member(reg: &BdevRegistry, p: &MemberParams) -> Result<Value, BdevError> {
    let b = get_raid(reg, &p.name)?;
    let r = raid(&b);
    r.fail_member(&p.member)?;
    Ok(r.status())
}

/// `bdev_raid1_get_status`.
pub fn rpc_get_status(reg: &BdevRegistry, p: &NameParams) -> Result<Value, BdevError> {
    let b = get_raid(reg, &p.name)?;
    Ok(raid(&b).status())
}
