"""MT-DNN heads check their labels as ``SequenceClassifier`` does (heads.py's ``_class_targets``
/ ``_scored_ce``), regression targets ``[N]`` and ``[N, 1]`` give the same per-row MSE, and an
extra task of ``finetune_classifier`` is a classifier: one with a single label is refused
instead of silently becoming a 1-output MSE regression head."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from unimask.finetune import Example, FinetuneConfig, LabelMap, MultiTaskModel, SequenceClassifier, finetune_classifier
from unimask.finetune.multitask import TaskHead
from unimask.models import EncoderConfig, TransformerEncoder
from unimask.tokenizer import WordPieceTokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FIX = Path(__file__).parent / "fixtures" / "finetune"


def _cfg(vocab_size: int = 120) -> EncoderConfig:
    return EncoderConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0)


@pytest.fixture
def mt() -> MultiTaskModel:
    torch.manual_seed(0)
    return MultiTaskModel(TransformerEncoder(_cfg()), {"c": 3, "r": 1}).eval()


IDS = torch.arange(5, 23).reshape(3, 6)


def test_class_labels_checked_like_sequence_classifier(mt):
    torch.manual_seed(0)
    sc = SequenceClassifier(_cfg(), LabelMap(["x", "y", "z"])).eval()
    cases = [
        (torch.tensor([1.7, 0.2, 2.9]), TypeError, "labels must be integer class ids, got dtype torch.float32"),
        (torch.tensor([0, 5, 1]), ValueError, r"labels\[1\] = 5 is not a class id in \[0, 3\)"),
        (torch.tensor([0, -1, 1]), ValueError, r"labels\[1\] = -1 is not a class id in \[0, 3\)"),
        (torch.tensor([0, 1]), ValueError, r"labels must have shape \(3,\), got \(2,\)"),
    ]
    for labels, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            mt(task="c", input_ids=IDS, labels=labels)
        with pytest.raises(exc, match=msg):  # the same behaviour in both heads
            sc(IDS, labels=labels)


def test_class_loss_over_scored_rows_and_zero_without_any(mt):
    logits = mt(task="c", input_ids=IDS).logits.detach()
    labels = torch.tensor([2, -100, 0])
    # hand-computed: mean over the scored rows 0 and 2 of -log softmax(logits)[label]
    logp = logits.log_softmax(-1)
    want = -(logp[0, 2] + logp[2, 0]) / 2
    torch.testing.assert_close(mt(task="c", input_ids=IDS, labels=labels).loss, want, atol=1e-6, rtol=1e-6)
    none = mt(task="c", input_ids=IDS, labels=torch.full((3,), -100))
    assert none.loss.item() == 0.0  # was NaN
    none.loss.backward()  # keeps the graph (a no-op step, as SequenceClassifier)


def test_regression_targets_n_and_n1_give_the_per_row_mse(mt):
    y = torch.tensor([0.5, -1.0, 2.0])
    pred = mt(task="r", input_ids=IDS).logits.detach()[:, 0]
    want = ((pred - y) ** 2).mean()  # the oracle: per-row squared error, averaged
    for labels in (y, y[:, None]):
        torch.testing.assert_close(mt(task="r", input_ids=IDS, labels=labels).loss, want, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match=r"regression labels must have shape \(3,\) or \(3, 1\), got \(3, 3\)"):
        mt(task="r", input_ids=IDS, labels=y[:, None].expand(3, 3))


def test_task_head_kind_is_explicit_or_follows_num_labels():
    assert TaskHead(8, 1).problem_type == "regression"
    assert TaskHead(8, 4).problem_type == "classification"
    with pytest.raises(ValueError, match="a classification head needs num_labels >= 2, got 1"):
        TaskHead(8, 1, problem_type="classification")
    with pytest.raises(ValueError, match="a regression head has num_labels 1, got 3"):
        TaskHead(8, 3, problem_type="regression")
    with pytest.raises(ValueError, match="num_labels must be an int >= 1, got 0"):
        MultiTaskModel(TransformerEncoder(_cfg()), {"a": 0})


def test_extra_task_with_one_label_is_refused(minilm_dir):
    tok = WordPieceTokenizer.from_pretrained(minilm_dir)
    rows = [json.loads(x) for x in (FIX / "fortunes_train.jsonl").read_text().splitlines()[:8]]
    train = [Example(r["text"], None, r["label"], i + 1) for i, r in enumerate(rows)]
    torch.manual_seed(0)
    model = SequenceClassifier(_cfg(tok.vocab_size), LabelMap.from_examples(train))
    cfg = FinetuneConfig(epochs=1, batch_size=4, max_length=24)
    one = [Example(e.text, None, "x") for e in train[:5]]
    with pytest.raises(ValueError, match=r"extra task 'one' has a single label \['x'\]"):
        finetune_classifier(model, tok, train, cfg, extra_tasks={"one": one})
    # two labels: a 2-way classification head trained by cross-entropy on the class ids
    two = [Example(e.text, None, "xy"[i % 2]) for i, e in enumerate(train)]
    res = finetune_classifier(model, tok, train, cfg, extra_tasks={"two": two})
    head = res["extra_heads"]["two"]
    assert head.num_labels == 2 and head.problem_type == "classification"
