//! Differential fuzzing of the response body filter.
//!
//! Input layout: `[selector][options][JSON body...]`
//!
//! * selector bits 0-2: read tree (see `Fixture::trees`),
//!   bits 3-4: `ResponseRecords` (Result, Results, JsonBody, None),
//!   bits 5-7: `relative_to` (the `attribute_name` of the call, see `RELATIVE`);
//! * options bits 0-2: JSON depth limit (see `DEPTHS`),
//!   bits 3-7: chunk size for the incremental run (1..=32 bytes).
//!
//! The reference (`response_filter::filter_response`, DOM based) and the
//! streaming filter (`stream_filter::filter_response_bytes`, one pass) must agree
//! on success/failure and failure class; on success both outputs must be strict
//! JSON (no duplicate keys, within the depth limit), equal as values (key order
//! included; numbers with a 1e-14 relative tolerance, because the reference
//! re-serialises numbers through f64), report the same `removed` count, and
//! expose nothing the read tree does not grant. Feeding the streaming filter in
//! chunks must give byte-identical output to the one-shot call.

#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use recordgate::filter::json::{parse_strict, MAX_SUPPORTED_DEPTH};
use recordgate::policy::model::PolicyFile;
use recordgate::filter::reference::filter_response;
use recordgate::decide::routes::ResponseRecords;
use recordgate::schema::{AccessTree, AttrPath, EntityType};
use recordgate::config::settings::from_yaml;
use recordgate::filter::response::{filter_response_bytes, StreamFilter};
use serde_json::Value;

/// The demo policy: its `user` entity type is the shape real records have.
const DEMO_POLICY: &str = include_str!("../../config/policy.yaml");

const RECORDS: [ResponseRecords; 4] = [
    ResponseRecords::Result,
    ResponseRecords::Results,
    ResponseRecords::JsonBody,
    ResponseRecords::None,
];

/// `attribute_name` values a call may address (`None`: whole records).
const RELATIVE: [Option<&str>; 8] = [
    None,
    Some("primaryAddress"),
    Some("photos"),
    Some("consents.marketing"),
    Some("email"),
    Some("internal"),
    Some("photos#3"),
    Some("primaryAddress.city"),
];

/// Depth limits; 1000 is above the supported maximum and must be capped.
const DEPTHS: [usize; 8] = [1, 2, 3, 8, 32, 64, MAX_SUPPORTED_DEPTH, 1000];

struct Fixture {
    trees: Vec<AccessTree>,
    relative: Vec<Option<AttrPath>>,
}

fn paths(list: &[&str]) -> Vec<AttrPath> {
    list.iter()
        .filter_map(|p| AttrPath::parse(p).ok())
        .collect()
}

/// Built once per process. A failure here means the demo policy or the
/// fixed schemas no longer fit the library: the harness says so loudly
/// rather than silently fuzzing against fewer trees.
static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let policy: PolicyFile = match from_yaml(Path::new("config/policy.yaml"), DEMO_POLICY) {
        Ok(p) => p,
        Err(e) => panic!("fuzz fixture: config/policy.yaml does not load: {e}"),
    };
    let Some(user) = policy.entity_types.get("user") else {
        panic!("fuzz fixture: config/policy.yaml has no `user` entity type");
    };
    let et = EntityType {
        name: "user".into(),
        attr_defs: user.attr_defs.clone(),
    };
    if let Err(e) = et.validate() {
        panic!("fuzz fixture: demo `user` type is invalid: {e}");
    }
    let read = |list: &[&str]| match et.read_tree(&paths(list)) {
        Ok(t) => t,
        Err(e) => panic!("fuzz fixture: read schema {list:?}: {e}"),
    };
    let write = |list: &[&str]| match et.write_tree(&paths(list)) {
        Ok(t) => t,
        Err(e) => panic!("fuzz fixture: write schema {list:?}: {e}"),
    };
    let trees = vec![
        // partner-readonly in the demo policy
        read(&[
            "givenName",
            "familyName",
            "primaryAddress.city",
            "photos.value",
        ]),
        // crm-writer in the demo policy
        read(&[
            "email",
            "givenName",
            "familyName",
            "displayName",
            "primaryAddress",
        ]),
        // reserved attributes only
        read(&[]),
        // deep and plural grants
        read(&[
            "consents.marketing.granted",
            "profiles.domain",
            "profiles.verifiedEmail",
            "internal.notes",
            "statuses",
        ]),
        // a write tree (no reserved attributes, plural ids granted)
        write(&[
            "givenName",
            "familyName",
            "primaryAddress.city",
            "photos.type",
        ]),
        AccessTree::all(),
        AccessTree::none(),
        read(&["email", "photos", "consents"]),
    ];
    let relative = RELATIVE
        .iter()
        .map(|r| r.and_then(|p| AttrPath::parse(p).ok()))
        .collect();
    Fixture { trees, relative }
});

/// Same value, same key order; numbers within a relative 1e-14.
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y.iter())
                    .all(|((ka, va), (kb, vb))| ka == kb && same_value(va, vb))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_value(p, q))
        }
        (Value::Number(x), Value::Number(y)) => {
            x == y
                || match (x.as_f64(), y.as_f64()) {
                    (Some(p), Some(q)) => p == q || ((p - q) / p.abs().max(q.abs())).abs() < 1e-14,
                    _ => false,
                }
        }
        _ => a == b,
    }
}

/// Independent leak oracle: `v` holds nothing `tree` does not grant. Mirrors
/// the documented projection rules (arrays do not consume a tree level; `null`
/// is always allowed; a scalar needs a full grant).
fn conforms(v: &Value, tree: &AccessTree) -> bool {
    if tree.is_all() {
        return true;
    }
    match v {
        Value::Object(m) => m
            .iter()
            .all(|(k, v)| tree.child(k).is_some_and(|sub| conforms(v, sub))),
        Value::Array(items) => items.iter().all(|item| conforms(item, tree)),
        Value::Null => true,
        _ => false,
    }
}

fn check_no_leak(
    out: &Value,
    records: ResponseRecords,
    read: &AccessTree,
    relative_to: Option<&AttrPath>,
    which: &str,
) {
    match records {
        ResponseRecords::None => {}
        ResponseRecords::JsonBody => {
            assert!(
                conforms(out, read),
                "{which}: leaked attribute in body {out}"
            );
        }
        ResponseRecords::Result | ResponseRecords::Results => {
            let Value::Object(env) = out else {
                panic!("{which}: accepted envelope is not an object: {out}");
            };
            if let Some(result) = env.get("result") {
                let tree = match relative_to {
                    Some(p) => read.subtree(p),
                    None => Some(read),
                };
                match tree {
                    Some(t) => assert!(conforms(result, t), "{which}: leaked in result: {out}"),
                    None => assert!(result.is_null(), "{which}: ungranted result kept: {out}"),
                }
            }
            if let Some(results) = env.get("results") {
                let Value::Array(items) = results else {
                    panic!("{which}: accepted non-array results: {out}");
                };
                for item in items {
                    if item.is_object() || records == ResponseRecords::Results {
                        assert!(conforms(item, read), "{which}: leaked in results: {out}");
                    }
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [selector, options, body @ ..] = data else {
        return;
    };
    let fx = &*FIXTURE;
    let read = &fx.trees[usize::from(selector & 7) % fx.trees.len()];
    let records = RECORDS[usize::from((selector >> 3) & 3)];
    let relative_to = fx.relative[usize::from(selector >> 5) % fx.relative.len()].as_ref();
    let max_depth = DEPTHS[usize::from(options & 7)];
    let chunk = usize::from(options >> 3) + 1;

    let reference = filter_response(body, records, read, relative_to, max_depth);
    let streaming = filter_response_bytes(body, records, read, relative_to, max_depth);

    // Incremental feeding, as the gateway does, must equal the one-shot call.
    let mut f = StreamFilter::for_response(records, read, relative_to, max_depth);
    let mut chunked_out = Vec::new();
    let chunked = body
        .chunks(chunk)
        .try_for_each(|c| f.feed(c, &mut chunked_out))
        .and_then(|()| f.finish(&mut chunked_out));
    match (&streaming, &chunked) {
        (Ok(s), Ok(removed)) => {
            assert_eq!(
                s.body, chunked_out,
                "chunked output differs (chunk {chunk})"
            );
            assert_eq!(s.removed, *removed, "chunked removed count differs");
        }
        (Err(a), Err(b)) => assert_eq!(*a, b.failure(), "chunked failure class differs"),
        _ => panic!(
            "chunked (chunk {chunk}) and one-shot disagree: one-shot ok={}, chunked {:?}",
            streaming.is_ok(),
            chunked.as_ref().err()
        ),
    }

    match (&reference, &streaming) {
        (Ok(r), Ok(s)) => {
            let rv = match parse_strict(&r.body, max_depth) {
                Ok(v) => v,
                Err(e) => panic!(
                    "reference output is not strict JSON ({e}): {}",
                    String::from_utf8_lossy(&r.body)
                ),
            };
            let sv = match parse_strict(&s.body, max_depth) {
                Ok(v) => v,
                Err(e) => panic!(
                    "streaming output is not strict JSON ({e}): {}",
                    String::from_utf8_lossy(&s.body)
                ),
            };
            assert!(
                same_value(&rv, &sv),
                "outputs differ\nreference: {rv}\nstreaming: {sv}"
            );
            assert_eq!(r.removed, s.removed, "removed count differs");
            check_no_leak(&rv, records, read, relative_to, "reference");
            check_no_leak(&sv, records, read, relative_to, "streaming");
        }
        (Err(a), Err(b)) => {
            assert_eq!(a, b, "failure class differs");
        }
        (Ok(r), Err(e)) => panic!(
            "reference accepted, streaming refused ({e:?}); reference output: {}",
            String::from_utf8_lossy(&r.body)
        ),
        (Err(e), Ok(s)) => panic!(
            "streaming accepted, reference refused ({e:?}); streaming output: {}",
            String::from_utf8_lossy(&s.body)
        ),
    }
});
