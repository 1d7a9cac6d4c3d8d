//! Strict, bounded JSON parsing for untrusted request and response bodies.
//!
//! `serde_json::from_slice` silently keeps the *last* of two duplicate keys. The
//! gateway and the upstream may disagree on which duplicate wins, so a filter that
//! inspected the first one could be bypassed by the second: duplicates are refused.

use std::cell::Cell;
use std::fmt;

use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// serde_json refuses the 128th nested array/object on its own (and has no feature
/// enabled here to lift that). Capping our limit just below it means every
/// too-deep input is reported as `TooDeep`, never as a generic syntax error.
pub const MAX_SUPPORTED_DEPTH: usize = 127;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    #[error("invalid JSON: {0}")]
    Syntax(String),
    #[error("duplicate object key {0:?}")]
    DuplicateKey(String),
    #[error("JSON nesting exceeds the maximum depth of {0}")]
    TooDeep(usize),
}

/// Parses `bytes` as exactly one JSON value.
///
/// Refuses duplicate object keys (compared after unescaping), more than
/// `max_depth` nested arrays/objects (capped at [`MAX_SUPPORTED_DEPTH`]), invalid
/// UTF-8, lone surrogate escapes and trailing non-whitespace. Object key order is
/// preserved.
pub fn parse_strict(bytes: &[u8], max_depth: usize) -> Result<Value, JsonError> {
    let limit = max_depth.min(MAX_SUPPORTED_DEPTH);
    // serde_json errors are opaque, so the precise reason is passed out of the
    // visitor through this side channel rather than parsed back out of a message.
    let failure = Cell::new(None);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let seed = StrictSeed {
        remaining: limit,
        limit,
        failure: &failure,
    };
    let result = seed.deserialize(&mut de).and_then(|v| de.end().map(|()| v));
    match result {
        Ok(v) => Ok(v),
        Err(e) => Err(match failure.take() {
            Some(reason) => reason,
            None if e.to_string().starts_with("recursion limit exceeded") => {
                JsonError::TooDeep(limit)
            }
            None => JsonError::Syntax(e.to_string()),
        }),
    }
}

#[derive(Clone, Copy)]
struct StrictSeed<'f> {
    remaining: usize,
    limit: usize,
    failure: &'f Cell<Option<JsonError>>,
}

impl StrictSeed<'_> {
    fn fail<E: serde::de::Error>(&self, reason: JsonError) -> E {
        let msg = reason.to_string();
        self.failure.set(Some(reason));
        E::custom(msg)
    }

    fn nested<E: serde::de::Error>(&self) -> Result<Self, E> {
        match self.remaining.checked_sub(1) {
            Some(remaining) => Ok(StrictSeed { remaining, ..*self }),
            None => Err(self.fail(JsonError::TooDeep(self.limit))),
        }
    }
}

impl<'de> DeserializeSeed<'de> for StrictSeed<'_> {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        // JSON text cannot express NaN/inf, but the visitor contract allows them.
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("non-finite number"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let inner = self.nested()?;
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element_seed(inner)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let inner = self.nested()?;
        let mut map = Map::new();
        // Keys arrive already unescaped, so `"em\u0061il"` collides with `"email"`.
        while let Some(key) = access.next_key::<String>()? {
            if map.contains_key(&key) {
                return Err(self.fail(JsonError::DuplicateKey(key)));
            }
            let value = access.next_value_seed(inner)?;
            map.insert(key, value);
        }
        Ok(Value::Object(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_ordinary_json_preserving_key_order() {
        let v = parse_strict(br#"{"z":1,"a":[true,null,1.5,-3,"x"],"m":{}}"#, 10).unwrap();
        assert_eq!(v, json!({"z":1,"a":[true,null,1.5,-3,"x"],"m":{}}));
        let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["z", "a", "m"]);
    }

    #[test]
    fn duplicate_keys_are_refused_after_unescaping() {
        assert_eq!(
            parse_strict(br#"{"email":1,"email":2}"#, 10),
            Err(JsonError::DuplicateKey("email".into()))
        );
        assert_eq!(
            parse_strict(br#"{"email":1,"em\u0061il":2}"#, 10),
            Err(JsonError::DuplicateKey("email".into()))
        );
        assert_eq!(
            parse_strict(br#"[{"a":{"b":1,"b":2}}]"#, 10),
            Err(JsonError::DuplicateKey("b".into()))
        );
        // Same key in sibling objects is fine.
        assert!(parse_strict(br#"[{"a":1},{"a":2}]"#, 10).is_ok());
    }

    #[test]
    fn depth_counts_arrays_and_objects() {
        assert!(parse_strict(b"1", 0).is_ok());
        assert_eq!(parse_strict(b"[]", 0), Err(JsonError::TooDeep(0)));
        assert!(parse_strict(br#"[{"a":[1]}]"#, 3).is_ok());
        assert_eq!(
            parse_strict(br#"[{"a":[1]}]"#, 2),
            Err(JsonError::TooDeep(2))
        );
    }

    #[test]
    fn hundred_thousand_deep_input_is_an_error_not_a_crash() {
        let mut deep = vec![b'['; 100_000];
        deep.extend(vec![b']'; 100_000]);
        assert_eq!(parse_strict(&deep, 64), Err(JsonError::TooDeep(64)));
        assert_eq!(
            parse_strict(&deep, usize::MAX),
            Err(JsonError::TooDeep(MAX_SUPPORTED_DEPTH))
        );
        let objs = "{\"a\":".repeat(100_000);
        assert_eq!(
            parse_strict(objs.as_bytes(), 1000),
            Err(JsonError::TooDeep(MAX_SUPPORTED_DEPTH))
        );
    }

    #[test]
    fn max_supported_depth_itself_parses() {
        let n = MAX_SUPPORTED_DEPTH;
        let text = format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(parse_strict(text.as_bytes(), n).is_ok());
        let text = format!("{}{}", "[".repeat(n + 1), "]".repeat(n + 1));
        assert_eq!(
            parse_strict(text.as_bytes(), usize::MAX),
            Err(JsonError::TooDeep(n))
        );
    }

    #[test]
    fn invalid_utf8_and_lone_surrogates_are_refused() {
        assert!(matches!(
            parse_strict(b"\"\xff\"", 10),
            Err(JsonError::Syntax(_))
        ));
        assert!(matches!(
            parse_strict(b"{\"\xc3\":1}", 10),
            Err(JsonError::Syntax(_))
        ));
        assert!(matches!(
            parse_strict(br#""\ud800""#, 10),
            Err(JsonError::Syntax(_))
        ));
        assert!(matches!(
            parse_strict(br#"{"\udc00":1}"#, 10),
            Err(JsonError::Syntax(_))
        ));
        assert_eq!(
            parse_strict(br#""\ud83d\ude00""#, 10),
            Ok(json!("\u{1f600}"))
        );
    }

    #[test]
    fn trailing_garbage_and_empty_input_are_refused() {
        assert!(matches!(
            parse_strict(b"{} x", 10),
            Err(JsonError::Syntax(_))
        ));
        assert!(matches!(
            parse_strict(b"{}{}", 10),
            Err(JsonError::Syntax(_))
        ));
        assert!(matches!(parse_strict(b"", 10), Err(JsonError::Syntax(_))));
        assert!(parse_strict(b" {} \n", 10).is_ok());
    }

    #[test]
    fn messages_are_single_line() {
        for err in [
            parse_strict(b"{\"a\":1,\"a\\n\":2,\"a\\n\":3}", 10).unwrap_err(),
            parse_strict(b"[[", 1).unwrap_err(),
            parse_strict(b"{,", 10).unwrap_err(),
        ] {
            let msg = err.to_string();
            assert!(!msg.contains('\n'), "{msg}");
        }
    }
}
