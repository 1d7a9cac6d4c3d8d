//! Fuzzes the scanners that find attribute names in `filter`, `attributes` and
//! `sort_on` parameters.
//!
//! Input: the whole input as one UTF-8 string (non-UTF-8 inputs are skipped:
//! parameters reach the scanners as `&str`).
//!
//! Properties: no panic; every path returned survives both of its printed
//! forms (`to_selector_string` re-parses to the same path, `Display` to the
//! same segments), so a name the gateway checked is the name it reports; and
//! `json_path_list` returns one path per array item.

#![no_main]

use libfuzzer_sys::fuzz_target;
use recordgate::decide::probes::{filter_attributes, json_path_list};
use recordgate::schema::AttrPath;

fn check_paths(paths: &[AttrPath], what: &str) {
    for p in paths {
        assert!(!p.segments().is_empty(), "{what}: empty path");
        assert!(
            p.segments()
                .iter()
                .all(|s| !s.is_empty() && !s.contains(['.', '/', '#'])),
            "{what}: bad segment in {:?}",
            p.segments()
        );
        let sel = p.to_selector_string();
        match AttrPath::parse(&sel) {
            Ok(q) => assert_eq!(*p, q, "{what}: {sel:?} does not re-parse to itself"),
            Err(e) => panic!("{what}: printed path {sel:?} does not parse: {e}"),
        }
        let plain = p.to_string();
        match AttrPath::parse(&plain) {
            Ok(q) => {
                assert_eq!(p.segments(), q.segments(), "{what}: {plain:?} changed");
                assert!(!q.has_selector(), "{what}: Display kept a selector");
            }
            Err(e) => panic!("{what}: displayed path {plain:?} does not parse: {e}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(paths) = filter_attributes(s) {
        check_paths(&paths, "filter");
    }
    for sort_keys in [false, true] {
        if let Ok(paths) = json_path_list(s, sort_keys) {
            check_paths(&paths, "json_path_list");
            if let Ok(serde_json::Value::Array(items)) = serde_json::from_str(s) {
                assert_eq!(items.len(), paths.len(), "one path per item");
            }
        }
    }
});
