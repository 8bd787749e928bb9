//! The SRP initiator's RPCs (`bdev_srp_attach`, `bdev_srp_detach`,
//! `bdev_srp_get_sessions`) end to end in a real `strata serve`, against
//! strata's own SRP target over the loopback RDMA provider.
//!
//! The loopback fabric exists only inside one process, so every test puts
//! the target (`srpt_target_create`) and the initiator in the same daemon;
//! "the target goes away" is `srpt_target_delete`, "it comes back" is the
//! same `srpt_target_create` again. Each test runs its own daemon (its own
//! fabric), so they all use the same address.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{scratch, Serve, STRATA};
use serde_json::{json, Value};

const LISTEN: &str = "127.0.0.1:5555";
const ID_EXT: &str = "0x0002c90300aabb01";
const IOC_GUID: &str = "0x0002c90300aabb02";

/// `strata serve` with two reactors (so the session has two channels: one
/// logged in MULTICHAN_SINGLE, one MULTI) and the 64 MiB `Malloc0`
/// (131072 blocks of 512 bytes) unless `extra` has a `--config`.
fn serve(dir: &Path, extra: &[&str]) -> Serve {
    let mut args = vec!["--cores", "0,1"];
    args.extend_from_slice(extra);
    Serve::start(dir, &args)
}

/// `srpt_target_create` parameters: loopback, LUN 0 = `bdev`.
fn target_params(name: &str, bdev: &str, acl: Value) -> Value {
    json!({"name": name, "listen": LISTEN, "id_ext": ID_EXT, "ioc_guid": IOC_GUID,
        "luns": [{"lun": 0, "bdev": bdev}], "acl": acl, "provider": "loopback", "queue_depth": 32})
}

/// `bdev_srp_attach` parameters for the target of [`target_params`], with
/// `extra` merged in.
fn attach_params(name: &str, extra: Value) -> Value {
    let mut p = json!({"name": name, "dest": LISTEN, "id_ext": ID_EXT, "ioc_guid": IOC_GUID,
        "provider": "loopback", "queue_size": 16});
    for (k, v) in extra.as_object().expect("object") {
        p[k] = v.clone();
    }
    p
}

/// The one session of SRP bdev `name`.
fn session(s: &Serve, name: &str) -> Value {
    let v = s.ok("bdev_srp_get_sessions", json!({"name": name}));
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
    v[0].clone()
}

fn stat(s: &Serve, name: &str, key: &str) -> u64 {
    let v = session(s, name);
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter `{key}` in {v}"))
}

/// The sessions target `t` shows.
fn target_sessions(s: &Serve, t: &str) -> Vec<Value> {
    let v = s.ok("srpt_get_sessions", json!({"name": t}));
    v[0]["sessions"].as_array().cloned().unwrap_or_default()
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `bdev_io` write; the completion status.
fn write(s: &Serve, name: &str, lba: u64, blocks: u64, seed: u64) -> String {
    let v = s.ok(
        "bdev_io",
        json!({"name": name, "op": "write", "offset_blocks": lba, "num_blocks": blocks, "seed": seed}),
    );
    v["status"].as_str().unwrap().to_string()
}

/// `bdev_io` verify; (status, mismatched blocks).
fn verify(s: &Serve, name: &str, lba: u64, blocks: u64, seed: u64) -> (String, u64) {
    let v = s.ok(
        "bdev_io",
        json!({"name": name, "op": "verify", "offset_blocks": lba, "num_blocks": blocks, "seed": seed}),
    );
    (
        v["status"].as_str().unwrap().to_string(),
        v["mismatched_blocks"].as_u64().unwrap_or(u64::MAX),
    )
}

fn ok_verify(s: &Serve, name: &str, lba: u64, blocks: u64, seed: u64) {
    assert_eq!(
        verify(s, name, lba, blocks, seed),
        ("success".to_string(), 0),
        "verify {name} at {lba}+{blocks} seed {seed}"
    );
}

fn alive(s: &Serve) {
    assert!(s
        .ok("rpc_get_methods", json!(null))
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m == "bdev_srp_attach"));
}

/// The device id strata's target gives a LUN over a bdev with UUID `uuid`
/// (`srpt::lun_config`): the UUID folded to 64 bits (first half XOR second
/// half rotated left by 17) as an EUI-64 designator, which Linux (and the
/// initiator) shows as `eui.<16 hex digits>`.
fn eui_of(uuid: &str) -> String {
    let hex: String = uuid.chars().filter(|c| *c != '-').collect();
    assert_eq!(hex.len(), 32, "{uuid}");
    let a = u64::from_str_radix(&hex[..16], 16).unwrap();
    let b = u64::from_str_radix(&hex[16..], 16).unwrap();
    format!("eui.{:016x}", a ^ b.rotate_left(17))
}

/// Starts `strata serve --config cfg`; `Err(stderr)` if it exits instead of
/// serving (within 30 s).
fn try_serve(dir: &Path, cfg: &Path) -> Result<Serve, String> {
    let socket = dir.join(format!("rpc-{}.sock", std::process::id()));
    let log = dir.join("serve.log");
    let child = Command::new(STRATA)
        .arg("serve")
        .arg("--rpc-socket")
        .arg(&socket)
        .args(["--idle-sleep-us", "200", "--cores", "0,1", "--config"])
        .arg(cfg)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
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
            s.child = None;
            return Err(format!("exited with {st}: {}", s.log_text()));
        }
        if std::os::unix::net::UnixStream::connect(&s.socket).is_ok() {
            return Ok(s);
        }
        assert!(
            Instant::now() < deadline,
            "strata serve neither came up nor exited: {}",
            s.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A file bdev `disk` (4 KiB blocks, 16 MiB) exported by target `t0`.
fn file_target_config(dir: &Path) -> (std::path::PathBuf, Vec<Value>) {
    let img = dir.join("disk.img");
    if !img.exists() {
        std::fs::File::create(&img)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
    }
    let calls = vec![
        json!({"method": "bdev_file_create", "params": {"name": "disk", "filename": img, "block_size": 4096}}),
        json!({"method": "srpt_target_create", "params": target_params("t0", "disk", json!(["*"]))}),
    ];
    (img, calls)
}

fn write_config(dir: &Path, file: &str, calls: &[Value]) -> std::path::PathBuf {
    let cfg = dir.join(file);
    std::fs::write(
        &cfg,
        serde_json::to_vec_pretty(&json!({ "calls": calls })).unwrap(),
    )
    .unwrap();
    cfg
}

/// 1. Attach to a target in the same daemon: the bdev's geometry, kind and
///    device id; writes through it land on the target's bdev; the session
///    status.
#[test]
fn attach_shows_the_lu_and_writes_reach_the_target_bdev() {
    let dir = scratch();
    let s = serve(dir.path(), &[]);
    s.ok(
        "srpt_target_create",
        target_params("t0", "Malloc0", json!(["*"])),
    );
    assert_eq!(
        s.ok("bdev_srp_attach", attach_params("srp0", json!({}))),
        json!("srp0")
    );
    let backend = s.ok("bdev_get_bdevs", json!({"name": "Malloc0"}))[0].clone();
    let b = s.ok("bdev_get_bdevs", json!({"name": "srp0"}))[0].clone();
    assert_eq!(b["kind"], "srp", "{b}");
    assert_eq!(b["block_size"], 512, "{b}");
    assert_eq!(b["num_blocks"], 131072, "{b}");
    assert_eq!(b["claimed"], false, "{b}");
    // The multipath identity is the LU's designator, not the bdev's UUID.
    assert_eq!(
        b["device_id"],
        json!(eui_of(backend["uuid"].as_str().unwrap())),
        "{b}"
    );
    assert_eq!(backend["device_id"], backend["uuid"], "{backend}");
    assert_eq!(b["supported_io_types"]["flush"], true, "{b}");
    let ds = &b["driver_specific"];
    let uuid = backend["uuid"].as_str().unwrap();
    assert_eq!(ds["lu"]["device_id"], json!(eui_of(uuid)), "{ds}");
    // VPD 0x80: the target's serial is the backend's UUID in hex.
    assert_eq!(ds["lu"]["serial"], json!(uuid.replace('-', "")), "{ds}");
    assert_eq!(ds["lu"]["num_blocks"], 131072, "{ds}");
    assert_eq!(ds["dest"], LISTEN, "{ds}");
    assert_eq!(ds["provider"], "loopback", "{ds}");
    assert_eq!(ds["target_port_id"], "0x0002c90300aabb010002c90300aabb02");
    // bdev_get_bdevs without a name lists it too.
    let all = s.ok("bdev_get_bdevs", json!({}));
    assert!(all
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["name"] == "srp0" && x["kind"] == "srp"));

    // 32 KiB (above max_imm_data: RDMA READ by the target from our
    // registered buffer) and 4 KiB (immediate data).
    assert_eq!(write(&s, "srp0", 64, 64, 7), "success");
    assert_eq!(write(&s, "srp0", 4096, 8, 8), "success");
    ok_verify(&s, "srp0", 64, 64, 7);
    ok_verify(&s, "srp0", 4096, 8, 8);
    // What was acknowledged is on the target's own bdev.
    ok_verify(&s, "Malloc0", 64, 64, 7);
    ok_verify(&s, "Malloc0", 4096, 8, 8);
    // (verify does check: another seed mismatches every block.)
    assert_eq!(
        verify(&s, "Malloc0", 64, 64, 9),
        ("success".to_string(), 64)
    );
    // And the other way: written on the backend, read through SRP.
    assert_eq!(write(&s, "Malloc0", 9000, 16, 21), "success");
    ok_verify(&s, "srp0", 9000, 16, 21);
    // Out of range: the bdev layer refuses, nothing breaks.
    assert_eq!(write(&s, "srp0", 131072, 1, 1), "invalid_request");
    assert_eq!(
        s.ok(
            "bdev_io",
            json!({"name": "srp0", "op": "flush", "offset_blocks": 0, "num_blocks": 0})
        )["status"],
        "success"
    );

    let sess = s.ok("bdev_srp_get_sessions", json!({}));
    assert_eq!(sess.as_array().unwrap().len(), 1, "{sess}");
    let v = &sess[0];
    assert_eq!(v["name"], "srp0", "{v}");
    assert_eq!(v["port_state"], "running", "{v}");
    assert_eq!(v["ch_count"], 2, "{v}");
    let chans = v["channels"].as_array().unwrap();
    assert_eq!(chans.len(), 2, "{v}");
    for c in chans {
        assert_eq!(c["state"], "live", "{v}");
        assert!(c["req_lim"].as_i64().unwrap() > 0, "{v}");
    }
    assert!(v["zero_copy_cmds"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["bounce_cmds"], 0, "bdev_io buffers are registered: {v}");
    assert!(v["immediate_cmds"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(v["reconnects"], 0, "{v}");
    assert_eq!(v["connection_losses"], 0, "{v}");
    assert_eq!(v["lu"]["device_id"], json!(eui_of(uuid)), "{v}");
    // The target sees one session of two channels, from the initiator port
    // id the initiator reports.
    let ts = target_sessions(&s, "t0");
    assert_eq!(ts.len(), 1, "{ts:?}");
    assert_eq!(ts[0]["initiator_port_id"], v["initiator_port_id"], "{ts:?}");
    assert_eq!(ts[0]["channels"].as_array().unwrap().len(), 2, "{ts:?}");
    // The bdev's own I/O statistics count what went through it.
    let st = &s.ok("bdev_get_bdevs", json!({"name": "srp0"}))[0]["stats"];
    assert!(st["num_write_ops"].as_u64().unwrap() >= 2, "{st}");
    assert!(st["num_read_ops"].as_u64().unwrap() >= 3, "{st}");
}

/// 2. Errors name the field or the reason; nothing is left behind; the
///    daemon keeps serving and a good attach works afterwards.
#[test]
fn attach_and_detach_errors_name_the_field_or_reason() {
    let dir = scratch();
    let s = serve(dir.path(), &[]);
    s.ok(
        "srpt_target_create",
        target_params("t0", "Malloc0", json!(["*"])),
    );
    let bad_params: Vec<(Value, &str)> = vec![
        (
            json!({"dest": "nowhere"}),
            "invalid parameter `dest`: `nowhere` is not IP:PORT",
        ),
        (
            json!({"dest": "127.0.0.1:0"}),
            "invalid parameter `dest`: port 0 is not allowed",
        ),
        (
            json!({"fast_io_fail_tmo_s": 20, "dev_loss_tmo_s": 20}),
            "invalid parameter `fast_io_fail_tmo_s`: must be below dev_loss_tmo_s (20 >= 20 s)",
        ),
        (
            json!({"fast_io_fail_tmo_s": 30, "dev_loss_tmo_s": 20}),
            "invalid parameter `fast_io_fail_tmo_s`: must be below dev_loss_tmo_s (30 >= 20 s)",
        ),
        (
            json!({"reconnect_delay_s": 0}),
            "invalid parameter `reconnect_delay_s`: must be above 0 (or \"off\")",
        ),
        (
            json!({"id_ext": "xyz"}),
            "invalid parameter `id_ext`: `xyz` is not 1 to 16 hexadecimal digits",
        ),
        (
            json!({"provider": "tcp"}),
            "invalid parameter `provider`: `tcp` is not \"verbs\" or \"loopback\"",
        ),
        (
            json!({"ch_count": 3}),
            "invalid parameter `ch_count`: 3 is not between 1 and the 2 reactors",
        ),
    ];
    for (patch, want) in bad_params {
        let p = attach_params("srp0", patch.clone());
        assert_eq!(
            s.call("bdev_srp_attach", p),
            Err((-32602, want.to_string())),
            "{patch}"
        );
        alive(&s);
    }
    // Unknown field and a missing one: serde names them.
    let (c, m) = s
        .call(
            "bdev_srp_attach",
            attach_params("srp0", json!({"bogus": 1})),
        )
        .unwrap_err();
    assert_eq!(c, -32602);
    assert!(
        m.starts_with("invalid parameter `bogus`: unknown field `bogus`, expected one of"),
        "{m}"
    );
    let mut p = attach_params("srp0", json!({}));
    p.as_object_mut().unwrap().remove("dest");
    assert_eq!(
        s.call("bdev_srp_attach", p),
        Err((-32602, "invalid params: missing field `dest`".to_string()))
    );
    // "off" is the only word a time-out may be.
    let (c, m) = s
        .call(
            "bdev_srp_attach",
            attach_params("srp0", json!({"dev_loss_tmo_s": "never"})),
        )
        .unwrap_err();
    assert_eq!(c, -32602);
    assert!(m.contains("dev_loss_tmo_s"), "{m}");

    // Nobody listens there: the error names the address.
    let (c, m) = s
        .call(
            "bdev_srp_attach",
            attach_params("srp0", json!({"dest": "127.0.0.1:5999"})),
        )
        .unwrap_err();
    assert_eq!(c, -32000, "{m}");
    assert!(m.contains("127.0.0.1:5999"), "{m}");
    assert!(m.contains("connection refused"), "{m}");
    alive(&s);
    // Wrong target port id.
    let (c, m) = s
        .call(
            "bdev_srp_attach",
            attach_params("srp0", json!({"id_ext": "0x99"})),
        )
        .unwrap_err();
    assert_eq!(c, -32000, "{m}");
    assert!(m.starts_with("login rejected: unable to associate"), "{m}");

    // A target whose ACL is empty admits nobody.
    s.ok("srpt_target_delete", json!({"name": "t0"}));
    s.ok(
        "srpt_target_create",
        target_params("t0", "Malloc0", json!([])),
    );
    let (c, m) = s
        .call("bdev_srp_attach", attach_params("srp0", json!({})))
        .unwrap_err();
    assert_eq!(c, -32000, "{m}");
    assert!(
        m.starts_with("login rejected: channel limit reached"),
        "{m}"
    );
    alive(&s);
    // None of the failures left a bdev, a claim or a session behind.
    assert_eq!(
        s.call("bdev_get_bdevs", json!({"name": "srp0"}))
            .unwrap_err(),
        (-32001, "bdev `srp0` does not exist".to_string())
    );
    assert_eq!(s.ok("bdev_srp_get_sessions", json!({})), json!([]));
    assert!(target_sessions(&s, "t0").is_empty());
    assert!(!s
        .ok("save_config", json!({}))
        .to_string()
        .contains("bdev_srp_attach"));

    // Admitted again: a good attach works.
    s.ok("srpt_target_delete", json!({"name": "t0"}));
    s.ok(
        "srpt_target_create",
        target_params("t0", "Malloc0", json!(["*"])),
    );
    s.ok("bdev_srp_attach", attach_params("srp0", json!({})));
    assert_eq!(session(&s, "srp0")["port_state"], "running");
    // Duplicate names: another SRP bdev, or any bdev.
    assert_eq!(
        s.call("bdev_srp_attach", attach_params("srp0", json!({}))),
        Err((-32002, "bdev `srp0` already exists".to_string()))
    );
    assert_eq!(
        s.call("bdev_srp_attach", attach_params("Malloc0", json!({}))),
        Err((-32002, "bdev `Malloc0` already exists".to_string()))
    );
    // The refused duplicate did not log in a second session.
    assert_eq!(target_sessions(&s, "t0").len(), 1);
    // Detach / get_sessions of something that is not an SRP bdev, or of
    // nothing.
    assert_eq!(
        s.call("bdev_srp_detach", json!({"name": "Malloc0"})),
        Err((
            -32602,
            "invalid parameter `name`: `Malloc0` is not an SRP bdev".to_string()
        ))
    );
    assert_eq!(
        s.call("bdev_srp_detach", json!({"name": "nope"})),
        Err((-32001, "bdev `nope` does not exist".to_string()))
    );
    assert_eq!(
        s.call("bdev_srp_get_sessions", json!({"name": "Malloc0"})),
        Err((
            -32602,
            "invalid parameter `name`: `Malloc0` is not an SRP bdev".to_string()
        ))
    );
    assert_eq!(
        s.call("bdev_srp_get_sessions", json!({"name": "nope"})),
        Err((-32001, "bdev `nope` does not exist".to_string()))
    );
    let (c, m) = s
        .call("bdev_srp_detach", json!({"name": "srp0", "force": true}))
        .unwrap_err();
    assert_eq!(c, -32602);
    assert!(m.contains("unknown field `force`"), "{m}");
    // Through all that the session kept working.
    assert_eq!(write(&s, "srp0", 0, 16, 3), "success");
    ok_verify(&s, "srp0", 0, 16, 3);
    assert_eq!(
        s.ok("bdev_srp_detach", json!({"name": "srp0"})),
        json!(true)
    );
    assert_eq!(
        s.call("bdev_srp_detach", json!({"name": "srp0"})),
        Err((-32001, "bdev `srp0` does not exist".to_string()))
    );
}

/// 3. Detach is refused while a consumer claims the bdev, works after the
///    consumer is gone, and the target sees the session end.
#[test]
fn detach_is_refused_while_claimed_and_logs_out_after() {
    let dir = scratch();
    let s = serve(dir.path(), &[]);
    s.ok(
        "srpt_target_create",
        target_params("t0", "Malloc0", json!(["*"])),
    );
    s.ok("bdev_srp_attach", attach_params("srp0", json!({})));
    assert_eq!(target_sessions(&s, "t0").len(), 1);

    // A vhost-user-blk controller on it.
    let sock = dir.path().join("vhost0.sock");
    s.ok(
        "vhost_blk_create",
        json!({"name": "vh0", "socket": sock, "bdev": "srp0"}),
    );
    assert_eq!(
        s.ok("bdev_get_bdevs", json!({"name": "srp0"}))[0]["claimed_by"],
        "vhost:vh0"
    );
    assert_eq!(
        s.call("bdev_srp_detach", json!({"name": "srp0"})),
        Err((-32003, "bdev `srp0` is in use by `vhost:vh0`".to_string()))
    );
    assert_eq!(
        s.call("bdev_delete", json!({"name": "srp0"})),
        Err((-32003, "bdev `srp0` is in use by `vhost:vh0`".to_string()))
    );
    // Refused means untouched: still logged in, still serving.
    assert_eq!(session(&s, "srp0")["port_state"], "running");
    assert_eq!(write(&s, "srp0", 128, 32, 5), "success");
    ok_verify(&s, "srp0", 128, 32, 5);
    s.ok("vhost_delete_controller", json!({"name": "vh0"}));

    // A stacked bdev on it (delay over SRP) claims it too.
    s.ok(
        "bdev_delay_create",
        json!({"name": "d0", "base": "srp0", "read_us": 10, "write_us": 10}),
    );
    assert_eq!(
        s.ok("bdev_get_bdevs", json!({"name": "srp0"}))[0]["claimed_by"],
        "d0"
    );
    assert_eq!(
        s.call("bdev_srp_detach", json!({"name": "srp0"})),
        Err((-32003, "bdev `srp0` is in use by `d0`".to_string()))
    );
    // I/O through the stack reaches the target's bdev by way of SRP.
    assert_eq!(write(&s, "d0", 1000, 64, 6), "success");
    ok_verify(&s, "d0", 1000, 64, 6);
    ok_verify(&s, "Malloc0", 1000, 64, 6);
    s.ok("bdev_delete", json!({"name": "d0"}));
    assert_eq!(
        s.ok("bdev_get_bdevs", json!({"name": "srp0"}))[0]["claimed"],
        false
    );

    // Unclaimed: the detach logs out; the target sees the session go.
    assert_eq!(
        s.ok("bdev_srp_detach", json!({"name": "srp0"})),
        json!(true)
    );
    assert_eq!(
        s.call("bdev_get_bdevs", json!({"name": "srp0"}))
            .unwrap_err()
            .0,
        -32001
    );
    assert_eq!(s.ok("bdev_srp_get_sessions", json!({})), json!([]));
    assert!(
        wait_until(Duration::from_secs(10), || target_sessions(&s, "t0")
            .is_empty()),
        "the target still shows a session: {:?}",
        target_sessions(&s, "t0")
    );
    // A new attach under the same name works (one channel this time).
    s.ok(
        "bdev_srp_attach",
        attach_params("srp0", json!({"ch_count": 1})),
    );
    ok_verify(&s, "srp0", 128, 32, 5);
    assert_eq!(session(&s, "srp0")["ch_count"], 1);
    let ts = target_sessions(&s, "t0");
    assert_eq!(ts.len(), 1, "{ts:?}");
    assert_eq!(ts[0]["channels"].as_array().unwrap().len(), 1, "{ts:?}");
    // bdev_delete of an unclaimed SRP bdev logs out as well.
    s.ok("bdev_delete", json!({"name": "srp0"}));
    assert!(
        wait_until(Duration::from_secs(10), || target_sessions(&s, "t0")
            .is_empty()),
        "bdev_delete left the session: {:?}",
        target_sessions(&s, "t0")
    );
    alive(&s);
}

/// 3b. A RAID1 with an SRP bdev as a member (the initiator's stated
///     purpose: "a local bdev that RAID1, multipath and vhost stack on"):
///     the array forms, claims the SRP bdev (detach refused), and after
///     the array is deleted the detach works.
///
///     Fails at present: raid1 reads and writes its superblocks from the
///     RPC thread (`bdev::raid1` `read_blocks`/`sync_io` over
///     `open_channel`), and `SrpBdev::open_module_channel` refuses any
///     thread that is not a reactor ("SRP bdev srp0: channels are opened
///     on reactors"), so `bdev_raid1_create` over an SRP bdev fails with
///     -32000 (nothing is left claimed).
#[test]
fn raid1_over_an_srp_bdev_claims_it_until_deleted() {
    let dir = scratch();
    let s = serve(dir.path(), &[]);
    s.ok(
        "srpt_target_create",
        target_params("t0", "Malloc0", json!(["*"])),
    );
    s.ok("bdev_srp_attach", attach_params("srp0", json!({})));
    s.ok(
        "bdev_malloc_create",
        json!({"name": "Malloc1", "num_blocks": 131072, "block_size": 512}),
    );
    // Formatting writes the superblocks, through SRP on one member.
    let r = s.call(
        "bdev_raid1_create",
        json!({"name": "r0", "members": ["srp0", "Malloc1"]}),
    );
    if let Err(e) = &r {
        let claimed = |n: &str| s.ok("bdev_get_bdevs", json!({"name": n}))[0]["claimed_by"].clone();
        panic!(
            "bdev_raid1_create over an SRP bdev failed: {e:?} (afterwards srp0 claimed_by {}, Malloc1 claimed_by {})",
            claimed("srp0"),
            claimed("Malloc1")
        );
    }
    assert_eq!(
        s.ok("bdev_get_bdevs", json!({"name": "srp0"}))[0]["claimed_by"],
        "r0"
    );
    assert_eq!(
        s.call("bdev_srp_detach", json!({"name": "srp0"})),
        Err((-32003, "bdev `srp0` is in use by `r0`".to_string()))
    );
    let st = s.ok("bdev_raid1_get_status", json!({"name": "r0"}));
    assert_eq!(st["state"], "online", "{st}");
    assert_eq!(write(&s, "r0", 1000, 64, 6), "success");
    ok_verify(&s, "r0", 1000, 64, 6);
    s.ok("bdev_delete", json!({"name": "r0"}));
    assert_eq!(
        s.ok("bdev_srp_detach", json!({"name": "srp0"})),
        json!(true)
    );
    assert!(wait_until(Duration::from_secs(10), || target_sessions(
        &s, "t0"
    )
    .is_empty()));
}

/// 4. `save_config` records `bdev_srp_attach` with its parameters; a
///    daemon started from the saved calls (the target part first)
///    re-attaches and reads back what was written before.
#[test]
fn save_config_records_the_attach_and_a_restart_reattaches() {
    let dir = scratch();
    let (_img, calls) = file_target_config(dir.path());
    let cfg = write_config(dir.path(), "target.json", &calls);
    let mut s = serve(dir.path(), &["--config", cfg.to_str().unwrap()]);
    let given = attach_params(
        "srp0",
        json!({"fast_io_fail_tmo_s": "off", "dev_loss_tmo_s": 30, "reconnect_delay_s": 0.5,
            "cmd_timeout_s": 20, "max_sect": 256, "lun": 0}),
    );
    s.ok("bdev_srp_attach", given.clone());
    let t = &session(&s, "srp0")["timeouts_config"];
    assert_eq!(t["fast_io_fail_tmo_s"], "off", "{t}");
    assert_eq!(t["dev_loss_tmo_s"].as_f64(), Some(30.0), "{t}");
    assert_eq!(t["reconnect_delay_s"].as_f64(), Some(0.5), "{t}");
    assert_eq!(write(&s, "srp0", 0, 64, 41), "success");
    assert_eq!(write(&s, "srp0", 3000, 8, 42), "success");
    ok_verify(&s, "srp0", 0, 64, 41);

    let saved = s.ok("save_config", json!({}));
    let saved_calls = saved["calls"].as_array().unwrap().clone();
    let attach: Vec<&Value> = saved_calls
        .iter()
        .filter(|c| c["method"] == "bdev_srp_attach")
        .collect();
    assert_eq!(attach.len(), 1, "{saved}");
    let p = &attach[0]["params"];
    // Exactly the given parameters (numbers compared as numbers: 30 may come
    // back as 30.0), "off" kept as "off".
    let (got, want) = (p.as_object().unwrap(), given.as_object().unwrap());
    let mut gk: Vec<&String> = got.keys().collect();
    let mut wk: Vec<&String> = want.keys().collect();
    gk.sort();
    wk.sort();
    assert_eq!(gk, wk, "{p}");
    for (k, w) in want {
        let g = &got[k];
        if w.is_number() {
            assert_eq!(g.as_f64(), w.as_f64(), "{k}: {p}");
        } else {
            assert_eq!(g, w, "{k}: {p}");
        }
    }
    assert_eq!(p["fast_io_fail_tmo_s"], "off");

    // Stop (SIGTERM: front ends stop, the session logs out, exit 0).
    assert_eq!(s.signal_and_wait("TERM"), Some(0), "{}", s.log_text());
    assert!(s.log_text().contains("stopped cleanly"), "{}", s.log_text());
    drop(s);

    // The target part first, then the initiator's saved call.
    let find = |m: &str| {
        saved_calls
            .iter()
            .find(|c| c["method"] == m)
            .cloned()
            .unwrap_or_else(|| panic!("no {m} in {saved}"))
    };
    let replay = vec![
        find("bdev_file_create"),
        find("srpt_target_create"),
        find("bdev_srp_attach"),
    ];
    let cfg2 = write_config(dir.path(), "replay.json", &replay);
    let s2 = serve(dir.path(), &["--config", cfg2.to_str().unwrap()]);
    let b = s2.ok("bdev_get_bdevs", json!({"name": "srp0"}))[0].clone();
    assert_eq!(b["kind"], "srp", "{b}");
    assert_eq!(b["block_size"], 4096, "{b}");
    assert_eq!(b["num_blocks"], 4096, "{b}");
    assert_eq!(session(&s2, "srp0")["port_state"], "running");
    assert_eq!(
        session(&s2, "srp0")["timeouts_config"]["fast_io_fail_tmo_s"],
        "off"
    );
    ok_verify(&s2, "srp0", 0, 64, 41);
    ok_verify(&s2, "srp0", 3000, 8, 42);
    ok_verify(&s2, "disk", 0, 64, 41);
    // And it saves the same attach call again.
    let again = s2.ok("save_config", json!({}));
    let p2 = again["calls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["method"] == "bdev_srp_attach")
        .map(|c| c["params"].clone());
    assert_eq!(p2.as_ref(), Some(p), "{again}");
}

/// 4b. The saved config of a daemon that serves its own SRP target (the
///     only arrangement the loopback provider allows) restores as it is:
///     `strata serve --config saved.json` comes up with the SRP bdev.
///
///     Fails at present: `save_config` emits every bdev (the registry's
///     creation calls, `bdev_srp_attach` among them) before every
///     `srpt_target_create`, so the replay attaches before its target
///     listens and `strata serve` exits 1 ("calls[1] (bdev_srp_attach):
///     127.0.0.1:5555: connection refused (nobody listens there)").
#[test]
fn saved_config_with_target_and_initiator_in_one_daemon_restores_verbatim() {
    let dir = scratch();
    let (_img, calls) = file_target_config(dir.path());
    let cfg = write_config(dir.path(), "target.json", &calls);
    let mut s = serve(dir.path(), &["--config", cfg.to_str().unwrap()]);
    s.ok("bdev_srp_attach", attach_params("srp0", json!({})));
    assert_eq!(write(&s, "srp0", 8, 8, 77), "success");
    let saved = s.ok("save_config", json!({}));
    let methods: Vec<&str> = saved["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["method"].as_str().unwrap())
        .collect();
    assert_eq!(s.signal_and_wait("TERM"), Some(0), "{}", s.log_text());
    drop(s);
    let saved_cfg = dir.path().join("saved.json");
    std::fs::write(&saved_cfg, serde_json::to_vec_pretty(&saved).unwrap()).unwrap();
    let s2 = try_serve(dir.path(), &saved_cfg).unwrap_or_else(|e| {
        panic!("the saved config (calls in order {methods:?}) does not restore: {e}")
    });
    ok_verify(&s2, "srp0", 8, 8, 77);
}

/// 5. The target goes away and comes back while writes are issued: they are
///    held, complete after the reconnect, and every acknowledged one reads
///    back, through SRP and on the target's bdev.
#[test]
fn writes_survive_target_delete_and_recreate() {
    let dir = scratch();
    let s = serve(dir.path(), &[]);
    s.ok(
        "srpt_target_create",
        target_params("t0", "Malloc0", json!(["*"])),
    );
    s.ok(
        "bdev_srp_attach",
        attach_params(
            "srp0",
            json!({"reconnect_delay_s": 0.2, "fast_io_fail_tmo_s": 60, "dev_loss_tmo_s": 120}),
        ),
    );
    const BLOCKS: u64 = 16;
    let acked: Arc<Mutex<Vec<(u64, u64)>>> = Arc::new(Mutex::new(Vec::new()));
    let failed: Arc<Mutex<Vec<(u64, u64)>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, failed, stop) = (Arc::clone(&acked), Arc::clone(&failed), Arc::clone(&stop));
        let sock = s.socket.clone();
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let lba = (i * 37 * BLOCKS) % 100_000;
                let seed = 500 + i;
                match common::rpc_write(&sock, "srp0", lba, BLOCKS, seed) {
                    Some(true) => acked.lock().unwrap().push((lba, seed)),
                    Some(false) => failed.lock().unwrap().push((lba, seed)),
                    None => panic!("the daemon went away"),
                }
                i += 1;
            }
        })
    };
    let n = || acked.lock().unwrap().len();
    assert!(
        wait_until(Duration::from_secs(30), || n() >= 30),
        "writes did not progress"
    );
    s.ok("srpt_target_delete", json!({"name": "t0"}));
    assert!(
        wait_until(Duration::from_secs(10), || session(&s, "srp0")
            ["port_state"]
            == "blocked"),
        "{}",
        session(&s, "srp0")
    );
    // Nothing completes while there is no target (a completion already on
    // its way when the port blocked may still land: let it).
    std::thread::sleep(Duration::from_millis(300));
    let during = n();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(n(), during, "a write was acknowledged with no target");
    assert_eq!(session(&s, "srp0")["port_state"], "blocked");
    assert!(stat(&s, "srp0", "failed_reconnects") >= 1);
    // Back.
    s.ok(
        "srpt_target_create",
        target_params("t0", "Malloc0", json!(["*"])),
    );
    assert!(
        wait_until(Duration::from_secs(30), || n() >= during + 30),
        "writes did not resume after the target came back: {}",
        session(&s, "srp0")
    );
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert_eq!(*failed.lock().unwrap(), vec![], "writes failed");
    let v = session(&s, "srp0");
    assert_eq!(v["port_state"], "running", "{v}");
    assert!(v["reconnects"].as_u64().unwrap() >= 1, "{v}");
    assert!(v["connection_losses"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(v["ch_count"], 2, "{v}");
    assert_eq!(target_sessions(&s, "t0").len(), 1);
    let acked = acked.lock().unwrap().clone();
    let checked = common::verify_acked(&s, "srp0", BLOCKS, &acked);
    assert!(checked >= 50, "verified {checked} writes through SRP");
    assert_eq!(
        common::verify_acked(&s, "Malloc0", BLOCKS, &acked),
        checked,
        "on the target's bdev"
    );
}

/// 6. With `fast_io_fail_tmo_s` 1 and the target gone, I/O fails with a
///    path error within a few seconds and the port is fail-fast; at
///    `dev_loss_tmo_s` the bdev leaves the daemon.
#[test]
fn fast_io_fail_answers_path_error_then_dev_loss_removes_the_bdev() {
    let dir = scratch();
    let s = serve(dir.path(), &[]);
    s.ok(
        "srpt_target_create",
        target_params("t0", "Malloc0", json!(["*"])),
    );
    s.ok(
        "bdev_srp_attach",
        attach_params(
            "srp0",
            json!({"reconnect_delay_s": 0.3, "fast_io_fail_tmo_s": 1, "dev_loss_tmo_s": 6}),
        ),
    );
    assert_eq!(write(&s, "srp0", 0, 8, 1), "success");
    s.ok("srpt_target_delete", json!({"name": "t0"}));
    let t0 = Instant::now();
    assert_eq!(write(&s, "srp0", 0, 8, 2), "path_error");
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let v = session(&s, "srp0");
    assert_eq!(v["port_state"], "fail-fast", "{v}");
    assert!(v["failed_fast"].as_u64().unwrap() >= 1, "{v}");
    // New I/O fails at once (bounded generously), reads too.
    let t1 = Instant::now();
    assert_eq!(write(&s, "srp0", 16, 8, 3), "path_error");
    assert_eq!(verify(&s, "srp0", 0, 8, 1).0, "path_error");
    assert!(t1.elapsed() < Duration::from_secs(5), "{:?}", t1.elapsed());
    alive(&s);
    // dev_loss_tmo: the bdev is removed (nobody claims it).
    assert!(
        wait_until(Duration::from_secs(20), || s
            .call("bdev_get_bdevs", json!({"name": "srp0"}))
            .is_err()),
        "still there: {}",
        session(&s, "srp0")
    );
    assert_eq!(s.ok("bdev_srp_get_sessions", json!({})), json!([]));
    assert!(!s
        .ok("save_config", json!({}))
        .to_string()
        .contains("bdev_srp_attach"));
    // A target that comes back is not logged in to by the lost session;
    // a new attach under the same name works.
    s.ok(
        "srpt_target_create",
        target_params("t0", "Malloc0", json!(["*"])),
    );
    std::thread::sleep(Duration::from_millis(1000));
    assert!(target_sessions(&s, "t0").is_empty());
    s.ok("bdev_srp_attach", attach_params("srp0", json!({})));
    ok_verify(&s, "srp0", 0, 8, 1);
}

/// 7. Detaching while the target is gone (port blocked) does not wait for
///    it, and a daemon whose session is blocked stops cleanly on SIGTERM.
#[test]
fn detach_and_sigterm_while_the_target_is_gone() {
    let dir = scratch();
    let mut s = serve(dir.path(), &[]);
    s.ok(
        "srpt_target_create",
        target_params("t0", "Malloc0", json!(["*"])),
    );
    let slow = json!({"reconnect_delay_s": 0.2, "fast_io_fail_tmo_s": 60, "dev_loss_tmo_s": 120});
    s.ok("bdev_srp_attach", attach_params("srp0", slow.clone()));
    s.ok("bdev_srp_attach", attach_params("srp1", slow));
    assert_eq!(write(&s, "srp0", 0, 8, 1), "success");
    s.ok("srpt_target_delete", json!({"name": "t0"}));
    assert!(wait_until(Duration::from_secs(10), || {
        session(&s, "srp0")["port_state"] == "blocked"
            && session(&s, "srp1")["port_state"] == "blocked"
    }));
    let t0 = Instant::now();
    assert_eq!(
        s.ok("bdev_srp_detach", json!({"name": "srp0"})),
        json!(true)
    );
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    assert_eq!(
        s.call("bdev_get_bdevs", json!({"name": "srp0"}))
            .unwrap_err()
            .0,
        -32001
    );
    // The detached session does not come back with the target; srp1 does.
    s.ok(
        "srpt_target_create",
        target_params("t0", "Malloc0", json!(["*"])),
    );
    assert!(wait_until(Duration::from_secs(10), || session(&s, "srp1")
        ["port_state"]
        == "running"));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(target_sessions(&s, "t0").len(), 1);
    ok_verify(&s, "srp1", 0, 8, 1);
    // Gone again, then SIGTERM: exits 0, promptly.
    s.ok("srpt_target_delete", json!({"name": "t0"}));
    assert!(wait_until(Duration::from_secs(10), || session(&s, "srp1")
        ["port_state"]
        == "blocked"));
    let t1 = Instant::now();
    assert_eq!(s.signal_and_wait("TERM"), Some(0), "{}", s.log_text());
    assert!(t1.elapsed() < Duration::from_secs(20), "{:?}", t1.elapsed());
}

/// 8. `dev_loss_tmo` while a consumer claims the bdev: it stays (claimed,
///    port "lost"), its I/O fails with path errors, and it can be detached
///    once the consumer is gone.
#[test]
fn dev_loss_keeps_a_claimed_bdev_failing_until_detached() {
    let dir = scratch();
    let s = serve(dir.path(), &[]);
    s.ok(
        "srpt_target_create",
        target_params("t0", "Malloc0", json!(["*"])),
    );
    s.ok(
        "bdev_srp_attach",
        attach_params(
            "srp0",
            json!({"reconnect_delay_s": 0.3, "fast_io_fail_tmo_s": 0.5, "dev_loss_tmo_s": 2}),
        ),
    );
    let sock = dir.path().join("vhost0.sock");
    s.ok(
        "vhost_blk_create",
        json!({"name": "vh0", "socket": sock, "bdev": "srp0"}),
    );
    s.ok("srpt_target_delete", json!({"name": "t0"}));
    assert!(
        wait_until(Duration::from_secs(20), || session(&s, "srp0")
            ["port_state"]
            == "lost"),
        "{}",
        session(&s, "srp0")
    );
    std::thread::sleep(Duration::from_millis(500));
    let b = s.ok("bdev_get_bdevs", json!({"name": "srp0"}))[0].clone();
    assert_eq!(b["claimed_by"], "vhost:vh0", "{b}");
    assert_eq!(write(&s, "srp0", 0, 8, 1), "path_error");
    // The target coming back changes nothing for a lost port.
    s.ok(
        "srpt_target_create",
        target_params("t0", "Malloc0", json!(["*"])),
    );
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(session(&s, "srp0")["port_state"], "lost");
    assert!(target_sessions(&s, "t0").is_empty());
    s.ok("vhost_delete_controller", json!({"name": "vh0"}));
    assert_eq!(
        s.ok("bdev_srp_detach", json!({"name": "srp0"})),
        json!(true)
    );
    assert_eq!(s.ok("bdev_srp_get_sessions", json!({})), json!([]));
    s.ok("bdev_srp_attach", attach_params("srp0", json!({})));
    assert_eq!(write(&s, "srp0", 0, 8, 1), "success");
}
