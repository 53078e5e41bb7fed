"""Gradient accumulation in the fine-tuning loops equals one big batch.

Oracle: the run with ``batch_size = b * grad_accum`` and ``grad_accum = 1`` on the same
examples (the same seeded order, no dropout): each of its optimizer steps computes the loss of
one batch, the mean over all of the batch's scored targets, in one forward/backward. The run
with ``batch_size = b`` and ``grad_accum`` micro-batches must hand the optimizer the same
gradient at every step (relative error < 1e-6) and so end with the same weights.

The example counts are chosen so that the runs hit every way a mean of micro-batch means
(``loss / grad_accum``, the old behaviour) is wrong: micro-batches that score different numbers
of tokens (tagging, seq2seq, the auxiliary masked LM), a short last micro-batch (5 examples in
3 + 2) and a short last window (4 examples in 2 + 2 with ``grad_accum=3``, whose old divisor 3
is wrong for 2 micro-batches). The weights after the first step must agree within 1e-6 too;
the gradients of later steps within 1e-5, as they start from weights that already differ by float
error (padding to different lengths). The auxiliary LM masks sample ``step *
batch_size + j``, the same samples in both runs; seq2seq masks draw example by example from one
generator, also the same in both runs.
"""

from __future__ import annotations

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from unimask.corpus import demo_corpus_path, read_documents
from unimask.finetune import (
    Example,
    FinetuneConfig,
    LabelMap,
    QuestionAnswering,
    SequenceClassifier,
    TaggedSentence,
    TokenClassifier,
    finetune_classifier,
    finetune_qa,
    finetune_seq2seq,
    finetune_tagger,
    mtdnn_schedule,
    seq2seq_finetuner,
)
from unimask.finetune.qa import QAExample
from unimask.finetune.trainer import _Accumulator, encode_examples
from unimask.models import EncoderConfig, UnifiedLM
from unimask.tokenizer import WordPieceTokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: (examples, micro-batch size, grad_accum), one epoch: one step of 3 + 2 (a short last
#: micro-batch), one step of 2 + 2 with grad_accum 3 (a short window), and two steps 3 + 3 | 3 + 1
SHAPES = [(5, 3, 2), (4, 2, 3), (10, 3, 2)]


@pytest.fixture(scope="module")
def tok(minilm_dir) -> WordPieceTokenizer:
    return WordPieceTokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def sents() -> list[str]:
    return [s for d in read_documents(demo_corpus_path("en")) for s in d if 4 <= len(s.split()) <= 14][:10]


def _tiny(tok, **kw) -> EncoderConfig:
    return EncoderConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0, **kw)


def _run(make_model, train, batch_size, grad_accum, **cfg_kw):
    """The gradients handed to the optimizer at each step (flattened, by parameter name), the
    initial weights, the weights after the first step and the history."""
    torch.manual_seed(0)
    model, call = make_model()
    params = dict(model.named_parameters())
    init = {n: p.detach().clone() for n, p in params.items()}
    grads: list[torch.Tensor] = []

    def hook(opt, args, kwargs):
        grads.append(torch.cat([(params[n].grad if params[n].grad is not None else torch.zeros_like(params[n])).flatten()
                                for n in sorted(params)]))
    cfg = FinetuneConfig(epochs=1, batch_size=batch_size, grad_accum=grad_accum, lr=1e-3, schedule="constant",
                         max_length=32, seed=0, weight_decay=0.0, grad_clip=0, **cfg_kw)
    first: dict[str, torch.Tensor] = {}

    def after(opt, args, kwargs):
        if not first:
            first.update({n: p.detach().clone() for n, p in params.items()})
    handles = [register_optimizer_step_pre_hook(hook), register_optimizer_step_post_hook(after)]
    try:
        result = call(model, cfg, train)
    finally:
        for h in handles:
            h.remove()
    return grads, init, first, result["history"]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _check(make_model, train, n, b, accum, **cfg_kw):
    g_big, init, w_big, h_big = _run(make_model, train, b * accum, 1, **cfg_kw)
    g_acc, init2, w_acc, h_acc = _run(make_model, train, b, accum, **cfg_kw)
    assert all(torch.equal(init[k], init2[k]) for k in init)
    assert len(h_acc) == -(-n // b) and len(h_big) == -(-n // (b * accum))
    assert len(g_big) == len(g_acc) == len(h_big)  # the same optimizer steps
    for step, (ga, gb) in enumerate(zip(g_acc, g_big)):
        assert gb.norm() > 0
        assert _rel(ga, gb) < (1e-6 if step == 0 else 1e-5), (step, _rel(ga, gb))
    # the weights after the first step (that it moved them: the update is not 0)
    flat_big = torch.cat([w_big[k].flatten() for k in sorted(init)])
    assert _rel(torch.cat([w_acc[k].flatten() for k in sorted(init)]), flat_big) < 1e-6
    upd_big = torch.cat([(w_big[k] - init[k]).flatten() for k in sorted(init)])
    assert upd_big.norm() > 0
    return h_acc


@pytest.mark.parametrize("n,b,accum", SHAPES)
@pytest.mark.parametrize("aux", [None, 0.5, "siatl"])
def test_classifier(tok, sents, n, b, accum, aux):
    labels = LabelMap(["a", "b", "c"])
    train = [Example(s, label="abc"[i % 3]) for i, s in enumerate(sents[:n])]
    h = _check(lambda: (SequenceClassifier(_tiny(tok), labels), lambda m, cfg, t: finetune_classifier(m, tok, t, cfg)),
               train, n, b, accum, aux_lm_weight=aux)
    if aux is not None:  # the LM terms had unequal masked-token counts: a real test of their weights
        assert all(r["gamma"] == h[0]["gamma"] for r in h[:accum])


@pytest.mark.parametrize("n,b,accum", SHAPES)
def test_regression_and_sentence_pairs(tok, sents, n, b, accum):
    train = [Example(s, sents[(i + 1) % len(sents)], label=float(i) / 3) for i, s in enumerate(sents[:n])]
    _check(lambda: (SequenceClassifier(_tiny(tok), problem_type="regression"),
                    lambda m, cfg, t: finetune_classifier(m, tok, t, cfg)), train, n, b, accum)


@pytest.mark.parametrize("n,b,accum", SHAPES)
@pytest.mark.parametrize("aux,pack", [(None, False), (None, True), (0.5, False)])
def test_tagger(tok, sents, n, b, accum, aux, pack):
    tags = LabelMap(["O", "B-X", "I-X"])
    train = [TaggedSentence(s.split(), [("B-X", "I-X", "O")[j % 3] for j in range(len(s.split()))]) for s in sents[:n]]
    words = [len(t.words) for t in train]
    assert words[0] != words[1]  # micro-batches score unequal token counts
    _check(lambda: (TokenClassifier(_tiny(tok), tags), lambda m, cfg, t: finetune_tagger(m, tok, t, cfg)),
           train, n, b, accum, aux_lm_weight=aux, pack=pack)


@pytest.mark.parametrize("n,b,accum", SHAPES)
def test_qa(tok, sents, n, b, accum):
    # QuestionAnswering's softmax runs over every position of the batch, padding included, so a
    # window's loss depends on how wide its batch is padded: contexts of equal token count (one
    # window each, one width) keep the examples' losses independent of their batch-mates
    words = "the cat dog sat on a mat and ran to big red".split()
    g = torch.Generator().manual_seed(1)
    contexts = [" ".join(words[i] for i in torch.randperm(len(words), generator=g).tolist()) for _ in range(n)]
    train = [QAExample("where is it?", c, ((c.split()[2], len(" ".join(c.split()[:2])) + 1),)) for c in contexts]
    _check(lambda: (QuestionAnswering(_tiny(tok)), lambda m, cfg, t: finetune_qa(m, tok, t, cfg, stride=8)),
           train, n, b, accum)


@pytest.mark.parametrize("n,b,accum", SHAPES)
def test_seq2seq(tok, sents, n, b, accum):
    train = [Example(s, label=" ".join(s.split()[: 1 + i % 4])) for i, s in enumerate(sents[:n])]

    def make():
        ft = seq2seq_finetuner(UnifiedLM(_tiny(tok, type_vocab_size=6)), tok, mask_prob=0.7)
        return ft.model, lambda m, cfg, t: finetune_seq2seq(ft, tok, t, cfg, None, 24, 8)
    _check(make, train, n, b, accum)


def test_window_weights_and_windows():
    """Hand-computed: weights are count / window total per component (0 for an empty
    component); windows are grad_accum micro-batches, the epoch's last one shorter."""
    w = _Accumulator.weights([{"task": 3, "lm": 0}, {"task": 1, "lm": 0}, {"task": 4, "lm": 0}])
    assert w == [{"task": 3 / 8, "lm": 0.0}, {"task": 1 / 8, "lm": 0.0}, {"task": 4 / 8, "lm": 0.0}]
    acc = _Accumulator(None, FinetuneConfig(grad_accum=3), per_epoch=5)
    assert list(acc.windows(range(10))) == [[0, 1, 2], [3, 4], [5, 6, 7], [8, 9]]
    assert acc.steps(2) == 4


def test_grad_accum_1_is_bitwise_the_plain_step(tok, sents):
    """grad_accum 1: every weight is 1 and the step is the plain ``loss.backward()`` of each
    batch: the loss and gradients of a hand-written loop agree bitwise."""
    labels = LabelMap(["a", "b", "c"])
    train = [Example(s, label="abc"[i % 3]) for i, s in enumerate(sents[:4])]
    grads, init, _, hist = _run(lambda: (SequenceClassifier(_tiny(tok), labels),
                                         lambda m, cfg, t: finetune_classifier(m, tok, t, cfg)), train, 4, 1)
    from unimask.finetune.trainer import encode_examples  # noqa: PLC0415

    torch.manual_seed(0)
    ref = SequenceClassifier(_tiny(tok), labels)
    order = torch.randperm(4, generator=torch.Generator().manual_seed(0)).tolist()
    out = ref(**encode_examples(tok, [train[i] for i in order], 32, labels))
    out.loss.backward()
    params = dict(ref.named_parameters())
    g = torch.cat([(params[n].grad if params[n].grad is not None else torch.zeros_like(params[n])).flatten()
                   for n in sorted(params)])
    assert hist[0]["loss"] == out.loss.item() and torch.equal(grads[0], g)


# -- MT-DNN (``finetune_classifier(..., extra_tasks=...)``) -------------------------------------
# ``b`` x ``N`` is NOT the ``bN`` x 1 run here, by design of the plan: the micro-batches of an
# epoch are the ``mtdnn_schedule`` of the tasks' ``b``-sized mini-batches (counts ceil(n_t / b)),
# each task's mini-batches in a shuffled order, and a window is ``N`` consecutive entries of that
# list. So a window mixes tasks and non-adjacent slices of a task's example order, while every
# step of the ``bN`` x 1 run is one mini-batch of one task, from a schedule of other counts (a
# different draw). What holds, and what is pinned below: an optimizer step's gradient is the
# gradient of the mean of the per-example losses over all the window's examples, each under its
# own task's head (weights count / window total across tasks, not ``loss / N``, nor a mean per
# task). The oracle computes it example by example (batches of one, no padding) at the weights
# the step started from.

#: (micro-batch size, grad_accum, epochs) over main 5 / "x" 4 / "y" 3 examples. b=2: 3 + 2 + 2
#: = 7 micro-batches (sizes 2,2,1 | 2,2 | 2,1) an epoch, windows 3 + 3 + 1; b=3: 2 + 2 + 1 = 5
#: (3,2 | 3,1 | 3), windows 2 + 2 + 1; two epochs: windows do not straddle the epoch boundary;
#: grad_accum 1: each step one task's mini-batch mean
MTDNN_SHAPES = [(2, 3, 1), (3, 2, 1), (2, 2, 2), (2, 1, 1)]


def _mtdnn_data(sents: list[str]) -> tuple[list[Example], dict[str, list[Example]]]:
    """The main task (3 classes, 5 examples) and two extra classification tasks (4 and 3)."""
    train = [Example(s, label="abc"[i % 3]) for i, s in enumerate(sents[:5])]
    extra = {"x": [Example(s, label="pq"[i % 2]) for i, s in enumerate(sents[5:9])],
             "y": [Example(s, label="uvw"[i % 3]) for i, s in enumerate(sents[::-1][:3])]}
    return train, extra


@pytest.mark.parametrize("b,accum,epochs", MTDNN_SHAPES)
def test_mtdnn_step_is_the_mean_over_the_windows_examples(tok, sents, b, accum, epochs):
    train, extra = _mtdnn_data(sents)
    labels = LabelMap(["a", "b", "c"])
    torch.manual_seed(0)
    model = SequenceClassifier(_tiny(tok), labels)
    steps: list[dict[int, tuple[torch.Tensor, torch.Tensor]]] = []  # per step: id -> (weight, grad)

    def hook(opt, args, kwargs):
        steps.append({id(p): (p.detach().clone(), p.grad.clone() if p.grad is not None else torch.zeros_like(p))
                      for g in opt.param_groups for p in g["params"]})
    cfg = FinetuneConfig(epochs=epochs, batch_size=b, grad_accum=accum, lr=1e-3, schedule="constant",
                         max_length=32, seed=0, weight_decay=0.0, grad_clip=0)
    handle = register_optimizer_step_pre_hook(hook)
    try:
        result = finetune_classifier(model, tok, train, cfg, extra_tasks=extra)
    finally:
        handle.remove()
    heads = result["extra_heads"]
    named = {**{f"main.{n}": p for n, p in model.named_parameters()},
             **{f"{t}.{n}": p for t, h in heads.items() for n, p in h.named_parameters()}}
    assert {id(p) for p in named.values()} == set(steps[0])  # the optimizer trains exactly these

    # the plan: the seeded schedule of b-sized mini-batches, each task's examples in a seeded order
    data = {"main": train, **extra}
    maps = {"main": labels, **{t: LabelMap.from_examples(e) for t, e in extra.items()}}
    counts = {t: -(-len(d) // b) for t, d in data.items()}
    windows, plan = [], []
    for epoch in range(epochs):
        g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        orders = {t: torch.randperm(len(d), generator=g).tolist() for t, d in data.items()}
        sched = mtdnn_schedule(counts, cfg.seed, epoch)
        plan += sched
        for s in range(0, len(sched), accum):
            windows.append([(t, data[t][i]) for t, k in sched[s: s + accum]
                            for i in orders[t][k * b: (k + 1) * b]])
    assert [(r["task"], r["batch"]) for r in result["history"]] == plan
    assert len(steps) == len(windows) == epochs * -(-sum(counts.values()) // accum)
    if accum > 1:  # windows that no bN x 1 step can be: several tasks, unequal micro-batches
        assert any(len({t for t, _ in w}) > 1 for w in windows)

    for step, (state, window) in enumerate(zip(steps, windows)):
        with torch.no_grad():
            for p in named.values():
                p.copy_(state[id(p)][0])
                p.grad = None
        loss = 0.0
        for task, ex in window:  # one example at a time under its own task's head
            batch = encode_examples(tok, [ex], 32, maps[task])
            if task == "main":
                ex_loss = model(**batch).loss
            else:
                hidden = model.encode(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
                ex_loss = heads[task](hidden.last_hidden_state, batch["attention_mask"], batch["labels"]).loss
            loss = loss + ex_loss / len(window)
        loss.backward()
        want = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                          for _, p in sorted(named.items())])
        got = torch.cat([state[id(p)][1].flatten() for _, p in sorted(named.items())])
        assert want.norm() > 0
        assert _rel(got, want) < 1e-6, (step, [t for t, _ in window], _rel(got, want))
