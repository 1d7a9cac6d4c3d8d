//! The bindings in memory: a map from a token's keyed hash to whom it
//! belongs, bounded, oldest first out.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A token as the gateway knows it: `HMAC-SHA256(hash_key, token)`.
pub type Digest = [u8; 32];

/// Ties a binding to the client's secret at issuance (a keyed hash of it):
/// deleting the client or resetting its secret changes it, and with it
/// every token of the client stops working.
pub type ClientTag = [u8; 16];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// Authorizes record calls.
    Access,
    /// Only exchanged at `/oauth/token` for a new access token.
    Refresh,
}

/// Whom a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub kind: TokenKind,
    pub client_id: Arc<str>,
    /// The user's record, where the issuer's answer named it.
    pub uuid: Option<Arc<str>>,
    /// Unix seconds; the token is refused from then on.
    pub expires_at: i64,
    pub client_tag: ClientTag,
}

/// Why a binding left the table (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    Expired,
    Capacity,
}

impl Removal {
    pub fn label(self) -> &'static str {
        match self {
            Removal::Expired => "expired",
            Removal::Capacity => "capacity",
        }
    }
}

pub struct Table {
    map: HashMap<Digest, (Binding, u64)>,
    /// Insertion order, for the capacity bound. An entry whose sequence no
    /// longer matches the map's (replaced or swept) is skipped.
    order: VecDeque<(Digest, u64)>,
    next_seq: u64,
    max: usize,
}

impl Table {
    pub fn new(max: usize) -> Table {
        Table {
            map: HashMap::new(),
            order: VecDeque::new(),
            next_seq: 0,
            max: max.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn get(&self, digest: &Digest) -> Option<&Binding> {
        self.map.get(digest).map(|(b, _)| b)
    }

    /// Adds (or replaces) a binding; returns how many were pushed out to
    /// stay within the bound, oldest first.
    pub fn insert(&mut self, digest: Digest, binding: Binding) -> usize {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.map.insert(digest, (binding, seq));
        self.order.push_back((digest, seq));
        let mut evicted = 0;
        while self.map.len() > self.max {
            let Some((d, s)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&d).is_some_and(|(_, current)| *current == s) {
                self.map.remove(&d);
                evicted += 1;
            }
        }
        // Stale order entries are dropped as they reach the front; keep the
        // queue from growing past twice the live count between sweeps.
        if self.order.len() > 2 * self.map.len() + 1024 {
            self.compact_order();
        }
        evicted
    }

    /// Drops one binding (another replica's, that etcd let expire);
    /// whether it was there.
    pub fn remove(&mut self, digest: &Digest) -> bool {
        self.map.remove(digest).is_some()
    }

    /// Drops every binding expired at `now`; returns how many.
    pub fn sweep(&mut self, now: i64) -> usize {
        let before = self.map.len();
        self.map.retain(|_, (b, _)| b.expires_at > now);
        let swept = before - self.map.len();
        if swept > 0 {
            self.compact_order();
        }
        swept
    }

    fn compact_order(&mut self) {
        let map = &self.map;
        self.order
            .retain(|(d, s)| map.get(d).is_some_and(|(_, current)| current == s));
    }

    /// Every binding, oldest first (for the compacted file).
    pub fn in_order(&self) -> impl Iterator<Item = (&Digest, &Binding)> {
        self.order
            .iter()
            .filter_map(|(d, s)| match self.map.get(d) {
                Some((b, current)) if current == s => Some((d, b)),
                _ => None,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(expires_at: i64) -> Binding {
        Binding {
            kind: TokenKind::Access,
            client_id: Arc::from("c"),
            uuid: None,
            expires_at,
            client_tag: [0; 16],
        }
    }

    fn digest(n: u8) -> Digest {
        [n; 32]
    }

    #[test]
    fn the_oldest_goes_first_past_the_bound() {
        let mut t = Table::new(3);
        for n in 0..3 {
            assert_eq!(t.insert(digest(n), binding(100)), 0);
        }
        assert_eq!(t.insert(digest(3), binding(100)), 1);
        assert!(t.get(&digest(0)).is_none());
        assert!(t.get(&digest(3)).is_some());
        // A replaced binding counts from its replacement.
        t.insert(digest(1), binding(200));
        assert_eq!(t.insert(digest(4), binding(100)), 1);
        assert!(t.get(&digest(2)).is_none(), "2 was older than the new 1");
        assert!(t.get(&digest(1)).is_some());
        assert_eq!(t.len(), 3);
        let order: Vec<u8> = t.in_order().map(|(d, _)| d[0]).collect();
        assert_eq!(order, vec![3, 1, 4]);
    }

    #[test]
    fn sweeping_drops_only_the_expired() {
        let mut t = Table::new(10);
        t.insert(digest(1), binding(10));
        t.insert(digest(2), binding(20));
        assert_eq!(t.sweep(10), 1);
        assert!(t.get(&digest(1)).is_none());
        assert!(t.get(&digest(2)).is_some());
        assert_eq!(t.in_order().count(), 1);
    }

    #[test]
    fn the_order_queue_stays_bounded_under_replacement() {
        let mut t = Table::new(10);
        for _ in 0..10_000 {
            t.insert(digest(1), binding(10));
        }
        assert_eq!(t.len(), 1);
        assert!(t.order.len() <= 2 + 1024 + 1);
    }
}
