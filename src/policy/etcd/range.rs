//! Another key range under the prefix than the policy (the fleet's token
//! bindings, `tokens::shared`): written with leases, so etcd deletes each
//! key when its lifetime ends, and followed by every replica: read whole,
//! then watched from the revision read, every change handed to a
//! [`RangeSink`]. The watch comes back after a failure with jittered
//! back-off and resumes; after a compaction it reads the range whole again.
//! Unlike the policy, a range has no guard: each key stands alone.

use std::collections::BTreeMap;
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

/// Keys that expire close together share one lease (a lease per key would
/// make etcd keep, and expire, one lease per token): a key outlives its
/// expiry by at most a tenth of its lifetime, and never by more than this.
const LEASE_BUCKET_MAX_SECS: i64 = 60;

/// The end of the lease bucket a key written at `now` and expiring at
/// `expires_at` goes in: never before `expires_at`.
fn bucket_end(expires_at: i64, now: i64) -> i64 {
    let size = ((expires_at - now) / 10).clamp(1, LEASE_BUCKET_MAX_SECS);
    expires_at.div_euclid(size) * size + size
}

impl Etcd {
    /// Writes `entries` (key, value, unix time it expires) in one
    /// transaction, each key on a lease that ends soon after it (see
    /// [`bucket_end`]). Blocking, within the request time-out for the leases it needs
    /// and again for the transaction. Refused at once while the range's
    /// watch cannot reach etcd, so a caller is not held up by an etcd that
    /// is away.
    pub(crate) fn put_expiring(
        &self,
        entries: Vec<(String, Vec<u8>, i64)>,
        now: i64,
    ) -> Result<(), String> {
        if let Some(why) = self.state().pending.clone() {
            return Err(format!("etcd is not reachable: {why}"));
        }
        let mut last = String::new();
        // A lease the cache remembers may be gone (etcd restored, say):
        // then once more with fresh leases.
        for _ in 0..2 {
            let leases = self.leases_for(entries.iter().map(|e| e.2), now)?;
            // Never a key without its lease (lease 0): it would outlive its
            // token in etcd for ever.
            let ops: Vec<TxnOp> = entries
                .iter()
                .map(|(key, value, expires_at)| {
                    let lease = leases
                        .get(&bucket_end(*expires_at, now))
                        .copied()
                        .ok_or_else(|| format!("no lease for {key}"))?;
                    Ok(TxnOp::put(
                        key.clone(),
                        value.clone(),
                        Some(PutOptions::new().with_lease(lease)),
                    ))
                })
                .collect::<Result<_, String>>()?;
            let mut client = self.client();
            let done = self
                .run(self.request_timeout, async move {
                    client.txn(Txn::new().and_then(ops)).await
                })
                .unwrap_or_else(|| {
                    Err(etcd_client::Error::InvalidArgs(
                        "etcd did not answer in time".into(),
                    ))
                });
            match done {
                Ok(_) => return Ok(()),
                Err(e) => {
                    last = e.to_string();
                    if !last.contains("lease not found") {
                        return Err(last);
                    }
                    self.lease_cache().clear();
                }
            }
        }
        Err(last)
    }

    fn lease_cache(&self) -> std::sync::MutexGuard<'_, BTreeMap<i64, i64>> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lease of every bucket the expiries fall in, granted where the
    /// cache has none.
    fn leases_for(
        &self,
        expiries: impl Iterator<Item = i64>,
        now: i64,
    ) -> Result<BTreeMap<i64, i64>, String> {
        let mut cache = self.lease_cache();
        // Buckets that have ended are gone from etcd too.
        *cache = cache.split_off(&(now + 1));
        let mut out = BTreeMap::new();
        for end in expiries.map(|e| bucket_end(e, now)) {
            if let Some(id) = cache.get(&end) {
                out.insert(end, *id);
                continue;
            }
            let mut client = self.client();
            let ttl = (end - now).max(1);
            let granted = self
                .run(self.request_timeout, async move {
                    client.lease_grant(ttl, None).await
                })
                .unwrap_or_else(|| {
                    Err(etcd_client::Error::InvalidArgs(
                        "etcd did not answer in time".into(),
                    ))
                })
                .map_err(|e| e.to_string())?;
            cache.insert(end, granted.id());
            out.insert(end, granted.id());
        }
        Ok(out)
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
                    etcd.state().pending = Some(e.to_string());
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
                etcd.state().pending = Some(e.to_string());
                tracing::debug!(range = %from, error = %e, "etcd range watch not made; trying again");
                tokio::time::sleep(jittered(backoff)).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        backoff = BACKOFF_MIN;
        etcd.state().pending = None;
        loop {
            let message = match stream.message().await {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    etcd.state().pending = Some(e.to_string());
                    break;
                }
            };
            if message.canceled() {
                // Compacted past what was applied: read it all again.
                applied = 0;
                break;
            }
            let Some(s) = sink.upgrade() else { return };
            // One revision can hold several events (a lease's keys expire
            // together): the applied revision moves after the message.
            let seen = applied;
            for event in message.events() {
                let Some(kv) = event.kv() else { continue };
                if kv.mod_revision() <= seen {
                    continue;
                }
                match event.event_type() {
                    EventType::Put => s.put(kv.key(), kv.value()),
                    EventType::Delete => s.delete(kv.key()),
                }
                applied = applied.max(kv.mod_revision());
            }
        }
        tokio::time::sleep(jittered(backoff)).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_ends_after_its_keys_and_not_long_after() {
        let now = 1_000_000;
        for life in [1, 2, 9, 10, 59, 600, 3600, 30 * 86400] {
            let expires = now + life;
            let end = bucket_end(expires, now);
            assert!(end >= expires, "{life}: {end} before {expires}");
            assert!(
                end - expires <= (life / 10).clamp(1, LEASE_BUCKET_MAX_SECS),
                "{life}"
            );
        }
        // Tokens of one kind issued within a bucket share its lease.
        assert_eq!(
            bucket_end(now + 3600, now),
            bucket_end(now + 3610, now + 10)
        );
    }
}
