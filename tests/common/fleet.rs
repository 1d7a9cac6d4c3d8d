//! Helpers of the fleet tests (tests/fleet*.rs): a real etcd cluster
//! (`etcd::EtcdCluster`), the real `recordgate policy` CLI against it, and
//! real gateway replicas on the etcd store.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::etcd::EtcdCluster;
use super::*;

pub const OWNER: Option<(&str, &str)> = Some(("demo-owner", "owner-secret"));

pub fn demo_policy() -> String {
    std::fs::read_to_string(repo_path("config/policy.yaml")).unwrap()
}

pub fn store_setting(cluster: &EtcdCluster) -> Value {
    json!({"kind": "etcd", "etcd": {
        "endpoints": cluster.endpoints(),
        "prefix": "/recordgate/",
        "request_timeout_ms": 1000,
        "connect_timeout_ms": 500
    }})
}

/// `recordgate policy import` of `policy` into the cluster.
pub fn import(cluster: &EtcdCluster, policy: &str) {
    let out = import_with(store_setting(cluster), policy);
    assert!(
        out.status.success(),
        "import failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `recordgate policy import` of `policy` with the store settings `store`.
pub fn import_with(store: Value, policy: &str) -> std::process::Output {
    policy_cli(store, Some(policy), &[])
}

/// `recordgate policy import` of `policy` (with `extra` arguments), or
/// `policy export` when `policy` is `None`, with the store settings `store`.
pub fn policy_cli(store: Value, policy: Option<&str>, extra: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let settings = json!({
        "listen": ["127.0.0.1:1"],
        "upstream": {"servers": ["127.0.0.1:1"]},
        "policy": "cache.yaml",
        "policy_store": store,
    });
    std::fs::write(
        dir.path().join("settings.yaml"),
        serde_json::to_vec(&settings).unwrap(),
    )
    .unwrap();
    let config = dir.path().join("settings.yaml");
    let file = dir.path().join("import.yaml");
    let mut args = match policy {
        Some(policy) => {
            std::fs::write(&file, policy).unwrap();
            vec!["policy", "import", file.to_str().unwrap()]
        }
        None => vec!["policy", "export"],
    };
    args.extend(["--config", config.to_str().unwrap()]);
    args.extend(extra);
    run_cli(&args)
}

/// The hash of the policy etcd holds, from `recordgate policy export`.
pub fn exported_hash(cluster: &EtcdCluster) -> String {
    let out = policy_cli(store_setting(cluster), None, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let first = text.lines().next().unwrap();
    first.rsplit("hash ").next().unwrap().trim().to_string()
}

/// A gateway replica on the etcd store of `cluster`.
pub fn replica(up: &TestUpstream, cluster: &EtcdCluster, policy: &str) -> Gateway {
    replica_with(up, store_setting(cluster), policy)
}

/// A gateway replica with the store settings `store`.
pub fn replica_with(up: &TestUpstream, store: Value, policy: &str) -> Gateway {
    GatewayBuilder::new(up)
        .env("RUST_LOG", "info,recordgate::policy::etcd=debug")
        .policy(policy)
        .setting("policy_store", store)
        .metrics(json!({}))
        .start()
}

/// Every audit entry etcd holds under /recordgate/audit/, in commit order:
/// `(revision, entry)`.
pub fn audit_entries(cluster: &EtcdCluster) -> Vec<(i64, Value)> {
    use base64::Engine;
    let out = cluster.etcdctl(&["get", "--prefix", "/recordgate/audit/", "-w", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut entries: Vec<(i64, Value)> = v["kvs"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|kv| {
            let value = b64.decode(kv["value"].as_str().unwrap()).unwrap();
            (
                kv["mod_revision"].as_i64().unwrap(),
                serde_json::from_slice(&value).unwrap(),
            )
        })
        .collect();
    entries.sort_by_key(|(revision, _)| *revision);
    entries
}

/// How many keys etcd holds under `prefix`.
pub fn keys_under(cluster: &EtcdCluster, prefix: &str) -> usize {
    let out = cluster.etcdctl(&["get", "--prefix", "--keys-only", prefix]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

pub fn description(gw: &Gateway, client: &str) -> Option<String> {
    let r = gw.post_form("/clients/list", OWNER, &[]);
    if r.status != 200 {
        return None;
    }
    r.json()["results"]
        .as_array()?
        .iter()
        .find(|c| c["client_id"] == client)
        .and_then(|c| c["description"].as_str().map(str::to_string))
}

pub fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

pub fn wait_until(limit: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !ok() {
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

pub fn status(gw: &Gateway) -> Value {
    gw.admin_get("/status").json()
}
