//! The state machine's types: container frames, string and literal
//! positions, the decision taken for the next value.

use crate::filter::json::MAX_SUPPORTED_DEPTH;
use crate::schema::{AccessTree, AttrPath};

/// One slot per possible open container; the depth limit never exceeds
/// [`MAX_SUPPORTED_DEPTH`].
pub(super) const TREE_SLOTS: usize = MAX_SUPPORTED_DEPTH + 1;

/// Objects with more keys than this switch from a linear duplicate scan to a
/// hash index, so a hostile object with millions of keys stays linear overall.
pub(super) const INDEX_AT: usize = 24;

/// The trees a projection starts from: the read tree for records and the
/// (possibly absent) subtree for `result` when the call addressed an attribute.
#[derive(Clone, Copy)]
pub(super) struct Roots<'a> {
    pub(super) read: &'a AccessTree,
    pub(super) result: Option<&'a AccessTree>,
}

impl<'a> Roots<'a> {
    pub(super) fn new(read: &'a AccessTree, relative_to: Option<&AttrPath>) -> Self {
        let result = match relative_to {
            None => Some(read),
            Some(p) => read.subtree(p),
        };
        Roots { read, result }
    }
}

/// What happens to the contents of an open container.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Mode {
    Copy,
    Skip,
    Project,
    /// The `{stat, result, results, ...}` object of a Capture response.
    Envelope,
    /// `results` where every element is a record (`ResponseRecords::Results`).
    ResultsRecords,
    /// `results` where only object elements are records (`ResponseRecords::Result`).
    ResultsObjects,
}

/// Where a projecting frame's tree comes from. Frames store this rather than a
/// reference so the filter owns no borrow between chunks (the gateway keeps it
/// in a per-request context next to the `Arc` that owns the trees).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Node {
    Read,
    Result,
    /// The enclosing frame's tree: plural elements share their array's tree.
    Inherit,
    /// The child, named by this entry of the key set, of the enclosing object's tree.
    Key(usize),
}

/// The decision for the next value, taken before its first byte is seen.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Disp {
    Copy,
    Skip,
    /// Emit `null` in its place (an addressed attribute with no grant).
    Null,
    /// Partially granted: containers are projected, `null` is kept, other
    /// scalars are removed (`top`: replaced by `null`, as in `project_value`).
    Project {
        node: Node,
        top: bool,
    },
    Envelope,
    ResultsArray,
    /// An element of `results` under `ResponseRecords::Result`.
    ObjectsOnly,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Frame {
    pub(super) is_obj: bool,
    pub(super) mode: Mode,
    pub(super) node: Node,
    /// Something was written inside this container, so the next kept member
    /// needs a comma.
    pub(super) emitted: bool,
    pub(super) keys_from: usize,
    pub(super) bytes_from: usize,
    pub(super) indexed: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Ctx {
    Key,
    Emit,
    Skip,
}

/// Position inside a string, resumable at any byte.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Esc {
    Body,
    Backslash,
    /// `high` is the pending leading surrogate when these are the digits of
    /// the trailing one (0: none; surrogates are never 0).
    Hex {
        val: u16,
        got: u8,
        high: u16,
    },
    LowBackslash(u16),
    LowU(u16),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum St {
    Value,
    ValueOrEnd,
    KeyOrEnd,
    Key,
    Colon,
    After,
    Str(Ctx, Esc),
    Num,
    Lit,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Lit {
    pub(super) text: &'static [u8],
    pub(super) got: usize,
    pub(super) emit: bool,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct KeyEntry {
    pub(super) start: usize,
    pub(super) len: usize,
    /// First eight bytes, so most comparisons never touch the arena.
    pub(super) prefix: u64,
}

#[derive(Clone, Copy)]
pub(super) enum Act {
    Copy,
    Skip,
    Project(Node),
    Mode(Mode),
}

pub(super) fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\r' | b'\t')
}

/// Appends `src[from..to]`. Most keys, strings and numbers are a few bytes,
/// where `extend_from_slice`'s call into `memmove` costs more than the copy;
/// a fixed 16-byte block is copied inline instead (and the excess dropped).
#[inline(always)]
pub(super) fn append(dst: &mut Vec<u8>, src: &[u8], from: usize, to: usize) {
    let len = to.saturating_sub(from);
    if len <= 16 {
        if let Some(Ok(block)) = src.get(from..from + 16).map(<[u8; 16]>::try_from) {
            let keep = dst.len() + len;
            dst.extend_from_slice(&block);
            dst.truncate(keep);
            return;
        }
    }
    if let Some(span) = src.get(from..to) {
        dst.extend_from_slice(span);
    }
}
