//! The request (write) filter: checks and strips the records a caller sends
//! against its write schema, on `serde_json::Value` records (request bodies
//! are small and are re-encoded for the upstream anyway). [`filter_write`] is
//! what the proxy's request-filter stage runs.
//!
//! Records are JSON objects; a plural is an array of element objects, and the
//! tree node of a plural applies to every element, so arrays never consume a
//! tree level.

use serde_json::{Map, Value};

use crate::config::routes::{Access, RequestRecords};
use crate::decide::grants::Grants;
use crate::decide::routes::Route;
use crate::errors::ApiError;
use crate::filter::json::parse_record;
use crate::params::Params;
use crate::policy::model::WriteViolationMode;
use crate::policy::Client;
use crate::schema::{is_reserved, AccessTree, AttrPath};

/// Why a write request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteViolation {
    /// A top-level reserved attribute (`id`, `uuid`, `created`, `lastUpdated`).
    #[error("{0} is a reserved attribute and cannot be written")]
    Reserved(String),
    /// The dotted path of the first attribute the client may not write (plural
    /// elements are not numbered: `photos.caption`). The empty string stands for
    /// the written value itself.
    #[error("{} is not writable by this client", describe(.0))]
    NotWritable(String),
}

fn describe(path: &str) -> &str {
    if path.is_empty() {
        "the written value"
    } else {
        path
    }
}

/// The first top-level reserved attribute named in `record`, if it is an object.
pub fn reserved_in(record: &Value) -> Option<&str> {
    record
        .as_object()?
        .keys()
        .map(String::as_str)
        .find(|k| is_reserved(k))
}

/// Write direction, refusing mode: `record` is the `attributes` object of a
/// create/update/replace (one element of a bulkCreate). Top-level reserved
/// attributes are refused whatever the tree.
///
/// For the `value` of an `attribute_name` call use [`check_write_at`]: this
/// function would mistake e.g. the `id` of a plural element for the reserved
/// top-level `id`.
pub fn check_write(record: &Value, tree: &AccessTree) -> Result<(), WriteViolation> {
    if let Some(name) = reserved_in(record) {
        return Err(WriteViolation::Reserved(name.to_owned()));
    }
    let mut path = Vec::new();
    check_value(record, tree, &mut path)
}

/// Write direction for `attribute_name` + `value`: `tree` is the client's whole
/// write tree and `at` the addressed attribute (`photos#2`, `primaryAddress`).
/// Violations name full paths from the record root.
pub fn check_write_at(
    value: &Value,
    tree: &AccessTree,
    at: &AttrPath,
) -> Result<(), WriteViolation> {
    if at.is_reserved() {
        return Err(WriteViolation::Reserved(at.to_string()));
    }
    let Some(sub) = tree.subtree(at) else {
        return Err(WriteViolation::NotWritable(at.to_string()));
    };
    let mut path: Vec<&str> = at.segments().iter().map(String::as_str).collect();
    check_value(value, sub, &mut path)
}

fn check_value<'v>(
    value: &'v Value,
    tree: &AccessTree,
    path: &mut Vec<&'v str>,
) -> Result<(), WriteViolation> {
    if tree.is_all() {
        return Ok(());
    }
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                path.push(key);
                match tree.child(key) {
                    Some(sub) => check_value(v, sub, path)?,
                    None => return Err(WriteViolation::NotWritable(path.join("."))),
                }
                path.pop();
            }
            Ok(())
        }
        Value::Array(items) => items
            .iter()
            .try_for_each(|item| check_value(item, tree, path)),
        // Writing a scalar, or null, over a partially granted attribute would
        // overwrite (clear) its non-granted parts too.
        _ => Err(WriteViolation::NotWritable(path.join("."))),
    }
}

/// Write direction, stripping mode: removes what `tree` does not let the client
/// write and returns how many attributes were removed.
///
/// Top-level reserved attributes are left for [`check_write`] to refuse. Null or
/// scalars over a partially granted attribute are removed (they would clear its
/// non-granted parts); plural elements left empty by stripping are dropped rather
/// than written as new, empty elements. A scalar or null `record` under a partial
/// grant cannot be fixed here and is left as is, so callers should run
/// [`check_write`] (or [`check_write_at`]) after stripping.
pub fn strip_write(record: &mut Value, tree: &AccessTree) -> usize {
    if tree.is_all() {
        return 0;
    }
    match record {
        Value::Object(map) => strip_object(map, tree, true),
        Value::Array(items) => strip_array(items, tree),
        _ => 0,
    }
}

fn strip_object(map: &mut Map<String, Value>, tree: &AccessTree, top: bool) -> usize {
    let mut removed = 0;
    map.retain(|key, v| {
        if top && is_reserved(key) {
            return true;
        }
        let keep = match tree.child(key) {
            Some(sub) => strip_nested(v, sub, &mut removed),
            None => false,
        };
        if !keep {
            removed += 1;
        }
        keep
    });
    removed
}

fn strip_array(items: &mut Vec<Value>, tree: &AccessTree) -> usize {
    let mut removed = 0;
    items.retain_mut(|item| {
        let was_empty = matches!(item, Value::Object(m) if m.is_empty());
        let keep = strip_nested(item, tree, &mut removed);
        if !keep {
            removed += 1;
            return false;
        }
        // Already counted through its removed attributes.
        was_empty || !matches!(item, Value::Object(m) if m.is_empty())
    });
    removed
}

fn strip_nested(v: &mut Value, tree: &AccessTree, removed: &mut usize) -> bool {
    if tree.is_all() {
        return true;
    }
    match v {
        Value::Object(map) => *removed += strip_object(map, tree, false),
        Value::Array(items) => *removed += strip_array(items, tree),
        _ => return false,
    }
    true
}

/// Result of write filtering: how many attributes were stripped.
pub struct WriteOutcome {
    pub removed: usize,
}

/// Applies the write schema to the records of a request, in place.
pub(crate) fn filter_write(
    route: &Route,
    client: &Client,
    g: &Grants<'_>,
    attribute_name: Option<&AttrPath>,
    params: &mut Params,
    json_body: Option<&mut Value>,
    max_depth: usize,
) -> Result<WriteOutcome, ApiError> {
    if route.access != Access::Write {
        return Ok(WriteOutcome { removed: 0 });
    }
    if g.read_only {
        return Err(ApiError::not_writable("type_name", g.entity_type).read_only());
    }
    let mode = client.on_write_violation;
    let mut removed = 0;
    match route.request_records {
        RequestRecords::None => {
            // Deleting a whole record also deletes what the client may not write.
            if attribute_name.is_none() && !g.write.is_all() && route.path.ends_with(".delete") {
                return Err(ApiError::not_writable("type_name", "the whole record"));
            }
        }
        RequestRecords::Attributes => {
            removed += filter_field(params, "attributes", g.write, mode, max_depth)?;
        }
        RequestRecords::AttributesOrValue => match (attribute_name, params.get("value")) {
            (Some(path), Some(raw)) => {
                let mut v = parse_json_arg("value", raw, max_depth)?;
                if mode == WriteViolationMode::Strip {
                    if let Some(tree) = g.write.subtree(path) {
                        removed += strip_write(&mut v, tree);
                    }
                }
                // Checked against the whole tree at `path`, after stripping, so
                // a null or scalar cannot clear what the client may not write.
                check_write_at(&v, g.write, path).map_err(|e| violation("value", e))?;
                params.set("value", v.to_string());
            }
            _ => removed += filter_field(params, "attributes", g.write, mode, max_depth)?,
        },
        RequestRecords::AllAttributes => {
            let raw = params
                .get("all_attributes")
                .ok_or_else(|| ApiError::missing_argument("all_attributes"))?;
            let mut v = parse_json_arg("all_attributes", raw, max_depth)?;
            let Value::Array(items) = &mut v else {
                return Err(ApiError::invalid_argument(
                    "all_attributes",
                    "expected a JSON array of objects",
                ));
            };
            for item in items.iter_mut() {
                removed += filter_record("all_attributes", item, g.write, mode)?;
            }
            params.set("all_attributes", v.to_string());
        }
        RequestRecords::JsonBody => {
            let v = json_body.ok_or_else(|| ApiError::missing_argument("body"))?;
            removed += filter_record("body", v, g.write, mode)?;
        }
    }
    Ok(WriteOutcome { removed })
}

impl ApiError {
    fn read_only(mut self) -> Self {
        self.description =
            "this client has an empty write access schema for this entity type".into();
        self
    }
}

fn violation(argument: &str, e: WriteViolation) -> ApiError {
    match e {
        WriteViolation::Reserved(name) => ApiError::reserved_attribute(argument, &name),
        WriteViolation::NotWritable(path) if path.is_empty() => {
            ApiError::not_writable(argument, "the written value")
        }
        WriteViolation::NotWritable(path) => ApiError::not_writable(argument, &path),
    }
}

fn parse_json_arg(argument: &str, raw: &str, max_depth: usize) -> Result<Value, ApiError> {
    parse_record(raw.as_bytes(), max_depth).map_err(|e| ApiError::invalid_argument(argument, e))
}

fn filter_field(
    params: &mut Params,
    argument: &str,
    tree: &AccessTree,
    mode: WriteViolationMode,
    max_depth: usize,
) -> Result<usize, ApiError> {
    let raw = params
        .get(argument)
        .ok_or_else(|| ApiError::missing_argument(argument))?;
    let mut v = parse_json_arg(argument, raw, max_depth)?;
    let removed = filter_record(argument, &mut v, tree, mode)?;
    params.set(argument, v.to_string());
    Ok(removed)
}

fn filter_record(
    argument: &str,
    record: &mut Value,
    tree: &AccessTree,
    mode: WriteViolationMode,
) -> Result<usize, ApiError> {
    if !record.is_object() {
        return Err(ApiError::invalid_argument(
            argument,
            "expected a JSON object of attributes",
        ));
    }
    if let Some(name) = reserved_in(record) {
        return Err(ApiError::reserved_attribute(argument, name));
    }
    match mode {
        WriteViolationMode::Reject => check_write(record, tree)
            .map(|_| 0)
            .map_err(|e| violation(argument, e)),
        WriteViolationMode::Strip => {
            let removed = strip_write(record, tree);
            // strip_write leaves a bare value alone; what remains must pass.
            check_write(record, tree).map_err(|e| violation(argument, e))?;
            Ok(removed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::json::parse_strict;
    use crate::filter::reference::project;
    use crate::schema::EntityType;
    use serde_json::json;

    fn p(s: &str) -> AttrPath {
        AttrPath::parse(s).unwrap()
    }

    fn user() -> EntityType {
        serde_json::from_value(json!({
            "name": "user",
            "attr_defs": [
                {"name": "id", "type": "id"},
                {"name": "uuid", "type": "uuid"},
                {"name": "created", "type": "dateTime"},
                {"name": "lastUpdated", "type": "dateTime"},
                {"name": "email", "type": "string"},
                {"name": "givenName", "type": "string"},
                {"name": "password", "type": "password-crypt-sha256"},
                {"name": "primaryAddress", "type": "object", "attr_defs": [
                    {"name": "city", "type": "string"},
                    {"name": "zip", "type": "string"},
                    {"name": "geo", "type": "object", "attr_defs": [
                        {"name": "lat", "type": "decimal"},
                        {"name": "lon", "type": "decimal"}
                    ]}
                ]},
                {"name": "photos", "type": "plural", "attr_defs": [
                    {"name": "value", "type": "string"},
                    {"name": "caption", "type": "string"}
                ]},
                {"name": "statuses", "type": "plural", "attr_defs": [
                    {"name": "status", "type": "string"},
                    {"name": "at", "type": "dateTime"}
                ]}
            ]
        }))
        .unwrap()
    }

    fn read(paths: &[&str]) -> AccessTree {
        let paths: Vec<_> = paths.iter().map(|s| p(s)).collect();
        user().read_tree(&paths).unwrap()
    }

    fn write(paths: &[&str]) -> AccessTree {
        let paths: Vec<_> = paths.iter().map(|s| p(s)).collect();
        user().write_tree(&paths).unwrap()
    }

    fn record() -> Value {
        json!({
            "id": 7, "uuid": "u-1", "created": "c", "lastUpdated": "l",
            "email": "a@example.com", "givenName": "Ann", "password": "hash",
            "primaryAddress": {"city": "Oslo", "zip": "0150", "geo": {"lat": 1.5, "lon": 2.5}},
            "photos": [
                {"id": 1, "value": "p1", "caption": "one"},
                {"id": 2, "value": "p2", "caption": "two"}
            ],
            "statuses": []
        })
    }

    #[test]
    fn project_keeps_only_granted_top_level_and_reserved() {
        let mut v = record();
        let removed = project(&mut v, &read(&["email"]));
        assert_eq!(removed, 5);
        assert_eq!(
            v,
            json!({"id": 7, "uuid": "u-1", "created": "c", "lastUpdated": "l", "email": "a@example.com"})
        );
    }

    #[test]
    fn project_full_tree_is_identity() {
        let mut v = record();
        assert_eq!(project(&mut v, &user().full_tree()), 0);
        assert_eq!(v, record());
    }

    #[test]
    fn project_nested_objects() {
        let mut v = record();
        project(
            &mut v,
            &read(&["primaryAddress.geo.lat", "primaryAddress.city"]),
        );
        assert_eq!(
            v["primaryAddress"],
            json!({"city": "Oslo", "geo": {"lat": 1.5}})
        );
        assert!(v.get("photos").is_none());
    }

    #[test]
    fn project_plural_applies_to_every_element_and_keeps_ids() {
        let mut v = record();
        let removed = project(&mut v, &read(&["photos.value"]));
        assert_eq!(
            v["photos"],
            json!([{"id": 1, "value": "p1"}, {"id": 2, "value": "p2"}])
        );
        // email, givenName, password, primaryAddress, statuses + 2 captions
        assert_eq!(removed, 7);
        let mut v = record();
        project(&mut v, &read(&["photos"]));
        assert_eq!(v["photos"], record()["photos"]);
    }

    #[test]
    fn project_null_kept_scalar_removed_under_partial_grant() {
        let tree = read(&["primaryAddress.city", "photos.value"]);
        let mut v = json!({"primaryAddress": null, "photos": null});
        assert_eq!(project(&mut v, &tree), 0);
        assert_eq!(v, json!({"primaryAddress": null, "photos": null}));

        let mut v =
            json!({"primaryAddress": "Oslo, 0150", "photos": [{"value": "x"}, "junk", null, 5]});
        assert_eq!(project(&mut v, &tree), 3);
        assert_eq!(v, json!({"photos": [{"value": "x"}, null]}));

        // A fully granted scalar attribute keeps whatever shape it has.
        let mut v = json!({"email": {"weird": true}});
        assert_eq!(project(&mut v, &read(&["email"])), 0);
    }

    #[test]
    fn project_top_level_scalar_under_partial_grant_becomes_null() {
        let tree = read(&["primaryAddress.city"]);
        let sub = tree.subtree(&p("primaryAddress")).unwrap();
        let mut v = json!("Oslo");
        assert_eq!(project(&mut v, sub), 1);
        assert_eq!(v, Value::Null);
    }

    #[test]
    fn project_relative_to_attribute_name() {
        let tree = read(&["photos.value", "primaryAddress.geo"]);
        // `/entity` with attribute_name=photos#2 returns the element only.
        let mut element = json!({"id": 2, "value": "p2", "caption": "two"});
        assert_eq!(
            project(&mut element, tree.subtree(&p("photos#2")).unwrap()),
            1
        );
        assert_eq!(element, json!({"id": 2, "value": "p2"}));

        let mut plural = record()["photos"].clone();
        assert_eq!(
            project(&mut plural, tree.subtree(&p("/photos")).unwrap()),
            2
        );
        assert_eq!(
            plural,
            json!([{"id": 1, "value": "p1"}, {"id": 2, "value": "p2"}])
        );

        let mut addr = record()["primaryAddress"].clone();
        project(&mut addr, tree.subtree(&p("primaryAddress")).unwrap());
        assert_eq!(addr, json!({"geo": {"lat": 1.5, "lon": 2.5}}));

        let mut geo = record()["primaryAddress"]["geo"].clone();
        assert_eq!(
            project(&mut geo, tree.subtree(&p("primaryAddress/geo")).unwrap()),
            0
        );
        assert!(tree.subtree(&p("primaryAddress.city")).is_none());
    }

    #[test]
    fn project_find_results_array() {
        let tree = read(&["email"]);
        let mut results = json!([record(), record()]);
        assert_eq!(project(&mut results, &tree), 10);
        assert_eq!(results[1].as_object().unwrap().len(), 5);
    }

    #[test]
    fn escaped_keys_are_filtered_after_unescaping() {
        let tree = read(&["email"]);
        let mut v = parse_strict(br#"{"em\u0061il":"a@x","p\u0061ssword":"h"}"#, 32).unwrap();
        assert_eq!(project(&mut v, &tree), 1);
        assert_eq!(v, json!({"email": "a@x"}));

        // A duplicate spelled differently cannot smuggle a second value past the filter.
        assert!(parse_strict(br#"{"email":"a","em\u0061il":"b"}"#, 32).is_err());

        let wtree = write(&["email"]);
        let rec = parse_strict(br#"{"\u0069d":5}"#, 32).unwrap();
        assert_eq!(
            check_write(&rec, &wtree),
            Err(WriteViolation::Reserved("id".into()))
        );
        let rec = parse_strict(br#"{"p\u0061ssword":"x"}"#, 32).unwrap();
        assert_eq!(
            check_write(&rec, &wtree),
            Err(WriteViolation::NotWritable("password".into()))
        );
    }

    #[test]
    fn reserved_attributes_are_never_writable() {
        let full = user().full_tree();
        for name in ["id", "uuid", "created", "lastUpdated"] {
            let rec = json!({"givenName": "x", name: 1});
            assert_eq!(reserved_in(&rec), Some(name));
            assert_eq!(
                check_write(&rec, &full),
                Err(WriteViolation::Reserved(name.into()))
            );
            assert_eq!(
                check_write(&rec, &write(&[name, "givenName"])),
                Err(WriteViolation::Reserved(name.into()))
            );
            assert_eq!(
                check_write_at(&json!(1), &full, &p(name)),
                Err(WriteViolation::Reserved(name.into()))
            );
        }
        assert_eq!(reserved_in(&json!({"email": 1})), None);
        assert_eq!(reserved_in(&json!([{"id": 1}])), None);
        // strip_write leaves them for check_write to refuse.
        let mut rec = json!({"id": 1, "email": "x", "givenName": "y"});
        assert_eq!(strip_write(&mut rec, &write(&["givenName"])), 1);
        assert_eq!(rec, json!({"id": 1, "givenName": "y"}));
    }

    #[test]
    fn check_write_allows_granted_and_names_first_offender() {
        let tree = write(&["givenName", "primaryAddress.city", "photos.value"]);
        assert_eq!(check_write(&json!({}), &tree), Ok(()));
        assert_eq!(
            check_write(
                &json!({"givenName": "A", "primaryAddress": {"city": "B"}, "photos": [{"value": "v"}, {"id": 3, "value": "w"}]}),
                &tree
            ),
            Ok(())
        );
        assert_eq!(
            check_write(
                &json!({"givenName": "A", "email": "e", "password": "p"}),
                &tree
            ),
            Err(WriteViolation::NotWritable("email".into()))
        );
        assert_eq!(
            check_write(
                &json!({"primaryAddress": {"city": "B", "geo": {"lat": 1}}}),
                &tree
            ),
            Err(WriteViolation::NotWritable("primaryAddress.geo".into()))
        );
        assert_eq!(
            check_write(
                &json!({"photos": [{"value": "v"}, {"caption": "c"}]}),
                &tree
            ),
            Err(WriteViolation::NotWritable("photos.caption".into()))
        );
        let msg = WriteViolation::NotWritable("photos.caption".into()).to_string();
        assert_eq!(msg, "photos.caption is not writable by this client");
    }

    #[test]
    fn check_write_refuses_non_objects_under_partial_grant() {
        let tree = write(&["primaryAddress.city", "photos.value"]);
        for bad in [
            json!({"primaryAddress": "x"}),
            json!({"primaryAddress": null}),
        ] {
            assert_eq!(
                check_write(&bad, &tree),
                Err(WriteViolation::NotWritable("primaryAddress".into()))
            );
        }
        assert_eq!(
            check_write(&json!({"photos": ["x"]}), &tree),
            Err(WriteViolation::NotWritable("photos".into()))
        );
        assert_eq!(
            check_write(&json!("x"), &tree),
            Err(WriteViolation::NotWritable(String::new()))
        );
        assert_eq!(
            WriteViolation::NotWritable(String::new()).to_string(),
            "the written value is not writable by this client"
        );
        // Fully granted attributes may be set to anything, including null.
        let tree = write(&["primaryAddress"]);
        assert_eq!(check_write(&json!({"primaryAddress": null}), &tree), Ok(()));
    }

    #[test]
    fn read_only_client_can_write_nothing() {
        let tree = write(&[]);
        assert_eq!(check_write(&json!({}), &tree), Ok(()));
        assert_eq!(
            check_write(&json!({"givenName": "x"}), &tree),
            Err(WriteViolation::NotWritable("givenName".into()))
        );
        assert_eq!(
            check_write_at(&json!("x"), &tree, &p("givenName")),
            Err(WriteViolation::NotWritable("givenName".into()))
        );
    }

    #[test]
    fn check_write_at_attribute_name() {
        let tree = write(&["photos.value", "primaryAddress.city", "givenName"]);
        assert_eq!(
            check_write_at(&json!({"id": 2, "value": "x"}), &tree, &p("photos#2")),
            Ok(())
        );
        assert_eq!(
            check_write_at(&json!({"caption": "x"}), &tree, &p("/photos#2")),
            Err(WriteViolation::NotWritable("photos.caption".into()))
        );
        assert_eq!(
            check_write_at(&json!([{"value": "x"}]), &tree, &p("photos")),
            Ok(())
        );
        assert_eq!(
            check_write_at(&json!("x"), &tree, &p("photos#2.value")),
            Ok(())
        );
        assert_eq!(
            check_write_at(&json!("x"), &tree, &p("photos#2.caption")),
            Err(WriteViolation::NotWritable("photos.caption".into()))
        );
        assert_eq!(
            check_write_at(&json!("Oslo"), &tree, &p("primaryAddress")),
            Err(WriteViolation::NotWritable("primaryAddress".into()))
        );
        assert_eq!(
            check_write_at(&json!({"zip": "1"}), &tree, &p("primaryAddress")),
            Err(WriteViolation::NotWritable("primaryAddress.zip".into()))
        );
        // Relative check_write on a subtree works too, apart from the reserved rule.
        let sub = tree.subtree(&p("primaryAddress")).unwrap();
        assert_eq!(check_write(&json!({"city": "Oslo"}), sub), Ok(()));
        assert_eq!(
            check_write(&json!({"zip": "1"}), sub),
            Err(WriteViolation::NotWritable("zip".into()))
        );
    }

    #[test]
    fn strip_write_removes_and_counts() {
        let tree = write(&["givenName", "primaryAddress.city", "photos.value"]);
        let mut rec = json!({
            "givenName": "A", "email": "e",
            "primaryAddress": {"city": "B", "zip": "Z", "geo": {"lat": 1}},
            "photos": [{"id": 1, "value": "v", "caption": "c"}, {"caption": "only"}, "junk", {}],
            "statuses": [{"status": "s"}]
        });
        assert_eq!(strip_write(&mut rec, &tree), 7);
        assert_eq!(
            rec,
            json!({
                "givenName": "A",
                "primaryAddress": {"city": "B"},
                "photos": [{"id": 1, "value": "v"}, {}]
            })
        );
        assert_eq!(check_write(&rec, &tree), Ok(()));

        let mut rec = json!({"primaryAddress": null, "givenName": null});
        assert_eq!(strip_write(&mut rec, &tree), 1);
        assert_eq!(rec, json!({"givenName": null}));

        let mut rec = record();
        assert_eq!(strip_write(&mut rec, &user().full_tree()), 0);
        assert_eq!(rec, record());

        let mut scalar = json!("x");
        let sub = tree.subtree(&p("primaryAddress")).unwrap();
        assert_eq!(strip_write(&mut scalar, sub), 0);
        assert!(check_write(&scalar, sub).is_err());
    }
}
