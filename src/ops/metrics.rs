//! Prometheus metrics, registered in the default registry that
//! `pingora_prometheus` serves. Names follow Prometheus conventions.

use std::sync::LazyLock;

use std::cell::RefCell;

use prometheus::{
    register_gauge, register_histogram_vec, register_int_counter_vec, register_int_gauge,
    register_int_gauge_vec, Gauge, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec,
};

// A registration failure means a name clash in our own code: metrics are
// then missing, but requests must not fail because of it.
fn or_unregistered<T>(r: prometheus::Result<T>, fallback: impl FnOnce() -> T) -> T {
    r.unwrap_or_else(|e| {
        tracing::error!(error = %e, "metric registration failed");
        fallback()
    })
}

macro_rules! counter_vec {
    ($name:expr, $help:expr, $labels:expr) => {
        LazyLock::new(|| {
            or_unregistered(register_int_counter_vec!($name, $help, $labels), || {
                IntCounterVec::new(prometheus::Opts::new($name, $help), $labels)
                    .unwrap_or_else(|_| unreachable_metric())
            })
        })
    };
}

fn unreachable_metric<T>() -> T {
    // Only reachable if the metric definition itself is invalid, which the
    // unit test below rules out for every metric.
    std::process::abort()
}

pub static REQUESTS: LazyLock<IntCounterVec> = counter_vec!(
    "recordgate_requests_total",
    "Requests by route, decision (allowed or denial reason) and HTTP status.",
    &["route", "decision", "status"]
);

pub static CLIENT_REQUESTS: LazyLock<IntCounterVec> = counter_vec!(
    "recordgate_client_requests_total",
    "Requests by API client and decision; only when the per-client label is enabled.",
    &["client", "decision"]
);

pub static FILTERED_ATTRIBUTES: LazyLock<IntCounterVec> = counter_vec!(
    "recordgate_filtered_attributes_total",
    "Attributes removed by the access-schema filter, by direction (request, response).",
    &["direction"]
);

pub static FILTER_FAILURES: LazyLock<IntCounterVec> = counter_vec!(
    "recordgate_filter_failures_total",
    "Bodies refused because they could not be filtered, by direction and reason (malformed, too_large, encoding).",
    &["direction", "reason"]
);

pub static UPSTREAM_ERRORS: LazyLock<IntCounterVec> = counter_vec!(
    "recordgate_upstream_errors_total",
    "Upstream failures by kind (connect, timeout, protocol, too_large).",
    &["kind"]
);

pub static CLIENT_TIMEOUTS: LazyLock<IntCounterVec> = counter_vec!(
    "recordgate_client_timeouts_total",
    "Client connections cut off for sending too slowly, by phase (header, body).",
    &["phase"]
);

pub static BYTES: LazyLock<IntCounterVec> = counter_vec!(
    "recordgate_body_bytes_total",
    "Body bytes by direction (in from clients, out to clients).",
    &["direction"]
);

pub static POLICY_RELOADS: LazyLock<IntCounterVec> = counter_vec!(
    "recordgate_policy_reloads_total",
    "Policy reloads by source (file, api, signal) and result (success, failure).",
    &["source", "result"]
);

pub static DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    let buckets = vec![
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0,
    ];
    let opts = prometheus::HistogramOpts::new(
        "recordgate_request_duration_seconds",
        "Request duration by stage: total, upstream, and gateway (the time the gateway adds).",
    )
    .buckets(buckets);
    or_unregistered(register_histogram_vec!(opts.clone(), &["stage"]), || {
        HistogramVec::new(opts, &["stage"]).unwrap_or_else(|_| unreachable_metric())
    })
});

pub static POLICY_VERSION: LazyLock<IntGauge> = LazyLock::new(|| {
    or_unregistered(
        register_int_gauge!(
            "recordgate_policy_version",
            "Version of the active policy snapshot."
        ),
        || IntGauge::new("recordgate_policy_version", "x").unwrap_or_else(|_| unreachable_metric()),
    )
});

pub static POLICY_CLIENTS: LazyLock<IntGauge> = LazyLock::new(|| {
    or_unregistered(
        register_int_gauge!(
            "recordgate_policy_clients",
            "API clients in the active policy."
        ),
        || IntGauge::new("recordgate_policy_clients", "x").unwrap_or_else(|_| unreachable_metric()),
    )
});

pub static POLICY_LAST_RELOAD: LazyLock<Gauge> = LazyLock::new(|| {
    or_unregistered(
        register_gauge!(
            "recordgate_policy_last_reload_success_timestamp_seconds",
            "Unix time of the last successful policy load."
        ),
        || {
            Gauge::new(
                "recordgate_policy_last_reload_success_timestamp_seconds",
                "x",
            )
            .unwrap_or_else(|_| unreachable_metric())
        },
    )
});

pub static BUILD_INFO: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    or_unregistered(
        register_int_gauge_vec!("recordgate_build_info", "Build information.", &["version"]),
        || {
            IntGaugeVec::new(
                prometheus::Opts::new("recordgate_build_info", "x"),
                &["version"],
            )
            .unwrap_or_else(|_| unreachable_metric())
        },
    )
});

pub static LOG_LINES_DROPPED: LazyLock<IntCounter> = LazyLock::new(|| {
    or_unregistered(
        prometheus::register_int_counter!(
            "recordgate_log_lines_dropped_total",
            "Log lines dropped because the log writer fell behind (logging never blocks a request)"
        ),
        || {
            IntCounter::new("recordgate_log_lines_dropped_total", "dropped log lines")
                .unwrap_or_else(|_| unreachable_metric())
        },
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
pub static BYTES_IN: LazyLock<IntCounter> = LazyLock::new(|| BYTES.with_label_values(&["in"]));
pub static BYTES_OUT: LazyLock<IntCounter> = LazyLock::new(|| BYTES.with_label_values(&["out"]));
pub static FILTERED_REQUEST: LazyLock<IntCounter> =
    LazyLock::new(|| FILTERED_ATTRIBUTES.with_label_values(&["request"]));
pub static FILTERED_RESPONSE: LazyLock<IntCounter> =
    LazyLock::new(|| FILTERED_ATTRIBUTES.with_label_values(&["response"]));
pub static DURATION_TOTAL: LazyLock<Histogram> =
    LazyLock::new(|| DURATION.with_label_values(&["total"]));
pub static DURATION_UPSTREAM: LazyLock<Histogram> =
    LazyLock::new(|| DURATION.with_label_values(&["upstream"]));
pub static DURATION_GATEWAY: LazyLock<Histogram> =
    LazyLock::new(|| DURATION.with_label_values(&["gateway"]));

thread_local! {
    static REQUEST_SERIES: RefCell<Vec<(&'static str, &'static str, u16, IntCounter)>> =
        const { RefCell::new(Vec::new()) };
}

/// Counts one request in `recordgate_requests_total`. The handful of
/// (route, decision, status) series a worker thread sees are kept per thread
/// rather than looked up by label every time.
pub fn count_request(route: &'static str, decision: &'static str, status: u16) {
    let hit = REQUEST_SERIES.with(|cache| {
        let cache = cache.borrow();
        cache
            .iter()
            .find(|(r, d, s, _)| *s == status && r == &route && d == &decision)
            .map(|(.., c)| c.inc())
            .is_some()
    });
    if hit {
        return;
    }
    let counter = REQUESTS.with_label_values(&[route, decision, &status.to_string()]);
    counter.inc();
    REQUEST_SERIES.with(|cache| {
        let mut cache = cache.borrow_mut();
        // Bounded: routes, decisions and statuses are few, but an upstream
        // could vary its status; past this the lookup path is used.
        if cache.len() < 64 {
            cache.push((route, decision, status, counter));
        }
    });
}

/// Records that a policy snapshot became active.
pub fn policy_activated(version: u64, clients: usize) {
    POLICY_VERSION.set(version as i64);
    POLICY_CLIENTS.set(clients as i64);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    POLICY_LAST_RELOAD.set(now);
}

pub fn init() {
    BUILD_INFO
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
    LazyLock::force(&REQUESTS);
    LazyLock::force(&FILTERED_ATTRIBUTES);
    LazyLock::force(&FILTER_FAILURES);
    LazyLock::force(&UPSTREAM_ERRORS);
    LazyLock::force(&BYTES);
    LazyLock::force(&POLICY_RELOADS);
    LazyLock::force(&DURATION);
    LazyLock::force(&LOG_LINES_DROPPED);
    // Series that exist from the start at 0, so `increase()` and alerts see
    // the first failure rather than a series appearing at 1.
    for source in ["file", "api", "signal"] {
        for result in ["success", "failure"] {
            POLICY_RELOADS.with_label_values(&[source, result]);
        }
    }
    for direction in ["request", "response"] {
        FILTERED_ATTRIBUTES.with_label_values(&[direction]);
        for reason in ["malformed", "too_large", "encoding"] {
            FILTER_FAILURES.with_label_values(&[direction, reason]);
        }
    }
    for kind in ["connect", "timeout", "protocol", "too_large"] {
        UPSTREAM_ERRORS.with_label_values(&[kind]);
    }
    for direction in ["in", "out"] {
        BYTES.with_label_values(&[direction]);
    }
    for phase in ["header", "body"] {
        CLIENT_TIMEOUTS.with_label_values(&[phase]);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_metric_registers() {
        super::init();
        super::policy_activated(1, 3);
        let names: Vec<String> = prometheus::gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        assert!(names.iter().any(|n| n == "recordgate_build_info"));
        assert!(names.iter().any(|n| n == "recordgate_policy_version"));
    }
}
