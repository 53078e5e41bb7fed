"""Prediction heads shared by the objectives: BERT's MLM head (tied decoder) and the NSP head.

The MLM head is BERT's ``cls.predictions`` (google-research/bert ``modeling.py``
``get_masked_lm_output``): dense -> activation -> LayerNorm -> decoder tied to the word
embeddings + output bias. Like the original (which gathers ``masked_lm_positions``), unimask
applies it only to the positions that carry a label, not to every token: with a 30k vocabulary
that is most of a step's FLOPs saved.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..masks import _on
from .config import EncoderConfig
from .encoder import activation

__all__ = ["MLMHead", "gather_labelled"]

IGNORE_INDEX = -100


class MLMHead(nn.Module):
    """``transform`` + ``ln`` + tied decoder + ``bias``.

    The decoder matrix is the word-embedding table, passed to :meth:`forward` (not stored, so
    the tied weight is one parameter and appears once in ``state_dict``).
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.transform = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = activation(config.hidden_act)
        self.ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: torch.Tensor, decoder_weight: torch.Tensor) -> torch.Tensor:
        """Logits ``[..., vocab]`` for hidden states ``[..., H]``."""
        h = self.ln(self.act(self.transform(hidden)))
        return F.linear(h, decoder_weight, self.bias)


def gather_labelled(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states ``[N, H]`` and labels ``[N]`` of the positions whose label is not -100
    (row-major order), both on ``hidden``'s device.

    How many positions are labelled decides ``N``, so on an accelerator the selection reads
    the labels on the host: with ``labels`` on the device that is a synchronisation (it waits
    for the forward queued so far). With ``labels`` on the CPU (as the collators make them;
    :class:`unimask.training.Trainer` leaves them there for the pretraining models) the
    positions are found on the host and sent over without waiting: no synchronisation. The
    result and its gradient are the same either way (an index of positions instead of a
    boolean mask: the same rows, the same accumulating backward)."""
    if labels.shape != hidden.shape[:-1]:
        raise ValueError(f"labels shape {tuple(labels.shape)} does not match hidden {tuple(hidden.shape[:-1])}")
    if labels.device.type == "cpu" and hidden.device.type != "cpu":
        return _gather_at_host_positions(hidden, labels)
    sel = labels != IGNORE_INDEX
    return hidden[sel], labels[sel]


def _gather_at_host_positions(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`gather_labelled` with the positions computed from CPU ``labels`` (no device read)."""
    flat = labels.reshape(-1)
    pos = (flat != IGNORE_INDEX).nonzero().squeeze(1)
    dev = hidden.device
    return hidden.reshape(-1, hidden.shape[-1])[_on(pos, dev)], _on(flat[pos], dev)
