"""Argument checks of the tokenizer API: flags are bools, ints are ints in range, and every
error names the argument (no silent casts, no wrapped ids, no bare OverflowError)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from unimask.tokenizer import WordPieceTokenizer

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world"]


@pytest.fixture(scope="module")
def tok() -> WordPieceTokenizer:
    return WordPieceTokenizer(VOCAB, num_threads=1)


@pytest.mark.parametrize("bad", ["no", None, 1, 0, "False"])
def test_add_special_tokens_must_be_a_bool(tok, bad):
    with pytest.raises(TypeError, match="add_special_tokens must be a bool"):
        tok.encode("hello", add_special_tokens=bad)
    with pytest.raises(TypeError, match="add_special_tokens must be a bool"):
        tok.encode_batch(["hello"], add_special_tokens=bad)
    with pytest.raises(TypeError, match="skip_special_tokens must be a bool"):
        tok.decode([2, 5, 3], skip_special_tokens=bad)
    # The flag itself (bools, numpy bools) works.
    assert tok.encode("hello", add_special_tokens=np.bool_(False)).ids.tolist() == [5]
    assert tok.encode("hello", add_special_tokens=True).ids.tolist() == [2, 5, 3]


@pytest.mark.parametrize("dtype", [np.uint64, np.int64, np.uint32, np.int8])
def test_decode_names_the_id_as_given(tok, dtype):
    big = {np.uint64: 2**63 + 5, np.int64: 2**63 - 1, np.uint32: 2**32 - 1, np.int8: -3}[dtype]
    with pytest.raises(ValueError, match=rf"token id {big} is out of range \(vocab_size 7\)"):
        tok.decode(np.array([5, big], dtype=dtype))
    assert tok.decode(np.array([2, 5, 6, 3], dtype=dtype)) == "hello world"


@pytest.mark.parametrize("big", [2**63, 2**64, -(2**63) - 1, 10**30])
def test_huge_ints_are_value_errors_naming_the_argument(tok, big):
    with pytest.raises(ValueError, match=rf"token id {big} is out of range"):
        tok.decode([5, big])
    with pytest.raises(ValueError, match="max_length"):
        tok.encode("hello", max_length=big)
    with pytest.raises(ValueError, match="max_length"):
        tok.encode_batch(["hello"], max_length=big)
    with pytest.raises(ValueError, match="stride"):
        tok.encode("hello", max_length=10, stride=big)
    with pytest.raises(ValueError, match="stride"):
        tok.encode_batch(["hello"], max_length=10, stride=big)
    batch = tok.encode_batch(["hello world", "hello"])
    with pytest.raises(ValueError, match="pad_id"):
        batch.to_padded(pad_id=big)
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        batch.to_padded(pad_to_multiple_of=big)
    with pytest.raises(ValueError, match="max_input_chars_per_word"):
        WordPieceTokenizer(VOCAB, max_input_chars_per_word=big)
    with pytest.raises(ValueError, match="num_threads"):
        WordPieceTokenizer(VOCAB, num_threads=big)
    # Not an id of the vocabulary, like -1 or 10**6: None (as documented).
    assert tok.id_to_token(big) is None


def test_int_arguments_of_other_types_are_type_errors(tok, tmp_path):
    with pytest.raises(TypeError, match="id must be an int"):
        tok.id_to_token("5")
    with pytest.raises(TypeError, match="id must be an int"):
        tok.id_to_token(5.0)
    with pytest.raises(TypeError, match=r"ids\[1\] must be an int token id, got float"):
        tok.decode([5, 6.0])
    with pytest.raises(TypeError, match="pad_id must be an int"):
        tok.encode_batch(["hello"]).to_padded(pad_id=1.5)
    with pytest.raises(TypeError, match="stride must be an int"):
        tok.encode("hello", max_length=5, stride=True)
    assert tok.id_to_token(np.int64(5)) == "hello" and tok.id_to_token(7) is None
    assert tok.encode_batch(["hello world", "hello"]).to_padded(pad_id=np.int32(-1))["input_ids"].tolist() == [
        [2, 5, 6, 3],
        [2, 5, 3, -1],
    ]


def test_encode_file_batch_bytes_is_checked(tok, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world\n", encoding="utf-8")
    for bad in (2**64, 0, -1):
        with pytest.raises(ValueError, match="batch_bytes"):
            tok.encode_file(corpus, tmp_path / "c", batch_bytes=bad)
    with pytest.raises(TypeError, match="batch_bytes"):
        tok.encode_file(corpus, tmp_path / "c", batch_bytes=1.5)


def test_train_checks_its_settings_before_training(tmp_path):
    corpus = tmp_path / "c.txt"
    # Big enough that training takes a while; the checks must answer at once.
    corpus.write_text("".join(f"word{i} other{i % 97} thing{i % 13}\n" for i in range(100_000)), encoding="utf-8")
    cases = [
        (dict(num_threads=0), ValueError, "num_threads"),
        (dict(num_threads=-1), ValueError, "num_threads"),
        (dict(num_threads=2**64), ValueError, "num_threads"),
        (dict(max_input_chars_per_word=2**64), ValueError, "max_input_chars_per_word"),
        (dict(max_input_chars_per_word=0), ValueError, "max_input_chars_per_word"),
        (dict(vocab_size=2**64), ValueError, "vocab_size"),
        (dict(min_frequency=2**64), ValueError, "min_frequency"),
        (dict(lowercase="no"), TypeError, "lowercase"),
        (dict(continuing_subword_prefix=1), TypeError, "continuing_subword_prefix"),
    ]
    t0 = time.perf_counter()
    WordPieceTokenizer.train(corpus, vocab_size=30000, num_threads=1)
    train_s = time.perf_counter() - t0
    for kw, exc, name in cases:
        t0 = time.perf_counter()
        with pytest.raises(exc, match=name):
            WordPieceTokenizer.train(corpus, **{"vocab_size": 30000, **kw})
        assert time.perf_counter() - t0 < train_s / 4, f"{kw}: checked after training"
