"""Word-level sequence tagging (NER, POS, chunking): data, batches, training, entity scores.

The BERT recipe (Devlin et al. 2019, sec. 5.3, CoNLL-2003 NER): a sentence is given as words
with one tag each; the words are tokenized one by one (``encode_batch(...,
is_split_into_words=True)``), a word's tag goes on its first WordPiece and the other pieces are
not scored (-100, :func:`~unimask.finetune.heads.align_word_labels`); a word's prediction is the
arg-max at its first piece. The model is :class:`~unimask.finetune.heads.TokenClassifier` (HF
``BertForTokenClassification`` layout).

Entity scores follow CoNLL's ``conlleval`` chunk rules (as the ``seqeval`` package's default
mode): tags ``B-X``, ``I-X`` (IOB1 and IOB2), ``E-X``, ``S-X`` (IOBES) and ``O``; a chunk is a
maximal run of one type under those rules, and precision / recall / F1 count exact
``(type, start, end)`` matches over all sentences.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..packing import pack_padded
from .data import LabelMap, _rows
from .heads import IGNORE_INDEX, TokenClassifier
from .trainer import (
    AuxLM,
    FinetuneConfig,
    _aux_lm_batch,
    _CrossViewRun,
    _host_keys,
    _micro_counts,
    _run_window,
    _single_task_training,
    _to,
    _use_checkpointing,
    lm_finetune,
)

__all__ = [
    "TaggedSentence", "load_tagged", "tag_label_map", "entity_spans", "entity_scores", "encode_tagged",
    "predict_tags", "evaluate_tagger", "finetune_tagger",
]


@dataclass(frozen=True)
class TaggedSentence:
    """One sentence: its words and (for training / evaluation) one tag per word. ``row`` is
    where it came from (line number), for error messages."""

    words: tuple[str, ...]
    tags: tuple[str, ...] | None = None
    row: int | None = None

    def __post_init__(self) -> None:
        where = f"row {self.row}: " if self.row is not None else ""
        if isinstance(self.words, str) or not all(isinstance(w, str) for w in self.words):
            raise TypeError(f"{where}words must be a list of str, got {self.words!r}")
        object.__setattr__(self, "words", tuple(self.words))
        if self.tags is not None:
            if isinstance(self.tags, str):
                raise TypeError(f"{where}tags must be a list with one tag per word, got a str {self.tags!r}")
            tags = tuple(str(t) for t in self.tags)
            if len(tags) != len(self.words):
                raise ValueError(f"{where}{len(self.words)} words but {len(tags)} tags")
            object.__setattr__(self, "tags", tags)


def load_tagged(path: str | Path, words_field: str = "tokens", tags_field: str | None = "tags") -> list[TaggedSentence]:
    """Read tagged sentences.

    - ``.jsonl`` / ``.json`` (one JSON object a line): ``words_field`` is the list of words,
      ``tags_field`` the list of tags (strings, or integers kept as their decimal text);
      ``tags_field=None`` reads words only.
    - anything else: CoNLL columns: one word a line, columns separated by whitespace, the word
      first and its tag last; a blank line ends a sentence; ``-DOCSTART-`` lines are skipped.

    Raises ``ValueError`` naming the line for malformed rows, ``FileNotFoundError`` when the
    file does not exist, and ``ValueError`` when it holds no sentence.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    out: list[TaggedSentence] = []
    if path.suffix.lower() in (".jsonl", ".json"):
        for n, obj in _rows(path, "jsonl"):
            if words_field not in obj:
                raise ValueError(f"{path}:{n}: expected an object with a {words_field!r} field")
            if not isinstance(obj[words_field], list):
                raise ValueError(f"{path}:{n}: {words_field!r} must be a list of words, got "
                                 f"{type(obj[words_field]).__name__}")
            tags = None
            if tags_field is not None:
                if tags_field not in obj:
                    raise ValueError(f"{path}:{n}: no {tags_field!r} field")
                tags = obj[tags_field]
                if not isinstance(tags, list) or not all(isinstance(t, (str, int)) and not isinstance(t, bool)
                                                         for t in tags):
                    raise ValueError(f"{path}:{n}: {tags_field!r} must be a list of str or int tags")
            try:
                sent = TaggedSentence(obj[words_field], tags)
            except (TypeError, ValueError) as e:
                raise ValueError(f"{path}:{n}: {e}") from None
            out.append(TaggedSentence(sent.words, sent.tags, row=n))
    else:
        words: list[str] = []
        tags_: list[str] = []
        start = 0

        def flush() -> None:
            if words:
                out.append(TaggedSentence(tuple(words), tuple(tags_) if tags_field is not None else None, row=start))
            words.clear()
            tags_.clear()

        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                cols = line.split()
                if not cols:
                    flush()
                    continue
                if cols[0] == "-DOCSTART-":
                    flush()
                    continue
                if tags_field is not None and len(cols) < 2:
                    raise ValueError(f"{path}:{n}: expected a word and a tag, got {line.strip()!r}")
                if not words:
                    start = n
                words.append(cols[0])
                tags_.append(cols[-1])
            flush()
    if not out:
        raise ValueError(f"{path} holds no tagged sentence")
    return out


def tag_label_map(sentences: Sequence[TaggedSentence]) -> LabelMap:
    """The tags of ``sentences``, sorted (``O`` first when present, as CoNLL label lists)."""
    tags = {t for s in sentences for t in (s.tags or ())}
    if not tags:
        raise ValueError("no tags in the sentences")
    return LabelMap(sorted(tags, key=lambda t: (t != "O", t)))


def _split_tag(tag: str) -> tuple[str, str]:
    """``B-PER`` -> ``("B", "PER")``; ``O`` -> ``("O", "_")`` (seqeval's default mode)."""
    return tag[:1], tag[1:].split("-", maxsplit=1)[-1] or "_"


def _end_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    return (prev_tag in ("E", "S")
            or (prev_tag in ("B", "I") and tag in ("B", "S", "O"))
            or (prev_tag not in ("O", ".") and prev_type != type_))


def _start_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    return (tag in ("B", "S")
            or (prev_tag in ("E", "S", "O") and tag in ("E", "I"))
            or (tag not in ("O", ".") and prev_type != type_))


def entity_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Chunks of one tag sequence as ``(type, start, end)`` (end exclusive), by ``conlleval``'s
    rules: e.g. ``["B-PER", "I-PER", "O", "I-LOC"]`` -> ``[("PER", 0, 2), ("LOC", 3, 4)]``.
    ``tags`` is a sequence of tag strings: one ``str`` (a sequence of characters, not of tags)
    is a ``TypeError``."""
    if isinstance(tags, str):
        raise TypeError(f"tags must be a sequence of tag strings, got one str {tags!r} (wrap it in a list)")
    chunks = []
    prev_tag, prev_type, begin = "O", "", 0
    for i, tag in enumerate([*tags, "O"]):
        t, ty = _split_tag(str(tag))
        if _end_of_chunk(prev_tag, t, prev_type, ty):
            chunks.append((prev_type, begin, i))
        if _start_of_chunk(prev_tag, t, prev_type, ty):
            begin = i
        prev_tag, prev_type = t, ty
    return chunks


def entity_scores(pred: Sequence[Sequence[str]], gold: Sequence[Sequence[str]]) -> dict[str, float]:
    """Entity-level micro precision / recall / F1 over sentences (exact chunk matches), plus
    ``f1_<TYPE>`` per gold or predicted type. A score with nothing to count is 0."""
    if len(pred) != len(gold):
        raise ValueError(f"{len(pred)} predicted sentences but {len(gold)} gold ones")
    p_set, g_set = set(), set()
    for k, (p, g) in enumerate(zip(pred, gold)):
        if len(p) != len(g):
            raise ValueError(f"sentence {k}: {len(p)} predicted tags but {len(g)} gold ones")
        p_set |= {(k, *c) for c in entity_spans(p)}
        g_set |= {(k, *c) for c in entity_spans(g)}

    def prf(ps: set, gs: set) -> tuple[float, float, float]:
        tp = len(ps & gs)
        precision = tp / len(ps) if ps else 0.0
        recall = tp / len(gs) if gs else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return precision, recall, f1

    precision, recall, f1 = prf(p_set, g_set)
    out = {"precision": precision, "recall": recall, "f1": f1, "n_gold_entities": float(len(g_set)),
           "n_pred_entities": float(len(p_set))}
    for ty in sorted({c[1] for c in p_set | g_set}):
        out[f"f1_{ty}"] = prf({c for c in p_set if c[1] == ty}, {c for c in g_set if c[1] == ty})[2]
    return out


def encode_tagged(tokenizer, sentences: Sequence[TaggedSentence], max_length: int,
                  label_map: LabelMap | None = None) -> dict[str, torch.Tensor]:
    """Padded model inputs for ``sentences`` (words tokenized one by one, ``[CLS] .. [SEP]``,
    truncated to ``max_length``), ``word_ids`` (``-1`` off words and on padding) and, with
    ``label_map``, ``labels``: each word's tag id on its first piece, ``-100`` elsewhere.
    Vectorized over the batch (numpy), no loop over tokens."""
    enc = tokenizer.encode_batch([list(s.words) for s in sentences], max_length=max_length,
                                 is_split_into_words=True)
    batch = {k: torch.from_numpy(v) for k, v in enc.to_padded().items()}
    word_ids = enc.pad_column(enc.word_ids_flat.astype(np.int64), -1, width=batch["input_ids"].shape[1])
    batch["word_ids"] = torch.from_numpy(word_ids)
    if label_map is not None:
        ids = label_map._ids
        tag_ids: list[int] = []
        for i, sent in enumerate(sentences):
            if sent.tags is None:
                raise ValueError(f"sentence {i} has no tags")
            try:
                tag_ids.extend(map(ids.__getitem__, sent.tags))
            except KeyError:
                for t in sent.tags:
                    label_map.encode(t, sent.row)  # names the unknown tag
        first_word = np.cumsum([0] + [len(s.words) for s in sentences])[:-1]
        rows, cols = np.nonzero(_first_pieces(word_ids))
        labels = np.full(word_ids.shape, IGNORE_INDEX, dtype=np.int64)
        labels[rows, cols] = np.asarray(tag_ids, dtype=np.int64)[first_word[rows] + word_ids[rows, cols]]
        batch["labels"] = torch.from_numpy(labels)
    return batch


def _first_pieces(word_ids: np.ndarray) -> np.ndarray:
    """Where each word's first piece is, in padded ``[B, L]`` word ids (``-1`` off words)."""
    first = word_ids >= 0
    first[:, 1:] &= word_ids[:, 1:] != word_ids[:, :-1]
    return first


def _default_tag(label_map: LabelMap) -> str:
    return "O" if "O" in label_map.labels else label_map.labels[0]


@torch.no_grad()
def _predict(model: TokenClassifier, tokenizer, sentences: Sequence[TaggedSentence], max_length: int,
             batch_size: int, pack: bool = False) -> tuple[list[list[str]], int]:
    """:func:`predict_tags` and the number of words that had a token to predict from."""
    lm = model.label_map
    if lm is None:
        raise ValueError("the model has no label map: cannot name its predictions")
    default = _default_tag(lm)
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    out: list[list[str]] = []
    covered = 0
    try:
        for s in range(0, len(sentences), batch_size):
            chunk = sentences[s: s + batch_size]
            batch = encode_tagged(tokenizer, chunk, max_length)
            word_ids = batch.pop("word_ids").numpy()
            if pack:  # packed rows; each sentence's predictions back into its padded row
                packed = pack_padded(batch, max_length)
                flat = model(**_to(packed, device, _host_keys(model))).logits.argmax(-1).reshape(-1).cpu().numpy()
                pred = np.zeros(word_ids.shape, dtype=np.int64)
                for i, (st, n) in enumerate(zip(packed["doc_starts"].tolist(), packed["doc_lengths"].tolist())):
                    pred[i, :n] = flat[st:st + n]
            else:
                pred = model(**_to(batch, device, _host_keys(model))).logits.argmax(-1).cpu().numpy()
            first = _first_pieces(word_ids)
            for i, sent in enumerate(chunk):
                tags = [default] * len(sent.words)
                for col in np.nonzero(first[i])[0]:
                    tags[word_ids[i, col]] = lm.decode(pred[i, col])
                    covered += 1
                out.append(tags)
    finally:
        model.train(was)
    return out, covered


def predict_tags(model: TokenClassifier, tokenizer, sentences: Sequence[TaggedSentence], max_length: int = 128,
                 batch_size: int = 64, pack: bool = False) -> list[list[str]]:
    """One predicted tag per word (the arg-max at the word's first piece). Words with no token
    (empty, or cut by truncation) get ``O`` (or the first label when there is no ``O``).
    ``pack``: each batch's sentences packed into rows of ``max_length`` (same predictions)."""
    return _predict(model, tokenizer, sentences, max_length, batch_size, pack)[0]


def evaluate_tagger(model: TokenClassifier, tokenizer, sentences: Sequence[TaggedSentence],
                    max_length: int = 128, pack: bool = False) -> dict[str, float]:
    """Word accuracy and entity precision / recall / F1 (:func:`entity_scores`) on ``sentences``;
    ``words_without_token`` counts the words the truncation (or an empty word) left unscored,
    which are predicted ``O``."""
    if any(s.tags is None for s in sentences):
        raise ValueError("evaluation sentences need tags")
    pred, covered = _predict(model, tokenizer, sentences, max_length, 64, pack)
    gold = [list(s.tags) for s in sentences]
    words = sum(len(g) for g in gold)
    correct = sum(p == g for ps, gs in zip(pred, gold) for p, g in zip(ps, gs))
    out = {"accuracy": correct / words if words else 0.0, "n_sentences": float(len(sentences)),
           "n_words": float(words), "words_without_token": float(words - covered)}
    out.update(entity_scores(pred, gold))
    return out


def finetune_tagger(model: TokenClassifier, tokenizer, train: Sequence[TaggedSentence], cfg: FinetuneConfig,
                    eval_sentences: Sequence[TaggedSentence] | None = None,
                    log: Callable[[str], None] | None = None,
                    unlabeled: Sequence[str] | None = None) -> dict[str, Any]:
    """Train a :class:`TokenClassifier` on tagged sentences with the schedule options of ``cfg``
    (BERT linear warmup / ULMFiT slanted triangular, discriminative rates, gradual unfreezing,
    ULMFiT LM fine-tuning on the training text first, an auxiliary masked-LM loss); returns
    ``{"history": [...], "lm_losses": [...], "eval": report or None, "config": {...},
    "cvt": None or {...}, "cvt_heads": CrossViewHeads or None}``.

    CVT (Clark et al. 2018, the tagging setting): ``unlabeled`` texts (default: read from
    ``cfg.cvt_unlabeled``, field ``cfg.cvt_text_field``) add, after every supervised step, one
    consistency step on the next unlabeled mini-batch: per-position view heads on the
    ``left_to_right`` / ``right_to_left`` runs of the encoder learn to match the primary tag
    distribution at every token (:func:`~unimask.finetune.cvt.tagger_cvt_loss`, times
    ``cfg.cvt_weight``). History rows then carry ``cvt_loss`` / ``cvt_kl``; ``result["cvt"]``
    holds the final eval-mode per-token cross-view KL on up to ``cfg.cvt_eval_max`` texts. The
    view heads are returned, not part of ``model``."""
    from .cvt import tagger_cvt_loss  # noqa: PLC0415
    from .data import load_unlabeled  # noqa: PLC0415

    if model.label_map is None:
        raise ValueError("the token classifier needs a label map (tag names)")
    if cfg.pack and unlabeled is not None:
        raise ValueError("pack=True does not combine with CVT (its unlabeled batches are padded)")
    if not train:
        raise ValueError("no training sentences")
    torch.manual_seed(cfg.seed)
    device = next(model.parameters()).device
    _use_checkpointing(model, cfg)
    if unlabeled is None and cfg.cvt_unlabeled is not None:
        unlabeled = [e.text for e in load_unlabeled(cfg.cvt_unlabeled, cfg.cvt_text_field)]
    cvt = None
    if unlabeled is not None:
        _CrossViewRun.check(cfg)
        cvt_texts = [u if isinstance(u, str) else " ".join(u) for u in unlabeled]
        if not cvt_texts or any(not t.strip() for t in cvt_texts):
            raise ValueError("CVT needs non-empty unlabeled texts")

        def unlabeled_batch(texts: Sequence[str]) -> dict[str, torch.Tensor]:
            enc = tokenizer.encode_batch(list(texts), max_length=cfg.max_length)
            return _to({k: torch.from_numpy(v) for k, v in enc.to_padded().items()}, device, _host_keys(model))

        cvt = _CrossViewRun(model, cvt_texts, unlabeled_batch, tagger_cvt_loss, cfg, device, per_token=True)

    lm_losses = (lm_finetune(model.encoder, tokenizer, [" ".join(s.words) for s in train], cfg.lm_finetune_steps,
                             cfg, log) if cfg.lm_finetune_steps else [])
    aux = AuxLM(model.encoder, tokenizer, cfg.mlm_probability, cfg.seed + 3) if cfg.aux_lm_weight else None
    if aux is not None:
        aux.head.to(device)
    extra = [m for m in (aux.head if aux is not None else None, cvt.heads if cvt is not None else None)
             if m is not None]
    opt, sched, unfreezer, total, plan, acc = _single_task_training(model, cfg, len(train), extra)

    def message(epoch: int, step: int, _idx: list[int], loss: float) -> str:
        return f"epoch {epoch + 1} step {step}/{total}: loss {loss:.4f}"

    history: list[dict[str, Any]] = []
    step = 0
    model.train()
    for window in acc.windows(plan):
        # the optimizer step's micro-batches first: their scored tokens weight their losses
        micro = []
        for _, _, idx in window:
            batch = encode_tagged(tokenizer, [train[i] for i in idx], cfg.max_length, model.label_map)
            batch.pop("word_ids")
            lm_batch = _aux_lm_batch(aux, batch, step + len(micro), cfg)
            if cfg.pack:  # the same sentences in fewer padded tokens; labels stay per token
                batch = pack_padded(batch, cfg.max_length)
            micro.append((batch, lm_batch))
        records = _run_window(window, micro, [_micro_counts(batch["labels"], lm_batch) for batch, lm_batch in micro],
                              lambda _idx, batch: model(**batch).loss, step, cfg=cfg, device=device, acc=acc,
                              sched=sched, unfreezer=unfreezer, log=log, message=message, aux=aux,
                              host=_host_keys(model),
                              cvt_step=(lambda: cvt.step(model, opt)) if cvt is not None else None)
        history += records
        step += len(records)
    report = evaluate_tagger(model, tokenizer, eval_sentences, cfg.max_length, cfg.pack) if eval_sentences else None
    return {"history": history, "lm_losses": lm_losses, "eval": report, "config": asdict(cfg),
            "cvt": cvt.report(model, step) if cvt is not None else None,
            "cvt_heads": cvt.heads if cvt is not None else None}
