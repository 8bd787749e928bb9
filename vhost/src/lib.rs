//! vhost-user-blk backend over any bdev: polled virtqueues on reactor
//! cores.
//!
//! A [`Controller`] listens on a Unix socket for one frontend at a time
//! (QEMU's `vhost-user-blk-pci`, libblkio's `virtio-blk-vhost-user`) and
//! exposes a [`bdev::Bdev`] as a virtio-blk device. Created from
//! [`VhostBlkParams`] (the `vhost_blk_create` RPC), listed with
//! [`Controller::info`], removed with [`Controller::delete`].
//!
//! # Design
//!
//! **Control plane.** The vhost-user protocol is parsed by the `vhost`
//! crate (`BackendReqHandler`); our request handler
//! implementation (`vhost::vhost_user::VhostUserBackendReqHandlerMut`,
//! in `device.rs`) runs on one control thread per controller.
//! We do *not* use `vhost-user-backend`'s `VhostUserDaemon`: its request
//! handler is private and answers `GET_INFLIGHT_FD` / `SET_INFLIGHT_FD`
//! with "not supported" (v0.24, `handler.rs`), so in-flight tracking — and
//! with it a loss-free backend restart under QEMU's `reconnect=` — cannot
//! be built on it; it also runs an epoll worker thread per queue group and
//! keeps each queue behind a `Mutex`/`RwLock` (`VringT`) that a poller
//! would have to take on every batch.
//!
//! **Data plane.** When a vring is started (kick fd), enabled, has its
//! addresses and a memory table, the control thread builds a
//! `virtio_queue::Queue` from those addresses and moves it, with a
//! snapshot `Arc<GuestMemoryMmap>`, to the queue's reactor
//! (`ReactorHandle::call`), where a poller (`worker.rs`) owns it outright:
//! no lock is shared with the control thread. Changes (memory table, call
//! fd, stop) are posted through a mutex-protected mailbox plus a generation
//! counter the worker checks with one relaxed atomic load per poll. Each
//! queue has a fixed slot array indexed by descriptor head and fixed
//! scratch space for parsing; the bdev channel copies iovecs at submit,
//! so per request there is no allocation, no lock, and no syscall except
//! the interrupt (`eventfd` write, once per poll, only when
//! `needs_notification` says so under EVENT_IDX). Guest kicks are turned
//! off (`VRING_USED_F_NO_NOTIFY`; with EVENT_IDX `avail_event` is never
//! advanced) and the avail ring is polled.
//!
//! Known costs: `Queue::pop_descriptor_chain` and the descriptor walk
//! read guest memory through `vm-memory` (a binary search over the
//! regions per access, volatile copies); the bdev `Channel` keeps its own
//! slab and statistics per request; the reactor's in-flight counter is a
//! thread-local updated once per poll.
//!
//! One frontend is served at a time: a second connection waits in the
//! listen backlog until the first closes (QEMU's reconnect relies on
//! exactly this).
//!
//! The queues of one disk are spread over reactors (`cores`, or all
//! reactors round-robin starting at a rotating offset), unlike SPDK which
//! keeps a whole disk on one core.
//!
//! **Zero copy.** Each data descriptor is translated to host addresses
//! with bounds checks against the memory regions (a descriptor spanning
//! two regions becomes two iovecs); the bdev request's iovecs point into
//! guest memory. The snapshot a request was translated against stays
//! mapped until nothing is in flight (a replaced snapshot is kept in a
//! retired list). Every mapped region is registered in the process memory
//! map ([`bdev::memmap`], `mem.rs`) for exactly as long as it is mapped —
//! from SET_MEM_TABLE / ADD_MEM_REG until it has left the table
//! (REM_MEM_REG, a new table, the connection's end) *and* the last
//! snapshot holding it is gone — so a transport below the bdev (RDMA)
//! can reach guest pages without a bounce buffer.
//!
//! **Hostile guests** (`request.rs`, `chain.rs`): every chain is walked
//! with a time-to-live against loops, indirect tables are checked, every
//! address is checked against guest memory. The accepted layout is a
//! 16-byte readable header, data descriptors, a writable status descriptor
//! last. Wrong header size, data direction, misalignment to the block
//! size, out-of-range sectors, too many segments, a write/discard/
//! write-zeroes on a read-only device get `IOERR`; unknown request types
//! and unknown discard/write-zeroes flags get `UNSUPP`. A chain with no
//! trustworthy status location (malformed chain, last descriptor not
//! writable) gets a used entry of length 0 and no status write; a head out
//! of range or reused while in flight is dropped and counted.
//!
//! **In-flight tracking** (`inflight.rs`): with `INFLIGHT_SHMFD` each
//! popped head is recorded in the shared area and cleared on completion;
//! a restarted backend resubmits what was left, in pop order, and resumes
//! the avail ring at `used->idx + in flight`.
//!
//! **Shutdown.** Workers count their requests with
//! `reactor::inflight_add`/`inflight_sub`, stop popping once reactors are
//! draining and complete what they hold. [`Controller::delete`] stops
//! accepting, closes the connection, drains every queue (each in-flight
//! request is completed to the guest) and removes the socket.

mod chain;
mod controller;
mod device;
mod inflight;
mod mem;
mod request;
mod virtio;
mod worker;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use controller::Controller;

/// Most queues per controller.
pub const MAX_QUEUES: usize = 64;

fn one() -> u16 {
    1
}

/// Parameters of `vhost_blk_create`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct VhostBlkParams {
    /// Controller name.
    pub name: String,
    /// Unix socket path to listen on.
    pub socket: PathBuf,
    /// Name of the bdev to expose.
    pub bdev: String,
    /// Virtqueues (1 to 64; default 1).
    #[serde(default = "one")]
    pub num_queues: u16,
    /// Refuse writes (also implied by a read-only bdev).
    #[serde(default)]
    pub readonly: bool,
    /// CPUs (reactor cores) to spread the queues over; default all.
    #[serde(default)]
    pub cores: Option<Vec<usize>>,
}

/// Errors creating a controller.
#[derive(Debug, thiserror::Error)]
pub enum VhostError {
    /// A parameter is wrong.
    #[error("invalid parameter `{field}`: {reason}")]
    InvalidParam {
        /// The parameter.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// `num_queues` out of range.
    #[error("num_queues must be between 1 and 64, got {0}")]
    NumQueues(u32),
    /// A core in `cores` has no reactor.
    #[error("core {core} has no reactor (reactor cores: {reactors})")]
    UnknownCore {
        /// The core asked for.
        core: usize,
        /// The reactor cores.
        reactors: String,
    },
    /// The socket path exists and is not a socket.
    #[error("{0} already exists and is not a socket")]
    SocketExists(PathBuf),
    /// Another server listens on the socket path.
    #[error("{0} is in use by another server")]
    SocketInUse(PathBuf),
    /// The socket could not be created.
    #[error("cannot listen on {path}")]
    Bind {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The control thread could not be started.
    #[error("cannot start the controller thread")]
    Spawn(#[source] std::io::Error),
}
