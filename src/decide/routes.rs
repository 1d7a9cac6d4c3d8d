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
            p.extend(["attribute_name", "attributes"]);
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
            p.extend(["attributes", "attribute_name", "value", "include_record"]);
        }
        "/entity.delete" => {
            p.extend(SELECTOR);
            p.push("attribute_name");
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
                    ParamNames::new(list.iter().map(String::as_str).chain(CREDENTIALS))
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
            });
        }
        Ok(RouteTable { routes })
    }

    pub fn find(&self, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.path == path)
    }

    /// Every parameter name some route forwards, and every name the
    /// built-in routes take (the names the gateway checks stay known when
    /// settings replace the table).
    pub fn known_params(&self) -> ParamNames {
        let builtin = ParamNames::new(
            builtin()
                .iter()
                .filter_map(|d| builtin_params(&d.path))
                .flatten(),
        );
        ParamNames::union(self.routes.iter().map(|r| &r.params).chain([&builtin]))
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
