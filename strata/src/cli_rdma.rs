//! `strata bench rdma`: the command line of [`bench::rdma`].
//!
//! Self-contained (own argument parsing and error printing) so that `cli.rs`
//! only dispatches to it: `if what == "rdma" { return Ok(crate::cli_rdma::bench_rdma(p)); }`.

use std::net::SocketAddr;
use std::time::Duration;

use bench::rdma::{Params, Provider, Role, Test};
use lexopt::prelude::*;

/// The usage lines, for `strata --help`.
pub const USAGE: &str = "\
  strata bench rdma --test send_lat|write_bw|read_bw (--listen IP:PORT | --connect IP:PORT)
                    [--provider verbs|loopback] [--dev NAME] [--size BYTES] [--iters N]
                    [--tx-depth N] [--cq-mod N] [--timeout SECS] [--json]
      RDMA between two processes over rdma_cm, like perftest's ib_send_lat /
      ib_write_bw / ib_read_bw: one-way SEND latency (RTT/2), RDMA WRITE/READ
      bandwidth. The client's size/iterations/depth are used. Both --listen and
      --connect (same address), or loopback with neither, run both ends here.
";

const DEFAULT_LOOPBACK_ADDR: &str = "127.0.0.1:18515";

enum Failure {
    Usage(String),
    Fail(String),
}

fn num<T: std::str::FromStr>(p: &mut lexopt::Parser, name: &str) -> Result<T, Failure> {
    let v = p.value().map_err(|e| Failure::Usage(e.to_string()))?;
    let s = v.to_string_lossy();
    s.parse()
        .map_err(|_| Failure::Usage(format!("--{name}: `{s}` is not a valid number")))
}

fn string(p: &mut lexopt::Parser) -> Result<String, Failure> {
    Ok(p.value()
        .map_err(|e| Failure::Usage(e.to_string()))?
        .to_string_lossy()
        .into_owned())
}

fn addr(p: &mut lexopt::Parser, name: &str) -> Result<SocketAddr, Failure> {
    let s = string(p)?;
    s.parse()
        .map_err(|_| Failure::Usage(format!("--{name}: `{s}` is not IP:PORT")))
}

/// Runs `strata bench rdma ...` (the parser is positioned after `rdma`);
/// prints the report or the error; returns the exit status (0 ok, 1
/// failure, 2 usage error).
pub fn bench_rdma(p: lexopt::Parser) -> i32 {
    match run(p) {
        Ok(code) => code,
        Err(Failure::Usage(m)) => {
            eprintln!("strata: bench rdma: {m}\n(see `strata bench rdma --help`)");
            2
        }
        Err(Failure::Fail(m)) => {
            eprintln!("strata: bench rdma: {m}");
            1
        }
    }
}

fn run(mut p: lexopt::Parser) -> Result<i32, Failure> {
    let mut test: Option<Test> = None;
    let mut listen: Option<SocketAddr> = None;
    let mut connect: Option<SocketAddr> = None;
    let mut provider = Provider::Verbs;
    let mut dev: Option<String> = None;
    let mut size: Option<usize> = None;
    let mut iters: Option<u64> = None;
    let mut tx_depth: Option<usize> = None;
    let mut cq_mod: Option<usize> = None;
    let mut timeout: Option<f64> = None;
    let mut json_out = false;
    while let Some(arg) = p.next().map_err(|e| Failure::Usage(e.to_string()))? {
        match arg {
            Long("test") | Short('t') => {
                test = Some(
                    string(&mut p)?
                        .parse()
                        .map_err(|e: String| Failure::Usage(format!("--test: {e}")))?,
                )
            }
            Long("listen") => listen = Some(addr(&mut p, "listen")?),
            Long("connect") => connect = Some(addr(&mut p, "connect")?),
            Long("provider") => {
                let s = string(&mut p)?;
                provider = s
                    .parse()
                    .map_err(|_| Failure::Usage(format!("--provider: `{s}` (verbs, loopback)")))?;
            }
            Long("dev") | Short('d') => dev = Some(string(&mut p)?),
            Long("size") | Short('s') => size = Some(num(&mut p, "size")?),
            Long("iters") | Short('n') => iters = Some(num(&mut p, "iters")?),
            Long("tx-depth") => tx_depth = Some(num(&mut p, "tx-depth")?),
            Long("cq-mod") => cq_mod = Some(num(&mut p, "cq-mod")?),
            Long("timeout") => timeout = Some(num(&mut p, "timeout")?),
            Long("json") => json_out = true,
            Long("help") | Short('h') => {
                print!("usage:\n{USAGE}");
                return Ok(0);
            }
            Value(v) => {
                return Err(Failure::Usage(format!(
                    "unexpected argument `{}`",
                    v.to_string_lossy()
                )))
            }
            Short(c) => return Err(Failure::Usage(format!("unexpected option -{c}"))),
            Long(l) => return Err(Failure::Usage(format!("unexpected option --{l}"))),
        }
    }
    let test =
        test.ok_or_else(|| Failure::Usage("--test send_lat|write_bw|read_bw is required".into()))?;
    let role = match (listen, connect) {
        (Some(l), None) => Role::Server(l),
        (None, Some(c)) => Role::Client(c),
        (Some(l), Some(c)) if l == c => Role::Both(l),
        (Some(_), Some(_)) => {
            return Err(Failure::Usage(
                "--listen and --connect together (both ends here) must name the same address"
                    .into(),
            ))
        }
        (None, None) if provider == Provider::Loopback => {
            Role::Both(DEFAULT_LOOPBACK_ADDR.parse().expect("valid address"))
        }
        (None, None) => {
            return Err(Failure::Usage(
                "give --listen IP:PORT (server) or --connect IP:PORT (client)".into(),
            ))
        }
    };
    if provider == Provider::Loopback && !matches!(role, Role::Both(_)) {
        return Err(Failure::Usage(
            "the loopback provider is in-process: run both ends here (--listen and --connect with the same address, or neither)".into(),
        ));
    }
    let mut params = Params::new(test, provider, role);
    params.dev = dev;
    if let Some(s) = size {
        params.size = s;
    }
    if let Some(n) = iters {
        params.iters = n;
    }
    if let Some(d) = tx_depth {
        params.tx_depth = d;
    }
    if let Some(m) = cq_mod {
        params.cq_mod = m;
    }
    if let Some(t) = timeout {
        if !(t > 0.0 && t <= 86400.0) {
            return Err(Failure::Usage(
                "--timeout: must be between 0 and 86400 seconds".into(),
            ));
        }
        params.timeout = Duration::from_secs_f64(t);
    }
    let report = bench::rdma::run(&params).map_err(|e| match e {
        bench::rdma::RdmaBenchError::Param(..) => Failure::Usage(e.to_string()),
        e => Failure::Fail(e.to_string()),
    })?;
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
