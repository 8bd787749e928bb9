//! Helpers for tests and tools: synchronous I/O on a channel, aligned
//! buffers, verify patterns, and the conformance suite every bdev kind must
//! pass.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::util::AlignedBuf;
use crate::{open_channel, Bdev, Channel, IoRequest, IoStatus, IoType, QueueFull};

/// Fills `buf` with a pattern that identifies block `lba` and `seed`, so a
/// read of the wrong block or stale data is detected.
pub fn fill_pattern(buf: &mut [u8], first_lba: u64, block_size: usize, seed: u64) {
    for (k, block) in buf.chunks_mut(block_size).enumerate() {
        let lba = first_lba + k as u64;
        for (j, chunk) in block.chunks_mut(8).enumerate() {
            let word =
                (lba.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed.rotate_left(17) ^ (j as u64))
                    .to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

/// Whether `buf` holds the pattern of [`fill_pattern`].
pub fn check_pattern(buf: &[u8], first_lba: u64, block_size: usize, seed: u64) -> bool {
    let mut want = vec![0u8; buf.len()];
    fill_pattern(&mut want, first_lba, block_size, seed);
    want == buf
}

/// Submits one request and polls until it completes (panics after 30 s:
/// a hang is a test failure).
///
/// # Safety
/// As [`Channel::submit`]: the iovecs must stay valid until this returns
/// (they do, since it returns only after completion).
pub unsafe fn run(ch: &mut Channel, req: &IoRequest<'_>) -> IoStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // SAFETY: forwarded; we do not return before the completion.
        match unsafe { ch.submit(req, 0x5eed) } {
            Ok(()) => break,
            Err(QueueFull) => {
                ch.poll(&mut |_, _| {});
                assert!(Instant::now() < deadline, "queue stayed full for 30 s");
            }
        }
    }
    let mut status = None;
    while status.is_none() {
        ch.poll(&mut |tag, st| {
            if tag == 0x5eed {
                status = Some(st)
            }
        });
        assert!(
            Instant::now() < deadline,
            "I/O did not complete within 30 s"
        );
        if status.is_none() {
            std::thread::yield_now();
        }
    }
    status.unwrap_or(IoStatus::Aborted)
}

/// Writes `buf` at `lba` (one iovec).
pub fn write(ch: &mut Channel, lba: u64, buf: &mut AlignedBuf) -> IoStatus {
    let bs = ch.info().block_size as usize;
    let v = [buf.iovec(0, buf.len())];
    // SAFETY: `buf` outlives the synchronous call.
    unsafe { run(ch, &IoRequest::write(lba, (buf.len() / bs) as u64, &v)) }
}

/// Reads into `buf` at `lba` (one iovec).
pub fn read(ch: &mut Channel, lba: u64, buf: &mut AlignedBuf) -> IoStatus {
    let bs = ch.info().block_size as usize;
    let v = [buf.iovec(0, buf.len())];
    // SAFETY: `buf` outlives the synchronous call.
    unsafe { run(ch, &IoRequest::read(lba, (buf.len() / bs) as u64, &v)) }
}

/// Runs a request without data.
pub fn run_nodata(ch: &mut Channel, req: &IoRequest<'_>) -> IoStatus {
    assert!(req.iovs.is_empty());
    // SAFETY: no memory is lent.
    unsafe { run(ch, req) }
}

/// What a bdev keeps.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Persistence {
    /// Nothing: reads return zeroes (null).
    None,
    /// Data persists; unmapped / write-zeroed ranges read as zeroes.
    Zeroing,
}

/// The conformance suite: every bdev kind passes it. Panics on failure.
/// Needs a bdev of at least 64 blocks, block size ≤ 4096.
pub fn conformance(bdev: &Arc<dyn Bdev>, persistence: Persistence) {
    let info = bdev.info().clone();
    let bs = info.block_size as usize;
    let nb = info.num_blocks;
    assert!(nb >= 64, "conformance needs at least 64 blocks");
    let mut ch = open_channel(bdev).expect("open channel");
    let reads_before = bdev
        .stats()
        .reads
        .load(std::sync::atomic::Ordering::Relaxed);

    // Write 8 blocks from two iovecs, read back through three.
    let mut w = AlignedBuf::new(8 * bs);
    fill_pattern(w.as_mut_slice(), 3, bs, 42);
    let v = [w.iovec(0, 3 * bs), w.iovec(3 * bs, 5 * bs)];
    // SAFETY: `w` lives until the synchronous call returns.
    let st = unsafe { run(&mut ch, &IoRequest::write(3, 8, &v)) };
    assert_eq!(st, IoStatus::Success, "vectored write");
    let mut r = AlignedBuf::new(8 * bs);
    let v = [r.iovec(0, bs), r.iovec(bs, 4 * bs), r.iovec(5 * bs, 3 * bs)];
    // SAFETY: as above.
    let st = unsafe { run(&mut ch, &IoRequest::read(3, 8, &v)) };
    assert_eq!(st, IoStatus::Success, "vectored read");
    match persistence {
        Persistence::None => assert!(
            r.as_slice().iter().all(|&b| b == 0),
            "null reads return zeroes"
        ),
        Persistence::Zeroing => assert!(
            check_pattern(r.as_slice(), 3, bs, 42),
            "read back what was written"
        ),
    }

    // The last block works; one past it does not.
    let mut one = AlignedBuf::new(bs);
    fill_pattern(one.as_mut_slice(), nb - 1, bs, 7);
    assert_eq!(
        write(&mut ch, nb - 1, &mut one),
        IoStatus::Success,
        "last block"
    );
    assert_eq!(
        read(&mut ch, nb, &mut one),
        IoStatus::InvalidRequest,
        "read past the end"
    );
    assert_eq!(
        write(&mut ch, nb, &mut one),
        IoStatus::InvalidRequest,
        "write past the end"
    );
    let v = [one.iovec(0, bs)];
    // SAFETY: as above.
    unsafe {
        assert_eq!(
            run(&mut ch, &IoRequest::read(u64::MAX, 1, &v)),
            IoStatus::InvalidRequest,
            "LBA overflow"
        );
        assert_eq!(
            run(&mut ch, &IoRequest::read(0, 0, &v)),
            IoStatus::InvalidRequest,
            "zero-length read"
        );
        assert_eq!(
            run(&mut ch, &IoRequest::read(0, 2, &v)),
            IoStatus::InvalidRequest,
            "length mismatch"
        );
        assert_eq!(
            run(&mut ch, &IoRequest::write(0, 1, &[])),
            IoStatus::InvalidRequest,
            "write without data"
        );
    }
    if persistence == Persistence::Zeroing {
        let mut back = AlignedBuf::new(bs);
        assert_eq!(read(&mut ch, nb - 1, &mut back), IoStatus::Success);
        assert!(
            check_pattern(back.as_slice(), nb - 1, bs, 7),
            "last block read back"
        );
    }

    // Flush always succeeds.
    assert_eq!(
        run_nodata(&mut ch, &IoRequest::flush()),
        IoStatus::Success,
        "flush"
    );

    // Unmap and write-zeroes.
    for t in [IoType::WriteZeroes, IoType::Unmap] {
        let req = if t == IoType::Unmap {
            IoRequest::unmap(4, 2)
        } else {
            IoRequest::write_zeroes(4, 2)
        };
        if !info.caps.supports(t) {
            assert_eq!(
                run_nodata(&mut ch, &req),
                IoStatus::Unsupported,
                "{t:?} unsupported"
            );
            continue;
        }
        let mut w = AlignedBuf::new(8 * bs);
        fill_pattern(w.as_mut_slice(), 3, bs, 43);
        assert_eq!(write(&mut ch, 3, &mut w), IoStatus::Success);
        assert_eq!(run_nodata(&mut ch, &req), IoStatus::Success, "{t:?}");
        assert_eq!(
            run_nodata(
                &mut ch,
                &IoRequest {
                    offset_blocks: nb,
                    ..req
                }
            ),
            IoStatus::InvalidRequest,
            "{t:?} out of range"
        );
        if persistence == Persistence::Zeroing
            && (t == IoType::WriteZeroes || info.caps.unmap_reads_zeroes)
        {
            let mut r = AlignedBuf::new(8 * bs);
            assert_eq!(read(&mut ch, 3, &mut r), IoStatus::Success);
            let s = r.as_slice();
            assert!(
                check_pattern(&s[..bs], 3, bs, 43),
                "{t:?} left the block before alone"
            );
            assert!(
                s[bs..3 * bs].iter().all(|&b| b == 0),
                "{t:?} zeroed its range"
            );
            assert!(
                check_pattern(&s[3 * bs..], 6, bs, 43),
                "{t:?} left the blocks after alone"
            );
        }
    }

    // Many requests in flight at once, each completed exactly once.
    let n = info.queue_depth.min(64);
    let mut bufs: Vec<AlignedBuf> = (0..n).map(|_| AlignedBuf::new(bs)).collect();
    let mut want: HashSet<u64> = HashSet::new();
    for (i, b) in bufs.iter_mut().enumerate() {
        let v = [b.iovec(0, bs)];
        // SAFETY: `bufs` outlives the completions, which we wait for below.
        unsafe { ch.submit(&IoRequest::read(i as u64 % nb, 1, &v), 1000 + i as u64) }
            .expect("queue has room");
        want.insert(1000 + i as u64);
    }
    assert_eq!(ch.inflight(), n);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !want.is_empty() {
        ch.poll(&mut |tag, st| {
            assert_eq!(st, IoStatus::Success);
            assert!(
                want.remove(&tag),
                "tag {tag} completed twice or was never submitted"
            );
        });
        assert!(Instant::now() < deadline, "requests did not complete");
    }
    assert_eq!(ch.inflight(), 0);
    let reads_after = bdev
        .stats()
        .reads
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        reads_after > reads_before + n as u64,
        "read statistics counted"
    );
    drop(bufs);
}
