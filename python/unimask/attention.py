"""Attention for the unified LM modes: one entry point, a Triton kernel and a PyTorch reference.

:func:`unified_attention` takes ``q, k, v`` of shape ``[B, H, L, D]`` (``k``/``v`` may have fewer
heads, GQA) and the three per-sample integers of :mod:`unimask.masks`. On CUDA with Triton it
runs the fused kernel from ``unimask.kernels``; elsewhere it runs :func:`reference_attention`.
Force a path with ``backend="triton"``/``"reference"`` or the environment variable
``UNIMASK_ATTENTION_BACKEND``.
"""

from __future__ import annotations

import math
import os

import torch

from .masks import check_mask_args, dense_mask

__all__ = ["unified_attention", "reference_attention", "BACKENDS"]

BACKENDS = ("auto", "triton", "reference")


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape [B, H, L, D], got {tuple(t.shape)}")
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
    mask = dense_mask(attn_mode, src_len, seq_len, L).to(q.device)[:, None]  # [B, 1, L, L]
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


def _triton_usable(q: torch.Tensor) -> bool:
    if not q.is_cuda:
        return os.environ.get("TRITON_INTERPRET") == "1" and _kernel_module() is not None
    return _kernel_module() is not None


def _kernel_module():
    try:
        from .kernels import unified_attention as kmod  # noqa: PLC0415 - optional dependency
    except ImportError:
        return None
    return kmod


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
) -> torch.Tensor:
    """Masked attention whose mask is derived from ``(attn_mode, src_len, seq_len)`` per sample.

    Args:
        q: ``[B, H, L, D]`` queries.
        k, v: ``[B, H_kv, L, D]`` with ``H % H_kv == 0`` (grouped-query attention).
        attn_mode: int ``[B]``: 0 bidirectional, 1 left_to_right, 2 right_to_left, 3 seq2seq.
        src_len: int ``[B]``: source length (incl. its [CLS]/[SEP]) for seq2seq; ignored otherwise.
        seq_len: int ``[B]``: number of valid tokens; queries and keys beyond it are padding.
        scale: softmax scale, default ``1/sqrt(D)``.
        dropout_p: attention-probability dropout (reference path only for now).
        backend: ``"auto"`` (default; or ``UNIMASK_ATTENTION_BACKEND``), ``"triton"``, ``"reference"``.

    Returns:
        ``[B, H, L, D]``, rows of padded queries exactly zero.
    """
    backend = backend or os.environ.get("UNIMASK_ATTENTION_BACKEND", "auto")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    _check_qkv(q, k, v)
    check_mask_args(attn_mode, src_len, seq_len, q.shape[2])
    use_kernel = backend == "triton" or (backend == "auto" and q.is_cuda and _triton_usable(q))
    if use_kernel:
        kmod = _kernel_module()
        if kmod is None:
            raise RuntimeError("backend='triton' requested but the Triton kernels cannot be imported")
        if dropout_p > 0.0:
            raise NotImplementedError("dropout_p > 0 is not supported by the Triton kernel yet")
        return kmod.attention(q, k, v, attn_mode, src_len, seq_len, scale)
    return reference_attention(q, k, v, attn_mode, src_len, seq_len, scale, dropout_p)
