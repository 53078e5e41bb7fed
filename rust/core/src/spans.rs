//! Span sampling: UNILM n-grams, SpanBERT geometric spans, MASS, T5 span corruption.
//!
//! Sources:
//! - UNILM (Dong et al. 2019, arXiv 1905.03197, section 2.4; released `seq2seq_loader.py`):
//!   from a random candidate position, 80% of the time a unigram, 20% an n-gram of length
//!   uniform in `2..=3`, added until the 15% budget is reached.
//! - SpanBERT (Joshi et al. 2020, section 3.1): span length `~ Geometric(p = 0.2)` clipped at
//!   10 (the released code samples from the geometric pmf truncated to `1..=10` and
//!   renormalised, mean 3.8), measured in whole words, anchored at a random token, budget
//!   `ceil(0.15 * n)` met exactly (the last span cut at it, as `PairWithSpanMaskingScheme.mask`
//!   of the released `masking.py`), one 80/10/10 decision per span.
//! - MASS (Song et al. 2019, section 2.2 and its fairseq code): one contiguous span of
//!   `k = round(0.5 * n)` tokens starting at the beginning 20%, at the end 20%, elsewhere 60%.
//! - T5 (Raffel et al. 2020, `random_spans_noise_mask`): `round(n * 0.15)` noise tokens in
//!   `round(noise / 3)` spans, lengths from a random segmentation, spans interleaved with
//!   non-noise runs (starting with non-noise); sentinels count down from the top of the vocab.

use crate::masking::{checked_padded_len, filled, py_round, Ragged, Scratch, Specials, IGNORE};
use crate::rng::{stream, Rng};
use crate::{invalid, masking, Result};

/// Sample a span length from `Geometric(p)` truncated to `1..=max_len` (renormalised).
#[inline]
pub fn truncated_geometric(p: f64, max_len: usize, rng: &mut Rng) -> usize {
    if p >= 1.0 || max_len <= 1 {
        return 1;
    }
    let q = 1.0 - p;
    let tail = 1.0 - q.powi(max_len as i32); // P(G <= max_len)
    let u = rng.uniform() * tail; // CDF(l) = 1 - q^l
    let l = ((1.0 - u).ln() / q.ln()).floor() as usize + 1;
    l.clamp(1, max_len)
}

/// UNILM: shuffle candidate units; from each not yet taken, an n-gram of 1 unit, or with
/// probability `prob` of `2..=max_n` units; stop at the budget (in tokens) and at special
/// tokens. The n-gram never cuts a unit: a unit that does not fit ends the n-gram.
pub fn select_ngrams(s: &mut Scratch, budget: usize, prob: f64, max_n: usize, rng: &mut Rng) {
    let n_units = s.units.len();
    s.order.clear();
    s.order.extend(0..n_units as u32);
    let mut count = 0;
    for oi in 0..n_units {
        if count >= budget {
            break;
        }
        let u = rng.shuffle_step(&mut s.order, oi) as usize;
        if s.taken[u] {
            continue;
        }
        let n = if max_n >= 2 && rng.bernoulli(prob) {
            rng.randint(2, max_n)
        } else {
            1
        };
        s.sampled_lengths.push(n as u32);
        count += extend_span(s, u, n, budget - count, false);
    }
}

/// SpanBERT: until the budget is spent, draw a length, a random anchor token (its unit) and
/// take up to `length` adjacent free units from there. The budget is reached exactly, as in
/// the reference (facebookresearch/SpanBERT `pretraining/fairseq/data/masking.py`,
/// `PairWithSpanMaskingScheme.mask`: `while len(mask) < mask_num`, each token added only
/// `if len(mask) < mask_num`): an anchor on a taken unit is drawn again, and the span that
/// reaches the budget is cut there, in the middle of a word if need be (that last unit is
/// shortened in `s.units`; selection ends with it). Stops early only when every candidate
/// token is taken (a budget above the candidates).
pub fn select_geometric(s: &mut Scratch, budget: usize, p: f64, max_len: usize, rng: &mut Rng) {
    let n_units = s.units.len();
    // token -> unit map for the uniform anchor token
    let total: usize = s.units.iter().map(|u| u.end - u.start).sum();
    s.order.clear();
    for (k, u) in s.units.iter().enumerate() {
        s.order
            .extend(std::iter::repeat_n(k as u32, u.end - u.start));
    }
    let mut count = 0;
    let mut free = n_units;
    // Rejection of taken anchors: while a unit is free an anchor lands on one with
    // probability >= 1/total per draw, so this bound is never reached in practice (it only
    // guards against an endless loop).
    let mut attempts = 0usize;
    let max_attempts = 64 * total + 64;
    while count < budget && free > 0 && attempts < max_attempts {
        attempts += 1;
        let len = truncated_geometric(p, max_len, rng);
        let u = s.order[rng.below(total as u64) as usize] as usize;
        if s.taken[u] {
            continue;
        }
        s.sampled_lengths.push(len as u32);
        count += extend_span(s, u, len, budget - count, true);
        let (a, b) = s.spans[s.spans.len() - 1];
        free -= (b - a) as usize;
    }
}

/// Take units `u, u+1, ...` (at most `n`) while they are adjacent, free and fit in `room`
/// tokens; record the span; return the number of tokens taken. With `cut`, a unit that does
/// not fit is shortened to the `room` left and taken (SpanBERT cuts its last span at the
/// budget, mid-word); `room` must then be > 0, so the span is never empty.
fn extend_span(s: &mut Scratch, u: usize, n: usize, room: usize, cut: bool) -> usize {
    let mut taken_tokens = 0;
    let mut end = u;
    for v in u..(u + n).min(s.units.len()) {
        if s.taken[v] || (v > u && s.units[v].start != s.units[v - 1].end) {
            break;
        }
        let mut len = s.units[v].end - s.units[v].start;
        if taken_tokens + len > room {
            if !cut || taken_tokens == room {
                break;
            }
            len = room - taken_tokens;
            s.units[v].end = s.units[v].start + len;
        }
        s.taken[v] = true;
        taken_tokens += len;
        end = v + 1;
    }
    if end > u {
        s.spans.push((u as u32, end as u32));
    }
    taken_tokens
}

// ------------------------------------------------------------------------------------------
// MASS

/// MASS span corruption settings.
#[derive(Clone, Debug)]
pub struct MassConfig {
    /// Span length as a share of the sentence (0.5).
    pub span_ratio: f64,
    /// Probability that the span starts at the first token (0.2).
    pub start_prob: f64,
    /// Probability that the span ends at the last token (0.2); the rest starts inside.
    pub end_prob: f64,
    pub mask_id: i64,
    pub mask_ratio: f64,
    pub random_ratio: f64,
    /// First decoder input (MASS uses `[MASK]`; a BOS id works too).
    pub decoder_start_id: i64,
    pub pad_id: i64,
    pub specials: Specials,
}

impl MassConfig {
    /// Reject values the recipe cannot use, naming them.
    pub fn validate(&self) -> Result<()> {
        for (name, p) in [
            ("span_ratio", self.span_ratio),
            ("start_prob", self.start_prob),
            ("end_prob", self.end_prob),
            ("mask_ratio", self.mask_ratio),
            ("random_ratio", self.random_ratio),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return invalid!("{name} must be in [0, 1], got {p}");
            }
        }
        if self.span_ratio == 0.0 {
            return invalid!("span_ratio must be > 0, got 0");
        }
        if self.start_prob + self.end_prob > 1.0 + 1e-12 {
            return invalid!(
                "start_prob + end_prob must be <= 1, got {} + {}",
                self.start_prob,
                self.end_prob
            );
        }
        if self.mask_ratio + self.random_ratio > 1.0 + 1e-12 {
            return invalid!(
                "mask_ratio + random_ratio must be <= 1, got {} + {}",
                self.mask_ratio,
                self.random_ratio
            );
        }
        let v = self.specials.vocab_size() as i64;
        for (name, id) in [
            ("mask_id", self.mask_id),
            ("pad_id", self.pad_id),
            ("decoder_start_id", self.decoder_start_id),
        ] {
            if id < 0 || id >= v {
                return invalid!("{name} {id} is outside the vocabulary [0, {v})");
            }
        }
        if !self.specials.has_free_id() {
            return invalid!(
                "every id of the vocabulary ({v}) is special: no random replacement possible"
            );
        }
        Ok(())
    }
}

/// `(start, k)` of the MASS span of a sentence of `n >= 1` tokens.
pub fn mass_span(cfg: &MassConfig, n: usize, rng: &mut Rng) -> (usize, usize) {
    let k = py_round(n as f64 * cfg.span_ratio).clamp(1, n);
    let last = n - k; // last possible start
    let u = rng.uniform();
    let start = if u < cfg.start_prob {
        0
    } else if u < cfg.start_prob + cfg.end_prob {
        last
    } else if last >= 2 {
        rng.randint(1, last - 1)
    } else {
        rng.randint(0, last)
    };
    (start, k)
}

/// Output of [`collate_mass`].
#[derive(Debug, Default)]
pub struct MassBatch {
    pub batch: usize,
    pub len: usize,
    pub dec_len: usize,
    pub input_ids: Vec<i64>,
    pub attention_mask: Vec<i64>,
    pub seq_len: Vec<i32>,
    pub decoder_input_ids: Vec<i64>,
    pub decoder_positions: Vec<i64>,
    pub decoder_labels: Vec<i64>,
    pub decoder_len: Vec<i32>,
}

/// Collate sentences (no special tokens added) into MASS encoder/decoder batches. A sentence
/// longer than `max_length` is an error naming it, or with `truncation` cut to its first
/// `max_length` tokens.
#[allow(clippy::too_many_arguments)]
pub fn collate_mass(
    cfg: &MassConfig,
    seqs: Ragged<'_>,
    indices: &[u64],
    seed: u64,
    epoch: u64,
    max_length: Option<usize>,
    truncation: bool,
    pad_to_multiple_of: Option<usize>,
    threads: Option<usize>,
) -> Result<MassBatch> {
    cfg.validate()?;
    let b = seqs.len();
    masking::check_len("indices", indices.len(), b)?;
    let v = cfg.specials.vocab_size();
    let mut lens = Vec::with_capacity(b);
    for i in 0..b {
        let row = seqs.row(i);
        if row.is_empty() {
            return invalid!("sample {i} is an empty sequence");
        }
        masking::check_ids("input_ids", i, row, v)?;
        let n = match max_length {
            Some(m) if row.len() > m => {
                if !truncation {
                    return invalid!("sample {i} has {} tokens, more than max_length = {m} (pass truncation=True to cut it)", row.len());
                }
                m
            }
            _ => row.len(),
        };
        lens.push(n);
    }
    let l = checked_padded_len(
        lens.iter().copied().max().unwrap_or(0),
        pad_to_multiple_of,
        b,
    )?;
    let ks: Vec<usize> = lens
        .iter()
        .map(|&n| py_round(n as f64 * cfg.span_ratio).clamp(1, n))
        .collect();
    let ld = checked_padded_len(ks.iter().copied().max().unwrap_or(0), pad_to_multiple_of, b)?;
    let mut out = MassBatch {
        batch: b,
        len: l,
        dec_len: ld,
        input_ids: filled(b * l, cfg.pad_id)?,
        attention_mask: filled(b * l, 0)?,
        seq_len: lens.iter().map(|&n| n as i32).collect(),
        decoder_input_ids: filled(b * ld, cfg.pad_id)?,
        decoder_positions: filled(b * ld, 0)?,
        decoder_labels: filled(b * ld, IGNORE)?,
        decoder_len: ks.iter().map(|&k| k as i32).collect(),
    };
    let (l1, ld1) = (l.max(1), ld.max(1));
    let rows: Vec<_> = out
        .input_ids
        .chunks_mut(l1)
        .zip(out.attention_mask.chunks_mut(l1))
        .zip(out.decoder_input_ids.chunks_mut(ld1))
        .zip(out.decoder_positions.chunks_mut(ld1))
        .zip(out.decoder_labels.chunks_mut(ld1))
        .collect();
    masking::for_each_row(
        threads,
        rows,
        b * (l + ld),
        |i, ((((ids, am), din), dpos), dlab)| {
            let n = lens[i];
            let row = &seqs.row(i)[..n];
            ids[..n].copy_from_slice(row);
            am[..n].fill(1);
            let mut rng = Rng::new(seed, epoch, indices[i], stream::SPAN);
            let (start, k) = mass_span(cfg, n, &mut rng);
            for t in 0..k {
                let pos = start + t;
                dlab[t] = row[pos];
                dpos[t] = pos as i64;
                din[t] = if t == 0 {
                    cfg.decoder_start_id
                } else {
                    row[pos - 1]
                };
                let u = rng.uniform();
                if u < cfg.mask_ratio {
                    ids[pos] = cfg.mask_id;
                } else if u < cfg.mask_ratio + cfg.random_ratio {
                    ids[pos] = cfg.specials.random_non_special(&mut rng);
                }
            }
            Ok(())
        },
    )?;
    Ok(out)
}

// ------------------------------------------------------------------------------------------
// T5

/// `(noise tokens, noise spans)` of T5's `random_spans_noise_mask` for `n >= 2` tokens.
pub fn t5_noise_counts(n: usize, density: f64, mean_span: f64) -> (usize, usize) {
    let num_noise = py_round(n as f64 * density).clamp(1, n - 1);
    let num_spans = py_round(num_noise as f64 / mean_span)
        .max(1)
        .min(num_noise)
        .min(n - num_noise);
    (num_noise, num_spans)
}

/// The number of sentinels [`t5_corrupt`] uses for a row of `n` tokens (one per noise span).
pub fn t5_num_sentinels(n: usize, density: f64, mean_span: f64) -> usize {
    if n < 2 {
        0
    } else {
        t5_noise_counts(n, density, mean_span).1
    }
}

/// T5's `random_spans_noise_mask`: which of `n` tokens are noise (`n >= 2`).
pub fn t5_noise_mask(n: usize, density: f64, mean_span: f64, rng: &mut Rng) -> Vec<bool> {
    let (num_noise, num_spans) = t5_noise_counts(n, density, mean_span);
    let noise_lens = random_segmentation(num_noise, num_spans, rng);
    let nonnoise_lens = random_segmentation(n - num_noise, num_spans, rng);
    let mut mask = Vec::with_capacity(n);
    for s in 0..num_spans {
        mask.extend(std::iter::repeat_n(false, nonnoise_lens[s]));
        mask.extend(std::iter::repeat_n(true, noise_lens[s]));
    }
    mask
}

/// Split `items` into `segments` non-empty parts uniformly at random (T5's `_random_segmentation`).
pub fn random_segmentation(items: usize, segments: usize, rng: &mut Rng) -> Vec<usize> {
    // choose segments-1 distinct cut points among 1..items
    let mut cuts: Vec<usize> = (1..items).collect();
    for i in 0..(segments - 1) {
        let j = i + rng.below((cuts.len() - i) as u64) as usize;
        cuts.swap(i, j);
    }
    cuts.truncate(segments - 1);
    cuts.sort_unstable();
    let mut lens = Vec::with_capacity(segments);
    let mut prev = 0;
    for c in cuts {
        lens.push(c - prev);
        prev = c;
    }
    lens.push(items - prev);
    lens
}

/// T5 span-corruption settings.
#[derive(Clone, Debug)]
pub struct T5Config {
    pub noise_density: f64,
    pub mean_span: f64,
    pub vocab_size: u32,
    /// First sentinel id (T5: `vocab_size - 1`), the next ones count down.
    pub first_sentinel: i64,
    pub eos_id: i64,
    pub pad_id: i64,
    /// Decoder start for `decoder_input_ids` (T5: the pad id).
    pub decoder_start_id: i64,
}

impl T5Config {
    /// Check that `eos_id`, `pad_id`, `decoder_start_id` and the first sentinel are ids of the
    /// vocabulary and that the first sentinel is none of the other three.
    pub fn validate_ids(&self) -> Result<()> {
        let v = self.vocab_size as i64;
        for (name, id) in [
            ("eos_id", self.eos_id),
            ("pad_id", self.pad_id),
            ("decoder_start_id", self.decoder_start_id),
            ("first_sentinel_id", self.first_sentinel),
        ] {
            if id < 0 || id >= v {
                return invalid!("{name} {id} is outside the vocabulary [0, {v})");
            }
        }
        let clash = self.special_names(self.first_sentinel);
        if !clash.is_empty() {
            return invalid!(
                "first_sentinel_id {} is also the {clash}; sentinels must be ids of their own",
                self.first_sentinel
            );
        }
        Ok(())
    }

    /// Names of the special ids equal to `id` (`"eos_id and pad_id"`), empty when none is.
    fn special_names(&self, id: i64) -> String {
        [
            ("eos_id", self.eos_id),
            ("pad_id", self.pad_id),
            ("decoder_start_id", self.decoder_start_id),
        ]
        .iter()
        .filter(|&&(_, s)| s == id)
        .map(|&(n, _)| n)
        .collect::<Vec<_>>()
        .join(" and ")
    }

    /// Check the sentinels `first_sentinel` down to `first_sentinel - spans + 1` that sample
    /// `sample` (of `n` tokens) needs: inside the vocabulary and none of them special.
    pub fn check_sentinels(&self, spans: usize, sample: usize, n: usize) -> Result<()> {
        if spans == 0 {
            return Ok(());
        }
        let lowest = self.first_sentinel - (spans as i64 - 1);
        if lowest < 0 {
            return invalid!(
                "sample {sample} ({n} tokens) needs {spans} sentinel ids counting down from first_sentinel_id {}, which would go below 0",
                self.first_sentinel
            );
        }
        for (name, id) in [
            ("eos_id", self.eos_id),
            ("pad_id", self.pad_id),
            ("decoder_start_id", self.decoder_start_id),
        ] {
            if (lowest..=self.first_sentinel).contains(&id) {
                return invalid!(
                    "sample {sample} ({n} tokens) needs {spans} sentinel ids, {} down to {lowest}, which include {name} {id}; choose a first_sentinel_id whose sentinels avoid the special ids",
                    self.first_sentinel
                );
            }
        }
        Ok(())
    }
}

/// Output of [`collate_t5`].
#[derive(Debug, Default)]
pub struct T5Batch {
    pub batch: usize,
    pub len: usize,
    pub label_len: usize,
    pub input_ids: Vec<i64>,
    pub attention_mask: Vec<i64>,
    pub seq_len: Vec<i32>,
    pub labels: Vec<i64>,
    pub decoder_input_ids: Vec<i64>,
    pub labels_len: Vec<i32>,
}

/// Inputs and targets of one sequence: inputs = non-noise runs with one sentinel per noise
/// span, then EOS; targets = sentinel, noise span, ..., EOS.
pub fn t5_corrupt(cfg: &T5Config, row: &[i64], rng: &mut Rng) -> (Vec<i64>, Vec<i64>) {
    let n = row.len();
    let mut inputs = Vec::with_capacity(n + 1);
    let mut targets = Vec::new();
    if n < 2 {
        inputs.extend_from_slice(row);
        inputs.push(cfg.eos_id);
        targets.push(cfg.eos_id);
        return (inputs, targets);
    }
    let mask = t5_noise_mask(n, cfg.noise_density, cfg.mean_span, rng);
    let mut sentinel = cfg.first_sentinel;
    for p in 0..n {
        if mask[p] {
            if p == 0 || !mask[p - 1] {
                inputs.push(sentinel);
                targets.push(sentinel);
                sentinel -= 1;
            }
            targets.push(row[p]);
        } else {
            inputs.push(row[p]);
        }
    }
    inputs.push(cfg.eos_id);
    targets.push(cfg.eos_id);
    (inputs, targets)
}

/// Collate sequences (no EOS; added here) into T5 span-corruption batches. A sequence with
/// more than `max_length - 1` tokens (room for the EOS) is an error naming it, or with
/// `truncation` cut to its first `max_length - 1` tokens. The sentinels a batch needs
/// (`first_sentinel` down to `first_sentinel - spans + 1`, `spans` of its longest row) are
/// checked before anything is written: they must be ids of the vocabulary other than
/// `eos_id`, `pad_id` and `decoder_start_id`.
#[allow(clippy::too_many_arguments)]
pub fn collate_t5(
    cfg: &T5Config,
    seqs: Ragged<'_>,
    indices: &[u64],
    seed: u64,
    epoch: u64,
    max_length: Option<usize>,
    truncation: bool,
    pad_to_multiple_of: Option<usize>,
    threads: Option<usize>,
) -> Result<T5Batch> {
    let b = seqs.len();
    masking::check_len("indices", indices.len(), b)?;
    if max_length.is_some_and(|m| m < 2) {
        return invalid!("max_length must be >= 2 (a token and the EOS), got {max_length:?}");
    }
    // tokens kept per row: room for the EOS under max_length
    let mut lens = Vec::with_capacity(b);
    for i in 0..b {
        let row = seqs.row(i);
        if row.is_empty() {
            return invalid!("sample {i} is an empty sequence");
        }
        masking::check_ids("input_ids", i, row, cfg.vocab_size)?;
        let n = match max_length {
            Some(m) if row.len() > m - 1 => {
                if !truncation {
                    return invalid!("sample {i} has {} tokens, more than max_length - 1 = {} (the EOS takes one of max_length = {m}; pass truncation=True to cut it)", row.len(), m - 1);
                }
                m - 1
            }
            _ => row.len(),
        };
        lens.push(n);
    }
    if !(0.0..1.0).contains(&cfg.noise_density) || cfg.noise_density <= 0.0 {
        return invalid!("noise_density must be in (0, 1), got {}", cfg.noise_density);
    }
    if !(cfg.mean_span >= 1.0 && cfg.mean_span.is_finite()) {
        return invalid!("mean_noise_span_length must be >= 1, got {}", cfg.mean_span);
    }
    cfg.validate_ids()?;
    // the sentinels of the row that needs most (rows of the same length need the same number)
    if let Some((i, spans)) = (0..b)
        .map(|i| {
            (
                i,
                t5_num_sentinels(lens[i], cfg.noise_density, cfg.mean_span),
            )
        })
        .max_by_key(|&(i, k)| (k, std::cmp::Reverse(i)))
    {
        cfg.check_sentinels(spans, i, lens[i])?;
    }
    let mut pairs: Vec<(Vec<i64>, Vec<i64>)> = vec![(Vec::new(), Vec::new()); b];
    masking::for_each_row(
        threads,
        pairs.iter_mut().collect(),
        seqs.values.len(),
        |i, slot| {
            let row = &seqs.row(i)[..lens[i]];
            let mut rng = Rng::new(seed, epoch, indices[i], stream::SPAN);
            *slot = t5_corrupt(cfg, row, &mut rng);
            Ok(())
        },
    )?;
    let l = checked_padded_len(
        pairs.iter().map(|p| p.0.len()).max().unwrap_or(0),
        pad_to_multiple_of,
        b,
    )?;
    let lt = checked_padded_len(
        pairs.iter().map(|p| p.1.len()).max().unwrap_or(0),
        pad_to_multiple_of,
        b,
    )?;
    let mut out = T5Batch {
        batch: b,
        len: l,
        label_len: lt,
        input_ids: filled(b * l, cfg.pad_id)?,
        attention_mask: filled(b * l, 0)?,
        seq_len: pairs.iter().map(|p| p.0.len() as i32).collect(),
        labels: filled(b * lt, IGNORE)?,
        decoder_input_ids: filled(b * lt, cfg.pad_id)?,
        labels_len: pairs.iter().map(|p| p.1.len() as i32).collect(),
    };
    for (i, (inp, tgt)) in pairs.iter().enumerate() {
        out.input_ids[i * l..i * l + inp.len()].copy_from_slice(inp);
        out.attention_mask[i * l..i * l + inp.len()].fill(1);
        out.labels[i * lt..i * lt + tgt.len()].copy_from_slice(tgt);
        let d = &mut out.decoder_input_ids[i * lt..i * lt + tgt.len()];
        d[0] = cfg.decoder_start_id;
        d[1..].copy_from_slice(&tgt[..tgt.len() - 1]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::masking::{mask_sequence, MaskConfig, Scheme};

    /// The T5 settings of the recipe (vocabulary of 1000, sentinels from 999 down).
    fn t5_cfg() -> T5Config {
        T5Config {
            noise_density: 0.15,
            mean_span: 3.0,
            vocab_size: 1000,
            first_sentinel: 999,
            eos_id: 1,
            pad_id: 0,
            decoder_start_id: 0,
        }
    }

    /// The MASS settings of the recipe (vocabulary of 1000, [MASK] = 103).
    fn mass_cfg() -> MassConfig {
        MassConfig {
            span_ratio: 0.5,
            start_prob: 0.2,
            end_prob: 0.2,
            mask_id: 103,
            mask_ratio: 0.8,
            random_ratio: 0.1,
            decoder_start_id: 103,
            pad_id: 0,
            specials: Specials::new(1000, &[0, 101, 102, 103]).unwrap(),
        }
    }

    fn mcfg(scheme: Scheme) -> MaskConfig {
        MaskConfig {
            mask_id: 103,
            probability: 0.15,
            max_predictions: None,
            exact_count: true,
            mask_ratio: 0.8,
            random_ratio: 0.1,
            whole_word: false,
            scheme,
            per_span_replacement: matches!(scheme, Scheme::Geometric { .. }),
            specials: Specials::new(1000, &[0, 100, 101, 102, 103]).unwrap(),
        }
    }

    #[test]
    fn truncated_geometric_matches_pmf() {
        let (p, m) = (0.2, 10);
        let mut rng = Rng::new(1, 0, 0, 0);
        let n = 100_000;
        let mut counts = vec![0usize; m + 1];
        for _ in 0..n {
            counts[truncated_geometric(p, m, &mut rng)] += 1;
        }
        let z: f64 = (1..=m).map(|l| p * (1.0 - p).powi(l as i32 - 1)).sum();
        for (l, &got) in counts.iter().enumerate().skip(1) {
            let e = n as f64 * p * (1.0 - p).powi(l as i32 - 1) / z;
            let sd = (e * (1.0 - e / n as f64)).sqrt();
            assert!(
                (got as f64 - e).abs() < 5.0 * sd + 1.0,
                "len {l}: {got} vs {e}"
            );
        }
    }

    #[test]
    fn ngram_budget_and_contiguity() {
        let c = mcfg(Scheme::Ngram {
            prob: 0.2,
            max_n: 3,
        });
        let mut s = Scratch::default();
        for idx in 0..100 {
            let mut toks: Vec<i64> = (0..100).map(|i| 200 + i).collect();
            let mut labels = vec![IGNORE; 100];
            let mut rng = Rng::new(9, 0, idx, 1);
            let n = mask_sequence(
                &c,
                &mut toks,
                &mut labels,
                0..100,
                None,
                100,
                None,
                &[],
                &mut rng,
                &mut s,
            );
            assert_eq!(n, 15);
            for &(a, b) in &s.spans {
                assert!((1..=3).contains(&(b - a)));
            }
        }
    }

    #[test]
    fn geometric_spans_one_decision_each() {
        let mut c = mcfg(Scheme::Geometric {
            p: 0.2,
            max_len: 10,
        });
        c.mask_ratio = 0.5;
        c.random_ratio = 0.0;
        let mut s = Scratch::default();
        for idx in 0..50 {
            let mut toks: Vec<i64> = (0..200).map(|i| 200 + i).collect();
            let mut labels = vec![IGNORE; 200];
            let mut rng = Rng::new(4, 0, idx, 1);
            let n = mask_sequence(
                &c,
                &mut toks,
                &mut labels,
                0..200,
                None,
                200,
                None,
                &[],
                &mut rng,
                &mut s,
            );
            assert_eq!(n, 30);
            for &(a, b) in &s.spans {
                let (st, en) = (s.units[a as usize].start, s.units[b as usize - 1].end);
                let masked: Vec<bool> = (st..en).map(|p| toks[p] == 103).collect();
                assert!(masked.iter().all(|&m| m == masked[0]));
            }
        }
    }

    #[test]
    fn geometric_reaches_the_budget_exactly_cutting_the_last_word() {
        // words of 1..=4 tokens: a word often does not fit what is left of the budget
        let c = mcfg(Scheme::Geometric {
            p: 0.2,
            max_len: 10,
        });
        let mut s = Scratch::default();
        let mut cut_rows = 0;
        for idx in 0..300u64 {
            let n = 20 + (idx as usize * 7) % 90;
            let mut wc = c.clone();
            wc.whole_word = true;
            // words of 1..=4 tokens
            let mut words = Vec::with_capacity(n);
            let (mut id, mut left) = (0i64, 1 + (idx as usize % 4));
            for k in 0..n {
                if left == 0 {
                    id += 1;
                    left = 1 + ((k * 13 + idx as usize) % 4);
                }
                words.push(id);
                left -= 1;
            }
            let mut toks: Vec<i64> = (0..n).map(|i| 200 + i as i64).collect();
            let mut labels = vec![IGNORE; n];
            let mut rng = Rng::new(5, 0, idx, 1);
            let got = mask_sequence(
                &wc,
                &mut toks,
                &mut labels,
                0..n,
                None,
                n,
                Some(&words),
                &[],
                &mut rng,
                &mut s,
            );
            let budget = (n as f64 * 0.15).ceil() as usize;
            assert_eq!(got, budget, "row {idx}");
            assert_eq!(labels.iter().filter(|&&l| l != IGNORE).count(), budget);
            // every word is masked whole, except at most one (the span cut at the budget)
            let mut partial = 0;
            let mut k = 0;
            while k < n {
                let mut e = k;
                while e < n && words[e] == words[k] {
                    e += 1;
                }
                let m = (k..e).filter(|&p| labels[p] != IGNORE).count();
                if m != 0 && m != e - k {
                    partial += 1;
                }
                k = e;
            }
            assert!(partial <= 1, "row {idx}: {partial} words cut");
            cut_rows += partial;
        }
        assert!(
            cut_rows > 0,
            "no row ever needed a cut word: the test does not test the cut"
        );
    }

    #[test]
    fn t5_sentinels_must_avoid_special_ids() {
        let mut cfg = t5_cfg();
        let vals: Vec<i64> = (200..240).collect(); // 40 tokens: 6 noise, 2 spans
        let offs = [0i64, 40];
        let seqs = Ragged::new(&vals, &offs, "x").unwrap();
        assert!(collate_t5(&cfg, seqs, &[0], 0, 0, None, false, None, None).is_ok());
        cfg.first_sentinel = 2; // sentinels 2, 1: the second is eos_id
        let e = collate_t5(&cfg, seqs, &[0], 0, 0, None, false, None, None).unwrap_err();
        assert!(e.to_string().contains("eos_id 1"), "{e}");
        cfg.first_sentinel = 3; // 3, 2: fine
        assert!(collate_t5(&cfg, seqs, &[0], 0, 0, None, false, None, None).is_ok());
        cfg.first_sentinel = 1;
        let e = collate_t5(&cfg, seqs, &[0], 0, 0, None, false, None, None).unwrap_err();
        assert!(
            e.to_string()
                .contains("first_sentinel_id 1 is also the eos_id"),
            "{e}"
        );
        cfg.first_sentinel = 999;
        cfg.decoder_start_id = 1000;
        let e = collate_t5(&cfg, seqs, &[0], 0, 0, None, false, None, None).unwrap_err();
        assert!(e.to_string().contains("decoder_start_id 1000"), "{e}");
    }

    #[test]
    fn mass_and_t5_refuse_long_rows_unless_truncating() {
        let vals: Vec<i64> = (200..210).collect();
        let offs = [0i64, 10];
        let seqs = Ragged::new(&vals, &offs, "x").unwrap();
        let mass = mass_cfg();
        let e = collate_mass(&mass, seqs, &[0], 0, 0, Some(4), false, None, None).unwrap_err();
        assert!(
            e.to_string()
                .contains("sample 0 has 10 tokens, more than max_length = 4"),
            "{e}"
        );
        let out = collate_mass(&mass, seqs, &[0], 0, 0, Some(4), true, None, None).unwrap();
        assert_eq!(out.seq_len, vec![4]);
        assert_eq!(
            collate_mass(&mass, seqs, &[0], 0, 0, Some(10), false, None, None)
                .unwrap()
                .seq_len,
            vec![10]
        );
        let t5 = t5_cfg();
        let e = collate_t5(&t5, seqs, &[0], 0, 0, Some(10), false, None, None).unwrap_err();
        assert!(
            e.to_string()
                .contains("sample 0 has 10 tokens, more than max_length - 1 = 9"),
            "{e}"
        );
        let out = collate_t5(&t5, seqs, &[0], 0, 0, Some(4), true, None, None).unwrap();
        assert_eq!(out.len, 4); // 3 tokens -> 2 kept + 1 sentinel + EOS
        assert!(collate_t5(&t5, seqs, &[0], 0, 0, Some(11), false, None, None).is_ok());
    }

    #[test]
    fn huge_pad_to_multiple_of_is_an_error_not_an_abort() {
        let vals: Vec<i64> = (200..210).collect();
        let offs = [0i64, 5, 10];
        let seqs = Ragged::new(&vals, &offs, "x").unwrap();
        let t5 = t5_cfg();
        for m in [1usize << 40, 1 << 62, usize::MAX] {
            let e = collate_t5(&t5, seqs, &[0, 1], 0, 0, None, false, Some(m), None).unwrap_err();
            assert!(
                e.to_string().contains(&format!("pad_to_multiple_of = {m}")),
                "{e}"
            );
        }
    }

    #[test]
    fn mass_span_is_half_and_starts_follow_recipe() {
        let cfg = mass_cfg();
        let mut rng = Rng::new(0, 0, 0, 0);
        let (mut begin, mut end) = (0, 0);
        for _ in 0..10_000 {
            let (s, k) = mass_span(&cfg, 20, &mut rng);
            assert_eq!(k, 10);
            if s == 0 {
                begin += 1;
            } else if s == 10 {
                end += 1;
            }
        }
        assert!((begin as f64 - 2000.0).abs() < 200.0);
        assert!((end as f64 - 2000.0).abs() < 200.0);
    }

    #[test]
    fn t5_counts_and_layout() {
        let cfg = t5_cfg();
        let row: Vec<i64> = (10..110).collect();
        let mut rng = Rng::new(0, 0, 0, 0);
        let (inp, tgt) = t5_corrupt(&cfg, &row, &mut rng);
        let noise = 15;
        let spans = 5;
        assert_eq!(inp.len(), 100 - noise + spans + 1);
        assert_eq!(tgt.len(), noise + spans + 1);
        assert_eq!(tgt[0], 999);
        assert_eq!(*inp.last().unwrap(), 1);
        // reconstruct the original sequence
        let mut rec = Vec::new();
        let mut ti = 0;
        for &t in &inp[..inp.len() - 1] {
            if t >= 995 {
                assert_eq!(tgt[ti], t);
                ti += 1;
                while ti < tgt.len() - 1 && tgt[ti] < 995 {
                    rec.push(tgt[ti]);
                    ti += 1;
                }
            } else {
                rec.push(t);
            }
        }
        assert_eq!(rec, row);
    }

    #[test]
    fn segmentation_sums_and_is_nonempty() {
        let mut rng = Rng::new(2, 2, 2, 2);
        for _ in 0..100 {
            let s = random_segmentation(17, 5, &mut rng);
            assert_eq!(s.iter().sum::<usize>(), 17);
            assert!(s.iter().all(|&x| x > 0));
        }
    }
}
