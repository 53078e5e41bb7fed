//! UNILM batches: per-sample attention modes, segments and masks.
//!
//! UNILM (Dong et al. 2019, arXiv 1905.03197, sections 2.3-2.4): one Transformer trained
//! with four objectives mixed in every batch (1/3 bidirectional, 1/3 seq2seq, 1/6
//! left-to-right, 1/6 right-to-left). Each sample is `[CLS] A [SEP] B [SEP]`; the segment
//! embeddings also identify the LM objective (the released code uses segment ids 0/1 for
//! the bidirectional pair, 2 for left-to-right, 3 for right-to-left, 4/5 for the seq2seq
//! source/target, hence `type_vocab_size = 6`). Tokens are masked with the UNILM recipe
//! (15%, n-grams, 80/10/10); for seq2seq only target tokens are masked. NSP is only used
//! with the bidirectional objective. The attention mask is not materialised: each sample
//! carries `(attn_mode, src_len, seq_len)`, see `unimask.masks`.

use crate::masking::collate::{
    check_nsp_labels, collate_rows, plan_row, BatchInputs, LayoutOptions, MaskPlan,
};
use crate::masking::{MaskConfig, Padded, IGNORE};
use crate::rng::{stream, Rng};
use crate::{invalid, Result};

/// Mode codes (same as `unimask.masks`).
pub const BIDIRECTIONAL: u8 = 0;
pub const LEFT_TO_RIGHT: u8 = 1;
pub const RIGHT_TO_LEFT: u8 = 2;
pub const SEQ2SEQ: u8 = 3;

/// UNILM-specific settings.
#[derive(Clone, Debug)]
pub struct UnilmConfig {
    /// Weight of each mode, indexed by its code (default 1/3, 1/6, 1/6, 1/3).
    pub mode_weights: [f64; 4],
    /// Segment ids `(A, B)` per mode (default (0,1), (2,2), (3,3), (4,5)).
    pub type_ids: [(i64, i64); 4],
    /// Let the target's final `[SEP]` be masked in seq2seq samples (UNILM fine-tuning does).
    pub mask_target_eos: bool,
}

impl Default for UnilmConfig {
    fn default() -> Self {
        UnilmConfig {
            mode_weights: [1.0 / 3.0, 1.0 / 6.0, 1.0 / 6.0, 1.0 / 3.0],
            type_ids: [(0, 1), (2, 2), (3, 3), (4, 5)],
            mask_target_eos: false,
        }
    }
}

impl UnilmConfig {
    /// Reject negative or all-zero weights and negative segment ids.
    pub fn validate(&self) -> Result<()> {
        for (m, &w) in self.mode_weights.iter().enumerate() {
            if !(w >= 0.0 && w.is_finite()) {
                return invalid!("mode weight of mode {m} must be finite and >= 0, got {w}");
            }
        }
        if self.mode_weights.iter().sum::<f64>() <= 0.0 {
            return invalid!(
                "mode weights must not all be 0, got {:?}",
                self.mode_weights
            );
        }
        for (m, &(a, b)) in self.type_ids.iter().enumerate() {
            if a < 0 || b < 0 {
                return invalid!("segment ids of mode {m} must be >= 0, got ({a}, {b})");
            }
        }
        Ok(())
    }
}

/// Draw the mode of one sample; samples without segment B cannot be seq2seq and draw
/// among the other modes with renormalised weights.
pub fn draw_mode(weights: &[f64; 4], has_b: bool, rng: &mut Rng) -> Option<u8> {
    let mut cum = [0.0; 4];
    let mut acc = 0.0;
    for m in 0..4 {
        if has_b || m as u8 != SEQ2SEQ {
            acc += weights[m];
        }
        cum[m] = acc;
    }
    if acc <= 0.0 {
        return None;
    }
    Some(rng.pick_cumulative(&cum) as u8)
}

/// Collate `(A, B)` pairs (B optional per sample; no special tokens in the input) into a
/// UNILM batch with `attn_mode`, `src_len`, `seq_len` and `next_sentence_label` (the given
/// label for bidirectional samples, -100 otherwise).
#[allow(clippy::too_many_arguments)]
pub fn collate_unilm(
    cfg: &MaskConfig,
    ucfg: &UnilmConfig,
    opts: &LayoutOptions,
    inp: &BatchInputs<'_>,
    nsp_labels: Option<&[i64]>,
    seed: u64,
    epoch: u64,
    threads: Option<usize>,
) -> Result<Padded> {
    cfg.validate()?;
    ucfg.validate()?;
    inp.validate(cfg.specials.vocab_size(), false)?;
    let n = inp.a.len();
    if let Some(l) = nsp_labels {
        check_nsp_labels(l, n)?;
    }
    let mut modes = Vec::with_capacity(n);
    for i in 0..n {
        let has_b = inp.b.is_some_and(|b| !b.row(i).is_empty());
        let mut rng = Rng::new(seed, epoch, inp.indices[i], stream::MODE);
        match draw_mode(&ucfg.mode_weights, has_b, &mut rng) {
            Some(m) => modes.push(m),
            None => {
                return invalid!(
                    "sample {i} has no segment B, so it cannot be seq2seq, and the other modes have weight 0"
                )
            }
        }
    }
    let mut opts = opts.clone();
    opts.add_special_tokens = true;
    let (mut out, layouts) = collate_rows(
        cfg,
        &opts,
        inp,
        seed,
        epoch,
        threads,
        |i, rng| {
            plan_row(
                &opts,
                inp,
                i,
                true,
                ucfg.type_ids[modes[i] as usize],
                false,
                rng,
            )
        },
        |i, lay, seq_len| {
            if modes[i] == SEQ2SEQ {
                let src = lay.src_len();
                // the target's final [SEP] (its EOS) is special: a candidate only when asked
                let (end, special_ok) = if ucfg.mask_target_eos {
                    (seq_len, Some(seq_len - 1))
                } else {
                    (seq_len - 1, None)
                };
                let target = lay.b.as_ref().map_or(0, |b| b.len());
                Some(MaskPlan {
                    region: src..end,
                    count_len: target,
                    special_ok,
                })
            } else {
                Some(MaskPlan {
                    region: 0..seq_len,
                    count_len: seq_len,
                    special_ok: None,
                })
            }
        },
    )?;
    out.attn_mode = modes.iter().map(|&m| m as i8).collect();
    out.src_len = layouts.iter().map(|l| l.src_len() as i32).collect();
    out.next_sentence_label = (0..n)
        .map(|i| match nsp_labels {
            Some(l) if modes[i] == BIDIRECTIONAL => l[i],
            _ => IGNORE,
        })
        .collect();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::masking::{Ragged, Scheme, Specials};

    #[test]
    fn mode_mix_and_seq2seq_masks_only_target() {
        let cfg = MaskConfig {
            mask_id: 103,
            probability: 0.15,
            max_predictions: None,
            exact_count: true,
            mask_ratio: 0.8,
            random_ratio: 0.1,
            whole_word: false,
            scheme: Scheme::Ngram {
                prob: 0.2,
                max_n: 3,
            },
            per_span_replacement: false,
            specials: Specials::new(1000, &[0, 100, 101, 102, 103]).unwrap(),
        };
        let opts = LayoutOptions {
            cls_id: 101,
            sep_id: 102,
            pad_id: 0,
            add_special_tokens: true,
            max_length: None,
            truncation: false,
            pad_to_multiple_of: None,
        };
        let n = 3000;
        let mut av = Vec::new();
        let mut ao = vec![0i64];
        let mut bv = Vec::new();
        let mut bo = vec![0i64];
        for _ in 0..n {
            av.extend(200..212);
            ao.push(av.len() as i64);
            bv.extend(300..320);
            bo.push(bv.len() as i64);
        }
        let idx: Vec<u64> = (0..n as u64).collect();
        let inp = BatchInputs {
            a: Ragged::new(&av, &ao, "a").unwrap(),
            b: Some(Ragged::new(&bv, &bo, "b").unwrap()),
            word_ids_a: None,
            word_ids_b: None,
            entities: None,
            indices: &idx,
        };
        let out = collate_unilm(
            &cfg,
            &UnilmConfig::default(),
            &opts,
            &inp,
            None,
            3,
            0,
            Some(2),
        )
        .unwrap();
        let mut counts = [0usize; 4];
        for i in 0..n {
            let m = out.attn_mode[i] as usize;
            counts[m] += 1;
            assert_eq!(out.src_len[i], 14);
            let row = &out.labels[i * out.len..(i + 1) * out.len];
            if m == SEQ2SEQ as usize {
                assert!(row[..14].iter().all(|&l| l == IGNORE));
                assert_eq!(row.iter().filter(|&&l| l != IGNORE).count(), 3); // round(20 * 0.15)
                assert_eq!(out.token_type_ids[i * out.len], 4);
                assert_eq!(out.token_type_ids[i * out.len + 20], 5);
            }
        }
        let expect = [1.0 / 3.0, 1.0 / 6.0, 1.0 / 6.0, 1.0 / 3.0];
        for m in 0..4 {
            let e = expect[m] * n as f64;
            let sd = (e * (1.0 - expect[m])).sqrt();
            assert!((counts[m] as f64 - e).abs() < 5.0 * sd, "{counts:?}");
        }
    }

    #[test]
    fn single_segments_never_draw_seq2seq() {
        let mut rng = Rng::new(0, 0, 0, 0);
        for _ in 0..1000 {
            assert_ne!(
                draw_mode(&[1.0, 1.0, 1.0, 1.0], false, &mut rng),
                Some(SEQ2SEQ)
            );
        }
        assert_eq!(draw_mode(&[0.0, 0.0, 0.0, 1.0], false, &mut rng), None);
    }
}
