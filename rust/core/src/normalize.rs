//! BERT text cleaning, CJK splitting, lowercasing and accent stripping.
//!
//! Exact re-implementation of HF `tokenizers`' `BertNormalizer` (tokenizers 0.23.3,
//! `tokenizers/src/normalizers/bert.rs` and `NormalizedString::transform`), stage by stage:
//!
//! 1. `clean_text`: drop NUL, U+FFFD and "control" characters (`unicode_categories`'
//!    `is_other`: Cc, Cf and its (quirky) Co table; `\t \n \r` excepted), map whitespace to `' '`.
//! 2. `handle_chinese_chars`: surround every CJK ideograph with spaces (HF's code point
//!    ranges, which differ from Google's BERT in one range: HF starts the last extension
//!    block at U+2B920 where Google uses U+2B820).
//! 3. `strip_accents` (default: the `lowercase` setting): NFD, then drop nonspacing marks (Mn).
//! 4. `lowercase`: Rust's full `char::to_lowercase` (one char may become several).
//!
//! Every normalized character remembers the span `[start, end)` of *original* characters it
//! came from, following HF's alignment rules: a replacing character keeps the alignment of
//! the character it replaces, an inserted one copies the alignment of the character before
//! it. Offsets reported to users are these spans, so they match HF's `Encoding.offsets`.
//!
//! The same Unicode tables as HF are used (`unicode_categories` 0.1.1 and
//! `unicode-normalization-alignments` 0.1.12, both Unicode 9), so classification matches to
//! the code point. Classification of the Basic Multilingual Plane is precomputed once into a
//! flag table ([`char_flags`]); ASCII text takes a byte-table fast path in the tokenizer.

use std::sync::OnceLock;

use unicode_categories::UnicodeCategories;
use unicode_normalization_alignments::char::{canonical_combining_class, decompose_canonical};

/// BERT normalizer settings (HF `BertNormalizer` fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NormalizerConfig {
    pub clean_text: bool,
    pub handle_chinese_chars: bool,
    pub strip_accents: bool,
    pub lowercase: bool,
}

impl Default for NormalizerConfig {
    fn default() -> Self {
        Self {
            clean_text: true,
            handle_chinese_chars: true,
            strip_accents: true,
            lowercase: true,
        }
    }
}

/// One normalized character and the span of original characters `[start, end)` it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NChar {
    pub c: char,
    pub start: u32,
    pub end: u32,
}

/// `clean_text` removes it: NUL, U+FFFD or a control character.
pub const F_DROP: u8 = 1;
/// `clean_text` turns it into `' '` (BERT whitespace: `\t \n \r` and Unicode White_Space).
pub const F_CLEAN_WS: u8 = 2;
/// A CJK ideograph in HF's ranges.
pub const F_CHINESE: u8 = 4;
/// The pre-tokenizer splits on it and drops it (`char::is_whitespace`).
pub const F_WS: u8 = 8;
/// The pre-tokenizer isolates it (ASCII punctuation or Unicode P*).
pub const F_PUNCT: u8 = 16;
/// Nonspacing mark (Mn): removed by accent stripping.
pub const F_MN: u8 = 32;
/// NFD leaves it alone and it is a starter (ccc 0, no canonical decomposition).
pub const F_NFD_SELF: u8 = 64;
/// `to_lowercase` maps it to itself.
pub const F_LOWER_SELF: u8 = 128;

/// BERT whitespace as HF's `BertNormalizer` defines it.
pub fn is_whitespace(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || c.is_whitespace()
}

/// BERT control characters as HF's `BertNormalizer` defines it (`unicode_categories::is_other`).
pub fn is_control(c: char) -> bool {
    if matches!(c, '\t' | '\n' | '\r') {
        false
    } else {
        c.is_other()
    }
}

/// CJK ideographs split into single characters, with HF's ranges (not Google's: HF's last
/// extension range starts at U+2B920, Google's at U+2B820).
pub fn is_chinese_char(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF
        | 0x3400..=0x4DBF
        | 0x20000..=0x2A6DF
        | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F
        | 0x2B920..=0x2CEAF
        | 0xF900..=0xFAFF
        | 0x2F800..=0x2FA1F)
}

/// BERT punctuation: ASCII 33-47, 58-64, 91-96, 123-126 and Unicode P* (`BertPreTokenizer`).
pub fn is_bert_punc(c: char) -> bool {
    c.is_ascii_punctuation() || c.is_punctuation()
}

fn compute_flags(c: char) -> u8 {
    let mut f = 0u8;
    if c == '\0' || c == '\u{FFFD}' || is_control(c) {
        f |= F_DROP;
    }
    if is_whitespace(c) {
        f |= F_CLEAN_WS;
    }
    if is_chinese_char(c) {
        f |= F_CHINESE;
    }
    if c.is_whitespace() {
        f |= F_WS;
    }
    if is_bert_punc(c) {
        f |= F_PUNCT;
    }
    if c.is_mark_nonspacing() {
        f |= F_MN;
    }
    if canonical_combining_class(c) == 0 {
        let mut n = 0;
        let mut same = true;
        decompose_canonical(c, |d| {
            n += 1;
            same &= d == c;
        });
        if n == 1 && same {
            f |= F_NFD_SELF;
        }
    }
    let mut lower = c.to_lowercase();
    if lower.next() == Some(c) && lower.next().is_none() {
        f |= F_LOWER_SELF;
    }
    f
}

fn bmp_table() -> &'static [u8] {
    static TABLE: OnceLock<Vec<u8>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0u32..0x10000)
            .map(|u| char::from_u32(u).map_or(0, compute_flags))
            .collect()
    })
}

/// Classification flags of `c` (`F_*` bits); table lookup for the BMP.
#[inline]
pub fn char_flags(c: char) -> u8 {
    let u = c as u32;
    if u < 0x10000 {
        bmp_table()[u as usize]
    } else {
        compute_flags(c)
    }
}

/// Scratch buffers reused across calls (one per worker thread).
#[derive(Default)]
pub struct NormScratch {
    stage1: Vec<NChar>,
    pending: Vec<(u8, char, bool)>,
}

/// The BERT normalizer: a configuration plus the general (any Unicode) normalization path.
#[derive(Clone, Debug)]
pub struct Normalizer {
    pub config: NormalizerConfig,
}

impl Normalizer {
    pub fn new(config: NormalizerConfig) -> Self {
        // Build the shared table now, not inside the first timed call.
        let _ = bmp_table();
        Self { config }
    }

    /// Normalize `text` into `out` (cleared first). Original character positions start at
    /// `base` (the character offset of `text` inside the caller's full string).
    pub fn normalize(
        &self,
        text: &str,
        base: u32,
        scratch: &mut NormScratch,
        out: &mut Vec<NChar>,
    ) {
        out.clear();
        let cfg = self.config;
        let st1 = &mut scratch.stage1;
        st1.clear();
        // Stage 1: clean_text and handle_chinese_chars.
        for (i, c0) in text.chars().enumerate() {
            let pos = base + i as u32;
            let f = char_flags(c0);
            let mut c = c0;
            if cfg.clean_text {
                if f & F_DROP != 0 {
                    continue;
                }
                if f & F_CLEAN_WS != 0 {
                    c = ' ';
                }
            }
            let me = NChar {
                c,
                start: pos,
                end: pos + 1,
            };
            if cfg.handle_chinese_chars && f & F_CHINESE != 0 {
                // HF: [(' ', +1), (c, 0), (' ', +1)]; inserted chars copy the previous alignment.
                let prev = st1.last().map_or((0, 0), |p| (p.start, p.end));
                st1.push(NChar {
                    c: ' ',
                    start: prev.0,
                    end: prev.1,
                });
                st1.push(me);
                st1.push(me);
                let last = st1.len() - 1;
                st1[last].c = ' ';
            } else {
                st1.push(me);
            }
        }
        if !cfg.strip_accents {
            for nc in st1.iter() {
                Self::emit_lower(cfg.lowercase, *nc, out);
            }
            return;
        }
        // Stage 2: NFD with canonical reordering, alignments assigned by position as HF's
        // `transform` does; then drop Mn; then lowercase.
        let pending = &mut scratch.pending;
        pending.clear();
        let mut next_in = 0usize; // next stage-1 char an unchanged/replacing char consumes
        let mut last = (0u32, 0u32);
        let flush = |pending: &mut Vec<(u8, char, bool)>,
                     next_in: &mut usize,
                     last: &mut (u32, u32),
                     out: &mut Vec<NChar>| {
            pending.sort_by_key(|k| k.0); // stable, like the reference
            for &(_, ch, inserted) in pending.iter() {
                if !inserted {
                    let src = st1[*next_in];
                    *next_in += 1;
                    *last = (src.start, src.end);
                }
                if char_flags(ch) & F_MN != 0 {
                    continue;
                }
                Self::emit_lower(
                    cfg.lowercase,
                    NChar {
                        c: ch,
                        start: last.0,
                        end: last.1,
                    },
                    out,
                );
            }
            pending.clear();
        };
        for nc in st1.iter() {
            let c = nc.c;
            let f = char_flags(c);
            if f & F_NFD_SELF != 0 {
                if !pending.is_empty() {
                    flush(pending, &mut next_in, &mut last, out);
                }
                // A starter that NFD leaves alone: emitted as is (ccc 0 flushes nothing after it
                // until the next starter, but nothing can reorder before a starter).
                pending.push((0, c, false));
                continue;
            }
            let mut first = true;
            decompose_canonical(c, |d| {
                let ccc = canonical_combining_class(d);
                if ccc == 0 && !pending.is_empty() {
                    flush(pending, &mut next_in, &mut last, out);
                }
                pending.push((ccc, d, !first));
                first = false;
            });
        }
        if !pending.is_empty() {
            flush(pending, &mut next_in, &mut last, out);
        }
    }

    #[inline]
    fn emit_lower(lowercase: bool, nc: NChar, out: &mut Vec<NChar>) {
        if !lowercase || char_flags(nc.c) & F_LOWER_SELF != 0 {
            out.push(nc);
        } else {
            for lc in nc.c.to_lowercase() {
                out.push(NChar { c: lc, ..nc });
            }
        }
    }

    /// Normalize a single character with no context (used to build ASCII tables and in tests).
    pub fn normalize_char(&self, c: char) -> Vec<char> {
        let mut s = NormScratch::default();
        let mut out = Vec::new();
        let mut buf = [0u8; 4];
        self.normalize(c.encode_utf8(&mut buf), 0, &mut s, &mut out);
        out.into_iter().map(|n| n.c).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(cfg: NormalizerConfig, s: &str) -> (String, Vec<(u32, u32)>) {
        let n = Normalizer::new(cfg);
        let mut sc = NormScratch::default();
        let mut out = Vec::new();
        n.normalize(s, 0, &mut sc, &mut out);
        (
            out.iter().map(|c| c.c).collect(),
            out.iter().map(|c| (c.start, c.end)).collect(),
        )
    }

    #[test]
    fn strips_accents_and_lowercases_with_alignments() {
        let (s, a) = norm(NormalizerConfig::default(), "ÉlÉgant");
        assert_eq!(s, "elegant");
        assert_eq!(
            a,
            vec![(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 7)]
        );
    }

    #[test]
    fn cleans_controls_and_whitespace() {
        let (s, a) = norm(NormalizerConfig::default(), "a\u{0}b\tc\u{fffd}\u{200b}d");
        // U+200B is Cf (format) -> removed; tab -> space.
        assert_eq!(s, "ab cd");
        assert_eq!(a, vec![(0, 1), (2, 3), (3, 4), (4, 5), (7, 8)]);
    }

    #[test]
    fn chinese_chars_are_spaced_and_hf_range_is_used() {
        let (s, _) = norm(NormalizerConfig::default(), "中文");
        assert_eq!(s, " 中  文 ");
        // U+2B820 is outside HF's ranges (Google includes it), U+2B920 is inside.
        assert!(!is_chinese_char('\u{2B820}'));
        assert!(is_chinese_char('\u{2B920}'));
    }

    #[test]
    fn lowercase_expansion_keeps_alignment() {
        let cfg = NormalizerConfig {
            strip_accents: false,
            ..Default::default()
        };
        let (s, a) = norm(cfg, "xİ");
        assert_eq!(s, "xi\u{307}");
        assert_eq!(a, vec![(0, 1), (1, 2), (1, 2)]);
    }

    #[test]
    fn cased_config_keeps_text() {
        let cfg = NormalizerConfig {
            strip_accents: false,
            lowercase: false,
            ..Default::default()
        };
        assert_eq!(norm(cfg, "Café").0, "Café");
    }
}
