"""Pretraining collators: BERT / whole-word / ERNIE entity / SpanBERT masking, NSP pairs,
UNILM mode batches, GPT causal batches, MASS and T5 span corruption.

Every collator is a picklable callable usable as a PyTorch ``collate_fn``. It takes a list of
samples (token-id sequences as numpy arrays or lists, or dicts, see below) and returns a dict
of torch tensors that share memory with numpy buffers filled by Rust (``torch.from_numpy``, no
copy). The work runs in Rust without the GIL (``unimask._native``).

Determinism (dynamic masking, RoBERTa; fairseq keys each sample by ``(seed, epoch, index)``):
every random choice of a sample is a pure function of ``(seed, epoch, sample index)``, so the
output is identical for any ``num_threads`` and any number of DataLoader workers, provided the
collator knows the sample indices. Give them as ``index`` in dict samples (see
:class:`unimask.datasets.IndexedDataset`) or as ``collator(batch, indices=...)``. Without
indices a running counter is used: the ``k``-th sample seen by this collator object since the
last :meth:`set_epoch` gets index ``k``. That is deterministic in one process, but each
DataLoader worker holds its own copy of the collator, so with ``num_workers > 0`` counters
restart per worker: pass indices there.

``num_threads`` (default 1) is the number of Rust threads a collator uses per batch (``None``:
all cores); rows are split over a fork-aware pool only for batches of 16 or more, and the
output is the same for every value. Inside DataLoader workers keep it at 1.

Sample formats accepted by the BERT-style collators:

* a sequence of token ids (numpy integer array, list, tuple, 1-D torch tensor);
* a dict with ``input_ids`` and optionally ``word_ids`` (per token the index of its word,
  ``None``/-1 for special tokens, as ``tokenizers.Encoding.word_ids``), ``entity_spans``
  (``[(start, end), ...]`` token ranges masked as units, ERNIE), ``index``;
* a pair: a dict with ``segment_a``, ``segment_b`` (no special tokens), optionally
  ``next_sentence_label`` (an int: 0 is next, 1 random next, -100 no label), ``word_ids_a``,
  ``word_ids_b``, ``index``; or a tuple ``(a, b)`` / ``(a, b, next_sentence_label)``;
* an ``Encoding`` of ``unimask.tokenizer`` or HF ``tokenizers`` (its ``ids`` and ``word_ids``).

A whole batch may also be a ragged batch object with flat ``ids_flat``, ``word_ids_flat`` and
``row_splits`` columns (``unimask.tokenizer.RaggedBatch``): integer arrays, ``row_splits``
starting at 0, never decreasing and ending at ``len(ids_flat)``. Integer arrays may be int64,
int32, uint32 or uint16; lists of Python ints are read in Rust without numpy conversion.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import _native

__all__ = [
    "MLMCollator",
    "UnifiedLMCollator",
    "CausalLMCollator",
    "MASSCollator",
    "T5SpanCollator",
    "NSPPairBuilder",
    "continuation_ids_from_vocab",
    "word_ids_from_char_spans",
]

_SPECIAL_NAMES = ("pad_id", "cls_id", "sep_id", "mask_id", "unk_id")


# ----------------------------------------------------------------------------------------------
# helpers


def _tok_attr(tokenizer: Any, name: str) -> int | None:
    """``tokenizer.<name>`` or its HF spelling (``cls_id`` -> ``cls_token_id``)."""
    for attr in (name, name.replace("_id", "_token_id")):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return None


def _vocab_size_of(tokenizer: Any) -> int | None:
    v = getattr(tokenizer, "vocab_size", None)
    if callable(v):
        v = v()
    if v is None and hasattr(tokenizer, "get_vocab_size"):
        v = tokenizer.get_vocab_size()
    try:
        n = len(tokenizer)  # HF: includes added tokens
        v = max(int(v or 0), int(n))
    except TypeError:
        pass
    return None if v is None else int(v)


def _check_int(
    name: str, value: Any, lo: int | None = None, allow_none: bool = False, hi: int | None = None
) -> int | None:
    """``value`` as an int in ``[lo, hi)`` (bounds optional); TypeError / ValueError naming it."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if lo is not None and value < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value}")
    if hi is not None and value >= hi:
        raise ValueError(f"{name} must be < {hi}, got {value}")
    return value


def _check_prob(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number in [0, 1], got {type(value).__name__} {value!r}")
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def _as_ids(x: Any, what: str) -> np.ndarray:
    """One sequence as a 1-D int64 numpy array (no copy when it already is one)."""
    if isinstance(x, np.ndarray):
        arr = x
    elif isinstance(x, torch.Tensor):
        arr = x.detach().cpu().numpy()
    elif isinstance(x, (list, tuple, range)):
        if not isinstance(x, range) and any(isinstance(v, (bool, np.bool_)) for v in x):
            raise TypeError(f"{what} must hold integers, got a bool in {list(x)[:20]!r}")
        arr = np.asarray(x) if len(x) else np.zeros(0, dtype=np.int64)
    else:
        raise TypeError(f"{what} must be a sequence of token ids (list, numpy array, tensor), got {type(x).__name__}")
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        if arr.dtype == object and all(v is None for v in arr):
            return np.full(arr.shape[0], -1, dtype=np.int64)
        raise TypeError(f"{what} must hold integers, got dtype {arr.dtype}")
    return _to_int64(arr, what)


def _to_int64(arr: np.ndarray, what: str) -> np.ndarray:
    """An integer array as int64; uint64 values above int64's range are an error naming the
    value (a cast would wrap them to negative ids)."""
    if arr.dtype == np.uint64 and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{what}: token id {int(arr.max())} is outside the int64 range (and so outside any vocabulary)")
    return arr.astype(np.int64, copy=False)


def _as_word_ids(x: Any, what: str) -> np.ndarray:
    if isinstance(x, (list, tuple)) and any(v is None for v in x):
        x = [-1 if v is None else v for v in x]
    return _as_ids(x, what)


def _flatten(seqs: Sequence[Any], what: str) -> tuple[np.ndarray, np.ndarray]:
    """A ragged batch as ``(values, offsets)`` int64 arrays."""
    # fast path: int64 arrays and lists of ints are gathered in Rust (no per-token objects)
    res = _native.gather_ids(seqs if type(seqs) is list else list(seqs))
    if res is not None:
        return res
    arrs = [_as_ids(s, f"{what} of sample {i}") for i, s in enumerate(seqs)]
    offsets = np.zeros(len(arrs) + 1, dtype=np.int64)
    if arrs:
        np.cumsum([a.shape[0] for a in arrs], out=offsets[1:])
        values = np.concatenate(arrs) if offsets[-1] else np.zeros(0, dtype=np.int64)
    else:
        values = np.zeros(0, dtype=np.int64)
    return np.ascontiguousarray(values, dtype=np.int64), offsets


def _flatten_words(seqs: list[Any], what: str) -> tuple[np.ndarray, np.ndarray]:
    """Word ids (``None`` = -1 for special tokens) as ``(values, offsets)``."""
    res = _native.gather_ids(seqs)
    if res is not None:
        return res
    return _flatten([_as_word_ids(w, f"{what} of sample {i}") for i, w in enumerate(seqs)], what)


def _to_torch(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Wrap the numpy buffers Rust filled (already ``[B, L]`` / ``[B]``) as tensors, no copy."""
    return {k: torch.from_numpy(v) for k, v in arrays.items()}


def continuation_ids_from_vocab(vocab: str | Path | Sequence[str] | Mapping[str, int]) -> np.ndarray:
    """Ids of WordPiece continuation pieces (``##...``) of a vocabulary.

    ``vocab`` is a ``vocab.txt`` path (one token per line, id = line number), a list of tokens,
    or a token -> id mapping (``tokenizer.get_vocab()``). Whole-word masking uses it to group
    ``##`` pieces with the piece before them when no ``word_ids`` are given (BERT's whole-word
    masking, google-research/bert ``create_pretraining_data.py``).
    """
    if isinstance(vocab, (str, Path)):
        with open(vocab, encoding="utf-8") as f:
            tokens = [line.rstrip("\n") for line in f]
        items = enumerate(tokens)
    elif isinstance(vocab, Mapping):
        items = ((i, t) for t, i in vocab.items())
    else:
        items = enumerate(vocab)
    return np.array(sorted(i for i, t in items if t.startswith("##")), dtype=np.int64)


def word_ids_from_char_spans(
    token_offsets: Sequence[tuple[int, int]], word_spans: Sequence[tuple[int, int]]
) -> list[int | None]:
    """Word id of every token from character offsets (for whole-word masking of Chinese).

    ``token_offsets`` are the ``(start, end)`` character offsets of the tokens (e.g.
    ``tokenizers.Encoding.offsets``; ``(0, 0)`` for special tokens), ``word_spans`` the
    ``(start, end)`` character spans of the words of a segmenter (e.g. from
    ``jieba.tokenize(text)``). A token belongs to the word containing its first character;
    special tokens and tokens outside every word get ``None``. This is how Chinese BERT
    whole-word masking (Cui et al. 2019) groups the single-character WordPiece tokens.
    """
    starts = np.asarray([s for s, _ in word_spans], dtype=np.int64)
    ends = np.asarray([e for _, e in word_spans], dtype=np.int64)
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], ends[order]
    out: list[int | None] = []
    for s, e in token_offsets:
        if e <= s:
            out.append(None)
            continue
        k = int(np.searchsorted(starts, s, side="right")) - 1
        out.append(int(order[k]) if k >= 0 and s < ends[k] else None)
    return out


class _Seeded:
    """Seed / epoch / running-counter bookkeeping shared by the random collators."""

    def _init_seed(self, seed: int, num_threads: int | None) -> None:
        self.seed = _check_int("seed", seed, 0, hi=2**64)
        self.num_threads = _check_int("num_threads", num_threads, 1, allow_none=True)
        self.epoch = 0
        self._counter = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the masks of ``epoch`` from now on (and restart the running sample counter)."""
        self.epoch = _check_int("epoch", epoch, 0, hi=2**64)
        self._counter = 0

    def _indices(self, n: int, from_items: list[Any], explicit: Any) -> np.ndarray:
        if explicit is not None:
            idx = np.asarray(explicit)
            if idx.shape != (n,) or (n and idx.dtype.kind not in "iu"):
                raise ValueError(f"indices must be {n} integers (one per sample), got {explicit!r}")
            if n and idx.min() < 0:
                raise ValueError(f"indices must be >= 0, got {int(idx.min())}")
            return idx.astype(np.uint64)
        given = [i for i in from_items if i is not None]
        if given and len(given) != n:
            raise ValueError("either every sample of a batch has an 'index' or none has")
        if given:
            idx = np.asarray(given)
            if idx.dtype.kind not in "iu" or (n and idx.min() < 0):
                raise ValueError(f"sample 'index' values must be integers >= 0, got {given[:5]}")
            return idx.astype(np.uint64)
        idx = np.arange(self._counter, self._counter + n, dtype=np.uint64)
        self._counter += n
        return idx


class _Special:
    """Resolution of the vocabulary size and special ids from kwargs or a tokenizer."""

    def _init_specials(self, tokenizer: Any, vocab_size: Any, ids: dict[str, Any], special_ids: Any, required: tuple[str, ...]) -> None:
        if tokenizer is not None:
            if vocab_size is None:
                vocab_size = _vocab_size_of(tokenizer)
            for name in ids:
                if ids[name] is None:
                    ids[name] = _tok_attr(tokenizer, name)
        if vocab_size is None:
            raise ValueError("vocab_size is required (pass vocab_size= or tokenizer=)")
        self.vocab_size = _check_int("vocab_size", vocab_size, 1)
        for name, value in ids.items():
            if value is None:
                if name in required:
                    raise ValueError(f"{name} is required: the tokenizer has no such special token (pass {name}=)")
                setattr(self, name, None)
                continue
            v = _check_int(name, value, 0)
            if v >= self.vocab_size:
                raise ValueError(f"{name} {v} is outside the vocabulary [0, {self.vocab_size})")
            setattr(self, name, v)
        if special_ids is None:
            special_ids = [getattr(self, n) for n in _SPECIAL_NAMES if getattr(self, n, None) is not None]
        special = sorted({_check_int("special_ids entry", s, 0) for s in special_ids})
        for s in special:
            if s >= self.vocab_size:
                raise ValueError(f"special id {s} is outside the vocabulary [0, {self.vocab_size})")
        self.special_ids = special


_NONE_COLS = ("b", "word_ids", "word_ids_b", "entities", "nsp", "index")


def _ragged_of(batch: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
    """``(ids, row_splits, word_ids or None)`` of a ragged batch object (``unimask.tokenizer``'s
    ``RaggedBatch``: flat columns ``ids_flat`` / ``word_ids_flat`` and ``row_splits``)."""
    if not (hasattr(batch, "ids_flat") and hasattr(batch, "row_splits")):
        return None

    def column(name: str) -> np.ndarray:
        arr = np.asarray(getattr(batch, name))
        if arr.dtype.kind not in "iu":
            raise TypeError(f"a ragged batch's {name} must be an integer array, got dtype {arr.dtype}")
        if arr.ndim != 1:
            raise ValueError(f"a ragged batch's {name} must be 1-D, got shape {arr.shape}")
        return np.ascontiguousarray(_to_int64(arr, f"a ragged batch's {name}"))

    ids, splits = column("ids_flat"), column("row_splits")
    if splits.size < 2:
        raise ValueError(f"a ragged batch's row_splits needs >= 2 entries (batch size + 1), got {splits.tolist()}")
    if splits[0] != 0 or splits[-1] != ids.size or (np.diff(splits) < 0).any():
        raise ValueError(
            f"a ragged batch's row_splits must start at 0, never decrease and end at len(ids_flat) = {ids.size}, "
            f"got {splits.tolist()[:20]}{' ...' if splits.size > 20 else ''}"
        )
    words = None
    if getattr(batch, "word_ids_flat", None) is not None:
        words = column("word_ids_flat")
        if words.size != ids.size:
            raise ValueError(f"a ragged batch's word_ids_flat has {words.size} entries for {ids.size} ids")
    return ids, splits, words


def _split_items(batch: Sequence[Any]) -> dict[str, list[Any]]:
    """Columns of a batch of samples (see the module docstring for the formats)."""
    if isinstance(batch, (str, bytes)) or not isinstance(batch, Sequence):
        raise TypeError(f"a batch must be a list of samples, got {type(batch).__name__}")
    if batch and all(type(x) is dict and "input_ids" in x for x in batch):
        # fast path: records of single sequences
        return {
            "a": [x["input_ids"] for x in batch],
            "b": [None] * len(batch),
            "word_ids": [x.get("word_ids") for x in batch],
            "word_ids_b": [None] * len(batch),
            "entities": [x.get("entity_spans") for x in batch],
            "nsp": [x.get("next_sentence_label") for x in batch],
            "index": [x.get("index") for x in batch],
        }
    if batch and all(type(x) is np.ndarray for x in batch):
        none = [None] * len(batch)
        return {"a": list(batch), **{k: none for k in _NONE_COLS}}
    cols: dict[str, list[Any]] = {"a": [], "b": [], "word_ids": [], "word_ids_b": [], "entities": [], "nsp": [], "index": []}
    for i, item in enumerate(batch):
        a = b = w = wb = ent = nsp = idx = None
        if isinstance(item, Mapping):
            if "segment_a" in item:
                a, b = item["segment_a"], item.get("segment_b")
                w, wb = item.get("word_ids_a"), item.get("word_ids_b")
            elif "input_ids" in item:
                a = item["input_ids"]
                w = item.get("word_ids")
            else:
                raise ValueError(f"sample {i} is a dict without 'input_ids' or 'segment_a' (keys: {sorted(item)})")
            ent = item.get("entity_spans")
            nsp = item.get("next_sentence_label")
            idx = item.get("index")
        elif hasattr(item, "ids") and not isinstance(item, (list, tuple, np.ndarray)):
            # an Encoding (unimask.tokenizer or HF tokenizers): ids and word ids
            a = item.ids
            w = getattr(item, "word_ids", None)
        elif isinstance(item, tuple) and len(item) in (2, 3) and not isinstance(item[0], (int, np.integer)):
            a, b = item[0], item[1]
            if len(item) == 3:
                nsp = item[2]
        else:
            a = item
        cols["a"].append(a)
        cols["b"].append(b)
        cols["word_ids"].append(w)
        cols["word_ids_b"].append(wb)
        cols["entities"].append(ent)
        cols["nsp"].append(nsp)
        cols["index"].append(idx)
    return cols


_NSP_LABELS = (0, 1, -100)


def _nsp_label(i: int, value: Any) -> int:
    """The ``next_sentence_label`` of sample ``i``: 0 (is next), 1 (random next) or -100 (no label)."""
    v = value.item() if isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 0 else value
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"next_sentence_label of sample {i} must be an int (0, 1 or -100), got {type(value).__name__} {value!r}")
    if int(v) not in _NSP_LABELS:
        raise ValueError(f"next_sentence_label of sample {i} must be 0, 1 or -100 (no label), got {int(v)}")
    return int(v)


def _all_or_none(values: list[Any], name: str) -> bool:
    have = [v is not None for v in values]
    if any(have) and not all(have):
        raise ValueError(f"either every sample of a batch has {name} or none has")
    return bool(have) and all(have)


# ----------------------------------------------------------------------------------------------
# BERT-family masking (MLM, whole word, entities, SpanBERT) and UNILM


class _MaskingCollator(_Seeded, _Special):
    _unilm = False

    def __init__(
        self,
        *,
        tokenizer: Any = None,
        vocab_size: int | None = None,
        mask_id: int | None = None,
        cls_id: int | None = None,
        sep_id: int | None = None,
        pad_id: int | None = None,
        unk_id: int | None = None,
        special_ids: Sequence[int] | None = None,
        mlm_probability: float = 0.15,
        max_predictions: int | None = None,
        exact_count: bool = True,
        mask_ratio: float = 0.8,
        random_ratio: float = 0.1,
        whole_word: bool = False,
        vocab: Any = None,
        span: str | None = None,
        ngram_probability: float = 0.2,
        max_ngram: int = 3,
        span_p: float = 0.2,
        max_span_length: int = 10,
        per_span_replacement: bool | None = None,
        add_special_tokens: bool = False,
        max_length: int | None = None,
        truncation: bool = False,
        pad_to_multiple_of: int | None = None,
        mode_weights: Any = None,
        type_ids: Sequence[tuple[int, int]] = ((0, 1), (2, 2), (3, 3), (4, 5)),
        mask_target_eos: bool = False,
        seed: int = 0,
        num_threads: int | None = 1,
    ) -> None:
        self._init_seed(seed, num_threads)
        ids = {"pad_id": pad_id, "cls_id": cls_id, "sep_id": sep_id, "mask_id": mask_id, "unk_id": unk_id}
        self._init_specials(tokenizer, vocab_size, ids, special_ids, ("pad_id", "cls_id", "sep_id", "mask_id"))
        if span not in (None, "ngram", "geometric"):
            raise ValueError(f"span must be None, 'ngram' or 'geometric', got {span!r}")
        mask_ratio = _check_prob("mask_ratio", mask_ratio)
        random_ratio = _check_prob("random_ratio", random_ratio)
        if mask_ratio + random_ratio > 1.0 + 1e-12:
            raise ValueError(f"mask_ratio + random_ratio must be <= 1, got {mask_ratio} + {random_ratio} = {mask_ratio + random_ratio}")
        if isinstance(mode_weights, Mapping):
            from .masks import MODE_NAMES  # noqa: PLC0415

            unknown = set(mode_weights) - set(MODE_NAMES)
            if unknown:
                raise ValueError(f"mode_weights has unknown modes {sorted(unknown)}; modes are {MODE_NAMES}")
            mode_weights = [float(mode_weights.get(m, 0.0)) for m in MODE_NAMES]
        elif mode_weights is None:
            mode_weights = [1 / 3, 1 / 6, 1 / 6, 1 / 3]
        mode_weights = [float(w) for w in mode_weights]
        if len(mode_weights) != 4:
            raise ValueError(f"mode_weights must have 4 entries (bidirectional, left_to_right, right_to_left, seq2seq), got {mode_weights}")
        type_ids = [tuple(int(x) for x in t) for t in type_ids]
        if len(type_ids) != 4 or any(len(t) != 2 for t in type_ids):
            raise ValueError(f"type_ids must be 4 (segment A, segment B) pairs, one per mode, got {type_ids}")
        self.params = dict(
            vocab_size=self.vocab_size,
            mask_id=self.mask_id,
            cls_id=self.cls_id,
            sep_id=self.sep_id,
            pad_id=self.pad_id,
            special_ids=self.special_ids,
            mlm_probability=_check_prob("mlm_probability", mlm_probability),
            max_predictions=_check_int("max_predictions", max_predictions, 1, allow_none=True),
            exact_count=bool(exact_count),
            mask_ratio=mask_ratio,
            random_ratio=random_ratio,
            whole_word=bool(whole_word) or span == "geometric",
            scheme={None: "token", "ngram": "ngram", "geometric": "geometric"}[span],
            ngram_probability=_check_prob("ngram_probability", ngram_probability),
            max_ngram=_check_int("max_ngram", max_ngram, 1),
            span_p=float(span_p),
            max_span_length=_check_int("max_span_length", max_span_length, 1),
            per_span_replacement=(span == "geometric") if per_span_replacement is None else bool(per_span_replacement),
            add_special_tokens=bool(add_special_tokens),
            max_length=_check_int("max_length", max_length, 1, allow_none=True),
            truncation=bool(truncation),
            pad_to_multiple_of=_check_int("pad_to_multiple_of", pad_to_multiple_of, 1, allow_none=True),
            mode_weights=mode_weights,
            type_ids=type_ids,
            mask_target_eos=bool(mask_target_eos),
        )
        self.continuation_ids = None if vocab is None else continuation_ids_from_vocab(vocab)
        if self.continuation_ids is not None and self.continuation_ids.size:
            self._is_cont = np.zeros(self.vocab_size, dtype=bool)
            self._is_cont[self.continuation_ids[self.continuation_ids < self.vocab_size]] = True
        else:
            self._is_cont = None
        # explicit whole-word masking must see words (SpanBERT spans fall back to tokens)
        self._needs_words = bool(whole_word) and self._is_cont is None
        self._spec = _native.MaskingSpec(**self.params)

    # pickling: the native spec is rebuilt from the parameters
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_spec"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._spec = _native.MaskingSpec(**self.params)

    def __repr__(self) -> str:
        p = self.params
        return (
            f"{type(self).__name__}(mlm_probability={p['mlm_probability']}, scheme={p['scheme']!r}, "
            f"whole_word={p['whole_word']}, exact_count={p['exact_count']}, seed={self.seed}, epoch={self.epoch})"
        )

    def _words_from_vocab(self, values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Word ids from ``##`` continuation pieces: a new word starts at every non-``##`` token."""
        starts = ~self._is_cont[np.clip(values, 0, self.vocab_size - 1)]
        words = np.cumsum(starts) - 1
        return words.astype(np.int64)

    def _collate(self, batch: Sequence[Any], indices: Any) -> dict[str, torch.Tensor]:
        ragged = _ragged_of(batch)
        if ragged is not None:
            av, ao, words = ragged
            kw: dict[str, Any] = {}
            if self.params["whole_word"] and words is not None:
                kw["wa_values"], kw["wa_offsets"] = words, ao
            elif self.params["whole_word"] and self._is_cont is not None:
                kw["wa_values"], kw["wa_offsets"] = self._words_from_vocab(av, ao), ao
            elif self._needs_words:
                raise ValueError("whole_word=True needs word ids: this ragged batch has no word_ids_flat and no vocab= was given")
            idx = self._indices(len(ao) - 1, [], indices)
            _, _, flat = self._spec.collate(av, ao, idx, self.seed, self.epoch, self.num_threads, unilm=self._unilm, **kw)
            return _to_torch(flat)
        if type(batch) is list and batch and type(batch[0]) is np.ndarray and not self._needs_words:
            # fast path: a list of int64 arrays (shards, numpy datasets) is gathered in Rust
            counter = self._counter
            idx = self._indices(len(batch), [], indices)
            res = self._spec.collate_arrays(batch, idx, self.seed, self.epoch, self.num_threads, self._unilm)
            if res is not None:
                return _to_torch(res[2])
            self._counter = counter
        cols = _split_items(batch)
        n = len(cols["a"])
        if n == 0:
            raise ValueError("cannot collate an empty batch")
        idx = self._indices(n, cols["index"], indices)
        kw: dict[str, Any] = {}
        pair = any(b is not None for b in cols["b"])
        if pair:
            if not self._unilm and not all(b is not None for b in cols["b"]):
                raise ValueError("a batch mixes pairs and single sequences; MLMCollator needs one kind per batch")
            kw["b_values"], kw["b_offsets"] = _flatten([() if b is None else b for b in cols["b"]], "segment B")
        av, ao = _flatten(cols["a"], "input_ids")
        if _all_or_none(cols["word_ids"], "'word_ids'"):
            kw["wa_values"], kw["wa_offsets"] = _flatten_words(cols["word_ids"], "word_ids")
            if pair and _all_or_none(cols["word_ids_b"], "'word_ids_b'"):
                kw["wb_values"], kw["wb_offsets"] = _flatten_words(cols["word_ids_b"], "word_ids_b")
        elif self.params["whole_word"] and self._is_cont is not None:
            kw["wa_values"], kw["wa_offsets"] = self._words_from_vocab(av, ao), ao
            if pair:
                kw["wb_values"], kw["wb_offsets"] = self._words_from_vocab(kw["b_values"], kw["b_offsets"]), kw["b_offsets"]
        elif self._needs_words:
            raise ValueError(
                "whole_word=True needs word ids: give samples a 'word_ids' entry or pass vocab= "
                "(a WordPiece vocabulary, whose ## pieces continue words) to the collator"
            )
        if any(e is not None for e in cols["entities"]):
            flat = []
            for i, e in enumerate(cols["entities"]):
                spans = np.asarray([] if e is None else e)
                if spans.size and (spans.dtype.kind not in "iu"):
                    raise TypeError(f"entity_spans of sample {i} must be integer (start, end) pairs, got {e!r}")
                spans = spans.astype(np.int64).reshape(-1)
                if spans.size % 2:
                    raise ValueError(f"entity_spans of sample {i} must be (start, end) pairs, got {e!r}")
                flat.append(spans)
            kw["ent_values"], kw["ent_offsets"] = _flatten(flat, "entity_spans")
        if _all_or_none(cols["nsp"], "'next_sentence_label'"):
            kw["nsp_labels"] = np.array([_nsp_label(i, v) for i, v in enumerate(cols["nsp"])], dtype=np.int64)
        _, _, flat = self._spec.collate(av, ao, idx, self.seed, self.epoch, self.num_threads, unilm=self._unilm, **kw)
        return _to_torch(flat)

    def _sampled_span_lengths(self, n_tokens: int, samples: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Test hook: span lengths drawn by the span sampler and kept, on plain rows of ``n_tokens``."""
        return self._spec._sampled_span_lengths(n_tokens, samples, seed)


class MLMCollator(_MaskingCollator):
    """BERT masked-LM collator with dynamic masking (a fresh mask per epoch).

    Recipe (google-research/bert ``create_pretraining_data.py``): candidates are all tokens
    except special tokens (``special_ids``, default: pad/cls/sep/mask/unk) and padding; with
    ``exact_count=True`` (default) the number to predict is
    ``min(max_predictions, max(1, round(len(tokens) * mlm_probability)))`` (``len`` counts
    ``[CLS]``/``[SEP]``, Python's round); with ``exact_count=False`` every token (or word) is
    chosen independently with probability ``mlm_probability`` (HF
    ``DataCollatorForLanguageModeling``; ``max_predictions`` then does not apply). Of the chosen tokens ``mask_ratio`` (0.8) become
    ``[MASK]``, ``random_ratio`` (0.1) a uniformly random token that is never a special id,
    the rest stay. ``mlm_probability=0`` masks nothing.

    Variants:

    * ``whole_word=True``: tokens of one word are chosen together (BERT whole-word masking).
      Words come from ``word_ids`` in the samples, else from ``vocab=`` (``##`` continuation
      pieces of a WordPiece vocabulary). Chinese whole-word masking needs a segmenter's word ids.
    * ``entity_spans`` in samples: caller-given token ranges masked as units (ERNIE).
    * ``span="geometric"`` (SpanBERT, Joshi et al. 2020): span lengths in whole words drawn from
      ``Geometric(span_p=0.2)`` truncated to ``1..max_span_length`` (10) as in SpanBERT's
      code (mean 3.8), anchored at a random token, one 80/10/10 decision per span. Exactly
      ``ceil(len * p)`` tokens are masked: as the reference
      (facebookresearch/SpanBERT ``pretraining/fairseq/data/masking.py``,
      ``PairWithSpanMaskingScheme.mask``) spans are drawn until the budget is met and the
      span that reaches it is cut there, in the middle of a word if need be. Words come from
      ``word_ids`` / ``vocab=`` as above; without them every token is a word.
    * ``span="ngram"``: UNILM n-grams (see :class:`UnifiedLMCollator`).
    * Pairs (``segment_a``/``segment_b``, e.g. from :class:`NSPPairBuilder`): laid out as
      ``[CLS] A [SEP] B [SEP]`` with token types 0/1, trimmed to ``max_length`` with BERT's
      ``truncate_seq_pair``; ``next_sentence_label`` is returned when the samples carry it.

    Single sequences are taken as already containing their special tokens unless
    ``add_special_tokens=True``. ``max_length`` longer rows raise ``ValueError`` unless
    ``truncation=True``. Returns ``input_ids``, ``attention_mask``, ``token_type_ids``,
    ``labels`` (-100 where not predicted) as int64 ``[B, L]``, ``seq_len`` int32 ``[B]``, and
    ``next_sentence_label`` int64 ``[B]`` for labelled pairs.
    """

    def __call__(self, batch: Sequence[Any], indices: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
        return self._collate(batch, indices)


class UnifiedLMCollator(_MaskingCollator):
    """UNILM batches: each sample gets its own attention mode (Dong et al. 2019, arXiv 1905.03197).

    Samples are ``(segment_a, segment_b)`` pairs of token ids without special tokens (a
    single segment is allowed; it never becomes seq2seq: it draws among the other modes with
    renormalised weights). Per sample the mode is drawn with ``mode_weights`` (code order
    bidirectional, left_to_right, right_to_left, seq2seq; default 1/3, 1/6, 1/6, 1/3 as in the
    paper; a ``{name: weight}`` dict also works), the row is ``[CLS] A [SEP] B [SEP]``, and
    ``token_type_ids`` identify the mode as in UNILM's code: ``type_ids`` (A, B) per mode,
    default bidirectional (0, 1), left_to_right (2, 2), right_to_left (3, 3), seq2seq (4, 5)
    — so the model needs ``type_vocab_size = 6``.

    Masking (UNILM section 2.4 and its released ``seq2seq_loader.py``): budget
    ``min(max_predictions, max(1, round(n * 0.15)))`` with ``n`` the row length (seq2seq: the
    target length); from shuffled positions, a unigram, or with probability
    ``ngram_probability`` (0.2) an n-gram of uniform length ``2..max_ngram`` (3); 80/10/10
    per token. Seq2seq samples mask target tokens only (``mask_target_eos=True`` also allows
    the final ``[SEP]``, as UNILM fine-tuning does). Rows longer than ``max_length`` are
    trimmed from the back of the longer segment (with ``truncation=True``).

    Returns the :class:`MLMCollator` tensors plus ``attn_mode`` int8 ``[B]`` (0..3),
    ``src_len`` int32 ``[B]`` (length of ``[CLS] A [SEP]``), ``next_sentence_label`` int64
    ``[B]``: the sample's ``next_sentence_label`` for bidirectional samples (NSP is only used
    with that objective), else -100. ``unimask.masks.dense_mask(attn_mode, src_len, seq_len, L)``
    gives the L x L masks.
    """

    _unilm = True

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("span", "ngram")
        super().__init__(**kwargs)

    def __call__(self, batch: Sequence[Any], indices: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
        return self._collate(batch, indices)


# ----------------------------------------------------------------------------------------------
# NSP pairs


class NSPPairBuilder(_Seeded):
    """Sentence pairs for next-sentence prediction from documents (BERT's recipe).

    google-research/bert ``create_instances_from_document``: target length
    ``max_seq_length - 3`` (with probability ``short_seq_prob`` = 0.1 a random
    ``randint(2, max)``), sentences accumulated up to it, split at ``randint(1, len - 1)``;
    with probability ``random_next_prob`` (0.5), or when the chunk has one sentence, B is taken
    from a random other document from a random sentence on and the unused sentences are put
    back; ``truncate_seq_pair`` trims the longer side from a random end. ``label`` 1 = random
    next. With ``sentence_order=True`` (ALBERT's SOP) B is the true continuation and the
    segments are swapped with probability 0.5 (label 1 = swapped).

    :meth:`build` returns one dict per pair: ``segment_a``, ``segment_b`` (int64 arrays, no
    special tokens), ``next_sentence_label``, ``document`` and ``index`` (its position), ready
    for :class:`MLMCollator` or :class:`UnifiedLMCollator`. Pairs are a pure function of
    ``(seed, epoch)`` and the documents.
    """

    def __init__(
        self,
        max_seq_length: int = 128,
        short_seq_prob: float = 0.1,
        random_next_prob: float = 0.5,
        sentence_order: bool = False,
        seed: int = 0,
        num_threads: int | None = 1,
    ) -> None:
        self._init_seed(seed, num_threads)
        self.max_seq_length = _check_int("max_seq_length", max_seq_length, 5)
        self.short_seq_prob = _check_prob("short_seq_prob", short_seq_prob)
        self.random_next_prob = _check_prob("random_next_prob", random_next_prob)
        self.sentence_order = bool(sentence_order)

    def build(self, documents: Sequence[Sequence[Any]], epoch: int | None = None) -> list[dict[str, Any]]:
        """Pairs of ``documents`` (each a list of sentences, each a sequence of token ids)."""
        epoch = self.epoch if epoch is None else _check_int("epoch", epoch, 0, hi=2**64)
        sents: list[Any] = []
        doc_offsets = [0]
        for d, doc in enumerate(documents):
            if isinstance(doc, (np.ndarray, torch.Tensor)) or (len(doc) and isinstance(doc[0], (int, np.integer))):
                raise TypeError(f"document {d} must be a list of sentences (token-id sequences), got a flat sequence")
            sents.extend(doc)
            doc_offsets.append(len(sents))
        sv, so = _flatten(sents, "sentence")
        av, ao, bv, bo, labels, docs = _native.nsp_pairs(
            sv,
            so,
            np.asarray(doc_offsets, dtype=np.int64),
            max_seq_length=self.max_seq_length,
            short_seq_prob=self.short_seq_prob,
            random_next_prob=self.random_next_prob,
            sop=self.sentence_order,
            seed=self.seed,
            epoch=epoch,
            threads=self.num_threads,
        )
        return [
            {
                "segment_a": av[ao[i] : ao[i + 1]],
                "segment_b": bv[bo[i] : bo[i + 1]],
                "next_sentence_label": int(labels[i]),
                "document": int(docs[i]),
                "index": i,
            }
            for i in range(len(labels))
        ]


# ----------------------------------------------------------------------------------------------
# GPT, MASS, T5


def _plain_batch(batch: Any) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    """``(values, offsets, sample indices or [])`` of a batch of single sequences."""
    ragged = _ragged_of(batch)
    if ragged is not None:
        return ragged[0], ragged[1], []
    cols = _split_items(batch)
    if any(b is not None for b in cols["b"]):
        raise ValueError("this collator takes single sequences, not (segment_a, segment_b) pairs")
    if not cols["a"]:
        raise ValueError("cannot collate an empty batch")
    v, o = _flatten(cols["a"], "input_ids")
    return v, o, cols["index"]


class CausalLMCollator(_Special):
    """GPT causal-LM batches with labels already shifted.

    ``labels[t] = input_ids[t + 1]`` and -100 at the last valid position and on padding, so
    ``loss = cross_entropy(logits[:, t], labels[:, t])`` needs no shift (GPT, Radford et al.
    2018). Each document is wrapped in ``bos_id``/``eos_id`` when given. With ``pack=True``
    the batch's documents are concatenated and cut into rows of exactly ``max_length`` tokens
    (GPT-2 / HF ``run_clm`` ``group_texts``; the last row may be shorter and is padded; the
    number of rows then differs from the number of documents, and attention crosses document
    boundaries inside a row). Returns ``input_ids``, ``attention_mask``, ``labels`` int64
    ``[B, L]``, ``attn_mode`` int8 (all 1, left_to_right), ``src_len`` int32 (0),
    ``seq_len`` int32. No randomness.
    """

    def __init__(
        self,
        *,
        tokenizer: Any = None,
        vocab_size: int | None = None,
        pad_id: int | None = None,
        bos_id: int | None = None,
        eos_id: int | None = None,
        max_length: int | None = None,
        truncation: bool = False,
        pack: bool = False,
        pad_to_multiple_of: int | None = None,
    ) -> None:
        ids = {"pad_id": pad_id, "bos_id": bos_id, "eos_id": eos_id}
        self._init_specials(tokenizer, vocab_size, ids, [], ("pad_id",))
        self.max_length = _check_int("max_length", max_length, 1, allow_none=True)
        if pack and self.max_length is None:
            raise ValueError("pack=True needs max_length (the row length), got None")
        self.truncation = bool(truncation)
        self.pack = bool(pack)
        self.pad_to_multiple_of = _check_int("pad_to_multiple_of", pad_to_multiple_of, 1, allow_none=True)

    def __call__(self, batch: Sequence[Any], indices: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
        v, o, _ = _plain_batch(batch)
        _, _, flat = _native.causal_collate(
            v,
            o,
            vocab_size=self.vocab_size,
            bos_id=self.bos_id,
            eos_id=self.eos_id,
            pad_id=self.pad_id,
            max_length=self.max_length,
            truncation=self.truncation,
            pad_to_multiple_of=self.pad_to_multiple_of,
            pack=self.pack,
        )
        return _to_torch(flat)


class MASSCollator(_Seeded, _Special):
    """MASS span corruption for encoder-decoder pretraining (Song et al. 2019, section 2.2).

    For each sentence (token ids without special tokens) one contiguous span of
    ``k = max(1, round(span_ratio * n))`` tokens (``span_ratio`` 0.5) is chosen; it starts at
    the first token with probability ``start_prob`` (0.2), ends at the last token with
    ``end_prob`` (0.2), and otherwise starts uniformly at an interior position (as MASS's
    fairseq code; with no interior position, uniformly anywhere). The encoder input has the
    span corrupted 80/10/10 per token; the decoder input is the span shifted right (first
    token ``decoder_start_id``, default ``[MASK]`` as in MASS), ``decoder_positions`` are the
    original positions of the span tokens, ``decoder_labels`` the span (-100 padding).

    A sentence longer than ``max_length`` raises ``ValueError`` (naming it) unless
    ``truncation=True``, which keeps its first ``max_length`` tokens.

    Returns ``input_ids``, ``attention_mask`` int64 ``[B, L]``, ``seq_len`` int32 ``[B]``,
    ``decoder_input_ids``, ``decoder_positions``, ``decoder_labels`` int64 ``[B, Ld]``,
    ``decoder_len`` int32 ``[B]``.
    """

    def __init__(
        self,
        *,
        tokenizer: Any = None,
        vocab_size: int | None = None,
        mask_id: int | None = None,
        pad_id: int | None = None,
        cls_id: int | None = None,
        sep_id: int | None = None,
        unk_id: int | None = None,
        special_ids: Sequence[int] | None = None,
        span_ratio: float = 0.5,
        start_prob: float = 0.2,
        end_prob: float = 0.2,
        mask_ratio: float = 0.8,
        random_ratio: float = 0.1,
        decoder_start_id: int | None = None,
        max_length: int | None = None,
        truncation: bool = False,
        pad_to_multiple_of: int | None = None,
        seed: int = 0,
        num_threads: int | None = 1,
    ) -> None:
        self._init_seed(seed, num_threads)
        ids = {"pad_id": pad_id, "cls_id": cls_id, "sep_id": sep_id, "mask_id": mask_id, "unk_id": unk_id}
        self._init_specials(tokenizer, vocab_size, ids, special_ids, ("pad_id", "mask_id"))
        self.span_ratio = _check_prob("span_ratio", span_ratio)
        if self.span_ratio == 0:
            raise ValueError("span_ratio must be > 0, got 0")
        self.start_prob = _check_prob("start_prob", start_prob)
        self.end_prob = _check_prob("end_prob", end_prob)
        if self.start_prob + self.end_prob > 1 + 1e-12:
            raise ValueError(f"start_prob + end_prob must be <= 1, got {self.start_prob} + {self.end_prob}")
        self.mask_ratio = _check_prob("mask_ratio", mask_ratio)
        self.random_ratio = _check_prob("random_ratio", random_ratio)
        if self.mask_ratio + self.random_ratio > 1 + 1e-12:
            raise ValueError(f"mask_ratio + random_ratio must be <= 1, got {self.mask_ratio} + {self.random_ratio}")
        dsi = self.mask_id if decoder_start_id is None else _check_int("decoder_start_id", decoder_start_id, 0)
        if dsi >= self.vocab_size:
            raise ValueError(f"decoder_start_id {dsi} is outside the vocabulary [0, {self.vocab_size})")
        self.decoder_start_id = dsi
        self.max_length = _check_int("max_length", max_length, 1, allow_none=True)
        self.truncation = bool(truncation)
        self.pad_to_multiple_of = _check_int("pad_to_multiple_of", pad_to_multiple_of, 1, allow_none=True)

    def __call__(self, batch: Sequence[Any], indices: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
        v, o, given = _plain_batch(batch)
        idx = self._indices(len(o) - 1, given, indices)
        b, length, dec_len, flat = _native.mass_collate(
            v,
            o,
            idx,
            vocab_size=self.vocab_size,
            special_ids=self.special_ids,
            mask_id=self.mask_id,
            pad_id=self.pad_id,
            decoder_start_id=self.decoder_start_id,
            span_ratio=self.span_ratio,
            start_prob=self.start_prob,
            end_prob=self.end_prob,
            mask_ratio=self.mask_ratio,
            random_ratio=self.random_ratio,
            max_length=self.max_length,
            truncation=self.truncation,
            pad_to_multiple_of=self.pad_to_multiple_of,
            seed=self.seed,
            epoch=self.epoch,
            threads=self.num_threads,
        )
        out = {}
        for k, arr in flat.items():
            t = torch.from_numpy(arr)
            if k in ("seq_len", "decoder_len"):
                out[k] = t
            else:
                out[k] = t.view(b, dec_len if k.startswith("decoder_") else length)
        return out


class T5SpanCollator(_Seeded, _Special):
    """T5 span corruption (Raffel et al. 2020, ``random_spans_noise_mask`` / ``span_corruption``).

    For a sequence of ``n`` tokens (no EOS; it is added here): ``round(n * noise_density)``
    noise tokens (0.15, at least 1 and at most ``n - 1``) in
    ``round(noise / mean_noise_span_length)`` spans (3.0), span lengths from a uniformly random
    segmentation, noise and non-noise spans interleaved starting with non-noise (as T5's
    code). Inputs: the non-noise tokens with one sentinel per noise span, then ``eos_id``;
    labels: each sentinel followed by its span, then ``eos_id`` (-100 padding). Sentinel ids
    count down from ``first_sentinel_id`` (default ``vocab_size - 1``, T5's ``<extra_id_0>``):
    a row with ``k`` noise spans uses ``first_sentinel_id`` down to ``first_sentinel_id - k + 1``.
    They must not reach below 0 or onto ``eos_id``, ``pad_id`` or ``decoder_start_id``:
    ``first_sentinel_id`` itself is checked here, the rest per batch before anything is
    written (``ValueError``). Every id must lie in ``[0, vocab_size)``.

    A sequence longer than ``max_length - 1`` tokens (the EOS takes one place) raises
    ``ValueError`` (naming it) unless ``truncation=True``, which keeps its first
    ``max_length - 1`` tokens.

    Returns ``input_ids``, ``attention_mask`` int64 ``[B, L]``, ``labels`` and
    ``decoder_input_ids`` (labels shifted right, starting with ``decoder_start_id``, default
    the pad id as T5) int64 ``[B, Lt]``, ``seq_len`` and ``labels_len`` int32 ``[B]``.
    """

    def __init__(
        self,
        *,
        tokenizer: Any = None,
        vocab_size: int | None = None,
        eos_id: int | None = None,
        pad_id: int | None = None,
        noise_density: float = 0.15,
        mean_noise_span_length: float = 3.0,
        first_sentinel_id: int | None = None,
        decoder_start_id: int | None = None,
        max_length: int | None = None,
        truncation: bool = False,
        pad_to_multiple_of: int | None = None,
        seed: int = 0,
        num_threads: int | None = 1,
    ) -> None:
        self._init_seed(seed, num_threads)
        ids = {"pad_id": pad_id, "eos_id": eos_id}
        self._init_specials(tokenizer, vocab_size, ids, [], ("pad_id", "eos_id"))
        self.noise_density = _check_prob("noise_density", noise_density)
        if not 0 < self.noise_density < 1:
            raise ValueError(f"noise_density must be in (0, 1), got {self.noise_density}")
        self.mean_noise_span_length = float(mean_noise_span_length)
        if not self.mean_noise_span_length >= 1:
            raise ValueError(f"mean_noise_span_length must be >= 1, got {mean_noise_span_length}")
        fs = self.vocab_size - 1 if first_sentinel_id is None else _check_int("first_sentinel_id", first_sentinel_id, 0)
        if fs >= self.vocab_size:
            raise ValueError(f"first_sentinel_id {fs} is outside the vocabulary [0, {self.vocab_size})")
        self.first_sentinel_id = fs
        dsi = self.pad_id if decoder_start_id is None else _check_int("decoder_start_id", decoder_start_id, 0)
        if dsi >= self.vocab_size:
            raise ValueError(f"decoder_start_id {dsi} is outside the vocabulary [0, {self.vocab_size})")
        self.decoder_start_id = dsi
        clash = [n for n in ("eos_id", "pad_id", "decoder_start_id") if getattr(self, n) == fs]
        if clash:
            raise ValueError(f"first_sentinel_id {fs} is also the {' and '.join(clash)}; sentinels must be ids of their own")
        self.max_length = _check_int("max_length", max_length, 2, allow_none=True)
        self.truncation = bool(truncation)
        self.pad_to_multiple_of = _check_int("pad_to_multiple_of", pad_to_multiple_of, 1, allow_none=True)

    def __call__(self, batch: Sequence[Any], indices: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
        v, o, given = _plain_batch(batch)
        idx = self._indices(len(o) - 1, given, indices)
        b, length, lab_len, flat = _native.t5_collate(
            v,
            o,
            idx,
            vocab_size=self.vocab_size,
            noise_density=self.noise_density,
            mean_span=self.mean_noise_span_length,
            first_sentinel=self.first_sentinel_id,
            eos_id=self.eos_id,
            pad_id=self.pad_id,
            decoder_start_id=self.decoder_start_id,
            max_length=self.max_length,
            truncation=self.truncation,
            pad_to_multiple_of=self.pad_to_multiple_of,
            seed=self.seed,
            epoch=self.epoch,
            threads=self.num_threads,
        )
        out = {}
        for k, arr in flat.items():
            t = torch.from_numpy(arr)
            if k in ("seq_len", "labels_len"):
                out[k] = t
            else:
                out[k] = t.view(b, lab_len if k in ("labels", "decoder_input_ids") else length)
        return out
