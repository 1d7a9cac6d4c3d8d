//! Who is calling: the credentials presented (Basic, `janrain-signed`, or
//! `client_id`/`client_secret` parameters) checked against one snapshot.
//! Unknown ids cost the same as wrong secrets.

use crate::decide::credentials::{self, Presented};
use crate::decide::permit::{Facts, Rules};
use crate::errors::{ApiError, DenyReason};
use crate::policy::{Client, Snapshot};
use std::sync::Arc;

/// Parameters that carry credentials: checked here, never forwarded.
pub const CREDENTIAL_PARAMS: [&str; 2] = ["client_id", "client_secret"];

/// A secret to compare against when the client id is unknown, so that an
/// unknown id costs the same time as a wrong secret.
const DUMMY_SECRET: &[u8] = b"recordgate-no-such-client-secret";

/// The client whose credentials the call presents: the one `Authorization`
/// header, or else the `client_id`/`client_secret` parameters.
pub fn authenticate<'s>(
    snap: &'s Snapshot,
    rules: &Rules,
    facts: &Facts<'_>,
    authorization: Option<&[u8]>,
) -> Result<&'s Client, ApiError> {
    let params = facts.params;
    if let Some(header) = authorization {
        return match credentials::parse_authorization(header) {
            Ok(Presented::Basic { client_id, secret }) => {
                check_secret(snap, &client_id, secret.as_bytes(), facts.now_secs)
            }
            Ok(Presented::Signed {
                client_id,
                signature,
            }) => check_signature(snap, rules, facts, &client_id, &signature),
            Err(credentials::AuthError::UnsupportedScheme) => {
                Err(ApiError::unsupported_auth_method())
            }
            Err(_) => Err(ApiError::invalid_credentials()),
        };
    }
    match (params.get("client_id"), params.get("client_secret")) {
        (Some(id), Some(secret)) => check_secret(snap, id, secret.as_bytes(), facts.now_secs),
        (Some(_), None) => {
            Err(ApiError::missing_argument("client_secret").with_reason(DenyReason::Credentials))
        }
        _ => Err(ApiError::missing_credentials()),
    }
}

/// Before the body: the client a header names, with a Basic secret
/// checked; a signed request's client only looked up.
pub(crate) fn header_client<'s>(
    snap: &'s Snapshot,
    header: &[u8],
    now_secs: i64,
) -> Result<&'s Client, ApiError> {
    match credentials::parse_authorization(header) {
        Ok(Presented::Basic { client_id, secret }) => {
            check_secret(snap, &client_id, secret.as_bytes(), now_secs)
        }
        Ok(Presented::Signed { client_id, .. }) => snap
            .clients
            .get(client_id.as_str())
            .map(Arc::as_ref)
            .ok_or_else(ApiError::invalid_credentials),
        Err(credentials::AuthError::UnsupportedScheme) => Err(ApiError::unsupported_auth_method()),
        Err(_) => Err(ApiError::invalid_credentials()),
    }
}

fn check_secret<'s>(
    snap: &'s Snapshot,
    client_id: &str,
    presented: &[u8],
    now_secs: i64,
) -> Result<&'s Client, ApiError> {
    match snap.clients.get(client_id) {
        Some(c) if credentials::secrets_equal(presented, c.secret()) => Ok(c),
        Some(c)
            if c.previous_secret(now_secs)
                .is_some_and(|old| credentials::secrets_equal(presented, old)) =>
        {
            Ok(c)
        }
        Some(_) => Err(ApiError::invalid_credentials()),
        None => {
            let _ = credentials::secrets_equal(presented, DUMMY_SECRET);
            Err(ApiError::invalid_credentials())
        }
    }
}

fn check_signature<'s>(
    snap: &'s Snapshot,
    rules: &Rules,
    facts: &Facts<'_>,
    client_id: &str,
    signature: &str,
) -> Result<&'s Client, ApiError> {
    let date = facts
        .headers
        .get(http::header::DATE)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::missing_argument("Date").with_reason(DenyReason::Credentials))?;
    let signed_at = credentials::parse_signed_date(date).ok_or_else(|| {
        ApiError::invalid_argument("Date", "expected UTC time as YYYY-MM-DD HH:MM:SS")
            .with_reason(DenyReason::Credentials)
    })?;
    if !credentials::within_skew(signed_at, facts.now_secs, rules.max_skew_secs) {
        return Err(ApiError::invalid_credentials());
    }
    let pairs: Vec<(&str, &str)> = facts.params.pairs().collect();
    let secret = match snap.clients.get(client_id) {
        Some(c) => c.secret(),
        None => DUMMY_SECRET,
    };
    let ok = credentials::verify_signature(secret, facts.path, date, &pairs, signature);
    match snap.clients.get(client_id) {
        Some(c) if ok => Ok(c),
        _ => Err(ApiError::invalid_credentials()),
    }
}
