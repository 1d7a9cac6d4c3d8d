//! Call parameters: the query string and the form body, merged into one map.
//! A name given twice (twice in the body, or in both query and body) is refused:
//! otherwise the gateway could check one value while the upstream uses the other.

use crate::errors::ApiError;

#[derive(Debug, Clone, Default)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    pub fn parse_limited(
        query: Option<&str>,
        form_body: Option<&[u8]>,
        max: usize,
    ) -> Result<Params, ApiError> {
        let mut p = Params::default();
        let sources = query.map(str::as_bytes).into_iter().chain(form_body);
        for src in sources {
            for (k, v) in form_urlencoded::parse(src) {
                // form_urlencoded decodes lossily; a replacement character means
                // the caller sent bytes that are not UTF-8, which we refuse.
                if k.contains('\u{FFFD}') || v.contains('\u{FFFD}') {
                    return Err(ApiError::invalid_argument(
                        &k,
                        "the value is not valid percent-encoded UTF-8",
                    ));
                }
                // An upstream written in C may stop reading a name at NUL or
                // another control character, and then see `attributes` where
                // the gateway saw a name it does not filter.
                if k.chars().any(char::is_control) {
                    return Err(ApiError::invalid_argument(
                        &k.escape_default().to_string(),
                        "a parameter name may not contain control characters",
                    ));
                }
                if v.contains('\0') {
                    return Err(ApiError::invalid_argument(
                        &k,
                        "the value contains a NUL (control) character",
                    ));
                }
                if p.pairs.len() >= max {
                    return Err(ApiError::invalid_argument(
                        "parameters",
                        format!("more than {max} parameters"),
                    ));
                }
                if p.get(&k).is_some() {
                    return Err(ApiError::duplicate_argument(&k));
                }
                p.pairs.push((k.into_owned(), v.into_owned()));
            }
        }
        Ok(p)
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn set(&mut self, name: &str, value: String) {
        match self.pairs.iter_mut().find(|(k, _)| k == name) {
            Some(pair) => pair.1 = value,
            None => self.pairs.push((name.to_string(), value)),
        }
    }

    pub fn remove(&mut self, name: &str) -> Option<String> {
        let i = self.pairs.iter().position(|(k, _)| k == name)?;
        Some(self.pairs.remove(i).1)
    }

    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    pub fn encode(&self) -> String {
        let mut s = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &self.pairs {
            s.append_pair(k, v);
        }
        s.finish()
    }
}

/// The parameter names one route or endpoint forwards (or reads): an
/// allow-list matched byte for byte.
#[derive(Debug, Clone, Default)]
pub struct ParamNames {
    names: Vec<Box<str>>,
}

impl ParamNames {
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> ParamNames {
        let mut names: Vec<Box<str>> = names.into_iter().map(Box::from).collect();
        names.sort();
        names.dedup();
        ParamNames { names }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.names.binary_search_by(|n| (**n).cmp(name)).is_ok()
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(|n| &**n)
    }

    /// The union of several allow-lists.
    pub fn union<'a>(lists: impl IntoIterator<Item = &'a ParamNames>) -> ParamNames {
        ParamNames::new(lists.into_iter().flat_map(|l| l.iter()))
    }
}

/// What a route does with a parameter it does not name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownParams {
    /// 400 naming it (the default).
    #[default]
    Refuse,
    /// Not forwarded, counted in `recordgate_dropped_parameters_total`.
    Drop,
}

/// How parsers in front of or behind the gateway might read a name: ASCII
/// case folded, surrounding whitespace trimmed, and the PHP rules (space,
/// `.` and an unmatched `[` become `_`; `a[…]` is the array `a`).
fn readings(name: &str) -> [String; 2] {
    let lower = name
        .trim_matches(|c: char| c.is_ascii_whitespace())
        .to_ascii_lowercase();
    let underscored = lower.replace([' ', '.', '['], "_");
    let array = match lower.find('[') {
        Some(at) if lower[at..].contains(']') => lower[..at].replace([' ', '.'], "_"),
        _ => underscored.clone(),
    };
    [underscored, array]
}

/// Refuses any parameter `allowed` does not name when `mode` refuses, and,
/// whatever the mode, any name that is not exactly a known one but that a
/// case-folding, trimming or PHP-style parser could read as one (`Filter`,
/// `key.attribute`, `filter[]`, ` filter`), or that is not ASCII (a
/// compatibility form such as fullwidth `ｆilter`): such a name could mean a
/// checked parameter to the upstream while the gateway checked nothing.
pub fn check_names(
    params: &Params,
    allowed: &ParamNames,
    known: &ParamNames,
    mode: UnknownParams,
) -> Result<(), ApiError> {
    for (name, _) in params.pairs() {
        if allowed.contains(name) {
            continue;
        }
        // A known name another route takes is only unknown here.
        let ambiguous = !known.contains(name)
            && (!name.is_ascii()
                || readings(name)
                    .iter()
                    .any(|r| known.iter().any(|k| k.eq_ignore_ascii_case(r))));
        if ambiguous {
            return Err(ApiError::invalid_argument(
                &name.escape_default().to_string(),
                "the parameter name is not one this endpoint takes, and could be read as one it checks",
            ));
        }
        if mode == UnknownParams::Refuse {
            return Err(ApiError::invalid_argument(
                &name.escape_default().to_string(),
                "this endpoint does not take this parameter",
            ));
        }
    }
    Ok(())
}

impl Params {
    /// Removes the parameters `allowed` does not name; how many went.
    pub fn retain_allowed(&mut self, allowed: &ParamNames) -> usize {
        let before = self.pairs.len();
        self.pairs.retain(|(k, _)| allowed.contains(k));
        before - self.pairs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: Option<&str>, body: Option<&[u8]>) -> Result<Params, ApiError> {
        Params::parse_limited(query, body, 256)
    }

    #[test]
    fn merges_query_and_body() {
        let p = parse(
            Some("type_name=user"),
            Some(b"uuid=abc&attributes=%5B%22a%22%5D"),
        )
        .unwrap();
        assert_eq!(p.get("type_name"), Some("user"));
        assert_eq!(p.get("attributes"), Some("[\"a\"]"));
    }

    #[test]
    fn repeated_field_is_refused() {
        let e = parse(None, Some(b"attributes=1&attributes=2")).unwrap_err();
        assert_eq!(e.code, 201);
        let e = parse(Some("filter=x"), Some(b"filter=y")).unwrap_err();
        assert_eq!(e.argument_name.as_deref(), Some("filter"));
    }

    #[test]
    fn control_characters_in_names_and_nul_in_values_are_refused() {
        for body in [
            &b"attributes%00x=1"[..],
            b"a%0Ab=1",
            b"%7F=1",
            b"type_name=us%00er",
        ] {
            let e = parse(None, Some(body)).unwrap_err();
            assert_eq!(e.code, 200, "{}", String::from_utf8_lossy(body));
        }
        // Newlines and tabs inside values are data.
        assert!(parse(None, Some(b"filter=a%0Ab%09c")).is_ok());
    }

    #[test]
    fn parameter_count_is_capped() {
        let body: String = (0..300).map(|i| format!("a{i}=1&")).collect();
        let e = parse(None, Some(body.as_bytes())).unwrap_err();
        assert_eq!(e.argument_name.as_deref(), Some("parameters"));
        assert!(Params::parse_limited(None, Some(body.as_bytes()), 300).is_ok());
    }

    #[test]
    fn invalid_utf8_is_refused() {
        assert!(parse(None, Some(b"a=%ff")).is_err());
    }
}
