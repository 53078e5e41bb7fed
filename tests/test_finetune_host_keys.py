"""Fine-tuning leaves the task models' ``host_batch_keys`` on the CPU: no device synchronisation
per micro-batch, and the ids are range-checked.

The fine-tuning loops used to move every field of a batch to the device (``_to``) before the
model saw it. On an accelerator every forward then read its attention mask back (the mask
validation of ``TransformerEncoder.forward``), the heads read the labels (``_class_targets``'
range check, the boolean selection of the scored targets, QA's positions, a tagger's CVT
mask), the packed pooling read the document lengths (``repeat_interleave``), and the ids, on the
device already, were never range-checked: an id outside the vocabulary (a tokenizer larger than
the model's vocabulary) was a device-side assert that kills the CUDA context. Now each model
declares the fields it takes on the CPU (``host_batch_keys``), ``_to`` leaves them there, and the
model validates them there and copies them over itself without waiting.

No accelerator here: the simulated one of ``test_validation_syncs`` (``FakeDevice``: device
reads and blocking host-to-device copies counted, a CPU tensor mixed with a device tensor
raises). Each loop runs one epoch on a model "on" the simulated device and on an identical CPU
model, with an optimizer that leaves the parameters alone (the simulated device's gradients
come back as plain CPU tensors, autograd does not go through the ``TorchFunctionMode``; with no
updates every micro-batch of both runs sees the same weights). Oracles: every optimizer step
makes exactly one device read (the step's logged numbers, read together once it is queued:
``_run_window``) and no blocking copy, where the old loops read 3-9 more per micro-batch (the
numbers are above the cases); the losses equal the CPU run's exactly; a bad id is the encoder's
``ValueError`` naming it and its ``[row, column]``, raised before the embeddings run.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import pytest
import torch
import unimask.finetune.trainer as ft
from test_ddp_host_keys import _on_simulated_device
from test_validation_syncs import DEV, FakeDevice, on_dev, values
from torch import nn
from unimask.finetune import (
    CrossViewTagger,
    Example,
    FinetuneConfig,
    LabelMap,
    MassFinetuner,
    MultiTaskModel,
    QAExample,
    QuestionAnswering,
    SequenceClassifier,
    TaggedSentence,
    TokenClassifier,
    encode_tagged,
    finetune_classifier,
    finetune_qa,
    finetune_seq2seq,
    finetune_tagger,
    predict_answers,
    predict_tags,
    seq2seq_finetuner,
    tagging,
)
from unimask.finetune.trainer import predict
from unimask.models import EncoderConfig, MassSeq2Seq, UnifiedLM
from unimask.tokenizer import WordPieceTokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SENTS = ["the big cat sat on the mat", "a dog ran", "the old red fox jumped over the lazy brown dog", "owls",
         "green hills far away", "it rained all day long in the city"]
WORDS = [s.split() for s in SENTS]
#: encoder layers of the test models. Packed rows cost one device read per layer and forward
#: that this change does not remove: off the Triton kernel (SDPA, here and on a GPU without
#: Triton) ``unimask.attention._varlen_plan`` reads ``cu_seqlens`` and the modes on the host to
#: bucket the documents; the Triton kernel takes them on the device
LAYERS = 1


@pytest.fixture(scope="module")
def tok(minilm_dir) -> WordPieceTokenizer:
    return WordPieceTokenizer.from_pretrained(minilm_dir)


def _config(vocab_size: int, **kw) -> EncoderConfig:
    return EncoderConfig(**{"vocab_size": vocab_size, "hidden_size": 16, "num_hidden_layers": LAYERS,
                            "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 64,
                            "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, **kw})


class _NoStep(torch.optim.SGD):
    """An optimizer that leaves the parameters as they are (see the module docstring)."""

    def step(self, closure=None):
        return None


class _Windows(list):
    """``(device reads, blocking copies)`` per optimizer step, while ``fake`` is set."""

    fake: FakeDevice | None = None


@pytest.fixture
def windows(monkeypatch) -> Iterator[_Windows]:
    """``(device reads, blocking copies)`` of every optimizer step (``_run_window`` call) made
    under the current :class:`FakeDevice` (``windows.fake``), with a no-update optimizer."""
    monkeypatch.setattr(ft, "_make_optimizer",
                        lambda model, lr, cfg, extra=(): _NoStep(nn.ModuleList([model, *extra]).parameters(), lr=lr))
    seen = _Windows()
    real = ft._run_window

    def run_window(*args, **kwargs):
        fake = seen.fake
        if fake is None:
            return real(*args, **kwargs)
        reads, blocking = fake.reads, fake.blocking
        records = real(*args, **kwargs)
        seen.append((fake.reads - reads, fake.blocking - blocking))
        return records

    monkeypatch.setattr(ft, "_run_window", run_window)
    monkeypatch.setattr(tagging, "_run_window", run_window)
    _module_to_simulated(monkeypatch)
    yield seen


def _module_to_simulated(monkeypatch) -> None:
    """``module.to(DEV)`` (the loops' set-up of the auxiliary heads) puts the module "on" the
    simulated device (``FakeDevice`` does not take ``nn.Module.to``'s arguments)."""
    real = nn.Module.to

    def to(module: nn.Module, *args, **kwargs) -> nn.Module:
        if any(isinstance(a, torch.device) and a == DEV for a in (*args, kwargs.get("device"))):
            _on_simulated_device(module)
            return module
        return real(module, *args, **kwargs)

    monkeypatch.setattr(nn.Module, "to", to)


def _run_both(windows: _Windows, make: Callable[[], nn.Module], run: Callable[[nn.Module], dict]) -> tuple[dict, dict]:
    """``(CPU result, simulated-device result)`` of ``run`` on two identical models; the
    simulated run's optimizer steps are recorded in ``windows``."""
    want = run(make())
    model = make()
    _on_simulated_device(model)
    with FakeDevice() as fake:
        windows.fake = fake
        try:
            got = run(model)
        finally:
            windows.fake = None
    return want, got


def _losses(result: dict) -> list[float]:
    return [h["loss"] for h in result["history"]]


def _classifier(tok, pooling: str = "cls", regression: bool = False) -> Callable[[], SequenceClassifier]:
    def make() -> SequenceClassifier:
        torch.manual_seed(0)
        if regression:
            return SequenceClassifier(_config(tok.vocab_size), pooling=pooling, problem_type="regression")
        return SequenceClassifier(_config(tok.vocab_size), LabelMap(["a", "b", "c"]), pooling=pooling)
    return make


def _examples(regression: bool = False) -> list[Example]:
    return [Example(s, label=float(i) / 2 if regression else "abc"[i % 3]) for i, s in enumerate(SENTS)]


# one optimizer step = one read (the logged numbers), no blocking copy; the old loop (every field
# moved) made per micro-batch 3 more reads padded and packed (the mask or packed-row validation,
# the labels' range check, the scored-target selection), 1 for regression (the mask), 4 and a
# blocking copy with the auxiliary LM; MT-DNN 3, a tagger 3, QA 6, a step with CVT 8-9
CLASSIFY = {
    "padded_cls": ({}, {}),
    "padded_concat": ({"pooling": "concat"}, {}),
    "padded_mean_accum": ({"pooling": "mean"}, {"grad_accum": 2}),
    "packed_cls": ({}, {"pack": True}),
    "packed_concat": ({"pooling": "concat"}, {"pack": True}),
    "regression_mean": ({"pooling": "mean", "regression": True}, {}),
    "regression_packed": ({"pooling": "concat", "regression": True}, {"pack": True}),
    "aux_lm": ({}, {"aux_lm_weight": 0.5}),
}


@pytest.mark.parametrize("name", list(CLASSIFY))
def test_classifier_steps_read_the_device_once(tok, windows, name):
    model_kw, cfg_kw = CLASSIFY[name]
    cfg = FinetuneConfig(**{"epochs": 1, "batch_size": 2, "max_length": 24, "lr": 1e-3, **cfg_kw})
    train = _examples(model_kw.get("regression", False))
    want, got = _run_both(windows, _classifier(tok, **model_kw), lambda m: finetune_classifier(m, tok, train, cfg))
    steps = 3 // cfg.grad_accum + (3 % cfg.grad_accum > 0)
    assert windows == [(1 + LAYERS * cfg.pack, 0)] * steps
    assert _losses(got) == _losses(want) and all(loss > 0 for loss in _losses(want))
    if cfg.aux_lm_weight:
        assert [h["lm_loss"] for h in got["history"]] == [h["lm_loss"] for h in want["history"]]


def test_multitask_steps_read_the_device_once(tok, windows):
    """MT-DNN in ``finetune_classifier``: the extra tasks' heads (pooling over the CPU mask,
    their labels selected on the host) as the main model."""
    extra = {"topic": [Example(s, label="xy"[i % 2]) for i, s in enumerate(SENTS[:4])]}
    cfg = FinetuneConfig(epochs=1, batch_size=2, max_length=24, lr=1e-3)
    want, got = _run_both(windows, _classifier(tok, "concat"),
                          lambda m: finetune_classifier(m, tok, _examples(), cfg, extra_tasks=extra))
    assert windows == [(1, 0)] * 5
    assert [h["task"] for h in got["history"]] == [h["task"] for h in want["history"]]
    assert {h["task"] for h in got["history"]} == {"main", "topic"}
    assert _losses(got) == _losses(want)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_classifier_cvt_steps_read_the_device_once(tok, windows, pooling):
    """A CVT consistency step after each task step: its unlabeled batch keeps the mask and ids
    on the CPU too (the views' modes are then made there, the mean pooling copies the mask)."""
    cfg = FinetuneConfig(epochs=1, batch_size=2, max_length=24, lr=1e-3)
    unlabeled = ["a cat and a dog", "the sun is hot", "rain again"]
    want, got = _run_both(windows, _classifier(tok, pooling),
                          lambda m: finetune_classifier(m, tok, _examples(), cfg, unlabeled=unlabeled))
    assert windows == [(1, 0)] * 3
    assert _losses(got) == _losses(want)
    assert [h["cvt_loss"] for h in got["history"]] == [h["cvt_loss"] for h in want["history"]]
    assert got["cvt"]["final_kl"] == want["cvt"]["final_kl"]


def _tagged() -> list[TaggedSentence]:
    return [TaggedSentence(tuple(w), tuple("B-X" if i == 0 else "O" for i in range(len(w)))) for w in WORDS]


@pytest.mark.parametrize("kind", ["padded", "packed", "cvt", "aux_lm"])
def test_tagger_steps_read_the_device_once(tok, windows, kind):
    def make() -> TokenClassifier:
        torch.manual_seed(0)
        return TokenClassifier(_config(tok.vocab_size), LabelMap(["O", "B-X"]))

    cfg = FinetuneConfig(epochs=1, batch_size=2, max_length=24, lr=1e-3, pack=kind == "packed",
                         aux_lm_weight=0.5 if kind == "aux_lm" else None)
    unlabeled = ["a cat and a dog", "the sun is hot"] if kind == "cvt" else None
    want, got = _run_both(windows, make, lambda m: finetune_tagger(m, tok, _tagged(), cfg, unlabeled=unlabeled))
    assert windows == [(1 + LAYERS * cfg.pack, 0)] * 3
    assert _losses(got) == _losses(want)
    if kind == "cvt":
        assert [h["cvt_loss"] for h in got["history"]] == [h["cvt_loss"] for h in want["history"]]
        assert got["cvt"]["final_kl"] == want["cvt"]["final_kl"]


def test_qa_steps_read_the_device_once(tok, windows):
    ctx = "The cat sat on the mat while the dog slept in the sun."
    train = [QAExample("Where did the cat sit?", ctx, (("on the mat", ctx.index("on the mat")),)),
             QAExample("Who slept?", ctx, (("the dog", ctx.index("the dog")),)),
             QAExample("Is it raining?", ctx)]

    def make() -> QuestionAnswering:
        torch.manual_seed(0)
        return QuestionAnswering(_config(tok.vocab_size))

    cfg = FinetuneConfig(epochs=1, batch_size=2, max_length=24, lr=1e-3)
    want, got = _run_both(windows, make, lambda m: finetune_qa(m, tok, train, cfg, stride=8))
    steps = -(-want["windows"] // 2)
    assert windows == [(1, 0)] * steps and steps >= 2
    assert _losses(got) == _losses(want)


def test_seq2seq_steps_read_the_device_once(tok, windows):
    """UNILM seq2seq fine-tuning: the batch goes to ``UnifiedLM`` as its ``host_batch_keys`` say."""
    pairs = [Example(s, label=" ".join(s.split()[:2])) for s in SENTS]

    def make() -> nn.Module:
        torch.manual_seed(0)
        return seq2seq_finetuner(UnifiedLM(_config(tok.vocab_size, type_vocab_size=6)), tok)

    cfg = FinetuneConfig(epochs=1, batch_size=3, max_length=24, lr=1e-3)
    want, got = _run_both(windows, make, lambda m: finetune_seq2seq(m, tok, pairs, cfg, max_source_length=16,
                                                                       max_target_length=4))
    assert windows == [(1, 0)] * 2
    assert _losses(got) == _losses(want)


# -- models fed by hand: one micro-batch through _to ------------------------------------------


def _one_batch(model: nn.Module, batch: dict, call: Callable[[nn.Module, dict], torch.Tensor]) -> tuple:
    """``(CPU loss, simulated loss, reads, blocking, the fields left on the CPU)`` of one
    micro-batch moved by ``_to`` with the model's ``host_batch_keys``."""
    want = call(model, batch)
    sim = copy.deepcopy(model)
    _on_simulated_device(sim)
    with FakeDevice() as fake:
        moved = ft._to(batch, DEV, ft._host_keys(sim))
        got = call(sim, moved)
        assert on_dev(got)
        return want, values(got), fake.reads, fake.blocking, {k for k, v in moved.items() if not on_dev(v)}


def test_mass_finetuning_micro_batch_reads_nothing(tok):
    torch.manual_seed(0)
    mass = MassFinetuner(MassSeq2Seq(_config(tok.vocab_size)), tok.cls_id, tok.sep_id, tok.mask_id, tok.pad_id)
    batch = mass.make_batch([[2023, 4937], [1037, 3899, 2743]], [[4937], [3899, 2743, 2000]])
    want, got, reads, blocking, host = _one_batch(mass, batch, lambda m, b: m(**b).loss)
    assert (reads, blocking) == (0, 0)
    assert host == set(batch) and got == want.item()


def test_multitask_model_micro_batch_reads_nothing(tok):
    torch.manual_seed(0)
    model = MultiTaskModel(SequenceClassifier(_config(tok.vocab_size), num_labels=2).encoder,
                           {"sent": 2, "sts": 1}, pooling="concat")
    batch = ft.encode_examples(tok, _examples()[:4], 24, LabelMap(["a", "b", "c"]))
    batch["labels"] = torch.tensor([0, 1, -100, 1])
    for task, labels in (("sent", batch["labels"]), ("sts", torch.tensor([0.5, 1.0, 2.0, 0.0]))):
        b = {**batch, "labels": labels}
        want, got, reads, blocking, host = _one_batch(model, b, lambda m, x, t=task: m(task=t, **x).loss)
        assert (reads, blocking) == (0, 0)
        assert host == set(b) and got == want.item()


def test_cross_view_tagger_micro_batches_read_nothing(tok):
    torch.manual_seed(0)
    model = CrossViewTagger(TokenClassifier(_config(tok.vocab_size), num_labels=2).encoder, 2)
    batch = encode_tagged(tok, _tagged()[:3], 24, LabelMap(["O", "B-X"]))
    for call in (lambda m, b: m.supervised_loss(**b), lambda m, b: m.cvt_loss(**b)):
        want, got, reads, blocking, host = _one_batch(model, batch, call)
        assert (reads, blocking) == (0, 0)  # old: the mask validation read, + cvt_loss's selection
        assert {"input_ids", "token_type_ids", "attention_mask", "labels"} <= host and got == want.item()


# -- prediction -----------------------------------------------------------------------------------


def test_predictions_read_only_their_results(tok, monkeypatch):
    """The prediction loops use the same ``_to``: the forward reads nothing, only the results
    are read back (one read per batch and result tensor); same predictions as on the CPU."""
    reads: list[int] = []

    def counting(model: nn.Module) -> nn.Module:
        real = model.forward

        def forward(*args, **kwargs):
            before = fake.reads
            out = real(*args, **kwargs)
            reads.append(fake.reads - before)
            return out
        model.forward = forward
        return model

    torch.manual_seed(0)
    clf = SequenceClassifier(_config(tok.vocab_size), LabelMap(["a", "b"]), pooling="concat")
    tagger = TokenClassifier(_config(tok.vocab_size), LabelMap(["O", "B-X"]))
    qa = QuestionAnswering(_config(tok.vocab_size))
    ctx = "The cat sat on the mat while the dog slept in the sun."
    questions = [QAExample("Where did the cat sit?", ctx), QAExample("Who slept?", ctx)]
    want = (predict(clf, tok, _examples(), 24), predict(clf, tok, _examples(), 24, pack=True),
            predict_tags(tagger, tok, _tagged(), 24), predict_tags(tagger, tok, _tagged(), 24, pack=True),
            predict_answers(qa, tok, questions, 24, 8))
    for m in (clf, tagger, qa):
        _on_simulated_device(m)
        counting(m)
    with FakeDevice() as fake:
        got = (predict(clf, tok, _examples(), 24), predict(clf, tok, _examples(), 24, pack=True),
               predict_tags(tagger, tok, _tagged(), 24), predict_tags(tagger, tok, _tagged(), 24, pack=True),
               predict_answers(qa, tok, questions, 24, 8))
        assert fake.blocking == 0  # the old QA loop: a blocking copy of the context mask
    assert reads == [0, LAYERS, 0, LAYERS, 0]  # packed: _varlen_plan (LAYERS); old: 1-4 more per forward
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert got[2:] == want[2:]


# -- out-of-range ids: the encoder's ValueError, before the embeddings run --------------------------


def _no_embedding(model: nn.Module, monkeypatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("the embeddings ran on an unchecked id")
    for m in model.modules():
        if isinstance(m, nn.Embedding):
            monkeypatch.setattr(m, "forward", forbidden)


SMALL_VOCAB = 1000  # the MiniLM tokenizer's ids go up to 30521: "the" is 1996, "cat" 4937
OUTSIDE = rf"input_ids\[\d+, \d+\] = \d+ is outside \[0, {SMALL_VOCAB}\) \(vocab_size = {SMALL_VOCAB}\)"


@pytest.mark.parametrize("loop", ["classify", "classify_packed", "tag", "qa", "seq2seq"])
def test_an_id_outside_the_vocabulary_is_a_value_error(tok, windows, monkeypatch, loop):
    """A tokenizer larger than the model's vocabulary: the first micro-batch is refused by the
    encoder's range check, naming the id and where it is (before: a device-side assert)."""
    cfg = FinetuneConfig(epochs=1, batch_size=2, max_length=24, lr=1e-3, pack=loop == "classify_packed")
    torch.manual_seed(0)
    config = _config(SMALL_VOCAB, type_vocab_size=6)
    if loop.startswith("classify"):
        model, run = SequenceClassifier(config, LabelMap(["a", "b", "c"])), lambda m: finetune_classifier(
            m, tok, _examples(), cfg)
    elif loop == "tag":
        model, run = TokenClassifier(config, LabelMap(["O", "B-X"])), lambda m: finetune_tagger(m, tok, _tagged(), cfg)
    elif loop == "qa":
        ctx = "The cat sat on the mat."
        model = QuestionAnswering(config)
        run = lambda m: finetune_qa(m, tok, [QAExample("Where?", ctx, (("on the mat", 12),))], cfg, stride=8)
    else:
        model = seq2seq_finetuner(UnifiedLM(config), tok)
        run = lambda m: finetune_seq2seq(m, tok, [Example(s, label="a cat") for s in SENTS], cfg)
    _on_simulated_device(model)
    _no_embedding(model, monkeypatch)
    with FakeDevice() as fake, pytest.raises(ValueError, match=OUTSIDE):
        run(model)
    assert (fake.reads, fake.blocking) == (0, 0)


def test_the_auxiliary_lm_range_checks_its_ids(tok, monkeypatch):
    """The auxiliary LM's batches (and ULMFiT's LM fine-tuning, the same ``batch_loss``) go to
    the encoder on the CPU too: checked there (before: copied over unchecked)."""
    torch.manual_seed(0)
    model = SequenceClassifier(_config(SMALL_VOCAB), LabelMap(["a", "b"]))
    aux = ft.AuxLM(model.encoder, tok, 0.15, 0)
    rows = [torch.tensor([101, 1996, 102]), torch.tensor([101, 4937, 3899, 102])]
    batch = aux.collate(rows, [0, 1])
    _on_simulated_device(model)
    _on_simulated_device(aux)
    _no_embedding(model, monkeypatch)
    with FakeDevice() as fake, pytest.raises(ValueError, match=OUTSIDE):
        aux.batch_loss(batch)
    assert (fake.reads, fake.blocking) == (0, 0)


def test_models_declare_their_host_fields():
    """What stays on the CPU: the encoder's inputs and the fields the heads use on the host (a
    field the model reads on the device only would be mixed with device tensors and raise
    under ``FakeDevice`` in the tests above)."""
    base = {"input_ids", "token_type_ids", "attention_mask"}
    assert SequenceClassifier.host_batch_keys == base | {"labels", "cu_seqlens", "attn_mode", "src_len", "doc_starts",
                                                         "doc_lengths"}
    assert TokenClassifier.host_batch_keys == base | {"labels", "cu_seqlens", "attn_mode", "src_len"}
    assert QuestionAnswering.host_batch_keys == base | {"start_positions", "end_positions"}
    assert MultiTaskModel.host_batch_keys == CrossViewTagger.host_batch_keys == base | {"labels"}
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.int64), "labels": torch.tensor([0, 1]),
             "word_ids": torch.zeros(2, 3, dtype=torch.int64)}
    with FakeDevice() as fake:
        moved = ft._to(batch, DEV, SequenceClassifier.host_batch_keys)
        assert moved["input_ids"] is batch["input_ids"] and moved["labels"] is batch["labels"]
        assert on_dev(moved["word_ids"]) and fake.blocking == 0
