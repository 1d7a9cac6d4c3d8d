//! The etcd test harness (`tests/common/etcd.rs`) checked against itself: a
//! 3-member cluster starts and serves puts and gets, losing its leader leaves
//! it writable and the killed member comes back with the data, and
//! `compact_now` compacts to the current revision. Every wait is bounded.
// A test (or bench) that cannot set up fails loudly; the no-panic rule is for the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::etcd::EtcdCluster;

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "etcdctl failed: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Retries `f` every 100 ms until it returns `Ok`, for `within` at most.
fn eventually<T>(within: Duration, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + within;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => panic!("{what} not within {within:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[test]
fn three_members_start_and_serve_put_and_get() {
    let t0 = Instant::now();
    let c = EtcdCluster::start(3);
    eprintln!("3-member cluster healthy after {:?}", t0.elapsed());

    let eps = c.endpoints();
    assert_eq!(eps.len(), 3);
    for ep in &eps {
        assert!(ep.starts_with("http://127.0.0.1:"), "{ep}");
    }
    let mut distinct = eps.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{eps:?}");

    let members = ok(c.etcdctl(&["member", "list"]));
    assert_eq!(members.lines().count(), 3, "{members}");

    ok(c.etcdctl(&["put", "/rg/greeting", "hello"]));
    let got = ok(c.etcdctl(&["get", "/rg/greeting", "--print-value-only"]));
    assert_eq!(got.trim(), "hello");
    // Every member serves it from its own copy (serializable read).
    for i in 0..3 {
        let got = eventually(Duration::from_secs(5), "a local read", || {
            let out = c.etcdctl_on(
                i,
                &[
                    "get",
                    "/rg/greeting",
                    "--print-value-only",
                    "--consistency=s",
                ],
            );
            let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if v == "hello" {
                Ok(v)
            } else {
                Err(text(&out))
            }
        });
        assert_eq!(got, "hello");
    }

    let l = c.leader();
    assert!(l < 3);
}

#[test]
fn losing_the_leader_leaves_the_cluster_writable_and_the_member_catches_up() {
    let mut c = EtcdCluster::start(3);
    ok(c.etcdctl(&["put", "/rg/before", "1"]));

    let old = c.leader();
    c.kill(old);
    let t0 = Instant::now();
    eventually(
        Duration::from_secs(10),
        "a write after the leader died",
        || {
            let out = c.etcdctl(&["put", "/rg/after", "2"]);
            if out.status.success() {
                Ok(())
            } else {
                Err(text(&out))
            }
        },
    );
    eprintln!("writable again {:?} after killing the leader", t0.elapsed());
    let new = c.leader();
    assert_ne!(new, old, "the killed member cannot be the leader");

    // The killed member's endpoint is still listed but does not answer.
    assert_eq!(c.endpoints().len(), 3);
    assert!(!c.etcdctl_on(old, &["endpoint", "health"]).status.success());

    let t1 = Instant::now();
    c.restart(old);
    eprintln!("killed member healthy {:?} after restart", t1.elapsed());
    for key in ["/rg/before", "/rg/after"] {
        eventually(
            Duration::from_secs(10),
            "the restarted member's copy",
            || {
                let out = c.etcdctl_on(old, &["get", key, "--print-value-only", "--consistency=s"]);
                let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
                if !v.is_empty() {
                    Ok(())
                } else {
                    Err(text(&out))
                }
            },
        );
    }
    let all = ok(c.etcdctl(&["get", "/rg/", "--prefix", "--keys-only"]));
    assert!(
        all.contains("/rg/before") && all.contains("/rg/after"),
        "{all}"
    );
    assert!(c.leader() < 3);
}

#[test]
fn compact_now_compacts_to_the_current_revision() {
    let c = EtcdCluster::start(1);
    assert_eq!(c.endpoints().len(), 1);
    assert_eq!(c.leader(), 0);
    ok(c.etcdctl(&["put", "/rg/k", "v1"]));
    let first = c.revision();
    ok(c.etcdctl(&["put", "/rg/k", "v2"]));
    let current = c.revision();
    assert!(current > first);

    // Before compaction the old revision can be read.
    let old = ok(c.etcdctl(&[
        "get",
        "/rg/k",
        "--print-value-only",
        &format!("--rev={first}"),
    ]));
    assert_eq!(old.trim(), "v1");

    c.compact_now();
    let out = c.etcdctl(&["get", "/rg/k", &format!("--rev={first}")]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("compacted"), "{}", text(&out));
    let now = ok(c.etcdctl(&["get", "/rg/k", "--print-value-only"]));
    assert_eq!(now.trim(), "v2");
    // Compacting again at the same revision is refused: it already is.
    let again = c.etcdctl(&["compact", &current.to_string()]);
    assert!(!again.status.success(), "{}", text(&again));
}
