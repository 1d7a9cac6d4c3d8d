//! Where the policy lives (`policy_store:`): the policy file (the default),
//! or an etcd cluster the whole fleet shares, each replica watching it.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::secrets::SecretSource;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyStoreSettings {
    #[serde(default)]
    pub kind: StoreKind,
    /// Required with `kind: etcd`.
    #[serde(default)]
    pub etcd: Option<EtcdSettings>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// `policy:` is the policy, polled for edits; management writes go to it.
    #[default]
    File,
    /// The policy is in etcd under `etcd.prefix`; `policy:` is this
    /// replica's last-good cache, used only to start while etcd is away.
    Etcd,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdSettings {
    /// Client URLs of the members (`http://10.0.0.1:2379`).
    pub endpoints: Vec<String>,
    /// Every key of the policy is under it; must end with `/`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// etcd authentication (a user restricted to the prefix).
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<SecretSource>,
    /// TLS to etcd: the CA of its certificates, and this replica's own
    /// certificate and key when etcd requires client certificates.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Connecting to a member.
    #[serde(default = "default_connect_ms")]
    pub connect_timeout_ms: u64,
    /// One request (a read, a commit); a write that gets no answer in time
    /// is resolved (was it committed?) before the caller is answered.
    #[serde(default = "default_request_ms")]
    pub request_timeout_ms: u64,
    /// A write that lost a race with another replica's is run again on the
    /// newer policy this many times before "changed concurrently, retry".
    #[serde(default = "default_retries")]
    pub conflict_retries: u32,
    /// How long audit entries (and fences of changes whose outcome was
    /// unknown) stay in etcd; 0 keeps them forever. Each replica's local
    /// audit log keeps its own copy of the trail.
    #[serde(default = "default_audit_retention")]
    pub audit_retention_secs: u64,
}

fn default_prefix() -> String {
    "/recordgate/".into()
}
fn default_connect_ms() -> u64 {
    2000
}
fn default_request_ms() -> u64 {
    3000
}
fn default_retries() -> u32 {
    5
}
fn default_audit_retention() -> u64 {
    7 * 24 * 3600
}

impl PolicyStoreSettings {
    pub fn resolve_paths(&mut self, dir: &Path) {
        if let Some(e) = self.etcd.as_mut() {
            for p in [&mut e.ca_file, &mut e.cert_file, &mut e.key_file]
                .into_iter()
                .flatten()
            {
                if p.is_relative() {
                    *p = dir.join(&*p);
                }
            }
        }
    }

    /// Every problem, as (key under `policy_store.`, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        match (self.kind, &self.etcd) {
            (StoreKind::Etcd, None) => {
                out.push(("etcd".into(), "is required with kind: etcd".into()))
            }
            (StoreKind::File, Some(_)) => out.push((
                "etcd".into(),
                "is set but kind is file: say kind: etcd, or remove it".into(),
            )),
            _ => {}
        }
        if let Some(e) = &self.etcd {
            if e.endpoints.is_empty() {
                out.push(("etcd.endpoints".into(), "at least one is required".into()));
            }
            for (i, ep) in e.endpoints.iter().enumerate() {
                if !(ep.starts_with("http://") || ep.starts_with("https://")) {
                    out.push((
                        format!("etcd.endpoints[{i}]"),
                        format!("{ep:?} is not an http:// or https:// URL"),
                    ));
                }
            }
            if !e.prefix.starts_with('/') || !e.prefix.ends_with('/') || e.prefix.len() < 2 {
                out.push((
                    "etcd.prefix".into(),
                    "must start and end with / and name something (e.g. /recordgate/)".into(),
                ));
            }
            if e.user.is_some() != e.password.is_some() {
                out.push((
                    "etcd.password".into(),
                    "user and password go together".into(),
                ));
            }
            if e.cert_file.is_some() != e.key_file.is_some() {
                out.push((
                    "etcd.key_file".into(),
                    "cert_file and key_file go together".into(),
                ));
            }
            for (key, v) in [
                ("etcd.connect_timeout_ms", e.connect_timeout_ms),
                ("etcd.request_timeout_ms", e.request_timeout_ms),
            ] {
                if !(1..=600_000).contains(&v) {
                    out.push((key.into(), "must be between 1 and 600000".into()));
                }
            }
            // An entry must outlive the resolution of its change's unknown
            // outcome (a few request time-outs).
            let floor = (e.request_timeout_ms * 10).div_ceil(1000);
            if e.audit_retention_secs != 0 && e.audit_retention_secs < floor {
                out.push((
                    "etcd.audit_retention_secs".into(),
                    format!("must be 0 (keep forever) or at least {floor} (ten request time-outs)"),
                ));
            }
        }
        out
    }
}
