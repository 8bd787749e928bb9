//! End-to-end tests through an independent frontend: libblkio's
//! `virtio-blk-vhost-user` driver (the `blkio` crate) against a controller
//! serving a malloc bdev on real reactors.

use std::mem::MaybeUninit;
use std::sync::Arc;
use std::time::Duration;

use bdev::Bdev;
use blkio::{Blkio, Blkioq, Completion, MemoryRegion, ReqFlags};
use reactor::{ReactorOptions, ReactorSet};
use vhost::{Controller, VhostBlkParams, VhostError};

const BS: u64 = 512;
const BLOCKS: u64 = 16384; // 8 MiB

struct Env {
    ctrl: Option<Controller>,
    set: Option<ReactorSet>,
    bdev: Arc<dyn Bdev>,
    _dir: tempfile::TempDir,
    sock: String,
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(c) = self.ctrl.take() {
            c.delete();
        }
        if let Some(s) = self.set.take() {
            s.shutdown();
        }
    }
}

fn reactors() -> ReactorSet {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    ReactorSet::start(
        &[0, 1],
        ReactorOptions {
            pin: false,
            idle_sleep_us: 50,
            ..Default::default()
        },
    )
    .unwrap()
}

fn env(num_queues: u16, readonly: bool) -> Env {
    let set = reactors();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vhost.sock");
    let bdev: Arc<dyn Bdev> = Arc::new(bdev::malloc::create("Malloc0", BLOCKS, BS as u32).unwrap());
    let params = VhostBlkParams {
        name: "vhost0".into(),
        socket: sock.clone(),
        bdev: "Malloc0".into(),
        num_queues,
        readonly,
        cores: None,
    };
    let ctrl = Controller::create(params, Arc::clone(&bdev), set.handle()).unwrap();
    Env {
        ctrl: Some(ctrl),
        set: Some(set),
        bdev,
        _dir: dir,
        sock: sock.to_str().unwrap().to_string(),
    }
}

struct Client {
    b: Blkio,
    queues: Vec<Blkioq>,
    mem: MemoryRegion,
}

impl Client {
    fn buf(&self) -> &'static mut [u8] {
        region_mut(self.mem.addr, self.mem.len)
    }
    fn ptr(&self, off: usize) -> *mut u8 {
        (self.mem.addr + off) as *mut u8
    }
}

fn connect(
    sock: &str,
    queues: i32,
    poll_queues: i32,
    readonly: bool,
) -> Result<Client, blkio::Error> {
    let mut b = Blkio::new("virtio-blk-vhost-user")?;
    b.set_str("path", sock)?;
    if readonly {
        b.set_bool("read-only", true)?;
    }
    b.connect()?;
    b.set_i32("num-queues", queues)?;
    b.set_i32("num-poll-queues", poll_queues)?;
    let out = b.start()?;
    let mut qs = out.queues;
    qs.extend(out.poll_queues);
    // 1 MiB + 4 KiB: a region whose size is not a multiple of 2 MiB.
    let mem = b.alloc_mem_region(1 << 20 | 4096)?;
    b.map_mem_region(&mem)?;
    Ok(Client { b, queues: qs, mem })
}

/// Waits for exactly `n` completions; returns (user_data, ret).
fn wait(q: &mut Blkioq, n: usize) -> Vec<(usize, i32)> {
    let mut out = Vec::new();
    let mut comps: Vec<MaybeUninit<Completion>> = (0..n).map(|_| MaybeUninit::uninit()).collect();
    while out.len() < n {
        let mut t = Duration::from_secs(20);
        let want = n - out.len();
        let got = q
            .do_io(&mut comps[..want], want, Some(&mut t), None)
            .expect("do_io");
        assert!(got > 0, "no completion within 20 s");
        for c in &comps[..got] {
            // SAFETY: do_io initialised the first `got` completions.
            let c = unsafe { c.assume_init_read() };
            out.push((c.user_data, c.ret));
        }
    }
    out
}

fn run1(q: &mut Blkioq) -> i32 {
    let r = wait(q, 1);
    r[0].1
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn config_is_what_the_bdev_says() {
    let e = env(2, false);
    let c = connect(&e.sock, 1, 0, false).unwrap();
    assert_eq!(c.b.get_u64("capacity").unwrap(), BLOCKS * BS);
    assert_eq!(c.b.get_i32("request-alignment").unwrap(), BS as i32);
    assert!(c.b.get_i32("max-segments").unwrap() >= 64);
    assert!(c.b.get_u64("max-discard-len").unwrap() > 0);
    assert!(c.b.get_u64("max-write-zeroes-len").unwrap() > 0);
    assert_eq!(c.b.get_i32("max-queues").unwrap(), 2);
    let info = e.ctrl.as_ref().unwrap().info();
    assert_eq!(info["connections"], 1);
    assert_eq!(info["serial"], "Malloc0");
    assert_eq!(info["num_queues"], 2);
}

#[test]
fn random_writes_then_verified_reads() {
    let e = env(1, false);
    let mut c = connect(&e.sock, 1, 0, false).unwrap();
    let mut shadow = vec![0u8; (BLOCKS * BS) as usize];
    let mut rng = Rng(0x9e3779b97f4a7c15);
    // 400 writes of 1..32 sectors, 16 in flight at a time, each from its
    // own slice of the buffer region.
    let slot = 32 * BS as usize;
    for round in 0..25 {
        let mut q = c.queues.remove(0);
        for k in 0..16 {
            let len = (1 + rng.next() % 32) * BS;
            let off = (rng.next() % (BLOCKS - 32)) * BS;
            let b = &mut c.buf()[k * slot..k * slot + len as usize];
            for (i, x) in b.iter_mut().enumerate() {
                *x = (rng.next() as u8) ^ (i as u8) ^ round;
            }
            shadow[off as usize..(off + len) as usize].copy_from_slice(b);
            q.write(off, c.ptr(k * slot), len as usize, k, ReqFlags::empty());
        }
        for (_, ret) in wait(&mut q, 16) {
            assert_eq!(ret, 0);
        }
        c.queues.insert(0, q);
    }
    // Read the whole disk back, 16 x 32 KiB at a time.
    let chunk = 32 * 1024u64;
    let mut q = c.queues.remove(0);
    let mut off = 0;
    while off < BLOCKS * BS {
        let n = 16.min(((BLOCKS * BS - off) / chunk) as usize);
        for k in 0..n {
            q.read(
                off + k as u64 * chunk,
                c.ptr(k * chunk as usize),
                chunk as usize,
                k,
                ReqFlags::empty(),
            );
        }
        for (_, ret) in wait(&mut q, n) {
            assert_eq!(ret, 0);
        }
        let got = &c.buf()[..n * chunk as usize];
        assert!(
            got == &shadow[off as usize..off as usize + n * chunk as usize],
            "data at {off} differs"
        );
        off += n as u64 * chunk;
    }
}

#[test]
fn vectored_io() {
    let e = env(1, false);
    let c = connect(&e.sock, 1, 0, false).unwrap();
    let mut q = c.queues.into_iter().next().unwrap();
    let buf = unsafe_slice(&c.mem);
    for (i, x) in buf[..8192].iter_mut().enumerate() {
        *x = (i * 31 % 253) as u8;
    }
    let iov = |off: usize, len: usize| libc::iovec {
        iov_base: (c.mem.addr + off) as *mut libc::c_void,
        iov_len: len,
    };
    // Write 8 KiB from three pieces (512 + 4096 + 3584), read it back
    // through four pieces into another part of the region.
    let w = [iov(0, 512), iov(512, 4096), iov(4608, 3584)];
    q.writev(4096, w.as_ptr(), 3, 1, ReqFlags::empty());
    assert_eq!(run1(&mut q), 0);
    let r = [
        iov(0x10000, 1024),
        iov(0x10400, 1024),
        iov(0x10800, 2048),
        iov(0x11000, 4096),
    ];
    q.readv(4096, r.as_ptr(), 4, 2, ReqFlags::empty());
    assert_eq!(run1(&mut q), 0);
    assert!(buf[0x10000..0x12000] == buf[..8192]);
}

fn unsafe_slice(m: &MemoryRegion) -> &'static mut [u8] {
    region_mut(m.addr, m.len)
}

/// The bytes of a libblkio memory region. Test-only shortcut: the region
/// lives as long as its client, which every test keeps until it returns,
/// and each test touches a given range from one thread at a time.
fn region_mut(addr: usize, len: usize) -> &'static mut [u8] {
    // SAFETY: see above; `addr..addr + len` is a live mapping made by
    // `alloc_mem_region`.
    unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, len) }
}

#[test]
fn flush_discard_and_write_zeroes() {
    let e = env(1, false);
    let c = connect(&e.sock, 1, 0, false).unwrap();
    let mut q = c.queues.into_iter().next().unwrap();
    let buf = unsafe_slice(&c.mem);
    buf[..65536].fill(0xa5);
    q.write(0, buf.as_ptr(), 65536, 0, ReqFlags::empty());
    assert_eq!(run1(&mut q), 0);
    q.flush(1, ReqFlags::empty());
    assert_eq!(run1(&mut q), 0);
    q.discard(4096, 8192, 2, ReqFlags::empty());
    assert_eq!(run1(&mut q), 0);
    q.write_zeroes(32768, 4096, 3, ReqFlags::empty());
    assert_eq!(run1(&mut q), 0);
    q.read(0, buf.as_mut_ptr(), 65536, 4, ReqFlags::empty());
    assert_eq!(run1(&mut q), 0);
    for (i, &b) in buf[..65536].iter().enumerate() {
        let zero = (4096..12288).contains(&i) || (32768..36864).contains(&i);
        assert_eq!(b, if zero { 0 } else { 0xa5 }, "byte {i}");
    }
    // Out of range: the device refuses, the client sees an error.
    q.read(BLOCKS * BS, buf.as_mut_ptr(), 512, 5, ReqFlags::empty());
    assert_ne!(run1(&mut q), 0);
    let s = e.bdev.stats();
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(s.unmaps.load(Relaxed), 1);
    assert_eq!(s.write_zeroes.load(Relaxed), 1);
    assert!(s.flushes.load(Relaxed) >= 1);
}

#[test]
fn several_queues_at_once() {
    let e = env(4, false);
    let c = connect(&e.sock, 2, 2, false).unwrap();
    assert_eq!(c.queues.len(), 4);
    let addr = c.mem.addr;
    let span = BLOCKS * BS / 4;
    std::thread::scope(|s| {
        for (qi, mut q) in c.queues.into_iter().enumerate() {
            s.spawn(move || {
                // Each queue owns a quarter of the disk and 256 KiB of the
                // buffer region.
                let base = (addr + qi * 256 * 1024) as *mut u8;
                // SAFETY: the four threads use disjoint 256 KiB windows
                // of the region.
                let buf = unsafe { std::slice::from_raw_parts_mut(base, 256 * 1024) };
                let disk = qi as u64 * span;
                for round in 0..20u64 {
                    for k in 0..8usize {
                        let b = &mut buf[k * 16384..(k + 1) * 16384];
                        b.fill((qi as u8) << 5 | (round as u8) << 1 | (k as u8 & 1));
                        let off = disk + (round * 8 + k as u64) * 16384 % span;
                        q.write(off, b.as_ptr(), 16384, k, ReqFlags::empty());
                    }
                    for (_, ret) in wait(&mut q, 8) {
                        assert_eq!(ret, 0);
                    }
                    for k in 0..8usize {
                        let off = disk + (round * 8 + k as u64) * 16384 % span;
                        q.read(
                            off,
                            buf[128 * 1024 + k * 16384..].as_mut_ptr(),
                            16384,
                            k,
                            ReqFlags::empty(),
                        );
                    }
                    for (_, ret) in wait(&mut q, 8) {
                        assert_eq!(ret, 0);
                    }
                    assert!(
                        buf[..128 * 1024] == buf[128 * 1024..],
                        "queue {qi} round {round}"
                    );
                }
            });
        }
    });
    // Counters are published just after the used ring: allow a moment.
    let mut info = e.ctrl.as_ref().unwrap().info();
    for _ in 0..100 {
        if info["queues"]
            .as_array()
            .unwrap()
            .iter()
            .all(|q| q["requests"].as_u64().unwrap() >= 320)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        info = e.ctrl.as_ref().unwrap().info();
    }
    let queues = info["queues"].as_array().unwrap();
    assert_eq!(queues.len(), 4);
    for q in queues {
        assert!(q["requests"].as_u64().unwrap() >= 320, "{info}");
        assert_eq!(q["errors"], 0);
    }
    // The disk's queues are spread over both reactors.
    let cores: std::collections::HashSet<u64> =
        queues.iter().map(|q| q["core"].as_u64().unwrap()).collect();
    assert_eq!(cores.len(), 2);
}

#[test]
fn read_only_device() {
    let e = env(1, true);
    // libblkio sees VIRTIO_BLK_F_RO and refuses a read-write start.
    let err = connect(&e.sock, 1, 0, false)
        .err()
        .expect("read-write start must fail");
    assert_eq!(err.errno(), rustix_erofs(), "{}", err.message());
    let c = connect(&e.sock, 1, 0, true).unwrap();
    let mut q = c.queues.into_iter().next().unwrap();
    let buf = unsafe_slice(&c.mem);
    q.read(0, buf.as_mut_ptr(), 4096, 0, ReqFlags::empty());
    assert_eq!(run1(&mut q), 0);
    // (The device-side refusal of writes is covered through a raw
    // frontend in tests/frontend.rs: libblkio never sends them.)
}

fn rustix_erofs() -> blkio::Errno {
    blkio::Errno::ROFS
}

#[test]
fn reconnects_and_delete() {
    let mut e = env(1, false);
    for round in 0..3u8 {
        let c = connect(&e.sock, 1, 0, false).unwrap();
        let mut q = c.queues.into_iter().next().unwrap();
        let buf = unsafe_slice(&c.mem);
        if round > 0 {
            q.read(0, buf.as_mut_ptr(), 512, 0, ReqFlags::empty());
            assert_eq!(run1(&mut q), 0);
            assert!(
                buf[..512].iter().all(|&b| b == round - 1),
                "data from the previous connection"
            );
        }
        buf[..512].fill(round);
        q.write(0, buf.as_ptr(), 512, 0, ReqFlags::empty());
        assert_eq!(run1(&mut q), 0);
    }
    let ctrl = e.ctrl.take().unwrap();
    assert_eq!(ctrl.info()["connections"], 3);
    // Delete with a client connected: it returns, the socket is gone.
    let c = connect(&e.sock, 1, 0, false).unwrap();
    ctrl.delete();
    assert!(!std::path::Path::new(&e.sock).exists());
    drop(c);
}

#[test]
fn create_errors() {
    let set = reactors();
    let dir = tempfile::tempdir().unwrap();
    let bdev: Arc<dyn Bdev> = Arc::new(bdev::malloc::create("M", 64, 512).unwrap());
    let p = |name: &str, sock: &str| VhostBlkParams {
        name: name.into(),
        socket: dir.path().join(sock),
        bdev: "M".into(),
        num_queues: 1,
        readonly: false,
        cores: None,
    };
    let create = |p: VhostBlkParams| Controller::create(p, Arc::clone(&bdev), set.handle());
    assert!(matches!(
        create(VhostBlkParams {
            num_queues: 0,
            ..p("a", "a.sock")
        }),
        Err(VhostError::NumQueues(0))
    ));
    assert!(matches!(
        create(VhostBlkParams {
            num_queues: 65,
            ..p("a", "a.sock")
        }),
        Err(VhostError::NumQueues(65))
    ));
    let e = create(VhostBlkParams {
        cores: Some(vec![7]),
        ..p("a", "a.sock")
    })
    .err()
    .unwrap();
    assert_eq!(e.to_string(), "core 7 has no reactor (reactor cores: 0,1)");
    assert!(matches!(
        create(p("", "a.sock")),
        Err(VhostError::InvalidParam { field: "name", .. })
    ));
    std::fs::write(dir.path().join("file"), b"x").unwrap();
    assert!(matches!(
        create(p("a", "file")),
        Err(VhostError::SocketExists(_))
    ));
    let e = create(p("a", "missing-dir/a.sock")).err().unwrap();
    assert!(matches!(e, VhostError::Bind { .. }), "{e}");
    // A live socket is refused; a stale one (its server died) is reclaimed.
    let live = create(VhostBlkParams {
        cores: Some(vec![1]),
        ..p("a", "a.sock")
    })
    .unwrap();
    assert_eq!(live.info()["cores"], serde_json::json!([1]));
    assert!(matches!(
        create(p("b", "a.sock")),
        Err(VhostError::SocketInUse(_))
    ));
    drop(live);
    let stale = std::os::unix::net::UnixListener::bind(dir.path().join("stale.sock")).unwrap();
    drop(stale); // the file stays, nobody listens
    let c = create(p("c", "stale.sock")).unwrap();
    c.delete();
    // Parameters as JSON (the RPC): defaults and unknown fields.
    let v: VhostBlkParams =
        serde_json::from_str(r#"{"name":"x","socket":"/s","bdev":"b"}"#).unwrap();
    assert_eq!((v.num_queues, v.readonly, v.cores), (1, false, None));
    assert!(serde_json::from_str::<VhostBlkParams>(
        r#"{"name":"x","socket":"/s","bdev":"b","bogus":1}"#
    )
    .is_err());
    assert!(set.shutdown());
}

/// Smoke benchmark (not a claim): 4 KiB random reads on a null bdev, one
/// pure-polling reactor, a polling libblkio queue. Run with
/// `cargo test --release -p vhost --test blkio perf_smoke -- --ignored --nocapture`.
#[test]
#[ignore]
fn perf_smoke() {
    let set = ReactorSet::start(
        &[0],
        ReactorOptions {
            pin: true,
            idle_sleep_us: 0,
            ..Default::default()
        },
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("perf.sock");
    let bdev: Arc<dyn Bdev> = Arc::new(bdev::null::create("Null0", 1 << 21, 512).unwrap());
    let params = VhostBlkParams {
        name: "perf".into(),
        socket: sock.clone(),
        bdev: "Null0".into(),
        num_queues: 1,
        readonly: false,
        cores: None,
    };
    let ctrl = Controller::create(params, bdev, set.handle()).unwrap();
    let c = connect(sock.to_str().unwrap(), 0, 1, false).unwrap();
    let mut q = c.queues.into_iter().next().unwrap();
    let mut rng = Rng(42);
    let mut comps: Vec<MaybeUninit<Completion>> = (0..64).map(|_| MaybeUninit::uninit()).collect();
    for depth in [1usize, 32] {
        let mut lat = Vec::new();
        let mut ios = 0u64;
        let start = std::time::Instant::now();
        let mut issued: Vec<std::time::Instant> = vec![start; depth];
        for (k, t) in issued.iter_mut().enumerate() {
            *t = std::time::Instant::now();
            q.read(
                (rng.next() % (1 << 18)) * 4096,
                (c.mem.addr + k * 4096) as *mut u8,
                4096,
                k,
                ReqFlags::empty(),
            );
        }
        while start.elapsed() < Duration::from_secs(2) {
            let n = q.do_io(&mut comps, 1, None, None).unwrap();
            for c2 in &comps[..n] {
                // SAFETY: do_io initialised the first `n` completions.
                let c2 = unsafe { c2.assume_init_read() };
                let k = c2.user_data;
                lat.push(issued[k].elapsed());
                ios += 1;
                issued[k] = std::time::Instant::now();
                q.read(
                    (rng.next() % (1 << 18)) * 4096,
                    (c.mem.addr + k * 4096) as *mut u8,
                    4096,
                    k,
                    ReqFlags::empty(),
                );
            }
        }
        let secs = start.elapsed().as_secs_f64();
        let _ = q.do_io(&mut comps[..depth], depth, None, None);
        lat.sort();
        println!(
            "depth {depth}: {:.0} IOPS, p50 {:.2} us, p99 {:.2} us",
            ios as f64 / secs,
            lat[lat.len() / 2].as_secs_f64() * 1e6,
            lat[lat.len() * 99 / 100].as_secs_f64() * 1e6
        );
    }
    drop(q);
    ctrl.delete();
    set.shutdown();
}
