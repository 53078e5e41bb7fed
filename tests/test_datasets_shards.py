"""Pretraining over on-disk token shards: ShardSamples -> PretrainingDataset -> DataLoader -> collator.

Oracle: the corpus read with ``read_documents`` and tokenized sentence by sentence with
``encode_batch`` (an independent path from the streaming ``encode_file`` writer).
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from unimask.collators import MLMCollator, UnifiedLMCollator
from unimask.corpus import read_documents
from unimask.datasets import PretrainingDataset, ShardSamples
from unimask.tokenizer import WordPieceTokenizer


@pytest.fixture(scope="module")
def tok(minilm_dir):
    return WordPieceTokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tok):
    from unimask.corpus import demo_corpus_path

    d = tmp_path_factory.mktemp("shards")
    docs = read_documents(demo_corpus_path("en"))[:300]
    (d / "a.txt").write_text("\n\n".join("\n".join(doc) for doc in docs[:200]) + "\n", encoding="utf-8")
    (d / "b.txt").write_text("\n\n".join("\n".join(doc) for doc in docs[200:]) + "\n", encoding="utf-8")
    shards = [tok.encode_file(d / "a.txt", d / "a"), tok.encode_file(d / "b.txt", d / "b")]
    expected = []  # documents as lists of token-id lists, via the independent path
    for doc in docs:
        r = tok.encode_batch(doc, add_special_tokens=False)
        expected.append([r.ids_flat[r.row_splits[i] : r.row_splits[i + 1]].tolist() for i in range(len(doc))])
    return shards, expected


def test_sentence_pair_and_document_units_match_the_tokenized_corpus(corpus):
    shards, docs = corpus
    sents = ShardSamples(shards, unit="sentence")
    assert [s.tolist() for s in sents] == [s for d in docs for s in d]
    pairs = ShardSamples(shards, unit="pair")
    want = [(d[i], d[i + 1]) for d in docs for i in range(len(d) - 1)]
    assert len(pairs) == len(want)
    for k in (0, 1, len(want) // 2, len(want) - 1):
        a, b = pairs[k]
        assert (a.tolist(), b.tolist()) == want[k]
    documents = ShardSamples(shards, unit="document")
    assert [[s.tolist() for s in d] for d in documents] == docs
    assert pairs[-1][0].tolist() == want[-1][0]


def test_samples_are_zero_copy_views_of_the_file(corpus):
    shards, _ = corpus
    s = ShardSamples(shards[0])[3]
    assert s.dtype in (np.uint16, np.uint32) and not s.flags.writeable
    assert isinstance(s.base, np.memmap) or isinstance(s, np.memmap)


def test_bad_arguments_are_clear_errors(corpus, tmp_path):
    shards, _ = corpus
    with pytest.raises(ValueError, match="'words'"):
        ShardSamples(shards, unit="words")
    with pytest.raises(TypeError, match="int"):
        ShardSamples(shards, unit="sentence")[1.5]
    with pytest.raises(IndexError, match="out of range"):
        ShardSamples(shards)[10**9]
    with pytest.raises(TypeError, match="TokenShard"):
        ShardSamples([42])
    with pytest.raises((OSError, ValueError)):
        ShardSamples(tmp_path / "missing.umshard")


def test_ranks_partition_the_shard_and_resume_exactly(corpus):
    shards, _ = corpus
    samples = ShardSamples(shards, unit="pair")
    r0 = PretrainingDataset(samples, seed=5, rank=0, world_size=2, drop_last=True)
    r1 = PretrainingDataset(samples, seed=5, rank=1, world_size=2, drop_last=True)
    i0 = {r0[i]["index"] for i in range(len(r0))}
    i1 = {r1[i]["index"] for i in range(len(r1))}
    assert not i0 & i1 and len(i0) + len(i1) == 2 * (len(samples) // 2)
    later = PretrainingDataset(samples, seed=5, rank=0, world_size=2, drop_last=True)
    later.load_state_dict(r0.state_dict(consumed=7))
    assert later[0]["index"] == r0[7]["index"]


def test_dataloader_workers_over_shards_are_deterministic(corpus, tok):
    shards, _ = corpus
    ds = PretrainingDataset(ShardSamples(shards, unit="pair"), seed=1)
    collate = UnifiedLMCollator(tokenizer=tok, max_length=64, truncation=True, seed=3)
    pickle.loads(pickle.dumps(ds))  # workers receive a pickled copy

    def run(workers: int) -> list[dict]:
        dl = torch.utils.data.DataLoader(ds, batch_size=16, collate_fn=collate, num_workers=workers,
                                         multiprocessing_context="fork" if workers else None)
        out = []
        for k, b in enumerate(dl):
            out.append(b)
            if k == 3:
                break
        return out

    a, b = run(0), run(2)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            assert torch.equal(x[key], y[key]), key


def test_mlm_over_sentences_from_a_shard(corpus, tok):
    shards, docs = corpus
    ds = PretrainingDataset(ShardSamples(shards), shuffle=False)
    batch = MLMCollator(tokenizer=tok, max_length=64, truncation=True, add_special_tokens=True)([ds[i] for i in range(8)])
    flat = [s for d in docs for s in d]
    for i in range(8):
        n = int(batch["seq_len"][i])
        ids = batch["input_ids"][i, :n].tolist()
        labels = batch["labels"][i, :n].tolist()
        restored = [lab if lab != -100 else t for t, lab in zip(ids, labels)]
        assert restored[0] == tok.cls_id and restored[-1] == tok.sep_id
        assert restored[1:-1] == flat[i][: n - 2]
