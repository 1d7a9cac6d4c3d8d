//! Hostile input, written the way an attacker would: every case must be
//! answered with a precise error (or served correctly), never with a leak,
//! never with a crash, and never reach the upstream under a spelling the
//! policy was not written for. Cases already covered by the functional
//! suites (escaped keys and duplicates in writes, repeated form fields,
//! oversize bodies, forged X-Forwarded-For, ...) are not repeated here.
// A test (or bench) that cannot set up fails loudly; the no-panic rule is for the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use serde_json::{json, Value};

const ENTITY: &str = "/entity?type_name=user&id=7";

/// Sends raw bytes and reads whatever comes back until the gateway closes
/// the connection or `wait` passes without a byte.
fn exchange(gw: &Gateway, request: &[u8], wait: Duration) -> Vec<u8> {
    let mut s = gw.connect();
    s.set_read_timeout(Some(wait)).unwrap();
    let _ = s.write_all(request);
    read_until_quiet(&mut s)
}

fn read_until_quiet(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
        assert!(out.len() < 64 << 20, "runaway response");
    }
}

/// Status codes of every response in `bytes`, in order.
fn statuses(bytes: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(bytes);
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

fn basic_header(id: &str, secret: &str) -> String {
    basic(id, secret)
}

fn update_as(gw: &Gateway, client: &str, attributes: &str) -> Resp {
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

fn post_raw_form(gw: &Gateway, client: &str, path: &str, content_type: &str, body: &str) -> Resp {
    gw.send(
        http_client()
            .post(gw.url(path))
            .header("authorization", basic(client, &format!("{client}-secret")))
            .header("content-type", content_type)
            .body(body.to_string()),
    )
}

/// An upstream that answers `/entity` with `body` verbatim as JSON.
fn upstream_answering(body: impl Into<Vec<u8>>) -> TestUpstream {
    let body: Vec<u8> = body.into();
    TestUpstream::start(move |_| Reply::bytes("application/json", body.clone()))
}

fn assert_refused_bad_gateway(r: &Resp, case: &str) {
    assert_eq!(r.status, 502, "{case}: {}", r.text());
    let v = r.json();
    assert_eq!(v["stat"], "error", "{case}: {v}");
    assert_eq!(v["code"], 500, "{case}: {v}");
}

// ---------------------------------------------------------------------------
// JSON in requests
// ---------------------------------------------------------------------------

#[test]
fn malformed_json_in_a_write_is_refused_naming_the_argument() {
    let (up, gw) = gateway_with_default_upstream();
    let deep = "[".repeat(100_000);
    let cases: Vec<(&str, String)> = vec![
        ("truncated", r#"{"givenName":"A","familyName":"#.into()),
        ("trailing garbage", r#"{"givenName":"A"}x"#.into()),
        (
            "two documents",
            r#"{"givenName":"A"} {"email":"e@x"}"#.into(),
        ),
        ("lone surrogate", r#"{"givenName":"\ud800"}"#.into()),
        (
            "lone trailing surrogate",
            r#"{"givenName":"\udc00x"}"#.into(),
        ),
        ("bad escape", r#"{"givenName":"\x41"}"#.into()),
        (
            "raw control character",
            "{\"givenName\":\"a\u{1}b\"}".into(),
        ),
        ("single quotes", "{'givenName':'A'}".into()),
        ("comment", r#"{"givenName":"A" /* "email":"e" */}"#.into()),
        ("NaN", r#"{"givenName":NaN}"#.into()),
        ("number overflowing f64", r#"{"givenName":1e999999}"#.into()),
        ("top-level array", r#"[{"givenName":"A"}]"#.into()),
        ("top-level string", r#""givenName""#.into()),
        ("top-level null", "null".into()),
        ("top-level number", "42".into()),
        ("empty", "".into()),
        ("nesting 100,000 deep", deep.clone()),
        (
            "nesting 100,000 deep in an allowed key",
            format!(r#"{{"givenName":{deep}"#),
        ),
    ];
    for client in ["writer", "rejecter"] {
        for (case, attrs) in &cases {
            let r = update_as(&gw, client, attrs);
            let v = r.assert_error(400, 200, "invalid_argument");
            assert_eq!(v["argument_name"], "attributes", "{client} {case}: {v}");
        }
    }
    up.assert_untouched();
    // Still serving after all of that.
    gw.get_as("reader", ENTITY).assert_ok();
}

#[test]
fn huge_string_in_an_allowed_attribute_is_forwarded_intact() {
    let (up, gw) = gateway_with_default_upstream();
    let big = "x".repeat(200_000);
    let r = update_as(
        &gw,
        "writer",
        &json!({"givenName": big, "email": "e@x"}).to_string(),
    );
    r.assert_ok();
    let got = up.only().json_param("attributes").unwrap();
    assert_eq!(got, json!({"givenName": big}));
}

#[test]
fn numbers_that_would_reach_the_upstream_changed_are_refused() {
    let (up, gw) = gateway_with_default_upstream();
    // serde_json would round these to f64: the upstream would store a
    // different number than the one the client sent.
    for n in [
        "1234567890123456789012345678901234567890",
        "18446744073709551616",
        "0.1000000000000000055511151231257827",
    ] {
        let attrs = format!(r#"{{"familyName":{n},"email":"e@x"}}"#);
        let v = update_as(&gw, "writer", &attrs).assert_error(400, 200, "invalid_argument");
        assert_eq!(v["argument_name"], "attributes");
        assert!(v["error_description"].as_str().unwrap().contains(n), "{v}");
    }
    up.assert_untouched();
    // Ordinary numbers go through as written.
    update_as(
        &gw,
        "writer",
        r#"{"familyName":12345678901234567,"givenName":0.25}"#,
    )
    .assert_ok();
    let raw = up.only().param("attributes").unwrap();
    assert!(
        raw.contains("12345678901234567") && raw.contains("0.25"),
        "{raw}"
    );
}

#[test]
fn json_body_deeper_than_any_limit_is_refused_on_a_json_route() {
    let up = TestUpstream::start(|_| Reply::json(json!({"stat": "ok"})));
    let gw = GatewayBuilder::new(&up)
        .setting(
            "routes",
            json!([{"path": "/custom.write", "access": "write", "request_records": "json_body"}]),
        )
        .start();
    for body in [
        "[".repeat(100_000),
        format!("{}{}", "{\"a\":".repeat(50_000), "1"),
        r#"{"givenName":"A"}{"email":"e"}"#.to_string(),
        r#"{"givenName":"A","givenName":"B"}"#.to_string(),
        r#"{"\u0067ivenName":"A","givenName":"B"}"#.to_string(),
    ] {
        let r = gw.send(
            http_client()
                .post(gw.url("/custom.write?type_name=user"))
                .header("authorization", basic("writer", "writer-secret"))
                .header("content-type", "application/json")
                .body(body.clone()),
        );
        assert_eq!(
            r.status,
            400,
            "{}: {}",
            &body[..body.len().min(40)],
            r.text()
        );
        assert_eq!(r.json()["code"], 200, "{}", r.text());
    }
    up.assert_untouched();
}

// ---------------------------------------------------------------------------
// JSON in responses
// ---------------------------------------------------------------------------

#[test]
fn malformed_upstream_records_are_refused_and_leak_nothing() {
    let deep_hidden = format!(
        r#"{{"stat":"ok","result":{{"givenName":"A","internal":{}hidden-note{}}}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let cases: Vec<(&str, Vec<u8>)> =
        vec![
        (
            "duplicate result",
            br#"{"stat":"ok","result":{"givenName":"A"},"result":{"email":"hidden-email-1"}}"#
                .to_vec(),
        ),
        (
            "duplicate attribute",
            br#"{"stat":"ok","result":{"givenName":"A","givenName":"hidden-note"}}"#.to_vec(),
        ),
        (
            "lone surrogate in a hidden value",
            br#"{"stat":"ok","result":{"givenName":"A","email":"\ud800hidden-email"}}"#.to_vec(),
        ),
        (
            "truncated inside a hidden value",
            br#"{"stat":"ok","result":{"givenName":"A","email":"hidden-email"#.to_vec(),
        ),
        (
            "trailing garbage",
            br#"{"stat":"ok","result":{"givenName":"A"}}{"email":"hidden-email"}"#.to_vec(),
        ),
        ("top-level array", br#"[{"email":"hidden-email"}]"#.to_vec()),
        ("top-level string", br#""hidden-email""#.to_vec()),
        ("top-level null", b"null".to_vec()),
        ("nesting 100,000 deep in a hidden attribute", deep_hidden.into_bytes()),
        (
            "invalid UTF-8 in a hidden key",
            b"{\"stat\":\"ok\",\"result\":{\"givenName\":\"A\",\"em\xffail\":\"hidden-email\"}}"
                .to_vec(),
        ),
    ];
    for (case, body) in cases {
        let up = upstream_answering(body);
        let gw = GatewayBuilder::new(&up).start();
        let r = gw.get_as("reader", ENTITY);
        assert_refused_bad_gateway(&r, case);
        r.assert_no_hidden();
    }
}

#[test]
fn escaped_keys_in_upstream_records_are_filtered_as_the_names_they_spell() {
    // `\u0065mail` is `email`; `r\u0065sult` is the envelope's `result`.
    let up = upstream_answering(
        r#"{"stat":"ok","r\u0065sult":{"\u0065mail":"hidden-email-7","given\u004eame":"A","primary\u0041ddress":{"city":"L","\u007aip":"HIDDENZIP"}}}"#,
    );
    let gw = GatewayBuilder::new(&up).start();
    let r = gw.get_as("reader", ENTITY);
    let v = r.assert_ok();
    r.assert_no_hidden();
    assert_eq!(
        v["result"],
        json!({"givenName": "A", "primaryAddress": {"city": "L"}})
    );
}

#[test]
fn huge_hidden_string_in_a_response_never_reaches_the_client() {
    // 3 MB of a hidden value: past the streaming threshold, so this goes
    // through the streaming filter.
    let secret = "hidden-note".repeat(300_000);
    let body = json!({"stat": "ok", "result": {"givenName": "A", "internal": {"notes": secret}}});
    let up = upstream_answering(serde_json::to_vec(&body).unwrap());
    let gw = GatewayBuilder::new(&up).start();
    let r = gw.get_as("reader", ENTITY);
    let v = r.assert_ok();
    r.assert_no_hidden();
    assert_eq!(v["result"], json!({"givenName": "A"}));
}

#[test]
fn huge_numbers_in_a_response_are_kept_exact_or_refused() {
    let digits = "98765432109876543210987654321098765432109876543210";
    let up = upstream_answering(format!(
        r#"{{"stat":"ok","result":{{"givenName":{digits},"internal":{{"riskScore":1e999999}}}}}}"#
    ));
    let gw = GatewayBuilder::new(&up).start();
    let r = gw.get_as("reader", ENTITY);
    r.assert_no_hidden();
    if r.status == 200 {
        assert!(r.text().contains(digits), "{}", r.text());
        assert!(!r.text().contains("riskScore"), "{}", r.text());
    } else {
        assert_refused_bad_gateway(&r, "huge numbers");
    }
}

// ---------------------------------------------------------------------------
// Forms
// ---------------------------------------------------------------------------

#[test]
fn percent_encoded_field_names_are_decoded_before_filtering() {
    let (up, gw) = gateway_with_default_upstream();
    // `%61ttributes` is `attributes`; `%65mail` is `email`.
    let body = "type_name=user&id=7&%61ttributes=%7B%22givenName%22%3A%22G%22%2C%22%65mail%22%3A%22e%40x%22%7D";
    let r = post_raw_form(
        &gw,
        "writer",
        "/entity.update",
        "application/x-www-form-urlencoded",
        body,
    );
    r.assert_ok();
    assert_eq!(
        up.only().json_param("attributes").unwrap(),
        json!({"givenName": "G"})
    );
}

#[test]
fn a_field_in_both_query_and_body_is_refused() {
    let (up, gw) = gateway_with_default_upstream();
    let r = post_raw_form(
        &gw,
        "writer",
        "/entity.update?attributes=%7B%22email%22%3A%22e%22%7D",
        "application/x-www-form-urlencoded",
        "type_name=user&id=7&attributes=%7B%22givenName%22%3A%22G%22%7D",
    );
    let v = r.assert_error(400, 201, "duplicate_argument");
    assert_eq!(v["argument_name"], "attributes");
    // The same through a percent-encoded spelling of the name.
    let r = post_raw_form(
        &gw,
        "writer",
        "/entity.update?%61ttributes=%7B%22email%22%3A%22e%22%7D",
        "application/x-www-form-urlencoded",
        "type_name=user&id=7&attributes=%7B%22givenName%22%3A%22G%22%7D",
    );
    r.assert_error(400, 201, "duplicate_argument");
    up.assert_untouched();
}

#[test]
fn nul_and_control_characters_in_field_names_are_refused() {
    let (up, gw) = gateway_with_default_upstream();
    // A C upstream could read `attributes%00x` as `attributes`: the gateway
    // would then have forwarded an unfiltered record under a name it ignored.
    for name in ["attributes%00x", "attributes%00", "attri%0Abutes", "%00"] {
        let body = format!("type_name=user&id=7&{name}=%7B%22email%22%3A%22e%22%7D");
        let r = post_raw_form(
            &gw,
            "writer",
            "/entity.update",
            "application/x-www-form-urlencoded",
            &body,
        );
        let v = r.assert_error(400, 200, "invalid_argument");
        assert!(
            v["error_description"].as_str().unwrap().contains("control"),
            "{v}"
        );
    }
    // NUL inside a value is refused too (a value is cut there by C code).
    let r = gw.get_as("reader", "/entity?type_name=user%00admin&id=7");
    let v = r.assert_error(400, 200, "invalid_argument");
    assert_eq!(v["argument_name"], "type_name");
    up.assert_untouched();
}

#[test]
fn invalid_percent_encoding_is_refused() {
    let (up, gw) = gateway_with_default_upstream();
    for body in [
        "type_name=user&id=7&attributes=%FF",
        "type_name=user&id=7&attributes=%C3%28",
        "type_name=user&id=7&attr%FFibutes=x",
    ] {
        let r = post_raw_form(
            &gw,
            "writer",
            "/entity.update",
            "application/x-www-form-urlencoded",
            body,
        );
        r.assert_error(400, 200, "invalid_argument");
    }
    up.assert_untouched();
}

#[test]
fn attributes_that_are_not_json_are_refused() {
    let (up, gw) = gateway_with_default_upstream();
    for attrs in ["givenName=G", "{givenName:G}", "%7B%7D", "true"] {
        let r = update_as(&gw, "writer", attrs);
        let v = r.assert_error(400, 200, "invalid_argument");
        assert_eq!(v["argument_name"], "attributes", "{attrs}");
    }
    up.assert_untouched();
}

#[test]
fn bodies_labelled_with_the_wrong_content_type_are_refused_or_read_as_labelled() {
    let (up, gw) = gateway_with_default_upstream();
    let form = "type_name=user&id=7&attributes=%7B%22email%22%3A%22e%22%7D";
    let json_body = r#"{"type_name":"user","id":7,"attributes":{"email":"e"}}"#;
    // A form labelled as something the route cannot filter: 415.
    for ct in [
        "application/json",
        "text/plain",
        "multipart/form-data; boundary=x",
        "application/x-www-form-urlencoded-but-not",
        "",
    ] {
        let r = post_raw_form(&gw, "writer", "/entity.update", ct, form);
        assert_eq!(r.status, 415, "{ct:?}: {}", r.text());
        assert_eq!(r.json()["stat"], "error");
    }
    // JSON labelled as a form: read as a form, so the JSON is one odd field
    // name with no value; nothing in it is taken as `attributes`.
    let r = post_raw_form(
        &gw,
        "writer",
        "/entity.update?type_name=user&id=7",
        "application/x-www-form-urlencoded",
        json_body,
    );
    assert!(r.status >= 400, "{}", r.text());
    // A charset other than UTF-8: the fields were not meant as UTF-8.
    let r = post_raw_form(
        &gw,
        "writer",
        "/entity.update",
        "application/x-www-form-urlencoded; charset=utf-16",
        form,
    );
    assert_eq!(r.status, 415, "{}", r.text());
    up.assert_untouched();
    // Upper case media types are the same type.
    let r = post_raw_form(
        &gw,
        "writer",
        "/entity.update",
        "Application/X-WWW-Form-URLEncoded; charset=UTF-8",
        "type_name=user&id=7&attributes=%7B%22givenName%22%3A%22G%22%2C%22email%22%3A%22e%22%7D",
    );
    r.assert_ok();
    assert_eq!(
        up.only().json_param("attributes").unwrap(),
        json!({"givenName": "G"})
    );
}

// ---------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------

#[test]
fn path_spellings_that_are_not_routes_never_reach_the_upstream() {
    let (up, gw) = gateway_with_default_upstream();
    for path in [
        "/entity%2Efind",
        "/entity%2efind",
        "//entity.find",
        "/entity.find/",
        "/ENTITY.FIND",
        "/Entity.find",
        "/entity.find;x",
        "/entity.find;jsessionid=1",
        "/entity.find%00",
        "/entity.find%20",
        "/%65ntity.find",
        "/entity.find..",
        "/entity.find.json",
    ] {
        let r = gw.get_as("fullreader", &format!("{path}?type_name=user"));
        let v = r.assert_error(404, 403, "client_permission_error");
        assert!(v.get("argument_name").is_none() || v["argument_name"].is_string());
        assert!(!r.text().contains("hidden"), "{path}");
    }
    up.assert_untouched();
}

#[test]
fn raw_request_targets_that_are_not_routes_are_refused() {
    let (up, gw) = gateway_with_default_upstream();
    let auth = basic_header("fullreader", "fullreader-secret");
    for target in [
        "/entity.find/.?type_name=user",
        "/./entity.find?type_name=user",
        "/x/../entity.find?type_name=user",
        "/entity.find/%2E%2E/entity.find?type_name=user",
        "/entity.find/../entity.find?type_name=user",
        "*",
        "entity.find?type_name=user",
    ] {
        let req = format!(
            "GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n"
        );
        let got = exchange(&gw, req.as_bytes(), Duration::from_secs(5));
        let codes = statuses(&got);
        assert!(
            codes.len() <= 1 && codes.iter().all(|c| (400..500).contains(c)),
            "{target}: {}",
            String::from_utf8_lossy(&got)
        );
        assert!(!contains(&got, "hidden"), "{target}");
    }
    up.assert_untouched();
}

#[test]
fn absolute_form_target_is_refused_or_routed_by_its_path_and_filtered() {
    let (up, gw) = gateway_with_default_upstream();
    let auth = basic_header("reader", "reader-secret");
    let req = format!(
        "GET http://evil.example:9999/entity?type_name=user&id=7 HTTP/1.1\r\nHost: evil.example\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n"
    );
    let got = exchange(&gw, req.as_bytes(), Duration::from_secs(5));
    for h in HIDDEN_VALUES {
        assert!(!contains(&got, h), "{h} leaked");
    }
    match statuses(&got).as_slice() {
        // Pingora 0.9 refuses absolute-form targets outright.
        [400] => up.assert_untouched(),
        // Were it accepted, it must go to the configured upstream.
        [200] => assert_eq!(up.only().path(), "/entity"),
        other => panic!("{other:?}: {}", String::from_utf8_lossy(&got)),
    }
}

#[test]
fn a_query_field_repeated_in_the_query_is_refused() {
    let (up, gw) = gateway_with_default_upstream();
    let r = gw.get_as(
        "reader",
        "/entity?type_name=user&id=7&attributes=%5B%22email%22%5D&attributes=%5B%22givenName%22%5D",
    );
    let v = r.assert_error(400, 201, "duplicate_argument");
    assert_eq!(v["argument_name"], "attributes");
    let r = gw.get_as("reader", "/entity?type_name=user&type_name=admin&id=7");
    r.assert_error(400, 201, "duplicate_argument");
    up.assert_untouched();
}

// ---------------------------------------------------------------------------
// HTTP framing
// ---------------------------------------------------------------------------

fn smuggle_probe(gw: &Gateway, framing: &str) -> Vec<u8> {
    let auth = basic_header("writer", "writer-secret");
    // The chunked body ends after the first chunk; what follows would be a
    // second request to a server that believed Content-Length instead.
    let inner = "GET /entity?type_name=user&id=7 HTTP/1.1\r\nHost: x\r\n\r\n";
    let body = format!("0\r\n\r\n{inner}");
    let req = format!(
        "POST /entity.update?type_name=user&id=7 HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Type: application/x-www-form-urlencoded\r\n{framing}\r\n{body}",
    );
    exchange(gw, req.as_bytes(), Duration::from_secs(3))
}

#[test]
fn content_length_with_transfer_encoding_is_never_read_two_ways() {
    let (up, gw) = gateway_with_default_upstream();
    for framing in [
        format!("Content-Length: {}\r\nTransfer-Encoding: chunked\r\n", 5),
        "Transfer-Encoding: chunked\r\nContent-Length: 60\r\n".to_string(),
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n".to_string(),
        "Transfer-Encoding: identity, chunked\r\nContent-Length: 3\r\n".to_string(),
        "Transfer-Encoding: xchunked\r\nContent-Length: 3\r\n".to_string(),
        "Transfer-Encoding : chunked\r\n".to_string(),
    ] {
        let got = smuggle_probe(&gw, &framing);
        let codes = statuses(&got);
        // At most one response on the connection: the smuggled GET must not
        // be answered as a request of its own.
        assert!(
            codes.len() <= 1,
            "{framing:?}: {}",
            String::from_utf8_lossy(&got)
        );
        assert!(
            codes.iter().all(|c| *c >= 400),
            "{framing:?}: {}",
            String::from_utf8_lossy(&got)
        );
        assert!(!contains(&got, "\"result\""), "{framing:?}");
    }
    // Nothing ambiguous was forwarded: every request the upstream saw was
    // framed by the gateway itself, and no GET /entity was smuggled.
    for rec in up.requests() {
        assert_ne!(
            rec.path(),
            "/entity",
            "a smuggled request reached the upstream"
        );
    }
}

#[test]
fn two_content_lengths_are_refused() {
    let (up, gw) = gateway_with_default_upstream();
    let auth = basic_header("writer", "writer-secret");
    for lengths in [("5", "30"), ("30", "5"), ("5, 30", "")] {
        let mut head = format!(
            "POST /entity.update?type_name=user&id=7 HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            lengths.0
        );
        if !lengths.1.is_empty() {
            head.push_str(&format!("Content-Length: {}\r\n", lengths.1));
        }
        head.push_str("\r\n");
        let req = format!("{head}a=bcd&attributes=%7B%22email%22%3A%22e%22%7D");
        let got = exchange(&gw, req.as_bytes(), Duration::from_secs(3));
        let codes = statuses(&got);
        assert!(
            codes.len() <= 1 && codes.iter().all(|c| *c == 400),
            "{lengths:?}: {}",
            String::from_utf8_lossy(&got)
        );
    }
    up.assert_untouched();
}

#[test]
fn oversized_headers_are_refused_with_431_or_400() {
    let (up, gw) = gateway_with_default_upstream();
    let auth = basic_header("reader", "reader-secret");
    // Over the gateway's own limit (16 KiB by default) but under Pingora's.
    let req = format!(
        "GET {ENTITY} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nX-Pad: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(20_000)
    );
    let got = exchange(&gw, req.as_bytes(), Duration::from_secs(5));
    assert_eq!(
        statuses(&got),
        vec![431],
        "{}",
        String::from_utf8_lossy(&got)
    );
    // Many small headers adding up.
    let mut req = format!("GET {ENTITY} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n");
    for i in 0..200 {
        req.push_str(&format!("X-H{i}: {}\r\n", "b".repeat(100)));
    }
    req.push_str("Connection: close\r\n\r\n");
    let got = exchange(&gw, req.as_bytes(), Duration::from_secs(5));
    assert_eq!(
        statuses(&got),
        vec![431],
        "{}",
        String::from_utf8_lossy(&got)
    );
    // Far over everything (2 MB): refused or cut, never served.
    let req = format!(
        "GET {ENTITY} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nX-Pad: {}\r\n\r\n",
        "c".repeat(2 << 20)
    );
    let got = exchange(&gw, req.as_bytes(), Duration::from_secs(5));
    assert!(
        statuses(&got).iter().all(|c| *c >= 400),
        "{}",
        String::from_utf8_lossy(&got[..got.len().min(300)])
    );
    up.assert_untouched();
    gw.get_as("reader", ENTITY).assert_ok();
}

#[test]
fn a_slow_client_is_cut_off_and_does_not_hold_up_others() {
    let (up, gw) = {
        let up = TestUpstream::capture_like();
        let gw = GatewayBuilder::new(&up)
            .setting(
                "timeouts",
                json!({"downstream_read_ms": 800, "downstream_header_ms": 1500}),
            )
            .metrics(json!({}))
            .start();
        (up, gw)
    };
    let auth = basic_header("writer", "writer-secret");
    // Headers trickled: a partial header, then silence.
    let mut headers_only = gw.connect();
    headers_only
        .write_all(
            format!("POST /entity.update HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nX-Slow: ")
                .as_bytes(),
        )
        .unwrap();
    // A body trickled: the header is complete, the body never arrives.
    let mut body_slow = gw.connect();
    body_slow
        .write_all(
            format!(
                "POST /entity.update?type_name=user&id=7 HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\nattributes=%7B"
            )
            .as_bytes(),
        )
        .unwrap();
    // Others are served meanwhile.
    let started = Instant::now();
    for _ in 0..5 {
        gw.get_as("reader", ENTITY).assert_ok();
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    // The body reader gives up at the configured time-out with a clean error.
    body_slow
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let t = Instant::now();
    let got = read_until_quiet(&mut body_slow);
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "not cut off: {:?}",
        t.elapsed()
    );
    assert!(
        statuses(&got).iter().all(|c| *c >= 400),
        "{}",
        String::from_utf8_lossy(&got)
    );
    // The header trickler is closed too, without a response being served.
    headers_only
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let t = Instant::now();
    let got = read_until_quiet(&mut headers_only);
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "not cut off: {:?}",
        t.elapsed()
    );
    assert!(statuses(&got).iter().all(|c| *c >= 400));
    // A trickle that keeps sending a byte at a time is cut by the total
    // header deadline, not kept alive by each byte.
    let mut dribble = gw.connect();
    dribble
        .write_all(b"GET /entity?type_name=user&id=7 HTTP/1.1\r\n")
        .unwrap();
    let t = Instant::now();
    let mut cut = false;
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(150));
        if dribble.write_all(b"X").is_err() {
            cut = true;
            break;
        }
    }
    if !cut {
        dribble
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut b = [0u8; 1];
        cut = matches!(dribble.read(&mut b), Ok(0))
            || statuses(&read_until_quiet(&mut dribble))
                .iter()
                .all(|c| *c >= 400);
    }
    assert!(
        cut,
        "a dribbling client held the connection for {:?}",
        t.elapsed()
    );
    assert_eq!(up.count(), 5, "only the five prompt reads went through");
    let metrics = gw.scrape();
    for phase in ["header", "body"] {
        let line = format!("recordgate_client_timeouts_total{{phase=\"{phase}\"}}");
        let n: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0);
        assert!(n >= 1.0, "{line} = {n}\n{metrics}");
    }
}

// ---------------------------------------------------------------------------
// Authentication oddities
// ---------------------------------------------------------------------------

#[test]
fn signed_dates_in_other_formats_are_refused_even_when_correctly_signed() {
    let (up, gw) = gateway_with_default_upstream();
    let now = chrono::Utc::now();
    let params = [("type_name", "user"), ("id", "7")];
    for date in [
        now.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        now.format("%Y-%m-%d %H:%M:%S+00:00").to_string(),
        now.format("%Y-%m-%d %H:%M:%S.123").to_string(),
        now.format("%Y-%m-%d  %H:%M:%S").to_string(),
        now.format("%y-%m-%d %H:%M:%S").to_string(),
        now.format("+%Y-%m-%d %H:%M:%S").to_string(),
        now.timestamp().to_string(),
        "9999-12-31 23:59:59".to_string(),
        "0000-00-00 00:00:00".to_string(),
        "2026-02-30 00:00:00".to_string(),
    ] {
        let sig = signature("owner-secret", "/entity", &date, &params);
        let r = gw.send(
            http_client()
                .get(gw.url(ENTITY))
                .header("authorization", format!("Signature owner:{sig}"))
                .header("date", date.as_str()),
        );
        // Refused as a malformed Date (400 naming it) or as bad credentials.
        match r.status {
            400 => assert_eq!(r.json()["argument_name"], "Date", "{date:?}: {}", r.text()),
            401 => {}
            s => panic!("{date:?}: {s} {}", r.text()),
        }
        assert!(!r.text().contains(&sig), "signature echoed");
    }
    up.assert_untouched();
}

#[test]
fn odd_client_ids_and_credentials_are_refused_cleanly() {
    let up = TestUpstream::capture_like();
    let gw = GatewayBuilder::new(&up)
        .policy(&policy_with_clients(
            "clients:\n  \"clïent-ü\":\n    secret: unicode-secret\n    features: [direct_read_access]\n",
        ))
        .start();
    // A Unicode client id works when it is the id in the policy.
    gw.get(ENTITY, Some(("clïent-ü", "unicode-secret")))
        .assert_ok();
    // Lookalikes and splits do not.
    for (id, secret) in [
        ("client-u", "unicode-secret"),
        ("clïent-ü:unicode", "secret"),
        ("clïent-ü\u{0}", "unicode-secret"),
        ("", "unicode-secret"),
        ("clïent-ü", ""),
    ] {
        let r = gw.get(ENTITY, Some((id, secret)));
        assert_eq!(r.status, 401, "{id:?}: {}", r.text());
        assert_eq!(r.json()["code"], 402, "{id:?}");
        assert!(!r.text().contains("unicode-secret"));
    }
    // Raw bytes that are not UTF-8 after base64, and headers with
    // obs-text: refused, not a crash.
    let bad_b64 = base64::engine::general_purpose::STANDARD.encode(b"cl\xffent:unicode-secret");
    for value in [
        format!("Basic {bad_b64}").into_bytes(),
        b"Basic \xff\xfe".to_vec(),
        b"Basic".to_vec(),
        b"Basic ".to_vec(),
        format!("Basic {}", "A".repeat(10_000)).into_bytes(),
        b"Signature clxent".to_vec(),
        b"Signature :".to_vec(),
        b"Signature a:b:c".to_vec(),
    ] {
        let mut req =
            format!("GET {ENTITY} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n").into_bytes();
        req.extend_from_slice(b"Authorization: ");
        req.extend_from_slice(&value);
        req.extend_from_slice(b"\r\n\r\n");
        let got = exchange(&gw, &req, Duration::from_secs(5));
        let codes = statuses(&got);
        assert!(
            codes.len() == 1 && (codes[0] == 401 || codes[0] == 400),
            "{:?}: {}",
            String::from_utf8_lossy(&value),
            String::from_utf8_lossy(&got)
        );
        assert!(!contains(&got, "unicode-secret"));
    }
    assert_eq!(up.count(), 1, "only the legitimate call went through");
}

// ---------------------------------------------------------------------------
// Client address oddities
// ---------------------------------------------------------------------------

#[test]
fn forwarded_for_oddities_from_an_untrusted_peer_change_nothing() {
    let (up, gw) = gateway_with_default_upstream();
    // `local` may call from 127.0.0.0/8 (the real peer); `offsite` may not.
    for xff in [
        "203.0.113.5",
        "203.0.113.5, 203.0.113.6",
        "not-an-ip",
        "[::1]:80",
        "203.0.113.5:443",
        "unknown",
        "",
        ",,,",
        "::ffff:203.0.113.5",
    ] {
        let ok = gw.send(
            http_client()
                .get(gw.url(ENTITY))
                .header("authorization", basic("local", "local-secret"))
                .header("x-forwarded-for", xff),
        );
        ok.assert_ok();
        let denied = gw.send(
            http_client()
                .get(gw.url(ENTITY))
                .header("authorization", basic("offsite", "offsite-secret"))
                .header("x-forwarded-for", xff),
        );
        assert_eq!(denied.status, 403, "{xff:?}: {}", denied.text());
    }
    assert_eq!(up.count(), 9);
}

#[test]
fn a_huge_forwarded_for_chain_from_a_trusted_proxy_is_handled() {
    let up = TestUpstream::capture_like();
    let gw = GatewayBuilder::new(&up)
        .setting("trusted_proxies", json!(["127.0.0.0/8"]))
        .start();
    // 1,500 hops of trusted addresses ending in an outsider: refused
    // (the first untrusted hop from the right is the client).
    let mut chain: Vec<String> = (0..1500)
        .map(|i| format!("127.0.{}.{}", i / 250, i % 250 + 1))
        .collect();
    chain.insert(0, "203.0.113.9".into());
    let r = gw.send(
        http_client()
            .get(gw.url(ENTITY))
            .header("authorization", basic("local", "local-secret"))
            .header("x-forwarded-for", chain.join(", ")),
    );
    assert!(
        r.status == 403 || r.status == 431,
        "{}: {}",
        r.status,
        r.text()
    );
    up.assert_untouched();
    let _ = Value::Null;
}

#[test]
fn pipelined_requests_are_not_run_unseen() {
    // Pingora serves the first of pipelined requests, then closes the
    // connection (RFC 9112 9.3.2 lets the client retry the rest). What must
    // not happen is a later request running upstream without its answer.
    let (up, gw) = gateway_with_default_upstream();
    let reader = basic_header("reader", "reader-secret");
    let writer = basic_header("writer", "writer-secret");
    let body = "type_name=user&id=7&attributes=%7B%22givenName%22%3A%22P%22%7D";
    let req = format!(
        "GET {ENTITY} HTTP/1.1\r\nHost: x\r\nAuthorization: {reader}\r\n\r\n\
         POST /entity.update HTTP/1.1\r\nHost: x\r\nAuthorization: {writer}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}\
         GET {ENTITY} HTTP/1.1\r\nHost: x\r\nAuthorization: {reader}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let got = exchange(&gw, req.as_bytes(), Duration::from_secs(5));
    let answered = statuses(&got).len();
    assert!(answered >= 1, "{}", String::from_utf8_lossy(&got));
    assert_eq!(
        up.count(),
        answered,
        "requests ran upstream without an answer: {}",
        String::from_utf8_lossy(&got)
    );
    for h in HIDDEN_VALUES {
        assert!(!contains(&got, h), "{h} leaked");
    }
}

#[test]
fn a_flood_of_parameters_is_refused_quickly() {
    // 60,000 distinct names in half a megabyte: a duplicate check that
    // compares each name with all before it would burn seconds of CPU.
    let (up, gw) = gateway_with_default_upstream();
    let body: String = (0..60_000).map(|i| format!("a{i}=1&")).collect();
    let started = Instant::now();
    let r = post_raw_form(
        &gw,
        "writer",
        "/entity.update",
        "application/x-www-form-urlencoded",
        &body,
    );
    let v = r.assert_error(400, 200, "invalid_argument");
    assert_eq!(v["argument_name"], "parameters");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    // The cap is a setting.
    let gw2 = GatewayBuilder::new(&up)
        .setting("limits", json!({"max_parameters": 3}))
        .start();
    gw2.get_as("reader", ENTITY).assert_ok();
    let r = gw2.get_as("reader", "/entity?type_name=user&id=7&a=1&b=2");
    assert_eq!(
        r.assert_error(400, 200, "invalid_argument")["argument_name"],
        "parameters"
    );
    assert_eq!(up.count(), 1);
}

#[test]
fn two_authorization_headers_are_refused() {
    let (up, gw) = gateway_with_default_upstream();
    let r = gw.send(
        http_client()
            .get(gw.url(ENTITY))
            .header("authorization", basic("reader", "reader-secret"))
            .header("authorization", basic("owner", "owner-secret")),
    );
    let v = r.assert_error(400, 200, "invalid_argument");
    assert_eq!(v["argument_name"], "Authorization");
    assert!(!r.text().contains("secret"), "{}", r.text());
    up.assert_untouched();
}
