"""Collators: output contract, structure against naive Python versions, determinism,
pickling and error messages."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

import unimask.masks as M
from unimask.collators import (
    CausalLMCollator,
    MASSCollator,
    MLMCollator,
    NSPPairBuilder,
    T5SpanCollator,
    UnifiedLMCollator,
    continuation_ids_from_vocab,
)

V, PAD, UNK, CLS, SEP, MASK = 30522, 0, 100, 101, 102, 103
IDS = dict(vocab_size=V, pad_id=PAD, unk_id=UNK, cls_id=CLS, sep_id=SEP, mask_id=MASK)


@pytest.fixture(scope="module")
def tok(minilm_dir):
    from tokenizers import Tokenizer

    t = Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    t.no_padding()
    t.no_truncation()
    return t


@pytest.fixture(scope="module")
def sentences():
    from unimask.corpus import demo_corpus_path, read_documents

    return [s for d in read_documents(demo_corpus_path("en")) for s in d][:300]


def rand_seqs(n, lo=3, hi=40, seed=0, specials=True):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        body = rng.integers(1000, 30000, int(rng.integers(lo, hi)))
        out.append(np.concatenate([[CLS], body, [SEP]]) if specials else body)
    return out


class FakeTokenizer:
    vocab_size = V
    pad_id, unk_id, cls_id, sep_id, mask_id = PAD, UNK, CLS, SEP, MASK


# ------------------------------------------------------------------------------------------
# contract


def test_mlm_contract_dtypes_shapes_and_padding():
    seqs = rand_seqs(5)
    out = MLMCollator(tokenizer=FakeTokenizer(), pad_to_multiple_of=8)(seqs)
    B, L = 5, max(len(s) for s in seqs)
    L = -(-L // 8) * 8
    assert set(out) == {"input_ids", "attention_mask", "token_type_ids", "labels", "seq_len"}
    for k in ("input_ids", "attention_mask", "token_type_ids", "labels"):
        assert out[k].dtype == torch.int64 and out[k].shape == (B, L), k
    assert out["seq_len"].dtype == torch.int32 and out["seq_len"].tolist() == [len(s) for s in seqs]
    for r, s in enumerate(seqs):
        n = len(s)
        assert out["attention_mask"][r].tolist() == [1] * n + [0] * (L - n)
        assert (out["token_type_ids"][r] == 0).all()
        lab = out["labels"][r].numpy()
        inp = out["input_ids"][r].numpy()
        # unmasked positions are untouched, labels hold the originals
        keep = lab == -100
        assert (inp[:n][keep[:n]] == s[keep[:n]]).all()
        assert (lab[~keep] == s[~keep[:n]]).all()


def test_mlm_matches_hf_collator_structure(minilm_dir, tok, sentences):
    """Same padding / attention / label convention as transformers' collator (Bernoulli mode)."""
    from transformers import BertTokenizerFast, DataCollatorForLanguageModeling

    hf_tok = BertTokenizerFast(tokenizer_file=str(minilm_dir / "tokenizer.json"))
    enc = [e.ids for e in tok.encode_batch(sentences[:64])]
    hf = DataCollatorForLanguageModeling(hf_tok, mlm_probability=0.15, seed=0)([{"input_ids": e} for e in enc])
    ours = MLMCollator(tokenizer=hf_tok, exact_count=False)(enc)
    assert ours["input_ids"].shape == hf["input_ids"].shape
    assert torch.equal(ours["attention_mask"], hf["attention_mask"])
    for out in (ours, hf):
        pad = out["attention_mask"] == 0
        assert (out["labels"][pad] == -100).all() and (out["input_ids"][pad] == PAD).all()
        assert ((out["labels"] != -100) == (out["labels"] >= 0)).all()


def test_unilm_contract_and_dense_mask_agrees_with_sep_positions():
    rng = np.random.default_rng(3)
    pairs = [(rng.integers(1000, 2000, int(rng.integers(1, 12))), rng.integers(1000, 2000, int(rng.integers(1, 12)))) for _ in range(64)]
    pairs += [(rng.integers(1000, 2000, 5),) for _ in range(8)]  # single segments
    c = UnifiedLMCollator(**IDS, seed=1)
    out = c([p if len(p) == 2 else p[0] for p in pairs])
    B, L = out["input_ids"].shape
    assert out["attn_mode"].dtype == torch.int8 and out["src_len"].dtype == torch.int32
    assert out["seq_len"].dtype == torch.int32 and out["next_sentence_label"].dtype == torch.int64
    assert (out["next_sentence_label"] == -100).all()  # no labels given
    dense = M.dense_mask(out["attn_mode"], out["src_len"], out["seq_len"], L)
    type_of = {0: (0, 1), 1: (2, 2), 2: (3, 3), 3: (4, 5)}
    for r in range(B):
        ids = out["input_ids"][r].tolist()
        mode, n = int(out["attn_mode"][r]), int(out["seq_len"][r])
        seps = [i for i, t in enumerate(ids[:n]) if t == SEP]
        assert ids[0] == CLS and seps[-1] == n - 1
        src = seps[0] + 1  # oracle: where the first [SEP] is
        assert int(out["src_len"][r]) == src
        if len(pairs[r]) == 1:
            assert mode != 3 and len(seps) == 1
        ta, tb = type_of[mode]
        assert out["token_type_ids"][r, :src].eq(ta).all() and out["token_type_ids"][r, src:n].eq(tb).all()
        expect = torch.tensor([[M.allowed(mode, src, n, i, j) for j in range(L)] for i in range(L)])
        assert torch.equal(dense[r], expect)


def test_unilm_nsp_label_only_for_bidirectional():
    rng = np.random.default_rng(0)
    items = [{"segment_a": rng.integers(1000, 2000, 6), "segment_b": rng.integers(1000, 2000, 6), "next_sentence_label": i % 2} for i in range(200)]
    out = UnifiedLMCollator(**IDS)(items)
    bid = out["attn_mode"] == 0
    assert torch.equal(out["next_sentence_label"][bid], torch.tensor([i % 2 for i in range(200)])[bid])
    assert (out["next_sentence_label"][~bid] == -100).all()


def test_type_ids_are_configurable():
    c = UnifiedLMCollator(**IDS, mode_weights=[0, 1, 0, 0], type_ids=[(0, 1), (7, 7), (3, 3), (4, 5)])
    out = c([([1000, 1001], [1002])])
    assert (out["token_type_ids"][0, :5] == 7).all()


@pytest.mark.parametrize("eos", [False, True])
def test_seq2seq_target_eos_is_masked_only_when_asked(eos):
    # [CLS] a a a [SEP] b b b b [SEP]: the target's 4 tokens and, with mask_target_eos, its final
    # [SEP] (UNILM section 3: the model learns when to stop) are the candidates; the budget is
    # round(4 * 0.5) = 2, so over 400 samples the EOS is drawn about 2/5 of the time (2/5 * 400
    # = 160, sd ~10). Nothing else special is ever a label.
    c = UnifiedLMCollator(**IDS, mode_weights=[0, 0, 0, 1], mlm_probability=0.5, mask_target_eos=eos, seed=5)
    out = c([([1000, 1001, 1002], [1003, 1004, 1005, 1006])] * 400, indices=range(400))
    labels, ids = out["labels"], out["input_ids"]
    assert (labels[:, :5] == -100).all()
    assert ((labels != -100).sum(1) == 2).all()
    eos_hit = labels[:, 9] != -100
    if eos:
        assert 100 < int(eos_hit.sum()) < 220
        assert (labels[eos_hit, 9] == SEP).all()
        assert (ids[eos_hit, 9] == MASK).float().mean() > 0.6  # 80% [MASK]
    else:
        assert not eos_hit.any() and (ids[:, 9] == SEP).all()


# ------------------------------------------------------------------------------------------
# whole words, entities


def test_whole_words_from_vocab_match_tokenizer_word_ids(minilm_dir, tok, sentences):
    encs = tok.encode_batch(sentences[:200])
    with_ids = [{"input_ids": e.ids, "word_ids": e.word_ids} for e in encs]
    plain = [e.ids for e in encs]
    a = MLMCollator(**IDS, whole_word=True, seed=3)(with_ids)
    b = MLMCollator(**IDS, whole_word=True, vocab=minilm_dir / "vocab.txt", seed=3)(plain)
    # English WordPiece: words = a piece plus its ## continuations, except where the
    # pre-tokenizer splits a word into several "words" without ## (punctuation): compare masks
    # only on sentences whose two segmentations agree.
    cont = set(continuation_ids_from_vocab(minilm_dir / "vocab.txt").tolist())
    agree = 0
    for r, e in enumerate(encs):
        w = np.array([-1 if x is None else x for x in e.word_ids])
        starts = np.array([t not in cont for t in e.ids])
        if all(starts[i] == (w[i] != w[i - 1]) for i in range(2, len(w) - 1)):
            agree += 1
            assert torch.equal(a["labels"][r], b["labels"][r])
    assert agree > 150


def test_entity_spans_are_masked_as_units():
    rng = np.random.default_rng(5)
    items = []
    for _ in range(300):
        s = np.concatenate([[CLS], rng.integers(1000, 2000, 30), [SEP]])
        items.append({"input_ids": s, "entity_spans": [(3, 9), (12, 15)]})
    out = MLMCollator(**IDS, mlm_probability=0.3)(items)
    m = (out["labels"] != -100).numpy()
    hit = 0
    for r in range(300):
        for s, e in [(3, 9), (12, 15)]:
            assert m[r, s:e].all() or not m[r, s:e].any()
            hit += m[r, s:e].all()
    assert hit > 0


def test_pairs_and_nsp_labels(tok, sentences):
    docs = [[tok.encode(s).ids[1:-1] for s in sentences[i : i + 6]] for i in range(0, 300, 6)]
    pairs = NSPPairBuilder(max_seq_length=48, seed=2).build(docs)
    out = MLMCollator(**IDS, max_length=48, truncation=True)(pairs)
    assert torch.equal(out["next_sentence_label"], torch.tensor([p["next_sentence_label"] for p in pairs]))
    for r, p in enumerate(pairs):
        la, lb = len(p["segment_a"]), len(p["segment_b"])
        n = la + lb + 3
        assert int(out["seq_len"][r]) == n <= 48
        ids = out["input_ids"][r]
        assert ids[0] == CLS and ids[la + 1] == SEP and ids[n - 1] == SEP
        assert out["token_type_ids"][r, : la + 2].eq(0).all() and out["token_type_ids"][r, la + 2 : n].eq(1).all()
        orig = np.concatenate([[CLS], p["segment_a"], [SEP], p["segment_b"], [SEP]])
        lab = out["labels"][r, :n].numpy()
        restored = np.where(lab != -100, lab, ids[:n].numpy())
        assert (restored == orig).all()


def test_sentence_order_prediction_swaps():
    # chunks of exactly 4 sentences (target 32 tokens): never a single-sentence chunk
    docs = [[[d * 1000 + s * 10 + k for k in range(8)] for s in range(8)] for d in range(1, 60)]
    pairs = NSPPairBuilder(max_seq_length=35, short_seq_prob=0.0, sentence_order=True, seed=1).build(docs)
    assert len(pairs) == 2 * 59
    labels = [p["next_sentence_label"] for p in pairs]
    assert 0.3 < np.mean(labels) < 0.7
    for p in pairs:
        a0, b0 = int(p["segment_a"][0]), int(p["segment_b"][0])
        assert a0 // 1000 == b0 // 1000
        assert (a0 > b0) == (p["next_sentence_label"] == 1)


# ------------------------------------------------------------------------------------------
# causal, MASS, T5 against naive versions


def naive_causal(docs, eos, max_length, pack):
    rows = []
    if pack:
        stream = [t for d in docs for t in list(d) + [eos]]
        rows = [stream[i : i + max_length] for i in range(0, len(stream), max_length)]
    else:
        rows = [(list(d) + [eos])[:max_length] for d in docs]
    L = max(len(r) for r in rows)
    ids = [r + [0] * (L - len(r)) for r in rows]
    labels = [r[1:] + [-100] * (L - len(r) + 1) for r in rows]
    return torch.tensor(ids), torch.tensor(labels)


@pytest.mark.parametrize("pack", [False, True])
def test_causal_matches_naive(pack):
    docs = [list(s) for s in rand_seqs(9, specials=False, seed=4)]
    c = CausalLMCollator(vocab_size=V, pad_id=PAD, eos_id=SEP, max_length=16, truncation=True, pack=pack)
    out = c(docs)
    ids, labels = naive_causal(docs, SEP, 16, pack)
    assert torch.equal(out["input_ids"], ids) and torch.equal(out["labels"], labels)
    assert (out["attn_mode"] == 1).all() and (out["src_len"] == 0).all()
    assert torch.equal(out["seq_len"].long(), out["attention_mask"].sum(1))
    # shifted: loss = CE(logits[:, t], labels[:, t]) predicts the next input
    v = out["labels"] != -100
    assert torch.equal(out["labels"][:, :-1][v[:, :-1]], out["input_ids"][:, 1:][v[:, :-1]])


def test_mass_structure():
    seqs = rand_seqs(50, specials=False, seed=6)
    out = MASSCollator(**IDS, seed=1)(seqs)
    for r, s in enumerate(seqs):
        k = int(out["decoder_len"][r])
        pos = out["decoder_positions"][r, :k].numpy()
        start = pos[0]
        assert (pos == np.arange(start, start + k)).all()
        assert (out["decoder_labels"][r, :k].numpy() == s[start : start + k]).all()
        assert out["decoder_input_ids"][r, 0] == MASK
        assert (out["decoder_input_ids"][r, 1:k].numpy() == s[start : start + k - 1]).all()
        assert (out["decoder_labels"][r, k:] == -100).all()


def test_t5_inputs_and_targets_reconstruct_the_text():
    seqs = rand_seqs(40, specials=False, seed=7, lo=2, hi=80)
    out = T5SpanCollator(vocab_size=V, eos_id=SEP, pad_id=PAD, seed=1)(seqs)
    for r, s in enumerate(seqs):
        inp = out["input_ids"][r, : out["seq_len"][r]].tolist()[:-1]
        lab = out["labels"][r, : out["labels_len"][r]].tolist()[:-1]
        spans, cur = {}, None
        for t in lab:
            if t >= V - 100:
                cur = t
                spans[cur] = []
            else:
                spans[cur].append(t)
        rebuilt = [x for t in inp for x in (spans[t] if t >= V - 100 else [t])]
        assert rebuilt == s.tolist()
        assert out["decoder_input_ids"][r, 0] == PAD
        assert out["decoder_input_ids"][r, 1 : out["labels_len"][r]].tolist() == out["labels"][r, : out["labels_len"][r] - 1].tolist()


# ------------------------------------------------------------------------------------------
# determinism, epochs, threads, pickling


def test_same_seed_epoch_index_same_masks_for_any_threads_and_batching():
    seqs = rand_seqs(200, seed=8)
    idx = np.arange(1000, 1200)
    a = MLMCollator(**IDS, seed=4, num_threads=1)(seqs, indices=idx)
    b = MLMCollator(**IDS, seed=4, num_threads=2)(seqs, indices=idx)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # A batch large enough to be split over threads (>= MIN_PARALLEL_WORK padded tokens).
    big = rand_seqs(640, lo=300, hi=480, seed=18)
    big_idx = np.arange(640)
    one = MLMCollator(**IDS, seed=4, num_threads=1)(big, indices=big_idx)
    assert one["input_ids"].numel() >= 1 << 18  # rust/core masking::MIN_PARALLEL_WORK
    for threads in (2, 3):
        many = MLMCollator(**IDS, seed=4, num_threads=threads)(big, indices=big_idx)
        assert all(torch.equal(one[k], many[k]) for k in one)
    # the mask of a sample depends on its index only, not on its batch-mates
    c = MLMCollator(**IDS, seed=4)(seqs[10:12], indices=idx[10:12])
    n = int(c["seq_len"][0])
    assert torch.equal(c["labels"][0, :n], a["labels"][10, :n])
    d = MLMCollator(**IDS, seed=5)(seqs, indices=idx)
    assert not torch.equal(a["labels"], d["labels"])


def test_set_epoch_gives_fresh_masks_and_is_reproducible():
    seqs = rand_seqs(64, seed=9)
    c = MLMCollator(**IDS, seed=1)
    e0 = c(seqs, indices=range(64))
    c.set_epoch(1)
    e1 = c(seqs, indices=range(64))
    c.set_epoch(0)
    again = c(seqs, indices=range(64))
    assert not torch.equal(e0["labels"], e1["labels"])
    assert torch.equal(e0["labels"], again["labels"])


def test_running_counter_without_indices():
    seqs = rand_seqs(8, seed=10)
    c = MLMCollator(**IDS, seed=1)
    first, second = c(seqs[:4]), c(seqs[4:])
    ref = MLMCollator(**IDS, seed=1)(seqs, indices=range(8))
    n = ref["labels"].shape[1]
    assert torch.equal(second["labels"][:, : min(n, second["labels"].shape[1])], ref["labels"][4:, : second["labels"].shape[1]])
    c.set_epoch(0)  # restarts the counter
    assert torch.equal(c(seqs[:4])["labels"], first["labels"])


@pytest.mark.parametrize(
    "make",
    [
        lambda: MLMCollator(**IDS, whole_word=True, vocab=[f"##t{i}" if i % 3 else f"t{i}" for i in range(V)], seed=3),
        lambda: MLMCollator(**IDS, span="geometric", seed=3),
        lambda: UnifiedLMCollator(**IDS, seed=3),
        lambda: MASSCollator(**IDS, seed=3),
        lambda: T5SpanCollator(vocab_size=V, eos_id=SEP, pad_id=PAD, seed=3),
        lambda: CausalLMCollator(vocab_size=V, pad_id=PAD, eos_id=SEP),
    ],
)
def test_pickling_preserves_behaviour(make):
    c = make()
    if hasattr(c, "set_epoch"):
        c.set_epoch(2)
    seqs = rand_seqs(6, seed=11, specials=False)
    c2 = pickle.loads(pickle.dumps(c))
    a, b = c(seqs, indices=range(6)), c2(seqs, indices=range(6))
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------
# errors


def test_errors_name_the_offending_value():
    c = MLMCollator(**IDS)
    with pytest.raises(ValueError, match="sample 1 is an empty sequence"):
        c([[CLS, 2000, SEP], []])
    with pytest.raises(ValueError, match="30522"):
        c([[CLS, 30522, SEP]])
    with pytest.raises(ValueError, match="-5"):
        c([[CLS, -5, SEP]])
    with pytest.raises(TypeError, match="float"):
        c([np.array([1.0, 2.0])])
    with pytest.raises(ValueError, match="max_length = 4"):
        MLMCollator(**IDS, max_length=4)([[CLS, 2000, 2001, 2002, SEP]])
    out = MLMCollator(**IDS, max_length=4, truncation=True)([[CLS, 2000, 2001, 2002, SEP]])
    assert out["seq_len"].tolist() == [4]
    with pytest.raises(ValueError, match="1.5"):
        MLMCollator(**IDS, mlm_probability=1.5)
    with pytest.raises(ValueError, match="-0.1"):
        MLMCollator(**IDS, mlm_probability=-0.1)
    with pytest.raises(ValueError, match="mask_ratio \\+ random_ratio"):
        MLMCollator(**IDS, mask_ratio=0.8, random_ratio=0.3)
    with pytest.raises(ValueError, match="mask_id"):
        MLMCollator(vocab_size=V, pad_id=PAD, cls_id=CLS, sep_id=SEP)
    with pytest.raises(ValueError, match="vocab_size"):
        MLMCollator(mask_id=MASK, pad_id=PAD, cls_id=CLS, sep_id=SEP)
    with pytest.raises(ValueError, match="40000"):
        MLMCollator(**{**IDS, "mask_id": 40000})
    with pytest.raises(ValueError, match="span"):
        MLMCollator(**IDS, span="poisson")
    with pytest.raises(ValueError, match="exact_count"):
        MLMCollator(**IDS, span="geometric", exact_count=False)
    with pytest.raises(ValueError, match="word_ids of sample 0 has 2 entries for 3 tokens"):
        MLMCollator(**IDS, whole_word=True)([{"input_ids": [CLS, 2000, SEP], "word_ids": [None, 0]}])
    with pytest.raises(ValueError, match="entity span"):
        c([{"input_ids": [CLS, 2000, SEP], "entity_spans": [(2, 9)]}])
    with pytest.raises(ValueError, match="mixes pairs"):
        c([([2000], [2001]), [CLS, 2000, SEP]])
    with pytest.raises(TypeError, match="seed"):
        MLMCollator(**IDS, seed=1.5)
    with pytest.raises(ValueError, match="empty batch"):
        c([])
    with pytest.raises(ValueError, match="weight"):
        UnifiedLMCollator(**IDS, mode_weights=[0, 0, 0, 0])
    with pytest.raises(ValueError, match="no segment B"):
        UnifiedLMCollator(**IDS, mode_weights=[0, 0, 0, 1])([[2000, 2001]])
    with pytest.raises(ValueError, match="pack=True needs max_length"):
        CausalLMCollator(vocab_size=V, pad_id=PAD, pack=True)
    with pytest.raises(ValueError, match="eos_id"):
        T5SpanCollator(vocab_size=V, pad_id=PAD)
    with pytest.raises(ValueError, match="sentinel"):
        T5SpanCollator(vocab_size=50, eos_id=1, pad_id=0, first_sentinel_id=2)([list(range(10, 40)) * 3])
    with pytest.raises(ValueError, match="start_prob"):
        MASSCollator(**IDS, start_prob=0.7, end_prob=0.5)
    with pytest.raises(ValueError, match="max_seq_length"):
        NSPPairBuilder(max_seq_length=3)
    with pytest.raises(TypeError, match="list of sentences"):
        NSPPairBuilder().build([[1, 2, 3]])


def test_chinese_whole_word_masking_with_a_segmenter(tok):
    """jieba words over BERT's single-character Chinese tokens are masked as units."""
    jieba = pytest.importorskip("jieba", reason="jieba (the Chinese segmenter of this test) is not installed")
    import logging

    from unimask.collators import word_ids_from_char_spans
    from unimask.corpus import demo_corpus_path, read_documents

    jieba.setLogLevel(logging.WARNING)
    texts = [s for d in read_documents(demo_corpus_path("zh")) for s in d][:200]
    items, multi = [], 0
    for t in texts:
        enc = tok.encode(t)
        spans = [(s, e) for _, s, e in jieba.tokenize(t)]
        words = word_ids_from_char_spans(enc.offsets, spans)
        # oracle: a token's word is the jieba span containing its first character
        for (s, e), w in zip(enc.offsets, words):
            if e > s:
                assert w is not None and spans[w][0] <= s < spans[w][1]
        multi += sum(1 for s, e in spans if e - s > 1)
        items.append({"input_ids": enc.ids, "word_ids": words})
    assert multi > 100
    out = MLMCollator(**IDS, whole_word=True, mlm_probability=0.3, seed=2)(items)
    m = (out["labels"] != -100).numpy()
    whole = 0
    for r, it in enumerate(items):
        w = np.array([-1 if x is None else x for x in it["word_ids"]])
        ids = np.asarray(it["input_ids"])
        for word in np.unique(w[w >= 0]):
            pos = np.nonzero(w == word)[0]
            if (ids[pos] == UNK).any():
                continue  # [UNK] is special: never masked, it splits its word
            assert m[r, pos].all() or not m[r, pos].any()
            whole += len(pos) > 1 and m[r, pos].all()
    assert whole > 20


def test_whole_word_without_words_is_an_error_not_token_masking():
    c = MLMCollator(**IDS, whole_word=True)
    with pytest.raises(ValueError, match="word ids"):
        c([np.array([CLS, 2000, 2001, SEP])])
    with pytest.raises(ValueError, match="word ids"):
        c([[CLS, 2000, 2001, SEP]])
    with pytest.raises(ValueError, match="special"):
        MASSCollator(vocab_size=2, pad_id=0, mask_id=1)([[0, 1, 0]])


def test_input_formats_give_identical_batches(tok, sentences):
    """int64 / uint32 / uint16 arrays, lists, tokenizer Encodings and a ragged batch object
    (flat columns + row_splits, as unimask.tokenizer's RaggedBatch) are the same batch."""
    from dataclasses import dataclass

    encs = tok.encode_batch(sentences[:40])
    idx = np.arange(40)
    c = MLMCollator(**IDS, whole_word=True, seed=6)
    ref = c([{"input_ids": np.asarray(e.ids, dtype=np.int64), "word_ids": e.word_ids} for e in encs], indices=idx)

    @dataclass
    class Ragged:
        ids_flat: np.ndarray
        word_ids_flat: np.ndarray
        row_splits: np.ndarray

    splits = np.concatenate([[0], np.cumsum([len(e.ids) for e in encs])])
    ragged = Ragged(
        np.concatenate([np.asarray(e.ids, dtype=np.uint32) for e in encs]),
        np.concatenate([np.asarray([-1 if w is None else w for w in e.word_ids], dtype=np.int32) for e in encs]),
        splits,
    )
    variants = [
        c(encs, indices=idx),  # HF tokenizers Encoding objects: .ids and .word_ids
        c(ragged, indices=idx),
        c([{"input_ids": list(e.ids), "word_ids": e.word_ids} for e in encs], indices=idx),
        c([{"input_ids": np.asarray(e.ids, dtype=np.uint32), "word_ids": np.asarray([-1 if w is None else w for w in e.word_ids], dtype=np.int32)} for e in encs], indices=idx),
    ]
    for out in variants:
        assert all(torch.equal(out[k], ref[k]) for k in ref)
    plain = MLMCollator(**IDS, seed=6)
    base = plain([np.asarray(e.ids, dtype=np.int64) for e in encs], indices=idx)
    for dtype in (np.uint16, np.int32, np.uint32):
        out = plain([np.asarray(e.ids, dtype=dtype) for e in encs], indices=idx)
        assert all(torch.equal(out[k], base[k]) for k in base)
    out = MASSCollator(**IDS, seed=1)(ragged, indices=idx)
    assert out["input_ids"].shape[0] == 40


def test_unimask_tokenizer_plugs_in(minilm_dir, sentences):
    """The project's own WordPiece tokenizer: its ids, word ids and ragged batches."""
    tokmod = pytest.importorskip("unimask.tokenizer", reason="unimask.tokenizer is built on another branch")
    t = tokmod.WordPieceTokenizer.from_pretrained(minilm_dir)
    c = MLMCollator(tokenizer=t, whole_word=True, seed=1)
    assert (c.vocab_size, c.cls_id, c.sep_id, c.pad_id, c.mask_id) == (V, CLS, SEP, PAD, MASK)
    batch = t.encode_batch(sentences[:16])
    a = c(batch, indices=range(16))
    b = c([batch[i] for i in range(16)], indices=range(16))
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------
# MASS / T5: max_length without truncation is an error; T5 ids and sentinels


@pytest.mark.parametrize("kind", ["mass", "t5"])
def test_mass_t5_long_samples_raise_unless_truncation(kind):
    seqs = rand_seqs(6, specials=False, seed=11, lo=3, hi=30)
    long = next(i for i, s in enumerate(seqs) if len(s) > 12)
    if kind == "mass":
        make = lambda **kw: MASSCollator(**IDS, seed=3, **kw)  # noqa: E731
        keep = 12  # MASS keeps max_length tokens
    else:
        make = lambda **kw: T5SpanCollator(vocab_size=V, eos_id=SEP, pad_id=PAD, seed=3, **kw)  # noqa: E731
        keep = 11  # T5 keeps max_length - 1 tokens, the EOS takes the last place
    with pytest.raises(ValueError, match=rf"sample {long} has {len(seqs[long])} tokens, more than max_length.*truncation=True"):
        make(max_length=12)(seqs, indices=range(6))
    # truncation=True: the same batch as the samples cut by hand (same indices, same masks)
    got = make(max_length=12, truncation=True)(seqs, indices=range(6))
    want = make()([s[:keep] for s in seqs], indices=range(6))
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    # short enough: no truncation needed
    short = [s[:keep] for s in seqs]
    assert all(torch.equal(make(max_length=12)(short, indices=range(6))[k], want[k]) for k in want)


def test_t5_ids_are_validated():
    T5 = dict(vocab_size=1000, pad_id=0, eos_id=1)
    with pytest.raises(ValueError, match="decoder_start_id 1000000 is outside the vocabulary"):
        T5SpanCollator(**T5, decoder_start_id=10**6)
    with pytest.raises(ValueError, match="first_sentinel_id 1 is also the eos_id"):
        T5SpanCollator(**T5, first_sentinel_id=1)
    with pytest.raises(ValueError, match="first_sentinel_id 7 is also the decoder_start_id"):
        T5SpanCollator(**T5, first_sentinel_id=7, decoder_start_id=7)
    # 40 tokens: round(6 / 3) = 2 noise spans, sentinels 2 and 1 -- 1 is the eos_id
    with pytest.raises(ValueError, match="sample 0 .*2 sentinel ids, 2 down to 1, which include eos_id 1"):
        T5SpanCollator(**T5, first_sentinel_id=2)([list(range(200, 240))], indices=[0])
    # a row needing 5 sentinels (100 tokens: 15 noise, 5 spans) from 5 reaches 1 = eos_id
    c = T5SpanCollator(**T5, first_sentinel_id=5)
    with pytest.raises(ValueError, match="sample 1 .*5 sentinel ids, 5 down to 1"):
        c([list(range(200, 240)), list(range(200, 300))], indices=[0, 1])
    out = c([list(range(200, 240)), list(range(200, 280))], indices=[0, 1])  # 2 and 4 spans: 5..2
    lab = out["labels"]
    sentinels = set(lab[(lab >= 0) & (lab < 200)].tolist()) - {1}
    assert sentinels == {5, 4, 3, 2}
    assert not ((out["input_ids"] == 1).sum(1) != 1).any()  # eos only at the end of each row


# ------------------------------------------------------------------------------------------
# malformed inputs: ragged batches, NSP labels, bools, uint64, floats, 64-bit seeds


class _RB:
    def __init__(self, ids, splits, words=None):
        self.ids_flat, self.row_splits, self.word_ids_flat = ids, splits, words


@pytest.mark.parametrize(
    "ids, splits, words, err, match",
    [
        ([CLS, 5, SEP, CLS, 6, 7, SEP], [0, 3], None, ValueError, r"end at len\(ids_flat\) = 7, got \[0, 3\]"),
        ([CLS, 5, SEP, CLS, 6, 7, SEP], [3, 7], None, ValueError, r"start at 0.*got \[3, 7\]"),
        ([CLS, 5, SEP], [0, 3, 1, 3], None, ValueError, r"never decrease.*got \[0, 3, 1, 3\]"),
        ([CLS, 5, SEP], [0], None, ValueError, r">= 2 entries"),
        ([CLS, 5.7, SEP], [0, 3], None, TypeError, r"ids_flat must be an integer array, got dtype float64"),
        ([CLS, 5, SEP], [0, 1.9, 3], None, TypeError, r"row_splits must be an integer array, got dtype float64"),
        ([CLS, 5, SEP], [0, 3], [0], ValueError, r"word_ids_flat has 1 entries for 3 ids"),
        ([CLS, 5, SEP], [0, 3], [0.0, 1.0, 2.0], TypeError, r"word_ids_flat must be an integer array"),
    ],
)
def test_malformed_ragged_batches_raise(ids, splits, words, err, match):
    rb = _RB(np.array(ids), np.array(splits), None if words is None else np.array(words))
    for c in (MLMCollator(**IDS, whole_word=words is not None), MASSCollator(**IDS)):
        with pytest.raises(err, match=match):
            c(rb)


def test_well_formed_ragged_batch_equals_the_list_of_rows():
    rows = rand_seqs(5, seed=12)
    splits = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
    rb = _RB(np.concatenate(rows).astype(np.uint16), splits.astype(np.int32))
    c = MLMCollator(**IDS, seed=2)
    a, b = c(rb, indices=range(5)), c(rows, indices=range(5))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("collator", [MLMCollator, UnifiedLMCollator])
def test_next_sentence_labels_are_validated(collator):
    c = collator(**IDS, seed=1)
    ok = c([([5, 6], [7, 8], 0), ([5, 6], [7, 8], 1), ([5, 6], [7, 8], -100), ([5, 6], [7, 8], np.int64(1))], indices=range(4))
    if collator is MLMCollator:
        assert ok["next_sentence_label"].tolist() == [0, 1, -100, 1]
    for bad, err, shown in [(5, ValueError, "got 5"), (-3, ValueError, "got -3"), (2, ValueError, "got 2"),
                            (True, TypeError, "bool True"), (1.0, TypeError, "float 1.0"), ("1", TypeError, "str '1'")]:
        with pytest.raises(err, match=f"next_sentence_label of sample 1 .*{shown}"):
            c([([5, 6], [7, 8], 0), ([5, 6], [7, 8], bad)], indices=range(2))
        with pytest.raises(err, match="next_sentence_label of sample 0"):
            c([{"segment_a": [5, 6], "segment_b": [7, 8], "next_sentence_label": bad}], indices=[0])


def test_bool_ids_uint64_overflow_float_spans_and_64_bit_seeds():
    c = MLMCollator(**IDS)
    with pytest.raises(TypeError, match="input_ids of sample 0 must hold integers, got a bool"):
        c([[True, 5, 6]])
    with pytest.raises(TypeError, match="word_ids of sample 0"):
        MLMCollator(**IDS, whole_word=True)([{"input_ids": [CLS, 5, SEP], "word_ids": [None, False, None]}])
    big = np.array([CLS, 5, 2**63 + 5, SEP], dtype=np.uint64)
    with pytest.raises(ValueError, match="9223372036854775813"):
        c([big])
    with pytest.raises(TypeError, match="entity_spans of sample 0 must be integer"):
        c([{"input_ids": [CLS, 5, 6, 7, SEP], "entity_spans": [(1.0, 3.0)]}])
    with pytest.raises(ValueError, match="seed must be < 18446744073709551616"):
        MLMCollator(**IDS, seed=2**64)
    with pytest.raises(ValueError, match="epoch must be < 18446744073709551616"):
        c.set_epoch(2**64)
    c = MLMCollator(**IDS, seed=2**64 - 1)
    c.set_epoch(2**64 - 1)
    assert c([[CLS, 5, 6, SEP]])["input_ids"].shape == (1, 4)


def test_huge_pad_to_multiple_of_is_a_value_error_not_an_abort():
    """2**40 made the allocation abort the process, 2**62 an InternalError (wrapped length):
    run in a child process so that an abort fails this test instead of killing the run."""
    import subprocess
    import sys

    code = """
import unimask
from unimask.collators import CausalLMCollator, MASSCollator, MLMCollator, T5SpanCollator, UnifiedLMCollator
S = dict(vocab_size=1000, pad_id=0, unk_id=100, cls_id=101, sep_id=102, mask_id=103)
makers = [lambda p: MLMCollator(**S, pad_to_multiple_of=p), lambda p: UnifiedLMCollator(**S, pad_to_multiple_of=p),
          lambda p: MASSCollator(**S, pad_to_multiple_of=p),
          lambda p: T5SpanCollator(vocab_size=1000, pad_id=0, eos_id=1, pad_to_multiple_of=p),
          lambda p: CausalLMCollator(vocab_size=1000, pad_id=0, pad_to_multiple_of=p)]
for p in (2**31, 2**40, 2**62, 2**64 - 1):
    for make in makers:
        try:
            make(p)([[5, 6, 7]] * 4)
            print("NO ERROR", p)
        except ValueError as e:
            assert f"pad_to_multiple_of = {p}" in str(e), str(e)
# within the limits it still pads
out = MLMCollator(**S, pad_to_multiple_of=64)([[5, 6, 7]] * 4)
assert out["input_ids"].shape == (4, 64)
print("OK")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "OK", (r.returncode, r.stdout, r.stderr[-2000:])
