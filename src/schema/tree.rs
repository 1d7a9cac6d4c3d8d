//! Compiled access trees: per-request checks are lookups that never
//! allocate.

use std::collections::BTreeMap;

use super::key_index::*;
use super::path::*;

/// An [`AccessTree`] under construction: `grant` needs a map it can walk
/// into, while lookups want the frozen, indexed form.
#[derive(Default)]
pub(super) struct TreeBuilder {
    pub(super) all: bool,
    pub(super) children: BTreeMap<Box<str>, TreeBuilder>,
}

impl TreeBuilder {
    pub(super) fn all() -> TreeBuilder {
        TreeBuilder {
            all: true,
            children: BTreeMap::new(),
        }
    }

    pub(super) fn freeze(self) -> AccessTree {
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

/// A compiled, immutable grant over attribute paths.
///
/// A node either grants everything beneath it (`all`) or exactly its children. A
/// plural's node applies to each of its elements, so the tree has no level for
/// the array itself.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AccessTree {
    pub(super) all: bool,
    /// Sorted by name (the order they are listed in). A `Vec` because its
    /// `new` is const, which lets `ALL` be a plain static.
    pub(super) children: Vec<(Box<str>, AccessTree)>,
    pub(super) index: KeyIndex,
}

pub(super) static ALL: AccessTree = AccessTree {
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
