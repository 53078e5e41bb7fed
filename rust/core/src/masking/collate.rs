//! Batch collation shared by the BERT-style collators: lay out `[CLS] A [SEP] (B [SEP])`,
//! truncate, pad, and mask each row with its own `(seed, epoch, index)` stream.

use std::cell::RefCell;
use std::ops::Range;

use super::{
    check_ids, check_len, checked_padded_len, for_each_row, mask_sequence, MaskConfig, Padded,
    Ragged, Scratch, IGNORE,
};
use crate::nsp::truncate_seq_pair;
use crate::rng::{stream, Rng};
use crate::{invalid, Result};

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Special ids and shape options of a collator.
#[derive(Clone, Debug)]
pub struct LayoutOptions {
    pub cls_id: i64,
    pub sep_id: i64,
    pub pad_id: i64,
    /// Add `[CLS]`/`[SEP]` around single sequences (pairs always get them).
    pub add_special_tokens: bool,
    /// Longest allowed row (specials included); `None` = no limit.
    pub max_length: Option<usize>,
    /// Cut rows longer than `max_length` (else: error).
    pub truncation: bool,
    pub pad_to_multiple_of: Option<usize>,
}

/// The inputs of a batch: segment A of every sample, optionally segment B (pairs), word ids
/// parallel to them, caller-given entity spans (flat `start, end` pairs per sample, token
/// positions in segment A), and the sample indices that key the random streams.
#[derive(Clone, Copy, Debug)]
pub struct BatchInputs<'a> {
    pub a: Ragged<'a>,
    pub b: Option<Ragged<'a>>,
    pub word_ids_a: Option<Ragged<'a>>,
    pub word_ids_b: Option<Ragged<'a>>,
    pub entities: Option<Ragged<'a>>,
    pub indices: &'a [u64],
}

impl<'a> BatchInputs<'a> {
    /// Check shapes, emptiness and token ids (naming the sample).
    pub fn validate(&self, vocab: u32, allow_empty_a_with_b: bool) -> Result<()> {
        let n = self.a.len();
        check_len("indices", self.indices.len(), n)?;
        if let Some(b) = &self.b {
            check_len("segment B", b.len(), n)?;
        }
        for (name, w, seg) in [
            ("word_ids", &self.word_ids_a, Some(&self.a)),
            ("word_ids of segment B", &self.word_ids_b, self.b.as_ref()),
        ] {
            if let (Some(w), Some(seg)) = (w, seg) {
                check_len(name, w.len(), n)?;
                for i in 0..n {
                    if w.row(i).len() != seg.row(i).len() {
                        return invalid!(
                            "{name} of sample {i} has {} entries for {} tokens",
                            w.row(i).len(),
                            seg.row(i).len()
                        );
                    }
                }
            }
        }
        if let Some(e) = &self.entities {
            check_len("entity spans", e.len(), n)?;
            for i in 0..n {
                let r = e.row(i);
                if r.len() % 2 != 0 {
                    return invalid!(
                        "entity spans of sample {i} must be (start, end) pairs, got {} numbers",
                        r.len()
                    );
                }
                let la = self.a.row(i).len() as i64;
                for k in (0..r.len()).step_by(2) {
                    if r[k] < 0 || r[k] >= r[k + 1] || r[k + 1] > la {
                        return invalid!("entity span ({}, {}) of sample {i} is not a non-empty range inside its {la} tokens", r[k], r[k + 1]);
                    }
                }
            }
        }
        for i in 0..n {
            let a = self.a.row(i);
            let b_len = self.b.map_or(0, |b| b.row(i).len());
            if a.is_empty() && !(allow_empty_a_with_b && b_len > 0) {
                return invalid!("sample {i} is an empty sequence");
            }
            check_ids("input_ids", i, a, vocab)?;
            if let Some(b) = &self.b {
                check_ids("segment B", i, b.row(i), vocab)?;
            }
        }
        Ok(())
    }
}

/// Where one sample's tokens go in its row.
#[derive(Clone, Debug)]
pub struct RowLayout {
    /// Kept part of segment A / B (indices into the sample's segments).
    pub a: Range<usize>,
    pub b: Option<Range<usize>>,
    /// `[CLS]`/`[SEP]` added.
    pub specials: bool,
    /// Token type of `[CLS] A [SEP]` and of `B [SEP]`.
    pub types: (i64, i64),
}

impl RowLayout {
    /// Valid length of the row.
    pub fn seq_len(&self) -> usize {
        let sp = if self.specials {
            if self.b.is_some() {
                3
            } else {
                2
            }
        } else {
            0
        };
        self.a.len() + self.b.as_ref().map_or(0, |b| b.len()) + sp
    }

    /// Length of `[CLS] A [SEP]` (the source part), or of A without specials.
    pub fn src_len(&self) -> usize {
        self.a.len() + if self.specials { 2 } else { 0 }
    }
}

/// Plan the row of sample `i`: apply `max_length` (truncating, or failing without
/// `truncation`). Pairs are trimmed with BERT's `truncate_seq_pair` (random end) when
/// `random_pair_truncation`, else from the back of the longer side.
pub fn plan_row(
    opts: &LayoutOptions,
    inp: &BatchInputs<'_>,
    i: usize,
    pair: bool,
    types: (i64, i64),
    random_pair_truncation: bool,
    rng: &mut Rng,
) -> Result<RowLayout> {
    let la = inp.a.row(i).len();
    let lb = if pair {
        inp.b.map_or(0, |b| b.row(i).len())
    } else {
        0
    };
    let pair = pair && lb > 0;
    let specials = pair || opts.add_special_tokens;
    let mut lay = RowLayout {
        a: 0..la,
        b: if pair { Some(0..lb) } else { None },
        specials,
        types,
    };
    if let Some(m) = opts.max_length {
        let total = lay.seq_len();
        if total > m {
            if !opts.truncation {
                return invalid!("sample {i} has {total} tokens, more than max_length = {m} (pass truncation=True to cut it)");
            }
            let sp = total - la - lb;
            if m <= sp {
                return invalid!(
                    "max_length = {m} leaves no room for tokens besides the {sp} special tokens"
                );
            }
            let room = m - sp;
            match &mut lay.b {
                Some(b) => {
                    if random_pair_truncation {
                        truncate_seq_pair(&mut lay.a, b, room, rng);
                    } else {
                        while lay.a.len() + b.len() > room {
                            if lay.a.len() > b.len() {
                                lay.a.end -= 1;
                            } else {
                                b.end -= 1;
                            }
                        }
                    }
                    if lay.a.start >= lay.a.end || b.start >= b.end {
                        return invalid!("max_length = {m} is too short for sample {i}: a segment would be empty");
                    }
                }
                None => lay.a.end = room,
            }
        }
    }
    Ok(lay)
}

/// Write sample `i` into its row (tokens, types, attention); fill `words` with the row's word
/// ids (-1 for specials) when word ids were given. Returns the valid length.
#[allow(clippy::too_many_arguments)]
pub fn write_row(
    opts: &LayoutOptions,
    inp: &BatchInputs<'_>,
    i: usize,
    lay: &RowLayout,
    ids: &mut [i64],
    types: &mut [i64],
    attn: &mut [i64],
    words: &mut Vec<i64>,
) -> usize {
    let have_words = inp.word_ids_a.is_some();
    words.clear();
    let mut p = 0;
    let mut put = |tok: i64, ty: i64, w: i64, p: &mut usize, words: &mut Vec<i64>| {
        ids[*p] = tok;
        types[*p] = ty;
        if have_words {
            words.push(w);
        }
        *p += 1;
    };
    let a = &inp.a.row(i)[lay.a.clone()];
    if !have_words && lay.b.is_none() {
        // fast path: one segment, no word ids
        let off = usize::from(lay.specials);
        if lay.specials {
            ids[0] = opts.cls_id;
            ids[a.len() + 1] = opts.sep_id;
        }
        ids[off..off + a.len()].copy_from_slice(a);
        let n = a.len() + 2 * off;
        if lay.types.0 != 0 {
            types[..n].fill(lay.types.0);
        }
        attn[..n].fill(1);
        return n;
    }
    let wa = inp.word_ids_a.map(|w| &w.row(i)[lay.a.clone()]);
    if lay.specials {
        put(opts.cls_id, lay.types.0, -1, &mut p, words);
    }
    for (k, &t) in a.iter().enumerate() {
        put(t, lay.types.0, wa.map_or(-1, |w| w[k]), &mut p, words);
    }
    if lay.specials {
        put(opts.sep_id, lay.types.0, -1, &mut p, words);
    }
    if let Some(rb) = &lay.b {
        let b = &inp.b.expect("pair layout without segment B").row(i)[rb.clone()];
        let wb = inp.word_ids_b.map(|w| &w.row(i)[rb.clone()]);
        for (k, &t) in b.iter().enumerate() {
            // keep B's words distinct from A's
            put(
                t,
                lay.types.1,
                wb.map_or(-1, |w| if w[k] >= 0 { w[k] + (1 << 32) } else { -1 }),
                &mut p,
                words,
            );
        }
        put(opts.sep_id, lay.types.1, -1, &mut p, words);
    }
    attn[..p].fill(1);
    p
}

/// Entity spans of sample `i` moved to row positions (clipped to the kept part of A).
pub fn row_entities(inp: &BatchInputs<'_>, i: usize, lay: &RowLayout, out: &mut Vec<Range<usize>>) {
    out.clear();
    let Some(e) = &inp.entities else { return };
    let r = e.row(i);
    let shift = if lay.specials { 1 } else { 0 };
    for k in (0..r.len()).step_by(2) {
        let (s, t) = (
            (r[k] as usize).max(lay.a.start),
            (r[k + 1] as usize).min(lay.a.end),
        );
        if s < t {
            out.push(s - lay.a.start + shift..t - lay.a.start + shift);
        }
    }
}

/// What a row contributes to masking: the region of maskable positions and the `n` of the
/// budget formula.
pub struct MaskPlan {
    pub region: Range<usize>,
    pub count_len: usize,
    /// A position of `region` maskable although its token is special (UNILM's target `[SEP]`).
    pub special_ok: Option<usize>,
}

/// Lay out, pad and mask a batch. `plan(i, rng)` decides the row layout of sample `i`
/// (its stream is `(seed, epoch, indices[i], TRUNCATE)`), `mask_plan(i, layout, seq_len)` the
/// masking region; both are pure functions of the sample.
#[allow(clippy::too_many_arguments)]
pub fn collate_rows<P, M>(
    cfg: &MaskConfig,
    opts: &LayoutOptions,
    inp: &BatchInputs<'_>,
    seed: u64,
    epoch: u64,
    threads: Option<usize>,
    plan: P,
    mask_plan: M,
) -> Result<(Padded, Vec<RowLayout>)>
where
    P: Fn(usize, &mut Rng) -> Result<RowLayout>,
    M: Fn(usize, &RowLayout, usize) -> Option<MaskPlan> + Sync + Send,
{
    let n = inp.a.len();
    let mut layouts = Vec::with_capacity(n);
    for i in 0..n {
        let mut rng = Rng::new(seed, epoch, inp.indices[i], stream::TRUNCATE);
        layouts.push(plan(i, &mut rng)?);
    }
    let max_len = layouts.iter().map(|l| l.seq_len()).max().unwrap_or(0);
    let len = checked_padded_len(max_len, opts.pad_to_multiple_of, n)?;
    let mut out = Padded::new(n, len, opts.pad_id)?;
    for (s, l) in out.seq_len.iter_mut().zip(&layouts) {
        *s = l.seq_len() as i32;
    }
    let rows = out.rows();
    for_each_row(threads, rows, n * len, |i, row| {
        let lay = &layouts[i];
        SCRATCH.with(|cell| {
            let mut guard = cell.borrow_mut();
            let scratch = &mut *guard;
            let mut words = std::mem::take(&mut scratch.words);
            let mut ents = std::mem::take(&mut scratch.entities);
            let seq_len = write_row(
                opts,
                inp,
                i,
                lay,
                row.input_ids,
                row.token_type_ids,
                row.attention_mask,
                &mut words,
            );
            if let Some(mp) = mask_plan(i, lay, seq_len) {
                row_entities(inp, i, lay, &mut ents);
                let mut rng = Rng::new(seed, epoch, inp.indices[i], stream::MASK);
                let w = if words.is_empty() {
                    None
                } else {
                    Some(&words[..])
                };
                mask_sequence(
                    cfg,
                    row.input_ids,
                    row.labels,
                    mp.region,
                    mp.special_ok,
                    mp.count_len,
                    w,
                    &ents,
                    &mut rng,
                    scratch,
                );
            }
            scratch.words = words;
            scratch.entities = ents;
        });
        Ok(())
    })?;
    Ok((out, layouts))
}

/// Check per-sample next-sentence labels: 0 (is next), 1 (random next) or -100 (no label).
pub fn check_nsp_labels(labels: &[i64], batch: usize) -> Result<()> {
    check_len("next_sentence_label", labels.len(), batch)?;
    if let Some((i, &l)) = labels
        .iter()
        .enumerate()
        .find(|(_, &l)| !matches!(l, 0 | 1 | IGNORE))
    {
        return invalid!(
            "next_sentence_label of sample {i} must be 0, 1 or -100 (no label), got {l}"
        );
    }
    Ok(())
}

/// BERT MLM collation (single sequences or NSP pairs); `next_sentence_label` is copied when
/// given (checked by [`check_nsp_labels`]).
pub fn collate_mlm(
    cfg: &MaskConfig,
    opts: &LayoutOptions,
    inp: &BatchInputs<'_>,
    nsp_labels: Option<&[i64]>,
    seed: u64,
    epoch: u64,
    threads: Option<usize>,
) -> Result<Padded> {
    cfg.validate()?;
    inp.validate(cfg.specials.vocab_size(), false)?;
    let pair = inp.b.is_some();
    if let Some(l) = nsp_labels {
        check_nsp_labels(l, inp.a.len())?;
    }
    let (mut out, _) = collate_rows(
        cfg,
        opts,
        inp,
        seed,
        epoch,
        threads,
        |i, rng| plan_row(opts, inp, i, pair, (0, 1), true, rng),
        |_, _, seq_len| {
            Some(MaskPlan {
                region: 0..seq_len,
                count_len: seq_len,
                special_ok: None,
            })
        },
    )?;
    if let Some(l) = nsp_labels {
        out.next_sentence_label = l.to_vec();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::{Scheme, Specials, IGNORE};
    use super::*;

    fn cfg() -> MaskConfig {
        MaskConfig {
            mask_id: 103,
            probability: 0.15,
            max_predictions: None,
            exact_count: true,
            mask_ratio: 0.8,
            random_ratio: 0.1,
            whole_word: false,
            scheme: Scheme::Units,
            per_span_replacement: false,
            specials: Specials::new(1000, &[0, 100, 101, 102, 103]).unwrap(),
        }
    }

    fn opts() -> LayoutOptions {
        LayoutOptions {
            cls_id: 101,
            sep_id: 102,
            pad_id: 0,
            add_special_tokens: true,
            max_length: None,
            truncation: false,
            pad_to_multiple_of: Some(8),
        }
    }

    #[test]
    fn mlm_batch_is_thread_independent_and_padded() {
        let mut vals = Vec::new();
        let mut offs = vec![0i64];
        for i in 0..40 {
            vals.extend((0..(5 + i % 17)).map(|k| 200 + k as i64 + i as i64));
            offs.push(vals.len() as i64);
        }
        let idx: Vec<u64> = (0..40).collect();
        let inp = BatchInputs {
            a: Ragged::new(&vals, &offs, "a").unwrap(),
            b: None,
            word_ids_a: None,
            word_ids_b: None,
            entities: None,
            indices: &idx,
        };
        let o1 = collate_mlm(&cfg(), &opts(), &inp, None, 7, 1, Some(1)).unwrap();
        let o2 = collate_mlm(&cfg(), &opts(), &inp, None, 7, 1, Some(2)).unwrap();
        assert_eq!(o1.input_ids, o2.input_ids);
        assert_eq!(o1.labels, o2.labels);
        assert_eq!(o1.len % 8, 0);
        for i in 0..40 {
            let row = &o1.input_ids[i * o1.len..(i + 1) * o1.len];
            let sl = o1.seq_len[i] as usize;
            assert_eq!(row[0], 101);
            assert_eq!(row[sl - 1], 102);
            assert!(row[sl..].iter().all(|&t| t == 0));
            assert!(o1.labels[i * o1.len + sl..(i + 1) * o1.len]
                .iter()
                .all(|&t| t == IGNORE));
        }
        // another epoch gives other masks
        let o3 = collate_mlm(&cfg(), &opts(), &inp, None, 7, 2, Some(1)).unwrap();
        assert_ne!(o1.labels, o3.labels);
    }

    #[test]
    fn too_long_without_truncation_is_an_error() {
        let vals: Vec<i64> = (200..230).collect();
        let offs = [0i64, 30];
        let inp = BatchInputs {
            a: Ragged::new(&vals, &offs, "a").unwrap(),
            b: None,
            word_ids_a: None,
            word_ids_b: None,
            entities: None,
            indices: &[0],
        };
        let mut o = opts();
        o.max_length = Some(16);
        assert!(collate_mlm(&cfg(), &o, &inp, None, 0, 0, None)
            .unwrap_err()
            .to_string()
            .contains("max_length = 16"));
        o.truncation = true;
        let out = collate_mlm(&cfg(), &o, &inp, None, 0, 0, None).unwrap();
        assert_eq!(out.seq_len[0], 16);
    }
}
