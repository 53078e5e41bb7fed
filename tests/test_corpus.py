"""The bundled demo corpus: present in the installed package, small, real English and Chinese."""

from __future__ import annotations

import unicodedata
from importlib import resources
from pathlib import Path

import pytest

from unimask.corpus import demo_corpus_path, demo_corpus_paths, read_documents


def test_corpus_is_bundled_and_small(corpus_paths):
    total = sum(p.stat().st_size for p in corpus_paths)
    assert 500_000 < total <= 2_000_000
    prov = Path(str(resources.files("unimask") / "data" / "PROVENANCE.md"))
    text = prov.read_text(encoding="utf-8")
    assert "licence" in text and "fortunes-zh" in text and "python3" in text.lower()


def test_english_corpus_is_english_prose():
    docs = read_documents(demo_corpus_path("en"))
    assert len(docs) > 500
    text = " ".join(" ".join(d) for d in docs)
    words = text.lower().split()
    # function words of English prose are frequent (an independent sanity oracle)
    for w in ("the", "of", "and", "to", "is"):
        assert words.count(w) / len(words) > 0.005, w
    assert sum(c.isascii() for c in text) / len(text) > 0.98


def test_chinese_corpus_is_mostly_cjk_with_poems():
    docs = read_documents(demo_corpus_path("zh"))
    assert len(docs) > 300
    text = "".join("".join(d) for d in docs)
    cjk = sum("CJK UNIFIED IDEOGRAPH" in unicodedata.name(c, "") for c in text)
    assert cjk / len(text) > 0.6
    assert any(d[0].startswith("《") for d in docs[:50])  # classical poems come first


def test_read_documents_splits_on_blank_lines(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("a one.\nb two.\n\n\n c three. \n\nd\n", encoding="utf-8")
    assert read_documents(p) == [["a one.", "b two."], ["c three."], ["d"]]


def test_unknown_language_is_a_value_error():
    with pytest.raises(ValueError, match="'fr'"):
        demo_corpus_path("fr")


def test_paths_order():
    assert [p.name for p in demo_corpus_paths()] == ["demo_en.txt", "demo_zh.txt"]
