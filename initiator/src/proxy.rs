//! Consumers on a reactor that has no channel of the session (`ch_count`
//! below the number of reactors, or truncated at login): their requests
//! travel to a channel's reactor as messages and the completions come back
//! the same way. This costs a message (an allocation) each way per request,
//! which the one-channel-per-reactor default never pays. Control-plane
//! threads (raid1 reading superblocks at create, say) get the same through
//! the control ring, with completions in a locked queue.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bdev::{BdevChannel, IoRequest, IoStatus, IoType, IoVec, QueueFull};

use crate::conn::{self, Conn};
use crate::session::Shared;

type Done = Rc<RefCell<VecDeque<(u64, IoStatus)>>>;

thread_local! {
    static PROXIES: RefCell<HashMap<u64, Done>> = RefCell::new(HashMap::new());
}

static NEXT_KEY: AtomicU64 = AtomicU64::new(1);

/// Completions of a control-thread proxy.
type Locked = Arc<Mutex<VecDeque<(u64, IoStatus)>>>;

/// Where the completions of a remote consumer go.
#[derive(Clone)]
pub(crate) enum Forward {
    /// A proxy on reactor `.0` with key `.1`.
    Reactor(usize, u64),
    /// A proxy on a control-plane thread.
    Thread(Locked),
}

impl Forward {
    pub(crate) fn deliver(&self, tag: u64, st: IoStatus) {
        match self {
            Forward::Reactor(to, key) => {
                let key = *key;
                reactor::send(*to, move || deliver(key, tag, st));
            }
            Forward::Thread(q) => q
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_back((tag, st)),
        }
    }
}

/// Key of a control-thread proxy's consumer (no reactor index is this).
const THREAD: usize = usize::MAX;

/// A request that crosses reactors.
pub(crate) struct Forwarded {
    pub io_type: IoType,
    pub lba: u64,
    pub blocks: u64,
    pub fua: bool,
    pub iovs: Vec<IoVec>,
}

impl Forwarded {
    fn new(req: &IoRequest<'_>) -> Forwarded {
        Forwarded {
            io_type: req.io_type,
            lba: req.offset_blocks,
            blocks: req.num_blocks,
            fua: req.fua,
            iovs: req.iovs.to_vec(),
        }
    }

    fn request(&self) -> IoRequest<'_> {
        IoRequest {
            io_type: self.io_type,
            offset_blocks: self.lba,
            num_blocks: self.blocks,
            iovs: &self.iovs,
            fua: self.fua,
        }
    }
}

// SAFETY: the iovecs name memory the submitter lent to this request until
// its completion is reported (the `BdevChannel::submit` contract); the
// channel on the other reactor uses it exactly as a local request would
// (RDMA and bounce copies), and the completion travels back before the
// submitter may reuse it.
unsafe impl Send for Forwarded {}

/// The consumer side, on a reactor without a channel.
pub(crate) struct ProxyChannel {
    sh: Arc<Shared>,
    /// Reactor of the channel that carries our requests.
    owner: usize,
    key: u64,
    here: usize,
    done: Done,
    inflight: usize,
}

impl ProxyChannel {
    /// A proxy on the calling reactor over channel `ch` of the session.
    pub fn new(sh: Arc<Shared>, ch: usize) -> ProxyChannel {
        let key = NEXT_KEY.fetch_add(1, Ordering::Relaxed);
        let done: Done = Rc::new(RefCell::new(VecDeque::new()));
        PROXIES.with(|m| m.borrow_mut().insert(key, Rc::clone(&done)));
        let owner = sh.chans[ch].reactor;
        tracing::debug!(bdev = %sh.cfg.name, owner, "SRP channel proxied from another reactor");
        ProxyChannel {
            owner,
            key,
            here: reactor::current(),
            done,
            inflight: 0,
            sh,
        }
    }
}

impl BdevChannel for ProxyChannel {
    unsafe fn submit(&mut self, req: &IoRequest<'_>, tag: u64) -> Result<(), QueueFull> {
        let f = Forwarded::new(req);
        let (sid, key, here) = (self.sh.id, self.key, self.here);
        self.inflight += 1;
        reactor::send(self.owner, move || {
            let handled = conn::with_conn(sid, |c| {
                c.remote_submit((here, key), Forward::Reactor(here, key), tag, f)
            });
            if handled.is_none() {
                // The session's channel is gone (detached): fail it here.
                reactor::send(here, move || deliver(key, tag, IoStatus::PathError));
            }
        });
        Ok(())
    }

    fn poll(&mut self, done: &mut dyn FnMut(u64, IoStatus)) -> usize {
        let mut n = 0;
        loop {
            let next = self.done.borrow_mut().pop_front();
            let Some((t, s)) = next else { break };
            self.inflight = self.inflight.saturating_sub(1);
            n += 1;
            done(t, s);
        }
        n
    }

    fn inflight(&self) -> usize {
        self.inflight
    }
}

impl Drop for ProxyChannel {
    fn drop(&mut self) {
        PROXIES.with(|m| m.borrow_mut().remove(&self.key));
        let (sid, key, here) = (self.sh.id, self.key, self.here);
        reactor::send(self.owner, move || {
            conn::with_conn(sid, |c| c.remote_gone((here, key)));
        });
    }
}

/// The consumer side on a control-plane thread.
pub(crate) struct ThreadChannel {
    sh: Arc<Shared>,
    owner: usize,
    key: u64,
    done: Locked,
    inflight: usize,
}

impl ThreadChannel {
    /// A proxy for the calling (non-reactor) thread over channel 0.
    pub fn new(sh: Arc<Shared>) -> ThreadChannel {
        ThreadChannel {
            owner: sh.home(),
            key: NEXT_KEY.fetch_add(1, Ordering::Relaxed),
            done: Arc::new(Mutex::new(VecDeque::new())),
            inflight: 0,
            sh,
        }
    }
}

impl BdevChannel for ThreadChannel {
    unsafe fn submit(&mut self, req: &IoRequest<'_>, tag: u64) -> Result<(), QueueFull> {
        let f = Forwarded::new(req);
        let (sid, key) = (self.sh.id, self.key);
        let fwd = Forward::Thread(Arc::clone(&self.done));
        let back = Arc::clone(&self.done);
        let sent = self.sh.reactors.send(self.owner, move || {
            let fwd2 = fwd.clone();
            if conn::with_conn(sid, |c| c.remote_submit((THREAD, key), fwd2, tag, f)).is_none() {
                fwd.deliver(tag, IoStatus::PathError);
            }
        });
        if sent.is_err() {
            back.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_back((tag, IoStatus::PathError));
        }
        self.inflight += 1;
        Ok(())
    }

    fn poll(&mut self, done: &mut dyn FnMut(u64, IoStatus)) -> usize {
        let batch: Vec<(u64, IoStatus)> = self
            .done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        self.inflight = self.inflight.saturating_sub(batch.len());
        for (t, s) in &batch {
            done(*t, *s);
        }
        batch.len()
    }

    fn inflight(&self) -> usize {
        self.inflight
    }
}

impl Drop for ThreadChannel {
    fn drop(&mut self) {
        let (sid, key) = (self.sh.id, self.key);
        let _ = self.sh.reactors.send(self.owner, move || {
            conn::with_conn(sid, |c| c.remote_gone((THREAD, key)));
        });
    }
}

/// Delivers a completion to proxy `key` of the calling reactor.
pub(crate) fn deliver(key: u64, tag: u64, st: IoStatus) {
    if let Some(d) = PROXIES.with(|m| m.borrow().get(&key).cloned()) {
        d.borrow_mut().push_back((tag, st));
    }
}

impl Conn {
    /// A request from a proxy (`id`: its reactor, or THREAD, and key).
    pub(crate) fn remote_submit(&mut self, id: (usize, u64), fwd: Forward, tag: u64, f: Forwarded) {
        let c = match self.remote.get(&id) {
            Some(&c) => c,
            None => {
                let c = self.add_consumer();
                if let Some(Some(x)) = self.consumers.get_mut(c as usize) {
                    x.forward = Some(fwd);
                }
                self.remote.insert(id, c);
                c
            }
        };
        let req = f.request();
        // SAFETY: the proxy's submitter lent the memory until completion
        // (see `Forwarded`).
        if unsafe { self.submit(c, &req, tag) }.is_err() {
            self.remote_backlog.push_back((c, tag, f));
        }
    }

    /// Retries requests from proxies that found the channel full.
    pub(crate) fn retry_remote(&mut self) -> usize {
        let mut n = 0;
        while let Some((c, tag, f)) = self.remote_backlog.pop_front() {
            let req = f.request();
            // SAFETY: as in `remote_submit`.
            if unsafe { self.submit(c, &req, tag) }.is_err() {
                self.remote_backlog.push_front((c, tag, f));
                break;
            }
            n += 1;
        }
        n
    }

    /// The proxy `id` was dropped.
    pub(crate) fn remote_gone(&mut self, id: (usize, u64)) {
        if let Some(c) = self.remote.remove(&id) {
            self.remove_consumer(c);
        }
    }
}
