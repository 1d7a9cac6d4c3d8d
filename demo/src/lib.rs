//! A sample Capture-style user-record API: the upstream of the demo and of
//! the load test, and a realistic upstream for the gateway's tests. It is
//! its own crate, so the gateway binary does not contain it. It deliberately
//! does no authentication: enforcing that is the gateway's job.
//!
//! The HTTP side ([`DemoUpstream`]) is a thin adapter; all behaviour lives in
//! [`Store::handle`], a pure function of the store, the endpoint and the merged
//! request parameters, so it can be tested without sockets.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Map, Value};

/// The only entity type the demo knows.
const TYPE_NAME: &str = "user";
const DEFAULT_MAX_RESULTS: usize = 100;
const MAX_RESULTS_CAP: usize = 1000;
/// Bounds memory per request; real Capture bodies are a few KB.
const MAX_BODY_BYTES: usize = 8 << 20;
/// Records are padded (through `aboutMe`) to roughly this many serialised bytes
/// so response sizes in demos and load tests resemble real records.
const RECORD_BYTES_MIN: u32 = 1900;
const RECORD_BYTES_SPREAD: u32 = 300;

// ---------------------------------------------------------------------------
// Entity type
// ---------------------------------------------------------------------------

/// Shape of an attribute; enough of Capture's type system to validate paths
/// and to give plurals their append/replace-by-id semantics.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Scalar,
    Object(&'static [Field]),
    Plural(&'static [Field]),
}

type Field = (&'static str, Kind);

/// Maintained by the store; clients may not write them.
const RESERVED: [&str; 4] = ["id", "uuid", "created", "lastUpdated"];

const PRIMARY_ADDRESS: &[Field] = &[
    ("address1", Kind::Scalar),
    ("address2", Kind::Scalar),
    ("city", Kind::Scalar),
    ("stateAbbreviation", Kind::Scalar),
    ("zip", Kind::Scalar),
    ("country", Kind::Scalar),
    ("phone", Kind::Scalar),
];
const CONSENT: &[Field] = &[("granted", Kind::Scalar), ("updated", Kind::Scalar)];
const CONSENTS: &[Field] = &[
    ("marketing", Kind::Object(CONSENT)),
    ("analytics", Kind::Object(CONSENT)),
];
const PROFILE: &[Field] = &[
    ("domain", Kind::Scalar),
    ("identifier", Kind::Scalar),
    ("displayName", Kind::Scalar),
    ("verifiedEmail", Kind::Scalar),
];
const PHOTO: &[Field] = &[("type", Kind::Scalar), ("value", Kind::Scalar)];
const STATUS: &[Field] = &[("status", Kind::Scalar), ("statusCreated", Kind::Scalar)];
const INTERNAL: &[Field] = &[("riskScore", Kind::Scalar), ("notes", Kind::Scalar)];

/// Attribute names here are load-bearing: the gateway's demo policy refers to them.
const USER: &[Field] = &[
    ("id", Kind::Scalar),
    ("uuid", Kind::Scalar),
    ("created", Kind::Scalar),
    ("lastUpdated", Kind::Scalar),
    ("email", Kind::Scalar),
    ("emailVerified", Kind::Scalar),
    ("givenName", Kind::Scalar),
    ("familyName", Kind::Scalar),
    ("middleName", Kind::Scalar),
    ("displayName", Kind::Scalar),
    ("birthday", Kind::Scalar),
    ("gender", Kind::Scalar),
    ("mobileNumber", Kind::Scalar),
    ("aboutMe", Kind::Scalar),
    ("primaryAddress", Kind::Object(PRIMARY_ADDRESS)),
    ("consents", Kind::Object(CONSENTS)),
    ("profiles", Kind::Plural(PROFILE)),
    ("photos", Kind::Plural(PHOTO)),
    ("statuses", Kind::Plural(STATUS)),
    ("internal", Kind::Object(INTERNAL)),
];

fn field_kind(fields: &[Field], name: &str) -> Option<Kind> {
    fields.iter().find(|(n, _)| *n == name).map(|(_, k)| *k)
}

/// Objects are materialised with null leaves rather than stored as null, so
/// every record has the same shape and navigation never meets a null parent.
fn default_value(kind: Kind) -> Value {
    match kind {
        Kind::Scalar => Value::Null,
        Kind::Object(fields) => Value::Object(default_object(fields)),
        Kind::Plural(_) => Value::Array(Vec::new()),
    }
}

fn default_object(fields: &[Field]) -> Map<String, Value> {
    fields
        .iter()
        .map(|(name, kind)| ((*name).to_string(), default_value(*kind)))
        .collect()
}

fn default_element(fields: &[Field], id: i64) -> Map<String, Value> {
    let mut element = Map::new();
    element.insert("id".to_string(), Value::from(id));
    element.extend(default_object(fields));
    element
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// A Capture error envelope (`stat: error`, numeric code, 1:1 error name).
#[derive(Debug, Clone, PartialEq)]
struct ApiError {
    code: u16,
    error: &'static str,
    description: String,
    argument: Option<String>,
}

impl ApiError {
    fn new(code: u16, error: &'static str, description: String, argument: Option<&str>) -> Self {
        ApiError {
            code,
            error,
            description,
            argument: argument.map(str::to_string),
        }
    }

    fn missing(arg: &str) -> Self {
        Self::new(
            100,
            "missing_argument",
            format!("missing required argument: {arg}"),
            Some(arg),
        )
    }

    /// Capture's wording for argument validation failures.
    fn invalid(arg: &str, reason: impl std::fmt::Display) -> Self {
        Self::new(
            200,
            "invalid_argument",
            format!("{arg} was not valid for the following reason: {reason}"),
            Some(arg),
        )
    }

    fn duplicate(arg: &str, other: &str) -> Self {
        Self::new(
            201,
            "duplicate_argument",
            format!("{arg} cannot be combined with {other}"),
            Some(arg),
        )
    }

    fn unknown_entity_type(name: &str) -> Self {
        Self::new(
            222,
            "unknown_entity_type",
            format!("unknown entity type: {name}"),
            Some("type_name"),
        )
    }

    fn unknown_attribute(path: &str, arg: &str) -> Self {
        Self::new(
            223,
            "unknown_attribute",
            format!("attribute does not exist: {path}"),
            Some(arg),
        )
    }

    fn reserved(attr: &str, arg: &str) -> Self {
        Self::new(
            234,
            "reserved_attribute",
            format!("{attr} is a reserved attribute and cannot be modified"),
            Some(arg),
        )
    }

    fn not_found(what: impl std::fmt::Display) -> Self {
        Self::new(310, "record_not_found", format!("{what} not found"), None)
    }

    fn id_in_new_record(path: &str) -> Self {
        Self::new(
            320,
            "id_in_new_record",
            format!("an id cannot be supplied for a new element or record: {path}"),
            Some("attributes"),
        )
    }

    fn json_type(path: &str, expected: &str, arg: &str) -> Self {
        Self::new(
            341,
            "invalid_json_type",
            format!("{path} must be {expected}"),
            Some(arg),
        )
    }

    fn to_json(&self) -> Value {
        let mut out = Map::new();
        out.insert("stat".into(), "error".into());
        out.insert("code".into(), self.code.into());
        out.insert("error".into(), self.error.into());
        out.insert("error_description".into(), self.description.clone().into());
        if let Some(arg) = &self.argument {
            out.insert("argument_name".into(), arg.clone().into());
        }
        Value::Object(out)
    }
}

type ApiResult<T> = Result<T, ApiError>;

// ---------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------

/// Request parameters merged from the query string and the form body.
#[derive(Debug, Default, Clone)]
pub struct Params {
    map: HashMap<String, String>,
}

impl Params {
    pub fn new() -> Self {
        Self::default()
    }

    /// Later values win, so adding the body after the query lets the body override.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.map.insert(key.into(), value.into());
    }

    pub fn extend_urlencoded(&mut self, input: &[u8]) {
        for (k, v) in form_urlencoded::parse(input) {
            self.map.insert(k.into_owned(), v.into_owned());
        }
    }

    /// Empty values count as absent, as an HTML form would send them.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.map
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    /// The same call addressed to one user's record: its selector replaced
    /// by the user's uuid, the token itself removed.
    fn for_user(&self, uuid: &str) -> Params {
        let mut p = self.clone();
        for k in ["id", "uuid", "key_attribute", "key_value", "access_token"] {
            p.map.remove(k);
        }
        p.map.insert("uuid".into(), uuid.to_string());
        p
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Params {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut params = Params::new();
        for (k, v) in iter {
            params.insert(k, v);
        }
        params
    }
}

fn parse_json_param(params: &Params, arg: &str) -> ApiResult<Option<Value>> {
    params
        .get(arg)
        .map(|raw| {
            serde_json::from_str(raw)
                .map_err(|_| ApiError::invalid(arg, "the JSON is not syntactically valid"))
        })
        .transpose()
}

fn parse_bool_param(params: &Params, arg: &str) -> ApiResult<bool> {
    match params.get(arg).map(str::trim) {
        None => Ok(false),
        Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
        Some(_) => Err(ApiError::invalid(arg, "expected true or false")),
    }
}

fn parse_positive_param(params: &Params, arg: &str) -> ApiResult<Option<usize>> {
    match params.get(arg) {
        None => Ok(None),
        Some(raw) => match raw.trim().parse::<usize>() {
            Ok(n) if n >= 1 => Ok(Some(n)),
            _ => Err(ApiError::invalid(arg, "expected a positive integer")),
        },
    }
}

fn check_type_name(params: &Params) -> ApiResult<()> {
    match params.get("type_name") {
        None => Err(ApiError::missing("type_name")),
        Some(TYPE_NAME) => Ok(()),
        Some(other) => Err(ApiError::unknown_entity_type(other)),
    }
}

// ---------------------------------------------------------------------------
// Attribute paths
// ---------------------------------------------------------------------------

/// One step of an attribute path; `elem` is the `#id` of a plural element.
#[derive(Debug, Clone, PartialEq)]
struct Seg {
    name: String,
    elem: Option<i64>,
}

/// Accepts the three spellings seen in Capture docs: `a.b`, `a/b` and `/a/b`.
fn parse_path(raw: &str) -> Result<Vec<Seg>, String> {
    let trimmed = raw.trim().trim_start_matches('/');
    if trimmed.is_empty() {
        return Err("empty attribute path".to_string());
    }
    trimmed
        .split(['.', '/'])
        .map(|part| {
            let (name, elem) = match part.split_once('#') {
                None => (part, None),
                Some((name, id)) => match id.parse::<i64>() {
                    Ok(id) => (name, Some(id)),
                    Err(_) => return Err(format!("invalid plural element id in {raw}")),
                },
            };
            if name.is_empty() {
                return Err(format!("empty path segment in {raw}"));
            }
            Ok(Seg {
                name: name.to_string(),
                elem,
            })
        })
        .collect()
}

fn path_text(segs: &[Seg]) -> String {
    segs.iter()
        .map(|s| match s.elem {
            Some(id) => format!("{}#{id}", s.name),
            None => s.name.clone(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

enum PathProblem {
    Unknown,
    Invalid(String),
}

/// Checks a path against the entity type. `through_plurals` allows stepping
/// into plural sub-attributes without an element id (filters, key lookups,
/// projections), meaning "any/every element".
fn resolve(segs: &[Seg], through_plurals: bool) -> Result<Kind, PathProblem> {
    let mut fields = USER;
    let mut kind = Kind::Object(USER);
    let mut in_element = false;
    for (i, seg) in segs.iter().enumerate() {
        if i > 0 {
            match kind {
                Kind::Scalar => return Err(PathProblem::Unknown),
                Kind::Object(f) => {
                    fields = f;
                    in_element = false;
                }
                Kind::Plural(f) => {
                    let addressed = segs.get(i - 1).is_some_and(|p| p.elem.is_some());
                    if !addressed && !through_plurals {
                        return Err(PathProblem::Invalid(format!(
                            "{} is a plural; address an element as {}#<id>",
                            path_text(&segs[..i]),
                            segs[i - 1].name
                        )));
                    }
                    fields = f;
                    in_element = true;
                }
            }
        }
        kind = match field_kind(fields, &seg.name) {
            Some(k) => k,
            // Element ids are real attributes of plural elements.
            None if in_element && seg.name == "id" => Kind::Scalar,
            None => return Err(PathProblem::Unknown),
        };
        if seg.elem.is_some() && !matches!(kind, Kind::Plural(_)) {
            return Err(PathProblem::Invalid(format!(
                "{} is not a plural",
                path_text(&segs[..=i])
            )));
        }
    }
    Ok(kind)
}

/// Parses and validates an `attribute_name`-style path.
fn attribute_path(raw: &str, arg: &str) -> ApiResult<(Vec<Seg>, Kind)> {
    let segs = parse_path(raw).map_err(|e| ApiError::invalid(arg, e))?;
    match resolve(&segs, false) {
        Ok(kind) => Ok((segs, kind)),
        Err(PathProblem::Unknown) => Err(ApiError::unknown_attribute(raw, arg)),
        Err(PathProblem::Invalid(reason)) => Err(ApiError::invalid(arg, reason)),
    }
}

/// A path that may fan out over plural elements and must end at a scalar.
fn scalar_path(raw: &str, through_plurals: bool) -> Result<Vec<String>, PathProblem> {
    let segs = parse_path(raw).map_err(PathProblem::Invalid)?;
    if segs.iter().any(|s| s.elem.is_some()) {
        return Err(PathProblem::Invalid(format!(
            "plural element ids are not allowed in {raw}"
        )));
    }
    match resolve(&segs, through_plurals)? {
        Kind::Scalar => Ok(segs.into_iter().map(|s| s.name).collect()),
        _ => Err(PathProblem::Invalid(format!(
            "{raw} is not a simple attribute"
        ))),
    }
}

static NULL: Value = Value::Null;

fn get_plain<'a>(record: &'a Value, path: &[String]) -> &'a Value {
    path.iter()
        .try_fold(record, |v, name| v.get(name))
        .unwrap_or(&NULL)
}

/// Visits every value at `path`, fanning out over plural elements; a missing
/// attribute is visited as null so `is null` matches it.
fn any_value(v: &Value, path: &[String], pred: &mut dyn FnMut(&Value) -> bool) -> bool {
    match (v, path.split_first()) {
        (Value::Array(items), Some(_)) => items.iter().any(|it| any_value(it, path, pred)),
        (_, None) => pred(v),
        (_, Some((head, rest))) => match v.get(head) {
            Some(child) => any_value(child, rest, pred),
            None => pred(&Value::Null),
        },
    }
}

fn element_id(v: &Value) -> Option<i64> {
    v.get("id").and_then(Value::as_i64)
}

fn get_at<'a>(record: &'a Value, segs: &[Seg]) -> ApiResult<&'a Value> {
    let mut cur = record;
    for (i, seg) in segs.iter().enumerate() {
        let next = cur
            .get(&seg.name)
            .ok_or_else(|| ApiError::unknown_attribute(&path_text(segs), "attribute_name"))?;
        cur = match seg.elem {
            None => next,
            Some(id) => next
                .as_array()
                .and_then(|items| items.iter().find(|it| element_id(it) == Some(id)))
                .ok_or_else(|| {
                    ApiError::not_found(format!("plural element {}", path_text(&segs[..=i])))
                })?,
        };
    }
    Ok(cur)
}

fn get_at_mut<'a>(record: &'a mut Value, segs: &[Seg]) -> ApiResult<&'a mut Value> {
    let mut cur = record;
    for (i, seg) in segs.iter().enumerate() {
        let next = match cur.get_mut(&seg.name) {
            Some(next) => next,
            None => {
                return Err(ApiError::unknown_attribute(
                    &path_text(segs),
                    "attribute_name",
                ))
            }
        };
        cur = match seg.elem {
            None => next,
            Some(id) => match next
                .as_array_mut()
                .and_then(|items| items.iter_mut().find(|it| element_id(it) == Some(id)))
            {
                Some(el) => el,
                None => {
                    return Err(ApiError::not_found(format!(
                        "plural element {}",
                        path_text(&segs[..=i])
                    )))
                }
            },
        };
    }
    Ok(cur)
}

// ---------------------------------------------------------------------------
// Projection (`attributes` on reads)
// ---------------------------------------------------------------------------

fn parse_projection(params: &Params) -> ApiResult<Option<Vec<Vec<String>>>> {
    let Some(value) = parse_json_param(params, "attributes")? else {
        return Ok(None);
    };
    let Value::Array(items) = value else {
        return Err(ApiError::invalid(
            "attributes",
            "expected a JSON array of attribute names",
        ));
    };
    items
        .iter()
        .map(|item| {
            let raw = item.as_str().ok_or_else(|| {
                ApiError::invalid("attributes", "expected a JSON array of attribute names")
            })?;
            let segs = parse_path(raw).map_err(|e| ApiError::invalid("attributes", e))?;
            if segs.iter().any(|s| s.elem.is_some()) {
                return Err(ApiError::invalid(
                    "attributes",
                    format!("plural element ids are not allowed in {raw}"),
                ));
            }
            match resolve(&segs, true) {
                Ok(_) => Ok(segs.into_iter().map(|s| s.name).collect()),
                Err(PathProblem::Unknown) => Err(ApiError::unknown_attribute(raw, "attributes")),
                Err(PathProblem::Invalid(reason)) => Err(ApiError::invalid("attributes", reason)),
            }
        })
        .collect::<ApiResult<Vec<_>>>()
        .map(Some)
}

fn project(record: &Value, paths: &[Vec<String>]) -> Value {
    let mut out = Map::new();
    for key in RESERVED {
        if let Some(v) = record.get(key) {
            out.insert(key.to_string(), v.clone());
        }
    }
    let mut out = Value::Object(out);
    for path in paths {
        copy_path(record, path, &mut out);
    }
    out
}

fn copy_path(src: &Value, path: &[String], out: &mut Value) {
    match (src, path.split_first()) {
        (_, None) => *out = src.clone(),
        (Value::Array(items), Some(_)) => {
            // Element ids are kept so projected elements remain addressable.
            if !out.is_array() {
                *out = Value::Array(
                    items
                        .iter()
                        .map(|it| json!({ "id": it.get("id").cloned().unwrap_or(Value::Null) }))
                        .collect(),
                );
            }
            if let Value::Array(out_items) = out {
                for (it, o) in items.iter().zip(out_items.iter_mut()) {
                    copy_path(it, path, o);
                }
            }
        }
        (Value::Object(map), Some((head, rest))) => {
            let Some(child) = map.get(head) else { return };
            if !out.is_object() {
                *out = Value::Object(Map::new());
            }
            if let Value::Object(out_map) = out {
                let slot = out_map.entry(head.clone()).or_insert(Value::Null);
                copy_path(child, rest, slot);
            }
        }
        _ => {}
    }
}

mod generate;
mod http_adapter;
mod query;
mod store;
mod tokens;
mod writes;
use generate::*;
pub use http_adapter::{serve, service, DemoUpstream};
use query::*;
pub use store::Store;
use tokens::Tokens;
use writes::*;

#[cfg(test)]
mod tests;
