//! Turning one descriptor chain into a plan: which bdev request(s) to
//! submit, or which status to complete with at once. Every field comes from
//! the guest and is checked; nothing here allocates.
//!
//! Layout accepted (what Linux, QEMU, SPDK and libblkio drivers send):
//! a 16-byte device-readable header descriptor, zero or more data
//! descriptors, and a device-writable status descriptor last (len ≥ 1; the
//! status goes to its first byte).

use bdev::{IoType, IoVec};
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress,
};

use crate::chain::{ChainWalker, Desc};
use crate::virtio::*;

/// What to do with a request.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Submit one read or write; the iovecs are `Scratch::iovs[..niov]`.
    Data {
        io_type: IoType,
        offset_blocks: u64,
        num_blocks: u64,
        niov: usize,
        bytes: u32,
    },
    /// Submit a flush.
    Flush,
    /// Submit one unmap or write-zeroes per `Scratch::ranges[..n]`.
    Ranges { io_type: IoType, n: usize },
    /// Complete now with `status`, `written` data bytes having been
    /// written into device-writable buffers.
    Done { status: u8, written: u32 },
}

/// A parsed request: where its status byte goes, and what to do.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Parsed {
    /// Host address of the status byte; null when the chain has no usable
    /// status descriptor (then nothing can be reported: used len 0).
    pub status: *mut u8,
    pub plan: Plan,
}

/// Fixed-size per-queue working space, reused for every request.
pub(crate) struct Scratch {
    pub descs: Box<[Desc]>,
    pub iovs: Box<[IoVec]>,
    pub ranges: Box<[(u64, u64)]>,
}

impl Scratch {
    pub fn new(l: &Limits) -> Scratch {
        // header + seg_max data + status
        let ndesc = l.seg_max as usize + 2;
        let nranges = l.max_discard_seg.max(l.max_write_zeroes_seg) as usize;
        Scratch {
            descs: vec![Desc::default(); ndesc].into_boxed_slice(),
            iovs: vec![
                IoVec {
                    base: std::ptr::null_mut(),
                    len: 0
                };
                l.max_iovs
            ]
            .into_boxed_slice(),
            ranges: vec![(0, 0); nranges.max(1)].into_boxed_slice(),
        }
    }
}

/// Appends host iovecs for guest range `[addr, addr + len)` to `out[*n..]`,
/// splitting at memory-region boundaries. False if any byte is outside
/// guest memory or `out` is full.
pub(crate) fn translate(
    mem: &GuestMemoryMmap,
    addr: u64,
    len: u64,
    out: &mut [IoVec],
    n: &mut usize,
) -> bool {
    let mut addr = addr;
    let mut left = len;
    while left > 0 {
        let Some(region) = mem.find_region(GuestAddress(addr)) else {
            return false;
        };
        let off = addr - region.start_addr().0;
        let take = left.min(region.len() - off);
        let Ok(ptr) = region.get_host_address(MemoryRegionAddress(off)) else {
            return false;
        };
        if *n >= out.len() {
            return false;
        }
        out[*n] = IoVec {
            base: ptr,
            len: take as usize,
        };
        *n += 1;
        let Some(next) = addr.checked_add(take) else {
            return take == left;
        };
        addr = next;
        left -= take;
    }
    true
}

/// Host address of the one guest byte at `addr`.
fn host_byte(mem: &GuestMemoryMmap, addr: u64) -> Option<*mut u8> {
    let mut v = [IoVec {
        base: std::ptr::null_mut(),
        len: 0,
    }];
    let mut n = 0;
    translate(mem, addr, 1, &mut v, &mut n).then_some(v[0].base)
}

/// Parses the chain walked by `walker`.
pub(crate) fn parse(
    mem: &GuestMemoryMmap,
    mut walker: ChainWalker<'_>,
    l: &Limits,
    s: &mut Scratch,
) -> Parsed {
    let no_status = Parsed {
        status: std::ptr::null_mut(),
        plan: Plan::Done {
            status: S_IOERR,
            written: 0,
        },
    };
    // Collect the chain; remember the last descriptor even past capacity.
    let mut n = 0;
    let mut overflow = false;
    let mut last = None;
    for d in walker.by_ref() {
        if n < s.descs.len() {
            s.descs[n] = d;
            n += 1;
        } else {
            overflow = true;
        }
        last = Some(d);
    }
    // A malformed chain has no trustworthy status location.
    if walker.error {
        return no_status;
    }
    let Some(last) = last else { return no_status };
    if !last.writable() || last.len == 0 {
        return no_status;
    }
    let Some(status) = host_byte(mem, last.addr) else {
        return no_status;
    };
    let fail = |st: u8| Parsed {
        status,
        plan: Plan::Done {
            status: st,
            written: 0,
        },
    };
    if overflow {
        return fail(S_IOERR);
    }
    if n < 2 {
        return fail(S_IOERR); // no header
    }
    let hdr = s.descs[0];
    if hdr.writable() || hdr.len != HEADER_BYTES {
        return fail(S_IOERR);
    }
    let Ok(raw) = mem.read_obj::<[u8; 16]>(GuestAddress(hdr.addr)) else {
        return fail(S_IOERR);
    };
    let rtype = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let sector = u64::from_le_bytes(raw[8..16].try_into().unwrap_or_default());
    let data = 1..n - 1;
    let plan = match rtype {
        T_IN | T_OUT => data_plan(mem, rtype == T_IN, sector, &s.descs[data], l, &mut s.iovs),
        T_FLUSH => Plan::Flush,
        T_GET_ID => get_id(mem, &s.descs[data], l),
        T_DISCARD | T_WRITE_ZEROES => {
            ranges_plan(mem, rtype == T_DISCARD, &s.descs[data], l, &mut s.ranges)
        }
        _ => Plan::Done {
            status: S_UNSUPP,
            written: 0,
        },
    };
    Parsed { status, plan }
}

fn ioerr() -> Plan {
    Plan::Done {
        status: S_IOERR,
        written: 0,
    }
}

/// Converts a 512-byte sector range to blocks; `None` if misaligned or
/// out of range.
fn to_blocks(l: &Limits, sector: u64, bytes: u64) -> Option<(u64, u64)> {
    let per_block = l.block_size as u64 / SECTOR;
    if sector % per_block != 0 || bytes % l.block_size as u64 != 0 || bytes == 0 {
        return None;
    }
    let offset = sector / per_block;
    let num = bytes / l.block_size as u64;
    (offset.checked_add(num)? <= l.num_blocks).then_some((offset, num))
}

fn data_plan(
    mem: &GuestMemoryMmap,
    read: bool,
    sector: u64,
    data: &[Desc],
    l: &Limits,
    iovs: &mut [IoVec],
) -> Plan {
    if !read && l.readonly {
        return ioerr();
    }
    if data.is_empty() || data.len() > l.seg_max as usize {
        return ioerr();
    }
    let mut niov = 0;
    let mut bytes: u64 = 0;
    for d in data {
        // Reads fill device-writable buffers; writes only read readable ones.
        if d.writable() != read || d.len > l.size_max {
            return ioerr();
        }
        if d.len == 0 {
            continue;
        }
        if !translate(mem, d.addr, d.len as u64, iovs, &mut niov) {
            return ioerr();
        }
        bytes += d.len as u64;
    }
    let Some((offset_blocks, num_blocks)) = to_blocks(l, sector, bytes) else {
        return ioerr();
    };
    let io_type = if read { IoType::Read } else { IoType::Write };
    Plan::Data {
        io_type,
        offset_blocks,
        num_blocks,
        niov,
        bytes: bytes as u32,
    }
}

fn get_id(mem: &GuestMemoryMmap, data: &[Desc], l: &Limits) -> Plan {
    let mut written = 0usize;
    for d in data {
        if !d.writable() {
            return ioerr();
        }
        let take = (d.len as usize).min(ID_BYTES - written);
        if take == 0 {
            continue;
        }
        if mem
            .write_slice(&l.serial[written..written + take], GuestAddress(d.addr))
            .is_err()
        {
            return ioerr();
        }
        written += take;
    }
    if data.is_empty() {
        return ioerr();
    }
    Plan::Done {
        status: S_OK,
        written: written as u32,
    }
}

fn ranges_plan(
    mem: &GuestMemoryMmap,
    discard: bool,
    data: &[Desc],
    l: &Limits,
    out: &mut [(u64, u64)],
) -> Plan {
    let (supported, max_sectors, max_seg) = if discard {
        (l.discard, l.max_discard_sectors, l.max_discard_seg)
    } else {
        (
            l.write_zeroes,
            l.max_write_zeroes_sectors,
            l.max_write_zeroes_seg,
        )
    };
    if l.readonly {
        return ioerr();
    }
    if !supported {
        return Plan::Done {
            status: S_UNSUPP,
            written: 0,
        };
    }
    let mut n = 0;
    if data.is_empty() {
        return ioerr();
    }
    for d in data {
        if d.writable() || d.len % SEGMENT_BYTES != 0 {
            return ioerr();
        }
        for k in 0..(d.len / SEGMENT_BYTES) as u64 {
            let Some(at) = d.addr.checked_add(k * SEGMENT_BYTES as u64) else {
                return ioerr();
            };
            let Ok(seg) = mem.read_obj::<[u8; 16]>(GuestAddress(at)) else {
                return ioerr();
            };
            let sector = u64::from_le_bytes(seg[0..8].try_into().unwrap_or_default());
            let num = u32::from_le_bytes([seg[8], seg[9], seg[10], seg[11]]);
            let flags = u32::from_le_bytes([seg[12], seg[13], seg[14], seg[15]]);
            // Unknown flags, or UNMAP on a discard: UNSUPP (virtio 1.2 §5.2.6.2).
            let allowed = if discard { 0 } else { WZ_FLAG_UNMAP };
            if flags & !allowed != 0 {
                return Plan::Done {
                    status: S_UNSUPP,
                    written: 0,
                };
            }
            if n >= max_seg as usize || n >= out.len() || num > max_sectors {
                return ioerr();
            }
            let Some(range) = to_blocks(l, sector, num as u64 * SECTOR) else {
                return ioerr();
            };
            out[n] = range;
            n += 1;
        }
    }
    if n == 0 {
        return ioerr();
    }
    let io_type = if discard {
        IoType::Unmap
    } else {
        IoType::WriteZeroes
    };
    Plan::Ranges { io_type, n }
}
