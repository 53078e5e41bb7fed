//! Bit masks of ASCII byte classes, 64 bytes at a time.
//!
//! The tokenizer's ASCII path needs, for each byte of a segment, whether it is a word
//! character, punctuation (a token of its own) or a character that normalization drops. This
//! module turns 64 bytes into three `u64` masks (bit `j` for byte `j`), with AVX2 where the CPU
//! has it (the nibble-table membership test: for a set `S` of ASCII bytes, byte `x` is in `S`
//! iff `lo[x & 15] & (1 << (x >> 4)) != 0`, two byte shuffles per 32 bytes) and one table
//! load per byte elsewhere. Both give identical masks (tested).

/// Class bit of a word character.
pub const WORD: u8 = 1;
/// Class bit of a punctuation character.
pub const PUNCT: u8 = 2;
/// Class bit of a character the normalizer drops.
pub const DROP: u8 = 4;

/// Masks of one block of up to 64 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Masks {
    pub word: u64,
    pub punct: u64,
    pub drop: u64,
}

/// Classifier of ASCII bytes (bytes >= 0x80 must not be passed).
#[derive(Clone, Debug)]
pub struct ByteClasses {
    class: [u8; 128],
    /// Nibble tables: for class `c` (0 word, 1 punct, 2 drop), `lo[c][l]` has bit `h` set
    /// when byte `h << 4 | l` is in the class.
    lo: [[u8; 16]; 3],
    avx2: bool,
}

impl ByteClasses {
    /// From the class bits ([`WORD`], [`PUNCT`], [`DROP`], or 0 for whitespace) of each
    /// ASCII byte.
    pub fn new(class: [u8; 128]) -> Self {
        let mut lo = [[0u8; 16]; 3];
        for (b, &c) in class.iter().enumerate() {
            for (k, bit) in [WORD, PUNCT, DROP].into_iter().enumerate() {
                if c & bit != 0 {
                    lo[k][b & 15] |= 1 << (b >> 4);
                }
            }
        }
        Self {
            class,
            lo,
            avx2: detect_avx2(),
        }
    }

    /// Class bits of one ASCII byte.
    #[inline(always)]
    pub fn class(&self, b: u8) -> u8 {
        self.class[b as usize & 127]
    }

    /// Masks of `bytes` (at most 64 ASCII bytes; bits past its length are clear).
    #[inline]
    pub fn masks(&self, bytes: &[u8]) -> Masks {
        debug_assert!(bytes.len() <= 64);
        let n = bytes.len();
        #[cfg(target_arch = "x86_64")]
        if self.avx2 && n >= 32 {
            // Two 32-byte loads straight from the text (the second one ending at its last
            // byte, overlapping the first when n < 64): no copy into a padded buffer, whose
            // small stores would stall the wide loads.
            let first: &[u8; 32] = bytes[..32].try_into().unwrap_or(&[b' '; 32]);
            let last: &[u8; 32] = bytes[n - 32..].try_into().unwrap_or(&[b' '; 32]);
            // SAFETY: `avx2` is true only when the CPU supports AVX2 (runtime detection).
            let (a, b) = unsafe {
                (
                    avx2::masks32(first, &self.lo),
                    avx2::masks32(last, &self.lo),
                )
            };
            let join = |x: u32, y: u32| x as u64 | (y as u64) << (n - 32);
            return Masks {
                word: join(a[0], b[0]),
                punct: join(a[1], b[1]),
                drop: join(a[2], b[2]),
            };
        }
        self.masks_scalar(bytes)
    }

    /// Portable version of [`ByteClasses::masks`].
    #[inline]
    pub fn masks_scalar(&self, bytes: &[u8]) -> Masks {
        let (mut word, mut punct, mut drop) = (0u64, 0u64, 0u64);
        for (j, &x) in bytes.iter().enumerate() {
            let c = self.class(x) as u64;
            word |= (c & 1) << j;
            punct |= ((c >> 1) & 1) << j;
            drop |= (c >> 2) << j;
        }
        Masks { word, punct, drop }
    }
}

fn detect_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// Word, punctuation and drop masks of 32 ASCII bytes.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    #[inline]
    pub unsafe fn masks32(block: &[u8; 32], lo: &[[u8; 16]; 3]) -> [u32; 3] {
        // Unaligned loads of 32 (block) and 16 (tables) bytes, all in bounds.
        let x = _mm256_loadu_si256(block.as_ptr() as *const __m256i);
        let nib = _mm256_set1_epi8(0x0f);
        let lo_n = _mm256_and_si256(x, nib);
        let hi_n = _mm256_and_si256(_mm256_srli_epi16(x, 4), nib);
        // 1 << (x >> 4) for the eight high nibbles of ASCII (0 for bytes >= 0x80).
        let pow = _mm256_setr_epi8(
            1, 2, 4, 8, 16, 32, 64, -128, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 4, 8, 16, 32, 64, -128, 0,
            0, 0, 0, 0, 0, 0, 0,
        );
        let hbit = _mm256_shuffle_epi8(pow, hi_n);
        let zero = _mm256_setzero_si256();
        let mut out = [0u32; 3];
        for (k, t) in lo.iter().enumerate() {
            let table = _mm256_broadcastsi128_si256(_mm_loadu_si128(t.as_ptr() as *const __m128i));
            let rows = _mm256_shuffle_epi8(table, lo_n);
            let miss = _mm256_cmpeq_epi8(_mm256_and_si256(rows, hbit), zero);
            out[k] = !(_mm256_movemask_epi8(miss) as u32);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes() -> ByteClasses {
        let mut c = [0u8; 128];
        for b in 0..128u8 {
            c[b as usize] = if b.is_ascii_alphanumeric() {
                WORD
            } else if b.is_ascii_punctuation() {
                PUNCT
            } else if b.is_ascii_control() && !b"\t\n\r".contains(&b) {
                DROP
            } else {
                0
            };
        }
        ByteClasses::new(c)
    }

    #[test]
    fn vector_and_scalar_masks_agree_with_the_table() {
        let bc = classes();
        let mut state = 0x1234_5678_9abc_def0u64;
        for len in 0..=64usize {
            for _ in 0..50 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        (state % 128) as u8
                    })
                    .collect();
                let m = bc.masks(&bytes);
                assert_eq!(m, bc.masks_scalar(&bytes));
                for (j, &x) in bytes.iter().enumerate() {
                    let c = bc.class(x);
                    assert_eq!(m.word >> j & 1 == 1, c & WORD != 0);
                    assert_eq!(m.punct >> j & 1 == 1, c & PUNCT != 0);
                    assert_eq!(m.drop >> j & 1 == 1, c & DROP != 0);
                }
                assert_eq!((m.word | m.punct | m.drop) >> len.min(63) >> (len / 64), 0);
            }
        }
    }
}
