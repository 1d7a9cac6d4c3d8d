//! The decision: who is calling, from where, may they call this route, and
//! what may their request contain. Pure functions over one policy snapshot;
//! the proxy phases only carry bytes in and out.

use std::net::IpAddr;

use serde_json::Value;

use crate::auth::{self, Presented};
use crate::errors::ApiError;
use crate::filter::{self, WriteViolation};
use crate::json::parse_record;
use crate::oracle;
use crate::params::Params;
use crate::policy::model::WriteViolationMode;
use crate::policy::{Client, Snapshot};
use crate::routes::{Access, RequestRecords, Route};
use crate::schema::{AccessTree, AttrPath};

/// Parameters that carry credentials: checked here, never forwarded.
pub const CREDENTIAL_PARAMS: [&str; 2] = ["client_id", "client_secret"];

pub struct AuthInput<'a> {
    pub authorization: Option<&'a [u8]>,
    pub date: Option<&'a str>,
    pub endpoint: &'a str,
    pub now_secs: i64,
    pub max_skew_secs: u64,
}

/// A secret to compare against when the client id is unknown, so that an
/// unknown id costs the same time as a wrong secret.
const DUMMY_SECRET: &[u8] = b"recordgate-no-such-client-secret";

pub fn authenticate<'s>(
    snap: &'s Snapshot,
    input: &AuthInput<'_>,
    params: &Params,
) -> Result<&'s Client, ApiError> {
    if let Some(header) = input.authorization {
        return match auth::parse_authorization(header) {
            Ok(Presented::Basic { client_id, secret }) => {
                check_secret(snap, &client_id, secret.as_bytes(), input.now_secs)
            }
            Ok(Presented::Signed {
                client_id,
                signature,
            }) => check_signature(snap, input, params, &client_id, &signature),
            Err(auth::AuthError::UnsupportedScheme) => Err(ApiError {
                http_status: 401,
                code: 205,
                error: "invalid_auth_method",
                description: "the Authorization scheme is not Basic or Signature".into(),
                argument_name: None,
                reason: crate::errors::DenyReason::Credentials,
            }),
            Err(_) => Err(ApiError::invalid_credentials()),
        };
    }
    match (params.get("client_id"), params.get("client_secret")) {
        (Some(id), Some(secret)) => check_secret(snap, id, secret.as_bytes(), input.now_secs),
        (Some(_), None) => {
            Err(ApiError::missing_argument("client_secret").with_credentials_reason())
        }
        _ => Err(ApiError::missing_credentials()),
    }
}

fn check_secret<'s>(
    snap: &'s Snapshot,
    client_id: &str,
    presented: &[u8],
    now_secs: i64,
) -> Result<&'s Client, ApiError> {
    match snap.clients.get(client_id) {
        Some(c) if auth::secrets_equal(presented, c.secret()) => Ok(c),
        Some(c)
            if c.previous_secret(now_secs)
                .is_some_and(|old| auth::secrets_equal(presented, old)) =>
        {
            Ok(c)
        }
        Some(_) => Err(ApiError::invalid_credentials()),
        None => {
            let _ = auth::secrets_equal(presented, DUMMY_SECRET);
            Err(ApiError::invalid_credentials())
        }
    }
}

fn check_signature<'s>(
    snap: &'s Snapshot,
    input: &AuthInput<'_>,
    params: &Params,
    client_id: &str,
    signature: &str,
) -> Result<&'s Client, ApiError> {
    let date = input
        .date
        .ok_or_else(|| ApiError::missing_argument("Date").with_credentials_reason())?;
    let signed_at = auth::parse_signed_date(date).ok_or_else(|| {
        ApiError::invalid_argument("Date", "expected UTC time as YYYY-MM-DD HH:MM:SS")
            .with_credentials_reason()
    })?;
    if !auth::within_skew(signed_at, input.now_secs, input.max_skew_secs) {
        return Err(ApiError::invalid_credentials());
    }
    let pairs: Vec<(&str, &str)> = params.pairs().collect();
    let secret = match snap.clients.get(client_id) {
        Some(c) => c.secret(),
        None => DUMMY_SECRET,
    };
    let ok = auth::verify_signature(secret, input.endpoint, date, &pairs, signature);
    match snap.clients.get(client_id) {
        Some(c) if ok => Ok(c),
        _ => Err(ApiError::invalid_credentials()),
    }
}

impl ApiError {
    fn with_credentials_reason(mut self) -> Self {
        self.reason = crate::errors::DenyReason::Credentials;
        self
    }
}

pub fn check_ip(client: &Client, ip: IpAddr) -> Result<(), ApiError> {
    match &client.whitelist {
        Some(list) if !list.contains(ip) => Err(ApiError::ip_denied()),
        _ => Ok(()),
    }
}

pub fn check_feature(client: &Client, route: &Route) -> Result<(), ApiError> {
    if client.features.intersects(route.needs_any) {
        Ok(())
    } else {
        Err(ApiError::feature_denied(&route.path))
    }
}

/// The grants that apply to one call, borrowed from the snapshot.
pub struct Grants<'s> {
    pub entity_type: &'s str,
    pub read: &'s AccessTree,
    pub write: &'s AccessTree,
    /// The client has an explicit empty write schema: it may not write at all.
    pub read_only: bool,
}

pub fn grants<'s>(
    snap: &'s Snapshot,
    client: &'s Client,
    params: &Params,
) -> Result<Grants<'s>, ApiError> {
    let type_name = params
        .get("type_name")
        .ok_or_else(|| ApiError::missing_argument("type_name"))?;
    let (name, et) = snap
        .entity_types
        .get_key_value(type_name)
        .ok_or_else(|| ApiError::unknown_entity_type(type_name))?;
    let schemas = client.schemas.get(type_name);
    let read = schemas.and_then(|s| s.read.as_deref()).unwrap_or(&et.full);
    let write = schemas.and_then(|s| s.write.as_deref()).unwrap_or(&et.full);
    let read_only = schemas.is_some_and(|s| s.read_only);
    Ok(Grants {
        entity_type: name,
        read,
        write,
        read_only,
    })
}

fn parse_path(argument: &str, value: &str) -> Result<AttrPath, ApiError> {
    AttrPath::parse(value).map_err(|e| ApiError::invalid_argument(argument, e))
}

/// Refuses parameters that would let a caller select, sort or address records
/// by attributes outside its read schema.
pub fn check_oracles(
    route: &Route,
    g: &Grants<'_>,
    params: &Params,
) -> Result<Option<AttrPath>, ApiError> {
    if let Some(f) = params.get("filter") {
        for p in
            oracle::filter_attributes(f).map_err(|e| ApiError::invalid_argument("filter", e))?
        {
            if !g.read.allows_fully(&p) {
                return Err(ApiError::not_readable("filter", &p.to_string()));
            }
        }
    }
    if let Some(s) = params.get("sort_on") {
        for p in
            oracle::json_path_list(s, true).map_err(|e| ApiError::invalid_argument("sort_on", e))?
        {
            if !g.read.allows_fully(&p) {
                return Err(ApiError::not_readable("sort_on", &p.to_string()));
            }
        }
    }
    if let Some(k) = params.get("key_attribute") {
        let p = parse_path("key_attribute", k)?;
        if !g.read.allows_fully(&p) {
            return Err(ApiError::not_readable("key_attribute", &p.to_string()));
        }
    }
    if route.access == Access::Read {
        if let Some(a) = params.get("attributes") {
            for p in oracle::json_path_list(a, false)
                .map_err(|e| ApiError::invalid_argument("attributes", e))?
            {
                if !g.read.reaches(&p) {
                    return Err(ApiError::not_readable("attributes", &p.to_string()));
                }
            }
        }
    }
    let Some(a) = params.get("attribute_name") else {
        return Ok(None);
    };
    let p = parse_path("attribute_name", a)?;
    match route.access {
        Access::Read if !g.read.reaches(&p) => {
            Err(ApiError::not_readable("attribute_name", &p.to_string()))
        }
        Access::Write if p.is_reserved() => Err(ApiError::reserved_attribute(
            "attribute_name",
            &p.to_string(),
        )),
        Access::Write if !g.write.reaches(&p) => {
            Err(ApiError::not_writable("attribute_name", &p.to_string()))
        }
        _ => Ok(Some(p)),
    }
}

/// Result of write filtering: how many attributes were stripped.
pub struct WriteOutcome {
    pub removed: usize,
}

/// Applies the write schema to the records of a request, in place.
pub fn filter_write(
    route: &Route,
    client: &Client,
    g: &Grants<'_>,
    attribute_name: Option<&AttrPath>,
    params: &mut Params,
    json_body: Option<&mut Value>,
    max_depth: usize,
) -> Result<WriteOutcome, ApiError> {
    if route.access != Access::Write {
        return Ok(WriteOutcome { removed: 0 });
    }
    if g.read_only {
        return Err(ApiError::not_writable("type_name", g.entity_type).read_only());
    }
    let mode = client.on_write_violation;
    let mut removed = 0;
    match route.request_records {
        RequestRecords::None => {
            // Deleting a whole record also deletes what the client may not write.
            if attribute_name.is_none() && !g.write.is_all() && route.path.ends_with(".delete") {
                return Err(ApiError::not_writable("type_name", "the whole record"));
            }
        }
        RequestRecords::Attributes => {
            removed += filter_field(params, "attributes", g.write, mode, max_depth)?;
        }
        RequestRecords::AttributesOrValue => match (attribute_name, params.get("value")) {
            (Some(path), Some(raw)) => {
                let mut v = parse_json_arg("value", raw, max_depth)?;
                if mode == WriteViolationMode::Strip {
                    if let Some(tree) = g.write.subtree(path) {
                        removed += filter::strip_write(&mut v, tree);
                    }
                }
                // Checked against the whole tree at `path`, after stripping, so
                // a null or scalar cannot clear what the client may not write.
                filter::check_write_at(&v, g.write, path).map_err(|e| violation("value", e))?;
                params.set("value", v.to_string());
            }
            _ => removed += filter_field(params, "attributes", g.write, mode, max_depth)?,
        },
        RequestRecords::AllAttributes => {
            let raw = params
                .get("all_attributes")
                .ok_or_else(|| ApiError::missing_argument("all_attributes"))?;
            let mut v = parse_json_arg("all_attributes", raw, max_depth)?;
            let Value::Array(items) = &mut v else {
                return Err(ApiError::invalid_argument(
                    "all_attributes",
                    "expected a JSON array of objects",
                ));
            };
            for item in items.iter_mut() {
                removed += filter_record("all_attributes", item, g.write, mode)?;
            }
            params.set("all_attributes", v.to_string());
        }
        RequestRecords::JsonBody => {
            let v = json_body.ok_or_else(|| ApiError::missing_argument("body"))?;
            removed += filter_record("body", v, g.write, mode)?;
        }
    }
    Ok(WriteOutcome { removed })
}

impl ApiError {
    fn read_only(mut self) -> Self {
        self.description =
            "this client has an empty write access schema for this entity type".into();
        self
    }
}

fn violation(argument: &str, e: WriteViolation) -> ApiError {
    match e {
        WriteViolation::Reserved(name) => ApiError::reserved_attribute(argument, &name),
        WriteViolation::NotWritable(path) if path.is_empty() => {
            ApiError::not_writable(argument, "the written value")
        }
        WriteViolation::NotWritable(path) => ApiError::not_writable(argument, &path),
    }
}

fn parse_json_arg(argument: &str, raw: &str, max_depth: usize) -> Result<Value, ApiError> {
    parse_record(raw.as_bytes(), max_depth).map_err(|e| ApiError::invalid_argument(argument, e))
}

fn filter_field(
    params: &mut Params,
    argument: &str,
    tree: &AccessTree,
    mode: WriteViolationMode,
    max_depth: usize,
) -> Result<usize, ApiError> {
    let raw = params
        .get(argument)
        .ok_or_else(|| ApiError::missing_argument(argument))?;
    let mut v = parse_json_arg(argument, raw, max_depth)?;
    let removed = filter_record(argument, &mut v, tree, mode)?;
    params.set(argument, v.to_string());
    Ok(removed)
}

fn filter_record(
    argument: &str,
    record: &mut Value,
    tree: &AccessTree,
    mode: WriteViolationMode,
) -> Result<usize, ApiError> {
    if !record.is_object() {
        return Err(ApiError::invalid_argument(
            argument,
            "expected a JSON object of attributes",
        ));
    }
    if let Some(name) = filter::reserved_in(record) {
        return Err(ApiError::reserved_attribute(argument, name));
    }
    match mode {
        WriteViolationMode::Reject => filter::check_write(record, tree)
            .map(|_| 0)
            .map_err(|e| violation(argument, e)),
        WriteViolationMode::Strip => {
            let removed = filter::strip_write(record, tree);
            // strip_write leaves a bare value alone; what remains must pass.
            filter::check_write(record, tree).map_err(|e| violation(argument, e))?;
            Ok(removed)
        }
    }
}
