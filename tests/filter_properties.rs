//! Property tests for the reference filter: random entity types, conforming
//! records (plus unknown keys and the odd shape mismatch) and random access
//! schemas.
// A test (or bench) that cannot set up fails loudly; the no-panic rule is for the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use recordgate::decide::routes::ResponseRecords;
use recordgate::filter::json::parse_strict;
use recordgate::filter::reference::{filter_response, project};
use recordgate::filter::request::{check_write, strip_write};
use recordgate::filter::response::{filter_response_bytes, StreamFilter};
use recordgate::filter::shadow::{read_paths, shadow_write, ShadowRead};
use recordgate::schema::{AccessTree, AttrDef, AttrPath, EntityType, RESERVED};
use serde_json::{Map, Value};

const SCALAR_KINDS: [&str; 6] = [
    "string", "boolean", "integer", "decimal", "dateTime", "json",
];

fn def(name: String, kind: String, attr_defs: Option<Vec<AttrDef>>) -> AttrDef {
    AttrDef {
        name,
        kind,
        attr_defs,
        extra: Map::new(),
    }
}

fn kind_strategy(depth: u32) -> BoxedStrategy<(String, Option<Vec<AttrDef>>)> {
    let scalar = prop::sample::select(SCALAR_KINDS.to_vec()).prop_map(|k| (k.to_owned(), None));
    if depth == 0 {
        return scalar.boxed();
    }
    prop_oneof![
        3 => scalar,
        1 => defs_strategy(depth - 1).prop_map(|d| ("object".to_owned(), Some(d))),
        1 => defs_strategy(depth - 1).prop_map(|d| ("plural".to_owned(), Some(d))),
    ]
    .boxed()
}

fn defs_strategy(depth: u32) -> BoxedStrategy<Vec<AttrDef>> {
    prop::collection::btree_map(0u8..8, kind_strategy(depth), 1..5)
        .prop_map(|m| {
            m.into_iter()
                .map(|(i, (kind, sub))| def(format!("a{i}"), kind, sub))
                .collect()
        })
        .boxed()
}

fn entity_type_strategy() -> impl Strategy<Value = EntityType> {
    defs_strategy(3).prop_map(|defs| {
        let mut attr_defs: Vec<AttrDef> = RESERVED
            .iter()
            .map(|r| def((*r).to_owned(), "string".to_owned(), None))
            .collect();
        attr_defs.extend(defs);
        EntityType {
            name: "user".to_owned(),
            attr_defs,
        }
    })
}

fn scalar_value() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        "[a-z\\\\\"\u{e9}\u{1f600}]{0,6}".prop_map(Value::String),
    ]
    .boxed()
}

/// Free-form data for `json` attributes and unknown keys.
fn loose_value() -> BoxedStrategy<Value> {
    scalar_value()
        .prop_recursive(2, 8, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::btree_map("[a-z]{1,3}", inner, 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
        .boxed()
}

fn value_strategy(d: &AttrDef) -> BoxedStrategy<Value> {
    let sub = d.attr_defs.clone().unwrap_or_default();
    match d.kind.as_str() {
        // Shape mismatches (a scalar where the type says object/plural) are rare
        // in real data but are exactly where a filter could leak.
        "object" => prop_oneof![
            8 => object_strategy(&sub),
            2 => Just(Value::Null),
            1 => scalar_value(),
        ]
        .boxed(),
        "plural" => prop_oneof![
            8 => prop::collection::vec(
                prop_oneof![6 => object_strategy(&sub), 1 => scalar_value()],
                0..3,
            ).prop_map(|items| {
                Value::Array(
                    items
                        .into_iter()
                        .enumerate()
                        .map(|(i, mut item)| {
                            if let Value::Object(m) = &mut item {
                                m.insert("id".to_owned(), Value::from(i + 1));
                            }
                            item
                        })
                        .collect(),
                )
            }),
            2 => Just(Value::Null),
            1 => scalar_value(),
        ]
        .boxed(),
        "json" => loose_value(),
        _ => scalar_value(),
    }
}

fn object_strategy(defs: &[AttrDef]) -> BoxedStrategy<Value> {
    let fields: Vec<BoxedStrategy<Option<(String, Value)>>> = defs
        .iter()
        .map(|d| {
            let name = d.name.clone();
            prop::option::weighted(0.8, value_strategy(d))
                .prop_map(move |v| v.map(|v| (name.clone(), v)))
                .boxed()
        })
        .collect();
    let extras = prop::collection::vec(("x[0-9]", loose_value()), 0..2);
    (fields, extras)
        .prop_map(|(fields, extras)| {
            let mut m = Map::new();
            for (k, v) in fields.into_iter().flatten() {
                m.insert(k, v);
            }
            for (k, v) in extras {
                m.entry(k).or_insert(v);
            }
            Value::Object(m)
        })
        .boxed()
}

fn all_paths(defs: &[AttrDef], prefix: &str, out: &mut Vec<String>) {
    for d in defs {
        let path = if prefix.is_empty() {
            d.name.clone()
        } else {
            format!("{prefix}.{}", d.name)
        };
        if d.is_plural() {
            out.push(format!("{path}.id"));
        }
        if let Some(sub) = &d.attr_defs {
            all_paths(sub, &path, out);
        }
        out.push(path);
    }
}

fn case_strategy() -> impl Strategy<Value = (EntityType, Value, Vec<AttrPath>)> {
    entity_type_strategy().prop_flat_map(|t| {
        let mut paths = Vec::new();
        all_paths(&t.attr_defs, "", &mut paths);
        let n = paths.len();
        let schema = prop::sample::subsequence(paths, 0..=n).prop_map(|ps| {
            ps.iter()
                .map(|p| AttrPath::parse(p).expect("generated paths are valid"))
                .collect::<Vec<_>>()
        });
        (Just(t.clone()), object_strategy(&t.attr_defs), schema)
    })
}

/// A type, a record, and two independent schemas on it: the enforced one
/// and a shadow.
fn shadow_case_strategy() -> impl Strategy<Value = (EntityType, Value, Vec<AttrPath>, Vec<AttrPath>)>
{
    entity_type_strategy().prop_flat_map(|t| {
        let mut paths = Vec::new();
        all_paths(&t.attr_defs, "", &mut paths);
        let n = paths.len();
        let schema = move || {
            prop::sample::subsequence(paths.clone(), 0..=n).prop_map(|ps| {
                ps.iter()
                    .map(|p| AttrPath::parse(p).expect("generated paths are valid"))
                    .collect::<Vec<_>>()
            })
        };
        (
            Just(t.clone()),
            object_strategy(&t.attr_defs),
            schema(),
            schema(),
        )
    })
}

fn path_of(segments: &[&str]) -> AttrPath {
    AttrPath::parse(&segments.join(".")).expect("record keys form valid paths")
}

/// Every leaf of the projected output must be granted.
fn assert_only_granted<'v>(v: &'v Value, tree: &AccessTree, path: &mut Vec<&'v str>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                path.push(k);
                assert_only_granted(child, tree, path);
                path.pop();
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for item in items {
                assert_only_granted(item, tree, path);
            }
        }
        // Empty containers and null reveal only that the attribute is empty,
        // which is allowed when anything beneath it is granted.
        Value::Object(_) | Value::Array(_) | Value::Null => {
            // An empty record at the root says nothing.
            if !path.is_empty() {
                assert!(tree.reaches(&path_of(path)), "leaked {}", path.join("."))
            }
        }
        _ => assert!(
            tree.allows_fully(&path_of(path)),
            "leaked {}",
            path.join(".")
        ),
    }
}

/// Every granted part of the input must survive unchanged; returns how many
/// attributes the projection had to remove.
fn assert_complete(input: &Value, output: &Value, tree: &AccessTree) -> usize {
    if tree.is_all() {
        assert_eq!(input, output);
        return 0;
    }
    match (input, output) {
        (Value::Object(im), Value::Object(om)) => {
            let mut removed = 0;
            for (k, iv) in im {
                let kept = match tree.child(k) {
                    Some(sub) if sub.is_all() || !is_scalar(iv) => {
                        let ov = om.get(k).expect("granted attribute was dropped");
                        removed += assert_complete(iv, ov, sub);
                        true
                    }
                    _ => false,
                };
                if !kept {
                    assert!(om.get(k).is_none(), "{k} should have been removed");
                    removed += 1;
                }
            }
            assert!(om.keys().all(|k| im.contains_key(k)));
            removed
        }
        (Value::Array(ia), Value::Array(oa)) => {
            let survivors: Vec<&Value> = ia.iter().filter(|v| !is_scalar(v)).collect();
            assert_eq!(survivors.len(), oa.len());
            let nested: usize = survivors
                .iter()
                .zip(oa)
                .map(|(iv, ov)| assert_complete(iv, ov, tree))
                .sum();
            nested + (ia.len() - survivors.len())
        }
        (Value::Null, Value::Null) => 0,
        (i, o) => panic!("shape changed: {i} -> {o}"),
    }
}

/// Non-null scalars: the values a partial grant cannot keep.
fn is_scalar(v: &Value) -> bool {
    !(v.is_object() || v.is_array() || v.is_null())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn project_keeps_exactly_the_granted_part((t, input, schema) in case_strategy()) {
        prop_assert_eq!(t.validate(), Ok(()));
        let tree = t.read_tree(&schema).expect("schema paths come from the type");
        let mut output = input.clone();
        let removed = project(&mut output, &tree);

        let text = serde_json::to_string(&output).expect("serialisable");
        let reparsed = parse_strict(text.as_bytes(), 64).expect("valid, duplicate-free JSON");
        prop_assert_eq!(&reparsed, &output);

        assert_only_granted(&output, &tree, &mut Vec::new());
        prop_assert_eq!(assert_complete(&input, &output, &tree), removed);

        for r in RESERVED {
            prop_assert_eq!(input.get(r), output.get(r));
        }

        let mut again = output.clone();
        prop_assert_eq!(project(&mut again, &tree), 0);
        prop_assert_eq!(again, output);
    }

    #[test]
    fn strip_write_yields_a_checkable_record((t, mut input, schema) in case_strategy()) {
        let tree = t.write_tree(&schema).expect("schema paths come from the type");
        if let Value::Object(m) = &mut input {
            m.retain(|k, _| !RESERVED.contains(&k.as_str()));
        }
        let mut stripped = input.clone();
        let removed = strip_write(&mut stripped, &tree);
        prop_assert_eq!(check_write(&stripped, &tree), Ok(()));
        prop_assert_eq!(check_write(&input, &tree).is_ok(), removed == 0);
        if removed == 0 {
            prop_assert_eq!(stripped, input);
        }
    }

    /// The shadow never changes the answer (the enforced filter's, chunk by
    /// chunk), and counts exactly what the shadow schema as a filter would
    /// remove; its named paths are as many attributes as that count.
    #[test]
    fn a_shadow_read_changes_nothing_and_counts_what_its_filter_removes(
        (t, input, enforced, shadow) in shadow_case_strategy(),
        chunk in 1usize..64,
    ) {
        let enforced = t.read_tree(&enforced).expect("schema paths come from the type");
        let shadow = t.read_tree(&shadow).expect("schema paths come from the type");
        let body = serde_json::to_vec(&serde_json::json!({"stat": "ok", "result": input})).unwrap();
        let mut filter = StreamFilter::for_response(ResponseRecords::Result, &enforced, None, 64);
        let mut watch = ShadowRead::new(ResponseRecords::Result, &shadow, None, 64, body.len());
        let mut out = Vec::new();
        for piece in body.chunks(chunk) {
            filter.feed(piece, &mut out).unwrap();
            watch.feed(piece);
        }
        filter.finish(&mut out).unwrap();
        let alone = filter_response_bytes(&body, ResponseRecords::Result, &enforced, None, 64).unwrap();
        prop_assert_eq!(&out, &alone.body);
        let seen = watch.finish().expect("valid body");
        let by_shadow = filter_response(&body, ResponseRecords::Result, &shadow, None, 64).unwrap();
        prop_assert_eq!(seen.count, by_shadow.removed);
        let (walked, paths) = read_paths(&body, ResponseRecords::Result, &shadow, None, 64).unwrap();
        prop_assert_eq!(walked, by_shadow.removed);
        prop_assert_eq!(seen.paths, Some(paths.clone()));
        prop_assert_eq!(paths.is_empty(), by_shadow.removed == 0);
    }

    #[test]
    fn a_shadow_write_counts_what_stripping_would_remove((t, mut input, _e, shadow) in shadow_case_strategy()) {
        let tree = t.write_tree(&shadow).expect("schema paths come from the type");
        if let Value::Object(m) = &mut input {
            m.retain(|k, _| !RESERVED.contains(&k.as_str()));
        }
        let before = input.clone();
        let seen = shadow_write(&input, &tree);
        prop_assert_eq!(&input, &before);
        let mut stripped = input.clone();
        prop_assert_eq!(seen.count, strip_write(&mut stripped, &tree));
        prop_assert_eq!(seen.paths.unwrap().is_empty(), seen.count == 0);
    }
}
