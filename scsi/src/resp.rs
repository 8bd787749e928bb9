//! A bounded writer for data-in buffers: writes what fits under the cap
//! (allocation length and buffer size), counts everything, never panics.

use crate::lun::Outcome;

pub(crate) struct Resp<'a> {
    out: &'a mut [u8],
    cap: usize,
    len: usize,
}

impl<'a> Resp<'a> {
    pub fn new(out: &'a mut [u8], alloc_len: usize) -> Self {
        let cap = out.len().min(alloc_len);
        Resp { out, cap, len: 0 }
    }

    /// Bytes generated so far (may exceed what was stored).
    pub fn pos(&self) -> usize {
        self.len
    }

    /// Writes `b` at `at` (only the part under the cap).
    pub fn patch(&mut self, at: usize, b: &[u8]) {
        if at < self.cap {
            let n = b.len().min(self.cap - at);
            self.out[at..at + n].copy_from_slice(&b[..n]);
        }
    }

    pub fn put(&mut self, b: &[u8]) {
        self.patch(self.len, b);
        self.len += b.len();
    }

    pub fn u8(&mut self, v: u8) {
        self.put(&[v]);
    }

    pub fn u16(&mut self, v: u16) {
        self.put(&v.to_be_bytes());
    }

    pub fn u32(&mut self, v: u32) {
        self.put(&v.to_be_bytes());
    }

    pub fn u64(&mut self, v: u64) {
        self.put(&v.to_be_bytes());
    }

    pub fn zeros(&mut self, n: usize) {
        let start = self.len.min(self.cap);
        let end = (self.len + n).min(self.cap);
        self.out[start..end].fill(0);
        self.len += n;
    }

    /// Finishes: GOOD status with the truncated length.
    pub fn done(self) -> Outcome {
        Outcome::Done {
            data_in_len: self.len.min(self.cap),
        }
    }
}
