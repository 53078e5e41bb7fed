"""The timing helpers behind `unimask bench` (benchmarking.py)."""

from __future__ import annotations

import time

import pytest

from unimask.benchmarking import BenchCase, run_case, time_interleaved


def _sleeper(seconds: float, log: list, name: str):
    def fn():
        log.append(name)
        time.sleep(seconds)

    return fn


def test_time_interleaved_alternates_and_times_each_function():
    log: list[str] = []
    fast, slow = _sleeper(0.002, log, "fast"), _sleeper(0.02, log, "slow")
    t_fast, t_slow = time_interleaved([fast, slow], min_time=0.1, block=0.01)
    # Medians of sleeps: at least the requested time, not wildly more.
    assert 0.002 <= t_fast < 0.012
    assert 0.02 <= t_slow < 0.04
    calls = log[2:]  # after one warm-up call each
    # Turns alternate: the slow function is called between fast calls, not all at the end.
    first_slow, last_fast = calls.index("slow"), len(calls) - 1 - calls[::-1].index("fast")
    assert first_slow < last_fast
    changes = sum(a != b for a, b in zip(calls, calls[1:]))
    assert changes >= 3, calls
    # Each turn lasts about one slow call (the slowest warm-up): ~10 fast calls per turn.
    runs, k = [], 0
    while k < len(calls):
        j = k
        while j < len(calls) and calls[j] == calls[k]:
            j += 1
        runs.append((calls[k], j - k))
        k = j
    fast_turns = [n for name, n in runs if name == "fast"]
    assert max(fast_turns) >= 5, runs
    # Both got about min_time of calls (the sum of their times reached it).
    assert calls.count("fast") * t_fast >= 0.09 and calls.count("slow") * t_slow >= 0.09
    assert calls.count("fast") * 0.002 < 0.2 and calls.count("slow") * 0.02 < 0.2


def test_time_interleaved_respects_min_repeats_and_max_calls():
    log: list[str] = []
    noop = lambda: log.append("x")  # noqa: E731
    (t,) = time_interleaved([noop], min_time=10.0, max_calls=50)
    assert len(log) == 1 + 50 and t >= 0
    log.clear()
    (t,) = time_interleaved([_sleeper(0.001, log, "s")], min_time=0.0, min_repeats=7)
    assert len(log) == 1 + 7 and t >= 0.001


def test_run_case_ratio_is_reference_over_unimask():
    case = BenchCase(
        "sleep 2 ms vs 6 ms",
        lambda corpus: (_sleeper(0.002, [], "a"), _sleeper(0.006, [], "b"), 100.0, "B"),
    )
    r = run_case(case, [], min_time=0.05)
    assert r.ratio == pytest.approx(r.reference_s / r.unimask_s)
    assert 1.5 < r.ratio < 3.5  # sleeps overshoot a little, by about the same amount
    assert r.unimask_rate == pytest.approx(100.0 / r.unimask_s)
    none = BenchCase("no reference", lambda corpus: (_sleeper(0.001, [], "a"), None, 1.0, "B"))
    assert run_case(none, [], min_time=0.01).ratio is None


def test_garbage_collector_paused_while_timing_and_restored():
    import gc

    seen: list[bool] = []
    probe = lambda: seen.append(gc.isenabled())  # noqa: E731
    assert gc.isenabled()
    time_interleaved([probe, probe], min_time=0.01)
    assert seen and not any(seen) and gc.isenabled()
    seen.clear()
    gc.disable()
    try:
        time_interleaved([probe], min_time=0.01)
        assert not gc.isenabled()  # left as found
    finally:
        gc.enable()
    from unimask.benchmarking import time_callable

    seen.clear()
    time_callable(probe, min_time=0.01)
    assert seen and not any(seen) and gc.isenabled()
