"""Fused masked attention for the four unified LM modes (Triton; forward and backward).

The structure follows Triton's fused-attention tutorial (FlashAttention-2, Dao 2023,
arXiv 2307.08691), as named stages:

* :func:`_attn_fwd` -- forward with online softmax; saves the base-2 log-sum-exp per row.
* :func:`_attn_bwd_dq` -- one program per query tile: ``delta = rowsum(dO * O)`` of its rows
  (stored for the next kernel), then dQ. Computing ``delta`` here instead of in a separate
  preprocess kernel (the tutorial's) saves a launch: the program loads its ``dO`` rows anyway.
* :func:`_attn_bwd_dkdv` -- one program per key/value tile (and kv head): dK, dV, reading the
  ``delta`` that :func:`_attn_bwd_dq` stored (launched after it on the same stream).
* ``backward="atomic_dq"``: :func:`_attn_bwd_delta`, then :func:`_attn_bwd_fused` (the dK/dV
  kernel's jit function, :func:`_attn_bwd_kv`, with ``ATOMIC_DQ``): dQ by fp32 atomic adds.
* :class:`_UnifiedAttention` -- the ``torch.autograd.Function`` that wires them for eager
  calls; under ``torch.compile`` the same launches run as the custom ops
  ``unimask::attention_fwd`` / ``unimask::attention_bwd`` (:func:`_apply` picks);
  :func:`attention` (padded ``[B, H, L, D]``) and :func:`attention_varlen` (packed ``[T, H, D]``).

The mask is never materialised. Each sample's mask is the predicate of :mod:`unimask.masks`
(UNILM, Dong et al. 2019, arXiv 1905.03197, section 2.3) on ``(attn_mode, src_len, seq_len)``:
for a query ``i < seq_len`` and key ``j < seq_len``: bidirectional: always; left_to_right:
``j <= i``; right_to_left: ``j >= i``; seq2seq: ``j < src_len`` if ``i < src_len`` else ``j <= i``.
Per (query tile, key tile) pair the kernels classify from those integers alone:

* fully masked -> never visited: the loop bounds come from :func:`_kv_range` / :func:`_q_range`
  (left_to_right stops at the diagonal, right_to_left starts at it, seq2seq source rows stop at
  ``src_len``, everything stops at ``seq_len``);
* fully visible -> no mask arithmetic: these tiles are contiguous inside the loop range
  (:func:`_full_kv_tiles` / :func:`_full_q_tiles`: exactly the tiles where :func:`_tile_is_full`
  holds, which the tests check against ``dense_mask``), so with the config flag ``SPLIT`` each
  loop runs as three sub-loops, partial / full / partial, the full one without bounds checks
  either; without it, one loop that applies the predicate only where a tile is partial;
* partial -> the element-wise predicate :func:`_tile_mask`.

Programs run on a 1-D grid; :func:`_program` maps an id to its (sample, head) and tile
position, in the order the ``schedule`` argument picks (:data:`SCHEDULES`; bitwise the same
results under each).

Padded queries (``i >= seq_len``) get an output row of exact zeros and LSE ``+inf``, so in the
backward their probabilities are ``exp2(x - inf) = 0`` and nothing (no NaN, no inf) leaks into
dQ, dK, dV. Every valid query sees at least itself, so every valid row has a positive softmax
denominator.

Loads are masked with ``seq_len`` (which also covers the ``L`` boundary), so the content of
padded positions never matters. Grouped-query attention: query head ``h`` reads kv head
``h // (H // H_kv)``; the dK/dV program of a kv head loops over its group of query heads, so no
atomics are needed and results are deterministic. ``backward="atomic_dq"`` trades that for two
fewer matrix products per tile pair: the dK/dV program also adds dQ with atomics
(:func:`_attn_bwd_kv` with ``ATOMIC_DQ``; see :func:`attention`).

Under ``TRITON_INTERPRET=1`` (read by Triton when a kernel is *decorated*, i.e. when this
module is imported) the kernels are plain functions with one fixed small tile config; on a GPU
they are autotuned over Hopper-friendly configs keyed on the head dim and a power-of-two bucket
of ``L`` (set ``UNIMASK_ATTN_AUTOTUNE=0`` to use the first config only).

Packed rows (:func:`attention_varlen`: documents concatenated along tokens, each with its own
mode, given as ``cu_seqlens``) run through the same kernels with ``VARLEN=True``: the program of
document ``d`` offsets its pointers by ``cu_seqlens[d]`` rows and masks its stores at the
document's end. See ``docs/attention.md``.

Attention dropout: a Philox keep-mask on the global element index, regenerated in the backward,
seeded from a one-element device tensor the kernels read (CUDA-graph safe: :func:`_prepare`).
"""

from __future__ import annotations

import math
import operator
import os
import warnings

import torch
import triton
import triton.language as tl

from ..masks import check_per_document, check_per_sample

__all__ = ["attention", "attention_varlen", "INTERPRET", "SCHEDULES", "BACKWARDS", "IEEE_CONFIG", "fwd_configs", "bwd_dkdv_configs",
           "bwd_fused_configs", "bwd_dq_configs"]

#: Whether Triton decorated these kernels for its CPU interpreter (``TRITON_INTERPRET=1`` at import).
INTERPRET: bool = os.environ.get("TRITON_INTERPRET", "0") == "1"

# --------------------------------------------------------------------------------------------
# autotune configs
# --------------------------------------------------------------------------------------------
def _cfg(bm: int, bn: int, warps: int, stages: int, split: bool = True) -> triton.Config:
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "SPLIT": split}, num_warps=warps, num_stages=stages)


def _configs(full: list[tuple]) -> list[triton.Config]:
    if INTERPRET:
        # The interpreter runs tiles as numpy ops: one small fixed config, no autotuning.
        return [_cfg(16, 16, 1, 1)]
    return [_cfg(*c) for c in full]


# (BLOCK_M, BLOCK_N, num_warps, num_stages[, SPLIT]) -- first entry is the no-autotune default.
# SPLIT (default True): the key (query) loop of a program runs as three loops, partial / fully
# visible / partial, the middle one without mask arithmetic or bounds checks; False: one loop
# that applies the predicate only on partial tiles (a branch per tile). At short L a program
# makes 3-8 trips in all, so three separately pipelined loops may each barely fill their
# pipeline, and three copies of the loop body hold more registers: compiled for sm_90 the
# single loop spills far less (dK/dV 32x128 / 4 warps at D 64: 88 bytes per thread against 600;
# 32x64 at D 128: 80 against 864; `python bench/kernel_resources.py`). The False variants of
# the configs that won at L <= 1024, and of spill-free 8-warp tiles, let the autotuner choose
# (added after the H200 runs; not yet timed on a GPU).
# Few configs on purpose: every one costs a compile per (head dim, dtype, dropout) and a timing
# per L bucket. The last dK/dV and dQ entries won the H200 run of 2026-11-28 at L <= 2048
# (bench/results/h200_2026-11-28_run2.json: dK/dV D128 L512 0.302 vs 0.367 ms, dQ D64 L512
# 0.095 vs 0.110 ms). Of the other candidates tried there only dQ 128x64 / 8 warps / 4 stages
# won (L >= 2048, D 128), by 0-3% over the listed 3-stage version: not listed.
fwd_configs = _configs([(128, 64, 4, 3), (128, 128, 8, 3), (128, 64, 8, 4), (64, 64, 4, 4),
                        (64, 64, 4, 4, False), (128, 64, 4, 3, False), (128, 64, 8, 4, False)])
# dK/dV: BLOCK_N is the kv tile the program owns, BLOCK_M the query tiles it streams over.
bwd_dkdv_configs = _configs([(64, 128, 8, 3), (32, 128, 4, 3), (64, 64, 4, 3), (64, 128, 4, 2), (32, 64, 4, 4),
                             (32, 128, 4, 3, False), (32, 64, 4, 4, False), (64, 128, 8, 3, False), (32, 128, 8, 2, False)])
# dK/dV + atomic dQ (the ``atomic_dq`` backward): the dK/dV tiles plus a [BLOCK_M, HEAD_DIM] fp32
# dQ tile per trip, so small query tiles. Compiled for sm_90 (bench/kernel_resources.py fused)
# the single-loop 8-warp configs hold no spill at D 64 and 128 (32x128, 2 stages: 204 / 247
# registers with Triton 3.9, 233 / 255 with 3.6), the three-loop 4-warp ones spill 280-1900
# bytes per thread. Not yet timed on a GPU.
bwd_fused_configs = _configs([(32, 128, 8, 2, False), (32, 128, 8, 3, False), (32, 64, 8, 2, False), (64, 128, 8, 2, False),
                              (32, 128, 4, 3), (32, 64, 4, 4, False), (64, 64, 4, 3, False)])
# dQ: BLOCK_M is the query tile the program owns, BLOCK_N the kv tiles it streams over.
bwd_dq_configs = _configs([(128, 64, 8, 3), (128, 32, 4, 3), (64, 64, 4, 3), (64, 32, 4, 4),
                           (64, 32, 4, 4, False), (64, 64, 4, 3, False)])


#: fp32 inputs with exact (IEEE) products (PyTorch's TF32 switch off) run the dots on FMA units,
#: not tensor cores, and compile 5-10x slower than bf16 at the tile sizes above (sm_90, D 64,
#: the first listed config: fwd 12.4 s, dK/dV 14.4 s, dQ 8.7 s; bf16 1.8 / 1.8 / 1.3 s; on the
#: H200 machine's CPU 2-3x longer). That path is for exactness, not speed: one smaller config for
#: all three kernels (2.6 / 5.2 / 3.9 s), no tuning. Its speed is not measured. fp32 inputs with
#: TF32 products get it too: their tiles take twice the shared memory of 16-bit ones, and at
#: head dim 128 every listed config needs more than an H100's 227 KiB (sm_90, Triton 3.6: forward
#: 262-459 KB); this one needs 98-132 KB (tests/test_attention_compile.py).
IEEE_CONFIG = (64, 32, 4, 2)


def _prune(configs, named_args, **kwargs):
    """Drop configs whose tiles are far larger than the sequence (they only add masked work);
    ``UNIMASK_ATTN_AUTOTUNE=0`` (read when a new shape bucket is tuned) keeps the first only;
    fp32 inputs (exact or TF32 products) get :data:`IEEE_CONFIG` alone."""
    if kwargs.get("DOT_PREC") == "ieee" or kwargs.get("IS_FP32"):
        return [_cfg(*IEEE_CONFIG)]
    if os.environ.get("UNIMASK_ATTN_AUTOTUNE", "1") == "0":
        return configs[:1]
    L = named_args["L"]
    keep = [c for c in configs if c.kwargs["BLOCK_M"] <= max(16, triton.next_power_of_2(L)) and c.kwargs["BLOCK_N"] <= max(16, triton.next_power_of_2(L))]
    return keep or configs[:1]


#: Tile sizes passed explicitly when the kernels are not autotuned (interpreter).
_FIXED = {"BLOCK_M": 16, "BLOCK_N": 16, "SPLIT": True} if INTERPRET else {}


def _autotune(configs, reset_to_zero: list[str] | None = None):
    """``reset_to_zero``: outputs the kernel accumulates into (atomics), zeroed before every
    timed trial and before the real run, so tuning does not add trials' results into them."""
    if INTERPRET:
        return lambda fn: fn
    return triton.autotune(
        configs=configs, key=["HEAD_DIM", "L_BUCKET", "IS_FP32", "DOT_PREC", "DROPOUT", "VARLEN"],
        prune_configs_by={"early_config_prune": _prune}, reset_to_zero=reset_to_zero,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# the mask, tile by tile (mirror of unimask.masks.allowed)
# --------------------------------------------------------------------------------------------
@triton.jit
def _tile_mask(mode, src, seq, i, j):
    """Element-wise predicate: query indices ``i`` and key indices ``j``, broadcast to a tile."""
    rule = (mode == 0) | ((mode == 1) & (j <= i)) | ((mode == 2) & (j >= i))
    rule = rule | ((mode == 3) & (((i < src) & (j < src)) | ((i >= src) & (j <= i))))
    return rule & (i < seq) & (j < seq)


@triton.jit
def _tile_is_full(mode, src, seq, m0, m1, n0, n1):
    """True when every key of [n0, n1) is visible to every query of [m0, m1) (query padding aside:
    padded rows are discarded in the forward and have zero probability in the backward)."""
    full_hi = tl.where(mode == 1, tl.minimum(seq, m0 + 1), seq)
    full_hi = tl.where(mode == 3, tl.minimum(seq, tl.maximum(src, m0 + 1)), full_hi)
    full_lo = tl.where(mode == 2, m1 - 1, 0)
    return (n1 <= full_hi) & (n0 >= full_lo)


@triton.jit
def _kv_range(mode, src, seq, m0, m1, BLOCK_N: tl.constexpr):
    """Key range [lo, hi) that queries [m0, m1) can see; lo is a multiple of BLOCK_N, lo <= hi."""
    causal_hi = tl.minimum(m1, seq)
    hi = tl.where(mode == 1, causal_hi, seq)
    hi = tl.where(mode == 3, tl.where(m1 <= src, src, causal_hi), hi)
    lo = tl.where(mode == 2, (m0 // BLOCK_N) * BLOCK_N, 0)
    hi = tl.where(m0 < seq, hi, lo)  # query tile entirely padding: nothing to do
    return lo, hi


@triton.jit
def _q_range(mode, src, seq, n0, n1, BLOCK_M: tl.constexpr):
    """Query range [lo, hi) whose rows can see some key of [n0, n1); lo is a multiple of BLOCK_M, lo <= hi."""
    lo = tl.where((mode == 1) | ((mode == 3) & (n0 >= src)), (n0 // BLOCK_M) * BLOCK_M, 0)
    hi = tl.where(mode == 2, tl.minimum(n1, seq), seq)
    hi = tl.where(n0 < seq, hi, lo)  # key tile entirely padding: its gradients are zero
    return lo, hi


@triton.jit
def _doc_start(STARTS, b, VARLEN: tl.constexpr):
    """First token of sample ``b`` in the packed (varlen) layout; 0 in the padded layout."""
    if VARLEN:
        return tl.load(STARTS + b).to(tl.int64)
    else:
        return b * 0


@triton.jit
def _program(n_rows, L, BLOCK: tl.constexpr, SCHEDULE: tl.constexpr):
    """(row, tile position) of this program on the 1-D grid of ``n_rows * cdiv(L, BLOCK)``.

    A row is one (sample, head) (the dK/dV kernel: one (sample, kv head)). Schedules (the GPU
    dispatches programs in grid order):

    * 0 ``plain``: row-major, tiles in order (the layout of Triton's tutorial);
    * 1 ``heavy_first``: row-major, each row's tiles heaviest first (:func:`_q_tile`,
      :func:`_kv_tile`): a row's programs still run together (its K/V stay in L2) and the last
      programs dispatched are short ones, so the final wave has less tail;
    * 2 ``tile_major``: position-major (every row's heaviest tile, then every row's second...):
      the whole grid is heaviest first, but the programs running together read different rows.
    """
    pid = tl.program_id(0)
    if SCHEDULE == 2:
        return pid % n_rows, pid // n_rows
    else:
        n_tiles = tl.cdiv(L, BLOCK)
        return pid // n_tiles, pid % n_tiles


@triton.jit
def _q_tile(t, mode, seq, BLOCK_M: tl.constexpr, SCHEDULE: tl.constexpr):
    """Query tile of the program at tile position ``t``: in the heavy-first schedules a sample's
    valid tiles run most keys first (left_to_right and seq2seq rows see more keys further down,
    so their valid tiles run in reverse); tiles past ``seq_len`` (no work) keep their place."""
    if SCHEDULE != 0:
        n_valid = (seq + BLOCK_M - 1) // BLOCK_M
        return tl.where((t < n_valid) & ((mode == 1) | (mode == 3)), n_valid - 1 - t, t)
    else:
        return t


@triton.jit
def _kv_tile(t, mode, seq, BLOCK_N: tl.constexpr, SCHEDULE: tl.constexpr):
    """Key tile of the program at tile position ``t`` (see :func:`_q_tile`): right_to_left keys
    are seen by more queries further down, so their valid tiles run in reverse."""
    if SCHEDULE != 0:
        n_valid = (seq + BLOCK_N - 1) // BLOCK_N
        return tl.where((t < n_valid) & (mode == 2), n_valid - 1 - t, t)
    else:
        return t


@triton.jit
def _load_seed(SEED, DROPOUT: tl.constexpr):
    """The dropout seed, read from device memory (a one-element int64 tensor) rather than
    passed by value, so a captured CUDA graph draws a new one on each replay; not read without
    dropout."""
    if DROPOUT:
        seed = tl.load(SEED)
    else:
        seed = 0
    return seed


@triton.jit
def _dropout_keep(seed, dropout_p, row_base, L, i, j):
    """Keep-mask of attention dropout for rows ``i``, keys ``j`` (broadcast) of one (b, h).

    Philox on the global element index ``(b*H + h)*L*L + i*L + j`` (int64), so the forward and
    both backward kernels draw the same bits whatever their tile sizes."""
    offs = (row_base + i.to(tl.int64)) * L + j
    return tl.rand(seed, offs) >= dropout_p


@triton.jit
def _full_kv_tiles(mode, src, seq, m0, m1, lo, hi, BLOCK_N: tl.constexpr):
    """Sub-range [f0, f1) of the key loop [lo, hi) whose tiles are fully visible to queries
    [m0, m1) (exactly the tiles where :func:`_tile_is_full` holds; they are contiguous)."""
    full_hi = tl.where(mode == 1, tl.minimum(seq, m0 + 1), seq)
    full_hi = tl.where(mode == 3, tl.minimum(seq, tl.maximum(src, m0 + 1)), full_hi)
    full_lo = tl.where(mode == 2, m1 - 1, 0)
    f0 = tl.minimum(tl.maximum(lo, (full_lo + BLOCK_N - 1) // BLOCK_N * BLOCK_N), hi)
    f1 = tl.maximum(f0, tl.minimum(hi, full_hi // BLOCK_N * BLOCK_N))
    return f0, f1


@triton.jit
def _full_q_tiles(mode, src, seq, n0, n1, lo, hi, BLOCK_M: tl.constexpr):
    """Sub-range [f0, f1) of the query loop [lo, hi) whose tiles see every key of [n0, n1)."""
    a = tl.where((mode == 1) | ((mode == 3) & (n1 > src)), n1 - 1, 0)  # need m0 >= a
    b = tl.where(mode == 2, n0 + 1, hi + BLOCK_M)  # need m0 + BLOCK_M <= b
    f0 = tl.minimum(tl.maximum(lo, (a + BLOCK_M - 1) // BLOCK_M * BLOCK_M), hi)
    f1 = tl.maximum(f0, tl.minimum(hi, b // BLOCK_M * BLOCK_M))
    f0 = tl.where(n1 <= seq, f0, hi)  # keys past seq_len: every tile is partial
    f1 = tl.where(n1 <= seq, f1, hi)
    return f0, f1


# --------------------------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------------------------
@triton.jit
def _fwd_tiles(
    acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
    mode, src, seq, offs_m, offs_d, start, end, f0, f1, qk_scale, dropout_p, seed, row0, L,
    MASKED: tl.constexpr, DROPOUT: tl.constexpr, DOT_PREC: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Online-softmax update over key tiles [start, end). ``MASKED``: 0 = every tile fully
    visible, 1 = every tile partial (the predicate applied), 2 = decided per tile: partial
    outside the fully visible run [f0, f1) (see :func:`_attn_fwd`'s ``SPLIT``)."""
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        k_ptrs = k_base + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd
        v_ptrs = v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd
        if MASKED != 0:
            k = tl.load(k_ptrs, mask=offs_n[:, None] < seq, other=0.0)
            v = tl.load(v_ptrs, mask=offs_n[:, None] < seq, other=0.0)
        else:  # a full tile lies inside seq_len: no bounds checks either
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale
        if MASKED == 1:
            qk = tl.where(_tile_mask(mode, src, seq, offs_m[:, None], offs_n[None, :]), qk, float("-inf"))
        if MASKED == 2:
            if (n0 < f0) | (n0 >= f1):
                qk = tl.where(_tile_mask(mode, src, seq, offs_m[:, None], offs_n[None, :]), qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.math.exp2(qk - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)  # the denominator counts dropped probabilities too
        acc = acc * alpha[:, None]
        if DROPOUT:
            p = tl.where(_dropout_keep(seed, dropout_p, row0, L, offs_m[:, None], offs_n[None, :]), p, 0.0)
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PREC)
        m_i = m_new
    return acc, l_i, m_i


@_autotune(fwd_configs)
@triton.jit
def _attn_fwd(
    Q, K, V, O, LSE, MODE, SRC, SEQ, STARTS,
    sm_scale, dropout_p, SEED,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    B, H, GROUP, L, L_BUCKET,
    HEAD_DIM: tl.constexpr, IS_FP32: tl.constexpr, DOT_PREC: tl.constexpr, DROPOUT: tl.constexpr,
    VARLEN: tl.constexpr, SCHEDULE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    SPLIT: tl.constexpr,
):  # fmt: skip
    """One program per (query tile, b, head): O and the base-2 LSE of its rows."""
    pid_bh, t = _program(B * H, L, BLOCK_M, SCHEDULE)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    hk = h // GROUP
    mode = tl.load(MODE + b)
    src = tl.load(SRC + b)
    seq = tl.minimum(tl.load(SEQ + b), L)  # never read past L, even for unchecked input
    seed = _load_seed(SEED, DROPOUT)
    pid_m = _q_tile(t, mode, seq, BLOCK_M, SCHEDULE)

    m0 = pid_m * BLOCK_M
    m1 = m0 + BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    t0 = _doc_start(STARTS, b, VARLEN)
    q_ptrs = Q + b * stride_qb + t0 * stride_qm + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=offs_m[:, None] < seq, other=0.0)
    k_base = K + b * stride_kb + t0 * stride_kn + hk * stride_kh
    v_base = V + b * stride_vb + t0 * stride_vn + hk * stride_vh

    qk_scale = sm_scale * 1.4426950408889634  # exp(x) = exp2(x * log2(e))
    # finite init: a row whose first visited tile is fully masked gets p = exp2(-inf) = 0, not NaN
    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - 1.0e30
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    row0 = pid_bh.to(tl.int64) * L

    # key tiles: [lo, f0) partial, [f0, f1) fully visible, [f1, hi) partial; the rest is skipped
    lo, hi = _kv_range(mode, src, seq, m0, m1, BLOCK_N)
    f0, f1 = _full_kv_tiles(mode, src, seq, m0, m1, lo, hi, BLOCK_N)
    if SPLIT:  # three loops, the full tiles' without any mask arithmetic or bounds checks
        acc, l_i, m_i = _fwd_tiles(
            acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
            mode, src, seq, offs_m, offs_d, lo, f0, f0, f1, qk_scale, dropout_p, seed, row0, L,
            1, DROPOUT, DOT_PREC, BLOCK_N,
        )  # fmt: skip
        acc, l_i, m_i = _fwd_tiles(
            acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
            mode, src, seq, offs_m, offs_d, f0, f1, f0, f1, qk_scale, dropout_p, seed, row0, L,
            0, DROPOUT, DOT_PREC, BLOCK_N,
        )  # fmt: skip
        acc, l_i, m_i = _fwd_tiles(
            acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
            mode, src, seq, offs_m, offs_d, f1, hi, f0, f1, qk_scale, dropout_p, seed, row0, L,
            1, DROPOUT, DOT_PREC, BLOCK_N,
        )  # fmt: skip
    else:  # one software-pipelined loop; the predicate applied where a tile is partial
        acc, l_i, m_i = _fwd_tiles(
            acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
            mode, src, seq, offs_m, offs_d, lo, hi, f0, f1, qk_scale, dropout_p, seed, row0, L,
            2, DROPOUT, DOT_PREC, BLOCK_N,
        )  # fmt: skip

    row_ok = offs_m < seq
    l_safe = tl.where(row_ok, l_i, 1.0)
    lse = tl.where(row_ok, m_i + tl.math.log2(l_safe), float("inf"))
    if DROPOUT:
        l_safe = l_safe * (1.0 - dropout_p)  # inverted dropout: kept probabilities scaled up
    out = tl.where(row_ok[:, None], acc / l_safe[:, None], 0.0)
    o_ptrs = O + b * stride_ob + t0 * stride_om + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od
    # padded layout: write the zero rows of padded queries too; packed: rows past the
    # document belong to the next one
    row_end = seq if VARLEN else L
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=offs_m[:, None] < row_end)
    tl.store(LSE + row0 + offs_m, lse, mask=offs_m < L)


# --------------------------------------------------------------------------------------------
# backward
# --------------------------------------------------------------------------------------------
@triton.jit
def _dkdv_tiles(
    dk, dv, k, v, q_base, do_base, stride_qm, stride_qd, stride_dm, stride_dd, LSE, DELTA, row_base,
    mode, src, seq, offs_n, offs_d, start, end, f0, f1, qk_scale, dropout_p, seed, L,
    dq_base, stride_dqm, stride_dqd, sm_scale,
    MASKED: tl.constexpr, DROPOUT: tl.constexpr, DOT_PREC: tl.constexpr, BLOCK_M: tl.constexpr,
    ATOMIC_DQ: tl.constexpr,
):  # fmt: skip
    """Accumulate dK, dV of one key tile over query tiles [start, end) of one query head
    (``MASKED`` as in :func:`_fwd_tiles`). ``ATOMIC_DQ``: also add this key tile's share of dQ,
    ``sm_scale * dS K``, to the fp32 accumulator at ``dq_base`` with atomic adds."""
    for m0 in range(start, end, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        # rows past seq_len (also past L): q = dO = 0 and lse = +inf, so their probability is 0
        q_ok = offs_m[:, None] < seq
        q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd, mask=q_ok, other=0.0)
        do = tl.load(do_base + offs_m[:, None] * stride_dm + offs_d[None, :] * stride_dd, mask=q_ok, other=0.0)
        lse = tl.load(LSE + row_base + offs_m, mask=offs_m < seq, other=float("inf"))
        delta = tl.load(DELTA + row_base + offs_m, mask=offs_m < seq, other=0.0)
        qkT = tl.dot(k, tl.trans(q), input_precision=DOT_PREC) * qk_scale  # [BLOCK_N, BLOCK_M]
        if MASKED == 1:
            qkT = tl.where(_tile_mask(mode, src, seq, offs_m[None, :], offs_n[:, None]), qkT, float("-inf"))
        if MASKED == 2:
            if (m0 < f0) | (m0 >= f1):
                qkT = tl.where(_tile_mask(mode, src, seq, offs_m[None, :], offs_n[:, None]), qkT, float("-inf"))
        pT = tl.math.exp2(qkT - lse[None, :])
        dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PREC).to(tl.float32)
        if DROPOUT:  # O = (P * Z) V with Z = keep / (1 - p): dV = (P * Z)^T dO, dP = Z * dO V^T
            keepT = _dropout_keep(seed, dropout_p, row_base, L, offs_m[None, :], offs_n[:, None])
            zT = tl.where(keepT, 1.0 / (1.0 - dropout_p), 0.0)
            dv = tl.dot((pT * zT).to(do.dtype), do, dv, input_precision=DOT_PREC)
            dpT = dpT * zT
        else:
            dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=DOT_PREC)
        dsT = (pT * (dpT - delta[None, :])).to(q.dtype)
        dk = tl.dot(dsT, q, dk, input_precision=DOT_PREC)
        if ATOMIC_DQ:  # rows past seq_len have dS = 0 and are masked out anyway
            dq = tl.dot(tl.trans(dsT), k, input_precision=DOT_PREC) * sm_scale
            dq_ptrs = dq_base + offs_m[:, None] * stride_dqm + offs_d[None, :] * stride_dqd
            tl.atomic_add(dq_ptrs, dq, mask=q_ok, sem="relaxed")
    return dk, dv


@triton.jit
def _attn_bwd_kv(
    Q, K, V, DO, DK, DV, DQ_ACC, LSE, DELTA, MODE, SRC, SEQ, STARTS,
    sm_scale, dropout_p, SEED,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_db, stride_dh, stride_dm, stride_dd,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    stride_dqb, stride_dqh, stride_dqm, stride_dqd,
    B, H, HK, GROUP, L, L_BUCKET,
    HEAD_DIM: tl.constexpr, IS_FP32: tl.constexpr, DOT_PREC: tl.constexpr, DROPOUT: tl.constexpr,
    VARLEN: tl.constexpr, SCHEDULE: tl.constexpr, ATOMIC_DQ: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, SPLIT: tl.constexpr,
):  # fmt: skip
    """One program per (kv tile, b, kv head): dK, dV summed over the group's query heads.

    ``ATOMIC_DQ`` (the ``atomic_dq`` backward): dQ too, added tile by tile to the fp32
    ``DQ_ACC`` (zeroed by the host) with atomic adds, so the backward needs no dQ kernel: five
    matrix products per (query tile, key tile) pair instead of seven. The order of the adds
    varies from run to run, so dQ is not bitwise reproducible. Otherwise ``DQ_ACC`` is not read."""
    pid_bhk, t = _program(B * HK, L, BLOCK_N, SCHEDULE)
    b = (pid_bhk // HK).to(tl.int64)
    hk = (pid_bhk % HK).to(tl.int64)
    mode = tl.load(MODE + b)
    src = tl.load(SRC + b)
    seq = tl.minimum(tl.load(SEQ + b), L)  # never read past L, even for unchecked input
    seed = _load_seed(SEED, DROPOUT)
    pid_n = _kv_tile(t, mode, seq, BLOCK_N, SCHEDULE)

    n0 = pid_n * BLOCK_N
    n1 = n0 + BLOCK_N
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    kv_ok = offs_n[:, None] < seq
    t0 = _doc_start(STARTS, b, VARLEN)
    k = tl.load(K + b * stride_kb + t0 * stride_kn + hk * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd, mask=kv_ok, other=0.0)
    v = tl.load(V + b * stride_vb + t0 * stride_vn + hk * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd, mask=kv_ok, other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    qk_scale = sm_scale * 1.4426950408889634

    # query tiles: [lo, f0) partial, [f0, f1) fully visible, [f1, hi) partial; the rest is skipped
    lo, hi = _q_range(mode, src, seq, n0, n1, BLOCK_M)
    f0, f1 = _full_q_tiles(mode, src, seq, n0, n1, lo, hi, BLOCK_M)
    for g in range(0, GROUP):
        h = hk * GROUP + g
        q_base = Q + b * stride_qb + t0 * stride_qm + h * stride_qh
        do_base = DO + b * stride_db + t0 * stride_dm + h * stride_dh
        row_base = (b * H + h) * L
        dq_base = DQ_ACC + b * stride_dqb + t0 * stride_dqm + h * stride_dqh
        if SPLIT:
            dk, dv = _dkdv_tiles(
                dk, dv, k, v, q_base, do_base, stride_qm, stride_qd, stride_dm, stride_dd, LSE, DELTA, row_base,
                mode, src, seq, offs_n, offs_d, lo, f0, f0, f1, qk_scale, dropout_p, seed, L,
                dq_base, stride_dqm, stride_dqd, sm_scale, 1, DROPOUT, DOT_PREC, BLOCK_M, ATOMIC_DQ,
            )  # fmt: skip
            dk, dv = _dkdv_tiles(
                dk, dv, k, v, q_base, do_base, stride_qm, stride_qd, stride_dm, stride_dd, LSE, DELTA, row_base,
                mode, src, seq, offs_n, offs_d, f0, f1, f0, f1, qk_scale, dropout_p, seed, L,
                dq_base, stride_dqm, stride_dqd, sm_scale, 0, DROPOUT, DOT_PREC, BLOCK_M, ATOMIC_DQ,
            )  # fmt: skip
            dk, dv = _dkdv_tiles(
                dk, dv, k, v, q_base, do_base, stride_qm, stride_qd, stride_dm, stride_dd, LSE, DELTA, row_base,
                mode, src, seq, offs_n, offs_d, f1, hi, f0, f1, qk_scale, dropout_p, seed, L,
                dq_base, stride_dqm, stride_dqd, sm_scale, 1, DROPOUT, DOT_PREC, BLOCK_M, ATOMIC_DQ,
            )  # fmt: skip
        else:
            dk, dv = _dkdv_tiles(
                dk, dv, k, v, q_base, do_base, stride_qm, stride_qd, stride_dm, stride_dd, LSE, DELTA, row_base,
                mode, src, seq, offs_n, offs_d, lo, hi, f0, f1, qk_scale, dropout_p, seed, L,
                dq_base, stride_dqm, stride_dqd, sm_scale, 2, DROPOUT, DOT_PREC, BLOCK_M, ATOMIC_DQ,
            )  # fmt: skip
    dk = dk * sm_scale

    st_ok = offs_n[:, None] < (seq if VARLEN else L)
    dk_ptrs = DK + b * stride_dkb + t0 * stride_dkn + hk * stride_dkh + offs_n[:, None] * stride_dkn + offs_d[None, :] * stride_dkd
    dv_ptrs = DV + b * stride_dvb + t0 * stride_dvn + hk * stride_dvh + offs_n[:, None] * stride_dvn + offs_d[None, :] * stride_dvd
    tl.store(dk_ptrs, dk.to(DK.dtype.element_ty), mask=st_ok)
    tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=st_ok)


#: dK/dV of the ``deterministic`` backward (after :func:`_attn_bwd_dq`).
_attn_bwd_dkdv = _autotune(bwd_dkdv_configs)(_attn_bwd_kv)
#: dK, dV and dQ (atomic adds) of the ``atomic_dq`` backward (after :func:`_attn_bwd_delta`).
_attn_bwd_fused = _autotune(bwd_fused_configs, reset_to_zero=["DQ_ACC"])(_attn_bwd_kv)


@triton.jit
def _attn_bwd_delta(
    O, DO, DELTA, SEQ, STARTS,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_db, stride_dh, stride_dm, stride_dd,
    B, H, L,
    HEAD_DIM: tl.constexpr, VARLEN: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    """``delta = rowsum(dO * O)`` of one query tile (the ``atomic_dq`` backward's preprocess;
    the ``deterministic`` one computes it in :func:`_attn_bwd_dq`). Rows past ``seq_len``: 0."""
    pid_bh, t = _program(B * H, L, BLOCK_M, 0)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    seq = tl.minimum(tl.load(SEQ + b), L)
    offs_m = t * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    ok = offs_m[:, None] < seq
    t0 = _doc_start(STARTS, b, VARLEN)
    o = tl.load(O + b * stride_ob + t0 * stride_om + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od, mask=ok, other=0.0)
    do = tl.load(DO + b * stride_db + t0 * stride_dm + h * stride_dh + offs_m[:, None] * stride_dm + offs_d[None, :] * stride_dd, mask=ok, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(DELTA + pid_bh.to(tl.int64) * L + offs_m, delta, mask=offs_m < L)


@triton.jit
def _dq_tiles(
    dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
    mode, src, seq, offs_m, offs_d, start, end, f0, f1, dropout_p, seed, row_base, L, qk_scale,
    MASKED: tl.constexpr, DROPOUT: tl.constexpr, DOT_PREC: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Accumulate dQ of one query tile over key tiles [start, end) (``MASKED`` as in
    :func:`_fwd_tiles`)."""
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        k_ptrs = k_base + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd
        v_ptrs = v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd
        if MASKED != 0:
            k = tl.load(k_ptrs, mask=offs_n[:, None] < seq, other=0.0)
            v = tl.load(v_ptrs, mask=offs_n[:, None] < seq, other=0.0)
        else:
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale
        if MASKED == 1:
            qk = tl.where(_tile_mask(mode, src, seq, offs_m[:, None], offs_n[None, :]), qk, float("-inf"))
        if MASKED == 2:
            if (n0 < f0) | (n0 >= f1):
                qk = tl.where(_tile_mask(mode, src, seq, offs_m[:, None], offs_n[None, :]), qk, float("-inf"))
        p = tl.math.exp2(qk - lse[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC).to(tl.float32)
        if DROPOUT:
            keep = _dropout_keep(seed, dropout_p, row_base, L, offs_m[:, None], offs_n[None, :])
            dp = tl.where(keep, dp / (1.0 - dropout_p), 0.0)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PREC)
    return dq


@_autotune(bwd_dq_configs)
@triton.jit
def _attn_bwd_dq(
    Q, K, V, O, DO, DQ, LSE, DELTA, MODE, SRC, SEQ, STARTS,
    sm_scale, dropout_p, SEED,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_db, stride_dh, stride_dm, stride_dd,
    stride_dqb, stride_dqh, stride_dqm, stride_dqd,
    B, H, GROUP, L, L_BUCKET,
    HEAD_DIM: tl.constexpr, IS_FP32: tl.constexpr, DOT_PREC: tl.constexpr, DROPOUT: tl.constexpr,
    VARLEN: tl.constexpr, SCHEDULE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    SPLIT: tl.constexpr,
):  # fmt: skip
    """One program per (query tile, b, head): ``delta = rowsum(dO * O)`` of its rows (stored
    for :func:`_attn_bwd_dkdv`), then dQ."""
    pid_bh, t = _program(B * H, L, BLOCK_M, SCHEDULE)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    hk = h // GROUP
    mode = tl.load(MODE + b)
    src = tl.load(SRC + b)
    seq = tl.minimum(tl.load(SEQ + b), L)  # never read past L, even for unchecked input
    seed = _load_seed(SEED, DROPOUT)
    pid_m = _q_tile(t, mode, seq, BLOCK_M, SCHEDULE)

    m0 = pid_m * BLOCK_M
    m1 = m0 + BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q_ok = offs_m[:, None] < seq
    t0 = _doc_start(STARTS, b, VARLEN)
    q = tl.load(Q + b * stride_qb + t0 * stride_qm + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd, mask=q_ok, other=0.0)
    do = tl.load(DO + b * stride_db + t0 * stride_dm + h * stride_dh + offs_m[:, None] * stride_dm + offs_d[None, :] * stride_dd, mask=q_ok, other=0.0)
    o = tl.load(O + b * stride_ob + t0 * stride_om + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od, mask=q_ok, other=0.0)
    row_base = pid_bh.to(tl.int64) * L
    lse = tl.load(LSE + row_base + offs_m, mask=offs_m < seq, other=float("inf"))
    # rows past seq_len: dO = O = 0, so delta = 0 (no kernel reads it there)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(DELTA + row_base + offs_m, delta, mask=offs_m < L)
    k_base = K + b * stride_kb + t0 * stride_kn + hk * stride_kh
    v_base = V + b * stride_vb + t0 * stride_vn + hk * stride_vh
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    qk_scale = sm_scale * 1.4426950408889634

    lo, hi = _kv_range(mode, src, seq, m0, m1, BLOCK_N)
    f0, f1 = _full_kv_tiles(mode, src, seq, m0, m1, lo, hi, BLOCK_N)
    if SPLIT:
        dq = _dq_tiles(
            dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
            mode, src, seq, offs_m, offs_d, lo, f0, f0, f1, dropout_p, seed, row_base, L, qk_scale,
            1, DROPOUT, DOT_PREC, BLOCK_N,
        )  # fmt: skip
        dq = _dq_tiles(
            dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
            mode, src, seq, offs_m, offs_d, f0, f1, f0, f1, dropout_p, seed, row_base, L, qk_scale,
            0, DROPOUT, DOT_PREC, BLOCK_N,
        )  # fmt: skip
        dq = _dq_tiles(
            dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
            mode, src, seq, offs_m, offs_d, f1, hi, f0, f1, dropout_p, seed, row_base, L, qk_scale,
            1, DROPOUT, DOT_PREC, BLOCK_N,
        )  # fmt: skip
    else:
        dq = _dq_tiles(
            dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
            mode, src, seq, offs_m, offs_d, lo, hi, f0, f1, dropout_p, seed, row_base, L, qk_scale,
            2, DROPOUT, DOT_PREC, BLOCK_N,
        )  # fmt: skip
    dq = dq * sm_scale
    dq_ptrs = DQ + b * stride_dqb + t0 * stride_dqm + h * stride_dqh + offs_m[:, None] * stride_dqm + offs_d[None, :] * stride_dqd
    tl.store(dq_ptrs, dq.to(DQ.dtype.element_ty), mask=offs_m[:, None] < (seq if VARLEN else L))


# --------------------------------------------------------------------------------------------
# host side
# --------------------------------------------------------------------------------------------
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _l_bucket(L: int) -> int:
    return max(16, triton.next_power_of_2(L))


def _dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs: exact fp32 products unless PyTorch allows TF32 for matmuls (its own rule)."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dtype not in _DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k, v must share one dtype of {_DTYPES}, got {q.dtype}, {k.dtype}, {v.dtype}")
    D = q.shape[-1]
    if D < 16 or D > 128 or D & (D - 1):
        raise ValueError(f"head dim must be 16, 32, 64 or 128 for the Triton kernel, got {D}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")


def _ints(t, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(t).to(device=device, dtype=torch.int32).contiguous()


def _strides(t: torch.Tensor, varlen: bool) -> tuple[int, int, int, int]:
    """(batch, head, row, dim) strides; packed ``[T, H, D]`` tensors have no batch stride (the
    kernels add ``cu_seqlens[b] * row_stride`` instead)."""
    if varlen:
        return (0, t.stride(1), t.stride(0), t.stride(2))
    return tuple(t.stride())


def _alert_not_deterministic() -> None:
    """PyTorch's rule for nondeterministic ops: under ``torch.use_deterministic_algorithms(True)``
    the atomic-dQ backward is an error (a warning with ``warn_only=True``), raised before any
    launch, as torch's own atomics-based kernels do."""
    if not torch.are_deterministic_algorithms_enabled():
        return
    msg = ("unimask attention: backward='atomic_dq' (deterministic=False) sums dQ with atomic adds and is not "
           "deterministic, but torch.use_deterministic_algorithms(True) is set; use the default backward "
           "(deterministic=True, EncoderConfig.attention_deterministic=True)")
    if torch.is_deterministic_algorithms_warn_only_enabled():
        warnings.warn(msg, UserWarning, stacklevel=2)
    else:
        raise RuntimeError(msg)


def _forward(q, k, v, mode, src, seq, starts, L: int, sm_scale: float, dropout_p: float, seed, schedule: int):
    """The forward kernel's launch: ``(O, LSE)``. Padded ``[B, H, L, D]`` (``starts is None``)
    or packed ``[T, H, D]`` with documents starting at ``starts[b]`` and ``L`` = the longest
    document; ``seed``: the dropout seed tensor (``None`` without dropout)."""
    varlen = starts is not None
    B, H, HK, D = seq.shape[0], q.shape[1], k.shape[1], q.shape[-1]
    if B * H * triton.cdiv(L, 16) >= 2**31:
        raise ValueError(f"batch x heads x sequence length {B} x {H} x {L} is too large for the kernels' grid")
    o = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty((B, H, L), device=q.device, dtype=torch.float32)
    if B * H * L > 0:
        grid = lambda meta: (B * H * triton.cdiv(L, meta["BLOCK_M"]),)  # noqa: E731
        _attn_fwd[grid](
            q, k, v, o, lse, mode, src, seq, starts if varlen else seq, sm_scale, dropout_p,
            seq if seed is None else seed,  # without dropout the seed is not read
            *_strides(q, varlen), *_strides(k, varlen), *_strides(v, varlen), *_strides(o, varlen),
            B, H, H // HK, L, _l_bucket(L),
            HEAD_DIM=D, IS_FP32=q.dtype == torch.float32, DOT_PREC=_dot_precision(q.dtype),
            DROPOUT=dropout_p > 0.0, VARLEN=varlen, SCHEDULE=schedule, **_FIXED,
        )  # fmt: skip
    return o, lse


def _backward_kernels(do, q, k, v, o, lse, mode, src, seq, starts, L: int, sm_scale: float, dropout_p: float, seed,
                      schedule: int, atomic_dq: bool):
    """The backward kernels' launches: ``(dQ, dK, dV)``. Default: the dQ kernel (which also
    stores ``delta``), then the dK/dV kernel; ``atomic_dq``: the ``delta`` kernel, then one
    kernel for dK, dV and dQ (atomic adds)."""
    varlen = starts is not None
    B, H, HK, D = seq.shape[0], q.shape[1], k.shape[1], q.shape[-1]
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    dk = torch.empty_like(k, memory_format=torch.contiguous_format)
    dv = torch.empty_like(v, memory_format=torch.contiguous_format)
    if B * H * L == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    starts_arg = starts if varlen else seq
    seed_arg = seq if seed is None else seed  # the forward's seed tensor: the same keep-mask
    delta = torch.empty_like(lse)  # rowsum(dO * O): read by the dK/dV kernel
    common = dict(
        HEAD_DIM=D, IS_FP32=q.dtype == torch.float32, DOT_PREC=_dot_precision(q.dtype),
        DROPOUT=dropout_p > 0.0, VARLEN=varlen, SCHEDULE=schedule, **_FIXED,
    )  # fmt: skip
    grid_kv = lambda meta: (B * HK * triton.cdiv(L, meta["BLOCK_N"]),)  # noqa: E731
    if atomic_dq:
        _alert_not_deterministic()
        # delta first (its own small kernel), then one kernel for dK, dV and dQ, dQ summed
        # in fp32 with atomic adds
        bm = 16 if INTERPRET else 64
        _attn_bwd_delta[(B * H * triton.cdiv(L, bm),)](
            o, do, delta, seq, starts_arg, *_strides(o, varlen), *_strides(do, varlen), B, H, L,
            HEAD_DIM=D, VARLEN=varlen, BLOCK_M=bm,
        )  # fmt: skip
        dq_acc = dq if q.dtype == torch.float32 else torch.empty(dq.shape, device=dq.device, dtype=torch.float32)
        dq_acc.zero_()
        _attn_bwd_fused[grid_kv](
            q, k, v, do, dk, dv, dq_acc, lse, delta, mode, src, seq, starts_arg, sm_scale, dropout_p, seed_arg,
            *_strides(q, varlen), *_strides(k, varlen), *_strides(v, varlen), *_strides(do, varlen),
            *_strides(dk, varlen), *_strides(dv, varlen), *_strides(dq_acc, varlen),
            B, H, HK, H // HK, L, _l_bucket(L), ATOMIC_DQ=True, **common,
        )  # fmt: skip
        if dq_acc is not dq:
            dq.copy_(dq_acc)
        return dq, dk, dv
    grid_q = lambda meta: (B * H * triton.cdiv(L, meta["BLOCK_M"]),)  # noqa: E731
    _attn_bwd_dq[grid_q](
        q, k, v, o, do, dq, lse, delta, mode, src, seq, starts_arg, sm_scale, dropout_p, seed_arg,
        *_strides(q, varlen), *_strides(k, varlen), *_strides(v, varlen), *_strides(o, varlen),
        *_strides(do, varlen), *_strides(dq, varlen),
        B, H, H // HK, L, _l_bucket(L), **common,
    )  # fmt: skip
    # DQ_ACC is not read without ATOMIC_DQ: dk stands in (a valid pointer, strides unused)
    _attn_bwd_dkdv[grid_kv](
        q, k, v, do, dk, dv, dk, lse, delta, mode, src, seq, starts_arg, sm_scale, dropout_p, seed_arg,
        *_strides(q, varlen), *_strides(k, varlen), *_strides(v, varlen), *_strides(do, varlen),
        *_strides(dk, varlen), *_strides(dv, varlen), *_strides(dk, varlen),
        B, H, HK, H // HK, L, _l_bucket(L), ATOMIC_DQ=False, **common,
    )  # fmt: skip
    return dq, dk, dv


class _UnifiedAttention(torch.autograd.Function):
    """Eager calls: forward :func:`_forward`, backward :func:`_backward_kernels`. (Under
    ``torch.compile`` the same two functions run as the custom ops ``unimask::attention_fwd``
    / ``unimask::attention_bwd``: see :func:`_attention_compiled`.)

    Two layouts: padded ``[B, H, L, D]`` (``starts is None``) and packed ``[T, H, D]`` with
    documents starting at ``starts[b]`` and ``L`` = the longest document."""

    @staticmethod
    def forward(ctx, q, k, v, mode, src, seq, starts, L, sm_scale, dropout_p, seed, schedule, atomic_dq):  # noqa: D102
        o, lse = _forward(q, k, v, mode, src, seq, starts, L, sm_scale, dropout_p, seed, schedule)
        ctx.save_for_backward(q, k, v, o, lse, mode, src, seq, starts, seed)
        ctx.L, ctx.sm_scale, ctx.dropout_p, ctx.schedule = L, sm_scale, dropout_p, schedule
        ctx.atomic_dq = atomic_dq
        return o

    @staticmethod
    @torch.autograd.function.once_differentiable  # no second derivatives: an error, not silently none
    def backward(ctx, do):  # noqa: D102
        q, k, v, o, lse, mode, src, seq, starts, seed = ctx.saved_tensors
        grads = _backward_kernels(do, q, k, v, o, lse, mode, src, seq, starts, ctx.L, ctx.sm_scale, ctx.dropout_p, seed,
                                  ctx.schedule, ctx.atomic_dq)
        return (*grads, *(None,) * 10)


# --------------------------------------------------------------------------------------------
# torch.compile: the same launches as custom ops, opaque to Dynamo
# --------------------------------------------------------------------------------------------
# explicit schemas: no dependence on how a torch version infers them from annotations
@torch.library.custom_op(
    "unimask::attention_fwd", mutates_args=(),
    schema="(Tensor q, Tensor k, Tensor v, Tensor mode, Tensor src, Tensor seq, Tensor? starts, SymInt L, float sm_scale, "
           "float dropout_p, Tensor? seed, int schedule, bool atomic_dq) -> (Tensor, Tensor)",
)
def _attention_fwd_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mode: torch.Tensor, src: torch.Tensor, seq: torch.Tensor,
    starts: torch.Tensor | None, L: int, sm_scale: float, dropout_p: float, seed: torch.Tensor | None,
    schedule: int, atomic_dq: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(O, LSE)`` of :func:`_forward` (``atomic_dq`` only picks the backward)."""
    return _forward(q, k, v, mode, src, seq, starts, L, sm_scale, dropout_p, seed, schedule)


@_attention_fwd_op.register_fake
def _(q, k, v, mode, src, seq, starts, L, sm_scale, dropout_p, seed, schedule, atomic_dq):
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            q.new_empty((seq.shape[0], q.shape[1], L), dtype=torch.float32))


@torch.library.custom_op(
    "unimask::attention_bwd", mutates_args=(),
    schema="(Tensor do, Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, Tensor mode, Tensor src, Tensor seq, Tensor? starts, "
           "SymInt L, float sm_scale, float dropout_p, Tensor? seed, int schedule, bool atomic_dq) -> (Tensor, Tensor, Tensor)",
)
def _attention_bwd_op(
    do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, lse: torch.Tensor,
    mode: torch.Tensor, src: torch.Tensor, seq: torch.Tensor, starts: torch.Tensor | None, L: int, sm_scale: float,
    dropout_p: float, seed: torch.Tensor | None, schedule: int, atomic_dq: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dQ, dK, dV)`` of :func:`_backward_kernels`."""
    return _backward_kernels(do, q, k, v, o, lse, mode, src, seq, starts, L, sm_scale, dropout_p, seed, schedule, atomic_dq)


@_attention_bwd_op.register_fake
def _(do, q, k, v, o, lse, mode, src, seq, starts, L, sm_scale, dropout_p, seed, schedule, atomic_dq):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))


def _fwd_op_setup_context(ctx, inputs, output) -> None:
    q, k, v, mode, src, seq, starts, L, sm_scale, dropout_p, seed, schedule, atomic_dq = inputs
    o, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, o, lse, mode, src, seq, starts, seed)
    ctx.args = (L, sm_scale, dropout_p, schedule, atomic_dq)


def _fwd_op_backward(ctx, do, _dlse):
    q, k, v, o, lse, mode, src, seq, starts, seed = ctx.saved_tensors
    L, sm_scale, dropout_p, schedule, atomic_dq = ctx.args
    dq, dk, dv = torch.ops.unimask.attention_bwd(do, q, k, v, o, lse, mode, src, seq, starts, L, sm_scale, dropout_p, seed,
                                                 schedule, atomic_dq)
    return (dq, dk, dv, *(None,) * 10)


_attention_fwd_op.register_autograd(_fwd_op_backward, setup_context=_fwd_op_setup_context)


def _apply(q, k, v, mode, src, seq, starts, L, sm_scale, dropout_p, seed, schedule, atomic_dq) -> torch.Tensor:
    """Eagerly the autograd Function (the least host time per call); under ``torch.compile``
    the custom op, which Dynamo and AOTAutograd treat as one opaque op with a known output
    shape (no graph break, no tracing into Triton's launcher)."""
    if torch.compiler.is_compiling():
        return torch.ops.unimask.attention_fwd(q, k, v, mode, src, seq, starts, L, sm_scale, dropout_p, seed, schedule,
                                               atomic_dq)[0]
    return _UnifiedAttention.apply(q, k, v, mode, src, seq, starts, L, sm_scale, dropout_p, seed, schedule, atomic_dq)


#: Tile schedules of :func:`attention` (the first is the default; see :func:`_program`).
SCHEDULES = ("heavy_first", "plain", "tile_major")
_SCHEDULE_IDS = {"plain": 0, "heavy_first": 1, "tile_major": 2}


def _schedule(name: str) -> int:
    if name not in _SCHEDULE_IDS:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {name!r}")
    return _SCHEDULE_IDS[name]


#: Backward strategies of :func:`attention` (the first is the default).
BACKWARDS = ("deterministic", "atomic_dq")


def _backward(name: str) -> bool:
    """True for the atomic-dQ backward."""
    if name not in BACKWARDS:
        raise ValueError(f"backward must be one of {BACKWARDS}, got {name!r}")
    return name == "atomic_dq"


def _prepare(q, dropout_p: float, scale: float | None, seed: int | None) -> tuple[float, float, torch.Tensor | None]:
    """``(sm_scale, dropout_p, seed)``; the seed is a one-element int64 tensor on ``q``'s device
    (``None`` without dropout), which the kernels read from memory.

    ``seed=None`` draws it with ``torch.randint`` from the generator of ``q``'s device, on the
    device: no host synchronisation, and inside a captured CUDA graph each replay draws a new
    seed (PyTorch's graph-safe RNG), so the dropout masks differ from replay to replay as
    ``torch.nn.functional.dropout``'s do. A Python int seed would be frozen into the graph."""
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    sm_scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if dropout_p == 0.0:
        return sm_scale, 0.0, None
    if seed is None:
        return sm_scale, float(dropout_p), torch.randint(0, 2**31 - 1, (1,), device=q.device, dtype=torch.int64)
    if isinstance(seed, bool) or not hasattr(type(seed), "__index__"):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}: {seed!r}")
    seed = operator.index(seed)
    if not -(2**63) <= seed < 2**63:
        raise ValueError(f"seed must fit in 64 bits, got {seed}")
    return sm_scale, float(dropout_p), torch.full((1,), seed, device=q.device, dtype=torch.int64)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mode: torch.Tensor,
    src_len: torch.Tensor,
    seq_len: torch.Tensor,
    scale: float | None = None,
    dropout_p: float = 0.0,
    seed: int | None = None,
    schedule: str = "heavy_first",
    backward: str = "deterministic",
) -> torch.Tensor:
    """Fused unified-LM attention (Triton), differentiable in ``q``, ``k``, ``v``.

    ``q``: ``[B, H, L, D]``; ``k``, ``v``: ``[B, H_kv, L, D]`` with ``H % H_kv == 0``; any strides.
    ``attn_mode``/``src_len``/``seq_len``: int ``[B]`` as in :mod:`unimask.masks` (validated by
    :func:`unimask.attention.unified_attention`, which is the public entry point). fp16/bf16
    (fp32 accumulation) or fp32; head dim 16, 32, 64 or 128. Returns ``[B, H, L, D]``
    (contiguous), rows of padded queries exactly zero.

    ``dropout_p``: inverted dropout on the attention probabilities (as
    ``torch.nn.functional.dropout`` applied to the softmax), regenerated in the backward from
    Philox(``seed``, element index) instead of being stored. ``seed`` (an int, or ``None``)
    defaults to a draw from the random generator of ``q``'s device, made on the device and read
    by the kernels from memory: ``torch.manual_seed`` makes runs reproducible, no host
    synchronisation, and a captured CUDA graph draws new masks on every replay.

    ``schedule``: the order the GPU runs the tiles in, one of :data:`SCHEDULES` (see
    :func:`_program`); the results are bitwise identical under every schedule (same tiles, same
    arithmetic), only the speed differs. The others are there for benchmarking.

    ``backward``, one of :data:`BACKWARDS`: ``"deterministic"`` (default) runs a dQ kernel
    (which also computes ``delta``), then a dK/dV kernel: no atomics, bitwise reproducible,
    seven matrix products per visited (query tile, key tile) pair. ``"atomic_dq"`` computes
    ``delta`` in a small kernel, then dK, dV and dQ in one kernel per key tile, dQ summed in an
    fp32 buffer with atomic adds (FlashAttention-2's backward): five products per pair, one
    ``[B, H, L, D]`` fp32 buffer more (for 16-bit inputs), and dQ is not bitwise reproducible
    (the adds' order varies; dK, dV are).
    """
    _check(q, k, v)
    check_per_sample(attn_mode, src_len, seq_len, q.shape[0])  # the programs of sample b read entry b
    sm_scale, dropout_p, seed = _prepare(q, dropout_p, scale, seed)
    dev = q.device
    mode, src, seq = _ints(attn_mode, dev), _ints(src_len, dev), _ints(seq_len, dev)
    return _apply(q, k, v, mode, src, seq, None, q.shape[2], sm_scale, dropout_p, seed, _schedule(schedule), _backward(backward))


def attention_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    attn_mode: torch.Tensor,
    src_len: torch.Tensor,
    max_seqlen: int,
    scale: float | None = None,
    dropout_p: float = 0.0,
    seed: int | None = None,
    schedule: str = "heavy_first",
    backward: str = "deterministic",
) -> torch.Tensor:
    """Packed rows: documents concatenated along tokens, each with its own mode (no padding).

    ``q``: ``[T, H, D]``; ``k``, ``v``: ``[T, H_kv, D]``; ``cu_seqlens``: int ``[N + 1]``
    (document ``d`` is tokens ``[cu_seqlens[d], cu_seqlens[d+1])``, FlashAttention's varlen
    convention); ``attn_mode``, ``src_len``: int ``[N]``; ``max_seqlen`` >= every document's
    length. Each document gets the mask of :func:`unimask.masks.allowed` on document-relative
    positions; nothing crosses documents. Validated by
    :func:`unimask.attention.unified_attention_varlen`. Returns ``[T, H, D]``. ``schedule``,
    ``backward``: as in :func:`attention`.
    """
    _check(q, k, v)
    check_per_document(attn_mode, src_len, cu_seqlens)
    sm_scale, dropout_p, seed = _prepare(q, dropout_p, scale, seed)
    dev = q.device
    cu = torch.as_tensor(cu_seqlens).to(device=dev, dtype=torch.int64)
    starts = cu[:-1].to(torch.int32).contiguous()
    seq = (cu[1:] - cu[:-1]).to(torch.int32).contiguous()
    mode, src = _ints(attn_mode, dev), _ints(src_len, dev)
    return _apply(q, k, v, mode, src, seq, starts, int(max_seqlen), sm_scale, dropout_p, seed, _schedule(schedule),
                  _backward(backward))
