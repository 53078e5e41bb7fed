"""Benchmark cases of the tokenizer stage (filled in with the tokenizer work)."""

from __future__ import annotations

from ..benchmarking import BenchCase


def cases() -> list[BenchCase]:
    return []
