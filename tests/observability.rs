//! Observability: the Prometheus exposition on the operator listener, the
//! health endpoints, `/status`, the JSON access log (one event per request,
//! no secret or record value), `X-Request-Id` propagation, `promtool check
//! metrics`, and a real Prometheus server scraping the gateway and evaluating
//! every query of the Grafana dashboard and of the alert rules.
//!
//! `promtool` and `prometheus` are optional on the machine: the checks that
//! need them print a note and skip when they are not on PATH (Debian package
//! `prometheus` provides both).
// A test (or bench) that cannot set up fails loudly; the no-panic rule is for the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------
// Exposition parsing
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Debug, Default)]
struct Exposition {
    /// `# TYPE` of each metric family.
    types: HashMap<String, String>,
    samples: Vec<Sample>,
}

impl Exposition {
    fn parse(text: &str) -> Exposition {
        let mut out = Exposition::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split_whitespace();
                let (Some(n), Some(t)) = (it.next(), it.next()) else {
                    panic!("bad TYPE line {line:?}");
                };
                out.types.insert(n.to_string(), t.to_string());
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            out.samples.push(parse_sample(line));
        }
        out
    }

    /// Samples named `name` whose labels include every pair of `want`.
    fn select(&self, name: &str, want: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                want.iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    fn sum(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        self.select(name, want).iter().map(|s| s.value).sum()
    }

    /// Sum of `name` grouped by one label.
    fn by(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let mut m = BTreeMap::new();
        for s in self.select(name, &[]) {
            let k = s.labels.get(label).cloned().unwrap_or_default();
            *m.entry(k).or_insert(0.0) += s.value;
        }
        m
    }
}

fn parse_sample(line: &str) -> Sample {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => panic!("bad sample line {line:?}"),
    };
    let mut labels = BTreeMap::new();
    let mut rest = rest;
    if let Some(body) = rest.strip_prefix('{') {
        // name="value" pairs; values may hold escaped quotes.
        let mut chars = body.char_indices().peekable();
        let mut key = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '}' => {
                    end = Some(i);
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
                    let mut val = String::new();
                    loop {
                        match chars.next() {
                            Some((_, '\\')) => {
                                if let Some((_, e)) = chars.next() {
                                    val.push(match e {
                                        'n' => '\n',
                                        other => other,
                                    });
                                }
                            }
                            Some((_, '"')) => break,
                            Some((_, ch)) => val.push(ch),
                            None => panic!("unterminated label value in {line:?}"),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), val);
                }
                ch => key.push(ch),
            }
        }
        let end = end.unwrap_or_else(|| panic!("unterminated labels in {line:?}"));
        rest = &body[end + 1..];
    }
    let value_str = rest.split_whitespace().next().unwrap_or("");
    let value = match value_str {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}")),
    };
    Sample {
        name: name.to_string(),
        labels,
        value,
    }
}

/// The metric names of the README's "Metrics" table, with their types.
fn documented_metrics() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(repo_path("README.md")).unwrap();
    let section = readme
        .split("\n## Metrics")
        .nth(1)
        .expect("README has a Metrics section");
    let section = section.split("\n## ").next().unwrap();
    let mut out = Vec::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let first_cell = line.split('|').nth(1).unwrap();
        let kind = if first_cell.contains("histogram") {
            "histogram"
        } else {
            ""
        };
        for name in first_cell.split('`').skip(1).step_by(2) {
            let kind = if !kind.is_empty() {
                kind
            } else if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            out.push((name.to_string(), kind.to_string()));
        }
    }
    assert!(
        out.len() >= 10,
        "README Metrics table not understood: {out:?}"
    );
    out
}

/// Waits (bounded) until the exposition satisfies `done`, returning the last one.
fn scrape_until(gw: &Gateway, what: &str, done: impl Fn(&Exposition) -> bool) -> Exposition {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = gw.scrape();
        let e = Exposition::parse(&text);
        if done(&e) {
            return e;
        }
        if Instant::now() > deadline {
            panic!("{what}: not reached within 10 s; last exposition:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `logging()` updates the counters, then the histograms, the gateway one
/// last: once it has counted `n` requests, every metric of them is in.
fn fully_counted(e: &Exposition, n: usize) -> bool {
    e.sum("recordgate_gateway_duration_seconds_count", &[]) as usize >= n
}

fn on_path(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `promtool check metrics` on `text`, or a printed note when promtool is absent.
fn promtool_check_metrics(text: &str) {
    if !on_path("promtool") {
        println!("NOTE: promtool not on PATH; `promtool check metrics` skipped");
        return;
    }
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = wait_output(child, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- exposition ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `wait_with_output` with a bound: the child is killed after `timeout`.
fn wait_output(mut child: Child, timeout: Duration) -> std::process::Output {
    if wait_child(&mut child, timeout).is_none() {
        let _ = child.kill();
        panic!("child did not finish within {timeout:?}");
    }
    child.wait_with_output().unwrap()
}

// ---------------------------------------------------------------------------
// Traffic
// ---------------------------------------------------------------------------

/// A fixed mix of allowed and denied calls; returns the expected count per
/// `decision` and the expected `(decision, status)` pairs.
fn mixed_calls(gw: &Gateway) -> BTreeMap<&'static str, usize> {
    let mut expected: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut note = |d: &'static str| *expected.entry(d).or_default() += 1;

    // allowed: filtered reads, a full read, a stripped write
    for _ in 0..3 {
        let r = gw.get_as("reader", "/entity?type_name=user&id=7");
        r.assert_ok();
        note("allowed");
    }
    for _ in 0..2 {
        gw.post_as("owner", "/entity.find", &[("type_name", "user")])
            .assert_ok();
        note("allowed");
    }
    gw.post_as(
        "writer",
        "/entity.update",
        &[
            ("type_name", "user"),
            ("id", "7"),
            ("attributes", r#"{"givenName":"Ann","email":"a@b.c"}"#),
        ],
    )
    .assert_ok();
    note("allowed");

    // credentials
    for _ in 0..2 {
        gw.get("/entity?type_name=user&id=7", Some(("reader", "wrong")))
            .assert_error(401, 402, "invalid_client_credentials");
        note("credentials");
    }
    // feature
    gw.get_as("login", "/entity?type_name=user&id=7")
        .assert_error(403, 403, "client_permission_error");
    note("feature");
    // ip
    gw.get_as("offsite", "/entity?type_name=user&id=7")
        .assert_error(403, 403, "client_permission_error");
    note("ip");
    // oracle: a query naming a hidden attribute
    gw.post_as(
        "reader",
        "/entity.find",
        &[("type_name", "user"), ("filter", "email = 'x@y.z'")],
    )
    .assert_error(403, 403, "client_permission_error");
    note("oracle");
    // schema: a reject-mode client writing outside its write schema
    gw.post_as(
        "rejecter",
        "/entity.update",
        &[
            ("type_name", "user"),
            ("id", "7"),
            ("attributes", r#"{"email":"a@b.c"}"#),
        ],
    )
    .assert_error(403, 403, "client_permission_error");
    note("schema");
    // route
    let r = gw.get_as("owner", "/no.such.endpoint");
    assert_eq!(r.status, 404, "{}", r.text());
    note("route");
    // limit: body over limits.max_request_body_bytes (4096 in these tests)
    let big = "x".repeat(10_000);
    let r = gw.post_as(
        "owner",
        "/entity.update",
        &[("type_name", "user"), ("id", "7"), ("attributes", &big)],
    );
    assert_eq!(r.status, 413, "{}", r.text());
    note("limit");
    // rate_limited: a client with a burst of 1 and one call per 1000 s
    let count = "/entity.count?type_name=user";
    gw.get_as("limited", count).assert_ok();
    note("allowed");
    gw.get_as("limited", count)
        .assert_error(429, 510, "api_limit_error");
    note("rate_limited");
    expected
}

fn metrics_gateway(up: &TestUpstream, metrics: Value) -> Gateway {
    GatewayBuilder::new(up)
        .metrics(metrics)
        .setting("limits", json!({"max_request_body_bytes": 4096}))
        .start()
}

// ---------------------------------------------------------------------------
// /metrics
// ---------------------------------------------------------------------------

#[test]
fn metrics_expose_every_documented_name_with_its_type_and_exact_counts() {
    let up = TestUpstream::capture_like();
    // The default clients and one with a rate limit (for `rate_limited`).
    let policy = format!(
        "{}  limited:\n    secret: limited-secret\n    features: [direct_read_access]\n    rate_limit: {{requests_per_second: 0.001, burst: 1}}\n",
        default_policy()
    );
    let gw = GatewayBuilder::new(&up)
        .policy(&policy)
        .metrics(json!({"client_label": "on"}))
        .setting("limits", json!({"max_request_body_bytes": 4096}))
        .start();
    let expected = mixed_calls(&gw);
    let total: usize = expected.values().sum();

    let e = scrape_until(&gw, "all requests counted", |e| fully_counted(e, total));

    // Every documented metric is there, with the right type. The TLS ones
    // have series only for a TLS listener (tests/tls.rs checks them),
    // shadow removals only for a client with a shadow schema
    // (tests/shadow.rs), and the policy store's only with the etcd store
    // (tests/fleet.rs).
    for (name, kind) in documented_metrics().into_iter().filter(|(n, _)| {
        !n.starts_with("recordgate_tls_")
            && !n.starts_with("recordgate_policy_store_")
            && n != "recordgate_shadow_removed_attributes_total"
    }) {
        assert_eq!(
            e.types.get(&name).map(String::as_str),
            Some(kind.as_str()),
            "# TYPE of {name}"
        );
        let sample_name = if kind == "histogram" {
            format!("{name}_count")
        } else {
            name.clone()
        };
        assert!(
            !e.select(&sample_name, &[]).is_empty(),
            "{name} has no sample"
        );
    }

    // Requests by decision match the calls made, exactly.
    let by_decision = e.by("recordgate_requests_total", "decision");
    let want: BTreeMap<String, f64> = expected
        .iter()
        .map(|(k, v)| (k.to_string(), *v as f64))
        .collect();
    assert_eq!(by_decision, want, "recordgate_requests_total by decision");
    // ... and carry the status and route.
    assert_eq!(
        e.sum(
            "recordgate_requests_total",
            &[
                ("decision", "credentials"),
                ("status", "401"),
                ("route", "/entity")
            ]
        ),
        2.0
    );
    assert_eq!(
        e.sum(
            "recordgate_requests_total",
            &[
                ("decision", "allowed"),
                ("status", "200"),
                ("route", "/entity")
            ]
        ),
        3.0
    );
    assert_eq!(
        e.sum(
            "recordgate_requests_total",
            &[("decision", "limit"), ("status", "413")]
        ),
        1.0
    );

    assert_eq!(
        e.sum("recordgate_rate_limited_total", &[("client", "limited")]),
        1.0
    );
    // Per-client counter (client_label: on): authenticated callers only.
    assert_eq!(
        e.sum(
            "recordgate_client_requests_total",
            &[("client", "reader"), ("decision", "allowed")]
        ),
        3.0
    );
    assert_eq!(
        e.sum(
            "recordgate_client_requests_total",
            &[("client", "login"), ("decision", "feature")]
        ),
        1.0
    );
    assert_eq!(
        e.sum("recordgate_client_requests_total", &[("client", "owner")]),
        2.0,
        "owner: the 2 finds; the unknown route and the oversize body are refused before authentication"
    );

    // Histograms: one observation per request for total and gateway, one
    // per upstream call for upstream, each under the request's route.
    for name in [
        "recordgate_request_duration_seconds",
        "recordgate_gateway_duration_seconds",
    ] {
        assert_eq!(e.sum(&format!("{name}_count"), &[]), total as f64, "{name}");
        assert_eq!(
            e.sum(&format!("{name}_bucket"), &[("le", "+Inf")]),
            total as f64,
            "{name}"
        );
        assert_eq!(
            e.by(&format!("{name}_count"), "route"),
            e.by("recordgate_requests_total", "route"),
            "{name} by route"
        );
    }
    assert_eq!(
        e.sum("recordgate_upstream_duration_seconds_count", &[]),
        7.0,
        "seven allowed calls reached the upstream (and no rate-limited one)"
    );
    assert_eq!(
        e.sum(
            "recordgate_upstream_duration_seconds_count",
            &[("route", "/entity")]
        ),
        3.0,
        "the three allowed reads of /entity"
    );
    // The active policy's hash, one series; the process collector.
    let info = e.select("recordgate_policy_info", &[]);
    assert_eq!(info.len(), 1, "{info:?}");
    assert_eq!(info[0].value, 1.0);
    assert!(info[0].labels["hash"].len() >= 8, "{info:?}");
    assert!(e.sum("process_resident_memory_bytes", &[]) > 0.0);
    assert!(e.sum("process_start_time_seconds", &[]) > 0.0);
    assert_eq!(up.count(), 7);

    // Filtering, bytes, failures, policy, build info.
    assert!(
        e.sum(
            "recordgate_filtered_attributes_total",
            &[("direction", "response")]
        ) > 0.0
    );
    assert_eq!(
        e.sum(
            "recordgate_filtered_attributes_total",
            &[("direction", "request")]
        ),
        1.0,
        "the writer's email was stripped"
    );
    assert!(e.sum("recordgate_body_bytes_total", &[("direction", "in")]) > 0.0);
    assert!(e.sum("recordgate_body_bytes_total", &[("direction", "out")]) > 0.0);
    assert_eq!(
        e.sum(
            "recordgate_filter_failures_total",
            &[("direction", "request"), ("reason", "too_large")]
        ),
        1.0
    );
    for kind in ["connect", "timeout", "protocol", "too_large"] {
        assert_eq!(
            e.select("recordgate_upstream_errors_total", &[("kind", kind)])
                .len(),
            1,
            "upstream error kind {kind} pre-initialised"
        );
    }
    assert_eq!(e.sum("recordgate_upstream_errors_total", &[]), 0.0);
    assert_eq!(e.sum("recordgate_policy_version", &[]), 1.0);
    assert_eq!(e.sum("recordgate_policy_clients", &[]), 10.0);
    let loaded = e.sum(
        "recordgate_policy_last_reload_success_timestamp_seconds",
        &[],
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        loaded > now - 120.0 && loaded <= now + 1.0,
        "last reload {loaded} vs now {now}"
    );
    assert_eq!(
        e.select(
            "recordgate_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        )
        .len(),
        1
    );
    for source in ["file", "api", "signal"] {
        for result in ["success", "failure"] {
            assert_eq!(
                e.select(
                    "recordgate_policy_reloads_total",
                    &[("source", source), ("result", result)]
                )
                .len(),
                1,
                "reload series {source}/{result} pre-initialised"
            );
        }
    }

    promtool_check_metrics(&gw.scrape());
}

/// A client that sends its body slowly makes the request slow, not the
/// gateway: the wait is in the total and the access log's client_wait_ms,
/// not in recordgate_gateway_duration_seconds.
#[test]
fn a_slow_client_body_is_not_gateway_time() {
    let up = TestUpstream::capture_like();
    let gw = GatewayBuilder::new(&up)
        .metrics(json!({}))
        .setting("log", json!({"format": "json"}))
        .start();
    let body = "type_name=user";
    let head = format!(
        "POST /entity.find HTTP/1.1\r\nHost: gw\r\nAuthorization: {}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        basic("reader", "reader-secret"),
        body.len()
    );
    let mut s = gw.connect();
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body.as_bytes()[..4]).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    s.write_all(&body.as_bytes()[4..]).unwrap();
    let r = read_raw_response(&mut s, false);
    assert_eq!(r.status(), 200);

    let e = scrape_until(&gw, "the request counted", |e| fully_counted(e, 1));
    let route = [("route", "/entity.find")];
    let le = |name: &str, bound: &str| e.sum(&format!("{name}_bucket"), &[route[0], ("le", bound)]);
    assert_eq!(
        le("recordgate_request_duration_seconds", "0.25"),
        0.0,
        "total"
    );
    assert_eq!(
        le("recordgate_request_duration_seconds", "0.5"),
        1.0,
        "total"
    );
    assert_eq!(
        le("recordgate_gateway_duration_seconds", "0.1"),
        1.0,
        "the gateway's own work excludes the 400 ms wait"
    );
    assert_eq!(
        e.sum("recordgate_upstream_duration_seconds_count", &route),
        1.0
    );

    let rid = r.header("x-request-id").unwrap().to_string();
    let log = wait_access_events(&gw, &[&rid]);
    let ev = access_events(&log)
        .into_iter()
        .find(|e| e["request_id"] == rid.as_str())
        .unwrap();
    assert!(ev["client_wait_ms"].as_f64().unwrap() >= 350.0, "{ev}");
    assert!(ev["gateway_ms"].as_f64().unwrap() < 100.0, "{ev}");
    // The clock starts once the header is read, a little after the sleep began.
    assert!(ev["total_ms"].as_f64().unwrap() >= 350.0, "{ev}");
    assert_eq!(ev["bytes_in"], body.len(), "{ev}");
}

/// Two authenticated calls (one allowed, one denied); the number of
/// per-client series. (A credentials denial has no verified client.)
fn client_series(gw: &Gateway) -> usize {
    gw.get_as("reader", "/entity?type_name=user&id=7")
        .assert_ok();
    gw.get_as("login", "/entity?type_name=user&id=7")
        .assert_error(403, 403, "client_permission_error");
    let e = scrape_until(gw, "two requests counted", |e| fully_counted(e, 2));
    e.select("recordgate_client_requests_total", &[]).len()
}

#[test]
fn per_client_label_follows_the_setting() {
    let up = TestUpstream::capture_like();
    let on = metrics_gateway(&up, json!({"client_label": "on"}));
    assert_eq!(client_series(&on), 2, "{}", on.scrape());
    drop(on);

    let off = metrics_gateway(&up, json!({"client_label": "off"}));
    assert_eq!(client_series(&off), 0, "{}", off.scrape());
    assert!(!off.scrape().contains("client=\"login\""));
    drop(off);

    // auto: on below the bound (9 clients <= 200, the default) ...
    let auto = metrics_gateway(&up, json!({}));
    assert_eq!(client_series(&auto), 2, "{}", auto.scrape());
    drop(auto);
    // ... off above it.
    let bounded = metrics_gateway(
        &up,
        json!({"client_label": "auto", "client_label_max_clients": 3}),
    );
    assert_eq!(client_series(&bounded), 0, "{}", bounded.scrape());
}

// ---------------------------------------------------------------------------
// Health and status
// ---------------------------------------------------------------------------

#[test]
fn healthz_and_readyz_follow_the_upstream() {
    let up = TestUpstream::capture_like();
    let gw = metrics_gateway(&up, json!({}));
    let h = gw.admin_get("/healthz");
    assert_eq!(h.status, 200, "{}", h.text());
    let r = gw.admin_get("/readyz");
    assert_eq!(r.status, 200, "{}", r.text());
    let n = gw.admin_get("/nope");
    assert_eq!(n.status, 404);

    // An upstream nobody listens on: alive, not ready.
    let dead = format!("127.0.0.1:{}", free_port());
    let gw = GatewayBuilder::to_server(&dead).metrics(json!({})).start();
    assert_eq!(gw.admin_get("/healthz").status, 200);
    let r = gw.admin_get("/readyz");
    assert_eq!(r.status, 503, "{}", r.text());
}

#[test]
fn status_reports_policy_version_hash_and_reloads() {
    let up = TestUpstream::capture_like();
    let gw = metrics_gateway(&up, json!({}));
    let s = gw.admin_get("/status");
    assert_eq!(s.status, 200);
    assert!(
        s.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{:?}",
        s.headers
    );
    let v = s.json();
    let p = &v["policy"];
    assert_eq!(p["version"], 1, "{v}");
    let hash = p["hash"].as_str().unwrap_or_default().to_string();
    assert!(hash.len() >= 8, "policy hash: {v}");
    assert_eq!(p["clients"], 9, "{v}");
    assert_eq!(p["last_reload"]["result"], "success", "{v}");
    assert!(p["last_reload"]["source"].is_string(), "{v}");
    assert!(p["last_reload"]["at_unix"].as_i64().unwrap_or(0) > 0, "{v}");
    assert!(v["build"]["version"].is_string(), "{v}");

    // SIGHUP re-reads the unchanged file: a successful load of the same
    // content (same version and hash), counted with source "signal".
    gw.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    let v = loop {
        let v = gw.admin_get("/status").json();
        if v["policy"]["last_reload"]["source"] == "signal" {
            break v;
        }
        assert!(Instant::now() < deadline, "SIGHUP not applied: {v}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(v["policy"]["version"], 1, "{v}");
    assert_eq!(v["policy"]["hash"], hash.as_str(), "{v}");
    assert_eq!(v["policy"]["last_reload"]["result"], "success", "{v}");
    let e = scrape_until(&gw, "signal reload counted", |e| {
        e.sum(
            "recordgate_policy_reloads_total",
            &[("source", "signal"), ("result", "success")],
        ) >= 1.0
    });
    assert_eq!(e.sum("recordgate_policy_version", &[]), 1.0);
    assert_eq!(
        e.select("recordgate_policy_info", &[("hash", &hash)]).len(),
        1,
        "the hash /status shows"
    );
    assert_eq!(e.select("recordgate_policy_info", &[]).len(), 1);

    // An edited file: new version and hash, source "file".
    let edited = format!(
        "{}\n  extra:\n    secret: extra-secret\n    features: [login_client]\n",
        default_policy().trim_end()
    );
    std::fs::write(gw.dir.path().join("policy.yaml"), edited).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let v = loop {
        let v = gw.admin_get("/status").json();
        if v["policy"]["version"].as_u64() >= Some(2) {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "edited policy not loaded: {v}\n{}",
            gw.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(v["policy"]["version"], 2, "{v}");
    assert_ne!(v["policy"]["hash"], hash.as_str(), "{v}");
    assert_eq!(v["policy"]["clients"], 10, "{v}");
    assert_eq!(v["policy"]["last_reload"]["source"], "file", "{v}");
    let e = scrape_until(&gw, "file reload counted", |e| {
        e.sum(
            "recordgate_policy_reloads_total",
            &[("source", "file"), ("result", "success")],
        ) >= 1.0
    });
    assert_eq!(e.sum("recordgate_policy_version", &[]), 2.0);
    assert_eq!(e.sum("recordgate_policy_clients", &[]), 10.0);
    // recordgate_policy_info shows the new hash only: the old series is gone.
    let new_hash = v["policy"]["hash"].as_str().unwrap();
    let info = e.select("recordgate_policy_info", &[]);
    assert_eq!(info.len(), 1, "{info:?}");
    assert_eq!(info[0].labels["hash"], new_hash, "{info:?}");
    assert_eq!(info[0].value, 1.0);

    // A broken policy file is rejected: failure reported, version kept.
    std::fs::write(gw.dir.path().join("policy.yaml"), "clients: [unclosed\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let v = loop {
        let v = gw.admin_get("/status").json();
        if v["policy"]["last_reload"]["result"] == "failure" {
            break v;
        }
        assert!(Instant::now() < deadline, "bad file not noticed: {v}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(v["policy"]["version"], 2, "{v}");
    assert_eq!(v["policy"]["last_reload"]["source"], "file", "{v}");
    assert!(
        !v["policy"]["last_reload"]["errors"]
            .as_array()
            .map(Vec::is_empty)
            .unwrap_or(true),
        "{v}"
    );
    let e = scrape_until(&gw, "file reload failure counted", |e| {
        e.sum(
            "recordgate_policy_reloads_total",
            &[("source", "file"), ("result", "failure")],
        ) >= 1.0
    });
    assert_eq!(e.sum("recordgate_policy_version", &[]), 2.0);
    // The running policy still answers.
    gw.get_as("reader", "/entity?type_name=user&id=7")
        .assert_ok();
}

// ---------------------------------------------------------------------------
// Access log
// ---------------------------------------------------------------------------

const LOG_SECRET_READER: &str = "SECRETREADER-Q7Z3W9";
const LOG_SECRET_WRITER: &str = "SECRETWRITER-K9V1M4";
const LOG_WRONG_SECRET: &str = "WRONGSECRET-X5T8P2";
const LOG_WRITTEN_VALUE: &str = "WRITTENVALUE-R2D2Q";
const LOG_REJECTED_VALUE: &str = "REJECTEDVALUE-C3PO7";
const LOG_PROBE_VALUE: &str = "PROBEVALUE-BB8ZZ";

fn log_policy() -> String {
    policy_with_clients(&format!(
        r#"
clients:
  logreader:
    secret: "{LOG_SECRET_READER}"
    features: [direct_read_access]
    access_schemas:
      user:
        read: [givenName]
        write: []
  logwriter:
    secret: "{LOG_SECRET_WRITER}"
    features: [direct_access]
    on_write_violation: reject
    access_schemas:
      user:
        read: [givenName]
        write: [givenName]
"#
    ))
}

/// Calls whose requests or responses carry secrets and record values;
/// returns the X-Request-Id of every response.
fn sensitive_calls(gw: &Gateway) -> Vec<String> {
    let mut ids = Vec::new();
    let mut keep = |r: Resp| {
        ids.push(
            r.header("x-request-id")
                .expect("x-request-id on every response")
                .to_string(),
        );
        r
    };
    let rd = Some(("logreader", LOG_SECRET_READER));
    let wr = Some(("logwriter", LOG_SECRET_WRITER));
    // Allowed read: the upstream's record holds the HIDDEN_VALUES and "Ada7".
    keep(gw.get("/entity?type_name=user&id=7", rd)).assert_ok();
    keep(gw.post_form("/entity.find", rd, &[("type_name", "user")])).assert_ok();
    // Wrong secret (Basic) and form credentials.
    keep(gw.get(
        "/entity?type_name=user&id=7",
        Some(("logreader", LOG_WRONG_SECRET)),
    ))
    .assert_error(401, 402, "invalid_client_credentials");
    keep(gw.post_form(
        "/entity",
        None,
        &[
            ("client_id", "logreader"),
            ("client_secret", LOG_SECRET_READER),
            ("type_name", "user"),
            ("id", "7"),
        ],
    ))
    .assert_ok();
    // A probe of a hidden attribute, with a distinctive value.
    keep(gw.post_form(
        "/entity.find",
        rd,
        &[
            ("type_name", "user"),
            ("filter", &format!("email = '{LOG_PROBE_VALUE}'")),
        ],
    ))
    .assert_error(403, 403, "client_permission_error");
    // An allowed write and a refused one.
    keep(gw.post_form(
        "/entity.update",
        wr,
        &[
            ("type_name", "user"),
            ("id", "7"),
            (
                "attributes",
                &format!(r#"{{"givenName":"{LOG_WRITTEN_VALUE}"}}"#),
            ),
        ],
    ))
    .assert_ok();
    keep(gw.post_form(
        "/entity.update",
        wr,
        &[
            ("type_name", "user"),
            ("id", "7"),
            (
                "attributes",
                &format!(r#"{{"email":"{LOG_REJECTED_VALUE}"}}"#),
            ),
        ],
    ))
    .assert_error(403, 403, "client_permission_error");
    ids
}

fn forbidden_in_logs() -> Vec<String> {
    let mut v: Vec<String> = [
        LOG_SECRET_READER,
        LOG_SECRET_WRITER,
        LOG_WRONG_SECRET,
        LOG_WRITTEN_VALUE,
        LOG_REJECTED_VALUE,
        LOG_PROBE_VALUE,
        "Ada7",
        "Lovelace",
        "Countess",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(HIDDEN_VALUES.iter().map(|s| s.to_string()));
    // The Authorization header values, as sent.
    for (id, secret) in [
        ("logreader", LOG_SECRET_READER),
        ("logwriter", LOG_SECRET_WRITER),
        ("logreader", LOG_WRONG_SECRET),
    ] {
        v.push(basic(id, secret).trim_start_matches("Basic ").to_string());
    }
    v
}

fn access_events(log: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "access")
        .collect()
}

#[test]
fn json_access_log_has_one_event_per_request_and_no_secret_or_value() {
    let up = TestUpstream::capture_like();
    let gw = GatewayBuilder::new(&up)
        .policy(&log_policy())
        .setting("log", json!({"format": "json"}))
        .start();
    let ids = sensitive_calls(&gw);

    // The event is written after the response: wait (bounded) for all.
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = gw.stderr();
        if access_events(&log).len() >= ids.len() || Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Every line is JSON.
    for l in log.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            serde_json::from_str::<Value>(l).is_ok(),
            "log line is not JSON: {l}"
        );
    }
    let events = access_events(&log);
    assert_eq!(
        events.len(),
        ids.len(),
        "one access event per request:\n{log}"
    );
    let logged: BTreeSet<String> = events
        .iter()
        .map(|e| e["request_id"].as_str().unwrap_or("").to_string())
        .collect();
    let sent: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(logged, sent, "request ids of the access log vs responses");

    for e in &events {
        let f = e;
        for key in ["request_id", "client_id", "route", "decision"] {
            assert!(
                f[key].as_str().is_some_and(|s| !s.is_empty()),
                "{key} in {e}"
            );
        }
        assert!(f["status"].as_u64().is_some(), "status in {e}");
        assert!(f["total_ms"].as_f64().is_some(), "total_ms in {e}");
        assert!(f["upstream_ms"].as_f64().is_some(), "upstream_ms in {e}");
        assert_eq!(e["level"], "INFO", "{e}");
    }
    let find = |rid: &str| {
        events
            .iter()
            .find(|e| e["request_id"] == rid)
            .unwrap()
            .clone()
    };
    let first = find(&ids[0]);
    assert_eq!(first["client_id"], "logreader");
    assert_eq!(first["route"], "/entity");
    assert_eq!(first["decision"], "allowed");
    assert_eq!(first["status"], 200);
    assert!(first["upstream_ms"].as_f64().unwrap() > 0.0);
    assert!(first["total_ms"].as_f64().unwrap() >= first["upstream_ms"].as_f64().unwrap());
    let wrong = find(&ids[2]);
    assert_eq!(wrong["decision"], "credentials");
    assert_eq!(wrong["status"], 401);
    assert_eq!(wrong["upstream_ms"].as_f64(), Some(0.0));
    let probe = find(&ids[4]);
    assert_eq!(probe["decision"], "oracle");
    assert_eq!(probe["route"], "/entity.find");
    let rejected = find(&ids[6]);
    assert_eq!(rejected["client_id"], "logwriter");
    assert_eq!(rejected["decision"], "schema");
    assert_eq!(rejected["status"], 403);

    for bad in forbidden_in_logs() {
        assert!(!log.contains(&bad), "{bad:?} appears in the log:\n{log}");
    }
}

#[test]
fn human_log_has_no_secret_or_value_either() {
    let up = TestUpstream::capture_like();
    let gw = GatewayBuilder::new(&up)
        .policy(&log_policy())
        .env("RUST_LOG", "debug")
        .start();
    let ids = sensitive_calls(&gw);
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = gw.stderr();
        if ids.iter().all(|id| log.contains(id.as_str())) || Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for id in &ids {
        assert!(log.contains(id.as_str()), "request id {id} not logged");
    }
    for bad in forbidden_in_logs() {
        assert!(
            !log.contains(&bad),
            "{bad:?} appears in the (debug) log:\n{log}"
        );
    }
}

/// Waits (bounded) for the access events of `ids` and returns the log.
fn wait_access_events(gw: &Gateway, ids: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = gw.stderr();
        let events = access_events(&log);
        if ids
            .iter()
            .all(|id| events.iter().any(|e| e["request_id"] == *id))
        {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "access events of {ids:?} not logged:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A duration field of the raw line (`"name":` in JSON, `name=` in the
/// human format) is a number with at most three decimals.
fn assert_fixed_precision(line: &str, name: &str, sep: &str) {
    let key = format!("{name}{sep}");
    let at = line
        .find(&key)
        .unwrap_or_else(|| panic!("{name} not in {line}"));
    let text: String = line[at + key.len()..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    assert!(!text.is_empty(), "{name} is not a number in {line}");
    let decimals = text.split_once('.').map_or(0, |(_, d)| d.len());
    assert!(
        decimals <= 3,
        "{name}={text}: more than 3 decimals in {line}"
    );
}

/// The human format's text without its colour codes (`ESC [ ... m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

const UA_QUOTED: &str = "probe \"quoted\" agent/1.0 ";

#[test]
fn access_log_has_every_field_for_allowed_refused_and_management_calls() {
    let up = TestUpstream::capture_like();
    let gw = GatewayBuilder::new(&up)
        .setting("log", json!({"format": "json"}))
        .start();
    // Allowed: a query string and a form body; a long user agent with quotes.
    let long_ua = format!("{UA_QUOTED}{}", "x".repeat(400));
    let allowed = gw.send(
        http_client()
            .post(gw.url("/entity?id=7&created=QUERYMARKER-Q1"))
            .header("authorization", basic("reader", "reader-secret"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("user-agent", long_ua.as_str())
            .body("type_name=user"),
    );
    allowed.assert_ok();
    // Refused: wrong credentials, the secret in the query string.
    let refused =
        gw.send(
            http_client()
                .get(gw.url(
                    "/entity?type_name=user&id=7&client_id=reader&client_secret=QUERYSECRET-J8K2",
                ))
                .header("user-agent", "refused-agent"),
        );
    refused.assert_error(401, 402, "invalid_client_credentials");
    // Management: answered by the gateway, no upstream call.
    let managed = gw.post_as("owner", "/clients/list?has_features=%5B%22owner%22%5D", &[]);
    managed.assert_ok();

    let rid = |r: &Resp| r.header("x-request-id").unwrap().to_string();
    let (a_id, r_id, m_id) = (rid(&allowed), rid(&refused), rid(&managed));
    let log = wait_access_events(&gw, &[&a_id, &r_id, &m_id]);
    let line_of = |id: &str| {
        log.lines()
            .find(|l| l.contains("\"target\":\"access\"") && l.contains(id))
            .unwrap()
            .to_string()
    };
    let event = |id: &str| -> Value { serde_json::from_str(&line_of(id)).unwrap() };
    const FIELDS: [&str; 21] = [
        "timestamp",
        "level",
        "request_id",
        "client_id",
        "client_ip",
        "method",
        "path",
        "route",
        "decision",
        "shadow",
        "status",
        "bytes_in",
        "bytes_out",
        "upstream",
        "user_agent",
        "total_ms",
        "upstream_ms",
        "gateway_ms",
        "client_wait_ms",
        "error",
        "target",
    ];
    let check_shape = |e: &Value| {
        let keys: Vec<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, FIELDS, "flat fields, in order: {e}");
        assert_eq!(e["level"], "INFO");
        assert_eq!(e["target"], "access");
        assert!(e["timestamp"].as_str().unwrap().ends_with('Z'), "{e}");
        assert_eq!(e["client_ip"], "127.0.0.1", "{e}");
        assert_eq!(e["error"], "", "{e}");
        let total = e["total_ms"].as_f64().unwrap();
        let upstream = e["upstream_ms"].as_f64().unwrap();
        let gateway = e["gateway_ms"].as_f64().unwrap();
        let wait = e["client_wait_ms"].as_f64().unwrap();
        assert!(
            gateway + upstream + wait <= total + 0.003,
            "the parts exceed the total: {e}"
        );
        assert!(gateway > 0.0, "{e}");
    };

    let a = event(&a_id);
    check_shape(&a);
    assert_eq!(a["request_id"], a_id.as_str());
    assert_eq!(a["client_id"], "reader");
    assert_eq!(a["method"], "POST");
    assert_eq!(a["path"], "/entity");
    assert_eq!(a["route"], "/entity");
    assert_eq!(a["decision"], "allowed");
    assert_eq!(a["status"], 200);
    assert_eq!(a["bytes_in"], "type_name=user".len());
    assert_eq!(a["bytes_out"], allowed.text().len());
    assert_eq!(a["upstream"], up.server());
    let ua = a["user_agent"].as_str().unwrap();
    assert!(ua.starts_with(UA_QUOTED), "{ua}");
    assert!(ua.ends_with("..."), "cut and marked: {ua}");
    assert_eq!(ua.len(), 256 + 3, "{ua}");
    assert!(a["upstream_ms"].as_f64().unwrap() > 0.0);

    let r = event(&r_id);
    check_shape(&r);
    assert_eq!(r["request_id"], r_id.as_str());
    assert_eq!(r["client_id"], "-");
    assert_eq!(r["method"], "GET");
    assert_eq!(r["path"], "/entity");
    assert_eq!(r["route"], "/entity");
    assert_eq!(r["decision"], "credentials");
    assert_eq!(r["status"], 401);
    assert_eq!(r["bytes_in"], 0);
    assert_eq!(r["bytes_out"], refused.text().len());
    assert_eq!(r["upstream"], "-");
    assert_eq!(r["user_agent"], "refused-agent");
    assert_eq!(r["upstream_ms"].as_f64(), Some(0.0));

    let m = event(&m_id);
    check_shape(&m);
    assert_eq!(m["request_id"], m_id.as_str());
    assert_eq!(m["client_id"], "owner");
    assert_eq!(m["method"], "POST");
    assert_eq!(m["path"], "/clients/list");
    assert_eq!(m["route"], "management");
    assert_eq!(m["decision"], "allowed");
    assert_eq!(m["status"], 200);
    assert_eq!(m["bytes_in"], 0);
    assert_eq!(m["bytes_out"], managed.text().len());
    assert_eq!(m["upstream"], "-");
    assert!(m["user_agent"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(m["upstream_ms"].as_f64(), Some(0.0));

    for id in [&a_id, &r_id, &m_id] {
        let line = line_of(id);
        for name in ["total_ms", "upstream_ms", "gateway_ms", "client_wait_ms"] {
            assert_fixed_precision(&line, &format!("\"{name}\""), ":");
        }
        for bad in [
            "QUERYMARKER",
            "has_features",
            "QUERYSECRET-J8K2",
            "reader-secret",
            "owner-secret",
            "type_name",
            "?",
            &basic("reader", "reader-secret"),
            &basic("owner", "owner-secret"),
        ] {
            assert!(!line.contains(bad), "{bad:?} in the access line {line}");
        }
    }
    drop(gw);

    // The human format: the same fields, durations with the same precision.
    let up = TestUpstream::capture_like();
    let gw = GatewayBuilder::new(&up).start();
    let r = gw.get_as("reader", "/entity?type_name=user&id=7");
    r.assert_ok();
    let id = rid(&r);
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        if let Some(l) = gw.stderr().lines().find(|l| l.contains(&id)) {
            break strip_ansi(l);
        }
        assert!(
            Instant::now() < deadline,
            "no access line:\n{}",
            gw.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    for name in ["total_ms", "upstream_ms", "gateway_ms", "client_wait_ms"] {
        assert_fixed_precision(&line, name, "=");
    }
    for part in [
        "client_ip=127.0.0.1",
        "path=\"/entity\"",
        &format!("upstream={}", up.server()),
        "bytes_in=0",
    ] {
        assert!(line.contains(part), "{part} not in {line}");
    }
    assert!(!line.contains("type_name"), "query in {line}");
}

// ---------------------------------------------------------------------------
// X-Request-Id
// ---------------------------------------------------------------------------

fn request_with_id(gw: &Gateway, id: &str) -> Resp {
    gw.send(
        http_client()
            .get(gw.url("/entity?type_name=user&id=7"))
            .header("authorization", basic("reader", "reader-secret"))
            .header("x-request-id", id),
    )
}

#[test]
fn request_id_is_passed_upstream_and_kept_only_from_trusted_proxies() {
    // No trusted proxy: the caller's id is replaced.
    let up = TestUpstream::capture_like();
    let gw = GatewayBuilder::new(&up).start();
    let r = request_with_id(&gw, "edge-id-untrusted-1");
    r.assert_ok();
    let rid = r.header("x-request-id").unwrap().to_string();
    assert_ne!(rid, "edge-id-untrusted-1");
    assert!(!rid.is_empty());
    assert_eq!(up.only().header("x-request-id"), Some(rid.as_str()));
    // A fresh id per request.
    let r2 = gw.get_as("reader", "/entity?type_name=user&id=7");
    assert_ne!(r2.header("x-request-id"), Some(rid.as_str()));
    drop(gw);

    // 127.0.0.1 trusted: kept, upstream and downstream.
    let up = TestUpstream::capture_like();
    let gw = GatewayBuilder::new(&up)
        .setting("trusted_proxies", json!(["127.0.0.1/32"]))
        .setting("log", json!({"format": "json"}))
        .start();
    let r = request_with_id(&gw, "edge-id-trusted-4242");
    r.assert_ok();
    assert_eq!(r.header("x-request-id"), Some("edge-id-trusted-4242"));
    assert_eq!(
        up.only().header("x-request-id"),
        Some("edge-id-trusted-4242")
    );
    // Denials carry it too.
    let d = gw.send(
        http_client()
            .get(gw.url("/entity?type_name=user&id=7"))
            .header("authorization", basic("reader", "nope"))
            .header("x-request-id", "edge-id-trusted-4243"),
    );
    let body = d.assert_error(401, 402, "invalid_client_credentials");
    assert_eq!(d.header("x-request-id"), Some("edge-id-trusted-4243"));
    assert_eq!(body["request_id"], "edge-id-trusted-4243");
    // Even from a trusted proxy, an id that is not a short token is replaced.
    for bad in ["has space", &"a".repeat(65), "semi;colon"] {
        let r = request_with_id(&gw, bad);
        r.assert_ok();
        assert_ne!(r.header("x-request-id"), Some(bad));
    }
    // The access log uses the kept id.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !access_events(&gw.stderr())
        .iter()
        .any(|e| e["request_id"] == "edge-id-trusted-4242")
    {
        assert!(
            Instant::now() < deadline,
            "kept id not in the access log:\n{}",
            gw.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------
// A real Prometheus: dashboard and alert queries
// ---------------------------------------------------------------------------

/// Every `expr` under `targets` anywhere in the dashboard (rows nest panels).
fn dashboard_exprs() -> Vec<(String, String)> {
    fn walk(v: &Value, title: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) => {
                let title = m.get("title").and_then(Value::as_str).unwrap_or(title);
                if let Some(Value::Array(ts)) = m.get("targets") {
                    for t in ts {
                        if let Some(e) = t.get("expr").and_then(Value::as_str) {
                            out.push((title.to_string(), e.to_string()));
                        }
                    }
                }
                for (k, c) in m {
                    if k != "targets" {
                        walk(c, title, out);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|c| walk(c, title, out)),
            _ => {}
        }
    }
    let d: Value = serde_json::from_slice(
        &std::fs::read(repo_path("deploy/grafana/recordgate-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut out = Vec::new();
    walk(&d, "", &mut out);
    assert!(!out.is_empty(), "no dashboard expressions found");
    out
}

/// Grafana's built-in interval variables, as a dashboard would expand them.
fn expand_grafana_vars(expr: &str) -> String {
    let mut e = expr.to_string();
    for (var, val) in [
        ("__rate_interval", "1m"),
        ("__interval_ms", "60000"),
        ("__interval", "1m"),
        ("__range_s", "300"),
        ("__range_ms", "300000"),
        ("__range", "5m"),
    ] {
        e = e.replace(&format!("${{{var}}}"), val);
        e = e.replace(&format!("${var}"), val);
    }
    assert!(!e.contains('$'), "unexpanded variable in {expr}");
    e
}

fn alert_exprs() -> Vec<(String, String)> {
    let y: serde_yaml::Value = serde_yaml::from_slice(
        &std::fs::read(repo_path("deploy/prometheus/recordgate-alerts.yaml")).unwrap(),
    )
    .unwrap();
    let mut out = Vec::new();
    for g in y["groups"].as_sequence().expect("groups") {
        for r in g["rules"].as_sequence().expect("rules") {
            let name = r["alert"]
                .as_str()
                .or(r["record"].as_str())
                .unwrap_or("?")
                .to_string();
            out.push((name, r["expr"].as_str().expect("expr").to_string()));
        }
    }
    assert!(!out.is_empty());
    out
}

/// A Prometheus server in a temporary directory, killed on drop.
struct Prometheus {
    child: Child,
    base: String,
    dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = wait_child(&mut self.child, Duration::from_secs(10));
    }
}

impl Prometheus {
    fn start(metrics_target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let rules = repo_path("deploy/prometheus/recordgate-alerts.yaml");
        let config = json!({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": [rules.display().to_string()],
            "scrape_configs": [{
                "job_name": "recordgate",
                "metrics_path": "/metrics",
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "static_configs": [{"targets": [metrics_target]}]
            }]
        });
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(&cfg, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        let mut p = Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = p.child.try_wait() {
                panic!("prometheus exited ({st}):\n{}", p.log());
            }
            if let Ok(r) = http_client().get(format!("{}/-/ready", p.base)).send() {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within 30 s:\n{}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    fn get(&self, path: &str) -> Value {
        let r = http_client()
            .get(format!("{}{}", self.base, path))
            .send()
            .expect("prometheus API");
        r.json().expect("prometheus API JSON")
    }

    /// `/api/v1/query` (POST form): the raw API answer.
    fn query(&self, expr: &str) -> Value {
        let r = http_client()
            .post(format!("{}/api/v1/query", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(encode_form(&[("query", expr)]))
            .send()
            .expect("prometheus query");
        r.json().expect("prometheus query JSON")
    }

    /// The single numeric value of an instant query (sum etc.), if any.
    fn scalar(&self, expr: &str) -> Option<f64> {
        let v = self.query(expr);
        v["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|s| s.parse().ok())
    }
}

#[test]
fn real_prometheus_evaluates_every_dashboard_and_alert_query() {
    if !on_path("prometheus") {
        println!(
            "SKIPPED: `prometheus` is not on PATH (Debian: apt-get install prometheus); \
             the dashboard and alert queries were not evaluated"
        );
        return;
    }
    let started = Instant::now();
    let up = TestUpstream::capture_like();
    let gw = metrics_gateway(&up, json!({"client_label": "on"}));
    let target = gw.metrics_base().trim_start_matches("http://").to_string();
    let prom = Prometheus::start(&target);

    // Wait for the first successful scrape.
    let deadline = Instant::now() + Duration::from_secs(20);
    while prom.scalar(r#"up{job="recordgate"}"#) != Some(1.0) {
        assert!(
            Instant::now() < deadline,
            "target never up: {}\n{}",
            prom.get("/api/v1/targets"),
            prom.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // A short bounded load spread over ~3 s (several scrapes): allowed and
    // denied calls.
    let mut sent = 0usize;
    for i in 0..30 {
        gw.get_as("reader", "/entity?type_name=user&id=7")
            .assert_ok();
        gw.get("/entity?type_name=user&id=7", Some(("reader", "wrong")))
            .assert_error(401, 402, "invalid_client_credentials");
        gw.get_as("login", "/entity?type_name=user&id=7")
            .assert_error(403, 403, "client_permission_error");
        sent += 3;
        if i % 10 == 0 {
            gw.post_as(
                "writer",
                "/entity.update",
                &[
                    ("type_name", "user"),
                    ("id", "7"),
                    ("attributes", r#"{"givenName":"Ann","email":"a@b.c"}"#),
                ],
            )
            .assert_ok();
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    // Until Prometheus has scraped all of it, plus a few more scrapes.
    let deadline = Instant::now() + Duration::from_secs(20);
    while prom.scalar("sum(recordgate_requests_total)") != Some(sent as f64) {
        assert!(
            Instant::now() < deadline,
            "prometheus never saw {sent} requests: {:?}",
            prom.scalar("sum(recordgate_requests_total)")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));

    let mut failures = Vec::new();
    let dashboard = dashboard_exprs();
    for (title, raw) in &dashboard {
        let expr = expand_grafana_vars(raw);
        let v = prom.query(&expr);
        if v["status"] != "success" {
            failures.push(format!("dashboard {title:?}: error {v}\n  {expr}"));
            continue;
        }
        let result = &v["data"]["result"];
        let empty = match v["data"]["resultType"].as_str() {
            Some("vector") | Some("matrix") => result.as_array().is_none_or(Vec::is_empty),
            _ => result.is_null(),
        };
        if empty {
            failures.push(format!("dashboard {title:?}: no data\n  {expr}"));
            continue;
        }
        // NaN (e.g. a quantile without observations) is not data either.
        let nan = result.as_array().is_some_and(|a| {
            a.iter()
                .any(|s| s["value"][1].as_str().is_some_and(|x| x == "NaN"))
        });
        if nan {
            failures.push(format!("dashboard {title:?}: NaN {result}\n  {expr}"));
        }
    }
    let alerts = alert_exprs();
    for (name, expr) in &alerts {
        let v = prom.query(expr);
        if v["status"] != "success" {
            failures.push(format!("alert {name}: error {v}\n  {expr}"));
        }
    }

    // The rule file loaded and every rule evaluated without error.
    let deadline = Instant::now() + Duration::from_secs(15);
    let rules = loop {
        let v = prom.get("/api/v1/rules");
        let rules: Vec<Value> = v["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        let evaluated = rules.len() == alerts.len()
            && rules
                .iter()
                .all(|r| r["health"] == "ok" || r["health"] == "err");
        if evaluated || Instant::now() > deadline {
            break rules;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        rules.len(),
        alerts.len(),
        "rules loaded by prometheus: {rules:?}\n{}",
        prom.log()
    );
    for r in &rules {
        if r["health"] != "ok" {
            failures.push(format!(
                "rule {}: health {} {}",
                r["name"], r["health"], r["lastError"]
            ));
        }
    }
    // No alert should fire on this healthy gateway except the denial spike,
    // which needs 10 minutes of `for:` (so none may be firing).
    let firing = prom.get("/api/v1/alerts");
    let firing: Vec<&Value> = firing["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["state"] == "firing")
        .collect();
    assert!(firing.is_empty(), "alerts firing: {firing:?}");

    println!(
        "evaluated {} dashboard and {} alert expressions in {:?}",
        dashboard.len(),
        alerts.len(),
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} failing expression(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// An HTTP/1.0 request without `Connection: keep-alive` must end with the
/// connection closed (RFC 9112 §9.3). The operator listener (Pingora's
/// `http_app`, which sets keep-alive for every request) answers
/// `Connection: keep-alive` and keeps it open, so a 1.0 client reading to
/// EOF (simple health checkers, `bash /dev/tcp` probes) hangs. The gateway
/// listener itself is correct.
#[test]
fn operator_listener_closes_http10_connections() {
    use std::io::Read;
    let up = TestUpstream::capture_like();
    let gw = metrics_gateway(&up, json!({}));
    gw.admin_get("/healthz");
    let addr: std::net::SocketAddr = gw
        .metrics_base()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let closed = loop {
        match s.read(&mut chunk) {
            Ok(0) => break true,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => break false,
        }
        if buf.len() > 1 << 16 {
            break false;
        }
    };
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1."), "{text}");
    assert!(
        closed,
        "HTTP/1.0 connection left open after the response:\n{text}"
    );
}

/// A log reader that stops reading (a full pipe, a stalled collector) must
/// not stall requests: log lines are written by their own thread, and past
/// `log.buffer_lines` queued lines they are dropped and counted. Written
/// synchronously, as before, the 300th or so request would block on the
/// full pipe and this test would time out.
#[test]
fn a_stalled_log_reader_never_stalls_requests_and_dropped_lines_are_counted() {
    let up = TestUpstream::capture_like();
    let gw = GatewayBuilder::new(&up)
        .metrics(json!({}))
        .setting("log", json!({"format": "json", "buffer_lines": 64}))
        .stdout_unread()
        .start();
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    // ~250 JSON lines fill the 64 KiB pipe, 64 more the queue.
    for i in 0..1500 {
        let r = client
            .get(gw.url("/entity?type_name=user&id=7"))
            .header("authorization", basic("reader", "reader-secret"))
            .send()
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(r.status(), 200, "request {i}");
    }
    let text = gw.scrape();
    let dropped: f64 = text
        .lines()
        .find(|l| l.starts_with("recordgate_log_lines_dropped_total "))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no recordgate_log_lines_dropped_total in:\n{text}"));
    assert!(dropped >= 1000.0, "dropped {dropped} of ~1500 lines");
}

#[test]
fn log_buffer_lines_out_of_range_is_refused_at_startup() {
    for bad in [0u64, 10_000_001] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("policy.yaml"), default_policy()).unwrap();
        let settings = dir.path().join("settings.yaml");
        std::fs::write(
            &settings,
            format!(
                "listen: [\"127.0.0.1:{}\"]\nupstream: {{servers: [\"127.0.0.1:9\"]}}\npolicy: policy.yaml\nlog: {{buffer_lines: {bad}}}\n",
                free_port()
            ),
        )
        .unwrap();
        let out = run_cli(&["check", "--config", settings.to_str().unwrap()]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("log.buffer_lines"), "{err}");
    }
}

/// The log is written by a thread of its own; on a normal stop the process
/// waits for it, so the access line of the last request before SIGTERM is
/// on stdout, and the exit status is success.
#[test]
fn sigterm_flushes_the_access_log_and_exits_cleanly() {
    let up = TestUpstream::capture_like();
    let mut gw = GatewayBuilder::new(&up)
        .setting("log", json!({"format": "json"}))
        .start();
    let r = gw.get_as("reader", "/entity?type_name=user&id=7");
    r.assert_ok();
    let id = r
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-request-id")
        .to_string();
    gw.signal("TERM");
    let status = gw
        .wait_exit(Duration::from_secs(20))
        .expect("recordgate did not exit within 20 s of SIGTERM");
    assert!(status.success(), "exit status {status}:\n{}", gw.stderr());
    let log = gw.stderr();
    assert!(
        access_events(&log)
            .iter()
            .any(|e| e["request_id"] == id.as_str()),
        "no access line for {id}:\n{log}"
    );
}
