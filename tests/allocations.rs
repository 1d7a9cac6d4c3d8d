//! Allocations per request on the decision path, counted by a global
//! allocator that tallies per thread (so parallel tests do not mix).
//!
//! Lookups (route, policy, allow-list, feature, grants) must not allocate at
//! all; parsing and filtering may allocate what the body requires, and the
//! counts are printed so a regression shows up as a number, not a feeling.
// A test (or bench) that cannot set up fails loudly; the no-panic rule is for the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::IpAddr;
use std::path::Path;

use recordgate::cidr::CidrSet;
use recordgate::decide::authenticate::authenticate;
use recordgate::decide::client_address::check_allow_list;
use recordgate::decide::grants::grants;
use recordgate::decide::routes::check_feature;
use recordgate::decide::routes::{ResponseRecords, RouteTable};
use recordgate::decide::{Facts, Rules};
use recordgate::filter::response::filter_response_bytes;
use recordgate::params::Params;
use recordgate::policy::store::load_policy_file;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator unchanged; the counter is a
// const-initialised thread local, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by `f`, and its result.
fn count<T>(f: impl FnOnce() -> T) -> (u64, T) {
    let before = ALLOCATIONS.with(Cell::get);
    let out = f();
    (ALLOCATIONS.with(Cell::get) - before, out)
}

fn demo_snapshot() -> recordgate::policy::compile::Snapshot {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/policy.yaml");
    load_policy_file(&path, 1).expect("demo policy loads")
}

fn record(id: u64) -> serde_json::Value {
    serde_json::json!({
        "id": id, "uuid": format!("uuid-{id}"), "givenName": "Ada", "familyName": "Lovelace",
        "email": "ada@example.com", "displayName": "Countess", "birthday": "1815-12-10",
        "primaryAddress": {"address1": "12 Street", "city": "London", "zip": "N1", "country": "UK"},
        "photos": [{"id": 1, "type": "large", "value": "http://p/1"}, {"id": 2, "type": "small", "value": "http://p/2"}],
        "internal": {"riskScore": 3, "notes": "n"}
    })
}

#[test]
fn lookups_on_the_decision_path_do_not_allocate() {
    let snap = demo_snapshot();
    let routes = RouteTable::builtin();
    let params = Params::parse_limited(Some("type_name=user&id=7"), None, 256).expect("params");
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let client = snap.clients.get("partner-readonly").expect("demo client");
    // Warm anything lazily initialised.
    let route = routes.find("/entity").expect("route");
    check_allow_list(client, ip).expect("allowed");
    check_feature(client, route).expect("feature");
    grants(&snap, client, &params).expect("grants");

    let (n, route) = count(|| routes.find("/entity.find"));
    assert_eq!(n, 0, "route lookup allocated");
    let route = route.expect("route");
    let (n, c) = count(|| snap.clients.get("partner-readonly"));
    assert_eq!(n, 0, "client lookup allocated");
    let c = c.expect("client");
    let (n, r) = count(|| check_allow_list(c, ip));
    assert_eq!(n, 0, "allow-list check allocated");
    assert!(r.is_ok());
    let (n, r) = count(|| check_feature(c, route));
    assert_eq!(n, 0, "feature check allocated");
    assert!(r.is_ok());
    let (n, g) = count(|| grants(&snap, c, &params).map(|g| g.read_only));
    assert_eq!(n, 0, "grant lookup allocated");
    assert!(g.is_ok());
}

#[test]
fn allocations_per_request_stay_what_the_request_needs() {
    let snap = demo_snapshot();
    let authorization = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            "partner-readonly:partner-secret"
        )
    );
    let rules = Rules {
        trusted_proxies: CidrSet::new(&[]),
        max_skew_secs: 300,
        rate_limit_default: None,
        tokens: None,
    };
    let headers = http::HeaderMap::new();
    let (params_allocs, params) =
        count(|| Params::parse_limited(Some("type_name=user&id=7"), None, 256).expect("params"));
    let facts = Facts {
        headers: &headers,
        peer: None,
        path: "/entity",
        params: &params,
        now_secs: 0,
        tls_client_subject: None,
    };
    let (auth_allocs, client) =
        count(|| authenticate(&snap, &rules, &facts, Some(authorization.as_bytes())).is_ok());
    assert!(client, "demo credentials authenticate");

    let read = snap.clients["partner-readonly"].schemas["user"]
        .read
        .as_deref()
        .expect("read schema");
    let entity =
        serde_json::to_vec(&serde_json::json!({"stat": "ok", "result": record(7)})).expect("body");
    let find = serde_json::to_vec(&serde_json::json!({
        "stat": "ok", "result_count": 50,
        "results": (0..50).map(record).collect::<Vec<_>>()
    }))
    .expect("body");
    let (entity_allocs, out) =
        count(|| filter_response_bytes(&entity, ResponseRecords::Result, read, None, 32));
    assert!(out.is_ok());
    let (find_allocs, out) =
        count(|| filter_response_bytes(&find, ResponseRecords::Results, read, None, 32));
    assert!(out.is_ok());

    println!("allocations: params {params_allocs}, Basic auth {auth_allocs}, filter /entity ({} B) {entity_allocs}, filter /entity.find ({} B, 50 records) {find_allocs}", entity.len(), find.len());
    // Parameters: one vector and one string per name and value.
    assert!(params_allocs <= 6, "params: {params_allocs}");
    // Basic: the decoded credentials, nothing per lookup.
    assert!(auth_allocs <= 4, "auth: {auth_allocs}");
    // Filtering: the output buffer and a few bounded work buffers, not a
    // node per attribute (the reference DOM filter makes hundreds).
    assert!(entity_allocs <= 16, "entity filter: {entity_allocs}");
    assert!(
        find_allocs <= 16,
        "find filter allocates per record: {find_allocs}"
    );
}
