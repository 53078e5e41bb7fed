"""Objectives: UNILM mask routing (oracle: unimask.masks.dense_mask), heads, and training on the
bundled corpus (oracle: held-out loss before vs after training)."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

tokenizers = pytest.importorskip("tokenizers")

from unimask.corpus import demo_corpus_path  # noqa: E402
from unimask.masks import dense_mask  # noqa: E402
from unimask.models import (  # noqa: E402
    BertForPretraining,
    CausalLM,
    EncoderConfig,
    MassSeq2Seq,
    TransformerEncoder,
    UnifiedLM,
)

CLS, SEP, MASK, PAD = 101, 102, 103, 0
VOCAB = 30522


def tiny(layers=2, type_vocab_size=6, **kw):
    return EncoderConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=layers, num_attention_heads=4,
                         intermediate_size=128, max_position_embeddings=64, type_vocab_size=type_vocab_size,
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **kw)


# ---------------------------------------------------------------------------------------------
# mode routing


@pytest.mark.parametrize("layers", [1, 2])
def test_unilm_mode_routing_matches_dense_mask(layers):
    """Perturb one input token; exactly the outputs dense_mask allows to see it must change."""
    torch.manual_seed(0)
    model = UnifiedLM(tiny(layers)).double().eval()
    B, L = 4, 10
    ids = torch.randint(1000, 2000, (B, L))
    mode = torch.tensor([0, 1, 2, 3], dtype=torch.int8)
    src = torch.tensor([0, 0, 0, 4], dtype=torch.int32)
    seq = torch.tensor([10, 9, 8, 10], dtype=torch.int32)
    tt = torch.tensor([[0] * L, [2] * L, [3] * L, [4] * 4 + [5] * 6])
    allowed = dense_mask(mode, src, seq, L)  # [B, i, j]
    with torch.no_grad():
        base = model.encoder(ids, tt, attn_mode=mode, src_len=src, seq_len=seq).last_hidden_state
        for j in range(L):
            ids2 = ids.clone()
            ids2[:, j] = 5000 + j
            out = model.encoder(ids2, tt, attn_mode=mode, src_len=src, seq_len=seq).last_hidden_state
            changed = (out - base).abs().amax(-1) > 1e-9  # [B, i]
            for b in range(B):
                n = int(seq[b])
                assert torch.equal(changed[b, :n], allowed[b, :n, j]), (b, j, changed[b, :n], allowed[b, :n, j])


def test_unilm_nsp_only_for_bidirectional_samples():
    torch.manual_seed(1)
    model = UnifiedLM(tiny()).eval()
    ids = torch.randint(1000, 2000, (4, 8))
    mode = torch.tensor([0, 3, 0, 1], dtype=torch.int8)
    nsp = torch.tensor([1, 0, 0, 1])  # labels on non-bidirectional samples must be ignored
    out = model(input_ids=ids, attn_mode=mode, src_len=torch.tensor([0, 3, 0, 0]),
                seq_len=torch.full((4,), 8, dtype=torch.int32), next_sentence_label=nsp)
    expect = F.cross_entropy(out.nsp_logits[[0, 2]], nsp[[0, 2]])
    assert torch.allclose(out.nsp_loss, expect)
    assert out.mlm_loss is None  # no labels given


def test_mlm_loss_only_on_labelled_positions():
    torch.manual_seed(2)
    model = BertForPretraining(tiny(type_vocab_size=2)).eval()
    ids = torch.randint(1000, 2000, (2, 6))
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[1, 4] = 7, 9
    out = model(input_ids=ids, labels=labels)
    full = model.lm_logits(out.last_hidden_state)  # oracle: logits at every position
    expect = F.cross_entropy(full.view(-1, VOCAB), labels.view(-1), ignore_index=-100)
    assert torch.allclose(out.mlm_loss, expect, atol=1e-6)
    assert out.mlm_logits.shape == (2, VOCAB)


def test_causal_lm_is_causal_and_uses_shifted_labels():
    torch.manual_seed(3)
    model = CausalLM(tiny()).eval()
    ids = torch.randint(1000, 2000, (1, 7))
    full = model.logits(ids)
    ids2 = ids.clone()
    ids2[0, 5] = 42
    full2 = model.logits(ids2)
    assert torch.equal(full[0, :5], full2[0, :5]) and not torch.equal(full[0, 5:], full2[0, 5:])
    labels = torch.cat([ids[:, 1:], torch.full((1, 1), -100)], dim=1)
    out = model(input_ids=ids, labels=labels)
    assert torch.allclose(out.loss, F.cross_entropy(full[0, :6], ids[0, 1:]), atol=1e-6)


def test_mass_decoder_sees_span_causally_and_encoder_fully():
    torch.manual_seed(4)
    model = MassSeq2Seq(tiny(), num_decoder_layers=2).double().eval()
    ids = torch.randint(1000, 2000, (1, 10))
    dec = torch.randint(1000, 2000, (1, 4))
    pos = torch.tensor([[3, 4, 5, 6]])
    seq = torch.tensor([9])  # the 10th encoder token is padding

    def run(ids, dec, pos):
        return model(input_ids=ids, decoder_input_ids=dec, decoder_positions=pos, seq_len=seq).last_hidden_state

    base = run(ids, dec, pos)
    d2 = dec.clone()
    d2[0, 2] = 7
    changed = (run(ids, d2, pos) - base).abs().amax(-1)[0] > 1e-9
    assert changed.tolist() == [False, False, True, True]
    e2 = ids.clone()
    e2[0, 8] = 7  # a valid encoder token: every decoder position sees it
    assert ((run(e2, dec, pos) - base).abs().amax(-1)[0] > 1e-9).all()
    e3 = ids.clone()
    e3[0, 9] = 7  # padding: invisible
    assert torch.equal(run(e3, dec, pos), base)
    # decoder positions are the span's original positions
    assert not torch.equal(run(ids, dec, pos + 1), base)


def test_unified_lm_from_bert_checkpoint_extends_segments(minilm_dir):
    model = UnifiedLM.from_pretrained(minilm_dir)
    bert = TransformerEncoder.from_pretrained(minilm_dir)
    w, w0 = model.encoder.embeddings.token_type.weight, bert.embeddings.token_type.weight
    assert w.shape[0] == 6
    for row, src in [(0, 0), (1, 1), (2, 0), (3, 0), (4, 0), (5, 1)]:
        assert torch.equal(w[row], w0[src])
    ids = torch.tensor([[CLS, 2000, 2001, SEP]])
    with torch.no_grad():
        a = model.eval().encoder(ids).last_hidden_state
        b = bert.eval()(ids).last_hidden_state
    assert torch.equal(a, b)


def test_bert_for_pretraining_save_load_with_hf(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(5)
    model = BertForPretraining(tiny(type_vocab_size=2)).eval()
    model.save_pretrained(tmp_path)
    hf = transformers.BertForPreTraining.from_pretrained(str(tmp_path), attn_implementation="eager").eval()
    ids = torch.randint(1000, 2000, (2, 9))
    labels = torch.full_like(ids, -100)
    labels[:, 3] = 11
    with torch.no_grad():
        ours = model(input_ids=ids, labels=labels)
        ref = hf(input_ids=ids)
    assert (ours.mlm_logits - ref.prediction_logits[:, 3]).abs().max() < 1e-5
    assert (ours.nsp_logits - ref.seq_relationship_logits).abs().max() < 1e-5
    again = BertForPretraining.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids, labels=labels).mlm_logits, ours.mlm_logits)


# ---------------------------------------------------------------------------------------------
# training on the bundled corpus (test-local batch builders following the collator contract)


@pytest.fixture(scope="module")
def sentences(minilm_dir):
    tok = tokenizers.Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    lines = [ln.strip() for ln in open(demo_corpus_path("en"), encoding="utf-8") if len(ln.strip()) > 20][:3000]
    encs = tok.encode_batch(lines, add_special_tokens=False)
    return [e.ids[:24] for e in encs if len(e.ids) >= 6]


def _pad(rows, fill=PAD):
    L = max(len(r) for r in rows)
    return torch.tensor([r + [fill] * (L - len(r)) for r in rows])


def _mask_tokens(ids, positions, rng, labels):
    for p in positions:
        labels[p] = ids[p]
        r = rng.random()
        ids[p] = MASK if r < 0.8 else (rng.randrange(1000, VOCAB) if r < 0.9 else ids[p])


def mlm_like_batch(sents, rng, objective):
    """Batch dict per the collator contract for objective in {mlm, unilm, causal, mass}."""
    rows, labels, tts, modes, srcs, nsps = [], [], [], [], [], []
    dec_in, dec_pos, dec_lab = [], [], []
    for k, s in enumerate(sents):
        if objective == "causal":
            ids = [CLS] + s + [SEP]
            rows.append(ids)
            labels.append(ids[1:] + [-100])
            continue
        if objective == "mass":
            ids = [CLS] + s + [SEP]
            n = len(s)
            span = max(1, n // 2)
            start = 1 + rng.randrange(0, n - span + 1)
            target = ids[start:start + span]
            enc = list(ids)
            _mask_tokens(enc, range(start, start + span), rng, [0] * len(enc))
            rows.append(enc)
            dec_in.append([MASK] + target[:-1])
            dec_pos.append(list(range(start, start + span)))
            dec_lab.append(target)
            continue
        mode = 0 if objective == "mlm" else k % 4
        other = sents[(k + 1) % len(sents)]
        if mode == 0:
            a, b = s[:12], other[:10]
            ids = [CLS] + a + [SEP] + b + [SEP]
            tt = [0] * (len(a) + 2) + [1] * (len(b) + 1)
            src = 0
        elif mode == 3:
            a, b = s[:12], other[:10]
            ids = [CLS] + a + [SEP] + b + [SEP]
            src = len(a) + 2
            tt = [4] * src + [5] * (len(b) + 1)
        else:
            ids = [CLS] + s + [SEP]
            tt = [mode + 1] * len(ids)
            src = 0
        lab = [-100] * len(ids)
        cands = [i for i in range(src if mode == 3 else 1, len(ids)) if ids[i] not in (CLS, SEP)]
        n_pred = max(1, round(len(cands) * 0.15))
        _mask_tokens(ids, rng.sample(cands, n_pred), rng, lab)
        rows.append(ids)
        labels.append(lab)
        tts.append(tt)
        modes.append(mode)
        srcs.append(src)
        nsps.append(1 if mode == 0 else -100)
    seq_len = torch.tensor([len(r) for r in rows], dtype=torch.int32)
    ids = _pad(rows)
    am = (torch.arange(ids.shape[1])[None] < seq_len[:, None].long()).long()
    batch = {"input_ids": ids, "attention_mask": am, "seq_len": seq_len}
    if objective == "mass":
        dl = torch.tensor([len(r) for r in dec_in], dtype=torch.int32)
        batch.update(decoder_input_ids=_pad(dec_in), decoder_positions=_pad(dec_pos),
                     decoder_labels=_pad(dec_lab, -100), decoder_len=dl)
        return batch
    batch["labels"] = _pad(labels, -100)
    if objective == "causal":
        batch.update(attn_mode=torch.ones(len(rows), dtype=torch.int8), src_len=torch.zeros(len(rows), dtype=torch.int32))
        return batch
    batch["token_type_ids"] = _pad(tts)
    if objective == "unilm":
        batch.update(attn_mode=torch.tensor(modes, dtype=torch.int8), src_len=torch.tensor(srcs, dtype=torch.int32),
                     next_sentence_label=torch.tensor(nsps))
    return batch


MODELS = {
    "mlm": lambda: BertForPretraining(tiny(type_vocab_size=2)),
    "unilm": lambda: UnifiedLM(tiny()),
    "causal": lambda: CausalLM(tiny()),
    "mass": lambda: MassSeq2Seq(tiny(), num_decoder_layers=1),
}


@pytest.mark.slow
@pytest.mark.parametrize("objective", list(MODELS))
def test_objective_trains_on_bundled_corpus(objective, sentences):
    torch.manual_seed(0)
    rng = random.Random(0)
    train, held = sentences[:-64], sentences[-64:]
    held_batches = [mlm_like_batch(held[i:i + 32], random.Random(100 + i), objective) for i in (0, 32)]
    model = MODELS[objective]()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)

    def held_loss():
        model.eval()
        with torch.no_grad():
            loss = sum(float(model(**b).mlm_loss) for b in held_batches) / len(held_batches)
        model.train()
        return loss

    before = held_loss()
    for _ in range(40):
        batch = mlm_like_batch(rng.sample(train, 16), rng, objective)
        out = model(**batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    after = held_loss()
    assert after < before - 1.0, (objective, before, after)


def test_mass_save_load_round_trip(tmp_path):
    torch.manual_seed(6)
    model = MassSeq2Seq(tiny(), num_decoder_layers=1).eval()
    model.save_pretrained(tmp_path)
    again = MassSeq2Seq.from_pretrained(tmp_path).eval()
    batch = dict(input_ids=torch.randint(1000, 2000, (2, 8)), decoder_input_ids=torch.randint(1000, 2000, (2, 3)),
                 decoder_positions=torch.tensor([[2, 3, 4], [1, 2, 3]]))
    with torch.no_grad():
        assert torch.equal(model(**batch).last_hidden_state, again(**batch).last_hidden_state)


def test_mass_empty_source_row_gets_zero_context_not_nan():
    """seq_len 0 for a row masked every cross-attention key: softmax over nothing gave NaN
    (and a NaN loss for the whole batch). Now that row's context is zero (the cross-attention
    output is proj(0) = proj.bias) and the other rows are unaffected."""
    torch.manual_seed(5)
    model = MassSeq2Seq(tiny(), num_decoder_layers=1).double().eval()
    ids = torch.randint(1000, 2000, (2, 6))
    dec = torch.randint(1000, 2000, (2, 3))
    pos = torch.arange(3)[None].expand(2, 3)
    out = model(ids, dec, pos, seq_len=torch.tensor([0, 6]), decoder_labels=dec)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    alone = model(ids[1:], dec[1:], pos[1:], seq_len=torch.tensor([6])).last_hidden_state
    assert torch.allclose(out.last_hidden_state[1], alone[0], atol=1e-12)
    cross = model.decoder[0].cross
    x = torch.randn(2, 3, 64, dtype=torch.float64)
    mem = cross.memory(torch.randn(2, 6, 64, dtype=torch.float64))
    y = cross(x, mem, torch.tensor([0, 4]))
    assert torch.equal(y[0], cross.proj.bias.detach().expand(3, 64))
    # row 1 by hand: softmax over its 4 valid keys
    q = cross.q(x[1]).view(3, 4, 16).transpose(0, 1)
    k, v = mem[0][1, :, :4], mem[1][1, :, :4]
    ctx = torch.softmax(q @ k.transpose(-1, -2) / 4.0, -1) @ v
    assert torch.allclose(y[1], cross.proj(ctx.transpose(0, 1).reshape(3, 64)), atol=1e-12)


def test_mass_decoder_len_errors_name_decoder_len():
    model = MassSeq2Seq(tiny(), num_decoder_layers=1).eval()
    ids = torch.randint(1000, 2000, (2, 6))
    dec = torch.randint(1000, 2000, (2, 3))
    pos = torch.arange(3)[None].expand(2, 3)
    with pytest.raises(ValueError, match=r"decoder_len\[1\] = 4 is outside \[0, 3\]"):
        model(ids, dec, pos, decoder_len=torch.tensor([3, 4]))
    with pytest.raises(ValueError, match=r"decoder_len has 1 entries but decoder_input_ids has B = 2 rows"):
        model(ids, dec, pos, decoder_len=torch.tensor([3]))
    with pytest.raises(TypeError, match="decoder_len must hold integers"):
        model(ids, dec, pos, decoder_len=torch.tensor([3.0, 3.0]))
