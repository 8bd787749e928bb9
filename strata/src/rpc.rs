//! JSON-RPC 2.0: errors, parameter decoding, the method table, and the Unix
//! socket server.
//!
//! The server reads a stream of JSON values on each connection (newline
//! separated or not, as SPDK's `rpc.py` sends them) and answers each with
//! one line. A request that is not valid JSON gets a parse error and the
//! connection is closed (the stream cannot be resynchronised); every other
//! mistake gets an error response and the connection stays open. The daemon
//! keeps serving either way.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::daemon::Daemon;

/// Standard JSON-RPC codes, and ours (SPDK uses negative errno values for
/// its own failures; we keep the JSON-RPC reserved range for protocol
/// errors and -32000.. for operation errors).
/// `bdev_srp_*`: the SRP initiator.
pub mod srp_initiator;

/// `bdev_cache_*`: the volatile write-cache fault model.
pub mod cache;

pub mod code {
    /// Invalid JSON.
    pub const PARSE_ERROR: i32 = -32700;
    /// Not a JSON-RPC request object.
    pub const INVALID_REQUEST: i32 = -32600;
    /// No such method.
    pub const METHOD_NOT_FOUND: i32 = -32601;
    /// Wrong parameters.
    pub const INVALID_PARAMS: i32 = -32602;
    /// A bug or an unexpected failure.
    pub const INTERNAL_ERROR: i32 = -32603;
    /// The named object does not exist.
    pub const NOT_FOUND: i32 = -32001;
    /// The name is taken.
    pub const EXISTS: i32 = -32002;
    /// The object is in use.
    pub const BUSY: i32 = -32003;
    /// The operation failed.
    pub const FAILED: i32 = -32000;
}

/// An RPC error: code, message, and (for config files) the field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    /// JSON-RPC error code.
    pub code: i32,
    /// What was wrong.
    pub message: String,
    /// The parameter at fault, if known (a dotted path inside `params`).
    pub field: Option<String>,
}

impl RpcError {
    /// An error with a code and message.
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
            field: None,
        }
    }

    /// An invalid-parameter error naming the field.
    pub fn param(field: impl Into<String>, message: impl Into<String>) -> Self {
        let field = field.into();
        RpcError {
            code: code::INVALID_PARAMS,
            message: format!("invalid parameter `{field}`: {}", message.into()),
            field: Some(field),
        }
    }

    /// The JSON-RPC error object.
    pub fn to_json(&self) -> Value {
        json!({ "code": self.code, "message": self.message })
    }
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RpcError {}

impl From<bdev::BdevError> for RpcError {
    fn from(e: bdev::BdevError) -> Self {
        match e {
            bdev::BdevError::InvalidParam { field, reason } => RpcError::param(field, reason),
            other => RpcError::new(code::FAILED, error_chain(&other)),
        }
    }
}

impl From<bdev::RegistryError> for RpcError {
    fn from(e: bdev::RegistryError) -> Self {
        let c = match e {
            bdev::RegistryError::Exists(_) => code::EXISTS,
            bdev::RegistryError::NotFound(_) => code::NOT_FOUND,
            bdev::RegistryError::InUse { .. } => code::BUSY,
        };
        RpcError::new(c, e.to_string())
    }
}

/// Formats an error with its sources: "a: b: c".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        let m = src.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = src.source();
    }
    s
}

/// Decodes `params` into `T`, naming the offending field on error.
/// Absent params decode as `{}`.
pub fn params<T: DeserializeOwned>(v: Value) -> Result<T, RpcError> {
    let v = if v.is_null() { json!({}) } else { v };
    if !v.is_object() {
        return Err(RpcError::new(
            code::INVALID_PARAMS,
            "params must be a JSON object",
        ));
    }
    serde_path_to_error::deserialize::<_, T>(v).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." || path.is_empty() {
            // Missing or unknown fields name themselves in serde's message.
            RpcError::new(code::INVALID_PARAMS, format!("invalid params: {inner}"))
        } else {
            RpcError::param(path, inner)
        }
    })
}

/// A method handler.
pub type Handler = fn(&Daemon, Value) -> Result<Value, RpcError>;

/// Handles one decoded JSON value (a request or a batch) and returns the
/// response, or `None` for notifications.
pub fn handle_value(d: &Daemon, v: Value) -> Option<Value> {
    match v {
        Value::Array(reqs) => {
            if reqs.is_empty() {
                return Some(error_response(
                    Value::Null,
                    &RpcError::new(code::INVALID_REQUEST, "empty batch"),
                ));
            }
            let out: Vec<Value> = reqs.into_iter().filter_map(|r| handle_one(d, r)).collect();
            if out.is_empty() {
                None
            } else {
                Some(Value::Array(out))
            }
        }
        other => handle_one(d, other),
    }
}

fn error_response(id: Value, e: &RpcError) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "error": e.to_json() })
}

fn handle_one(d: &Daemon, v: Value) -> Option<Value> {
    let Value::Object(mut obj) = v else {
        return Some(error_response(
            Value::Null,
            &RpcError::new(code::INVALID_REQUEST, "request must be a JSON object"),
        ));
    };
    let id = obj.remove("id");
    let is_notification = id.is_none();
    let id = id.unwrap_or(Value::Null);
    if !(id.is_null() || id.is_number() || id.is_string()) {
        return Some(error_response(
            Value::Null,
            &RpcError::new(
                code::INVALID_REQUEST,
                "`id` must be a number, a string or null",
            ),
        ));
    }
    if obj.get("jsonrpc") != Some(&json!("2.0")) {
        return Some(error_response(
            id,
            &RpcError::new(code::INVALID_REQUEST, "`jsonrpc` must be \"2.0\""),
        ));
    }
    let method = match obj.remove("method") {
        Some(Value::String(m)) => m,
        Some(_) => {
            return Some(error_response(
                id,
                &RpcError::new(code::INVALID_REQUEST, "`method` must be a string"),
            ))
        }
        None => {
            return Some(error_response(
                id,
                &RpcError::new(code::INVALID_REQUEST, "`method` is missing"),
            ))
        }
    };
    let params = obj.remove("params").unwrap_or(Value::Null);
    let result = d.call(&method, params);
    if is_notification {
        return None;
    }
    Some(match result {
        Ok(r) => json!({ "jsonrpc": "2.0", "id": id, "result": r }),
        Err(e) => {
            tracing::info!(method = %method, error = %e.message, "rpc failed");
            error_response(id, &e)
        }
    })
}

/// The RPC server: a listening socket and its accept thread.
pub struct Server {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Another daemon answers on the socket.
    #[error("{0}: another strata (or another program) is listening on this RPC socket")]
    InUse(String),
    /// Binding failed.
    #[error("{path}: cannot create the RPC socket")]
    Bind {
        /// The socket path.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl Server {
    /// Binds `path` (mode 0600; a stale socket file is replaced) and starts
    /// serving `daemon`.
    pub fn start(path: &Path, daemon: Arc<Daemon>) -> Result<Server, ServerError> {
        let shown = path.display().to_string();
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(ServerError::InUse(shown));
            }
            let _ = std::fs::remove_file(path);
        }
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() && !dir.exists() {
                std::fs::create_dir_all(dir).map_err(|source| ServerError::Bind {
                    path: shown.clone(),
                    source,
                })?;
            }
        }
        let listener = UnixListener::bind(path).map_err(|source| ServerError::Bind {
            path: shown.clone(),
            source,
        })?;
        // Restrict before anything can connect: accept() only starts below.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| ServerError::Bind {
                path: shown.clone(),
                source,
            },
        )?;
        listener
            .set_nonblocking(true)
            .map_err(|source| ServerError::Bind {
                path: shown.clone(),
                source,
            })?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("rpc".into())
            .spawn(move || accept_loop(listener, daemon, stop2))
            .map_err(|source| ServerError::Bind {
                path: shown.clone(),
                source,
            })?;
        tracing::info!(socket = %shown, "RPC server listening");
        Ok(Server {
            path: path.to_path_buf(),
            stop,
            thread: Some(thread),
        })
    }

    /// Stops accepting and removes the socket file.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(listener: UnixListener, daemon: Arc<Daemon>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, _)) => {
                let d = Arc::clone(&daemon);
                let stop = Arc::clone(&stop);
                let _ = std::thread::Builder::new()
                    .name("rpc-conn".into())
                    .spawn(move || serve_conn(stream, d, stop));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => {
                tracing::warn!(error = %e, "rpc accept failed");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Largest request accepted on a connection (protects the daemon from a
/// client that streams garbage forever).
const MAX_REQUEST_BYTES: usize = 16 << 20;

fn serve_conn(stream: UnixStream, d: Arc<Daemon>, stop: Arc<AtomicBool>) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut buf: Vec<u8> = Vec::new();
    loop {
        if stop.load(Ordering::Acquire) {
            return;
        }
        // Try to decode complete values from what we have.
        loop {
            let text = &buf[..];
            let first = text.iter().position(|b| !b.is_ascii_whitespace());
            let Some(first) = first else {
                buf.clear();
                break;
            };
            let mut de = serde_json::Deserializer::from_slice(&text[first..]).into_iter::<Value>();
            match de.next() {
                Some(Ok(v)) => {
                    let used = first + de.byte_offset();
                    buf.drain(..used);
                    if let Some(resp) = handle_value(&d, v) {
                        let mut line = serde_json::to_vec(&resp).unwrap_or_default();
                        line.push(b'\n');
                        if out.write_all(&line).is_err() {
                            return;
                        }
                    }
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(e)) => {
                    let resp = error_response(
                        Value::Null,
                        &RpcError::new(code::PARSE_ERROR, format!("parse error: {e}")),
                    );
                    let mut line = serde_json::to_vec(&resp).unwrap_or_default();
                    line.push(b'\n');
                    let _ = out.write_all(&line);
                    return;
                }
                None => break,
            }
        }
        if buf.len() > MAX_REQUEST_BYTES {
            let resp = error_response(
                Value::Null,
                &RpcError::new(code::INVALID_REQUEST, "request too large"),
            );
            let _ = out.write_all(format!("{resp}\n").as_bytes());
            return;
        }
        match reader.fill_buf() {
            Ok([]) => {
                // EOF: an incomplete trailing value is a parse error.
                if buf.iter().any(|b| !b.is_ascii_whitespace()) {
                    let resp = error_response(
                        Value::Null,
                        &RpcError::new(code::PARSE_ERROR, "parse error: unexpected end of input"),
                    );
                    let _ = out.write_all(format!("{resp}\n").as_bytes());
                }
                return;
            }
            Ok(chunk) => {
                let n = chunk.len();
                buf.extend_from_slice(chunk);
                reader.consume(n);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Client side: sends one request and returns the result or the error.
pub fn call(
    socket: &Path,
    method: &str,
    params: Option<Value>,
    timeout: Duration,
) -> Result<Value, ClientError> {
    let stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.display().to_string(),
        source,
    })?;
    stream.set_read_timeout(Some(timeout)).ok();
    let mut req = json!({ "jsonrpc": "2.0", "id": 1, "method": method });
    if let Some(p) = params {
        req["params"] = p;
    }
    let mut w = &stream;
    w.write_all(format!("{req}\n").as_bytes())
        .map_err(ClientError::Io)?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .map_err(ClientError::Io)?;
    if line.is_empty() {
        return Err(ClientError::Closed);
    }
    let resp: Value =
        serde_json::from_str(&line).map_err(|e| ClientError::BadResponse(e.to_string()))?;
    if let Some(err) = resp.get("error") {
        return Err(ClientError::Rpc {
            code: err.get("code").and_then(Value::as_i64).unwrap_or(0) as i32,
            message: err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        });
    }
    Ok(resp.get("result").cloned().unwrap_or(Value::Null))
}

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Cannot connect.
    #[error("cannot connect to {path} (is `strata serve` running?)")]
    Connect {
        /// Socket path.
        path: String,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// I/O error.
    #[error("rpc i/o error")]
    Io(#[source] std::io::Error),
    /// The daemon closed the connection.
    #[error("the daemon closed the connection without answering")]
    Closed,
    /// Unparseable response.
    #[error("bad response: {0}")]
    BadResponse(String),
    /// The daemon answered with an error.
    #[error("error {code}: {message}")]
    Rpc {
        /// Code.
        code: i32,
        /// Message.
        message: String,
    },
}
