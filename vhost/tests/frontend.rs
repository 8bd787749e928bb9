//! End-to-end tests through the `vhost` crate's own frontend over memfd
//! memory, for what libblkio cannot show: a write reaching a read-only
//! device, the QEMU-style `SET_MEM_TABLE` path with two regions and a
//! descriptor spanning them, `GET_VRING_BASE`, in-flight requests left
//! by a previous backend being resubmitted (INFLIGHT_SHMFD), and the guest
//! regions' presence in the process memory map (`bdev::memmap`).

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bdev::Bdev;
use reactor::{ReactorOptions, ReactorSet};
use vhost::{Controller, VhostBlkParams};
use vhost_user::vhost_user::message::{VhostUserInflight, VhostUserProtocolFeatures};
use vhost_user::vhost_user::{Frontend, VhostUserFrontend};
use vhost_user::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const MEM: usize = 2 << 20;
const QSIZE: u16 = 16;
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
const HDR: u64 = 0x10000;
const STATUS: u64 = 0x10100;
/// 4 KiB starting 2 KiB before the boundary of the two regions.
const DATA: u64 = (1 << 20) - 2048;
const DATA2: u64 = 0x18_0000;

/// Guest memory: one memfd, mapped here once, offered as two regions.
struct Guest {
    ptr: *mut u8,
    file: File,
}

impl Guest {
    fn new() -> Guest {
        // SAFETY: a NUL-terminated name and valid flags.
        let fd = unsafe { libc::memfd_create(c"guest".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: a fresh fd nobody else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(MEM as u64).unwrap();
        // SAFETY: a new shared mapping of the whole file, unmapped in Drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MEM,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        Guest {
            ptr: ptr.cast(),
            file,
        }
    }
    fn put(&self, gpa: u64, b: &[u8]) {
        assert!(gpa as usize + b.len() <= MEM);
        // SAFETY: in bounds (checked); raw copies, since the backend
        // accesses this memory concurrently (as a device would).
        unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), self.ptr.add(gpa as usize), b.len()) }
    }
    fn get(&self, gpa: u64, len: usize) -> Vec<u8> {
        assert!(gpa as usize + len <= MEM);
        let mut v = vec![0u8; len];
        // SAFETY: as in `put`.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(gpa as usize), v.as_mut_ptr(), len) };
        v
    }
    fn u16_at(&self, gpa: u64) -> u16 {
        assert!(gpa as usize + 2 <= MEM && gpa % 2 == 0);
        // The ring index is written by another thread: read it volatile.
        // SAFETY: in bounds of the mapping (checked), 2-byte aligned.
        unsafe { std::ptr::read_volatile(self.ptr.add(gpa as usize) as *const u16) }
    }
    fn regions(&self) -> Vec<VhostUserMemoryRegionInfo> {
        (0..2u64)
            .map(|k| VhostUserMemoryRegionInfo {
                guest_phys_addr: k << 20,
                memory_size: 1 << 20,
                userspace_addr: self.ptr as u64 + (k << 20),
                mmap_offset: k << 20,
                mmap_handle: self.file.as_raw_fd(),
            })
            .collect()
    }
    fn desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.put(DESC + 16 * i as u64, &d);
    }
    /// Header, one data descriptor, status, at table slots i, i+1, i+2.
    fn chain(&self, i: u16, t: u32, sector: u64, data: u64, len: u32) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&t.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.put(HDR + 16 * i as u64, &h);
        let dflags = if t == 0 { 2 } else { 0 };
        self.desc(i, HDR + 16 * i as u64, 16, 1, i + 1);
        self.desc(i + 1, data, len, dflags | 1, i + 2);
        self.desc(i + 2, STATUS + i as u64, 1, 2, 0);
        self.put(STATUS + i as u64, &[0xff]);
    }
    fn push(&self, slot: u16, head: u16) {
        self.put(AVAIL + 4 + 2 * (slot % QSIZE) as u64, &head.to_le_bytes());
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        self.put(AVAIL + 2, &(slot + 1).to_le_bytes());
    }
    fn used_idx(&self) -> u16 {
        self.u16_at(USED + 2)
    }
    fn wait_used(&self, n: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.used_idx() < n {
            assert!(
                Instant::now() < deadline,
                "used idx {} never reached {n}",
                self.used_idx()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    fn status(&self, i: u16) -> u8 {
        self.get(STATUS + i as u64, 1)[0]
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`.
        unsafe { libc::munmap(self.ptr.cast(), MEM) };
    }
}

struct Setup {
    fe: Frontend,
    _kick: EventFd,
    _call: EventFd,
}

/// Negotiates, sends the memory table and (optionally) an in-flight area,
/// then starts queue 0 at `base`.
fn start(
    sock: &std::path::Path,
    g: &Guest,
    inflight: Option<(&VhostUserInflight, &File)>,
    base: u16,
) -> Setup {
    let mut fe = Frontend::connect(sock, 1).unwrap();
    fe.set_owner().unwrap();
    let features = fe.get_features().unwrap();
    fe.set_features(features).unwrap();
    let proto = fe.get_protocol_features().unwrap();
    assert!(proto.contains(
        VhostUserProtocolFeatures::INFLIGHT_SHMFD | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    ));
    fe.set_protocol_features(
        proto & (VhostUserProtocolFeatures::INFLIGHT_SHMFD | VhostUserProtocolFeatures::MQ),
    )
    .unwrap();
    assert_eq!(fe.get_queue_num().unwrap(), 1);
    fe.set_mem_table(&g.regions()).unwrap();
    if let Some((msg, file)) = inflight {
        fe.set_inflight_fd(msg, file.as_raw_fd()).unwrap();
    }
    fe.set_vring_num(0, QSIZE).unwrap();
    fe.set_vring_base(0, base).unwrap();
    let va = |gpa: u64| g.ptr as u64 + gpa;
    let cfg = VringConfigData {
        queue_max_size: QSIZE,
        queue_size: QSIZE,
        flags: 0,
        desc_table_addr: va(DESC),
        used_ring_addr: va(USED),
        avail_ring_addr: va(AVAIL),
        log_addr: None,
    };
    fe.set_vring_addr(0, &cfg).unwrap();
    let kick = EventFd::new(EFD_NONBLOCK).unwrap();
    let call = EventFd::new(EFD_NONBLOCK).unwrap();
    fe.set_vring_call(0, &call).unwrap();
    fe.set_vring_kick(0, &kick).unwrap();
    fe.set_vring_enable(0, true).unwrap();
    Setup {
        fe,
        _kick: kick,
        _call: call,
    }
}

fn server(readonly: bool) -> (ReactorSet, Controller, Arc<dyn Bdev>, tempfile::TempDir) {
    let set = ReactorSet::start(
        &[0, 1],
        ReactorOptions {
            pin: false,
            idle_sleep_us: 50,
            ..Default::default()
        },
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bdev: Arc<dyn Bdev> = Arc::new(bdev::malloc::create("M0", 2048, 512).unwrap());
    let params = VhostBlkParams {
        name: "fe".into(),
        socket: dir.path().join("s.sock"),
        bdev: "M0".into(),
        num_queues: 1,
        readonly,
        cores: Some(vec![1]),
    };
    let c = Controller::create(params, Arc::clone(&bdev), set.handle()).unwrap();
    (set, c, bdev, dir)
}

#[test]
fn read_only_device_fails_writes_with_ioerr() {
    let (set, ctrl, _bdev, dir) = server(true);
    let g = Guest::new();
    let _s = start(&dir.path().join("s.sock"), &g, None, 0);
    g.put(DATA, &[0xab; 4096]);
    g.chain(0, 1, 8, DATA, 4096);
    g.push(0, 0);
    g.wait_used(1);
    assert_eq!(g.status(0), 1, "VIRTIO_BLK_S_IOERR");
    g.chain(3, 0, 8, DATA, 4096);
    g.push(1, 3);
    g.wait_used(2);
    assert_eq!(g.status(3), 0);
    assert!(
        g.get(DATA, 4096).iter().all(|&b| b == 0),
        "the write never reached the disk"
    );
    ctrl.delete();
    assert!(set.shutdown());
}

#[test]
fn io_across_two_regions_and_vring_base() {
    let (set, ctrl, _bdev, dir) = server(false);
    let g = Guest::new();
    let s = start(&dir.path().join("s.sock"), &g, None, 0);
    g.put(
        DATA,
        &(0..4096).map(|k| (k % 251) as u8).collect::<Vec<_>>(),
    );
    g.chain(0, 1, 16, DATA, 4096);
    g.push(0, 0);
    g.wait_used(1);
    assert_eq!(g.status(0), 0);
    g.chain(3, 0, 16, DATA2, 4096);
    g.push(1, 3);
    g.wait_used(2);
    assert_eq!(g.status(3), 0);
    assert_eq!(g.get(DATA2, 4096), g.get(DATA, 4096));
    // Stopping the ring reports where it stopped.
    assert_eq!(s.fe.get_vring_base(0).unwrap(), 2);
    assert_eq!(ctrl.info()["queues"][0]["running"], false);
    ctrl.delete();
    assert!(set.shutdown());
}

#[test]
fn inflight_requests_are_resubmitted_after_a_restart() {
    let (set, ctrl, bdev, dir) = server(false);
    let sock = dir.path().join("s.sock");
    let g = Guest::new();
    // A first connection obtains the in-flight area from the backend, as
    // QEMU does; then "dies" before starting anything.
    let mut fe = Frontend::connect(&sock, 1).unwrap();
    fe.set_owner().unwrap();
    let f = fe.get_features().unwrap();
    fe.set_features(f).unwrap();
    let p = fe.get_protocol_features().unwrap();
    fe.set_protocol_features(p & VhostUserProtocolFeatures::INFLIGHT_SHMFD)
        .unwrap();
    let (msg, file) = fe
        .get_inflight_fd(&VhostUserInflight::new(0, 0, 1, QSIZE))
        .unwrap();
    assert!(msg.mmap_size >= 16 + 16 * QSIZE as u64);
    drop(fe);
    // Pretend a previous backend popped head 0 (a write of sector 40) and
    // died before completing it: avail idx 1, used idx 0, desc[0] in
    // flight with counter 7.
    // SAFETY: mapping the area the backend gave us, size from its reply.
    let area = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            msg.mmap_size as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    } as *mut u8;
    assert_ne!(area.cast(), libc::MAP_FAILED);
    // SAFETY: inside the mapping: header (16 bytes) then 16-byte entries.
    unsafe {
        assert_eq!(std::ptr::read(area.add(8) as *const u16), 1, "version");
        assert_eq!(
            std::ptr::read(area.add(10) as *const u16),
            QSIZE,
            "desc_num"
        );
        *area.add(16) = 1; // desc[0].inflight
        std::ptr::write(area.add(16 + 8) as *mut u64, 7); // desc[0].counter
    }
    g.put(DATA, &[0x3c; 4096]);
    g.chain(0, 1, 40, DATA, 4096);
    g.push(0, 0);
    // QEMU restarts the ring at its own used idx (0); the backend must
    // resubmit head 0 from the in-flight area and not pop it again.
    let _s = start(&sock, &g, Some((&msg, &file)), 0);
    g.wait_used(1);
    assert_eq!(g.status(0), 0);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(g.used_idx(), 1, "the request ran once");
    // SAFETY: as above.
    unsafe {
        assert_eq!(*area.add(16), 0, "no longer in flight");
        assert_eq!(
            std::ptr::read(area.add(14) as *const u16),
            1,
            "used_idx recorded"
        );
    }
    // The ring goes on from avail index 1.
    g.chain(3, 0, 40, DATA2, 4096);
    g.push(1, 3);
    g.wait_used(2);
    assert_eq!(g.status(3), 0);
    assert_eq!(g.get(DATA2, 4096), vec![0x3c; 4096]);
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(bdev.stats().writes.load(Relaxed), 1);
    // SAFETY: the mapping made above.
    unsafe { libc::munmap(area.cast(), msg.mmap_size as usize) };
    ctrl.delete();
    assert!(set.shutdown());
}

/// Where in each 1 MiB region the memory-map tests put their marker
/// (clear of the rings, headers and data buffers used above).
const MARK: u64 = 0x4_0000;
const REGION: usize = 1 << 20;

/// Records the backend's mappings of one test's guest memory as they are
/// added to the memory map: 1 MiB regions whose marker (written by the
/// test at `MARK` of each region, last byte the region's index) matches.
struct Seen {
    marker: [u8; 15],
    added: Mutex<Vec<(u8, bdev::memmap::Region)>>,
    removed: Mutex<Vec<u64>>,
}

impl bdev::memmap::Listener for Seen {
    fn added(&self, r: &bdev::memmap::Region) {
        if r.len != REGION {
            return;
        }
        let mut m = [0u8; 16];
        // SAFETY: a registered region is mapped, readable memory for as
        // long as it is registered (the memory map's contract: guest
        // mappings and aligned buffers in this process), and `added` runs
        // under the map's lock, so it cannot go away meanwhile; MARK + 16
        // is inside the region.
        unsafe {
            std::ptr::copy_nonoverlapping((r.addr + MARK as usize) as *const u8, m.as_mut_ptr(), 16)
        };
        if m[..15] == self.marker {
            self.added.lock().unwrap().push((m[15], *r));
        }
    }
    fn removed(&self, r: &bdev::memmap::Region) {
        self.removed.lock().unwrap().push(r.id);
    }
}

impl Seen {
    /// Subscribes, after marking `g`'s two regions.
    fn subscribe(g: &Guest, marker: &[u8; 15]) -> (Arc<Seen>, bdev::memmap::Subscription) {
        for k in 0..2u8 {
            let mut m = [0u8; 16];
            m[..15].copy_from_slice(marker);
            m[15] = k;
            g.put(((k as u64) << 20) + MARK, &m);
        }
        let seen = Arc::new(Seen {
            marker: *marker,
            added: Mutex::new(Vec::new()),
            removed: Mutex::new(Vec::new()),
        });
        let sub = bdev::memmap::subscribe(seen.clone());
        (seen, sub)
    }

    /// Waits until `n` regions have been added after the first `skip`;
    /// returns those, sorted by region index.
    fn wait_added(&self, skip: usize, n: usize) -> Vec<(u8, bdev::memmap::Region)> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let a = self.added.lock().unwrap();
            if a.len() >= skip + n {
                assert_eq!(a.len(), skip + n, "more regions than expected: {a:?}");
                let mut v = a[skip..].to_vec();
                v.sort_by_key(|(k, _)| *k);
                return v;
            }
            drop(a);
            assert!(Instant::now() < deadline, "guest regions never registered");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn registered(id: u64) -> bool {
    bdev::memmap::regions().iter().any(|r| r.id == id)
}

/// Waits until none of `regions` is in the memory map any more (the last
/// snapshot a queue worker holds goes when the worker does, just after
/// the control thread has stopped it).
fn wait_gone(seen: &Seen, regions: &[(u8, bdev::memmap::Region)]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while regions.iter().any(|(_, r)| registered(r.id)) {
        assert!(
            Instant::now() < deadline,
            "guest regions still registered: {regions:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let removed = seen.removed.lock().unwrap();
    for (_, r) in regions {
        assert!(removed.contains(&r.id), "listener not told of {r:?}");
    }
}

#[test]
fn guest_memory_is_in_the_memory_map_while_mapped() {
    use bdev::memmap::find;
    let (set, ctrl, _bdev, dir) = server(false);
    let g = Guest::new();
    let (seen, sub) = Seen::subscribe(&g, b"memmap-table-01");
    let s = start(&dir.path().join("s.sock"), &g, None, 0);
    let first = seen.wait_added(0, 2);
    assert_eq!(first.iter().map(|(k, _)| *k).collect::<Vec<_>>(), [0, 1]);
    let (r0, r1) = (first[0].1, first[1].1);
    assert_ne!(r0.addr, g.ptr as usize, "the backend's own mapping");
    // The whole region, and the host address of a data buffer in each.
    assert_eq!(find(r0.addr, REGION), Some(r0));
    assert_eq!(find(r1.addr, REGION), Some(r1));
    assert_eq!(find(r0.addr + DATA as usize, 2048), Some(r0));
    assert_eq!(find(r1.addr + (DATA2 as usize - REGION), 4096), Some(r1));
    assert_eq!(
        find(r0.addr + DATA as usize, 4096),
        None,
        "straddles two mappings"
    );
    g.put(DATA2, &[0x77; 4096]);
    g.chain(0, 1, 16, DATA2, 4096);
    g.push(0, 0);
    g.wait_used(1);
    assert_eq!(g.status(0), 0);

    // A new table (QEMU sends one on memory hot-plug) maps the regions
    // again; the old mappings leave the map once the queue has let go.
    s.fe.set_mem_table(&g.regions()).unwrap();
    let second = seen.wait_added(2, 2);
    assert!(second.iter().all(|(_, r)| r.id != r0.id && r.id != r1.id));
    wait_gone(&seen, &first);
    for (_, r) in &second {
        assert_eq!(find(r.addr + MARK as usize, 16), Some(*r));
    }
    // The queue goes on over the new table.
    g.chain(3, 0, 16, DATA, 2048);
    g.push(1, 3);
    g.wait_used(2);
    assert_eq!(g.status(3), 0);
    assert_eq!(g.get(DATA, 2048), vec![0x77; 2048]);

    // The frontend goes away: the table is unmapped and unregistered.
    drop(s);
    wait_gone(&seen, &second);
    drop(sub);
    ctrl.delete();
    assert!(set.shutdown());
}

#[test]
fn added_and_removed_memory_slots_follow_the_memory_map() {
    let (set, ctrl, _bdev, dir) = server(false);
    let g = Guest::new();
    let (seen, sub) = Seen::subscribe(&g, b"memmap-slots-02");
    let mut fe = Frontend::connect(dir.path().join("s.sock"), 1).unwrap();
    fe.set_owner().unwrap();
    let f = fe.get_features().unwrap();
    fe.set_features(f).unwrap();
    let p = fe.get_protocol_features().unwrap();
    fe.set_protocol_features(
        p & (VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS | VhostUserProtocolFeatures::REPLY_ACK),
    )
    .unwrap();
    assert!(fe.get_max_mem_slots().unwrap() >= 2);
    let regions = g.regions();
    fe.set_mem_table(&regions[..1]).unwrap();
    let zero = seen.wait_added(0, 1);
    assert_eq!(zero[0].0, 0);
    fe.add_mem_region(&regions[1]).unwrap();
    let one = seen.wait_added(1, 1);
    assert_eq!(one[0].0, 1);
    let r1 = one[0].1;
    assert_eq!(bdev::memmap::find(r1.addr + 4096, 4096), Some(r1));
    fe.remove_mem_region(&regions[1]).unwrap();
    wait_gone(&seen, &one);
    assert!(registered(zero[0].1.id), "region 0 is still mapped");
    drop(fe);
    wait_gone(&seen, &zero);
    drop(sub);
    ctrl.delete();
    assert!(set.shutdown());
}
