//! Runs the `rdma` conformance suite against a provider (verbs by default).
//!
//! ```text
//! rdma-conformance [--provider verbs|loopback] [--dev rxe0] [--addr 10.0.2.15]
//!                  [--port 20000] [--timeout SECS] [--case NAME]... [--list]
//! ```
//!
//! Prints `PASS name (ms)` or `FAIL name: reason` per case and a summary;
//! exits 1 if any case failed (or the device is missing), 2 on bad usage.

use std::net::IpAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rdma::conformance::{self, Env, CASES};
use rdma::Provider;

fn usage(msg: &str) -> ExitCode {
    eprintln!("rdma-conformance: {msg}");
    eprintln!(
        "usage: rdma-conformance [--provider verbs|loopback] [--dev NAME] [--addr IP] [--port N] \
         [--timeout SECS] [--case NAME]... [--list]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut provider = Provider::Verbs;
    let mut dev: Option<String> = None;
    let mut addr: IpAddr = "10.0.2.15".parse().expect("literal");
    let mut port: u16 = 20000;
    let mut timeout: Option<u64> = None;
    let mut only: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        let r: Result<(), String> = (|| {
            match a.as_str() {
                "--provider" => {
                    provider = val("--provider")?.parse().map_err(|e| format!("{e}"))?
                }
                "--dev" => dev = Some(val("--dev")?),
                "--addr" => addr = val("--addr")?.parse().map_err(|e| format!("--addr: {e}"))?,
                "--port" => port = val("--port")?.parse().map_err(|e| format!("--port: {e}"))?,
                "--timeout" => {
                    timeout = Some(
                        val("--timeout")?
                            .parse()
                            .map_err(|e| format!("--timeout: {e}"))?,
                    )
                }
                "--case" => only.push(val("--case")?),
                "--list" => {
                    for c in CASES {
                        println!("{}", c.0);
                    }
                    std::process::exit(0);
                }
                "-h" | "--help" => return Err("help".into()),
                other => return Err(format!("unknown argument {other}")),
            }
            Ok(())
        })();
        if let Err(e) = r {
            return usage(&e);
        }
    }
    for o in &only {
        if !CASES.iter().any(|c| c.0 == o) {
            return usage(&format!("no case named {o} (see --list)"));
        }
    }
    let dev = dev.unwrap_or_else(|| match provider {
        Provider::Verbs => "rxe0".into(),
        Provider::Loopback => rdma::loopback::DEVICE_NAME.into(),
    });
    let timeout = Duration::from_secs(timeout.unwrap_or(match provider {
        Provider::Verbs => 20,
        Provider::Loopback => 5,
    }));
    println!(
        "rdma conformance: provider {} device {dev} address {addr} ports {port}.. time-out {timeout:?}",
        provider.name()
    );
    let (mut passed, mut failed) = (0, 0);
    for (i, case) in CASES.iter().enumerate() {
        if !only.is_empty() && !only.iter().any(|o| o == case.0) {
            continue;
        }
        let env = Env {
            provider,
            dev: dev.clone(),
            addr,
            port: port + 2 * i as u16,
            timeout,
        };
        let t = Instant::now();
        match conformance::run(case, &env) {
            Ok(()) => {
                passed += 1;
                println!("PASS {} ({} ms)", case.0, t.elapsed().as_millis());
            }
            Err(e) => {
                failed += 1;
                println!("FAIL {}: {e} ({} ms)", case.0, t.elapsed().as_millis());
            }
        }
    }
    println!("rdma conformance: {passed} passed, {failed} failed");
    if failed > 0 || passed == 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
