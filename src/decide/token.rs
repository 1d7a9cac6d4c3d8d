//! End-user tokens on the decision path: a call made on a user's behalf
//! (`Authorization: OAuth <token>` or an `access_token` parameter) is
//! decided as the call of the client the token was issued for, found in the
//! gateway's bindings (`crate::tokens`); and a call to a token endpoint
//! learns here for which client its tokens will be bound.
//!
//! Every refusal of a token says the same (`414 access_token_expired`):
//! whether it was unknown, expired or revoked is for the operator
//! (`recordgate_token_refusals_total{reason}`), not the caller.

use std::sync::Arc;

use subtle::ConstantTimeEq;

use crate::decide::routes::{Issuer, Route};
use crate::errors::ApiError;
use crate::ops::metrics;
use crate::params::Params;
use crate::policy::{Client, Feature, Snapshot};
use crate::tokens::{TokenKind, TokenStore};

/// A user token as the call presents it.
pub struct Presented<'r> {
    pub token: &'r [u8],
    /// In `Authorization: OAuth`; else the `access_token` parameter.
    pub in_header: bool,
}

/// The scheme of a user token in `Authorization` (capture-api-notes §1.3).
const SCHEME: &[u8] = b"oauth";

/// The user token the call presents, if any. A call presents one
/// credential: a token in both places, or a token next to client
/// credentials, is refused rather than guessed at.
pub fn presented<'r>(
    authorization: Option<&'r [u8]>,
    params: &'r Params,
) -> Result<Option<Presented<'r>>, ApiError> {
    let header = authorization.and_then(oauth_token);
    let param = params.get("access_token").map(str::as_bytes);
    let found = match (header, param) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid_argument(
                "access_token",
                "a token was given both in the Authorization header and as a parameter",
            )
            .with_reason(crate::errors::DenyReason::Credentials))
        }
        (Some(token), None) => Presented {
            token,
            in_header: true,
        },
        (None, Some(token)) => Presented {
            token,
            in_header: false,
        },
        (None, None) => return Ok(None),
    };
    let other_header = !found.in_header && authorization.is_some();
    if other_header || params.get("client_id").is_some() || params.get("client_secret").is_some() {
        return Err(ApiError::invalid_argument(
            "access_token",
            "a call carries a user token or client credentials, not both",
        )
        .with_reason(crate::errors::DenyReason::Credentials));
    }
    if found.token.is_empty() {
        return Err(ApiError::token_expired());
    }
    Ok(Some(found))
}

/// `OAuth <token>`: the token, if the header is of that scheme.
pub(crate) fn oauth_token(header: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = header.split_at_checked(SCHEME.len())?;
    if !scheme.eq_ignore_ascii_case(SCHEME) || !rest.starts_with(b" ") {
        return None;
    }
    let token = rest.trim_ascii();
    // A token is one visible word; anything else is not one we issued.
    Some(token).filter(|t| t.iter().all(|b| b.is_ascii_graphic()))
}

/// The caller a token stands for.
pub struct TokenCaller<'s> {
    pub client: &'s Client,
    pub uuid: Option<Arc<str>>,
}

fn refused(reason: &'static str) -> ApiError {
    metrics::TOKEN_REFUSALS.inc(&[reason]);
    ApiError::token_expired()
}

/// The client whose access token this is: bound, not expired, and issued
/// while the client had the secret it has now.
pub fn authenticate<'s>(
    snap: &'s Snapshot,
    store: &TokenStore,
    token: &[u8],
    now_secs: i64,
) -> Result<TokenCaller<'s>, ApiError> {
    store.lookup(token, |binding| {
        let b = match binding {
            Some(b) if b.kind == TokenKind::Access => b,
            // A refresh token is only ever exchanged at /oauth/token.
            _ => return Err(refused("unknown")),
        };
        if b.expires_at <= now_secs {
            return Err(refused("expired"));
        }
        let client = snap
            .clients
            .get(&*b.client_id)
            .filter(|c| bool::from(store.client_tag(c).ct_eq(&b.client_tag)))
            .ok_or_else(|| refused("revoked"))?;
        Ok(TokenCaller {
            client,
            uuid: b.uuid.clone(),
        })
    })
}

/// A token call on a route that does not take tokens, or by a client
/// without a feature that allows token use.
pub fn check_use(client: &Client, route: &Route) -> Result<(), ApiError> {
    if !route.takes_token {
        metrics::TOKEN_REFUSALS.inc(&["not_allowed"]);
        return Err(ApiError::token_not_accepted(&route.path));
    }
    if client.features.intersects(route.token_features) {
        Ok(())
    } else {
        metrics::TOKEN_REFUSALS.inc(&["not_allowed"]);
        Err(ApiError::feature_denied(&route.path))
    }
}

/// For whom a token endpoint's tokens are bound.
pub struct Issuance<'s> {
    pub issuer: Issuer,
    /// The client the tokens are issued for: the caller, or the existing
    /// client `for_client_id` names.
    pub holder: &'s Client,
    /// The user's record, where the request names it (the issuer's answer
    /// may name it too, and is preferred).
    pub uuid: Option<Arc<str>>,
}

/// Decides a token endpoint call after its feature check: `for_client_id`
/// must name an existing client, and another client than the caller only
/// for an `owner` or `access_issuer`; a refresh token the gateway bound
/// must be the caller's and in force.
pub fn issuance<'s>(
    snap: &'s Snapshot,
    store: &TokenStore,
    caller: &'s Client,
    issuer: Issuer,
    params: &Params,
    now_secs: i64,
) -> Result<Issuance<'s>, ApiError> {
    let mut holder = caller;
    if let Some(id) = params.get("for_client_id") {
        holder = snap.clients.get(id).ok_or_else(|| {
            ApiError::invalid_argument("for_client_id", "for_client_id is not a valid id")
        })?;
        if holder.id != caller.id
            && !caller.features.contains(Feature::Owner)
            && !caller.features.contains(Feature::AccessIssuer)
        {
            return Err(ApiError::feature_denied("for_client_id"));
        }
    }
    let mut uuid = params
        .get("uuid")
        .map(|u| Arc::from(u.trim().trim_matches('"')));
    if issuer == Issuer::OAuthToken && params.get("grant_type") == Some("refresh_token") {
        let token = params
            .get("refresh_token")
            .ok_or_else(|| ApiError::missing_argument("refresh_token"))?;
        // A refresh token the gateway never saw (issued before it was put
        // inline) is the issuer's to judge; one it bound must match.
        let carried = store.lookup(token.as_bytes(), |binding| match binding {
            None => Ok(None),
            Some(b)
                if b.kind == TokenKind::Refresh
                    && b.expires_at > now_secs
                    && *b.client_id == *caller.id
                    && bool::from(store.client_tag(caller).ct_eq(&b.client_tag)) =>
            {
                Ok(b.uuid.clone())
            }
            Some(_) => Err(refused("revoked")),
        })?;
        if carried.is_some() {
            uuid = carried;
        }
    }
    Ok(Issuance {
        issuer,
        holder,
        uuid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        let body: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        Params::parse_limited(None, Some(body.as_bytes()), 100).unwrap()
    }

    #[test]
    fn the_header_and_the_parameter_are_read_and_never_both() {
        let none = params(&[]);
        let p = presented(Some(b"OAuth abc"), &none).unwrap().unwrap();
        assert_eq!((p.token, p.in_header), (&b"abc"[..], true));
        let p = presented(Some(b"oauth   abc  "), &none).unwrap().unwrap();
        assert_eq!(p.token, b"abc");
        assert!(presented(Some(b"Basic abc"), &none).unwrap().is_none());
        assert!(presented(Some(b"OAuthabc"), &none).unwrap().is_none());
        let with = params(&[("access_token", "t1")]);
        let p = presented(None, &with).unwrap().unwrap();
        assert_eq!((p.token, p.in_header), (&b"t1"[..], false));
        assert!(presented(Some(b"OAuth abc"), &with).is_err());
        assert!(
            presented(Some(b"Basic abc"), &with).is_err(),
            "two credentials"
        );
        let creds = params(&[("access_token", "t1"), ("client_id", "c")]);
        assert!(presented(None, &creds).is_err());
        assert!(presented(Some(b"OAuth a b"), &none).unwrap().is_none());
        assert!(presented(Some(b"OAuth "), &none).is_err());
    }
}
