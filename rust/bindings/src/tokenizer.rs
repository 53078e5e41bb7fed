//! Bindings of the core's tokenizer stage: `unimask._native.Tokenizer`.
//!
//! Thin by design: convert arguments (texts are borrowed as UTF-8 from the Python strings,
//! which stay referenced), run the core outside the GIL through `run_detached`, and hand the flat
//! output vectors to numpy without copying. The Python face is `unimask.tokenizer`.

use std::sync::Arc;

use numpy::{IntoPyArray, PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString, PyTuple};
use unimask_core::normalize::NormalizerConfig;
use unimask_core::padding;
use unimask_core::segment::Segmenter;
use unimask_core::shards;
use unimask_core::tokenizer::{
    BatchInput, Decoder, EncodeOptions, EncodingBuf, Seq, Tokenizer, TokenizerConfig, Truncation,
};
use unimask_core::train;
use unimask_core::vocab::Vocab;

use crate::collate::{matrix, slice};
use crate::errors::{run_detached, to_py};

/// Borrow the UTF-8 of a Python `str`, with errors naming the argument.
fn as_text<'a>(obj: &'a Bound<'_, PyAny>, what: &str) -> PyResult<&'a str> {
    as_text_with(obj, || what.to_string())
}

/// [`as_text`] with the argument's name built only when there is an error.
fn as_text_with<'a>(obj: &'a Bound<'_, PyAny>, what: impl Fn() -> String) -> PyResult<&'a str> {
    let s = obj.cast::<PyString>().map_err(|_| {
        let what = what();
        let tn = obj
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "?".into());
        let hint = if tn == "bytes" || tn == "bytearray" {
            " (decode it to str first)"
        } else if tn == "list" || tn == "tuple" {
            " (a text given as words needs is_split_into_words=True)"
        } else {
            ""
        };
        PyTypeError::new_err(format!("{what} must be str, got {tn}{hint}"))
    })?;
    s.to_str().map_err(|_| {
        let what = what();
        PyValueError::new_err(format!(
            "{what} is not valid Unicode text: it contains a lone surrogate code point (cannot be encoded as UTF-8)"
        ))
    })
}

/// The texts of a Python list/tuple/iterable as a tuple (a snapshot: it holds a reference to
/// every string, so the strings, and their UTF-8, stay alive while the GIL is released, even if
/// the caller's list changes). A list is copied by one C call (`PyList_AsTuple`).
fn text_items<'py>(obj: &Bound<'py, PyAny>, what: &str) -> PyResult<Bound<'py, PyTuple>> {
    if obj.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(format!(
            "{what} must be a list of str, got a single str (wrap it in a list)"
        )));
    }
    if let Ok(l) = obj.cast::<PyList>() {
        return Ok(l.to_tuple());
    }
    if let Ok(t) = obj.cast::<PyTuple>() {
        return Ok(t.clone());
    }
    let mut v = Vec::new();
    let it = obj.try_iter().map_err(|_| {
        let tn = obj
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "?".into());
        PyTypeError::new_err(format!("{what} must be a list of str, got {tn}"))
    })?;
    for x in it {
        v.push(x?);
    }
    PyTuple::new(obj.py(), v)
}

/// The UTF-8 of each text, borrowed from the Python strings (no copy: a `str` is immutable and
/// its UTF-8 lives as long as the object, which `items` keeps alive).
///
/// This runs once per text with the GIL held, before the parallel work, so it is written
/// against the C API (a borrowed tuple item, a type check, `PyUnicode_AsUTF8AndSize`: a few
/// nanoseconds a text); anything unusual takes [`as_text_with`] for its error.
fn borrow_texts<'a>(items: &'a Bound<'_, PyTuple>, what: &str) -> PyResult<Vec<&'a str>> {
    let n = items.len();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        // SAFETY: `i < len(items)`; the item is a borrowed reference that `items` keeps alive.
        let item =
            unsafe { pyo3::ffi::PyTuple_GetItem(items.as_ptr(), i as pyo3::ffi::Py_ssize_t) };
        let mut len: pyo3::ffi::Py_ssize_t = 0;
        // SAFETY: `item` is a live object; `PyUnicode_AsUTF8AndSize` is called on a `str` only.
        // (An exact `str` is recognised by its type pointer, without the call `PyUnicode_Check`
        // makes under the stable ABI; subclasses take the call.)
        let is_str = !item.is_null()
            && unsafe {
                std::ptr::eq(pyo3::ffi::Py_TYPE(item), &raw mut pyo3::ffi::PyUnicode_Type)
                    || pyo3::ffi::PyUnicode_Check(item) != 0
            };
        let ptr = if is_str {
            unsafe { pyo3::ffi::PyUnicode_AsUTF8AndSize(item, &mut len) }
        } else {
            std::ptr::null()
        };
        if ptr.is_null() {
            // Not a str, or not encodable (a lone surrogate): report it the usual way.
            let _ = PyErr::take(items.py());
            let obj = items.get_item(i)?;
            as_text_with(&obj, || format!("{what}[{i}]"))?;
            return Err(PyValueError::new_err(format!(
                "{what}[{i}] could not be read as text"
            )));
        }
        // SAFETY: CPython returns `len` bytes of valid UTF-8 owned by the `str` object, which
        // is immutable and lives as long as `items` (lifetime `'a`).
        out.push(unsafe {
            std::str::from_utf8_unchecked(std::slice::from_raw_parts(
                ptr as *const u8,
                len as usize,
            ))
        });
    }
    Ok(out)
}

/// The word lists of a batch of split texts (`is_split_into_words`): each item of `items` a
/// list/tuple of `str`, snapshotted as a tuple (kept alive by the returned vector).
fn word_lists<'py>(items: &Bound<'py, PyTuple>, what: &str) -> PyResult<Vec<Bound<'py, PyTuple>>> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| word_list(&item, &format!("{what}[{i}]")))
        .collect()
}

/// One text given as words: a list/tuple of `str` (not a `str`), snapshotted as a tuple.
fn word_list<'py>(obj: &Bound<'py, PyAny>, what: &str) -> PyResult<Bound<'py, PyTuple>> {
    if obj.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(format!(
            "{what} must be a list of words (str) with is_split_into_words=True, got a str"
        )));
    }
    text_items(obj, what)
}

/// All the words of `lists` in order, borrowed, and where each list starts (`lists.len() + 1`
/// indices).
fn borrow_word_lists<'a>(
    lists: &'a [Bound<'_, PyTuple>],
    what: &str,
) -> PyResult<(Vec<&'a str>, Vec<usize>)> {
    let mut words = Vec::with_capacity(lists.iter().map(|l| l.len()).sum());
    let mut splits = Vec::with_capacity(lists.len() + 1);
    splits.push(0);
    for (i, l) in lists.iter().enumerate() {
        words.extend(borrow_texts(l, &format!("{what}[{i}]"))?);
        splits.push(words.len());
    }
    Ok((words, splits))
}

type Columns<'py> = (
    Bound<'py, PyArray1<u32>>,
    Bound<'py, PyArray1<u8>>,
    Bound<'py, PyArray2<u32>>,
    Bound<'py, PyArray1<i32>>,
);

fn columns(py: Python<'_>, e: EncodingBuf) -> PyResult<Columns<'_>> {
    let n = e.ids.len();
    let offsets = e
        .offsets
        .into_flattened()
        .into_pyarray(py)
        .reshape([n, 2])?;
    Ok((
        e.ids.into_pyarray(py),
        e.type_ids.into_pyarray(py),
        offsets,
        e.word_ids.into_pyarray(py),
    ))
}

fn options(
    add_special_tokens: bool,
    max_length: Option<i64>,
    truncation: &str,
    stride: i64,
) -> PyResult<EncodeOptions> {
    let max_length = match max_length {
        None => None,
        Some(m) if m < 0 => {
            return Err(PyValueError::new_err(format!(
                "max_length must be >= 0, got {m}"
            )))
        }
        Some(m) => Some(
            usize::try_from(m)
                .map_err(|_| PyValueError::new_err(format!("max_length too large: {m}")))?,
        ),
    };
    if stride < 0 {
        return Err(PyValueError::new_err(format!(
            "stride must be >= 0, got {stride}"
        )));
    }
    Ok(EncodeOptions {
        add_special_tokens,
        max_length,
        truncation: Truncation::parse(truncation).map_err(to_py)?,
        stride: stride as usize,
    })
}

/// A BERT WordPiece tokenizer (see `unimask.tokenizer.WordPieceTokenizer`).
#[pyclass(frozen, module = "unimask._native", name = "Tokenizer")]
struct PyTokenizer {
    inner: Arc<Tokenizer>,
}

#[pymethods]
impl PyTokenizer {
    #[new]
    #[pyo3(signature = (tokens, *, clean_text=true, handle_chinese_chars=true, strip_accents=true,
        lowercase=true, unk_token="[UNK]".to_string(), continuing_subword_prefix="##".to_string(),
        max_input_chars_per_word=100, cls_token="[CLS]".to_string(), sep_token="[SEP]".to_string(),
        pad_token="[PAD]".to_string(), mask_token="[MASK]".to_string(), special_tokens=None,
        chinese_dict=None, decoder=Some(("##".to_string(), true))))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        tokens: Vec<String>,
        clean_text: bool,
        handle_chinese_chars: bool,
        strip_accents: bool,
        lowercase: bool,
        unk_token: String,
        continuing_subword_prefix: String,
        max_input_chars_per_word: usize,
        cls_token: String,
        sep_token: String,
        pad_token: String,
        mask_token: String,
        special_tokens: Option<Vec<String>>,
        chinese_dict: Option<std::path::PathBuf>,
        decoder: Option<(String, bool)>,
    ) -> PyResult<Self> {
        let special_tokens = special_tokens.unwrap_or_else(|| {
            vec![
                pad_token.clone(),
                unk_token.clone(),
                cls_token.clone(),
                sep_token.clone(),
                mask_token.clone(),
            ]
        });
        let config = TokenizerConfig {
            normalizer: NormalizerConfig {
                clean_text,
                handle_chinese_chars,
                strip_accents,
                lowercase,
            },
            unk_token,
            continuing_subword_prefix,
            max_input_chars_per_word,
            cls_token,
            sep_token,
            pad_token,
            mask_token,
            special_tokens,
            // (prefix, cleanup) of HF's WordPiece decoder; None: no decoder (tokens joined
            // with spaces).
            decoder: match decoder {
                Some((prefix, cleanup)) => Decoder::WordPiece { prefix, cleanup },
                None => Decoder::Spaces,
            },
        };
        let inner = run_detached(py, move || {
            let seg = chinese_dict
                .map(|p| {
                    shards::check_regular_file(&p, "dictionary")?;
                    Segmenter::from_file(&p)
                })
                .transpose()?
                .map(Arc::new);
            Ok(Tokenizer::new(Vocab::new(tokens)?, config)?.with_segmenter(seg))
        })?;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Read and validate a `vocab.txt` file; returns its tokens in id order.
    #[staticmethod]
    fn read_vocab(py: Python<'_>, path: std::path::PathBuf) -> PyResult<Vec<String>> {
        run_detached(py, move || {
            shards::check_regular_file(&path, "vocabulary")?;
            Ok(Vocab::from_file(&path)?.tokens().to_vec())
        })
    }

    /// Encode one text (and optional pair): (ids u32, type_ids u8, offsets u32 [n, 2], word_ids i32).
    #[pyo3(signature = (text, pair=None, add_special_tokens=true, max_length=None, truncation="longest_first", stride=0))]
    #[allow(clippy::too_many_arguments)]
    fn encode<'py>(
        &self,
        py: Python<'py>,
        text: &Bound<'py, PyAny>,
        pair: Option<&Bound<'py, PyAny>>,
        add_special_tokens: bool,
        max_length: Option<i64>,
        truncation: &str,
        stride: i64,
    ) -> PyResult<Columns<'py>> {
        let opts = options(add_special_tokens, max_length, truncation, stride)?;
        let text = as_text(text, "text")?.to_owned();
        let pair = pair
            .map(|p| as_text(p, "pair"))
            .transpose()?
            .map(str::to_owned);
        let inner = Arc::clone(&self.inner);
        let e = run_detached(py, move || inner.encode(&text, pair.as_deref(), &opts))?;
        columns(py, e)
    }

    /// Encode one text (and optional pair) with its overflowing windows: (ids, type_ids,
    /// offsets, word_ids, row_splits, k, m). Row 0 is the main encoding, rows 1.. HF's
    /// `overflowing` list; k / m are the overflowing windows of the first / second sequence.
    /// With `is_split_into_words`, `text` (and `pair`) are lists of words (see `Seq::Words`).
    #[pyo3(signature = (text, pair=None, add_special_tokens=true, max_length=None, truncation="longest_first", stride=0, is_split_into_words=false))]
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn encode_overflowing<'py>(
        &self,
        py: Python<'py>,
        text: &Bound<'py, PyAny>,
        pair: Option<&Bound<'py, PyAny>>,
        add_special_tokens: bool,
        max_length: Option<i64>,
        truncation: &str,
        stride: i64,
        is_split_into_words: bool,
    ) -> PyResult<(
        Bound<'py, PyArray1<u32>>,
        Bound<'py, PyArray1<u8>>,
        Bound<'py, PyArray2<u32>>,
        Bound<'py, PyArray1<i32>>,
        Bound<'py, PyArray1<i64>>,
        usize,
        usize,
    )> {
        let opts = options(add_special_tokens, max_length, truncation, stride)?;
        let inner = Arc::clone(&self.inner);
        let (batch, k, m) = if is_split_into_words {
            let t_items = word_list(text, "text")?;
            let p_items = pair.map(|p| word_list(p, "pair")).transpose()?;
            let t = borrow_texts(&t_items, "text")?;
            let p = p_items
                .as_ref()
                .map(|v| borrow_texts(v, "pair"))
                .transpose()?;
            run_detached(py, move || {
                inner.encode_overflowing_seq(Seq::Words(&t), p.as_deref().map(Seq::Words), &opts)
            })?
        } else {
            let text = as_text(text, "text")?.to_owned();
            let pair = pair
                .map(|p| as_text(p, "pair"))
                .transpose()?
                .map(str::to_owned);
            run_detached(py, move || {
                inner.encode_overflowing(&text, pair.as_deref(), &opts)
            })?
        };
        let (a, b, c, d) = columns(py, batch.tokens)?;
        Ok((a, b, c, d, batch.row_splits.into_pyarray(py), k, m))
    }

    /// Encode a batch: (ids, type_ids, offsets, word_ids, row_splits i64 [rows + 1],
    /// overflow_to_sample i64 [rows] or None). With `return_overflowing`, each text's row is
    /// followed by its overflowing windows and `overflow_to_sample` maps rows to texts.
    /// With `is_split_into_words`, each text (and pair) is a list of words (see
    /// `BatchInput::Words`).
    #[pyo3(signature = (texts, pairs=None, add_special_tokens=true, max_length=None,
        truncation="longest_first", stride=0, num_threads=None, return_overflowing=false,
        is_split_into_words=false))]
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn encode_batch<'py>(
        &self,
        py: Python<'py>,
        texts: &Bound<'py, PyAny>,
        pairs: Option<&Bound<'py, PyAny>>,
        add_special_tokens: bool,
        max_length: Option<i64>,
        truncation: &str,
        stride: i64,
        num_threads: Option<usize>,
        return_overflowing: bool,
        is_split_into_words: bool,
    ) -> PyResult<(
        Bound<'py, PyArray1<u32>>,
        Bound<'py, PyArray1<u8>>,
        Bound<'py, PyArray2<u32>>,
        Bound<'py, PyArray1<i32>>,
        Bound<'py, PyArray1<i64>>,
        Option<Bound<'py, PyArray1<i64>>>,
    )> {
        let opts = options(add_special_tokens, max_length, truncation, stride)?;
        let items = text_items(texts, "texts")?;
        let pair_items = pairs.map(|p| text_items(p, "pairs")).transpose()?;
        let inner = Arc::clone(&self.inner);
        let (batch, samples) = if is_split_into_words {
            let t_lists = word_lists(&items, "texts")?;
            let p_lists = pair_items
                .as_ref()
                .map(|v| word_lists(v, "pairs"))
                .transpose()?;
            let (tw, ts) = borrow_word_lists(&t_lists, "texts")?;
            let p = p_lists
                .as_ref()
                .map(|l| borrow_word_lists(l, "pairs"))
                .transpose()?;
            run_detached(py, move || {
                let texts = BatchInput::Words {
                    words: &tw,
                    splits: &ts,
                };
                let pairs = p.as_ref().map(|(w, s)| BatchInput::Words {
                    words: w,
                    splits: s,
                });
                let (b, s) = inner.encode_batch_input(
                    texts,
                    pairs,
                    &opts,
                    num_threads,
                    return_overflowing,
                )?;
                Ok((b, return_overflowing.then_some(s)))
            })?
        } else {
            let t = borrow_texts(&items, "texts")?;
            let p = pair_items
                .as_ref()
                .map(|v| borrow_texts(v, "pairs"))
                .transpose()?;
            run_detached(py, move || {
                if return_overflowing {
                    let (b, s) =
                        inner.encode_batch_overflowing(&t, p.as_deref(), &opts, num_threads)?;
                    Ok((b, Some(s)))
                } else {
                    Ok((
                        inner.encode_batch(&t, p.as_deref(), &opts, num_threads)?,
                        None,
                    ))
                }
            })?
        };
        let (a, b, c, d) = columns(py, batch.tokens)?;
        Ok((
            a,
            b,
            c,
            d,
            batch.row_splits.into_pyarray(py),
            samples.map(|s| s.into_pyarray(py)),
        ))
    }

    /// Decode ids to text (HF `Tokenizer::decode` with the configured decoder). An int that
    /// is no token id (negative, too large, beyond 64 bits) is a `ValueError` naming it.
    #[pyo3(signature = (ids, skip_special_tokens=true))]
    fn decode(
        &self,
        py: Python<'_>,
        ids: Vec<Bound<'_, PyAny>>,
        skip_special_tokens: bool,
    ) -> PyResult<String> {
        let n = self.inner.vocab().len();
        let ids: Vec<u32> = ids
            .iter()
            .enumerate()
            .map(|(k, obj)| {
                let out_of_range = |i: &dyn std::fmt::Display| {
                    PyValueError::new_err(format!("token id {i} is out of range (vocab_size {n})"))
                };
                if let Ok(i) = obj.extract::<i64>() {
                    return u32::try_from(i).map_err(|_| out_of_range(&i));
                }
                // An int (numpy's too) that does not fit in 64 bits: name its value.
                match obj.call_method0("__index__") {
                    Ok(i) => Err(out_of_range(&i)),
                    Err(_) => {
                        let tn = obj
                            .get_type()
                            .name()
                            .map(|n| n.to_string())
                            .unwrap_or_else(|_| "?".into());
                        Err(PyTypeError::new_err(format!(
                            "ids[{k}] must be an int token id, got {tn}"
                        )))
                    }
                }
            })
            .collect::<PyResult<_>>()?;
        let inner = Arc::clone(&self.inner);
        run_detached(py, move || inner.decode(&ids, skip_special_tokens))
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.vocab().token_to_id(token)
    }

    fn id_to_token(&self, id: i64) -> Option<String> {
        u32::try_from(id)
            .ok()
            .and_then(|i| self.inner.vocab().id_to_token(i))
            .map(str::to_owned)
    }

    /// Tokens in id order.
    fn tokens(&self) -> Vec<String> {
        self.inner.vocab().tokens().to_vec()
    }

    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.vocab().len()
    }
    #[getter]
    fn unk_id(&self) -> u32 {
        self.inner.unk_id()
    }
    #[getter]
    fn cls_id(&self) -> Option<u32> {
        self.inner.cls_id
    }
    #[getter]
    fn sep_id(&self) -> Option<u32> {
        self.inner.sep_id
    }
    #[getter]
    fn pad_id(&self) -> Option<u32> {
        self.inner.pad_id
    }
    #[getter]
    fn mask_id(&self) -> Option<u32> {
        self.inner.mask_id
    }
    /// Tokenize a corpus file into a shard (see `unimask_core::shards`); returns header fields.
    #[pyo3(signature = (path, out, batch_bytes=8 << 20, num_threads=None))]
    fn encode_file(
        &self,
        py: Python<'_>,
        path: std::path::PathBuf,
        out: std::path::PathBuf,
        batch_bytes: usize,
        num_threads: Option<usize>,
    ) -> PyResult<(u64, u64, u64, u64)> {
        if batch_bytes == 0 {
            return Err(PyValueError::new_err("batch_bytes must be positive"));
        }
        let inner = Arc::clone(&self.inner);
        let s = run_detached(py, move || {
            shards::write_shard(&inner, &path, &out, batch_bytes, num_threads)
        })?;
        let h = s.header;
        Ok((h.n_tokens, h.n_sentences, h.n_documents, s.text_bytes))
    }

    /// Ids of the special (added) tokens, sorted.
    fn special_ids(&self) -> Vec<u32> {
        (0..self.inner.vocab().len() as u32)
            .filter(|&i| self.inner.is_special(i))
            .collect()
    }
}

/// A jieba-compatible Chinese dictionary segmenter (see `unimask.tokenizer.ChineseSegmenter`).
#[pyclass(frozen, module = "unimask._native", name = "Segmenter")]
struct PySegmenter {
    inner: Arc<Segmenter>,
}

#[pymethods]
impl PySegmenter {
    #[new]
    fn new(py: Python<'_>, path: std::path::PathBuf) -> PyResult<Self> {
        let seg = run_detached(py, move || {
            shards::check_regular_file(&path, "dictionary")?;
            Segmenter::from_file(&path)
        })?;
        Ok(Self {
            inner: Arc::new(seg),
        })
    }

    /// Word spans `[start, end)` in characters, covering the text in order.
    fn cut(&self, py: Python<'_>, text: &Bound<'_, PyAny>) -> PyResult<Vec<(u32, u32)>> {
        let text = as_text(text, "text")?.to_owned();
        let inner = Arc::clone(&self.inner);
        run_detached(py, move || Ok(inner.cut(&text)))
    }
}

/// Validate a shard (sizes and offsets; CRC-32 when `verify`) and return its header as a dict.
#[pyfunction]
#[pyo3(signature = (path, verify=true))]
fn shard_header(
    py: Python<'_>,
    path: std::path::PathBuf,
    verify: bool,
) -> PyResult<std::collections::HashMap<&'static str, u64>> {
    let (h, tokens_len) = run_detached(py, move || {
        let s = shards::Shard::open(&path, verify)?;
        Ok((s.header, s.tokens_len()))
    })?;
    Ok([
        ("version", h.version as u64),
        ("token_bytes", h.token_bytes as u64),
        ("n_tokens", h.n_tokens),
        ("n_sentences", h.n_sentences),
        ("n_documents", h.n_documents),
        ("vocab_size", h.vocab_size as u64),
        ("crc32", h.crc32 as u64),
        ("tokens_len", tokens_len),
        ("header_len", shards::HEADER_LEN as u64),
    ]
    .into_iter()
    .collect())
}

/// Train a WordPiece vocabulary (see `unimask_core::train`); returns the tokens in id order.
#[pyfunction]
#[pyo3(signature = (files, vocab_size, min_frequency, special_tokens, *, clean_text=true,
    handle_chinese_chars=true, strip_accents=true, lowercase=true,
    continuing_subword_prefix="##".to_string(), max_input_chars_per_word=100, num_threads=None))]
#[allow(clippy::too_many_arguments)]
fn train_wordpiece(
    py: Python<'_>,
    files: Vec<std::path::PathBuf>,
    vocab_size: usize,
    min_frequency: u64,
    special_tokens: Vec<String>,
    clean_text: bool,
    handle_chinese_chars: bool,
    strip_accents: bool,
    lowercase: bool,
    continuing_subword_prefix: String,
    max_input_chars_per_word: usize,
    num_threads: Option<usize>,
) -> PyResult<Vec<String>> {
    let cfg = train::TrainConfig {
        vocab_size,
        min_frequency,
        special_tokens,
        normalizer: NormalizerConfig {
            clean_text,
            handle_chinese_chars,
            strip_accents,
            lowercase,
        },
        continuing_subword_prefix,
        max_input_chars_per_word,
    };
    run_detached(py, move || train::train(&files, &cfg, num_threads))
}

/// Right-pad a ragged batch (`RaggedBatch.to_padded`): `(input_ids, attention_mask,
/// token_type_ids)`, int64 `[batch, width]` (see `unimask_core::padding`).
#[pyfunction]
#[pyo3(signature = (ids, type_ids, row_splits, pad_to_multiple_of, pad_id))]
#[allow(clippy::type_complexity)]
fn pad_encodings<'py>(
    py: Python<'py>,
    ids: PyReadonlyArray1<'py, u32>,
    type_ids: PyReadonlyArray1<'py, u8>,
    row_splits: PyReadonlyArray1<'py, i64>,
    pad_to_multiple_of: Option<usize>,
    pad_id: i64,
) -> PyResult<(
    Bound<'py, PyArray2<i64>>,
    Bound<'py, PyArray2<i64>>,
    Bound<'py, PyArray2<i64>>,
)> {
    let (i, t, r) = (
        slice(&ids, "ids")?,
        slice(&type_ids, "type_ids")?,
        slice(&row_splits, "row_splits")?,
    );
    let p = run_detached(py, move || {
        padding::pad_encodings(i, t, r, pad_to_multiple_of, pad_id)
    })?;
    let (b, w) = (p.batch, p.width);
    Ok((
        matrix(py, p.input_ids, b, w)?,
        matrix(py, p.attention_mask, b, w)?,
        matrix(py, p.token_type_ids, b, w)?,
    ))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTokenizer>()?;
    m.add_function(wrap_pyfunction!(pad_encodings, m)?)?;
    m.add_function(wrap_pyfunction!(train_wordpiece, m)?)?;
    m.add_function(wrap_pyfunction!(shard_header, m)?)?;
    m.add_class::<PySegmenter>()?;
    Ok(())
}
