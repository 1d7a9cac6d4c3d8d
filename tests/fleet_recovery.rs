//! How a replica on the etcd store (issue 19) recovers from what etcd and
//! the network do to it: a commit whose answer comes late (its outcome
//! settled before the caller is answered), etcd replaced by a new cluster,
//! SIGHUP, and audit entries expiring. Real etcd, real gateway processes,
//! and a real TCP relay between them where the network must misbehave.
// A test (or bench) that cannot set up fails loudly; the no-panic rule is for the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::etcd::EtcdCluster;
use common::fleet::*;
use common::relay::HoldingRelay;
use common::*;
use serde_json::{json, Value};

/// Store settings pointing at `endpoints`, answers awaited `timeout_ms`.
fn store_at(endpoints: Vec<String>, timeout_ms: u64) -> Value {
    json!({"kind": "etcd", "etcd": {
        "endpoints": endpoints,
        "prefix": "/recordgate/",
        "request_timeout_ms": timeout_ms,
        "connect_timeout_ms": 500
    }})
}

fn set_description(gw: &Gateway, value: &str) -> Resp {
    gw.post_form(
        "/clients/set_description",
        OWNER,
        &[("for_client_id", "login-app"), ("description", value)],
    )
}

/// The audit entries of changes that set login-app's description to `value`.
fn entries_setting(cluster: &EtcdCluster, value: &str) -> usize {
    audit_entries(cluster)
        .iter()
        .filter(|(_, e)| e["after"]["description"] == value)
        .count()
}

#[test]
fn a_commit_answered_late_is_settled_by_its_audit_entry_before_the_caller_is_answered() {
    let cluster = EtcdCluster::start(1);
    import(&cluster, &demo_policy());
    let relay = HoldingRelay::start(cluster.endpoints()[0].trim_start_matches("http://"));
    let up = TestUpstream::capture_like();
    // A reaches etcd through the relay only; B directly.
    let a = replica_with(&up, store_at(vec![relay.endpoint()], 1000), &demo_policy());
    let b = replica(&up, &cluster, &demo_policy());

    // etcd commits the change at once, but its answer reaches A after 1.6 s,
    // past A's 1 s request time-out: the outcome is unknown. A asks etcd
    // again (that answer, behind the first, arrives in time) and finds the
    // change's audit entry: committed, so the caller gets 200.
    relay.hold_answers(Duration::from_millis(1200), Duration::from_millis(1600));
    let t = Instant::now();
    let r = set_description(&a, "late answer");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(t.elapsed() >= Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(
        a.stderr().contains("its audit entry shows it committed"),
        "the unknown outcome was not settled through the audit entry:\n{}",
        a.stderr()
    );
    assert_eq!(description(&a, "login-app").as_deref(), Some("late answer"));
    wait_for("the change at B", Duration::from_secs(3), || {
        description(&b, "login-app").as_deref() == Some("late answer")
    });
    assert_eq!(
        entries_setting(&cluster, "late answer"),
        1,
        "committed once"
    );

    // No answer at all for longer than A waits (the commit and three
    // attempts to settle it): 503, and the message says the change was not
    // confirmed rather than that nothing changed, because etcd did carry it
    // out; once the answers arrive the fleet converges on it.
    relay.hold_answers(Duration::from_millis(4500), Duration::from_millis(5000));
    let r = set_description(&a, "never confirmed");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("not confirmed"), "{}", r.text());
    assert!(!r.text().contains("nothing was changed"), "{}", r.text());
    for gw in [&a, &b] {
        wait_for("convergence", Duration::from_secs(5), || {
            description(gw, "login-app").as_deref() == Some("never confirmed")
        });
    }
    assert_eq!(entries_setting(&cluster, "never confirmed"), 1);
    // And A writes normally again.
    set_description(&a, "after").assert_ok();
    wait_for("the change at B", Duration::from_secs(3), || {
        description(&b, "login-app").as_deref() == Some("after")
    });
}

#[test]
fn etcd_replaced_by_a_new_cluster_is_read_whole_and_its_policy_adopted() {
    let mut cluster = EtcdCluster::start(1);
    import(&cluster, &demo_policy());
    let up = TestUpstream::capture_like();
    let a = replica(&up, &cluster, &demo_policy());
    set_description(&a, "in the old cluster").assert_ok();
    // The new cluster holds another policy at lower revisions.
    cluster.replace();
    let restored = demo_policy().replace(
        "Sign-in client without direct record access",
        "restored from a backup",
    );
    import(&cluster, &restored);
    wait_for("the new cluster's policy", Duration::from_secs(10), || {
        description(&a, "login-app").as_deref() == Some("restored from a backup")
    });
    assert!(
        a.stderr().contains("etcd is a different cluster now"),
        "{}",
        a.stderr()
    );
    // Its guard revisions are the new cluster's: writes commit again, and
    // the store reports itself in sync.
    set_description(&a, "in the new cluster").assert_ok();
    let st = status(&a);
    assert_eq!(st["store"]["connected"], true, "{st}");
    assert!(st["store"]["pending"].is_null(), "{st}");
    assert_eq!(entries_setting(&cluster, "in the new cluster"), 1);
}

fn reloads(gw: &Gateway, result: &str) -> u64 {
    let metrics = gw.admin_get("/metrics").text();
    let prefix =
        format!("recordgate_policy_reloads_total{{result=\"{result}\",source=\"signal\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0)
}

#[test]
fn with_etcd_sighup_reads_etcd_again_and_the_cache_file_is_never_read() {
    let mut cluster = EtcdCluster::start(1);
    import(&cluster, &demo_policy());
    let up = TestUpstream::capture_like();
    let a = replica(&up, &cluster, &demo_policy());
    let hash = status(&a)["policy"]["hash"].clone();
    // The policy file is the replica's cache: an edit is not read, neither
    // by the poller nor by SIGHUP.
    let cache = a.dir.path().join("policy.yaml");
    let edited = std::fs::read_to_string(&cache).unwrap().replace(
        "Sign-in client without direct record access",
        "edited by hand",
    );
    std::fs::write(&cache, edited).unwrap();
    a.signal("HUP");
    wait_for("the reload by signal", Duration::from_secs(3), || {
        reloads(&a, "success") == 1
    });
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(status(&a)["policy"]["hash"], hash);
    assert_ne!(
        description(&a, "login-app").as_deref(),
        Some("edited by hand")
    );
    // SIGHUP reads etcd: with etcd gone the reload fails, counted, and the
    // policy in force stays.
    cluster.kill(0);
    a.signal("HUP");
    wait_for("the failed reload", Duration::from_secs(10), || {
        reloads(&a, "failure") == 1
    });
    assert_eq!(status(&a)["policy"]["hash"], hash);
    a.post_form("/clients/list", OWNER, &[]).assert_ok();
}

#[test]
fn audit_entries_older_than_the_retention_leave_etcd() {
    let cluster = EtcdCluster::start(1);
    import(&cluster, &demo_policy());
    let up = TestUpstream::capture_like();
    let mut store = store_at(cluster.endpoints(), 200);
    store["etcd"]["audit_retention_secs"] = json!(2);
    let a = replica_with(&up, store, &demo_policy());
    set_description(&a, "old").assert_ok();
    assert_eq!(
        keys_under(&cluster, "/recordgate/audit/"),
        2,
        "the import's and the change's"
    );
    std::thread::sleep(Duration::from_millis(2100));
    set_description(&a, "new").assert_ok();
    // The old change's entry goes within a trim period (retention / 10,
    // at least 1 s, jittered); the new one stays for its 2 s.
    wait_for(
        "the old entry to expire",
        Duration::from_millis(1800),
        || entries_setting(&cluster, "old") == 0,
    );
    assert_eq!(entries_setting(&cluster, "new"), 1);
    // The import's entry, older too, went with it. The policy itself is
    // untouched.
    assert_eq!(keys_under(&cluster, "/recordgate/audit/"), 1);
    assert_eq!(description(&a, "login-app").as_deref(), Some("new"));
    assert!(status(&a)["store"]["pending"].is_null());
}
