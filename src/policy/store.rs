//! The live policy: one `ArcSwap<Snapshot>`. Requests `load()` it once and keep
//! that snapshot to the end, so a change never tears a request in half.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::compile::{compile, CompileContext, Snapshot};
use super::model::PolicyFile;
use crate::settings::{from_yaml, ConfigError};

pub struct PolicyStore {
    current: ArcSwap<Snapshot>,
    path: PathBuf,
    next_version: AtomicU64,
}

/// Reads and compiles a policy file without touching any live state.
pub fn load_policy_file(path: &Path, version: u64) -> Result<Snapshot, Vec<ConfigError>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigError {
            file: path.display().to_string(),
            key: String::new(),
            message: format!("cannot read: {e}"),
        }]
    })?;
    let policy: PolicyFile = from_yaml(path, &text).map_err(|e| vec![e])?;
    compile(
        policy,
        &CompileContext {
            file: path,
            version,
        },
    )
}

impl PolicyStore {
    pub fn open(path: &Path) -> Result<PolicyStore, Vec<ConfigError>> {
        let snap = load_policy_file(path, 1)?;
        Ok(PolicyStore {
            current: ArcSwap::from_pointee(snap),
            path: path.to_path_buf(),
            next_version: AtomicU64::new(2),
        })
    }

    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-reads the file. On any error the running policy stays.
    pub fn reload(&self) -> Result<Arc<Snapshot>, Vec<ConfigError>> {
        let version = self.next_version.fetch_add(1, Ordering::SeqCst);
        let snap = Arc::new(load_policy_file(&self.path, version)?);
        self.current.store(snap.clone());
        Ok(snap)
    }
}
