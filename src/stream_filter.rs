//! One-pass response filter that never builds a DOM.
//!
//! The reference path ([`crate::response_filter::filter_response`]) parses the
//! whole body into a `serde_json::Value`, projects it and re-serialises it. On a
//! 100 KB `entity.find` that is almost all of the gateway's CPU time. This module
//! walks the bytes once instead: spans of granted values are copied to the
//! output, everything else is validated and dropped. State is a stack of
//! container frames (bounded by the depth limit), the keys of the objects that
//! are currently open (needed to refuse duplicates, exactly like
//! [`crate::json::parse_strict`]) and a few bytes of the token in progress, so
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

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

use crate::json::MAX_SUPPORTED_DEPTH;
use crate::response_filter::{FilterFailure, Filtered};
use crate::routes::ResponseRecords;
use crate::schema::{key_hash, key_word, last_word, same_rest, AccessTree, AttrPath};
use crate::string_ends;

/// One slot per possible open container; the depth limit never exceeds
/// [`MAX_SUPPORTED_DEPTH`].
const TREE_SLOTS: usize = MAX_SUPPORTED_DEPTH + 1;

/// Objects with more keys than this switch from a linear duplicate scan to a
/// hash index, so a hostile object with millions of keys stays linear overall.
const INDEX_AT: usize = 24;

/// Why the streaming filter refused its input. Offsets are byte positions in
/// the whole stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("invalid JSON at byte {0}")]
    Syntax(u64),
    #[error("invalid UTF-8 at byte {0}")]
    InvalidUtf8(u64),
    #[error("duplicate object key ending at byte {0}")]
    DuplicateKey(u64),
    #[error("JSON nesting exceeds the maximum depth of {0}")]
    TooDeep(usize),
    #[error("number out of range at byte {0}")]
    NumberOutOfRange(u64),
    #[error("input ended inside a JSON value")]
    Truncated,
    #[error("the response is not the expected envelope")]
    UnexpectedShape,
    /// A broken internal invariant; reported rather than panicking so a bug
    /// fails one response instead of the worker.
    #[error("internal filter error")]
    Internal,
}

impl StreamError {
    /// The reference filter's classification of the same failure.
    pub fn failure(&self) -> FilterFailure {
        match self {
            StreamError::UnexpectedShape => FilterFailure::UnexpectedShape,
            _ => FilterFailure::Malformed,
        }
    }
}

/// The trees a projection starts from: the read tree for records and the
/// (possibly absent) subtree for `result` when the call addressed an attribute.
#[derive(Clone, Copy)]
struct Roots<'a> {
    read: &'a AccessTree,
    result: Option<&'a AccessTree>,
}

impl<'a> Roots<'a> {
    fn new(read: &'a AccessTree, relative_to: Option<&AttrPath>) -> Self {
        let result = match relative_to {
            None => Some(read),
            Some(p) => read.subtree(p),
        };
        Roots { read, result }
    }
}

/// What happens to the contents of an open container.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
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
enum Node {
    Read,
    Result,
    /// The enclosing frame's tree: plural elements share their array's tree.
    Inherit,
    /// The child, named by this entry of the key set, of the enclosing object's tree.
    Key(usize),
}

/// The decision for the next value, taken before its first byte is seen.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Disp {
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
struct Frame {
    is_obj: bool,
    mode: Mode,
    node: Node,
    /// Something was written inside this container, so the next kept member
    /// needs a comma.
    emitted: bool,
    keys_from: usize,
    bytes_from: usize,
    indexed: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ctx {
    Key,
    Emit,
    Skip,
}

/// Position inside a string, resumable at any byte.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Esc {
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
enum St {
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

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum NumPhase {
    Start,
    Minus,
    Zero,
    Int,
    Frac0,
    Frac,
    ExpStart,
    ExpSign,
    Exp,
}

/// A number in progress. The significand/exponent bookkeeping mirrors
/// serde_json's parser (without `float_roundtrip`) step by step, so that
/// exactly the numbers it reports as out of range are refused here too.
#[derive(Clone, Copy, Debug)]
struct Num {
    phase: NumPhase,
    sig: u64,
    exp: i32,
    long: bool,
    float: bool,
    sig_full: bool,
    exp_pos: bool,
    e: i32,
    e_over: bool,
    emit: bool,
}

impl Num {
    fn new(emit: bool) -> Num {
        Num {
            phase: NumPhase::Start,
            sig: 0,
            exp: 0,
            long: false,
            float: false,
            sig_full: false,
            exp_pos: true,
            e: 0,
            e_over: false,
            emit,
        }
    }

    /// serde_json's `overflow!(a * 10 + b, max)`.
    fn overflows(a: u64, b: u64, max: u64) -> bool {
        a >= max / 10 && (a > max / 10 || b > max % 10)
    }

    fn int_digit(&mut self, d: u64) {
        if self.long {
            self.exp = self.exp.saturating_add(1);
        } else if Num::overflows(self.sig, d, u64::MAX) {
            self.long = true;
            self.float = true;
            self.exp = self.exp.saturating_add(1);
        } else {
            self.sig = self.sig * 10 + d;
        }
    }

    fn frac_digit(&mut self, d: u64) {
        if self.sig_full {
            return;
        }
        if Num::overflows(self.sig, d, u64::MAX) {
            self.sig_full = true;
        } else {
            self.sig = self.sig * 10 + d;
            self.exp = self.exp.saturating_sub(1);
        }
    }

    fn exp_digit(&mut self, d: u8) {
        if self.e_over {
            return;
        }
        let d = i32::from(d);
        if Num::overflows(self.e as u64, d as u64, i32::MAX as u64) {
            self.e_over = true;
        } else {
            self.e = self.e * 10 + d;
        }
    }

    /// `Ok(false)`: the text so far is not a complete number.
    fn complete(&self) -> Result<bool, ()> {
        if !matches!(
            self.phase,
            NumPhase::Zero | NumPhase::Int | NumPhase::Frac | NumPhase::Exp
        ) {
            return Ok(false);
        }
        if !self.float {
            return Ok(true);
        }
        if self.e_over {
            return if self.sig != 0 && self.exp_pos {
                Err(())
            } else {
                Ok(true)
            };
        }
        let exponent = if self.exp_pos {
            self.exp.saturating_add(self.e)
        } else {
            self.exp.saturating_sub(self.e)
        };
        if out_of_range(self.sig, exponent) {
            Err(())
        } else {
            Ok(true)
        }
    }
}

/// serde_json's `f64_from_parts` range check: `sig * 10^exponent` overflows.
fn out_of_range(sig: u64, exponent: i32) -> bool {
    // Below 289, even u64::MAX * 10^exponent stays finite; negative exponents
    // only divide.
    if exponent < 289 {
        return false;
    }
    let f = sig as f64;
    if exponent > 308 {
        return f != 0.0;
    }
    // serde_json multiplies by its literal table entry `1e{exponent}`; parsing
    // the same spelling yields the same correctly rounded value.
    let digits = [
        b'1',
        b'e',
        b'0' + (exponent / 100) as u8,
        b'0' + (exponent / 10 % 10) as u8,
        b'0' + (exponent % 10) as u8,
    ];
    let pow = std::str::from_utf8(&digits)
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(f64::INFINITY);
    (f * pow).is_infinite()
}

/// Runs the number machine over `input` from `start`: `Ok((end, ended))`,
/// where `ended` means a byte that cannot continue the number was reached at
/// `end`, or `Err(pos)` for a syntax error at `pos`. Shared by the state
/// machine and the fast path so both accept exactly the same numbers.
fn number_run(num: &mut Num, input: &[u8], start: usize) -> Result<(usize, bool), usize> {
    let mut i = start;
    let ended = loop {
        let Some(&b) = input.get(i) else {
            break false;
        };
        let d = b.wrapping_sub(b'0');
        let digit = d < 10;
        match num.phase {
            NumPhase::Start if b == b'-' => num.phase = NumPhase::Minus,
            NumPhase::Start | NumPhase::Minus => {
                if b == b'0' {
                    num.phase = NumPhase::Zero;
                } else if digit {
                    num.sig = u64::from(d);
                    num.phase = NumPhase::Int;
                } else {
                    return Err(i);
                }
            }
            NumPhase::Zero | NumPhase::Int => {
                if digit {
                    if num.phase == NumPhase::Zero {
                        // serde_json: "There can be only one leading '0'".
                        return Err(i);
                    }
                    num.int_digit(u64::from(d));
                } else if b == b'.' {
                    num.float = true;
                    num.phase = NumPhase::Frac0;
                } else if b | 0x20 == b'e' {
                    num.float = true;
                    num.phase = NumPhase::ExpStart;
                } else {
                    break true;
                }
            }
            NumPhase::Frac0 | NumPhase::Frac => {
                if digit {
                    num.frac_digit(u64::from(d));
                    num.phase = NumPhase::Frac;
                } else if num.phase == NumPhase::Frac0 {
                    return Err(i);
                } else if b | 0x20 == b'e' {
                    num.phase = NumPhase::ExpStart;
                } else {
                    break true;
                }
            }
            NumPhase::ExpStart if b == b'+' => num.phase = NumPhase::ExpSign,
            NumPhase::ExpStart if b == b'-' => {
                num.exp_pos = false;
                num.phase = NumPhase::ExpSign;
            }
            NumPhase::ExpStart | NumPhase::ExpSign => {
                if digit {
                    num.e = i32::from(d);
                    num.phase = NumPhase::Exp;
                } else {
                    return Err(i);
                }
            }
            NumPhase::Exp => {
                if digit {
                    num.exp_digit(d);
                } else {
                    break true;
                }
            }
        }
        i += 1;
    };
    Ok((i, ended))
}

#[derive(Clone, Copy, Debug)]
struct Lit {
    text: &'static [u8],
    got: usize,
    emit: bool,
}

#[derive(Clone, Copy, Debug)]
struct KeyEntry {
    start: usize,
    len: usize,
    /// First eight bytes, so most comparisons never touch the arena.
    prefix: u64,
}

#[derive(Clone, Copy)]
enum Act {
    Copy,
    Skip,
    Project(Node),
    Mode(Mode),
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\r' | b'\t')
}

/// Appends `src[from..to]`. Most keys, strings and numbers are a few bytes,
/// where `extend_from_slice`'s call into `memmove` costs more than the copy;
/// a fixed 16-byte block is copied inline instead (and the excess dropped).
#[inline(always)]
fn append(dst: &mut Vec<u8>, src: &[u8], from: usize, to: usize) {
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

fn hex_digit(b: u8) -> Option<u16> {
    match b {
        b'0'..=b'9' => Some(u16::from(b - b'0')),
        b'a'..=b'f' => Some(u16::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u16::from(b - b'A' + 10)),
        _ => None,
    }
}

fn hex4(s: &[u8]) -> Option<u16> {
    s.iter()
        .try_fold(0u16, |acc, &b| Some(acc << 4 | hex_digit(b)?))
}

/// Unescapes an already validated raw key into `out`. `None` only if the
/// scanner's validation and this function disagree (a bug).
fn unescape(raw: &[u8], out: &mut Vec<u8>) -> Option<()> {
    let mut i = 0;
    while i < raw.len() {
        let plain_end = raw[i..]
            .iter()
            .position(|&b| b == b'\\')
            .map_or(raw.len(), |p| i + p);
        out.extend_from_slice(&raw[i..plain_end]);
        i = plain_end;
        if i >= raw.len() {
            break;
        }
        let e = *raw.get(i + 1)?;
        i += 2;
        let c = match e {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hi = hex4(raw.get(i..i + 4)?)?;
                i += 4;
                let cp = if (0xD800..=0xDBFF).contains(&hi) {
                    if raw.get(i..i + 2)? != b"\\u" {
                        return None;
                    }
                    let lo = hex4(raw.get(i + 2..i + 6)?)?;
                    i += 6;
                    if !(0xDC00..=0xDFFF).contains(&lo) {
                        return None;
                    }
                    0x10000 + ((u32::from(hi) - 0xD800) << 10 | (u32::from(lo) - 0xDC00))
                } else {
                    u32::from(hi)
                };
                char::from_u32(cp)?
            }
            _ => return None,
        };
        let mut buf = [0u8; 4];
        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
    }
    Some(())
}

/// The incremental filter without borrowed trees: the caller passes the read
/// tree (and `relative_to`) to every call, so the filter can live in a
/// per-request context that also owns the policy snapshot. Use
/// [`StreamFilter`] when a borrow for the whole stream is convenient.
///
/// After an error every further call returns the same error.
pub struct DetachedStreamFilter {
    limit: usize,
    records: ResponseRecords,
    st: St,
    pending: Disp,
    frames: Vec<Frame>,
    /// The raw spelling of the current key, kept only when it has escapes
    /// (otherwise its arena entry is the raw spelling).
    key_raw: Vec<u8>,
    key_esc: bool,
    /// Where the current key's bytes begin in the arena.
    key_start: usize,
    /// Unescaped keys of every open object, for duplicate detection and to
    /// name the tree node of projected children.
    arena: Vec<u8>,
    keys: Vec<KeyEntry>,
    /// Hash indexes of open large objects, used as a stack; kept for reuse.
    indexes: Vec<HashMap<u64, usize>>,
    live_indexes: usize,
    hasher: RandomState,
    num: Num,
    lit: Lit,
    removed: usize,
    /// Bytes consumed before the current chunk.
    offset: u64,
    /// Leading bytes of a UTF-8 sequence split across chunks.
    carry: [u8; 4],
    carry_len: usize,
    shape_error: bool,
    failed: Option<StreamError>,
    /// The fast path's key stack, kept for reuse.
    fast_keys: Vec<FastKey>,
    /// The fast path's record shapes, emptied at each chunk's start.
    shapes: Vec<Shape>,
    /// The current chunk's [`string_ends`] marks, kept for reuse.
    string_ends: Vec<u64>,
    /// Absolute offset where the fast path last gave up.
    no_fast_until: u64,
    /// It gave up there because the value ran past the chunk's end, not
    /// because of anything in the input.
    cut_by_chunk_end: bool,
    /// Bytes of the current chunk the fast path may still scan a second
    /// time (see `try_fast`).
    rescan_budget: usize,
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

    /// Projects one whole value, like `filter::project`.
    pub fn for_value(max_depth: usize) -> Self {
        let top = Disp::Project {
            node: Node::Read,
            top: true,
        };
        DetachedStreamFilter::new(ResponseRecords::JsonBody, top, max_depth)
    }

    fn new(records: ResponseRecords, top: Disp, max_depth: usize) -> Self {
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

    fn finish_inner(&mut self) -> Result<usize, StreamError> {
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
    fn feed_utf8(
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

    fn syntax(&self, i: usize) -> StreamError {
        StreamError::Syntax(self.offset + i as u64)
    }

    fn key_bytes(&self, k: usize) -> Option<&[u8]> {
        let e = self.keys.get(k)?;
        self.arena.get(e.start..e.start + e.len)
    }

    fn resolve<'r>(
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
    fn node_is_all(node: Node, roots: Roots<'_>) -> bool {
        match node {
            Node::Read => roots.read.is_all(),
            Node::Result => roots.result.is_some_and(AccessTree::is_all),
            Node::Inherit | Node::Key(_) => false,
        }
    }

    fn item_disp(&self, mode: Mode) -> Disp {
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

    fn emit_prefix(&mut self, out: &mut Vec<u8>) {
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

    fn run(
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
    fn try_fast<'r>(
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

    fn close(&mut self, b: u8, i: usize, out: &mut Vec<u8>) -> Result<(), StreamError> {
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

    fn start_value<'r>(
        &mut self,
        roots: Roots<'r>,
        trees: &mut [Option<&'r AccessTree>; TREE_SLOTS],
        input: &[u8],
        i: usize,
        out: &mut Vec<u8>,
    ) -> Result<usize, StreamError> {
        let b = input[i];
        let act = match self.pending {
            Disp::Copy => Act::Copy,
            Disp::Skip => Act::Skip,
            Disp::Null => {
                self.emit_prefix(out);
                out.extend_from_slice(b"null");
                Act::Skip
            }
            Disp::Project { node, top } => {
                if Self::node_is_all(node, roots) {
                    Act::Copy
                } else {
                    match b {
                        b'{' | b'[' => Act::Project(node),
                        b'n' => Act::Copy,
                        // Any other valid start is a scalar, which does not fit
                        // a partial grant; invalid bytes fail below.
                        _ => {
                            self.removed += 1;
                            if top {
                                self.emit_prefix(out);
                                out.extend_from_slice(b"null");
                            }
                            Act::Skip
                        }
                    }
                }
            }
            Disp::Envelope => {
                if b == b'{' {
                    Act::Mode(Mode::Envelope)
                } else {
                    // The reference reports a malformed body before a wrong
                    // shape, so keep validating and decide at the end.
                    self.shape_error = true;
                    Act::Skip
                }
            }
            Disp::ResultsArray => {
                if b == b'[' {
                    Act::Mode(if self.records == ResponseRecords::Results {
                        Mode::ResultsRecords
                    } else {
                        Mode::ResultsObjects
                    })
                } else {
                    self.shape_error = true;
                    Act::Skip
                }
            }
            Disp::ObjectsOnly => {
                if b == b'{' && !roots.read.is_all() {
                    Act::Project(Node::Read)
                } else {
                    Act::Copy
                }
            }
        };
        let emit = !matches!(act, Act::Skip);
        match b {
            b'{' | b'[' => {
                let depth = self.frames.len();
                if depth >= self.limit {
                    return Err(StreamError::TooDeep(self.limit));
                }
                let (mode, node) = match act {
                    Act::Copy => (Mode::Copy, Node::Inherit),
                    Act::Skip => (Mode::Skip, Node::Inherit),
                    Act::Project(node) => (Mode::Project, node),
                    Act::Mode(m) => (m, Node::Inherit),
                };
                if mode == Mode::Project {
                    let parent = depth.checked_sub(1).and_then(|p| trees[p]);
                    let tree = self.resolve(node, roots, parent)?;
                    *trees.get_mut(depth).ok_or(StreamError::Internal)? = Some(tree);
                }
                if emit {
                    self.emit_prefix(out);
                    out.push(b);
                }
                self.frames.push(Frame {
                    is_obj: b == b'{',
                    mode,
                    node,
                    emitted: false,
                    keys_from: self.keys.len(),
                    bytes_from: self.arena.len(),
                    indexed: false,
                });
                if b == b'{' {
                    self.st = St::KeyOrEnd;
                } else {
                    self.pending = self.item_disp(mode);
                    self.st = St::ValueOrEnd;
                }
                Ok(i + 1)
            }
            b'"' => {
                if emit {
                    self.emit_prefix(out);
                    out.push(b'"');
                }
                let ctx = if emit { Ctx::Emit } else { Ctx::Skip };
                self.st = St::Str(ctx, Esc::Body);
                Ok(i + 1)
            }
            b'-' | b'0'..=b'9' => {
                if emit {
                    self.emit_prefix(out);
                }
                self.num = Num::new(emit);
                self.st = St::Num;
                Ok(i)
            }
            b't' | b'f' | b'n' => {
                if emit {
                    self.emit_prefix(out);
                }
                let text: &'static [u8] = match b {
                    b't' => b"true",
                    b'f' => b"false",
                    _ => b"null",
                };
                self.lit = Lit { text, got: 1, emit };
                self.st = St::Lit;
                Ok(i + 1)
            }
            _ => Err(self.syntax(i)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn scan_string(
        &mut self,
        ctx: Ctx,
        mut esc: Esc,
        roots: Roots<'_>,
        trees: &[Option<&AccessTree>; TREE_SLOTS],
        input: &[u8],
        ends: &[u64],
        start: usize,
        out: &mut Vec<u8>,
    ) -> Result<usize, StreamError> {
        let n = input.len();
        let mut i = start;
        loop {
            match esc {
                Esc::Body => {
                    i = string_ends::next(ends, i);
                    let Some(&b) = input.get(i) else {
                        break;
                    };
                    if b == b'"' {
                        match ctx {
                            Ctx::Emit => append(out, input, start, i + 1),
                            Ctx::Key => {
                                append(&mut self.arena, input, start, i);
                                self.end_key(roots, trees, i)?;
                                return Ok(i + 1);
                            }
                            Ctx::Skip => {}
                        }
                        self.st = St::After;
                        return Ok(i + 1);
                    }
                    if b != b'\\' {
                        return Err(self.syntax(i));
                    }
                    if ctx == Ctx::Key {
                        self.key_esc = true;
                    }
                    esc = Esc::Backslash;
                    i += 1;
                }
                Esc::Backslash => {
                    let Some(&b) = input.get(i) else {
                        break;
                    };
                    esc = match b {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Esc::Body,
                        b'u' => Esc::Hex {
                            val: 0,
                            got: 0,
                            high: 0,
                        },
                        _ => return Err(self.syntax(i)),
                    };
                    i += 1;
                }
                Esc::Hex { val, got, high } => {
                    let Some(&b) = input.get(i) else {
                        break;
                    };
                    let Some(d) = hex_digit(b) else {
                        return Err(self.syntax(i));
                    };
                    i += 1;
                    let val = val << 4 | d;
                    let got = got + 1;
                    esc = if got < 4 {
                        Esc::Hex { val, got, high }
                    } else if high != 0 {
                        if !(0xDC00..=0xDFFF).contains(&val) {
                            return Err(self.syntax(i - 1));
                        }
                        Esc::Body
                    } else if (0xDC00..=0xDFFF).contains(&val) {
                        return Err(self.syntax(i - 1));
                    } else if (0xD800..=0xDBFF).contains(&val) {
                        Esc::LowBackslash(val)
                    } else {
                        Esc::Body
                    };
                }
                Esc::LowBackslash(high) => {
                    let Some(&b) = input.get(i) else {
                        break;
                    };
                    if b != b'\\' {
                        return Err(self.syntax(i));
                    }
                    esc = Esc::LowU(high);
                    i += 1;
                }
                Esc::LowU(high) => {
                    let Some(&b) = input.get(i) else {
                        break;
                    };
                    if b != b'u' {
                        return Err(self.syntax(i));
                    }
                    esc = Esc::Hex {
                        val: 0,
                        got: 0,
                        high,
                    };
                    i += 1;
                }
            }
        }
        // The chunk ended inside the string: what is decided goes out now.
        match ctx {
            Ctx::Emit => append(out, input, start, n),
            Ctx::Key => append(&mut self.arena, input, start, n),
            Ctx::Skip => {}
        }
        self.st = St::Str(ctx, esc);
        Ok(n)
    }

    /// A key is complete: refuse duplicates and decide what its value gets.
    fn end_key(
        &mut self,
        roots: Roots<'_>,
        trees: &[Option<&AccessTree>; TREE_SLOTS],
        at: usize,
    ) -> Result<(), StreamError> {
        let start = self.key_start;
        if self.key_esc {
            // The raw spelling is needed again if the member is kept.
            self.key_raw.clear();
            self.key_raw
                .extend_from_slice(self.arena.get(start..).ok_or(StreamError::Internal)?);
            self.arena.truncate(start);
            unescape(&self.key_raw, &mut self.arena).ok_or(StreamError::Internal)?;
        }
        let len = self.arena.len() - start;
        let depth = self.frames.len();
        let Some(frame) = self.frames.last_mut() else {
            return Err(StreamError::Internal);
        };
        let key = &self.arena[start..];
        let prefix = key_word(key);
        let from = frame.keys_from;
        let arena = &self.arena;
        let same = |e: &KeyEntry| {
            e.prefix == prefix && e.len == len && arena.get(e.start..e.start + e.len) == Some(key)
        };
        let count = self.keys.len() - from;
        let dup = if count < INDEX_AT {
            self.keys[from..].iter().any(same)
        } else {
            if !frame.indexed {
                if self.live_indexes == self.indexes.len() {
                    self.indexes.push(HashMap::new());
                }
                let map = self
                    .indexes
                    .get_mut(self.live_indexes)
                    .ok_or(StreamError::Internal)?;
                map.clear();
                for (j, e) in self.keys.iter().enumerate().skip(from) {
                    let h = self.hasher.hash_one(&arena[e.start..e.start + e.len]);
                    map.entry(h).or_insert(j);
                }
                self.live_indexes += 1;
                frame.indexed = true;
            }
            let map = self
                .indexes
                .get_mut(self.live_indexes - 1)
                .ok_or(StreamError::Internal)?;
            let h = self.hasher.hash_one(key);
            match map.get(&h) {
                // A different key with the same 64-bit hash: astronomically
                // rare with a random key, so a linear scan is fine.
                Some(&j) => {
                    self.keys.get(j).is_some_and(same) || self.keys[from..].iter().any(same)
                }
                None => {
                    map.insert(h, self.keys.len());
                    false
                }
            }
        };
        if dup {
            return Err(StreamError::DuplicateKey(self.offset + at as u64));
        }
        let idx = self.keys.len();
        self.keys.push(KeyEntry { start, len, prefix });
        self.pending = match frame.mode {
            Mode::Copy => Disp::Copy,
            Mode::Skip => Disp::Skip,
            Mode::Project => {
                let tree = depth
                    .checked_sub(1)
                    .and_then(|d| trees.get(d).copied().flatten())
                    .ok_or(StreamError::Internal)?;
                match tree.child_word(key, prefix) {
                    None => {
                        self.removed += 1;
                        Disp::Skip
                    }
                    Some(t) if t.is_all() => Disp::Copy,
                    Some(_) => Disp::Project {
                        node: Node::Key(idx),
                        top: false,
                    },
                }
            }
            Mode::Envelope => match key {
                b"result" => match roots.result {
                    None => {
                        self.removed += 1;
                        Disp::Null
                    }
                    Some(_) => Disp::Project {
                        node: Node::Result,
                        top: true,
                    },
                },
                b"results" => Disp::ResultsArray,
                _ => Disp::Copy,
            },
            Mode::ResultsRecords | Mode::ResultsObjects => return Err(StreamError::Internal),
        };
        self.st = St::Colon;
        Ok(())
    }

    fn scan_number(
        &mut self,
        input: &[u8],
        start: usize,
        out: &mut Vec<u8>,
    ) -> Result<usize, StreamError> {
        let mut num = self.num;
        let (i, ended) = number_run(&mut num, input, start).map_err(|p| self.syntax(p))?;
        if num.emit {
            append(out, input, start, i);
        }
        self.num = num;
        if ended {
            match num.complete() {
                Ok(true) => self.st = St::After,
                Ok(false) => return Err(self.syntax(i)),
                Err(()) => return Err(StreamError::NumberOutOfRange(self.offset + i as u64)),
            }
        }
        Ok(i)
    }

    fn scan_literal(
        &mut self,
        input: &[u8],
        mut i: usize,
        out: &mut Vec<u8>,
    ) -> Result<usize, StreamError> {
        while let Some(&b) = input.get(i) {
            if self.lit.text.get(self.lit.got) != Some(&b) {
                return Err(self.syntax(i));
            }
            i += 1;
            self.lit.got += 1;
            if self.lit.got == self.lit.text.len() {
                if self.lit.emit {
                    out.extend_from_slice(self.lit.text);
                }
                self.st = St::After;
                break;
            }
        }
        Ok(i)
    }
}

/// Containers the fast path opens itself before it leaves the rest of a value
/// to the state machine; bounds its recursion, and so its stack, well below
/// the depth limit.
const FAST_NEST: usize = 48;

/// Keys one object may have in the fast path before a key whose Bloom bit is
/// taken sends it to the state machine, whose duplicate check switches to a
/// hash index for large objects; bounds the fast path's scans.
const FAST_KEYS: usize = 64;

/// `KEY_MASKS[n]` keeps the low `n` bytes of a word.
const KEY_MASKS: [u64; 9] = {
    let mut masks = [u64::MAX; 9];
    let mut n = 0;
    while n < 8 {
        masks[n] = (1u64 << (8 * n)) - 1;
        n += 1;
    }
    masks
};

/// A key of an object open in the fast path: a span of the input (keys with
/// escapes never get this far, so the span is also the unescaped key).
#[derive(Clone, Copy)]
struct FastKey {
    word: u64,
    start: usize,
    len: usize,
}

/// Shapes kept per chunk: one per tree the records of a response are
/// projected under (the record, each nested object, each plural's elements).
const MAX_SHAPES: usize = 8;

/// The keys, in order, of the last object projected under one tree in the
/// current chunk. Kept between chunks for their allocations only: positions
/// and tree addresses are valid within one chunk, so every chunk starts with
/// none.
#[derive(Default)]
struct Shape {
    /// The tree's address; 0 for a free entry.
    tree: usize,
    keys: Vec<ShapeKey>,
}

#[derive(Clone, Copy)]
struct ShapeKey {
    word: u64,
    /// The last eight bytes of a key longer than eight.
    last: u64,
    len: usize,
    /// Where the key lies in the chunk.
    start: usize,
    /// The position of the key's grant among the tree's children, if any.
    child: Option<usize>,
}

/// Where the fast path gave up on a value. It says nothing about why: the
/// state machine redoes the value from its start and produces the output, or
/// the error, itself.
type Bail = usize;

/// How the fast path treats the value it starts on.
#[derive(Clone, Copy)]
enum Plan<'r> {
    Copy,
    Skip,
    /// `null` written in its place, the value validated and dropped.
    Null,
    /// A scalar under a partial grant: counted, and replaced by `null` if `top`.
    Removed {
        top: bool,
    },
    Project(&'r AccessTree),
}

/// The fast path: a recursive descent over one value that lies wholly inside
/// the current chunk, deciding per member instead of per byte. It accepts a
/// subset of what the state machine accepts, and for that subset writes
/// exactly the state machine's output and counts the same removals. Anything
/// else (an escaped key, a value cut off by the chunk's end, a large object,
/// deep nesting, any error) is a [`Bail`], after which the caller throws away
/// what was written.
struct Fast<'a> {
    input: &'a [u8],
    /// `input`'s [`string_ends`] marks.
    ends: &'a [u64],
    out: &'a mut Vec<u8>,
    keys: &'a mut Vec<FastKey>,
    shapes: &'a mut Vec<Shape>,
    removed: usize,
    /// Open containers, the state machine's frames included.
    depth: usize,
    limit: usize,
    /// Containers opened by the fast path itself.
    nest: usize,
    /// Start of the copied run not yet written out (copy mode).
    span: usize,
}

impl Fast<'_> {
    #[inline(always)]
    fn byte(&self, i: usize) -> Result<u8, Bail> {
        self.input.get(i).copied().ok_or(i)
    }

    /// The first byte at or after `i` that is not whitespace, and where it
    /// is: the caller dispatches on it without loading it again. When
    /// copying, whitespace ends the copied run, as the state machine drops
    /// it too.
    #[inline(always)]
    fn ws<const EMIT: bool>(&mut self, i: usize) -> Result<(usize, u8), Bail> {
        let mut b = self.byte(i)?;
        // Every byte that may come next in valid JSON is above the space.
        if b > b' ' {
            return Ok((i, b));
        }
        let mut j = i;
        while is_ws(b) {
            j += 1;
            b = self.byte(j)?;
        }
        if EMIT && j > i {
            self.flush(i);
            self.span = j;
        }
        Ok((j, b))
    }

    #[inline(always)]
    fn flush(&mut self, to: usize) {
        append(self.out, self.input, self.span, to);
    }

    #[inline(always)]
    fn open(&mut self, i: usize) -> Result<(), Bail> {
        if self.depth >= self.limit || self.nest >= FAST_NEST {
            return Err(i);
        }
        self.depth += 1;
        self.nest += 1;
        Ok(())
    }

    #[inline(always)]
    fn close(&mut self) {
        self.depth = self.depth.saturating_sub(1);
        self.nest = self.nest.saturating_sub(1);
    }

    /// Validates one value, copying it when `EMIT`; returns where it ends.
    #[inline(always)]
    fn value<const EMIT: bool>(&mut self, i: usize) -> Result<usize, Bail> {
        let b = self.byte(i)?;
        self.value_at::<EMIT>(i, b)
    }

    /// [`value`](Self::value) when its first byte `b` is known. Scalars
    /// (three values in four in the demo records) are scanned in the caller:
    /// as a call of its own each paid more for saving and restoring
    /// registers than for its scan.
    #[inline(always)]
    fn value_at<const EMIT: bool>(&mut self, i: usize, b: u8) -> Result<usize, Bail> {
        match b {
            b'"' => self.string(i + 1),
            b'{' | b'[' => self.container::<EMIT>(i, b),
            b't' => self.literal(i, b"true"),
            b'f' => self.literal(i, b"false"),
            b'n' => self.literal(i, b"null"),
            b'-' | b'0'..=b'9' => self.number(i),
            _ => Err(i),
        }
    }

    fn container<const EMIT: bool>(&mut self, i: usize, b: u8) -> Result<usize, Bail> {
        if b == b'{' {
            self.object::<EMIT>(i)
        } else {
            self.array::<EMIT>(i)
        }
    }

    /// Copies one value as whole runs of input, without its whitespace.
    #[inline]
    fn copy(&mut self, i: usize) -> Result<usize, Bail> {
        let b = self.byte(i)?;
        self.copy_at(i, b)
    }

    /// [`copy`](Self::copy) when the value's first byte `b` is known.
    #[inline]
    fn copy_at(&mut self, i: usize, b: u8) -> Result<usize, Bail> {
        self.span = i;
        let end = self.value_at::<true>(i, b)?;
        self.flush(end);
        Ok(end)
    }

    fn literal(&self, i: usize, text: &[u8]) -> Result<usize, Bail> {
        if self.input.get(i..i + text.len()) == Some(text) {
            Ok(i + text.len())
        } else {
            Err(i)
        }
    }

    #[inline]
    fn number(&self, i: usize) -> Result<usize, Bail> {
        let mut j = i;
        if self.byte(j)? == b'-' {
            j += 1;
        }
        let first = self.byte(j)?;
        let digits = j;
        while self.byte(j)?.is_ascii_digit() {
            j += 1;
        }
        let next = self.byte(j)?;
        let count = j - digits;
        // A short integer without a leading zero is neither malformed nor out
        // of range; anything else runs serde_json's bookkeeping.
        if count > 0
            && count <= 19
            && (first != b'0' || count == 1)
            && next != b'.'
            && next | 0x20 != b'e'
        {
            return Ok(j);
        }
        let mut num = Num::new(false);
        match number_run(&mut num, self.input, i) {
            Ok((end, true)) if num.complete() == Ok(true) => Ok(end),
            _ => Err(i),
        }
    }

    /// `i` is just past the opening quote; returns the position past the
    /// closing one. The chunk is valid UTF-8 already, so only escapes and
    /// control characters need checking.
    #[inline(always)]
    fn string(&self, i: usize) -> Result<usize, Bail> {
        let mut j = i;
        loop {
            j = string_ends::next(self.ends, j);
            match self.byte(j)? {
                b'"' => return Ok(j + 1),
                b'\\' => j = self.escape(j + 1)?,
                _ => return Err(j),
            }
        }
    }

    /// `i` is just past a backslash. The state machine's `Esc` rules: a
    /// leading surrogate must be followed by an escaped trailing one, and a
    /// trailing one must not stand alone.
    fn escape(&self, i: usize) -> Result<usize, Bail> {
        match self.byte(i)? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Ok(i + 1),
            b'u' => {
                let hex = |at: usize| self.input.get(at..at + 4).and_then(hex4).ok_or(at);
                let high = hex(i + 1)?;
                let j = i + 5;
                if (0xDC00..=0xDFFF).contains(&high) {
                    return Err(j);
                }
                if !(0xD800..=0xDBFF).contains(&high) {
                    return Ok(j);
                }
                if self.input.get(j..j + 2) != Some(b"\\u") {
                    return Err(j);
                }
                let low = hex(j + 2)?;
                if !(0xDC00..=0xDFFF).contains(&low) {
                    return Err(j);
                }
                Ok(j + 6)
            }
            _ => Err(i),
        }
    }

    /// A key, `i` just past its opening quote. Refuses (by bailing) escapes
    /// and duplicates among the object's keys from `base`. `seen` is a
    /// one-word Bloom filter of those keys, so a new key is usually known to
    /// be new without a scan. Returns the position past the closing quote
    /// and the key's [`key_word`] and [`key_hash`].
    #[inline(always)]
    fn key(&mut self, i: usize, base: usize, seen: &mut u64) -> Result<(usize, u64, u64), Bail> {
        let (end, word) = self.key_span(i)?;
        let hash = key_hash(word, end - i);
        self.note_key(i, end, word, hash, base, seen)?;
        Ok((end + 1, word, hash))
    }

    /// Where the key starting at `i` (just past its opening quote) ends, at
    /// its closing quote, and its [`key_word`]. Bails on an escape.
    #[inline(always)]
    fn key_span(&self, i: usize) -> Result<(usize, u64), Bail> {
        let end = string_ends::next(self.ends, i);
        if self.byte(end)? != b'"' {
            return Err(end);
        }
        let len = end - i;
        // One load of the bytes at the key, masked to its length: the closing
        // quote and what follows make eight bytes available almost always.
        let word = match self.input.get(i..).and_then(<[u8]>::first_chunk::<8>) {
            // A table, not a branch on the length, which no predictor guesses.
            Some(w) => u64::from_le_bytes(*w) & KEY_MASKS[len.min(8)],
            None => key_word(self.input.get(i..end).ok_or(i)?),
        };
        Ok((end, word))
    }

    /// Checks the key `i..end` against the object's keys from `base` and
    /// adds it to them.
    #[inline(always)]
    fn note_key(
        &mut self,
        i: usize,
        end: usize,
        word: u64,
        hash: u64,
        base: usize,
        seen: &mut u64,
    ) -> Result<(), Bail> {
        let len = end - i;
        let bit = 1u64 << (hash >> 58);
        if *seen & bit != 0 {
            // Only a key whose Bloom bit is taken costs a scan, so only then
            // is the object's size checked: a key with a free bit sets one of
            // 64, so past FAST_KEYS keys a second check comes within 64 more.
            if self.keys.len().saturating_sub(base) >= FAST_KEYS {
                return Err(i);
            }
            let input = self.input;
            let key = input.get(i..end);
            let dup = self.keys.get(base..).ok_or(i)?.iter().any(|k| {
                k.word == word && k.len == len && input.get(k.start..k.start + k.len) == key
            });
            if dup {
                return Err(i);
            }
        }
        *seen |= bit;
        self.keys.push(FastKey {
            word,
            start: i,
            len,
        });
        Ok(())
    }

    /// The key at `i..end` (word `word`) is the `k`th key of `shape`, still
    /// the shape of `tree` (a nested object may have taken its entry since):
    /// then the position of its grant among the tree's children, if it has
    /// one.
    #[inline(always)]
    fn shape_key(
        &self,
        tree: &AccessTree,
        shape: usize,
        k: usize,
        i: usize,
        end: usize,
        word: u64,
    ) -> Option<Option<usize>> {
        let shape = self.shapes.get(shape)?;
        if shape.tree != tree as *const AccessTree as usize {
            return None;
        }
        let sk = shape.keys.get(k)?;
        if sk.word != word || sk.len != end - i {
            return None;
        }
        // The key the shape was learnt from lies earlier in this chunk.
        let learnt = self.input.get(sk.start..sk.start + sk.len)?;
        same_rest(learnt, sk.last, self.input.get(i..end)?).then_some(sk.child)
    }

    /// The Bloom filter of the object's keys from `base`, for the duplicate
    /// check to take over from a shape.
    fn bloom_of(&self, base: usize) -> u64 {
        self.keys.get(base..).map_or(0, |keys| {
            keys.iter()
                .fold(0, |m, k| m | 1u64 << (key_hash(k.word, k.len) >> 58))
        })
    }

    /// Remembers the keys from `base` (an object just projected under
    /// `tree`, free of duplicates) as `tree`'s shape.
    fn learn_shape(&mut self, tree: &AccessTree, base: usize) {
        let Some(keys) = self.keys.get(base..) else {
            return;
        };
        // A tree that grants all has no positions to remember.
        if keys.len() > FAST_KEYS || tree.is_all() {
            return;
        }
        let id = tree as *const AccessTree as usize;
        let at = match self.shapes.iter().position(|s| s.tree == id || s.tree == 0) {
            Some(at) => at,
            None if self.shapes.len() < MAX_SHAPES => {
                self.shapes.push(Shape::default());
                self.shapes.len() - 1
            }
            // Full: the last one gives way.
            None => MAX_SHAPES - 1,
        };
        let input = self.input;
        let Some(shape) = self.shapes.get_mut(at) else {
            return;
        };
        shape.tree = id;
        shape.keys.clear();
        shape.keys.reserve(keys.len());
        for k in keys {
            let Some(key) = input.get(k.start..k.start + k.len) else {
                shape.tree = 0;
                return;
            };
            let hash = key_hash(k.word, k.len);
            shape.keys.push(ShapeKey {
                word: k.word,
                last: last_word(key),
                len: k.len,
                start: k.start,
                child: tree.child_position(key, k.word, hash),
            });
        }
    }

    /// The shape learnt for `tree` in this chunk, if any.
    #[inline(always)]
    fn shape_of(&self, tree: &AccessTree) -> Option<usize> {
        let id = tree as *const AccessTree as usize;
        self.shapes
            .iter()
            .position(|s| s.tree == id && !tree.is_all())
    }

    fn object<const EMIT: bool>(&mut self, i: usize) -> Result<usize, Bail> {
        self.open(i)?;
        let base = self.keys.len();
        let mut seen = 0u64;
        let (mut j, mut b) = self.ws::<EMIT>(i + 1)?;
        if b == b'}' {
            self.close();
            return Ok(j + 1);
        }
        loop {
            if b != b'"' {
                return Err(j);
            }
            let (end, _, _) = self.key(j + 1, base, &mut seen)?;
            let (colon, c) = self.ws::<EMIT>(end)?;
            if c != b':' {
                return Err(colon);
            }
            let (v, first) = self.ws::<EMIT>(colon + 1)?;
            let after = self.value_at::<EMIT>(v, first)?;
            let (sep, s) = self.ws::<EMIT>(after)?;
            match s {
                b',' => (j, b) = self.ws::<EMIT>(sep + 1)?,
                b'}' => {
                    self.keys.truncate(base);
                    self.close();
                    return Ok(sep + 1);
                }
                _ => return Err(sep),
            }
        }
    }

    fn array<const EMIT: bool>(&mut self, i: usize) -> Result<usize, Bail> {
        self.open(i)?;
        let (mut j, mut b) = self.ws::<EMIT>(i + 1)?;
        if b == b']' {
            self.close();
            return Ok(j + 1);
        }
        loop {
            let after = self.value_at::<EMIT>(j, b)?;
            let (sep, s) = self.ws::<EMIT>(after)?;
            match s {
                b',' => (j, b) = self.ws::<EMIT>(sep + 1)?,
                b']' => {
                    self.close();
                    return Ok(sep + 1);
                }
                _ => return Err(sep),
            }
        }
    }

    /// Starts a kept member: the separator and, in an object, the quoted key
    /// at `key` (a span of the input) and its colon.
    #[inline(always)]
    fn member(&mut self, first: &mut bool, key: Option<(usize, usize)>) {
        if !*first {
            self.out.push(b',');
        }
        *first = false;
        if let Some((from, to)) = key {
            append(self.out, self.input, from, to);
            self.out.push(b':');
        }
    }

    /// A member or element under a partial grant (`Disp::Project` with `top`
    /// false): containers are projected, `null` is kept, other scalars are
    /// removed.
    fn partial(
        &mut self,
        tree: &AccessTree,
        i: usize,
        b: u8,
        first: &mut bool,
        key: Option<(usize, usize)>,
    ) -> Result<usize, Bail> {
        match b {
            b'{' => {
                self.member(first, key);
                self.project_object(tree, i)
            }
            b'[' => {
                self.member(first, key);
                self.project_array(tree, i)
            }
            b'n' => {
                self.member(first, key);
                self.copy_at(i, b)
            }
            _ => {
                self.removed += 1;
                self.value_at::<false>(i, b)
            }
        }
    }

    /// An object under the partial grant `tree`, `i` at its `{`.
    ///
    /// The records of one response mostly have the same keys in the same
    /// order. While this object's keys are those of the last one projected
    /// under `tree` in this chunk (its shape), each key's grant is the one
    /// found then, and the keys are distinct because those were: neither the
    /// lookup nor the duplicate check runs. At the first key that differs the
    /// keys so far go into the Bloom filter and the usual checks take over,
    /// and the object becomes the new shape.
    fn project_object(&mut self, tree: &AccessTree, i: usize) -> Result<usize, Bail> {
        self.open(i)?;
        self.out.push(b'{');
        let base = self.keys.len();
        let mut seen = 0u64;
        let mut first = true;
        let input = self.input;
        let (mut j, mut b) = self.ws::<false>(i + 1)?;
        if b == b'}' {
            self.out.push(b'}');
            self.close();
            return Ok(j + 1);
        }
        // Cleared at the first key that differs from it.
        let mut shape = self.shape_of(tree);
        loop {
            if b != b'"' {
                return Err(j);
            }
            let quoted = j;
            let (close, word) = self.key_span(j + 1)?;
            // While the shape holds, the keys so far are its first ones.
            let matched = self.keys.len().saturating_sub(base);
            let hit = shape.and_then(|at| self.shape_key(tree, at, matched, j + 1, close, word));
            let grant = match hit {
                Some(position) => {
                    self.keys.push(FastKey {
                        word,
                        start: j + 1,
                        len: close - j - 1,
                    });
                    match position {
                        Some(p) => Some(tree.child_at(p).ok_or(j)?),
                        None => None,
                    }
                }
                None => {
                    if shape.take().is_some() {
                        seen = self.bloom_of(base);
                    }
                    let hash = key_hash(word, close - j - 1);
                    self.note_key(j + 1, close, word, hash, base, &mut seen)?;
                    let key = input.get(j + 1..close).ok_or(j)?;
                    tree.child_hashed(key, word, hash)
                }
            };
            let end = close + 1;
            let (colon, c) = self.ws::<false>(end)?;
            if c != b':' {
                return Err(colon);
            }
            let (v, vb) = self.ws::<false>(colon + 1)?;
            let after = match grant {
                None => {
                    self.removed += 1;
                    self.value_at::<false>(v, vb)?
                }
                Some(t) if t.is_all() => {
                    self.member(&mut first, Some((quoted, end)));
                    self.copy_at(v, vb)?
                }
                Some(t) => self.partial(t, v, vb, &mut first, Some((quoted, end)))?,
            };
            let (sep, s) = self.ws::<false>(after)?;
            match s {
                b',' => (j, b) = self.ws::<false>(sep + 1)?,
                b'}' => {
                    self.out.push(b'}');
                    if shape.is_none() {
                        self.learn_shape(tree, base);
                    }
                    self.keys.truncate(base);
                    self.close();
                    return Ok(sep + 1);
                }
                _ => return Err(sep),
            }
        }
    }

    /// An array under the partial grant `tree` (a plural: each element gets
    /// the same tree), `i` at its `[`.
    fn project_array(&mut self, tree: &AccessTree, i: usize) -> Result<usize, Bail> {
        self.open(i)?;
        self.out.push(b'[');
        let mut first = true;
        let (mut j, mut b) = self.ws::<false>(i + 1)?;
        if b == b']' {
            self.out.push(b']');
            self.close();
            return Ok(j + 1);
        }
        loop {
            let after = self.partial(tree, j, b, &mut first, None)?;
            let (sep, s) = self.ws::<false>(after)?;
            match s {
                b',' => (j, b) = self.ws::<false>(sep + 1)?,
                b']' => {
                    self.out.push(b']');
                    self.close();
                    return Ok(sep + 1);
                }
                _ => return Err(sep),
            }
        }
    }
}

/// Incremental filter borrowing its trees for the whole stream.
pub struct StreamFilter<'t> {
    read: &'t AccessTree,
    relative_to: Option<&'t AttrPath>,
    inner: DetachedStreamFilter,
}

impl<'t> StreamFilter<'t> {
    /// Same semantics as `response_filter::filter_response`.
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

    /// Same semantics as `filter::project` on one whole value.
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

/// Projects one whole JSON value (`filter::project` after `parse_strict`),
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

/// Drop-in replacement for `response_filter::filter_response`.
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
