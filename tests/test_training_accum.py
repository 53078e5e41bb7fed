"""Gradient accumulation in the pretraining Trainer equals one big batch.

Oracle: the gradient the Trainer steps with for one batch of 8 examples (grad_accum 1) — one
forward/backward, the mean loss over all 8 examples' scored targets — against 2 micro-batches
of the same 4 + 4 examples, with the same masks (``CorpusBatches`` collates example ``e`` with
seed ``(seed, epoch, e)`` whatever the batch size). A mean of the two micro-batch means (the
old ``loss / grad_accum``) is 7-40% off whenever the micro-batches have different target counts;
the windows below are picked so that they do, and the test checks that the naive average is
indeed far from the big batch.

Packed UNILM is covered (each pair is collated alone, then packed: the same samples in any
batch); packed MLM is not: ``PackingCollator`` masks a packed row with the seed of its first
sentence, so the masks depend on how a batch's sentences were packed and 8 vs 4 + 4 examples
are not the same targets.
"""

from __future__ import annotations

import pytest
import torch

from unimask.pretrain import CorpusBatches, SpecialIds, build_model, examples_of, make_collate
from unimask.training import Trainer, TrainingConfig

SP = SpecialIds(pad=0, cls=101, sep=102, mask=103, vocab_size=1200)
ML = 32


def documents(n_docs=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [[[1000 + int(t) for t in torch.randint(0, 200, (int(torch.randint(4, 13, (1,), generator=g)),), generator=g)]
             for _ in range(4)] for _ in range(n_docs)]


def counts_of(batch):
    """(scored MLM/LM/span targets, labelled NSP samples) in a batch, counted independently."""
    lab = batch["decoder_labels"] if "decoder_labels" in batch else batch["labels"]
    nsp = batch.get("next_sentence_label")
    return int((lab != -100).sum()), (int((nsp != -100).sum()) if nsp is not None else 0)


def step_gradient(model, src, batch_size, grad_accum, position):
    """The flattened gradient the Trainer hands the optimizer in one step from ``position``,
    and the logged loss."""
    tr = Trainer(model, src, TrainingConfig(max_steps=1, grad_accum=grad_accum, grad_clip=0, progress=False,
                                            warmup_steps=0, eval_every=0, precision="fp32"),
                 device="cpu", log=lambda s: None)
    tr.state.data_position = position
    grads = {}
    tr.optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: grads.update({n: p.grad.clone() for n, p in model.named_parameters()
                                                if p.grad is not None}))
    tr.train()
    assert tr.state.data_position == position + grad_accum
    return torch.cat([grads[n].flatten() for n in sorted(grads)]), tr.state.history[-1]["loss"]


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("objective,pack", [("mlm", False), ("unilm", False), ("causal", False), ("mass", False),
                                            ("unilm", True)])
def test_accumulated_gradient_equals_the_big_batch_gradient(objective, pack):
    torch.set_num_threads(1)
    docs = documents()
    collate = make_collate(docs, objective, ML, SP, pack)
    ex = examples_of(docs)
    small = CorpusBatches(ex, collate, 4, seed=3)
    # a window whose two micro-batches score different numbers of targets
    i = next(i for i in range(20) if counts_of(small.batch(2 * i)) != counts_of(small.batch(2 * i + 1)))
    micro = [small.batch(2 * i), small.batch(2 * i + 1)]
    n = [counts_of(b) for b in micro]
    assert n[0][0] != n[1][0] or n[0][1] != n[1][1]
    torch.manual_seed(0)
    base = build_model(objective, SP.vocab_size, ML, 32, 1, 2, dropout=0.0)

    def fresh():
        m = build_model(objective, SP.vocab_size, ML, 32, 1, 2, dropout=0.0)
        m.load_state_dict(base.state_dict())
        return m

    g_big, loss_big = step_gradient(fresh(), CorpusBatches(ex, collate, 8, seed=3), 8, 1, i)
    g_acc, loss_acc = step_gradient(fresh(), small, 4, 2, 2 * i)
    assert rel(g_acc, g_big) < 1e-6
    assert loss_acc == pytest.approx(loss_big, rel=1e-6)

    # the old mean of micro-batch means, computed by hand, is far from the big batch here
    m = fresh()
    for b in micro:
        (m(**b).loss / 2).backward()
    g_mean = torch.cat([p.grad.flatten() for _, p in sorted(m.named_parameters()) if p.grad is not None])
    assert rel(g_mean, g_big) > 1e-3, (n, rel(g_mean, g_big))


def test_grad_accum_1_is_bitwise_the_plain_loss():
    """grad_accum 1 in one process: every weight is 1, the step is the one ``loss.backward()`` gives."""
    docs = documents()
    collate = make_collate(docs, "unilm", ML, SP)
    src = CorpusBatches(examples_of(docs), collate, 4, seed=3)
    torch.manual_seed(0)
    base = build_model("unilm", SP.vocab_size, ML, 32, 1, 2, dropout=0.0)
    m = build_model("unilm", SP.vocab_size, ML, 32, 1, 2, dropout=0.0)
    m.load_state_dict(base.state_dict())
    g, loss = step_gradient(m, src, 4, 1, 5)
    m2 = build_model("unilm", SP.vocab_size, ML, 32, 1, 2, dropout=0.0)
    m2.load_state_dict(base.state_dict())
    out = m2(**src.batch(5))
    out.loss.backward()
    ref = torch.cat([p.grad.flatten() for _, p in sorted(m2.named_parameters()) if p.grad is not None])
    assert torch.equal(g, ref) and loss == float(out.loss.detach())


def test_unilm_nsp_counts_only_the_samples_the_model_scores():
    """A hand-made UNILM batch with NSP labels on non-bidirectional samples: the model ignores
    them, and so does the weighting (the NSP term is the mean over bidirectional samples of the
    whole window)."""
    from unimask.training import _scored_counts

    docs = documents()
    collate = make_collate(docs, "unilm", ML, SP)
    batch = CorpusBatches(examples_of(docs), collate, 8, seed=3).batch(0)
    mode = batch["attn_mode"]
    assert (mode == 0).any() and (mode != 0).any()
    hand = dict(batch, next_sentence_label=torch.zeros_like(batch["next_sentence_label"]))
    model = build_model("unilm", SP.vocab_size, ML, 32, 1, 2, dropout=0.0)
    c = _scored_counts(model, hand)
    assert c == {"mlm": int((batch["labels"] != -100).sum()), "nsp": int((mode == 0).sum())}
    # a plain BERT head scores every labelled sample
    bert = build_model("mlm", SP.vocab_size, ML, 32, 1, 2, dropout=0.0)
    assert _scored_counts(bert, hand)["nsp"] == mode.numel()
