//! raid1: rebuild under load, failures through the `error` and `delay`
//! bdevs, several reactors' channels at once.

mod raid1_common;

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use bdev::error::{self, ErrorBdev, InjectIoType, InjectParams, InjectStatus};
use bdev::raid1::{self, MemberParams, NameParams};
use bdev::testing::{check_pattern, read, AlignedBuf};
use bdev::{delay, file, open_channel, Bdev, BdevRegistry, IoStatus, IoType};
use raid1_common::*;

fn err_bdev(name: &str, base: Arc<dyn Bdev>) -> (Arc<dyn Bdev>, Arc<ErrorBdev>) {
    let e = Arc::new(error::create(name, base).unwrap());
    (e.clone(), e)
}

fn inject(e: &ErrorBdev, io_type: InjectIoType, range: Option<[u64; 2]>, every: Option<u64>) {
    e.inject(&InjectParams {
        name: e.info().name.clone(),
        io_type: Some(io_type),
        every,
        range,
        status: Some(InjectStatus::Medium),
        clear: false,
    })
    .unwrap();
}

#[test]
fn raid1_rebuild_under_concurrent_writes_matches_the_survivor() {
    let a = mem("rb_a", 16384, 512);
    let b = mem("rb_b", 16384, 512);
    let r = make("rb_r", 64, &[&a, &b]);
    let off = data_offset(&r);
    let n = r.info().num_blocks;
    let n_chunks = n / 16;
    let mut ch = open_channel(&as_dyn(&r)).unwrap();
    assert!(
        run_ios(&mut ch, &shuffled_writes(n_chunks, 16, 51), 16, &mut |_| {})
            .iter()
            .all(|s| s.is_ok())
    );
    // Replace b by a slower new member.
    r.remove_member("rb_b").unwrap();
    let c: Arc<dyn Bdev> =
        Arc::new(delay::create("rb_c", mem("rb_mc", 16384, 512), 20, 40).unwrap());
    r.add_member(c.clone()).unwrap();
    assert_eq!(member_state(&r, "rb_c"), "rebuilding");
    r.set_rebuild_rate(10_000);
    let mut task = r.rebuild_task();
    // Writes in batches while the rebuild runs, each batch polling the task
    // between its own polls: writes land ahead of, behind and inside the
    // rebuild window.
    let mut batches_during_rebuild = 0;
    let mut written: Vec<(u64, u64)> = Vec::new(); // (chunk, seed) latest
    let mut progress_seen = false;
    for (round, seed) in (0..10_000u64).zip(52u64..) {
        let ios = shuffled_writes(n_chunks, 16, seed)
            .into_iter()
            .skip((round as usize * 7) % 50)
            .step_by(53)
            .take(12)
            .collect::<Vec<_>>();
        let st = run_ios(&mut ch, &ios, 8, &mut |_| {
            task.poll();
        });
        assert!(st.iter().all(|s| s.is_ok()));
        for io in &ios {
            written.push((io.lba / 16, seed));
        }
        let s = r.status();
        if s["rebuild"]["active"] == true {
            batches_during_rebuild += 1;
            let done = s["rebuild"]["regions_done"].as_u64().unwrap();
            let total = s["rebuild"]["regions_total"].as_u64().unwrap();
            assert_eq!(total, r.status()["bitmap_regions"].as_u64().unwrap());
            progress_seen |= done > 0 && done < total;
            assert_eq!(s["rebuild"]["rate_mb_s"], 10_000);
        } else if !task.has_work() {
            break;
        }
    }
    settle(&mut task);
    assert!(
        batches_during_rebuild >= 3,
        "writes overlapped the rebuild ({batches_during_rebuild} batches)"
    );
    assert!(progress_seen);
    assert_eq!(member_state(&r, "rb_c"), "in_sync");
    assert_eq!(r.status()["rebuilt_regions"], r.status()["bitmap_regions"]);
    assert!(
        members_equal(&a, &c, off, n),
        "the rebuilt member equals the survivor"
    );
    // And the data is right: read only from c.
    r.fail_member("rb_a").unwrap();
    let mut latest = vec![51u64; n_chunks as usize];
    for (c, s) in written {
        latest[c as usize] = s;
    }
    let reads: Vec<Io> = (0..n_chunks)
        .map(|k| Io {
            io_type: IoType::Read,
            lba: k * 16,
            blocks: 16,
            seed: latest[k as usize],
        })
        .collect();
    assert!(
        run_ios(&mut ch, &reads, 8, &mut |_| {})
            .iter()
            .all(|s| s.is_ok()),
        "data verifies on the rebuilt member"
    );
}

/// error(delay(file)) members: one member starts failing writes mid-way.
#[test]
fn raid1_error_bdev_member_failure_mid_workload_on_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = Vec::new();
    let mut errs = Vec::new();
    for i in 0..2 {
        let p = dir.path().join(format!("m{i}"));
        std::fs::File::create(&p).unwrap().set_len(8 << 20).unwrap();
        let f: Arc<dyn Bdev> =
            Arc::new(file::create(&format!("ef_f{i}"), p.to_str().unwrap(), 512).unwrap());
        let d: Arc<dyn Bdev> = Arc::new(delay::create(&format!("ef_d{i}"), f, 30, 60).unwrap());
        let (e, eb) = err_bdev(&format!("ef_e{i}"), d);
        members.push(e);
        errs.push(eb);
    }
    let r = make("ef_r", 64, &[&members[0], &members[1]]);
    let mut ch = open_channel(&as_dyn(&r)).unwrap();
    let n_chunks = r.info().num_blocks / 32;
    let ios = shuffled_writes(n_chunks, 32, 61);
    let armed = AtomicBool::new(false);
    let st = run_ios(&mut ch, &ios, 16, &mut |done| {
        if done >= 100 && !armed.swap(true, SeqCst) {
            inject(&errs[1], InjectIoType::Write, None, Some(3));
        }
    });
    assert!(st.iter().all(|s| s.is_ok()), "no error surfaced");
    assert!(errs[1].injected() > 0);
    assert_eq!(member_state(&r, "ef_e1"), "faulty");
    verify(&mut ch, n_chunks, 32, 61);
    // The survivor's file holds everything.
    let off = data_offset(&r);
    let n = r.info().num_blocks;
    assert!(check_pattern(
        read_direct(&members[0], off, n_chunks * 32).as_slice(),
        0,
        512,
        61
    ));
    assert!(n >= n_chunks * 32);
}

/// error bdev: read errors on a range of one member; the reads succeed and
/// the range is rewritten on that member with the good data.
#[test]
fn raid1_error_bdev_read_errors_are_repaired() {
    let base_a = mem("er_ma", 8192, 512);
    let (a, ea) = err_bdev("er_a", base_a.clone());
    let b: Arc<dyn Bdev> =
        Arc::new(delay::create("er_b", mem("er_mb", 8192, 512), 10, 10).unwrap());
    let mut p = params("er_r", 64);
    p.write_mostly = vec!["er_b".into()];
    let r = raid1::create(&p, vec![a.clone(), b.clone()]).unwrap();
    let off = data_offset(&r);
    let mut ch = open_channel(&as_dyn(&r)).unwrap();
    assert!(
        run_ios(&mut ch, &shuffled_writes(64, 16, 71), 8, &mut |_| {})
            .iter()
            .all(|s| s.is_ok())
    );
    // Blocks 200..232 of the array rot on a (bad data under unreadable sectors).
    {
        let mut bch = open_channel(&base_a).unwrap();
        let mut junk = AlignedBuf::new(32 * 512);
        junk.as_mut_slice().fill(0x5a);
        assert_eq!(
            bdev::testing::write(&mut bch, off + 200, &mut junk),
            IoStatus::Success
        );
    }
    inject(&ea, InjectIoType::Read, Some([off + 200, 32]), None);
    let mut buf = AlignedBuf::new(128 * 512);
    assert_eq!(read(&mut ch, 160, &mut buf), IoStatus::Success);
    assert!(
        check_pattern(buf.as_slice(), 160, 512, 71),
        "the read returned good data"
    );
    assert!(ea.injected() >= 1);
    assert_eq!(member_state(&r, "er_a"), "in_sync");
    assert!(r.status()["read_repairs"].as_u64().unwrap() >= 1);
    assert!(
        check_pattern(read_direct(&base_a, off + 200, 32).as_slice(), 200, 512, 71),
        "range repaired on a"
    );
    verify(&mut ch, 64, 16, 71);
    // Repair writes failing too: a is retired, reads go on.
    inject(&ea, InjectIoType::All, Some([off + 400, 8]), None);
    assert_eq!(read(&mut ch, 384, &mut buf), IoStatus::Success);
    assert!(check_pattern(buf.as_slice(), 384, 512, 71));
    assert_eq!(member_state(&r, "er_a"), "faulty");
}

#[test]
fn raid1_error_bdev_both_members_gone_fails_fast() {
    let (a, ea) = err_bdev("eg_a", mem("eg_ma", 8192, 512));
    let (b, eb) = err_bdev(
        "eg_b",
        Arc::new(delay::create("eg_db", mem("eg_mb", 8192, 512), 50, 50).unwrap()),
    );
    let r = make("eg_r", 64, &[&a, &b]);
    let mut ch = open_channel(&as_dyn(&r)).unwrap();
    assert!(
        run_ios(&mut ch, &shuffled_writes(16, 16, 81), 8, &mut |_| {})
            .iter()
            .all(|s| s.is_ok())
    );
    for e in [&ea, &eb] {
        e.inject(&InjectParams {
            name: e.info().name.clone(),
            io_type: Some(InjectIoType::All),
            every: None,
            range: None,
            status: Some(InjectStatus::Path),
            clear: false,
        })
        .unwrap();
    }
    let st = run_ios(&mut ch, &shuffled_writes(16, 16, 82), 8, &mut |_| {});
    assert!(st.iter().all(|s| !s.is_ok()), "{st:?}");
    let reads: Vec<Io> = (0..16)
        .map(|c| Io {
            io_type: IoType::Read,
            lba: c * 16,
            blocks: 16,
            seed: 81,
        })
        .collect();
    let st = run_ios(&mut ch, &reads, 8, &mut |_| {});
    assert!(st.iter().all(|s| *s == IoStatus::PathError), "{st:?}");
    assert_eq!(r.status()["in_sync"], 1);
    assert_eq!(r.status()["state"], "degraded");
    // Writes to regions never written before (their bitmap bits must be
    // written first, and cannot be) fail too.
    let fresh: Vec<Io> = (0..8)
        .map(|c| Io {
            io_type: IoType::Write,
            lba: 2000 + c * 400,
            blocks: 16,
            seed: 84,
        })
        .collect();
    let st = run_ios(&mut ch, &fresh, 8, &mut |_| {});
    assert!(st.iter().all(|s| !s.is_ok()), "{st:?}");
    // With the failed member removed and the last one failing, still no hang.
    let failed = if member_state(&r, "eg_a") == "faulty" {
        "eg_a"
    } else {
        "eg_b"
    };
    r.remove_member(failed).unwrap();
    let st = run_ios(&mut ch, &shuffled_writes(4, 16, 83), 4, &mut |_| {});
    assert!(st.iter().all(|s| !s.is_ok()));
}

/// Several reactors: channels on three threads write disjoint ranges while
/// a fourth runs the rebuild of a replaced member.
#[test]
fn raid1_channels_on_several_threads_with_a_rebuild() {
    let a = mem("mt_a", 32768, 512);
    let b = mem("mt_b", 32768, 512);
    let r = make("mt_r", 128, &[&a, &b]);
    let off = data_offset(&r);
    let n = r.info().num_blocks;
    let per = n / 3 / 16 * 16;
    r.remove_member("mt_b").unwrap();
    let c = mem("mt_c", 32768, 512);
    r.add_member(c.clone()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let rebuild = {
        let r = Arc::clone(&r);
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut task = r.rebuild_task();
            let end = std::time::Instant::now() + Duration::from_secs(60);
            while !stop.load(SeqCst) || task.has_work() {
                if task.poll() == 0 {
                    std::thread::yield_now();
                }
                assert!(std::time::Instant::now() < end, "rebuild thread timed out");
            }
        })
    };
    let writers: Vec<_> = (0..3u64)
        .map(|t| {
            let r = Arc::clone(&r);
            std::thread::spawn(move || {
                let mut ch = open_channel(&as_dyn(&r)).unwrap();
                for pass in 0..3u64 {
                    let ios: Vec<Io> = shuffled_writes(per / 16, 16, 90 + pass)
                        .into_iter()
                        .map(|io| Io {
                            lba: io.lba + t * per,
                            ..io
                        })
                        .collect();
                    assert!(run_ios(&mut ch, &ios, 8, &mut |_| {})
                        .iter()
                        .all(|s| s.is_ok()));
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    stop.store(true, SeqCst);
    rebuild.join().unwrap();
    assert_eq!(member_state(&r, "mt_c"), "in_sync");
    assert!(members_equal(&a, &c, off, n));
    let mut ch = open_channel(&as_dyn(&r)).unwrap();
    let reads: Vec<Io> = (0..3 * per / 16)
        .map(|k| Io {
            io_type: IoType::Read,
            lba: k * 16,
            blocks: 16,
            seed: 92,
        })
        .collect();
    assert!(run_ios(&mut ch, &reads, 8, &mut |_| {})
        .iter()
        .all(|s| s.is_ok()));
}

#[test]
fn raid1_rpc_helpers_keep_the_registry_in_step() {
    let reg = BdevRegistry::new();
    for n in ["rp_a", "rp_b", "rp_c"] {
        reg.add(
            mem(n, 8192, 512),
            "bdev_malloc_create",
            serde_json::json!({ "name": n }),
        )
        .unwrap();
    }
    let p: raid1::CreateParams =
        serde_json::from_value(serde_json::json!({"name": "rp_r", "members": ["rp_a", "rp_b"], "bitmap_chunk_kb": 64, "format": true}))
            .unwrap();
    let r = raid1::rpc_create(&reg, &p).unwrap();
    let mp = |m: &str| MemberParams {
        name: "rp_r".into(),
        member: m.into(),
    };
    let s = raid1::rpc_fail_member(&reg, &mp("rp_b")).unwrap();
    assert_eq!(s["members"][1]["state"], "faulty");
    raid1::rpc_remove_member(&reg, &mp("rp_b")).unwrap();
    assert_eq!(reg.claimed_by("rp_b"), None);
    let s = raid1::rpc_add_member(&reg, &mp("rp_c")).unwrap();
    assert_eq!(s["members"][1]["name"], "rp_c");
    assert_eq!(s["members"][1]["state"], "rebuilding");
    assert_eq!(reg.claimed_by("rp_c").as_deref(), Some("rp_r"));
    let e = raid1::rpc_add_member(&reg, &mp("rp_c"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("`rp_c` is already a member"), "{e}");
    let mut task = r.rebuild_task();
    settle(&mut task);
    let s = raid1::rpc_get_status(
        &reg,
        &NameParams {
            name: "rp_r".into(),
        },
    )
    .unwrap();
    assert_eq!(s["state"], "online");
    assert_eq!(s["rebuild"]["regions_done"], s["bitmap_regions"]);
    // The recorded parameters name the current members (config replay).
    let calls = reg.creation_calls();
    let (_, params) = calls
        .iter()
        .find(|(m, _)| m == "bdev_raid1_create")
        .unwrap();
    assert_eq!(params["members"], serde_json::json!(["rp_a", "rp_c"]));
    assert!(
        params.get("format").is_none(),
        "replay must not format: {params}"
    );
    assert!(raid1::rpc_get_status(
        &reg,
        &NameParams {
            name: "rp_a".into()
        }
    )
    .is_err());
    // Deleting the array releases its members; the superblock stays.
    drop(task);
    reg.remove("rp_r").unwrap();
    assert_eq!(reg.claimed_by("rp_a"), None);
}

#[test]
fn raid1_member_replaced_mid_rebuild_is_rebuilt_in_full() {
    let a = mem("rr_a", 16384, 512);
    let b = mem("rr_b", 16384, 512);
    let r = make("rr_r", 64, &[&a, &b]);
    let off = data_offset(&r);
    let n = r.info().num_blocks;
    let mut ch = open_channel(&as_dyn(&r)).unwrap();
    assert!(
        run_ios(&mut ch, &shuffled_writes(n / 16, 16, 101), 16, &mut |_| {})
            .iter()
            .all(|s| s.is_ok())
    );
    r.remove_member("rr_b").unwrap();
    let c = mem("rr_c", 16384, 512);
    r.add_member(c.clone()).unwrap();
    let mut task = r.rebuild_task();
    let end = std::time::Instant::now() + Duration::from_secs(30);
    while r.status()["rebuild"]["regions_done"].as_u64().unwrap() < 5 {
        task.poll();
        assert!(std::time::Instant::now() < end);
    }
    // c is swapped for d in the middle of c's rebuild.
    r.remove_member("rr_c").unwrap();
    let d = mem("rr_d", 16384, 512);
    r.add_member(d.clone()).unwrap();
    settle(&mut task);
    assert_eq!(member_state(&r, "rr_d"), "in_sync");
    assert!(
        members_equal(&a, &d, off, n),
        "d was rebuilt from the start"
    );
}

#[test]
fn raid1_rebuild_rate_limit_is_respected() {
    let a = mem("rl_a", 16384, 512);
    let b = mem("rl_b", 16384, 512);
    let r = make("rl_r", 64, &[&a, &b]);
    r.remove_member("rl_b").unwrap();
    r.add_member(mem("rl_c", 16384, 512)).unwrap();
    r.set_rebuild_rate(1);
    let mut task = r.rebuild_task();
    let t0 = std::time::Instant::now();
    for _ in 0..300 {
        task.poll();
    }
    // The limiter's invariant: at most one piece (1 MiB) ahead of the rate.
    let allowed = 1.0e6 * t0.elapsed().as_secs_f64() + (1 << 20) as f64 + 64.0 * 1024.0;
    let copied = r.status()["rebuild"]["bytes_copied"].as_u64().unwrap() as f64;
    assert!(
        copied <= allowed,
        "copied {copied} bytes, allowed {allowed}"
    );
    assert_eq!(r.status()["rebuild"]["rate_mb_s"], 1);
    // Lifting the limit lets it finish.
    r.set_rebuild_rate(0);
    settle(&mut task);
    assert_eq!(r.status()["state"], "online");
}
