//! A `strata serve` process under test, and raw RPC helpers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const STRATA: &str = env!("CARGO_BIN_EXE_strata");

/// A scratch directory on a real file system (O_DIRECT capable), under the
/// target dir.
pub fn scratch() -> tempfile::TempDir {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-scratch");
    std::fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

pub struct Serve {
    pub child: Option<Child>,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Serve {
    /// Starts `strata serve` with extra args (a 64 MiB `Malloc0` unless
    /// `--config` is among them); waits until its socket answers.
    pub fn start(dir: &Path, extra: &[&str]) -> Serve {
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        if !extra.contains(&"--config") && !extra.contains(&"--embedded-default") {
            let cfg = dir.join("malloc0.json");
            std::fs::write(
                &cfg,
                r#"{"calls": [{"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 131072, "block_size": 512}}]}"#,
            )
            .unwrap();
            args.extend(["--config".to_string(), cfg.to_string_lossy().into_owned()]);
        }
        args.retain(|a| a != "--embedded-default");
        let socket = dir.join(format!("rpc-{}.sock", std::process::id()));
        let log = dir.join("serve.log");
        let logf = std::fs::File::create(&log).unwrap();
        let child = Command::new(STRATA)
            .arg("serve")
            .arg("--rpc-socket")
            .arg(&socket)
            .args(["--idle-sleep-us", "200", "--cores", "0"])
            .args(&args)
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("spawn strata serve");
        let mut s = Serve {
            child: Some(child),
            socket,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = s.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("strata serve exited early with {st}: {}", s.log_text());
            }
            if UnixStream::connect(&s.socket).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "strata serve did not come up: {}",
                s.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Calls a method; Ok(result) or Err((code, message)).
    pub fn call(&self, method: &str, params: Value) -> Result<Value, (i64, String)> {
        let req = json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params});
        let resp = self
            .raw(format!("{req}\n").as_bytes())
            .pop()
            .expect("a response");
        assert_eq!(resp["id"], json!(7));
        if let Some(e) = resp.get("error") {
            return Err((
                e["code"].as_i64().unwrap(),
                e["message"].as_str().unwrap().to_string(),
            ));
        }
        Ok(resp["result"].clone())
    }

    pub fn ok(&self, method: &str, params: Value) -> Value {
        self.call(method, params)
            .unwrap_or_else(|e| panic!("{method} failed: {e:?}"))
    }

    /// Sends raw bytes, half-closes, and returns every response line.
    pub fn raw(&self, bytes: &[u8]) -> Vec<Value> {
        let mut s = UnixStream::connect(&self.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s.write_all(bytes).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        BufReader::new(s)
            .lines()
            .map(|l| serde_json::from_str(&l.unwrap()).expect("response is JSON"))
            .collect()
    }

    /// Sends a signal and waits (bounded) for exit; returns the exit code.
    pub fn signal_and_wait(&mut self, sig: &str) -> Option<i32> {
        let mut child = self.child.take().unwrap();
        Command::new("kill")
            .args([&format!("-{sig}"), &child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("strata did not exit after SIG{sig}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `strata` with args and returns (exit code, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(STRATA).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes `blocks` blocks of the verify pattern `seed` at `lba` of bdev
/// `name` with `bdev_io`: `Some(true)` once acknowledged, `Some(false)` if
/// the I/O failed, `None` if the daemon went away before answering (not
/// acknowledged).
pub fn rpc_write(sock: &Path, name: &str, lba: u64, blocks: u64, seed: u64) -> Option<bool> {
    let req = json!({"jsonrpc": "2.0", "id": 1, "method": "bdev_io",
        "params": {"name": name, "op": "write", "offset_blocks": lba, "num_blocks": blocks, "seed": seed}});
    let mut c = UnixStream::connect(sock).ok()?;
    c.write_all(format!("{req}\n").as_bytes()).ok()?;
    let mut line = String::new();
    if BufReader::new(&c).read_line(&mut line).unwrap_or(0) == 0 {
        return None;
    }
    let v: Value = serde_json::from_str(&line).expect("response is JSON");
    Some(v["result"]["status"] == "success")
}

/// Reads back every acknowledged `(lba, seed)` write of `blocks` blocks that
/// no later write overlapped, asserting it holds its pattern; returns how
/// many were checked.
pub fn verify_acked(s: &Serve, name: &str, blocks: u64, acked: &[(u64, u64)]) -> usize {
    let mut checked = 0;
    for (idx, (lba, seed)) in acked.iter().enumerate() {
        if acked[idx + 1..]
            .iter()
            .any(|(l, _)| l + blocks > *lba && *l < lba + blocks)
        {
            continue;
        }
        let v = s.ok(
            "bdev_io",
            json!({"name": name, "op": "verify", "offset_blocks": lba, "num_blocks": blocks, "seed": seed}),
        );
        assert_eq!(
            v["mismatched_blocks"], 0,
            "acknowledged write at {lba} (seed {seed}) lost"
        );
        checked += 1;
    }
    checked
}
