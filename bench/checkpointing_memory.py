#!/usr/bin/env python3
"""Peak memory and time of one training step with and without activation checkpointing
(``unimask.set_gradient_checkpointing``), each in its own process (peak resident set size on
the CPU, ``torch.cuda.max_memory_allocated`` on CUDA), same model, batch and seed.

    python bench/checkpointing_memory.py                 # CPU: 12 layers, hidden 256, 8 x 512 tokens
    python bench/checkpointing_memory.py --device cuda --hidden 768 --heads 12 --batch 16
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def one(args: argparse.Namespace) -> dict:
    import torch  # noqa: PLC0415

    from unimask.models import EncoderConfig, UnifiedLM, set_gradient_checkpointing  # noqa: PLC0415

    torch.set_num_threads(args.threads)
    cfg = EncoderConfig(vocab_size=8000, hidden_size=args.hidden, num_hidden_layers=args.layers,
                        num_attention_heads=args.heads, intermediate_size=4 * args.hidden,
                        max_position_embeddings=max(512, args.length), type_vocab_size=6)
    torch.manual_seed(0)
    model = UnifiedLM(cfg).train().to(args.device)
    if args.checkpointing:
        set_gradient_checkpointing(model)
    B, L = args.batch, args.length
    ids = torch.randint(5, 8000, (B, L))
    labels = torch.full((B, L), -100)
    labels[:, ::7] = ids[:, ::7]
    modes = torch.tensor([0, 1, 2, 3]).repeat(B)[:B]
    batch = dict(input_ids=ids.to(args.device), labels=labels, attn_mode=modes,
                 src_len=torch.where(modes == 3, L // 3, 0), seq_len=torch.full((B,), L))
    cuda = args.device.startswith("cuda")
    base = torch.cuda.memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times = []
    for _ in range(args.steps):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        model(**batch).loss.backward()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        model.zero_grad(set_to_none=False)
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"checkpointing": args.checkpointing, "peak_growth_mib": (peak - base) / 2**20,
            "step_s": min(times[1:] or times)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--checkpointing", type=int, choices=(0, 1), default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.checkpointing is not None:  # the child
        print(json.dumps(one(args)))
        return 0
    rows = []
    for flag in (0, 1):
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--checkpointing", str(flag)],
                             capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    plain, ckpt = rows
    print(f"{args.layers} layers, hidden {args.hidden}, {args.batch} x {args.length} tokens, {args.device}")
    print("| checkpointing | peak memory growth MiB | step s |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {'on' if r['checkpointing'] else 'off'} | {r['peak_growth_mib']:.0f} | {r['step_s']:.2f} |")
    print(f"memory {plain['peak_growth_mib'] / ckpt['peak_growth_mib']:.2f}x less, "
          f"step time {ckpt['step_s'] / plain['step_s']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
