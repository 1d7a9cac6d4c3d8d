//! Client shadow mode (`enforcement: shadow`): every decision is made,
//! logged and counted as it would have been (`shadow="true"`), and the call
//! goes upstream as the client sent it and comes back as the upstream gave
//! it. Never looser than no gateway: the client's own credentials go
//! upstream, never the gateway's identity; an unauthenticated caller is
//! still refused. Never for an owner.

// A test (or bench) that cannot set up fails loudly; the no-panic rule is for the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{json, Value};

const BODY: &str = r#"{"stat":"ok","result":{"id":7,"uuid":"u-7","givenName":"Ada","email":"ada@example.com","birthday":"1815-12-10"}}"#;

fn upstream() -> TestUpstream {
    TestUpstream::start(|_| {
        Reply::bytes("application/json", BODY)
            .header("set-cookie", "session=abc")
            .header("x-debug-email", "ada@example.com")
    })
}

fn policy() -> String {
    policy_with_clients(
        r#"
clients:
  owner:
    secret: owner-secret
    features: [owner]
  legacy:
    secret: legacy-secret
    features: [direct_read_access]
    enforcement: shadow
    whitelist: ["127.0.0.0/8", "::1/128"]
    access_schemas:
      user:
        read: [givenName]
  enforced:
    secret: enforced-secret
    features: [direct_read_access]
    access_schemas:
      user:
        read: [givenName]
"#,
    )
}

fn start() -> (TestUpstream, Gateway) {
    let up = upstream();
    let gw = GatewayBuilder::new(&up)
        .policy(&policy())
        .metrics(json!({}))
        .setting("log", json!({"format": "json"}))
        .setting(
            "upstream",
            json!({
                "servers": [up.server()],
                "credentials": {"client_id": "gateway", "secret": "gateway-secret"}
            }),
        )
        .start();
    (up, gw)
}

fn requests(gw: &Gateway, decision: &str, shadow: &str) -> f64 {
    metric(
        &gw.scrape(),
        "recordgate_requests_total",
        &[
            ("route", "/entity"),
            ("decision", decision),
            ("shadow", shadow),
        ],
    )
}

#[test]
fn a_shadow_client_is_decided_and_counted_but_passes_as_sent() {
    let (up, gw) = start();
    // Allowed: forwarded as sent, answered as the upstream gave it.
    let r = gw.get(
        "/entity?type_name=user&id=7",
        Some(("legacy", "legacy-secret")),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), BODY, "the answer was changed");
    assert_eq!(r.header("set-cookie"), Some("session=abc"));
    assert_eq!(r.header("x-debug-email"), Some("ada@example.com"));
    let got = up.only();
    assert_eq!(got.target, "/entity?type_name=user&id=7");
    assert_eq!(
        got.header("authorization"),
        Some(basic("legacy", "legacy-secret").as_str())
    );
    assert_eq!(requests(&gw, "allowed", "true"), 1.0);
    // The read schema would have removed email and birthday.
    let removed = metric(
        &gw.scrape(),
        "recordgate_shadow_removed_attributes_total",
        &[("client", "legacy"), ("direction", "response")],
    );
    assert_eq!(removed, 2.0);

    // A call that would be refused (a parameter no route takes) passes too,
    // counted under the decision it would have had.
    let r = gw.get(
        "/entity?type_name=user&id=7&Attributes=email",
        Some(("legacy", "legacy-secret")),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), BODY);
    assert_eq!(
        up.requests()[1].target,
        "/entity?type_name=user&id=7&Attributes=email"
    );
    assert_eq!(requests(&gw, "bad_request", "true"), 1.0);
    // A feature it lacks: decided `feature`, passed.
    let r = gw.post_as(
        "legacy",
        "/entity.update",
        &[
            ("type_name", "user"),
            ("id", "7"),
            ("attributes", r#"{"email":"x@y"}"#),
        ],
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        up.requests()[2].param("attributes").unwrap(),
        r#"{"email":"x@y"}"#
    );
    let feature = metric(
        &gw.scrape(),
        "recordgate_requests_total",
        &[
            ("route", "/entity.update"),
            ("decision", "feature"),
            ("shadow", "true"),
        ],
    );
    assert_eq!(feature, 1.0);

    // The access log says what would have been decided, and that it was not.
    let log = gw.stderr();
    let lines: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| {
            let f = v.get("fields").unwrap_or(v);
            f.get("client_id") == Some(&json!("legacy")) && f.get("decision").is_some()
        })
        .collect();
    assert_eq!(lines.len(), 3, "{log}");
    for l in &lines {
        let f = l.get("fields").unwrap_or(l);
        assert_eq!(f["shadow"], true, "{l}");
    }

    // An enforced client with the same schema is filtered, and the gateway
    // presents its own identity upstream.
    let r = gw.get(
        "/entity?type_name=user&id=7",
        Some(("enforced", "enforced-secret")),
    );
    assert_eq!(r.json()["result"].get("email"), None);
    assert_eq!(r.header("set-cookie"), None);
    assert_eq!(
        up.requests()[3].header("authorization"),
        Some(basic("gateway", "gateway-secret").as_str())
    );
    assert_eq!(requests(&gw, "allowed", "false"), 1.0);
}

#[test]
fn an_unauthenticated_caller_naming_a_shadow_client_is_still_refused() {
    let (up, gw) = start();
    let r = gw.get("/entity?type_name=user&id=7", Some(("legacy", "wrong")));
    assert_eq!(r.status, 401);
    up.assert_untouched();
}

#[test]
fn shadow_mode_is_never_allowed_for_an_owner_and_is_shown_in_status() {
    let (_up, gw) = start();
    let status: Value = serde_json::from_str(&gw.admin_get("/status").text()).unwrap();
    assert_eq!(status["policy"]["shadow_clients"], 1, "{status}");
    assert_eq!(
        metric(&gw.scrape(), "recordgate_policy_shadow_clients", &[]),
        1.0
    );
    let file_before = std::fs::read(gw.policy_path()).unwrap();
    let r = gw.post_as(
        "owner",
        "/clients/set_features",
        &[("for_client_id", "legacy"), ("features", r#"["owner"]"#)],
    );
    let v = r.assert_error(400, 200, "invalid_argument");
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("shadow is not allowed for a client with the owner feature"),
        "{v}"
    );
    assert_eq!(std::fs::read(gw.policy_path()).unwrap(), file_before);
}
