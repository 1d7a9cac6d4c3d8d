//! A bounded soak: worker threads send a mix of allowed, denied and writing
//! requests while a changer flips one client's read schema and another's
//! features through the management API. Every response is checked against
//! what the policy allowed at that moment; no 5xx, no leaked attribute, and
//! the gateway's resident memory stays flat.
//!
//! `RECORDGATE_SOAK_SECS` (default 10) sets the length (after a warm-up of
//! a fifth of it, 1 to 20 s, before the memory baseline is taken),
//! `RECORDGATE_SOAK_WORKERS` (default 16) the number of workers;
//! `scripts/soak.sh` runs it at full length on a release build.
// A test (or bench) that cannot set up fails loudly; the no-panic rule is for the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::{json, Value};

const ENTITY: &str = "/entity?type_name=user&id=7";
const FIND: &str = "/entity.find?type_name=user";
/// Records the upstream answers with injected faults: malformed JSON carrying
/// hidden values, and a compressed body the gateway was not asked to take.
const FAULT_MALFORMED: &str = "/entity?type_name=user&id=13";
const FAULT_GZIP: &str = "/entity?type_name=user&id=14";
/// Request kinds: 0..=9 ordinary, 10 and 11 the injected faults.
const KINDS: usize = 12;
const RESERVED: [&str; 4] = ["id", "uuid", "created", "lastUpdated"];
/// `partner`'s two read schemas (neither shows a `HIDDEN_VALUES` attribute).
const SCHEMA_A: &str = r#"["givenName", "familyName"]"#;
const SCHEMA_B: &str = r#"["displayName", "primaryAddress.city"]"#;
/// Resident memory the gateway may gain between warm-up and the end.
const RSS_GROWTH_LIMIT_KB: u64 = 30 * 1024;

fn policy() -> String {
    policy_with_clients(&format!(
        r#"
clients:
  owner:
    secret: owner-secret
    features: [owner]
  partner:
    secret: partner-secret
    features: [direct_read_access]
    access_schemas:
      user:
        read: {SCHEMA_A}
  toggler:
    secret: toggler-secret
    features: [direct_read_access]
    access_schemas:
      user:
        read: [givenName]
  reader:
    secret: reader-secret
    features: [direct_read_access]
    access_schemas:
      user:
        read: [givenName, primaryAddress.city, photos.value]
  login:
    secret: login-secret
    features: [login_client]
  offsite:
    secret: offsite-secret
    features: [direct_read_access]
    whitelist: ["203.0.113.0/24"]
  writer:
    secret: writer-secret
    features: [direct_access]
    access_schemas:
      user:
        read: [givenName]
        write: [givenName, familyName]
"#
    ))
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn keys_with(extra: &[&str]) -> Vec<String> {
    let mut k: Vec<String> = RESERVED
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
    k.sort();
    k
}

fn sorted_keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    k.sort();
    k
}

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS for {pid}: {status}"))
}

// ---------------------------------------------------------------------------
// An upstream that keeps no log (the harness's records every request, which
// would grow without bound over a long soak) but checks every write.
// ---------------------------------------------------------------------------

struct Upstream {
    addr: SocketAddr,
    writes: Arc<AtomicU64>,
    bad_writes: Arc<Mutex<Vec<String>>>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Upstream {
    fn start() -> Upstream {
        let (rt, listener, addr) = upstream_runtime(2);
        let writes = Arc::new(AtomicU64::new(0));
        let bad_writes = Arc::new(Mutex::new(Vec::new()));
        let (w, bad) = (writes.clone(), bad_writes.clone());
        rt.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (w, bad) = (w.clone(), bad.clone());
                let svc = hyper::service::service_fn(move |req: hyper::Request<_>| {
                    let (w, bad) = (w.clone(), bad.clone());
                    async move { Ok::<_, Infallible>(answer(req, &w, &bad).await) }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            writes,
            bad_writes,
            rt: Some(rt),
        }
    }
}

async fn answer(
    req: hyper::Request<hyper::body::Incoming>,
    writes: &AtomicU64,
    bad: &Mutex<Vec<String>>,
) -> hyper::Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let rec = Recorded {
        method: parts.method.to_string(),
        target: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
            .collect(),
        body: body
            .collect()
            .await
            .map(|b| b.to_bytes().to_vec())
            .unwrap_or_default(),
    };
    if rec.path() == "/entity.update" {
        writes.fetch_add(1, Ordering::SeqCst);
        let attrs = rec.json_param("attributes");
        if attrs != Some(json!({"givenName": "Soak", "familyName": "Run"})) {
            bad.lock().unwrap().push(format!("{attrs:?}"));
        }
    }
    // Injected faults, each carrying values a reader must never see.
    if rec.target.ends_with("id=13") {
        return hyper::Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(
                br#"{"stat":"ok","result":{"givenName":"A","email":"hidden-email-13@x","#,
            )))
            .unwrap();
    }
    if rec.target.ends_with("id=14") {
        return hyper::Response::builder()
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .body(Full::new(Bytes::from_static(
                br#"{"stat":"ok","result":{"email":"hidden-email-14@x"}}"#,
            )))
            .unwrap();
    }
    let reply = capture_handler(&rec);
    let mut b = hyper::Response::builder().status(reply.status);
    for (k, v) in &reply.headers {
        b = b.header(k.as_str(), v.as_str());
    }
    b.body(Full::new(Bytes::from(reply.body))).unwrap()
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

// ---------------------------------------------------------------------------
// The oracle
// ---------------------------------------------------------------------------

/// One policy state and when it may have been in force: from the moment
/// its change was sent until the next change was acknowledged.
#[derive(Debug, Clone, Copy)]
struct State {
    schema_b: bool,
    toggler_reads: bool,
    started: Instant,
    until: Instant,
}

#[derive(Debug, Clone, Copy)]
enum Seen {
    Partner { schema_b: bool },
    Toggler { reads: bool },
}

/// A response handled between `sent` and `received` is right if it shows a
/// state that may have been in force at some instant in between. States are
/// in order and `until` only grows, so the scan stops at the first state
/// that ended before `sent`.
fn consistent(timeline: &[State], sent: Instant, received: Instant, seen: Seen) -> bool {
    timeline
        .iter()
        .rev()
        .take_while(|s| s.until >= sent)
        .any(|s| {
            s.started <= received
                && match seen {
                    Seen::Partner { schema_b } => s.schema_b == schema_b,
                    Seen::Toggler { reads } => s.toggler_reads == reads,
                }
        })
}

/// The request of kind `k` (0..10): who, how, and what a right answer is.
fn send(c: &reqwest::blocking::Client, base: &str, k: usize) -> reqwest::Result<Resp> {
    let get = |who: &str, secret: &str, path: &str| {
        c.get(format!("{base}{path}"))
            .header("authorization", basic(who, secret))
            .send()
            .map(Resp::from)
    };
    match k {
        0..=2 => get("partner", "partner-secret", ENTITY),
        3 | 4 => get("toggler", "toggler-secret", ENTITY),
        5 => get("reader", "reader-secret", FIND),
        6 => get("login", "login-secret", ENTITY),
        7 => get("partner", "not-the-secret", ENTITY),
        8 => get("offsite", "offsite-secret", ENTITY),
        10 => get("reader", "reader-secret", FAULT_MALFORMED),
        11 => get("reader", "reader-secret", FAULT_GZIP),
        _ => c
            .post(format!("{base}/entity.update"))
            .header("authorization", basic("writer", "writer-secret"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(encode_form(&[
                ("type_name", "user"),
                ("id", "7"),
                (
                    "attributes",
                    r#"{"givenName":"Soak","familyName":"Run","email":"evil@example.com","internal":{"notes":"x"},"primaryAddress":{"zip":"Z"}}"#,
                ),
            ]))
            .send()
            .map(Resp::from),
    }
}

fn error_is(r: &Resp, http: u16, code: u64, error: &str) -> bool {
    let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    r.status == http && v["stat"] == "error" && v["code"] == code && v["error"] == error
}

/// Checks a response of kind `k` on its own; what it shows of the changing
/// policy is returned for the oracle.
fn check(k: usize, r: &Resp) -> Result<Option<Seen>, String> {
    if let Some(h) = HIDDEN_VALUES.iter().find(|h| contains(&r.body, h)) {
        return Err(format!("{h} leaked"));
    }
    if k >= 10 {
        // Injected faults: the one 5xx allowed, a clean 502.
        return if error_is(r, 502, 500, "unexpected_error") {
            Ok(None)
        } else {
            Err("an injected upstream fault was not a clean 502".into())
        };
    }
    if r.status >= 500 {
        return Err("5xx".into());
    }
    let v: Value = serde_json::from_slice(&r.body).map_err(|e| format!("not JSON: {e}"))?;
    let rec = &v["result"];
    match k {
        0..=2 if r.status == 200 => {
            let keys = sorted_keys(rec);
            if keys == keys_with(&["givenName", "familyName"]) && rec["familyName"] == "Lovelace" {
                Ok(Some(Seen::Partner { schema_b: false }))
            } else if keys == keys_with(&["displayName", "primaryAddress"])
                && rec["primaryAddress"] == json!({"city": "London"})
            {
                Ok(Some(Seen::Partner { schema_b: true }))
            } else {
                Err("neither schema A nor B".into())
            }
        }
        3 | 4 if r.status == 200 && sorted_keys(rec) == keys_with(&["givenName"]) => {
            Ok(Some(Seen::Toggler { reads: true }))
        }
        3 | 4 if error_is(r, 403, 403, "client_permission_error") => {
            Ok(Some(Seen::Toggler { reads: false }))
        }
        5 if r.status == 200
            && v["results"].as_array().is_some_and(|a| {
                a.len() == 2
                    && a.iter().all(|x| {
                        sorted_keys(x) == keys_with(&["givenName", "primaryAddress", "photos"])
                            && x["primaryAddress"] == json!({"city": "London"})
                            && x["photos"].as_array().is_some_and(|p| {
                                p.iter()
                                    .all(|e| sorted_keys(e) == ["id".to_string(), "value".into()])
                            })
                    })
            }) =>
        {
            Ok(None)
        }
        6 | 8 if error_is(r, 403, 403, "client_permission_error") && !r.text().contains("Ada") => {
            Ok(None)
        }
        7 if error_is(r, 401, 402, "invalid_client_credentials") => Ok(None),
        9 if r.status == 200 && v == json!({"stat": "ok"}) => Ok(None),
        _ => Err("unexpected answer".into()),
    }
}

#[derive(Default)]
struct Failures {
    count: AtomicU64,
    samples: Mutex<Vec<String>>,
}

impl Failures {
    fn push(&self, what: String) {
        if self.count.fetch_add(1, Ordering::SeqCst) < 20 {
            self.samples.lock().unwrap().push(what);
        }
    }
}

// ---------------------------------------------------------------------------
// The soak
// ---------------------------------------------------------------------------

#[test]
fn soak_with_live_changes_decides_right_leaks_nothing_and_keeps_memory_flat() {
    let secs = env_u64("RECORDGATE_SOAK_SECS", 10).max(2);
    let workers = env_u64("RECORDGATE_SOAK_WORKERS", 16).clamp(1, 256) as usize;
    let warmup = Duration::from_secs((secs / 5).clamp(1, 20));
    let up = Upstream::start();
    let gw = GatewayBuilder::to_server(&up.addr.to_string())
        .policy(&policy())
        .metrics(json!({}))
        .start();
    let pid = gw.pid();
    let version0 = gw.admin_get("/status").json()["policy"]["version"]
        .as_u64()
        .unwrap();

    let t0 = Instant::now();
    let far = t0 + Duration::from_secs(100 * 365 * 86400);
    let end = t0 + warmup + Duration::from_secs(secs);
    let timeline = Mutex::new(vec![State {
        schema_b: false,
        toggler_reads: true,
        started: t0,
        until: far,
    }]);
    let failures = Failures::default();
    let done = AtomicBool::new(false);
    let per_kind: Vec<AtomicU64> = (0..KINDS).map(|_| AtomicU64::new(0)).collect();
    let seen_values: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());
    let changes = AtomicU64::new(0);
    let writes_ok = AtomicU64::new(0);
    let rss: Mutex<Vec<(Duration, u64)>> = Mutex::new(Vec::new());

    std::thread::scope(|s| {
        for t in 0..workers {
            let (gw, timeline, failures, done, per_kind, seen_values, writes_ok) = (
                &gw,
                &timeline,
                &failures,
                &done,
                &per_kind,
                &seen_values,
                &writes_ok,
            );
            s.spawn(move || {
                let c = http_client();
                let mut seen_here: BTreeMap<String, u64> = BTreeMap::new();
                for i in 0..50_000_000usize {
                    if done.load(Ordering::SeqCst) || Instant::now() >= end {
                        break;
                    }
                    let k = (i * 7 + t) % KINDS;
                    let sent = Instant::now();
                    let r = send(&c, &gw.base, k);
                    let received = Instant::now();
                    per_kind[k].fetch_add(1, Ordering::Relaxed);
                    let r = match r {
                        Ok(r) => r,
                        Err(e) => {
                            failures.push(format!("kind {k}: transport: {e}"));
                            continue;
                        }
                    };
                    match check(k, &r) {
                        Err(why) => {
                            failures.push(format!("kind {k}: {why}: {} {}", r.status, r.text()))
                        }
                        Ok(Some(seen)) => {
                            *seen_here.entry(format!("{seen:?}")).or_default() += 1;
                            let ok = consistent(&timeline.lock().unwrap(), sent, received, seen);
                            if !ok {
                                failures.push(format!(
                                    "kind {k}: {seen:?} not in force between {:?} and {:?}",
                                    sent - t0,
                                    received - t0
                                ));
                            }
                        }
                        Ok(None) => {
                            if k == 9 {
                                writes_ok.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
                let mut all = seen_values.lock().unwrap();
                for (key, n) in seen_here {
                    *all.entry(key).or_default() += n;
                }
            });
        }

        // The changer: a flip every 40 ms, alternating the partner's read
        // schema and the toggler's features. The new state may be in force
        // from the moment its change is sent; the old one ends at the ack.
        let (gw, timeline, failures, done, changes) = (&gw, &timeline, &failures, &done, &changes);
        s.spawn(move || {
            let c = http_client();
            for i in 0..1_000_000u64 {
                if Instant::now() >= end {
                    break;
                }
                let sent = Instant::now();
                let next = {
                    let mut tl = timeline.lock().unwrap();
                    let cur = *tl.last().unwrap();
                    let next = State {
                        schema_b: cur.schema_b ^ (i % 2 == 0),
                        toggler_reads: cur.toggler_reads ^ (i % 2 == 1),
                        started: sent,
                        until: far,
                    };
                    tl.push(next);
                    next
                };
                let (path, fields): (&str, Vec<(&str, &str)>) = if i % 2 == 0 {
                    (
                        "/entityType.setAccessSchema",
                        vec![
                            ("type_name", "user"),
                            ("for_client_id", "partner"),
                            ("access_type", "read"),
                            (
                                "attributes",
                                if next.schema_b { SCHEMA_B } else { SCHEMA_A },
                            ),
                        ],
                    )
                } else {
                    (
                        "/clients/set_features",
                        vec![
                            ("for_client_id", "toggler"),
                            (
                                "features",
                                if next.toggler_reads {
                                    r#"["direct_read_access"]"#
                                } else {
                                    r#"["login_client"]"#
                                },
                            ),
                        ],
                    )
                };
                let r = c
                    .post(gw.url(path))
                    .header("authorization", basic("owner", "owner-secret"))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(encode_form(&fields))
                    .send()
                    .map(Resp::from);
                let acked = Instant::now();
                match r {
                    Ok(r) if r.status == 200 && r.json()["stat"] == "ok" => {
                        let mut tl = timeline.lock().unwrap();
                        let n = tl.len();
                        tl[n - 2].until = acked;
                        changes.fetch_add(1, Ordering::SeqCst);
                    }
                    other => {
                        // The outcome is unknown: stop changing, fail.
                        failures.push(format!("change {i} ({path}) failed: {other:?}"));
                        break;
                    }
                }
                std::thread::sleep(Duration::from_millis(40));
            }
        });

        // Resident memory: a sample a second; the first after warm-up is the
        // baseline.
        let rss = &rss;
        s.spawn(move || {
            for _ in 0..(secs + 600) {
                if Instant::now() >= end {
                    break;
                }
                if t0.elapsed() >= warmup {
                    rss.lock().unwrap().push((t0.elapsed(), rss_kb(pid)));
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            rss.lock().unwrap().push((t0.elapsed(), rss_kb(pid)));
            done.store(true, Ordering::SeqCst);
        });
    });
    let elapsed = t0.elapsed();

    // Report.
    let total: u64 = per_kind.iter().map(|n| n.load(Ordering::SeqCst)).sum();
    let kinds: Vec<u64> = per_kind.iter().map(|n| n.load(Ordering::SeqCst)).collect();
    let changes = changes.load(Ordering::SeqCst);
    let rss = rss.into_inner().unwrap();
    let seen_values = seen_values.into_inner().unwrap();
    eprintln!(
        "soak: {secs} s (+{warmup:?} warm-up), {workers} workers: {total} requests \
         ({:.0}/s), by kind {kinds:?}; {changes} live changes ({:.1}/s); \
         policy states seen {seen_values:?}; upstream writes {}",
        total as f64 / elapsed.as_secs_f64(),
        changes as f64 / elapsed.as_secs_f64(),
        up.writes.load(Ordering::SeqCst),
    );
    let kb: Vec<u64> = rss.iter().map(|(_, kb)| *kb).collect();
    eprintln!(
        "soak: gateway VmRSS KiB: first {:?}, min {:?}, max {:?}, last {:?}; (s, KiB) {:?}",
        kb.first(),
        kb.iter().min(),
        kb.iter().max(),
        kb.last(),
        rss.iter()
            .step_by((rss.len() / 20).max(1))
            .map(|(t, kb)| (t.as_secs(), *kb))
            .collect::<Vec<_>>()
    );

    let n = failures.count.load(Ordering::SeqCst);
    assert_eq!(
        n,
        0,
        "{n} wrong responses of {total}, e.g. {:#?}",
        failures.samples.lock().unwrap()
    );
    let bad = up.bad_writes.lock().unwrap().clone();
    assert!(
        bad.is_empty(),
        "attributes outside the write schema reached the upstream: {bad:?}"
    );
    assert_eq!(
        up.writes.load(Ordering::SeqCst),
        writes_ok.load(Ordering::SeqCst),
        "every acknowledged write reached the upstream once, and only those"
    );
    assert!(total >= 20 * secs, "too little load: {total} requests");
    assert!(changes >= 2 * secs, "too few changes: {changes}");
    for want in [
        "Partner { schema_b: false }",
        "Partner { schema_b: true }",
        "Toggler { reads: false }",
        "Toggler { reads: true }",
    ] {
        assert!(
            seen_values.contains_key(want),
            "never saw {want}: {seen_values:?}"
        );
    }
    // The gateway's own account agrees: every change a success, the last in
    // force, and no 5xx but the injected faults.
    let st = gw.admin_get("/status").json();
    assert_eq!(
        st["policy"]["version"].as_u64(),
        Some(version0 + changes),
        "{st}"
    );
    let text = gw.scrape();
    let fivexx: f64 = text
        .lines()
        .filter(|l| l.starts_with("recordgate_requests_total{") && l.contains("status=\"5"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let injected = kinds[10] + kinds[11];
    assert!(injected > 0, "no faults were injected");
    assert_eq!(
        fivexx, injected as f64,
        "5xx in the gateway's metrics other than the {injected} injected faults"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("recordgate_policy_reloads_total{")
                && l.contains("source=\"api\"")
                && l.contains("result=\"failure\"")
                && l.ends_with(" 0")),
        "no failed API change"
    );

    // Flat memory.
    assert!(rss.len() >= 2, "{rss:?}");
    let (first, last) = (rss[0].1, rss[rss.len() - 1].1);
    assert!(
        last <= first + RSS_GROWTH_LIMIT_KB,
        "VmRSS grew from {first} KiB to {last} KiB (limit +{RSS_GROWTH_LIMIT_KB} KiB)"
    );
}
