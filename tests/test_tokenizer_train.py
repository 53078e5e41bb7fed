"""WordPieceTokenizer.train on the bundled corpus: a sane vocabulary, checked against HF
``tokenizers`` (its normalizer/pre-tokenizer as the oracle of words and characters, its
WordPieceTrainer as the reference vocabulary)."""

from __future__ import annotations

import collections

import pytest

tokenizers = pytest.importorskip("tokenizers")
from tokenizers import normalizers, pre_tokenizers, trainers  # noqa: E402
from tokenizers.models import WordPiece  # noqa: E402

from unimask.tokenizer import WordPieceTokenizer  # noqa: E402

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(scope="module")
def trained(corpus_paths) -> WordPieceTokenizer:
    return WordPieceTokenizer.train(corpus_paths, vocab_size=6000, min_frequency=2, special_tokens=SPECIALS)


@pytest.fixture(scope="module")
def word_counts(corpus_paths) -> collections.Counter:
    norm, pre = normalizers.BertNormalizer(), pre_tokenizers.BertPreTokenizer()
    counts: collections.Counter = collections.Counter()
    for p in corpus_paths:
        for line in p.read_text(encoding="utf-8").split("\n"):
            counts.update(w for w, _ in pre.pre_tokenize_str(norm.normalize_str(line)))
    return counts


def test_specials_first_and_size(trained):
    v = trained.get_vocab()
    assert v[:5] == SPECIALS and len(v) == 6000 == len(set(v))
    assert (trained.pad_id, trained.unk_id, trained.cls_id, trained.sep_id, trained.mask_id) == (0, 1, 2, 3, 4)


def test_every_character_is_covered(trained, word_counts):
    vocab = set(trained.get_vocab())
    for w in word_counts:
        if len(w) > 100:
            continue
        assert w[0] in vocab, w
        assert all("##" + c in vocab for c in w[1:]), w


@pytest.fixture(scope="module")
def hf_trained(corpus_paths):
    hf = tokenizers.Tokenizer(WordPiece(unk_token="[UNK]"))
    hf.normalizer = normalizers.BertNormalizer()
    hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    hf.train([str(p) for p in corpus_paths], trainers.WordPieceTrainer(vocab_size=6000, min_frequency=2, special_tokens=SPECIALS, show_progress=False))
    return hf


def test_frequent_words_are_whole_tokens(trained, hf_trained, word_counts):
    # Which frequent words end up whole depends on the corpus (6000 entries, many of them
    # Chinese characters): HF's WordPieceTrainer on the same corpus is the oracle.
    top = [w for w, _ in word_counts.most_common(300)]
    ours = {w for w in top if len(trained.encode(w, add_special_tokens=False)) == 1}
    ref = {w for w in top if len(hf_trained.encode(w, add_special_tokens=False).ids) == 1}
    assert len(ours) >= 0.9 * len(top), sorted(set(top) - ours)
    assert len(ours & ref) >= 0.98 * len(ref), sorted(ref - ours)


def test_training_corpus_has_no_unknowns(trained, corpus_paths):
    for p in corpus_paths:
        lines = [ln for ln in p.read_text(encoding="utf-8").split("\n") if ln]
        b = trained.encode_batch(lines, add_special_tokens=False)
        assert (b.ids_flat == trained.unk_id).mean() < 1e-4


def test_vocab_agrees_with_hf_wordpiece_trainer(trained, hf_trained):
    ours, ref = set(trained.get_vocab()), set(hf_trained.get_vocab())
    assert len(ours & ref) / len(ref) > 0.98


def test_deterministic_across_threads_and_hf_loads_it(tmp_path, corpus_paths, trained):
    again = WordPieceTokenizer.train(corpus_paths, vocab_size=6000, min_frequency=2, special_tokens=SPECIALS, num_threads=1)
    assert again.get_vocab() == trained.get_vocab()
    trained.save_pretrained(tmp_path)
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    lines = [ln for ln in corpus_paths[1].read_text(encoding="utf-8").split("\n") if ln][:300]
    for t in lines:
        assert trained.encode(t).ids.tolist() == hf.encode(t).ids


def test_cased_training_keeps_case(corpus_paths):
    t = WordPieceTokenizer.train(corpus_paths[:1], vocab_size=3000, lowercase=False)
    assert "The" in t.get_vocab() and t._config["lowercase"] is False


def test_train_errors(tmp_path, corpus_paths):
    with pytest.raises(OSError, match="nope.txt"):
        WordPieceTokenizer.train([tmp_path / "nope.txt"], vocab_size=100)
    with pytest.raises(ValueError, match="vocab_size"):
        WordPieceTokenizer.train(corpus_paths, vocab_size=0)
    with pytest.raises(ValueError, match=r"unknown token '\[UNK\]'"):
        WordPieceTokenizer.train(corpus_paths, vocab_size=100, special_tokens=["[PAD]"])
    with pytest.raises(ValueError, match="at least one file"):
        WordPieceTokenizer.train([], vocab_size=100)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\n\xc3\x28\n")
    with pytest.raises(ValueError, match="line 2 is not valid UTF-8"):
        WordPieceTokenizer.train([bad], vocab_size=100)
