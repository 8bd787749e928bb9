//! `strata verify vhost`: a data-integrity check through any vhost-user-blk
//! server, driven by libblkio's `virtio-blk-vhost-user` driver (the same
//! independent frontend as `strata bench vhost`).
//!
//! A pass writes a seeded pattern over a region in requests of `io_size`
//! bytes (in shuffled order, `queue_depth` at a time), then reads the whole
//! region back and compares. The pattern is [`bdev::testing::fill_pattern`]:
//! every pattern block (`block_size` bytes, by default the device's logical
//! block size) is derived from the seed and its block address, so a
//! mismatch says which block is wrong, and whether it holds zeroes, another
//! block's data (a misdirected write or read) or data of another seed (a
//! lost or stale write). Because it is the same pattern that the daemon's
//! `bdev_io` RPC writes and verifies, a region written here can be checked
//! with `bdev_io {"op": "verify", "seed": ...}` on any bdev underneath (and
//! the other way round), given the same block size.
//!
//! A request larger than the device's `size_max` (strata's vhost: 1 MiB) is
//! sent as several segments (`readv`/`writev`), so 4 MiB requests reach the
//! bdev as multi-segment I/O.
//!
//! Modes: one write+verify pass (default); `read_only` verifies what an
//! earlier run wrote with the same seed; a `duration` repeats passes (pass k
//! uses seed + k) until the time is up, finishing the pass in progress, and
//! reports the seed of the last complete pass.

use std::mem::MaybeUninit;
use std::time::{Duration, Instant};

use ::bdev::testing::fill_pattern;
use blkio::{Completion, ReqFlags};
use serde::Serialize;

use crate::Rng;

/// The multiplier in [`fill_pattern`]'s words.
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// `GOLDEN`'s inverse modulo 2^64 (Newton's iteration; GOLDEN is odd).
const GOLDEN_INV: u64 = {
    let mut x = GOLDEN;
    let mut i = 0;
    while i < 6 {
        x = x.wrapping_mul(2u64.wrapping_sub(GOLDEN.wrapping_mul(x)));
        i += 1;
    }
    x
};

/// The pattern word `j` of block `lba` under `seed` (as [`fill_pattern`]).
#[inline]
fn word(lba: u64, seed: u64, j: u64) -> u64 {
    lba.wrapping_mul(GOLDEN) ^ seed.rotate_left(17) ^ j
}

/// What a run does.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Write the pattern, then read it back and compare.
    WriteVerify,
    /// Only read and compare (a pattern written earlier with the same seed).
    ReadOnlyVerify,
    /// Only write (a later `ReadOnlyVerify` checks it).
    WriteOnly,
}

/// Parameters.
#[derive(Clone, Debug, Serialize)]
pub struct Params {
    /// Socket of the vhost-user-blk server.
    pub socket: String,
    /// Pattern seed (pass k of a timed run uses `seed + k`).
    pub seed: u64,
    /// Bytes per request (a multiple of the block size).
    pub io_size: usize,
    /// Byte offset of the region (a multiple of the block size).
    pub offset: u64,
    /// Bytes in the region; `None`: from `offset` to the end of the device.
    pub size: Option<u64>,
    /// Requests in flight.
    pub queue_depth: usize,
    /// Split every request into segments of at most this many bytes, placed
    /// apart in memory (a gap after each); `None`: the device's size_max,
    /// contiguous.
    pub seg_size: Option<usize>,
    /// Pattern block size; `None`: the device's logical block size.
    pub block_size: Option<u32>,
    /// What to do.
    pub mode: Mode,
    /// Repeat passes until this much time has passed (then finish the pass).
    pub duration: Option<Duration>,
    /// Passes to run when there is no `duration`.
    pub passes: u32,
    /// A polling queue instead of an event-driven one.
    pub poll: bool,
    /// Give up when I/O is outstanding and nothing completes for this long.
    pub io_timeout: Duration,
    /// Print one line per pass to stderr.
    pub progress: bool,
    /// Mismatched blocks and errors described in the report (the counts are
    /// always complete).
    pub max_reported: usize,
}

impl Default for Params {
    fn default() -> Params {
        Params {
            socket: String::new(),
            seed: 1,
            io_size: 4096,
            offset: 0,
            size: None,
            queue_depth: 4,
            seg_size: None,
            block_size: None,
            mode: Mode::WriteVerify,
            duration: None,
            passes: 1,
            poll: false,
            io_timeout: Duration::from_secs(300),
            progress: true,
            max_reported: 16,
        }
    }
}

/// Errors that stop a run before it produces a report.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// libblkio failed.
    #[error("libblkio: {0}")]
    Blkio(String),
    /// A parameter is wrong.
    #[error("invalid parameter `{0}`: {1}")]
    Param(&'static str, String),
}

fn be(e: blkio::Error) -> VerifyError {
    VerifyError::Blkio(e.to_string())
}

/// One mismatched pattern block.
#[derive(Clone, Debug, Serialize)]
pub struct Mismatch {
    /// Byte address on the device.
    pub offset: u64,
    /// Pattern block address (`offset / block_size`).
    pub lba: u64,
    /// Seed expected there.
    pub seed: u64,
    /// Byte offset in the block of the first wrong byte.
    pub first_bad_byte: usize,
    /// 8-byte words of the block that differ.
    pub bad_words: usize,
    /// What the block holds instead, where recognisable.
    pub found: String,
}

/// One pass.
#[derive(Clone, Debug, Serialize)]
pub struct PassReport {
    /// 0-based.
    pub pass: u32,
    /// Its seed.
    pub seed: u64,
    /// Seconds since the start when the pass began / ended.
    pub start_s: f64,
    /// See `start_s`.
    pub end_s: f64,
    /// Pattern blocks written / verified / mismatched in this pass.
    pub written: u64,
    /// See `written`.
    pub verified: u64,
    /// See `written`.
    pub mismatched: u64,
    /// Failed requests.
    pub io_errors: u64,
}

/// The result of a run (also returned when blocks mismatched or I/O failed).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Parameters.
    pub params: Params,
    /// Device capacity in bytes.
    pub capacity: u64,
    /// Pattern block size used.
    pub block_size: u32,
    /// Region verified: byte offset and length.
    pub region: (u64, u64),
    /// The device's `max-segment-len` / `max-segments` (0: no limit).
    pub max_segment_len: u64,
    /// See `max_segment_len`.
    pub max_segments: u32,
    /// Segments per full-size request.
    pub segments_per_request: usize,
    /// Complete passes.
    pub passes: u32,
    /// Seed of the last complete pass (what a read-only verify needs).
    pub final_seed: u64,
    /// Requests completed (successfully or not).
    pub requests: u64,
    /// Pattern blocks written.
    pub blocks_written: u64,
    /// Pattern blocks read back and found right.
    pub blocks_verified: u64,
    /// Pattern blocks read back and found wrong.
    pub blocks_mismatched: u64,
    /// Failed requests.
    pub io_errors: u64,
    /// Requests still outstanding when the run gave up (`io_timeout`).
    pub hung: u64,
    /// The first mismatches.
    pub mismatches: Vec<Mismatch>,
    /// The first errors, as text.
    pub errors: Vec<String>,
    /// Seconds the run took.
    pub seconds: f64,
    /// Longest time with I/O outstanding and no completion, in seconds.
    pub max_stall_s: f64,
    /// When (seconds since the start) that stall ended.
    pub max_stall_end_s: f64,
    /// Per pass.
    pub pass_log: Vec<PassReport>,
}

impl Report {
    /// Whether every request succeeded and every block matched.
    pub fn ok(&self) -> bool {
        self.io_errors == 0 && self.blocks_mismatched == 0 && self.hung == 0
    }

    /// The exit status `strata verify` uses: 0 all good, 4 mismatches, 5 a
    /// hang (I/O outstanding past `io_timeout`), 3 I/O errors.
    pub fn exit_code(&self) -> i32 {
        if self.blocks_mismatched > 0 {
            4
        } else if self.hung > 0 {
            5
        } else if self.io_errors > 0 {
            3
        } else {
            0
        }
    }

    /// A human-readable summary.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "verify {} {:?} bs={} qd={} block={} region {}+{} ({} segment(s)/request, device size_max {} seg_max {})\n",
            self.params.socket,
            self.params.mode,
            self.params.io_size,
            self.params.queue_depth,
            self.block_size,
            self.region.0,
            self.region.1,
            self.segments_per_request,
            self.max_segment_len,
            self.max_segments,
        );
        s += &format!(
            "  passes {}  final seed {}  requests {}  {:.1}s  longest stall {:.2}s (ended at {:.1}s)\n",
            self.passes,
            self.final_seed,
            self.requests,
            self.seconds,
            self.max_stall_s,
            self.max_stall_end_s
        );
        s += &format!(
            "  blocks written {}  verified {}  mismatched {}  io errors {}  hung {}\n",
            self.blocks_written,
            self.blocks_verified,
            self.blocks_mismatched,
            self.io_errors,
            self.hung
        );
        for m in &self.mismatches {
            s += &format!(
                "  MISMATCH at byte {} (block {}, seed {}): first bad byte {}, {} bad words; found {}\n",
                m.offset, m.lba, m.seed, m.first_bad_byte, m.bad_words, m.found
            );
        }
        for e in &self.errors {
            s += &format!("  ERROR {e}\n");
        }
        s += if self.ok() {
            "  RESULT: OK"
        } else {
            "  RESULT: FAILED"
        };
        s
    }
}

/// Says what a wrong block holds: zeroes, another block's pattern, or this
/// block's pattern under another seed. The pattern is `X ^ word_index` with
/// `X = lba * GOLDEN ^ rotl(seed, 17)`, so a block of pattern shape fits
/// every (lba, seed) pair with the same X: the plausible reading is taken,
/// a block inside the device (`blocks`) under the expected seed, else this
/// block under a nearby seed (earlier or later passes).
fn diagnose(block: &[u8], lba: u64, seed: u64, blocks: u64) -> String {
    let w = |j: usize| u64::from_le_bytes(block[j * 8..j * 8 + 8].try_into().unwrap());
    let n = block.len() / 8;
    if block.iter().all(|&b| b == 0) {
        return "zeroes".into();
    }
    if block.iter().all(|&b| b == 0xa5) {
        return "the read buffer's poison (0xa5): the read moved no data".into();
    }
    let x = w(0);
    if !(0..n).all(|j| w(j) == x ^ j as u64) {
        let head: Vec<String> = (0..n.min(2)).map(|j| format!("{:#018x}", w(j))).collect();
        return format!("non-pattern data (first words {})", head.join(" "));
    }
    let other = (x ^ seed.rotate_left(17)).wrapping_mul(GOLDEN_INV);
    if other < blocks {
        return format!("block {other}'s data (same seed): misdirected write or read");
    }
    let s = (x ^ lba.wrapping_mul(GOLDEN)).rotate_right(17);
    let d = s.wrapping_sub(seed) as i64;
    if d.unsigned_abs() < 1 << 20 {
        return format!("this block's data under seed {s} ({d:+} from the expected)");
    }
    format!("pattern data of another seed and block (X = {x:#018x})")
}

/// Per request slot: its buffer and the segments over it.
struct Slot {
    buf: *mut u8,
    iovs: Vec<blkio::iovec>,
    /// Chunk index, or usize::MAX when idle.
    chunk: usize,
    started: Instant,
}

#[derive(Copy, Clone, PartialEq, Eq)]
enum Phase {
    Write,
    Verify,
}

struct Run<'a> {
    p: &'a Params,
    q: blkio::Blkioq,
    slots: Vec<Slot>,
    comps: Vec<MaybeUninit<Completion>>,
    seg_len: usize,
    /// Distance between segment starts in a slot's buffer (`seg_len`, or
    /// twice that when scattered).
    stride: usize,
    bs: usize,
    region_off: u64,
    region_len: u64,
    chunks: usize,
    dev_blocks: u64,
    t0: Instant,
    r: Report,
    pass: PassReport,
}

impl Run<'_> {
    fn chunk_range(&self, c: usize) -> (u64, usize) {
        let off = c as u64 * self.p.io_size as u64;
        let len = (self.region_len - off).min(self.p.io_size as u64) as usize;
        (self.region_off + off, len)
    }

    fn submit(&mut self, slot: usize, chunk: usize, phase: Phase, seed: u64) {
        let (off, len) = self.chunk_range(chunk);
        let s = &mut self.slots[slot];
        s.chunk = chunk;
        s.started = Instant::now();
        s.iovs.clear();
        let mut done = 0;
        let mut k = 0;
        while done < len {
            let n = (len - done).min(self.seg_len);
            let base = s.buf.wrapping_add(k * self.stride);
            // SAFETY: segment k lies in the slot's buffer (`stride` x
            // segments bytes of the mapped region), owned by this slot while
            // no request uses it.
            let b = unsafe { std::slice::from_raw_parts_mut(base, n) };
            if phase == Phase::Write {
                fill_pattern(b, (off + done as u64) / self.bs as u64, self.bs, seed);
            } else {
                // Poison first, so a read that "succeeds" without moving
                // data cannot pass.
                b.fill(0xa5);
            }
            s.iovs.push(blkio::iovec {
                iov_base: base.cast(),
                iov_len: n,
            });
            done += n;
            k += 1;
        }
        if phase == Phase::Write {
            self.q.writev(
                off,
                s.iovs.as_ptr(),
                s.iovs.len() as u32,
                slot,
                ReqFlags::empty(),
            );
        } else {
            self.q.readv(
                off,
                s.iovs.as_ptr(),
                s.iovs.len() as u32,
                slot,
                ReqFlags::empty(),
            );
        }
    }

    fn check(&mut self, slot: usize, seed: u64) {
        let (off, _) = self.chunk_range(self.slots[slot].chunk);
        let mut lba = off / self.bs as u64;
        for i in 0..self.slots[slot].iovs.len() {
            let v = self.slots[slot].iovs[i];
            // SAFETY: the read into this segment has completed; the slot's
            // buffer is not reused before the next submit.
            let b = unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) };
            for block in b.chunks(self.bs) {
                self.check_block(block, lba, seed);
                lba += 1;
            }
        }
    }

    fn check_block(&mut self, block: &[u8], lba: u64, seed: u64) {
        {
            let mut first_bad = None;
            let mut bad_words = 0;
            for (j, w) in block.chunks_exact(8).enumerate() {
                let got = u64::from_le_bytes(w.try_into().unwrap());
                let want = word(lba, seed, j as u64);
                if got != want {
                    if first_bad.is_none() {
                        let x = (got ^ want).to_le_bytes();
                        first_bad = Some(j * 8 + x.iter().position(|&v| v != 0).unwrap_or(0));
                    }
                    bad_words += 1;
                }
            }
            match first_bad {
                None => {
                    self.pass.verified += 1;
                    self.r.blocks_verified += 1;
                }
                Some(fb) => {
                    self.pass.mismatched += 1;
                    self.r.blocks_mismatched += 1;
                    if self.r.mismatches.len() < self.p.max_reported {
                        self.r.mismatches.push(Mismatch {
                            offset: lba * self.bs as u64,
                            lba,
                            seed,
                            first_bad_byte: fb,
                            bad_words,
                            found: diagnose(block, lba, seed, self.dev_blocks),
                        });
                    }
                }
            }
        }
    }

    /// Runs one phase over every chunk; false if it stopped early (I/O
    /// error or hang).
    fn phase(&mut self, phase: Phase, seed: u64, rng: &mut Rng) -> bool {
        let mut order: Vec<usize> = (0..self.chunks).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let mut next = 0usize;
        let mut outstanding = 0usize;
        let mut failed = false;
        let qd = self.p.queue_depth.min(self.chunks);
        for slot in 0..qd {
            self.submit(slot, order[next], phase, seed);
            next += 1;
            outstanding += 1;
        }
        let mut last = Instant::now();
        let min = if self.p.poll { 0 } else { 1 };
        while outstanding > 0 {
            let mut timeout = Duration::from_millis(500);
            let mut comps = std::mem::take(&mut self.comps);
            let n = match self.q.do_io(&mut comps, min, Some(&mut timeout), None) {
                Ok(n) => n,
                Err(e) if e.errno() == blkio::Errno::TIME || e.errno() == blkio::Errno::INTR => 0,
                Err(e) => {
                    self.comps = comps;
                    self.error(format!("do_io: {e}"));
                    self.r.hung += outstanding as u64;
                    return false;
                }
            };
            let now = Instant::now();
            if n == 0 {
                self.comps = comps;
                if now.duration_since(last) > self.p.io_timeout {
                    self.r.hung += outstanding as u64;
                    let oldest = self
                        .slots
                        .iter()
                        .filter(|s| s.chunk != usize::MAX)
                        .map(|s| now.duration_since(s.started).as_secs_f64())
                        .fold(0.0, f64::max);
                    self.error(format!(
                        "{outstanding} request(s) outstanding with no completion for {:.1}s (oldest {oldest:.1}s); giving up",
                        now.duration_since(last).as_secs_f64()
                    ));
                    return false;
                }
                continue;
            }
            let stall = now.duration_since(last).as_secs_f64();
            if stall > self.r.max_stall_s {
                self.r.max_stall_s = stall;
                self.r.max_stall_end_s = now.duration_since(self.t0).as_secs_f64();
            }
            last = now;
            for c in &comps[..n] {
                // SAFETY: do_io initialised the first `n` completions.
                let c = unsafe { c.assume_init_read() };
                let slot = c.user_data;
                outstanding -= 1;
                self.r.requests += 1;
                let (off, len) = self.chunk_range(self.slots[slot].chunk);
                if c.ret < 0 {
                    self.r.io_errors += 1;
                    self.pass.io_errors += 1;
                    let what = if phase == Phase::Write {
                        "write"
                    } else {
                        "read"
                    };
                    self.error(format!(
                        "{what} of {len} bytes at {off} failed: {} ({}) after {:.2}s",
                        std::io::Error::from_raw_os_error(-c.ret),
                        c.ret,
                        now.duration_since(self.slots[slot].started).as_secs_f64()
                    ));
                    failed = true;
                } else if phase == Phase::Write {
                    let blocks = len.div_ceil(self.bs) as u64;
                    self.pass.written += blocks;
                    self.r.blocks_written += blocks;
                } else {
                    self.check(slot, seed);
                }
                self.slots[slot].chunk = usize::MAX;
                if !failed && next < order.len() {
                    self.submit(slot, order[next], phase, seed);
                    next += 1;
                    outstanding += 1;
                }
            }
            self.comps = comps;
        }
        !failed
    }

    fn error(&mut self, e: String) {
        if self.r.errors.len() < self.p.max_reported {
            self.r.errors.push(e);
        }
    }
}

/// Connects, runs the passes, disconnects. Mismatches and I/O errors are
/// in the report ([`Report::ok`]); `Err` is for what prevented a run.
pub fn run(p: Params) -> Result<Report, VerifyError> {
    if p.queue_depth == 0 || p.queue_depth > 256 {
        return Err(VerifyError::Param("queue_depth", "must be 1..=256".into()));
    }
    if p.io_size == 0 || !p.io_size.is_multiple_of(512) {
        return Err(VerifyError::Param(
            "io_size",
            "must be a positive multiple of 512".into(),
        ));
    }
    if p.io_size.saturating_mul(p.queue_depth) > 256 << 20 {
        return Err(VerifyError::Param(
            "queue_depth",
            "io_size x queue_depth must not exceed 256 MiB".into(),
        ));
    }
    let (mut b, q) = crate::vhost::connect(&p.socket, p.poll).map_err(be)?;
    let q = q.ok_or_else(|| VerifyError::Blkio("no queue".into()))?;
    let capacity = b.get_u64("capacity").map_err(be)?;
    let dev_bs = b.get_i32("request-alignment").map_err(be)?.max(512) as u32;
    let max_seg_len = b.get_i32("max-segment-len").map_err(be)?.max(0) as usize;
    let max_segs = b.get_i32("max-segments").map_err(be)?.max(0) as usize;
    let mem_align = b.get_u64("mem-region-alignment").map_err(be)?.max(4096) as usize;
    let bs = p.block_size.unwrap_or(dev_bs);
    if !bs.is_power_of_two() || bs < dev_bs || bs > 1 << 20 {
        return Err(VerifyError::Param(
            "block_size",
            format!("{bs} must be a power of two, at least the device's {dev_bs}, at most 1 MiB"),
        ));
    }
    let bsu = bs as u64;
    if !p.io_size.is_multiple_of(bs as usize) {
        return Err(VerifyError::Param(
            "io_size",
            format!("{} is not a multiple of the block size {bs}", p.io_size),
        ));
    }
    if !p.offset.is_multiple_of(bsu) || p.offset >= capacity {
        return Err(VerifyError::Param(
            "offset",
            format!(
                "{} must be a multiple of {bs} below the capacity {capacity}",
                p.offset
            ),
        ));
    }
    let region_len = match p.size {
        Some(s) => s,
        None => capacity - p.offset,
    };
    let region_len = region_len / bsu * bsu;
    if region_len == 0 || p.offset + region_len > capacity {
        return Err(VerifyError::Param(
            "size",
            format!(
                "the region {}+{region_len} must hold at least one block and end within the capacity {capacity}",
                p.offset
            ),
        ));
    }
    // Segments: at most size_max bytes each (and page-sized pieces never
    // straddle anything: the buffers are aligned).
    let mut seg_len = if max_seg_len == 0 {
        p.io_size
    } else {
        (max_seg_len / bs as usize * bs as usize)
            .max(bs as usize)
            .min(p.io_size)
    };
    if let Some(want) = p.seg_size {
        if want == 0 || !want.is_multiple_of(bs as usize) {
            return Err(VerifyError::Param(
                "seg_size",
                format!("{want} is not a positive multiple of the block size {bs}"),
            ));
        }
        seg_len = seg_len.min(want);
    }
    // Scattered: a gap of one segment after each, so no layer can merge
    // neighbours into one buffer.
    let stride = if p.seg_size.is_some() {
        2 * seg_len
    } else {
        seg_len
    };
    let segs = p.io_size.div_ceil(seg_len);
    if max_segs != 0 && segs > max_segs {
        return Err(VerifyError::Param(
            "io_size",
            format!(
                "{} bytes need {segs} segments of {seg_len}; the device takes at most {max_segs} (max-transfer {})",
                p.io_size,
                max_segs * seg_len
            ),
        ));
    }
    let slot_bytes = (segs * stride).next_multiple_of(mem_align);
    let mem_len = (slot_bytes * p.queue_depth).next_multiple_of(2 << 20);
    let mem = b.alloc_mem_region(mem_len).map_err(be)?;
    b.map_mem_region(&mem).map_err(be)?;
    let base = mem.addr as *mut u8;
    let slots = (0..p.queue_depth)
        .map(|k| Slot {
            buf: base.wrapping_add(k * slot_bytes),
            iovs: Vec::with_capacity(segs),
            chunk: usize::MAX,
            started: Instant::now(),
        })
        .collect();
    let chunks = region_len.div_ceil(p.io_size as u64) as usize;
    let t0 = Instant::now();
    let mut run = Run {
        p: &p,
        q,
        slots,
        comps: (0..p.queue_depth).map(|_| MaybeUninit::uninit()).collect(),
        seg_len,
        stride,
        bs: bs as usize,
        region_off: p.offset,
        region_len,
        chunks,
        dev_blocks: capacity / bsu,
        t0,
        r: Report {
            params: p.clone(),
            capacity,
            block_size: bs,
            region: (p.offset, region_len),
            max_segment_len: max_seg_len as u64,
            max_segments: max_segs as u32,
            segments_per_request: segs,
            passes: 0,
            final_seed: p.seed,
            requests: 0,
            blocks_written: 0,
            blocks_verified: 0,
            blocks_mismatched: 0,
            io_errors: 0,
            hung: 0,
            mismatches: Vec::new(),
            errors: Vec::new(),
            seconds: 0.0,
            max_stall_s: 0.0,
            max_stall_end_s: 0.0,
            pass_log: Vec::new(),
        },
        pass: PassReport {
            pass: 0,
            seed: p.seed,
            start_s: 0.0,
            end_s: 0.0,
            written: 0,
            verified: 0,
            mismatched: 0,
            io_errors: 0,
        },
    };
    let mut rng = Rng::new(p.seed ^ 0x05ee_d0ff_1e1d);
    let mut k = 0u32;
    let mut last_print = Instant::now();
    loop {
        // A read-only run verifies the same seed every pass.
        let seed = if p.mode == Mode::ReadOnlyVerify {
            p.seed
        } else {
            p.seed.wrapping_add(k as u64)
        };
        run.pass = PassReport {
            pass: k,
            seed,
            start_s: t0.elapsed().as_secs_f64(),
            end_s: 0.0,
            written: 0,
            verified: 0,
            mismatched: 0,
            io_errors: 0,
        };
        let mut ok = true;
        if p.mode != Mode::ReadOnlyVerify {
            ok = run.phase(Phase::Write, seed, &mut rng);
        }
        if ok && p.mode != Mode::WriteOnly {
            ok = run.phase(Phase::Verify, seed, &mut rng);
        }
        run.pass.end_s = t0.elapsed().as_secs_f64();
        let pr = run.pass.clone();
        let last_pass = match p.duration {
            Some(d) => t0.elapsed() >= d,
            None => k + 1 >= p.passes.max(1),
        };
        if p.progress
            && (k == 0
                || !ok
                || pr.mismatched > 0
                || last_pass
                || last_print.elapsed() >= Duration::from_secs(1))
        {
            last_print = Instant::now();
            eprintln!(
                "verify: pass {} seed {}: {:.1}s..{:.1}s written {} verified {} mismatched {} io errors {}",
                pr.pass, pr.seed, pr.start_s, pr.end_s, pr.written, pr.verified, pr.mismatched, pr.io_errors
            );
        }
        run.r.pass_log.push(pr);
        if !ok || run.pass.mismatched > 0 {
            break;
        }
        run.r.passes = k + 1;
        run.r.final_seed = seed;
        k += 1;
        let more = match p.duration {
            Some(d) => t0.elapsed() < d,
            None => k < p.passes.max(1),
        };
        if !more {
            break;
        }
    }
    run.r.seconds = t0.elapsed().as_secs_f64();
    let Run { q, r: report, .. } = run;
    if report.hung > 0 {
        // Requests are still owned by the device: do not unmap their
        // buffers under them; the process is about to exit.
        std::mem::forget(q);
        std::mem::forget(b);
    } else {
        drop(q);
        drop(b);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_inverse() {
        assert_eq!(GOLDEN.wrapping_mul(GOLDEN_INV), 1);
    }

    #[test]
    fn word_matches_fill_pattern() {
        let mut b = vec![0u8; 1024];
        fill_pattern(&mut b, 77, 512, 9);
        for (k, blk) in b.chunks(512).enumerate() {
            for (j, w) in blk.chunks(8).enumerate() {
                assert_eq!(
                    u64::from_le_bytes(w.try_into().unwrap()),
                    word(77 + k as u64, 9, j as u64)
                );
            }
        }
    }

    #[test]
    fn diagnoses_wrong_blocks() {
        let mut b = vec![0u8; 512];
        assert_eq!(diagnose(&b, 5, 1, 100), "zeroes");
        fill_pattern(&mut b, 12, 512, 1);
        assert!(diagnose(&b, 5, 1, 100).starts_with("block 12's data"));
        fill_pattern(&mut b, 5, 512, 3);
        let d = diagnose(&b, 5, 4, 100);
        assert!(d.contains("under seed 3 (-1"), "{d}");
        b[100] ^= 1;
        assert!(diagnose(&b, 5, 4, 100).starts_with("non-pattern"));
        b.fill(0xa5);
        assert!(diagnose(&b, 5, 4, 100).contains("poison"));
    }
}
