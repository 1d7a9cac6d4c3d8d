//! Errors the gateway answers itself, rendered in Capture's envelope.
//! One place maps a refusal to its HTTP status, Capture code and metric reason.

use serde_json::{json, Map, Value};

/// Why a request was refused; the label of the `decision` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    Credentials,
    Ip,
    Feature,
    Schema,
    Oracle,
    Limit,
    BadRequest,
    Route,
    Upstream,
}

impl DenyReason {
    pub fn label(self) -> &'static str {
        match self {
            DenyReason::Credentials => "credentials",
            DenyReason::Ip => "ip",
            DenyReason::Feature => "feature",
            DenyReason::Schema => "schema",
            DenyReason::Oracle => "oracle",
            DenyReason::Limit => "limit",
            DenyReason::BadRequest => "bad_request",
            DenyReason::Route => "route",
            DenyReason::Upstream => "upstream",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub http_status: u16,
    pub code: u16,
    pub error: &'static str,
    pub description: String,
    pub argument_name: Option<String>,
    pub reason: DenyReason,
}

impl ApiError {
    fn new(
        http_status: u16,
        code: u16,
        error: &'static str,
        reason: DenyReason,
        description: String,
    ) -> Self {
        ApiError {
            http_status,
            code,
            error,
            description,
            argument_name: None,
            reason,
        }
    }

    pub fn with_argument(mut self, name: impl Into<String>) -> Self {
        self.argument_name = Some(name.into());
        self
    }

    pub fn missing_argument(name: &str) -> Self {
        ApiError::new(
            400,
            100,
            "missing_argument",
            DenyReason::BadRequest,
            format!("missing required argument: {name}"),
        )
        .with_argument(name)
    }

    /// Capture's wording: "<arg> was not valid for the following reason: <why>".
    pub fn invalid_argument(name: &str, why: impl std::fmt::Display) -> Self {
        ApiError::new(
            400,
            200,
            "invalid_argument",
            DenyReason::BadRequest,
            format!("{name} was not valid for the following reason: {why}"),
        )
        .with_argument(name)
    }

    pub fn duplicate_argument(name: &str) -> Self {
        ApiError::new(
            400,
            201,
            "duplicate_argument",
            DenyReason::BadRequest,
            format!("the argument {name} was given more than once"),
        )
        .with_argument(name)
    }

    pub fn invalid_credentials() -> Self {
        ApiError::new(
            401,
            402,
            "invalid_client_credentials",
            DenyReason::Credentials,
            "the client id or secret (or signature) is not valid".into(),
        )
    }

    pub fn missing_credentials() -> Self {
        ApiError::new(
            401,
            100,
            "missing_argument",
            DenyReason::Credentials,
            "missing required argument: client_id".into(),
        )
        .with_argument("client_id")
    }

    /// Same text as Capture's allow-list refusal: the caller learns nothing more.
    pub fn ip_denied() -> Self {
        ApiError::new(
            403,
            403,
            "client_permission_error",
            DenyReason::Ip,
            "the provided client does not have authorization for this action".into(),
        )
    }

    pub fn feature_denied(endpoint: &str) -> Self {
        ApiError::new(
            403,
            403,
            "client_permission_error",
            DenyReason::Feature,
            format!("the provided client does not have a feature that permits {endpoint}"),
        )
    }

    pub fn not_readable(argument: &str, path: &str) -> Self {
        ApiError::new(
            403,
            403,
            "client_permission_error",
            DenyReason::Oracle,
            format!("{argument} names {path}, which this client may not read"),
        )
        .with_argument(argument)
    }

    pub fn not_writable(argument: &str, path: &str) -> Self {
        ApiError::new(
            403,
            403,
            "client_permission_error",
            DenyReason::Schema,
            format!("{path} is not in this client's write access schema"),
        )
        .with_argument(argument)
    }

    pub fn reserved_attribute(argument: &str, name: &str) -> Self {
        ApiError::new(
            400,
            234,
            "reserved_attribute",
            DenyReason::Schema,
            format!("{name} is a reserved attribute and cannot be written"),
        )
        .with_argument(argument)
    }

    pub fn unknown_attribute(argument: &str, path: &str) -> Self {
        ApiError::new(
            400,
            223,
            "unknown_attribute",
            DenyReason::BadRequest,
            format!("{path} is not an attribute of this entity type"),
        )
        .with_argument(argument)
    }

    pub fn unknown_entity_type(name: &str) -> Self {
        ApiError::new(
            400,
            222,
            "unknown_entity_type",
            DenyReason::BadRequest,
            format!("{name} is not an entity type known to this gateway"),
        )
        .with_argument("type_name")
    }

    pub fn unknown_endpoint(path: &str) -> Self {
        ApiError::new(
            404,
            403,
            "client_permission_error",
            DenyReason::Route,
            format!("the endpoint {path} is not served by this gateway"),
        )
    }

    pub fn method_not_allowed(method: &str) -> Self {
        ApiError::new(
            405,
            200,
            "invalid_argument",
            DenyReason::BadRequest,
            format!("the method {method} is not allowed here"),
        )
    }

    pub fn request_too_large(limit: usize) -> Self {
        ApiError::new(
            413,
            200,
            "invalid_argument",
            DenyReason::Limit,
            format!("the request body exceeds the limit of {limit} bytes"),
        )
    }

    pub fn headers_too_large(limit: usize) -> Self {
        ApiError::new(
            431,
            200,
            "invalid_argument",
            DenyReason::Limit,
            format!("the request headers exceed the limit of {limit} bytes"),
        )
    }

    pub fn request_timeout(why: String) -> Self {
        ApiError::new(408, 200, "invalid_argument", DenyReason::Limit, why).with_argument("body")
    }

    pub fn unsupported_encoding(what: &str) -> Self {
        ApiError::new(
            415,
            200,
            "invalid_argument",
            DenyReason::BadRequest,
            format!("the request body {what} cannot be filtered"),
        )
    }

    pub fn bad_gateway(description: impl Into<String>) -> Self {
        ApiError::new(
            502,
            500,
            "unexpected_error",
            DenyReason::Upstream,
            description.into(),
        )
    }

    pub fn gateway_timeout() -> Self {
        ApiError::new(
            504,
            500,
            "unexpected_error",
            DenyReason::Upstream,
            "the upstream did not answer in time".into(),
        )
    }

    pub fn internal(description: impl Into<String>) -> Self {
        ApiError::new(
            500,
            500,
            "unexpected_error",
            DenyReason::Upstream,
            description.into(),
        )
    }

    /// The status line to send: Capture itself answers errors with 200.
    pub fn status(&self, capture_compat: bool) -> u16 {
        if capture_compat {
            200
        } else {
            self.http_status
        }
    }

    pub fn body(&self, request_id: &str) -> Vec<u8> {
        let mut m = Map::new();
        m.insert("stat".into(), json!("error"));
        m.insert("code".into(), json!(self.code));
        m.insert("error".into(), json!(self.error));
        m.insert("error_description".into(), json!(self.description));
        if let Some(a) = &self.argument_name {
            m.insert("argument_name".into(), json!(a));
        }
        m.insert("request_id".into(), json!(request_id));
        serde_json::to_vec(&Value::Object(m)).unwrap_or_default()
    }
}
