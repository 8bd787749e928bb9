//! `bdev_srp_attach`, `bdev_srp_detach`, `bdev_srp_get_sessions`: remote
//! SCSI LUs reached over SRP as bdevs (the `initiator` crate).

use std::sync::Arc;

use bdev::Bdev;
use initiator::{AttachError, SrpAttachParams, SrpBdev};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::daemon::Daemon;
use crate::rpc::{code, params, RpcError};

impl From<AttachError> for RpcError {
    fn from(e: AttachError) -> Self {
        match e {
            AttachError::Param(p) => RpcError::param(p.field, p.reason),
            other => RpcError::new(code::FAILED, crate::rpc::error_chain(&other)),
        }
    }
}

/// `bdev_srp_attach`: logs in, discovers the LU, registers the bdev.
/// Answers with the bdev name.
pub fn bdev_srp_attach(d: &Daemon, raw: Value) -> Result<Value, RpcError> {
    let p: SrpAttachParams = params(raw)?;
    // Parameters first, so that a bad field is named before anything else.
    p.validate(d.reactors.len())
        .map_err(|e| RpcError::param(e.field, e.reason))?;
    d.registry.check_new(&p.name, &[])?;
    let b = SrpBdev::attach(&p, d.reactors.clone())?;
    // dev_loss_tmo: the bdev leaves the registry (if nobody uses it; a
    // user keeps getting path errors, never a dangling channel).
    let registry = Arc::clone(&d.registry);
    let name = p.name.clone();
    b.on_lost(move || match registry.remove(&name) {
        Ok(_) => tracing::warn!(bdev = %name, "SRP port lost: bdev removed"),
        Err(e) => tracing::warn!(bdev = %name, error = %e,
            "SRP port lost: bdev kept while in use; its I/O fails with path errors"),
    });
    let saved = serde_json::to_value(&p).map_err(|e| RpcError::new(code::FAILED, e.to_string()))?;
    let name = b.info().name.clone();
    d.registry.add(b, "bdev_srp_attach", saved)?;
    Ok(json!(name))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameParam {
    name: String,
}

fn srp_bdev(b: &Arc<dyn Bdev>) -> Option<&SrpBdev> {
    b.as_any().downcast_ref::<SrpBdev>()
}

/// `bdev_srp_detach`: refused while claimed; logs out, drains, removes.
pub fn bdev_srp_detach(d: &Daemon, raw: Value) -> Result<Value, RpcError> {
    let p: NameParam = params(raw)?;
    let b = d.registry.get(&p.name)?;
    if srp_bdev(&b).is_none() {
        return Err(RpcError::param(
            "name",
            format!("`{}` is not an SRP bdev", p.name),
        ));
    }
    if let Some(by) = d.registry.claimed_by(&p.name) {
        return Err(bdev::RegistryError::InUse { name: p.name, by }.into());
    }
    drop(b);
    d.registry.remove(&p.name)?;
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OptName {
    #[serde(default)]
    name: Option<String>,
}

/// `bdev_srp_get_sessions`: port state, channels (credits, in flight),
/// reconnects, aborts, resets, time-outs, zero-copy vs bounced commands.
pub fn bdev_srp_get_sessions(d: &Daemon, raw: Value) -> Result<Value, RpcError> {
    let p: OptName = params(raw)?;
    if let Some(n) = &p.name {
        let b = d.registry.get(n)?;
        let s = srp_bdev(&b)
            .ok_or_else(|| RpcError::param("name", format!("`{n}` is not an SRP bdev")))?;
        return Ok(json!([s.session_json()]));
    }
    Ok(Value::Array(
        d.registry
            .list()
            .iter()
            .filter_map(|b| srp_bdev(b).map(|s| s.session_json()))
            .collect(),
    ))
}
