//! strata: the daemon (config, JSON-RPC, CLI) over the reactor, bdev and
//! front-end crates. The binary in `main.rs` is a thin command-line layer
//! over this library, so integration tests drive the same code.

pub mod cli;
pub mod cli_rdma;
pub mod config;
pub mod daemon;
pub mod rpc;

pub use daemon::Daemon;
