"""encode_file -> TokenShard: round trip against encode_batch on the same sentences (the
oracle), the documented binary layout (checked with struct/zlib, independently of the Rust
reader) and corruption errors."""

from __future__ import annotations

import os
import pickle
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from unimask.corpus import read_documents
from unimask.tokenizer import TokenShard, WordPieceTokenizer


@pytest.fixture(scope="module")
def tok(minilm_dir) -> WordPieceTokenizer:
    return WordPieceTokenizer.from_pretrained(minilm_dir)


def _check_round_trip(tok, corpus: Path, shard: TokenShard) -> None:
    docs = read_documents(corpus)
    assert len(shard) == len(docs)
    flat = [s for d in docs for s in d]
    b = tok.encode_batch(flat, add_special_tokens=False)
    assert shard.num_sentences == len(flat) and shard.num_tokens == len(b.ids_flat)
    assert np.array_equal(shard.tokens.astype(np.uint32), b.ids_flat)
    assert np.array_equal(shard.sentence_offsets.astype(np.int64), b.row_splits)
    k = 0
    for i, d in enumerate(docs):
        got = shard[i]
        assert len(got) == len(d)
        for s in got:
            assert np.array_equal(s, b[k].ids)
            k += 1


@pytest.mark.parametrize("batch_bytes", [1, 4096, 8 << 20])
def test_round_trip_bundled_corpus(tmp_path, tok, corpus_paths, batch_bytes):
    for p in corpus_paths:
        shard = tok.encode_file(p, tmp_path / p.stem, batch_bytes=batch_bytes)
        assert shard.path == tmp_path / f"{p.stem}.umshard"
        assert shard.tokens.dtype == np.dtype("<u2")  # 30522-entry vocabulary fits in uint16
        assert isinstance(shard.tokens, np.memmap)
        _check_round_trip(tok, p, shard)
        assert not list(tmp_path.glob("*.tmp"))


def test_messy_corpus_and_layout(tmp_path, tok):
    corpus = tmp_path / "messy.txt"
    corpus.write_text("\n\n  First doc, line one.\r\nline two\n \t \n\n\nSecond doc\x1c\n\x1c\n中文第三篇\n\n", encoding="utf-8")
    shard = tok.encode_file(corpus, tmp_path / "messy")
    _check_round_trip(tok, corpus, shard)
    raw = (tmp_path / "messy.umshard").read_bytes()
    magic, version, width, T, S, D, vocab, flags, crc = struct.unpack_from("<8sIIQQQIII", raw, 0)
    assert (magic, version, width, vocab, flags) == (b"UMSHARD\0", 1, 2, 30522, 0)
    assert (T, S, D) == (shard.num_tokens, shard.num_sentences, len(shard)) == (T, 4, 3)
    assert crc == zlib.crc32(raw[64:], zlib.crc32(raw[:48]))
    tok_len = -(-T * 2 // 8) * 8
    assert len(raw) == 64 + tok_len + 8 * (S + 1) + 8 * (D + 1)
    assert list(struct.unpack_from(f"<{D + 1}Q", raw, 64 + tok_len + 8 * (S + 1))) == [0, 2, 3, 4]


@pytest.mark.parametrize("batch_bytes", [1, 8 << 20])
def test_lines_end_at_cr_crlf_and_lf_as_read_documents_reads_them(tmp_path, tok, batch_bytes):
    # Old Mac (lone CR), Windows (CRLF) and Unix line ends mixed; U+0085 and U+2028 are line
    # breaks for str.splitlines but not for Python's file reading, so not here either.
    text = (
        "mac one\rmac two\r\rmac doc\r"
        "win one\r\nwin two\r\n\r\nwin doc\r\n"
        "unix one\nunix two\n\n \r \r\n\x1c\nlast\u0085line\u2028here\r\n\rend\rno newline at end"
    )
    corpus = tmp_path / "mixed.txt"
    corpus.write_bytes(text.encode("utf-8"))
    docs = read_documents(corpus)
    assert docs == [  # hand-checked
        ["mac one", "mac two"],
        ["mac doc", "win one", "win two"],
        ["win doc", "unix one", "unix two"],
        ["last\u0085line\u2028here"],
        ["end", "no newline at end"],
    ]
    shard = tok.encode_file(corpus, tmp_path / "mixed", batch_bytes=batch_bytes)
    _check_round_trip(tok, corpus, shard)
    assert [[tok.decode(s) for s in shard[i]] for i in range(len(shard))] == [
        [tok.decode(tok.encode(t, add_special_tokens=False).ids) for t in d] for d in docs
    ]


def test_crlf_split_across_the_read_buffer(tmp_path, tok):
    # The reader buffers 1 MiB: put a CRLF's "\r" as the buffer's last byte, and a lone "\r"
    # there in a second file; each must still end exactly one line.
    first = "x" * ((1 << 20) - 1)
    for name, text in (("crlf", first + "\r\nnext\n\nsecond doc\n"), ("cr", first + "\rnext\r\rsecond doc")):
        corpus = tmp_path / f"{name}.txt"
        corpus.write_bytes(text.encode("utf-8"))
        assert read_documents(corpus) == [[first, "next"], ["second doc"]]
        _check_round_trip(tok, corpus, tok.encode_file(corpus, tmp_path / name))


def test_invalid_utf8_line_number_counts_lone_cr(tmp_path, tok):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"one\rtwo\r\nthree \xff\n")
    with pytest.raises(ValueError, match="line 3 is not valid UTF-8"):
        tok.encode_file(bad, tmp_path / "bad")


def test_empty_corpus(tmp_path, tok):
    (tmp_path / "e.txt").write_text("\n \n", encoding="utf-8")
    shard = tok.encode_file(tmp_path / "e.txt", tmp_path / "e")
    assert len(shard) == 0 and shard.num_tokens == 0 and shard.tokens.shape == (0,)


def test_corruption_is_detected(tmp_path, tok, corpus_paths):
    shard = tok.encode_file(corpus_paths[0], tmp_path / "c")
    path = shard.path
    del shard
    raw = bytearray(path.read_bytes())
    raw[100] ^= 0x40
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="checksum mismatch"):
        TokenShard(path)
    TokenShard(path, verify=False)  # sizes still consistent: opening without the CRC works
    path.write_bytes(bytes(raw[:-5]))
    with pytest.raises(ValueError, match="truncated"):
        TokenShard(path, verify=False)
    path.write_bytes(b"NOTSHARD" + bytes(raw[8:]))
    with pytest.raises(ValueError, match="bad magic"):
        TokenShard(path)


def test_encode_file_errors(tmp_path, tok):
    with pytest.raises(OSError, match="missing.txt"):
        tok.encode_file(tmp_path / "missing.txt", tmp_path / "x")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine line\nbad \xff\xfe line\n")
    with pytest.raises(ValueError, match="line 2 is not valid UTF-8"):
        tok.encode_file(bad, tmp_path / "bad")
    with pytest.raises(ValueError, match="batch_bytes"):
        tok.encode_file(bad, tmp_path / "bad", batch_bytes=0)
    same = tmp_path / "same.umshard"
    same.write_text("a corpus whose name looks like a shard\n", encoding="utf-8")
    with pytest.raises(ValueError, match="overwrite its own input"):
        tok.encode_file(same, tmp_path / "same")
    assert same.read_text(encoding="utf-8").startswith("a corpus")


def test_shard_pickles_and_indexes(tmp_path, tok, corpus_paths):
    shard = tok.encode_file(corpus_paths[1], tmp_path / "zh")
    s2 = pickle.loads(pickle.dumps(shard))
    assert len(s2) == len(shard) and np.array_equal(s2[-1][0], shard[len(shard) - 1][0])
    with pytest.raises(IndexError):
        shard[len(shard)]
    with pytest.raises(IndexError):
        shard.sentence(shard.num_sentences)


def _raw_shard(path: Path, token_bytes: int, n_tokens: int, n_sent: int, n_docs: int, payload: bytes = b"") -> Path:
    """A shard file laid out as docs/tokenizer.md documents, with a valid CRC-32 (so only the
    sizes can reject it)."""
    h = b"UMSHARD\0" + struct.pack("<IIQQQII", 1, token_bytes, n_tokens, n_sent, n_docs, 10, 0)
    crc = zlib.crc32(payload, zlib.crc32(h))
    path.write_bytes(h + struct.pack("<I", crc) + bytes(12) + payload)
    return path


@pytest.mark.parametrize(
    "token_bytes, n_tokens, n_sent, n_docs, payload",
    [
        # 2 * (2**63 - 36) + 64 + 64 + 8 wraps to 64, the file length: once a Rust panic.
        (2, 2**63 - 36, 7, 0, b""),
        # 4 * 2**62 wraps to 0 and the offsets agree: once accepted with verify=True, then numpy
        # failed with "array is too big" and no file name.
        (4, 2**62, 1, 1, struct.pack("<4Q", 0, 2**62, 0, 1)),
        (2, 0, 2**64 - 1, 0, struct.pack("<2Q", 0, 0)),
        (2, 0, 2**61 - 1, 0, struct.pack("<Q", 0)),
        (2, 0, 0, 2**64 - 1, struct.pack("<2Q", 0, 0)),
        (4, 2**64 - 1, 0, 0, struct.pack("<2Q", 0, 0)),
        # No overflow, but sizes far beyond the 96 bytes there are.
        (2, 2**40, 0, 0, struct.pack("<2Q", 0, 0)),
    ],
)
@pytest.mark.parametrize("verify", [True, False])
def test_header_sizes_beyond_the_file_are_corruption(tmp_path, token_bytes, n_tokens, n_sent, n_docs, payload, verify):
    path = _raw_shard(tmp_path / "bad.umshard", token_bytes, n_tokens, n_sent, n_docs, payload)
    with pytest.raises(ValueError, match="truncated or corrupted shard") as e:
        TokenShard(path, verify=verify)
    assert str(path) in str(e.value)


def test_header_sizes_of_a_small_valid_shard(tmp_path):
    # Hand-laid 3 tokens (6 bytes, padded to 8), 1 sentence, 1 document: 64 + 8 + 16 + 16 bytes.
    payload = struct.pack("<3H", 5, 6, 7) + bytes(2) + struct.pack("<4Q", 0, 3, 0, 1)
    shard = TokenShard(_raw_shard(tmp_path / "ok.umshard", 2, 3, 1, 1, payload))
    assert shard.header["tokens_len"] == 8 and shard.path.stat().st_size == 104
    assert [s.tolist() for s in shard[0]] == [[5, 6, 7]]


def _offsets_shard(path: Path, sentences: list[int], documents: list[int]) -> Path:
    """3 tokens [5, 6, 7], 2 sentences, 1 document, a valid CRC: only the offsets can be wrong."""
    payload = struct.pack("<3H", 5, 6, 7) + bytes(2) + struct.pack("<3Q", *sentences) + struct.pack("<2Q", *documents)
    return _raw_shard(path, 2, 3, 2, 1, payload)


@pytest.mark.parametrize(
    "sentences, documents, message",
    [
        # Read with numpy slicing, which clamps: sentence 1 came back as [7] instead of an error.
        ([0, 2, 9], [0, 2], "sentence offset 2 is 9, past the 3 tokens of the header"),
        ([0, 2**63, 3], [0, 2], f"sentence offset 1 is {2**63}, past the 3 tokens of the header"),
        # Came back as [5, 6, 7] and an empty sentence.
        ([0, 3, 1], [0, 2], "sentence offset 2 is 1, less than offset 1 (3)"),
        ([1, 2, 3], [0, 2], "sentence offset 0 is 1, not 0"),
        # Silently dropped the last token.
        ([0, 1, 2], [0, 2], "the last sentence offset (2) is 2, not the 3 tokens of the header"),
        # Was an IndexError "sentence 2 out of range" from shard[0].
        ([0, 1, 3], [0, 5], "document offset 1 is 5, past the 2 sentences of the header"),
        ([0, 1, 3], [0, 1], "the last document offset (1) is 1, not the 2 sentences of the header"),
    ],
)
@pytest.mark.parametrize("verify", [True, False])
def test_bad_offsets_are_a_value_error_naming_them(tmp_path, sentences, documents, message, verify):
    path = _offsets_shard(tmp_path / "bad.umshard", sentences, documents)
    with pytest.raises(ValueError) as e:
        TokenShard(path, verify=verify)
    assert str(e.value) == f"{path}: corrupted shard: {message}"


@pytest.mark.parametrize("verify", [True, False])
def test_consistent_offsets_open_without_verify(tmp_path, verify):
    shard = TokenShard(_offsets_shard(tmp_path / "ok.umshard", [0, 1, 3], [0, 2]), verify=verify)
    assert [s.tolist() for s in shard[0]] == [[5], [6, 7]]
    s2 = pickle.loads(pickle.dumps(shard))  # the copy reopens with verify=False
    assert [s.tolist() for s in s2[0]] == [[5], [6, 7]]


def test_non_regular_paths_are_rejected_naming_the_path(tmp_path, tok):
    with pytest.raises(OSError, match=re.escape(f"cannot open shard {tmp_path}: it is a directory")):
        TokenShard(tmp_path)
    with pytest.raises(OSError, match=re.escape(f"cannot open corpus {tmp_path}: it is a directory")):
        tok.encode_file(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out.umshard").exists()
    if Path("/dev/null").exists():  # mapping a device was "No such device (os error 19)"
        with pytest.raises(OSError, match="cannot open shard /dev/null: it is not a regular file"):
            TokenShard("/dev/null")
    if Path("/proc/self/status").is_file():  # a regular file that cannot be memory-mapped
        with pytest.raises(OSError, match="cannot map shard /proc/self/status"):
            TokenShard("/proc/self/status")


def test_an_output_path_that_is_not_a_regular_file_is_refused_and_kept(tmp_path, tok):
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world\n", encoding="utf-8")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\n")
    out = tmp_path / "out"
    (out / "d.umshard").mkdir(parents=True)
    (out / "d.umshard" / "keep.txt").write_text("mine", encoding="utf-8")
    cases = [("d", "a directory")]  # was an OSError "Is a directory" after encoding the corpus
    nonregular = "not a regular file (a device, named pipe or socket)"
    if hasattr(os, "mkfifo"):
        os.mkfifo(out / "f.umshard")  # was silently replaced by the shard
        cases.append(("f", nonregular))
    if Path("/dev/null").exists():
        (out / "n.umshard").symlink_to("/dev/null")  # the link was silently replaced
        cases.append(("n", nonregular))
    before = {p.name: os.lstat(p) for p in out.iterdir()}
    for name, kind in cases:
        path = out / f"{name}.umshard"
        for source in (corpus, bad):  # refused before the corpus is read: not its UTF-8 error
            with pytest.raises(ValueError) as e:
                tok.encode_file(source, out / name)
            assert str(e.value) == f"cannot write shard {path}: it is {kind}"
    after = {p.name: os.lstat(p) for p in out.iterdir()}
    assert {k: (v.st_mode, v.st_ino) for k, v in after.items()} == {k: (v.st_mode, v.st_ino) for k, v in before.items()}
    assert (out / "d.umshard" / "keep.txt").read_text(encoding="utf-8") == "mine"
    if "n.umshard" in after:
        assert os.readlink(out / "n.umshard") == "/dev/null"
    # A regular file there is an old shard: replaced, as documented.
    (out / "r.umshard").write_text("old", encoding="utf-8")
    shard = tok.encode_file(corpus, out / "r")
    assert [s.tolist() for s in shard[0]] == [tok.encode("hello world", add_special_tokens=False).ids.tolist()]


_FIFO_SCRIPT = """
import sys
from unimask import _native
from unimask.tokenizer import ChineseSegmenter, TokenShard, WordPieceTokenizer
fifo, vocab = sys.argv[1], sys.argv[2]
tok = WordPieceTokenizer.from_vocab(vocab)
for name, call in [
    ("shard", lambda: TokenShard(fifo)),
    ("corpus", lambda: tok.encode_file(fifo, fifo + ".out")),
    ("corpus", lambda: WordPieceTokenizer.train([fifo], vocab_size=100)),
    ("vocabulary", lambda: WordPieceTokenizer.from_vocab(fifo)),
    ("dictionary", lambda: ChineseSegmenter(fifo)),
]:
    try:
        call()
    except OSError as e:
        assert str(e) == f"cannot open {name} {fifo}: it is not a regular file (a device, named pipe or socket)", e
    else:
        raise AssertionError(name)
print("ok")
"""


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_named_pipes_are_rejected_instead_of_blocking(tmp_path, minilm_dir):
    # Opening a FIFO for reading blocks until a writer comes: without the check these calls
    # never return, so they run in a subprocess with a timeout.
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    r = subprocess.run(
        [sys.executable, "-c", _FIFO_SCRIPT, str(fifo), str(minilm_dir / "vocab.txt")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_bytes_path_opens_the_shard(tmp_path, tok, corpus_paths):
    shard = tok.encode_file(corpus_paths[0], tmp_path / "b")
    again = TokenShard(os.fsencode(shard.path))
    assert again.path == shard.path and np.array_equal(again.tokens, shard.tokens)
    with pytest.raises(TypeError, match="int"):
        TokenShard(3)  # type: ignore[arg-type]


_READ_OLD_AFTER_REENCODE = r"""
import json, sys
from unimask.datasets import ShardSamples
from unimask.tokenizer import TokenShard, WordPieceTokenizer
tok_dir, big, small, prefix = sys.argv[1:]
tok = WordPieceTokenizer.from_pretrained(tok_dir)
shard = tok.encode_file(big, prefix)
samples = ShardSamples(prefix + ".umshard", unit="pair")
new = tok.encode_file(small, prefix)  # the same prefix, a much smaller corpus
old = [[s.tolist() for s in shard[i]] for i in range(len(shard))]
pairs = [[x.tolist() for x in samples[i]] for i in (0, len(samples) - 1)]
print(json.dumps({"old": old, "pairs": pairs, "new": [[s.tolist() for s in new[i]] for i in range(len(new))]}))
"""


def test_reencoding_to_the_same_prefix_keeps_open_readers_valid(tmp_path, tok, minilm_dir):
    import json

    # Written in place, the file shrank under the old mapping: reading it was a SIGBUS (the
    # process killed), hence the subprocess.
    big, small = tmp_path / "big.txt", tmp_path / "small.txt"
    lines = [f"sentence number {i} of the big corpus" for i in range(6000)]
    big.write_text("\n".join(lines[:3000]) + "\n\n" + "\n".join(lines[3000:]) + "\n", encoding="utf-8")
    small.write_text("hello world\n", encoding="utf-8")
    r = subprocess.run([sys.executable, "-c", _READ_OLD_AFTER_REENCODE, str(minilm_dir), str(big), str(small), str(tmp_path / "s")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    got = json.loads(r.stdout)
    docs = read_documents(big)
    b = tok.encode_batch([s for d in docs for s in d], add_special_tokens=False)
    flat = [b[k].ids.tolist() for k in range(len(b))]
    assert got["old"] == [flat[:3000], flat[3000:]]
    assert got["pairs"] == [[flat[0], flat[1]], [flat[-2], flat[-1]]]
    assert got["new"] == [[tok.encode("hello world", add_special_tokens=False).ids.tolist()]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.txt", "s.umshard", "small.txt"]


def test_a_failed_encode_keeps_the_previous_shard(tmp_path, tok, corpus_paths):
    shard = tok.encode_file(corpus_paths[0], tmp_path / "keep")
    before = shard.path.read_bytes()
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine line\n" * 1000 + b"caf\xe9\n")
    with pytest.raises(ValueError, match="line 1001 is not valid UTF-8"):
        tok.encode_file(bad, tmp_path / "keep", batch_bytes=64)
    assert shard.path.read_bytes() == before
    _check_round_trip(tok, corpus_paths[0], TokenShard(shard.path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt", "keep.umshard"]
