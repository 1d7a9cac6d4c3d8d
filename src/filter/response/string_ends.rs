//! Marks, one bit per byte, where plain string content ends: a quote, a
//! backslash or a control character.
//!
//! The filter's fast path used to find the end of each key and string with a
//! loop over eight-byte words. Its exit depends on the string's length, which
//! no branch predictor guesses, so nearly every string cost a mispredicted
//! branch. Classifying the whole chunk up front is a branch-free pass, and the
//! end of a string is then a shift and a `trailing_zeros` on one word.

/// Bits per word of marks.
const BLOCK: usize = 64;

/// Fills `marks` for `input`: bit `i % 64` of word `i / 64` is set when
/// `input[i]` ends plain string content. Positions past the end of `input`
/// in the last word are set too, so a search never runs off the marks.
pub fn mark(input: &[u8], marks: &mut Vec<u64>) {
    mark_with(wide_blocks, input, marks);
}

/// Marks every whole 64-byte block a chunk iterator has left.
type Blocks = fn(&mut std::slice::ChunksExact<'_, u8>, &mut Vec<u64>);

/// The fastest block classifier this build can offer: AVX-512BW where the
/// CPU has it (checked at each call), else the baseline.
#[cfg(target_arch = "x86_64")]
use avx512::mark_blocks as wide_blocks;
#[cfg(not(target_arch = "x86_64"))]
use baseline_blocks as wide_blocks;

fn mark_with(blocks_of: Blocks, input: &[u8], marks: &mut Vec<u64>) {
    marks.clear();
    marks.reserve(input.len() / BLOCK + 1);
    let mut blocks = input.chunks_exact(BLOCK);
    blocks_of(&mut blocks, marks);
    let rest = blocks.remainder();
    // The tail is padded with quotes, which are marked like the real ends.
    let mut bytes = [b'"'; BLOCK];
    bytes[..rest.len()].copy_from_slice(rest);
    marks.push(classify(&bytes));
}

/// Plain code: SSE2 on x86_64 (its baseline), a loop elsewhere.
fn baseline_blocks(blocks: &mut std::slice::ChunksExact<'_, u8>, marks: &mut Vec<u64>) {
    for block in blocks.by_ref() {
        let mut bytes = [0u8; BLOCK];
        bytes.copy_from_slice(block);
        marks.push(classify(&bytes));
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::BLOCK;
    use std::arch::x86_64::{
        _mm512_cmpeq_epi8_mask, _mm512_cmple_epu8_mask, _mm512_loadu_si512, _mm512_set1_epi8,
    };
    use std::slice::ChunksExact;

    /// Marks every whole block `blocks` has left.
    ///
    /// SSE2 classifies a block in four 16-byte steps of some ten
    /// instructions each; this is one load and three compares into mask
    /// registers. The `unsafe` here is the call into code compiled for
    /// AVX-512BW, made only once the CPU has been seen to have it.
    pub(super) fn mark_blocks(blocks: &mut ChunksExact<'_, u8>, marks: &mut Vec<u64>) {
        if !std::arch::is_x86_feature_detected!("avx512bw") {
            return super::baseline_blocks(blocks, marks);
        }
        // SAFETY: `blocks_avx512bw` needs AVX-512BW (implying AVX-512F),
        // which the CPU was just checked to have; it reads only through
        // `&[u8; BLOCK]` references.
        unsafe { blocks_avx512bw(blocks, marks) }
    }

    #[target_feature(enable = "avx512bw")]
    fn blocks_avx512bw(blocks: &mut ChunksExact<'_, u8>, marks: &mut Vec<u64>) {
        let quote = _mm512_set1_epi8(b'"' as i8);
        let backslash = _mm512_set1_epi8(b'\\' as i8);
        let below_space = _mm512_set1_epi8(0x1f);
        for block in blocks.by_ref() {
            let Ok(bytes) = <&[u8; BLOCK]>::try_from(block) else {
                continue;
            };
            // SAFETY: `bytes` is 64 readable bytes, exactly one unaligned
            // 512-bit load; the intrinsic has no alignment requirement.
            let v = unsafe { _mm512_loadu_si512(bytes.as_ptr().cast()) };
            let m = _mm512_cmpeq_epi8_mask(v, quote)
                | _mm512_cmpeq_epi8_mask(v, backslash)
                | _mm512_cmple_epu8_mask(v, below_space);
            marks.push(m);
        }
    }
}

/// The first position at or after `i` whose mark is set; `input.len()` (or
/// `i`, when `i` is past it) if there is none. `marks` is what [`mark`] made
/// for the same input.
#[inline(always)]
pub fn next(marks: &[u64], i: usize) -> usize {
    let mut word = i / BLOCK;
    let Some(&first) = marks.get(word) else {
        return i;
    };
    let mut m = first & (u64::MAX << (i % BLOCK));
    loop {
        if m != 0 {
            return word * BLOCK + m.trailing_zeros() as usize;
        }
        word += 1;
        match marks.get(word) {
            Some(&w) => m = w,
            None => return word * BLOCK,
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn classify(bytes: &[u8; BLOCK]) -> u64 {
    use safe_arch::{
        cmp_eq_mask_i8_m128i, load_unaligned_m128i, min_u8_m128i, move_mask_i8_m128i,
        set_splat_i8_m128i,
    };
    let quote = set_splat_i8_m128i(b'"' as i8);
    let backslash = set_splat_i8_m128i(b'\\' as i8);
    let below_space = set_splat_i8_m128i(0x1f);
    let mut m = 0u64;
    for (k, lane) in bytes.chunks_exact(16).enumerate() {
        let mut sixteen = [0u8; 16];
        sixteen.copy_from_slice(lane);
        let v = load_unaligned_m128i(&sixteen);
        // min(v, 0x1f) == v exactly when v <= 0x1f (unsigned).
        let control = cmp_eq_mask_i8_m128i(min_u8_m128i(v, below_space), v);
        let hit = cmp_eq_mask_i8_m128i(v, quote) | cmp_eq_mask_i8_m128i(v, backslash) | control;
        m |= u64::from(move_mask_i8_m128i(hit) as u16) << (16 * k);
    }
    m
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn classify(bytes: &[u8; BLOCK]) -> u64 {
    bytes.iter().enumerate().fold(0u64, |m, (k, &b)| {
        m | (u64::from(b == b'"' || b == b'\\' || b < 0x20) << k)
    })
}

#[cfg(test)]
mod tests {
    use super::{baseline_blocks, mark, mark_with, next, wide_blocks, Blocks};

    /// Every classifier this build has; on a CPU without AVX-512BW both are
    /// the baseline.
    const CLASSIFIERS: [(&str, Blocks); 2] = [("baseline", baseline_blocks), ("wide", wide_blocks)];

    fn naive(s: &[u8], i: usize) -> usize {
        (i..s.len())
            .find(|&k| s[k] == b'"' || s[k] == b'\\' || s[k] < 0x20)
            .unwrap_or(s.len().max(i))
    }

    /// The dispatched `mark` gives the baseline's marks on a long input
    /// holding every byte value at many alignments.
    #[test]
    fn every_classifier_marks_alike() {
        let input: Vec<u8> = (0..5000u32)
            .map(|k| (k.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let (mut want, mut got) = (Vec::new(), Vec::new());
        for len in [0, 1, 63, 64, 65, 1000, 4999, 5000] {
            mark_with(baseline_blocks, &input[..len], &mut want);
            mark(&input[..len], &mut got);
            assert_eq!(got, want, "dispatched, len {len}");
            for (how, blocks) in CLASSIFIERS {
                mark_with(blocks, &input[..len], &mut got);
                assert_eq!(got, want, "{how}, len {len}");
            }
        }
    }

    #[test]
    fn next_agrees_with_the_definition() {
        let alphabet = [b'a', b'"', b'\\', 0x1f, 0x20, 0x7f, 0x80, 0xff, 0x00, b'\n'];
        let mut marks = Vec::new();
        for len in [0usize, 1, 15, 16, 17, 63, 64, 65, 127, 128, 129, 200] {
            for seed in 0..40u64 {
                // A sparse, deterministic sprinkling of every byte class.
                let s: Vec<u8> = (0..len as u64)
                    .map(|k| {
                        let h = (k + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed.wrapping_mul(31);
                        if h % 23 < 2 {
                            alphabet[(h % alphabet.len() as u64) as usize]
                        } else {
                            b'x'
                        }
                    })
                    .collect();
                for (how, blocks) in CLASSIFIERS {
                    mark_with(blocks, &s, &mut marks);
                    for start in 0..=len + 2 {
                        assert_eq!(
                            next(&marks, start),
                            naive(&s, start),
                            "{how} len {len} seed {seed} start {start}"
                        );
                    }
                }
            }
        }
    }

    /// Every byte value at every position of a run that spans three words,
    /// from every start, with a high byte just before it.
    #[test]
    fn every_byte_value_is_classified_at_every_position() {
        let mut marks = Vec::new();
        for special in 0..=255u8 {
            for at in 0..140 {
                let mut s = vec![b'a'; 140];
                s[at] = special;
                if at > 0 {
                    s[at - 1] = 0xff;
                }
                for (how, blocks) in CLASSIFIERS {
                    mark_with(blocks, &s, &mut marks);
                    for start in 0..=s.len() {
                        assert_eq!(
                            next(&marks, start),
                            naive(&s, start),
                            "{how}: byte {special:#x} at {at} from {start}"
                        );
                    }
                }
            }
        }
    }
}
