//! The SRP target on the loopback RDMA provider, driven by the test
//! initiator in `common`, against malloc (and error / delay) bdevs.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bdev::Bdev;
use common::*;
use srp::{
    DataDesc, DirectBuf, Encode, LoginRejReason, Lun, MultiChannelAction, MultiChannelResult,
    TaskMgmtFunction, TskMgmt,
};
use srpt::Target;

struct Fx {
    target: Option<Target>,
    _rs: reactor::ReactorSet,
    port: u16,
}

impl Fx {
    fn new(port: u16, luns: Vec<(u16, Arc<dyn Bdev>)>, acl: &[srp::PortId]) -> Fx {
        Self::with_options(port, luns, acl, srpt::TargetOptions::default())
    }

    fn with_options(
        port: u16,
        luns: Vec<(u16, Arc<dyn Bdev>)>,
        acl: &[srp::PortId],
        opts: srpt::TargetOptions,
    ) -> Fx {
        init_tracing();
        let rs = reactors(2);
        let names: Vec<(u16, String)> = luns
            .iter()
            .map(|(l, b)| (*l, b.info().name.clone()))
            .collect();
        let refs: Vec<(u16, &str)> = names.iter().map(|(l, n)| (*l, n.as_str())).collect();
        let p = params(&format!("t{port}"), port, &refs, acl);
        let t = Target::create_with_options(&p, luns, rs.handle(), opts).expect("target");
        Fx {
            target: Some(t),
            _rs: rs,
            port,
        }
    }

    fn t(&self) -> &Target {
        self.target.as_ref().unwrap()
    }

    fn login(&self, ini: u64) -> Initiator {
        login(addr(self.port), login_req(initiator_port(ini)), 16 << 20).unwrap()
    }

    fn wait_channels(&self, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.t().channel_count() != n {
            assert!(
                std::time::Instant::now() < deadline,
                "channels: {} != {n}",
                self.t().channel_count()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Fx {
    fn drop(&mut self) {
        if let Some(t) = self.target.take() {
            t.delete(Duration::from_secs(10)).expect("target delete");
        }
    }
}

fn inquiry_cdb(evpd: bool, page: u8, len: u16) -> [u8; 6] {
    let l = len.to_be_bytes();
    [0x12, evpd as u8, page, l[0], l[1], 0]
}

#[test]
fn login_response_and_scsi_basics() {
    let fx = Fx::new(4501, vec![(0, malloc("m4501", 64))], &[initiator_port(1)]);
    let mut i = fx.login(1);
    let r = i.login_rsp;
    assert_eq!(r.req_lim_delta, 32);
    assert_eq!(r.max_it_iu_len, 8260);
    assert_eq!(r.max_ti_iu_len, 8260);
    assert!(r.immediate_data_supported);
    assert_eq!(r.multichannel, MultiChannelResult::NoChannel);
    assert_eq!(r.buf_fmt, srp::BufFormats::BOTH);

    // Standard INQUIRY.
    let d = i.desc(0, 96);
    let tag = i.send_cmd(
        0,
        &inquiry_cdb(false, 0, 96),
        DataDesc::None,
        DataDesc::Direct(d),
    );
    let rsp = i.wait(tag);
    assert!(rsp.good(), "{rsp:?}");
    let data = i.mem_read(0, 36);
    assert_eq!(&data[8..16], b"STRATA  ");
    // 36 bytes of 96 returned: data-in underflow residual.
    assert_eq!(
        rsp.flags & srp::RspFlags::DIUNDER.0,
        srp::RspFlags::DIUNDER.0
    );
    assert_eq!(rsp.di_res, 96 - 36);

    // Unit serial number (VPD 0x80) = what the target reports.
    let tag = i.send_cmd(
        0,
        &inquiry_cdb(true, 0x80, 255),
        DataDesc::None,
        DataDesc::Direct(i.desc(0, 255)),
    );
    assert!(i.wait(tag).good());
    let page = i.mem_read(0, 255);
    let n = page[3] as usize;
    let serial = String::from_utf8(page[4..4 + n].to_vec()).unwrap();
    assert_eq!(serial.trim(), fx.t().lun_serial(0).unwrap());

    // Device identification (VPD 0x83) carries the designator.
    let tag = i.send_cmd(
        0,
        &inquiry_cdb(true, 0x83, 255),
        DataDesc::None,
        DataDesc::Direct(i.desc(0, 255)),
    );
    assert!(i.wait(tag).good());
    let page = i.mem_read(0, 255);
    let want: Vec<u8> = (0..8)
        .map(|k| {
            u8::from_str_radix(&fx.t().lun_designator(0).unwrap()[2 * k..2 * k + 2], 16).unwrap()
        })
        .collect();
    assert!(
        page.windows(8).any(|w| w == want.as_slice()),
        "designator in VPD 0x83"
    );

    // READ CAPACITY(16).
    let cdb = [0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0];
    let tag = i.send_cmd(0, &cdb, DataDesc::None, DataDesc::Direct(i.desc(0, 32)));
    assert!(i.wait(tag).good());
    let cap = i.mem_read(0, 12);
    assert_eq!(
        u64::from_be_bytes(cap[..8].try_into().unwrap()),
        64 * 2048 - 1
    );
    assert_eq!(u32::from_be_bytes(cap[8..12].try_into().unwrap()), 512);

    // TEST UNIT READY, REPORT LUNS.
    let tag = i.send_cmd(0, &[0; 6], DataDesc::None, DataDesc::None);
    assert!(i.wait(tag).good());
    let cdb = [0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0];
    let tag = i.send_cmd(0, &cdb, DataDesc::None, DataDesc::Direct(i.desc(0, 64)));
    assert!(i.wait(tag).good());
    assert_eq!(&i.mem_read(0, 4), &[0, 0, 0, 8]);
}

#[test]
fn read_write_verify_direct_multi_window() {
    let opts = srpt::TargetOptions {
        max_window: 256 << 10,
        pool_bytes: 2 << 20,
        ..Default::default()
    };
    let fx = Fx::with_options(
        4502,
        vec![(0, malloc("m4502", 64))],
        &[initiator_port(1)],
        opts,
    );
    let mut i = fx.login(1);
    for (k, len) in [512usize, 4096, 65536, 1 << 20, 4 << 20]
        .into_iter()
        .enumerate()
    {
        let data = pattern(len, k as u64 + 1);
        let lba = (k as u64) * 9000;
        let r = i.write(0, lba, &data, 0);
        assert!(r.good(), "write {len}: {r:?}");
        i.mem_write(0, &vec![0u8; len]);
        let (r, back) = i.read(0, lba, len, 0);
        assert!(r.good(), "read {len}: {r:?}");
        assert!(back == data, "read back {len} bytes");
    }
    // Many in flight at once, each its own range and pattern.
    let mut tags = Vec::new();
    for k in 0..24u64 {
        let data = pattern(128 << 10, 100 + k);
        let off = (k as usize) * (128 << 10);
        i.mem_write(off, &data);
        let d = i.desc(off, 128 << 10);
        tags.push(i.send_cmd(
            0,
            &cdb_rw16(true, 40000 + k * 256, 256),
            DataDesc::Direct(d),
            DataDesc::None,
        ));
    }
    for t in tags {
        assert!(i.wait(t).good());
    }
    i.mem_write(0, &vec![0u8; 24 << 17]);
    let mut tags = Vec::new();
    for k in 0..24u64 {
        let d = i.desc((k as usize) * (128 << 10), 128 << 10);
        tags.push(i.send_cmd(
            0,
            &cdb_rw16(false, 40000 + k * 256, 256),
            DataDesc::None,
            DataDesc::Direct(d),
        ));
    }
    for t in tags {
        assert!(i.wait(t).good());
    }
    for k in 0..24u64 {
        assert!(
            i.mem_read((k as usize) * (128 << 10), 128 << 10) == pattern(128 << 10, 100 + k),
            "buffer {k}"
        );
    }
    assert_eq!(i.req_lim, 32, "every credit came back");
}

#[test]
fn indirect_descriptors_inline_and_fetched() {
    let fx = Fx::new(4503, vec![(0, malloc("m4503", 64))], &[initiator_port(1)]);
    let mut i = fx.login(1);
    // Eight scattered, oddly sized pieces (not block aligned), 16 KiB total.
    let sizes = [1000u32, 3096, 512, 2560, 4096, 100, 3988, 1032];
    assert_eq!(sizes.iter().sum::<u32>(), 16384);
    let mut descs = Vec::new();
    let mut off = 0usize;
    for s in sizes {
        descs.push(i.desc(off, s));
        off += s as usize + 777;
    }
    let data = pattern(16384, 7);
    let mut pos = 0;
    for d in &descs {
        let o = (d.va - i.mem.addr()) as usize;
        i.mem_write(o, &data[pos..pos + d.len as usize]);
        pos += d.len as usize;
    }
    let tag = i.send_cmd(
        0,
        &cdb_rw16(true, 100, 32),
        Initiator::indirect_inline(&descs),
        DataDesc::None,
    );
    assert!(i.wait(tag).good());
    let (r, back) = i.read(0, 100, 16384, 1 << 20);
    assert!(r.good());
    assert!(back == data, "inline indirect write");

    // Read it back scattered through a table fetched by RDMA READ (2 of 8
    // entries inline, as ib_srp sends with cmd_sg_entries=2, allow_ext_sg).
    i.mem_write(0, &vec![0u8; off]);
    let ind = i.indirect_remote(&descs, 2);
    let tag = i.send_cmd(0, &cdb_rw16(false, 100, 32), DataDesc::None, ind);
    assert!(i.wait(tag).good());
    let mut got = Vec::new();
    for d in &descs {
        got.extend(i.mem_read((d.va - i.mem.addr()) as usize, d.len as usize));
    }
    assert!(got == data, "fetched-table indirect read");

    // 600 descriptors of 1 KiB through a fetched table: more than one chunk
    // of 64 work requests; and 255 inline 4 KiB descriptors (cmd_sg_entries=255).
    let many: Vec<DirectBuf> = (0..600).map(|k| i.desc(k * 2048, 1024)).collect();
    let big = pattern(600 * 1024, 9);
    for (k, d) in many.iter().enumerate() {
        let o = (d.va - i.mem.addr()) as usize;
        i.mem_write(o, &big[k * 1024..(k + 1) * 1024]);
    }
    let ind = i.indirect_remote(&many, 0);
    let tag = i.send_cmd(0, &cdb_rw16(true, 5000, 1200), ind, DataDesc::None);
    assert!(i.wait(tag).good());
    let (r, back) = i.read(0, 5000, 600 * 1024, 4 << 20);
    assert!(r.good());
    assert!(back == big, "600-entry fetched table");

    let d255: Vec<DirectBuf> = (0..255).map(|k| i.desc(k * 8192, 4096)).collect();
    i.mem_write(0, &vec![0u8; 255 * 8192]);
    let tag = i.send_cmd(
        0,
        &cdb_rw16(false, 5000, 2040),
        DataDesc::None,
        Initiator::indirect_inline(&d255),
    );
    assert!(i.wait(tag).good());
    let mut got = Vec::new();
    for d in &d255 {
        got.extend(i.mem_read((d.va - i.mem.addr()) as usize, 4096));
    }
    assert!(got[..600 * 1024] == big[..], "255 inline descriptors");
}

#[test]
fn immediate_data_writes() {
    let fx = Fx::new(4504, vec![(0, malloc("m4504", 16))], &[initiator_port(1)]);
    let mut i = fx.login(1);
    for (k, len) in [512usize, 4096, 8192].into_iter().enumerate() {
        let data = pattern(len, 40 + k as u64);
        let r = i.write_imm(0, 64 * k as u64, &data);
        assert!(r.good(), "{r:?}");
        let (r, back) = i.read(0, 64 * k as u64, len, 0);
        assert!(r.good());
        assert!(back == data, "immediate {len}");
    }
    // Immediate data shorter than the CDB's transfer: overflow, rejected.
    let data = pattern(1024, 1);
    let im = srp::ImmediateData {
        offset: 68,
        data: &data,
    };
    let tag = i.send_cmd(
        0,
        &cdb_rw16(true, 0, 4),
        DataDesc::Immediate(im),
        DataDesc::None,
    );
    let r = i.wait(tag);
    assert_eq!(r.status, 2);
    assert_eq!(r.sense_key(), Some((5, 0x0e, 0x03)));
    assert_eq!(r.flags & srp::RspFlags::DOOVER.0, srp::RspFlags::DOOVER.0);
    assert_eq!(r.do_res, 1024);
}

#[test]
fn credits_are_returned_and_reported() {
    let slow = Arc::new(bdev::delay::create("d4505", malloc("m4505", 16), 20_000, 20_000).unwrap());
    let fx = Fx::new(4505, vec![(0, slow)], &[initiator_port(1)]);
    let mut i = fx.login(1);
    assert_eq!(i.req_lim, 32);
    // One credit stays for task management, as ib_srp does.
    let mut tags = Vec::new();
    for k in 0..31u64 {
        let d = i.desc(k as usize * 4096, 4096);
        tags.push(i.send_cmd(
            0,
            &cdb_rw16(false, k * 8, 8),
            DataDesc::None,
            DataDesc::Direct(d),
        ));
    }
    assert_eq!(i.req_lim, 1);
    std::thread::sleep(Duration::from_millis(5));
    let s = fx.t().sessions_json();
    let ch = &s["sessions"][0]["channels"][0];
    assert_eq!(
        s["sessions"][0]["initiator_port_id"],
        port_str(&initiator_port(1))
    );
    assert_eq!(ch["req_lim"], 32);
    assert_eq!(ch["state"], "live");
    let mut delta = 0;
    for t in tags {
        let r = i.wait(t);
        assert!(r.good());
        delta += r.delta;
    }
    assert_eq!(delta, 31);
    assert_eq!(i.req_lim, 32);
    std::thread::sleep(Duration::from_millis(20));
    let s = fx.t().sessions_json();
    assert_eq!(s["sessions"][0]["channels"][0]["credits"], 32);
    assert_eq!(s["sessions"][0]["channels"][0]["inflight"], 0);
}

#[test]
fn login_rejects() {
    let fx = Fx::new(4506, vec![(0, malloc("m4506", 4))], &[initiator_port(1)]);
    // Not in the ACL.
    let mut req = login_req(initiator_port(2));
    req.tag = 0x1234;
    let rej = login(addr(4506), req, 4096).rejected();
    assert_eq!(rej.reason, LoginRejReason::ChannelLimitReached);
    assert_eq!(rej.tag, 0x1234);
    // Wrong target port id.
    let mut req = login_req(initiator_port(1));
    req.target_port_id = srp::PortId::from_parts(1, 2);
    assert_eq!(
        login(addr(4506), req, 4096).rejected().reason,
        LoginRejReason::UnableAssociateChannel
    );
    // IU length too large.
    let mut req = login_req(initiator_port(1));
    req.req_it_iu_len = 1 << 20;
    assert_eq!(
        login(addr(4506), req, 4096).rejected().reason,
        LoginRejReason::ReqItIuLengthTooLarge
    );
    // No supported descriptor format.
    let mut req = login_req(initiator_port(1));
    req.req_buf_fmt = srp::BufFormats(0);
    assert_eq!(
        login(addr(4506), req, 4096).rejected().reason,
        LoginRejReason::UnsupportedDescriptorFormat
    );
    assert_eq!(fx.t().channel_count(), 0);
    // The admitted initiator still gets in.
    let mut i = fx.login(1);
    assert!(i.write(0, 0, &pattern(512, 1), 0).good());
}

#[test]
fn empty_acl_admits_nobody_star_admits_all() {
    let fx = Fx::new(4507, vec![(0, malloc("m4507", 4))], &[]);
    assert_eq!(
        login(addr(4507), login_req(initiator_port(1)), 4096)
            .rejected()
            .reason,
        LoginRejReason::ChannelLimitReached
    );
    drop(fx);
    init_tracing();
    let rs = reactors(1);
    let mut p = params("t4508", 4508, &[(0, "m4508")], &[]);
    p.acl = vec!["*".into()];
    let t = Target::create(&p, vec![(0, malloc("m4508", 4))], rs.handle()).unwrap();
    let mut i = login(addr(4508), login_req(initiator_port(77)), 4096).unwrap();
    assert!(i.write(0, 0, &pattern(512, 1), 0).good());
    t.delete(Duration::from_secs(5)).unwrap();
}

fn tmf(i: &mut Initiator, lun: u16, function: TaskMgmtFunction, task_tag: u64) -> u64 {
    let tag = i.tag();
    let iu = TskMgmt {
        sol_not: 0,
        tag,
        lun: Lun::from_single_level(lun).unwrap(),
        function,
        task_tag,
    }
    .to_vec()
    .unwrap();
    i.send_raw(&iu);
    tag
}

#[test]
fn abort_task_and_lun_reset() {
    let slow =
        Arc::new(bdev::delay::create("d4509", malloc("m4509", 16), 200_000, 200_000).unwrap());
    let fx = Fx::new(
        4509,
        vec![(0, slow), (1, malloc("m4509b", 16))],
        &[initiator_port(1)],
    );
    let mut i = fx.login(1);
    // ABORT TASK of a write stuck in the (slow) bdev.
    i.mem_write(0, &pattern(4096, 3));
    let victim = i.send_cmd(
        0,
        &cdb_rw16(true, 0, 8),
        DataDesc::Direct(i.desc(0, 4096)),
        DataDesc::None,
    );
    std::thread::sleep(Duration::from_millis(20));
    let t = tmf(&mut i, 0, TaskMgmtFunction::AbortTask, victim);
    let r = i.wait(t);
    assert_eq!(r.tmf_code(), Some(srp::tsk_mgmt_rsp::COMPLETE));
    assert_eq!(r.delta, 2, "the TMF and the aborted command's credits");
    assert!(
        i.try_wait(victim, Duration::from_millis(400)).is_none(),
        "aborted task answered"
    );
    assert_eq!(i.req_lim, 32);
    // ABORT TASK of an unknown tag: FUNCTION COMPLETE.
    let t = tmf(&mut i, 0, TaskMgmtFunction::AbortTask, 0xdead);
    assert_eq!(i.wait(t).tmf_code(), Some(srp::tsk_mgmt_rsp::COMPLETE));

    // LUN RESET with many commands in flight on LUN 0, one on LUN 1.
    let mut victims = Vec::new();
    for k in 0..10u64 {
        victims.push(i.send_cmd(
            0,
            &cdb_rw16(false, k, 1),
            DataDesc::None,
            DataDesc::Direct(i.desc(k as usize * 512, 512)),
        ));
    }
    let other = i.send_cmd(
        1,
        &cdb_rw16(false, 0, 1),
        DataDesc::None,
        DataDesc::Direct(i.desc(1 << 20, 512)),
    );
    std::thread::sleep(Duration::from_millis(20));
    let t = tmf(&mut i, 0, TaskMgmtFunction::LunReset, 0);
    let r = i.wait(t);
    assert_eq!(r.tmf_code(), Some(srp::tsk_mgmt_rsp::COMPLETE));
    assert!(i.wait(other).good(), "LUN 1 is not reset");
    for v in victims {
        assert!(i.try_wait(v, Duration::from_millis(1)).is_none());
    }
    std::thread::sleep(Duration::from_millis(300));
    i.poll(Duration::from_millis(10));
    assert_eq!(i.req_lim, 32, "every credit came back");
    // The LUN works afterwards.
    assert!(i.write(0, 8, &pattern(512, 5), 0).good());
    // ABORT TASK SET: the same for this I_T_L nexus.
    let mut victims = Vec::new();
    for k in 0..4u64 {
        let d = i.desc(k as usize * 512, 512);
        victims.push(i.send_cmd(
            0,
            &cdb_rw16(true, 100 + k, 1),
            DataDesc::Direct(d),
            DataDesc::None,
        ));
    }
    std::thread::sleep(Duration::from_millis(20));
    let t = tmf(&mut i, 0, TaskMgmtFunction::AbortTaskSet, 0);
    let r = i.wait(t);
    assert_eq!(r.tmf_code(), Some(srp::tsk_mgmt_rsp::COMPLETE));
    assert_eq!(r.delta, 5, "four aborted commands and the TMF");
    for v in victims {
        assert!(i.try_wait(v, Duration::from_millis(1)).is_none());
    }
    assert_eq!(i.req_lim, 32);
    // LUN RESET of a LUN that does not exist: FUNCTION FAILED.
    let t = tmf(&mut i, 9, TaskMgmtFunction::LunReset, 0);
    assert_eq!(i.wait(t).tmf_code(), Some(srp::tsk_mgmt_rsp::FAILED));
    // CLEAR ACA is not supported.
    let t = tmf(&mut i, 0, TaskMgmtFunction::ClearAca, 0);
    assert_eq!(i.wait(t).tmf_code(), Some(srp::tsk_mgmt_rsp::NOT_SUPPORTED));
}

#[test]
fn initiator_logout_disconnects() {
    let fx = Fx::new(4510, vec![(0, malloc("m4510", 4))], &[initiator_port(1)]);
    let mut i = fx.login(1);
    assert!(i.write(0, 0, &pattern(512, 1), 0).good());
    fx.wait_channels(1);
    i.logout();
    assert!(
        i.wait_disconnected(Duration::from_secs(5)),
        "target disconnects after I_LOGOUT"
    );
    fx.wait_channels(0);
    let mut j = fx.login(1);
    let (r, back) = j.read(0, 0, 512, 0);
    assert!(r.good());
    assert!(back == pattern(512, 1));
}

#[test]
fn disconnect_mid_io_loses_no_acknowledged_write() {
    let slow = Arc::new(bdev::delay::create("d4511", malloc("m4511", 64), 0, 500).unwrap());
    let fx = Fx::new(4511, vec![(0, slow)], &[initiator_port(1)]);
    let mut i = fx.login(1);
    let faults = i.id.faults().expect("loopback faults");
    let mut acked = Vec::new();
    let mut inflight: Vec<(u64, u64)> = Vec::new();
    let mut k = 0u64;
    let mut broke = false;
    while k < 400 && !i.disconnected {
        while inflight.len() < 16 && k < 400 {
            let off = (k as usize % 64) * 8192;
            i.mem_write(off, &pattern(8192, 1000 + k));
            let d = i.desc(off, 8192);
            let tag = i.send_cmd(
                0,
                &cdb_rw16(true, k * 16, 16),
                DataDesc::Direct(d),
                DataDesc::None,
            );
            inflight.push((tag, k));
            k += 1;
        }
        i.poll(Duration::from_millis(1));
        inflight.retain(|&(tag, n)| match i.responses.remove(&tag) {
            Some(r) => {
                if r.good() {
                    acked.push(n);
                }
                false
            }
            None => true,
        });
        if k >= 150 && !broke {
            faults.break_connection();
            broke = true;
        }
    }
    assert!(broke && acked.len() >= 100, "acked {}", acked.len());
    drop(i);
    fx.wait_channels(0);
    let mut j = fx.login(1);
    for n in &acked {
        let (r, back) = j.read(0, n * 16, 8192, 0);
        assert!(r.good());
        assert!(
            back == pattern(8192, 1000 + n),
            "acknowledged write {n} lost"
        );
    }
}

#[test]
fn multichannel_single_and_multi() {
    let fx = Fx::new(
        4512,
        vec![(0, malloc("m4512", 4))],
        &[initiator_port(1), initiator_port(2)],
    );
    let mut a = fx.login(1);
    let mut req = login_req(initiator_port(1));
    req.multichannel = MultiChannelAction::Multi;
    let mut b = login(addr(4512), req, 1 << 20).unwrap();
    assert_eq!(b.login_rsp.multichannel, MultiChannelResult::Maintained);
    // Another initiator is not affected by either.
    let mut other = fx.login(2);
    assert_eq!(other.login_rsp.multichannel, MultiChannelResult::NoChannel);
    assert!(a.write(0, 0, &pattern(512, 1), 0).good());
    assert!(b.write(0, 1, &pattern(512, 2), 0).good());
    fx.wait_channels(3);
    let s = fx.t().sessions_json();
    assert_eq!(s["sessions"].as_array().unwrap().len(), 2);
    // SINGLE terminates the other channels of initiator 1.
    let mut c = fx.login(1);
    assert_eq!(c.login_rsp.multichannel, MultiChannelResult::Terminated);
    assert!(a.wait_disconnected(Duration::from_secs(5)));
    assert!(b.wait_disconnected(Duration::from_secs(5)));
    assert!(
        a.other_ius.iter().any(|iu| iu[0] == 0x80),
        "T_LOGOUT sent to the terminated channel"
    );
    assert!(!other.wait_disconnected(Duration::from_millis(50)));
    fx.wait_channels(2);
    let (r, back) = c.read(0, 0, 1024, 0);
    assert!(r.good());
    assert!(back[..512] == pattern(512, 1)[..] && back[512..] == pattern(512, 2)[..]);
    assert!(other.write(0, 2, &pattern(512, 3), 0).good());
}

#[test]
fn two_initiators_two_luns_concurrently() {
    let fx = Fx::new(
        4513,
        vec![(0, malloc("m4513a", 32)), (7, malloc("m4513b", 32))],
        &[initiator_port(1), initiator_port(2)],
    );
    let port = fx.port;
    let workers: Vec<_> = (1..=2u64)
        .map(|ini| {
            std::thread::spawn(move || {
                let mut i = login(addr(port), login_req(initiator_port(ini)), 8 << 20).unwrap();
                for round in 0..20u64 {
                    for lun in [0u16, 7] {
                        let lba = ini * 10_000 + round * 64;
                        let seed = ini << 32 | round << 8 | u64::from(lun);
                        let data = pattern(32768, seed);
                        assert!(i.write(lun, lba, &data, 0).good());
                        let (r, back) = i.read(lun, lba, 32768, 1 << 20);
                        assert!(r.good());
                        assert!(back == data, "initiator {ini} lun {lun} round {round}");
                    }
                }
                i
            })
        })
        .collect();
    let mut inis: Vec<Initiator> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    // The LUNs are distinct devices.
    let (r, a) = inis[0].read(0, 10_000, 512, 0);
    assert!(r.good());
    let (r, b) = inis[0].read(7, 10_000, 512, 0);
    assert!(r.good());
    assert_ne!(a, b);
    assert_eq!(
        fx.t().sessions_json()["sessions"].as_array().unwrap().len(),
        2
    );
}

#[test]
fn bad_ius_get_check_condition_or_logout() {
    let fx = Fx::new(4514, vec![(0, malloc("m4514", 4))], &[initiator_port(1)]);
    let mut i = fx.login(1);
    // Truncated SRP_CMD (has a tag): CHECK CONDITION, INVALID FIELD IN CMD IU.
    let mut iu = [0u8; 24];
    iu[0] = 0x02;
    iu[8..16].copy_from_slice(&77u64.to_be_bytes());
    i.send_raw(&iu);
    let r = i.wait(77);
    assert_eq!((r.status, r.sense_key()), (2, Some((5, 0x0e, 0x03))));
    // Unsupported data-in descriptor format.
    let d = i.desc(0, 512);
    let cmd = srp::SrpCmd {
        sol_not: 0,
        tag: 78,
        lun: Lun::from_single_level(0).unwrap(),
        task_attr: srp::TaskAttr::Simple,
        cdb: &cdb_rw16(false, 0, 1),
        data_out: DataDesc::None,
        data_in: DataDesc::Direct(d),
    };
    let mut b = cmd.to_vec().unwrap();
    b[5] = 0x07;
    i.send_raw(&b);
    assert_eq!(i.wait(78).sense_key(), Some((5, 0x0e, 0x03)));
    // Buffer smaller than the transfer: overflow.
    let tag = i.send_cmd(
        0,
        &cdb_rw16(false, 0, 8),
        DataDesc::None,
        DataDesc::Direct(i.desc(0, 1024)),
    );
    let r = i.wait(tag);
    assert_eq!(r.sense_key(), Some((5, 0x0e, 0x03)));
    assert_eq!(r.di_res, 3072);
    // Buffer larger than the transfer: underflow, GOOD.
    let tag = i.send_cmd(
        0,
        &cdb_rw16(false, 0, 1),
        DataDesc::None,
        DataDesc::Direct(i.desc(0, 1024)),
    );
    let r = i.wait(tag);
    assert!(r.good());
    assert_eq!(
        (r.flags & srp::RspFlags::DIUNDER.0 != 0, r.di_res),
        (true, 512)
    );
    // Unknown CDB opcode, LBA out of range, absent LUN.
    let tag = i.send_cmd(0, &[0xd7, 0, 0, 0, 0, 0], DataDesc::None, DataDesc::None);
    assert_eq!(i.wait(tag).sense_key(), Some((5, 0x20, 0)));
    let tag = i.send_cmd(
        0,
        &cdb_rw16(false, 1 << 40, 1),
        DataDesc::None,
        DataDesc::Direct(i.desc(0, 512)),
    );
    assert_eq!(i.wait(tag).sense_key(), Some((5, 0x21, 0)));
    let tag = i.send_cmd(
        3,
        &cdb_rw16(false, 0, 1),
        DataDesc::None,
        DataDesc::Direct(i.desc(0, 512)),
    );
    assert_eq!(i.wait(tag).sense_key(), Some((5, 0x25, 0)));
    // INQUIRY to an absent LUN: peripheral qualifier 3.
    let tag = i.send_cmd(
        3,
        &inquiry_cdb(false, 0, 36),
        DataDesc::None,
        DataDesc::Direct(i.desc(0, 36)),
    );
    assert!(i.wait(tag).good());
    assert_eq!(i.mem_read(0, 1)[0], 0x7f);
    // Truncated TSK_MGMT (has a tag): FIELDS INVALID.
    let mut iu = [0u8; 20];
    iu[0] = 0x01;
    iu[8..16].copy_from_slice(&79u64.to_be_bytes());
    i.send_raw(&iu);
    assert_eq!(
        i.wait(79).tmf_code(),
        Some(srp::tsk_mgmt_rsp::FIELDS_INVALID)
    );
    assert_eq!(i.req_lim, 32);
    // An unknown IU type: T_LOGOUT, then disconnect.
    let mut iu = [0u8; 16];
    iu[0] = 0x55;
    i.send_raw(&iu);
    assert!(i.wait_disconnected(Duration::from_secs(5)));
    assert!(
        i.other_ius.iter().any(|iu| iu[0] == 0x80 && iu[7] == 2),
        "T_LOGOUT invalid IU type"
    );
    fx.wait_channels(0);

    // An IU without a tag: logout.
    let mut i = fx.login(1);
    i.send_raw(&[0x02, 0, 0, 0, 0, 0, 0, 0]);
    assert!(i.wait_disconnected(Duration::from_secs(5)));
    fx.wait_channels(0);

    // A descriptor with a bad rkey: the RDMA fails, the channel goes down,
    // the target survives.
    let mut i = fx.login(1);
    let d = DirectBuf {
        va: i.mem.addr(),
        key: 0x0bad_0000,
        len: 512,
    };
    i.send_cmd(
        0,
        &cdb_rw16(false, 0, 1),
        DataDesc::None,
        DataDesc::Direct(d),
    );
    assert!(i.wait_disconnected(Duration::from_secs(5)));
    fx.wait_channels(0);
    let mut i = fx.login(1);
    assert!(i.write(0, 0, &pattern(512, 1), 0).good());
}

#[test]
fn bdev_errors_map_to_sense() {
    let eb = Arc::new(bdev::error::create("e4515", malloc("m4515", 4)).unwrap());
    let fx = Fx::new(
        4515,
        vec![(0, Arc::clone(&eb) as Arc<dyn Bdev>)],
        &[initiator_port(1)],
    );
    let mut i = fx.login(1);
    let inject =
        |io: bdev::error::InjectIoType, st: bdev::error::InjectStatus| bdev::error::InjectParams {
            name: "e4515".into(),
            io_type: Some(io),
            every: None,
            range: None,
            status: Some(st),
            clear: false,
        };
    eb.inject(&inject(
        bdev::error::InjectIoType::Read,
        bdev::error::InjectStatus::Medium,
    ))
    .unwrap();
    let (r, _) = i.read(0, 0, 4096, 0);
    assert_eq!((r.status, r.sense_key()), (2, Some((3, 0x11, 0))));
    eb.inject(&inject(
        bdev::error::InjectIoType::Write,
        bdev::error::InjectStatus::Medium,
    ))
    .unwrap();
    let r = i.write(0, 0, &pattern(4096, 1), 0);
    assert_eq!(r.sense_key(), Some((3, 0x0c, 0)));
    eb.inject(&inject(
        bdev::error::InjectIoType::Write,
        bdev::error::InjectStatus::Path,
    ))
    .unwrap();
    let r = i.write(0, 0, &pattern(4096, 1), 0);
    assert_eq!(r.sense_key(), Some((4, 0x44, 0)));
    let r = i.write_imm(0, 0, &pattern(4096, 1));
    assert_eq!(r.sense_key(), Some((4, 0x44, 0)));
    eb.inject(&bdev::error::InjectParams {
        clear: true,
        ..inject(bdev::error::InjectIoType::All, Default::default())
    })
    .unwrap();
    assert!(i.write(0, 0, &pattern(4096, 1), 0).good());
    assert_eq!(i.req_lim, 32);
}

#[test]
fn unmap_write_same_and_sync_cache() {
    let fx = Fx::new(4516, vec![(0, malloc("m4516", 4))], &[initiator_port(1)]);
    let mut i = fx.login(1);
    assert!(i.write(0, 0, &pattern(65536, 3), 0).good());
    // UNMAP blocks 8..24 (one descriptor).
    let mut params = vec![0u8; 24];
    params[0..2].copy_from_slice(&22u16.to_be_bytes());
    params[2..4].copy_from_slice(&16u16.to_be_bytes());
    params[8..16].copy_from_slice(&8u64.to_be_bytes());
    params[16..20].copy_from_slice(&16u32.to_be_bytes());
    i.mem_write(1 << 20, &params);
    let cdb = [0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0];
    let tag = i.send_cmd(
        0,
        &cdb,
        DataDesc::Direct(i.desc(1 << 20, 24)),
        DataDesc::None,
    );
    let r = i.wait(tag);
    assert!(r.good(), "{r:?}");
    let (r, back) = i.read(0, 0, 65536, 0);
    assert!(r.good());
    let want = pattern(65536, 3);
    assert!(
        back[..4096] == want[..4096]
            && back[4096..12288].iter().all(|&b| b == 0)
            && back[12288..] == want[12288..]
    );
    // WRITE SAME(16) of a non-zero block over 100 blocks, by immediate data.
    let block = pattern(512, 11);
    let mut cdb = [0u8; 16];
    cdb[0] = 0x93;
    cdb[2..10].copy_from_slice(&200u64.to_be_bytes());
    cdb[10..14].copy_from_slice(&100u32.to_be_bytes());
    let im = srp::ImmediateData {
        offset: 68,
        data: &block,
    };
    let tag = i.send_cmd(0, &cdb, DataDesc::Immediate(im), DataDesc::None);
    assert!(i.wait(tag).good());
    let (r, back) = i.read(0, 200, 51200, 0);
    assert!(r.good());
    assert!(back.chunks(512).all(|c| c == block.as_slice()));
    // WRITE SAME of zeroes (becomes write-zeroes).
    i.mem_write(0, &[0u8; 512]);
    let tag = i.send_cmd(0, &cdb, DataDesc::Direct(i.desc(0, 512)), DataDesc::None);
    assert!(i.wait(tag).good());
    let (_, back) = i.read(0, 200, 51200, 0);
    assert!(back.iter().all(|&b| b == 0));
    // SYNCHRONIZE CACHE(10).
    let tag = i.send_cmd(
        0,
        &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        DataDesc::None,
        DataDesc::None,
    );
    assert!(i.wait(tag).good());
}

#[test]
fn delete_logs_everyone_out_and_frees_the_port() {
    let mut fx = Fx::new(
        4517,
        vec![(0, malloc("m4517", 4))],
        &[initiator_port(1), initiator_port(2)],
    );
    let mut a = fx.login(1);
    let mut b = fx.login(2);
    assert!(a.write(0, 0, &pattern(512, 1), 0).good());
    fx.wait_channels(2);
    let s = fx.t().sessions_json();
    assert_eq!(s["target_port_id"], port_str(&target_port()));
    assert_eq!(s["sessions"].as_array().unwrap().len(), 2);
    fx.target
        .take()
        .unwrap()
        .delete(Duration::from_secs(10))
        .unwrap();
    assert!(a.wait_disconnected(Duration::from_secs(5)));
    assert!(b.wait_disconnected(Duration::from_secs(5)));
    // The port is free again.
    let p = params("again", 4517, &[(0, "m4517b")], &[initiator_port(1)]);
    let t = Target::create(&p, vec![(0, malloc("m4517b", 4))], fx._rs.handle()).unwrap();
    let mut c = login(addr(4517), login_req(initiator_port(1)), 4096).unwrap();
    assert!(c.write(0, 0, &pattern(512, 1), 0).good());
    t.delete(Duration::from_secs(10)).unwrap();
    assert!(c.wait_disconnected(Duration::from_secs(5)));
}
