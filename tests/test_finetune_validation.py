"""Argument checks of the fine-tuning API: bad input is a ValueError/TypeError naming the
argument and value, never an obscure torch error, a silent broadcast or a run that trains
nothing. Each rejection sits next to a check that valid input at the edge of the domain still
gives the value an independent oracle (the paper's formula, a hand computation) gives."""

from __future__ import annotations

import math

import pytest
import torch

from unimask.finetune import (
    MultiTaskModel,
    ScalarMix,
    best_span,
    contrastive_loss,
    cosine_similarity_loss,
    discriminative_param_groups,
    entity_spans,
    in_batch_negatives_loss,
    mtdnn_schedule,
    slanted_triangular_lr,
    train_multitask,
)
from unimask.finetune.data import LabelMap
from unimask.finetune.heads import SequenceClassifier
from unimask.finetune.tagging import entity_scores
from unimask.models import EncoderConfig, TransformerEncoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(**kw) -> EncoderConfig:
    base = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    base.update(kw)
    return EncoderConfig(**base)


def _batch(n: int = 2) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.ones(n, 3, dtype=torch.long), "labels": torch.arange(n) % 2}


# -- MT-DNN -----------------------------------------------------------------------------------


def test_train_multitask_rejects_a_task_without_batches():
    torch.manual_seed(0)
    model = MultiTaskModel(TransformerEncoder(_cfg()), {"a": 2, "b": 2})
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="task 'b' has no mini-batches"):
        train_multitask(model, {"a": [_batch()], "b": []})
    with pytest.raises(ValueError, match="at least one task"):
        train_multitask(model, {})
    for bad, match in (({"epochs": 0}, "epochs must be an int >= 1, got 0"),
                       ({"epochs": 1.5}, "epochs must be an int >= 1, got 1.5"),
                       ({"lr": float("nan")}, "lr must be a finite number > 0, got nan"),
                       ({"grad_clip": -1.0}, "grad_clip must be a finite number >= 0, got -1.0")):
        with pytest.raises(ValueError, match=match):
            train_multitask(model, {"a": [_batch()], "b": [_batch()]}, **bad)
    # nothing was trained by the refused calls
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    # both tasks with data: one step per batch per epoch (2 tasks x 1 batch x 2 epochs)
    hist = train_multitask(model, {"a": [_batch()], "b": [_batch()]}, epochs=2, lr=1e-3, grad_clip=None)
    assert sorted(h["task"] for h in hist) == ["a", "a", "b", "b"]


def test_mtdnn_schedule_all_counts_zero_is_an_error_but_one_zero_task_is_not():
    with pytest.raises(ValueError, match="at least one batch"):
        mtdnn_schedule({"a": 0, "b": 0})
    # documented: a task with 0 batches never appears, the others each appear n_t times
    order = mtdnn_schedule({"a": 0, "b": 3}, seed=1)
    assert sorted(order) == [("b", 0), ("b", 1), ("b", 2)]


# -- features ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [2.5, "2", True, None])
def test_scalar_mix_num_layers_must_be_an_int(bad):
    with pytest.raises(TypeError, match="num_layers must be an int >= 1"):
        ScalarMix(bad)
    with pytest.raises(ValueError, match="num_layers must be an int >= 1, got 0"):
        ScalarMix(0)
    # equal softmax weights and gamma 1 at the start: the mean of the layers
    h = torch.randn(3, 2, 4)
    torch.testing.assert_close(ScalarMix(3)(h), h.mean(0))


# -- QA ---------------------------------------------------------------------------------------


def test_best_span_mask_of_another_shape_is_a_value_error():
    s, e = torch.tensor([[0.0, 3.0, 1.0, 0.0, 2.0]] * 2), torch.tensor([[0.0, 0.0, 1.0, 4.0, 0.0]] * 2)
    with pytest.raises(ValueError, match=r"context_mask shape \(2, 4\) differs from the logits shape \(2, 5\)"):
        best_span(s, e, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"context_mask shape \(5,\) differs"):  # broadcastable, still wrong
        best_span(s, e, torch.ones(5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"start_logits must be \[B, L\] or \[L\]"):
        best_span(s[None], e[None])
    with pytest.raises(ValueError, match="start/end logits shapes differ"):
        best_span(s[0], e)
    with pytest.raises(ValueError, match="max_answer_length must be an int >= 1, got 2.5"):
        best_span(s, e, None, 2.5)
    # hand value: best s[i] + e[j], i <= j: s[1] + e[3] = 7 -> (1, 3); with position 3 masked
    # out of the context: s[1] + e[2] = 4 or s[4] + e[4] = 2 -> (1, 2)
    i, j, score = best_span(s, e, torch.ones(2, 5, dtype=torch.bool))
    assert i.tolist() == [1, 1] and j.tolist() == [3, 3] and score.tolist() == [7.0, 7.0]
    mask = torch.tensor([[True, True, True, False, True]] * 2)
    i, j, score = best_span(s, e, mask)
    assert i.tolist() == [1, 1] and j.tolist() == [2, 2] and score.tolist() == [4.0, 4.0]


# -- schedules --------------------------------------------------------------------------------


def test_stlr_is_defined_for_integer_steps_in_0_to_T_only():
    # ULMFiT eq. 3: t indexes the T training iterations; outside [0, T] there is no rate
    for t in (-1, 101, 105):
        with pytest.raises(ValueError, match=rf"t must be an int in \[0, 100\], got {t}"):
            slanted_triangular_lr(t, 100)
    with pytest.raises(ValueError, match="t must be an int"):
        slanted_triangular_lr(0.5, 100)
    with pytest.raises(ValueError, match="total_steps must be an int >= 1, got 2.5"):
        slanted_triangular_lr(0, 2.5)
    with pytest.raises(ValueError, match="ratio must be a finite number >= 1, got nan"):
        slanted_triangular_lr(0, 100, ratio=float("nan"))
    with pytest.raises(ValueError, match="lr_max must be a finite number, got inf"):
        slanted_triangular_lr(0, 100, lr_max=float("inf"))
    # the ends of the domain, by hand (T = 100, cut = 10, ratio 32): lr/32 at t = 0 and t = T
    assert slanted_triangular_lr(0, 100, 0.01) == pytest.approx(0.01 / 32)
    assert slanted_triangular_lr(100, 100, 0.01) == pytest.approx(0.01 / 32)


def test_discriminative_groups_reject_a_non_finite_or_non_positive_decay():
    model = SequenceClassifier(_cfg(), LabelMap(["a", "b"]))
    for decay in (float("nan"), float("inf"), 0.0, -2.6):
        with pytest.raises(ValueError, match=f"decay must be a finite number > 0, got {decay}"):
            discriminative_param_groups(model, 1e-3, decay)
    with pytest.raises(ValueError, match="lr must be a finite number > 0, got nan"):
        discriminative_param_groups(model, float("nan"))
    # embeddings are 3 levels below the head (2 layers): lr / 2 ** 3
    lrs = {g["name"]: g["lr"] for g in discriminative_param_groups(model, 1e-3, 2.0)}
    assert lrs["head"] == pytest.approx(1e-3) and lrs["embeddings"] == pytest.approx(1e-3 / 8)


# -- siamese losses ---------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), 0.0, -1.0])
def test_in_batch_negatives_scale_must_be_finite_and_positive(scale):
    with pytest.raises(ValueError, match=f"scale must be a finite number > 0, got {scale}"):
        in_batch_negatives_loss(torch.randn(2, 3), torch.randn(2, 3), scale)


def test_in_batch_negatives_hidden_size_mismatch_is_a_value_error():
    with pytest.raises(ValueError, match=r"got \(2, 3\) and \(2, 4\)"):
        in_batch_negatives_loss(torch.randn(2, 3), torch.randn(2, 4))
    # orthonormal rows: cos = identity, loss = -log(e^s / (e^s + 1)) per row, s = scale = 2
    a = torch.eye(2)
    assert in_batch_negatives_loss(a, a, 2.0).item() == pytest.approx(math.log1p(math.exp(-2.0)), rel=1e-6)


def test_pair_losses_never_broadcast_targets_or_embeddings():
    a, b = torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # cos = [1, 0]
    for loss, name in ((cosine_similarity_loss, "target"), (contrastive_loss, "label")):
        with pytest.raises(ValueError, match=rf"need one {name} per pair: {name} shape \(3,\)"):
            loss(a, b, torch.ones(3))
        with pytest.raises(ValueError, match=rf"{name} shape \(1,\)"):  # would broadcast silently
            loss(a, b, torch.ones(1))
        with pytest.raises(ValueError, match=rf"{name} shape \(2, 1\)"):
            loss(a, b, torch.ones(2, 1))
        with pytest.raises(ValueError, match=r"got \(2, 2\) and \(1, 2\)"):
            loss(a, b[:1], torch.ones(2))
    with pytest.raises(ValueError, match="margin must be a finite number, got nan"):
        contrastive_loss(a, b, torch.ones(2), float("nan"))
    # by hand: cos = [1, 0]; MSE vs [1, 1] = (0 + 1) / 2; contrastive with y = [1, 0], d = [0, 1],
    # margin 0.5: 0.5 * (1 * 0 + relu(0.5 - 1)^2) averaged = 0
    assert cosine_similarity_loss(a, b, torch.ones(2)).item() == pytest.approx(0.5)
    assert contrastive_loss(a, b, torch.tensor([1.0, 0.0])).item() == pytest.approx(0.0)
    # y = [0, 1]: 0.5 * (relu(0.5 - 0)^2 + 1 * 1^2) / 2 = (0.125 + 0.5) / 2
    assert contrastive_loss(a, b, torch.tensor([0.0, 1.0])).item() == pytest.approx(0.3125)


# -- tagging ----------------------------------------------------------------------------------


def test_entity_spans_of_one_str_is_a_type_error():
    with pytest.raises(TypeError, match="got one str 'B-PER'"):
        entity_spans("B-PER")
    with pytest.raises(TypeError, match="got one str"):  # sentences given as tag strings
        entity_scores(["B-PER O"], ["B-PER O"])
    assert entity_spans(["B-PER"]) == [("PER", 0, 1)]
