//! Read filtering: responses of record routes are cut to the caller's read
//! schema, over real sockets against a Capture-like upstream.
// A test (or bench) that cannot set up fails loudly; the no-panic rule is for the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{json, Value};

const ENTITY: &str = "/entity?type_name=user&id=7";

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
    k.sort();
    k
}

fn sorted(list: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

const RESERVED_AND_GRANTED: [&str; 7] = [
    "id",
    "uuid",
    "created",
    "lastUpdated",
    "givenName",
    "primaryAddress",
    "photos",
];

#[test]
fn record_is_cut_to_the_read_schema() {
    let (_up, gw) = gateway_with_default_upstream();
    let r = gw.get_as("reader", ENTITY);
    let v = r.assert_ok();
    assert_eq!(keys(&v["result"]), sorted(&RESERVED_AND_GRANTED), "{v}");
    assert_eq!(v["result"]["givenName"], "Ada7");
    r.assert_no_hidden();
}

#[test]
fn nested_object_path_keeps_only_that_attribute() {
    let (_up, gw) = gateway_with_default_upstream();
    let v = gw.get_as("reader", ENTITY).assert_ok();
    assert_eq!(v["result"]["primaryAddress"], json!({"city": "London"}));
}

#[test]
fn plural_path_keeps_value_and_element_id_in_every_element() {
    let (_up, gw) = gateway_with_default_upstream();
    let v = gw.get_as("reader", ENTITY).assert_ok();
    assert_eq!(
        v["result"]["photos"],
        json!([
            {"id": 101, "value": "http://photos/1.jpg"},
            {"id": 102, "value": "http://photos/2.jpg"}
        ])
    );
}

#[test]
fn reserved_attributes_are_always_kept() {
    let up = TestUpstream::capture_like();
    let clients = r#"
clients:
  narrow:
    secret: narrow-secret
    features: [direct_read_access]
    access_schemas:
      user:
        read: [familyName]
"#;
    let gw = GatewayBuilder::new(&up)
        .policy(&policy_with_clients(clients))
        .start();
    let v = gw.get_as("narrow", ENTITY).assert_ok();
    assert_eq!(
        v["result"],
        json!({
            "id": 7,
            "uuid": "uuid-7",
            "created": "2020-01-01 00:00:00.000000 +0000",
            "lastUpdated": "2021-02-03 04:05:06.000000 +0000",
            "familyName": "Lovelace"
        })
    );
}

#[test]
fn object_path_grants_everything_beneath_it() {
    let (_up, gw) = gateway_with_default_upstream();
    // writer reads: email, givenName, familyName, primaryAddress (whole).
    let v = gw.get_as("writer", ENTITY).assert_ok();
    assert_eq!(
        v["result"]["primaryAddress"],
        sample_record(7)["primaryAddress"]
    );
    assert!(v["result"].get("photos").is_none(), "{v}");
    assert!(v["result"].get("internal").is_none(), "{v}");
    assert!(v["result"].get("mobileNumber").is_none(), "{v}");
}

#[test]
fn no_read_schema_means_the_full_record() {
    let (_up, gw) = gateway_with_default_upstream();
    let v = gw.get_as("fullreader", ENTITY).assert_ok();
    assert_eq!(v["result"], sample_record(7));
    let v = gw.get_as("owner", ENTITY).assert_ok();
    assert_eq!(v["result"], sample_record(7));
}

#[test]
fn find_filters_every_result_and_keeps_the_envelope() {
    let (_up, gw) = gateway_with_default_upstream();
    let r = gw.get_as("reader", "/entity.find?type_name=user");
    let v = r.assert_ok();
    assert_eq!(v["result_count"], 2);
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    for (i, rec) in results.iter().enumerate() {
        let id = i as u64 + 1;
        assert_eq!(keys(rec), sorted(&RESERVED_AND_GRANTED), "{rec}");
        assert_eq!(rec["id"], id);
        assert_eq!(rec["givenName"], format!("Ada{id}"));
        assert_eq!(rec["primaryAddress"], json!({"city": "London"}));
        assert_eq!(
            rec["photos"][1],
            json!({"id": 102, "value": "http://photos/2.jpg"})
        );
    }
    r.assert_no_hidden();
}

#[test]
fn envelope_fields_are_untouched() {
    let up = TestUpstream::start(|_| {
        Reply::json(json!({
            "stat": "ok",
            "result_count": 1,
            "total_count": 99,
            "next_cursor": "abc",
            "results": [{"id": 1, "email": "hidden-email-x", "givenName": "G"}]
        }))
    });
    let gw = GatewayBuilder::new(&up).start();
    let r = gw.get_as("reader", "/entity.find?type_name=user");
    let v = r.assert_ok();
    assert_eq!(
        v,
        json!({
            "stat": "ok",
            "result_count": 1,
            "total_count": 99,
            "next_cursor": "abc",
            "results": [{"id": 1, "givenName": "G"}]
        })
    );
}

#[test]
fn sub_attribute_object_returns_only_granted_sub_attributes() {
    let (up, gw) = gateway_with_default_upstream();
    let r = gw.get_as(
        "reader",
        "/entity?type_name=user&id=7&attribute_name=primaryAddress",
    );
    let v = r.assert_ok();
    assert_eq!(v["result"], json!({"city": "London"}));
    r.assert_no_hidden();
    assert_eq!(
        up.only().param("attribute_name").as_deref(),
        Some("primaryAddress")
    );
}

#[test]
fn sub_attribute_plural_filters_every_element() {
    let (_up, gw) = gateway_with_default_upstream();
    let r = gw.get_as(
        "reader",
        "/entity?type_name=user&id=7&attribute_name=photos",
    );
    let v = r.assert_ok();
    assert_eq!(
        v["result"],
        json!([
            {"id": 101, "value": "http://photos/1.jpg"},
            {"id": 102, "value": "http://photos/2.jpg"}
        ])
    );
    r.assert_no_hidden();
}

#[test]
fn sub_attribute_granted_leaf_is_returned() {
    let (_up, gw) = gateway_with_default_upstream();
    let v = gw
        .get_as(
            "reader",
            "/entity?type_name=user&id=7&attribute_name=primaryAddress.city",
        )
        .assert_ok();
    assert_eq!(v["result"], "London");
    let v = gw
        .get_as(
            "reader",
            "/entity?type_name=user&id=7&attribute_name=givenName",
        )
        .assert_ok();
    assert_eq!(v["result"], "Ada7");
}

#[test]
fn sub_attribute_full_grant_returns_everything_beneath() {
    let (_up, gw) = gateway_with_default_upstream();
    let v = gw
        .get_as(
            "writer",
            "/entity?type_name=user&id=7&attribute_name=primaryAddress",
        )
        .assert_ok();
    assert_eq!(v["result"], sample_record(7)["primaryAddress"]);
}

#[test]
fn unknown_attributes_in_the_upstream_record_are_dropped_for_a_partial_schema() {
    let up = TestUpstream::start(|_| {
        Reply::json(json!({"stat": "ok", "result": {
            "id": 1, "givenName": "G", "notInSchema": "hidden-note",
            "primaryAddress": {"city": "C", "secretExtra": "hidden-note"}
        }}))
    });
    let gw = GatewayBuilder::new(&up).start();
    let r = gw.get_as("reader", ENTITY);
    let v = r.assert_ok();
    assert_eq!(
        v["result"],
        json!({"id": 1, "givenName": "G", "primaryAddress": {"city": "C"}})
    );
}

#[test]
fn write_responses_are_read_filtered_too() {
    let up =
        TestUpstream::start(|_| Reply::json(json!({"stat": "ok", "result": sample_record(7)})));
    let gw = GatewayBuilder::new(&up).start();
    let r = gw.post_as(
        "writer",
        "/entity.update",
        &[
            ("type_name", "user"),
            ("id", "7"),
            ("attributes", r#"{"givenName":"X"}"#),
        ],
    );
    let v = r.assert_ok();
    assert!(v["result"].get("mobileNumber").is_none(), "{v}");
    assert!(v["result"].get("photos").is_none(), "{v}");
    assert_eq!(v["result"]["email"], "hidden-email-7@example.com");
    assert!(!r.text().contains("hidden-note"));
}

#[test]
fn upstream_error_envelope_passes_through() {
    let up = TestUpstream::start(|_| {
        Reply::json(
            json!({"stat": "error", "code": 310, "error": "record_not_found", "error_description": "no such record"}),
        )
    });
    let gw = GatewayBuilder::new(&up).start();
    let r = gw.get_as("reader", ENTITY);
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["code"], 310, "{v}");
    assert_eq!(v["error"], "record_not_found");
}

#[test]
fn sub_attribute_plural_element_selector_is_filtered() {
    // `attribute_name=photos#101` addresses one element; the upstream answers
    // with that element object.
    let up = TestUpstream::start(|r| {
        let a = r.param("attribute_name").unwrap_or_default();
        let result = match a.as_str() {
            "photos#101" => sample_record(7)["photos"][0].clone(),
            "photos#101.value" => json!("http://photos/1.jpg"),
            _ => sample_record(7),
        };
        Reply::json(json!({"stat": "ok", "result": result}))
    });
    let gw = GatewayBuilder::new(&up).start();
    let r = gw.get_as(
        "reader",
        "/entity?type_name=user&id=7&attribute_name=photos%23101",
    );
    let v = r.assert_ok();
    assert_eq!(
        v["result"],
        json!({"id": 101, "value": "http://photos/1.jpg"})
    );
    r.assert_no_hidden();
    let v = gw
        .get_as(
            "reader",
            "/entity?type_name=user&id=7&attribute_name=photos%23101.value",
        )
        .assert_ok();
    assert_eq!(v["result"], "http://photos/1.jpg");
    let r = gw.get_as(
        "reader",
        "/entity?type_name=user&id=7&attribute_name=photos%23101.type",
    );
    r.assert_error(403, 403, "client_permission_error");
}

#[test]
fn sub_attribute_slash_syntax_is_checked_like_dots() {
    let (up, gw) = gateway_with_default_upstream();
    let r = gw.get_as(
        "reader",
        "/entity?type_name=user&id=7&attribute_name=/primaryAddress/zip",
    );
    r.assert_error(403, 403, "client_permission_error");
    up.assert_untouched();
    let up = TestUpstream::start(|_| {
        Reply::json(json!({"stat": "ok", "result": sample_record(7)["primaryAddress"].clone()}))
    });
    let gw = GatewayBuilder::new(&up).start();
    let r = gw.get_as(
        "reader",
        "/entity?type_name=user&id=7&attribute_name=/primaryAddress",
    );
    let v = r.assert_ok();
    assert_eq!(v["result"], json!({"city": "London"}));
}
