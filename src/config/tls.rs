//! TLS listeners in the settings (`tls_listen:`), beside the plain `listen:`
//! strings. A separate list of objects rather than `listen` entries that
//! may be objects: every existing settings file stays valid as it is, each
//! list has one shape (so a typo is reported at its key instead of as "did
//! not match any variant"), and the plain and TLS ports are told apart at a
//! glance. What is checked here needs no file; the certificate files
//! themselves are read and checked by `crate::tls` (at start, in `check`,
//! and on every reload).

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// TLS 1.2 cipher suites unless `ciphers` says otherwise (OpenSSL names):
/// forward-secret ECDHE with AEAD only, Mozilla's "intermediate" list
/// without the finite-field DHE suites.
pub const DEFAULT_TLS12_CIPHERS: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";

/// TLS 1.3 cipher suites unless `ciphersuites` says otherwise: all three
/// of RFC 8446's AEAD suites that OpenSSL enables by default.
pub const DEFAULT_TLS13_CIPHERSUITES: &str =
    "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";

/// One TLS listening address.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsListen {
    /// `addr:port`, like the entries of `listen`.
    pub address: String,
    /// The `listener` label of the TLS metrics and logs; defaults to the
    /// address.
    #[serde(default)]
    pub name: Option<String>,
    /// Chosen by SNI against each certificate's DNS names; the first one
    /// answers a client that sends no SNI or a name none of them carries.
    pub certificates: Vec<CertificateFiles>,
    #[serde(default = "default_min_version")]
    pub min_version: TlsVersion,
    #[serde(default = "default_max_version")]
    pub max_version: TlsVersion,
    /// TLS 1.2 cipher list (OpenSSL syntax).
    #[serde(default = "default_ciphers")]
    pub ciphers: String,
    /// TLS 1.3 cipher suites (OpenSSL syntax).
    #[serde(default = "default_ciphersuites")]
    pub ciphersuites: String,
    /// PEM bundle of the CA(s) whose client certificates are accepted. When
    /// set, a client certificate is required (mutual TLS): a handshake
    /// without one, or with one these CAs did not sign, fails.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// Offer HTTP/2 by ALPN (`h2`, then `http/1.1`). Off: HTTP/1.1 only.
    #[serde(default)]
    pub http2: bool,
}

/// A certificate chain and its private key, both PEM, relative to the
/// settings file. Reloaded when either file changes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    /// The leaf certificate first, then its intermediates.
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub enum TlsVersion {
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

fn default_min_version() -> TlsVersion {
    TlsVersion::Tls12
}

fn default_max_version() -> TlsVersion {
    TlsVersion::Tls13
}

fn default_ciphers() -> String {
    DEFAULT_TLS12_CIPHERS.to_string()
}

fn default_ciphersuites() -> String {
    DEFAULT_TLS13_CIPHERSUITES.to_string()
}

impl TlsListen {
    /// The `listener` label.
    pub fn label(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.address)
    }

    /// Makes the file paths relative to the settings file's folder.
    pub(crate) fn resolve_paths(&mut self, dir: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        for c in &mut self.certificates {
            resolve(&mut c.cert);
            resolve(&mut c.key);
        }
        if let Some(ca) = self.client_ca.as_mut() {
            resolve(ca);
        }
    }

    /// Problems that need no file, as (key, message) under `tls_listen[i]`.
    pub(crate) fn validate(&self, i: usize) -> Vec<(String, String)> {
        let key = |k: &str| format!("tls_listen[{i}].{k}");
        let mut errors = Vec::new();
        if self.address.parse::<std::net::SocketAddr>().is_err() {
            errors.push((
                key("address"),
                format!("{:?} is not an addr:port", self.address),
            ));
        }
        if self.name.as_deref().is_some_and(|n| n.trim().is_empty()) {
            errors.push((key("name"), "must not be empty".into()));
        }
        if self.certificates.is_empty() {
            errors.push((
                key("certificates"),
                "at least one certificate is required".into(),
            ));
        }
        if self.min_version > self.max_version {
            errors.push((key("min_version"), "must not be above max_version".into()));
        }
        if self.ciphers.trim().is_empty() {
            errors.push((key("ciphers"), "must not be empty".into()));
        }
        if self.ciphersuites.trim().is_empty() {
            errors.push((key("ciphersuites"), "must not be empty".into()));
        }
        errors
    }
}
