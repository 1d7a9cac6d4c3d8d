//! Writes: applying attributes and plural elements to a record.

use super::*;

// ---------------------------------------------------------------------------
// Writes
// ---------------------------------------------------------------------------

pub(crate) struct WriteCtx {
    pub(crate) next_element_id: i64,
    pub(crate) creating: bool,
}

impl WriteCtx {
    pub(crate) fn element_id(&mut self) -> i64 {
        let id = self.next_element_id;
        self.next_element_id += 1;
        id
    }
}

pub(crate) fn join_path(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

pub(crate) fn reject_reserved(given: &Map<String, Value>, creating: bool) -> ApiResult<()> {
    for key in RESERVED {
        if given.contains_key(key) {
            return Err(if creating && key == "id" {
                ApiError::id_in_new_record("id")
            } else {
                ApiError::reserved(key, "attributes")
            });
        }
    }
    Ok(())
}

/// Merges `value` into `target` with `entity.update` semantics: objects merge
/// recursively, plural elements with an `id` replace that element and the rest
/// are appended with fresh ids.
pub(crate) fn apply(
    kind: Kind,
    target: &mut Value,
    value: &Value,
    path: &str,
    ctx: &mut WriteCtx,
) -> ApiResult<()> {
    match kind {
        Kind::Scalar => {
            if value.is_object() || value.is_array() {
                return Err(ApiError::json_type(path, "a simple value", "attributes"));
            }
            *target = value.clone();
        }
        Kind::Object(fields) => match value {
            Value::Null => *target = Value::Object(default_object(fields)),
            Value::Object(given) => {
                if !target.is_object() {
                    *target = Value::Object(default_object(fields));
                }
                if let Value::Object(map) = target {
                    apply_fields(fields, map, given, path, ctx)?;
                }
            }
            _ => return Err(ApiError::json_type(path, "an object", "attributes")),
        },
        Kind::Plural(fields) => match value {
            Value::Null => *target = Value::Array(Vec::new()),
            Value::Array(items) => {
                if !target.is_array() {
                    *target = Value::Array(Vec::new());
                }
                if let Value::Array(existing) = target {
                    for item in items {
                        apply_element(fields, existing, item, path, ctx)?;
                    }
                }
            }
            _ => return Err(ApiError::json_type(path, "an array", "attributes")),
        },
    }
    Ok(())
}

pub(crate) fn apply_fields(
    fields: &[Field],
    map: &mut Map<String, Value>,
    given: &Map<String, Value>,
    path: &str,
    ctx: &mut WriteCtx,
) -> ApiResult<()> {
    for (key, v) in given {
        let child_path = join_path(path, key);
        let kind = field_kind(fields, key)
            .ok_or_else(|| ApiError::unknown_attribute(&child_path, "attributes"))?;
        let slot = map.entry(key.clone()).or_insert(Value::Null);
        apply(kind, slot, v, &child_path, ctx)?;
    }
    Ok(())
}

pub(crate) fn build_element(
    fields: &[Field],
    id: i64,
    given: &Map<String, Value>,
    path: &str,
    ctx: &mut WriteCtx,
) -> ApiResult<Value> {
    let mut element = default_element(fields, id);
    for (key, v) in given {
        if key == "id" {
            continue;
        }
        let child_path = format!("{path}#{id}.{key}");
        let kind = field_kind(fields, key)
            .ok_or_else(|| ApiError::unknown_attribute(&child_path, "attributes"))?;
        let slot = element.entry(key.clone()).or_insert(Value::Null);
        apply(kind, slot, v, &child_path, ctx)?;
    }
    Ok(Value::Object(element))
}

pub(crate) fn apply_element(
    fields: &[Field],
    existing: &mut Vec<Value>,
    item: &Value,
    path: &str,
    ctx: &mut WriteCtx,
) -> ApiResult<()> {
    let Value::Object(given) = item else {
        return Err(ApiError::json_type(
            path,
            "an array of objects",
            "attributes",
        ));
    };
    match given.get("id") {
        None => {
            let id = ctx.element_id();
            existing.push(build_element(fields, id, given, path, ctx)?);
        }
        Some(_) if ctx.creating => return Err(ApiError::id_in_new_record(path)),
        Some(raw_id) => {
            let id = raw_id.as_i64().ok_or_else(|| {
                ApiError::json_type(&format!("{path}.id"), "an integer", "attributes")
            })?;
            let element = build_element(fields, id, given, path, ctx)?;
            let slot = existing
                .iter_mut()
                .find(|it| element_id(it) == Some(id))
                .ok_or_else(|| ApiError::not_found(format!("plural element {path}#{id}")))?;
            *slot = element;
        }
    }
    Ok(())
}
