//! End-user token settings (`tokens:`). Absent, the gateway takes no user
//! access tokens: `Authorization: OAuth` and `access_token` are refused as
//! an unsupported authentication method, and the token endpoints are not
//! routes.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::secrets::SecretSource;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSettings {
    /// The key of the keyed hash (HMAC-SHA256) a token is known by: the
    /// gateway keeps `HMAC(hash_key, token)`, never the token, in memory
    /// and on disk. Inline, `{env: VAR}` or `{file: path}`; at least 32
    /// bytes. Changing it forgets every binding.
    pub hash_key: SecretSource,
    /// Where bindings are kept across restarts (JSON lines, append-only,
    /// compacted in the background); default `<policy>.tokens.jsonl`.
    #[serde(default)]
    pub bindings_file: Option<PathBuf>,
    /// Most bindings kept; past it the oldest goes first
    /// (`recordgate_token_bindings_removed_total{reason="capacity"}`).
    #[serde(default = "default_max_bindings")]
    pub max_bindings: usize,
    /// An access token's life when the issuer's answer has no `expires_in`.
    #[serde(default = "default_lifetime")]
    pub default_lifetime_secs: u64,
    /// The longest life the gateway honours, whatever `expires_in` says.
    #[serde(default = "default_max_lifetime")]
    pub max_lifetime_secs: u64,
    /// How long a refresh token's binding is kept (the issuer says nothing
    /// of their life).
    #[serde(default = "default_refresh_lifetime")]
    pub refresh_lifetime_secs: u64,
    /// Expired bindings are dropped, and the file compacted, this often.
    #[serde(default = "default_sweep")]
    pub sweep_interval_secs: u64,
    /// Each new binding is on disk (fsync) before its token is handed out,
    /// so a crash never loses a token a user already holds. Off: written,
    /// not synced (survives the process being killed, not the machine).
    #[serde(default = "default_true")]
    pub sync: bool,
}

fn default_max_bindings() -> usize {
    200_000
}
fn default_lifetime() -> u64 {
    3600
}
fn default_max_lifetime() -> u64 {
    7 * 24 * 3600
}
fn default_refresh_lifetime() -> u64 {
    30 * 24 * 3600
}
fn default_sweep() -> u64 {
    60
}
fn default_true() -> bool {
    true
}

/// The shortest key accepted: the hash is only as strong as its key.
pub const MIN_HASH_KEY_BYTES: usize = 32;

impl TokenSettings {
    /// Relative paths are relative to the settings file.
    pub fn resolve_paths(&mut self, dir: &Path) {
        if let Some(f) = self.bindings_file.as_mut().filter(|f| f.is_relative()) {
            *f = dir.join(&*f);
        }
    }

    pub fn bindings_path(&self, policy: &Path) -> PathBuf {
        self.bindings_file
            .clone()
            .unwrap_or_else(|| policy.with_extension("tokens.jsonl"))
    }

    /// Every problem, as (key under `tokens.`, message).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.max_bindings == 0 {
            out.push(("max_bindings", "must be at least 1".to_string()));
        }
        for (key, v) in [
            ("default_lifetime_secs", self.default_lifetime_secs),
            ("max_lifetime_secs", self.max_lifetime_secs),
            ("refresh_lifetime_secs", self.refresh_lifetime_secs),
            ("sweep_interval_secs", self.sweep_interval_secs),
        ] {
            if v == 0 {
                out.push((key, "must be at least 1".to_string()));
            }
        }
        if self.default_lifetime_secs > self.max_lifetime_secs {
            out.push((
                "default_lifetime_secs",
                "must not exceed max_lifetime_secs".to_string(),
            ));
        }
        out
    }
}
