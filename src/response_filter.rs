//! Cuts an upstream JSON response down to the caller's read schema. The
//! envelope (`stat`, `result_count`, ...) is kept; only records are touched.
//! Anything unexpected is an error: the caller then gets a 502, never the
//! unfiltered body.

use serde_json::Value;

use crate::filter::project;
use crate::json::parse_strict;
use crate::routes::ResponseRecords;
use crate::schema::{AccessTree, AttrPath};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterFailure {
    Malformed,
    UnexpectedShape,
}

impl FilterFailure {
    pub fn label(self) -> &'static str {
        match self {
            FilterFailure::Malformed => "malformed",
            FilterFailure::UnexpectedShape => "malformed",
        }
    }
}

pub struct Filtered {
    pub body: Vec<u8>,
    pub removed: usize,
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
