"""``FrozenFeatures``: the disk cache is keyed by the tokenizer too (its settings and
vocabulary), and one ``str`` is refused instead of being read as a list of characters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unimask.finetune import FrozenFeatures
from unimask.finetune.features import tokenizer_fingerprint
from unimask.models import EncoderConfig, TransformerEncoder
from unimask.tokenizer import WordPieceTokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _encoder(vocab_size: int) -> TransformerEncoder:
    torch.manual_seed(0)
    cfg = EncoderConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    return TransformerEncoder(cfg).eval()


def _by_hand(enc: TransformerEncoder, tok: WordPieceTokenizer, text: str) -> torch.Tensor:
    """The oracle: every layer's states of the encoder run on this tokenizer's encoding."""
    e = tok.encode(text, max_length=32)
    with torch.no_grad():
        out = enc(torch.from_numpy(e.ids.astype(np.int64))[None], output_hidden_states=True)
    return torch.stack(out.hidden_states)[:, 0]


def test_cache_key_includes_the_tokenizer(minilm_dir, tmp_path):
    lower = WordPieceTokenizer.from_vocab(minilm_dir / "vocab.txt", lowercase=True)
    cased = WordPieceTokenizer.from_vocab(minilm_dir / "vocab.txt", lowercase=False)
    text = "Paris Is Big"
    assert lower.encode(text).ids.tolist() != cased.encode(text).ids.tolist()  # the two really differ
    enc = _encoder(lower.vocab_size)
    first = FrozenFeatures(enc, lower, 32, tmp_path)
    [a] = first.hidden_states([text])
    assert first.computed == 1
    torch.testing.assert_close(a, _by_hand(enc, lower, text), atol=1e-5, rtol=1e-5)
    # another tokenizer on the same cache directory computes its own features (was: served the
    # lowercase tokenizer's cached tensor)
    second = FrozenFeatures(enc, cased, 32, tmp_path)
    [b] = second.hidden_states([text])
    assert second.computed == 1
    torch.testing.assert_close(b, _by_hand(enc, cased, text), atol=1e-5, rtol=1e-5)
    # a tokenizer with the same settings and vocabulary (another instance) shares the entries
    again = FrozenFeatures(enc, WordPieceTokenizer.from_vocab(minilm_dir / "vocab.txt", lowercase=True), 32, tmp_path)
    [c] = again.hidden_states([text])
    assert again.computed == 0 and torch.equal(c, a)
    assert len(list(tmp_path.glob("*.pt"))) == 2


def test_tokenizer_fingerprint_follows_settings_and_vocabulary(minilm_dir, tmp_path):
    base = WordPieceTokenizer.from_vocab(minilm_dir / "vocab.txt")
    assert tokenizer_fingerprint(base) == tokenizer_fingerprint(WordPieceTokenizer.from_vocab(minilm_dir / "vocab.txt"))
    assert tokenizer_fingerprint(base) != tokenizer_fingerprint(
        WordPieceTokenizer.from_vocab(minilm_dir / "vocab.txt", lowercase=False))
    vocab = (minilm_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    vocab[2000], vocab[2001] = vocab[2001], vocab[2000]  # same tokens, two ids swapped
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    assert tokenizer_fingerprint(base) != tokenizer_fingerprint(WordPieceTokenizer.from_vocab(tmp_path / "vocab.txt"))


class _Opaque:
    """A tokenizer with the encode_batch interface but no serialisable identity."""

    def __init__(self, tok: WordPieceTokenizer) -> None:
        self.tok = tok

    def encode_batch(self, *a, **k):
        return self.tok.encode_batch(*a, **k)


def test_cache_refuses_a_tokenizer_without_identity(minilm_dir, tmp_path):
    tok = WordPieceTokenizer.from_pretrained(minilm_dir)
    enc = _encoder(tok.vocab_size)
    with pytest.raises(TypeError, match="cannot fingerprint a _Opaque tokenizer"):
        FrozenFeatures(enc, _Opaque(tok), 32, tmp_path)
    # without a cache nothing needs the fingerprint
    [f] = FrozenFeatures(enc, _Opaque(tok), 32).hidden_states(["a text"])
    torch.testing.assert_close(f, _by_hand(enc, tok, "a text"), atol=1e-5, rtol=1e-5)


def test_one_str_is_a_type_error_not_characters(minilm_dir, tmp_path):
    tok = WordPieceTokenizer.from_pretrained(minilm_dir)
    enc = _encoder(tok.vocab_size)
    for cache in (None, tmp_path):
        ff = FrozenFeatures(enc, tok, 16, cache)
        with pytest.raises(TypeError, match="got one str"):
            ff.hidden_states("abc")
        assert ff.computed == 0
        assert len(ff.hidden_states(["abc"])) == 1
