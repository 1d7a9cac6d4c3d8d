//! Response filter throughput, reference (`serde_json::Value`) vs streaming,
//! on bodies shaped like the demo upstream's: a 2 KB `/entity` (`result`), a
//! 100 KB and a 10 MB `/entity.find` (`results`), each with a narrow schema
//! (the demo partner: a few names, the city, photo URLs) and a wide one (every
//! attribute but `internal` and `aboutMe`).
//!
//! Run with `cargo bench --bench filter`; takes about a minute.
// A test (or bench) that cannot set up fails loudly; the no-panic rule is for the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use recordgate::decide::routes::ResponseRecords;
use recordgate::filter::reference::filter_response;
use recordgate::filter::response::{filter_response_bytes, StreamFilter};

// The allocator the gateway binary runs with (src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use serde_json::{json, Value};

mod common;
use common::{find_body, records, schemas};

const MAX_DEPTH: usize = 64;

fn bench_filter(c: &mut Criterion) {
    let schemas = schemas();
    let one = records(1);
    let entity = serde_json::to_vec(&json!({"result": one[0], "stat": "ok"})).expect("body");
    let find = find_body(&records(52));
    let big_records = records(1000);
    let mut big_list = Vec::new();
    while big_list.len() * 1950 < 10_000_000 {
        big_list.extend(big_records.iter().cloned());
    }
    let big = find_body(&big_list[..big_list.len().min(5130)]);

    let cases: [(&str, &[u8], ResponseRecords); 3] = [
        ("2KB_entity", &entity, ResponseRecords::Result),
        ("100KB_find", &find, ResponseRecords::Results),
        ("10MB_find", &big, ResponseRecords::Results),
    ];
    for (name, body, records) in cases {
        let mut group = c.benchmark_group(format!("filter/{name}"));
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.warm_up_time(Duration::from_millis(500));
        if body.len() > 1_000_000 {
            // One reference pass takes ~0.1 s; flat sampling keeps the run short.
            group.sampling_mode(SamplingMode::Flat);
            group.sample_size(10);
            group.measurement_time(Duration::from_secs(2));
        } else {
            group.sample_size(20);
            group.measurement_time(Duration::from_secs(2));
        }
        for (schema_name, tree) in [("narrow", &schemas.narrow), ("wide", &schemas.wide)] {
            // Same answer from both, or the comparison is meaningless.
            let reference = filter_response(body, records, tree, None, MAX_DEPTH)
                .unwrap_or_else(|_| panic!("reference refused {name}"));
            let streamed = filter_response_bytes(body, records, tree, None, MAX_DEPTH)
                .unwrap_or_else(|_| panic!("streaming refused {name}"));
            assert_eq!(reference.removed, streamed.removed);
            let a: Value = serde_json::from_slice(&reference.body).expect("reference output");
            let b: Value = serde_json::from_slice(&streamed.body).expect("streamed output");
            assert_eq!(a, b);
            eprintln!(
                "{name}/{schema_name}: {} B in, {} B out",
                body.len(),
                streamed.body.len()
            );

            group.bench_with_input(
                BenchmarkId::new("reference", schema_name),
                body,
                |bch, body| {
                    bch.iter(|| {
                        filter_response(body, records, tree, None, MAX_DEPTH).map(|f| f.removed)
                    })
                },
            );
            group.bench_with_input(
                BenchmarkId::new("streaming", schema_name),
                body,
                |bch, body| {
                    bch.iter(|| {
                        filter_response_bytes(body, records, tree, None, MAX_DEPTH)
                            .map(|f| f.removed)
                    })
                },
            );
            // The core alone: output buffer reused, as a long-lived connection would.
            let mut out = Vec::with_capacity(body.len());
            group.bench_with_input(
                BenchmarkId::new("streaming_core", schema_name),
                body,
                |bch, body| {
                    bch.iter(|| {
                        out.clear();
                        let mut f = StreamFilter::for_response(records, tree, None, MAX_DEPTH);
                        f.feed(body, &mut out).and_then(|()| f.finish(&mut out))
                    })
                },
            );
            // As the gateway streams a large response: the same body in
            // 16 KiB chunks, so values cut by a chunk's end take the state
            // machine instead of the fast path.
            group.bench_with_input(
                BenchmarkId::new("streaming_16k_chunks", schema_name),
                body,
                |bch, body| {
                    bch.iter(|| {
                        out.clear();
                        let mut f = StreamFilter::for_response(records, tree, None, MAX_DEPTH);
                        body.chunks(16 * 1024)
                            .try_for_each(|c| f.feed(c, &mut out))
                            .and_then(|()| f.finish(&mut out))
                    })
                },
            );
        }
        group.finish();
    }
}

criterion_group!(benches, bench_filter);
criterion_main!(benches);
