//! The management calls (Capture's `/clients/*` and CONNECT's Roles API) go
//! through the same decision as the record routes: the same refusal of a
//! second `Authorization` header, the same parameter limit, the same denial
//! reason in the metrics, and an authorization that holds for the policy the
//! change is applied to.
// A test (or bench) that cannot set up fails loudly; the no-panic rule is for the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const RECORD: &str = "/entity?type_name=user&id=1";
const LIST: &str = "/clients/list";
/// The owner's own Roles (it is a Tenant Member of t1 in `ONE_PATH_CLIENTS`).
const OWNER_ROLES: &str = "/api/v1/Tenants/t1/ClientCredentialClients/owner/Roles";

/// `owner` may call every record route, every Capture management endpoint and
/// read its own Roles; `farroles` is allow-listed away from loopback.
const ONE_PATH_CLIENTS: &str = r#"
clients:
  owner:
    secret: owner-secret
    features: [owner]
    tenant: t1
    roles: [Tenant Member]
  farroles:
    secret: farroles-secret
    features: [direct_read_access]
    tenant: t1
    roles: [Tenant Member]
    whitelist: ["203.0.113.0/24"]
"#;

fn start(limits: Option<Value>, metrics: bool) -> (TestUpstream, Gateway) {
    let up = TestUpstream::capture_like();
    let mut b = GatewayBuilder::new(&up).policy(&policy_with_clients(ONE_PATH_CLIENTS));
    if let Some(l) = limits {
        b = b.setting("limits", l);
    }
    if metrics {
        b = b.metrics(json!({}));
    }
    (up, b.start())
}

/// GET `target` on a fresh connection with one `Authorization` line per item.
fn raw_get(gw: &Gateway, target: &str, authorizations: &[String]) -> RawResponse {
    let mut req = format!("GET {target} HTTP/1.1\r\nHost: gw\r\n");
    for a in authorizations {
        req.push_str(&format!("Authorization: {a}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    gw.raw(req.as_bytes(), false)
}

fn body_json(r: &RawResponse) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| {
        panic!(
            "body is not JSON ({e}): {}",
            String::from_utf8_lossy(&r.body)
        )
    })
}

fn text(r: &RawResponse) -> String {
    format!("{} {}", r.status_line, String::from_utf8_lossy(&r.body))
}

/// How a Capture-shaped management answer differs from the record route's
/// refusal, if it does.
fn capture_mismatch(what: &str, record: &RawResponse, mgmt: &RawResponse) -> Option<String> {
    if mgmt.status() != record.status() {
        return Some(format!(
            "{what}: HTTP status {} where the record route answers {} \
             (record route: {}; management: {})",
            mgmt.status(),
            record.status(),
            text(record),
            text(mgmt)
        ));
    }
    let (r, m) = (body_json(record), body_json(mgmt));
    ["stat", "code", "error", "argument_name"]
        .into_iter()
        .find(|k| m[k] != r[k])
        .map(|k| {
            format!(
                "{what}: `{k}` is {} where the record route's is {} \
                 (record route: {r}; management: {m})",
                m[k], r[k]
            )
        })
}

/// How a Roles API answer differs from the record route's refusal: same
/// HTTP status, in a CONNECT ErrorResponse.
fn roles_mismatch(what: &str, record: &RawResponse, roles: &RawResponse) -> Option<String> {
    if roles.status() != record.status() {
        return Some(format!(
            "{what}: HTTP status {} where the record route answers {} \
             (record route: {}; Roles API: {})",
            roles.status(),
            record.status(),
            text(record),
            text(roles)
        ));
    }
    let v = body_json(roles);
    v["Error"]
        .as_str()
        .is_none_or(str::is_empty)
        .then(|| format!("{what}: the refusal is not a CONNECT ErrorResponse: {v}"))
}

fn assert_no_mismatch(mismatches: [Option<String>; 2]) {
    let m: Vec<String> = mismatches.into_iter().flatten().collect();
    assert!(
        m.is_empty(),
        "management answers differ from the record route's:\n{}",
        m.join("\n")
    );
}

#[test]
fn management_refuses_two_authorization_headers_like_record_routes() {
    let (up, gw) = start(None, false);
    let one = [basic("owner", "owner-secret")];
    let two = [one[0].clone(), one[0].clone()];
    // With one header each call is answered: only the second header differs.
    for target in [RECORD, LIST, OWNER_ROLES] {
        let r = raw_get(&gw, target, &one);
        assert_eq!(r.status(), 200, "{target} with one header: {}", text(&r));
    }
    let calls_before = up.count();

    let record = raw_get(&gw, RECORD, &two);
    assert_eq!(
        record.status(),
        400,
        "record route with two Authorization headers: {}",
        text(&record)
    );
    let v = body_json(&record);
    assert_eq!(
        (&v["error"], &v["argument_name"]),
        (&json!("invalid_argument"), &json!("Authorization")),
        "record route with two Authorization headers: {v}"
    );

    let list = raw_get(&gw, LIST, &two);
    let roles = raw_get(&gw, OWNER_ROLES, &two);
    assert_no_mismatch([
        capture_mismatch(
            "GET /clients/list, two Authorization headers",
            &record,
            &list,
        ),
        roles_mismatch("GET Roles, two Authorization headers", &record, &roles),
    ]);
    assert_eq!(
        up.count(),
        calls_before,
        "a refused call reached the upstream"
    );
}

#[test]
fn management_refuses_more_parameters_than_the_limit_like_record_routes() {
    const MAX: usize = 8;
    let (up, gw) = start(Some(json!({ "max_parameters": MAX })), false);
    let auth = [basic("owner", "owner-secret")];
    // MAX + 2 parameters in all, whatever the call.
    let extra = |given: usize| -> String { (given..MAX + 2).map(|i| format!("&p{i}=1")).collect() };
    let record_target = format!("{RECORD}{}", extra(2));
    let list_target = format!("{LIST}?p0=1{}", extra(1));
    let roles_target = format!("{OWNER_ROLES}?skip=0{}", extra(1));
    // Within the limit each call is answered (with parameters each one
    // takes: an unknown one is refused on its own account).
    for target in [RECORD, LIST, &format!("{OWNER_ROLES}?skip=0")] {
        let r = raw_get(&gw, target, &auth);
        assert_eq!(r.status(), 200, "{target} within the limit: {}", text(&r));
    }
    let calls_before = up.count();

    let record = raw_get(&gw, &record_target, &auth);
    assert_eq!(
        record.status(),
        400,
        "record route with {} parameters (limit {MAX}): {}",
        MAX + 2,
        text(&record)
    );
    assert_eq!(
        body_json(&record)["argument_name"],
        "parameters",
        "record route over the parameter limit: {}",
        text(&record)
    );

    let list = raw_get(&gw, &list_target, &auth);
    let roles = raw_get(&gw, &roles_target, &auth);
    let over = format!("{} parameters (limit {MAX})", MAX + 2);
    assert_no_mismatch([
        capture_mismatch(&format!("GET /clients/list, {over}"), &record, &list),
        roles_mismatch(&format!("GET Roles, {over}"), &record, &roles),
    ]);
    assert_eq!(
        up.count(),
        calls_before,
        "a refused call reached the upstream"
    );
}

/// Sum of `recordgate_requests_total` over the series whose labels include
/// every pair of `want`.
fn requests_total(exposition: &str, want: &[(&str, &str)]) -> f64 {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("recordgate_requests_total{"))
        .filter_map(|l| l.split_once('}'))
        .filter(|(labels, _)| {
            want.iter()
                .all(|(k, v)| labels.split(',').any(|p| p == format!("{k}=\"{v}\"")))
        })
        .map(|(_, value)| value.trim().parse::<f64>().expect("sample value"))
        .fold(0.0, |a, b| a + b)
}

/// Scrapes (bounded, 10 s) until `want` has counted `n` requests.
fn scrape_until_counted(gw: &Gateway, want: &[(&str, &str)], n: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let e = gw.scrape();
        if requests_total(&e, want) >= n {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "recordgate_requests_total{want:?} did not reach {n} within 10 s:\n{e}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn roles_api_allow_list_denial_is_counted_as_ip() {
    let (up, gw) = start(None, true);
    let auth = [basic("farroles", "farroles-secret")];
    // The record route's refusal of the same client from the same address.
    let record = raw_get(&gw, RECORD, &auth);
    assert_eq!(record.status(), 403, "record route: {}", text(&record));
    scrape_until_counted(&gw, &[("route", "/entity"), ("decision", "ip")], 1.0);

    let roles = raw_get(
        &gw,
        "/api/v1/Tenants/t1/ClientCredentialClients/farroles/Roles",
        &auth,
    );
    assert_eq!(
        roles.status(),
        403,
        "Roles API from outside the allow list: {}",
        text(&roles)
    );
    let e = scrape_until_counted(&gw, &[("route", "management")], 1.0);
    let ip = requests_total(&e, &[("route", "management"), ("decision", "ip")]);
    let feature = requests_total(&e, &[("route", "management"), ("decision", "feature")]);
    assert_eq!(
        (ip, feature),
        (1.0, 0.0),
        "the Roles API's allow-list denial must be counted under decision=\"ip\" like the \
         record route's, not \"feature\" (management ip={ip}, feature={feature}):\n{}",
        e.lines()
            .filter(|l| l.starts_with("recordgate_requests_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    up.assert_untouched();
}

// ---------------------------------------------------------------------------
// A management write is authorized against the policy it is applied to
// ---------------------------------------------------------------------------

const FILLER_CLIENTS: usize = 2000;
const WRITERS: usize = 4;
const ROUNDS: usize = 6;

/// `alice` and `bob` are owners; `carol` is what bob keeps changing. The
/// filler clients make every change slow to compile and persist, so writes
/// queue behind the store's lock.
fn race_policy() -> String {
    let mut s = String::from(
        "clients:\n  alice: {secret: alice-secret, features: [owner]}\n  \
         bob: {secret: bob-secret, features: [owner]}\n  \
         carol: {secret: carol-secret, features: [direct_read_access]}\n",
    );
    for i in 0..FILLER_CLIENTS {
        s.push_str(&format!(
            "  filler{i}: {{secret: filler{i}-secret, features: [direct_read_access], \
             whitelist: [\"10.0.0.0/8\", \"192.168.0.0/16\"], access_schemas: {{user: \
             {{read: [givenName, email, primaryAddress.city], write: [givenName]}}}}}}\n"
        ));
    }
    policy_with_clients(&s)
}

fn set_bob_features(gw: &Gateway, features: &str) -> Resp {
    gw.post_as(
        "alice",
        "/clients/set_features",
        &[("for_client_id", "bob"), ("features", features)],
    )
}

fn audit_lines(gw: &Gateway) -> Vec<Value> {
    std::fs::read_to_string(gw.audit_path())
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l:?}: {e}")))
        .collect()
}

/// Walks the audit log in commit order, following bob's features; returns
/// (index, request_id) of bob's changes committed while he was not an owner.
fn committed_without_owner(lines: &[Value]) -> Vec<(usize, String)> {
    let mut owner = true;
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if l["caller"] == "bob" && !owner {
            out.push((i, l["request_id"].as_str().unwrap_or("").to_string()));
        }
        if l["target"] == "bob" {
            owner = l["after"]["features"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == "owner"));
        }
    }
    out
}

#[test]
fn owner_change_racing_revocation_of_owner_is_never_applied() {
    let up = TestUpstream::capture_like();
    let gw = Arc::new(GatewayBuilder::new(&up).policy(&race_policy()).start());
    let started = Instant::now();
    // One change, timed, so the writers get queued behind the lock.
    let t = Instant::now();
    gw.post_as(
        "bob",
        "/clients/set_description",
        &[("for_client_id", "carol"), ("description", "warm-up")],
    )
    .assert_ok();
    let change = t.elapsed();

    // (request_id, status) of every write bob sent.
    let answers: Arc<Mutex<Vec<(String, u16)>>> = Arc::default();
    let mut rounds = 0;
    let mut violations = Vec::new();
    while rounds < ROUNDS && violations.is_empty() && started.elapsed() < Duration::from_secs(10) {
        rounds += 1;
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (gw, stop, answers) = (gw.clone(), stop.clone(), answers.clone());
                std::thread::spawn(move || {
                    let client = http_client();
                    for n in 0..60 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let body = encode_form(&[
                            ("for_client_id", "carol"),
                            ("description", &format!("round {rounds} writer {w} #{n}")),
                        ]);
                        let r = gw.send(
                            client
                                .post(gw.url("/clients/set_description"))
                                .header("authorization", basic("bob", "bob-secret"))
                                .header("content-type", "application/x-www-form-urlencoded")
                                .body(body),
                        );
                        let id = r.header("x-request-id").unwrap_or("").to_string();
                        answers.lock().unwrap().push((id, r.status));
                    }
                })
            })
            .collect();
        // Let bob's writes queue up, then revoke his owner feature.
        std::thread::sleep((change * 3).max(Duration::from_millis(100)));
        let r = set_bob_features(&gw, r#"["direct_access"]"#);
        assert_eq!(r.status, 200, "alice revokes bob's owner: {}", r.text());
        std::thread::sleep((change * 2).max(Duration::from_millis(100)));
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().expect("writer thread");
        }
        let r = set_bob_features(&gw, r#"["owner"]"#);
        assert_eq!(r.status, 200, "alice restores bob's owner: {}", r.text());
        violations = committed_without_owner(&audit_lines(&gw));
    }

    let lines = audit_lines(&gw);
    let answers = answers.lock().unwrap().clone();
    let ok: Vec<&String> = answers
        .iter()
        .filter(|(_, s)| *s == 200)
        .map(|(id, _)| id)
        .collect();
    assert!(
        !ok.is_empty(),
        "bob's writes were never accepted: the race was not exercised ({answers:?})"
    );
    let audited: HashSet<&str> = lines
        .iter()
        .filter_map(|l| l["request_id"].as_str())
        .collect();
    for id in &ok {
        assert!(
            audited.contains(id.as_str()),
            "bob's write {id} was answered 200 but is not in the audit log"
        );
    }
    let late_ok: Vec<&(usize, String)> = violations
        .iter()
        .filter(|(_, id)| ok.contains(&id))
        .collect();
    assert!(
        violations.is_empty(),
        "{} change(s) by bob were committed after alice's change revoking bob's owner feature \
         (round {rounds} of {ROUNDS}, one change took {change:?}); {} of them answered 200; \
         audit indices and request ids: {violations:?}",
        violations.len(),
        late_ok.len()
    );
    up.assert_untouched();
}
