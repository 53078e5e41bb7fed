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
    # the parent starts a 2-thread pool first (a batch large enough to be split over threads):
    # forked children must not hang on it
    rng = np.random.default_rng(9)
    big = [(rng.integers(1000, 30000, 240), rng.integers(1000, 30000, 240)) for _ in range(600)]
    out = c(big, indices=range(600))
    assert out["input_ids"].numel() >= 1 << 18  # rust/core masking::MIN_PARALLEL_WORK
    ref = _run(ds, c, 0)
    _same(_run(ds, c, 2, "fork"), ref)


@pytest.mark.skipif("spawn" not in mp.get_all_start_methods(), reason="no spawn start method on this platform")
@pytest.mark.filterwarnings("error")
def test_spawn_workers_match():
    ds = IndexedDataset(_data(48))
    c = MLMCollator(**IDS, seed=5)
    _same(_run(ds, c, 2, "spawn"), _run(ds, c, 0))


# ------------------------------------------------------------------------------------------
# PretrainingDataset / IterablePretrainingDataset

from unimask.datasets import IterablePretrainingDataset, PretrainingDataset  # noqa: E402


def test_ranks_partition_the_epoch_like_distributed_sampler():
    n = 103
    samples = [np.array([CLS, 1000 + i, SEP]) for i in range(n)]
    for drop_last in (False, True):
        shares = [PretrainingDataset(samples, seed=3, rank=r, world_size=4, drop_last=drop_last) for r in range(4)]
        lens = {len(s) for s in shares}
        assert lens == ({26} if not drop_last else {25})
        idx = np.concatenate([s.order() for s in shares])
        if drop_last:
            assert len(set(idx.tolist())) == 100  # disjoint, tail dropped
        else:
            assert set(idx.tolist()) == set(range(n))  # every sample, 1 padded repeat
        for s in shares:
            for i in range(len(s)):
                item = s[i]
                assert item["input_ids"][1] == 1000 + item["index"]


def test_order_is_a_pure_function_of_seed_and_epoch():
    samples = list(range(50))
    a, b = PretrainingDataset(samples, seed=1), PretrainingDataset(samples, seed=1)
    assert (a.order() == b.order()).all()
    assert sorted(a.order().tolist()) == samples
    first = a.order().copy()
    a.set_epoch(1)
    assert not (a.order() == first).all()
    assert (PretrainingDataset(samples, seed=2).order() != first).any()
    assert (PretrainingDataset(samples, shuffle=False).order() == np.arange(50)).all()


@pytest.mark.filterwarnings("error")
def test_map_style_dataset_with_workers_and_resume():
    ds = PretrainingDataset(_data(80), seed=4)
    ds.set_epoch(1)
    c = MLMCollator(**IDS, seed=1)
    ref = _run(ds, c, 0, epoch=1)
    _same(_run(ds, c, 2, "fork", epoch=1), ref)
    # exact resume after 3 batches of 16
    ds.set_epoch(1)
    state = ds.state_dict(consumed=48)
    fresh = PretrainingDataset(_data(80), seed=4)
    fresh.load_state_dict(state)
    c.set_epoch(1)
    tail = list(DataLoader(fresh, batch_size=16, collate_fn=c))
    _same(tail, ref[3:])


@pytest.mark.filterwarnings("error")
def test_iterable_dataset_same_batches_for_any_worker_count_and_resume():
    c = MLMCollator(**IDS, seed=2)

    def run(workers, position=0):
        ds = IterablePretrainingDataset(_data(90), batch_size=16, seed=5)
        ds.set_epoch(2)
        ds.set_position(position)
        c.set_epoch(2)
        dl = DataLoader(ds, batch_size=16, collate_fn=c, num_workers=workers, multiprocessing_context="fork" if workers else None)
        return list(dl)

    ref = run(0)
    assert len(ref) == 6
    _same(run(2), ref)
    _same(run(2, position=32), ref[2:])
    with pytest.raises(ValueError, match="multiple of batch_size"):
        IterablePretrainingDataset(_data(10), batch_size=4).set_position(3)


def test_dataset_errors():
    with pytest.raises(ValueError, match="rank"):
        PretrainingDataset([1, 2], rank=2, world_size=2)
    ds = PretrainingDataset([[1], [2]])
    with pytest.raises(ValueError, match="past the end"):
        ds.set_position(5)
    with pytest.raises(ValueError, match="seed"):
        ds.load_state_dict({"epoch": 0, "position": 0, "seed": 9})
    with pytest.raises(IndexError):
        ds[2]
