//! Secrets in configuration: inline, or by reference to an environment
//! variable or a file, so settings and policy files can live in Git.

use serde::{Deserialize, Serialize};

/// A client secret, inline or by reference so that policy files can live in Git.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SecretSource {
    Inline(String),
    Reference(SecretRef),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
pub enum SecretRef {
    Env(String),
    File(String),
}

impl SecretSource {
    /// Resolves the secret; the error names the reference, never the value.
    pub fn resolve(&self, base_dir: &std::path::Path) -> Result<String, String> {
        match self {
            SecretSource::Inline(s) => Ok(s.clone()),
            SecretSource::Reference(SecretRef::Env(var)) => {
                std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))
            }
            SecretSource::Reference(SecretRef::File(path)) => {
                let p = base_dir.join(path);
                std::fs::read_to_string(&p)
                    .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                    .map_err(|e| format!("cannot read secret file {}: {e}", p.display()))
            }
        }
    }
}
