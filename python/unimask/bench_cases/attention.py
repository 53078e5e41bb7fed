"""Attention benchmark cases: unimask's dispatch vs SDPA with a dense mask.

The CPU case runs anywhere (on the CPU the dispatch takes the SDPA path, building the dense
mask from the three integers inside the call). When
CUDA is available a second case times the Triton kernel's forward+backward against SDPA with
the dense boolean mask on the GPU. The full GPU comparison (TFLOP/s, peak memory,
FlexAttention, SDPA causal) is ``bench/gpu_attention.py``.
"""

from __future__ import annotations

from pathlib import Path

from ..benchmarking import BenchCase


def _setup(_corpus: list[Path]):
    import torch  # noqa: PLC0415

    from ..attention import unified_attention  # noqa: PLC0415
    from ..masks import dense_mask  # noqa: PLC0415

    g = torch.Generator().manual_seed(0)
    B, H, L, D = 8, 4, 128, 32
    q, k, v = (torch.randn(B, H, L, D, generator=g) for _ in range(3))
    mode = torch.tensor([0, 1, 2, 3] * (B // 4))
    seq = torch.randint(L // 2, L + 1, (B,), generator=g)
    src = (seq // 2).clamp(min=1)
    mask = dense_mask(mode, src, seq, L)[:, None]
    row_ok = mask.any(-1, keepdim=True)

    def ours():
        with torch.no_grad():
            return unified_attention(q, k, v, mode, src, seq)

    def ref():
        with torch.no_grad():
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask | ~row_ok)
            return out * row_ok

    tokens = float(int(seq.sum()) * H)
    return ours, ref, tokens, "query-heads"


def _setup_cuda(_corpus: list[Path]):
    import torch  # noqa: PLC0415

    from ..attention import unified_attention  # noqa: PLC0415
    from ..masks import dense_mask  # noqa: PLC0415

    g = torch.Generator().manual_seed(0)
    B, H, L, D = 16, 16, 1024, 64
    q, k, v, do = (torch.randn(B, H, L, D, generator=g).to("cuda", torch.bfloat16) for _ in range(4))
    for t in (q, k, v):
        t.requires_grad_()
    mode = torch.tensor([0, 3, 0, 3, 1, 2] * 3)[:B]
    seq = torch.randint(L // 2, L + 1, (B,), generator=g)
    src = (seq // 2).clamp(min=1)
    mask = dense_mask(mode, src, seq, L).cuda()[:, None]
    row_ok = mask.any(-1, keepdim=True)
    dev = [t.cuda() for t in (mode, src, seq)]

    def step(fn):
        def run():
            for t in (q, k, v):
                t.grad = None
            fn().backward(do)
            torch.cuda.synchronize()

        return run

    ours = step(lambda: unified_attention(q, k, v, *dev, backend="triton"))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    ref = step(lambda: sdpa(q, k, v, attn_mask=mask | ~row_ok) * row_ok)
    pairs = float(int(mask.sum()) * H)
    return ours, ref, pairs, "query-key pairs"


def _cuda_available() -> bool:
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        return False
    return torch.cuda.is_available()


def cases() -> list[BenchCase]:
    out = [
        BenchCase(
            "attention CPU fp32 B8 H4 L128 (dispatch vs SDPA+dense mask)",
            _setup,
            group="attention",
            note="the mask-building cost is inside unimask's call, outside SDPA's",
        )
    ]
    if _cuda_available():
        out.append(
            BenchCase(
                "attention CUDA bf16 fwd+bwd B16 H16 L1024 D64, mixed modes (Triton kernel vs SDPA+dense mask)",
                _setup_cuda,
                group="attention",
                note="the dense mask is prebuilt for SDPA; unimask derives it from 3 ints per sample",
            )
        )
    return out
