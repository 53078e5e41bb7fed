"""Attention benchmark cases runnable anywhere (CPU): unimask's dispatch vs SDPA with a dense mask.

The GPU comparison (Triton kernel vs SDPA vs FlexAttention, TFLOP/s) lives in ``bench/``.
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


def cases() -> list[BenchCase]:
    return [
        BenchCase(
            "attention CPU fp32 B8 H4 L128 (dispatch vs SDPA+dense mask)",
            _setup,
            group="attention",
            note="the mask-building cost is inside unimask's call, outside SDPA's",
        )
    ]
