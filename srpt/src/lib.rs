//! # srpt — the strata SRP target
//!
//! An SRP (SCSI RDMA Protocol) target in the style of Linux `ib_srpt`,
//! running on strata's reactors: it listens with rdma_cm on `IP:PORT`, takes
//! `SRP_LOGIN_REQ` from the connect private data (the 56-byte
//! `srp_login_req_rdma` the Linux initiator sends with `dest=IP:PORT`),
//! answers `SRP_LOGIN_RSP` in the accept private data (52 bytes, well within
//! the 196 an IB CM REP carries) or `SRP_LOGIN_REJ` in the reject private
//! data, and serves SCSI commands on its LUNs (the [`scsi`] crate's disk
//! LUN over [`bdev`] devices) with RDMA READ/WRITE data movement.
//!
//! ## Objects and threads
//!
//! * A [`Target`] is the control-plane object: its validated configuration
//!   ([`SrptTargetParams`] → [`TargetConfig`]), its LUNs, and the list of its
//!   channels (a mutex taken on login, logout and RPC only, never per I/O).
//! * Its rdma_cm event channel and listening id live in a **CM poller** on
//!   one reactor ([`TargetOptions::cm_reactor`]). The poller decides logins
//!   (target port id, ACL, IU length, descriptor formats, multichannel
//!   action) and routes connection events (`Established`, `Disconnected`)
//!   as messages to the reactor owning the channel.
//! * Each accepted login becomes a **channel** (one RC QP) owned by one
//!   reactor, chosen round robin. The channel owns everything its data path
//!   touches: its CM id and QP, one CQ (send and receive), its receive
//!   buffers, its send buffers, a registered data-buffer pool, one bdev
//!   channel per LUN and a fixed slab of command contexts. Its poller
//!   drains the CQ, polls the bdev channels and resumes waiting commands. No
//!   lock and no allocation per command.
//!
//! ## Login
//!
//! * The target port id must equal `id_ext ‖ ioc_guid`, else `LOGIN_REJ`
//!   `UNABLE_ASSOCIATE_CHANNEL` (as `ib_srpt`).
//! * The initiator port id must be admitted by the ACL, else `LOGIN_REJ`
//!   `CHANNEL_LIMIT_REACHED` (as `ib_srpt` when no ACL matches), logged. An
//!   empty ACL admits nobody, `["*"]` everybody.
//! * `req_it_iu_len` must be in 64..=[`MAX_IT_IU_LEN`], else
//!   `REQ_IT_IU_LENGTH_TOO_LARGE`. The response grants it as `max_it_iu_len`
//!   and `max_ti_iu_len` (as `ib_srpt`); receive buffers are that large.
//! * Immediate data is granted when requested, at the initiator's offset
//!   (68 for Linux), up to `max_it_iu_len`.
//! * Multichannel: `SINGLE` logs out (`SRP_T_LOGOUT` reason 4, then
//!   disconnect) the initiator's other channels and answers `TERMINATED`;
//!   `MULTI` keeps them and answers `MAINTAINED`.
//! * The QP's receives are posted before `rdma_accept`; IUs that arrive
//!   before the target sees `Established` wait (as `ib_srpt`'s wait list).
//!
//! ## Credits
//!
//! `req_lim_delta` of the login response is the queue depth `N` (default
//! 128): `N` receive buffers are posted. The Linux initiator keeps one of
//! them for task management (`can_queue = req_lim - 1`), so a LUN RESET can
//! always be sent. A command holds its receive buffer (descriptors,
//! immediate data) until its `SRP_RSP` is posted; the buffer is reposted
//! first and its credit returned in that response. Credits of IUs answered
//! by nobody (aborted commands) ride on the next response, e.g. the task
//! management response.
//!
//! ## Data movement and buffers
//!
//! Each channel has a registered pool (16 MiB by default) allocated in 4 KiB
//! pages; a command takes one contiguous *window* of up to 1 MiB and moves
//! its data through it chunk by chunk, so a 64 MiB command
//! (`max_sect=131072`) works with bounded memory and a command that finds
//! the pool empty waits (FIFO) instead of allocating:
//!
//! * READ: bdev read into the window → RDMA WRITE to the initiator's
//!   descriptors → ... → the last chunk's WRITEs and the `SRP_RSP` are
//!   posted together (RC ordering puts the data first).
//! * WRITE: RDMA READ from the descriptors into the window (or the
//!   immediate data, written zero-copy from the receive buffer when the
//!   bdev needs no alignment) → bdev write → ... → `SRP_RSP` GOOD only after
//!   the last bdev write completed: an acknowledged write is in the bdev.
//! * Descriptors: direct; indirect with the whole table inline; indirect
//!   with a partial table, the full table fetched by RDMA READ (up to 2048
//!   entries). A chunk posts at most 64 RDMA work requests; the send queue
//!   is sized for `2N + 4·64` and commands wait for free slots.
//! * Non-block commands (INQUIRY, MODE SENSE, REPORT LUNS, READ CAPACITY,
//!   ...) are answered from the LUN description; data-in up to 64 KiB.
//!
//! ## Errors
//!
//! * An undecodable `SRP_CMD` with a tag: CHECK CONDITION, ILLEGAL REQUEST,
//!   INVALID FIELD IN COMMAND INFORMATION UNIT (0x0E/0x03). Descriptors that
//!   describe less than the CDB transfers: the same, with the overflow
//!   residual; more: GOOD with the underflow residual.
//! * An IU shorter than 16 bytes or of an unknown type: `SRP_T_LOGOUT` and
//!   disconnect.
//! * bdev failures map to sense with [`scsi::sense_for_block_failure`]:
//!   medium error → MEDIUM ERROR (0x11/0x0C), path error → HARDWARE ERROR
//!   0x44 (the initiator fails over), read-only → DATA PROTECT.
//! * A failed RDMA work request (bad rkey, peer gone) puts the RC QP in the
//!   error state: the channel disconnects and drains.
//!
//! ## Task management
//!
//! ABORT TASK (same channel; a task that does not exist is FUNCTION
//! COMPLETE, as SAM says), ABORT TASK SET, CLEAR TASK SET and LUN RESET
//! (every channel of the I_T nexus: the Linux initiator sends a LUN RESET on
//! its first channel and then fails the commands of all of them). Aborted
//! commands get no response; the task management response is sent only
//! once every aborted command has no RDMA or bdev I/O in flight, because the
//! initiator unmaps their buffers as soon as it sees it. CLEAR ACA and
//! unknown functions: FUNCTION NOT SUPPORTED.
//!
//! ## Logout and disconnect
//!
//! `SRP_I_LOGOUT` stops new commands, lets those in flight finish, then
//! disconnects. A disconnect (either side) moves the QP to the error state;
//! the channel drains — bdev I/O already submitted completes before any
//! buffer is freed — and releases everything. A write is only acknowledged
//! after the bdev completed it, so no acknowledged write is lost.
//! [`Target::delete`] stops listening, logs every channel out and waits for
//! them to drain.

#![warn(missing_docs)]

mod channel;
pub mod config;
mod pool;
mod target;

pub use config::{Acl, ConfigError, LunParams, SrptTargetParams, TargetConfig};
pub use target::{lun_config, Target, TargetError, TargetOptions, MAX_IT_IU_LEN, MIN_IT_IU_LEN};

/// Default credits (receive buffers) per channel.
pub const DEFAULT_QUEUE_DEPTH: u32 = 128;
