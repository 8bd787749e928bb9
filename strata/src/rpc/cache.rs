//! `bdev_cache_create`, `bdev_cache_power_cut`: the volatile write-cache
//! fault model (`bdev::cache`) for crash-consistency tests.

use std::sync::Arc;

use bdev::cache::{CacheBdev, CutMode};
use bdev::Bdev;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::daemon::Daemon;
use crate::rpc::{code, params, RpcError};

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct CreateParams {
    name: String,
    base: String,
    cache_blocks: u64,
}

/// `bdev_cache_create`: a cache bdev over `base` (claimed), recorded for
/// `save_config` like every bdev. Answers with the name.
pub fn bdev_cache_create(d: &Daemon, raw: Value) -> Result<Value, RpcError> {
    let p: CreateParams = params(raw)?;
    bdev::cache::check_cache_blocks(p.cache_blocks)?;
    d.registry
        .check_new(&p.name, std::slice::from_ref(&p.base))?;
    let base = d.registry.get(&p.base)?;
    let b = Arc::new(bdev::cache::create(&p.name, base, p.cache_blocks)?);
    let name = b.info().name.clone();
    d.registry.add(b, "bdev_cache_create", json!(p))?;
    Ok(json!(name))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CutParams {
    name: String,
    #[serde(default)]
    mode: CutMode,
    #[serde(default)]
    seed: Option<u64>,
}

/// `bdev_cache_power_cut`: drops what is not durable (`mode` `all`, the
/// default, or `random`: a seeded random subset is written back first; a
/// random cut without `seed` picks one and reports it). Runs on reactor 0,
/// which it holds until the surviving blocks are on the base.
pub fn bdev_cache_power_cut(d: &Daemon, raw: Value) -> Result<Value, RpcError> {
    let p: CutParams = params(raw)?;
    if p.seed.is_some() && p.mode != CutMode::Random {
        return Err(RpcError::param("seed", "only with mode `random`"));
    }
    let b = d.registry.get(&p.name)?;
    if b.as_any().downcast_ref::<CacheBdev>().is_none() {
        return Err(RpcError::param(
            "name",
            format!("`{}` is not a cache bdev", p.name),
        ));
    }
    let seed = p.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|t| t.as_nanos() as u64)
            .unwrap_or(1)
    });
    let mode = p.mode;
    let report = d
        .reactors
        .call(0, move || {
            let c = b
                .as_any()
                .downcast_ref::<CacheBdev>()
                .expect("checked to be a cache bdev");
            c.power_cut(mode, seed)
        })
        .map_err(|e| RpcError::new(code::FAILED, e.to_string()))??;
    serde_json::to_value(report).map_err(|e| RpcError::new(code::FAILED, e.to_string()))
}
