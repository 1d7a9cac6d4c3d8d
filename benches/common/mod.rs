//! The bodies and schemas the filter benches share: records from the demo
//! store, and the demo policy's narrow schema plus a wide one.

use std::path::Path;

use recordgate::policy::store::load_policy_file;
use recordgate::schema::{AccessTree, AttrPath};
use recordgate_demo::{Params, Store};
use serde_json::{json, Value};

/// `count` records from the demo store, paged like a client would.
pub fn records(count: usize) -> Vec<Value> {
    let mut store = Store::generate(count);
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let params: Params = [
            ("type_name", "user".to_owned()),
            ("max_results", (count - out.len()).min(1000).to_string()),
            ("first_result", (out.len() + 1).to_string()),
        ]
        .into_iter()
        .collect();
        let page = store.handle("entity.find", &params);
        let Some(results) = page.get("results").and_then(Value::as_array) else {
            panic!("demo store returned no results: {page}");
        };
        assert!(!results.is_empty(), "demo store ran out of records");
        out.extend(results.iter().cloned());
    }
    out
}

pub fn find_body(records: &[Value]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "stat": "ok",
        "result_count": records.len(),
        "results": records,
    }))
    .expect("serialise body")
}

pub struct Schemas {
    pub narrow: AccessTree,
    pub wide: AccessTree,
}

pub fn schemas() -> Schemas {
    let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/policy.yaml");
    let snap = load_policy_file(&policy, 1).expect("demo policy loads");
    let narrow = snap.clients["partner-readonly"].schemas["user"]
        .read
        .as_deref()
        .cloned()
        .expect("partner has a read schema");
    let def = &snap.entity_types["user"].def;
    let wide_paths: Vec<AttrPath> = def
        .attr_defs
        .iter()
        .filter(|d| d.name != "internal" && d.name != "aboutMe")
        .map(|d| AttrPath::parse(&d.name).expect("attribute name is a path"))
        .collect();
    let wide = def.read_tree(&wide_paths).expect("wide schema compiles");
    Schemas { narrow, wide }
}
