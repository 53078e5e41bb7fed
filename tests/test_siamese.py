"""Siamese bi-encoder: pooled embeddings of the real MiniLM vs sentence-transformers, and the
training losses vs hand-computed formulas (numpy)."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from unimask.finetune import SiameseEncoder, contrastive_loss, cosine_similarity_loss, in_batch_negatives_loss


pytestmark = pytest.mark.usefixtures("one_torch_thread")



TEXTS = [
    "How do I reset my password?",
    "The library opens at nine on weekdays.",
    "ok",
    "Zürich's café serves crème brûlée — naïvely priced at 12€.",
    "东京是日本的首都。",
    "A much longer sentence that keeps going " * 40,  # > 256 tokens: truncated like ST
    "   leading and trailing spaces   ",
]


@pytest.fixture(scope="module")
def encoders(minilm_dir):
    st = pytest.importorskip("sentence_transformers")
    return SiameseEncoder.from_pretrained(minilm_dir), st.SentenceTransformer(str(minilm_dir), device="cpu")


def test_mean_pooled_normalized_embeddings_equal_sentence_transformers(encoders):
    ours, ref = encoders
    a = ours.encode(TEXTS, batch_size=3)
    b = torch.from_numpy(ref.encode(TEXTS, batch_size=3, convert_to_numpy=True))
    assert a.shape == b.shape == (len(TEXTS), 384)
    assert (a - b).abs().max().item() < 1e-5
    assert torch.allclose(a.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5)


def test_cls_and_max_pooling_equal_sentence_transformers_pooling(encoders, minilm_dir):
    st = pytest.importorskip("sentence_transformers")
    ours, ref = encoders
    transformer = ref[0]
    for mode in ("cls", "max"):
        pooling = st.models.Pooling(384, pooling_mode=mode)
        model = st.SentenceTransformer(modules=[transformer, pooling], device="cpu")
        b = torch.from_numpy(model.encode(TEXTS[:5], convert_to_numpy=True))
        enc = SiameseEncoder(ours.encoder, ours.tokenizer, pooling=mode, normalize=False)
        assert (enc.encode(TEXTS[:5]) - b).abs().max().item() < 1e-4, mode


def test_encode_order_and_single_text_errors(encoders):
    ours, _ = encoders
    fwd = ours.encode(TEXTS)
    rev = ours.encode(TEXTS[::-1])
    assert torch.allclose(fwd, rev.flip(0), atol=1e-6)
    with pytest.raises(TypeError, match="one str"):
        ours.encode("just one string")


def _np_cos(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T


def test_in_batch_negatives_loss_hand_computed():
    # two anchors, two positives, orthogonal where it matters:
    # cos(a0,p0)=1, cos(a0,p1)=0, cos(a1,p0)=0.6, cos(a1,p1)=0.8
    a = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    p = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    l0 = -np.log(np.exp(20 * 1.0) / (np.exp(20 * 1.0) + np.exp(0.0)))
    l1 = -np.log(np.exp(20 * 0.8) / (np.exp(20 * 0.6) + np.exp(20 * 0.8)))
    assert in_batch_negatives_loss(a, p).item() == pytest.approx((l0 + l1) / 2, rel=1e-5)  # float32
    # random case with hard negatives (more positives than anchors), numpy oracle
    rng = np.random.default_rng(0)
    A, P = rng.normal(size=(5, 8)), rng.normal(size=(7, 8))
    s = 20 * _np_cos(A, P)
    expected = np.mean([np.log(np.exp(s[i]).sum()) - s[i, i] for i in range(5)])
    got = in_batch_negatives_loss(torch.tensor(A), torch.tensor(P)).item()
    assert got == pytest.approx(expected, rel=1e-6)
    assert in_batch_negatives_loss(torch.tensor(A), torch.tensor(P), scale=1.0).item() != pytest.approx(got)
    with pytest.raises(ValueError):
        in_batch_negatives_loss(torch.tensor(P), torch.tensor(A))


def test_cosine_and_contrastive_losses_hand_computed():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    target = rng.uniform(-1, 1, 6)
    assert cosine_similarity_loss(torch.tensor(a), torch.tensor(b), torch.tensor(target)).item() == \
        pytest.approx(np.mean((cos - target) ** 2), rel=1e-6)
    y = np.array([1, 0, 1, 0, 0, 1])
    d = 1 - cos
    expected = np.mean(0.5 * (y * d ** 2 + (1 - y) * np.maximum(0.5 - d, 0) ** 2))
    assert contrastive_loss(torch.tensor(a), torch.tensor(b), torch.tensor(y)).item() == pytest.approx(expected, rel=1e-6)


def test_in_batch_negatives_training_pulls_pairs_together(minilm_dir):
    """A few steps of the ranking loss on (query, FAQ question) pairs raise the matching
    similarity relative to the non-matching ones (sanity check that gradients flow)."""
    import json
    from pathlib import Path

    torch.manual_seed(0)
    enc = SiameseEncoder.from_pretrained(minilm_dir, max_length=32)
    rows = [json.loads(x) for x in (Path(__file__).parent / "fixtures/finetune/faq_queries.jsonl").read_text().splitlines()]
    q, p = [r["query"] for r in rows[:8]], [r["question"] for r in rows[:8]]
    opt = torch.optim.AdamW(enc.parameters(), lr=2e-5)
    bq, bp = enc.tokenize(q), enc.tokenize(p)

    def loss():
        return in_batch_negatives_loss(enc(**bq), enc(**bp))

    enc.eval()
    with torch.no_grad():
        before = loss().item()
    for _ in range(3):
        enc.train()
        opt.zero_grad()
        loss().backward()
        opt.step()
    enc.eval()
    with torch.no_grad():
        after = loss().item()
    assert after < before
