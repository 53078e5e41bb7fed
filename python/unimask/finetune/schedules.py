"""Fine-tuning schedules: slanted triangular LR, discriminative LRs, gradual unfreezing, SiATL.

Sources:

* ULMFiT (Howard & Ruder 2018, arXiv 1801.06146, sec. 3.2-3.3): discriminative fine-tuning
  ``lr_(l-1) = lr_l / 2.6``; slanted triangular learning rates (STLR) with
  ``cut = floor(T * cut_frac)``, ``p = t / cut`` if ``t < cut`` else
  ``1 - (t - cut) / (cut * (1 / cut_frac - 1))``, ``lr_t = lr_max * (1 + p * (ratio - 1)) / ratio``
  (``cut_frac = 0.1``, ``ratio = 32``); gradual unfreezing from the last layer down, one more
  layer group per epoch.
* SiATL (Chronopoulou et al. 2019, arXiv 1902.10547, sec. 2.3): ``L = L_task + gamma * L_LM``
  with ``gamma`` decaying exponentially from 0.2 to 0.1 (``exp(linspace(-1.6, -2.3))``).
* BERT (google-research/bert ``optimization.py``): linear warmup then linear decay.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .._checks import check_number

__all__ = [
    "slanted_triangular_lr",
    "slanted_triangular_schedule",
    "warmup_linear_schedule",
    "layer_groups",
    "discriminative_param_groups",
    "GradualUnfreezer",
    "siatl_gamma",
    "ULMFIT_DECAY",
]

#: ULMFiT's per-layer learning-rate divisor (Howard & Ruder 2018, sec. 3.2).
ULMFIT_DECAY = 2.6


def slanted_triangular_lr(t: int, total_steps: int, lr_max: float = 1.0, cut_frac: float = 0.1,
                          ratio: float = 32.0) -> float:
    """STLR learning rate at step ``t`` of ``total_steps`` (ULMFiT eq. 3).

    ``t`` counts optimizer steps from 0. The rate rises linearly from ``lr_max / ratio`` to
    ``lr_max`` over the first ``cut = floor(T * cut_frac)`` steps, then decays linearly back
    towards ``lr_max / ratio`` at ``t = T``. When ``T`` is not a multiple of ``1 / cut_frac``
    the paper's ``p`` turns negative in the last few steps (a rate below ``lr_max / ratio``,
    negative for tiny ``T``); unimask clamps ``p`` at 0. With ``cut = 0`` (``T < 1 / cut_frac``)
    there is no rising part and ``p = 1 - t / T``.

    The formula is defined for the steps of training only: ``T`` (``total_steps``) is an
    int >= 1 and ``t`` an int in ``[0, T]`` (``t = T`` is the rate after the last step, which
    a ``LambdaLR`` asks for); anything else is a ``ValueError`` naming it, as are a
    ``cut_frac`` outside ``(0, 1)``, a ``ratio`` < 1 and a non-finite ``lr_max``.
    """
    total_steps = check_number("total_steps", total_steps, 1, integer=True)
    t = check_number("t", t, 0, total_steps, integer=True)
    lr_max = check_number("lr_max", lr_max)
    cut_frac = check_number("cut_frac", cut_frac, 0, 1, lo_open=True, hi_open=True)
    ratio = check_number("ratio", ratio, 1)
    cut = math.floor(total_steps * cut_frac)
    if cut == 0:  # fewer steps than 1/cut_frac: no warmup part, decay only
        p = 1.0 - t / max(1, total_steps)
    elif t < cut:
        p = t / cut
    else:
        p = 1.0 - (t - cut) / (cut * (1.0 / cut_frac - 1.0))
    p = max(0.0, p)
    return lr_max * (1.0 + p * (ratio - 1.0)) / ratio


def slanted_triangular_schedule(optimizer: torch.optim.Optimizer, total_steps: int, cut_frac: float = 0.1,
                                ratio: float = 32.0) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` applying :func:`slanted_triangular_lr` as a factor of each group's base lr
    (so discriminative per-layer rates keep their ratios)."""
    slanted_triangular_lr(0, total_steps, 1.0, cut_frac, ratio)  # validate arguments now
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda t: slanted_triangular_lr(t, total_steps, 1.0, cut_frac, ratio))


def warmup_linear_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int,
                           total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """BERT's linear warmup from 0 then linear decay to 0 (same as :func:`unimask.training.linear_schedule`)."""
    from ..training import linear_schedule  # noqa: PLC0415

    return linear_schedule(optimizer, warmup_steps, total_steps)


def layer_groups(model: nn.Module) -> list[list[tuple[str, nn.Parameter]]]:
    """Parameters of a fine-tuning model in ULMFiT layer groups, lowest first.

    Group 0 is the embeddings, groups ``1..L`` the encoder layers, and the last group
    everything else (pooler, task heads). The model must expose its
    :class:`~unimask.models.TransformerEncoder` as ``.encoder`` (or be one).
    """
    encoder = model if hasattr(model, "layers") and hasattr(model, "embeddings") else getattr(model, "encoder", None)
    if encoder is None or not hasattr(encoder, "layers"):
        raise TypeError(f"{type(model).__name__} has no TransformerEncoder at .encoder")
    owner: dict[int, int] = {}
    for p in encoder.embeddings.parameters():
        owner[id(p)] = 0
    for i, layer in enumerate(encoder.layers):
        for p in layer.parameters():
            owner[id(p)] = i + 1
    top = len(encoder.layers) + 1
    groups: list[list[tuple[str, nn.Parameter]]] = [[] for _ in range(top + 1)]
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        groups[owner.get(id(p), top)].append((name, p))
    return groups


def discriminative_param_groups(model: nn.Module, lr: float, decay: float = ULMFIT_DECAY,
                                weight_decay: float = 0.0) -> list[dict]:
    """Optimizer parameter groups with ULMFiT discriminative learning rates.

    The top group (task head, pooler) gets ``lr``; each group below gets the rate of the one
    above divided by ``decay`` (2.6): encoder layer ``L`` gets ``lr / 2.6``, layer ``l`` gets
    ``lr / 2.6 ** (L + 1 - l)``, the embeddings ``lr / 2.6 ** (L + 1)``. ``decay=1`` gives one
    rate everywhere. Biases and LayerNorm parameters get no weight decay (BERT). Each group
    carries ``layer`` (0 = embeddings) and ``name`` for inspection. ``lr`` and ``decay`` must
    be finite numbers > 0 and ``weight_decay`` a finite number >= 0 (``ValueError`` otherwise).
    """
    lr = check_number("lr", lr, 0, lo_open=True)
    decay = check_number("decay", decay, 0, lo_open=True)
    weight_decay = check_number("weight_decay", weight_decay, 0)
    groups = layer_groups(model)
    top = len(groups) - 1
    out: list[dict] = []
    for level, params in enumerate(groups):
        group_lr = lr / decay ** (top - level)
        no_decay = [n.endswith("bias") or _is_layer_norm(model, n) for n, _ in params]
        decayed = [p for (_, p), nd in zip(params, no_decay) if not nd]
        plain = [p for (_, p), nd in zip(params, no_decay) if nd]
        name = "embeddings" if level == 0 else ("head" if level == top else f"layer{level - 1}")
        for ps, wd in ((decayed, weight_decay), (plain, 0.0)):
            if ps:
                out.append({"params": ps, "lr": group_lr, "weight_decay": wd, "layer": level, "name": name})
    return out


def _is_layer_norm(model: nn.Module, param_name: str) -> bool:
    module_name = param_name.rpartition(".")[0]
    module = model.get_submodule(module_name) if module_name else model
    return isinstance(module, nn.LayerNorm)


class GradualUnfreezer:
    """ULMFiT gradual unfreezing: start with only the top group trainable, unfreeze one more
    group (going down) at each :meth:`step` (call once per epoch).

    ``groups`` are the :func:`layer_groups` (lowest first). :attr:`unfrozen` is the number of
    trainable groups, counted from the top.
    """

    def __init__(self, model: nn.Module, groups_per_step: int = 1) -> None:
        if groups_per_step < 1:
            raise ValueError(f"groups_per_step must be >= 1, got {groups_per_step}")
        self.groups = layer_groups(model)
        self.groups_per_step = groups_per_step
        self.unfrozen = 0
        for params in self.groups:
            for _, p in params:
                p.requires_grad_(False)
        self._unfreeze(1)

    def _unfreeze(self, n: int) -> None:
        self.unfrozen = min(len(self.groups), self.unfrozen + n)
        for params in self.groups[len(self.groups) - self.unfrozen:]:
            for _, p in params:
                p.requires_grad_(True)

    def step(self) -> int:
        """Unfreeze the next ``groups_per_step`` groups below; returns :attr:`unfrozen`."""
        self._unfreeze(self.groups_per_step)
        return self.unfrozen

    def trainable_levels(self) -> list[int]:
        """Indices (0 = embeddings) of the groups whose parameters are all trainable."""
        return [i for i, params in enumerate(self.groups) if params and all(p.requires_grad for _, p in params)]


def siatl_gamma(step: int, total_steps: int, start: float = -1.6, end: float = -2.3) -> float:
    """SiATL auxiliary-LM weight at ``step``: ``exp(linspace(start, end, total_steps))[step]``
    (0.2 decaying exponentially to 0.1 with the defaults)."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= step < total_steps:
        raise ValueError(f"step must be in [0, {total_steps}), got {step}")
    if total_steps == 1:
        return math.exp(start)
    return math.exp(start + (end - start) * step / (total_steps - 1))

