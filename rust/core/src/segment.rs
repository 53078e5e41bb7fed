//! Dictionary-based Chinese word segmentation for whole-word masking.
//!
//! Re-implements jieba's accurate mode without the HMM (`jieba.cut(text, HMM=False)`,
//! jieba 0.42 `__init__.py`): the text is split into blocks of "han" characters
//! (U+4E00..U+9FD5, ASCII letters and digits, `+#&._%-`) and the rest; inside a han block,
//! every position gets the list of dictionary words starting there (a DAG), and dynamic
//! programming from the right picks the segmentation maximising the sum of
//! `ln(freq) - ln(total)` (ties: the longer word). Runs of single ASCII letters/digits are glued
//! back together. Outside han blocks every character is its own word (`"\r\n"` and each
//! whitespace character included).
//!
//! The dictionary is jieba's `dict.txt` format: `word freq [tag]` per line (the user supplies
//! it, e.g. the one shipped in the `jieba` package). Words live in a double-array trie, so the
//! DAG of a position is one walk.

use std::path::Path;

use crate::wordpiece::DoubleArrayTrie;
use crate::{Error, Result};

/// A jieba-compatible dictionary segmenter (no HMM).
#[derive(Clone, Debug)]
pub struct Segmenter {
    trie: DoubleArrayTrie,
    freqs: Vec<u64>,
    log_total: f64,
}

fn is_han_block(c: char) -> bool {
    matches!(c, '\u{4E00}'..='\u{9FD5}' | 'a'..='z' | 'A'..='Z' | '0'..='9' | '+' | '#' | '&' | '.' | '_' | '%' | '-')
}

impl Segmenter {
    /// Parse a dictionary in jieba's format. Later lines override the frequency of earlier
    /// duplicates, and every line counts towards the total, as in jieba.
    pub fn from_text(text: &str, name: &str) -> Result<Self> {
        let mut words: Vec<(String, u64)> = Vec::new();
        let mut index = std::collections::HashMap::<String, usize>::new();
        let mut total: u64 = 0;
        for (lineno, raw) in text.lines().enumerate() {
            let line = raw.trim();
            let mut parts = line.split(' ');
            let word = parts.next().unwrap_or("");
            let freq = parts.next().and_then(|f| f.parse::<u64>().ok());
            let (Some(freq), false) = (freq, word.is_empty()) else {
                return Err(Error::InvalidInput(format!(
                    "invalid dictionary entry in {name} at line {}: {line:?} (expected 'word freq [tag]')",
                    lineno + 1
                )));
            };
            total = total.saturating_add(freq);
            match index.get(word) {
                Some(&i) => words[i].1 = freq,
                None => {
                    index.insert(word.to_string(), words.len());
                    words.push((word.to_string(), freq));
                }
            }
        }
        if words.is_empty() || total == 0 {
            return Err(Error::InvalidInput(format!(
                "dictionary {name} has no words with a positive frequency"
            )));
        }
        let trie = DoubleArrayTrie::build(
            words
                .iter()
                .enumerate()
                .map(|(i, (w, _))| (w.as_bytes(), i as u32)),
        );
        let freqs = words.into_iter().map(|(_, f)| f).collect();
        Ok(Self {
            trie,
            freqs,
            log_total: (total as f64).ln(),
        })
    }

    /// Read a dictionary file (UTF-8, jieba's `dict.txt` format).
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| {
            Error::Io(std::io::Error::new(
                e.kind(),
                format!("cannot read dictionary {}: {e}", path.display()),
            ))
        })?;
        let text = std::str::from_utf8(&bytes).map_err(|e| {
            Error::InvalidInput(format!(
                "dictionary {} is not valid UTF-8 (byte {})",
                path.display(),
                e.valid_up_to()
            ))
        })?;
        Self::from_text(text, &path.display().to_string())
    }

    /// Segment `text` into words: character ranges `[start, end)` covering the text in order.
    pub fn cut(&self, text: &str) -> Vec<(u32, u32)> {
        let chars: Vec<char> = text.chars().collect();
        let mut out = Vec::with_capacity(chars.len());
        let n = chars.len();
        let mut i = 0;
        while i < n {
            let start = i;
            if is_han_block(chars[i]) {
                while i < n && is_han_block(chars[i]) {
                    i += 1;
                }
                self.cut_block(&chars[start..i], start as u32, &mut out);
            } else {
                while i < n && !is_han_block(chars[i]) {
                    if chars[i] == '\r' && i + 1 < n && chars[i + 1] == '\n' {
                        out.push((i as u32, i as u32 + 2));
                        i += 2;
                    } else {
                        out.push((i as u32, i as u32 + 1));
                        i += 1;
                    }
                }
            }
        }
        out
    }

    /// Frequency of the word ending at `node`, if the node ends a dictionary word.
    fn freq_at(&self, node: u32) -> Option<u64> {
        self.trie.value(node).map(|i| self.freqs[i as usize])
    }

    fn cut_block(&self, b: &[char], base: u32, out: &mut Vec<(u32, u32)>) {
        let n = b.len();
        // DAG: for each start k, the ends x (inclusive) of words b[k..=x] with freq > 0.
        let mut dag: Vec<Vec<(usize, u64)>> = Vec::with_capacity(n);
        for k in 0..n {
            let mut ends = Vec::new();
            let mut node = DoubleArrayTrie::ROOT;
            let mut single_freq = 0u64;
            'walk: for (i, &c) in b.iter().enumerate().skip(k) {
                let mut buf = [0u8; 4];
                for &byte in c.encode_utf8(&mut buf).as_bytes() {
                    match self.trie.step(node, byte) {
                        Some(t) => node = t,
                        None => break 'walk,
                    }
                }
                let f = self.freq_at(node).unwrap_or(0);
                if i == k {
                    single_freq = f;
                }
                if f > 0 {
                    ends.push((i, f));
                }
            }
            if ends.is_empty() {
                ends.push((k, single_freq));
            }
            dag.push(ends);
        }
        // route[idx] = max over x of (ln(freq or 1) - ln(total) + route[x + 1].0, x).
        let mut route: Vec<(f64, usize)> = vec![(0.0, 0); n + 1];
        for idx in (0..n).rev() {
            let mut best: Option<(f64, usize)> = None;
            for &(x, f) in &dag[idx] {
                let v = (f.max(1) as f64).ln() - self.log_total + route[x + 1].0;
                if best.is_none_or(|(bv, bx)| v > bv || (v == bv && x > bx)) {
                    best = Some((v, x));
                }
            }
            route[idx] = best.unwrap_or((0.0, idx));
        }
        let mut x = 0;
        let mut buf_start: Option<usize> = None;
        while x < n {
            let y = route[x].1 + 1;
            if y - x == 1 && b[x].is_ascii_alphanumeric() {
                buf_start.get_or_insert(x);
            } else {
                if let Some(s) = buf_start.take() {
                    out.push((base + s as u32, base + x as u32));
                }
                out.push((base + x as u32, base + y as u32));
            }
            x = y;
        }
        if let Some(s) = buf_start {
            out.push((base + s as u32, base + n as u32));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(seg: &Segmenter, t: &str) -> Vec<String> {
        let chars: Vec<char> = t.chars().collect();
        seg.cut(t)
            .iter()
            .map(|&(s, e)| chars[s as usize..e as usize].iter().collect())
            .collect()
    }

    #[test]
    fn picks_the_most_probable_path() {
        let d = "我 100\n来到 50\n北京 80\n清华 30\n清华大学 40\n大学 60\n北京大学 5\n";
        let seg = Segmenter::from_text(d, "test").unwrap();
        assert_eq!(
            words(&seg, "我来到北京清华大学"),
            ["我", "来到", "北京", "清华大学"]
        );
        assert_eq!(
            words(&seg, "abc12 北京\r\nx"),
            ["abc12", " ", "北京", "\r\n", "x"]
        );
    }

    #[test]
    fn rejects_bad_dictionaries() {
        assert!(Segmenter::from_text("word\n", "d").is_err());
        assert!(Segmenter::from_text("word x\n", "d").is_err());
        assert!(Segmenter::from_text("", "d").is_err());
    }
}
