"""Siamese bi-encoders, their training losses, and an FAQ retrieval index.

Sources: Sentence-BERT (Reimers & Gurevych 2019, arXiv 1908.10084) for pooling (mean / CLS /
max over real tokens) and the cosine / contrastive objectives; sentence-transformers
``MultipleNegativesRankingLoss`` (Henderson et al. 2017, arXiv 1705.00652) for in-batch
negatives: cross-entropy over ``scale * cos(a_i, b_j)`` with the matching ``b_i`` as the
target, ``scale = 20``; ``ContrastiveLoss`` (Hadsell et al. 2006) on the cosine distance.

:class:`FAQIndex` is the "precompute the candidate vectors" design for an FAQ bot: candidate
questions are encoded once, L2-normalized and stored; a query costs one short encoder forward
pass plus one matrix-vector product, so it stays far below the ~200 ms budget of a bot even
with 100k candidates. An optional cross-encoder (:class:`CrossEncoderReranker`) re-scores the
top candidates.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_number
from .heads import pool_hidden

__all__ = [
    "SiameseEncoder",
    "in_batch_negatives_loss",
    "cosine_similarity_loss",
    "contrastive_loss",
    "CrossEncoderReranker",
    "FAQIndex",
    "FAQHit",
]


class SiameseEncoder(nn.Module):
    """A sentence encoder: tokenizer -> :class:`~unimask.models.TransformerEncoder` -> pooling
    (-> L2 normalize).

    ``SiameseEncoder(encoder, tokenizer, pooling="mean", normalize=True, max_length=256)``
    reproduces sentence-transformers' all-MiniLM-L6-v2 pipeline (Transformer, mean Pooling,
    Normalize, max_seq_length 256). :meth:`forward` takes a padded batch (for training),
    :meth:`encode` takes texts.
    """

    def __init__(self, encoder: nn.Module, tokenizer, pooling: str = "mean", normalize: bool = True,
                 max_length: int = 256) -> None:
        super().__init__()
        if pooling not in ("mean", "cls", "max"):
            raise ValueError(f"pooling must be 'mean', 'cls' or 'max', got {pooling!r}")
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = normalize
        self.max_length = max_length

    @classmethod
    def from_pretrained(cls, directory: str | Path, **kwargs: Any) -> SiameseEncoder:
        """Encoder and tokenizer from one HF BERT directory."""
        from ..models import TransformerEncoder  # noqa: PLC0415
        from ..tokenizer import WordPieceTokenizer  # noqa: PLC0415

        return cls(TransformerEncoder.from_pretrained(directory), WordPieceTokenizer.from_pretrained(directory), **kwargs)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, got one str (wrap it in a list)")
        enc = self.tokenizer.encode_batch(list(texts), max_length=self.max_length)
        return {k: torch.from_numpy(v) for k, v in enc.to_padded().items()}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        out = self.encoder(input_ids, token_type_ids, attention_mask)
        v = pool_hidden(out.last_hidden_state, attention_mask, self.pooling)
        return F.normalize(v, p=2, dim=-1) if self.normalize else v

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """``[N, H]`` float32 embeddings of ``texts`` (eval mode, no grad). Texts are sorted by
        length inside so batches carry little padding; the output keeps the input order."""
        texts = list(texts) if not isinstance(texts, str) else texts
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, got one str (wrap it in a list)")
        was = self.training
        self.eval()
        try:
            order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
            out = torch.empty(len(texts), self.encoder.config.hidden_size)
            for s in range(0, len(texts), batch_size):
                idx = order[s: s + batch_size]
                batch = self.tokenize([texts[i] for i in idx])
                dev = self.encoder.embeddings.word.weight.device
                out[idx] = self.forward(**{k: v.to(dev) for k, v in batch.items()}).float().cpu()
        finally:
            self.train(was)
        return out


def in_batch_negatives_loss(anchors: torch.Tensor, positives: torch.Tensor, scale: float = 20.0) -> torch.Tensor:
    """Multiple-negatives ranking loss: ``CE(scale * cos(a_i, p_j) over j, target i)``.

    ``positives`` may have more rows than ``anchors`` (extra rows are hard negatives). Shapes
    other than anchors ``[B, H]`` and positives ``[>=B, H]`` (same ``H``) and a ``scale`` that is
    not a finite number > 0 are a ``ValueError`` naming them.
    """
    scale = check_number("scale", scale, 0, lo_open=True)
    if anchors.dim() != 2 or positives.dim() != 2 or positives.shape[0] < anchors.shape[0] \
            or positives.shape[1] != anchors.shape[1]:
        raise ValueError(f"need anchors [B, H] and positives [>=B, H], got {tuple(anchors.shape)} and "
                         f"{tuple(positives.shape)}")
    sims = F.normalize(anchors, dim=-1) @ F.normalize(positives, dim=-1).T
    target = torch.arange(anchors.shape[0], device=anchors.device)
    return F.cross_entropy(scale * sims.float(), target)


def _check_pair_batch(a: torch.Tensor, b: torch.Tensor, target: torch.Tensor, target_name: str) -> None:
    """``a`` and ``b`` must be embeddings of one shape ``[..., H]`` and ``target`` one value per
    pair (shape ``[...]``); anything else (which torch would broadcast into a wrong loss) is a
    ``ValueError`` naming the shapes."""
    if a.dim() < 1 or a.shape != b.shape:
        raise ValueError(f"need embeddings a and b of one shape [B, H], got {tuple(a.shape)} and {tuple(b.shape)}")
    if target.shape != a.shape[:-1]:
        raise ValueError(f"need one {target_name} per pair: {target_name} shape {tuple(target.shape)} for "
                         f"embeddings {tuple(a.shape)} (expected {tuple(a.shape[:-1])})")


def cosine_similarity_loss(a: torch.Tensor, b: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``MSE(cos(a_i, b_i), target_i)`` (sentence-transformers ``CosineSimilarityLoss``).
    ``a``, ``b`` are ``[B, H]`` and ``target`` is ``[B]``; other shapes are a ``ValueError``
    (never broadcast)."""
    _check_pair_batch(a, b, target, "target")
    return F.mse_loss(F.cosine_similarity(a, b, dim=-1).float(), target.float())


def contrastive_loss(a: torch.Tensor, b: torch.Tensor, label: torch.Tensor, margin: float = 0.5) -> torch.Tensor:
    """Contrastive loss on the cosine distance ``d = 1 - cos``:
    ``mean(0.5 * (y * d^2 + (1 - y) * relu(margin - d)^2))`` (y = 1 for similar pairs).
    ``a``, ``b`` are ``[B, H]``, ``label`` is ``[B]`` (never broadcast) and ``margin`` a finite
    number; anything else is a ``ValueError``."""
    _check_pair_batch(a, b, label, "label")
    margin = check_number("margin", margin)
    d = 1.0 - F.cosine_similarity(a, b, dim=-1).float()
    y = label.float()
    return (0.5 * (y * d.pow(2) + (1 - y) * F.relu(margin - d).pow(2))).mean()


class CrossEncoderReranker:
    """Re-score (query, candidate) pairs with a pair classifier (a cross-encoder).

    ``model`` is a :class:`~unimask.finetune.SequenceClassifier` over text pairs: with one
    output the score is that output (regression), with two or more it is the log-probability
    of class ``positive_index`` (default: the last class).
    """

    def __init__(self, model: nn.Module, tokenizer, max_length: int = 128, positive_index: int = -1) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.positive_index = positive_index

    @torch.inference_mode()
    def scores(self, query: str, candidates: Sequence[str]) -> torch.Tensor:
        enc = self.tokenizer.encode_batch([query] * len(candidates), list(candidates), max_length=self.max_length)
        dev = next(self.model.parameters()).device
        batch = {k: torch.from_numpy(v).to(dev) for k, v in enc.to_padded().items()}
        was = self.model.training
        self.model.eval()
        try:
            logits = self.model(**batch).logits.float().cpu()
        finally:
            self.model.train(was)
        if logits.shape[-1] == 1:
            return logits[:, 0]
        return torch.log_softmax(logits, -1)[:, self.positive_index]


@dataclass(frozen=True)
class FAQHit:
    """One retrieved entry: its index in the FAQ, the cosine score (or rerank score), the
    stored question and answer."""

    index: int
    score: float
    question: str
    answer: str


class FAQIndex:
    """Precomputed, L2-normalized vectors of FAQ questions; top-k cosine retrieval.

    Build with :meth:`build` (encodes every question once), persist with :meth:`save` (a
    directory: ``vectors.npy`` float32 ``[N, H]``, ``entries.jsonl``, ``index.json`` naming the
    model directory), reopen with :meth:`load`.

    ``search_dtype="bfloat16"`` keeps a second, bfloat16 copy of the vectors and scans that
    (a query over 100k x 384 vectors is memory bound: half the bytes, ~4x faster on a CPU),
    then re-scores a shortlist of ``max(4k, k + 64)`` candidates exactly in float32. The
    result equals the exact search unless a true top-k entry falls out of the shortlist
    because of bfloat16 rounding (scores within ~1e-2 of the shortlist boundary).
    """

    def __init__(self, encoder: SiameseEncoder, vectors: torch.Tensor, questions: Sequence[str],
                 answers: Sequence[str], model_dir: str | None = None, normalized: bool = False,
                 search_dtype: str = "float32") -> None:
        if vectors.dim() != 2 or vectors.shape[0] != len(questions) or len(questions) != len(answers):
            raise ValueError(f"vectors {tuple(vectors.shape)}, {len(questions)} questions and {len(answers)} answers "
                             "must agree")
        self.encoder = encoder
        vectors = vectors.float()
        self.vectors = (vectors if normalized else F.normalize(vectors, dim=-1)).contiguous()
        self.questions = list(questions)
        self.answers = list(answers)
        self.model_dir = model_dir
        if search_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"search_dtype must be 'float32' or 'bfloat16', got {search_dtype!r}")
        self.search_dtype = search_dtype
        self._fast = self.vectors.to(torch.bfloat16) if search_dtype == "bfloat16" else None

    def __len__(self) -> int:
        return len(self.questions)

    @classmethod
    def build(cls, encoder: SiameseEncoder, questions: Sequence[str], answers: Sequence[str],
              batch_size: int = 64, model_dir: str | None = None, search_dtype: str = "float32") -> FAQIndex:
        """Encode ``questions`` (normalized) and keep ``answers`` alongside."""
        if not questions:
            raise ValueError("an FAQ index needs at least one question")
        return cls(encoder, encoder.encode(questions, batch_size=batch_size), questions, answers, model_dir,
                   search_dtype=search_dtype)

    @torch.inference_mode()
    def search_vectors(self, queries: torch.Tensor, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` ``(scores, indices)`` ``[Q, k]`` for normalized query vectors ``[Q, H]``."""
        k = min(k, len(self))
        queries = queries.float()
        if self._fast is None:
            return torch.topk(queries @ self.vectors.T, k, dim=-1)
        short = min(len(self), max(4 * k, k + 64))
        cand = torch.topk((queries.to(torch.bfloat16) @ self._fast.T).float(), short, dim=-1).indices  # [Q, S]
        exact = torch.einsum("qh,qsh->qs", queries, self.vectors[cand])
        scores, pos = torch.topk(exact, k, dim=-1)
        return scores, torch.gather(cand, 1, pos)

    def query(self, text: str, k: int = 5, reranker: CrossEncoderReranker | None = None,
              rerank_top: int = 20) -> list[FAQHit]:
        """The ``k`` best entries for ``text``, best first. With ``reranker`` the top
        ``max(k, rerank_top)`` cosine hits are re-scored by the cross-encoder."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"query must be a non-empty string, got {text!r}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = self.encoder.encode([text])
        n = max(k, rerank_top) if reranker is not None else k
        scores, idx = self.search_vectors(q, n)
        hits = [FAQHit(int(i), float(s), self.questions[int(i)], self.answers[int(i)])
                for s, i in zip(scores[0].tolist(), idx[0].tolist())]
        if reranker is not None:
            rs = reranker.scores(text, [h.question for h in hits]).tolist()
            hits = [FAQHit(h.index, float(r), h.question, h.answer) for h, r in zip(hits, rs)]
            hits.sort(key=lambda h: -h.score)
        return hits[:k]

    # -- persistence --------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / "vectors.npy", self.vectors.numpy())
        with open(directory / "entries.jsonl", "w", encoding="utf-8") as f:
            for q, a in zip(self.questions, self.answers):
                f.write(json.dumps({"question": q, "answer": a}, ensure_ascii=False) + "\n")
        meta = {"format": "unimask-faq-1", "model_dir": self.model_dir, "pooling": self.encoder.pooling,
                "normalize": self.encoder.normalize, "max_length": self.encoder.max_length, "size": len(self)}
        (directory / "index.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        return directory

    @classmethod
    def load(cls, directory: str | Path, encoder: SiameseEncoder | None = None, search_dtype: str = "float32") -> FAQIndex:
        """Reopen a saved index; the encoder is rebuilt from the recorded model directory
        unless given."""
        directory = Path(directory)
        meta_path = directory / "index.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{directory} is not an FAQ index (no index.json)")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != "unimask-faq-1":
            raise ValueError(f"{meta_path}: unknown format {meta.get('format')!r}")
        if encoder is None:
            if not meta.get("model_dir"):
                raise ValueError(f"{meta_path} records no model_dir; pass encoder=")
            encoder = SiameseEncoder.from_pretrained(meta["model_dir"], pooling=meta["pooling"],
                                                     normalize=meta["normalize"], max_length=meta["max_length"])
        vectors = torch.from_numpy(np.load(directory / "vectors.npy"))
        questions, answers = [], []
        with open(directory / "entries.jsonl", encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    e = json.loads(line)
                    questions.append(e["question"])
                    answers.append(e["answer"])
        return cls(encoder, vectors, questions, answers, meta.get("model_dir"), normalized=True,
                   search_dtype=search_dtype)
