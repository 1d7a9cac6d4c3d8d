//! Route table and features: which client may call which endpoint, and that
//! paths outside the table (including other spellings) are never forwarded.
// A test (or bench) that cannot set up fails loudly; the no-panic rule is for the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::json;

const ENTITY: &str = "/entity?type_name=user&id=7";

fn assert_feature_denied(r: &Resp) {
    let v = r.assert_error(403, 403, "client_permission_error");
    assert!(!r.text().contains("Ada"), "{v}");
}

#[test]
fn login_client_may_not_read_entity() {
    let (up, gw) = gateway_with_default_upstream();
    assert_feature_denied(&gw.get_as("login", ENTITY));
    assert_feature_denied(&gw.get_as("login", "/entity.find?type_name=user"));
    assert_feature_denied(&gw.get_as("login", "/entity.count?type_name=user"));
    up.assert_untouched();
}

#[test]
fn direct_read_access_may_not_update() {
    let (up, gw) = gateway_with_default_upstream();
    let r = gw.post_as(
        "fullreader",
        "/entity.update",
        &[
            ("type_name", "user"),
            ("id", "7"),
            ("attributes", r#"{"givenName":"X"}"#),
        ],
    );
    assert_feature_denied(&r);
    for path in [
        "/entity.create",
        "/entity.delete",
        "/entity.replace",
        "/entity.bulkCreate",
    ] {
        let r = gw.post_as("fullreader", path, &[("type_name", "user"), ("id", "7")]);
        assert_feature_denied(&r);
    }
    up.assert_untouched();
}

#[test]
fn direct_read_access_may_read_every_read_route() {
    let (up, gw) = gateway_with_default_upstream();
    gw.get_as("fullreader", ENTITY).assert_ok();
    gw.get_as("fullreader", "/entity.find?type_name=user")
        .assert_ok();
    let v = gw
        .get_as("fullreader", "/entity.count?type_name=user")
        .assert_ok();
    assert_eq!(v["total_count"], 2);
    assert_eq!(up.count(), 3);
}

#[test]
fn direct_access_implies_direct_read_access() {
    let (up, gw) = gateway_with_default_upstream();
    let v = gw.get_as("direct", ENTITY).assert_ok();
    assert_eq!(v["result"]["givenName"], "Ada7");
    gw.get_as("direct", "/entity.find?type_name=user")
        .assert_ok();
    assert_eq!(up.count(), 2);
}

#[test]
fn direct_access_may_write() {
    let (up, gw) = gateway_with_default_upstream();
    gw.post_as(
        "direct",
        "/entity.update",
        &[
            ("type_name", "user"),
            ("id", "7"),
            ("attributes", r#"{"givenName":"X"}"#),
        ],
    )
    .assert_ok();
    assert_eq!(up.only().path(), "/entity.update");
}

#[test]
fn owner_may_read_and_write() {
    let (up, gw) = gateway_with_default_upstream();
    gw.get_as("owner", ENTITY).assert_ok();
    gw.post_as(
        "owner",
        "/entity.delete",
        &[("type_name", "user"), ("id", "7")],
    )
    .assert_ok();
    assert_eq!(up.count(), 2);
}

#[test]
fn unknown_paths_and_other_spellings_are_refused_and_not_forwarded() {
    let (up, gw) = gateway_with_default_upstream();
    for path in [
        "/entity.purge?type_name=user",
        "/settings/items?type_name=user",
        "/entity%2Efind?type_name=user",
        "/ENTITY.FIND?type_name=user",
        "/entity.find/?type_name=user",
        "//entity.find?type_name=user",
        "/entity.find;x?type_name=user",
        "/Entity?type_name=user&id=7",
        "/entity/?type_name=user&id=7",
        "/?type_name=user",
    ] {
        let r = gw.get_as("owner", path);
        assert!(
            r.status == 404 || r.status == 403 || r.status == 400,
            "{path}: {} {}",
            r.status,
            r.text()
        );
        let v = r.json();
        assert_eq!(v["stat"], "error", "{path}: {v}");
        assert!(v["request_id"].is_string(), "{path}: {v}");
    }
    up.assert_untouched();
}

#[test]
fn unknown_path_is_refused_even_without_credentials() {
    let (up, gw) = gateway_with_default_upstream();
    let r = gw.get("/admin", None);
    assert_eq!(r.json()["stat"], "error");
    assert!(r.status >= 400);
    up.assert_untouched();
}

#[test]
fn methods_other_than_get_post_head_are_refused() {
    let (up, gw) = gateway_with_default_upstream();
    for m in ["PUT", "DELETE", "PATCH"] {
        let r = gw.send(
            http_client()
                .request(
                    reqwest::Method::from_bytes(m.as_bytes()).unwrap(),
                    gw.url(ENTITY),
                )
                .header("authorization", basic("owner", "owner-secret")),
        );
        assert_eq!(r.status, 405, "{m}: {}", r.text());
    }
    up.assert_untouched();
}

#[test]
fn unknown_entity_type_is_refused() {
    let (up, gw) = gateway_with_default_upstream();
    let r = gw.get_as("owner", "/entity?type_name=nosuchtype&id=7");
    r.assert_error(400, 222, "unknown_entity_type");
    let r = gw.get_as("owner", "/entity?id=7");
    r.assert_error(400, 100, "missing_argument");
    up.assert_untouched();
}

#[test]
fn settings_routes_replace_the_built_in_table() {
    let up = TestUpstream::start(|r| match r.path() {
        "/custom.read" => Reply::json(json!({"stat": "ok", "result": sample_record(3)})),
        _ => Reply::json(json!({"stat": "ok"})),
    });
    let gw = GatewayBuilder::new(&up)
        .setting(
            "routes",
            json!([
                {"path": "/custom.read", "access": "read", "response_records": "result"},
                {"path": "/custom.login", "access": "read", "features": ["login_client"]}
            ]),
        )
        .start();
    // The overriding route is served and read-filtered.
    let r = gw.get_as("reader", "/custom.read?type_name=user&id=3");
    let v = r.assert_ok();
    assert_eq!(v["result"]["givenName"], "Ada3");
    assert!(v["result"].get("email").is_none(), "{v}");
    r.assert_no_hidden();
    // Route-specific features.
    gw.get_as("login", "/custom.login?type_name=user")
        .assert_ok();
    assert_feature_denied(&gw.get_as("owner", "/custom.login?type_name=user"));
    // The built-in table is gone.
    let r = gw.get_as("owner", ENTITY);
    assert_eq!(r.json()["stat"], "error");
    assert_eq!(up.count(), 2);
}
