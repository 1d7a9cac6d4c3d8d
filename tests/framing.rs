//! Framing, read byte for byte off a raw socket: Content-Length matches the
//! filtered body, keep-alive survives, HEAD / 204 / 304 carry no body.
// A test (or bench) that cannot set up fails loudly; the no-panic rule is for the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn get_request(path: &str, client: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: {}\r\n{extra}\r\n",
        basic(client, &format!("{client}-secret"))
    )
    .into_bytes()
}

fn head_request(path: &str, client: &str) -> Vec<u8> {
    format!(
        "HEAD {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: {}\r\n\r\n",
        basic(client, &format!("{client}-secret"))
    )
    .into_bytes()
}

/// Asserts nothing more arrives on the connection for a short while.
fn assert_no_more_bytes(s: &mut TcpStream) {
    s.set_read_timeout(Some(Duration::from_millis(400)))
        .unwrap();
    let mut buf = [0u8; 256];
    match s.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!(
            "unexpected extra bytes: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{e}"
        ),
    }
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
}

fn content_length(r: &RawResponse) -> usize {
    r.header("content-length")
        .unwrap_or_else(|| panic!("no Content-Length: {r:?}"))
        .parse()
        .unwrap()
}

#[test]
fn filtered_response_content_length_equals_the_body_length() {
    let (_up, gw) = gateway_with_default_upstream();
    let mut s = gw.connect();
    s.write_all(&get_request("/entity?type_name=user&id=7", "reader", ""))
        .unwrap();
    let r = read_raw_response(&mut s, false);
    assert_eq!(r.status(), 200, "{r:?}");
    assert!(r.header("transfer-encoding").is_none(), "{r:?}");
    assert_eq!(content_length(&r), r.body.len());
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["result"]["givenName"], "Ada7");
    // The filtered body is shorter than the upstream's, and nothing trails it.
    let upstream_len = serde_json::to_vec(&json!({"stat": "ok", "result": sample_record(7)}))
        .unwrap()
        .len();
    assert!(r.body.len() < upstream_len);
    assert_no_more_bytes(&mut s);
}

#[test]
fn stale_upstream_framing_headers_are_not_copied() {
    let up = TestUpstream::start(|r| {
        capture_handler(r)
            .header("etag", "\"unfiltered-etag\"")
            .header("accept-ranges", "bytes")
            .header("x-upstream-extra", "kept")
    });
    // Upstream headers pass only when settings name them (issue 17: an
    // allow-list); this one is named, the validators never can be.
    let gw = GatewayBuilder::new(&up)
        .setting("response_headers", json!({"allow": ["x-upstream-extra"]}))
        .start();
    let r = gw.raw(
        &get_request(
            "/entity?type_name=user&id=7",
            "reader",
            "Connection: close\r\n",
        ),
        false,
    );
    assert_eq!(r.status(), 200, "{r:?}");
    assert_eq!(content_length(&r), r.body.len());
    let cls: Vec<_> = r
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .collect();
    assert_eq!(cls.len(), 1, "{r:?}");
    assert!(r.header("etag").is_none(), "{r:?}");
    assert!(r.header("accept-ranges").is_none(), "{r:?}");
    assert_eq!(r.header("x-upstream-extra"), Some("kept"));
}

#[test]
fn large_filtered_find_has_an_exact_content_length() {
    // 200 records (~150 KB) stay under the 1 MiB streaming threshold: buffered.
    let up = TestUpstream::start(|_| {
        let results: Vec<Value> = (0..200).map(sample_record).collect();
        Reply::json(json!({"stat": "ok", "result_count": 200, "results": results}))
    });
    let gw = GatewayBuilder::new(&up).start();
    let r = find_once(&gw);
    assert_eq!(r.status(), 200);
    assert!(r.header("transfer-encoding").is_none(), "{r:?}");
    assert_eq!(content_length(&r), r.body.len());
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["results"].as_array().unwrap().len(), 200);
    assert!(!contains(&r.body, "hidden-email"));
}

#[test]
fn response_over_the_streaming_threshold_is_streamed_chunked_and_filtered() {
    let up = TestUpstream::start(|_| {
        let results: Vec<Value> = (0..2000).map(sample_record).collect();
        Reply::json(json!({"stat": "ok", "result_count": 2000, "results": results}))
    });
    let gw = GatewayBuilder::new(&up)
        .setting("limits", json!({"stream_responses_over_bytes": 65536}))
        .start();
    let r = find_once(&gw);
    assert_eq!(r.status(), 200);
    assert_eq!(r.header("transfer-encoding"), Some("chunked"), "{r:?}");
    assert!(r.header("content-length").is_none(), "{r:?}");
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["results"].as_array().unwrap().len(), 2000);
    assert_eq!(v["result_count"], 2000);
    assert!(!contains(&r.body, "hidden-email"));
}

#[test]
fn chunked_upstream_response_is_filtered_and_reframed() {
    let up = TestUpstream::start_raw(|_| {
        let body = serde_json::to_vec(&json!({"stat": "ok", "result": sample_record(7)})).unwrap();
        let mut out = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
        for c in body.chunks(37) {
            out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
            out.extend_from_slice(c);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    });
    let gw = GatewayBuilder::new(&up).start();
    let r = gw.raw(
        &get_request(
            "/entity?type_name=user&id=7",
            "reader",
            "Connection: close\r\n",
        ),
        false,
    );
    assert_eq!(r.status(), 200, "{r:?}");
    assert_eq!(content_length(&r), r.body.len());
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["result"]["primaryAddress"], json!({"city": "London"}));
    assert!(!contains(&r.body, "hidden"));
}

#[test]
fn keep_alive_serves_two_requests_on_one_connection() {
    let (up, gw) = gateway_with_default_upstream();
    let mut s = gw.connect();
    s.write_all(&get_request("/entity?type_name=user&id=7", "reader", ""))
        .unwrap();
    let r1 = read_raw_response(&mut s, false);
    assert_eq!(r1.status(), 200);
    assert_eq!(content_length(&r1), r1.body.len());
    s.write_all(&get_request("/entity.find?type_name=user", "reader", ""))
        .unwrap();
    let r2 = read_raw_response(&mut s, false);
    assert_eq!(r2.status(), 200, "{r2:?}");
    assert_eq!(content_length(&r2), r2.body.len());
    let v: Value = serde_json::from_slice(&r2.body).unwrap();
    assert_eq!(v["result_count"], 2);
    // An error answer keeps the connection usable as well.
    s.write_all(&get_request(
        "/entity?type_name=user&id=7&attribute_name=email",
        "reader",
        "",
    ))
    .unwrap();
    let r3 = read_raw_response(&mut s, false);
    assert_eq!(r3.status(), 403);
    assert_eq!(content_length(&r3), r3.body.len());
    s.write_all(&get_request("/entity?type_name=user&id=7", "reader", ""))
        .unwrap();
    assert_eq!(read_raw_response(&mut s, false).status(), 200);
    assert_eq!(up.count(), 3);
}

#[test]
fn keep_alive_after_a_post_with_a_body() {
    let (up, gw) = gateway_with_default_upstream();
    let mut s = gw.connect();
    for i in 0..2 {
        let body = encode_form(&[
            ("type_name", "user"),
            ("id", "7"),
            ("attributes", r#"{"givenName":"G"}"#),
        ]);
        let req = format!(
            "POST /entity.update HTTP/1.1\r\nHost: gw\r\nAuthorization: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            basic("writer", "writer-secret"),
            body.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        let r = read_raw_response(&mut s, false);
        assert_eq!(r.status(), 200, "request {i}: {r:?}");
        assert_eq!(content_length(&r), r.body.len());
    }
    assert_eq!(up.count(), 2);
}

#[test]
fn head_returns_headers_and_no_body() {
    let (up, gw) = gateway_with_default_upstream();
    let mut s = gw.connect();
    s.write_all(&head_request("/entity?type_name=user&id=7", "reader"))
        .unwrap();
    let r = read_raw_response(&mut s, true);
    assert_eq!(r.status(), 200, "{r:?}");
    assert!(
        r.body.is_empty(),
        "HEAD body: {:?}",
        String::from_utf8_lossy(&r.body)
    );
    assert!(r.header("x-request-id").is_some(), "{r:?}");
    assert_no_more_bytes(&mut s);
    // The connection is still in sync.
    s.write_all(&get_request("/entity?type_name=user&id=7", "reader", ""))
        .unwrap();
    let r2 = read_raw_response(&mut s, false);
    assert_eq!(r2.status(), 200, "{r2:?}");
    assert_eq!(content_length(&r2), r2.body.len());
    let reqs = up.requests();
    assert_eq!(reqs[0].method, "HEAD");
}

#[test]
fn head_refusal_has_no_body() {
    let (up, gw) = gateway_with_default_upstream();
    let mut s = gw.connect();
    s.write_all(&head_request("/entity?type_name=user&id=7", "offsite"))
        .unwrap();
    let r = read_raw_response(&mut s, true);
    assert_eq!(r.status(), 403, "{r:?}");
    assert!(r.body.is_empty());
    assert_no_more_bytes(&mut s);
    up.assert_untouched();
}

fn bodiless_upstream(status: u16) -> TestUpstream {
    TestUpstream::start(move |_| {
        Reply::empty(status)
            .header("content-type", "application/json")
            .header("etag", "\"e\"")
    })
}

#[test]
fn upstream_204_passes_with_no_body() {
    let up = bodiless_upstream(204);
    let gw = GatewayBuilder::new(&up).start();
    let mut s = gw.connect();
    s.write_all(&get_request("/entity?type_name=user&id=7", "reader", ""))
        .unwrap();
    let r = read_raw_response(&mut s, false);
    assert_eq!(r.status(), 204, "{r:?}");
    assert!(r.body.is_empty());
    assert!(r.header("transfer-encoding").is_none(), "{r:?}");
    assert!(r.header("content-length").is_none_or(|v| v == "0"), "{r:?}");
    assert_no_more_bytes(&mut s);
    s.write_all(&get_request("/entity?type_name=user&id=7", "reader", ""))
        .unwrap();
    assert_eq!(read_raw_response(&mut s, false).status(), 204);
}

#[test]
fn upstream_304_passes_with_no_body() {
    let up = bodiless_upstream(304);
    let gw = GatewayBuilder::new(&up).start();
    let mut s = gw.connect();
    s.write_all(&get_request(
        "/entity?type_name=user&id=7",
        "reader",
        "If-None-Match: \"e\"\r\n",
    ))
    .unwrap();
    let r = read_raw_response(&mut s, false);
    assert_eq!(r.status(), 304, "{r:?}");
    assert!(r.body.is_empty());
    assert!(r.header("transfer-encoding").is_none(), "{r:?}");
    assert_no_more_bytes(&mut s);
    s.write_all(&get_request("/entity?type_name=user&id=7", "reader", ""))
        .unwrap();
    assert_eq!(read_raw_response(&mut s, false).status(), 304);
}

#[test]
fn error_responses_are_exactly_framed() {
    let (_up, gw) = gateway_with_default_upstream();
    let mut s = gw.connect();
    s.write_all(&get_request("/entity?type_name=user&id=7", "nobody", ""))
        .unwrap();
    let r = read_raw_response(&mut s, false);
    assert_eq!(r.status(), 401);
    assert_eq!(content_length(&r), r.body.len());
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["code"], 402);
}

#[test]
fn http_1_0_request_gets_a_complete_response() {
    let (_up, gw) = gateway_with_default_upstream();
    let req = format!(
        "GET /entity?type_name=user&id=7 HTTP/1.0\r\nAuthorization: {}\r\n\r\n",
        basic("reader", "reader-secret")
    );
    let r = gw.raw(req.as_bytes(), false);
    assert_eq!(r.status(), 200, "{r:?}");
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["result"]["givenName"], "Ada7");
}

/// One `/entity.find` as the reader, on a connection closed after it.
fn find_once(gw: &Gateway) -> RawResponse {
    gw.raw(
        &get_request(
            "/entity.find?type_name=user",
            "reader",
            "Connection: close\r\n",
        ),
        false,
    )
}

/// Far longer than the 64 KiB streaming threshold the tests below set.
fn long_find_body() -> Vec<u8> {
    let results: Vec<Value> = (0..400).map(sample_record).collect();
    serde_json::to_vec(&json!({"stat": "ok", "results": results})).unwrap()
}

/// Reads a response that must have started streaming and then been cut:
/// a 200 header, chunked, and no final chunk.
fn read_cut_stream(gw: &Gateway, path: &str) -> String {
    let mut s = gw.connect();
    s.write_all(&get_request(path, "reader", "Connection: close\r\n"))
        .unwrap();
    let mut raw = Vec::new();
    // Bounded by the stream's read timeout; a cut connection ends the read.
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text:.200}");
    assert!(text
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked"));
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "the stream must not be terminated cleanly"
    );
    text
}

#[test]
fn malformed_stream_halfway_cuts_the_connection_without_a_final_chunk() {
    let up = TestUpstream::start(|_| {
        let mut body = long_find_body();
        // Break the JSON near the end, after the streaming threshold.
        let n = body.len();
        body.truncate(n - 40);
        body.extend_from_slice(b"{\"hidden-email\": oops");
        Reply::bytes("application/json", body)
    });
    let gw = GatewayBuilder::new(&up)
        .setting("limits", json!({"stream_responses_over_bytes": 65536}))
        .start();
    let text = read_cut_stream(&gw, "/entity.find?type_name=user");
    assert!(!text.contains("hidden-email"));
}

#[test]
fn malformed_start_of_a_long_response_is_a_clean_502_before_anything_streams() {
    let up = TestUpstream::start(|_| {
        // Far longer than the streaming threshold, but broken in its first
        // record: the filter sees that before the header would be sent.
        let text = String::from_utf8(long_find_body()).unwrap();
        let broken = text.replacen("\"results\":[", "\"results\":[oops,", 1);
        assert_ne!(broken, text);
        Reply::bytes("application/json", broken.into_bytes())
    });
    let gw = GatewayBuilder::new(&up)
        .setting("limits", json!({"stream_responses_over_bytes": 65536}))
        .start();
    let r = find_once(&gw);
    assert_eq!(r.status(), 502, "{r:?}");
    assert!(r.header("transfer-encoding").is_none(), "{r:?}");
    assert_eq!(content_length(&r), r.body.len());
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["stat"], "error", "{v}");
    assert!(!contains(&r.body, "hidden-email"));
}

#[test]
fn response_past_the_streaming_limit_before_streaming_starts_is_a_clean_502() {
    let up = TestUpstream::start(|_| Reply::bytes("application/json", long_find_body()));
    let gw = GatewayBuilder::new(&up)
        .setting(
            "limits",
            json!({"stream_responses_over_bytes": 1024, "max_streamed_response_bytes": 2048}),
        )
        .start();
    let r = find_once(&gw);
    assert_eq!(r.status(), 502, "{r:?}");
    assert_eq!(content_length(&r), r.body.len());
    assert!(!contains(&r.body, "hidden-email"));
}

#[test]
fn response_passing_the_streaming_limit_while_streaming_is_cut() {
    let body = long_find_body();
    let limit = body.len() as u64 - 1;
    let up = TestUpstream::start(move |_| Reply::bytes("application/json", body.clone()));
    let gw = GatewayBuilder::new(&up)
        .setting(
            "limits",
            json!({"stream_responses_over_bytes": 65536, "max_streamed_response_bytes": limit}),
        )
        .start();
    let text = read_cut_stream(&gw, "/entity.find?type_name=user");
    assert!(!text.contains("hidden-email"));
}

/// Reads until `needle` has arrived (or the read time-out passes).
fn read_until(s: &mut TcpStream, needle: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while find(&got, needle).is_none() {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got
}

#[test]
fn expect_100_continue_is_answered_before_the_body_is_read() {
    let (up, gw) = gateway_with_default_upstream();
    let body = encode_form(&[
        ("type_name", "user"),
        ("id", "7"),
        (
            "attributes",
            &json!({"givenName": "G".repeat(2000), "email": "e@x"}).to_string(),
        ),
    ]);
    let mut s = gw.connect();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    write!(
        s,
        "POST /entity.update HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        basic("writer", "writer-secret"),
        body.len()
    )
    .unwrap();
    // A strict client sends nothing more until it is told to go on.
    let interim = read_until(&mut s, b"\r\n\r\n");
    assert!(
        interim.starts_with(b"HTTP/1.1 100"),
        "no 100 Continue: {:?}",
        String::from_utf8_lossy(&interim)
    );
    s.write_all(body.as_bytes()).unwrap();
    let r = read_raw_response(&mut s, false);
    assert_eq!(r.status(), 200, "{}", String::from_utf8_lossy(&r.body));
    let fwd = up.only().json_param("attributes").unwrap();
    assert_eq!(fwd, json!({"givenName": "G".repeat(2000)}));

    // Too large by its Content-Length: refused without inviting the body.
    let mut s = gw.connect();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    write!(
        s,
        "POST /entity.update HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        basic("writer", "writer-secret"),
        64 << 20
    )
    .unwrap();
    let r = read_raw_response(&mut s, false);
    assert_eq!(r.status(), 413, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(up.count(), 1);
}
