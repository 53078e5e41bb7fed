"""WordPieceTokenizer vs HF `tokenizers` 0.23.3 (the oracle): ids, type ids, offsets, word ids.

Every parity test encodes the same text with both libraries and compares everything; any
difference is a bug. Texts: the bundled demo corpus (English + Chinese), Debian `fortunes` /
`fortunes-zh` and `python3-doc` when installed (bundled excerpts in tests/fixtures/tokenizer
otherwise run always), and adversarial Unicode.
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
from pathlib import Path

import numpy as np
import pytest

tokenizers = pytest.importorskip("tokenizers")

from unimask.tokenizer import Encoding, RaggedBatch, WordPieceTokenizer  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "tokenizer"
FORTUNES = Path("/usr/share/games/fortunes")
PYDOC = Path("/usr/share/doc/python3.11-doc/html/_sources")

ADVERSARIAL = [
    "",
    " ",
    "\t\n\r ",
    "Hello, World!",
    "naïve café CAFÉ résumé Ångström Øresund",
    "e\u0301te\u0301 a\u0300\u0316\u0301 o\u0308\u0304",  # combining marks, reordered by NFD
    "İstanbul ΣΊΣΥΦΟΣ ǅemal ß ﬁne ﬀ",  # multi-char lowercase, title case, ligatures
    "👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🇫🇷 ❤️ 🥰",  # emoji, modifiers, ZWJ sequences, flags, VS16
    "zero\u200bwidth\u200c\u200d\ufeff joiner\u2060x soft\u00adhyphen",
    "ctrl\x00nul\x01\x02\x1b[31mred\x1b[0m\x7f\x85\x0b\x0c end",
    "\ufffd replacement \ufffd\ufffd",
    "a" * 100,
    "a" * 101,
    "b" * 300 + " tail",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "日本語のテキストと한국어 텍스트 and English mixed 中文句子。",
    "\u4e00\u9fff\u3400\u4dbf\uf900\ufaff\U00020000\U0002a6df\U0002a700\U0002b73f\U0002b740\U0002b81f",
    "google-only \U0002b820\U0002b8ff\U0002b91f hf-range \U0002b920\U0002ceaf \U0002f800\U0002fa1f",
    "compat \uf900\uf901\ufa0e\U0002f800 ideographs",
    "ภาษาไทย العربية עברית हिन्दी देवनागरी ᬅᬓ᭄ᬱ",
    "\u1b44\u1b44 \ua953\u0301 \U0001d165\U0001d16d\U0001d165",  # spacing marks with ccc != 0
    "[CLS] [SEP] [MASK] [PAD] [UNK] x[MASK]y [[SEP]] [SEP [mask] [MASK][MASK]",
    # ASCII past the first 64-byte block: a special token, a bracket alone, a dropped char
    "a plain sentence of ascii words that runs past sixty four bytes [MASK] then more words",
    "another plain sentence of ascii words running past sixty-four bytes: see [1] and [2], ok",
    "a long ascii sentence with a control character past the first sixty-four bytes \x01 here",
    "it's don't I'm we've they're 3.14 1,000,000 $5 #hash @at ~tilde `tick` ^caret",
    "“Quotes” ‘single’ «guillemets» — dash – en … ellipsis · middot ¿¡",
    "\u3000ideographic\u3000space\u2028line\u2029para\u00a0nbsp\u2003em",
    "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３ ｶﾀｶﾅ",
    "\U000e0001\U000e0041 tags \ue000 pua \uf8ff \U000f0000",
    "x\u0345y \u0344 \u1e9b\u0323",
]


def _norm_words(words) -> list[int]:
    return [-1 if w is None else w for w in words]


def assert_same(h, u: Encoding, text: object = None) -> None:
    """One HF Encoding vs one unimask Encoding: every column identical."""
    assert u.ids.tolist() == h.ids, f"ids differ for {text!r}"
    assert u.type_ids.tolist() == h.type_ids, f"type ids differ for {text!r}"
    assert [tuple(o) for o in u.offsets.tolist()] == h.offsets, f"offsets differ for {text!r}"
    assert u.word_ids.tolist() == _norm_words(h.word_ids), f"word ids differ for {text!r}"


def assert_batch_same(hf, ut: WordPieceTokenizer, texts, pairs=None, **kw) -> None:
    h = hf.encode_batch(texts if pairs is None else list(zip(texts, pairs)), add_special_tokens=kw.get("add_special_tokens", True))
    b = ut.encode_batch(texts, pairs, **kw)
    assert len(b) == len(texts) and b.row_splits[0] == 0
    assert b.ids_flat.dtype == np.uint32 and b.row_splits.dtype == np.int64
    for i, he in enumerate(h):
        assert_same(he, b[i], texts[i] if pairs is None else (texts[i], pairs[i]))


@pytest.fixture(scope="module")
def hf(minilm_dir):
    t = tokenizers.Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    t.no_padding()
    t.no_truncation()
    return t


@pytest.fixture(scope="module")
def ut(minilm_dir) -> WordPieceTokenizer:
    return WordPieceTokenizer.from_pretrained(minilm_dir)


def _lines(path: Path, limit: int | None = None) -> list[str]:
    text = path.read_bytes().decode("utf-8", errors="replace")
    if limit:
        text = text[:limit]
    return [ln for ln in text.split("\n") if ln.strip()]


# ------------------------------------------------------------------------------------ parity


def test_parity_demo_corpus_lines(hf, ut, corpus_paths):
    for p in corpus_paths:
        assert_batch_same(hf, ut, _lines(p))


def test_parity_demo_corpus_whole_documents(hf, ut, corpus_paths):
    for p in corpus_paths:
        docs = p.read_text(encoding="utf-8").split("\n\n")[:400]
        assert_batch_same(hf, ut, docs)


def test_parity_bundled_fixtures(hf, ut):
    for name in ("fortunes_excerpt.txt", "python_docs_excerpt.txt"):
        text = (FIXTURES / name).read_text(encoding="utf-8")
        assert_batch_same(hf, ut, _lines(FIXTURES / name) + text.split("\n%\n") + [text])


@pytest.mark.skipif(not FORTUNES.is_dir(), reason="Debian fortunes/fortunes-zh not installed (bundled excerpt still tested)")
def test_parity_debian_fortunes(hf, ut):
    files = sorted(p for p in FORTUNES.iterdir() if p.is_file() and p.suffix not in (".dat", ".u8"))
    assert files
    for p in files:
        raw = p.read_bytes().decode("utf-8", errors="replace")[:60_000]
        assert_batch_same(hf, ut, raw.split("\n%\n"))


@pytest.mark.skipif(not PYDOC.is_dir(), reason="Debian python3.11-doc not installed (bundled excerpt still tested)")
def test_parity_python_docs(hf, ut):
    files = sorted(PYDOC.glob("*/*.rst.txt"))[:60]
    assert files
    texts = [p.read_text(encoding="utf-8") for p in files]
    assert_batch_same(hf, ut, [t for t in texts])
    assert_batch_same(hf, ut, [ln for t in texts for ln in t.splitlines() if ln.strip()][:20_000])


def test_parity_adversarial_unicode(hf, ut):
    for t in ADVERSARIAL:
        assert_same(hf.encode(t), ut.encode(t), t)
    assert_batch_same(hf, ut, ADVERSARIAL)
    assert_batch_same(hf, ut, [" ".join(ADVERSARIAL)])


def test_long_words_become_unknown_exactly_past_100_chars(hf, ut):
    for n in (99, 100, 101, 102):
        e = ut.encode("a" * n, add_special_tokens=False)
        assert_same(hf.encode("a" * n, add_special_tokens=False), e)
        assert (e.ids.tolist() == [ut.unk_id]) == (n > 100)


def test_parity_pairs(hf, ut, corpus_paths):
    en, zh = (_lines(p)[:1500] for p in corpus_paths)
    assert_batch_same(hf, ut, en, zh)
    assert_batch_same(hf, ut, ADVERSARIAL, ADVERSARIAL[::-1])
    for a, b in zip(ADVERSARIAL, ADVERSARIAL[3:]):
        assert_same(hf.encode(a, b), ut.encode(a, b), (a, b))


@pytest.mark.parametrize("add", [True, False])
def test_parity_without_or_with_special_tokens(hf, ut, corpus_paths, add):
    lines = _lines(corpus_paths[0])[:500]
    h = hf.encode_batch(lines, add_special_tokens=add)
    b = ut.encode_batch(lines, add_special_tokens=add)
    for i, he in enumerate(h):
        assert_same(he, b[i], lines[i])
    h = hf.encode_batch(list(zip(lines, lines[::-1])), add_special_tokens=add)
    b = ut.encode_batch(lines, lines[::-1], add_special_tokens=add)
    for i, he in enumerate(h):
        assert_same(he, b[i], lines[i])


@pytest.mark.parametrize("strategy", ["longest_first", "only_first", "only_second"])
@pytest.mark.parametrize("max_length", [3, 4, 5, 8, 16, 33, 128])
def test_parity_truncation(minilm_dir, ut, corpus_paths, strategy, max_length):
    hf = tokenizers.Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    hf.no_padding()
    hf.enable_truncation(max_length=max_length, strategy=strategy)
    lines = _lines(corpus_paths[0])[:200] + _lines(corpus_paths[1])[:100] + ADVERSARIAL
    pairs = lines[7:] + lines[:7]
    # single sequences (only_second without a pair is an error in both)
    for t in lines[:60]:
        try:
            h = hf.encode(t)
        except Exception:
            with pytest.raises(ValueError):
                ut.encode(t, max_length=max_length, truncation=strategy)
            continue
        assert_same(h, ut.encode(t, max_length=max_length, truncation=strategy), t)
    for a, b in zip(lines, pairs):
        try:
            h = hf.encode(a, b)
        except Exception:
            with pytest.raises(ValueError, match="Truncation error"):
                ut.encode(a, b, max_length=max_length, truncation=strategy)
            continue
        assert_same(h, ut.encode(a, b, max_length=max_length, truncation=strategy), (a, b))
    if strategy == "longest_first":
        h = hf.encode_batch(list(zip(lines, pairs)))
        b = ut.encode_batch(lines, pairs, max_length=max_length, truncation=strategy)
        for i, he in enumerate(h):
            assert_same(he, b[i])
            assert len(b[i]) <= max_length


@pytest.mark.parametrize("max_length", [0, 1, 5, 17])
def test_parity_truncation_without_special_tokens(minilm_dir, ut, corpus_paths, max_length):
    hf = tokenizers.Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    hf.no_padding()
    hf.enable_truncation(max_length=max_length)
    lines = _lines(corpus_paths[0])[:100] + _lines(corpus_paths[1])[:50]
    pairs = lines[::-1]
    h = hf.encode_batch(list(zip(lines, pairs)), add_special_tokens=False)
    b = ut.encode_batch(lines, pairs, add_special_tokens=False, max_length=max_length)
    for i, he in enumerate(h):
        assert_same(he, b[i], (lines[i], pairs[i]))
    h = hf.encode_batch(lines, add_special_tokens=False)
    b = ut.encode_batch(lines, add_special_tokens=False, max_length=max_length)
    for i, he in enumerate(h):
        assert_same(he, b[i], lines[i])


def _hf_bert(vocab_path: Path, max_input_chars_per_word: int = 100, **norm):
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    t = Tokenizer(
        WordPiece.from_file(str(vocab_path), unk_token="[UNK]", max_input_chars_per_word=max_input_chars_per_word)
    )
    t.normalizer = normalizers.BertNormalizer(**norm)
    t.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    t.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 101), ("[SEP]", 102)]
    )
    t.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    return t


@pytest.mark.parametrize(
    "norm",
    [
        dict(lowercase=False),
        dict(lowercase=False, strip_accents=True),
        dict(lowercase=True, strip_accents=False),
        dict(lowercase=True, handle_chinese_chars=False),
        dict(lowercase=True, clean_text=False),
        dict(lowercase=False, strip_accents=False, clean_text=False, handle_chinese_chars=False),
    ],
    ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()),
)
def test_parity_normalizer_settings(minilm_dir, corpus_paths, norm):
    hf = _hf_bert(minilm_dir / "vocab.txt", **norm)
    ut = WordPieceTokenizer.from_vocab(minilm_dir / "vocab.txt", **norm)
    texts = ADVERSARIAL + _lines(corpus_paths[0])[:300] + _lines(corpus_paths[1])[:300] + _lines(FIXTURES / "fortunes_excerpt.txt")
    assert_batch_same(hf, ut, texts)


_MIXED_PIECES = [
    "the", "quick", "Brown", "fox", "café", "naïve", "Ångström", "ÉCOLE", "straße", "İstanbul",
    "“", "”", "‘", "’", "—", "–", "…", "«", "»", "¿", "·", "中", "文字", "한국", "ΣΊΣΥΦΟΣ",
    "\u00a0", "\u2003", "\u200b", "\u00ad", "e\u0301", "ﬁ", "Ｆｕｌｌ", "[MASK]", "[", "don't",
    "3.14", "co-op", "\t", "😀", "a" * 20, "b" * 120, "Ⅻ", "ǅ", "\x01", "\x7f",
    # combining marks at separators, dropped characters inside accented words, expansions
    "\u0301", "\u0323\u0301", "!\u0301", " \u0301x", "ca\x01fé", "é\x01", "İi", "ẞ", "ı", "ﬃ",
    "\ufeff", "\u2028", "\u3000", "x\u200dy", "\U0001D400", "\ufffd", "\x00",
]


@pytest.mark.parametrize(
    "norm", [dict(lowercase=True), dict(lowercase=False), dict(lowercase=True, strip_accents=False)],
    ids=["uncased", "cased", "uncased-keep-accents"],
)
def test_parity_mostly_ascii_text_with_unicode(minilm_dir, corpus_paths, norm):
    """English with typographic quotes and dashes, accented words, CJK and Unicode spaces
    mixed into ASCII (the path that encodes ASCII stretches between them, and the stretches
    around other characters through the simple or general path) equals HF."""
    import random

    rng = random.Random(7)
    texts = []
    for _ in range(1500):
        k = rng.randint(1, 10)
        seps = [" ", "", " ", "\u00a0", "’", "—"]
        texts.append("".join(rng.choice(_MIXED_PIECES) + rng.choice(seps) for _ in range(k)))
    texts += [
        ln.replace("'", "’").replace(' "', " “").replace('"', "”").replace(" - ", " — ").replace("e ", "é ")
        for ln in _lines(corpus_paths[0])[:400]
    ]
    hf = _hf_bert(minilm_dir / "vocab.txt", **norm)
    ut = WordPieceTokenizer.from_vocab(minilm_dir / "vocab.txt", **norm)
    assert_batch_same(hf, ut, texts)


_LETTER_BLOCKS = [
    (0xC0, 0x24F), (0x370, 0x3FF), (0x400, 0x52F), (0x1E00, 0x1EFF), (0x1F00, 0x1FFF), (0xFF00, 0xFFEF),
    (0x2100, 0x218F), (0x24B6, 0x24E9), (0x13A0, 0x13F5), (0x1C90, 0x1CBF), (0x2C00, 0x2C7F), (0x531, 0x587),
    (0x300, 0x36F), (0x1DC0, 0x1DFF),
]


@pytest.mark.parametrize(
    "norm",
    [dict(lowercase=True), dict(lowercase=True, strip_accents=False), dict(lowercase=False, strip_accents=True)],
    ids=["uncased", "lowercase-only", "strip-only"],
)
def test_parity_letters_that_normalization_folds(minilm_dir, norm):
    """Accented and capital letters of many scripts (folded to one letter on the simple path:
    É -> e, Ж -> ж; those that expand, such as İ, and combining marks take the general path)
    mixed with ASCII equal HF."""
    import random

    rng = random.Random(11)

    def letters():
        lo, hi = rng.choice(_LETTER_BLOCKS)
        return "".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 4)))

    texts = []
    for _ in range(1500):
        parts = [
            rng.choice([letters, lambda: rng.choice(["the", "Word", "x", "É", "İ", "ẞ", "\u0301", ", ", "’"])])()
            + rng.choice([" ", "", " "])
            for _ in range(rng.randint(1, 8))
        ]
        texts.append("".join(parts))
    hf = _hf_bert(minilm_dir / "vocab.txt", **norm)
    ut = WordPieceTokenizer.from_vocab(minilm_dir / "vocab.txt", **norm)
    assert_batch_same(hf, ut, texts)


@pytest.mark.parametrize("max_chars", [1, 5, 9, 16, 17])
def test_parity_short_max_input_chars_per_word(minilm_dir, corpus_paths, max_chars):
    """Words longer than ``max_input_chars_per_word`` become one [UNK], also those the
    whole-word table of the ASCII path would find (limits below and around its 16 bytes)."""
    hf = _hf_bert(minilm_dir / "vocab.txt", max_input_chars_per_word=max_chars)
    ut = WordPieceTokenizer.from_vocab(minilm_dir / "vocab.txt", max_input_chars_per_word=max_chars)
    texts = ADVERSARIAL + _lines(corpus_paths[0])[:200] + _lines(corpus_paths[1])[:50]
    assert_batch_same(hf, ut, texts)


def test_from_vocab_matches_bert_wordpiece_tokenizer(minilm_dir, corpus_paths):
    from tokenizers import BertWordPieceTokenizer

    hf = BertWordPieceTokenizer(str(minilm_dir / "vocab.txt"), lowercase=True)
    ut = WordPieceTokenizer.from_vocab(minilm_dir / "vocab.txt", lowercase=True)
    texts = ADVERSARIAL + _lines(corpus_paths[0])[:500] + _lines(corpus_paths[1])[:300]
    assert_batch_same(hf, ut, texts)
    assert ut.vocab_size == hf.get_vocab_size() == 30522
    assert (ut.cls_id, ut.sep_id, ut.pad_id, ut.mask_id, ut.unk_id) == (101, 102, 0, 103, 100)


def test_vocab_accessors(ut, hf):
    for tok in ("hello", "##ing", "[MASK]", "中", "not-a-token"):
        assert ut.token_to_id(tok) == hf.token_to_id(tok)
    for i in (0, 100, 101, 1000, 30521):
        assert ut.id_to_token(i) == hf.id_to_token(i)
    assert ut.id_to_token(30522) is None and ut.id_to_token(-1) is None


# ------------------------------------------------------------------------------------ save/load


def test_save_pretrained_round_trips_and_hf_loads_it(tmp_path, hf, ut, corpus_paths):
    files = ut.save_pretrained(tmp_path / "tok")
    assert {p.name for p in files} == {"vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
    texts = ADVERSARIAL + _lines(corpus_paths[0])[:200] + _lines(corpus_paths[1])[:200]
    hf2 = tokenizers.Tokenizer.from_file(str(tmp_path / "tok" / "tokenizer.json"))
    assert_batch_same(hf2, ut, texts)
    assert_batch_same(hf, WordPieceTokenizer.from_pretrained(tmp_path / "tok"), texts)
    (tmp_path / "tok" / "tokenizer.json").unlink()  # vocab.txt + tokenizer_config.json path
    assert_batch_same(hf, WordPieceTokenizer.from_pretrained(tmp_path / "tok"), texts)


def test_from_pretrained_rejects_what_it_cannot_reproduce(tmp_path, minilm_dir):
    import json

    base = json.loads((minilm_dir / "tokenizer.json").read_text(encoding="utf-8"))
    cases = [
        (lambda tj: tj["added_tokens"][4].update(lstrip=True), "lstrip=true"),
        (lambda tj: tj["added_tokens"][4].update(special=False), "not special"),
        (lambda tj: tj.update(normalizer={"type": "Lowercase"}), "BertNormalizer"),
        (lambda tj: tj.update(pre_tokenizer={"type": "Whitespace"}), "BertPreTokenizer"),
        (lambda tj: tj["model"].update(type="BPE"), "WordPiece"),
        (lambda tj: tj["model"]["vocab"].update({"extra": 99999}), "without gaps"),
        (lambda tj: tj["post_processor"]["single"].pop(), "not \\[CLS\\] \\$A \\[SEP\\]"),
    ]
    for k, (edit, msg) in enumerate(cases):
        tj = json.loads(json.dumps(base))
        edit(tj)
        d = tmp_path / str(k)
        d.mkdir()
        (d / "tokenizer.json").write_text(json.dumps(tj), encoding="utf-8")
        with pytest.raises(ValueError, match=msg):
            WordPieceTokenizer.from_pretrained(d)


def test_saved_vocab_is_identical(tmp_path, ut, minilm_dir):
    ut.save_pretrained(tmp_path)
    assert (tmp_path / "vocab.txt").read_bytes() == (minilm_dir / "vocab.txt").read_bytes()


def test_cased_tokenizer_json_round_trip(tmp_path, minilm_dir, corpus_paths):
    ut = WordPieceTokenizer.from_vocab(minilm_dir / "vocab.txt", lowercase=False)
    ut.save(tmp_path / "tokenizer.json")
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert_batch_same(hf, ut, ADVERSARIAL + _lines(corpus_paths[0])[:100])


def test_cased_vocab_txt_and_tokenizer_config_round_trip(tmp_path, minilm_dir, corpus_paths):
    ut = WordPieceTokenizer.from_vocab(minilm_dir / "vocab.txt", lowercase=False, handle_chinese_chars=False)
    ut.save_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    back = WordPieceTokenizer.from_pretrained(tmp_path)
    assert back._config["lowercase"] is False and back._config["handle_chinese_chars"] is False
    hf = _hf_bert(minilm_dir / "vocab.txt", lowercase=False, handle_chinese_chars=False)
    assert_batch_same(hf, back, ADVERSARIAL + _lines(corpus_paths[1])[:100])


def test_pickle_round_trip(ut, corpus_paths):
    lines = _lines(corpus_paths[0])[:300]
    ut2 = pickle.loads(pickle.dumps(ut))
    a, b = ut.encode_batch(lines), ut2.encode_batch(lines)
    assert np.array_equal(a.ids_flat, b.ids_flat) and np.array_equal(a.offsets_flat, b.offsets_flat)


# ------------------------------------------------------------------------------------ batch API


def test_output_is_identical_for_any_thread_count(minilm_dir, corpus_paths):
    lines = _lines(corpus_paths[0])[:3000] + _lines(corpus_paths[1])[:2000]
    outs = []
    for n in (1, 2, 3):
        t = WordPieceTokenizer.from_pretrained(minilm_dir, num_threads=n)
        b = t.encode_batch(lines, lines[::-1], max_length=64)
        outs.append(b)
    for b in outs[1:]:
        for col in ("ids_flat", "type_ids_flat", "offsets_flat", "word_ids_flat", "row_splits"):
            assert np.array_equal(getattr(outs[0], col), getattr(b, col)), col


def test_to_padded_matches_hf_padding(minilm_dir, ut, corpus_paths):
    lines = _lines(corpus_paths[0])[:64] + [""]
    hf = tokenizers.Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    hf.no_truncation()
    for mult in (None, 8):
        hf.enable_padding(pad_id=0, pad_token="[PAD]", pad_to_multiple_of=mult)
        h = hf.encode_batch(lines)
        p = ut.encode_batch(lines).to_padded(pad_to_multiple_of=mult)
        assert p["input_ids"].tolist() == [e.ids for e in h]
        assert p["attention_mask"].tolist() == [e.attention_mask for e in h]
        assert p["token_type_ids"].tolist() == [e.type_ids for e in h]
        assert p["input_ids"].dtype == np.int64


def _naive_padded(ids, types, splits, mult, pad):
    """Independent oracle: pad row by row with Python lists."""
    rows = [(list(ids[s:e]), list(types[s:e])) for s, e in zip(splits[:-1], splits[1:])]
    width = max((len(r) for r, _ in rows), default=0)
    if mult:
        width = -(-width // mult) * mult
    return {
        "input_ids": [[int(x) for x in r] + [pad] * (width - len(r)) for r, _ in rows],
        "attention_mask": [[1] * len(r) + [0] * (width - len(r)) for r, _ in rows],
        "token_type_ids": [[int(x) for x in t] + [0] * (width - len(t)) for _, t in rows],
    }, width


@pytest.mark.parametrize("seed", range(6))
def test_to_padded_matches_a_naive_oracle(seed):
    """Native padding (uint32/uint8 columns) and the numpy path (other dtypes) both equal a
    row-by-row Python padding, for random ragged batches: empty rows, rows that do not start at
    0 or end at the last token, pad_to_multiple_of, a custom pad id."""
    rng = np.random.default_rng(seed)
    n_tok = int(rng.integers(0, 300))
    ids = rng.integers(0, 30522, n_tok).astype(np.uint32)
    types = rng.integers(0, 2, n_tok).astype(np.uint8)
    cuts = np.sort(rng.integers(0, n_tok + 1, int(rng.integers(1, 20))))
    splits = cuts.astype(np.int64)
    mult = [None, 1, 8, 64][seed % 4]
    pad = [0, 7, -1][seed % 3]
    want, width = _naive_padded(ids, types, splits, mult, pad)
    for cols in [(ids, types), (ids.astype(np.int64), types.astype(np.int32))]:
        b = RaggedBatch(cols[0], cols[1], np.zeros((n_tok, 2), np.uint32), np.zeros(n_tok, np.int32), splits)
        got = b.to_padded(pad_to_multiple_of=mult, pad_id=pad)
        for k, v in want.items():
            assert got[k].dtype == np.int64 and got[k].shape == (len(splits) - 1, width), k
            assert got[k].tolist() == v, (k, cols[0].dtype)
    # Non-contiguous columns (a strided view) take the same path after a copy.
    wide = np.repeat(ids, 2)[::2]
    b = RaggedBatch(wide, types, np.zeros((n_tok, 2), np.uint32), np.zeros(n_tok, np.int32), splits)
    assert b.to_padded(pad_to_multiple_of=mult, pad_id=pad)["input_ids"].tolist() == want["input_ids"]


@pytest.mark.parametrize("seed", range(4))
def test_pad_column_matches_a_naive_oracle(seed):
    """Any per-token column (2-D offsets, word ids) padded row by row in Python, for random
    ragged batches whose rows need not start at 0 or end at the last token."""
    rng = np.random.default_rng(seed)
    n_tok = int(rng.integers(1, 200))
    splits = np.sort(rng.integers(0, n_tok + 1, int(rng.integers(1, 12)))).astype(np.int64)
    offsets = rng.integers(0, 1000, (n_tok, 2)).astype(np.uint32)
    words = rng.integers(-1, 50, n_tok).astype(np.int32)
    b = RaggedBatch(np.zeros(n_tok, np.uint32), np.zeros(n_tok, np.uint8), offsets, words, splits)
    rows = [(int(s), int(e)) for s, e in zip(splits[:-1], splits[1:])]
    width = max([e - s for s, e in rows] + [0]) + seed  # seed > 0: an explicit wider width
    got = b.pad_column(words, -7, width=width if seed else None)
    assert got.tolist() == [words[s:e].tolist() + [-7] * (width - (e - s)) for s, e in rows]
    got = b.pad_column(offsets, 0, width=width if seed else None)
    assert got.dtype == np.uint32
    assert got.tolist() == [offsets[s:e].tolist() + [[0, 0]] * (width - (e - s)) for s, e in rows]
    with pytest.raises(ValueError, match="one entry per token"):
        b.pad_column(words[:-1])
    with pytest.raises(ValueError, match="width must be"):
        b.pad_column(words, width=width - seed - 1) if width - seed > 0 else b.pad_column(words, width=-1)


@pytest.mark.parametrize("native", [True, False])
def test_to_padded_rejects_inconsistent_row_splits(native):
    ids = np.arange(5, dtype=np.uint32 if native else np.int64)
    types = np.zeros(5, dtype=np.uint8 if native else np.int64)
    for splits in ([0, 3, 2], [0, 6], [-1, 2], []):
        b = RaggedBatch(ids, types, np.zeros((5, 2), np.uint32), np.zeros(5, np.int32), np.array(splits, np.int64))
        with pytest.raises(ValueError, match="row_splits"):
            b.to_padded()


def test_ragged_batch_indexing_and_empty_batch(ut):
    b = ut.encode_batch(["a b", "c"])
    assert isinstance(b, RaggedBatch) and len(b) == 2 and b.lengths.tolist() == [4, 3]
    assert b[-1].ids.tolist() == b[1].ids.tolist()
    with pytest.raises(IndexError):
        b[2]
    e = ut.encode_batch([])
    assert len(e) == 0 and e.row_splits.tolist() == [0]
    assert e.to_padded()["input_ids"].shape == (0, 0)


def test_word_starts_for_whole_word_masking(ut, hf):
    e = ut.encode("unaffable tokenization, yes")
    h = hf.encode("unaffable tokenization, yes")
    want = [w is not None and (i == 0 or h.word_ids[i - 1] != w) for i, w in enumerate(h.word_ids)]
    assert e.word_starts.tolist() == want


# ------------------------------------------------------------------------------------ decode


def test_decode_matches_hf(hf, ut, corpus_paths):
    lines = _lines(corpus_paths[0])[:400] + _lines(corpus_paths[1])[:200] + ADVERSARIAL
    for t in lines:
        ids = hf.encode(t).ids
        assert ut.decode(ids) == hf.decode(ids), t
        assert ut.decode(np.asarray(ids, dtype=np.uint32), skip_special_tokens=False) == hf.decode(ids, skip_special_tokens=False)


def test_decode_round_trips(ut, corpus_paths):
    """Decoding then re-encoding gives the same ids (decode loses only case/accents/spacing,
    which the normalizer removes anyway)."""
    for t in _lines(corpus_paths[0])[:400] + _lines(corpus_paths[1])[:200]:
        ids = ut.encode(t).ids
        if ut.unk_id in ids:
            continue
        assert ut.encode(ut.decode(ids)).ids.tolist() == ids.tolist(), t


# ------------------------------------------------------------------------------------ errors


def test_vocab_errors(tmp_path, minilm_dir):
    with pytest.raises(OSError, match="nope.txt"):
        WordPieceTokenizer.from_vocab(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty"):
        WordPieceTokenizer.from_vocab(tmp_path / "empty.txt")
    (tmp_path / "dup.txt").write_text("[UNK]\nhello\nworld\nhello\n")
    with pytest.raises(ValueError, match=r"duplicate entry \"hello\": lines 2 and 4"):
        WordPieceTokenizer.from_vocab(tmp_path / "dup.txt")
    (tmp_path / "nounk.txt").write_text("hello\nworld\n")
    with pytest.raises(ValueError, match=r"\[UNK\]"):
        WordPieceTokenizer.from_vocab(tmp_path / "nounk.txt")
    (tmp_path / "bad.txt").write_bytes(b"[UNK]\n\xff\xfe\n")
    with pytest.raises(ValueError, match="UTF-8"):
        WordPieceTokenizer.from_vocab(tmp_path / "bad.txt")
    with pytest.raises(FileNotFoundError):
        WordPieceTokenizer.from_pretrained(tmp_path / "missing_dir")


def test_input_errors(ut):
    with pytest.raises(TypeError, match="text must be str, got bytes"):
        ut.encode(b"hello")
    with pytest.raises(TypeError, match="got int"):
        ut.encode(123)
    with pytest.raises(TypeError, match="pair must be str"):
        ut.encode("a", pair=5)
    with pytest.raises(TypeError, match="single str"):
        ut.encode_batch("hello")
    with pytest.raises(TypeError, match=r"texts\[1\] must be str, got NoneType"):
        ut.encode_batch(["ok", None])
    with pytest.raises(ValueError, match="surrogate"):
        ut.encode("bad \ud800 text")
    with pytest.raises(ValueError, match="surrogate"):
        ut.encode_batch(["fine", "\udfff"])
    with pytest.raises(ValueError, match="pairs has 1 entries but texts has 2"):
        ut.encode_batch(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="truncation must be one of"):
        ut.encode("a", truncation="bogus")


@pytest.mark.parametrize("bad", [-1, 0, 1, 2**40])
def test_absurd_max_length(ut, bad):
    with pytest.raises(ValueError, match="max_length"):
        ut.encode_batch(["hello world"], max_length=bad)


def test_other_argument_errors(ut):
    with pytest.raises(TypeError, match="max_length"):
        ut.encode("a", max_length="10")
    with pytest.raises(ValueError, match="stride"):
        ut.encode("a", max_length=10, stride=8)
    with pytest.raises(ValueError, match="out of range"):
        ut.decode([10**9])
    with pytest.raises(ValueError, match="out of range"):
        ut.decode([-5])
    with pytest.raises(ValueError, match="num_threads"):
        WordPieceTokenizer(["[UNK]"], num_threads=0)
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        ut.encode_batch(["a"]).to_padded(pad_to_multiple_of=0)


# ------------------------------------------------------------------------------------ fork safety


def _child_encode(tok, lines, q):
    b = tok.encode_batch(lines)
    q.put(b.ids_flat.tolist())


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs the fork start method")
def test_pool_survives_fork(minilm_dir, corpus_paths):
    tok = WordPieceTokenizer.from_pretrained(minilm_dir, num_threads=2)
    lines = _lines(corpus_paths[0])[:2000]
    parent = tok.encode_batch(lines).ids_flat.tolist()  # the pool now exists in the parent
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_encode, args=(tok, lines, q))
    p.start()
    got = q.get(timeout=60)
    p.join(timeout=30)
    assert got == parent


# ------------------------------------------------------------------------------------ benchmark cases


def test_bench_cases_compare_the_same_work(tmp_path, corpus_paths):
    """Each `unimask bench` tokenizer case times unimask and its reference (HF, or unimask on
    one thread for the scaling cases) on identical input and output."""
    from unimask.bench_cases.tokenizer import cases

    small = []
    for p in corpus_paths:
        q = tmp_path / p.name
        q.write_text("\n".join(_lines(p)[:300]) + "\n", encoding="utf-8")
        small.append(q)
    for case in cases():
        ours, ref, work, unit, *also = case.setup(small)
        assert work > 0 and unit == "B"
        if also:  # tokens per call: the count both sides produce
            tokens = also[0]["tok"]
            b_tokens = ref()
            assert tokens == sum(len(e.ids) for e in b_tokens) > 0, case.name
        a, b = ours(), ref()
        if isinstance(a, RaggedBatch) and isinstance(b, RaggedBatch):  # threads vs one thread
            assert "scaling" in case.name
            np.testing.assert_array_equal(a.ids_flat, b.ids_flat)
            np.testing.assert_array_equal(a.row_splits, b.row_splits)
        elif isinstance(a, RaggedBatch):
            assert [a[i].ids.tolist() for i in range(len(a))] == [e.ids for e in b], case.name
        elif isinstance(a, list):  # padded batches vs transformers' padded batches
            assert len(a) == len(b) > 0, case.name
            for x, y in zip(a, b):
                for k in ("input_ids", "attention_mask", "token_type_ids"):
                    np.testing.assert_array_equal(x[k], y[k], err_msg=f"{case.name}: {k}")
        else:  # training: the same algorithm on the same files gives (nearly) the same vocabulary
            ours_v, ref_v = set(a.get_vocab()), set(b.get_vocab())
            assert len(ours_v & ref_v) / len(ref_v) > 0.95, case.name
