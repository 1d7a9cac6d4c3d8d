//! TLS termination: the gateway serves `tls_listen` addresses with
//! certificates chosen by SNI, TLS 1.2 and 1.3 only, optional client
//! certificates (mutual TLS) and `tls_client_subject` as a second factor,
//! and reloads renewed certificates while it serves. A test CA made here
//! (openssl) signs every certificate; the client is OpenSSL's own
//! `SslConnector` over real sockets.
// A test (or bench) that cannot set up fails loudly; the no-panic rule is for the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{SslConnector, SslMethod, SslStream, SslVerifyMode, SslVersion};
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
};
use openssl::x509::{X509NameBuilder, X509};
use serde_json::{json, Value};

const RECORD: &str = "/entity?type_name=user&id=1";

// ---------------------------------------------------------------------------
// A test CA
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

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

struct Ca {
    cert: X509,
    key: PKey<Private>,
}

/// A certificate and its key.
struct Issued {
    cert: X509,
    key: PKey<Private>,
}

impl Issued {
    fn cert_pem(&self) -> Vec<u8> {
        self.cert.to_pem().unwrap()
    }
    fn key_pem(&self) -> Vec<u8> {
        self.key.private_key_to_pem_pkcs8().unwrap()
    }
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
        b.set_not_before(&Asn1Time::from_unix(now() - 86_400 * 30).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(30).unwrap())
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

    fn issue(
        &self,
        cn: &str,
        dns: &[&str],
        serial: u32,
        valid: (i64, i64),
        client: bool,
    ) -> Issued {
        let key = key();
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_serial_number(&BigNum::from_u32(serial).unwrap().to_asn1_integer().unwrap())
            .unwrap();
        b.set_subject_name(&name(cn)).unwrap();
        b.set_issuer_name(self.cert.subject_name()).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::from_unix(valid.0).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::from_unix(valid.1).unwrap())
            .unwrap();
        b.append_extension(BasicConstraints::new().build().unwrap())
            .unwrap();
        let mut eku = ExtendedKeyUsage::new();
        if client {
            eku.client_auth();
        } else {
            eku.server_auth();
        }
        b.append_extension(eku.build().unwrap()).unwrap();
        if !dns.is_empty() {
            let mut san = SubjectAlternativeName::new();
            for d in dns {
                san.dns(d);
            }
            let san = san
                .build(&b.x509v3_context(Some(&self.cert), None))
                .unwrap();
            b.append_extension(san).unwrap();
        }
        b.sign(&self.key, MessageDigest::sha256()).unwrap();
        Issued {
            cert: b.build(),
            key,
        }
    }

    /// A server certificate for `dns`, valid from yesterday for 20 days.
    fn server(&self, dns: &[&str], serial: u32) -> Issued {
        self.issue(
            dns[0],
            dns,
            serial,
            (now() - 86_400, now() + 86_400 * 20),
            false,
        )
    }

    /// A client certificate whose subject commonName is `cn`.
    fn client(&self, cn: &str) -> Issued {
        self.issue(cn, &[], 100, (now() - 86_400, now() + 86_400 * 20), true)
    }

    fn pem(&self) -> Vec<u8> {
        self.cert.to_pem().unwrap()
    }
}

// ---------------------------------------------------------------------------
// A gateway with a TLS listener
// ---------------------------------------------------------------------------

struct TlsGateway {
    _up: TestUpstream,
    gw: Gateway,
    port: u16,
}

impl TlsGateway {
    fn file(&self, name: &str) -> std::path::PathBuf {
        self.gw.dir.path().join(name)
    }
}

/// Starts the gateway with one TLS listener named `public` serving `certs`
/// (in order, the first the default), client certificates from
/// `client_ca` required when given, and the operator listener on.
fn start(
    certs: &[&Issued],
    client_ca: Option<&Ca>,
    policy: Option<String>,
    extra: Value,
) -> TlsGateway {
    let up = TestUpstream::capture_like();
    let port = free_port();
    let mut b = GatewayBuilder::new(&up).metrics(json!({}));
    let mut entries = Vec::new();
    for (j, c) in certs.iter().enumerate() {
        b = b
            .file(&format!("server{j}.crt"), c.cert_pem())
            .file(&format!("server{j}.key"), c.key_pem());
        entries.push(json!({"cert": format!("server{j}.crt"), "key": format!("server{j}.key")}));
    }
    let mut listener = json!({
        "address": format!("127.0.0.1:{port}"),
        "name": "public",
        "certificates": entries,
    });
    if let Some(ca) = client_ca {
        b = b.file("clients-ca.pem", ca.pem());
        listener["client_ca"] = json!("clients-ca.pem");
    }
    if let Value::Object(e) = extra {
        for (k, v) in e {
            listener[k] = v;
        }
    }
    b = b.setting("tls_listen", json!([listener]));
    if let Some(p) = policy {
        b = b.policy(&p);
    }
    let gw = b.start();
    TlsGateway { _up: up, gw, port }
}

// ---------------------------------------------------------------------------
// A TLS client
// ---------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct Client<'a> {
    trust: &'a Ca,
    identity: Option<&'a Issued>,
    /// The SNI sent and the name verified; `None`: no SNI, no name check.
    sni: Option<&'a str>,
    max_version: Option<SslVersion>,
    alpn: Option<&'a [u8]>,
}

impl<'a> Client<'a> {
    fn new(trust: &'a Ca) -> Client<'a> {
        Client {
            trust,
            identity: None,
            sni: Some("api.test"),
            max_version: None,
            alpn: None,
        }
    }

    fn with_identity(mut self, id: &'a Issued) -> Self {
        self.identity = Some(id);
        self
    }

    fn handshake(&self, port: u16) -> Result<SslStream<TcpStream>, String> {
        let mut b = SslConnector::builder(SslMethod::tls()).unwrap();
        b.cert_store_mut()
            .add_cert(self.trust.cert.clone())
            .unwrap();
        if let Some(id) = self.identity {
            b.set_certificate(&id.cert).unwrap();
            b.set_private_key(&id.key).unwrap();
        }
        if let Some(v) = self.max_version {
            // Let the client really offer the old version: OpenSSL's
            // default security level would refuse it on the client side.
            b.set_security_level(0);
            b.set_cipher_list("DEFAULT:@SECLEVEL=0").unwrap();
            b.set_min_proto_version(None).unwrap();
            b.set_max_proto_version(Some(v)).unwrap();
        }
        if let Some(alpn) = self.alpn {
            b.set_alpn_protos(alpn).unwrap();
        }
        if self.sni.is_none() {
            b.set_verify(SslVerifyMode::NONE);
        }
        let connector = b.build();
        let tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut config = connector.configure().unwrap();
        if self.sni.is_none() {
            config = config
                .use_server_name_indication(false)
                .verify_hostname(false);
        }
        config
            .connect(self.sni.unwrap_or("localhost"), tcp)
            .map_err(|e| e.to_string())
    }

    /// One request on a new connection: the status and the body, or why
    /// there was no response.
    fn call(
        &self,
        port: u16,
        method: &str,
        path: &str,
        auth: (&str, &str),
        body: &str,
    ) -> Result<(u16, String), String> {
        let mut s = self.handshake(port)?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: api.test\r\nAuthorization: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            basic(auth.0, auth.1),
            body.len()
        );
        s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        let mut buf = [0u8; 16 << 10];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                // A peer that closes without close_notify: keep what came.
                Err(_) if !out.is_empty() => break,
                Err(e) => return Err(e.to_string()),
            }
        }
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text
            .strip_prefix("HTTP/1.1 ")
            .and_then(|t| t.get(..3))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("no HTTP response: {text:?}"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((status, body))
    }

    fn get(&self, port: u16, path: &str, auth: (&str, &str)) -> Result<(u16, String), String> {
        self.call(port, "GET", path, auth, "")
    }
}

fn served_cert(s: &SslStream<TcpStream>) -> X509 {
    s.ssl().peer_certificate().expect("a server certificate")
}

fn serial(c: &X509) -> u32 {
    c.serial_number()
        .to_bn()
        .unwrap()
        .to_dec_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn dns_names(c: &X509) -> Vec<String> {
    c.subject_alt_names()
        .map(|n| {
            n.iter()
                .filter_map(|g| g.dnsname().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Replaces `path` the way cert-manager and certbot do: a new file renamed
/// over the old one.
fn swap_in(path: &Path, content: &[u8]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn reloads(gw: &Gateway, result: &str) -> f64 {
    metric(
        &gw.scrape(),
        "recordgate_tls_reloads_total",
        &[("listener", "public"), ("result", result)],
    )
}

/// Polls `cond` every 100 ms for at most `secs`.
fn eventually(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

// ---------------------------------------------------------------------------
// Handshakes and certificates
// ---------------------------------------------------------------------------

#[test]
fn a_record_call_over_tls_returns_the_filtered_answer() {
    let ca = Ca::new("Test CA");
    let srv = ca.server(&["api.test"], 2);
    let t = start(&[&srv], None, None, json!({}));
    let (status, body) = Client::new(&ca)
        .get(t.port, RECORD, ("reader", "reader-secret"))
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"givenName\":\"Ada"), "{body}");
    for hidden in HIDDEN_VALUES {
        assert!(!body.contains(hidden), "{hidden} leaked over TLS: {body}");
    }
    // The plain listener still answers beside it.
    gw_plain_ok(&t.gw);
}

fn gw_plain_ok(gw: &Gateway) {
    assert_eq!(gw.get_as("reader", RECORD).status, 200);
}

#[test]
fn sni_chooses_among_the_certificates_and_an_unknown_name_gets_the_first() {
    let ca = Ca::new("Test CA");
    let first = ca.server(&["api.test"], 2);
    let second = ca.server(&["*.internal.test"], 3);
    let t = start(&[&first, &second], None, None, json!({}));

    let s = Client {
        sni: Some("svc.internal.test"),
        ..Client::new(&ca)
    }
    .handshake(t.port)
    .unwrap();
    assert_eq!(serial(&served_cert(&s)), 3, "the wildcard certificate");
    let s = Client::new(&ca).handshake(t.port).unwrap();
    assert_eq!(serial(&served_cert(&s)), 2);

    // No SNI, or a name no certificate carries: the first certificate,
    // which a client checking the name it asked for then refuses.
    let s = Client {
        sni: None,
        ..Client::new(&ca)
    }
    .handshake(t.port)
    .unwrap();
    assert_eq!(dns_names(&served_cert(&s)), ["api.test"]);
    let e = Client {
        sni: Some("other.test"),
        ..Client::new(&ca)
    }
    .handshake(t.port)
    .expect_err("the name is not the certificate's");
    assert!(
        e.contains("certificate verify failed") || e.contains("hostname"),
        "{e}"
    );
}

#[test]
fn tls_1_1_is_refused_and_1_2_and_1_3_are_served() {
    let ca = Ca::new("Test CA");
    let srv = ca.server(&["api.test"], 2);
    let t = start(&[&srv], None, None, json!({}));
    let old = Client {
        max_version: Some(SslVersion::TLS1_1),
        ..Client::new(&ca)
    };
    assert!(
        old.handshake(t.port).is_err(),
        "a TLS 1.1 handshake succeeded"
    );
    for v in [SslVersion::TLS1_2, SslVersion::TLS1_3] {
        let s = Client {
            max_version: Some(v),
            ..Client::new(&ca)
        }
        .handshake(t.port)
        .unwrap();
        assert_eq!(s.ssl().version2(), Some(v));
    }
}

#[test]
fn http2_is_offered_by_alpn_only_when_the_listener_says_so() {
    let ca = Ca::new("Test CA");
    let srv = ca.server(&["api.test"], 2);
    let offer: &[u8] = b"\x02h2\x08http/1.1";
    let t = start(&[&srv], None, None, json!({}));
    let s = Client {
        alpn: Some(offer),
        ..Client::new(&ca)
    }
    .handshake(t.port)
    .unwrap();
    assert_ne!(s.ssl().selected_alpn_protocol(), Some(&b"h2"[..]));
    drop(t);
    let t = start(&[&srv], None, None, json!({"http2": true}));
    let s = Client {
        alpn: Some(offer),
        ..Client::new(&ca)
    }
    .handshake(t.port)
    .unwrap();
    assert_eq!(s.ssl().selected_alpn_protocol(), Some(&b"h2"[..]));
}

// ---------------------------------------------------------------------------
// Mutual TLS and tls_client_subject
// ---------------------------------------------------------------------------

const CERT_CLIENTS: &str = r#"
clients:
  reader:
    secret: reader-secret
    features: [direct_read_access]
  billing:
    secret: billing-secret
    features: [direct_read_access]
    tls_client_subject: billing-service
  admin:
    secret: admin-secret
    features: [owner]
    tls_client_subject: ops-admin
"#;

#[test]
fn mutual_tls_requires_a_certificate_from_the_client_ca() {
    let ca = Ca::new("Test CA");
    let clients = Ca::new("Client CA");
    let stranger = Ca::new("Other CA");
    let srv = ca.server(&["api.test"], 2);
    let t = start(&[&srv], Some(&clients), None, json!({}));
    let auth = ("reader", "reader-secret");

    let none = Client::new(&ca).get(t.port, RECORD, auth);
    assert!(none.is_err(), "no client certificate was served: {none:?}");
    let foreign = stranger.client("reader");
    let r = Client::new(&ca)
        .with_identity(&foreign)
        .get(t.port, RECORD, auth);
    assert!(
        r.is_err(),
        "a certificate from another CA was served: {r:?}"
    );
    let good = clients.client("reader");
    let (status, body) = Client::new(&ca)
        .with_identity(&good)
        .get(t.port, RECORD, auth)
        .unwrap();
    assert_eq!(status, 200, "{body}");
}

#[test]
fn tls_client_subject_is_a_second_factor_for_records_and_management() {
    let ca = Ca::new("Test CA");
    let clients = Ca::new("Client CA");
    let srv = ca.server(&["api.test"], 2);
    let t = start(
        &[&srv],
        Some(&clients),
        Some(policy_with_clients(CERT_CLIENTS)),
        json!({}),
    );
    let billing = clients.client("billing-service");
    let other = clients.client("reporting-service");
    let admin = clients.client("ops-admin");
    let auth = ("billing", "billing-secret");

    let (status, body) = Client::new(&ca)
        .with_identity(&billing)
        .get(t.port, RECORD, auth)
        .unwrap();
    assert_eq!(status, 200, "{body}");
    // The right secret with another client's certificate.
    let (status, body) = Client::new(&ca)
        .with_identity(&other)
        .get(t.port, RECORD, auth)
        .unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("client_permission_error"), "{body}");
    // The right secret without TLS at all.
    let r = t.gw.get(RECORD, Some(auth));
    assert_eq!(r.status, 403, "{}", r.text());
    // Management calls take the same path.
    let list = |id: &Issued| {
        Client::new(&ca)
            .with_identity(id)
            .call(
                t.port,
                "POST",
                "/clients/list",
                ("admin", "admin-secret"),
                "",
            )
            .unwrap()
    };
    assert_eq!(list(&admin).0, 200, "{}", list(&admin).1);
    assert_eq!(list(&billing).0, 403);
    // Counted like the other refusals, under their own reason.
    let refused = metric(
        &t.gw.scrape(),
        "recordgate_requests_total",
        &[("decision", "client_certificate")],
    );
    assert_eq!(refused, 3.0);
}

// ---------------------------------------------------------------------------
// Live certificates
// ---------------------------------------------------------------------------

#[test]
fn a_certificate_renewed_by_rename_is_served_without_a_failed_request() {
    let ca = Ca::new("Test CA");
    let old = ca.server(&["api.test"], 2);
    let new = ca.server(&["api.test", "renewed.api.test"], 3);
    let t = start(&[&old], None, None, json!({}));
    let port = t.port;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let load = {
        let (stop, done, failures) = (stop.clone(), done.clone(), failures.clone());
        let ca_pem = ca.pem();
        std::thread::spawn(move || {
            let trust = Ca {
                cert: X509::from_pem(&ca_pem).unwrap(),
                key: key(),
            };
            // Bounded: at most 2000 requests, each on a new connection.
            for _ in 0..2000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match Client::new(&trust).get(port, RECORD, ("reader", "reader-secret")) {
                    Ok((200, _)) => {}
                    other => failures.lock().unwrap().push(format!("{other:?}")),
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    // The key first, then the certificate, as two renames.
    swap_in(&t.file("server0.key"), &new.key_pem());
    swap_in(&t.file("server0.crt"), &new.cert_pem());
    let renewed = eventually(10, || {
        let s = Client::new(&ca).handshake(port).unwrap();
        serial(&served_cert(&s)) == 3
    });
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    assert!(renewed, "new handshakes did not get the new certificate");
    let s = Client::new(&ca).handshake(port).unwrap();
    assert!(dns_names(&served_cert(&s)).contains(&"renewed.api.test".to_string()));
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    assert!(
        done.load(Ordering::Relaxed) >= 20,
        "the load loop hardly ran"
    );
    assert_eq!(reloads(&t.gw, "success"), 1.0);
    assert_eq!(reloads(&t.gw, "failure"), 0.0);
    let text = t.gw.scrape();
    assert!(text.contains("# TYPE recordgate_tls_reloads_total counter"));
    assert!(text.contains("# TYPE recordgate_tls_certificate_expiry_timestamp_seconds gauge"));
    let expiry = metric(
        &text,
        "recordgate_tls_certificate_expiry_timestamp_seconds",
        &[("listener", "public")],
    );
    assert_eq!(expiry as i64, now_not_after(&new));
}

fn now_not_after(i: &Issued) -> i64 {
    let d = Asn1Time::from_unix(0)
        .unwrap()
        .diff(i.cert.not_after())
        .unwrap();
    i64::from(d.days) * 86_400 + i64::from(d.secs)
}

#[test]
fn an_invalid_replacement_keeps_the_certificate_in_service_and_is_counted() {
    let ca = Ca::new("Test CA");
    let old = ca.server(&["api.test"], 2);
    let t = start(&[&old], None, None, json!({}));
    assert_eq!(reloads(&t.gw, "failure"), 0.0);

    // Not PEM at all, written in place.
    std::fs::write(t.file("server0.crt"), b"not a certificate").unwrap();
    assert!(
        eventually(10, || reloads(&t.gw, "failure") == 1.0),
        "the failure was not counted"
    );
    let s = Client::new(&ca).handshake(t.port).unwrap();
    assert_eq!(serial(&served_cert(&s)), 2);

    // A valid certificate whose key is not the one beside it.
    let other = ca.server(&["api.test"], 4);
    swap_in(&t.file("server0.crt"), &other.cert_pem());
    assert!(
        eventually(10, || reloads(&t.gw, "failure") == 2.0),
        "the mismatched pair was not counted"
    );
    let (status, _) = Client::new(&ca)
        .get(t.port, RECORD, ("reader", "reader-secret"))
        .unwrap();
    assert_eq!(status, 200);
    let s = Client::new(&ca).handshake(t.port).unwrap();
    assert_eq!(serial(&served_cert(&s)), 2, "the old certificate stays");
    assert_eq!(reloads(&t.gw, "success"), 0.0);
    assert!(t.gw.stderr().contains("TLS certificate reload rejected"));
}

// ---------------------------------------------------------------------------
// Preflight
// ---------------------------------------------------------------------------

/// `recordgate check` on a settings file with one TLS listener (`listener`
/// merged into the defaults) and the files given.
fn check_tls(files: &[(&str, Vec<u8>)], listener: Value) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in files {
        std::fs::write(dir.path().join(name), content).unwrap();
    }
    let mut l = json!({
        "address": format!("127.0.0.1:{}", free_port()),
        "certificates": [{"cert": "server.crt", "key": "server.key"}],
    });
    if let Value::Object(e) = listener {
        for (k, v) in e {
            l[k] = v;
        }
    }
    let settings = json!({
        "listen": [format!("127.0.0.1:{}", free_port())],
        "tls_listen": [l],
        "upstream": {"servers": ["127.0.0.1:9"]},
        "policy": "policy.yaml",
    });
    std::fs::write(
        dir.path().join("settings.yaml"),
        serde_json::to_vec(&settings).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.path().join("policy.yaml"), default_policy()).unwrap();
    let out = run_cli(&[
        "check",
        "--config",
        dir.path().join("settings.yaml").to_str().unwrap(),
    ]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_names_the_setting_of_each_tls_problem() {
    let ca = Ca::new("Test CA");
    let good = ca.server(&["api.test"], 2);
    let other = ca.server(&["api.test"], 3);
    let expired = ca.issue(
        "api.test",
        &["api.test"],
        5,
        (now() - 86_400 * 10, now() - 86_400),
        false,
    );

    let (ok, err) = check_tls(
        &[
            ("server.crt", good.cert_pem()),
            ("server.key", good.key_pem()),
        ],
        json!({}),
    );
    assert!(ok, "{err}");

    let (ok, err) = check_tls(&[("server.key", good.key_pem())], json!({}));
    assert!(
        !ok && err.contains("tls_listen[0].certificates[0].cert: cannot read"),
        "{err}"
    );
    let (ok, err) = check_tls(
        &[
            ("server.crt", b"junk".to_vec()),
            ("server.key", good.key_pem()),
        ],
        json!({}),
    );
    assert!(
        !ok && err.contains("tls_listen[0].certificates[0].cert:"),
        "{err}"
    );
    let (ok, err) = check_tls(
        &[
            ("server.crt", good.cert_pem()),
            ("server.key", other.key_pem()),
        ],
        json!({}),
    );
    assert!(
        !ok && err.contains("tls_listen[0].certificates[0].key: does not match"),
        "{err}"
    );
    let (ok, err) = check_tls(
        &[
            ("server.crt", expired.cert_pem()),
            ("server.key", expired.key_pem()),
        ],
        json!({}),
    );
    assert!(
        !ok && err.contains("tls_listen[0].certificates[0].cert: the certificate expired"),
        "{err}"
    );
    let files = [
        ("server.crt", good.cert_pem()),
        ("server.key", good.key_pem()),
    ];
    let (ok, err) = check_tls(&files, json!({"min_version": "1.3", "max_version": "1.2"}));
    assert!(!ok && err.contains("tls_listen[0].min_version"), "{err}");
    let (ok, err) = check_tls(&files, json!({"min_version": "1.1"}));
    assert!(!ok && err.contains("tls_listen[0].min_version"), "{err}");
    let (ok, err) = check_tls(&files, json!({"ciphers": "NO-SUCH-CIPHER"}));
    assert!(!ok && err.contains("tls_listen[0].ciphers"), "{err}");
    // Close to expiry: still valid, so a warning, not an error.
    let soon = ca.issue(
        "api.test",
        &["api.test"],
        6,
        (now() - 86_400, now() + 86_400 * 2),
        false,
    );
    let (ok, err) = check_tls(
        &[
            ("server.crt", soon.cert_pem()),
            ("server.key", soon.key_pem()),
        ],
        json!({}),
    );
    assert!(
        ok && err.contains("warning")
            && err.contains("tls_listen[0].certificates[0].cert: expires in 4"),
        "{err}"
    );
    let (ok, err) = check_tls(&files, json!({"client_ca": "missing.pem"}));
    assert!(
        !ok && err.contains("tls_listen[0].client_ca: cannot read"),
        "{err}"
    );
}

#[test]
fn a_certificate_renewed_by_a_symlink_swap_is_served() {
    let ca = Ca::new("Test CA");
    let old = ca.server(&["api.test"], 2);
    let new = ca.server(&["api.test"], 7);
    let t = start(&[&old], None, None, json!({}));
    // certbot's layout: the configured names are symlinks into an archive,
    // repointed by renaming a new symlink over each.
    let archive = t.gw.dir.path().join("archive");
    std::fs::create_dir(&archive).unwrap();
    for (name, content) in [
        ("server0.crt", new.cert_pem()),
        ("server0.key", new.key_pem()),
    ] {
        let target = archive.join(name);
        std::fs::write(&target, content).unwrap();
        let link = t.file(&format!("{name}.link"));
        std::os::unix::fs::symlink(&target, &link).unwrap();
        std::fs::rename(&link, t.file(name)).unwrap();
    }
    assert!(
        eventually(10, || {
            let s = Client::new(&ca).handshake(t.port).unwrap();
            serial(&served_cert(&s)) == 7
        }),
        "new handshakes did not get the certificate the symlinks point to"
    );
    let (status, _) = Client::new(&ca)
        .get(t.port, RECORD, ("reader", "reader-secret"))
        .unwrap();
    assert_eq!(status, 200);
}

// ---------------------------------------------------------------------------
// HTTP/2 over TLS, with curl (nghttp2) as the client
// ---------------------------------------------------------------------------

/// `curl --http2` over TLS: (HTTP version, status, body).
fn curl_h2(
    dir: &Path,
    port: u16,
    path: &str,
    auth: (&str, &str),
    identity: Option<(&Path, &Path)>,
) -> (String, u16, String) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "--http2", "--max-time", "10"])
        .arg("--cacert")
        .arg(dir.join("ca.pem"))
        .args(["--resolve", &format!("api.test:{port}:127.0.0.1")])
        .args(["-u", &format!("{}:{}", auth.0, auth.1)])
        .args(["-w", "\n%{http_version} %{http_code}"]);
    if let Some((cert, key)) = identity {
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    let out = cmd
        .arg(format!("https://api.test:{port}{path}"))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, last) = text.rsplit_once('\n').unwrap_or(("", ""));
    let (version, status) = last.split_once(' ').unwrap_or(("", "0"));
    (
        version.to_string(),
        status.parse().unwrap_or(0),
        body.to_string(),
    )
}

#[test]
fn http2_over_tls_is_filtered_refused_and_checks_the_client_certificate() {
    let ca = Ca::new("Test CA");
    let clients = Ca::new("Client CA");
    let srv = ca.server(&["api.test"], 2);
    let t = start(
        &[&srv],
        Some(&clients),
        Some(policy_with_clients(CERT_CLIENTS)),
        json!({"http2": true}),
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    let identity = |cn: &str| {
        let c = clients.client(cn);
        let cert = dir.path().join(format!("{cn}.crt"));
        let key = dir.path().join(format!("{cn}.key"));
        std::fs::write(&cert, c.cert_pem()).unwrap();
        std::fs::write(&key, c.key_pem()).unwrap();
        (cert, key)
    };
    let (billing_cert, billing_key) = identity("billing-service");
    let (other_cert, other_key) = identity("someone-else");
    let billing = Some((billing_cert.as_path(), billing_key.as_path()));
    let other = Some((other_cert.as_path(), other_key.as_path()));

    // A read over HTTP/2, filtered as over HTTP/1.1.
    let (version, status, body) = curl_h2(
        dir.path(),
        t.port,
        RECORD,
        ("billing", "billing-secret"),
        billing,
    );
    assert_eq!((version.as_str(), status), ("2", 200), "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["stat"], "ok", "{body}");
    // The certificate is a second factor over HTTP/2 too.
    let (version, status, _) = curl_h2(
        dir.path(),
        t.port,
        RECORD,
        ("billing", "billing-secret"),
        other,
    );
    assert_eq!((version.as_str(), status), ("2", 403));
    // Fail closed: a parameter the route does not take.
    let (_, status, body) = curl_h2(
        dir.path(),
        t.port,
        "/entity?type_name=user&id=1&Filter=x",
        ("reader", "reader-secret"),
        other,
    );
    assert_eq!(status, 400, "{body}");
    // No client certificate: the handshake fails.
    let (_, status, _) = curl_h2(
        dir.path(),
        t.port,
        RECORD,
        ("reader", "reader-secret"),
        None,
    );
    assert_eq!(status, 0);
}
