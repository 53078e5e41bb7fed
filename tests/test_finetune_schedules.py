"""Fine-tuning schedules vs the papers' formulas, written out independently here.

Oracles: ULMFiT (Howard & Ruder 2018) eq. 3 for STLR, sec. 3.2 for discriminative rates
(lr_{l-1} = lr_l / 2.6), sec. 3.3 for gradual unfreezing (last layer first); SiATL
(Chronopoulou et al. 2019) gamma = exp(linspace(-1.6, -2.3)); MT-DNN (Liu et al. 2019)
sampling in proportion to the number of mini-batches (chi-square / binomial tests).
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from unimask.finetune import (
    GradualUnfreezer,
    discriminative_param_groups,
    layer_groups,
    mtdnn_schedule,
    siatl_gamma,
    slanted_triangular_lr,
    slanted_triangular_schedule,
)
from unimask.finetune.heads import SequenceClassifier
from unimask.finetune.data import LabelMap
from unimask.models import EncoderConfig


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _stlr_paper(t: int, T: int, lr_max: float, cut_frac: float = 0.1, ratio: float = 32) -> float:
    cut = math.floor(T * cut_frac)
    p = t / cut if t < cut else 1 - (t - cut) / (cut * (1 / cut_frac - 1))
    # when T is not a multiple of 1/cut_frac the formula's p goes below 0 near the end (and
    # the rate below lr/ratio, even negative for tiny T); unimask holds it at lr/ratio
    p = max(p, 0.0)
    return lr_max * (1 + p * (ratio - 1)) / ratio


def _tiny_model(layers: int = 3) -> SequenceClassifier:
    cfg = EncoderConfig(vocab_size=50, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    return SequenceClassifier(cfg, LabelMap(["a", "b", "c"]))


@pytest.mark.parametrize("T", [10, 100, 1000, 137, 19])
def test_stlr_matches_paper_formula_at_every_step(T):
    for t in range(T + 1):
        assert slanted_triangular_lr(t, T, 0.01) == pytest.approx(_stlr_paper(t, T, 0.01), rel=1e-12)


def test_stlr_hand_values():
    # T = 1000, cut = 100: t=0 -> lr/32, t=50 -> halfway up, t=100 -> peak, t=1000 -> lr/32
    lr = 0.01
    assert slanted_triangular_lr(0, 1000, lr) == pytest.approx(lr / 32)
    assert slanted_triangular_lr(50, 1000, lr) == pytest.approx(lr * (1 + 0.5 * 31) / 32)
    assert slanted_triangular_lr(100, 1000, lr) == pytest.approx(lr)
    assert slanted_triangular_lr(550, 1000, lr) == pytest.approx(lr * (1 + 0.5 * 31) / 32)
    assert slanted_triangular_lr(1000, 1000, lr) == pytest.approx(lr / 32)


def test_stlr_scheduler_scales_each_group_and_keeps_discriminative_ratios():
    model = _tiny_model()
    groups = discriminative_param_groups(model, 1e-3)
    opt = torch.optim.SGD(groups, lr=1e-3)
    base = [g["lr"] for g in opt.param_groups]
    sched = slanted_triangular_schedule(opt, 200)
    for t in range(200):
        f = _stlr_paper(t, 200, 1.0)
        for g, b in zip(opt.param_groups, base):
            assert g["lr"] == pytest.approx(b * f, rel=1e-9)
        opt.step()
        sched.step()


def test_stlr_rejects_bad_arguments():
    with pytest.raises(ValueError, match="total_steps"):
        slanted_triangular_lr(0, 0)
    with pytest.raises(ValueError, match="cut_frac"):
        slanted_triangular_lr(0, 10, cut_frac=1.5)


def test_discriminative_lrs_divide_by_2_6_per_layer_with_embeddings_lowest():
    model = _tiny_model(layers=3)
    lr = 1e-3
    groups = discriminative_param_groups(model, lr)
    by_name = {}
    for g in groups:
        by_name.setdefault(g["name"], set()).add(g["lr"])
    assert all(len(v) == 1 for v in by_name.values())
    lrs = {k: v.pop() for k, v in by_name.items()}
    assert lrs["head"] == pytest.approx(lr)
    assert lrs["layer2"] == pytest.approx(lr / 2.6)
    assert lrs["layer1"] == pytest.approx(lr / 2.6 ** 2)
    assert lrs["layer0"] == pytest.approx(lr / 2.6 ** 3)
    assert lrs["embeddings"] == pytest.approx(lr / 2.6 ** 4)
    # every parameter exactly once, and each in the right group
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    emb = {id(p) for p in model.encoder.embeddings.parameters()}
    l1 = {id(p) for p in model.encoder.layers[1].parameters()}
    head = {id(p) for p in model.classifier.parameters()}
    for g in groups:
        got = {id(p) for p in g["params"]}
        if g["name"] == "embeddings":
            assert got <= emb
        if g["name"] == "layer1":
            assert got <= l1
        if g["name"] == "head":
            assert head & got or not got & (emb | l1)
    # no weight decay on biases / LayerNorm
    for g in discriminative_param_groups(model, lr, weight_decay=0.01):
        for p in g["params"]:
            name = next(n for n, q in model.named_parameters() if q is p)
            is_ln = "ln" in name.split(".")[-2] if "." in name else False
            if name.endswith("bias") or is_ln:
                assert g["weight_decay"] == 0.0, name


def test_layer_groups_order():
    model = _tiny_model(layers=2)
    groups = layer_groups(model)
    assert len(groups) == 4  # embeddings, layer0, layer1, head(+pooler)
    assert all(n.startswith("encoder.embeddings.") for n, _ in groups[0])
    assert all(n.startswith("encoder.layers.0.") for n, _ in groups[1])
    assert all(n.startswith("encoder.layers.1.") for n, _ in groups[2])
    assert {n.split(".")[0] for n, _ in groups[3]} <= {"classifier", "encoder"}
    assert any(n.startswith("classifier") for n, _ in groups[3])


def test_gradual_unfreezing_goes_top_down_one_group_per_step():
    model = _tiny_model(layers=3)
    u = GradualUnfreezer(model)
    n = len(u.groups)  # 5
    seen = [u.trainable_levels()]
    for _ in range(n + 1):
        u.step()
        seen.append(u.trainable_levels())
    assert seen[0] == [n - 1]  # only the head
    for k, levels in enumerate(seen[: n]):
        assert levels == list(range(n - 1 - k, n)), (k, levels)
    assert seen[-1] == list(range(n))
    # a frozen group really gets no gradient
    model2 = _tiny_model(layers=3)
    u2 = GradualUnfreezer(model2)
    x = torch.randint(5, 50, (2, 7))
    model2(x, labels=torch.tensor([0, 1])).loss.backward()
    assert model2.classifier.weight.grad is not None
    assert all(p.grad is None for p in model2.encoder.layers.parameters())
    assert all(p.grad is None for p in model2.encoder.embeddings.parameters())
    u2.step()
    model2(x, labels=torch.tensor([0, 1])).loss.backward()
    assert all(p.grad is not None for p in model2.encoder.layers[2].parameters())
    assert all(p.grad is None for p in model2.encoder.layers[1].parameters())


def test_siatl_gamma_is_exp_linspace():
    T = 57
    expected = np.exp(np.linspace(-1.6, -2.3, T))
    got = np.array([siatl_gamma(t, T) for t in range(T)])
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert got[0] == pytest.approx(0.2019, abs=1e-4) and got[-1] == pytest.approx(0.1003, abs=1e-4)
    with pytest.raises(ValueError):
        siatl_gamma(T, T)


def test_mtdnn_schedule_counts_are_exact_and_batches_are_each_used_once():
    counts = {"a": 7, "b": 30, "c": 1}
    order = mtdnn_schedule(counts, seed=3, epoch=1)
    assert Counter(t for t, _ in order) == Counter(counts)
    for task, n in counts.items():
        assert sorted(i for t, i in order if t == task) == list(range(n))
    assert order == mtdnn_schedule(counts, seed=3, epoch=1)
    assert order != mtdnn_schedule(counts, seed=3, epoch=2)


def test_mtdnn_task_sampling_proportional_to_batches_chi_square():
    # at a fixed position (the first step of an epoch), the task is drawn with probability
    # n_t / sum(n): chi-square goodness of fit over 3000 independent epochs
    counts = {"big": 60, "mid": 30, "small": 10}
    n_epochs = 3000
    firsts = Counter(mtdnn_schedule(counts, seed=11, epoch=e)[0][0] for e in range(n_epochs))
    total = sum(counts.values())
    chi2 = sum((firsts[t] - n_epochs * c / total) ** 2 / (n_epochs * c / total) for t, c in counts.items())
    assert chi2 < 13.8, (firsts, chi2)  # df = 2, p = 0.001
    # and the first half of an epoch holds about half of each task's batches (binomial-ish)
    order = mtdnn_schedule({"x": 400, "y": 100}, seed=5)
    half = Counter(t for t, _ in order[:250])
    # hypergeometric sd of the count of y in the first half: sqrt(250*0.2*0.8*250/499) ~ 4.5
    assert abs(half["y"] - 50) < 5 * 4.5


def test_mtdnn_schedule_rejects_bad_counts():
    with pytest.raises(ValueError, match="task 'a'"):
        mtdnn_schedule({"a": -1})
    with pytest.raises(ValueError):
        mtdnn_schedule({})


def test_linear_warmup_then_decay_matches_bert_formula():
    from unimask.finetune.schedules import warmup_linear_schedule

    model = _tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=2e-5)
    T, W = 50, 5
    sched = warmup_linear_schedule(opt, W, T)
    for t in range(T + 1):
        expected = 2e-5 * (t / W if t < W else (T - t) / (T - W))
        assert opt.param_groups[0]["lr"] == pytest.approx(expected, abs=1e-15), t
        opt.step()
        sched.step()
