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


# Lines that tokenize to nothing: U+FFFD only, zero-width, control characters, a BOM only.
_EMPTY_LINES = ["\ufffd\ufffd", "\u200b\u200b", "\x07\x01", "\ufeff", "\ufffd \u200b"]


@pytest.fixture(scope="module")
def corpus_with_empty_sentences(tmp_path_factory, tok):
    d = tmp_path_factory.mktemp("empty_sents")
    e = _EMPTY_LINES
    docs_text = [
        [e[0], "first doc starts after an empty one.", "then a second line", e[1], "a third after an empty one", e[2]],
        [e[3], e[0]],  # a document of only empty sentences
        ["one sentence only", e[4]],  # no pair once the empty one is gone
        ["alpha beta", e[1], e[2], "gamma delta", "epsilon"],
        [e[4]],
        [e[0], e[1], "last document, one real sentence", e[3]],
    ]
    path = d / "c.txt"
    path.write_text("\n\n".join("\n".join(doc) for doc in docs_text) + "\n", encoding="utf-8")
    shard = tok.encode_file(path, d / "c")
    # oracle: read_documents + encode_batch, empty sentences (and then empty documents) dropped,
    # as unimask.pretrain.tokenize_corpus does
    docs = read_documents(path)
    flat = [s for doc in docs for s in doc]
    r = tok.encode_batch(flat, add_special_tokens=False)
    ids = [r.ids_flat[r.row_splits[i] : r.row_splits[i + 1]].tolist() for i in range(len(flat))]
    expected, k = [], 0
    for doc in docs:
        sents = [s for s in ids[k : k + len(doc)] if s]
        k += len(doc)
        if sents:
            expected.append(sents)
    assert len(docs) == 6 and len(expected) == 4  # the input really has such lines and documents
    assert sum(len(s) == 0 for s in ids) == 12
    # the shard itself keeps them (it mirrors read_documents)
    assert shard.num_sentences == len(flat) and len(shard) == len(docs)
    return shard, expected


def test_sentences_that_tokenize_to_nothing_are_not_samples(corpus_with_empty_sentences):
    shard, docs = corpus_with_empty_sentences
    sents = ShardSamples(shard, unit="sentence")
    assert [s.tolist() for s in sents] == [s for d in docs for s in d]
    pairs = ShardSamples(shard, unit="pair")
    assert [(a.tolist(), b.tolist()) for a, b in pairs] == [(d[i], d[i + 1]) for d in docs for i in range(len(d) - 1)]
    documents = ShardSamples(shard, unit="document")
    assert [[s.tolist() for s in d] for d in documents] == docs
    # a shard path works the same, and two shards concatenate
    both = ShardSamples([shard, shard.path], unit="pair")
    assert len(both) == 2 * len(pairs) and [x.tolist() for x in both[len(pairs)]] == [x.tolist() for x in pairs[0]]


def test_collators_over_a_shard_with_empty_sentences(corpus_with_empty_sentences, tok):
    shard, docs = corpus_with_empty_sentences
    ds = PretrainingDataset(ShardSamples(shard, unit="pair"), shuffle=False)
    batch = UnifiedLMCollator(tokenizer=tok, max_length=32, truncation=True)([ds[i] for i in range(len(ds))])
    assert batch["input_ids"].shape[0] == len(ds) == sum(len(d) - 1 for d in docs)
    ds = PretrainingDataset(ShardSamples(shard, unit="sentence"), shuffle=False)
    batch = MLMCollator(tokenizer=tok, max_length=32, truncation=True, add_special_tokens=True)([ds[i] for i in range(len(ds))])
    flat = [s for d in docs for s in d]
    for i in range(len(ds)):
        n = int(batch["seq_len"][i])
        restored = [lab if lab != -100 else t for t, lab in zip(batch["input_ids"][i, :n].tolist(), batch["labels"][i, :n].tolist())]
        assert restored[1:-1] == flat[i][: n - 2]


def test_a_pickled_index_refuses_a_replaced_shard(tmp_path, tok):
    import os

    (tmp_path / "A.txt").write_text("alpha one\nalpha two\n\nalpha three\nalpha four\n", encoding="utf-8")
    (tmp_path / "B.txt").write_text("beta one\n\nbeta two\nbeta three\nbeta four\n", encoding="utf-8")
    tok.encode_file(tmp_path / "A.txt", tmp_path / "cur")
    ss = ShardSamples(tmp_path / "cur.umshard", unit="pair")
    blob = pickle.dumps(ss)
    same = pickle.loads(blob)  # unchanged file: the copy reads what the original reads
    assert [[x.tolist() for x in p] for p in same] == [[x.tolist() for x in p] for p in ss]
    # B has as many sentences as A but other documents: A's pair index over B crosses documents
    tok.encode_file(tmp_path / "B.txt", tmp_path / "new")
    os.replace(tmp_path / "new.umshard", tmp_path / "cur.umshard")
    with pytest.raises(ValueError, match=r"cur\.umshard.*changed since it was opened"):
        pickle.loads(blob)


def test_bytes_paths_and_membership(corpus):
    import os

    shards, docs = corpus
    path = os.fsencode(shards[0].path)
    sents = ShardSamples(path)
    assert ShardSamples(shards[0].path).shards[0].path == sents.shards[0].path
    assert len(sents) == len(ShardSamples(shards[0]))
    first, other = docs[0][0], docs[0][1]
    assert first in sents and np.asarray(first, dtype=np.uint16) in sents
    assert [999999] not in sents and "text" not in sents and [first, other] not in sents
    assert sents.index(other) == 1 and sents.count(first) == sum(s == first for d in docs[:200] for s in d)
    pairs = ShardSamples(shards[0], unit="pair")
    assert (first, other) in pairs and (other, first) not in pairs
    assert [first, other] in pairs  # a list compares like a tuple
    documents = ShardSamples(shards[0], unit="document")
    assert docs[0] in documents and docs[0][:-1] not in documents
    with pytest.raises(ValueError, match="not a sample"):
        sents.index([999999])
