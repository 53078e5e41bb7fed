"""Feature-based transfer: frozen encoder outputs, ELMo scalar mix, BERT concat-last-four, cache.

* ELMo (Peters et al. 2018, eq. 1): ``ELMo_k = gamma * sum_j softmax(w)_j * h_{k,j}`` over
  the layer outputs ``h_j`` (embeddings output included), with learned ``w`` and ``gamma``.
* BERT feature-based NER (Devlin et al. 2019, sec. 5.4, table 7): concatenating the last
  four hidden layers was the best frozen-feature choice (96.1 dev F1 vs 96.4 fine-tuned).

:class:`FrozenFeatures` runs the encoder once per text under ``torch.no_grad`` and keeps every
layer's token states in an on-disk cache keyed by (model weights, tokenizer settings, text),
so the expensive part of a feature-based experiment is paid once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .._checks import check_number

__all__ = ["ScalarMix", "concat_last_four", "FrozenFeatures", "model_fingerprint", "tokenizer_fingerprint"]


class ScalarMix(nn.Module):
    """``gamma * sum_j softmax(w)_j * h_j`` over ``num_layers`` tensors of equal shape.

    ``w`` starts at zero (equal weights) and ``gamma`` at 1, as in AllenNLP's ``ScalarMix``.
    ``forward`` takes a sequence of tensors or one stacked tensor ``[num_layers, ...]``.
    ``num_layers`` must be an int >= 1 (another type is a ``TypeError``, an int < 1 a
    ``ValueError``).
    """

    def __init__(self, num_layers: int, trainable: bool = True) -> None:
        super().__init__()
        num_layers = check_number("num_layers", num_layers, 1, integer=True, wrong_type=TypeError)
        self.num_layers = num_layers
        self.weights = nn.Parameter(torch.zeros(num_layers), requires_grad=trainable)
        self.gamma = nn.Parameter(torch.ones(()), requires_grad=trainable)

    def forward(self, layers: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        stacked = layers if isinstance(layers, torch.Tensor) else torch.stack(list(layers))
        if stacked.shape[0] != self.num_layers:
            raise ValueError(f"ScalarMix was built for {self.num_layers} layers, got {stacked.shape[0]}")
        w = torch.softmax(self.weights, dim=0).to(stacked.dtype)
        return self.gamma * torch.tensordot(w, stacked, dims=([0], [0]))


def concat_last_four(hidden_states: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """Concatenate the last four layer outputs on the feature axis (``[..., 4H]``), in layer
    order (the fourth-from-last first), as in BERT's feature-based experiment."""
    layers = list(hidden_states) if not isinstance(hidden_states, torch.Tensor) else list(hidden_states.unbind(0))
    if len(layers) < 4:
        raise ValueError(f"concat_last_four needs at least 4 layers, got {len(layers)}")
    return torch.cat(layers[-4:], dim=-1)


def model_fingerprint(model: nn.Module) -> str:
    """sha256 of a model's state (names, shapes, bytes): the cache key part for the weights."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of a tokenizer's settings and vocabulary: the cache key part for the tokenizer.

    A unimask :class:`~unimask.tokenizer.WordPieceTokenizer` (or anything with
    ``to_tokenizer_json()``) is hashed through its ``tokenizer.json`` (vocabulary, normalizer
    flags such as ``lowercase``, special tokens, post-processor); an HF ``tokenizers.Tokenizer``
    through ``to_str()``. Any other tokenizer has no stable identity to key a cache on: a
    ``TypeError`` naming its type."""
    if callable(getattr(tokenizer, "to_tokenizer_json", None)):
        text = json.dumps(tokenizer.to_tokenizer_json(), sort_keys=True, ensure_ascii=False)
    elif callable(getattr(tokenizer, "to_str", None)):
        text = tokenizer.to_str()
    else:
        raise TypeError(f"cannot fingerprint a {type(tokenizer).__name__} tokenizer (no to_tokenizer_json() or "
                        "to_str()) for the feature cache key; use cache_dir=None or a unimask WordPieceTokenizer")
    return hashlib.sha256(text.encode()).hexdigest()


class FrozenFeatures:
    """Per-layer token states of a frozen encoder, computed once and cached.

    ``FrozenFeatures(encoder, tokenizer, max_length=128, cache_dir=None, batch_size=32)``;
    :meth:`hidden_states` returns, per text, a float32 tensor ``[num_layers + 1, n_tokens, H]``
    (embeddings output first). With ``cache_dir`` each text's tensor is stored as
    ``<sha256>.pt`` keyed by the weights fingerprint, the tokenizer fingerprint
    (:func:`tokenizer_fingerprint`: its settings and vocabulary), ``max_length`` and the text;
    a later call (another process too) loads it instead of running the encoder, and another
    tokenizer (e.g. cased instead of lowercased) on the same ``cache_dir`` gets its own
    entries. :attr:`computed` counts the texts that went through the encoder.
    """

    def __init__(self, encoder: nn.Module, tokenizer, max_length: int = 128, cache_dir: str | Path | None = None,
                 batch_size: int = 32) -> None:
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._fp = model_fingerprint(encoder) if self.cache_dir is not None else ""
        self._tok_fp = tokenizer_fingerprint(tokenizer) if self.cache_dir is not None else ""
        self.computed = 0

    def _key(self, text: str) -> str:
        return hashlib.sha256(f"{self._fp}\0{self._tok_fp}\0{self.max_length}\0{text}".encode()).hexdigest()

    @torch.no_grad()
    def _compute(self, texts: list[str]) -> list[torch.Tensor]:
        was = self.encoder.training
        self.encoder.eval()
        out: list[torch.Tensor] = []
        try:
            for i in range(0, len(texts), self.batch_size):
                chunk = texts[i: i + self.batch_size]
                enc = self.tokenizer.encode_batch(chunk, max_length=self.max_length)
                dev = next(self.encoder.parameters()).device
                padded = {k: torch.from_numpy(v).to(dev) for k, v in enc.to_padded().items()}
                res = self.encoder(padded["input_ids"], padded["token_type_ids"], padded["attention_mask"],
                                   output_hidden_states=True)
                stacked = torch.stack(res.hidden_states).float().cpu()  # [K, B, L, H]
                for b, n in enumerate(enc.lengths.tolist()):
                    out.append(stacked[:, b, :n].clone())
        finally:
            self.encoder.train(was)
        self.computed += len(texts)
        return out

    def hidden_states(self, texts: Sequence[str]) -> list[torch.Tensor]:
        """``[num_layers + 1, n_tokens, H]`` per text (from the cache where possible). ``texts``
        is a sequence of strings; one ``str`` is a ``TypeError`` (it is not split into characters)."""
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, got one str (wrap it in a list)")
        texts = list(texts)
        if self.cache_dir is None:
            return self._compute(texts)
        result: list[torch.Tensor | None] = [None] * len(texts)
        todo: list[int] = []
        for i, t in enumerate(texts):
            path = self.cache_dir / f"{self._key(t)}.pt"
            if path.is_file():
                result[i] = torch.load(path, weights_only=True)
            else:
                todo.append(i)
        if todo:
            fresh = self._compute([texts[i] for i in todo])
            for i, feats in zip(todo, fresh):
                path = self.cache_dir / f"{self._key(texts[i])}.pt"
                tmp = path.with_suffix(".tmp")
                torch.save(feats, tmp)
                tmp.replace(path)
                result[i] = feats
        return result  # type: ignore[return-value]
