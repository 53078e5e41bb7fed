"""WordPieceTokenizer.train / _native.train_wordpiece argument checks: settings the trained
tokenizer would reject fail before the training run, min_frequency past i64 is honoured,
non-regular corpus paths are named. Oracles are hand-computed vocabularies of tiny corpora."""

from __future__ import annotations

import re

import pytest

from unimask import _native
from unimask.tokenizer import WordPieceTokenizer


def test_settings_the_tokenizer_rejects_fail_before_training(tmp_path):
    missing = str(tmp_path / "missing.txt")  # never read: the checks come first
    for kwargs, what in [
        (dict(special_tokens=["[UNK]", ""]), re.escape("special_tokens[1] is ''")),
        (dict(continuing_subword_prefix=""), re.escape("continuing_subword_prefix must not be empty (got '')")),
        (dict(max_input_chars_per_word=0), "max_input_chars_per_word"),
    ]:
        with pytest.raises(ValueError, match=what):
            WordPieceTokenizer.train([missing], vocab_size=50, **kwargs)
    # The native entry point checks the same rules itself (the Rust train config).
    for kwargs, specials, what in [
        ({}, ["[UNK]", "[CLS]", ""], r'special_tokens\[2\] is ""'),
        (dict(continuing_subword_prefix=""), ["[UNK]"], "continuing_subword_prefix must not be empty"),
        (dict(max_input_chars_per_word=0), ["[UNK]"], "max_input_chars_per_word must be positive"),
    ]:
        with pytest.raises(ValueError, match=what):
            _native.train_wordpiece([missing], 50, 1, specials, **kwargs)


def test_min_frequency_beyond_i64_merges_nothing(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("ab ab ab\n", encoding="utf-8")
    # Words: "ab" x 3. Alphabet: a, ##b; the only pair (a, ##b) occurs 3 times.
    alphabet = ["[UNK]", "##b", "a"]
    assert _native.train_wordpiece([str(corpus)], 50, 3, ["[UNK]"]) == alphabet + ["ab"]
    for min_frequency in (4, 2**63 - 1, 2**63, 2**64 - 1):  # 2**63.. once wrapped to -1 (= 1)
        assert _native.train_wordpiece([str(corpus)], 50, min_frequency, ["[UNK]"]) == alphabet, min_frequency
    t = WordPieceTokenizer.train([corpus], vocab_size=50, min_frequency=2**63 - 1, special_tokens=["[UNK]"])
    assert list(t.get_vocab()) == alphabet


def test_directory_corpus_is_named(tmp_path):
    good = tmp_path / "c.txt"
    good.write_text("ab\n", encoding="utf-8")
    # Every path is checked before the first file is read.
    with pytest.raises(OSError, match=re.escape(f"cannot open corpus {tmp_path}: it is a directory")):
        WordPieceTokenizer.train([good, tmp_path], vocab_size=50)
