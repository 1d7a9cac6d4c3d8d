//! The compiled tree's key index: a key's first and last words and its
//! length settle most lookups without touching its bytes.

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
pub(super) struct KeyIndex {
    /// A power of two long, never empty.
    pub(super) slots: Vec<Slot>,
    /// `64 - log2(slots.len())`: the hash's top bits pick the slot.
    pub(super) shift: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Slot {
    /// The child's [`key_word`].
    pub(super) word: u64,
    /// The last eight bytes of a key longer than eight (they overlap `word`
    /// below sixteen), else 0: with `word` it settles keys of up to sixteen
    /// bytes without a call to `memcmp`.
    pub(super) last: u64,
    /// The child's key length; [`EMPTY`] for a free slot, which no key has.
    pub(super) len: usize,
    /// The child's position.
    pub(super) pos: usize,
}

pub(super) const EMPTY: usize = usize::MAX;
pub(super) const FREE: Slot = Slot {
    word: 0,
    last: 0,
    len: EMPTY,
    pos: 0,
};

impl KeyIndex {
    pub(super) const fn empty() -> KeyIndex {
        KeyIndex {
            slots: Vec::new(),
            shift: 63,
        }
    }

    pub(super) fn new<T>(children: &[(Box<str>, T)]) -> KeyIndex {
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
        KeyIndex::new::<()>(&[])
    }
}
