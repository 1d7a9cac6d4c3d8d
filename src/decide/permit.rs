//! The decision's inputs and outputs: the request's facts, the settings it
//! applies, what is being called, and the typed permit or refusal.

use std::net::IpAddr;

use http::HeaderMap;

use crate::cidr::CidrSet;
use crate::errors::ApiError;
use crate::params::Params;
use crate::policy::{Client, FeatureSet};
use crate::rate::RateLimit;
use crate::schema::AttrPath;

use super::grants::Grants;
use super::routes::{Issuer, Route};
use super::token::Issuance;

/// The request's facts, as the intake stage read them.
pub struct Facts<'r> {
    /// The request's headers: `Authorization`, `Date` and `X-Forwarded-For`
    /// are read from them.
    pub headers: &'r HeaderMap,
    /// The TCP peer; `None` (a Unix socket, a subrequest) is refused.
    pub peer: Option<IpAddr>,
    /// The path as sent, which a signature covers.
    pub path: &'r str,
    pub params: &'r Params,
    pub now_secs: i64,
    /// The subject commonName of the client certificate the connection's
    /// TLS handshake verified (mutual TLS); `None` on a plain connection or
    /// a TLS one without a client certificate.
    pub tls_client_subject: Option<&'r str>,
}

/// What the decision needs from the settings, fixed at start.
pub struct Rules {
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: CidrSet,
    pub max_skew_secs: u64,
    /// The limit of clients without their own (`rate_limit_default`);
    /// `None`: they are not limited.
    pub rate_limit_default: Option<RateLimit>,
    /// The bindings of user tokens (`tokens:`); `None`: tokens are not
    /// taken.
    pub tokens: Option<std::sync::Arc<crate::tokens::TokenStore>>,
}

/// What is being called.
#[derive(Clone, Copy)]
pub enum Target<'t> {
    /// A record route, forwarded upstream.
    Route(&'t Route),
    /// A Capture management endpoint: any one of `needs_any` grants it.
    Management {
        endpoint: &'static str,
        needs_any: FeatureSet,
    },
    /// The CONNECT Roles API, whose tenant roles are checked per operation
    /// against the same snapshot (`management::roles`).
    Roles,
    /// A token endpoint, forwarded; the tokens its answer carries are
    /// bound to the client the permit names.
    Issue { route: &'t Route, issuer: Issuer },
}

/// The proof that a call was decided: the caller, the address the allow-list
/// was checked against, and for a record route what it may touch.
pub struct Permit<'s> {
    pub client: &'s Client,
    pub ip: IpAddr,
    pub route: Option<RoutePermit<'s>>,
    /// The call was made with a user token of `client`'s.
    pub token: Option<TokenUse>,
    /// A token endpoint call: for whom its tokens are bound.
    pub issuance: Option<Issuance<'s>>,
}

/// How a token call presented its token, and whose record it reaches.
pub struct TokenUse {
    /// In `Authorization: OAuth` (forwarded there); else as the
    /// `access_token` parameter (forwarded as one).
    pub in_header: bool,
    pub uuid: Option<std::sync::Arc<str>>,
}

/// What a record-route call may touch.
pub struct RoutePermit<'s> {
    pub route: &'s Route,
    pub grants: Grants<'s>,
    /// The `attribute_name` the call addresses, checked against the grants.
    pub attribute_name: Option<AttrPath>,
}

/// A refused call: the error to answer, and the caller if it was identified
/// before the refusal (for the access log and per-client metrics).
#[derive(Debug)]
pub struct Refusal {
    pub client_id: Option<String>,
    /// Boxed: a refusal is the rare path, and the permit's `Result` stays
    /// small on the common one.
    pub error: Box<ApiError>,
}

impl From<ApiError> for Refusal {
    fn from(error: ApiError) -> Self {
        Refusal {
            client_id: None,
            error: Box::new(error),
        }
    }
}
