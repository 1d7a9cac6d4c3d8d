use super::*;
use crate::http_adapter::{is_form, json_response};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};

fn params(pairs: &[(&str, &str)]) -> Params {
    pairs.iter().map(|(k, v)| (*k, *v)).collect()
}

fn call(store: &mut Store, endpoint: &str, pairs: &[(&str, &str)]) -> Value {
    let mut all = vec![("type_name", "user")];
    all.extend_from_slice(pairs);
    store.handle(endpoint, &params(&all))
}

fn assert_ok(v: &Value) {
    assert_eq!(v["stat"], "ok", "{v}");
}

fn assert_err(v: &Value, code: u64) {
    assert_eq!(v["stat"], "error", "{v}");
    assert_eq!(v["code"], code, "{v}");
}

fn same_shape(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            x.keys().eq(y.keys()) && x.iter().all(|(k, v)| same_shape(v, &y[k.as_str()]))
        }
        (Value::Array(_), Value::Array(_)) => true,
        (Value::Object(_), _) | (_, Value::Object(_)) => false,
        (Value::Array(_), _) | (_, Value::Array(_)) => false,
        _ => true,
    }
}

#[test]
fn generates_deterministic_records_of_about_2kb() {
    let a = Store::generate(50);
    let b = Store::generate(80);
    assert_eq!(a.len(), 50);
    for id in 1..=50 {
        assert_eq!(a.records[&id], b.records[&id], "record {id} depends on N");
    }
    let template = Value::Object(default_object(USER));
    for (id, rec) in &a.records {
        assert_eq!(rec["id"], *id);
        let uuid = rec["uuid"].as_str().unwrap_or_default();
        let groups: Vec<usize> = uuid.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{uuid}");
        assert!(uuid.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
        let len = serde_json::to_string(rec).unwrap_or_default().len();
        assert!((1800..2400).contains(&len), "record {id} is {len} bytes");
        assert!(
            same_shape(rec, &template),
            "record {id} shape differs: {rec}"
        );
        let created = rec["created"].as_str().unwrap_or_default();
        assert_eq!(
            created.len(),
            "2024-03-05 10:11:12.123456 +0000".len(),
            "{created}"
        );
        assert!(created.ends_with(" +0000"));
        let profiles = rec["profiles"].as_array().map_or(0, Vec::len);
        let photos = rec["photos"].as_array().map_or(0, Vec::len);
        let statuses = rec["statuses"].as_array().map_or(0, Vec::len);
        assert!((1..=3).contains(&profiles) && (1..=2).contains(&photos) && statuses <= 2);
        assert!(rec["internal"]["riskScore"].is_u64());
        assert!(rec["consents"]["marketing"]["granted"].is_boolean());
    }
    assert_eq!(a.by_uuid.len(), 50);
}

#[test]
fn looks_up_by_id_uuid_and_key() {
    let mut s = Store::generate(20);
    let rec = s.records[&7].clone();
    let uuid = rec["uuid"].as_str().unwrap_or_default().to_string();
    let email = format!("\"{}\"", rec["email"].as_str().unwrap_or_default());

    let by_id = call(&mut s, "/entity", &[("id", "7")]);
    assert_eq!(by_id, json!({ "result": rec, "stat": "ok" }));
    let by_uuid = call(&mut s, "/entity", &[("uuid", &uuid)]);
    assert_eq!(by_uuid["result"]["id"], 7);
    let by_key = call(
        &mut s,
        "entity",
        &[("key_attribute", "email"), ("key_value", &email)],
    );
    assert_eq!(by_key["result"]["id"], 7);
    let identifier = rec["profiles"][0]["identifier"].to_string();
    let by_plural_key = call(
        &mut s,
        "/entity",
        &[
            ("key_attribute", "profiles.identifier"),
            ("key_value", &identifier),
        ],
    );
    assert_eq!(by_plural_key["result"]["id"], 7);

    assert_err(&call(&mut s, "/entity", &[("id", "999")]), 310);
    assert_err(&call(&mut s, "/entity", &[("uuid", "nope")]), 310);
    assert_err(
        &call(&mut s, "/entity", &[("id", "1"), ("uuid", &uuid)]),
        201,
    );
    assert_err(&call(&mut s, "/entity", &[]), 100);
    assert_err(&call(&mut s, "/entity", &[("key_attribute", "email")]), 100);
    let unquoted = rec["email"].as_str().unwrap_or_default().to_string();
    let bad = call(
        &mut s,
        "/entity",
        &[("key_attribute", "email"), ("key_value", &unquoted)],
    );
    assert_err(&bad, 200);
    assert_eq!(bad["argument_name"], "key_value");
    assert_err(&s.handle("/entity", &params(&[("id", "1")])), 100);
    let wrong_type = s.handle("/entity", &params(&[("type_name", "admin"), ("id", "1")]));
    assert_err(&wrong_type, 222);
}

#[test]
fn reads_attribute_name_and_projection() {
    let mut s = Store::generate(5);
    let rec = s.records[&2].clone();
    let city = call(
        &mut s,
        "/entity",
        &[("id", "2"), ("attribute_name", "/primaryAddress/city")],
    );
    assert_eq!(
        city,
        json!({ "result": rec["primaryAddress"]["city"], "stat": "ok" })
    );
    let photo_id = rec["photos"][0]["id"].as_i64().unwrap_or_default();
    let name = format!("photos#{photo_id}");
    let photo = call(&mut s, "/entity", &[("id", "2"), ("attribute_name", &name)]);
    assert_eq!(photo["result"], rec["photos"][0]);
    let name = format!("photos#{photo_id}.value");
    let value = call(&mut s, "/entity", &[("id", "2"), ("attribute_name", &name)]);
    assert_eq!(value["result"], rec["photos"][0]["value"]);
    assert_err(
        &call(
            &mut s,
            "/entity",
            &[("id", "2"), ("attribute_name", "photos#999999")],
        ),
        310,
    );
    assert_err(
        &call(
            &mut s,
            "/entity",
            &[("id", "2"), ("attribute_name", "nickname")],
        ),
        223,
    );

    let projected = call(
        &mut s,
        "/entity",
        &[
            ("id", "2"),
            (
                "attributes",
                r#"["givenName","primaryAddress.city","photos.value"]"#,
            ),
        ],
    );
    let result = &projected["result"];
    let keys: Vec<&str> = result
        .as_object()
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default();
    assert_eq!(
        keys,
        [
            "id",
            "uuid",
            "created",
            "lastUpdated",
            "givenName",
            "primaryAddress",
            "photos"
        ]
    );
    assert_eq!(
        result["primaryAddress"],
        json!({ "city": rec["primaryAddress"]["city"] })
    );
    assert_eq!(
        result["photos"][0],
        json!({ "id": photo_id, "value": rec["photos"][0]["value"] })
    );
    assert_err(
        &call(
            &mut s,
            "/entity",
            &[("id", "2"), ("attributes", "[givenName")],
        ),
        200,
    );
    assert_err(
        &call(
            &mut s,
            "/entity",
            &[("id", "2"), ("attributes", r#"["internal.secret"]"#)],
        ),
        223,
    );
}

#[test]
fn finds_with_filter_sort_and_paging() {
    let mut s = Store::generate(200);
    let all = call(&mut s, "/entity.find", &[("max_results", "1000")]);
    assert_eq!(all["result_count"], 200);
    assert_eq!(all["results"][0]["id"], 1);

    let f = call(
        &mut s,
        "/entity.find",
        &[
            (
                "filter",
                "internal.riskScore >= 50 and primaryAddress.stateAbbreviation = 'OR'",
            ),
            ("show_total_count", "true"),
        ],
    );
    assert_ok(&f);
    let expected: Vec<i64> = s
        .records
        .values()
        .filter(|r| {
            r["internal"]["riskScore"].as_u64().unwrap_or(0) >= 50
                && r["primaryAddress"]["stateAbbreviation"] == "OR"
        })
        .filter_map(|r| r["id"].as_i64())
        .collect();
    let got: Vec<i64> = f["results"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["id"].as_i64()).collect())
        .unwrap_or_default();
    assert!(!expected.is_empty());
    assert_eq!(got, expected);
    assert_eq!(f["total_count"], expected.len());
    assert_eq!(f["result_count"], expected.len());

    let nulls = call(
        &mut s,
        "/entity.count",
        &[("filter", "emailVerified is null")],
    );
    let not_nulls = call(
        &mut s,
        "/entity.count",
        &[("filter", "emailVerified is not null")],
    );
    let n = nulls["total_count"].as_u64().unwrap_or(0);
    let m = not_nulls["total_count"].as_u64().unwrap_or(0);
    assert!(n > 0 && m > 0);
    assert_eq!(n + m, 200);
    let plural = call(
        &mut s,
        "/entity.count",
        &[("filter", "profiles.domain = 'google.com' or id < 3")],
    );
    let expected_plural = s
        .records
        .values()
        .filter(|r| {
            r["id"].as_i64().unwrap_or(0) < 3
                || r["profiles"]
                    .as_array()
                    .is_some_and(|p| p.iter().any(|e| e["domain"] == "google.com"))
        })
        .count();
    assert_eq!(plural["total_count"], expected_plural);
    let bools = call(
        &mut s,
        "/entity.count",
        &[("filter", "consents.marketing.granted = true")],
    );
    assert!(bools["total_count"].as_u64().unwrap_or(0) > 0);

    let sorted = call(
        &mut s,
        "/entity.find",
        &[
            ("sort_on", r#"["-lastUpdated"]"#),
            ("max_results", "10"),
            ("first_result", "11"),
            ("attributes", r#"["email"]"#),
            ("show_total_count", "true"),
        ],
    );
    assert_eq!(sorted["result_count"], 10);
    assert_eq!(sorted["total_count"], 200);
    let mut stamps: Vec<&str> = s
        .records
        .values()
        .filter_map(|r| r["lastUpdated"].as_str())
        .collect();
    stamps.sort_unstable_by(|a, b| b.cmp(a));
    let page: Vec<&str> = sorted["results"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["lastUpdated"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(page, stamps[10..20]);
    assert!(sorted["results"][0].get("givenName").is_none());
    assert!(sorted["results"][0]["email"].is_string());

    let past_end = call(&mut s, "/entity.find", &[("first_result", "500")]);
    assert_eq!(past_end["result_count"], 0);
    let capped = call(&mut s, "/entity.find", &[("max_results", "5000")]);
    assert_eq!(capped["result_count"], 200);

    for bad in [
        "nickname = 'x'",
        "email contains 'x'",
        "email = ",
        "(id = 1)",
        "email = 'x' and",
        "not email is null",
        "email = 'unterminated",
    ] {
        let r = call(&mut s, "/entity.find", &[("filter", bad)]);
        assert_err(&r, 200);
        assert_eq!(r["argument_name"], "filter", "{bad}");
        let d = r["error_description"].as_str().unwrap_or_default();
        assert!(
            d.starts_with("filter was not valid for the following reason: "),
            "{d}"
        );
    }
    assert_err(&call(&mut s, "/entity.find", &[("sort_on", "-id")]), 200);
    assert_err(&call(&mut s, "/entity.find", &[("first_result", "0")]), 200);
}

#[test]
fn tokenizer_handles_operators_and_literals() {
    let f = parse_filter("a.b <> 'it''s' AND c<=-1.5 and d != 2 or e is NOT null");
    assert!(f.is_err(), "a.b is unknown");
    let f = parse_filter(
        "givenName <> 'it''s' AND internal.riskScore<=-1.5 and id != 2 or email is NOT null",
    );
    assert_eq!(
        f,
        Ok(Filter {
            any_of: vec![
                vec![
                    Cond::Cmp(vec!["givenName".into()], CmpOp::Ne, Lit::Str("it's".into())),
                    Cond::Cmp(
                        vec!["internal".into(), "riskScore".into()],
                        CmpOp::Le,
                        Lit::Num(-1.5)
                    ),
                    Cond::Cmp(vec!["id".into()], CmpOp::Ne, Lit::Num(2.0)),
                ],
                vec![Cond::NotNull(vec!["email".into()])],
            ]
        })
    );
    assert!(parse_filter("/primaryAddress/city > 'M'").is_ok());
    assert!(parse_filter("primaryAddress = 'x'").is_err());
}

#[test]
fn creates_records() {
    let mut s = Store::generate(3);
    let r = call(
        &mut s,
        "/entity.create",
        &[
            (
                "attributes",
                r#"{"givenName":"Matt","email":"matt@example.com","photos":[{"type":"original","value":"x"}],"primaryAddress":{"city":"Lyon"}}"#,
            ),
            ("include_record", "true"),
        ],
    );
    assert_ok(&r);
    assert_eq!(r["id"], 4);
    let uuid = r["uuid"].as_str().unwrap_or_default().to_string();
    assert_eq!(r["result"]["uuid"], uuid.as_str());
    assert_eq!(r["result"]["primaryAddress"]["city"], "Lyon");
    assert!(r["result"]["primaryAddress"]["zip"].is_null());
    assert!(r["result"]["photos"][0]["id"].is_i64());
    assert_eq!(r["result"]["statuses"], json!([]));
    assert!(same_shape(
        &r["result"],
        &Value::Object(default_object(USER))
    ));
    let got = call(&mut s, "/entity", &[("uuid", &uuid)]);
    assert_eq!(got["result"]["givenName"], "Matt");
    let by_key = call(
        &mut s,
        "/entity",
        &[
            ("key_attribute", "email"),
            ("key_value", "\"matt@example.com\""),
        ],
    );
    assert_eq!(by_key["result"]["id"], 4);
    let plain = call(
        &mut s,
        "/entity.create",
        &[("attributes", r#"{"givenName":"Ana"}"#)],
    );
    assert_eq!(plain["id"], 5);
    assert!(plain.get("result").is_none());

    assert_err(&call(&mut s, "/entity.create", &[]), 100);
    assert_err(
        &call(&mut s, "/entity.create", &[("attributes", "{nope")]),
        200,
    );
    assert_err(
        &call(&mut s, "/entity.create", &[("attributes", r#"["a"]"#)]),
        200,
    );
    assert_err(
        &call(&mut s, "/entity.create", &[("attributes", r#"{"id":9}"#)]),
        320,
    );
    assert_err(
        &call(
            &mut s,
            "/entity.create",
            &[("attributes", r#"{"uuid":"x"}"#)],
        ),
        234,
    );
    assert_err(
        &call(
            &mut s,
            "/entity.create",
            &[("attributes", r#"{"photos":[{"id":1}]}"#)],
        ),
        320,
    );
    assert_err(
        &call(
            &mut s,
            "/entity.create",
            &[("attributes", r#"{"nickname":"x"}"#)],
        ),
        223,
    );
    assert_err(
        &call(
            &mut s,
            "/entity.create",
            &[("attributes", r#"{"primaryAddress":"x"}"#)],
        ),
        341,
    );
    assert_eq!(s.len(), 5, "failed creates must not add records");
    assert_eq!(call(&mut s, "/entity.count", &[])["total_count"], 5);
}

#[test]
fn update_merges_objects_and_plurals() {
    let mut s = Store::generate(3);
    let before = s.records[&1].clone();
    let photo_id = before["photos"][0]["id"].as_i64().unwrap_or_default();
    let photos_before = before["photos"].as_array().map_or(0, Vec::len);
    let attrs = format!(
        r#"{{"givenName":"Matt","primaryAddress":{{"city":"Lyon"}},"photos":[{{"id":{photo_id},"value":"new"}},{{"type":"small","value":"appended"}}]}}"#
    );
    let r = call(
        &mut s,
        "/entity.update",
        &[
            ("id", "1"),
            ("attributes", &attrs),
            ("include_record", "true"),
        ],
    );
    assert_ok(&r);
    let after = &s.records[&1];
    assert_eq!(r["result"], *after);
    assert_eq!(after["givenName"], "Matt");
    assert_eq!(after["familyName"], before["familyName"]);
    assert_eq!(after["primaryAddress"]["city"], "Lyon");
    assert_eq!(
        after["primaryAddress"]["zip"],
        before["primaryAddress"]["zip"]
    );
    let photos = after["photos"].as_array().cloned().unwrap_or_default();
    assert_eq!(photos.len(), photos_before + 1);
    assert_eq!(
        photos[0],
        json!({ "id": photo_id, "type": null, "value": "new" })
    );
    let appended = photos.last().cloned().unwrap_or_default();
    assert_eq!(appended["value"], "appended");
    let new_id = appended["id"].as_i64().unwrap_or_default();
    assert!(new_id > photo_id && new_id >= s.next_element_id - 1);
    assert_ne!(after["lastUpdated"], before["lastUpdated"]);

    let r = call(
        &mut s,
        "/entity.update",
        &[
            ("id", "1"),
            ("attribute_name", "consents/marketing/granted"),
            ("value", "false"),
        ],
    );
    assert_ok(&r);
    assert_eq!(s.records[&1]["consents"]["marketing"]["granted"], false);
    let name = format!("photos#{new_id}");
    let r = call(
        &mut s,
        "/entity.update",
        &[
            ("id", "1"),
            ("attribute_name", &name),
            ("value", r#"{"type":"large"}"#),
        ],
    );
    assert_ok(&r);
    assert_eq!(
        s.records[&1]["photos"]
            .as_array()
            .and_then(|p| p.last())
            .cloned()
            .unwrap_or_default(),
        json!({ "id": new_id, "type": "large", "value": null })
    );

    let snapshot = s.records[&1].clone();
    assert_err(
        &call(
            &mut s,
            "/entity.update",
            &[
                ("id", "1"),
                (
                    "attributes",
                    r#"{"givenName":"X","photos":[{"id":999999,"value":"x"}]}"#,
                ),
            ],
        ),
        310,
    );
    assert_err(
        &call(
            &mut s,
            "/entity.update",
            &[("id", "1"), ("attributes", r#"{"lastUpdated":"x"}"#)],
        ),
        234,
    );
    assert_err(
        &call(
            &mut s,
            "/entity.update",
            &[("id", "1"), ("attributes", r#"{"internal":{"secret":1}}"#)],
        ),
        223,
    );
    assert_err(
        &call(
            &mut s,
            "/entity.update",
            &[("id", "1"), ("attribute_name", "email")],
        ),
        100,
    );
    assert_err(
        &call(
            &mut s,
            "/entity.update",
            &[("id", "1"), ("attribute_name", "email"), ("value", "bare")],
        ),
        200,
    );
    assert_err(
        &call(
            &mut s,
            "/entity.update",
            &[("id", "1"), ("attribute_name", "uuid"), ("value", "\"x\"")],
        ),
        234,
    );
    assert_err(&call(&mut s, "/entity.update", &[("id", "1")]), 100);
    assert_eq!(
        s.records[&1], snapshot,
        "failed updates must leave the record untouched"
    );
}

#[test]
fn deletes_plural_elements_attributes_and_records() {
    let mut s = Store::generate(3);
    let rec = s.records[&2].clone();
    let profiles: Vec<Value> = rec["profiles"].as_array().cloned().unwrap_or_default();
    let victim = profiles[0]["id"].as_i64().unwrap_or_default();
    let name = format!("/profiles#{victim}");
    assert_ok(&call(
        &mut s,
        "/entity.delete",
        &[("id", "2"), ("attribute_name", &name)],
    ));
    let left: Vec<Value> = s.records[&2]["profiles"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(left, profiles[1..]);
    assert_err(
        &call(
            &mut s,
            "/entity.delete",
            &[("id", "2"), ("attribute_name", &name)],
        ),
        310,
    );

    assert_ok(&call(
        &mut s,
        "/entity.delete",
        &[("id", "2"), ("attribute_name", "primaryAddress")],
    ));
    assert_eq!(
        s.records[&2]["primaryAddress"],
        Value::Object(default_object(PRIMARY_ADDRESS))
    );
    assert_ok(&call(
        &mut s,
        "/entity.delete",
        &[("id", "2"), ("attribute_name", "aboutMe")],
    ));
    assert!(s.records[&2]["aboutMe"].is_null());
    assert_err(
        &call(
            &mut s,
            "/entity.delete",
            &[("id", "2"), ("attribute_name", "id")],
        ),
        234,
    );

    let uuid = rec["uuid"].as_str().unwrap_or_default().to_string();
    assert_ok(&call(&mut s, "/entity.delete", &[("uuid", &uuid)]));
    assert_err(&call(&mut s, "/entity", &[("id", "2")]), 310);
    assert_err(&call(&mut s, "/entity", &[("uuid", &uuid)]), 310);
    assert_eq!(call(&mut s, "/entity.count", &[])["total_count"], 2);
}

#[test]
fn unknown_endpoints_and_envelopes() {
    let mut s = Store::generate(1);
    let r = s.handle("/entity.replace", &params(&[("type_name", "user")]));
    assert_err(&r, 200);
    assert_eq!(r["error"], "invalid_argument");
    let keys: Vec<&str> = r
        .as_object()
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default();
    assert_eq!(keys, ["stat", "code", "error", "error_description"]);
    let missing = s.handle("/entity", &params(&[]));
    assert_eq!(
        missing,
        json!({"stat":"error","code":100,"error":"missing_argument","error_description":"missing required argument: type_name","argument_name":"type_name"})
    );
}

#[test]
fn params_merge_query_then_body_and_ignore_empty_values() {
    let mut p = Params::new();
    p.extend_urlencoded(b"type_name=user&id=1&filter=");
    p.extend_urlencoded(b"id=2&key_value=%22a%40b.c%22");
    assert_eq!(p.get("id"), Some("2"));
    assert_eq!(p.get("type_name"), Some("user"));
    assert_eq!(p.get("key_value"), Some("\"a@b.c\""));
    assert_eq!(p.get("filter"), None);
    assert!(is_form(None));
    assert!(is_form(Some(
        "application/x-www-form-urlencoded; charset=utf-8"
    )));
    assert!(!is_form(Some("application/json")));
}

#[test]
fn demo_upstream_handles_through_mutex() {
    let d = DemoUpstream::new(4);
    let r = d.handle("/entity.count", &params(&[("type_name", "user")]));
    assert_eq!(r, json!({ "total_count": 4, "stat": "ok" }));
    let resp = json_response(&r);
    assert_eq!(resp.status(), http::StatusCode::OK);
    assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
    assert_eq!(
        resp.headers()[CONTENT_LENGTH],
        resp.body().len().to_string().as_str()
    );
}
