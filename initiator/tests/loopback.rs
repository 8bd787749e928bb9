//! The SRP initiator against strata's SRP target over the loopback RDMA
//! provider: login and discovery, the data path (direct, indirect inline
//! and fetched, immediate, bounce), login rejects, and every port state
//! transition with the data checked afterwards.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bdev::testing::Persistence;
use bdev::{Bdev, IoStatus, IoType};
use common::*;
use initiator::{PortState, SrpBdev};

fn attach(port: u16, extra: serde_json::Value, ini: &reactor::ReactorSet) -> Arc<SrpBdev> {
    SrpBdev::attach(&attach_params("srp0", port, extra), ini.handle()).expect("attach")
}

#[test]
fn attach_discovers_the_lu_and_passes_conformance() {
    init_tracing();
    let port = port();
    let tgt = TargetSide::new(port, 4);
    let ini = reactors(2);
    let b = attach(port, serde_json::json!({}), &ini);
    let info = b.info().clone();
    assert_eq!(info.block_size, 4096);
    assert_eq!(info.num_blocks, 1024);
    assert_eq!(info.kind, "srp");
    // The device id is the target's VPD 0x83 designator.
    let want = tgt.target.as_ref().unwrap().lun_designator(0).unwrap();
    assert_eq!(b.device_id(), format!("eui.{want}"));
    assert_eq!(b.geometry().device_id, Some(format!("eui.{want}")));
    assert_eq!(
        b.geometry().serial,
        tgt.target.as_ref().unwrap().lun_serial(0)
    );
    // One channel per reactor: the first logged in SINGLE, the second MULTI.
    let s = session(&b);
    assert_eq!(s["ch_count"], 2);
    assert_eq!(s["port_state"], "running");
    assert_eq!(s["channels"][0]["state"], "live");
    assert_eq!(s["channels"][1]["state"], "live");
    assert_eq!(tgt.target.as_ref().unwrap().channel_count(), 2);
    // The conformance suite every bdev passes, on both reactors.
    for r in 0..2 {
        let bd: Arc<dyn Bdev> = Arc::clone(&b) as Arc<dyn Bdev>;
        ini.handle()
            .call(r, move || {
                bdev::testing::conformance(&bd, Persistence::Zeroing)
            })
            .unwrap();
    }
    // What the initiator wrote is on the target's bdev.
    assert_eq!(write(&ini, 0, &b, 100, 8, 5, 1, true), IoStatus::Success);
    assert_eq!(target_verify(&tgt, 100, 8, 5), 0);
    // The zero-copy path was taken for registered buffers.
    assert!(stat(&b, "zero_copy_cmds") > 0);
    b.detach();
    assert!(wait_until(Duration::from_secs(5), || tgt
        .target
        .as_ref()
        .unwrap()
        .channel_count()
        == 0));
}

#[test]
fn large_requests_use_indirect_tables_inline_and_fetched() {
    init_tracing();
    let port = port();
    let _tgt = TargetSide::new(port, 16);
    let ini = reactors(1);
    // Immediate data on: IUs of 8260 bytes hold 255 descriptors inline.
    let b = attach(port, serde_json::json!({"max_sect": 8192}), &ini);
    for (blocks, segs) in [(256usize, 64usize), (1024, 256), (2, 2)] {
        let w = write(&ini, 0, &b, 0, blocks, 11, segs, true);
        let (r, bad) = verify(&ini, 0, &b, 0, blocks, 11, segs, true);
        assert_eq!(
            (w, r, bad),
            (IoStatus::Success, IoStatus::Success, 0),
            "{blocks} blocks in {segs}"
        );
    }
    assert!(stat(&b, "indirect_cmds") > 0);
    // 4 MiB in 256 segments is one command of 256 descriptors: 255 fit
    // inline; without allow_ext_sg (ib_srpt cannot fetch tables) it is
    // bounced instead (once per direction).
    assert_eq!(stat(&b, "external_tables"), 0);
    assert_eq!(stat(&b, "bounce_cmds"), 2);
    // max_sect 8192 (4 MiB): a 4 MiB request is one command each way.
    let before = session(&b)["channels"][0]["commands"].as_u64().unwrap();
    assert_eq!(write(&ini, 0, &b, 0, 1024, 13, 1, true), IoStatus::Success);
    assert_eq!(
        verify(&ini, 0, &b, 0, 1024, 13, 1, true),
        (IoStatus::Success, 0)
    );
    assert_eq!(
        session(&b)["channels"][0]["commands"].as_u64().unwrap() - before,
        2
    );
    b.detach();
    // No immediate data: 260-byte IUs carry 12 descriptors; with
    // allow_ext_sg the target fetches the rest of the table by RDMA READ.
    let b = attach(
        port,
        serde_json::json!({"immediate_data": false, "max_sect": 8192, "allow_ext_sg": true}),
        &ini,
    );
    let s = session(&b);
    assert_eq!(s["channels"][0]["max_it_iu_len"], 260);
    assert_eq!(s["channels"][0]["immediate_data"], false);
    let w = write(&ini, 0, &b, 8, 1024, 12, 256, true);
    let (r, bad) = verify(&ini, 0, &b, 8, 1024, 12, 100, true);
    assert_eq!((w, r, bad), (IoStatus::Success, IoStatus::Success, 0));
    assert!(stat(&b, "external_tables") >= 2);
    assert_eq!(stat(&b, "immediate_cmds"), 0);
    assert_eq!(stat(&b, "bounce_cmds"), 0);
    b.detach();
    // The same without allow_ext_sg: 16 descriptors > 12 inline: bounced.
    let b = attach(port, serde_json::json!({"immediate_data": false}), &ini);
    let w = write(&ini, 0, &b, 8, 64, 14, 16, true);
    let (r, bad) = verify(&ini, 0, &b, 8, 64, 14, 12, true);
    assert_eq!((w, r, bad), (IoStatus::Success, IoStatus::Success, 0));
    assert_eq!(stat(&b, "external_tables"), 0);
    assert_eq!((stat(&b, "bounce_cmds"), stat(&b, "indirect_cmds")), (1, 1));
}

#[test]
fn small_writes_go_as_immediate_data_and_requests_split_at_max_sect() {
    init_tracing();
    let port = port();
    let _tgt = TargetSide::new(port, 8);
    let ini = reactors(1);
    let b = attach(port, serde_json::json!({"max_sect": 64}), &ini);
    let w = write(&ini, 0, &b, 3, 2, 9, 2, true);
    let (r, bad) = verify(&ini, 0, &b, 3, 2, 9, 1, true);
    assert_eq!((w, r, bad), (IoStatus::Success, IoStatus::Success, 0));
    assert_eq!(stat(&b, "immediate_cmds"), 1);
    // 1 MiB with max_sect 64 (32 KiB): 32 commands each way.
    let before = session(&b)["channels"][0]["commands"].as_u64().unwrap();
    let w = write(&ini, 0, &b, 64, 256, 4, 3, true);
    let (r, bad) = verify(&ini, 0, &b, 64, 256, 4, 7, true);
    assert_eq!((w, r, bad), (IoStatus::Success, IoStatus::Success, 0));
    let after = session(&b)["channels"][0]["commands"].as_u64().unwrap();
    assert_eq!(after - before, 64);
}

#[test]
fn memory_outside_every_region_is_bounced_and_counted() {
    init_tracing();
    let port = port();
    let _tgt = TargetSide::new(port, 8);
    let ini = reactors(1);
    let b = attach(port, serde_json::json!({"immediate_data": false}), &ini);
    let w = write(&ini, 0, &b, 10, 64, 3, 4, false);
    let (r, bad) = verify(&ini, 0, &b, 10, 64, 3, 5, false);
    assert_eq!((w, r, bad), (IoStatus::Success, IoStatus::Success, 0));
    assert_eq!(stat(&b, "bounce_cmds"), 2);
    assert_eq!(stat(&b, "bounce_bytes"), 2 * 64 * 4096);
    assert_eq!(stat(&b, "zero_copy_cmds"), 0);
    // Registered memory: no bounce.
    let (r, bad) = verify(&ini, 0, &b, 10, 64, 3, 5, true);
    assert_eq!((r, bad), (IoStatus::Success, 0));
    assert_eq!(stat(&b, "bounce_cmds"), 2);
}

#[test]
fn login_rejects_and_unreachable_targets_are_named() {
    init_tracing();
    let port = port();
    let mut tgt = TargetSide::new(port, 1);
    let ini = reactors(1);
    // Not in the ACL.
    tgt.stop();
    tgt.start(&[]);
    let e = SrpBdev::attach(
        &attach_params("srp0", port, serde_json::json!({})),
        ini.handle(),
    )
    .err()
    .expect("rejected")
    .to_string();
    assert!(
        e.starts_with("login rejected: channel limit reached"),
        "{e}"
    );
    assert!(e.contains("not authorized"), "{e}");
    // Wrong target port id.
    tgt.stop();
    tgt.start(&["*"]);
    let e = SrpBdev::attach(
        &attach_params("srp0", port, serde_json::json!({"id_ext": "0x99"})),
        ini.handle(),
    )
    .err()
    .expect("rejected")
    .to_string();
    assert!(e.starts_with("login rejected: unable to associate"), "{e}");
    // Nobody listens.
    let e = SrpBdev::attach(
        &attach_params("srp0", port + 500, serde_json::json!({})),
        ini.handle(),
    )
    .err()
    .expect("refused")
    .to_string();
    assert!(e.contains(&format!("127.0.0.1:{}", port + 500)), "{e}");
    // A bad parameter names the field.
    let e = SrpBdev::attach(
        &attach_params(
            "srp0",
            port,
            serde_json::json!({"fast_io_fail_tmo_s": 30, "dev_loss_tmo_s": 20}),
        ),
        ini.handle(),
    )
    .err()
    .expect("invalid")
    .to_string();
    assert!(e.contains("`fast_io_fail_tmo_s`"), "{e}");
    // The target still serves a good login afterwards.
    let b = attach(port, serde_json::json!({}), &ini);
    assert_eq!(b.port_state(), PortState::Running);
}

/// Writes `n` regions of 4 blocks with seed `seed` while the target goes
/// away and comes back; every write is acknowledged only after the target
/// has it, and reads back afterwards.
#[test]
fn target_restart_blocks_then_reconnects_and_resubmits() {
    init_tracing();
    let port = port();
    let mut tgt = TargetSide::new(port, 8);
    let ini = reactors(2);
    let b = attach(
        port,
        serde_json::json!({"reconnect_delay_s": 0.2, "fast_io_fail_tmo_s": 20, "dev_loss_tmo_s": 60}),
        &ini,
    );
    assert_eq!(write(&ini, 1, &b, 0, 16, 1, 1, true), IoStatus::Success);
    // The target goes away: the port blocks, I/O is held, not failed.
    tgt.stop();
    assert!(wait_until(Duration::from_secs(5), || b.port_state()
        == PortState::Blocked));
    let held = std::thread::scope(|s| {
        let h = s.spawn(|| write(&ini, 0, &b, 32, 16, 2, 4, true));
        std::thread::sleep(Duration::from_millis(800));
        assert!(!h.is_finished(), "I/O must be held while blocked");
        assert!(stat(&b, "failed_reconnects") >= 1);
        // Back: the reconnect resubmits the held write.
        tgt.start(&["*"]);
        h.join().unwrap()
    });
    assert_eq!(held, IoStatus::Success);
    assert_eq!(b.port_state(), PortState::Running);
    assert!(stat(&b, "reconnects") >= 1);
    assert_eq!(session(&b)["ch_count"], 2);
    for (lba, seed) in [(0u64, 1u64), (32, 2)] {
        assert_eq!(
            verify(&ini, 1, &b, lba, 16, seed, 1, true),
            (IoStatus::Success, 0),
            "lba {lba}"
        );
        assert_eq!(target_verify(&tgt, lba, 16, seed), 0);
    }
}

#[test]
fn fast_io_fail_fails_held_io_and_dev_loss_removes() {
    init_tracing();
    let port = port();
    let mut tgt = TargetSide::new(port, 4);
    let ini = reactors(1);
    let b = attach(
        port,
        serde_json::json!({"reconnect_delay_s": 0.3, "fast_io_fail_tmo_s": 1, "dev_loss_tmo_s": 2.5}),
        &ini,
    );
    let lost = Arc::new(AtomicBool::new(false));
    let l2 = Arc::clone(&lost);
    b.on_lost(move || l2.store(true, Ordering::SeqCst));
    tgt.stop();
    let t0 = Instant::now();
    // Held while blocked, failed with a path error at fast_io_fail_tmo.
    let st = write(&ini, 0, &b, 0, 4, 1, 1, true);
    let took = t0.elapsed();
    assert_eq!(st, IoStatus::PathError);
    assert!(
        took >= Duration::from_millis(800),
        "failed too early: {took:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "bounded by fast_io_fail_tmo: {took:?}"
    );
    assert_eq!(b.port_state(), PortState::FailFast);
    // New I/O fails at once.
    let t1 = Instant::now();
    let st = write(&ini, 0, &b, 0, 4, 1, 1, true);
    assert_eq!(st, IoStatus::PathError);
    assert!(t1.elapsed() < Duration::from_millis(500));
    // dev_loss_tmo: LOST, and the hook runs.
    assert!(wait_until(Duration::from_secs(5), || lost.load(Ordering::SeqCst)));
    assert_eq!(b.port_state(), PortState::Lost);
    let st = write(&ini, 0, &b, 0, 4, 1, 1, true);
    assert_eq!(st, IoStatus::PathError);
    // A target that comes back after LOST is not reconnected to.
    let rc = stat(&b, "reconnects");
    tgt.start(&["*"]);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(stat(&b, "reconnects"), rc);
    assert_eq!(tgt.target.as_ref().unwrap().channel_count(), 0);
}

#[test]
fn a_target_that_logs_us_out_is_reconnected() {
    init_tracing();
    let port = port();
    let tgt = TargetSide::new(port, 4);
    let ini = reactors(1);
    let b = attach(port, serde_json::json!({"reconnect_delay_s": 0.1}), &ini);
    assert_eq!(write(&ini, 0, &b, 0, 8, 1, 2, true), IoStatus::Success);
    assert_eq!(tgt.target.as_ref().unwrap().logout_all(), 1);
    assert!(wait_until(Duration::from_secs(5), || stat(
        &b,
        "reconnects"
    ) >= 1
        && b.port_state() == PortState::Running));
    let (st, bad) = verify(&ini, 0, &b, 0, 8, 1, 1, true);
    assert_eq!((st, bad), (IoStatus::Success, 0));
}

#[test]
fn flush_fua_unmap_write_zeroes_reach_the_target() {
    init_tracing();
    let port = port();
    let tgt = TargetSide::new(port, 4);
    let ini = reactors(1);
    let b = attach(port, serde_json::json!({}), &ini);
    assert_eq!(write(&ini, 0, &b, 0, 8, 1, 1, true), IoStatus::Success);
    assert_eq!(
        io(&ini, 0, &b, Op::NoData(IoType::Flush, 0, 0)).0,
        IoStatus::Success
    );
    let caps = b.info().caps;
    if caps.write_zeroes {
        assert_eq!(
            io(&ini, 0, &b, Op::NoData(IoType::WriteZeroes, 0, 4)).0,
            IoStatus::Success
        );
        assert_eq!(
            verify(&ini, 0, &b, 4, 4, 1, 1, true),
            (IoStatus::Success, 0)
        );
        assert_eq!(target_verify(&tgt, 4, 4, 1), 0);
    }
    // A reset answers (LUN RESET with nothing outstanding).
    assert_eq!(
        io(&ini, 0, &b, Op::NoData(IoType::Reset, 0, 0)).0,
        IoStatus::Success
    );
    assert_eq!(stat(&b, "lun_resets_succeeded"), 1);
    // Out of range: invalid, not sent.
    let st = write(&ini, 0, &b, 1023, 8, 1, 1, true);
    assert_eq!(st, IoStatus::InvalidRequest);
}

#[test]
fn a_reactor_without_a_channel_borrows_one() {
    init_tracing();
    let port = port();
    let tgt = TargetSide::new(port, 4);
    let ini = reactors(2);
    let b = attach(port, serde_json::json!({"ch_count": 1}), &ini);
    assert_eq!(session(&b)["ch_count"], 1);
    assert_eq!(tgt.target.as_ref().unwrap().channel_count(), 1);
    // Reactor 1 has no channel: its requests go through reactor 0's.
    assert_eq!(write(&ini, 1, &b, 40, 64, 8, 16, true), IoStatus::Success);
    assert_eq!(
        verify(&ini, 1, &b, 40, 64, 8, 3, true),
        (IoStatus::Success, 0)
    );
    assert_eq!(
        verify(&ini, 0, &b, 40, 64, 8, 1, true),
        (IoStatus::Success, 0)
    );
    assert_eq!(target_verify(&tgt, 40, 64, 8), 0);
    assert!(session(&b)["channels"][0]["commands"].as_u64().unwrap() >= 3);
}

/// More bounced writes than bounce slots, in flight when the target logs
/// the session out: the ones waiting for a slot must not block the resend
/// of the ones holding the slots. All complete, and the data is there.
#[test]
fn bounced_requests_beyond_the_slots_survive_a_reconnect() {
    init_tracing();
    let port = port();
    let base = malloc("m0", 8);
    let slow: Arc<dyn Bdev> = Arc::new(bdev::delay::create("tgt0", base, 0, 300_000).unwrap());
    let tgt = TargetSide::with_bdev(port, slow);
    let ini = reactors(1);
    let b = attach(
        port,
        serde_json::json!({"reconnect_delay_s": 0.1, "immediate_data": false}),
        &ini,
    );
    const N: usize = 8;
    let (tx, rx) = std::sync::mpsc::channel();
    let bd: Arc<dyn Bdev> = Arc::clone(&b) as Arc<dyn Bdev>;
    ini.handle()
        .send(0, move || {
            let mut ch = bdev::open_channel(&bd).unwrap();
            // Plain heap memory: outside every registered region.
            let mut bufs: Vec<Vec<u8>> = (0..N).map(|_| vec![0u8; 16 * 4096]).collect();
            for (i, buf) in bufs.iter_mut().enumerate() {
                bdev::testing::fill_pattern(buf, (i * 16) as u64, 4096, 21);
                let v = [bdev::IoVec::from_slice(buf)];
                // SAFETY: `bufs` moves into the poller and lives until every
                // completion has been reported.
                unsafe { ch.submit(&bdev::IoRequest::write((i * 16) as u64, 16, &v), i as u64) }
                    .unwrap();
            }
            let mut left = N;
            reactor::register_poller("test_bounce", move || {
                let _keep = &bufs;
                ch.poll(&mut |t, s| {
                    left -= 1;
                    let _ = tx.send((t, s));
                });
                reactor::Poll::from_count(left)
            });
        })
        .unwrap();
    // The first four hold the bounce slots and sit in the slow target.
    assert!(wait_until(Duration::from_secs(5), || stat(
        &b,
        "bounce_cmds"
    ) >= 4));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(tgt.target.as_ref().unwrap().logout_all(), 1);
    let mut got = Vec::new();
    for _ in 0..N {
        got.push(
            rx.recv_timeout(Duration::from_secs(30))
                .expect("every write completes"),
        );
    }
    assert!(got.iter().all(|(_, s)| *s == IoStatus::Success), "{got:?}");
    assert!(stat(&b, "reconnects") >= 1);
    for i in 0..N {
        assert_eq!(target_verify(&tgt, (i * 16) as u64, 16, 21), 0, "write {i}");
    }
}

/// A LUN RESET on one channel drops what the other channels had
/// outstanding at the target (strata's target, like LIO, aborts the LU's
/// tasks of every nexus without an answer): they resend it at once
/// instead of waiting for their command time-out.
#[test]
fn a_lun_reset_on_one_channel_resends_the_others_outstanding_commands() {
    init_tracing();
    let port = port();
    let base = malloc("m0", 8);
    let slow: Arc<dyn Bdev> = Arc::new(bdev::delay::create("tgt0", base, 0, 400_000).unwrap());
    let tgt = TargetSide::with_bdev(port, slow);
    let ini = reactors(2);
    // cmd_timeout 30 s: a command left waiting would take that long.
    let b = attach(port, serde_json::json!({}), &ini);
    assert_eq!(session(&b)["ch_count"], 2);
    let t0 = Instant::now();
    let (w, reset) = std::thread::scope(|s| {
        let h = s.spawn(|| write(&ini, 1, &b, 64, 16, 31, 2, true));
        // The write is at the target (in the slow bdev) when the reset goes.
        assert!(wait_until(Duration::from_secs(5), || session(&b)
            ["channels"][1]["inflight"]
            == 1));
        let reset = io(&ini, 0, &b, Op::NoData(IoType::Reset, 0, 0)).0;
        (h.join().unwrap(), reset)
    });
    assert_eq!((w, reset), (IoStatus::Success, IoStatus::Success));
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "took {:?}",
        t0.elapsed()
    );
    assert_eq!(stat(&b, "timeouts"), 0);
    assert!(stat(&b, "retries") >= 1);
    assert_eq!(target_verify(&tgt, 64, 16, 31), 0);
}
