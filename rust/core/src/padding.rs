//! Right padding of a ragged batch of encodings (the tokenizer's flat columns plus row
//! splits) into row-major `[batch, width]` matrices: `input_ids`, `attention_mask`,
//! `token_type_ids`, as a model takes them.

use crate::masking::padded_len;
use crate::{invalid, Result};

/// Padded matrices of a batch, row-major `[batch, width]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PaddedEncodings {
    pub batch: usize,
    pub width: usize,
    pub input_ids: Vec<i64>,
    pub attention_mask: Vec<i64>,
    pub token_type_ids: Vec<i64>,
}

/// Pad rows `ids[row_splits[i]..row_splits[i + 1]]` (and the same rows of `type_ids`) to the
/// longest row, rounded up to a multiple of `pad_to_multiple_of`; padding is `pad_id` in
/// `input_ids` and 0 in the other two.
///
/// Errors (not panics) for row splits that are empty, negative, decreasing or past the end of
/// the columns, and for columns of different lengths.
pub fn pad_encodings(
    ids: &[u32],
    type_ids: &[u8],
    row_splits: &[i64],
    pad_to_multiple_of: Option<usize>,
    pad_id: i64,
) -> Result<PaddedEncodings> {
    if ids.len() != type_ids.len() {
        return invalid!(
            "ids ({} tokens) and type ids ({} tokens) differ in length",
            ids.len(),
            type_ids.len()
        );
    }
    let Some(&first) = row_splits.first() else {
        return invalid!("row_splits must have at least one entry (batch size + 1)");
    };
    if first < 0 {
        return invalid!("row_splits[0] = {first} is negative");
    }
    let mut longest = 0usize;
    for (i, w) in row_splits.windows(2).enumerate() {
        if w[1] < w[0] {
            return invalid!(
                "row_splits must be non-decreasing, row_splits[{}] = {} < {}",
                i + 1,
                w[1],
                w[0]
            );
        }
        longest = longest.max((w[1] - w[0]) as usize);
    }
    let last = *row_splits.last().unwrap_or(&0);
    if last as u64 > ids.len() as u64 {
        return invalid!(
            "row_splits end at {last} but the batch has {} tokens",
            ids.len()
        );
    }
    let batch = row_splits.len() - 1;
    let width = padded_len(longest, pad_to_multiple_of);
    // Three `[batch, width]` matrices; an absurd size is an error, not an aborted process.
    let filled = |value: i64| -> Result<Vec<i64>> {
        let mut v = Vec::new();
        match batch
            .checked_mul(width)
            .map(|cells| (cells, v.try_reserve_exact(cells)))
        {
            Some((cells, Ok(()))) => {
                v.resize(cells, value);
                Ok(v)
            }
            _ => {
                invalid!("a padded batch of {batch} rows of {width} tokens does not fit in memory")
            }
        }
    };
    let mut out = PaddedEncodings {
        batch,
        width,
        input_ids: filled(pad_id)?,
        attention_mask: filled(0)?,
        token_type_ids: filled(0)?,
    };
    for (r, w) in row_splits.windows(2).enumerate() {
        let (s, e) = (w[0] as usize, w[1] as usize);
        let at = r * width;
        let n = e - s;
        for (dst, &src) in out.input_ids[at..at + n].iter_mut().zip(&ids[s..e]) {
            *dst = i64::from(src);
        }
        out.attention_mask[at..at + n].fill(1);
        for (dst, &src) in out.token_type_ids[at..at + n]
            .iter_mut()
            .zip(&type_ids[s..e])
        {
            *dst = i64::from(src);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_rows_to_the_longest_rounded_up() {
        let ids = [5, 6, 7, 8, 9, 10];
        let types = [0, 0, 0, 1, 1, 0];
        let p = pad_encodings(&ids, &types, &[0, 3, 3, 5, 6], Some(4), -1).unwrap();
        assert_eq!((p.batch, p.width), (4, 4));
        #[rustfmt::skip]
        assert_eq!(p.input_ids, [
            5, 6, 7, -1,
            -1, -1, -1, -1,
            8, 9, -1, -1,
            10, -1, -1, -1,
        ]);
        #[rustfmt::skip]
        assert_eq!(p.attention_mask, [1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 0, 0, 1, 0, 0, 0]);
        #[rustfmt::skip]
        assert_eq!(p.token_type_ids, [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn empty_batches_and_offset_starts() {
        let p = pad_encodings(&[], &[], &[0], None, 0).unwrap();
        assert_eq!((p.batch, p.width, p.input_ids.len()), (0, 0, 0));
        let p = pad_encodings(&[1, 2, 3], &[0, 0, 0], &[0, 0, 0], Some(8), 0).unwrap();
        assert_eq!((p.batch, p.width), (2, 0));
        // Rows are slices of the columns: they need not start at 0 or end at the last token.
        let p = pad_encodings(&[1, 2, 3, 4], &[0; 4], &[1, 3], None, 0).unwrap();
        assert_eq!(p.input_ids, [2, 3]);
    }

    #[test]
    fn bad_row_splits_are_errors() {
        let ids = [1u32, 2, 3];
        let types = [0u8; 3];
        for (splits, what) in [
            (&[][..], "at least one"),
            (&[-1, 2][..], "negative"),
            (&[0, 2, 1][..], "non-decreasing"),
            (&[0, 4][..], "end at 4"),
        ] {
            let e = pad_encodings(&ids, &types, splits, None, 0).unwrap_err();
            assert!(e.to_string().contains(what), "{splits:?}: {e}");
        }
        let e = pad_encodings(&ids, &types[..2], &[0, 1], None, 0).unwrap_err();
        assert!(e.to_string().contains("differ in length"), "{e}");
        // A million rows padded to 4 Mi tokens (32 TB): an error, not an aborted allocation.
        let huge: Vec<i64> = std::iter::once(0)
            .chain(std::iter::repeat_n(0, 1 << 20))
            .chain([1])
            .collect();
        let e = pad_encodings(&ids, &types, &huge, Some(1 << 22), 0).unwrap_err();
        assert!(e.to_string().contains("does not fit"), "{e}");
    }
}
