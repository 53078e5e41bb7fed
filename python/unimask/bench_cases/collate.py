"""Benchmark cases of the collate stage (filled in with the collate work)."""

from __future__ import annotations

from ..benchmarking import BenchCase


def cases() -> list[BenchCase]:
    return []
