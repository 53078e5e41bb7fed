"""Task heads on a :class:`~unimask.models.TransformerEncoder`, saved and loaded as HF BERT dirs.

* :class:`SequenceClassifier` — text or text-pair (cross-encoder) classification and
  regression. ``pooling="cls"`` is HF ``BertForSequenceClassification`` exactly (pooler ->
  dropout -> ``classifier``; same tensor names, so a saved model loads in ``transformers``);
  ``pooling="concat"`` is ULMFiT's concat pooling (Howard & Ruder 2018, sec. 3.3):
  ``[h_last, maxpool(H), meanpool(H)]`` over the real tokens; ``"mean"`` mean-pools.
* :class:`TokenClassifier` — tagging with word-level labels: the first sub-token of each word
  carries the word's label, the other pieces ``-100`` (BERT NER recipe, Devlin et al. 2019
  sec. 5.3); predictions are read back per word.
* :class:`QuestionAnswering` — extractive QA start/end logits (HF ``qa_outputs``) and
  :func:`best_span`, the exact search for ``argmax start_logit[i] + end_logit[j]`` over
  ``i <= j < i + max_answer_length`` inside the context (BERT ``run_squad.py``).
* :class:`Seq2SeqFinetuner` — UNILM seq2seq fine-tuning (arXiv 1905.03197 sec. 3.2): the
  input is ``[CLS] src [SEP] tgt [SEP]`` under the seq2seq mask, a fraction of target tokens
  is masked and predicted; decoding is :meth:`unimask.models.UnifiedLM.generate`.

Checkpoint layout (``save_pretrained``): ``config.json`` = the encoder's BERT config plus
``id2label``/``label2id``/``num_labels`` and a ``unimask_task`` block (task, pooling, ...);
``model.safetensors`` = ``bert.*`` encoder tensors (HF names) + head tensors. Such a directory
also loads with :meth:`TransformerEncoder.from_pretrained` (encoder only).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models.checkpoint import (
    hf_to_unimask,
    normalize_hf_names,
    read_state_dict,
    save_safetensors,
    unimask_to_hf,
    write_config,
)
from ..models.config import EncoderConfig
from ..masks import _on
from ..models.encoder import TransformerEncoder
from ..models.heads import gather_labelled
from ..models.pretraining import _mean_ce
from .._checks import check_number
from ..training import _host_batch_keys
from .data import LabelMap

__all__ = [
    "TaskOutput",
    "SequenceClassifier",
    "TokenClassifier",
    "QuestionAnswering",
    "Seq2SeqFinetuner",
    "MassFinetuner",
    "pool_hidden",
    "pool_packed",
    "best_span",
    "answer_token_span",
    "span_text",
    "align_word_labels",
    "word_predictions",
    "load_task_model",
    "POOLINGS",
]

IGNORE_INDEX = -100
POOLINGS = ("cls", "concat", "mean")


@dataclass
class TaskOutput:
    """``loss`` (when labels were given) and the head's ``logits`` (``start_logits`` /
    ``end_logits`` for QA); ``hidden_states`` are the encoder's per-layer outputs when asked."""

    loss: torch.Tensor | None
    logits: torch.Tensor | None = None
    start_logits: torch.Tensor | None = None
    end_logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None


def _class_targets(labels: torch.Tensor, num_classes: int, shape: tuple[int, ...], name: str = "labels",
                   what: str = "a label") -> torch.Tensor:
    """``labels`` as int64 class ids of shape ``shape``, each in ``[0, num_classes)`` or
    ``-100`` (not scored). Raises ``TypeError`` for floating/bool labels (never truncated) and
    ``ValueError`` naming the first value outside that range or a wrong shape."""
    if not isinstance(labels, torch.Tensor):
        labels = torch.as_tensor(labels)
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"{name} must be integer class ids, got dtype {labels.dtype} "
                        f"(use problem_type='regression' for real-valued targets)")
    if tuple(labels.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(labels.shape)}")
    labels = labels.long()
    bad = ((labels < 0) | (labels >= num_classes)) & (labels != IGNORE_INDEX)
    if bool(bad.any()):
        i = tuple(int(x) for x in bad.nonzero()[0])
        at = i[0] if len(i) == 1 else list(i)
        raise ValueError(f"{name}[{at}] = {int(labels[i])} is not {what} in [0, {num_classes}) "
                         f"(or {IGNORE_INDEX} = not scored)")
    return labels


def _scored_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the targets that are not ``-100`` (``logits [N, C]``, ``targets
    [N]``); no scored target gives a 0 loss that keeps the graph (pretraining's ``_mean_ce``)
    instead of the NaN of ``F.cross_entropy(ignore_index=-100)``.

    CPU ``targets`` (as the collators make them; the fine-tuning loops leave the models'
    ``host_batch_keys`` there) are left there: the scored positions are found on the host and
    sent over without waiting (:func:`unimask.models.heads.gather_labelled`), so the selection
    needs no device synchronisation; the rows, the loss and its gradient are those of the
    boolean selection on the device."""
    if targets.device.type != "cpu":
        targets = targets.to(logits.device)
    rows, y = gather_labelled(logits, targets)
    return _mean_ce(rows, y)


def _valid_mask(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """The real tokens of ``hidden`` ``[B, L, H]`` as a bool ``[B, L]`` on its device; a CPU
    ``attention_mask`` is copied over without waiting (:func:`unimask.masks._on`)."""
    B, L, _ = hidden.shape
    if attention_mask is None:
        return torch.ones(B, L, dtype=torch.bool, device=hidden.device)
    return _on(attention_mask, hidden.device) != 0


def pool_hidden(hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """Pool ``[B, L, H]`` hidden states over real tokens.

    ``cls``: first token; ``mean``: mean over real tokens (sentence-transformers' mean pooling);
    ``max``: max over real tokens; ``concat``: ULMFiT ``[h_last, max, mean]`` (``[B, 3H]``),
    ``h_last`` being the state of the last real token.
    """
    m = _valid_mask(hidden, attention_mask)
    if pooling == "cls":
        return hidden[:, 0]
    mf = m.unsqueeze(-1).to(hidden.dtype)
    mean = (hidden * mf).sum(1) / mf.sum(1).clamp(min=1e-9)
    if pooling == "mean":
        return mean
    mx = hidden.masked_fill(~m.unsqueeze(-1), torch.finfo(hidden.dtype).min).max(1).values
    if pooling == "max":
        return mx
    if pooling == "concat":
        last_idx = (m.sum(1) - 1).clamp(min=0)
        last = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_idx]
        return torch.cat([last, mx, mean], dim=-1)
    raise ValueError(f"pooling must be one of {POOLINGS + ('max',)}, got {pooling!r}")


def pool_packed(hidden: torch.Tensor, doc_starts: torch.Tensor, doc_lengths: torch.Tensor, pooling: str) -> torch.Tensor:
    """:func:`pool_hidden` for packed rows: ``hidden`` ``[R, L, H]``, example ``i`` = flattened
    tokens ``doc_starts[i] : doc_starts[i] + doc_lengths[i]`` (:func:`unimask.packing.pack_padded`);
    returns ``[N, H]`` (``[N, 3H]`` for ``concat``) in the examples' order.

    The token indices are computed where ``doc_starts`` / ``doc_lengths`` are: from CPU ones
    (as :func:`~unimask.packing.pack_padded` makes them) on the host, then sent to ``hidden``'s
    device without waiting, so the data-dependent token count needs no device read."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    dev = flat.device
    if pooling == "cls":
        return flat[_on(doc_starts, dev)]
    at = doc_lengths.device if doc_starts.device == doc_lengths.device else dev  # where the indices are made
    starts, lengths = doc_starts.to(at), doc_lengths.to(at)
    N = starts.shape[0]
    owner = torch.repeat_interleave(torch.arange(N, device=at), lengths)  # example of each token
    first = lengths.cumsum(0) - lengths  # where each example's tokens begin among the gathered ones
    tokens = starts[owner] + torch.arange(owner.shape[0], device=at) - first[owner]
    owner, tokens = _on(owner, dev), _on(tokens, dev)
    h = flat[tokens]
    mean = torch.zeros(N, flat.shape[-1], dtype=flat.dtype, device=dev).index_add_(0, owner, h)
    mean = mean / _on(lengths.clamp(min=1), dev).to(flat.dtype)[:, None]
    if pooling == "mean":
        return mean
    mx = torch.full((N, flat.shape[-1]), torch.finfo(flat.dtype).min, dtype=flat.dtype, device=dev)
    mx = mx.scatter_reduce(0, owner[:, None].expand_as(h), h, reduce="amax", include_self=True)
    if pooling == "max":
        return mx
    if pooling == "concat":
        last = flat[_on(starts + (lengths - 1).clamp(min=0), dev)]
        return torch.cat([last, mx, mean], dim=-1)
    raise ValueError(f"pooling must be one of {POOLINGS + ('max',)}, got {pooling!r}")


class _TaskModel(nn.Module):
    """Encoder + head; HF-style save/load with the label map and task settings in config.json."""

    task = "base"
    architecture = "BertModel"
    head_prefixes: tuple[str, ...] = ()
    #: Batch fields the forward takes on the CPU: the fine-tuning loops leave them there
    #: (:func:`unimask.finetune.trainer._to`). The encoder's inputs (``input_ids`` /
    #: ``token_type_ids`` range-checked and the attention mask validated on the host, then
    #: copied to the device without waiting), and the fields the head uses on the host or
    #: copies over itself without waiting (pooling and loss masks, the scored positions of the
    #: labels): the forward then needs no device synchronisation, and an id outside the
    #: vocabulary is a ``ValueError`` naming it instead of a device-side assert.
    host_batch_keys: frozenset[str] = frozenset({"input_ids", "token_type_ids", "attention_mask"})

    def __init__(self, config: EncoderConfig, label_map: LabelMap | None = None, **task_args: Any) -> None:
        super().__init__()
        self.config = config
        self.label_map = label_map
        self.task_args = dict(task_args)
        self.encoder = TransformerEncoder(config)

    def _init_head(self) -> None:
        for name, module in self.named_children():
            if name != "encoder":
                module.apply(self.encoder._init_weights)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               token_type_ids: torch.Tensor | None = None, **kw: Any):
        return self.encoder(input_ids, token_type_ids, attention_mask, **kw)

    # -- checkpoints ------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        """``config.json`` (+ label map, ``unimask_task``) and ``model.safetensors`` (``bert.*`` + head)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        sd = self.state_dict()
        out = {"bert." + k: v for k, v in unimask_to_hf(sd, self.config, prefix="encoder.").items()}
        out.update({k: v for k, v in sd.items() if not k.startswith("encoder.")})
        write_config(self.config, directory, [self.architecture])
        cfg_path = directory / "config.json"
        d = json.loads(cfg_path.read_text(encoding="utf-8"))
        if self.label_map is not None:
            d.update(self.label_map.to_config())
        elif isinstance(getattr(self, "num_labels", None), int):
            # No names (a regressor): HF's defaults for the size, else transformers builds its
            # default 2 outputs and drops the head's weights on load.
            n = self.num_labels
            d.update(num_labels=n, id2label={str(i): f"LABEL_{i}" for i in range(n)},
                     label2id={f"LABEL_{i}": i for i in range(n)})
        d["unimask_task"] = {"task": self.task, **self.task_args}
        if self.task_args.get("problem_type") == "regression":
            d["problem_type"] = "regression"
        elif self.task == "classify":
            d["problem_type"] = "single_label_classification"
        cfg_path.write_text(json.dumps(d, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        save_safetensors(out, directory / "model.safetensors")

    @classmethod
    def from_pretrained(cls, directory: str | Path, label_map: LabelMap | None = None, from_scratch: bool = False,
                        config: EncoderConfig | None = None, **task_args: Any):
        """Build from an HF BERT directory: the encoder weights always (unless ``from_scratch``,
        which keeps only the config), the head weights when the directory has them (a model
        saved by :meth:`save_pretrained`), else a fresh head. ``label_map`` and ``task_args``
        default to what the directory's ``config.json`` saved."""
        directory = Path(directory)
        cfg_path = directory / "config.json"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"no config.json in {directory}")
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
        config = config or EncoderConfig.from_dict(raw)
        saved = raw.get("unimask_task") or {}
        if saved and saved.get("task") != cls.task:
            raise ValueError(f"{directory} holds a {saved.get('task')!r} model, not {cls.task!r}")
        args = {k: v for k, v in saved.items() if k != "task"}
        if label_map is not None:  # the caller's label map decides the number of outputs
            args.pop("num_labels", None)
        args.update(task_args)
        if label_map is None and args.get("problem_type") != "regression":  # a regressor's LABEL_0 names nothing
            label_map = LabelMap.from_config(raw)
        if from_scratch:
            return cls(config, label_map, **args)
        sd = normalize_hf_names(read_state_dict(directory))
        if "pooler.dense.weight" not in sd:
            config.add_pooler = False
        ours, missing = hf_to_unimask(sd, config, prefix="encoder.")
        if missing:
            raise ValueError(f"checkpoint {directory} is missing {len(missing)} encoder weights: {missing}")
        model = cls(config, label_map, **args)
        own = model.state_dict()
        for name, t in sd.items():
            if name.startswith(cls.head_prefixes) and name in own:
                ours[name] = t
        for name, t in ours.items():
            if own[name].shape != t.shape:
                raise ValueError(f"{directory}: tensor {name} has shape {tuple(t.shape)}, the model expects "
                                 f"{tuple(own[name].shape)} (different number of labels or pooling?)")
        model.load_state_dict(ours, strict=False)
        return model


def _regression_mse(predictions: torch.Tensor, labels: Any) -> torch.Tensor:
    """MSE of ``predictions [N, 1]`` against float targets ``[N]`` or ``[N, 1]``, both read per
    row as HF does (an ``[N, 1]`` target is never broadcast against ``[N]`` into an ``[N, N]``
    difference); another shape is a ``ValueError``. Shared by :class:`SequenceClassifier` and
    the multi-task :class:`~unimask.finetune.multitask.TaskHead`."""
    N = predictions.shape[0]
    if not isinstance(labels, torch.Tensor):
        labels = torch.as_tensor(labels)
    if tuple(labels.shape) not in ((N,), (N, 1)):
        raise ValueError(f"regression labels must have shape ({N},) or ({N}, 1), got {tuple(labels.shape)}")
    return F.mse_loss(predictions.reshape(N).float(), _on(labels.reshape(N), predictions.device).float())


class SequenceClassifier(_TaskModel):
    """Sequence (or pair) classification / regression on pooled encoder states.

    ``SequenceClassifier(config, label_map, pooling="cls"|"concat"|"mean",
    problem_type="classification"|"regression")``; ``num_labels`` comes from the label map
    (1 for regression). ``forward(input_ids, attention_mask, token_type_ids, labels)``:
    cross-entropy for integer class ids ``[N]`` (``-100`` = not scored; a float label is a
    ``TypeError``, an id outside ``[0, num_labels)`` a ``ValueError``), MSE for float targets
    ``[N]`` or ``[N, 1]``. A batch without a scored label gives a 0 loss that keeps the graph.
    """

    task = "classify"
    architecture = "BertForSequenceClassification"
    head_prefixes = ("classifier.",)
    host_batch_keys = _TaskModel.host_batch_keys | {"labels", "cu_seqlens", "attn_mode", "src_len", "doc_starts",
                                                    "doc_lengths"}

    def __init__(self, config: EncoderConfig, label_map: LabelMap | None = None, pooling: str = "cls",
                 problem_type: str = "classification", num_labels: int | None = None) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if problem_type not in ("classification", "regression"):
            raise ValueError(f"problem_type must be 'classification' or 'regression', got {problem_type!r}")
        if problem_type == "regression":
            num_labels = 1
        elif num_labels is None:
            if label_map is None:
                raise ValueError("a classifier needs a label_map (or num_labels)")
            num_labels = len(label_map)
        elif label_map is not None and num_labels != len(label_map):
            raise ValueError(f"num_labels={num_labels} but the label map has {len(label_map)} labels")
        super().__init__(config, label_map, pooling=pooling, problem_type=problem_type, num_labels=num_labels)
        self.pooling = pooling
        self.problem_type = problem_type
        self.num_labels = num_labels
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        width = 3 * config.hidden_size if pooling == "concat" else config.hidden_size
        self.classifier = nn.Linear(width, num_labels)
        self._init_head()

    def pooled(self, out, attention_mask: torch.Tensor | None) -> torch.Tensor:
        if self.pooling == "cls" and out.pooler_output is not None:
            return out.pooler_output  # HF BertForSequenceClassification
        return pool_hidden(out.last_hidden_state, attention_mask, self.pooling)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                cu_seqlens: torch.Tensor | None = None, doc_starts: torch.Tensor | None = None,
                doc_lengths: torch.Tensor | None = None, attn_mode: torch.Tensor | None = None,
                src_len: torch.Tensor | None = None, **unused: Any) -> TaskOutput:
        """Logits ``[N, num_labels]`` and the loss when ``labels`` is given.

        Packed rows (:func:`unimask.packing.pack_padded`: ``cu_seqlens``, ``doc_starts``,
        ``doc_lengths``): the examples share rows without attending to each other, and are
        pooled from their own tokens, so the logits come back one per example, in order."""
        if cu_seqlens is not None:
            if doc_starts is None or doc_lengths is None:
                raise ValueError("packed rows need doc_starts and doc_lengths (unimask.packing.pack_padded)")
            out = self.encoder(input_ids, token_type_ids, attn_mode=attn_mode, src_len=src_len, cu_seqlens=cu_seqlens)
            if self.pooling == "cls" and self.encoder.pooler is not None:
                pooled = self.encoder.pooled_at(out.last_hidden_state, doc_starts)
            else:
                pooled = pool_packed(out.last_hidden_state, doc_starts, doc_lengths, self.pooling)
        else:
            out = self.encode(input_ids, attention_mask, token_type_ids)
            pooled = self.pooled(out, attention_mask)
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            if self.problem_type == "regression":  # [N] or [N, 1] targets, as HF squeezes both
                loss = _regression_mse(logits, labels)
            else:
                y = _class_targets(labels, self.num_labels, (logits.shape[0],), what="a class id")
                loss = _scored_ce(logits, y)
        return TaskOutput(loss, logits, last_hidden_state=out.last_hidden_state)


def align_word_labels(word_ids: Any, word_labels: Any, label_all_pieces: bool = False) -> list[int]:
    """Token labels from word labels: the first piece of word ``w`` gets ``word_labels[w]``,
    later pieces and special tokens (word id ``-1``/None) get ``-100`` (or the word's label
    on every piece with ``label_all_pieces``)."""
    out, prev = [], None
    for w in word_ids:
        w = None if w is None or int(w) < 0 else int(w)
        if w is None:
            out.append(IGNORE_INDEX)
        elif w != prev or label_all_pieces:
            if w >= len(word_labels):
                raise ValueError(f"word id {w} has no label ({len(word_labels)} word labels given)")
            out.append(int(word_labels[w]))
        else:
            out.append(IGNORE_INDEX)
        prev = w
    return out


def word_predictions(token_logits: torch.Tensor, word_ids: Any) -> list[int]:
    """Per-word predicted class (arg-max at each word's first piece), for one sequence."""
    preds = token_logits.argmax(-1).tolist()
    out, prev = [], None
    for i, w in enumerate(word_ids):
        w = None if w is None or int(w) < 0 else int(w)
        if w is not None and w != prev:
            out.append(preds[i])
        prev = w
    return out


class TokenClassifier(_TaskModel):
    """Per-token tagging (HF ``BertForTokenClassification`` layout: ``classifier`` on dropout(H)).
    ``labels`` are token labels ``[B, L]`` with ``-100`` where not scored (see
    :func:`align_word_labels`); other values must be class ids in ``[0, num_labels)``
    (``ValueError`` naming the value otherwise). No scored token gives a 0 loss, not NaN."""

    task = "tag"
    architecture = "BertForTokenClassification"
    head_prefixes = ("classifier.",)
    host_batch_keys = _TaskModel.host_batch_keys | {"labels", "cu_seqlens", "attn_mode", "src_len"}

    def __init__(self, config: EncoderConfig, label_map: LabelMap | None = None, num_labels: int | None = None) -> None:
        if num_labels is None:
            if label_map is None:
                raise ValueError("a token classifier needs a label_map (or num_labels)")
            num_labels = len(label_map)
        elif label_map is not None and num_labels != len(label_map):
            raise ValueError(f"num_labels={num_labels} but the label map has {len(label_map)} labels")
        super().__init__(config, label_map, num_labels=num_labels)
        self.num_labels = num_labels
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        self._init_head()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                cu_seqlens: torch.Tensor | None = None, attn_mode: torch.Tensor | None = None,
                src_len: torch.Tensor | None = None, **unused: Any) -> TaskOutput:
        """Token logits ``[B, L, num_labels]``; packed rows (``cu_seqlens``, from
        :func:`unimask.packing.pack_padded`) give them in the packed layout, each sentence's at
        ``doc_starts[i] : doc_starts[i] + doc_lengths[i]`` of the flattened rows."""
        if cu_seqlens is not None:
            out = self.encoder(input_ids, token_type_ids, attn_mode=attn_mode, src_len=src_len, cu_seqlens=cu_seqlens)
        else:
            out = self.encode(input_ids, attention_mask, token_type_ids)
        logits = self.classifier(self.dropout(out.last_hidden_state))
        loss = None
        if labels is not None:
            y = _class_targets(labels, self.num_labels, tuple(logits.shape[:2]), what="a class id")
            loss = _scored_ce(logits.reshape(-1, self.num_labels), y.reshape(-1))
        return TaskOutput(loss, logits, last_hidden_state=out.last_hidden_state)


def best_span(start_logits: torch.Tensor, end_logits: torch.Tensor, context_mask: torch.Tensor | None = None,
              max_answer_length: int = 30) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best answer span per example: ``argmax_{i <= j < i + max_answer_length} s[i] + e[j]``
    with both ends inside the context (``context_mask`` True).

    Args: ``start_logits``/``end_logits`` ``[B, L]`` (or ``[L]``), ``context_mask`` bool of
    the same shape (default: everywhere). Returns ``(start, end, score)`` each ``[B]``
    (``end`` inclusive). An example without any context token gets ``(-1, -1, -inf)``.
    Ties go to the smallest start, then the smallest end. Logits that are not ``[B, L]`` or
    ``[L]``, end logits or a mask of another shape than the start logits, and a
    ``max_answer_length`` that is not an int >= 1 are a ``ValueError`` naming them.
    """
    max_answer_length = check_number("max_answer_length", max_answer_length, 1, integer=True)
    if start_logits.dim() not in (1, 2):
        raise ValueError(f"start_logits must be [B, L] or [L], got shape {tuple(start_logits.shape)}")
    if start_logits.shape != end_logits.shape:
        raise ValueError(f"start/end logits shapes differ: {tuple(start_logits.shape)} vs {tuple(end_logits.shape)}")
    if context_mask is not None and context_mask.shape != start_logits.shape:
        raise ValueError(f"context_mask shape {tuple(context_mask.shape)} differs from the logits shape "
                         f"{tuple(start_logits.shape)}")
    squeeze = start_logits.dim() == 1
    if squeeze:
        start_logits, end_logits = start_logits[None], end_logits[None]
        context_mask = None if context_mask is None else context_mask[None]
    B, L = start_logits.shape
    s, e = start_logits.float(), end_logits.float()
    scores = s[:, :, None] + e[:, None, :]  # [B, i, j]
    idx = torch.arange(L, device=s.device)
    ok = (idx[None, :] >= idx[:, None]) & (idx[None, :] - idx[:, None] < max_answer_length)
    ok = ok[None].expand(B, L, L)
    if context_mask is not None:
        cm = context_mask.to(torch.bool)
        ok = ok & cm[:, :, None] & cm[:, None, :]
    scores = scores.masked_fill(~ok, float("-inf"))
    flat = scores.reshape(B, L * L)
    score, arg = flat.max(dim=1)  # first maximum: smallest i, then smallest j
    start, end = arg // L, arg % L
    none = ~ok.reshape(B, -1).any(dim=1)
    start = torch.where(none, torch.full_like(start, -1), start)
    end = torch.where(none, torch.full_like(end, -1), end)
    if squeeze:
        return start[0], end[0], score[0]
    return start, end, score


def answer_token_span(offsets: Any, type_ids: Any, answer_start: int, answer_end: int,
                      context_type: int = 1) -> tuple[int, int]:
    """Token positions ``(start, end)`` (inclusive) covering the character span
    ``[answer_start, answer_end)`` of the context (the ``context_type`` segment of a
    question/context pair), from an :class:`~unimask.tokenizer.Encoding`'s ``offsets`` and
    ``type_ids``. Raises ``ValueError`` when the answer is not inside the (possibly truncated)
    context, so the caller can drop or mark the example (SQuAD training recipe)."""
    if answer_end <= answer_start:
        raise ValueError(f"empty answer span [{answer_start}, {answer_end})")
    start = end = None
    for i, ((a, b), t) in enumerate(zip(offsets, type_ids)):
        a, b = int(a), int(b)
        if int(t) != context_type or a == b:
            continue
        if start is None and b > answer_start:
            start = i
        if a < answer_end:
            end = i
    if (start is None or end is None or end < start or int(offsets[start][0]) > answer_start
            or int(offsets[end][1]) < answer_end):  # (a window can begin inside the answer, as HF run_qa checks)
        raise ValueError(f"answer characters [{answer_start}, {answer_end}) are not inside the encoded context")
    return start, end


def span_text(context: str, offsets: Any, start: int, end: int) -> str:
    """The context substring of tokens ``start..end`` (inclusive), via their character offsets."""
    return context[int(offsets[start][0]): int(offsets[end][1])]


class QuestionAnswering(_TaskModel):
    """Extractive QA (HF ``BertForQuestionAnswering`` layout: ``qa_outputs`` -> start/end).
    ``start_positions``/``end_positions`` ``[B]`` give the loss (mean of the two cross-entropies,
    each over its positions that are not ``-100``; 0 when there is none). A position outside
    ``[0, L)`` is a ``ValueError`` naming it. The loss's softmax runs over each row's real
    tokens only (``attention_mask``), so a window's loss does not depend on how far its batch is
    padded (HF's ``BertForQuestionAnswering`` includes the padding, which it pads to a fixed
    384); the returned logits are unmasked, as HF's."""

    task = "qa"
    architecture = "BertForQuestionAnswering"
    head_prefixes = ("qa_outputs.",)
    host_batch_keys = _TaskModel.host_batch_keys | {"start_positions", "end_positions"}

    def __init__(self, config: EncoderConfig, label_map: LabelMap | None = None, max_answer_length: int = 30) -> None:
        super().__init__(config, None, max_answer_length=max_answer_length)
        self.max_answer_length = max_answer_length
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self._init_head()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, start_positions: torch.Tensor | None = None,
                end_positions: torch.Tensor | None = None, **unused: Any) -> TaskOutput:
        out = self.encode(input_ids, attention_mask, token_type_ids)
        start, end = self.qa_outputs(out.last_hidden_state).float().unbind(-1)
        loss = None
        if start_positions is not None and end_positions is not None:
            B, L = start.shape
            s_pos = _class_targets(start_positions, L, (B,), "start_positions", "a token position")
            e_pos = _class_targets(end_positions, L, (B,), "end_positions", "a token position")
            s_logits, e_logits = start, end
            if attention_mask is not None:  # padding is no answer position
                pad = _on(attention_mask, start.device) == 0
                s_logits = start.masked_fill(pad, torch.finfo(start.dtype).min)
                e_logits = end.masked_fill(pad, torch.finfo(end.dtype).min)
            loss = (_scored_ce(s_logits, s_pos) + _scored_ce(e_logits, e_pos)) / 2
        return TaskOutput(loss, None, start, end, out.last_hidden_state)

    def predict_spans(self, batch: dict[str, torch.Tensor], context_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Best ``(start, end)`` token positions per example, restricted to ``context_mask``."""
        out = self.forward(**batch)
        s, e, _ = best_span(out.start_logits, out.end_logits, context_mask, self.max_answer_length)
        return s, e


class Seq2SeqFinetuner(nn.Module):
    """UNILM seq2seq fine-tuning around a :class:`unimask.models.UnifiedLM`.

    :meth:`make_batch` lays out ``[CLS] src [SEP] tgt [SEP]`` (segments ``source_type`` /
    ``target_type``, 4/5 as in UNILM's released code), ``attn_mode`` seq2seq with
    ``src_len = len([CLS] src [SEP])``, and masks each target token (the final [SEP] included,
    so the model learns to stop) with probability ``mask_prob`` (UNILM uses 0.7 for
    summarization), at least one per example; labels are the original target ids.
    """

    def __init__(self, model: nn.Module, cls_id: int, sep_id: int, mask_id: int, pad_id: int = 0,
                 mask_prob: float = 0.7, source_type: int = 4, target_type: int = 5) -> None:
        super().__init__()
        if not 0.0 < mask_prob <= 1.0:
            raise ValueError(f"mask_prob must be in (0, 1], got {mask_prob}")
        self.model = model
        self.cls_id, self.sep_id, self.mask_id, self.pad_id = cls_id, sep_id, mask_id, pad_id
        self.mask_prob = mask_prob
        self.source_type, self.target_type = source_type, target_type

    def make_batch(self, sources: list[list[int]], targets: list[list[int]],
                   generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Collate ``(source ids, target ids)`` pairs (without special tokens)."""
        from ..masks import SEQ2SEQ  # noqa: PLC0415

        if len(sources) != len(targets) or not sources:
            raise ValueError(f"need as many sources as targets (>0), got {len(sources)} and {len(targets)}")
        rows = [[self.cls_id, *s, self.sep_id, *t, self.sep_id] for s, t in zip(sources, targets)]
        L = max(len(r) for r in rows)
        B = len(rows)
        ids = torch.full((B, L), self.pad_id, dtype=torch.long)
        types = torch.zeros(B, L, dtype=torch.long)
        labels = torch.full((B, L), IGNORE_INDEX, dtype=torch.long)
        src_len = torch.tensor([len(s) + 2 for s in sources])
        seq_len = torch.tensor([len(r) for r in rows])
        for b, r in enumerate(rows):
            ids[b, : len(r)] = torch.tensor(r)
            n_src = int(src_len[b])
            types[b, :n_src] = self.source_type
            types[b, n_src: len(r)] = self.target_type
            tgt = torch.arange(n_src, len(r))
            chosen = torch.rand(len(tgt), generator=generator) < self.mask_prob
            if not chosen.any():
                chosen[torch.randint(len(tgt), (1,), generator=generator)] = True
            pos = tgt[chosen]
            labels[b, pos] = ids[b, pos]
            ids[b, pos] = self.mask_id
        mode = torch.full((B,), SEQ2SEQ, dtype=torch.long)
        return {"input_ids": ids, "token_type_ids": types, "labels": labels, "attn_mode": mode,
                "src_len": src_len, "seq_len": seq_len}

    @property
    def host_batch_keys(self) -> frozenset[str]:
        """The wrapped model's ``host_batch_keys`` (the batch goes to it as it is)."""
        return _host_batch_keys(self.model)

    def forward(self, **batch: torch.Tensor):
        return self.model(**batch)

    def generate(self, sources: list[list[int]], max_new_tokens: int = 20, num_beams: int = 1) -> list[list[int]]:
        """Decode targets for ``sources`` (ids without specials); stops at [SEP]."""
        rows = [[self.cls_id, *s, self.sep_id] for s in sources]
        L = max(len(r) for r in rows)
        device = next(self.model.parameters()).device
        ids = torch.full((len(rows), L), self.pad_id, dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, : len(r)] = torch.tensor(r)
        src_len = torch.tensor([len(r) for r in rows])
        out = self.model.generate(ids.to(device), src_len=src_len.to(device), max_new_tokens=max_new_tokens, num_beams=num_beams,
                                  eos_id=self.sep_id, pad_id=self.pad_id, mask_id=self.mask_id,
                                  source_type=self.source_type, target_type=self.target_type)
        result = []
        for row in out.tolist():
            toks = []
            for t in row:
                if t == self.sep_id:
                    break
                if t != self.pad_id:
                    toks.append(t)
            result.append(toks)
        return result


class MassFinetuner(nn.Module):
    """Seq2seq fine-tuning of a :class:`unimask.models.MassSeq2Seq` (Song et al. 2019, sec. 4:
    the pretrained encoder-decoder is fine-tuned on (source, target) pairs with teacher forcing).

    :meth:`make_batch`: encoder input ``[CLS] src [SEP]``; decoder input ``[start] tgt``
    (``start_id`` = [MASK], as the decoder starts in unimask's MASS pretraining) at positions
    ``0..``; decoder labels ``tgt [SEP]`` (the model learns to stop). :meth:`generate` decodes
    with the same start token and position.
    """

    def __init__(self, model: nn.Module, cls_id: int, sep_id: int, start_id: int, pad_id: int = 0) -> None:
        super().__init__()
        self.model = model
        self.cls_id, self.sep_id, self.start_id, self.pad_id = cls_id, sep_id, start_id, pad_id

    def _sources(self, sources: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [[self.cls_id, *s, self.sep_id] for s in sources]
        ids = torch.full((len(rows), max(len(r) for r in rows)), self.pad_id, dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, : len(r)] = torch.tensor(r)
        return ids, torch.tensor([len(r) for r in rows])

    def make_batch(self, sources: list[list[int]], targets: list[list[int]]) -> dict[str, torch.Tensor]:
        if len(sources) != len(targets) or not sources:
            raise ValueError(f"need as many sources as targets (>0), got {len(sources)} and {len(targets)}")
        ids, seq_len = self._sources(sources)
        T = max(len(t) for t in targets) + 1
        B = len(targets)
        dec = torch.full((B, T), self.pad_id, dtype=torch.long)
        labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
        for b, t in enumerate(targets):
            dec[b, : len(t) + 1] = torch.tensor([self.start_id, *t])
            labels[b, : len(t) + 1] = torch.tensor([*t, self.sep_id])
        positions = torch.arange(T)[None].expand(B, T).contiguous()
        return {"input_ids": ids, "seq_len": seq_len, "decoder_input_ids": dec, "decoder_positions": positions,
                "decoder_labels": labels, "decoder_len": torch.tensor([len(t) + 1 for t in targets])}

    @property
    def host_batch_keys(self) -> frozenset[str]:
        """The wrapped model's ``host_batch_keys`` (the batch goes to it as it is)."""
        return _host_batch_keys(self.model)

    def forward(self, **batch: torch.Tensor):
        return self.model(**batch)

    def generate(self, sources: list[list[int]], max_new_tokens: int = 20, num_beams: int = 1) -> list[list[int]]:
        """Decode targets for ``sources`` (ids without specials); stops at [SEP]."""
        ids, seq_len = self._sources(sources)
        device = next(self.model.parameters()).device
        out = self.model.generate(ids.to(device), seq_len=seq_len.to(device), max_new_tokens=max_new_tokens, num_beams=num_beams,
                                  eos_id=self.sep_id, pad_id=self.pad_id, decoder_start_id=self.start_id,
                                  decoder_start_position=0)
        result = []
        for row in out.tolist():
            toks = []
            for t in row:
                if t == self.sep_id:
                    break
                if t != self.pad_id:
                    toks.append(t)
            result.append(toks)
        return result


_TASKS = {"classify": SequenceClassifier, "tag": TokenClassifier, "qa": QuestionAnswering}


def load_task_model(directory: str | Path) -> _TaskModel:
    """Load whatever task model :meth:`save_pretrained` wrote in ``directory`` (by ``unimask_task``)."""
    raw = json.loads((Path(directory) / "config.json").read_text(encoding="utf-8"))
    task = (raw.get("unimask_task") or {}).get("task")
    if task not in _TASKS:
        raise ValueError(f"{directory} is not a unimask fine-tuned model (unimask_task.task = {task!r})")
    return _TASKS[task].from_pretrained(directory)
