//! Finds the attribute names a call's query parameters refer to, so that
//! `filter`, `sort_on`, `attributes`, `key_attribute` and `attribute_name`
//! cannot probe attributes the caller may not read.

use crate::decide::grants::Grants;
use crate::decide::routes::{Access, Route};
use crate::errors::ApiError;
use crate::params::Params;
use crate::schema::AttrPath;

const KEYWORDS: [&str; 7] = ["and", "or", "not", "is", "null", "true", "false"];

/// The attribute paths named in a Capture `filter` expression.
/// Anything the scanner does not understand is an error: a probe the gateway
/// cannot read must not reach the upstream.
pub fn filter_attributes(expr: &str) -> Result<Vec<AttrPath>, String> {
    let bytes = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b' ' | b'\t' | b'\r' | b'\n' | b'(' | b')' | b'=' | b'!' | b'<' | b'>' => i += 1,
            b'\'' => {
                i += 1;
                loop {
                    match bytes.get(i) {
                        None => return Err("unterminated string".into()),
                        Some(b'\\') => i += 2,
                        Some(b'\'') if bytes.get(i + 1) == Some(&b'\'') => i += 2,
                        Some(b'\'') => {
                            i += 1;
                            break;
                        }
                        Some(_) => i += 1,
                    }
                }
            }
            b'0'..=b'9' | b'-' | b'+' => {
                i += 1;
                while i < bytes.len()
                    && matches!(bytes[i], b'0'..=b'9' | b'.' | b'e' | b'E' | b'-' | b'+')
                {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c == b'/' => {
                let start = i;
                while i < bytes.len()
                    && (bytes[i].is_ascii_alphanumeric()
                        || matches!(bytes[i], b'_' | b'.' | b'/' | b'#'))
                {
                    i += 1;
                }
                let word = &expr[start..i];
                if KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(word)) {
                    continue;
                }
                out.push(AttrPath::parse(word).map_err(|e| e.to_string())?);
            }
            _ => {
                return Err(format!(
                    "unexpected character {:?} at offset {i}",
                    expr[i..].chars().next().unwrap_or('?')
                ))
            }
        }
    }
    Ok(out)
}

/// A JSON array of attribute paths (`attributes`), or of sort keys with an
/// optional `-` for descending order (`sort_on`).
pub fn json_path_list(value: &str, sort_keys: bool) -> Result<Vec<AttrPath>, String> {
    let items: Vec<serde_json::Value> = serde_json::from_str(value)
        .map_err(|_| "the JSON is not syntactically valid".to_string())?;
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let s = match &item {
            serde_json::Value::String(s) => s.as_str(),
            // Capture also accepts {"attr": "asc"} objects in sort_on.
            serde_json::Value::Object(m) if sort_keys && m.len() == 1 => {
                m.keys().next().map(String::as_str).unwrap_or_default()
            }
            _ => return Err("expected an array of attribute names".into()),
        };
        let s = if sort_keys {
            s.strip_prefix('-').unwrap_or(s)
        } else {
            s
        };
        out.push(AttrPath::parse(s).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

fn parse_path(argument: &str, value: &str) -> Result<AttrPath, ApiError> {
    AttrPath::parse(value).map_err(|e| ApiError::invalid_argument(argument, e))
}

/// Refuses parameters that would let a caller select, sort or address records
/// by attributes outside its read schema.
pub(crate) fn refuse_probes(
    route: &Route,
    g: &Grants<'_>,
    params: &Params,
) -> Result<Option<AttrPath>, ApiError> {
    if let Some(f) = params.get("filter") {
        for p in filter_attributes(f).map_err(|e| ApiError::invalid_argument("filter", e))? {
            if !g.read.allows_fully(&p) {
                return Err(ApiError::not_readable("filter", &p.to_string()));
            }
        }
    }
    if let Some(s) = params.get("sort_on") {
        for p in json_path_list(s, true).map_err(|e| ApiError::invalid_argument("sort_on", e))? {
            if !g.read.allows_fully(&p) {
                return Err(ApiError::not_readable("sort_on", &p.to_string()));
            }
        }
    }
    if let Some(k) = params.get("key_attribute") {
        let p = parse_path("key_attribute", k)?;
        if !g.read.allows_fully(&p) {
            return Err(ApiError::not_readable("key_attribute", &p.to_string()));
        }
    }
    if route.access == Access::Read {
        if let Some(a) = params.get("attributes") {
            for p in
                json_path_list(a, false).map_err(|e| ApiError::invalid_argument("attributes", e))?
            {
                if !g.read.reaches(&p) {
                    return Err(ApiError::not_readable("attributes", &p.to_string()));
                }
            }
        }
    }
    let Some(a) = params.get("attribute_name") else {
        return Ok(None);
    };
    let p = parse_path("attribute_name", a)?;
    match route.access {
        Access::Read if !g.read.reaches(&p) => {
            Err(ApiError::not_readable("attribute_name", &p.to_string()))
        }
        Access::Write if p.is_reserved() => Err(ApiError::reserved_attribute(
            "attribute_name",
            &p.to_string(),
        )),
        Access::Write if !g.write.reaches(&p) => {
            Err(ApiError::not_writable("attribute_name", &p.to_string()))
        }
        _ => Ok(Some(p)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(expr: &str) -> Vec<String> {
        filter_attributes(expr)
            .unwrap()
            .iter()
            .map(|p| p.to_string())
            .collect()
    }

    #[test]
    fn finds_attribute_names_outside_strings() {
        assert_eq!(
            names(
                "email = 'a and b' and primaryAddress.city is not null or birthday > '1990-01-01'"
            ),
            vec!["email", "primaryAddress.city", "birthday"]
        );
        assert_eq!(
            names("not (internal.riskScore >= 10)"),
            vec!["internal.riskScore"]
        );
        assert_eq!(names("givenName = 'O''Brien'"), vec!["givenName"]);
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        assert!(filter_attributes("email = 'open").is_err());
        assert!(filter_attributes("email ~ x").is_err());
        assert!(filter_attributes("email = \"x\"").is_err());
    }

    #[test]
    fn sort_keys_drop_the_direction() {
        let p = json_path_list(r#"["-lastUpdated", "email"]"#, true).unwrap();
        assert_eq!(p[0].to_string(), "lastUpdated");
        assert!(json_path_list("nope", false).is_err());
    }
}
