//! Next-sentence-prediction pairs from documents (BERT's create_pretraining_data recipe),
//! and sentence-order prediction (ALBERT).
//!
//! google-research/bert `create_pretraining_data.py`, `create_instances_from_document`:
//! the target length is `max_seq_length - 3`, or with probability `short_seq_prob` a random
//! `randint(2, max)`; sentences are accumulated until the target is reached, the chunk is
//! split at `randint(1, len(chunk) - 1)`; with probability 0.5 (or when the chunk has a single
//! sentence) segment B comes from a random other document starting at a random sentence, and
//! the unused sentences of the chunk are put back; `truncate_seq_pair` then trims the longer
//! side from the front or the back with probability 0.5 each. Label 1 = random next.
//!
//! Sentence-order prediction (ALBERT, Lan et al. 2020, `create_instances_from_document`):
//! B is always the true continuation and with probability 0.5 the two segments are swapped
//! (label 1 = swapped); a chunk with a single sentence still takes a random B (label 1), as
//! in ALBERT's code.

use std::ops::Range;

use crate::masking::{self, Ragged};
use crate::rng::{stream, Rng};
use crate::{invalid, Result};

/// Settings of the pair builder.
#[derive(Clone, Debug)]
pub struct NspConfig {
    /// Length of `[CLS] A [SEP] B [SEP]` (BERT: 128 or 512).
    pub max_seq_length: usize,
    /// Probability of a shorter random target length (0.1).
    pub short_seq_prob: f64,
    /// Probability of a random next segment (0.5), or of a swap with `sop`.
    pub random_next_prob: f64,
    /// Sentence-order prediction instead of next-sentence prediction.
    pub sop: bool,
}

impl NspConfig {
    /// Reject unusable settings.
    pub fn validate(&self) -> Result<()> {
        if self.max_seq_length < 5 {
            return invalid!(
                "max_seq_length must be >= 5 ([CLS] A [SEP] B [SEP]), got {}",
                self.max_seq_length
            );
        }
        for (n, p) in [
            ("short_seq_prob", self.short_seq_prob),
            ("random_next_prob", self.random_next_prob),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return invalid!("{n} must be in [0, 1], got {p}");
            }
        }
        Ok(())
    }
}

/// BERT's `truncate_seq_pair` on token ranges: while too long, trim the longer range (B on
/// ties) at the front or the back with probability 0.5 each.
pub fn truncate_seq_pair(
    a: &mut Range<usize>,
    b: &mut Range<usize>,
    max_tokens: usize,
    rng: &mut Rng,
) {
    while a.len() + b.len() > max_tokens {
        let t = if a.len() > b.len() { &mut *a } else { &mut *b };
        if t.start >= t.end {
            break;
        }
        if rng.bernoulli(0.5) {
            t.start += 1;
        } else {
            t.end -= 1;
        }
    }
}

/// Pairs built from documents, stored flat.
#[derive(Debug, Default)]
pub struct Pairs {
    pub a_values: Vec<i64>,
    pub a_offsets: Vec<i64>,
    pub b_values: Vec<i64>,
    pub b_offsets: Vec<i64>,
    /// 1 = random next (NSP) / swapped (SOP), 0 = true continuation.
    pub labels: Vec<i64>,
    /// Index of the document each pair came from.
    pub doc: Vec<i64>,
}

struct Pair {
    a: Vec<i64>,
    b: Vec<i64>,
    label: i64,
}

/// Pairs of one document (`docs[d]` are sentence indices into `sentences`).
fn pairs_of_document(
    cfg: &NspConfig,
    sentences: &Ragged<'_>,
    docs: &[Range<usize>],
    d: usize,
    rng: &mut Rng,
) -> Vec<Pair> {
    let doc = docs[d].clone();
    let max_num_tokens = cfg.max_seq_length - 3;
    let target = if rng.bernoulli(cfg.short_seq_prob) {
        rng.randint(2, max_num_tokens)
    } else {
        max_num_tokens
    };
    let mut out = Vec::new();
    let mut chunk: Vec<usize> = Vec::new();
    let mut cur_len = 0;
    let n = doc.len();
    let mut i = 0usize;
    while i < n {
        let s = doc.start + i;
        chunk.push(s);
        cur_len += sentences.row(s).len();
        if i == n - 1 || cur_len >= target {
            if !chunk.is_empty() {
                let a_end = if chunk.len() >= 2 {
                    rng.randint(1, chunk.len() - 1)
                } else {
                    1
                };
                let mut a: Vec<i64> = chunk[..a_end]
                    .iter()
                    .flat_map(|&s| sentences.row(s).iter().copied())
                    .collect();
                let mut b: Vec<i64> = Vec::new();
                let label;
                let random_b = if cfg.sop {
                    chunk.len() == 1
                } else {
                    chunk.len() == 1 || rng.bernoulli(cfg.random_next_prob)
                };
                if random_b {
                    label = 1;
                    let target_b = target.saturating_sub(a.len());
                    let mut rd = d;
                    for _ in 0..10 {
                        rd = rng.randint(0, docs.len() - 1);
                        if rd != d {
                            break;
                        }
                    }
                    let rdoc = docs[rd].clone();
                    if !rdoc.is_empty() {
                        let start = rng.randint(0, rdoc.len() - 1);
                        for s in rdoc.start + start..rdoc.end {
                            b.extend_from_slice(sentences.row(s));
                            if b.len() >= target_b {
                                break;
                            }
                        }
                    }
                    // put the unused sentences back
                    i -= chunk.len() - a_end;
                } else {
                    b = chunk[a_end..]
                        .iter()
                        .flat_map(|&s| sentences.row(s).iter().copied())
                        .collect();
                    if cfg.sop && rng.bernoulli(cfg.random_next_prob) {
                        std::mem::swap(&mut a, &mut b);
                        label = 1;
                    } else {
                        label = 0;
                    }
                }
                let (mut ra, mut rb) = (0..a.len(), 0..b.len());
                truncate_seq_pair(&mut ra, &mut rb, max_num_tokens, rng);
                if !ra.is_empty() && !rb.is_empty() {
                    out.push(Pair {
                        a: a[ra].to_vec(),
                        b: b[rb].to_vec(),
                        label,
                    });
                }
            }
            chunk.clear();
            cur_len = 0;
        }
        i += 1;
    }
    out
}

/// Build NSP/SOP pairs from documents: `sentences` holds every sentence's token ids,
/// `doc_offsets` (length = documents + 1) the sentence range of each document. Each
/// document uses the stream `(seed, epoch, document index)`, so the result does not depend
/// on `threads`.
pub fn build_pairs(
    cfg: &NspConfig,
    sentences: Ragged<'_>,
    doc_offsets: &[i64],
    seed: u64,
    epoch: u64,
    threads: Option<usize>,
) -> Result<Pairs> {
    cfg.validate()?;
    if doc_offsets.is_empty() {
        return invalid!("doc_offsets must have at least one entry");
    }
    let ns = sentences.len() as i64;
    let mut docs = Vec::with_capacity(doc_offsets.len() - 1);
    for w in 0..doc_offsets.len() - 1 {
        let (s, e) = (doc_offsets[w], doc_offsets[w + 1]);
        if s < 0 || e < s || e > ns {
            return invalid!(
                "doc_offsets[{w}..{}] = {s}..{e} is not a valid sentence range (0..{ns})",
                w + 1
            );
        }
        docs.push(s as usize..e as usize);
    }
    if docs.is_empty() {
        return Ok(Pairs {
            a_offsets: vec![0],
            b_offsets: vec![0],
            ..Default::default()
        });
    }
    let mut per_doc: Vec<Vec<Pair>> = (0..docs.len()).map(|_| Vec::new()).collect();
    let work = sentences.values.len();
    masking::for_each_row(threads, per_doc.iter_mut().collect(), work, |d, slot| {
        let mut rng = Rng::new(seed, epoch, d as u64, stream::NSP);
        *slot = pairs_of_document(cfg, &sentences, &docs, d, &mut rng);
        Ok(())
    })?;
    let mut out = Pairs {
        a_offsets: vec![0],
        b_offsets: vec![0],
        ..Default::default()
    };
    for (d, pairs) in per_doc.into_iter().enumerate() {
        for p in pairs {
            out.a_values.extend_from_slice(&p.a);
            out.a_offsets.push(out.a_values.len() as i64);
            out.b_values.extend_from_slice(&p.b);
            out.b_offsets.push(out.b_values.len() as i64);
            out.labels.push(p.label);
            out.doc.push(d as i64);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus() -> (Vec<i64>, Vec<i64>, Vec<i64>) {
        // 20 documents of 8 sentences of 10 tokens; token = doc * 1000 + sentence * 10 + k
        let mut vals = Vec::new();
        let mut offs = vec![0i64];
        let mut docs = vec![0i64];
        for d in 0..20 {
            for s in 0..8 {
                vals.extend((0..10).map(|k| d * 1000 + s * 10 + k));
                offs.push(vals.len() as i64);
            }
            docs.push(offs.len() as i64 - 1);
        }
        (vals, offs, docs)
    }

    #[test]
    fn truncate_trims_longer_side() {
        let mut rng = Rng::new(0, 0, 0, 0);
        let (mut a, mut b) = (0..10, 0..3);
        truncate_seq_pair(&mut a, &mut b, 8, &mut rng);
        assert_eq!(a.len() + b.len(), 8);
        assert_eq!(b, 0..3);
    }

    #[test]
    fn pairs_follow_the_recipe() {
        let (vals, offs, docs) = corpus();
        let sents = Ragged::new(&vals, &offs, "s").unwrap();
        let cfg = NspConfig {
            max_seq_length: 40,
            short_seq_prob: 0.1,
            random_next_prob: 0.5,
            sop: false,
        };
        let p = build_pairs(&cfg, sents, &docs, 1, 0, Some(1)).unwrap();
        let p2 = build_pairs(&cfg, sents, &docs, 1, 0, Some(3)).unwrap();
        assert_eq!(p.a_values, p2.a_values);
        assert_eq!(p.labels, p2.labels);
        let n = p.labels.len();
        assert!(n > 50);
        let mut random = 0;
        for i in 0..n {
            let a = &p.a_values[p.a_offsets[i] as usize..p.a_offsets[i + 1] as usize];
            let b = &p.b_values[p.b_offsets[i] as usize..p.b_offsets[i + 1] as usize];
            assert!(!a.is_empty() && !b.is_empty());
            assert!(a.len() + b.len() <= 37);
            let da = a[0] / 1000;
            assert_eq!(da, p.doc[i]);
            if p.labels[i] == 0 {
                // continuation: same document and b follows a
                assert_eq!(b[0] / 1000, da);
                assert!(b[0] > *a.last().unwrap());
            } else {
                random += 1;
                assert_ne!(b[0] / 1000, da);
            }
        }
        let frac = random as f64 / n as f64;
        assert!(frac > 0.35 && frac < 0.7, "{frac}");
    }

    #[test]
    fn sop_swaps_segments() {
        let (vals, offs, docs) = corpus();
        let sents = Ragged::new(&vals, &offs, "s").unwrap();
        let cfg = NspConfig {
            max_seq_length: 40,
            short_seq_prob: 0.0,
            random_next_prob: 0.5,
            sop: true,
        };
        let p = build_pairs(&cfg, sents, &docs, 1, 0, None).unwrap();
        for i in 0..p.labels.len() {
            let a = &p.a_values[p.a_offsets[i] as usize..p.a_offsets[i + 1] as usize];
            let b = &p.b_values[p.b_offsets[i] as usize..p.b_offsets[i + 1] as usize];
            assert_eq!(a[0] / 1000, b[0] / 1000);
            assert_eq!(p.labels[i] == 1, a[0] > b[0]);
        }
    }
}
