//! WordPiece vocabulary training.
//!
//! The algorithm of HF `tokenizers`' `WordPieceTrainer` (which runs its BPE trainer with a
//! `##` continuation prefix), written from the description:
//!
//! 1. Count words: every line of every file goes through the BERT normalizer and
//!    pre-tokenizer the trained tokenizer will use (same settings), in parallel chunks.
//!    Words longer than `max_input_chars_per_word` are skipped (they always encode to `[UNK]`).
//! 2. Alphabet: each character seen at the start of a word becomes a token `c`, each one seen
//!    inside a word a token `##c` (sorted, after the special tokens, which come first).
//! 3. Merges: words are sequences of symbols; repeatedly merge the adjacent pair with the
//!    highest total count (ties: the smaller pair of ids, so the result is deterministic),
//!    adding the merged token (`a` + `##b` -> `ab`, `##a` + `##b` -> `##ab`), until the
//!    vocabulary has `vocab_size` entries or the best pair occurs fewer than `min_frequency`
//!    times. Pair counts are updated incrementally (only words containing the merged pair are
//!    rewritten) and a lazy max-heap picks the next pair.
//!
//! The output never depends on the thread count: counting merges per-chunk maps, and every
//! ordering is by (count, id) or by string.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;

use rayon::prelude::*;

use crate::normalize::{NChar, NormScratch, Normalizer, NormalizerConfig};
use crate::pretokenize::split_words;
use crate::shards::check_regular_file;
use crate::{pool, Error, Result};

/// Training settings.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub vocab_size: usize,
    pub min_frequency: u64,
    pub special_tokens: Vec<String>,
    pub normalizer: NormalizerConfig,
    pub continuing_subword_prefix: String,
    pub max_input_chars_per_word: usize,
}

impl TrainConfig {
    /// Reject settings the tokenizer built from the result would reject (the rules of
    /// `Tokenizer::new`, `WordPiece::new` and `Vocab::new`), so they fail before the long
    /// counting pass rather than after it.
    pub fn validate(&self) -> Result<()> {
        if self.vocab_size == 0 {
            return Err(Error::InvalidInput("vocab_size must be positive".into()));
        }
        if let Some(i) = self.special_tokens.iter().position(|t| t.is_empty()) {
            return Err(Error::InvalidInput(format!(
                "special tokens must not be empty strings: special_tokens[{i}] is \"\""
            )));
        }
        if self.continuing_subword_prefix.is_empty() {
            return Err(Error::InvalidInput(
                "continuing_subword_prefix must not be empty (got \"\")".into(),
            ));
        }
        if self.max_input_chars_per_word == 0 {
            return Err(Error::InvalidInput(
                "max_input_chars_per_word must be positive (got 0)".into(),
            ));
        }
        Ok(())
    }
}

/// Word counts of the corpus files after normalization and pre-tokenization.
pub fn count_words(
    files: &[PathBuf],
    normalizer: NormalizerConfig,
    max_chars: usize,
    num_threads: Option<usize>,
) -> Result<HashMap<String, u64>> {
    let norm = Normalizer::new(normalizer);
    let mut total: HashMap<String, u64> = HashMap::new();
    const CHUNK: usize = 4 << 20;
    // Every file is checked before the first is read (and a FIFO is never opened).
    for path in files {
        check_regular_file(path, "corpus")?;
    }
    for path in files {
        let f = std::fs::File::open(path).map_err(|e| {
            Error::Io(std::io::Error::new(
                e.kind(),
                format!("cannot open {}: {e}", path.display()),
            ))
        })?;
        let mut reader = BufReader::with_capacity(1 << 20, f);
        let mut lineno = 0u64;
        loop {
            // Read ~CHUNK bytes of whole lines.
            let mut lines: Vec<String> = Vec::new();
            let mut size = 0;
            let mut buf = Vec::new();
            while size < CHUNK {
                buf.clear();
                let n = reader.read_until(b'\n', &mut buf)?;
                if n == 0 {
                    break;
                }
                lineno += 1;
                size += n;
                let s = String::from_utf8(std::mem::take(&mut buf)).map_err(|e| {
                    Error::InvalidInput(format!(
                        "{}: line {lineno} is not valid UTF-8 (invalid byte at column {})",
                        path.display(),
                        e.utf8_error().valid_up_to() + 1
                    ))
                })?;
                lines.push(s);
            }
            if lines.is_empty() {
                break;
            }
            let count_part = |part: &[String]| -> HashMap<String, u64> {
                let mut m: HashMap<String, u64> = HashMap::new();
                let mut sc = NormScratch::default();
                let mut nchars: Vec<NChar> = Vec::new();
                let mut w = String::new();
                for line in part {
                    norm.normalize(line, 0, &mut sc, &mut nchars);
                    split_words(&nchars, |a, b| {
                        if b - a > max_chars {
                            return;
                        }
                        w.clear();
                        w.extend(nchars[a..b].iter().map(|c| c.c));
                        match m.get_mut(w.as_str()) {
                            Some(c) => *c += 1,
                            None => {
                                m.insert(w.clone(), 1);
                            }
                        }
                    });
                }
                m
            };
            let parts: Vec<HashMap<String, u64>> = pool::run(num_threads, || {
                lines
                    .par_chunks(2048.max(lines.len() / 64))
                    .map(count_part)
                    .collect()
            })?;
            for m in parts {
                for (k, v) in m {
                    *total.entry(k).or_insert(0) += v;
                }
            }
        }
    }
    Ok(total)
}

/// Train a WordPiece vocabulary (tokens in id order) from corpus files.
pub fn train(
    files: &[PathBuf],
    cfg: &TrainConfig,
    num_threads: Option<usize>,
) -> Result<Vec<String>> {
    if files.is_empty() {
        return Err(Error::InvalidInput("train needs at least one file".into()));
    }
    cfg.validate()?;
    let counts = count_words(
        files,
        cfg.normalizer,
        cfg.max_input_chars_per_word,
        num_threads,
    )?;
    Ok(train_from_counts(counts, cfg))
}

/// The merge phase on given word counts.
pub fn train_from_counts(counts: HashMap<String, u64>, cfg: &TrainConfig) -> Vec<String> {
    let prefix = cfg.continuing_subword_prefix.as_str();
    let mut vocab: Vec<String> = Vec::new();
    let mut ids: HashMap<String, u32> = HashMap::new();
    let mut add = |t: String, vocab: &mut Vec<String>| -> u32 {
        if let Some(&i) = ids.get(&t) {
            return i;
        }
        let i = vocab.len() as u32;
        ids.insert(t.clone(), i);
        vocab.push(t);
        i
    };
    for s in &cfg.special_tokens {
        add(s.clone(), &mut vocab);
    }
    let mut words: Vec<(String, u64)> = counts.into_iter().collect();
    words.sort_unstable();
    // Alphabet.
    let mut alphabet: Vec<String> = Vec::new();
    {
        let mut seen = std::collections::HashSet::new();
        for (w, _) in &words {
            for (k, c) in w.chars().enumerate() {
                let t = if k == 0 {
                    c.to_string()
                } else {
                    format!("{prefix}{c}")
                };
                if seen.insert(t.clone()) {
                    alphabet.push(t);
                }
            }
        }
    }
    alphabet.sort_unstable();
    for t in alphabet {
        add(t, &mut vocab);
    }
    // Words as symbol sequences.
    let mut syms: Vec<Vec<u32>> = Vec::with_capacity(words.len());
    let mut freq: Vec<i64> = Vec::with_capacity(words.len());
    let mut tmp = [0u8; 4];
    for (w, c) in &words {
        let mut v = Vec::with_capacity(w.len());
        for (k, ch) in w.chars().enumerate() {
            let t = if k == 0 {
                ch.encode_utf8(&mut tmp).to_string()
            } else {
                format!("{prefix}{ch}")
            };
            v.push(add(t, &mut vocab));
        }
        syms.push(v);
        freq.push(*c as i64);
    }
    drop(words);
    let mut pair_count: HashMap<(u32, u32), i64> = HashMap::new();
    let mut pair_words: HashMap<(u32, u32), Vec<u32>> = HashMap::new();
    for (wi, s) in syms.iter().enumerate() {
        for p in s.windows(2) {
            let key = (p[0], p[1]);
            *pair_count.entry(key).or_insert(0) += freq[wi];
            let list = pair_words.entry(key).or_default();
            if list.last() != Some(&(wi as u32)) {
                list.push(wi as u32);
            }
        }
    }
    let mut heap: BinaryHeap<(i64, Reverse<u32>, Reverse<u32>)> = pair_count
        .iter()
        .map(|(&(a, b), &c)| (c, Reverse(a), Reverse(b)))
        .collect();
    let mut mark = vec![0u32; syms.len()];
    let mut epoch = 0u32;
    // Pair counts are i64; a min_frequency beyond i64::MAX is unreachable (no merge), not -1.
    let min_freq = i64::try_from(cfg.min_frequency.max(1)).unwrap_or(i64::MAX);
    while vocab.len() < cfg.vocab_size {
        let Some((c, Reverse(a), Reverse(b))) = heap.pop() else {
            break;
        };
        let cur = pair_count.get(&(a, b)).copied().unwrap_or(0);
        if cur != c {
            if cur > 0 {
                heap.push((cur, Reverse(a), Reverse(b)));
            }
            continue;
        }
        if c < min_freq {
            break;
        }
        let merged = {
            let right = vocab[b as usize]
                .strip_prefix(prefix)
                .unwrap_or(&vocab[b as usize]);
            format!("{}{}", vocab[a as usize], right)
        };
        let new = add(merged, &mut vocab);
        epoch += 1;
        let affected = pair_words.remove(&(a, b)).unwrap_or_default();
        let mut touched: Vec<(u32, u32)> = Vec::new();
        for wi in affected {
            let wi = wi as usize;
            if mark[wi] == epoch {
                continue;
            }
            mark[wi] = epoch;
            let s = &syms[wi];
            if !s.windows(2).any(|p| p[0] == a && p[1] == b) {
                continue;
            }
            let f = freq[wi];
            for p in s.windows(2) {
                *pair_count.get_mut(&(p[0], p[1])).expect("pair counted") -= f;
                touched.push((p[0], p[1]));
            }
            let mut out = Vec::with_capacity(s.len());
            let mut i = 0;
            while i < s.len() {
                if i + 1 < s.len() && s[i] == a && s[i + 1] == b {
                    out.push(new);
                    i += 2;
                } else {
                    out.push(s[i]);
                    i += 1;
                }
            }
            for p in out.windows(2) {
                let key = (p[0], p[1]);
                *pair_count.entry(key).or_insert(0) += f;
                touched.push(key);
                let list = pair_words.entry(key).or_default();
                if list.last() != Some(&(wi as u32)) {
                    list.push(wi as u32);
                }
            }
            syms[wi] = out;
        }
        touched.sort_unstable();
        touched.dedup();
        for key in touched {
            let c = pair_count.get(&key).copied().unwrap_or(0);
            if c > 0 {
                heap.push((c, Reverse(key.0), Reverse(key.1)));
            } else {
                pair_count.remove(&key);
            }
        }
    }
    vocab
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(vocab_size: usize) -> TrainConfig {
        TrainConfig {
            vocab_size,
            min_frequency: 2,
            special_tokens: vec!["[PAD]".into(), "[UNK]".into()],
            normalizer: NormalizerConfig::default(),
            continuing_subword_prefix: "##".into(),
            max_input_chars_per_word: 100,
        }
    }

    #[test]
    fn merges_most_frequent_pairs_first() {
        let counts: HashMap<String, u64> = [
            ("hug", 10),
            ("pug", 5),
            ("pun", 12),
            ("bun", 4),
            ("hugs", 5),
        ]
        .iter()
        .map(|(w, c)| (w.to_string(), *c))
        .collect();
        let v = train_from_counts(counts, &cfg(100));
        assert_eq!(&v[..2], ["[PAD]", "[UNK]"]);
        // alphabet: b h p (initial) and ##g ##n ##s ##u (continuation)
        assert_eq!(&v[2..9], ["##g", "##n", "##s", "##u", "b", "h", "p"]);
        // most frequent pair: (##u, ##g) 20 vs (##u, ##n) 16 -> "##ug" first.
        assert_eq!(v[9], "##ug");
        assert!(v.contains(&"hug".to_string()) && v.contains(&"pun".to_string()));
    }

    #[test]
    fn respects_min_frequency_and_vocab_size() {
        let counts: HashMap<String, u64> = [("ab", 1), ("cd", 1)]
            .iter()
            .map(|(w, c)| (w.to_string(), *c))
            .collect();
        let v = train_from_counts(counts.clone(), &cfg(100));
        assert_eq!(v.len(), 2 + 4); // no pair reaches min_frequency 2
        let v = train_from_counts(counts, &cfg(3));
        assert_eq!(v.len(), 6); // specials + alphabet are always kept
    }

    #[test]
    fn min_frequency_beyond_i64_merges_nothing() {
        // "ab" x 5: the one pair (a, ##b) occurs 5 times. Only a threshold of at most 5
        // merges it; u64 values past i64::MAX once wrapped to negative thresholds (= 1).
        let counts: HashMap<String, u64> = [("ab".to_string(), 5)].into_iter().collect();
        for (min_frequency, merged) in [
            (5, true),
            (6, false),
            (i64::MAX as u64, false),
            (1 << 63, false),
            (u64::MAX, false),
        ] {
            let v = train_from_counts(
                counts.clone(),
                &TrainConfig {
                    min_frequency,
                    ..cfg(100)
                },
            );
            assert_eq!(v.contains(&"ab".to_string()), merged, "{min_frequency}");
            assert_eq!(v.len(), 4 + merged as usize, "{min_frequency}: {v:?}");
        }
    }

    #[test]
    fn settings_the_tokenizer_rejects_fail_before_reading_files() {
        // The file does not exist: validation must fail first, with its own message.
        let files = [PathBuf::from("/nonexistent/unimask-train-corpus.txt")];
        let bad = [
            (
                TrainConfig {
                    special_tokens: vec!["[PAD]".into(), String::new()],
                    ..cfg(100)
                },
                "special_tokens[1]",
            ),
            (
                TrainConfig {
                    continuing_subword_prefix: String::new(),
                    ..cfg(100)
                },
                "continuing_subword_prefix",
            ),
            (
                TrainConfig {
                    max_input_chars_per_word: 0,
                    ..cfg(100)
                },
                "max_input_chars_per_word",
            ),
            (cfg(0), "vocab_size"),
        ];
        for (c, what) in bad {
            match train(&files, &c, Some(1)) {
                Err(Error::InvalidInput(m)) => assert!(m.contains(what), "{m}"),
                other => panic!("{what}: {other:?}"),
            }
        }
        assert!(matches!(
            train(&files, &cfg(100), Some(1)),
            Err(Error::Io(_))
        ));
    }

    #[test]
    fn directories_are_rejected_naming_the_path() {
        let dir = std::env::temp_dir();
        match train(std::slice::from_ref(&dir), &cfg(100), Some(1)) {
            Err(Error::Io(e)) => {
                let m = e.to_string();
                assert!(
                    m.contains(&dir.display().to_string()) && m.contains("directory"),
                    "{m}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
