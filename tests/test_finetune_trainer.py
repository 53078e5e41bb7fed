"""The fine-tuning loop: determinism, pair inputs laid out like HF, regression, evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from unimask.finetune import (
    Example,
    FinetuneConfig,
    LabelMap,
    SequenceClassifier,
    evaluate_classifier,
    finetune_classifier,
)
from unimask.finetune.trainer import encode_examples
from unimask.models import EncoderConfig
from unimask.tokenizer import WordPieceTokenizer

FIX = Path(__file__).parent / "fixtures" / "finetune"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(vocab_size):
    return EncoderConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=64)


def _fortunes(n):
    rows = [json.loads(x) for x in (FIX / "fortunes_train.jsonl").read_text().splitlines()[:n]]
    return [Example(r["text"], None, r["label"], i + 1) for i, r in enumerate(rows)]


def test_same_seed_same_run(minilm_dir):
    tok = WordPieceTokenizer.from_pretrained(minilm_dir)
    data = _fortunes(16)
    lm = LabelMap.from_examples(data)
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = SequenceClassifier(_cfg(tok.vocab_size), lm)
        cfg = FinetuneConfig(epochs=2, batch_size=4, max_length=24, seed=7, aux_lm_weight="siatl",
                             schedule="stlr", discriminative_lr=True)
        hist = finetune_classifier(model, tok, data, cfg)["history"]
        runs.append(([h["loss"] for h in hist], model.classifier.weight.detach().clone()))
    assert runs[0][0] == runs[1][0]
    assert torch.equal(runs[0][1], runs[1][1])


def test_pair_batches_match_hf_pair_encoding(minilm_dir):
    tokenizers = pytest.importorskip("tokenizers")
    tok = WordPieceTokenizer.from_pretrained(minilm_dir)
    ref = tokenizers.Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    ref.no_padding()
    ref.enable_truncation(16)
    exs = [Example("How late is the library open?", "What are the opening hours?", "same"),
           Example("Can I print here?", "Is there free Wi-Fi in the library, and is a password needed?", "different")]
    batch = encode_examples(tok, exs, 16, LabelMap(["different", "same"]))
    assert batch["labels"].tolist() == [1, 0]
    for b, e in enumerate(exs):
        r = ref.encode(e.text, e.text_pair)
        n = len(r.ids)
        assert batch["input_ids"][b, :n].tolist() == r.ids
        assert batch["token_type_ids"][b, :n].tolist() == r.type_ids
        assert batch["attention_mask"][b].sum().item() == n


def test_regression_learns_a_real_target(minilm_dir):
    """Regression head (MSE) on a target computable from the text: the fraction of the
    fortune's characters that are upper case. A few epochs must beat predicting the mean."""
    tok = WordPieceTokenizer.from_pretrained(minilm_dir)
    rows = [json.loads(x) for x in (FIX / "fortunes_train.jsonl").read_text().splitlines()[:64]]
    def target(t):
        return 10 * sum(c.isupper() for c in t) / len(t)
    data = [Example(r["text"], None, target(r["text"]), i) for i, r in enumerate(rows)]
    torch.manual_seed(0)
    model = SequenceClassifier(_cfg(tok.vocab_size), problem_type="regression", pooling="mean")
    with pytest.raises(ValueError, match="needs a label_map"):
        SequenceClassifier(_cfg(tok.vocab_size))
    out = finetune_classifier(model, tok, data, FinetuneConfig(epochs=6, batch_size=8, max_length=48, lr=2e-3,
                                                                schedule="constant"), eval_examples=data)
    gold = np.array([e.label for e in data])
    baseline = float(((gold - gold.mean()) ** 2).mean())
    rep = out["eval"]
    assert rep["mse"] < 0.7 * baseline, (rep, baseline)
    assert rep == evaluate_classifier(model, tok, data, FinetuneConfig(max_length=48))
    # the MSE loss is the hand formula
    batch = encode_examples(tok, data[:4], 48)
    model.eval()
    o = model(**batch)
    assert o.loss.item() == pytest.approx(((o.logits[:, 0] - batch["labels"]) ** 2).mean().item(), rel=1e-6)
