//! An embedded, in-process sample of a Capture-style user-record API.
//!
//! The demo settings start it as the gateway's upstream so that a newcomer can
//! curl through the gateway without a real Capture application, and the load
//! test reuses it as a cheap, predictable upstream. It deliberately does no
//! authentication: enforcing that is the gateway's job.
//!
//! The HTTP side ([`DemoUpstream`]) is a thin adapter; all behaviour lives in
//! [`Store::handle`], a pure function of the store, the endpoint and the merged
//! request parameters, so it can be tested without sockets.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use pingora::apps::http_app::{HttpServer, ServeHttp};
use pingora::protocols::http::ServerSession;
use pingora::services::listening::Service;
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

// ---------------------------------------------------------------------------
// Filters
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    fn accepts(self, o: Ordering) -> bool {
        match self {
            CmpOp::Eq => o == Ordering::Equal,
            CmpOp::Ne => o != Ordering::Equal,
            CmpOp::Lt => o == Ordering::Less,
            CmpOp::Le => o != Ordering::Greater,
            CmpOp::Gt => o == Ordering::Greater,
            CmpOp::Ge => o != Ordering::Less,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Lit {
    Str(String),
    Num(f64),
    Bool(bool),
}

#[derive(Debug, Clone, PartialEq)]
enum Cond {
    IsNull(Vec<String>),
    NotNull(Vec<String>),
    Cmp(Vec<String>, CmpOp, Lit),
}

/// Disjunction of conjunctions: `and` binds tighter than `or`, as in Capture.
#[derive(Debug, Clone, PartialEq)]
struct Filter {
    any_of: Vec<Vec<Cond>>,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Num(f64),
    Op(CmpOp),
}

fn tokenize(input: &str) -> Result<Vec<Tok>, String> {
    let mut toks = Vec::new();
    let mut chars = input.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '\'' {
            chars.next();
            let mut s = String::new();
            loop {
                match chars.next() {
                    None => return Err("unterminated string literal".to_string()),
                    Some('\\') => match chars.next() {
                        Some(escaped) => s.push(escaped),
                        None => return Err("unterminated string literal".to_string()),
                    },
                    // SQL-style doubled quote.
                    Some('\'') if chars.peek() == Some(&'\'') => {
                        chars.next();
                        s.push('\'');
                    }
                    Some('\'') => break,
                    Some(other) => s.push(other),
                }
            }
            toks.push(Tok::Str(s));
        } else if matches!(c, '=' | '!' | '<' | '>') {
            chars.next();
            let op = match c {
                '=' => CmpOp::Eq,
                '!' if chars.next_if_eq(&'=').is_some() => CmpOp::Ne,
                '<' if chars.next_if_eq(&'=').is_some() => CmpOp::Le,
                '<' if chars.next_if_eq(&'>').is_some() => CmpOp::Ne,
                '<' => CmpOp::Lt,
                '>' if chars.next_if_eq(&'=').is_some() => CmpOp::Ge,
                '>' => CmpOp::Gt,
                _ => return Err("the ! (not) operator is not supported".to_string()),
            };
            toks.push(Tok::Op(op));
        } else if c.is_ascii_digit() || c == '-' {
            let mut s = String::new();
            while let Some(&d) = chars.peek() {
                let exponent_sign = (d == '-' || d == '+') && s.ends_with(['e', 'E']);
                if d.is_ascii_digit()
                    || d == '.'
                    || d == 'e'
                    || d == 'E'
                    || exponent_sign
                    || (d == '-' && s.is_empty())
                {
                    s.push(d);
                    chars.next();
                } else {
                    break;
                }
            }
            let n = s
                .parse::<f64>()
                .map_err(|_| format!("invalid number {s}"))?;
            toks.push(Tok::Num(n));
        } else if c.is_alphabetic() || c == '_' || c == '/' {
            let mut s = String::new();
            while let Some(&d) = chars.peek() {
                if d.is_alphanumeric() || matches!(d, '_' | '.' | '/' | '#') {
                    s.push(d);
                    chars.next();
                } else {
                    break;
                }
            }
            toks.push(Tok::Word(s));
        } else {
            return Err(format!("unexpected character '{c}'"));
        }
    }
    Ok(toks)
}

fn is_word(tok: Option<&Tok>, word: &str) -> bool {
    matches!(tok, Some(Tok::Word(w)) if w.eq_ignore_ascii_case(word))
}

fn describe(tok: Option<&Tok>) -> String {
    match tok {
        None => "end of filter".to_string(),
        Some(Tok::Word(w)) => format!("'{w}'"),
        Some(Tok::Str(s)) => format!("string '{s}'"),
        Some(Tok::Num(n)) => format!("number {n}"),
        Some(Tok::Op(op)) => format!("operator {op:?}"),
    }
}

fn parse_filter(input: &str) -> Result<Filter, String> {
    let toks = tokenize(input)?;
    if toks.is_empty() {
        return Err("empty filter".to_string());
    }
    let mut pos = 0;
    let mut any_of = vec![Vec::new()];
    loop {
        let cond = parse_cond(&toks, &mut pos)?;
        if let Some(group) = any_of.last_mut() {
            group.push(cond);
        }
        let tok = toks.get(pos);
        pos += 1;
        if tok.is_none() {
            break;
        } else if is_word(tok, "and") {
            continue;
        } else if is_word(tok, "or") {
            any_of.push(Vec::new());
        } else {
            return Err(format!("expected and/or but found {}", describe(tok)));
        }
    }
    Ok(Filter { any_of })
}

fn parse_cond(toks: &[Tok], pos: &mut usize) -> Result<Cond, String> {
    let tok = toks.get(*pos);
    *pos += 1;
    let path = match tok {
        Some(Tok::Word(w)) if w.eq_ignore_ascii_case("not") => {
            return Err("the not operator is not supported".to_string())
        }
        Some(Tok::Word(w)) => match scalar_path(w, true) {
            Ok(path) => path,
            Err(PathProblem::Unknown) => return Err(format!("Unknown attribute {w}")),
            Err(PathProblem::Invalid(reason)) => return Err(reason),
        },
        other => {
            return Err(format!(
                "expected an attribute but found {}",
                describe(other)
            ))
        }
    };
    let tok = toks.get(*pos);
    *pos += 1;
    match tok {
        _ if is_word(tok, "is") => {
            let negated = is_word(toks.get(*pos), "not");
            if negated {
                *pos += 1;
            }
            let tok = toks.get(*pos);
            *pos += 1;
            if !is_word(tok, "null") {
                return Err(format!("expected null but found {}", describe(tok)));
            }
            Ok(if negated {
                Cond::NotNull(path)
            } else {
                Cond::IsNull(path)
            })
        }
        Some(Tok::Op(op)) => {
            let tok = toks.get(*pos);
            *pos += 1;
            let lit = match tok {
                Some(Tok::Str(s)) => Lit::Str(s.clone()),
                Some(Tok::Num(n)) => Lit::Num(*n),
                _ if is_word(tok, "true") => Lit::Bool(true),
                _ if is_word(tok, "false") => Lit::Bool(false),
                _ if is_word(tok, "null") => {
                    return Err("compare with null using is null / is not null".to_string())
                }
                other => return Err(format!("expected a value but found {}", describe(other))),
            };
            Ok(Cond::Cmp(path, *op, lit))
        }
        _ if is_word(tok, "contains") => Err("the contains operator is not supported".to_string()),
        other => Err(format!(
            "expected an operator but found {}",
            describe(other)
        )),
    }
}

fn compare_lit(v: &Value, lit: &Lit) -> Option<Ordering> {
    match (v, lit) {
        (Value::Number(n), Lit::Num(l)) => n.as_f64()?.partial_cmp(l),
        (Value::String(s), Lit::Str(l)) => Some(s.as_str().cmp(l.as_str())),
        (Value::Bool(b), Lit::Bool(l)) => Some(b.cmp(l)),
        _ => None,
    }
}

impl Cond {
    fn matches(&self, record: &Value) -> bool {
        match self {
            Cond::IsNull(p) => !any_value(record, p, &mut |v| !v.is_null()),
            Cond::NotNull(p) => any_value(record, p, &mut |v| !v.is_null()),
            Cond::Cmp(p, op, lit) => any_value(record, p, &mut |v| {
                compare_lit(v, lit).is_some_and(|o| op.accepts(o))
            }),
        }
    }
}

impl Filter {
    fn matches(&self, record: &Value) -> bool {
        self.any_of
            .iter()
            .any(|group| group.iter().all(|c| c.matches(record)))
    }
}

fn parse_filter_param(params: &Params) -> ApiResult<Option<Filter>> {
    params
        .get("filter")
        .map(|raw| parse_filter(raw).map_err(|reason| ApiError::invalid("filter", reason)))
        .transpose()
}

// ---------------------------------------------------------------------------
// Sorting
// ---------------------------------------------------------------------------

fn parse_sort(params: &Params) -> ApiResult<Vec<(Vec<String>, bool)>> {
    let Some(value) = parse_json_param(params, "sort_on")? else {
        return Ok(Vec::new());
    };
    let shape = || ApiError::invalid("sort_on", "expected a JSON array of attribute names");
    let Value::Array(items) = value else {
        return Err(shape());
    };
    items
        .iter()
        .map(|item| {
            let raw = item.as_str().ok_or_else(shape)?;
            let (name, descending) = match raw.strip_prefix('-') {
                Some(rest) => (rest, true),
                None => (raw, false),
            };
            match scalar_path(name, false) {
                Ok(path) => Ok((path, descending)),
                Err(PathProblem::Unknown) => Err(ApiError::unknown_attribute(name, "sort_on")),
                Err(PathProblem::Invalid(reason)) => Err(ApiError::invalid("sort_on", reason)),
            }
        })
        .collect()
}

/// Nulls sort last ascending (first descending), as in PostgreSQL.
fn cmp_values(a: &Value, b: &Value) -> Ordering {
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Bool(_) => 0,
            Value::Number(_) => 1,
            Value::String(_) => 2,
            Value::Array(_) | Value::Object(_) => 3,
            Value::Null => 4,
        }
    }
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        _ => rank(a).cmp(&rank(b)),
    }
}

// ---------------------------------------------------------------------------
// Writes
// ---------------------------------------------------------------------------

struct WriteCtx {
    next_element_id: i64,
    creating: bool,
}

impl WriteCtx {
    fn element_id(&mut self) -> i64 {
        let id = self.next_element_id;
        self.next_element_id += 1;
        id
    }
}

fn join_path(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

fn reject_reserved(given: &Map<String, Value>, creating: bool) -> ApiResult<()> {
    for key in RESERVED {
        if given.contains_key(key) {
            return Err(if creating && key == "id" {
                ApiError::id_in_new_record("id")
            } else {
                ApiError::reserved(key, "attributes")
            });
        }
    }
    Ok(())
}

/// Merges `value` into `target` with `entity.update` semantics: objects merge
/// recursively, plural elements with an `id` replace that element and the rest
/// are appended with fresh ids.
fn apply(
    kind: Kind,
    target: &mut Value,
    value: &Value,
    path: &str,
    ctx: &mut WriteCtx,
) -> ApiResult<()> {
    match kind {
        Kind::Scalar => {
            if value.is_object() || value.is_array() {
                return Err(ApiError::json_type(path, "a simple value", "attributes"));
            }
            *target = value.clone();
        }
        Kind::Object(fields) => match value {
            Value::Null => *target = Value::Object(default_object(fields)),
            Value::Object(given) => {
                if !target.is_object() {
                    *target = Value::Object(default_object(fields));
                }
                if let Value::Object(map) = target {
                    apply_fields(fields, map, given, path, ctx)?;
                }
            }
            _ => return Err(ApiError::json_type(path, "an object", "attributes")),
        },
        Kind::Plural(fields) => match value {
            Value::Null => *target = Value::Array(Vec::new()),
            Value::Array(items) => {
                if !target.is_array() {
                    *target = Value::Array(Vec::new());
                }
                if let Value::Array(existing) = target {
                    for item in items {
                        apply_element(fields, existing, item, path, ctx)?;
                    }
                }
            }
            _ => return Err(ApiError::json_type(path, "an array", "attributes")),
        },
    }
    Ok(())
}

fn apply_fields(
    fields: &[Field],
    map: &mut Map<String, Value>,
    given: &Map<String, Value>,
    path: &str,
    ctx: &mut WriteCtx,
) -> ApiResult<()> {
    for (key, v) in given {
        let child_path = join_path(path, key);
        let kind = field_kind(fields, key)
            .ok_or_else(|| ApiError::unknown_attribute(&child_path, "attributes"))?;
        let slot = map.entry(key.clone()).or_insert(Value::Null);
        apply(kind, slot, v, &child_path, ctx)?;
    }
    Ok(())
}

fn build_element(
    fields: &[Field],
    id: i64,
    given: &Map<String, Value>,
    path: &str,
    ctx: &mut WriteCtx,
) -> ApiResult<Value> {
    let mut element = default_element(fields, id);
    for (key, v) in given {
        if key == "id" {
            continue;
        }
        let child_path = format!("{path}#{id}.{key}");
        let kind = field_kind(fields, key)
            .ok_or_else(|| ApiError::unknown_attribute(&child_path, "attributes"))?;
        let slot = element.entry(key.clone()).or_insert(Value::Null);
        apply(kind, slot, v, &child_path, ctx)?;
    }
    Ok(Value::Object(element))
}

fn apply_element(
    fields: &[Field],
    existing: &mut Vec<Value>,
    item: &Value,
    path: &str,
    ctx: &mut WriteCtx,
) -> ApiResult<()> {
    let Value::Object(given) = item else {
        return Err(ApiError::json_type(
            path,
            "an array of objects",
            "attributes",
        ));
    };
    match given.get("id") {
        None => {
            let id = ctx.element_id();
            existing.push(build_element(fields, id, given, path, ctx)?);
        }
        Some(_) if ctx.creating => return Err(ApiError::id_in_new_record(path)),
        Some(raw_id) => {
            let id = raw_id.as_i64().ok_or_else(|| {
                ApiError::json_type(&format!("{path}.id"), "an integer", "attributes")
            })?;
            let element = build_element(fields, id, given, path, ctx)?;
            let slot = existing
                .iter_mut()
                .find(|it| element_id(it) == Some(id))
                .ok_or_else(|| ApiError::not_found(format!("plural element {path}#{id}")))?;
            *slot = element;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Deterministic generation
// ---------------------------------------------------------------------------

/// A 64-bit LCG (Knuth's MMIX constants); quality only needs to be "varied
/// enough to look like data", and determinism keeps demos reproducible.
struct Lcg(u64);

impl Lcg {
    /// SplitMix64 scramble so consecutive seeds give unrelated streams.
    fn seeded(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Lcg(z ^ (z >> 31))
    }

    fn next_u32(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        // The high bits of an LCG are the well-mixed ones.
        (self.0 >> 32) as u32
    }

    fn below(&mut self, n: u32) -> u32 {
        ((u64::from(self.next_u32()) * u64::from(n)) >> 32) as u32
    }

    fn chance(&mut self, numerator: u32, denominator: u32) -> bool {
        self.below(denominator) < numerator
    }

    fn pick(&mut self, items: &[&'static str]) -> &'static str {
        let len = u32::try_from(items.len()).unwrap_or(u32::MAX);
        items.get(self.below(len) as usize).copied().unwrap_or("")
    }

    fn uuid(&mut self) -> String {
        let a = self.next_u32();
        let b = self.next_u32();
        let c = self.next_u32();
        let d = self.next_u32();
        // Version 4 / RFC 4122 variant bits, so it looks like a real random UUID.
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:04x}{:08x}",
            a,
            b >> 16,
            b & 0x0fff,
            ((c >> 16) & 0x3fff) | 0x8000,
            c & 0xffff,
            d
        )
    }
}

const TS_FORMAT: &str = "%Y-%m-%d %H:%M:%S%.6f %z";

fn format_ts(secs: i64, micros: u32) -> String {
    chrono::DateTime::from_timestamp(secs, micros.saturating_mul(1000))
        .map(|t| t.format(TS_FORMAT).to_string())
        .unwrap_or_default()
}

fn now_ts() -> String {
    chrono::Utc::now().format(TS_FORMAT).to_string()
}

const GIVEN_NAMES: &[&str] = &[
    "Matt", "Ana", "Priya", "Kenji", "Olivia", "Liam", "Sofia", "Noah", "Amara", "Lucas", "Mei",
    "Jonas", "Fatima", "Diego", "Chloe", "Ibrahim", "Hannah", "Mateo", "Aiko", "Elena", "Samuel",
    "Zara", "Viktor", "Grace",
];
const FAMILY_NAMES: &[&str] = &[
    "Parker",
    "Silva",
    "Sharma",
    "Tanaka",
    "Nguyen",
    "Okafor",
    "Rossi",
    "Muller",
    "Kowalski",
    "Haddad",
    "Johansson",
    "Garcia",
    "Chen",
    "Dubois",
    "Novak",
    "O'Brien",
    "Kim",
    "Petrov",
    "Santos",
    "Fischer",
    "Larsen",
    "Moreau",
    "Ibrahim",
    "Walker",
];
const MIDDLE_NAMES: &[&str] = &["James", "Marie", "Lee", "Ann", "Jose", "Rae", "Kai", "Jean"];
const GENDERS: &[&str] = &["female", "male", "non-binary", "unspecified"];
const STREETS: &[&str] = &[
    "Maple Street",
    "Oak Avenue",
    "Pine Road",
    "Cedar Lane",
    "Elm Street",
    "Lakeview Drive",
    "Sunset Boulevard",
    "Hillcrest Way",
    "River Road",
    "Park Place",
    "Main Street",
    "Willow Court",
];
/// City, state and ZIP prefix stay consistent with each other.
const CITIES: &[(&str, &str, &str)] = &[
    ("Portland", "OR", "972"),
    ("Denver", "CO", "802"),
    ("Austin", "TX", "787"),
    ("Seattle", "WA", "981"),
    ("Boston", "MA", "021"),
    ("Chicago", "IL", "606"),
    ("Atlanta", "GA", "303"),
    ("Phoenix", "AZ", "850"),
    ("Madison", "WI", "537"),
    ("Raleigh", "NC", "276"),
    ("Omaha", "NE", "681"),
    ("Boise", "ID", "837"),
];
const PROFILE_DOMAINS: &[&str] = &[
    "facebook.com",
    "google.com",
    "twitter.com",
    "linkedin.com",
    "yahoo.com",
    "apple.com",
];
const PHOTO_TYPES: &[&str] = &["original", "normal"];
const STATUS_NAMES: &[&str] = &["active", "verified", "pending", "suspended", "reactivated"];
const INTERNAL_NOTES: &[&str] = &[
    "Chargeback dispute opened by card issuer; keep an eye on refunds.",
    "Escalated to tier-2 support twice for account recovery.",
    "Flagged by fraud model v3 for login velocity; cleared after review.",
    "VIP support tier; handle complaints within one business day.",
    "Requested data export under privacy regulation; fulfilled.",
    "Possible duplicate of another account sharing the same phone number.",
    "No issues on file.",
    "Manual identity verification completed at a retail location.",
];
const ABOUT_SENTENCES: &[&str] = &[
    "I spend most weekends hiking the trails outside town with my dog.",
    "Coffee first, questions later, and never before the second cup.",
    "Currently learning to bake sourdough with mixed results so far.",
    "I work in logistics and think about shipping containers more than anyone should.",
    "Amateur photographer who mostly takes pictures of clouds and old buildings.",
    "Big fan of board games, especially the ones that take all afternoon.",
    "I volunteer at the local library teaching basic computer skills to seniors.",
    "Trying to visit every national park before I turn fifty.",
    "My garden produces far more tomatoes than my family can eat.",
    "I play bass in a band that has been rehearsing for a debut gig since last year.",
    "Long-distance cyclist with strong opinions about bicycle saddles.",
    "Reading my way through a list of classic novels one chapter at a time.",
    "I restore vintage radios and occasionally even get one to work again.",
    "Parent of two, owner of one cat, and keeper of far too many houseplants.",
    "Former teacher turned software tester, still grading everything I see.",
    "Learning Portuguese so I can finally talk with my grandmother in her language.",
];

fn generate_user(id: i64, next_element_id: &mut i64) -> Value {
    let mut rng = Lcg::seeded(id.unsigned_abs());
    let uuid = rng.uuid();
    // Spread creation over 2019-01-01 .. mid 2024, updates within a year after.
    let created_secs = 1_546_300_800 + i64::from(rng.below(173_000_000));
    let updated_secs = created_secs + i64::from(rng.below(31_536_000));
    let created = format_ts(created_secs, rng.below(1_000_000));
    let last_updated = format_ts(updated_secs, rng.below(1_000_000));
    let ts_between = |rng: &mut Lcg| {
        let span = u32::try_from(updated_secs - created_secs).unwrap_or(u32::MAX);
        format_ts(
            created_secs + i64::from(rng.below(span.max(1))),
            rng.below(1_000_000),
        )
    };

    let given = rng.pick(GIVEN_NAMES);
    let family = rng.pick(FAMILY_NAMES);
    let local = format!("{given}.{family}{id}")
        .to_ascii_lowercase()
        .replace('\'', "");
    let email = format!("{local}@example.com");
    let email_verified = if rng.chance(3, 4) {
        Value::from(format_ts(
            created_secs + i64::from(rng.below(86_400)),
            rng.below(1_000_000),
        ))
    } else {
        Value::Null
    };
    let middle = if rng.chance(2, 3) {
        Value::from(rng.pick(MIDDLE_NAMES))
    } else {
        Value::Null
    };
    // 1950-01-01 is 7305 days before the epoch; birthdays span ~55 years.
    let birthday =
        chrono::DateTime::from_timestamp((i64::from(rng.below(20_075)) - 7305) * 86_400, 0)
            .map(|d| d.format("%Y-%m-%d").to_string())
            .unwrap_or_default();
    let (city, state, zip_prefix) = CITIES
        .get(rng.below(CITIES.len() as u32) as usize)
        .copied()
        .unwrap_or(("Portland", "OR", "972"));
    let address2 = if rng.chance(1, 3) {
        Value::from(format!("Apt {}", 1 + rng.below(400)))
    } else {
        Value::Null
    };
    let mobile = format!("+1-555-{:03}-{:04}", rng.below(1000), rng.below(10_000));

    let profile_count = 1 + rng.below(3);
    let first_domain = rng.below(PROFILE_DOMAINS.len() as u32);
    let mut profiles = Vec::new();
    for i in 0..profile_count {
        let domain = PROFILE_DOMAINS
            .get(((first_domain + i) as usize) % PROFILE_DOMAINS.len())
            .copied()
            .unwrap_or("example.com");
        let verified = if rng.chance(1, 2) {
            Value::from(email.clone())
        } else {
            Value::Null
        };
        profiles.push(json!({
            "id": take_id(next_element_id),
            "domain": domain,
            "identifier": format!("https://{domain}/profile/{local}-{}", rng.below(1_000_000)),
            "displayName": format!("{given} {family}"),
            "verifiedEmail": verified,
        }));
    }
    let photo_count = 1 + rng.below(2);
    let photos: Vec<Value> = PHOTO_TYPES
        .iter()
        .take(photo_count as usize)
        .map(|kind| {
            json!({
                "id": take_id(next_element_id),
                "type": kind,
                "value": format!("https://photos.example.com/{uuid}/{kind}.jpg"),
            })
        })
        .collect();
    let status_count = rng.below(3);
    let mut statuses = Vec::new();
    for _ in 0..status_count {
        let status = rng.pick(STATUS_NAMES);
        statuses.push(json!({
            "id": take_id(next_element_id),
            "status": status,
            "statusCreated": ts_between(&mut rng),
        }));
    }

    let mut record = json!({
        "id": id,
        "uuid": uuid,
        "created": created,
        "lastUpdated": last_updated,
        "email": email,
        "emailVerified": email_verified,
        "givenName": given,
        "familyName": family,
        "middleName": middle,
        "displayName": format!("{given} {family}"),
        "birthday": birthday,
        "gender": rng.pick(GENDERS),
        "mobileNumber": mobile,
        "aboutMe": "",
        "primaryAddress": {
            "address1": format!("{} {}", 1 + rng.below(9899), rng.pick(STREETS)),
            "address2": address2,
            "city": city,
            "stateAbbreviation": state,
            "zip": format!("{zip_prefix}{:02}", rng.below(100)),
            "country": "US",
            "phone": format!("+1-555-{:03}-{:04}", rng.below(1000), rng.below(10_000)),
        },
        "consents": {
            "marketing": { "granted": rng.chance(1, 2), "updated": ts_between(&mut rng) },
            "analytics": { "granted": rng.chance(2, 3), "updated": ts_between(&mut rng) },
        },
        "profiles": profiles,
        "photos": photos,
        "statuses": statuses,
        "internal": {
            "riskScore": rng.below(100),
            "notes": rng.pick(INTERNAL_NOTES),
        },
    });

    let base_len = serde_json::to_string(&record).map(|s| s.len()).unwrap_or(0);
    let target = (RECORD_BYTES_MIN + rng.below(RECORD_BYTES_SPREAD)) as usize;
    let mut about = String::new();
    // The sentences need no JSON escaping, so byte length is serialised length.
    while base_len + about.len() < target {
        if !about.is_empty() {
            about.push(' ');
        }
        about.push_str(rng.pick(ABOUT_SENTENCES));
    }
    if let Some(slot) = record.get_mut("aboutMe") {
        *slot = Value::from(about);
    }
    record
}

fn take_id(next: &mut i64) -> i64 {
    let id = *next;
    *next += 1;
    id
}

// ---------------------------------------------------------------------------
// Store
// ---------------------------------------------------------------------------

/// The in-memory user records and the Capture endpoint logic over them.
pub struct Store {
    /// Ordered by id, which is also the default result order of `entity.find`.
    records: BTreeMap<i64, Value>,
    by_uuid: HashMap<String, i64>,
    next_id: i64,
    next_element_id: i64,
    rng: Lcg,
}

impl Store {
    /// Generates `records` users with ids `1..=records`; record `i` is the same
    /// whatever `records` is.
    pub fn generate(records: usize) -> Self {
        let mut store = Store {
            records: BTreeMap::new(),
            by_uuid: HashMap::with_capacity(records),
            next_id: 1,
            next_element_id: 1,
            rng: Lcg::seeded(0x5EED_0000_DE30_0001),
        };
        for _ in 0..records {
            let id = store.next_id;
            store.next_id += 1;
            let record = generate_user(id, &mut store.next_element_id);
            store.insert(id, record);
        }
        store
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    fn insert(&mut self, id: i64, record: Value) {
        if let Some(uuid) = record.get("uuid").and_then(Value::as_str) {
            self.by_uuid.insert(uuid.to_string(), id);
        }
        self.records.insert(id, record);
    }

    /// Serves one Capture call. Always returns a Capture envelope: either
    /// `stat: ok` with the endpoint's payload or a `stat: error` object.
    pub fn handle(&mut self, endpoint: &str, params: &Params) -> Value {
        let name = endpoint.trim_start_matches('/').trim_end_matches('/');
        let result = match name {
            "entity" => self.entity(params),
            "entity.find" => self.find(params),
            "entity.count" => self.count(params),
            "entity.create" => self.create(params),
            "entity.update" => self.update(params),
            "entity.delete" => self.delete(params),
            _ => Err(ApiError::new(
                200,
                "invalid_argument",
                format!(
                    "unknown endpoint /{name}; the demo upstream serves /entity, /entity.find, \
                     /entity.count, /entity.create, /entity.update and /entity.delete"
                ),
                None,
            )),
        };
        result.unwrap_or_else(|e| e.to_json())
    }

    fn select(&self, params: &Params) -> ApiResult<i64> {
        let id = params.get("id");
        let uuid = params.get("uuid");
        let key_attribute = params.get("key_attribute");
        let key_value = params.get("key_value");
        let mut given = Vec::new();
        if id.is_some() {
            given.push("id");
        }
        if uuid.is_some() {
            given.push("uuid");
        }
        if key_attribute.is_some() || key_value.is_some() {
            given.push("key_attribute");
        }
        if let [first, second, ..] = given.as_slice() {
            return Err(ApiError::duplicate(second, first));
        }

        if let Some(raw) = id {
            let id = raw
                .trim()
                .trim_matches('"')
                .parse::<i64>()
                .map_err(|_| ApiError::invalid("id", "id is not a valid id"))?;
            return if self.records.contains_key(&id) {
                Ok(id)
            } else {
                Err(ApiError::not_found(format!("record with id {id}")))
            };
        }
        if let Some(raw) = uuid {
            let uuid = raw.trim().trim_matches('"');
            return self
                .by_uuid
                .get(uuid)
                .copied()
                .ok_or_else(|| ApiError::not_found(format!("record with uuid {uuid}")));
        }
        let attr = key_attribute.ok_or_else(|| match key_value {
            Some(_) => ApiError::missing("key_attribute"),
            None => ApiError::missing("uuid"),
        })?;
        let raw_value = key_value.ok_or_else(|| ApiError::missing("key_value"))?;
        let path = match scalar_path(attr, true) {
            Ok(path) => path,
            Err(PathProblem::Unknown) => {
                return Err(ApiError::unknown_attribute(attr, "key_attribute"))
            }
            Err(PathProblem::Invalid(reason)) => {
                return Err(ApiError::invalid("key_attribute", reason))
            }
        };
        let wanted: Value = serde_json::from_str(raw_value).map_err(|_| {
            ApiError::invalid(
                "key_value",
                "the JSON is not syntactically valid (strings must be quoted)",
            )
        })?;
        // A linear scan: key attributes are arbitrary paths and an index per
        // path is not worth it at demo sizes.
        self.records
            .iter()
            .find(|(_, rec)| any_value(rec, &path, &mut |v| *v == wanted))
            .map(|(id, _)| *id)
            .ok_or_else(|| ApiError::not_found(format!("record with {attr} = {raw_value}")))
    }

    fn record(&self, id: i64) -> ApiResult<&Value> {
        self.records
            .get(&id)
            .ok_or_else(|| ApiError::not_found(format!("record with id {id}")))
    }

    fn entity(&self, params: &Params) -> ApiResult<Value> {
        check_type_name(params)?;
        let id = self.select(params)?;
        let record = self.record(id)?;
        let result = if let Some(raw) = params.get("attribute_name") {
            let (segs, _) = attribute_path(raw, "attribute_name")?;
            get_at(record, &segs)?.clone()
        } else if let Some(paths) = parse_projection(params)? {
            project(record, &paths)
        } else {
            record.clone()
        };
        Ok(json!({ "result": result, "stat": "ok" }))
    }

    fn matching(&self, params: &Params) -> ApiResult<Vec<&Value>> {
        let filter = parse_filter_param(params)?;
        Ok(self
            .records
            .values()
            .filter(|r| match &filter {
                Some(f) => f.matches(r),
                None => true,
            })
            .collect())
    }

    fn find(&self, params: &Params) -> ApiResult<Value> {
        check_type_name(params)?;
        let sort = parse_sort(params)?;
        let projection = parse_projection(params)?;
        let max_results = parse_positive_param(params, "max_results")?
            .unwrap_or(DEFAULT_MAX_RESULTS)
            .min(MAX_RESULTS_CAP);
        let first_result = parse_positive_param(params, "first_result")?.unwrap_or(1);
        let show_total = parse_bool_param(params, "show_total_count")?;
        let mut matched = self.matching(params)?;
        if !sort.is_empty() {
            // Keys are looked up once per record rather than once per comparison.
            let mut keyed: Vec<(Vec<&Value>, &Value)> = matched
                .into_iter()
                .map(|r| (sort.iter().map(|(p, _)| get_plain(r, p)).collect(), r))
                .collect();
            // Stable, so ties keep id order.
            keyed.sort_by(|(a, _), (b, _)| {
                a.iter()
                    .zip(b.iter())
                    .zip(sort.iter())
                    .map(|((x, y), (_, desc))| {
                        let o = cmp_values(x, y);
                        if *desc {
                            o.reverse()
                        } else {
                            o
                        }
                    })
                    .find(|o| *o != Ordering::Equal)
                    .unwrap_or(Ordering::Equal)
            });
            matched = keyed.into_iter().map(|(_, r)| r).collect();
        }
        let total = matched.len();
        let results: Vec<Value> = matched
            .into_iter()
            .skip(first_result - 1)
            .take(max_results)
            .map(|r| match &projection {
                Some(paths) => project(r, paths),
                None => r.clone(),
            })
            .collect();
        let mut out = Map::new();
        out.insert("result_count".into(), results.len().into());
        out.insert("results".into(), Value::Array(results));
        if show_total {
            out.insert("total_count".into(), total.into());
        }
        out.insert("stat".into(), "ok".into());
        Ok(Value::Object(out))
    }

    fn count(&self, params: &Params) -> ApiResult<Value> {
        check_type_name(params)?;
        let total = self.matching(params)?.len();
        Ok(json!({ "total_count": total, "stat": "ok" }))
    }

    fn create(&mut self, params: &Params) -> ApiResult<Value> {
        check_type_name(params)?;
        let include_record = parse_bool_param(params, "include_record")?;
        let attributes = parse_json_param(params, "attributes")?
            .ok_or_else(|| ApiError::missing("attributes"))?;
        let Value::Object(given) = &attributes else {
            return Err(ApiError::invalid("attributes", "expected a JSON object"));
        };
        reject_reserved(given, true)?;
        let mut ctx = WriteCtx {
            next_element_id: self.next_element_id,
            creating: true,
        };
        let mut map = default_object(USER);
        apply_fields(USER, &mut map, given, "", &mut ctx)?;

        let id = self.next_id;
        let mut uuid = self.rng.uuid();
        while self.by_uuid.contains_key(&uuid) {
            uuid = self.rng.uuid();
        }
        let now = now_ts();
        map.insert("id".into(), id.into());
        map.insert("uuid".into(), uuid.clone().into());
        map.insert("created".into(), now.clone().into());
        map.insert("lastUpdated".into(), now.into());
        let record = Value::Object(map);

        self.next_id += 1;
        self.next_element_id = ctx.next_element_id;
        let mut out = Map::new();
        out.insert("id".into(), id.into());
        out.insert("uuid".into(), uuid.into());
        if include_record {
            out.insert("result".into(), record.clone());
        }
        out.insert("stat".into(), "ok".into());
        self.insert(id, record);
        Ok(Value::Object(out))
    }

    fn update(&mut self, params: &Params) -> ApiResult<Value> {
        check_type_name(params)?;
        let include_record = parse_bool_param(params, "include_record")?;
        let id = self.select(params)?;
        // Work on a copy so a failure halfway through leaves the record untouched.
        let mut record = self.record(id)?.clone();
        let mut ctx = WriteCtx {
            next_element_id: self.next_element_id,
            creating: false,
        };
        if let Some(attributes) = parse_json_param(params, "attributes")? {
            let Value::Object(given) = &attributes else {
                return Err(ApiError::invalid("attributes", "expected a JSON object"));
            };
            reject_reserved(given, false)?;
            if let Value::Object(map) = &mut record {
                apply_fields(USER, map, given, "", &mut ctx)?;
            }
        } else if let Some(raw_name) = params.get("attribute_name") {
            let value =
                parse_json_param(params, "value")?.ok_or_else(|| ApiError::missing("value"))?;
            let (segs, kind) = attribute_path(raw_name, "attribute_name")?;
            reject_reserved_path(&segs)?;
            let path = path_text(&segs);
            let target = get_at_mut(&mut record, &segs)?;
            match (segs.last().and_then(|s| s.elem), kind) {
                (Some(elem), Kind::Plural(fields)) => {
                    let Value::Object(given) = &value else {
                        return Err(ApiError::json_type(&path, "an object", "value"));
                    };
                    if given.get("id").is_some_and(|v| v.as_i64() != Some(elem)) {
                        return Err(ApiError::invalid(
                            "value",
                            "element id does not match attribute_name",
                        ));
                    }
                    *target = build_element(fields, elem, given, &path, &mut ctx)?;
                }
                _ => apply(kind, target, &value, &path, &mut ctx)?,
            }
        } else {
            return Err(ApiError::missing("attributes"));
        }
        touch(&mut record);
        self.next_element_id = ctx.next_element_id;
        let out = if include_record {
            json!({ "result": record.clone(), "stat": "ok" })
        } else {
            json!({ "stat": "ok" })
        };
        self.records.insert(id, record);
        Ok(out)
    }

    fn delete(&mut self, params: &Params) -> ApiResult<Value> {
        check_type_name(params)?;
        let id = self.select(params)?;
        let Some(raw_name) = params.get("attribute_name") else {
            if let Some(record) = self.records.remove(&id) {
                if let Some(uuid) = record.get("uuid").and_then(Value::as_str) {
                    self.by_uuid.remove(uuid);
                }
            }
            return Ok(json!({ "stat": "ok" }));
        };
        let (segs, kind) = attribute_path(raw_name, "attribute_name")?;
        reject_reserved_path(&segs)?;
        let mut record = self.record(id)?.clone();
        match segs.split_last() {
            Some((
                Seg {
                    name,
                    elem: Some(elem),
                },
                parents,
            )) => {
                let elem = *elem;
                let mut container_path = parents.to_vec();
                container_path.push(Seg {
                    name: name.clone(),
                    elem: None,
                });
                let container = get_at_mut(&mut record, &container_path)?;
                let items = container.as_array_mut().ok_or_else(|| {
                    ApiError::invalid("attribute_name", format!("{name} is not a plural"))
                })?;
                let pos = items
                    .iter()
                    .position(|it| element_id(it) == Some(elem))
                    .ok_or_else(|| {
                        ApiError::not_found(format!("plural element {}", path_text(&segs)))
                    })?;
                items.remove(pos);
            }
            _ => *get_at_mut(&mut record, &segs)? = default_value(kind),
        }
        touch(&mut record);
        self.records.insert(id, record);
        Ok(json!({ "stat": "ok" }))
    }
}

fn reject_reserved_path(segs: &[Seg]) -> ApiResult<()> {
    match segs.first() {
        Some(first) if RESERVED.contains(&first.name.as_str()) => {
            Err(ApiError::reserved(&first.name, "attribute_name"))
        }
        _ => Ok(()),
    }
}

fn touch(record: &mut Value) {
    if let Some(slot) = record.get_mut("lastUpdated") {
        *slot = Value::from(now_ts());
    }
}

// ---------------------------------------------------------------------------
// HTTP adapter
// ---------------------------------------------------------------------------

/// The sample user-record API as a Pingora [`ServeHttp`] application.
pub struct DemoUpstream {
    store: Mutex<Store>,
    /// Serialised answers to read calls, dropped on any write: the load test
    /// should measure the gateway, not this sample API's JSON encoding.
    read_cache: Mutex<std::collections::HashMap<String, Vec<u8>>>,
}

const READ_CACHE_ENTRIES: usize = 4096;

impl DemoUpstream {
    pub fn new(records: usize) -> Self {
        DemoUpstream {
            store: Mutex::new(Store::generate(records)),
            read_cache: Mutex::new(std::collections::HashMap::new()),
        }
    }

    fn cached(&self, path: &str, query: &str, body: &[u8], params: &Params) -> Vec<u8> {
        let read = matches!(
            path.trim_matches('/'),
            "entity" | "entity.find" | "entity.count"
        );
        let mut cache = self
            .read_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !read {
            cache.clear();
            drop(cache);
            return encode(&self.handle(path, params));
        }
        let key = format!("{path}?{query}\n{}", String::from_utf8_lossy(body));
        if let Some(hit) = cache.get(&key) {
            return hit.clone();
        }
        drop(cache);
        let bytes = encode(&self.handle(path, params));
        let mut cache = self
            .read_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() >= READ_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(key, bytes.clone());
        bytes
    }

    /// Runs one call against the store; exposed for tests that skip HTTP.
    pub fn handle(&self, endpoint: &str, params: &Params) -> Value {
        // A panic elsewhere cannot leave a half-applied write (updates are made
        // on a copy), so a poisoned store is still consistent.
        let mut store = self
            .store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        store.handle(endpoint, params)
    }
}

fn encode(body: &Value) -> Vec<u8> {
    serde_json::to_vec(body).unwrap_or_else(|_| {
        br#"{"stat":"error","code":500,"error":"unexpected_error","error_description":"response serialisation failed"}"#
            .to_vec()
    })
}

fn json_response(body: &Value) -> http::Response<Vec<u8>> {
    bytes_response(encode(body))
}

fn bytes_response(bytes: Vec<u8>) -> http::Response<Vec<u8>> {
    let len = bytes.len();
    let mut resp = http::Response::new(bytes);
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    // Explicit length keeps the HTTP/1.1 connection reusable for the gateway's pool.
    headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

fn is_form(content_type: Option<&HeaderValue>) -> bool {
    match content_type.and_then(|v| v.to_str().ok()) {
        None => true,
        Some(ct) => ct.split(';').next().is_some_and(|mime| {
            mime.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        }),
    }
}

#[async_trait]
impl ServeHttp for DemoUpstream {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let mut params = Params::new();
        let header = session.req_header();
        let path = header.uri.path().to_string();
        let query = header.uri.query().unwrap_or("").to_string();
        if let Some(query) = header.uri.query() {
            params.extend_urlencoded(query.as_bytes());
        }
        let form = is_form(session.get_header(CONTENT_TYPE));

        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_BODY_BYTES {
                        return json_response(
                            &ApiError::invalid("body", "request body too large").to_json(),
                        );
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "demo upstream failed to read request body");
                    return json_response(
                        &ApiError::new(
                            500,
                            "unexpected_error",
                            "failed to read the request body".to_string(),
                            None,
                        )
                        .to_json(),
                    );
                }
            }
        }
        if !body.is_empty() {
            if !form {
                return json_response(
                    &ApiError::new(
                        200,
                        "invalid_argument",
                        "request body must be application/x-www-form-urlencoded".to_string(),
                        None,
                    )
                    .to_json(),
                );
            }
            params.extend_urlencoded(&body);
        }
        bytes_response(self.cached(&path, &query, &body, &params))
    }
}

/// The Pingora service to add to a `Server`: the demo API listening on `addr`
/// (e.g. `"127.0.0.1:8090"`) with `records` generated users.
pub fn demo_upstream_service(addr: &str, records: usize) -> Service<HttpServer<DemoUpstream>> {
    let mut service = Service::new(
        "recordgate demo upstream".to_string(),
        HttpServer::new_app(DemoUpstream::new(records)),
    );
    service.add_tcp(addr);
    // One thread is plenty for an in-memory store behind a single mutex and
    // leaves the remaining cores to the gateway under load.
    service.threads = Some(1);
    service
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        pairs.iter().map(|(k, v)| (*k, *v)).collect()
    }

    fn call(store: &mut Store, endpoint: &str, pairs: &[(&str, &str)]) -> Value {
        let mut all = vec![("type_name", "user")];
        all.extend_from_slice(pairs);
        store.handle(endpoint, &params(&all))
    }

    fn assert_ok(v: &Value) {
        assert_eq!(v["stat"], "ok", "{v}");
    }

    fn assert_err(v: &Value, code: u64) {
        assert_eq!(v["stat"], "error", "{v}");
        assert_eq!(v["code"], code, "{v}");
    }

    fn same_shape(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                x.keys().eq(y.keys()) && x.iter().all(|(k, v)| same_shape(v, &y[k.as_str()]))
            }
            (Value::Array(_), Value::Array(_)) => true,
            (Value::Object(_), _) | (_, Value::Object(_)) => false,
            (Value::Array(_), _) | (_, Value::Array(_)) => false,
            _ => true,
        }
    }

    #[test]
    fn generates_deterministic_records_of_about_2kb() {
        let a = Store::generate(50);
        let b = Store::generate(80);
        assert_eq!(a.len(), 50);
        for id in 1..=50 {
            assert_eq!(a.records[&id], b.records[&id], "record {id} depends on N");
        }
        let template = Value::Object(default_object(USER));
        for (id, rec) in &a.records {
            assert_eq!(rec["id"], *id);
            let uuid = rec["uuid"].as_str().unwrap_or_default();
            let groups: Vec<usize> = uuid.split('-').map(str::len).collect();
            assert_eq!(groups, [8, 4, 4, 4, 12], "{uuid}");
            assert!(uuid.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
            let len = serde_json::to_string(rec).unwrap_or_default().len();
            assert!((1800..2400).contains(&len), "record {id} is {len} bytes");
            assert!(
                same_shape(rec, &template),
                "record {id} shape differs: {rec}"
            );
            let created = rec["created"].as_str().unwrap_or_default();
            assert_eq!(
                created.len(),
                "2024-03-05 10:11:12.123456 +0000".len(),
                "{created}"
            );
            assert!(created.ends_with(" +0000"));
            let profiles = rec["profiles"].as_array().map_or(0, Vec::len);
            let photos = rec["photos"].as_array().map_or(0, Vec::len);
            let statuses = rec["statuses"].as_array().map_or(0, Vec::len);
            assert!((1..=3).contains(&profiles) && (1..=2).contains(&photos) && statuses <= 2);
            assert!(rec["internal"]["riskScore"].is_u64());
            assert!(rec["consents"]["marketing"]["granted"].is_boolean());
        }
        assert_eq!(a.by_uuid.len(), 50);
    }

    #[test]
    fn looks_up_by_id_uuid_and_key() {
        let mut s = Store::generate(20);
        let rec = s.records[&7].clone();
        let uuid = rec["uuid"].as_str().unwrap_or_default().to_string();
        let email = format!("\"{}\"", rec["email"].as_str().unwrap_or_default());

        let by_id = call(&mut s, "/entity", &[("id", "7")]);
        assert_eq!(by_id, json!({ "result": rec, "stat": "ok" }));
        let by_uuid = call(&mut s, "/entity", &[("uuid", &uuid)]);
        assert_eq!(by_uuid["result"]["id"], 7);
        let by_key = call(
            &mut s,
            "entity",
            &[("key_attribute", "email"), ("key_value", &email)],
        );
        assert_eq!(by_key["result"]["id"], 7);
        let identifier = rec["profiles"][0]["identifier"].to_string();
        let by_plural_key = call(
            &mut s,
            "/entity",
            &[
                ("key_attribute", "profiles.identifier"),
                ("key_value", &identifier),
            ],
        );
        assert_eq!(by_plural_key["result"]["id"], 7);

        assert_err(&call(&mut s, "/entity", &[("id", "999")]), 310);
        assert_err(&call(&mut s, "/entity", &[("uuid", "nope")]), 310);
        assert_err(
            &call(&mut s, "/entity", &[("id", "1"), ("uuid", &uuid)]),
            201,
        );
        assert_err(&call(&mut s, "/entity", &[]), 100);
        assert_err(&call(&mut s, "/entity", &[("key_attribute", "email")]), 100);
        let unquoted = rec["email"].as_str().unwrap_or_default().to_string();
        let bad = call(
            &mut s,
            "/entity",
            &[("key_attribute", "email"), ("key_value", &unquoted)],
        );
        assert_err(&bad, 200);
        assert_eq!(bad["argument_name"], "key_value");
        assert_err(&s.handle("/entity", &params(&[("id", "1")])), 100);
        let wrong_type = s.handle("/entity", &params(&[("type_name", "admin"), ("id", "1")]));
        assert_err(&wrong_type, 222);
    }

    #[test]
    fn reads_attribute_name_and_projection() {
        let mut s = Store::generate(5);
        let rec = s.records[&2].clone();
        let city = call(
            &mut s,
            "/entity",
            &[("id", "2"), ("attribute_name", "/primaryAddress/city")],
        );
        assert_eq!(
            city,
            json!({ "result": rec["primaryAddress"]["city"], "stat": "ok" })
        );
        let photo_id = rec["photos"][0]["id"].as_i64().unwrap_or_default();
        let name = format!("photos#{photo_id}");
        let photo = call(&mut s, "/entity", &[("id", "2"), ("attribute_name", &name)]);
        assert_eq!(photo["result"], rec["photos"][0]);
        let name = format!("photos#{photo_id}.value");
        let value = call(&mut s, "/entity", &[("id", "2"), ("attribute_name", &name)]);
        assert_eq!(value["result"], rec["photos"][0]["value"]);
        assert_err(
            &call(
                &mut s,
                "/entity",
                &[("id", "2"), ("attribute_name", "photos#999999")],
            ),
            310,
        );
        assert_err(
            &call(
                &mut s,
                "/entity",
                &[("id", "2"), ("attribute_name", "nickname")],
            ),
            223,
        );

        let projected = call(
            &mut s,
            "/entity",
            &[
                ("id", "2"),
                (
                    "attributes",
                    r#"["givenName","primaryAddress.city","photos.value"]"#,
                ),
            ],
        );
        let result = &projected["result"];
        let keys: Vec<&str> = result
            .as_object()
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default();
        assert_eq!(
            keys,
            [
                "id",
                "uuid",
                "created",
                "lastUpdated",
                "givenName",
                "primaryAddress",
                "photos"
            ]
        );
        assert_eq!(
            result["primaryAddress"],
            json!({ "city": rec["primaryAddress"]["city"] })
        );
        assert_eq!(
            result["photos"][0],
            json!({ "id": photo_id, "value": rec["photos"][0]["value"] })
        );
        assert_err(
            &call(
                &mut s,
                "/entity",
                &[("id", "2"), ("attributes", "[givenName")],
            ),
            200,
        );
        assert_err(
            &call(
                &mut s,
                "/entity",
                &[("id", "2"), ("attributes", r#"["internal.secret"]"#)],
            ),
            223,
        );
    }

    #[test]
    fn finds_with_filter_sort_and_paging() {
        let mut s = Store::generate(200);
        let all = call(&mut s, "/entity.find", &[("max_results", "1000")]);
        assert_eq!(all["result_count"], 200);
        assert_eq!(all["results"][0]["id"], 1);

        let f = call(
            &mut s,
            "/entity.find",
            &[
                (
                    "filter",
                    "internal.riskScore >= 50 and primaryAddress.stateAbbreviation = 'OR'",
                ),
                ("show_total_count", "true"),
            ],
        );
        assert_ok(&f);
        let expected: Vec<i64> = s
            .records
            .values()
            .filter(|r| {
                r["internal"]["riskScore"].as_u64().unwrap_or(0) >= 50
                    && r["primaryAddress"]["stateAbbreviation"] == "OR"
            })
            .filter_map(|r| r["id"].as_i64())
            .collect();
        let got: Vec<i64> = f["results"]
            .as_array()
            .map(|a| a.iter().filter_map(|r| r["id"].as_i64()).collect())
            .unwrap_or_default();
        assert!(!expected.is_empty());
        assert_eq!(got, expected);
        assert_eq!(f["total_count"], expected.len());
        assert_eq!(f["result_count"], expected.len());

        let nulls = call(
            &mut s,
            "/entity.count",
            &[("filter", "emailVerified is null")],
        );
        let not_nulls = call(
            &mut s,
            "/entity.count",
            &[("filter", "emailVerified is not null")],
        );
        let n = nulls["total_count"].as_u64().unwrap_or(0);
        let m = not_nulls["total_count"].as_u64().unwrap_or(0);
        assert!(n > 0 && m > 0);
        assert_eq!(n + m, 200);
        let plural = call(
            &mut s,
            "/entity.count",
            &[("filter", "profiles.domain = 'google.com' or id < 3")],
        );
        let expected_plural = s
            .records
            .values()
            .filter(|r| {
                r["id"].as_i64().unwrap_or(0) < 3
                    || r["profiles"]
                        .as_array()
                        .is_some_and(|p| p.iter().any(|e| e["domain"] == "google.com"))
            })
            .count();
        assert_eq!(plural["total_count"], expected_plural);
        let bools = call(
            &mut s,
            "/entity.count",
            &[("filter", "consents.marketing.granted = true")],
        );
        assert!(bools["total_count"].as_u64().unwrap_or(0) > 0);

        let sorted = call(
            &mut s,
            "/entity.find",
            &[
                ("sort_on", r#"["-lastUpdated"]"#),
                ("max_results", "10"),
                ("first_result", "11"),
                ("attributes", r#"["email"]"#),
                ("show_total_count", "true"),
            ],
        );
        assert_eq!(sorted["result_count"], 10);
        assert_eq!(sorted["total_count"], 200);
        let mut stamps: Vec<&str> = s
            .records
            .values()
            .filter_map(|r| r["lastUpdated"].as_str())
            .collect();
        stamps.sort_unstable_by(|a, b| b.cmp(a));
        let page: Vec<&str> = sorted["results"]
            .as_array()
            .map(|a| a.iter().filter_map(|r| r["lastUpdated"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(page, stamps[10..20]);
        assert!(sorted["results"][0].get("givenName").is_none());
        assert!(sorted["results"][0]["email"].is_string());

        let past_end = call(&mut s, "/entity.find", &[("first_result", "500")]);
        assert_eq!(past_end["result_count"], 0);
        let capped = call(&mut s, "/entity.find", &[("max_results", "5000")]);
        assert_eq!(capped["result_count"], 200);

        for bad in [
            "nickname = 'x'",
            "email contains 'x'",
            "email = ",
            "(id = 1)",
            "email = 'x' and",
            "not email is null",
            "email = 'unterminated",
        ] {
            let r = call(&mut s, "/entity.find", &[("filter", bad)]);
            assert_err(&r, 200);
            assert_eq!(r["argument_name"], "filter", "{bad}");
            let d = r["error_description"].as_str().unwrap_or_default();
            assert!(
                d.starts_with("filter was not valid for the following reason: "),
                "{d}"
            );
        }
        assert_err(&call(&mut s, "/entity.find", &[("sort_on", "-id")]), 200);
        assert_err(&call(&mut s, "/entity.find", &[("first_result", "0")]), 200);
    }

    #[test]
    fn tokenizer_handles_operators_and_literals() {
        let f = parse_filter("a.b <> 'it''s' AND c<=-1.5 and d != 2 or e is NOT null");
        assert!(f.is_err(), "a.b is unknown");
        let f = parse_filter(
            "givenName <> 'it''s' AND internal.riskScore<=-1.5 and id != 2 or email is NOT null",
        );
        assert_eq!(
            f,
            Ok(Filter {
                any_of: vec![
                    vec![
                        Cond::Cmp(vec!["givenName".into()], CmpOp::Ne, Lit::Str("it's".into())),
                        Cond::Cmp(
                            vec!["internal".into(), "riskScore".into()],
                            CmpOp::Le,
                            Lit::Num(-1.5)
                        ),
                        Cond::Cmp(vec!["id".into()], CmpOp::Ne, Lit::Num(2.0)),
                    ],
                    vec![Cond::NotNull(vec!["email".into()])],
                ]
            })
        );
        assert!(parse_filter("/primaryAddress/city > 'M'").is_ok());
        assert!(parse_filter("primaryAddress = 'x'").is_err());
    }

    #[test]
    fn creates_records() {
        let mut s = Store::generate(3);
        let r = call(
            &mut s,
            "/entity.create",
            &[
                (
                    "attributes",
                    r#"{"givenName":"Matt","email":"matt@example.com","photos":[{"type":"original","value":"x"}],"primaryAddress":{"city":"Lyon"}}"#,
                ),
                ("include_record", "true"),
            ],
        );
        assert_ok(&r);
        assert_eq!(r["id"], 4);
        let uuid = r["uuid"].as_str().unwrap_or_default().to_string();
        assert_eq!(r["result"]["uuid"], uuid.as_str());
        assert_eq!(r["result"]["primaryAddress"]["city"], "Lyon");
        assert!(r["result"]["primaryAddress"]["zip"].is_null());
        assert!(r["result"]["photos"][0]["id"].is_i64());
        assert_eq!(r["result"]["statuses"], json!([]));
        assert!(same_shape(
            &r["result"],
            &Value::Object(default_object(USER))
        ));
        let got = call(&mut s, "/entity", &[("uuid", &uuid)]);
        assert_eq!(got["result"]["givenName"], "Matt");
        let by_key = call(
            &mut s,
            "/entity",
            &[
                ("key_attribute", "email"),
                ("key_value", "\"matt@example.com\""),
            ],
        );
        assert_eq!(by_key["result"]["id"], 4);
        let plain = call(
            &mut s,
            "/entity.create",
            &[("attributes", r#"{"givenName":"Ana"}"#)],
        );
        assert_eq!(plain["id"], 5);
        assert!(plain.get("result").is_none());

        assert_err(&call(&mut s, "/entity.create", &[]), 100);
        assert_err(
            &call(&mut s, "/entity.create", &[("attributes", "{nope")]),
            200,
        );
        assert_err(
            &call(&mut s, "/entity.create", &[("attributes", r#"["a"]"#)]),
            200,
        );
        assert_err(
            &call(&mut s, "/entity.create", &[("attributes", r#"{"id":9}"#)]),
            320,
        );
        assert_err(
            &call(
                &mut s,
                "/entity.create",
                &[("attributes", r#"{"uuid":"x"}"#)],
            ),
            234,
        );
        assert_err(
            &call(
                &mut s,
                "/entity.create",
                &[("attributes", r#"{"photos":[{"id":1}]}"#)],
            ),
            320,
        );
        assert_err(
            &call(
                &mut s,
                "/entity.create",
                &[("attributes", r#"{"nickname":"x"}"#)],
            ),
            223,
        );
        assert_err(
            &call(
                &mut s,
                "/entity.create",
                &[("attributes", r#"{"primaryAddress":"x"}"#)],
            ),
            341,
        );
        assert_eq!(s.len(), 5, "failed creates must not add records");
        assert_eq!(call(&mut s, "/entity.count", &[])["total_count"], 5);
    }

    #[test]
    fn update_merges_objects_and_plurals() {
        let mut s = Store::generate(3);
        let before = s.records[&1].clone();
        let photo_id = before["photos"][0]["id"].as_i64().unwrap_or_default();
        let photos_before = before["photos"].as_array().map_or(0, Vec::len);
        let attrs = format!(
            r#"{{"givenName":"Matt","primaryAddress":{{"city":"Lyon"}},"photos":[{{"id":{photo_id},"value":"new"}},{{"type":"small","value":"appended"}}]}}"#
        );
        let r = call(
            &mut s,
            "/entity.update",
            &[
                ("id", "1"),
                ("attributes", &attrs),
                ("include_record", "true"),
            ],
        );
        assert_ok(&r);
        let after = &s.records[&1];
        assert_eq!(r["result"], *after);
        assert_eq!(after["givenName"], "Matt");
        assert_eq!(after["familyName"], before["familyName"]);
        assert_eq!(after["primaryAddress"]["city"], "Lyon");
        assert_eq!(
            after["primaryAddress"]["zip"],
            before["primaryAddress"]["zip"]
        );
        let photos = after["photos"].as_array().cloned().unwrap_or_default();
        assert_eq!(photos.len(), photos_before + 1);
        assert_eq!(
            photos[0],
            json!({ "id": photo_id, "type": null, "value": "new" })
        );
        let appended = photos.last().cloned().unwrap_or_default();
        assert_eq!(appended["value"], "appended");
        let new_id = appended["id"].as_i64().unwrap_or_default();
        assert!(new_id > photo_id && new_id >= s.next_element_id - 1);
        assert_ne!(after["lastUpdated"], before["lastUpdated"]);

        let r = call(
            &mut s,
            "/entity.update",
            &[
                ("id", "1"),
                ("attribute_name", "consents/marketing/granted"),
                ("value", "false"),
            ],
        );
        assert_ok(&r);
        assert_eq!(s.records[&1]["consents"]["marketing"]["granted"], false);
        let name = format!("photos#{new_id}");
        let r = call(
            &mut s,
            "/entity.update",
            &[
                ("id", "1"),
                ("attribute_name", &name),
                ("value", r#"{"type":"large"}"#),
            ],
        );
        assert_ok(&r);
        assert_eq!(
            s.records[&1]["photos"]
                .as_array()
                .and_then(|p| p.last())
                .cloned()
                .unwrap_or_default(),
            json!({ "id": new_id, "type": "large", "value": null })
        );

        let snapshot = s.records[&1].clone();
        assert_err(
            &call(
                &mut s,
                "/entity.update",
                &[
                    ("id", "1"),
                    (
                        "attributes",
                        r#"{"givenName":"X","photos":[{"id":999999,"value":"x"}]}"#,
                    ),
                ],
            ),
            310,
        );
        assert_err(
            &call(
                &mut s,
                "/entity.update",
                &[("id", "1"), ("attributes", r#"{"lastUpdated":"x"}"#)],
            ),
            234,
        );
        assert_err(
            &call(
                &mut s,
                "/entity.update",
                &[("id", "1"), ("attributes", r#"{"internal":{"secret":1}}"#)],
            ),
            223,
        );
        assert_err(
            &call(
                &mut s,
                "/entity.update",
                &[("id", "1"), ("attribute_name", "email")],
            ),
            100,
        );
        assert_err(
            &call(
                &mut s,
                "/entity.update",
                &[("id", "1"), ("attribute_name", "email"), ("value", "bare")],
            ),
            200,
        );
        assert_err(
            &call(
                &mut s,
                "/entity.update",
                &[("id", "1"), ("attribute_name", "uuid"), ("value", "\"x\"")],
            ),
            234,
        );
        assert_err(&call(&mut s, "/entity.update", &[("id", "1")]), 100);
        assert_eq!(
            s.records[&1], snapshot,
            "failed updates must leave the record untouched"
        );
    }

    #[test]
    fn deletes_plural_elements_attributes_and_records() {
        let mut s = Store::generate(3);
        let rec = s.records[&2].clone();
        let profiles: Vec<Value> = rec["profiles"].as_array().cloned().unwrap_or_default();
        let victim = profiles[0]["id"].as_i64().unwrap_or_default();
        let name = format!("/profiles#{victim}");
        assert_ok(&call(
            &mut s,
            "/entity.delete",
            &[("id", "2"), ("attribute_name", &name)],
        ));
        let left: Vec<Value> = s.records[&2]["profiles"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(left, profiles[1..]);
        assert_err(
            &call(
                &mut s,
                "/entity.delete",
                &[("id", "2"), ("attribute_name", &name)],
            ),
            310,
        );

        assert_ok(&call(
            &mut s,
            "/entity.delete",
            &[("id", "2"), ("attribute_name", "primaryAddress")],
        ));
        assert_eq!(
            s.records[&2]["primaryAddress"],
            Value::Object(default_object(PRIMARY_ADDRESS))
        );
        assert_ok(&call(
            &mut s,
            "/entity.delete",
            &[("id", "2"), ("attribute_name", "aboutMe")],
        ));
        assert!(s.records[&2]["aboutMe"].is_null());
        assert_err(
            &call(
                &mut s,
                "/entity.delete",
                &[("id", "2"), ("attribute_name", "id")],
            ),
            234,
        );

        let uuid = rec["uuid"].as_str().unwrap_or_default().to_string();
        assert_ok(&call(&mut s, "/entity.delete", &[("uuid", &uuid)]));
        assert_err(&call(&mut s, "/entity", &[("id", "2")]), 310);
        assert_err(&call(&mut s, "/entity", &[("uuid", &uuid)]), 310);
        assert_eq!(call(&mut s, "/entity.count", &[])["total_count"], 2);
    }

    #[test]
    fn unknown_endpoints_and_envelopes() {
        let mut s = Store::generate(1);
        let r = s.handle("/entity.replace", &params(&[("type_name", "user")]));
        assert_err(&r, 200);
        assert_eq!(r["error"], "invalid_argument");
        let keys: Vec<&str> = r
            .as_object()
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default();
        assert_eq!(keys, ["stat", "code", "error", "error_description"]);
        let missing = s.handle("/entity", &params(&[]));
        assert_eq!(
            missing,
            json!({"stat":"error","code":100,"error":"missing_argument","error_description":"missing required argument: type_name","argument_name":"type_name"})
        );
    }

    #[test]
    fn params_merge_query_then_body_and_ignore_empty_values() {
        let mut p = Params::new();
        p.extend_urlencoded(b"type_name=user&id=1&filter=");
        p.extend_urlencoded(b"id=2&key_value=%22a%40b.c%22");
        assert_eq!(p.get("id"), Some("2"));
        assert_eq!(p.get("type_name"), Some("user"));
        assert_eq!(p.get("key_value"), Some("\"a@b.c\""));
        assert_eq!(p.get("filter"), None);
        assert!(is_form(None));
        assert!(is_form(Some(&HeaderValue::from_static(
            "application/x-www-form-urlencoded; charset=utf-8"
        ))));
        assert!(!is_form(Some(&HeaderValue::from_static(
            "application/json"
        ))));
    }

    #[test]
    fn demo_upstream_handles_through_mutex() {
        let d = DemoUpstream::new(4);
        let r = d.handle("/entity.count", &params(&[("type_name", "user")]));
        assert_eq!(r, json!({ "total_count": 4, "stat": "ok" }));
        let resp = json_response(&r);
        assert_eq!(resp.status(), http::StatusCode::OK);
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(
            resp.headers()[CONTENT_LENGTH],
            resp.body().len().to_string().as_str()
        );
    }
}
