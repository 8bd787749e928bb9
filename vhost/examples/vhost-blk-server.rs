//! A small host-side vhost-user-blk server: one bdev (malloc or file)
//! behind one `vhost::Controller` on a reactor set. A stand-in for
//! `strata serve` in the QEMU guest tests (vhost/tests/qemu-guest.sh).
//!
//! ```text
//! vhost-blk-server --socket PATH (--malloc-mib N | --file PATH)
//!     [--name vhost0] [--bdev-name Disk0] [--block-size 512]
//!     [--num-queues 1] [--readonly] [--cores 0,1] [--reactors 0,1]
//!     [--delay-us N]   (wrap the bdev in a `delay` bdev: N µs per I/O)
//! ```
//!
//! Prints `ready` on stdout once listening; SIGINT/SIGTERM delete the
//! controller (completing in-flight I/O), stop the reactors and print the
//! bdev statistics (`stats {json}`) on stderr.

use std::sync::Arc;

use bdev::Bdev;
use reactor::{ReactorOptions, ReactorSet};
use vhost::{Controller, VhostBlkParams};

fn usage(msg: &str) -> ! {
    eprintln!("vhost-blk-server: {msg}");
    eprintln!(
        "usage: vhost-blk-server --socket PATH (--malloc-mib N | --file PATH) [--name N] [--bdev-name N] \
         [--block-size B] [--num-queues Q] [--readonly] [--cores a,b] [--reactors a,b] [--delay-us N]"
    );
    std::process::exit(2)
}

fn list(s: &str) -> Vec<usize> {
    s.split(',')
        .map(|c| {
            c.trim()
                .parse()
                .unwrap_or_else(|_| usage(&format!("bad core list `{s}`")))
        })
        .collect()
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

    let mut socket = None;
    let mut malloc_mib = None;
    let mut file = None;
    let mut name = "vhost0".to_string();
    let mut bdev_name = "Disk0".to_string();
    let mut block_size = 512u32;
    let mut num_queues = 1u16;
    let mut readonly = false;
    let mut cores = None;
    let mut reactors = None;
    let mut delay_us = 0u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--socket" => socket = Some(val()),
            "--malloc-mib" => {
                malloc_mib = Some(
                    val()
                        .parse::<u64>()
                        .unwrap_or_else(|_| usage("bad --malloc-mib")),
                )
            }
            "--file" => file = Some(val()),
            "--name" => name = val(),
            "--bdev-name" => bdev_name = val(),
            "--block-size" => {
                block_size = val().parse().unwrap_or_else(|_| usage("bad --block-size"))
            }
            "--num-queues" => {
                num_queues = val().parse().unwrap_or_else(|_| usage("bad --num-queues"))
            }
            "--readonly" => readonly = true,
            "--cores" => cores = Some(list(&val())),
            "--reactors" => reactors = Some(list(&val())),
            "--delay-us" => delay_us = val().parse().unwrap_or_else(|_| usage("bad --delay-us")),
            _ => usage(&format!("unknown argument {a}")),
        }
    }
    let socket = socket.unwrap_or_else(|| usage("--socket is required"));
    // With --delay-us the delay bdev carries the given name (and so the
    // serial); its base is "<name>-base".
    let base_name = if delay_us > 0 {
        format!("{bdev_name}-base")
    } else {
        bdev_name.clone()
    };
    let bdev: Arc<dyn Bdev> = match (malloc_mib, &file) {
        (Some(mib), None) => {
            let blocks = mib * 1024 * 1024 / block_size as u64;
            Arc::new(
                bdev::malloc::create(&base_name, blocks, block_size)
                    .unwrap_or_else(|e| usage(&e.to_string())),
            )
        }
        (None, Some(path)) => Arc::new(
            bdev::file::create(&base_name, path, block_size)
                .unwrap_or_else(|e| usage(&e.to_string())),
        ),
        _ => usage("give exactly one of --malloc-mib and --file"),
    };
    let bdev: Arc<dyn Bdev> = if delay_us > 0 {
        let d = bdev::delay::create(&bdev_name, bdev, delay_us, delay_us)
            .unwrap_or_else(|e| usage(&e.to_string()));
        Arc::new(d)
    } else {
        bdev
    };
    let reactor_cores =
        reactors.unwrap_or_else(|| reactor::allowed_cpus().into_iter().take(2).collect());
    // Unpinned, sleeping when idle: this runs on shared test machines.
    let set = ReactorSet::start(
        &reactor_cores,
        ReactorOptions {
            pin: false,
            idle_sleep_us: 50,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| usage(&e.to_string()));
    let params = VhostBlkParams {
        name,
        socket: socket.into(),
        bdev: bdev_name,
        num_queues,
        readonly,
        cores,
    };
    let stats_of = Arc::clone(&bdev);
    let ctrl = match Controller::create(params, bdev, set.handle()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vhost-blk-server: {e}");
            std::process::exit(1);
        }
    };
    println!("ready");
    let sig = reactor::wait_for_termination();
    tracing::info!(signal = sig, "stopping");
    ctrl.delete();
    set.shutdown();
    eprintln!("stats {}", stats_of.stats().to_json());
}
