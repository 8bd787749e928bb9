//! Request handling against hostile chains: a queue worker driven on the
//! test thread over `vm-memory` test memory, rings laid out by
//! virtio-queue's `MockSplitQueue`, descriptors written by hand.

use std::sync::Arc;

use bdev::Bdev;
use virtio_queue::desc::{split::Descriptor as SplitDesc, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::chain::{DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};
use crate::mem::GuestMem;
use crate::virtio::*;
use crate::worker::{QueueCtl, QueueSetup, Worker};

const QSIZE: u16 = 64;
/// Region 1 holds the rings; regions 2 and 3 are adjacent (a descriptor
/// may span them); 0x40_0000.. is a hole; region 4 sits after it.
const R2: u64 = 0x10_0000;
const R3: u64 = 0x20_0000;
const HOLE: u64 = 0x40_0000;
const HDR: u64 = R2;
const STATUS: u64 = R2 + 0x100;
const DATA: u64 = R2 + 0x1000;

const R: u16 = 0;
const W: u16 = DESC_F_WRITE;

struct H {
    mem: Arc<GuestMem>,
    worker: Worker,
    ctl: Arc<QueueCtl>,
    avail: u16,
    next_desc: u16,
    /// Ring addresses (laid out once by MockSplitQueue, which zeroes the
    /// rings whenever it is built).
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
    bdev: Arc<dyn Bdev>,
}

fn memory() -> Arc<GuestMem> {
    Arc::new(GuestMem::unregistered(
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x10_0000),
            (GuestAddress(R2), 0x10_0000),
            (GuestAddress(R3), 0x10_0000),
            (GuestAddress(0x50_0000), 0x1000),
        ])
        .unwrap(),
    ))
}

fn harness(block_size: u32, readonly: bool) -> H {
    let mem = memory();
    let bdev: Arc<dyn Bdev> =
        Arc::new(bdev::malloc::create("m0", 0x10_0000 / block_size as u64, block_size).unwrap());
    let mock = MockSplitQueue::new(mem.mmap(), QSIZE);
    let q: Queue = mock.create_queue().unwrap();
    let limits = Arc::new(Limits::new(bdev.info(), readonly, 1));
    let ctl = QueueCtl::new(0, 0);
    let setup = QueueSetup {
        queue: q,
        mem: Arc::clone(&mem),
        call: None,
        limits,
        bdev: Arc::clone(&bdev),
        ctl: Arc::clone(&ctl),
        inflight: None,
        resubmit: Vec::new(),
        counter: 1,
    };
    let (desc_table, avail_ring, used_ring) = (
        mock.desc_table_addr().0,
        mock.avail_addr().0,
        mock.used_addr().0,
    );
    drop(mock);
    let worker = Worker::new(setup, None).unwrap();
    H {
        mem,
        worker,
        ctl,
        avail: 0,
        next_desc: 0,
        desc_table,
        avail_ring,
        used_ring,
        bdev,
    }
}

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDesc::new(addr, len, flags, next))
}

impl H {
    fn store_desc(&self, i: u16, d: RawDescriptor) {
        self.mem
            .write_obj(d, GuestAddress(self.desc_table + 16 * i as u64))
            .unwrap();
    }

    /// The used element at ring position `pos`: (id, len).
    fn used_elem(&self, pos: u16) -> (u32, u32) {
        let at = self.used_ring + 4 + 8 * (pos % QSIZE) as u64;
        (
            self.mem.read_obj::<u32>(GuestAddress(at)).unwrap(),
            self.mem.read_obj::<u32>(GuestAddress(at + 4)).unwrap(),
        )
    }

    /// Writes raw descriptors at the next free table slots (flags as
    /// given, `next` filled in for NEXT-linked entries) and returns the
    /// head index.
    fn put_chain(&mut self, descs: &[(u64, u32, u16)]) -> u16 {
        let head = self.next_desc;
        for (k, &(addr, len, flags)) in descs.iter().enumerate() {
            let i = head + k as u16;
            let last = k + 1 == descs.len();
            let f = if last { flags } else { flags | DESC_F_NEXT };
            self.store_desc(i, desc(addr, len, f, i + 1));
        }
        self.next_desc += descs.len() as u16;
        head
    }

    fn push_head(&mut self, head: u16) {
        let at = self.avail_ring + 4 + 2 * (self.avail % QSIZE) as u64;
        self.mem.write_obj(head, GuestAddress(at)).unwrap();
        self.avail = self.avail.wrapping_add(1);
        self.mem
            .write_obj(self.avail, GuestAddress(self.avail_ring + 2))
            .unwrap();
    }

    fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(self.used_ring + 2)).unwrap()
    }

    /// Submits a chain, polls until it is used; returns (used len, status
    /// byte at STATUS).
    fn run(&mut self, descs: &[(u64, u32, u16)]) -> (u32, u8) {
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let head = self.put_chain(descs);
        let used = self.used_idx();
        self.push_head(head);
        for _ in 0..100 {
            self.worker.poll();
            if self.used_idx() != used {
                break;
            }
        }
        assert_eq!(
            self.used_idx(),
            used.wrapping_add(1),
            "request was not completed"
        );
        let (id, len) = self.used_elem(used);
        assert_eq!(id, head as u32);
        assert_eq!(self.worker.inflight(), 0);
        (len, self.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap())
    }

    fn header(&self, t: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&t.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_obj(h, GuestAddress(HDR)).unwrap();
    }

    fn fill(&self, addr: u64, len: usize, byte: u8) {
        self.mem
            .write_slice(&vec![byte; len], GuestAddress(addr))
            .unwrap();
    }

    fn bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    fn write(&mut self, sector: u64, addr: u64, len: u32) -> (u32, u8) {
        self.header(T_OUT, sector);
        self.run(&[(HDR, 16, R), (addr, len, R), (STATUS, 1, W)])
    }

    fn read(&mut self, sector: u64, addr: u64, len: u32) -> (u32, u8) {
        self.header(T_IN, sector);
        self.run(&[(HDR, 16, R), (addr, len, W), (STATUS, 1, W)])
    }

    fn segment(&self, addr: u64, sector: u64, num: u32, flags: u32) {
        let mut s = [0u8; 16];
        s[0..8].copy_from_slice(&sector.to_le_bytes());
        s[8..12].copy_from_slice(&num.to_le_bytes());
        s[12..16].copy_from_slice(&flags.to_le_bytes());
        self.mem.write_obj(s, GuestAddress(addr)).unwrap();
    }
}

const OK: (u32, u8) = (1, S_OK);
const IOERR: (u32, u8) = (1, S_IOERR);
const UNSUPP: (u32, u8) = (1, S_UNSUPP);
/// Nothing reported: used len 0, status byte untouched.
const NO_STATUS: (u32, u8) = (0, 0xff);

#[test]
fn write_then_read_back_across_a_region_boundary() {
    let mut h = harness(512, false);
    // 2 KiB straddling the R2/R3 boundary: one descriptor, two iovecs.
    let src = R3 - 1024;
    for k in 0..2048u64 {
        h.mem
            .write_obj((k * 7 % 251) as u8, GuestAddress(src + k))
            .unwrap();
    }
    assert_eq!(h.write(10, src, 2048), OK);
    let dst = R3 + 0x8000;
    h.fill(dst, 2048, 0);
    assert_eq!(h.read(10, dst, 2048), (2049, S_OK));
    assert_eq!(h.bytes(dst, 2048), h.bytes(src, 2048));
    // Several data descriptors (vectored).
    h.header(T_IN, 10);
    h.fill(dst, 2048, 0);
    let r = h.run(&[
        (HDR, 16, R),
        (dst, 512, W),
        (dst + 512, 1024, W),
        (dst + 1536, 512, W),
        (STATUS, 1, W),
    ]);
    assert_eq!(r, (2049, S_OK));
    assert_eq!(h.bytes(dst, 2048), h.bytes(src, 2048));
    assert_eq!(h.ctl.requests.load(std::sync::atomic::Ordering::Relaxed), 3);
}

#[test]
fn header_must_be_sixteen_readable_bytes() {
    let mut h = harness(512, false);
    h.header(T_IN, 0);
    assert_eq!(
        h.run(&[(HDR, 8, R), (DATA, 512, W), (STATUS, 1, W)]),
        IOERR,
        "short header"
    );
    assert_eq!(
        h.run(&[(HDR, 32, R), (DATA, 512, W), (STATUS, 1, W)]),
        IOERR,
        "long header"
    );
    assert_eq!(
        h.run(&[(HDR, 16, W), (DATA, 512, W), (STATUS, 1, W)]),
        IOERR,
        "writable header"
    );
    assert_eq!(h.run(&[(STATUS, 1, W)]), IOERR, "no header at all");
    assert_eq!(
        h.run(&[(HOLE, 16, R), (DATA, 512, W), (STATUS, 1, W)]),
        IOERR,
        "header outside memory"
    );
}

#[test]
fn descriptors_outside_guest_memory_are_refused() {
    let mut h = harness(512, false);
    assert_eq!(h.read(0, HOLE, 512), IOERR, "in the hole");
    assert_eq!(h.read(0, HOLE - 256, 512), IOERR, "running into the hole");
    assert_eq!(
        h.read(0, u64::MAX - 100, 512),
        IOERR,
        "wrapping the address space"
    );
    assert_eq!(
        h.write(0, 0x50_0000 + 0x800, 4096),
        IOERR,
        "past the end of memory"
    );
}

#[test]
fn status_descriptor_problems_report_nothing() {
    let mut h = harness(512, false);
    h.header(T_IN, 0);
    // Without a status descriptor the last writable buffer is all the
    // device can take for one: its first byte gets the status.
    h.fill(DATA, 512, 0xee);
    assert_eq!(
        h.run(&[(HDR, 16, R), (DATA, 512, W)]),
        (1, 0xff),
        "no status descriptor"
    );
    assert_eq!(h.bytes(DATA, 2), vec![S_IOERR, 0xee]);
    assert_eq!(h.run(&[(HDR, 16, R)]), NO_STATUS, "header only");
    assert_eq!(
        h.run(&[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, R)]),
        NO_STATUS,
        "read-only status"
    );
    assert_eq!(
        h.run(&[(HDR, 16, R), (DATA, 512, W), (STATUS, 0, W)]),
        NO_STATUS,
        "empty status"
    );
    assert_eq!(
        h.run(&[(HDR, 16, R), (DATA, 512, W), (HOLE, 1, W)]),
        NO_STATUS,
        "status outside memory"
    );
}

#[test]
fn read_only_device_refuses_writes() {
    let mut h = harness(512, true);
    h.fill(DATA, 512, 0xab);
    assert_eq!(h.write(0, DATA, 512), IOERR);
    h.fill(DATA, 512, 0x11);
    assert_eq!(h.read(0, DATA, 512), (513, S_OK));
    assert!(
        h.bytes(DATA, 512).iter().all(|&b| b == 0),
        "nothing was written"
    );
    h.segment(DATA, 0, 1, 0);
    h.header(T_DISCARD, 0);
    assert_eq!(h.run(&[(HDR, 16, R), (DATA, 16, R), (STATUS, 1, W)]), IOERR);
    h.header(T_WRITE_ZEROES, 0);
    assert_eq!(h.run(&[(HDR, 16, R), (DATA, 16, R), (STATUS, 1, W)]), IOERR);
    h.header(T_FLUSH, 0);
    assert_eq!(h.run(&[(HDR, 16, R), (STATUS, 1, W)]), OK, "flush is fine");
    assert!(Limits::new(h.bdev.info(), true, 1).features() & feat::BLK_RO != 0);
}

#[test]
fn out_of_range_and_misaligned_sectors() {
    let mut h = harness(512, false);
    let sectors = 0x10_0000 / 512;
    assert_eq!(h.read(sectors - 1, DATA, 512), (513, S_OK), "last sector");
    assert_eq!(h.read(sectors, DATA, 512), IOERR, "one past the end");
    assert_eq!(
        h.read(sectors - 1, DATA, 1024),
        IOERR,
        "running past the end"
    );
    assert_eq!(h.read(u64::MAX, DATA, 512), IOERR, "overflow");
    assert_eq!(h.read(0, DATA, 100), IOERR, "not a whole sector");
    let mut h = harness(4096, false);
    assert_eq!(h.read(8, DATA, 4096), (4097, S_OK));
    assert_eq!(
        h.read(1, DATA, 4096),
        IOERR,
        "sector not aligned to the 4 KiB block"
    );
    assert_eq!(h.read(8, DATA, 512), IOERR, "length not a whole block");
}

#[test]
fn data_direction_segments_and_sizes() {
    let mut h = harness(512, false);
    h.header(T_IN, 0);
    assert_eq!(
        h.run(&[(HDR, 16, R), (DATA, 512, R), (STATUS, 1, W)]),
        IOERR,
        "read into a read-only buffer"
    );
    h.header(T_OUT, 0);
    assert_eq!(
        h.run(&[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, W)]),
        IOERR,
        "write from a write-only buffer"
    );
    h.header(T_IN, 0);
    assert_eq!(
        h.run(&[(HDR, 16, R), (STATUS, 1, W)]),
        IOERR,
        "read without data"
    );
    // More data descriptors than seg_max.
    let seg_max = Limits::new(h.bdev.info(), false, 1).seg_max as usize;
    // (in an indirect table: the chain is longer than the ring)
    let mut chain = vec![(HDR, 16, R)];
    chain.extend((0..seg_max + 1).map(|k| (DATA + 512 * k as u64, 512u32, W)));
    chain.push((STATUS, 1, W));
    let table = R3 + 0x1000;
    for (k, &(a, l, f)) in chain.iter().enumerate() {
        let f = if k + 1 == chain.len() {
            f
        } else {
            f | DESC_F_NEXT
        };
        h.mem
            .write_obj(
                desc(a, l, f, k as u16 + 1),
                GuestAddress(table + 16 * k as u64),
            )
            .unwrap();
    }
    assert_eq!(
        h.run(&[(table, 16 * chain.len() as u32, DESC_F_INDIRECT)]),
        IOERR,
        "too many segments"
    );
    // Exactly seg_max is fine.
    h.mem
        .write_obj(
            desc(STATUS, 1, W, 0),
            GuestAddress(table + 16 * (seg_max as u64 + 1)),
        )
        .unwrap();
    let n = (seg_max as u32 + 2) * 16;
    assert_eq!(
        h.run(&[(table, n, DESC_F_INDIRECT)]),
        (512 * seg_max as u32 + 1, S_OK)
    );
    // A descriptor larger than size_max.
    assert_eq!(h.read(0, R2, (1 << 20) + 512), IOERR);
}

#[test]
fn unknown_types_flush_and_get_id() {
    let mut h = harness(512, false);
    h.header(99, 0);
    assert_eq!(
        h.run(&[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, W)]),
        UNSUPP
    );
    h.header(T_FLUSH, 0);
    assert_eq!(h.run(&[(HDR, 16, R), (STATUS, 1, W)]), OK);
    h.header(T_GET_ID, 0);
    h.fill(DATA, 32, 0xee);
    assert_eq!(
        h.run(&[(HDR, 16, R), (DATA, 32, W), (STATUS, 1, W)]),
        (21, S_OK)
    );
    let id = h.bytes(DATA, 21);
    assert_eq!(&id[..2], b"m0");
    assert!(id[2..20].iter().all(|&b| b == 0));
    assert_eq!(id[20], 0xee, "only 20 bytes written");
    h.header(T_GET_ID, 0);
    assert_eq!(
        h.run(&[(HDR, 16, R), (DATA, 32, R), (STATUS, 1, W)]),
        IOERR,
        "read-only id buffer"
    );
}

#[test]
fn discard_and_write_zeroes() {
    let mut h = harness(512, false);
    h.fill(DATA, 4096, 0x5a);
    assert_eq!(h.write(0, DATA, 4096), OK);
    // Two segments: sectors 1 and 4..6.
    h.segment(STATUS + 0x100, 1, 1, 0);
    h.segment(STATUS + 0x110, 4, 2, 0);
    h.header(T_DISCARD, 0);
    assert_eq!(
        h.run(&[(HDR, 16, R), (STATUS + 0x100, 32, R), (STATUS, 1, W)]),
        OK
    );
    h.segment(STATUS + 0x100, 7, 1, WZ_FLAG_UNMAP);
    h.header(T_WRITE_ZEROES, 0);
    assert_eq!(
        h.run(&[(HDR, 16, R), (STATUS + 0x100, 16, R), (STATUS, 1, W)]),
        OK
    );
    assert_eq!(h.read(0, DATA + 0x2000, 4096), (4097, S_OK));
    let got = h.bytes(DATA + 0x2000, 4096);
    for s in 0..8 {
        let zero = [1, 4, 5, 7].contains(&s);
        let sec = &got[s * 512..(s + 1) * 512];
        assert!(
            sec.iter().all(|&b| b == if zero { 0 } else { 0x5a }),
            "sector {s}"
        );
    }
    let sectors = 0x10_0000 / 512;
    h.header(T_DISCARD, 0);
    h.segment(STATUS + 0x100, sectors - 1, 2, 0);
    assert_eq!(
        h.run(&[(HDR, 16, R), (STATUS + 0x100, 16, R), (STATUS, 1, W)]),
        IOERR,
        "segment out of range"
    );
    h.segment(STATUS + 0x100, u64::MAX - 1, 4, 0);
    assert_eq!(
        h.run(&[(HDR, 16, R), (STATUS + 0x100, 16, R), (STATUS, 1, W)]),
        IOERR,
        "segment overflows"
    );
    h.segment(STATUS + 0x100, 0, 1, WZ_FLAG_UNMAP);
    assert_eq!(
        h.run(&[(HDR, 16, R), (STATUS + 0x100, 16, R), (STATUS, 1, W)]),
        UNSUPP,
        "unmap flag on discard"
    );
    h.header(T_WRITE_ZEROES, 0);
    h.segment(STATUS + 0x100, 0, 1, 0x8);
    assert_eq!(
        h.run(&[(HDR, 16, R), (STATUS + 0x100, 16, R), (STATUS, 1, W)]),
        UNSUPP,
        "unknown flag"
    );
    h.segment(STATUS + 0x100, 0, 1, 0);
    assert_eq!(
        h.run(&[(HDR, 16, R), (STATUS + 0x100, 12, R), (STATUS, 1, W)]),
        IOERR,
        "partial segment"
    );
    assert_eq!(h.run(&[(HDR, 16, R), (STATUS, 1, W)]), IOERR, "no segment");
    let many = Limits::new(h.bdev.info(), false, 1).max_write_zeroes_seg + 1;
    for k in 0..many as u64 {
        h.segment(STATUS + 0x100 + 16 * k, k, 1, 0);
    }
    assert_eq!(
        h.run(&[(HDR, 16, R), (STATUS + 0x100, 16 * many, R), (STATUS, 1, W)]),
        IOERR,
        "too many segments"
    );
}

#[test]
fn malformed_chains_never_crash() {
    let mut h = harness(512, false);
    h.header(T_IN, 0);
    // A loop: descriptor 0 -> 1 -> 0 ...
    h.store_desc(0, desc(HDR, 16, DESC_F_NEXT, 1));
    h.store_desc(1, desc(DATA, 512, DESC_F_NEXT | W, 0));
    h.next_desc = 2;
    h.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    h.push_head(0);
    for _ in 0..3 {
        h.worker.poll();
    }
    assert_eq!(h.used_idx(), 1);
    assert_eq!(h.used_elem(0), (0, 0));
    // `next` pointing past the table.
    let head = h.put_chain(&[(HDR, 16, R)]);
    h.store_desc(head, desc(HDR, 16, DESC_F_NEXT, QSIZE + 5));
    h.push_head(head);
    h.worker.poll();
    assert_eq!(h.used_idx(), 2);
    // A head index out of range: dropped, counted.
    h.push_head(QSIZE + 1);
    h.worker.poll();
    assert_eq!(h.used_idx(), 2);
    assert_eq!(h.ctl.dropped.load(std::sync::atomic::Ordering::Relaxed), 1);
    // The queue still works afterwards.
    assert_eq!(h.read(0, DATA, 512), (513, S_OK));
}

#[test]
fn indirect_tables() {
    let mut h = harness(512, false);
    h.fill(DATA, 1024, 0x77);
    assert_eq!(h.write(2, DATA, 1024), OK);
    // header, 2 data, status in an indirect table at R3.
    let table = R3 + 0x1000;
    let entries = [
        desc(HDR, 16, DESC_F_NEXT, 1),
        desc(DATA + 0x4000, 512, W | DESC_F_NEXT, 2),
        desc(DATA + 0x4200, 512, W | DESC_F_NEXT, 3),
        desc(STATUS, 1, W, 0),
    ];
    for (k, e) in entries.iter().enumerate() {
        h.mem
            .write_obj(*e, GuestAddress(table + 16 * k as u64))
            .unwrap();
    }
    h.header(T_IN, 2);
    assert_eq!(h.run(&[(table, 64, DESC_F_INDIRECT)]), (1025, S_OK));
    assert_eq!(h.bytes(DATA + 0x4000, 1024), vec![0x77; 1024]);
    // Nested indirect, or a table of a partial descriptor: nothing trusted.
    h.mem
        .write_obj(
            desc(table, 64, DESC_F_INDIRECT, 0),
            GuestAddress(table + 0x100),
        )
        .unwrap();
    assert_eq!(h.run(&[(table + 0x100, 16, DESC_F_INDIRECT)]), NO_STATUS);
    assert_eq!(h.run(&[(table, 60, DESC_F_INDIRECT)]), NO_STATUS);
    assert_eq!(
        h.run(&[(HOLE, 64, DESC_F_INDIRECT)]),
        NO_STATUS,
        "table outside memory"
    );
}

#[test]
fn config_space_layout() {
    let b = bdev::malloc::create("cfg", 2048, 4096).unwrap();
    let l = Limits::new(bdev::Bdev::info(&b), false, 4);
    let c = l.config_space();
    assert_eq!(
        u64::from_le_bytes(c[0..8].try_into().unwrap()),
        2048 * 8,
        "capacity in 512-byte sectors"
    );
    assert_eq!(
        u32::from_le_bytes(c[20..24].try_into().unwrap()),
        4096,
        "blk_size"
    );
    assert_eq!(
        u16::from_le_bytes(c[34..36].try_into().unwrap()),
        4,
        "num_queues"
    );
    assert_eq!(u32::from_le_bytes(c[12..16].try_into().unwrap()), l.seg_max);
    assert_eq!(
        u32::from_le_bytes(c[44..48].try_into().unwrap()),
        8,
        "discard alignment in sectors"
    );
    let f = l.features();
    for bit in [
        feat::BLK_FLUSH,
        feat::BLK_MQ,
        feat::BLK_DISCARD,
        feat::BLK_WRITE_ZEROES,
        feat::RING_EVENT_IDX,
        feat::VERSION_1,
    ] {
        assert!(f & bit != 0);
    }
    assert!(f & feat::BLK_RO == 0);
    assert_eq!(l.serial_str(), "cfg");
}
