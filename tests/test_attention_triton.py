"""The Triton kernels on the CPU, under Triton's interpreter, against the fp64 reference.

Triton reads ``TRITON_INTERPRET`` when a kernel is *decorated* (``triton.jit`` checks
``triton.knobs.runtime.interpret`` at decoration time, i.e. when
``unimask.kernels.unified_attention`` is imported). Setting it inside this pytest process would
either come too late (another test already imported the module) or leak into other test files.
So the kernels run in ONE child process (this file run as a script with ``--worker``), started
with ``TRITON_INTERPRET=1``; the parent builds the inputs, the child runs forward + backward,
and the parent compares with :func:`unimask.attention.reference_attention` in fp64, computed
here and independent of the interpreter.

Tolerances (documented in docs/attention.md): fp32 inputs: |err| <= 2e-5 + 2e-5 * |ref|
(forward) and 1e-4 + 1e-4 * |ref| (gradients); fp16 inputs (reference on the same
fp16-rounded inputs, in fp64): 4e-3 + 4e-3 * |ref| (forward), 2e-2 + 2e-2 * |ref| (gradients).
bf16 needs a GPU: the interpreter's ``tl.dot`` on bf16 is wrong in Triton 3.9 (checked by the
worker and reported as the skip reason).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from unimask.attention import reference_attention
from unimask.masks import dense_mask

BM, BN = 16, 16  # the interpreter's fixed tile sizes (see _FIXED in the kernel module)


# --------------------------------------------------------------------------------------------
# the cases (built in the parent)
# --------------------------------------------------------------------------------------------
def _case(name, B, H, HK, L, D, mode, src, seq, dtype=torch.float32, scale=None, layout="contiguous", seed=0, dropout=0.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, L, D, generator=g, dtype=torch.float64)
    k = torch.randn(B, HK, L, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, HK, L, D, generator=g, dtype=torch.float64)
    do = torch.randn(B, H, L, D, generator=g, dtype=torch.float64)
    # padding content must not matter: poison it with large values
    for b, n in enumerate(seq):
        for t in (q, k, v):
            t[b, :, n:] = 1e4
    return dict(
        name=name, q=q, k=k, v=v, do=do, dtype=dtype, scale=scale, layout=layout, dropout=dropout, seed=1000 + seed,
        mode=torch.tensor(mode), src=torch.tensor(src), seq=torch.tensor(seq),
    )  # fmt: skip


CASES = [
    # all four modes mixed, L not a multiple of the tile, src_len at 1 and at seq_len
    _case("mixed_L17_D16", 4, 2, 2, 17, 16, [0, 1, 2, 3], [0, 0, 0, 1], [17, 13, 9, 17]),
    _case("mixed_L33_D32_gqa", 6, 4, 2, 33, 32, [3, 1, 2, 0, 3, 3], [33, 0, 0, 0, 16, 5], [33, 33, 31, 2, 32, 17], seed=1),
    _case("mixed_L64_D64", 4, 2, 2, 64, 64, [2, 3, 0, 1], [0, 20, 0, 0], [64, 47, 48, 64], seed=2),
    # fully padded rows (seq_len = 0), seq_len = 1, src_len = 0 (seq2seq == left_to_right)
    _case("padding_L20_D16", 5, 2, 1, 20, 16, [0, 1, 2, 3, 3], [0, 0, 0, 0, 1], [0, 1, 1, 20, 1], seed=3),
    _case("fp16_L33_D32", 4, 2, 1, 33, 32, [0, 1, 2, 3], [0, 0, 0, 7], [33, 25, 18, 30], dtype=torch.float16, seed=4),
    # strided (transposed) inputs as a model produces them, custom scale
    _case("strided_scale_L24_D32", 4, 2, 2, 24, 32, [3, 2, 1, 0], [12, 0, 0, 0], [24, 23, 11, 19], scale=0.3, layout="blhd", seed=5),
    # attention dropout: the reference applies the kernel's own keep-mask (read back separately)
    _case("dropout_L33_D16_gqa", 4, 4, 2, 33, 16, [0, 1, 2, 3], [0, 0, 0, 9], [33, 30, 0, 21], dropout=0.3, seed=6),
]
CASE_NAMES = [c["name"] for c in CASES]


def _varlen_case(name, lens, modes, srcs, H, HK, D, max_seqlen=None, seed=0, layout="contiguous"):
    g = torch.Generator().manual_seed(seed)
    T = sum(lens)
    q = torch.randn(T, H, D, generator=g, dtype=torch.float64)
    k = torch.randn(T, HK, D, generator=g, dtype=torch.float64)
    v = torch.randn(T, HK, D, generator=g, dtype=torch.float64)
    do = torch.randn(T, H, D, generator=g, dtype=torch.float64)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()])
    return dict(name=name, q=q, k=k, v=v, do=do, cu=cu, mode=torch.tensor(modes), src=torch.tensor(srcs),
                max_seqlen=max_seqlen or max(lens), layout=layout)


# packed rows: an empty document, a 1-token one, lengths off the tile grid, GQA, every mode
VARLEN_CASES = [
    _varlen_case("varlen_gqa", [5, 0, 17, 33, 1, 20], [3, 0, 2, 1, 3, 0], [2, 0, 0, 0, 1, 0], 4, 2, 16, seed=7),
    _varlen_case("varlen_maxlen_padded_D32", [31, 9], [3, 2], [30, 0], 2, 2, 32, max_seqlen=40, seed=8),
    # q, k, v as the packed encoder passes them: [T, H, D] views of one fused [T, 3 * H * D] projection
    _varlen_case("varlen_fused_qkv_views", [7, 13, 4, 0, 24], [0, 3, 1, 2, 0], [0, 5, 0, 0, 0], 2, 2, 16, seed=9, layout="qkv"),
]


def _tolerances(dtype: torch.dtype) -> tuple[float, float]:
    """(forward, gradient) tolerance: |err| <= tol + tol * |ref|."""
    return (2e-5, 1e-4) if dtype == torch.float32 else (4e-3, 2e-2)


# --------------------------------------------------------------------------------------------
# the child process
# --------------------------------------------------------------------------------------------
def _worker(inp: str, out: str) -> None:
    """Runs in the child, with TRITON_INTERPRET=1 set before Triton is imported."""
    assert os.environ.get("TRITON_INTERPRET") == "1"
    from unimask.attention import unified_attention, unified_attention_varlen  # noqa: PLC0415
    from unimask.kernels import unified_attention as K  # noqa: PLC0415

    assert K.INTERPRET, "kernel module did not see TRITON_INTERPRET=1"
    payload = torch.load(inp, weights_only=False)
    results: dict = {"cases": {}}
    for c in payload["cases"]:
        dt = c["dtype"]
        q, k, v = (t.requires_grad_() for t in _in_layout(c, (t.to(dt) for t in (c["q"], c["k"], c["v"]))))
        o = K.attention(q, k, v, c["mode"], c["src"], c["seq"], c["scale"], c["dropout"], c["seed"])
        o.backward(c["do"].to(dt))
        results["cases"][c["name"]] = r = dict(o=o.detach(), dq=q.grad, dk=k.grad, dv=v.grad)
        if c["dropout"] > 0.0:
            B, H, L, _ = q.shape
            keep = torch.zeros(B * H, L, L, dtype=torch.int8)
            dropout_keep[(B * H,)](keep, c["seed"], c["dropout"], L, BL=triton.next_power_of_2(L))
            r["keep"] = keep.view(B, H, L, L).bool()
            again = K.attention(q, k, v, c["mode"], c["src"], c["seq"], c["scale"], c["dropout"], c["seed"])
            other = K.attention(q, k, v, c["mode"], c["src"], c["seq"], c["scale"], c["dropout"], c["seed"] + 1)
            r["same_seed_equal"] = bool(torch.equal(again, o))
            r["other_seed_differs"] = not torch.equal(other, o)
            # seed=None: one torch.randint draw from the generator of q's device (here the CPU's)
            torch.manual_seed(c["seed"])
            drawn = int(torch.randint(0, 2**31 - 1, (1,)).item())
            torch.manual_seed(c["seed"])
            default = K.attention(q, k, v, c["mode"], c["src"], c["seq"], c["scale"], c["dropout"])
            r["default_seed_is_the_generators_draw"] = bool(torch.equal(
                default, K.attention(q, k, v, c["mode"], c["src"], c["seq"], c["scale"], c["dropout"], drawn)))
            # the kernels read the seed from its tensor when they run (what a CUDA graph's replay
            # relies on): the same tensor refilled with another seed gives that seed's forward
            # and gradients
            sm_scale, p, seed_t = K._prepare(q, c["dropout"], c["scale"], c["seed"])
            ints = [K._ints(c[n], q.device) for n in ("mode", "src", "seq")]

            def via_tensor(q, k, v, c=c, ints=ints, sm_scale=sm_scale, p=p, seed_t=seed_t):
                return K._UnifiedAttention.apply(q, k, v, *ints, None, q.shape[2], sm_scale, p, seed_t,
                                                 K._schedule("heavy_first"), False)

            first = _fwd_bwd(via_tensor, c, dt)
            seed_t.fill_(c["seed"] + 1)
            refilled = _fwd_bwd(via_tensor, c, dt)
            r["seed_tensor_refilled"] = dict(
                first_is_seed=_all_equal([first, (o.detach(), q.grad, k.grad, v.grad)]),
                refilled_is_other_seed=_all_equal([refilled, _fwd_bwd(
                    lambda q, k, v, c=c: K.attention(q, k, v, c["mode"], c["src"], c["seq"], c["scale"], c["dropout"], c["seed"] + 1),
                    c, dt)]))
            r["bad_seeds"] = {}
            for name, bad in (("float", 1.5), ("bool", True), ("str", "7"), ("over_64_bits", 2**64)):
                try:
                    K.attention(q, k, v, c["mode"], c["src"], c["seq"], c["scale"], c["dropout"], bad)
                    r["bad_seeds"][name] = "no error"
                except (TypeError, ValueError) as e:
                    r["bad_seeds"][name] = f"{type(e).__name__}: {e}"
            r["numpy_seed_equal"] = bool(torch.equal(
                K.attention(q, k, v, c["mode"], c["src"], c["seq"], c["scale"], c["dropout"], np.int64(c["seed"])), o.detach()))
    # the atomic-dQ backward on every case (same forward; dQ summed with atomic adds)
    results["atomic"] = {}
    for c in payload["cases"]:
        def call(q, k, v, c=c):  # the same layout as above (strided views for "blhd")
            q, k, v = _in_layout(c, (q, k, v))
            return K.attention(q, k, v, c["mode"], c["src"], c["seq"], c["scale"], c["dropout"], c["seed"], backward="atomic_dq")

        o, dq, dk, dv = _fwd_bwd(call, c, c["dtype"])
        results["atomic"][c["name"]] = dict(o=o, dq=dq, dk=dk, dv=dv)
    try:
        K.attention(*(payload["cases"][0][n].float() for n in ("q", "k", "v", "mode", "src", "seq")), backward="fast")
        results["bad_backward"] = "no error"
    except ValueError as e:
        results["bad_backward"] = str(e)
    # torch.use_deterministic_algorithms(True): the atomic backward is torch's alert (an error,
    # a warning with warn_only), raised before any launch; the default backward runs
    c0 = payload["cases"][0]
    atomic = lambda q, k, v: K.attention(q, k, v, c0["mode"], c0["src"], c0["seq"], backward="atomic_dq")  # noqa: E731
    results["det_alert"] = {}
    try:
        torch.use_deterministic_algorithms(True)
        try:
            _fwd_bwd(atomic, c0)
            results["det_alert"]["strict"] = "no error"
        except RuntimeError as e:
            results["det_alert"]["strict"] = str(e)
        results["det_alert"]["default_backward_runs"] = _all_equal([
            _fwd_bwd(lambda q, k, v: K.attention(q, k, v, c0["mode"], c0["src"], c0["seq"]), c0),
            tuple(results["cases"][c0["name"]][n] for n in ("o", "dq", "dk", "dv"))])
        torch.use_deterministic_algorithms(True, warn_only=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warned = _fwd_bwd(atomic, c0)
        results["det_alert"]["warn_only"] = [str(w.message) for w in caught if "atomic_dq" in str(w.message)]
        results["det_alert"]["warn_only_equal"] = _all_equal([warned, tuple(results["atomic"][c0["name"]][n] for n in ("o", "dq", "dk", "dv"))])
    finally:
        torch.use_deterministic_algorithms(False)
    results["varlen"] = {}
    results["varlen_atomic"] = {}
    for c in payload["varlen"]:
        results["varlen_atomic"][c["name"]] = dict(zip(("o", "dq", "dk", "dv"), _fwd_bwd(
            lambda q, k, v, c=c: K.attention_varlen(q, k, v, c["cu"], c["mode"], c["src"], c["max_seqlen"], backward="atomic_dq"), c)))
    for c in payload["varlen"]:
        if c.get("layout") == "qkv":  # strided views (row stride 3 * H * D) of one tensor
            T, H, D = c["q"].shape
            fused = torch.cat([c[n].float().reshape(T, -1) for n in ("q", "k", "v")], dim=1).requires_grad_()
            q, k, v = (t.reshape(T, H, D) for t in fused.split(H * D, dim=1))
            assert not q.is_contiguous()
            o = K.attention_varlen(q, k, v, c["cu"], c["mode"], c["src"], c["max_seqlen"])
            o.backward(c["do"].float())
            dq, dk, dv = (g.reshape(T, H, D) for g in fused.grad.split(H * D, dim=1))
        else:
            q, k, v = (c[n].float().requires_grad_() for n in ("q", "k", "v"))
            o = K.attention_varlen(q, k, v, c["cu"], c["mode"], c["src"], c["max_seqlen"])
            o.backward(c["do"].float())
            dq, dk, dv = q.grad, k.grad, v.grad
        results["varlen"][c["name"]] = dict(o=o.detach(), dq=dq, dk=dk, dv=dv)
    # the public entry point dispatches to the kernel when asked to
    c = payload["cases"][0]
    args = (c["q"].float(), c["k"].float(), c["v"].float(), c["mode"], c["src"], c["seq"])
    results["dispatch_equal"] = bool(torch.equal(unified_attention(*args, backend="triton"), K.attention(*args)))
    # deterministic=False reaches the kernel as the atomic-dQ backward (the interpreter runs the
    # adds in program order, so here both backwards are reproducible and comparable bitwise)
    results["dispatch_backward"] = {}
    for det, bw in ((True, "deterministic"), (False, "atomic_dq")):
        ours = _fwd_bwd(lambda q, k, v, det=det: unified_attention(q, k, v, *args[3:], backend="triton", deterministic=det), c)
        kern = _fwd_bwd(lambda q, k, v, bw=bw: K.attention(q, k, v, *args[3:], backward=bw), c)
        results["dispatch_backward"][bw] = _all_equal([ours, kern])
    cv0 = payload["varlen"][0]
    vargs = (cv0["cu"], cv0["mode"], cv0["src"], cv0["max_seqlen"])
    ours = _fwd_bwd(lambda q, k, v: unified_attention_varlen(q, k, v, *vargs, backend="triton", deterministic=False), cv0)
    kern = _fwd_bwd(lambda q, k, v: K.attention_varlen(q, k, v, *vargs, backward="atomic_dq"), cv0)
    results["dispatch_backward"]["varlen_atomic_dq"] = _all_equal([ours, kern])
    # second derivatives: the kernel's backward is not differentiable; asking for them must be
    # an error, not a first-order gradient silently detached from the graph
    q2 = args[0].clone().requires_grad_()
    out2 = K.attention(q2, *args[1:])
    gq, = torch.autograd.grad((out2 ** 2).sum(), q2, create_graph=True)
    try:
        (gq ** 2).sum().backward()
        results["double_backward"] = f"no error (gq.requires_grad={gq.requires_grad})"
    except RuntimeError as e:
        results["double_backward"] = str(e)
    # per-sample arguments shorter/longer than B: a ValueError before the kernel would read
    # attn_mode[b], seq_len[b] past their end (checked or not)
    results["batch_len"] = {}
    for key, (mode, check) in {"short": (c["mode"][:1], True), "short_unchecked": (c["mode"][:1], False),
                               "long": (torch.cat([c["mode"], c["mode"][:1]]), True)}.items():
        try:
            unified_attention(*args[:3], mode, *args[4:], backend="triton", check=check)
            results["batch_len"][key] = "no error"
        except ValueError as e:
            results["batch_len"][key] = str(e)
    # the kernel module's own entry points check it too (bench scripts call them directly)
    vc = payload["varlen"][0]
    for key, call in {"kernel_short": lambda: K.attention(*args[:3], c["mode"][:1], *args[4:]),
                      "kernel_varlen_short": lambda: K.attention_varlen(
                          vc["q"].float(), vc["k"].float(), vc["v"].float(), vc["cu"], vc["mode"][:-1], vc["src"], vc["max_seqlen"])}.items():
        try:
            call()
            results["batch_len"][key] = "no error"
        except ValueError as e:
            results["batch_len"][key] = str(e)
    # every tile schedule runs the same tiles with the same arithmetic: bitwise the same output
    # and gradients (padded and packed layouts)
    results["plain_order_equal"] = _orders_equal(K, payload["cases"][2], payload["varlen"][0])
    # the single-loop variant (SPLIT=False: a branch per tile instead of three loops) visits
    # the same tiles in the same order with the same arithmetic: bitwise the same results
    results["single_loop_equal"] = _single_loop_equal(K, payload["cases"], results["cases"], payload["varlen"][0])
    # unchecked out-of-range seq_len is clamped to L inside the kernels (no read past L)
    L0 = c["q"].shape[2]
    over = K.attention(*args[:5], c["seq"] * 0 + L0 + 100)
    results["clamped_equal"] = bool(torch.equal(over, K.attention(*args[:5], c["seq"] * 0 + L0)))
    # past the grid's limit, an unknown schedule: a ValueError naming the values, nothing launched
    cv = payload["varlen"][0]
    for key, kwargs in (("too_long", dict(max_seqlen=2**35)), ("bad_schedule", dict(max_seqlen=cv["max_seqlen"], schedule="fast"))):
        try:
            K.attention_varlen(cv["q"].float(), cv["k"].float(), cv["v"].float(), cv["cu"], cv["mode"], cv["src"], **kwargs)
            results[key] = "no error"
        except ValueError as e:
            results[key] = str(e)
    # an empty batch and L = 0 go through without launching anything
    z = torch.zeros(0, 2, 5, 16)
    e = torch.zeros(0, dtype=torch.long)
    results["empty_shape"] = tuple(K.attention(z, z, z, e, e, e).shape)

    # tile classification probe: ranges and "fully visible" flags for many (mode, src, seq)
    pr = payload["probe"]
    mode, src, seq = (pr[n].to(torch.int32) for n in ("mode", "src", "seq"))
    results["probe"] = {}
    for bm, bn in pr["blocks"]:
        nt = pr["NT"]
        kv = torch.zeros(len(mode), nt, 4, dtype=torch.int32)
        qr = torch.zeros(len(mode), nt, 4, dtype=torch.int32)
        full = torch.zeros(len(mode), nt, nt, dtype=torch.int32)
        order = torch.zeros(len(mode), nt, 2, dtype=torch.int32)
        probe[(len(mode),)](mode, src, seq, kv, qr, full, order, NT=nt, BLOCK_M=bm, BLOCK_N=bn)
        results["probe"][(bm, bn)] = dict(kv=kv, qr=qr, full=full, order=order)

    # is the interpreter's bf16 dot usable? (it is not in Triton 3.9)
    x, y = torch.randn(16, 16).bfloat16(), torch.randn(16, 16).bfloat16()
    z = torch.empty(16, 16)
    dot16[(1,)](x, y, z)
    results["bf16_dot_err"] = float((z - x.float() @ y.float()).abs().max())
    torch.save(results, out)


def _in_layout(c: dict, tensors) -> tuple:
    """``tensors`` in case ``c``'s layout: "blhd" is [B, L, H, D] storage seen through a transpose."""
    if c["layout"] == "blhd":
        return tuple(t.transpose(1, 2).contiguous().transpose(1, 2) for t in tensors)
    return tuple(tensors)


def _fwd_bwd(call, t: dict, dtype: torch.dtype = torch.float32) -> tuple:
    """(output, dq, dk, dv) of ``call(q, k, v)`` on case ``t``'s tensors in ``dtype``, backward with its ``do``."""
    q, k, v = (t[n].to(dtype).requires_grad_() for n in ("q", "k", "v"))
    o = call(q, k, v)
    o.backward(t["do"].to(dtype))
    return o.detach(), q.grad, k.grad, v.grad


def _all_equal(runs: list[tuple]) -> bool:
    """Every run bitwise equal to the first, output and gradients."""
    return all(torch.equal(a, b) for other in runs[1:] for a, b in zip(runs[0], other))


def _orders_equal(K, c: dict, cv: dict) -> dict:
    """Forward and backward of one padded and one packed case under every tile schedule."""
    padded = [_fwd_bwd(lambda q, k, v, sc=sc: K.attention(q, k, v, c["mode"], c["src"], c["seq"], schedule=sc), c)
              for sc in K.SCHEDULES]
    packed = [_fwd_bwd(lambda q, k, v, sc=sc: K.attention_varlen(q, k, v, cv["cu"], cv["mode"], cv["src"], cv["max_seqlen"],
                                                                 schedule=sc), cv)
              for sc in K.SCHEDULES]
    return {"padded": _all_equal(padded), "packed": _all_equal(packed)}


def _single_loop_equal(K, cases: list, got: dict, cv: dict) -> dict:
    """Forward and gradients with SPLIT=False against the SPLIT=True results, on a GQA case,
    the padding case, the dropout case and a packed one."""
    out = {}
    packed = lambda q, k, v: K.attention_varlen(q, k, v, cv["cu"], cv["mode"], cv["src"], cv["max_seqlen"])  # noqa: E731
    try:
        with_split = _fwd_bwd(packed, cv)
        K._FIXED["SPLIT"] = False
        for c in cases:
            if c["name"] not in ("mixed_L33_D32_gqa", "padding_L20_D16", "dropout_L33_D16_gqa"):
                continue
            run = _fwd_bwd(lambda q, k, v: K.attention(q, k, v, c["mode"], c["src"], c["seq"], c["scale"], c["dropout"], c["seed"]),
                           c, c["dtype"])
            ref = got[c["name"]]
            out[c["name"]] = _all_equal([tuple(ref[n] for n in ("o", "dq", "dk", "dv")), run])
        out["packed"] = _all_equal([with_split, _fwd_bwd(packed, cv)])
    finally:
        K._FIXED["SPLIT"] = True
    return out


PROBE_L = 40  # not a multiple of the 16/32 tiles
PROBE_BLOCKS = [(16, 16), (32, 16), (16, 32)]


def _probe_configs():
    rows = []
    for mode in range(4):
        for seq in (0, 1, 15, 16, 17, 31, 32, 33, 40):
            for src in sorted({0, 1, seq // 2, 16, 17, seq} if mode == 3 else {0}):
                if src <= seq:
                    rows.append((mode, src, seq))
    return rows


@pytest.fixture(scope="module")
def interp(tmp_path_factory) -> dict:
    """Run every case once in a TRITON_INTERPRET=1 child process; return its outputs."""
    d = tmp_path_factory.mktemp("interp")
    inp, out = d / "in.pt", d / "out.pt"
    rows = _probe_configs()
    probe = dict(
        mode=torch.tensor([r[0] for r in rows]), src=torch.tensor([r[1] for r in rows]),
        seq=torch.tensor([r[2] for r in rows]), blocks=PROBE_BLOCKS, NT=-(-PROBE_L // 16) + 1,
    )  # fmt: skip
    torch.save({"cases": CASES, "varlen": VARLEN_CASES, "probe": probe}, inp)
    env = {**os.environ, "TRITON_INTERPRET": "1", "UNIMASK_ATTENTION_BACKEND": "auto", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", str(inp), str(out)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, f"interpreter worker failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    res = torch.load(out, weights_only=False)
    res["probe_rows"] = rows
    res["probe_nt"] = probe["NT"]
    return res


def _reference_with_keep(q, k, v, mode, src, seq, scale, keep, p):
    """fp64 attention under dense_mask with a given dropout keep-mask (inverted dropout)."""
    B, H, L, D = q.shape
    mask = dense_mask(mode, src, seq, L)[:, None]
    k, v = (t.repeat_interleave(H // k.shape[1], dim=1) for t in (k, v))
    s = q @ k.transpose(-1, -2) * (1.0 / math.sqrt(D) if scale is None else scale)
    row = mask.any(-1, keepdim=True)
    probs = torch.softmax(s.masked_fill(~mask, float("-inf")).masked_fill(~row, 0.0), dim=-1) * row
    return (probs * keep / (1.0 - p)) @ v


def _reference(c, keep=None) -> dict:
    dt = c["dtype"]
    q, k, v = (t.to(dt).double().requires_grad_() for t in (c["q"], c["k"], c["v"]))
    if c["dropout"] > 0.0:
        o = _reference_with_keep(q, k, v, c["mode"], c["src"], c["seq"], c["scale"], keep, c["dropout"])
    else:
        o = reference_attention(q, k, v, c["mode"], c["src"], c["seq"], c["scale"])
    o.backward(c["do"].to(dt).double())
    return dict(o=o.detach(), dq=q.grad, dk=k.grad, dv=v.grad)


def _assert_close(name, got, want, tol):
    got = got.double()
    assert torch.isfinite(got).all(), f"{name}: non-finite values"
    err = (got - want).abs()
    bound = tol + tol * want.abs()
    worst = int((err - bound).argmax())
    assert bool((err <= bound).all()), (
        f"{name}: max err {err.max().item():.3g} (at flat {worst}: got {got.flatten()[worst].item():.6g}, "
        f"want {want.flatten()[worst].item():.6g}, tol {tol})"
    )


@pytest.mark.parametrize("case", CASES, ids=CASE_NAMES)
def test_forward_and_grads_match_fp64_reference(interp, case):
    got = interp["cases"][case["name"]]
    want = _reference(case, got.get("keep"))
    tol_f, tol_g = _tolerances(case["dtype"])
    _assert_close(f"{case['name']} out", got["o"], want["o"], tol_f)
    for g in ("dq", "dk", "dv"):
        _assert_close(f"{case['name']} {g}", got[g], want[g], tol_g)


@pytest.mark.parametrize("case", CASES, ids=CASE_NAMES)
def test_padding_is_exactly_zero(interp, case):
    """Padded query rows: output and dQ exactly 0; padded keys: dK, dV exactly 0."""
    got = interp["cases"][case["name"]]
    for b, n in enumerate(case["seq"].tolist()):
        assert not got["o"][b, :, n:].any()
        assert not got["dq"][b, :, n:].any()
        assert not got["dk"][b, :, n:].any()
        assert not got["dv"][b, :, n:].any()


@pytest.mark.parametrize("case", CASES, ids=CASE_NAMES)
def test_atomic_dq_backward_matches_fp64_reference(interp, case):
    """backward="atomic_dq" (dK, dV and dQ in one kernel, dQ by atomic adds): every gradient
    against the fp64 reference, padded rows and keys exactly zero, and dK, dV bitwise those of
    the deterministic backward (the same tiles and arithmetic; only dQ's summation differs)."""
    got = interp["atomic"][case["name"]]
    det = interp["cases"][case["name"]]
    want = _reference(case, det.get("keep"))
    _, tol_g = _tolerances(case["dtype"])
    for g in ("dq", "dk", "dv"):
        _assert_close(f"{case['name']} atomic {g}", got[g], want[g], tol_g)
    assert torch.equal(got["o"], det["o"]) and torch.equal(got["dk"], det["dk"]) and torch.equal(got["dv"], det["dv"])
    assert got["dq"].dtype == case["dtype"] and got["dq"].shape == case["q"].shape
    for b, n in enumerate(case["seq"].tolist()):
        assert not got["dq"][b, :, n:].any() and not got["dk"][b, :, n:].any() and not got["dv"][b, :, n:].any()


@pytest.mark.parametrize("case", VARLEN_CASES, ids=[c["name"] for c in VARLEN_CASES])
def test_atomic_dq_backward_varlen(interp, case):
    """The atomic-dQ backward on packed rows: dQ against the per-document fp64 reference, dK/dV
    bitwise those of the deterministic backward."""
    from unimask.attention import reference_attention_varlen

    got = interp["varlen_atomic"][case["name"]]
    q, k, v = (case[n].clone().requires_grad_() for n in ("q", "k", "v"))
    reference_attention_varlen(q, k, v, case["cu"], case["mode"], case["src"]).backward(case["do"])
    _assert_close(f"{case['name']} atomic dq", got["dq"], q.grad, _tolerances(torch.float32)[1])
    if case.get("layout") != "qkv":  # that case's deterministic run went through fused views
        det = interp["varlen"][case["name"]]
        assert torch.equal(got["dk"], det["dk"]) and torch.equal(got["dv"], det["dv"])
    assert "got 'fast'" in interp["bad_backward"], interp["bad_backward"]


def test_atomic_dq_backward_honours_torch_deterministic_mode(interp):
    """Under torch.use_deterministic_algorithms(True) the atomic-dQ backward raises (warns
    with warn_only=True and still computes the same gradients), as torch's nondeterministic
    kernels do; the default backward is unaffected."""
    alert = interp["det_alert"]
    assert "backward='atomic_dq'" in alert["strict"] and "use_deterministic_algorithms" in alert["strict"], alert
    assert alert["default_backward_runs"]
    assert len(alert["warn_only"]) == 1 and alert["warn_only_equal"], alert


def test_dropout_mask_rate_and_seeding(interp):
    c = next(c for c in CASES if c["dropout"] > 0.0)
    got = interp["cases"][c["name"]]
    rate = 1.0 - got["keep"].double().mean().item()
    n = got["keep"].numel()
    assert abs(rate - c["dropout"]) < 5 * math.sqrt(c["dropout"] * (1 - c["dropout"]) / n), f"drop rate {rate}"
    assert got["same_seed_equal"], "same seed must reproduce the same output"
    assert got["other_seed_differs"], "another seed must draw another mask"
    assert got["numpy_seed_equal"], "a numpy integer seed is the same seed"


def test_dropout_seed_is_drawn_on_the_device_and_read_at_launch(interp):
    """``seed=None`` is one ``torch.randint`` draw from the generator of q's device, and the
    kernels read the seed from its one-element tensor when they run (forward and backward), so
    a CUDA graph replay, which refills that tensor from PyTorch's graph-safe RNG, draws new
    masks instead of reusing the captured one."""
    c = next(c for c in CASES if c["dropout"] > 0.0)
    got = interp["cases"][c["name"]]
    assert got["default_seed_is_the_generators_draw"]
    assert got["seed_tensor_refilled"] == {"first_is_seed": True, "refilled_is_other_seed": True}, got["seed_tensor_refilled"]


def test_bad_dropout_seeds_are_errors(interp):
    c = next(c for c in CASES if c["dropout"] > 0.0)
    bad = interp["cases"][c["name"]]["bad_seeds"]
    assert bad["float"].startswith("TypeError") and "1.5" in bad["float"], bad
    assert bad["bool"].startswith("TypeError") and "True" in bad["bool"], bad
    assert bad["str"].startswith("TypeError") and "'7'" in bad["str"], bad
    assert bad["over_64_bits"].startswith("ValueError") and str(2**64) in bad["over_64_bits"], bad


@pytest.mark.parametrize("case", VARLEN_CASES, ids=[c["name"] for c in VARLEN_CASES])
def test_varlen_matches_per_document_reference(interp, case):
    """Packed rows vs the fp64 reference run document by document (nothing crosses documents)."""
    from unimask.attention import reference_attention_varlen

    got = interp["varlen"][case["name"]]
    q, k, v = (case[n].clone().requires_grad_() for n in ("q", "k", "v"))
    want = reference_attention_varlen(q, k, v, case["cu"], case["mode"], case["src"])
    want.backward(case["do"])
    tol_f, tol_g = _tolerances(torch.float32)
    _assert_close(f"{case['name']} out", got["o"], want.detach(), tol_f)
    for g, ref in (("dq", q.grad), ("dk", k.grad), ("dv", v.grad)):
        _assert_close(f"{case['name']} {g}", got[g], ref, tol_g)


def test_output_dtype_and_layout(interp):
    for c in CASES:
        got = interp["cases"][c["name"]]
        assert got["o"].dtype == c["dtype"] and got["o"].shape == c["q"].shape
        assert got["dk"].shape == c["k"].shape and got["dk"].dtype == c["dtype"]


def test_dispatch_and_empty(interp):
    assert interp["dispatch_equal"], "unified_attention(backend='triton') differs from the kernel"
    assert interp["dispatch_backward"] == {"deterministic": True, "atomic_dq": True, "varlen_atomic_dq": True}
    assert interp["clamped_equal"], "seq_len > L (unchecked) must behave as seq_len = L"
    assert f"x {2**35} is too large" in interp["too_long"], interp["too_long"]
    assert "got 'fast'" in interp["bad_schedule"], interp["bad_schedule"]
    assert interp["empty_shape"] == (0, 2, 5, 16)


def test_second_derivatives_are_an_error(interp):
    """create_graph=True through the kernel, then a loss on the gradient: torch's
    once_differentiable error (before, the gradient came back detached and the penalty on it
    silently contributed nothing)."""
    assert "differentiate twice" in interp["double_backward"], interp["double_backward"]


def test_mask_args_must_have_batch_entries(interp):
    """backend='triton' rejects per-sample arguments whose length is not B (4 here), with
    and without check, before any launch (the kernel would index attn_mode[1..3])."""
    got = interp["batch_len"]
    assert "attn_mode has 1 entries but the batch has B = 4" in got["short"], got
    assert "attn_mode has 1 entries but the batch has B = 4" in got["short_unchecked"], got
    assert "attn_mode has 5 entries but the batch has B = 4" in got["long"], got
    assert "attn_mode has 1 entries but the batch has B = 4" in got["kernel_short"], got
    assert "but cu_seqlens describes N =" in got["kernel_varlen_short"], got


def _visited(lo: int, hi: int, step: int, nt: int) -> set[int]:
    return {t for t in range(nt) if lo <= t * step < hi}


@pytest.mark.parametrize("blocks", PROBE_BLOCKS, ids=[f"BM{m}_BN{n}" for m, n in PROBE_BLOCKS])
def test_tile_classification_is_exact(interp, blocks):
    """Against dense_mask: the loops visit exactly the tiles holding an allowed pair (fully
    masked tiles skipped, none missed), and "fully visible" is claimed exactly for tiles that
    are (claims must be true on the valid rows; tiles entirely inside the valid square must be
    recognised); the unmasked sub-loops [f0, f1) cover exactly the visited full tiles."""
    bm, bn = blocks
    pr = interp["probe"][blocks]
    nt = interp["probe_nt"]
    L = PROBE_L
    rows = interp["probe_rows"]
    masks = dense_mask(torch.tensor([r[0] for r in rows]), torch.tensor([r[1] for r in rows]), torch.tensor([r[2] for r in rows]), L)
    for c, (mode, src, seq) in enumerate(rows):
        m = masks[c]
        where = f"mode={mode} src={src} seq={seq} BM={bm} BN={bn}"
        full_all = pr["full"][c].bool()
        for t in range(nt):
            lo, hi, f0, f1 = pr["kv"][c, t].tolist()
            want = {u for u in range(nt) if m[t * bm : t * bm + bm, u * bn : u * bn + bn].any()}
            assert lo % bn == 0, where
            assert _visited(lo, hi, bn, nt) == want, f"kv tiles of query tile {t}: {where}"
            assert lo <= f0 <= f1 <= hi and (f0 % bn == 0 or f0 == hi) and (f1 % bn == 0 or f1 == hi), where
            assert _visited(f0, f1, bn, nt) == {u for u in want if full_all[t, u]}, f"full kv tiles of {t}: {where}"
            qlo, qhi, qf0, qf1 = pr["qr"][c, t].tolist()
            want_q = {s for s in range(nt) if m[s * bm : s * bm + bm, t * bn : t * bn + bn].any()}
            assert qlo % bm == 0, where
            assert _visited(qlo, qhi, bm, nt) == want_q, f"query tiles of kv tile {t}: {where}"
            assert qlo <= qf0 <= qf1 <= qhi and (qf0 % bm == 0 or qf0 == qhi) and (qf1 % bm == 0 or qf1 == qhi), where
            assert _visited(qf0, qf1, bm, nt) == {s for s in want_q if full_all[s, t]}, f"full q tiles of {t}: {where}"
            for u in range(nt):
                full = bool(pr["full"][c, t, u])
                m0, n0 = t * bm, u * bn
                block = m[m0 : min(m0 + bm, seq), n0 : n0 + bn]
                inside = m0 + bm <= seq and n0 + bn <= L
                if full:
                    assert n0 + bn <= seq and block.all(), f"tile ({t},{u}) wrongly full: {where}"
                elif inside:
                    assert not block.all(), f"tile ({t},{u}) fully visible but masked: {where}"


@pytest.mark.parametrize("blocks", PROBE_BLOCKS, ids=[f"BM{m}_BN{n}" for m, n in PROBE_BLOCKS])
def test_heavy_first_schedule(interp, blocks):
    """The programs at tile positions 0, 1, ... of a sample run a permutation of its tiles whose
    loop trip counts (key tiles a query tile visits, query tiles a key tile visits; the probe's
    ranges, checked exact above) never increase: the longest programs are dispatched first."""
    bm, bn = blocks
    pr = interp["probe"][blocks]
    nt = interp["probe_nt"]
    for c, (mode, src, seq) in enumerate(interp["probe_rows"]):
        where = f"mode={mode} src={src} seq={seq} BM={bm} BN={bn}"
        q_order, kv_order = pr["order"][c, :, 0].tolist(), pr["order"][c, :, 1].tolist()
        assert sorted(q_order) == list(range(nt)) and sorted(kv_order) == list(range(nt)), where
        q_trips = [len(_visited(*pr["kv"][c, t, :2].tolist(), bn, 10**6)) for t in q_order]
        kv_trips = [len(_visited(*pr["qr"][c, t, :2].tolist(), bm, 10**6)) for t in kv_order]
        assert q_trips == sorted(q_trips, reverse=True), f"query tiles {q_order} trips {q_trips}: {where}"
        assert kv_trips == sorted(kv_trips, reverse=True), f"key tiles {kv_order} trips {kv_trips}: {where}"


def test_single_loop_variant_gives_identical_results(interp):
    """SPLIT=False (one loop, the predicate per partial tile) = SPLIT=True, bitwise."""
    assert interp["single_loop_equal"] == {"mixed_L33_D32_gqa": True, "padding_L20_D16": True, "dropout_L33_D16_gqa": True,
                                           "packed": True}


def test_tile_orders_give_identical_results(interp):
    """Every schedule: bitwise the same output and gradients (padded and packed)."""
    assert interp["plain_order_equal"] == {"padded": True, "packed": True}


def test_bf16_needs_gpu(interp):
    if interp["bf16_dot_err"] > 1.0:
        pytest.skip(
            f"bf16 not checked on the CPU: Triton's interpreter computes tl.dot on bf16 wrongly "
            f"(error {interp['bf16_dot_err']:.3g} on a 16x16 product); bench/gpu_attention.py checks bf16 on a GPU"
        )
    pytest.fail("the interpreter's bf16 dot works now: add a bf16 case to CASES")



# --------------------------------------------------------------------------------------------
# bench/gpu_attention.py's checks of the atomic-dQ backward, on a stand-in kernel module (the
# reference attention, whose atomic path can be made to differ as a GPU's would): what a GPU
# run reports must not depend on the interpreter's single tile config
# --------------------------------------------------------------------------------------------
BENCH = Path(__file__).resolve().parents[1] / "bench" / "gpu_attention.py"


def _bench_module():
    import importlib.util  # noqa: PLC0415

    if not BENCH.is_file():
        pytest.skip("bench/ is not beside the tests (not a source checkout)")
    spec = importlib.util.spec_from_file_location("_gpu_attention_under_test", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class _LastBit(torch.autograd.Function):
    """Identity whose backward adds one ulp to the smallest nonzero gradient entry: a dK/dV that
    is right but not bitwise the default backward's (as with the fused kernel's own tiles)."""

    @staticmethod
    def forward(ctx, x):  # noqa: D102
        return x.clone()

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        g = g.contiguous().clone()
        flat = g.view(-1)
        i = int(flat.abs().masked_fill(flat == 0, float("inf")).argmin())
        flat.view(torch.int16 if g.dtype == torch.float16 else torch.int32)[i] += 1
        return g


class Autotuner:  # the bench recognises Triton's autotuners by their class name
    def __init__(self):
        self.cache: dict = {}
        self.configs_timings: dict = {}


def _stub_kernels(atomic_dkdv: str = "last_bit"):
    """A kernel module for the bench: both backwards are the reference attention's; the atomic
    one's dK/dV get ``_LastBit`` (``"last_bit"``) or get it on every other call only
    (``"flaky"``: not reproducible). Its ``_attn_bwd_fused`` "tunes" on each new length."""
    from types import SimpleNamespace  # noqa: PLC0415

    fused, calls = Autotuner(), [0]

    def attention(q, k, v, mode, src, seq, scale=None, dropout_p=0.0, seed=None, schedule="heavy_first", backward="deterministic"):
        if backward == "atomic_dq":
            calls[0] += 1
            fused.cache[(q.shape[-1], q.shape[2])] = "BLOCK_M: 32, BLOCK_N: 128"
            if atomic_dkdv == "last_bit" or calls[0] % 2:
                k, v = _LastBit.apply(k), _LastBit.apply(v)
        return reference_attention(q, k, v, mode, src, seq, scale)

    return SimpleNamespace(attention=attention, SCHEDULES=("heavy_first",), BACKWARDS=("deterministic", "atomic_dq"),
                           _attn_bwd_fused=fused)


def _bench_correctness(tmp_path, monkeypatch, K) -> list[dict]:
    import unimask.attention as attention  # noqa: PLC0415
    import unimask.masks as masks  # noqa: PLC0415

    mod = _bench_module()
    for name in ("dropout_check", "varlen_check", "packed_model_check"):  # they need the real kernels
        monkeypatch.setattr(mod, name, lambda *a, **kw: None)
    res = mod.Results(tmp_path)
    mod.correctness(torch, masks, attention, K, res, True, mod.Dev(torch, True))
    return [r for r in res.data["correctness"] if "deterministic" in r]


def test_bench_atomic_check_does_not_require_the_default_backwards_dkdv_bits(tmp_path, monkeypatch):
    """On a GPU the fused kernel's dK/dV are not bitwise the default dK/dV kernel's (other tiles;
    compiled for sm_90 the default kernel's fully visible loop computes exp2(fma(s, qk, -lse)),
    a single loop rounds s * qk first): the bench must judge them by the error criterion and by
    reproducibility, not by equality with the default backward."""
    rows = _bench_correctness(tmp_path, monkeypatch, _stub_kernels("last_bit"))
    assert len(rows) == 2, rows  # the dry run's fp16 and fp32 cases
    for r in rows:
        assert r["atomic_dq_pass"] and r["pass"], r
        assert r.get("atomic_dkdv_bitwise_default") is False and r.get("atomic_dkdv_reproducible") is True, r


def test_bench_atomic_check_requires_reproducible_dkdv(tmp_path, monkeypatch):
    """dK/dV of the atomic-dQ backward use no atomics: two runs must agree bitwise."""
    rows = _bench_correctness(tmp_path, monkeypatch, _stub_kernels("flaky"))
    assert rows and all(not r["atomic_dq_pass"] and not r["pass"] and r.get("atomic_dkdv_reproducible") is False for r in rows), rows



def test_bench_records_the_fused_kernels_tuning_of_each_shape(tmp_path):
    """The atomic-dQ kernel tunes in the unimask_atomic run (after the unimask one): its row must
    hold the autotuners' record, with this shape's choice (the last shape's was never recorded)."""
    import unimask.masks as masks  # noqa: PLC0415

    mod = _bench_module()
    K = _stub_kernels()
    res = mod.Results(tmp_path)
    mod.bench(torch, None, masks, K, res, 120.0, True, mod.Dev(torch, True), packed=False, only=[(32, 16, "l2r")])
    row = res.data["bench"][0]
    assert row["unimask_atomic"]["autotune"]["_attn_bwd_fused"]["tuned"] == {"(16, 32)": "BLOCK_M: 32, BLOCK_N: 128"}, row
    assert row["unimask"]["autotune"]["_attn_bwd_fused"]["tuned"] == {}  # recorded before the atomic run tuned


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "--worker":
    # Worker-only kernels. Triton's interpreter re-executes a kernel's source with its module
    # globals (not closures), so they and ``K`` live at module level, in the child only.
    import triton
    import triton.language as tl

    from unimask.kernels import unified_attention as K

    @triton.jit
    def probe(MODE, SRC, SEQ, KV, QR, FULL, ORD, NT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        """Per tile: the loop range [lo, hi) and its fully-visible part [f0, f1), both directions;
        the heavy-first schedule: the query / key tile run at position t."""
        c = tl.program_id(0)
        mode = tl.load(MODE + c)
        src = tl.load(SRC + c)
        seq = tl.load(SEQ + c)
        for t in tl.static_range(NT):
            lo, hi = K._kv_range(mode, src, seq, t * BLOCK_M, t * BLOCK_M + BLOCK_M, BLOCK_N)
            f0, f1 = K._full_kv_tiles(mode, src, seq, t * BLOCK_M, t * BLOCK_M + BLOCK_M, lo, hi, BLOCK_N)
            tl.store(KV + (c * NT + t) * 4, lo)
            tl.store(KV + (c * NT + t) * 4 + 1, hi)
            tl.store(KV + (c * NT + t) * 4 + 2, f0)
            tl.store(KV + (c * NT + t) * 4 + 3, f1)
            qlo, qhi = K._q_range(mode, src, seq, t * BLOCK_N, t * BLOCK_N + BLOCK_N, BLOCK_M)
            qf0, qf1 = K._full_q_tiles(mode, src, seq, t * BLOCK_N, t * BLOCK_N + BLOCK_N, qlo, qhi, BLOCK_M)
            tl.store(QR + (c * NT + t) * 4, qlo)
            tl.store(QR + (c * NT + t) * 4 + 1, qhi)
            tl.store(QR + (c * NT + t) * 4 + 2, qf0)
            tl.store(QR + (c * NT + t) * 4 + 3, qf1)
            tl.store(ORD + (c * NT + t) * 2, K._q_tile(t, mode, seq, BLOCK_M, 1))
            tl.store(ORD + (c * NT + t) * 2 + 1, K._kv_tile(t, mode, seq, BLOCK_N, 1))
            for u in tl.static_range(NT):
                f = K._tile_is_full(mode, src, seq, t * BLOCK_M, t * BLOCK_M + BLOCK_M, u * BLOCK_N, u * BLOCK_N + BLOCK_N)
                tl.store(FULL + (c * NT + t) * NT + u, f.to(tl.int32))

    @triton.jit
    def dropout_keep(OUT, seed, p, L, BL: tl.constexpr):
        """The kernel's dropout keep-mask over a whole [L, L] (b, h) slice, one tile."""
        bh = tl.program_id(0)
        i = tl.arange(0, BL)
        keep = K._dropout_keep(seed, p, bh.to(tl.int64) * L, L, i[:, None], i[None, :])
        ok = (i[:, None] < L) & (i[None, :] < L)
        tl.store(OUT + bh * L * L + i[:, None] * L + i[None, :], keep.to(tl.int8), mask=ok)

    @triton.jit
    def dot16(X, Y, Z):
        o = tl.arange(0, 16)
        x = tl.load(X + o[:, None] * 16 + o[None, :])
        y = tl.load(Y + o[:, None] * 16 + o[None, :])
        tl.store(Z + o[:, None] * 16 + o[None, :], tl.dot(x, y))

    _worker(sys.argv[2], sys.argv[3])
