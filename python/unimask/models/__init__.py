"""unimask models: a BERT-compatible encoder and the BERT / UNILM / GPT / MASS objectives."""

from __future__ import annotations

from .config import EncoderConfig
from .encoder import EncoderOutput, KVCache, TransformerEncoder, set_gradient_checkpointing
from .mass import MassSeq2Seq
from .pretraining import BertForPretraining, CausalLM, PretrainingOutput, UnifiedLM

__all__ = [
    "EncoderConfig",
    "EncoderOutput",
    "KVCache",
    "TransformerEncoder",
    "set_gradient_checkpointing",
    "PretrainingOutput",
    "BertForPretraining",
    "UnifiedLM",
    "CausalLM",
    "MassSeq2Seq",
]
