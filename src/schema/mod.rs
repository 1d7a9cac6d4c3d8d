//! Entity types, attribute paths and compiled access trees.
//!
//! An access schema is a list of attribute paths; the gateway compiles it once
//! into an [`AccessTree`] so that per-request checks are map lookups that never
//! allocate.

mod attributes;
mod key_index;
mod path;
mod tree;

pub use attributes::{AttrDef, EntityType, UnknownAttribute};
pub use key_index::{key_hash, key_word, last_word, same_rest};
pub use path::{is_reserved, AttrPath, PathError, RESERVED};
pub use tree::AccessTree;

#[cfg(test)]
mod tests;
