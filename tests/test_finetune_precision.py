"""``FinetuneConfig(precision="bf16")`` / ``--precision bf16``: the fine-tuning loops run their
forward passes under bf16 autocast (here on the CPU, where torch also autocasts).

Oracle: the same seeded first step in fp32. Under autocast the loss must differ (bf16 matmuls
were used) and stay within a few percent of the fp32 loss (the same computation at lower
precision); weights, gradients and optimizer state stay fp32.
"""

from __future__ import annotations

import json

import pytest
import torch

from unimask.cli import main
from unimask.corpus import demo_corpus_path, read_documents
from unimask.finetune import (
    Example,
    FinetuneConfig,
    LabelMap,
    QuestionAnswering,
    SequenceClassifier,
    TaggedSentence,
    TokenClassifier,
    finetune_classifier,
    finetune_qa,
    finetune_seq2seq,
    finetune_tagger,
    seq2seq_finetuner,
)
from unimask.finetune.qa import QAExample
from unimask.models import EncoderConfig, UnifiedLM
from unimask.tokenizer import WordPieceTokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tok(minilm_dir) -> WordPieceTokenizer:
    return WordPieceTokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def sents() -> list[str]:
    return [s for d in read_documents(demo_corpus_path("en")) for s in d if 5 <= len(s.split()) <= 16][:16]


def _first_loss(make_model, run, precision: str) -> tuple[float, torch.nn.Module]:
    torch.manual_seed(0)
    model = make_model()
    cfg = FinetuneConfig(epochs=1, batch_size=16, lr=1e-5, max_length=32, seed=0, precision=precision)
    result = run(model, cfg)
    return result["history"][0]["loss"], model


def _check(make_model, run):
    fp32, _ = _first_loss(make_model, run, "fp32")
    bf16, model = _first_loss(make_model, run, "bf16")
    assert bf16 != fp32 and bf16 == pytest.approx(fp32, rel=0.05), (fp32, bf16)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_classifier_and_tagger_train_under_bf16_autocast(minilm_dir, tok, sents):
    labels = LabelMap(["a", "b"])
    train = [Example(s, label="ab"[i % 2]) for i, s in enumerate(sents)]
    _check(lambda: SequenceClassifier.from_pretrained(minilm_dir, labels, num_labels=2),
           lambda m, cfg: finetune_classifier(m, tok, train, cfg))
    tags = LabelMap(["O", "B-X"])
    tagged = [TaggedSentence(s.split(), ["B-X" if i % 3 == 0 else "O" for i in range(len(s.split()))]) for s in sents]
    _check(lambda: TokenClassifier.from_pretrained(minilm_dir, tags, num_labels=2),
           lambda m, cfg: finetune_tagger(m, tok, tagged, cfg))


def test_qa_and_seq2seq_train_under_bf16_autocast(minilm_dir, tok, sents):
    qa = [QAExample("Where does it say it?", s, ((s.split()[1], s.index(s.split()[1])),)) for s in sents]
    _check(lambda: QuestionAnswering.from_pretrained(minilm_dir), lambda m, cfg: finetune_qa(m, tok, qa, cfg, stride=8))
    pairs = [Example(s, label=" ".join(s.split()[:2])) for s in sents]
    tiny = EncoderConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=128, type_vocab_size=6, max_position_embeddings=128)
    _check(lambda: UnifiedLM(tiny), lambda m, cfg: finetune_seq2seq(seq2seq_finetuner(m, tok), tok, pairs, cfg, None, 32, 8))


def test_precision_flag_and_bad_values(minilm_dir, sents, tmp_path):
    with pytest.raises(ValueError, match="precision must be 'fp32' or 'bf16'"):
        FinetuneConfig(precision="fp16")
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": s, "label": "ab"[i % 2]}) + "\n" for i, s in enumerate(sents)))
    out = tmp_path / "out"
    assert main(["finetune", "--model", str(minilm_dir), "--train", str(data), "--eval", str(data), "--epochs", "1",
                 "--max-length", "32", "--precision", "bf16", "--output", str(out), "--quiet"]) == 0
    assert json.loads((out / "metrics.json").read_text())["config"]["precision"] == "bf16"


def _tiny_cfg(tok) -> EncoderConfig:
    return EncoderConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0)


@pytest.mark.parametrize("kind", ["classify", "tag"])
def test_grad_accum_equals_one_big_batch(tok, sents, kind):
    """Two micro-batches of 8 accumulated make the same optimizer step as one batch of 16 (no
    dropout; the same 16 examples, the same constant rate): the weights after it agree. (Each
    micro-batch's loss is weighted by its share of the step's scored targets; unequal token
    counts, short last batches and windows: ``tests/test_finetune_accum.py``.)"""
    labels = LabelMap(["a", "b"]) if kind == "classify" else LabelMap(["O", "B-X"])
    if kind == "classify":
        data = [Example(s, label="ab"[i % 2]) for i, s in enumerate(sents)]
    else:
        # Five words each (equal token counts; see test_finetune_accum.py for unequal ones).
        data = [TaggedSentence(s.split()[:5], ["B-X" if j % 3 == 0 else "O" for j in range(5)]) for s in sents]

    def run(batch_size, grad_accum):
        torch.manual_seed(0)
        cls = SequenceClassifier if kind == "classify" else TokenClassifier
        model = cls(_tiny_cfg(tok), labels, num_labels=2)
        cfg = FinetuneConfig(epochs=1, batch_size=batch_size, grad_accum=grad_accum, lr=1e-2, schedule="constant",
                             max_length=32, seed=0, weight_decay=0.0)
        result = (finetune_classifier if kind == "classify" else finetune_tagger)(model, tok, data, cfg)
        return model.state_dict(), result["history"]

    big, h_big = run(16, 1)
    small, h_small = run(8, 2)
    assert len(h_big) == 1 and len(h_small) == 2
    for k, v in big.items():
        torch.testing.assert_close(small[k], v, rtol=1e-4, atol=1e-6)
    # And the step really happened (the weights differ from the initial ones).
    torch.manual_seed(0)
    init = (SequenceClassifier if kind == "classify" else TokenClassifier)(_tiny_cfg(tok), labels, num_labels=2).state_dict()
    assert any(not torch.equal(init[k], big[k]) for k in big)
    with pytest.raises(ValueError, match="grad_accum must be an int >= 1"):
        FinetuneConfig(grad_accum=0)
    with pytest.raises(ValueError, match="does not combine with CVT"):
        FinetuneConfig(grad_accum=2, cvt_unlabeled="x.txt")
