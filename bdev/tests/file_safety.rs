//! Safety of the file bdev: O_DIRECT alignment, short transfers, and I/O
//! that outlives its channel.

use std::sync::Arc;
use std::time::Duration;

use bdev::testing::{self, AlignedBuf};
use bdev::{file, Bdev, IoRequest, IoStatus};

/// A directory on the machine's disk (O_DIRECT capable): the target dir.
fn disk_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")).unwrap()
}

fn backing(dir: &tempfile::TempDir, name: &str, size: u64) -> String {
    let p = dir.path().join(name);
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(size).unwrap();
    p.to_string_lossy().into_owned()
}

/// Dropping a channel while the kernel still reads into its callers'
/// buffers must not return before those reads are done: afterwards the
/// memory is the caller's again (freed, reused), and nothing may write it.
#[test]
fn dropping_a_channel_waits_for_its_requests() {
    const REQS: usize = 64;
    const LEN: usize = 512 * 1024;
    let dir = disk_dir();
    let p = dir.path().join("drop.img");
    {
        // Real data on disk (holes would be zero-filled without device I/O).
        let mut data = vec![0u8; REQS * LEN];
        testing::fill_pattern(&mut data, 0, 4096, 77);
        std::fs::write(&p, &data).unwrap();
        std::fs::File::open(&p).unwrap().sync_all().unwrap();
    }
    let path = p.to_string_lossy().into_owned();
    let fb = file::create("drop0", &path, 4096).unwrap();
    if !fb.direct() {
        eprintln!("no O_DIRECT on {path}; the test needs it");
        return;
    }
    let fb = Arc::new(fb);
    let b: Arc<dyn Bdev> = fb.clone();
    let mut bufs: Vec<AlignedBuf> = (0..REQS).map(|_| AlignedBuf::new(LEN)).collect();
    let mut total_reaped = 0;
    for round in 0..5 {
        let mut ch = bdev::open_channel(&b).unwrap();
        let blocks = (LEN / 4096) as u64;
        for (i, buf) in bufs.iter_mut().enumerate() {
            let v = [buf.iovec(0, LEN)];
            // SAFETY: the buffers outlive the channel, and the channel's
            // drop is what this test checks.
            unsafe { ch.submit(&IoRequest::read(i as u64 * blocks, blocks, &v), i as u64) }
                .unwrap();
        }
        // Hand them to the kernel, then walk away.
        ch.poll(&mut |_, _| {});
        let before = fb.counters().reaped_at_close;
        let inflight = ch.inflight() as u64;
        drop(ch);
        // Everything that had not completed by the drop was waited for.
        let reaped = fb.counters().reaped_at_close - before;
        assert!(reaped <= inflight);
        assert_eq!(fb.counters().abandoned_at_close, 0);
        total_reaped += reaped;
        for buf in &mut bufs {
            buf.as_mut_slice().fill(0xa5);
        }
        std::thread::sleep(Duration::from_millis(100));
        for (i, buf) in bufs.iter().enumerate() {
            assert!(
                buf.as_slice().iter().all(|&x| x == 0xa5),
                "round {round}: buffer {i} was written after its channel was dropped"
            );
        }
    }
    assert!(
        total_reaped > 0,
        "the test needs reads still in flight when the channel is dropped"
    );
}

/// The alignment the kernel reports for a file, as the test sees it.
fn statx_dio(path: &str) -> Option<(u32, u32)> {
    let c = std::ffi::CString::new(path).unwrap();
    // SAFETY: plain data, zero is valid.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C path and a live statx to fill.
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            0,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    (rc == 0 && stx.stx_mask & libc::STATX_DIOALIGN != 0)
        .then_some((stx.stx_dio_mem_align, stx.stx_dio_offset_align))
}

/// Unaligned iovecs over `buf`: an odd start, odd lengths, the total
/// `len` bytes.
fn odd_iovecs(buf: &mut AlignedBuf, len: usize) -> Vec<bdev::IoVec> {
    let cuts = [1usize, 101, 613, 2048 + 7];
    let mut v = Vec::new();
    let mut pos = 0;
    for &c in &cuts {
        if pos + c >= len {
            break;
        }
        v.push(buf.iovec(3 + pos, c));
        pos += c;
    }
    v.push(buf.iovec(3 + pos, len - pos));
    v
}

/// Writes through odd buffers, reads back through other odd buffers and
/// through aligned ones; checks the data and the file.
fn odd_buffers_round_trip(b: &Arc<dyn Bdev>, path: &str, lba: u64, blocks: u64, seed: u64) {
    let bs = b.info().block_size as usize;
    let len = blocks as usize * bs;
    let mut ch = bdev::open_channel(b).unwrap();
    let mut w = AlignedBuf::new(len + 4096);
    testing::fill_pattern(&mut w.as_mut_slice()[3..3 + len], lba, bs, seed);
    let wv = odd_iovecs(&mut w, len);
    // SAFETY: `w` outlives the synchronous call.
    let st = unsafe { testing::run(&mut ch, &IoRequest::write(lba, blocks, &wv)) };
    assert_eq!(st, IoStatus::Success, "write through odd buffers");
    let mut r = AlignedBuf::new(len + 4096);
    let rv = odd_iovecs(&mut r, len);
    // SAFETY: as above.
    let st = unsafe { testing::run(&mut ch, &IoRequest::read(lba, blocks, &rv)) };
    assert_eq!(st, IoStatus::Success, "read through odd buffers");
    assert!(testing::check_pattern(
        &r.as_slice()[3..3 + len],
        lba,
        bs,
        seed
    ));
    let mut a = AlignedBuf::new(len);
    assert_eq!(testing::read(&mut ch, lba, &mut a), IoStatus::Success);
    assert!(testing::check_pattern(a.as_slice(), lba, bs, seed));
    let on_disk = std::fs::read(path).unwrap();
    assert!(testing::check_pattern(
        &on_disk[lba as usize * bs..lba as usize * bs + len],
        lba,
        bs,
        seed
    ));
}

#[test]
fn o_direct_alignment_is_the_kernels_and_odd_buffers_are_bounced() {
    let dir = disk_dir();
    let path = backing(&dir, "align.img", 1 << 20);
    let fb = file::create("align0", &path, 4096).unwrap();
    if !fb.direct() {
        eprintln!("no O_DIRECT on {path}; nothing to check");
        return;
    }
    let a = fb.dio_align();
    match statx_dio(&path) {
        Some((mem, off)) => {
            assert!(a.reported);
            assert_eq!((a.mem, a.offset), (mem, off));
            assert_eq!(fb.info().buf_align, mem.max(off) as usize);
        }
        None => {
            assert!(!a.reported);
            assert!(a.mem >= 512 && a.offset >= 512);
        }
    }
    let ds = fb.driver_specific().unwrap();
    assert_eq!(ds["file"]["dio_mem_align"], a.mem);
    assert_eq!(ds["file"]["dio_offset_align"], a.offset);
    let fb = Arc::new(fb);
    let b: Arc<dyn Bdev> = fb.clone();
    odd_buffers_round_trip(&b, &path, 3, 4, 11);
    // The write and the read through odd buffers were bounced; the aligned
    // read was not.
    assert_eq!(fb.counters().bounced, 2);
    // Decided up front: the kernel never had to refuse them.
    assert_eq!(fb.counters().einval_bounces, 0);
    assert_eq!(
        fb.driver_specific().unwrap()["file"]["bounced"],
        serde_json::json!(2)
    );
    // Aligned buffers with a length that is a multiple of the alignment but
    // not of the block size, across several segments: no bounce.
    let mut ch = bdev::open_channel(&b).unwrap();
    let mut buf = AlignedBuf::new(8192);
    let unit = fb.info().buf_align;
    let v = [buf.iovec(0, unit), buf.iovec(unit, 8192 - unit)];
    // SAFETY: `buf` outlives the call.
    let st = unsafe { testing::run(&mut ch, &IoRequest::read(3, 2, &v)) };
    assert_eq!(st, IoStatus::Success);
    assert!(testing::check_pattern(buf.as_slice(), 3, 4096, 11));
    assert_eq!(fb.counters().bounced, 2);
}

#[test]
fn tmpfs_is_buffered_and_takes_any_buffer() {
    let Ok(dir) = tempfile::tempdir_in("/dev/shm") else {
        eprintln!("no /dev/shm");
        return;
    };
    let path = backing(&dir, "t.img", 1 << 20);
    let fb = file::create("tmpfs0", &path, 512).unwrap();
    assert!(!fb.direct(), "tmpfs has no real O_DIRECT");
    assert_eq!(fb.info().buf_align, 1);
    let fb = Arc::new(fb);
    let b: Arc<dyn Bdev> = fb.clone();
    odd_buffers_round_trip(&b, &path, 7, 9, 5);
    assert_eq!(fb.counters().bounced, 0);
}

/// Short transfers (cut by the test hook, so that the kernel really moves
/// fewer bytes than the request) are continued, through plain and bounced
/// buffers, on O_DIRECT and buffered files.
#[test]
fn short_transfers_are_resubmitted() {
    let disk = disk_dir();
    let shm = tempfile::tempdir_in("/dev/shm").ok();
    let mut places = vec![backing(&disk, "short.img", 1 << 20)];
    if let Some(d) = &shm {
        places.push(backing(d, "short.img", 1 << 20));
    }
    for (k, path) in places.iter().enumerate() {
        let fb = Arc::new(file::create(&format!("short{k}"), path, 512).unwrap());
        let b: Arc<dyn Bdev> = fb.clone();
        let mut ch = bdev::open_channel(&b).unwrap();
        // Aligned, several segments.
        let mut w = AlignedBuf::new(64 * 512);
        testing::fill_pattern(w.as_mut_slice(), 100, 512, 3);
        let wv = [
            w.iovec(0, 4096),
            w.iovec(4096, 512),
            w.iovec(4608, 64 * 512 - 4608),
        ];
        fb.inject_short_transfers(4);
        // SAFETY: `w` outlives the call.
        let st = unsafe { testing::run(&mut ch, &IoRequest::write(100, 64, &wv)) };
        assert_eq!(st, IoStatus::Success, "{path}: short writes continued");
        assert_eq!(fb.counters().short_resubmits, 4, "{path}");
        let mut r = AlignedBuf::new(64 * 512);
        let rv = [r.iovec(0, 512), r.iovec(512, 64 * 512 - 512)];
        fb.inject_short_transfers(3);
        // SAFETY: as above.
        let st = unsafe { testing::run(&mut ch, &IoRequest::read(100, 64, &rv)) };
        assert_eq!(st, IoStatus::Success, "{path}: short reads continued");
        assert_eq!(fb.counters().short_resubmits, 7, "{path}");
        assert!(testing::check_pattern(r.as_slice(), 100, 512, 3), "{path}");
        let on_disk = std::fs::read(path).unwrap();
        assert!(testing::check_pattern(
            &on_disk[100 * 512..164 * 512],
            100,
            512,
            3
        ));
        // Odd buffers (bounced under O_DIRECT), cut short too.
        let mut o = AlignedBuf::new(64 * 512 + 4096);
        let ov = odd_iovecs(&mut o, 64 * 512);
        fb.inject_short_transfers(2);
        // SAFETY: as above.
        let st = unsafe { testing::run(&mut ch, &IoRequest::read(100, 64, &ov)) };
        assert_eq!(st, IoStatus::Success, "{path}: short odd reads continued");
        assert!(testing::check_pattern(
            &o.as_slice()[3..3 + 64 * 512],
            100,
            512,
            3
        ));
        assert_eq!(fb.counters().short_resubmits, 9, "{path}");
    }
}

/// EAGAIN and EINTR are retried; EIO fails the request as a medium error;
/// EINVAL from O_DIRECT is answered with a bounce, not passed on.
#[test]
fn transient_errors_are_retried_and_real_ones_fail() {
    let dir = disk_dir();
    let path = backing(&dir, "err.img", 1 << 20);
    let fb = Arc::new(file::create("err0", &path, 4096).unwrap());
    let b: Arc<dyn Bdev> = fb.clone();
    let mut ch = bdev::open_channel(&b).unwrap();
    let mut w = AlignedBuf::new(4 * 4096);
    testing::fill_pattern(w.as_mut_slice(), 8, 4096, 21);
    fb.inject_errno(libc::EAGAIN, 3);
    assert_eq!(testing::write(&mut ch, 8, &mut w), IoStatus::Success);
    fb.inject_errno(libc::EINTR, 2);
    let mut r = AlignedBuf::new(4 * 4096);
    assert_eq!(testing::read(&mut ch, 8, &mut r), IoStatus::Success);
    assert!(testing::check_pattern(r.as_slice(), 8, 4096, 21));
    assert_eq!(fb.counters().retries, 5);
    fb.inject_errno(libc::EIO, 1);
    assert_eq!(testing::read(&mut ch, 8, &mut r), IoStatus::MediumError);
    // The next one is fine again.
    assert_eq!(testing::read(&mut ch, 8, &mut r), IoStatus::Success);
    if fb.direct() {
        fb.inject_errno(libc::EINVAL, 1);
        r.as_mut_slice().fill(0);
        assert_eq!(testing::read(&mut ch, 8, &mut r), IoStatus::Success);
        assert!(testing::check_pattern(r.as_slice(), 8, 4096, 21));
        assert_eq!(fb.counters().bounced, 1);
        assert_eq!(fb.counters().einval_bounces, 1);
        // Refused twice: the request is wrong after all.
        fb.inject_errno(libc::EINVAL, 2);
        assert_eq!(testing::read(&mut ch, 8, &mut r), IoStatus::InvalidRequest);
    }
}

/// A file truncated under the bdev: a read that reaches past the new end
/// moves what there is and then fails (no progress) rather than spin or
/// report success.
#[test]
fn a_read_past_the_end_of_a_shrunk_file_fails_cleanly() {
    let dir = disk_dir();
    let path = backing(&dir, "shrink.img", 64 * 4096);
    let fb = Arc::new(file::create("shrink0", &path, 4096).unwrap());
    let b: Arc<dyn Bdev> = fb.clone();
    let mut ch = bdev::open_channel(&b).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(62 * 4096)
        .unwrap();
    let mut r = AlignedBuf::new(4 * 4096);
    assert_eq!(testing::read(&mut ch, 60, &mut r), IoStatus::MediumError);
    assert_eq!(fb.counters().short_resubmits, 1);
    assert_eq!(testing::read(&mut ch, 56, &mut r), IoStatus::Success);
}
