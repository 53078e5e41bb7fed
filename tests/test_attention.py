"""The PyTorch reference path and the dispatch of :func:`unimask.attention.unified_attention`.

Oracle: a naive per-(sample, head, query) loop that lists the visible keys with the
plain-Python :func:`unimask.masks.allowed` and applies a softmax over them by hand; and
``torch.autograd.gradcheck`` (finite differences) in fp64 for the gradients.
"""

from __future__ import annotations

import math

import pytest
import torch

from unimask.attention import (
    BACKENDS,
    reference_attention,
    sdpa_attention,
    select_backend,
    unified_attention,
    unified_attention_varlen,
)
from unimask.masks import allowed


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _naive(q, k, v, mode, src, seq, scale=None):
    B, H, L, D = q.shape
    group = H // k.shape[1]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    out = torch.zeros_like(q)
    for b in range(B):
        m, s, n = int(mode[b]), int(src[b]), int(seq[b])
        for h in range(H):
            kh, vh = k[b, h // group], v[b, h // group]
            for i in range(L):
                keys = [j for j in range(L) if allowed(m, s, n, i, j)]
                if not keys:
                    continue
                logits = torch.stack([(q[b, h, i] * kh[j]).sum() * scale for j in keys])
                w = torch.exp(logits - logits.max())
                w = w / w.sum()
                out[b, h, i] = sum(w[t] * vh[j] for t, j in enumerate(keys))
    return out


def _inputs(B, H, HK, L, D, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, h, L, D, generator=g, dtype=dtype) for h in (H, HK, HK))


MODE = torch.tensor([0, 1, 2, 3, 3, 1])
SRC = torch.tensor([0, 0, 0, 1, 4, 0])
SEQ = torch.tensor([7, 5, 6, 7, 4, 0])


@pytest.mark.parametrize("hk", [2, 1], ids=["mha", "gqa"])
def test_reference_matches_naive_loop(hk):
    q, k, v = _inputs(6, 2, hk, 7, 4)
    got = reference_attention(q, k, v, MODE, SRC, SEQ)
    want = _naive(q, k, v, MODE, SRC, SEQ)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_reference_custom_scale():
    q, k, v = _inputs(6, 2, 2, 7, 4, seed=3)
    torch.testing.assert_close(
        reference_attention(q, k, v, MODE, SRC, SEQ, scale=0.7), _naive(q, k, v, MODE, SRC, SEQ, 0.7), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("hk", [2, 1], ids=["mha", "gqa"])
def test_reference_gradcheck_fp64(hk):
    """All four modes, src_len 1 and < seq_len, a fully padded sample and padded rows."""
    q, k, v = (t.requires_grad_() for t in _inputs(6, 2, hk, 7, 4, seed=1))
    fn = lambda q, k, v: reference_attention(q, k, v, MODE, SRC, SEQ)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v), eps=1e-6, atol=1e-7)
    assert torch.autograd.gradgradcheck(fn, (q, k, v), eps=1e-6, atol=1e-6)


def test_padding_rows_zero_and_zero_grads_no_nan():
    q, k, v = (t.requires_grad_() for t in _inputs(6, 2, 1, 7, 4, seed=2))
    out = reference_attention(q, k, v, MODE, SRC, SEQ)
    out.backward(torch.randn_like(out))
    assert torch.isfinite(out).all()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    for b, n in enumerate(SEQ.tolist()):
        assert not out[b, :, n:].any(), "padded query rows must be exactly zero"
        assert not q.grad[b, :, n:].any(), "padded queries must get zero gradient"
        assert not k.grad[b, :, n:].any() and not v.grad[b, :, n:].any(), "padded keys must get zero gradient"


def test_reference_low_precision_finite():
    q, k, v = (t.to(torch.bfloat16) for t in _inputs(6, 2, 2, 7, 16))
    out = reference_attention(q, k, v, MODE, SRC, SEQ)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    ref = reference_attention(*(t.double() for t in (q, k, v)), MODE, SRC, SEQ)
    torch.testing.assert_close(out.double(), ref, atol=2e-2, rtol=2e-2)


def test_reference_dropout_seeded_and_scaled():
    q, k, v = _inputs(6, 2, 2, 7, 4)
    torch.manual_seed(0)
    a = reference_attention(q, k, v, MODE, SRC, SEQ, dropout_p=0.5)
    torch.manual_seed(0)
    b = reference_attention(q, k, v, MODE, SRC, SEQ, dropout_p=0.5)
    assert torch.equal(a, b)
    assert not torch.allclose(a, reference_attention(q, k, v, MODE, SRC, SEQ))
    assert torch.equal(reference_attention(q, k, v, MODE, SRC, SEQ, dropout_p=0.5, training=False), reference_attention(q, k, v, MODE, SRC, SEQ))


# --- dispatch -------------------------------------------------------------------------------
def test_auto_on_cpu_is_sdpa(monkeypatch):
    monkeypatch.delenv("UNIMASK_ATTENTION_BACKEND", raising=False)
    q, k, v = _inputs(6, 2, 2, 7, 16, dtype=torch.float32)
    assert select_backend(q) == "sdpa"
    assert torch.equal(unified_attention(q, k, v, MODE, SRC, SEQ), sdpa_attention(q, k, v, MODE, SRC, SEQ))
    assert torch.equal(unified_attention(q, k, v, MODE, SRC, SEQ, backend="reference"), reference_attention(q, k, v, MODE, SRC, SEQ))


def assert_sdpa_matches_reference(q, k, v, mode, src, seq, **kw) -> None:
    """``sdpa_attention(q, k, v, mode, src, seq, scale=0.6, **kw)`` against the fp64
    ``reference_attention``: output and the three gradients, and padded query rows (and their
    gradients) exactly zero. ``q``, ``k``, ``v``: fp64 leaves."""
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    do = torch.randn_like(q)
    out = sdpa_attention(q, k, v, mode, src, seq, scale=0.6, **kw)
    grads = torch.autograd.grad(out, (q, k, v), do)
    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    want = reference_attention(q2, k2, v2, mode, src, seq, scale=0.6)
    want_grads = torch.autograd.grad(want, (q2, k2, v2), do)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    for g, w in zip(grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    for b, n in enumerate(torch.as_tensor(seq).tolist()):
        assert not out[b, :, n:].any() and not grads[0][b, :, n:].any()
        assert not grads[1][b, :, n:].any() and not grads[2][b, :, n:].any()


@pytest.mark.parametrize("hk", [2, 1], ids=["mha", "gqa"])
def test_sdpa_path_matches_reference_fp64(hk):
    """Forward and all three gradients, padded rows and a fully padded sample included."""
    assert_sdpa_matches_reference(*_inputs(6, 2, hk, 7, 4, seed=5), MODE, SRC, SEQ)


def test_sdpa_path_dropout_seeded():
    q, k, v = _inputs(6, 2, 2, 7, 4)
    torch.manual_seed(3)
    a = sdpa_attention(q, k, v, MODE, SRC, SEQ, dropout_p=0.5)
    torch.manual_seed(3)
    assert torch.equal(a, sdpa_attention(q, k, v, MODE, SRC, SEQ, dropout_p=0.5))
    assert not torch.allclose(a, sdpa_attention(q, k, v, MODE, SRC, SEQ))
    for b, n in enumerate(SEQ.tolist()):
        assert not a[b, :, n:].any()


def test_env_var_forces_reference(monkeypatch):
    monkeypatch.setenv("UNIMASK_ATTENTION_BACKEND", "reference")
    assert select_backend(torch.zeros(1, 1, 1, 16)) == "reference"
    monkeypatch.setenv("UNIMASK_ATTENTION_BACKEND", "sdpa")
    assert select_backend(torch.zeros(1, 1, 1, 16)) == "sdpa"
    monkeypatch.setenv("UNIMASK_ATTENTION_BACKEND", "bogus")
    with pytest.raises(ValueError, match="bogus"):
        select_backend(torch.zeros(1, 1, 1, 16))


def test_bad_backend_name():
    q, k, v = _inputs(6, 2, 2, 7, 16, dtype=torch.float32)
    with pytest.raises(ValueError, match="'cuda'"):
        unified_attention(q, k, v, MODE, SRC, SEQ, backend="cuda")
    assert BACKENDS == ("auto", "triton", "sdpa", "reference")


def test_forced_triton_on_cpu_explains_why():
    from unimask.kernels import unified_attention as K

    if K.INTERPRET:
        pytest.skip("TRITON_INTERPRET=1 in this process: the kernel can run on the CPU here")
    q, k, v = _inputs(6, 2, 2, 7, 16, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="CUDA"):
        unified_attention(q, k, v, MODE, SRC, SEQ, backend="triton")


def test_forced_triton_rejects_unsupported_head_dim_and_dtype(monkeypatch):
    from unimask.kernels import unified_attention as K

    monkeypatch.setattr(K, "INTERPRET", True)  # pretend the kernel could run on this device
    with pytest.raises(RuntimeError, match="head dim 24"):
        select_backend(torch.zeros(1, 1, 4, 24), "triton")
    with pytest.raises(RuntimeError, match="float64"):
        select_backend(torch.zeros(1, 1, 4, 32, dtype=torch.float64), "triton")
    assert select_backend(torch.zeros(1, 1, 4, 32), "triton") == "triton"


@pytest.mark.parametrize(
    "shapes,exc,needle",
    [
        (((2, 2, 5, 8), (2, 2, 5, 8), (2, 2, 4, 8)), ValueError, "same shape"),
        (((2, 3, 5, 8), (2, 2, 5, 8), (2, 2, 5, 8)), ValueError, "multiple"),
        (((2, 2, 5, 8), (2, 2, 6, 8), (2, 2, 6, 8)), ValueError, "does not match"),
        (((2, 5, 8), (2, 2, 5, 8), (2, 2, 5, 8)), ValueError, "[B, H, L, D]"),
    ],
)
def test_bad_shapes(shapes, exc, needle):
    q, k, v = (torch.zeros(s) for s in shapes)
    with pytest.raises(exc) as info:
        unified_attention(q, k, v, torch.tensor([0, 0]), torch.tensor([0, 0]), torch.tensor([1, 1]))
    assert needle in str(info.value)


def test_bad_mask_ints_and_dropout_and_dtypes():
    q, k, v = _inputs(2, 2, 2, 5, 8, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"seq_len\[1\] = 6"):
        unified_attention(q, k, v, torch.tensor([0, 0]), torch.tensor([0, 0]), torch.tensor([5, 6]))
    with pytest.raises(ValueError, match="dropout_p"):
        unified_attention(q, k, v, torch.tensor([0, 0]), torch.tensor([0, 0]), torch.tensor([5, 5]), dropout_p=1.0)
    with pytest.raises(TypeError, match="dtype"):
        unified_attention(q, k.double(), v, torch.tensor([0, 0]), torch.tensor([0, 0]), torch.tensor([5, 5]))
    with pytest.raises(TypeError, match="q must be a torch.Tensor"):
        unified_attention(q.numpy(), k, v, torch.tensor([0, 0]), torch.tensor([0, 0]), torch.tensor([5, 5]))
    # deterministic= picks the kernel's backward; anything but a bool is an error, not truthiness
    with pytest.raises(TypeError, match="deterministic must be a bool, got str 'no'"):
        unified_attention(q, k, v, torch.tensor([0, 0]), torch.tensor([0, 0]), torch.tensor([5, 5]), deterministic="no")
    with pytest.raises(TypeError, match="deterministic must be a bool, got int 0"):
        unified_attention_varlen(q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1), torch.tensor([0, 5]),
                                 torch.tensor([0]), torch.tensor([0]), deterministic=0)


@pytest.mark.parametrize("backend", ["sdpa", "reference"])
@pytest.mark.parametrize("check", [True, False])
@pytest.mark.parametrize("which", ["attn_mode", "src_len", "seq_len"])
@pytest.mark.parametrize("n", [1, 3])
def test_mask_args_must_have_one_entry_per_sample(backend, check, which, n):
    """B = 2: a length-1 argument was broadcast (row 1 silently got row 0's mask), length 3
    was an obscure broadcasting RuntimeError. Now a ValueError naming the argument, its length
    and B, on every path, with or without ``check`` (a shape read, no sync)."""
    q, k, v = _inputs(2, 2, 2, 5, 8, dtype=torch.float32)
    args = {"attn_mode": torch.tensor([0, 0]), "src_len": torch.tensor([0, 0]), "seq_len": torch.tensor([4, 4])}
    args[which] = torch.full((n,), int(args[which][0]))
    with pytest.raises(ValueError, match=rf"{which} has {n} entries but the batch has B = 2 samples"):
        unified_attention(q, k, v, args["attn_mode"], args["src_len"], args["seq_len"], backend=backend, check=check)
    # the public per-path functions check it too
    fn = sdpa_attention if backend == "sdpa" else reference_attention
    with pytest.raises(ValueError, match=rf"{which} has {n} entries but the batch has B = 2"):
        fn(q, k, v, args["attn_mode"], args["src_len"], args["seq_len"])


def test_unchecked_list_arguments_of_the_right_length_still_work():
    q, k, v = _inputs(2, 2, 2, 5, 8, dtype=torch.float64)
    want = reference_attention(q, k, v, torch.tensor([1, 0]), torch.tensor([0, 0]), torch.tensor([5, 3]))
    got = unified_attention(q, k, v, [1, 0], [0, 0], [5, 3], backend="sdpa", check=False)
    assert torch.allclose(got, want, atol=1e-12)


def test_integer_qkv_is_a_type_error_naming_the_dtype():
    q = torch.ones(1, 1, 3, 8, dtype=torch.int64)
    m = torch.tensor([0])
    for backend in ("sdpa", "reference"):
        with pytest.raises(TypeError, match="q must be a floating-point tensor, got dtype torch.int64"):
            unified_attention(q, q, q, m, m, torch.tensor([3]), backend=backend)


# --- packed rows (varlen) -------------------------------------------------------------------
def _packed(lens, H, HK, D, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    T = sum(lens)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()])
    return cu, *(torch.randn(T, h, D, generator=g, dtype=dtype) for h in (H, HK, HK))


def test_varlen_reference_equals_padded_layout():
    """Oracle: the same documents padded into [N, H, L, D] and run through the padded path."""
    from unimask.attention import reference_attention_varlen

    lens, modes, srcs = [4, 0, 7, 1, 6], [3, 0, 2, 1, 0], [2, 0, 0, 0, 0]
    cu, q, k, v = _packed(lens, 4, 2, 8)
    got = reference_attention_varlen(q, k, v, cu, modes, srcs)
    L = max(lens)
    pad = lambda t: torch.stack([torch.nn.functional.pad(t[cu[d] : cu[d + 1]], (0, 0, 0, 0, 0, L - lens[d])) for d in range(len(lens))]).transpose(1, 2)  # noqa: E731
    want = reference_attention(pad(q), pad(k), pad(v), torch.tensor(modes), torch.tensor(srcs), torch.tensor(lens))
    want = torch.cat([want[d, :, : lens[d]].transpose(0, 1) for d in range(len(lens))])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert torch.equal(unified_attention_varlen(q, k, v, cu, modes, srcs, backend="reference"), got)


@pytest.mark.parametrize("seed", range(3))
def test_batched_sdpa_varlen_equals_the_document_loop(seed):
    """sdpa_attention_varlen (documents batched by length bucket; the default off CUDA) against
    the per-document reference, fp64: outputs and all three gradients, every mode, GQA, empty
    and 1-token documents, lengths spread over several buckets, q/k/v as strided views."""
    from unimask.attention import reference_attention_varlen, sdpa_attention_varlen

    rng = torch.Generator().manual_seed(seed)
    lens = [0, 1, *torch.randint(1, 70, (9,), generator=rng).tolist(), 0, 33]
    modes = torch.randint(0, 4, (len(lens),), generator=rng)
    srcs = torch.tensor([int(torch.randint(0, n + 1, (1,), generator=rng)) for n in lens])
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()])
    T, H, HK, D = sum(lens), 4, 2, 8
    fused0 = torch.randn(T, (H + 2 * HK) * D, generator=rng, dtype=torch.float64)
    do = torch.randn(T, H, D, generator=rng, dtype=torch.float64)
    res = []
    for fn in (reference_attention_varlen, sdpa_attention_varlen,
               lambda *a: unified_attention_varlen(*a)):  # the dispatch's default on the CPU
        fused = fused0.clone().requires_grad_()
        q, k, v = fused.split([H * D, HK * D, HK * D], dim=1)
        q, k, v = q.reshape(T, H, D), k.reshape(T, HK, D), v.reshape(T, HK, D)
        o = fn(q, k, v, cu, modes, srcs)
        o.backward(do)
        res.append((o.detach(), fused.grad))
    for o, g in res[1:]:
        torch.testing.assert_close(o, res[0][0], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(g, res[0][1], rtol=1e-10, atol=1e-10)
    assert len(set(max(16, 1 << (n - 1).bit_length()) for n in lens if n)) >= 3  # several buckets ran


def test_varlen_reference_gradcheck_fp64():
    from unimask.attention import reference_attention_varlen

    cu, q, k, v = _packed([3, 4, 0, 2], 2, 1, 4, seed=4)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    fn = lambda q, k, v: reference_attention_varlen(q, k, v, cu, [3, 1, 0, 2], [1, 0, 0, 0])  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "cu,modes,srcs,max_seqlen,exc,needle",
    [
        ([1, 5, 9], [0, 0], [0, 0], None, ValueError, "start at 0"),
        ([0, 5, 8], [0, 0], [0, 0], None, ValueError, "end at T = 9"),
        ([0, 6, 5, 9], [0, 0, 0], [0, 0, 0], None, ValueError, "non-decreasing"),
        ([0, 5, 9], [0, 0], [0, 0], 4, ValueError, "max_seqlen = 4"),
        ([0, 5, 9], [3, 3], [2, 5], None, ValueError, "src_len[1] = 5"),
        ([0, 5, 9], [0, 7], [0, 0], None, ValueError, "attn_mode[1] = 7"),
        ([0, 5, 9], [0], [0, 0], None, ValueError, "attn_mode has 1 entries but cu_seqlens describes N = 2 documents"),
        ([0, 5, 9], [0, 0], [0, 0, 0], None, ValueError, "src_len has 3 entries but cu_seqlens describes N = 2"),
        ([0.0, 9.0], [0], [0], None, TypeError, "cu_seqlens"),
    ],
)
def test_varlen_bad_arguments(cu, modes, srcs, max_seqlen, exc, needle):
    q = torch.zeros(9, 2, 16)
    with pytest.raises(exc) as info:
        unified_attention_varlen(q, q, q, torch.tensor(cu), modes, srcs, max_seqlen)
    assert needle in str(info.value)


def test_varlen_unchecked_args_must_have_one_entry_per_document():
    """check=False skips the host reads but not the shape check: the kernel would index
    attn_mode[d] / src_len[d] for every document d < len(cu_seqlens) - 1."""
    q = torch.zeros(9, 2, 16)
    cu = torch.tensor([0, 5, 9])
    for which in ("attn_mode", "src_len"):
        args = {"attn_mode": torch.tensor([0, 0]), "src_len": torch.tensor([0, 0])}
        args[which] = torch.tensor([0])
        with pytest.raises(ValueError, match=f"{which} has 1 entries but cu_seqlens describes N = 2 documents"):
            unified_attention_varlen(q, q, q, cu, args["attn_mode"], args["src_len"], 5, check=False)


def test_varlen_bad_shapes():
    with pytest.raises(ValueError, match=r"\[T, H, D\]"):
        unified_attention_varlen(torch.zeros(1, 9, 2, 16), torch.zeros(9, 2, 16), torch.zeros(9, 2, 16), [0, 9], [0], [0])
    with pytest.raises(ValueError, match="multiple"):
        unified_attention_varlen(torch.zeros(9, 3, 16), torch.zeros(9, 2, 16), torch.zeros(9, 2, 16), [0, 9], [0], [0])


def test_varlen_checks_qkv_like_the_padded_api():
    """Integer q/k/v and q/k/v on different devices: the padded API's TypeError / ValueError on
    every varlen backend (they were torch's internal errors, or a RuntimeError of the kernel)."""
    cu, q, k, v = _packed([5, 4], 2, 1, 16, dtype=torch.float32)
    for backend in ("sdpa", "reference"):
        with pytest.raises(TypeError, match="q must be a floating-point tensor, got dtype torch.int64"):
            unified_attention_varlen(q.long(), k.long(), v.long(), cu, [0, 0], [0, 0], backend=backend)
        with pytest.raises(ValueError, match="q, k, v must be on one device, got cpu, meta, cpu"):
            unified_attention_varlen(q, k.to("meta"), v, cu, [0, 0], [0, 0], backend=backend)


def test_varlen_unchecked_takes_a_list_of_cu_seqlens():
    cu, q, k, v = _packed([5, 4], 2, 1, 16)
    want = unified_attention_varlen(q, k, v, cu, [3, 1], [2, 0], backend="sdpa")
    got = unified_attention_varlen(q, k, v, cu.tolist(), [3, 1], [2, 0], max_seqlen=5, backend="sdpa", check=False)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
