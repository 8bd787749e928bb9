//! `bdev_cache_create` / `bdev_cache_power_cut` through a real `strata
//! serve`: exact errors for bad parameters, what a cut loses and keeps,
//! status in `bdev_get_bdevs`, `save_config`.

mod common;

use common::{scratch, Serve};
use serde_json::{json, Value};

fn alive(s: &Serve) {
    let m = s.ok("rpc_get_methods", json!(null));
    let m = m.as_array().unwrap();
    assert!(m.iter().any(|x| x == "bdev_cache_create"));
    assert!(m.iter().any(|x| x == "bdev_cache_power_cut"));
}

fn io(s: &Serve, op: &str, off: u64, n: u64, seed: u64, fua: bool) -> Value {
    s.ok(
        "bdev_io",
        json!({"name": "c0", "op": op, "offset_blocks": off, "num_blocks": n, "seed": seed, "fua": fua}),
    )
}

fn mismatched(s: &Serve, off: u64, n: u64, seed: u64) -> u64 {
    let v = io(s, "verify", off, n, seed, false);
    assert_eq!(v["status"], "success");
    v["mismatched_blocks"].as_u64().unwrap()
}

fn cache_status(s: &Serve) -> Value {
    s.ok("bdev_get_bdevs", json!({"name": "c0"}))[0]["driver_specific"]["cache"].clone()
}

#[test]
fn cache_rpcs_errors_cuts_status_and_save_config() {
    let dir = scratch();
    let s = Serve::start(dir.path(), &[]);
    let cases: Vec<(&str, Value, i64, &str)> = vec![
        (
            "bdev_cache_create",
            json!({"name": "c0", "base": "nope", "cache_blocks": 8}),
            -32001,
            "bdev `nope` does not exist",
        ),
        (
            "bdev_cache_create",
            json!({"name": "c0", "base": "Malloc0", "cache_blocks": 0}),
            -32602,
            "invalid parameter `cache_blocks`: must be at least 1",
        ),
        (
            "bdev_cache_create",
            json!({"name": "c0", "base": "nope", "cache_blocks": 0}),
            -32602,
            "invalid parameter `cache_blocks`: must be at least 1",
        ),
        (
            "bdev_cache_create",
            json!({"name": "c0", "base": "Malloc0"}),
            -32602,
            "invalid params: missing field `cache_blocks`",
        ),
        (
            "bdev_cache_create",
            json!({"name": "Malloc0", "base": "Malloc0", "cache_blocks": 8}),
            -32002,
            "bdev `Malloc0` already exists",
        ),
        (
            "bdev_cache_power_cut",
            json!({"name": "nope"}),
            -32001,
            "bdev `nope` does not exist",
        ),
        (
            "bdev_cache_power_cut",
            json!({"name": "Malloc0"}),
            -32602,
            "invalid parameter `name`: `Malloc0` is not a cache bdev",
        ),
        (
            "bdev_cache_power_cut",
            json!({"name": "Malloc0", "mode": "bogus"}),
            -32602,
            "invalid parameter `mode`: unknown variant `bogus`, expected `all` or `random`",
        ),
        (
            "bdev_cache_power_cut",
            json!({"name": "Malloc0", "seed": 3}),
            -32602,
            "invalid parameter `seed`: only with mode `random`",
        ),
    ];
    for (method, params, code, msg) in cases {
        assert_eq!(
            s.call(method, params.clone()),
            Err((code, msg.to_string())),
            "{method} {params}"
        );
        alive(&s);
    }

    assert_eq!(
        s.ok(
            "bdev_cache_create",
            json!({"name": "c0", "base": "Malloc0", "cache_blocks": 64})
        ),
        "c0"
    );
    let b = &s.ok("bdev_get_bdevs", json!({"name": "Malloc0"}))[0];
    assert_eq!(b["claimed_by"], "c0");
    assert_eq!(
        s.call(
            "bdev_cache_create",
            json!({"name": "c1", "base": "Malloc0", "cache_blocks": 8})
        ),
        Err((-32003, "bdev `Malloc0` is in use by `c0`".into()))
    );
    let c = &s.ok("bdev_get_bdevs", json!({"name": "c0"}))[0];
    assert_eq!(c["kind"], "cache");
    assert_eq!(c["supported_io_types"]["flush"], true);

    // Flushed, unflushed and FUA writes; then a cut.
    assert_eq!(io(&s, "write", 0, 8, 5, false)["status"], "success");
    assert_eq!(io(&s, "flush", 0, 0, 0, false)["status"], "success");
    assert_eq!(io(&s, "write", 8, 8, 6, false)["status"], "success");
    assert_eq!(io(&s, "write", 16, 4, 7, true)["status"], "success");
    assert_eq!(mismatched(&s, 8, 8, 6), 0, "reads see the cache");
    let st = cache_status(&s);
    assert_eq!(st["cache_blocks"], 64);
    assert_eq!(st["cached_blocks"], 20);
    assert_eq!(st["dirty_blocks"], 8);
    assert_eq!(st["flushes"], 1);
    assert_eq!(st["fua_writes"], 1);
    let r = s.ok("bdev_cache_power_cut", json!({"name": "c0"}));
    assert_eq!(r["mode"], "all");
    assert_eq!(r["lost_blocks"], 8);
    assert_eq!(r["written_back_blocks"], 0);
    assert_eq!(mismatched(&s, 0, 8, 5), 0, "flushed writes survive");
    assert_eq!(mismatched(&s, 8, 8, 6), 8, "unflushed writes are lost");
    assert_eq!(mismatched(&s, 16, 4, 7), 0, "FUA writes survive");
    let st = cache_status(&s);
    assert_eq!(
        (st["cached_blocks"].clone(), st["power_cuts"].clone()),
        (json!(0), json!(1))
    );

    // A random cut, replayable by its seed.
    assert_eq!(io(&s, "write", 32, 16, 9, false)["status"], "success");
    let r = s.ok(
        "bdev_cache_power_cut",
        json!({"name": "c0", "mode": "random", "seed": 42}),
    );
    assert_eq!(r["seed"], 42);
    let kept = r["written_back_blocks"].as_u64().unwrap();
    assert_eq!(kept + r["lost_blocks"].as_u64().unwrap(), 16);
    assert_eq!(mismatched(&s, 32, 16, 9), 16 - kept);
    let r = s.ok(
        "bdev_cache_power_cut",
        json!({"name": "c0", "mode": "random"}),
    );
    assert!(
        r["seed"].is_u64(),
        "a random cut reports the seed it chose: {r}"
    );
    alive(&s);

    // save_config replays it; delete releases the base.
    let saved = s.ok("save_config", json!({}));
    let call = saved["calls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["method"] == "bdev_cache_create")
        .expect("saved")
        .clone();
    assert_eq!(
        call["params"],
        json!({"name": "c0", "base": "Malloc0", "cache_blocks": 64})
    );
    let cfg = dir.path().join("saved.json");
    std::fs::write(&cfg, serde_json::to_vec_pretty(&saved).unwrap()).unwrap();
    drop(s);
    let s2 = Serve::start(dir.path(), &["--config", cfg.to_str().unwrap()]);
    let c = &s2.ok("bdev_get_bdevs", json!({"name": "c0"}))[0];
    assert_eq!(c["kind"], "cache");
    assert_eq!(c["driver_specific"]["cache"]["base"], "Malloc0");
    assert_eq!(
        s2.call("bdev_delete", json!({"name": "Malloc0"})),
        Err((-32003, "bdev `Malloc0` is in use by `c0`".into()))
    );
    s2.ok("bdev_delete", json!({"name": "c0"}));
    s2.ok("bdev_delete", json!({"name": "Malloc0"}));
}
