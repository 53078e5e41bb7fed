"""UNILM sequence-to-sequence fine-tuning (summarization, question generation, rewriting).

The recipe of Dong et al. 2019 (UNILM, sec. 3.2): a BERT checkpoint becomes a
:class:`~unimask.models.UnifiedLM` (segment table grown to UNILM's 6 ids);
``[CLS] source [SEP] target [SEP]`` under the seq2seq mask (source tokens see the source,
target tokens the source and their left context), each target token, the final ``[SEP]``
included, replaced by ``[MASK]`` with probability ``mask_prob`` (0.7 for summarization in the
paper) and predicted (:class:`~unimask.finetune.heads.Seq2SeqFinetuner`). Decoding is greedy or
beam search through a trailing ``[MASK]`` with a key/value cache, stopping at ``[SEP]``
(:func:`unimask.models.generation.generate_unilm`). Scores: exact match and ROUGE-L F1 of the
decoded texts (:func:`~unimask.finetune.metrics.rouge_l`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import torch

from .data import Example
from .heads import Seq2SeqFinetuner
from .metrics import exact_match, rouge_l
from .trainer import FinetuneConfig, _host_keys, _scored, _to, _train_task_loss_only

__all__ = ["seq2seq_finetuner", "generate_texts", "evaluate_seq2seq", "finetune_seq2seq"]


def seq2seq_finetuner(model, tokenizer, mask_prob: float = 0.7) -> Seq2SeqFinetuner:
    """A :class:`Seq2SeqFinetuner` around ``model`` with ``tokenizer``'s special ids."""
    ids = {k: getattr(tokenizer, k) for k in ("cls_id", "sep_id", "mask_id")}
    missing = [k for k, v in ids.items() if v is None]
    if missing:
        raise ValueError(f"the tokenizer has no {', '.join(missing)}: seq2seq fine-tuning needs [CLS], [SEP], [MASK]")
    return Seq2SeqFinetuner(model, ids["cls_id"], ids["sep_id"], ids["mask_id"], tokenizer.pad_id or 0, mask_prob)


def _ids(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    enc = tokenizer.encode_batch(list(texts), add_special_tokens=False, max_length=max_length)
    splits = enc.row_splits.tolist()
    flat = enc.ids_flat.tolist()
    return [flat[a:b] for a, b in zip(splits[:-1], splits[1:])]


@torch.no_grad()
def generate_texts(ft: Seq2SeqFinetuner, tokenizer, sources: Sequence[str], max_source_length: int = 256,
                   max_new_tokens: int = 32, num_beams: int = 1, batch_size: int = 32) -> list[str]:
    """Decode a target text for each source (eval mode; sources cut to ``max_source_length``
    tokens)."""
    was = ft.model.training
    ft.model.eval()
    out: list[str] = []
    try:
        for s in range(0, len(sources), batch_size):
            src = _ids(tokenizer, sources[s: s + batch_size], max_source_length)
            out += [tokenizer.decode(t) for t in ft.generate(src, max_new_tokens, num_beams)]
    finally:
        ft.model.train(was)
    return out


def evaluate_seq2seq(ft: Seq2SeqFinetuner, tokenizer, examples: Sequence[Example], max_source_length: int = 256,
                     max_new_tokens: int = 32, num_beams: int = 1) -> dict[str, Any]:
    """Exact match (SQuAD normalisation) and ROUGE-L F1, in percent, of the decoded targets
    against ``example.label``; also a few ``samples``."""
    if any(e.label is None for e in examples):
        raise ValueError("evaluation examples need a target")
    pred = generate_texts(ft, tokenizer, [e.text for e in examples], max_source_length, max_new_tokens, num_beams)
    gold = [str(e.label) for e in examples]
    return {"exact_match": 100.0 * exact_match(pred, gold), "rouge_l": 100.0 * rouge_l(pred, gold),
            "n": float(len(examples)),
            "samples": [{"source": e.text, "target": g, "output": p} for e, g, p in list(zip(examples, gold, pred))[:5]]}


def finetune_seq2seq(ft: Seq2SeqFinetuner, tokenizer, train: Sequence[Example], cfg: FinetuneConfig,
                     eval_examples: Sequence[Example] | None = None, max_source_length: int = 256,
                     max_target_length: int = 64, num_beams: int = 1,
                     log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train ``ft.model`` on ``(example.text -> example.label)`` pairs with ``cfg``'s optimizer and
    schedule options; sources and targets are cut to ``max_source_length`` /
    ``max_target_length`` tokens, the masking is seeded by ``cfg.seed``. Returns
    ``{"history": [...], "eval": report or None, "config": {...}}``."""
    if cfg.aux_lm_weight or cfg.lm_finetune_steps or cfg.cvt_unlabeled is not None:
        raise ValueError("finetune_seq2seq runs the seq2seq loss only (no auxiliary LM, LM fine-tuning or CVT)")
    if not train:
        raise ValueError("no training pairs")
    if any(e.label is None or not str(e.label).strip() for e in train):
        raise ValueError("every training pair needs a non-empty target")
    torch.manual_seed(cfg.seed)
    device = next(ft.model.parameters()).device
    sources = _ids(tokenizer, [e.text for e in train], max_source_length)
    targets = _ids(tokenizer, [str(e.label) for e in train], max_target_length)
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + 11)

    def make_batch(idx: list[int]) -> tuple[dict[str, torch.Tensor], int]:
        # the masking draws from gen example by example, in the plan's order (as before)
        batch = ft.make_batch([sources[i] for i in idx], [targets[i] for i in idx], gen)
        return batch, _scored(batch["labels"])  # the loss is a mean over the masked target tokens

    def batch_loss(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return ft(**_to(batch, device, _host_keys(ft))).loss

    history = _train_task_loss_only(ft.model, cfg, len(train), make_batch, batch_loss, log)
    report = (evaluate_seq2seq(ft, tokenizer, eval_examples, max_source_length, max_target_length, num_beams)
              if eval_examples else None)
    return {"history": history, "eval": report, "config": asdict(cfg)}
