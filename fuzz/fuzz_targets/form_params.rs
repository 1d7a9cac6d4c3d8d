//! Fuzzes the merged query/form-body parameter parser.
//!
//! Input layout: `query \0 body` (split at the first NUL; without one the
//! whole input is the body and there is no query). The query must be a
//! `&str`, as in the gateway, so non-UTF-8 queries are decoded lossily.
//!
//! Properties when parsing succeeds:
//! * no name appears twice and no name or value holds U+FFFD (both refused);
//! * `encode` then `parse` gives back the same pairs in the same order, and
//!   encoding that again gives the same string (the gateway forwards the
//!   re-encoded body, so what it checked is what the upstream reads).

#![no_main]

use libfuzzer_sys::fuzz_target;
use recordgate::params::Params;

fn pairs(p: &Params) -> Vec<(String, String)> {
    p.pairs()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let (query, body) = match data.iter().position(|&b| b == 0) {
        Some(i) => (Some(String::from_utf8_lossy(&data[..i])), &data[i + 1..]),
        None => (None, data),
    };
    let query = query.as_deref();

    // Each source alone, and both merged.
    let _ = Params::parse_limited(query, None, 4096);
    let _ = Params::parse_limited(None, Some(body), 4096);
    let Ok(p) = Params::parse_limited(query, Some(body), 4096) else {
        return;
    };

    let got = pairs(&p);
    for (i, (k, v)) in got.iter().enumerate() {
        assert!(
            !k.contains('\u{FFFD}') && !v.contains('\u{FFFD}'),
            "replacement character accepted in {k:?}={v:?}"
        );
        assert!(
            got[..i].iter().all(|(seen, _)| seen != k),
            "name {k:?} accepted twice"
        );
        assert_eq!(
            p.get(k),
            Some(v.as_str()),
            "get({k:?}) disagrees with pairs()"
        );
    }
    assert_eq!(p.is_empty(), got.is_empty());

    let encoded = p.encode();
    let again = match Params::parse_limited(None, Some(encoded.as_bytes()), 4096) {
        Ok(again) => again,
        Err(e) => panic!("re-encoded params refused: {encoded:?}: {e:?}"),
    };
    assert_eq!(
        got,
        pairs(&again),
        "round trip changed the params: {encoded:?}"
    );
    assert_eq!(encoded, again.encode(), "encoding is not stable");

    // The same string as a query must mean the same thing.
    match Params::parse_limited(Some(&encoded), None, 4096) {
        Ok(q) => assert_eq!(got, pairs(&q), "query and body decode differently"),
        Err(e) => panic!("re-encoded params refused as a query: {encoded:?}: {e:?}"),
    }
});
