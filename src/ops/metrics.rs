//! Prometheus metrics, registered in the default registry that the operator
//! listener (`ops::operator`) serves at `/metrics`. Names follow Prometheus
//! conventions.

use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use std::cell::RefCell;

use prometheus::core::Collector;
use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts,
};

/// Metrics that could not be made or registered (a clash or an invalid
/// definition in our own code). `init` reports them, and the gateway then
/// refuses to start with the message; nothing aborts, and meanwhile such a
/// metric counts nothing.
static FAILURES: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn failed(name: &str, e: prometheus::Error) {
    FAILURES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(format!("metric {name}: {e}"));
}

/// A metric as the gateway uses it: present once it was made. One that
/// could not be made is `None` and its methods do nothing.
pub struct Metric<T>(Option<T>);

/// Makes a metric and registers it in the default registry, which the
/// operator listener serves.
fn make<T: Collector + Clone + 'static>(name: &str, made: prometheus::Result<T>) -> Metric<T> {
    match made {
        Ok(m) => {
            if let Err(e) = prometheus::register(Box::new(m.clone())) {
                failed(name, e);
            }
            Metric(Some(m))
        }
        Err(e) => {
            failed(name, e);
            Metric(None)
        }
    }
}

impl Metric<IntCounterVec> {
    /// The series for `labels`, resolved once where it is used often.
    pub fn series(&self, labels: &[&str]) -> Metric<IntCounter> {
        Metric(
            self.0
                .as_ref()
                .and_then(|v| v.get_metric_with_label_values(labels).ok()),
        )
    }

    pub fn inc(&self, labels: &[&str]) {
        self.series(labels).inc();
    }

    pub fn inc_by(&self, labels: &[&str], n: u64) {
        self.series(labels).inc_by(n);
    }
}

impl Metric<IntCounter> {
    pub fn inc(&self) {
        if let Some(c) = &self.0 {
            c.inc();
        }
    }

    pub fn inc_by(&self, n: u64) {
        if let Some(c) = &self.0 {
            c.inc_by(n);
        }
    }

    pub fn get(&self) -> u64 {
        self.0.as_ref().map_or(0, |c| c.get())
    }
}

impl Metric<HistogramVec> {
    pub fn series(&self, labels: &[&str]) -> Metric<Histogram> {
        Metric(
            self.0
                .as_ref()
                .and_then(|v| v.get_metric_with_label_values(labels).ok()),
        )
    }
}

impl Metric<Histogram> {
    pub fn observe(&self, v: f64) {
        if let Some(h) = &self.0 {
            h.observe(v);
        }
    }
}

impl Metric<IntGauge> {
    pub fn set(&self, v: i64) {
        if let Some(g) = &self.0 {
            g.set(v);
        }
    }
}

impl Metric<Gauge> {
    pub fn set(&self, v: f64) {
        if let Some(g) = &self.0 {
            g.set(v);
        }
    }
}

impl Metric<IntGaugeVec> {
    pub fn set(&self, labels: &[&str], v: i64) {
        if let Some(g) = self
            .0
            .as_ref()
            .and_then(|g| g.get_metric_with_label_values(labels).ok())
        {
            g.set(v);
        }
    }
}

macro_rules! counter_vec {
    ($name:expr, $help:expr, $labels:expr) => {
        LazyLock::new(|| make($name, IntCounterVec::new(Opts::new($name, $help), $labels)))
    };
}

pub static REQUESTS: LazyLock<Metric<IntCounterVec>> = counter_vec!(
    "recordgate_requests_total",
    "Requests by route, decision (allowed or denial reason), HTTP status, and whether the decision was only observed (shadow mode).",
    &["route", "decision", "status", "shadow"]
);

pub static CLIENT_REQUESTS: LazyLock<Metric<IntCounterVec>> = counter_vec!(
    "recordgate_client_requests_total",
    "Requests by API client and decision; only when the per-client label is enabled.",
    &["client", "decision"]
);

pub static RATE_LIMITED: LazyLock<Metric<IntCounterVec>> = counter_vec!(
    "recordgate_rate_limited_total",
    "Calls refused with 429 because the client's rate limit was used up, by API client; only when the per-client label is enabled.",
    &["client"]
);

pub static FILTERED_ATTRIBUTES: LazyLock<Metric<IntCounterVec>> = counter_vec!(
    "recordgate_filtered_attributes_total",
    "Attributes removed by the access-schema filter, by direction (request, response).",
    &["direction"]
);

pub static FILTER_FAILURES: LazyLock<Metric<IntCounterVec>> = counter_vec!(
    "recordgate_filter_failures_total",
    "Bodies refused because they could not be filtered, by direction and reason (malformed, too_large, encoding).",
    &["direction", "reason"]
);

pub static UPSTREAM_ERRORS: LazyLock<Metric<IntCounterVec>> = counter_vec!(
    "recordgate_upstream_errors_total",
    "Upstream failures by kind (connect, timeout, protocol, too_large).",
    &["kind"]
);

pub static DROPPED_PARAMETERS: LazyLock<Metric<IntCounterVec>> = counter_vec!(
    "recordgate_dropped_parameters_total",
    "Parameters not forwarded because the route does not name them (routes set to drop unknown parameters), by route.",
    &["route"]
);

pub static CLIENT_TIMEOUTS: LazyLock<Metric<IntCounterVec>> = counter_vec!(
    "recordgate_client_timeouts_total",
    "Client connections cut off for sending too slowly, by phase (header, body).",
    &["phase"]
);

pub static HTTP2_GOAWAYS: LazyLock<Metric<IntCounterVec>> = counter_vec!(
    "recordgate_http2_goaways_total",
    "HTTP/2 connections closed for abuse with GOAWAY ENHANCE_YOUR_CALM, by bound: resets (http2.max_reset_streams), malformed (http2.max_malformed_streams), h2 (the h2 layer's: http2.max_pending_reset_streams, max_local_error_resets, CONTINUATION floods).",
    &["reason"]
);

pub static BYTES: LazyLock<Metric<IntCounterVec>> = counter_vec!(
    "recordgate_body_bytes_total",
    "Body bytes by direction (in from clients, out to clients).",
    &["direction"]
);

pub static POLICY_RELOADS: LazyLock<Metric<IntCounterVec>> = counter_vec!(
    "recordgate_policy_reloads_total",
    "Policy reloads by source (file, api, signal) and result (success, failure).",
    &["source", "result"]
);

pub static TLS_RELOADS: LazyLock<Metric<IntCounterVec>> = counter_vec!(
    "recordgate_tls_reloads_total",
    "TLS certificate reloads by listener and result (success, failure: the old certificate stays).",
    &["listener", "result"]
);

pub static TLS_CERTIFICATE_EXPIRY: LazyLock<Metric<IntGaugeVec>> = LazyLock::new(|| {
    make(
        "recordgate_tls_certificate_expiry_timestamp_seconds",
        IntGaugeVec::new(
            Opts::new(
                "recordgate_tls_certificate_expiry_timestamp_seconds",
                "Unix time at which a TLS listener's certificate in service expires (notAfter).",
            ),
            &["listener", "certificate"],
        ),
    )
});

/// Makes the TLS series of `listener` start at 0.
pub fn tls_listener(listener: &str) {
    for result in ["success", "failure"] {
        TLS_RELOADS.series(&[listener, result]);
    }
}

/// Buckets of the duration histograms: 100 µs to 10 s.
const DURATION_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A duration histogram by `route` (the bounded label of `Ctx::route`).
fn route_histogram(name: &str, help: &str) -> Metric<HistogramVec> {
    let opts = HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec());
    make(name, HistogramVec::new(opts, &["route"]))
}

pub static REQUEST_DURATION: LazyLock<Metric<HistogramVec>> = LazyLock::new(|| {
    route_histogram(
        "recordgate_request_duration_seconds",
        "Request duration by route, from the request header to the end of the response.",
    )
});

pub static UPSTREAM_DURATION: LazyLock<Metric<HistogramVec>> = LazyLock::new(|| {
    route_histogram(
        "recordgate_upstream_duration_seconds",
        "Upstream exchange duration by route, for requests that called the upstream.",
    )
});

pub static GATEWAY_DURATION: LazyLock<Metric<HistogramVec>> = LazyLock::new(|| {
    route_histogram(
        "recordgate_gateway_duration_seconds",
        "The gateway's own work by route: the total minus the upstream time and the time spent waiting on the client (its body, its reading of the response).",
    )
});

pub static POLICY_INFO: LazyLock<Metric<IntGaugeVec>> = LazyLock::new(|| {
    make(
        "recordgate_policy_info",
        IntGaugeVec::new(
            Opts::new(
                "recordgate_policy_info",
                "1 for the hash of the active policy (one series per process).",
            ),
            &["hash"],
        ),
    )
});

pub static POLICY_VERSION: LazyLock<Metric<IntGauge>> = LazyLock::new(|| {
    make(
        "recordgate_policy_version",
        IntGauge::new(
            "recordgate_policy_version",
            "Version of the active policy snapshot.",
        ),
    )
});

pub static POLICY_SHADOW_CLIENTS: LazyLock<Metric<IntGauge>> = LazyLock::new(|| {
    make(
        "recordgate_policy_shadow_clients",
        IntGauge::new(
            "recordgate_policy_shadow_clients",
            "Clients in shadow mode (enforcement: shadow): decided and reported, not enforced",
        ),
    )
});

pub static POLICY_CLIENTS: LazyLock<Metric<IntGauge>> = LazyLock::new(|| {
    make(
        "recordgate_policy_clients",
        IntGauge::new(
            "recordgate_policy_clients",
            "API clients in the active policy.",
        ),
    )
});

pub static POLICY_LAST_RELOAD: LazyLock<Metric<Gauge>> = LazyLock::new(|| {
    make(
        "recordgate_policy_last_reload_success_timestamp_seconds",
        Gauge::new(
            "recordgate_policy_last_reload_success_timestamp_seconds",
            "Unix time of the last successful policy load.",
        ),
    )
});

pub static BUILD_INFO: LazyLock<Metric<IntGaugeVec>> = LazyLock::new(|| {
    make(
        "recordgate_build_info",
        IntGaugeVec::new(
            Opts::new("recordgate_build_info", "Build information."),
            &["version"],
        ),
    )
});

pub static LOG_LINES_DROPPED: LazyLock<Metric<IntCounter>> = LazyLock::new(|| {
    make(
        "recordgate_log_lines_dropped_total",
        IntCounter::new(
            "recordgate_log_lines_dropped_total",
            "Log lines dropped because the log writer fell behind (logging never blocks a request)",
        ),
    )
});

pub static TOKEN_BINDINGS_UNSHARED: LazyLock<Metric<IntCounter>> = LazyLock::new(|| {
    make(
        "recordgate_token_bindings_unshared_total",
        IntCounter::new(
            "recordgate_token_bindings_unshared_total",
            "Token bindings etcd did not take (it did not answer): honoured by this replica only",
        ),
    )
});

pub static SHADOW_REMOVED: LazyLock<Metric<IntCounterVec>> = counter_vec!(
    "recordgate_shadow_removed_attributes_total",
    "Attributes a client's shadow schema would have removed (direction: request, response); nothing was removed",
    &["client", "direction"]
);

pub static STORE_CONNECTED: LazyLock<Metric<IntGauge>> = LazyLock::new(|| {
    make(
        "recordgate_policy_store_connected",
        IntGauge::new(
            "recordgate_policy_store_connected",
            "1 while this replica's watch on the etcd policy store is up (etcd store only)",
        ),
    )
});

pub static STORE_APPLIED_REVISION: LazyLock<Metric<IntGauge>> = LazyLock::new(|| {
    make(
        "recordgate_policy_store_applied_revision",
        IntGauge::new(
            "recordgate_policy_store_applied_revision",
            "The last etcd revision this replica applied (etcd store only)",
        ),
    )
});

pub static STORE_SYNC_AGE: LazyLock<Metric<Gauge>> = LazyLock::new(|| {
    make(
        "recordgate_policy_store_seconds_since_sync",
        Gauge::new(
            "recordgate_policy_store_seconds_since_sync",
            "Seconds since the etcd watch last heard from etcd (etcd store only)",
        ),
    )
});

pub static STORE_BEHIND: LazyLock<Metric<IntGauge>> = LazyLock::new(|| {
    make(
        "recordgate_policy_store_behind",
        IntGauge::new(
            "recordgate_policy_store_behind",
            "1 while the policy in force is not etcd's latest: started from the local cache, or etcd holds a state that is not whole (etcd store only)",
        ),
    )
});

/// The etcd store's state, refreshed on each scrape.
pub fn policy_store(connected: bool, applied_revision: i64, since_sync: Option<f64>, behind: bool) {
    STORE_CONNECTED.set(i64::from(connected));
    STORE_APPLIED_REVISION.set(applied_revision);
    STORE_SYNC_AGE.set(since_sync.unwrap_or(-1.0));
    STORE_BEHIND.set(i64::from(behind));
}

pub static TOKEN_BINDINGS: LazyLock<Metric<IntGauge>> = LazyLock::new(|| {
    make(
        "recordgate_token_bindings",
        IntGauge::new(
            "recordgate_token_bindings",
            "End-user tokens the gateway knows (by keyed hash): whom each belongs to, until it expires",
        ),
    )
});

pub static TOKENS_BOUND: LazyLock<Metric<IntCounterVec>> = counter_vec!(
    "recordgate_tokens_bound_total",
    "Tokens issued through the gateway and bound to their client (kind: access, refresh)",
    &["kind"]
);

pub static TOKEN_BINDINGS_REMOVED: LazyLock<Metric<IntCounterVec>> = counter_vec!(
    "recordgate_token_bindings_removed_total",
    "Token bindings dropped (reason: expired, capacity: the oldest past tokens.max_bindings)",
    &["reason"]
);

pub static TOKEN_REFUSALS: LazyLock<Metric<IntCounterVec>> = counter_vec!(
    "recordgate_token_refusals_total",
    "Calls with a user token refused (reason: unknown, expired, revoked, not_allowed)",
    &["reason"]
);

pub static CONNECTIONS_OPEN: LazyLock<Metric<IntGauge>> = LazyLock::new(|| {
    make(
        "recordgate_connections_open",
        IntGauge::new(
            "recordgate_connections_open",
            "Client connections open now, as the connection caps count them",
        ),
    )
});

pub static CONNECTIONS_REFUSED: LazyLock<Metric<IntCounterVec>> = counter_vec!(
    "recordgate_connections_refused_total",
    "Client connections refused by a connection cap (limit: per_address or total)",
    &["limit"]
);

pub static UPSTREAM_RESOLVE_FAILURES: LazyLock<Metric<IntCounter>> = LazyLock::new(|| {
    make(
        "recordgate_upstream_resolve_failures_total",
        IntCounter::new(
            "recordgate_upstream_resolve_failures_total",
            "Re-resolutions of an upstream name that failed; the name kept its last good addresses",
        ),
    )
});

static LOG_DROPS: std::sync::OnceLock<tracing_appender::non_blocking::ErrorCounter> =
    std::sync::OnceLock::new();

/// The log writer's count of dropped lines, read into
/// `recordgate_log_lines_dropped_total` at each scrape.
pub fn watch_log_drops(counter: tracing_appender::non_blocking::ErrorCounter) {
    let _ = LOG_DROPS.set(counter);
}

/// Brings the counters that are kept elsewhere up to date; called before
/// each scrape. Serialised, so two concurrent scrapes cannot both add the
/// same difference.
pub fn refresh() {
    static REFRESH: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = REFRESH.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(c) = LOG_DROPS.get() {
        let dropped = c.dropped_lines() as u64;
        let shown = LOG_LINES_DROPPED.get();
        if dropped > shown {
            LOG_LINES_DROPPED.inc_by(dropped - shown);
        }
    }
}

// Series every request touches, resolved once: `with_label_values` hashes
// the labels and takes a lock on each call.
pub static BYTES_IN: LazyLock<Metric<IntCounter>> = LazyLock::new(|| BYTES.series(&["in"]));
pub static BYTES_OUT: LazyLock<Metric<IntCounter>> = LazyLock::new(|| BYTES.series(&["out"]));
pub static FILTERED_REQUEST: LazyLock<Metric<IntCounter>> =
    LazyLock::new(|| FILTERED_ATTRIBUTES.series(&["request"]));
pub static FILTERED_RESPONSE: LazyLock<Metric<IntCounter>> =
    LazyLock::new(|| FILTERED_ATTRIBUTES.series(&["response"]));

/// A (route, decision, status) series of `recordgate_requests_total`.
type RequestSeries = (&'static str, &'static str, u16, bool, Metric<IntCounter>);

/// The three duration histograms of one route: total, upstream, gateway.
type RouteDurations = (&'static str, [Metric<Histogram>; 3]);

thread_local! {
    static REQUEST_SERIES: RefCell<Vec<RequestSeries>> =
        const { RefCell::new(Vec::new()) };
    static DURATION_SERIES: RefCell<Vec<RouteDurations>> =
        const { RefCell::new(Vec::new()) };
}

/// Records one request's durations under its route: the total, the
/// upstream exchange (only when there was one) and the gateway's own work.
/// Routes are few and bounded, so each thread keeps its series rather than
/// looking them up by label per request.
pub fn observe_durations(
    route: &'static str,
    total: Duration,
    upstream: Option<Duration>,
    gateway: Duration,
) {
    let observe = |series: &[Metric<Histogram>; 3]| {
        series[0].observe(total.as_secs_f64());
        if let Some(u) = upstream {
            series[1].observe(u.as_secs_f64());
        }
        series[2].observe(gateway.as_secs_f64());
    };
    let hit = DURATION_SERIES.with(|cache| {
        let cache = cache.borrow();
        cache
            .iter()
            .find(|(r, _)| r == &route)
            .map(|(_, series)| observe(series))
            .is_some()
    });
    if hit {
        return;
    }
    let series = [
        REQUEST_DURATION.series(&[route]),
        UPSTREAM_DURATION.series(&[route]),
        GATEWAY_DURATION.series(&[route]),
    ];
    observe(&series);
    DURATION_SERIES.with(|cache| {
        let mut cache = cache.borrow_mut();
        // Route labels are a fixed handful; the bound is only a backstop.
        if cache.len() < 32 {
            cache.push((route, series));
        }
    });
}

/// Counts one request in `recordgate_requests_total`. The handful of
/// (route, decision, status) series a worker thread sees are kept per thread
/// rather than looked up by label every time.
pub fn count_request(route: &'static str, decision: &'static str, status: u16, shadow: bool) {
    let hit = REQUEST_SERIES.with(|cache| {
        let cache = cache.borrow();
        cache
            .iter()
            .find(|(r, d, s, sh, _)| *s == status && *sh == shadow && r == &route && d == &decision)
            .map(|(.., c)| c.inc())
            .is_some()
    });
    if hit {
        return;
    }
    let shadow_label = if shadow { "true" } else { "false" };
    let counter = REQUESTS.series(&[route, decision, &status.to_string(), shadow_label]);
    counter.inc();
    REQUEST_SERIES.with(|cache| {
        let mut cache = cache.borrow_mut();
        // Bounded: routes, decisions and statuses are few, but an upstream
        // could vary its status; past this the lookup path is used.
        if cache.len() < 64 {
            cache.push((route, decision, status, shadow, counter));
        }
    });
}

/// The hash `recordgate_policy_info` shows, to remove its series when
/// another policy becomes active (one series per process, so replicas on
/// different policies show as different hashes, not one replica with two).
static POLICY_HASH: Mutex<Option<String>> = Mutex::new(None);

/// Records that a policy snapshot became active.
pub fn policy_activated(version: u64, clients: usize, hash: &str, shadow_clients: usize) {
    POLICY_SHADOW_CLIENTS.set(shadow_clients as i64);
    {
        let mut shown = POLICY_HASH.lock().unwrap_or_else(|p| p.into_inner());
        if shown.as_deref() != Some(hash) {
            if let (Some(old), Some(info)) = (shown.take(), POLICY_INFO.0.as_ref()) {
                // Absent only if it was never set; nothing to remove then.
                let _ = info.remove_label_values(&[&old]);
            }
            POLICY_INFO.set(&[hash], 1);
            *shown = Some(hash.to_string());
        }
    }
    POLICY_VERSION.set(version as i64);
    POLICY_CLIENTS.set(clients as i64);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    POLICY_LAST_RELOAD.set(now);
}

/// The `route` labels of the record routes (`custom` for configured paths).
pub const ROUTE_LABELS: [&str; 9] = [
    "/entity",
    "/entity.find",
    "/entity.count",
    "/entity.create",
    "/entity.bulkCreate",
    "/entity.update",
    "/entity.replace",
    "/entity.delete",
    "custom",
];

/// The `process_*` metrics (CPU, memory, file descriptors, start time):
/// with its `process` feature the prometheus crate registers its
/// `ProcessCollector` in the default registry when that registry is first
/// used (registering another would be refused as a duplicate). Checked here
/// so that a build without them is reported rather than silently missing.
fn check_process_metrics() {
    let present = prometheus::default_registry()
        .gather()
        .iter()
        .any(|f| f.name().starts_with("process_"));
    if cfg!(target_os = "linux") && !present {
        FAILURES
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push("metric process_*: the process collector is not registered".to_string());
    }
}

/// Makes every metric and the series that start at 0. An error names each
/// metric that could not be made or registered.
pub fn init() -> Result<(), String> {
    BUILD_INFO.set(&[env!("CARGO_PKG_VERSION")], 1);
    LazyLock::force(&REQUESTS);
    LazyLock::force(&FILTERED_ATTRIBUTES);
    LazyLock::force(&RATE_LIMITED);
    LazyLock::force(&FILTER_FAILURES);
    LazyLock::force(&UPSTREAM_ERRORS);
    LazyLock::force(&BYTES);
    LazyLock::force(&POLICY_RELOADS);
    LazyLock::force(&REQUEST_DURATION);
    LazyLock::force(&UPSTREAM_DURATION);
    LazyLock::force(&GATEWAY_DURATION);
    LazyLock::force(&POLICY_INFO);
    check_process_metrics();
    LazyLock::force(&LOG_LINES_DROPPED);
    LazyLock::force(&DROPPED_PARAMETERS);
    LazyLock::force(&UPSTREAM_RESOLVE_FAILURES);
    LazyLock::force(&CONNECTIONS_OPEN);
    LazyLock::force(&SHADOW_REMOVED);
    LazyLock::force(&POLICY_SHADOW_CLIENTS);
    LazyLock::force(&TOKEN_BINDINGS);
    LazyLock::force(&TOKEN_BINDINGS_UNSHARED);
    for kind in ["access", "refresh"] {
        TOKENS_BOUND.series(&[kind]);
    }
    for reason in ["expired", "capacity"] {
        TOKEN_BINDINGS_REMOVED.series(&[reason]);
    }
    for reason in ["unknown", "expired", "revoked", "not_allowed"] {
        TOKEN_REFUSALS.series(&[reason]);
    }
    for limit in ["per_address", "total"] {
        CONNECTIONS_REFUSED.series(&[limit]);
    }
    LazyLock::force(&TLS_RELOADS);
    LazyLock::force(&TLS_CERTIFICATE_EXPIRY);
    // Series that exist from the start at 0, so `increase()` and alerts see
    // the first failure rather than a series appearing at 1.
    for source in ["file", "api", "signal", "etcd"] {
        for result in ["success", "failure"] {
            POLICY_RELOADS.series(&[source, result]);
        }
    }
    for direction in ["request", "response"] {
        FILTERED_ATTRIBUTES.series(&[direction]);
        for reason in ["malformed", "too_large", "encoding"] {
            FILTER_FAILURES.series(&[direction, reason]);
        }
    }
    for kind in ["connect", "timeout", "protocol", "too_large"] {
        UPSTREAM_ERRORS.series(&[kind]);
    }
    for direction in ["in", "out"] {
        BYTES.series(&[direction]);
    }
    for phase in ["header", "body"] {
        CLIENT_TIMEOUTS.series(&[phase]);
    }
    for route in ROUTE_LABELS {
        DROPPED_PARAMETERS.series(&[route]);
    }
    for reason in ["resets", "malformed", "h2"] {
        HTTP2_GOAWAYS.series(&[reason]);
    }
    let failures = FAILURES.lock().unwrap_or_else(|p| p.into_inner());
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_metric_registers() {
        super::init().expect("every metric is made and registered once");
        super::policy_activated(1, 3, "aaaa", 0);
        super::policy_activated(2, 3, "bbbb", 0);
        let names: Vec<String> = prometheus::gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        assert!(names.iter().any(|n| n == "recordgate_build_info"));
        assert!(names.iter().any(|n| n == "recordgate_policy_version"));
        assert!(names.iter().any(|n| n.starts_with("process_")));
        let hashes: Vec<String> = prometheus::gather()
            .iter()
            .filter(|f| f.name() == "recordgate_policy_info")
            .flat_map(|f| f.get_metric().to_vec())
            .map(|m| m.get_label()[0].value().to_string())
            .collect();
        assert_eq!(hashes, ["bbbb"], "the old hash's series is removed");
    }
}
