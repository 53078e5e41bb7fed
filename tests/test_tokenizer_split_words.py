"""Texts given as lists of words (``is_split_into_words=True``) vs HF `tokenizers`, the oracle.

HF side: ``Tokenizer.encode(words, is_pretokenized=True)`` / ``encode_batch(...,
is_pretokenized=True)`` of the real MiniLM ``tokenizer.json`` (each word pre-tokenized on its
own, word ids = indices of the given words, offsets into each word), with truncation and
overflowing windows. Words: the bundled English and Chinese corpora split on whitespace (the
Chinese also into single characters, CoNLL-style), and adversarial words (empty, spaces only,
several pre-tokens in one word, accents, combining marks, control and zero-width characters,
added tokens, a word longer than 100 characters). Also checked against transformers'
``BertTokenizerFast(..., is_split_into_words=True)``: the word ids a tagging model aligns its
labels with.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

tokenizers = pytest.importorskip("tokenizers")

from unimask.corpus import demo_corpus_path, read_documents  # noqa: E402
from unimask.finetune import align_word_labels  # noqa: E402
from unimask.tokenizer import WordPieceTokenizer  # noqa: E402

ODD_WORDS = [
    "", " ", "\t\n", "U.S.", "x y", "naïve", "Cafe\u0301", "e\u0301\u0301", "\u200bzero\u200dwidth",
    "ctrl\x07char", "[MASK]", "a[SEP]b", "東京都", "日本語text", "😀emoji😀", "don't", "3.14",
    "—", "x" * 120, "Ünïcödé", "\u00adsoft", "a\u3000b", "\ufffd", "\x00nul",
]


def _cols(e) -> tuple:
    """Columns of an HF or unimask encoding as plain lists (HF's None word id -> -1)."""
    return (
        [int(x) for x in e.ids],
        [int(x) for x in e.type_ids],
        [tuple(int(v) for v in o) for o in e.offsets],
        [-1 if w is None else int(w) for w in e.word_ids],
    )


def _batch_rows(b) -> list[tuple]:
    return [_cols(b[i]) for i in range(len(b))]


@pytest.fixture(scope="module")
def hf(minilm_dir):
    t = tokenizers.Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    t.no_padding()
    t.no_truncation()
    return t


@pytest.fixture(scope="module")
def ut(minilm_dir) -> WordPieceTokenizer:
    return WordPieceTokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def word_lists() -> list[list[str]]:
    """Sentences as word lists: English on whitespace, Chinese on whitespace and as characters,
    and random mixes with the odd words."""
    out = []
    for lang in ("en", "zh"):
        docs = read_documents(demo_corpus_path(lang))
        sents = [s for d in docs[:30] for s in d][:80]
        out += [s.split() for s in sents]
        if lang == "zh":
            out += [list(s.replace(" ", "")) for s in sents[:30]]
    rng = random.Random(0)
    pool = [w for ws in out for w in ws]
    for _ in range(60):
        out.append([rng.choice(ODD_WORDS) if rng.random() < 0.4 else rng.choice(pool) for _ in range(rng.randint(0, 12))])
    out += [[], [""], ODD_WORDS]
    return out


def test_single_word_lists_match_hf(hf, ut, word_lists):
    for words in word_lists:
        want = _cols(hf.encode(words, is_pretokenized=True))
        assert _cols(ut.encode(words, is_split_into_words=True)) == want, words


def test_batches_and_pairs_match_hf(hf, ut, word_lists):
    got = ut.encode_batch(word_lists, is_split_into_words=True)
    want = hf.encode_batch(word_lists, is_pretokenized=True)
    assert _batch_rows(got) == [_cols(e) for e in want]
    firsts, seconds = word_lists[::2], word_lists[1::2][: len(word_lists[::2])]
    firsts = firsts[: len(seconds)]
    got = ut.encode_batch(firsts, seconds, is_split_into_words=True)
    want = hf.encode_batch(list(zip(firsts, seconds)), is_pretokenized=True)
    assert _batch_rows(got) == [_cols(e) for e in want]
    for f, s in zip(firsts[:20], seconds[:20]):
        assert _cols(ut.encode(f, s, is_split_into_words=True)) == _cols(hf.encode(f, s, is_pretokenized=True))


@pytest.mark.parametrize("strategy", ["longest_first", "only_first", "only_second"])
@pytest.mark.parametrize("max_length,stride", [(12, 0), (16, 3), (40, 5)])
def test_truncation_and_overflow_match_hf(hf, ut, word_lists, strategy, max_length, stride):
    firsts, seconds = word_lists[0:40], word_lists[40:80]
    hf.enable_truncation(max_length, stride=stride, strategy=strategy)
    try:
        for f, s in zip(firsts, seconds):
            try:
                h = hf.encode(f, s, is_pretokenized=True)
            except BaseException:  # noqa: BLE001 - HF panics (PanicException) where unimask raises
                with pytest.raises(ValueError):
                    ut.encode(f, s, max_length=max_length, truncation=strategy, stride=stride, is_split_into_words=True)
                continue
            u = ut.encode(f, s, max_length=max_length, truncation=strategy, stride=stride, is_split_into_words=True)
            assert _cols(u) == _cols(h)
            assert [_cols(o) for o in u.overflowing] == [_cols(o) for o in h.overflowing]
        if strategy == "longest_first":  # single sequences, batch layout with overflowing rows
            h = hf.encode_batch(firsts, is_pretokenized=True)
            b = ut.encode_batch(firsts, max_length=max_length, stride=stride, return_overflowing=True,
                                is_split_into_words=True)
            want = [r for e in h for r in [_cols(e)] + [_cols(o) for o in e.overflowing]]
            assert _batch_rows(b) == want
            samples = [i for i, e in enumerate(h) for _ in range(1 + len(e.overflowing))]
            assert b.overflow_to_sample.tolist() == samples
    finally:
        hf.no_truncation()


def test_threads_do_not_change_rows(minilm_dir, word_lists):
    many = word_lists * 40  # enough bytes for several chunks per thread
    one = WordPieceTokenizer.from_pretrained(minilm_dir, num_threads=1).encode_batch(many, is_split_into_words=True)
    two = WordPieceTokenizer.from_pretrained(minilm_dir, num_threads=2).encode_batch(many, is_split_into_words=True)
    for name in ("ids_flat", "type_ids_flat", "offsets_flat", "word_ids_flat", "row_splits"):
        np.testing.assert_array_equal(getattr(one, name), getattr(two, name), err_msg=name)


def test_word_ids_align_tagging_labels_like_transformers(minilm_dir, ut, word_lists):
    """transformers' NER recipe: labels on the first piece of each given word, -100 elsewhere."""
    transformers = pytest.importorskip("transformers")
    ref = transformers.BertTokenizerFast.from_pretrained(str(minilm_dir))
    rng = random.Random(1)
    for words in word_lists[:60]:
        labels = [rng.randrange(5) for _ in words]
        enc = ut.encode(words, is_split_into_words=True)
        wid = ref(words, is_split_into_words=True).word_ids()
        assert [-1 if w is None else w for w in wid] == enc.word_ids.tolist()
        want, prev = [], None
        for w in wid:
            want.append(-100 if w is None or w == prev else labels[w])
            prev = w
        assert align_word_labels(enc.word_ids, labels) == want


def test_padded_batch_of_word_lists(ut, word_lists):
    b = ut.encode_batch(word_lists[:16], is_split_into_words=True)
    p = b.to_padded()
    for i in range(16):
        row = b[i]
        n = len(row.ids)
        assert p["input_ids"][i, :n].tolist() == row.ids.tolist()
        assert p["attention_mask"][i].sum() == n


def test_bad_split_input_is_rejected_clearly(ut):
    with pytest.raises(TypeError, match=r"texts\[1\] must be a list of words"):
        ut.encode_batch([["a"], "not split"], is_split_into_words=True)
    with pytest.raises(TypeError, match=r"texts\[0\]\[1\] must be str, got int"):
        ut.encode_batch([["a", 3]], is_split_into_words=True)
    with pytest.raises(TypeError, match=r"pairs\[0\]\[0\] must be str"):
        ut.encode_batch([["a"]], [[None]], is_split_into_words=True)
    with pytest.raises(ValueError, match="pairs has 1 entries but texts has 2"):
        ut.encode_batch([["a"], ["b"]], [["c"]], is_split_into_words=True)
    with pytest.raises(TypeError, match="text must be a list of words"):
        ut.encode("not split", is_split_into_words=True)
    with pytest.raises(TypeError, match=r"text\[0\] must be str"):
        ut.encode([b"bytes"], is_split_into_words=True)
    with pytest.raises(TypeError, match="is_split_into_words must be a bool"):
        ut.encode_batch([["a"]], is_split_into_words="yes")
    with pytest.raises(ValueError, match="lone surrogate"):
        ut.encode(["ok", "\ud800"], is_split_into_words=True)
    # Without the flag a list of words is not a text, and the message says what to do.
    with pytest.raises(TypeError, match=r"texts\[0\] must be str, got list \(a text given as words needs "
                                        r"is_split_into_words=True\)"):
        ut.encode_batch([["a", "b"]])
    with pytest.raises(TypeError, match="is_split_into_words=True"):
        ut.encode(["a", "b"])
