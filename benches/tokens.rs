//! The per-request cost of a user token: the whole decision of an `/entity`
//! call (`decide::authorize`) made with Basic client credentials (what
//! every client call pays) against the same call made with a user token
//! (the binding looked up by its keyed hash among 100,000, the client's
//! secret tag checked), and the token lookup alone.
//!
//! Run with `cargo bench --bench tokens`; takes about half a minute.
// A test (or bench) that cannot set up fails loudly; the no-panic rule is for the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use criterion::{criterion_group, criterion_main, Criterion};
use recordgate::cidr::CidrSet;
use recordgate::config::secrets::SecretSource;
use recordgate::config::tokens::TokenSettings;
use recordgate::decide::routes::RouteTable;
use recordgate::decide::{authorize, Facts, Rules, Target};
use recordgate::params::Params;
use recordgate::policy::compile::{compile, CompileContext};
use recordgate::tokens::{Issued, TokenStore};

// The allocator the gateway binary runs with (src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BOUND: usize = 100_000;

fn bench_tokens(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("policy.yaml");
    let text = include_str!("../config/policy.yaml");
    std::fs::write(&policy_path, text).unwrap();
    let policy = recordgate::config::settings::from_yaml(&policy_path, text).unwrap();
    let ctx = CompileContext {
        file: &policy_path,
        version: 1,
    };
    let snap = compile(policy, &ctx).unwrap();
    let settings = TokenSettings {
        hash_key: SecretSource::Inline("bench-hash-key-0123456789abcdef-0123".into()),
        bindings_file: Some(dir.path().join("bindings.jsonl")),
        max_bindings: BOUND + 1,
        default_lifetime_secs: 3600,
        max_lifetime_secs: 3600,
        refresh_lifetime_secs: 3600,
        sweep_interval_secs: 60,
        sync: false,
    };
    let store = Arc::new(TokenStore::open(&settings, Path::new(&policy_path)).unwrap());
    let holder = store.holder(snap.clients.get("mobile-app").unwrap());
    let now = recordgate::tokens::now_secs();
    for i in 0..BOUND {
        let issued = Issued {
            access_token: format!("a{i:032x}"),
            refresh_token: None,
            expires_in: Some(3600),
            uuid: Some(format!("user-{i}")),
        };
        store.bind(&issued, &holder, now).unwrap();
    }
    let token = format!("a{:032x}", BOUND / 2);

    let rules = Rules {
        trusted_proxies: CidrSet::new(&[]),
        max_skew_secs: 300,
        rate_limit_default: None,
        tokens: Some(store.clone()),
    };
    let routes = RouteTable::builtin();
    let route = routes.find("/entity").unwrap();
    let basic = {
        let mut h = http::HeaderMap::new();
        let creds =
            base64::engine::general_purpose::STANDARD.encode("partner-readonly:partner-secret");
        h.insert(
            http::header::AUTHORIZATION,
            format!("Basic {creds}").parse().unwrap(),
        );
        h
    };
    let oauth = {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            format!("OAuth {token}").parse().unwrap(),
        );
        h
    };
    let by_id = Params::parse_limited(Some("type_name=user&id=7"), None, 64).unwrap();
    let own = Params::parse_limited(Some("type_name=user"), None, 64).unwrap();
    let facts = |headers, params| Facts {
        headers,
        peer: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        path: "/entity",
        params,
        now_secs: now,
        tls_client_subject: None,
    };

    let mut g = c.benchmark_group("tokens");
    let client_call = facts(&basic, &by_id);
    g.bench_function("authorize_basic_client", |b| {
        b.iter(|| authorize(&snap, &rules, black_box(&client_call), Target::Route(route)).is_ok())
    });
    let token_call = facts(&oauth, &own);
    assert!(authorize(&snap, &rules, &token_call, Target::Route(route)).is_ok());
    g.bench_function("authorize_user_token", |b| {
        b.iter(|| authorize(&snap, &rules, black_box(&token_call), Target::Route(route)).is_ok())
    });
    g.bench_function("token_lookup_alone", |b| {
        b.iter(|| store.lookup(black_box(token.as_bytes()), |b| b.is_some()))
    });
    g.finish();
}

criterion_group!(benches, bench_tokens);
criterion_main!(benches);
