//! The request engine of a channel: bdev requests split into SRP_CMDs
//! (at the negotiated transfer size), data descriptors built from the
//! memory map (direct for one segment, an indirect table for more: inline
//! up to what the IU holds, the rest fetched by the target), immediate
//! data, credits with one held back for task management, responses and
//! their sense data, time-outs escalating ABORT TASK → LUN RESET →
//! reconnect.
//!
//! Commands live in a fixed array indexed by the low 16 bits of their SRP
//! tag; the upper bits carry a generation, so a late or duplicated
//! response (or one for a tag never sent) is recognised and ignored.
//! Requests live in a fixed pool; nothing here allocates per I/O.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bdev::{BdevInfo, IoRequest, IoStatus, IoType, IoVec, QueueFull};
use srp::{
    DataDesc, DescList, DirectBuf, Encode, ImmediateData, IndirectBuf, Lun, PortId, SrpCmd,
    TaskAttr,
};

use crate::conn::{
    bounce_geometry, Conn, Phase, MAX_CMD_BYTES, RSP_SLOTS, SCRATCH_BYTES, TABLE_BYTES,
};
use crate::discovery::Geometry;
use crate::params::SessionConfig;
use crate::scsi::{self, Cdb};
use crate::session::PortState;

/// Kinds of work request (top byte of `wr_id`).
pub(crate) const WR_RECV: u64 = 0;
pub(crate) const WR_CMD: u64 = 1;
pub(crate) const WR_TMF: u64 = 2;
pub(crate) const WR_RSP: u64 = 3;
/// Tags of task management requests have this bit set.
pub(crate) const TMF_TAG: u64 = 1 << 63;
/// Tries of one command (unit attention, aborted) before it fails.
pub(crate) const MAX_RETRIES: u32 = 5;
/// Connection losses one command may live through before it fails (a
/// command that kills the connection each time it is sent).
pub(crate) const MAX_LOSSES: u32 = 5;
/// Back-off before resending a command answered BUSY / TASK SET FULL.
const BUSY_BACKOFF: Duration = Duration::from_millis(10);
/// Descriptors one command may carry (the table slot's capacity).
const MAX_DESCS: usize = TABLE_BYTES / DirectBuf::SIZE;

pub(crate) fn wr_recv(slot: usize) -> u64 {
    WR_RECV << 56 | slot as u64
}

pub(crate) fn wr(kind: u64, idx: usize) -> u64 {
    kind << 56 | idx as u64
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CmdState {
    Free,
    /// Waiting to be sent (or sent again).
    Queued,
    Sent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CmdKind {
    Read,
    Write {
        fua: bool,
    },
    Flush,
    Unmap,
    WriteSameUnmap,
    WriteZeroes,
    /// Discovery: data-in into the scratch buffer.
    Internal {
        cdb: Cdb,
        len: u32,
    },
}

/// One SRP_CMD.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cmd {
    pub gen: u32,
    pub state: CmdState,
    pub kind: CmdKind,
    /// The bdev request it belongs to (`u32::MAX`: internal).
    pub req: u32,
    pub lba: u64,
    pub blocks: u32,
    /// Byte offset of its data within the request, and length.
    pub off: u64,
    pub len: u32,
    pub bounce: Option<u16>,
    pub sent_at: Instant,
    /// Order of the last send (a LUN RESET resends only what it overtook).
    pub seq: u64,
    pub timed_out: bool,
    /// Unit attentions / aborts answered so far (bounded by MAX_RETRIES).
    pub retries: u32,
    /// Connections lost with it outstanding (bounded by MAX_LOSSES).
    pub losses: u32,
    /// First send, for bounding BUSY / TASK SET FULL retries in time.
    pub first_sent: Option<Instant>,
    /// Not to be sent again before (BUSY back-off).
    pub not_before: Instant,
}

impl Cmd {
    pub(crate) fn free(now: Instant) -> Cmd {
        Cmd {
            gen: 0,
            state: CmdState::Free,
            kind: CmdKind::Flush,
            req: u32::MAX,
            lba: 0,
            blocks: 0,
            off: 0,
            len: 0,
            bounce: None,
            sent_at: now,
            seq: 0,
            timed_out: false,
            retries: 0,
            losses: 0,
            first_sent: None,
            not_before: now,
        }
    }
    pub(crate) fn tag(&self, idx: usize) -> u64 {
        u64::from(self.gen) << 16 | idx as u64
    }
}

/// One bdev request.
pub(crate) struct Req {
    pub(crate) busy: bool,
    pub(crate) consumer: u32,
    pub(crate) tag: u64,
    pub(crate) op: IoType,
    pub(crate) lba: u64,
    pub(crate) fua: bool,
    pub(crate) iovs: Vec<IoVec>,
    /// Units (blocks; 1 for flush) issued so far, and in all.
    pub(crate) next: u64,
    pub(crate) total: u64,
    pub(crate) outstanding: u32,
    pub(crate) status: IoStatus,
    pub(crate) queued: bool,
    /// A FUA write to a target whose FUA bit cannot be used: SYNCHRONIZE
    /// CACHE after the data, before the completion.
    pub(crate) flush_after: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tmf {
    Idle,
    Abort {
        ci: u16,
        gen: u32,
        tag: u64,
        deadline: Instant,
    },
    Reset {
        tag: u64,
        deadline: Instant,
        /// Commands sent up to this sequence number were outstanding
        /// when the reset went out.
        seq: u64,
    },
}

/// An answer owed to the target (SRP_CRED_RSP / SRP_AER_RSP), by tag.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Answer {
    Cred(u64),
    Aer(u64),
}

/// Geometry the data path needs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geo {
    block_size: u32,
    chunk_blocks: u32,
    unmap: bool,
    /// Send the FUA bit (DPOFUA with a write cache on).
    fua_bit: bool,
    /// Emulate FUA with SYNCHRONIZE CACHE (write cache on, no DPOFUA).
    fua_flush: bool,
    unmap_chunk: u32,
    ws_chunk: u32,
}

/// The engine's state (see the module docs).
pub(crate) struct Engine {
    pub cmds: Vec<Cmd>,
    pub(crate) free_cmds: Vec<u16>,
    pub(crate) reqs: Vec<Req>,
    pub(crate) free_reqs: Vec<u32>,
    pub(crate) waitq: VecDeque<u32>,
    pub(crate) resendq: VecDeque<u16>,
    pub(crate) tmf: Tmf,
    pub(crate) tmf_seq: u64,
    pub(crate) reset_waiters: Vec<u32>,
    pub(crate) rsp_free: Vec<u16>,
    pub(crate) bounce_free: Vec<u16>,
    pub(crate) bounce_bytes: usize,
    pub(crate) descs: Vec<DirectBuf>,
    pub(crate) geo: Option<Geo>,
    pub info: Option<BdevInfo>,
    pub initiator_port_id: PortId,
    pub(crate) lun: Lun,
    pub(crate) cmd_timeout: Duration,
    pub(crate) inflight: u32,
    /// Sequence number of the last command sent.
    pub(crate) send_seq: u64,
    /// Answers to the target waiting for a send slot.
    pub(crate) answers: VecDeque<Answer>,
    /// Since when work has been waiting with no credit to send it.
    pub(crate) starved_since: Option<Instant>,
}

impl Engine {
    pub fn new(q: usize, cfg: &SessionConfig) -> Engine {
        let now = Instant::now();
        let cap = (2 * q).max(64);
        Engine {
            cmds: vec![Cmd::free(now); q],
            free_cmds: (0..q as u16).rev().collect(),
            reqs: (0..cap)
                .map(|_| Req {
                    busy: false,
                    consumer: 0,
                    tag: 0,
                    op: IoType::Read,
                    lba: 0,
                    fua: false,
                    iovs: Vec::with_capacity(bdev::MAX_SEGMENTS),
                    next: 0,
                    total: 0,
                    outstanding: 0,
                    status: IoStatus::Success,
                    queued: false,
                    flush_after: false,
                })
                .collect(),
            free_reqs: (0..cap as u32).rev().collect(),
            waitq: VecDeque::with_capacity(cap),
            resendq: VecDeque::with_capacity(q),
            tmf: Tmf::Idle,
            tmf_seq: 0,
            reset_waiters: Vec::with_capacity(cap),
            rsp_free: (0..RSP_SLOTS as u16).collect(),
            bounce_free: (0..bounce_geometry(cfg).1 as u16).collect(),
            bounce_bytes: bounce_geometry(cfg).0,
            descs: Vec::with_capacity(MAX_DESCS),
            geo: None,
            info: None,
            initiator_port_id: PortId([0; 16]),
            lun: Lun::from_single_level(cfg.lun).unwrap_or(Lun([0; 8])),
            cmd_timeout: cfg.cmd_timeout,
            inflight: 0,
            send_seq: 0,
            answers: VecDeque::with_capacity(RSP_SLOTS),
            starved_since: None,
        }
    }

    /// Requests a channel holds at once.
    pub fn capacity(&self) -> usize {
        self.reqs.len()
    }

    pub fn set_geometry(&mut self, g: &Geometry, cfg: &SessionConfig) {
        let bs = g.block_size;
        let mut max = cfg.max_transfer.min(MAX_CMD_BYTES).max(bs);
        if g.limits.max_transfer_blocks > 0 {
            max = max.min(g.limits.max_transfer_blocks.saturating_mul(bs));
        }
        let ws = if g.limits.max_write_same_blocks > 0 {
            g.limits.max_write_same_blocks.min(65535) as u32
        } else {
            65535
        };
        self.geo = Some(Geo {
            block_size: bs,
            chunk_blocks: (max / bs).max(1),
            unmap: g.use_unmap(),
            fua_bit: g.write_cache && g.dpofua,
            fua_flush: g.write_cache && !g.dpofua,
            unmap_chunk: g.limits.max_unmap_blocks.clamp(1, u32::MAX),
            ws_chunk: ws,
        });
        self.info = Some(crate::bdev_info(&cfg.name, g, self.capacity()));
    }
}

impl Conn {
    pub fn set_geometry_inner(&mut self, g: &Geometry) {
        let cfg = self.sh.cfg.clone();
        self.engine.set_geometry(g, &cfg);
    }

    pub(crate) fn can_send(&self) -> bool {
        // One credit is held back for task management (ib_srp's
        // SRP_TSK_MGMT_SQ_SIZE).
        self.phase == Phase::Live && self.neg.req_lim > 1 && self.sq_free > 0
    }

    pub(crate) fn push_done(&mut self, consumer: u32, tag: u64, st: IoStatus) {
        let slot = self.consumers.get_mut(consumer as usize);
        let Some(Some(q)) = slot else {
            return;
        };
        q.inflight = q.inflight.saturating_sub(1);
        if q.gone {
            // Its channel was dropped: the slot is free once nothing of it
            // is outstanding (so no late completion reaches a successor).
            if q.inflight == 0 {
                self.consumers[consumer as usize] = None;
            }
            return;
        }
        match &q.forward {
            Some(f) => f.deliver(tag, st),
            None => q.q.push_back((tag, st)),
        }
    }

    /// Whether request `ri`'s consumer dropped its channel.
    fn orphaned(&self, ri: u32) -> bool {
        let Some(r) = self.engine.reqs.get(ri as usize) else {
            return false;
        };
        matches!(self.consumers.get(r.consumer as usize), Some(Some(c)) if c.gone)
    }

    /// Queues a bdev request (see `bdev::BdevChannel::submit`).
    ///
    /// # Safety
    /// The iovecs must stay valid and exclusively lent until the
    /// completion is reported.
    pub unsafe fn submit(
        &mut self,
        consumer: u32,
        req: &IoRequest<'_>,
        tag: u64,
    ) -> Result<(), QueueFull> {
        if let Some(Some(c)) = self.consumers.get_mut(consumer as usize) {
            c.inflight += 1;
        }
        // SAFETY: forwarded contract.
        let r = unsafe { self.submit_inner(consumer, req, tag) };
        if r.is_err() {
            if let Some(Some(c)) = self.consumers.get_mut(consumer as usize) {
                c.inflight -= 1;
            }
        }
        r
    }

    /// # Safety
    /// As [`Conn::submit`].
    pub(crate) unsafe fn submit_inner(
        &mut self,
        consumer: u32,
        req: &IoRequest<'_>,
        tag: u64,
    ) -> Result<(), QueueFull> {
        let Some(info) = self.engine.info.as_ref() else {
            self.push_done(consumer, tag, IoStatus::PathError);
            return Ok(());
        };
        if let Err(st) = bdev::validate(info, req) {
            self.push_done(consumer, tag, st);
            return Ok(());
        }
        match self.sh.port_state() {
            PortState::FailFast | PortState::Lost => {
                self.sh.stats.failed_fast.fetch_add(1, Ordering::Relaxed);
                self.push_done(consumer, tag, IoStatus::PathError);
                return Ok(());
            }
            _ => {}
        }
        if req.io_type == IoType::Reset {
            let Some(ri) = self.engine.free_reqs.pop() else {
                return Err(QueueFull);
            };
            self.fill_req(ri, consumer, req, tag, 0);
            self.engine.reset_waiters.push(ri);
            if self.engine.tmf == Tmf::Idle && self.phase == Phase::Live {
                self.start_reset();
            }
            return Ok(());
        }
        let Some(ri) = self.engine.free_reqs.pop() else {
            return Err(QueueFull);
        };
        let fua_flush =
            req.io_type == IoType::Write && req.fua && self.engine.geo.is_some_and(|g| g.fua_flush);
        let total = if req.io_type.has_range() {
            req.num_blocks
        } else {
            1
        };
        self.fill_req(ri, consumer, req, tag, total);
        self.engine.reqs[ri as usize].queued = true;
        self.engine.reqs[ri as usize].flush_after = fua_flush;
        self.engine.waitq.push_back(ri);
        self.pump();
        Ok(())
    }

    pub(crate) fn fill_req(
        &mut self,
        ri: u32,
        consumer: u32,
        req: &IoRequest<'_>,
        tag: u64,
        total: u64,
    ) {
        let r = &mut self.engine.reqs[ri as usize];
        r.busy = true;
        r.consumer = consumer;
        r.tag = tag;
        r.op = req.io_type;
        r.lba = req.offset_blocks;
        r.fua = req.fua;
        r.iovs.clear();
        r.iovs.extend_from_slice(req.iovs);
        r.next = 0;
        r.total = total;
        r.outstanding = 0;
        r.status = IoStatus::Success;
        r.queued = false;
        r.flush_after = false;
    }

    pub(crate) fn complete_req(&mut self, ri: u32) {
        let r = &mut self.engine.reqs[ri as usize];
        if !r.busy {
            return;
        }
        r.busy = false;
        r.queued = false;
        let (c, t, s) = (r.consumer, r.tag, r.status);
        self.engine.free_reqs.push(ri);
        self.push_done(c, t, s);
    }

    /// Sends what can be sent. Returns the number of IUs posted.
    pub fn pump(&mut self) -> usize {
        if self.phase != Phase::Live {
            return 0;
        }
        let running = self.sh.port_state() == PortState::Running;
        let mut n = self.flush_answers();
        // One pass over the queue: a command that cannot go now (backing
        // off, no bounce slot) goes to the back instead of blocking the
        // ones behind it (which may hold the bounce slots it waits for).
        let mut tries = self.engine.resendq.len();
        while tries > 0 && self.can_send() {
            tries -= 1;
            let Some(ci) = self.engine.resendq.pop_front() else {
                break;
            };
            let c = self.engine.cmds[ci as usize];
            if c.state != CmdState::Queued {
                continue;
            }
            let internal = matches!(c.kind, CmdKind::Internal { .. });
            if !internal && self.orphaned(c.req) {
                // Never sent again: its memory is no longer lent to us.
                self.finish_cmd(ci as usize, IoStatus::Aborted);
                continue;
            }
            if !(running || internal) || c.not_before > self.now {
                self.engine.resendq.push_back(ci);
                continue;
            }
            match self.send_cmd(ci as usize) {
                Ok(()) => n += 1,
                Err(()) => self.engine.resendq.push_back(ci),
            }
        }
        if !running {
            return n;
        }
        while let Some(&ri) = self.engine.waitq.front() {
            if self.orphaned(ri) {
                let r = &mut self.engine.reqs[ri as usize];
                r.next = r.total;
                r.status = IoStatus::Aborted;
                if r.outstanding == 0 {
                    self.complete_req(ri);
                }
            }
            let r = &self.engine.reqs[ri as usize];
            if !r.busy || r.next >= r.total {
                self.engine.reqs[ri as usize].queued = false;
                self.engine.waitq.pop_front();
                continue;
            }
            if !self.can_send() || self.engine.free_cmds.is_empty() {
                break;
            }
            let Some(ci) = self.next_chunk(ri) else {
                break;
            };
            match self.send_cmd(ci) {
                Ok(()) => n += 1,
                Err(()) => {
                    // No bounce buffer (or a post failed): try again later.
                    self.engine.resendq.push_back(ci as u16);
                    break;
                }
            }
        }
        // Work waiting for credits the target does not grant: the time-out
        // scan treats a long wait like a command that is not answered.
        let waiting = !self.engine.resendq.is_empty()
            || self.engine.waitq.iter().any(|&ri| {
                let r = &self.engine.reqs[ri as usize];
                r.busy && r.next < r.total
            });
        if waiting && self.neg.req_lim <= 1 {
            if self.engine.starved_since.is_none() {
                self.engine.starved_since = Some(self.now);
            }
        } else {
            self.engine.starved_since = None;
        }
        self.info_publish();
        n
    }

    pub(crate) fn info_publish(&self) {
        let i = &self.sh.chans[self.ch];
        i.req_lim.store(self.neg.req_lim, Ordering::Relaxed);
        i.inflight.store(self.engine.inflight, Ordering::Relaxed);
    }

    /// Carves the next command out of request `ri`.
    pub(crate) fn next_chunk(&mut self, ri: u32) -> Option<usize> {
        let geo = self.engine.geo?;
        let r = &self.engine.reqs[ri as usize];
        let left = r.total - r.next;
        let (kind, blocks) = match r.op {
            IoType::Read => (CmdKind::Read, left.min(u64::from(geo.chunk_blocks))),
            IoType::Write => (
                CmdKind::Write {
                    fua: r.fua && geo.fua_bit,
                },
                left.min(u64::from(geo.chunk_blocks)),
            ),
            IoType::Flush => (CmdKind::Flush, 1),
            IoType::Unmap if geo.unmap => (CmdKind::Unmap, left.min(u64::from(geo.unmap_chunk))),
            IoType::Unmap => (CmdKind::WriteSameUnmap, left.min(u64::from(geo.ws_chunk))),
            IoType::WriteZeroes => (CmdKind::WriteZeroes, left.min(u64::from(geo.ws_chunk))),
            IoType::Reset => return None,
        };
        let ci = self.engine.free_cmds.pop()? as usize;
        let lba = r.lba + r.next;
        let off = r.next * u64::from(geo.block_size);
        let len = if r.op.has_data() {
            blocks as u32 * geo.block_size
        } else {
            0
        };
        let c = &mut self.engine.cmds[ci];
        c.state = CmdState::Queued;
        c.kind = kind;
        c.req = ri;
        c.lba = lba;
        c.blocks = if r.op == IoType::Flush {
            0
        } else {
            blocks as u32
        };
        c.off = off;
        c.len = len;
        c.bounce = None;
        c.timed_out = false;
        c.retries = 0;
        c.losses = 0;
        c.first_sent = None;
        c.not_before = self.now;
        let r = &mut self.engine.reqs[ri as usize];
        r.next += blocks;
        r.outstanding += 1;
        if r.next >= r.total {
            r.queued = false;
            self.engine.waitq.pop_front();
        }
        Some(ci)
    }

    /// Gathers the request's data `[off, off+len)` as descriptors from the
    /// memory map into `engine.descs`. False if a piece is in no region or
    /// there are too many pieces.
    pub(crate) fn map_descs(&mut self, ri: u32, off: u64, len: u32) -> bool {
        let Conn { engine, mrs, .. } = self;
        let Some(mrs) = mrs.as_mut() else {
            return false;
        };
        engine.descs.clear();
        let mut skip = off as usize;
        let mut want = len as usize;
        for v in &engine.reqs[ri as usize].iovs {
            if want == 0 {
                break;
            }
            if skip >= v.len {
                skip -= v.len;
                continue;
            }
            let addr = v.base as usize + skip;
            let n = (v.len - skip).min(want);
            skip = 0;
            want -= n;
            let Some(e) = mrs.lookup(addr, n) else {
                return false;
            };
            if engine.descs.len() == MAX_DESCS {
                return false;
            }
            engine.descs.push(DirectBuf {
                va: addr as u64,
                key: e.rkey,
                len: n as u32,
            });
        }
        want == 0
    }

    /// Copies between the request's data `[off, off+len)` and `buf`.
    ///
    /// # Safety
    /// The request's iovecs are valid (the submit contract) and `buf` does
    /// not overlap them.
    pub(crate) unsafe fn copy_data(
        &self,
        ri: u32,
        off: u64,
        buf: *mut u8,
        len: usize,
        to_buf: bool,
    ) {
        let mut skip = off as usize;
        let mut done = 0usize;
        for v in &self.engine.reqs[ri as usize].iovs {
            if done == len {
                break;
            }
            if skip >= v.len {
                skip -= v.len;
                continue;
            }
            let n = (v.len - skip).min(len - done);
            // SAFETY: `v.base + skip .. + n` lies in an iovec the submitter
            // lent us until completion; `buf + done .. + n` lies in the
            // caller's buffer of `len` bytes; they do not overlap.
            unsafe {
                let p = v.base.add(skip);
                if to_buf {
                    std::ptr::copy_nonoverlapping(p, buf.add(done), n);
                } else {
                    std::ptr::copy_nonoverlapping(buf.add(done), p, n);
                }
            }
            skip = 0;
            done += n;
        }
    }

    /// Builds command `ci`'s SRP_CMD in its send slot and posts it.
    pub(crate) fn send_cmd(&mut self, ci: usize) -> Result<(), ()> {
        let c = self.engine.cmds[ci];
        let Some(bufs) = self.bufs.as_ref() else {
            return Err(());
        };
        let bs = self.engine.geo.map(|g| g.block_size).unwrap_or(512);
        let (tables_addr, tables_rkey) = (
            bufs.tables.mr().addr() + (ci * TABLE_BYTES) as u64,
            bufs.tables.mr().rkey(),
        );
        let (bounce_base, bounce_rkey) = (bufs.bounce.mr().addr(), bufs.bounce.mr().rkey());
        let (scratch_addr, scratch_rkey) = (bufs.scratch.mr().addr(), bufs.scratch.mr().rkey());
        let (zero_addr, zero_rkey) = (bufs.zero.mr().addr(), bufs.zero.mr().rkey());
        let (cdb, mut data_out, mut data_in): (Cdb, DataDesc<'_>, DataDesc<'_>);
        let mut imm_len = 0usize;
        let mut ndesc = 0usize;
        let mut use_bounce = c.bounce;
        match c.kind {
            CmdKind::Read | CmdKind::Write { .. } => {
                let write = matches!(c.kind, CmdKind::Write { .. });
                cdb = match c.kind {
                    CmdKind::Write { fua } => Cdb::write16(c.lba, c.blocks, fua),
                    _ => Cdb::read16(c.lba, c.blocks),
                };
                let imm = write && self.neg.immediate && c.len <= self.neg.max_imm;
                if imm {
                    imm_len = c.len as usize;
                } else if use_bounce.is_none() {
                    let mapped = self.map_descs(c.req, c.off, c.len);
                    let n = self.engine.descs.len();
                    // Descriptors beyond the inline ones need a target that
                    // fetches tables (strata's does; ib_srpt does not):
                    // ib_srp's allow_ext_sg.
                    let inline = self.neg.inline_descs;
                    let ext = n > 1 && (inline == 0 || (n > inline && !self.sh.cfg.allow_ext_sg));
                    if !mapped || ext {
                        let Some(b) = self.engine.bounce_free.pop() else {
                            return Err(());
                        };
                        if c.len as usize > self.engine.bounce_bytes {
                            self.engine.bounce_free.push(b);
                            return Err(());
                        }
                        use_bounce = Some(b);
                        self.engine.cmds[ci].bounce = Some(b);
                        self.sh.stats.bounce_cmds.fetch_add(1, Ordering::Relaxed);
                        self.sh
                            .stats
                            .bounce_bytes
                            .fetch_add(u64::from(c.len), Ordering::Relaxed);
                        if write {
                            let dst = bounce_base as usize + b as usize * self.engine.bounce_bytes;
                            // SAFETY: the bounce slot is ours (taken from the
                            // free list) and not named by any command in
                            // flight; the iovecs are lent by the submitter.
                            unsafe {
                                self.copy_data(c.req, c.off, dst as *mut u8, c.len as usize, true)
                            };
                        }
                    } else {
                        ndesc = n;
                        self.sh.stats.zero_copy_cmds.fetch_add(1, Ordering::Relaxed);
                    }
                }
                data_out = DataDesc::None;
                data_in = DataDesc::None;
                if let Some(b) = use_bounce {
                    ndesc = 0;
                    let d = DataDesc::Direct(DirectBuf {
                        va: bounce_base + (b as usize * self.engine.bounce_bytes) as u64,
                        key: bounce_rkey,
                        len: c.len,
                    });
                    if write {
                        data_out = d;
                    } else {
                        data_in = d;
                    }
                }
            }
            CmdKind::Flush => {
                cdb = Cdb::sync_cache16();
                data_out = DataDesc::None;
                data_in = DataDesc::None;
            }
            CmdKind::Unmap => {
                cdb = Cdb::unmap(24);
                let slot = self
                    .bufs
                    .as_mut()
                    .and_then(|b| b.tables.range_mut(ci * TABLE_BYTES, TABLE_BYTES));
                let Some(slot) = slot else { return Err(()) };
                scsi::unmap_param_list(slot, c.lba, c.blocks);
                data_out = DataDesc::Direct(DirectBuf {
                    va: tables_addr,
                    key: tables_rkey,
                    len: 24,
                });
                data_in = DataDesc::None;
            }
            CmdKind::WriteSameUnmap | CmdKind::WriteZeroes => {
                cdb = Cdb::write_same16(c.lba, c.blocks, c.kind == CmdKind::WriteSameUnmap);
                data_out = DataDesc::Direct(DirectBuf {
                    va: zero_addr,
                    key: zero_rkey,
                    len: bs,
                });
                data_in = DataDesc::None;
            }
            CmdKind::Internal { cdb: d, len } => {
                cdb = d;
                data_out = DataDesc::None;
                data_in = if len > 0 {
                    DataDesc::Direct(DirectBuf {
                        va: scratch_addr,
                        key: scratch_rkey,
                        len: len.min(SCRATCH_BYTES as u32),
                    })
                } else {
                    DataDesc::None
                };
            }
        }
        // Gen bump: any answer to an earlier send of this slot is stale.
        let gen = self.engine.cmds[ci].gen.wrapping_add(1);
        self.engine.cmds[ci].gen = gen;
        let tag = self.engine.cmds[ci].tag(ci);
        let lun = self.engine.lun;
        let inline = self.neg.inline_descs;
        // Indirect table: all entries in the table slot; the first ones
        // inline as well.
        if ndesc > 1 {
            let Some(bufs) = self.bufs.as_mut() else {
                return Err(());
            };
            let Some(t) = bufs.tables.range_mut(ci * TABLE_BYTES, TABLE_BYTES) else {
                return Err(());
            };
            for (k, d) in self.engine.descs.iter().enumerate() {
                let _ = d.encode_at(t, k * DirectBuf::SIZE);
            }
            self.sh.stats.indirect_cmds.fetch_add(1, Ordering::Relaxed);
            if ndesc > inline {
                self.sh
                    .stats
                    .external_tables
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        // Immediate data: the descriptor now, the bytes copied in after.
        static ZEROS: [u8; crate::params::MAX_IMM_DATA as usize] =
            [0; crate::params::MAX_IMM_DATA as usize];
        if imm_len > 0 {
            data_out = DataDesc::Immediate(ImmediateData {
                offset: srp::LINUX_IMM_DATA_OFFSET,
                data: &ZEROS[..imm_len],
            });
        }
        let ri = c.req;
        let (off, clen) = (c.off, c.len);
        let len = {
            let Conn { engine, bufs, .. } = &mut *self;
            let Some(b) = bufs.as_mut() else {
                return Err(());
            };
            let descs: &[DirectBuf] = &engine.descs[..ndesc.min(engine.descs.len())];
            if ndesc > 0 {
                if matches!(c.kind, CmdKind::Write { .. }) {
                    data_out = make(descs, tables_addr, tables_rkey, inline);
                } else {
                    data_in = make(descs, tables_addr, tables_rkey, inline);
                }
            }
            let cmd = SrpCmd {
                sol_not: 0,
                tag,
                lun,
                task_attr: TaskAttr::Simple,
                cdb: cdb.as_slice(),
                data_out,
                data_in,
            };
            let s = b.send_slot;
            let Some(slot) = b.send.range_mut(ci * s, s) else {
                return Err(());
            };
            match cmd.encode(slot) {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(error = %e, "encoding an SRP_CMD failed");
                    return Err(());
                }
            }
        };
        if imm_len > 0 {
            let s = self.bufs.as_ref().map(|b| b.send_slot).unwrap_or(0);
            let at = ci * s + usize::from(srp::LINUX_IMM_DATA_OFFSET);
            let dst = self
                .bufs
                .as_mut()
                .and_then(|b| b.send.range_mut(at, imm_len))
                .map(|d| d.as_mut_ptr());
            if let Some(dst) = dst {
                // SAFETY: `dst` has `imm_len` bytes (the encoder checked the
                // IU fits the slot); the iovecs are lent by the submitter.
                unsafe { self.copy_data(ri, off, dst, clen as usize, true) };
            }
            self.sh.stats.immediate_cmds.fetch_add(1, Ordering::Relaxed);
        }
        if self.post_iu(ci, len, wr(WR_CMD, ci)).is_err() {
            return Err(());
        }
        self.neg.req_lim -= 1;
        let now = self.now;
        let cm = &mut self.engine.cmds[ci];
        cm.state = CmdState::Sent;
        cm.sent_at = now;
        self.engine.send_seq += 1;
        cm.seq = self.engine.send_seq;
        cm.first_sent.get_or_insert(now);
        self.engine.inflight += 1;
        self.sh.chans[self.ch]
            .commands
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Queues an internal command (discovery) with `len` bytes of data-in.
    pub(crate) fn internal_command(
        &mut self,
        cdb: Cdb,
        len: u32,
        delay: Duration,
    ) -> Result<(), String> {
        let ci = self.engine.free_cmds.pop().ok_or("no free command slot")? as usize;
        let c = &mut self.engine.cmds[ci];
        c.state = CmdState::Queued;
        c.kind = CmdKind::Internal { cdb, len };
        c.req = u32::MAX;
        c.bounce = None;
        c.timed_out = false;
        c.retries = 0;
        c.losses = 0;
        c.first_sent = None;
        c.not_before = Instant::now() + delay;
        self.engine.resendq.push_back(ci as u16);
        self.pump();
        Ok(())
    }

    pub(crate) fn free_cmd(&mut self, ci: usize) {
        let c = &mut self.engine.cmds[ci];
        if c.state == CmdState::Sent {
            self.engine.inflight = self.engine.inflight.saturating_sub(1);
        }
        c.state = CmdState::Free;
        if let Some(b) = c.bounce.take() {
            self.engine.bounce_free.push(b);
        }
        self.engine.free_cmds.push(ci as u16);
    }

    /// Command `ci` finished with `st`: account it to its request.
    pub(crate) fn finish_cmd(&mut self, ci: usize, st: IoStatus) {
        let c = self.engine.cmds[ci];
        if st.is_ok() && c.kind == CmdKind::Read {
            if let (Some(b), Some(bufs)) = (c.bounce, self.bufs.as_ref()) {
                let src = bufs.bounce.mr().addr() as usize + b as usize * self.engine.bounce_bytes;
                // SAFETY: the target has finished writing the bounce slot
                // (its response arrived); the iovecs are lent by the
                // submitter until we complete the request.
                unsafe { self.copy_data(c.req, c.off, src as *mut u8, c.len as usize, false) };
            }
        }
        self.free_cmd(ci);
        let ri = c.req;
        let Some(r) = self.engine.reqs.get_mut(ri as usize) else {
            return;
        };
        if !r.busy {
            return;
        }
        r.outstanding = r.outstanding.saturating_sub(1);
        if !st.is_ok() {
            if r.status.is_ok() {
                r.status = st;
            }
            r.next = r.total;
        }
        if r.outstanding == 0 && r.next >= r.total {
            if r.flush_after && r.status.is_ok() {
                // FUA emulated: the data is written, now make it durable.
                r.flush_after = false;
                r.op = IoType::Flush;
                r.next = 0;
                r.total = 1;
                r.queued = true;
                self.engine.waitq.push_back(ri);
                return;
            }
            self.complete_req(ri);
        }
    }

    /// Sends command `ci` again (unit attention, aborted: at most
    /// MAX_RETRIES times; `busy`: BUSY / TASK SET FULL, after a back-off,
    /// for as long as `cmd_timeout` allows), or fails it.
    pub(crate) fn retry_cmd(&mut self, ci: usize, busy: bool) {
        let c = self.engine.cmds[ci];
        let give_up = if busy {
            c.first_sent
                .is_some_and(|t| self.now.duration_since(t) > self.engine.cmd_timeout)
        } else {
            c.retries >= MAX_RETRIES
        };
        if give_up {
            self.finish_cmd(ci, IoStatus::PathError);
            return;
        }
        self.sh.stats.retries.fetch_add(1, Ordering::Relaxed);
        if c.state == CmdState::Sent {
            self.engine.inflight = self.engine.inflight.saturating_sub(1);
        }
        let cm = &mut self.engine.cmds[ci];
        if busy {
            cm.not_before = self.now + BUSY_BACKOFF;
        } else {
            cm.retries += 1;
        }
        cm.state = CmdState::Queued;
        cm.timed_out = false;
        self.engine.resendq.push_back(ci as u16);
    }
}

/// The data descriptor for `list`: direct for one entry, otherwise an
/// indirect descriptor whose table (all entries) sits at `tables_addr`,
/// with the first `inline` entries copied into the IU.
fn make(list: &[DirectBuf], tables_addr: u64, tables_rkey: u32, inline: usize) -> DataDesc<'_> {
    if list.len() == 1 {
        DataDesc::Direct(list[0])
    } else {
        DataDesc::Indirect(IndirectBuf {
            table_desc: DirectBuf {
                va: tables_addr,
                key: tables_rkey,
                len: (list.len() * DirectBuf::SIZE) as u32,
            },
            total_len: list.iter().map(|d| d.len).sum(),
            partial: DescList::from_slice(&list[..list.len().min(inline)]),
        })
    }
}
