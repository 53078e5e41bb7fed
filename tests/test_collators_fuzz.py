"""Property tests: random small batches and settings never crash (no InternalError / panic)
and keep the invariants every recipe shares."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unimask.collators import CausalLMCollator, MASSCollator, MLMCollator, T5SpanCollator, UnifiedLMCollator

V = 50
SPEC = dict(vocab_size=V, pad_id=0, unk_id=1, cls_id=2, sep_id=3, mask_id=4)
SPECIALS = {0, 1, 2, 3, 4}

seq = st.lists(st.integers(0, V - 1), min_size=1, max_size=40)
batch = st.lists(seq, min_size=1, max_size=20)
settings_ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@settings_
@given(
    batch,
    st.floats(0, 1),
    st.sampled_from([None, "ngram", "geometric"]),
    st.booleans(),
    st.one_of(st.none(), st.integers(3, 30)),
    st.one_of(st.none(), st.integers(1, 8)),
    st.integers(0, 2**32),
)
def test_mlm_invariants(b, p, span, add_special, max_length, pad_mult, seed):
    c = MLMCollator(**SPEC, mlm_probability=p, span=span, add_special_tokens=add_special,
                    max_length=max_length, truncation=True, pad_to_multiple_of=pad_mult, seed=seed)
    out = c([np.asarray(x, dtype=np.int64) for x in b])
    inp, lab, n = out["input_ids"].numpy(), out["labels"].numpy(), out["seq_len"].numpy()
    for r, x in enumerate(b):
        body = list(x)
        room = None if max_length is None else max_length - (2 if add_special else 0)
        if room is not None and len(body) > room:
            body = body[:room]  # truncation cuts the tokens, the specials stay
        row = ([2] + body + [3]) if add_special else body
        assert n[r] == len(row)
        m = lab[r] != -100
        assert not m[n[r]:].any() and (inp[r, n[r]:] == 0).all()
        orig = np.asarray(row)
        restored = np.where(m[: n[r]], lab[r, : n[r]], inp[r, : n[r]])
        assert (restored == orig).all()
        assert not np.isin(orig[m[: n[r]]], list(SPECIALS)).any()
        changed = m[: n[r]] & (inp[r, : n[r]] != 4)
        assert not np.isin(inp[r, : n[r]][changed], list(SPECIALS)).any()


@settings_
@given(st.lists(st.tuples(seq, st.lists(st.integers(5, V - 1), max_size=30)), min_size=1, max_size=20),
       st.one_of(st.none(), st.integers(6, 40)), st.integers(0, 2**32))
def test_unilm_invariants(pairs, max_length, seed):
    c = UnifiedLMCollator(**SPEC, max_length=max_length, truncation=True, seed=seed)
    try:
        out = c([(np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)) for a, b in pairs])
    except ValueError as e:  # a segment would vanish under max_length: a clear error
        assert "max_length" in str(e)
        return
    n, src, mode = out["seq_len"].numpy(), out["src_len"].numpy(), out["attn_mode"].numpy()
    ids = out["input_ids"].numpy()
    for r, (a, b) in enumerate(pairs):
        assert ids[r, 0] == 2 and ids[r, n[r] - 1] == 3 and ids[r, src[r] - 1] == 3
        assert 2 <= src[r] <= n[r]
        if not b:
            assert mode[r] != 3
        if mode[r] == 3:
            assert (out["labels"][r, : src[r]] == -100).all()


@settings_
@given(batch, st.one_of(st.none(), st.integers(1, 30)), st.integers(0, 2**32))
def test_mass_t5_causal_do_not_crash(b, max_length, seed):
    arrs = [np.asarray(x, dtype=np.int64) for x in b]
    out = MASSCollator(**SPEC, max_length=max_length, truncation=True, seed=seed)(arrs)
    assert (out["decoder_len"] >= 1).all()
    if max_length is None or max_length >= 2:
        t5 = T5SpanCollator(vocab_size=V + 40, eos_id=3, pad_id=0, max_length=max_length, truncation=True, seed=seed)
        out = t5(arrs)
        assert (out["labels_len"] >= 1).all()
    for pack in (False, True):
        if pack and max_length is None:
            continue
        out = CausalLMCollator(vocab_size=V, pad_id=0, eos_id=3, max_length=max_length, truncation=True, pack=pack)(arrs)
        lab, inp, n = out["labels"], out["input_ids"], out["seq_len"]
        for r in range(lab.shape[0]):
            k = int(n[r])
            assert lab[r, k - 1] == -100 and (lab[r, : k - 1] == inp[r, 1:k]).all()


@pytest.mark.parametrize("bad", [[-1], [V], [2**40]])
def test_out_of_vocab_ids_raise(bad):
    with pytest.raises(ValueError, match=str(bad[0])):
        MLMCollator(**SPEC)([bad])
