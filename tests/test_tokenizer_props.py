"""Property tests (hypothesis) of WordPieceTokenizer: no crash, and parity with HF ``tokenizers``
(the oracle) on random Unicode text, pairs and truncation settings."""

from __future__ import annotations

import numpy as np
import pytest

tokenizers = pytest.importorskip("tokenizers")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from unimask.tokenizer import WordPieceTokenizer  # noqa: E402

# Random text, biased towards the interesting parts of Unicode as well as plain words.
_pieces = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["hello", "World", "[MASK]", "[SEP]", "naïve", "İ", "中文", "a\u0301", "\u200d", " ", "\t", "'s", "##x"]),
    st.text(alphabet=st.characters(min_codepoint=0x300, max_codepoint=0x36F), max_size=3),
    st.text(alphabet=st.characters(min_codepoint=0x2B800, max_codepoint=0x2B9FF), max_size=3),
    st.text(alphabet=st.characters(categories=["Cc", "Cf", "Co", "Zs", "Mn", "Mc", "Pd", "Po", "So"]), max_size=4),
)
texts = st.lists(_pieces, max_size=12).map("".join)

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def pair_of(minilm_dir):
    hf = tokenizers.Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    hf.no_padding()
    hf.no_truncation()
    return hf, WordPieceTokenizer.from_pretrained(minilm_dir)


def _same(h, u) -> None:
    assert u.ids.tolist() == h.ids
    assert u.type_ids.tolist() == h.type_ids
    assert [tuple(o) for o in u.offsets.tolist()] == h.offsets
    assert u.word_ids.tolist() == [-1 if w is None else w for w in h.word_ids]


@SETTINGS
@given(text=texts)
def test_random_text_matches_hf(pair_of, text):
    hf, ut = pair_of
    _same(hf.encode(text), ut.encode(text))
    e = ut.encode(text)
    n = len(text)
    assert ((e.offsets[:, 0] <= e.offsets[:, 1]) & (e.offsets[:, 1] <= n)).all()


@SETTINGS
@given(a=texts, b=texts, max_length=st.integers(3, 24), strategy=st.sampled_from(["longest_first", "only_first", "only_second"]))
def test_random_pairs_with_truncation_match_hf(minilm_dir, pair_of, a, b, max_length, strategy):
    _, ut = pair_of
    hf = tokenizers.Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    hf.no_padding()
    hf.enable_truncation(max_length=max_length, strategy=strategy)
    try:
        h = hf.encode(a, b)
    except Exception:
        with pytest.raises(ValueError):
            ut.encode(a, b, max_length=max_length, truncation=strategy)
        return
    _same(h, ut.encode(a, b, max_length=max_length, truncation=strategy))


@settings(max_examples=60, deadline=None)
@given(batch=st.lists(texts, max_size=40), threads=st.integers(1, 4))
def test_batch_equals_single_encodes_for_any_thread_count(pair_of, batch, threads):
    _, ut = pair_of
    t = WordPieceTokenizer(ut.get_vocab(), num_threads=threads)
    b = t.encode_batch(batch, max_length=20)
    assert len(b) == len(batch)
    for i, text in enumerate(batch):
        e = t.encode(text, max_length=20)
        assert np.array_equal(b[i].ids, e.ids) and np.array_equal(b[i].offsets, e.offsets)


@settings(max_examples=50, deadline=None)
@given(prefix=st.text(max_size=5), sur=st.integers(0xD800, 0xDFFF), suffix=st.text(max_size=5))
def test_lone_surrogates_are_value_errors(pair_of, prefix, sur, suffix):
    _, ut = pair_of
    with pytest.raises(ValueError, match="surrogate"):
        ut.encode(prefix + chr(sur) + suffix)


@SETTINGS
@given(words=st.lists(texts, max_size=10), pair=st.one_of(st.none(), st.lists(texts, max_size=6)))
def test_random_word_lists_match_hf(pair_of, words, pair):
    """Texts split into words (``is_split_into_words=True``) against HF ``is_pretokenized=True``."""
    hf, ut = pair_of
    h = hf.encode(words, is_pretokenized=True) if pair is None else hf.encode(words, pair, is_pretokenized=True)
    _same(h, ut.encode(words, pair, is_split_into_words=True))
    batch = ut.encode_batch([words, words], None if pair is None else [pair, pair], is_split_into_words=True)
    _same(h, batch[1])
