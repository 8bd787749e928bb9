//! Time-outs and task management (ABORT TASK → LUN RESET → reconnect,
//! as ib_srp's error handler escalates), and what a lost connection does
//! to the commands of a channel.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bdev::IoStatus;
use srp::{tsk_mgmt_rsp, Encode, TaskMgmtFunction, TskMgmt};

use crate::conn::{Conn, Phase, RSP_SLOTS, TMF_SLOTS};
use crate::io::{wr, CmdState, Tmf, MAX_LOSSES, TMF_TAG, WR_TMF};

/// How long an ABORT TASK may take before a LUN RESET, and a LUN RESET
/// before a reconnect: ib_srp's SRP_ABORT_TIMEOUT_MS (5 s), or the command
/// time-out when that is shorter.
const TMF_TIMEOUT: Duration = Duration::from_secs(5);

impl Conn {
    pub(crate) fn tmf_timeout(&self) -> Duration {
        TMF_TIMEOUT.min(self.sh.cfg.cmd_timeout)
    }

    pub(crate) fn send_tmf(&mut self, function: TaskMgmtFunction, task_tag: u64) -> Option<u64> {
        if self.phase != Phase::Live || self.neg.req_lim < 1 || self.sq_free == 0 {
            return None;
        }
        self.engine.tmf_seq += 1;
        let tag = TMF_TAG | self.engine.tmf_seq;
        // Two slots, alternating: an ABORT TASK the HCA may still be
        // retransmitting is not overwritten by the LUN RESET after it.
        let slot = self.engine.cmds.len() + (self.engine.tmf_seq % TMF_SLOTS as u64) as usize;
        let iu = TskMgmt {
            sol_not: 0,
            tag,
            lun: self.engine.lun,
            function,
            task_tag,
        };
        let n = self.send_slot_mut(slot).map(|b| iu.encode(b))?.ok()?;
        self.post_iu(slot, n, wr(WR_TMF, 0)).ok()?;
        self.neg.req_lim -= 1;
        Some(tag)
    }

    pub(crate) fn start_reset(&mut self) {
        self.sh
            .stats
            .lun_resets_sent
            .fetch_add(1, Ordering::Relaxed);
        match self.send_tmf(TaskMgmtFunction::LunReset, 0) {
            Some(tag) => {
                tracing::warn!(bdev = %self.sh.cfg.name, channel = self.ch, "SRP: sending LUN RESET");
                self.engine.tmf = Tmf::Reset {
                    tag,
                    deadline: self.now + self.tmf_timeout(),
                    seq: self.engine.send_seq,
                };
            }
            None => {
                self.engine.tmf = Tmf::Idle;
                self.lose("no credit left for a LUN RESET");
            }
        }
    }

    /// Looks for commands past `cmd_timeout` and escalates.
    pub(crate) fn scan_timeouts(&mut self) -> usize {
        if self.phase != Phase::Live {
            return 0;
        }
        let now = self.now;
        match self.engine.tmf {
            Tmf::Abort { deadline, .. } if now > deadline => {
                tracing::warn!(bdev = %self.sh.cfg.name, channel = self.ch,
                    "ABORT TASK not answered within {} s: LUN RESET", self.tmf_timeout().as_secs_f64());
                self.start_reset();
                return 1;
            }
            Tmf::Reset { deadline, .. } if now > deadline => {
                tracing::warn!(bdev = %self.sh.cfg.name, channel = self.ch,
                    "LUN RESET not answered within {} s: reconnecting", self.tmf_timeout().as_secs_f64());
                self.lose("task management not answered");
                return 1;
            }
            Tmf::Idle => {}
            _ => return 0,
        }
        if !self.engine.reset_waiters.is_empty() {
            self.start_reset();
            return 1;
        }
        if self
            .engine
            .starved_since
            .is_some_and(|t| now.duration_since(t) > self.engine.cmd_timeout)
        {
            self.engine.starved_since = None;
            self.sh.stats.timeouts.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(bdev = %self.sh.cfg.name, channel = self.ch,
                "no credit from the target for {} s with I/O waiting: reconnecting",
                self.engine.cmd_timeout.as_secs_f64());
            self.lose("the target granted no credit within cmd_timeout");
            return 1;
        }
        let tmo = self.engine.cmd_timeout;
        let mut oldest: Option<(usize, Instant)> = None;
        for (i, c) in self.engine.cmds.iter().enumerate() {
            if c.state == CmdState::Sent
                && !c.timed_out
                && now.duration_since(c.sent_at) > tmo
                && oldest.is_none_or(|(_, t)| c.sent_at < t)
            {
                oldest = Some((i, c.sent_at));
            }
        }
        let Some((ci, _)) = oldest else {
            return 0;
        };
        self.engine.cmds[ci].timed_out = true;
        self.sh.stats.timeouts.fetch_add(1, Ordering::Relaxed);
        self.sh.stats.aborts_sent.fetch_add(1, Ordering::Relaxed);
        let c = self.engine.cmds[ci];
        let task = c.tag(ci);
        match self.send_tmf(TaskMgmtFunction::AbortTask, task) {
            Some(tag) => {
                tracing::warn!(bdev = %self.sh.cfg.name, channel = self.ch, lba = c.lba,
                    "SRP command timed out after {} s: ABORT TASK", tmo.as_secs_f64());
                self.engine.tmf = Tmf::Abort {
                    ci: ci as u16,
                    gen: c.gen,
                    tag,
                    deadline: now + self.tmf_timeout(),
                };
            }
            None => self.lose("a command timed out and no credit is left for ABORT TASK"),
        }
        1
    }

    pub(crate) fn on_tmf_rsp(&mut self, tag: u64, code: Option<u8>) {
        let ok = code == Some(tsk_mgmt_rsp::COMPLETE);
        match self.engine.tmf {
            Tmf::Abort {
                ci, gen, tag: t, ..
            } if t == tag => {
                self.engine.tmf = Tmf::Idle;
                let ci = ci as usize;
                let still =
                    self.engine.cmds[ci].state == CmdState::Sent && self.engine.cmds[ci].gen == gen;
                if ok {
                    self.sh
                        .stats
                        .aborts_succeeded
                        .fetch_add(1, Ordering::Relaxed);
                    if still {
                        tracing::info!(bdev = %self.sh.cfg.name, channel = self.ch, "ABORT TASK succeeded: retrying the command");
                        self.retry_cmd(ci, false);
                    }
                } else if still {
                    tracing::warn!(bdev = %self.sh.cfg.name, channel = self.ch, code, "ABORT TASK failed: LUN RESET");
                    self.start_reset();
                }
            }
            Tmf::Reset { tag: t, seq, .. } if t == tag => {
                self.engine.tmf = Tmf::Idle;
                if ok {
                    self.sh
                        .stats
                        .lun_resets_succeeded
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::info!(bdev = %self.sh.cfg.name, channel = self.ch, "LUN RESET succeeded: resending what was outstanding");
                    // The target dropped every task of the LU that it had
                    // when the reset arrived: send those again (not the
                    // ones sent after it).
                    for ci in 0..self.engine.cmds.len() {
                        let c = self.engine.cmds[ci];
                        if c.state == CmdState::Sent && c.seq <= seq {
                            self.retry_cmd(ci, false);
                        }
                    }
                    self.finish_resets(IoStatus::Success);
                    // The reset covered the whole LU, every nexus (ib_srpt
                    // has one per channel): the other channels resend too.
                    if self.sh.active.load(Ordering::Relaxed) > 1 {
                        self.sh
                            .to_coord(crate::session::Event::LunReset { ch: self.ch });
                    }
                } else {
                    self.finish_resets(IoStatus::PathError);
                    self.lose("LUN RESET failed");
                }
            }
            _ => self.unknown_tag(tag, "task management response"),
        }
    }

    /// Another channel of the session reset the LU: what this channel had
    /// outstanding was dropped by the target (without TAS no answer comes):
    /// send it again, as srp_reset_device finishes every channel's requests.
    pub(crate) fn lun_reset_elsewhere(&mut self) {
        for ci in 0..self.engine.cmds.len() {
            if self.engine.cmds[ci].state == CmdState::Sent {
                self.retry_cmd(ci, false);
            }
        }
        self.pump();
    }

    pub(crate) fn finish_resets(&mut self, st: IoStatus) {
        while let Some(ri) = self.engine.reset_waiters.pop() {
            self.engine.reqs[ri as usize].status = st;
            self.complete_req(ri);
        }
    }

    // -------------------------------------------------------------------
    // Connection loss

    /// The connection is gone: everything sent is queued to be sent again
    /// (the target will not answer it); credits are void.
    pub(crate) fn requeue_all(&mut self) {
        self.engine.tmf = Tmf::Idle;
        self.engine.starved_since = None;
        self.engine.answers.clear();
        // A reset's effect (nothing left in flight on the old nexus) is
        // reached by the reconnect itself.
        self.finish_resets(IoStatus::Success);
        self.engine.inflight = 0;
        for ci in 0..self.engine.cmds.len() {
            let c = &mut self.engine.cmds[ci];
            if c.state != CmdState::Sent {
                continue;
            }
            c.state = CmdState::Queued;
            c.timed_out = false;
            c.losses += 1;
            if c.losses > MAX_LOSSES {
                // It went down with the connection every time: fail it
                // rather than take the session down again and again.
                tracing::warn!(bdev = %self.sh.cfg.name, lba = c.lba,
                    "command outstanding at {MAX_LOSSES} connection losses: failing it");
                self.finish_cmd(ci, IoStatus::PathError);
                continue;
            }
            self.engine.resendq.push_back(ci as u16);
        }
        self.engine.rsp_free = (0..RSP_SLOTS as u16).collect();
        self.neg.req_lim = 0;
        self.sq_free = 0;
        self.info_publish();
    }

    /// Completes every request with `st` (the connection is down). Returns
    /// how many.
    pub(crate) fn fail_everything(&mut self, st: IoStatus) -> usize {
        self.engine.resendq.clear();
        while let Some((c, tag, _)) = self.remote_backlog.pop_front() {
            self.push_done(c, tag, st);
        }
        for ci in 0..self.engine.cmds.len() {
            if self.engine.cmds[ci].state != CmdState::Free {
                self.free_cmd(ci);
            }
        }
        self.engine.waitq.clear();
        let mut n = 0;
        for ri in 0..self.engine.reqs.len() as u32 {
            if self.engine.reqs[ri as usize].busy {
                self.engine.reqs[ri as usize].status = st;
                self.complete_req(ri);
                n += 1;
            }
        }
        self.engine.reset_waiters.clear();
        n
    }
}
