//! Every replica follows etcd: one watch on the whole prefix from the
//! revision it applied, each revision's events applied together to a
//! mirror of etcd's keys, and the policy they spell put in force only when
//! it is whole (every key readable, its hash the guard's). The watch comes
//! back after any failure with jittered back-off and resumes from the
//! applied revision; on a compaction, a revision that goes backwards or a
//! new cluster (another cluster id), it reads everything again. The etcd-client crate does none
//! of this by itself.
//!
//! Events at or below the applied revision are ignored (etcd 3.4 can send
//! duplicates), and only events move the applied revision: progress
//! notifications can run ahead of events (etcd-io/etcd#15220).

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use etcd_client::{EventType, WatchOptions};

use super::layout::{self, Key, Mirror};
use super::Etcd;
use crate::policy::store::{lock, PolicyStore};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub(super) fn start(etcd: &Arc<Etcd>, store: Weak<PolicyStore>) {
    let e = etcd.clone();
    let s = store.clone();
    etcd.spawn(async move { follow(e, s).await });
    let e = etcd.clone();
    etcd.spawn(async move { trim_audit(e, store).await });
}

fn jittered(d: Duration) -> Duration {
    let f: f64 = 0.5 + rand::random::<f64>();
    d.mul_f64(f)
}

async fn follow(etcd: Arc<Etcd>, store: Weak<PolicyStore>) {
    let mut backoff = BACKOFF_MIN;
    // The mirror starts from a full read: the start's read is not kept.
    let mut mirror: Option<Mirror> = None;
    // Set when etcd's history was replaced (another cluster, or revisions
    // that went backwards): the guard revisions seen so far mean nothing.
    let mut history_replaced = false;
    loop {
        if store.strong_count() == 0 {
            return;
        }
        // A full read when there is no mirror yet (start, compaction, a
        // revision out of order).
        if mirror.is_none() {
            match super::read_all(etcd.client(), etcd.prefix.clone()).await {
                Ok((m, revision)) => {
                    tracing::debug!(
                        revision,
                        guard_revision = m.guard_revision,
                        "etcd read whole"
                    );
                    {
                        let mut st = etcd.state();
                        st.applied_revision = revision;
                        if std::mem::take(&mut history_replaced) {
                            st.guard_revision = m.guard_revision;
                        }
                    }
                    adopt(&etcd, &store, &m, "etcd").await;
                    mirror = Some(m);
                    backoff = BACKOFF_MIN;
                }
                Err(e) => {
                    disconnected(&etcd, &e);
                    tokio::time::sleep(jittered(backoff)).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            }
        }
        let from = etcd.state().applied_revision + 1;
        let opts = WatchOptions::new()
            .with_range(layout::policy_end(&etcd.prefix))
            .with_start_revision(from)
            .with_progress_notify();
        let mut client = etcd.client();
        let mut stream = match client.watch(etcd.prefix.clone(), Some(opts)).await {
            Ok(w) => w,
            Err(e) => {
                disconnected(&etcd, &e.to_string());
                tokio::time::sleep(jittered(backoff)).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        {
            let mut st = etcd.state();
            st.connected = true;
            st.last_sync = Some(Instant::now());
        }
        backoff = BACKOFF_MIN;
        loop {
            let message = match stream.message().await {
                Ok(Some(m)) => m,
                Ok(None) => {
                    disconnected(&etcd, "the watch stream ended");
                    break;
                }
                Err(e) => {
                    disconnected(&etcd, &e.to_string());
                    break;
                }
            };
            if message.canceled() {
                if message.compact_revision() > 0 {
                    tracing::warn!(
                        compacted_to = message.compact_revision(),
                        "the etcd watch fell behind a compaction; reading the policy again"
                    );
                }
                mirror = None;
                break;
            }
            let Some(m) = mirror.as_mut() else {
                break;
            };
            let applied = etcd.state().applied_revision;
            let header_revision = message.header().map(|h| h.revision()).unwrap_or(0);
            let cluster_id = message.header().map(|h| h.cluster_id()).unwrap_or(0);
            if cluster_id != 0 && m.cluster_id != 0 && cluster_id != m.cluster_id {
                tracing::warn!(
                    was = m.cluster_id,
                    now = cluster_id,
                    "etcd is a different cluster now; reading the policy again"
                );
                history_replaced = true;
                mirror = None;
                break;
            }
            if header_revision > 0 && header_revision < applied {
                tracing::warn!(
                    header_revision,
                    applied,
                    "etcd answered with a revision older than the one applied; reading the policy again"
                );
                history_replaced = true;
                mirror = None;
                break;
            }
            // The revision being applied, and whether it touched the
            // policy (a trim of audit entries does not).
            let mut pending = (0, false);
            for event in message.events() {
                let Some(kv) = event.kv() else { continue };
                let revision = kv.mod_revision();
                if revision <= applied {
                    continue;
                }
                if pending.0 != 0 && revision != pending.0 {
                    finish_revision(&etcd, &store, m, pending).await;
                    pending.1 = false;
                }
                pending.0 = revision;
                let value = match event.event_type() {
                    EventType::Put => Some(kv.value()),
                    EventType::Delete => None,
                };
                m.apply(&etcd.prefix, kv.key(), value);
                match layout::classify(&etcd.prefix, kv.key()) {
                    Key::Guard => {
                        m.guard_revision = revision;
                        pending.1 = true;
                    }
                    Key::Audit(id) => {
                        if value.is_some() {
                            fleet_audit(&store, id, kv.value())
                        }
                    }
                    Key::Client(_) | Key::EntityType(_) => pending.1 = true,
                    Key::Other => {}
                }
            }
            if pending.0 != 0 {
                finish_revision(&etcd, &store, m, pending).await;
            }
            let mut st = etcd.state();
            // A progress notification (no events) only says etcd is there:
            // etcd 3.4 before 3.4.25 can send one ahead of events it has
            // not sent yet (etcd-io/etcd#15220), so the applied revision
            // moves with events only, or a later event would be skipped.
            st.connected = true;
            st.last_sync = Some(Instant::now());
        }
        tokio::time::sleep(jittered(backoff)).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

fn disconnected(etcd: &Etcd, why: &str) {
    let mut st = etcd.state();
    if st.connected {
        tracing::warn!(
            error = why,
            "lost the etcd watch; deciding on the last good policy and reconnecting"
        );
    }
    st.connected = false;
}

/// A revision's events are all applied: put its policy in force if whole
/// (if the revision touched the policy at all: `(revision, touched)`).
async fn finish_revision(
    etcd: &Arc<Etcd>,
    store: &Weak<PolicyStore>,
    m: &Mirror,
    (revision, touched): (i64, bool),
) {
    tracing::debug!(
        revision,
        guard_revision = m.guard_revision,
        touched,
        "etcd revision applied to the mirror"
    );
    etcd.state().applied_revision = revision;
    if touched {
        adopt(etcd, store, m, "etcd").await;
    }
}

/// Deletes the fleet's audit entries older than the retention, about ten
/// times per retention period (at most hourly, at least every second),
/// jittered so that replicas rarely trim at once.
async fn trim_audit(etcd: Arc<Etcd>, store: Weak<PolicyStore>) {
    let retention = etcd.audit_retention;
    if retention.is_zero() {
        return;
    }
    let every = (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600));
    loop {
        tokio::time::sleep(jittered(every)).await;
        if store.strong_count() == 0 {
            return;
        }
        match etcd.trim(retention).await {
            Ok(0) => {}
            Ok(deleted) => {
                tracing::debug!(
                    deleted,
                    "audit entries older than the retention deleted from etcd"
                )
            }
            Err(e) => {
                tracing::debug!(error = %e, "audit entries could not be trimmed; trying again later")
            }
        }
    }
}

/// Puts the mirror's policy in force if it is whole, under the store's
/// write lock (so it never overtakes a change this replica just
/// committed), off the runtime's worker.
async fn adopt(etcd: &Arc<Etcd>, store: &Weak<PolicyStore>, m: &Mirror, source: &'static str) {
    let Some(store) = store.upgrade() else { return };
    // The policy is copied only when it is not the one in force already
    // (a change this replica committed comes back through the watch too).
    let whole = m.whole().map(|(p, hash)| {
        let changed = store.load().hash != hash;
        (changed.then(|| p.clone()), hash)
    });
    let guard_revision = m.guard_revision;
    let etcd = etcd.clone();
    let done = tokio::task::spawn_blocking(move || {
        let (policy, hash) = match whole {
            Ok(w) => w,
            Err(why) => {
                if etcd.state().pending.as_deref() != Some(why.as_str()) {
                    tracing::warn!(reason = %why, "etcd holds a policy that is not whole; keeping the last good one");
                }
                etcd.state().pending = Some(why);
                return;
            }
        };
        let _one_at_a_time = lock(&store.writer);
        if guard_revision < etcd.state().guard_revision {
            // A change this replica committed is newer: the watch will
            // reach it.
            return;
        }
        let adopted = match &policy {
            Some(policy) => store.adopt(policy, hash, source),
            None => Ok(None),
        };
        match adopted {
            Ok(Some(snap)) => {
                if let Some(hook) = store.on_reload.get() {
                    hook(source, Some(&snap));
                }
                tracing::info!(version = snap.version, hash = %snap.hash, guard_revision, "policy from etcd in force");
            }
            Ok(None) => {}
            Err(errors) => {
                if let Some(hook) = store.on_reload.get() {
                    hook(source, None);
                }
                for e in errors {
                    tracing::error!(error = %e, "the policy in etcd does not compile; keeping the last good one");
                }
                return;
            }
        }
        let mut st = etcd.state();
        st.guard_revision = guard_revision;
        st.stale = false;
        st.pending = None;
    })
    .await;
    if let Err(e) = done {
        tracing::error!(error = %e, "adopting the policy from etcd did not complete");
    }
}

/// Another replica's audit entry, written to this replica's audit log.
fn fleet_audit(store: &Weak<PolicyStore>, audit_id: &str, line: &[u8]) {
    let Some(store) = store.upgrade() else { return };
    if !store.written_elsewhere(audit_id) {
        return;
    }
    if let Some(log) = store.fleet_audit.get() {
        if let Err(e) = log.append_line(line) {
            tracing::error!(error = %e, path = %log.path().display(), "audit log append failed");
        }
    }
}
