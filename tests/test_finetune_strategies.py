"""Feature extraction, auxiliary LM loss, ULMFiT LM fine-tuning, MT-DNN training and CVT:
each checked on real behaviour (formulas on known tensors, what a step touches, what a view
can see)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from unimask.finetune import (
    CrossViewTagger,
    Example,
    FinetuneConfig,
    FrozenFeatures,
    LabelMap,
    MultiTaskModel,
    ScalarMix,
    SequenceClassifier,
    concat_last_four,
    cvt_consistency_loss,
    finetune_classifier,
    lm_finetune,
    train_cvt,
    train_multitask,
)
from unimask.finetune.trainer import AuxLM
from unimask.models import EncoderConfig, TransformerEncoder
from unimask.tokenizer import WordPieceTokenizer


pytestmark = pytest.mark.usefixtures("one_torch_thread")


FIX = Path(__file__).parent / "fixtures" / "finetune"


def _cfg(**kw):
    base = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    base.update(kw)
    return EncoderConfig(**base)


# -- feature extraction ---------------------------------------------------------------------


def test_scalar_mix_equals_elmo_formula():
    g = torch.Generator().manual_seed(0)
    layers = torch.randn(5, 2, 3, 4, generator=g)
    mix = ScalarMix(5)
    with torch.no_grad():
        mix.weights.copy_(torch.tensor([0.3, -1.0, 2.0, 0.0, 0.5]))
        mix.gamma.fill_(1.7)
    w = np.exp([0.3, -1.0, 2.0, 0.0, 0.5])
    w /= w.sum()
    expected = 1.7 * sum(w[k] * layers[k].numpy() for k in range(5))
    np.testing.assert_allclose(mix(layers).detach().numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mix(list(layers)).detach().numpy(), expected, rtol=1e-5, atol=1e-6)
    # defaults: equal weights, gamma 1 -> the plain mean; weights and gamma are learnable
    plain = ScalarMix(5)
    assert torch.allclose(plain(layers), layers.mean(0), atol=1e-6)
    plain(layers).sum().backward()
    assert plain.weights.grad is not None and plain.gamma.grad is not None
    with pytest.raises(ValueError, match="5 layers"):
        plain(layers[:4])


def test_concat_last_four_order_and_shape():
    layers = [torch.full((2, 3, 4), float(k)) for k in range(7)]
    out = concat_last_four(layers)
    assert out.shape == (2, 3, 16)
    assert out[0, 0].tolist() == [3.0] * 4 + [4.0] * 4 + [5.0] * 4 + [6.0] * 4
    with pytest.raises(ValueError):
        concat_last_four(layers[:3])


def test_frozen_features_equal_encoder_outputs_and_are_cached(minilm_dir, tmp_path):
    enc = TransformerEncoder.from_pretrained(minilm_dir).eval()
    tok = WordPieceTokenizer.from_pretrained(minilm_dir)
    texts = ["Love is blind.", "Real programmers don't eat quiche, they eat what they are told."]
    ff = FrozenFeatures(enc, tok, max_length=32, cache_dir=tmp_path)
    feats = ff.hidden_states(texts)
    assert ff.computed == 2
    for t, f in zip(texts, feats):
        e = tok.encode(t, max_length=32)
        with torch.no_grad():
            ref = enc(torch.from_numpy(e.ids.astype(np.int64))[None], output_hidden_states=True).hidden_states
        assert f.shape == (7, len(e), 384)
        assert torch.allclose(f, torch.stack(ref)[:, 0], atol=1e-5)
    # a second extractor (fresh process state) reads the cache instead of running the encoder
    ff2 = FrozenFeatures(enc, tok, max_length=32, cache_dir=tmp_path)
    again = ff2.hidden_states(texts + ["new text"])
    assert ff2.computed == 1
    assert all(torch.equal(a, b) for a, b in zip(again[:2], feats))
    # different weights -> different cache key
    with torch.no_grad():
        enc.layers[0].fc1.bias.add_(1.0)
    ff3 = FrozenFeatures(enc, tok, max_length=32, cache_dir=tmp_path)
    ff3.hidden_states(texts[:1])
    assert ff3.computed == 1
    # feature-based pipelines: scalar mix over all layers, concat of the last four
    assert ScalarMix(7)(feats[0]).shape == (len(tok.encode(texts[0])), 384)
    assert concat_last_four(feats[0]).shape == (len(tok.encode(texts[0])), 4 * 384)


# -- auxiliary LM loss and ULMFiT step 2 -------------------------------------------------------


def _fortunes(n: int) -> list[Example]:
    rows = [json.loads(x) for x in (FIX / "fortunes_train.jsonl").read_text().splitlines()[:n]]
    return [Example(r["text"], None, r["label"], i + 1) for i, r in enumerate(rows)]


def test_aux_lm_weight_applied_per_step_constant_and_siatl(minilm_dir):
    tok = WordPieceTokenizer.from_pretrained(minilm_dir)
    data = _fortunes(12)
    lm = LabelMap.from_examples(data)
    for weight in (0.5, "siatl"):
        torch.manual_seed(0)
        model = SequenceClassifier(_cfg(vocab_size=tok.vocab_size), lm)
        cfg = FinetuneConfig(epochs=2, batch_size=4, max_length=24, aux_lm_weight=weight, lr=1e-3)
        hist = finetune_classifier(model, tok, data, cfg)["history"]
        T = len(hist)
        assert T == 6
        for h in hist:
            gamma = 0.5 if weight == 0.5 else float(np.exp(np.linspace(-1.6, -2.3, T))[h["step"]])
            assert h["gamma"] == pytest.approx(gamma)
            assert h["lm_loss"] > 0
            assert h["loss"] == pytest.approx(h["task_loss"] + gamma * h["lm_loss"], rel=1e-5)


def test_aux_lm_loss_trains_the_shared_encoder_through_the_mlm_head(minilm_dir):
    tok = WordPieceTokenizer.from_pretrained(minilm_dir)
    torch.manual_seed(0)
    enc = TransformerEncoder(_cfg(vocab_size=tok.vocab_size))
    aux = AuxLM(enc, tok, mlm_probability=0.3, seed=1)
    rows = [torch.from_numpy(tok.encode(e.text, max_length=24).ids.astype(np.int64)) for e in _fortunes(4)]
    loss = aux.loss(rows, [0, 1, 2, 3])
    # an untrained MLM over a 30k vocabulary starts near log(V)
    assert loss.item() == pytest.approx(np.log(tok.vocab_size), rel=0.15)
    loss.backward()
    assert enc.layers[0].fc1.weight.grad is not None and aux.head.transform.weight.grad is not None
    assert not any(p is q for p in aux.parameters() for q in enc.parameters())  # head only


def test_aux_lm_sees_sentence_pairs_as_the_task_forward_does(minilm_dir):
    """SiATL on pairs: the auxiliary LM's encoder call gets the task forward's token types
    (segment B = 1, as the tokenizer lays out a pair) and attention mask, not all-0 types."""
    tok = WordPieceTokenizer.from_pretrained(minilm_dir)
    rows = _fortunes(4)
    data = [Example(a.text, b.text, a.label) for a, b in zip(rows, rows[1:] + rows[:1])]
    torch.manual_seed(0)
    model = SequenceClassifier(_cfg(vocab_size=tok.vocab_size), LabelMap.from_examples(data))
    calls = []
    model.encoder.register_forward_pre_hook(lambda _m, args, _kw: calls.append([a.clone() for a in args[:3]]),
                                            with_kwargs=True)
    cfg = FinetuneConfig(epochs=1, batch_size=4, max_length=40, aux_lm_weight=0.5)
    hist = finetune_classifier(model, tok, data, cfg)["history"]
    assert len(hist) == 1 and hist[0]["lm_loss"] > 0
    (task_ids, task_types, task_mask), (lm_ids, lm_types, lm_mask) = calls
    # the oracle for the task side: the tokenizer's own pair layout, in the batch's shuffled order
    seen = {tuple(task_ids[i, : int(task_mask[i].sum())].tolist()): i for i in range(4)}
    for e in data:
        enc = tok.encode(e.text, e.text_pair, max_length=40)
        i = seen[tuple(enc.ids.tolist())]
        assert task_types[i, : len(enc)].tolist() == enc.type_ids.tolist()
        assert 1 in enc.type_ids.tolist()
    assert lm_ids.shape == task_ids.shape
    assert torch.equal(lm_types, task_types)  # was all 0
    assert torch.equal(lm_mask, task_mask)
    # the LM masked some tokens and left the others as the task saw them
    assert 0 < int((lm_ids != task_ids).sum()) < int(task_mask.sum())
    aux = AuxLM(model.encoder, tok)
    with pytest.raises(ValueError, match=r"token_type_ids\[0\] has shape \(2,\), its row has 3 tokens"):
        aux.loss([torch.tensor([101, 2000, 102])], [0], [torch.tensor([0, 0])])


def test_lm_finetune_lowers_target_domain_mlm_loss(minilm_dir):
    """ULMFiT step 2: MLM steps on the task's text lower the MLM loss on that text."""
    tok = WordPieceTokenizer.from_pretrained(minilm_dir)
    texts = [e.text for e in _fortunes(16)]
    torch.manual_seed(0)
    enc = TransformerEncoder(_cfg(vocab_size=tok.vocab_size))
    cfg = FinetuneConfig(batch_size=8, max_length=32, lm_lr=3e-3)
    losses = lm_finetune(enc, tok, texts, 30, cfg)
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 1.0, losses


def test_lm_finetune_of_a_pair_task_reads_both_texts(minilm_dir, monkeypatch):
    """ULMFiT step 2 on a pair task: the LM sees every text of the training set, the second
    of each pair too (it was dropped)."""
    import unimask.finetune.trainer as T

    tok = WordPieceTokenizer.from_pretrained(minilm_dir)
    rows = _fortunes(4)
    data = [Example(a.text, b.text, a.label) for a, b in zip(rows, rows[1:] + rows[:1])]
    seen = []
    monkeypatch.setattr(T, "lm_finetune", lambda enc, tk, texts, steps, cfg, log=None: seen.extend(texts) or [1.0])
    model = SequenceClassifier(_cfg(vocab_size=tok.vocab_size), LabelMap.from_examples(data))
    finetune_classifier(model, tok, data, FinetuneConfig(epochs=1, batch_size=4, max_length=40, lm_finetune_steps=2))
    assert seen == [t for e in data for t in (e.text, e.text_pair)]


# -- MT-DNN -----------------------------------------------------------------------------------


def test_mtdnn_each_step_uses_one_task_and_only_that_head():
    torch.manual_seed(0)
    enc = TransformerEncoder(_cfg())
    model = MultiTaskModel(enc, {"a": 3, "b": 2, "reg": 1})
    g = torch.Generator().manual_seed(0)

    def batch(n_labels):
        ids = torch.randint(5, 120, (4, 9), generator=g)
        labels = torch.randn(4, generator=g) if n_labels == 1 else torch.randint(0, n_labels, (4,), generator=g)
        return {"input_ids": ids, "labels": labels}

    data = {"a": [batch(3) for _ in range(6)], "b": [batch(2) for _ in range(3)], "reg": [batch(1) for _ in range(1)]}
    before = {t: h.classifier.weight.detach().clone() for t, h in model.heads.items()}
    hist = train_multitask(model, data, epochs=2, lr=1e-3, weight_decay=0.0)
    assert [h["task"] for h in hist].count("a") == 12 and [h["task"] for h in hist].count("reg") == 2
    for t in data:
        assert sorted(h["batch"] for h in hist if h["task"] == t) == sorted(list(range(len(data[t]))) * 2)
    for t, h in model.heads.items():
        assert not torch.equal(h.classifier.weight, before[t])
    # one step of task "b" changes the shared encoder and head b only
    heads_before = {t: h.classifier.weight.detach().clone() for t, h in model.heads.items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(task="b", **data["b"][0]).loss.backward()
    opt.step()
    assert not torch.equal(model.heads["b"].classifier.weight, heads_before["b"])
    assert torch.equal(model.heads["a"].classifier.weight, heads_before["a"])
    assert torch.equal(model.heads["reg"].classifier.weight, heads_before["reg"])
    with pytest.raises(ValueError, match="unknown task"):
        model(task="zzz", **data["a"][0])


# -- CVT --------------------------------------------------------------------------------------


def test_cvt_views_see_only_their_side():
    torch.manual_seed(0)
    model = CrossViewTagger(TransformerEncoder(_cfg()), num_labels=5).eval()
    ids = torch.randint(5, 120, (1, 10))
    changed = ids.clone()
    changed[0, 6] = (ids[0, 6] + 7) % 115 + 5  # change token 6
    with torch.no_grad():
        fwd, fwd2 = model.logits(ids, view="left_to_right"), model.logits(changed, view="left_to_right")
        bwd, bwd2 = model.logits(ids, view="right_to_left"), model.logits(changed, view="right_to_left")
        full, full2 = model.logits(ids), model.logits(changed)
    assert torch.allclose(fwd[0, :6], fwd2[0, :6], atol=1e-6)  # positions < 6 cannot see token 6
    assert not torch.allclose(fwd[0, 6:], fwd2[0, 6:], atol=1e-4)
    assert torch.allclose(bwd[0, 7:], bwd2[0, 7:], atol=1e-6)  # positions > 6 cannot see it either
    assert not torch.allclose(bwd[0, :7], bwd2[0, :7], atol=1e-4)
    assert not torch.allclose(full[0, :6], full2[0, :6], atol=1e-4)  # the full view sees everything


def test_cvt_loss_is_kl_from_a_fixed_teacher_and_training_reduces_it():
    g = torch.Generator().manual_seed(0)
    t, s = torch.randn(2, 4, 3, generator=g), torch.randn(2, 4, 3, generator=g, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    p, q = torch.softmax(t, -1), torch.softmax(s, -1)
    kl = (p * (p.log() - q.log())).sum(-1)
    assert cvt_consistency_loss(t, s, mask).item() == pytest.approx(kl[mask].mean().item(), rel=1e-5)
    torch.manual_seed(0)
    model = CrossViewTagger(TransformerEncoder(_cfg()), num_labels=4)
    ids = torch.randint(5, 120, (6, 12), generator=g)
    am = torch.ones(6, 12, dtype=torch.long)
    am[3:, 9:] = 0
    loss = model.cvt_loss(ids, am)
    loss.backward()
    assert model.primary.weight.grad is None  # the teacher's head gets no gradient
    assert all(model.aux[v].weight.grad is not None for v in ("left_to_right", "right_to_left"))
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    first = loss.item()
    for _ in range(15):
        opt.zero_grad()
        model.cvt_loss(ids, am).backward()
        opt.step()
    assert model.cvt_loss(ids, am).item() < 0.5 * first
    # the supervised path trains the primary head
    labels = torch.randint(0, 4, (6, 12), generator=g)
    labels[am == 0] = -100
    opt.zero_grad()
    model.supervised_loss(ids, labels, am).backward()
    assert model.primary.weight.grad is not None


def test_train_cvt_alternates_and_views_learn_from_the_teacher():
    """Labelled data: tag = token id parity (learnable by the primary head). After alternating
    supervised / CVT steps the views match the primary head on held-out unlabeled tokens: their
    KL is a small fraction of a control run with the same supervised steps and no CVT steps."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(3)
    model = CrossViewTagger(TransformerEncoder(_cfg()), num_labels=2)
    lab = []
    for _ in range(4):
        ids = torch.randint(5, 120, (8, 10), generator=g)
        lab.append({"input_ids": ids, "labels": ids % 2})
    unl = [{"input_ids": torch.randint(5, 120, (8, 10), generator=g)} for _ in range(4)]
    probe = torch.randint(5, 120, (16, 10), generator=g)

    def agreement():
        model.eval()
        with torch.no_grad():
            full = model.logits(probe).argmax(-1)
            view = model.logits(probe, view="left_to_right").argmax(-1)
        return (full == view).float().mean().item()

    # control: the same supervised steps without the CVT ones leave the view head untrained
    control = CrossViewTagger(TransformerEncoder(_cfg()), num_labels=2)
    control.load_state_dict(model.state_dict())
    opt = torch.optim.AdamW(control.parameters(), lr=3e-3, weight_decay=0.0)
    for step in range(40):
        opt.zero_grad()
        control.supervised_loss(**lab[step % 4]).backward()
        opt.step()
    control.eval()
    with torch.no_grad():
        control_kl = control.cvt_loss(probe).item()

    hist = train_cvt(model, lab, unl, steps=80, lr=3e-3)
    assert [h["kind"] for h in hist[:4]] == ["supervised", "cvt", "supervised", "cvt"]
    sup = [h["loss"] for h in hist if h["kind"] == "supervised"]
    assert np.mean(sup[-5:]) < 0.5 * np.mean(sup[:5])
    assert agreement() > 0.9
    model.eval()
    with torch.no_grad():
        assert model.cvt_loss(probe).item() < 0.25 * control_kl, control_kl
    with pytest.raises(ValueError):
        train_cvt(model, lab, [], steps=1)
