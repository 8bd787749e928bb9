//! Completions of a channel's queue pair: receives (SRP_RSP, SRP_CRED_REQ,
//! SRP_AER_REQ, SRP_T_LOGOUT, anything else ends the connection), send
//! completions, and what a response means for its command: sense data to
//! status, residual checks, retries.

use std::sync::atomic::Ordering;

use bdev::IoStatus;
use srp::{Encode, Iu, RspFlags};

use crate::conn::{Conn, TMF_SLOTS};
use crate::io::{wr, Answer, CmdKind, CmdState, TMF_TAG, WR_RECV, WR_RSP};
use crate::scsi::{self, Outcome};

/// Answers owed to the target before it counts as a flood.
const MAX_OWED_ANSWERS: usize = 4096;
/// Sense bytes kept from a response.
const SENSE_MAX: usize = 96;

impl Conn {
    pub(crate) fn on_completion(&mut self, c: &rdma::Completion) {
        let kind = c.wr_id >> 56;
        let idx = (c.wr_id & 0xffff_ffff) as usize;
        if kind == WR_RECV {
            match c.status {
                rdma::WcStatus::Success => self.on_recv(idx, c.byte_len as usize),
                rdma::WcStatus::WrFlush => {}
                s => self.lose(&format!("receive failed ({s:?})")),
            }
            return;
        }
        self.sq_free += 1;
        if kind == WR_RSP {
            self.engine.rsp_free.push(idx as u16);
        }
        match c.status {
            rdma::WcStatus::Success | rdma::WcStatus::WrFlush => {}
            rdma::WcStatus::RetryExceeded => {
                self.lose("the target does not answer (transport retries exceeded)")
            }
            s => self.lose(&format!("send failed ({s:?})")),
        }
    }

    pub(crate) fn on_recv(&mut self, slot: usize, len: usize) {
        let Some(bytes) = self.recv_bytes(slot, len) else {
            return;
        };
        // Copy out what we need, then give the slot back at once.
        enum What {
            Rsp {
                tag: u64,
                delta: i32,
                status: u8,
                flags: u8,
                di: u32,
                dout: u32,
                tmf_code: Option<u8>,
                sense: [u8; SENSE_MAX],
                sense_len: usize,
            },
            Cred {
                tag: u64,
                delta: i32,
            },
            Aer {
                tag: u64,
                delta: i32,
            },
            Logout(srp::TLogoutReason),
            Bad(String),
        }
        let what = match srp::decode_iu(bytes) {
            Ok(Iu::Rsp(r)) => {
                let mut sense = [0u8; SENSE_MAX];
                let n = r.sense_data.len().min(SENSE_MAX);
                sense[..n].copy_from_slice(&r.sense_data[..n]);
                What::Rsp {
                    tag: r.tag,
                    delta: r.req_lim_delta,
                    status: r.status,
                    flags: r.flags.0,
                    di: r.data_in_res_cnt,
                    dout: r.data_out_res_cnt,
                    tmf_code: r.tsk_mgmt_response_code(),
                    sense,
                    sense_len: n,
                }
            }
            Ok(Iu::CredReq(r)) => What::Cred {
                tag: r.tag,
                delta: r.req_lim_delta,
            },
            Ok(Iu::AerReq(r)) => What::Aer {
                tag: r.tag,
                delta: r.req_lim_delta,
            },
            Ok(Iu::TLogout(t)) => What::Logout(t.reason),
            Ok(other) => What::Bad(format!("unexpected {:?} from the target", other.opcode())),
            Err(e) => What::Bad(format!("undecodable IU from the target ({e})")),
        };
        self.repost_recv(slot);
        match what {
            What::Rsp {
                tag,
                delta,
                status,
                flags,
                di,
                dout,
                tmf_code,
                sense,
                sense_len,
            } => {
                self.add_credits(delta);
                if tag & TMF_TAG != 0 {
                    self.on_tmf_rsp(tag, tmf_code);
                } else {
                    self.on_cmd_rsp(tag, status, RspFlags(flags), di, dout, &sense[..sense_len]);
                }
            }
            What::Cred { tag, delta } => {
                self.sh.stats.cred_reqs.fetch_add(1, Ordering::Relaxed);
                self.add_credits(delta);
                self.answer_target(Answer::Cred(tag));
            }
            What::Aer { tag, delta } => {
                self.sh.stats.aer_reqs.fetch_add(1, Ordering::Relaxed);
                self.add_credits(delta);
                tracing::info!(bdev = %self.sh.cfg.name, "SRP_AER_REQ from the target (asynchronous event)");
                self.answer_target(Answer::Aer(tag));
            }
            What::Logout(reason) => {
                self.lose(&format!("the target logged us out ({reason:?})"));
            }
            What::Bad(why) => {
                self.sh
                    .stats
                    .protocol_errors
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(bdev = %self.sh.cfg.name, channel = self.ch, "{why}: reconnecting");
                self.lose(&why);
            }
        }
        self.pump();
    }

    pub(crate) fn add_credits(&mut self, delta: i32) {
        // A hostile delta cannot push the count beyond sense.
        self.neg.req_lim = (self.neg.req_lim + i64::from(delta)).clamp(-(1 << 20), 1 << 20);
    }

    /// Owes the target an answer; sent as soon as a send slot is free.
    pub(crate) fn answer_target(&mut self, a: Answer) {
        if self.engine.answers.len() >= MAX_OWED_ANSWERS {
            self.sh
                .stats
                .protocol_errors
                .fetch_add(1, Ordering::Relaxed);
            self.lose("the target floods us with requests we cannot answer");
            return;
        }
        self.engine.answers.push_back(a);
        self.flush_answers();
    }

    /// Sends owed answers while reply slots are free (they come back with
    /// the send completions). Returns how many were sent.
    pub(crate) fn flush_answers(&mut self) -> usize {
        let mut n = 0;
        while let Some(&a) = self.engine.answers.front() {
            let Some(k) = self.engine.rsp_free.pop() else {
                break;
            };
            let iu = match a {
                Answer::Cred(tag) => srp::Iu::CredRsp(srp::CredRsp { tag }),
                Answer::Aer(tag) => srp::Iu::AerRsp(srp::AerRsp { tag }),
            };
            let slot = self.engine.cmds.len() + TMF_SLOTS + k as usize;
            let sent = match self.send_slot_mut(slot).map(|b| iu.encode(b)) {
                Some(Ok(len)) => self.post_iu(slot, len, wr(WR_RSP, k as usize)).is_ok(),
                _ => false,
            };
            if !sent {
                self.engine.rsp_free.push(k);
                break;
            }
            self.engine.answers.pop_front();
            n += 1;
        }
        n
    }

    pub(crate) fn on_cmd_rsp(
        &mut self,
        tag: u64,
        status: u8,
        flags: RspFlags,
        di: u32,
        dout: u32,
        sense: &[u8],
    ) {
        let ci = (tag & 0xffff) as usize;
        let gen = (tag >> 16) as u32;
        let ok = tag >> 48 == 0
            && ci < self.engine.cmds.len()
            && self.engine.cmds[ci].state == CmdState::Sent
            && self.engine.cmds[ci].gen == gen;
        if !ok {
            self.unknown_tag(tag, "SRP_RSP");
            return;
        }
        let c = self.engine.cmds[ci];
        if let CmdKind::Internal { len, .. } = c.kind {
            self.free_cmd(ci);
            let got = if flags.contains(RspFlags::DIUNDER) {
                len.saturating_sub(di)
            } else {
                len
            };
            self.discovery_answer(status, sense, got as usize);
            return;
        }
        let mut outcome = scsi::classify(status, sense);
        if outcome == Outcome::Done(IoStatus::Success) {
            // Residuals: the target moved less (or wanted to move more)
            // data than the command described.
            let short = match c.kind {
                CmdKind::Read => {
                    (flags.contains(RspFlags::DIUNDER) && di > 0)
                        || flags.contains(RspFlags::DIOVER)
                }
                CmdKind::Write { .. } => {
                    (flags.contains(RspFlags::DOUNDER) && dout > 0)
                        || flags.contains(RspFlags::DOOVER)
                }
                _ => false,
            };
            if short {
                self.sh
                    .stats
                    .protocol_errors
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(bdev = %self.sh.cfg.name, lba = c.lba, data_in_residual = di, data_out_residual = dout,
                    "SRP_RSP reports a residual on a good status: failing the command");
                outcome = Outcome::Done(IoStatus::MediumError);
            }
        }
        match outcome {
            Outcome::Retry => self.retry_cmd(ci, false),
            Outcome::Busy => self.retry_cmd(ci, true),
            Outcome::Done(st) => self.finish_cmd(ci, st),
        }
    }
}
