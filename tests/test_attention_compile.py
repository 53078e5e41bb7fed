"""The Triton kernels compile for real for a Hopper GPU (sm_90), without a GPU.

Each kernel is compiled with the specialisation a real launch on contiguous tensors gets
(16-byte aligned pointers, unit head-dim stride), and for 16-bit inputs the test also checks
that the loops are software-pipelined (asynchronous global->shared copies).

The interpreter tests (test_attention_triton.py) check the numbers but run the kernels as numpy
code, which accepts things the compiler rejects. Here Triton's own compiler lowers every
kernel through TTIR -> TTGIR -> LLVM -> PTX -> cubin (bundled ptxas) for ``GPUTarget("cuda", 90,
32)``; for 16-bit inputs the PTX must use Hopper's warpgroup MMA (``wgmma``).
"""

from __future__ import annotations

import os
import sys

import pytest

# Triton 3.9 warns that its FP-fusion default changes in 3.10; pin today's default explicitly.
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

triton = pytest.importorskip("triton")

pytestmark = pytest.mark.slow  # a few seconds of compilation per kernel on 2 CPU cores

from unimask.kernels import unified_attention as K  # noqa: E402

if K.INTERPRET:
    pytest.skip("TRITON_INTERPRET=1 in this process: kernels are interpreted, not compiled", allow_module_level=True)

try:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    import triton.backends.nvidia  # noqa: F401
except ImportError as e:  # pragma: no cover - platforms without Triton's NVIDIA backend
    pytest.skip(f"Triton's NVIDIA backend is not importable here: {e}", allow_module_level=True)

_INT_ARGS = {"B", "H", "HK", "GROUP", "L", "L_BUCKET"}
_FP32_PTRS = {"LSE", "DELTA", "DQ_ACC"}
_INT_PTRS = {"MODE", "SRC", "SEQ", "STARTS"}


def _signature(fn, dtype: str, constexprs: dict) -> dict:
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in ("sm_scale", "dropout_p"):
            sig[name] = "fp32"
        elif name == "SEED":  # the dropout seed, read from a one-element int64 tensor
            sig[name] = "*i64"
        elif name in _INT_ARGS or name.startswith("stride_"):
            sig[name] = "i32"
        elif name in _FP32_PTRS:
            sig[name] = "*fp32"
        elif name in _INT_PTRS:
            sig[name] = "*i32"
        else:
            sig[name] = f"*{dtype}"
    return sig


def _launch_specialization(fn, sig: dict, consts: dict) -> dict:
    """What a real launch on contiguous torch tensors specialises (Triton's JIT does this from
    the argument values): pointers and non-unit strides divisible by 16, unit strides (the head
    dim's) as the constant 1. Without these hints loads cannot be vectorised or pipelined."""
    attrs = {}
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            continue
        if name.startswith("stride_") and name.endswith("d"):
            consts[name] = 1
            sig[name] = "constexpr"
        elif sig[name].startswith("*") or name.startswith("stride_"):
            attrs[(i,)] = [["tt.divisibility", 16]]
    return attrs


def _compile(kernel, dtype: str, head_dim: int, config, dropout: bool = False, varlen: bool = False,
             dot_prec: str | None = None) -> object:
    fn = kernel if isinstance(kernel, triton.runtime.JITFunction) else kernel.fn  # the JITFunction under the autotuner
    consts = {
        "HEAD_DIM": head_dim,
        "IS_FP32": dtype == "fp32",
        "DOT_PREC": dot_prec or ("ieee" if dtype == "fp32" else "tf32"),
        "DROPOUT": dropout,
        "VARLEN": varlen,
        "SCHEDULE": K._schedule(K.SCHEDULES[0]),
        **config.kwargs,
    }
    if "ATOMIC_DQ" in fn.arg_names:  # one jit function behind two autotuners (dK/dV, fused)
        consts["ATOMIC_DQ"] = kernel is K._attn_bwd_fused
    consts = {n: c for n, c in consts.items() if n in fn.arg_names}  # the delta kernel takes fewer
    sig = _signature(fn, dtype, consts)
    attrs = _launch_specialization(fn, sig, consts)
    src = ASTSource(fn, sig, consts, attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": config.num_warps, "num_stages": config.num_stages})


KERNELS = [
    ("fwd", K._attn_fwd, K.fwd_configs),
    ("dkdv", K._attn_bwd_dkdv, K.bwd_dkdv_configs),
    ("dq", K._attn_bwd_dq, K.bwd_dq_configs),
    ("fused", K._attn_bwd_fused, K.bwd_fused_configs),
]
# (dtype, head dim, dropout, packed rows)
VARIANTS = [("bf16", 128, False, False), ("fp16", 16, False, False), ("fp32", 32, False, False), ("bf16", 64, True, True)]


@pytest.mark.parametrize(
    "dtype,head_dim,dropout,varlen", VARIANTS,
    ids=[f"{d}-D{h}{'-dropout' if p else ''}{'-varlen' if v else ''}" for d, h, p, v in VARIANTS],
)  # fmt: skip
@pytest.mark.parametrize("name,kernel,configs", KERNELS, ids=[k[0] for k in KERNELS])
def test_kernel_compiles_for_sm90(name, kernel, configs, dtype, head_dim, dropout, varlen):
    # exact fp32 products run K.IEEE_CONFIG (the autotuner's pruning picks it: test below)
    config = K._cfg(*K.IEEE_CONFIG) if dtype == "fp32" else configs[0]
    ck = _compile(kernel, dtype, head_dim, config, dropout, varlen)
    assert ck.asm.get("cubin"), f"{name}: no cubin produced"
    ptx = ck.asm["ptx"]
    assert ".target sm_90" in ptx
    if dtype != "fp32":
        assert "wgmma" in ptx, f"{name} {dtype}: PTX does not use Hopper wgmma"
        # the key/query streams are software-pipelined (cp.async, num_stages deep)
        assert "async_copy_global_to_local" in ck.asm["ttgir"], f"{name} {dtype}: loads not pipelined"
    assert ck.metadata.shared <= 232448, f"{name}: {ck.metadata.shared} bytes of shared memory > H100's 227 KiB"


@pytest.mark.parametrize("name,kernel,configs", KERNELS, ids=[k[0] for k in KERNELS])
def test_single_loop_configs_compile_pipelined(name, kernel, configs):
    """The SPLIT=False configs (one key/query loop, a branch per tile for the predicate) still
    get Hopper's wgmma and software-pipelined loads."""
    single = [c for c in configs if not c.kwargs["SPLIT"]]
    assert single, f"{name}: no single-loop config listed"
    for c in single:
        ck = _compile(kernel, "bf16", 64, c)
        assert "wgmma" in ck.asm["ptx"] and "async_copy_global_to_local" in ck.asm["ttgir"], (name, c)


@pytest.mark.parametrize("name,kernel,configs", KERNELS, ids=[k[0] for k in KERNELS])
def test_fp32_inputs_with_tf32_fit_in_shared_memory_at_head_dim_128(name, kernel, configs):
    """fp32 inputs with TF32 allowed (torch.backends.cuda.matmul.allow_tf32) take 4-byte tiles:
    the config the pruner leaves them must fit an H100's shared memory at D 128 (the 16-bit
    configs need 246-459 KB there)."""
    picked = K._prune(configs, {"L": 4096}, DOT_PREC="tf32", IS_FP32=True)
    assert len(picked) == 1, picked
    ck = _compile(kernel, "fp32", 128, picked[0], dot_prec="tf32")
    assert ck.metadata.shared <= 232448, f"{name}: {ck.metadata.shared} bytes of shared memory > 227 KiB"
    assert "mma" in ck.asm["ptx"], f"{name}: TF32 products should use the tensor cores"


def test_pruning_picks_tiles_by_length_and_precision(monkeypatch):
    """Configs with tiles past the (power-of-two) length are dropped; exact fp32 products get
    IEEE_CONFIG alone; UNIMASK_ATTN_AUTOTUNE=0 keeps the first config."""
    monkeypatch.delenv("UNIMASK_ATTN_AUTOTUNE", raising=False)
    sizes = lambda cs: [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) for c in cs]  # noqa: E731
    for configs in (K.fwd_configs, K.bwd_dkdv_configs, K.bwd_dq_configs):
        assert sizes(K._prune(configs, {"L": 4096}, DOT_PREC="tf32")) == sizes(configs)
        short = sizes(K._prune(configs, {"L": 40}, DOT_PREC="tf32"))
        assert short == [c for c in sizes(configs) if c[0] <= 64 and c[1] <= 64] or short == sizes(configs[:1])
        assert sizes(K._prune(configs, {"L": 4096}, DOT_PREC="ieee")) == [K.IEEE_CONFIG]
        assert sizes(K._prune(configs, {"L": 4096}, DOT_PREC="tf32", IS_FP32=True)) == [K.IEEE_CONFIG]
        monkeypatch.setenv("UNIMASK_ATTN_AUTOTUNE", "0")
        assert sizes(K._prune(configs, {"L": 4096}, DOT_PREC="tf32")) == sizes(configs[:1])
        assert sizes(K._prune(configs, {"L": 4096}, DOT_PREC="ieee")) == [K.IEEE_CONFIG]
        monkeypatch.delenv("UNIMASK_ATTN_AUTOTUNE")


def test_autotune_configs_are_hopper_sized():
    """Block sizes 64/128 (dK/dV may stream 32-row query tiles), 4 or 8 warps, 2-4 stages."""
    for _name, _kernel, configs in KERNELS:
        assert len(configs) >= 3
        for c in configs:
            assert c.kwargs["BLOCK_M"] in (32, 64, 128) and c.kwargs["BLOCK_N"] in (32, 64, 128)
            assert c.num_warps in (4, 8) and 2 <= c.num_stages <= 4


def test_kernel_resources_reports_registers_and_spills(monkeypatch):
    """bench/kernel_resources.py (the spill report used to pick autotune candidates) reads the
    cubin's resource usage: registers within the sm_90 limit, a stack size, the shared memory."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "kernel_resources.py"
    if not path.is_file():
        pytest.skip("bench/ is not beside the tests (not a source checkout)")
    monkeypatch.setattr(sys, "path", list(sys.path))  # the tool may prepend paths: never leak them
    spec = importlib.util.spec_from_file_location("kernel_resources", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    line = mod.usage(K._attn_bwd_dq, K.bwd_dq_configs[-1], 64)
    regs, stack, shared = line.split()[0], line.split()[1], int(line.split()[-1])
    assert regs.startswith("REG:") and 0 < int(regs[4:]) <= 255, line
    assert stack.startswith("STACK:") and int(stack[6:]) >= 0, line
    assert 0 < shared <= 232448, line


def test_atomic_dq_backward_compiles_to_relaxed_reductions():
    """The atomic-dQ backward: its one kernel adds dQ with relaxed fp32 reductions (no fence
    per add; vectorised), the deterministic dK/dV kernel (same jit function, ATOMIC_DQ off) has
    none, and the delta preprocess kernel compiles."""
    import re

    fused = _compile(K._attn_bwd_fused, "bf16", 64, K.bwd_fused_configs[0]).asm["ptx"]
    adds = set(re.findall(r"(?:red|atom)\.global\.[a-z0-9.]*add[a-z0-9.]*", fused))
    assert adds and all(".relaxed." in a and a.endswith(".f32") for a in adds), adds
    plain = _compile(K._attn_bwd_dkdv, "bf16", 64, K.bwd_dkdv_configs[0]).asm["ptx"]
    assert not re.findall(r"(?:red|atom)\.global\.[a-z0-9.]*add", plain)
    delta = _compile(K._attn_bwd_delta, "bf16", 64, triton.Config({"BLOCK_M": 64}, num_warps=4, num_stages=1))
    assert delta.asm.get("cubin")
