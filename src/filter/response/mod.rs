//! One-pass response filter that never builds a DOM.
//!
//! The reference ([`crate::filter::reference::filter_response`], for tests,
//! fuzzing and benches only) parses the
//! whole body into a `serde_json::Value`, projects it and re-serialises it. On a
//! 100 KB `entity.find` that is almost all of the gateway's CPU time. This module
//! walks the bytes once instead: spans of granted values are copied to the
//! output, everything else is validated and dropped. State is a stack of
//! container frames (bounded by the depth limit), the keys of the objects that
//! are currently open (needed to refuse duplicates, exactly like
//! [`crate::filter::json::parse_strict`]) and a few bytes of the token in progress, so
//! the same code also runs incrementally over chunks as they arrive.
//!
//! That byte-at-a-time state machine is the general path. Most values lie
//! wholly inside the chunk at hand, and those first go to a fast path (`Fast`):
//! a recursive descent that decides per member instead of per byte and copies
//! kept values as whole runs. It handles a subset of valid input and gives up
//! on anything else, errors included; the state machine then redoes the value
//! from its start, so what is refused, and where, is decided by one piece of
//! code only.
//!
//! It accepts and refuses exactly what the reference does: invalid JSON anywhere
//! (skipped subtrees are validated too), invalid UTF-8, lone surrogate escapes,
//! duplicate keys after unescaping in any object, nesting deeper than the limit,
//! numbers serde_json reports as out of range, and trailing garbage. Output is
//! the same JSON value with keys in input order; insignificant whitespace is
//! dropped and kept strings and numbers are copied verbatim (escapes and number
//! spelling are not normalised).

mod error;
mod escapes;
mod fast;
mod machine;
mod numbers;
mod state;
pub mod string_ends;
mod values;

use crate::config::routes::ResponseRecords;
use crate::schema::{AccessTree, AttrPath};

pub use error::{FilterFailure, Filtered, StreamError};
use machine::DetachedStreamFilter;

/// Incremental filter borrowing its trees for the whole stream.
pub struct StreamFilter<'t> {
    read: &'t AccessTree,
    relative_to: Option<&'t AttrPath>,
    inner: DetachedStreamFilter,
}

impl<'t> StreamFilter<'t> {
    /// Same semantics as [`crate::filter::reference::filter_response`].
    pub fn for_response(
        records: ResponseRecords,
        read: &'t AccessTree,
        relative_to: Option<&'t AttrPath>,
        max_depth: usize,
    ) -> Self {
        StreamFilter {
            read,
            relative_to,
            inner: DetachedStreamFilter::for_response(records, max_depth),
        }
    }

    /// Same semantics as [`crate::filter::reference::project`] on one whole value.
    pub fn for_value(tree: &'t AccessTree, max_depth: usize) -> Self {
        StreamFilter {
            read: tree,
            relative_to: None,
            inner: DetachedStreamFilter::for_value(max_depth),
        }
    }

    /// Filters the next chunk; output that is already decided is appended to
    /// `out` (a key split across chunks is held back until complete).
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), StreamError> {
        self.inner.feed(self.read, self.relative_to, chunk, out)
    }

    /// Ends the stream; returns how many attributes were removed.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<usize, StreamError> {
        self.inner.finish(self.read, self.relative_to, out)
    }
}

/// Projects one whole JSON value ([`crate::filter::reference::project`] after `parse_strict`),
/// appending compact output to `out`; returns how many attributes were removed.
pub fn project_bytes(
    input: &[u8],
    tree: &AccessTree,
    max_depth: usize,
    out: &mut Vec<u8>,
) -> Result<usize, StreamError> {
    let mut f = StreamFilter::for_value(tree, max_depth);
    f.feed(input, out)?;
    f.finish(out)
}

/// The whole body at once: same result as
/// [`crate::filter::reference::filter_response`].
pub fn filter_response_bytes(
    body: &[u8],
    records: ResponseRecords,
    read: &AccessTree,
    relative_to: Option<&AttrPath>,
    max_depth: usize,
) -> Result<Filtered, FilterFailure> {
    // Output never exceeds the input by more than a `null` per replaced
    // scalar; reserving the input size avoids regrowth on the hot path.
    let mut out = Vec::with_capacity(body.len());
    let mut f = DetachedStreamFilter::for_response(records, max_depth);
    f.feed(read, relative_to, body, &mut out)
        .map_err(|e| e.failure())?;
    let removed = f
        .finish(read, relative_to, &mut out)
        .map_err(|e| e.failure())?;
    Ok(Filtered { body: out, removed })
}
