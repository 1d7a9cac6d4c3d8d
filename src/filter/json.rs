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
    #[error("the number {0} cannot be forwarded exactly (integers are 64-bit, decimals 17 significant digits)")]
    InexactNumber(String),
}

/// [`parse_strict`] for a record the gateway will re-serialise and forward:
/// also refuses numbers that would not survive that unchanged. Without this a
/// 40-digit integer would reach the upstream rounded to a different value.
pub fn parse_record(bytes: &[u8], max_depth: usize) -> Result<Value, JsonError> {
    let v = parse_strict(bytes, max_depth)?;
    match first_inexact_number(bytes) {
        Some(n) => Err(JsonError::InexactNumber(n)),
        None => Ok(v),
    }
}

/// Scans valid JSON for a number literal that `serde_json::Value` (64-bit
/// integers, `f64`) would not reproduce digit for digit.
fn first_inexact_number(bytes: &[u8]) -> Option<String> {
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() {
                    match bytes[i] {
                        b'\\' => i += 2,
                        b'"' => {
                            i += 1;
                            break;
                        }
                        _ => i += 1,
                    }
                }
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < bytes.len()
                    && matches!(bytes[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                let token = String::from_utf8_lossy(&bytes[start..i]);
                if !is_exact(&token) {
                    return Some(token.into_owned());
                }
            }
            _ => i += 1,
        }
    }
    None
}

fn is_exact(token: &str) -> bool {
    if !token.contains(['.', 'e', 'E']) {
        return token.parse::<i64>().is_ok() || token.parse::<u64>().is_ok();
    }
    match token.parse::<f64>() {
        Ok(f) if f.is_finite() => {
            significant_digits(token) == significant_digits(&format!("{f:e}"))
        }
        _ => false,
    }
}

/// The digits of a decimal literal without leading or trailing zeros, and
/// the position of the decimal point relative to them; `None` if the
/// exponent itself is out of range.
fn significant_digits(literal: &str) -> Option<(String, i64)> {
    let literal = literal.trim_start_matches('-');
    let (mantissa, exponent) = match literal.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.trim_start_matches('+').parse::<i64>().ok()?),
        None => (literal, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let mut point = exponent.checked_add(int.len() as i64)?;
    let all: String = int.chars().chain(frac.chars()).collect();
    let trimmed = all.trim_start_matches('0');
    point -= (all.len() - trimmed.len()) as i64;
    let digits = trimmed.trim_end_matches('0');
    if digits.is_empty() {
        return Some((String::new(), 0));
    }
    Some((digits.to_string(), point))
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
    fn numbers_that_would_change_are_refused_for_records() {
        for ok in [
            "0",
            "-0",
            "0.0",
            "1.10",
            "0.1",
            "1e2",
            "-9223372036854775808",
            "18446744073709551615",
            "1.7976931348623157e308",
            "5e-324",
            "123.456",
            "1E+3",
            "0.30000000000000004",
        ] {
            assert!(parse_record(ok.as_bytes(), 8).is_ok(), "{ok}");
        }
        for bad in [
            "18446744073709551616",
            "-9223372036854775809",
            "1234567890123456789012345678901234567890",
            "0.1000000000000000055511151231257827",
            "1e400",
            "1e99999999999999999999",
        ] {
            let doc = format!(r#"{{"a":[1,{bad}],"s":"1e999"}}"#);
            assert!(parse_record(doc.as_bytes(), 8).is_err(), "{bad}");
        }
        // Digits inside strings are not numbers.
        assert!(parse_record(br#"{"a":"123456789012345678901234567890"}"#, 8).is_ok());
        assert!(parse_record(br#"{"a\"1e999":1}"#, 8).is_ok());
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
