//! The config file: the daemon's settings plus the same `{"method",
//! "params"}` calls as the RPC API, replayed in order at start-up.
//! `save_config` writes this format back.
//!
//! ```json
//! {
//!   "cores": [0, 1],
//!   "idle_sleep_us": 0,
//!   "rpc_socket": "/var/tmp/strata.sock",
//!   "calls": [
//!     { "method": "bdev_malloc_create", "params": { "name": "Malloc0", "num_blocks": 131072, "block_size": 512 } }
//!   ]
//! }
//! ```
//!
//! Every error names the file, the field (as a path such as
//! `calls[2].params.block_size`) and the reason.

use serde::Deserialize;
use serde_json::Value;

use crate::daemon::Daemon;

/// The embedded default: a 64 MiB malloc bdev, so `strata serve` with no
/// arguments serves something at once.
pub const DEFAULT_CONFIG: &str = include_str!("default-config.json");

/// A parsed config file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Reactor cores.
    #[serde(default)]
    pub cores: Option<Vec<usize>>,
    /// Reactor idle sleep in µs (0 = pure polling).
    #[serde(default)]
    pub idle_sleep_us: Option<u64>,
    /// RPC socket path.
    #[serde(default)]
    pub rpc_socket: Option<String>,
    /// Calls to replay.
    #[serde(default)]
    pub calls: Vec<Call>,
}

/// One `{method, params}` entry.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Call {
    /// RPC method name.
    pub method: String,
    /// Its parameters.
    #[serde(default)]
    pub params: Value,
}

/// A config error: file, field and reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {field}: {reason}")]
pub struct ConfigError {
    /// The file (or `<embedded default>`).
    pub file: String,
    /// The field at fault, as a path.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl Config {
    /// Parses config text; `file` is used in error messages.
    pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
        let err = |field: String, reason: String| ConfigError {
            file: file.to_string(),
            field,
            reason,
        };
        let value: Value = serde_json::from_str(text).map_err(|e| {
            err(
                format!("line {} column {}", e.line(), e.column()),
                format!("invalid JSON: {e}"),
            )
        })?;
        // A bare list of calls is accepted too.
        let value = if value.is_array() {
            serde_json::json!({ "calls": value })
        } else {
            value
        };
        if !value.is_object() {
            return Err(err(
                "(top level)".into(),
                "must be a JSON object or a list of calls".into(),
            ));
        }
        let cfg: Config = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            err(
                if path == "." {
                    "(top level)".into()
                } else {
                    path
                },
                inner,
            )
        })?;
        if let Some(c) = &cfg.cores {
            if c.is_empty() {
                return Err(err("cores".into(), "must list at least one core".into()));
            }
        }
        for (i, c) in cfg.calls.iter().enumerate() {
            if !(c.params.is_null() || c.params.is_object()) {
                return Err(err(
                    format!("calls[{i}].params"),
                    "must be a JSON object".into(),
                ));
            }
        }
        Ok(cfg)
    }

    /// Reads and parses a file.
    pub fn load(path: &str) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_string(),
            field: "(file)".into(),
            reason: format!("cannot be read: {e}"),
        })?;
        Config::parse(path, &text)
    }

    /// Replays the calls on a daemon; the first failure is reported with
    /// the path of the field at fault.
    pub fn apply(&self, file: &str, d: &Daemon) -> Result<(), ConfigError> {
        for (i, c) in self.calls.iter().enumerate() {
            if let Err(e) = d.call(&c.method, c.params.clone()) {
                let field = if e.code == crate::rpc::code::METHOD_NOT_FOUND {
                    format!("calls[{i}].method")
                } else if let Some(f) = &e.field {
                    format!("calls[{i}].params.{f}")
                } else {
                    format!("calls[{i}] ({})", c.method)
                };
                return Err(ConfigError {
                    file: file.to_string(),
                    field,
                    reason: e.message,
                });
            }
        }
        Ok(())
    }
}

/// Parses a core list: `0,1`, `0-3`, `[0,1]`, or combinations (`0,2-3`).
pub fn parse_cores(s: &str) -> Result<Vec<usize>, String> {
    let s = s.trim().trim_start_matches('[').trim_end_matches(']');
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("`{part}` is not a core number or range (e.g. 0,1 or 0-3)");
        if let Some((a, b)) = part.split_once('-') {
            let a: usize = a.trim().parse().map_err(|_| bad())?;
            let b: usize = b.trim().parse().map_err(|_| bad())?;
            if a > b || b - a > 4096 {
                return Err(bad());
            }
            out.extend(a..=b);
        } else {
            out.push(part.parse().map_err(|_| bad())?);
        }
    }
    if out.is_empty() {
        return Err("no cores given".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_parses() {
        let c = Config::parse("<embedded default>", DEFAULT_CONFIG).unwrap();
        assert_eq!(c.cores, Some(vec![0]));
        assert_eq!(c.calls[0].method, "bdev_malloc_create");
    }

    #[test]
    fn errors_name_file_field_and_reason() {
        let e = Config::parse("a.json", "{\"cores\": [0],}").unwrap_err();
        assert_eq!(e.file, "a.json");
        assert!(e.field.starts_with("line 1 column"), "{e}");
        assert!(e.reason.starts_with("invalid JSON"), "{e}");

        let e = Config::parse("a.json", r#"{"cores": ["x"]}"#).unwrap_err();
        assert_eq!(e.field, "cores[0]");
        assert!(e.reason.contains("invalid type: string \"x\""), "{e}");

        let e = Config::parse("a.json", r#"{"coers": [0]}"#).unwrap_err();
        assert!(e.reason.contains("unknown field `coers`"), "{e}");

        let e =
            Config::parse("a.json", r#"{"calls": [{"method": "x", "params": 3}]}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "a.json: calls[0].params: must be a JSON object"
        );

        let e = Config::parse("a.json", r#"{"calls": [{"params": {}}]}"#).unwrap_err();
        assert!(e.reason.contains("missing field `method`"), "{e}");

        let e = Config::parse("a.json", r#"{"cores": []}"#).unwrap_err();
        assert_eq!(e.to_string(), "a.json: cores: must list at least one core");

        let e = Config::load("/nonexistent/strata.json").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/nonexistent/strata.json: (file): cannot be read"),
            "{e}"
        );
    }

    #[test]
    fn bare_list_of_calls() {
        let c = Config::parse("b.json", r#"[{"method": "rpc_get_methods"}]"#).unwrap();
        assert_eq!(c.calls.len(), 1);
        assert_eq!(c.cores, None);
    }

    #[test]
    fn core_lists() {
        assert_eq!(parse_cores("0,1").unwrap(), vec![0, 1]);
        assert_eq!(parse_cores("[0, 2-3]").unwrap(), vec![0, 2, 3]);
        assert!(parse_cores("a")
            .unwrap_err()
            .contains("`a` is not a core number"));
        assert!(parse_cores("3-1").is_err());
        assert!(parse_cores("").is_err());
    }
}
