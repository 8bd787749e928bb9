//! The daemon's state and its JSON-RPC methods.
//!
//! Every management operation — from the config file at start-up, from the
//! RPC socket, from `strata bench` — goes through [`Daemon::call`], so the
//! config file, `save_config` and the RPC API can never disagree.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bdev::{Bdev, BdevRegistry, IoType};
use reactor::ReactorHandle;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::rpc::{code, params, srp_initiator, Handler, RpcError};

/// The running daemon.
pub struct Daemon {
    /// Reactor cores, as configured.
    pub cores: Vec<usize>,
    /// Reactor idle sleep, as configured (saved by `save_config`).
    pub idle_sleep_us: u64,
    /// Messages to reactors.
    pub reactors: ReactorHandle,
    /// All bdevs.
    pub registry: Arc<BdevRegistry>,
    /// vhost-user-blk controllers, in creation order.
    vhost: Mutex<Vec<vhost::Controller>>,
    /// SRP targets with the parameters they were created with (for
    /// `save_config`), in creation order.
    srpt: Mutex<Vec<(srpt::Target, Value)>>,
    /// Background pollers owned by a bdev (raid1 rebuild/resync), by bdev
    /// name: set the flag to stop them.
    tasks: Mutex<Vec<(String, Arc<AtomicBool>)>>,
    /// Serialises management operations (never taken on the data path).
    control: Mutex<()>,
    /// Creation order of every bdev, target and controller ("kind:name" →
    /// sequence number), so that `save_config` replays them in the order
    /// they were made: an SRP initiator attached to a target of this very
    /// daemon must come after the target, the target after its LUNs' bdevs.
    created: Mutex<std::collections::HashMap<String, u64>>,
}

impl Daemon {
    /// A daemon over running reactors.
    pub fn new(cores: Vec<usize>, idle_sleep_us: u64, reactors: ReactorHandle) -> Daemon {
        Daemon {
            cores,
            idle_sleep_us,
            reactors,
            registry: Arc::new(BdevRegistry::new()),
            vhost: Mutex::new(Vec::new()),
            tasks: Mutex::new(Vec::new()),
            srpt: Mutex::new(Vec::new()),
            control: Mutex::new(()),
            created: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Runs one method.
    pub fn call(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        let handler = METHODS
            .iter()
            .find(|(name, _)| *name == method)
            .map(|(_, h)| *h)
            .ok_or_else(|| {
                RpcError::new(code::METHOD_NOT_FOUND, format!("unknown method `{method}`"))
            })?;
        // Management operations are serialised; read-only queries and the
        // diagnostic data-path call (which may wait for a slow device) are not.
        if UNSERIALISED.contains(&method) {
            return handler(self, params);
        }
        let _guard = self.control.lock().unwrap_or_else(|e| e.into_inner());
        let r = handler(self, params);
        if let Ok(Value::String(name)) = &r {
            if method.ends_with("_create") || method == "bdev_srp_attach" {
                let mut c = lock(&self.created);
                let seq = c.values().max().copied().unwrap_or(0) + 1;
                c.insert(creation_key(method, name), seq);
            }
        }
        r
    }

    /// Stops the front ends: they take no new I/O and complete what they
    /// hold (needs the reactors still running).
    pub fn stop_frontends(&self) {
        let _guard = self.control.lock().unwrap_or_else(|e| e.into_inner());
        let targets: Vec<(srpt::Target, Value)> = lock(&self.srpt).drain(..).collect();
        for (t, _) in targets.into_iter().rev() {
            let name = t.name().to_string();
            let luns: Vec<String> = t.config().luns.iter().map(|(_, b)| b.clone()).collect();
            if let Err(e) = t.delete(SRPT_DELETE_TIMEOUT) {
                tracing::warn!(target_name = %name, error = %e, "SRP target did not stop cleanly");
            }
            for b in luns {
                self.registry.release(&b, &srpt_owner(&name));
            }
        }
        let ctrls: Vec<vhost::Controller> = lock(&self.vhost).drain(..).collect();
        for c in ctrls.into_iter().rev() {
            let name = c.name().to_string();
            let bdev = c.params().bdev.clone();
            c.delete();
            self.registry.release(&bdev, &vhost_owner(&name));
        }
    }

    /// Tears everything down (front ends, then bdevs users before bases).
    pub fn shutdown(&self) {
        self.stop_frontends();
        let _guard = self.control.lock().unwrap_or_else(|e| e.into_inner());
        for (_, stop) in lock(&self.tasks).drain(..) {
            stop.store(true, Ordering::Release);
        }
        self.registry.clear();
    }

    /// Runs `poll` as a poller on reactor 0 until the bdev `owner` is
    /// deleted (or the daemon stops).
    fn spawn_task(
        &self,
        owner: &str,
        name: &'static str,
        make: impl FnOnce() -> Box<dyn FnMut() -> usize> + Send + 'static,
    ) {
        let stop = Arc::new(AtomicBool::new(false));
        lock(&self.tasks).push((owner.to_string(), Arc::clone(&stop)));
        let sent = self.reactors.send(0, move || {
            let mut poll = make();
            let id = std::rc::Rc::new(std::cell::Cell::new(None));
            let id2 = std::rc::Rc::clone(&id);
            let pid = reactor::register_poller(name, move || {
                if stop.load(Ordering::Acquire) {
                    if let Some(i) = id2.take() {
                        reactor::unregister_poller(i);
                    }
                    return reactor::Poll::Idle;
                }
                reactor::Poll::from_count(poll())
            });
            id.set(Some(pid));
        });
        if let Err(e) = sent {
            tracing::error!(owner, error = %e, "cannot start background task");
        }
    }

    /// Stops the background pollers of `owner` and waits until reactor 0
    /// has seen the flag (two message round trips: the poller runs between).
    fn stop_tasks(&self, owner: &str) {
        let mut stopped = false;
        lock(&self.tasks).retain(|(o, stop)| {
            if o == owner {
                stop.store(true, Ordering::Release);
                stopped = true;
                false
            } else {
                true
            }
        });
        if stopped {
            let _ = self.reactors.call(0, || ());
            let _ = self.reactors.call(0, || ());
        }
    }
}

/// Methods that run without the control lock.
const UNSERIALISED: &[&str] = &[
    "rpc_get_methods",
    "reactor_get_stats",
    "bdev_get_bdevs",
    "bdev_io",
    "bdev_raid1_get_status",
    "bdev_srp_get_sessions",
];

/// The method table: name → handler. `rpc_get_methods` lists it.
pub const METHODS: &[(&str, Handler)] = &[
    ("rpc_get_methods", rpc_get_methods),
    ("save_config", save_config),
    ("reactor_get_stats", reactor_get_stats),
    ("bdev_get_bdevs", bdev_get_bdevs),
    ("bdev_delete", bdev_delete),
    ("bdev_null_create", bdev_null_create),
    ("bdev_malloc_create", bdev_malloc_create),
    ("bdev_file_create", bdev_file_create),
    ("bdev_error_create", bdev_error_create),
    ("bdev_error_inject", bdev_error_inject),
    ("bdev_delay_create", bdev_delay_create),
    ("bdev_cache_create", crate::rpc::cache::bdev_cache_create),
    (
        "bdev_cache_power_cut",
        crate::rpc::cache::bdev_cache_power_cut,
    ),
    ("bdev_io", bdev_io),
    ("bdev_raid1_create", bdev_raid1_create),
    ("bdev_raid1_add_member", bdev_raid1_add_member),
    ("bdev_raid1_remove_member", bdev_raid1_remove_member),
    ("bdev_raid1_fail_member", bdev_raid1_fail_member),
    ("bdev_raid1_get_status", bdev_raid1_get_status),
    ("bdev_srp_attach", srp_initiator::bdev_srp_attach),
    ("bdev_srp_detach", srp_initiator::bdev_srp_detach),
    (
        "bdev_srp_get_sessions",
        srp_initiator::bdev_srp_get_sessions,
    ),
    ("srpt_target_create", srpt_target_create),
    ("srpt_get_sessions", srpt_get_sessions),
    ("srpt_target_delete", srpt_target_delete),
    ("vhost_blk_create", vhost_blk_create),
    ("vhost_get_controllers", vhost_get_controllers),
    ("vhost_delete_controller", vhost_delete_controller),
];

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn vhost_owner(ctrlr: &str) -> String {
    format!("vhost:{ctrlr}")
}

fn rpc_get_methods(_: &Daemon, p: Value) -> Result<Value, RpcError> {
    let _: NoParams = params(p)?;
    Ok(json!(METHODS.iter().map(|(n, _)| *n).collect::<Vec<_>>()))
}

/// The key of `Daemon::created` for what `method` made.
fn creation_key(method: &str, name: &str) -> String {
    let kind = if method.starts_with("srpt_") {
        "srpt"
    } else if method.starts_with("vhost_") {
        "vhost"
    } else {
        "bdev"
    };
    format!("{kind}:{name}")
}

fn save_config(d: &Daemon, p: Value) -> Result<Value, RpcError> {
    let _: NoParams = params(p)?;
    let mut calls: Vec<(String, Value)> = d
        .registry
        .creation_calls()
        .into_iter()
        .chain(
            lock(&d.vhost)
                .iter()
                .map(|c| ("vhost_blk_create".to_string(), json!(c.params()))),
        )
        .chain(
            lock(&d.srpt)
                .iter()
                .map(|(_, p)| ("srpt_target_create".to_string(), p.clone())),
        )
        .collect();
    // Creation order (a stable sort: anything unrecorded keeps its place
    // at the front, bases before users as the registry lists them).
    let created = lock(&d.created);
    calls.sort_by_key(|(m, p)| {
        let name = p.get("name").and_then(Value::as_str).unwrap_or("");
        created.get(&creation_key(m, name)).copied().unwrap_or(0)
    });
    let calls: Vec<Value> = calls
        .into_iter()
        .map(|(method, params)| json!({ "method": method, "params": params }))
        .collect();
    Ok(json!({ "cores": d.cores, "idle_sleep_us": d.idle_sleep_us, "calls": calls }))
}

fn reactor_get_stats(d: &Daemon, p: Value) -> Result<Value, RpcError> {
    let _: NoParams = params(p)?;
    let stats: Vec<Value> = d
        .reactors
        .stats()
        .into_iter()
        .map(|s| {
            json!({
                "reactor": s.index,
                "core": s.core,
                "busy_polls": s.busy_polls,
                "idle_polls": s.idle_polls,
                "msgs_sent": s.msgs_sent,
                "msgs_received": s.msgs_received,
                "pollers": s.pollers,
                "timers": s.timers,
                "inflight": s.inflight,
            })
        })
        .collect();
    Ok(json!({ "reactors": stats }))
}

/// The JSON description of one bdev (as `bdev_get_bdevs` returns it).
pub fn bdev_json(registry: &BdevRegistry, b: &Arc<dyn Bdev>) -> Value {
    let i = b.info();
    let supported: serde_json::Map<String, Value> = IoType::ALL
        .iter()
        .map(|t| (t.name().to_string(), json!(i.caps.supports(*t))))
        .collect();
    let claimed_by = registry.claimed_by(&i.name);
    let mut v = json!({
        "name": i.name,
        "kind": i.kind,
        "block_size": i.block_size,
        "num_blocks": i.num_blocks,
        "uuid": bdev::format_uuid(&i.uuid),
        "device_id": b.device_id(),
        "claimed": claimed_by.is_some(),
        "claimed_by": claimed_by,
        "supported_io_types": supported,
        "queue_depth": i.queue_depth,
        "stats": b.stats().to_json(),
    });
    if let Some(ds) = b.driver_specific() {
        v["driver_specific"] = ds;
    }
    v
}

fn bdev_get_bdevs(d: &Daemon, p: Value) -> Result<Value, RpcError> {
    let p: OptName = params(p)?;
    let list = match p.name {
        Some(n) => vec![d.registry.get(&n)?],
        None => d.registry.list(),
    };
    Ok(Value::Array(
        list.iter().map(|b| bdev_json(&d.registry, b)).collect(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameParam {
    name: String,
}

/// `{}`: methods without parameters still reject unknown ones.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParams {}

/// `{"name"?}`: list everything, or the one named.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OptName {
    #[serde(default)]
    name: Option<String>,
}

/// Describes every object of `list`, or only the one named (not found is
/// an error naming `what`).
fn list_named<T>(
    list: &[T],
    name: Option<&str>,
    what: &str,
    name_of: impl Fn(&T) -> &str,
    describe: impl Fn(&T) -> Value,
) -> Result<Value, RpcError> {
    if let Some(n) = name {
        if !list.iter().any(|x| name_of(x) == n) {
            return Err(RpcError::new(
                code::NOT_FOUND,
                format!("{what} `{n}` does not exist"),
            ));
        }
    }
    Ok(Value::Array(
        list.iter()
            .filter(|x| name.is_none_or(|n| name_of(x) == n))
            .map(describe)
            .collect(),
    ))
}

/// Removes the object named `name` from `list`.
fn take_named<T>(
    list: &Mutex<Vec<T>>,
    name: &str,
    what: &str,
    name_of: impl Fn(&T) -> &str,
) -> Result<T, RpcError> {
    let mut list = lock(list);
    let i = list
        .iter()
        .position(|x| name_of(x) == name)
        .ok_or_else(|| RpcError::new(code::NOT_FOUND, format!("{what} `{name}` does not exist")))?;
    Ok(list.remove(i))
}

fn bdev_delete(d: &Daemon, p: Value) -> Result<Value, RpcError> {
    let p: NameParam = params(p)?;
    d.registry.get(&p.name)?;
    if let Some(by) = d.registry.claimed_by(&p.name) {
        return Err(bdev::RegistryError::InUse { name: p.name, by }.into());
    }
    d.stop_tasks(&p.name);
    d.registry.remove(&p.name)?;
    Ok(json!(true))
}

#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct SizedParams {
    name: String,
    num_blocks: u64,
    block_size: u32,
}

fn register(d: &Daemon, b: Arc<dyn Bdev>, method: &str, p: Value) -> Result<Value, RpcError> {
    let name = b.info().name.clone();
    d.registry.add(b, method, p)?;
    Ok(json!(name))
}

fn bdev_null_create(d: &Daemon, raw: Value) -> Result<Value, RpcError> {
    #[derive(Deserialize, serde::Serialize)]
    #[serde(deny_unknown_fields)]
    struct P {
        name: String,
        num_blocks: u64,
        block_size: u32,
        /// Reads zero the buffer (default); false leaves it untouched, as
        /// SPDK's null bdev does.
        #[serde(default = "yes")]
        zero_reads: bool,
    }
    let p: P = params(raw)?;
    d.registry.check_new(&p.name, &[])?;
    let b = Arc::new(
        bdev::null::create(&p.name, p.num_blocks, p.block_size)?.with_zero_reads(p.zero_reads),
    );
    register(d, b, "bdev_null_create", json!(p))
}

fn bdev_malloc_create(d: &Daemon, raw: Value) -> Result<Value, RpcError> {
    let p: SizedParams = params(raw)?;
    d.registry.check_new(&p.name, &[])?;
    let b = Arc::new(bdev::malloc::create(&p.name, p.num_blocks, p.block_size)?);
    register(d, b, "bdev_malloc_create", json!(p))
}

fn bdev_file_create(d: &Daemon, raw: Value) -> Result<Value, RpcError> {
    #[derive(Deserialize, serde::Serialize)]
    #[serde(deny_unknown_fields)]
    struct P {
        name: String,
        filename: String,
        #[serde(default = "default_block_size")]
        block_size: u32,
    }
    let p: P = params(raw)?;
    d.registry.check_new(&p.name, &[])?;
    let b = Arc::new(bdev::file::create(&p.name, &p.filename, p.block_size)?);
    register(d, b, "bdev_file_create", json!(p))
}

fn yes() -> bool {
    true
}

fn default_block_size() -> u32 {
    512
}

fn bdev_error_create(d: &Daemon, raw: Value) -> Result<Value, RpcError> {
    #[derive(Deserialize, serde::Serialize)]
    #[serde(deny_unknown_fields)]
    struct P {
        name: String,
        base: String,
    }
    let p: P = params(raw)?;
    d.registry
        .check_new(&p.name, std::slice::from_ref(&p.base))?;
    let base = d.registry.get(&p.base)?;
    let b = Arc::new(bdev::error::create(&p.name, base)?);
    register(d, b, "bdev_error_create", json!(p))
}

fn bdev_error_inject(d: &Daemon, raw: Value) -> Result<Value, RpcError> {
    let p: bdev::error::InjectParams = params(raw)?;
    let b = d.registry.get(&p.name)?;
    let e = b
        .as_any()
        .downcast_ref::<bdev::error::ErrorBdev>()
        .ok_or_else(|| RpcError::param("name", format!("`{}` is not an error bdev", p.name)))?;
    e.inject(&p)?;
    Ok(json!(true))
}

fn bdev_delay_create(d: &Daemon, raw: Value) -> Result<Value, RpcError> {
    #[derive(Deserialize, serde::Serialize)]
    #[serde(deny_unknown_fields)]
    struct P {
        name: String,
        base: String,
        #[serde(default)]
        read_us: u64,
        #[serde(default)]
        write_us: u64,
    }
    let p: P = params(raw)?;
    d.registry
        .check_new(&p.name, std::slice::from_ref(&p.base))?;
    let base = d.registry.get(&p.base)?;
    let b = Arc::new(bdev::delay::create(&p.name, base, p.read_us, p.write_us)?);
    register(d, b, "bdev_delay_create", json!(p))
}

/// Largest transfer `bdev_io` accepts.
const BDEV_IO_MAX_BYTES: u64 = 16 << 20;

/// `bdev_io`: one diagnostic I/O through the real data path (a channel on
/// reactor 0), answered only once the bdev has completed it. `write` stores
/// a verify pattern derived from `seed` and the block address; `verify`
/// reads and counts blocks that do not hold that pattern. Used by tests and
/// scripts to prove what the daemon acknowledged.
fn bdev_io(d: &Daemon, raw: Value) -> Result<Value, RpcError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "snake_case")]
    enum Op {
        Read,
        Write,
        Verify,
        Flush,
        Unmap,
        WriteZeroes,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct P {
        name: String,
        op: Op,
        #[serde(default)]
        offset_blocks: u64,
        #[serde(default)]
        num_blocks: u64,
        #[serde(default)]
        seed: u64,
        #[serde(default)]
        fua: bool,
    }
    let p: P = params(raw)?;
    let b = d.registry.get(&p.name)?;
    let bs = b.info().block_size as u64;
    let has_data = matches!(p.op, Op::Read | Op::Write | Op::Verify);
    if has_data && p.num_blocks.saturating_mul(bs) > BDEV_IO_MAX_BYTES {
        return Err(RpcError::param(
            "num_blocks",
            format!("at most {} bytes per call", BDEV_IO_MAX_BYTES),
        ));
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let op_is_write = matches!(p.op, Op::Write);
    let op_verify = matches!(p.op, Op::Verify);
    let (off, n, seed, fua) = (p.offset_blocks, p.num_blocks, p.seed, p.fua);
    let kind = match p.op {
        Op::Read | Op::Verify => IoType::Read,
        Op::Write => IoType::Write,
        Op::Flush => IoType::Flush,
        Op::Unmap => IoType::Unmap,
        Op::WriteZeroes => IoType::WriteZeroes,
    };
    d.reactors
        .send(0, move || {
            let mut ch = match bdev::open_channel(&b) {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            let len = if has_data { (n * bs) as usize } else { 0 };
            let mut buf = bdev::testing::AlignedBuf::new(len);
            if op_is_write {
                bdev::testing::fill_pattern(buf.as_mut_slice(), off, bs as usize, seed);
            }
            let iov = [buf.iovec(0, len)];
            let iovs: &[bdev::IoVec] = if has_data { &iov } else { &[] };
            let req = bdev::IoRequest {
                io_type: kind,
                offset_blocks: off,
                num_blocks: n,
                iovs,
                fua,
            };
            // SAFETY: `buf` moves into the poller below and is dropped only
            // after the completion has been reported.
            if unsafe { ch.submit(&req, 1) }.is_err() {
                let _ = tx.send(Err("bdev queue is full".to_string()));
                return;
            }
            reactor::inflight_add(1);
            let id = std::rc::Rc::new(std::cell::Cell::new(None));
            let id2 = std::rc::Rc::clone(&id);
            let mut done = false;
            let pid = reactor::register_poller("bdev_io", move || {
                if done {
                    return reactor::Poll::Idle;
                }
                let mut status = None;
                ch.poll(&mut |_, st| status = Some(st));
                let Some(st) = status else {
                    return reactor::Poll::Idle;
                };
                done = true;
                reactor::inflight_sub(1);
                let mismatched = if op_verify && st.is_ok() {
                    buf.as_slice()
                        .chunks(bs as usize)
                        .enumerate()
                        .filter(|(i, c)| {
                            !bdev::testing::check_pattern(c, off + *i as u64, bs as usize, seed)
                        })
                        .count()
                } else {
                    0
                };
                let _ = tx.send(Ok((st, mismatched)));
                if let Some(i) = id2.get() {
                    reactor::unregister_poller(i);
                }
                reactor::Poll::Busy
            });
            id.set(Some(pid));
        })
        .map_err(|e| RpcError::new(code::FAILED, e.to_string()))?;
    let r = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .map_err(|_| RpcError::new(code::FAILED, "the I/O did not complete within 60 s"))?
        .map_err(|e| RpcError::new(code::FAILED, e))?;
    let (st, mismatched) = r;
    let mut v = json!({ "status": st.name() });
    if op_verify {
        v["mismatched_blocks"] = json!(mismatched);
    }
    Ok(v)
}

impl From<vhost::VhostError> for RpcError {
    fn from(e: vhost::VhostError) -> Self {
        match e {
            vhost::VhostError::InvalidParam { field, reason } => RpcError::param(field, reason),
            vhost::VhostError::NumQueues(n) => RpcError::param(
                "num_queues",
                format!("must be between 1 and {}, got {n}", vhost::MAX_QUEUES),
            ),
            vhost::VhostError::UnknownCore { .. } => RpcError::param("cores", e.to_string()),
            other => RpcError::new(code::FAILED, crate::rpc::error_chain(&other)),
        }
    }
}

fn vhost_blk_create(d: &Daemon, raw: Value) -> Result<Value, RpcError> {
    let p: vhost::VhostBlkParams = params(raw)?;
    if lock(&d.vhost).iter().any(|c| c.name() == p.name) {
        return Err(RpcError::new(
            code::EXISTS,
            format!("vhost controller `{}` already exists", p.name),
        ));
    }
    let owner = vhost_owner(&p.name);
    let bdev = d.registry.claim(&p.bdev, &owner)?;
    match vhost::Controller::create(p.clone(), bdev, d.reactors.clone()) {
        Ok(c) => {
            lock(&d.vhost).push(c);
            Ok(json!(p.name))
        }
        Err(e) => {
            d.registry.release(&p.bdev, &owner);
            Err(e.into())
        }
    }
}

fn vhost_get_controllers(d: &Daemon, raw: Value) -> Result<Value, RpcError> {
    let p: OptName = params(raw)?;
    list_named(
        &lock(&d.vhost),
        p.name.as_deref(),
        "vhost controller",
        |c| c.name(),
        |c| c.info(),
    )
}

fn vhost_delete_controller(d: &Daemon, raw: Value) -> Result<Value, RpcError> {
    let p: NameParam = params(raw)?;
    let c = take_named(&d.vhost, &p.name, "vhost controller", |c| c.name())?;
    let bdev = c.params().bdev.clone();
    c.delete();
    d.registry.release(&bdev, &vhost_owner(&p.name));
    Ok(json!(true))
}

fn bdev_raid1_create(d: &Daemon, raw: Value) -> Result<Value, RpcError> {
    let p: bdev::raid1::CreateParams = params(raw)?;
    let r = bdev::raid1::rpc_create(&d.registry, &p)?;
    let name = p.name.clone();
    d.spawn_task(&name, "raid1_background", move || {
        let mut task = r.rebuild_task();
        Box::new(move || task.poll())
    });
    Ok(json!(name))
}

fn bdev_raid1_add_member(d: &Daemon, raw: Value) -> Result<Value, RpcError> {
    let p: bdev::raid1::MemberParams = params(raw)?;
    Ok(bdev::raid1::rpc_add_member(&d.registry, &p)?)
}

fn bdev_raid1_remove_member(d: &Daemon, raw: Value) -> Result<Value, RpcError> {
    let p: bdev::raid1::MemberParams = params(raw)?;
    Ok(bdev::raid1::rpc_remove_member(&d.registry, &p)?)
}

fn bdev_raid1_fail_member(d: &Daemon, raw: Value) -> Result<Value, RpcError> {
    let p: bdev::raid1::MemberParams = params(raw)?;
    Ok(bdev::raid1::rpc_fail_member(&d.registry, &p)?)
}

fn bdev_raid1_get_status(d: &Daemon, raw: Value) -> Result<Value, RpcError> {
    let p: bdev::raid1::NameParams = params(raw)?;
    Ok(bdev::raid1::rpc_get_status(&d.registry, &p)?)
}

/// How long `srpt_target_delete` waits for sessions to log out.
const SRPT_DELETE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn srpt_owner(t: &str) -> String {
    format!("srpt:{t}")
}

impl From<srpt::TargetError> for RpcError {
    fn from(e: srpt::TargetError) -> Self {
        match e {
            srpt::TargetError::Config(c) => RpcError::param(c.field, c.reason),
            srpt::TargetError::Luns(m) => RpcError::param("luns", m),
            other => RpcError::new(code::FAILED, crate::rpc::error_chain(&other)),
        }
    }
}

fn srpt_target_create(d: &Daemon, raw: Value) -> Result<Value, RpcError> {
    let p: srpt::SrptTargetParams = params(raw.clone())?;
    if lock(&d.srpt).iter().any(|(t, _)| t.name() == p.name) {
        return Err(RpcError::new(
            code::EXISTS,
            format!("SRP target `{}` already exists", p.name),
        ));
    }
    // Validate first so that a bad field is reported before bdevs are claimed.
    p.validate()
        .map_err(|c| RpcError::param(c.field, c.reason))?;
    let owner = srpt_owner(&p.name);
    let mut claimed: Vec<String> = Vec::new();
    let mut luns = Vec::with_capacity(p.luns.len());
    for l in &p.luns {
        match d.registry.claim(&l.bdev, &owner) {
            Ok(b) => {
                claimed.push(l.bdev.clone());
                luns.push((l.lun, b));
            }
            Err(e) => {
                for b in &claimed {
                    d.registry.release(b, &owner);
                }
                return Err(RpcError::param("luns", e.to_string()));
            }
        }
    }
    match srpt::Target::create(&p, luns, d.reactors.clone()) {
        Ok(t) => {
            lock(&d.srpt).push((t, raw));
            Ok(json!(p.name))
        }
        Err(e) => {
            for b in &claimed {
                d.registry.release(b, &owner);
            }
            Err(e.into())
        }
    }
}

fn srpt_get_sessions(d: &Daemon, raw: Value) -> Result<Value, RpcError> {
    let p: OptName = params(raw)?;
    list_named(
        &lock(&d.srpt),
        p.name.as_deref(),
        "SRP target",
        |(t, _)| t.name(),
        |(t, _)| t.sessions_json(),
    )
}

fn srpt_target_delete(d: &Daemon, raw: Value) -> Result<Value, RpcError> {
    let p: NameParam = params(raw)?;
    let (t, _) = take_named(&d.srpt, &p.name, "SRP target", |(t, _)| t.name())?;
    let luns: Vec<String> = t.config().luns.iter().map(|(_, b)| b.clone()).collect();
    let r = t.delete(SRPT_DELETE_TIMEOUT);
    for b in luns {
        d.registry.release(&b, &srpt_owner(&p.name));
    }
    r?;
    Ok(json!(true))
}
