"""The benchmark cases, one module per area of the library."""

from __future__ import annotations

from ..benchmarking import BenchCase
from . import attention, collate, finetune, tokenizer

__all__ = ["all_cases"]


def all_cases() -> list[BenchCase]:
    """Cases of every area: tokenizer, collators, attention, fine-tuning (FAQ retrieval)."""
    return [*tokenizer.cases(), *collate.cases(), *attention.cases(), *finetune.cases()]
