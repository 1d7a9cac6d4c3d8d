//! Property: a parameter name built from a checked one by case changes,
//! separators, whitespace, brackets or compatibility characters is never
//! forwarded under a name that a case-folding, trimming or PHP-style parser
//! would read as a checked name, whether the route refuses or drops unknown
//! parameters.

// A test (or bench) that cannot set up fails loudly; the no-panic rule is for the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use recordgate::params::{check_names, ParamNames, Params, UnknownParams};

/// Names the gateway checks (a route's probes and records).
const CHECKED: [&str; 10] = [
    "filter",
    "sort_on",
    "attributes",
    "key_attribute",
    "key_value",
    "attribute_name",
    "all_attributes",
    "value",
    "type_name",
    "lastUpdated",
];

/// What other parsers make of a name: ASCII case folding, trimming, and
/// PHP's `.`/space/`[` -> `_` and `a[...]` -> `a`.
fn other_readings(name: &str) -> Vec<String> {
    let trimmed = name.trim_matches(|c: char| c.is_whitespace());
    let lower = trimmed.to_lowercase();
    let php = |s: &str| -> String {
        let s = match s.find('[') {
            Some(at) if s[at..].contains(']') => s[..at].to_string(),
            _ => s.to_string(),
        };
        s.replace([' ', '.', '['], "_")
    };
    vec![
        trimmed.to_string(),
        lower.clone(),
        php(trimmed),
        php(&lower),
        // NFKC-ish: fullwidth ASCII back to ASCII.
        lower
            .chars()
            .map(|c| match c as u32 {
                0xFF01..=0xFF5E => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
                _ => c,
            })
            .collect(),
    ]
}

fn mutate(base: &str, ops: &[u8]) -> String {
    let mut chars: Vec<char> = base.chars().collect();
    for (i, op) in ops.iter().enumerate() {
        let at = i % (chars.len().max(1));
        match op % 8 {
            0 => chars[at] = chars[at].to_ascii_uppercase(),
            1 => {
                if chars[at] == '_' {
                    chars[at] = '.';
                }
            }
            2 => {
                if chars[at] == '_' {
                    chars[at] = ' ';
                }
            }
            3 => chars.push(' '),
            4 => chars.insert(0, ' '),
            5 => chars.extend(['[', ']']),
            6 => {
                // Fullwidth form of an ASCII letter.
                if chars[at].is_ascii_lowercase() {
                    chars[at] = char::from_u32(chars[at] as u32 + 0xFEE0).unwrap();
                }
            }
            _ => {
                if chars[at] == '_' {
                    chars[at] = '[';
                }
            }
        }
    }
    chars.into_iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn a_look_alike_is_never_forwarded(
        base in 0usize..CHECKED.len(),
        ops in proptest::collection::vec(any::<u8>(), 1..6),
        drop in any::<bool>(),
    ) {
        let name = mutate(CHECKED[base], &ops);
        let allowed = ParamNames::new(["type_name", "id"]);
        let known = ParamNames::new(CHECKED.iter().copied().chain(["id"]));
        let query = format!(
            "{}=x",
            form_urlencoded::byte_serialize(name.as_bytes()).collect::<String>()
        );
        let Ok(mut params) = Params::parse_limited(Some(&query), None, 16) else {
            // Refused while parsing (a control character): never forwarded.
            return Ok(());
        };
        let mode = if drop { UnknownParams::Drop } else { UnknownParams::Refuse };
        if check_names(&params, &allowed, &known, mode).is_err() {
            return Ok(());
        }
        params.retain_allowed(&allowed);
        for (forwarded, _) in params.pairs() {
            if allowed.contains(forwarded) {
                // Exactly an allowed name: checked as itself.
                prop_assert!(CHECKED.contains(&forwarded) || forwarded == "id");
                continue;
            }
            for reading in other_readings(forwarded) {
                prop_assert!(
                    !CHECKED.iter().any(|c| c.eq_ignore_ascii_case(&reading)),
                    "{forwarded:?} was forwarded and reads as {reading:?}"
                );
            }
        }
    }
}

#[test]
fn the_issue_s_look_alikes_are_refused_even_where_unknown_names_are_dropped() {
    let allowed = ParamNames::new(["type_name", "id", "attribute_name"]);
    let known = ParamNames::new(CHECKED);
    for name in [
        "key.attribute",
        "sort.on",
        "attribute.name",
        "Filter",
        "KEY_ATTRIBUTE",
        "filter ",
        "filter[]",
        "\u{ff46}ilter",
        "Attributes",
        "all.attributes",
    ] {
        let query = format!(
            "{}=x",
            form_urlencoded::byte_serialize(name.as_bytes()).collect::<String>()
        );
        let params = Params::parse_limited(Some(&query), None, 16).unwrap();
        assert!(
            check_names(&params, &allowed, &known, UnknownParams::Drop).is_err(),
            "{name:?} passed"
        );
    }
}
