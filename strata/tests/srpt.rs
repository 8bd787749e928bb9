//! SRP target management through the daemon (the data path is tested in the
//! `target` crate over loopback and in the VM against the kernel's ib_srp).

mod common;

use common::{scratch, Serve};
use serde_json::json;

#[test]
fn srpt_rpcs_validate_claim_and_save() {
    let dir = scratch();
    let s = Serve::start(dir.path(), &[]);
    let good = json!({"name": "t0", "listen": "127.0.0.1:5555", "id_ext": "0x1111", "ioc_guid": "0x2222",
        "luns": [{"lun": 0, "bdev": "Malloc0"}], "acl": ["*"], "provider": "loopback"});
    let bad = |patch: serde_json::Value| {
        let mut p = good.clone();
        for (k, v) in patch.as_object().unwrap() {
            p[k] = v.clone();
        }
        s.call("srpt_target_create", p).unwrap_err()
    };
    let (c, m) = bad(json!({"id_ext": "xyz"}));
    assert_eq!(c, -32602);
    assert!(m.starts_with("invalid parameter `id_ext`"), "{m}");
    let (_, m) = bad(json!({"listen": "nowhere"}));
    assert!(m.starts_with("invalid parameter `listen`"), "{m}");
    let (_, m) = bad(json!({"acl": ["zz"]}));
    assert!(m.starts_with("invalid parameter `acl`"), "{m}");
    let (_, m) = bad(json!({"luns": [{"lun": 0, "bdev": "nope"}]}));
    assert_eq!(m, "invalid parameter `luns`: bdev `nope` does not exist");
    let (_, m) = bad(json!({"provider": "carrier-pigeon"}));
    assert!(m.starts_with("invalid parameter `provider`"), "{m}");
    // Nothing was left claimed by the failed attempts.
    assert_eq!(
        s.ok("bdev_get_bdevs", json!({"name": "Malloc0"}))[0]["claimed"],
        false
    );

    assert_eq!(s.ok("srpt_target_create", good.clone()), json!("t0"));
    assert_eq!(
        s.ok("bdev_get_bdevs", json!({"name": "Malloc0"}))[0]["claimed_by"],
        "srpt:t0"
    );
    assert_eq!(
        s.call("srpt_target_create", good.clone()).unwrap_err().0,
        -32002
    );
    let sess = s.ok("srpt_get_sessions", json!({}));
    assert_eq!(sess.as_array().unwrap().len(), 1, "{sess}");
    let saved = s.ok("save_config", json!({}));
    assert!(saved["calls"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["method"] == "srpt_target_create" && c["params"]["name"] == "t0"));
    assert_eq!(
        s.call("bdev_delete", json!({"name": "Malloc0"}))
            .unwrap_err()
            .0,
        -32003
    );
    s.ok("srpt_target_delete", json!({"name": "t0"}));
    assert_eq!(
        s.call("srpt_target_delete", json!({"name": "t0"}))
            .unwrap_err()
            .0,
        -32001
    );
    s.ok("bdev_delete", json!({"name": "Malloc0"}));
}
