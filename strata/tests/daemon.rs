//! The daemon end to end: a real `strata serve` process driven over its
//! RPC socket.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{run, scratch, Serve};
use serde_json::{json, Value};

fn alive(s: &Serve) {
    let methods = s.ok("rpc_get_methods", json!(null));
    assert!(methods
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m == "bdev_get_bdevs"));
}

#[test]
fn default_config_serves_a_malloc_bdev_over_vhost_and_socket_is_private() {
    let dir = scratch();
    let s = Serve::start(dir.path(), &["--embedded-default"]);
    let c = s.ok("vhost_get_controllers", json!({}));
    assert_eq!(c[0]["ctrlr"], "vhost0");
    assert_eq!(c[0]["bdev"], "Malloc0");
    assert_eq!(c[0]["socket"], "/var/tmp/strata-vhost0.sock");
    assert!(std::path::Path::new("/var/tmp/strata-vhost0.sock").exists());
    assert_eq!(
        s.call("bdev_delete", json!({"name": "Malloc0"})),
        Err((-32003, "bdev `Malloc0` is in use by `vhost:vhost0`".into()))
    );
    let mode = std::fs::metadata(&s.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let b = s.ok("bdev_get_bdevs", json!({}));
    assert_eq!(b[0]["name"], "Malloc0");
    assert_eq!(b[0]["kind"], "malloc");
    assert_eq!(b[0]["num_blocks"], 131072);
    // The data path works: write, verify, read counters move.
    assert_eq!(s.ok("bdev_io", json!({"name": "Malloc0", "op": "write", "offset_blocks": 8, "num_blocks": 8, "seed": 3}))["status"], "success");
    let v = s.ok(
        "bdev_io",
        json!({"name": "Malloc0", "op": "verify", "offset_blocks": 8, "num_blocks": 8, "seed": 3}),
    );
    assert_eq!(v, json!({"status": "success", "mismatched_blocks": 0}));
    let v = s.ok(
        "bdev_io",
        json!({"name": "Malloc0", "op": "verify", "offset_blocks": 8, "num_blocks": 9, "seed": 3}),
    );
    assert_eq!(v["mismatched_blocks"], 1, "block 16 was never written");
    let st = &s.ok("bdev_get_bdevs", json!({"name": "Malloc0"}))[0]["stats"];
    assert_eq!(st["num_write_ops"], 1);
    assert_eq!(st["num_read_ops"], 2);
    assert_eq!(st["bytes_written"], 8 * 512);
    let r = s.ok("reactor_get_stats", json!({}));
    assert_eq!(r["reactors"][0]["core"], 0);
}

#[test]
fn bad_rpc_input_gets_exact_errors_and_the_daemon_keeps_serving() {
    let dir = scratch();
    let s = Serve::start(dir.path(), &[]);
    let cases: Vec<(&str, Value, i64, &str)> = vec![
        ("no_such_method", json!({}), -32601, "unknown method `no_such_method`"),
        ("bdev_malloc_create", json!({"name": "m", "num_blocks": 8}), -32602, "invalid params: missing field `block_size`"),
        (
            "bdev_malloc_create",
            json!({"name": "m", "num_blocks": 8, "block_size": 512, "bogus": 1}),
            -32602,
            "invalid parameter `bogus`: unknown field `bogus`, expected one of `name`, `num_blocks`, `block_size`",
        ),
        (
            "bdev_malloc_create",
            json!({"name": "m", "num_blocks": -1, "block_size": 512}),
            -32602,
            "invalid parameter `num_blocks`: invalid value: integer `-1`, expected u64",
        ),
        (
            "bdev_malloc_create",
            json!({"name": "m", "num_blocks": 8, "block_size": 1000}),
            -32602,
            "invalid parameter `block_size`: 1000 is not a power of two between 512 and 65536",
        ),
        (
            "bdev_malloc_create",
            json!({"name": "m", "num_blocks": 0, "block_size": 512}),
            -32602,
            "invalid parameter `num_blocks`: must be greater than zero",
        ),
        ("bdev_malloc_create", json!({"name": "a/b", "num_blocks": 8, "block_size": 512}), -32602, "invalid parameter `name`: `a/b` may only contain letters, digits, _ - . :"),
        ("bdev_malloc_create", json!({"name": "Malloc0", "num_blocks": 8, "block_size": 512}), -32002, "bdev `Malloc0` already exists"),
        ("bdev_delete", json!({"name": "nope"}), -32001, "bdev `nope` does not exist"),
        ("bdev_get_bdevs", json!({"name": "nope"}), -32001, "bdev `nope` does not exist"),
        ("bdev_error_create", json!({"name": "e", "base": "nope"}), -32001, "bdev `nope` does not exist"),
        ("bdev_error_inject", json!({"name": "Malloc0"}), -32602, "invalid parameter `name`: `Malloc0` is not an error bdev"),
        ("bdev_file_create", json!({"name": "f", "filename": "/nonexistent/x.img"}), -32000, "/nonexistent/x.img: does not exist: No such file or directory (os error 2)"),
        ("bdev_io", json!({"name": "Malloc0", "op": "read", "offset_blocks": 131072, "num_blocks": 1}), 0, "invalid_request"),
        ("bdev_io", json!({"name": "Malloc0", "op": "read", "offset_blocks": 0, "num_blocks": 0}), 0, "invalid_request"),
    ];
    for (method, params, code, msg) in cases {
        match s.call(method, params.clone()) {
            Err((c, m)) => {
                assert_eq!((c, m.as_str()), (code, msg), "{method} {params}");
            }
            Ok(v) => {
                // bdev_io reports I/O failures as a status, not an RPC error.
                assert_eq!(code, 0, "{method} {params} unexpectedly succeeded: {v}");
                assert_eq!(v["status"], msg, "{method} {params}");
            }
        }
        alive(&s);
    }
    // Protocol-level garbage.
    let r = s.raw(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"rpc_get_methods\"}\n{\"bad json");
    assert_eq!(r.len(), 2);
    assert!(r[0]["result"].is_array());
    assert_eq!(r[1]["error"]["code"], -32700);
    let r = s.raw(b"[1, 2, 3]");
    assert_eq!(r[0].as_array().unwrap().len(), 3);
    assert_eq!(r[0][0]["error"]["message"], "request must be a JSON object");
    let r = s.raw(b"{\"jsonrpc\":\"1.0\",\"id\":2,\"method\":\"rpc_get_methods\"}");
    assert_eq!(
        r[0]["error"],
        json!({"code": -32600, "message": "`jsonrpc` must be \"2.0\""})
    );
    let r = s.raw(b"{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":5}");
    assert_eq!(r[0]["error"]["message"], "`method` must be a string");
    let r = s.raw(b"{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"bdev_get_bdevs\",\"params\":[1]}");
    assert_eq!(r[0]["error"]["message"], "params must be a JSON object");
    // A notification (no id) gets no answer; the one after it does.
    let r = s.raw(b"{\"jsonrpc\":\"2.0\",\"method\":\"rpc_get_methods\"} {\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"rpc_get_methods\"}");
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["id"], 9);
    let r = s.raw(b"[]");
    assert_eq!(r[0]["error"]["code"], -32600);
    alive(&s);
    // The CLI client reports errors with a non-zero status.
    let sock = s.socket.to_str().unwrap();
    let (code, _, err) = run(&["rpc", "-s", sock, "bdev_delete", r#"{"name":"nope"}"#]);
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        "strata: rpc bdev_delete: error -32001: bdev `nope` does not exist"
    );
    let (code, _, err) = run(&["rpc", "-s", sock, "bdev_delete", "{nope"]);
    assert_eq!(code, 2);
    assert!(err.contains("PARAMS_JSON is not valid JSON"), "{err}");
}

#[test]
fn bdev_lifecycle_claims_and_save_config_round_trip() {
    let dir = scratch();
    let img = dir.path().join("disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let s = Serve::start(dir.path(), &[]);
    s.ok(
        "bdev_null_create",
        json!({"name": "n0", "num_blocks": 1000, "block_size": 4096}),
    );
    s.ok(
        "bdev_file_create",
        json!({"name": "f0", "filename": img.to_str().unwrap(), "block_size": 4096}),
    );
    s.ok("bdev_error_create", json!({"name": "e0", "base": "f0"}));
    s.ok(
        "bdev_delay_create",
        json!({"name": "d0", "base": "e0", "read_us": 10, "write_us": 20}),
    );
    assert_eq!(
        s.call("bdev_delete", json!({"name": "f0"})),
        Err((-32003, "bdev `f0` is in use by `e0`".into()))
    );
    assert_eq!(
        s.call("bdev_error_create", json!({"name": "e1", "base": "f0"})),
        Err((-32003, "bdev `f0` is in use by `e0`".into()))
    );
    // Error injection through the delay bdev on top.
    s.ok(
        "bdev_error_inject",
        json!({"name": "e0", "io_type": "write", "range": [10, 2]}),
    );
    assert_eq!(
        s.ok(
            "bdev_io",
            json!({"name": "d0", "op": "write", "offset_blocks": 11, "num_blocks": 1})
        )["status"],
        "medium_error"
    );
    assert_eq!(
        s.ok(
            "bdev_io",
            json!({"name": "d0", "op": "write", "offset_blocks": 12, "num_blocks": 1})
        )["status"],
        "success"
    );
    s.ok("bdev_error_inject", json!({"name": "e0", "clear": true}));

    let saved = s.ok("save_config", json!({}));
    let cfg = dir.path().join("saved.json");
    std::fs::write(&cfg, serde_json::to_vec_pretty(&saved).unwrap()).unwrap();
    let before = s.ok("bdev_get_bdevs", json!({}));
    drop(s);
    let s2 = Serve::start(dir.path(), &["--config", cfg.to_str().unwrap()]);
    let after = s2.ok("bdev_get_bdevs", json!({}));
    let shape = |v: &Value| -> Vec<(Value, Value, Value, Value, Value)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|b| {
                (
                    b["name"].clone(),
                    b["kind"].clone(),
                    b["num_blocks"].clone(),
                    b["block_size"].clone(),
                    b["claimed_by"].clone(),
                )
            })
            .collect()
    };
    assert_eq!(shape(&before), shape(&after));
    // Data written through the stack before the restart is still there.
    let v = s2.ok(
        "bdev_io",
        json!({"name": "d0", "op": "verify", "offset_blocks": 12, "num_blocks": 1}),
    );
    assert_eq!(v["mismatched_blocks"], 0);
    // Deleting users first releases the bases.
    s2.ok("bdev_delete", json!({"name": "d0"}));
    s2.ok("bdev_delete", json!({"name": "e0"}));
    s2.ok("bdev_delete", json!({"name": "f0"}));
}

#[test]
fn config_errors_name_file_field_and_reason() {
    let dir = scratch();
    let sock = dir.path().join("c.sock");
    let sock = sock.to_str().unwrap();
    let cases: Vec<(&str, String)> = vec![
        (
            r#"{"cores": [0], "calls": [{"method": "bdev_malloc_create", "params": {"name": "m", "num_blocks": 8, "block_size": 1000}}]}"#,
            "calls[0].params.block_size: invalid parameter `block_size`: 1000 is not a power of two between 512 and 65536".into(),
        ),
        (
            r#"{"calls": [{"method": "bdev_malloc_create", "params": {"name": "m", "num_blocks": "x", "block_size": 512}}]}"#,
            "calls[0].params.num_blocks: invalid parameter `num_blocks`: invalid type: string \"x\", expected u64".into(),
        ),
        (r#"{"calls": [{"method": "bdev_frobnicate", "params": {}}]}"#, "calls[0].method: unknown method `bdev_frobnicate`".into()),
        (r#"{"cores": "zero"}"#, "cores: invalid type: string \"zero\", expected a sequence".into()),
        (r#"{"calls": [}"#, "line 1 column 12: invalid JSON".into()),
        (r#"{"cores": [4096]}"#, "core 4096 is not available to this process".into()),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let f = dir.path().join(format!("bad{i}.json"));
        std::fs::write(&f, text).unwrap();
        let fs = f.to_str().unwrap();
        let (code, _, err) = run(&["serve", "--config", fs, "--rpc-socket", sock]);
        assert_eq!(code, 1, "{text}: {err}");
        assert!(
            err.contains(want.as_str()),
            "{text}: wanted `{want}` in `{err}`"
        );
        if !want.starts_with("core ") {
            assert!(
                err.contains(&format!("config error: {fs}: ")),
                "names the file: {err}"
            );
        }
    }
    let (code, _, err) = run(&[
        "serve",
        "--config",
        "/nonexistent.json",
        "--rpc-socket",
        sock,
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("/nonexistent.json: (file): cannot be read"),
        "{err}"
    );
    let (code, _, err) = run(&["serve", "--cores", "x"]);
    assert_eq!(code, 2);
    assert!(err.contains("--cores: `x` is not a core number"), "{err}");
    let (code, _, _) = run(&["frobnicate"]);
    assert_eq!(code, 2);
}

#[test]
fn second_daemon_on_the_same_socket_is_refused() {
    let dir = scratch();
    let s = Serve::start(dir.path(), &[]);
    let (code, _, err) = run(&[
        "serve",
        "--rpc-socket",
        s.socket.to_str().unwrap(),
        "--idle-sleep-us",
        "200",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("another strata (or another program) is listening"),
        "{err}"
    );
    alive(&s);
}

#[test]
fn sigterm_and_sigint_drain_and_exit_zero() {
    for sig in ["TERM", "INT"] {
        let dir = scratch();
        let mut s = Serve::start(dir.path(), &[]);
        let sock = s.socket.clone();
        assert_eq!(
            s.signal_and_wait(sig),
            Some(0),
            "SIG{sig}: {}",
            s.log_text()
        );
        assert!(!sock.exists(), "socket removed on exit");
        assert!(s.log_text().contains("stopped cleanly"));
    }
}

/// Writes acknowledged by a file bdev survive `kill -9` of the daemon: a
/// writer keeps writing distinct patterns; the daemon is killed mid-stream;
/// a fresh daemon over the same file reads back every acknowledged write.
#[test]
fn acknowledged_writes_survive_kill_9() {
    let dir = scratch();
    let img = dir.path().join("durable.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let cfg = dir.path().join("file.json");
    std::fs::write(
        &cfg,
        serde_json::to_vec(&json!({"calls": [{"method": "bdev_file_create", "params": {"name": "f", "filename": img.to_str().unwrap(), "block_size": 4096}}]}))
            .unwrap(),
    )
    .unwrap();
    let cfgs = cfg.to_str().unwrap().to_string();
    let mut s = Serve::start(dir.path(), &["--config", &cfgs]);
    let acked: Arc<Mutex<Vec<(u64, u64)>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let acked = Arc::clone(&acked);
        let stop = Arc::clone(&stop);
        let sock = s.socket.clone();
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let lba = (i * 7) % 4000;
                match common::rpc_write(&sock, "f", lba, 4, 1000 + i) {
                    Some(true) => acked.lock().unwrap().push((lba, 1000 + i)),
                    Some(false) => {}
                    None => break, // killed before answering: not acknowledged
                }
                i += 1;
            }
        })
    };
    // Let some writes land, then kill without warning.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 40 {
        assert!(
            std::time::Instant::now() < deadline,
            "writes did not progress"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(s.signal_and_wait("KILL"), None, "killed by signal");
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    let _ = std::fs::remove_file(&s.socket);
    let s2 = Serve::start(dir.path(), &["--config", &cfgs]);
    // Check every acknowledged write not overwritten by a later one.
    let checked = common::verify_acked(&s2, "f", 4, &acked);
    assert!(checked >= 40, "verified {checked} acknowledged writes");
}
