"""Datasets that feed the collators: sample indices for deterministic masking, and a
map-style pretraining dataset over in-memory documents.

The collators draw every random choice of a sample from ``(seed, epoch, sample index)``
(:mod:`unimask.collators`). With DataLoader workers the collator only knows an index if the
sample carries it, which is what :class:`IndexedDataset` adds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch.utils.data import Dataset

__all__ = ["IndexedDataset"]


class IndexedDataset(Dataset):
    """Wrap a map-style dataset so that every sample carries its ``index``.

    A sample that is a dict gets an ``index`` key (a shallow copy; the original is not
    modified); any other sample ``x`` becomes ``{"input_ids": x, "index": i}``. Pairs given as
    tuples ``(a, b)`` become ``{"segment_a": a, "segment_b": b, "index": i}`` (a third element is
    the ``next_sentence_label``). ``offset`` shifts the indices (e.g. per shard).
    """

    def __init__(self, dataset: Sequence[Any], offset: int = 0) -> None:
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ValueError(f"offset must be an int >= 0, got {offset!r}")
        self.dataset = dataset
        self.offset = offset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.dataset[i]
        index = self.offset + int(i)
        if isinstance(item, Mapping):
            out = dict(item)
            out["index"] = index
            return out
        if isinstance(item, tuple) and len(item) in (2, 3):
            out = {"segment_a": item[0], "segment_b": item[1], "index": index}
            if len(item) == 3:
                out["next_sentence_label"] = item[2]
            return out
        return {"input_ids": item, "index": index}
