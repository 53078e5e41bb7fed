"""Extractive question answering (SQuAD): data, windowed features, training, answers, EM / F1.

The BERT SQuAD recipe (Devlin et al. 2019, sec. 4.2; HF ``run_qa.py``): each question is paired
with its context as ``[CLS] question [SEP] context [SEP]``; a context longer than the window is
cut into overlapping windows (``truncation="only_second"``, ``stride`` tokens shared between
neighbours: :meth:`~unimask.tokenizer.WordPieceTokenizer.encode_batch` with
``return_overflowing=True``). A window's targets are the first and last token of the first
gold answer when the answer lies inside the window's context, else ``[CLS]`` (position 0) for
both. An answer is the span ``i <= j < i + max_answer_length`` of context tokens with the
largest ``start[i] + end[j]`` over all windows of the question
(:func:`~unimask.finetune.heads.best_span`), cut from the context by the tokens' character
offsets. Scores: SQuAD v1.1's exact match and token F1, the maximum over the gold answers, in
percent (``evaluate-v1.1.py``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..masks import _on
from .data import _rows
from .heads import QuestionAnswering, best_span
from .metrics import exact_match, squad_f1
from .trainer import FinetuneConfig, _host_keys, _to, _train_task_loss_only

__all__ = ["QAExample", "load_squad", "encode_qa", "predict_answers", "evaluate_qa", "finetune_qa"]


@dataclass(frozen=True)
class QAExample:
    """A question about a context, with its gold answers as ``(text, character start)`` pairs
    (none: unlabelled, or unanswerable in SQuAD 2.0)."""

    question: str
    context: str
    answers: tuple[tuple[str, int], ...] = ()
    id: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.question, str) or not isinstance(self.context, str):
            raise TypeError(f"question and context must be str (example {self.id!r})")
        try:
            answers = tuple((t, int(s)) for t, s in self.answers)
        except (TypeError, ValueError):
            raise TypeError(f"answers must be (text, character start) pairs (example {self.id!r}), "
                            f"got {self.answers!r}") from None
        if not all(isinstance(t, str) for t, _ in answers):
            raise TypeError(f"answer texts must be str (example {self.id!r})")
        for text, start in answers:
            if not text or start < 0 or self.context[start: start + len(text)] != text:
                raise ValueError(f"example {self.id!r}: answer {text!r} is not at character {start} of the context "
                                 f"(found {self.context[max(start, 0): max(start, 0) + len(text)]!r})")
        object.__setattr__(self, "answers", answers)


def load_squad(path: str | Path) -> list[QAExample]:
    """Read SQuAD: the official ``.json`` layout (``data`` -> ``paragraphs`` -> ``qas``, v1.1 or
    v2.0 with ``is_impossible``) or JSON lines in the HF ``datasets`` layout (``question``,
    ``context``, ``answers: {"text": [...], "answer_start": [...]}``, optional ``id``).
    An answer not found at its ``answer_start`` is a ``ValueError`` naming the question."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    out: list[QAExample] = []
    bad = (KeyError, TypeError, AttributeError, IndexError)
    if path.suffix.lower() == ".json":
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        try:
            for article in doc["data"]:
                for para in article["paragraphs"]:
                    for qa in para["qas"]:
                        answers = [(a["text"], a["answer_start"]) for a in qa.get("answers", [])]
                        qid = qa.get("id")
                        out.append(QAExample(qa["question"], para["context"], tuple(answers),
                                             None if qid is None else str(qid)))
        except bad as e:
            raise ValueError(f"{path}: not SQuAD's data/paragraphs/qas layout ({type(e).__name__}: {e})") from None
    else:
        for n, row in _rows(path, "jsonl"):
            try:
                ans = row.get("answers") or {"text": [], "answer_start": []}
                texts, starts = ans["text"], ans["answer_start"]
                if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
                    raise TypeError("answers text and answer_start must be lists of the same length")
                out.append(QAExample(row["question"], row["context"], tuple(zip(texts, starts)),
                                     str(row.get("id", n))))
            except bad as e:
                raise ValueError(f"{path}:{n}: expected question, context and answers "
                                 f"{{text, answer_start}} ({type(e).__name__}: {e})") from None
    if not out:
        raise ValueError(f"{path} holds no question")
    return out


def encode_qa(tokenizer, examples: Sequence[QAExample], max_length: int = 384, stride: int = 128,
              with_targets: bool = True) -> dict[str, Any]:
    """Windows of ``examples``: padded ``input_ids``, ``attention_mask``, ``token_type_ids``,
    ``context_mask`` (context tokens of each window), ``example`` (the example of each window)
    and ``offsets`` (numpy, character offsets into the context); with ``with_targets``,
    ``start_positions`` / ``end_positions`` (the first gold answer, or 0 = ``[CLS]`` when the
    window does not hold all of it or there is none: the tokens of
    :func:`~unimask.finetune.heads.answer_token_span`). Vectorized over the windows (numpy)."""
    enc = tokenizer.encode_batch([e.question for e in examples], [e.context for e in examples],
                                 max_length=max_length, truncation="only_second", stride=stride,
                                 return_overflowing=True)
    batch: dict[str, Any] = {k: torch.from_numpy(v) for k, v in enc.to_padded().items()}
    width = batch["input_ids"].shape[1]
    sample = np.asarray(enc.overflow_to_sample, dtype=np.int64)
    offsets = enc.pad_column(enc.offsets_flat.astype(np.int64), 0, width)
    types = enc.pad_column(enc.type_ids_flat, 0, width)
    context = (types == 1) & (offsets[..., 1] > offsets[..., 0])
    batch["context_mask"] = torch.from_numpy(context)
    batch["example"] = torch.from_numpy(sample)
    batch["offsets"] = offsets
    if with_targets:
        first = [e.answers[0] if e.answers else ("", -1) for e in examples]
        a_start = np.array([s for _, s in first], dtype=np.int64)[sample][:, None]
        a_end = a_start + np.array([len(t) for t, _ in first], dtype=np.int64)[sample][:, None]
        has = a_start[:, 0] >= 0
        # First context token ending after the answer's start; last one starting before its end.
        after = context & (offsets[..., 1] > a_start)
        before = context & (offsets[..., 0] < a_end)
        s_tok = after.argmax(1)
        e_tok = width - 1 - before[:, ::-1].argmax(1)
        rows = np.arange(len(sample))
        inside = (has & after.any(1) & before.any(1) & (e_tok >= s_tok)
                  & (offsets[rows, s_tok, 0] <= a_start[:, 0]) & (offsets[rows, e_tok, 1] >= a_end[:, 0]))
        batch["start_positions"] = torch.from_numpy(np.where(inside, s_tok, 0))
        batch["end_positions"] = torch.from_numpy(np.where(inside, e_tok, 0))
    return batch


@torch.no_grad()
def predict_answers(model: QuestionAnswering, tokenizer, examples: Sequence[QAExample], max_length: int = 384,
                    stride: int = 128, batch_size: int = 32,
                    null_threshold: float | None = None) -> list[tuple[str, float]]:
    """``(answer text, score)`` per example: the best span over all its windows (module
    docstring); ``("", -inf)`` for an example whose windows hold no context token.

    SQuAD 2.0 (``null_threshold`` given): the no-answer score of an example is the smallest
    ``start[CLS] + end[CLS]`` over its windows, and the answer is ``""`` (score: that null
    score) when it exceeds the best span's score by more than ``null_threshold`` (HF
    ``postprocess_qa_predictions`` with ``version_2_with_negative``)."""
    device = next(model.parameters()).device
    best: list[tuple[float, str]] = [(-math.inf, "")] * len(examples)
    null = [math.inf] * len(examples)
    was = model.training
    model.eval()
    try:
        for s in range(0, len(examples), batch_size):
            chunk = examples[s: s + batch_size]
            batch = encode_qa(tokenizer, chunk, max_length, stride, with_targets=False)
            offsets, which = batch.pop("offsets"), batch.pop("example").tolist()
            ctx = _on(batch.pop("context_mask"), device)
            out = model(**_to(batch, device, _host_keys(model)))
            i, j, score = best_span(out.start_logits, out.end_logits, ctx, model.max_answer_length)
            cls = (out.start_logits[:, 0] + out.end_logits[:, 0]).tolist()
            for r, (a, b, sc) in enumerate(zip(i.tolist(), j.tolist(), score.tolist())):
                k = s + which[r]
                null[k] = min(null[k], cls[r])
                if a >= 0 and sc > best[k][0]:
                    ex = examples[k]
                    best[k] = (sc, ex.context[int(offsets[r, a, 0]): int(offsets[r, b, 1])])
    finally:
        model.train(was)
    if null_threshold is not None:
        best = [(n, "") if n - sc > null_threshold else (sc, text) for (sc, text), n in zip(best, null)]
    return [(text, score) for score, text in best]


def evaluate_qa(model: QuestionAnswering, tokenizer, examples: Sequence[QAExample], max_length: int = 384,
                stride: int = 128, null_threshold: float | None = None) -> dict[str, float]:
    """SQuAD exact match and F1 in percent, each the maximum over an example's gold answers.
    Without ``null_threshold`` (SQuAD v1.1) every question needs a gold answer; with it
    (SQuAD 2.0, see :func:`predict_answers`) a question without one is right only when the
    prediction is empty, and ``has_answer_f1`` / ``no_answer_accuracy`` split the score."""
    if null_threshold is None and any(not e.answers for e in examples):
        raise ValueError("every evaluation question needs a gold answer (SQuAD 2.0 data: set null_threshold)")
    pred = [a for a, _ in predict_answers(model, tokenizer, examples, max_length, stride,
                                          null_threshold=null_threshold)]
    golds = [[g for g, _ in e.answers] or [""] for e in examples]
    em = [max(exact_match([p], [g]) for g in gs) for p, gs in zip(pred, golds)]
    f1 = [max(squad_f1([p], [g]) for g in gs) for p, gs in zip(pred, golds)]
    n = len(examples)
    out = {"exact_match": 100.0 * sum(em) / n, "f1": 100.0 * sum(f1) / n, "n": float(n)}
    if null_threshold is not None:
        has = [k for k, e in enumerate(examples) if e.answers]
        no = [k for k, e in enumerate(examples) if not e.answers]
        out["has_answer_f1"] = 100.0 * sum(f1[k] for k in has) / len(has) if has else 0.0
        out["no_answer_accuracy"] = 100.0 * sum(em[k] for k in no) / len(no) if no else 0.0
    return out


def finetune_qa(model: QuestionAnswering, tokenizer, train: Sequence[QAExample], cfg: FinetuneConfig,
                eval_examples: Sequence[QAExample] | None = None, stride: int = 128,
                log: Callable[[str], None] | None = None, null_threshold: float | None = None) -> dict[str, Any]:
    """Train on the windows of ``train`` (``cfg.max_length`` tokens, ``stride`` shared) with
    ``cfg``'s optimizer and schedule options (BERT linear warmup / ULMFiT slanted triangular,
    discriminative rates, gradual unfreezing); ``cfg.batch_size`` counts windows; questions
    without an answer (SQuAD 2.0) train their windows towards ``[CLS]``, and ``null_threshold``
    is passed to the evaluation (:func:`evaluate_qa`). Returns
    ``{"history": [...], "eval": report or None, "config": {...}, "windows": n}``."""
    if cfg.aux_lm_weight or cfg.lm_finetune_steps or cfg.cvt_unlabeled is not None:
        raise ValueError("finetune_qa runs the task loss only (no auxiliary LM, LM fine-tuning or CVT)")
    if not train:
        raise ValueError("no training questions")
    torch.manual_seed(cfg.seed)
    device = next(model.parameters()).device
    feats = encode_qa(tokenizer, train, cfg.max_length, stride)
    feats.pop("offsets")
    feats.pop("example")
    feats.pop("context_mask")
    n = feats["input_ids"].shape[0]
    def make_batch(idx: list[int]) -> tuple[dict[str, torch.Tensor], int]:
        batch = {k: v[idx] for k, v in feats.items()}
        width = int(batch["attention_mask"].sum(1).max())  # drop the all-padding columns
        # every window has a start and an end target ([CLS] when it holds no answer): the loss
        # is a mean over the windows
        return {k: (v[:, :width] if v.dim() == 2 else v) for k, v in batch.items()}, len(idx)

    def batch_loss(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**_to(batch, device, _host_keys(model))).loss

    history = _train_task_loss_only(model, cfg, n, make_batch, batch_loss, log)
    report = (evaluate_qa(model, tokenizer, eval_examples, cfg.max_length, stride, null_threshold)
              if eval_examples else None)
    return {"history": history, "eval": report, "config": asdict(cfg), "windows": n}
