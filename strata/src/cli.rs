//! The command line: `strata serve`, `strata rpc`, `strata bench`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lexopt::prelude::*;
use serde_json::Value;

use crate::config::{parse_cores, Config, DEFAULT_CONFIG};
use crate::daemon::Daemon;
use crate::rpc;

/// Where the RPC socket lives unless told otherwise.
pub const DEFAULT_RPC_SOCKET: &str = "/var/tmp/strata.sock";

const USAGE: &str = "\
strata — a polled-mode userspace storage stack

usage:
  strata serve [--config FILE] [--rpc-socket PATH] [--cores LIST] [--idle-sleep-us N] [--log LEVEL]
      Run the daemon. Without --config an embedded default serves a 64 MiB
      malloc bdev. --cores takes 0,1 or 0-3; --idle-sleep-us makes idle
      reactors nap (0 = pure polling). SIGINT/SIGTERM drain I/O and exit 0.
  strata rpc [--socket PATH] [--timeout SECS] METHOD [PARAMS_JSON]
      Call a JSON-RPC method (like SPDK's rpc.py); `rpc_get_methods` lists them.
  strata bench bdev [--config FILE --bdev NAME | --null [--no-zero-reads] | --malloc | --file PATH]
                    [--block-size N] [--size-mb N] [--cores LIST] [--bs BYTES]
                    [--qd N] [--rw randread|randwrite|randrw|read|write|rw]
                    [--rwmixread PCT] [--time SECS] [--json]
      Drive a bdev from every reactor at a fixed queue depth; report IOPS,
      MB/s and latency percentiles.
  strata bench vhost --socket PATH [--poll] [--qd N] [--bs BYTES] [--rw randread|randwrite] [--time SECS] [--json]
      Drive any vhost-user-blk server through libblkio (one client thread;
      --poll: a polling queue, otherwise event-driven).
  strata verify vhost --socket PATH [--seed N] [--bs BYTES] [--offset BYTES] [--size BYTES]
                      [--qd N] [--seg-size BYTES] [--block-size BYTES] [--read-only-verify | --write-only]
                      [--time SECS | --passes N] [--io-timeout SECS] [--poll] [--quiet] [--json]
      Data integrity through any vhost-user-blk server (libblkio): write a
      pattern derived from the seed and each block's address (the pattern of
      `bdev_io`, per --block-size, default the device's block size) in
      shuffled --bs requests (default 4k; sizes take k/m suffixes; requests
      over the device's size_max go as several segments; --seg-size N splits
      every request into N-byte segments placed apart in memory), read it all back
      and compare. --read-only-verify checks what an earlier run wrote with
      the same seed; --time repeats passes (pass k uses seed+k) until SECS
      have passed, finishes the pass and prints the final seed. Default
      region: from --offset to the end of the device; --qd default 4.
      Exit status: 0 all verified, 3 I/O errors, 4 mismatched blocks,
      5 I/O outstanding with no completion for --io-timeout (default 300 s),
      1 could not run (connect, parameters), 2 usage.
";

const USAGE_FOOTER: &str = "
The RPC socket defaults to $STRATA_RPC_SOCKET or /var/tmp/strata.sock.
";

fn default_socket() -> PathBuf {
    std::env::var_os("STRATA_RPC_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_RPC_SOCKET))
}

fn init_logging(level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(l) => EnvFilter::new(l),
        None => EnvFilter::try_from_env("STRATA_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi)
        .try_init();
}

/// Runs the command line; returns the exit status.
pub fn main(args: Vec<OsString>) -> i32 {
    let mut p = lexopt::Parser::from_args(args);
    let sub = match p.next() {
        Ok(Some(Value_(v))) => v,
        Ok(Some(Long("help")) | Some(Short('h'))) | Ok(None) => {
            print!("{USAGE}{}{USAGE_FOOTER}", crate::cli_rdma::USAGE);
            return 0;
        }
        Ok(Some(Long("version"))) => {
            println!("strata {}", env!("CARGO_PKG_VERSION"));
            return 0;
        }
        Ok(Some(other)) => return usage_error(&format!("unexpected {}", describe(&other))),
        Err(e) => return usage_error(&e.to_string()),
    };
    let r = match sub.to_string_lossy().as_ref() {
        "serve" => serve(p),
        "rpc" => rpc_cmd(p),
        "bench" => bench_cmd(p),
        "verify" => verify_cmd(p),
        other => return usage_error(&format!("unknown command `{other}`")),
    };
    match r {
        Ok(code) => code,
        Err(CliError::Usage(m)) => usage_error(&m),
        Err(CliError::Fail(m)) => {
            eprintln!("strata: {m}");
            1
        }
    }
}

// lexopt's Arg::Value pattern under a name that does not clash with serde_json::Value.
use lexopt::Arg::Value as Value_;

fn describe(a: &lexopt::Arg<'_>) -> String {
    match a {
        Short(c) => format!("option -{c}"),
        Long(l) => format!("option --{l}"),
        Value_(v) => format!("argument `{}`", v.to_string_lossy()),
    }
}

fn usage_error(m: &str) -> i32 {
    eprintln!("strata: {m}\n(see `strata --help`)");
    2
}

enum CliError {
    Usage(String),
    Fail(String),
}

impl From<lexopt::Error> for CliError {
    fn from(e: lexopt::Error) -> Self {
        CliError::Usage(e.to_string())
    }
}

fn num<T: std::str::FromStr>(p: &mut lexopt::Parser, name: &str) -> Result<T, CliError> {
    let v = p.value()?;
    let s = v.to_string_lossy();
    s.parse()
        .map_err(|_| CliError::Usage(format!("--{name}: `{s}` is not a valid number")))
}

fn string(p: &mut lexopt::Parser) -> Result<String, CliError> {
    Ok(p.value()?.to_string_lossy().into_owned())
}

fn serve(mut p: lexopt::Parser) -> Result<i32, CliError> {
    let mut config_path: Option<String> = None;
    let mut socket: Option<PathBuf> = None;
    let mut cores: Option<Vec<usize>> = None;
    let mut idle: Option<u64> = None;
    let mut log: Option<String> = None;
    while let Some(arg) = p.next()? {
        match arg {
            Long("config") | Short('c') => config_path = Some(string(&mut p)?),
            Long("rpc-socket") | Short('r') => socket = Some(PathBuf::from(string(&mut p)?)),
            Long("cores") | Short('m') => {
                cores = Some(
                    parse_cores(&string(&mut p)?)
                        .map_err(|e| CliError::Usage(format!("--cores: {e}")))?,
                )
            }
            Long("idle-sleep-us") => idle = Some(num(&mut p, "idle-sleep-us")?),
            Long("log") => log = Some(string(&mut p)?),
            other => {
                return Err(CliError::Usage(format!(
                    "serve: unexpected {}",
                    describe(&other)
                )))
            }
        }
    }
    init_logging(log.as_deref());
    let (file, cfg) = match &config_path {
        Some(path) => (path.clone(), Config::load(path)),
        None => (
            "<embedded default>".to_string(),
            Config::parse("<embedded default>", DEFAULT_CONFIG),
        ),
    };
    let cfg = cfg.map_err(|e| CliError::Fail(format!("config error: {e}")))?;
    let cores = cores.or(cfg.cores.clone()).unwrap_or_else(|| vec![0]);
    let idle = idle.or(cfg.idle_sleep_us).unwrap_or(0);
    let socket = socket
        .or(cfg.rpc_socket.as_ref().map(PathBuf::from))
        .unwrap_or_else(default_socket);

    let opts = reactor::ReactorOptions {
        idle_sleep_us: idle,
        ..Default::default()
    };
    let set = reactor::ReactorSet::start(&cores, opts)
        .map_err(|e| CliError::Fail(format!("cannot start reactors: {e}")))?;
    let daemon = Arc::new(Daemon::new(cores.clone(), idle, set.handle()));
    if let Err(e) = cfg.apply(&file, &daemon) {
        daemon.shutdown();
        set.shutdown();
        return Err(CliError::Fail(format!("config error: {e}")));
    }
    let mut server = match rpc::Server::start(&socket, Arc::clone(&daemon)) {
        Ok(s) => s,
        Err(e) => {
            daemon.shutdown();
            set.shutdown();
            return Err(CliError::Fail(rpc::error_chain(&e)));
        }
    };
    tracing::info!(cores = ?cores, socket = %socket.display(), config = %file, "strata ready");
    let sig = reactor::wait_for_termination();
    tracing::info!(signal = sig, "shutting down: no new I/O, draining");
    server.stop();
    daemon.stop_frontends();
    let drained = set.shutdown();
    daemon.shutdown();
    if drained {
        tracing::info!("stopped cleanly");
        Ok(0)
    } else {
        Err(CliError::Fail(
            "in-flight I/O did not drain within the time-out".into(),
        ))
    }
}

fn rpc_cmd(mut p: lexopt::Parser) -> Result<i32, CliError> {
    let mut socket = default_socket();
    let mut timeout = 60u64;
    let mut positional: Vec<String> = Vec::new();
    while let Some(arg) = p.next()? {
        match arg {
            Long("socket") | Short('s') => socket = PathBuf::from(string(&mut p)?),
            Long("timeout") | Short('t') => timeout = num(&mut p, "timeout")?,
            Value_(v) => positional.push(v.to_string_lossy().into_owned()),
            other => {
                return Err(CliError::Usage(format!(
                    "rpc: unexpected {}",
                    describe(&other)
                )))
            }
        }
    }
    let (method, params) = match positional.as_slice() {
        [m] => (m.clone(), None),
        [m, json] => {
            let text = if json == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                    .map_err(|e| CliError::Fail(e.to_string()))?;
                s
            } else {
                json.clone()
            };
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| CliError::Usage(format!("rpc: PARAMS_JSON is not valid JSON: {e}")))?;
            (m.clone(), Some(v))
        }
        [] => return Err(CliError::Usage("rpc: METHOD is missing".into())),
        _ => return Err(CliError::Usage("rpc: expected METHOD [PARAMS_JSON]".into())),
    };
    match rpc::call(&socket, &method, params, Duration::from_secs(timeout)) {
        Ok(v) => {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            Ok(0)
        }
        Err(e) => Err(CliError::Fail(format!(
            "rpc {method}: {}",
            rpc::error_chain(&e)
        ))),
    }
}

fn bench_cmd(mut p: lexopt::Parser) -> Result<i32, CliError> {
    let what = match p.next()? {
        Some(Value_(v)) => v.to_string_lossy().into_owned(),
        _ => {
            return Err(CliError::Usage(
                "bench: expected `bdev`, `vhost` or `rdma`".into(),
            ))
        }
    };
    if what == "vhost" {
        return bench_vhost(p);
    }
    if what == "rdma" {
        return Ok(crate::cli_rdma::bench_rdma(p));
    }
    if what != "bdev" {
        return Err(CliError::Usage(format!(
            "bench: unknown benchmark `{what}` (bdev, vhost, rdma)"
        )));
    }
    let mut config_path: Option<String> = None;
    let mut bdev_name: Option<String> = None;
    let mut kind: Option<(String, Option<String>)> = None;
    let mut block_size = 512u32;
    let mut size_mb = 1024u64;
    let mut cores = vec![0usize];
    let mut io_size = 4096usize;
    let mut qd = 128usize;
    let mut pattern = bench::bdev::Pattern::RandRead;
    let mut mix = 70u8;
    let mut secs = 10f64;
    let mut json_out = false;
    let mut zero_reads = true;
    while let Some(arg) = p.next()? {
        match arg {
            Long("config") => config_path = Some(string(&mut p)?),
            Long("bdev") => bdev_name = Some(string(&mut p)?),
            Long("null") => kind = Some(("null".into(), None)),
            Long("no-zero-reads") => zero_reads = false,
            Long("malloc") => kind = Some(("malloc".into(), None)),
            Long("file") => kind = Some(("file".into(), Some(string(&mut p)?))),
            Long("block-size") => block_size = num(&mut p, "block-size")?,
            Long("size-mb") => size_mb = num(&mut p, "size-mb")?,
            Long("cores") => {
                cores = parse_cores(&string(&mut p)?)
                    .map_err(|e| CliError::Usage(format!("--cores: {e}")))?
            }
            Long("bs") => io_size = num(&mut p, "bs")?,
            Long("qd") => qd = num(&mut p, "qd")?,
            Long("rw") => {
                pattern = string(&mut p)?
                    .parse()
                    .map_err(|e: String| CliError::Usage(format!("--rw: {e}")))?
            }
            Long("rwmixread") => mix = num(&mut p, "rwmixread")?,
            Long("time") => secs = num(&mut p, "time")?,
            Long("json") => json_out = true,
            other => {
                return Err(CliError::Usage(format!(
                    "bench bdev: unexpected {}",
                    describe(&other)
                )))
            }
        }
    }
    if !(secs > 0.0 && secs < 86400.0) {
        return Err(CliError::Usage(
            "--time: must be between 0 and 86400 seconds".into(),
        ));
    }
    init_logging(Some("warn"));
    let set = reactor::ReactorSet::start(&cores, reactor::ReactorOptions::default())
        .map_err(|e| CliError::Fail(format!("cannot start reactors: {e}")))?;
    let daemon = Daemon::new(cores.clone(), 0, set.handle());
    let name = match (&config_path, &kind) {
        (Some(path), None) => {
            let cfg =
                Config::load(path).map_err(|e| CliError::Fail(format!("config error: {e}")))?;
            cfg.apply(path, &daemon)
                .map_err(|e| CliError::Fail(format!("config error: {e}")))?;
            bdev_name
                .ok_or_else(|| CliError::Usage("bench bdev: --config needs --bdev NAME".into()))?
        }
        (None, Some((k, file))) => {
            let name = bdev_name.unwrap_or_else(|| "bench0".into());
            let num_blocks = size_mb * 1024 * 1024 / block_size.max(1) as u64;
            let (method, params) = match k.as_str() {
                "null" => (
                    "bdev_null_create",
                    serde_json::json!({"name": name, "num_blocks": num_blocks, "block_size": block_size, "zero_reads": zero_reads}),
                ),
                "malloc" => (
                    "bdev_malloc_create",
                    serde_json::json!({"name": name, "num_blocks": num_blocks, "block_size": block_size}),
                ),
                _ => (
                    "bdev_file_create",
                    serde_json::json!({"name": name, "filename": file, "block_size": block_size}),
                ),
            };
            daemon
                .call(method, params)
                .map_err(|e| CliError::Fail(e.message))?;
            name
        }
        _ => {
            return Err(CliError::Usage(
                "bench bdev: give one of --config FILE --bdev NAME, --null, --malloc, --file PATH"
                    .into(),
            ))
        }
    };
    let bdev = daemon
        .registry
        .get(&name)
        .map_err(|e| CliError::Fail(e.to_string()))?;
    let params = bench::bdev::Params {
        io_size,
        queue_depth: qd,
        pattern,
        read_pct: mix,
        duration: Duration::from_secs_f64(secs),
        reactors: (0..cores.len()).collect(),
    };
    let report = bench::bdev::run(&set.handle(), bdev, params);
    set.shutdown();
    daemon.shutdown();
    let report = report.map_err(|e| CliError::Fail(e.to_string()))?;
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        println!("{}", report.to_text());
    }
    Ok(0)
}

fn bench_vhost(mut p: lexopt::Parser) -> Result<i32, CliError> {
    let mut params = bench::vhost::Params {
        socket: String::new(),
        io_size: 4096,
        queue_depth: 1,
        write: false,
        poll: false,
        duration: Duration::from_secs(5),
        warmup: Duration::from_millis(500),
    };
    let mut json_out = false;
    while let Some(arg) = p.next()? {
        match arg {
            Long("socket") => params.socket = string(&mut p)?,
            Long("bs") => params.io_size = num(&mut p, "bs")?,
            Long("qd") => params.queue_depth = num(&mut p, "qd")?,
            Long("rw") => match string(&mut p)?.as_str() {
                "randread" => params.write = false,
                "randwrite" => params.write = true,
                other => {
                    return Err(CliError::Usage(format!(
                        "--rw: `{other}` (randread, randwrite)"
                    )))
                }
            },
            Long("poll") => params.poll = true,
            Long("time") => {
                params.duration =
                    Duration::from_secs_f64(num::<f64>(&mut p, "time")?.clamp(0.01, 86400.0))
            }
            Long("json") => json_out = true,
            other => {
                return Err(CliError::Usage(format!(
                    "bench vhost: unexpected {}",
                    describe(&other)
                )))
            }
        }
    }
    if params.socket.is_empty() {
        return Err(CliError::Usage(
            "bench vhost: --socket PATH is required".into(),
        ));
    }
    let r = bench::vhost::run(params).map_err(|e| CliError::Fail(e.to_string()))?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
    } else {
        println!("{}", r.to_text());
    }
    Ok(0)
}

/// `strata verify vhost`: see `bench::verify`.
fn verify_cmd(mut p: lexopt::Parser) -> Result<i32, CliError> {
    fn bytes(p: &mut lexopt::Parser, name: &str) -> Result<u64, CliError> {
        let s = string(p)?;
        let t = s.trim();
        let (digits, mult) = match t.char_indices().last() {
            Some((i, 'k' | 'K')) => (&t[..i], 1u64 << 10),
            Some((i, 'm' | 'M')) => (&t[..i], 1 << 20),
            Some((i, 'g' | 'G')) => (&t[..i], 1 << 30),
            _ => (t, 1),
        };
        digits
            .parse::<u64>()
            .ok()
            .and_then(|v| v.checked_mul(mult))
            .ok_or_else(|| {
                CliError::Usage(format!("--{name}: `{s}` is not a size (N, Nk, Nm, Ng)"))
            })
    }
    match p.next()? {
        Some(Value_(v)) if v == "vhost" => {}
        _ => return Err(CliError::Usage("verify: expected `vhost`".into())),
    }
    let mut params = bench::verify::Params::default();
    let mut json_out = false;
    while let Some(arg) = p.next()? {
        match arg {
            Long("socket") => params.socket = string(&mut p)?,
            Long("seed") => {
                let s = string(&mut p)?;
                params.seed = match s.strip_prefix("0x") {
                    Some(h) => u64::from_str_radix(h, 16).ok(),
                    None => s.parse().ok(),
                }
                .ok_or_else(|| CliError::Usage(format!("--seed: `{s}` is not a number")))?
            }
            Long("bs") => params.io_size = bytes(&mut p, "bs")? as usize,
            Long("offset") => params.offset = bytes(&mut p, "offset")?,
            Long("size") => params.size = Some(bytes(&mut p, "size")?),
            Long("qd") => params.queue_depth = num(&mut p, "qd")?,
            Long("seg-size") => params.seg_size = Some(bytes(&mut p, "seg-size")? as usize),
            Long("block-size") => params.block_size = Some(bytes(&mut p, "block-size")? as u32),
            Long("read-only-verify") => params.mode = bench::verify::Mode::ReadOnlyVerify,
            Long("write-only") => params.mode = bench::verify::Mode::WriteOnly,
            Long("time") => {
                params.duration = Some(Duration::from_secs_f64(
                    num::<f64>(&mut p, "time")?.clamp(0.0, 86400.0),
                ))
            }
            Long("passes") => params.passes = num(&mut p, "passes")?,
            Long("io-timeout") => {
                params.io_timeout =
                    Duration::from_secs_f64(num::<f64>(&mut p, "io-timeout")?.clamp(0.1, 86400.0))
            }
            Long("poll") => params.poll = true,
            Long("quiet") => params.progress = false,
            Long("json") => json_out = true,
            other => {
                return Err(CliError::Usage(format!(
                    "verify vhost: unexpected {}",
                    describe(&other)
                )))
            }
        }
    }
    if params.socket.is_empty() {
        return Err(CliError::Usage(
            "verify vhost: --socket PATH is required".into(),
        ));
    }
    let r = bench::verify::run(params).map_err(|e| CliError::Fail(e.to_string()))?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
    } else {
        println!("{}", r.to_text());
    }
    Ok(r.exit_code())
}
