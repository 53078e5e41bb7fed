"""The training loops read their logged numbers from the device once per optimizer step.

Every ``.item()`` / ``float()`` / ``int()`` / ``.tolist()`` of a device tensor waits for the
device to finish everything queued so far: one per micro-batch left the GPU idle while the host
prepared the next micro-batch. The tests count those conversions (the four methods wrapped) of
floating-point tensors made from unimask's own code during a CPU run: the logged numbers
(losses, grad norm, KLs) are floating point; the integer conversions in the loops read the
collated CPU batches before they go to the device (target counts, token counts, data indices),
and torch's optimizer reads its own CPU step counters, so neither is a device sync and neither
is counted. The old loops made 1 + grad_accum (pretraining: one per micro-batch loss and one for
the grad norm) or 3-6 per micro-batch (fine-tuning: loss, task loss, LM loss, the log line's
loss again, CVT loss and one per view); now one per optimizer step, whatever ``grad_accum``.

Oracle for the values: the loss tensors the loops computed, recorded as they are made
(wrappers around ``_weighted_loss``, ``clip_grad_norm_``, ``_add_aux_lm`` and the CVT loss) and
combined the old way (Python floats of each, summed in float64 in micro-batch order): the
logged numbers must be exactly those.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import unimask.finetune.trainer as ft
import unimask.training as training
from unimask.finetune import (
    CrossViewHeads,
    Example,
    FinetuneConfig,
    LabelMap,
    SequenceClassifier,
    TokenClassifier,
    cross_view_kl,
    cvt_consistency_loss,
    finetune_classifier,
)
from unimask.models import EncoderConfig
from unimask.pretrain import CorpusBatches, CorpusCollator, SpecialIds, examples_of
from unimask.tokenizer import WordPieceTokenizer
from unimask.training import Trainer, TrainingConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SP = SpecialIds(pad=0, cls=101, sep=102, mask=103, vocab_size=1200)
UNIMASK = str(Path(training.__file__).parent)


class Conversions:
    """Counts tensor -> Python conversions of floating-point tensors called from unimask's code."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.n = 0
        self.on = False
        for name in ("item", "__float__", "__int__", "tolist"):
            monkeypatch.setattr(torch.Tensor, name, self._wrap(getattr(torch.Tensor, name)))

    def _wrap(self, method):
        def counted(t, *args, **kwargs):
            if self.on and t.is_floating_point() and sys._getframe(1).f_code.co_filename.startswith(UNIMASK):
                self.n += 1
            return method(t, *args, **kwargs)
        return counted

    def count(self, fn, *args, **kwargs):
        """``(fn(*args, **kwargs), conversions during the call)``."""
        self.n, self.on = 0, True
        try:
            return fn(*args, **kwargs), self.n
        finally:
            self.on = False


@pytest.fixture
def conversions(monkeypatch) -> Conversions:
    return Conversions(monkeypatch)


# -- pretraining: Trainer.train ----------------------------------------------------------------


def tiny_lm(seed: int = 0):
    from unimask.models import UnifiedLM  # noqa: PLC0415

    torch.manual_seed(seed)
    cfg = EncoderConfig(vocab_size=1200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, type_vocab_size=6,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return UnifiedLM(cfg)


def documents(n_docs: int = 30) -> list[list[list[int]]]:
    g = torch.Generator().manual_seed(0)
    return [[[1000 + int(t) for t in torch.randint(0, 200, (int(torch.randint(5, 12, (1,), generator=g)),), generator=g)]
             for _ in range(4)] for _ in range(n_docs)]


def pretrain_source(docs, batch_size: int = 4) -> CorpusBatches:
    return CorpusBatches(examples_of(docs), CorpusCollator(docs, "unilm", 24, SP), batch_size, seed=0)


def record_losses(monkeypatch) -> tuple[list[float], list[float]]:
    """Wrap the loop's per-micro-batch loss and the clipping: their values, as they are made."""
    losses: list[float] = []
    norms: list[float] = []
    weighted, clip = training._weighted_loss, torch.nn.utils.clip_grad_norm_

    def weighted_loss(*args, **kwargs):
        loss = weighted(*args, **kwargs)
        losses.append(loss.item())
        return loss

    def clip_grad_norm(*args, **kwargs):
        norm = clip(*args, **kwargs)
        norms.append(norm.item())
        return norm

    monkeypatch.setattr(training, "_weighted_loss", weighted_loss)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip_grad_norm)
    return losses, norms


@pytest.mark.parametrize("grad_accum", [1, 4])
def test_pretraining_reads_the_device_once_per_step(conversions, monkeypatch, grad_accum):
    steps = 3
    losses, norms = record_losses(monkeypatch)
    cfg = TrainingConfig(max_steps=steps, lr=1e-3, warmup_steps=1, grad_accum=grad_accum, grad_clip=1e-3,
                         eval_every=0, progress=False, precision="fp32")
    t = Trainer(tiny_lm(), pretrain_source(documents()), cfg, device="cpu", log=lambda s: None)
    _, n = conversions.count(t.train)
    # loss and grad norm, read together: one transfer per step (the old loop: grad_accum + 1)
    assert n == steps, n
    assert len(losses) == steps * grad_accum and len(norms) == steps
    for i, h in enumerate(t.state.history):
        old_sum = 0.0
        for x in losses[i * grad_accum:(i + 1) * grad_accum]:
            old_sum += x
        assert h["loss"] == old_sum  # exactly: float64 sum of the float32 losses, micro-batch order
        assert h["grad_norm"] == norms[i] and h["grad_norm"] > 1e-3  # before clipping
        assert isinstance(h["loss"], float) and isinstance(h["grad_norm"], float)
    assert [h["lr"] for h in t.state.history] == pytest.approx([1e-3 * (steps - s) / (steps - 1)
                                                                for s in range(1, steps + 1)])


class _DoubledAllReduce:
    """A stand-in for torch.distributed with two ranks that hold the same sum."""

    def all_reduce(self, t: torch.Tensor) -> None:
        assert t.dtype == torch.float32  # the reduced sum is float32, as before
        t.mul_(2)


def test_distributed_loss_is_the_all_reduced_mean_in_one_transfer(conversions):
    """Oracle: the old code, ``float(all_reduce(torch.tensor([sum of floats]))) / world``."""
    t = Trainer(tiny_lm(), pretrain_source(documents()), TrainingConfig(max_steps=1, progress=False, eval_every=0),
                device="cpu", log=lambda s: None)
    t.dist, t.world = _DoubledAllReduce(), 2
    micro = [torch.tensor(0.1234567, dtype=torch.float32), torch.tensor(2.7182817, dtype=torch.float32),
             torch.tensor(1e-3, dtype=torch.float32)]
    norm = torch.tensor(3.25)
    (loss, grad_norm), n = conversions.count(t._logged_scalars, micro, norm)
    old = 0.0
    for x in micro:
        old += float(x)
    old = float(torch.tensor([old]) * 2) / 2
    assert n == 1 and loss == old and grad_norm == 3.25
    (loss, grad_norm), n = conversions.count(t._logged_scalars, micro[:1], None)
    assert n == 1 and loss == float(micro[0]) and grad_norm is None


def test_evaluate_reads_the_device_once(conversions):
    """Two transfers per evaluation (the summed losses, the hit counts), not two per batch;
    oracle: the per-batch float sums of the old loop."""
    docs = documents(12)
    collate = CorpusCollator(docs, "unilm", 24, SP)
    ex = examples_of(docs)
    eval_batches = [collate(ex[i:i + 8], list(range(i, i + 8))) for i in range(0, 40, 8)]
    model = tiny_lm()
    t = Trainer(model, pretrain_source(docs), TrainingConfig(max_steps=1, progress=False, eval_every=0),
                eval_data=eval_batches, device="cpu", log=lambda s: None)
    metrics, n = conversions.count(t.evaluate)
    assert n == 1  # the loss sums; the hit counts are integers (one more .tolist())
    total, correct, count = 0.0, 0, 0
    model.eval()
    with torch.no_grad():
        for b in eval_batches:
            out = model(**b)
            total += float(torch.nn.functional.cross_entropy(out.mlm_logits.float(), out.mlm_labels, reduction="sum"))
            correct += int((out.mlm_logits.argmax(-1) == out.mlm_labels).sum())
            count += out.mlm_labels.numel()
    assert metrics["eval_loss"] == total / count and metrics["eval_accuracy"] == correct / count


# -- fine-tuning: _run_window and CVT ----------------------------------------------------------


@pytest.fixture(scope="module")
def tok(minilm_dir) -> WordPieceTokenizer:
    return WordPieceTokenizer.from_pretrained(minilm_dir)


def _tiny(tok) -> EncoderConfig:
    return EncoderConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0)


SENTS = [f"the {a} {b} sat on the {c} mat" for a, b, c in
         zip("big red old new small dark cold warm soft long".split(), "cat dog fox owl".split() * 3,
             "blue green white black grey pink".split() * 2)]


def _record_micro_losses(monkeypatch) -> list[tuple[float, float, float | None]]:
    """(loss, task loss, LM loss) of every micro-batch, as the loop computes them."""
    seen: list[tuple[float, float, float | None]] = []
    add = ft._add_aux_lm

    def add_aux_lm(*args, **kwargs):
        loss, terms, lm = add(*args, **kwargs)
        seen.append((loss.item(), args[0].item(), None if lm is None else lm.item()))
        return loss, terms, lm

    monkeypatch.setattr(ft, "_add_aux_lm", add_aux_lm)
    return seen


@pytest.mark.parametrize("grad_accum", [1, 4])
def test_finetune_reads_the_device_once_per_step(tok, conversions, monkeypatch, grad_accum):
    seen = _record_micro_losses(monkeypatch)
    torch.manual_seed(0)
    model = SequenceClassifier(_tiny(tok), LabelMap(["a", "b", "c"]))
    train = [Example(s, label="abc"[i % 3]) for i, s in enumerate(SENTS[:8])]
    cfg = FinetuneConfig(epochs=1, batch_size=2, grad_accum=grad_accum, max_length=24, lr=1e-3, aux_lm_weight=0.5,
                         log_every=1)
    lines: list[str] = []
    result, n = conversions.count(finetune_classifier, model, tok, train, cfg, log=lines.append)
    hist = result["history"]
    assert len(hist) == 4
    # one transfer per optimizer step (the old loop: 4 per micro-batch, the log line's included)
    assert n == 4 // grad_accum, n
    assert [(h["loss"], h["task_loss"], h["lm_loss"]) for h in hist] == seen  # exactly
    assert all(isinstance(h[k], float) for h in hist for k in ("loss", "task_loss", "lm_loss"))
    assert lines == [f"epoch 1 step {i + 1}/4 (main): loss {h['loss']:.4f}" for i, h in enumerate(hist)]


def test_finetune_with_cvt_reads_the_device_once_per_step(tok, conversions, monkeypatch):
    """CVT: the consistency loss and per-view KLs join the step's one transfer (the old loop
    read them separately: 2 + one per view); the closing cross-view KL report adds one."""
    seen: list[tuple[float, dict[str, float]]] = []
    cvt_loss = ft.classifier_cvt_loss

    def recorded(*args, **kwargs):
        loss, kl = cvt_loss(*args, **kwargs)
        seen.append((loss.item(), {v: k.item() if isinstance(k, torch.Tensor) else k for v, k in kl.items()}))
        return loss, kl

    monkeypatch.setattr(ft, "classifier_cvt_loss", recorded)
    torch.manual_seed(0)
    model = SequenceClassifier(_tiny(tok), LabelMap(["a", "b", "c"]))
    train = [Example(s, label="abc"[i % 3]) for i, s in enumerate(SENTS[:6])]
    cfg = FinetuneConfig(epochs=1, batch_size=2, max_length=24, lr=1e-3)
    result, n = conversions.count(finetune_classifier, model, tok, train, cfg, unlabeled=SENTS[6:])
    hist = result["history"]
    assert len(hist) == 3 and n == 3 + 1, n
    assert [(h["cvt_loss"], h["cvt_kl"]) for h in hist] == seen  # exactly
    assert all(isinstance(h["cvt_loss"], float) and set(h["cvt_kl"]) == {"left_to_right", "right_to_left"}
               for h in hist)


def _cvt_batches(g: torch.Generator, vocab: int) -> Iterator[dict[str, torch.Tensor]]:
    for B, L in ((3, 7), (2, 5)):
        am = torch.ones(B, L, dtype=torch.long)
        am[0, L - 2:] = 0  # a padded row: the token counts are not B * L
        yield {"input_ids": torch.randint(5, vocab, (B, L), generator=g), "attention_mask": am}


@pytest.mark.parametrize("per_token", [False, True])
def test_cross_view_kl_reads_the_device_once(tok, conversions, per_token):
    """Oracle: the old per-batch, per-view ``.item() * batch size`` sums."""
    torch.manual_seed(0)
    labels = LabelMap(["a", "b", "c"])
    model = (TokenClassifier if per_token else SequenceClassifier)(_tiny(tok), labels)
    heads = CrossViewHeads(32, 3)
    batches = list(_cvt_batches(torch.Generator().manual_seed(1), tok.vocab_size))
    out, n = conversions.count(cross_view_kl, model, heads, batches, per_token=per_token)
    assert n == 1  # per_token: the token counts are integers (one more .tolist())
    model.eval()
    heads.eval()
    sums, count = dict.fromkeys(heads.views, 0.0), 0
    with torch.no_grad():
        for b in batches:
            ids, am = b["input_ids"], b["attention_mask"]
            teacher = model(ids, am).logits
            B = int(am.sum()) if per_token else ids.shape[0]
            for v in heads.views:
                if per_token:
                    kl = cvt_consistency_loss(teacher, heads.position_logits(model.encoder, v, ids, am), am.bool())
                else:
                    kl = cvt_consistency_loss(teacher, heads(model.encoder, v, ids, am))
                sums[v] += kl.item() * B
            count += B
    ref = {v: s / count for v, s in sums.items()}
    assert {v: out[v] for v in heads.views} == ref
    assert out["mean"] == sum(ref.values()) / 2


def test_classifier_cvt_loss_reads_the_views_in_one_transfer(tok, conversions):
    torch.manual_seed(0)
    model = SequenceClassifier(_tiny(tok), LabelMap(["a", "b", "c"]))
    heads = CrossViewHeads(32, 3, dropout=0.0)
    b = next(_cvt_batches(torch.Generator().manual_seed(2), tok.vocab_size))
    from unimask.finetune import classifier_cvt_loss  # noqa: PLC0415

    (loss, kl), n = conversions.count(classifier_cvt_loss, model, heads, **b)
    assert n == 1 and all(isinstance(x, float) for x in kl.values())
    (loss2, kl2), n = conversions.count(classifier_cvt_loss, model, heads, **b, kl_on_device=True)
    assert n == 0 and {v: k.item() for v, k in kl2.items()} == kl
    assert not any(k.requires_grad for k in kl2.values()) and loss2.requires_grad
    assert loss.item() == pytest.approx(sum(kl.values()) / 2, rel=1e-6)
