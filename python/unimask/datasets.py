"""Datasets that feed the collators: sample indices for deterministic masking, and
pretraining datasets over in-memory samples with deterministic shuffling, per-rank and
per-worker partitioning and exact resume.

The collators draw every random choice of a sample from ``(seed, epoch, sample index)``
(:mod:`unimask.collators`). With DataLoader workers a collator only knows an index if the
sample carries it: every dataset here adds ``index`` (the sample's global index) to what it
returns. :class:`ShardSamples` reads the samples lazily from the tokenizer's memory-mapped
shards (:meth:`unimask.tokenizer.WordPieceTokenizer.encode_file`), so a corpus far larger than
memory can be the ``samples`` of :class:`PretrainingDataset`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from . import _native

__all__ = ["IndexedDataset", "PretrainingDataset", "IterablePretrainingDataset", "ShardSamples"]


def _with_index(item: Any, index: int) -> dict[str, Any]:
    """A sample as a dict carrying its ``index`` (see :class:`IndexedDataset`)."""
    if isinstance(item, Mapping):
        out = dict(item)
        out["index"] = index
        return out
    if isinstance(item, tuple) and len(item) in (2, 3) and not isinstance(item[0], (int, np.integer)):
        out = {"segment_a": item[0], "segment_b": item[1], "index": index}
        if len(item) == 3:
            out["next_sentence_label"] = item[2]
        return out
    if hasattr(item, "ids") and not isinstance(item, (list, tuple, np.ndarray, torch.Tensor)):
        # an Encoding (unimask.tokenizer or HF tokenizers), read as the collators read one
        out = {"input_ids": item.ids, "index": index}
        words = getattr(item, "word_ids", None)
        if words is not None:
            out["word_ids"] = words
        return out
    return {"input_ids": item, "index": index}


def _nonneg_int(name: str, value: Any, below: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    if below is not None and value >= below:
        raise ValueError(f"{name} must be < {below}, got {value!r}")
    return int(value)


class IndexedDataset(Dataset):
    """Wrap a map-style dataset so that every sample carries its ``index``.

    A sample that is a dict gets an ``index`` key (a shallow copy; the original is not
    modified); an ``Encoding`` (``unimask.tokenizer`` or HF ``tokenizers``) becomes
    ``{"input_ids": enc.ids, "word_ids": enc.word_ids, "index": i}``; any other sample ``x``
    becomes ``{"input_ids": x, "index": i}``. Pairs given as
    tuples ``(a, b)`` become ``{"segment_a": a, "segment_b": b, "index": i}`` (a third element is
    the ``next_sentence_label``). ``offset`` shifts the indices (e.g. per shard).
    """

    def __init__(self, dataset: Sequence[Any], offset: int = 0) -> None:
        self.dataset = dataset
        self.offset = _nonneg_int("offset", offset)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return _with_index(self.dataset[i], self.offset + int(i))


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None or world_size is None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            rank = dist.get_rank() if rank is None else rank
            world_size = dist.get_world_size() if world_size is None else world_size
        else:
            rank = 0 if rank is None else rank
            world_size = 1 if world_size is None else world_size
    rank, world_size = _nonneg_int("rank", rank), _nonneg_int("world_size", world_size)
    if world_size < 1 or rank >= world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
    return rank, world_size


class PretrainingDataset(Dataset):
    """Map-style pretraining dataset over in-memory samples, one rank's share, in a
    deterministic order.

    The order of an epoch is a permutation of all samples that is a pure function of
    ``(seed, epoch)`` (``shuffle=False``: the natural order). Rank ``r`` of ``world_size``
    takes positions ``r, r + world_size, ...`` of it, like ``DistributedSampler``: without
    ``drop_last`` the order is padded by repeating it from its beginning (as often as needed,
    e.g. when ``world_size`` exceeds the number of samples) so every rank has the same length,
    with ``drop_last`` the tail is dropped. ``rank`` / ``world_size`` default to
    ``torch.distributed``'s when it is initialised, else 0 / 1.

    Item ``i`` is the sample at position ``position + i`` of this rank's order, as a dict with
    its global ``index`` (see :class:`IndexedDataset`), so collators mask it the same way
    whatever the rank count, worker count or batch. Exact resume: after ``n`` samples of an
    epoch, ``set_epoch(epoch)`` then ``set_position(n)``. DataLoader workers split a map-style
    dataset through the sampler, so use the default sequential sampler (no ``shuffle=True``).
    """

    def __init__(
        self,
        samples: Sequence[Any],
        *,
        seed: int = 0,
        shuffle: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
    ) -> None:
        self.samples = samples
        self.seed = _nonneg_int("seed", seed, 2**64)
        self.shuffle = bool(shuffle)
        self.rank, self.world_size = _rank_and_world(rank, world_size)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self.position = 0
        n = len(samples)
        if self.drop_last:
            self._per_rank = n // self.world_size
        else:
            self._per_rank = math.ceil(n / self.world_size) if n else 0
        self._order: np.ndarray | None = None

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` and start from its beginning."""
        self.epoch = _nonneg_int("epoch", epoch, 2**64)
        self.position = 0
        self._order = None

    def set_position(self, position: int) -> None:
        """Start this rank's epoch at ``position`` (samples already consumed), for exact resume."""
        position = _nonneg_int("position", position)
        if position > self._per_rank:
            raise ValueError(f"position {position} is past the end of this rank's epoch ({self._per_rank} samples)")
        self.position = position

    def state_dict(self, consumed: int | None = None) -> dict[str, int]:
        """``{"epoch", "position", "seed"}``: where to resume after ``consumed`` more samples."""
        pos = self.position + (0 if consumed is None else _nonneg_int("consumed", consumed))
        return {"epoch": self.epoch, "position": pos, "seed": self.seed}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Resume from :meth:`state_dict` (the seed must match)."""
        if int(state["seed"]) != self.seed:
            raise ValueError(f"state was saved with seed {state['seed']}, this dataset has seed {self.seed}")
        self.set_epoch(int(state["epoch"]))
        self.set_position(int(state["position"]))

    def order(self) -> np.ndarray:
        """Global indices of this rank's samples for the current epoch (from position 0)."""
        if self._order is None:
            n = len(self.samples)
            perm = _native.permutation(n, self.seed, self.epoch).astype(np.int64) if self.shuffle else np.arange(n, dtype=np.int64)
            total = self._per_rank * self.world_size
            if total > n:
                # pad by wrapping around as often as needed (torch DistributedSampler): with
                # world_size > 2n one copy of the order is not enough
                perm = np.resize(perm, total)
            self._order = perm[:total][self.rank :: self.world_size]
        return self._order

    def __len__(self) -> int:
        return self._per_rank - self.position

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} is out of range for {len(self)} samples")
        g = int(self.order()[self.position + i])
        return _with_index(self.samples[g], g)


class IterablePretrainingDataset(IterableDataset):
    """Iterable twin of :class:`PretrainingDataset` that also splits the rank's order among
    DataLoader workers, so that the loader yields exactly the batches of a single process.

    The rank's order is cut into blocks of ``batch_size`` (use the DataLoader's batch size);
    worker ``w`` of ``W`` yields blocks ``w, w + W, ...``. The DataLoader takes batches from
    the workers in turn, so the batch sequence is the same for any ``num_workers``. Exact
    resume: ``set_position(n * batch_size)`` after ``n`` batches (see :meth:`state_dict`).
    """

    def __init__(self, samples: Sequence[Any], *, batch_size: int, **kwargs: Any) -> None:
        self.base = PretrainingDataset(samples, **kwargs)
        self.batch_size = _nonneg_int("batch_size", batch_size)
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1, got 0")

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` and start from its beginning."""
        self.base.set_epoch(epoch)

    def set_position(self, position: int) -> None:
        """Start at ``position`` samples into this rank's epoch (a multiple of ``batch_size``)."""
        if _nonneg_int("position", position) % self.batch_size:
            raise ValueError(f"position {position} must be a multiple of batch_size {self.batch_size} to resume exactly")
        self.base.set_position(position)

    def state_dict(self, batches_consumed: int = 0) -> dict[str, int]:
        """Where to resume after ``batches_consumed`` more batches."""
        return self.base.state_dict(_nonneg_int("batches_consumed", batches_consumed) * self.batch_size)

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Resume from :meth:`state_dict`."""
        if int(state["seed"]) != self.base.seed:
            raise ValueError(f"state was saved with seed {state['seed']}, this dataset has seed {self.base.seed}")
        self.set_epoch(int(state["epoch"]))
        self.set_position(int(state["position"]))

    def __len__(self) -> int:
        return len(self.base)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        workers, wid = (info.num_workers, info.id) if info is not None else (1, 0)
        order = self.base.order()
        start, end, bs = self.base.position, len(order), self.batch_size
        for k, block in enumerate(range(start, end, bs)):
            if k % workers != wid:
                continue
            for p in range(block, min(block + bs, end)):
                g = int(order[p])
                yield _with_index(self.base.samples[g], g)


class ShardSamples(Sequence):
    """Pretraining samples read lazily from token shards, without copying the tokens.

    ``shards`` is a :class:`unimask.tokenizer.TokenShard`, a shard path (``str``, ``bytes`` or
    path-like), or a list of them (their samples are concatenated in order). ``unit`` says what
    a sample is:

    * ``"sentence"``: the token ids of one sentence (MLM, causal LM, MASS, T5 collators);
    * ``"pair"``: ``(sentence, next sentence)`` of the same document, the ``(segment_a,
      segment_b)`` input of :class:`~unimask.collators.UnifiedLMCollator` (a document's last
      sentence starts no pair);
    * ``"document"``: the list of a document's sentences (for
      :class:`~unimask.collators.NSPPairBuilder`).

    Sentences that tokenize to nothing (a line of only U+FFFD, zero-width or control
    characters, for instance) are stored in the shard as 0-token sentences, as
    :func:`unimask.corpus.read_documents` reads them, but are never samples: the index skips
    them for every unit, as ``unimask pretrain`` does. A pair is two consecutive non-empty
    sentences of a document (the empty ones removed first), a document is its non-empty
    sentences, and a document with none is skipped.

    Token ids come back as read-only views into the memory-mapped file (uint16 or uint32),
    which the collators read directly. Picklable (each worker reopens the files and checks that
    they are the ones this index was built for, see :class:`~unimask.tokenizer.TokenShard`).
    ``x in samples`` compares element-wise (a sample equal to ``x``).
    """

    UNITS = ("sentence", "pair", "document")

    def __init__(self, shards: Any, unit: str = "sentence") -> None:
        from .tokenizer import TokenShard  # noqa: PLC0415 - the tokenizer module owns the format

        if unit not in self.UNITS:
            raise ValueError(f"unit must be one of {self.UNITS}, got {unit!r}")
        if isinstance(shards, (str, bytes)) or not isinstance(shards, Sequence):
            shards = [shards]
        opened = []
        for s in shards:
            if isinstance(s, TokenShard):
                opened.append(s)
            elif isinstance(s, (str, bytes)) or hasattr(s, "__fspath__"):
                opened.append(TokenShard(s))
            else:
                raise TypeError(f"shards must be TokenShard objects or paths, got {type(s).__name__}")
        self.shards = opened
        self.unit = unit
        # per shard: the first sentence (or document) index of each sample; for pairs also the
        # second sentence (the next non-empty one, not necessarily j + 1)
        starts: list[np.ndarray] = []
        seconds: list[np.ndarray] = []
        for sh in opened:
            nonempty = np.flatnonzero(np.diff(np.asarray(sh.sentence_offsets, dtype=np.int64)) > 0)
            if unit == "sentence":
                starts.append(nonempty)
                continue
            doc_of = np.repeat(np.arange(sh.num_documents, dtype=np.int64), np.diff(np.asarray(sh.document_offsets, dtype=np.int64)))
            if unit == "document":
                starts.append(np.unique(doc_of[nonempty]))
            else:
                same_doc = doc_of[nonempty[:-1]] == doc_of[nonempty[1:]]
                starts.append(nonempty[:-1][same_doc])
                seconds.append(nonempty[1:][same_doc])
        self._starts = starts
        self._seconds = seconds
        self._cum = np.cumsum([0] + [len(x) for x in starts])

    def __len__(self) -> int:
        return int(self._cum[-1])

    def __getitem__(self, i: int) -> Any:
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"sample index must be an int, got {type(i).__name__}")
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"sample {i} out of range ({n} samples)")
        i = int(i) % n
        k = int(np.searchsorted(self._cum, i, side="right")) - 1
        shard, j = self.shards[k], int(self._starts[k][i - self._cum[k]])
        if self.unit == "sentence":
            return shard.sentence(j)
        if self.unit == "pair":
            return (shard.sentence(j), shard.sentence(int(self._seconds[k][i - self._cum[k]])))
        return [s for s in shard[j] if len(s)]

    def __contains__(self, value: object) -> bool:
        """Whether some sample equals ``value`` element-wise (a linear scan)."""
        return any(_same_sample(s, value) for s in self)

    def index(self, value: Any, start: int = 0, stop: int | None = None) -> int:
        """The first sample index in ``[start, stop)`` whose sample equals ``value`` element-wise."""
        for i in range(*slice(start, stop).indices(len(self))):
            if _same_sample(self[i], value):
                return i
        raise ValueError(f"{value!r} is not a sample of {self!r}")

    def count(self, value: Any) -> int:
        """The number of samples equal to ``value`` element-wise."""
        return sum(_same_sample(s, value) for s in self)

    def __repr__(self) -> str:
        return f"ShardSamples({len(self.shards)} shard(s), unit={self.unit!r}, samples={len(self)})"


def _same_sample(sample: Any, value: Any) -> bool:
    """Element-wise equality of a :class:`ShardSamples` sample (a token-id array, a pair of them
    or a list of them) and ``value`` (arrays, lists or tuples of ints, nested alike)."""
    if isinstance(sample, np.ndarray):
        if isinstance(value, (str, bytes)):
            return False
        try:
            v = np.asarray(value)
        except (TypeError, ValueError):
            return False
        return v.ndim == 1 and bool(np.array_equal(sample, v))
    if not isinstance(value, (list, tuple)) or len(value) != len(sample):
        return False
    return all(_same_sample(a, b) for a, b in zip(sample, value))
