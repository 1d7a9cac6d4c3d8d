//! The decision: who is calling, from where, may they call this, and what may
//! they touch. [`authorize`] is the one entry point, for record routes, the
//! Capture management endpoints and the CONNECT Roles API alike: from the
//! request's facts and ONE policy snapshot it returns a typed [`Permit`] or a
//! [`Refusal`] with its reason. The upstream call and a management change can
//! only be made with a permit.
//!
//! Pure functions over the snapshot; the proxy stages only carry bytes in and
//! out. Each step has its own file: credentials ([`authenticate`],
//! [`credentials`]), client address and allow-list ([`client_address`]),
//! the client certificate as a second factor ([`client_certificate`]),
//! routes and features ([`routes`]), grants ([`grants`]), probe refusal
//! ([`probes`]) and the client's rate limit ([`rate`]).

pub mod authenticate;
pub mod client_address;
pub mod client_certificate;
pub mod credentials;
pub mod grants;
pub mod permit;
pub mod probes;
pub mod rate;
pub mod routes;
pub mod token;

use crate::errors::{ApiError, DenyReason};
use crate::policy::Snapshot;
pub use permit::{Facts, Permit, Refusal, RoutePermit, Rules, Target, TokenUse};
use std::sync::Arc;

/// Decides one call against one snapshot.
pub fn authorize<'s>(
    snap: &'s Snapshot,
    rules: &Rules,
    facts: &Facts<'_>,
    target: Target<'s>,
) -> Result<Permit<'s>, Refusal> {
    let authorization = one_authorization(facts.headers)?;
    let (client, token) = match token::presented(authorization, facts.params)? {
        Some(presented) => {
            let store = rules
                .tokens
                .as_deref()
                .ok_or_else(ApiError::unsupported_auth_method)?;
            let caller = token::authenticate(snap, store, presented.token, facts.now_secs)?;
            let used = TokenUse {
                in_header: presented.in_header,
                uuid: caller.uuid,
            };
            (caller.client, Some(used))
        }
        None => (
            authenticate::authenticate(snap, rules, facts, authorization)?,
            None,
        ),
    };
    let refused = |error: ApiError| Refusal {
        client_id: Some(client.id.clone()),
        error: Box::new(error),
    };
    let ip = client_address::resolve(facts.headers, facts.peer, &rules.trusted_proxies)
        .map_err(refused)?;
    client_address::check_allow_list(client, ip).map_err(refused)?;
    client_certificate::check(client, facts.tls_client_subject).map_err(refused)?;
    let mut issuance = None;
    let route = match target {
        Target::Route(route) => {
            let grants = if token.is_some() {
                token::check_use(client, route).map_err(refused)?;
                grants::token_grants(snap, client, facts.params)
            } else {
                routes::check_feature(client, route).map_err(refused)?;
                grants::grants(snap, client, facts.params)
            }
            .map_err(refused)?;
            let attribute_name =
                probes::refuse_probes(route, &grants, facts.params).map_err(refused)?;
            Some(RoutePermit {
                route,
                grants,
                attribute_name,
            })
        }
        // Only record routes take user tokens.
        Target::Management { endpoint, .. } if token.is_some() => {
            return Err(refused(ApiError::token_not_accepted(endpoint)))
        }
        Target::Roles if token.is_some() => {
            return Err(refused(ApiError::token_not_accepted("the Roles API")))
        }
        Target::Issue { route, .. } if token.is_some() => {
            return Err(refused(ApiError::token_not_accepted(&route.path)))
        }
        Target::Management {
            endpoint,
            needs_any,
        } => {
            if !client.features.intersects(needs_any) {
                return Err(refused(ApiError::feature_denied(endpoint)));
            }
            None
        }
        Target::Roles => None,
        Target::Issue { route, issuer } => {
            routes::check_feature(client, route).map_err(refused)?;
            let store = rules
                .tokens
                .as_deref()
                .ok_or_else(|| refused(ApiError::unknown_endpoint(&route.path)))?;
            issuance = Some(
                token::issuance(snap, store, client, issuer, facts.params, facts.now_secs)
                    .map_err(refused)?,
            );
            None
        }
    };
    // Last: a call refused for any other reason uses no budget.
    rate::check(client, rules.rate_limit_default.as_ref()).map_err(refused)?;
    Ok(Permit {
        client,
        ip,
        route,
        token,
        issuance,
    })
}

/// A record-route call's verdict.
pub enum Verdict<'s> {
    /// The decision is enforced.
    Enforced(Result<Permit<'s>, Refusal>),
    /// The caller is in shadow mode (`enforcement: shadow`): `would_be` is
    /// what was decided, reported and not enforced; the call passes as sent.
    Observed {
        pass: Pass<'s>,
        would_be: Result<Permit<'s>, Refusal>,
    },
}

/// The proof that a call may pass as sent: its (claimed) client is in
/// shadow mode. Made only by [`decide_route`]; the forward stage sends a
/// call as sent only with one.
pub struct Pass<'s> {
    pub client: &'s crate::policy::Client,
}

/// Decides a record-route call: [`authorize`], then whether the caller's
/// client is in shadow mode. The client is the authenticated one, or the
/// one a refused caller claimed to be: without the gateway, that caller's
/// call would reach the upstream as it is, and so it does in shadow mode.
pub fn decide_route<'s>(
    snap: &'s Snapshot,
    rules: &Rules,
    facts: &Facts<'_>,
    route: &'s routes::Route,
) -> Verdict<'s> {
    let decided = authorize(snap, rules, facts, Target::Route(route));
    let client = match &decided {
        Ok(permit) => Some(permit.client),
        Err(refusal) => refusal
            .client_id
            .as_deref()
            .and_then(|id| snap.clients.get(id))
            .map(Arc::as_ref),
    };
    match client {
        Some(client) if client.shadow_mode => Verdict::Observed {
            pass: Pass { client },
            would_be: decided,
        },
        _ => Verdict::Enforced(decided),
    }
}

/// The one `Authorization` header, if any. Two credentials would let the
/// gateway and a proxy in front of it (or the upstream) each believe a
/// different one.
fn one_authorization(headers: &http::HeaderMap) -> Result<Option<&[u8]>, ApiError> {
    let mut presented = headers.get_all(http::header::AUTHORIZATION).iter();
    let authorization = presented.next().map(|v| v.as_bytes());
    if presented.next().is_some() {
        return Err(ApiError::invalid_argument(
            "Authorization",
            "more than one Authorization header",
        )
        .with_reason(DenyReason::Credentials));
    }
    Ok(authorization)
}

/// Whether a caller that sent `Expect: 100-continue` may be asked for its
/// body: before the body, only the header's credentials and the address can
/// be judged. Basic credentials are checked in full; a signature covers the
/// body's parameters, so only its client is looked up here (the signature is
/// verified with the body by [`authorize`]); credentials in the body are
/// judged with it. The allow-list is checked whenever the client is known.
pub fn admit_body(
    snap: &Snapshot,
    rules: &Rules,
    headers: &http::HeaderMap,
    peer: Option<std::net::IpAddr>,
    tls_client_subject: Option<&str>,
    now_secs: i64,
) -> Result<(), ApiError> {
    let Some(header) = one_authorization(headers)? else {
        return Ok(());
    };
    let client = match (token::oauth_token(header), rules.tokens.as_deref()) {
        (Some(t), Some(store)) => token::authenticate(snap, store, t, now_secs)?.client,
        _ => authenticate::header_client(snap, header, now_secs)?,
    };
    let ip = client_address::resolve(headers, peer, &rules.trusted_proxies)?;
    client_address::check_allow_list(client, ip)?;
    client_certificate::check(client, tls_client_subject)
}
