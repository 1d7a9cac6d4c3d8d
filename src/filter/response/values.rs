//! The state machine's value scanners: the start of a value, strings and
//! keys, numbers and literals.

use std::collections::HashMap;
use std::hash::BuildHasher;

use crate::config::routes::ResponseRecords;
use crate::schema::{key_word, AccessTree};

use super::error::*;
use super::escapes::*;
use super::machine::DetachedStreamFilter;
use super::numbers::*;
use super::state::*;
use super::string_ends;

impl DetachedStreamFilter {
    pub(super) fn start_value<'r>(
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
    pub(super) fn scan_string(
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
    pub(super) fn end_key(
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

    pub(super) fn scan_number(
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

    pub(super) fn scan_literal(
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
