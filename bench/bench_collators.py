"""Collator benchmarks (pytest-benchmark) beyond the registry.

The same-run comparisons with transformers are the cases of :mod:`unimask.bench_cases.collate`,
benchmarked by ``bench/bench_registry.py`` (``unimask bench`` prints the same table): MLM on batches of 32 packed sequences of <= 128 tokens of the bundled corpus, one
thread, against ``DataCollatorForLanguageModeling`` (lists and dict records), whole-word
masking against ``DataCollatorForLanguageModeling(whole_word_mask=True)`` (transformers 5.x
has no ``DataCollatorForWholeWordMask``), causal LM against ``mlm=False``, UNILM without a
reference. Here: thread scaling of a large MLM batch (1 vs 2 threads, same output).

Run: ``python -m pytest bench/bench_collators.py --benchmark-only`` (a release build:
``maturin develop -r``); ``bench/conftest.py`` prints reference/unimask per group.
"""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.parametrize("threads", [1, 2])
def bench_mlm_threads(threads, benchmark):
    """MLM on one batch of 1024 sequences: the per-row work splits over the fork-aware pool."""
    from unimask.collators import MLMCollator

    rng = np.random.default_rng(0)
    seqs = [np.concatenate([[101], rng.integers(1000, 30000, int(n)), [102]]) for n in rng.integers(16, 127, 1024)]
    c = MLMCollator(vocab_size=30522, pad_id=0, unk_id=100, cls_id=101, sep_id=102, mask_id=103, num_threads=threads)
    work = float(sum(len(s) for s in seqs))
    benchmark.group = "collate MLM B1024 thread scaling"
    benchmark.extra_info.update(threads=threads, work=work, unit="tokens")
    out = benchmark(lambda: c(seqs, indices=np.arange(1024)))
    ref = MLMCollator(vocab_size=30522, pad_id=0, unk_id=100, cls_id=101, sep_id=102, mask_id=103, num_threads=1)(seqs, indices=np.arange(1024))
    assert all(bool((out[k] == ref[k]).all()) for k in out)
    benchmark.extra_info["rate_per_s"] = work / benchmark.stats.stats.median
