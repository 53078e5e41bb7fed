//! BERT dynamic masking (80/10/10), whole-word and entity masking, and the batch machinery
//! (ragged inputs, padded outputs, per-row parallelism) shared by every collator.
//!
//! Recipe (google-research/bert `create_pretraining_data.py`, `create_masked_lm_predictions`):
//! candidates are all tokens except special tokens; the number to predict is
//! `min(max_predictions_per_seq, max(1, round(len(tokens) * masked_lm_prob)))`; candidate
//! units (tokens, or whole words) are shuffled and taken while they fit in that budget; each
//! chosen token becomes `[MASK]` 80% of the time, a random token 10%, itself 10%. With
//! `exact_count = false` every unit is instead chosen independently with probability `p`
//! (HF `DataCollatorForLanguageModeling`). Span schemes (UNILM n-grams, SpanBERT geometric
//! spans) select units differently; see [`crate::spans`].

use std::ops::Range;

pub mod collate;

use crate::rng::Rng;
use crate::spans;
use crate::{invalid, pool, Error, Result};

/// Label of positions that are not predicted (PyTorch's `ignore_index`).
pub const IGNORE: i64 = -100;

/// Python 3's `round` (ties to even), as used by BERT's `int(round(n * p))`.
#[inline]
pub fn py_round(x: f64) -> usize {
    x.round_ties_even().max(0.0) as usize
}

/// A set of token ids (a bitset over the vocabulary).
#[derive(Clone, Debug)]
pub struct Specials {
    bits: Vec<u64>,
    vocab_size: u32,
    count: usize,
}

impl Specials {
    /// The set of `ids`; each must lie in `[0, vocab_size)`.
    pub fn new(vocab_size: u32, ids: &[i64]) -> Result<Self> {
        if vocab_size == 0 {
            return invalid!("vocab_size must be > 0, got 0");
        }
        let mut bits = vec![0u64; (vocab_size as usize).div_ceil(64)];
        let mut count = 0;
        for &id in ids {
            if id < 0 || id >= vocab_size as i64 {
                return invalid!(
                    "special token id {id} is outside the vocabulary [0, {vocab_size})"
                );
            }
            let (w, b) = (id as usize / 64, id as usize % 64);
            if bits[w] & (1 << b) == 0 {
                count += 1;
            }
            bits[w] |= 1 << b;
        }
        Ok(Specials {
            bits,
            vocab_size,
            count,
        })
    }

    /// Whether `id` is in the set.
    #[inline]
    pub fn contains(&self, id: i64) -> bool {
        let id = id as usize;
        (self.bits[id / 64] >> (id % 64)) & 1 == 1
    }

    /// Whether some id of the vocabulary is not in the set (random replacement possible).
    pub fn has_free_id(&self) -> bool {
        self.count < self.vocab_size as usize
    }

    /// Size of the vocabulary the set lives in.
    pub fn vocab_size(&self) -> u32 {
        self.vocab_size
    }

    /// A uniformly random id that is not in the set (rejection sampling).
    #[inline]
    pub fn random_non_special(&self, rng: &mut Rng) -> i64 {
        loop {
            let id = rng.below(self.vocab_size as u64) as i64;
            if !self.contains(id) {
                return id;
            }
        }
    }
}

/// How the positions to predict are grouped and chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scheme {
    /// BERT: independent units (tokens, or whole words / entities).
    Units,
    /// UNILM: from a random unit, an n-gram of 1 unit, or with probability `prob` of
    /// `2..=max_n` units (uniform).
    Ngram { prob: f64, max_n: usize },
    /// SpanBERT: spans of `Geometric(p)` units truncated to `[1, max_len]`, anchored at a
    /// uniformly random candidate token.
    Geometric { p: f64, max_len: usize },
}

/// Everything the masking of one sequence needs.
#[derive(Clone, Debug)]
pub struct MaskConfig {
    /// Id of `[MASK]`.
    pub mask_id: i64,
    /// Masking rate `p` (BERT's `masked_lm_prob`).
    pub probability: f64,
    /// Cap on predictions per sequence (BERT's `max_predictions_per_seq`), `None` = no cap.
    pub max_predictions: Option<usize>,
    /// BERT's exact count (`true`) or per-unit Bernoulli(p) like HF (`false`).
    pub exact_count: bool,
    /// Share of chosen tokens replaced by `[MASK]` (0.8).
    pub mask_ratio: f64,
    /// Share replaced by a random non-special token (0.1); the rest is kept.
    pub random_ratio: f64,
    /// Group tokens by word id (whole-word masking).
    pub whole_word: bool,
    /// How units are chosen.
    pub scheme: Scheme,
    /// One 80/10/10 draw per span (SpanBERT) instead of per token (BERT, UNILM).
    pub per_span_replacement: bool,
    /// Tokens never masked and never used as random replacements.
    pub specials: Specials,
}

fn check_prob(name: &str, p: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&p) {
        return invalid!("{name} must be in [0, 1], got {p}");
    }
    Ok(())
}

impl MaskConfig {
    /// Reject values the recipes cannot use, naming them.
    pub fn validate(&self) -> Result<()> {
        check_prob("mlm_probability", self.probability)?;
        check_prob("mask_ratio", self.mask_ratio)?;
        check_prob("random_ratio", self.random_ratio)?;
        if self.mask_ratio + self.random_ratio > 1.0 + 1e-12 {
            return invalid!(
                "mask_ratio + random_ratio must be <= 1, got {} + {} = {}",
                self.mask_ratio,
                self.random_ratio,
                self.mask_ratio + self.random_ratio
            );
        }
        let v = self.specials.vocab_size();
        if self.mask_id < 0 || self.mask_id >= v as i64 {
            return invalid!(
                "mask_id {} is outside the vocabulary [0, {v})",
                self.mask_id
            );
        }
        if !self.specials.has_free_id() {
            return invalid!(
                "every id of the vocabulary ({v}) is special: no random replacement possible"
            );
        }
        if self.max_predictions == Some(0) {
            return invalid!("max_predictions must be >= 1 or None, got 0");
        }
        match self.scheme {
            Scheme::Units => {}
            Scheme::Ngram { prob, max_n } => {
                check_prob("ngram_probability", prob)?;
                if max_n < 1 {
                    return invalid!("max_ngram must be >= 1, got {max_n}");
                }
            }
            Scheme::Geometric { p, max_len } => {
                if !(p > 0.0 && p <= 1.0) {
                    return invalid!("span geometric p must be in (0, 1], got {p}");
                }
                if max_len < 1 {
                    return invalid!("max_span_length must be >= 1, got {max_len}");
                }
            }
        }
        if !self.exact_count && self.scheme != Scheme::Units {
            return invalid!("exact_count=False (per-token Bernoulli) only applies to token / whole-word masking, not to span schemes");
        }
        Ok(())
    }

    /// The number of tokens to predict for a region of `n` tokens (BERT: `n` counts the whole
    /// sequence, its `[CLS]`/`[SEP]` included). SpanBERT uses `ceil` instead of `round`.
    pub fn budget(&self, n: usize) -> usize {
        if self.probability == 0.0 {
            return 0;
        }
        let raw = match self.scheme {
            Scheme::Geometric { .. } => (n as f64 * self.probability).ceil() as usize,
            _ => py_round(n as f64 * self.probability).max(1),
        };
        raw.min(self.max_predictions.unwrap_or(usize::MAX))
    }
}

/// A maskable unit: tokens `start..end` of one word / entity / token.
#[derive(Clone, Copy, Debug)]
pub struct Unit {
    pub start: usize,
    pub end: usize,
}

/// Candidate units of `tokens[region]`: runs of consecutive non-special positions sharing a
/// word id (whole-word) or an entity span (given as token ranges); otherwise single tokens.
/// `special_ok` is one position that is a candidate although its token is special (UNILM's
/// target `[SEP]` under `mask_target_eos`).
pub fn build_units(
    cfg: &MaskConfig,
    tokens: &[i64],
    region: Range<usize>,
    special_ok: Option<usize>,
    word_ids: Option<&[i64]>,
    entities: &[Range<usize>],
    units: &mut Vec<Unit>,
) {
    units.clear();
    // group key per position: entity > word > token
    let key = |pos: usize| -> i64 {
        for (e, r) in entities.iter().enumerate() {
            if r.contains(&pos) {
                return (1 << 50) + e as i64;
            }
        }
        match word_ids {
            Some(w) if cfg.whole_word && w[pos] >= 0 => w[pos],
            _ => (1 << 40) + pos as i64,
        }
    };
    let mut cur: Option<(Unit, i64)> = None;
    for pos in region {
        if cfg.specials.contains(tokens[pos]) && special_ok != Some(pos) {
            if let Some((u, _)) = cur.take() {
                units.push(u);
            }
            continue;
        }
        let k = if entities.is_empty() && !cfg.whole_word {
            (1 << 40) + pos as i64
        } else {
            key(pos)
        };
        match &mut cur {
            Some((u, ck)) if *ck == k && u.end == pos => u.end = pos + 1,
            _ => {
                if let Some((u, _)) = cur.take() {
                    units.push(u);
                }
                cur = Some((
                    Unit {
                        start: pos,
                        end: pos + 1,
                    },
                    k,
                ));
            }
        }
    }
    if let Some((u, _)) = cur {
        units.push(u);
    }
}

/// Reusable buffers of [`mask_sequence`].
#[derive(Default)]
pub struct Scratch {
    pub units: Vec<Unit>,
    pub order: Vec<u32>,
    pub taken: Vec<bool>,
    /// Chosen spans as `(first unit, one past last unit)`; BERT's units are spans of one.
    pub spans: Vec<(u32, u32)>,
    /// Span lengths in units as sampled (before budget and boundary cuts), for tests.
    pub sampled_lengths: Vec<u32>,
    /// Word ids of the row being masked (collators).
    pub words: Vec<i64>,
    /// Entity spans of the row being masked (collators).
    pub entities: Vec<Range<usize>>,
}

/// Choose and corrupt the positions to predict in `tokens[region]`; write the original ids
/// into `labels` (which must hold [`IGNORE`] there). `count_len` is the `n` of the budget.
/// Returns the number of predicted tokens. Special tokens are never candidates, except the
/// position `special_ok` (see [`build_units`]).
#[allow(clippy::too_many_arguments)]
pub fn mask_sequence(
    cfg: &MaskConfig,
    tokens: &mut [i64],
    labels: &mut [i64],
    region: Range<usize>,
    special_ok: Option<usize>,
    count_len: usize,
    word_ids: Option<&[i64]>,
    entities: &[Range<usize>],
    rng: &mut Rng,
    s: &mut Scratch,
) -> usize {
    s.spans.clear();
    s.sampled_lengths.clear();
    let token_units = cfg.scheme == Scheme::Units
        && entities.is_empty()
        && (!cfg.whole_word || word_ids.is_none());
    if token_units && cfg.exact_count {
        return mask_tokens_fast(cfg, tokens, labels, region, special_ok, count_len, rng, s);
    }
    build_units(
        cfg,
        tokens,
        region,
        special_ok,
        word_ids,
        entities,
        &mut s.units,
    );
    let n_units = s.units.len();
    if n_units == 0 {
        return 0;
    }
    s.taken.clear();
    s.taken.resize(n_units, false);
    if !cfg.exact_count {
        for u in 0..n_units {
            if rng.bernoulli(cfg.probability) {
                s.taken[u] = true;
                s.spans.push((u as u32, u as u32 + 1));
            }
        }
    } else {
        let budget = cfg.budget(count_len);
        match cfg.scheme {
            Scheme::Units => select_units(s, budget, rng),
            Scheme::Ngram { prob, max_n } => spans::select_ngrams(s, budget, prob, max_n, rng),
            Scheme::Geometric { p, max_len } => spans::select_geometric(s, budget, p, max_len, rng),
        }
    }
    replace(cfg, tokens, labels, s, rng)
}

/// BERT with single-token units: the same draws as [`select_units`] + [`replace`] (a lazy
/// shuffle of the candidate positions, the first `budget` of them, 80/10/10 per token)
/// without building units.
#[allow(clippy::too_many_arguments)]
fn mask_tokens_fast(
    cfg: &MaskConfig,
    tokens: &mut [i64],
    labels: &mut [i64],
    region: Range<usize>,
    special_ok: Option<usize>,
    count_len: usize,
    rng: &mut Rng,
    s: &mut Scratch,
) -> usize {
    s.order.clear();
    for pos in region {
        if !cfg.specials.contains(tokens[pos]) || special_ok == Some(pos) {
            s.order.push(pos as u32);
        }
    }
    let k = cfg.budget(count_len).min(s.order.len());
    let keep_from = cfg.mask_ratio + cfg.random_ratio;
    for i in 0..k {
        let pos = rng.shuffle_step(&mut s.order, i) as usize;
        labels[pos] = tokens[pos];
        let u = rng.uniform();
        if u < cfg.mask_ratio {
            tokens[pos] = cfg.mask_id;
        } else if u < keep_from {
            tokens[pos] = cfg.specials.random_non_special(rng);
        }
    }
    k
}

/// BERT: shuffle the units, take each one that still fits in the budget.
fn select_units(s: &mut Scratch, budget: usize, rng: &mut Rng) {
    s.order.clear();
    s.order.extend(0..s.units.len() as u32);
    let mut count = 0;
    // lazy forward Fisher-Yates: the visited prefix is a uniformly random order
    for i in 0..s.order.len() {
        if count >= budget {
            break;
        }
        let u = rng.shuffle_step(&mut s.order, i);
        let unit = s.units[u as usize];
        let len = unit.end - unit.start;
        if count + len > budget {
            continue;
        }
        count += len;
        s.taken[u as usize] = true;
        s.spans.push((u, u + 1));
    }
}

/// The 80/10/10 corruption of the chosen spans, per token or per span.
fn replace(
    cfg: &MaskConfig,
    tokens: &mut [i64],
    labels: &mut [i64],
    s: &Scratch,
    rng: &mut Rng,
) -> usize {
    let keep_from = cfg.mask_ratio + cfg.random_ratio;
    let mut n = 0;
    let decide = |rng: &mut Rng| {
        let u = rng.uniform();
        if u < cfg.mask_ratio {
            0u8
        } else if u < keep_from {
            1
        } else {
            2
        }
    };
    for &(a, b) in &s.spans {
        let (start, end) = (s.units[a as usize].start, s.units[b as usize - 1].end);
        let span_decision = if cfg.per_span_replacement {
            decide(rng)
        } else {
            0
        };
        for pos in start..end {
            let d = if cfg.per_span_replacement {
                span_decision
            } else {
                decide(rng)
            };
            labels[pos] = tokens[pos];
            match d {
                0 => tokens[pos] = cfg.mask_id,
                1 => tokens[pos] = cfg.specials.random_non_special(rng),
                _ => {}
            }
            n += 1;
        }
    }
    n
}

// ------------------------------------------------------------------------------------------
// Batch machinery shared by all collators

/// A batch of variable-length rows stored flat: row `i` is `values[offsets[i]..offsets[i+1]]`.
#[derive(Clone, Copy, Debug)]
pub struct Ragged<'a> {
    pub values: &'a [i64],
    pub offsets: &'a [i64],
}

impl<'a> Ragged<'a> {
    /// Check the offsets (non-decreasing, inside `values`); `name` is used in errors.
    pub fn new(values: &'a [i64], offsets: &'a [i64], name: &str) -> Result<Self> {
        if offsets.is_empty() {
            return invalid!("{name}: offsets must have at least one entry");
        }
        if offsets[0] < 0 {
            return invalid!("{name}: offsets[0] = {} is negative", offsets[0]);
        }
        for i in 1..offsets.len() {
            if offsets[i] < offsets[i - 1] {
                return invalid!(
                    "{name}: offsets must be non-decreasing, offsets[{i}] = {} < {}",
                    offsets[i],
                    offsets[i - 1]
                );
            }
        }
        let last = *offsets.last().unwrap_or(&0);
        if last as usize > values.len() {
            return invalid!(
                "{name}: offsets end at {last} but only {} values were given",
                values.len()
            );
        }
        Ok(Ragged { values, offsets })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Row `i`.
    #[inline]
    pub fn row(&self, i: usize) -> &'a [i64] {
        &self.values[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }
}

/// Check that every token id lies in `[0, vocab)`, naming the first one that does not.
pub fn check_ids(what: &str, sample: usize, ids: &[i64], vocab: u32) -> Result<()> {
    if let Some((p, &id)) = ids
        .iter()
        .enumerate()
        .find(|(_, &id)| id < 0 || id >= vocab as i64)
    {
        return invalid!("{what} of sample {sample}: token id {id} at position {p} is outside the vocabulary [0, {vocab})");
    }
    Ok(())
}

/// Longest row a collator writes: its lengths leave as int32 (`seq_len`).
pub const MAX_ROW_LEN: usize = i32::MAX as usize;

/// Most cells (`batch * len`) of one padded output matrix: 2^32 int64 values are 32 GiB per
/// matrix, far beyond any training batch, so a larger shape is a mistake (a huge
/// `pad_to_multiple_of`), not a request to honour.
pub const MAX_BATCH_CELLS: usize = 1 << 32;

/// Padded length of a batch whose longest row has `max_len` tokens (`usize::MAX` when the
/// rounded-up length does not fit; [`checked_padded_len`] turns that into an error).
pub fn padded_len(max_len: usize, pad_to_multiple_of: Option<usize>) -> usize {
    match pad_to_multiple_of {
        Some(m) if m > 1 => max_len.div_ceil(m).saturating_mul(m),
        _ => max_len,
    }
}

/// [`padded_len`] of a collator output of `batch` rows, checked: an error (naming
/// `pad_to_multiple_of` when it is the cause) when a padded row would exceed
/// [`MAX_ROW_LEN`] tokens or the `[batch, len]` matrix [`MAX_BATCH_CELLS`] cells.
pub fn checked_padded_len(
    max_len: usize,
    pad_to_multiple_of: Option<usize>,
    batch: usize,
) -> Result<usize> {
    let len = padded_len(max_len, pad_to_multiple_of);
    let cause = || match pad_to_multiple_of {
        Some(m) if len > max_len => format!(
            "pad_to_multiple_of = {m} pads the longest row of {max_len} tokens to {}",
            if len == usize::MAX {
                "more than usize::MAX tokens".to_string()
            } else {
                format!("{len} tokens")
            }
        ),
        _ => format!("the longest row has {max_len} tokens"),
    };
    if len > MAX_ROW_LEN {
        return invalid!(
            "{}: more than the limit of {MAX_ROW_LEN} tokens per row",
            cause()
        );
    }
    match batch.checked_mul(len) {
        Some(cells) if cells <= MAX_BATCH_CELLS => Ok(len),
        _ => invalid!(
            "{}: a [{batch}, {len}] batch exceeds the limit of {MAX_BATCH_CELLS} cells per output matrix",
            cause()
        ),
    }
}

/// A vector of `cells` copies of `value`, or an error (not an aborted process) when the
/// memory cannot be had.
pub fn filled<T: Clone>(cells: usize, value: T) -> Result<Vec<T>> {
    let mut v = Vec::new();
    if v.try_reserve_exact(cells).is_err() {
        return invalid!(
            "cannot allocate an output of {cells} values ({} bytes): out of memory",
            cells.saturating_mul(std::mem::size_of::<T>())
        );
    }
    v.resize(cells, value);
    Ok(v)
}

/// The padded output buffers of a collator (row-major `[batch, len]`). Unused fields stay empty.
#[derive(Debug, Default)]
pub struct Padded {
    pub batch: usize,
    pub len: usize,
    pub input_ids: Vec<i64>,
    pub attention_mask: Vec<i64>,
    pub token_type_ids: Vec<i64>,
    pub labels: Vec<i64>,
    pub seq_len: Vec<i32>,
    pub src_len: Vec<i32>,
    pub attn_mode: Vec<i8>,
    pub next_sentence_label: Vec<i64>,
}

/// Mutable views of one row of a [`Padded`].
pub struct RowMut<'a> {
    pub input_ids: &'a mut [i64],
    pub attention_mask: &'a mut [i64],
    pub token_type_ids: &'a mut [i64],
    pub labels: &'a mut [i64],
}

impl Padded {
    /// Buffers for `batch` rows of `len`, filled with padding (`pad_id`, mask 0, type 0, label
    /// -100); an error when the memory cannot be had (size `len` with [`checked_padded_len`]).
    pub fn new(batch: usize, len: usize, pad_id: i64) -> Result<Self> {
        let cells = batch
            .checked_mul(len)
            .ok_or_else(|| Error::InvalidInput(format!("a [{batch}, {len}] batch is too large")))?;
        Ok(Padded {
            batch,
            len,
            input_ids: filled(cells, pad_id)?,
            attention_mask: filled(cells, 0)?,
            token_type_ids: filled(cells, 0)?,
            labels: filled(cells, IGNORE)?,
            seq_len: vec![0; batch],
            src_len: Vec::new(),
            attn_mode: Vec::new(),
            next_sentence_label: Vec::new(),
        })
    }

    /// Row views, in order (`len` may be 0).
    pub fn rows(&mut self) -> Vec<RowMut<'_>> {
        let l = self.len.max(1);
        let n = self.batch;
        if self.len == 0 {
            return (0..n)
                .map(|_| RowMut {
                    input_ids: &mut [],
                    attention_mask: &mut [],
                    token_type_ids: &mut [],
                    labels: &mut [],
                })
                .collect();
        }
        self.input_ids
            .chunks_mut(l)
            .zip(self.attention_mask.chunks_mut(l))
            .zip(self.token_type_ids.chunks_mut(l))
            .zip(self.labels.chunks_mut(l))
            .map(|(((a, b), c), d)| RowMut {
                input_ids: a,
                attention_mask: b,
                token_type_ids: c,
                labels: d,
            })
            .collect()
    }
}

/// Least estimated work (`for_each_row`'s `work`, about one unit per token) worth splitting
/// over threads: below it, waking the pool costs more than the rows take (a batch of 512 rows
/// of 128 tokens ran 30% slower on 2 threads than on 1).
pub const MIN_PARALLEL_WORK: usize = 1 << 18;

/// Run `f(i, item)` for every item, in parallel when `threads` allows and the batch is large
/// enough (`work`, an estimate of its size in tokens, at least [`MIN_PARALLEL_WORK`]); every
/// item's work depends only on `i`, so results do not depend on the thread count. The error
/// of the lowest failing index is returned.
///
/// In parallel, the items are cut into one contiguous part per thread; the calling thread
/// takes the first and `threads - 1` pool workers the others (the caller works instead of
/// sleeping while the pool runs).
pub fn for_each_row<T: Send, F>(
    threads: Option<usize>,
    items: Vec<T>,
    work: usize,
    f: F,
) -> Result<()>
where
    F: Fn(usize, T) -> Result<()> + Sync + Send,
{
    let threads = pool::resolve_threads(threads)?.min(items.len().max(1));
    if threads == 1 || items.len() < 16 || work < MIN_PARALLEL_WORK {
        for (i, t) in items.into_iter().enumerate() {
            f(i, t)?;
        }
        return Ok(());
    }
    let n = items.len();
    let per = n.div_ceil(threads);
    let mut parts: Vec<(usize, Vec<T>)> = Vec::with_capacity(threads);
    let mut rest = items;
    let mut start = 0;
    while !rest.is_empty() {
        let tail = rest.split_off(per.min(rest.len()));
        parts.push((start, rest));
        start += per;
        rest = tail;
    }
    let run = |(first, part): (usize, Vec<T>)| -> Result<()> {
        for (k, t) in part.into_iter().enumerate() {
            f(first + k, t)?;
        }
        Ok(())
    };
    let results: Vec<std::sync::Mutex<Option<Result<()>>>> = (0..parts.len())
        .map(|_| std::sync::Mutex::new(None))
        .collect();
    let mut parts = parts.into_iter().enumerate();
    let first = parts.next();
    pool::get(threads - 1)?.in_place_scope(|s| {
        for (p, part) in parts {
            let (run, results) = (&run, &results);
            s.spawn(move |_| {
                let r = run(part);
                *results[p].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
            });
        }
        if let Some((p, part)) = first {
            let r = run(part);
            *results[p].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
        }
    });
    for r in results {
        match r.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(Err(e)) => return Err(e),
            Some(Ok(())) => {}
            None => return Err(Error::Internal("a part of the batch did not run".into())),
        }
    }
    Ok(())
}

/// Check that a per-sample array has one entry per sample.
pub fn check_len(name: &str, got: usize, batch: usize) -> Result<()> {
    if got != batch {
        return Err(Error::InvalidInput(format!(
            "{name} has {got} entries for a batch of {batch}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn cfg(scheme: Scheme) -> MaskConfig {
        MaskConfig {
            mask_id: 103,
            probability: 0.15,
            max_predictions: None,
            exact_count: true,
            mask_ratio: 0.8,
            random_ratio: 0.1,
            whole_word: false,
            scheme,
            per_span_replacement: false,
            specials: Specials::new(1000, &[0, 100, 101, 102, 103]).unwrap(),
        }
    }

    #[test]
    fn for_each_row_runs_every_row_once_serially_or_in_parallel() {
        for (threads, work) in [
            (1, usize::MAX),
            (2, 0),
            (2, MIN_PARALLEL_WORK),
            (3, usize::MAX),
        ] {
            let mut out = vec![0u64; 1000];
            let items: Vec<(usize, &mut u64)> = out.iter_mut().enumerate().collect();
            for_each_row(Some(threads), items, work, |i, (j, slot)| {
                assert_eq!(i, j);
                *slot += (i as u64) * (i as u64) + 1;
                Ok(())
            })
            .unwrap();
            assert!(out
                .iter()
                .enumerate()
                .all(|(i, &v)| v == (i * i) as u64 + 1));
        }
    }

    #[test]
    fn for_each_row_reports_the_lowest_failing_row() {
        for threads in [1, 2, 4] {
            let items: Vec<usize> = (0..500).collect();
            let e = for_each_row(Some(threads), items, usize::MAX, |i, _| {
                if i % 97 == 96 {
                    return invalid!("row {i} failed");
                }
                Ok(())
            })
            .unwrap_err();
            assert!(
                e.to_string().contains("row 96 failed"),
                "{threads} threads: {e}"
            );
        }
    }

    #[test]
    fn py_round_is_bankers_rounding() {
        assert_eq!(py_round(4.5), 4);
        assert_eq!(py_round(1.5), 2);
        assert_eq!(py_round(2.4999), 2);
        assert_eq!(py_round(0.2), 0);
    }

    #[test]
    fn bert_count_and_no_special_is_masked() {
        let c = cfg(Scheme::Units);
        let mut s = Scratch::default();
        for idx in 0..200u64 {
            let mut toks: Vec<i64> = vec![101];
            toks.extend((0..40).map(|i| 200 + i));
            toks.push(102);
            let orig = toks.clone();
            let mut labels = vec![IGNORE; toks.len()];
            let mut rng = Rng::new(1, 0, idx, 1);
            let n = mask_sequence(
                &c,
                &mut toks,
                &mut labels,
                0..42,
                None,
                42,
                None,
                &[],
                &mut rng,
                &mut s,
            );
            assert_eq!(n, py_round(42.0 * 0.15)); // 6
            assert_eq!(labels[0], IGNORE);
            assert_eq!(labels[41], IGNORE);
            assert_eq!(toks[0], 101);
            assert_eq!(toks[41], 102);
            for p in 0..42 {
                if labels[p] != IGNORE {
                    assert_eq!(labels[p], orig[p]);
                    assert!(!c.specials.contains(toks[p]) || toks[p] == 103);
                } else {
                    assert_eq!(toks[p], orig[p]);
                }
            }
        }
    }

    #[test]
    fn whole_words_are_masked_together() {
        let mut c = cfg(Scheme::Units);
        c.whole_word = true;
        c.probability = 0.3;
        let mut s = Scratch::default();
        let words: Vec<i64> = (0..30).map(|i| i / 3).collect();
        for idx in 0..100 {
            let mut toks: Vec<i64> = (0..30).map(|i| 300 + i).collect();
            let mut labels = vec![IGNORE; 30];
            let mut rng = Rng::new(2, 0, idx, 1);
            mask_sequence(
                &c,
                &mut toks,
                &mut labels,
                0..30,
                None,
                30,
                Some(&words),
                &[],
                &mut rng,
                &mut s,
            );
            for w in 0..10 {
                let m: Vec<bool> = (0..3).map(|k| labels[w * 3 + k] != IGNORE).collect();
                assert!(
                    m.iter().all(|&x| x == m[0]),
                    "word {w} partially masked: {m:?}"
                );
            }
            let total = labels.iter().filter(|&&l| l != IGNORE).count();
            assert_eq!(total, 9); // budget round(30*0.3)=9, words of 3 fit exactly
        }
    }

    #[test]
    fn entities_are_units() {
        let c = cfg(Scheme::Units);
        let toks: Vec<i64> = (0..20).map(|i| 300 + i).collect();
        let mut units = Vec::new();
        let ents: Vec<Range<usize>> = std::iter::once(3..7).collect();
        build_units(&c, &toks, 0..20, None, None, &ents, &mut units);
        assert_eq!(units.len(), 17);
        assert!(units.iter().any(|u| u.start == 3 && u.end == 7));
    }

    #[test]
    fn bernoulli_mode_rate() {
        let mut c = cfg(Scheme::Units);
        c.exact_count = false;
        let mut s = Scratch::default();
        let mut total = 0;
        for idx in 0..200 {
            let mut toks: Vec<i64> = (0..100).map(|i| 300 + i).collect();
            let mut labels = vec![IGNORE; 100];
            let mut rng = Rng::new(3, 0, idx, 1);
            total += mask_sequence(
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
        }
        // 20000 trials, p = 0.15, sd ~ 50
        assert!((total as f64 - 3000.0).abs() < 250.0, "{total}");
    }

    #[test]
    fn bad_configs_are_rejected() {
        let mut c = cfg(Scheme::Units);
        c.probability = 1.5;
        assert!(c.validate().is_err());
        let mut c = cfg(Scheme::Units);
        c.mask_ratio = 0.8;
        c.random_ratio = 0.3;
        assert!(c.validate().unwrap_err().to_string().contains("1.1"));
        let mut c = cfg(Scheme::Ngram {
            prob: 0.2,
            max_n: 3,
        });
        c.exact_count = false;
        assert!(c.validate().is_err());
        assert!(Specials::new(10, &[10]).is_err());
    }

    #[test]
    fn padded_len_is_checked() {
        assert_eq!(padded_len(5, Some(8)), 8);
        assert_eq!(padded_len(5, None), 5);
        assert_eq!(padded_len(3, Some(usize::MAX)), usize::MAX); // saturates, no wrap
        assert_eq!(checked_padded_len(5, Some(8), 4).unwrap(), 8);
        assert_eq!(checked_padded_len(0, Some(1 << 40), 4).unwrap(), 0);
        for m in [1usize << 31, 1 << 40, 1 << 62, usize::MAX] {
            let e = checked_padded_len(3, Some(m), 4).unwrap_err().to_string();
            assert!(e.contains(&format!("pad_to_multiple_of = {m}")), "{e}");
        }
        // a row of 2^31 - 1 is allowed, but not 4 of them
        assert!(checked_padded_len(3, Some(MAX_ROW_LEN), 1).is_ok());
        let e = checked_padded_len(3, Some(MAX_ROW_LEN), 4)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cells"), "{e}");
        assert!(checked_padded_len(1 << 20, None, 1 << 12).is_ok());
    }

    #[test]
    fn ragged_rejects_bad_offsets() {
        let v = [1i64, 2, 3];
        assert!(Ragged::new(&v, &[0, 2, 1], "x").is_err());
        assert!(Ragged::new(&v, &[0, 4], "x").is_err());
        let r = Ragged::new(&v, &[0, 1, 3], "x").unwrap();
        assert_eq!(r.row(1), &[2, 3]);
    }
}
