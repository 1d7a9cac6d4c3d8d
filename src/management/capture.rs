//! Capture's client-management endpoints (`/clients/*`,
//! `/entityType.setAccessSchema`, `/entityType.getAccessSchema`), answered by
//! the gateway from its own policy with the wording of Capture's docs.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::cidr::{parse_cidr, CidrSet};
use crate::decide::credentials::{generate_client_id, generate_secret};
use crate::decide::Permit;
use crate::errors::ApiError;
use crate::params::Params;
use crate::policy::model::{AccessSchemasDef, ClientDef, PolicyFile, PreviousSecret, SecretSource};
use crate::policy::{Feature, FeatureSet, Snapshot};
use crate::schema::{AttrPath, EntityType};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    SetFeatures,
    SetWhitelist,
    ClearWhitelist,
    SetAccessSchema,
    GetAccessSchema,
    PromoteAccessSchema,
    List,
    Add,
    Delete,
    SetDescription,
    ResetSecret,
}

pub const ALLOW_ALL: [&str; 2] = ["0.0.0.0/0", "::/0"];
const RESERVED_NOTICE: &str =
    "reserved attributes (id, uuid, created, lastUpdated) are automatically included in the access schema";

impl Endpoint {
    pub fn from_path(path: &str) -> Option<Endpoint> {
        Some(match path {
            "/clients/set_features" => Endpoint::SetFeatures,
            "/clients/set_whitelist" => Endpoint::SetWhitelist,
            "/clients/clear_whitelist" => Endpoint::ClearWhitelist,
            "/entityType.setAccessSchema" => Endpoint::SetAccessSchema,
            "/entityType.getAccessSchema" => Endpoint::GetAccessSchema,
            "/entityType.promoteAccessSchema" => Endpoint::PromoteAccessSchema,
            "/clients/list" => Endpoint::List,
            "/clients/add" => Endpoint::Add,
            "/clients/delete" => Endpoint::Delete,
            "/clients/set_description" => Endpoint::SetDescription,
            "/clients/reset_secret" => Endpoint::ResetSecret,
            _ => return None,
        })
    }

    pub fn path(self) -> &'static str {
        match self {
            Endpoint::SetFeatures => "/clients/set_features",
            Endpoint::SetWhitelist => "/clients/set_whitelist",
            Endpoint::ClearWhitelist => "/clients/clear_whitelist",
            Endpoint::SetAccessSchema => "/entityType.setAccessSchema",
            Endpoint::GetAccessSchema => "/entityType.getAccessSchema",
            Endpoint::PromoteAccessSchema => "/entityType.promoteAccessSchema",
            Endpoint::List => "/clients/list",
            Endpoint::Add => "/clients/add",
            Endpoint::Delete => "/clients/delete",
            Endpoint::SetDescription => "/clients/set_description",
            Endpoint::ResetSecret => "/clients/reset_secret",
        }
    }

    /// Any one of these features may call the endpoint.
    pub fn needs_any(self) -> FeatureSet {
        match self {
            Endpoint::GetAccessSchema => FeatureSet::of(&Feature::ALL),
            _ => FeatureSet::of(&[Feature::Owner]),
        }
    }

    /// The parameters the endpoint reads (credentials included); any other
    /// is refused.
    pub fn params(self) -> &'static [&'static str] {
        match self {
            Endpoint::SetFeatures => &[
                "client_id",
                "client_secret",
                "for_client_id",
                "features",
                "dry_run",
            ],
            Endpoint::SetWhitelist => &[
                "client_id",
                "client_secret",
                "for_client_id",
                "whitelist",
                "dry_run",
            ],
            Endpoint::ClearWhitelist => &["client_id", "client_secret", "for_client_id", "dry_run"],
            Endpoint::SetAccessSchema => &[
                "client_id",
                "client_secret",
                "type_name",
                "for_client_id",
                "access_type",
                "attributes",
                "dry_run",
            ],
            Endpoint::GetAccessSchema => &[
                "client_id",
                "client_secret",
                "type_name",
                "for_client_id",
                "access_type",
            ],
            Endpoint::PromoteAccessSchema => &[
                "client_id",
                "client_secret",
                "type_name",
                "for_client_id",
                "access_type",
                "dry_run",
            ],
            Endpoint::List => &["client_id", "client_secret", "has_features"],
            Endpoint::Add => &[
                "client_id",
                "client_secret",
                "description",
                "features",
                "dry_run",
            ],
            Endpoint::Delete => &[
                "client_id",
                "client_secret",
                "client_id_for_deletion",
                "dry_run",
            ],
            Endpoint::SetDescription => &[
                "client_id",
                "client_secret",
                "for_client_id",
                "description",
                "dry_run",
            ],
            Endpoint::ResetSecret => &[
                "client_id",
                "client_secret",
                "for_client_id",
                "hours_to_live",
                "dry_run",
            ],
        }
    }

    /// Every endpoint.
    pub const ALL: [Endpoint; 11] = [
        Endpoint::SetFeatures,
        Endpoint::SetWhitelist,
        Endpoint::ClearWhitelist,
        Endpoint::SetAccessSchema,
        Endpoint::GetAccessSchema,
        Endpoint::PromoteAccessSchema,
        Endpoint::List,
        Endpoint::Add,
        Endpoint::Delete,
        Endpoint::SetDescription,
        Endpoint::ResetSecret,
    ];

    pub fn is_read_only(self) -> bool {
        matches!(self, Endpoint::GetAccessSchema | Endpoint::List)
    }
}

/// Who is calling, as established by the decision: made only from a
/// [`Permit`], so no management change is applied without one.
pub struct Caller<'a> {
    pub(crate) client_id: &'a str,
    pub(crate) ip: IpAddr,
    pub(crate) is_owner: bool,
    pub(crate) now_secs: i64,
}

impl<'a> Caller<'a> {
    pub(crate) fn of(permit: &'a Permit<'_>, now_secs: i64) -> Caller<'a> {
        Caller {
            client_id: &permit.client.id,
            ip: permit.ip,
            is_owner: permit.client.features.contains(Feature::Owner),
            now_secs,
        }
    }
}

fn json_arg(params: &Params, name: &str) -> Result<Value, ApiError> {
    let raw = params
        .get(name)
        .ok_or_else(|| ApiError::missing_argument(name))?;
    serde_json::from_str(raw)
        .map_err(|_| ApiError::invalid_argument(name, "the JSON is not syntactically valid"))
}

fn string_list(params: &Params, name: &str) -> Result<Vec<String>, ApiError> {
    match json_arg(params, name)? {
        Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err(ApiError::invalid_argument(
                    name,
                    "expected a JSON array of strings",
                )),
            })
            .collect(),
        _ => Err(ApiError::invalid_argument(
            name,
            "expected a JSON array of strings",
        )),
    }
}

fn parse_features(params: &Params, name: &str) -> Result<Vec<String>, ApiError> {
    let mut set = FeatureSet::empty();
    for f in string_list(params, name)? {
        set.insert(Feature::parse(&f).map_err(|e| ApiError::invalid_argument(name, e))?);
    }
    Ok(set.names())
}

/// `for_client_id`, defaulting to the caller, must name an existing client.
fn target<'p>(
    policy: &'p mut PolicyFile,
    params: &Params,
    caller: &Caller<'_>,
) -> Result<(String, &'p mut ClientDef), ApiError> {
    let id = params
        .get("for_client_id")
        .unwrap_or(caller.client_id)
        .to_string();
    match policy.clients.get_mut(&id) {
        // The copy of the policy shares the client with the running one
        // until it is changed here.
        Some(c) => Ok((id, Arc::make_mut(c))),
        None => Err(ApiError::invalid_argument(
            "for_client_id",
            "for_client_id isnot avalid id",
        )),
    }
}

fn ok() -> Value {
    json!({"stat": "ok"})
}

/// The result of a write: the response and which client it changed.
pub struct Change {
    pub response: Value,
    pub target: String,
}

/// Applies a management write to a copy of the policy. The caller persists it.
pub fn apply(
    ep: Endpoint,
    policy: &mut PolicyFile,
    snap: &Snapshot,
    params: &Params,
    caller: &Caller<'_>,
) -> Result<Change, ApiError> {
    match ep {
        Endpoint::SetFeatures => {
            let features = parse_features(params, "features")?;
            let (id, client) = target(policy, params, caller)?;
            if id == caller.client_id && caller.is_owner && !features.iter().any(|f| f == "owner") {
                return Err(ApiError::invalid_argument(
                    "features",
                    "an owner client cannot remove the owner feature from itself",
                ));
            }
            client.features = features;
            Ok(Change {
                response: ok(),
                target: id,
            })
        }
        Endpoint::SetWhitelist => {
            let mut nets = Vec::new();
            for c in string_list(params, "whitelist")? {
                nets.push(parse_cidr(&c).map_err(|e| ApiError::invalid_argument("whitelist", e))?);
            }
            let (id, client) = target(policy, params, caller)?;
            if id == caller.client_id && !CidrSet::new(&nets).contains(caller.ip) {
                return Err(ApiError::invalid_argument(
                    "whitelist",
                    format!(
                        "the allow list must include the address of this call ({}), or the client would lock itself out",
                        caller.ip
                    ),
                ));
            }
            client.whitelist = Some(nets.iter().map(|n| n.to_string()).collect());
            Ok(Change {
                response: ok(),
                target: id,
            })
        }
        Endpoint::ClearWhitelist => {
            let (id, client) = target(policy, params, caller)?;
            client.whitelist = None;
            Ok(Change {
                response: ok(),
                target: id,
            })
        }
        Endpoint::SetDescription => {
            let description = params
                .get("description")
                .ok_or_else(|| ApiError::missing_argument("description"))?
                .to_string();
            let (id, client) = target(policy, params, caller)?;
            client.description = description;
            Ok(Change {
                response: ok(),
                target: id,
            })
        }
        Endpoint::SetAccessSchema => set_access_schema(policy, snap, params),
        Endpoint::PromoteAccessSchema => promote_access_schema(policy, snap, params),
        Endpoint::Add => {
            let description = params
                .get("description")
                .ok_or_else(|| ApiError::missing_argument("description"))?
                .to_string();
            let features = match params.get("features") {
                Some(_) => parse_features(params, "features")?,
                None => Vec::new(),
            };
            let id = generate_client_id();
            let secret = generate_secret();
            policy.clients.insert(
                id.clone(),
                Arc::new(ClientDef {
                    secret: SecretSource::Inline(secret.clone()),
                    description: description.clone(),
                    features: features.clone(),
                    whitelist: None,
                    tenant: None,
                    roles: Vec::new(),
                    on_write_violation: Default::default(),
                    enforcement: Default::default(),
                    access_schemas: Default::default(),
                    previous_secret: None,
                    tls_client_subject: None,
                    rate_limit: None,
                }),
            );
            Ok(Change {
                response: json!({
                    "client_id": id, "client_secret": secret, "description": description,
                    "features": features, "whitelist": ALLOW_ALL, "stat": "ok"
                }),
                target: id,
            })
        }
        Endpoint::Delete => {
            let id = params
                .get("client_id_for_deletion")
                .ok_or_else(|| ApiError::missing_argument("client_id_for_deletion"))?
                .to_string();
            let Some(victim) = policy.clients.get(&id) else {
                return Err(ApiError::invalid_argument(
                    "client_id_for_deletion",
                    "client_id_for_deletion is not a valid id",
                ));
            };
            let is_owner = |c: &ClientDef| c.features.iter().any(|f| f == "owner");
            if is_owner(victim) && policy.clients.values().filter(|c| is_owner(c)).count() == 1 {
                return Err(ApiError::invalid_argument(
                    "client_id_for_deletion",
                    "the last owner client cannot be deleted",
                ));
            }
            policy.clients.remove(&id);
            Ok(Change {
                response: ok(),
                target: id,
            })
        }
        Endpoint::ResetSecret => {
            let hours = match params.get("hours_to_live") {
                None => 0,
                Some(h) => h
                    .parse::<i64>()
                    .ok()
                    .filter(|h| (0..=168).contains(h))
                    .ok_or_else(|| {
                        ApiError::invalid_argument(
                            "hours_to_live",
                            "must be an integer from 0 to 168",
                        )
                    })?,
            };
            let now = caller.now_secs;
            let (id, client) = target(policy, params, caller)?;
            let secret = generate_secret();
            let old = std::mem::replace(&mut client.secret, SecretSource::Inline(secret.clone()));
            client.previous_secret = (hours > 0).then(|| PreviousSecret {
                secret: old,
                expires_at: now + hours * 3600,
            });
            Ok(Change {
                response: json!({"new_secret": secret, "stat": "ok"}),
                target: id,
            })
        }
        Endpoint::GetAccessSchema | Endpoint::List => {
            Err(ApiError::internal("not a write endpoint"))
        }
    }
}

fn entity_type<'s>(snap: &'s Snapshot, params: &Params) -> Result<&'s EntityType, ApiError> {
    let name = params
        .get("type_name")
        .ok_or_else(|| ApiError::missing_argument("type_name"))?;
    snap.entity_types
        .get(name)
        .map(|e| &e.def)
        .ok_or_else(|| ApiError::unknown_entity_type(name))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum AccessType {
    Read,
    Write,
    ReadWithToken,
    WriteWithToken,
    ShadowRead,
    ShadowWrite,
}

fn access_type(params: &Params) -> Result<AccessType, ApiError> {
    match params.get("access_type") {
        None => Err(ApiError::missing_argument("access_type")),
        Some("read") => Ok(AccessType::Read),
        Some("write") => Ok(AccessType::Write),
        Some("read_with_token") => Ok(AccessType::ReadWithToken),
        Some("write_with_token") => Ok(AccessType::WriteWithToken),
        Some("shadow_read") => Ok(AccessType::ShadowRead),
        Some("shadow_write") => Ok(AccessType::ShadowWrite),
        Some(other) => Err(ApiError::invalid_argument(
            "access_type",
            format!(
                "{other} is not one of read, write, read_with_token, write_with_token, shadow_read, shadow_write"
            ),
        )),
    }
}

fn slot(s: &mut AccessSchemasDef, t: AccessType) -> &mut Option<Vec<String>> {
    match t {
        AccessType::Read => &mut s.read,
        AccessType::Write => &mut s.write,
        AccessType::ReadWithToken => &mut s.read_with_token,
        AccessType::WriteWithToken => &mut s.write_with_token,
        AccessType::ShadowRead => &mut s.shadow.read,
        AccessType::ShadowWrite => &mut s.shadow.write,
    }
}

/// The `schema` object of both access-schema responses: what the list grants,
/// shown with the reserved attributes as Capture does for read and write.
fn schema_echo(et: &EntityType, list: Option<&[String]>) -> Value {
    let defs = match list {
        None => et.attr_defs.clone(),
        Some(list) => {
            let paths: Vec<AttrPath> = list
                .iter()
                .filter_map(|p| AttrPath::parse(p).ok())
                .collect();
            match et.read_tree(&paths) {
                Ok(tree) => et.granted_defs(&tree),
                Err(_) => Vec::new(),
            }
        }
    };
    json!({"attr_defs": defs, "name": et.name})
}

fn set_access_schema(
    policy: &mut PolicyFile,
    snap: &Snapshot,
    params: &Params,
) -> Result<Change, ApiError> {
    let et = entity_type(snap, params)?;
    let id = params
        .get("for_client_id")
        .ok_or_else(|| ApiError::missing_argument("for_client_id"))?
        .to_string();
    let kind = access_type(params)?;
    let mut list: Vec<String> = Vec::new();
    let mut seen = BTreeSet::new();
    for raw in string_list(params, "attributes")? {
        let path =
            AttrPath::parse(&raw).map_err(|e| ApiError::invalid_argument("attributes", e))?;
        if path.has_selector() || et.resolve(&path).is_none() {
            return Err(ApiError::unknown_attribute("attributes", &raw));
        }
        // Reserved attributes are always granted; Capture warns against listing them.
        if path.is_reserved() {
            continue;
        }
        let dotted = path.to_string();
        if seen.insert(dotted.clone()) {
            list.push(dotted);
        }
    }
    let Some(client) = policy.clients.get_mut(&id).map(Arc::make_mut) else {
        return Err(ApiError::invalid_argument(
            "for_client_id",
            "for_client_id isnot avalid id",
        ));
    };
    let schemas = client.access_schemas.entry(et.name.clone()).or_default();
    *slot(schemas, kind) = Some(list.clone());
    let response =
        json!({"schema": schema_echo(et, Some(&list)), "notice": RESERVED_NOTICE, "stat": "ok"});
    Ok(Change {
        response,
        target: id,
    })
}

/// Makes a shadow schema the enforced one (`shadow_read` becomes `read`,
/// `shadow_write` becomes `write`) and removes the shadow, in one change.
fn promote_access_schema(
    policy: &mut PolicyFile,
    snap: &Snapshot,
    params: &Params,
) -> Result<Change, ApiError> {
    let et = entity_type(snap, params)?;
    let id = params
        .get("for_client_id")
        .ok_or_else(|| ApiError::missing_argument("for_client_id"))?
        .to_string();
    let (from, to) = match access_type(params)? {
        AccessType::ShadowRead => (AccessType::ShadowRead, AccessType::Read),
        AccessType::ShadowWrite => (AccessType::ShadowWrite, AccessType::Write),
        _ => {
            return Err(ApiError::invalid_argument(
                "access_type",
                "only shadow_read or shadow_write can be promoted",
            ))
        }
    };
    let Some(client) = policy.clients.get_mut(&id).map(Arc::make_mut) else {
        return Err(ApiError::invalid_argument(
            "for_client_id",
            "for_client_id isnot avalid id",
        ));
    };
    let promoted = client
        .access_schemas
        .get_mut(&et.name)
        .and_then(|schemas| {
            let list = slot(schemas, from).take()?;
            *slot(schemas, to) = Some(list.clone());
            Some(list)
        })
        .ok_or_else(|| {
            ApiError::invalid_argument("access_type", "the client has no such shadow schema")
        })?;
    let response = json!({"schema": schema_echo(et, Some(&promoted)), "notice": RESERVED_NOTICE, "stat": "ok"});
    Ok(Change {
        response,
        target: id,
    })
}

/// Answers the read-only endpoints from one snapshot.
pub fn read(
    ep: Endpoint,
    snap: &Snapshot,
    params: &Params,
    caller: &Caller<'_>,
) -> Result<Value, ApiError> {
    match ep {
        Endpoint::GetAccessSchema => {
            let et = entity_type(snap, params)?;
            let kind = access_type(params)?;
            let id = params.get("for_client_id").unwrap_or(caller.client_id);
            // Only owners may look at another client's schema.
            if id != caller.client_id && !caller.is_owner {
                return Err(ApiError::feature_denied(
                    "/entityType.getAccessSchema for another client",
                ));
            }
            let client = snap.source.clients.get(id).ok_or_else(|| {
                ApiError::invalid_argument("for_client_id", "for_client_id isnot avalid id")
            })?;
            let mut schemas = client
                .access_schemas
                .get(&et.name)
                .cloned()
                .unwrap_or_default();
            let list = slot(&mut schemas, kind).clone();
            let shadow = matches!(kind, AccessType::ShadowRead | AccessType::ShadowWrite);
            if shadow && list.is_none() {
                // No shadow is not a full-access shadow: nothing is evaluated.
                return Ok(json!({"schema": null, "stat": "ok"}));
            }
            Ok(json!({"schema": schema_echo(et, list.as_deref()), "stat": "ok"}))
        }
        Endpoint::List => {
            let filter = match params.get("has_features") {
                None => None,
                Some(_) => {
                    let mut set = FeatureSet::empty();
                    for f in string_list(params, "has_features")? {
                        set.insert(
                            Feature::parse(&f)
                                .map_err(|e| ApiError::invalid_argument("has_features", e))?,
                        );
                    }
                    Some(set)
                }
            };
            let results: Vec<Value> = snap
                .source
                .clients
                .iter()
                .filter(|(id, _)| {
                    let Some(f) = filter else { return true };
                    snap.clients.get(*id).is_some_and(|c| c.features.overlaps(f))
                })
                .map(|(id, c)| {
                    // Secrets are never echoed, unlike Capture's list.
                    json!({
                        "client_id": id,
                        "description": c.description,
                        "features": c.features,
                        "whitelist": c.whitelist.clone().unwrap_or_else(|| ALLOW_ALL.iter().map(|s| s.to_string()).collect()),
                    })
                })
                .collect();
            Ok(json!({"results": results, "stat": "ok"}))
        }
        _ => Err(ApiError::internal("not a read endpoint")),
    }
}
