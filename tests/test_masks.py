"""The mask predicate of :mod:`unimask.masks`: ``dense_mask`` against two independent oracles.

Oracle 1 is the plain-Python :func:`unimask.masks.allowed`. Oracle 2 is the issue's text
(issue 5, "Mask semantics") re-typed here independently, one function per mode, so that a
bug shared by ``allowed`` and ``dense_mask`` would still be caught.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from unimask.masks import (
    BIDIRECTIONAL,
    LEFT_TO_RIGHT,
    MODE_NAMES,
    RIGHT_TO_LEFT,
    SEQ2SEQ,
    allowed,
    check_batch_len,
    check_mask_args,
    dense_mask,
)


# --- oracle 2: the issue's four definitions, written out independently -------------------------
def _issue_bidirectional(src: int, seq: int, i: int, j: int) -> bool:
    return i < seq and j < seq


def _issue_left_to_right(src: int, seq: int, i: int, j: int) -> bool:
    return i < seq and j <= i


def _issue_right_to_left(src: int, seq: int, i: int, j: int) -> bool:
    return i < seq and i <= j < seq


def _issue_seq2seq(src: int, seq: int, i: int, j: int) -> bool:
    if i >= seq:
        return False
    return j < src if i < src else j <= i


_ISSUE = {
    BIDIRECTIONAL: _issue_bidirectional,
    LEFT_TO_RIGHT: _issue_left_to_right,
    RIGHT_TO_LEFT: _issue_right_to_left,
    SEQ2SEQ: _issue_seq2seq,
}


def _oracle_dense(fn, mode: int, src: int, seq: int, L: int) -> torch.Tensor:
    return torch.tensor([[fn(mode, src, seq, i, j) for j in range(L)] for i in range(L)], dtype=torch.bool).view(L, L)


def _all_cases(L: int):
    """Every (mode, src_len, seq_len) with 0 <= src_len <= seq_len <= L."""
    for mode in range(4):
        for seq in range(L + 1):
            for src in range(seq + 1):
                yield mode, src, seq


def test_mode_codes_match_names():
    assert (BIDIRECTIONAL, LEFT_TO_RIGHT, RIGHT_TO_LEFT, SEQ2SEQ) == (0, 1, 2, 3)
    assert MODE_NAMES == ("bidirectional", "left_to_right", "right_to_left", "seq2seq")


@pytest.mark.parametrize("L", [1, 2, 5, 7])
def test_dense_mask_exhaustive_small_L(L):
    """All modes, all src_len/seq_len pairs (incl. 0, 1, seq_len, L): both oracles agree with dense_mask."""
    cases = list(_all_cases(L))
    mode = torch.tensor([c[0] for c in cases])
    src = torch.tensor([c[1] for c in cases])
    seq = torch.tensor([c[2] for c in cases])
    got = dense_mask(mode, src, seq, L)
    assert got.shape == (len(cases), L, L) and got.dtype == torch.bool
    for b, (m, s, n) in enumerate(cases):
        want_allowed = _oracle_dense(allowed, m, s, n, L)
        want_issue = _oracle_dense(lambda _m, s_, n_, i, j: _ISSUE[m](s_, n_, i, j), m, s, n, L)
        assert torch.equal(want_allowed, want_issue), f"allowed() disagrees with the issue text at {(m, s, n)}"
        assert torch.equal(got[b], want_issue), f"dense_mask wrong for mode={m} src={s} seq={n} L={L}"


def test_dense_mask_random_batch_mixed_modes():
    g = torch.Generator().manual_seed(1)
    B, L = 32, 19
    mode = torch.randint(0, 4, (B,), generator=g)
    seq = torch.randint(0, L + 1, (B,), generator=g)
    src = (torch.rand(B, generator=g) * (seq + 1).float()).long().clamp(max=seq)
    got = dense_mask(mode, src, seq, L)
    for b in range(B):
        m, s, n = int(mode[b]), int(src[b]), int(seq[b])
        assert torch.equal(got[b], _oracle_dense(lambda _m, s_, n_, i, j: _ISSUE[m](s_, n_, i, j), m, s, n, L))


def test_hand_computed_seq2seq_example():
    """src_len=2, seq_len=4, L=5: source rows see the source, target rows their left context."""
    want = torch.tensor(
        [
            [1, 1, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0],
            [1, 1, 1, 1, 0],
            [0, 0, 0, 0, 0],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(dense_mask(torch.tensor([3]), torch.tensor([2]), torch.tensor([4]), 5)[0], want)


def test_hand_computed_right_to_left_example():
    want = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(dense_mask(torch.tensor([2]), torch.tensor([0]), torch.tensor([3]), 4)[0], want)


def test_src_len_ignored_outside_seq2seq():
    L = 6
    for mode in (BIDIRECTIONAL, LEFT_TO_RIGHT, RIGHT_TO_LEFT):
        masks = dense_mask(torch.tensor([mode] * 6), torch.arange(6), torch.tensor([5] * 6), L)
        assert all(torch.equal(masks[0], masks[b]) for b in range(6))


def test_seq2seq_edge_src_lengths():
    """src_len=0 -> left_to_right; src_len=seq_len -> bidirectional over the valid tokens."""
    L, n = 9, 7
    s2s = dense_mask(torch.tensor([SEQ2SEQ, SEQ2SEQ]), torch.tensor([0, n]), torch.tensor([n, n]), L)
    ref = dense_mask(torch.tensor([LEFT_TO_RIGHT, BIDIRECTIONAL]), torch.tensor([0, 0]), torch.tensor([n, n]), L)
    assert torch.equal(s2s, ref)


def test_every_valid_query_sees_itself_and_padding_sees_nothing():
    L = 8
    cases = list(_all_cases(L))
    m = dense_mask(torch.tensor([c[0] for c in cases]), torch.tensor([c[1] for c in cases]), torch.tensor([c[2] for c in cases]), L)
    for b, (_mode, _src, seq) in enumerate(cases):
        diag = torch.diagonal(m[b])
        assert diag[:seq].all() and not m[b, seq:].any() and not m[b, :, seq:].any()


def test_empty_batch_and_zero_length():
    e = torch.zeros(0, dtype=torch.long)
    assert dense_mask(e, e, e, 4).shape == (0, 4, 4)
    assert dense_mask(torch.tensor([0]), torch.tensor([0]), torch.tensor([0]), 0).shape == (1, 0, 0)


def test_accepts_int32_lists_and_numpy():
    np = pytest.importorskip("numpy")
    a = dense_mask(torch.tensor([3], dtype=torch.int32), torch.tensor([2], dtype=torch.int16), torch.tensor([4]), 5)
    b = dense_mask([3], np.array([2]), (4,), 5)
    assert torch.equal(a, b)


# --- error cases ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "mode,src,seq,L,exc,needle",
    [
        ([4], [0], [3], 5, ValueError, "attn_mode[0] = 4"),
        ([0, -1], [0, 0], [3, 3], 5, ValueError, "attn_mode[1] = -1"),
        ([3], [4], [3], 5, ValueError, "src_len[0] = 4"),
        ([3], [-1], [3], 5, ValueError, "src_len[0] = -1"),
        ([0], [0], [6], 5, ValueError, "seq_len[0] = 6"),
        ([0], [0], [-2], 5, ValueError, "seq_len[0] = -2"),
        ([0, 1], [0], [3, 3], 5, ValueError, "same length"),
        ([[0]], [[0]], [[3]], 5, ValueError, "1-D"),
    ],
)
def test_bad_values_raise_naming_the_value(mode, src, seq, L, exc, needle):
    with pytest.raises(exc, match=None) as info:
        dense_mask(torch.tensor(mode), torch.tensor(src), torch.tensor(seq), L)
    assert needle in str(info.value)


@pytest.mark.parametrize("which", ["attn_mode", "src_len", "seq_len"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bool])
def test_non_integer_dtypes_raise_type_error(which, dtype):
    args = {"attn_mode": torch.tensor([0]), "src_len": torch.tensor([0]), "seq_len": torch.tensor([1])}
    args[which] = args[which].to(dtype)
    with pytest.raises(TypeError, match=which):
        check_mask_args(args["attn_mode"], args["src_len"], args["seq_len"], 4)


def test_non_tensor_garbage_raises_type_error():
    with pytest.raises(TypeError, match="attn_mode"):
        dense_mask(object(), [0], [1], 4)


def test_allowed_rejects_bad_mode():
    with pytest.raises(ValueError, match="got 7"):
        allowed(7, 0, 3, 0, 0)


def test_allowed_matches_issue_text_exhaustively():
    for mode, src, seq in _all_cases(6):
        for i, j in itertools.product(range(7), repeat=2):
            assert allowed(mode, src, seq, i, j) == _ISSUE[mode](src, seq, i, j)


def test_check_mask_args_batch_counts_entries_and_never_broadcasts():
    one, two = torch.tensor([0]), torch.tensor([0, 0])
    mode, src, seq = check_mask_args(two, two, torch.tensor([3, 1]), 4, batch=2)
    assert seq.tolist() == [3, 1]
    with pytest.raises(ValueError, match="attn_mode has 1 entries but the batch has B = 2 samples"):
        check_mask_args(one, one, torch.tensor([3]), 4, batch=2)
    with pytest.raises(ValueError, match="seq_len has 3 entries but the batch has B = 2 samples"):
        check_mask_args(two, two, torch.tensor([1, 1, 1]), 4, batch=2)
    with pytest.raises(ValueError, match="src_len has 1 entries"):
        dense_mask(two, one, two, 4, batch=2)
    # without batch only the three lengths are compared (as before)
    assert check_mask_args(one, one, torch.tensor([3]), 4)[2].tolist() == [3]
    # lists are counted too (unified_attention(check=False) still accepts them)
    with pytest.raises(ValueError, match="seq_len has 1 entries but the batch has B = 2"):
        check_batch_len("seq_len", [4], 2)
    check_batch_len("seq_len", [4, 4], 2)
    with pytest.raises(ValueError, match="seq_len has type object but"):
        check_batch_len("seq_len", object(), 2)
