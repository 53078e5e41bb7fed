"""Same-run benchmarks of unimask against its reference libraries.

A :class:`BenchCase` pairs a unimask callable with the reference callable that does the same
work (HF ``tokenizers``, ``transformers``' collators, PyTorch SDPA ...). Both run in the same
process on the same input, so the *ratio* is what is reported; absolute figures drift from
machine to machine. The pytest-benchmark suites in ``bench/`` and ``unimask bench`` use the
same cases from :func:`all_cases`.
"""

from __future__ import annotations

import gc
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

__all__ = [
    "BenchCase",
    "BenchResult",
    "all_cases",
    "time_callable",
    "time_interleaved",
    "run_case",
    "format_table",
]


@dataclass
class BenchCase:
    """One benchmark: unimask vs a reference doing the same ``work`` units of work per call.

    ``setup(corpus_paths)`` returns ``(unimask_fn, reference_fn, work, unit)`` where ``work``
    is the amount processed per call in ``unit`` (e.g. bytes, tokens); the functions take no
    arguments. It may add a fifth element, ``{unit: amount per call}`` for more units to report
    (e.g. tokens besides bytes). ``reference_fn`` may be ``None`` when the reference library is
    not installed; the case then reports no ratio and says why in ``note``.
    """

    name: str
    setup: Callable[[list[Path]], tuple]
    group: str = "data"
    note: str = ""


@dataclass
class BenchResult:
    """Timings of one case: seconds per call (median of repeats)."""

    name: str
    unit: str
    work: float
    unimask_s: float
    reference_s: float | None
    extra: dict = field(default_factory=dict)

    @property
    def unimask_rate(self) -> float:
        return self.work / self.unimask_s

    @property
    def reference_rate(self) -> float | None:
        return None if self.reference_s is None else self.work / self.reference_s

    @property
    def ratio(self) -> float | None:
        return None if self.reference_s is None else self.reference_s / self.unimask_s

    def rates(self, seconds: float | None) -> list[tuple[float, str]]:
        """``(rate, unit)`` of the main unit and of every extra one, for a call of ``seconds``."""
        if seconds is None:
            return []
        also = self.extra.get("also", {})
        return [(self.work / seconds, self.unit)] + [(w / seconds, u) for u, w in also.items()]


@contextmanager
def _gc_paused():
    """Python's cyclic garbage collector off for the duration (as :mod:`timeit` does): a full
    collection in a process that imported torch takes ~0.1 s and lands inside whatever call
    happens to allocate at that moment."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def time_callable(fn: Callable[[], object], min_time: float = 0.5, min_repeats: int = 3) -> float:
    """Median seconds per call of ``fn`` after one warm-up call (garbage collector paused)."""
    with _gc_paused():
        return _time_callable(fn, min_time, min_repeats)


def _time_callable(fn: Callable[[], object], min_time: float, min_repeats: int) -> float:
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_repeats or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 1000:
            break
    return statistics.median(times)


def time_interleaved(
    fns: list[Callable[[], object]],
    min_time: float = 0.5,
    min_repeats: int = 3,
    block: float = 0.25,
    max_calls: int = 1000,
) -> list[float]:
    """Median seconds per call of each of ``fns``, timed in alternating blocks.

    After one warm-up call each, the functions take turns: each turn calls one function
    repeatedly for about ``block`` seconds or the slowest warm-up call, whichever is longer (so
    a fast function's turns last as long as one call of a slow one). This goes on until every
    function has ``min_repeats`` calls and ``min_time`` seconds of calls (or ``max_calls``
    calls). A machine that speeds up or slows down during the measurement (other processes,
    frequency changes) then affects every function alike, so their *ratio* stays put, which
    two measurements one after the other do not guarantee. Turns are long (``block`` = 0.25 s by
    default) because the first calls of a turn run slower than the rest (caches, memory and
    the other function's threads settle for a few milliseconds; measured up to 35% on the first
    tokenizer call after a 2-thread turn); over a quarter second those calls do not move the
    median. The garbage collector is paused meanwhile (as :mod:`timeit` does).
    """
    with _gc_paused():
        return _time_interleaved(fns, min_time, min_repeats, block, max_calls)


def _time_interleaved(
    fns: list[Callable[[], object]], min_time: float, min_repeats: int, block: float, max_calls: int
) -> list[float]:
    warm = []
    for fn in fns:
        t0 = time.perf_counter()
        fn()
        warm.append(time.perf_counter() - t0)
    block = max([block, *warm])
    times: list[list[float]] = [[] for _ in fns]
    spent = [0.0 for _ in fns]

    def wanted(k: int) -> bool:
        n = len(times[k])
        return n < max_calls and (n < min_repeats or spent[k] < min_time)

    while any(wanted(k) for k in range(len(fns))):
        for k, fn in enumerate(fns):
            if not wanted(k):
                continue
            turn = 0.0
            while True:
                t0 = time.perf_counter()
                fn()
                dt = time.perf_counter() - t0
                times[k].append(dt)
                spent[k] += dt
                turn += dt
                if turn >= block or not wanted(k):
                    break
    return [statistics.median(t) for t in times]


def run_case(case: BenchCase, corpus: list[Path], min_time: float = 0.5) -> BenchResult:
    """Set up and time one case: unimask and its reference in the same run, in alternating
    turns (:func:`time_interleaved`), ``min_time`` seconds of calls each."""
    ours, ref, work, unit, *rest = case.setup(corpus)
    extra = {"also": dict(rest[0])} if rest else {}
    if ref is None:
        return BenchResult(case.name, unit, work, time_callable(ours, min_time), None, extra)
    t_ours, t_ref = time_interleaved([ours, ref], min_time)
    return BenchResult(case.name, unit, work, t_ours, t_ref, extra)


def _human(rate: float) -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if rate >= div:
            return f"{rate / div:.2f} {suffix}"
    return f"{rate:.2f} "


def format_table(results: list[BenchResult]) -> str:
    """A plain-text table: case, unimask rate, reference rate, ratio."""
    rows = [("benchmark", "unimask", "reference", "ratio")]

    def rate_cell(r: BenchResult, seconds: float | None) -> str:
        rates = r.rates(seconds)
        return ", ".join(f"{_human(v)}{u}/s" for v, u in rates) if rates else "n/a"

    for r in results:
        rows.append(
            (
                r.name,
                rate_cell(r, r.unimask_s),
                rate_cell(r, r.reference_s),
                "n/a" if r.ratio is None else f"{r.ratio:.2f}x" if r.ratio < 10 else f"{r.ratio:.1f}x",
            )
        )
    widths = [max(len(row[c]) for row in rows) for c in range(4)]
    lines = []
    for k, row in enumerate(rows):
        lines.append("  ".join(text.ljust(widths[c]) if c == 0 else text.rjust(widths[c]) for c, text in enumerate(row)))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def all_cases() -> list[BenchCase]:
    """Every registered case, in display order (from :mod:`unimask.bench_cases`)."""
    from .bench_cases import all_cases as _all  # noqa: PLC0415 - keeps import of this module light

    return _all()
