//! The upstream side: every address a name resolves to carries traffic, and
//! upstream TLS verifies the chain against `upstream.ca_file` and the name
//! against the SNI. The TLS upstream is the test's own (openssl, the library
//! Pingora's TLS uses), with a CA made in the test.
// A test (or bench) that cannot set up fails loudly; the no-panic rule is for the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{SslAcceptor, SslMethod};
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
};
use openssl::x509::{X509NameBuilder, X509};
use serde_json::json;

const FIND: &str = "/entity.find?type_name=user";

// ---------------------------------------------------------------------------
// Every address of a name
// ---------------------------------------------------------------------------

/// `localhost` is the one name a test can rely on; it resolves to 127.0.0.1
/// and, on most hosts, ::1 too. An upstream on each of its addresses (same
/// port) must each get traffic. On a host where it has one address this
/// checks that one; the refresh logic itself (several addresses, changes,
/// failures) is unit-tested with a resolver passed in (src/proxy/resolve.rs).
#[test]
fn every_address_of_a_name_gets_traffic() {
    let addrs: Vec<SocketAddr> = ("localhost", 0).to_socket_addrs().unwrap().collect();
    let mut addrs_unique: Vec<SocketAddr> = Vec::new();
    for a in addrs {
        if !addrs_unique.iter().any(|b| b.ip() == a.ip()) {
            addrs_unique.push(a);
        }
    }
    // One port free on every address: the first is bound on :0, the others
    // at its port; a clash is retried with another port.
    let upstreams = (0..20)
        .find_map(|_| {
            let first =
                TestUpstream::start_at(SocketAddr::new(addrs_unique[0].ip(), 0), capture_handler);
            let port = first.addr.port();
            let mut ups = vec![first];
            for a in &addrs_unique[1..] {
                let addr = SocketAddr::new(a.ip(), port);
                match std::panic::catch_unwind(|| TestUpstream::start_at(addr, capture_handler)) {
                    Ok(u) => ups.push(u),
                    Err(_) => return None,
                }
            }
            Some(ups)
        })
        .expect("a port free on every address of localhost");
    println!("localhost resolves to {addrs_unique:?}");
    let port = upstreams[0].addr.port();
    let gw = GatewayBuilder::to_server(&format!("localhost:{port}"))
        .setting(
            "upstream",
            json!({"servers": [format!("localhost:{port}")], "resolve_interval_secs": 1}),
        )
        .start();
    for _ in 0..(4 * upstreams.len()) {
        let r = gw.get_as("reader", FIND);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    for u in &upstreams {
        assert!(u.count() > 0, "{} got no request", u.addr);
    }
    // Re-resolution every second swaps in an equal set: requests keep flowing.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let r = gw.get_as("reader", FIND);
    assert_eq!(r.status, 200, "{}", r.text());
}

// ---------------------------------------------------------------------------
// Upstream TLS
// ---------------------------------------------------------------------------

fn key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

fn name(cn: &str) -> openssl::x509::X509Name {
    let mut n = X509NameBuilder::new().unwrap();
    n.append_entry_by_nid(Nid::COMMONNAME, cn).unwrap();
    n.build()
}

struct Ca {
    cert: X509,
    key: PKey<Private>,
}

impl Ca {
    fn new(cn: &str) -> Ca {
        let key = key();
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_serial_number(&BigNum::from_u32(1).unwrap().to_asn1_integer().unwrap())
            .unwrap();
        b.set_subject_name(&name(cn)).unwrap();
        b.set_issuer_name(&name(cn)).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(2).unwrap())
            .unwrap();
        b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
        b.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()
                .unwrap(),
        )
        .unwrap();
        b.sign(&key, MessageDigest::sha256()).unwrap();
        Ca {
            cert: b.build(),
            key,
        }
    }

    /// A server certificate for `dns`, signed by this CA.
    fn issue(&self, dns: &str) -> (X509, PKey<Private>) {
        let key = key();
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_serial_number(&BigNum::from_u32(2).unwrap().to_asn1_integer().unwrap())
            .unwrap();
        b.set_subject_name(&name(dns)).unwrap();
        b.set_issuer_name(self.cert.subject_name()).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(2).unwrap())
            .unwrap();
        b.append_extension(BasicConstraints::new().build().unwrap())
            .unwrap();
        b.append_extension(ExtendedKeyUsage::new().server_auth().build().unwrap())
            .unwrap();
        let san = SubjectAlternativeName::new()
            .dns(dns)
            .build(&b.x509v3_context(Some(&self.cert), None))
            .unwrap();
        b.append_extension(san).unwrap();
        b.sign(&self.key, MessageDigest::sha256()).unwrap();
        (b.build(), key)
    }

    fn pem(&self) -> Vec<u8> {
        self.cert.to_pem().unwrap()
    }
}

/// A TLS upstream on 127.0.0.1 that answers every request with one user
/// record; counts the requests that got through the handshake.
struct TlsUpstream {
    addr: SocketAddr,
    served: Arc<AtomicUsize>,
}

impl TlsUpstream {
    fn start(cert: X509, key: PKey<Private>) -> TlsUpstream {
        let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
        acceptor.set_certificate(&cert).unwrap();
        acceptor.set_private_key(&key).unwrap();
        let acceptor = Arc::new(acceptor.build());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(AtomicUsize::new(0));
        let served2 = served.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let acceptor = acceptor.clone();
                let served = served2.clone();
                std::thread::spawn(move || {
                    stream
                        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
                        .unwrap();
                    // A refused handshake (the gateway's verification) ends here.
                    let Ok(mut tls) = acceptor.accept(stream) else {
                        return;
                    };
                    let body =
                        json!({"stat": "ok", "result_count": 1, "results": [sample_record(1)]});
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        // GET requests only: the head is the whole request.
                        while find(&buf, b"\r\n\r\n").is_none() {
                            match tls.read(&mut chunk) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let end = find(&buf, b"\r\n\r\n").unwrap() + 4;
                        buf.drain(..end);
                        served.fetch_add(1, Ordering::SeqCst);
                        if tls.write_all(&json_ok_response(&body)).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        TlsUpstream { addr, served }
    }
}

/// A gateway to `localhost:<port>` over TLS, trusting `ca_pem` only.
fn tls_gateway(up: &TlsUpstream, ca_pem: &[u8]) -> Gateway {
    let server = format!("localhost:{}", up.addr.port());
    GatewayBuilder::to_server(&server)
        .file("upstream-ca.pem", ca_pem)
        .setting(
            "upstream",
            json!({"servers": [server], "tls": true, "ca_file": "upstream-ca.pem"}),
        )
        .metrics(json!({}))
        .start()
}

#[test]
fn a_certificate_from_the_configured_ca_for_the_right_name_passes() {
    let ca = Ca::new("recordgate test CA");
    let (cert, key) = ca.issue("localhost");
    let up = TlsUpstream::start(cert, key);
    let gw = tls_gateway(&up, &ca.pem());
    let r = gw.get_as("reader", FIND);
    assert_eq!(r.status, 200, "{}\n{}", r.text(), gw.stderr());
    assert_eq!(up.served.load(Ordering::SeqCst), 1);
}

/// A refused certificate is a 502 counted as an upstream (connect) error,
/// and no request reaches the server.
fn assert_refused(gw: &Gateway, up: &TlsUpstream) {
    let before = metric(&gw.scrape(), "recordgate_upstream_errors_total", &[]);
    let r = gw.get_as("reader", FIND);
    assert_eq!(r.status, 502, "{}", r.text());
    let after = metric(&gw.scrape(), "recordgate_upstream_errors_total", &[]);
    assert_eq!(after, before + 1.0, "counted as an upstream error");
    assert_eq!(up.served.load(Ordering::SeqCst), 0);
}

#[test]
fn a_certificate_for_another_name_is_refused() {
    let ca = Ca::new("recordgate test CA");
    let (cert, key) = ca.issue("not-the-upstream.example");
    let up = TlsUpstream::start(cert, key);
    let gw = tls_gateway(&up, &ca.pem());
    assert_refused(&gw, &up);
}

#[test]
fn a_certificate_from_an_untrusted_ca_is_refused() {
    let trusted = Ca::new("recordgate test CA");
    let other = Ca::new("some other CA");
    let (cert, key) = other.issue("localhost");
    let up = TlsUpstream::start(cert, key);
    let gw = tls_gateway(&up, &trusted.pem());
    assert_refused(&gw, &up);
}
