//! A channel's registered data-buffer pool: one memory region carved into
//! 4 KiB pages, handed out as contiguous runs by a first-fit bitmap
//! allocator. No allocation per I/O; a request that does not fit waits.

use rdma::{MrBuf, Pd};

/// Allocation granule.
pub(crate) const PAGE: usize = 4096;

/// A contiguous run of pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Run {
    pub page: u32,
    pub pages: u32,
}

impl Run {
    pub fn bytes(&self) -> usize {
        self.pages as usize * PAGE
    }
}

pub(crate) struct BufPool {
    buf: MrBuf,
    pages: usize,
    /// Bit set = page in use.
    bitmap: Vec<u64>,
    free_pages: usize,
}

impl BufPool {
    pub fn new(pd: &Pd, bytes: usize) -> rdma::Result<BufPool> {
        let pages = bytes.div_ceil(PAGE).max(1);
        let buf = MrBuf::new(pd, pages * PAGE)?;
        let words = pages.div_ceil(64);
        let mut bitmap = vec![0u64; words];
        // Pages past the end are permanently "used".
        for p in pages..words * 64 {
            bitmap[p / 64] |= 1 << (p % 64);
        }
        Ok(BufPool {
            buf,
            pages,
            bitmap,
            free_pages: pages,
        })
    }

    pub fn capacity(&self) -> usize {
        self.pages * PAGE
    }

    pub fn lkey(&self) -> u32 {
        self.buf.lkey()
    }

    /// Address of byte `off` of `run`.
    pub fn addr(&self, run: Run, off: usize) -> u64 {
        self.buf.addr() + (run.page as usize * PAGE + off) as u64
    }

    /// Raw pointer to the start of `run`.
    pub fn ptr(&self, run: Run) -> *mut u8 {
        self.addr(run, 0) as *mut u8
    }

    fn used(&self, p: usize) -> bool {
        self.bitmap[p / 64] >> (p % 64) & 1 == 1
    }

    fn set(&mut self, run: Run, used: bool) {
        for p in run.page as usize..(run.page + run.pages) as usize {
            if used {
                self.bitmap[p / 64] |= 1 << (p % 64);
            } else {
                self.bitmap[p / 64] &= !(1 << (p % 64));
            }
        }
    }

    /// First free run of `n` pages, or the longest free run if none is that
    /// long: `(start, len)`.
    fn find(&self, n: usize) -> (usize, usize) {
        let (mut best_start, mut best_len) = (0, 0);
        let (mut start, mut len) = (0, 0);
        let mut p = 0;
        while p < self.pages {
            let w = self.bitmap[p / 64];
            if p % 64 == 0 && w == u64::MAX {
                len = 0;
                p += 64;
                continue;
            }
            if p % 64 == 0 && w == 0 {
                if len == 0 {
                    start = p;
                }
                len += 64.min(self.pages - p);
                p += 64;
            } else {
                if self.used(p) {
                    len = 0;
                } else {
                    if len == 0 {
                        start = p;
                    }
                    len += 1;
                }
                p += 1;
            }
            if len > best_len {
                best_start = start;
                best_len = len;
            }
            if len >= n {
                return (start, n);
            }
        }
        (best_start, best_len)
    }

    /// Allocates a run of at least `min` and at most `want` bytes (rounded up
    /// to pages; a run shorter than `want` is returned only if `want` does
    /// not fit anywhere).
    pub fn alloc(&mut self, want: usize, min: usize) -> Option<Run> {
        let want_pages = want.div_ceil(PAGE).max(1);
        let min_pages = min.div_ceil(PAGE).clamp(1, want_pages);
        if self.free_pages < min_pages {
            return None;
        }
        let (start, len) = self.find(want_pages);
        let pages = len.min(want_pages);
        if pages < min_pages {
            return None;
        }
        let run = Run {
            page: start as u32,
            pages: pages as u32,
        };
        self.set(run, true);
        self.free_pages -= pages;
        Some(run)
    }

    pub fn free(&mut self, run: Run) {
        self.set(run, false);
        self.free_pages += run.pages as usize;
    }

    #[cfg(test)]
    pub fn free_bytes(&self) -> usize {
        self.free_pages * PAGE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(pages: usize) -> BufPool {
        let ctx = rdma::Context::open(rdma::Provider::Loopback, "lo").unwrap();
        let pd = Pd::new(&ctx).unwrap();
        BufPool::new(&pd, pages * PAGE).unwrap()
    }

    #[test]
    fn first_fit_and_shrink() {
        let mut p = pool(100);
        let a = p.alloc(10 * PAGE, PAGE).unwrap();
        assert_eq!(a, Run { page: 0, pages: 10 });
        let b = p.alloc(1, 1).unwrap();
        assert_eq!(b, Run { page: 10, pages: 1 });
        let c = p.alloc(89 * PAGE, 89 * PAGE).unwrap();
        assert_eq!(c.pages, 89);
        assert!(p.alloc(1, 1).is_none());
        p.free(a);
        // 20 pages wanted, only 10 contiguous: shrink to 10 when min allows.
        assert!(p.alloc(20 * PAGE, 11 * PAGE).is_none());
        let d = p.alloc(20 * PAGE, PAGE).unwrap();
        assert_eq!(d, Run { page: 0, pages: 10 });
        p.free(b);
        p.free(c);
        p.free(d);
        assert_eq!(p.free_bytes(), 100 * PAGE);
        let all = p.alloc(100 * PAGE, 100 * PAGE).unwrap();
        assert_eq!(all.pages, 100);
    }

    #[test]
    fn many_small_runs_across_words() {
        let mut p = pool(300);
        let runs: Vec<Run> = (0..300).map(|_| p.alloc(1, 1).unwrap()).collect();
        assert!(p.alloc(1, 1).is_none());
        for r in runs.iter().step_by(2) {
            p.free(*r);
        }
        assert!(p.alloc(2 * PAGE, 2 * PAGE).is_none());
        assert_eq!(p.alloc(PAGE, PAGE).unwrap().page, 0);
        p.free(runs[129]);
        p.free(runs[131]);
        let r = p.alloc(3 * PAGE, 3 * PAGE).unwrap();
        assert_eq!(
            r,
            Run {
                page: 128,
                pages: 3
            }
        );
    }
}
