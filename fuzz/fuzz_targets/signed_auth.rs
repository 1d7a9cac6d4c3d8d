//! Fuzzes client authentication: the `Authorization` header parser, the
//! signed-request `Date` parser and signature verification.
//!
//! Input layout: NUL-separated fields
//! `authorization \0 date \0 secret \0 endpoint \0 key \0 value \0 key \0 value ...`
//! (missing fields are empty; text fields are decoded lossily).
//!
//! Properties:
//! * `parse_authorization` never panics; what it accepts has a non-empty
//!   client id and credential, a Basic client id has no `:`, and `Debug`
//!   never shows the secret or signature;
//! * an accepted `Date` is exactly the canonical rendering of its timestamp;
//! * `verify_signature` never panics, accepts a signature made by `sign`
//!   over `string_to_sign` exactly when the request is well formed (canonical
//!   date, no newline in the endpoint, signed keys non-empty, without `=` or
//!   newline, not repeated), and refuses a tampered one and any signature
//!   made with another secret.

#![no_main]

use chrono::DateTime;
use libfuzzer_sys::fuzz_target;
use recordgate::decide::credentials::{
    parse_authorization, parse_signed_date, sign, string_to_sign, verify_signature, Presented,
    SIGNED_DATE_FORMAT, UNSIGNED_PARAMS,
};

fn well_formed(endpoint: &str, date: &str, params: &[(&str, &str)]) -> bool {
    let mut keys: Vec<&str> = params
        .iter()
        .map(|(k, _)| *k)
        .filter(|k| !UNSIGNED_PARAMS.contains(k))
        .collect();
    keys.sort_unstable();
    !endpoint.contains('\n')
        && parse_signed_date(date).is_some()
        && keys
            .iter()
            .all(|k| !k.is_empty() && !k.contains('=') && !k.contains('\n'))
        && keys.windows(2).all(|w| w[0] != w[1])
}

/// Changes the first base64 character, which always changes the first
/// decoded byte.
fn tamper(sig: &str) -> String {
    let mut chars: Vec<char> = sig.chars().collect();
    if let Some(c) = chars.first_mut() {
        *c = if *c == 'A' { 'B' } else { 'A' };
    }
    chars.into_iter().collect()
}

fuzz_target!(|data: &[u8]| {
    let mut fields = data.split(|&b| b == 0);
    let header = fields.next().unwrap_or_default();
    let mut text = || String::from_utf8_lossy(fields.next().unwrap_or_default()).into_owned();
    let date = text();
    let secret = text();
    let endpoint = text();
    let mut rest = Vec::new();
    loop {
        let k = text();
        let v = text();
        if k.is_empty() && v.is_empty() {
            break;
        }
        rest.push((k, v));
    }
    let params: Vec<(&str, &str)> = rest.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();

    // Authorization header.
    let presented = parse_authorization(header).ok();
    match &presented {
        Some(p @ Presented::Basic { client_id, secret }) => {
            assert!(!client_id.is_empty() && !secret.is_empty());
            assert!(!client_id.contains(':'), "basic client id with a colon");
            let dbg = format!("{p:?}");
            let expected = format!("Basic {{ client_id: {client_id:?}, secret: \"<redacted>\" }}");
            assert_eq!(dbg, expected, "Debug of Basic credentials is not redacted");
        }
        Some(
            p @ Presented::Signed {
                client_id,
                signature,
            },
        ) => {
            assert!(!client_id.is_empty() && !signature.is_empty());
            assert!(
                !signature.contains(':'),
                "signature split at the wrong colon"
            );
            let dbg = format!("{p:?}");
            let expected =
                format!("Signed {{ client_id: {client_id:?}, signature: \"<redacted>\" }}");
            assert_eq!(dbg, expected, "Debug of a signature is not redacted");
        }
        None => {}
    }

    // Date.
    if let Some(ts) = parse_signed_date(&date) {
        match DateTime::from_timestamp(ts, 0) {
            Some(dt) => assert_eq!(
                dt.format(SIGNED_DATE_FORMAT).to_string(),
                date,
                "accepted a non-canonical date"
            ),
            None => panic!("accepted date {date:?} maps to an impossible timestamp {ts}"),
        }
    }

    // Signatures.
    let ok = well_formed(&endpoint, &date, &params);
    let good = sign(
        secret.as_bytes(),
        &string_to_sign(&endpoint, &date, &params, false),
    );
    assert_eq!(
        verify_signature(secret.as_bytes(), &endpoint, &date, &params, &good),
        ok,
        "own signature verdict wrong (well formed: {ok})"
    );
    let doc_form = sign(
        secret.as_bytes(),
        &string_to_sign(&endpoint, &date, &params, true),
    );
    let doc_ok = ok && params.iter().all(|(k, _)| UNSIGNED_PARAMS.contains(k));
    if doc_form != good {
        assert_eq!(
            verify_signature(secret.as_bytes(), &endpoint, &date, &params, &doc_form),
            doc_ok,
            "documentation-form signature verdict wrong"
        );
    }
    assert!(
        !verify_signature(secret.as_bytes(), &endpoint, &date, &params, &tamper(&good)),
        "tampered signature accepted"
    );
    let other = format!("{secret}x");
    assert!(
        !verify_signature(other.as_bytes(), &endpoint, &date, &params, &good),
        "signature accepted under another secret"
    );
    if let Some(Presented::Signed { signature, .. }) = &presented {
        let _ = verify_signature(secret.as_bytes(), &endpoint, &date, &params, signature);
    }
    // Any field as a raw presented signature.
    let _ = verify_signature(secret.as_bytes(), &endpoint, &date, &params, &date);
});
