//! `file`: a regular file or block device through io_uring, polled from the
//! reactor (one ring per channel, submissions batched into one
//! `io_uring_enter` per poll).
//!
//! * O_DIRECT when the file system accepts it, with the alignment the
//!   kernel reports for the file (`statx` `STATX_DIOALIGN`: memory and
//!   offset alignment; the device's logical block size, or 512, where it is
//!   not reported). `buf_align` advertises what a buffer needs to go to the
//!   kernel as it is; a request whose iovecs the alignment forbids is copied
//!   through an aligned bounce buffer (counted as `bounced`), so odd guest
//!   buffers work. tmpfs, files whose file system reports no direct I/O, and
//!   regular files whose block size is below the direct-I/O offset alignment
//!   use buffered I/O, reported as `"direct": false`.
//! * A short read or write (fewer bytes than asked, more than none) is
//!   resubmitted for the rest; `EAGAIN`/`EINTR` are resubmitted; `EIO` and
//!   other media failures complete with `MediumError`.
//! * FUA → `RWF_DSYNC` on that write; FLUSH → `fdatasync`;
//!   UNMAP → `fallocate(PUNCH_HOLE)`; WRITE_ZEROES → `fallocate(ZERO_RANGE)`.
//! * A write completes only once the kernel has it (page cache or device),
//!   so it survives a crash of this process; FLUSH/FUA make it durable
//!   against power loss.
//! * Dropping a channel waits for (reaps) every request it has in the
//!   kernel before its ring and buffers go (logged when slow; after
//!   [`CLOSE_GIVE_UP_AFTER`] the ring and the module's buffers are leaked
//!   rather than freed under the kernel). The module holds no I/O of its
//!   own beyond its callers' requests, so a front end that counts its
//!   requests with `reactor::inflight_add`/`inflight_sub` covers it, and a
//!   reactor that drops its pollers at stop blocks until the kernel is done.

use std::any::Any;
use std::fs::{File, OpenOptions};
use std::mem::ManuallyDrop;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};

use crate::{
    check_name, uuid_from_name, validate, Bdev, BdevChannel, BdevError, BdevInfo, BdevStats,
    Capabilities, CompletionQueue, IoRequest, IoStatus, IoType, QueueFull, Slab,
};

/// `IORING_ENTER_GETEVENTS` from `<linux/io_uring.h>` (the io-uring crate
/// does not re-export it).
const IORING_ENTER_GETEVENTS: u32 = 1;
/// `TMPFS_MAGIC` from `<linux/magic.h>`.
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// Requests each file channel holds in flight.
pub const FILE_QUEUE_DEPTH: usize = 256;
/// Iovecs per request.
pub const FILE_MAX_SEGMENTS: usize = 128;
/// A closing channel still waiting for the kernel logs a warning after this.
pub const CLOSE_WARN_AFTER: Duration = Duration::from_secs(1);
/// A closing channel stops waiting after this and leaks its ring and
/// buffers (the kernel may still write them) instead of freeing them.
pub const CLOSE_GIVE_UP_AFTER: Duration = Duration::from_secs(60);
/// Consecutive `EAGAIN`/`EINTR` completions of one request, without
/// progress, before it fails.
const MAX_RETRIES: u32 = 1000;
/// Bounce buffers a channel keeps for reuse.
const BOUNCE_CACHE: usize = 8;

/// The O_DIRECT alignment in use.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct DioAlign {
    /// Alignment of buffer addresses (`stx_dio_mem_align`).
    pub mem: u32,
    /// Alignment of file offsets and of each segment's length
    /// (`stx_dio_offset_align`).
    pub offset: u32,
    /// Whether the kernel reported it (otherwise the logical block size or
    /// 512 is assumed).
    pub reported: bool,
}

/// Counters of a file bdev's slow paths (all channels).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct FileCounters {
    /// Requests copied through a bounce buffer for alignment.
    pub bounced: u64,
    /// Of `bounced`: requests bounced only after O_DIRECT refused them
    /// (`EINVAL`): the alignment in use was too small. Zero when it is right.
    pub einval_bounces: u64,
    /// Short transfers resubmitted for the rest.
    pub short_resubmits: u64,
    /// `EAGAIN`/`EINTR` completions resubmitted.
    pub retries: u64,
    /// Requests a closing channel waited for.
    pub reaped_at_close: u64,
    /// Requests a closing channel gave up waiting for (memory leaked).
    pub abandoned_at_close: u64,
}

#[derive(Default)]
struct Shared {
    bounced: AtomicU64,
    einval_bounces: AtomicU64,
    short_resubmits: AtomicU64,
    retries: AtomicU64,
    reaped_at_close: AtomicU64,
    abandoned_at_close: AtomicU64,
    /// Test hook: data submissions still to be cut short.
    inject_short: AtomicU32,
    /// Test hook: data completions still to report `inject_errno`.
    inject_errno_count: AtomicU32,
    inject_errno: AtomicI32,
}

/// Takes one from a test-hook counter; false when it is zero.
fn take_one(c: &AtomicU32) -> bool {
    c.load(Ordering::Relaxed) > 0
        && c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
}

/// A file bdev.
pub struct FileBdev {
    info: BdevInfo,
    stats: BdevStats,
    file: Arc<File>,
    path: String,
    direct: bool,
    align: DioAlign,
    shared: Arc<Shared>,
}

fn file_err(path: &str, reason: impl Into<String>, source: Option<std::io::Error>) -> BdevError {
    BdevError::File {
        path: path.to_string(),
        reason: reason.into(),
        source,
    }
}

/// `statx(STATX_DIOALIGN)` of an open file: `Some((mem, offset))` when the
/// kernel and file system report it (`(0, 0)`: no direct I/O on this file),
/// `None` when they do not.
fn statx_dio_align(file: &File) -> Option<(u32, u32)> {
    // SAFETY: statx is plain data; all-zero is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the path is a valid empty C string, AT_EMPTY_PATH makes the
    // call describe the open fd, and `stx` is a live, writable statx.
    let rc = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if rc != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 {
        return None;
    }
    Some((stx.stx_dio_mem_align, stx.stx_dio_offset_align))
}

/// The logical block size of a block device (BLKSSZGET).
fn blk_logical_block_size(file: &File) -> Option<u32> {
    let mut lbs: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one c_int through the pointer we pass, which
    // points to a live local.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::BLKSSZGET, &mut lbs) };
    (rc == 0 && lbs > 0).then_some(lbs as u32)
}

/// The logical block size of the device a file system lives on, from sysfs
/// (`dev` is `st_dev`; partitions keep `queue/` in their parent).
fn fs_logical_block_size(dev: u64) -> Option<u32> {
    let (maj, min) = (libc::major(dev), libc::minor(dev));
    ["queue", "../queue"].iter().find_map(|q| {
        std::fs::read_to_string(format!("/sys/dev/block/{maj}:{min}/{q}/logical_block_size"))
            .ok()?
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| n.is_power_of_two())
    })
}

fn is_tmpfs(file: &File) -> bool {
    // SAFETY: statfs is plain data; all-zero is a valid value.
    let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `sfs` is a live, writable statfs; the fd is open.
    let rc = unsafe { libc::fstatfs(file.as_raw_fd(), &mut sfs) };
    rc == 0 && sfs.f_type as i64 == TMPFS_MAGIC
}

/// Creates a file bdev over `filename` with `block_size`-byte blocks.
///
/// Errors: missing file, not a regular file or block device, read-only,
/// smaller than one block, block size not a power of two in 512..=65536 or
/// smaller than the device's logical block size.
pub fn create(name: &str, filename: &str, block_size: u32) -> Result<FileBdev, BdevError> {
    check_name(name)?;
    if !(512..=65536).contains(&block_size) || !block_size.is_power_of_two() {
        return Err(BdevError::param(
            "block_size",
            format!("{block_size} is not a power of two between 512 and 65536"),
        ));
    }
    if filename.is_empty() {
        return Err(BdevError::param("filename", "must not be empty"));
    }
    let meta = std::fs::metadata(filename).map_err(|e| {
        let reason = if e.kind() == std::io::ErrorKind::NotFound {
            "does not exist"
        } else {
            "cannot be accessed"
        };
        file_err(filename, reason, Some(e))
    })?;
    let ft = meta.file_type();
    if !(ft.is_file() || ft.is_block_device()) {
        return Err(file_err(
            filename,
            "is not a regular file or block device",
            None,
        ));
    }
    let open = |direct: bool| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(if direct { libc::O_DIRECT } else { 0 })
            .open(filename)
    };
    let buffered =
        || open(false).map_err(|e| file_err(filename, "cannot be opened read-write", Some(e)));
    let (mut file, mut direct) = match open(true) {
        Ok(f) => (f, true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            // ramfs and some FUSE file systems have no O_DIRECT.
            (buffered()?, false)
        }
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EACCES) | Some(libc::EROFS) | Some(libc::EPERM)
            ) =>
        {
            return Err(file_err(
                filename,
                "is read-only (a file bdev needs read-write access)",
                Some(e),
            ));
        }
        Err(e) => return Err(file_err(filename, "cannot be opened", Some(e))),
    };
    let lbs = if ft.is_block_device() {
        blk_logical_block_size(&file)
    } else {
        None
    };
    if let Some(lbs) = lbs {
        if block_size < lbs {
            return Err(BdevError::param(
                "block_size",
                format!("{block_size} is smaller than the device's logical block size {lbs}"),
            ));
        }
    }
    let mut align = DioAlign {
        mem: 1,
        offset: 1,
        reported: false,
    };
    if direct {
        let mut buffered_why: Option<&str> = None;
        if ft.is_file() && is_tmpfs(&file) {
            // tmpfs accepts O_DIRECT (Linux 6.6+) but copies through the
            // page cache anyway, with no alignment rule.
            buffered_why = Some("tmpfs");
        } else {
            match statx_dio_align(&file) {
                Some((0, _)) | Some((_, 0)) => {
                    buffered_why = Some("the file system reports no direct I/O for this file")
                }
                Some((mem, offset)) => {
                    align = DioAlign {
                        mem,
                        offset,
                        reported: true,
                    }
                }
                None => {
                    let l = lbs
                        .or_else(|| fs_logical_block_size(meta.dev()))
                        .unwrap_or(512);
                    align = DioAlign {
                        mem: l,
                        offset: l,
                        reported: false,
                    };
                }
            }
            if buffered_why.is_none() && block_size < align.offset {
                if ft.is_block_device() {
                    return Err(BdevError::param(
                        "block_size",
                        format!(
                            "{block_size} is smaller than the device's direct I/O alignment {}",
                            align.offset
                        ),
                    ));
                }
                tracing::warn!(
                    file = filename,
                    block_size,
                    dio_offset_align = align.offset,
                    "block size below the direct I/O offset alignment: using buffered I/O"
                );
                buffered_why = Some("block size below the direct I/O offset alignment");
            }
        }
        if let Some(why) = buffered_why {
            tracing::info!(file = filename, "{why}: using buffered I/O");
            file = buffered()?;
            direct = false;
            align = DioAlign {
                mem: 1,
                offset: 1,
                reported: false,
            };
        }
    }
    let size = {
        use std::io::Seek;
        let mut f = &file;
        f.seek(std::io::SeekFrom::End(0))
            .map_err(|e| file_err(filename, "size cannot be read", Some(e)))?
    };
    let num_blocks = size / block_size as u64;
    if num_blocks == 0 {
        return Err(file_err(
            filename,
            format!("is too small: {size} bytes is less than one {block_size}-byte block"),
            None,
        ));
    }
    if size % block_size as u64 != 0 {
        tracing::warn!(
            file = filename,
            size,
            block_size,
            "file size is not a multiple of the block size; the tail is unused"
        );
    }
    Ok(FileBdev {
        info: BdevInfo {
            name: name.to_string(),
            kind: "file",
            block_size,
            num_blocks,
            uuid: uuid_from_name("file", name),
            caps: Capabilities {
                unmap: ft.is_file(),
                unmap_reads_zeroes: ft.is_file(),
                ..Capabilities::ALL
            },
            // Address and length alignment that goes to the kernel without
            // a bounce.
            buf_align: align.mem.max(align.offset) as usize,
            max_segments: FILE_MAX_SEGMENTS,
            queue_depth: FILE_QUEUE_DEPTH,
        },
        stats: BdevStats::default(),
        file: Arc::new(file),
        path: filename.to_string(),
        direct,
        align,
        shared: Arc::default(),
    })
}

impl FileBdev {
    /// Whether O_DIRECT is in use.
    pub fn direct(&self) -> bool {
        self.direct
    }

    /// The O_DIRECT alignment in use (1 and 1 for buffered I/O).
    pub fn dio_align(&self) -> DioAlign {
        self.align
    }

    /// The slow-path counters.
    pub fn counters(&self) -> FileCounters {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let s = &self.shared;
        FileCounters {
            bounced: g(&s.bounced),
            einval_bounces: g(&s.einval_bounces),
            short_resubmits: g(&s.short_resubmits),
            retries: g(&s.retries),
            reaped_at_close: g(&s.reaped_at_close),
            abandoned_at_close: g(&s.abandoned_at_close),
        }
    }

    /// Test hook: the next `n` read/write submissions (on any channel) ask
    /// the kernel for only about half of what is left, so that their
    /// completions are short.
    #[doc(hidden)]
    pub fn inject_short_transfers(&self, n: u32) {
        self.shared.inject_short.store(n, Ordering::Relaxed);
    }

    /// Test hook: the next `n` read/write completions (on any channel)
    /// report `-errno` instead of their result.
    #[doc(hidden)]
    pub fn inject_errno(&self, errno: i32, n: u32) {
        self.shared.inject_errno.store(errno, Ordering::Relaxed);
        self.shared.inject_errno_count.store(n, Ordering::Relaxed);
    }
}

impl Bdev for FileBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn open_module_channel(&self) -> Result<Box<dyn BdevChannel>, BdevError> {
        // DEFER_TASKRUN + TASKRUN_FLAG (Linux 6.1+): completion work is not
        // pushed onto this (always busy, polling) thread with interrupts; the
        // kernel sets a flag and runs it when we enter with GETEVENTS. Measured
        // against fio on the same file this took strata from 74% to about 95%
        // of fio's IOPS (BENCHMARKS.md). Older kernels: COOP_TASKRUN, then a
        // plain ring. The ring is used only by the thread that opened the
        // channel (channels are per reactor), as SINGLE_ISSUER requires.
        let ring = IoUring::builder()
            .setup_defer_taskrun()
            .setup_taskrun_flag()
            .setup_single_issuer()
            .build(FILE_QUEUE_DEPTH as u32)
            .or_else(|_| {
                IoUring::builder()
                    .setup_coop_taskrun()
                    .setup_taskrun_flag()
                    .build(FILE_QUEUE_DEPTH as u32)
            })
            .or_else(|_| IoUring::new(FILE_QUEUE_DEPTH as u32))
            .map_err(|source| BdevError::Os {
                what: "io_uring_setup",
                source,
            })?;
        let slots = Slab::with_capacity(FILE_QUEUE_DEPTH);
        let null_iov = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        // Misaligned buffers are accepted here and bounced.
        let mut accept = self.info.clone();
        accept.buf_align = 1;
        Ok(Box::new(FileChannel {
            accept,
            name: self.info.name.clone(),
            file: Arc::clone(&self.file),
            ring: ManuallyDrop::new(ring),
            slots,
            iovecs: ManuallyDrop::new(
                vec![null_iov; FILE_QUEUE_DEPTH * FILE_MAX_SEGMENTS].into_boxed_slice(),
            ),
            bounce_iovs: ManuallyDrop::new(vec![null_iov; FILE_QUEUE_DEPTH].into_boxed_slice()),
            bounce_cache: Vec::with_capacity(BOUNCE_CACHE),
            cq: CompletionQueue::with_capacity(FILE_QUEUE_DEPTH),
            reaped: Vec::with_capacity(FILE_QUEUE_DEPTH),
            resubmit: Vec::with_capacity(FILE_QUEUE_DEPTH),
            unsubmitted: 0,
            direct: self.direct,
            mem_align: self.align.mem.max(1) as usize,
            len_align: self.align.offset.max(1) as usize,
            shared: Arc::clone(&self.shared),
            warned_short: false,
        }))
    }

    fn driver_specific(&self) -> Option<serde_json::Value> {
        let c = self.counters();
        Some(serde_json::json!({ "file": {
            "filename": self.path,
            "direct": self.direct,
            "dio_mem_align": self.align.mem,
            "dio_offset_align": self.align.offset,
            "dio_align_reported": self.align.reported,
            "bounced": c.bounced,
            "einval_bounces": c.einval_bounces,
            "short_resubmits": c.short_resubmits,
            "retries": c.retries,
            "reaped_at_close": c.reaped_at_close,
            "abandoned_at_close": c.abandoned_at_close,
        } }))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn stats(&self) -> &BdevStats {
        &self.stats
    }
}

/// An aligned heap buffer the kernel reads or writes instead of a
/// request's own iovecs.
struct Bounce {
    ptr: NonNull<u8>,
    layout: std::alloc::Layout,
}

impl Bounce {
    fn new(len: usize, align: usize) -> Bounce {
        let layout = std::alloc::Layout::from_size_align(len.max(1).next_multiple_of(4096), align)
            .expect("bounce buffer layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        Bounce { ptr, layout }
    }

    fn capacity(&self) -> usize {
        self.layout.size()
    }
}

impl Drop for Bounce {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

struct Slot {
    tag: u64,
    io_type: IoType,
    fua: bool,
    /// File offset of the next byte to move.
    off: u64,
    /// Bytes still to move (the range length for unmap / write-zeroes).
    remaining: u64,
    /// Bytes of the request.
    total: u64,
    /// The request's iovecs are `first..niov` of the slot's region in
    /// `iovecs` (advanced past what short transfers moved, unless bounced).
    first: usize,
    niov: usize,
    /// An iovec cut by the short-transfer test hook: (index, full length).
    cut: Option<(usize, usize)>,
    /// The request goes through this buffer (the region keeps the caller's
    /// iovecs, untouched, for the copy).
    bounce: Option<Bounce>,
    retries: u32,
}

struct FileChannel {
    /// The bdev's info with `buf_align` 1: misaligned buffers are bounced.
    accept: BdevInfo,
    name: String,
    file: Arc<File>,
    /// Dropped in `Drop` only once the kernel has nothing in flight.
    ring: ManuallyDrop<IoUring>,
    slots: Slab<Slot>,
    /// `FILE_MAX_SEGMENTS` iovecs per slot; the kernel reads them at submit
    /// time, and they stay put because the boxed slice never moves.
    iovecs: ManuallyDrop<Box<[libc::iovec]>>,
    /// One iovec per slot for a bounced request.
    bounce_iovs: ManuallyDrop<Box<[libc::iovec]>>,
    bounce_cache: Vec<Bounce>,
    cq: CompletionQueue,
    /// Completions taken from the ring, being handled.
    reaped: Vec<(u64, i32)>,
    /// Slots whose rest is still to be handed to the kernel.
    resubmit: Vec<u32>,
    unsubmitted: usize,
    direct: bool,
    mem_align: usize,
    len_align: usize,
    shared: Arc<Shared>,
    warned_short: bool,
}

fn status_from_errno(errno: i32, io_type: IoType) -> IoStatus {
    match errno {
        libc::EOPNOTSUPP | libc::ENOTSUP
            if matches!(io_type, IoType::Unmap | IoType::WriteZeroes) =>
        {
            IoStatus::Unsupported
        }
        libc::EINVAL => IoStatus::InvalidRequest,
        libc::EROFS | libc::EPERM | libc::EACCES => IoStatus::ReadOnly,
        libc::ECANCELED | libc::EINTR | libc::EAGAIN => IoStatus::Aborted,
        _ => IoStatus::MediumError,
    }
}

impl FileChannel {
    fn push_sqe(&mut self, sqe: &io_uring::squeue::Entry) -> bool {
        // SAFETY: every SQE we build references only the file (kept alive by
        // `self.file` for the channel's life) and memory that lives until the
        // completion has been reaped (`Drop` waits for it): the slot's iovec
        // array in `self.iovecs` / `self.bounce_iovs`, its bounce buffer,
        // and the submitter's buffers (the `submit` contract).
        if unsafe { self.ring.submission().push(sqe) }.is_ok() {
            self.unsubmitted += 1;
            return true;
        }
        // The SQ is full: hand what we have to the kernel and retry once.
        if self.ring.submit().is_ok() {
            self.unsubmitted = 0;
            // SAFETY: as above.
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                self.unsubmitted += 1;
                return true;
            }
        }
        false
    }

    fn bounce_get(&mut self, len: usize) -> Bounce {
        match self.bounce_cache.iter().position(|b| b.capacity() >= len) {
            Some(i) => self.bounce_cache.swap_remove(i),
            None => Bounce::new(len, self.mem_align.max(4096)),
        }
    }

    fn bounce_put(&mut self, b: Bounce) {
        if self.bounce_cache.len() < BOUNCE_CACHE {
            self.bounce_cache.push(b);
        }
    }

    /// Gives slot `slot` a bounce buffer (filled from the caller's iovecs
    /// for a write).
    fn attach_bounce(&mut self, slot: u32) {
        let Some(total) = self.slots.get(slot).map(|s| s.total as usize) else {
            return;
        };
        let b = self.bounce_get(total);
        let s = self.slots.get_mut(slot).expect("slot checked above");
        if s.io_type == IoType::Write {
            let base = slot as usize * FILE_MAX_SEGMENTS;
            let mut pos = 0;
            for v in &self.iovecs[base..base + s.niov] {
                // SAFETY: the caller's iovec is valid for reading until the
                // completion (the `submit` contract); the bounce buffer
                // holds `total` bytes, the sum of the iovec lengths.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        v.iov_base as *const u8,
                        b.ptr.as_ptr().add(pos),
                        v.iov_len,
                    )
                };
                pos += v.iov_len;
            }
        }
        s.bounce = Some(b);
        self.shared.bounced.fetch_add(1, Ordering::Relaxed);
    }

    /// Hands what is left of slot `slot` to the kernel.
    fn queue(&mut self, slot: u32) -> bool {
        let fd = types::Fd(self.file.as_raw_fd());
        let cut_short = || {
            self.shared.inject_short.load(Ordering::Relaxed) > 0
                && take_one(&self.shared.inject_short)
        };
        let Some(s) = self.slots.get(slot) else {
            return true;
        };
        let (io_type, off, remaining, fua) = (s.io_type, s.off, s.remaining, s.fua);
        let sqe = match io_type {
            IoType::Read | IoType::Write => {
                // The test hook: ask for about half, in offset-alignment units.
                let want = if cut_short() {
                    let unit = (self.len_align as u64).max(512);
                    Some(((remaining / 2) / unit * unit).max(unit.min(remaining)))
                } else {
                    None
                };
                let s = self.slots.get_mut(slot).expect("slot checked above");
                let (iov, n) = if let Some(b) = &s.bounce {
                    let done = (s.total - s.remaining) as usize;
                    let v = &mut self.bounce_iovs[slot as usize];
                    // SAFETY: `done` < `total` <= the buffer's capacity.
                    v.iov_base = unsafe { b.ptr.as_ptr().add(done) }.cast();
                    v.iov_len = want.unwrap_or(remaining) as usize;
                    (v as *const libc::iovec, 1)
                } else {
                    let base = slot as usize * FILE_MAX_SEGMENTS;
                    let region = &mut self.iovecs[base + s.first..base + s.niov];
                    let mut n = region.len();
                    if let Some(want) = want {
                        let mut acc = 0usize;
                        for (i, v) in region.iter_mut().enumerate() {
                            if acc + v.iov_len >= want as usize {
                                s.cut = Some((i, v.iov_len));
                                v.iov_len = want as usize - acc;
                                n = i + 1;
                                break;
                            }
                            acc += v.iov_len;
                        }
                    }
                    (region.as_ptr(), n as u32)
                };
                if io_type == IoType::Read {
                    opcode::Readv::new(fd, iov, n).offset(off).build()
                } else {
                    let flags = if fua { libc::RWF_DSYNC } else { 0 };
                    opcode::Writev::new(fd, iov, n)
                        .offset(off)
                        .rw_flags(flags)
                        .build()
                }
            }
            IoType::Flush => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            IoType::Unmap => opcode::Fallocate::new(fd, remaining)
                .offset(off)
                .mode(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE)
                .build(),
            IoType::WriteZeroes => opcode::Fallocate::new(fd, remaining)
                .offset(off)
                .mode(libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE)
                .build(),
            IoType::Reset => unreachable!("completed at submit"),
        }
        .user_data(slot as u64);
        self.push_sqe(&sqe)
    }

    /// Takes every completion the ring holds into `self.reaped`.
    fn reap(&mut self) {
        let mut completions = self.ring.completion();
        completions.sync();
        for cqe in &mut completions {
            self.reaped.push((cqe.user_data(), cqe.result()));
        }
    }

    /// Completes slot `slot` with `status`.
    fn finish(&mut self, slot: u32, status: IoStatus, done: &mut dyn FnMut(u64, IoStatus)) {
        let Some(mut s) = self.slots.remove(slot) else {
            return;
        };
        if let Some(b) = s.bounce.take() {
            if status.is_ok() && s.io_type == IoType::Read {
                let base = slot as usize * FILE_MAX_SEGMENTS;
                let mut pos = 0;
                for v in &self.iovecs[base..base + s.niov] {
                    // SAFETY: the caller's iovec is valid for writing until
                    // this completion is reported (the `submit` contract);
                    // the bounce buffer holds their total length.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            b.ptr.as_ptr().add(pos),
                            v.iov_base as *mut u8,
                            v.iov_len,
                        )
                    };
                    pos += v.iov_len;
                }
            }
            self.bounce_put(b);
        }
        done(s.tag, status);
    }

    /// Handles one completion: finishes the slot or schedules the rest.
    fn complete(&mut self, slot: u32, res: i32, done: &mut dyn FnMut(u64, IoStatus)) -> bool {
        let direct = self.direct;
        let base = slot as usize * FILE_MAX_SEGMENTS;
        let Some(s) = self.slots.get_mut(slot) else {
            return false;
        };
        if let Some((i, len)) = s.cut.take() {
            self.iovecs[base + s.first + i].iov_len = len;
        }
        let data = s.io_type.has_data();
        let res = if data
            && self.shared.inject_errno_count.load(Ordering::Relaxed) > 0
            && take_one(&self.shared.inject_errno_count)
        {
            -self.shared.inject_errno.load(Ordering::Relaxed)
        } else {
            res
        };
        if res < 0 {
            let errno = -res;
            if matches!(errno, libc::EAGAIN | libc::EINTR) && s.retries < MAX_RETRIES {
                s.retries += 1;
                self.shared.retries.fetch_add(1, Ordering::Relaxed);
                self.resubmit.push(slot);
                return false;
            }
            if errno == libc::EINVAL
                && direct
                && data
                && s.bounce.is_none()
                && s.remaining == s.total
            {
                // The kernel refused the buffers despite the alignment it
                // reported (or the one assumed): bounce them once.
                tracing::warn!(bdev = %self.name, "O_DIRECT refused a request's buffers; bouncing");
                self.attach_bounce(slot);
                self.shared.einval_bounces.fetch_add(1, Ordering::Relaxed);
                self.resubmit.push(slot);
                return false;
            }
            self.finish(
                slot,
                status_from_errno(errno, s_type(&self.slots, slot)),
                done,
            );
            return true;
        }
        if !data || res as u64 >= s.remaining {
            self.finish(slot, IoStatus::Success, done);
            return true;
        }
        if res == 0 {
            // No progress: the file ends before the request (truncated
            // under us); fail rather than spin.
            if !self.warned_short {
                tracing::warn!(bdev = %self.name, want = s.remaining, "transfer stopped short (end of file?)");
                self.warned_short = true;
            }
            self.finish(slot, IoStatus::MediumError, done);
            return true;
        }
        // A short transfer: the rest goes back to the kernel.
        let moved = res as u64;
        s.off += moved;
        s.remaining -= moved;
        s.retries = 0;
        if s.bounce.is_none() {
            let mut left = moved as usize;
            while left > 0 && s.first < s.niov {
                let v = &mut self.iovecs[base + s.first];
                if left >= v.iov_len {
                    left -= v.iov_len;
                    s.first += 1;
                } else {
                    // SAFETY: `left` < the iovec's length: still inside it.
                    v.iov_base = unsafe { v.iov_base.cast::<u8>().add(left) }.cast();
                    v.iov_len -= left;
                    left = 0;
                }
            }
        }
        self.shared.short_resubmits.fetch_add(1, Ordering::Relaxed);
        self.resubmit.push(slot);
        false
    }

    /// Queues the slots whose rest is waiting; those the SQ has no room for
    /// wait for the next poll.
    fn flush_resubmits(&mut self) {
        let mut i = 0;
        while i < self.resubmit.len() {
            if self.queue(self.resubmit[i]) {
                self.resubmit.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }

    fn enter(&mut self) {
        // GETEVENTS with min_complete 0: never blocks, runs deferred
        // completion work.
        // SAFETY: no signal mask is passed; the SQEs handed over were
        // checked by `push_sqe`'s contract.
        let r = unsafe {
            self.ring.submitter().enter::<libc::sigset_t>(
                self.unsubmitted as u32,
                0,
                IORING_ENTER_GETEVENTS,
                None,
            )
        };
        match r {
            Ok(_) => self.unsubmitted = 0,
            Err(e)
                if e.raw_os_error() == Some(libc::EBUSY)
                    || e.raw_os_error() == Some(libc::EAGAIN) => {}
            Err(e) => tracing::error!(error = %e, "io_uring_enter failed"),
        }
    }
}

fn s_type(slots: &Slab<Slot>, slot: u32) -> IoType {
    slots.get(slot).map_or(IoType::Read, |s| s.io_type)
}

impl BdevChannel for FileChannel {
    unsafe fn submit(&mut self, req: &IoRequest<'_>, tag: u64) -> Result<(), QueueFull> {
        if let Err(st) = validate(&self.accept, req) {
            self.cq.push(tag, st);
            return Ok(());
        }
        if req.io_type == IoType::Reset {
            // Nothing is queued inside the file module beyond the kernel's
            // own requests, which cannot be recalled; a reset completes.
            self.cq.push(tag, IoStatus::Success);
            return Ok(());
        }
        let bs = self.accept.block_size as u64;
        let len = req.num_blocks * bs;
        let slot = self
            .slots
            .insert(Slot {
                tag,
                io_type: req.io_type,
                fua: req.fua,
                off: req.offset_blocks * bs,
                remaining: if req.io_type == IoType::Flush { 0 } else { len },
                total: len,
                first: 0,
                niov: req.iovs.len(),
                cut: None,
                bounce: None,
                retries: 0,
            })
            .map_err(|_| QueueFull)?;
        if req.io_type.has_data() {
            let base = slot as usize * FILE_MAX_SEGMENTS;
            let mut misaligned = false;
            for (dst, v) in self.iovecs[base..base + req.iovs.len()]
                .iter_mut()
                .zip(req.iovs)
            {
                misaligned |= !(v.base as usize).is_multiple_of(self.mem_align)
                    || !v.len.is_multiple_of(self.len_align);
                *dst = libc::iovec {
                    iov_base: v.base.cast(),
                    iov_len: v.len,
                };
            }
            if misaligned && self.direct {
                self.attach_bounce(slot);
            }
        }
        if !self.queue(slot) {
            if let Some(b) = self.slots.remove(slot).and_then(|s| s.bounce) {
                self.bounce_put(b);
            }
            return Err(QueueFull);
        }
        Ok(())
    }

    fn poll(&mut self, done: &mut dyn FnMut(u64, IoStatus)) -> usize {
        let mut n = self.cq.drain(done);
        if !self.resubmit.is_empty() {
            self.flush_resubmits();
        }
        if self.unsubmitted > 0 || (!self.slots.is_empty() && self.ring.submission().taskrun()) {
            self.enter();
        }
        if self.slots.is_empty() {
            return n;
        }
        self.reap();
        let mut reaped = std::mem::take(&mut self.reaped);
        for &(user_data, res) in &reaped {
            let Ok(slot) = u32::try_from(user_data) else {
                continue;
            };
            if self.complete(slot, res, done) {
                n += 1;
            }
        }
        reaped.clear();
        self.reaped = reaped;
        if !self.resubmit.is_empty() {
            // Handed to the kernel by the next poll's enter.
            self.flush_resubmits();
        }
        n
    }

    fn inflight(&self) -> usize {
        self.slots.len() + self.cq.len()
    }
}

impl Drop for FileChannel {
    /// Waits until the kernel is done with every request of this channel:
    /// it may still be reading into or writing from the callers' memory, the
    /// iovec arrays and the bounce buffers, all of which go away (or go back
    /// to their owners) when this returns.
    fn drop(&mut self) {
        // Rests never handed back to the kernel are not in flight.
        for slot in std::mem::take(&mut self.resubmit) {
            self.slots.remove(slot);
        }
        let waiting = self.slots.len() as u64;
        let start = Instant::now();
        let mut next_warn = CLOSE_WARN_AFTER;
        while !self.slots.is_empty() {
            let elapsed = start.elapsed();
            if elapsed >= CLOSE_GIVE_UP_AFTER {
                break;
            }
            if elapsed >= next_warn {
                tracing::warn!(
                    bdev = %self.name,
                    inflight = self.slots.len(),
                    waited_ms = elapsed.as_millis() as u64,
                    "closing file channel still waits for the kernel"
                );
                next_warn += CLOSE_WARN_AFTER * 5;
            }
            // Submit anything queued and wait up to 100 ms for a completion.
            let ts = types::Timespec::new().nsec(100_000_000);
            let args = types::SubmitArgs::new().timespec(&ts);
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => self.unsubmitted = 0,
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                    ) => {}
                Err(_) => {
                    // No EXT_ARG (Linux < 5.11): submit, poll, nap.
                    if self.ring.submit().is_ok() {
                        self.unsubmitted = 0;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            self.reap();
            for (user_data, _) in std::mem::take(&mut self.reaped) {
                if let Ok(slot) = u32::try_from(user_data) {
                    self.slots.remove(slot);
                }
            }
        }
        let left = self.slots.len() as u64;
        self.shared
            .reaped_at_close
            .fetch_add(waiting - left, Ordering::Relaxed);
        if left > 0 {
            tracing::error!(
                bdev = %self.name,
                inflight = left,
                "closing file channel gave up waiting for the kernel; its ring and buffers are leaked"
            );
            self.shared
                .abandoned_at_close
                .fetch_add(left, Ordering::Relaxed);
            // Keep what the kernel may still touch: slots (bounce buffers),
            // iovec arrays and the ring itself.
            std::mem::forget(std::mem::replace(&mut self.slots, Slab::with_capacity(0)));
            return;
        }
        if waiting > 0 && start.elapsed() >= CLOSE_WARN_AFTER {
            tracing::warn!(bdev = %self.name, waited_ms = start.elapsed().as_millis() as u64, "closing file channel done waiting");
        }
        // SAFETY: nothing is in flight any more, and the fields are not used
        // after this.
        unsafe {
            ManuallyDrop::drop(&mut self.ring);
            ManuallyDrop::drop(&mut self.iovecs);
            ManuallyDrop::drop(&mut self.bounce_iovs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self, AlignedBuf};

    fn backing(dir: &tempfile::TempDir, name: &str, size: u64) -> String {
        let p = dir.path().join(name);
        let f = File::create(&p).unwrap();
        f.set_len(size).unwrap();
        p.to_string_lossy().into_owned()
    }

    #[test]
    fn conformance() {
        // Under the checkout's target dir (a real file system, O_DIRECT
        // capable), and under /tmp (often tmpfs: buffered).
        let dir = tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")).unwrap();
        let p = backing(&dir, "a.img", 1 << 20);
        let b: Arc<dyn Bdev> = Arc::new(create("f0", &p, 512).unwrap());
        testing::conformance(&b, testing::Persistence::Zeroing);
        let b: Arc<dyn Bdev> = Arc::new(create("f1", &p, 4096).unwrap());
        testing::conformance(&b, testing::Persistence::Zeroing);
        let tdir = tempfile::tempdir().unwrap();
        let p = backing(&tdir, "b.img", 1 << 20);
        let b: Arc<dyn Bdev> = Arc::new(create("f2", &p, 512).unwrap());
        testing::conformance(&b, testing::Persistence::Zeroing);
    }

    #[test]
    fn creation_errors_name_the_problem() {
        let dir = tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")).unwrap();
        let missing = dir.path().join("nope").to_string_lossy().into_owned();
        let e = create("f", &missing, 512).err().unwrap().to_string();
        assert_eq!(e, format!("{missing}: does not exist"));
        let small = backing(&dir, "small", 100);
        let e = create("f", &small, 512).err().unwrap().to_string();
        assert_eq!(
            e,
            format!("{small}: is too small: 100 bytes is less than one 512-byte block")
        );
        let ok = backing(&dir, "ok", 8192);
        let e = create("f", &ok, 1000).err().unwrap().to_string();
        assert_eq!(
            e,
            "invalid parameter `block_size`: 1000 is not a power of two between 512 and 65536"
        );
        let e = create("f", dir.path().to_str().unwrap(), 512)
            .err()
            .unwrap()
            .to_string();
        assert!(e.ends_with("is not a regular file or block device"), "{e}");
        assert!(create("f", "", 512).is_err());
        // Read-only: only meaningful when not running as root (root ignores
        // file modes); check the mode-based path when we can.
        let ro = backing(&dir, "ro", 8192);
        let mut perm = std::fs::metadata(&ro).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o444);
        std::fs::set_permissions(&ro, perm).unwrap();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            let e = create("f", &ro, 512).err().unwrap().to_string();
            assert_eq!(
                e,
                format!("{ro}: is read-only (a file bdev needs read-write access)")
            );
        }
    }

    #[test]
    fn writes_reach_the_file_and_fua_works() {
        let dir = tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")).unwrap();
        let p = backing(&dir, "c.img", 64 * 4096);
        let b: Arc<dyn Bdev> = Arc::new(create("f3", &p, 4096).unwrap());
        let mut ch = crate::open_channel(&b).unwrap();
        let mut w = AlignedBuf::new(2 * 4096);
        testing::fill_pattern(w.as_mut_slice(), 5, 4096, 9);
        let v = [w.iovec(0, 8192)];
        // SAFETY: `w` outlives the synchronous call.
        let st = unsafe { testing::run(&mut ch, &IoRequest::write(5, 2, &v).with_fua(true)) };
        assert_eq!(st, IoStatus::Success);
        let on_disk = std::fs::read(&p).unwrap();
        assert!(testing::check_pattern(
            &on_disk[5 * 4096..7 * 4096],
            5,
            4096,
            9
        ));
        // Unaligned buffers under O_DIRECT are bounced, not refused.
        let fb = b.as_any().downcast_ref::<FileBdev>().unwrap();
        if fb.direct() {
            let mut u = AlignedBuf::new(4096 + 512);
            let v = [u.iovec(1, 4096)];
            // SAFETY: as above.
            let st = unsafe { testing::run(&mut ch, &IoRequest::read(5, 1, &v)) };
            assert_eq!(st, IoStatus::Success);
            assert!(testing::check_pattern(&u.as_slice()[1..4097], 5, 4096, 9));
            assert_eq!(fb.counters().bounced, 1);
        }
    }
}
