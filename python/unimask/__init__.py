"""unimask: a Rust data path and Triton attention for BERT / GPT / MASS / UNILM training.

Public names are imported lazily, so ``import unimask`` is cheap (no torch until you use a
torch-facing name). See the README for the tour.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._native import InternalError
from ._native import __version__ as __version__

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # attention
    "unified_attention": "attention",
    "reference_attention": "attention",
    "unified_attention_varlen": "attention",
    "reference_attention_varlen": "attention",
    "sdpa_attention_varlen": "attention",
    "sdpa_attention": "attention",
    "select_backend": "attention",
    "dense_mask": "masks",
    "check_mask_args": "masks",
    "MODE_NAMES": "masks",
    "BIDIRECTIONAL": "masks",
    "LEFT_TO_RIGHT": "masks",
    "RIGHT_TO_LEFT": "masks",
    "SEQ2SEQ": "masks",
    # corpus
    "demo_corpus_path": "corpus",
    "read_documents": "corpus",
    # tokenizer
    "WordPieceTokenizer": "tokenizer",
    "Encoding": "tokenizer",
    "RaggedBatch": "tokenizer",
    "ChineseSegmenter": "tokenizer",
    "TokenShard": "tokenizer",
    # collators and datasets
    "MLMCollator": "collators",
    "UnifiedLMCollator": "collators",
    "CausalLMCollator": "collators",
    "MASSCollator": "collators",
    "T5SpanCollator": "collators",
    "NSPPairBuilder": "collators",
    "continuation_ids_from_vocab": "collators",
    "word_ids_from_char_spans": "collators",
    "IndexedDataset": "datasets",
    "PretrainingDataset": "datasets",
    "IterablePretrainingDataset": "datasets",
    "ShardSamples": "datasets",
    # models
    "EncoderConfig": "models",
    "TransformerEncoder": "models",
    "BertForPretraining": "models",
    "UnifiedLM": "models",
    "CausalLM": "models",
    "MassSeq2Seq": "models",
    "set_gradient_checkpointing": "models",
    # fine-tuning
    "SequenceClassifier": "finetune",
    "TokenClassifier": "finetune",
    "QuestionAnswering": "finetune",
    "SiameseEncoder": "finetune",
    "FAQIndex": "finetune",
    "FinetuneConfig": "finetune",
    "finetune_classifier": "finetune",
    "load_task_model": "finetune",
    "LabelMap": "finetune",
    "load_examples": "finetune",
    # training
    "Trainer": "training",
    "TrainingConfig": "training",
}

__all__ = ["InternalError", "__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'unimask' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
