"""UNILM seq2seq fine-tuning: ROUGE-L, the training/decoding pipeline, ``--task seq2seq`` and
``predict``.

Oracles: ROUGE-L worked by hand (Lin 2004's examples); a small UNILM that must reproduce its
training targets exactly after fine-tuning (the whole path: tokenizer -> UNILM batches with
masked targets -> training -> cached greedy decoding -> detokenization), and the real MiniLM
checkpoint loading and training through the CLI. Pairs: bundled corpus sentences -> their
first three words (lower case).
"""

from __future__ import annotations

import json

import pytest
import torch

from unimask.cli import main
from unimask.corpus import demo_corpus_path, read_documents
from unimask.finetune import Example, FinetuneConfig, evaluate_seq2seq, finetune_seq2seq, seq2seq_finetuner
from unimask.finetune.metrics import rouge_l
from unimask.models import EncoderConfig, UnifiedLM
from unimask.tokenizer import WordPieceTokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pairs() -> list[Example]:
    sents = [s for d in read_documents(demo_corpus_path("en")) for s in d if 6 <= len(s.split()) <= 14]
    return [Example(s, label=" ".join(s.split()[:3]).lower()) for s in sents[:8]]


@pytest.fixture(scope="module")
def tok(minilm_dir) -> WordPieceTokenizer:
    return WordPieceTokenizer.from_pretrained(minilm_dir)


def _tiny(tok) -> UnifiedLM:
    torch.manual_seed(0)
    return UnifiedLM(EncoderConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=128, type_vocab_size=6, max_position_embeddings=128))


def test_rouge_l_by_hand():
    # Lin (2004), sec. 3.1: "police killed the gunman" vs "police kill the gunman" (LCS 3 of 4)
    # and vs "the gunman kill police" (LCS 2 of 4).
    assert rouge_l(["police kill the gunman"], ["police killed the gunman"]) == pytest.approx(0.75)
    assert rouge_l(["the gunman kill police"], ["police killed the gunman"]) == pytest.approx(0.5)
    # rouge_score's tokenization: case and punctuation are separators, not tokens.
    assert rouge_l(["The Cat, sat!"], ["the cat sat"]) == 1.0
    # P = 2/2, R = 2/4 -> F = 2/3; an empty side scores 0; the mean over pairs.
    assert rouge_l(["a b", "", "x"], ["a c b d", "y", "x"]) == pytest.approx((2 / 3 + 0 + 1) / 3)


def test_finetune_seq2seq_reproduces_its_targets(tok, pairs):
    ft = seq2seq_finetuner(_tiny(tok), tok, mask_prob=0.7)
    before = evaluate_seq2seq(ft, tok, pairs, 64, 8)
    assert before["exact_match"] == 0.0
    cfg = FinetuneConfig(epochs=150, batch_size=8, lr=3e-3, seed=0, schedule="constant", weight_decay=0.0)
    result = finetune_seq2seq(ft, tok, pairs, cfg, pairs, 64, 8)
    assert result["eval"]["exact_match"] == 100.0 and result["eval"]["rouge_l"] == 100.0, result["eval"]["samples"]
    assert result["history"][-1]["loss"] < 0.1 * result["history"][0]["loss"]
    # Beam search decodes the same memorised targets.
    assert evaluate_seq2seq(ft, tok, pairs, 64, 8, num_beams=3)["exact_match"] == 100.0


def test_finetune_and_predict_cli_seq2seq(minilm_dir, tok, pairs, tmp_path):
    tiny_dir = tmp_path / "tiny"
    _tiny(tok).save_pretrained(tiny_dir)
    tok.save_pretrained(tiny_dir)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"source": e.text, "target": e.label}) + "\n" for e in pairs))
    out = tmp_path / "out"
    argv = ["finetune", "--model", str(tiny_dir), "--train", str(data), "--eval", str(data), "--task", "seq2seq",
            "--epochs", "150", "--batch-size", "8", "--lr", "3e-3", "--schedule", "constant", "--weight-decay", "0",
            "--max-length", "64", "--max-target-length", "8", "--output", str(out), "--quiet"]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "seq2seq" and metrics["exact_match"] == 100.0
    src = tmp_path / "sources.txt"
    src.write_text("\n".join(e.text for e in pairs) + "\n")
    pred = tmp_path / "pred.jsonl"
    assert main(["predict", "--model", str(out), "--input", str(src), "--output", str(pred)]) == 0
    assert [json.loads(x)["output"] for x in pred.read_text().splitlines()] == [e.label for e in pairs]
    # The real checkpoint: BERT -> UNILM (segment table grown to 6), a short run.
    real = tmp_path / "real"
    assert main(["finetune", "--model", str(minilm_dir), "--train", str(data), "--eval", str(data), "--task", "seq2seq",
                 "--epochs", "1", "--max-length", "32", "--max-target-length", "4", "--output", str(real),
                 "--quiet"]) == 0
    cfg = json.loads((real / "config.json").read_text())
    assert cfg["type_vocab_size"] == 6 and cfg["unimask_task"]["task"] == "seq2seq"
    # Bad input exits 2.
    assert main(argv[:-3] + ["--mask-prob", "0", "--output", str(tmp_path / "x")]) == 2
    assert main(argv[:-3] + ["--pooling", "mean", "--output", str(tmp_path / "y")]) == 2
