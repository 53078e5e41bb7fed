"""The pretraining loop: optimizer, schedule, evaluation, checkpoints, exact resume, DDP.

Reads top to bottom like nanoGPT's ``train.py``, but as a small API:

* :func:`configure_optimizers` — AdamW with BERT's weight-decay exclusions (biases and
  LayerNorm parameters get no decay; google-research/bert ``optimization.py``).
* :func:`linear_schedule` — linear warmup then linear decay to 0 (BERT's schedule).
* :class:`Trainer` — gradient accumulation (exact: the gradient of one batch of the step's
  micro-batches, each loss weighted by its share of the scored targets), gradient clipping,
  bf16/fp16 autocast on CUDA (bf16 also on the CPU), periodic held-out evaluation (MLM loss, accuracy, perplexity),
  a tqdm bar with tokens/s, a loss-curve PNG at the end, atomic checksummed checkpoints that hold model, optimizer,
  scheduler, RNG states and the data position, and DDP or FSDP under ``torchrun`` (gloo on
  the CPU, NCCL on CUDA).

Data position is exact by construction: the training data is a :class:`BatchSource`, whose
``batches(start)`` yields the micro-batches from index ``start`` on, each a pure function of
(seed, index) — RoBERTa-style dynamic masking seeded per (seed, epoch, index), as in fairseq.
A checkpoint stores the number of micro-batches consumed, so a resumed run reads the very
batches an uninterrupted run would have read.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import os
import random
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from .masks import _on

__all__ = [
    "TrainingConfig",
    "Trainer",
    "BatchSource",
    "configure_optimizers",
    "fsdp_blocks",
    "fsdp_shard",
    "linear_schedule",
    "save_checkpoint_file",
    "load_checkpoint_file",
    "CheckpointError",
]

Batch = dict[str, torch.Tensor]


class BatchSource(Protocol):
    """Resumable training data: ``batches(start)`` yields micro-batches ``start, start+1, ...``.

    Micro-batch ``i`` must depend only on ``i`` (and the source's own seed/rank), never on how
    many batches were drawn before in this process. A plain callable ``f(start)`` also works.
    """

    def batches(self, start: int) -> Iterator[Batch]: ...


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated or fails its sha256 check."""


@dataclass
class TrainingConfig:
    """Every knob of :class:`Trainer`, with BERT-like defaults (Devlin et al. 2019, A.2)."""

    max_steps: int = 1000
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-6
    warmup_steps: int = 100
    grad_clip: float = 1.0
    grad_accum: int = 1
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (autocast; bf16 on CUDA or the CPU, fp16 on CUDA; auto: bf16 on GPUs with native bf16, else fp16; fp32 on the CPU)
    eval_every: int = 200
    log_every: int = 10
    checkpoint_every: int = 0  # 0: only at the end (when output_dir is set)
    keep_checkpoints: int = 2
    output_dir: str | None = None
    progress: bool = True
    distributed: str = "ddp"  # ddp | fsdp (FSDP2 ``fully_shard``; CPU/gloo and CUDA/NCCL)
    find_unused_parameters: bool = True

    def __post_init__(self) -> None:
        if self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0, got {self.max_steps}")
        if self.grad_accum < 1:
            raise ValueError(f"grad_accum must be >= 1, got {self.grad_accum}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be auto|fp32|bf16|fp16, got {self.precision!r}")
        if self.distributed not in ("ddp", "fsdp"):
            raise ValueError(f"distributed must be 'ddp' or 'fsdp', got {self.distributed!r}")


def configure_optimizers(model: nn.Module, lr: float, weight_decay: float,
                         betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6) -> torch.optim.AdamW:
    """AdamW with two groups: decay for weight matrices and embeddings; none for biases and
    LayerNorm parameters (BERT's ``exclude_from_weight_decay=["LayerNorm", "layer_norm", "bias"]``).
    Tied parameters appear once."""
    no_decay: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            no_decay.update(id(p) for p in module.parameters(recurse=False))
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            no_decay.add(id(p))
    decay_params, plain = [], []
    seen: set[int] = set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (plain if id(p) in no_decay else decay_params).append(p)
    groups = [{"params": decay_params, "weight_decay": weight_decay},
              {"params": plain, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


def linear_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from 0 to the base lr over ``warmup_steps``, then linear decay to 0."""

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return step / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ---------------------------------------------------------------------------------------------
# checkpoint files: torch.save to a temp file, sha256 next to it, os.replace both


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint_file(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically and ``path.sha256`` with its checksum."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    _atomic_write_bytes(path, data)
    _atomic_write_bytes(path.with_name(path.name + ".sha256"), f"{digest}  {path.name}\n".encode())
    return path


def load_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint_file`, verifying its sha256 first.

    Raises :class:`CheckpointError` when the file or its ``.sha256`` is missing, when the
    ``.sha256`` file is empty or does not start with a 64-digit hex digest, or on a mismatch.
    """
    path = Path(path)
    sha = path.with_name(path.name + ".sha256")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not sha.is_file():
        raise CheckpointError(f"checksum file missing for {path} (expected {sha})")
    fields = sha.read_bytes().decode("ascii", errors="replace").split()
    expected = fields[0].lower() if fields else ""
    if len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected):
        shown = repr(fields[0][:80]) if fields else "nothing"
        raise CheckpointError(f"checksum file {sha} is damaged: expected a sha256 hex digest, found {shown}")
    actual = _sha256(path)
    if actual != expected:
        raise CheckpointError(f"checkpoint {path} is corrupt: sha256 {actual} != recorded {expected}")
    return torch.load(path, map_location="cpu", weights_only=False)


def _checkpoints_to_prune(directory: Path, current: Path, step: int, keep: int) -> list[Path]:
    """The ``step-N.pt`` files of ``directory`` that retention deletes after ``current`` (step
    ``step``) was written: those with ``N <= step`` beyond the newest ``keep`` by ``N``, never
    ``current`` nor the file ``latest`` names. Files of later steps are another run's: kept."""
    protected = {current.name}
    latest = directory / "latest"
    if latest.is_file():
        protected.add(latest.read_text().strip())
    ours = []
    for p in directory.glob("step-*.pt"):
        m = re.fullmatch(r"step-(\d+)\.pt", p.name)
        if m and int(m.group(1)) <= step:
            ours.append((int(m.group(1)), p.name, p))
    ours.sort()
    return [p for _, name, p in ours[: max(0, len(ours) - keep)] if name not in protected]


def _rng_state(device: torch.device) -> dict[str, Any]:
    """The RNG states a resumed run needs: CPU torch, numpy, Python, and the CUDA generator of
    this trainer's ``device`` only. (``torch.cuda.get_rng_state_all()`` would create a CUDA
    context on every visible GPU in every rank, and its per-GPU list cannot be restored when
    fewer GPUs are visible.)"""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    cuda = state.get("cuda")
    if cuda is None or device.type != "cuda":
        return
    if isinstance(cuda, (list, tuple)):  # older checkpoints: one state per visible GPU
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= len(cuda):
            return  # that run had no generator for this GPU: nothing to restore
        cuda = cuda[index]
    torch.cuda.set_rng_state(cuda, device)


def _dist():
    import torch.distributed as dist  # noqa: PLC0415

    return dist if dist.is_available() and dist.is_initialized() else None


def _count_tokens(batch: Batch) -> int:
    if "num_tokens" in batch:  # packed rows (unimask.packing): real tokens per row
        return int(batch["num_tokens"].sum())
    for key in ("seq_len", "attention_mask"):
        if key in batch:
            t = batch[key]
            return int(t.sum()) if key == "seq_len" else int((t != 0).sum())
    return int(batch["input_ids"].numel())


#: Loss components the Trainer weights by their scored targets: ``PretrainingOutput.mlm_loss``
#: (masked tokens for MLM/UNILM, next tokens for the causal LM, span tokens for MASS: the
#: ``labels`` / ``decoder_labels`` that are not -100) and ``.nsp_loss`` (labelled samples).
_COMPONENTS = ("mlm", "nsp")


def _scored_counts(model: nn.Module, batch: Batch) -> dict[str, int]:
    """The targets ``model`` scores in ``batch``, per loss component (see :data:`_COMPONENTS`).

    MLM: ``labels`` (or MASS's ``decoder_labels``) != -100, what ``gather_labelled`` selects.
    NSP: ``next_sentence_label`` != -100 after the model's own relabelling (``UnifiedLM``
    scores bidirectional samples only; its collators already give the others -100, but a
    hand-made batch may not); packed rows take each sample's mode from the document that
    starts at its ``[CLS]``, as the model does."""
    counts = {"mlm": 0, "nsp": 0}
    for key in ("labels", "decoder_labels"):
        if isinstance(batch.get(key), torch.Tensor):
            counts["mlm"] += int((batch[key] != -100).sum())
    label = batch.get("next_sentence_label")
    if isinstance(label, torch.Tensor):
        relabel = getattr(model, "_nsp_labels", None)
        mode = batch.get("attn_mode")
        if relabel is not None and isinstance(mode, torch.Tensor):
            if isinstance(batch.get("cu_seqlens"), torch.Tensor) and isinstance(batch.get("doc_starts"), torch.Tensor):
                starts = batch["doc_starts"]
                mode = mode[torch.searchsorted(batch["cu_seqlens"][1:].to(starts.dtype), starts, right=True)]
            label = relabel(label, mode)
        counts["nsp"] = int((label != -100).sum())
    return counts


def _weighted_loss(out: Any, counts: dict[str, int], weights: dict[str, float | torch.Tensor],
                   grad_accum: int) -> torch.Tensor:
    """One micro-batch's share of the step's loss: ``sum_c weights[c] * out.<c>_loss``.

    A model whose output has neither ``mlm_loss`` nor ``nsp_loss`` (a custom model with only
    ``loss``) falls back to ``loss / grad_accum``: a mean of micro-batch means."""
    parts = {c: getattr(out, f"{c}_loss", None) for c in _COMPONENTS}
    if all(v is None for v in parts.values()):
        return out.loss / grad_accum
    scored = getattr(out, "mlm_labels", None)
    if parts["mlm"] is not None and scored is not None and scored.shape[0] != counts["mlm"]:
        raise RuntimeError(f"the model scored {scored.shape[0]} MLM targets, the batch labels {counts['mlm']}")
    # a device weight (torch.distributed) is float32: v * w in float32 then v's dtype, the
    # arithmetic of v times a Python float
    terms = [(v.float() * weights[c]).to(v.dtype) if isinstance(weights[c], torch.Tensor) else v * weights[c]
             for c, v in parts.items() if v is not None]
    return terms[0] if len(terms) == 1 else sum(terms[1:], terms[0])


def _host_batch_keys(model: nn.Module) -> frozenset[str]:
    """The batch fields ``model`` takes on the CPU (its ``host_batch_keys``: it validates them
    there and copies them to its device itself, without waiting); none declared: none."""
    return frozenset(getattr(model, "host_batch_keys", frozenset()))


def _full(t: torch.Tensor) -> torch.Tensor:
    """A scalar tensor made whole: a DTensor (FSDP2's total grad norm) becomes a plain tensor
    (a collective), anything else is returned as it is. It stays on the device (no host sync)."""
    if hasattr(t, "full_tensor"):
        t = t.full_tensor()
    return t


def _host_floats(scalars: Sequence[torch.Tensor]) -> list[float]:
    """The values of floating-point scalar tensors as Python floats, read from the device in
    one transfer: they are stacked on the first one's device, in a dtype that holds each of
    them exactly (the promotion of their dtypes and float32: bf16/fp16/fp32 values go to fp32,
    fp64 stays fp64), and read with a single ``tolist()``. Each value equals ``t.item()``; one
    ``.item()`` per scalar instead would wait for the device once per scalar."""
    if not scalars:
        return []
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in scalars), torch.float32)
    device = scalars[0].device
    return torch.stack([t.detach().reshape(()).to(device=device, dtype=dtype) for t in scalars]).tolist()


def fsdp_blocks(model: nn.Module) -> list[nn.Module]:
    """The modules :func:`fsdp_shard` makes their own FSDP units: every encoder block
    (``TransformerEncoder.layers[i]``) anywhere in ``model``.

    Everything else stays in the root unit: the embeddings, because the MLM/LM decoder is tied
    to the word-embedding table and reads it outside the embedding module (tied parameters
    must live in one unit, the one whose forward is running), the heads, and MASS's decoder
    layers (``MassSeq2Seq.encode`` calls ``layer.cross.memory`` outside the layer's forward,
    where a separately sharded layer would still hold only its shard)."""
    from .models.encoder import TransformerEncoder  # noqa: PLC0415

    blocks: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, TransformerEncoder):
            blocks.extend(module.layers)
    return blocks


def fsdp_shard(model: nn.Module, device: str | torch.device, world_size: int | None = None,
               sync_module_states: bool = True) -> nn.Module:
    """Shard ``model`` in place with FSDP2 (``torch.distributed.fsdp.fully_shard``) over a 1-D
    device mesh of all ranks on ``device``'s type: each of :func:`fsdp_blocks` first, then the
    root — the bottom-up order of the PyTorch FSDP2 tutorial and torchtitan. Works on gloo
    (CPU) and NCCL (CUDA); parameters become ``DTensor`` shards on ``device`` (each unit moves
    there as it is sharded); forward/backward all-gather them per unit and reduce-scatter the
    gradients (averaged over ranks, as DDP). Returns ``model`` (now also an ``FSDPModule``).
    ``torch.distributed`` must be initialised.

    ``fully_shard`` keeps each rank's own slice of its own tensors, so with
    ``sync_module_states`` (default) rank 0's parameters and buffers are first broadcast, one
    tensor at a time, as DDP does at construction (FSDP1's ``sync_module_states``): ranks that
    initialised differently still start from one model."""
    import torch.distributed as dist  # noqa: PLC0415
    from torch.distributed.device_mesh import init_device_mesh  # noqa: PLC0415
    from torch.distributed.fsdp import fully_shard  # noqa: PLC0415

    device = torch.device(device)
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("fsdp_shard needs torch.distributed initialised (run under torchrun)")
    world = dist.get_world_size() if world_size is None else world_size
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # a CUDA mesh communicates on the current device
    mesh = init_device_mesh(device.type, (world,))
    if sync_module_states and world > 1:
        with torch.no_grad():
            for t in [*model.parameters(), *model.buffers()]:
                on_device = t.detach().to(device)  # the tensor itself when already there
                dist.broadcast(on_device, src=0)
                if on_device.data_ptr() != t.data_ptr():
                    t.copy_(on_device)
    for block in fsdp_blocks(model):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _reshard(model: nn.Module) -> None:
    """Register the sharded parameters again on every FSDP unit. FSDP2 keeps the root unit
    unsharded after a forward (it expects the backward next); after an evaluation forward the
    modules would hold plain tensors that are not the optimizer's parameters, and
    ``get_optimizer_state_dict`` could not map them (``KeyError``)."""
    from torch.distributed.fsdp import FSDPModule  # noqa: PLC0415

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


@dataclass
class _State:
    step: int = 0  # optimizer steps done
    data_position: int = 0  # micro-batches consumed
    history: list[dict[str, float]] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)


class Trainer:
    """Train a unimask pretraining model on a resumable batch source.

    Args:
        model: a model whose ``forward(**batch)`` returns an output with ``.loss`` (and
            ``.mlm_logits``/``.mlm_labels`` for evaluation), e.g. :class:`unimask.models.UnifiedLM`.
            With ``.mlm_loss`` / ``.nsp_loss`` (every unimask pretraining model), each step's
            loss is the mean over all its scored targets (see "Gradient accumulation" below);
            an output with only ``.loss`` is averaged as ``loss / grad_accum``.
        train_data: a :class:`BatchSource` or a callable ``start -> iterator of batches``.
        config: :class:`TrainingConfig`.
        eval_data: held-out batches (an iterable, or a callable returning one), evaluated every
            ``config.eval_every`` steps and at the end.
        device: default CUDA if available, else CPU.

    Gradient accumulation is exact: a step first fetches its ``grad_accum`` micro-batches and
    counts, per loss component, the targets each one scores (MLM/LM/span tokens: ``labels`` or
    ``decoder_labels`` != -100; NSP: ``next_sentence_label`` != -100 of the samples the model
    scores), sums them over the window (and over ranks, one all-reduce), and weights each
    micro-batch's ``mlm_loss`` / ``nsp_loss`` by its count / the total (times the world size,
    since DDP/FSDP average gradients over ranks). The gradient is thus the one of a single
    batch of all the step's examples (as transformers' ``num_items_in_batch``), and the logged
    ``loss`` is that batch's loss. A component with no target in the window contributes 0.
    With ``grad_accum=1`` in one process every weight is 1: ``loss.backward()`` as before.

    Under ``torchrun`` (``torch.distributed`` initialised before construction) the model is
    wrapped in DDP, or with ``config.distributed="fsdp"`` sharded in place by FSDP2
    (:func:`fsdp_shard`: each encoder block, then the root), on gloo (CPU) as on NCCL (CUDA);
    the batch source must then give each rank its own part of the data (see
    :class:`unimask.pretrain.CorpusBatches`). Under FSDP every rank must call
    :meth:`evaluate`, :meth:`save_checkpoint` and :meth:`load_checkpoint` (they are
    collective), and every rank must use the same parameters in each micro-step (unimask's
    models keep every head in the graph, so they do).
    """

    def __init__(self, model: nn.Module, train_data: BatchSource | Callable[[int], Iterator[Batch]],
                 config: TrainingConfig, eval_data: Iterable[Batch] | Callable[[], Iterable[Batch]] | None = None,
                 device: str | torch.device | None = None, log: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        self.dist = _dist()
        self.rank = self.dist.get_rank() if self.dist else 0
        self.world = self.dist.get_world_size() if self.dist else 1
        # FSDP moves each unit to the device as it shards it (a model too big for one GPU is
        # never whole on it); everything else moves the whole model now
        self.model = model if self.sharded else model.to(self.device)
        self.train_data = train_data
        self.eval_data = eval_data
        self.log = log if log is not None else (print if self.rank == 0 else (lambda _s: None))
        precision = config.precision
        if precision == "auto":
            # bf16 where the GPU computes it natively (compute capability >= 8, or ROCm), else fp16
            # with loss scaling; torch.cuda.is_bf16_supported() also says True for the emulated
            # bf16 of older GPUs (V100, T4), which would make fp16 unreachable
            native_bf16 = self.device.type == "cuda" and (
                bool(torch.version.hip) or torch.cuda.get_device_capability(self.device)[0] >= 8)
            precision = ("bf16" if native_bf16 else "fp16") if self.device.type == "cuda" else "fp32"
        if precision == "fp16" and self.device.type != "cuda":  # loss scaling (GradScaler) is set up for CUDA only
            raise ValueError(f"precision 'fp16' needs a CUDA device (on the CPU use 'bf16'), got {self.device}")
        if precision == "bf16" and self.device.type not in ("cuda", "cpu"):
            raise ValueError(f"precision 'bf16' autocasts on CUDA or the CPU, got {self.device}")
        self.precision = precision
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        self.wrapped = self._wrap(self.model)
        self.optimizer = configure_optimizers(self.model, config.lr, config.weight_decay, config.betas, config.eps)
        self.scheduler = linear_schedule(self.optimizer, config.warmup_steps, config.max_steps)
        self.state = _State()

    @property
    def sharded(self) -> bool:
        """True when the parameters are sharded across ranks (FSDP under ``torch.distributed``)."""
        return self.config.distributed == "fsdp" and self.dist is not None

    def _wrap(self, model: nn.Module) -> nn.Module:
        """``model`` as the training loop calls it: itself in one process, sharded by FSDP2
        (:func:`fsdp_shard`) with ``distributed="fsdp"``, else in ``DistributedDataParallel``.

        DDP gets ``device_ids=None`` on CUDA too (allowed for a module on one device: the
        Trainer has moved it there). With ``device_ids`` set, DDP's ``_pre_forward`` copies every
        tensor input to that device (``torch.distributed.utils._to_kwargs``, a blocking copy from
        the CPU); with ``None`` it passes the inputs as they are, so the model's
        ``host_batch_keys`` reach it on the CPU, as in one process (see :meth:`_to_device`)."""
        if self.dist is None:
            return model
        if self.config.distributed == "fsdp":
            return fsdp_shard(model, self.device, self.world)
        from torch.nn.parallel import DistributedDataParallel  # noqa: PLC0415

        return DistributedDataParallel(model, device_ids=None,
                                       find_unused_parameters=self.config.find_unused_parameters)

    # -- data -------------------------------------------------------------------------------
    def _batches(self, start: int) -> Iterator[Batch]:
        src = self.train_data
        it = src.batches(start) if hasattr(src, "batches") else src(start)
        return iter(it)

    def _to_device(self, batch: Batch) -> Batch:
        """The batch's tensors on the device (queued copies, no waiting), except the fields the
        model declares it reads on the host (``host_batch_keys``, e.g. the mask integers of
        :class:`unimask.models.UnifiedLM`): those stay on the CPU, where the model validates
        them without a device synchronisation before it copies them over itself. The same under
        DDP, which leaves the inputs alone (:meth:`_wrap` gives it no ``device_ids``). Not under
        FSDP (``distributed="fsdp"``): FSDP2's root copies every tensor input to its CUDA device
        before the forward, with a blocking copy (a synchronisation each), so there everything is
        moved here, without waiting, and the model reads its integers back in one transfer (and
        does not range-check the embedding ids)."""
        host = frozenset() if self.sharded else _host_batch_keys(self.model)
        return {k: _on(v, self.device) if isinstance(v, torch.Tensor) and k not in host else v
                for k, v in batch.items()}

    def _autocast(self):
        if self.precision == "fp32":
            return torch.autocast(self.device.type, enabled=False)
        # bf16 on the CPU too: CPU autocast runs the matrix products in bf16 (oneDNN; ~3x a
        # pretraining step on a CPU with AVX512-BF16); fp16 is CUDA-only (see __init__)
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)

    def _window_weights(self, counts: list[dict[str, int]]) -> list[dict[str, float | torch.Tensor]]:
        """Each micro-batch's weight per loss component: ``world * n / N``, with ``n`` its
        scored targets and ``N`` the window's total over micro-batches and ranks (0 when
        ``N`` is 0). DDP/FSDP average the gradients over ranks, hence the factor ``world``;
        the accumulated gradient is then the gradient of the mean loss over the whole
        global batch's targets. One all-reduce of the totals per step under torch.distributed.

        In one process the weights are Python floats. Under torch.distributed the totals come
        back on the device, and the weights are made there (0-dim float32 tensors; the same
        correctly rounded float64 quotient, then float32, as a Python float multiplying a
        float32 loss), so the step is queued without waiting for the all-reduce: the counts
        go over with a pinned non-blocking copy and nothing is read back."""
        if self.dist is None:
            totals = [sum(c[k] for c in counts) for k in _COMPONENTS]
            return [{k: (c[k] / n if n > 0 else 0.0) for k, n in zip(_COMPONENTS, totals)} for c in counts]
        # row 0: the window's totals (all-reduced), rows 1..: each micro-batch's counts * world
        table = [[sum(c[k] for c in counts) for k in _COMPONENTS]]
        table += [[self.world * c[k] for k in _COMPONENTS] for c in counts]
        t = _on(torch.tensor(table, dtype=torch.int64), self.device)
        total = t[0].clone()
        self.dist.all_reduce(total)
        total = total.double()
        w = torch.where(total > 0, t[1:].double() / total.clamp_min(1), 0.0).float()
        return [{k: w[i, j] for j, k in enumerate(_COMPONENTS)} for i in range(len(counts))]

    def _logged_scalars(self, losses: list[torch.Tensor],
                        grad_norm: torch.Tensor | None) -> tuple[float, float | None]:
        """A step's logged loss and grad norm (None without clipping) as Python floats, with one
        device-to-host transfer (:func:`_host_floats`), called once the optimizer and scheduler
        steps are queued, so the device is not waited for between micro-batches.

        The loss is the sum of the step's (detached) micro-batch ``losses``, added in float64 in
        micro-batch order; under torch.distributed each rank makes that sum on the device, the
        float32 sum is all-reduced and divided by the world size (the mean over ranks)."""
        if self.dist is not None:
            total = losses[0].double()
            for loss in losses[1:]:
                total = total + loss.double()
            total = total.float().reshape(1)
            self.dist.all_reduce(total)
            losses = [total]
        values = _host_floats(losses + ([] if grad_norm is None else [grad_norm]))
        norm = values.pop() if grad_norm is not None else None
        loss_sum = values[0] / self.world if self.dist is not None else sum(values, 0.0)
        return loss_sum, norm

    # -- evaluation -------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out MLM loss (token-weighted), accuracy and perplexity over ``eval_data``."""
        if self.eval_data is None:
            return {}
        data = self.eval_data() if callable(self.eval_data) else self.eval_data
        was_training = self.model.training
        self.model.eval()
        sums: list[torch.Tensor] = []  # per batch, on the device: read once at the end
        hits: list[torch.Tensor] = []
        count = 0
        # FSDP shards the parameters: evaluate through the FSDP hooks (every rank calls evaluate);
        # DDP: the plain module (no gradient sync needed)
        model = self.wrapped if self.sharded else self.model
        for batch in data:
            with self._autocast():
                out = model(**self._to_device(batch))
            logits, labels = out.mlm_logits, out.mlm_labels
            if logits is None or labels.numel() == 0:
                continue
            sums.append(torch.nn.functional.cross_entropy(logits.float(), labels, reduction="sum"))
            hits.append((logits.argmax(-1) == labels).sum())
            count += labels.numel()
        self.model.train(was_training)
        if self.sharded:
            _reshard(self.model)
        if count == 0:
            return {}
        total = sum(_host_floats(sums), 0.0)  # float64, in batch order
        correct = sum(torch.stack(hits).tolist())
        loss = total / count
        return {"eval_loss": loss, "eval_accuracy": correct / count, "eval_perplexity": math.exp(min(loss, 50.0))}

    # -- the loop ---------------------------------------------------------------------------
    def train(self, until: int | None = None) -> dict[str, Any]:
        """Run until ``config.max_steps`` optimizer steps (or stop early after step ``until``,
        e.g. to checkpoint mid-schedule); returns the final metrics."""
        cfg = self.config
        stop = cfg.max_steps if until is None else min(until, cfg.max_steps)
        model, opt = self.wrapped, self.optimizer
        model.train()
        batches = self._batches(self.state.data_position)
        bar = None
        if cfg.progress and self.rank == 0 and self.state.step < stop:
            from tqdm.auto import tqdm  # noqa: PLC0415

            bar = tqdm(total=stop, initial=self.state.step, desc="pretrain", unit="step", dynamic_ncols=True)
        t0, tokens = time.perf_counter(), 0
        while self.state.step < stop:
            # the step's window of grad_accum micro-batches is fetched first: its scored-target
            # counts (summed over ranks) weight each micro-batch's loss (see _window_weights)
            window = []
            for _ in range(cfg.grad_accum):
                try:
                    window.append(next(batches))
                except StopIteration:
                    raise RuntimeError(f"training data ran out at micro-batch {self.state.data_position}") from None
                self.state.data_position += 1
            counts = [_scored_counts(self.model, b) for b in window]
            weights = self._window_weights(counts)
            losses: list[torch.Tensor] = []  # detached, on the device: read once per step (_logged_scalars)
            for micro, batch in enumerate(window):
                tokens += _count_tokens(batch) * self.world
                batch = self._to_device(batch)
                sync = micro == cfg.grad_accum - 1
                if hasattr(model, "set_requires_gradient_sync"):  # FSDP2: reduce-scatter on the last micro-step only
                    model.set_requires_gradient_sync(sync)
                ctx = model.no_sync() if not sync and hasattr(model, "no_sync") else _nullcontext()
                with ctx:
                    with self._autocast():
                        out = model(**batch)
                    loss = _weighted_loss(out, counts[micro], weights[micro], cfg.grad_accum)
                    (self.scaler.scale(loss) if self.scaler else loss).backward()
                losses.append(loss.detach())
            window.clear()
            if self.scaler:
                self.scaler.unscale_(opt)
            grad_norm = None
            if cfg.grad_clip and cfg.grad_clip > 0:
                # FSDP2 gradients are DTensor shards: clip_grad_norm_ reduces the norm over ranks
                grad_norm = _full(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip))
            if self.scaler:
                self.scaler.step(opt)
                self.scaler.update()
            else:
                opt.step()
            self.scheduler.step()
            opt.zero_grad(set_to_none=True)
            self.state.step += 1
            loss_sum, grad_norm = self._logged_scalars(losses, grad_norm)
            record = {"step": self.state.step, "loss": loss_sum, "lr": self.scheduler.get_last_lr()[0]}
            if grad_norm is not None:
                record["grad_norm"] = grad_norm
            self.state.history.append(record)
            if bar is not None:
                rate = tokens / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(loss=f"{loss_sum:.3f}", tok_s=f"{rate:,.0f}")
                bar.update(1)
            step = self.state.step
            if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.max_steps) and self.eval_data is not None:
                metrics = self.evaluate()
                if metrics:
                    self.state.evals.append({"step": step, **metrics})
                    msg = (f"step {step}: train loss {loss_sum:.4f}  eval loss {metrics['eval_loss']:.4f}  "
                           f"acc {metrics['eval_accuracy']:.3f}  ppl {metrics['eval_perplexity']:.1f}")
                    (bar.write if bar is not None else self.log)(msg)
            if cfg.output_dir and cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.max_steps:
                self.save_checkpoint()
        if bar is not None:
            bar.close()
        if cfg.output_dir and stop == cfg.max_steps:
            self.save_checkpoint()
            if self.rank == 0:
                self.plot_losses(Path(cfg.output_dir) / "loss_curve.png")
        final = {"step": self.state.step, "train_loss": self.state.history[-1]["loss"] if self.state.history else None}
        if self.state.evals:
            final.update({k: v for k, v in self.state.evals[-1].items() if k != "step"})
        return final

    # -- checkpoints ------------------------------------------------------------------------
    def _model_state(self) -> dict[str, torch.Tensor]:
        """The full (unsharded) model state dict on the CPU; under FSDP a collective that
        gathers the shards, and only rank 0 receives the tensors (the others get ``{}``)."""
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict  # noqa: PLC0415

            return get_model_state_dict(self.wrapped, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything needed to continue exactly: model, optimizer, scheduler, RNG (every
        rank's), data position. Under ``torch.distributed`` a collective (every rank calls it);
        under FSDP the model and optimizer states are gathered whole (unsharded, FQN-keyed) on
        rank 0 through ``torch.distributed.checkpoint.state_dict``."""
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict  # noqa: PLC0415

            optim = get_optimizer_state_dict(self.wrapped, self.optimizer,
                                             options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        else:
            optim = self.optimizer.state_dict()
        rng = _rng_state(self.device)
        rng_per_rank = None
        if self.dist is not None:  # each rank has its own RNG stream (dropout): keep them all
            rng_per_rank = [None] * self.world
            self.dist.all_gather_object(rng_per_rank, rng)
        return {
            "format": "unimask-checkpoint-1",
            "model": self._model_state(),
            "optimizer": optim,
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "rng": rng,
            "rng_per_rank": rng_per_rank,
            "step": self.state.step,
            "data_position": self.state.data_position,
            "history": self.state.history,
            "evals": self.state.evals,
            "world_size": self.world,
            "config": asdict(self.config),
        }

    def save_checkpoint(self, directory: str | Path | None = None) -> Path | None:
        """Write ``step-XXXXXXX.pt`` (+ ``.sha256``) and point ``latest`` at it (rank 0 only).

        Then keeps the newest ``config.keep_checkpoints`` checkpoints of this run: of the
        ``step-N.pt`` files with ``N`` <= the current step, ordered by ``N``, older ones are
        deleted. The file just written and the one ``latest`` names are never deleted, and
        checkpoints with a later step (another run's, in the same directory) are left alone."""
        directory = Path(directory or self.config.output_dir or ".")
        state = self.checkpoint_state()  # collective under FSDP: every rank calls it
        if self.rank != 0:
            if self.dist is not None:
                self.dist.barrier()
            return None
        path = save_checkpoint_file(state, directory / f"step-{self.state.step:07d}.pt")
        _atomic_write_bytes(directory / "latest", (path.name + "\n").encode())
        for old in _checkpoints_to_prune(directory, path, self.state.step, max(1, self.config.keep_checkpoints)):
            for p in (old, old.with_name(old.name + ".sha256")):
                p.unlink(missing_ok=True)
        if self.dist is not None:
            self.dist.barrier()
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore from a checkpoint file, or from a directory's ``latest`` checkpoint."""
        path = Path(path)
        if path.is_dir():
            latest = path / "latest"
            if not latest.is_file():
                raise CheckpointError(f"no 'latest' file in checkpoint directory {path}")
            path = path / latest.read_text().strip()
        state = load_checkpoint_file(path)
        if state.get("format") != "unimask-checkpoint-1":
            raise CheckpointError(f"{path} is not a unimask checkpoint (format {state.get('format')!r})")
        if state["world_size"] != self.world:
            raise CheckpointError(
                f"checkpoint {path} was written by {state['world_size']} processes, this run has {self.world}; "
                "the data position would not be exact"
            )
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import (  # noqa: PLC0415
                StateDictOptions,
                set_model_state_dict,
                set_optimizer_state_dict,
            )

            set_model_state_dict(self.wrapped, state["model"], options=StateDictOptions(full_state_dict=True))
            # strict=False: a parameter that never had a gradient (MASS's unused pooler) has no
            # AdamW state in the checkpoint, as in an uninterrupted run
            set_optimizer_state_dict(self.wrapped, self.optimizer, state["optimizer"],
                                     options=StateDictOptions(full_state_dict=True, strict=False))
        else:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        per_rank = state.get("rng_per_rank")
        _set_rng_state(per_rank[self.rank] if per_rank else state["rng"], self.device)
        self.state = _State(state["step"], state["data_position"], list(state["history"]), list(state["evals"]))

    # -- plot -------------------------------------------------------------------------------
    def plot_losses(self, path: str | Path) -> Path:
        """Training loss per step and held-out loss at each evaluation, as a PNG."""
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415

        path = Path(path)
        fig, ax = plt.subplots(figsize=(7, 4))
        if self.state.history:
            ax.plot([h["step"] for h in self.state.history], [h["loss"] for h in self.state.history],
                    lw=0.8, label="train loss")
        if self.state.evals:
            ax.plot([e["step"] for e in self.state.evals], [e["eval_loss"] for e in self.state.evals],
                    "o-", label="held-out MLM loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        (path.parent / "metrics.json").write_text(
            json.dumps({"history": self.state.history, "evals": self.state.evals}, indent=1), encoding="utf-8")
        return path


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
