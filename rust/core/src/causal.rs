//! Causal LM (GPT) batches: shifted labels, document packing.
//!
//! GPT (Radford et al. 2018) trains `P(x_t | x_<t)`. Labels here are already shifted:
//! `labels[t] = input_ids[t + 1]`, -100 at the last valid position and on padding, so the
//! loss is `cross_entropy(logits[:, t], labels[:, t])` with no further shifting. With
//! packing, documents (each optionally wrapped in BOS/EOS) are concatenated and cut into
//! rows of exactly `max_length` tokens (GPT-2 / HF `run_clm` `group_texts`); the last row of
//! a batch may be shorter and is padded. Attention then crosses document boundaries inside a
//! row, as in GPT-2.

use crate::masking::{check_ids, checked_padded_len, Padded, Ragged, IGNORE};
use crate::{invalid, Result};

/// Causal collator settings.
#[derive(Clone, Debug)]
pub struct CausalOptions {
    pub vocab_size: u32,
    pub bos_id: Option<i64>,
    pub eos_id: Option<i64>,
    pub pad_id: i64,
    pub max_length: Option<usize>,
    pub truncation: bool,
    pub pad_to_multiple_of: Option<usize>,
    /// Concatenate the batch's documents and cut them into rows of `max_length`.
    pub pack: bool,
}

fn wrap(opts: &CausalOptions, doc: &[i64], out: &mut Vec<i64>) {
    if let Some(b) = opts.bos_id {
        out.push(b);
    }
    out.extend_from_slice(doc);
    if let Some(e) = opts.eos_id {
        out.push(e);
    }
}

/// Collate documents into a causal LM batch (`attn_mode` 1, `src_len` 0).
pub fn collate_causal(opts: &CausalOptions, docs: Ragged<'_>) -> Result<Padded> {
    for (name, id) in [
        ("bos_id", opts.bos_id),
        ("eos_id", opts.eos_id),
        ("pad_id", Some(opts.pad_id)),
    ] {
        if let Some(id) = id {
            if id < 0 || id >= opts.vocab_size as i64 {
                return invalid!(
                    "{name} {id} is outside the vocabulary [0, {})",
                    opts.vocab_size
                );
            }
        }
    }
    if opts.max_length == Some(0) {
        return invalid!("max_length must be >= 1, got 0");
    }
    let mut rows: Vec<Vec<i64>> = Vec::new();
    for i in 0..docs.len() {
        let d = docs.row(i);
        if d.is_empty() {
            return invalid!("sample {i} is an empty sequence");
        }
        check_ids("input_ids", i, d, opts.vocab_size)?;
    }
    if opts.pack {
        let Some(m) = opts.max_length else {
            return invalid!("packing needs max_length (the row length), got None");
        };
        let mut stream = Vec::with_capacity(docs.values.len() + 2 * docs.len());
        for i in 0..docs.len() {
            wrap(opts, docs.row(i), &mut stream);
        }
        rows.extend(stream.chunks(m).map(|c| c.to_vec()));
    } else {
        for i in 0..docs.len() {
            let mut r = Vec::new();
            wrap(opts, docs.row(i), &mut r);
            if let Some(m) = opts.max_length {
                if r.len() > m {
                    if !opts.truncation {
                        return invalid!("sample {i} has {} tokens, more than max_length = {m} (pass truncation=True to cut it)", r.len());
                    }
                    r.truncate(m);
                }
            }
            rows.push(r);
        }
    }
    let b = rows.len();
    let len = checked_padded_len(
        rows.iter().map(|r| r.len()).max().unwrap_or(0),
        opts.pad_to_multiple_of,
        b,
    )?;
    let mut out = Padded::new(b, len, opts.pad_id)?;
    out.token_type_ids = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let n = r.len();
        let base = i * len;
        out.input_ids[base..base + n].copy_from_slice(r);
        out.attention_mask[base..base + n].fill(1);
        out.labels[base..base + n - 1].copy_from_slice(&r[1..]);
        out.labels[base + n - 1] = IGNORE;
        out.seq_len[i] = n as i32;
    }
    out.attn_mode = vec![1; b];
    out.src_len = vec![0; b];
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_shifted_and_packing_fills_rows() {
        let vals: Vec<i64> = (10..40).collect();
        let offs = [0i64, 10, 15, 30];
        let docs = Ragged::new(&vals, &offs, "d").unwrap();
        let mut o = CausalOptions {
            vocab_size: 100,
            bos_id: None,
            eos_id: Some(2),
            pad_id: 0,
            max_length: Some(8),
            truncation: true,
            pad_to_multiple_of: None,
            pack: false,
        };
        let out = collate_causal(&o, docs).unwrap();
        assert_eq!(out.seq_len, vec![8, 6, 8]);
        assert_eq!(&out.labels[0..8], &[11, 12, 13, 14, 15, 16, 17, IGNORE]);
        assert_eq!(
            &out.labels[8..16],
            &[21, 22, 23, 24, 2, IGNORE, IGNORE, IGNORE]
        );
        o.pack = true;
        let out = collate_causal(&o, docs).unwrap();
        // 30 tokens + 3 EOS = 33 = 4 rows of 8 + 1
        assert_eq!(out.batch, 5);
        assert_eq!(out.seq_len, vec![8, 8, 8, 8, 1]);
        assert_eq!(&out.input_ids[8..16], &[18, 19, 2, 20, 21, 22, 23, 24]);
        assert_eq!(out.labels[7], IGNORE);
    }

    #[test]
    fn errors_name_the_problem() {
        let vals: Vec<i64> = vec![5, 500];
        let offs = [0i64, 2];
        let docs = Ragged::new(&vals, &offs, "d").unwrap();
        let o = CausalOptions {
            vocab_size: 100,
            bos_id: None,
            eos_id: None,
            pad_id: 0,
            max_length: None,
            truncation: false,
            pad_to_multiple_of: None,
            pack: false,
        };
        assert!(collate_causal(&o, docs)
            .unwrap_err()
            .to_string()
            .contains("500"));
    }
}
