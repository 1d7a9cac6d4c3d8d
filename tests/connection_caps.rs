//! Caps on open client connections: per client address, per trusted proxy,
//! and in total. A connection over a cap is closed as it is accepted,
//! before a byte of it is read, and counted.

// A test (or bench) that cannot set up fails loudly; the no-panic rule is for the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// Whether the gateway answers a request on `s` (false: it closed the
/// connection without a word).
fn answers(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = format!(
        "GET /entity?type_name=user&id=7 HTTP/1.1\r\nHost: gw\r\nAuthorization: {}\r\n\r\n",
        basic("reader", "reader-secret")
    );
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 12];
    match s.read_exact(&mut buf) {
        Ok(()) => {
            assert_eq!(&buf[..9], b"HTTP/1.1 ", "{}", String::from_utf8_lossy(&buf));
            // The rest of the answer is left unread: the connection stays
            // open and counted.
            true
        }
        Err(_) => false,
    }
}

/// Waits (bounded) until the gateway counts `n` open connections.
fn wait_open(gw: &Gateway, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let open = metric(&gw.scrape(), "recordgate_connections_open", &[]);
        if open == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "open connections stayed {open}, not {n}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn refused(gw: &Gateway, limit: &str) -> f64 {
    metric(
        &gw.scrape(),
        "recordgate_connections_refused_total",
        &[("limit", limit)],
    )
}

#[test]
fn connections_over_the_per_address_cap_are_refused_and_counted() {
    let up = TestUpstream::capture_like();
    let gw = GatewayBuilder::new(&up)
        .metrics(json!({}))
        .setting("limits", json!({"max_connections_per_address": 3}))
        .start();
    let mut held: Vec<TcpStream> = (0..3).map(|_| gw.connect()).collect();
    for s in &mut held {
        assert!(answers(s));
    }
    wait_open(&gw, 3.0);
    assert_eq!(refused(&gw, "per_address"), 0.0);
    let mut fourth = gw.connect();
    assert!(
        !answers(&mut fourth),
        "a fourth connection from one address was served"
    );
    assert_eq!(refused(&gw, "per_address"), 1.0);
    assert_eq!(up.count(), 3);
    // A closed connection gives its place back.
    drop(held.pop());
    wait_open(&gw, 2.0);
    let mut again = gw.connect();
    assert!(answers(&mut again));
    wait_open(&gw, 3.0);
}

#[test]
fn the_total_cap_counts_every_address() {
    let up = TestUpstream::capture_like();
    let gw = GatewayBuilder::new(&up)
        .metrics(json!({}))
        .setting(
            "limits",
            json!({"max_connections_per_address": 100, "max_connections": 2}),
        )
        .start();
    // The start's readiness probe is a connection too: once it is closed,
    // the two places are free.
    wait_open(&gw, 0.0);
    let mut held: Vec<TcpStream> = (0..2).map(|_| gw.connect()).collect();
    for s in &mut held {
        assert!(answers(s));
    }
    wait_open(&gw, 2.0);
    let mut third = gw.connect();
    assert!(!answers(&mut third));
    assert_eq!(refused(&gw, "total"), 1.0);
    assert_eq!(refused(&gw, "per_address"), 0.0);
}

#[test]
fn trusted_proxies_have_their_own_cap() {
    let up = TestUpstream::capture_like();
    let gw = GatewayBuilder::new(&up)
        .metrics(json!({}))
        .setting("trusted_proxies", json!(["127.0.0.1/32"]))
        .setting(
            "limits",
            json!({"max_connections_per_address": 1, "max_connections_per_trusted_proxy": 4}),
        )
        .start();
    let mut held: Vec<TcpStream> = (0..4).map(|_| gw.connect()).collect();
    for s in &mut held {
        assert!(answers(s), "a trusted proxy is held to the per-address cap");
    }
    let mut fifth = gw.connect();
    assert!(!answers(&mut fifth));
    assert_eq!(refused(&gw, "per_address"), 1.0);
}
