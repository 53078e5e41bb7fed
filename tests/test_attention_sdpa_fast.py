"""The CPU attention path's shortcuts: :func:`unimask.attention.sdpa_attention` and the packed
:func:`unimask.attention.sdpa_attention_varlen`.

``sdpa_attention`` hands SDPA the mask from each query row's key interval, and, when the three
integers are on the CPU (free to read), nothing (every sample bidirectional over all ``L``),
``is_causal=True`` (every sample left_to_right over all ``L``) or a ``[B, 1, 1, L]`` key-padding
mask (every sample bidirectional, some padded); the output is multiplied by the valid-row
indicator only when a row is padded. Oracles: :func:`reference_attention` in fp64 (forward and
the three gradients), and for dropout the old formulation written out here (SDPA under
``dense_mask | padded rows``, times the valid-row indicator), which draws the same dropout mask
for the same seed. Which shortcut ran is observed with a spy on
``torch.nn.functional.scaled_dot_product_attention``; integers on a (simulated) accelerator
must take the masked path without any device read (``FakeDevice`` of ``test_validation_syncs``).
The packed path builds its per-layout plan (length buckets, gathers, masks) once, not per layer.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import unimask.attention as A
from test_attention import assert_sdpa_matches_reference
from test_validation_syncs import DEV, FakeDevice, dev, on_dev, values
from unimask.attention import (
    reference_attention,
    reference_attention_varlen,
    sdpa_attention,
    unified_attention,
    unified_attention_varlen,
)
from unimask.masks import dense_mask

pytestmark = pytest.mark.usefixtures("one_torch_thread")

L = 7
#: name -> (attn_mode, src_len, seq_len, the SDPA call expected on CPU integers)
BATCHES = {
    "mixed_padded": ([0, 1, 2, 3, 3, 1], [0, 0, 0, 1, 4, 0], [7, 5, 6, 7, 4, 0], "mask"),
    "mixed_full": ([0, 1, 2, 3, 3, 0], [0, 0, 0, 1, 7, 3], [7] * 6, "mask_unmultiplied"),
    "bidirectional_full": ([0] * 4, [0, 3, 7, 1], [7] * 4, "none"),
    "causal_full": ([1] * 4, [0, 3, 7, 1], [7] * 4, "causal"),
    "bidirectional_padded": ([0] * 5, [0, 2, 0, 0, 1], [7, 3, 0, 5, 1], "key_padding"),
    "causal_padded": ([1] * 3, [0, 0, 0], [7, 2, 6], "mask"),
    "right_to_left_full": ([2] * 3, [0, 0, 0], [7] * 3, "mask_unmultiplied"),
    "seq2seq_padded": ([3] * 4, [0, 3, 5, 1], [5, 7, 5, 2], "mask"),
}


def _ints(name):
    mode, src, seq, _ = BATCHES[name]
    return torch.tensor(mode), torch.tensor(src), torch.tensor(seq)


def _qkv(B, H, HK, D=4, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, h, L, D, generator=g, dtype=dtype) for h in (H, HK, HK))


def _old_formulation(q, k, v, mode, src, seq, scale=None, dropout_p=0.0):
    """The path before the shortcuts: SDPA under dense_mask with padded rows opened, times
    the valid-row indicator (the dropout oracle: same mask, so the same draws)."""
    H = q.shape[1]
    mask = dense_mask(mode, src, seq, q.shape[2])[:, None]
    row_ok = mask.any(-1, keepdim=True)
    k, v = (t.repeat_interleave(H // t.shape[1], dim=1) for t in (k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask | ~row_ok, dropout_p=dropout_p, scale=scale)
    return out * row_ok.to(out.dtype)


@pytest.mark.parametrize("check", [True, False], ids=["checked", "unchecked"])
@pytest.mark.parametrize("hk", [2, 1], ids=["mha", "gqa"])
@pytest.mark.parametrize("name", list(BATCHES))
def test_sdpa_matches_the_fp64_reference(name, hk, check):
    """Forward and the three gradients against reference_attention, every kind of batch;
    padded query rows (and padded keys) exactly zero, in output and gradients."""
    mode, src, seq = _ints(name)
    assert_sdpa_matches_reference(*_qkv(len(mode), 2, hk, seed=len(name)), mode, src, seq, check=check)


class _Spy:
    """Wraps SDPA; records each call's ``attn_mask`` / ``is_causal`` and its result."""

    def __init__(self, monkeypatch):
        self.calls = []
        real = F.scaled_dot_product_attention

        def spy(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **kw):
            out = real(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, **kw)
            self.calls.append((attn_mask, is_causal, out))
            return out

        monkeypatch.setattr(F, "scaled_dot_product_attention", spy)


@pytest.mark.parametrize("name", list(BATCHES))
def test_cpu_integers_pick_the_cheapest_sdpa_call(monkeypatch, name):
    """Uniform full-length bidirectional: ``attn_mask=None``; uniform full-length causal:
    ``is_causal=True``; bidirectional with padding: a [B, 1, 1, L] mask; no padded row: SDPA's
    result returned as it is (no multiplication); otherwise the [B, 1, L, L] interval mask, its
    padded rows open, the result multiplied. The same through unified_attention's dispatch."""
    mode, src, seq = _ints(name)
    kind = BATCHES[name][3]
    q, k, v = (t.requires_grad_() for t in _qkv(len(mode), 2, 2, dtype=torch.float32))  # no in-place product
    spy = _Spy(monkeypatch)
    for out in (sdpa_attention(q, k, v, mode, src, seq), unified_attention(q, k, v, mode, src, seq, backend="sdpa", check=False)):
        attn_mask, is_causal, sdpa_out = spy.calls.pop(0)
        assert is_causal == (kind == "causal")
        if kind in ("none", "causal"):
            assert attn_mask is None
        elif kind == "key_padding":
            want = torch.arange(L)[None, :] < torch.where(seq > 0, seq, L)[:, None]
            assert attn_mask.shape == (len(mode), 1, 1, L) and torch.equal(attn_mask[:, 0, 0], want)
        else:
            want = dense_mask(mode, src, seq, L)
            want |= ~want.any(-1, keepdim=True)
            assert attn_mask.shape == (len(mode), 1, L, L) and torch.equal(attn_mask[:, 0], want)
        assert (out is sdpa_out) == (kind in ("none", "causal", "mask_unmultiplied"))
        with torch.no_grad():
            torch.testing.assert_close(out, _old_formulation(q, k, v, mode, src, seq), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "autograd"])
def test_padded_rows_are_zeroed_in_place_only_without_autograd(monkeypatch, grad):
    """Padded rows are zeroed in SDPA's own output buffer when no gradient flows (a fresh
    buffer for the product costs more than the product), in a new tensor when one does (SDPA
    saves its output for the backward); the values are the old formulation's either way."""
    mode, src, seq = _ints("mixed_padded")
    q, k, v = (t.requires_grad_(grad) for t in _qkv(len(mode), 2, 2, dtype=torch.float32, seed=6))
    spy = _Spy(monkeypatch)
    out = sdpa_attention(q, k, v, mode, src, seq)
    (_, _, sdpa_out), = spy.calls
    assert (out is sdpa_out) == (not grad) and out.requires_grad == grad
    with torch.no_grad():
        torch.testing.assert_close(out, _old_formulation(q, k, v, mode, src, seq), rtol=1e-5, atol=1e-6)
    for b, n in enumerate(seq.tolist()):
        assert not out[b, :, n:].any()
    if grad:
        out.sum().backward()
        assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize("name", list(BATCHES))
def test_dropout_draws_as_before(name):
    """With dropout each shortcut draws the same mask as the old masked call for the same seed
    (so the shortcut changes no training run), padded rows stay zero, and the seed reproduces."""
    mode, src, seq = _ints(name)
    q, k, v = _qkv(len(mode), 2, 1, seed=3)
    torch.manual_seed(7)
    got = sdpa_attention(q, k, v, mode, src, seq, dropout_p=0.5)
    torch.manual_seed(7)
    want = _old_formulation(q, k, v, mode, src, seq, dropout_p=0.5)
    assert torch.equal(got, want)
    assert not torch.allclose(got, sdpa_attention(q, k, v, mode, src, seq))
    for b, n in enumerate(seq.tolist()):
        assert not got[b, :, n:].any()


@pytest.mark.parametrize("check", [True, False], ids=["checked", "unchecked"])
@pytest.mark.parametrize("name", ["bidirectional_full", "causal_full", "mixed_padded"])
def test_device_integers_take_the_masked_path_without_a_read(monkeypatch, name, check):
    """Integers on an accelerator: no shortcut (deciding one would read them), the [B, 1, L, L]
    mask built on the device, every row multiplied; no read at all unless asked to validate
    (one read, check_mask_args'), and no blocking copy. Values as on the CPU."""
    mode, src, seq = _ints(name)
    q, k, v = _qkv(len(mode), 2, 1, dtype=torch.float32, seed=4)
    want = reference_attention(q, k, v, mode, src, seq)
    spy = _Spy(monkeypatch)
    with FakeDevice() as fake:
        qd, kd, vd, md, sd, nd = (dev(t) for t in (q, k, v, mode, src, seq))
        out = sdpa_attention(qd, kd, vd, md, sd, nd, check=check)
        assert (fake.reads, fake.blocking) == (int(check), 0)
        out2 = unified_attention(qd, kd, vd, md, sd, nd, backend="sdpa", check=False)
        assert (fake.reads, fake.blocking) == (int(check), 0)
    for o in (out, out2):
        assert on_dev(o)
        torch.testing.assert_close(torch.tensor(values(o)), want, rtol=1e-5, atol=1e-6)
    for attn_mask, is_causal, sdpa_out in spy.calls:
        assert not is_causal and attn_mask.shape == (len(mode), 1, L, L) and on_dev(attn_mask)


def test_cpu_integers_with_device_tensors_copy_without_waiting():
    """CPU integers with q on an accelerator: the shortcut is decided on the host and the mask
    copied over without a blocking copy; nothing is read back."""
    mode, src, seq = _ints("bidirectional_padded")
    q, k, v = _qkv(len(mode), 2, 2, dtype=torch.float32, seed=5)
    with FakeDevice() as fake:
        out = sdpa_attention(*(dev(t) for t in (q, k, v)), mode, src, seq, check=False)
        assert (fake.reads, fake.blocking) == (0, 0) and on_dev(out)
    torch.testing.assert_close(torch.tensor(values(out)), reference_attention(q, k, v, mode, src, seq), rtol=1e-5, atol=1e-6)


def test_empty_batch_and_empty_sequence():
    for B, Lz in ((0, 4), (3, 0)):
        q = torch.randn(B, 2, Lz, 4, dtype=torch.float64)
        for mode in (0, 1, 2):
            ints = (torch.full((B,), mode), torch.zeros(B, dtype=torch.long), torch.full((B,), Lz))
            out = sdpa_attention(q, q, q, *ints)
            assert out.shape == q.shape
            torch.testing.assert_close(out, reference_attention(q, q, q, *ints))


# --- packed rows ------------------------------------------------------------------------------
def _packed(lens, H, HK, D, seed=0):
    g = torch.Generator().manual_seed(seed)
    T = sum(lens)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()])
    return cu, *(torch.randn(T, h, D, generator=g, dtype=torch.float64) for h in (H, HK, HK))


LAYOUTS = [
    ([5, 0, 17, 3, 9, 9, 1], [3, 0, 2, 1, 0, 0, 3], [2, 0, 0, 0, 0, 0, 1]),
    ([16, 16, 32, 32], [0, 0, 1, 1], [0, 0, 0, 0]),  # full-length buckets: no-mask and causal calls
    ([20, 12], [0, 3], [0, 12]),
]


def test_varlen_layouts_in_turn_each_get_their_own_result():
    """Layouts called in turn, as layers of different models would (the plan is built per
    call): each result is its own layout's (fp64, against the per-document reference)."""
    data = [(_packed(lens, 4, 2, 8, seed=s), modes, srcs) for s, (lens, modes, srcs) in enumerate(LAYOUTS)]
    for _ in range(2):
        for (cu, q, k, v), modes, srcs in data:
            got = unified_attention_varlen(q, k, v, cu, torch.tensor(modes), torch.tensor(srcs), int((cu[1:] - cu[:-1]).max()), check=False)
            torch.testing.assert_close(got, reference_attention_varlen(q, k, v, cu, modes, srcs), rtol=1e-12, atol=1e-12)


def test_varlen_after_inference_mode_trains(monkeypatch):
    """An inference-mode forward, then a training forward over the same documents: the
    gradients equal the reference's."""
    lens, modes, srcs = LAYOUTS[0]
    cu, q, k, v = _packed(lens, 4, 2, 8, seed=9)
    with torch.inference_mode():
        A.sdpa_attention_varlen(q, k, v, cu, modes, srcs)
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    out = A.sdpa_attention_varlen(q, k, v, cu, modes, srcs)
    do = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), do)
    want = torch.autograd.grad(reference_attention_varlen(q, k, v, cu, modes, srcs), (q, k, v), do)
    for g, w in zip(grads, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_varlen_shortcuts_per_bucket(monkeypatch):
    """Buckets whose documents all fill the bucket: a bidirectional one runs without a mask,
    a left_to_right one with is_causal; the values match the reference."""
    lens, modes, srcs = LAYOUTS[1]
    cu, q, k, v = _packed(lens, 2, 2, 4, seed=2)
    spy = _Spy(monkeypatch)
    got = A.sdpa_attention_varlen(q, k, v, cu, modes, srcs)
    torch.testing.assert_close(got, reference_attention_varlen(q, k, v, cu, modes, srcs), rtol=1e-12, atol=1e-12)
    assert [(m, c) for m, c, _ in spy.calls] == [(None, False), (None, True)]


def test_varlen_device_layout_is_read_once(monkeypatch):
    """Packed documents with cu_seqlens / modes / src_len on the accelerator (the model's
    per-layer call, check=False): the host grouping reads the three in one transfer (it read
    them in three), and nothing else is read or copied with a wait."""
    lens, modes, srcs = LAYOUTS[0]
    cu, q, k, v = _packed(lens, 2, 1, 4, seed=3)
    q, k, v = (t.float() for t in (q, k, v))
    want = reference_attention_varlen(q, k, v, cu, modes, srcs)
    with FakeDevice() as fake:
        args = [dev(t) for t in (q, k, v, cu, torch.tensor(modes), torch.tensor(srcs))]
        out = unified_attention_varlen(*args, max(lens), backend="sdpa", check=False)
        assert (fake.reads, fake.blocking) == (1, 0)
    assert on_dev(out)
    torch.testing.assert_close(torch.tensor(values(out)), want, rtol=1e-5, atol=1e-6)
    assert DEV.type == "meta"
