"""unimask models: a BERT-compatible encoder and the BERT / UNILM / GPT / MASS objectives."""

from __future__ import annotations

from .config import EncoderConfig
from .encoder import EncoderOutput, KVCache, TransformerEncoder

__all__ = ["EncoderConfig", "EncoderOutput", "KVCache", "TransformerEncoder"]
