//! A vhost-user-blk controller: a listening socket, one frontend at a
//! time, served by a control thread that drives queue workers on reactors.

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bdev::Bdev;
use reactor::ReactorHandle;
use serde_json::json;
use vhost_user::vhost_user::{BackendReqHandler, Error as VuError};

use crate::device::{DeviceCtx, DeviceHandler};
use crate::virtio::Limits;
use crate::{VhostBlkParams, VhostError, MAX_QUEUES};

/// Spreads the first queue of successive controllers over the reactors.
static NEXT_REACTOR: AtomicUsize = AtomicUsize::new(0);

struct Shared {
    ctx: Arc<DeviceCtx>,
    stop: AtomicBool,
    conn: Mutex<Option<UnixStream>>,
    connections: AtomicU64,
}

/// A running vhost-user-blk controller. Dropping it deletes it.
pub struct Controller {
    params: VhostBlkParams,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Makes `path` free to bind: a socket nobody listens on (left by a
/// process that died) is removed; anything else is an error.
fn claim_socket_path(path: &Path) -> Result<(), VhostError> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(VhostError::SocketExists(path.to_path_buf()));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(VhostError::SocketInUse(path.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => std::fs::remove_file(path)
            .map_err(|source| VhostError::Bind {
                path: path.to_path_buf(),
                source,
            }),
        Err(source) => Err(VhostError::Bind {
            path: path.to_path_buf(),
            source,
        }),
    }
}

impl Controller {
    /// Creates a controller serving `bdev` on `params.socket`, with its
    /// queues on `reactors`, and starts listening.
    pub fn create(
        params: VhostBlkParams,
        bdev: Arc<dyn Bdev>,
        reactors: ReactorHandle,
    ) -> Result<Controller, VhostError> {
        if params.name.is_empty() || params.name.len() > 64 {
            return Err(VhostError::InvalidParam {
                field: "name",
                reason: "must be 1 to 64 characters".into(),
            });
        }
        if params.num_queues == 0 || params.num_queues as usize > MAX_QUEUES {
            return Err(VhostError::NumQueues(params.num_queues as u32));
        }
        if params.socket.as_os_str().is_empty() {
            return Err(VhostError::InvalidParam {
                field: "socket",
                reason: "must not be empty".into(),
            });
        }
        let reactor_list: Vec<usize> = match &params.cores {
            None => {
                let n = reactors.len();
                let start = NEXT_REACTOR.fetch_add(1, Ordering::Relaxed);
                (0..n).map(|k| (start + k) % n).collect()
            }
            Some(cores) => {
                if cores.is_empty() {
                    return Err(VhostError::InvalidParam {
                        field: "cores",
                        reason: "must not be empty".into(),
                    });
                }
                let mut list = Vec::with_capacity(cores.len());
                for &c in cores {
                    let Some(idx) = reactors.cores().iter().position(|&rc| rc == c) else {
                        let have = reactors
                            .cores()
                            .iter()
                            .map(|c| c.to_string())
                            .collect::<Vec<_>>()
                            .join(",");
                        return Err(VhostError::UnknownCore {
                            core: c,
                            reactors: have,
                        });
                    };
                    if list.contains(&idx) {
                        return Err(VhostError::InvalidParam {
                            field: "cores",
                            reason: format!("core {c} is listed twice"),
                        });
                    }
                    list.push(idx);
                }
                list
            }
        };
        let queue_reactor: Vec<usize> = (0..params.num_queues as usize)
            .map(|q| reactor_list[q % reactor_list.len()])
            .collect();
        claim_socket_path(&params.socket)?;
        let listener = UnixListener::bind(&params.socket).map_err(|source| VhostError::Bind {
            path: params.socket.clone(),
            source,
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| VhostError::Bind {
                path: params.socket.clone(),
                source,
            })?;
        let limits = Arc::new(Limits::new(bdev.info(), params.readonly, params.num_queues));
        let ctx = Arc::new(DeviceCtx {
            name: params.name.clone(),
            bdev,
            limits,
            reactors,
            queue_reactor,
            running: Mutex::new(vec![None; params.num_queues as usize]),
        });
        let shared = Arc::new(Shared {
            ctx,
            stop: AtomicBool::new(false),
            conn: Mutex::new(None),
            connections: AtomicU64::new(0),
        });
        let s2 = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("vhost-{}", params.name))
            .spawn(move || listen(listener, s2))
            .map_err(|e| {
                let _ = std::fs::remove_file(&params.socket);
                VhostError::Spawn(e)
            })?;
        tracing::info!(ctrlr = %params.name, socket = %params.socket.display(), bdev = %params.bdev,
            num_queues = params.num_queues, readonly = params.readonly, "vhost-user-blk controller created");
        Ok(Controller {
            params,
            shared,
            thread: Some(thread),
        })
    }

    /// The parameters it was created with.
    pub fn params(&self) -> &VhostBlkParams {
        &self.params
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.params.name
    }

    /// A JSON description for `vhost_get_controllers`.
    pub fn info(&self) -> serde_json::Value {
        let ctx = &self.shared.ctx;
        let running = lock(&ctx.running);
        let cores = ctx.reactors.cores();
        let queues: Vec<serde_json::Value> = ctx
            .queue_reactor
            .iter()
            .enumerate()
            .map(|(i, &r)| {
                let q = running.get(i).and_then(|q| q.as_ref());
                json!({
                    "index": i,
                    "core": cores.get(r).copied().unwrap_or(usize::MAX),
                    "running": q.is_some(),
                    "requests": q.map_or(0, |q| q.requests.load(Ordering::Relaxed)),
                    "errors": q.map_or(0, |q| q.errors.load(Ordering::Relaxed)),
                })
            })
            .collect();
        let mut qcores: Vec<usize> = Vec::new();
        for c in ctx
            .queue_reactor
            .iter()
            .filter_map(|&r| cores.get(r).copied())
        {
            if !qcores.contains(&c) {
                qcores.push(c);
            }
        }
        json!({
            "ctrlr": self.params.name,
            "socket": self.params.socket.display().to_string(),
            "bdev": self.params.bdev,
            "num_queues": self.params.num_queues,
            "readonly": ctx.limits.readonly,
            "cores": qcores,
            "serial": ctx.limits.serial_str(),
            "block_size": ctx.limits.block_size,
            "num_blocks": ctx.limits.num_blocks,
            "connected": lock(&self.shared.conn).is_some(),
            "connections": self.shared.connections.load(Ordering::Relaxed),
            "queues": queues,
        })
    }

    /// Stops accepting, completes the I/O in flight and stops the queues,
    /// closes the connection and removes the socket.
    pub fn delete(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(t) = self.thread.take() else { return };
        self.shared.stop.store(true, Ordering::Release);
        if let Some(c) = lock(&self.shared.conn).as_ref() {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        let _ = t.join();
        let _ = std::fs::remove_file(&self.params.socket);
        tracing::info!(ctrlr = %self.params.name, "vhost-user-blk controller deleted");
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.stop();
    }
}

fn listen(listener: UnixListener, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, _)) => {
                if stream.set_nonblocking(false).is_ok() {
                    serve(stream, &shared);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => {
                tracing::warn!(ctrlr = %shared.ctx.name, error = %e, "accept failed");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn serve(stream: UnixStream, shared: &Shared) {
    let name = &shared.ctx.name;
    let handler = Arc::new(Mutex::new(DeviceHandler::new(Arc::clone(&shared.ctx))));
    let mut req = BackendReqHandler::from_stream(stream, Arc::clone(&handler));
    match req.try_clone_connection() {
        Ok(c) => *lock(&shared.conn) = Some(c),
        Err(e) => {
            tracing::warn!(ctrlr = %name, error = %e, "cannot track the connection");
            return;
        }
    }
    shared.connections.fetch_add(1, Ordering::Relaxed);
    tracing::info!(ctrlr = %name, "frontend connected");
    if !shared.stop.load(Ordering::Acquire) {
        loop {
            if let Err(e) = req.handle_request() {
                match e {
                    VuError::Disconnected | VuError::PartialMessage => {
                        tracing::info!(ctrlr = %name, "frontend disconnected")
                    }
                    e if shared.stop.load(Ordering::Acquire) => {
                        tracing::info!(ctrlr = %name, reason = %e, "connection closed by delete")
                    }
                    e => tracing::warn!(ctrlr = %name, error = %e, "closing the connection"),
                }
                break;
            }
        }
    }
    // Complete what is in flight before the frontend can reuse the rings.
    lock(&handler).shutdown();
    if let Some(c) = lock(&shared.conn).take() {
        let _ = c.shutdown(std::net::Shutdown::Both);
    }
}
