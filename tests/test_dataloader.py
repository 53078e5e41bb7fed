"""Collators inside torch DataLoaders: worker processes (fork, spawn), determinism across
worker counts, no warnings."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from unimask.collators import MLMCollator, UnifiedLMCollator
from unimask.datasets import IndexedDataset

V, PAD, UNK, CLS, SEP, MASK = 30522, 0, 100, 101, 102, 103
IDS = dict(vocab_size=V, pad_id=PAD, unk_id=UNK, cls_id=CLS, sep_id=SEP, mask_id=MASK)


def _data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    return [np.concatenate([[CLS], rng.integers(1000, 30000, int(rng.integers(3, 60))), [SEP]]) for _ in range(n)]


def _pairs(n=96, seed=1):
    rng = np.random.default_rng(seed)
    return [(rng.integers(1000, 30000, int(rng.integers(1, 30))), rng.integers(1000, 30000, int(rng.integers(1, 30)))) for _ in range(n)]


def _run(dataset, collator, workers, ctx=None, epoch=0, shuffle_seed=None):
    collator.set_epoch(epoch)
    gen = None if shuffle_seed is None else torch.Generator().manual_seed(shuffle_seed)
    dl = DataLoader(
        dataset,
        batch_size=16,
        shuffle=shuffle_seed is not None,
        generator=gen,
        num_workers=workers,
        collate_fn=collator,
        multiprocessing_context=ctx if workers else None,
    )
    return list(dl)


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), k


@pytest.mark.filterwarnings("error")
def test_fork_workers_are_deterministic_across_worker_counts():
    ds = IndexedDataset(_data())
    c = MLMCollator(**IDS, whole_word=False, seed=7, num_threads=2)
    ref = _run(ds, c, 0, shuffle_seed=3)
    for workers in (1, 2):
        _same(_run(ds, c, workers, "fork", shuffle_seed=3), ref)
    # a new epoch gives new masks, reproducibly
    e1 = _run(ds, c, 2, "fork", epoch=1, shuffle_seed=3)
    assert not all(torch.equal(x["labels"], y["labels"]) for x, y in zip(e1, ref))
    _same(_run(ds, c, 0, epoch=1, shuffle_seed=3), e1)


@pytest.mark.filterwarnings("error")
def test_unilm_under_fork_after_parent_used_the_thread_pool():
    ds = IndexedDataset(_pairs())
    c = UnifiedLMCollator(**IDS, seed=2, num_threads=2)
    # the parent starts a 2-thread pool first: forked children must not hang on it
    big = _pairs(64, seed=9)
    c(big, indices=range(64))
    ref = _run(ds, c, 0)
    _same(_run(ds, c, 2, "fork"), ref)


@pytest.mark.skipif("spawn" not in mp.get_all_start_methods(), reason="no spawn start method on this platform")
@pytest.mark.filterwarnings("error")
def test_spawn_workers_match():
    ds = IndexedDataset(_data(48))
    c = MLMCollator(**IDS, seed=5)
    _same(_run(ds, c, 2, "spawn"), _run(ds, c, 0))
