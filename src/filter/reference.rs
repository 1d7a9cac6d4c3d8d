//! The DOM-based reference read filter: parses the whole body into a
//! `serde_json::Value`, projects its records onto the read schema and
//! re-serialises it. The gateway never runs it: the streaming filter
//! ([`crate::filter::response`]) does the same in one pass, and is tested,
//! fuzzed and benchmarked against this plain definition.
//!
//! The envelope (`stat`, `result_count`, ...) is kept; only records are
//! touched. Anything unexpected is an error, never the unfiltered body.

use serde_json::{Map, Value};

use crate::decide::routes::ResponseRecords;
use crate::filter::json::parse_strict;
use crate::filter::response::{FilterFailure, Filtered};
use crate::schema::{AccessTree, AttrPath};

/// Read direction: removes from `value` everything `tree` does not grant and
/// returns how many attributes were removed.
///
/// A `null` where the tree grants only part of an object is kept: it reveals
/// nothing beyond the attribute being empty. Any other scalar there does not
/// match the schema and is removed, since the tree cannot tell which part of it
/// would be granted. A scalar at the top with a partial grant cannot be removed by
/// a parent, so it is replaced by `null` (and counted).
pub fn project(value: &mut Value, tree: &AccessTree) -> usize {
    if tree.is_all() {
        return 0;
    }
    match value {
        Value::Object(map) => project_object(map, tree),
        Value::Array(items) => project_array(items, tree),
        Value::Null => 0,
        _ => {
            *value = Value::Null;
            1
        }
    }
}

fn project_object(map: &mut Map<String, Value>, tree: &AccessTree) -> usize {
    let mut removed = 0;
    map.retain(|key, v| match tree.child(key) {
        Some(sub) => {
            let keep = project_nested(v, sub, &mut removed);
            if !keep {
                removed += 1;
            }
            keep
        }
        None => {
            removed += 1;
            false
        }
    });
    removed
}

fn project_array(items: &mut Vec<Value>, tree: &AccessTree) -> usize {
    let mut removed = 0;
    items.retain_mut(|item| {
        let keep = project_nested(item, tree, &mut removed);
        if !keep {
            removed += 1;
        }
        keep
    });
    removed
}

/// Projects a value found inside a container; `false` means the container must
/// drop it.
fn project_nested(v: &mut Value, tree: &AccessTree, removed: &mut usize) -> bool {
    if tree.is_all() {
        return true;
    }
    match v {
        Value::Object(map) => *removed += project_object(map, tree),
        Value::Array(items) => *removed += project_array(items, tree),
        Value::Null => {}
        _ => return false,
    }
    true
}

/// `relative_to`: the `attribute_name` the call addressed, if `result` holds
/// that sub-attribute rather than a whole record.
pub fn filter_response(
    body: &[u8],
    records: ResponseRecords,
    read: &AccessTree,
    relative_to: Option<&AttrPath>,
    max_depth: usize,
) -> Result<Filtered, FilterFailure> {
    let mut v = parse_strict(body, max_depth).map_err(|_| FilterFailure::Malformed)?;
    let removed = match records {
        ResponseRecords::None => 0,
        ResponseRecords::JsonBody => project_value(&mut v, read),
        ResponseRecords::Result | ResponseRecords::Results => {
            let Value::Object(envelope) = &mut v else {
                return Err(FilterFailure::UnexpectedShape);
            };
            let mut removed = 0;
            if let Some(result) = envelope.get_mut("result") {
                let tree = match relative_to {
                    Some(p) => read.subtree(p),
                    None => Some(read),
                };
                match tree {
                    Some(t) => removed += project_value(result, t),
                    None => {
                        *result = Value::Null;
                        removed += 1;
                    }
                }
            }
            if let Some(results) = envelope.get_mut("results") {
                let Value::Array(items) = results else {
                    return Err(FilterFailure::UnexpectedShape);
                };
                for item in items {
                    // bulkCreate-style results are ids or error objects; records are objects.
                    if item.is_object() || records == ResponseRecords::Results {
                        removed += project_value(item, read);
                    }
                }
            }
            removed
        }
    };
    let body = serde_json::to_vec(&v).map_err(|_| FilterFailure::Malformed)?;
    Ok(Filtered { body, removed })
}

/// `project` removes children; a bare scalar where the grant is partial
/// (the schema expected an object) cannot be removed by it, so it is nulled.
fn project_value(v: &mut Value, tree: &AccessTree) -> usize {
    if tree.is_all() {
        return 0;
    }
    match v {
        Value::Object(_) | Value::Array(_) => project(v, tree),
        Value::Null => 0,
        _ => {
            *v = Value::Null;
            1
        }
    }
}
