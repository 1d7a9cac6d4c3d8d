//! TLS termination on the `tls_listen` addresses, with Pingora's own
//! (OpenSSL) TLS: the certificate is chosen per handshake by SNI from an
//! `ArcSwap` that [`reload`] replaces when the files change, so new
//! handshakes get a renewed certificate without a restart and established
//! connections are left alone. With `client_ca` a client certificate is
//! required and verified; its subject commonName is recorded on the
//! connection ([`ClientCertificate`]) for the decision
//! (`decide::client_certificate`).

pub mod certs;
pub mod reload;

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use openssl::nid::Nid;
use openssl::ssl::{NameType, SslVerifyMode, SslVersion};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::{X509VerifyResult, X509};
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;

use crate::config::tls::{TlsListen, TlsVersion};
use crate::ops::metrics;
use certs::LoadedCert;

/// What the handshake recorded about a verified client certificate, in the
/// connection's `SslDigest` extension.
#[derive(Debug, Clone)]
pub struct ClientCertificate {
    /// The subject's one commonName (UTF-8). A certificate with none, or
    /// with more than one, records no subject and so matches no
    /// `tls_client_subject`.
    pub subject_common_name: String,
}

/// A listener's certificates as the handshake reads them.
pub type CertSet = ArcSwap<Vec<Arc<LoadedCert>>>;

/// One TLS listener, its files checked and parsed.
pub struct TlsListener {
    pub settings: TlsListen,
    pub certs: Arc<CertSet>,
    /// The `client_ca` bundle, parsed.
    client_cas: Vec<X509>,
}

/// Reads and checks everything a TLS listener needs, reporting each problem
/// under its setting key (`tls_listen[i].certificates[j].key: ...`). The
/// TLS context is built too (without binding), so that a cipher list
/// OpenSSL refuses is found by `check` as well.
pub fn load_listener(i: usize, t: &TlsListen) -> Result<TlsListener, Vec<String>> {
    let mut errors = Vec::new();
    let mut loaded = Vec::with_capacity(t.certificates.len());
    for (j, files) in t.certificates.iter().enumerate() {
        match certs::read_pair(files).and_then(|(c, k)| certs::parse_pair(c, k)) {
            Ok(c) => loaded.push(Arc::new(c)),
            Err(e) => errors.push(format!(
                "tls_listen[{i}].certificates[{j}].{}: {}",
                e.file.key(),
                e.message
            )),
        }
    }
    let client_cas = match &t.client_ca {
        None => Vec::new(),
        Some(path) => read_ca_bundle(path).unwrap_or_else(|e| {
            errors.push(format!("tls_listen[{i}].client_ca: {e}"));
            Vec::new()
        }),
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let listener = TlsListener {
        settings: t.clone(),
        certs: Arc::new(ArcSwap::from_pointee(loaded)),
        client_cas,
    };
    listener
        .tls_settings()
        .map_err(|e| vec![format!("tls_listen[{i}].{e}")])?;
    Ok(listener)
}

fn read_ca_bundle(path: &Path) -> Result<Vec<X509>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let cas = X509::stack_from_pem(&pem).map_err(|e| format!("not a PEM bundle: {e}"))?;
    if cas.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    Ok(cas)
}

fn ssl_version(v: TlsVersion) -> SslVersion {
    match v {
        TlsVersion::Tls12 => SslVersion::TLS1_2,
        TlsVersion::Tls13 => SslVersion::TLS1_3,
    }
}

impl TlsListener {
    /// The `listener` metric label.
    pub fn label(&self) -> &str {
        self.settings.label()
    }

    /// The Pingora TLS settings; an error starts with the setting key under
    /// `tls_listen[i]`.
    pub fn tls_settings(&self) -> Result<TlsSettings, String> {
        let t = &self.settings;
        let callbacks = Callbacks {
            certs: self.certs.clone(),
        };
        let mut s = TlsSettings::with_callbacks(Box::new(callbacks))
            .map_err(|e| format!("address: cannot make a TLS context: {e}"))?;
        s.set_min_proto_version(Some(ssl_version(t.min_version)))
            .map_err(|e| format!("min_version: {e}"))?;
        s.set_max_proto_version(Some(ssl_version(t.max_version)))
            .map_err(|e| format!("max_version: {e}"))?;
        s.set_cipher_list(&t.ciphers)
            .map_err(|e| format!("ciphers: OpenSSL accepts none of them: {e}"))?;
        s.set_ciphersuites(&t.ciphersuites)
            .map_err(|e| format!("ciphersuites: OpenSSL accepts none of them: {e}"))?;
        if !self.client_cas.is_empty() {
            let mut store = X509StoreBuilder::new().map_err(|e| format!("client_ca: {e}"))?;
            for ca in &self.client_cas {
                store
                    .add_cert(ca.clone())
                    .map_err(|e| format!("client_ca: {e}"))?;
                s.add_client_ca(ca).map_err(|e| format!("client_ca: {e}"))?;
            }
            s.set_verify_cert_store(store.build())
                .map_err(|e| format!("client_ca: {e}"))?;
            s.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
            // A resumed session keeps the client identity it was verified
            // with; OpenSSL refuses resumption with verification unless the
            // context is named (its sessions are this listener's own).
            let id = t.label().as_bytes();
            s.set_session_id_context(&id[..id.len().min(32)])
                .map_err(|e| format!("client_ca: {e}"))?;
        }
        // Only the ALPN switch: HTTP/2 behaviour itself is the proxy's.
        if t.http2 {
            s.enable_h2();
        }
        Ok(s)
    }

    /// Publishes each certificate's expiry.
    pub fn export_expiry(&self) {
        for (j, c) in self.certs.load().iter().enumerate() {
            metrics::TLS_CERTIFICATE_EXPIRY.set(
                &[self.label(), &certificate_label(&self.settings, j)],
                c.not_after_unix,
            );
        }
    }
}

/// The `certificate` metric label: the certificate file as configured.
pub fn certificate_label(t: &TlsListen, j: usize) -> String {
    t.certificates
        .get(j)
        .map(|c| c.cert.display().to_string())
        .unwrap_or_default()
}

/// The handshake's side: the certificate by SNI, and the verified client
/// certificate's subject.
struct Callbacks {
    certs: Arc<CertSet>,
}

#[async_trait]
impl TlsAccept for Callbacks {
    async fn certificate_callback(&self, ssl: &mut TlsRef) {
        let certs = self.certs.load();
        let sni = ssl.servername(NameType::HOST_NAME).map(str::to_string);
        let Some(cert) = certs::select(&certs, sni.as_deref()) else {
            // No certificate set: the handshake fails, which is the only
            // safe answer (the settings refuse an empty list).
            return;
        };
        if let Err(e) = use_certificate(ssl, cert) {
            tracing::error!(error = %e, "TLS handshake: the certificate could not be used");
        }
    }

    async fn handshake_complete_callback(
        &self,
        ssl: &TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        // With `client_ca`, OpenSSL has already failed any handshake whose
        // client certificate did not verify; the check here is a second
        // lock, not the first.
        if ssl.verify_result() != X509VerifyResult::OK {
            return None;
        }
        let peer = ssl.peer_certificate()?;
        let mut names = peer.subject_name().entries_by_nid(Nid::COMMONNAME);
        let cn = names.next()?;
        if names.next().is_some() {
            return None;
        }
        // A NUL inside, or bytes that were not UTF-8 (replaced by U+FFFD),
        // could make two different names compare equal: no subject then.
        let subject_common_name = cn.data().to_string().ok()?;
        if subject_common_name.contains(['\0', '\u{FFFD}']) {
            return None;
        }
        Some(Arc::new(ClientCertificate {
            subject_common_name,
        }))
    }
}

fn use_certificate(ssl: &mut TlsRef, cert: &LoadedCert) -> Result<(), openssl::error::ErrorStack> {
    use pingora::tls::ext;
    let mut chain = cert.chain.iter();
    if let Some(leaf) = chain.next() {
        ext::ssl_use_certificate(ssl, leaf)?;
    }
    for intermediate in chain {
        ext::ssl_add_chain_cert(ssl, intermediate)?;
    }
    ext::ssl_use_private_key(ssl, &cert.key)
}
