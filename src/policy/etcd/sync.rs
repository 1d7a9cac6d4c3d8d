//! The policy store with etcd behind it: starting from etcd (or from the
//! local last-good cache while etcd is away), committing a change, and
//! adopting a state etcd holds.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::layout::{self, Guard};
use super::{CommitError, Etcd};
use crate::config::settings::ConfigError;
use crate::config::store::EtcdSettings;
use crate::policy::compile::{compile_from, compile_hashed, CompileContext, Snapshot};
use crate::policy::model::PolicyFile;
use crate::policy::store::{lock, Backend, ChangeError, PolicyStore};

/// Audit keys remembered as written here (for the watch to skip).
const WRITTEN_HERE: usize = 4096;

fn config_error(path: &Path, message: String) -> ConfigError {
    ConfigError {
        file: path.display().to_string(),
        key: String::new(),
        message,
    }
}

impl PolicyStore {
    /// Opens the etcd store: the policy etcd holds, if it is whole; else
    /// (etcd away, or nothing imported yet) the local cache at `cache`,
    /// marked stale. Starts the watch.
    pub fn open_etcd(settings: &EtcdSettings, cache: &Path) -> Result<Arc<PolicyStore>, String> {
        let base = cache.parent().unwrap_or(Path::new("."));
        let etcd = Arc::new(Etcd::connect(settings, base)?);
        let _ = etcd.cache.set(super::cache::CacheWriter::start(cache));
        let ctx = CompileContext {
            file: cache,
            version: 1,
        };
        let t = std::time::Instant::now();
        let from_etcd = etcd.read_all().and_then(|(mirror, revision)| {
            tracing::debug!(elapsed = ?t.elapsed(), keys = mirror.policy.clients.len(), "etcd read at start");
            let (policy, hash) = mirror.whole()?;
            tracing::debug!(elapsed = ?t.elapsed(), "etcd policy checked against its guard");
            let snap = compile_hashed(policy.clone(), &ctx, hash).map_err(|e| {
                e.iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            })?;
            Ok((snap, revision, mirror.guard_revision))
        });
        let snap = match from_etcd {
            Ok((snap, revision, guard_revision)) => {
                let mut st = etcd.state();
                st.connected = true;
                st.applied_revision = revision;
                st.guard_revision = guard_revision;
                st.last_sync = Some(std::time::Instant::now());
                drop(st);
                tracing::debug!(elapsed = ?t.elapsed(), "etcd policy compiled");
                snap
            }
            Err(why) => {
                let snap = crate::policy::store::load_policy_file(cache, 1).map_err(|_| {
                    format!(
                        "policy_store: etcd: {why}; and there is no usable last-good cache at {} \
                         (run `recordgate policy import` to put a policy in etcd)",
                        cache.display()
                    )
                })?;
                tracing::warn!(reason = %why, cache = %cache.display(), "starting from the local policy cache: etcd's policy is not available");
                let mut st = etcd.state();
                st.stale = true;
                st.pending = Some(why);
                snap
            }
        };
        let stale = etcd.state().stale;
        let store = Arc::new(PolicyStore::started(
            snap,
            cache,
            None,
            Backend::Etcd(etcd.clone()),
        ));
        if !stale {
            store.keep_copy(&store.load());
        }
        super::watch::start(&etcd, Arc::downgrade(&store));
        Ok(store)
    }

    /// Where this replica stands with etcd; `None` with the file store.
    pub fn etcd_state(&self) -> Option<super::SyncState> {
        match &self.backend {
            Backend::Etcd(etcd) => Some(etcd.state().clone()),
            Backend::File => None,
        }
    }

    /// Other replicas' audit entries go to this log as the watch sees them.
    pub fn set_fleet_audit(&self, log: Arc<crate::policy::audit::AuditLog>) {
        let _ = self.fleet_audit.set(log);
    }

    /// Puts a whole policy etcd holds in force, if it differs from the
    /// running one. Returns the new snapshot, if one was swapped in.
    pub(super) fn adopt(
        &self,
        policy: &PolicyFile,
        hash: String,
        source: &str,
    ) -> Result<Option<Arc<Snapshot>>, Vec<ConfigError>> {
        if self.current.load().hash == hash {
            return Ok(None);
        }
        let version = self.next_version.fetch_add(1, Ordering::SeqCst);
        let ctx = CompileContext {
            file: &self.path,
            version,
        };
        match compile_from(&self.current.load(), policy.clone(), &ctx, Some(hash)) {
            Ok(snap) => {
                let snap = Arc::new(snap);
                self.current.store(snap.clone());
                self.record(source, &[]);
                self.keep_copy(&snap);
                Ok(Some(snap))
            }
            Err(e) => {
                self.record(source, &e);
                Err(e)
            }
        }
    }

    /// A full read of etcd (SIGHUP, a conflict, a compaction).
    pub(in crate::policy) fn reload_from_etcd(
        &self,
        etcd: &Etcd,
        source: &str,
    ) -> Result<Option<Arc<Snapshot>>, Vec<ConfigError>> {
        let (mirror, revision) = etcd
            .read_all()
            .map_err(|e| vec![config_error(&self.path, format!("etcd: {e}"))])?;
        match mirror.whole() {
            Ok((policy, hash)) => {
                let adopted = self.adopt(policy, hash, source)?;
                let mut st = etcd.state();
                // The applied revision is the watch's: it still brings the
                // events up to `revision` (audit entries among them); the
                // guard revision keeps it from putting an older state back.
                let _ = revision;
                st.guard_revision = st.guard_revision.max(mirror.guard_revision);
                st.stale = false;
                st.pending = None;
                st.connected = true;
                st.last_sync = Some(std::time::Instant::now());
                Ok(adopted.or_else(|| Some(self.current.load_full())))
            }
            Err(why) => {
                etcd.state().pending = Some(why.clone());
                let e = vec![config_error(&self.path, format!("etcd: {why}"))];
                self.record(source, &e);
                Err(e)
            }
        }
    }

    /// [`PolicyStore::apply`] with etcd: the change is compiled against this
    /// replica's snapshot and committed in one transaction with the new
    /// guard and the audit entry, if the guard has not moved; on a race the
    /// newer policy is read and the change run again.
    pub(in crate::policy) fn apply_etcd<R, E>(
        &self,
        etcd: &Etcd,
        request_id: &str,
        mut change: impl FnMut(&mut PolicyFile, &Snapshot) -> Result<R, E>,
        audit: impl Fn(&PolicyFile, &PolicyFile, &R) -> String,
        after_persist: impl FnOnce(&str),
    ) -> Result<(R, Arc<Snapshot>), ChangeError<E>> {
        let _one_at_a_time = lock(&self.writer);
        let audit_id = layout::change_id(request_id);
        // Known as this replica's before it can reach the watch, which
        // would otherwise log it a second time.
        {
            let mut here = lock(&self.written_here);
            if here.len() >= WRITTEN_HERE {
                here.pop_front();
            }
            here.push_back(audit_id.clone());
        }
        for _ in 0..=etcd.conflict_retries {
            let guard_revision = {
                let st = etcd.state();
                if st.stale {
                    return Err(ChangeError::Unavailable(
                        "the policy store (etcd) is not reachable: nothing was changed".into(),
                    ));
                }
                st.guard_revision
            };
            let current = self.current.load_full();
            let before = &current.source;
            let mut next = before.clone();
            let out = change(&mut next, &current).map_err(ChangeError::Refused)?;
            let line = audit(before, &next, &out);
            let writes = layout::diff(&etcd.prefix, before, &next)
                .map_err(|e| ChangeError::Persist(std::io::Error::other(e)))?;
            let snap = self
                .compile_next(next, &current)
                .map_err(ChangeError::Invalid)?;
            let guard = Guard {
                hash: snap.hash.clone(),
            };
            let committed = match etcd.commit(
                guard_revision,
                writes,
                &guard,
                (&audit_id, line.clone()),
            ) {
                Err(CommitError::Unknown(why)) => match settle(etcd, &audit_id) {
                    Ok(Some(revision)) => {
                        tracing::info!(revision, first = %why, "a policy change's outcome was unknown: its audit entry shows it committed");
                        Ok(revision)
                    }
                    Ok(None) => {
                        tracing::info!(first = %why, "a policy change's outcome was unknown: fenced, it never commits");
                        Err(CommitError::Unavailable(why))
                    }
                    Err(e) => {
                        // Should it commit after all (etcd's log can still
                        // hold it), the watch logs it like another
                        // replica's change: it is in no audit log yet.
                        lock(&self.written_here).retain(|id| id != &audit_id);
                        tracing::warn!(first = %why, then = %e, "a policy change's outcome is unknown: etcd did not answer");
                        return Err(ChangeError::Unavailable(
                            "the policy store (etcd) did not answer: the change was not confirmed. \
                             Had etcd received it, it takes effect everywhere once etcd recovers, \
                             and its audit entry shows it; check the policy before sending it again"
                                .into(),
                        ));
                    }
                },
                other => other,
            };
            match committed {
                Ok(revision) => {
                    etcd.state().guard_revision = revision;
                    after_persist(&line);
                    let snap = Arc::new(snap);
                    self.current.store(snap.clone());
                    self.record("api", &[]);
                    self.keep_copy(&snap);
                    return Ok((out, snap));
                }
                Err(CommitError::Conflict) => {
                    // Someone else's change won: read it, then run this one
                    // again on top of it.
                    if let Err(e) = self.reload_from_etcd(etcd, "etcd") {
                        let why = e.first().map(|e| e.message.clone()).unwrap_or_default();
                        return Err(ChangeError::Unavailable(format!(
                            "the policy store (etcd) changed and could not be read again ({why}): nothing was changed"
                        )));
                    }
                }
                Err(CommitError::Unavailable(why)) | Err(CommitError::Unknown(why)) => {
                    self.record(
                        "api",
                        &[config_error(
                            &self.path,
                            format!("etcd refused the change, nothing was changed: {why}"),
                        )],
                    );
                    tracing::warn!(error = %why, "a policy change was refused: etcd is not available");
                    return Err(ChangeError::Unavailable(
                        "the policy store (etcd) is not available: nothing was changed".into(),
                    ));
                }
            }
        }
        Err(ChangeError::Conflict)
    }

    /// Has the replica's last-good copy brought up to `snap`, off this
    /// thread.
    fn keep_copy(&self, snap: &Arc<Snapshot>) {
        if let Backend::Etcd(etcd) = &self.backend {
            if let Some(writer) = etcd.cache.get() {
                writer.write(snap.clone(), &self.path);
            }
        }
    }

    /// Whether the watch should log this audit key (it was not written
    /// here).
    pub(super) fn written_elsewhere(&self, audit_id: &str) -> bool {
        !lock(&self.written_here).iter().any(|id| id == audit_id)
    }
}

/// Attempts to settle a change whose outcome is unknown, each within the
/// request time-out.
const SETTLE_ATTEMPTS: u32 = 3;

/// [`Etcd::settle`], tried a few times: the answer is either the revision
/// the change committed at, or that it never will.
fn settle(etcd: &Etcd, change_id: &str) -> Result<Option<i64>, String> {
    let mut last = String::new();
    for _ in 0..SETTLE_ATTEMPTS {
        match etcd.settle(change_id) {
            Ok(outcome) => return Ok(outcome),
            Err(e) => last = e,
        }
    }
    Err(last)
}
