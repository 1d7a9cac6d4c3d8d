//! The route table: which endpoints the gateway forwards, what features they
//! need, and where the records are in their requests and responses.
//! Paths match exactly, byte for byte: `/entity%2Efind`, `/ENTITY.FIND` and
//! `/entity.find/` are not routes, so nothing reaches the upstream under a
//! spelling the policy was not written for.

pub use crate::config::routes::{Access, RequestRecords, ResponseRecords, RouteDef};
use crate::errors::ApiError;
use crate::params::{ParamNames, UnknownParams};
use crate::policy::{Client, Feature, FeatureSet};

#[derive(Debug, Clone)]
pub struct Route {
    pub path: String,
    pub access: Access,
    pub needs_any: FeatureSet,
    pub request_records: RequestRecords,
    pub response_records: ResponseRecords,
    /// The parameters the route forwards.
    pub params: ParamNames,
    pub unknown_params: UnknownParams,
    /// A user access token may call it (capture-api-notes §1.3).
    pub takes_token: bool,
    /// With a token, the token's client needs any one of these.
    pub token_features: FeatureSet,
}

/// The record routes a user token may call: Capture's own list.
const TOKEN_ROUTES: [&str; 4] = [
    "/entity",
    "/entity.update",
    "/entity.replace",
    "/entity.delete",
];

/// The record selector a token call never forwards: a token reaches only
/// its own user's record, which the issuer finds from the token.
pub const TOKEN_STRIPPED: [&str; 4] = ["id", "uuid", "key_attribute", "key_value"];

/// Features that let a client's users call with a token: the sign-in
/// client's own, and direct access (direct read access for reads).
fn token_features(access: Access) -> FeatureSet {
    match access {
        Access::Read => FeatureSet::of(&[
            Feature::LoginClient,
            Feature::DirectReadAccess,
            Feature::DirectAccess,
            Feature::Owner,
        ]),
        Access::Write => {
            FeatureSet::of(&[Feature::LoginClient, Feature::DirectAccess, Feature::Owner])
        }
    }
}

/// The token endpoints (only when `tokens:` is set): forwarded, and their
/// answers read for the tokens they issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Issuer {
    /// `/oauth/token`: a code or a refresh token exchanged by the client
    /// itself; its credentials go on to the issuer.
    OAuthToken,
    /// `/access/getAccessToken`: a token for a user's record, issued by a
    /// trusted client for itself or (owner, access_issuer) another.
    GetAccessToken,
    /// `/access/getAuthorizationCode`: a code for the OAuth exchange; no
    /// token is issued, so nothing is bound.
    GetAuthorizationCode,
}

impl Issuer {
    pub const ALL: [Issuer; 3] = [
        Issuer::OAuthToken,
        Issuer::GetAccessToken,
        Issuer::GetAuthorizationCode,
    ];

    pub fn path(self) -> &'static str {
        match self {
            Issuer::OAuthToken => "/oauth/token",
            Issuer::GetAccessToken => "/access/getAccessToken",
            Issuer::GetAuthorizationCode => "/access/getAuthorizationCode",
        }
    }

    pub fn of(path: &str) -> Option<Issuer> {
        Issuer::ALL.into_iter().find(|i| i.path() == path)
    }

    /// The endpoint as a route: what it forwards and who may call it
    /// (capture-api-notes §2.3, §4).
    pub fn route(self) -> Route {
        let mut params: Vec<&str> = match self {
            Issuer::OAuthToken => vec!["grant_type", "code", "redirect_uri", "refresh_token"],
            Issuer::GetAccessToken => vec!["type_name", "for_client_id"],
            Issuer::GetAuthorizationCode => vec!["type_name", "for_client_id", "redirect_uri"],
        };
        if self != Issuer::OAuthToken {
            params.extend(["id", "uuid", "key_attribute", "key_value"]);
        }
        params.extend(CREDENTIALS);
        let needs_any = match self {
            // Any client its users sign in with.
            Issuer::OAuthToken => FeatureSet::of(&[
                Feature::LoginClient,
                Feature::DirectReadAccess,
                Feature::DirectAccess,
                Feature::AccessIssuer,
                Feature::Owner,
            ]),
            Issuer::GetAccessToken | Issuer::GetAuthorizationCode => {
                FeatureSet::of(&[Feature::Owner, Feature::AccessIssuer, Feature::DirectAccess])
            }
        };
        Route {
            path: self.path().to_string(),
            access: Access::Write,
            needs_any,
            request_records: RequestRecords::None,
            response_records: ResponseRecords::None,
            params: ParamNames::new(params),
            unknown_params: UnknownParams::Refuse,
            takes_token: false,
            token_features: FeatureSet::empty(),
        }
    }
}

pub struct RouteTable {
    routes: Vec<Route>,
}

/// Parameters that carry credentials: every route takes them (they are
/// checked, then removed before forwarding).
const CREDENTIALS: [&str; 2] = ["client_id", "client_secret"];

/// A record selector (capture-api-notes §2.2) and the timestamp checks.
const SELECTOR: [&str; 6] = [
    "id",
    "uuid",
    "key_attribute",
    "key_value",
    "created",
    "lastUpdated",
];

/// The parameters a built-in route forwards, from Capture's documented
/// parameters (capture-api-notes §2.2). Left out on purpose: `entity_path`
/// (plural elements as entities: responses the filter cannot place) and
/// `password_attribute`/`password_value` (a check against an attribute the
/// caller may not read).
fn builtin_params(path: &str) -> Option<Vec<&'static str>> {
    let mut p: Vec<&'static str> = vec!["type_name"];
    match path {
        "/entity" => {
            p.extend(SELECTOR);
            p.extend(["attribute_name", "attributes", "access_token"]);
        }
        "/entity.find" => p.extend([
            "filter",
            "max_results",
            "first_result",
            "show_total_count",
            "sort_on",
            "attributes",
            "timeout",
        ]),
        "/entity.count" => p.extend(["filter", "timeout"]),
        "/entity.create" => p.extend(["attributes", "include_record"]),
        "/entity.bulkCreate" => p.push("all_attributes"),
        "/entity.update" | "/entity.replace" => {
            p.extend(SELECTOR);
            p.extend([
                "attributes",
                "attribute_name",
                "value",
                "include_record",
                "access_token",
            ]);
        }
        "/entity.delete" => {
            p.extend(SELECTOR);
            p.extend(["attribute_name", "access_token"]);
        }
        _ => return None,
    }
    p.extend(CREDENTIALS);
    Some(p)
}

/// What a configured route without a `params` list forwards.
fn default_params(path: &str, access: Access) -> ParamNames {
    if let Some(p) = builtin_params(path) {
        return ParamNames::new(p);
    }
    let same_access = builtin()
        .into_iter()
        .filter(|d| d.access == access)
        .filter_map(|d| builtin_params(&d.path))
        .flatten()
        .collect::<Vec<_>>();
    ParamNames::new(same_access)
}

fn default_features(access: Access) -> FeatureSet {
    match access {
        Access::Read => FeatureSet::of(&[
            Feature::DirectReadAccess,
            Feature::DirectAccess,
            Feature::Owner,
        ]),
        Access::Write => FeatureSet::of(&[Feature::DirectAccess, Feature::Owner]),
    }
}

fn builtin() -> Vec<RouteDef> {
    use RequestRecords as Q;
    use ResponseRecords as R;
    let r = |path: &str, access, request_records, response_records| RouteDef {
        path: path.to_string(),
        access,
        features: None,
        request_records,
        response_records,
        params: None,
        unknown_params: UnknownParams::Refuse,
    };
    vec![
        r("/entity", Access::Read, Q::None, R::Result),
        r("/entity.find", Access::Read, Q::None, R::Results),
        r("/entity.count", Access::Read, Q::None, R::None),
        r("/entity.create", Access::Write, Q::Attributes, R::Result),
        r(
            "/entity.bulkCreate",
            Access::Write,
            Q::AllAttributes,
            R::None,
        ),
        r(
            "/entity.update",
            Access::Write,
            Q::AttributesOrValue,
            R::Result,
        ),
        r(
            "/entity.replace",
            Access::Write,
            Q::AttributesOrValue,
            R::Result,
        ),
        r("/entity.delete", Access::Write, Q::None, R::None),
    ]
}

impl RouteTable {
    pub fn builtin() -> RouteTable {
        // Built-in definitions use only valid feature names.
        RouteTable::from_defs(&builtin()).unwrap_or(RouteTable { routes: Vec::new() })
    }

    pub fn from_defs(defs: &[RouteDef]) -> Result<RouteTable, String> {
        let mut routes = Vec::with_capacity(defs.len());
        for (i, d) in defs.iter().enumerate() {
            let needs_any = match &d.features {
                None => default_features(d.access),
                Some(list) => {
                    let mut s = FeatureSet::empty();
                    for f in list {
                        s.insert(
                            Feature::parse(f).map_err(|e| format!("routes[{i}].features: {e}"))?,
                        );
                    }
                    s
                }
            };
            let params = match &d.params {
                Some(list) => {
                    if let Some(bad) = list.iter().find(|n| n.is_empty() || !n.is_ascii()) {
                        return Err(format!(
                            "routes[{i}].params: {bad:?} is not a parameter name (ASCII, not empty)"
                        ));
                    }
                    let token = TOKEN_ROUTES
                        .contains(&d.path.as_str())
                        .then_some("access_token");
                    ParamNames::new(
                        list.iter()
                            .map(String::as_str)
                            .chain(CREDENTIALS)
                            .chain(token),
                    )
                }
                None => default_params(&d.path, d.access),
            };
            routes.push(Route {
                path: d.path.clone(),
                access: d.access,
                needs_any,
                request_records: d.request_records,
                response_records: d.response_records,
                params,
                unknown_params: d.unknown_params,
                takes_token: TOKEN_ROUTES.contains(&d.path.as_str()),
                token_features: token_features(d.access),
            });
        }
        Ok(RouteTable { routes })
    }

    pub fn find(&self, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.path == path)
    }

    /// Every parameter name some route forwards, and every name the
    /// built-in routes and the token endpoints take (the names the gateway
    /// checks stay known when settings replace the table).
    pub fn known_params(&self) -> ParamNames {
        let builtin = ParamNames::new(
            builtin()
                .iter()
                .filter_map(|d| builtin_params(&d.path))
                .flatten(),
        );
        let issuers: Vec<Route> = Issuer::ALL.iter().map(|i| i.route()).collect();
        ParamNames::union(
            self.routes
                .iter()
                .chain(&issuers)
                .map(|r| &r.params)
                .chain([&builtin]),
        )
    }
}

/// Any one of the route's features grants it.
pub fn check_feature(client: &Client, route: &Route) -> Result<(), ApiError> {
    if client.features.intersects(route.needs_any) {
        Ok(())
    } else {
        Err(ApiError::feature_denied(&route.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_exactly() {
        let t = RouteTable::builtin();
        assert!(t.find("/entity.find").is_some());
        for p in [
            "/entity%2Efind",
            "//entity.find",
            "/entity.find/",
            "/ENTITY.FIND",
            "/entity.find;x",
        ] {
            assert!(t.find(p).is_none(), "{p}");
        }
    }

    #[test]
    fn reads_and_writes_need_their_features() {
        let t = RouteTable::builtin();
        let read = FeatureSet::of(&[Feature::DirectReadAccess]);
        let write = FeatureSet::of(&[Feature::DirectAccess]);
        let login = FeatureSet::of(&[Feature::LoginClient]);
        let find = t
            .find("/entity.find")
            .map(|r| r.needs_any)
            .unwrap_or_default();
        let update = t
            .find("/entity.update")
            .map(|r| r.needs_any)
            .unwrap_or_default();
        assert!(read.intersects(find));
        assert!(
            write.intersects(find),
            "direct_access implies direct_read_access"
        );
        assert!(!read.intersects(update));
        assert!(write.intersects(update));
        assert!(!login.intersects(find));
    }
}
