"""pytest-benchmark harness: every case runs unimask and its reference in the same session;
the terminal summary prints the ratio (reference time / unimask time) per benchmark group.

Run: ``python -m pytest bench --benchmark-only`` (add ``--benchmark-json out.json`` to keep data).
"""

from __future__ import annotations

import pytest


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    groups: dict[str, dict[str, float]] = {}
    for bench in session.benchmarks:
        side = bench.extra_info.get("side")
        if side in ("unimask", "reference") and bench.stats is not None:
            groups.setdefault(bench.group or bench.name, {})[side] = bench.stats.median
    rows = [(g, t) for g, t in groups.items() if len(t) == 2]
    if not rows:
        return
    terminalreporter.write_sep("=", "unimask vs reference (median time ratio, same run)")
    width = max(len(g) for g, _ in rows)
    for g, t in sorted(rows):
        terminalreporter.write_line(f"{g.ljust(width)}  {t['reference'] / t['unimask']:8.2f}x")


@pytest.fixture
def side_benchmark(benchmark):
    """``side_benchmark(side, fn)``: benchmark ``fn`` tagged as the unimask or reference side."""

    def run(side: str, fn):
        assert side in ("unimask", "reference")
        benchmark.extra_info["side"] = side
        return benchmark(fn)

    return run
