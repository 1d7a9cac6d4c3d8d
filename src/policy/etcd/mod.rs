//! The etcd policy store (`policy_store.kind: etcd`): the fleet's one
//! policy, laid out key by key ([`layout`]), committed by transactions that
//! compare the guard's revision, and followed by every replica's watch
//! ([`watch`]).
//!
//! The client runs on its own small runtime: the store's callers are
//! blocking threads (a management write runs under `spawn_blocking`, the
//! start is before any runtime), and the watch must outlive any one of
//! Pingora's service runtimes. Requests never touch etcd.

mod cache;
pub mod cli;
pub mod layout;
pub mod range;
mod sync;
mod watch;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Identity,
    TlsOptions, Txn, TxnOp,
};

use crate::config::store::EtcdSettings;
use layout::{Guard, Mirror, Write};

/// Keys read per page of a full read: far under gRPC's 4 MiB per message
/// for entries of a few KiB.
const PAGE: i64 = 1000;

/// Operations per transaction etcd accepts (`--max-txn-ops`, 128 by
/// default), keeping two for the guard and the audit entry.
pub const MAX_TXN_WRITES: usize = 120;

/// Import batches in flight at once.
const IMPORT_IN_FLIGHT: usize = 8;

/// What `import` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Imported {
    /// The policy is in etcd; its guard is at this revision.
    Written(i64),
    /// Nothing written (`only_if_empty`): etcd holds a policy, its guard at
    /// this revision.
    AlreadyThere(i64),
}

#[derive(Debug)]
pub enum CommitError {
    /// The guard moved: another change committed first.
    Conflict,
    /// etcd refused or could not be reached; nothing was committed.
    Unavailable(String),
    /// No answer in time: the change may or may not have committed.
    Unknown(String),
}

/// Where the replica stands with etcd, for `/status` and metrics.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SyncState {
    pub connected: bool,
    /// The last etcd revision this replica has applied (0: none yet).
    pub applied_revision: i64,
    /// The guard revision of the policy in force (what a write compares).
    pub guard_revision: i64,
    /// Seconds since the watch last heard from etcd.
    #[serde(skip)]
    pub last_sync: Option<Instant>,
    /// The policy in force came from the local cache, not from etcd.
    pub stale: bool,
    /// Why the latest etcd state is not in force, when it is not.
    pub pending: Option<String>,
}

pub struct Etcd {
    rt: tokio::runtime::Runtime,
    client: Client,
    pub(crate) prefix: String,
    request_timeout: Duration,
    pub(crate) conflict_retries: u32,
    /// 0: audit entries stay in etcd forever.
    pub(crate) audit_retention: Duration,
    pub(crate) state: Mutex<SyncState>,
    /// The replica's last-good copy (a store's, not the CLI's).
    pub(crate) cache: std::sync::OnceLock<cache::CacheWriter>,
    /// Leases of expiring keys ([`range`]), by the unix time they end.
    leases: Mutex<std::collections::BTreeMap<i64, i64>>,
}

fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    // Prefixes end with `/`, so the last byte can always be incremented.
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

impl Etcd {
    /// Makes the client; the connection is made lazily, so a replica can
    /// start (from its cache) while etcd is away.
    pub fn connect(settings: &EtcdSettings, base: &std::path::Path) -> Result<Etcd, String> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("recordgate-etcd")
            .enable_all()
            .build()
            .map_err(|e| format!("policy_store.etcd: cannot start its runtime: {e}"))?;
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_millis(settings.connect_timeout_ms))
            .with_timeout(Duration::from_millis(settings.request_timeout_ms))
            // A silent member is noticed (etcd refuses pings more often
            // than every 5 s).
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(3))
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        if let (Some(user), Some(password)) = (&settings.user, &settings.password) {
            let password = password
                .resolve(base)
                .map_err(|e| format!("policy_store.etcd.password: {e}"))?;
            opts = opts.with_user(user.clone(), password);
        }
        if settings.ca_file.is_some() || settings.cert_file.is_some() {
            // tonic's TLS (rustls): its connector sets TCP_NODELAY, where
            // the crate's OpenSSL connector leaves Nagle on and every
            // request waits for a delayed ACK (about 40 ms here).
            let read = |p: &std::path::Path, k: &str| {
                std::fs::read(p)
                    .map_err(|e| format!("policy_store.etcd.{k}: cannot read {}: {e}", p.display()))
            };
            let mut tls = TlsOptions::new();
            if let Some(ca) = &settings.ca_file {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca, "ca_file")?));
            }
            if let (Some(cert), Some(key)) = (&settings.cert_file, &settings.key_file) {
                tls = tls.identity(Identity::from_pem(
                    read(cert, "cert_file")?,
                    read(key, "key_file")?,
                ));
            }
            opts = opts.with_tls(tls);
        }
        let endpoints = settings.endpoints.clone();
        let client = rt
            .block_on(async move { Client::connect(endpoints, Some(opts)).await })
            .map_err(|e| format!("policy_store.etcd: {e}"))?;
        Ok(Etcd {
            rt,
            client,
            prefix: settings.prefix.clone(),
            request_timeout: Duration::from_millis(settings.request_timeout_ms),
            conflict_retries: settings.conflict_retries,
            audit_retention: Duration::from_secs(settings.audit_retention_secs),
            state: Mutex::new(SyncState::default()),
            cache: std::sync::OnceLock::new(),
            leases: Mutex::default(),
        })
    }

    /// Runs `fut` on the etcd runtime and waits for it from a blocking
    /// thread, within `limit`.
    pub(crate) fn run<T: Send + 'static>(
        &self,
        limit: Duration,
        fut: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv_timeout(limit).ok()
    }

    pub(crate) fn client(&self) -> Client {
        self.client.clone()
    }

    pub(crate) fn spawn(&self, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        self.rt.spawn(fut);
    }

    pub(crate) fn state(&self) -> std::sync::MutexGuard<'_, SyncState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads every key under the prefix at one revision, page by page.
    pub fn read_all(&self) -> Result<(Mirror, i64), String> {
        let client = self.client();
        let prefix = self.prefix.clone();
        let limit = self.request_timeout * 20;
        self.run(limit, read_all(client, prefix))
            .unwrap_or_else(|| Err("etcd did not answer in time".into()))
    }

    /// Commits one change: its key writes, the new guard and the audit
    /// entry, if the guard is still at `guard_revision`. Returns the
    /// revision of the commit.
    pub fn commit(
        &self,
        guard_revision: i64,
        writes: Vec<Write>,
        guard: &Guard,
        audit: (&str, String),
    ) -> Result<i64, CommitError> {
        if writes.len() > MAX_TXN_WRITES {
            return Err(CommitError::Unavailable(format!(
                "the change touches {} keys; one transaction takes at most {MAX_TXN_WRITES}",
                writes.len()
            )));
        }
        let guard_key = layout::guard_key(&self.prefix);
        let mut ops: Vec<TxnOp> = writes
            .into_iter()
            .map(|(k, v)| match v {
                Some(v) => TxnOp::put(k, v, None),
                None => TxnOp::delete(k, None),
            })
            .collect();
        let guard_json =
            serde_json::to_vec(guard).map_err(|e| CommitError::Unavailable(e.to_string()))?;
        ops.push(TxnOp::put(guard_key.clone(), guard_json, None));
        ops.push(TxnOp::put(
            layout::audit_key(&self.prefix, audit.0),
            audit.1,
            None,
        ));
        // A fenced change (its outcome was unknown, then settled as never
        // committed) must not commit when its transaction arrives late.
        let txn = Txn::new()
            .when([
                Compare::mod_revision(guard_key, CompareOp::Equal, guard_revision),
                Compare::version(
                    layout::fence_key(&self.prefix, audit.0),
                    CompareOp::Equal,
                    0,
                ),
            ])
            .and_then(ops);
        let mut client = self.client();
        let answered = self.run(self.request_timeout, async move { client.txn(txn).await });
        match answered {
            None => Err(CommitError::Unknown("no answer in time".into())),
            Some(Err(e)) => Err(classify(e)),
            Some(Ok(r)) if r.succeeded() => Ok(r.header().map(|h| h.revision()).unwrap_or(0)),
            Some(Ok(_)) => Err(CommitError::Conflict),
        }
    }

    /// Settles a change whose commit got no answer: in one transaction,
    /// either its audit entry is there (it committed: at which revision), or
    /// its fence is written, so that its transaction, should it still
    /// arrive, can never commit (`None`). Repeating it is harmless. `Err`:
    /// etcd did not answer this either.
    pub fn settle(&self, change_id: &str) -> Result<Option<i64>, String> {
        let mut client = self.client();
        let audit = layout::audit_key(&self.prefix, change_id);
        let txn = Txn::new()
            .when([Compare::version(audit.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                layout::fence_key(&self.prefix, change_id),
                Vec::new(),
                None,
            )])
            .or_else([TxnOp::get(audit, None)]);
        match self.run(self.request_timeout, async move { client.txn(txn).await }) {
            None => Err("etcd did not answer in time".into()),
            Some(Err(e)) => Err(e.to_string()),
            Some(Ok(r)) if r.succeeded() => Ok(None),
            Some(Ok(r)) => Ok(r.op_responses().into_iter().find_map(|op| match op {
                etcd_client::TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.mod_revision()),
                _ => None,
            })),
        }
    }

    /// Deletes audit entries and fences older than `retention`. Every
    /// replica runs it; deleting what another already deleted is harmless.
    pub(crate) async fn trim(&self, retention: Duration) -> Result<i64, String> {
        let cutoff = layout::now_millis().saturating_sub(retention.as_millis() as u64);
        let mut deleted = 0;
        for folder in [layout::AUDIT, layout::FENCE] {
            let from = format!("{}{folder}", self.prefix);
            let end = layout::expired_end(&self.prefix, folder, cutoff);
            let r = self
                .client()
                .delete(from, Some(DeleteOptions::new().with_range(end)))
                .await
                .map_err(|e| e.to_string())?;
            deleted += r.deleted();
        }
        Ok(deleted)
    }

    /// Writes a whole policy: its keys in batches, keys it does not have
    /// deleted, the guard last and only if no change committed meanwhile,
    /// so no replica adopts a half import. Returns the guard's revision.
    ///
    /// With `only_if_empty`, nothing is written when etcd holds a guard
    /// already (a seed Job or `compose up` run again must not overwrite the
    /// changes made since). Every batch compares the guard's revision too,
    /// so an import that races another change or import stops at its first
    /// batch after the other's guard lands.
    pub fn import(
        &self,
        policy: &crate::policy::model::PolicyFile,
        request: (&str, String),
        only_if_empty: bool,
    ) -> Result<Imported, String> {
        let guard_rev = self.guard_revision()?;
        if only_if_empty && guard_rev > 0 {
            return Ok(Imported::AlreadyThere(guard_rev));
        }
        let (mirror, _) = self.read_all()?;
        if mirror.guard_revision != guard_rev {
            return Err("a change committed during the import; run it again".into());
        }
        let mut writes = layout::diff(&self.prefix, &mirror.policy, policy)?;
        // Keys the mirror could not read are replaced too.
        for key in mirror.unreadable.keys() {
            if !writes.iter().any(|(k, _)| k == key) {
                writes.push((key.clone(), None));
            }
        }
        let hash = crate::policy::compile::policy_hash(policy)?;
        // Every batch but the last, several in flight at once: they are
        // independent, and the guard, written last with the final batch,
        // is what makes the import visible.
        let mut batches = Vec::new();
        while writes.len() > MAX_TXN_WRITES {
            let rest = writes.split_off(MAX_TXN_WRITES);
            batches.push(std::mem::replace(&mut writes, rest));
        }
        let client = self.client();
        let guard_key = layout::guard_key(&self.prefix);
        let limit = self.request_timeout * (batches.len() as u32 / IMPORT_IN_FLIGHT as u32 + 1);
        let written = self.run(limit, async move {
            for group in batches.chunks(IMPORT_IN_FLIGHT) {
                let mut set = tokio::task::JoinSet::new();
                for batch in group {
                    let ops: Vec<TxnOp> = batch
                        .iter()
                        .map(|(k, v)| match v {
                            Some(v) => TxnOp::put(k.clone(), v.clone(), None),
                            None => TxnOp::delete(k.clone(), None),
                        })
                        .collect();
                    let mut c = client.clone();
                    let unmoved =
                        Compare::mod_revision(guard_key.clone(), CompareOp::Equal, guard_rev);
                    set.spawn(async move { c.txn(Txn::new().when([unmoved]).and_then(ops)).await });
                }
                while let Some(done) = set.join_next().await {
                    match done {
                        Ok(Ok(r)) if r.succeeded() => {}
                        Ok(Ok(_)) => {
                            return Err("a change committed during the import; run it again".into())
                        }
                        Ok(Err(e)) => return Err(e.to_string()),
                        Err(e) => return Err(e.to_string()),
                    }
                }
            }
            Ok(())
        });
        match written {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(e),
            None => return Err("etcd did not answer in time".into()),
        }
        self.commit(guard_rev, writes, &Guard { hash }, request)
            .map(Imported::Written)
            .map_err(|e| match e {
                CommitError::Conflict => {
                    "a change committed during the import; run it again".to_string()
                }
                CommitError::Unavailable(m) | CommitError::Unknown(m) => m,
            })
    }

    /// The guard's current revision (0: no guard yet).
    pub fn guard_revision(&self) -> Result<i64, String> {
        let mut client = self.client();
        let key = layout::guard_key(&self.prefix);
        match self.run(
            self.request_timeout,
            async move { client.get(key, None).await },
        ) {
            None => Err("etcd did not answer in time".into()),
            Some(Err(e)) => Err(e.to_string()),
            Some(Ok(r)) => Ok(r.kvs().first().map(|kv| kv.mod_revision()).unwrap_or(0)),
        }
    }
}

fn classify(e: etcd_client::Error) -> CommitError {
    let text = e.to_string();
    match &e {
        // etcd answered with an error status: nothing committed; unless
        // the status only says the answer did not arrive.
        etcd_client::Error::GRpcStatus(s) => {
            let code = format!("{:?}", s.code());
            // Never sent (no connection could be made), or refused by a
            // member without a leader (`with_require_leader`): nothing
            // committed.
            let not_sent = text.contains("tcp connect error")
                || text.contains("no leader")
                || text.contains("ConnectionRefused");
            if not_sent {
                CommitError::Unavailable(text)
            } else if ["DeadlineExceeded", "Cancelled", "Unknown", "Unavailable"]
                .contains(&code.as_str())
            {
                CommitError::Unknown(text)
            } else {
                CommitError::Unavailable(text)
            }
        }
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => {
            CommitError::Unknown(text)
        }
        _ => CommitError::Unavailable(text),
    }
}

/// Every key under `prefix` at one revision, page by page.
pub(crate) async fn read_all(mut client: Client, prefix: String) -> Result<(Mirror, i64), String> {
    let end = layout::policy_end(&prefix).into_bytes();
    let mut mirror = Mirror::default();
    let mut from = prefix.as_bytes().to_vec();
    let mut revision = 0;
    loop {
        // Keys come in key order by default; asking for a sort would make
        // etcd read the whole range for every page before cutting it.
        let mut opts = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        let r = client
            .get(from.clone(), Some(opts))
            .await
            .map_err(|e| e.to_string())?;
        if revision == 0 {
            revision = r.header().map(|h| h.revision()).unwrap_or(0);
            mirror.cluster_id = r.header().map(|h| h.cluster_id()).unwrap_or(0);
        }
        let kvs = r.kvs();
        for kv in kvs {
            mirror.apply(&prefix, kv.key(), Some(kv.value()));
            if layout::classify(&prefix, kv.key()) == layout::Key::Guard {
                mirror.guard_revision = kv.mod_revision();
            }
        }
        match kvs.last() {
            Some(last) if r.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => break,
        }
    }
    Ok((mirror, revision))
}
