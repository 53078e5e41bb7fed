"""Task heads: span search vs brute force, HF-layout checkpoints vs transformers, pooling vs
hand computation, word-level label alignment, UNILM seq2seq fine-tuning."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unimask.finetune import (
    LabelMap,
    MassFinetuner,
    QuestionAnswering,
    Seq2SeqFinetuner,
    SequenceClassifier,
    TokenClassifier,
    align_word_labels,
    answer_token_span,
    best_span,
    load_task_model,
    pool_hidden,
    span_text,
    word_predictions,
)
from unimask.models import EncoderConfig, MassSeq2Seq, TransformerEncoder, UnifiedLM
from unimask.tokenizer import WordPieceTokenizer


pytestmark = pytest.mark.usefixtures("one_torch_thread")




def _brute_span(s, e, ctx, max_len):
    best, arg = -np.inf, (-1, -1)
    L = len(s)
    for i in range(L):
        for j in range(i, min(L, i + max_len)):
            if ctx[i] and ctx[j] and s[i] + e[j] > best:
                best, arg = s[i] + e[j], (i, j)
    return arg, best


@settings(max_examples=150, deadline=None)
@given(L=st.integers(1, 40), max_len=st.integers(1, 12), seed=st.integers(0, 2**31 - 1),
       ties=st.booleans(), ctx_p=st.floats(0.0, 1.0))
def test_best_span_equals_brute_force(L, max_len, seed, ties, ctx_p):
    rng = np.random.default_rng(seed)
    if ties:  # few distinct values -> many ties; first (smallest start, then end) wins in both
        s = rng.integers(0, 3, L).astype(np.float32)
        e = rng.integers(0, 3, L).astype(np.float32)
    else:
        s = rng.normal(size=L).astype(np.float32)
        e = rng.normal(size=L).astype(np.float32)
    ctx = rng.random(L) < ctx_p
    (bi, bj), bscore = _brute_span(s, e, ctx, max_len)
    i, j, score = best_span(torch.from_numpy(s), torch.from_numpy(e), torch.from_numpy(ctx), max_len)
    assert (int(i), int(j)) == (bi, bj)
    if bi >= 0:
        assert float(score) == pytest.approx(bscore)
        assert bi <= bj < bi + max_len and ctx[bi] and ctx[bj]
    else:
        assert float(score) == float("-inf")


def test_best_span_batched_equals_per_row():
    g = torch.Generator().manual_seed(0)
    s, e = torch.randn(5, 23, generator=g), torch.randn(5, 23, generator=g)
    ctx = torch.rand(5, 23, generator=g) < 0.7
    bi, bj, _ = best_span(s, e, ctx, 7)
    for b in range(5):
        (ri, rj), _ = _brute_span(s[b].numpy(), e[b].numpy(), ctx[b].numpy(), 7)
        assert (int(bi[b]), int(bj[b])) == (ri, rj)
    with pytest.raises(ValueError, match="max_answer_length"):
        best_span(s, e, ctx, 0)


def _small_cfg(**kw):
    base = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    base.update(kw)
    return EncoderConfig(**base)


def test_pooling_matches_hand_computation_ignoring_padding():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(3, 6, 4, generator=g)
    lens = [6, 2, 4]
    am = torch.tensor([[1] * n + [0] * (6 - n) for n in lens])
    h_padded = h.clone()
    h_padded[am == 0] = 1e6  # garbage at padding must not leak into any pooling
    for b, n in enumerate(lens):
        real = h[b, :n]
        assert torch.allclose(pool_hidden(h_padded, am, "mean")[b], real.mean(0))
        assert torch.allclose(pool_hidden(h_padded, am, "max")[b], real.max(0).values)
        assert torch.allclose(pool_hidden(h_padded, am, "cls")[b], real[0])
        cat = pool_hidden(h_padded, am, "concat")[b]
        assert torch.allclose(cat, torch.cat([real[n - 1], real.max(0).values, real.mean(0)]))
    with pytest.raises(ValueError, match="pooling"):
        pool_hidden(h, am, "sum")


@pytest.mark.parametrize("pooling", ["cls", "concat", "mean"])
def test_classifier_logits_do_not_depend_on_padding(pooling):
    torch.manual_seed(0)
    model = SequenceClassifier(_small_cfg(), LabelMap(["x", "y", "z"]), pooling=pooling).eval()
    a = torch.tensor([[2, 5, 7, 9, 3]])
    b = torch.tensor([[2, 11, 3, 0, 0]])
    batch = torch.cat([a, b])
    am = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    together = model(batch, am).logits
    assert torch.allclose(together[0], model(a).logits[0], atol=1e-5)
    assert torch.allclose(together[1], model(b[:, :3]).logits[0], atol=1e-5)


def test_classifier_checkpoint_loads_in_transformers_with_same_logits(tmp_path, minilm_dir):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    lm = LabelMap(["computers", "food", "love"])
    model = SequenceClassifier.from_pretrained(minilm_dir, lm).eval()
    # the encoder is the real MiniLM, the head fresh
    enc_ref = TransformerEncoder.from_pretrained(minilm_dir)
    assert torch.equal(model.encoder.layers[3].fc1.weight, enc_ref.layers[3].fc1.weight)
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["id2label"] == {"0": "computers", "1": "food", "2": "love"}
    hf = transformers.BertForSequenceClassification.from_pretrained(tmp_path).eval()
    tok = WordPieceTokenizer.from_pretrained(minilm_dir)
    batch = {k: torch.from_numpy(v) for k, v in tok.encode_batch(
        ["Real programmers don't eat quiche.", "Love is blind."]).to_padded().items()}
    with torch.no_grad():
        ours = model(**batch).logits
        ref = hf(**batch).logits
    assert torch.allclose(ours, ref, atol=1e-5), (ours, ref)
    assert hf.config.id2label[1] == "food"
    # round trip: label map, pooling and weights come back
    again = load_task_model(tmp_path).eval()
    assert isinstance(again, SequenceClassifier) and again.label_map == lm
    with torch.no_grad():
        assert torch.equal(again(**batch).logits, ours)
    # the saved directory is also a plain encoder checkpoint
    enc = TransformerEncoder.from_pretrained(tmp_path)
    assert torch.equal(enc.layers[0].attn.qkv.weight, model.encoder.layers[0].attn.qkv.weight)


def test_from_scratch_keeps_config_but_not_weights(minilm_dir):
    torch.manual_seed(0)
    lm = LabelMap(["a", "b"])
    pre = SequenceClassifier.from_pretrained(minilm_dir, lm)
    scratch = SequenceClassifier.from_pretrained(minilm_dir, lm, from_scratch=True)
    assert scratch.config.hidden_size == pre.config.hidden_size == 384
    assert scratch.config.num_hidden_layers == pre.config.num_hidden_layers == 6
    assert not torch.allclose(scratch.encoder.layers[0].fc1.weight, pre.encoder.layers[0].fc1.weight)


def test_wrong_task_or_label_count_is_a_clear_error(tmp_path):
    torch.manual_seed(0)
    SequenceClassifier(_small_cfg(), LabelMap(["a", "b", "c"])).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'classify' model, not 'qa'"):
        QuestionAnswering.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="number of labels"):
        SequenceClassifier.from_pretrained(tmp_path, LabelMap(["a", "b"]))


def test_word_label_alignment_with_real_tokenizer(minilm_dir):
    tokenizers = pytest.importorskip("tokenizers")
    tok = WordPieceTokenizer.from_pretrained(minilm_dir)
    ref = tokenizers.Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    ref.no_padding()
    ref.no_truncation()
    text = "Unbelievably, Kubernetes orchestrates microservices in Zürich."
    enc = tok.encode(text)
    words = text.replace(",", " ,").replace(".", " .").split()
    word_labels = list(range(10, 10 + len(words)))
    got = align_word_labels(enc.word_ids, word_labels)
    # oracle: HF's documented alignment (label on the first piece of each word, -100 elsewhere)
    wid = ref.encode(text).word_ids
    expect, prev = [], None
    for w in wid:
        expect.append(-100 if w is None or w == prev else word_labels[w])
        prev = w
    assert got == expect
    assert sum(x != -100 for x in got) == len(words)
    # reading predictions back per word: logits that put mass on the label gives the labels back
    logits = torch.full((len(got), 20), -5.0)
    for i, y in enumerate(align_word_labels(enc.word_ids, word_labels, label_all_pieces=True)):
        if y != -100:
            logits[i, y] = 5.0
    assert word_predictions(logits, enc.word_ids) == word_labels


def test_token_classifier_loss_ignores_unlabelled_positions():
    torch.manual_seed(0)
    model = TokenClassifier(_small_cfg(), LabelMap(["O", "B", "I"])).eval()
    ids = torch.randint(5, 120, (2, 7))
    labels = torch.full((2, 7), -100)
    labels[0, 1], labels[1, 4] = 2, 0
    out = model(ids, labels=labels)
    lp = torch.log_softmax(out.logits, -1)
    manual = -(lp[0, 1, 2] + lp[1, 4, 0]) / 2
    assert torch.allclose(out.loss, manual, atol=1e-6)


def test_qa_checkpoint_matches_transformers_and_predicts_best_span(tmp_path, minilm_dir):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    qa = QuestionAnswering.from_pretrained(minilm_dir, max_answer_length=5).eval()
    qa.save_pretrained(tmp_path)
    hf = transformers.BertForQuestionAnswering.from_pretrained(tmp_path).eval()
    tok = WordPieceTokenizer.from_pretrained(minilm_dir)
    enc = tok.encode_batch(["Who wrote the fortune?"], ["Ken Arnold wrote the original fortune program."])
    batch = {k: torch.from_numpy(v) for k, v in enc.to_padded().items()}
    with torch.no_grad():
        ours = qa(**batch)
        ref = hf(**batch)
        assert torch.allclose(ours.start_logits, ref.start_logits, atol=1e-5)
        assert torch.allclose(ours.end_logits, ref.end_logits, atol=1e-5)
        ctx = (batch["token_type_ids"] == 1) & (batch["attention_mask"] == 1)
        ctx[:, -1] = False  # final [SEP]
        s, e = qa.predict_spans(batch, ctx)
    (bs, be), _ = _brute_span(ours.start_logits[0].numpy(), ours.end_logits[0].numpy(), ctx[0].numpy(), 5)
    assert (int(s[0]), int(e[0])) == (bs, be)


def test_seq2seq_batch_layout_and_overfit_generation():
    torch.manual_seed(0)
    cfg = _small_cfg(type_vocab_size=6, num_hidden_layers=2)
    model = UnifiedLM(cfg)
    ft = Seq2SeqFinetuner(model, cls_id=1, sep_id=2, mask_id=3, pad_id=0, mask_prob=0.7)
    src, tgt = [[10, 11, 12], [20, 21]], [[30, 31], [40, 41, 42]]
    batch = ft.make_batch(src, tgt, torch.Generator().manual_seed(0))
    assert batch["src_len"].tolist() == [5, 4]
    assert batch["seq_len"].tolist() == [8, 8]
    assert batch["token_type_ids"][0].tolist() == [4, 4, 4, 4, 4, 5, 5, 5]
    row0 = [1, 10, 11, 12, 2, 30, 31, 2]
    for b, row in enumerate([row0, [1, 20, 21, 2, 40, 41, 42, 2]]):
        ids, lab = batch["input_ids"][b].tolist(), batch["labels"][b].tolist()
        n_src = int(batch["src_len"][b])
        assert ids[:n_src] == row[:n_src] and all(x == -100 for x in lab[:n_src])  # source never masked
        for i in range(n_src, len(row)):
            assert (ids[i], lab[i]) in ((row[i], -100), (3, row[i]))
        assert any(x != -100 for x in lab)
    # fine-tune until it reproduces the targets, then decode them
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(150):
        loss = ft(**ft.make_batch(src, tgt, g)).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert ft.generate(src, max_new_tokens=5) == tgt



def test_answer_char_span_to_tokens_matches_hf_char_to_token(minilm_dir):
    tokenizers = pytest.importorskip("tokenizers")
    tok = WordPieceTokenizer.from_pretrained(minilm_dir)
    ref = tokenizers.Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    ref.no_padding()
    ref.no_truncation()
    question = "Who ported fortune to Linux?"
    context = ("The Linux port of the fortune package (from NetBSD-current in April 1995) was done by "
               "Florian LaRoche; Amy A. Lewis modified the sources heavily in Oct 1995.")
    for answer in ("Florian LaRoche", "NetBSD-current", "1995", "Amy A. Lewis", "fortune package"):
        a = context.index(answer)
        enc = tok.encode(question, context)
        s, e = answer_token_span(enc.offsets, enc.type_ids, a, a + len(answer))
        r = ref.encode(question, context)
        assert (s, e) == (r.char_to_token(a, 1), r.char_to_token(a + len(answer) - 1, 1))
        assert span_text(context, enc.offsets, s, e) == answer
    # an answer cut off by truncation is reported, not silently mapped elsewhere
    enc = tok.encode(question, context, max_length=20)
    a = context.index("Amy")
    with pytest.raises(ValueError, match="not inside the encoded context"):
        answer_token_span(enc.offsets, enc.type_ids, a, a + 3)



def test_mass_finetuning_batch_layout_and_overfit_generation():
    torch.manual_seed(0)
    model = MassSeq2Seq(_small_cfg(), num_decoder_layers=2)
    ft = MassFinetuner(model, cls_id=1, sep_id=2, start_id=3, pad_id=0)
    src, tgt = [[10, 11, 12], [20, 21]], [[30, 31], [40, 41, 42]]
    b = ft.make_batch(src, tgt)
    assert b["input_ids"].tolist() == [[1, 10, 11, 12, 2], [1, 20, 21, 2, 0]]
    assert b["seq_len"].tolist() == [5, 4]
    assert b["decoder_input_ids"].tolist() == [[3, 30, 31, 0], [3, 40, 41, 42]]
    assert b["decoder_labels"].tolist() == [[30, 31, 2, -100], [40, 41, 42, 2]]
    assert b["decoder_positions"].tolist() == [[0, 1, 2, 3], [0, 1, 2, 3]]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(120):
        ft(**b).loss.backward()
        opt.step()
        opt.zero_grad()
    assert ft.generate(src, max_new_tokens=5) == tgt


def _tiny_cfg():
    return EncoderConfig(vocab_size=60, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                         max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def test_classifier_labels_are_class_ids_in_range():
    """Float labels were truncated by .long() (0.7 -> 0) and a label past the last class was a
    torch IndexError; now TypeError / ValueError naming the value. Loss vs hand-computed CE."""
    torch.manual_seed(0)
    sc = SequenceClassifier(_tiny_cfg(), LabelMap(["a", "b", "c"])).eval()
    x = torch.randint(1, 60, (2, 6))
    with pytest.raises(TypeError, match="labels must be integer class ids, got dtype torch.float32"):
        sc(x, labels=torch.tensor([0.7, 1.2]))
    with pytest.raises(ValueError, match=r"labels\[1\] = 3 is not a class id in \[0, 3\)"):
        sc(x, labels=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"labels\[0\] = -1 is not a class id"):
        sc(x, labels=torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        sc(x, labels=torch.tensor([0, 1, 2]))
    out = sc(x, labels=torch.tensor([2, -100]))
    assert torch.allclose(out.loss, -torch.log_softmax(out.logits, -1)[0, 2], atol=1e-6)


def test_regression_labels_b_or_b1_give_the_same_mse():
    """[B, 1] targets broadcast against [B] predictions (a [B, B] MSE); both shapes now give
    the per-row MSE, computed by hand."""
    torch.manual_seed(0)
    reg = SequenceClassifier(_tiny_cfg(), None, problem_type="regression").eval()
    x = torch.randint(1, 60, (2, 6))
    y = torch.tensor([1.0, 2.0])
    flat = reg(x, labels=y)
    want = ((flat.logits[:, 0] - y) ** 2).mean()
    assert torch.allclose(flat.loss, want, atol=1e-6)
    assert torch.allclose(reg(x, labels=y[:, None]).loss, want, atol=1e-6)
    with pytest.raises(ValueError, match=r"regression labels must have shape \(2,\) or \(2, 1\), got \(1, 2\)"):
        reg(x, labels=y[None])


def test_heads_with_no_scored_label_give_a_zero_loss_that_keeps_the_graph():
    """All -100 labels gave a NaN loss (mean over nothing); now 0, and backward runs with zero
    gradients (like pretraining's _mean_ce)."""
    torch.manual_seed(0)
    x = torch.randint(1, 60, (2, 6))
    tc = TokenClassifier(_tiny_cfg(), LabelMap(["a", "b"]))
    sc = SequenceClassifier(_tiny_cfg(), LabelMap(["a", "b"]))
    qa = QuestionAnswering(_tiny_cfg())
    none = torch.full((2,), -100)
    for model, kw in ((tc, dict(labels=torch.full((2, 6), -100))), (sc, dict(labels=none)),
                      (qa, dict(start_positions=none, end_positions=none))):
        loss = model(x, **kw).loss
        assert loss.item() == 0.0 and loss.requires_grad
        loss.backward()
        assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def test_token_labels_and_qa_positions_out_of_range_name_the_value():
    torch.manual_seed(0)
    x = torch.randint(1, 60, (2, 6))
    tc = TokenClassifier(_tiny_cfg(), LabelMap(["a", "b"])).eval()
    labels = torch.full((2, 6), -100)
    labels[1, 4] = 2
    with pytest.raises(ValueError, match=r"labels\[\[1, 4\]\] = 2 is not a class id in \[0, 2\)"):
        tc(x, labels=labels)
    with pytest.raises(TypeError, match="dtype torch.float32"):
        tc(x, labels=labels.float())
    qa = QuestionAnswering(_tiny_cfg()).eval()
    with pytest.raises(ValueError, match=r"end_positions\[0\] = 6 is not a token position in \[0, 6\)"):
        qa(x, start_positions=torch.tensor([1, 2]), end_positions=torch.tensor([6, 2]))
    out = qa(x, start_positions=torch.tensor([1, -100]), end_positions=torch.tensor([3, 5]))
    ls, le = torch.log_softmax(out.start_logits, -1), torch.log_softmax(out.end_logits, -1)
    want = (-ls[0, 1] + -(le[0, 3] + le[1, 5]) / 2) / 2
    assert torch.allclose(out.loss, want, atol=1e-6)


def test_qa_loss_does_not_depend_on_the_padding():
    """The same windows padded 0 or 7 columns wider: the same loss and gradients (the softmax
    over positions skips padding); the logits are HF's, padding included."""
    torch.manual_seed(0)
    qa = QuestionAnswering(_tiny_cfg()).eval()
    ids = torch.randint(5, 60, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0
    ids[1, 6:] = 0
    pos = dict(start_positions=torch.tensor([2, 4, 1]), end_positions=torch.tensor([3, 5, 8]))

    def run(extra):
        qa.zero_grad()
        wide = lambda t: torch.nn.functional.pad(t, (0, extra))  # noqa: E731
        out = qa(wide(ids), wide(mask), **pos)
        out.loss.backward()
        return out.loss.detach(), [p.grad.clone() for p in qa.parameters() if p.grad is not None]

    (l0, g0), (l7, g7) = run(0), run(7)
    torch.testing.assert_close(l7, l0, rtol=1e-6, atol=1e-7)
    for a, b in zip(g0, g7):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
    # oracle for the padded row alone: the mean of the two cross-entropies over its 6 real positions
    with torch.no_grad():
        one = qa(ids[1:2], mask[1:2], start_positions=torch.tensor([4]), end_positions=torch.tensor([5]))
    s, e = one.start_logits[0, :6], one.end_logits[0, :6]
    manual = (-torch.log_softmax(s, 0)[4] - torch.log_softmax(e, 0)[5]) / 2
    assert float(one.loss) == pytest.approx(float(manual), rel=1e-6)
    assert one.start_logits.shape == (1, 9)  # the logits keep every position, as HF's
