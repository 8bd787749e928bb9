//! `bdev_srp_attach` parameters and their validated form. Pure: no I/O.
//!
//! The time-outs follow `scsi_transport_srp`'s `srp_tmo_valid()`: each is a
//! number of seconds or `"off"` (the kernel's negative value);
//! `reconnect_delay_s` may not be 0, `fast_io_fail_tmo_s` must be below
//! `dev_loss_tmo_s` when both are on, `fast_io_fail_tmo_s` is at most 600,
//! and with `fast_io_fail_tmo_s` off `dev_loss_tmo_s` is at most 600 too
//! (`SCSI_DEVICE_BLOCK_MAX_TIMEOUT`). Unlike sysfs, fractions of a second
//! are accepted (tests use them).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use srp::PortId;

/// `SCSI_DEVICE_BLOCK_MAX_TIMEOUT` in seconds.
pub const BLOCK_MAX_TIMEOUT_S: f64 = 600.0;
/// Largest `queue_size`.
pub const MAX_QUEUE_SIZE: u32 = 4096;
/// Largest `max_imm_data` (what strata's target accepts behind the header).
pub const MAX_IMM_DATA: u32 = 65536;
/// Default `max_sect` (512-byte sectors per SRP_CMD), as ib_srp.
pub const DEFAULT_MAX_SECT: u32 = 1024;
/// Descriptors of an indirect table sent inline in the SRP_CMD (ib_srp's
/// default `cmd_sg_entries`).
pub const INLINE_SG_ENTRIES: u32 = 12;

/// A time-out: seconds, or `"off"`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Tmo {
    /// Seconds.
    Secs(f64),
    /// `"off"`.
    Word(TmoWord),
}

/// The one word a time-out may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TmoWord {
    /// Disabled.
    Off,
}

impl Tmo {
    fn get(self, field: &'static str) -> Result<Option<Duration>, ParamError> {
        match self {
            Tmo::Word(TmoWord::Off) => Ok(None),
            Tmo::Secs(s) if (0.0..=1e9).contains(&s) => Ok(Some(Duration::from_secs_f64(s))),
            Tmo::Secs(s) => Err(err(
                field,
                format!("{s} is not a number of seconds or \"off\""),
            )),
        }
    }
}

/// Parameters of `bdev_srp_attach` (see the crate docs for each field).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SrpAttachParams {
    /// Name of the bdev to create.
    pub name: String,
    /// Target address `IP:PORT` (rdma_cm).
    pub dest: String,
    /// Source address to bind (`IP`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<String>,
    /// First half of the target port id (hex).
    pub id_ext: String,
    /// Second half of the target port id (hex).
    pub ioc_guid: String,
    /// First half of our initiator port id (hex, default 0); the second half
    /// is the port GUID, as ib_srp builds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initiator_ext: Option<String>,
    /// LUN (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lun: Option<u16>,
    /// Requested credits per channel (default 64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_size: Option<u32>,
    /// Largest transfer of one SRP_CMD in 512-byte sectors (default 1024;
    /// 8 MiB at most is used, and the LU's own limit from VPD 0xB0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sect: Option<u32>,
    /// RDMA channels (default: one per reactor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ch_count: Option<u32>,
    /// Ask for immediate data (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub immediate_data: Option<bool>,
    /// Largest write sent as immediate data (default 8192).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_imm_data: Option<u32>,
    /// Command time-out (default 30 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd_timeout_s: Option<Tmo>,
    /// Delay before (each) reconnect attempt (default 10 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconnect_delay_s: Option<Tmo>,
    /// After a connection loss, fail I/O after this long (default 15 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast_io_fail_tmo_s: Option<Tmo>,
    /// After a connection loss, remove the bdev after this long (default 600 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev_loss_tmo_s: Option<Tmo>,
    /// `"verbs"` (default) or `"loopback"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// As ib_srp's `allow_ext_sg` (default false): send indirect tables
    /// longer than the IU holds and let the target fetch the rest by RDMA
    /// READ. strata's target does; LIO's ib_srpt refuses such commands, so
    /// by default those requests go through a bounce buffer instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_ext_sg: Option<bool>,
}

/// A parameter error; the message names the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid parameter `{field}`: {reason}")]
pub struct ParamError {
    /// The parameter.
    pub field: &'static str,
    /// Why.
    pub reason: String,
}

fn err(field: &'static str, reason: impl Into<String>) -> ParamError {
    ParamError {
        field,
        reason: reason.into(),
    }
}

/// Validated session configuration.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Bdev name.
    pub name: String,
    /// Target address.
    pub dest: SocketAddr,
    /// Source address.
    pub src: Option<SocketAddr>,
    /// Target port id.
    pub target_port_id: PortId,
    /// `initiator_ext`.
    pub initiator_ext: u64,
    /// LUN.
    pub lun: u16,
    /// Credits asked for per channel.
    pub queue_size: u32,
    /// Largest transfer per SRP_CMD, bytes.
    pub max_transfer: u32,
    /// Channels wanted (None: one per reactor).
    pub ch_count: Option<u32>,
    /// Ask for immediate data.
    pub immediate_data: bool,
    /// Largest immediate write, bytes.
    pub max_imm_data: u32,
    /// Command time-out.
    pub cmd_timeout: Duration,
    /// Reconnect delay (None: no reconnect).
    pub reconnect_delay: Option<Duration>,
    /// Fast I/O fail time-out.
    pub fast_io_fail_tmo: Option<Duration>,
    /// Device loss time-out.
    pub dev_loss_tmo: Option<Duration>,
    /// Provider.
    pub provider: rdma::Provider,
    /// Let the target fetch descriptor tables.
    pub allow_ext_sg: bool,
}

impl SessionConfig {
    /// The `req_it_iu_len` we ask for: room for an indirect descriptor with
    /// [`INLINE_SG_ENTRIES`] inline entries, and for the immediate data.
    pub fn req_it_iu_len(&self) -> u32 {
        let indirect = (srp::SRP_CMD_HEADER_SIZE
            + srp::INDIRECT_HEADER_SIZE
            + INLINE_SG_ENTRIES as usize * srp::DirectBuf::SIZE) as u32;
        let imm = if self.immediate_data {
            u32::from(srp::LINUX_IMM_DATA_OFFSET) + self.max_imm_data
        } else {
            0
        };
        indirect.max(imm)
    }
}

/// Parses 1..=16 hex digits with an optional `0x`.
pub fn parse_hex_u64(field: &'static str, s: &str) -> Result<u64, ParamError> {
    PortId::parse_half(s).map_err(|r| err(field, r))
}

impl SrpAttachParams {
    /// Validates; `reactors` is how many reactors the daemon runs.
    pub fn validate(&self, reactors: usize) -> Result<SessionConfig, ParamError> {
        bdev::check_name(&self.name).map_err(|e| err("name", strip(&e.to_string())))?;
        let dest: SocketAddr = self
            .dest
            .parse()
            .map_err(|_| err("dest", format!("`{}` is not IP:PORT", self.dest)))?;
        if dest.port() == 0 {
            return Err(err("dest", "port 0 is not allowed"));
        }
        let src = match &self.src {
            None => None,
            Some(s) => {
                let ip: IpAddr = s
                    .parse()
                    .map_err(|_| err("src", format!("`{s}` is not an IP address")))?;
                Some(SocketAddr::new(ip, 0))
            }
        };
        let id_ext = parse_hex_u64("id_ext", &self.id_ext)?;
        let ioc_guid = parse_hex_u64("ioc_guid", &self.ioc_guid)?;
        let initiator_ext = match &self.initiator_ext {
            Some(s) => parse_hex_u64("initiator_ext", s)?,
            None => 0,
        };
        let lun = self.lun.unwrap_or(0);
        if lun > 16383 {
            return Err(err("lun", format!("{lun} is above 16383")));
        }
        let queue_size = self.queue_size.unwrap_or(64);
        if !(2..=MAX_QUEUE_SIZE).contains(&queue_size) {
            return Err(err(
                "queue_size",
                format!("{queue_size} is not between 2 and {MAX_QUEUE_SIZE}"),
            ));
        }
        let max_sect = self.max_sect.unwrap_or(DEFAULT_MAX_SECT);
        if !(8..=(1 << 16)).contains(&max_sect) {
            return Err(err(
                "max_sect",
                format!("{max_sect} is not between 8 and 65536 sectors"),
            ));
        }
        let ch_count = match self.ch_count {
            None => None,
            Some(n) if n >= 1 && n as usize <= reactors.max(1) => Some(n),
            Some(n) => {
                return Err(err(
                    "ch_count",
                    format!("{n} is not between 1 and the {reactors} reactors"),
                ))
            }
        };
        let max_imm_data = self.max_imm_data.unwrap_or(8192);
        if !(512..=MAX_IMM_DATA).contains(&max_imm_data) {
            return Err(err(
                "max_imm_data",
                format!("{max_imm_data} is not between 512 and {MAX_IMM_DATA}"),
            ));
        }
        let cmd_timeout = match self
            .cmd_timeout_s
            .unwrap_or(Tmo::Secs(30.0))
            .get("cmd_timeout_s")?
        {
            Some(d) if !d.is_zero() => d,
            _ => return Err(err("cmd_timeout_s", "must be a positive number of seconds")),
        };
        let reconnect_delay = self
            .reconnect_delay_s
            .unwrap_or(Tmo::Secs(10.0))
            .get("reconnect_delay_s")?;
        let fast_io_fail_tmo = self
            .fast_io_fail_tmo_s
            .unwrap_or(Tmo::Secs(15.0))
            .get("fast_io_fail_tmo_s")?;
        let dev_loss_tmo = self
            .dev_loss_tmo_s
            .unwrap_or(Tmo::Secs(600.0))
            .get("dev_loss_tmo_s")?;
        check_tmos(reconnect_delay, fast_io_fail_tmo, dev_loss_tmo)?;
        let provider = match self.provider.as_deref() {
            None | Some("verbs") => rdma::Provider::Verbs,
            Some("loopback") => rdma::Provider::Loopback,
            Some(o) => {
                return Err(err(
                    "provider",
                    format!("`{o}` is not \"verbs\" or \"loopback\""),
                ))
            }
        };
        Ok(SessionConfig {
            name: self.name.clone(),
            dest,
            src,
            target_port_id: PortId::from_parts(id_ext, ioc_guid),
            initiator_ext,
            lun,
            queue_size,
            max_transfer: max_sect * 512,
            ch_count,
            immediate_data: self.immediate_data.unwrap_or(true),
            max_imm_data,
            cmd_timeout,
            reconnect_delay,
            fast_io_fail_tmo,
            dev_loss_tmo,
            provider,
            allow_ext_sg: self.allow_ext_sg.unwrap_or(false),
        })
    }
}

/// `srp_tmo_valid()`.
fn check_tmos(
    reconnect: Option<Duration>,
    fast_io_fail: Option<Duration>,
    dev_loss: Option<Duration>,
) -> Result<(), ParamError> {
    if reconnect.is_none() && fast_io_fail.is_none() && dev_loss.is_none() {
        return Err(err(
            "reconnect_delay_s",
            "reconnect_delay_s, fast_io_fail_tmo_s and dev_loss_tmo_s cannot all be off",
        ));
    }
    if reconnect.is_some_and(|d| d.is_zero()) {
        return Err(err("reconnect_delay_s", "must be above 0 (or \"off\")"));
    }
    let max = Duration::from_secs_f64(BLOCK_MAX_TIMEOUT_S);
    if fast_io_fail.is_some_and(|d| d > max) {
        return Err(err("fast_io_fail_tmo_s", "must be at most 600 seconds"));
    }
    if fast_io_fail.is_none() && dev_loss.is_some_and(|d| d > max) {
        return Err(err(
            "dev_loss_tmo_s",
            "must be at most 600 seconds when fast_io_fail_tmo_s is off",
        ));
    }
    if let (Some(f), Some(d)) = (fast_io_fail, dev_loss) {
        if f >= d {
            return Err(err(
                "fast_io_fail_tmo_s",
                format!(
                    "must be below dev_loss_tmo_s ({} >= {} s)",
                    f.as_secs_f64(),
                    d.as_secs_f64()
                ),
            ));
        }
    }
    Ok(())
}

/// `invalid parameter `name`: why` → `why`.
fn strip(s: &str) -> String {
    s.split_once(": ").map(|(_, r)| r).unwrap_or(s).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(extra: serde_json::Value) -> Result<SessionConfig, ParamError> {
        let mut v = serde_json::json!({
            "name": "srp0", "dest": "10.0.2.15:5555", "id_ext": "0x1", "ioc_guid": "2",
        });
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        let p: SrpAttachParams =
            serde_json::from_value(v).map_err(|e| err("json", e.to_string()))?;
        p.validate(2)
    }

    #[test]
    fn defaults_as_ib_srp() {
        let c = p(serde_json::json!({})).unwrap();
        assert_eq!(c.queue_size, 64);
        assert_eq!(c.max_transfer, 512 * 1024);
        assert_eq!(c.cmd_timeout, Duration::from_secs(30));
        assert_eq!(c.reconnect_delay, Some(Duration::from_secs(10)));
        assert_eq!(c.fast_io_fail_tmo, Some(Duration::from_secs(15)));
        assert_eq!(c.dev_loss_tmo, Some(Duration::from_secs(600)));
        assert_eq!(c.target_port_id, PortId::from_parts(1, 2));
        assert_eq!(c.req_it_iu_len(), 68 + 8192);
        assert_eq!(c.provider, rdma::Provider::Verbs);
    }

    #[test]
    fn timeouts_obey_srp_tmo_valid() {
        let e = |v| p(v).unwrap_err().field;
        assert_eq!(
            e(serde_json::json!({"reconnect_delay_s": 0})),
            "reconnect_delay_s"
        );
        assert_eq!(
            e(serde_json::json!({"fast_io_fail_tmo_s": 20, "dev_loss_tmo_s": 20})),
            "fast_io_fail_tmo_s"
        );
        assert_eq!(
            e(serde_json::json!({"fast_io_fail_tmo_s": 601})),
            "fast_io_fail_tmo_s"
        );
        assert_eq!(
            e(serde_json::json!({"fast_io_fail_tmo_s": "off", "dev_loss_tmo_s": 700})),
            "dev_loss_tmo_s"
        );
        assert_eq!(
            e(
                serde_json::json!({"reconnect_delay_s": "off", "fast_io_fail_tmo_s": "off", "dev_loss_tmo_s": "off"})
            ),
            "reconnect_delay_s"
        );
        assert_eq!(e(serde_json::json!({"cmd_timeout_s": 0})), "cmd_timeout_s");
        assert_eq!(e(serde_json::json!({"cmd_timeout_s": -1})), "cmd_timeout_s");
        let c = p(serde_json::json!({"fast_io_fail_tmo_s": "off", "dev_loss_tmo_s": 60, "reconnect_delay_s": 0.5})).unwrap();
        assert_eq!(c.fast_io_fail_tmo, None);
        assert_eq!(c.reconnect_delay, Some(Duration::from_millis(500)));
        // "off" is the only word.
        assert_eq!(e(serde_json::json!({"dev_loss_tmo_s": "never"})), "json");
    }

    #[test]
    fn bad_fields_are_named() {
        let e = |v| p(v).unwrap_err();
        assert_eq!(e(serde_json::json!({"dest": "10.0.2.15"})).field, "dest");
        assert_eq!(e(serde_json::json!({"dest": "1.2.3.4:0"})).field, "dest");
        assert_eq!(e(serde_json::json!({"src": "x"})).field, "src");
        assert_eq!(e(serde_json::json!({"id_ext": "xyz"})).field, "id_ext");
        assert_eq!(e(serde_json::json!({"queue_size": 1})).field, "queue_size");
        assert_eq!(e(serde_json::json!({"ch_count": 3})).field, "ch_count");
        assert_eq!(e(serde_json::json!({"ch_count": 0})).field, "ch_count");
        assert_eq!(e(serde_json::json!({"provider": "tcp"})).field, "provider");
        assert_eq!(e(serde_json::json!({"name": "a/b"})).field, "name");
        assert_eq!(
            e(serde_json::json!({"max_imm_data": 100})).field,
            "max_imm_data"
        );
        assert_eq!(e(serde_json::json!({"lun": 20000})).field, "lun");
    }

    #[test]
    fn round_trips_for_save_config() {
        let v = serde_json::json!({
            "name": "srp0", "dest": "10.0.2.15:5555", "id_ext": "0x1", "ioc_guid": "2",
            "fast_io_fail_tmo_s": "off", "dev_loss_tmo_s": 30.0,
        });
        let p: SrpAttachParams = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(serde_json::to_value(&p).unwrap(), v);
    }
}
