//! Per-request policy costs and per-change compile costs:
//! allow-list lookups (1, 100, 10,000 CIDRs), signature verification, the
//! rate limiter (admit, refuse), and
//! compiling + swapping a policy of 1,000 and 100,000 clients.
// A test (or bench) that cannot set up fails loudly; the no-panic rule is for the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use ipnet::{IpNet, Ipv4Net};
use recordgate::cidr::CidrSet;
use recordgate::decide::credentials;
use recordgate::policy::compile::{compile, CompileContext};
use recordgate::policy::model::{AccessSchemasDef, ClientDef, PolicyFile, SecretSource};
use recordgate::rate::{now_ns, Bucket, RateLimit, RateLimitDef};

// The allocator the gateway binary runs with (src/main.rs), so compile times
// are the ones a deployment sees.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn cidrs(n: usize) -> Vec<IpNet> {
    (0..n)
        .map(|i| {
            // Every other /24, so ranges do not merge into one.
            let a = (10u32 << 24) | (((i as u32) * 2) << 8);
            IpNet::V4(Ipv4Net::new(Ipv4Addr::from(a), 24).unwrap_or_default())
        })
        .collect()
}

fn allowlist(c: &mut Criterion) {
    let mut g = c.benchmark_group("allowlist_lookup");
    for n in [1usize, 100, 10_000] {
        let set = CidrSet::new(&cidrs(n));
        let hit = IpAddr::V4(Ipv4Addr::from(
            (10u32 << 24) | ((((n as u32) / 2) * 2) << 8) | 7,
        ));
        let miss = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        g.bench_with_input(BenchmarkId::new("hit", n), &hit, |b, ip| {
            b.iter(|| set.contains(black_box(*ip)))
        });
        g.bench_with_input(BenchmarkId::new("miss", n), &miss, |b, ip| {
            b.iter(|| set.contains(black_box(*ip)))
        });
    }
    g.finish();
}

fn signature(c: &mut Criterion) {
    let params = [
        ("type_name", "user"),
        ("uuid", "99d399e1-7f2f-47c1-9abb-53e5171a0a64"),
        ("attributes", "[\"givenName\"]"),
    ];
    let date = "2026-11-22 10:00:00";
    let sig = credentials::sign(
        b"partner-secret",
        &credentials::string_to_sign("/entity", date, &params, false),
    );
    c.bench_function("signature_verify", |b| {
        b.iter(|| {
            credentials::verify_signature(
                b"partner-secret",
                "/entity",
                date,
                black_box(&params),
                &sig,
            )
        })
    });
    c.bench_function("basic_secret_compare", |b| {
        b.iter(|| credentials::secrets_equal(black_box(b"partner-secret"), b"partner-secret"))
    });
}

/// One call's limiter cost, clock read included: admitted (a fresh bucket
/// each time: one compare-and-swap) and refused (a used-up bucket: no
/// write).
fn rate_limit(c: &mut Criterion) {
    let limit = |rps: f64, burst: u32| {
        RateLimit::new(&RateLimitDef {
            requests_per_second: rps,
            burst,
        })
        .unwrap()
    };
    let mut g = c.benchmark_group("rate_limit");
    let open = limit(1_000.0, 100);
    g.bench_function("admit", |b| {
        b.iter_batched_ref(
            Bucket::default,
            |bucket| open.admit(bucket, now_ns()).is_ok(),
            BatchSize::SmallInput,
        )
    });
    let shut = limit(0.001, 1);
    let used = Bucket::default();
    let _ = shut.admit(&used, now_ns());
    g.bench_function("refuse", |b| {
        b.iter(|| shut.admit(black_box(&used), now_ns()).is_err())
    });
    g.finish();
}

fn demo_policy() -> PolicyFile {
    let text = include_str!("../config/policy.yaml");
    recordgate::config::settings::from_yaml(Path::new("policy.yaml"), text).unwrap_or_default()
}

fn with_clients(n: usize) -> PolicyFile {
    let mut p = demo_policy();
    for i in 0..n {
        let mut schemas = std::collections::BTreeMap::new();
        schemas.insert(
            "user".to_string(),
            AccessSchemasDef {
                read: Some(vec![
                    "givenName".into(),
                    "familyName".into(),
                    "primaryAddress.city".into(),
                ]),
                write: Some(vec!["givenName".into()]),
                ..Default::default()
            },
        );
        p.clients.insert(
            format!("client-{i:06}"),
            std::sync::Arc::new(ClientDef {
                secret: SecretSource::Inline(format!("secret-{i}")),
                description: String::new(),
                features: vec!["direct_read_access".into()],
                whitelist: Some(vec![format!("10.{}.{}.0/24", (i >> 8) & 255, i & 255)]),
                tenant: None,
                roles: Vec::new(),
                on_write_violation: Default::default(),
                enforcement: Default::default(),
                access_schemas: schemas,
                previous_secret: None,
                tls_client_subject: None,
                rate_limit: None,
            }),
        );
    }
    p
}

fn compile_and_swap(c: &mut Criterion) {
    let mut g = c.benchmark_group("policy_compile_and_swap");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    let ctx = CompileContext {
        file: Path::new("config/policy.yaml"),
        version: 2,
    };
    for n in [1_000usize, 100_000] {
        let policy = with_clients(n);
        let live = match compile(policy.clone(), &ctx) {
            Ok(s) => ArcSwap::from_pointee(s),
            Err(e) => panic!("bench policy does not compile: {e:?}"),
        };
        g.bench_with_input(BenchmarkId::from_parameter(n), &policy, |b, p| {
            b.iter(|| {
                if let Ok(snap) = compile(p.clone(), &ctx) {
                    live.store(std::sync::Arc::new(snap));
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, allowlist, signature, rate_limit, compile_and_swap);
criterion_main!(benches);
