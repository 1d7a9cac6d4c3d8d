//! The shipped example policy in front of the embedded sample user-record API
//! (started by `demo_upstream` in settings), on private ports.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn demo_gateway() -> Gateway {
    let demo_port = free_port();
    let demo = format!("127.0.0.1:{demo_port}");
    let policy = std::fs::read_to_string(repo_path("config/policy.yaml")).unwrap();
    let gw = GatewayBuilder::to_server(&demo)
        .policy(&policy)
        .setting("demo_upstream", json!({"listen": demo, "records": 40}))
        .start();
    // The embedded upstream may come up just after the gateway's listener.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = gw.get(
            "/entity.count?type_name=user",
            Some(("demo-owner", "owner-secret")),
        );
        if r.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "demo upstream not ready: {} {}",
            r.status,
            r.text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    gw
}

#[test]
fn demo_owner_reads_full_records() {
    let gw = demo_gateway();
    let v = gw
        .get(
            "/entity?type_name=user&id=7",
            Some(("demo-owner", "owner-secret")),
        )
        .assert_ok();
    assert!(v["result"]["email"].is_string(), "{v}");
    assert!(v["result"]["internal"].is_object(), "{v}");
    let v = gw
        .get(
            "/entity.count?type_name=user",
            Some(("demo-owner", "owner-secret")),
        )
        .assert_ok();
    assert_eq!(v["total_count"], 40, "{v}");
}

#[test]
fn demo_partner_sees_only_its_attributes() {
    let gw = demo_gateway();
    let v = gw
        .get(
            "/entity?type_name=user&id=7",
            Some(("partner-readonly", "partner-secret")),
        )
        .assert_ok();
    let rec = v["result"].as_object().unwrap();
    for k in rec.keys() {
        assert!(
            [
                "id",
                "uuid",
                "created",
                "lastUpdated",
                "givenName",
                "familyName",
                "primaryAddress",
                "photos"
            ]
            .contains(&k.as_str()),
            "unexpected {k}: {v}"
        );
    }
    if let Some(addr) = rec.get("primaryAddress").and_then(Value::as_object) {
        assert!(addr.keys().all(|k| k == "city"), "{v}");
    }
    for p in rec
        .get("photos")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        assert!(
            p.as_object()
                .unwrap()
                .keys()
                .all(|k| k == "id" || k == "value"),
            "{p}"
        );
    }
    let v = gw
        .get(
            "/entity.find?type_name=user",
            Some(("partner-readonly", "partner-secret")),
        )
        .assert_ok();
    for rec in v["results"].as_array().unwrap() {
        assert!(rec.get("email").is_none(), "{rec}");
    }
    // Oracle and write refused.
    let r = gw.get(
        "/entity.find?type_name=user&filter=email%20is%20not%20null",
        Some(("partner-readonly", "partner-secret")),
    );
    r.assert_error(403, 403, "client_permission_error");
    let r = gw.post_form(
        "/entity.update",
        Some(("partner-readonly", "partner-secret")),
        &[
            ("type_name", "user"),
            ("id", "7"),
            ("attributes", r#"{"givenName":"X"}"#),
        ],
    );
    r.assert_error(403, 403, "client_permission_error");
}

#[test]
fn demo_writer_rejects_attributes_outside_its_write_schema() {
    let gw = demo_gateway();
    let auth = Some(("crm-writer", "writer-secret"));
    let r = gw.post_form(
        "/entity.update",
        auth,
        &[
            ("type_name", "user"),
            ("id", "7"),
            ("attributes", r#"{"givenName":"Zed","email":"x@y"}"#),
        ],
    );
    let v = r.assert_error(403, 403, "client_permission_error");
    assert!(v["error_description"].as_str().unwrap().contains("email"));
    gw.post_form(
        "/entity.update",
        auth,
        &[
            ("type_name", "user"),
            ("id", "7"),
            ("attributes", r#"{"givenName":"Zed"}"#),
        ],
    )
    .assert_ok();
    let v = gw.get("/entity?type_name=user&id=7", auth).assert_ok();
    assert_eq!(v["result"]["givenName"], "Zed", "{v}");
}

#[test]
fn demo_offsite_partner_and_login_client_are_refused() {
    let gw = demo_gateway();
    gw.get(
        "/entity?type_name=user&id=7",
        Some(("partner-offsite", "offsite-secret")),
    )
    .assert_error(403, 403, "client_permission_error");
    gw.get(
        "/entity?type_name=user&id=7",
        Some(("login-app", "login-secret")),
    )
    .assert_error(403, 403, "client_permission_error");
}
