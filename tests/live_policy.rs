//! Live, atomic, durable policy changes: concurrent writers lose nothing,
//! changes under load never fail a request nor decide on a stale or torn
//! policy, a SIGKILL keeps every acknowledged change, and file edits / SIGHUP
//! are picked up (or rejected whole, visibly) within a second.
// A test (or bench) that cannot set up fails loudly; the no-panic rule is for the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

/// Per thread: last acknowledged description index, and one in flight.
type DescribedIndexes = BTreeMap<usize, (Option<usize>, Option<usize>)>;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const ENTITY: &str = "/entity?type_name=user&id=7";

/// Partner's two read schemas, as YAML lists, and the record keys each shows.
const SCHEMA_A: &str = "[givenName, email]";
const SCHEMA_B: &str = "[familyName, primaryAddress.city]";
const KEYS_A: [&str; 6] = ["id", "uuid", "created", "lastUpdated", "givenName", "email"];
const KEYS_B: [&str; 6] = [
    "id",
    "uuid",
    "created",
    "lastUpdated",
    "familyName",
    "primaryAddress",
];

/// The policy of these tests: `partner` reads with `partner_schema`,
/// `toggler` has `toggler_features`. Secret of `<name>` is `<name>-secret`.
fn policy(partner_schema: &str, toggler_features: &str) -> String {
    policy_with_clients(&format!(
        r#"
clients:
  owner:
    secret: owner-secret
    features: [owner]
  owner2:
    secret: owner2-secret
    features: [owner]
  partner:
    secret: partner-secret
    features: [direct_read_access]
    access_schemas:
      user:
        read: {partner_schema}
  toggler:
    secret: toggler-secret
    features: {toggler_features}
  fullreader:
    secret: fullreader-secret
    features: [direct_read_access]
  login:
    secret: login-secret
    features: [login_client]
"#
    ))
}

fn base_policy() -> String {
    policy(SCHEMA_A, "[direct_read_access]")
}

fn start(policy: &str) -> (TestUpstream, Gateway) {
    let up = TestUpstream::capture_like();
    let gw = GatewayBuilder::new(&up)
        .policy(policy)
        .metrics(json!({}))
        .start();
    (up, gw)
}

/// Replaces `path` the way editors and ConfigMaps do: temporary file, fsync,
/// rename.
fn replace_file(path: &Path, contents: &[u8]) {
    use std::io::Write;
    let tmp = path.with_extension("edit-tmp");
    let mut f = std::fs::File::create(&tmp).unwrap();
    f.write_all(contents).unwrap();
    f.sync_all().unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn status(gw: &Gateway) -> Value {
    let r = gw.admin_get("/status");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn version(gw: &Gateway) -> u64 {
    status(gw)["policy"]["version"].as_u64().unwrap()
}

/// `recordgate_policy_reloads_total{source, result}` from /metrics.
fn reloads(gw: &Gateway, source: &str, result: &str) -> u64 {
    let text = gw.scrape();
    text.lines()
        .filter(|l| l.starts_with("recordgate_policy_reloads_total{"))
        .filter(|l| l.contains(&format!("source=\"{source}\"")))
        .filter(|l| l.contains(&format!("result=\"{result}\"")))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
        .next()
        .unwrap_or(0)
}

/// Polls `cond` every 5 ms until it holds or `limit` passes; returns the
/// time it took, or None.
fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if cond() {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn sorted_keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    k.sort();
    k
}

fn sorted(list: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// Which of the two schemas a partner read shows, or why it is neither.
fn partner_schema_of(body: &Value) -> Result<bool, String> {
    let rec = &body["result"];
    let keys = sorted_keys(rec);
    if keys == sorted(&KEYS_A) && rec["email"] == "hidden-email-7@example.com" {
        Ok(false)
    } else if keys == sorted(&KEYS_B) && rec["primaryAddress"] == json!({"city": "London"}) {
        Ok(true)
    } else {
        Err(format!("neither schema A nor B: {body}"))
    }
}

fn read_partner_schema(gw: &Gateway) -> bool {
    partner_schema_of(&gw.get_as("partner", ENTITY).assert_ok()).unwrap()
}

/// A request from a worker thread, with its own client.
fn post(
    c: &reqwest::blocking::Client,
    base: &str,
    who: &str,
    path: &str,
    fields: &[(&str, &str)],
) -> Result<Resp, reqwest::Error> {
    c.post(format!("{base}{path}"))
        .header("authorization", basic(who, &format!("{who}-secret")))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode_form(fields))
        .send()
        .map(Resp::from)
}

fn policy_file(gw: &Gateway) -> Value {
    let text = std::fs::read_to_string(gw.policy_path()).unwrap();
    serde_yaml::from_str(&text)
        .unwrap_or_else(|e| panic!("policy file does not parse: {e}\n{text}"))
}

fn audit_lines(gw: &Gateway) -> Vec<String> {
    std::fs::read_to_string(gw.audit_path())
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------
// (a) Concurrency: two owners, no lost update
// ---------------------------------------------------------------------------

#[derive(Clone)]
enum Op {
    Add {
        description: String,
        features: &'static str,
    },
    Describe {
        client: String,
        description: String,
    },
}

/// 50 clients/add per owner plus 10 set_description per owner on clients
/// only that owner touches: 120 changes.
fn ops_of(owner: &str) -> Vec<Op> {
    let mut ops = Vec::new();
    for i in 0..50 {
        ops.push(Op::Add {
            description: format!("{owner}-add-{i}"),
            features: if i % 2 == 0 {
                r#"["direct_read_access"]"#
            } else {
                r#"["direct_read_access", "access_issuer"]"#
            },
        });
        if i % 5 == 0 {
            ops.push(Op::Describe {
                client: format!("{owner}-target-{}", i / 5),
                description: format!("{owner}-described-{i}"),
            });
        }
    }
    ops
}

fn concurrency_policy() -> String {
    let mut p = base_policy();
    for owner in ["owner", "owner2"] {
        for j in 0..10 {
            p.push_str(&format!(
                "  {owner}-target-{j}:\n    secret: t-secret\n    features: [login_client]\n"
            ));
        }
    }
    p
}

/// Runs the ops of both owners, concurrently (5 threads per owner) or
/// serially; returns the acknowledged (id, secret, description) of each add.
fn run_ops(gw: &Gateway, concurrent: bool) -> Vec<(String, String, String)> {
    let added = Mutex::new(Vec::new());
    let run = |owner: &str, ops: &[Op]| {
        let c = http_client();
        for op in ops {
            let r = match op {
                Op::Add {
                    description,
                    features,
                } => post(
                    &c,
                    &gw.base,
                    owner,
                    "/clients/add",
                    &[("description", description), ("features", features)],
                ),
                Op::Describe {
                    client,
                    description,
                } => post(
                    &c,
                    &gw.base,
                    owner,
                    "/clients/set_description",
                    &[("for_client_id", client), ("description", description)],
                ),
            }
            .expect("management call");
            let v = r.assert_ok();
            if let Op::Add { description, .. } = op {
                added.lock().unwrap().push((
                    v["client_id"].as_str().unwrap().to_string(),
                    v["client_secret"].as_str().unwrap().to_string(),
                    description.clone(),
                ));
            }
        }
    };
    if concurrent {
        std::thread::scope(|s| {
            for owner in ["owner", "owner2"] {
                let ops = ops_of(owner);
                for chunk in ops.chunks(ops.len().div_ceil(5)) {
                    let chunk = chunk.to_vec();
                    let run = &run;
                    s.spawn(move || run(owner, &chunk));
                }
            }
        });
    } else {
        for owner in ["owner", "owner2"] {
            run(owner, &ops_of(owner));
        }
    }
    added.into_inner().unwrap()
}

/// The policy file with generated ids replaced by descriptions and
/// generated secrets dropped, to compare two runs.
fn normalized(gw: &Gateway, initial: &BTreeSet<String>) -> Value {
    let p = policy_file(gw);
    let mut out = serde_json::Map::new();
    for (id, c) in p["clients"].as_object().unwrap() {
        let mut c = c.clone();
        if initial.contains(id) {
            out.insert(id.clone(), c);
        } else {
            c.as_object_mut().unwrap().remove("secret");
            let key = format!("added:{}", c["description"].as_str().unwrap());
            assert!(out.insert(key.clone(), c).is_none(), "{key} twice");
        }
    }
    json!({"entity_types": p["entity_types"], "clients": out})
}

#[test]
fn concurrent_changes_from_two_owners_end_as_a_serial_run() {
    let up = TestUpstream::capture_like();
    let gw = GatewayBuilder::new(&up)
        .policy(&concurrency_policy())
        .metrics(json!({}))
        .start();
    let serial_gw = GatewayBuilder::new(&up)
        .policy(&concurrency_policy())
        .metrics(json!({}))
        .start();
    let initial: BTreeSet<String> = policy_file(&gw)["clients"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let v0 = version(&gw);

    let added = run_ops(&gw, true);
    run_ops(&serial_gw, false);

    // Exactly 100 new clients, all distinct, listed and in the file.
    assert_eq!(added.len(), 100);
    let ids: BTreeSet<&str> = added.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(ids.len(), 100, "generated ids are unique");
    let listed = gw.post_as("owner", "/clients/list", &[]).assert_ok();
    let listed: BTreeSet<String> = listed["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed.len(), initial.len() + 100);
    let file = policy_file(&gw);
    for (id, secret, description) in &added {
        assert!(listed.contains(id), "{id} not listed");
        assert_eq!(file["clients"][id]["description"], *description);
        assert_eq!(file["clients"][id]["secret"], *secret);
    }
    // Every description change is there too.
    for owner in ["owner", "owner2"] {
        for j in 0..10 {
            assert_eq!(
                file["clients"][format!("{owner}-target-{j}")]["description"],
                format!("{owner}-described-{}", j * 5)
            );
        }
    }
    // Same state as the serial run.
    assert_eq!(normalized(&gw, &initial), normalized(&serial_gw, &initial));
    // One version and one audit line per change: nothing applied twice or
    // lost between compile and swap.
    assert_eq!(version(&gw), v0 + 120);
    assert_eq!(audit_lines(&gw).len(), 120);
    assert_eq!(reloads(&gw, "api", "success"), 120);
    // The running snapshot is the file: every new secret works.
    std::thread::scope(|s| {
        for chunk in added.chunks(25) {
            let gw = &gw;
            s.spawn(move || {
                for (id, secret, _) in chunk {
                    gw.get(ENTITY, Some((id, secret))).assert_ok();
                }
            });
        }
    });
}

// ---------------------------------------------------------------------------
// (b) 200 changes under load: no failed request, no stale or torn decision
// ---------------------------------------------------------------------------

/// One policy state and when it may have been in force: from the moment its
/// change was started to the moment the next change was confirmed.
#[derive(Debug, Clone, Copy)]
struct State {
    schema_b: bool,
    toggler_reads: bool,
    started: Instant,
    confirmed: Instant,
}

#[derive(Debug)]
enum Seen {
    Partner(bool),
    Toggler(bool),
}

#[test]
fn two_hundred_changes_under_load_fail_no_request_and_decide_on_no_stale_policy() {
    let (up, gw) = start(&base_policy());
    let t0 = Instant::now();
    let timeline: Mutex<Vec<State>> = Mutex::new(vec![State {
        schema_b: false,
        toggler_reads: true,
        started: t0,
        confirmed: t0,
    }]);
    let done = AtomicBool::new(false);
    let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let observations: Mutex<Vec<(Instant, Instant, Seen)>> = Mutex::new(Vec::new());
    let requests = AtomicUsize::new(0);
    let (api_changes, file_changes, polled_changes) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    );

    std::thread::scope(|s| {
        // Load: 3 threads, mixed allowed and denied calls, bounded in count
        // and time.
        for t in 0..3 {
            let (gw, done, failures, observations, requests) =
                (&gw, &done, &failures, &observations, &requests);
            s.spawn(move || {
                let c = http_client();
                let deadline = Instant::now() + Duration::from_secs(30);
                let mut i = t;
                while !done.load(Ordering::SeqCst) && i < 6000 + t && Instant::now() < deadline {
                    i += 1;
                    let kind = i % 6;
                    let (who, secret, path) = match kind {
                        0 | 1 => ("partner", "partner-secret", ENTITY),
                        2 => ("toggler", "toggler-secret", ENTITY),
                        3 => ("fullreader", "fullreader-secret", ENTITY),
                        4 => ("login", "login-secret", ENTITY),
                        _ => ("partner", "wrong-secret", ENTITY),
                    };
                    let sent = Instant::now();
                    let r = c
                        .get(gw.url(path))
                        .header("authorization", basic(who, secret))
                        .send()
                        .map(Resp::from);
                    let received = Instant::now();
                    requests.fetch_add(1, Ordering::SeqCst);
                    let r = match r {
                        Ok(r) => r,
                        Err(e) => {
                            failures.lock().unwrap().push(format!("{who}: {e}"));
                            continue;
                        }
                    };
                    let bad = |why: &str| format!("{who} {kind}: {why}: {} {}", r.status, r.text());
                    let seen = match kind {
                        0 | 1 => {
                            if r.status != 200 {
                                failures.lock().unwrap().push(bad("status"));
                                continue;
                            }
                            match partner_schema_of(&r.json()) {
                                Ok(b) => Some(Seen::Partner(b)),
                                Err(e) => {
                                    failures.lock().unwrap().push(bad(&e));
                                    continue;
                                }
                            }
                        }
                        2 => match r.status {
                            200 if r.json()["result"]["email"] == "hidden-email-7@example.com" => {
                                Some(Seen::Toggler(true))
                            }
                            403 if r.json()["error"] == "client_permission_error" => {
                                Some(Seen::Toggler(false))
                            }
                            _ => {
                                failures.lock().unwrap().push(bad("toggler"));
                                continue;
                            }
                        },
                        3 => {
                            if r.status != 200
                                || r.json()["result"]["internal"]["notes"] != "hidden-note"
                            {
                                failures.lock().unwrap().push(bad("fullreader"));
                            }
                            None
                        }
                        4 => {
                            if r.status != 403 || r.text().contains("Ada") {
                                failures.lock().unwrap().push(bad("login"));
                            }
                            None
                        }
                        _ => {
                            if r.status != 401 || r.json()["code"] != 402 {
                                failures.lock().unwrap().push(bad("bad secret"));
                            }
                            None
                        }
                    };
                    if let Some(seen) = seen {
                        observations.lock().unwrap().push((sent, received, seen));
                    }
                }
            });
        }

        // Changes: 200, alternating API and file edits, each flipping the
        // partner's schema or the toggler's feature. File edits are
        // confirmed through /status (version); most are triggered with
        // SIGHUP, every twentieth waits for the poller.
        let (gw, timeline, done) = (&gw, &timeline, &done);
        let (api_changes, file_changes, polled_changes) =
            (&api_changes, &file_changes, &polled_changes);
        s.spawn(move || {
            let c = http_client();
            let mut cur = (false, true);
            for i in 0..200usize {
                let flip_schema = i % 4 < 2;
                let next = if flip_schema {
                    (!cur.0, cur.1)
                } else {
                    (cur.0, !cur.1)
                };
                let before = version(gw);
                let started = Instant::now();
                if i % 2 == 0 {
                    let r = if flip_schema {
                        post(
                            &c,
                            &gw.base,
                            "owner",
                            "/entityType.setAccessSchema",
                            &[
                                ("type_name", "user"),
                                ("for_client_id", "partner"),
                                ("access_type", "read"),
                                (
                                    "attributes",
                                    if next.0 {
                                        r#"["familyName", "primaryAddress.city"]"#
                                    } else {
                                        r#"["givenName", "email"]"#
                                    },
                                ),
                            ],
                        )
                    } else {
                        post(
                            &c,
                            &gw.base,
                            "owner2",
                            "/clients/set_features",
                            &[
                                ("for_client_id", "toggler"),
                                (
                                    "features",
                                    if next.1 {
                                        r#"["direct_read_access"]"#
                                    } else {
                                        r#"["login_client"]"#
                                    },
                                ),
                            ],
                        )
                    };
                    r.expect("change").assert_ok();
                    api_changes.fetch_add(1, Ordering::SeqCst);
                } else {
                    let text = policy(
                        if next.0 { SCHEMA_B } else { SCHEMA_A },
                        if next.1 {
                            "[direct_read_access]"
                        } else {
                            "[login_client]"
                        },
                    );
                    replace_file(&gw.policy_path(), text.as_bytes());
                    if i % 40 == 1 {
                        polled_changes.fetch_add(1, Ordering::SeqCst);
                    } else {
                        gw.signal("HUP");
                    }
                    file_changes.fetch_add(1, Ordering::SeqCst);
                }
                let took = wait_until(Duration::from_secs(2), || version(gw) > before);
                assert!(took.is_some(), "change {i} not in force within 2 s");
                let confirmed = Instant::now();
                let mut tl = timeline.lock().unwrap();
                tl.last_mut().unwrap().confirmed = confirmed;
                tl.push(State {
                    schema_b: next.0,
                    toggler_reads: next.1,
                    started,
                    confirmed: confirmed + Duration::from_secs(3600),
                });
                cur = next;
            }
            done.store(true, Ordering::SeqCst);
        });
    });

    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed or wrong responses of {}, e.g. {:#?}",
        failures.len(),
        requests.load(Ordering::SeqCst),
        &failures[..failures.len().min(10)]
    );
    assert_eq!(api_changes.load(Ordering::SeqCst), 100);
    assert_eq!(file_changes.load(Ordering::SeqCst), 100);
    assert_eq!(polled_changes.load(Ordering::SeqCst), 5);
    let timeline = timeline.into_inner().unwrap();
    assert_eq!(timeline.len(), 201);
    eprintln!(
        "{} requests under load, {} checked against the timeline",
        requests.load(Ordering::SeqCst),
        observations.lock().unwrap().len()
    );
    let observations = observations.into_inner().unwrap();
    assert!(
        observations.len() >= 300,
        "too little load: {} checked responses",
        observations.len()
    );
    // Each response matches a state that may have been in force while it
    // was being handled: [sent, received] meets [started, next confirmed].
    let mut stale = Vec::new();
    for (sent, received, seen) in &observations {
        let ok = timeline.iter().any(|st| {
            let matches = match seen {
                Seen::Partner(b) => st.schema_b == *b,
                Seen::Toggler(r) => st.toggler_reads == *r,
            };
            matches && st.started <= *received && *sent <= st.confirmed
        });
        if !ok {
            stale.push(format!(
                "{seen:?} sent at {:?}, received at {:?}",
                *sent - t0,
                *received - t0
            ));
        }
    }
    assert!(
        stale.is_empty(),
        "{} of {} responses decided on a policy not in force: {:#?}",
        stale.len(),
        observations.len(),
        &stale[..stale.len().min(10)]
    );
    // Both values of each component were actually observed.
    for want in [
        |s: &Seen| matches!(s, Seen::Partner(false)),
        |s: &Seen| matches!(s, Seen::Partner(true)),
        |s: &Seen| matches!(s, Seen::Toggler(false)),
        |s: &Seen| matches!(s, Seen::Toggler(true)),
    ] {
        assert!(observations.iter().any(|(_, _, s)| want(s)));
    }
    assert!(up.count() > 0);
    let st = status(&gw);
    assert_eq!(st["policy"]["last_reload"]["result"], "success", "{st}");
    assert_eq!(reloads(&gw, "file", "failure"), 0);
    assert_eq!(reloads(&gw, "signal", "failure"), 0);
}

// ---------------------------------------------------------------------------
// (c) Crash in the middle of a storm of changes
// ---------------------------------------------------------------------------

#[test]
fn sigkill_during_a_storm_of_changes_keeps_every_acknowledged_change() {
    let mut policy = base_policy();
    for t in 0..4 {
        policy.push_str(&format!(
            "  crash-target-{t}:\n    secret: ct-secret\n    features: [login_client]\n"
        ));
    }
    let (_up, mut gw) = start(&policy);
    let acked_adds: Mutex<Vec<(String, String, String)>> = Mutex::new(Vec::new());
    // Per thread: the last acknowledged description index, and the index
    // of one still in flight when the gateway died (if any).
    let described: Mutex<DescribedIndexes> = Mutex::new(BTreeMap::new());
    let acks = AtomicUsize::new(0);
    let pid = gw.pid();
    std::thread::scope(|s| {
        for t in 0..4usize {
            let (base, acked_adds, described, acks) =
                (gw.base.clone(), &acked_adds, &described, &acks);
            s.spawn(move || {
                let c = http_client();
                let owner = if t % 2 == 0 { "owner" } else { "owner2" };
                let target = format!("crash-target-{t}");
                let mut last_desc = None;
                for i in 0..400usize {
                    if i % 2 == 0 {
                        let description = format!("crash-{t}-{i}");
                        let r = post(
                            &c,
                            &base,
                            owner,
                            "/clients/add",
                            &[
                                ("description", &description),
                                ("features", r#"["direct_read_access"]"#),
                            ],
                        );
                        match r {
                            Ok(r) if r.status == 200 => {
                                let v = r.json();
                                assert_eq!(v["stat"], "ok", "{v}");
                                acked_adds.lock().unwrap().push((
                                    v["client_id"].as_str().unwrap().to_string(),
                                    v["client_secret"].as_str().unwrap().to_string(),
                                    description,
                                ));
                                acks.fetch_add(1, Ordering::SeqCst);
                            }
                            // Dead gateway: stop.
                            _ => break,
                        }
                    } else {
                        let description = format!("desc-{t}-{i}");
                        let r = post(
                            &c,
                            &base,
                            owner,
                            "/clients/set_description",
                            &[("for_client_id", &target), ("description", &description)],
                        );
                        match r {
                            Ok(r) if r.status == 200 && r.json()["stat"] == "ok" => {
                                last_desc = Some(i);
                                acks.fetch_add(1, Ordering::SeqCst);
                            }
                            _ => {
                                described.lock().unwrap().insert(t, (last_desc, Some(i)));
                                return;
                            }
                        }
                    }
                }
                described.lock().unwrap().insert(t, (last_desc, None));
            });
        }
        // Kill once the storm is well under way, while writes are in flight.
        let reached = wait_until(Duration::from_secs(20), || {
            acks.load(Ordering::SeqCst) >= 60
        });
        assert!(reached.is_some(), "the storm did not get going");
        signal_pid(pid, "KILL");
    });
    let acked_adds = acked_adds.into_inner().unwrap();
    let described = described.into_inner().unwrap();
    eprintln!(
        "killed after {} acknowledged adds; descriptions (last acked, in flight): {described:?}",
        acked_adds.len()
    );
    assert!(acked_adds.len() >= 20, "{}", acked_adds.len());

    // The file on disk parses and holds every acknowledged change.
    let file = policy_file(&gw);
    for (id, secret, description) in &acked_adds {
        let c = &file["clients"][id];
        assert_eq!(c["description"], *description, "acknowledged add {id} lost");
        assert_eq!(c["secret"], *secret);
    }
    for (t, (last, in_flight)) in &described {
        let got = file["clients"][format!("crash-target-{t}")]["description"].clone();
        let mut allowed: Vec<Value> = Vec::new();
        allowed.push(match last {
            Some(i) => json!(format!("desc-{t}-{i}")),
            None => Value::Null,
        });
        if let Some(i) = in_flight {
            allowed.push(json!(format!("desc-{t}-{i}")));
        }
        assert!(
            allowed.contains(&got),
            "crash-target-{t}: {got} not in {allowed:?}"
        );
    }
    // Every acknowledged change was audited (complete lines; only a last,
    // unacknowledged one may be torn).
    let lines = audit_lines(&gw);
    let parsed: Vec<Value> = lines
        .iter()
        .enumerate()
        .filter_map(|(i, l)| match serde_json::from_str::<Value>(l) {
            Ok(v) => Some(v),
            Err(e) => {
                assert_eq!(i, lines.len() - 1, "torn audit line {i}: {l:?}: {e}");
                None
            }
        })
        .collect();
    let audited: BTreeSet<&str> = parsed
        .iter()
        .filter(|l| l["endpoint"] == "/clients/add")
        .map(|l| l["target"].as_str().unwrap())
        .collect();
    for (id, _, _) in &acked_adds {
        assert!(audited.contains(id.as_str()), "add of {id} not audited");
    }

    // Restarted on the same directory: the same state is served.
    gw.restart();
    for (id, secret, _) in &acked_adds {
        gw.get(ENTITY, Some((id, secret))).assert_ok();
    }
    let listed = gw.post_as("owner", "/clients/list", &[]).assert_ok();
    let listed: BTreeSet<&str> = listed["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client_id"].as_str().unwrap())
        .collect();
    for (id, _, _) in &acked_adds {
        assert!(listed.contains(id.as_str()));
    }
    // And it keeps taking changes.
    let v = gw
        .post_as("owner", "/clients/add", &[("description", "after restart")])
        .assert_ok();
    assert_eq!(
        policy_file(&gw)["clients"][v["client_id"].as_str().unwrap()]["description"],
        "after restart"
    );
}

// ---------------------------------------------------------------------------
// (d) File reload and SIGHUP
// ---------------------------------------------------------------------------

#[test]
fn a_file_edit_is_picked_up_within_a_second() {
    let (_up, gw) = start(&base_policy());
    assert!(!read_partner_schema(&gw));
    let v0 = version(&gw);
    let file_ok = reloads(&gw, "file", "success");
    replace_file(
        &gw.policy_path(),
        policy(SCHEMA_B, "[direct_read_access]").as_bytes(),
    );
    let took = wait_until(Duration::from_secs(3), || read_partner_schema(&gw));
    let took = took.expect("edit not picked up within 3 s");
    assert!(took <= Duration::from_secs(1), "picked up after {took:?}");
    let st = status(&gw);
    assert_eq!(st["policy"]["version"], v0 + 1, "{st}");
    assert_eq!(st["policy"]["last_reload"]["source"], "file");
    assert_eq!(st["policy"]["last_reload"]["result"], "success");
    assert_eq!(reloads(&gw, "file", "success"), file_ok + 1);

    // Rewriting it in place (no rename) is noticed too.
    std::fs::write(
        gw.policy_path(),
        policy(SCHEMA_A, "[direct_read_access]").as_bytes(),
    )
    .unwrap();
    let took = wait_until(Duration::from_secs(3), || !read_partner_schema(&gw));
    assert!(
        took.is_some_and(|t| t <= Duration::from_secs(1)),
        "{took:?}"
    );
}

#[test]
fn sighup_reloads_at_once() {
    let mut a = policy(SCHEMA_A, "[direct_read_access]");
    let b = policy(SCHEMA_B, "[direct_read_access]");
    assert!(a.len() <= b.len());
    // Same length, same inode, same mtime: invisible to the poller.
    while a.len() < b.len() {
        a.push(' ');
    }
    let (_up, gw) = start(&a);
    let path = gw.policy_path();
    let before = std::fs::metadata(&path).unwrap().modified().unwrap();
    {
        use std::io::{Seek, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.seek(std::io::SeekFrom::Start(0)).unwrap();
        f.write_all(b.as_bytes()).unwrap();
        f.set_modified(before).unwrap();
        f.sync_all().unwrap();
    }
    assert_eq!(
        std::fs::metadata(&path).unwrap().modified().unwrap(),
        before
    );
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        !read_partner_schema(&gw),
        "the poller should not see this edit (the test relies on it)"
    );
    let v0 = version(&gw);
    let sig_ok = reloads(&gw, "signal", "success");
    gw.signal("HUP");
    let took = wait_until(Duration::from_secs(3), || read_partner_schema(&gw));
    assert!(
        took.is_some_and(|t| t <= Duration::from_secs(1)),
        "SIGHUP reload took {took:?}"
    );
    let st = status(&gw);
    assert_eq!(st["policy"]["version"], v0 + 1);
    assert_eq!(st["policy"]["last_reload"]["source"], "signal");
    assert_eq!(st["policy"]["last_reload"]["result"], "success");
    assert_eq!(reloads(&gw, "signal", "success"), sig_ok + 1);
    // SIGHUP on an unchanged file changes nothing.
    gw.signal("HUP");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(version(&gw), v0 + 1);
    assert!(read_partner_schema(&gw));
}

#[test]
fn an_invalid_file_is_rejected_whole_and_shown_in_status_and_metrics() {
    let (up, gw) = start(&base_policy());
    let path = gw.policy_path();
    let path_text = path.display().to_string();
    let good_b = policy(SCHEMA_B, "[direct_read_access]");
    let bad_feature = policy(SCHEMA_B, "[direct_read_access, ninja_superuser]");
    let truncated = &good_b[..good_b.find("  toggler:").unwrap() + "  toggler:\n    secr".len()];
    let garbage = "{{{ this: is [ not yaml\n\u{0}\u{1}";
    let bad_cidr = good_b.replace(
        "  login:\n",
        "  login:\n    whitelist: [\"123.4.5.6/7890\"]\n",
    );
    let unknown_attr = policy("[givenName, nosuch]", "[direct_read_access]");

    let st0 = status(&gw);
    let (v0, h0) = (
        st0["policy"]["version"].as_u64().unwrap(),
        st0["policy"]["hash"].as_str().unwrap().to_string(),
    );
    assert_eq!(h0.len(), 64, "sha-256 hex: {st0}");
    let cases: [(&str, &str, Option<&str>); 5] = [
        ("garbage", garbage, None),
        (
            "bad feature",
            &bad_feature,
            Some("clients.toggler.features[1]"),
        ),
        ("truncated", truncated, None),
        ("bad cidr", &bad_cidr, Some("clients.login.whitelist[0]")),
        (
            "unknown attribute",
            &unknown_attr,
            Some("clients.partner.access_schemas.user.read"),
        ),
    ];
    for (name, text, key) in cases {
        let failures = reloads(&gw, "file", "failure");
        replace_file(&path, text.as_bytes());
        let took = wait_until(Duration::from_secs(3), || {
            reloads(&gw, "file", "failure") > failures
        });
        assert!(
            took.is_some_and(|t| t <= Duration::from_secs(1)),
            "{name}: failure not counted within 1 s ({took:?})"
        );
        assert_eq!(reloads(&gw, "file", "failure"), failures + 1, "{name}");
        let st = status(&gw);
        let p = &st["policy"];
        assert_eq!(p["version"], v0, "{name}: {st}");
        assert_eq!(p["hash"], h0.as_str(), "{name}: {st}");
        assert_eq!(p["last_reload"]["result"], "failure", "{name}: {st}");
        assert_eq!(p["last_reload"]["source"], "file", "{name}: {st}");
        let errors: Vec<&str> = p["last_reload"]["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        assert!(!errors.is_empty(), "{name}: {st}");
        assert!(
            errors.iter().all(|e| e.contains(&path_text)),
            "{name}: errors name the file: {errors:?}"
        );
        if let Some(key) = key {
            assert!(
                errors.iter().any(|e| e.contains(key)),
                "{name}: errors name {key}: {errors:?}"
            );
        }
        // The running policy keeps serving, untouched (schema A, toggler
        // reads, login refused).
        assert!(!read_partner_schema(&gw), "{name}");
        gw.get_as("toggler", ENTITY).assert_ok();
        gw.get_as("login", ENTITY)
            .assert_error(403, 403, "client_permission_error");
        gw.post_as("owner", "/clients/list", &[]).assert_ok();
        // The error is logged with file and key.
        if let Some(key) = key {
            let log = gw.stderr();
            assert!(
                log.contains(key) && log.contains(&path_text),
                "{name}: not logged"
            );
        }
    }
    let total_failures = reloads(&gw, "file", "failure");
    assert!(total_failures >= 5);

    // A good file after bad ones is taken.
    replace_file(&path, good_b.as_bytes());
    assert!(
        wait_until(Duration::from_secs(3), || read_partner_schema(&gw))
            .is_some_and(|t| t <= Duration::from_secs(1))
    );
    let st = status(&gw);
    // (Rejected loads may use up version numbers; the version only grows.)
    assert!(st["policy"]["version"].as_u64().unwrap() > v0, "{st}");
    assert_ne!(st["policy"]["hash"], h0.as_str());
    assert_eq!(st["policy"]["last_reload"]["result"], "success", "{st}");
    assert_eq!(st["policy"]["last_reload"]["errors"], json!([]));
    assert!(up.count() > 0);

    // SIGHUP on an invalid file: rejected, counted under "signal".
    replace_file(&path, bad_feature.as_bytes());
    assert!(wait_until(Duration::from_secs(3), || {
        reloads(&gw, "file", "failure") > total_failures
    })
    .is_some());
    let sig_fail = reloads(&gw, "signal", "failure");
    gw.signal("HUP");
    assert!(wait_until(Duration::from_secs(3), || {
        reloads(&gw, "signal", "failure") > sig_fail
    })
    .is_some());
    assert_eq!(status(&gw)["policy"]["last_reload"]["source"], "signal");
    assert!(read_partner_schema(&gw));
    // An API change is not blocked by a bad file on disk: it is made on
    // the running policy and replaces the file with a valid one.
    gw.post_as(
        "owner",
        "/clients/set_description",
        &[
            ("for_client_id", "partner"),
            ("description", "fixed by API"),
        ],
    )
    .assert_ok();
    let file = policy_file(&gw);
    assert_eq!(file["clients"]["partner"]["description"], "fixed by API");
    assert_eq!(
        file["clients"]["toggler"]["features"],
        json!(["direct_read_access"])
    );
}

#[test]
fn status_reports_success_again_once_the_running_policy_is_restored_on_disk() {
    let (_up, gw) = start(&base_policy());
    let path = gw.policy_path();
    let good = std::fs::read(&path).unwrap();
    let failures = reloads(&gw, "file", "failure");
    replace_file(&path, b"{{{ garbage");
    assert!(wait_until(Duration::from_secs(3), || {
        reloads(&gw, "file", "failure") > failures
    })
    .is_some());
    assert_eq!(status(&gw)["policy"]["last_reload"]["result"], "failure");
    // The operator reverts the bad edit: the file is valid again and is
    // exactly what runs.
    replace_file(&path, &good);
    std::thread::sleep(Duration::from_millis(800));
    let st = status(&gw);
    assert_eq!(
        st["policy"]["last_reload"]["result"], "success",
        "the file on disk is valid and in force, yet /status still reports the old failure: {st}"
    );
}

#[test]
fn an_api_change_does_not_drop_a_file_edit_made_just_before_it() {
    let (_up, gw) = start(&base_policy());
    for round in 0..5 {
        // The operator edits the file (partner to schema B or back) ...
        let to_b = round % 2 == 0;
        let mut p = policy_file(&gw);
        p["clients"]["partner"]["access_schemas"]["user"]["read"] = if to_b {
            json!(["familyName", "primaryAddress.city"])
        } else {
            json!(["givenName", "email"])
        };
        let text = serde_yaml::to_string(&p).unwrap();
        replace_file(&gw.policy_path(), text.as_bytes());
        // ... and, a moment later, before the next poll, an owner calls the API.
        gw.post_as(
            "owner",
            "/clients/set_description",
            &[
                ("for_client_id", "fullreader"),
                ("description", &format!("round {round}")),
            ],
        )
        .assert_ok();
        std::thread::sleep(Duration::from_millis(600));
        let file = policy_file(&gw);
        assert_eq!(
            file["clients"]["fullreader"]["description"],
            format!("round {round}")
        );
        let read = file["clients"]["partner"]["access_schemas"]["user"]["read"].clone();
        assert_eq!(
            (read.clone(), read_partner_schema(&gw)),
            (
                if to_b {
                    json!(["familyName", "primaryAddress.city"])
                } else {
                    json!(["givenName", "email"])
                },
                to_b
            ),
            "round {round}: the operator's file edit was overwritten by the API write"
        );
    }
}
