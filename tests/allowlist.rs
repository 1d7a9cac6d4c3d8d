//! The per-client IP allow-list: TCP peer by default, `X-Forwarded-For` only
//! from trusted proxies, IPv4 and IPv6.
// A test (or bench) that cannot set up fails loudly; the no-panic rule is for the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::json;

const ENTITY: &str = "/entity?type_name=user&id=7";

fn assert_ip_denied(r: &Resp) {
    let v = r.assert_error(403, 403, "client_permission_error");
    assert!(!r.text().contains("Ada7"), "{v}");
}

fn get_with_xff(gw: &Gateway, client: &str, xff: &str) -> Resp {
    gw.send(
        http_client()
            .get(gw.url(ENTITY))
            .header("authorization", basic(client, &format!("{client}-secret")))
            .header("x-forwarded-for", xff),
    )
}

#[test]
fn caller_outside_the_allow_list_is_refused_and_upstream_untouched() {
    let (up, gw) = gateway_with_default_upstream();
    assert_ip_denied(&gw.get_as("offsite", ENTITY));
    up.assert_untouched();
}

#[test]
fn caller_inside_the_allow_list_is_served() {
    let (up, gw) = gateway_with_default_upstream();
    let v = gw.get_as("local", ENTITY).assert_ok();
    assert_eq!(v["result"]["givenName"], "Ada7");
    // The upstream is told the resolved client address.
    assert_eq!(up.only().header("x-forwarded-for"), Some("127.0.0.1"));
}

#[test]
fn client_without_an_allow_list_is_allowed_from_anywhere() {
    let (_up, gw) = gateway_with_default_upstream();
    gw.get_as("fullreader", ENTITY).assert_ok();
}

#[test]
fn wrong_credentials_are_checked_before_the_allow_list() {
    // An outsider with a bad secret learns nothing about the allow-list.
    let (up, gw) = gateway_with_default_upstream();
    let r = gw.get(ENTITY, Some(("offsite", "wrong")));
    r.assert_error(401, 402, "invalid_client_credentials");
    up.assert_untouched();
}

const V6_CLIENTS: &str = r#"
clients:
  v6ok:
    secret: v6ok-secret
    features: [direct_read_access]
    whitelist: ["::1/128"]
  v6net:
    secret: v6net-secret
    features: [direct_read_access]
    whitelist: ["10.0.0.0/8", "::/127"]
  v4only:
    secret: v4only-secret
    features: [direct_read_access]
    whitelist: ["127.0.0.0/8", "0.0.0.0/0"]
  v6other:
    secret: v6other-secret
    features: [direct_read_access]
    whitelist: ["2001:db8::/32"]
"#;

#[test]
fn ipv6_loopback_caller_matches_an_ipv6_allow_list() {
    let up = TestUpstream::capture_like();
    let gw = GatewayBuilder::new(&up)
        .policy(&policy_with_clients(V6_CLIENTS))
        .ipv6()
        .start();
    assert!(gw.base.starts_with("http://[::1]:"));
    let v = gw.get_as("v6ok", ENTITY).assert_ok();
    assert_eq!(v["result"]["givenName"], "Ada7");
    gw.get_as("v6net", ENTITY).assert_ok();
    assert_eq!(up.count(), 2);
    assert_eq!(up.requests()[0].header("x-forwarded-for"), Some("::1"));
}

#[test]
fn ipv6_loopback_caller_is_refused_by_a_list_without_it() {
    let up = TestUpstream::capture_like();
    let gw = GatewayBuilder::new(&up)
        .policy(&policy_with_clients(V6_CLIENTS))
        .ipv6()
        .start();
    // IPv4 ranges, even 0.0.0.0/0, do not cover ::1.
    assert_ip_denied(&gw.get_as("v4only", ENTITY));
    assert_ip_denied(&gw.get_as("v6other", ENTITY));
    up.assert_untouched();
}

#[test]
fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let (up, gw) = gateway_with_default_upstream();
    // A forged allowed address does not get an outsider in.
    assert_ip_denied(&get_with_xff(&gw, "offsite", "203.0.113.5"));
    assert_ip_denied(&get_with_xff(&gw, "offsite", "127.0.0.1, 203.0.113.5"));
    up.assert_untouched();
    // Nor does a forged outside address lock an insider out.
    get_with_xff(&gw, "local", "198.51.100.9").assert_ok();
    // And the forged value is not passed on as the client address.
    assert_eq!(up.only().header("x-forwarded-for"), Some("127.0.0.1"));
}

fn trusted_gateway(up: &TestUpstream) -> Gateway {
    GatewayBuilder::new(up)
        .setting("trusted_proxies", json!(["127.0.0.1/32"]))
        .start()
}

#[test]
fn forwarded_for_from_a_trusted_proxy_is_used_when_allowed() {
    let up = TestUpstream::capture_like();
    let gw = trusted_gateway(&up);
    get_with_xff(&gw, "offsite", "203.0.113.5").assert_ok();
    assert_eq!(up.only().header("x-forwarded-for"), Some("203.0.113.5"));
}

#[test]
fn forwarded_for_from_a_trusted_proxy_is_used_when_refused() {
    let up = TestUpstream::capture_like();
    let gw = trusted_gateway(&up);
    assert_ip_denied(&get_with_xff(&gw, "offsite", "198.51.100.7"));
    // The loopback client is now judged by the forwarded address, not the peer.
    assert_ip_denied(&get_with_xff(&gw, "local", "203.0.113.5"));
    up.assert_untouched();
}

#[test]
fn forwarded_for_is_walked_right_to_left_past_trusted_hops() {
    let up = TestUpstream::capture_like();
    let gw = trusted_gateway(&up);
    // Rightmost untrusted hop is 203.0.113.5 (127.0.0.1 is a trusted proxy).
    get_with_xff(&gw, "offsite", "198.51.100.1, 203.0.113.5, 127.0.0.1").assert_ok();
    // A client-supplied allowed address to the left of an untrusted hop is not used.
    assert_ip_denied(&get_with_xff(&gw, "offsite", "203.0.113.5, 198.51.100.1"));
    assert_eq!(up.count(), 1);
}

#[test]
fn ipv4_mapped_ipv6_forwarded_address_is_normalised() {
    let up = TestUpstream::capture_like();
    let gw = trusted_gateway(&up);
    get_with_xff(&gw, "offsite", "::ffff:203.0.113.5").assert_ok();
    assert_ip_denied(&get_with_xff(&gw, "offsite", "::ffff:198.51.100.1"));
    assert_eq!(up.count(), 1);
}

#[test]
fn malformed_forwarded_for_from_a_trusted_peer_is_refused() {
    let up = TestUpstream::capture_like();
    let gw = trusted_gateway(&up);
    for bad in ["not-an-ip", "203.0.113.5, garbage", "999.1.1.1", ""] {
        let r = get_with_xff(&gw, "local", bad);
        assert!(
            r.status == 400 || r.status == 403,
            "XFF {bad:?}: {} {}",
            r.status,
            r.text()
        );
        assert_eq!(r.json()["stat"], "error");
        assert!(!r.text().contains("Ada7"));
    }
    up.assert_untouched();
}

#[test]
fn large_allow_list_still_matches() {
    let mut cidrs: Vec<String> = (0..5000u32)
        .map(|i| format!("10.{}.{}.0/24", (i >> 8) & 0xff, i & 0xff))
        .collect();
    cidrs.push("127.0.0.1/32".into());
    let mut others = cidrs.clone();
    others.pop();
    let clients = format!(
        "clients:\n  big:\n    secret: big-secret\n    features: [direct_read_access]\n    whitelist: {}\n  bigout:\n    secret: bigout-secret\n    features: [direct_read_access]\n    whitelist: {}\n",
        serde_json::to_string(&cidrs).unwrap(),
        serde_json::to_string(&others).unwrap()
    );
    let up = TestUpstream::capture_like();
    let gw = GatewayBuilder::new(&up)
        .policy(&policy_with_clients(&clients))
        .start();
    gw.get_as("big", ENTITY).assert_ok();
    assert_ip_denied(&gw.get_as("bigout", ENTITY));
    assert_eq!(up.count(), 1);
}

#[test]
fn repeated_forwarded_for_headers_are_read_as_one_list() {
    let up = TestUpstream::capture_like();
    let gw = trusted_gateway(&up);
    // The last header holds the hop nearest to the gateway.
    let r = gw.send(
        http_client()
            .get(gw.url(ENTITY))
            .header("authorization", basic("offsite", "offsite-secret"))
            .header("x-forwarded-for", "203.0.113.5")
            .header("x-forwarded-for", "198.51.100.1"),
    );
    assert_ip_denied(&r);
    let r = gw.send(
        http_client()
            .get(gw.url(ENTITY))
            .header("authorization", basic("offsite", "offsite-secret"))
            .header("x-forwarded-for", "198.51.100.1")
            .header("x-forwarded-for", "203.0.113.5"),
    );
    r.assert_ok();
    assert_eq!(up.count(), 1);
}

#[test]
fn trusted_proxy_without_forwarded_for_is_judged_by_its_own_address() {
    let up = TestUpstream::capture_like();
    let gw = trusted_gateway(&up);
    gw.get_as("local", ENTITY).assert_ok();
    assert_ip_denied(&gw.get_as("offsite", ENTITY));
    assert_eq!(up.count(), 1);
}
