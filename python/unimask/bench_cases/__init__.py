"""The benchmark cases, one module per area of the library."""

from __future__ import annotations

from ..benchmarking import BenchCase
from . import attention, collate, encoder, finetune, finetune_data, tokenizer

__all__ = ["all_cases"]


def all_cases() -> list[BenchCase]:
    """Cases of every area: tokenizer, collators, attention, encoder inference, fine-tuning
    (FAQ retrieval, the tagging and QA data paths)."""
    return [*tokenizer.cases(), *collate.cases(), *attention.cases(), *encoder.cases(), *finetune.cases(),
            *finetune_data.cases()]
