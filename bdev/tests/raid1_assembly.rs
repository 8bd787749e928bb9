//! raid1: superblocks, reassembly, the write-intent bitmap, crash resync.

mod raid1_common;

use std::sync::Arc;
use std::time::Duration;

use bdev::raid1::{self, CreateParams};
use bdev::testing::{fill_pattern, write, AlignedBuf};
use bdev::{file, open_channel, Bdev, IoStatus, IoType};
use raid1_common::*;

fn dirty(r: &raid1::Raid1Bdev) -> u64 {
    r.status()["dirty_regions"].as_u64().unwrap()
}

/// Clears every bitmap bit (two clearer passes) and writes the bitmap.
fn clear_bitmap(task: &mut raid1::RebuildTask) {
    task.set_clear_interval(Duration::ZERO);
    for _ in 0..4 {
        task.poll();
    }
    settle(task);
    task.set_clear_interval(Duration::from_secs(3600));
}

#[test]
fn raid1_clean_restart_reassembles_without_resync() {
    let a = mem("cr_a", 8192, 512);
    let b = mem("cr_b", 8192, 512);
    let r = make("cr_r", 64, &[&a, &b]);
    let uuid = r.array_uuid();
    let events = r.status()["events"].as_u64().unwrap();
    let mut ch = open_channel(&as_dyn(&r)).unwrap();
    let ios = shuffled_writes(32, 16, 11);
    assert!(run_ios(&mut ch, &ios, 8, &mut |_| {})
        .iter()
        .all(|s| s.is_ok()));
    drop(ch);
    r.shutdown();
    assert_eq!(r.status()["clean"], true);
    drop(r);
    // Same members, no format: reassembled, nothing to resync.
    let r = make("cr_r", 64, &[&a, &b]);
    assert_eq!(r.array_uuid(), uuid);
    let s = r.status();
    assert_eq!(s["resync_active"], false);
    assert_eq!(s["state"], "online");
    assert!(s["events"].as_u64().unwrap() > events);
    let mut task = r.rebuild_task();
    settle(&mut task);
    assert_eq!(r.resynced_regions(), 0);
    let mut ch = open_channel(&as_dyn(&r)).unwrap();
    verify(&mut ch, 32, 16, 11);
    // Members in the other order reassemble too (roles come from disk).
    drop(ch);
    drop(task);
    r.shutdown();
    drop(r);
    let r = make("cr_r", 64, &[&b, &a]);
    assert_eq!(r.status()["members"][0]["name"], "cr_a");
    // `format` starts a new array.
    drop(r);
    let mut p = params("cr_r", 64);
    p.format = true;
    let r = raid1::create(&p, vec![a.clone(), b.clone()]).unwrap();
    assert_ne!(r.array_uuid(), uuid);
}

/// "kill -9 during writes": on file bdevs, writes whose bitmap bits are
/// set, then the array is dropped without a clean shutdown and one member
/// is given a torn write. Reassembly from the files alone resyncs exactly
/// the dirty regions and leaves the members identical.
#[test]
fn raid1_unclean_shutdown_resyncs_only_dirty_regions() {
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<String> = ["a", "b"]
        .iter()
        .map(|n| dir.path().join(n).to_str().unwrap().to_string())
        .collect();
    for p in &paths {
        std::fs::File::create(p).unwrap().set_len(8 << 20).unwrap();
    }
    let open = |gen: u32| -> Vec<Arc<dyn Bdev>> {
        paths
            .iter()
            .enumerate()
            .map(|(i, p)| {
                Arc::new(file::create(&format!("k9_{gen}_{i}"), p, 512).unwrap()) as Arc<dyn Bdev>
            })
            .collect()
    };
    let m = open(0);
    let r = make("k9_r", 64, &[&m[0], &m[1]]);
    let off = data_offset(&r);
    let region_blocks = 64 * 1024 / 512;
    let regions = r.status()["bitmap_regions"].as_u64().unwrap();
    assert_eq!(regions, (r.info().num_blocks).div_ceil(region_blocks));
    let mut ch = open_channel(&as_dyn(&r)).unwrap();
    let mut task = r.rebuild_task();
    // Fill the whole array, then let the bitmap go clean.
    let n_chunks = r.info().num_blocks / 32;
    let ios = shuffled_writes(n_chunks, 32, 21);
    assert!(run_ios(&mut ch, &ios, 16, &mut |_| {})
        .iter()
        .all(|s| s.is_ok()));
    assert_eq!(dirty(&r), regions);
    clear_bitmap(&mut task);
    assert_eq!(dirty(&r), 0);
    // Writes to five regions (two writes in region 17, one spanning 40/41).
    let bs = 512usize;
    let mut hot = Vec::new();
    for (lba, n) in [
        (3 * region_blocks + 8, 16),
        (17 * region_blocks, 32),
        (17 * region_blocks + 64, 32),
        (41 * region_blocks - 16, 32),
        (60 * region_blocks + 100, 8),
    ] {
        let mut w = AlignedBuf::new(n as usize * bs);
        fill_pattern(w.as_mut_slice(), lba, bs, 21);
        assert_eq!(write(&mut ch, lba, &mut w), IoStatus::Success);
        hot.push(lba);
    }
    assert_eq!(dirty(&r), 5);
    // kill -9: nothing is shut down, the process state is gone.
    drop(ch);
    drop(task);
    drop(r);
    drop(m);
    // A torn write on b inside a dirty region (what the crash left).
    {
        let m = open(1);
        let mut ch = open_channel(&m[1]).unwrap();
        let mut junk = AlignedBuf::new(32 * bs);
        junk.as_mut_slice().fill(0xa5);
        assert_eq!(
            write(&mut ch, off + 17 * region_blocks, &mut junk),
            IoStatus::Success
        );
    }
    assert!(!members_equal(&open(2)[0], &open(3)[1], off, 14336));
    // Restart: reassemble from the members alone.
    let m = open(4);
    let r = make("k9_r", 64, &[&m[0], &m[1]]);
    let s = r.status();
    assert_eq!(s["resync_active"], true, "{s}");
    assert_eq!(s["dirty_regions"], 5);
    assert_eq!(s["state"], "online");
    // Reads during the resync return consistent data (from the primary).
    let mut ch = open_channel(&as_dyn(&r)).unwrap();
    verify(&mut ch, n_chunks, 32, 21);
    let mut task = r.rebuild_task();
    settle(&mut task);
    assert_eq!(
        r.resynced_regions(),
        5,
        "only the dirty regions were resynced"
    );
    assert_eq!(r.status()["resync_active"], false);
    let n = r.info().num_blocks;
    assert!(
        members_equal(&m[0], &m[1], off, n),
        "members identical after resync"
    );
    verify(&mut ch, n_chunks, 32, 21);
    // A second crash right away: still dirty regions only (not cleared yet).
    drop(ch);
    drop(task);
    drop(r);
    let m = open(5);
    let r = make("k9_r", 64, &[&m[0], &m[1]]);
    let mut task = r.rebuild_task();
    settle(&mut task);
    assert_eq!(r.resynced_regions(), 5);
    // After a clean shutdown nothing is resynced.
    clear_bitmap(&mut task);
    drop(task);
    r.shutdown();
    drop(r);
    let m = open(6);
    let r = make("k9_r", 64, &[&m[0], &m[1]]);
    assert_eq!(r.status()["resync_active"], false);
    let mut task = r.rebuild_task();
    settle(&mut task);
    assert_eq!(r.resynced_regions(), 0);
}

/// A member that failed while the array ran on comes back after a restart:
/// it is stale (older event count), is not read, and only the regions
/// written in its absence are copied to it.
#[test]
fn raid1_stale_member_is_not_read_and_is_resynced_from_the_bitmap() {
    let a = mem("sm_a", 8192, 512);
    let b = mem("sm_b", 8192, 512);
    let r = make("sm_r", 64, &[&a, &b]);
    let off = data_offset(&r);
    let n_chunks = r.info().num_blocks / 16;
    let mut ch = open_channel(&as_dyn(&r)).unwrap();
    let mut task = r.rebuild_task();
    let ios = shuffled_writes(n_chunks, 16, 31);
    assert!(run_ios(&mut ch, &ios, 8, &mut |_| {})
        .iter()
        .all(|s| s.is_ok()));
    clear_bitmap(&mut task);
    r.fail_member("sm_b").unwrap();
    // Three regions (of 128 blocks) rewritten while b is out.
    let mut newer = Vec::new();
    for c in [1u64, 2, 40, 41, 200] {
        newer.push(Io {
            io_type: IoType::Write,
            lba: c * 16,
            blocks: 16,
            seed: 32,
        });
    }
    assert!(run_ios(&mut ch, &newer, 4, &mut |_| {})
        .iter()
        .all(|s| s.is_ok()));
    assert_eq!(dirty(&r), 3); // chunks 1,2 → region 0; 40,41 → region 5; 200 → region 25
                              // The bitmap is not cleared while degraded.
    task.set_clear_interval(Duration::ZERO);
    for _ in 0..4 {
        task.poll();
    }
    assert_eq!(dirty(&r), 3);
    drop(task);
    drop(ch);
    r.shutdown();
    drop(r);
    // Restart with both members.
    let r = make("sm_r", 64, &[&a, &b]);
    assert_eq!(member_state(&r, "sm_b"), "resyncing");
    assert_eq!(r.status()["degraded"], true);
    // Reads never see b's stale data.
    let mut ch = open_channel(&as_dyn(&r)).unwrap();
    let check = |ch: &mut bdev::Channel| {
        let reads: Vec<Io> = (0..n_chunks)
            .map(|c| Io {
                io_type: IoType::Read,
                lba: c * 16,
                blocks: 16,
                seed: if [1, 2, 40, 41, 200].contains(&c) {
                    32
                } else {
                    31
                },
            })
            .collect();
        let st = run_ios(ch, &reads, 16, &mut |_| {});
        assert!(st.iter().all(|s| s.is_ok()), "a read returned stale data");
    };
    check(&mut ch);
    assert!(!members_equal(&a, &b, off, r.info().num_blocks));
    let mut task = r.rebuild_task();
    settle(&mut task);
    assert_eq!(r.resynced_regions(), 3);
    assert_eq!(member_state(&r, "sm_b"), "in_sync");
    assert_eq!(r.status()["degraded"], false);
    assert!(members_equal(&a, &b, off, r.info().num_blocks));
    check(&mut ch);
}

/// The return of a briefly missing member at run time (remove, add back).
#[test]
fn raid1_readded_member_gets_only_the_dirty_regions() {
    let a = mem("ra_a", 8192, 512);
    let b = mem("ra_b", 8192, 512);
    let r = make("ra_r", 64, &[&a, &b]);
    let off = data_offset(&r);
    let mut ch = open_channel(&as_dyn(&r)).unwrap();
    let mut task = r.rebuild_task();
    let n_chunks = r.info().num_blocks / 16;
    assert!(
        run_ios(&mut ch, &shuffled_writes(n_chunks, 16, 41), 8, &mut |_| {})
            .iter()
            .all(|s| s.is_ok())
    );
    clear_bitmap(&mut task);
    let gone = r.remove_member("ra_b").unwrap();
    assert_eq!(member_state(&r, "ra_b"), "absent");
    assert_eq!(r.status()["members"][1]["state"], "missing");
    let newer = [
        Io {
            io_type: IoType::Write,
            lba: 300,
            blocks: 16,
            seed: 42,
        },
        Io {
            io_type: IoType::Write,
            lba: 2000,
            blocks: 8,
            seed: 42,
        },
    ];
    assert!(run_ios(&mut ch, &newer, 2, &mut |_| {})
        .iter()
        .all(|s| s.is_ok()));
    r.add_member(gone).unwrap();
    assert_eq!(member_state(&r, "ra_b"), "resyncing");
    settle(&mut task);
    assert_eq!(r.resynced_regions(), 2);
    assert_eq!(r.status()["rebuilt_regions"], 0);
    assert_eq!(member_state(&r, "ra_b"), "in_sync");
    assert!(members_equal(&a, &b, off, r.info().num_blocks));
    // A faulty member added again is resynced the same way.
    r.fail_member("ra_b").unwrap();
    assert!(run_ios(
        &mut ch,
        &[Io {
            io_type: IoType::Write,
            lba: 5000,
            blocks: 8,
            seed: 43
        }],
        1,
        &mut |_| {}
    )
    .iter()
    .all(|s| s.is_ok()));
    r.add_member(b.clone()).unwrap();
    settle(&mut task);
    assert_eq!(r.resynced_regions(), 2 + 3); // regions of 300, 2000 (still dirty) and 5000
    assert!(members_equal(&a, &b, off, r.info().num_blocks));
}

#[test]
fn raid1_assembly_refuses_what_it_cannot_trust() {
    let a = mem("as_a", 8192, 512);
    let b = mem("as_b", 8192, 512);
    let c = mem("as_c", 8192, 512);
    let r = make("as_r", 64, &[&a, &b]);
    // b is replaced by c: b's role now belongs to c.
    r.remove_member("as_b").unwrap();
    r.add_member(c.clone()).unwrap();
    let mut task = r.rebuild_task();
    settle(&mut task);
    drop(task);
    r.shutdown();
    drop(r);
    let e = raid1::create(
        &CreateParams {
            name: "as_r".into(),
            ..Default::default()
        },
        vec![a.clone(), b.clone()],
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("member `as_b` no longer belongs to array `as_r`"),
        "{e}"
    );
    // a and c reassemble; a alone too (degraded, c missing).
    let r = make("as_r", 64, &[&a, &c]);
    assert_eq!(r.status()["state"], "online");
    r.shutdown();
    drop(r);
    let r = make("as_r", 64, &[&c]);
    assert_eq!(r.status()["state"], "degraded");
    assert_eq!(r.status()["members"][0]["state"], "missing");
    r.shutdown();
    drop(r);
    // Different arrays.
    let d = mem("as_d", 8192, 512);
    let e2 = mem("as_e", 8192, 512);
    drop(make("as_other", 64, &[&d, &e2]));
    let e = raid1::create(&params("as_x", 64), vec![a.clone(), d.clone()])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("members belong to different arrays"), "{e}");
    // A damaged superblock is reported, not silently reformatted.
    {
        let mut ch = open_channel(&d).unwrap();
        let mut junk = AlignedBuf::new(512);
        junk.as_mut_slice()
            .copy_from_slice(&read_direct(&d, 0, 1).as_slice()[..512]);
        junk.as_mut_slice()[200] ^= 0xff;
        assert_eq!(write(&mut ch, 0, &mut junk), IoStatus::Success);
    }
    // With another member to assemble from, it is left out and reported
    // (the array runs degraded); alone, it is an error.
    let r = raid1::create(&params("as_y", 64), vec![d.clone(), e2.clone()]).unwrap();
    let s = r.status();
    assert_eq!(s["state"], "degraded", "{s}");
    assert_eq!(s["excluded_at_assembly"][0]["member"], "as_d", "{s}");
    assert!(
        s["excluded_at_assembly"][0]["error"]
            .as_str()
            .unwrap()
            .contains("member `as_d`: superblock checksum mismatch"),
        "{s}"
    );
    drop(r);
    let e = raid1::create(&params("as_y", 64), vec![d.clone()])
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("member `as_d`: superblock checksum mismatch"),
        "{e}"
    );
}
