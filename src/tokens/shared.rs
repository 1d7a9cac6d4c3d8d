//! The fleet's token bindings, with the etcd policy store: every binding a
//! replica makes is also written to etcd (`<prefix>tokens/<digest>`), on a
//! lease of the token's lifetime so etcd deletes it when it ends, and every
//! replica follows that range into its own table. A user who signs in
//! through one replica is honoured by all of them, with no load-balancer
//! affinity.
//!
//! Only what the local file holds leaves the replica: the token's keyed
//! digest, its client, the user and the expiry, never the token. So every
//! replica must have the same `tokens.hash_key`, or a digest made by one
//! means nothing to another.
//!
//! A binding etcd does not take (etcd away) is still honoured by the
//! replica that made it, and counted
//! (`recordgate_token_bindings_unshared_total`): a sign-in keeps working
//! while etcd is away, through that replica.

use std::path::Path;
use std::sync::{Arc, Weak};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use super::journal;
use super::table::{Binding, Digest};
use crate::config::store::EtcdSettings;
use crate::ops::metrics;
use crate::policy::etcd::layout::TOKENS;
use crate::policy::etcd::range::RangeSink;
use crate::policy::etcd::Etcd;

pub struct Shared {
    etcd: Arc<Etcd>,
    /// `<prefix>tokens/`.
    folder: String,
}

impl Shared {
    /// A client of its own to etcd (connected lazily).
    pub fn connect(settings: &EtcdSettings, base: &Path) -> Result<Shared, String> {
        Ok(Shared {
            etcd: Arc::new(Etcd::connect(settings, base)?),
            folder: format!("{}{TOKENS}", settings.prefix),
        })
    }

    /// Reads the fleet's bindings into `sink`, and follows them from then on.
    pub fn follow(&self, sink: Weak<dyn RangeSink>) {
        self.etcd.follow_range(self.folder.clone(), sink);
    }

    fn key(&self, digest: &Digest) -> String {
        format!("{}{}", self.folder, URL_SAFE_NO_PAD.encode(digest))
    }

    /// The digest a key of the range names.
    pub fn digest_of(&self, key: &[u8]) -> Option<Digest> {
        let name = key.strip_prefix(self.folder.as_bytes())?;
        URL_SAFE_NO_PAD.decode(name).ok()?.try_into().ok()
    }

    /// One binding as etcd holds it; `None` for a value that does not
    /// read, does not match its key, or is expired at `now`.
    pub fn binding(&self, key: &[u8], value: &[u8], now: i64) -> Option<(Digest, Binding)> {
        let digest = self.digest_of(key)?;
        let (d, b) = journal::decode(std::str::from_utf8(value).ok()?.trim_end())?;
        (d == digest && b.expires_at > now).then_some((d, b))
    }

    /// Writes `bindings` to etcd, each leased until it expires. Blocking.
    /// A failure is counted and logged: the binding stays this replica's.
    pub fn publish(&self, bindings: &[(Digest, Binding)], now: i64) {
        let entries: Result<Vec<_>, String> = bindings
            .iter()
            .map(|(d, b)| Ok((self.key(d), journal::encode(d, b)?, b.expires_at)))
            .collect();
        if let Err(e) = entries.and_then(|entries| self.etcd.put_expiring(entries, now)) {
            metrics::TOKEN_BINDINGS_UNSHARED.inc_by(bindings.len() as u64);
            tracing::warn!(error = %e, "a token binding was not shared through etcd: only this replica honours it");
        }
    }
}
