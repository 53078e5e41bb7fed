"""The fine-tuning loop: one readable function per recipe, composed by :class:`FinetuneConfig`.

:func:`finetune_classifier` trains a :class:`SequenceClassifier` on :class:`Example` rows and
composes, each behind one config field (and one ``unimask finetune`` flag):

* ``schedule="linear"``: BERT linear warmup (``warmup_frac`` of the steps) + linear decay;
  ``schedule="stlr"``: ULMFiT slanted triangular LR (``cut_frac`` 0.1, ``ratio`` 32).
* ``discriminative_lr``: per-layer rates divided by 2.6 going down (ULMFiT).
* ``gradual_unfreeze``: only the head trains in epoch 1, one more layer group each epoch.
* ``lm_finetune_steps``: ULMFiT step 2 — masked-LM fine-tuning of the encoder on the task's
  own (unlabeled) training text before the classifier is trained (both texts of a pair, each
  as a text of its own).
* ``aux_lm_weight``: auxiliary masked-LM loss on the task batch during task training,
  ``loss = task + gamma * lm`` (GPT, Radford et al. 2018; SiATL, Chronopoulou et al. 2019);
  ``"siatl"`` = ``gamma`` from 0.2 decaying exponentially to 0.1, a float = constant.
* ``cvt_unlabeled`` (or ``finetune_classifier(..., unlabeled=...)``): CVT cross-view
  consistency (Clark et al. 2018) on unlabeled text. Every task step is followed by one
  consistency step on the next unlabeled mini-batch: the auxiliary heads of
  :class:`~unimask.finetune.cvt.CrossViewHeads` read the encoder run in the
  ``left_to_right`` / ``right_to_left`` attention modes and are trained, together with the
  shared encoder, to match the primary classifier's (fixed) prediction on the full
  bidirectional input, ``loss = cvt_weight * mean_views KL(p_primary || p_view)``.

:func:`train_multitask` is the MT-DNN loop (:mod:`unimask.finetune.multitask`). Optimizer
groups reuse BERT's weight-decay split (:func:`unimask.training.configure_optimizers`).
Every step appends ``{"step", "loss", "task_loss", "lm_loss", "gamma", "lr"}`` to the returned
history, so the recipes are observable.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from ..masks import _on
from ..models.encoder import set_gradient_checkpointing
from ..models.heads import MLMHead, gather_labelled
from ..packing import pack_padded
from ..training import _host_batch_keys as _host_keys
from ..training import _host_floats, configure_optimizers, linear_schedule
from .._checks import check_number as _config_number
from .cvt import CrossViewHeads, classifier_cvt_loss, cross_view_kl
from .data import Example, LabelMap, load_unlabeled
from .heads import SequenceClassifier
from .metrics import classification_report
from .multitask import mtdnn_schedule
from .schedules import (
    ULMFIT_DECAY,
    GradualUnfreezer,
    discriminative_param_groups,
    siatl_gamma,
    slanted_triangular_schedule,
)

__all__ = ["FinetuneConfig", "finetune_classifier", "evaluate_classifier", "predict", "lm_finetune",
           "AuxLM", "train_multitask", "encode_examples"]

_T = TypeVar("_T")


@dataclass
class FinetuneConfig:
    """Knobs of :func:`finetune_classifier` (defaults: BERT fine-tuning, Devlin et al. 2019 A.3).

    Every field is checked on construction; a bad value is a ``ValueError`` naming the field
    and the value: counts (``epochs``, ``batch_size``, ``max_length``, ``grad_accum``) are ints
    >= 1, ``lm_finetune_steps`` / ``log_every`` / ``cvt_eval_max`` ints >= 0, ``seed`` an int in
    ``[0, 2**32)``; rates (``lr``, ``lm_lr``, ``lr_decay``, ``cvt_weight``) finite numbers > 0,
    ``weight_decay`` and ``grad_clip`` finite numbers >= 0 (``grad_clip`` 0 or None: no
    clipping), ``warmup_frac`` in ``[0, 1]``, ``cut_frac`` in ``(0, 1)``, ``stlr_ratio`` >= 1,
    ``mlm_probability`` in ``(0, 1]``; ``aux_lm_weight`` None, ``"siatl"`` or a finite number
    >= 0 (a numeric string is converted). NaN, infinities and bools are never numbers here.
    """

    epochs: int = 3
    batch_size: int = 16
    lr: float = 5e-5
    weight_decay: float = 0.01
    max_length: int = 128
    grad_clip: float | None = 1.0  # max gradient norm; 0 or None: no clipping
    schedule: str = "linear"  # linear | stlr | constant
    warmup_frac: float = 0.1
    cut_frac: float = 0.1
    stlr_ratio: float = 32.0
    discriminative_lr: bool = False
    lr_decay: float = ULMFIT_DECAY
    gradual_unfreeze: bool = False
    aux_lm_weight: str | float | None = None  # None | "siatl" | float
    lm_finetune_steps: int = 0
    lm_lr: float = 5e-5
    mlm_probability: float = 0.15
    cvt_unlabeled: str | None = None  # file of unlabeled texts (.txt / .jsonl / .csv / .tsv): turns CVT on
    cvt_weight: float = 1.0
    cvt_text_field: str = "text"
    cvt_eval_max: int = 512  # unlabeled texts scored for the final cross-view KL report
    seed: int = 0
    log_every: int = 0
    precision: str = "fp32"  # fp32 | bf16 (autocast of the forward passes, on CUDA or the CPU)
    grad_accum: int = 1  # micro-batches of batch_size per optimizer step
    pack: bool = False  # classification, regression, tagging: pack each batch's examples into rows of max_length
    gradient_checkpointing: bool = False  # recompute each encoder layer's activations in the backward (less memory)

    def __post_init__(self) -> None:
        # every numeric field up front, as a ValueError naming it (a float epoch count, a NaN
        # weight decay or a negative clip norm used to fail obscurely later or train silently wrong)
        self.epochs = _config_number("epochs", self.epochs, 1, integer=True)
        self.batch_size = _config_number("batch_size", self.batch_size, 1, integer=True)
        self.lr = _config_number("lr", self.lr, 0, lo_open=True)
        self.weight_decay = _config_number("weight_decay", self.weight_decay, 0)
        self.max_length = _config_number("max_length", self.max_length, 1, integer=True)
        if self.grad_clip is not None:  # None or 0: no clipping
            self.grad_clip = _config_number("grad_clip", self.grad_clip, 0)
        if self.schedule not in ("linear", "stlr", "constant"):
            raise ValueError(f"schedule must be 'linear', 'stlr' or 'constant', got {self.schedule!r}")
        self.warmup_frac = _config_number("warmup_frac", self.warmup_frac, 0, 1)
        self.cut_frac = _config_number("cut_frac", self.cut_frac, 0, 1, lo_open=True, hi_open=True)
        self.stlr_ratio = _config_number("stlr_ratio", self.stlr_ratio, 1)
        self.lr_decay = _config_number("lr_decay", self.lr_decay, 0, lo_open=True)
        for flag in ("discriminative_lr", "gradual_unfreeze", "pack", "gradient_checkpointing"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{flag} must be True or False, got {getattr(self, flag)!r}")
        if self.aux_lm_weight is not None and self.aux_lm_weight != "siatl":
            w = self.aux_lm_weight
            if isinstance(w, str):
                try:
                    w = float(w)
                except ValueError:
                    raise ValueError(f"aux_lm_weight must be None, 'siatl' or a finite number >= 0, "
                                     f"got {self.aux_lm_weight!r}") from None
            self.aux_lm_weight = _config_number("aux_lm_weight", w, 0, shown=self.aux_lm_weight)
        self.lm_finetune_steps = _config_number("lm_finetune_steps", self.lm_finetune_steps, 0, integer=True)
        self.lm_lr = _config_number("lm_lr", self.lm_lr, 0, lo_open=True)
        # (0, 1]: a masked LM that masks nothing has no targets (its loss would be a constant 0)
        self.mlm_probability = _config_number("mlm_probability", self.mlm_probability, 0, 1, lo_open=True)
        self.cvt_weight = _config_number("cvt_weight", self.cvt_weight, 0, lo_open=True)
        if isinstance(self.cvt_unlabeled, Path):
            self.cvt_unlabeled = str(self.cvt_unlabeled)
        if self.cvt_unlabeled is not None and not isinstance(self.cvt_unlabeled, str):
            raise TypeError(f"cvt_unlabeled must be a file path (str), got {type(self.cvt_unlabeled).__name__}; "
                            "pass texts with finetune_classifier(..., unlabeled=[...])")
        if not isinstance(self.cvt_text_field, str):
            raise ValueError(f"cvt_text_field must be a column name (str), got {self.cvt_text_field!r}")
        self.cvt_eval_max = _config_number("cvt_eval_max", self.cvt_eval_max, 0, integer=True)
        # seed * 1000 + epoch seeds torch generators, numpy takes [seed, epoch]: both need >= 0
        self.seed = _config_number("seed", self.seed, 0, 2**32, hi_open=True, integer=True)
        self.log_every = _config_number("log_every", self.log_every, 0, integer=True)
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        self.grad_accum = _config_number("grad_accum", self.grad_accum, 1, integer=True)
        if self.pack and (self.aux_lm_weight or self.cvt_unlabeled is not None):
            raise ValueError("pack=True does not combine with the auxiliary LM or CVT (their batches are padded)")
        if self.grad_accum > 1 and self.cvt_unlabeled is not None:
            raise ValueError("grad_accum > 1 does not combine with CVT (its consistency steps come between the task "
                             "steps)")


def _check_pairs(examples: Sequence[Example], name: str = "examples") -> bool:
    """Whether ``examples`` are sentence pairs: all of them must have a ``text_pair`` or none
    (a ``ValueError`` names the first example that differs from ``name[0]``)."""
    if not examples:
        return False
    pair = examples[0].text_pair is not None
    for i, e in enumerate(examples):
        if (e.text_pair is not None) != pair:
            where = f" (row {e.row})" if e.row else ""
            raise ValueError(f"{name}[{i}]{where} has {'no' if pair else 'a'} text_pair but {name}[0] has "
                             f"{'one' if pair else 'none'}: the examples must be all sentence pairs or all single texts")
    return pair


def encode_examples(tokenizer, examples: Sequence[Example], max_length: int,
                    label_map: LabelMap | None = None) -> dict[str, torch.Tensor]:
    """Tokenize and pad ``examples`` (pairs as ``[CLS] A [SEP] B [SEP]``); ``labels`` from the
    label map (class ids) or float targets when there is no map. The examples must be all
    pairs or all single texts (``ValueError`` naming the first that is not)."""
    texts = [e.text for e in examples]
    pairs = [e.text_pair for e in examples] if _check_pairs(examples) else None
    enc = tokenizer.encode_batch(texts, pairs, max_length=max_length)
    batch = {k: torch.from_numpy(v) for k, v in enc.to_padded().items()}
    if examples and examples[0].label is not None:
        if label_map is not None:
            batch["labels"] = torch.tensor([label_map.encode(e.label, e.row) for e in examples])
        else:
            batch["labels"] = torch.tensor([float(e.label) for e in examples])
    return batch


class AuxLM(nn.Module):
    """A masked-LM head (BERT's, decoder tied to the encoder's word embeddings) and a masking
    collator: ``AuxLM(encoder, tokenizer).loss(input_ids_rows, indices)`` is the MLM loss of
    the encoder on freshly masked copies of the rows (ULMFiT step 2 / SiATL auxiliary loss,
    with BERT's masked LM standing in for the LSTM LM of those papers). ``token_type_ids``
    (one row per input row, e.g. ``0 .. 0 1 .. 1`` for a sentence pair) are passed to the
    encoder as the task forward passes them (default: all 0)."""

    def __init__(self, encoder: nn.Module, tokenizer, mlm_probability: float = 0.15, seed: int = 0) -> None:
        super().__init__()
        from ..collators import MLMCollator  # noqa: PLC0415

        self.encoder = [encoder]  # not a submodule: its parameters belong to the task model
        self.head = MLMHead(encoder.config)
        self.head.apply(encoder._init_weights)
        self.collator = MLMCollator(tokenizer=tokenizer, mlm_probability=mlm_probability, seed=seed)

    def collate(self, rows: Sequence[Any], indices: Sequence[int],
                token_type_ids: Sequence[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The masked copies of ``rows`` (CPU tensors: ``input_ids``, ``token_type_ids``,
        ``attention_mask``, ``labels`` = the original ids at masked positions, -100 elsewhere);
        the masking is a pure function of the collator's seed and ``indices``."""
        rows = list(rows)
        batch = self.collator(rows, indices=list(indices))
        if token_type_ids is not None:
            if len(token_type_ids) != len(rows):
                raise ValueError(f"token_type_ids has {len(token_type_ids)} rows for {len(rows)} input rows")
            types = torch.zeros_like(batch["token_type_ids"])
            for i, (r, t) in enumerate(zip(rows, token_type_ids)):
                t = torch.as_tensor(t)
                if t.shape != (len(r),):
                    raise ValueError(f"token_type_ids[{i}] has shape {tuple(t.shape)}, its row has {len(r)} tokens")
                types[i, : len(r)] = t
            batch = {**batch, "token_type_ids": types}
        return batch

    def batch_loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The mean MLM loss over the masked tokens of a :meth:`collate` batch (a 0 that keeps
        the graph when nothing is masked)."""
        enc = self.encoder[0]
        # everything stays where the collator made it (the CPU): the encoder range-checks the
        # ids and validates the mask there and copies them over without waiting, and
        # gather_labelled finds the masked positions there, so nothing reads the device
        out = enc(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
        h, y = gather_labelled(out.last_hidden_state, batch["labels"])
        if y.numel() == 0:
            return out.last_hidden_state.sum() * 0.0
        return F.cross_entropy(self.head(h, enc.embeddings.word.weight).float(), y)

    def loss(self, rows: Sequence[Any], indices: Sequence[int],
             token_type_ids: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """:meth:`batch_loss` of :meth:`collate` ``(rows, indices, token_type_ids)``."""
        return self.batch_loss(self.collate(rows, indices, token_type_ids))


def _rows_of(batch: Mapping[str, torch.Tensor], key: str = "input_ids") -> list[torch.Tensor]:
    """The unpadded rows of ``batch[key]`` (lengths from the right-padded attention mask)."""
    lens = batch["attention_mask"].sum(1).tolist()
    col = batch[key].cpu()
    return [col[i, :n] for i, n in enumerate(lens)]


def _to(batch: dict[str, torch.Tensor], device: torch.device,
        host: Collection[str] = frozenset()) -> dict[str, torch.Tensor]:
    """``batch`` on ``device``, except the fields in ``host`` (the model's ``host_batch_keys``,
    :func:`_host_keys`), which stay on the CPU: the model validates them there (range checks
    of the ids, the attention mask; a bad value is a ``ValueError`` naming it, not a
    device-side assert) and copies them over itself without waiting, so its forward needs no
    device synchronisation (with every field on the device, the mask validation read it back
    at every micro-batch). Copies from the CPU are queued without waiting
    (:func:`unimask.masks._on`: pinned, ``non_blocking``): a blocking host-to-device copy
    synchronises the device's stream, so it would wait, at every micro-batch, for all the work
    queued so far."""
    return {k: v if k in host else _on(v, device) for k, v in batch.items()}


def _use_checkpointing(model: nn.Module, cfg: FinetuneConfig) -> None:
    """``cfg.gradient_checkpointing``: activation checkpointing on in every encoder of ``model``
    for the run (:func:`unimask.models.set_gradient_checkpointing`; it stays on afterwards)."""
    if cfg.gradient_checkpointing:
        set_gradient_checkpointing(model)


def _autocast(cfg: FinetuneConfig, device: torch.device):
    """The forward passes' precision: bf16 autocast (fp32 weights, optimizer and gradients, as
    the usual mixed-precision recipe; no loss scaling needed for bf16) or plain fp32."""
    if cfg.precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _aux_lm_batch(aux: AuxLM | None, batch: Mapping[str, torch.Tensor], step: int,
                  cfg: FinetuneConfig) -> dict[str, torch.Tensor] | None:
    """The auxiliary LM's masked copies of the rows of the (padded, CPU) task ``batch`` of
    micro-batch ``step`` (row ``j`` masked as sample ``step * cfg.batch_size + j``), or None
    without ``aux``. The LM's encoder sees the rows as the task forward does: the same token
    types (segment B of a pair is type 1) and attention mask; only masked tokens differ."""
    if aux is None:
        return None
    n = batch["input_ids"].shape[0]
    types = _rows_of(batch, "token_type_ids") if batch.get("token_type_ids") is not None else None
    return aux.collate(_rows_of(batch), [step * cfg.batch_size + j for j in range(n)], types)


def _aux_gamma(cfg: FinetuneConfig, acc: _Accumulator) -> float:
    """The auxiliary LM's weight for the optimizer step ``acc`` is accumulating: SiATL's
    decaying gamma over the run's optimizer steps, or the configured constant."""
    if cfg.aux_lm_weight == "siatl":
        return siatl_gamma(acc.done, acc.steps(cfg.epochs))
    return float(cfg.aux_lm_weight)


def _add_aux_lm(task_loss: torch.Tensor, aux: AuxLM | None, lm_batch: Mapping[str, torch.Tensor] | None,
                gamma: float | None) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor | None]:
    """``(loss, terms, lm_loss)``: ``loss = task + gamma * lm`` (the task loss alone without
    ``aux``) and its terms by loss component (``{"task": task, "lm": gamma * lm}``) for
    :meth:`_Accumulator.backward`."""
    if aux is None:
        return task_loss, {"task": task_loss}, None
    lm = aux.batch_loss(lm_batch)
    term = gamma * lm
    return task_loss + term, {"task": task_loss, "lm": term}, lm


def _scored(labels: torch.Tensor) -> int:
    """The targets a task loss averages over in ``labels``: every row of float (regression)
    targets, the integer ids that are not -100 (classes, tags, tokens, positions) otherwise."""
    if labels.dtype.is_floating_point:
        return int(labels.shape[0])
    return int((labels != -100).sum())


def _micro_counts(labels: torch.Tensor, lm_batch: Mapping[str, torch.Tensor] | None) -> dict[str, int]:
    """A micro-batch's scored targets per loss component: ``task`` (:func:`_scored` of its
    labels) and, with the auxiliary LM, ``lm`` (its masked tokens)."""
    counts = {"task": _scored(labels)}
    if lm_batch is not None:
        counts["lm"] = _scored(lm_batch["labels"])
    return counts


def _optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor, cfg: FinetuneConfig) -> list[float]:
    """Backward, clip the gradients to ``cfg.grad_clip``, step, zero the gradients; returns the
    learning rate of each parameter group for this step."""
    loss.backward()
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], cfg.grad_clip)
    lrs = [g["lr"] for g in opt.param_groups]
    opt.step()
    opt.zero_grad(set_to_none=True)
    return lrs


class _Accumulator:
    """Exact gradient accumulation: the accumulated gradient of a window of micro-batches is
    the gradient of one batch made of all of them.

    The optimizer steps (after clipping) on every ``grad_accum``-th micro-batch of an epoch and
    on its last one (as HF ``Trainer``), so the last window of an epoch may be shorter.
    :meth:`windows` groups a plan's micro-batches into these windows; the caller builds a
    window's batches first, counts each one's scored targets per loss component
    (:func:`_micro_counts`: examples, tags, target or masked tokens), and :meth:`weights`
    gives each micro-batch's component the weight ``count / window total`` (0 when the window
    has none), which :meth:`backward` applies before the backward pass. Every component loss is
    a mean over its own targets, so the weighted sum is the mean over the window's targets, as
    transformers' ``num_items_in_batch``, also for a short last window, a short last batch and
    token-level losses over unequal token counts. With ``grad_accum`` 1 every weight is 1 and
    this is one plain ``loss.backward()`` and step per batch."""

    def __init__(self, opt: torch.optim.Optimizer, cfg: FinetuneConfig, per_epoch: int) -> None:
        self.opt, self.cfg, self.per_epoch = opt, cfg, per_epoch
        self.done = 0  # optimizer steps taken

    def steps(self, epochs: int) -> int:
        """Optimizer steps of ``epochs`` epochs (what the learning-rate schedule counts)."""
        return math.ceil(self.per_epoch / self.cfg.grad_accum) * epochs

    def windows(self, plan: Iterable[_T]) -> Iterator[list[_T]]:
        """The micro-batches of ``plan`` (``per_epoch`` per epoch, in order) grouped into the
        windows of one optimizer step each: ``grad_accum`` at a time, the last window of an
        epoch possibly shorter. A window is read from ``plan`` only once the previous one is
        processed (a plan that unfreezes layers at an epoch's start stays in step)."""
        window: list[_T] = []
        position = 0
        for item in plan:
            window.append(item)
            position += 1
            if len(window) == self.cfg.grad_accum or position == self.per_epoch:
                yield window
                window = []
                position %= self.per_epoch
        if window:
            yield window

    @staticmethod
    def weights(counts: Sequence[Mapping[str, int]]) -> list[dict[str, float]]:
        """Each micro-batch's weight per loss component: its count / the window's total of that
        component (0.0 when the total is 0)."""
        totals: dict[str, int] = {}
        for c in counts:
            for k, n in c.items():
                totals[k] = totals.get(k, 0) + n
        return [{k: (n / totals[k] if totals[k] else 0.0) for k, n in c.items()} for c in counts]

    def backward(self, terms: Mapping[str, torch.Tensor], weights: Mapping[str, float],
                 last: bool) -> tuple[bool, list[float]]:
        """Backward of ``sum_c weights[c] * terms[c]`` (a weight of exactly 1 leaves its term
        as it is, a weight of 0 drops it); on the ``last`` micro-batch of a window, then clip,
        step and zero the gradients. Returns ``(stepped, group rates)``."""
        parts = [t if weights[k] == 1.0 else t * weights[k] for k, t in terms.items() if weights[k] != 0.0]
        loss = sum(parts[1:], parts[0]) if parts else next(iter(terms.values())) * 0.0
        if last:
            self.done += 1
            return True, _optimizer_step(self.opt, loss, self.cfg)
        loss.backward()
        return False, [g["lr"] for g in self.opt.param_groups]


def _single_task_training(model: nn.Module, cfg: FinetuneConfig, n_items: int, extra: Sequence[nn.Module] = ()):
    """Optimizer, schedule, unfreezer (or None), micro-batch count, the step plan of a
    single-task run over ``n_items`` training items, and its :class:`_Accumulator`: the plan
    yields ``(epoch, batch number, item indices)`` per micro-batch, a fresh seeded permutation
    each epoch, gradual unfreezing advancing at each new epoch; the schedule counts optimizer
    steps (``grad_accum`` micro-batches each)."""
    per_epoch = math.ceil(n_items / cfg.batch_size)
    total = per_epoch * cfg.epochs
    opt = _make_optimizer(model, cfg.lr, cfg, extra)
    acc = _Accumulator(opt, cfg, per_epoch)
    sched = _make_scheduler(opt, cfg, acc.steps(cfg.epochs))
    unfreezer = GradualUnfreezer(model) if cfg.gradual_unfreeze else None

    def plan():
        for epoch in range(cfg.epochs):
            if unfreezer is not None and epoch > 0:
                unfreezer.step()
            g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
            order = torch.randperm(n_items, generator=g).tolist()
            for b in range(per_epoch):
                yield epoch, b, order[b * cfg.batch_size: (b + 1) * cfg.batch_size]
        if unfreezer is not None:  # leave the model fully trainable
            for p in model.parameters():
                p.requires_grad_(True)

    return opt, sched, unfreezer, total, plan(), acc


def _run_window(window: Sequence[tuple[int, int, _T]], micro: Sequence[tuple[Any, Mapping[str, torch.Tensor] | None]],
                counts: Sequence[Mapping[str, int]], forward: Callable[[_T, Any], torch.Tensor], step: int, *,
                cfg: FinetuneConfig, device: torch.device, acc: _Accumulator,
                sched: torch.optim.lr_scheduler.LRScheduler, unfreezer: GradualUnfreezer | None,
                log: Callable[[str], None] | None, message: Callable[[int, int, _T, float], str],
                aux: AuxLM | None = None,
                cvt_step: Callable[[], tuple[torch.Tensor, dict[str, torch.Tensor]]] | None = None,
                item_key: str | None = None, task_loss_only: bool = False,
                host: Collection[str] = frozenset()) -> list[dict[str, Any]]:
    """One optimizer step of a fine-tuning loop: the micro-batches of one :meth:`_Accumulator.windows`
    window, already built; returns their history records (steps ``step``, ``step + 1``, ...).

    ``window`` holds ``(epoch, batch number, item)`` per micro-batch and ``micro`` its
    ``(batch, lm_batch)`` (``lm_batch``: the auxiliary LM's masked copies, or None), ``counts``
    its scored targets per loss component (:func:`_micro_counts`), which weight the
    micro-batches (:meth:`_Accumulator.weights`). Per micro-batch: the batch goes to ``device``
    (but its fields in ``host``, the model's ``host_batch_keys``, which stay on the CPU: :func:`_to`),
    ``forward(item, batch)`` gives the task loss under the run's autocast, ``aux`` adds its
    masked-LM term (weight :func:`_aux_gamma`), :meth:`_Accumulator.backward` (stepping on the
    window's last micro-batch), ``cvt_step()`` (a CVT consistency step, ``(loss, {view: kl})``
    as device tensors) when given, ``sched.step()`` when the optimizer stepped, the history
    record (``item`` under ``item_key`` when given) and, every ``cfg.log_every`` steps,
    ``log(message(epoch, step count, item, loss))``. The records' numbers (losses, CVT KLs) are
    read from the device once per window, all together (:func:`_host_floats`), after its
    optimizer steps are queued; the log lines follow then. ``task_loss_only`` (QA, seq2seq):
    ``forward`` moves the batch itself and the records carry no ``task_loss`` / ``lm_loss`` /
    ``gamma`` / ``cvt_*`` fields."""
    weights = acc.weights(counts)
    gamma = _aux_gamma(cfg, acc) if aux is not None else None
    records: list[dict[str, Any]] = []
    for k, ((epoch, b, item), (batch, lm_batch)) in enumerate(zip(window, micro)):
        if not task_loss_only:
            batch = _to(batch, device, host)
        with _autocast(cfg, device):
            task_loss = forward(item, batch)
            loss, terms, lm = _add_aux_lm(task_loss, aux, lm_batch, gamma)
        stepped, lrs = acc.backward(terms, weights[k], last=k == len(window) - 1)
        cvt_loss = cvt_kl = None
        if cvt_step is not None:  # CVT: an unlabeled mini-batch after each labelled one
            cvt_loss, cvt_kl = cvt_step()
        if stepped:
            sched.step()
        record: dict[str, Any] = {"step": step, "epoch": epoch}
        if item_key is not None:
            record[item_key] = item
        record.update(batch=b, loss=loss.detach())
        if not task_loss_only:
            record.update(task_loss=task_loss.detach(), lm_loss=None if lm is None else lm.detach(), gamma=gamma)
        record.update(lr=max(lrs), lrs=lrs, unfrozen=unfreezer.unfrozen if unfreezer is not None else None)
        if not task_loss_only:
            record.update(cvt_loss=cvt_loss, cvt_kl=cvt_kl)
        records.append(record)
        step += 1
    # the records' numbers (tensors so far) as floats, read from the device in one transfer per
    # optimizer step, once it is queued: no wait for the device between micro-batches
    slots = [(r, k) for r in records for k in ("loss", "task_loss", "lm_loss", "cvt_loss") if r.get(k) is not None]
    kls = [(r["cvt_kl"], v) for r in records if r.get("cvt_kl") is not None for v in r["cvt_kl"]]
    values = iter(_host_floats([r[k] for r, k in slots] + [d[v] for d, v in kls]))
    for r, k in slots:
        r[k] = next(values)
    for d, v in kls:
        d[v] = next(values)
    if log and cfg.log_every:
        for (epoch, _, item), r in zip(window, records):
            if (r["step"] + 1) % cfg.log_every == 0:
                log(message(epoch, r["step"] + 1, item, r["loss"]))
    return records


def _train_task_loss_only(model: nn.Module, cfg: FinetuneConfig, n_items: int,
                          make_batch: Callable[[list[int]], tuple[Any, int]],
                          batch_loss: Callable[[Any], torch.Tensor],
                          log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """A single-task run with the task loss alone (QA, seq2seq): ``make_batch(item indices)``
    gives a micro-batch and the number of targets its loss averages over, ``batch_loss(batch)``
    its loss (computed under the run's autocast); each optimizer step's micro-batches are made
    first and weighted by their share of the window's targets (:class:`_Accumulator`).
    Optimizer, schedule and unfreezing as :func:`_single_task_training`. Returns the per-step
    history."""
    device = next(model.parameters()).device
    _use_checkpointing(model, cfg)
    opt, sched, unfreezer, total, plan, acc = _single_task_training(model, cfg, n_items)

    def message(epoch: int, step: int, _idx: list[int], loss: float) -> str:
        return f"epoch {epoch + 1} step {step}/{total}: loss {loss:.4f}"

    history: list[dict[str, Any]] = []
    model.train()
    for window in acc.windows(plan):
        made = [make_batch(idx) for _, _, idx in window]
        history += _run_window(window, [(batch, None) for batch, _ in made], [{"task": n} for _, n in made],
                               lambda _idx, batch: batch_loss(batch), len(history), cfg=cfg, device=device,
                               acc=acc, sched=sched, unfreezer=unfreezer, log=log, message=message,
                               task_loss_only=True)
    return history


class _CrossViewRun:
    """The CVT side of a fine-tuning run (classifier or tagger): fresh view heads beside
    ``model``, the unlabeled ``rows`` shuffled (seeded) and cycled ``cfg.batch_size`` at a
    time, one consistency step (``loss_fn`` times ``cfg.cvt_weight``, autocast as the task
    steps) after each task step, and the closing report. ``encode(rows)`` makes a device batch."""

    @staticmethod
    def check(cfg: FinetuneConfig) -> None:
        if cfg.grad_accum > 1:
            raise ValueError("grad_accum > 1 does not combine with CVT (its consistency steps come between the task "
                             "steps)")

    def __init__(self, model: nn.Module, rows: Sequence[Any], encode: Callable[[Sequence[Any]], dict[str, torch.Tensor]],
                 loss_fn: Callable, cfg: FinetuneConfig, device: torch.device, per_token: bool) -> None:
        self.rows, self.encode, self.loss_fn, self.cfg, self.per_token = rows, encode, loss_fn, cfg, per_token
        self.heads = CrossViewHeads(model.config.hidden_size, model.num_labels, model.config.hidden_dropout_prob)
        self.heads.apply(model.encoder._init_weights)
        self.heads.to(device)
        self.device = device
        self.gen = torch.Generator().manual_seed(cfg.seed * 1000 + 7)
        self.order: list[int] = []

    def step(self, model: nn.Module, opt: torch.optim.Optimizer) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One consistency step on the next unlabeled mini-batch: ``(loss, {view: kl})`` as
        detached scalar tensors, left on the device (:func:`_run_window` reads them with the
        step's other numbers, in one transfer)."""
        bs = self.cfg.batch_size
        if len(self.order) < bs:
            self.order += torch.randperm(len(self.rows), generator=self.gen).tolist()
        idx, self.order = self.order[:bs], self.order[bs:]
        batch = self.encode([self.rows[i] for i in idx])
        with _autocast(self.cfg, self.device):
            loss, kl = self.loss_fn(model, self.heads, **batch, kl_on_device=True)
        _optimizer_step(opt, self.cfg.cvt_weight * loss, self.cfg)
        return loss.detach(), kl

    def report(self, model: nn.Module, steps: int) -> dict[str, Any]:
        """Settings and the final eval-mode cross-view KL on up to ``cfg.cvt_eval_max`` rows."""
        cfg = self.cfg
        probe = self.rows[: cfg.cvt_eval_max]
        batches = [self.encode(probe[s: s + 64]) for s in range(0, len(probe), 64)]
        shape = {"per_token": True} if self.per_token else {"pooling": "mean"}
        return {"unlabeled": str(cfg.cvt_unlabeled) if cfg.cvt_unlabeled is not None else None,
                "n_unlabeled": len(self.rows), "weight": float(cfg.cvt_weight), "views": list(self.heads.views),
                **shape, "steps": steps, "schedule": "one consistency step after each task step",
                "final_kl": cross_view_kl(model, self.heads, batches, per_token=self.per_token) if batches else None,
                "final_kl_texts": len(probe)}


def _make_optimizer(model: nn.Module, params_lr: float, cfg: FinetuneConfig, extra: Sequence[nn.Module] = ()):
    if cfg.discriminative_lr:
        groups = discriminative_param_groups(model, params_lr, cfg.lr_decay, cfg.weight_decay)
        for m in extra:  # auxiliary heads train at the top rate
            groups.append({"params": list(m.parameters()), "lr": params_lr, "weight_decay": 0.0,
                           "layer": len(groups), "name": "aux"})
        return torch.optim.AdamW(groups, lr=params_lr, eps=1e-6)
    holder = nn.ModuleList([model, *extra])
    return configure_optimizers(holder, params_lr, cfg.weight_decay)


def _make_scheduler(opt, cfg: FinetuneConfig, total: int):
    if cfg.schedule == "stlr":
        return slanted_triangular_schedule(opt, total, cfg.cut_frac, cfg.stlr_ratio)
    if cfg.schedule == "linear":
        return linear_schedule(opt, int(round(cfg.warmup_frac * total)), total)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _t: 1.0)


def lm_finetune(encoder: nn.Module, tokenizer, texts: Sequence[str], steps: int, cfg: FinetuneConfig,
                log: Callable[[str], None] | None = None) -> list[float]:
    """ULMFiT step 2: ``steps`` masked-LM updates of ``encoder`` on target-domain ``texts``
    (STLR schedule as in ULMFiT); returns the per-step LM losses."""
    if steps <= 0:
        return []
    if not texts:
        raise ValueError("lm_finetune needs target-domain texts")
    _use_checkpointing(encoder, cfg)
    aux = AuxLM(encoder, tokenizer, cfg.mlm_probability, cfg.seed + 1)
    aux.head.to(encoder.embeddings.word.weight.device)
    enc = tokenizer.encode_batch(list(texts), max_length=cfg.max_length)
    rows = [torch.from_numpy(enc[i].ids.astype("int64")) for i in range(len(enc))]
    holder = nn.ModuleList([encoder, aux.head])
    opt = configure_optimizers(holder, cfg.lm_lr, cfg.weight_decay)
    sched = slanted_triangular_schedule(opt, steps, cfg.cut_frac, cfg.stlr_ratio)
    g = torch.Generator().manual_seed(cfg.seed + 2)
    losses: list[float] = []
    encoder.train()
    perm = torch.randperm(len(rows), generator=g).tolist()
    pos = 0
    for step in range(steps):
        if pos + cfg.batch_size > len(perm):
            perm, pos = torch.randperm(len(rows), generator=g).tolist(), 0
        idx = perm[pos: pos + cfg.batch_size]
        pos += cfg.batch_size
        with _autocast(cfg, encoder.embeddings.word.weight.device):
            loss = aux.loss([rows[i] for i in idx], [step * cfg.batch_size + j for j in range(len(idx))])
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(holder.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if log and cfg.log_every and (step + 1) % cfg.log_every == 0:
            log(f"lm step {step + 1}/{steps}: loss {losses[-1]:.4f}")
    return losses


def finetune_classifier(model: SequenceClassifier, tokenizer, train: Sequence[Example], cfg: FinetuneConfig,
                        eval_examples: Sequence[Example] | None = None,
                        log: Callable[[str], None] | None = None,
                        extra_tasks: Mapping[str, Sequence[Example]] | None = None,
                        unlabeled: Sequence[Example | str] | None = None) -> dict[str, Any]:
    """Train ``model`` on ``train`` with the recipes selected in ``cfg``; returns
    ``{"history": [...], "lm_losses": [...], "eval": report or None, "extra_heads": {...},
    "cvt": None or {...}, "cvt_heads": CrossViewHeads or None}``.

    ``train`` must not be empty (``ValueError: no training examples``, as the tagger, QA and
    seq2seq loops). Each list of examples (``train``, ``eval_examples``, each extra task, the
    unlabeled rows) must be all sentence pairs or all single texts (``ValueError`` naming the
    first example that is not); the unlabeled rows have pairs exactly when ``train`` does.

    ``extra_tasks`` (name -> labelled examples) turns the run into MT-DNN multi-task training:
    each extra task is a classification task with at least 2 distinct labels (a task with a
    single label is a ``ValueError``, not a 1-output regression head) and gets a
    :class:`~unimask.finetune.multitask.TaskHead` on the shared encoder,
    every micro-batch is one mini-batch of one task (the main task is called ``"main"``), in the
    order of :func:`~unimask.finetune.multitask.mtdnn_schedule`; with ``grad_accum > 1`` an
    optimizer step takes the next ``grad_accum`` of them, so it may mix tasks, weighted by their
    example counts (the mean loss over the step's examples). The auxiliary LM loss, when
    enabled, is added on every step.

    ``unlabeled`` (texts or label-less examples; default: read from ``cfg.cvt_unlabeled``)
    turns on CVT: after every step, one consistency step on the next unlabeled mini-batch
    (shuffled, cycled) updates the encoder and the view heads (:func:`classifier_cvt_loss`,
    times ``cfg.cvt_weight``) with the same optimizer at the current learning rate. History
    rows then carry ``cvt_loss`` and ``cvt_kl`` (per view); ``result["cvt"]`` holds the settings
    and the final eval-mode cross-view KL on (up to ``cfg.cvt_eval_max``) unlabeled texts.
    The view heads are returned as ``result["cvt_heads"]`` and are not part of ``model``.
    """
    from .multitask import TaskHead  # noqa: PLC0415

    torch.manual_seed(cfg.seed)
    device = next(model.parameters()).device
    label_map = model.label_map if model.problem_type == "classification" else None
    extra_tasks = dict(extra_tasks or {})
    if not train:
        raise ValueError("no training examples")
    if "main" in extra_tasks:
        raise ValueError("'main' is the name of the main task; rename the extra task")
    _check_pairs(train, "train")
    for name, exs in extra_tasks.items():
        _check_pairs(exs, f"extra_tasks[{name!r}]")
    if eval_examples:
        _check_pairs(eval_examples, "eval_examples")
    if cfg.pack and (extra_tasks or unlabeled is not None):
        raise ValueError("pack=True is for single-task fine-tuning (no extra tasks, no CVT)")
    _use_checkpointing(model, cfg)
    if cfg.lm_finetune_steps:
        # every text of the training set is target-domain text: both sides of a pair
        texts = [t for e in train for t in (e.text, e.text_pair) if t is not None]
        lm_losses = lm_finetune(model.encoder, tokenizer, texts, cfg.lm_finetune_steps, cfg, log)
    else:
        lm_losses = []
    aux = AuxLM(model.encoder, tokenizer, cfg.mlm_probability, cfg.seed + 3) if cfg.aux_lm_weight else None
    if unlabeled is None and cfg.cvt_unlabeled is not None:
        unlabeled = load_unlabeled(cfg.cvt_unlabeled, cfg.cvt_text_field)
    cvt_heads = cvt_rows = None
    if unlabeled is not None:
        _CrossViewRun.check(cfg)
        if model.problem_type != "classification":
            raise ValueError("CVT (cross-view consistency) needs a classifier: the views match the primary "
                             "model's class distribution; it is not defined for regression")
        cvt_rows = [Example(u) if isinstance(u, str) else Example(u.text, u.text_pair) for u in unlabeled]
        if not cvt_rows:
            raise ValueError("CVT needs at least one unlabeled text (got an empty list)")
        if any(not r.text.strip() for r in cvt_rows):
            raise ValueError("CVT unlabeled texts must be non-empty strings")
        if _check_pairs(cvt_rows, "unlabeled") != (train[0].text_pair is not None):
            raise ValueError("CVT unlabeled rows must have a text pair exactly when the training rows do")
        cvt = _CrossViewRun(model, cvt_rows,
                            lambda rows: _to(encode_examples(tokenizer, rows, cfg.max_length), device, _host_keys(model)),
                            classifier_cvt_loss, cfg, device, per_token=False)
        cvt_heads = cvt.heads
    data: dict[str, Sequence[Example]] = {"main": train, **extra_tasks}
    maps: dict[str, LabelMap | None] = {"main": label_map}
    heads = nn.ModuleDict()
    for name, exs in extra_tasks.items():
        if not exs:
            raise ValueError(f"extra task {name!r} has no examples")
        maps[name] = LabelMap.from_examples(exs)
        if len(maps[name]) < 2:  # a 1-output head would be a regressor trained by MSE on class id 0
            raise ValueError(f"extra task {name!r} has a single label {maps[name].labels}: extra tasks are "
                             "classification tasks and need at least 2 distinct labels")
        heads[name] = TaskHead(model.config.hidden_size, len(maps[name]), model.pooling,
                               model.config.hidden_dropout_prob, problem_type="classification")
        heads[name].apply(model.encoder._init_weights)
    heads.to(device)
    if aux is not None:
        aux.head.to(device)
    counts = {t: math.ceil(len(d) / cfg.batch_size) for t, d in data.items()}
    per_epoch = sum(counts.values())
    total = per_epoch * cfg.epochs
    extra_modules = [m for m in (aux.head if aux is not None else None, heads if extra_tasks else None, cvt_heads)
                     if m is not None]
    opt = _make_optimizer(model, cfg.lr, cfg, extra_modules)
    acc = _Accumulator(opt, cfg, per_epoch)
    sched = _make_scheduler(opt, cfg, acc.steps(cfg.epochs))
    unfreezer = GradualUnfreezer(model) if cfg.gradual_unfreeze else None

    def forward(task: str, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The task loss of a device ``batch`` of ``task`` (the main model or an extra task's head)."""
        if task == "main":
            return model(**batch).loss
        hidden = model.encode(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        return heads[task](hidden.last_hidden_state, batch["attention_mask"], batch["labels"]).loss

    def message(epoch: int, step: int, task: str, loss: float) -> str:
        return f"epoch {epoch + 1} step {step}/{total} ({task}): loss {loss:.4f}"

    history: list[dict[str, Any]] = []
    step = 0
    model.train()
    heads.train()
    for epoch in range(cfg.epochs):
        if unfreezer is not None and epoch > 0:
            unfreezer.step()
        g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        orders = {t: torch.randperm(len(d), generator=g).tolist() for t, d in data.items()}
        plan = mtdnn_schedule(counts, cfg.seed, epoch) if extra_tasks else [("main", b) for b in range(per_epoch)]
        for window in acc.windows(plan):
            # the optimizer step's micro-batches first: their scored targets weight their losses
            micro = []
            for task, b in window:
                idx = orders[task][b * cfg.batch_size: (b + 1) * cfg.batch_size]
                batch = encode_examples(tokenizer, [data[task][i] for i in idx], cfg.max_length, maps[task])
                lm_batch = _aux_lm_batch(aux, batch, step + len(micro), cfg)
                if cfg.pack:  # the same examples, fewer padded tokens: the loss and gradients are unchanged
                    batch = pack_padded(batch, cfg.max_length)
                micro.append((batch, lm_batch))
            records = _run_window([(epoch, b, task) for task, b in window], micro,
                                  [_micro_counts(batch["labels"], lm_batch) for batch, lm_batch in micro], forward,
                                  step, cfg=cfg, device=device, acc=acc, sched=sched, unfreezer=unfreezer, log=log,
                                  message=message, aux=aux, item_key="task", host=_host_keys(model),
                                  cvt_step=(lambda: cvt.step(model, opt)) if cvt_heads is not None else None)
            history += records
            step += len(records)
    if unfreezer is not None:  # leave the model fully trainable
        for p in model.parameters():
            p.requires_grad_(True)
    report = evaluate_classifier(model, tokenizer, eval_examples, cfg) if eval_examples else None
    return {"history": history, "lm_losses": lm_losses, "eval": report, "config": asdict(cfg),
            "extra_heads": dict(heads.items()), "cvt": cvt.report(model, step) if cvt_heads is not None else None,
            "cvt_heads": cvt_heads}


@torch.no_grad()
def predict(model: SequenceClassifier, tokenizer, examples: Sequence[Example], max_length: int = 128,
            batch_size: int = 64, pack: bool = False) -> torch.Tensor:
    """Logits ``[N, num_labels]`` for ``examples`` (eval mode; all sentence pairs or all single
    texts); ``pack``: each batch's examples packed into rows of ``max_length``
    (:func:`unimask.packing.pack_padded`), same logits."""
    _check_pairs(examples)
    was = model.training
    model.eval()
    out = []
    try:
        for s in range(0, len(examples), batch_size):
            chunk = [Example(e.text, e.text_pair) for e in examples[s: s + batch_size]]
            device = next(model.parameters()).device
            batch = encode_examples(tokenizer, chunk, max_length)
            if pack:
                batch = pack_padded(batch, max_length)
            out.append(model(**_to(batch, device, _host_keys(model))).logits.float().cpu())
    finally:
        model.train(was)
    return torch.cat(out)


def evaluate_classifier(model: SequenceClassifier, tokenizer, examples: Sequence[Example],
                        cfg: FinetuneConfig | None = None) -> dict[str, float]:
    """Accuracy, per-class and macro/micro F1 (classification) or MSE and Pearson r (regression)."""
    max_length = cfg.max_length if cfg is not None else 128
    logits = predict(model, tokenizer, examples, max_length, pack=cfg is not None and cfg.pack)
    if model.problem_type == "regression":
        pred = logits[:, 0]
        gold = torch.tensor([float(e.label) for e in examples])
        mse = float(((pred - gold) ** 2).mean())
        pc, gc = pred - pred.mean(), gold - gold.mean()
        r = float((pc * gc).sum() / (pc.norm() * gc.norm()).clamp(min=1e-12))
        return {"mse": mse, "pearson": r, "n": float(len(examples))}
    lm = model.label_map
    pred = [lm.decode(i) for i in logits.argmax(-1).tolist()]
    gold = [e.label for e in examples]
    return classification_report(pred, gold, lm.labels)


def train_multitask(model: nn.Module, task_batches: Mapping[str, Sequence[Mapping[str, torch.Tensor]]],
                    epochs: int = 1, lr: float = 5e-5, seed: int = 0, weight_decay: float = 0.01,
                    grad_clip: float | None = 1.0) -> list[dict[str, Any]]:
    """MT-DNN training of a :class:`~unimask.finetune.MultiTaskModel`: each epoch walks
    :func:`mtdnn_schedule` over the tasks' mini-batches (one task per step); returns per-step
    ``{"step", "task", "batch", "loss"}``.

    Every task in ``task_batches`` must have at least one mini-batch (a task without data is a
    ``ValueError`` naming it, not a task silently left untrained); ``epochs`` is an int >= 1,
    ``lr`` a finite number > 0, ``weight_decay`` and ``grad_clip`` finite numbers >= 0
    (``grad_clip`` 0 or None: no clipping).
    """
    epochs = _config_number("epochs", epochs, 1, integer=True)
    lr = _config_number("lr", lr, 0, lo_open=True)
    weight_decay = _config_number("weight_decay", weight_decay, 0)
    if grad_clip is not None:
        grad_clip = _config_number("grad_clip", grad_clip, 0)
    if not task_batches:
        raise ValueError("train_multitask needs at least one task in task_batches")
    counts = {t: len(b) for t, b in task_batches.items()}
    empty = [t for t, n in counts.items() if n == 0]
    if empty:
        raise ValueError(f"task {empty[0]!r} has no mini-batches in task_batches (every task needs data; "
                         "drop the task or give it batches)")
    total = sum(counts.values()) * epochs
    opt = configure_optimizers(model, lr, weight_decay)
    sched = linear_schedule(opt, int(0.1 * total), total)
    history = []
    model.train()
    step = 0
    for epoch in range(epochs):
        for task, i in mtdnn_schedule(counts, seed, epoch):
            out = model(task=task, **task_batches[task][i])
            out.loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            history.append({"step": step, "task": task, "batch": i, "loss": out.loss.item()})
            step += 1
    return history
