"""The CPU attention path's cost beyond SDPA itself: ``sdpa_attention`` (mask from the three
integers, padded rows zeroed) against a bare ``scaled_dot_product_attention`` call given the
prebuilt mask it ends up using, same inputs, in alternating turns.

Batches (fp32, B 32, H 12, L 128, D 32, the shape of MiniLM's layers on a padded batch): mixed
modes with padding (the general interval mask), every sample bidirectional or left_to_right
over all L (no mask / ``is_causal``), every sample bidirectional with padding (the key-padding
mask). Also the packed path per "layer" (``unified_attention_varlen(check=False)``, 64 documents
of 5-60 tokens, the grouping plan built per call) against the same SDPA calls made bare.
The ratio is bare SDPA time / unimask time: 1.00x means no overhead.

Run: ``OMP_NUM_THREADS=2 python bench/bench_sdpa_overhead.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import unimask.attention as A
from unimask.benchmarking import time_interleaved

B, H, L, D = 32, 12, 128, 32


def _cases():
    g = torch.Generator().manual_seed(0)
    seq = torch.randint(L // 2, L + 1, (B,), generator=g)
    seq[0] = L
    full = torch.full((B,), L)
    return {
        "mixed modes, padded": (torch.tensor([0, 1, 2, 3] * (B // 4)), (seq // 2).clamp(min=1), seq),
        "bidirectional, full length": (torch.zeros(B, dtype=torch.long), torch.zeros(B, dtype=torch.long), full),
        "left_to_right, full length": (torch.ones(B, dtype=torch.long), torch.zeros(B, dtype=torch.long), full),
        "bidirectional, padded": (torch.zeros(B, dtype=torch.long), torch.zeros(B, dtype=torch.long), seq),
    }


def main() -> None:
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(B, H, L, D, generator=g) for _ in range(3))
    print(f"threads {torch.get_num_threads()}; B {B} H {H} L {L} D {D} fp32, inference mode")
    rows = []
    with torch.inference_mode():
        for name, (mode, src, seq) in _cases().items():
            mask, causal, _ = A._sdpa_mask(mode, src, seq, L, q.device)
            def ours(mode=mode, src=src, seq=seq):
                return A.unified_attention(q, k, v, mode, src, seq, check=False)

            def bare(mask=mask, causal=causal):
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)

            rows.append((name, *time_interleaved([ours, bare], 1.0)))
        lens = torch.randint(5, 61, (64,), generator=g)
        cu = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)])
        qp, kp, vp = (torch.randn(int(cu[-1]), H, D, generator=g) for _ in range(3))
        mode, src = torch.randint(0, 4, (64,), generator=g), lens // 2
        buckets, _ = A._varlen_plan(cu, mode, src, qp.device)
        gathered = [(tuple(t[idx].transpose(1, 2) for t in (qp, kp, vp)), m) for idx, _, m in buckets]
        longest = int(lens.max())
        rows.append(("packed, 64 documents (varlen)", *time_interleaved([
            lambda: A.unified_attention_varlen(qp, kp, vp, cu, mode, src, longest, check=False),
            lambda: [F.scaled_dot_product_attention(*t, attn_mask=m[0], is_causal=m[1]) for t, m in gathered],
        ], 1.0)))
    print(f"{'batch':32s} {'unimask':>10s} {'bare SDPA':>10s}  ratio")
    for name, t_ours, t_bare in rows:
        print(f"{name:32s} {t_ours * 1e3:8.3f}ms {t_bare * 1e3:8.3f}ms  {t_bare / t_ours:.2f}x")


if __name__ == "__main__":
    main()
