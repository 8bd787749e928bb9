//! A descriptor-chain walker over guest memory that trusts nothing.
//!
//! virtio-queue's `DescriptorChain` can only be built by popping the avail
//! ring; in-flight recovery must walk chains by head index, so this module
//! walks them itself (same rules: indirect tables, a time-to-live per table
//! against loops, the 4 GiB chain limit) and reports a malformed chain as
//! an error instead of silently ending it.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub(crate) const DESC_F_NEXT: u16 = 1;
pub(crate) const DESC_F_WRITE: u16 = 2;
pub(crate) const DESC_F_INDIRECT: u16 = 4;

/// One split-ring descriptor, decoded.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Desc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

impl Desc {
    /// Whether the device may write it.
    pub fn writable(&self) -> bool {
        self.flags & DESC_F_WRITE != 0
    }
}

/// Iterates the descriptors of the chain starting at `head`.
pub(crate) struct ChainWalker<'m> {
    mem: &'m GuestMemoryMmap,
    table: u64,
    size: u32,
    next: u32,
    ttl: u32,
    indirect: bool,
    done: bool,
    total: u64,
    /// Set when the chain turned out malformed (loop, index out of the
    /// table, table outside guest memory, bad indirect table, too long).
    pub error: bool,
}

impl<'m> ChainWalker<'m> {
    /// Walks the chain at `head` of the descriptor table at `table` with
    /// `size` entries.
    pub fn new(mem: &'m GuestMemoryMmap, table: u64, size: u16, head: u16) -> Self {
        ChainWalker {
            mem,
            table,
            size: size as u32,
            next: head as u32,
            ttl: size as u32,
            indirect: false,
            done: false,
            total: 0,
            error: false,
        }
    }

    fn fail(&mut self) -> Option<Desc> {
        self.error = true;
        self.done = true;
        None
    }
}

impl Iterator for ChainWalker<'_> {
    type Item = Desc;

    fn next(&mut self) -> Option<Desc> {
        loop {
            if self.done {
                return None;
            }
            if self.ttl == 0 || self.next >= self.size {
                return self.fail();
            }
            let at = self.table.checked_add(self.next as u64 * 16)?;
            let raw: [u8; 16] = match self.mem.read_obj(GuestAddress(at)) {
                Ok(r) => r,
                Err(_) => return self.fail(),
            };
            let d = Desc {
                addr: u64::from_le_bytes(raw[0..8].try_into().unwrap_or_default()),
                len: u32::from_le_bytes(raw[8..12].try_into().unwrap_or_default()),
                flags: u16::from_le_bytes([raw[12], raw[13]]),
                next: u16::from_le_bytes([raw[14], raw[15]]),
            };
            if d.flags & DESC_F_INDIRECT != 0 {
                // No nesting, no NEXT together with INDIRECT, a whole number
                // of descriptors (virtio 1.2 §2.7.5.3.1).
                if self.indirect
                    || d.flags & DESC_F_NEXT != 0
                    || d.len == 0
                    || d.len % 16 != 0
                    || d.len / 16 > 65536
                {
                    return self.fail();
                }
                self.table = d.addr;
                self.size = d.len / 16;
                self.next = 0;
                self.ttl = self.size;
                self.indirect = true;
                continue;
            }
            self.total += d.len as u64;
            if self.total > u32::MAX as u64 {
                return self.fail();
            }
            if d.flags & DESC_F_NEXT != 0 {
                self.next = d.next as u32;
                self.ttl -= 1;
            } else {
                self.done = true;
            }
            return Some(d);
        }
    }
}
