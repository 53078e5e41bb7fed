//! Whitespace and punctuation splitting into words with character offsets.
//!
//! HF `BertPreTokenizer` (tokenizers 0.23.3, `pre_tokenizers/bert.rs`): split the normalized
//! text on `char::is_whitespace` (dropping it), then isolate every BERT punctuation character
//! (ASCII 33-47, 58-64, 91-96, 123-126 and Unicode P*) as a word of its own.

use crate::normalize::{char_flags, NChar, F_PUNCT, F_WS};

/// Call `word(start, end)` for every word of `chars` (index ranges into `chars`).
#[inline]
pub fn split_words(chars: &[NChar], mut word: impl FnMut(usize, usize)) {
    let mut start = usize::MAX;
    for (i, nc) in chars.iter().enumerate() {
        let f = char_flags(nc.c);
        if f & (F_WS | F_PUNCT) != 0 {
            if start != usize::MAX {
                word(start, i);
                start = usize::MAX;
            }
            if f & F_WS == 0 {
                word(i, i + 1);
            }
        } else if start == usize::MAX {
            start = i;
        }
    }
    if start != usize::MAX {
        word(start, chars.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        let chars: Vec<NChar> = s
            .chars()
            .map(|c| NChar {
                c,
                start: 0,
                end: 0,
            })
            .collect();
        let mut out = vec![];
        split_words(&chars, |a, b| {
            out.push(chars[a..b].iter().map(|c| c.c).collect())
        });
        out
    }

    #[test]
    fn splits_whitespace_and_isolates_punctuation() {
        assert_eq!(
            words("Hey friend!  How are you?!?"),
            ["Hey", "friend", "!", "How", "are", "you", "?", "!", "?"]
        );
        assert_eq!(
            words("a\u{3000}b\u{2014}c$d"),
            ["a", "b", "\u{2014}", "c", "$", "d"]
        );
        assert!(words("   ").is_empty());
    }
}
