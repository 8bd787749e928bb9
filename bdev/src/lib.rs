//! The block-device layer: the [`Bdev`] interface, per-reactor channels,
//! request validation, statistics, the registry, and the modules
//! (`null`, `malloc`, `file`, `error`, `delay`, `cache` — a volatile
//! write-cache fault model —, `raid1`), and the memory map.
//!
//! # Model
//!
//! A [`Bdev`] is shared (`Arc`, immutable or internally atomic). I/O goes
//! through a [`Channel`], opened once per consumer per reactor; a channel is
//! `!Send` and owned by the reactor that opened it. I/O is completion-based,
//! in the shape of cloud-hypervisor's async I/O trait and SPDK's channels:
//!
//! 1. [`Channel::submit`] queues a request identified by a caller-chosen
//!    `tag` (a slab index, a virtio head, an SRP tag). It never blocks and
//!    never completes the request synchronously; when the channel's
//!    pre-allocated request pool is exhausted it returns [`QueueFull`] and
//!    the caller retries later.
//! 2. [`Channel::poll`] advances the channel (reaps io_uring completions,
//!    child completions, timers) and reports finished requests through a
//!    callback `(tag, IoStatus)`.
//!
//! Because completions are only delivered from `poll`, which the owner
//! calls from its own poller, there is no re-entrancy and no shared mutable
//! state: composition (raid1 over children, error over a base) is just a
//! channel owning child channels and polling them.
//!
//! Data is a scatter-gather list of [`IoVec`] over memory the submitter
//! owns (guest memory for vhost, registered memory for SRP); `submit` is
//! `unsafe` because the channel reads or writes that memory until the
//! request completes.
//!
//! Statuses are small `Copy` values ([`IoStatus`]) that tell a medium error
//! (raid1 retries the other mirror) from a path error (multipath retries
//! another path) from an invalid request (nobody retries).
//!
//! # Memory map
//!
//! [`memmap`] is the process-wide record of DMA-able memory (SPDK's
//! `spdk_mem_register`): whoever owns memory that I/O may point into
//! registers it for as long as it is valid — every [`AlignedBuf`] for its
//! lifetime, the vhost-user memory table while it is mapped — and a
//! transport that must prepare memory for its device (an RDMA protection
//! domain, one MR per region) subscribes a [`memmap::Listener`] that is
//! told of every region present and to come. On the data path an iovec is
//! translated with [`memmap::find`] (or a per-reactor copy of
//! [`memmap::regions`], refreshed when [`memmap::generation`] moves); memory
//! in no region takes the transport's bounce-buffer path.

use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub mod cache;
pub mod delay;
pub mod error;
pub mod file;
pub mod malloc;
pub mod memmap;
pub mod null;
pub mod raid1;
mod registry;
pub mod testing;
mod util;

pub use registry::{BdevRegistry, RegistryError};
pub use util::{AlignedBuf, CompletionQueue, Slab};

/// Kinds of I/O.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum IoType {
    /// Read blocks into the iovecs.
    Read,
    /// Write blocks from the iovecs.
    Write,
    /// Make previously completed writes durable.
    Flush,
    /// Deallocate blocks (contents afterwards read as zeroes or stale, as
    /// the module documents).
    Unmap,
    /// Write zeroes over a range without a data buffer.
    WriteZeroes,
    /// Abort / drain outstanding work (SCSI LUN reset).
    Reset,
}

impl IoType {
    /// All kinds, in a fixed order.
    pub const ALL: [IoType; 6] = [
        IoType::Read,
        IoType::Write,
        IoType::Flush,
        IoType::Unmap,
        IoType::WriteZeroes,
        IoType::Reset,
    ];

    /// Lower-case name, as used in RPC parameters.
    pub fn name(self) -> &'static str {
        match self {
            IoType::Read => "read",
            IoType::Write => "write",
            IoType::Flush => "flush",
            IoType::Unmap => "unmap",
            IoType::WriteZeroes => "write_zeroes",
            IoType::Reset => "reset",
        }
    }

    /// Whether this kind carries a data buffer.
    pub fn has_data(self) -> bool {
        matches!(self, IoType::Read | IoType::Write)
    }

    /// Whether this kind addresses a block range.
    pub fn has_range(self) -> bool {
        matches!(
            self,
            IoType::Read | IoType::Write | IoType::Unmap | IoType::WriteZeroes
        )
    }
}

/// The outcome of one I/O.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum IoStatus {
    /// Done.
    Success,
    /// The medium failed (bad data, failed write): another mirror may have it.
    MediumError,
    /// The route to the device failed (transport, path down): another path
    /// may succeed; the data itself is not known to be bad.
    PathError,
    /// The request itself is wrong (range, length, alignment): never retried.
    InvalidRequest,
    /// The device does not support this kind of I/O.
    Unsupported,
    /// Aborted by a reset or by shutdown before it reached the device.
    Aborted,
    /// The device is read-only / refuses writes.
    ReadOnly,
}

impl IoStatus {
    /// Whether the I/O succeeded.
    pub fn is_ok(self) -> bool {
        self == IoStatus::Success
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            IoStatus::Success => "success",
            IoStatus::MediumError => "medium_error",
            IoStatus::PathError => "path_error",
            IoStatus::InvalidRequest => "invalid_request",
            IoStatus::Unsupported => "unsupported",
            IoStatus::Aborted => "aborted",
            IoStatus::ReadOnly => "read_only",
        }
    }
}

/// One segment of a scatter-gather list: memory owned by the submitter.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct IoVec {
    /// Start address.
    pub base: *mut u8,
    /// Length in bytes.
    pub len: usize,
}

impl IoVec {
    /// A segment covering `buf`.
    pub fn from_slice(buf: &mut [u8]) -> IoVec {
        IoVec {
            base: buf.as_mut_ptr(),
            len: buf.len(),
        }
    }
}

/// One request, borrowed by [`Channel::submit`] (the channel copies what it
/// needs into its own pool before returning).
#[derive(Copy, Clone, Debug)]
pub struct IoRequest<'a> {
    /// What to do.
    pub io_type: IoType,
    /// First block (ignored for flush and reset).
    pub offset_blocks: u64,
    /// Number of blocks (ignored for flush and reset).
    pub num_blocks: u64,
    /// Data buffers for read and write; empty otherwise. Their total length
    /// must be `num_blocks * block_size`.
    pub iovs: &'a [IoVec],
    /// Force unit access: a write completes only once durable.
    pub fua: bool,
}

impl<'a> IoRequest<'a> {
    /// A read of `num_blocks` at `offset_blocks` into `iovs`.
    pub fn read(offset_blocks: u64, num_blocks: u64, iovs: &'a [IoVec]) -> Self {
        IoRequest {
            io_type: IoType::Read,
            offset_blocks,
            num_blocks,
            iovs,
            fua: false,
        }
    }
    /// A write of `num_blocks` at `offset_blocks` from `iovs`.
    pub fn write(offset_blocks: u64, num_blocks: u64, iovs: &'a [IoVec]) -> Self {
        IoRequest {
            io_type: IoType::Write,
            offset_blocks,
            num_blocks,
            iovs,
            fua: false,
        }
    }
    /// A flush.
    pub fn flush() -> Self {
        IoRequest {
            io_type: IoType::Flush,
            offset_blocks: 0,
            num_blocks: 0,
            iovs: &[],
            fua: false,
        }
    }
    /// An unmap of a range.
    pub fn unmap(offset_blocks: u64, num_blocks: u64) -> Self {
        IoRequest {
            io_type: IoType::Unmap,
            offset_blocks,
            num_blocks,
            iovs: &[],
            fua: false,
        }
    }
    /// A write-zeroes of a range.
    pub fn write_zeroes(offset_blocks: u64, num_blocks: u64) -> Self {
        IoRequest {
            io_type: IoType::WriteZeroes,
            offset_blocks,
            num_blocks,
            iovs: &[],
            fua: false,
        }
    }
    /// A reset.
    pub fn reset() -> Self {
        IoRequest {
            io_type: IoType::Reset,
            offset_blocks: 0,
            num_blocks: 0,
            iovs: &[],
            fua: false,
        }
    }
    /// The same request with FUA set.
    pub fn with_fua(mut self, fua: bool) -> Self {
        self.fua = fua;
        self
    }
}

/// Returned by [`Channel::submit`] when the channel's request pool is full.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("channel queue is full")]
pub struct QueueFull;

/// What a bdev supports.
#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Capabilities {
    /// FLUSH does something (a volatile cache exists).
    pub flush: bool,
    /// UNMAP is supported.
    pub unmap: bool,
    /// WRITE_ZEROES is supported.
    pub write_zeroes: bool,
    /// FUA is honoured.
    pub fua: bool,
    /// Unmapped blocks read back as zeroes.
    pub unmap_reads_zeroes: bool,
    /// Writes are refused.
    pub read_only: bool,
}

impl Capabilities {
    /// Everything supported, writable.
    pub const ALL: Capabilities = Capabilities {
        flush: true,
        unmap: true,
        write_zeroes: true,
        fua: true,
        unmap_reads_zeroes: true,
        read_only: false,
    };

    /// Whether an I/O kind is supported.
    pub fn supports(&self, t: IoType) -> bool {
        match t {
            IoType::Read | IoType::Reset | IoType::Flush => true,
            IoType::Write => !self.read_only,
            IoType::Unmap => self.unmap && !self.read_only,
            IoType::WriteZeroes => self.write_zeroes && !self.read_only,
        }
    }
}

/// Static facts about a bdev.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BdevInfo {
    /// Unique name.
    pub name: String,
    /// Module name: "null", "malloc", "file", "error", "delay", "raid1", ...
    pub kind: &'static str,
    /// Bytes per block (512..=65536, a power of two).
    pub block_size: u32,
    /// Number of blocks.
    pub num_blocks: u64,
    /// A stable UUID.
    pub uuid: [u8; 16],
    /// Supported operations.
    pub caps: Capabilities,
    /// Alignment of every iovec's address and length, in bytes, that the
    /// module needs to move the data without a copy (1 = none). `validate`
    /// enforces it for modules that cannot copy; the file bdev accepts any
    /// buffer and bounces the misaligned ones through aligned memory.
    pub buf_align: usize,
    /// Maximum iovecs in one request.
    pub max_segments: usize,
    /// Requests each channel can hold in flight.
    pub queue_depth: usize,
}

impl BdevInfo {
    /// Size in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.num_blocks * self.block_size as u64
    }
}

/// Default per-channel request pool size.
pub const DEFAULT_QUEUE_DEPTH: usize = 1024;
/// Maximum iovecs per request accepted by the built-in modules.
pub const MAX_SEGMENTS: usize = 256;

/// Errors creating or opening bdevs (control plane).
#[derive(Debug, thiserror::Error)]
pub enum BdevError {
    /// A parameter is wrong; the message names it.
    #[error("invalid parameter `{field}`: {reason}")]
    InvalidParam {
        /// The parameter.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// A backing file could not be used.
    #[error("{path}: {reason}")]
    File {
        /// The path.
        path: String,
        /// What is wrong with it.
        reason: String,
        /// The OS error, if any.
        #[source]
        source: Option<std::io::Error>,
    },
    /// An OS call failed.
    #[error("{what} failed")]
    Os {
        /// The call.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The bdev is being deleted or its base is gone.
    #[error("bdev {0} is gone")]
    Gone(String),
    /// Anything else, with a message.
    #[error("{0}")]
    Other(String),
}

impl BdevError {
    /// Shorthand for [`BdevError::InvalidParam`].
    pub fn param(field: &'static str, reason: impl Into<String>) -> Self {
        BdevError::InvalidParam {
            field,
            reason: reason.into(),
        }
    }
}

/// A block device.
pub trait Bdev: Send + Sync + 'static {
    /// Static facts.
    fn info(&self) -> &BdevInfo;

    /// Opens a channel on the calling thread (a reactor). The channel is
    /// owned by that thread. Use [`open_channel`] rather than calling this
    /// directly: it adds statistics.
    fn open_module_channel(&self) -> Result<Box<dyn BdevChannel>, BdevError>;

    /// An identifier that is the same on every path to the same device:
    /// what multipath compares to tell that two bdevs reach one logical
    /// unit. SCSI-backed bdevs (the SRP initiator) return the VPD page 0x83
    /// designator in Linux's `wwid` form (`naa.…`, `eui.…`); every other
    /// bdev its UUID.
    fn device_id(&self) -> String {
        format_uuid(&self.info().uuid)
    }

    /// Names of the bdevs this one is built on (claimed while it exists).
    fn base_bdevs(&self) -> Vec<String> {
        Vec::new()
    }

    /// Module-specific status for `bdev_get_bdevs` (JSON object), if any.
    fn driver_specific(&self) -> Option<serde_json::Value> {
        None
    }

    /// For module-specific RPCs (downcast to the concrete type).
    fn as_any(&self) -> &dyn Any;

    /// Called once when the bdev is removed from the registry (stop
    /// background work, release files).
    fn shutdown(&self) {}

    /// Per-bdev statistics (shared by all its channels).
    fn stats(&self) -> &BdevStats;
}

/// A module's per-reactor channel. See the crate docs for the protocol.
pub trait BdevChannel {
    /// Queues a request. Invalid requests are accepted and completed with
    /// an error status from the next [`BdevChannel::poll`]; only a full pool
    /// is reported here.
    ///
    /// # Safety
    /// Every iovec in `req.iovs` must describe memory that stays valid, and
    /// is not accessed by anyone else (for a read) or not written by anyone
    /// else (for a write), until the completion for `tag` has been reported
    /// by `poll`.
    unsafe fn submit(&mut self, req: &IoRequest<'_>, tag: u64) -> Result<(), QueueFull>;

    /// Advances the channel; reports finished requests. Returns how many
    /// completions it reported (0 = idle).
    fn poll(&mut self, done: &mut dyn FnMut(u64, IoStatus)) -> usize;

    /// Requests submitted and not yet reported.
    fn inflight(&self) -> usize;
}

/// Counters for one bdev, updated by its channels with relaxed atomics.
#[derive(Default, Debug)]
pub struct BdevStats {
    /// Completed reads / writes / other ops.
    pub reads: AtomicU64,
    /// Completed writes.
    pub writes: AtomicU64,
    /// Completed flushes.
    pub flushes: AtomicU64,
    /// Completed unmaps.
    pub unmaps: AtomicU64,
    /// Completed write-zeroes.
    pub write_zeroes: AtomicU64,
    /// Completed resets.
    pub resets: AtomicU64,
    /// Bytes read.
    pub bytes_read: AtomicU64,
    /// Bytes written.
    pub bytes_written: AtomicU64,
    /// I/Os that completed with an error.
    pub errors: AtomicU64,
    /// Channels currently open.
    pub channels: AtomicU64,
}

impl BdevStats {
    /// A JSON snapshot.
    pub fn to_json(&self) -> serde_json::Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "num_read_ops": g(&self.reads),
            "num_write_ops": g(&self.writes),
            "num_flush_ops": g(&self.flushes),
            "num_unmap_ops": g(&self.unmaps),
            "num_write_zeroes_ops": g(&self.write_zeroes),
            "num_reset_ops": g(&self.resets),
            "bytes_read": g(&self.bytes_read),
            "bytes_written": g(&self.bytes_written),
            "num_errors": g(&self.errors),
            "open_channels": g(&self.channels),
        })
    }
}

/// Per-request bookkeeping kept by [`Channel`] for statistics.
#[derive(Copy, Clone)]
struct Pending {
    tag: u64,
    io_type: IoType,
    bytes: u64,
}

/// A channel with statistics: what consumers (vhost, SRP, raid1, bench) hold.
pub struct Channel {
    inner: Box<dyn BdevChannel>,
    bdev: Arc<dyn Bdev>,
    /// Local counters, flushed to the shared atomics every poll that
    /// completed something (one relaxed add per counter, not per I/O).
    local: [u64; 6],
    local_bytes: [u64; 2],
    local_errors: u64,
    /// In-flight requests: the inner channel sees the slot index as its
    /// tag; the slot keeps the caller's tag, kind and size.
    pending: Slab<Pending>,
}

/// Opens a statistics-counting channel on `bdev` for the calling thread.
pub fn open_channel(bdev: &Arc<dyn Bdev>) -> Result<Channel, BdevError> {
    let inner = bdev.open_module_channel()?;
    bdev.stats().channels.fetch_add(1, Ordering::Relaxed);
    let depth = bdev.info().queue_depth.max(1);
    Ok(Channel {
        inner,
        bdev: Arc::clone(bdev),
        local: [0; 6],
        local_bytes: [0; 2],
        local_errors: 0,
        pending: Slab::with_capacity(depth),
    })
}

impl Channel {
    /// The bdev this channel belongs to.
    pub fn bdev(&self) -> &Arc<dyn Bdev> {
        &self.bdev
    }

    /// The bdev's static facts.
    pub fn info(&self) -> &BdevInfo {
        self.bdev.info()
    }

    /// Queues a request; see [`BdevChannel::submit`].
    ///
    /// # Safety
    /// As [`BdevChannel::submit`]: the iovecs must stay valid and
    /// exclusively lent to this request until its completion is reported.
    pub unsafe fn submit(&mut self, req: &IoRequest<'_>, tag: u64) -> Result<(), QueueFull> {
        if self.pending.is_full() {
            return Err(QueueFull);
        }
        let bytes = if req.io_type.has_data() {
            req.iovs.iter().map(|v| v.len as u64).sum()
        } else {
            0
        };
        let slot = self
            .pending
            .insert(Pending {
                tag,
                io_type: req.io_type,
                bytes,
            })
            .map_err(|_| QueueFull)?;
        // SAFETY: forwarded contract; the caller upholds it for us.
        let r = unsafe { self.inner.submit(req, slot as u64) };
        if r.is_err() {
            self.pending.remove(slot);
        }
        r
    }

    /// Advances the channel; see [`BdevChannel::poll`].
    pub fn poll(&mut self, done: &mut dyn FnMut(u64, IoStatus)) -> usize {
        let Channel {
            inner,
            pending,
            local,
            local_bytes,
            local_errors,
            ..
        } = self;
        let n = inner.poll(&mut |slot, status| {
            let Ok(slot) = u32::try_from(slot) else {
                return;
            };
            if let Some(p) = pending.remove(slot) {
                if status.is_ok() {
                    local[p.io_type as usize] += 1;
                    match p.io_type {
                        IoType::Read => local_bytes[0] += p.bytes,
                        IoType::Write => local_bytes[1] += p.bytes,
                        _ => {}
                    }
                } else {
                    *local_errors += 1;
                }
                done(p.tag, status)
            }
        });
        if n > 0 {
            self.flush_stats();
        }
        n
    }

    fn flush_stats(&mut self) {
        let s = self.bdev.stats();
        let counters = [
            &s.reads,
            &s.writes,
            &s.flushes,
            &s.unmaps,
            &s.write_zeroes,
            &s.resets,
        ];
        for (c, v) in counters.iter().zip(self.local.iter_mut()) {
            if *v != 0 {
                c.fetch_add(*v, Ordering::Relaxed);
                *v = 0;
            }
        }
        for (c, v) in [&s.bytes_read, &s.bytes_written]
            .iter()
            .zip(self.local_bytes.iter_mut())
        {
            if *v != 0 {
                c.fetch_add(*v, Ordering::Relaxed);
                *v = 0;
            }
        }
        if self.local_errors != 0 {
            s.errors.fetch_add(self.local_errors, Ordering::Relaxed);
            self.local_errors = 0;
        }
    }

    /// Requests in flight.
    pub fn inflight(&self) -> usize {
        self.pending.len()
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.flush_stats();
        self.bdev.stats().channels.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Checks a request against a bdev's geometry and capabilities. Every
/// module calls this first; `Err` is the status to complete with.
pub fn validate(info: &BdevInfo, req: &IoRequest<'_>) -> Result<(), IoStatus> {
    if !info.caps.supports(req.io_type) {
        return Err(if info.caps.read_only && req.io_type != IoType::Read {
            IoStatus::ReadOnly
        } else {
            IoStatus::Unsupported
        });
    }
    if req.io_type.has_range() {
        if req.num_blocks == 0 {
            return Err(IoStatus::InvalidRequest);
        }
        match req.offset_blocks.checked_add(req.num_blocks) {
            Some(end) if end <= info.num_blocks => {}
            _ => return Err(IoStatus::InvalidRequest),
        }
    }
    if req.io_type.has_data() {
        if req.iovs.is_empty() || req.iovs.len() > info.max_segments {
            return Err(IoStatus::InvalidRequest);
        }
        let mut total: u64 = 0;
        for v in req.iovs {
            if v.len == 0 || v.base.is_null() {
                return Err(IoStatus::InvalidRequest);
            }
            if info.buf_align > 1
                && (!(v.base as usize).is_multiple_of(info.buf_align)
                    || !v.len.is_multiple_of(info.buf_align))
            {
                return Err(IoStatus::InvalidRequest);
            }
            total += v.len as u64;
        }
        if Some(total) != req.num_blocks.checked_mul(info.block_size as u64) {
            return Err(IoStatus::InvalidRequest);
        }
    } else if !req.iovs.is_empty() {
        return Err(IoStatus::InvalidRequest);
    }
    Ok(())
}

/// Checks `block_size` and `num_blocks` parameters shared by the modules.
pub fn check_geometry(block_size: u32, num_blocks: u64) -> Result<(), BdevError> {
    if !(512..=65536).contains(&block_size) || !block_size.is_power_of_two() {
        return Err(BdevError::param(
            "block_size",
            format!("{block_size} is not a power of two between 512 and 65536"),
        ));
    }
    if num_blocks == 0 {
        return Err(BdevError::param("num_blocks", "must be greater than zero"));
    }
    if num_blocks.checked_mul(block_size as u64).is_none() {
        return Err(BdevError::param("num_blocks", "size in bytes overflows"));
    }
    Ok(())
}

/// Checks a bdev name.
pub fn check_name(name: &str) -> Result<(), BdevError> {
    if name.is_empty() || name.len() > 64 {
        return Err(BdevError::param("name", "must be 1 to 64 characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
    {
        return Err(BdevError::param(
            "name",
            format!("`{name}` may only contain letters, digits, _ - . :"),
        ));
    }
    Ok(())
}

/// A UUID derived from a name (stable across restarts for the same name).
pub fn uuid_from_name(kind: &str, name: &str) -> [u8; 16] {
    // FNV-1a 128 folded from two 64-bit hashes: stable, dependency-free.
    let h = |seed: u64| {
        let mut x = seed;
        for b in kind.bytes().chain([0u8]).chain(name.bytes()) {
            x ^= b as u64;
            x = x.wrapping_mul(0x100000001b3);
        }
        x
    };
    let a = h(0xcbf29ce484222325).to_be_bytes();
    let b = h(0x84222325cbf29ce4).to_be_bytes();
    let mut u = [0u8; 16];
    u[..8].copy_from_slice(&a);
    u[8..].copy_from_slice(&b);
    u[6] = (u[6] & 0x0f) | 0x80; // version 8 (custom)
    u[8] = (u[8] & 0x3f) | 0x80; // RFC 4122 variant
    u
}

/// Formats a UUID.
pub fn format_uuid(u: &[u8; 16]) -> String {
    let h: Vec<String> = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> BdevInfo {
        BdevInfo {
            name: "t".into(),
            kind: "test",
            block_size: 512,
            num_blocks: 100,
            uuid: [0; 16],
            caps: Capabilities {
                unmap: false,
                ..Capabilities::ALL
            },
            buf_align: 512,
            max_segments: 4,
            queue_depth: 8,
        }
    }

    #[test]
    fn validation_rejects_bad_requests() {
        let i = info();
        let mut buf = vec![0u8; 4096];
        let aligned = buf
            .as_mut_ptr()
            .wrapping_add(buf.as_ptr().align_offset(512));
        let v = [IoVec {
            base: aligned,
            len: 512,
        }];
        assert_eq!(validate(&i, &IoRequest::read(99, 1, &v)), Ok(()));
        // Out of range, overflowing, zero-length.
        assert_eq!(
            validate(&i, &IoRequest::read(100, 1, &v)),
            Err(IoStatus::InvalidRequest)
        );
        assert_eq!(
            validate(&i, &IoRequest::read(u64::MAX, 1, &v)),
            Err(IoStatus::InvalidRequest)
        );
        assert_eq!(
            validate(&i, &IoRequest::read(0, 0, &v)),
            Err(IoStatus::InvalidRequest)
        );
        // Length mismatch.
        assert_eq!(
            validate(&i, &IoRequest::read(0, 2, &v)),
            Err(IoStatus::InvalidRequest)
        );
        // Unaligned buffer.
        let u = [IoVec {
            base: aligned.wrapping_add(1),
            len: 512,
        }];
        assert_eq!(
            validate(&i, &IoRequest::write(0, 1, &u)),
            Err(IoStatus::InvalidRequest)
        );
        // Too many segments.
        let many = [IoVec {
            base: aligned,
            len: 512,
        }; 5];
        assert_eq!(
            validate(&i, &IoRequest::read(0, 5, &many)),
            Err(IoStatus::InvalidRequest)
        );
        // Unsupported op, and data on a flush.
        assert_eq!(
            validate(&i, &IoRequest::unmap(0, 1)),
            Err(IoStatus::Unsupported)
        );
        let mut f = IoRequest::flush();
        f.iovs = &v;
        assert_eq!(validate(&i, &f), Err(IoStatus::InvalidRequest));
        // Read-only.
        let mut ro = info();
        ro.caps.read_only = true;
        assert_eq!(
            validate(&ro, &IoRequest::write(0, 1, &v)),
            Err(IoStatus::ReadOnly)
        );
        assert_eq!(validate(&ro, &IoRequest::read(0, 1, &v)), Ok(()));
    }

    #[test]
    fn geometry_and_names() {
        assert!(check_geometry(512, 1).is_ok());
        assert!(check_geometry(4096, 1 << 30).is_ok());
        let e = check_geometry(1000, 1).unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid parameter `block_size`: 1000 is not a power of two between 512 and 65536"
        );
        assert!(check_geometry(256, 1).is_err());
        assert!(check_geometry(512, 0).is_err());
        assert!(check_geometry(65536, u64::MAX).is_err());
        assert!(check_name("Malloc0").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a/b").is_err());
        assert_eq!(uuid_from_name("malloc", "a"), uuid_from_name("malloc", "a"));
        assert_ne!(uuid_from_name("malloc", "a"), uuid_from_name("malloc", "b"));
        assert_eq!(format_uuid(&[0x11; 16]).len(), 36);
    }
}
