"""Overflowing windows (``stride``) vs HF `tokenizers` 0.23.3, the oracle.

HF side: ``Tokenizer.from_file(tokenizer.json)`` with ``enable_truncation(max_length,
stride=..., strategy=...)`` and ``Encoding.overflowing`` (nested lists included). unimask side:
``WordPieceTokenizer.encode(...).overflowing`` and ``encode_batch(..., return_overflowing=True)``
(each text's row followed by HF's top-level ``overflowing`` list, ``overflow_to_sample``).
Texts are real sentences and whole documents of the bundled English and Chinese corpora.
Where HF panics (``stride >= max_len`` inside ``Encoding::truncate``) unimask must raise
``ValueError``.
"""

from __future__ import annotations

import numpy as np
import pytest

tokenizers = pytest.importorskip("tokenizers")

from unimask.corpus import demo_corpus_path, read_documents  # noqa: E402
from unimask.tokenizer import Encoding, WordPieceTokenizer  # noqa: E402

STRATEGIES = ("longest_first", "only_first", "only_second")


def _cols(e) -> tuple:
    """Columns of an HF or unimask encoding as plain lists (HF's None word id -> -1)."""
    return (
        [int(x) for x in e.ids],
        [int(x) for x in e.type_ids],
        [tuple(int(v) for v in o) for o in e.offsets],
        [-1 if w is None else int(w) for w in e.word_ids],
    )


def _tree(e) -> tuple:
    """Columns plus the (recursive) overflowing list."""
    return (_cols(e), [_tree(o) for o in e.overflowing])


def _rows(h) -> list[tuple]:
    """HF main encoding followed by its top-level overflowing list (the batch layout)."""
    return [_cols(h)] + [_cols(o) for o in h.overflowing]


@pytest.fixture(scope="module")
def hf(minilm_dir):
    t = tokenizers.Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    t.no_padding()
    return t


@pytest.fixture(scope="module")
def ut(minilm_dir) -> WordPieceTokenizer:
    return WordPieceTokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def corpus() -> dict[str, tuple[list[str], list[str]]]:
    """Per language: (sentences, whole documents joined by spaces)."""
    out = {}
    for lang in ("en", "zh"):
        docs = read_documents(demo_corpus_path(lang))
        sents = [s for d in docs[:40] for s in d][:60]
        out[lang] = (sents, [" ".join(d) for d in docs[:25]])
    return out


def _hf_encode(hf, text, pair, max_length, stride, strategy):
    """HF encode with truncation; None where HF panics (PanicException is a BaseException)."""
    hf.enable_truncation(max_length, stride=stride, strategy=strategy)
    try:
        return hf.encode(text, pair)
    except Exception:
        raise
    except BaseException as e:  # pyo3_runtime.PanicException: stride >= max_len
        assert "stride" in str(e), e
        return None
    finally:
        hf.no_truncation()


def _check_texts(hf, ut, texts, pairs, max_length, stride, strategy) -> int:
    """Compare every text (tree and batch rows) with HF; returns the number of overflow rows."""
    rows_hf: list[tuple] = []
    samples: list[int] = []
    panicked = []
    for i, text in enumerate(texts):
        pair = None if pairs is None else pairs[i]
        try:
            h = _hf_encode(hf, text, pair, max_length, stride, strategy)
        except Exception as e:  # HF truncation error (e.g. only_second too short): we raise too
            with pytest.raises(ValueError, match="Truncation error"):
                ut.encode(text, pair, max_length=max_length, stride=stride, truncation=strategy)
            panicked.append(i)
            assert "Truncation error" in str(e)
            continue
        if h is None:
            with pytest.raises(ValueError, match=f"stride={stride} must be smaller"):
                ut.encode(text, pair, max_length=max_length, stride=stride, truncation=strategy)
            panicked.append(i)
            continue
        u = ut.encode(text, pair, max_length=max_length, stride=stride, truncation=strategy)
        assert isinstance(u, Encoding)
        assert _tree(u) == _tree(h), (text, pair, max_length, stride, strategy)
        rows_hf += _rows(h)
        samples += [i] * (1 + len(h.overflowing))
    keep = [i for i in range(len(texts)) if i not in panicked]
    if panicked:
        with pytest.raises(ValueError, match=rf"texts\[{panicked[0]}\]"):
            ut.encode_batch(texts, pairs, max_length=max_length, stride=stride, truncation=strategy, return_overflowing=True)
    texts = [texts[i] for i in keep]
    pairs = None if pairs is None else [pairs[i] for i in keep]
    b = ut.encode_batch(texts, pairs, max_length=max_length, stride=stride, truncation=strategy, return_overflowing=True)
    assert b.overflow_to_sample is not None and b.overflow_to_sample.dtype == np.int64
    assert [keep[s] for s in b.overflow_to_sample.tolist()] == samples
    assert [_cols(b[r]) for r in range(len(b))] == rows_hf
    return len(rows_hf) - len(texts)


@pytest.mark.parametrize("lang", ["en", "zh"])
@pytest.mark.parametrize("max_length,stride", [(16, 0), (16, 5), (32, 1), (64, 13)])
def test_single_text_windows_match_hf(hf, ut, corpus, lang, max_length, stride):
    sents, docs = corpus[lang]
    n_over = 0
    for strategy in ("longest_first", "only_first"):
        n_over += _check_texts(hf, ut, sents[:30] + docs, None, max_length, stride, strategy)
    assert n_over > 50  # the corpus really is cut into many windows


@pytest.mark.parametrize("lang", ["en", "zh"])
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("max_length,stride", [(20, 0), (24, 2), (40, 3), (40, 9)])
def test_pair_windows_match_hf(hf, ut, corpus, lang, strategy, max_length, stride):
    sents, docs = corpus[lang]
    texts, pairs = sents[0:60:2], sents[1:60:2]
    # Pairs of unequal length too: a short question with a long context (the QA use of
    # stride), a sentence with a whole document, and the reverse.
    texts = texts + [s[:20] for s in texts[:8]] + texts[:8] + sents[:6] + docs[:6]
    pairs = pairs + pairs[:8] + [s[:20] for s in pairs[:8]] + docs[:6] + sents[:6]
    assert _check_texts(hf, ut, texts, pairs, max_length, stride, strategy) > 0


def test_cross_language_pairs_and_zero_budget(hf, ut, corpus):
    """EN question / ZH context pairs; max_length == special tokens (the whole text overflows)."""
    en, zh = corpus["en"][0][:12], corpus["zh"][1][:12]
    for strategy in STRATEGIES:
        _check_texts(hf, ut, en, zh, 30, 4, strategy)
    _check_texts(hf, ut, en, None, 2, 0, "longest_first")
    _check_texts(hf, ut, en, zh, 3, 0, "longest_first")
    # Without special tokens the budget is the whole max_length.
    h = hf
    h.enable_truncation(10, stride=3)
    try:
        he = h.encode(zh[0], add_special_tokens=False)
    finally:
        h.no_truncation()
    u = ut.encode(zh[0], add_special_tokens=False, max_length=10, stride=3)
    assert _tree(u) == _tree(he)


def test_no_overflow_request_keeps_first_window(hf, ut, corpus):
    """return_overflowing=False: one row per text = HF's main encoding; overflow_to_sample None."""
    sents, docs = corpus["en"]
    texts = sents[:10] + docs[:5]
    b = ut.encode_batch(texts, max_length=32, stride=8)
    assert len(b) == len(texts) and b.overflow_to_sample is None
    hf.enable_truncation(32, stride=8)
    try:
        hs = hf.encode_batch(texts)
    finally:
        hf.no_truncation()
    assert [_cols(b[i]) for i in range(len(b))] == [_cols(h) for h in hs]
    assert any(len(h.overflowing) for h in hs)
    short = ut.encode("hello world", max_length=32, stride=8)
    assert short.overflowing == []


def test_overflow_rows_do_not_depend_on_thread_count(minilm_dir, corpus):
    sents_en, docs_en = corpus["en"]
    sents_zh, docs_zh = corpus["zh"]
    texts = (docs_en + docs_zh) * 8
    pairs = (sents_en[:25] + sents_zh[:25]) * 8
    out = []
    for threads in (1, 2, 3):
        t = WordPieceTokenizer.from_pretrained(minilm_dir, num_threads=threads)
        out.append(
            [
                t.encode_batch(texts, max_length=48, stride=7, return_overflowing=True),
                t.encode_batch(texts, pairs, max_length=64, stride=5, return_overflowing=True),
            ]
        )
    for other in out[1:]:
        for a, b in zip(out[0], other):
            for name in ("ids_flat", "type_ids_flat", "offsets_flat", "word_ids_flat", "row_splits", "overflow_to_sample"):
                np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    single = out[0][0]
    assert len(single) > len(texts)
    # overflow_to_sample is sorted and covers every text (each text has at least its main row).
    assert np.array_equal(np.unique(single.overflow_to_sample), np.arange(len(texts)))
    assert np.all(np.diff(single.overflow_to_sample) >= 0)


def test_stride_errors_name_the_values(hf, ut):
    with pytest.raises(ValueError, match="stride=3 needs max_length"):
        ut.encode("hello world", stride=3)
    with pytest.raises(ValueError, match="stride=3 needs max_length"):
        ut.encode_batch(["hello world"], stride=3, return_overflowing=True)
    # Single text: budget = max_length - 2; HF panics in Encoding::truncate when stride >= it.
    with pytest.raises(ValueError, match=r"stride=6 must be smaller than max_length minus special tokens \(6\)"):
        ut.encode_batch(["one two three four five six seven eight nine ten"], max_length=8, stride=6)
    hf.enable_truncation(8, stride=6)
    try:
        with pytest.raises(BaseException, match="stride"):
            hf.encode("one two three four five six seven eight nine ten")
    finally:
        hf.no_truncation()
    # Pair: budget = max_length - 3.
    with pytest.raises(ValueError, match=r"stride=9 must be smaller than max_length minus special tokens \(9\)"):
        ut.encode("a b", "c d", max_length=12, stride=9)
    # Pair whose truncated sequence is too short for the stride: HF panics, we name the text.
    a, b = "one two three four five six seven eight nine ten", "alpha beta gamma delta epsilon zeta eta theta"
    with pytest.raises(ValueError, match=r"texts\[1\]: stride=5 must be smaller than the 5 tokens the second sequence \(8 tokens\)"):
        ut.encode_batch(["x", a], ["y", b], max_length=14, stride=5, return_overflowing=True)
    assert _hf_encode(hf, a, b, 14, 5, "longest_first") is None
    with pytest.raises(TypeError, match="return_overflowing"):
        ut.encode_batch(["x"], return_overflowing="yes")
    with pytest.raises(ValueError, match="stride must be >= 0"):
        ut.encode("x", max_length=8, stride=-1)


# ------------------------------------------------------------------------- random (hypothesis)

from hypothesis import HealthCheck, assume, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_words = st.sampled_from(["hello", "World", "naïve", "中文", "unaffable", "[SEP]", "a\u0301", ",", "'s", "x" * 30, "日本語"])
_texts = st.lists(st.one_of(_words, _words, st.text(max_size=6)), max_size=30).map(" ".join)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    a=_texts,
    b=st.one_of(st.none(), _texts),
    max_length=st.integers(2, 20),
    stride=st.integers(0, 5),
    strategy=st.sampled_from(STRATEGIES),
    add=st.booleans(),
)
def test_random_overflow_matches_hf(hf, ut, a, b, max_length, stride, strategy, add):
    n_special = (3 if b is not None else 2) if add else 0
    assume(max_length >= n_special)
    # HF refuses stride > max_length - 2 at enable_truncation even without special tokens; we
    # only need stride < max_length - (special tokens actually added) (see docs/tokenizer.md).
    assume(stride <= max_length - 2)
    hf.enable_truncation(max_length, stride=stride, strategy=strategy)
    try:
        h = hf.encode(a, b, add_special_tokens=add)
    except Exception:
        h = "error"
    except BaseException:  # PanicException: stride >= max_len in Encoding::truncate
        h = "panic"
    finally:
        hf.no_truncation()
    call = dict(max_length=max_length, stride=stride, truncation=strategy, add_special_tokens=add)
    if stride > 0 and stride >= max_length - n_special:
        with pytest.raises(ValueError, match="stride"):  # stricter than HF: refused up front
            ut.encode(a, b, **call)
        return
    if isinstance(h, str):
        event(f"HF {h}")
        with pytest.raises(ValueError):
            ut.encode(a, b, **call)
        return
    event("overflow" if h.overflowing else "no overflow")
    assert _tree(ut.encode(a, b, **call)) == _tree(h)
    batch = ut.encode_batch([a], None if b is None else [b], return_overflowing=True, **call)
    assert [_cols(batch[r]) for r in range(len(batch))] == _rows(h)
