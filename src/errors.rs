//! Errors the gateway answers itself: Capture's envelope ([`ApiError`]) and
//! CONNECT's `ErrorResponse` ([`ConnectError`]). One place maps a refusal to
//! its HTTP status, its code, its decision label and the failure counters it
//! is recorded under; the proxy's respond stage renders and counts it once.

use std::num::NonZeroU32;

use serde_json::{json, Map, Value};

/// Why a request was refused; the label of the `decision` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    Credentials,
    Ip,
    /// The client certificate does not name the caller (`tls_client_subject`).
    ClientCertificate,
    Feature,
    Schema,
    Oracle,
    Limit,
    BadRequest,
    Route,
    Upstream,
    /// The client's rate limit was used up (429).
    RateLimited,
    /// The gateway itself failed (a change that could not be saved).
    Internal,
}

impl DenyReason {
    pub fn label(self) -> &'static str {
        match self {
            DenyReason::Credentials => "credentials",
            DenyReason::Ip => "ip",
            DenyReason::ClientCertificate => "client_certificate",
            DenyReason::Feature => "feature",
            DenyReason::Schema => "schema",
            DenyReason::Oracle => "oracle",
            DenyReason::Limit => "limit",
            DenyReason::BadRequest => "bad_request",
            DenyReason::Route => "route",
            DenyReason::Upstream => "upstream",
            DenyReason::RateLimited => "rate_limited",
            DenyReason::Internal => "internal",
        }
    }
}

/// A failure counter an error is recorded under, besides its decision label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// `recordgate_filter_failures_total{direction, kind}`.
    FilterFailure {
        direction: &'static str,
        kind: &'static str,
    },
    /// `recordgate_upstream_errors_total{kind}`.
    UpstreamError(&'static str),
    /// `recordgate_client_timeouts_total{phase}`.
    ClientTimeout(&'static str),
    /// An upstream response over the size limit: both an upstream error and
    /// a response filter failure (`too_large`).
    UpstreamTooLarge,
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub http_status: u16,
    pub code: u16,
    pub error: &'static str,
    pub description: String,
    pub argument_name: Option<String>,
    pub reason: DenyReason,
    /// Counted by the respond stage when the error is answered.
    pub counter: Option<Counter>,
    /// Sent as `Retry-After` (seconds) by the respond stage. Four bytes:
    /// every decision step returns this type, so it stays small.
    pub retry_after_secs: Option<NonZeroU32>,
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
            counter: None,
            retry_after_secs: None,
        }
    }

    /// The same error, also counted under `counter` when it is answered.
    pub fn counted(mut self, counter: Counter) -> Self {
        self.counter = Some(counter);
        self
    }

    pub(crate) fn filter_failure(self, direction: &'static str, kind: &'static str) -> Self {
        self.counted(Counter::FilterFailure { direction, kind })
    }

    /// The same error counted under another decision label.
    pub fn with_reason(mut self, reason: DenyReason) -> Self {
        self.reason = reason;
        self
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

    pub fn unsupported_auth_method() -> Self {
        ApiError::new(
            401,
            205,
            "invalid_auth_method",
            DenyReason::Credentials,
            "the Authorization scheme is not Basic or Signature".into(),
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

    /// The same text as the allow-list refusal: which factor failed is for
    /// the operator (the `decision` label, the access log), not the caller.
    pub fn client_certificate_denied() -> Self {
        ApiError::new(
            403,
            403,
            "client_permission_error",
            DenyReason::ClientCertificate,
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

    /// A user token the gateway does not honour: unknown, expired, or
    /// revoked with its client. One answer for all (Capture's 414).
    pub fn token_expired() -> Self {
        ApiError::new(
            401,
            414,
            "access_token_expired",
            DenyReason::Credentials,
            "the access token is not valid: unknown, expired or revoked".into(),
        )
        .with_argument("access_token")
    }

    /// A user token on an endpoint that only clients may call.
    pub fn token_not_accepted(endpoint: &str) -> Self {
        ApiError::new(
            403,
            403,
            "client_permission_error",
            DenyReason::Feature,
            format!("{endpoint} cannot be called with a user access token"),
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

    pub fn unsupported_transfer_coding() -> Self {
        ApiError::new(
            501,
            200,
            "invalid_argument",
            DenyReason::BadRequest,
            "the request's Transfer-Encoding is not implemented: only chunked, alone".into(),
        )
        .with_argument("Transfer-Encoding")
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

    /// The client's rate limit is used up. Capture's own code for "too many
    /// calls" is 510 `api_limit_error`: clients written for Capture already
    /// know it; the HTTP status is 429 with `Retry-After`.
    pub fn rate_limited(limit: &crate::rate::RateLimit, retry_after_secs: NonZeroU32) -> Self {
        let mut e = ApiError::new(
            429,
            510,
            "api_limit_error",
            DenyReason::RateLimited,
            format!(
                "this client's rate limit ({} calls per second, burst {}) is used up; retry after {retry_after_secs} s",
                limit.requests_per_second(),
                limit.burst()
            ),
        );
        e.retry_after_secs = Some(retry_after_secs);
        e
    }

    /// The shared policy store cannot take a change now (etcd away).
    pub fn store_unavailable(why: &str) -> Self {
        ApiError::new(
            503,
            500,
            "unexpected_error",
            DenyReason::Internal,
            why.to_string(),
        )
    }

    /// Other replicas' changes kept winning the race: nothing changed.
    pub fn changed_concurrently() -> Self {
        ApiError::new(
            409,
            500,
            "unexpected_error",
            DenyReason::Internal,
            "the policy was changed concurrently through another replica; nothing was changed, retry".into(),
        )
    }

    pub fn internal(description: impl Into<String>) -> Self {
        ApiError::new(
            500,
            500,
            "unexpected_error",
            DenyReason::Internal,
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
        // Display of a `Value` cannot fail, unlike `to_vec`'s general case.
        Value::Object(m).to_string().into_bytes()
    }
}

/// A CONNECT `ErrorResponse` (the Roles API's error body) with its HTTP
/// status and decision label.
#[derive(Debug)]
pub struct RoleError {
    pub status: u16,
    pub error: String,
    pub reason: String,
    pub resolution: String,
    /// The `decision` label it is counted under.
    pub decision: DenyReason,
    /// Sent as `Retry-After` (seconds).
    pub retry_after_secs: Option<NonZeroU32>,
}

impl RoleError {
    pub fn new(status: u16, error: &str, reason: impl Into<String>, resolution: &str) -> Self {
        let decision = match status {
            401 => DenyReason::Credentials,
            403 => DenyReason::Feature,
            500.. => DenyReason::Internal,
            _ => DenyReason::BadRequest,
        };
        RoleError {
            status,
            error: error.into(),
            reason: reason.into(),
            resolution: resolution.into(),
            decision,
            retry_after_secs: None,
        }
    }

    /// A refusal of the shared decision path in CONNECT's shape, counted
    /// under the decision's own label.
    pub fn from_decision(e: ApiError) -> Self {
        let mut out = match e.http_status {
            401 => RoleError::new(
                401,
                "Unauthorized.",
                "Valid client credentials are required.",
                "Authenticate with the client id and secret.",
            ),
            403 => RoleError::new(
                403,
                "Forbidden.",
                "The call is not allowed from this address.",
                "Call from an allowed address.",
            ),
            413 | 431 => RoleError::new(
                e.http_status,
                "Request too large.",
                e.description,
                "Send a smaller request.",
            ),
            408 => RoleError::new(
                408,
                "Request timeout.",
                e.description,
                "Send the whole request in time.",
            ),
            429 => RoleError::new(
                429,
                "Too many requests.",
                e.description,
                "Retry after the number of seconds in Retry-After.",
            ),
            _ => RoleError::bad_request(e.description),
        };
        out.decision = e.reason;
        out.retry_after_secs = e.retry_after_secs;
        out
    }

    pub fn body(&self, operation_id: &str) -> Vec<u8> {
        json!({
            "OperationId": operation_id,
            "Error": self.error,
            "Reason": self.reason,
            "Resolution": self.resolution,
        })
        .to_string()
        .into_bytes()
    }

    pub fn not_found() -> Self {
        RoleError::new(
            404,
            "Client or tenant not found.",
            "No client with this id exists in this tenant.",
            "Check the tenant and client identifiers.",
        )
    }

    pub fn forbidden(needed: &str) -> Self {
        RoleError::new(
            403,
            "Forbidden.",
            format!("This operation requires {needed}."),
            "Call with a client that holds the required role.",
        )
    }

    pub fn bad_request(reason: impl Into<String>) -> Self {
        RoleError::new(
            400,
            "Missing or invalid inputs.",
            reason,
            "Correct the request and try again.",
        )
    }
}

/// Why a call was not answered as asked, in the shape its API uses.
#[derive(Debug)]
pub enum Failure {
    /// Record routes and the Capture management endpoints.
    Capture(ApiError),
    /// The CONNECT Roles API.
    Connect(RoleError),
}

impl Failure {
    pub fn decision(&self) -> DenyReason {
        match self {
            Failure::Capture(e) => e.reason,
            Failure::Connect(e) => e.decision,
        }
    }

    pub fn retry_after_secs(&self) -> Option<NonZeroU32> {
        match self {
            Failure::Capture(e) => e.retry_after_secs,
            Failure::Connect(e) => e.retry_after_secs,
        }
    }
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Failure::Capture(e)
    }
}

impl From<RoleError> for Failure {
    fn from(e: RoleError) -> Self {
        Failure::Connect(e)
    }
}
