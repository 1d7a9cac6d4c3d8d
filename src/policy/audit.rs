//! The audit trail of policy changes: one JSON object per line, appended and
//! synced before the change is acknowledged. Secrets are redacted.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use super::model::ClientDef;

pub const REDACTED: &str = "[redacted]";

#[derive(Debug, Serialize)]
pub struct AuditEntry<'a> {
    pub ts: String,
    pub request_id: &'a str,
    pub caller: &'a str,
    pub ip: String,
    pub endpoint: &'a str,
    pub target: Option<&'a str>,
    pub before: Value,
    pub after: Value,
}

/// A client as it appears in the audit log: everything but secret material.
pub fn redacted_client(c: Option<&std::sync::Arc<ClientDef>>) -> Value {
    let Some(c) = c else { return Value::Null };
    let mut v = serde_json::to_value(c).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.insert("secret".into(), Value::String(REDACTED.into()));
        if m.contains_key("previous_secret") {
            m.insert("previous_secret".into(), Value::String(REDACTED.into()));
        }
    }
    v
}

pub struct AuditLog {
    path: PathBuf,
}

impl AuditLog {
    pub fn new(path: PathBuf) -> AuditLog {
        AuditLog { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn append(&self, entry: &AuditEntry<'_>) -> std::io::Result<()> {
        let line = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
        self.append_line(&line)
    }

    /// Appends one entry already serialised (another replica's, from etcd).
    pub fn append_line(&self, entry: &[u8]) -> std::io::Result<()> {
        let mut line = Vec::with_capacity(entry.len() + 1);
        line.extend_from_slice(entry);
        line.push(b'\n');
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        f.write_all(&line)?;
        f.sync_data()
    }
}
