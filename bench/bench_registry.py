"""Every case of :mod:`unimask.bench_cases` (the ones ``unimask bench`` prints), as pytest-benchmarks.

Each case is benchmarked twice in the same session, ``unimask`` and ``reference``, under one
group; ``bench/conftest.py`` prints the ratio per group at the end.
"""

from __future__ import annotations

import pytest

from unimask.bench_cases import all_cases
from unimask.corpus import demo_corpus_paths

CASES = all_cases()
_SETUPS: dict[str, tuple] = {}


def _setup(case):
    if case.name not in _SETUPS:
        _SETUPS[case.name] = case.setup(demo_corpus_paths())
    return _SETUPS[case.name]


@pytest.mark.parametrize("side", ["unimask", "reference"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def bench_case(case, side, side_benchmark, benchmark):
    ours, ref, work, unit, *also = _setup(case)
    fn = ours if side == "unimask" else ref
    if fn is None:
        pytest.skip(f"reference for {case.name!r} is not installed: {case.note}")
    benchmark.group = case.name
    benchmark.extra_info.update(work=work, unit=unit, **{f"work_{u}": w for u, w in (also[0] if also else {}).items()})
    side_benchmark(side, fn)
