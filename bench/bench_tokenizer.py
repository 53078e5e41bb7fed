"""pytest-benchmark suite: unimask WordPieceTokenizer vs HF ``tokenizers`` in the same run.

Run (release build first: ``maturin develop -r``)::

    python -m pytest bench/bench_tokenizer.py --benchmark-group-by=param:lang,param:threads

Each group holds unimask and HF on the same lines of the bundled corpus (English: Python docs
and fortunes; Chinese: poems and prose); ``extra_info`` records MB/s and tokens/s, and the
ratio is read from the group's table.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from unimask.bench_cases.tokenizer import hf_parallelism, load_lines, reference_and_ours
from unimask.corpus import demo_corpus_path

pytest.importorskip("tokenizers")
pytest.importorskip("pytest_benchmark")


@pytest.fixture(scope="module", params=["en", "zh"])
def lang(request):
    return request.param


@pytest.mark.parametrize("threads", [1, None], ids=["1thread", "allthreads"])
@pytest.mark.parametrize("impl", ["unimask", "hf"])
def test_encode_batch(benchmark, lang, threads, impl):
    lines = load_lines(demo_corpus_path(lang))
    nbytes = sum(len(s.encode("utf-8")) for s in lines)
    hf, ours = reference_and_ours(threads)
    n_tokens = len(ours.encode_batch(lines).ids_flat)
    benchmark.group = f"encode_batch {lang} threads={threads or 'all'}"
    if impl == "unimask":
        benchmark.pedantic(ours.encode_batch, args=(lines,), rounds=10, warmup_rounds=1)
    else:
        with hf_parallelism(threads != 1):
            benchmark.pedantic(hf.encode_batch, args=(lines,), rounds=3, warmup_rounds=1)
    mean = benchmark.stats.stats.mean
    benchmark.extra_info.update(
        bytes=nbytes, tokens=n_tokens, MB_per_s=nbytes / mean / 1e6, Mtokens_per_s=n_tokens / mean / 1e6
    )


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


@pytest.mark.parametrize("impl", ["unimask", "hf"])
def test_train_vocab(benchmark, impl):
    """WordPiece vocabulary training (8000 entries) on the whole bundled corpus."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, trainers
    from tokenizers.models import WordPiece

    from unimask.corpus import demo_corpus_paths
    from unimask.tokenizer import WordPieceTokenizer

    files = [str(p) for p in demo_corpus_paths()]
    nbytes = sum(Path(f).stat().st_size for f in files)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    benchmark.group = "train vocab_size=8000"

    def ours():
        return WordPieceTokenizer.train(files, vocab_size=8000, min_frequency=2, special_tokens=specials)

    def ref():
        hf = Tokenizer(WordPiece(unk_token="[UNK]"))
        hf.normalizer = normalizers.BertNormalizer()
        hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        hf.train(files, trainers.WordPieceTrainer(vocab_size=8000, min_frequency=2, special_tokens=specials, show_progress=False))
        return hf

    benchmark.pedantic(ours if impl == "unimask" else ref, rounds=3, warmup_rounds=1)
    benchmark.extra_info.update(bytes=nbytes, MB_per_s=nbytes / benchmark.stats.stats.mean / 1e6)
