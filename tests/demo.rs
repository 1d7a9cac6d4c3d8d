//! The shipped example policy in front of the sample user-record API (the
//! `recordgate-demo` crate, served here by the test's own upstream), on
//! private ports.
// A test (or bench) that cannot set up fails loudly; the no-panic rule is for the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn demo_gateway() -> (Gateway, TestUpstream) {
    let demo = recordgate_demo::DemoUpstream::new(40);
    let upstream = TestUpstream::start(move |r| {
        Reply::bytes(
            "application/json",
            demo.respond(r.path(), r.query(), r.header("content-type"), &r.body),
        )
    });
    let policy = std::fs::read_to_string(repo_path("config/policy.yaml")).unwrap();
    let gw = GatewayBuilder::new(&upstream).policy(&policy).start();
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
    (gw, upstream)
}

#[test]
fn demo_owner_reads_full_records() {
    let (gw, _upstream) = demo_gateway();
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
    let (gw, _upstream) = demo_gateway();
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
    let (gw, _upstream) = demo_gateway();
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
    let (gw, _upstream) = demo_gateway();
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
