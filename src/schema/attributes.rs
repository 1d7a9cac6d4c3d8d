//! The entity type model: attribute definitions, reserved names, and the
//! entity type that compiles access schemas against them.

use std::collections::HashSet;
use std::sync::LazyLock;

use super::path::*;
use super::tree::*;
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

    pub(super) fn synthetic(name: &str, kind: &str) -> AttrDef {
        AttrDef {
            name: name.to_owned(),
            kind: kind.to_owned(),
            attr_defs: None,
            extra: serde_json::Map::new(),
        }
    }
}

// Capture manages these itself, so a type listing may omit them; `resolve` still
// has to know them for paths such as `id` or `photos.id` to be valid.
pub(super) static RESERVED_DEFS: LazyLock<[AttrDef; 4]> = LazyLock::new(|| {
    [
        AttrDef::synthetic("id", "id"),
        AttrDef::synthetic("uuid", "uuid"),
        AttrDef::synthetic("created", "dateTime"),
        AttrDef::synthetic("lastUpdated", "dateTime"),
    ]
});
pub(super) static PLURAL_ELEMENT_ID: LazyLock<AttrDef> =
    LazyLock::new(|| AttrDef::synthetic("id", "id"));

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

    pub(super) fn compile(
        &self,
        paths: &[AttrPath],
        read: bool,
    ) -> Result<AccessTree, UnknownAttribute> {
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

    pub(super) fn grant(
        &self,
        root: &mut TreeBuilder,
        path: &AttrPath,
    ) -> Result<(), UnknownAttribute> {
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

    pub(super) fn unknown(&self, path: String) -> UnknownAttribute {
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

pub(super) fn lookup<'a>(
    defs: &'a [AttrDef],
    parent: Option<&AttrDef>,
    seg: &str,
) -> Option<&'a AttrDef> {
    if let Some(def) = defs.iter().find(|d| d.name == seg) {
        return Some(def);
    }
    match parent {
        None => RESERVED_DEFS.iter().find(|d| d.name == seg),
        Some(p) if p.is_plural() && seg == "id" => Some(&PLURAL_ELEMENT_ID),
        Some(_) => None,
    }
}

pub(super) fn prune(defs: &[AttrDef], tree: &AccessTree) -> Vec<AttrDef> {
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

pub(super) fn validate_defs(defs: &[AttrDef], prefix: &str) -> Result<(), String> {
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
