//! raid1: data-path cost against a bare malloc bdev, in thread CPU time
//! (robust against a busy machine). A measurement, not a check: run with
//! `cargo test --release -p bdev --test raid1_perf -- --ignored --nocapture`.
//! The loop mimics one reactor: the workload poller and the array's
//! background task are polled in turn, as `strata bench bdev` does.
//! Knobs: `RAID1_PERF_IOS` (I/Os per run), `RAID1_PERF_BLOCKS` (4 KiB blocks
//! per malloc, default 262144 as the bench script), `RAID1_PERF_ONLY`
//! (`r1`, `w1`, `r32`, `w32`), `RAID1_PERF_SIDE` (`bare` or `raid1`: run
//! one side only, for `perf record`; `m0`: also read member 0 directly).

use std::sync::Arc;
use std::time::Instant;

use bdev::raid1::{self, CreateParams};
use bdev::testing::AlignedBuf;
use bdev::{malloc, open_channel, Bdev, IoRequest, IoStatus, IoVec};

fn cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Runs `ios` random 4 KiB I/Os at queue depth `qd`; returns CPU ns per I/O.
fn run(
    bdev: &Arc<dyn Bdev>,
    task: &mut dyn FnMut() -> usize,
    write: bool,
    qd: usize,
    ios: u64,
) -> f64 {
    let mut ch = open_channel(bdev).unwrap();
    let span = bdev.info().num_blocks;
    let mut bufs: Vec<AlignedBuf> = (0..qd).map(|_| AlignedBuf::new(4096)).collect();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % span
    };
    let submit = |ch: &mut bdev::Channel, bufs: &mut [AlignedBuf], i: usize, lba: u64| {
        let v = [IoVec {
            base: bufs[i].as_mut_slice().as_mut_ptr(),
            len: 4096,
        }];
        let req = if write {
            IoRequest::write(lba, 1, &v)
        } else {
            IoRequest::read(lba, 1, &v)
        };
        // SAFETY: each buffer is lent to one request at a time and outlives it.
        assert!(unsafe { ch.submit(&req, i as u64) }.is_ok());
    };
    for i in 0..qd {
        submit(&mut ch, &mut bufs, i, next());
    }
    let mut done = 0u64;
    let mut comp = Vec::with_capacity(qd);
    let t0 = cpu_ns();
    let mut polls = 0u64;
    while done < ios {
        comp.clear();
        ch.poll(&mut |t, st| comp.push((t as usize, st)));
        let _ = Instant::now();
        polls += 1;
        for &(i, st) in &comp {
            assert_eq!(st, IoStatus::Success);
            done += 1;
            submit(&mut ch, &mut bufs, i, next());
        }
        task();
    }
    let ns = (cpu_ns() - t0) as f64 / done as f64;
    // Drain.
    let mut left = qd;
    while left > 0 {
        left -= ch.poll(&mut |_, _| {});
        task();
    }
    let _ = polls;
    ns
}

#[test]
#[ignore]
fn raid1_perf_vs_malloc() {
    let blocks = std::env::var("RAID1_PERF_BLOCKS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(262_144u64);
    let mk = |n: &str| -> Arc<dyn Bdev> { Arc::new(malloc::create(n, blocks, 4096).unwrap()) };
    let (m0, m1, bare) = (mk("p_m0"), mk("p_m1"), mk("p_bare"));
    let p = CreateParams {
        name: "p_r".into(),
        members: vec!["p_m0".into(), "p_m1".into()],
        ..Default::default()
    };
    let r = raid1::create(&p, vec![m0.clone(), m1]).unwrap();
    let mut task = r.rebuild_task();
    let r: Arc<dyn Bdev> = r;
    let ios = std::env::var("RAID1_PERF_IOS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000_000u64);
    let only = std::env::var("RAID1_PERF_ONLY").unwrap_or_default();
    for qd in [1usize, 32] {
        for write in [false, true] {
            let case = format!("{}{qd}", if write { "w" } else { "r" });
            if !only.is_empty() && only != case {
                continue;
            }
            // Warm up both (page tables, bitmap).
            run(&bare, &mut || 0, write, qd, ios / 4);
            run(&r, &mut || task.poll(), write, qd, ios / 4);
            let side = std::env::var("RAID1_PERF_SIDE").unwrap_or_default();
            let mut b = Vec::new();
            let mut x = Vec::new();
            for _ in 0..3 {
                b.push(if side == "raid1" {
                    1.0
                } else {
                    run(&bare, &mut || task.poll(), write, qd, ios)
                });
                x.push(if side == "bare" {
                    1.0
                } else {
                    run(&r, &mut || task.poll(), write, qd, ios)
                });
            }
            if side == "m0" {
                let d = run(&m0, &mut || task.poll(), write, qd, ios);
                println!("m0 direct {d:.1} ns/io");
            }
            b.sort_by(f64::total_cmp);
            x.sort_by(f64::total_cmp);
            let (b, x) = (b[1], x[1]);
            println!(
                "qd {qd:2} {:5}: bare {b:7.1} ns/io, raid1 {x:7.1} ns/io, raid1/bare IOPS {:.1}%",
                if write { "write" } else { "read" },
                100.0 * b / x
            );
        }
    }
}
