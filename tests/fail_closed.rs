//! Fail closed: encoded, malformed, oversize, too deep or non-JSON bodies and
//! a broken upstream give a clear error, never an unfiltered record.
// A test (or bench) that cannot set up fails loudly; the no-panic rule is for the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const ENTITY: &str = "/entity?type_name=user&id=7";

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn record_body() -> Vec<u8> {
    serde_json::to_vec(&json!({"stat": "ok", "result": sample_record(7)})).unwrap()
}

/// 502 in the Capture envelope, and nothing of the record in the body.
fn assert_bad_gateway(r: &Resp) -> Value {
    let v = r.assert_error(502, 500, "unexpected_error");
    r.assert_no_hidden();
    assert!(!r.text().contains("Ada7"), "{}", r.text());
    assert!(!r.text().contains("London"), "{}", r.text());
    v
}

#[test]
fn gzip_upstream_response_is_refused_with_502() {
    let up = TestUpstream::start(|_| {
        Reply::bytes("application/json", gzip(&record_body())).header("content-encoding", "gzip")
    });
    let gw = GatewayBuilder::new(&up).start();
    // Even when the caller says it accepts gzip.
    let r = gw.send(
        http_client()
            .get(gw.url(ENTITY))
            .header("authorization", basic("reader", "reader-secret"))
            .header("accept-encoding", "gzip"),
    );
    assert_bad_gateway(&r);
    assert!(r.header("content-encoding").is_none(), "{:?}", r.headers);
    let r = gw.get_as("reader", ENTITY);
    assert_bad_gateway(&r);
    // For a client with full read too: an unfilterable body is not passed on.
    let r = gw.get_as("owner", ENTITY);
    assert_bad_gateway(&r);
}

#[test]
fn unknown_upstream_content_encoding_is_refused() {
    let up = TestUpstream::start(|_| {
        Reply::bytes("application/json", record_body()).header("content-encoding", "br")
    });
    let gw = GatewayBuilder::new(&up).start();
    assert_bad_gateway(&gw.get_as("reader", ENTITY));
}

#[test]
fn upstream_is_asked_for_identity_encoding() {
    let (up, gw) = gateway_with_default_upstream();
    let r = gw.send(
        http_client()
            .get(gw.url(ENTITY))
            .header("authorization", basic("reader", "reader-secret"))
            .header("accept-encoding", "gzip, deflate, br"),
    );
    r.assert_ok();
    assert_eq!(up.only().header("accept-encoding"), Some("identity"));
}

#[test]
fn malformed_upstream_json_is_502_and_leaks_nothing() {
    let full = String::from_utf8(record_body()).unwrap();
    let truncated = full[..full.len() - 40].to_string();
    for body in [
        truncated,
        format!("{full} trailing"),
        format!("{full}{full}"),
        full.replace("\"email\"", "\"email\" \"email\""),
        // Duplicate keys: which one a client would read is ambiguous.
        r#"{"stat":"ok","result":{"givenName":"Ada7","givenName":"hidden-note"}}"#.to_string(),
        String::new(),
    ] {
        let b = body.clone();
        let up = TestUpstream::start(move |_| Reply::bytes("application/json", b.clone()));
        let gw = GatewayBuilder::new(&up).start();
        let r = gw.get_as("reader", ENTITY);
        assert_eq!(r.status, 502, "body {body:?}: {}", r.text());
        assert_bad_gateway(&r);
    }
}

#[test]
fn invalid_utf8_upstream_json_is_refused() {
    let mut body = br#"{"stat":"ok","result":{"givenName":"Ada7","email":""#.to_vec();
    body.extend_from_slice(&[0xff, 0xfe]);
    body.extend_from_slice(br#"hidden-email"}}"#);
    let up = TestUpstream::start(move |_| Reply::bytes("application/json", body.clone()));
    let gw = GatewayBuilder::new(&up).start();
    assert_bad_gateway(&gw.get_as("reader", ENTITY));
}

#[test]
fn unexpected_response_shape_is_refused() {
    for body in [
        json!([sample_record(7)]),
        json!("hidden-note"),
        json!({"stat": "ok", "results": {"a": sample_record(1)}}),
    ] {
        let b = body.clone();
        let up = TestUpstream::start(move |_| Reply::json(b.clone()));
        let gw = GatewayBuilder::new(&up).start();
        let r = gw.get_as("reader", "/entity.find?type_name=user");
        assert_eq!(r.status, 502, "{body}: {}", r.text());
        assert_bad_gateway(&r);
    }
}

#[test]
fn non_json_content_type_on_a_filtered_route_is_refused() {
    for ct in ["text/html", "text/plain", "application/octet-stream"] {
        let ct2 = ct.to_string();
        let up = TestUpstream::start(move |_| Reply::bytes(&ct2, record_body()));
        let gw = GatewayBuilder::new(&up).start();
        let r = gw.get_as("reader", ENTITY);
        assert_eq!(r.status, 502, "{ct}: {}", r.text());
        assert_bad_gateway(&r);
    }
    // No content type at all.
    let up = TestUpstream::start(|_| Reply {
        status: 200,
        headers: vec![],
        body: record_body(),
        delay: None,
    });
    let gw = GatewayBuilder::new(&up).start();
    assert_bad_gateway(&gw.get_as("reader", ENTITY));
}

#[test]
fn oversize_upstream_response_is_502() {
    let up = TestUpstream::capture_like();
    let gw = GatewayBuilder::new(&up)
        .setting("limits", json!({"max_response_body_bytes": 256}))
        .start();
    assert!(record_body().len() > 256);
    assert_bad_gateway(&gw.get_as("reader", ENTITY));
    assert_bad_gateway(&gw.get_as("owner", ENTITY));
    // A response within the limit still passes.
    let v = gw
        .get_as("owner", "/entity.count?type_name=user")
        .assert_ok();
    assert_eq!(v["total_count"], 2);
}

#[test]
fn oversize_chunked_upstream_response_is_502() {
    let up = TestUpstream::start_raw(|_| {
        let body = record_body();
        let mut out = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for c in body.chunks(50) {
            out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
            out.extend_from_slice(c);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    });
    let gw = GatewayBuilder::new(&up)
        .setting("limits", json!({"max_response_body_bytes": 256}))
        .start();
    assert_bad_gateway(&gw.get_as("reader", ENTITY));
}

#[test]
fn oversize_request_is_413_and_not_forwarded() {
    let up = TestUpstream::capture_like();
    let gw = GatewayBuilder::new(&up)
        .setting("limits", json!({"max_request_body_bytes": 1024}))
        .start();
    let big = format!(r#"{{"givenName":"{}"}}"#, "x".repeat(4000));
    let r = gw.post_as(
        "writer",
        "/entity.update",
        &[("type_name", "user"), ("id", "7"), ("attributes", &big)],
    );
    let v = r.assert_error(413, 200, "invalid_argument");
    assert!(
        v["error_description"].as_str().unwrap().contains("1024"),
        "{v}"
    );
    up.assert_untouched();
}

#[test]
fn oversize_chunked_request_is_413_and_not_forwarded() {
    let up = TestUpstream::capture_like();
    let gw = GatewayBuilder::new(&up)
        .setting("limits", json!({"max_request_body_bytes": 1024}))
        .start();
    let body = format!(
        "type_name=user&id=7&attributes={}",
        encode_form(&[("x", &"y".repeat(3000))])
    );
    let mut req = format!(
        "POST /entity.update HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        basic("writer", "writer-secret")
    )
    .into_bytes();
    for c in body.as_bytes().chunks(500) {
        req.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        req.extend_from_slice(c);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let r = gw.raw(&req, false);
    assert_eq!(r.status(), 413, "{r:?}");
    up.assert_untouched();
}

fn nested(depth: usize) -> String {
    let mut s = String::from("1");
    for _ in 0..depth {
        s = format!(r#"{{"a":{s}}}"#);
    }
    s
}

#[test]
fn request_json_deeper_than_the_limit_is_400() {
    let up = TestUpstream::capture_like();
    let gw = GatewayBuilder::new(&up)
        .setting("limits", json!({"max_json_depth": 8}))
        .start();
    let attrs = format!(r#"{{"givenName":"G","primaryAddress":{}}}"#, nested(20));
    for client in ["writer", "owner"] {
        let r = gw.post_as(
            client,
            "/entity.update",
            &[("type_name", "user"), ("id", "7"), ("attributes", &attrs)],
        );
        let v = r.assert_error(400, 200, "invalid_argument");
        assert_eq!(v["argument_name"], "attributes", "{v}");
    }
    up.assert_untouched();
}

#[test]
fn response_json_deeper_than_the_limit_is_502() {
    let up = TestUpstream::start(|_| {
        let mut rec = sample_record(7);
        rec["internal"]["notes"] = serde_json::from_str(&nested(20)).unwrap();
        Reply::json(json!({"stat": "ok", "result": rec}))
    });
    let gw = GatewayBuilder::new(&up)
        .setting("limits", json!({"max_json_depth": 8}))
        .start();
    assert_bad_gateway(&gw.get_as("reader", ENTITY));
    assert_bad_gateway(&gw.get_as("owner", ENTITY));
}

#[test]
fn request_with_a_content_encoding_is_refused() {
    let (up, gw) = gateway_with_default_upstream();
    let body = gzip(
        encode_form(&[
            ("type_name", "user"),
            ("id", "7"),
            ("attributes", r#"{"email":"x"}"#),
        ])
        .as_bytes(),
    );
    let r = gw.send(
        http_client()
            .post(gw.url("/entity.update"))
            .header("authorization", basic("writer", "writer-secret"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("content-encoding", "gzip")
            .body(body),
    );
    assert_eq!(r.status, 415, "{}", r.text());
    assert_eq!(r.json()["stat"], "error");
    up.assert_untouched();
}

#[test]
fn request_body_of_an_unfilterable_type_is_refused() {
    let (up, gw) = gateway_with_default_upstream();
    for ct in [
        "text/plain",
        "application/json",
        "multipart/form-data; boundary=x",
    ] {
        let r = gw.send(
            http_client()
                .post(gw.url("/entity.update?type_name=user&id=7"))
                .header("authorization", basic("writer", "writer-secret"))
                .header("content-type", ct)
                .body(r#"{"email":"x"}"#),
        );
        assert_eq!(r.status, 415, "{ct}: {}", r.text());
        assert_eq!(r.json()["stat"], "error");
    }
    up.assert_untouched();
}

#[test]
fn upstream_refusing_connections_is_502() {
    let dead = format!("127.0.0.1:{}", free_port());
    let gw = GatewayBuilder::to_server(&dead).start();
    let v = assert_bad_gateway(&gw.get_as("reader", ENTITY));
    assert!(v["request_id"].is_string());
}

#[test]

fn upstream_stalling_past_the_read_timeout_is_504() {
    let up = TestUpstream::start(|r| capture_handler(r).delay(Duration::from_secs(4)));
    let gw = GatewayBuilder::new(&up)
        .setting(
            "timeouts",
            json!({"upstream_connect_ms": 1000, "upstream_read_ms": 500}),
        )
        .start();
    let started = std::time::Instant::now();
    let r = gw.get_as("reader", ENTITY);
    r.assert_error(504, 500, "unexpected_error");
    r.assert_no_hidden();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn upstream_reset_mid_body_is_502_and_leaks_nothing() {
    let up = TestUpstream::start_raw(|_| {
        let body = record_body();
        let mut out = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(&body[..body.len() / 2]);
        out
    });
    let gw = GatewayBuilder::new(&up).start();
    assert_bad_gateway(&gw.get_as("reader", ENTITY));
    assert_bad_gateway(&gw.get_as("owner", ENTITY));
}

#[test]
fn upstream_content_length_shorter_than_the_body_is_refused() {
    // The first Content-Length bytes are a truncated JSON document.
    let up = TestUpstream::start_raw(|_| {
        let body = record_body();
        let mut out = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len() - 10
        )
        .into_bytes();
        out.extend_from_slice(&body);
        out
    });
    let gw = GatewayBuilder::new(&up).start();
    assert_bad_gateway(&gw.get_as("reader", ENTITY));
}

#[test]
fn upstream_garbage_instead_of_http_is_502() {
    let up = TestUpstream::start_raw(|_| b"this is not http at all hidden-note\r\n\r\n".to_vec());
    let gw = GatewayBuilder::new(&up).start();
    let r = gw.get_as("reader", ENTITY);
    assert_eq!(r.status, 502, "{}", r.text());
    r.assert_no_hidden();
}

#[test]
fn upstream_closing_without_a_response_is_502() {
    let up = TestUpstream::start_raw(|_| Vec::new());
    let gw = GatewayBuilder::new(&up).start();
    let r = gw.get_as("reader", ENTITY);
    assert_eq!(r.status, 502, "{}", r.text());
}

#[test]
fn upstream_error_status_body_is_still_filtered() {
    let up = TestUpstream::start(|_| {
        Reply::json(json!({"stat": "error", "result": sample_record(7)})).status(500)
    });
    let gw = GatewayBuilder::new(&up).start();
    let r = gw.get_as("reader", ENTITY);
    assert_eq!(r.status, 500, "{}", r.text());
    r.assert_no_hidden();
}

#[test]
fn error_envelope_has_every_field_and_matches_the_request_id_header() {
    let (_up, gw) = gateway_with_default_upstream();
    let r = gw.get_as("reader", "/entity?type_name=user&id=7&attribute_name=email");
    let v = r.assert_error(403, 403, "client_permission_error");
    assert_eq!(v["argument_name"], "attribute_name");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.header("x-request-id"),
        v["request_id"].as_str(),
        "{:?}",
        r.headers
    );
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "stat",
            "code",
            "error",
            "error_description",
            "argument_name",
            "request_id"
        ]
    );
    // Every request gets its own id.
    let r2 = gw.get_as("reader", "/entity?type_name=user&id=7&attribute_name=email");
    assert_ne!(r2.json()["request_id"], v["request_id"]);
}

#[test]
fn request_id_from_an_untrusted_caller_is_not_used() {
    let (up, gw) = gateway_with_default_upstream();
    let r = gw.send(
        http_client()
            .get(gw.url(ENTITY))
            .header("authorization", basic("reader", "reader-secret"))
            .header("x-request-id", "forged-id-123"),
    );
    r.assert_ok();
    assert_ne!(r.header("x-request-id"), Some("forged-id-123"));
    let sent = up.only();
    assert_eq!(sent.header("x-request-id"), r.header("x-request-id"));
}

#[test]
fn capture_compat_status_answers_errors_with_200() {
    let dead = format!("127.0.0.1:{}", free_port());
    let gw = GatewayBuilder::to_server(&dead)
        .setting("capture_compat_status", json!(true))
        .start();
    // 403 becomes 200, with the same envelope.
    let r = gw.get_as("reader", "/entity?type_name=user&id=7&attribute_name=email");
    r.assert_error(200, 403, "client_permission_error");
    // 401 too.
    let r = gw.get(ENTITY, Some(("reader", "wrong")));
    r.assert_error(200, 402, "invalid_client_credentials");
    // And the upstream failure.
    let r = gw.get_as("reader", ENTITY);
    r.assert_error(200, 500, "unexpected_error");
}

#[test]
fn without_capture_compat_status_errors_use_their_http_status() {
    let (_up, gw) = gateway_with_default_upstream();
    let r = gw.get(ENTITY, Some(("reader", "wrong")));
    assert_eq!(r.status, 401);
}
