//! The fast path: a recursive descent over one value that lies wholly in
//! the chunk at hand. It handles a subset of valid input and gives up on
//! anything else, errors included; the state machine then redoes the value.

use crate::schema::{key_hash, key_word, last_word, same_rest, AccessTree};

use super::escapes::*;
use super::numbers::*;
use super::state::*;
use super::string_ends;

/// Containers the fast path opens itself before it leaves the rest of a value
/// to the state machine; bounds its recursion, and so its stack, well below
/// the depth limit.
pub(super) const FAST_NEST: usize = 48;

/// Keys one object may have in the fast path before a key whose Bloom bit is
/// taken sends it to the state machine, whose duplicate check switches to a
/// hash index for large objects; bounds the fast path's scans.
pub(super) const FAST_KEYS: usize = 64;

/// `KEY_MASKS[n]` keeps the low `n` bytes of a word.
pub(super) const KEY_MASKS: [u64; 9] = {
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
pub(super) struct FastKey {
    pub(super) word: u64,
    pub(super) start: usize,
    pub(super) len: usize,
}

/// Shapes kept per chunk: one per tree the records of a response are
/// projected under (the record, each nested object, each plural's elements).
pub(super) const MAX_SHAPES: usize = 8;

/// The keys, in order, of the last object projected under one tree in the
/// current chunk. Kept between chunks for their allocations only: positions
/// and tree addresses are valid within one chunk, so every chunk starts with
/// none.
#[derive(Default)]
pub(super) struct Shape {
    /// The tree's address; 0 for a free entry.
    pub(super) tree: usize,
    pub(super) keys: Vec<ShapeKey>,
}

#[derive(Clone, Copy)]
pub(super) struct ShapeKey {
    pub(super) word: u64,
    /// The last eight bytes of a key longer than eight.
    pub(super) last: u64,
    pub(super) len: usize,
    /// Where the key lies in the chunk.
    pub(super) start: usize,
    /// The position of the key's grant among the tree's children, if any.
    pub(super) child: Option<usize>,
}

/// Where the fast path gave up on a value. It says nothing about why: the
/// state machine redoes the value from its start and produces the output, or
/// the error, itself.
pub(super) type Bail = usize;

/// How the fast path treats the value it starts on.
#[derive(Clone, Copy)]
pub(super) enum Plan<'r> {
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
pub(super) struct Fast<'a> {
    pub(super) input: &'a [u8],
    /// `input`'s [`string_ends`] marks.
    pub(super) ends: &'a [u64],
    pub(super) out: &'a mut Vec<u8>,
    pub(super) keys: &'a mut Vec<FastKey>,
    pub(super) shapes: &'a mut Vec<Shape>,
    pub(super) removed: usize,
    /// Open containers, the state machine's frames included.
    pub(super) depth: usize,
    pub(super) limit: usize,
    /// Containers opened by the fast path itself.
    pub(super) nest: usize,
    /// Start of the copied run not yet written out (copy mode).
    pub(super) span: usize,
}

impl Fast<'_> {
    #[inline(always)]
    pub(super) fn byte(&self, i: usize) -> Result<u8, Bail> {
        self.input.get(i).copied().ok_or(i)
    }

    /// The first byte at or after `i` that is not whitespace, and where it
    /// is: the caller dispatches on it without loading it again. When
    /// copying, whitespace ends the copied run, as the state machine drops
    /// it too.
    #[inline(always)]
    pub(super) fn ws<const EMIT: bool>(&mut self, i: usize) -> Result<(usize, u8), Bail> {
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
    pub(super) fn flush(&mut self, to: usize) {
        append(self.out, self.input, self.span, to);
    }

    #[inline(always)]
    pub(super) fn open(&mut self, i: usize) -> Result<(), Bail> {
        if self.depth >= self.limit || self.nest >= FAST_NEST {
            return Err(i);
        }
        self.depth += 1;
        self.nest += 1;
        Ok(())
    }

    #[inline(always)]
    pub(super) fn close(&mut self) {
        self.depth = self.depth.saturating_sub(1);
        self.nest = self.nest.saturating_sub(1);
    }

    /// Validates one value, copying it when `EMIT`; returns where it ends.
    #[inline(always)]
    pub(super) fn value<const EMIT: bool>(&mut self, i: usize) -> Result<usize, Bail> {
        let b = self.byte(i)?;
        self.value_at::<EMIT>(i, b)
    }

    /// [`value`](Self::value) when its first byte `b` is known. Scalars
    /// (three values in four in the demo records) are scanned in the caller:
    /// as a call of its own each paid more for saving and restoring
    /// registers than for its scan.
    #[inline(always)]
    pub(super) fn value_at<const EMIT: bool>(&mut self, i: usize, b: u8) -> Result<usize, Bail> {
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

    pub(super) fn container<const EMIT: bool>(&mut self, i: usize, b: u8) -> Result<usize, Bail> {
        if b == b'{' {
            self.object::<EMIT>(i)
        } else {
            self.array::<EMIT>(i)
        }
    }

    /// Copies one value as whole runs of input, without its whitespace.
    #[inline]
    pub(super) fn copy(&mut self, i: usize) -> Result<usize, Bail> {
        let b = self.byte(i)?;
        self.copy_at(i, b)
    }

    /// [`copy`](Self::copy) when the value's first byte `b` is known.
    #[inline]
    pub(super) fn copy_at(&mut self, i: usize, b: u8) -> Result<usize, Bail> {
        self.span = i;
        let end = self.value_at::<true>(i, b)?;
        self.flush(end);
        Ok(end)
    }

    pub(super) fn literal(&self, i: usize, text: &[u8]) -> Result<usize, Bail> {
        if self.input.get(i..i + text.len()) == Some(text) {
            Ok(i + text.len())
        } else {
            Err(i)
        }
    }

    #[inline]
    pub(super) fn number(&self, i: usize) -> Result<usize, Bail> {
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
    pub(super) fn string(&self, i: usize) -> Result<usize, Bail> {
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
    pub(super) fn escape(&self, i: usize) -> Result<usize, Bail> {
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
    pub(super) fn key(
        &mut self,
        i: usize,
        base: usize,
        seen: &mut u64,
    ) -> Result<(usize, u64, u64), Bail> {
        let (end, word) = self.key_span(i)?;
        let hash = key_hash(word, end - i);
        self.note_key(i, end, word, hash, base, seen)?;
        Ok((end + 1, word, hash))
    }

    /// Where the key starting at `i` (just past its opening quote) ends, at
    /// its closing quote, and its [`key_word`]. Bails on an escape.
    #[inline(always)]
    pub(super) fn key_span(&self, i: usize) -> Result<(usize, u64), Bail> {
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
    pub(super) fn note_key(
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
    pub(super) fn shape_key(
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
    pub(super) fn bloom_of(&self, base: usize) -> u64 {
        self.keys.get(base..).map_or(0, |keys| {
            keys.iter()
                .fold(0, |m, k| m | 1u64 << (key_hash(k.word, k.len) >> 58))
        })
    }

    /// Remembers the keys from `base` (an object just projected under
    /// `tree`, free of duplicates) as `tree`'s shape.
    pub(super) fn learn_shape(&mut self, tree: &AccessTree, base: usize) {
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
    pub(super) fn shape_of(&self, tree: &AccessTree) -> Option<usize> {
        let id = tree as *const AccessTree as usize;
        self.shapes
            .iter()
            .position(|s| s.tree == id && !tree.is_all())
    }

    pub(super) fn object<const EMIT: bool>(&mut self, i: usize) -> Result<usize, Bail> {
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

    pub(super) fn array<const EMIT: bool>(&mut self, i: usize) -> Result<usize, Bail> {
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
    pub(super) fn member(&mut self, first: &mut bool, key: Option<(usize, usize)>) {
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
    pub(super) fn partial(
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
    pub(super) fn project_object(&mut self, tree: &AccessTree, i: usize) -> Result<usize, Bail> {
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
    pub(super) fn project_array(&mut self, tree: &AccessTree, i: usize) -> Result<usize, Bail> {
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
