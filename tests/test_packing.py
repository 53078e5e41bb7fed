"""Packed rows end to end: the packing (first-fit), the collator's columns, and the encoder's
``cu_seqlens`` path checked against encoding every document on its own (the oracle: packing
must change nothing but where the tokens sit)."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch

from unimask.collators import MLMCollator, UnifiedLMCollator
from unimask.models import BertForPretraining, EncoderConfig, TransformerEncoder, UnifiedLM
from unimask.packing import PackingCollator, pack_first_fit

IDS = dict(vocab_size=100, pad_id=0, cls_id=1, sep_id=2, mask_id=3)


def _docs(n: int, seed: int, lo: int = 3, hi: int = 20) -> list[list[int]]:
    rng = random.Random(seed)
    return [[1] + [rng.randrange(5, 100) for _ in range(rng.randrange(lo, hi) - 2)] + [2] for _ in range(n)]


# --------------------------------------------------------------------------------------------
# pack_first_fit
# --------------------------------------------------------------------------------------------
def test_first_fit_hand_cases():
    assert pack_first_fit([5, 3, 7, 2, 4], 8) == [[0, 1], [2], [3, 4]]
    assert pack_first_fit([4, 4, 4, 4], 8) == [[0, 1], [2, 3]]
    assert pack_first_fit([6, 3, 2, 1], 6) == [[0], [1, 2, 3]]
    assert pack_first_fit([], 8) == []
    assert pack_first_fit([0, 8], 8) == [[0, 1]]


@pytest.mark.parametrize("seed", range(20))
def test_first_fit_invariants(seed):
    rng = random.Random(seed)
    cap = rng.randrange(4, 64)
    lens = [rng.randrange(0, cap + 1) for _ in range(rng.randrange(0, 60))]
    rows = pack_first_fit(lens, cap)
    flat = [i for r in rows for i in r]
    assert sorted(flat) == list(range(len(lens)))  # every document exactly once
    for r in rows:
        assert r == sorted(r) and sum(lens[i] for i in r) <= cap  # in order, within a row's room
    # first fit: when document i was placed, no earlier row had room for it
    room = []
    where = {i: k for k, r in enumerate(rows) for i in r}
    for i, n in enumerate(lens):
        k = where[i]
        assert all(free < n for free in room[:k]), (i, room, k)
        if k == len(room):
            room.append(cap)
        room[k] -= n
    # never worse than ceil(2 * sum / cap) + 1 rows (each pair of rows holds > cap tokens)
    assert len(rows) <= max(1, 2 * -(-sum(lens) // cap)) + 1


def test_first_fit_errors():
    with pytest.raises(ValueError, match="document 1 has 9 tokens"):
        pack_first_fit([3, 9], 8)
    with pytest.raises(ValueError, match="capacity"):
        pack_first_fit([1], 0)
    with pytest.raises(ValueError, match="negative"):
        pack_first_fit([-1], 4)


# --------------------------------------------------------------------------------------------
# PackingCollator
# --------------------------------------------------------------------------------------------
def test_collator_columns_rebuild_the_documents():
    docs = _docs(40, seed=1)
    collate = PackingCollator(MLMCollator(**IDS, seed=3), max_length=48)
    b = collate(docs)
    R, L = b["input_ids"].shape
    assert R < len(docs) and L <= 48
    assert set(b) >= {"input_ids", "labels", "token_type_ids", "cu_seqlens", "attn_mode", "src_len", "num_documents"}
    assert "attention_mask" not in b and "seq_len" not in b
    cu = b["cu_seqlens"].tolist()
    assert cu[0] == 0 and cu[-1] == R * L and all(x <= y for x, y in zip(cu, cu[1:]))
    assert len(b["attn_mode"]) == len(b["src_len"]) == len(cu) - 1 == len(docs) + R  # docs + one padding doc per row
    # undo the masking: a labelled position held its label, the others their input id
    original = torch.where(b["labels"] != -100, b["labels"], b["input_ids"]).reshape(-1).tolist()
    rows = pack_first_fit([len(d) for d in docs], 48)
    d = 0
    for r, members in enumerate(rows):
        assert int(b["num_documents"][r]) == len(members)
        for i in members:
            assert original[cu[d]:cu[d + 1]] == docs[i]  # the document, whole, in packing order
            assert cu[d] // L == r and (cu[d + 1] - 1) // L == r  # inside its row
            d += 1
        pad = original[cu[d]:cu[d + 1]]
        assert pad == [0] * len(pad)  # the row's padding document
        d += 1
    # special tokens are never predicted; about 15% of the rest is
    flat_labels = b["labels"].reshape(-1)
    ids = torch.tensor(original)
    assert not bool(((ids <= 2) & (flat_labels != -100)).any())
    rate = float((flat_labels != -100).sum()) / float((ids > 2).sum())
    assert 0.08 < rate < 0.25, rate


@pytest.mark.parametrize("span", [None, "geometric"])
def test_mlm_packing_masks_each_document_as_unpacked(span):
    """Packing changes only where tokens sit: each document's tokens and labels are those the
    MLMCollator gives it unpacked (same index), whichever documents share its batch or row."""
    docs = _docs(30, seed=4)
    mlm = MLMCollator(**IDS, seed=7, span=span)
    unpacked = mlm(docs, indices=range(1000, 1030))

    def per_doc(b, n):
        cu = b["cu_seqlens"].tolist()
        starts = [cu[d] for d in range(len(cu) - 1)]
        flat_ids, flat_lab = b["input_ids"].reshape(-1), b["labels"].reshape(-1)
        # real documents are the ones with tokens other than padding, in packing order
        rows = pack_first_fit([len(docs[i]) for i in n], 40)
        out, d = {}, 0
        for members in rows:
            for i in members:
                out[i] = (flat_ids[starts[d]:cu[d + 1]].tolist(), flat_lab[starts[d]:cu[d + 1]].tolist())
                d += 1
            d += 1  # the row's padding document
        return {n[i]: v for i, v in out.items()}

    whole = PackingCollator(MLMCollator(**IDS, seed=7, span=span), max_length=40)(docs, indices=range(1000, 1030))
    got = per_doc(whole, list(range(30)))
    for i in range(30):
        n = int(unpacked["seq_len"][i])
        assert got[i] == (unpacked["input_ids"][i, :n].tolist(), unpacked["labels"][i, :n].tolist()), i
    # the odd documents alone, in another order: the same masks for the same indices
    sub = list(range(29, 0, -2))
    part = PackingCollator(MLMCollator(**IDS, seed=7, span=span), max_length=40)(
        [docs[i] for i in sub], indices=[1000 + i for i in sub])
    got_sub = per_doc(part, sub)
    assert all(got_sub[i] == got[i] for i in sub)


def test_collator_is_deterministic_picklable_and_pads_to_max_length():
    docs = _docs(16, seed=2)
    a = PackingCollator(MLMCollator(**IDS, seed=5), max_length=40, pad_to_max_length=True)
    b = pickle.loads(pickle.dumps(a))
    x, y = a(docs, indices=list(range(100, 116))), b(docs, indices=list(range(100, 116)))
    assert all(torch.equal(x[k], y[k]) for k in x)
    assert x["input_ids"].shape[1] == 40
    assert x["cu_seqlens"][-1] == x["input_ids"].numel()
    z = a(docs, indices=list(range(200, 216)))  # other sample indices, other masks
    assert not torch.equal(x["labels"], z["labels"])
    a.set_epoch(1)
    assert not torch.equal(a(docs, indices=list(range(100, 116)))["labels"], x["labels"])


def test_collator_errors():
    collate = PackingCollator(MLMCollator(**IDS), max_length=8)
    with pytest.raises(ValueError, match="more than a row's 8"):
        collate([[1, 5, 2], list(range(1, 11))])
    with pytest.raises(TypeError, match="text"):
        collate(["some text"])
    with pytest.raises(ValueError, match="empty"):
        collate([])
    with pytest.raises(ValueError, match="sample 1 is empty"):
        collate([[1, 5, 2], []])
    with pytest.raises(ValueError, match="max_length"):
        PackingCollator(MLMCollator(**IDS), max_length=0)
    with pytest.raises(TypeError, match="without 'input_ids'"):
        collate([{"segment_a": [1, 5, 2]}])
    # a wrapped collator that adds special tokens or cuts rows would shift the documents
    with pytest.raises(ValueError, match="add_special_tokens=False"):
        PackingCollator(MLMCollator(**IDS, add_special_tokens=True), max_length=8)
    with pytest.raises(ValueError, match="max_length=6 is shorter"):
        PackingCollator(MLMCollator(**IDS, max_length=6, truncation=True), max_length=8)
    docs = _docs(6, seed=1, lo=3, hi=8)
    long_enough = PackingCollator(MLMCollator(**IDS, max_length=8, truncation=True), max_length=8)
    assert torch.equal(long_enough(docs, indices=range(6))["input_ids"],
                       PackingCollator(MLMCollator(**IDS), max_length=8)(docs, indices=range(6))["input_ids"])


# --------------------------------------------------------------------------------------------
# the encoder's packed path vs every document alone
# --------------------------------------------------------------------------------------------
def _encoder(**kw) -> TransformerEncoder:
    torch.manual_seed(0)
    cfg = EncoderConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, type_vocab_size=2,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **kw)
    return TransformerEncoder(cfg).double().eval()


@pytest.mark.parametrize("pre_ln", [False, True])
def test_packed_encoder_matches_each_document_alone(pre_ln):
    enc = _encoder(pre_layer_norm=pre_ln)
    docs = _docs(12, seed=4, hi=30)
    b = PackingCollator(MLMCollator(**IDS, mlm_probability=0.0), max_length=64)(docs)
    # per-document modes: every UNILM mode, seq2seq with its source length
    n = len(b["attn_mode"])
    rng = random.Random(0)
    lens = (b["cu_seqlens"][1:] - b["cu_seqlens"][:-1]).tolist()
    mode = torch.tensor([rng.randrange(4) for _ in range(n)])
    src = torch.tensor([rng.randrange(0, m + 1) for m in lens])
    with torch.no_grad():
        out = enc(b["input_ids"], b["token_type_ids"], attn_mode=mode, src_len=src, cu_seqlens=b["cu_seqlens"])
        flat = out.last_hidden_state.reshape(-1, 32)
        cu = b["cu_seqlens"].tolist()
        for d in range(n):
            if lens[d] == 0:
                continue
            ids = b["input_ids"].reshape(-1)[cu[d]:cu[d + 1]][None]
            alone = enc(ids, attn_mode=mode[d:d + 1], src_len=src[d:d + 1]).last_hidden_state[0]
            torch.testing.assert_close(flat[cu[d]:cu[d + 1]], alone, rtol=1e-9, atol=1e-9)


def test_packed_pretraining_loss_and_gradients():
    torch.manual_seed(0)
    cfg = EncoderConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, type_vocab_size=2)
    model = BertForPretraining(cfg).train()
    docs = _docs(20, seed=6)
    b = PackingCollator(MLMCollator(**IDS, seed=1), max_length=64)(docs)
    out = model(**b)
    assert out.nsp_loss is None and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # the same predictions as the padded layout of the same masked documents, one per row
    model.double().eval()
    with torch.no_grad():
        packed = model(**b)
        cu = b["cu_seqlens"].tolist()
        ids, labels = b["input_ids"].reshape(-1), b["labels"].reshape(-1)
        docs_ids = [ids[cu[d]:cu[d + 1]] for d in range(len(cu) - 1)]
        docs_lab = [labels[cu[d]:cu[d + 1]] for d in range(len(cu) - 1)]
        keep = [d for d in range(len(docs_ids)) if len(docs_ids[d]) and (docs_ids[d][0] == 1)]
        L = max(len(docs_ids[d]) for d in keep)
        pid = torch.zeros(len(keep), L, dtype=torch.long)
        plab = torch.full((len(keep), L), -100)
        for r, d in enumerate(keep):
            pid[r, : len(docs_ids[d])] = docs_ids[d]
            plab[r, : len(docs_lab[d])] = docs_lab[d]
        seq = torch.tensor([len(docs_ids[d]) for d in keep])
        padded = model(pid, labels=plab, seq_len=seq)
    torch.testing.assert_close(packed.mlm_labels, padded.mlm_labels, rtol=0, atol=0)  # the same targets, in order
    torch.testing.assert_close(packed.mlm_logits, padded.mlm_logits, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(packed.mlm_loss, padded.mlm_loss, rtol=1e-9, atol=1e-9)


def test_only_mlm_and_unilm_collators_are_packed():
    """Causal, MASS and T5 targets would run across the documents of a row."""
    from unimask.collators import CausalLMCollator

    with pytest.raises(TypeError, match="packs samples for an MLMCollator or a UnifiedLMCollator, got CausalLMCollator"):
        PackingCollator(CausalLMCollator(vocab_size=100, pad_id=0, bos_id=1, eos_id=2), max_length=48)
    # MLMCollator's n-gram recipe on packed rows
    b = PackingCollator(MLMCollator(**IDS, span="ngram", seed=2), max_length=48)(_docs(24, seed=7))
    assert (b["labels"] != -100).any() and b["cu_seqlens"][-1] == b["input_ids"].numel()


def test_packed_encoder_rejects_bad_inputs():
    enc = _encoder()
    ids = torch.randint(5, 100, (2, 10))
    with pytest.raises(ValueError, match="end at B \\* L = 20"):
        enc(ids, cu_seqlens=torch.tensor([0, 10, 19]))
    with pytest.raises(ValueError, match="non-decreasing"):
        enc(ids, cu_seqlens=torch.tensor([0, 12, 10, 20]))
    with pytest.raises(ValueError, match="replaces attention_mask"):
        enc(ids, attention_mask=torch.ones(2, 10), cu_seqlens=torch.tensor([0, 10, 20]))
    with pytest.raises(TypeError, match="cu_seqlens must be a 1-D integer"):
        enc(ids, cu_seqlens=torch.tensor([0.0, 20.0]))
    with pytest.raises(ValueError, match="attn_mode\\[1\\] = 7"):
        enc(ids, cu_seqlens=torch.tensor([0, 10, 20]), attn_mode=torch.tensor([0, 7]))
    long = _encoder()
    ids = torch.randint(5, 100, (2, 40))
    with pytest.raises(ValueError, match="exceeds max_position_embeddings"):
        long(ids.reshape(1, 80), cu_seqlens=torch.tensor([0, 80]))
    # an all-padding batch split anywhere still runs: documents of any length, empty ones too
    out = enc(torch.zeros(2, 10, dtype=torch.long), cu_seqlens=torch.tensor([0, 0, 7, 20]))
    assert torch.isfinite(out.last_hidden_state).all()


def test_varlen_attention_check_false_needs_max_seqlen_and_agrees():
    from unimask.attention import unified_attention_varlen

    torch.manual_seed(0)
    q, k, v = (torch.randn(20, 2, 8, dtype=torch.float64) for _ in range(3))
    cu, mode, src = torch.tensor([0, 7, 7, 20]), torch.tensor([3, 0, 1]), torch.tensor([4, 0, 0])
    with pytest.raises(ValueError, match="needs max_seqlen"):
        unified_attention_varlen(q, k, v, cu, mode, src, check=False)
    checked = unified_attention_varlen(q, k, v, cu, mode, src)
    unchecked = unified_attention_varlen(q, k, v, cu, mode, src, max_seqlen=13, check=False)
    torch.testing.assert_close(checked, unchecked, rtol=0, atol=0)


def test_dataloader_workers_give_the_same_batches():
    """With IndexedDataset samples, 2 forked workers collate exactly what 0 workers do."""
    import multiprocessing as mp

    from torch.utils.data import DataLoader

    from unimask.datasets import IndexedDataset

    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork start method on this platform")
    ds = IndexedDataset([np.asarray(d, dtype=np.int64) for d in _docs(64, seed=9)])
    collate = PackingCollator(MLMCollator(**IDS, seed=4), max_length=40)

    def run(workers):
        dl = DataLoader(ds, batch_size=16, num_workers=workers, collate_fn=collate,
                        multiprocessing_context="fork" if workers else None)
        return list(dl)

    a, b = run(0), run(2)
    assert len(a) == len(b) == 4
    for x, y in zip(a, b):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    with pytest.raises(ValueError, match="every sample"):
        collate([{"input_ids": [1, 5, 2], "index": 0}, {"input_ids": [1, 6, 2]}])


# --------------------------------------------------------------------------------------------
# fine-tuning batches: pack_padded + SequenceClassifier on packed rows
# --------------------------------------------------------------------------------------------
def _padded_batch(n: int, L: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(3, L + 1, (n,), generator=g)
    lens[0] = L
    ids = torch.randint(5, 100, (n, L), generator=g)
    ids[:, 0] = 1
    am = (torch.arange(L)[None, :] < lens[:, None]).long()
    ids = ids * am
    tt = ((torch.arange(L)[None, :] >= (lens[:, None] // 2)) & (am == 1)).long()  # pairs: second half type 1
    return {"input_ids": ids, "attention_mask": am, "token_type_ids": tt,
            "labels": torch.randint(0, 3, (n,), generator=g)}


def test_pack_padded_layout():
    from unimask.packing import pack_padded

    b = _padded_batch(20, 24, seed=0)
    p = pack_padded(b, max_length=48)
    lens = b["attention_mask"].sum(1)
    assert torch.equal(p["doc_lengths"], lens) and torch.equal(p["labels"], b["labels"])
    R, L = p["input_ids"].shape
    assert R < 20 and L <= 48 and p["cu_seqlens"][-1] == R * L and "attention_mask" not in p
    flat_ids, flat_tt = p["input_ids"].reshape(-1), p["token_type_ids"].reshape(-1)
    for i in range(20):  # every example, whole, where doc_starts says, in its own row
        s, n = int(p["doc_starts"][i]), int(lens[i])
        assert torch.equal(flat_ids[s:s + n], b["input_ids"][i, :n])
        assert torch.equal(flat_tt[s:s + n], b["token_type_ids"][i, :n])
        assert s // L == (s + n - 1) // L
    covered = torch.zeros(R * L, dtype=torch.long)
    for i in range(20):
        covered[int(p["doc_starts"][i]):int(p["doc_starts"][i]) + int(lens[i])] += 1
    assert covered.max() == 1 and int(covered.sum()) == int(lens.sum())  # no overlaps
    assert flat_ids[covered == 0].eq(0).all()  # the rest is padding
    with pytest.raises(ValueError, match="right-padding"):
        pack_padded({"input_ids": b["input_ids"], "attention_mask": b["attention_mask"].flip(1)}, 48)


@pytest.mark.parametrize("pooling", ["cls", "mean", "concat"])
def test_packed_classifier_logits_equal_the_padded_ones(pooling):
    from unimask.finetune.data import LabelMap
    from unimask.finetune.heads import SequenceClassifier
    from unimask.packing import pack_padded

    torch.manual_seed(0)
    cfg = EncoderConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, type_vocab_size=2)
    model = SequenceClassifier(cfg, LabelMap(["a", "b", "c"]), pooling=pooling).double().eval()
    b = _padded_batch(12, 20, seed=1)
    with torch.no_grad():
        padded = model(**b)
        packed = model(**pack_padded(b, max_length=40))
    assert packed.logits.shape == padded.logits.shape == (12, 3)
    torch.testing.assert_close(packed.logits, padded.logits, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(packed.loss, padded.loss, rtol=1e-9, atol=1e-9)


@pytest.mark.usefixtures("one_torch_thread")
def test_packed_finetuning_runs_the_same_optimization(minilm_dir):
    """Packing a fine-tuning batch changes where tokens sit, not the examples: without dropout
    the per-step losses and the trained weights equal the padded run's (fp32 rounding aside),
    and predict(pack=True) gives the padded logits."""
    import json
    from pathlib import Path

    from unimask.finetune import Example, FinetuneConfig, LabelMap, SequenceClassifier, finetune_classifier
    from unimask.finetune.trainer import predict
    from unimask.tokenizer import WordPieceTokenizer

    tok = WordPieceTokenizer.from_pretrained(minilm_dir)
    fix = Path(__file__).parent / "fixtures" / "finetune" / "fortunes_train.jsonl"
    rows = [json.loads(x) for x in fix.read_text().splitlines()[:24]]
    data = [Example(r["text"], None, r["label"], i + 1) for i, r in enumerate(rows)]
    lm = LabelMap.from_examples(data)
    runs = {}
    for pack in (False, True):
        torch.manual_seed(5)
        cfg_enc = EncoderConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                                attention_probs_dropout_prob=0.0)
        model = SequenceClassifier(cfg_enc, lm)
        cfg = FinetuneConfig(epochs=2, batch_size=8, max_length=48, lr=1e-3, seed=3, pack=pack)
        result = finetune_classifier(model, tok, data, cfg, eval_examples=data[:10])
        runs[pack] = ([h["loss"] for h in result["history"]], model, result["eval"])
    np.testing.assert_allclose(runs[True][0], runs[False][0], rtol=1e-4)
    for (n, a), (_, b) in zip(runs[True][1].named_parameters(), runs[False][1].named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=n)
    assert runs[True][2]["accuracy"] == runs[False][2]["accuracy"]
    model = runs[False][1]
    torch.testing.assert_close(predict(model, tok, data, 48, batch_size=7, pack=True),
                               predict(model, tok, data, 48, batch_size=7), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="pack=True does not combine"):
        FinetuneConfig(pack=True, aux_lm_weight="siatl")


def test_pack_padded_per_token_labels_pad_with_ignore_index():
    """Tagging batches carry labels per token: packed, the padding must stay unscored (-100)."""
    from unimask.packing import pack_padded

    b = _padded_batch(10, 16, seed=3)
    b["labels"] = torch.where(b["attention_mask"] == 1, torch.randint(0, 5, (10, 16)), torch.full((10, 16), -100))
    p = pack_padded(b, max_length=32)
    flat = p["labels"].reshape(-1)
    covered = torch.zeros_like(flat, dtype=torch.bool)
    for i in range(10):
        s, n = int(p["doc_starts"][i]), int(p["doc_lengths"][i])
        assert torch.equal(flat[s:s + n], b["labels"][i, :n])
        covered[s:s + n] = True
    assert (flat[~covered] == -100).all()


# --------------------------------------------------------------------------------------------
# UNILM: each document collated alone (its own mode), then packed
# --------------------------------------------------------------------------------------------
def _pairs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a = [rng.randrange(5, 100) for _ in range(rng.randrange(2, 14))]
        b = [rng.randrange(5, 100) for _ in range(rng.randrange(1, 10))] if rng.random() < 0.8 else None
        out.append({"segment_a": a, "segment_b": b, "next_sentence_label": rng.randrange(2), "index": 100 + i})
    return out


@pytest.mark.parametrize("pad_to_max_length", [False, True])
def test_unilm_packing_keeps_every_document_as_collated_alone(pad_to_max_length):
    """Oracle: the same UnifiedLMCollator on the unpacked samples. Each sample's tokens, labels,
    segment ids, mode, source length and NSP label are where doc_starts says, unchanged; the
    rows' padding documents are bidirectional and unscored."""
    samples = _pairs(30, seed=1)
    alone = UnifiedLMCollator(**IDS, seed=7)(samples)
    b = PackingCollator(UnifiedLMCollator(**IDS, seed=7), max_length=40, pad_to_max_length=pad_to_max_length)(samples)
    R, W = b["input_ids"].shape
    assert W == 40 if pad_to_max_length else W <= 40
    assert R < len(samples) and int(b["cu_seqlens"][-1]) == R * W
    assert set(alone["attn_mode"].tolist()) == {0, 1, 2, 3}  # every mode in the batch
    flat = {k: b[k].reshape(-1) for k in ("input_ids", "labels", "token_type_ids")}
    cu = b["cu_seqlens"]
    seg_of = torch.searchsorted(cu[1:], b["doc_starts"], right=True)
    covered = torch.zeros(R * W, dtype=torch.bool)
    for i in range(len(samples)):
        n, s0 = int(alone["seq_len"][i]), int(b["doc_starts"][i])
        assert int(b["doc_lengths"][i]) == n and int(cu[seg_of[i]]) == s0 and int(cu[seg_of[i] + 1]) == s0 + n
        for k in flat:
            assert torch.equal(flat[k][s0:s0 + n], alone[k][i, :n].to(flat[k].dtype)), (k, i)
        assert int(b["attn_mode"][seg_of[i]]) == int(alone["attn_mode"][i])
        assert int(b["src_len"][seg_of[i]]) == int(alone["src_len"][i])
        covered[s0:s0 + n] = True
    assert torch.equal(b["next_sentence_label"], alone["next_sentence_label"])
    padding = sorted(set(range(len(cu) - 1)) - set(seg_of.tolist()))
    assert len(padding) == R and all(int(b["attn_mode"][d]) == 0 for d in padding)
    assert (flat["labels"][~covered] == -100).all() and (flat["input_ids"][~covered] == IDS["pad_id"]).all()
    assert b["num_tokens"].sum() == alone["seq_len"].sum() and b["num_documents"].sum() == len(samples)
    with pytest.raises(ValueError, match="sample 0 has 22 tokens with its special tokens, more than a row's 20"):
        PackingCollator(UnifiedLMCollator(**IDS), max_length=20)([{"input_ids": list(range(5, 25))}])


def test_packed_unilm_model_equals_the_padded_batch():
    """UnifiedLM on the packed batch vs the same collated samples padded: the same MLM targets,
    logits and loss, the same NSP logits per sample (each at its own [CLS]) and NSP loss (only
    bidirectional samples count), in fp64."""
    torch.manual_seed(0)
    cfg = EncoderConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, type_vocab_size=6,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = UnifiedLM(cfg).double().eval()
    samples = _pairs(24, seed=3)
    alone = UnifiedLMCollator(**IDS, seed=2)(samples)
    packed_batch = PackingCollator(UnifiedLMCollator(**IDS, seed=2), max_length=48)(samples)
    with torch.no_grad():
        padded = model(**alone)
        packed = model(**packed_batch)
    assert packed.nsp_logits.shape == (len(samples), 2)
    torch.testing.assert_close(packed.nsp_logits, padded.nsp_logits, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(packed.nsp_loss, padded.nsp_loss, rtol=1e-9, atol=1e-9)
    # MLM targets come out in flattened order; in both layouts the samples keep their order only
    # within a row, so compare the (target, logits) pairs sorted by each sample's position
    order = lambda starts, lens: torch.cat([torch.arange(int(s), int(s) + int(n)) for s, n in zip(starts, lens)])  # noqa: E731
    L = alone["input_ids"].shape[1]
    pos_packed = order(packed_batch["doc_starts"], alone["seq_len"])
    pos_padded = order(torch.arange(len(samples)) * L, alone["seq_len"])
    lab_p = packed_batch["labels"].reshape(-1)[pos_packed]
    assert torch.equal(lab_p, alone["labels"].reshape(-1)[pos_padded])
    rank_p = torch.empty(packed_batch["labels"].numel(), dtype=torch.long)
    rank_p[pos_packed] = torch.arange(len(pos_packed))
    rank_d = torch.empty(alone["labels"].numel(), dtype=torch.long)
    rank_d[pos_padded] = torch.arange(len(pos_padded))
    sel_p = (packed_batch["labels"].reshape(-1) != -100).nonzero().flatten()
    sel_d = (alone["labels"].reshape(-1) != -100).nonzero().flatten()
    torch.testing.assert_close(packed.mlm_logits[rank_p[sel_p].argsort()], padded.mlm_logits[rank_d[sel_d].argsort()],
                               rtol=1e-9, atol=1e-9)
    # the loss is a float32 mean over the same terms in another order
    torch.testing.assert_close(packed.mlm_loss, padded.mlm_loss, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="need doc_starts"):
        model(**{k: v for k, v in packed_batch.items() if k != "doc_starts"})
