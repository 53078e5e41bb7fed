"""Cross-view training (Clark et al. 2018, arXiv 1809.08370) with the encoder's own masks.

CVT trains auxiliary prediction modules that see restricted views of the input to match the
full model's predictions on unlabeled text: ``L_CVT = sum_views KL(p_full || p_view)`` with
the full model's distribution held fixed (no gradient through the teacher). Here the
restricted views are the ``left_to_right`` and ``right_to_left`` attention modes of the *same*
encoder (UNILM's masks, :mod:`unimask.masks`): at token ``t`` the forward view sees tokens
``<= t`` and the backward view tokens ``>= t``, like CVT's forward/backward LSTM modules.
Supervised batches train the primary (bidirectional) head as usual.

Two users: :class:`CrossViewTagger` (token tagging, CVT's own setting) and
:class:`CrossViewHeads` + :func:`classifier_cvt_loss`, the auxiliary modules of a
:class:`~unimask.finetune.SequenceClassifier` used by ``finetune_classifier`` /
``unimask finetune --cvt-unlabeled FILE``: one linear head per view over the mean-pooled
states of the encoder run in that view's attention mode. Each pooled state is an average of
prefix (``left_to_right``) or suffix (``right_to_left``) representations, the analogue of
CVT's forward / backward LSTM modules for a sentence-level prediction.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..masks import BIDIRECTIONAL, LEFT_TO_RIGHT, RIGHT_TO_LEFT, _on
from ..models.encoder import TransformerEncoder
from ..training import _host_floats
from .heads import IGNORE_INDEX, pool_hidden

__all__ = ["CrossViewTagger", "CrossViewHeads", "classifier_cvt_loss", "tagger_cvt_loss", "cross_view_kl",
           "cvt_consistency_loss", "train_cvt", "VIEWS"]

#: auxiliary view name -> attention mode
VIEWS = {"left_to_right": LEFT_TO_RIGHT, "right_to_left": RIGHT_TO_LEFT}


def cvt_consistency_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor,
                         mask: torch.Tensor | None = None) -> torch.Tensor:
    """``mean over scored positions of KL(softmax(teacher) || softmax(student))``; the teacher
    is detached. ``mask`` (bool, the logits' leading shape) picks the positions scored; a CPU
    mask with logits on an accelerator is read on the host (its positions sent over without
    waiting, the same elements in the same order as the boolean selection): no device
    synchronisation."""
    t = torch.log_softmax(teacher_logits.detach().float(), -1)
    s = torch.log_softmax(student_logits.float(), -1)
    kl = (t.exp() * (t - s)).sum(-1)
    if mask is not None and mask.device.type == "cpu" and kl.device.type != "cpu":
        if tuple(mask.shape) != tuple(kl.shape):
            raise ValueError(f"mask shape {tuple(mask.shape)} differs from the logits' leading shape {tuple(kl.shape)}")
        kl = kl.reshape(-1)[_on(mask.reshape(-1).nonzero().squeeze(1), kl.device)]
    elif mask is not None:
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

    #: Batch fields the losses take on the CPU (validated or used there, then copied to the
    #: device without waiting: no device synchronisation; ids range-checked), as
    #: :attr:`unimask.finetune.TokenClassifier.host_batch_keys`.
    host_batch_keys = frozenset({"input_ids", "token_type_ids", "attention_mask", "labels"})

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
        return F.cross_entropy(logits.float().reshape(-1, self.num_labels), _on(labels.reshape(-1), logits.device),
                               ignore_index=IGNORE_INDEX)

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


def _view_mode(view: str) -> int:
    if view not in VIEWS:
        raise ValueError(f"view must be one of {sorted(VIEWS)}, got {view!r}")
    return VIEWS[view]


class CrossViewHeads(nn.Module):
    """CVT auxiliary prediction modules for a sequence classifier (Clark et al. 2018, sec. 2,
    applied to sentence classification): for each restricted view (``left_to_right``,
    ``right_to_left``) the *shared* encoder runs under that attention mode and a linear head
    reads ``dropout(mean-pool(states))`` over the real tokens.

    ``heads(encoder, view, input_ids, attention_mask, token_type_ids)`` -> logits ``[B, C]``;
    :meth:`position_logits` gives the per-position predictions ``[B, L, C]`` (position ``t``
    of the forward view only depends on tokens ``<= t``), whose mean over the real tokens is
    the pooled prediction (the head is linear). The heads are a training device: the saved
    model is the primary classifier alone (as in CVT, only the primary module is used at test
    time).
    """

    def __init__(self, hidden_size: int, num_labels: int, dropout: float = 0.1,
                 views: tuple[str, ...] = tuple(VIEWS)) -> None:
        super().__init__()
        for v in views:
            _view_mode(v)
        if num_labels < 2:
            raise ValueError(f"cross-view heads need a classifier with >= 2 labels, got num_labels={num_labels}")
        self.views = tuple(views)
        self.num_labels = num_labels
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({v: nn.Linear(hidden_size, num_labels) for v in self.views})

    @staticmethod
    def hidden(encoder: TransformerEncoder, view: str, input_ids: torch.Tensor,
               attention_mask: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Last hidden states ``[B, L, H]`` of ``encoder`` in ``view``'s attention mode
        (``seq_len`` from ``attention_mask``, ``src_len`` 0)."""
        B = input_ids.shape[0]
        mode = torch.full((B,), _view_mode(view), dtype=torch.long, device=input_ids.device)
        src = torch.zeros(B, dtype=torch.long, device=input_ids.device)
        return encoder(input_ids, token_type_ids, attention_mask, attn_mode=mode, src_len=src).last_hidden_state

    def position_logits(self, encoder: TransformerEncoder, view: str, input_ids: torch.Tensor,
                        attention_mask: torch.Tensor | None = None,
                        token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Per-position predictions ``[B, L, C]`` of ``view``'s head (no pooling, no dropout)."""
        head = self._head(view)
        return head(self.hidden(encoder, view, input_ids, attention_mask, token_type_ids))

    def _head(self, view: str) -> nn.Module:
        if view not in self.views:
            raise ValueError(f"view must be one of {list(self.views)}, got {view!r}")
        return self.heads[view]

    def forward(self, encoder: TransformerEncoder, view: str, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        head = self._head(view)
        h = self.hidden(encoder, view, input_ids, attention_mask, token_type_ids)
        return head(self.dropout(pool_hidden(h, attention_mask, "mean")))


def _teacher_logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                    token_type_ids: torch.Tensor | None) -> torch.Tensor:
    """CVT's fixed teacher: the primary model on the full input, eval mode, no gradient."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(input_ids, attention_mask, token_type_ids).logits
    finally:
        model.train(was)


def _per_view_result(per_view: dict[str, torch.Tensor],
                     kl_on_device: bool) -> tuple[torch.Tensor, dict[str, float] | dict[str, torch.Tensor]]:
    """``(mean over views, {view: kl})``: the KLs as floats read in one device-to-host transfer
    (:func:`~unimask.training._host_floats`), or as detached tensors left on the device."""
    loss = sum(per_view.values()) / len(per_view)
    if kl_on_device:
        return loss, {v: k.detach() for v, k in per_view.items()}
    return loss, dict(zip(per_view, _host_floats(list(per_view.values()))))


def classifier_cvt_loss(model: nn.Module, heads: CrossViewHeads, input_ids: torch.Tensor,
                        attention_mask: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None,
                        *, kl_on_device: bool = False,
                        **unused: Any) -> tuple[torch.Tensor, dict[str, float] | dict[str, torch.Tensor]]:
    """CVT consistency loss of a classifier on an unlabeled batch: the primary prediction on the
    full (bidirectional) input is the fixed teacher (computed without dropout and without
    gradient), each view's head is a student; ``loss = mean over views of
    KL(p_primary || p_view)`` (:func:`cvt_consistency_loss`). Returns ``(loss, {view: kl})``,
    the KLs as floats (read from the device together, in one transfer), or with
    ``kl_on_device=True`` as detached 0-dim tensors (no device sync; the fine-tuning loop reads
    them with the step's other numbers)."""
    teacher = _teacher_logits(model, input_ids, attention_mask, token_type_ids)
    per_view = {v: cvt_consistency_loss(teacher, heads(model.encoder, v, input_ids, attention_mask, token_type_ids))
                for v in heads.views}
    return _per_view_result(per_view, kl_on_device)


def tagger_cvt_loss(model: nn.Module, heads: CrossViewHeads, input_ids: torch.Tensor,
                    attention_mask: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None,
                    *, kl_on_device: bool = False,
                    **unused: Any) -> tuple[torch.Tensor, dict[str, float] | dict[str, torch.Tensor]]:
    """CVT consistency loss of a token tagger on an unlabeled batch (CVT's own setting,
    Clark et al. 2018 sec. 3.1): at every real token, the primary tag distribution on the full
    input is the fixed teacher (eval mode, no gradient) and each view's per-position head
    (:meth:`CrossViewHeads.position_logits`: the forward view sees tokens ``<= t``, the
    backward one tokens ``>= t``) a student; ``loss = mean over views of the mean over real
    tokens of KL(p_primary || p_view)``. Returns ``(loss, {view: kl})``, the KLs as floats
    (one transfer) or, with ``kl_on_device=True``, detached tensors (see
    :func:`classifier_cvt_loss`)."""
    teacher = _teacher_logits(model, input_ids, attention_mask, token_type_ids)
    mask = attention_mask.bool() if attention_mask is not None else None
    per_view = {v: cvt_consistency_loss(teacher, heads.position_logits(model.encoder, v, input_ids, attention_mask,
                                                                       token_type_ids), mask)
                for v in heads.views}
    return _per_view_result(per_view, kl_on_device)


@torch.no_grad()
def cross_view_kl(model: nn.Module, heads: CrossViewHeads, batches: list[dict[str, torch.Tensor]],
                  per_token: bool = False) -> dict[str, float]:
    """Mean ``KL(p_primary || p_view)`` per view over the examples of ``batches`` (eval mode:
    no dropout anywhere), plus ``"mean"`` over the views. ``per_token``: a tagger's
    per-position distributions, averaged over the real tokens (:func:`tagger_cvt_loss`)."""
    was_m, was_h = model.training, heads.training
    model.eval()
    heads.eval()
    try:
        kls: list[torch.Tensor] = []  # per batch, per view, on the device: read once at the end
        sizes: list[int | torch.Tensor] = []  # per batch: examples, or real tokens (a device count)
        for b in batches:
            ids, am, tt = b["input_ids"], b.get("attention_mask"), b.get("token_type_ids")
            teacher = model(ids, am, tt).logits
            if per_token:
                mask = am.bool() if am is not None else torch.ones(ids.shape, dtype=torch.bool, device=ids.device)
                sizes.append(mask.sum())
                for v in heads.views:
                    student = heads.position_logits(model.encoder, v, ids, am, tt)
                    kls.append(cvt_consistency_loss(teacher, student, mask))
            else:
                sizes.append(ids.shape[0])
                for v in heads.views:
                    kls.append(cvt_consistency_loss(teacher, heads(model.encoder, v, ids, am, tt)))
    finally:
        model.train(was_m)
        heads.train(was_h)
    if per_token and sizes:
        sizes = torch.stack(sizes).tolist()
    values = iter(_host_floats(kls))
    sums = dict.fromkeys(heads.views, 0.0)
    n = 0
    for B in sizes:  # the batch-size-weighted sums, in float64 and batch order
        for v in heads.views:
            sums[v] += next(values) * B
        n += B
    out = {v: s / max(n, 1) for v, s in sums.items()}
    out["mean"] = sum(out[v] for v in heads.views) / len(heads.views)
    return out
