//! The route table: which endpoints the gateway forwards, what features they
//! need, and where the records are in their requests and responses.
//! Paths match exactly, byte for byte: `/entity%2Efind`, `/ENTITY.FIND` and
//! `/entity.find/` are not routes, so nothing reaches the upstream under a
//! spelling the policy was not written for.

use serde::Deserialize;

use crate::policy::{Feature, FeatureSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Read,
    Write,
}

/// Where the records to be write-filtered sit in a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestRecords {
    /// No record in the request.
    #[default]
    None,
    /// Form field `attributes` holds a JSON object.
    Attributes,
    /// `attributes` (JSON object), or `value` relative to `attribute_name`.
    AttributesOrValue,
    /// Form field `all_attributes` holds a JSON array of record objects.
    AllAttributes,
    /// The whole `application/json` body is the record.
    JsonBody,
}

/// Where the records to be read-filtered sit in a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseRecords {
    /// No attribute values in the response (counts, ids, `stat`).
    #[default]
    None,
    /// `result` is a record, or the value at `attribute_name` when given.
    Result,
    /// Each element of `results` is a record.
    Results,
    /// The whole body is one record.
    JsonBody,
}

/// A route as written in settings (`routes:` overrides the built-in table).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteDef {
    pub path: String,
    pub access: Access,
    /// Any one of these features grants the route; defaults by `access`.
    #[serde(default)]
    pub features: Option<Vec<String>>,
    #[serde(default)]
    pub request_records: RequestRecords,
    #[serde(default)]
    pub response_records: ResponseRecords,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub path: String,
    pub access: Access,
    pub needs_any: FeatureSet,
    pub request_records: RequestRecords,
    pub response_records: ResponseRecords,
}

pub struct RouteTable {
    routes: Vec<Route>,
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
            routes.push(Route {
                path: d.path.clone(),
                access: d.access,
                needs_any,
                request_records: d.request_records,
                response_records: d.response_records,
            });
        }
        Ok(RouteTable { routes })
    }

    pub fn find(&self, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.path == path)
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
