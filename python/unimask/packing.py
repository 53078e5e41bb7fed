"""Packed rows: several short documents share one row of a batch, so they do not pay for padding.

A row of ``max_length`` tokens holds whole documents back to back, each keeping its own special
tokens (``[CLS] ... [SEP]``); attention never crosses a document (the encoder's ``cu_seqlens``
input, the Triton kernel's varlen path), and positions restart at each document. The padding at
the end of a row is a document of its own that no loss looks at.

:func:`pack_first_fit` assigns documents to rows; :class:`PackingCollator` packs a batch of
samples, masks the rows with a :class:`unimask.collators.MLMCollator` (or masks each document
with a :class:`unimask.collators.UnifiedLMCollator`, its own attention mode per document) and
adds the packed-row columns::

    from unimask.collators import MLMCollator
    from unimask.packing import PackingCollator

    collate = PackingCollator(MLMCollator(tokenizer=tok, seed=0), max_length=512)
    batch = collate(samples)           # input_ids [R, L], labels, cu_seqlens [N + 1], attn_mode [N] ...
    out = model(**batch)               # BertForPretraining / UnifiedLM (an encoder takes cu_seqlens, attn_mode, src_len)

``R`` (the rows) varies from batch to batch: the point of packing is fewer rows for the same
documents.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["pack_first_fit", "PackingCollator", "pack_padded"]


def pack_first_fit(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Rows of document indices: each document, in order, goes into the first row with room.

    Deterministic and order-preserving within a row (first-fit, Johnson 1973: at most
    ``1.7 x`` the optimal number of rows). Raises ``ValueError`` for a document longer than
    ``capacity`` or a negative length.
    """
    capacity = int(capacity)
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}")
    rows: list[list[int]] = []
    room: list[int] = []
    for i, n in enumerate(lengths):
        n = int(n)
        if n < 0:
            raise ValueError(f"document {i} has a negative length {n}")
        if n > capacity:
            raise ValueError(f"document {i} has {n} tokens, more than a row's {capacity}; truncate it first")
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] = free - n
                break
        else:
            rows.append([i])
            room.append(capacity - n)
    return rows


def _document_columns(rows: list[list[int]], lengths: Sequence[int], width: int,
                      modes: Sequence[int] | None = None, srcs: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
    """The encoder's packed-row columns for documents ``lengths`` laid out as ``rows`` (first-fit
    order) in rows of ``width`` tokens: ``cu_seqlens`` over the flattened rows, each row's
    padding one more document, and ``attn_mode`` / ``src_len`` per document (``modes`` /
    ``srcs`` per input document, default bidirectional; a row's padding is bidirectional)."""
    seg: list[int] = []
    seg_mode: list[int] = []
    seg_src: list[int] = []
    for r in rows:
        seg += [int(lengths[i]) for i in r]
        seg_mode += [0 if modes is None else int(modes[i]) for i in r]
        seg_src += [0 if srcs is None else int(srcs[i]) for i in r]
        seg.append(width - sum(int(lengths[i]) for i in r))  # the row's padding: one document (possibly empty)
        seg_mode.append(0)
        seg_src.append(0)
    cu = torch.zeros(len(seg) + 1, dtype=torch.int64)
    cu[1:] = torch.tensor(seg, dtype=torch.int64).cumsum(0)
    return {"cu_seqlens": cu, "attn_mode": torch.tensor(seg_mode, dtype=torch.int64),
            "src_len": torch.tensor(seg_src, dtype=torch.int64)}


def _ids_of(sample: Any, i: int) -> np.ndarray:
    if isinstance(sample, dict) and "input_ids" not in sample:
        raise TypeError(f"sample {i} is a dict without 'input_ids' (keys {sorted(sample)}); an MLMCollator packs whole documents")
    ids = sample["input_ids"] if isinstance(sample, dict) else sample
    if isinstance(ids, (str, bytes)):
        raise TypeError(f"sample {i} is text, not token ids: {ids[:40]!r}")
    arr = np.asarray(ids)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise TypeError(f"sample {i} must be a 1-D sequence of token ids, got {arr.dtype} {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"sample {i} is empty (a document holds at least its special tokens)")
    return arr.astype(np.int64, copy=False)


class PackingCollator:
    """Pack samples into rows of ``max_length`` and mask them with ``collator``.

    Args:
        collator: an :class:`~unimask.collators.MLMCollator` masks each document on its own
            before the packing (any of its recipes: BERT 80/10/10, whole words from ``vocab=``,
            SpanBERT spans, n-grams), exactly as unpacked: the same masks, seeded by the
            sample's index, the per-sample budget (``exact_count``) per document, never a
            document's ``[CLS]``/``[SEP]``; packing changes only where the tokens sit. A
            :class:`~unimask.collators.UnifiedLMCollator` (UNILM) collates each sample on its
            own first, exactly as it would unpacked (its mode, segments, masks and NSP label,
            seeded by the sample's index), and the documents are then packed with their modes:
            ``attn_mode`` / ``src_len`` per document, and, per sample in the input order,
            ``next_sentence_label`` with ``doc_starts`` / ``doc_lengths`` (where each sample's
            tokens begin in the flattened rows: :class:`unimask.models.BertForPretraining`
            takes its NSP logits at each ``[CLS]``). Samples are then ``(segment_a, segment_b)``
            pairs (or dicts) as that collator takes them.
        max_length: tokens per row; a longer sample raises ``ValueError``.
        pad_to_max_length: pad every row to ``max_length`` (fixed shapes for CUDA graphs or
            ``torch.compile``) instead of to the longest row of the batch.

    Samples: token id sequences (lists, numpy arrays) or dicts with ``input_ids`` (other keys
    are ignored), each a whole document with its special tokens. Returns the collator's
    ``input_ids``, ``token_type_ids``, ``labels`` as ``[R, L]`` and, instead of its
    ``attention_mask`` / ``seq_len``: ``cu_seqlens`` int64 ``[N + 1]`` over the ``R * L``
    flattened tokens (the documents, and each row's padding as one more document),
    ``attn_mode`` (bidirectional) and ``src_len`` int64 ``[N]``, ``num_documents`` and
    ``num_tokens`` int64 ``[R]`` (real documents and tokens per row). Masks are drawn per sample
    from the collator's seed, epoch and the sample's index (``indices=``, the samples' ``index`` keys as
    :class:`unimask.datasets.IndexedDataset` adds them, or else a running count), so with
    indices the same samples give the same masks whatever the DataLoader's workers and
    whichever other samples share their batch or row.
    """

    def __init__(self, collator: Any, max_length: int, pad_to_max_length: bool = False) -> None:
        from .collators import MLMCollator, UnifiedLMCollator  # noqa: PLC0415

        if not isinstance(collator, (MLMCollator, UnifiedLMCollator)):
            raise TypeError(
                f"PackingCollator packs samples for an MLMCollator or a UnifiedLMCollator, got "
                f"{type(collator).__name__}: causal / MASS / T5 targets would run across the documents of a row"
            )
        if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or max_length < 1:
            raise ValueError(f"max_length must be an integer >= 1, got {max_length!r}")
        if isinstance(collator, MLMCollator):
            # the rows handed to it are whole packed rows that already hold every document's
            # special tokens: adding more, or cutting a row, would shift the document boundaries
            p = collator.params
            if p["add_special_tokens"]:
                raise ValueError("PackingCollator's MLMCollator must have add_special_tokens=False: packed documents carry their own [CLS]/[SEP]")
            if p["max_length"] is not None and p["max_length"] < max_length:
                raise ValueError(
                    f"the MLMCollator's max_length={p['max_length']} is shorter than the packed rows' "
                    f"max_length={int(max_length)}: it would cut documents out of the rows; leave it None"
                )
        self.collator = collator
        self.max_length = int(max_length)
        self.pad_to_max_length = bool(pad_to_max_length)
        self._counter = 0

    def set_epoch(self, epoch: int) -> None:
        """Masks of ``epoch`` from now on (passed to the wrapped collator)."""
        self.collator.set_epoch(epoch)
        self._counter = 0

    def __repr__(self) -> str:
        return f"PackingCollator({self.collator!r}, max_length={self.max_length})"

    def _pad(self, out: dict[str, torch.Tensor], length: int) -> dict[str, torch.Tensor]:
        """Right-pad the ``[R, L]`` columns to ``length``: ids with the collator's pad id,
        labels with -100, everything else with 0."""
        pad_id = getattr(self.collator, "pad_id", None) or 0
        extra = length - out["input_ids"].shape[1]
        fill = {"input_ids": pad_id, "labels": -100}
        return {
            k: torch.nn.functional.pad(v, (0, extra), value=fill.get(k, 0)) if v.dim() == 2 else v
            for k, v in out.items()
        }

    def __call__(self, batch: Sequence[Any], indices: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
        if isinstance(batch, (str, bytes)) or not isinstance(batch, Sequence):
            raise TypeError(f"a batch must be a list of samples, got {type(batch).__name__}")
        if not batch:
            raise ValueError("cannot collate an empty batch")
        from .collators import UnifiedLMCollator  # noqa: PLC0415

        if isinstance(self.collator, UnifiedLMCollator):
            return self._pack_documents(batch, indices)
        docs = [_ids_of(s, i) for i, s in enumerate(batch)]
        given = [s.get("index") for s in batch if isinstance(s, dict) and s.get("index") is not None]
        if indices is None and given and len(given) != len(batch):
            raise ValueError("either every sample of a batch has an 'index' or none has")
        if indices is None and given:  # unimask.datasets.IndexedDataset samples
            indices = given
        if indices is None:
            idx = np.arange(self._counter, self._counter + len(docs), dtype=np.int64)
            self._counter += len(docs)
        else:
            idx = np.asarray(indices, dtype=np.int64)
            if idx.shape != (len(docs),):
                raise ValueError(f"indices must be {len(docs)} integers (one per sample), got {indices!r}")
        # each document masked on its own, as unpacked (seeded by its index, budget per document)
        out = self.collator(docs, indices=idx)
        packed = self._pack(out, ("input_ids", "token_type_ids", "labels", "attention_mask"))
        for k in ("doc_starts", "doc_lengths"):  # single documents: no per-sample head to place
            packed.pop(k)
        return packed

    def _pack(self, out: dict[str, torch.Tensor], keys: Sequence[str]) -> dict[str, torch.Tensor]:
        """The ``keys`` columns of a batch the wrapped collator made sample by sample, packed into
        rows (:func:`pack_padded`), with ``num_documents`` / ``num_tokens`` per row."""
        result = pack_padded({k: out[k] for k in keys}, self.max_length, pad_id=getattr(self.collator, "pad_id", None) or 0,
                             width=self.max_length if self.pad_to_max_length else None)
        rows = result["doc_starts"] // result["input_ids"].shape[1]
        R = result["input_ids"].shape[0]
        result["num_documents"] = torch.bincount(rows, minlength=R)
        result["num_tokens"] = torch.zeros(R, dtype=torch.int64).index_add_(0, rows, out["seq_len"].to(torch.int64))
        return result

    def _pack_documents(self, batch: Sequence[Any], indices: Sequence[int] | None) -> dict[str, torch.Tensor]:
        """UNILM: each sample collated alone (the collator's own per-sample seeding), then packed."""
        out = self.collator(batch, indices=indices)
        too_long = (out["seq_len"] > self.max_length).nonzero().flatten().tolist()
        if too_long:
            i = too_long[0]
            raise ValueError(
                f"sample {i} has {int(out['seq_len'][i])} tokens with its special tokens, more than a row's "
                f"{self.max_length}; give the UnifiedLMCollator max_length <= {self.max_length}"
            )
        return self._pack(out, ("input_ids", "token_type_ids", "labels", "attention_mask", "attn_mode", "src_len",
                                "next_sentence_label"))


def pack_padded(batch: dict[str, torch.Tensor], max_length: int, pad_id: int = 0,
                width: int | None = None) -> dict[str, torch.Tensor]:
    """Pack a right-padded batch of whole sequences (one example each: a fine-tuning batch) into
    rows of ``max_length``.

    ``batch``: ``input_ids`` ``[N, L]`` and ``attention_mask`` ``[N, L]`` (right padding), plus
    any other ``[N, L]`` token columns (``token_type_ids``, per-token ``labels``) and per-example
    columns (``labels`` ``[N]``), which are kept as they are. Returns the token columns as
    ``[R, L']`` rows (first-fit, :func:`pack_first_fit`; padding 0, -100 for per-token
    ``labels``), ``cu_seqlens`` / ``attn_mode`` /
    ``src_len`` for the encoder (each row's padding one more document), and, per example in the
    input order, ``doc_starts`` (flattened position of its first token) and ``doc_lengths``:
    a model pools example ``i`` from tokens ``doc_starts[i] : doc_starts[i] + doc_lengths[i]``,
    so its outputs come back in the input order.

    Per-example ``attn_mode`` / ``src_len`` ``[N]`` (UNILM modes), when given, become the
    documents' modes in the packed ``attn_mode`` / ``src_len`` (else every document is
    bidirectional); a per-example ``seq_len`` is dropped with the ``attention_mask``. Padding:
    ``pad_id`` for ``input_ids``; rows are as wide as the longest one, or ``width``
    (>= that; e.g. ``max_length`` for fixed shapes).
    """
    ids = batch["input_ids"]
    if ids.dim() != 2 or "attention_mask" not in batch:
        raise ValueError("pack_padded needs input_ids [N, L] and a right-padding attention_mask [N, L]")
    N, L = ids.shape
    lengths = batch["attention_mask"].to(torch.int64).sum(1)
    if not torch.equal(batch["attention_mask"].to(torch.int64),
                       (torch.arange(L)[None, :] < lengths[:, None]).to(torch.int64)):
        raise ValueError("pack_padded needs a right-padding attention_mask (tokens first, padding last)")
    lens = lengths.tolist()
    rows = pack_first_fit(lens, max_length)
    longest = max(sum(lens[i] for i in r) for r in rows) if rows else 0
    if width is None:
        width = longest
    elif width < longest:
        raise ValueError(f"width {width} is narrower than the longest packed row ({longest} tokens)")
    token_cols = [k for k, v in batch.items() if k != "attention_mask" and v.dim() == 2 and v.shape == (N, L)]
    # padding: pad_id for ids, -100 for per-token labels (tagging, MLM: padding is never scored), else 0
    fill = {"input_ids": pad_id, "labels": -100}
    out = {k: torch.full((len(rows), width), fill.get(k, 0), dtype=batch[k].dtype) for k in token_cols}
    starts = torch.zeros(N, dtype=torch.int64)
    for r, members in enumerate(rows):
        pos = 0
        for i in members:
            n = lens[i]
            for k in token_cols:
                out[k][r, pos:pos + n] = batch[k][i, :n]
            starts[i] = r * width + pos
            pos += n
    modes, srcs = batch.get("attn_mode"), batch.get("src_len")
    for k, v in batch.items():
        if k not in out and k not in ("attention_mask", "seq_len", "attn_mode", "src_len"):
            out[k] = v
    out.update(_document_columns(rows, lens, width, None if modes is None else modes.tolist(),
                                 None if srcs is None else srcs.tolist()),
               doc_starts=starts, doc_lengths=lengths)
    return out
