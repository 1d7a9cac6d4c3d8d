//! A fleet shares its token bindings through etcd (with the etcd policy
//! store): a user who signs in through one replica is honoured by every
//! replica, one started later included, with no load-balancer affinity;
//! etcd holds digests, never tokens, and lets each binding expire with its
//! token. Real etcd, real gateway processes, the sample API as issuer.
// A test (or bench) that cannot set up fails loudly; the no-panic rule is for the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::etcd::EtcdCluster;
use common::fleet::{demo_policy, import, keys_under, store_setting, wait_for};
use common::tokens::*;
use common::*;
use serde_json::{json, Value};

fn replica(up: &TestUpstream, cluster: &EtcdCluster, tokens: Value) -> Gateway {
    GatewayBuilder::new(up)
        .policy(&demo_policy())
        .setting("policy_store", store_setting(cluster))
        .setting("tokens", tokens_settings(tokens))
        .metrics(json!({}))
        .start()
}

fn read_with(gw: &Gateway, token: &str) -> Resp {
    with_token(gw, token, "/entity", &[("type_name", "user")])
}

#[test]
fn a_token_issued_through_one_replica_is_honoured_by_every_replica() {
    let cluster = EtcdCluster::start(1);
    import(&cluster, &demo_policy());
    let up = demo_upstream();
    let a = replica(&up, &cluster, json!({}));
    let b = replica(&up, &cluster, json!({}));
    let answer = sign_in(&a, "7");
    let token = token_of(&answer, "access_token");
    let refresh = token_of(&answer, "refresh_token");
    // At B within moments (the watch), decided as the mobile app's, on the
    // token's own user, cut to read_with_token.
    wait_for("the binding at B", Duration::from_secs(2), || {
        read_with(&b, &token).status == 200
    });
    let v = read_with(&b, &token).assert_ok();
    assert_eq!(v["result"]["uuid"], owner_view(&a, "7")["uuid"], "{v}");
    for k in v["result"].as_object().unwrap().keys() {
        assert!(
            READ_WITH_TOKEN.contains(&k.as_str()),
            "{k} leaked at B: {v}"
        );
    }
    // Both bindings are in etcd, as digests: neither token is there.
    assert_eq!(keys_under(&cluster, "/recordgate/tokens/"), 2);
    let held = cluster.etcdctl(&["get", "--prefix", "/recordgate/tokens/"]);
    let held = String::from_utf8_lossy(&held.stdout);
    assert!(
        !held.contains(&token) && !held.contains(&refresh),
        "a raw token in etcd"
    );
    // The refresh token works at B too, and the new token at A.
    let renewed = b
        .post_form(
            "/oauth/token",
            Some(("mobile-app", "mobile-secret")),
            &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
        )
        .assert_ok();
    let renewed = token_of(&renewed, "access_token");
    wait_for("the renewed binding at A", Duration::from_secs(2), || {
        read_with(&a, &renewed).status == 200
    });
    // A replica started later reads the fleet's bindings at start.
    let c = replica(&up, &cluster, json!({}));
    wait_for("the bindings at C", Duration::from_secs(3), || {
        read_with(&c, &token).status == 200 && read_with(&c, &renewed).status == 200
    });
    // A token the fleet never bound is still refused everywhere.
    read_with(&c, "no-such-token").assert_error(401, 414, "access_token_expired");
    // Revocation is the policy's, so the fleet's: the client's secret
    // reset through A ends its tokens at B and C.
    a.post_form(
        "/clients/reset_secret",
        Some(("demo-owner", "owner-secret")),
        &[("for_client_id", "mobile-app"), ("hours_to_live", "1")],
    )
    .assert_ok();
    for gw in [&b, &c] {
        wait_for("revocation", Duration::from_secs(3), || {
            read_with(gw, &token).status == 401
        });
    }
}

#[test]
fn etcd_lets_a_binding_expire_with_its_token_on_every_replica() {
    let cluster = EtcdCluster::start(1);
    import(&cluster, &demo_policy());
    let up = demo_upstream();
    let short =
        json!({"default_lifetime_secs": 2, "max_lifetime_secs": 2, "refresh_lifetime_secs": 2});
    let a = replica(&up, &cluster, short.clone());
    let b = replica(&up, &cluster, short);
    let token = token_of(&sign_in(&a, "4"), "access_token");
    wait_for("the binding at B", Duration::from_secs(2), || {
        read_with(&b, &token).status == 200
    });
    // The lease ends: etcd deletes the keys, and B drops the binding
    // without waiting for its own sweep.
    wait_for("the keys to expire", Duration::from_secs(10), || {
        keys_under(&cluster, "/recordgate/tokens/") == 0
    });
    read_with(&b, &token).assert_error(401, 414, "access_token_expired");
    wait_for("B's table", Duration::from_secs(3), || {
        b.admin_get("/metrics")
            .text()
            .lines()
            .any(|l| l == "recordgate_token_bindings 0")
    });
}

#[test]
fn with_etcd_away_a_sign_in_still_works_through_its_replica_and_is_counted() {
    let mut cluster = EtcdCluster::start(1);
    import(&cluster, &demo_policy());
    let up = demo_upstream();
    let a = replica(&up, &cluster, json!({}));
    cluster.kill(0);
    // Once the watch has lost etcd, a sign-in does not wait for it.
    std::thread::sleep(Duration::from_millis(500));
    let started = std::time::Instant::now();
    let token = token_of(&sign_in(&a, "5"), "access_token");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    read_with(&a, &token).assert_ok();
    let metrics = a.admin_get("/metrics").text();
    assert!(
        metrics
            .lines()
            .any(|l| l == "recordgate_token_bindings_unshared_total 2"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("token"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// `cargo test --release --test tokens_fleet -- --ignored --nocapture`:
/// the cost of sharing a binding, as the `/oauth/token` call that makes it
/// takes, through a replica on the etcd store against one on the file
/// store (bindings local), alternating.
#[test]
#[ignore]
fn measure_token_issuance_with_shared_bindings() {
    let cluster = EtcdCluster::start(3);
    import(&cluster, &demo_policy());
    let up = demo_upstream();
    let shared = replica(&up, &cluster, json!({}));
    let local = GatewayBuilder::new(&up)
        .policy(&demo_policy())
        .setting("tokens", tokens_settings(json!({})))
        .start();
    let exchange = |gw: &Gateway, id: &str| {
        let code = authorization_code(gw, id);
        let t = std::time::Instant::now();
        exchange_code(gw, &code);
        t.elapsed()
    };
    let (mut s, mut l) = (Vec::new(), Vec::new());
    for i in 0..200 {
        let id = (i % 30 + 1).to_string();
        s.push(exchange(&shared, &id));
        l.push(exchange(&local, &id));
    }
    s.sort();
    l.sort();
    println!(
        "/oauth/token, 200 each: shared through etcd (3 members) p50 {:?} p99 {:?}; local p50 {:?} p99 {:?}",
        s[100], s[197], l[100], l[197]
    );
}
