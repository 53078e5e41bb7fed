"""Evaluation metrics of the fine-tuning heads: accuracy, F1 (macro, micro, binary), exact match
and token-overlap F1 for extractive QA (SQuAD v1.1 ``evaluate-v1.1.py`` normalisation), ROUGE-L
for generation."""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Sequence

__all__ = ["accuracy", "f1_scores", "exact_match", "squad_f1", "normalize_answer", "classification_report", "rouge_l"]


def _check_same_length(pred: Sequence, gold: Sequence) -> None:
    if len(pred) != len(gold):
        raise ValueError(f"{len(pred)} predictions for {len(gold)} gold labels")
    if not gold:
        raise ValueError("no examples to score")


def accuracy(pred: Sequence, gold: Sequence) -> float:
    """Fraction of positions where ``pred[i] == gold[i]``."""
    _check_same_length(pred, gold)
    return sum(p == g for p, g in zip(pred, gold)) / len(gold)


def f1_scores(pred: Sequence, gold: Sequence, labels: Sequence | None = None) -> dict[str, float]:
    """Per-label precision/recall/F1 and their macro average, plus micro F1.

    ``labels`` (default: every label seen in ``gold`` or ``pred``) fixes the classes averaged
    over. A class never predicted has precision 0; never present, recall 0 (sklearn's
    ``zero_division=0``).
    """
    _check_same_length(pred, gold)
    labels = list(labels) if labels is not None else sorted(set(gold) | set(pred), key=str)
    out: dict[str, float] = {}
    f1s = []
    tp_all = fp_all = fn_all = 0
    for c in labels:
        tp = sum(p == c and g == c for p, g in zip(pred, gold))
        fp = sum(p == c and g != c for p, g in zip(pred, gold))
        fn = sum(p != c and g == c for p, g in zip(pred, gold))
        tp_all, fp_all, fn_all = tp_all + tp, fp_all + fp, fn_all + fn
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        out[f"f1_{c}"] = f1
        f1s.append(f1)
    out["macro_f1"] = sum(f1s) / len(f1s) if f1s else 0.0
    denom = 2 * tp_all + fp_all + fn_all
    out["micro_f1"] = 2 * tp_all / denom if denom else 0.0
    return out


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation and articles, squeeze whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(pred: Sequence[str], gold: Sequence[str]) -> float:
    """Fraction of answers equal after :func:`normalize_answer`."""
    _check_same_length(pred, gold)
    return sum(normalize_answer(p) == normalize_answer(g) for p, g in zip(pred, gold)) / len(gold)


def squad_f1(pred: Sequence[str], gold: Sequence[str]) -> float:
    """Mean token-overlap F1 between normalized answers (SQuAD v1.1)."""
    _check_same_length(pred, gold)
    total = 0.0
    for p, g in zip(pred, gold):
        pt, gt = normalize_answer(p).split(), normalize_answer(g).split()
        common = collections.Counter(pt) & collections.Counter(gt)
        same = sum(common.values())
        if not pt or not gt:
            total += float(pt == gt)
        elif same:
            prec, rec = same / len(pt), same / len(gt)
            total += 2 * prec * rec / (prec + rec)
    return total / len(gold)


def _rouge_tokens(s: str) -> list[str]:
    """``rouge_score``'s default tokenizer: lower case, runs of characters other than
    ``[a-z0-9]`` are separators (no stemming)."""
    return re.sub(r"[^a-z0-9]+", " ", s.lower()).split()


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(pred: Sequence[str], gold: Sequence[str]) -> float:
    """Mean ROUGE-L F1 (Lin 2004: longest common subsequence of tokens, ``F = 2PR / (P + R)``)
    over pairs, tokenized as the ``rouge_score`` package does by default; a pair with an empty
    side scores 0 (as there)."""
    _check_same_length(pred, gold)
    total = 0.0
    for p, g in zip(pred, gold):
        pt, gt = _rouge_tokens(p), _rouge_tokens(g)
        lcs = _lcs(pt, gt) if pt and gt else 0
        if lcs:
            prec, rec = lcs / len(pt), lcs / len(gt)
            total += 2 * prec * rec / (prec + rec)
    return total / len(gold)


def classification_report(pred: Sequence, gold: Sequence, labels: Sequence | None = None) -> dict[str, float]:
    """``accuracy`` + :func:`f1_scores` in one dict (what ``unimask finetune`` writes)."""
    return {"accuracy": accuracy(pred, gold), **f1_scores(pred, gold, labels), "n": float(len(gold))}
