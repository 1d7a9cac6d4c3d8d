//! Write filtering: attributes outside the write schema are stripped before
//! forwarding, or the call is refused naming the attribute; reserved
//! attributes, read-only clients, escaped and duplicate keys.
// A test (or bench) that cannot set up fails loudly; the no-panic rule is for the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{json, Value};

fn update(gw: &Gateway, client: &str, attributes: &str) -> Resp {
    gw.post_as(
        client,
        "/entity.update",
        &[
            ("type_name", "user"),
            ("id", "7"),
            ("attributes", attributes),
        ],
    )
}

fn forwarded_attributes(up: &TestUpstream) -> Value {
    let rec = up.only();
    assert_eq!(rec.path(), "/entity.update");
    rec.json_param("attributes").expect("attributes forwarded")
}

#[test]
fn strip_mode_removes_disallowed_attributes_before_forwarding() {
    let (up, gw) = gateway_with_default_upstream();
    let r = update(
        &gw,
        "writer",
        r#"{"givenName":"G","email":"e@x","mobileNumber":"1","primaryAddress":{"city":"C","zip":"Z"},"internal":{"riskScore":1}}"#,
    );
    r.assert_ok();
    assert_eq!(
        forwarded_attributes(&up),
        json!({"givenName": "G", "primaryAddress": {"city": "C"}})
    );
}

#[test]
fn strip_mode_filters_plural_elements() {
    let (up, gw) = gateway_with_default_upstream();
    update(
        &gw,
        "writer",
        r#"{"photos":[{"type":"t1","value":"v1"},{"type":"t2","value":"v2"}]}"#,
    )
    .assert_ok();
    assert_eq!(
        forwarded_attributes(&up),
        json!({"photos": [{"value": "v1"}, {"value": "v2"}]})
    );
}

#[test]
fn strip_mode_forwards_allowed_attributes_unchanged() {
    let (up, gw) = gateway_with_default_upstream();
    update(&gw, "writer", r#"{"givenName":"G","familyName":"F"}"#).assert_ok();
    assert_eq!(
        forwarded_attributes(&up),
        json!({"givenName": "G", "familyName": "F"})
    );
    let rec = up.only();
    assert_eq!(rec.param("type_name").as_deref(), Some("user"));
    assert_eq!(rec.param("id").as_deref(), Some("7"));
}

#[test]
fn reject_mode_refuses_naming_the_attribute_and_upstream_untouched() {
    let (up, gw) = gateway_with_default_upstream();
    let r = update(&gw, "rejecter", r#"{"givenName":"G","email":"e@x"}"#);
    let v = r.assert_error(403, 403, "client_permission_error");
    assert_eq!(v["argument_name"], "attributes", "{v}");
    assert!(
        v["error_description"].as_str().unwrap().contains("email"),
        "{v}"
    );
    let r = update(
        &gw,
        "rejecter",
        r#"{"primaryAddress":{"city":"C","zip":"Z"}}"#,
    );
    let v = r.assert_error(403, 403, "client_permission_error");
    assert!(
        v["error_description"].as_str().unwrap().contains("zip"),
        "{v}"
    );
    up.assert_untouched();
}

#[test]
fn reject_mode_forwards_a_clean_write() {
    let (up, gw) = gateway_with_default_upstream();
    update(
        &gw,
        "rejecter",
        r#"{"givenName":"G","primaryAddress":{"city":"C"}}"#,
    )
    .assert_ok();
    assert_eq!(
        forwarded_attributes(&up),
        json!({"givenName": "G", "primaryAddress": {"city": "C"}})
    );
}

#[test]
fn reserved_attribute_write_is_refused_with_234() {
    let (up, gw) = gateway_with_default_upstream();
    for (client, attrs) in [
        ("writer", r#"{"id":5,"givenName":"G"}"#),
        ("writer", r#"{"uuid":"u","givenName":"G"}"#),
        ("rejecter", r#"{"created":"2020-01-01","givenName":"G"}"#),
        ("owner", r#"{"lastUpdated":"2020-01-01"}"#),
    ] {
        let r = update(&gw, client, attrs);
        let v = r.assert_error(400, 234, "reserved_attribute");
        assert_eq!(v["argument_name"], "attributes", "{v}");
    }
    up.assert_untouched();
}

#[test]
fn reserved_attribute_by_attribute_name_is_refused() {
    let (up, gw) = gateway_with_default_upstream();
    let r = gw.post_as(
        "owner",
        "/entity.update",
        &[
            ("type_name", "user"),
            ("id", "7"),
            ("attribute_name", "uuid"),
            ("value", "\"u\""),
        ],
    );
    r.assert_error(400, 234, "reserved_attribute");
    up.assert_untouched();
}

const READ_ONLY_CLIENT: &str = r#"
clients:
  ro:
    secret: ro-secret
    features: [direct_access]
    access_schemas:
      user:
        write: []
"#;

#[test]
fn empty_write_schema_makes_the_client_read_only() {
    let up = TestUpstream::capture_like();
    let gw = GatewayBuilder::new(&up)
        .policy(&policy_with_clients(READ_ONLY_CLIENT))
        .start();
    let r = update(&gw, "ro", r#"{"givenName":"G"}"#);
    r.assert_error(403, 403, "client_permission_error");
    let r = gw.post_as(
        "ro",
        "/entity.create",
        &[("type_name", "user"), ("attributes", "{}")],
    );
    r.assert_error(403, 403, "client_permission_error");
    let r = gw.post_as(
        "ro",
        "/entity.delete",
        &[("type_name", "user"), ("id", "7")],
    );
    r.assert_error(403, 403, "client_permission_error");
    up.assert_untouched();
    // Reading is still allowed.
    gw.get_as("ro", "/entity?type_name=user&id=7").assert_ok();
}

#[test]
fn escaped_key_is_treated_as_the_attribute_it_spells() {
    let (up, gw) = gateway_with_default_upstream();
    // Reject mode: "em\u0061il" is email.
    let r = update(&gw, "rejecter", r#"{"em\u0061il":"e@x"}"#);
    let v = r.assert_error(403, 403, "client_permission_error");
    assert!(
        v["error_description"].as_str().unwrap().contains("email"),
        "{v}"
    );
    up.assert_untouched();
    // Strip mode: removed, and no raw escaped spelling survives.
    update(&gw, "writer", r#"{"givenName":"G","em\u0061il":"e@x"}"#).assert_ok();
    let rec = up.only();
    assert_eq!(
        rec.json_param("attributes").unwrap(),
        json!({"givenName": "G"})
    );
    assert!(!rec.body_str().contains("e%40x"), "{}", rec.body_str());
}

#[test]
fn escaped_reserved_key_is_refused() {
    let (up, gw) = gateway_with_default_upstream();
    let r = update(&gw, "owner", r#"{"\u0069d":5}"#);
    r.assert_error(400, 234, "reserved_attribute");
    up.assert_untouched();
}

#[test]
fn duplicate_keys_in_a_record_are_refused() {
    let (up, gw) = gateway_with_default_upstream();
    for attrs in [
        r#"{"givenName":"a","givenName":"b"}"#,
        r#"{"givenName":"a","given\u004eame":"b"}"#,
        r#"{"primaryAddress":{"city":"a","city":"b"}}"#,
    ] {
        for client in ["writer", "owner"] {
            let r = update(&gw, client, attrs);
            assert_eq!(r.status, 400, "{client} {attrs}: {}", r.text());
            let v = r.json();
            assert_eq!(v["stat"], "error");
            assert_eq!(v["argument_name"], "attributes", "{v}");
        }
    }
    up.assert_untouched();
}

#[test]
fn repeated_form_field_is_refused() {
    let (up, gw) = gateway_with_default_upstream();
    let body = "type_name=user&id=7&attributes=%7B%7D&attributes=%7B%22email%22%3A1%7D";
    let r = gw.send(
        http_client()
            .post(gw.url("/entity.update"))
            .header("authorization", basic("writer", "writer-secret"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body),
    );
    r.assert_error(400, 201, "duplicate_argument");
    // Query and body naming the same field.
    let r = gw.send(
        http_client()
            .post(gw.url("/entity.update?attributes=%7B%7D"))
            .header("authorization", basic("writer", "writer-secret"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("type_name=user&id=7&attributes=%7B%22email%22%3A1%7D"),
    );
    r.assert_error(400, 201, "duplicate_argument");
    up.assert_untouched();
}

fn update_value(gw: &Gateway, client: &str, attribute_name: &str, value: &str) -> Resp {
    gw.post_as(
        client,
        "/entity.update",
        &[
            ("type_name", "user"),
            ("id", "7"),
            ("attribute_name", attribute_name),
            ("value", value),
        ],
    )
}

#[test]
fn value_update_is_checked_relative_to_attribute_name() {
    let (up, gw) = gateway_with_default_upstream();
    // Strip: zip is removed relative to primaryAddress.
    update_value(&gw, "writer", "primaryAddress", r#"{"city":"C","zip":"Z"}"#).assert_ok();
    let rec = up.only();
    assert_eq!(
        rec.param("attribute_name").as_deref(),
        Some("primaryAddress")
    );
    assert_eq!(rec.json_param("value").unwrap(), json!({"city": "C"}));
}

#[test]
fn value_update_of_a_writable_leaf_is_forwarded() {
    let (up, gw) = gateway_with_default_upstream();
    update_value(&gw, "writer", "givenName", r#""New""#).assert_ok();
    update_value(&gw, "rejecter", "primaryAddress.city", r#""Paris""#).assert_ok();
    let reqs = up.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].param("value").as_deref(), Some(r#""New""#));
    assert_eq!(reqs[1].param("value").as_deref(), Some(r#""Paris""#));
}

#[test]
fn value_update_outside_the_write_schema_is_refused() {
    let (up, gw) = gateway_with_default_upstream();
    for client in ["writer", "rejecter"] {
        let r = update_value(&gw, client, "email", r#""e@x""#);
        let v = r.assert_error(403, 403, "client_permission_error");
        assert_eq!(v["argument_name"], "attribute_name", "{v}");
        let r = update_value(&gw, client, "primaryAddress.zip", r#""Z""#);
        r.assert_error(403, 403, "client_permission_error");
    }
    // Reject mode relative to the sub-attribute.
    let r = update_value(
        &gw,
        "rejecter",
        "primaryAddress",
        r#"{"city":"C","zip":"Z"}"#,
    );
    let v = r.assert_error(403, 403, "client_permission_error");
    assert_eq!(v["argument_name"], "value", "{v}");
    up.assert_untouched();
}

#[test]
fn bulk_create_filters_all_attributes_element_wise() {
    let (up, gw) = gateway_with_default_upstream();
    let r = gw.post_as(
        "writer",
        "/entity.bulkCreate",
        &[
            ("type_name", "user"),
            (
                "all_attributes",
                r#"[{"givenName":"A","email":"a@x"},{"familyName":"B","mobileNumber":"1","primaryAddress":{"city":"C","zip":"Z"}}]"#,
            ),
        ],
    );
    r.assert_ok();
    let rec = up.only();
    assert_eq!(rec.path(), "/entity.bulkCreate");
    assert_eq!(
        rec.json_param("all_attributes").unwrap(),
        json!([{"givenName": "A"}, {"familyName": "B", "primaryAddress": {"city": "C"}}])
    );
}

#[test]
fn bulk_create_with_a_reserved_attribute_in_any_element_is_refused() {
    let (up, gw) = gateway_with_default_upstream();
    let r = gw.post_as(
        "writer",
        "/entity.bulkCreate",
        &[
            ("type_name", "user"),
            ("all_attributes", r#"[{"givenName":"A"},{"uuid":"u"}]"#),
        ],
    );
    r.assert_error(400, 234, "reserved_attribute");
    let r = gw.post_as(
        "rejecter",
        "/entity.bulkCreate",
        &[
            ("type_name", "user"),
            ("all_attributes", r#"[{"givenName":"A"},{"email":"e"}]"#),
        ],
    );
    r.assert_error(403, 403, "client_permission_error");
    up.assert_untouched();
}

#[test]
fn create_is_write_filtered() {
    let (up, gw) = gateway_with_default_upstream();
    gw.post_as(
        "writer",
        "/entity.create",
        &[
            ("type_name", "user"),
            (
                "attributes",
                r#"{"givenName":"A","internal":{"notes":"n"}}"#,
            ),
        ],
    )
    .assert_ok();
    assert_eq!(
        up.only().json_param("attributes").unwrap(),
        json!({"givenName": "A"})
    );
}

#[test]
fn deleting_a_whole_record_needs_a_full_write_schema() {
    let (up, gw) = gateway_with_default_upstream();
    let r = gw.post_as(
        "writer",
        "/entity.delete",
        &[("type_name", "user"), ("id", "7")],
    );
    r.assert_error(403, 403, "client_permission_error");
    up.assert_untouched();
    gw.post_as(
        "direct",
        "/entity.delete",
        &[("type_name", "user"), ("id", "7")],
    )
    .assert_ok();
    assert_eq!(up.only().path(), "/entity.delete");
}

#[test]
fn malformed_attributes_json_is_refused() {
    let (up, gw) = gateway_with_default_upstream();
    for attrs in [r#"{"givenName":"#, "[1,2]", r#""string""#] {
        let r = update(&gw, "writer", attrs);
        assert_eq!(r.status, 400, "{attrs}: {}", r.text());
        assert_eq!(r.json()["argument_name"], "attributes");
    }
    up.assert_untouched();
}

#[test]
fn json_body_route_is_write_filtered() {
    let up = TestUpstream::start(|_| Reply::json(json!({"stat": "ok"})));
    let gw = GatewayBuilder::new(&up)
        .setting(
            "routes",
            json!([{"path": "/custom.write", "access": "write", "request_records": "json_body"}]),
        )
        .start();
    let r = gw.send(
        http_client()
            .post(gw.url("/custom.write?type_name=user"))
            .header("authorization", basic("writer", "writer-secret"))
            .header("content-type", "application/json")
            .body(r#"{"givenName":"G","email":"e@x"}"#),
    );
    r.assert_ok();
    let rec = up.only();
    assert_eq!(rec.header("content-type"), Some("application/json"));
    let body: Value = serde_json::from_slice(&rec.body).unwrap();
    assert_eq!(body, json!({"givenName": "G"}));
}

#[test]
fn value_update_of_a_plural_element_is_filtered() {
    let (up, gw) = gateway_with_default_upstream();
    update_value(&gw, "writer", "photos#101", r#"{"type":"t","value":"v"}"#).assert_ok();
    let rec = up.only();
    assert_eq!(rec.param("attribute_name").as_deref(), Some("photos#101"));
    assert_eq!(rec.json_param("value").unwrap(), json!({"value": "v"}));
}

#[test]
fn chunked_request_body_is_filtered_and_forwarded_with_a_length() {
    let (up, gw) = gateway_with_default_upstream();
    let body = encode_form(&[
        ("type_name", "user"),
        ("id", "7"),
        ("attributes", r#"{"givenName":"G","email":"e@x"}"#),
    ]);
    let mut req = format!(
        "POST /entity.update HTTP/1.1\r\nHost: gw\r\nAuthorization: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        basic("writer", "writer-secret")
    )
    .into_bytes();
    for c in body.as_bytes().chunks(10) {
        req.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        req.extend_from_slice(c);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let r = gw.raw(&req, false);
    assert_eq!(r.status(), 200, "{r:?}");
    let rec = up.only();
    assert_eq!(
        rec.json_param("attributes").unwrap(),
        json!({"givenName": "G"})
    );
    assert_eq!(
        rec.header("content-length"),
        Some(rec.body.len().to_string().as_str())
    );
    assert!(!rec.has_header("transfer-encoding"), "{rec:#?}");
}
