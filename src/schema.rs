//! Entity types, attribute paths and compiled access trees.
//!
//! An access schema is a list of attribute paths; the gateway compiles it once
//! into an [`AccessTree`] so that per-request checks are map lookups that never
//! allocate.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};

/// One attribute definition, as in getAccessSchema's `attr_defs` (nested
/// `attr_defs` for `object` and `plural`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttrDef {
    pub name: String,
    /// "string", "boolean", "integer", "decimal", "date", "dateTime", "id",
    /// "uuid", "object", "plural", "json", ...
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attr_defs: Option<Vec<AttrDef>>,
    /// description, length, case-sensitive, constraints, ... kept verbatim so the
    /// getAccessSchema echo matches what upstream would have said.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl AttrDef {
    pub fn is_plural(&self) -> bool {
        self.kind == "plural"
    }

    pub fn is_object(&self) -> bool {
        self.kind == "object"
    }

    /// `object` or `plural`: the kinds that must have `attr_defs`.
    pub fn is_container(&self) -> bool {
        self.is_object() || self.is_plural()
    }

    fn synthetic(name: &str, kind: &str) -> AttrDef {
        AttrDef {
            name: name.to_owned(),
            kind: kind.to_owned(),
            attr_defs: None,
            extra: serde_json::Map::new(),
        }
    }
}

/// Top-level attributes every record has; readable by every client, writable by none.
pub const RESERVED: [&str; 4] = ["id", "uuid", "created", "lastUpdated"];

pub fn is_reserved(name: &str) -> bool {
    RESERVED.contains(&name)
}

// Capture manages these itself, so a type listing may omit them; `resolve` still
// has to know them for paths such as `id` or `photos.id` to be valid.
static RESERVED_DEFS: LazyLock<[AttrDef; 4]> = LazyLock::new(|| {
    [
        AttrDef::synthetic("id", "id"),
        AttrDef::synthetic("uuid", "uuid"),
        AttrDef::synthetic("created", "dateTime"),
        AttrDef::synthetic("lastUpdated", "dateTime"),
    ]
});
static PLURAL_ELEMENT_ID: LazyLock<AttrDef> = LazyLock::new(|| AttrDef::synthetic("id", "id"));

/// Why an attribute path string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("attribute path is empty")]
    Empty,
    #[error("attribute path {0:?} has an empty segment")]
    EmptySegment(String),
    #[error("attribute path {0:?} has a malformed plural element selector (expected name#digits)")]
    BadSelector(String),
}

/// A parsed attribute path such as `primaryAddress.city` or `/statuses#5253/status`.
///
/// Plural element selectors (`#<digits>`) are stripped from the segments, which is
/// what schema checks need (a grant on `statuses.status` covers every element); the
/// element ids are kept separately for callers that need to address the element.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AttrPath {
    segments: Vec<String>,
    elements: Vec<Option<u64>>,
}

impl AttrPath {
    /// Accepts `.` and `/` as separators (interchangeably) and one leading `/`,
    /// because the documented syntax drifted between API versions.
    pub fn parse(input: &str) -> Result<AttrPath, PathError> {
        let body = input.strip_prefix('/').unwrap_or(input);
        if body.is_empty() {
            return Err(PathError::Empty);
        }
        let mut segments = Vec::new();
        let mut elements = Vec::new();
        for raw in body.split(['.', '/']) {
            let (name, element) = match raw.split_once('#') {
                None => (raw, None),
                Some((name, digits)) => {
                    let valid = !name.is_empty()
                        && !digits.is_empty()
                        && digits.bytes().all(|b| b.is_ascii_digit());
                    let id = digits.parse::<u64>().ok().filter(|_| valid);
                    match id {
                        Some(id) => (name, Some(id)),
                        None => return Err(PathError::BadSelector(input.to_owned())),
                    }
                }
            };
            if name.is_empty() {
                return Err(PathError::EmptySegment(input.to_owned()));
            }
            segments.push(name.to_owned());
            elements.push(element);
        }
        Ok(AttrPath { segments, elements })
    }

    /// Attribute names, selectors stripped. Never empty.
    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// The plural element id given for segment `index` (`photos#2` -> `Some(2)`).
    pub fn element(&self, index: usize) -> Option<u64> {
        self.elements.get(index).copied().flatten()
    }

    /// Whether any segment carried a `#<digits>` element selector.
    pub fn has_selector(&self) -> bool {
        self.elements.iter().any(Option::is_some)
    }

    /// A single-segment path naming one of [`RESERVED`].
    pub fn is_reserved(&self) -> bool {
        matches!(self.segments.as_slice(), [only] if is_reserved(only))
    }

    /// Dotted form including element selectors (`statuses#5253.status`), for
    /// messages that must show what the client actually sent.
    pub fn to_selector_string(&self) -> String {
        let mut out = String::new();
        for (i, (seg, el)) in self.segments.iter().zip(&self.elements).enumerate() {
            if i > 0 {
                out.push('.');
            }
            out.push_str(seg);
            if let Some(id) = el {
                out.push('#');
                out.push_str(&id.to_string());
            }
        }
        out
    }
}

impl fmt::Display for AttrPath {
    /// Dotted form without element selectors (`primaryAddress.city`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.segments.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            f.write_str(seg)?;
        }
        Ok(())
    }
}

impl FromStr for AttrPath {
    type Err = PathError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AttrPath::parse(s)
    }
}

/// An access-schema path that does not name an attribute of the entity type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path} is not an attribute of {type_name}")]
pub struct UnknownAttribute {
    pub path: String,
    pub type_name: String,
}

/// An entity type (`user`, ...) with its attribute definitions, in the shape of
/// getAccessSchema's `schema` object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntityType {
    pub name: String,
    pub attr_defs: Vec<AttrDef>,
}

impl EntityType {
    /// Checks the structural rules the rest of the module relies on.
    ///
    /// Names containing `.`, `/` or `#` are refused too: no path could address them.
    pub fn validate(&self) -> Result<(), String> {
        validate_defs(&self.attr_defs, "")
    }

    pub fn resolve(&self, path: &AttrPath) -> Option<&AttrDef> {
        let mut defs: &[AttrDef] = &self.attr_defs;
        let mut parent: Option<&AttrDef> = None;
        for seg in &path.segments {
            let def = lookup(defs, parent, seg)?;
            defs = def.attr_defs.as_deref().unwrap_or(&[]);
            parent = Some(def);
        }
        parent
    }

    /// A tree granting everything (clients with no schema for this direction).
    pub fn full_tree(&self) -> AccessTree {
        AccessTree::all()
    }

    /// Compiles a read access schema. Reserved attributes and plural element ids
    /// are always granted, as Capture adds them itself.
    pub fn read_tree(&self, paths: &[AttrPath]) -> Result<AccessTree, UnknownAttribute> {
        self.compile(paths, true)
    }

    /// Compiles a write access schema. Reserved attributes are never granted, even
    /// if listed; plural element ids are granted under a granted plural because
    /// `entity.update` uses them to address the element to replace.
    pub fn write_tree(&self, paths: &[AttrPath]) -> Result<AccessTree, UnknownAttribute> {
        self.compile(paths, false)
    }

    fn compile(&self, paths: &[AttrPath], read: bool) -> Result<AccessTree, UnknownAttribute> {
        let mut root = TreeBuilder::default();
        if read {
            for name in RESERVED {
                root.children.insert(name.into(), TreeBuilder::all());
            }
        }
        for path in paths {
            // A schema entry naming one element (`photos#2`) has no meaning in
            // Capture; silently widening it to every element would over-grant.
            if path.has_selector() {
                return Err(self.unknown(path.to_selector_string()));
            }
            if path.is_reserved() {
                continue;
            }
            self.grant(&mut root, path)?;
        }
        Ok(root.freeze())
    }

    fn grant(&self, root: &mut TreeBuilder, path: &AttrPath) -> Result<(), UnknownAttribute> {
        let mut defs: &[AttrDef] = &self.attr_defs;
        let mut parent: Option<&AttrDef> = None;
        let mut node = root;
        let last = path.segments.len().saturating_sub(1);
        for (i, seg) in path.segments.iter().enumerate() {
            let def = lookup(defs, parent, seg).ok_or_else(|| self.unknown(path.to_string()))?;
            if i < last && !def.is_container() {
                return Err(self.unknown(path.to_string()));
            }
            if !node.all {
                node = node.children.entry(seg.as_str().into()).or_default();
                if def.is_plural() && i < last && !node.all {
                    node.children.insert("id".into(), TreeBuilder::all());
                }
            }
            defs = def.attr_defs.as_deref().unwrap_or(&[]);
            parent = Some(def);
        }
        // Validation continues past an already fully granted ancestor so that a typo
        // is reported regardless of the order of the schema's entries.
        if !node.all {
            node.all = true;
            node.children.clear();
        }
        Ok(())
    }

    fn unknown(&self, path: String) -> UnknownAttribute {
        UnknownAttribute {
            path,
            type_name: self.name.clone(),
        }
    }

    /// The definitions of what `tree` grants, pruned recursively, in the type's
    /// order (the attr_defs of a getAccessSchema/setAccessSchema answer).
    pub fn granted_defs(&self, tree: &AccessTree) -> Vec<AttrDef> {
        prune(&self.attr_defs, tree)
    }
}

fn lookup<'a>(defs: &'a [AttrDef], parent: Option<&AttrDef>, seg: &str) -> Option<&'a AttrDef> {
    if let Some(def) = defs.iter().find(|d| d.name == seg) {
        return Some(def);
    }
    match parent {
        None => RESERVED_DEFS.iter().find(|d| d.name == seg),
        Some(p) if p.is_plural() && seg == "id" => Some(&PLURAL_ELEMENT_ID),
        Some(_) => None,
    }
}

fn prune(defs: &[AttrDef], tree: &AccessTree) -> Vec<AttrDef> {
    defs.iter()
        .filter_map(|def| {
            let sub = tree.child(&def.name)?;
            if sub.is_all() {
                return Some(def.clone());
            }
            Some(AttrDef {
                name: def.name.clone(),
                kind: def.kind.clone(),
                attr_defs: def.attr_defs.as_deref().map(|inner| prune(inner, sub)),
                extra: def.extra.clone(),
            })
        })
        .collect()
}

fn validate_defs(defs: &[AttrDef], prefix: &str) -> Result<(), String> {
    let mut seen = HashSet::new();
    for def in defs {
        let path = if prefix.is_empty() {
            def.name.clone()
        } else {
            format!("{prefix}.{}", def.name)
        };
        if def.name.is_empty() || def.name.contains(['.', '/', '#']) {
            return Err(format!("invalid attribute name {path:?}"));
        }
        if !seen.insert(def.name.as_str()) {
            return Err(format!("duplicate attribute {path}"));
        }
        match (&def.attr_defs, def.is_container()) {
            (Some(inner), true) => validate_defs(inner, &path)?,
            (None, true) => return Err(format!("{} attribute {path} has no attr_defs", def.kind)),
            (Some(_), false) => {
                return Err(format!(
                    "attribute {path} of type {} must not have attr_defs",
                    def.kind
                ))
            }
            (None, false) => {}
        }
    }
    Ok(())
}

/// An [`AccessTree`] under construction: `grant` needs a map it can walk
/// into, while lookups want the frozen, indexed form.
#[derive(Default)]
struct TreeBuilder {
    all: bool,
    children: BTreeMap<Box<str>, TreeBuilder>,
}

impl TreeBuilder {
    fn all() -> TreeBuilder {
        TreeBuilder {
            all: true,
            children: BTreeMap::new(),
        }
    }

    fn freeze(self) -> AccessTree {
        let children: Vec<(Box<str>, AccessTree)> = self
            .children
            .into_iter()
            .map(|(k, v)| (k, v.freeze()))
            .collect();
        let index = KeyIndex::new(&children);
        AccessTree {
            all: self.all,
            children,
            index,
        }
    }
}

/// The first eight bytes of `key` as a little-endian word, zero-padded: with
/// the length it tells most keys apart without touching their bytes.
#[inline(always)]
pub fn key_word(key: &[u8]) -> u64 {
    if let Some(Ok(word)) = key.get(..8).map(<[u8; 8]>::try_from) {
        return u64::from_le_bytes(word);
    }
    key.iter()
        .enumerate()
        .fold(0u64, |acc, (i, &b)| acc | u64::from(b) << (8 * i))
}

/// The last eight bytes of a key longer than eight, as a little-endian word;
/// 0 for shorter keys, which [`key_word`] holds whole.
#[inline(always)]
pub fn last_word(key: &[u8]) -> u64 {
    match key.last_chunk::<8>() {
        Some(w) if key.len() > 8 => u64::from_le_bytes(*w),
        _ => 0,
    }
}

/// Whether `key` equals `stored` (whose [`last_word`] is `stored_last`),
/// given that their [`key_word`]s and lengths are equal already: the words
/// settle keys of up to eight bytes, the last words those of up to sixteen,
/// and only longer keys compare their middles.
#[inline(always)]
pub fn same_rest(stored: &[u8], stored_last: u64, key: &[u8]) -> bool {
    let len = key.len();
    len <= 8
        || (stored_last == last_word(key)
            && (len <= 16 || stored.get(8..len - 8) == key.get(8..len - 8)))
}

/// Mixes a key's [`key_word`] and length; the high bits are well spread.
#[inline(always)]
pub fn key_hash(word: u64, len: usize) -> u64 {
    (word ^ (len as u64).rotate_left(56)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Open-addressing index over a node's children, built once per compiled tree
/// so that the response filter's per-key lookup is a hash, a word compare and
/// rarely a byte compare, instead of a `BTreeMap` walk of string compares.
///
/// Each slot holds the child's word and length itself, and the table is at
/// most a quarter full: a lookup is one load, and a key that is not granted
/// (most keys of a narrow schema) usually meets an empty slot at once, so the
/// probe loop's exit is predictable.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeyIndex {
    /// A power of two long, never empty.
    slots: Vec<Slot>,
    /// `64 - log2(slots.len())`: the hash's top bits pick the slot.
    shift: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    /// The child's [`key_word`].
    word: u64,
    /// The last eight bytes of a key longer than eight (they overlap `word`
    /// below sixteen), else 0: with `word` it settles keys of up to sixteen
    /// bytes without a call to `memcmp`.
    last: u64,
    /// The child's key length; [`EMPTY`] for a free slot, which no key has.
    len: usize,
    /// The child's position.
    pos: usize,
}

const EMPTY: usize = usize::MAX;
const FREE: Slot = Slot {
    word: 0,
    last: 0,
    len: EMPTY,
    pos: 0,
};

impl KeyIndex {
    const fn empty() -> KeyIndex {
        KeyIndex {
            slots: Vec::new(),
            shift: 63,
        }
    }

    fn new(children: &[(Box<str>, AccessTree)]) -> KeyIndex {
        let size = (children.len() * 4).next_power_of_two().max(2);
        let shift = 64 - size.trailing_zeros();
        let mut slots = vec![FREE; size];
        for (pos, (name, _)) in children.iter().enumerate() {
            let key = name.as_bytes();
            let word = key_word(key);
            let mut s = (key_hash(word, key.len()) >> shift) as usize;
            // At most a quarter full, so a free slot is always found.
            while slots.get(s).is_some_and(|v| v.len != EMPTY) {
                s = (s + 1) & (size - 1);
            }
            if let Some(slot) = slots.get_mut(s) {
                *slot = Slot {
                    word,
                    last: last_word(key),
                    len: key.len(),
                    pos,
                };
            }
        }
        KeyIndex { slots, shift }
    }
}

impl Default for KeyIndex {
    fn default() -> KeyIndex {
        KeyIndex::new(&[])
    }
}

/// A compiled, immutable grant over attribute paths.
///
/// A node either grants everything beneath it (`all`) or exactly its children. A
/// plural's node applies to each of its elements, so the tree has no level for
/// the array itself.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AccessTree {
    all: bool,
    /// Sorted by name (the order they are listed in). A `Vec` because its
    /// `new` is const, which lets `ALL` be a plain static.
    children: Vec<(Box<str>, AccessTree)>,
    index: KeyIndex,
}

static ALL: AccessTree = AccessTree {
    all: true,
    children: Vec::new(),
    index: KeyIndex::empty(),
};

impl AccessTree {
    /// Grants everything.
    pub fn all() -> AccessTree {
        TreeBuilder::all().freeze()
    }

    /// Grants nothing.
    pub fn none() -> AccessTree {
        AccessTree::default()
    }

    pub fn is_all(&self) -> bool {
        self.all
    }

    /// Grants nothing at all (e.g. the write tree of a read-only client).
    pub fn is_empty(&self) -> bool {
        !self.all && self.children.is_empty()
    }

    /// The grant for attribute `key` beneath this node, if any.
    pub fn child(&self, key: &str) -> Option<&AccessTree> {
        self.child_bytes(key.as_bytes())
    }

    /// [`child`](Self::child) for a key that is still bytes.
    #[inline]
    pub fn child_bytes(&self, key: &[u8]) -> Option<&AccessTree> {
        if self.all {
            return Some(&ALL);
        }
        self.child_word(key, key_word(key))
    }

    /// [`child_bytes`](Self::child_bytes) when the caller already has the
    /// key's [`key_word`].
    #[inline]
    pub fn child_word(&self, key: &[u8], word: u64) -> Option<&AccessTree> {
        self.child_hashed(key, word, key_hash(word, key.len()))
    }

    /// [`child_word`](Self::child_word) when the caller already has the
    /// key's [`key_hash`] too.
    #[inline]
    pub fn child_hashed(&self, key: &[u8], word: u64, hash: u64) -> Option<&AccessTree> {
        if self.all {
            return Some(&ALL);
        }
        self.child_at(self.child_position(key, word, hash)?)
    }

    /// Where the grant for `key` lies among the explicitly granted
    /// children, for [`child_at`](Self::child_at); `None` if it has none
    /// (always, when the node grants all).
    #[inline]
    pub fn child_position(&self, key: &[u8], word: u64, hash: u64) -> Option<usize> {
        let idx = &self.index;
        // Empty only in `ALL`, which has no children.
        let mask = idx.slots.len().checked_sub(1)?;
        let mut s = (hash >> idx.shift) as usize;
        loop {
            let slot = idx.slots.get(s)?;
            if slot.word == word && slot.len == key.len() {
                let (name, _) = self.children.get(slot.pos)?;
                if same_rest(name.as_bytes(), slot.last, key) {
                    return Some(slot.pos);
                }
            } else if slot.len == EMPTY {
                return None;
            }
            s = (s + 1) & mask;
        }
    }

    /// The grant at `pos`, a [`child_position`](Self::child_position).
    #[inline]
    pub fn child_at(&self, pos: usize) -> Option<&AccessTree> {
        self.children.get(pos).map(|(_, tree)| tree)
    }

    /// The explicitly granted children (empty when [`is_all`](Self::is_all)).
    pub fn children(&self) -> impl Iterator<Item = (&str, &AccessTree)> {
        self.children.iter().map(|(k, v)| (&**k, v))
    }

    /// The whole attribute at `path` (everything beneath it) is granted.
    pub fn allows_fully(&self, path: &AttrPath) -> bool {
        self.subtree(path).is_some_and(AccessTree::is_all)
    }

    /// The attribute at `path`, or something beneath it, is granted.
    pub fn reaches(&self, path: &AttrPath) -> bool {
        // Nodes are only created along granted paths, so an existing node always
        // has a grant at or below it.
        self.subtree(path).is_some()
    }

    /// The grant relative to the attribute at `path` (`photos#2` -> the element
    /// tree of `photos`), or `None` if nothing there is granted.
    pub fn subtree(&self, path: &AttrPath) -> Option<&AccessTree> {
        let mut node = self;
        for seg in &path.segments {
            node = node.child(seg)?;
        }
        Some(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(s: &str) -> AttrPath {
        AttrPath::parse(s).unwrap()
    }

    fn paths(list: &[&str]) -> Vec<AttrPath> {
        list.iter().map(|s| p(s)).collect()
    }

    fn user_type() -> EntityType {
        serde_json::from_value(json!({
            "name": "user",
            "attr_defs": [
                {"name": "id", "type": "id", "description": "simple identifier for this entity"},
                {"name": "uuid", "type": "uuid"},
                {"name": "created", "type": "dateTime"},
                {"name": "lastUpdated", "type": "dateTime"},
                {"name": "email", "type": "string", "length": 256, "case-sensitive": false},
                {"name": "givenName", "type": "string"},
                {"name": "primaryAddress", "type": "object", "attr_defs": [
                    {"name": "city", "type": "string"},
                    {"name": "country", "type": "string"},
                    {"name": "geo", "type": "object", "attr_defs": [
                        {"name": "lat", "type": "decimal"},
                        {"name": "lon", "type": "decimal"}
                    ]}
                ]},
                {"name": "photos", "type": "plural", "attr_defs": [
                    {"name": "value", "type": "string"},
                    {"name": "caption", "type": "string"},
                    {"name": "tags", "type": "plural", "attr_defs": [
                        {"name": "value", "type": "string"}
                    ]}
                ]},
                {"name": "prefs", "type": "json"}
            ]
        }))
        .unwrap()
    }

    #[test]
    fn parse_accepts_every_documented_syntax() {
        let dotted = p("primaryAddress.city");
        assert_eq!(p("/primaryAddress/city"), dotted);
        assert_eq!(p("/primaryAddress.city"), dotted);
        assert_eq!(p("primaryAddress/city"), dotted);
        assert_eq!(dotted.segments(), ["primaryAddress", "city"]);
        assert_eq!(dotted.to_string(), "primaryAddress.city");
        assert!(!dotted.has_selector());
        assert_eq!("email".parse::<AttrPath>().unwrap(), p("email"));
    }

    #[test]
    fn parse_strips_element_selectors() {
        let path = p("/statuses#5253/status");
        assert_eq!(path.segments(), ["statuses", "status"]);
        assert!(path.has_selector());
        assert_eq!(path.element(0), Some(5253));
        assert_eq!(path.element(1), None);
        assert_eq!(path.to_string(), "statuses.status");
        assert_eq!(path.to_selector_string(), "statuses#5253.status");
        assert_eq!(p("profiles#18178").segments(), ["profiles"]);
        assert_eq!(p("photos#2").element(0), Some(2));
    }

    #[test]
    fn parse_rejects_malformed_paths() {
        assert_eq!(AttrPath::parse(""), Err(PathError::Empty));
        assert_eq!(AttrPath::parse("/"), Err(PathError::Empty));
        for bad in ["a..b", "a.", ".a", "//a", "a/", "a/.b"] {
            assert!(
                matches!(AttrPath::parse(bad), Err(PathError::EmptySegment(_))),
                "{bad}"
            );
        }
        for bad in [
            "a#",
            "#2",
            "a#x",
            "a#2#3",
            "a#-1",
            "a#99999999999999999999999",
        ] {
            assert!(
                matches!(AttrPath::parse(bad), Err(PathError::BadSelector(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn validate_reports_dotted_paths() {
        assert_eq!(user_type().validate(), Ok(()));
        let mut t = user_type();
        t.attr_defs[6].attr_defs.as_mut().unwrap()[1].name = "city".into();
        let err = t.validate().unwrap_err();
        assert!(err.contains("primaryAddress.city"), "{err}");

        let mut t = user_type();
        t.attr_defs[7].attr_defs = None;
        assert!(t.validate().unwrap_err().contains("photos"));

        let mut t = user_type();
        t.attr_defs[4].attr_defs = Some(vec![]);
        assert!(t.validate().unwrap_err().contains("email"));

        let mut t = user_type();
        t.attr_defs[7].attr_defs.as_mut().unwrap()[2]
            .attr_defs
            .as_mut()
            .unwrap()[0]
            .name = "a.b".into();
        assert!(t.validate().unwrap_err().contains("photos.tags.a.b"));
    }

    #[test]
    fn resolve_walks_objects_plurals_and_implicit_ids() {
        let t = user_type();
        assert_eq!(
            t.resolve(&p("primaryAddress.geo.lat")).unwrap().kind,
            "decimal"
        );
        assert_eq!(t.resolve(&p("photos#3.tags.value")).unwrap().name, "value");
        assert_eq!(t.resolve(&p("photos.id")).unwrap().kind, "id");
        assert_eq!(t.resolve(&p("photos.tags.id")).unwrap().kind, "id");
        assert!(t.resolve(&p("primaryAddress.id")).is_none());
        assert!(t.resolve(&p("email.foo")).is_none());
        assert!(t.resolve(&p("prefs.theme")).is_none());
        assert!(t.resolve(&p("nope")).is_none());
        let bare = EntityType {
            name: "bare".into(),
            attr_defs: vec![],
        };
        assert_eq!(bare.resolve(&p("lastUpdated")).unwrap().kind, "dateTime");
    }

    #[test]
    fn read_tree_always_grants_reserved_and_element_ids() {
        let t = user_type();
        let tree = t
            .read_tree(&paths(&["photos.value", "primaryAddress.city"]))
            .unwrap();
        for r in RESERVED {
            assert!(tree.allows_fully(&p(r)), "{r}");
        }
        assert!(tree.allows_fully(&p("photos.value")));
        assert!(tree.allows_fully(&p("photos.id")));
        assert!(!tree.allows_fully(&p("photos.caption")));
        assert!(!tree.allows_fully(&p("photos")));
        assert!(tree.reaches(&p("photos")));
        assert!(tree.reaches(&p("primaryAddress")));
        assert!(!tree.reaches(&p("primaryAddress.geo")));
        assert!(!tree.reaches(&p("email")));
        assert!(!tree.allows_fully(&p("email")));
        assert!(tree.allows_fully(&p("photos#7.value")));
    }

    #[test]
    fn path_ending_at_container_grants_everything_beneath() {
        let t = user_type();
        let tree = t.read_tree(&paths(&["primaryAddress", "photos"])).unwrap();
        assert!(tree.allows_fully(&p("primaryAddress")));
        assert!(tree.allows_fully(&p("primaryAddress.geo.lat")));
        assert!(tree.allows_fully(&p("photos.tags.value")));
        assert!(tree.allows_fully(&p("photos.anything.below")));
        // Order of entries does not matter.
        let a = t.read_tree(&paths(&["photos.value", "photos"])).unwrap();
        let b = t.read_tree(&paths(&["photos", "photos.value"])).unwrap();
        assert_eq!(a, b);
        assert!(a.allows_fully(&p("photos")));
    }

    #[test]
    fn nested_plural_elements_keep_their_ids() {
        let t = user_type();
        let tree = t.read_tree(&paths(&["photos.tags.value"])).unwrap();
        assert!(tree.allows_fully(&p("photos.id")));
        assert!(tree.allows_fully(&p("photos.tags.id")));
        assert!(tree.allows_fully(&p("photos.tags.value")));
        assert!(!tree.reaches(&p("photos.value")));
    }

    #[test]
    fn unknown_paths_are_errors() {
        let t = user_type();
        for bad in [
            "nope",
            "primaryAddress.zip",
            "email.x",
            "prefs.theme",
            "photos#2.value",
        ] {
            let err = t.read_tree(&paths(&[bad])).unwrap_err();
            assert_eq!(err.type_name, "user");
            assert!(
                err.to_string().ends_with("is not an attribute of user"),
                "{err}"
            );
        }
        assert_eq!(
            t.write_tree(&paths(&["primaryAddress.zip"]))
                .unwrap_err()
                .path,
            "primaryAddress.zip"
        );
        // A typo behind a fully granted ancestor is still reported.
        assert!(t.read_tree(&paths(&["photos", "photos.nope"])).is_err());
    }

    #[test]
    fn write_tree_never_grants_reserved() {
        let t = user_type();
        let tree = t
            .write_tree(&paths(&["id", "uuid", "givenName", "photos.value"]))
            .unwrap();
        for r in RESERVED {
            assert!(!tree.reaches(&p(r)), "{r}");
        }
        assert!(tree.allows_fully(&p("givenName")));
        assert!(tree.allows_fully(&p("photos.id")));
        assert!(tree.allows_fully(&p("photos.value")));

        let read_only = t.write_tree(&[]).unwrap();
        assert!(read_only.is_empty());
        assert!(!read_only.reaches(&p("givenName")));
        assert!(read_only.child("givenName").is_none());
    }

    #[test]
    fn full_tree_and_child() {
        let t = user_type();
        let full = t.full_tree();
        assert!(full.is_all());
        assert!(full.child("anything").unwrap().is_all());
        assert!(full.allows_fully(&p("a.b.c")));
        let tree = t.read_tree(&paths(&["primaryAddress.geo"])).unwrap();
        let addr = tree.child("primaryAddress").unwrap();
        assert!(!addr.is_all());
        assert!(addr.child("geo").unwrap().is_all());
        assert!(addr.child("geo").unwrap().child("lat").unwrap().is_all());
        assert!(addr.child("city").is_none());
        let keys: Vec<_> = addr.children().map(|(k, _)| k).collect();
        assert_eq!(keys, ["geo"]);
    }

    #[test]
    fn subtree_is_relative_to_attribute_name() {
        let t = user_type();
        let tree = t.read_tree(&paths(&["photos.value"])).unwrap();
        let element = tree.subtree(&p("photos#2")).unwrap();
        assert!(element.allows_fully(&p("value")));
        assert!(element.allows_fully(&p("id")));
        assert!(!element.reaches(&p("caption")));
        assert!(tree.subtree(&p("email")).is_none());
        assert!(t.full_tree().subtree(&p("x.y")).unwrap().is_all());
    }

    #[test]
    fn granted_defs_prunes_in_type_order() {
        let t = user_type();
        let tree = t
            .read_tree(&paths(&[
                "photos.tags",
                "givenName",
                "primaryAddress.geo.lat",
                "email",
            ]))
            .unwrap();
        let defs = t.granted_defs(&tree);
        let names: Vec<_> = defs.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "id",
                "uuid",
                "created",
                "lastUpdated",
                "email",
                "givenName",
                "primaryAddress",
                "photos"
            ]
        );
        assert_eq!(defs[4].extra["length"], json!(256));
        let addr = serde_json::to_value(&defs[6]).unwrap();
        assert_eq!(
            addr,
            json!({"name": "primaryAddress", "type": "object", "attr_defs": [
                {"name": "geo", "type": "object", "attr_defs": [{"name": "lat", "type": "decimal"}]}
            ]})
        );
        let photos = defs[7].attr_defs.as_ref().unwrap();
        assert_eq!(photos.len(), 1);
        assert_eq!(photos[0], t.attr_defs[7].attr_defs.as_ref().unwrap()[2]);

        assert_eq!(t.granted_defs(&t.full_tree()), t.attr_defs);
        assert!(t.granted_defs(&t.write_tree(&[]).unwrap()).is_empty());
    }

    #[test]
    fn child_index_finds_exactly_the_children() {
        // Names that share their first eight bytes, lengths around eight,
        // the empty name and non-ASCII: the cases a word-and-length index
        // could confuse.
        let names = [
            "",
            "a",
            "id",
            "statusCr",
            "statusCreated",
            "statusCreatee",
            "statusCreatedAt",
            "primaryAddress",
            "caf\u{e9}",
            "x y",
            "01234567",
            "012345678",
            // Same first and last eight bytes, longer than sixteen: only the
            // middle tells them apart.
            "abcdefgh_1_abcdefgh",
            "abcdefgh_2_abcdefgh",
            // Same first and last eight bytes at sixteen and below.
            "abcdefgh12345678",
            "abcdefghi2345678",
            "abcdefgh2345678",
        ];
        let defs: Vec<serde_json::Value> = names
            .iter()
            .filter(|n| !n.is_empty())
            .map(|n| json!({"name": n, "type": "string"}))
            .collect();
        let t: EntityType =
            serde_json::from_value(json!({"name": "t", "attr_defs": defs})).unwrap();
        let granted: Vec<&str> = names.iter().copied().filter(|n| !n.is_empty()).collect();
        for take in [0, 1, 2, 5, granted.len()] {
            let tree = t.read_tree(&paths(&granted[..take])).unwrap();
            for (name, sub) in tree.children() {
                assert!(std::ptr::eq(tree.child(name).unwrap(), sub), "{name}");
                assert!(std::ptr::eq(
                    tree.child_bytes(name.as_bytes()).unwrap(),
                    sub
                ));
            }
            for name in names.iter().chain(&[
                "statusCreatedA",
                "b",
                "caf",
                "0123456",
                "abcdefgh_3_abcdefgh",
                "abcdefgh_1_abcdefgi",
                "abcdefgh1234567",
            ]) {
                let listed = tree.children().any(|(k, _)| k == *name);
                assert_eq!(tree.child(name).is_some(), listed, "{name} with {take}");
            }
        }
        assert!(AccessTree::all().child("anything").unwrap().is_all());
        assert!(AccessTree::none().child("").is_none());
    }
}
