//! RPC-facing parameters (`srpt_target_create`) and their validated form.

use std::net::SocketAddr;

use serde::Deserialize;
use srp::PortId;

/// One LUN of `srpt_target_create`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LunParams {
    /// LUN number (0..=16383).
    pub lun: u16,
    /// Name of the bdev behind it.
    pub bdev: String,
}

/// Parameters of `srpt_target_create`:
///
/// ```json
/// {"name": "t0", "listen": "10.0.2.15:5555", "id_ext": "0x1", "ioc_guid": "0x2",
///  "luns": [{"lun": 0, "bdev": "Malloc0"}],
///  "acl": ["0xfe800000000000000002c90300a1b2c3"]}
/// ```
///
/// * `id_ext`, `ioc_guid`: hexadecimal, 1 to 16 digits, optional `0x`; the
///   target port id is `id_ext ‖ ioc_guid`, as the Linux initiator's
///   `add_target id_ext=...,ioc_guid=...` builds it.
/// * `acl`: initiator port ids, 32 hexadecimal digits each (optional `0x`;
///   `:` separators are ignored), as the Linux initiator builds them:
///   `initiator_ext ‖ port GUID`. **An empty list admits nobody**; the single
///   entry `"*"` admits every initiator. A login from an initiator that is not
///   admitted is rejected with `SRP_LOGIN_REJ` reason
///   `CHANNEL_LIMIT_REACHED` (what `ib_srpt` answers when no ACL matches) and
///   logged.
/// * `provider`: `"verbs"` (default) or `"loopback"`.
/// * `queue_depth`: credits (and receive buffers) per RDMA channel, default
///   128, 2..=4096.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SrptTargetParams {
    /// Target name (unique among targets).
    pub name: String,
    /// `IP:PORT` to listen on with rdma_cm.
    pub listen: String,
    /// Identifier extension (first half of the target port id).
    pub id_ext: String,
    /// I/O controller GUID (second half of the target port id).
    pub ioc_guid: String,
    /// LUN → bdev map.
    pub luns: Vec<LunParams>,
    /// Initiator port ids admitted (see the type docs).
    #[serde(default)]
    pub acl: Vec<String>,
    /// RDMA provider.
    #[serde(default)]
    pub provider: Option<String>,
    /// Credits per channel.
    #[serde(default)]
    pub queue_depth: Option<u32>,
}

/// Who may log in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acl {
    /// Every initiator (`"*"`).
    Any,
    /// Only these initiator port ids (empty: nobody).
    List(Vec<PortId>),
}

impl Acl {
    /// Whether `initiator` may log in.
    pub fn admits(&self, initiator: &PortId) -> bool {
        match self {
            Acl::Any => true,
            Acl::List(l) => l.contains(initiator),
        }
    }
}

/// A validated target configuration.
#[derive(Clone, Debug)]
pub struct TargetConfig {
    /// Target name.
    pub name: String,
    /// Listen address.
    pub listen: SocketAddr,
    /// Target port id (`id_ext ‖ ioc_guid`).
    pub port_id: PortId,
    /// Admitted initiators.
    pub acl: Acl,
    /// `(lun, bdev name)`, sorted by LUN.
    pub luns: Vec<(u16, String)>,
    /// RDMA provider.
    pub provider: rdma::Provider,
    /// Credits per channel.
    pub queue_depth: u32,
}

/// A configuration error; the message names the offending field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid parameter `{field}`: {reason}")]
pub struct ConfigError {
    /// The parameter.
    pub field: &'static str,
    /// Why it is wrong.
    pub reason: String,
}

fn err(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field,
        reason: reason.into(),
    }
}

/// Parses 1..=16 hex digits with an optional `0x`.
pub fn parse_hex_u64(field: &'static str, s: &str) -> Result<u64, ConfigError> {
    PortId::parse_half(s).map_err(|r| err(field, r))
}

/// Parses a 16-byte port id written as 32 hex digits (optional `0x`, `:`
/// separators ignored).
pub fn parse_port_id(field: &'static str, s: &str) -> Result<PortId, ConfigError> {
    let t = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    let digits: Vec<u8> = t.bytes().filter(|&b| b != b':').collect();
    if digits.len() != 32 || !digits.iter().all(|b| b.is_ascii_hexdigit()) {
        return Err(err(
            field,
            format!("`{s}` is not a port id of 32 hexadecimal digits"),
        ));
    }
    let mut id = [0u8; 16];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16).unwrap_or(0) as u8;
        let lo = (pair[1] as char).to_digit(16).unwrap_or(0) as u8;
        id[i] = hi << 4 | lo;
    }
    Ok(PortId(id))
}

/// Formats a port id as `0x` + 32 hex digits.
pub fn format_port_id(p: &PortId) -> String {
    p.to_hex()
}

impl SrptTargetParams {
    /// Validates the parameters.
    pub fn validate(&self) -> Result<TargetConfig, ConfigError> {
        let name = self.name.trim();
        if name.is_empty() || name.len() > 64 {
            return Err(err("name", "must be 1 to 64 characters"));
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
        {
            return Err(err(
                "name",
                format!("`{name}` may only contain letters, digits, _ - . :"),
            ));
        }
        let listen: SocketAddr = self
            .listen
            .parse()
            .map_err(|_| err("listen", format!("`{}` is not IP:PORT", self.listen)))?;
        if listen.port() == 0 {
            return Err(err("listen", "port 0 is not allowed"));
        }
        let id_ext = parse_hex_u64("id_ext", &self.id_ext)?;
        let ioc_guid = parse_hex_u64("ioc_guid", &self.ioc_guid)?;
        if self.luns.is_empty() {
            return Err(err("luns", "at least one LUN is required"));
        }
        let mut luns: Vec<(u16, String)> = Vec::with_capacity(self.luns.len());
        for l in &self.luns {
            if l.lun > scsi::MAX_LUN {
                return Err(err(
                    "luns",
                    format!("LUN {} is above {}", l.lun, scsi::MAX_LUN),
                ));
            }
            if luns.iter().any(|(n, _)| *n == l.lun) {
                return Err(err("luns", format!("LUN {} is listed twice", l.lun)));
            }
            if l.bdev.is_empty() {
                return Err(err("luns", format!("LUN {} has an empty bdev name", l.lun)));
            }
            luns.push((l.lun, l.bdev.clone()));
        }
        luns.sort_by_key(|(n, _)| *n);
        let acl = if self.acl.iter().any(|a| a == "*") {
            if self.acl.len() != 1 {
                return Err(err("acl", "\"*\" must be the only entry"));
            }
            Acl::Any
        } else {
            let mut ids = Vec::with_capacity(self.acl.len());
            for a in &self.acl {
                let id = parse_port_id("acl", a)?;
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
            Acl::List(ids)
        };
        let provider = match self.provider.as_deref() {
            None | Some("verbs") => rdma::Provider::Verbs,
            Some("loopback") => rdma::Provider::Loopback,
            Some(p) => {
                return Err(err(
                    "provider",
                    format!("`{p}` is not \"verbs\" or \"loopback\""),
                ))
            }
        };
        let queue_depth = self.queue_depth.unwrap_or(crate::DEFAULT_QUEUE_DEPTH);
        if !(2..=4096).contains(&queue_depth) {
            return Err(err(
                "queue_depth",
                format!("{queue_depth} is not in 2..=4096"),
            ));
        }
        Ok(TargetConfig {
            name: name.to_string(),
            listen,
            port_id: PortId::from_parts(id_ext, ioc_guid),
            acl,
            luns,
            provider,
            queue_depth,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> SrptTargetParams {
        serde_json::from_value(serde_json::json!({
            "name": "t0", "listen": "10.0.2.15:5555", "id_ext": "0x0002c90300a1b2c3",
            "ioc_guid": "2c90300a1b2c3", "luns": [{"lun": 1, "bdev": "m1"}, {"lun": 0, "bdev": "m0"}],
            "acl": ["0xfe80000000000000:0002c90300a1b2c3"]
        }))
        .unwrap()
    }

    #[test]
    fn valid_params() {
        let c = params().validate().unwrap();
        assert_eq!(c.port_id.id_ext(), 0x0002_c903_00a1_b2c3);
        assert_eq!(c.port_id.guid(), 0x0002_c903_00a1_b2c3);
        assert_eq!(c.luns[0], (0, "m0".to_string()));
        assert_eq!(c.provider, rdma::Provider::Verbs);
        let want = PortId::from_parts(0xfe80_0000_0000_0000, 0x0002_c903_00a1_b2c3);
        assert!(c.acl.admits(&want));
        assert!(!c.acl.admits(&PortId::default()));
        assert_eq!(format_port_id(&want), "0xfe800000000000000002c90300a1b2c3");
    }

    #[test]
    fn errors_name_the_field() {
        let cases: Vec<(&str, serde_json::Value)> = vec![
            ("listen", serde_json::json!("nope")),
            ("id_ext", serde_json::json!("0x12345678901234567")),
            ("ioc_guid", serde_json::json!("xyz")),
            ("acl", serde_json::json!(["0x12"])),
            (
                "acl",
                serde_json::json!(["*", "0xfe800000000000000002c90300a1b2c3"]),
            ),
            (
                "luns",
                serde_json::json!([{"lun": 0, "bdev": "a"}, {"lun": 0, "bdev": "b"}]),
            ),
            ("luns", serde_json::json!([])),
            ("luns", serde_json::json!([{"lun": 16384, "bdev": "a"}])),
            ("provider", serde_json::json!("rxe")),
            ("queue_depth", serde_json::json!(1)),
            ("name", serde_json::json!("a/b")),
        ];
        for (field, value) in cases {
            let mut v = serde_json::to_value(serde_json::json!({
                "name": "t0", "listen": "10.0.2.15:5555", "id_ext": "1", "ioc_guid": "2",
                "luns": [{"lun": 0, "bdev": "m0"}]
            }))
            .unwrap();
            v[field] = value;
            let p: SrptTargetParams = serde_json::from_value(v).unwrap();
            let e = p.validate().unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e
                .to_string()
                .starts_with(&format!("invalid parameter `{field}`")));
        }
    }

    #[test]
    fn acl_any_and_empty() {
        let mut p = params();
        p.acl = vec!["*".into()];
        assert_eq!(p.validate().unwrap().acl, Acl::Any);
        p.acl = vec![];
        let acl = p.validate().unwrap().acl;
        assert!(!acl.admits(&PortId::default()));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let r: Result<SrptTargetParams, _> = serde_json::from_value(serde_json::json!({
            "name": "t0", "listen": "1.2.3.4:1", "id_ext": "1", "ioc_guid": "2", "luns": [], "bogus": 1
        }));
        assert!(r.is_err());
    }
}
