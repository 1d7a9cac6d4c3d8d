//! Shadow schemas: a second read or write schema evaluated on every call
//! next to the enforced one. It never changes what is forwarded or
//! answered; what it would have removed is counted and named by attribute
//! path (never by value), so a schema change can be tried on real traffic
//! before it is enforced.
//!
//! Counts come from the same filters that enforce: a second
//! [`StreamFilter`] over the response, [`strip_write`] over a copy of each
//! request record. The paths come from walks that mirror them
//! ([`read_paths`], [`write_paths`]), property-tested to remove exactly as
//! many attributes.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use crate::config::routes::{Access, RequestRecords};
use crate::decide::routes::{ResponseRecords, Route};
use crate::filter::json::{parse_record, parse_strict};
use crate::filter::request::strip_write;
use crate::filter::response::StreamFilter;
use crate::params::Params;
use crate::schema::{is_reserved, AccessTree, AttrPath};

/// What a shadow schema would have removed from one call.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub count: usize,
    /// The attribute paths removed (plural elements are named by their
    /// plural), when the whole body could be walked; a streamed response
    /// is counted but not named.
    pub paths: Option<BTreeSet<String>>,
}

/// The read shadow of one response, fed the upstream's chunks alongside
/// the enforced filter.
pub struct ShadowRead<'t> {
    filter: StreamFilter<'t>,
    scratch: Vec<u8>,
    /// The body so far, kept for naming paths while the response is
    /// buffered anyway.
    body: Option<Vec<u8>>,
    records: ResponseRecords,
    tree: &'t AccessTree,
    relative_to: Option<&'t AttrPath>,
    max_depth: usize,
    failed: bool,
}

impl<'t> ShadowRead<'t> {
    pub fn new(
        records: ResponseRecords,
        tree: &'t AccessTree,
        relative_to: Option<&'t AttrPath>,
        max_depth: usize,
        reserve: usize,
    ) -> Self {
        ShadowRead {
            filter: StreamFilter::for_response(records, tree, relative_to, max_depth),
            scratch: Vec::new(),
            body: Some(Vec::with_capacity(reserve)),
            records,
            tree,
            relative_to,
            max_depth,
            failed: false,
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        if self.failed {
            return;
        }
        self.failed = self.filter.feed(chunk, &mut self.scratch).is_err();
        self.scratch.clear();
        if let Some(body) = &mut self.body {
            body.extend_from_slice(chunk);
        }
    }

    /// The response is streamed from here: its paths will not be named.
    pub fn streaming(&mut self) {
        self.body = None;
    }

    /// `None` when the body could not be filtered (the enforced filter
    /// refuses it too).
    pub fn finish(mut self) -> Option<Removed> {
        if self.failed {
            return None;
        }
        let count = self.filter.finish(&mut self.scratch).ok()?;
        let paths = self.body.as_deref().and_then(|b| {
            read_paths(b, self.records, self.tree, self.relative_to, self.max_depth)
                .map(|(_, paths)| paths)
        });
        Some(Removed { count, paths })
    }
}

/// What [`crate::filter::reference::filter_response`] would remove from
/// `body`: how many attributes, and their paths.
pub fn read_paths(
    body: &[u8],
    records: ResponseRecords,
    tree: &AccessTree,
    relative_to: Option<&AttrPath>,
    max_depth: usize,
) -> Option<(usize, BTreeSet<String>)> {
    let v = parse_strict(body, max_depth).ok()?;
    let mut walk = Walk::default();
    match records {
        ResponseRecords::None => {}
        ResponseRecords::JsonBody => walk.read_value(&v, tree),
        ResponseRecords::Result | ResponseRecords::Results => {
            let Value::Object(envelope) = &v else {
                return None;
            };
            if let Some(result) = envelope.get("result") {
                match relative_to {
                    None => walk.read_value(result, tree),
                    Some(p) => {
                        let base: Vec<String> =
                            p.to_string().split('.').map(String::from).collect();
                        walk.prefix = base;
                        match tree.subtree(p) {
                            Some(t) => walk.read_value(result, t),
                            None => walk.removed(),
                        }
                        walk.prefix.clear();
                    }
                }
            }
            if let Some(Value::Array(items)) = envelope.get("results") {
                for item in items {
                    if item.is_object() || records == ResponseRecords::Results {
                        walk.read_value(item, tree);
                    }
                }
            }
        }
    }
    Some((walk.count, walk.paths))
}

/// What [`strip_write`] would remove from `record`, by path.
pub fn write_paths(record: &Value, tree: &AccessTree) -> BTreeSet<String> {
    let mut walk = Walk::default();
    if !tree.is_all() {
        match record {
            Value::Object(map) => walk.write_object(map, tree, true),
            Value::Array(items) => walk.write_array(items, tree),
            _ => {}
        }
    }
    walk.paths
}

/// What the write shadow removes from one request record: counted by
/// [`strip_write`] itself on a copy, named by [`write_paths`].
pub fn shadow_write(record: &Value, tree: &AccessTree) -> Removed {
    let mut copy = record.clone();
    let count = strip_write(&mut copy, tree);
    Removed {
        count,
        paths: Some(write_paths(record, tree)),
    }
}

#[derive(Default)]
struct Walk {
    prefix: Vec<String>,
    paths: BTreeSet<String>,
    count: usize,
}

impl Walk {
    fn removed(&mut self) {
        self.count += 1;
        self.paths.insert(self.prefix.join("."));
    }

    fn removed_key(&mut self, key: &str) {
        self.prefix.push(key.to_string());
        self.removed();
        self.prefix.pop();
    }

    // Read: mirrors `reference::project_value`, `project`, `project_object`,
    // `project_array` and `project_nested`.
    fn read_value(&mut self, v: &Value, tree: &AccessTree) {
        if tree.is_all() {
            return;
        }
        match v {
            Value::Object(map) => self.read_object(map, tree),
            Value::Array(items) => self.read_array(items, tree),
            Value::Null => {}
            _ => self.removed(),
        }
    }

    fn read_object(&mut self, map: &Map<String, Value>, tree: &AccessTree) {
        for (key, v) in map {
            match tree.child(key) {
                Some(sub) => {
                    self.prefix.push(key.clone());
                    if !self.read_nested(v, sub) {
                        self.removed();
                    }
                    self.prefix.pop();
                }
                None => self.removed_key(key),
            }
        }
    }

    fn read_array(&mut self, items: &[Value], tree: &AccessTree) {
        for item in items {
            if !self.read_nested(item, tree) {
                self.removed();
            }
        }
    }

    fn read_nested(&mut self, v: &Value, tree: &AccessTree) -> bool {
        if tree.is_all() {
            return true;
        }
        match v {
            Value::Object(map) => self.read_object(map, tree),
            Value::Array(items) => self.read_array(items, tree),
            Value::Null => {}
            _ => return false,
        }
        true
    }

    // Write: mirrors `request::strip_object`, `strip_array`, `strip_nested`.
    fn write_object(&mut self, map: &Map<String, Value>, tree: &AccessTree, top: bool) {
        for (key, v) in map {
            if top && is_reserved(key) {
                continue;
            }
            self.prefix.push(key.clone());
            let keep = match tree.child(key) {
                Some(sub) => self.write_nested(v, sub),
                None => false,
            };
            if !keep {
                self.removed();
            }
            self.prefix.pop();
        }
    }

    fn write_array(&mut self, items: &[Value], tree: &AccessTree) {
        for item in items {
            if !self.write_nested(item, tree) {
                self.removed();
            }
        }
    }

    fn write_nested(&mut self, v: &Value, tree: &AccessTree) -> bool {
        if tree.is_all() {
            return true;
        }
        match v {
            Value::Object(map) => self.write_object(map, tree, false),
            Value::Array(items) => self.write_array(items, tree),
            _ => return false,
        }
        true
    }
}

/// What the write shadow would strip from the records a write call
/// carries, found where [`crate::filter::request::filter_write`] finds
/// them, before the enforced schema changes them. `None` when the call
/// writes nothing or a record cannot be read (the enforced filter refuses
/// it then).
pub fn write_records(
    route: &Route,
    tree: &AccessTree,
    attribute_name: Option<&AttrPath>,
    params: &Params,
    json_body: Option<&Value>,
    max_depth: usize,
) -> Option<Removed> {
    if route.access != Access::Write {
        return None;
    }
    let parse = |name: &str| parse_record(params.get(name)?.as_bytes(), max_depth).ok();
    let mut total = Removed {
        count: 0,
        paths: Some(BTreeSet::new()),
    };
    let mut add = |r: Removed| {
        total.count += r.count;
        if let (Some(all), Some(paths)) = (&mut total.paths, r.paths) {
            all.extend(paths);
        }
    };
    match route.request_records {
        RequestRecords::None => return None,
        RequestRecords::Attributes => add(shadow_write(&parse("attributes")?, tree)),
        RequestRecords::AttributesOrValue => match (attribute_name, params.get("value")) {
            (Some(path), Some(_)) => {
                let v = parse("value")?;
                match tree.subtree(path) {
                    Some(sub) => {
                        let mut r = shadow_write(&v, sub);
                        let at = path.to_string();
                        r.paths = r
                            .paths
                            .map(|ps| ps.into_iter().map(|p| format!("{at}.{p}")).collect());
                        add(r)
                    }
                    None => add(Removed {
                        count: 1,
                        paths: Some(BTreeSet::from([path.to_string()])),
                    }),
                }
            }
            _ => add(shadow_write(&parse("attributes")?, tree)),
        },
        RequestRecords::AllAttributes => {
            let Value::Array(items) = parse("all_attributes")? else {
                return None;
            };
            for item in &items {
                add(shadow_write(item, tree));
            }
        }
        RequestRecords::JsonBody => add(shadow_write(json_body?, tree)),
    }
    Some(total)
}
