//! Finding the successive positions of one byte in a slice, 64 bytes at a time.
//!
//! A line receiver looks for the next delimiter once per line. With short lines, a
//! `memchr` call per line spends most of its time setting up for a haystack it leaves
//! after a few dozen bytes. [`ByteScan`] instead compares a whole 64-byte block at once,
//! keeps the block's matches as the bits of a `u64`, and answers each following search
//! in the block from those bits: a few instructions per line, and one block comparison
//! per 64 bytes of input.

/// The positions of one byte in a slice, found in increasing order.
pub(crate) struct ByteScan<'a> {
    haystack: &'a [u8],
    needle: u8,
    /// Where the current block starts in `haystack`.
    block: usize,
    /// The matches of the current block not yet passed, bit `i` for `block + i`.
    mask: u64,
}

/// The bytes compared at once.
const BLOCK: usize = 64;

impl<'a> ByteScan<'a> {
    /// A scan of `haystack` for `needle`; nothing is compared before the first search.
    pub(crate) fn new(haystack: &'a [u8], needle: u8) -> ByteScan<'a> {
        let mut scan = ByteScan {
            haystack,
            needle,
            block: 0,
            mask: 0,
        };
        scan.load(0);
        scan
    }

    /// Makes the block that starts at `block` current.
    fn load(&mut self, block: usize) {
        self.block = block;
        self.mask = match self.haystack.get(block..) {
            Some(rest) if rest.len() >= BLOCK => {
                let (head, _) = rest.split_at(BLOCK);
                match head.try_into() {
                    Ok(head) => block_mask(head, self.needle),
                    Err(_) => 0, // unreachable: `head` is BLOCK bytes
                }
            }
            Some(rest) => {
                // The last, short block: compared in a padded copy, the padding's bits
                // masked off (the needle may be the padding's byte).
                let mut padded = [0u8; BLOCK];
                padded[..rest.len()].copy_from_slice(rest);
                block_mask(&padded, self.needle) & low_bits(rest.len())
            }
            None => 0,
        };
    }

    /// The first position of the needle at or after `from`, if any. Fastest when each
    /// search starts after the previous answer, as a line receiver's do.
    pub(crate) fn find_from(&mut self, from: usize) -> Option<usize> {
        if from >= self.haystack.len() {
            return None;
        }
        if from < self.block || from >= self.block + BLOCK {
            // Outside the current block (after a long line): a block starts there.
            self.load(from);
        }
        let mut mask = self.mask & !low_bits(from - self.block);
        while mask == 0 {
            let next = self.block + BLOCK;
            if next >= self.haystack.len() {
                self.mask = 0;
                return None;
            }
            self.load(next);
            mask = self.mask;
        }
        self.mask = mask;
        Some(self.block + mask.trailing_zeros() as usize)
    }
}

/// A mask of the `n` low bits (all 64 for `n` ≥ 64).
fn low_bits(n: usize) -> u64 {
    match u32::try_from(n) {
        Ok(n) if n < 64 => (1u64 << n) - 1,
        _ => u64::MAX,
    }
}

/// Bit `i` set where `block[i] == needle`.
#[cfg(target_arch = "x86_64")]
fn block_mask(block: &[u8; BLOCK], needle: u8) -> u64 {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8,
    };
    let mut mask = 0u64;
    // SAFETY: SSE2 is part of every x86_64 CPU (these need no run-time check), and each
    // load reads 16 bytes of `lane`, which has 16, with no alignment requirement.
    unsafe {
        let pattern = _mm_set1_epi8(needle as i8);
        for (i, lane) in block.chunks_exact(16).enumerate() {
            let bytes = _mm_loadu_si128(lane.as_ptr().cast::<__m128i>());
            // The sign bit of each of the 16 bytes, in the low 16 bits of an i32.
            let bits = _mm_movemask_epi8(_mm_cmpeq_epi8(bytes, pattern)) as u32 & 0xffff;
            mask |= u64::from(bits) << (16 * i);
        }
    }
    mask
}

/// Bit `i` set where `block[i] == needle`.
#[cfg(not(target_arch = "x86_64"))]
fn block_mask(block: &[u8; BLOCK], needle: u8) -> u64 {
    portable_block_mask(block, needle)
}

/// [`block_mask`] in plain integer arithmetic, eight bytes per step: a byte of the
/// needle becomes a zero byte under XOR, and the zero bytes are found exactly (no carry
/// between bytes), then gathered into eight bits by one multiplication.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn portable_block_mask(block: &[u8; BLOCK], needle: u8) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    // Moves bit 0 of each byte to bit 56 + the byte's index.
    const GATHER: u64 = 0x0102_0408_1020_4080;
    let pattern = u64::from_ne_bytes([needle; 8]);
    let mut mask = 0u64;
    for (i, word) in block.chunks_exact(8).enumerate() {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        let x = u64::from_le_bytes(bytes) ^ pattern;
        // 0x80 exactly in the bytes of `x` that are zero.
        let zero = !(((x & LOW7).wrapping_add(LOW7)) | x | LOW7);
        let bits = (zero >> 7).wrapping_mul(GATHER) >> 56;
        mask |= bits << (8 * i);
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every position, by the scan and by a plain search, from each answer onwards.
    fn positions(haystack: &[u8], needle: u8) -> Vec<usize> {
        let mut scan = ByteScan::new(haystack, needle);
        let mut found = Vec::new();
        let mut from = 0;
        while let Some(at) = scan.find_from(from) {
            found.push(at);
            from = at + 1;
        }
        found
    }

    fn expected(haystack: &[u8], needle: u8) -> Vec<usize> {
        (0..haystack.len())
            .filter(|&i| haystack[i] == needle)
            .collect()
    }

    #[test]
    fn finds_every_position_across_blocks_and_in_the_short_last_block() {
        let mut haystack = vec![b'x'; 200];
        for at in [0, 31, 63, 64, 65, 127, 128, 190, 199] {
            haystack[at] = b'\n';
        }
        assert_eq!(
            positions(&haystack, b'\n'),
            vec![0, 31, 63, 64, 65, 127, 128, 190, 199]
        );
    }

    #[test]
    fn a_zero_needle_is_not_found_in_the_padding_of_the_last_block() {
        let haystack = [1u8, 0, 2, 3, 0];
        assert_eq!(positions(&haystack, 0), vec![1, 4]);
    }

    #[test]
    fn an_empty_haystack_has_nothing() {
        assert_eq!(ByteScan::new(&[], b'\n').find_from(0), None);
    }

    #[test]
    fn a_search_far_ahead_skips_the_blocks_between() {
        let mut haystack = vec![b'\n'; 1000];
        haystack[500] = b'y';
        let mut scan = ByteScan::new(&haystack, b'\n');
        assert_eq!(scan.find_from(0), Some(0));
        assert_eq!(scan.find_from(500), Some(501));
        assert_eq!(scan.find_from(999), Some(999));
        assert_eq!(scan.find_from(1000), None);
    }

    #[test]
    fn the_portable_mask_is_the_same_as_the_one_in_use() {
        let mut block = [0u8; BLOCK];
        for (i, byte) in block.iter_mut().enumerate() {
            *byte = (i as u8).wrapping_mul(37);
        }
        for needle in [0u8, 1, 0x7f, 0x80, 0xff, b'\n', 37] {
            assert_eq!(
                portable_block_mask(&block, needle),
                block_mask(&block, needle),
                "needle {needle:#x}"
            );
        }
    }

    proptest! {
        #[test]
        fn finds_what_a_plain_search_finds(
            haystack in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'\r'), Just(0u8), Just(0x80u8), any::<u8>()], 0..400),
            needle in prop_oneof![Just(b'\n'), Just(0u8), Just(0x80u8), any::<u8>()],
        ) {
            prop_assert_eq!(positions(&haystack, needle), expected(&haystack, needle));
        }

        #[test]
        fn the_portable_mask_agrees_on_any_block(
            block in proptest::array::uniform32(any::<u8>()),
            block2 in proptest::array::uniform32(any::<u8>()),
            needle in any::<u8>(),
        ) {
            let mut whole = [0u8; BLOCK];
            whole[..32].copy_from_slice(&block);
            whole[32..].copy_from_slice(&block2);
            prop_assert_eq!(portable_block_mask(&whole, needle), block_mask(&whole, needle));
        }
    }
}
