"""``torch.compile`` on the models (CPU, the SDPA path): compiled forward and backward match eager.

The per-forward validation of the mask integers reads them on the host, so Dynamo breaks the
graph there (once per forward, before the layers); the layers themselves must trace without a
break, or every layer would run as a separate graph.
"""

from __future__ import annotations

import pytest
import torch

from unimask.models import EncoderConfig, TransformerEncoder

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def _model() -> TransformerEncoder:
    torch.manual_seed(0)
    cfg = EncoderConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return TransformerEncoder(cfg)


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_compiled_encoder_matches_eager(packed):
    m = _model()
    ids = torch.randint(1, 100, (3, 9), generator=torch.Generator().manual_seed(1))
    if packed:  # two rows of packed documents, one mode per document
        ids = ids[:2]
        kw = dict(cu_seqlens=torch.tensor([0, 4, 9, 13, 18]), attn_mode=torch.tensor([0, 1, 3, 2]),
                  src_len=torch.tensor([0, 0, 2, 0]))
    else:  # all modes, padding
        kw = dict(attn_mode=torch.tensor([0, 1, 3]), src_len=torch.tensor([0, 0, 4]), seq_len=torch.tensor([9, 7, 8]))
    # against a fixed random tensor: sum(h ** 2) of a LayerNorm output is a constant
    proj = torch.randn(*ids.shape, 32, generator=torch.Generator().manual_seed(2))
    want = m(ids, **kw).last_hidden_state
    (want * proj).sum().backward()
    want_grads = _grads(m)
    m.zero_grad(set_to_none=True)

    torch._dynamo.reset()
    got = torch.compile(m)(ids, **kw).last_hidden_state
    (got * proj).sum().backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    got_grads = _grads(m)
    # every parameter but the pooler's (unused by this loss) has a gradient, on both sides; the
    # compiled graph holds the pooler with the layers (no graph break between them since the
    # attention's mask is built without re-validating the integers), and AOTAutograd then
    # returns zeros for it where eager returns None
    assert set(want_grads) == {n for n, _ in m.named_parameters() if not n.startswith("pooler")}
    extra = set(got_grads) - set(want_grads)
    assert set(want_grads) <= set(got_grads) and extra <= {"pooler.weight", "pooler.bias"}, extra
    assert all(not got_grads[n].any() for n in extra)
    for name, w in want_grads.items():  # Inductor fuses and reorders fp32 sums
        rel = ((got_grads[name] - w).norm() / w.norm()).item()
        assert rel < 1e-4, (name, rel)


def test_graph_breaks_only_in_the_per_forward_validation():
    m = _model()
    ids = torch.randint(1, 100, (3, 9), generator=torch.Generator().manual_seed(1))
    kw = dict(attn_mode=torch.tensor([0, 1, 3]), src_len=torch.tensor([0, 0, 4]), seq_len=torch.tensor([9, 7, 8]))
    torch._dynamo.reset()
    explained = torch._dynamo.explain(m)(ids, **kw)
    places = {(f.filename.replace("\\", "/").rsplit("/", 1)[-1]) for b in explained.break_reasons for f in b.user_stack[-1:]}
    assert places <= {"masks.py"}, [(b.reason.splitlines()[0], b.user_stack[-1:]) for b in explained.break_reasons]
