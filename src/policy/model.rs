//! The policy file as written by operators (YAML). This is the source of truth;
//! `compile` turns it into the immutable snapshot that requests read.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use crate::config::secrets::{SecretRef, SecretSource};
pub use crate::rate::RateLimitDef;
use crate::schema::AttrDef;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    #[serde(default, deserialize_with = "unique_keys")]
    pub entity_types: BTreeMap<String, EntityTypeDef>,
    /// Shared between versions: a copy of the policy (every management
    /// change makes one) copies pointers, and a client the change did not
    /// touch is the same allocation in both, so a diff or a recompile
    /// recognises it by pointer.
    #[serde(default, deserialize_with = "unique_keys")]
    pub clients: BTreeMap<String, Arc<ClientDef>>,
}

/// A map whose keys must be unique: YAML allows a key twice and serde would
/// silently keep the last, so a second client with the same id could
/// replace the first unnoticed.
fn unique_keys<'de, D, V>(d: D) -> Result<BTreeMap<String, V>, D::Error>
where
    D: serde::Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct Visit<V>(std::marker::PhantomData<V>);
    impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Visit<V> {
        type Value = BTreeMap<String, V>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a map with unique keys")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(key) = map.next_key::<String>()? {
                if out.contains_key(&key) {
                    return Err(serde::de::Error::custom(format!("duplicate entry {key:?}")));
                }
                let value = map.next_value()?;
                out.insert(key, value);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Visit(std::marker::PhantomData))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntityTypeDef {
    pub attr_defs: Vec<AttrDef>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientDef {
    pub secret: SecretSource,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default)]
    pub features: Vec<String>,
    /// CIDRs; absent means allow all, like Capture's default `["0.0.0.0/0"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub whitelist: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub on_write_violation: WriteViolationMode,
    /// `shadow`: the client's calls are decided, logged and counted, but
    /// forwarded and answered as if the gateway were not there.
    #[serde(default, skip_serializing_if = "is_default")]
    pub enforcement: Enforcement,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub access_schemas: BTreeMap<String, AccessSchemasDef>,
    /// The secret replaced by `/clients/reset_secret`, still accepted until
    /// `expires_at` (unix seconds) so callers can roll over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret: Option<PreviousSecret>,
    /// A second factor next to the secret: the client must call over a
    /// mutual-TLS listener (`tls_listen[].client_ca`) presenting a verified
    /// certificate whose subject commonName is exactly this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_client_subject: Option<String>,
    /// This client's calls per second and burst; absent: the settings'
    /// `rate_limit_default`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitDef>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviousSecret {
    pub secret: SecretSource,
    pub expires_at: i64,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Enforcement {
    /// Decisions are enforced.
    #[default]
    Enforce,
    /// Decisions are made and reported, never enforced: for putting the
    /// gateway inline in front of an existing client.
    Shadow,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteViolationMode {
    /// Remove attributes outside the write schema and forward the rest.
    #[default]
    Strip,
    /// Refuse the whole call with 403 naming the attribute.
    Reject,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessSchemasDef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_with_token: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_with_token: Option<Vec<String>>,
    /// Schemas evaluated next to the enforced ones without being enforced:
    /// what they would remove is counted and logged.
    #[serde(default, skip_serializing_if = "ShadowSchemasDef::is_empty")]
    pub shadow: ShadowSchemasDef,
}

#[derive(Debug, Clone, Default, PartialEq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowSchemasDef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write: Option<Vec<String>>,
}

impl ShadowSchemasDef {
    pub fn is_empty(&self) -> bool {
        self.read.is_none() && self.write.is_none()
    }
}
