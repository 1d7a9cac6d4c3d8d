//! HTTP/2 downstream over h2c prior knowledge (`http2.h2c: true`): the same
//! fail-closed checks, filtering and framing as HTTP/1.1, the HTTP/2 limits
//! (concurrent streams, header list, malformed requests) and the
//! rapid-reset bound (CVE-2023-44487).
//!
//! Clients: reqwest with `http2_prior_knowledge()` for ordinary calls; the
//! `h2` crate's client for the rapid-reset flood; raw frames on a socket
//! where a client library would refuse to send what the test needs (a
//! connection-specific header, more streams than the server allows).
// A test (or bench) that cannot set up fails loudly; the no-panic rule is for the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn h2c_gateway(up: &TestUpstream) -> GatewayBuilder {
    GatewayBuilder::new(up).setting("http2", json!({"h2c": true}))
}

fn h2_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .http2_prior_knowledge()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Sends over HTTP/2 and checks the response really came over HTTP/2.
fn send_h2(rb: reqwest::blocking::RequestBuilder) -> Resp {
    let r = rb.send().expect("HTTP/2 request");
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    Resp::from(r)
}

fn get_h2(gw: &Gateway, client: &str, path: &str) -> Resp {
    send_h2(
        h2_client()
            .get(gw.url(path))
            .header("authorization", basic(client, &format!("{client}-secret"))),
    )
}

#[test]
fn a_read_over_h2c_is_filtered_like_over_http_1_1() {
    let up = TestUpstream::capture_like();
    let gw = h2c_gateway(&up).start();
    let r = get_h2(&gw, "reader", "/entity?type_name=user&id=7");
    let v = r.assert_ok();
    r.assert_no_hidden();
    assert_eq!(v["result"]["givenName"], "Ada7");
    assert!(v["result"].get("email").is_none(), "{v}");
    assert!(r.header("transfer-encoding").is_none());
    assert!(r.header("connection").is_none());
    assert_eq!(up.count(), 1);
    // The allow-list sees the HTTP/2 peer's address.
    get_h2(&gw, "local", "/entity?type_name=user&id=7").assert_ok();
    get_h2(&gw, "offsite", "/entity?type_name=user&id=7").assert_error(
        403,
        403,
        "client_permission_error",
    );
    // A HEAD ends its stream with no body.
    let r = send_h2(
        h2_client()
            .head(gw.url("/entity?type_name=user&id=7"))
            .header("authorization", basic("reader", "reader-secret")),
    );
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(up.count(), 3);
    // HTTP/1.1 on the same listener still works: the preface decides.
    gw.get_as("reader", "/entity?type_name=user&id=7")
        .assert_ok();
    assert_eq!(up.count(), 4);
}

#[test]
fn refusals_over_h2c_fail_closed_like_over_http_1_1() {
    let up = TestUpstream::capture_like();
    let gw = h2c_gateway(&up).start();
    let client = h2_client();
    // A refused caller.
    send_h2(
        client
            .get(gw.url("/entity?type_name=user&id=7"))
            .header("authorization", basic("reader", "wrong")),
    )
    .assert_error(401, 402, "invalid_client_credentials");
    // An unknown parameter.
    let r = get_h2(&gw, "reader", "/entity?type_name=user&id=7&debug=1");
    assert_eq!(
        r.assert_error(400, 200, "invalid_argument")["argument_name"],
        "debug"
    );
    // A compressed body.
    let r = send_h2(
        client
            .post(gw.url("/entity"))
            .header("authorization", basic("reader", "reader-secret"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("content-encoding", "gzip")
            .body("type_name=user&id=7"),
    );
    assert_eq!(r.status, 415, "{}", r.text());
    // A body over the limit.
    let r = send_h2(
        client
            .post(gw.url("/entity"))
            .header("authorization", basic("reader", "reader-secret"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("type_name=user&id=7&x={}", "a".repeat(2 << 20))),
    );
    r.assert_error(413, 200, "invalid_argument");
    // A header block over `limits.max_header_bytes` (16 KiB) but under the
    // HTTP/2 header list limit: the gateway's own check answers.
    let r = send_h2(
        client
            .get(gw.url("/entity?type_name=user&id=7"))
            .header("authorization", basic("reader", "reader-secret"))
            .header("x-padding", "p".repeat(20 << 10)),
    );
    assert_eq!(r.status, 431, "{}", r.text());
    up.assert_untouched();
    // The connection is still good for a proper call.
    let r = send_h2(
        client
            .get(gw.url("/entity?type_name=user&id=7"))
            .header("authorization", basic("reader", "reader-secret")),
    );
    r.assert_ok();
}

#[test]
fn a_large_response_streams_whole_and_filtered_over_h2c() {
    let up = TestUpstream::start(|_| {
        let results: Vec<Value> = (0..2000).map(sample_record).collect();
        Reply::json(json!({"stat": "ok", "result_count": 2000, "results": results}))
    });
    let gw = h2c_gateway(&up)
        .setting("limits", json!({"stream_responses_over_bytes": 65536}))
        .start();
    let r = get_h2(&gw, "reader", "/entity.find?type_name=user");
    assert_eq!(r.status, 200);
    assert!(r.header("transfer-encoding").is_none());
    let v = r.json();
    assert_eq!(v["results"].as_array().unwrap().len(), 2000);
    assert_eq!(v["result_count"], 2000);
    r.assert_no_hidden();
}

#[test]
fn the_management_api_answers_over_h2c() {
    let up = TestUpstream::capture_like();
    let gw = h2c_gateway(&up).start();
    let client = h2_client();
    let v = send_h2(
        client
            .post(gw.url("/clients/list"))
            .header("authorization", basic("owner", "owner-secret"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(""),
    )
    .assert_ok();
    assert!(v.to_string().contains("reader"), "{v}");
    // And refuses as over HTTP/1.1.
    let r = send_h2(
        client
            .post(gw.url("/clients/list"))
            .header("authorization", basic("owner", "wrong"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(""),
    );
    assert_eq!(r.status, 401, "{}", r.text());
    up.assert_untouched();
}

#[test]
fn without_h2c_a_prior_knowledge_client_is_refused() {
    let (up, gw) = gateway_with_default_upstream();
    let sent = h2_client()
        .get(gw.url("/entity?type_name=user&id=7"))
        .header("authorization", basic("reader", "reader-secret"))
        .send();
    assert!(sent.is_err(), "{sent:?}");
    up.assert_untouched();
}

#[test]
fn settings_refuse_http2_limits_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policy.yaml"), default_policy()).unwrap();
    let settings = dir.path().join("settings.yaml");
    std::fs::write(
        &settings,
        "listen: ['127.0.0.1:1']\nupstream: {servers: ['127.0.0.1:2']}\npolicy: policy.yaml\n\
         http2: {h2c: true, max_concurrent_streams: 0, stream_window_bytes: 10}\n",
    )
    .unwrap();
    let out = run_cli(&["check", "--config", settings.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("http2.max_concurrent_streams: must be between 1 and 10000"),
        "{stderr}"
    );
    assert!(stderr.contains("http2.stream_window_bytes"), "{stderr}");
}

// ---------------------------------------------------------------------------
// Raw frames
// ---------------------------------------------------------------------------

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;
const PROTOCOL_ERROR: u32 = 1;
const REFUSED_STREAM: u32 = 7;
const ENHANCE_YOUR_CALM: u32 = 11;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK integer (RFC 7541 §5.1) with a 7-bit prefix and the H bit clear.
fn hpack_len(out: &mut Vec<u8>, mut n: usize) {
    if n < 127 {
        out.push(n as u8);
        return;
    }
    out.push(127);
    n -= 127;
    while n >= 128 {
        out.push((n % 128 + 128) as u8);
        n /= 128;
    }
    out.push(n as u8);
}

/// A header block of literal fields without indexing (RFC 7541 §6.2.2):
/// the one HPACK form a test can write by hand, and one a client library
/// would not let carry a connection-specific header.
fn header_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0);
        hpack_len(&mut out, name.len());
        out.extend_from_slice(name.as_bytes());
        hpack_len(&mut out, value.len());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

fn get_fields(gw: &Gateway, client: &str) -> Vec<(&'static str, String)> {
    vec![
        (":method", "GET".into()),
        (":scheme", "http".into()),
        (":authority", format!("127.0.0.1:{}", gw.addr.port())),
        (":path", "/entity?type_name=user&id=7".into()),
        ("authorization", basic(client, &format!("{client}-secret"))),
    ]
}

fn headers_frame(stream: u32, fields: &[(&str, String)]) -> Vec<u8> {
    let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    frame(
        HEADERS,
        END_STREAM | END_HEADERS,
        stream,
        &header_block(&fields),
    )
}

/// One frame off the socket: (type, flags, stream, payload); None at EOF.
fn read_frame(s: &mut TcpStream) -> Option<(u8, u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    s.read_exact(&mut head).ok()?;
    let len = (head[0] as usize) << 16 | (head[1] as usize) << 8 | head[2] as usize;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).ok()?;
    Some((head[3], head[4], stream, payload))
}

/// How each stream ended, read until every one in `streams` has ended or
/// the connection closes: `Ok(status)` for a response (the `:status` is
/// the first byte of an HPACK-indexed one, so only "answered" is known),
/// `Err(code)` for RST_STREAM.
fn outcomes(s: &mut TcpStream, streams: &[u32]) -> Vec<(u32, Result<(), u32>)> {
    let mut out: Vec<(u32, Result<(), u32>)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while out.len() < streams.len() && Instant::now() < deadline {
        let Some((kind, flags, stream, payload)) = read_frame(s) else {
            break;
        };
        match kind {
            SETTINGS if flags & 1 == 0 => {
                s.write_all(&frame(SETTINGS, 1, 0, &[])).unwrap();
            }
            HEADERS | DATA if flags & END_STREAM != 0 => out.push((stream, Ok(()))),
            RST_STREAM => {
                let code = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                out.push((stream, Err(code)));
            }
            GOAWAY => break,
            _ => {}
        }
    }
    out
}

/// Reads (and drops) whatever comes until the gateway closes the
/// connection: true; false if the socket's 10 s read time-out struck first.
fn closed_by_gateway(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) => {
                return !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                )
            }
        }
    }
}

fn h2c_connect(gw: &Gateway) -> TcpStream {
    let mut s = gw.connect();
    s.write_all(PREFACE).unwrap();
    s.write_all(&frame(SETTINGS, 0, 0, &[])).unwrap();
    s
}

#[test]
fn connection_specific_headers_make_an_h2_request_malformed() {
    let up = TestUpstream::capture_like();
    let gw = h2c_gateway(&up).start();
    let mut s = h2c_connect(&gw);
    let bad = [
        ("transfer-encoding", "chunked"),
        ("connection", "keep-alive"),
        ("te", "gzip"),
        ("keep-alive", "timeout=5"),
        ("upgrade", "h2c"),
    ];
    let mut streams = Vec::new();
    for (i, (name, value)) in bad.iter().enumerate() {
        let id = 1 + 2 * i as u32;
        let mut fields = get_fields(&gw, "reader");
        fields.push((*name, value.to_string()));
        s.write_all(&headers_frame(id, &fields)).unwrap();
        streams.push(id);
    }
    // The control: the same request without the header is served, so the
    // resets above are for the header alone.
    let good = 1 + 2 * bad.len() as u32;
    s.write_all(&headers_frame(good, &get_fields(&gw, "reader")))
        .unwrap();
    streams.push(good);
    let got = outcomes(&mut s, &streams);
    for id in &streams[..bad.len()] {
        assert!(
            got.contains(&(*id, Err(PROTOCOL_ERROR))),
            "stream {id}: {got:?}"
        );
    }
    assert!(got.contains(&(good, Ok(()))), "{got:?}");
    assert_eq!(up.count(), 1, "only the control reached the upstream");
}

#[test]
fn streams_beyond_the_concurrency_limit_are_refused_and_never_served() {
    let up = TestUpstream::start(|r| capture_handler(r).delay(Duration::from_millis(500)));
    let gw = GatewayBuilder::new(&up)
        .setting("http2", json!({"h2c": true, "max_concurrent_streams": 4}))
        .start();
    // Ten requests at once, without waiting for the server's SETTINGS: a
    // client that ignores the limit.
    let mut s = h2c_connect(&gw);
    let streams: Vec<u32> = (0..10).map(|i| 1 + 2 * i).collect();
    let mut burst = Vec::new();
    for id in &streams {
        burst.extend(headers_frame(*id, &get_fields(&gw, "reader")));
    }
    s.write_all(&burst).unwrap();
    let got = outcomes(&mut s, &streams);
    let served = got.iter().filter(|(_, o)| o.is_ok()).count();
    let refused = got
        .iter()
        .filter(|(_, o)| *o == Err(REFUSED_STREAM))
        .count();
    assert_eq!(served, 4, "{got:?}");
    assert_eq!(refused, 6, "{got:?}");
    assert_eq!(up.count(), 4);

    // A client that keeps to the limit is served in full on one connection.
    let client = h2_client();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..12)
            .map(|_| {
                let client = &client;
                let gw = &gw;
                scope.spawn(move || {
                    send_h2(
                        client
                            .get(gw.url("/entity?type_name=user&id=7"))
                            .header("authorization", basic("reader", "reader-secret")),
                    )
                })
            })
            .collect();
        for h in handles {
            let r = h.join().unwrap();
            r.assert_ok();
            r.assert_no_hidden();
        }
    });
    assert_eq!(up.count(), 16);
}

#[test]
fn malformed_requests_past_the_budget_close_the_connection() {
    let up = TestUpstream::capture_like();
    let gw = GatewayBuilder::new(&up)
        .setting("http2", json!({"h2c": true, "max_malformed_streams": 3}))
        .metrics(json!({}))
        .start();
    let mut s = h2c_connect(&gw);
    let mut burst = Vec::new();
    // A request with neither `:authority` nor `Host` is refused (400) by
    // Pingora before the gateway; the third one ends the connection.
    for i in 0..5u32 {
        let mut fields = get_fields(&gw, "reader");
        fields.remove(2);
        burst.extend(headers_frame(1 + 2 * i, &fields));
    }
    s.write_all(&burst).unwrap();
    let mut goaway = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match read_frame(&mut s) {
            Some((GOAWAY, _, _, payload)) => {
                goaway = Some(u32::from_be_bytes([
                    payload[4], payload[5], payload[6], payload[7],
                ]));
            }
            Some(_) => {}
            None => break,
        }
    }
    assert_eq!(goaway, Some(ENHANCE_YOUR_CALM));
    let scraped = gw.scrape();
    assert_eq!(
        metric(
            &scraped,
            "recordgate_http2_goaways_total",
            &[("reason", "malformed")]
        ),
        1.0
    );
    up.assert_untouched();
}

#[test]
fn h2c_waits_for_a_request_only_within_the_header_deadline() {
    let up = TestUpstream::capture_like();
    let gw = GatewayBuilder::new(&up)
        .setting("http2", json!({"h2c": true}))
        .setting(
            "timeouts",
            json!({"downstream_header_ms": 500, "upstream_connect_ms": 1000}),
        )
        .start();
    // Nothing at all, and half a preface: both are closed, not held.
    for sent in [&b""[..], &PREFACE[..10]] {
        let mut s = gw.connect();
        s.write_all(sent).unwrap();
        assert!(closed_by_gateway(&mut s), "{sent:?}: connection held");
    }
    // A connection past its preface with nothing in progress is closed too,
    // after `http2.idle_timeout_ms`.
    let gw = GatewayBuilder::new(&up)
        .setting("http2", json!({"h2c": true, "idle_timeout_ms": 300}))
        .start();
    let mut s = h2c_connect(&gw);
    assert!(
        closed_by_gateway(&mut s),
        "an idle HTTP/2 connection was held"
    );
    up.assert_untouched();
}

// ---------------------------------------------------------------------------
// Rapid reset (CVE-2023-44487)
// ---------------------------------------------------------------------------

/// Writes `pairs` HEADERS + RST_STREAM(CANCEL) pairs on one connection as
/// fast as the socket takes them, while another thread drains what the
/// gateway sends. Returns how many pairs were written and the GOAWAY error
/// code, if one came.
fn flood(gw: &Gateway, pairs: u32, batch_size: u32, pause: Duration) -> (u32, Option<u32>) {
    let mut s = h2c_connect(gw);
    let mut reader = s.try_clone().unwrap();
    let drain = std::thread::spawn(move || {
        let mut goaway = None;
        while let Some((kind, _, _, payload)) = read_frame(&mut reader) {
            if kind == GOAWAY {
                goaway = Some(u32::from_be_bytes([
                    payload[4], payload[5], payload[6], payload[7],
                ]));
            }
        }
        goaway
    });
    let fields = get_fields(gw, "reader");
    let mut sent = 0;
    // In batches, so that a closed connection stops the flood.
    'flood: for batch in 0..pairs.div_ceil(batch_size) {
        let n = batch_size.min(pairs - batch * batch_size);
        let mut bytes = Vec::new();
        for i in 0..n {
            let id = 1 + 2 * (batch * batch_size + i);
            bytes.extend(headers_frame(id, &fields));
            bytes.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
        }
        if s.write_all(&bytes).is_err() {
            break 'flood;
        }
        sent += n;
        std::thread::sleep(pause);
    }
    // Bounded: the socket's read time-out ends the drain if nothing closes.
    let _ = s.shutdown(std::net::Shutdown::Write);
    (sent, drain.join().unwrap())
}

#[test]
fn a_rapid_reset_flood_gets_goaway_and_other_clients_are_still_served() {
    let up = TestUpstream::capture_like();
    let gw = h2c_gateway(&up).metrics(json!({})).start();
    let (sent, goaway) = flood(&gw, 10_000, 100, Duration::ZERO);
    assert_eq!(
        goaway,
        Some(ENHANCE_YOUR_CALM),
        "no GOAWAY after {sent} pairs"
    );
    let scraped = gw.scrape();
    let goaways = |reason| {
        metric(
            &scraped,
            "recordgate_http2_goaways_total",
            &[("reason", reason)],
        )
    };
    assert_eq!(goaways("h2") + goaways("resets"), 1.0, "{scraped}");
    // Streams served are bounded by the reset budgets, not by the flood.
    assert!(up.count() < 1_000, "{} reached the upstream", up.count());
    // Another client, on both protocols, is answered.
    get_h2(&gw, "reader", "/entity?type_name=user&id=7").assert_ok();
    gw.get_as("reader", "/entity?type_name=user&id=7")
        .assert_ok();
}

#[test]
fn a_paced_rapid_reset_flood_is_closed_by_the_lifetime_budget() {
    // The `h2` crate's queue bound lifted: the flood paced under it (ten
    // pairs at a time) meets the gateway's own per-connection count.
    let up = TestUpstream::capture_like();
    let gw = GatewayBuilder::new(&up)
        .setting(
            "http2",
            json!({"h2c": true, "max_pending_reset_streams": 10000, "max_reset_streams": 50}),
        )
        .metrics(json!({}))
        .start();
    let (sent, goaway) = flood(&gw, 2_000, 10, Duration::from_millis(2));
    assert_eq!(
        goaway,
        Some(ENHANCE_YOUR_CALM),
        "no GOAWAY after {sent} pairs"
    );
    // Closed by this bound, not another (counted before the GOAWAY is sent).
    let scraped = gw.scrape();
    assert_eq!(
        metric(
            &scraped,
            "recordgate_http2_goaways_total",
            &[("reason", "resets")]
        ),
        1.0
    );
    get_h2(&gw, "reader", "/entity?type_name=user&id=7").assert_ok();
}

#[test]
fn streams_the_client_reset_still_count_until_the_gateway_is_done_with_them() {
    // Each call takes the upstream a second; the arrival times show when
    // the gateway started each one.
    let arrivals = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = arrivals.clone();
    let up = TestUpstream::start(move |r| {
        seen.lock().unwrap().push(Instant::now());
        capture_handler(r).delay(Duration::from_secs(1))
    });
    let gw = GatewayBuilder::new(&up)
        .setting(
            "http2",
            json!({"h2c": true, "max_concurrent_streams": 2,
                   "max_pending_reset_streams": 1000, "max_reset_streams": 1000}),
        )
        .start();
    let mut s = h2c_connect(&gw);
    let fields = get_fields(&gw, "reader");
    s.write_all(&[headers_frame(1, &fields), headers_frame(3, &fields)].concat())
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while up.count() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(up.count(), 2);
    // The client resets both: for the `h2` layer they are closed, and two
    // more may open at once; the gateway's work on the first two goes on.
    let mut next = Vec::new();
    for id in [1u32, 3] {
        next.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    next.extend(headers_frame(5, &fields));
    next.extend(headers_frame(7, &fields));
    s.write_all(&next).unwrap();
    let got = outcomes(&mut s, &[5, 7]);
    assert!(
        got.contains(&(5, Ok(()))) && got.contains(&(7, Ok(()))),
        "{got:?}"
    );
    let arrivals = arrivals.lock().unwrap();
    assert_eq!(arrivals.len(), 4);
    // Streams 5 and 7 were started only once the work on 1 and 3 was over.
    assert!(
        arrivals[2].duration_since(arrivals[0]) >= Duration::from_millis(900),
        "a third request was worked on while two were in progress"
    );
}

#[test]
fn at_shutdown_an_h2_connection_gets_goaway_and_its_request_in_flight_is_answered() {
    let up = TestUpstream::start(|r| capture_handler(r).delay(Duration::from_millis(500)));
    let mut gw = h2c_gateway(&up)
        .server_setting("grace_period_secs", json!(2))
        .start();
    let mut s = h2c_connect(&gw);
    s.write_all(&headers_frame(1, &get_fields(&gw, "reader")))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while up.count() < 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    gw.signal("TERM");
    let (mut goaway, mut answered) = (false, false);
    while let Some((kind, flags, stream, _)) = read_frame(&mut s) {
        match kind {
            SETTINGS if flags & 1 == 0 => s.write_all(&frame(SETTINGS, 1, 0, &[])).unwrap(),
            GOAWAY => goaway = true,
            HEADERS | DATA if stream == 1 && flags & END_STREAM != 0 => answered = true,
            _ => {}
        }
    }
    let _ = gw.wait_exit(Duration::from_secs(6));
    assert!(goaway, "no GOAWAY at shutdown");
    assert!(answered, "the request in flight was not answered");
}

#[test]
fn with_h2c_on_the_http_1_1_header_deadline_still_counts_from_the_first_byte() {
    // Telling HTTP/2 from HTTP/1.1 waits for the preface's 24 bytes; that
    // wait is part of the header deadline, not added to it.
    let up = TestUpstream::capture_like();
    let gw = GatewayBuilder::new(&up)
        .setting("http2", json!({"h2c": true}))
        .setting(
            "timeouts",
            json!({"downstream_header_ms": 2000, "upstream_connect_ms": 1000}),
        )
        .start();
    let request = b"GET /entity?type_name=user&id=7 HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut s = gw.connect();
    // The first 24 bytes over 1.6 s, the rest by 2.8 s: past the deadline
    // from the first byte, within it from the end of the peek.
    for (i, b) in request.iter().enumerate() {
        if s.write_all(&[*b]).is_err() {
            break;
        }
        let pause = if i < 24 { 67 } else { 41 };
        std::thread::sleep(Duration::from_millis(pause));
    }
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(
        !contains(&answer, "HTTP/1.1"),
        "answered after the deadline: {}",
        String::from_utf8_lossy(&answer)
    );
}
