//! End-user access tokens: whom each token issued through the gateway
//! belongs to. The issuer (the upstream) makes tokens; the gateway records,
//! as each one passes on its way to the caller, a binding from the token's
//! keyed hash to the client it was issued for, the user's record and its
//! expiry ([`TokenStore::bind`]). A call that presents a token is then
//! decided as that client's (`decide::token`).
//!
//! The token itself is never kept: only `HMAC-SHA256(hash_key, token)`, in
//! memory and on disk ([`journal`]). A binding also holds a keyed hash of
//! the client's secret at issuance ([`ClientTag`]): deleting the client or
//! resetting its secret changes it, and every token of the client stops
//! working without a walk over the bindings.

pub mod journal;
pub mod shared;
pub mod table;

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use sha2::Sha256;

use crate::config::tokens::{TokenSettings, MIN_HASH_KEY_BYTES};
use crate::ops::metrics;
use crate::policy::etcd::range::RangeSink;
use crate::policy::Client;
use journal::Journal;
pub use table::{Binding, ClientTag, Digest, Removal, Table, TokenKind};

/// What an issuer's answer carried, as read by the issuance stage.
#[derive(Debug, Clone)]
pub struct Issued {
    pub access_token: String,
    pub refresh_token: Option<String>,
    /// `expires_in`, seconds.
    pub expires_in: Option<u64>,
    pub uuid: Option<String>,
}

impl Drop for Issued {
    // Tokens do not linger in freed memory longer than the call.
    fn drop(&mut self) {
        wipe(&mut self.access_token);
        if let Some(r) = self.refresh_token.as_mut() {
            wipe(r);
        }
    }
}

/// Overwrites a secret before its memory is freed.
fn wipe(s: &mut String) {
    let mut bytes = std::mem::take(s).into_bytes();
    bytes.iter_mut().for_each(|b| *b = 0);
    std::hint::black_box(&bytes);
}

/// The client tokens are bound to, as the binding remembers it.
#[derive(Clone)]
pub struct Holder {
    pub client_id: Arc<str>,
    pub tag: ClientTag,
}

struct Lifetimes {
    default: u64,
    max: u64,
    refresh: u64,
}

pub struct TokenStore {
    /// Keyed once; each digest clones the keyed state.
    mac: Hmac<Sha256>,
    table: RwLock<Table>,
    /// Held across an append and its insertion, so a compaction never
    /// misses a binding that is on disk but not yet in the table.
    journal: Mutex<Journal>,
    lifetimes: Lifetimes,
    sweep_every: Duration,
    /// With the etcd policy store: the fleet's bindings ([`shared`]).
    shared: std::sync::OnceLock<shared::Shared>,
}

/// The keyed hash, from `tokens.hash_key` (`check` calls it to find a
/// missing or short key without opening the bindings file).
pub fn keyed(settings: &TokenSettings, policy_path: &Path) -> Result<Hmac<Sha256>, String> {
    let base = policy_path.parent().unwrap_or(Path::new("."));
    let mut key = settings
        .hash_key
        .resolve(base)
        .map_err(|e| format!("tokens.hash_key: {e}"))?;
    let mac = if key.len() < MIN_HASH_KEY_BYTES {
        Err(format!(
            "tokens.hash_key: must be at least {MIN_HASH_KEY_BYTES} bytes"
        ))
    } else {
        Hmac::<Sha256>::new_from_slice(key.as_bytes())
            .map_err(|_| "tokens.hash_key: not usable as an HMAC key".to_string())
    };
    wipe(&mut key);
    mac
}

pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

impl TokenStore {
    /// Opens the bindings file (and resolves the key). Errors name the
    /// setting.
    pub fn open(settings: &TokenSettings, policy_path: &Path) -> Result<TokenStore, String> {
        let mac = keyed(settings, policy_path)?;
        let path = settings.bindings_path(policy_path);
        let (journal, table, loaded) =
            Journal::open(&path, settings.sync, settings.max_bindings, now_secs())
                .map_err(|e| format!("tokens.bindings_file: {e}"))?;
        if loaded.unreadable > 0 {
            tracing::warn!(
                file = %path.display(),
                lines = loaded.unreadable,
                "unreadable token binding lines skipped (a write cut by a crash)"
            );
        }
        tracing::info!(
            file = %path.display(),
            kept = loaded.kept,
            expired = loaded.expired,
            "token bindings loaded"
        );
        metrics::TOKEN_BINDINGS.set(table.len() as i64);
        Ok(TokenStore {
            mac,
            table: RwLock::new(table),
            journal: Mutex::new(journal),
            lifetimes: Lifetimes {
                default: settings.default_lifetime_secs,
                max: settings.max_lifetime_secs,
                refresh: settings.refresh_lifetime_secs,
            },
            sweep_every: Duration::from_secs(settings.sweep_interval_secs),
            shared: std::sync::OnceLock::new(),
        })
    }

    /// The name a token is known by.
    pub fn digest(&self, token: &[u8]) -> Digest {
        let mut m = self.mac.clone();
        m.update(b"token\0");
        m.update(token);
        m.finalize().into_bytes().into()
    }

    pub fn holder(&self, client: &Client) -> Holder {
        Holder {
            client_id: Arc::from(client.id.as_str()),
            tag: self.client_tag(client),
        }
    }

    /// The client's secret as a binding remembers it.
    pub fn client_tag(&self, client: &Client) -> ClientTag {
        let mut m = self.mac.clone();
        m.update(b"client\0");
        m.update(client.id.as_bytes());
        m.update(b"\0");
        m.update(client.secret());
        let full: [u8; 32] = m.finalize().into_bytes().into();
        let mut tag = [0u8; 16];
        tag.copy_from_slice(&full[..16]);
        tag
    }

    /// Runs `f` on the binding of `token`, if there is one.
    pub fn lookup<R>(&self, token: &[u8], f: impl FnOnce(Option<&Binding>) -> R) -> R {
        let digest = self.digest(token);
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        f(table.get(&digest))
    }

    /// Records the tokens of an issuer's answer as `client`'s: on disk
    /// first, then in force. Returns when both are done, so the caller
    /// hands the token out only once the gateway will honour it. Blocking
    /// (file I/O): call off the async workers.
    pub fn bind(&self, issued: &Issued, holder: &Holder, now: i64) -> std::io::Result<()> {
        let tag = holder.tag;
        let client_id = holder.client_id.clone();
        let uuid: Option<Arc<str>> = issued.uuid.as_deref().map(Arc::from);
        let life = issued
            .expires_in
            .unwrap_or(self.lifetimes.default)
            .min(self.lifetimes.max);
        let mut bindings = vec![(
            self.digest(issued.access_token.as_bytes()),
            Binding {
                kind: TokenKind::Access,
                client_id: client_id.clone(),
                uuid: uuid.clone(),
                expires_at: now.saturating_add(life as i64),
                client_tag: tag,
            },
        )];
        if let Some(refresh) = &issued.refresh_token {
            bindings.push((
                self.digest(refresh.as_bytes()),
                Binding {
                    kind: TokenKind::Refresh,
                    client_id,
                    uuid,
                    expires_at: now.saturating_add(self.lifetimes.refresh as i64),
                    client_tag: tag,
                },
            ));
        }
        // The fleet's first (outside the journal's lock: it waits for
        // etcd): etcd holds the binding before the token is handed out, and
        // the other replicas' watches bring it within milliseconds.
        if let Some(shared) = self.shared.get() {
            shared.publish(&bindings, now);
        }
        let mut journal = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        for (d, b) in &bindings {
            journal.append(d, b)?;
        }
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        for (d, b) in bindings {
            let kind = match b.kind {
                TokenKind::Access => "access",
                TokenKind::Refresh => "refresh",
            };
            let evicted = table.insert(d, b);
            metrics::TOKENS_BOUND.inc(&[kind]);
            if evicted > 0 {
                metrics::TOKEN_BINDINGS_REMOVED
                    .inc_by(&[Removal::Capacity.label()], evicted as u64);
            }
        }
        metrics::TOKEN_BINDINGS.set(table.len() as i64);
        Ok(())
    }

    /// Shares this replica's bindings with the fleet through etcd, and
    /// follows the fleet's ([`shared`]).
    pub fn share(
        self: &Arc<Self>,
        settings: &crate::config::store::EtcdSettings,
        base: &Path,
    ) -> Result<(), String> {
        // Set before the watch starts: what it brings goes through it.
        let _ = self.shared.set(shared::Shared::connect(settings, base)?);
        if let Some(shared) = self.shared.get() {
            let sink: std::sync::Weak<dyn RangeSink> = Arc::downgrade(self) as _;
            shared.follow(sink);
        }
        Ok(())
    }

    /// Another replica's bindings (or this one's, back from etcd), into the
    /// table only: etcd is where they are kept.
    fn insert_shared(&self, bindings: Vec<(Digest, Binding)>) {
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        for (d, b) in bindings {
            if table.get(&d) == Some(&b) {
                continue;
            }
            let evicted = table.insert(d, b);
            if evicted > 0 {
                metrics::TOKEN_BINDINGS_REMOVED
                    .inc_by(&[Removal::Capacity.label()], evicted as u64);
            }
        }
        metrics::TOKEN_BINDINGS.set(table.len() as i64);
    }

    /// A binding etcd let expire.
    fn remove_shared(&self, digest: &Digest) {
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        if table.remove(digest) {
            metrics::TOKEN_BINDINGS_REMOVED.inc_by(&[Removal::Expired.label()], 1);
        }
        metrics::TOKEN_BINDINGS.set(table.len() as i64);
    }

    /// Drops expired bindings, and rewrites the file when it holds far
    /// more lines than bindings in force.
    pub fn sweep(&self, now: i64) -> std::io::Result<()> {
        let mut journal = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        let swept = table.sweep(now);
        if swept > 0 {
            metrics::TOKEN_BINDINGS_REMOVED.inc_by(&[Removal::Expired.label()], swept as u64);
        }
        metrics::TOKEN_BINDINGS.set(table.len() as i64);
        if journal.wants_compaction(table.len()) {
            journal.rewrite(&table)?;
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.table.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The fleet's bindings, as the watch on etcd brings them.
impl RangeSink for TokenStore {
    fn reset(&self, entries: Vec<(Vec<u8>, Vec<u8>)>) {
        let Some(shared) = self.shared.get() else {
            return;
        };
        let now = now_secs();
        let bindings: Vec<_> = entries
            .iter()
            .filter_map(|(k, v)| shared.binding(k, v, now))
            .collect();
        tracing::info!(
            bindings = bindings.len(),
            "the fleet's token bindings read from etcd"
        );
        self.insert_shared(bindings);
    }

    fn put(&self, key: &[u8], value: &[u8]) {
        let Some(shared) = self.shared.get() else {
            return;
        };
        match shared.binding(key, value, now_secs()) {
            Some(binding) => self.insert_shared(vec![binding]),
            None => {
                tracing::debug!(key = %String::from_utf8_lossy(key), "a token binding in etcd was not read")
            }
        }
    }

    fn delete(&self, key: &[u8]) {
        let Some(shared) = self.shared.get() else {
            return;
        };
        if let Some(digest) = shared.digest_of(key) {
            self.remove_shared(&digest);
        }
    }
}

/// Sweeps expired bindings every `tokens.sweep_interval_secs`.
pub struct Sweeper(pub Arc<TokenStore>);

#[async_trait]
impl BackgroundService for Sweeper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(self.0.sweep_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {
                    let store = self.0.clone();
                    let swept = tokio::task::spawn_blocking(move || store.sweep(now_secs())).await;
                    match swept {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::error!(error = %e, "token bindings file could not be compacted"),
                        Err(e) => tracing::error!(error = %e, "token binding sweep did not complete"),
                    }
                }
            }
        }
    }
}
