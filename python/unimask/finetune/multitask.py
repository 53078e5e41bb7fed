"""MT-DNN multi-task fine-tuning (Liu et al. 2019, arXiv 1901.11504, algorithm 1).

One shared encoder, one head per task. Each epoch, every task's data is cut into mini-batches,
all mini-batches of all tasks are merged and shuffled, and training walks that list: every
mini-batch comes from exactly one task, and tasks are drawn in proportion to their number of
mini-batches. :func:`mtdnn_schedule` builds that order (a pure function of seed and epoch);
:class:`MultiTaskModel` routes a batch to its task's head.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from ..models.config import EncoderConfig
from ..models.encoder import TransformerEncoder
from .heads import POOLINGS, TaskOutput, _class_targets, _regression_mse, _scored_ce, pool_hidden

__all__ = ["mtdnn_schedule", "MultiTaskModel", "TaskHead"]


def mtdnn_schedule(batch_counts: Mapping[str, int], seed: int = 0, epoch: int = 0) -> list[tuple[str, int]]:
    """The epoch's mini-batch order: ``(task, batch index within the task)`` pairs.

    Task ``t`` appears exactly ``batch_counts[t]`` times (its batches in a shuffled order), and
    the merged list is shuffled uniformly, so at any position the chance of task ``t`` is
    ``n_t / sum(n)``. Deterministic in ``(seed, epoch)``.

    Counts are ints >= 0: a task with 0 batches simply never appears, but at least one task
    must have a batch (all counts 0 is a ``ValueError``: an epoch with nothing to train).
    """
    if not batch_counts:
        raise ValueError("mtdnn_schedule needs at least one task")
    for task, n in batch_counts.items():
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"batch count of task {task!r} must be an int >= 0, got {n!r}")
    if not any(batch_counts.values()):
        raise ValueError(f"mtdnn_schedule needs at least one batch, got all counts 0: {dict(batch_counts)}")
    rng = np.random.default_rng([seed, epoch])
    order: list[tuple[str, int]] = []
    for task in sorted(batch_counts):
        for i in rng.permutation(batch_counts[task]).tolist():
            order.append((task, i))
    perm = rng.permutation(len(order))
    return [order[i] for i in perm]


class TaskHead(nn.Module):
    """A classification or regression head on pooled encoder states.

    ``problem_type`` ``"classification"`` (cross-entropy over ``num_labels`` >= 2 classes) or
    ``"regression"`` (MSE of one output, ``num_labels`` 1); by default it follows
    ``num_labels`` (1: regression). Labels are checked as in
    :class:`~unimask.finetune.heads.SequenceClassifier`: class labels must be integer ids
    ``[N]`` in ``[0, num_labels)`` or ``-100`` (not scored; a float label is a ``TypeError``,
    another id a ``ValueError``), a batch without a scored label gives a 0 loss (not NaN);
    regression targets are ``[N]`` or ``[N, 1]``.
    """

    def __init__(self, hidden_size: int, num_labels: int, pooling: str = "cls", dropout: float = 0.1,
                 problem_type: str | None = None) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if isinstance(num_labels, bool) or not isinstance(num_labels, numbers.Integral) or num_labels < 1:
            raise ValueError(f"num_labels must be an int >= 1, got {num_labels!r}")
        num_labels = int(num_labels)
        if problem_type is None:
            problem_type = "regression" if num_labels == 1 else "classification"
        if problem_type not in ("classification", "regression"):
            raise ValueError(f"problem_type must be 'classification' or 'regression', got {problem_type!r}")
        if problem_type == "classification" and num_labels < 2:
            raise ValueError(f"a classification head needs num_labels >= 2, got {num_labels}")
        if problem_type == "regression" and num_labels != 1:
            raise ValueError(f"a regression head has num_labels 1, got {num_labels}")
        self.pooling = pooling
        self.num_labels = num_labels
        self.problem_type = problem_type
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(3 * hidden_size if pooling == "concat" else hidden_size, num_labels)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None,
                labels: torch.Tensor | None = None) -> TaskOutput:
        logits = self.classifier(self.dropout(pool_hidden(hidden, attention_mask, self.pooling)))
        loss = None
        if labels is not None:
            if self.problem_type == "regression":
                loss = _regression_mse(logits, labels)
            else:
                y = _class_targets(labels, self.num_labels, (logits.shape[0],), what="a class id")
                loss = _scored_ce(logits, y)
        return TaskOutput(loss, logits, last_hidden_state=hidden)


class MultiTaskModel(nn.Module):
    """Shared :class:`TransformerEncoder` + one :class:`TaskHead` per task.

    ``MultiTaskModel(encoder, {"sentiment": 2, "topic": 4, "sts": 1})`` (a task with 1 output is
    a regression head, >= 2 a classifier; labels checked as :class:`TaskHead` does);
    ``model(task="topic", input_ids=..., attention_mask=..., labels=...)``.
    """

    #: Batch fields the forward takes on the CPU (validated or used there, then copied to the
    #: device without waiting: no device synchronisation; ids range-checked), as
    #: :attr:`unimask.finetune.SequenceClassifier.host_batch_keys`.
    host_batch_keys = frozenset({"input_ids", "token_type_ids", "attention_mask", "labels"})

    def __init__(self, encoder: TransformerEncoder, tasks: Mapping[str, int], pooling: str = "cls") -> None:
        super().__init__()
        if not tasks:
            raise ValueError("MultiTaskModel needs at least one task")
        self.encoder = encoder
        cfg: EncoderConfig = encoder.config
        self.heads = nn.ModuleDict({t: TaskHead(cfg.hidden_size, n, pooling, cfg.hidden_dropout_prob)
                                    for t, n in tasks.items()})
        for h in self.heads.values():
            h.apply(encoder._init_weights)

    def forward(self, task: str, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                **unused: Any) -> TaskOutput:
        if task not in self.heads:
            raise ValueError(f"unknown task {task!r}; tasks are {sorted(self.heads)}")
        out = self.encoder(input_ids, token_type_ids, attention_mask)
        return self.heads[task](out.last_hidden_state, attention_mask, labels)
