"""unimask models: a BERT-compatible encoder and the BERT / UNILM / GPT / MASS objectives."""

from __future__ import annotations

from .config import EncoderConfig
from .encoder import EncoderOutput, KVCache, TransformerEncoder
from .mass import MassSeq2Seq
from .pretraining import BertForPretraining, CausalLM, PretrainingOutput, UnifiedLM

__all__ = [
    "EncoderConfig",
    "EncoderOutput",
    "KVCache",
    "TransformerEncoder",
    "PretrainingOutput",
    "BertForPretraining",
    "UnifiedLM",
    "CausalLM",
    "MassSeq2Seq",
]
