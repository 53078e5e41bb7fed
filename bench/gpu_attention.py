#!/usr/bin/env python3
"""One prepared GPU run for unimask's fused attention: correctness, then the benchmark table.

Run from the repository root on a CUDA machine (see bench/gpu_check.sh, which wraps this)::

    python3 bench/gpu_attention.py [--out DIR] [--budget-s 420] [--quick]

Nothing needs installing: the script puts ``python/`` first on ``sys.path`` and imports
``unimask.masks``, ``unimask.attention`` and ``unimask.kernels.unified_attention`` from the
working tree. ``unimask/__init__.py`` imports the Rust extension ``unimask._native``, which a
GPU machine without a Rust toolchain does not have; when that import fails, the script
registers a stub ``unimask`` package (a bare module whose ``__path__`` is ``python/unimask``)
so the pure-Python submodules import without running ``__init__.py``.

Sections (each backend of each section runs under try/except and reports its error, so one
failure never hides the rest):

1. environment: Python, torch, triton, GPU, FlexAttention availability;
2. correctness: kernel vs a high-precision reference (fp64 for short L, fp32 for long L) for
   bf16/fp16, D 64/128, mixed modes, odd L, GQA, forward and dQ/dK/dV; pass when the kernel's
   error is at most 2x the error of PyTorch computing the same reference in the low precision
   (+1e-3), the FlashAttention test criterion; padded rows exactly zero; bitwise determinism;
3. benchmark (bf16, H=16, B*L = 16384 tokens, L 512..4096, D 64/128, batches mixing all four
   modes in UNILM's 1/3 bidirectional, 1/3 seq2seq, 1/6 left_to_right, 1/6 right_to_left
   proportions, seq_len in [L/2, L]): forward and forward+backward TFLOP/s and peak memory of
   unimask vs SDPA with the dense boolean mask vs FlexAttention (create_block_mask BLOCK 128 +
   torch.compile'd flex_attention; block-mask build time separately and included) and, on a
   left_to_right-only batch with no padding, vs SDPA ``is_causal=True``. unimask is timed
   with both backwards: the default (deterministic) one and ``backward="atomic_dq"`` (column
   ``unimask_atomic``, its own table; ``--no-atomic`` drops it); correctness checks both.

FLOPs count only unmasked work: fwd = 4 * D * H * sum_b(allowed (i, j) pairs of sample b)
(two matmuls, 2 flops per multiply-add); bwd = 2.5 x fwd (five matmuls instead of two, as in
FlashAttention's benchmarks); fwd+bwd = 3.5 x fwd. Every backend is credited with the same
useful FLOPs, whatever it actually computes.

Output: a markdown table on stdout, and ``gpu_attention.json`` in ``--out`` (default ``$OUT``
or ``./gpu_results``), rewritten after every measurement so a killed run keeps its numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import platform
import sys
import time
import traceback
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY_SRC = ROOT / "python"
T0 = time.time()


def log(*a) -> None:
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


class Dev:
    """The device and its timing/memory calls; ``dry`` = CPU rehearsal under Triton's interpreter
    (tiny shapes, fp32, wall-clock timing, no memory stats) that exercises every code path."""

    def __init__(self, torch, dry: bool):
        self.torch, self.dry = torch, dry
        self.name = "cpu" if dry else "cuda"
        self.lowp = torch.float32 if dry else torch.bfloat16

    def sync(self) -> None:
        if not self.dry:
            self.torch.cuda.synchronize()

    def empty_cache(self) -> None:
        if not self.dry:
            self.torch.cuda.empty_cache()

    def bench_ms(self, fn, grad_to_none=None) -> float:
        if not self.dry:
            from triton.testing import do_bench

            return do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none)
        fn()
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3

    def queued_ms(self, fn, n: int = 10) -> tuple[float, float]:
        """(device ms, host ms) per call of ``fn``, the calls queued behind a GPU sleep.

        The device sleeps while the host queues ``n`` calls, so the device then runs them back
        to back: the events around them time the device work alone, with no gaps where it waits
        for the host (launch overhead, Python, autograd); the host clock times the queueing, i.e.
        what one call costs the CPU. A sleep too short to cover the queueing is doubled and the
        measurement repeated. Median of 3. Dry run: wall-clock ms for both."""
        if self.dry:
            t = time.perf_counter()
            fn()
            ms = (time.perf_counter() - t) * 1e3
            return ms, ms
        torch = self.torch
        fn()
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        per_call_s = time.perf_counter() - t
        cycles = int(min(4e9, max(2e7, per_call_s * n * 3 * 2e9)))  # ~3x the queueing at ~2 GHz
        dev_ms, host_ms = [], []
        tries = 0
        while len(dev_ms) < 3 and tries < 8:
            tries += 1
            s0, a, b = (torch.cuda.Event(enable_timing=True) for _ in range(3))
            torch.cuda.synchronize()
            t_q = time.perf_counter()
            s0.record()
            torch.cuda._sleep(cycles)
            a.record()
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            t1 = time.perf_counter()
            b.record()
            torch.cuda.synchronize()
            if (t1 - t_q) * 1e3 > 0.9 * s0.elapsed_time(a):  # the device woke before the queue was full
                cycles *= 2
                continue
            dev_ms.append(a.elapsed_time(b) / n)
            host_ms.append((t1 - t0) * 1e3 / n)
        if not dev_ms:
            raise RuntimeError("queued timing: the GPU sleep never covered the host's queueing")
        return sorted(dev_ms)[len(dev_ms) // 2], sorted(host_ms)[len(host_ms) // 2]

    def peak_mem_mib(self, fn) -> float | None:
        if self.dry:
            fn()
            return None
        torch = self.torch
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20


# --------------------------------------------------------------------------------------------
# imports: torch/triton (report when missing), unimask from the working tree
# --------------------------------------------------------------------------------------------
def import_unimask(interpret: bool = False):
    """Import masks, attention and the kernel module from ``python/`` (stub package if needed)."""
    sys.path.insert(0, str(PY_SRC))
    if interpret:
        os.environ["TRITON_INTERPRET"] = "1"  # CPU rehearsal (--dry-run-cpu)
    else:
        os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU, never interpret
    try:
        import unimask  # noqa: F401 - runs __init__, which needs unimask._native

        how = "package import (unimask._native present)"
    except ImportError as e:
        for name in [n for n in sys.modules if n == "unimask" or n.startswith("unimask.")]:
            del sys.modules[name]
        pkg = types.ModuleType("unimask")
        pkg.__path__ = [str(PY_SRC / "unimask")]
        pkg.__file__ = str(PY_SRC / "unimask" / "__init__.py")
        sys.modules["unimask"] = pkg
        how = f"stub package (unimask/__init__.py not run: {e})"
    masks = importlib.import_module("unimask.masks")
    attention = importlib.import_module("unimask.attention")
    kernel = importlib.import_module("unimask.kernels.unified_attention")
    return masks, attention, kernel, how


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
class Results:
    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.data: dict = {"env": {}, "correctness": [], "bench": [], "errors": [], "notes": []}
        out_dir.mkdir(parents=True, exist_ok=True)

    def save(self) -> None:
        path = self.out_dir / "gpu_attention.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        tmp.replace(path)

    def error(self, where: str, exc: BaseException) -> str:
        msg = f"{type(exc).__name__}: {exc}"
        self.data["errors"].append({"where": where, "error": msg, "trace": traceback.format_exc()[-4000:]})
        log(f"ERROR in {where}: {msg}")
        self.save()
        return msg


@contextlib.contextmanager
def correctness_case(res: "Results", name: str):
    """One correctness row: yields ``{"case": name}`` for the check to fill (``pass`` and its
    numbers); an exception inside is recorded as the row's error (a failed row) instead of
    ending the run; the row is then appended to the results and saved."""
    row: dict = {"case": name}
    try:
        yield row
    except Exception as e:  # noqa: BLE001 - report and go on
        row["error"] = res.error(f"correctness {name}", e)
        row["pass"] = False
    res.data["correctness"].append(row)
    res.save()


def forward_backward(fn, q, k, v, do, dtype=None) -> list:
    """``fn(q, k, v)`` on fresh leaf copies of ``q, k, v`` (cast to ``dtype`` when given) and its
    backward with ``do`` (cast likewise): ``[output, dq, dk, dv]``."""
    leaves = [t.detach().to(dtype or t.dtype).clone().requires_grad_() for t in (q, k, v)]
    o = fn(*leaves)
    o.backward(do if dtype is None else do.to(dtype))
    return [o.detach(), *(t.grad for t in leaves)]


def make_batch(torch, B: int, L: int, seed: int, modes: list[int] | None = None, full: bool = False):
    """Per-sample (mode, src_len, seq_len) for a batch mixing the modes in UNILM proportions."""
    g = torch.Generator().manual_seed(seed)
    if modes is None:
        cycle = [0, 3, 0, 3, 1, 2]  # 1/3 bi, 1/3 seq2seq, 1/6 l2r, 1/6 r2l
        modes = [cycle[(b + seed) % 6] for b in range(B)]
    mode = torch.tensor(modes, dtype=torch.int32)
    if full:
        seq = torch.full((B,), L, dtype=torch.int32)
    else:
        seq = torch.randint(L // 2, L + 1, (B,), generator=g, dtype=torch.int32)
        seq[0] = L
    frac = torch.rand(B, generator=g) * 0.6 + 0.2
    src = (seq.float() * frac).to(torch.int32).clamp(min=1)
    src = torch.minimum(src, seq)
    return mode, src, seq


def allowed_pairs(masks, mode, src, seq, L: int) -> int:
    return int(masks.dense_mask(mode, src, seq, L).sum())


def sdpa_mask_fn(torch, masks, mode, src, seq, L, device):
    """SDPA with the dense boolean mask; rows with no key are given one so SDPA does not NaN,
    and their output is zeroed, matching unimask's semantics."""
    F = torch.nn.functional
    m = masks.dense_mask(mode, src, seq, L).to(device)[:, None]
    row_ok = m.any(-1, keepdim=True)
    m = m | ~row_ok

    def fn(q, k, v):
        gqa = k.shape[1] != q.shape[1]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=m, enable_gqa=gqa) if gqa else F.scaled_dot_product_attention(q, k, v, attn_mask=m)
        return out * row_ok

    return fn, m.numel() * m.element_size()


def flex_setup(torch, mode, src, seq, L, B, device, compiled_flex):
    from torch.nn.attention.flex_attention import create_block_mask

    mode_t, src_t, seq_t = (t.to(device=device, dtype=torch.int64) for t in (mode, src, seq))

    def mask_mod(b, h, q_idx, kv_idx):
        m = mode_t[b]
        s = src_t[b]
        n = seq_t[b]
        rule = (m == 0) | ((m == 1) & (kv_idx <= q_idx)) | ((m == 2) & (kv_idx >= q_idx))
        rule = rule | ((m == 3) & (((q_idx < s) & (kv_idx < s)) | ((q_idx >= s) & (kv_idx <= q_idx))))
        return rule & (q_idx < n) & (kv_idx < n)

    def build():
        try:
            return create_block_mask(mask_mod, B, None, L, L, device=device, BLOCK_SIZE=128, _compile=True)
        except TypeError:  # torch without the _compile argument
            return create_block_mask(mask_mod, B, None, L, L, device=device, BLOCK_SIZE=128)

    block_mask = build()

    def fn(q, k, v, bm=None):
        gqa = k.shape[1] != q.shape[1]
        return compiled_flex(q, k, v, block_mask=bm or block_mask, enable_gqa=gqa)

    return fn, build


def time_host(dev: Dev, fn, reps: int = 5) -> float:
    """Median milliseconds of a call that mixes host and device work (block-mask build)."""
    fn()
    ts = []
    for _ in range(reps):
        dev.sync()
        t = time.perf_counter()
        fn()
        dev.sync()
        ts.append((time.perf_counter() - t) * 1e3)
    return sorted(ts)[len(ts) // 2]


# --------------------------------------------------------------------------------------------
# 2. correctness
# --------------------------------------------------------------------------------------------
_KMOD = None  # the kernel module, set by main(); read by the dropout keep-mask kernel below


def make_keep_kernel():
    """A kernel that writes the attention kernel's dropout keep-mask (same Philox function)."""
    import triton
    import triton.language as tl

    globals()["tl"] = tl  # the JIT resolves names from this module's globals

    @triton.jit(do_not_specialize=["seed"])
    def dropout_keep(OUT, seed, p, L, BL: tl.constexpr):
        bh = tl.program_id(0)
        i0 = tl.program_id(1) * BL
        i = i0 + tl.arange(0, BL)
        for j0 in range(0, L, BL):
            j = j0 + tl.arange(0, BL)
            keep = _KMOD._dropout_keep(seed, p, bh.to(tl.int64) * L, L, i[:, None], j[None, :])
            ok = (i[:, None] < L) & (j[None, :] < L)
            tl.store(OUT + bh.to(tl.int64) * L * L + i[:, None] * L + j[None, :], keep.to(tl.int8), mask=ok)

    return dropout_keep


def reference_with_keep(torch, masks, q, k, v, mode, src, seq, keep, p):
    B, H, L, D = q.shape
    mask = masks.dense_mask(mode, src, seq, L).to(q.device)[:, None]
    k, v = (t.repeat_interleave(H // k.shape[1], dim=1) for t in (k, v))
    s = q @ k.transpose(-1, -2) / math.sqrt(D)
    row = mask.any(-1, keepdim=True)
    probs = torch.softmax(s.masked_fill(~mask, float("-inf")).masked_fill(~row, 0.0), dim=-1) * row
    return (probs * keep / (1.0 - p)) @ v


def pack(torch, t, seq):
    """[B, H, L, D] -> [sum(seq), H, D]: the valid rows of each sample, concatenated."""
    return torch.cat([t[b, :, : int(seq[b])].transpose(0, 1) for b in range(t.shape[0])])


def varlen_check(torch, attention, K, res: "Results", D_: Dev) -> None:
    """Packed rows (cu_seqlens) vs the reference run document by document."""
    dev = D_.name
    dt = D_.lowp
    B, H, HK, L, D = (8, 4, 2, 300, 64) if not D_.dry else (4, 2, 1, 33, 16)
    name = f"varlen {str(dt).split('.')[-1]} D{D} docs{B} max{L} H{H} Hkv{HK}"
    with correctness_case(res, name) as row:
        mode, src, seq = make_batch(torch, B, L, seed=5)
        mode[1], seq[1], src[1] = 0, 0, 0
        cu = torch.tensor([0, *seq.cumsum(0).tolist()])
        T = int(cu[-1])
        g = torch.Generator(device=dev).manual_seed(2)
        q = torch.randn(T, H, D, device=dev, generator=g).to(dt)
        k, v = (torch.randn(T, HK, D, device=dev, generator=g).to(dt) for _ in range(2))
        do = torch.randn(T, H, D, device=dev, generator=g).to(dt)

        got = forward_backward(lambda a, b, c: K.attention_varlen(a, b, c, cu.to(dev), mode.to(dev), src.to(dev), L), q, k, v, do, dt)
        ref = forward_backward(lambda a, b, c: attention.reference_attention_varlen(a, b, c, cu, mode, src), q, k, v, do, torch.float64)
        lowp = forward_backward(lambda a, b, c: attention.reference_attention_varlen(a, b, c, cu, mode, src), q, k, v, do, dt)
        ok = True
        for n, a, r, lo in zip(("out", "dq", "dk", "dv"), got, ref, lowp):
            err = (a.double() - r).abs().max().item()
            err_t = (lo.double() - r).abs().max().item()
            row[n] = {"max_err": err, "torch_lowp_err": err_t, "pass": err <= 2 * err_t + 1e-3}
            ok &= row[n]["pass"] and bool(torch.isfinite(a).all())
        row["pass"] = ok
        log(f"correctness {name}: {'PASS' if ok else 'FAIL'} " + " ".join(
            f"{n}={row[n]['max_err']:.2e}(torch {row[n]['torch_lowp_err']:.2e})" for n in ("out", "dq", "dk", "dv")))


def dropout_check(torch, masks, K, res: "Results", D_: Dev) -> None:
    dev = D_.name
    for dt in (D_.lowp,):
        B, H, HK, L, D, p, seed = (6, 4, 2, 300, 64, 0.1, 1234) if not D_.dry else (4, 2, 1, 33, 16, 0.1, 1234)
        name = f"dropout p={p} {str(dt).split('.')[-1]} D{D} L{L} B{B} H{H} Hkv{HK}"
        with correctness_case(res, name) as row:
            import triton

            mode, src, seq = make_batch(torch, B, L, seed=11)
            mode[1], seq[1], src[1] = 0, 0, 0
            g = torch.Generator(device=dev).manual_seed(1)
            q = torch.randn(B, H, L, D, device=dev, generator=g).to(dt)
            k, v = (torch.randn(B, HK, L, D, device=dev, generator=g).to(dt) for _ in range(2))
            do = torch.randn(B, H, L, D, device=dev, generator=g).to(dt)
            md, sd, qd = (t.to(dev) for t in (mode, src, seq))
            keep = torch.zeros(B * H, L, L, dtype=torch.int8, device=dev)
            bl = 16 if D_.dry else 64
            make_keep_kernel()[(B * H, triton.cdiv(L, bl))](keep, seed, p, L, BL=bl)
            keep = keep.view(B, H, L, L).to(torch.float64)

            got = forward_backward(lambda a, b, c: K.attention(a, b, c, md, sd, qd, None, p, seed), q, k, v, do, dt)
            ref = forward_backward(lambda a, b, c: reference_with_keep(torch, masks, a, b, c, mode, src, seq, keep, p),
                                   q, k, v, do, torch.float64)
            lowp = forward_backward(lambda a, b, c: reference_with_keep(torch, masks, a, b, c, mode, src, seq, keep.to(dt), p),
                                    q, k, v, do, dt)
            ok = True
            for n, a, r, lo in zip(("out", "dq", "dk", "dv"), got, ref, lowp):
                err = (a.double() - r).abs().max().item()
                err_t = (lo.double() - r).abs().max().item()
                row[n] = {"max_err": err, "torch_lowp_err": err_t, "pass": err <= 2 * err_t + 1e-3}
                ok &= row[n]["pass"]
            row["drop_rate"] = 1.0 - keep.mean().item()
            row["pass"] = ok and abs(row["drop_rate"] - p) < (0.01 if not D_.dry else 0.05)
            log(f"correctness {name}: {'PASS' if row['pass'] else 'FAIL'} drop rate {row['drop_rate']:.4f} " + " ".join(
                f"{n}={row[n]['max_err']:.2e}(torch {row[n]['torch_lowp_err']:.2e})" for n in ("out", "dq", "dk", "dv")))


def cuda_graph_check(torch, K, res: "Results", D_: Dev) -> None:
    """The kernels inside a captured CUDA graph (forward + backward, one ``torch.cuda.graph``).

    With dropout, the seed is drawn on the device in the graph (as ``attention(seed=None)``
    does) and the kernels read it from memory, so each replay must draw a new seed and give
    exactly what an eager call with that seed gives (output and the three gradients, bitwise:
    same kernels, same tile configs); without dropout a replay must equal the eager call bitwise.
    Dry run: the "replays" are plain calls (no CUDA graphs on the CPU); the comparisons are the same."""
    dev = D_.name
    B, H, HK, L, D = (4, 4, 2, 300, 64) if not D_.dry else (3, 2, 1, 33, 16)
    name = f"CUDA graph replay {str(D_.lowp).split('.')[-1]} D{D} L{L} B{B} H{H} Hkv{HK} (dropout 0.1 and 0)"
    with correctness_case(res, name) as row:
        mode, src, seq = make_batch(torch, B, L, seed=13)
        md, sd, qd = (t.to(device=dev, dtype=torch.int32) for t in (mode, src, seq))
        g = torch.Generator(device=dev).manual_seed(4)
        q = torch.randn(B, H, L, D, device=dev, generator=g).to(D_.lowp).requires_grad_()
        k, v = (torch.randn(B, HK, L, D, device=dev, generator=g).to(D_.lowp).requires_grad_() for _ in range(2))
        do = torch.randn(B, H, L, D, device=dev, generator=g).to(D_.lowp)

        def eager(p, seed):
            return forward_backward(lambda a, b, c: K.attention(a, b, c, md, sd, qd, None, p, seed), q, k, v, do)

        for p in (0.1, 0.0):
            box: dict = {}

            def step(p=p, box=box):  # what attention(seed=None) does, keeping the seed tensor
                for t in (q, k, v):
                    t.grad = None
                sm_scale, p_, seed_t = K._prepare(q, p, None, None)
                o = K._UnifiedAttention.apply(q, k, v, md, sd, qd, None, L, sm_scale, p_, seed_t, K._schedule("heavy_first"), False)
                o.backward(do)
                box.update(o=o, seed=seed_t)

            if D_.dry:
                replay = step
            else:
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):  # warm-up: compiles (and tunes) outside the capture
                    for _ in range(3):
                        step()
                torch.cuda.current_stream().wait_stream(side)
                for t in (q, k, v):
                    t.grad = None
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    step()
                replay = graph.replay
            runs = []
            for _ in range(3):
                replay()
                D_.sync()
                runs.append(dict(seed=None if box["seed"] is None else int(box["seed"].item()),
                                 got=[box["o"].detach().clone(), *(t.grad.clone() for t in (q, k, v))]))
            key = "dropout" if p > 0 else "no_dropout"
            equal = [all(torch.equal(a, b) for a, b in zip(r["got"], eager(p, r["seed"]))) for r in runs]
            row[key] = {"seeds": [r["seed"] for r in runs], "replays_equal_eager": equal}
            if p > 0:
                row[key]["new_seed_each_replay"] = len({r["seed"] for r in runs}) == len(runs)
        row["pass"] = (all(row["dropout"]["replays_equal_eager"]) and row["dropout"]["new_seed_each_replay"]
                       and all(row["no_dropout"]["replays_equal_eager"]))
        log(f"correctness {name}: {'PASS' if row['pass'] else 'FAIL'} dropout seeds {row['dropout']['seeds']} "
            f"replays = eager {row['dropout']['replays_equal_eager']}; no dropout replays = eager {row['no_dropout']['replays_equal_eager']}")


def compile_check(torch, attention, K, res: "Results", D_: Dev) -> None:
    """``torch.compile(fullgraph=True)`` over ``unified_attention`` on the kernel path (the
    ``unimask::attention_fwd`` / ``attention_bwd`` custom ops): one graph, and bitwise the eager
    kernel's output and gradients, with dropout 0 and 0.1 (``torch.manual_seed`` before each
    call: the compiled graph draws the seed from the same generator). AOTAutograd's eager
    backend, so the check does not wait on Inductor's compiles."""
    dev = D_.name
    B, H, HK, L, D = (4, 4, 2, 300, 64) if not D_.dry else (3, 2, 1, 33, 16)
    name = f"torch.compile fullgraph {str(D_.lowp).split('.')[-1]} D{D} L{L} B{B} H{H} Hkv{HK} (dropout 0 and 0.1)"
    with correctness_case(res, name) as row:
        mode, src, seq = make_batch(torch, B, L, seed=17)
        md, sd, qd = (t.to(dev) for t in (mode, src, seq))
        g = torch.Generator(device=dev).manual_seed(5)
        q = torch.randn(B, H, L, D, device=dev, generator=g).to(D_.lowp)
        k, v = (torch.randn(B, HK, L, D, device=dev, generator=g).to(D_.lowp) for _ in range(2))
        do = torch.randn(B, H, L, D, device=dev, generator=g).to(D_.lowp)

        def run(fn):
            torch.manual_seed(3)  # the dropout seed's draw
            return forward_backward(fn, q, k, v, do)

        ok = True
        for p in (0.0, 0.1):
            def call(a, b, c, p=p):
                return attention.unified_attention(a, b, c, md, sd, qd, dropout_p=p, backend="triton", check=False)

            torch._dynamo.reset()
            graphs = torch._dynamo.explain(call)(q, k, v).graph_count
            torch._dynamo.reset()
            got = run(torch.compile(call, fullgraph=True, backend="aot_eager"))
            want = run(call)
            equal = [bool(torch.equal(a, b)) for a, b in zip(got, want)]
            row[f"p={p}"] = {"graphs": graphs, "equal_eager": equal}
            ok &= graphs == 1 and all(equal)
        row["pass"] = ok
        log(f"correctness {name}: {'PASS' if ok else 'FAIL'} " + json.dumps({k: v for k, v in row.items() if k.startswith("p=")}))


def sync_check(torch, res: "Results", D_: Dev) -> None:
    """Device synchronisations of pretraining steps through the Trainer (UnifiedLM on the
    kernel path, and MassSeq2Seq; bf16, grad_accum 2, clipping on), counted with
    ``torch.cuda.set_sync_debug_mode("warn")`` over steps 3-4 (steps 1-2 compile and autotune
    the kernels, which synchronises). Expected: one per optimizer step, the read of the logged
    loss and grad norm; the mask validation and the MLM head's position selection read CPU
    tensors (``host_batch_keys``). Each warning's source line is recorded. Dry run: the steps
    run, nothing is counted (no CUDA).

    Third row: UnifiedLM under DDP, a single-process NCCL group (world 1; gloo in the dry run),
    initialised here and destroyed afterwards. DDP gets no ``device_ids`` (it then leaves the
    inputs alone), so the host fields stay on the CPU as in one process: no synchronisation from
    the model's code (mask validation, MLM positions). The Trainer's own per-step read under
    torch.distributed is 1 (``_logged_scalars``; ``_window_weights`` makes the loss weights on
    the device from the all-reduced target counts, no read), and DDP's reducer adds a
    blocking copy in a step where a parameter is locally unused: pass if none of the recorded
    sources is in unimask's code outside ``training.py`` and there are at most 2 per step."""
    import tempfile  # noqa: PLC0415
    import warnings  # noqa: PLC0415

    models = importlib.import_module("unimask.models")
    training = importlib.import_module("unimask.training")
    B, L, Ld, V = 4, 48, 12, 120
    cfg = models.EncoderConfig(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=128, max_position_embeddings=64, type_vocab_size=6)

    def unilm_batch(g):
        seq = torch.randint(L // 2, L + 1, (B,), generator=g)
        ids = torch.randint(5, V, (B, L), generator=g)
        am = (torch.arange(L)[None, :] < seq[:, None]).long()
        labels = torch.where((torch.rand(B, L, generator=g) < 0.15) & (am > 0), ids, -100)
        return {"input_ids": ids * am, "attention_mask": am, "labels": labels,
                "token_type_ids": torch.zeros(B, L, dtype=torch.long),
                "next_sentence_label": torch.tensor([1, 0, -100, -100]),
                "attn_mode": torch.tensor([0, 3, 1, 2]), "src_len": torch.tensor([0, L // 4, 0, 0]), "seq_len": seq}

    def mass_batch(g):
        seq = torch.randint(L // 2, L + 1, (B,), generator=g)
        am = (torch.arange(L)[None, :] < seq[:, None]).long()
        dlen = torch.randint(1, Ld + 1, (B,), generator=g)
        dmask = torch.arange(Ld)[None, :] < dlen[:, None]
        labels = torch.where(dmask, torch.randint(5, V, (B, Ld), generator=g), -100)
        return {"input_ids": torch.randint(5, V, (B, L), generator=g) * am, "attention_mask": am,
                "decoder_input_ids": torch.randint(5, V, (B, Ld), generator=g) * dmask,
                "decoder_positions": torch.arange(Ld).expand(B, Ld).clone(), "decoder_labels": labels, "decoder_len": dlen}

    dist = importlib.import_module("torch.distributed")
    unimask_dir = Path(training.__file__).resolve().parent
    ddp_label = f"UnifiedLM under DDP (world 1, {'gloo' if D_.dry else 'NCCL'})"
    for label, make_model, make_batch_ in (("UnifiedLM", lambda: models.UnifiedLM(cfg), unilm_batch),
                                           ("MassSeq2Seq", lambda: models.MassSeq2Seq(cfg), mass_batch),
                                           (ddp_label, lambda: models.UnifiedLM(cfg), unilm_batch)):
        ddp = label == ddp_label
        name = f"synchronisations per pretraining step (Trainer, {label}, grad_accum 2)"
        with correctness_case(res, name) as row, tempfile.TemporaryDirectory() as tmp:
            if ddp:
                dist.init_process_group("gloo" if D_.dry else "nccl", init_method=f"file://{tmp}/store",
                                        rank=0, world_size=1)
            torch.manual_seed(0)
            model = make_model()

            def batches(start, make_batch_=make_batch_):
                for i in range(start, 10**9):
                    if i == 4 and not D_.dry:  # steps 3 and 4 (micro-batches 4-7)
                        torch.cuda.set_sync_debug_mode("warn")
                    yield make_batch_(torch.Generator().manual_seed(i))

            tc = training.TrainingConfig(max_steps=4, grad_accum=2, grad_clip=1.0, progress=False,
                                         precision="fp32" if D_.dry else "bf16")
            try:
                trainer = training.Trainer(model, batches, tc, device=D_.name, log=lambda m: None)
                if ddp:
                    row["wrapped"] = type(trainer.wrapped).__name__
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    trainer.train()
            finally:
                if not D_.dry:
                    torch.cuda.set_sync_debug_mode(0)
                if ddp:
                    dist.destroy_process_group()
            caught = [w for w in caught if "synchroniz" in str(w.message)]
            syncs = [f"{Path(w.filename).name}:{w.lineno}" for w in caught]
            row["steps"] = trainer.state.step
            row["syncs_steps_3_4"] = None if D_.dry else len(syncs)
            row["sync_sources"] = sorted(set(syncs))
            if ddp:  # none from the model's code; the Trainer's 1 per step (+1 from DDP's reducer)
                model_syncs = [src for src, w in zip(syncs, caught) if Path(w.filename).resolve().is_relative_to(unimask_dir)
                               and Path(w.filename).name != "training.py"]
                row["model_syncs_steps_3_4"] = None if D_.dry else len(model_syncs)
                row["pass"] = (trainer.state.step == 4 and row["wrapped"] == "DistributedDataParallel"
                               and (D_.dry or (not model_syncs and len(syncs) <= 4)))
            else:
                row["pass"] = trainer.state.step == 4 and (D_.dry or len(syncs) <= 2)
            log(f"correctness {name}: {'PASS' if row['pass'] else 'FAIL'} syncs in steps 3-4: "
                f"{row['syncs_steps_3_4']} {row['sync_sources']}")


def packed_model_check(torch, res: "Results", D_: Dev) -> None:
    """A packed TransformerEncoder (cu_seqlens: the varlen kernel inside a model, on views of the
    fused QKV projection) against each document encoded alone, and against the same packed batch
    on the reference path; fp32 (exact fp32 dots), forward and every parameter's gradient.

    The loss is the output against a fixed random tensor: the output ends in a LayerNorm, so
    ``sum(out ** 2)`` would be a constant (zero gradient below it, leaving rounding noise to compare)."""
    name = "packed encoder (varlen in a model) vs documents alone and vs reference"
    with correctness_case(res, name) as row:
        models = importlib.import_module("unimask.models")
        dev = D_.name
        H, D = (2, 64) if not D_.dry else (2, 16)
        rows = [[37, 5, 120, 64], [1, 200]] if not D_.dry else [[7, 5, 9], [1, 12]]
        L = 256 if not D_.dry else 24
        lens = []
        for r in rows:
            lens += r + [L - sum(r)]
        cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()])
        g = torch.Generator().manual_seed(3)
        mode = torch.randint(0, 4, (len(lens),), generator=g)
        src = torch.tensor([int(torch.randint(0, n + 1, (1,), generator=g)) for n in lens])
        ids = torch.randint(5, 100, (len(rows), L), generator=g)

        def build(backend):
            torch.manual_seed(0)
            cfg = models.EncoderConfig(vocab_size=100, hidden_size=H * D, num_hidden_layers=2, num_attention_heads=H,
                                       intermediate_size=2 * H * D, max_position_embeddings=512, hidden_dropout_prob=0.0,
                                       attention_probs_dropout_prob=0.0, attention_backend=backend)
            return models.TransformerEncoder(cfg).to(dev)

        enc, ref = build("triton"), build("reference")
        proj = torch.randn(len(rows), L, H * D, generator=g).to(dev)
        outs = {}
        for tag, m in (("packed", enc), ("reference", ref)):
            out = m(ids.to(dev), attn_mode=mode.to(dev), src_len=src.to(dev), cu_seqlens=cu.to(dev)).last_hidden_state
            (out * proj).sum().backward()
            outs[tag] = (out.detach().reshape(-1, H * D), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
        alone = torch.zeros_like(outs["packed"][0])
        with torch.no_grad():
            flat = ids.reshape(-1)
            for d in range(len(lens)):
                a, b = int(cu[d]), int(cu[d + 1])
                if b > a:
                    alone[a:b] = enc(flat[a:b][None].to(dev), attn_mode=mode[d:d + 1].to(dev),
                                     src_len=src[d:d + 1].to(dev)).last_hidden_state[0]
        row["vs_alone_max_err"] = (outs["packed"][0] - alone).abs().max().item()
        row["vs_reference_max_err"] = (outs["packed"][0] - outs["reference"][0]).abs().max().item()
        gref = outs["reference"][1]
        rel = {n: ((outs["packed"][1][n] - g_).abs().max() / g_.abs().max()).item() for n, g_ in gref.items()}
        worst = max(rel, key=rel.get)
        row["grad_vs_reference_rel_err"], row["grad_worst_param"] = rel[worst], worst
        row["pass"] = max(row["vs_alone_max_err"], row["vs_reference_max_err"]) < 1e-3 and rel[worst] < 1e-4 and len(rel) > 10
        log(f"correctness {name}: {'PASS' if row['pass'] else 'FAIL'} vs alone {row['vs_alone_max_err']:.2e} "
            f"vs reference {row['vs_reference_max_err']:.2e} grad (relative, worst of {len(rel)}: {worst}) {rel[worst]:.2e}")


def checkpoint_check(torch, res: "Results", D_: Dev) -> None:
    """Activation checkpointing (``unimask.set_gradient_checkpointing``) on the kernel path with
    dropout 0.1: a UnifiedLM training step with it gives bitwise the loss and every gradient of
    the step without it (the recomputation restores the CUDA RNG, so the kernel's seed tensor is
    drawn again the same), each layer runs twice (forward, recomputation), and the peak CUDA
    memory of the step (``max_memory_allocated`` above the model's) is recorded both ways."""
    name = "activation checkpointing on the kernel path (UnifiedLM step, dropout 0.1)"
    with correctness_case(res, name) as row:
        models = importlib.import_module("unimask.models")
        dev = D_.name
        B, L, Hd, nl, nh = (8, 1024, 512, 6, 8) if not D_.dry else (3, 24, 32, 2, 2)
        V = 1000
        cfg = models.EncoderConfig(vocab_size=V, hidden_size=Hd, num_hidden_layers=nl, num_attention_heads=nh,
                                   intermediate_size=4 * Hd, max_position_embeddings=max(64, L), type_vocab_size=6,
                                   attention_backend="triton")
        torch.manual_seed(0)
        model = models.UnifiedLM(cfg).to(dev).train()
        g = torch.Generator().manual_seed(4)
        mode, src, seq = make_batch(torch, B, L, seed=21)
        ids = torch.randint(5, V, (B, L), generator=g)
        labels = torch.where(torch.rand(B, L, generator=g) < 0.15, ids, -100)
        batch = {"input_ids": ids.to(dev), "labels": labels, "attn_mode": mode, "src_len": src, "seq_len": seq}
        layers = [m for m in model.modules() if type(m).__name__ == "EncoderLayer"]
        calls = [0]
        hooks = [m.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1)) for m in layers]

        def step():
            model.zero_grad(set_to_none=True)
            D_.sync()
            if not D_.dry:
                torch.cuda.reset_peak_memory_stats()
            base = 0 if D_.dry else torch.cuda.memory_allocated()
            calls[0] = 0
            torch.manual_seed(11)
            with torch.autocast(dev, dtype=torch.bfloat16, enabled=not D_.dry):
                loss = model(**batch).loss
            loss.backward()
            D_.sync()
            peak = None if D_.dry else (torch.cuda.max_memory_allocated() - base) / 2**20
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            return loss.detach(), grads, calls[0], peak

        step()  # compiles and autotunes the kernels outside the comparison
        want_loss, want, plain_calls, plain_peak = step()
        again_loss, again, _, _ = step()  # the plain step repeats bitwise (else a mismatch below is not checkpointing's)
        models.set_gradient_checkpointing(model)
        got_loss, got, ckpt_calls, ckpt_peak = step()
        for h in hooks:
            h.remove()

        def same(a_loss, a, b_loss, b):
            return bool(torch.equal(a_loss, b_loss)) and a.keys() == b.keys() and all(torch.equal(a[n], w) for n, w in b.items())

        row["plain_step_repeats_bitwise"] = same(again_loss, again, want_loss, want)
        equal = same(got_loss, got, want_loss, want)
        row.update(loss_and_grads_bitwise_equal=equal, layer_calls=[plain_calls, ckpt_calls],
                   peak_mib_plain=plain_peak, peak_mib_checkpointed=ckpt_peak, shape=f"B{B} L{L} hidden {Hd} layers {nl}")
        row["pass"] = equal and plain_calls == nl and ckpt_calls == 2 * nl
        log(f"correctness {name}: {'PASS' if row['pass'] else 'FAIL'} bitwise={equal} "
            f"(plain step repeats bitwise: {row['plain_step_repeats_bitwise']}) layer calls "
            f"{plain_calls}/{ckpt_calls} peak MiB plain {plain_peak} checkpointed {ckpt_peak} ({row['shape']})")


def _error_bound(torch_lowp_err: float | None, ref_max: float) -> float:
    """Largest error the kernel may have against the high-precision reference: 2x PyTorch's own
    error computing it in the low precision, + 1e-3 (FlashAttention's criterion); fp32 inputs
    (no low-precision reference): 1e-4 + 1e-4 * max |reference|."""
    return 2 * torch_lowp_err + 1e-3 if torch_lowp_err is not None else 1e-4 + 1e-4 * ref_max


#: The correctness sections, in the order they run (``--checks`` picks some).
CHECKS = ("kernel", "dropout", "graph", "compile", "syncs", "checkpoint", "varlen", "packed_model", "flex")


def correctness(torch, masks, attention, K, res: Results, quick: bool, D_: Dev, tuned_only: bool = False,
                checks: tuple[str, ...] = CHECKS) -> None:
    """Kernel vs reference. ``tuned_only``: after the benchmark, with the configs it tuned
    (bf16, the benchmark's dtype, only; no dropout / packed / FlexAttention checks).
    ``checks``: the sections of :data:`CHECKS` to run."""
    dev = D_.name
    cases = []
    if D_.dry:  # the interpreter: fp32 and fp16 (its bf16 dot is broken), tiny shapes
        cases.append(dict(dtype=torch.float16, D=16, L=33, B=6, H=2, HK=1, hi=torch.float64))
    else:
        for dt in (torch.bfloat16,) if tuned_only else (torch.bfloat16, torch.float16):
            for D in (64, 128):
                cases.append(dict(dtype=dt, D=D, L=257, B=8, H=4, HK=2, hi=torch.float64))
                if not quick:
                    cases.append(dict(dtype=dt, D=D, L=1000, B=4, H=4, HK=4, hi=torch.float32))
    if not tuned_only:
        cases.append(dict(dtype=torch.float32, D=64 if not D_.dry else 32, L=200 if not D_.dry else 40, B=6, H=2, HK=1, hi=torch.float64))
    if "kernel" not in checks:
        cases = []
    for c in cases:
        name = f"{str(c['dtype']).split('.')[-1]} D{c['D']} L{c['L']} B{c['B']} H{c['H']} Hkv{c['HK']}" + (" tuned" if tuned_only else "")
        with correctness_case(res, name) as row:
            B, H, HK, L, D, dt = c["B"], c["H"], c["HK"], c["L"], c["D"], c["dtype"]
            mode, src, seq = make_batch(torch, B, L, seed=7)
            # edge cases: a fully padded sample, seq_len 1, src_len 1 and src_len = seq_len
            mode[1], seq[1], src[1] = 0, 0, 0
            mode[2], seq[2], src[2] = 2, 1, 1
            mode[3], src[3] = 3, 1
            if B > 4:
                mode[4], src[4] = 3, int(seq[4])
                mode[5] = 1
            g = torch.Generator(device=dev).manual_seed(0)
            q = torch.randn(B, H, L, D, device=dev, generator=g).to(dt)
            k = torch.randn(B, HK, L, D, device=dev, generator=g).to(dt)
            v = torch.randn(B, HK, L, D, device=dev, generator=g).to(dt)
            do = torch.randn(B, H, L, D, device=dev, generator=g).to(dt)
            mode_d, src_d, seq_d = (t.to(dev) for t in (mode, src, seq))

            def run(fn, qq, kk, vv, ddo):
                return forward_backward(lambda a, b, c: fn(a, b, c, mode_d, src_d, seq_d), qq, kk, vv, ddo)

            got = run(K.attention, q, k, v, do)
            again = run(K.attention, q, k, v, do)
            ref_hi = run(attention.reference_attention, q.to(c["hi"]), k.to(c["hi"]), v.to(c["hi"]), do.to(c["hi"]))
            ref_lo = run(attention.reference_attention, q, k, v, do) if dt != torch.float32 else None
            ok = True
            for n, a, r, lo in zip(("out", "dq", "dk", "dv"), got, ref_hi, ref_lo or [None] * 4):
                err = (a.to(r.dtype) - r).abs().max().item()
                scale = r.abs().max().item()
                err_torch = (lo.to(r.dtype) - r).abs().max().item() if lo is not None else None
                passed = err <= _error_bound(err_torch, scale)
                row[n] = {"max_err": err, "torch_lowp_err": err_torch, "ref_max": scale, "pass": passed}
                ok &= passed and bool(torch.isfinite(a).all())
            pad_zero = all(
                not t[b, :, int(seq[b]):].any() for t in got for b in range(B)
            )
            row["padding_exact_zero"] = pad_zero
            row["deterministic"] = all(torch.equal(a, b) for a, b in zip(got, again))
            # every tile schedule runs the same tiles with the same arithmetic: bitwise equal
            # (checked on the first case: each schedule compiles its own kernels)
            row["schedules_equal"] = c is not cases[0] or all(
                torch.equal(a, b)
                for sc in getattr(K, "SCHEDULES", ())[1:]
                for a, b in zip(got, run(lambda *a, sc=sc: K.attention(*a, schedule=sc), q, k, v, do))
            )
            # the atomic-dQ backward: every gradient by the same criterion, padded rows zero,
            # dK/dV bitwise reproducible (no atomics; run twice). Bitwise equality with the
            # default backward's dK/dV is recorded, not required: it holds under the interpreter
            # (one fixed tile config) but not on a GPU, where the fused kernel runs its own tiles
            # (bwd_fused_configs, single loop) and, compiled for sm_90, the default dK/dV kernel's
            # fully visible loop contracts the score scaling into an FMA, exp2(fma(s, qk, -lse)),
            # while a single loop rounds the product first: P differs in its last bits.
            if "atomic_dq" in getattr(K, "BACKWARDS", ()):
                at = run(lambda *a: K.attention(*a, backward="atomic_dq"), q, k, v, do)
                at_again = run(lambda *a: K.attention(*a, backward="atomic_dq"), q, k, v, do)
                at_ok = True
                for n, a, r in zip(("dq", "dk", "dv"), at[1:], ref_hi[1:]):
                    err = (a.to(r.dtype) - r).abs().max().item()
                    row[f"atomic_{n}_max_err"] = err
                    at_ok &= err <= _error_bound(row[n]["torch_lowp_err"], row[n]["ref_max"]) and bool(torch.isfinite(a).all())
                at_ok &= all(not t[b, :, int(seq[b]):].any() for t in at for b in range(B))
                row["atomic_dkdv_reproducible"] = torch.equal(at[2], at_again[2]) and torch.equal(at[3], at_again[3])
                row["atomic_dkdv_bitwise_default"] = torch.equal(at[2], got[2]) and torch.equal(at[3], got[3])
                at_ok &= row["atomic_dkdv_reproducible"]
                row["atomic_dq_pass"] = bool(at_ok)
                ok &= bool(at_ok)
            row["pass"] = ok and pad_zero and row["deterministic"] and row["schedules_equal"]
            log(f"correctness {name}: {'PASS' if row['pass'] else 'FAIL'} " + " ".join(
                f"{n}={row[n]['max_err']:.2e}(torch {row[n]['torch_lowp_err'] if row[n]['torch_lowp_err'] is None else format(row[n]['torch_lowp_err'], '.2e')})"
                for n in ("out", "dq", "dk", "dv")
            ) + f" pad0={pad_zero} det={row['deterministic']} schedules_equal={row['schedules_equal']}"
              + (f" atomic_dq={row['atomic_dq_pass']} (dq {row['atomic_dq_max_err']:.2e})" if "atomic_dq_pass" in row else ""))
    if tuned_only:
        return
    if "dropout" in checks:
        dropout_check(torch, masks, K, res, D_)
    if "graph" in checks:
        cuda_graph_check(torch, K, res, D_)
    if "compile" in checks:
        compile_check(torch, attention, K, res, D_)
    if "syncs" in checks:
        sync_check(torch, res, D_)
    if "checkpoint" in checks:
        checkpoint_check(torch, res, D_)
    if "varlen" in checks:
        varlen_check(torch, attention, K, res, D_)
    if "packed_model" in checks:
        packed_model_check(torch, res, D_)
    if "flex" in checks:
        flex_semantics_check(torch, attention, res, D_)


def flex_semantics_check(torch, attention, res: Results, D_: Dev) -> None:
    """FlexAttention under our mask_mod vs the reference (so that the comparison is apples to apples)."""
    dev = D_.name
    try:
        from torch.nn.attention.flex_attention import flex_attention

        B, H, L, D = (6, 4, 300, 64) if not D_.dry else (6, 2, 40, 16)
        mode, src, seq = make_batch(torch, B, L, seed=3)
        mode[1], seq[1], src[1] = 0, 0, 0
        q, k, v = (torch.randn(B, H, L, D, device=dev, dtype=D_.lowp) for _ in range(3))
        fn, _ = flex_setup(torch, mode, src, seq, L, B, dev, flex_attention if D_.dry else torch.compile(flex_attention))
        o = fn(q, k, v)
        r = attention.reference_attention(q.float(), k.float(), v.float(), mode, src, seq)
        err = (o.float() - r).abs().max().item()
        res.data["notes"].append(f"FlexAttention vs reference ({D_.lowp}, L={L}, mixed modes, a padded sample): max err {err:.3g}")
        log(res.data["notes"][-1])
    except Exception as e:  # noqa: BLE001
        res.error("flex semantics check", e)


# --------------------------------------------------------------------------------------------
# diagnostics: autotuner choices, per-kernel device time, extra candidate configs
# --------------------------------------------------------------------------------------------
#: Shapes (L, D, batch) whose unimask fwd+bwd is broken down per kernel with torch.profiler.
profile_shapes = {(512, 64, "mixed"), (1024, 64, "mixed"), (512, 128, "mixed"), (4096, 128, "mixed"), (32, 16, "mixed")}

#: --extra-configs: candidates tried by the autotuner on top of the shipped ones
#: (BLOCK_M, BLOCK_N, num_warps, num_stages[, SPLIT]), to see whether any beats them on this GPU.
#: Runs 2 and 4 of 2026-11-28 tried earlier lists (the 8-warp spill-free three-loop tiles never
#: won: docs/attention.md); these are more single-loop (SPLIT=False) tiles, which spill least
#: (``python bench/kernel_resources.py``).
EXTRA_CONFIGS = {
    "_attn_fwd": [(128, 128, 8, 3, False), (64, 64, 8, 3, False)],
    "_attn_bwd_dkdv": [(64, 64, 4, 3, False), (16, 128, 8, 2, False), (32, 64, 8, 2, False)],
    "_attn_bwd_dq": [(128, 32, 4, 3, False), (128, 64, 8, 3, False)],
}


def add_extra_configs(K, res: "Results") -> None:
    for name, extra in EXTRA_CONFIGS.items():
        kern = getattr(K, name)
        if type(kern).__name__ != "Autotuner":
            continue
        kern.configs = list(kern.configs) + [K._cfg(*c) for c in extra]
    res.data["notes"].append(f"extra autotune candidates: {EXTRA_CONFIGS}")


#: The kernel module's autotuned kernels (attribute names).
AUTOTUNED = ("_attn_fwd", "_attn_bwd_dkdv", "_attn_bwd_dq", "_attn_bwd_fused")


def autotune_record(K) -> dict:
    """Each kernel's tuned config per key and the timings of its latest tuning."""
    out = {}
    for name in AUTOTUNED:
        kern = getattr(K, name, None)
        if type(kern).__name__ != "Autotuner":
            continue
        timings = getattr(kern, "configs_timings", None) or {}
        out[name] = {
            "tuned": {str(k[:5]): str(c) for k, c in getattr(kern, "cache", {}).items()},
            "latest_timings_ms": {str(c): t for c, t in timings.items()},
        }
    return out


def kernel_profile(torch, fn, res: "Results", where: str, D_: "Dev", iters: int = 5) -> dict | None:
    """Device time per kernel and host time per op of ``fn`` (torch.profiler), per call."""
    try:
        from torch.profiler import ProfilerActivity, profile

        fn()
        D_.sync()
        acts = [ProfilerActivity.CPU] + ([] if D_.dry else [ProfilerActivity.CUDA])
        with profile(activities=acts) as prof:
            for _ in range(iters):
                fn()
            D_.sync()
        rows = {}
        for e in prof.key_averages():
            dev = getattr(e, "self_device_time_total", None)
            if dev is None:
                dev = getattr(e, "self_cuda_time_total", 0.0)
            cpu = getattr(e, "cpu_time_total", 0.0)
            rows[e.key] = {"device_us": dev / iters, "host_us": cpu / iters, "calls": e.count / iters}
        top = dict(sorted(rows.items(), key=lambda kv: -max(kv[1]["device_us"], kv[1]["host_us"]))[:30])
        kernels = {k: round(v["device_us"], 1) for k, v in top.items() if v["device_us"] > 0}
        log(f"  profile {where}: device us per call {kernels}")
        return top
    except Exception as e:  # noqa: BLE001
        res.error(f"kernel profile {where}", e)
        return None

# --------------------------------------------------------------------------------------------
# 3. benchmark
# --------------------------------------------------------------------------------------------
def schedule_timings(K, D_: Dev, xs, mode_d, src_d, seq_d) -> dict:
    """Device-only fwd and fwd+bwd ms of unimask under each non-default tile schedule."""
    xq, xk, xv, xqg, xkg, xvg, xdo = xs
    out = {}
    for sc in K.SCHEDULES[1:]:
        def fwd_bwd():
            xqg.grad = xkg.grad = xvg.grad = None
            K.attention(xqg, xkg, xvg, mode_d, src_d, seq_d, schedule=sc).backward(xdo)

        with D_.torch.no_grad():
            fwd_ms, _ = D_.queued_ms(lambda: K.attention(xq, xk, xv, mode_d, src_d, seq_d, schedule=sc))
        out[sc] = {"gpu_fwd_ms": fwd_ms, "gpu_fwd_bwd_ms": D_.queued_ms(fwd_bwd)[0]}
    return out


def bench(torch, triton, masks, K, res: Results, budget_s: float, quick: bool, D_: Dev, packed: bool = True,
          schedules: bool = False, only: list[tuple[int, int, str]] | None = None, atomic: bool = True) -> None:
    dev = D_.name
    t_start = time.time()  # the budget counts from here: a long correctness section cannot eat it
    H, dt, tokens = (16, torch.bfloat16, 16384) if not D_.dry else (2, torch.float32, 96)
    try:
        import torch._dynamo

        for knob in ("cache_size_limit", "recompile_limit"):  # 12 shapes x grad modes: never fall back to eager
            if hasattr(torch._dynamo.config, knob):
                setattr(torch._dynamo.config, knob, max(64, getattr(torch._dynamo.config, knob)))
    except Exception as e:  # noqa: BLE001
        res.error("dynamo config", e)
    try:
        from torch.nn.attention.flex_attention import flex_attention

        compiled_flex = flex_attention if D_.dry else torch.compile(flex_attention)
    except Exception as e:  # noqa: BLE001
        compiled_flex = None
        res.error("import/compile flex_attention", e)
    if D_.dry:
        Ls, Ds, l2r_Ls = [32], [16], [32]
    else:
        Ls = [512, 1024, 2048, 4096] if not quick else [512, 2048]
        Ds, l2r_Ls = [64, 128], [1024, 4096]
    shapes = [(L, D, "mixed") for L in Ls for D in Ds] + [(L, D, "l2r") for L in l2r_Ls for D in Ds]
    if only:  # --shapes: these, in this order
        shapes = only
    for L, D, kind in shapes:
        if time.time() - t_start > budget_s:
            res.data["notes"].append(f"benchmark budget of {budget_s:.0f}s reached: skipped L={L} D={D} {kind} and later shapes")
            log(res.data["notes"][-1])
            break
        B = tokens // L
        if kind == "mixed":
            mode, src, seq = make_batch(torch, B, L, seed=L + D)
        else:  # left_to_right only, no padding: SDPA is_causal computes exactly this mask
            mode, src, seq = make_batch(torch, B, L, seed=0, modes=[1] * B, full=True)
        pairs = allowed_pairs(masks, mode, src, seq, L)
        fwd_flops = 4.0 * D * H * pairs
        row: dict = {
            "L": L, "D": D, "B": B, "H": H, "batch": kind, "allowed_pairs": pairs,
            "density": pairs / (B * L * L), "fwd_gflop": fwd_flops / 1e9,
            "modes": mode.tolist(), "src_len": src.tolist(), "seq_len": seq.tolist(),
        }  # fmt: skip
        g = torch.Generator(device=dev).manual_seed(L * D)
        q, k, v, do = (torch.randn(B, H, L, D, device=dev, dtype=dt, generator=g) for _ in range(4))
        qg, kg, vg = (t.detach().clone().requires_grad_() for t in (q, k, v))
        mode_d, src_d, seq_d = (t.to(dev) for t in (mode, src, seq))
        log(f"bench L={L} D={D} B={B} batch={kind}: density {row['density']:.3f}")

        backends: dict = {}
        backends["unimask"] = lambda q_, k_, v_: K.attention(q_, k_, v_, mode_d, src_d, seq_d)
        if atomic and "atomic_dq" in getattr(K, "BACKWARDS", ()):  # the same forward, the atomic-dQ backward
            backends["unimask_atomic"] = lambda q_, k_, v_: K.attention(q_, k_, v_, mode_d, src_d, seq_d, backward="atomic_dq")
        inputs = {}  # backend -> (q, k, v, q_grad, k_grad, v_grad, dO) when not the padded ones
        if kind == "mixed" and packed:  # the same documents packed (cu_seqlens): no padding at all
            cu_d = torch.tensor([0, *seq.cumsum(0).tolist()], device=dev)
            pq, pk, pv, pdo = (pack(torch, t, seq) for t in (q, k, v, do))
            inputs["unimask_packed"] = (pq, pk, pv, *(t.detach().clone().requires_grad_() for t in (pq, pk, pv)), pdo)
            backends["unimask_packed"] = lambda q_, k_, v_: K.attention_varlen(q_, k_, v_, cu_d, mode_d, src_d, L)
        try:
            f, mask_bytes = sdpa_mask_fn(torch, masks, mode, src, seq, L, dev)
            backends["sdpa_mask"] = f
            row["sdpa_mask_bytes"] = mask_bytes
        except Exception as e:  # noqa: BLE001
            row["sdpa_mask_error"] = res.error(f"sdpa mask setup L={L} D={D}", e)
        if compiled_flex is not None:
            try:
                f, build = flex_setup(torch, mode, src, seq, L, B, dev, compiled_flex)
                row["flex_block_mask_ms"] = time_host(D_, build)
                backends["flex"] = f
            except Exception as e:  # noqa: BLE001
                row["flex_error"] = res.error(f"flex setup L={L} D={D}", e)
        if kind == "l2r":
            backends["sdpa_causal"] = lambda q_, k_, v_: torch.nn.functional.scaled_dot_product_attention(q_, k_, v_, is_causal=True)

        for name, fn in backends.items():
            r: dict = {}
            xq, xk, xv, xqg, xkg, xvg, xdo = inputs.get(name, (q, k, v, qg, kg, vg, do))
            try:
                with torch.no_grad():
                    ms = D_.bench_ms(lambda: fn(xq, xk, xv))
                    r["gpu_fwd_ms"], r["host_fwd_ms"] = D_.queued_ms(lambda: fn(xq, xk, xv))
                r["fwd_ms"] = ms
                r["fwd_tflops"] = fwd_flops / (ms * 1e-3) / 1e12
                r["gpu_fwd_tflops"] = fwd_flops / (r["gpu_fwd_ms"] * 1e-3) / 1e12

                def fwd_bwd():
                    fn(xqg, xkg, xvg).backward(xdo)

                def fwd_bwd_fresh_grads():
                    xqg.grad = xkg.grad = xvg.grad = None
                    fwd_bwd()

                if D_.dry and name == "flex":  # torch has no FlexAttention backward on the CPU
                    r["fwd_bwd_skipped"] = "FlexAttention has no CPU backward (the GPU run times it)"
                    log(f"  {name:12s} fwd {r['fwd_ms']:.3f} ms (dry run: fwd+bwd needs a GPU)")
                    row[name] = r
                    continue
                ms = D_.bench_ms(fwd_bwd, grad_to_none=[xqg, xkg, xvg])
                r["fwd_bwd_ms"] = ms
                r["fwd_bwd_tflops"] = 3.5 * fwd_flops / (ms * 1e-3) / 1e12
                r["gpu_fwd_bwd_ms"], r["host_fwd_bwd_ms"] = D_.queued_ms(fwd_bwd_fresh_grads)
                r["gpu_fwd_bwd_tflops"] = 3.5 * fwd_flops / (r["gpu_fwd_bwd_ms"] * 1e-3) / 1e12
                r["peak_mem_mib"] = D_.peak_mem_mib(fwd_bwd)
                if name in ("unimask", "unimask_atomic"):  # the fused kernel tunes in unimask_atomic's run
                    r["autotune"] = autotune_record(K)
                if name == "unimask":
                    if schedules:
                        r["schedules"] = sc = schedule_timings(K, D_, (xq, xk, xv, xqg, xkg, xvg, xdo), mode_d, src_d, seq_d)
                        log("  schedules device-only fwd / fwd+bwd ms: " + ", ".join(
                            f"{n} {t['gpu_fwd_ms']:.3f} / {t['gpu_fwd_bwd_ms']:.3f}" for n, t in sc.items()))
                if name in ("unimask", "unimask_atomic") and (L, D, kind) in profile_shapes:
                    r["kernel_profile"] = kernel_profile(torch, fwd_bwd_fresh_grads, res, f"{name} L={L} D={D} {kind}", D_)
                if name == "flex" and "flex_block_mask_ms" in row:
                    bm = row["flex_block_mask_ms"]
                    r["fwd_ms_incl_mask"] = r["fwd_ms"] + bm
                    r["fwd_tflops_incl_mask"] = fwd_flops / (r["fwd_ms_incl_mask"] * 1e-3) / 1e12
                    r["fwd_bwd_ms_incl_mask"] = r["fwd_bwd_ms"] + bm
                    r["fwd_bwd_tflops_incl_mask"] = 3.5 * fwd_flops / (r["fwd_bwd_ms_incl_mask"] * 1e-3) / 1e12
                log(f"  {name:12s} fwd {r['fwd_ms']:.3f} ms {r['fwd_tflops']:.1f} TF/s | fwd+bwd {r['fwd_bwd_ms']:.3f} ms "
                    f"{r['fwd_bwd_tflops']:.1f} TF/s | peak {r['peak_mem_mib']} MiB | device-only fwd {r['gpu_fwd_ms']:.3f} "
                    f"fwd+bwd {r['gpu_fwd_bwd_ms']:.3f} ms ({r['gpu_fwd_bwd_tflops']:.1f} TF/s) | host fwd {r['host_fwd_ms']:.3f} "
                    f"fwd+bwd {r['host_fwd_bwd_ms']:.3f} ms")
            except Exception as e:  # noqa: BLE001
                r["error"] = res.error(f"bench {name} L={L} D={D} {kind}", e)
            row[name] = r
            D_.empty_cache()
        res.data["bench"].append(row)
        res.save()
        del q, k, v, do, qg, kg, vg, backends, inputs
        D_.empty_cache()


def _fmt(x, fmt="{:.1f}") -> str:
    return "-" if x is None else fmt.format(x)


def _ratio(a, b):
    return (a / b) if a and b else None


def _backends_of(row: dict) -> tuple[dict, ...]:
    """(unimask, sdpa_mask, flex, sdpa_causal, unimask_packed) results of a table row ({} if absent)."""
    return tuple(row.get(n, {}) for n in ("unimask", "sdpa_mask", "flex", "sdpa_causal", "unimask_packed"))


def atomic_table(res: Results) -> str:
    """unimask with backward="atomic_dq" against the default backward and SDPA-with-mask, device-only."""
    rows = [r for r in res.data["bench"] if r.get("unimask_atomic")]
    if not rows:
        return ""
    f, ratio = _fmt, _ratio
    lines = ["unimask's atomic-dQ backward (deterministic=False), device-only fwd+bwd:", "",
             "| L | D | batch | default f+b TF/s | atomic f+b TF/s | atomic / default | x SDPA-mask default | x SDPA-mask atomic | x flex atomic |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        u, s, fl, _, _ = _backends_of(r)
        a = r["unimask_atomic"]
        lines.append(
            f"| {r['L']} | {r['D']} | {r['batch']} | {f(u.get('gpu_fwd_bwd_tflops'))} | {f(a.get('gpu_fwd_bwd_tflops'))} "
            f"| {f(ratio(a.get('gpu_fwd_bwd_tflops'), u.get('gpu_fwd_bwd_tflops')), '{:.2f}x')} "
            f"| {f(ratio(u.get('gpu_fwd_bwd_tflops'), s.get('gpu_fwd_bwd_tflops')), '{:.2f}x')} "
            f"| {f(ratio(a.get('gpu_fwd_bwd_tflops'), s.get('gpu_fwd_bwd_tflops')), '{:.2f}x')} "
            f"| {f(ratio(a.get('gpu_fwd_bwd_tflops'), fl.get('gpu_fwd_bwd_tflops')), '{:.2f}x')} |")
    return "\n".join(lines)


def table(res: Results) -> str:
    f, ratio = _fmt, _ratio
    lines = [
        "FLOPs: fwd = 4*D*H*sum_b(allowed pairs of sample b); fwd+bwd = 3.5 x fwd (bwd = 2.5 x fwd). "
        "Only unmasked work is counted, the same for every backend. TF/s = TFLOP/s; peak = extra CUDA "
        "memory of one fwd+bwd (MiB). flex build = create_block_mask(BLOCK 128) ms per batch; "
        "'incl' columns add it to flex's time. packed = unimask on the same documents packed with "
        "cu_seqlens (no padding). density = allowed pairs / (B*L*L).",
        "",
        "| L | D | B | batch | density | unimask fwd | unimask f+b | packed f+b | SDPA-mask fwd | SDPA-mask f+b | flex fwd | flex f+b | flex build ms | flex f+b incl | SDPA causal f+b | x flex (f+b) | x flex incl | x SDPA-mask (f+b) | peak MiB uni / sdpa / flex |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res.data["bench"]:
        u, s, fl, c, pk = _backends_of(r)
        lines.append(
            f"| {r['L']} | {r['D']} | {r['B']} | {r['batch']} | {r['density']:.2f} | {f(u.get('fwd_tflops'))} | {f(u.get('fwd_bwd_tflops'))} "
            f"| {f(pk.get('fwd_bwd_tflops'))} "
            f"| {f(s.get('fwd_tflops'))} | {f(s.get('fwd_bwd_tflops'))} | {f(fl.get('fwd_tflops'))} | {f(fl.get('fwd_bwd_tflops'))} "
            f"| {f(r.get('flex_block_mask_ms'), '{:.2f}')} | {f(fl.get('fwd_bwd_tflops_incl_mask'))} | {f(c.get('fwd_bwd_tflops'))} "
            f"| {f(ratio(u.get('fwd_bwd_tflops'), fl.get('fwd_bwd_tflops')), '{:.2f}x')} "
            f"| {f(ratio(u.get('fwd_bwd_tflops'), fl.get('fwd_bwd_tflops_incl_mask')), '{:.2f}x')} "
            f"| {f(ratio(u.get('fwd_bwd_tflops'), s.get('fwd_bwd_tflops')), '{:.2f}x')} "
            f"| {f(u.get('peak_mem_mib'), '{:.0f}')} / {f(s.get('peak_mem_mib'), '{:.0f}')} / {f(fl.get('peak_mem_mib'), '{:.0f}')} |"
        )
    if any("sdpa_causal" in r for r in res.data["bench"]):
        lines.append("")
        lines.append("left_to_right-only rows: SDPA is_causal=True runs FlashAttention's causal path on the same batch (no padding).")
    return "\n".join(lines)


def device_table(res: Results) -> str:
    """The same runs timed device-only (calls queued behind a GPU sleep), with host cost per call."""
    f, ratio = _fmt, _ratio
    lines = [
        "Device-only timing: each call queued behind a GPU sleep, so the GPU runs the calls back to back "
        "and never waits for the host; 'host ms' = CPU time to issue one fwd+bwd (Python, autograd, "
        "launches). Same FLOP count as above.",
        "",
        "| L | D | batch | unimask fwd | unimask f+b | packed f+b | SDPA-mask f+b | flex f+b | SDPA causal f+b | x flex (f+b) | x SDPA-mask (f+b) | host ms f+b uni / sdpa / flex |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res.data["bench"]:
        u, s, fl, c, pk = _backends_of(r)
        lines.append(
            f"| {r['L']} | {r['D']} | {r['batch']} | {f(u.get('gpu_fwd_tflops'))} | {f(u.get('gpu_fwd_bwd_tflops'))} "
            f"| {f(pk.get('gpu_fwd_bwd_tflops'))} | {f(s.get('gpu_fwd_bwd_tflops'))} | {f(fl.get('gpu_fwd_bwd_tflops'))} "
            f"| {f(c.get('gpu_fwd_bwd_tflops'))} "
            f"| {f(ratio(u.get('gpu_fwd_bwd_tflops'), fl.get('gpu_fwd_bwd_tflops')), '{:.2f}x')} "
            f"| {f(ratio(u.get('gpu_fwd_bwd_tflops'), s.get('gpu_fwd_bwd_tflops')), '{:.2f}x')} "
            f"| {f(u.get('host_fwd_bwd_ms'), '{:.3f}')} / {f(s.get('host_fwd_bwd_ms'), '{:.3f}')} / {f(fl.get('host_fwd_bwd_ms'), '{:.3f}')} |"
        )
    sched = [(r, r["unimask"]["schedules"]) for r in res.data["bench"] if r.get("unimask", {}).get("schedules")]
    if sched:
        names = list(sched[0][1])
        lines += ["", "unimask's tile schedules, device-only fwd+bwd ms (the default first):", "",
                  "| L | D | batch | default | " + " | ".join(names) + " |", "|---|---|---|---|" + "---|" * len(names)]
        for r, sc in sched:
            lines.append(f"| {r['L']} | {r['D']} | {r['batch']} | {f(r['unimask'].get('gpu_fwd_bwd_ms'), '{:.3f}')} | "
                         + " | ".join(f(sc[n].get("gpu_fwd_bwd_ms"), "{:.3f}") for n in names) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "./gpu_results"))
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="stop starting new bench shapes this many seconds after the benchmark began")
    ap.add_argument("--quick", action="store_true", help="fewer correctness cases and shapes")
    ap.add_argument("--skip-correctness", action="store_true")
    ap.add_argument("--no-packed", action="store_true", help="skip the packed (cu_seqlens) unimask column")
    ap.add_argument("--extra-configs", action="store_true", help="let the autotuner also try EXTRA_CONFIGS")
    ap.add_argument("--schedules", action="store_true", help="also time unimask under its other tile schedules (device-only)")
    ap.add_argument("--no-atomic", action="store_true", help="skip the atomic-dQ backward column (unimask_atomic)")
    ap.add_argument("--shapes", default="", help="only these table rows, in order: comma-separated L:D:batch, e.g. 512:64:mixed,1024:64:l2r")
    ap.add_argument("--correctness-after", action="store_true",
                    help="after the benchmark, check bf16 correctness with the configs it tuned")
    ap.add_argument("--checks", default=",".join(CHECKS),
                    help=f"comma-separated correctness sections to run (default all): {','.join(CHECKS)}")
    ap.add_argument("--dry-run-cpu", action="store_true", help="rehearse every code path on the CPU (Triton interpreter, tiny shapes)")
    args = ap.parse_args()
    if args.dry_run_cpu:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
    checks = tuple(c for c in args.checks.split(",") if c)
    unknown = sorted(set(checks) - set(CHECKS))
    if unknown:
        ap.error(f"--checks: unknown {unknown}; choose from {','.join(CHECKS)}")
    res = Results(Path(args.out))
    env = res.data["env"]
    env["python"] = sys.version.split()[0]
    env["platform"] = platform.platform()
    try:
        import torch

        env["torch"] = torch.__version__
        env["cuda_available"] = torch.cuda.is_available()
    except ImportError as e:
        log(f"torch is not installed ({e}); this machine has no registry access, install a torch wheel first")
        res.error("import torch", e)
        return 2
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError as e:
        log(f"triton is not installed ({e}); only the reference paths could run, nothing to benchmark")
        res.error("import triton", e)
        return 2
    D_ = Dev(torch, args.dry_run_cpu)
    if D_.dry:
        env["gpu"] = "none: --dry-run-cpu rehearsal under TRITON_INTERPRET=1 (timings meaningless)"
    elif not torch.cuda.is_available():
        log("no CUDA device visible: this script is the GPU comparison; nothing to do (--dry-run-cpu rehearses it)")
        res.save()
        return 2
    else:
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count, mem_gib=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda)
    env["autotune"] = os.environ.get("UNIMASK_ATTN_AUTOTUNE", "1")
    try:
        masks, attention, K, how = import_unimask(interpret=D_.dry)
        env["unimask_import"] = how
        global _KMOD
        _KMOD = K
    except Exception as e:  # noqa: BLE001
        res.error("import unimask", e)
        return 3
    try:
        import torch.nn.attention.flex_attention  # noqa: F401

        env["flex_attention"] = True
    except ImportError:
        env["flex_attention"] = False
    log("environment: " + json.dumps(env))
    res.save()
    torch.backends.cuda.matmul.allow_tf32 = False
    if not args.skip_correctness:
        log("== correctness (first autotune config only: saves compiles) ==")
        tune = os.environ.get("UNIMASK_ATTN_AUTOTUNE")
        os.environ["UNIMASK_ATTN_AUTOTUNE"] = "0"  # read by the kernels' config pruning
        try:
            correctness(torch, masks, attention, K, res, args.quick, D_, checks=checks)
        finally:
            os.environ.pop("UNIMASK_ATTN_AUTOTUNE") if tune is None else os.environ.__setitem__("UNIMASK_ATTN_AUTOTUNE", tune)
            for kern in (getattr(K, name, None) for name in AUTOTUNED):  # re-tune for the benchmark
                if type(kern).__name__ == "Autotuner":
                    kern.cache.clear()
        n_ok = sum(1 for r in res.data["correctness"] if r.get("pass"))
        log(f"correctness: {n_ok}/{len(res.data['correctness'])} cases pass")
    log("== benchmark ==")
    if args.extra_configs:
        add_extra_configs(K, res)
    only = [(int(L), int(D), kind) for L, D, kind in (x.split(":") for x in args.shapes.split(",") if x)] or None
    bench(torch, triton, masks, K, res, args.budget_s, args.quick, D_, packed=not args.no_packed, schedules=args.schedules, only=only,
          atomic=not args.no_atomic)
    if args.correctness_after:
        log("== correctness with the benchmark's tuned configs (bf16) ==")
        correctness(torch, masks, attention, K, res, args.quick, D_, tuned_only=True)
    md = "\n\n".join(t for t in (table(res), device_table(res), atomic_table(res)) if t)
    res.data["table_md"] = md
    res.save()
    print("\n" + md + "\n", flush=True)
    if res.data["errors"]:
        print(f"{len(res.data['errors'])} error(s); see {res.out_dir / 'gpu_attention.json'} ('errors')", flush=True)
    log(f"done; JSON in {res.out_dir / 'gpu_attention.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
