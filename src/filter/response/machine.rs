//! The general path: a byte-at-a-time state machine that runs over chunks
//! as they arrive and holds only the open containers' frames and keys.

use std::collections::HashMap;
use std::hash::RandomState;

use crate::config::routes::ResponseRecords;
use crate::filter::json::MAX_SUPPORTED_DEPTH;
use crate::schema::{AccessTree, AttrPath};

use super::error::*;
use super::fast::*;
use super::numbers::*;
use super::state::*;
use super::string_ends;

/// The state machine, without the trees: the read tree (and `relative_to`)
/// is passed to every call. [`super::StreamFilter`], which the relay stage
/// runs, holds the borrowed trees for the whole stream and drives it.
///
/// After an error every further call returns the same error.
pub struct DetachedStreamFilter {
    pub(super) limit: usize,
    pub(super) records: ResponseRecords,
    pub(super) st: St,
    pub(super) pending: Disp,
    pub(super) frames: Vec<Frame>,
    /// The raw spelling of the current key, kept only when it has escapes
    /// (otherwise its arena entry is the raw spelling).
    pub(super) key_raw: Vec<u8>,
    pub(super) key_esc: bool,
    /// Where the current key's bytes begin in the arena.
    pub(super) key_start: usize,
    /// Unescaped keys of every open object, for duplicate detection and to
    /// name the tree node of projected children.
    pub(super) arena: Vec<u8>,
    pub(super) keys: Vec<KeyEntry>,
    /// Hash indexes of open large objects, used as a stack; kept for reuse.
    pub(super) indexes: Vec<HashMap<u64, usize>>,
    pub(super) live_indexes: usize,
    pub(super) hasher: RandomState,
    pub(super) num: Num,
    pub(super) lit: Lit,
    pub(super) removed: usize,
    /// Bytes consumed before the current chunk.
    pub(super) offset: u64,
    /// Leading bytes of a UTF-8 sequence split across chunks.
    pub(super) carry: [u8; 4],
    pub(super) carry_len: usize,
    pub(super) shape_error: bool,
    pub(super) failed: Option<StreamError>,
    /// The fast path's key stack, kept for reuse.
    pub(super) fast_keys: Vec<FastKey>,
    /// The fast path's record shapes, emptied at each chunk's start.
    pub(super) shapes: Vec<Shape>,
    /// The current chunk's [`string_ends`] marks, kept for reuse.
    pub(super) string_ends: Vec<u64>,
    /// Absolute offset where the fast path last gave up.
    pub(super) no_fast_until: u64,
    /// It gave up there because the value ran past the chunk's end, not
    /// because of anything in the input.
    pub(super) cut_by_chunk_end: bool,
    /// Bytes of the current chunk the fast path may still scan a second
    /// time (see `try_fast`).
    pub(super) rescan_budget: usize,
}

impl DetachedStreamFilter {
    /// Filters a response the way `filter_response` does for `records`.
    pub fn for_response(records: ResponseRecords, max_depth: usize) -> Self {
        let top = match records {
            ResponseRecords::None => Disp::Copy,
            ResponseRecords::JsonBody => Disp::Project {
                node: Node::Read,
                top: true,
            },
            ResponseRecords::Result | ResponseRecords::Results => Disp::Envelope,
        };
        DetachedStreamFilter::new(records, top, max_depth)
    }

    /// Projects one whole value, like [`crate::filter::reference::project`].
    pub fn for_value(max_depth: usize) -> Self {
        let top = Disp::Project {
            node: Node::Read,
            top: true,
        };
        DetachedStreamFilter::new(ResponseRecords::JsonBody, top, max_depth)
    }

    pub(super) fn new(records: ResponseRecords, top: Disp, max_depth: usize) -> Self {
        DetachedStreamFilter {
            limit: max_depth.min(MAX_SUPPORTED_DEPTH),
            records,
            st: St::Value,
            pending: top,
            // Sized for a typical record so a request does not regrow them.
            frames: Vec::with_capacity(16),
            key_raw: Vec::new(),
            key_esc: false,
            key_start: 0,
            arena: Vec::with_capacity(512),
            keys: Vec::with_capacity(64),
            indexes: Vec::new(),
            live_indexes: 0,
            hasher: RandomState::new(),
            num: Num::new(false),
            lit: Lit {
                text: b"",
                got: 0,
                emit: false,
            },
            removed: 0,
            offset: 0,
            carry: [0; 4],
            carry_len: 0,
            shape_error: false,
            failed: None,
            fast_keys: Vec::with_capacity(64),
            shapes: Vec::new(),
            string_ends: Vec::new(),
            no_fast_until: 0,
            cut_by_chunk_end: false,
            rescan_budget: 0,
        }
    }

    /// Filters the next chunk, appending whatever output is already decided.
    /// `read` and `relative_to` must be the same on every call.
    pub fn feed(
        &mut self,
        read: &AccessTree,
        relative_to: Option<&AttrPath>,
        chunk: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), StreamError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let roots = Roots::new(read, relative_to);
        let result = self.feed_utf8(roots, chunk, out);
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        result
    }

    /// Ends the stream; returns how many attributes were removed.
    pub fn finish(
        &mut self,
        read: &AccessTree,
        relative_to: Option<&AttrPath>,
        out: &mut Vec<u8>,
    ) -> Result<usize, StreamError> {
        // Output is emitted as soon as it is decided, so nothing is left to
        // flush; the parameters keep the signature symmetric with `feed`.
        let _ = (read, relative_to, &out);
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = self.finish_inner();
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        result
    }

    pub(super) fn finish_inner(&mut self) -> Result<usize, StreamError> {
        if self.carry_len > 0 {
            return Err(StreamError::InvalidUtf8(self.offset));
        }
        if self.st == St::Num {
            match self.num.complete() {
                Ok(true) => self.st = St::After,
                Ok(false) => return Err(StreamError::Truncated),
                Err(()) => return Err(StreamError::NumberOutOfRange(self.offset)),
            }
        }
        if self.st != St::After || !self.frames.is_empty() {
            return Err(StreamError::Truncated);
        }
        if self.shape_error {
            return Err(StreamError::UnexpectedShape);
        }
        Ok(self.removed)
    }

    /// Validates UTF-8 chunk by chunk (a sequence split across chunks is
    /// carried over), so the parser itself only ever sees valid text. Outside
    /// strings any non-ASCII byte is a syntax error anyway, so validating the
    /// whole stream refuses exactly what validating each string would.
    pub(super) fn feed_utf8(
        &mut self,
        roots: Roots<'_>,
        mut chunk: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), StreamError> {
        if self.carry_len > 0 {
            let full = match self.carry[0] {
                0xC0..=0xDF => 2,
                0xE0..=0xEF => 3,
                _ => 4,
            };
            let take = (full - self.carry_len).min(chunk.len());
            self.carry[self.carry_len..self.carry_len + take].copy_from_slice(&chunk[..take]);
            self.carry_len += take;
            chunk = &chunk[take..];
            if self.carry_len < full {
                return Ok(());
            }
            let seq = self.carry;
            if std::str::from_utf8(&seq[..full]).is_err() {
                return Err(StreamError::InvalidUtf8(self.offset));
            }
            self.carry_len = 0;
            self.run(roots, &seq[..full], out)?;
        }
        // SIMD-checked. The basic check is the faster; only a chunk it
        // refuses is checked again to learn, like std, where and why (a
        // sequence cut by the chunk's end is no error).
        if simdutf8::basic::from_utf8(chunk).is_ok() {
            return self.run(roots, chunk, out);
        }
        match simdutf8::compat::from_utf8(chunk) {
            Ok(_) => self.run(roots, chunk, out),
            Err(e) => {
                let good = e.valid_up_to();
                if e.error_len().is_some() {
                    return Err(StreamError::InvalidUtf8(self.offset + good as u64));
                }
                self.run(roots, &chunk[..good], out)?;
                let tail = &chunk[good..];
                self.carry[..tail.len()].copy_from_slice(tail);
                self.carry_len = tail.len();
                Ok(())
            }
        }
    }

    pub(super) fn syntax(&self, i: usize) -> StreamError {
        StreamError::Syntax(self.offset + i as u64)
    }

    pub(super) fn key_bytes(&self, k: usize) -> Option<&[u8]> {
        let e = self.keys.get(k)?;
        self.arena.get(e.start..e.start + e.len)
    }

    pub(super) fn resolve<'r>(
        &self,
        node: Node,
        roots: Roots<'r>,
        parent: Option<&'r AccessTree>,
    ) -> Result<&'r AccessTree, StreamError> {
        let tree = match node {
            Node::Read => Some(roots.read),
            Node::Result => roots.result,
            Node::Inherit => parent,
            Node::Key(k) => parent.and_then(|p| p.child_bytes(self.key_bytes(k)?)),
        };
        tree.ok_or(StreamError::Internal)
    }

    /// Whether a `Project` decision turns out to be a full grant. `Key` and
    /// `Inherit` nodes were checked when they were created.
    pub(super) fn node_is_all(node: Node, roots: Roots<'_>) -> bool {
        match node {
            Node::Read => roots.read.is_all(),
            Node::Result => roots.result.is_some_and(AccessTree::is_all),
            Node::Inherit | Node::Key(_) => false,
        }
    }

    pub(super) fn item_disp(&self, mode: Mode) -> Disp {
        match mode {
            Mode::Copy => Disp::Copy,
            Mode::Project => Disp::Project {
                node: Node::Inherit,
                top: false,
            },
            Mode::ResultsRecords => Disp::Project {
                node: Node::Read,
                top: true,
            },
            Mode::ResultsObjects => Disp::ObjectsOnly,
            Mode::Skip | Mode::Envelope => Disp::Skip,
        }
    }

    pub(super) fn emit_prefix(&mut self, out: &mut Vec<u8>) {
        if let Some(f) = self.frames.last_mut() {
            if f.emitted {
                out.push(b',');
            }
            f.emitted = true;
            if f.is_obj {
                out.push(b'"');
                if self.key_esc {
                    out.extend_from_slice(&self.key_raw);
                } else if let Some(k) = self.keys.last() {
                    append(out, &self.arena, k.start, k.start + k.len);
                }
                out.extend_from_slice(b"\":");
            }
        }
    }

    pub(super) fn run(
        &mut self,
        roots: Roots<'_>,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), StreamError> {
        // The projecting frames' trees, re-derived from the roots on every
        // call because the filter keeps no borrow between chunks.
        let mut trees: [Option<&AccessTree>; TREE_SLOTS] = [None; TREE_SLOTS];
        for d in 0..self.frames.len() {
            let f = self.frames[d];
            if f.mode == Mode::Project {
                let parent = d.checked_sub(1).and_then(|p| trees[p]);
                let tree = self.resolve(f.node, roots, parent)?;
                *trees.get_mut(d).ok_or(StreamError::Internal)? = Some(tree);
            }
        }
        let mut ends = std::mem::take(&mut self.string_ends);
        string_ends::mark(input, &mut ends);
        // A shape's positions and tree address hold for this chunk only.
        for shape in &mut self.shapes {
            shape.tree = 0;
        }
        self.rescan_budget = input.len();
        let n = input.len();
        let mut i = 0;
        while i < n {
            match self.st {
                St::Str(ctx, esc) => {
                    i = self.scan_string(ctx, esc, roots, &trees, input, &ends, i, out)?
                }
                St::After => {
                    let b = input[i];
                    match b {
                        b' ' | b'\n' | b'\r' | b'\t' => {}
                        b',' => {
                            let Some(f) = self.frames.last() else {
                                return Err(self.syntax(i));
                            };
                            if f.is_obj {
                                self.st = St::Key;
                            } else {
                                self.pending = self.item_disp(f.mode);
                                self.st = St::Value;
                            }
                        }
                        b']' | b'}' => self.close(b, i, out)?,
                        _ => return Err(self.syntax(i)),
                    }
                    i += 1;
                }
                St::Value | St::ValueOrEnd => {
                    let b = input[i];
                    if is_ws(b) {
                        i += 1;
                    } else if b == b']' && self.st == St::ValueOrEnd {
                        self.close(b, i, out)?;
                        i += 1;
                    } else {
                        i = match self.try_fast(roots, &trees, input, &ends, i, out) {
                            Some(end) => end,
                            None => self.start_value(roots, &mut trees, input, i, out)?,
                        };
                    }
                }
                St::KeyOrEnd | St::Key => {
                    let b = input[i];
                    match b {
                        b' ' | b'\n' | b'\r' | b'\t' => {}
                        b'"' => {
                            self.key_start = self.arena.len();
                            self.key_esc = false;
                            self.st = St::Str(Ctx::Key, Esc::Body);
                        }
                        b'}' if self.st == St::KeyOrEnd => self.close(b, i, out)?,
                        _ => return Err(self.syntax(i)),
                    }
                    i += 1;
                }
                St::Colon => {
                    match input[i] {
                        b' ' | b'\n' | b'\r' | b'\t' => {}
                        b':' => self.st = St::Value,
                        _ => return Err(self.syntax(i)),
                    }
                    i += 1;
                }
                St::Num => i = self.scan_number(input, i, out)?,
                St::Lit => i = self.scan_literal(input, i, out)?,
            }
        }
        self.offset += n as u64;
        self.string_ends = ends;
        Ok(())
    }

    /// Runs the value starting at `i` through the fast path when it can.
    /// `Some(end)`: the value is done and the state machine is after it.
    /// `None`: nothing has changed, and the state machine takes the value.
    pub(super) fn try_fast<'r>(
        &mut self,
        roots: Roots<'r>,
        trees: &[Option<&'r AccessTree>; TREE_SLOTS],
        input: &[u8],
        ends: &[u64],
        i: usize,
        out: &mut Vec<u8>,
    ) -> Option<usize> {
        // Values that start before the last bail are left to the state
        // machine, except that when the bail was only the chunk's end cutting
        // a record, the values nested in that record may take the fast path
        // again (each cut otherwise sent a whole record through the state
        // machine). Those second scans are limited to the chunk's length, so
        // the work stays linear however the input is built.
        let rescan = self.offset + (i as u64) < self.no_fast_until;
        if rescan && !(self.cut_by_chunk_end && self.rescan_budget > 0) {
            return None;
        }
        let b = *input.get(i)?;
        let depth = self.frames.len();
        let plan = match self.pending {
            Disp::Copy => Plan::Copy,
            Disp::Skip => Plan::Skip,
            Disp::Null => Plan::Null,
            Disp::Project { node, top } => {
                if Self::node_is_all(node, roots) {
                    Plan::Copy
                } else {
                    match b {
                        b'{' | b'[' => {
                            let parent = depth
                                .checked_sub(1)
                                .and_then(|p| trees.get(p).copied().flatten());
                            Plan::Project(self.resolve(node, roots, parent).ok()?)
                        }
                        b'n' => Plan::Copy,
                        _ => Plan::Removed { top },
                    }
                }
            }
            Disp::ObjectsOnly => {
                if b == b'{' && !roots.read.is_all() {
                    Plan::Project(roots.read)
                } else {
                    Plan::Copy
                }
            }
            Disp::Envelope | Disp::ResultsArray => return None,
        };
        let out_len = out.len();
        let emitted = self.frames.last().map(|f| f.emitted);
        let mut removed = 0;
        match plan {
            Plan::Skip => {}
            Plan::Copy | Plan::Project(_) => self.emit_prefix(out),
            Plan::Null => {
                self.emit_prefix(out);
                out.extend_from_slice(b"null");
            }
            Plan::Removed { top } => {
                removed = 1;
                if top {
                    self.emit_prefix(out);
                    out.extend_from_slice(b"null");
                }
            }
        }
        let mut keys = std::mem::take(&mut self.fast_keys);
        let mut shapes = std::mem::take(&mut self.shapes);
        keys.clear();
        let mut fast = Fast {
            input,
            ends,
            out,
            keys: &mut keys,
            shapes: &mut shapes,
            removed,
            depth,
            limit: self.limit,
            nest: 0,
            span: i,
        };
        let result = match plan {
            Plan::Copy => fast.copy(i),
            Plan::Skip | Plan::Null | Plan::Removed { .. } => fast.value::<false>(i),
            Plan::Project(tree) if b == b'{' => fast.project_object(tree, i),
            Plan::Project(tree) => fast.project_array(tree, i),
        };
        let removed = fast.removed;
        self.fast_keys = keys;
        self.shapes = shapes;
        if rescan {
            let scanned = match result {
                Ok(end) | Err(end) => end.saturating_sub(i),
            };
            self.rescan_budget = self.rescan_budget.saturating_sub(scanned);
        }
        match result {
            Ok(end) => {
                self.removed += removed;
                self.st = St::After;
                Some(end)
            }
            Err(at) => {
                out.truncate(out_len);
                if let (Some(f), Some(e)) = (self.frames.last_mut(), emitted) {
                    f.emitted = e;
                }
                self.no_fast_until = self.no_fast_until.max(self.offset + at as u64);
                self.cut_by_chunk_end = at >= input.len();
                None
            }
        }
    }

    pub(super) fn close(&mut self, b: u8, i: usize, out: &mut Vec<u8>) -> Result<(), StreamError> {
        let Some(f) = self.frames.pop() else {
            return Err(self.syntax(i));
        };
        if f.is_obj != (b == b'}') {
            return Err(self.syntax(i));
        }
        if f.mode != Mode::Skip {
            out.push(b);
        }
        if f.is_obj {
            self.keys.truncate(f.keys_from);
            self.arena.truncate(f.bytes_from);
            if f.indexed {
                self.live_indexes = self.live_indexes.saturating_sub(1);
                if let Some(map) = self.indexes.get_mut(self.live_indexes) {
                    map.clear();
                }
            }
        }
        self.st = St::After;
        Ok(())
    }
}
