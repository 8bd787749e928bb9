//! A tiny SRP initiator over the loopback RDMA provider, for tests: login
//! through rdma_cm private data, SRP_CMD with direct / indirect / immediate
//! descriptors over a registered, remotely accessible buffer, SRP_RSP
//! parsing and credit accounting.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bdev::Bdev;
use rdma::{
    AccessFlags, CmChannel, CmEventKind, CmId, Completion, Context, Cq, MrBuf, Pd, Provider,
    QpCaps, SendWr,
};
use srp::{
    BufFormats, DataDesc, DescList, DirectBuf, Encode, ImmediateData, IndirectBuf, LoginRej,
    LoginReq, LoginRsp, Lun, MultiChannelAction, PortId, SrpCmd, SrpRsp, TaskAttr,
};

pub const TARGET_ID_EXT: u64 = 0x0002_c903_00aa_bb01;
pub const TARGET_IOC_GUID: u64 = 0x0002_c903_00aa_bb02;

pub fn target_port() -> PortId {
    PortId::from_parts(TARGET_ID_EXT, TARGET_IOC_GUID)
}

pub fn initiator_port(n: u64) -> PortId {
    PortId::from_parts(0xfe80_0000_0000_0000, 0x0002_c903_0000_0000 + n)
}

pub fn port_str(p: &PortId) -> String {
    srpt::config::format_port_id(p)
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub fn reactors(n: usize) -> reactor::ReactorSet {
    let cores: Vec<usize> = (0..n).collect();
    reactor::ReactorSet::start(
        &cores,
        reactor::ReactorOptions {
            pin: false,
            idle_sleep_us: 50,
            drain_timeout: Duration::from_secs(5),
            ..Default::default()
        },
    )
    .expect("reactors")
}

pub fn malloc(name: &str, mib: u64) -> Arc<dyn Bdev> {
    Arc::new(bdev::malloc::create(name, mib * 2048, 512).expect("malloc bdev"))
}

/// Target parameters on the loopback provider.
pub fn params(
    name: &str,
    port: u16,
    luns: &[(u16, &str)],
    acl: &[PortId],
) -> srpt::SrptTargetParams {
    serde_json::from_value(serde_json::json!({
        "name": name,
        "listen": format!("127.0.0.1:{port}"),
        "id_ext": format!("0x{TARGET_ID_EXT:016x}"),
        "ioc_guid": format!("{TARGET_IOC_GUID:x}"),
        "luns": luns.iter().map(|(l, b)| serde_json::json!({"lun": l, "bdev": b})).collect::<Vec<_>>(),
        "acl": acl.iter().map(port_str).collect::<Vec<_>>(),
        "provider": "loopback",
        "queue_depth": 32,
    }))
    .expect("params")
}

pub fn addr(port: u16) -> SocketAddr {
    format!("127.0.0.1:{port}").parse().unwrap()
}

/// A login request as the Linux initiator sends it.
pub fn login_req(initiator: PortId) -> LoginReq {
    LoginReq {
        tag: 0,
        req_it_iu_len: 8260,
        req_buf_fmt: BufFormats::BOTH,
        multichannel: MultiChannelAction::Single,
        immediate_data_requested: true,
        imm_data_offset: 68,
        initiator_port_id: initiator,
        target_port_id: target_port(),
    }
}

/// A decoded SRP_RSP, owned.
#[derive(Debug, Clone)]
pub struct Rsp {
    pub tag: u64,
    pub delta: i32,
    pub status: u8,
    pub flags: u8,
    pub di_res: u32,
    pub do_res: u32,
    pub sense: Vec<u8>,
    pub resp_data: Vec<u8>,
}

impl Rsp {
    pub fn good(&self) -> bool {
        self.status == 0
    }
    /// (sense key, asc, ascq) of fixed-format sense.
    pub fn sense_key(&self) -> Option<(u8, u8, u8)> {
        (self.sense.len() >= 14).then(|| (self.sense[2] & 0xf, self.sense[12], self.sense[13]))
    }
    pub fn tmf_code(&self) -> Option<u8> {
        self.resp_data.get(3).copied()
    }
}

pub enum Login {
    Accepted(Box<Initiator>),
    Rejected(Option<LoginRej>, i32),
    Failed(String),
}

impl Login {
    pub fn unwrap(self) -> Initiator {
        match self {
            Login::Accepted(i) => *i,
            Login::Rejected(r, reason) => panic!("login rejected: {r:?} (cm reason {reason})"),
            Login::Failed(e) => panic!("login failed: {e}"),
        }
    }
    pub fn rejected(self) -> LoginRej {
        match self {
            Login::Rejected(Some(r), _) => r,
            Login::Rejected(None, reason) => {
                panic!("rejected without LOGIN_REJ (cm reason {reason})")
            }
            Login::Accepted(_) => panic!("login accepted, expected a reject"),
            Login::Failed(e) => panic!("login failed: {e}"),
        }
    }
}

const RECV_SLOTS: usize = 256;
const RECV_SLOT: usize = 256;
const SEND_SLOTS: usize = 256;

pub struct Initiator {
    pub id: CmId,
    chan: CmChannel,
    cq: Cq,
    recv: MrBuf,
    send: MrBuf,
    pub mem: MrBuf,
    /// A second region, only REMOTE_READ (for descriptor tables).
    pub tables: MrBuf,
    _pd: Pd,
    _ctx: Context,
    pub login_rsp: LoginRsp,
    pub req_lim: i64,
    pub iu_len: usize,
    next_send: usize,
    sends_outstanding: usize,
    next_tag: u64,
    pub responses: HashMap<u64, Rsp>,
    pub other_ius: Vec<Vec<u8>>,
    pub disconnected: bool,
    pub send_errors: Vec<rdma::WcStatus>,
}

fn wait_event(chan: &mut CmChannel, timeout: Duration) -> Option<rdma::CmEvent> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(ev)) = chan.poll_event() {
            return Some(ev);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

pub fn login(addr: SocketAddr, req: LoginReq, mem_bytes: usize) -> Login {
    let mut chan = CmChannel::new(Provider::Loopback).unwrap();
    let mut id = chan.create_id().unwrap();
    id.resolve_addr(None, addr, Duration::from_secs(1)).unwrap();
    match wait_event(&mut chan, Duration::from_secs(5)).map(|e| e.kind) {
        Some(CmEventKind::AddrResolved) => {}
        other => return Login::Failed(format!("resolve_addr: {other:?}")),
    }
    id.resolve_route(Duration::from_secs(1)).unwrap();
    match wait_event(&mut chan, Duration::from_secs(5)).map(|e| e.kind) {
        Some(CmEventKind::RouteResolved) => {}
        other => return Login::Failed(format!("resolve_route: {other:?}")),
    }
    let ctx = Context::open(Provider::Loopback, &id.device_name().unwrap()).unwrap();
    let pd = Pd::new(&ctx).unwrap();
    let cq = Cq::new(&ctx, 4096).unwrap();
    id.create_qp(
        &pd,
        &cq,
        &cq,
        QpCaps {
            max_send_wr: 1024,
            max_recv_wr: RECV_SLOTS as u32,
            max_send_sge: 1,
            max_recv_sge: 1,
            max_inline_data: 0,
        },
    )
    .unwrap();
    let recv = MrBuf::new(&pd, RECV_SLOTS * RECV_SLOT).unwrap();
    let send = MrBuf::new(&pd, SEND_SLOTS * req.req_it_iu_len as usize).unwrap();
    // SAFETY: test memory; the tests only touch bytes no command has in flight.
    let mem = unsafe {
        MrBuf::with_access(
            &pd,
            mem_bytes,
            AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE | AccessFlags::REMOTE_READ,
        )
    }
    .unwrap();
    // SAFETY: as above.
    let tables = unsafe {
        MrBuf::with_access(
            &pd,
            1 << 20,
            AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_READ,
        )
    }
    .unwrap();
    for s in 0..RECV_SLOTS {
        let sge = recv.sge(s * RECV_SLOT, RECV_SLOT as u32).unwrap();
        // SAFETY: the slot stays registered for the Initiator's life.
        unsafe { id.post_recv(s as u64, &[sge]) }.unwrap();
    }
    id.connect(&req.to_rdma_bytes()).unwrap();
    let Some(ev) = wait_event(&mut chan, Duration::from_secs(5)) else {
        return Login::Failed("no answer to connect".into());
    };
    match ev.kind {
        CmEventKind::Established { private_data } => {
            let rsp = match LoginRsp::decode(private_data.as_bytes()) {
                Ok(r) => r,
                Err(e) => return Login::Failed(format!("bad LOGIN_RSP: {e}")),
            };
            Login::Accepted(Box::new(Initiator {
                id,
                chan,
                cq,
                recv,
                send,
                mem,
                tables,
                _pd: pd,
                _ctx: ctx,
                req_lim: i64::from(rsp.req_lim_delta),
                iu_len: rsp.max_it_iu_len as usize,
                login_rsp: rsp,
                next_send: 0,
                sends_outstanding: 0,
                next_tag: 1,
                responses: HashMap::new(),
                other_ius: Vec::new(),
                disconnected: false,
                send_errors: Vec::new(),
            }))
        }
        CmEventKind::Rejected {
            reason,
            private_data,
        } => Login::Rejected(LoginRej::decode(private_data.as_bytes()).ok(), reason),
        other => Login::Failed(format!("connect: {other:?}")),
    }
}

pub fn cdb_rw16(write: bool, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = if write { 0x8a } else { 0x88 };
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for b in v.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    v
}

impl Initiator {
    pub fn desc(&self, off: usize, len: u32) -> DirectBuf {
        DirectBuf {
            va: self.mem.addr() + off as u64,
            key: self.mem.rkey(),
            len,
        }
    }

    pub fn mem_write(&mut self, off: usize, data: &[u8]) {
        assert!(off + data.len() <= self.mem.len());
        // SAFETY: in range; no command has these bytes in flight (test discipline).
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                (self.mem.addr() as usize + off) as *mut u8,
                data.len(),
            )
        }
    }

    pub fn mem_read(&self, off: usize, len: usize) -> Vec<u8> {
        assert!(off + len <= self.mem.len());
        let mut v = vec![0u8; len];
        // SAFETY: as above.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (self.mem.addr() as usize + off) as *const u8,
                v.as_mut_ptr(),
                len,
            )
        }
        v
    }

    /// Writes a descriptor table into the `tables` region at `off`; returns
    /// its descriptor.
    pub fn put_table(&mut self, off: usize, descs: &[DirectBuf]) -> DirectBuf {
        for (k, d) in descs.iter().enumerate() {
            let mut b = [0u8; 16];
            d.encode_at(&mut b, 0).unwrap();
            // SAFETY: in range of `tables`, not in flight.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    b.as_ptr(),
                    (self.tables.addr() as usize + off + k * 16) as *mut u8,
                    16,
                )
            }
        }
        DirectBuf {
            va: self.tables.addr() + off as u64,
            key: self.tables.rkey(),
            len: (descs.len() * 16) as u32,
        }
    }

    pub fn tag(&mut self) -> u64 {
        self.next_tag += 1;
        self.next_tag
    }

    /// Sends raw IU bytes (consumes a credit for SRP_CMD / SRP_TSK_MGMT).
    pub fn send_raw(&mut self, iu: &[u8]) {
        while self.sends_outstanding >= SEND_SLOTS - 1 {
            self.poll(Duration::from_millis(10));
        }
        if matches!(iu.first(), Some(0x01) | Some(0x02)) {
            self.req_lim -= 1;
        }
        let slot = self.next_send % SEND_SLOTS;
        self.next_send += 1;
        let off = slot * self.iu_len;
        assert!(iu.len() <= self.iu_len);
        // SAFETY: the slot's previous SEND completed (bounded outstanding).
        unsafe {
            std::ptr::copy_nonoverlapping(
                iu.as_ptr(),
                (self.send.addr() as usize + off) as *mut u8,
                iu.len(),
            )
        };
        let sge = self.send.sge(off, iu.len() as u32).unwrap();
        // SAFETY: the send buffer lives as long as the QP.
        unsafe {
            self.id
                .post_send(&SendWr::send(1 << 40 | slot as u64, &[sge]))
        }
        .unwrap();
        self.sends_outstanding += 1;
    }

    pub fn send_cmd(
        &mut self,
        lun: u16,
        cdb: &[u8],
        data_out: DataDesc<'_>,
        data_in: DataDesc<'_>,
    ) -> u64 {
        let tag = self.tag();
        let cmd = SrpCmd {
            sol_not: 0,
            tag,
            lun: Lun::from_single_level(lun).unwrap(),
            task_attr: TaskAttr::Simple,
            cdb,
            data_out,
            data_in,
        };
        let mut b = vec![0u8; self.iu_len];
        let n = cmd.encode(&mut b).unwrap();
        self.send_raw(&b[..n]);
        tag
    }

    /// Polls completions and CM events for up to `t`; returns whether
    /// anything happened.
    pub fn poll(&mut self, t: Duration) -> bool {
        let deadline = Instant::now() + t;
        let mut any = false;
        loop {
            let mut wcs = [Completion::EMPTY; 32];
            let n = self.cq.poll(&mut wcs);
            for c in &wcs[..n] {
                any = true;
                if c.wr_id >> 40 == 1 {
                    self.sends_outstanding -= 1;
                    if !c.status.is_ok() {
                        self.send_errors.push(c.status);
                    }
                    continue;
                }
                let slot = c.wr_id as usize;
                if c.status.is_ok() {
                    let mut v = vec![0u8; c.byte_len as usize];
                    // SAFETY: the receive completed; the slot is not posted.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            (self.recv.addr() as usize + slot * RECV_SLOT) as *const u8,
                            v.as_mut_ptr(),
                            v.len(),
                        )
                    };
                    self.on_iu(v);
                    let sge = self.recv.sge(slot * RECV_SLOT, RECV_SLOT as u32).unwrap();
                    // SAFETY: as at login.
                    let _ = unsafe { self.id.post_recv(slot as u64, &[sge]) };
                }
            }
            while let Ok(Some(ev)) = self.chan.poll_event() {
                any = true;
                if matches!(ev.kind, CmEventKind::Disconnected) {
                    self.disconnected = true;
                    let _ = self.id.disconnect();
                }
            }
            if n == 0 {
                if Instant::now() >= deadline {
                    return any;
                }
                std::thread::sleep(Duration::from_micros(100));
            }
        }
    }

    fn on_iu(&mut self, v: Vec<u8>) {
        if v.first() == Some(&0xc1) {
            if let Ok(r) = SrpRsp::decode(&v) {
                self.req_lim += i64::from(r.req_lim_delta);
                let rsp = Rsp {
                    tag: r.tag,
                    delta: r.req_lim_delta,
                    status: r.status,
                    flags: r.flags.0,
                    di_res: r.data_in_res_cnt,
                    do_res: r.data_out_res_cnt,
                    sense: r.sense_data.to_vec(),
                    resp_data: r.response_data.to_vec(),
                };
                self.responses.insert(r.tag, rsp);
                return;
            }
        }
        self.other_ius.push(v);
    }

    pub fn try_wait(&mut self, tag: u64, t: Duration) -> Option<Rsp> {
        let deadline = Instant::now() + t;
        loop {
            if let Some(r) = self.responses.remove(&tag) {
                return Some(r);
            }
            if Instant::now() >= deadline || self.disconnected {
                return None;
            }
            self.poll(Duration::from_millis(1));
        }
    }

    pub fn wait(&mut self, tag: u64) -> Rsp {
        self.try_wait(tag, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("no response for tag {tag}"))
    }

    pub fn wait_disconnected(&mut self, t: Duration) -> bool {
        let deadline = Instant::now() + t;
        while !self.disconnected && Instant::now() < deadline {
            self.poll(Duration::from_millis(2));
        }
        self.disconnected
    }

    /// WRITE(16) from mem[off..] through one direct descriptor.
    pub fn write(&mut self, lun: u16, lba: u64, data: &[u8], off: usize) -> Rsp {
        self.mem_write(off, data);
        let d = self.desc(off, data.len() as u32);
        let tag = self.send_cmd(
            lun,
            &cdb_rw16(true, lba, (data.len() / 512) as u32),
            DataDesc::Direct(d),
            DataDesc::None,
        );
        self.wait(tag)
    }

    /// READ(16) into mem[off..] through one direct descriptor.
    pub fn read(&mut self, lun: u16, lba: u64, len: usize, off: usize) -> (Rsp, Vec<u8>) {
        let d = self.desc(off, len as u32);
        let tag = self.send_cmd(
            lun,
            &cdb_rw16(false, lba, (len / 512) as u32),
            DataDesc::None,
            DataDesc::Direct(d),
        );
        let r = self.wait(tag);
        let data = self.mem_read(off, len);
        (r, data)
    }

    /// WRITE(16) with immediate data.
    pub fn write_imm(&mut self, lun: u16, lba: u64, data: &[u8]) -> Rsp {
        let im = ImmediateData { offset: 68, data };
        let tag = self.send_cmd(
            lun,
            &cdb_rw16(true, lba, (data.len() / 512) as u32),
            DataDesc::Immediate(im),
            DataDesc::None,
        );
        self.wait(tag)
    }

    /// An indirect descriptor with the whole table inline.
    pub fn indirect_inline<'a>(descs: &'a [DirectBuf]) -> DataDesc<'a> {
        let total: u64 = descs.iter().map(|d| u64::from(d.len)).sum();
        DataDesc::Indirect(IndirectBuf {
            table_desc: DirectBuf {
                va: 0,
                key: 0,
                len: (descs.len() * 16) as u32,
            },
            total_len: total as u32,
            partial: DescList::from_slice(descs),
        })
    }

    /// An indirect descriptor whose table lives in initiator memory, with
    /// `inline` of its entries copied into the IU.
    pub fn indirect_remote<'a>(&mut self, descs: &'a [DirectBuf], inline: usize) -> DataDesc<'a> {
        let total: u64 = descs.iter().map(|d| u64::from(d.len)).sum();
        let table = self.put_table(0, descs);
        DataDesc::Indirect(IndirectBuf {
            table_desc: table,
            total_len: total as u32,
            partial: DescList::from_slice(&descs[..inline]),
        })
    }

    pub fn logout(&mut self) {
        let iu = srp::ILogout { tag: 0x10_6041 }.to_vec().unwrap();
        self.send_raw(&iu);
    }
}
