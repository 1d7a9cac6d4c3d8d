//! Client credentials: HTTP Basic and Capture's `janrain-signed` scheme
//! (`Authorization: Signature <client_id>:<base64 HMAC-SHA1>` plus a `Date`
//! header), see capture-api-notes §1.
//!
//! Nothing derived from a presented secret or signature ever reaches an error
//! value or a `Debug` string: error payloads are `&'static str` by type.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::NaiveDateTime;
use hmac::{Hmac, Mac};
use rand::rngs::OsRng;
use rand::seq::SliceRandom;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha1 = Hmac<Sha1>;

/// The only `Date` format the signed scheme uses (UTC, no zone marker).
pub const SIGNED_DATE_FORMAT: &str = "%Y-%m-%d %H:%M:%S";

/// Parameters the reference client removes before signing (and never sends).
pub const UNSIGNED_PARAMS: [&str; 3] = ["client_id", "client_secret", "access_token"];

const TOKEN_ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const TOKEN_LEN: usize = 32;

/// Credentials as presented in an `Authorization` header, not yet checked.
#[derive(Clone, PartialEq, Eq)]
pub enum Presented {
    Basic {
        client_id: String,
        secret: String,
    },
    Signed {
        client_id: String,
        signature: String,
    },
}

impl Presented {
    pub fn client_id(&self) -> &str {
        match self {
            Presented::Basic { client_id, .. } | Presented::Signed { client_id, .. } => client_id,
        }
    }
}

impl fmt::Debug for Presented {
    // A signature is replayable inside the skew window, so it is as sensitive
    // as the secret for logging purposes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Presented::Basic { client_id, .. } => f
                .debug_struct("Basic")
                .field("client_id", client_id)
                .field("secret", &"<redacted>")
                .finish(),
            Presented::Signed { client_id, .. } => f
                .debug_struct("Signed")
                .field("client_id", client_id)
                .field("signature", &"<redacted>")
                .finish(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Neither `Basic` nor `Signature` (e.g. `Bearer`, `OAuth`).
    #[error("unsupported authorization scheme")]
    UnsupportedScheme,
    /// The scheme is supported but the credentials are unusable. The reason
    /// is a fixed string so that no part of the header can leak through it.
    #[error("malformed authorization header: {0}")]
    Malformed(&'static str),
}

/// Parses an `Authorization` header value.
///
/// * `Basic <base64(client_id:secret)>`: split at the first `:` (secrets may
///   contain colons; Capture client ids do not).
/// * `Signature <client_id>:<base64 signature>`: split at the last `:`
///   (base64 has none; client ids may be any UTF-8).
///
/// The scheme is case-insensitive and separated by spaces/tabs; base64 must
/// be standard, padded and canonical. Empty client ids, secrets and
/// signatures are refused here rather than left to a lookup to reject.
pub fn parse_authorization(value: &[u8]) -> Result<Presented, AuthError> {
    let value = value.trim_ascii();
    let mut parts = value.splitn(2, |&b| b == b' ' || b == b'\t');
    let scheme = parts.next().unwrap_or_default();
    let creds = parts.next().unwrap_or_default().trim_ascii_start();
    let basic = scheme.eq_ignore_ascii_case(b"basic");
    if !basic && !scheme.eq_ignore_ascii_case(b"signature") {
        return Err(AuthError::UnsupportedScheme);
    }
    if creds.is_empty() {
        return Err(AuthError::Malformed("missing credentials"));
    }
    if basic {
        parse_basic(creds)
    } else {
        parse_signed(creds)
    }
}

fn parse_basic(creds: &[u8]) -> Result<Presented, AuthError> {
    let decoded = STANDARD
        .decode(creds)
        .map_err(|_| AuthError::Malformed("basic credentials are not valid base64"))?;
    // FromUtf8Error would carry the decoded bytes (the secret); it is dropped.
    let decoded = String::from_utf8(decoded)
        .map_err(|_| AuthError::Malformed("basic credentials are not valid UTF-8"))?;
    let (client_id, secret) = decoded
        .split_once(':')
        .ok_or(AuthError::Malformed("basic credentials have no colon"))?;
    if client_id.is_empty() {
        return Err(AuthError::Malformed("empty client id"));
    }
    if secret.is_empty() {
        return Err(AuthError::Malformed("empty client secret"));
    }
    Ok(Presented::Basic {
        client_id: client_id.to_owned(),
        secret: secret.to_owned(),
    })
}

fn parse_signed(creds: &[u8]) -> Result<Presented, AuthError> {
    let creds = std::str::from_utf8(creds)
        .map_err(|_| AuthError::Malformed("signature credentials are not valid UTF-8"))?;
    let (client_id, signature) = creds
        .rsplit_once(':')
        .ok_or(AuthError::Malformed("signature credentials have no colon"))?;
    if client_id.is_empty() {
        return Err(AuthError::Malformed("empty client id"));
    }
    if signature.is_empty() {
        return Err(AuthError::Malformed("empty signature"));
    }
    Ok(Presented::Signed {
        client_id: client_id.to_owned(),
        signature: signature.to_owned(),
    })
}

/// Parses a signed-request `Date` (`2016-02-26 19:08:44`, UTC) to unix seconds.
///
/// Only the canonical rendering is accepted: chrono alone would also take
/// unpadded fields (`2016-2-26 9:8:44`), so the value must round-trip
/// exactly. RFC 1123, ISO 8601 with `T`/`Z`, offsets and fractions all fail.
pub fn parse_signed_date(date: &str) -> Option<i64> {
    let parsed = NaiveDateTime::parse_from_str(date, SIGNED_DATE_FORMAT).ok()?;
    // chrono reads `:60` as a leap second in any minute and prints it back
    // unchanged, so the round trip alone would let two strings name one second.
    if parsed.and_utc().timestamp_subsec_nanos() != 0 {
        return None;
    }
    if parsed.format(SIGNED_DATE_FORMAT).to_string() != date {
        return None;
    }
    Some(parsed.and_utc().timestamp())
}

/// Whether `date_secs` is within `max_skew_secs` of `now_secs`, either way.
pub fn within_skew(date_secs: i64, now_secs: i64, max_skew_secs: u64) -> bool {
    date_secs.abs_diff(now_secs) <= max_skew_secs
}

fn signed_params<'p>(
    params: &'p [(&'p str, &'p str)],
) -> impl Iterator<Item = &'p (&'p str, &'p str)> + 'p {
    params.iter().filter(|(k, _)| !UNSIGNED_PARAMS.contains(k))
}

/// Builds the janrain-signed string to sign (capture-api-notes §1.1):
/// `endpoint\ndate\n`, then the remaining `k=v` strings sorted as whole
/// strings (byte order of UTF-8 = code-point order) each followed by `\n`.
/// With nothing left to sign, `blank_line_when_empty` adds the extra `\n` of
/// the documentation snippet. Values are used verbatim, newlines included.
pub fn string_to_sign(
    endpoint: &str,
    date: &str,
    params: &[(&str, &str)],
    blank_line_when_empty: bool,
) -> String {
    let mut pairs: Vec<String> = signed_params(params)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    pairs.sort_unstable();

    let mut out = String::with_capacity(
        endpoint.len() + date.len() + 3 + pairs.iter().map(|p| p.len() + 1).sum::<usize>(),
    );
    out.push_str(endpoint);
    out.push('\n');
    out.push_str(date);
    out.push('\n');
    if pairs.is_empty() {
        if blank_line_when_empty {
            out.push('\n');
        }
    } else {
        for p in &pairs {
            out.push_str(p);
            out.push('\n');
        }
    }
    out
}

fn new_mac(secret: &[u8]) -> Option<HmacSha1> {
    // HMAC takes keys of any length, so this is never None in practice; the
    // Option only avoids an unwrap.
    HmacSha1::new_from_slice(secret).ok()
}

/// `base64(HMAC-SHA1(secret, string_to_sign))`, standard padded alphabet.
pub fn sign(secret: &[u8], string_to_sign: &str) -> String {
    let Some(mut mac) = new_mac(secret) else {
        // Unreachable (see `new_mac`); an empty signature never verifies.
        return String::new();
    };
    mac.update(string_to_sign.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

fn mac_matches(secret: &[u8], message: &str, presented: &[u8]) -> bool {
    let Some(mut mac) = new_mac(secret) else {
        return false;
    };
    mac.update(message.as_bytes());
    // Constant-time comparison of the full 20-byte tag.
    mac.verify_slice(presented).is_ok()
}

/// Verifies a janrain-signed request.
///
/// Besides the HMAC check this refuses, fail-closed, inputs whose signed
/// string would be ambiguous: a `date` that is not exactly
/// [`SIGNED_DATE_FORMAT`], an endpoint containing `\n`, and signed keys that
/// are empty, contain `=` or `\n`, or repeat (the reference client signs a
/// dict, so it cannot produce duplicates, and the upstream's choice between
/// them is unknown). With no signed params, both the library form and the
/// documentation form of the string are accepted.
pub fn verify_signature(
    secret: &[u8],
    endpoint: &str,
    date: &str,
    params: &[(&str, &str)],
    presented_sig: &str,
) -> bool {
    let Ok(presented) = STANDARD.decode(presented_sig) else {
        return false;
    };
    if endpoint.contains('\n') || parse_signed_date(date).is_none() {
        return false;
    }
    let mut keys: Vec<&str> = signed_params(params).map(|(k, _)| *k).collect();
    if keys
        .iter()
        .any(|k| k.is_empty() || k.contains('=') || k.contains('\n'))
    {
        return false;
    }
    keys.sort_unstable();
    if keys.windows(2).any(|w| matches!(w, [a, b] if a == b)) {
        return false;
    }

    let library_form = string_to_sign(endpoint, date, params, false);
    let mut ok = mac_matches(secret, &library_form, &presented);
    if keys.is_empty() {
        let doc_form = string_to_sign(endpoint, date, params, true);
        // Non-short-circuit so timing does not reveal which form matched.
        ok |= mac_matches(secret, &doc_form, &presented);
    }
    ok
}

/// Constant-time secret comparison that also hides both lengths: equal-size
/// SHA-256 digests are compared instead of the raw bytes.
pub fn secrets_equal(presented: &[u8], stored: &[u8]) -> bool {
    let a = Sha256::digest(presented);
    let b = Sha256::digest(stored);
    a.as_slice().ct_eq(b.as_slice()).into()
}

fn random_token() -> String {
    // `choose` samples uniformly (rejection sampling), so no modulo bias.
    let mut rng = OsRng;
    (0..TOKEN_LEN)
        .filter_map(|_| TOKEN_ALPHABET.choose(&mut rng))
        .map(|&b| char::from(b))
        .collect()
}

/// A new client secret: 32 chars of `[a-z0-9]` from the OS CSPRNG (~165 bits).
pub fn generate_secret() -> String {
    random_token()
}

/// A new client id: 32 chars of `[a-z0-9]` from the OS CSPRNG.
pub fn generate_client_id() -> String {
    random_token()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TS: &str = "2000-01-01 01:01:01";

    fn b64(s: &str) -> String {
        STANDARD.encode(s)
    }

    fn basic(value: &str) -> Result<Presented, AuthError> {
        parse_authorization(value.as_bytes())
    }

    // --- parse_authorization ----------------------------------------------

    #[test]
    fn basic_splits_at_first_colon() {
        let p = basic(&format!("Basic {}", b64("myclient:se:cr:et"))).unwrap();
        assert_eq!(
            p,
            Presented::Basic {
                client_id: "myclient".into(),
                secret: "se:cr:et".into()
            }
        );
        assert_eq!(p.client_id(), "myclient");
    }

    #[test]
    fn scheme_is_case_insensitive_and_whitespace_tolerant() {
        for scheme in ["basic", "BASIC", "bAsIc"] {
            let p = basic(&format!("  {scheme} \t {}  ", b64("id:pw"))).unwrap();
            assert!(matches!(p, Presented::Basic { .. }), "{scheme}");
        }
        for scheme in ["signature", "SIGNATURE", "Signature"] {
            let p = basic(&format!("{scheme} foo:abc=")).unwrap();
            assert!(matches!(p, Presented::Signed { .. }), "{scheme}");
        }
    }

    #[test]
    fn basic_errors() {
        assert_eq!(
            basic(&format!("Basic {}", b64("nocolon"))),
            Err(AuthError::Malformed("basic credentials have no colon"))
        );
        assert_eq!(
            basic("Basic !!!notbase64"),
            Err(AuthError::Malformed(
                "basic credentials are not valid base64"
            ))
        );
        // Unpadded and non-canonical base64 are refused.
        assert!(basic("Basic aWQ6cHc").is_err());
        assert!(basic("Basic aWQ6cHd=").is_err());
        let not_utf8 = STANDARD.encode(b"id:\xff\xfe");
        assert_eq!(
            basic(&format!("Basic {not_utf8}")),
            Err(AuthError::Malformed(
                "basic credentials are not valid UTF-8"
            ))
        );
        assert_eq!(
            basic("Basic"),
            Err(AuthError::Malformed("missing credentials"))
        );
        assert_eq!(
            basic("Basic   "),
            Err(AuthError::Malformed("missing credentials"))
        );
        assert_eq!(
            basic(&format!("Basic {}", b64(":pw"))),
            Err(AuthError::Malformed("empty client id"))
        );
        assert_eq!(
            basic(&format!("Basic {}", b64("id:"))),
            Err(AuthError::Malformed("empty client secret"))
        );
        assert!(basic(&format!("Basic {} extra", b64("id:pw"))).is_err());
    }

    #[test]
    fn basic_unicode_and_non_ascii_header() {
        let p = basic(&format!("Basic {}", b64("clïent:päss"))).unwrap();
        assert_eq!(
            p,
            Presented::Basic {
                client_id: "clïent".into(),
                secret: "päss".into()
            }
        );
        assert!(parse_authorization(b"Basic \xff\xff").is_err());
    }

    #[test]
    fn signature_splits_at_last_colon() {
        let p = basic("Signature foo:G3N5RxCVc0d6rDLmBRGvcg2hCVY=").unwrap();
        assert_eq!(
            p,
            Presented::Signed {
                client_id: "foo".into(),
                signature: "G3N5RxCVc0d6rDLmBRGvcg2hCVY=".into()
            }
        );
        let p = basic("Signature ünï:cø:de:abc+/==").unwrap();
        assert_eq!(
            p,
            Presented::Signed {
                client_id: "ünï:cø:de".into(),
                signature: "abc+/==".into()
            }
        );
    }

    #[test]
    fn signature_errors() {
        assert_eq!(
            basic("Signature foo"),
            Err(AuthError::Malformed("signature credentials have no colon"))
        );
        assert_eq!(
            basic("Signature :abc"),
            Err(AuthError::Malformed("empty client id"))
        );
        assert_eq!(
            basic("Signature foo:"),
            Err(AuthError::Malformed("empty signature"))
        );
        assert_eq!(
            parse_authorization(b"Signature f\xffo:abc"),
            Err(AuthError::Malformed(
                "signature credentials are not valid UTF-8"
            ))
        );
    }

    #[test]
    fn other_schemes_are_unsupported() {
        for v in [
            "Bearer abc",
            "OAuth tok",
            "Digest x",
            "",
            "   ",
            "Basicfoo",
            "Signaturex a:b",
        ] {
            assert_eq!(basic(v), Err(AuthError::UnsupportedScheme), "{v:?}");
        }
        assert_eq!(
            parse_authorization(b"B\xffsic abc"),
            Err(AuthError::UnsupportedScheme)
        );
    }

    #[test]
    fn secrets_never_in_errors_or_debug() {
        let secret = "s3cr3t-VALUE";
        let p = basic(&format!("Basic {}", b64(&format!("id:{secret}")))).unwrap();
        let dbg = format!("{p:?}");
        assert!(!dbg.contains(secret), "{dbg}");
        assert!(dbg.contains("id"));
        let s = basic("Signature id:SIGVALUE=").unwrap();
        assert!(!format!("{s:?}").contains("SIGVALUE"));
        // Every failure path for a header containing the secret.
        let enc = b64(secret);
        for v in [
            format!("Basic {enc}"),
            format!("Basic {secret}"),
            format!("Signature {secret}"),
            format!("Bearer {secret}"),
        ] {
            let e = basic(&v).unwrap_err();
            assert!(!e.to_string().contains(secret));
            assert!(!format!("{e:?}").contains(secret));
        }
    }

    // --- dates and skew -----------------------------------------------------

    #[test]
    fn signed_date_parses_strict_format() {
        assert_eq!(
            parse_signed_date("2016-02-26 19:08:44"),
            Some(1_456_513_724)
        );
        assert_eq!(parse_signed_date(TS), Some(946_688_461));
        assert_eq!(parse_signed_date("1970-01-01 00:00:00"), Some(0));
    }

    #[test]
    fn signed_date_rejects_other_formats() {
        for bad in [
            "Fri, 26 Feb 2016 19:08:44 GMT",
            "2016-02-26T19:08:44",
            "2016-02-26T19:08:44Z",
            "2016-02-26 19:08:44Z",
            "2016-02-26 19:08:44.123",
            "2016-02-26 19:08:44+00:00",
            "2016-02-26 19:08",
            "2016-02-26",
            "2016-2-26 19:08:44",
            "2016-02-26 9:08:44",
            "2016-02-26  19:08:44",
            " 2016-02-26 19:08:44",
            "2016-02-26 19:08:44 ",
            "+2016-02-26 19:08:44",
            "2016-02-30 19:08:44",
            "2016-02-26 24:00:00",
            "",
        ] {
            assert_eq!(parse_signed_date(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn skew_is_symmetric_and_inclusive() {
        assert!(within_skew(1000, 1000, 0));
        assert!(within_skew(700, 1000, 300));
        assert!(within_skew(1300, 1000, 300));
        assert!(!within_skew(699, 1000, 300));
        assert!(!within_skew(1301, 1000, 300));
        assert!(!within_skew(i64::MIN, i64::MAX, u64::MAX - 1));
        assert!(within_skew(i64::MIN, i64::MAX, u64::MAX));
    }

    // --- string to sign and vectors ------------------------------------------

    const VECTOR_PARAMS: [(&str, &str); 3] = [
        ("param1", "this is a string"),
        ("param2", "10"),
        ("param3", "one=1\ntwo=2,three=3"),
    ];

    #[test]
    fn official_vector() {
        let sts = string_to_sign("/entity", TS, &VECTOR_PARAMS, false);
        assert_eq!(
            sts,
            "/entity\n2000-01-01 01:01:01\nparam1=this is a string\nparam2=10\n\
             param3=one=1\ntwo=2,three=3\n"
        );
        // blank_line_when_empty is irrelevant when params remain.
        assert_eq!(sts, string_to_sign("/entity", TS, &VECTOR_PARAMS, true));
        assert_eq!(sign(b"bar", &sts), "G3N5RxCVc0d6rDLmBRGvcg2hCVY=");
        assert!(verify_signature(
            b"bar",
            "/entity",
            TS,
            &VECTOR_PARAMS,
            "G3N5RxCVc0d6rDLmBRGvcg2hCVY="
        ));
    }

    #[test]
    fn official_vector_ignores_credentials_and_order() {
        let params = [
            ("param3", "one=1\ntwo=2,three=3"),
            ("client_id", "foo"),
            ("access_token", "tok"),
            ("param1", "this is a string"),
            ("client_secret", "bar"),
            ("param2", "10"),
        ];
        assert!(verify_signature(
            b"bar",
            "/entity",
            TS,
            &params,
            "G3N5RxCVc0d6rDLmBRGvcg2hCVY="
        ));
    }

    #[test]
    fn count_vectors_without_params() {
        assert_eq!(
            string_to_sign("/entity.count", TS, &[], false),
            "/entity.count\n2000-01-01 01:01:01\n"
        );
        assert_eq!(
            string_to_sign("/entity.count", TS, &[], true),
            "/entity.count\n2000-01-01 01:01:01\n\n"
        );
        assert_eq!(
            sign(b"bar", &string_to_sign("/entity.count", TS, &[], false)),
            "H7DWUWHhrkdYPkdd4Nlwe2wB75s="
        );
        assert_eq!(
            sign(b"bar", &string_to_sign("/entity.count", TS, &[], true)),
            "ZfvzYf/0iUMmQlDJHBiZvh47ssc="
        );
        for sig in [
            "H7DWUWHhrkdYPkdd4Nlwe2wB75s=",
            "ZfvzYf/0iUMmQlDJHBiZvh47ssc=",
        ] {
            assert!(
                verify_signature(b"bar", "/entity.count", TS, &[], sig),
                "{sig}"
            );
            // Only unsigned params: still "no params remain".
            assert!(verify_signature(
                b"bar",
                "/entity.count",
                TS,
                &[("client_id", "foo")],
                sig
            ));
        }
    }

    #[test]
    fn count_vector_with_type_name() {
        let p = [("type_name", "user")];
        assert_eq!(
            sign(b"bar", &string_to_sign("/entity.count", TS, &p, false)),
            "NqwLkgvv53IvI7RjHB+RN0ym7G0="
        );
        assert!(verify_signature(
            b"bar",
            "/entity.count",
            TS,
            &p,
            "NqwLkgvv53IvI7RjHB+RN0ym7G0="
        ));
        // The blank-line form is only tolerated when nothing is signed.
        let doc_form = format!("/entity.count\n{TS}\ntype_name=user\n\n");
        assert!(!verify_signature(
            b"bar",
            "/entity.count",
            TS,
            &p,
            &sign(b"bar", &doc_form)
        ));
    }

    #[test]
    fn sort_is_by_whole_kv_string() {
        // Key order would give a, a1; string order puts `a1=` first ('1' < '=').
        let sts = string_to_sign("/e", TS, &[("a", "x"), ("a1", "y"), ("B", "z")], false);
        assert_eq!(sts, format!("/e\n{TS}\nB=z\na1=y\na=x\n"));
        // Code-point order for non-ASCII.
        let sts = string_to_sign("/e", TS, &[("é", "1"), ("z", "2")], false);
        assert_eq!(sts, format!("/e\n{TS}\nz=2\né=1\n"));
    }

    #[test]
    fn verify_rejects_wrong_inputs() {
        let good = "G3N5RxCVc0d6rDLmBRGvcg2hCVY=";
        assert!(!verify_signature(
            b"baz",
            "/entity",
            TS,
            &VECTOR_PARAMS,
            good
        ));
        assert!(!verify_signature(
            b"bar",
            "/entity.find",
            TS,
            &VECTOR_PARAMS,
            good
        ));
        assert!(!verify_signature(
            b"bar",
            "/entity",
            "2000-01-01 01:01:02",
            &VECTOR_PARAMS,
            good
        ));
        assert!(!verify_signature(
            b"bar",
            "/entity",
            TS,
            &VECTOR_PARAMS[..2],
            good
        ));
        assert!(!verify_signature(
            b"bar",
            "/entity",
            TS,
            &VECTOR_PARAMS,
            "not base64!"
        ));
        assert!(!verify_signature(b"bar", "/entity", TS, &VECTOR_PARAMS, ""));
        // Truncated tag.
        assert!(!verify_signature(
            b"bar",
            "/entity",
            TS,
            &VECTOR_PARAMS,
            "G3N5RxCVc0d6rDLm"
        ));
        // Unpadded.
        assert!(!verify_signature(
            b"bar",
            "/entity",
            TS,
            &VECTOR_PARAMS,
            "G3N5RxCVc0d6rDLmBRGvcg2hCVY"
        ));
    }

    #[test]
    fn verify_refuses_ambiguous_material() {
        // A shifted `=` between key and value signs the same bytes.
        let shifted = [
            ("param1=this is", "a string"),
            ("param2", "10"),
            ("param3", "one=1\ntwo=2,three=3"),
        ];
        let sig = sign(b"bar", &string_to_sign("/entity", TS, &shifted, false));
        assert!(!verify_signature(b"bar", "/entity", TS, &shifted, &sig));

        let dup = [("a", "1"), ("a", "2")];
        let sig = sign(b"bar", &string_to_sign("/e", TS, &dup, false));
        assert!(!verify_signature(b"bar", "/e", TS, &dup, &sig));

        let empty_key = [("", "1")];
        let sig = sign(b"bar", &string_to_sign("/e", TS, &empty_key, false));
        assert!(!verify_signature(b"bar", "/e", TS, &empty_key, &sig));

        let sig = sign(b"bar", &string_to_sign("/e\nx", TS, &[], false));
        assert!(!verify_signature(b"bar", "/e\nx", TS, &[], &sig));

        let bad_date = "2000-01-01T01:01:01";
        let sig = sign(b"bar", &string_to_sign("/e", bad_date, &[], false));
        assert!(!verify_signature(b"bar", "/e", bad_date, &[], &sig));
    }

    // --- secrets -----------------------------------------------------------------

    #[test]
    fn secrets_equal_cases() {
        assert!(secrets_equal(b"abc", b"abc"));
        assert!(!secrets_equal(b"abc", b"abd"));
        assert!(!secrets_equal(b"abc", b"abcd"));
        assert!(!secrets_equal(b"", b"abc"));
        assert!(secrets_equal(b"", b""));
    }

    #[test]
    fn generated_tokens_are_well_formed_and_distinct() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            for t in [generate_secret(), generate_client_id()] {
                assert_eq!(t.len(), 32);
                assert!(
                    t.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
                    "{t}"
                );
                assert!(seen.insert(t));
            }
        }
        // All 36 symbols show up over 12,800 draws (missing one: p < 1e-150).
        let all: std::collections::HashSet<u8> = seen.iter().flat_map(|t| t.bytes()).collect();
        assert_eq!(all.len(), 36);
    }

    #[test]
    fn leap_second_spelling_is_refused() {
        assert_eq!(parse_signed_date("2016-02-26 12:34:60"), None);
        assert!(parse_signed_date("2016-02-26 12:34:59").is_some());
    }
}
