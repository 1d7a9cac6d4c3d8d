//! Routes as configured: which paths are forwarded, whether they read or
//! write, and where their records sit in requests and responses. The
//! decision compiles them into the route table ([`crate::decide::routes`]).

use serde::Deserialize;

use crate::params::UnknownParams;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Read,
    Write,
}

/// Where the records to be write-filtered sit in a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestRecords {
    /// No record in the request.
    #[default]
    None,
    /// Form field `attributes` holds a JSON object.
    Attributes,
    /// `attributes` (JSON object), or `value` relative to `attribute_name`.
    AttributesOrValue,
    /// Form field `all_attributes` holds a JSON array of record objects.
    AllAttributes,
    /// The whole `application/json` body is the record.
    JsonBody,
}

/// Where the records to be read-filtered sit in a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseRecords {
    /// No attribute values in the response (counts, ids, `stat`).
    #[default]
    None,
    /// `result` is a record, or the value at `attribute_name` when given.
    Result,
    /// Each element of `results` is a record.
    Results,
    /// The whole body is one record.
    JsonBody,
}

/// A route as written in settings (`routes:` overrides the built-in table).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteDef {
    pub path: String,
    pub access: Access,
    /// Any one of these features grants the route; defaults by `access`.
    #[serde(default)]
    pub features: Option<Vec<String>>,
    #[serde(default)]
    pub request_records: RequestRecords,
    #[serde(default)]
    pub response_records: ResponseRecords,
    /// The parameter names the route forwards; defaults to the built-in
    /// route's list for its path, else to every name the built-in routes of
    /// its access take.
    #[serde(default)]
    pub params: Option<Vec<String>>,
    /// What happens to a parameter the route does not name: `refuse` (400,
    /// the default) or `drop` (not forwarded, counted).
    #[serde(default)]
    pub unknown_params: UnknownParams,
}
