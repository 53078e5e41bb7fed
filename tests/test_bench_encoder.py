"""The ``unimask bench`` encoder cases time the same work on both sides: unimask's
``TransformerEncoder`` and ``transformers.BertModel``, loaded from the same MiniLM-L6
checkpoint, give the same hidden states for the same token ids (the reference is the oracle),
for one 16-token sentence and for a right-padded batch of 32."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("which", [0, 1], ids=["single_sentence", "padded_batch"])
def test_encoder_bench_cases_compare_the_same_forward(corpus_paths, which):
    pytest.importorskip("transformers", reason="the encoder cases' reference side is transformers.BertModel")
    from unimask.bench_cases import all_cases
    from unimask.bench_cases.encoder import BATCH, MAX_LEN, SINGLE_LEN, cases, inputs

    case = cases()[which]
    assert case.name in [c.name for c in all_cases()] and "MiniLM-L6 encoder forward" in case.name
    ours, ref, work, unit = case.setup(corpus_paths)
    assert unit == "tokens" and ref is not None
    got, want = ours(), ref()
    assert not torch.is_inference_mode_enabled()
    if which == 0:
        assert got.shape == want.shape == (1, SINGLE_LEN, 384) and work == SINGLE_LEN
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    else:
        B, L, C = got.shape
        assert want.shape == got.shape and B == BATCH and L <= MAX_LEN and C == 384
        assert SINGLE_LEN < work < B * L  # real tokens only, and the batch is padded
        _, ids, mask = inputs(corpus_paths, single=False)
        assert ids.shape == (B, L) and int(mask.sum()) == work and mask.sum(1).max() == L
        real = mask.bool()  # the padded positions' states are not compared (no meaning on either side)
        torch.testing.assert_close(got[real], want[real], rtol=1e-4, atol=1e-4)
