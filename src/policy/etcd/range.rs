//! Another key range under the prefix than the policy (the fleet's token
//! bindings, `tokens::shared`): written with leases, so etcd deletes each
//! key when its lifetime ends, and followed by every replica: read whole,
//! then watched from the revision read, every change handed to a
//! [`RangeSink`]. The watch comes back after a failure with jittered
//! back-off and resumes; after a compaction it reads the range whole again.
//! Unlike the policy, a range has no guard: each key stands alone.

use std::sync::{Arc, Weak};
use std::time::Duration;

use etcd_client::{EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};

use super::Etcd;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const PAGE: i64 = 1000;

/// Where a followed range's keys go.
pub trait RangeSink: Send + Sync + 'static {
    /// Every key of the range at one revision (at start, and after a
    /// compaction cut the watch off).
    fn reset(&self, entries: Vec<(Vec<u8>, Vec<u8>)>);
    fn put(&self, key: &[u8], value: &[u8]);
    fn delete(&self, key: &[u8]);
}

fn jittered(d: Duration) -> Duration {
    d.mul_f64(0.5 + rand::random::<f64>())
}

impl Etcd {
    /// Writes `entries` (key, value, lifetime in seconds) in one
    /// transaction, each key on a lease of its lifetime. Blocking, within
    /// the request time-out for the leases and again for the transaction.
    pub(crate) fn put_expiring(&self, entries: Vec<(String, Vec<u8>, i64)>) -> Result<(), String> {
        let client = self.client();
        let answered = self.run(self.request_timeout * 2, async move {
            let mut ops = Vec::with_capacity(entries.len());
            for (key, value, ttl) in entries {
                let lease = client
                    .clone()
                    .lease_grant(ttl.max(1), None)
                    .await
                    .map_err(|e| e.to_string())?;
                let opts = PutOptions::new().with_lease(lease.id());
                ops.push(TxnOp::put(key, value, Some(opts)));
            }
            client
                .clone()
                .txn(Txn::new().and_then(ops))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        answered.unwrap_or_else(|| Err("etcd did not answer in time".into()))
    }

    /// Follows the keys under `from` (a folder of the prefix) into `sink`
    /// until the sink is dropped.
    pub(crate) fn follow_range(self: &Arc<Self>, from: String, sink: Weak<dyn RangeSink>) {
        let etcd = self.clone();
        self.spawn(async move { follow(etcd, from, sink).await });
    }
}

/// Every key under `from` at one revision; the revision.
async fn read_range(
    etcd: &Etcd,
    from: &str,
) -> Result<(Vec<(Vec<u8>, Vec<u8>)>, i64), etcd_client::Error> {
    let end = super::prefix_end(from);
    let mut client = etcd.client();
    let mut out = Vec::new();
    let mut key = from.as_bytes().to_vec();
    let mut revision = 0;
    loop {
        let mut opts = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        let r = client.get(key.clone(), Some(opts)).await?;
        if revision == 0 {
            revision = r.header().map(|h| h.revision()).unwrap_or(0);
        }
        out.extend(
            r.kvs()
                .iter()
                .map(|kv| (kv.key().to_vec(), kv.value().to_vec())),
        );
        match r.kvs().last() {
            Some(last) if r.more() => {
                key = last.key().to_vec();
                key.push(0);
            }
            _ => return Ok((out, revision)),
        }
    }
}

async fn follow(etcd: Arc<Etcd>, from: String, sink: Weak<dyn RangeSink>) {
    let mut backoff = BACKOFF_MIN;
    // 0: read the range whole first.
    let mut applied = 0;
    loop {
        let Some(s) = sink.upgrade() else { return };
        if applied == 0 {
            match read_range(&etcd, &from).await {
                Ok((entries, revision)) => {
                    s.reset(entries);
                    applied = revision;
                }
                Err(e) => {
                    tracing::debug!(range = %from, error = %e, "etcd range not read; trying again");
                    drop(s);
                    tokio::time::sleep(jittered(backoff)).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            }
        }
        drop(s);
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(applied + 1);
        let mut client = etcd.client();
        let mut stream = match client.watch(from.clone(), Some(opts)).await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!(range = %from, error = %e, "etcd range watch not made; trying again");
                tokio::time::sleep(jittered(backoff)).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        backoff = BACKOFF_MIN;
        loop {
            let message = match stream.message().await {
                Ok(Some(m)) => m,
                Ok(None) | Err(_) => break,
            };
            if message.canceled() {
                // Compacted past what was applied: read it all again.
                applied = 0;
                break;
            }
            let Some(s) = sink.upgrade() else { return };
            for event in message.events() {
                let Some(kv) = event.kv() else { continue };
                if kv.mod_revision() <= applied {
                    continue;
                }
                match event.event_type() {
                    EventType::Put => s.put(kv.key(), kv.value()),
                    EventType::Delete => s.delete(kv.key()),
                }
                applied = kv.mod_revision();
            }
        }
        tokio::time::sleep(jittered(backoff)).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}
