//! Gateway settings (YAML). Unknown keys are errors: a typo in a limit must not
//! silently fall back to a default at the edge.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::routes::RouteDef;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Addresses the gateway listens on (`127.0.0.1:8080`, `[::1]:8080`).
    pub listen: Vec<String>,
    /// TLS listeners, beside the plain ones (`config::tls`).
    #[serde(default)]
    pub tls_listen: Vec<crate::config::tls::TlsListen>,
    pub upstream: UpstreamSettings,
    /// Path of the policy file, relative to the settings file.
    pub policy: PathBuf,
    /// Peers allowed to set `X-Forwarded-For`.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub timeouts: Timeouts,
    /// HTTP/2 downstream: h2c and the per-connection bounds.
    #[serde(default)]
    pub http2: crate::config::http2::Http2Settings,
    #[serde(default)]
    pub auth: AuthSettings,
    #[serde(default)]
    pub metrics: MetricsSettings,
    #[serde(default)]
    pub server: ServerSettings,
    /// Answer gateway errors with HTTP 200, as Capture itself does.
    #[serde(default)]
    pub capture_compat_status: bool,
    /// Replaces the built-in Capture route table when present.
    #[serde(default)]
    pub routes: Option<Vec<RouteDef>>,
    #[serde(default)]
    pub log: LogSettings,
    /// JSON-lines audit log of policy changes; defaults to `<policy>.audit.jsonl`.
    #[serde(default)]
    pub audit_log: Option<PathBuf>,
    /// Upstream response headers passed on to clients beyond the defaults.
    #[serde(default)]
    pub response_headers: ResponseHeaders,
    /// The rate limit of every client whose policy entry has no
    /// `rate_limit` of its own; absent: such clients are not limited.
    #[serde(default)]
    pub rate_limit_default: Option<crate::rate::RateLimitDef>,
    /// Where the policy is kept: the file (default) or etcd (`config::store`).
    #[serde(default)]
    pub policy_store: crate::config::store::PolicyStoreSettings,
    /// End-user access tokens (`config::tokens`); absent: not taken.
    #[serde(default)]
    pub tokens: Option<crate::config::tokens::TokenSettings>,
}

/// Which upstream response headers reach clients. By default only
/// `Content-Type`; the gateway adds its own framing, `Cache-Control:
/// no-store` and `X-Request-Id`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResponseHeaders {
    /// More header names to pass on (lower case). Never validators of the
    /// unfiltered body, framing or hop-by-hop headers.
    pub allow: Vec<String>,
    /// The upstream keeps no per-user session, so a `Set-Cookie` it sends
    /// may pass (when `allow` names it): the gateway's pooled upstream
    /// connections are shared by every caller.
    pub upstream_is_session_free: bool,
}

/// Headers no setting can pass on: framing and hop-by-hop headers (the
/// gateway frames its own answer), validators and ranges of the unfiltered
/// body, and the gateway's own.
pub const RESPONSE_HEADERS_NEVER: [&str; 17] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    "content-encoding",
    "etag",
    "last-modified",
    "accept-ranges",
    "content-md5",
    "digest",
    "content-range",
    "cache-control",
    "x-request-id",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSettings {
    /// One or more `host:port`; tried in turn when a connection fails.
    pub servers: Vec<String>,
    #[serde(default)]
    pub tls: bool,
    /// SNI and certificate name; defaults to the host part of the server.
    #[serde(default)]
    pub sni: Option<String>,
    /// PEM bundle of the CA(s) that sign the upstream's certificate. When
    /// set, only these are trusted (not the system store); relative to the
    /// settings file.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Names in `servers` are resolved again this often; every address of
    /// every name is used.
    #[serde(default = "default_resolve_interval_secs")]
    pub resolve_interval_secs: u64,
    /// Credentials the gateway itself presents upstream (HTTP Basic).
    #[serde(default)]
    pub credentials: Option<UpstreamCredentials>,
}

pub const DEFAULT_RESOLVE_INTERVAL_SECS: u64 = 30;

/// Bounds of `upstream.resolve_interval_secs`: below a second the lookups
/// would load the resolver for nothing; past a day a moved upstream would go
/// unnoticed for too long.
pub const RESOLVE_INTERVAL_SECS_RANGE: std::ops::RangeInclusive<u64> = 1..=86_400;

fn default_resolve_interval_secs() -> u64 {
    DEFAULT_RESOLVE_INTERVAL_SECS
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamCredentials {
    pub client_id: String,
    pub secret: crate::config::secrets::SecretSource,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_request_body_bytes: usize,
    /// Largest response body the gateway buffers before filtering.
    pub max_response_body_bytes: usize,
    /// Responses larger than this (or of unknown length) are filtered as
    /// they stream, in bounded memory, instead of being buffered.
    pub stream_responses_over_bytes: usize,
    /// Largest response body the gateway streams through.
    pub max_streamed_response_bytes: u64,
    pub max_json_depth: usize,
    /// Largest request header block the gateway accepts (bytes).
    pub max_header_bytes: usize,
    /// Most parameters (query and form fields together) in one call.
    pub max_parameters: usize,
    /// Most open connections from one client address (an IPv6 client's
    /// /64 counts as one address).
    pub max_connections_per_address: usize,
    /// Most open connections from one of `trusted_proxies`, which carry
    /// many clients' connections.
    pub max_connections_per_trusted_proxy: usize,
    /// Most open client connections in all.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_body_bytes: 1 << 20,
            max_response_body_bytes: 32 << 20,
            stream_responses_over_bytes: 1 << 20,
            max_streamed_response_bytes: 4 << 30,
            max_json_depth: 32,
            max_header_bytes: 16 << 10,
            max_parameters: DEFAULT_MAX_PARAMETERS,
            max_connections_per_address: 256,
            max_connections_per_trusted_proxy: 4096,
            max_connections: 16384,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    pub upstream_connect_ms: u64,
    pub upstream_read_ms: u64,
    pub upstream_write_ms: u64,
    /// Longest wait for one read from a client (header or body).
    pub downstream_read_ms: u64,
    /// Longest time a request line and its headers may take to arrive in
    /// total, including the idle wait for the next request on a keep-alive
    /// connection: a client trickling bytes is cut off here.
    pub downstream_header_ms: u64,
    /// Longest time a request body may take to arrive in total.
    pub downstream_body_ms: u64,
    pub upstream_idle_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            upstream_connect_ms: 2_000,
            upstream_read_ms: 30_000,
            upstream_write_ms: 10_000,
            downstream_read_ms: 10_000,
            downstream_header_ms: 30_000,
            downstream_body_ms: 60_000,
            upstream_idle_ms: 60_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// Allowed distance between a signed request's `Date` and the gateway clock.
    pub signature_max_skew_secs: u64,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            signature_max_skew_secs: 300,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Prometheus listener, e.g. `127.0.0.1:9090`; none when absent.
    pub listen: Option<String>,
    /// Per-client request counter (`recordgate_client_requests_total`).
    pub client_label: ClientLabel,
    /// With `client_label: auto`, the label is on only while the policy has
    /// at most this many clients, so cardinality stays bounded.
    pub client_label_max_clients: usize,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        MetricsSettings {
            listen: None,
            client_label: ClientLabel::Auto,
            client_label_max_clients: 200,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientLabel {
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    pub threads: usize,
    pub grace_period_secs: u64,
    pub graceful_shutdown_timeout_secs: u64,
    pub pid_file: String,
    pub upgrade_sock: String,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            threads: 2,
            grace_period_secs: 5,
            graceful_shutdown_timeout_secs: 5,
            pid_file: "/tmp/recordgate.pid".into(),
            upgrade_sock: "/tmp/recordgate_upgrade.sock".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    pub format: LogFormat,
    /// Lines queued for the log writer thread; past this, lines are dropped
    /// (and counted) rather than requests slowed.
    pub buffer_lines: usize,
}

/// Parameters accepted per call unless settings say otherwise. Capture calls
/// use a dozen; a cap keeps the duplicate check (linear per name) cheap
/// against a body of a hundred thousand distinct names.
pub const DEFAULT_MAX_PARAMETERS: usize = 256;

pub const DEFAULT_LOG_BUFFER_LINES: usize = 128_000;

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: LogFormat::default(),
            buffer_lines: DEFAULT_LOG_BUFFER_LINES,
        }
    }
}

/// A settings or policy problem, located by file and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.is_empty() || self.key == "." {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: {}: {}", self.file, self.key, self.message)
        }
    }
}

/// Deserialises YAML, reporting the failing key path rather than only a line.
pub fn from_yaml<T: serde::de::DeserializeOwned>(
    file: &Path,
    text: &str,
) -> Result<T, ConfigError> {
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| ConfigError {
        file: file.display().to_string(),
        key: e.path().to_string(),
        message: e.inner().to_string(),
    })
}

impl Settings {
    pub fn load(path: &Path) -> Result<Settings, Vec<ConfigError>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![ConfigError {
                file: path.display().to_string(),
                key: String::new(),
                message: format!("cannot read: {e}"),
            }]
        })?;
        let mut s: Settings = from_yaml(path, &text).map_err(|e| vec![e])?;
        if let Some(dir) = path.parent() {
            if s.policy.is_relative() {
                s.policy = dir.join(&s.policy);
            }
            if let Some(a) = s.audit_log.as_mut().filter(|a| a.is_relative()) {
                *a = dir.join(&*a);
            }
            if let Some(c) = s.upstream.ca_file.as_mut().filter(|c| c.is_relative()) {
                *c = dir.join(&*c);
            }
            for t in &mut s.tls_listen {
                t.resolve_paths(dir);
            }
            if let Some(t) = s.tokens.as_mut() {
                t.resolve_paths(dir);
            }
            s.policy_store.resolve_paths(dir);
        }
        let errors = s.validate(path);
        if errors.is_empty() {
            Ok(s)
        } else {
            Err(errors)
        }
    }

    pub fn audit_log_path(&self) -> PathBuf {
        self.audit_log
            .clone()
            .unwrap_or_else(|| self.policy.with_extension("audit.jsonl"))
    }

    fn validate(&self, path: &Path) -> Vec<ConfigError> {
        let file = path.display().to_string();
        let mut errors = Vec::new();
        let mut err = |key: String, message: String| {
            errors.push(ConfigError {
                file: file.clone(),
                key,
                message,
            })
        };
        for (i, name) in self.response_headers.allow.iter().enumerate() {
            let key = format!("response_headers.allow[{i}]");
            if http::HeaderName::from_bytes(name.as_bytes()).is_err()
                || name.bytes().any(|b| b.is_ascii_uppercase())
            {
                err(key, format!("{name:?} is not a lower-case header name"));
            } else if RESPONSE_HEADERS_NEVER.contains(&name.as_str()) {
                err(
                    key,
                    format!("{name} is set by the gateway or describes the unfiltered body; it is never passed on"),
                );
            } else if name == "set-cookie" && !self.response_headers.upstream_is_session_free {
                err(
                    key,
                    "set-cookie passes only with response_headers.upstream_is_session_free: the gateway's upstream connections are shared by every caller".into(),
                );
            }
        }
        // A TLS-only gateway is fine: one address of either kind.
        if self.listen.is_empty() && self.tls_listen.is_empty() {
            err(
                "listen".into(),
                "at least one address (listen or tls_listen) is required".into(),
            );
        }
        let mut labels = std::collections::BTreeSet::new();
        for (i, t) in self.tls_listen.iter().enumerate() {
            for (key, message) in t.validate(i) {
                err(key, message);
            }
            if !labels.insert(t.label()) {
                err(
                    format!("tls_listen[{i}].name"),
                    format!("{:?} names two TLS listeners", t.label()),
                );
            }
        }
        for (i, a) in self.listen.iter().enumerate() {
            if a.parse::<std::net::SocketAddr>().is_err() {
                err(format!("listen[{i}]"), format!("{a:?} is not an addr:port"));
            }
        }
        if self.upstream.servers.is_empty() {
            err(
                "upstream.servers".into(),
                "at least one server is required".into(),
            );
        }
        for (i, a) in self.upstream.servers.iter().enumerate() {
            if !a.contains(':') {
                err(
                    format!("upstream.servers[{i}]"),
                    format!("{a:?} is not a host:port"),
                );
            }
        }
        if !RESOLVE_INTERVAL_SECS_RANGE.contains(&self.upstream.resolve_interval_secs) {
            err(
                "upstream.resolve_interval_secs".into(),
                format!(
                    "must be between {} and {}",
                    RESOLVE_INTERVAL_SECS_RANGE.start(),
                    RESOLVE_INTERVAL_SECS_RANGE.end()
                ),
            );
        }
        // An empty SNI turns certificate verification off in Pingora's
        // connector: never by accident.
        if self
            .upstream
            .sni
            .as_deref()
            .is_some_and(|s| s.trim().is_empty())
        {
            err("upstream.sni".into(), "must not be empty".into());
        }
        if self.upstream.ca_file.is_some() && !self.upstream.tls {
            err(
                "upstream.ca_file".into(),
                "is set but upstream.tls is false".into(),
            );
        }
        for (i, c) in self.trusted_proxies.iter().enumerate() {
            if let Err(e) = crate::cidr::parse_cidr(c) {
                err(format!("trusted_proxies[{i}]"), e.to_string());
            }
        }
        if let Some(m) = &self.metrics.listen {
            if m.parse::<std::net::SocketAddr>().is_err() {
                err(
                    "metrics.listen".into(),
                    format!("{m:?} is not an addr:port"),
                );
            }
        }
        let l = &self.limits;
        if l.max_json_depth == 0 || l.max_json_depth > 128 {
            err(
                "limits.max_json_depth".into(),
                "must be between 1 and 128".into(),
            );
        }
        if l.max_request_body_bytes == 0 {
            err("limits.max_request_body_bytes".into(), "must be > 0".into());
        }
        if l.max_response_body_bytes == 0 {
            err(
                "limits.max_response_body_bytes".into(),
                "must be > 0".into(),
            );
        }
        // Past the streaming threshold a response streams, and streaming
        // stops at its own limit: one below the threshold would refuse every
        // response the threshold lets stream.
        if l.stream_responses_over_bytes < l.max_response_body_bytes
            && l.max_streamed_response_bytes <= l.stream_responses_over_bytes as u64
        {
            err(
                "limits.max_streamed_response_bytes".into(),
                format!(
                    "must be > limits.stream_responses_over_bytes ({}), or no response could stream",
                    l.stream_responses_over_bytes
                ),
            );
        }
        if l.max_parameters == 0 || l.max_parameters > 4096 {
            err(
                "limits.max_parameters".into(),
                "must be between 1 and 4096".into(),
            );
        }
        if l.max_header_bytes == 0 {
            err("limits.max_header_bytes".into(), "must be > 0".into());
        }
        for (key, v) in [
            ("max_connections_per_address", l.max_connections_per_address),
            (
                "max_connections_per_trusted_proxy",
                l.max_connections_per_trusted_proxy,
            ),
            ("max_connections", l.max_connections),
        ] {
            if v == 0 {
                err(format!("limits.{key}"), "must be > 0".into());
            }
        }
        if self.log.buffer_lines == 0 || self.log.buffer_lines > 10_000_000 {
            err(
                "log.buffer_lines".into(),
                "must be between 1 and 10000000".into(),
            );
        }
        let t = &self.timeouts;
        for (key, ms) in [
            ("upstream_connect_ms", t.upstream_connect_ms),
            ("upstream_read_ms", t.upstream_read_ms),
            ("upstream_write_ms", t.upstream_write_ms),
            ("downstream_read_ms", t.downstream_read_ms),
            ("downstream_header_ms", t.downstream_header_ms),
            ("downstream_body_ms", t.downstream_body_ms),
            ("upstream_idle_ms", t.upstream_idle_ms),
        ] {
            if ms == 0 {
                err(format!("timeouts.{key}"), "must be > 0".into());
            }
        }
        for (key, message) in self.http2.problems() {
            err(key, message);
        }
        for (key, message) in self.policy_store.problems() {
            err(format!("policy_store.{key}"), message);
        }
        if let Some(t) = &self.tokens {
            for (key, message) in t.problems() {
                err(format!("tokens.{key}"), message);
            }
        }
        if let Some(def) = &self.rate_limit_default {
            if let Err(e) = crate::rate::RateLimit::new(def) {
                err(format!("rate_limit_default.{}", e.field), e.message);
            }
        }
        if self.server.threads == 0 {
            err("server.threads".into(), "must be > 0".into());
        }
        if let Some(routes) = &self.routes {
            for (i, r) in routes.iter().enumerate() {
                if !r.path.starts_with('/') {
                    err(format!("routes[{i}].path"), "must start with /".into());
                }
            }
        }
        errors
    }
}
