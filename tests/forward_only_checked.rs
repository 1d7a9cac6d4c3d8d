//! Only what the gateway checked is forwarded: parameter names (an
//! allow-list per route; look-alikes of checked names refused), upstream
//! response headers (an allow-list), codings (only the ones implemented), and
//! a request line and header that every parser reads the same way.

// A test (or bench) that cannot set up fails loudly; the no-panic rule is for the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use serde_json::json;

fn request(method: &str, target: &str, client: &str, extra: &str, body: &str) -> Vec<u8> {
    format!(
        "{method} {target} HTTP/1.1\r\nHost: gw\r\nAuthorization: {}\r\nConnection: close\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        basic(client, &format!("{client}-secret")),
        body.len()
    )
    .into_bytes()
}

fn form_post(path: &str, client: &str, body: &str) -> Vec<u8> {
    request(
        "POST",
        path,
        client,
        "Content-Type: application/x-www-form-urlencoded\r\n",
        body,
    )
}

fn json_of(r: &RawResponse) -> serde_json::Value {
    serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&r.body)))
}

/// Every look-alike of a checked name from the issue, on the route that
/// checks the original: refused with 400 naming it, nothing forwarded.
const LOOK_ALIKES: [(&str, &str); 12] = [
    ("/entity", "key.attribute=email&key_value=%22a%40b.c%22"),
    ("/entity.find", "sort.on=%5B%22email%22%5D"),
    ("/entity", "id=7&attribute.name=email"),
    ("/entity.find", "Filter=email%20is%20not%20null"),
    ("/entity", "KEY_ATTRIBUTE=email&key_value=%22a%40b.c%22"),
    ("/entity.find", "filter%20=email%20is%20not%20null"),
    ("/entity.find", "filter%5B%5D=email%20is%20not%20null"),
    ("/entity.find", "%EF%BD%86ilter=email%20is%20not%20null"),
    ("/entity", "id=7&Attributes=%5B%22email%22%5D"),
    ("/entity.find", "%20filter=email%20is%20not%20null"),
    ("/entity.find", "sort_ON=%5B%22email%22%5D"),
    ("/entity", "id=7&key%5Battribute=email"),
];

#[test]
fn look_alike_parameter_names_are_refused_and_never_reach_the_upstream() {
    let (up, gw) = gateway_with_default_upstream();
    for (path, extra) in LOOK_ALIKES {
        let body = format!("type_name=user&{extra}");
        let r = gw.raw(&form_post(path, "reader", &body), false);
        assert_eq!(r.status(), 400, "{path} {extra}: {r:?}");
        let v = json_of(&r);
        assert_eq!(v["error"], "invalid_argument", "{v}");
        assert!(
            v["error_description"]
                .as_str()
                .unwrap()
                .contains("could be read as one it checks"),
            "{v}"
        );
    }
    // The writer's allowed name together with a look-alike of another.
    for body in [
        "type_name=user&id=7&attribute_name=givenName&value=%22Ann%22&attribute.name=email",
        "type_name=user&all_attributes=%5B%7B%22givenName%22%3A%22A%22%7D%5D&all.attributes=%5B%7B%22email%22%3A%22e%22%7D%5D",
    ] {
        let path = if body.contains("all_attributes") {
            "/entity.bulkCreate"
        } else {
            "/entity.update"
        };
        let r = gw.raw(&form_post(path, "writer", body), false);
        assert_eq!(r.status(), 400, "{body}: {r:?}");
    }
    up.assert_untouched();
}

#[test]
fn an_unknown_parameter_is_refused_naming_it_unless_the_route_drops_it() {
    let (up, gw) = gateway_with_default_upstream();
    let r = gw.get_as("reader", "/entity?type_name=user&id=7&debug=1");
    let v = r.assert_error(400, 200, "invalid_argument");
    assert_eq!(v["argument_name"], "debug");
    // A name another route takes is unknown here all the same.
    let r = gw.get_as("reader", "/entity?type_name=user&id=7&max_results=3");
    assert_eq!(
        r.assert_error(400, 200, "invalid_argument")["argument_name"],
        "max_results"
    );
    up.assert_untouched();

    // A route set to drop unknown parameters forwards only the named ones,
    // counts what it dropped, and still refuses look-alikes.
    let up = TestUpstream::capture_like();
    let gw = GatewayBuilder::new(&up)
        .metrics(json!({}))
        .setting(
            "routes",
            json!([{
                "path": "/entity", "access": "read", "response_records": "result",
                "unknown_params": "drop"
            }]),
        )
        .start();
    gw.get_as("reader", "/entity?type_name=user&id=7&debug=1&trace=x")
        .assert_ok();
    let seen = up.only();
    let names: Vec<String> = seen.params().into_iter().map(|(k, _)| k).collect();
    assert_eq!(names, ["type_name", "id"], "{seen:?}");
    let r = gw.get_as("reader", "/entity?type_name=user&id=7&Filter=x");
    r.assert_error(400, 200, "invalid_argument");
    assert_eq!(up.count(), 1, "a look-alike reached the upstream");
    let metrics = gw.scrape();
    assert!(
        metrics.contains("recordgate_dropped_parameters_total{route=\"/entity\"} 2"),
        "{metrics}"
    );
}

#[test]
fn parameters_reach_the_upstream_re_encoded_by_the_gateway() {
    let (up, gw) = gateway_with_default_upstream();
    // Percent-encoded name, `+` for a space in the value: the upstream sees
    // the gateway's own canonical encoding, never the client's bytes.
    gw.get_as(
        "fullreader",
        "/entity.find?%74ype_name=user&filter=givenName+%3D+%27A%27",
    )
    .assert_ok();
    let seen = up.only();
    assert_eq!(
        seen.query(),
        "type_name=user&filter=givenName+%3D+%27A%27",
        "{seen:?}"
    );
}

#[test]
fn upstream_response_headers_pass_only_when_allowed() {
    let up = TestUpstream::start(|r| {
        capture_handler(r)
            .header("set-cookie", "session=one-users-session; Path=/")
            .header("server", "internal-capture/1.2")
            .header("x-powered-by", "PHP/8")
            .header("via", "1.1 internal-lb.corp")
            .header("last-modified", "Tue, 01 Dec 2026 00:00:00 GMT")
            .header("etag", "\"unfiltered\"")
            .header("x-debug-email", "hidden-email@example.com")
            .header("cache-control", "public, max-age=600")
            .header("x-request-id", "upstream-chosen")
            .header("x-rate-limit", "99")
    });
    let gw = GatewayBuilder::new(&up)
        .setting("response_headers", json!({"allow": ["x-rate-limit"]}))
        .start();
    let r = gw.raw(
        &request("GET", "/entity?type_name=user&id=7", "reader", "", ""),
        false,
    );
    assert_eq!(r.status(), 200, "{r:?}");
    for name in [
        "set-cookie",
        "server",
        "x-powered-by",
        "via",
        "last-modified",
        "etag",
        "x-debug-email",
    ] {
        assert!(r.header(name).is_none(), "{name} passed: {r:?}");
    }
    assert!(!contains(&r.body, "hidden-email"), "{r:?}");
    for (_, v) in &r.headers {
        assert!(
            !v.contains("hidden-email"),
            "a hidden value in a header: {r:?}"
        );
    }
    assert_eq!(r.header("cache-control"), Some("no-store"), "{r:?}");
    assert!(
        r.header("content-type")
            .is_some_and(|v| v.starts_with("application/json")),
        "{r:?}"
    );
    assert_eq!(r.header("x-rate-limit"), Some("99"), "{r:?}");
    assert_ne!(r.header("x-request-id"), Some("upstream-chosen"), "{r:?}");
    assert!(r.header("x-request-id").is_some(), "{r:?}");
}

#[test]
fn settings_never_let_set_cookie_or_validators_through_by_accident() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, default_policy()).unwrap();
    for (allow, session_free, key_text) in [
        ("[set-cookie]", false, "upstream_is_session_free"),
        ("[etag]", false, "never passed on"),
        ("[last-modified]", true, "never passed on"),
        ("[X-Upper]", false, "lower-case"),
    ] {
        let settings = dir.path().join("settings.yaml");
        std::fs::write(
            &settings,
            format!(
                "listen: [\"127.0.0.1:1\"]\nupstream:\n  servers: [\"127.0.0.1:2\"]\npolicy: policy.yaml\nresponse_headers:\n  allow: {allow}\n  upstream_is_session_free: {session_free}\n"
            ),
        )
        .unwrap();
        let out = run_cli(&["check", "--config", settings.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{allow} accepted");
        assert!(err.contains("response_headers.allow[0]"), "{err}");
        assert!(err.contains(key_text), "{err}");
    }
}

#[test]
fn transfer_codings_other_than_chunked_alone_get_501() {
    let (up, gw) = gateway_with_default_upstream();
    let chunked = "9\r\ntype_name\r\n0\r\n\r\n";
    for te in [
        "Transfer-Encoding: gzip, chunked\r\n",
        "Transfer-Encoding: identity, chunked\r\n",
        "Transfer-Encoding: chunked, chunked\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
    ] {
        let req = format!(
            "POST /entity HTTP/1.1\r\nHost: gw\r\nAuthorization: {}\r\nContent-Type: application/x-www-form-urlencoded\r\n{te}\r\n{chunked}",
            basic("reader", "reader-secret")
        );
        let mut s = gw.connect();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 501"), "{te:?}: {text}");
        assert!(
            !text.contains("HTTP/1.1 200"),
            "{te:?} was read as chunked: {text}"
        );
    }
    up.assert_untouched();
}

#[test]
fn content_encodings_other_than_identity_on_any_line_get_415() {
    let (up, gw) = gateway_with_default_upstream();
    for ce in [
        "Content-Encoding: identity\r\nContent-Encoding: gzip\r\n",
        "Content-Encoding: br\r\n",
        "Content-Encoding: identit\u{00e9}\r\n",
    ] {
        let r = gw.raw(
            &request(
                "POST",
                "/entity",
                "reader",
                &format!("Content-Type: application/x-www-form-urlencoded\r\n{ce}"),
                "type_name=user&id=7",
            ),
            false,
        );
        assert_eq!(r.status(), 415, "{ce:?}: {r:?}");
    }
    up.assert_untouched();
}

/// Sends raw bytes and returns the first status code answered (0: none).
fn first_status(gw: &Gateway, bytes: &[u8]) -> u16 {
    let mut s = gw.connect();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(bytes);
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    String::from_utf8_lossy(&got)
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_request_without_a_valid_host_or_with_an_odd_target_is_refused() {
    let (up, gw) = gateway_with_default_upstream();
    let auth = basic("reader", "reader-secret");
    for (what, req) in [
        (
            "no Host",
            format!("GET /entity?type_name=user&id=7 HTTP/1.1\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n"),
        ),
        (
            "Host: a b/c",
            format!("GET /entity?type_name=user&id=7 HTTP/1.1\r\nHost: a b/c\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n"),
        ),
        (
            "two Hosts",
            format!("GET /entity?type_name=user&id=7 HTTP/1.1\r\nHost: a\r\nHost: b\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n"),
        ),
        (
            "absolute form",
            format!("GET http://gw/entity?type_name=user&id=7 HTTP/1.1\r\nHost: gw\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n"),
        ),
        (
            "asterisk form",
            format!("GET * HTTP/1.1\r\nHost: gw\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n"),
        ),
    ] {
        assert_eq!(first_status(&gw, req.as_bytes()), 400, "{what}");
    }
    up.assert_untouched();
    // A space or control byte in the target: Pingora percent-encodes such a
    // line before parsing; the gateway compares with the client's own bytes
    // and refuses it (RFC 9112 §3.2), in the path and in the query.
    for (what, target) in [
        ("a tab in the path", "/entity\t?type_name=user&id=7"),
        ("a space in the path", "/entity x?type_name=user&id=7"),
        ("a space in the query", "/entity?type_name=user&id=7 &x"),
        ("a tab in the query", "/entity?type_name=user&id=\t7"),
        ("a NUL in the query", "/entity?type_name=user&id=7\0"),
        ("a DEL in the query", "/entity?type_name=user&id=7\x7f"),
        ("an escape in the query", "/entity?type_name=user&id=\x1b7"),
    ] {
        let req = format!("GET {target} HTTP/1.1\r\nHost: gw\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n");
        assert_eq!(first_status(&gw, req.as_bytes()), 400, "{what}");
    }
    let req = format!("GET /entity.find?type_name=user&filter=givenName\t=\t'A' HTTP/1.1\r\nHost: gw\r\nAuthorization: {}\r\nConnection: close\r\n\r\n", basic("fullreader", "fullreader-secret"));
    assert_eq!(first_status(&gw, req.as_bytes()), 400);
    up.assert_untouched();
    // The same characters sent encoded are values like any other: decoded,
    // checked, and re-encoded by the gateway.
    let req = format!("GET /entity.find?type_name=user&filter=givenName%09%3D%20'A' HTTP/1.1\r\nHost: gw\r\nAuthorization: {}\r\nConnection: close\r\n\r\n", basic("fullreader", "fullreader-secret"));
    assert_eq!(first_status(&gw, req.as_bytes()), 200);
    assert_eq!(
        up.only().query(),
        "type_name=user&filter=givenName%09%3D+%27A%27"
    );
    // HTTP/1.0 has no Host requirement.
    let req = format!("GET /entity?type_name=user&id=7 HTTP/1.0\r\nAuthorization: {auth}\r\n\r\n");
    assert_eq!(first_status(&gw, req.as_bytes()), 200);
}

fn expect_request(client: &str, secret: &str, version: &str, body: &str) -> String {
    format!(
        "POST /entity.update {version}\r\nHost: gw\r\nAuthorization: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        basic(client, secret),
        body.len()
    )
}

const UPDATE: &str = "type_name=user&id=7&attributes=%7B%22givenName%22%3A%22A%22%7D";

#[test]
fn continue_is_sent_only_to_a_caller_that_may_call_and_the_connection_is_kept() {
    let (up, gw) = gateway_with_default_upstream();
    // A wrong secret is answered at once, without asking for the body.
    let mut s = gw.connect();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(expect_request("writer", "wrong", "HTTP/1.1", UPDATE).as_bytes())
        .unwrap();
    let r = read_raw_response(&mut s, false);
    assert_eq!(r.status(), 401, "{r:?}");
    // So is a caller outside its allow-list.
    let mut s = gw.connect();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(expect_request("offsite", "offsite-secret", "HTTP/1.1", UPDATE).as_bytes())
        .unwrap();
    let r = read_raw_response(&mut s, false);
    assert_eq!(r.status(), 403, "{r:?}");
    up.assert_untouched();

    // A caller that may call gets 100, then its answer, on a connection
    // that stays open for the next request.
    let mut s = gw.connect();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(expect_request("writer", "writer-secret", "HTTP/1.1", UPDATE).as_bytes())
        .unwrap();
    let interim = read_raw_response(&mut s, true);
    assert_eq!(interim.status(), 100, "{interim:?}");
    s.write_all(UPDATE.as_bytes()).unwrap();
    let r = read_raw_response(&mut s, false);
    assert_eq!(r.status(), 200, "{r:?}");
    assert_ne!(r.header("connection"), Some("close"), "{r:?}");
    s.write_all(&request(
        "GET",
        "/entity?type_name=user&id=7",
        "writer",
        "",
        "",
    ))
    .unwrap();
    let again = read_raw_response(&mut s, false);
    assert_eq!(
        again.status(),
        200,
        "the connection was not kept: {again:?}"
    );
}

#[test]
fn expect_is_ignored_on_http_1_0() {
    let (_up, gw) = gateway_with_default_upstream();
    let mut s: TcpStream = gw.connect();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req = expect_request("writer", "writer-secret", "HTTP/1.0", UPDATE).into_bytes();
    req.extend_from_slice(UPDATE.as_bytes());
    s.write_all(&req).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(!text.contains(" 100 "), "100 Continue on HTTP/1.0: {text}");
    assert!(
        text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.0 200"),
        "{text}"
    );
}

#[test]
fn management_bodies_must_be_forms() {
    let (_up, gw) = gateway_with_default_upstream();
    let r = gw.raw(
        &request(
            "POST",
            "/clients/set_description",
            "owner",
            "Content-Type: text/plain\r\n",
            "for_client_id=reader&description=x",
        ),
        false,
    );
    assert_eq!(r.status(), 415, "{r:?}");
    // And take only their own parameters, after the caller is decided.
    let r = gw.raw(
        &form_post(
            "/clients/set_description",
            "owner",
            "for_client_id=reader&description=x&Description=y",
        ),
        false,
    );
    assert_eq!(r.status(), 400, "{r:?}");
    let r = gw.raw(
        &form_post(
            "/clients/set_description",
            "reader",
            "for_client_id=reader&description=x&Description=y",
        ),
        false,
    );
    assert_eq!(
        r.status(),
        403,
        "a refused caller learns nothing of the names: {r:?}"
    );
}

/// Reads one response (header and a `Content-Length` body) from a kept-alive
/// connection and returns its status.
fn read_one(s: &mut TcpStream) -> u16 {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while find(&got, b"\r\n\r\n").is_none() {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "connection closed early");
        got.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    head[9..12].parse().unwrap()
}

#[test]
fn the_target_check_reads_each_request_of_a_kept_alive_connection() {
    let (up, gw) = gateway_with_default_upstream();
    let auth = basic("fullreader", "fullreader-secret");
    let mut s = gw.connect();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // An encoded space, then a body whose bytes look like a request line,
    // then an encoded space again: each request is judged by its own line.
    let get = |q: &str| {
        format!("GET /entity.find?type_name=user&filter={q} HTTP/1.1\r\nHost: gw\r\nAuthorization: {auth}\r\n\r\n")
    };
    s.write_all(get("givenName%20=%20'A'").as_bytes()).unwrap();
    assert_eq!(read_one(&mut s), 200);
    let body =
        "type_name=user&id=7&x=GET /entity.find?type_name=user&filter=givenName%20=%20'B' HTTP/1.1";
    let post = format!("POST /entity HTTP/1.1\r\nHost: gw\r\nAuthorization: {auth}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    s.write_all(post.as_bytes()).unwrap();
    assert_eq!(read_one(&mut s), 400, "x is no parameter of /entity");
    s.write_all(get("givenName%20=%20'B'").as_bytes()).unwrap();
    assert_eq!(read_one(&mut s), 200);
    // The raw space of a later request is seen although an earlier one on
    // the connection was sent encoded.
    s.write_all(get("givenName =%20'A'").as_bytes()).unwrap();
    assert_eq!(read_one(&mut s), 400);
    assert_eq!(up.count(), 2);
}
