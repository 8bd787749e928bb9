//! raid1 crash safety (issue 10): resync and rebuild positions survive a
//! clean shutdown, every non-success member status is acted on, metadata
//! counts only once an in-sync member has it, flushes precede bit clears
//! and the clean mark, state changes are seen by every later write.

mod raid1_common;

use std::sync::Arc;
use std::time::Duration;

use bdev::raid1::{self, RebuildTask};
use bdev::testing::{fill_pattern, write, AlignedBuf};
use bdev::{open_channel, Bdev, IoStatus};
use raid1_common::*;

fn dirty(r: &raid1::Raid1Bdev) -> u64 {
    r.status()["dirty_regions"].as_u64().unwrap()
}

/// Clears every bitmap bit (two clearer passes) and writes the bitmap.
fn clear_bitmap(task: &mut RebuildTask) {
    task.set_clear_interval(Duration::ZERO);
    for _ in 0..4 {
        task.poll();
    }
    settle(task);
    task.set_clear_interval(Duration::from_secs(3600));
}

/// Polls `task` until `cond` holds (bounded).
fn poll_until(task: &mut RebuildTask, mut cond: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + Duration::from_secs(30);
    while !cond() {
        task.poll();
        assert!(std::time::Instant::now() < end, "condition not reached");
    }
}

const RB: u64 = 128; // blocks per 64 KiB region of 512-byte blocks

/// Writes junk straight to member `m` at array LBA `lba` (a torn write).
fn tear(m: &Arc<dyn Bdev>, off: u64, lba: u64, n: u64) {
    let mut ch = open_channel(m).unwrap();
    let mut junk = AlignedBuf::new(n as usize * 512);
    junk.as_mut_slice().fill(0x5a);
    assert_eq!(write(&mut ch, off + lba, &mut junk), IoStatus::Success);
}

/// The headline scenario: a crash with writes in flight (dirty
/// bitmap, one member torn), a restart that starts the resync, a clean
/// stop before it finishes, a restart: the resync resumes where it was,
/// the dirty regions clear at the end and the members are identical.
#[test]
fn raid1_resync_interrupted_by_clean_shutdown_resumes() {
    let a = mem("ri_a", 8192, 512);
    let b = mem("ri_b", 8192, 512);
    let r = make("ri_r", 64, &[&a, &b]);
    let off = data_offset(&r);
    let n = r.info().num_blocks;
    let n_chunks = n / 32;
    let mut ch = open_channel(&as_dyn(&r)).unwrap();
    let mut task = r.rebuild_task();
    assert!(
        run_ios(&mut ch, &shuffled_writes(n_chunks, 32, 61), 8, &mut |_| {})
            .iter()
            .all(|s| s.is_ok())
    );
    clear_bitmap(&mut task);
    assert_eq!(dirty(&r), 0);
    // Writes to ten regions, then "kill -9"; b has torn writes there.
    let hot: Vec<u64> = (0..10).map(|i| (2 + 4 * i) * RB).collect();
    for &lba in &hot {
        let mut w = AlignedBuf::new(32 * 512);
        fill_pattern(w.as_mut_slice(), lba, 512, 61);
        assert_eq!(write(&mut ch, lba, &mut w), IoStatus::Success);
    }
    assert_eq!(dirty(&r), 10);
    drop(ch);
    drop(task);
    drop(r);
    for &lba in &hot {
        tear(&b, off, lba, 32);
    }
    assert!(!members_equal(&a, &b, off, n));
    // Restart: the resync starts; stop cleanly after three regions.
    let r = make("ri_r", 64, &[&a, &b]);
    assert_eq!(r.status()["resync_active"], true);
    let mut task = r.rebuild_task();
    poll_until(&mut task, || r.resynced_regions() >= 3);
    let done_before = r.resynced_regions();
    assert!(done_before < 10);
    drop(task);
    r.shutdown();
    drop(r);
    // Restart: the resync resumes (it is not forgotten by the clean mark).
    let r = make("ri_r", 64, &[&a, &b]);
    let s = r.status();
    assert_eq!(s["resync_active"], true, "the resync resumes: {s}");
    let mut task = r.rebuild_task();
    settle(&mut task);
    assert_eq!(
        r.resynced_regions() + done_before,
        10,
        "the resync went on from its position, not from the start"
    );
    assert_eq!(r.status()["resync_active"], false);
    assert!(members_equal(&a, &b, off, n), "members identical");
    clear_bitmap(&mut task);
    assert_eq!(dirty(&r), 0, "dirty regions cleared after the resync");
    let mut ch = open_channel(&as_dyn(&r)).unwrap();
    verify(&mut ch, n_chunks, 32, 61);
}

/// A full rebuild stopped by a clean shutdown resumes at its checkpoint.
#[test]
fn raid1_rebuild_interrupted_by_clean_shutdown_resumes_at_checkpoint() {
    let a = mem("rc_a", 8192, 512);
    let b = mem("rc_b", 8192, 512);
    let c = mem("rc_c", 8192, 512);
    let r = make("rc_r", 64, &[&a, &b]);
    let off = data_offset(&r);
    let n = r.info().num_blocks;
    let regions = r.status()["bitmap_regions"].as_u64().unwrap();
    let n_chunks = n / 32;
    let mut ch = open_channel(&as_dyn(&r)).unwrap();
    let mut task = r.rebuild_task();
    assert!(
        run_ios(&mut ch, &shuffled_writes(n_chunks, 32, 71), 8, &mut |_| {})
            .iter()
            .all(|s| s.is_ok())
    );
    clear_bitmap(&mut task);
    r.remove_member("rc_b").unwrap();
    r.add_member(c.clone()).unwrap();
    poll_until(&mut task, || {
        r.status()["rebuilt_regions"].as_u64().unwrap() >= 10
    });
    let done_before = r.status()["rebuilt_regions"].as_u64().unwrap();
    drop(task);
    drop(ch);
    r.shutdown();
    drop(r);
    let r = make("rc_r", 64, &[&a, &c]);
    assert_eq!(member_state(&r, "rc_c"), "rebuilding");
    let mut task = r.rebuild_task();
    settle(&mut task);
    assert_eq!(member_state(&r, "rc_c"), "in_sync");
    assert_eq!(
        r.status()["rebuilt_regions"].as_u64().unwrap() + done_before,
        regions,
        "the rebuild resumed at its checkpoint"
    );
    assert!(members_equal(&a, &c, off, n));
    r.fail_member("rc_a").unwrap();
    let mut ch = open_channel(&as_dyn(&r)).unwrap();
    verify(&mut ch, n_chunks, 32, 71);
}

/// Defect 2: a write aborted on one in-sync member while the other took it
/// is sent there again; a member that keeps aborting is failed. Never is a
/// write acknowledged with an in-sync member lacking it.
#[test]
fn raid1_write_aborted_on_one_member_is_retried_or_fails_it() {
    let a = mem("ab_a", 8192, 512);
    let (b, ctl) = flaky("ab_b", mem("ab_mb", 8192, 512));
    let r = make("ab_r", 64, &[&a, &b]);
    let off = data_offset(&r);
    let n = r.info().num_blocks;
    let mut ch = open_channel(&as_dyn(&r)).unwrap();
    let mut task = r.rebuild_task();
    // Every bitmap bit on disk first: what follows writes only data.
    assert!(
        run_ios(&mut ch, &shuffled_writes(n / 32, 32, 80), 8, &mut |_| {})
            .iter()
            .all(|s| s.is_ok())
    );
    // Aborted once: retried, both members have it, b stays in sync.
    ctl.abort_writes
        .store(1, std::sync::atomic::Ordering::SeqCst);
    let ios = shuffled_writes(n / 32, 32, 81);
    assert!(run_ios(&mut ch, &ios, 8, &mut |_| {
        task.poll();
    })
    .iter()
    .all(|s| s.is_ok()));
    assert_eq!(
        ctl.abort_writes.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    assert_eq!(member_state(&r, "ab_b"), "in_sync");
    assert!(
        members_equal(&a, &b, off, n),
        "the aborted write was resent"
    );
    // Aborted every time: b is failed, the writes still succeed on a.
    ctl.abort_writes
        .store(u64::MAX, std::sync::atomic::Ordering::SeqCst);
    let ios = shuffled_writes(4, 32, 82);
    assert!(run_ios(&mut ch, &ios, 2, &mut |_| {
        task.poll();
    })
    .iter()
    .all(|s| s.is_ok()));
    assert_eq!(member_state(&r, "ab_b"), "faulty");
    r.fail_member("ab_b").unwrap();
    let _ = Arc::clone(&b);
}

fn err_bdev(name: &str, base: Arc<dyn Bdev>) -> (Arc<dyn Bdev>, Arc<bdev::error::ErrorBdev>) {
    let e = Arc::new(bdev::error::create(name, base).unwrap());
    (e.clone(), e)
}

fn inject_writes(e: &bdev::error::ErrorBdev, range: Option<[u64; 2]>) {
    e.inject(&bdev::error::InjectParams {
        name: e.info().name.clone(),
        io_type: Some(bdev::error::InjectIoType::Write),
        every: None,
        range,
        status: Some(bdev::error::InjectStatus::Medium),
        clear: false,
    })
    .unwrap();
}

fn clear_injection(e: &bdev::error::ErrorBdev) {
    e.inject(&bdev::error::InjectParams {
        name: e.info().name.clone(),
        io_type: None,
        every: None,
        range: None,
        status: None,
        clear: true,
    })
    .unwrap();
}

/// Defect 3: a bitmap block that only a member being rebuilt took does not
/// count as on disk (after a crash only in-sync members' bitmaps are
/// read); the write waiting for it is not acknowledged. A superblock
/// update that reached no in-sync member is an error, not a success.
#[test]
fn raid1_metadata_counts_only_on_an_in_sync_member() {
    let (a, ea) = err_bdev("md_a", mem("md_ma", 8192, 512));
    let b = mem("md_b", 8192, 512);
    let c = mem("md_c", 8192, 512);
    let r = make("md_r", 64, &[&a, &b]);
    r.remove_member("md_b").unwrap();
    r.add_member(c.clone()).unwrap();
    assert_eq!(member_state(&r, "md_c"), "rebuilding");
    // a (the only in-sync member) fails every write to its bitmap blocks
    // (blocks 8..16 of 512-byte blocks; the superblock is 0..8).
    inject_writes(&ea, Some([8, 8]));
    let mut ch = open_channel(&as_dyn(&r)).unwrap();
    let st = run_ios(
        &mut ch,
        &[Io {
            io_type: bdev::IoType::Write,
            lba: 5 * RB,
            blocks: 8,
            seed: 91,
        }],
        1,
        &mut |_| {},
    );
    assert_ne!(
        st[0],
        IoStatus::Success,
        "acknowledged with its bitmap bit on no in-sync member"
    );
    assert_eq!(member_state(&r, "md_a"), "in_sync");
    // With the bitmap writable again the write goes through.
    clear_injection(&ea);
    let st = run_ios(
        &mut ch,
        &[Io {
            io_type: bdev::IoType::Write,
            lba: 5 * RB,
            blocks: 8,
            seed: 91,
        }],
        1,
        &mut |_| {},
    );
    assert_eq!(st[0], IoStatus::Success);
    // A superblock update only c takes is not a recorded state change.
    inject_writes(&ea, Some([0, 8]));
    let e = r.fail_member("md_c");
    assert!(
        e.is_err(),
        "a superblock update that reached no in-sync member succeeded"
    );
    clear_injection(&ea);
}

/// Whether, in `log`, every write at `lba` after position `from` is
/// preceded by a flush after `from` (and there is at least one such write).
fn flushed_before(log: &[(bdev::IoType, u64, bool)], from: usize, lba: u64) -> bool {
    let mut flushed = false;
    let mut seen = false;
    for &(t, l, _) in &log[from..] {
        match t {
            bdev::IoType::Flush => flushed = true,
            bdev::IoType::Write if l == lba => {
                if !flushed {
                    return false;
                }
                seen = true;
            }
            _ => {}
        }
    }
    seen
}

/// Defect 4: with members that have a volatile cache, bitmap bits are
/// cleared and the clean superblock written only after a flush of the
/// members (md's PREFLUSH|FUA): the data the bits covered is durable before
/// the record that it was dirty goes.
#[test]
fn raid1_flush_precedes_bit_clearing_and_the_clean_mark() {
    let (a, ca) = flaky_cached("fl_a", mem("fl_ma", 8192, 512));
    let (b, cb) = flaky_cached("fl_b", mem("fl_mb", 8192, 512));
    let r = make("fl_r", 64, &[&a, &b]);
    let mut ch = open_channel(&as_dyn(&r)).unwrap();
    let mut task = r.rebuild_task();
    assert!(
        run_ios(&mut ch, &shuffled_writes(8, 32, 95), 4, &mut |_| {})
            .iter()
            .all(|s| s.is_ok())
    );
    assert!(dirty(&r) > 0);
    let bitmap_lba = 8; // 4 KiB superblock in 512-byte blocks
    let marks = [ca.log.lock().unwrap().len(), cb.log.lock().unwrap().len()];
    clear_bitmap(&mut task);
    assert_eq!(dirty(&r), 0);
    for (c, &from) in [&ca, &cb].iter().zip(&marks) {
        let log = c.log.lock().unwrap();
        assert!(
            flushed_before(&log, from, bitmap_lba),
            "bitmap bits cleared without a flush first: {:?}",
            &log[from..]
        );
    }
    drop(task);
    drop(ch);
    let marks = [ca.log.lock().unwrap().len(), cb.log.lock().unwrap().len()];
    r.shutdown();
    for (c, &from) in [&ca, &cb].iter().zip(&marks) {
        let log = c.log.lock().unwrap();
        assert!(
            flushed_before(&log, from, 0),
            "marked clean without a flush first: {:?}",
            &log[from..]
        );
    }
}

/// Defect 10: a member whose state has become a write target (here: in
/// sync) is seen by every write that starts after the state was stored,
/// even while the thread changing it has not finished the change.
#[test]
fn raid1_state_change_is_seen_by_every_later_write() {
    let a = mem("vg_a", 8192, 512);
    let b = mem("vg_b", 8192, 512);
    let r = make("vg_r", 64, &[&a, &b]);
    let off = data_offset(&r);
    let mut ch = open_channel(&as_dyn(&r)).unwrap();
    let w = |ch: &mut bdev::Channel, lba: u64, seed: u64| {
        let st = run_ios(
            ch,
            &[Io {
                io_type: bdev::IoType::Write,
                lba,
                blocks: 8,
                seed,
            }],
            1,
            &mut |_| {},
        );
        assert_eq!(st[0], IoStatus::Success);
    };
    w(&mut ch, 0, 1);
    r.fail_member("vg_b").unwrap();
    // The channel's view now has b out of the array.
    w(&mut ch, 64, 2);
    assert!(!members_equal(&a, &b, off + 64, 8));
    // b becomes in sync (as a rebuild's end does); the changer is paused
    // before finishing. A write that starts now must reach b.
    r.debug_begin_state_change("vg_b", "in_sync").unwrap();
    w(&mut ch, 1024, 3);
    assert!(
        members_equal(&a, &b, off + 1024, 8),
        "a write after the state change missed the member"
    );
    r.debug_end_state_change().unwrap();
    w(&mut ch, 2048, 4);
    assert!(members_equal(&a, &b, off + 2048, 8));
}

/// Defect 6: a member whose superblock cannot be read (an I/O error) does
/// not stop the array from assembling: it is left out (degraded), the
/// status says which and why, and the data is served by the others.
#[test]
fn raid1_unreadable_superblock_assembles_degraded() {
    let (a, ea) = err_bdev("us_a", mem("us_ma", 8192, 512));
    let b = mem("us_b", 8192, 512);
    let r = make("us_r", 64, &[&a, &b]);
    let n_chunks = r.info().num_blocks / 32;
    let mut ch = open_channel(&as_dyn(&r)).unwrap();
    assert!(
        run_ios(&mut ch, &shuffled_writes(n_chunks, 32, 97), 8, &mut |_| {})
            .iter()
            .all(|s| s.is_ok())
    );
    drop(ch);
    r.shutdown();
    drop(r);
    ea.inject(&bdev::error::InjectParams {
        name: "us_a".into(),
        io_type: Some(bdev::error::InjectIoType::Read),
        every: None,
        range: Some([0, 8]),
        status: Some(bdev::error::InjectStatus::Medium),
        clear: false,
    })
    .unwrap();
    let mut p = params("us_r", 64);
    p.members = vec!["us_a".into(), "us_b".into()];
    let r = raid1::create(&p, vec![a.clone(), b.clone()]).expect("assembles without us_a");
    let s = r.status();
    assert_eq!(s["state"], "degraded", "{s}");
    assert_eq!(s["members"][0]["state"], "missing", "{s}");
    assert_eq!(s["excluded_at_assembly"][0]["member"], "us_a", "{s}");
    assert_eq!(r.member_names(), vec!["us_b".to_string()]);
    let mut ch = open_channel(&as_dyn(&r)).unwrap();
    verify(&mut ch, n_chunks, 32, 97);
}

fn inject_reads(e: &bdev::error::ErrorBdev, range: [u64; 2]) {
    e.inject(&bdev::error::InjectParams {
        name: e.info().name.clone(),
        io_type: Some(bdev::error::InjectIoType::Read),
        every: None,
        range: Some(range),
        status: Some(bdev::error::InjectStatus::Medium),
        clear: false,
    })
    .unwrap();
}

/// Defect 8: a rebuild whose source cannot read a range does not fail the
/// source or stop: with another mirror the range is read there and
/// rewritten over the source; with none it is recorded as a bad block
/// (reads of it fail rather than return what the new member never got),
/// the rebuild completes, and a full rewrite clears it.
#[test]
fn raid1_rebuild_read_error_on_the_source_is_repaired_or_recorded() {
    // Two mirrors readable: repaired from the other one.
    let ma = mem("br_ma", 8192, 512);
    let (a, ea) = err_bdev("br_a", ma.clone());
    let b = mem("br_b", 8192, 512);
    let c = mem("br_c", 8192, 512);
    let d = mem("br_d", 8192, 512);
    let r = make("br_r", 64, &[&a, &b, &c]);
    let off = data_offset(&r);
    let n = r.info().num_blocks;
    let n_chunks = n / 32;
    let mut ch = open_channel(&as_dyn(&r)).unwrap();
    assert!(
        run_ios(&mut ch, &shuffled_writes(n_chunks, 32, 99), 8, &mut |_| {})
            .iter()
            .all(|s| s.is_ok())
    );
    // a's copy of array blocks 1000..1008 is lost (not on disk any more).
    tear(&ma, off, 1000, 8);
    inject_reads(&ea, [off + 1000, 8]);
    r.remove_member("br_c").unwrap();
    r.add_member(d.clone()).unwrap();
    let mut task = r.rebuild_task();
    settle(&mut task);
    let s = r.status();
    assert_eq!(member_state(&r, "br_d"), "in_sync", "{s}");
    assert_eq!(member_state(&r, "br_a"), "in_sync", "{s}");
    assert_eq!(s["rebuild"]["error"], serde_json::Value::Null, "{s}");
    assert!(members_equal(&b, &d, off, n));
    assert!(
        members_equal(&ma, &b, off, n),
        "the source's bad range was rewritten"
    );
    drop(task);
    drop(ch);
    r.shutdown();
    drop(r);

    // One readable mirror only: recorded, the rebuild goes on.
    let mb = mem("bb_ma", 8192, 512);
    let (a, ea) = err_bdev("bb_a", mb.clone());
    let b = mem("bb_b", 8192, 512);
    let c = mem("bb_c", 8192, 512);
    let r = make("bb_r", 64, &[&a, &b]);
    let mut ch = open_channel(&as_dyn(&r)).unwrap();
    assert!(
        run_ios(&mut ch, &shuffled_writes(n_chunks, 32, 98), 8, &mut |_| {})
            .iter()
            .all(|s| s.is_ok())
    );
    r.remove_member("bb_b").unwrap();
    r.add_member(c.clone()).unwrap();
    inject_reads(&ea, [off + 1000, 8]);
    let mut task = r.rebuild_task();
    settle(&mut task);
    let s = r.status();
    assert_eq!(member_state(&r, "bb_c"), "in_sync", "{s}");
    assert_eq!(member_state(&r, "bb_a"), "in_sync", "{s}");
    let bad = s["bad_blocks"].as_array().unwrap();
    assert_eq!(bad.len(), 1, "{s}");
    let (bl, bn) = (
        bad[0]["offset_blocks"].as_u64().unwrap(),
        bad[0]["num_blocks"].as_u64().unwrap(),
    );
    assert!(bl <= 1000 && bl + bn >= 1008, "{s}");
    // Reads of the bad range fail (from any member); the rest verifies.
    let st = run_ios(
        &mut ch,
        &[Io {
            io_type: bdev::IoType::Read,
            lba: bl,
            blocks: 8,
            seed: 98,
        }],
        1,
        &mut |_| {},
    );
    assert_eq!(st[0], IoStatus::MediumError);
    assert!(members_equal(&mb, &c, off, bl) && members_equal(&mb, &c, off + bl + bn, n - bl - bn));
    // Rewriting the range clears it.
    ea.inject(&bdev::error::InjectParams {
        name: "bb_a".into(),
        io_type: None,
        every: None,
        range: None,
        status: None,
        clear: true,
    })
    .unwrap();
    let rewrite = [Io {
        io_type: bdev::IoType::Write,
        lba: bl,
        blocks: bn,
        seed: 98,
    }];
    assert!(run_ios(&mut ch, &rewrite, 4, &mut |_| {})
        .iter()
        .all(|s| s.is_ok()));
    assert_eq!(r.status()["bad_blocks"].as_array().unwrap().len(), 0);
    verify(&mut ch, n_chunks, 32, 98);
}

/// Defect 5: two members that each ran alone and took writes are not
/// assembled together as in sync (a split brain): the error says which
/// member to start with and which to re-add; re-added, the returning
/// member's own bitmap joins the resync, so the members end identical.
#[test]
fn raid1_split_brain_is_refused_and_readd_resyncs_both_bitmaps() {
    let a = mem("sb_a", 8192, 512);
    let b = mem("sb_b", 8192, 512);
    let r = make("sb_r", 64, &[&a, &b]);
    let off = data_offset(&r);
    let n = r.info().num_blocks;
    let n_chunks = n / 32;
    let mut ch = open_channel(&as_dyn(&r)).unwrap();
    let mut task = r.rebuild_task();
    assert!(
        run_ios(&mut ch, &shuffled_writes(n_chunks, 32, 101), 8, &mut |_| {})
            .iter()
            .all(|s| s.is_ok())
    );
    clear_bitmap(&mut task);
    drop(task);
    drop(ch);
    r.shutdown();
    drop(r);
    // Each member runs alone and takes a write the other lacks.
    for (m, lba, seed) in [(&a, 3 * RB, 102), (&b, 10 * RB, 103)] {
        let r = make("sb_r", 64, &[m]);
        assert_eq!(r.status()["state"], "degraded");
        let mut ch = open_channel(&as_dyn(&r)).unwrap();
        let mut w = AlignedBuf::new(32 * 512);
        fill_pattern(w.as_mut_slice(), lba, 512, seed);
        assert_eq!(write(&mut ch, lba, &mut w), IoStatus::Success);
        drop(ch);
        r.shutdown();
    }
    let mut p = params("sb_r", 64);
    p.members = vec!["sb_a".into(), "sb_b".into()];
    let e = raid1::create(&p, vec![a.clone(), b.clone()])
        .err()
        .expect("a split brain must not assemble")
        .to_string();
    assert!(e.contains("split brain"), "{e}");
    assert!(
        e.contains("add `sb_b` back") || e.contains("add `sb_a` back"),
        "{e}"
    );
    // Start with a, re-add b: b's own write is undone by the resync.
    let r = make("sb_r", 64, &[&a]);
    r.add_member(b.clone()).unwrap();
    assert_eq!(member_state(&r, "sb_b"), "resyncing");
    let mut task = r.rebuild_task();
    settle(&mut task);
    assert_eq!(member_state(&r, "sb_b"), "in_sync");
    assert!(
        members_equal(&a, &b, off, n),
        "members identical after the re-add"
    );
}

/// Defect 2 for metadata: a bitmap or superblock write aborted on a member
/// is sent there again rather than failing the member for it.
#[test]
fn raid1_metadata_write_aborted_on_one_member_is_retried() {
    let a = mem("ma_a", 8192, 512);
    let (b, ctl) = flaky("ma_b", mem("ma_mb", 8192, 512));
    let r = make("ma_r", 64, &[&a, &b]);
    let off = data_offset(&r);
    let mut ch = open_channel(&as_dyn(&r)).unwrap();
    // A write to a clean region: its bitmap write is the first to b.
    ctl.abort_writes
        .store(1, std::sync::atomic::Ordering::SeqCst);
    let st = run_ios(
        &mut ch,
        &[Io {
            io_type: bdev::IoType::Write,
            lba: 7 * RB,
            blocks: 8,
            seed: 111,
        }],
        1,
        &mut |_| {},
    );
    assert_eq!(st[0], IoStatus::Success);
    assert_eq!(
        ctl.abort_writes.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    assert_eq!(member_state(&r, "ma_b"), "in_sync");
    assert!(
        members_equal(&a, &b, 8, off - 8),
        "the bitmap is identical on both"
    );
    // A superblock write (a clean shutdown) aborted once: retried.
    ctl.abort_writes
        .store(1, std::sync::atomic::Ordering::SeqCst);
    drop(ch);
    r.shutdown();
    assert_eq!(member_state(&r, "ma_b"), "in_sync");
    assert_eq!(r.status()["clean"], true);
}
