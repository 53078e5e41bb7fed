"""from_pretrained / save_pretrained beyond the default BERT files: special token names from
``tokenizer_config.json`` (also next to ``tokenizer.json``), the ``decoder`` of
``tokenizer.json``; oracles: HF ``tokenizers`` (decode) and transformers (loading our files)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

tokenizers = pytest.importorskip("tokenizers")

from unimask.tokenizer import WordPieceTokenizer  # noqa: E402

# pad id 3, mask id 4: names a loader cannot guess.
CUSTOM = ["[UNK]", "[CLS]", "[SEP]", "<pad>x", "<mask>x", "hello", "world", "##s", ",", "."]
IDS = ("unk_id", "cls_id", "sep_id", "pad_id", "mask_id")


def _custom() -> WordPieceTokenizer:
    return WordPieceTokenizer(CUSTOM, pad_token="<pad>x", mask_token="<mask>x", num_threads=1)


def _ids(t) -> tuple:
    return tuple(getattr(t, k) for k in IDS)


# ------------------------------------------------------------------------------- special tokens


def test_custom_special_tokens_survive_save_pretrained(tmp_path):
    tok = _custom()
    assert _ids(tok) == (0, 1, 2, 3, 4)
    tok.save_pretrained(tmp_path)
    back = WordPieceTokenizer.from_pretrained(tmp_path)
    assert _ids(back) == (0, 1, 2, 3, 4)
    # Padding uses the pad token (id 3), as the original does; not id 0 ([UNK]).
    padded = back.encode_batch(["hello world", "hello"]).to_padded()["input_ids"].tolist()
    assert padded == [[1, 5, 6, 2], [1, 5, 2, 3]]
    assert padded == tok.encode_batch(["hello world", "hello"]).to_padded()["input_ids"].tolist()
    # vocab.txt + tokenizer_config.json alone give the same ids.
    (tmp_path / "tokenizer.json").unlink()
    assert _ids(WordPieceTokenizer.from_pretrained(tmp_path)) == (0, 1, 2, 3, 4)


def _transformers(monkeypatch):
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    return transformers


def test_transformers_loads_our_saved_directory_with_the_same_ids(tmp_path, monkeypatch):
    transformers = _transformers(monkeypatch)
    tok = _custom()
    tok.save_pretrained(tmp_path)
    texts = ["hello world", "hellos, world.", "hello"]
    for cls in (transformers.AutoTokenizer, transformers.BertTokenizerFast):
        t = cls.from_pretrained(str(tmp_path))
        got = (t.unk_token_id, t.cls_token_id, t.sep_token_id, t.pad_token_id, t.mask_token_id)
        assert got == _ids(tok) == (0, 1, 2, 3, 4), cls
        want = tok.encode_batch(texts).to_padded()["input_ids"].tolist()
        assert t(texts, padding=True)["input_ids"] == want, cls


@pytest.mark.parametrize(
    "cfg",
    [
        {},
        {"clean_text": False},
        {"max_input_chars_per_word": 5},
        {"decoder": {"type": "WordPiece", "prefix": "##", "cleanup": False}},
        {"lowercase": False, "handle_chinese_chars": False},
    ],
    ids=str,
)
def test_transformers_autotokenizer_reproduces_what_we_save(tmp_path, monkeypatch, minilm_dir, corpus_paths, cfg):
    # transformers' BertTokenizer rebuilds the pipeline from vocab.txt: settings it cannot
    # express must make save_pretrained point AutoTokenizer at tokenizer.json instead.
    transformers = _transformers(monkeypatch)
    tok = WordPieceTokenizer.from_vocab(minilm_dir / "vocab.txt", num_threads=1, **cfg)
    tok.save_pretrained(tmp_path)
    at = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    lines = [ln for ln in corpus_paths[0].read_text(encoding="utf-8").splitlines() if ln.strip()][:100]
    texts = lines + ["ctrl\x01char\x7f here", "a averyveryverylongword b", "Hello , world . I do n't know !", "中文 Mixed"]
    got = at(texts)["input_ids"]
    b = tok.encode_batch(texts)
    for i, t in enumerate(texts):
        ids = b[i].ids.tolist()
        assert got[i] == ids, t
        assert at.decode(ids, skip_special_tokens=True) == tok.decode(ids), t
    assert (at.pad_token_id, at.mask_token_id, at.cls_token_id) == (tok.pad_id, tok.mask_id, tok.cls_id)


def _write(d: Path, tj: dict | None = None, cfg: dict | None = None) -> Path:
    d.mkdir()
    if tj is not None:
        (d / "tokenizer.json").write_text(json.dumps(tj), encoding="utf-8")
    if cfg is not None:
        (d / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    return d


def test_tokenizer_config_names_are_read_next_to_tokenizer_json(tmp_path):
    tj = _custom().to_tokenizer_json()
    # transformers writes tokens as str or as AddedToken dicts.
    cfg = {"pad_token": {"content": "<pad>x", "lstrip": False}, "mask_token": "<mask>x", "unk_token": "[UNK]"}
    assert (_ids(WordPieceTokenizer.from_pretrained(_write(tmp_path / "a", tj, cfg)))) == (0, 1, 2, 3, 4)
    # Without tokenizer_config.json: nothing names <pad>x / <mask>x.
    assert _ids(WordPieceTokenizer.from_pretrained(_write(tmp_path / "b", tj))) == (0, 1, 2, None, None)
    # tokenizer.json's padding names its pad token.
    tj_pad = dict(tj, padding={"strategy": "BatchLongest", "direction": "Right", "pad_to_multiple_of": None,
                               "pad_id": 3, "pad_type_id": 0, "pad_token": "<pad>x"})
    assert _ids(WordPieceTokenizer.from_pretrained(_write(tmp_path / "c", tj_pad))) == (0, 1, 2, 3, None)
    # Keyword arguments still win.
    t = WordPieceTokenizer.from_pretrained(tmp_path / "a", pad_token="hello")
    assert t.pad_id == 5


@pytest.mark.parametrize(
    "cfg, msg",
    [
        ({"unk_token": "hello"}, r"unk_token='hello' but tokenizer.json uses '\[UNK\]'"),
        ({"cls_token": "<pad>x"}, r"cls_token='<pad>x' but tokenizer.json uses '\[CLS\]'"),
        ({"sep_token": {"content": "world"}}, r"sep_token='world'"),
        ({"pad_token": {"no": "content"}}, "pad_token"),
    ],
)
def test_tokenizer_config_contradicting_tokenizer_json_is_refused(tmp_path, cfg, msg):
    d = _write(tmp_path / "d", _custom().to_tokenizer_json(), cfg)
    with pytest.raises(ValueError, match=msg):
        WordPieceTokenizer.from_pretrained(d)


# ------------------------------------------------------------------------------------- decoder


DECODERS = [
    {"type": "WordPiece", "prefix": "##", "cleanup": True},
    {"type": "WordPiece", "prefix": "##", "cleanup": False},
    {"type": "WordPiece", "prefix": "@@", "cleanup": True},
    {"type": "WordPiece", "prefix": "", "cleanup": False},
    None,
    "missing",
]


@pytest.mark.parametrize("decoder", DECODERS, ids=str)
def test_decode_follows_the_decoder_of_tokenizer_json(tmp_path, minilm_dir, corpus_paths, decoder):
    tj = json.loads((minilm_dir / "tokenizer.json").read_text(encoding="utf-8"))
    if decoder == "missing":
        del tj["decoder"]
    else:
        tj["decoder"] = decoder
    d = _write(tmp_path / "t", tj)
    hf = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))
    ut = WordPieceTokenizer.from_pretrained(d, num_threads=1)
    lines = [ln for ln in corpus_paths[0].read_text(encoding="utf-8").splitlines() if ln.strip()][:150]
    lines += ["Hello , world . I do n't know ! It 's what we 've got ' s", "unaffable [MASK] x"]
    rng = np.random.default_rng(0)
    seqs = [hf.encode(t).ids for t in lines] + [rng.integers(0, 30522, 8).tolist() for _ in range(200)]
    for ids in seqs:
        for skip in (True, False):
            assert ut.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip), (ids, skip)
    # Kept by save_pretrained (HF reads the same decoder back) and by pickle.
    ut.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "tokenizer.json").read_text(encoding="utf-8"))["decoder"]
    assert saved == (None if decoder == "missing" else decoder)
    again = WordPieceTokenizer.from_pretrained(tmp_path / "saved")
    copy = pickle.loads(pickle.dumps(ut))
    for ids in seqs[:50]:
        assert again.decode(ids) == copy.decode(ids) == hf.decode(ids)


@pytest.mark.parametrize(
    "decoder, msg",
    [
        ({"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}, "ByteLevel"),
        ({"type": "Sequence", "decoders": [{"type": "WordPiece", "prefix": "##", "cleanup": True}]}, "Sequence"),
        ({"type": "WordPiece", "prefix": "##"}, "cleanup"),  # HF refuses it too
    ],
)
def test_decoders_not_reproduced_are_refused_at_load(tmp_path, minilm_dir, decoder, msg):
    tj = json.loads((minilm_dir / "tokenizer.json").read_text(encoding="utf-8"))
    tj["decoder"] = decoder
    d = _write(tmp_path / "t", tj)
    with pytest.raises(ValueError, match=msg):
        WordPieceTokenizer.from_pretrained(d)


def test_decoder_argument(minilm_dir):
    hf = tokenizers.Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    hf.decoder = tokenizers.decoders.WordPiece(prefix="##", cleanup=False)
    ut = WordPieceTokenizer.from_vocab(minilm_dir / "vocab.txt", decoder={"type": "WordPiece", "prefix": "##", "cleanup": False})
    ids = hf.encode("Hello, world. I don't know!").ids
    assert ut.decode(ids) == hf.decode(ids) == "hello , world . i don ' t know !"
    with pytest.raises(ValueError, match="decoder"):
        WordPieceTokenizer(CUSTOM, decoder="bpe")
    with pytest.raises(TypeError, match="decoder"):
        WordPieceTokenizer(CUSTOM, decoder=["WordPiece"])


# ------------------------------------------------------------------------------- post-processor


@pytest.mark.parametrize("post", ["null", "missing"])
def test_no_post_processor_adds_no_special_tokens_as_hf(tmp_path, minilm_dir, corpus_paths, post):
    """A tokenizer.json without a post-processor: HF adds no [CLS]/[SEP] even when asked (a
    pair is A B, type ids 0 / 1); so do we, through save_pretrained and pickle too."""
    tj = json.loads((minilm_dir / "tokenizer.json").read_text(encoding="utf-8"))
    if post == "missing":
        del tj["post_processor"]
    else:
        tj["post_processor"] = None
    tj["padding"] = tj["truncation"] = None
    d = _write(tmp_path / "t", tj)
    hf = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))
    ut = WordPieceTokenizer.from_pretrained(d, num_threads=1)
    lines = [ln for ln in corpus_paths[0].read_text(encoding="utf-8").splitlines() if ln.strip()][:60]
    pairs = list(zip(lines[::2], lines[1::2]))
    for a, b in pairs:
        for args in ((a,), (a, b)):
            e, f = hf.encode(*args), ut.encode(*args)
            assert list(f.ids) == e.ids and list(f.type_ids) == e.type_ids, args
    batch = ut.encode_batch([a for a, _ in pairs], [b for _, b in pairs])
    want = hf.encode_batch(pairs)
    assert [batch.ids_flat[x:y].tolist() for x, y in zip(batch.row_splits[:-1], batch.row_splits[1:])] == [e.ids for e in want]
    ut.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "tokenizer.json").read_text(encoding="utf-8"))["post_processor"] is None
    for t in (WordPieceTokenizer.from_pretrained(tmp_path / "saved"), pickle.loads(pickle.dumps(ut))):
        assert list(t.encode(lines[0], lines[1]).ids) == hf.encode(lines[0], lines[1]).ids
    # the template is still there by default: the MiniLM file as shipped adds [CLS]/[SEP]
    assert list(WordPieceTokenizer.from_pretrained(minilm_dir).encode("hi").ids) == [101, 7632, 102]
