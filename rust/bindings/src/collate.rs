//! Bindings of the core's collate stage: masking specs, NSP pairs, MASS, T5 and causal batches.
//!
//! Inputs arrive as flat, contiguous int64 numpy arrays plus offsets (a ragged batch); outputs
//! leave as numpy arrays that own the Rust buffers (no copy). Python reshapes them to
//! `[batch, len]` and wraps them with `torch.from_numpy`.

use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use unimask_core::causal::{collate_causal, CausalOptions};
use unimask_core::masking::collate::{collate_mlm, BatchInputs, LayoutOptions};
use unimask_core::masking::{
    mask_sequence, MaskConfig, Padded, Ragged, Scheme, Scratch, Specials, IGNORE,
};
use unimask_core::nsp::{build_pairs, NspConfig};
use unimask_core::rng::{stream, Rng};
use unimask_core::spans::{collate_mass, collate_t5, MassConfig, T5Config};
use unimask_core::unilm::{collate_unilm, UnilmConfig};

use crate::errors::{run_detached, to_py};

type Arr<'py> = PyReadonlyArray1<'py, i64>;
type RaggedArrays<'py> = (Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<i64>>);
type LengthArrays<'py> = (
    Bound<'py, numpy::PyArray1<u32>>,
    Bound<'py, numpy::PyArray1<u32>>,
);

pub(crate) fn slice<'a, T: numpy::Element>(
    a: &'a PyReadonlyArray1<'_, T>,
    name: &str,
) -> PyResult<&'a [T]> {
    a.as_slice()
        .map_err(|e| PyValueError::new_err(format!("{name} must be a contiguous 1-D array: {e}")))
}

fn ragged<'a>(
    values: &'a Option<Arr<'_>>,
    offsets: &'a Option<Arr<'_>>,
    name: &str,
) -> PyResult<Option<Ragged<'a>>> {
    match (values, offsets) {
        (Some(v), Some(o)) => Ok(Some(
            Ragged::new(slice(v, name)?, slice(o, name)?, name).map_err(to_py)?,
        )),
        (None, None) => Ok(None),
        _ => Err(PyValueError::new_err(format!(
            "{name}: values and offsets must be given together"
        ))),
    }
}

/// A row-major `[batch, len]` numpy array that owns `v` (no copy).
pub(crate) fn matrix<'py, T: numpy::Element>(
    py: Python<'py>,
    v: Vec<T>,
    batch: usize,
    len: usize,
) -> PyResult<Bound<'py, PyArray2<T>>> {
    let a = Array2::from_shape_vec((batch, len), v).map_err(|e| {
        crate::errors::InternalError::new_err(format!(
            "internal error (a bug in unimask): output shape: {e}"
        ))
    })?;
    Ok(a.into_pyarray(py))
}

/// Gather a list of 1-D int64 numpy arrays into `(values, offsets)`; `None` when an item is
/// anything else (the caller then takes the general path).
fn gather(list: &Bound<'_, PyList>) -> Option<(Vec<i64>, Vec<i64>)> {
    let mut offsets = Vec::with_capacity(list.len() + 1);
    offsets.push(0i64);
    let mut values = Vec::new();
    for item in list.iter() {
        if !extend_from_array(&item, &mut values)? {
            return None;
        }
        offsets.push(values.len() as i64);
    }
    Some((values, offsets))
}

fn extend_typed<T: numpy::Element + Copy>(
    item: &Bound<'_, PyAny>,
    values: &mut Vec<i64>,
    conv: impl Fn(T) -> i64,
) -> Option<bool> {
    let arr = item.cast::<PyArray1<T>>().ok()?;
    let Ok(ro) = arr.try_readonly() else {
        return Some(false);
    };
    let Ok(sl) = ro.as_slice() else {
        return Some(false);
    };
    values.extend(sl.iter().map(|&x| conv(x)));
    Some(true)
}

/// Append a contiguous 1-D integer numpy array (int64, int32, uint32, uint16: the dtypes of
/// tokenizer outputs and shards). `None` when `item` is no such array, `Some(false)` when it
/// is one that cannot be read in place (not contiguous, or uint64 values above i64::MAX).
fn extend_from_array(item: &Bound<'_, PyAny>, values: &mut Vec<i64>) -> Option<bool> {
    if let Ok(arr) = item.cast::<PyArray1<i64>>() {
        let Ok(ro) = arr.try_readonly() else {
            return Some(false);
        };
        let Ok(sl) = ro.as_slice() else {
            return Some(false);
        };
        values.extend_from_slice(sl);
        return Some(true);
    }
    extend_typed::<i32>(item, values, i64::from)
        .or_else(|| extend_typed::<u32>(item, values, i64::from))
        .or_else(|| extend_typed::<u16>(item, values, i64::from))
}

/// Append the ints of a Python list or tuple (`None` -> -1); `false` when an item is not an int.
fn extend_ints(seq: &Bound<'_, PyAny>, values: &mut Vec<i64>) -> bool {
    if let Ok(list) = seq.cast::<PyList>() {
        let n = list.len();
        values.reserve(n);
        let none = seq.py().None();
        for k in 0..n {
            // SAFETY: we hold the GIL and `list` is alive; PyList_GetItem returns a borrowed
            // reference (or NULL with an exception set when k is out of range, which it is not).
            let obj =
                unsafe { pyo3::ffi::PyList_GetItem(list.as_ptr(), k as pyo3::ffi::Py_ssize_t) };
            if obj.is_null() {
                // SAFETY: GIL held; clears the IndexError raised by PyList_GetItem.
                unsafe { pyo3::ffi::PyErr_Clear() };
                return false;
            }
            if obj == none.as_ptr() {
                values.push(-1);
                continue;
            }
            // SAFETY: GIL held, `obj` is a valid borrowed reference. Only exact ints are read
            // directly; anything else (floats, bools, numpy scalars) takes the general path.
            let v = unsafe {
                if pyo3::ffi::PyLong_CheckExact(obj) == 0 {
                    return false;
                }
                pyo3::ffi::PyLong_AsLongLong(obj)
            };
            // SAFETY: GIL held; -1 is ambiguous, check for (and clear) an overflow error.
            if v == -1 && unsafe { !pyo3::ffi::PyErr_Occurred().is_null() } {
                unsafe { pyo3::ffi::PyErr_Clear() };
                return false;
            }
            values.push(v);
        }
        return true;
    }
    let Ok(iter) = seq.try_iter() else {
        return false;
    };
    for x in iter {
        let Ok(x) = x else { return false };
        if x.is_none() {
            values.push(-1);
        } else if x.is_exact_instance_of::<pyo3::types::PyInt>() {
            match x.extract::<i64>() {
                Ok(v) => values.push(v),
                Err(_) => return false,
            }
        } else {
            return false;
        }
    }
    true
}

/// Flatten a list of token-id sequences (1-D int64 numpy arrays, lists or tuples of ints,
/// `None` read as -1 for word ids) into `(values, offsets)` without per-token Python objects.
/// Returns `None` for anything else (the caller's general path then converts or explains).
#[pyfunction]
fn gather_ids<'py>(
    py: Python<'py>,
    seqs: Bound<'py, PyList>,
) -> PyResult<Option<RaggedArrays<'py>>> {
    let mut offsets = Vec::with_capacity(seqs.len() + 1);
    offsets.push(0i64);
    let mut values = Vec::new();
    for item in seqs.iter() {
        if let Some(ok) = extend_from_array(&item, &mut values) {
            if !ok {
                return Ok(None);
            }
        } else if item.is_instance_of::<PyList>() || item.is_instance_of::<pyo3::types::PyTuple>() {
            if !extend_ints(&item, &mut values) {
                return Ok(None);
            }
        } else {
            return Ok(None);
        }
        offsets.push(values.len() as i64);
    }
    Ok(Some((values.into_pyarray(py), offsets.into_pyarray(py))))
}

fn padded_to_py<'py>(py: Python<'py>, p: Padded) -> PyResult<(usize, usize, Bound<'py, PyDict>)> {
    let (b, l) = (p.batch, p.len);
    let d = PyDict::new(py);
    d.set_item("input_ids", matrix(py, p.input_ids, b, l)?)?;
    d.set_item("attention_mask", matrix(py, p.attention_mask, b, l)?)?;
    if !p.token_type_ids.is_empty() {
        d.set_item("token_type_ids", matrix(py, p.token_type_ids, b, l)?)?;
    }
    d.set_item("labels", matrix(py, p.labels, b, l)?)?;
    d.set_item("seq_len", p.seq_len.into_pyarray(py))?;
    if !p.attn_mode.is_empty() {
        d.set_item("attn_mode", p.attn_mode.into_pyarray(py))?;
        d.set_item("src_len", p.src_len.into_pyarray(py))?;
    }
    if !p.next_sentence_label.is_empty() {
        d.set_item(
            "next_sentence_label",
            p.next_sentence_label.into_pyarray(py),
        )?;
    }
    Ok((p.batch, p.len, d))
}

/// A validated masking recipe plus the row layout options (built once per collator).
#[pyclass(frozen, module = "unimask._native")]
struct MaskingSpec {
    cfg: MaskConfig,
    layout: LayoutOptions,
    unilm: UnilmConfig,
}

#[pymethods]
impl MaskingSpec {
    #[new]
    #[pyo3(signature = (*, vocab_size, mask_id, cls_id, sep_id, pad_id, special_ids, mlm_probability,
        max_predictions, exact_count, mask_ratio, random_ratio, whole_word, scheme, ngram_probability,
        max_ngram, span_p, max_span_length, per_span_replacement, add_special_tokens, max_length,
        truncation, pad_to_multiple_of, mode_weights, type_ids, mask_target_eos))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        vocab_size: u32,
        mask_id: i64,
        cls_id: i64,
        sep_id: i64,
        pad_id: i64,
        special_ids: Vec<i64>,
        mlm_probability: f64,
        max_predictions: Option<usize>,
        exact_count: bool,
        mask_ratio: f64,
        random_ratio: f64,
        whole_word: bool,
        scheme: &str,
        ngram_probability: f64,
        max_ngram: usize,
        span_p: f64,
        max_span_length: usize,
        per_span_replacement: bool,
        add_special_tokens: bool,
        max_length: Option<usize>,
        truncation: bool,
        pad_to_multiple_of: Option<usize>,
        mode_weights: [f64; 4],
        type_ids: [(i64, i64); 4],
        mask_target_eos: bool,
    ) -> PyResult<Self> {
        let scheme = match scheme {
            "token" => Scheme::Units,
            "ngram" => Scheme::Ngram {
                prob: ngram_probability,
                max_n: max_ngram,
            },
            "geometric" => Scheme::Geometric {
                p: span_p,
                max_len: max_span_length,
            },
            other => {
                return Err(PyValueError::new_err(format!(
                    "span must be None, 'ngram' or 'geometric', got {other:?}"
                )))
            }
        };
        let specials = Specials::new(vocab_size, &special_ids).map_err(to_py)?;
        for (name, id) in [("cls_id", cls_id), ("sep_id", sep_id), ("pad_id", pad_id)] {
            if id < 0 || id >= vocab_size as i64 {
                return Err(PyValueError::new_err(format!(
                    "{name} {id} is outside the vocabulary [0, {vocab_size})"
                )));
            }
        }
        let cfg = MaskConfig {
            mask_id,
            probability: mlm_probability,
            max_predictions,
            exact_count,
            mask_ratio,
            random_ratio,
            whole_word,
            scheme,
            per_span_replacement,
            specials,
        };
        cfg.validate().map_err(to_py)?;
        let unilm = UnilmConfig {
            mode_weights,
            type_ids,
            mask_target_eos,
        };
        unilm.validate().map_err(to_py)?;
        let layout = LayoutOptions {
            cls_id,
            sep_id,
            pad_id,
            add_special_tokens,
            max_length,
            truncation,
            pad_to_multiple_of,
        };
        Ok(MaskingSpec { cfg, layout, unilm })
    }

    /// BERT MLM batch. Returns `(batch, len, {name: flat array})`.
    #[pyo3(signature = (a_values, a_offsets, indices, seed, epoch, threads, *, b_values=None, b_offsets=None,
        wa_values=None, wa_offsets=None, wb_values=None, wb_offsets=None, ent_values=None, ent_offsets=None,
        nsp_labels=None, unilm=false))]
    #[allow(clippy::too_many_arguments)]
    fn collate<'py>(
        &self,
        py: Python<'py>,
        a_values: Arr<'py>,
        a_offsets: Arr<'py>,
        indices: PyReadonlyArray1<'py, u64>,
        seed: u64,
        epoch: u64,
        threads: Option<usize>,
        b_values: Option<Arr<'py>>,
        b_offsets: Option<Arr<'py>>,
        wa_values: Option<Arr<'py>>,
        wa_offsets: Option<Arr<'py>>,
        wb_values: Option<Arr<'py>>,
        wb_offsets: Option<Arr<'py>>,
        ent_values: Option<Arr<'py>>,
        ent_offsets: Option<Arr<'py>>,
        nsp_labels: Option<Arr<'py>>,
        unilm: bool,
    ) -> PyResult<(usize, usize, Bound<'py, PyDict>)> {
        let a = Ragged::new(
            slice(&a_values, "input_ids")?,
            slice(&a_offsets, "input_ids")?,
            "input_ids",
        )
        .map_err(to_py)?;
        let inp = BatchInputs {
            a,
            b: ragged(&b_values, &b_offsets, "segment B")?,
            word_ids_a: ragged(&wa_values, &wa_offsets, "word_ids")?,
            word_ids_b: ragged(&wb_values, &wb_offsets, "word_ids of segment B")?,
            entities: ragged(&ent_values, &ent_offsets, "entity spans")?,
            indices: slice(&indices, "indices")?,
        };
        let nsp = match &nsp_labels {
            Some(l) => Some(slice(l, "next_sentence_label")?),
            None => None,
        };
        let out = run_detached(py, || {
            if unilm {
                collate_unilm(
                    &self.cfg,
                    &self.unilm,
                    &self.layout,
                    &inp,
                    nsp,
                    seed,
                    epoch,
                    threads,
                )
            } else {
                collate_mlm(&self.cfg, &self.layout, &inp, nsp, seed, epoch, threads)
            }
        })?;
        padded_to_py(py, out)
    }

    /// Fast path of [`MaskingSpec::collate`] for a list of 1-D int64 arrays holding whole
    /// rows (no pairs, word ids or entities). Returns `None` when the list holds anything else.
    #[pyo3(signature = (seqs, indices, seed, epoch, threads, unilm=false))]
    #[allow(clippy::too_many_arguments)]
    fn collate_arrays<'py>(
        &self,
        py: Python<'py>,
        seqs: Bound<'py, PyList>,
        indices: PyReadonlyArray1<'py, u64>,
        seed: u64,
        epoch: u64,
        threads: Option<usize>,
        unilm: bool,
    ) -> PyResult<Option<(usize, usize, Bound<'py, PyDict>)>> {
        let Some((values, offsets)) = gather(&seqs) else {
            return Ok(None);
        };
        let inp = BatchInputs {
            a: Ragged::new(&values, &offsets, "input_ids").map_err(to_py)?,
            b: None,
            word_ids_a: None,
            word_ids_b: None,
            entities: None,
            indices: slice(&indices, "indices")?,
        };
        let out = run_detached(py, || {
            if unilm {
                collate_unilm(
                    &self.cfg,
                    &self.unilm,
                    &self.layout,
                    &inp,
                    None,
                    seed,
                    epoch,
                    threads,
                )
            } else {
                collate_mlm(&self.cfg, &self.layout, &inp, None, seed, epoch, threads)
            }
        })?;
        padded_to_py(py, out).map(Some)
    }

    /// Test hook: mask `samples` rows of `n_tokens` plain tokens and return the span lengths
    /// (in units) the span sampler drew, and the lengths of the spans it kept.
    /// `n_tokens * samples` is bounded by `SAMPLED_SPAN_TOKENS_MAX` (a ValueError above it), so
    /// a huge argument cannot abort on allocation or run for ever.
    fn _sampled_span_lengths<'py>(
        &self,
        py: Python<'py>,
        n_tokens: usize,
        samples: u64,
        seed: u64,
    ) -> PyResult<LengthArrays<'py>> {
        check_sampled_span_size(n_tokens, samples)?;
        let (drawn, kept) = run_detached(py, || {
            let mut s = Scratch::default();
            let (mut drawn, mut kept) = (Vec::new(), Vec::new());
            let v = self.cfg.specials.vocab_size() as u64;
            let base = (0..v as i64)
                .find(|&t| !self.cfg.specials.contains(t))
                .unwrap_or(0);
            for idx in 0..samples {
                let mut toks = vec![base; n_tokens];
                let mut labels = vec![IGNORE; n_tokens];
                let mut rng = Rng::new(seed, 0, idx, stream::MASK);
                mask_sequence(
                    &self.cfg,
                    &mut toks,
                    &mut labels,
                    0..n_tokens,
                    None,
                    n_tokens,
                    None,
                    &[],
                    &mut rng,
                    &mut s,
                );
                drawn.extend_from_slice(&s.sampled_lengths);
                kept.extend(s.spans.iter().map(|&(a, b)| b - a));
            }
            Ok((drawn, kept))
        })?;
        Ok((drawn.into_pyarray(py), kept.into_pyarray(py)))
    }
}

/// Most tokens (`n_tokens * samples`) one `_sampled_span_lengths` call may mask.
const SAMPLED_SPAN_TOKENS_MAX: u64 = 1 << 28;

fn check_sampled_span_size(n_tokens: usize, samples: u64) -> PyResult<()> {
    match (n_tokens as u64).checked_mul(samples) {
        Some(total) if total <= SAMPLED_SPAN_TOKENS_MAX => Ok(()),
        _ => Err(PyValueError::new_err(format!(
            "_sampled_span_lengths: n_tokens={n_tokens} * samples={samples} exceeds \
             {SAMPLED_SPAN_TOKENS_MAX} tokens (2**28)"
        ))),
    }
}

/// NSP / SOP pairs from documents. Returns `(a_values, a_offsets, b_values, b_offsets, labels, doc)`.
#[pyfunction]
#[pyo3(signature = (sent_values, sent_offsets, doc_offsets, *, max_seq_length, short_seq_prob, random_next_prob, sop, seed, epoch, threads))]
#[allow(clippy::too_many_arguments)]
fn nsp_pairs<'py>(
    py: Python<'py>,
    sent_values: Arr<'py>,
    sent_offsets: Arr<'py>,
    doc_offsets: Arr<'py>,
    max_seq_length: usize,
    short_seq_prob: f64,
    random_next_prob: f64,
    sop: bool,
    seed: u64,
    epoch: u64,
    threads: Option<usize>,
) -> PyResult<Bound<'py, pyo3::types::PyTuple>> {
    let sents = Ragged::new(
        slice(&sent_values, "sentences")?,
        slice(&sent_offsets, "sentences")?,
        "sentences",
    )
    .map_err(to_py)?;
    let docs = slice(&doc_offsets, "doc_offsets")?;
    let cfg = NspConfig {
        max_seq_length,
        short_seq_prob,
        random_next_prob,
        sop,
    };
    let p = run_detached(py, || build_pairs(&cfg, sents, docs, seed, epoch, threads))?;
    pyo3::types::PyTuple::new(
        py,
        [
            p.a_values.into_pyarray(py).into_any(),
            p.a_offsets.into_pyarray(py).into_any(),
            p.b_values.into_pyarray(py).into_any(),
            p.b_offsets.into_pyarray(py).into_any(),
            p.labels.into_pyarray(py).into_any(),
            p.doc.into_pyarray(py).into_any(),
        ],
    )
}

/// MASS batch. Returns `(batch, len, dec_len, {name: flat array})`.
#[pyfunction]
#[pyo3(signature = (values, offsets, indices, *, vocab_size, special_ids, mask_id, pad_id, decoder_start_id,
    span_ratio, start_prob, end_prob, mask_ratio, random_ratio, max_length, pad_to_multiple_of, seed, epoch, threads,
    truncation=false))]
#[allow(clippy::too_many_arguments)]
fn mass_collate<'py>(
    py: Python<'py>,
    values: Arr<'py>,
    offsets: Arr<'py>,
    indices: PyReadonlyArray1<'py, u64>,
    vocab_size: u32,
    special_ids: Vec<i64>,
    mask_id: i64,
    pad_id: i64,
    decoder_start_id: i64,
    span_ratio: f64,
    start_prob: f64,
    end_prob: f64,
    mask_ratio: f64,
    random_ratio: f64,
    max_length: Option<usize>,
    pad_to_multiple_of: Option<usize>,
    seed: u64,
    epoch: u64,
    threads: Option<usize>,
    truncation: bool,
) -> PyResult<(usize, usize, usize, Bound<'py, PyDict>)> {
    let seqs = Ragged::new(
        slice(&values, "input_ids")?,
        slice(&offsets, "input_ids")?,
        "input_ids",
    )
    .map_err(to_py)?;
    let idx = slice(&indices, "indices")?;
    let specials = Specials::new(vocab_size, &special_ids).map_err(to_py)?;
    let cfg = MassConfig {
        span_ratio,
        start_prob,
        end_prob,
        mask_id,
        mask_ratio,
        random_ratio,
        decoder_start_id,
        pad_id,
        specials,
    };
    let out = run_detached(py, || {
        collate_mass(
            &cfg,
            seqs,
            idx,
            seed,
            epoch,
            max_length,
            truncation,
            pad_to_multiple_of,
            threads,
        )
    })?;
    let d = PyDict::new(py);
    d.set_item("input_ids", out.input_ids.into_pyarray(py))?;
    d.set_item("attention_mask", out.attention_mask.into_pyarray(py))?;
    d.set_item("seq_len", out.seq_len.into_pyarray(py))?;
    d.set_item("decoder_input_ids", out.decoder_input_ids.into_pyarray(py))?;
    d.set_item("decoder_positions", out.decoder_positions.into_pyarray(py))?;
    d.set_item("decoder_labels", out.decoder_labels.into_pyarray(py))?;
    d.set_item("decoder_len", out.decoder_len.into_pyarray(py))?;
    Ok((out.batch, out.len, out.dec_len, d))
}

/// T5 span-corruption batch. Returns `(batch, len, label_len, {name: flat array})`.
#[pyfunction]
#[pyo3(signature = (values, offsets, indices, *, vocab_size, noise_density, mean_span, first_sentinel, eos_id,
    pad_id, decoder_start_id, max_length, pad_to_multiple_of, seed, epoch, threads, truncation=false))]
#[allow(clippy::too_many_arguments)]
fn t5_collate<'py>(
    py: Python<'py>,
    values: Arr<'py>,
    offsets: Arr<'py>,
    indices: PyReadonlyArray1<'py, u64>,
    vocab_size: u32,
    noise_density: f64,
    mean_span: f64,
    first_sentinel: i64,
    eos_id: i64,
    pad_id: i64,
    decoder_start_id: i64,
    max_length: Option<usize>,
    pad_to_multiple_of: Option<usize>,
    seed: u64,
    epoch: u64,
    threads: Option<usize>,
    truncation: bool,
) -> PyResult<(usize, usize, usize, Bound<'py, PyDict>)> {
    let seqs = Ragged::new(
        slice(&values, "input_ids")?,
        slice(&offsets, "input_ids")?,
        "input_ids",
    )
    .map_err(to_py)?;
    let idx = slice(&indices, "indices")?;
    let cfg = T5Config {
        noise_density,
        mean_span,
        vocab_size,
        first_sentinel,
        eos_id,
        pad_id,
        decoder_start_id,
    };
    let out = run_detached(py, || {
        collate_t5(
            &cfg,
            seqs,
            idx,
            seed,
            epoch,
            max_length,
            truncation,
            pad_to_multiple_of,
            threads,
        )
    })?;
    let d = PyDict::new(py);
    d.set_item("input_ids", out.input_ids.into_pyarray(py))?;
    d.set_item("attention_mask", out.attention_mask.into_pyarray(py))?;
    d.set_item("seq_len", out.seq_len.into_pyarray(py))?;
    d.set_item("labels", out.labels.into_pyarray(py))?;
    d.set_item("decoder_input_ids", out.decoder_input_ids.into_pyarray(py))?;
    d.set_item("labels_len", out.labels_len.into_pyarray(py))?;
    Ok((out.batch, out.len, out.label_len, d))
}

/// Causal LM batch. Returns `(batch, len, {name: flat array})`.
#[pyfunction]
#[pyo3(signature = (values, offsets, *, vocab_size, bos_id, eos_id, pad_id, max_length, truncation, pad_to_multiple_of, pack))]
#[allow(clippy::too_many_arguments)]
fn causal_collate<'py>(
    py: Python<'py>,
    values: Arr<'py>,
    offsets: Arr<'py>,
    vocab_size: u32,
    bos_id: Option<i64>,
    eos_id: Option<i64>,
    pad_id: i64,
    max_length: Option<usize>,
    truncation: bool,
    pad_to_multiple_of: Option<usize>,
    pack: bool,
) -> PyResult<(usize, usize, Bound<'py, PyDict>)> {
    let docs = Ragged::new(
        slice(&values, "input_ids")?,
        slice(&offsets, "input_ids")?,
        "input_ids",
    )
    .map_err(to_py)?;
    let opts = CausalOptions {
        vocab_size,
        bos_id,
        eos_id,
        pad_id,
        max_length,
        truncation,
        pad_to_multiple_of,
        pack,
    };
    let out = run_detached(py, || collate_causal(&opts, docs))?;
    padded_to_py(py, out)
}

/// A permutation of `0..n` that is a pure function of `(seed, epoch)` (dataset shuffling).
#[pyfunction]
fn permutation(
    py: Python<'_>,
    n: usize,
    seed: u64,
    epoch: u64,
) -> PyResult<Bound<'_, PyArray1<u64>>> {
    let p = run_detached(py, || unimask_core::rng::permutation(n, seed, epoch))?;
    Ok(p.into_pyarray(py))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<MaskingSpec>()?;
    m.add_function(wrap_pyfunction!(nsp_pairs, m)?)?;
    m.add_function(wrap_pyfunction!(gather_ids, m)?)?;
    m.add_function(wrap_pyfunction!(permutation, m)?)?;
    m.add_function(wrap_pyfunction!(mass_collate, m)?)?;
    m.add_function(wrap_pyfunction!(t5_collate, m)?)?;
    m.add_function(wrap_pyfunction!(causal_collate, m)?)?;
    Ok(())
}
