//! A listener's certificates: each PEM chain and key read, checked (the key
//! matches, the leaf is valid now) and parsed once, then chosen per
//! handshake by SNI. The same checks run at start, in `check` and on every
//! reload, so a pair that would not start the gateway never replaces a
//! working one.

use std::path::Path;
use std::sync::Arc;

use openssl::asn1::{Asn1Time, Asn1TimeRef};
use openssl::pkey::{PKey, Private};
use openssl::x509::X509;

use crate::config::tls::CertificateFiles;

/// One certificate chain and its key, ready for the handshake.
pub struct LoadedCert {
    /// The leaf, then its intermediates, as in the file.
    pub chain: Vec<X509>,
    pub key: PKey<Private>,
    /// The leaf's DNS subject alternative names, lower case; `*.` wildcards
    /// stay as written.
    pub dns_names: Vec<String>,
    /// The leaf's `notAfter`, unix seconds.
    pub not_after_unix: i64,
    /// The files' content this was parsed from, to tell a change.
    pub source: (Vec<u8>, Vec<u8>),
}

/// Which of a pair's files a problem is in: the setting key's last part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairFile {
    Cert,
    Key,
}

impl PairFile {
    pub fn key(self) -> &'static str {
        match self {
            PairFile::Cert => "cert",
            PairFile::Key => "key",
        }
    }
}

/// A pair that cannot be used, and in which file the problem lies.
#[derive(Debug, Clone)]
pub struct PairError {
    pub file: PairFile,
    pub message: String,
}

fn fail(file: PairFile, message: String) -> PairError {
    PairError { file, message }
}

/// Reads both files of a pair.
pub fn read_pair(files: &CertificateFiles) -> Result<(Vec<u8>, Vec<u8>), PairError> {
    let read = |path: &Path, which| {
        std::fs::read(path).map_err(|e| fail(which, format!("cannot read {}: {e}", path.display())))
    };
    Ok((
        read(&files.cert, PairFile::Cert)?,
        read(&files.key, PairFile::Key)?,
    ))
}

/// Parses and checks a pair read by [`read_pair`].
pub fn parse_pair(cert_pem: Vec<u8>, key_pem: Vec<u8>) -> Result<LoadedCert, PairError> {
    let chain = X509::stack_from_pem(&cert_pem)
        .map_err(|e| fail(PairFile::Cert, format!("not a PEM certificate chain: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err(fail(PairFile::Cert, "holds no PEM certificate".into()));
    };
    let key = PKey::private_key_from_pem(&key_pem)
        .map_err(|e| fail(PairFile::Key, format!("not a PEM private key: {e}")))?;
    let public = leaf
        .public_key()
        .map_err(|e| fail(PairFile::Cert, format!("unreadable public key: {e}")))?;
    if !public.public_eq(&key) {
        return Err(fail(
            PairFile::Key,
            "does not match the certificate's public key".into(),
        ));
    }
    let now = Asn1Time::days_from_now(0)
        .map_err(|e| fail(PairFile::Cert, format!("cannot read the clock: {e}")))?;
    // An expired (or not yet valid) certificate is refused like a broken
    // one: every client would reject it, so serving it is an outage that
    // the old, still valid pair avoids, and `check` says so before a start.
    if leaf.not_after() < now {
        return Err(fail(
            PairFile::Cert,
            format!("the certificate expired on {}", leaf.not_after()),
        ));
    }
    if leaf.not_before() > now {
        return Err(fail(
            PairFile::Cert,
            format!("the certificate is not valid before {}", leaf.not_before()),
        ));
    }
    let dns_names = leaf
        .subject_alt_names()
        .map(|names| {
            names
                .iter()
                .filter_map(|n| n.dnsname().map(str::to_ascii_lowercase))
                .collect()
        })
        .unwrap_or_default();
    let not_after_unix = unix_seconds(leaf.not_after())
        .map_err(|e| fail(PairFile::Cert, format!("unreadable notAfter: {e}")))?;
    Ok(LoadedCert {
        chain,
        key,
        dns_names,
        not_after_unix,
        source: (cert_pem, key_pem),
    })
}

fn unix_seconds(t: &Asn1TimeRef) -> Result<i64, openssl::error::ErrorStack> {
    let epoch = Asn1Time::from_unix(0)?;
    let d = epoch.diff(t)?;
    Ok(i64::from(d.days) * 86_400 + i64::from(d.secs))
}

/// The certificate for `sni`: one with that exact DNS name, else one whose
/// `*.` wildcard covers it (one label, RFC 6125 §6.4.3), else the first.
pub fn select<'c>(certs: &'c [Arc<LoadedCert>], sni: Option<&str>) -> Option<&'c LoadedCert> {
    let first = certs.first().map(|c| &**c);
    let Some(name) = sni.map(|s| s.trim_end_matches('.').to_ascii_lowercase()) else {
        return first;
    };
    let exact = certs.iter().find(|c| c.dns_names.contains(&name));
    let wildcard = || {
        let (label, parent) = name.split_once('.')?;
        if label.is_empty() {
            return None;
        }
        certs.iter().find(|c| {
            c.dns_names
                .iter()
                .any(|n| n.strip_prefix("*.").is_some_and(|p| p == parent))
        })
    };
    exact.or_else(wildcard).map(|c| &**c).or(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(sets: &[&[&str]]) -> Vec<Arc<LoadedCert>> {
        let key = PKey::from_ec_key(
            openssl::ec::EcKey::generate(
                &openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1)
                    .unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        sets.iter()
            .map(|s| {
                Arc::new(LoadedCert {
                    chain: Vec::new(),
                    key: key.clone(),
                    dns_names: s.iter().map(|n| n.to_string()).collect(),
                    not_after_unix: 0,
                    source: (Vec::new(), Vec::new()),
                })
            })
            .collect()
    }

    fn chosen(certs: &[Arc<LoadedCert>], sni: Option<&str>) -> Vec<String> {
        select(certs, sni).unwrap().dns_names.clone()
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_the_first() {
        let certs = names(&[&["a.example"], &["*.b.example"], &["x.b.example"]]);
        assert_eq!(chosen(&certs, Some("x.b.example")), ["x.b.example"]);
        assert_eq!(chosen(&certs, Some("Y.B.example.")), ["*.b.example"]);
        assert_eq!(chosen(&certs, Some("b.example")), ["a.example"]);
        assert_eq!(chosen(&certs, Some("z.y.b.example")), ["a.example"]);
        assert_eq!(chosen(&certs, None), ["a.example"]);
    }
}
