"""Configuration dataclass of the BERT-architecture encoder used by every unimask model.

Field names follow HF ``BertConfig`` (``config.json``) so a checkpoint directory's config maps
one-to-one; unknown keys in a ``config.json`` are ignored, missing ones take BERT-base defaults
(Devlin et al. 2019, table of hyper-parameters in google-research/bert ``modeling.py``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["EncoderConfig"]

_SUPPORTED_ACTS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")


@dataclass
class EncoderConfig:
    """Hyper-parameters of :class:`unimask.models.TransformerEncoder`.

    Attributes mirror HF ``BertConfig``. unimask-specific fields:

    * ``pre_layer_norm``: LayerNorm before each sub-layer plus a final LayerNorm (GPT-2 /
      "pre-LN" Transformer) instead of BERT's post-LN. Such checkpoints are not loadable by
      ``transformers.BertModel`` (it only knows post-LN).
    * ``add_pooler``: keep BERT's pooler (dense + tanh on the first token), needed by NSP.
    * ``attention_backend``: passed to :func:`unimask.unified_attention` (``None`` = auto).
    * ``attention_deterministic``: passed to it as ``deterministic`` (``True``: bitwise
      reproducible gradients; ``False``: the Triton kernel's atomic-dQ backward, fewer matrix
      products, dQ reproducible only up to rounding).
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int = 0
    pre_layer_norm: bool = False
    add_pooler: bool = True
    attention_backend: str | None = None
    attention_deterministic: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"EncoderConfig.{name} must be a positive int, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if not isinstance(self.attention_deterministic, bool):
            raise TypeError(f"EncoderConfig.attention_deterministic must be a bool, got {self.attention_deterministic!r}")
        if self.hidden_act not in _SUPPORTED_ACTS:
            raise ValueError(f"hidden_act must be one of {_SUPPORTED_ACTS}, got {self.hidden_act!r}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            p = getattr(self, name)
            if not 0.0 <= p < 1.0:
                raise ValueError(f"EncoderConfig.{name} must be in [0, 1), got {p!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    # -- HF config.json ---------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EncoderConfig:
        """Build from an HF ``config.json`` dict (unknown keys ignored)."""
        if d.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(
                f"position_embedding_type {d['position_embedding_type']!r} is not supported "
                "(only 'absolute', as in BERT)"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        unimask = d.get("unimask", {})
        kwargs.update({k: v for k, v in unimask.items() if k in names})
        return cls(**kwargs)

    @classmethod
    def from_json_file(cls, path: str | Path) -> EncoderConfig:
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def to_dict(self) -> dict[str, Any]:
        """HF ``BertConfig``-compatible dict; unimask-only fields go under ``"unimask"``."""
        d = dataclasses.asdict(self)
        extra = {k: d.pop(k) for k in ("pre_layer_norm", "add_pooler", "attention_backend", "attention_deterministic")}
        d.update(
            model_type="bert",
            architectures=["BertModel"],
            position_embedding_type="absolute",
            unimask=extra,
        )
        return d
