//! The live policy: one `ArcSwap<Snapshot>`. Requests `load()` it once and keep
//! that snapshot to the end, so a change never tears a request in half.
//! Changes (API or file) are serialized by one lock: each builds a new
//! snapshot from the current source, validates it, persists it, then swaps.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use super::compile::{compile, compile_from, compile_hashed, CompileContext, Snapshot};
use super::model::PolicyFile;
use super::persist::write_atomically;
use crate::config::settings::{from_yaml, ConfigError};

/// Identity of the policy file's current contents, to notice edits cheaply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode: m.ino(),
    })
}

/// The outcome of the last load attempt, for the status endpoint and metrics.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadStatus {
    pub source: String,
    pub result: String,
    pub at_unix: u64,
    pub errors: Vec<String>,
}

pub enum ChangeError<E> {
    /// The change itself refused (bad argument, not allowed).
    Refused(E),
    /// The result would not be a valid policy.
    Invalid(Vec<ConfigError>),
    /// The new policy could not be made durable; nothing changed.
    Persist(std::io::Error),
    /// The shared store (etcd) cannot take the change now; why, said to
    /// the caller (503).
    Unavailable(String),
    /// Other replicas' changes kept winning the race (409, retry).
    Conflict,
}

/// Where the policy is kept.
pub(crate) enum Backend {
    /// The policy file, polled for edits.
    File,
    /// etcd, shared by the fleet and watched; the file is this replica's
    /// last-good cache.
    Etcd(Arc<super::etcd::Etcd>),
}

pub struct PolicyStore {
    pub(super) current: ArcSwap<Snapshot>,
    pub(super) path: PathBuf,
    pub(super) next_version: AtomicU64,
    /// Serializes every change; holds the stamp of the file we last loaded or wrote.
    pub(super) writer: Mutex<Option<FileStamp>>,
    pub(super) last: Mutex<ReloadStatus>,
    pub(crate) backend: Backend,
    /// The audit keys this replica committed to etcd, so its watch does
    /// not log them a second time.
    pub(super) written_here: Mutex<std::collections::VecDeque<String>>,
    /// Audit entries of other replicas' changes, from the watch.
    pub(super) fleet_audit: std::sync::OnceLock<Arc<super::audit::AuditLog>>,
    /// Told of each reload the store makes by itself (the etcd watch):
    /// the source, and the new snapshot or `None` for a refused one. The
    /// server counts them in its metrics.
    pub(super) on_reload: std::sync::OnceLock<ReloadHook>,
}

pub type ReloadHook = Box<dyn Fn(&str, Option<&Snapshot>) + Send + Sync>;

fn read_policy(path: &Path) -> Result<PolicyFile, Vec<ConfigError>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigError {
            file: path.display().to_string(),
            key: String::new(),
            message: format!("cannot read: {e}"),
        }]
    })?;
    // An empty document would parse as a policy without clients and lock
    // everyone out; it is what a poll sees between the truncate and the
    // write of an in-place rewrite, or after `: > policy.yaml`.
    if text.trim().is_empty() {
        return Err(vec![ConfigError {
            file: path.display().to_string(),
            key: String::new(),
            message: "the policy file is empty".into(),
        }]);
    }
    let policy: PolicyFile = from_yaml(path, &text).map_err(|e| vec![e])?;
    // Likewise a file cut down to its header comment, `{}` or `clients: {}`:
    // no caller could be served and no owner could repair it through the API.
    if policy.clients.is_empty() {
        return Err(vec![ConfigError {
            file: path.display().to_string(),
            key: "clients".into(),
            message: "the policy has no clients: it would lock every caller out".into(),
        }]);
    }
    Ok(policy)
}

/// Reads and compiles a policy file without touching any live state.
pub fn load_policy_file(path: &Path, version: u64) -> Result<Snapshot, Vec<ConfigError>> {
    compile(
        read_policy(path)?,
        &CompileContext {
            file: path,
            version,
        },
    )
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the policy torn (the swap is
    // the last step), so a poisoned lock is safe to keep using.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl PolicyStore {
    pub fn open(path: &Path) -> Result<PolicyStore, Vec<ConfigError>> {
        let before = stamp(path);
        let snap = load_policy_file(path, 1)?;
        Ok(PolicyStore::started(snap, path, before, Backend::File))
    }

    /// A store whose first snapshot (version 1) was just loaded.
    pub(super) fn started(
        snap: Snapshot,
        path: &Path,
        stamp: Option<FileStamp>,
        backend: Backend,
    ) -> PolicyStore {
        PolicyStore {
            current: ArcSwap::from_pointee(snap),
            path: path.to_path_buf(),
            next_version: AtomicU64::new(2),
            writer: Mutex::new(stamp),
            last: Mutex::new(ReloadStatus {
                source: "startup".into(),
                result: "success".into(),
                at_unix: now_unix(),
                errors: Vec::new(),
            }),
            backend,
            written_here: Mutex::new(std::collections::VecDeque::new()),
            fleet_audit: std::sync::OnceLock::new(),
            on_reload: std::sync::OnceLock::new(),
        }
    }

    /// Compiles a changed policy as the next version, carrying on the
    /// rate-limit buckets of `current`.
    pub(super) fn compile_next(
        &self,
        next: PolicyFile,
        current: &Snapshot,
    ) -> Result<Snapshot, Vec<ConfigError>> {
        let version = self.next_version.fetch_add(1, Ordering::SeqCst);
        // Only what the change touched is compiled; the rest is shared
        // with `current`, rate buckets included.
        compile_from(
            current,
            next,
            &CompileContext {
                file: &self.path,
                version,
            },
            None,
        )
    }

    /// Sets what is told of the reloads the store makes by itself.
    pub fn set_reload_hook(&self, hook: ReloadHook) {
        let _ = self.on_reload.set(hook);
    }

    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Clients in the live policy, read without taking a reference count.
    pub fn client_count(&self) -> usize {
        self.current.load().clients.len()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn last_status(&self) -> ReloadStatus {
        lock(&self.last).clone()
    }

    pub(super) fn record(&self, source: &str, errors: &[ConfigError]) {
        *lock(&self.last) = ReloadStatus {
            source: source.into(),
            result: if errors.is_empty() {
                "success"
            } else {
                "failure"
            }
            .into(),
            at_unix: now_unix(),
            errors: errors.iter().map(|e| e.to_string()).collect(),
        };
    }

    /// Re-reads the file if it changed since it was last loaded or written.
    /// `Ok(None)`: nothing new. On any error the running policy stays.
    pub fn reload_if_changed(
        &self,
        source: &str,
    ) -> Result<Option<Arc<Snapshot>>, Vec<ConfigError>> {
        // With etcd the file is only a cache: the watch brings changes.
        if let Backend::Etcd(_) = self.backend {
            return Ok(None);
        }
        let mut seen = lock(&self.writer);
        let now = stamp(&self.path);
        // A missing file (`None`) that was already missing at the last poll
        // is the same state: it was reported once, when it went away.
        if now == *seen {
            return Ok(None);
        }
        self.reload_locked(&mut seen, now, source)
    }

    /// Re-reads the file unconditionally (SIGHUP).
    pub fn reload(&self, source: &str) -> Result<Option<Arc<Snapshot>>, Vec<ConfigError>> {
        let mut seen = lock(&self.writer);
        if let Backend::Etcd(etcd) = &self.backend {
            // Under the writer lock: a change committing here meanwhile
            // must not be overtaken by this (older) read.
            return self.reload_from_etcd(etcd, source);
        }
        let now = stamp(&self.path);
        self.reload_locked(&mut seen, now, source)
    }

    fn reload_locked(
        &self,
        seen: &mut Option<FileStamp>,
        now: Option<FileStamp>,
        source: &str,
    ) -> Result<Option<Arc<Snapshot>>, Vec<ConfigError>> {
        // Remember the stamp even when the file is bad, so a broken file is
        // reported once per edit rather than on every poll.
        *seen = now;
        let policy = match read_policy(&self.path) {
            Ok(p) => p,
            Err(e) => {
                self.record(source, &e);
                return Err(e);
            }
        };
        // Without its hash a changed policy could look unchanged: refused.
        let hash = match super::compile::policy_hash(&policy) {
            Ok(hash) => hash,
            Err(why) => {
                let e = vec![ConfigError {
                    file: self.path.display().to_string(),
                    key: String::new(),
                    message: why,
                }];
                self.record(source, &e);
                return Err(e);
            }
        };
        if hash == self.current.load().hash {
            // A valid file with the running content (fixed back, or SIGHUP
            // with no edit) is a successful load: no new version is needed.
            self.record(source, &[]);
            return Ok(Some(self.current.load_full()));
        }
        let version = self.next_version.fetch_add(1, Ordering::SeqCst);
        match compile_hashed(
            policy,
            &CompileContext {
                file: &self.path,
                version,
            },
            hash,
        ) {
            Ok(mut snap) => {
                snap.keep_rate_buckets(&self.current.load());
                let snap = Arc::new(snap);
                self.current.store(snap.clone());
                self.record(source, &[]);
                Ok(Some(snap))
            }
            Err(e) => {
                self.record(source, &e);
                Err(e)
            }
        }
    }

    /// Applies one change: new policy from the current source, compiled
    /// (validated), written durably, then swapped in. `after_persist` runs
    /// under the same lock once the change is on disk (the audit log).
    ///
    /// `audit` makes the change's audit line; with etcd it commits with the
    /// change. `after_persist` gets it once the change is durable, under
    /// the same lock (the local audit log). With etcd a change that lost a
    /// race is run again on the newer policy, so `change` may run more than
    /// once.
    pub fn apply<R, E>(
        &self,
        request_id: &str,
        mut change: impl FnMut(&mut PolicyFile, &Snapshot) -> Result<R, E>,
        audit: impl Fn(&PolicyFile, &PolicyFile, &R) -> String,
        after_persist: impl FnOnce(&str),
    ) -> Result<(R, Arc<Snapshot>), ChangeError<E>> {
        if let Backend::Etcd(etcd) = &self.backend {
            return self.apply_etcd(etcd, request_id, change, audit, after_persist);
        }
        let mut seen = lock(&self.writer);
        // An operator's edit not yet picked up by the poller must not be
        // overwritten: load it first, and refuse the change if it is invalid.
        let now = stamp(&self.path);
        if now.is_some() && now != *seen {
            self.reload_locked(&mut seen, now, "file")
                .map_err(ChangeError::Invalid)?;
        }
        let current = self.current.load_full();
        // One deep copy of the model per change: the running snapshot keeps
        // the `before` side, and the compiled snapshot keeps the new one.
        let before = &current.source;
        let mut next = before.clone();
        let out = change(&mut next, &current).map_err(ChangeError::Refused)?;
        let yaml = serde_yaml::to_string(&next)
            .map_err(|e| ChangeError::Persist(std::io::Error::other(e)))?;
        let snap = self
            .compile_next(next, &current)
            .map_err(ChangeError::Invalid)?;
        let text =
            format!("# Written by recordgate's management API; edits are picked up live.\n{yaml}");
        if let Err(e) = write_atomically(&self.path, text.as_bytes()) {
            // Shown in `/status` as well as counted: the change did not happen.
            self.record(
                "api",
                &[ConfigError {
                    file: self.path.display().to_string(),
                    key: String::new(),
                    message: format!("the change could not be saved and was not applied: {e}"),
                }],
            );
            return Err(ChangeError::Persist(e));
        }
        *seen = stamp(&self.path);
        after_persist(&audit(before, &snap.source, &out));
        let snap = Arc::new(snap);
        self.current.store(snap.clone());
        self.record("api", &[]);
        Ok((out, snap))
    }
}

/// What a change would do, found without doing it (a management call's
/// `dry_run`).
pub struct Preview<R> {
    /// What the change itself answered.
    pub out: R,
    /// The running policy it was applied to.
    pub before: Arc<Snapshot>,
    /// The policy it would make.
    pub after: PolicyFile,
    /// Why the whole policy would be refused; empty when it would go live.
    pub errors: Vec<ConfigError>,
}

impl PolicyStore {
    /// Runs `change` against the running policy and compiles the result
    /// like [`PolicyStore::apply`], but persists, swaps and records
    /// nothing. Serialized with real changes, so it sees the policy the
    /// next change would be applied to.
    pub fn preview<R, E>(
        &self,
        change: impl FnOnce(&mut PolicyFile, &Snapshot) -> Result<R, E>,
    ) -> Result<Preview<R>, E> {
        let _one_at_a_time = lock(&self.writer);
        let before = self.current.load_full();
        let mut after = before.source.clone();
        let out = change(&mut after, &before)?;
        let errors = match compile_from(
            &before,
            after.clone(),
            &CompileContext {
                file: &self.path,
                version: before.version,
            },
            None,
        ) {
            Ok(_) => Vec::new(),
            Err(errors) => errors,
        };
        Ok(Preview {
            out,
            before,
            after,
            errors,
        })
    }
}
