//! Harness for the initiator's loopback tests: strata's SRP target
//! (`srpt`) on one reactor set, the initiator on another, over the loopback
//! RDMA provider.
#![allow(dead_code, clippy::too_many_arguments)]

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bdev::testing::{check_pattern, fill_pattern, AlignedBuf};
use bdev::{Bdev, IoRequest, IoStatus, IoVec};
use initiator::{SrpAttachParams, SrpBdev};

pub const ID_EXT: u64 = 0x0002_c903_00aa_bb01;
pub const IOC_GUID: u64 = 0x0002_c903_00aa_bb02;

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A fresh port per test (tests run in parallel in one process).
pub fn port() -> u16 {
    // The loopback fabric is per process: only tests of this binary share it.
    static NEXT: AtomicU16 = AtomicU16::new(30000);
    NEXT.fetch_add(1, Ordering::Relaxed)
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
    Arc::new(bdev::malloc::create(name, mib * 256, 4096).expect("malloc bdev"))
}

/// Target parameters (loopback, everybody admitted unless `acl` says).
pub fn target_params(name: &str, port: u16, bdev: &str, acl: &[&str]) -> srpt::SrptTargetParams {
    serde_json::from_value(serde_json::json!({
        "name": name,
        "listen": format!("127.0.0.1:{port}"),
        "id_ext": format!("0x{ID_EXT:016x}"),
        "ioc_guid": format!("{IOC_GUID:x}"),
        "luns": [{"lun": 0, "bdev": bdev}],
        "acl": acl,
        "provider": "loopback",
        "queue_depth": 32,
    }))
    .expect("target params")
}

pub struct TargetSide {
    pub reactors: reactor::ReactorSet,
    pub target: Option<srpt::Target>,
    pub bdev: Arc<dyn Bdev>,
    pub port: u16,
}

impl TargetSide {
    pub fn new(port: u16, mib: u64) -> TargetSide {
        Self::with_bdev(port, malloc("tgt0", mib))
    }

    pub fn with_bdev(port: u16, bdev: Arc<dyn Bdev>) -> TargetSide {
        let reactors = reactors(1);
        let mut t = TargetSide {
            reactors,
            target: None,
            bdev,
            port,
        };
        t.start(&["*"]);
        t
    }

    pub fn start(&mut self, acl: &[&str]) {
        let name = self.bdev.info().name.clone();
        let p = target_params("t0", self.port, &name, acl);
        let t = srpt::Target::create(
            &p,
            vec![(0, Arc::clone(&self.bdev))],
            self.reactors.handle(),
        )
        .expect("target");
        self.target = Some(t);
    }

    pub fn stop(&mut self) {
        if let Some(t) = self.target.take() {
            t.delete(Duration::from_secs(5)).expect("target delete");
        }
    }
}

pub fn attach_params(name: &str, port: u16, extra: serde_json::Value) -> SrpAttachParams {
    let mut v = serde_json::json!({
        "name": name,
        "dest": format!("127.0.0.1:{port}"),
        "id_ext": format!("{ID_EXT:x}"),
        "ioc_guid": format!("{IOC_GUID:x}"),
        "provider": "loopback",
        "queue_size": 16,
    });
    for (k, x) in extra.as_object().expect("object") {
        v[k] = x.clone();
    }
    serde_json::from_value(v).expect("attach params")
}

/// One I/O for [`io`].
#[derive(Clone, Copy, Debug)]
pub enum Op {
    /// Write `blocks` of pattern `seed` at `lba` from `segs` iovecs.
    Write {
        lba: u64,
        blocks: usize,
        seed: u64,
        segs: usize,
        registered: bool,
    },
    /// Read them back and count mismatched blocks.
    Verify {
        lba: u64,
        blocks: usize,
        seed: u64,
        segs: usize,
        registered: bool,
    },
    /// Flush, unmap, write-zeroes or reset.
    NoData(bdev::IoType, u64, u64),
}

/// Runs one I/O on a channel opened on initiator reactor `r`, driven by a
/// poller there (as vhost or raid1 drive theirs: the reactor keeps running
/// its messages and timers); waits at most `limit`. Returns the status
/// (None: no completion in time) and the mismatched blocks of a verify.
pub fn io_for(
    ini: &reactor::ReactorSet,
    r: usize,
    b: &Arc<SrpBdev>,
    op: Op,
    limit: Duration,
) -> (Option<IoStatus>, usize) {
    let b: Arc<dyn Bdev> = Arc::clone(b) as Arc<dyn Bdev>;
    let (tx, rx) = std::sync::mpsc::channel();
    ini.handle()
        .send(r, move || {
            let mut ch = bdev::open_channel(&b).expect("open channel");
            let bs = b.info().block_size as usize;
            let (len, segs, registered) = match op {
                Op::Write {
                    blocks,
                    segs,
                    registered,
                    ..
                }
                | Op::Verify {
                    blocks,
                    segs,
                    registered,
                    ..
                } => (blocks * bs, segs, registered),
                Op::NoData(..) => (0, 1, true),
            };
            let mut buf = Buf::new(len.max(1), registered);
            if let Op::Write { lba, seed, .. } = op {
                fill_pattern(buf.as_mut_slice(), lba, bs, seed);
            }
            let iovs = if len > 0 {
                split(buf.as_mut_slice(), segs)
            } else {
                Vec::new()
            };
            let req = match op {
                Op::Write { lba, blocks, .. } => IoRequest::write(lba, blocks as u64, &iovs),
                Op::Verify { lba, blocks, .. } => IoRequest::read(lba, blocks as u64, &iovs),
                Op::NoData(t, lba, n) => IoRequest {
                    io_type: t,
                    offset_blocks: lba,
                    num_blocks: n,
                    iovs: &[],
                    fua: false,
                },
            };
            // SAFETY: `buf` moves into the poller and lives until the
            // completion has been reported.
            unsafe { ch.submit(&req, 1) }.expect("submit");
            let id = std::rc::Rc::new(std::cell::Cell::new(None));
            let id2 = std::rc::Rc::clone(&id);
            let mut done = false;
            let pid = reactor::register_poller("test_io", move || {
                if done {
                    return reactor::Poll::Idle;
                }
                let mut st = None;
                ch.poll(&mut |_, s| st = Some(s));
                let Some(st) = st else {
                    return reactor::Poll::Idle;
                };
                done = true;
                let bad = match op {
                    Op::Verify { lba, seed, .. } => buf
                        .as_mut_slice()
                        .chunks(bs)
                        .enumerate()
                        .filter(|(i, c)| !check_pattern(c, lba + *i as u64, bs, seed))
                        .count(),
                    _ => 0,
                };
                let _ = tx.send((st, bad));
                if let Some(i) = id2.get() {
                    reactor::unregister_poller(i);
                }
                reactor::Poll::Busy
            });
            id.set(Some(pid));
        })
        .expect("send");
    match rx.recv_timeout(limit) {
        Ok((st, bad)) => (Some(st), bad),
        Err(_) => (None, 0),
    }
}

/// [`io_for`] with a 30 s limit; a missing completion panics.
pub fn io(ini: &reactor::ReactorSet, r: usize, b: &Arc<SrpBdev>, op: Op) -> (IoStatus, usize) {
    let (st, bad) = io_for(ini, r, b, op, Duration::from_secs(30));
    (st.expect("I/O did not complete within 30 s"), bad)
}

pub fn write(
    ini: &reactor::ReactorSet,
    r: usize,
    b: &Arc<SrpBdev>,
    lba: u64,
    blocks: usize,
    seed: u64,
    segs: usize,
    registered: bool,
) -> IoStatus {
    io(
        ini,
        r,
        b,
        Op::Write {
            lba,
            blocks,
            seed,
            segs,
            registered,
        },
    )
    .0
}

pub fn verify(
    ini: &reactor::ReactorSet,
    r: usize,
    b: &Arc<SrpBdev>,
    lba: u64,
    blocks: usize,
    seed: u64,
    segs: usize,
    registered: bool,
) -> (IoStatus, usize) {
    io(
        ini,
        r,
        b,
        Op::Verify {
            lba,
            blocks,
            seed,
            segs,
            registered,
        },
    )
}

/// Registered (memory-mapped) or plain heap memory.
enum Buf {
    Registered(AlignedBuf),
    Plain(Vec<u8>),
}

impl Buf {
    fn new(len: usize, registered: bool) -> Buf {
        if registered {
            Buf::Registered(AlignedBuf::new(len))
        } else {
            Buf::Plain(vec![0u8; len])
        }
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        match self {
            Buf::Registered(b) => b.as_mut_slice(),
            Buf::Plain(v) => v,
        }
    }
}

/// Synchronous pattern check on the target's own bdev (on a target reactor).
pub fn target_verify(t: &TargetSide, lba: u64, blocks: usize, seed: u64) -> usize {
    let tb = Arc::clone(&t.bdev);
    t.reactors
        .handle()
        .call(0, move || {
            let mut ch = bdev::open_channel(&tb).unwrap();
            let bs = tb.info().block_size as usize;
            let mut buf = AlignedBuf::new(blocks * bs);
            let st = bdev::testing::read(&mut ch, lba, &mut buf);
            assert_eq!(st, IoStatus::Success);
            buf.as_slice()
                .chunks(bs)
                .enumerate()
                .filter(|(i, c)| !check_pattern(c, lba + *i as u64, bs, seed))
                .count()
        })
        .unwrap()
}

fn split(buf: &mut [u8], segs: usize) -> Vec<IoVec> {
    let n = buf.len();
    let per = (n / segs).max(1);
    let base = buf.as_mut_ptr();
    (0..segs)
        .map(|i| {
            let off = i * per;
            let len = if i == segs - 1 { n - off } else { per };
            IoVec {
                // SAFETY: within `buf`.
                base: unsafe { base.add(off) },
                len,
            }
        })
        .collect()
}

pub fn session(b: &SrpBdev) -> serde_json::Value {
    b.session_json()
}

pub fn stat(b: &SrpBdev, k: &str) -> u64 {
    b.session_json()[k].as_u64().unwrap_or(0)
}

pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}
