"""Cross-view training (Clark et al. 2018, arXiv 1809.08370) with the encoder's own masks.

CVT trains auxiliary prediction modules that see restricted views of the input to match the
full model's predictions on unlabeled text: ``L_CVT = sum_views KL(p_full || p_view)`` with
the full model's distribution held fixed (no gradient through the teacher). Here the
restricted views are the ``left_to_right`` and ``right_to_left`` attention modes of the *same*
encoder (UNILM's masks, :mod:`unimask.masks`): at token ``t`` the forward view sees tokens
``<= t`` and the backward view tokens ``>= t``, like CVT's forward/backward LSTM modules.
Supervised batches train the primary (bidirectional) head as usual.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..masks import BIDIRECTIONAL, LEFT_TO_RIGHT, RIGHT_TO_LEFT
from ..models.encoder import TransformerEncoder
from .heads import IGNORE_INDEX

__all__ = ["CrossViewTagger", "cvt_consistency_loss", "train_cvt", "VIEWS"]

#: auxiliary view name -> attention mode
VIEWS = {"left_to_right": LEFT_TO_RIGHT, "right_to_left": RIGHT_TO_LEFT}


def cvt_consistency_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor,
                         mask: torch.Tensor | None = None) -> torch.Tensor:
    """``mean over scored positions of KL(softmax(teacher) || softmax(student))``; the teacher
    is detached. ``mask`` (bool, the logits' leading shape) picks the positions scored."""
    t = torch.log_softmax(teacher_logits.detach().float(), -1)
    s = torch.log_softmax(student_logits.float(), -1)
    kl = (t.exp() * (t - s)).sum(-1)
    if mask is not None:
        kl = kl[mask]
    if kl.numel() == 0:
        return student_logits.sum() * 0.0
    return kl.mean()


class CrossViewTagger(nn.Module):
    """Sequence tagger with CVT: primary head on the bidirectional encoder, one auxiliary head
    per restricted view (``left_to_right``, ``right_to_left``).

    :meth:`supervised_loss` trains the primary head on labelled tokens; :meth:`cvt_loss` is
    the consistency loss on an unlabeled batch (primary = teacher, views = students).
    """

    def __init__(self, encoder: TransformerEncoder, num_labels: int) -> None:
        super().__init__()
        H = encoder.config.hidden_size
        self.encoder = encoder
        self.num_labels = num_labels
        self.primary = nn.Linear(H, num_labels)
        self.aux = nn.ModuleDict({v: nn.Linear(H, num_labels) for v in VIEWS})
        for m in (self.primary, *self.aux.values()):
            encoder._init_weights(m)

    def _hidden(self, mode: int, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                token_type_ids: torch.Tensor | None) -> torch.Tensor:
        B = input_ids.shape[0]
        attn_mode = torch.full((B,), mode, dtype=torch.long, device=input_ids.device)
        return self.encoder(input_ids, token_type_ids, attention_mask, attn_mode).last_hidden_state

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               token_type_ids: torch.Tensor | None = None, view: str = "full") -> torch.Tensor:
        """``[B, L, num_labels]`` from the primary head (``view="full"``) or an auxiliary view."""
        if view == "full":
            return self.primary(self._hidden(BIDIRECTIONAL, input_ids, attention_mask, token_type_ids))
        if view not in VIEWS:
            raise ValueError(f"view must be 'full' or one of {sorted(VIEWS)}, got {view!r}")
        return self.aux[view](self._hidden(VIEWS[view], input_ids, attention_mask, token_type_ids))

    def supervised_loss(self, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None,
                        token_type_ids: torch.Tensor | None = None, **unused: Any) -> torch.Tensor:
        logits = self.logits(input_ids, attention_mask, token_type_ids)
        return F.cross_entropy(logits.float().reshape(-1, self.num_labels), labels.reshape(-1), ignore_index=IGNORE_INDEX)

    def cvt_loss(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 token_type_ids: torch.Tensor | None = None, **unused: Any) -> torch.Tensor:
        """Sum over views of the mean KL from the (fixed) full-view prediction, real tokens only."""
        with torch.no_grad():
            teacher = self.logits(input_ids, attention_mask, token_type_ids)
        mask = attention_mask.bool() if attention_mask is not None else None
        return sum(cvt_consistency_loss(teacher, self.logits(input_ids, attention_mask, token_type_ids, v), mask)
                   for v in VIEWS)


def train_cvt(model: CrossViewTagger, labelled: list[dict[str, torch.Tensor]], unlabeled: list[dict[str, torch.Tensor]],
              steps: int, lr: float = 5e-5, weight_decay: float = 0.0) -> list[dict[str, float | str]]:
    """CVT's training loop (Clark et al. 2018, sec. 2): alternate a supervised mini-batch
    (``input_ids``, ``labels``[, ``attention_mask``]) and an unlabeled one (consistency loss of
    the restricted views), cycling through both lists; ``steps`` counts both kinds. Returns
    per-step ``{"step", "kind", "loss"}`` with kind ``"supervised"`` or ``"cvt"``."""
    if not labelled or not unlabeled:
        raise ValueError("train_cvt needs labelled and unlabeled batches")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    history: list[dict[str, float | str]] = []
    model.train()
    for step in range(steps):
        if step % 2 == 0:
            kind, loss = "supervised", model.supervised_loss(**labelled[(step // 2) % len(labelled)])
        else:
            kind, loss = "cvt", model.cvt_loss(**unlabeled[(step // 2) % len(unlabeled)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append({"step": step, "kind": kind, "loss": loss.item()})
    return history
