"""Attention for the unified LM modes: one entry point, a Triton kernel and a PyTorch reference.

:func:`unified_attention` takes ``q, k, v`` of shape ``[B, H, L, D]`` (``k``/``v`` may have fewer
heads, GQA) and the three per-sample integers of :mod:`unimask.masks`. On CUDA with Triton it
runs the fused kernel from ``unimask.kernels`` (FlashAttention-2 style, Dao 2023, with the UNILM
masks of Dong et al. 2019 derived per tile); elsewhere it runs :func:`sdpa_attention` (PyTorch
SDPA under the mask built from each row's key interval, or no mask / SDPA's causal mask where
the batch allows). :func:`reference_attention` is the plain oracle of the tests.
Force a path with ``backend="triton"``/``"sdpa"``/``"reference"`` or the environment variable
``UNIMASK_ATTENTION_BACKEND``; :func:`select_backend` tells which path a call takes.
"""

from __future__ import annotations

import math
import os

import torch

from .masks import (
    BIDIRECTIONAL,
    LEFT_TO_RIGHT,
    _on,
    _row_bounds,
    check_mask_args,
    check_per_document,
    check_per_sample,
    dense_mask,
    to_host,
)

__all__ = [
    "unified_attention",
    "unified_attention_varlen",
    "reference_attention",
    "reference_attention_varlen",
    "sdpa_attention_varlen",
    "check_cu_seqlens",
    "sdpa_attention",
    "select_backend",
    "BACKENDS",
]

BACKENDS = ("auto", "triton", "sdpa", "reference")


def _check_tensors(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: str) -> None:
    """q, k, v are floating-point tensors of ``layout``'s rank, on one device, of one dtype."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != layout.count(",") + 1:
            raise ValueError(f"{name} must have shape {layout}, got {tuple(t.shape)}")
        if not t.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    _check_tensors(q, k, v, "[B, H, L, D]")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    B, H, L, D = q.shape
    if k.shape[0] != B or k.shape[2] != L or k.shape[3] != D:
        raise ValueError(f"k/v shape {tuple(k.shape)} does not match q shape {tuple(q.shape)}")
    if k.shape[1] == 0 or H % k.shape[1] != 0:
        raise ValueError(f"q heads ({H}) must be a multiple of k/v heads ({k.shape[1]})")


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mode: torch.Tensor,
    src_len: torch.Tensor,
    seq_len: torch.Tensor,
    scale: float | None = None,
    dropout_p: float = 0.0,
    training: bool = True,
) -> torch.Tensor:
    """Plain PyTorch attention under :func:`unimask.masks.dense_mask` (O(L^2) memory).

    Computes in the input dtype (use fp64 as the oracle). Rows of padded queries are exactly
    zero and receive zero gradient; there are no NaNs even for rows that see no key.
    """
    _check_qkv(q, k, v)
    B, H, L, D = q.shape
    mask = dense_mask(attn_mode, src_len, seq_len, L, batch=B).to(q.device)[:, None]  # [B, 1, L, L]
    if k.shape[1] != H:
        rep = H // k.shape[1]
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    row_any = mask.any(dim=-1, keepdim=True)
    scores = scores.masked_fill(~mask, float("-inf")).masked_fill(~row_any, 0.0)
    probs = torch.softmax(scores, dim=-1) * row_any
    if dropout_p > 0.0 and training:
        probs = torch.nn.functional.dropout(probs, p=dropout_p)
    return torch.matmul(probs, v)


def _sdpa_mask(
    mode: torch.Tensor, src: torch.Tensor, seq: torch.Tensor, L: int, device: torch.device
) -> tuple[torch.Tensor | None, bool, torch.Tensor | None]:
    """What :func:`sdpa_attention` hands SDPA for the three (unchecked) per-sample integers:
    ``(attn_mask, is_causal, row_ok)``.

    ``attn_mask``: boolean, ``[B, 1, L, L]`` built from each row's key interval
    (:func:`unimask.masks._row_bounds`; padded query rows get every key, so SDPA's softmax has
    no empty row), ``[B, 1, 1, L]`` (key padding only) when every sample is bidirectional, or
    ``None``. ``is_causal``: SDPA's own causal mask instead. ``row_ok``: ``[B, 1, L, 1]``, 0 for
    padded query rows (the output is multiplied by it), ``None`` when no row is padded.

    The shortcuts need the integers' values: they are taken only when all three are CPU
    tensors (reading those costs no device synchronisation) and ``torch.compile`` is not
    tracing (a read would break the graph in every layer). Integers on an accelerator always
    get the general masked path, without any read.
    """
    if mode.device.type == src.device.type == seq.device.type == "cpu" and not torch.compiler.is_compiling():
        padded = not bool((seq == L).all())
        bidirectional = bool((mode == BIDIRECTIONAL).all())
        if not padded and bidirectional:
            return None, False, None
        if not padded and bool((mode == LEFT_TO_RIGHT).all()):
            return None, True, None
        i = torch.arange(L)
        row_ok = _on((i < seq[:, None])[:, None, :, None], device) if padded else None
        if bidirectional:  # every valid row sees [0, seq); padded rows too (seq = 0: every key)
            keys = torch.where(seq > 0, seq, L)
            return _on((i < keys[:, None])[:, None, None, :], device), False, row_ok
        mode, src, seq = (_on(t, device) for t in (mode, src, seq))
    else:
        mode, src, seq = (t.to(device) for t in (mode, src, seq))
        row_ok = (torch.arange(L, device=device) < seq[:, None])[:, None, :, None]
    lo, hi = _row_bounds(mode, src, seq, L, padded_rows="all")
    j = torch.arange(L, device=device)
    return ((j >= lo[..., None]) & (j < hi[..., None]))[:, None], False, row_ok


def _sdpa(q, k, v, attn_mask, is_causal, row_ok, scale, dropout_p) -> torch.Tensor:
    """SDPA on ``[B, H, L, D]`` (k/v heads repeated for GQA) under :func:`_sdpa_mask`'s plan."""
    H = q.shape[1]
    if k.shape[1] != H:
        rep = H // k.shape[1]
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
    out = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale
    )
    if row_ok is None:
        return out
    # in place when no gradient flows (inference): a fresh [B, H, L, D] buffer for the product
    # costs more than the product on the CPU (measured 5 ms vs 0.15 ms at B 32 H 12 L 128 D 32)
    return out * row_ok.to(out.dtype) if out.requires_grad else out.mul_(row_ok.to(out.dtype))


def _mask_ints(attn_mode, src_len, seq_len, L: int, B: int,
               check: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three integers as int64 tensors: validated (:func:`check_mask_args`) when ``check``,
    else only their lengths checked (no read, no sync) and their values taken as they are."""
    if check:
        return check_mask_args(attn_mode, src_len, seq_len, L, batch=B)
    check_per_sample(attn_mode, src_len, seq_len, B)
    return tuple(torch.as_tensor(t).to(torch.int64) for t in (attn_mode, src_len, seq_len))


def sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mode: torch.Tensor,
    src_len: torch.Tensor,
    seq_len: torch.Tensor,
    scale: float | None = None,
    dropout_p: float = 0.0,
    *,
    check: bool = True,
) -> torch.Tensor:
    """PyTorch's fused ``scaled_dot_product_attention`` under the mask of the three integers.

    The fast path where the Triton kernel cannot run (CPU, other devices): one fused op. The
    mask (O(B*L^2) in general) is built from each query row's key interval, and padded query
    rows get every key inside SDPA (so its softmax has no empty row), then are multiplied by 0:
    output and gradients of padded rows are exactly 0, as on the other paths. When the
    integers are CPU tensors (their values cost no device synchronisation) the batch is
    inspected first: no padded row means no multiplication; every sample bidirectional over
    all ``L`` positions means no mask at all (``attn_mask=None``); every sample left_to_right
    over all ``L`` positions means SDPA's ``is_causal=True``; every sample bidirectional with
    padding means a ``[B, 1, 1, L]`` key-padding mask. Integers on an accelerator always take
    the general masked path (no read).

    ``check``: validate the integers (:func:`unimask.masks.check_mask_args`, which reads them
    on the host). ``False`` (what :func:`unified_attention` passes, having validated them or
    been told not to) checks only that each has ``B`` entries; invalid values then give wrong
    results, not errors.
    """
    _check_qkv(q, k, v)
    B, _, L, _ = q.shape
    mode, src, seq = _mask_ints(attn_mode, src_len, seq_len, L, B, check)
    return _sdpa(q, k, v, *_sdpa_mask(mode, src, seq, L, q.device), scale, dropout_p)


def _kernel_module():
    try:
        from .kernels import unified_attention as kmod  # noqa: PLC0415 - optional dependency
    except ImportError:
        return None
    return kmod


def _kernel_unsupported(q: torch.Tensor) -> str | None:
    """Why the Triton kernel cannot run this call (``None`` when it can)."""
    kmod = _kernel_module()
    if kmod is None:
        return "the Triton kernels cannot be imported (is triton installed?)"
    if not q.is_cuda and not kmod.INTERPRET:
        return f"q is on {q.device}; the kernel needs CUDA tensors (or TRITON_INTERPRET=1 set before import)"
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"dtype {q.dtype} is not float16/bfloat16/float32"
    D = q.shape[-1]
    if D < 16 or D > 128 or D & (D - 1):
        return f"head dim {D} is not 16, 32, 64 or 128"
    return None


def select_backend(q: torch.Tensor, backend: str | None = None) -> str:
    """The path :func:`unified_attention` takes: ``"triton"`` or ``"reference"``.

    ``backend`` (or ``UNIMASK_ATTENTION_BACKEND`` when ``None``): ``"auto"`` picks the kernel
    for CUDA tensors it supports and :func:`sdpa_attention` otherwise; ``"triton"`` forces the
    kernel (raising ``RuntimeError`` with the reason when it cannot run); ``"sdpa"`` forces
    :func:`sdpa_attention`; ``"reference"`` forces the plain :func:`reference_attention`.
    """
    backend = backend or os.environ.get("UNIMASK_ATTENTION_BACKEND") or "auto"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend in ("reference", "sdpa"):
        return backend
    if backend == "auto":
        return "triton" if q.is_cuda and _kernel_unsupported(q) is None else "sdpa"
    why = _kernel_unsupported(q)
    if why is not None:
        raise RuntimeError(f"backend='triton' cannot run: {why}")
    return "triton"


def _kernel_backward(deterministic) -> str:
    """The kernel's ``backward=`` for ``deterministic`` (a bool, else ``TypeError``)."""
    if not isinstance(deterministic, bool):
        raise TypeError(f"deterministic must be a bool, got {type(deterministic).__name__} {deterministic!r}")
    return "deterministic" if deterministic else "atomic_dq"


def unified_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mode: torch.Tensor,
    src_len: torch.Tensor,
    seq_len: torch.Tensor,
    scale: float | None = None,
    dropout_p: float = 0.0,
    backend: str | None = None,
    check: bool = True,
    deterministic: bool = True,
) -> torch.Tensor:
    """Masked attention whose mask is derived from ``(attn_mode, src_len, seq_len)`` per sample.

    Args:
        q: ``[B, H, L, D]`` queries.
        k, v: ``[B, H_kv, L, D]`` with ``H % H_kv == 0`` (grouped-query attention).
        attn_mode: int ``[B]``: 0 bidirectional, 1 left_to_right, 2 right_to_left, 3 seq2seq.
        src_len: int ``[B]``: source length (incl. its [CLS]/[SEP]) for seq2seq; ignored otherwise.
        seq_len: int ``[B]``: number of valid tokens; queries and keys beyond it are padding.
        scale: softmax scale, default ``1/sqrt(D)``.
        dropout_p: inverted dropout on the attention probabilities (pass 0 in eval). Every
            path draws from torch's RNG, so ``torch.manual_seed`` reproduces a run; the kernel
            regenerates its mask in the backward (Philox); different paths draw different
            masks for the same seed.
        backend: ``"auto"`` (default; or ``UNIMASK_ATTENTION_BACKEND``), ``"triton"``,
            ``"sdpa"``, ``"reference"``; see :func:`select_backend`.
        check: validate the three integers (:func:`unimask.masks.check_mask_args`). On CUDA
            that costs a host-device synchronisation per call; a model can validate once per
            batch and pass ``check=False`` in every layer (invalid integers then give wrong
            results, never out-of-bounds accesses: loads and stores stay inside ``[0, L)``).
            The lengths of the three arguments are checked either way (a shape read, no sync):
            each must have exactly ``B = q.shape[0]`` entries; a length-1 argument is not
            broadcast over the batch.
        deterministic: the Triton kernel's backward. ``True`` (default): a dQ kernel, then a
            dK/dV kernel, no atomics, bitwise reproducible gradients. ``False``: one kernel for
            dK, dV and dQ, dQ summed with fp32 atomic adds (FlashAttention-2's backward: five
            matrix products per tile pair instead of seven), so dQ may differ in the last bits
            from run to run. The other paths ignore it (their determinism is PyTorch's).

    Raises:
        ValueError/TypeError: bad shapes, dtypes, devices, mask integers (naming the value),
        mask arguments whose length is not ``B``.

    Returns:
        ``[B, H, L, D]``, rows of padded queries exactly zero.
    """
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    backward = _kernel_backward(deterministic)
    _check_qkv(q, k, v)
    if check:
        check_mask_args(attn_mode, src_len, seq_len, q.shape[2], batch=q.shape[0])
    else:  # shapes only (no sync): a short argument would make the kernel read past its end
        check_per_sample(attn_mode, src_len, seq_len, q.shape[0])
    path = select_backend(q, backend)
    if path == "triton":
        return _kernel_module().attention(q, k, v, attn_mode, src_len, seq_len, scale, dropout_p, backward=backward)
    if path == "sdpa":
        return sdpa_attention(q, k, v, attn_mode, src_len, seq_len, scale, dropout_p, check=False)
    return reference_attention(q, k, v, attn_mode, src_len, seq_len, scale, dropout_p)


# --------------------------------------------------------------------------------------------
# packed rows (varlen): documents concatenated along tokens, one mode per document
# --------------------------------------------------------------------------------------------
def check_cu_seqlens(cu_seqlens, total: int, total_name: str = "T", hint: str = "",
                     min_entries: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate packed-document offsets: a 1-D integer tensor of at least ``min_entries``
    values, starting at 0, ending at ``total`` (named ``total_name`` in the error, followed by
    ``hint``), non-decreasing. Returns ``(cu_seqlens, lengths)`` as int64 on the CPU (one host
    read)."""
    cu = torch.as_tensor(cu_seqlens)
    if cu.dtype.is_floating_point or cu.dtype == torch.bool or cu.dim() != 1 or cu.numel() < min_entries:
        raise TypeError(f"cu_seqlens must be a 1-D integer tensor [N + 1], got {cu.dtype} {tuple(cu.shape)}")
    cu = cu.to(torch.int64).cpu()
    if int(cu[0]) != 0 or int(cu[-1]) != total:
        raise ValueError(f"cu_seqlens must start at 0 and end at {total_name} = {total}{hint}, got {int(cu[0])} .. {int(cu[-1])}")
    lens = cu[1:] - cu[:-1]
    if (lens < 0).any():
        d = int((lens < 0).nonzero()[0, 0])
        raise ValueError(f"cu_seqlens must be non-decreasing: cu_seqlens[{d + 1}] < cu_seqlens[{d}]")
    return cu, lens


def _check_varlen(q, k, v, cu_seqlens, attn_mode, src_len, max_seqlen):
    _check_tensors(q, k, v, "[T, H, D]")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    T, H, D = q.shape
    if k.shape[0] != T or k.shape[2] != D:
        raise ValueError(f"k/v shape {tuple(k.shape)} does not match q shape {tuple(q.shape)}")
    if k.shape[1] == 0 or H % k.shape[1] != 0:
        raise ValueError(f"q heads ({H}) must be a multiple of k/v heads ({k.shape[1]})")
    cu, lens = check_cu_seqlens(cu_seqlens, T)
    longest = int(lens.max()) if lens.numel() else 0
    if max_seqlen is None:
        max_seqlen = longest
    elif int(max_seqlen) < longest:
        raise ValueError(f"max_seqlen = {max_seqlen} is shorter than the longest document ({longest})")
    check_per_document(attn_mode, src_len, cu)
    mode, src, _ = check_mask_args(attn_mode, src_len, lens, max(int(max_seqlen), 0))
    return cu, lens, mode.cpu(), src.cpu(), int(max_seqlen)


def reference_attention_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    attn_mode: torch.Tensor,
    src_len: torch.Tensor,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """:func:`reference_attention` applied document by document to packed ``[T, H, D]`` tokens."""
    cu, lens, mode, src, _ = _check_varlen(q, k, v, cu_seqlens, attn_mode, src_len, None)
    outs = []
    for d in range(lens.numel()):
        s, e = int(cu[d]), int(cu[d + 1])
        if e == s:
            continue
        qd, kd, vd = (t[s:e].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        o = reference_attention(qd, kd, vd, mode[d : d + 1], src[d : d + 1], lens[d : d + 1], scale, dropout_p)
        outs.append(o[0].transpose(0, 1))
    return torch.cat(outs) if outs else q.new_zeros(q.shape)


def _length_buckets(lens: list[int]) -> dict[int, list[int]]:
    """Non-empty documents grouped by the power of two at or above their length (>= 16)."""
    buckets: dict[int, list[int]] = {}
    for d, n in enumerate(lens):
        if n > 0:
            buckets.setdefault(max(16, 1 << (n - 1).bit_length()), []).append(d)
    return buckets


@torch.compiler.disable  # host reads: run eagerly (one graph break, as the read always made)
def _varlen_plan(cu, mode, src, device: torch.device) -> tuple:
    """How :func:`_batched_varlen` runs packed documents: ``(buckets, where)``.

    ``buckets``: per power-of-two length bucket (:func:`_length_buckets`), ``(idx, keep,
    mask)``: ``idx`` ``[n, L_b]`` the token gathered at each padded position (padding points at
    the document's first token), ``keep`` the flat positions ``[0, n * L_b)`` of the valid ones,
    ``mask`` the bucket's :func:`_sdpa_mask` (padded rows are dropped, so never multiplied by 0).
    ``where``: the valid tokens' indices, in the order of the buckets' rows. Reads ``cu``,
    ``mode``, ``src`` on the host (one transfer). Built on every call: about 0.75 ms for 64
    documents against 39 ms for the call (one CPU thread), so it is not cached (a cache across
    calls would be module state).
    """
    cu_h, mode_h, src_h = (t.to(torch.int64) for t in to_host(
        *(x if isinstance(x, torch.Tensor) else torch.as_tensor(x) for x in (cu, mode, src))))
    cu_l = cu_h.tolist()
    lens = [b - a for a, b in zip(cu_l, cu_l[1:])]
    buckets, where = [], []
    for _bucket, docs in sorted(_length_buckets(lens).items()):
        Lb = max(lens[d] for d in docs)  # pad to the bucket's longest document
        start = torch.tensor([cu_l[d] for d in docs], dtype=torch.int64)
        n = torch.tensor([lens[d] for d in docs], dtype=torch.int64)
        pos = torch.arange(Lb, dtype=torch.int64)
        valid = pos[None, :] < n[:, None]
        idx = torch.where(valid, start[:, None] + pos[None, :], start[:, None])
        sel = torch.tensor(docs, dtype=torch.int64)
        attn_mask, is_causal, _ = _sdpa_mask(mode_h[sel], src_h[sel], n, Lb, device)
        buckets.append((_on(idx, device), _on(valid.reshape(-1).nonzero()[:, 0], device), (attn_mask, is_causal, None)))
        where.append(idx[valid])
    return buckets, (_on(torch.cat(where), device) if where else None)


def _batched_varlen(q, k, v, cu, mode, src, scale, dropout_p) -> torch.Tensor:
    """SDPA on packed documents, a few calls instead of one per document: documents of similar
    length (one power-of-two bucket) are gathered into a padded ``[n, H, L_b, D]`` batch
    (:func:`_varlen_plan`: padding positions point at the document's first token, the mask hides
    them and their output rows are dropped), and the valid rows are put back in place.
    Differentiable; a token's gradient flows only from its own document. The integers are not
    validated here."""
    buckets, where = _varlen_plan(cu, mode, src, q.device)
    if not buckets:
        return q.new_zeros(q.shape)
    rows = []
    for idx, keep, mask in buckets:
        n, Lb = idx.shape  # index_select on the flat indices: ~4x faster than t[idx] on the CPU
        qb, kb, vb = (t.index_select(0, idx.reshape(-1)).view(n, Lb, *t.shape[1:]).transpose(1, 2) for t in (q, k, v))
        o = _sdpa(qb, kb, vb, *mask, scale, dropout_p).transpose(1, 2)  # [n, Lb, H, D]
        rows.append(o.reshape(-1, *o.shape[2:]).index_select(0, keep))
    return q.new_zeros(q.shape).index_copy(0, where, torch.cat(rows))


def sdpa_attention_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    attn_mode: torch.Tensor,
    src_len: torch.Tensor,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """:func:`sdpa_attention` on packed ``[T, H, D]`` tokens, documents batched by length.

    The packed path where the Triton kernel cannot run (CPU): documents whose lengths share a
    power-of-two bucket run as one padded SDPA call (a handful of calls per layer instead of one
    per document, as :func:`reference_attention_varlen` makes); each document sees only itself,
    with its own mode. Reads ``cu_seqlens`` on the host."""
    cu, _, mode, src, _ = _check_varlen(q, k, v, cu_seqlens, attn_mode, src_len, None)
    return _batched_varlen(q, k, v, cu, mode, src, scale, dropout_p)


def unified_attention_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    attn_mode: torch.Tensor,
    src_len: torch.Tensor,
    max_seqlen: int | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    backend: str | None = None,
    check: bool = True,
    deterministic: bool = True,
) -> torch.Tensor:
    """Packed rows: several documents per row, each with its own mode, no padding.

    Args:
        q: ``[T, H, D]``, the documents' tokens concatenated; k, v: ``[T, H_kv, D]``.
        cu_seqlens: int ``[N + 1]``, document ``d`` is tokens ``[cu_seqlens[d], cu_seqlens[d+1])``
            (FlashAttention's varlen convention; starts at 0, ends at ``T``).
        attn_mode, src_len: int ``[N]``, per document, as in :mod:`unimask.masks` (exactly
            ``N = len(cu_seqlens) - 1`` entries, checked also with ``check=False``).
        max_seqlen: longest document (computed when ``None``).
        scale, dropout_p, backend, deterministic: as in :func:`unified_attention` (``"sdpa"``, the default
            off CUDA: :func:`sdpa_attention_varlen`; ``"reference"``: document by document).
        check: validate ``cu_seqlens`` and the per-document integers (this reads them on the
            host: a CUDA sync). A model validates them once per forward and passes
            ``check=False`` in every layer, with ``cu_seqlens``, ``attn_mode``, ``src_len`` on
            ``q``'s device and ``max_seqlen`` given (invalid values then give wrong results).

    Returns:
        ``[T, H, D]``; token ``t`` of document ``d`` attends, under ``attn_mode[d]``, only to
        tokens of document ``d`` (positions relative to the document's start).
    """
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    backward = _kernel_backward(deterministic)
    if check:
        cu, _, mode, src, max_seqlen = _check_varlen(q, k, v, cu_seqlens, attn_mode, src_len, max_seqlen)
    elif max_seqlen is None:
        raise ValueError("unified_attention_varlen(check=False) needs max_seqlen")
    else:  # shapes only (no sync): one entry per document, or the kernel reads past the end
        check_per_document(attn_mode, src_len, cu_seqlens)
        cu, mode, src, max_seqlen = torch.as_tensor(cu_seqlens), attn_mode, src_len, int(max_seqlen)
    path = select_backend(q, backend)
    if path == "triton":
        return _kernel_module().attention_varlen(q, k, v, cu, mode, src, max_seqlen, scale, dropout_p, backward=backward)
    if path == "sdpa":
        return _batched_varlen(q, k, v, cu, mode, src, scale, dropout_p)
    return reference_attention_varlen(q, k, v, cu, mode, src, scale, dropout_p)
