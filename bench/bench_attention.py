"""GPU attention benchmarks (pytest-benchmark): unimask's Triton kernel vs its references, same run.

Groups pair unimask with one reference each on the same bf16 batch (H=16, B*L = 16384 tokens,
all four modes mixed, seq_len in [L/2, L]), forward+backward:

* ``sdpa_mask``: ``scaled_dot_product_attention`` with the dense boolean mask;
* ``flex``: ``torch.compile(flex_attention)`` with a ``create_block_mask`` (BLOCK 128) block
  mask built once (``flex_incl_mask`` rebuilds it inside every call, as a training step must
  for a new batch);
* ``sdpa_causal``: a left_to_right-only batch with no padding, vs SDPA ``is_causal=True``.

The conftest prints reference time / unimask time per group. TFLOP/s and peak memory for the
full grid (L 512..4096, D 64/128) come from ``bench/gpu_attention.py``.

Run: ``python -m pytest bench/bench_attention.py --benchmark-only`` on a CUDA machine.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip(
        "GPU comparison (Triton kernel vs SDPA/FlexAttention on CUDA): no CUDA device here; "
        "the CPU attention case is in bench_registry.py",
        allow_module_level=True,
    )
pytest.importorskip("triton")

import gpu_attention as G  # noqa: E402 - bench/ is on sys.path (pytest prepend import mode)

masks, attention, K, _how = G.import_unimask()

SHAPES = [(1024, 64), (1024, 128), (4096, 128)]
H, TOKENS = 16, 16384
_STATE: dict = {}


def _setup(L: int, D: int, kind: str):
    key = (L, D, kind)
    if key in _STATE:
        return _STATE[key]
    B = TOKENS // L
    if kind == "l2r":
        mode, src, seq = G.make_batch(torch, B, L, seed=0, modes=[1] * B, full=True)
    else:
        mode, src, seq = G.make_batch(torch, B, L, seed=L + D)
    q, k, v, do = (torch.randn(B, H, L, D, device="cuda", dtype=torch.bfloat16).requires_grad_(i < 3) for i in range(4))
    dev = [t.cuda() for t in (mode, src, seq)]
    fns = {"unimask": lambda: K.attention(q, k, v, *dev)}
    fns["sdpa_mask"] = (lambda f: lambda: f(q, k, v))(G.sdpa_mask_fn(torch, masks, mode, src, seq, L, "cuda")[0])
    try:
        from torch.nn.attention.flex_attention import flex_attention

        flex, build = G.flex_setup(torch, mode, src, seq, L, B, "cuda", torch.compile(flex_attention))
        fns["flex"] = lambda: flex(q, k, v)
        fns["flex_incl_mask"] = lambda: flex(q, k, v, build())
    except Exception as e:  # noqa: BLE001 - reported by the skip below
        fns["flex_error"] = e
    fns["sdpa_causal"] = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

    def step(fn):
        def run():
            for t in (q, k, v):
                t.grad = None
            fn().backward(do)
            torch.cuda.synchronize()

        return run

    _STATE[key] = (fns, step)
    return _STATE[key]


CASES = [(L, D, "mixed", ref) for L, D in SHAPES for ref in ("sdpa_mask", "flex", "flex_incl_mask")]
CASES += [(L, D, "l2r", "sdpa_causal") for L, D in SHAPES]


@pytest.mark.parametrize("side", ["unimask", "reference"])
@pytest.mark.parametrize("L,D,kind,ref", CASES, ids=[f"L{c[0]}-D{c[1]}-{c[2]}-vs-{c[3]}" for c in CASES])
def bench_attention_fwd_bwd(L, D, kind, ref, side, side_benchmark, benchmark):
    fns, step = _setup(L, D, kind)
    if ref.startswith("flex") and "flex_error" in fns:
        pytest.skip(f"FlexAttention unavailable: {fns['flex_error']}")
    fn = fns["unimask" if side == "unimask" else ref]
    benchmark.group = f"attention fwd+bwd bf16 L={L} D={D} {kind} vs {ref}"
    benchmark.extra_info.update(L=L, D=D, H=H, batch=kind)
    run = step(fn)
    run()  # compile / autotune outside the timing
    side_benchmark(side, run)
