//! RAID1 through the daemon: kill -9 during writes, reassembly, bitmap
//! resync of only the dirty regions, identical members afterwards.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{scratch, Serve};
use serde_json::{json, Value};

const MEMBER_BYTES: u64 = 16 << 20;
const BS: u64 = 4096;

fn config(dir: &std::path::Path) -> String {
    let m0 = dir.join("m0.img");
    let m1 = dir.join("m1.img");
    for m in [&m0, &m1] {
        if !m.exists() {
            std::fs::File::create(m)
                .unwrap()
                .set_len(MEMBER_BYTES)
                .unwrap();
        }
    }
    let cfg = dir.join("raid.json");
    std::fs::write(
        &cfg,
        serde_json::to_vec(&json!({"calls": [
            {"method": "bdev_file_create", "params": {"name": "m0", "filename": m0, "block_size": BS}},
            {"method": "bdev_file_create", "params": {"name": "m1", "filename": m1, "block_size": BS}},
            {"method": "bdev_raid1_create", "params": {"name": "r0", "members": ["m0", "m1"], "bitmap_chunk_kb": 64}},
        ]}))
        .unwrap(),
    )
    .unwrap();
    cfg.to_string_lossy().into_owned()
}

/// Writes 4 blocks at `lba(i)` with seed `seed0 + i` through `bdev_io` on
/// `r0` until `n` are acknowledged, then kills the daemon with SIGKILL
/// while the writer keeps going. Returns the acknowledged (lba, seed).
fn kill_9_under_writes(
    s: &mut Serve,
    n: usize,
    seed0: u64,
    lba: fn(u64) -> u64,
) -> Arc<Mutex<Vec<(u64, u64)>>> {
    let acked: Arc<Mutex<Vec<(u64, u64)>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop, sock) = (Arc::clone(&acked), Arc::clone(&stop), s.socket.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let lba = lba(i);
                match common::rpc_write(&sock, "r0", lba, 4, seed0 + i) {
                    Some(true) => acked.lock().unwrap().push((lba, seed0 + i)),
                    Some(false) => panic!("a mirrored write failed"),
                    None => break,
                }
                i += 1;
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < n {
        assert!(Instant::now() < deadline, "writes did not progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(s.signal_and_wait("KILL"), None);
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let _ = std::fs::remove_file(&s.socket);
    acked
}

#[test]
fn kill_9_during_writes_resyncs_only_dirty_regions() {
    let dir = scratch();
    let cfg = config(dir.path());
    let mut s = Serve::start(dir.path(), &["--config", &cfg]);
    let st = s.ok("bdev_raid1_get_status", json!({"name": "r0"}));
    assert_eq!(st["state"], "online");
    assert_eq!(st["in_sync"], 2);
    let regions = st["bitmap_regions"].as_u64().unwrap();
    // The writer stays in the first 2 MiB of the array: at most 32 regions
    // of 64 KiB are ever dirty.
    let touched_max = (2 << 20) / (64 << 10) + 1;
    assert!(regions > 4 * touched_max, "{st}");

    let acked = kill_9_under_writes(&mut s, 60, 500, |i| (i * 7) % 508);

    // Restart: the same config reassembles the array from its superblocks
    // (it does not format it), and resyncs the bitmap's dirty regions.
    let mut s2 = Serve::start(dir.path(), &["--config", &cfg]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let st = loop {
        let st = s2.ok("bdev_raid1_get_status", json!({"name": "r0"}));
        if st["resync_active"] == false && st["rebuild"]["active"] == false {
            break st;
        }
        assert!(Instant::now() < deadline, "resync did not finish: {st}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let resynced = st["resynced_regions"].as_u64().unwrap();
    assert!(
        resynced >= 1,
        "an unclean shutdown must resync the dirty regions: {st}"
    );
    assert!(
        resynced <= touched_max,
        "only bitmap-dirty regions are resynced, not {resynced} of {regions}: {st}"
    );
    assert_eq!(st["in_sync"], 2, "{st}");
    assert_eq!(st["rebuilt_regions"], 0, "no full rebuild: {st}");

    // Every acknowledged write not overwritten later reads back.
    let acked = acked.lock().unwrap().clone();
    let checked = common::verify_acked(&s2, "r0", 4, &acked);
    assert!(checked > 0);

    // Stop cleanly; the members' data areas are identical.
    let data_off = st["data_offset_blocks"].as_u64().unwrap() * BS;
    assert_eq!(s2.signal_and_wait("TERM"), Some(0), "{}", s2.log_text());
    let a = std::fs::read(dir.path().join("m0.img")).unwrap();
    let b = std::fs::read(dir.path().join("m1.img")).unwrap();
    let n = data_off as usize + (st["num_blocks"].as_u64().unwrap() * BS) as usize;
    assert!(
        a[data_off as usize..n] == b[data_off as usize..n],
        "members differ after resync"
    );

    // A clean restart resyncs nothing.
    let s3 = Serve::start(dir.path(), &["--config", &cfg]);
    let st = s3.ok("bdev_raid1_get_status", json!({"name": "r0"}));
    assert_eq!(st["resynced_regions"], 0, "{st}");
    assert_eq!(st["clean"], false, "an assembled array is marked in use");
}

#[test]
fn member_failure_and_bad_requests_through_rpc() {
    let dir = scratch();
    let s = Serve::start(dir.path(), &[]);
    for n in ["a", "b", "c"] {
        s.ok(
            "bdev_malloc_create",
            json!({"name": n, "num_blocks": 8192, "block_size": 512}),
        );
    }
    s.ok(
        "bdev_malloc_create",
        json!({"name": "big", "num_blocks": 8192, "block_size": 4096}),
    );
    s.ok(
        "bdev_malloc_create",
        json!({"name": "tiny", "num_blocks": 16, "block_size": 512}),
    );
    let err = |p: Value| s.call("bdev_raid1_create", p).unwrap_err();
    let (code, msg) = err(json!({"name": "r", "members": []}));
    assert_eq!(code, -32602);
    assert!(msg.contains("`members`"), "{msg}");
    let (_, msg) = err(json!({"name": "r", "members": ["a", "big"]}));
    assert!(msg.contains("block size"), "{msg}");
    let (_, msg) = err(json!({"name": "r", "members": ["a", "tiny"]}));
    assert!(msg.contains("tiny"), "{msg}");
    let (_, msg) = err(json!({"name": "r", "members": ["a", "nope"]}));
    assert!(msg.contains("bdev `nope` does not exist"), "{msg}");
    s.ok(
        "bdev_raid1_create",
        json!({"name": "r", "members": ["a", "b"], "bitmap_chunk_kb": 64}),
    );
    let (_, msg) = err(json!({"name": "r2", "members": ["a", "c"]}));
    assert!(msg.contains("bdev `a` is in use by `r`"), "{msg}");

    // Write, fail a member, keep writing and reading: no error surfaces.
    assert_eq!(
        s.ok(
            "bdev_io",
            json!({"name": "r", "op": "write", "offset_blocks": 0, "num_blocks": 64, "seed": 1})
        )["status"],
        "success"
    );
    let st = s.ok(
        "bdev_raid1_fail_member",
        json!({"name": "r", "member": "b"}),
    );
    assert_eq!(st["degraded"], true, "{st}");
    assert_eq!(
        s.ok(
            "bdev_io",
            json!({"name": "r", "op": "write", "offset_blocks": 64, "num_blocks": 64, "seed": 2})
        )["status"],
        "success"
    );
    assert_eq!(
        s.ok(
            "bdev_io",
            json!({"name": "r", "op": "verify", "offset_blocks": 0, "num_blocks": 64, "seed": 1})
        )["mismatched_blocks"],
        0
    );
    // Replace the failed member with a new one: rebuilt in the background.
    s.ok(
        "bdev_raid1_remove_member",
        json!({"name": "r", "member": "b"}),
    );
    s.ok("bdev_raid1_add_member", json!({"name": "r", "member": "c"}));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = s.ok("bdev_raid1_get_status", json!({"name": "r"}));
        if st["degraded"] == false && st["rebuild"]["active"] == false {
            assert!(st["rebuilt_regions"].as_u64().unwrap() > 0, "{st}");
            break;
        }
        assert!(Instant::now() < deadline, "rebuild did not finish: {st}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The rebuilt member carries the data: fail the old one and read.
    s.ok(
        "bdev_raid1_fail_member",
        json!({"name": "r", "member": "a"}),
    );
    assert_eq!(
        s.ok(
            "bdev_io",
            json!({"name": "r", "op": "verify", "offset_blocks": 64, "num_blocks": 64, "seed": 2})
        )["mismatched_blocks"],
        0
    );
    // The array is deletable; its members are released.
    s.ok("bdev_delete", json!({"name": "r"}));
    s.ok("bdev_delete", json!({"name": "c"}));
}

/// Issue 10's headline scenario through the daemon: kill -9 under writes,
/// restart (the bitmap resync starts, rate-limited so that it is still
/// running), SIGTERM before it finishes, restart: the resync resumes and
/// completes, and the members are byte-identical.
#[test]
fn sigterm_during_resync_resumes_it_after_restart() {
    let dir = scratch();
    let cfg = config(dir.path());
    // The same config with the resync slowed down to 1 MB/s.
    let slow = dir.path().join("raid-slow.json");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        r#""bitmap_chunk_kb":64"#,
        r#""bitmap_chunk_kb":64,"rebuild_rate_mb_s":1"#,
    );
    assert!(text.contains("rebuild_rate_mb_s"), "{text}");
    std::fs::write(&slow, text).unwrap();
    let slow = slow.to_string_lossy().into_owned();

    let mut s = Serve::start(dir.path(), &["--config", &slow]);
    let st = s.ok("bdev_raid1_get_status", json!({"name": "r0"}));
    let data_off = st["data_offset_blocks"].as_u64().unwrap() * BS;
    let num_blocks = st["num_blocks"].as_u64().unwrap();
    // Writes spread over ~150 regions of 64 KiB.
    let acked = kill_9_under_writes(&mut s, 600, 900, |i| ((i * 7) % 600) * 4);
    // What the crash left: a torn write on m1 in the last dirty region
    // (the resync walks regions in order: it reaches this one last).
    let last = acked.lock().unwrap().iter().map(|a| a.0).max().unwrap();
    let torn_region = last * BS / (64 << 10);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("m1.img"))
            .unwrap();
        f.write_all_at(&vec![0xa5u8; 4 * BS as usize], data_off + last * BS)
            .unwrap();
    }

    // Restart: the resync starts, slowly; stop cleanly in the middle.
    let mut s2 = Serve::start(dir.path(), &["--config", &slow]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let st = loop {
        let st = s2.ok("bdev_raid1_get_status", json!({"name": "r0"}));
        if st["resynced_regions"].as_u64().unwrap() > 0 {
            break st;
        }
        assert!(Instant::now() < deadline, "resync did not start: {st}");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(st["resync_active"], true, "{st}");
    assert!(
        st["resync_offset"].as_u64().unwrap() <= torn_region,
        "the resync must still be before region {torn_region}: {st}"
    );
    assert_eq!(s2.signal_and_wait("TERM"), Some(0), "{}", s2.log_text());

    // Restart at full speed: the resync resumes and completes.
    let mut s3 = Serve::start(dir.path(), &["--config", &cfg]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let st = loop {
        let st = s3.ok("bdev_raid1_get_status", json!({"name": "r0"}));
        if st["resync_active"] == false && st["rebuild"]["active"] == false {
            break st;
        }
        assert!(Instant::now() < deadline, "resync did not finish: {st}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        st["resynced_regions"].as_u64().unwrap() >= 1,
        "the interrupted resync resumed: {st}"
    );
    let acked = acked.lock().unwrap().clone();
    assert!(common::verify_acked(&s3, "r0", 4, &acked) > 0);
    assert_eq!(s3.signal_and_wait("TERM"), Some(0), "{}", s3.log_text());
    let a = std::fs::read(dir.path().join("m0.img")).unwrap();
    let b = std::fs::read(dir.path().join("m1.img")).unwrap();
    let n = data_off as usize + (num_blocks * BS) as usize;
    assert!(
        a[data_off as usize..n] == b[data_off as usize..n],
        "members differ after the resumed resync"
    );
}
