//! The per-response cost of a shadow read schema: the enforced streaming
//! filter alone (what a client without shadow schemas runs) against the
//! enforced filter plus the shadow (a second stream filter over the same
//! chunks, the body kept and walked once to name the removed paths), on the
//! demo-shaped 2 KB `/entity` and 100 KB `/entity.find` bodies, in the
//! gateway's 16 KiB chunks.
//!
//! Run with `cargo bench --bench shadow`; takes about half a minute.
// A test (or bench) that cannot set up fails loudly; the no-panic rule is for the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use recordgate::decide::routes::ResponseRecords;
use recordgate::filter::response::StreamFilter;
use recordgate::filter::shadow::ShadowRead;
use serde_json::json;

// The allocator the gateway binary runs with (src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;
use common::{find_body, records, schemas};

const MAX_DEPTH: usize = 64;
const CHUNK: usize = 16 * 1024;

fn bench_shadow(c: &mut Criterion) {
    let schemas = schemas();
    let one = records(1);
    let entity = serde_json::to_vec(&json!({"result": one[0], "stat": "ok"})).expect("body");
    let find = find_body(&records(52));
    let cases: [(&str, &[u8], ResponseRecords); 2] = [
        ("2KB_entity", &entity, ResponseRecords::Result),
        ("100KB_find", &find, ResponseRecords::Results),
    ];
    for (name, body, records) in cases {
        let mut group = c.benchmark_group(format!("shadow/{name}"));
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.warm_up_time(Duration::from_millis(500));
        group.sample_size(20);
        group.measurement_time(Duration::from_secs(2));
        let enforced = &schemas.wide;
        let shadow = &schemas.narrow;
        let mut out = Vec::with_capacity(body.len());
        group.bench_with_input(
            BenchmarkId::new("enforced_only", "wide"),
            body,
            |b, body| {
                b.iter(|| {
                    out.clear();
                    let mut f = StreamFilter::for_response(records, enforced, None, MAX_DEPTH);
                    body.chunks(CHUNK)
                        .try_for_each(|c| f.feed(c, &mut out))
                        .and_then(|()| f.finish(&mut out))
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("enforced_plus_shadow", "wide+narrow"),
            body,
            |b, body| {
                b.iter(|| {
                    out.clear();
                    let mut f = StreamFilter::for_response(records, enforced, None, MAX_DEPTH);
                    let mut s = ShadowRead::new(records, shadow, None, MAX_DEPTH, body.len());
                    for c in body.chunks(CHUNK) {
                        f.feed(c, &mut out).unwrap();
                        s.feed(c);
                    }
                    f.finish(&mut out).unwrap();
                    s.finish().map(|r| r.count)
                })
            },
        );
        group.finish();
    }
}

criterion_group!(benches, bench_shadow);
criterion_main!(benches);
