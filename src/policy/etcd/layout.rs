//! How a policy is laid out in etcd, under the prefix `P`:
//!
//! | key | value |
//! |---|---|
//! | `P` `clients/` id | the client's entry (JSON) |
//! | `P` `entity_types/` name | the entity type (JSON) |
//! | `P` `guard` | `{"hash": ...}`: the hash of the whole committed policy |
//! | `P` `audit/` change id | the audit entry of the change (JSON) |
//! | `P` `fence/` change id | empty: this change can never commit (its outcome was unknown, then settled) |
//! | `P` `tokens/` digest | a token binding of the fleet (`tokens::shared`), leased for its lifetime |
//!
//! The policy is every key before `P` `tokens/`: the policy's reads and
//! watch never see the bindings, however many there are.
//!
//! A change id starts with the time of the change in milliseconds, zero
//! padded, so that entries older than the retention are one key range to
//! delete.
//! One key per client keeps each value far under etcd's 1.5 MiB request
//! limit (a 100,000-client policy is 100,000 small keys). Every change
//! writes the guard in the same transaction as its keys, and compares the
//! guard's revision: two replicas' changes can never both commit against
//! the same policy, so whole-policy rules hold across the fleet. A replica
//! adopts a state only when the policy it spells hashes to the guard, so a
//! half-written import or a hand edit is never served.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::policy::model::PolicyFile;

pub const CLIENTS: &str = "clients/";
pub const ENTITY_TYPES: &str = "entity_types/";
pub const GUARD: &str = "guard";
pub const AUDIT: &str = "audit/";
pub const FENCE: &str = "fence/";
/// Sorts after every key of the policy.
pub const TOKENS: &str = "tokens/";

/// The end (exclusive) of the policy's key range under `prefix`.
pub fn policy_end(prefix: &str) -> String {
    format!("{prefix}{TOKENS}")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guard {
    pub hash: String,
}

/// What one key under the prefix is.
#[derive(Debug, PartialEq, Eq)]
pub enum Key<'k> {
    Client(&'k str),
    EntityType(&'k str),
    Guard,
    Audit(&'k str),
    /// Something else under the prefix: not ours to read.
    Other,
}

pub fn classify<'k>(prefix: &str, key: &'k [u8]) -> Key<'k> {
    let Some(rest) = key.strip_prefix(prefix.as_bytes()) else {
        return Key::Other;
    };
    let Ok(rest) = std::str::from_utf8(rest) else {
        return Key::Other;
    };
    if rest == GUARD {
        Key::Guard
    } else if let Some(id) = rest.strip_prefix(CLIENTS) {
        Key::Client(id)
    } else if let Some(name) = rest.strip_prefix(ENTITY_TYPES) {
        Key::EntityType(name)
    } else if let Some(id) = rest.strip_prefix(AUDIT) {
        Key::Audit(id)
    } else {
        Key::Other
    }
}

pub fn client_key(prefix: &str, id: &str) -> String {
    format!("{prefix}{CLIENTS}{id}")
}

pub fn entity_type_key(prefix: &str, name: &str) -> String {
    format!("{prefix}{ENTITY_TYPES}{name}")
}

pub fn guard_key(prefix: &str) -> String {
    format!("{prefix}{GUARD}")
}

pub fn audit_key(prefix: &str, change_id: &str) -> String {
    format!("{prefix}{AUDIT}{change_id}")
}

pub fn fence_key(prefix: &str, change_id: &str) -> String {
    format!("{prefix}{FENCE}{change_id}")
}

/// The id of one change (its audit and fence keys): the time in
/// milliseconds, then the request id, then a random part (unique even when
/// a trusted proxy sends the same request id twice).
pub fn change_id(request_id: &str) -> String {
    format!(
        "{:013}-{request_id}.{:016x}",
        now_millis(),
        rand::random::<u64>()
    )
}

/// The first key not to delete under `folder` (`AUDIT`, `FENCE`) when
/// entries older than `cutoff_millis` go.
pub fn expired_end(prefix: &str, folder: &str, cutoff_millis: u64) -> String {
    format!("{prefix}{folder}{cutoff_millis:013}")
}

pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The policy as etcd holds it, key by key, and the guard it should match.
#[derive(Debug, Default, Clone)]
pub struct Mirror {
    pub policy: PolicyFile,
    pub guard: Option<Guard>,
    /// The guard's revision (what a write compares); 0: no guard.
    pub guard_revision: i64,
    /// The cluster the mirror was read from: a new one (etcd restored or
    /// replaced) means reading everything again.
    pub cluster_id: u64,
    /// Keys whose value could not be read (hand-edited, say): the state is
    /// not adopted while any remains.
    pub unreadable: BTreeMap<String, String>,
}

impl Mirror {
    /// Applies one key's new value (`None`: deleted).
    pub fn apply(&mut self, prefix: &str, key: &[u8], value: Option<&[u8]>) {
        let shown = String::from_utf8_lossy(key).into_owned();
        self.unreadable.remove(&shown);
        let unreadable = &mut self.unreadable;
        match classify(prefix, key) {
            Key::Client(id) => put(&mut self.policy.clients, id, value, unreadable, shown),
            Key::EntityType(name) => put(
                &mut self.policy.entity_types,
                name,
                value,
                unreadable,
                shown,
            ),
            Key::Guard => {
                self.guard = match value.map(serde_json::from_slice::<Guard>) {
                    None => None,
                    Some(Ok(g)) => Some(g),
                    Some(Err(e)) => {
                        unreadable.insert(shown, e.to_string());
                        None
                    }
                };
            }
            Key::Audit(_) | Key::Other => {}
        }
    }

    /// The policy, if it is whole: every key readable, and its hash the
    /// guard's. Otherwise why not.
    pub fn whole(&self) -> Result<(&PolicyFile, String), String> {
        if let Some((key, why)) = self.unreadable.iter().next() {
            return Err(format!("{key} cannot be read: {why}"));
        }
        let Some(guard) = &self.guard else {
            return Err("no guard key: nothing was imported yet".into());
        };
        let hash = crate::policy::compile::policy_hash(&self.policy)?;
        if hash != guard.hash {
            return Err(format!(
                "the keys spell a policy with hash {hash}, the guard says {}: a change is half written",
                guard.hash
            ));
        }
        Ok((&self.policy, hash))
    }
}

/// Sets (or, for `None`, removes) one entry of a policy map from its key's
/// value; a value that does not parse removes the entry and is recorded as
/// unreadable under the key `shown`.
fn put<T: serde::de::DeserializeOwned>(
    map: &mut BTreeMap<String, T>,
    name: &str,
    value: Option<&[u8]>,
    unreadable: &mut BTreeMap<String, String>,
    shown: String,
) {
    match value.map(serde_json::from_slice::<T>) {
        None => {
            map.remove(name);
        }
        Some(Ok(entry)) => {
            map.insert(name.to_string(), entry);
        }
        Some(Err(e)) => {
            map.remove(name);
            unreadable.insert(shown, e.to_string());
        }
    }
}

/// One write of a change: a key and its new value (`None`: delete).
pub type Write = (String, Option<Vec<u8>>);

/// The key writes that turn `before` into `after`, clients and entity
/// types whose entries differ only.
pub fn diff(prefix: &str, before: &PolicyFile, after: &PolicyFile) -> Result<Vec<Write>, String> {
    let mut out = Vec::new();
    for (id, c) in &after.clients {
        // A client the change did not touch is the same allocation.
        let same = before
            .clients
            .get(id)
            .is_some_and(|b| std::sync::Arc::ptr_eq(b, c) || b == c);
        if !same {
            out.push((client_key(prefix, id), Some(json(c)?)));
        }
    }
    for id in before.clients.keys() {
        if !after.clients.contains_key(id) {
            out.push((client_key(prefix, id), None));
        }
    }
    for (name, t) in &after.entity_types {
        if before.entity_types.get(name) != Some(t) {
            out.push((entity_type_key(prefix, name), Some(json(t)?)));
        }
    }
    for name in before.entity_types.keys() {
        if !after.entity_types.contains_key(name) {
            out.push((entity_type_key(prefix, name), None));
        }
    }
    Ok(out)
}

/// Every key of a whole policy (an import).
pub fn all_keys(prefix: &str, policy: &PolicyFile) -> Result<Vec<Write>, String> {
    diff(prefix, &PolicyFile::default(), policy)
}

fn json<T: Serialize>(v: &T) -> Result<Vec<u8>, String> {
    serde_json::to_vec(v).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> PolicyFile {
        let text = include_str!("../../../config/policy.yaml");
        serde_yaml::from_str(text).unwrap()
    }

    #[test]
    fn a_mirror_built_from_every_key_is_whole_once_the_guard_matches() {
        let p = policy();
        let mut m = Mirror::default();
        for (k, v) in all_keys("/rg/", &p).unwrap() {
            m.apply("/rg/", k.as_bytes(), v.as_deref());
        }
        assert!(m.whole().is_err(), "no guard yet");
        let hash = crate::policy::compile::policy_hash(&p).unwrap();
        let g = serde_json::to_vec(&Guard { hash: hash.clone() }).unwrap();
        m.apply("/rg/", b"/rg/guard", Some(&g));
        assert_eq!(m.whole().unwrap().1, hash);
        // A hand edit that does not parse: not whole, until it is fixed.
        m.apply("/rg/", b"/rg/clients/demo-owner", Some(b"{not json"));
        assert!(m.whole().unwrap_err().contains("cannot be read"));
        let c = serde_json::to_vec(&p.clients["demo-owner"]).unwrap();
        m.apply("/rg/", b"/rg/clients/demo-owner", Some(&c));
        assert!(m.whole().is_ok());
    }

    #[test]
    fn a_diff_writes_only_what_changed() {
        let before = policy();
        let mut after = before.clone();
        after.clients.remove("login-app");
        if let Some(c) = after
            .clients
            .get_mut("crm-writer")
            .map(std::sync::Arc::make_mut)
        {
            c.description = "changed".into();
        }
        let d = diff("/rg/", &before, &after).unwrap();
        let keys: Vec<(&str, bool)> = d.iter().map(|(k, v)| (k.as_str(), v.is_some())).collect();
        assert_eq!(
            keys,
            vec![
                ("/rg/clients/crm-writer", true),
                ("/rg/clients/login-app", false)
            ]
        );
        assert_eq!(classify("/rg/", b"/rg/clients/a/b"), Key::Client("a/b"));
        assert_eq!(classify("/rg/", b"/other/x"), Key::Other);
    }

    #[test]
    fn change_ids_sort_by_time_and_expire_as_one_range() {
        let old = change_id("req-1");
        std::thread::sleep(std::time::Duration::from_millis(3));
        let cutoff = now_millis();
        std::thread::sleep(std::time::Duration::from_millis(3));
        let new = change_id("req-0");
        let end = expired_end("/rg/", AUDIT, cutoff);
        assert!(audit_key("/rg/", &old) < end, "{old} expires");
        assert!(audit_key("/rg/", &new) > end, "{new} stays");
        // Imports made before change ids had a time stay too.
        assert!(audit_key("/rg/", "import.0123") > end);
        assert_eq!(
            classify("/rg/", fence_key("/rg/", &old).as_bytes()),
            Key::Other
        );
    }
}
