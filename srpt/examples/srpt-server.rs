//! A small stand-alone SRP target server (until `strata serve` wires the
//! `target` crate into its RPC): starts reactors, creates malloc or file
//! bdevs, and exports them as LUNs 0, 1, ... of one target.
//!
//! ```text
//! srpt-server [--listen IP:PORT] [--id-ext HEX] [--ioc-guid HEX]
//!             [--acl PORT_ID|*]... [--malloc MIB[:BLOCK_SIZE]]... [--file PATH[:BLOCK_SIZE]]...
//!             [--provider verbs|loopback] [--cores 0,1] [--queue-depth N] [--idle-sleep-us US]
//!             [--control FIFO]
//! ```
//!
//! `--control FIFO` creates a named pipe; each line written to it is a
//! command: `logout` (log every session out: `SRP_T_LOGOUT` + disconnect;
//! initiators may log in again) or `sessions` (print `srpt_get_sessions`).
//!
//! Prints one JSON line per LUN (`{"lun":0,"bdev":...,"serial":...,"eui":...,"bytes":...}`),
//! then `READY`; runs until SIGINT/SIGTERM, then deletes the target (logging
//! every session out) and stops.

use std::sync::Arc;
use std::time::Duration;

use bdev::Bdev;

extern "C" {
    #[link_name = "mkfifo"]
    fn libc_mkfifo(path: *const std::ffi::c_char, mode: u32) -> i32;
}

fn usage() -> ! {
    eprintln!(
        "usage: srpt-server [--listen IP:PORT] [--id-ext HEX] [--ioc-guid HEX] [--acl ID|*]... \
         [--malloc MIB[:BS]]... [--file PATH[:BS]]... [--provider verbs|loopback] [--cores LIST] \
         [--queue-depth N] [--idle-sleep-us US]"
    );
    std::process::exit(2)
}

fn main() {
    reactor::block_termination_signals();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    if let Err(e) = run() {
        eprintln!("srpt-server: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    use lexopt::prelude::*;
    let mut listen = "10.0.2.15:5555".to_string();
    let mut id_ext = "0x0002c90300a0b0c0".to_string();
    let mut ioc_guid = "0x0002c90300a0b0c0".to_string();
    let mut acl: Vec<String> = Vec::new();
    let mut disks: Vec<(Option<String>, u64, u32)> = Vec::new();
    let mut provider = "verbs".to_string();
    let mut cores: Vec<usize> = vec![0];
    let mut queue_depth: Option<u32> = None;
    let mut idle_sleep_us = 0u64;
    let mut control: Option<String> = None;
    let mut p = lexopt::Parser::from_env();
    while let Some(arg) = p.next()? {
        match arg {
            Long("listen") => listen = p.value()?.string()?,
            Long("id-ext") => id_ext = p.value()?.string()?,
            Long("ioc-guid") => ioc_guid = p.value()?.string()?,
            Long("acl") => acl.push(p.value()?.string()?),
            Long("malloc") => {
                let v = p.value()?.string()?;
                let (mib, bs) = v.split_once(':').unwrap_or((&v, "512"));
                disks.push((None, mib.parse()?, bs.parse()?));
            }
            Long("file") => {
                let v = p.value()?.string()?;
                let (path, bs) = v.split_once(':').unwrap_or((&v, "512"));
                disks.push((Some(path.to_string()), 0, bs.parse()?));
            }
            Long("provider") => provider = p.value()?.string()?,
            Long("cores") => {
                cores = p
                    .value()?
                    .string()?
                    .split(',')
                    .map(|c| c.parse())
                    .collect::<Result<_, _>>()?;
            }
            Long("queue-depth") => queue_depth = Some(p.value()?.parse()?),
            Long("idle-sleep-us") => idle_sleep_us = p.value()?.parse()?,
            Long("control") => control = Some(p.value()?.string()?),
            Long("help") | Short('h') => usage(),
            _ => return Err(arg.unexpected().into()),
        }
    }
    if disks.is_empty() {
        disks.push((None, 256, 512));
    }
    if acl.is_empty() {
        acl.push("*".into());
    }
    let reactors = reactor::ReactorSet::start(
        &cores,
        reactor::ReactorOptions {
            idle_sleep_us,
            drain_timeout: Duration::from_secs(10),
            ..Default::default()
        },
    )?;
    let mut luns: Vec<(u16, Arc<dyn Bdev>)> = Vec::new();
    for (k, (path, mib, bs)) in disks.into_iter().enumerate() {
        let b: Arc<dyn Bdev> = match path {
            None => Arc::new(bdev::malloc::create(
                &format!("Malloc{k}"),
                mib * (1 << 20) / u64::from(bs),
                bs,
            )?),
            Some(p) => Arc::new(bdev::file::create(&format!("File{k}"), &p, bs)?),
        };
        luns.push((k as u16, b));
    }
    let params = srpt::SrptTargetParams {
        name: "srpt0".into(),
        listen,
        id_ext,
        ioc_guid,
        luns: luns
            .iter()
            .map(|(l, b)| srpt::LunParams {
                lun: *l,
                bdev: b.info().name.clone(),
            })
            .collect(),
        acl,
        provider: Some(provider),
        queue_depth,
    };
    let t = srpt::Target::create(&params, luns.clone(), reactors.handle())?;
    for (l, b) in &luns {
        println!(
            "{}",
            serde_json::json!({
                "lun": l,
                "bdev": b.info().name,
                "bytes": b.info().size_bytes(),
                "serial": t.lun_serial(*l),
                "eui": t.lun_designator(*l),
            })
        );
    }
    let t = Arc::new(std::sync::Mutex::new(Some(t)));
    if let Some(path) = control {
        let c = std::ffi::CString::new(path.clone())?;
        let _ = std::fs::remove_file(&path);
        // SAFETY: a valid NUL-terminated path.
        if unsafe { libc_mkfifo(c.as_ptr(), 0o600) } != 0 {
            return Err(format!("mkfifo {path}: {}", std::io::Error::last_os_error()).into());
        }
        let t = Arc::clone(&t);
        std::thread::spawn(move || loop {
            let Ok(text) = std::fs::read_to_string(&path) else {
                return;
            };
            for line in text.lines() {
                let g = t.lock().unwrap_or_else(|e| e.into_inner());
                let Some(t) = g.as_ref() else { return };
                match line.trim() {
                    "logout" => tracing::info!(channels = t.logout_all(), "control: logout"),
                    "sessions" => println!("{}", t.sessions_json()),
                    "" => {}
                    other => tracing::warn!(command = other, "control: unknown command"),
                }
            }
        });
    }
    println!("READY");
    let sig = reactor::wait_for_termination();
    tracing::info!(sig, "stopping");
    let t = t.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(t) = t {
        println!("{}", t.sessions_json());
        if let Err(e) = t.delete(Duration::from_secs(15)) {
            tracing::warn!(error = %e, "delete");
        }
    }
    reactors.shutdown();
    Ok(())
}
