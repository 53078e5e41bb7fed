"""pytest-benchmark suite: overflow windows (max_length 128, stride 32) of unimask's
WordPieceTokenizer vs HF ``tokenizers`` in the same run.

The plain ``encode_batch`` (1 thread / all threads, English / Chinese) and vocabulary-training
comparisons are cases of :mod:`unimask.bench_cases.tokenizer`, benchmarked by
``bench/bench_registry.py`` (and printed by ``unimask bench``). Run (release build first:
``maturin develop -r``)::

    python -m pytest bench/bench_tokenizer.py --benchmark-only
"""

from __future__ import annotations

import pytest

from unimask.bench_cases.tokenizer import hf_parallelism, reference_and_ours
from unimask.corpus import demo_corpus_path

pytest.importorskip("tokenizers")
pytest.importorskip("pytest_benchmark")


@pytest.fixture(scope="module", params=["en", "zh"])
def lang(request):
    return request.param


@pytest.mark.parametrize("impl", ["unimask", "hf"])
def test_encode_batch_overflow(benchmark, lang, impl):
    """Whole documents cut into 128-token windows with stride 32, every window returned
    (unimask ``return_overflowing=True`` vs HF ``enable_truncation`` + ``Encoding.overflowing``),
    one thread."""
    from unimask.corpus import read_documents

    docs = [" ".join(d) for d in read_documents(demo_corpus_path(lang))]
    nbytes = sum(len(s.encode("utf-8")) for s in docs)
    hf, ours = reference_and_ours(1)
    rows = len(ours.encode_batch(docs, max_length=128, stride=32, return_overflowing=True))
    benchmark.group = f"encode_batch overflow {lang} max_length=128 stride=32 threads=1"
    benchmark.extra_info["side"] = "unimask" if impl == "unimask" else "reference"  # ratio in the summary
    if impl == "unimask":
        benchmark.pedantic(
            ours.encode_batch, args=(docs,), kwargs=dict(max_length=128, stride=32, return_overflowing=True),
            rounds=10, warmup_rounds=1,
        )
    else:
        hf.enable_truncation(128, stride=32)
        with hf_parallelism(False):
            out = benchmark.pedantic(hf.encode_batch, args=(docs,), rounds=3, warmup_rounds=1)
        assert sum(1 + len(e.overflowing) for e in out) == rows
    mean = benchmark.stats.stats.mean
    benchmark.extra_info.update(bytes=nbytes, rows=rows, MB_per_s=nbytes / mean / 1e6)
