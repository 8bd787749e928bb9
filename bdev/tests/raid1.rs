//! raid1: data path (mirroring, balancing, failures, repair), bad requests.

mod raid1_common;

use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;

use bdev::raid1::{self, CreateParams, MemberParams};
use bdev::testing::{self, check_pattern, fill_pattern, read, run_nodata, write, AlignedBuf};
use bdev::{open_channel, Bdev, BdevRegistry, IoRequest, IoStatus, IoType};
use raid1_common::*;

#[test]
fn raid1_conformance() {
    let a = mem("c_a", 8192, 512);
    let b = mem("c_b", 8192, 512);
    let r = make("c_r", 64, &[&a, &b]);
    assert_eq!(r.info().kind, "raid1");
    assert_eq!(r.info().num_blocks, 8192 - data_offset(&r));
    testing::conformance(&as_dyn(&r), testing::Persistence::Zeroing);
    // 4 KiB blocks, three members.
    let a = mem("c4_a", 1024, 4096);
    let b = mem("c4_b", 1024, 4096);
    let c = mem("c4_c", 1100, 4096);
    let r = make("c4_r", 64, &[&a, &b, &c]);
    testing::conformance(&as_dyn(&r), testing::Persistence::Zeroing);
}

#[test]
fn raid1_writes_land_on_every_member_and_ops_are_forwarded() {
    let (a, ca) = flaky("fw_a", mem("fw_ma", 8192, 512));
    let (b, cb) = flaky("fw_b", mem("fw_mb", 8192, 512));
    let r = make("fw_r", 64, &[&a, &b]);
    let off = data_offset(&r);
    let mut ch = open_channel(&as_dyn(&r)).unwrap();
    let mut w = AlignedBuf::new(16 * 512);
    fill_pattern(w.as_mut_slice(), 100, 512, 5);
    let v = [w.iovec(0, w.len())];
    // SAFETY: `w` outlives the synchronous call.
    let st = unsafe { testing::run(&mut ch, &IoRequest::write(100, 16, &v).with_fua(true)) };
    assert_eq!(st, IoStatus::Success);
    for m in [&a, &b] {
        assert!(
            check_pattern(read_direct(m, off + 100, 16).as_slice(), 100, 512, 5),
            "{}",
            m.info().name
        );
    }
    // FUA reached both members (data write; bitmap writes are FUA too).
    assert!(ca.fua_writes.load(SeqCst) >= 1 && cb.fua_writes.load(SeqCst) >= 1);
    // WRITE_ZEROES and UNMAP reach every member.
    assert_eq!(
        run_nodata(&mut ch, &IoRequest::write_zeroes(104, 4)),
        IoStatus::Success
    );
    assert_eq!(
        run_nodata(&mut ch, &IoRequest::unmap(110, 2)),
        IoStatus::Success
    );
    for m in [&a, &b] {
        let d = read_direct(m, off + 100, 16);
        let s = d.as_slice();
        assert!(check_pattern(&s[..4 * 512], 100, 512, 5));
        assert!(
            s[4 * 512..8 * 512].iter().all(|&x| x == 0),
            "write_zeroes on {}",
            m.info().name
        );
        assert!(check_pattern(&s[8 * 512..10 * 512], 108, 512, 5));
        assert!(
            s[10 * 512..12 * 512].iter().all(|&x| x == 0),
            "unmap on {}",
            m.info().name
        );
    }
    // A flush goes to both; a failing flush fails the member, not the I/O.
    assert_eq!(run_nodata(&mut ch, &IoRequest::flush()), IoStatus::Success);
    cb.fail_writes.store(true, SeqCst);
    assert_eq!(run_nodata(&mut ch, &IoRequest::flush()), IoStatus::Success);
    assert_eq!(member_state(&r, "fw_b"), "faulty");
    assert_eq!(r.status()["state"], "degraded");
}

#[test]
fn raid1_reads_are_balanced_and_write_mostly_is_avoided() {
    let (a, ca) = flaky("bal_a", mem("bal_ma", 8192, 512));
    let (b, cb) = flaky("bal_b", mem("bal_mb", 8192, 512));
    let r = make("bal_r", 64, &[&a, &b]);
    let mut ch = open_channel(&as_dyn(&r)).unwrap();
    let ios = shuffled_writes(64, 8, 9);
    assert!(run_ios(&mut ch, &ios, 16, &mut |_| {})
        .iter()
        .all(|s| s.is_ok()));
    // Random reads at depth 16 go to both members.
    let reads: Vec<Io> = shuffled_writes(64, 8, 9)
        .into_iter()
        .map(|i| Io {
            io_type: IoType::Read,
            ..i
        })
        .collect();
    let (ra, rb) = (ca.reads.load(SeqCst), cb.reads.load(SeqCst));
    assert!(run_ios(&mut ch, &reads, 16, &mut |_| {})
        .iter()
        .all(|s| s.is_ok()));
    let (da, db) = (ca.reads.load(SeqCst) - ra, cb.reads.load(SeqCst) - rb);
    assert_eq!(da + db, 64);
    assert!(da >= 8 && db >= 8, "balanced: {da} vs {db}");
    // A sequential stream at depth 1 stays on one member.
    let (ra, rb) = (ca.reads.load(SeqCst), cb.reads.load(SeqCst));
    verify(&mut ch, 64, 8, 9);
    let seq: Vec<Io> = (0..64)
        .map(|c| Io {
            io_type: IoType::Read,
            lba: c * 8,
            blocks: 8,
            seed: 9,
        })
        .collect();
    assert!(run_ios(&mut ch, &seq, 1, &mut |_| {})
        .iter()
        .all(|s| s.is_ok()));
    let (da, db) = (ca.reads.load(SeqCst) - ra, cb.reads.load(SeqCst) - rb);
    assert!(
        da == 0 || db == 0 || da.min(db) <= 2,
        "sequential stream stays: {da} vs {db}"
    );
    drop(ch);
    drop(r);

    // Write-mostly: b is never read while a is in sync.
    let mut p = CreateParams {
        name: "bal_r2".into(),
        bitmap_chunk_kb: Some(64),
        ..Default::default()
    };
    p.write_mostly = vec!["bal_b".into()];
    let r = raid1::create(&p, vec![a.clone(), b.clone()]).unwrap();
    let mut ch = open_channel(&as_dyn(&r)).unwrap();
    let rb = cb.reads.load(SeqCst);
    assert!(run_ios(&mut ch, &reads, 16, &mut |_| {})
        .iter()
        .all(|s| s.is_ok()));
    assert_eq!(cb.reads.load(SeqCst), rb, "write-mostly member was read");
}

#[test]
fn raid1_member_fails_mid_workload_without_errors() {
    let (a, ca) = flaky("mf_a", mem("mf_ma", 16384, 512));
    let b = mem("mf_b", 16384, 512);
    let r = make("mf_r", 64, &[&a, &b]);
    let mut ch = open_channel(&as_dyn(&r)).unwrap();
    // 256 writes of 16 blocks at depth 32; `a` starts failing after 60.
    ca.fail_writes_after.store(60, SeqCst);
    let ios = shuffled_writes(256, 16, 77);
    let st = run_ios(&mut ch, &ios, 32, &mut |_| {});
    assert!(
        st.iter().all(|s| s.is_ok()),
        "{:?}",
        st.iter().filter(|s| !s.is_ok()).collect::<Vec<_>>()
    );
    assert!(ca.fail_writes.load(SeqCst), "the failure was injected");
    assert_eq!(member_state(&r, "mf_a"), "faulty");
    let s = r.status();
    assert_eq!(s["degraded"], true);
    assert_eq!(s["state"], "degraded");
    // All data verifies through the array and on the survivor.
    verify(&mut ch, 256, 16, 77);
    let off = data_offset(&r);
    assert!(check_pattern(
        read_direct(&b, off, 4096).as_slice(),
        0,
        512,
        77
    ));
    // Writes after the failure keep working.
    let ios = shuffled_writes(64, 16, 78);
    assert!(run_ios(&mut ch, &ios, 8, &mut |_| {})
        .iter()
        .all(|s| s.is_ok()));
    verify(&mut ch, 64, 16, 78);
}

#[test]
fn raid1_read_errors_are_retried_and_repaired() {
    let (a, ca) = flaky("re_a", mem("re_ma", 8192, 512));
    let b = mem("re_b", 8192, 512);
    // b write-mostly: reads try a first.
    let p = CreateParams {
        name: "re_r".into(),
        bitmap_chunk_kb: Some(64),
        write_mostly: vec!["re_b".into()],
        ..Default::default()
    };
    let r = raid1::create(&p, vec![a.clone(), b.clone()]).unwrap();
    let off = data_offset(&r);
    let mut ch = open_channel(&as_dyn(&r)).unwrap();
    let ios = shuffled_writes(32, 8, 3);
    assert!(run_ios(&mut ch, &ios, 8, &mut |_| {})
        .iter()
        .all(|s| s.is_ok()));
    // Blocks 40..52 of `a` go bad.
    ca.set_bad_range(off + 40, off + 52);
    let mut buf = AlignedBuf::new(64 * 512);
    assert_eq!(read(&mut ch, 16, &mut buf), IoStatus::Success);
    assert!(
        check_pattern(buf.as_slice(), 16, 512, 3),
        "read returned the good data"
    );
    assert_eq!(ca.bad_range(), (0, 0), "the bad range was rewritten on a");
    assert!(r.status()["read_repairs"].as_u64().unwrap() >= 1);
    assert_eq!(member_state(&r, "re_a"), "in_sync");
    // The repaired range on `a` holds the data.
    assert!(check_pattern(
        read_direct(&a, off + 40, 12).as_slice(),
        40,
        512,
        3
    ));
    verify(&mut ch, 32, 8, 3);

    // A member whose repair write fails is marked faulty; reads still work.
    ca.set_bad_range(off + 100, off + 101);
    ca.fail_writes.store(true, SeqCst);
    assert_eq!(read(&mut ch, 96, &mut buf), IoStatus::Success);
    assert!(check_pattern(buf.as_slice(), 96, 512, 3));
    assert_eq!(member_state(&r, "re_a"), "faulty");
    verify(&mut ch, 32, 8, 3);
}

#[test]
fn raid1_with_no_member_left_fails_io_without_hanging() {
    let (a, ca) = flaky("ng_a", mem("ng_ma", 8192, 512));
    let (b, cb) = flaky("ng_b", mem("ng_mb", 8192, 512));
    let r = make("ng_r", 64, &[&a, &b]);
    let mut ch = open_channel(&as_dyn(&r)).unwrap();
    let ios = shuffled_writes(16, 8, 4);
    assert!(run_ios(&mut ch, &ios, 4, &mut |_| {})
        .iter()
        .all(|s| s.is_ok()));
    for c in [&ca, &cb] {
        c.fail_writes.store(true, SeqCst);
        c.fail_reads.store(true, SeqCst);
    }
    // Writes: the first failure retires one member, the last one stays
    // (md) and the writes fail; reads fail on both.
    let ios = shuffled_writes(16, 8, 5);
    let st = run_ios(&mut ch, &ios, 8, &mut |_| {});
    assert!(st.iter().all(|s| !s.is_ok()), "{st:?}");
    let mut buf = AlignedBuf::new(8 * 512);
    assert!(!read(&mut ch, 0, &mut buf).is_ok());
    assert!(!run_nodata(&mut ch, &IoRequest::flush()).is_ok());
    assert_eq!(r.status()["in_sync"], 1);
    // Once the last member is gone too (failed explicitly is refused:
    // remove the faulty one, then fail... the last cannot be failed).
    let e = r.fail_member(if member_state(&r, "ng_a") == "in_sync" {
        "ng_a"
    } else {
        "ng_b"
    });
    assert!(e.unwrap_err().to_string().contains("last in-sync member"));
}

#[test]
fn raid1_bad_requests_get_clear_errors() {
    let err = |p: &CreateParams, m: Vec<Arc<dyn Bdev>>| {
        raid1::create(p, m).err().expect("must fail").to_string()
    };
    let p = params("bad_r", 64);
    assert_eq!(
        err(&p, vec![]),
        "invalid parameter `members`: a raid1 needs at least one member (none given)"
    );
    let a = mem("bad_a", 8192, 512);
    let b4k = mem("bad_b4k", 1024, 4096);
    assert_eq!(
        err(&p, vec![a.clone(), b4k]),
        "invalid parameter `members`: members have different block sizes: `bad_a` has 512, `bad_b4k` has 4096"
    );
    let tiny = mem("bad_tiny", 1024, 512);
    let e = err(&p, vec![a.clone(), tiny]);
    assert!(
        e.starts_with(
            "invalid parameter `members`: member `bad_tiny` is too small: 1024 blocks of 512 bytes"
        ),
        "{e}"
    );
    assert_eq!(
        err(&p, vec![a.clone(), a.clone()]),
        "invalid parameter `members`: member `bad_a` is listed twice"
    );
    assert_eq!(
        err(&p, vec![a.clone()]),
        "invalid parameter `members`: a new raid1 needs at least 2 members"
    );
    let e = err(
        &params("bad_r", 3),
        vec![a.clone(), mem("bad_c", 8192, 512)],
    );
    assert!(e.starts_with("invalid parameter `bitmap_chunk_kb`"), "{e}");
    let e = err(&params("bad/r", 64), vec![a.clone()]);
    assert!(e.starts_with("invalid parameter `name`"), "{e}");

    // Through the registry: a member already in use.
    let reg = BdevRegistry::new();
    for n in ["u_a", "u_b", "u_c"] {
        reg.add(
            mem(n, 8192, 512),
            "bdev_malloc_create",
            serde_json::json!({ "name": n }),
        )
        .unwrap();
    }
    let mut p = params("u_r1", 64);
    p.members = vec!["u_a".into(), "u_b".into()];
    raid1::rpc_create(&reg, &p).unwrap();
    assert_eq!(reg.claimed_by("u_a").as_deref(), Some("u_r1"));
    let mut p2 = params("u_r2", 64);
    p2.members = vec!["u_c".into(), "u_a".into()];
    let e = raid1::rpc_create(&reg, &p2).err().unwrap().to_string();
    assert_eq!(
        e,
        "invalid parameter `members`: bdev `u_a` is in use by `u_r1`"
    );
    p2.members = vec!["u_c".into(), "u_zz".into()];
    let e = raid1::rpc_create(&reg, &p2).err().unwrap().to_string();
    assert_eq!(e, "invalid parameter `members`: bdev `u_zz` does not exist");
    // The failed creates did not touch u_c: it can still form a new array.
    assert!(read_direct(&reg.get("u_c").unwrap(), 0, 8)
        .as_slice()
        .iter()
        .all(|&x| x == 0));
    let mp = MemberParams {
        name: "u_r1".into(),
        member: "u_c".into(),
    };
    let e = raid1::rpc_remove_member(&reg, &mp)
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        e,
        "invalid parameter `member`: `u_c` is not a member of raid1 `u_r1`"
    );
    // Members with superblocks of another array, mixed with a blank one.
    let mut p3 = params("u_r3", 64);
    p3.members = vec!["u_a".into(), "u_c".into()];
    let e = raid1::create(&p3, vec![reg.get("u_a").unwrap(), reg.get("u_c").unwrap()])
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains(
            "member `u_c` has no raid1 superblock while other members belong to array `u_r1`"
        ),
        "{e}"
    );
}

#[test]
fn raid1_status_reports_members_and_state() {
    let a = mem("st_a", 8192, 512);
    let b = mem("st_b", 8192, 512);
    let r = make("st_r", 64, &[&a, &b]);
    let s = r.status();
    assert_eq!(s["state"], "online");
    assert_eq!(s["degraded"], false);
    assert_eq!(s["num_roles"], 2);
    assert_eq!(s["bitmap_chunk_kb"], 64);
    assert_eq!(s["members"][0]["name"], "st_a");
    assert_eq!(s["members"][1]["state"], "in_sync");
    assert_eq!(s["rebuild"]["active"], false);
    assert_eq!(r.base_bdevs(), vec!["st_a".to_string(), "st_b".to_string()]);
    r.fail_member("st_b").unwrap();
    let s = r.status();
    assert_eq!(s["state"], "degraded");
    assert_eq!(s["members"][1]["state"], "faulty");
    let mut ch = open_channel(&as_dyn(&r)).unwrap();
    let mut w = AlignedBuf::new(4096);
    fill_pattern(w.as_mut_slice(), 0, 512, 1);
    assert_eq!(write(&mut ch, 0, &mut w), IoStatus::Success);
}
