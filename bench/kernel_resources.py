#!/usr/bin/env python3
"""Registers, spills (stack bytes per thread) and shared memory of the attention kernels, per
config, compiled for sm_90 on any machine (no GPU: Triton's compiler, bundled ptxas and
cuobjdump), with the specialisation a real launch on contiguous tensors gets.

    python bench/kernel_resources.py                      # the shipped configs, bf16, D 64 / 128
    python bench/kernel_resources.py dkdv 16,32 64,128 4,8 2,3   # a grid: BLOCK_M BLOCK_N warps stages

Spills are a lead, not a verdict: on the H200 the dK/dV config that spilled most (616 bytes)
still won the tuning at L 512, D 64 (docs/attention.md). Reuses the compile helpers of
``tests/test_attention_compile.py``.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))
try:
    import unimask.kernels  # noqa: F401 - the installed package (or an editable build)
except ImportError:  # a bare checkout: the kernels from the source tree
    sys.path.insert(0, str(ROOT / "python"))

import test_attention_compile as T  # noqa: E402

KERNELS = {"fwd": (T.K._attn_fwd, T.K.fwd_configs), "dkdv": (T.K._attn_bwd_dkdv, T.K.bwd_dkdv_configs),
           "dq": (T.K._attn_bwd_dq, T.K.bwd_dq_configs), "fused": (T.K._attn_bwd_fused, T.K.bwd_fused_configs)}
CUOBJDUMP = Path(T.triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


def usage(kernel, config, head_dim: int, dtype: str = "bf16") -> str:
    ck = T._compile(kernel, dtype, head_dim, config)
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(ck.asm["cubin"])
    try:
        out = subprocess.run([str(CUOBJDUMP), "--dump-resource-usage", f.name], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(f.name)
    regs = next(line for line in out.splitlines() if "REG:" in line).split()
    return f"{regs[0]} {regs[1]} shared {ck.metadata.shared}"


def main(argv: list[str]) -> int:
    names = [argv[0]] if argv else list(KERNELS)
    for name in names:
        kernel, configs = KERNELS[name]
        if len(argv) == 5:
            grid = [list(map(int, a.split(","))) for a in argv[1:5]]
            configs = [T.K._cfg(m, n, w, s) for m, n, w, s in itertools.product(*grid)]
        for head_dim in (64, 128):
            for c in configs:
                try:
                    res = usage(kernel, c, head_dim)
                except Exception as e:  # noqa: BLE001 - report and go on (e.g. out of shared memory)
                    res = f"{type(e).__name__}: {str(e)[:80]}"
                print(f"{name:5s} D{head_dim:<4d} BLOCK_M {c.kwargs['BLOCK_M']:4d} BLOCK_N {c.kwargs['BLOCK_N']:4d} "
                      f"warps {c.num_warps} stages {c.num_stages}{'' if c.kwargs.get('SPLIT', True) else ' one loop'}  {res}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
