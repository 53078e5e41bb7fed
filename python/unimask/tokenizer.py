"""BERT WordPiece tokenization in Rust, with numpy output.

:class:`WordPieceTokenizer` reproduces HF ``tokenizers`` 0.23.3 with a BERT ``tokenizer.json``
(``BertNormalizer`` + ``BertPreTokenizer`` + ``WordPiece`` + the ``[CLS] A [SEP] B [SEP]``
template) id for id, type id for type id and offset for offset; ``tests/test_tokenizer*.py``
check it against the reference on real English and Chinese text and adversarial Unicode.
Algorithm notes and the shard format are in ``docs/tokenizer.md``.

Sources: Devlin et al. 2019 (BERT) and google-research/bert ``tokenization.py`` for the
pipeline; HF ``tokenizers`` (``normalizers/bert.rs``, ``pre_tokenizers/bert.rs``,
``models/wordpiece``, ``utils/truncation.rs``, ``decoders/wordpiece.rs``) for the exact rules;
Song et al. 2021 (Fast WordPiece) for trie-based matching.

Differences from the reference, on purpose: ids outside the vocabulary raise in :meth:`decode`
(HF drops them), duplicate ``vocab.txt`` lines raise (HF keeps the last), ``max_length`` smaller
than the special tokens raises (HF silently skips truncation), and a ``stride`` that HF would
panic on raises ``ValueError`` (see :meth:`WordPieceTokenizer.encode_batch`).

Overflow: with ``max_length`` a truncated text's remaining tokens are not lost —
:meth:`WordPieceTokenizer.encode` returns them in ``Encoding.overflowing`` and
:meth:`WordPieceTokenizer.encode_batch` with ``return_overflowing=True`` as extra rows, with
``stride`` tokens of overlap, exactly as HF (``Encoding::truncate``, ``Encoding::merge_with``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from . import _native

__all__ = ["WordPieceTokenizer", "Encoding", "RaggedBatch", "ChineseSegmenter", "TokenShard"]

_TRUNCATIONS = ("longest_first", "only_first", "only_second")


@dataclass(frozen=True)
class Encoding:
    """One encoded text (or pair).

    ``ids`` (uint32), ``type_ids`` (uint8), ``offsets`` (uint32 ``[n, 2]``: character offsets
    ``[start, end)`` into the original text of the sequence the token came from; ``(0, 0)`` for
    template special tokens) and ``word_ids`` (int32: word index within its sequence, ``-1``
    where HF reports ``None``).

    ``overflowing``: the windows a truncation cut off (HF ``Encoding.overflowing``), each an
    :class:`Encoding` with the template applied, in HF's order; empty when nothing was cut.
    For pairs it is HF's combination list (see :meth:`WordPieceTokenizer.encode`), and like HF
    some of its entries carry nested ``overflowing`` lists of their own.
    """

    ids: np.ndarray
    type_ids: np.ndarray
    offsets: np.ndarray
    word_ids: np.ndarray
    overflowing: list["Encoding"] = field(default_factory=list, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def word_starts(self) -> np.ndarray:
        """Boolean mask: the token starts a word (for whole-word masking); False for specials."""
        w = self.word_ids
        prev = np.concatenate([[-2], w[:-1]]) if len(w) else w
        return (w >= 0) & (w != prev)


@dataclass(frozen=True)
class RaggedBatch:
    """A batch of encodings as flat columns plus ``row_splits`` (int64, length ``B + 1``).

    Row ``i`` is ``ids_flat[row_splits[i]:row_splits[i + 1]]`` (likewise for the other columns).
    ``overflow_to_sample`` (int64, one per row) is set by ``encode_batch(...,
    return_overflowing=True)``: the index of the input text each row came from (transformers'
    ``overflow_to_sample_mapping``); ``None`` otherwise (then row ``i`` is text ``i``).
    """

    ids_flat: np.ndarray
    type_ids_flat: np.ndarray
    offsets_flat: np.ndarray
    word_ids_flat: np.ndarray
    row_splits: np.ndarray
    pad_id: int = 0
    overflow_to_sample: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.row_splits.shape[0]) - 1

    @property
    def lengths(self) -> np.ndarray:
        """Number of tokens of each row (int64)."""
        return np.diff(self.row_splits)

    def __getitem__(self, i: int) -> Encoding:
        n = len(self)
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"batch index must be an int, got {type(i).__name__}")
        if not -n <= i < n:
            raise IndexError(f"batch index {i} out of range for a batch of {n}")
        i = int(i) % n
        s, e = int(self.row_splits[i]), int(self.row_splits[i + 1])
        return Encoding(self.ids_flat[s:e], self.type_ids_flat[s:e], self.offsets_flat[s:e], self.word_ids_flat[s:e])

    def pad_column(self, values: np.ndarray, fill: Any = 0, width: int | None = None) -> np.ndarray:
        """Any per-token column (``offsets_flat``, ``word_ids_flat``, labels of your own: one
        entry per token of the batch, in order) as a right-padded ``[B, L, ...]`` array filled
        with ``fill``; ``L`` is the longest row, or ``width`` when given (at least that)."""
        values = np.asarray(values)
        n = int(self.ids_flat.shape[0])
        if values.ndim == 0 or values.shape[0] != n:
            raise ValueError(f"a column needs one entry per token ({n}), got shape {values.shape}")
        splits = np.asarray(self.row_splits, dtype=np.int64)
        lengths = np.diff(splits)
        if splits.size == 0 or (lengths < 0).any() or splits[0] < 0 or splits[-1] > n:
            raise ValueError(f"row_splits must increase within [0, {n}], got {splits.tolist()[:20]}")
        longest = int(lengths.max()) if lengths.size else 0
        if width is not None:
            if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < longest:
                raise ValueError(f"width must be an int >= the longest row ({longest}), got {width!r}")
            longest = int(width)
        out = np.full((len(self), longest, *values.shape[1:]), fill, dtype=values.dtype)
        pos = np.arange(splits[0], splits[-1])
        rows = np.repeat(np.arange(len(self)), lengths)
        out[rows, pos - np.repeat(splits[:-1], lengths)] = values[pos]
        return out

    def to_padded(self, pad_to_multiple_of: int | None = None, pad_id: int | None = None) -> dict[str, np.ndarray]:
        """Right-padded ``[B, L]`` int64 arrays ``input_ids``, ``attention_mask``,
        ``token_type_ids`` (L = longest row, rounded up to ``pad_to_multiple_of``).

        One pass in Rust for the columns ``encode_batch`` returns (uint32 ids, uint8 type ids);
        columns of other integer dtypes (a batch built by hand) are padded with numpy."""
        pad_to_multiple_of = _check_int("pad_to_multiple_of", pad_to_multiple_of, 1, allow_none=True)
        pad = self.pad_id if pad_id is None else _check_int("pad_id", pad_id, -(2**63))
        ids, types, splits = self.ids_flat, self.type_ids_flat, self.row_splits
        if ids.dtype == np.uint32 and types.dtype == np.uint8 and splits.dtype == np.int64:
            input_ids, attention, token_types = _native.pad_encodings(
                np.ascontiguousarray(ids), np.ascontiguousarray(types), np.ascontiguousarray(splits),
                pad_to_multiple_of, pad,
            )
            return {"input_ids": input_ids, "attention_mask": attention, "token_type_ids": token_types}
        return _pad_with_numpy(ids, types, splits, pad_to_multiple_of, pad)


def _pad_with_numpy(
    ids: np.ndarray, types: np.ndarray, splits: np.ndarray, pad_to_multiple_of: int | None, pad: int
) -> dict[str, np.ndarray]:
    """:meth:`RaggedBatch.to_padded` for columns of other dtypes (same checks and result)."""
    splits = np.asarray(splits, dtype=np.int64)
    if splits.ndim != 1 or splits.shape[0] < 1:
        raise ValueError("row_splits must have at least one entry (batch size + 1)")
    lengths = np.diff(splits)
    if splits[0] < 0 or (lengths < 0).any() or splits[-1] > ids.shape[0] or ids.shape[0] != types.shape[0]:
        raise ValueError(
            f"row_splits {splits.tolist()[:8]}... do not describe rows of the {ids.shape[0]} ids / "
            f"{types.shape[0]} type ids"
        )
    b = splits.shape[0] - 1
    width = int(lengths.max()) if b else 0
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    rows = np.repeat(np.arange(b), lengths)
    cols = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    flat = np.repeat(splits[:-1], lengths) + cols  # index of each token in the columns
    input_ids = np.full((b, width), pad, dtype=np.int64)
    attention = np.zeros((b, width), dtype=np.int64)
    token_types = np.zeros((b, width), dtype=np.int64)
    input_ids[rows, cols] = ids[flat]
    attention[rows, cols] = 1
    token_types[rows, cols] = types[flat]
    return {"input_ids": input_ids, "attention_mask": attention, "token_type_ids": token_types}


_I64_MAX = 2**63 - 1


def _check_int(
    name: str, value: Any, lo: int | None = 0, hi: int | None = _I64_MAX, allow_none: bool = False
) -> int | None:
    """An int argument (Python or numpy integer, not bool) in ``[lo, hi]``, as a Python int.

    ``TypeError`` naming ``name`` for anything else, ``ValueError`` naming it for a value out of
    range (``hi`` defaults to what the Rust core takes: a 64-bit signed int; None: unbounded).
    """
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        what = "an int or None" if allow_none else "an int"
        raise TypeError(f"{name} must be {what}, got {type(value).__name__} {value!r}")
    value = int(value)
    if lo is not None and value < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value}")
    if hi is not None and value > hi:
        raise ValueError(f"{name} must be <= {hi}, got {value}")
    return value


def _check_normalizer_flags(lowercase: Any, strip_accents: Any, clean_text: Any, handle_chinese_chars: Any) -> None:
    """The ``BertNormalizer`` settings: bools (``strip_accents`` may be None)."""
    for name, flag in (("lowercase", lowercase), ("clean_text", clean_text), ("handle_chinese_chars", handle_chinese_chars)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {flag!r}")
    if strip_accents is not None and not isinstance(strip_accents, bool):
        raise TypeError(f"strip_accents must be a bool or None, got {strip_accents!r}")


def _check_num_threads(value: Any) -> int | None:
    """``num_threads``: None (all cores) or an int in [1, 1024]."""
    return _check_int("num_threads", value, 1, 1024, allow_none=True)


def _decoder_config(decoder: Any, prefix: str) -> dict | None:
    """The ``decoder`` argument as ``tokenizer.json`` writes it: a WordPiece decoder dict, or
    None (no decoder). ``ValueError`` for a decoder :meth:`WordPieceTokenizer.decode` does not
    reproduce."""
    if isinstance(decoder, str):
        if decoder != "wordpiece":
            raise ValueError(f'decoder must be "wordpiece", a WordPiece decoder dict or None, got {decoder!r}')
        return {"type": "WordPiece", "prefix": prefix, "cleanup": True}
    if decoder is None:
        return None
    if not isinstance(decoder, dict):
        raise TypeError(f'decoder must be "wordpiece", a dict or None, got {type(decoder).__name__}')
    if decoder.get("type") != "WordPiece":
        raise ValueError(f"decoder {decoder!r} is not supported: only WordPiece decoders (or none) are reproduced")
    dprefix, cleanup = decoder.get("prefix"), decoder.get("cleanup")
    if not isinstance(dprefix, str) or not isinstance(cleanup, bool):
        raise ValueError(f"a WordPiece decoder needs a str prefix and a bool cleanup, got {decoder!r}")
    return {"type": "WordPiece", "prefix": dprefix, "cleanup": cleanup}


def _config_token_names(cfg: dict, where: str) -> dict[str, str]:
    """The special token names a ``tokenizer_config.json`` gives (``unk_token``...
    ``mask_token``), as constructor keyword arguments."""
    names: dict[str, str] = {}
    for key in ("unk_token", "cls_token", "sep_token", "pad_token", "mask_token"):
        try:
            tok = _token_str(cfg.get(key))
        except ValueError as e:
            raise ValueError(f"{where}: {key}: {e}") from None
        if tok is not None:
            names[key] = tok
    return names


def _token_str(value: Any) -> str | None:
    """tokenizer_config.json stores tokens as str or as {"content": str, ...}."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise ValueError(f"cannot read a token from {value!r}")


class WordPieceTokenizer:
    """BERT WordPiece tokenizer (Rust core, numpy output, fork-safe thread pool).

    Build it with :meth:`from_vocab` (a ``vocab.txt``), :meth:`from_pretrained` (a BERT model
    directory) or :meth:`train`. ``chinese_dict`` (a jieba ``dict.txt``-format file) turns on
    Chinese word segmentation for ``word_ids``: the characters of one dictionary word then
    share a word id (whole-word masking, as in Chinese BERT-wwm); ids, type ids and offsets
    are unchanged. ``num_threads`` (None = all cores) sets the pool used by
    :meth:`encode_batch`; results never depend on it. Instances are picklable (DataLoader
    workers rebuild the Rust object from the vocabulary).

    ``decoder`` sets how :meth:`decode` joins tokens, as the ``decoder`` of an HF
    ``tokenizer.json``: ``"wordpiece"`` (default) is HF's ``decoders.WordPiece`` with
    ``continuing_subword_prefix`` and ``cleanup=True``; a dict ``{"type": "WordPiece",
    "prefix": str, "cleanup": bool}`` sets both; ``None`` is HF without a decoder (tokens
    joined with single spaces).

    ``template=False`` is an HF ``tokenizer.json`` without a post-processor: then
    ``add_special_tokens=True`` adds nothing (a pair is ``A B`` with type ids 0 / 1), as HF
    does; by default it adds BERT's ``[CLS] A [SEP] (B [SEP])``.
    """

    def __init__(
        self,
        vocab: Sequence[str],
        *,
        lowercase: bool = True,
        strip_accents: bool | None = None,
        clean_text: bool = True,
        handle_chinese_chars: bool = True,
        unk_token: str = "[UNK]",
        cls_token: str = "[CLS]",
        sep_token: str = "[SEP]",
        pad_token: str = "[PAD]",
        mask_token: str = "[MASK]",
        continuing_subword_prefix: str = "##",
        max_input_chars_per_word: int = 100,
        special_tokens: Sequence[str] | None = None,
        chinese_dict: str | os.PathLike | None = None,
        num_threads: int | None = None,
        decoder: str | dict | None = "wordpiece",
        template: bool = True,
    ) -> None:
        if isinstance(vocab, (str, bytes, os.PathLike)):
            raise TypeError("vocab must be a list of tokens; use WordPieceTokenizer.from_vocab(path) for a file")
        _check_normalizer_flags(lowercase, strip_accents, clean_text, handle_chinese_chars)
        max_input_chars_per_word = _check_int("max_input_chars_per_word", max_input_chars_per_word, 1)
        decoder = _decoder_config(decoder, continuing_subword_prefix)
        self.num_threads = num_threads
        self._config: dict[str, Any] = dict(
            lowercase=lowercase,
            strip_accents=strip_accents,
            clean_text=clean_text,
            handle_chinese_chars=handle_chinese_chars,
            unk_token=unk_token,
            cls_token=cls_token,
            sep_token=sep_token,
            pad_token=pad_token,
            mask_token=mask_token,
            continuing_subword_prefix=continuing_subword_prefix,
            max_input_chars_per_word=max_input_chars_per_word,
            special_tokens=None if special_tokens is None else list(special_tokens),
            chinese_dict=None if chinese_dict is None else os.fspath(chinese_dict),
            decoder=decoder,
            template=_check_flag("template", template),
        )
        tokens = list(vocab)
        for i, t in enumerate(tokens):
            if not isinstance(t, str):
                raise TypeError(f"vocab[{i}] must be str, got {type(t).__name__}")
        self._tokens = tokens
        specials = self._config["special_tokens"]
        if specials is None:
            specials = [pad_token, unk_token, cls_token, sep_token, mask_token]
        self._native = _native.Tokenizer(
            tokens,
            clean_text=clean_text,
            handle_chinese_chars=handle_chinese_chars,
            strip_accents=lowercase if strip_accents is None else strip_accents,
            lowercase=lowercase,
            unk_token=unk_token,
            continuing_subword_prefix=continuing_subword_prefix,
            max_input_chars_per_word=max_input_chars_per_word,
            cls_token=cls_token,
            sep_token=sep_token,
            pad_token=pad_token,
            mask_token=mask_token,
            special_tokens=specials,
            chinese_dict=self._config["chinese_dict"],
            decoder=None if decoder is None else (decoder["prefix"], decoder["cleanup"]),
        )

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_vocab(cls, path: str | os.PathLike, lowercase: bool = True, strip_accents: bool | None = None, **kwargs: Any) -> "WordPieceTokenizer":
        """Load a ``vocab.txt`` (one token per line; id = line number).

        ``strip_accents=None`` follows ``lowercase`` (HF's ``BertNormalizer`` default). Other
        keyword arguments are those of the constructor (special token names, ``num_threads``...).
        Raises ``OSError`` for a missing file and ``ValueError`` for an empty vocabulary,
        duplicate entries or a vocabulary without the unknown token.
        """
        tokens = _native.Tokenizer.read_vocab(os.fspath(path))
        return cls(tokens, lowercase=lowercase, strip_accents=strip_accents, **kwargs)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **kwargs: Any) -> "WordPieceTokenizer":
        """Load a BERT-family model directory: ``tokenizer.json`` if present (HF ``tokenizers``
        format), else ``vocab.txt`` with the settings of ``tokenizer_config.json``.

        The special token names (``unk_token``, ``cls_token``, ``sep_token``, ``pad_token``,
        ``mask_token``: strings or ``{"content": ...}`` dicts, as transformers writes them) are
        read from ``tokenizer_config.json`` whenever it exists, also next to ``tokenizer.json``;
        without it, ``tokenizer.json``'s padding token, then a ``[PAD]``/``<pad>`` and
        ``[MASK]``/``<mask>`` added token, are taken. A name that contradicts ``tokenizer.json``
        (another unknown token than the model's, another ``[CLS]``/``[SEP]`` than the
        template's) raises ``ValueError``. ``decode`` follows the ``decoder`` of
        ``tokenizer.json`` (WordPiece with its prefix and cleanup, or null).

        Raises ``ValueError`` when the tokenizer is not a BERT WordPiece pipeline this class
        reproduces exactly (another normalizer or decoder, added tokens with lstrip/rstrip, ...). The
        truncation/padding settings stored in ``tokenizer.json`` are not applied: pass
        ``max_length`` to the encode calls and pad with :meth:`RaggedBatch.to_padded`.
        Keyword arguments override the loaded settings (e.g. ``num_threads``, ``chinese_dict``).
        """
        d = Path(directory)
        if not d.is_dir():
            raise FileNotFoundError(f"not a directory: {d}")
        cfg: dict[str, Any] = {}
        tc = d / "tokenizer_config.json"
        if tc.is_file():
            cfg = json.loads(tc.read_text(encoding="utf-8"))
            if not isinstance(cfg, dict):
                raise ValueError(f"{tc}: expected a JSON object, got {type(cfg).__name__}")
        names = _config_token_names(cfg, str(tc))
        tj = d / "tokenizer.json"
        if tj.is_file():
            return cls._from_tokenizer_json(json.loads(tj.read_text(encoding="utf-8")), str(tj), names, **kwargs)
        vocab = d / "vocab.txt"
        if not vocab.is_file():
            raise FileNotFoundError(f"{d} has neither tokenizer.json nor vocab.txt")
        opts: dict[str, Any] = dict(names)
        if "do_lower_case" in cfg:
            opts["lowercase"] = bool(cfg["do_lower_case"])
        if cfg.get("strip_accents") is not None:
            opts["strip_accents"] = bool(cfg["strip_accents"])
        if "tokenize_chinese_chars" in cfg:
            opts["handle_chinese_chars"] = bool(cfg["tokenize_chinese_chars"])
        opts.update(kwargs)
        return cls.from_vocab(vocab, **opts)

    @classmethod
    def _from_tokenizer_json(
        cls, tj: dict, where: str, names: dict[str, str] | None = None, **kwargs: Any
    ) -> "WordPieceTokenizer":
        """Build from a parsed ``tokenizer.json``; ``names``: special token names read from
        ``tokenizer_config.json`` (see :meth:`from_pretrained`)."""
        names = names or {}
        model = tj.get("model") or {}
        if model.get("type") != "WordPiece":
            raise ValueError(f"{where}: model type must be WordPiece, got {model.get('type')!r}")
        vocab_map: dict[str, int] = model["vocab"]
        n = len(vocab_map)
        tokens: list[str | None] = [None] * n
        for tok, i in vocab_map.items():
            if not isinstance(i, int) or not 0 <= i < n or tokens[i] is not None:
                raise ValueError(f"{where}: vocabulary ids must be 0..{n - 1} without gaps, got {tok!r} -> {i!r}")
            tokens[i] = tok
        norm = tj.get("normalizer") or {}
        if norm.get("type") != "BertNormalizer":
            raise ValueError(f"{where}: normalizer must be BertNormalizer, got {norm.get('type')!r}")
        pre = tj.get("pre_tokenizer") or {}
        if pre.get("type") != "BertPreTokenizer":
            raise ValueError(f"{where}: pre_tokenizer must be BertPreTokenizer, got {pre.get('type')!r}")
        specials: list[str] = []
        for at in tj.get("added_tokens") or []:
            content = at["content"]
            if vocab_map.get(content) != at["id"]:
                raise ValueError(f"{where}: added token {content!r} (id {at['id']}) is not that entry of the vocabulary")
            for flag in ("single_word", "lstrip", "rstrip", "normalized"):
                if at.get(flag):
                    raise ValueError(f"{where}: added token {content!r} has {flag}=true, which is not supported")
            if not at.get("special", True):
                raise ValueError(f"{where}: added token {content!r} is not special, which is not supported")
            specials.append(content)
        post = tj.get("post_processor") or {}
        cls_token, sep_token = "[CLS]", "[SEP]"
        if post.get("type") == "BertProcessing":
            sep_token, cls_token = post["sep"][0], post["cls"][0]
        elif post.get("type") == "TemplateProcessing":
            single = [next(iter(p.items())) for p in post["single"]]
            pair = [next(iter(p.items())) for p in post["pair"]]
            shape = [(k, v["id"], v["type_id"]) for k, v in single]
            if len(shape) != 3 or shape[1] != ("Sequence", "A", 0) or shape[0][0] != "SpecialToken" or shape[2][0] != "SpecialToken":
                raise ValueError(f"{where}: post_processor template {post['single']} is not [CLS] $A [SEP]")
            cls_token, sep_token = shape[0][1], shape[2][1]
            want = [("SpecialToken", cls_token, 0), ("Sequence", "A", 0), ("SpecialToken", sep_token, 0), ("Sequence", "B", 1), ("SpecialToken", sep_token, 1)]
            if [(k, v["id"], v["type_id"]) for k, v in pair] != want:
                raise ValueError(f"{where}: post_processor pair template {post['pair']} is not [CLS] $A [SEP] $B:1 [SEP]:1")
        elif post:
            raise ValueError(f"{where}: unsupported post_processor {post.get('type')!r}")
        else:  # no post-processor: HF adds no special tokens; the names come from tokenizer_config.json, if any
            cls_token, sep_token = names.get("cls_token", cls_token), names.get("sep_token", sep_token)
        unk_token = model.get("unk_token", "[UNK]")
        for key, here in (("unk_token", unk_token), ("cls_token", cls_token), ("sep_token", sep_token)):
            if names.get(key, here) != here:
                raise ValueError(
                    f"{where}: tokenizer_config.json has {key}={names[key]!r} but tokenizer.json uses {here!r}"
                )
        try:
            decoder = _decoder_config(tj.get("decoder"), model.get("continuing_subword_prefix", "##"))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from None
        lowercase = bool(norm.get("lowercase", True))
        opts: dict[str, Any] = dict(
            lowercase=lowercase,
            strip_accents=norm.get("strip_accents"),
            clean_text=bool(norm.get("clean_text", True)),
            handle_chinese_chars=bool(norm.get("handle_chinese_chars", True)),
            unk_token=unk_token,
            continuing_subword_prefix=model.get("continuing_subword_prefix", "##"),
            max_input_chars_per_word=int(model.get("max_input_chars_per_word", 100)),
            cls_token=cls_token,
            sep_token=sep_token,
            special_tokens=specials,
            decoder=decoder,
            template=bool(post),
        )
        for tok in specials:
            if tok in ("[PAD]", "<pad>"):
                opts["pad_token"] = tok
            if tok in ("[MASK]", "<mask>"):
                opts["mask_token"] = tok
        padding = tj.get("padding")
        if isinstance(padding, dict) and isinstance(padding.get("pad_token"), str):
            opts["pad_token"] = padding["pad_token"]
        opts.update({k: v for k, v in names.items() if k in ("pad_token", "mask_token")})
        opts.update(kwargs)
        return cls(tokens, **opts)  # type: ignore[arg-type]

    @classmethod
    def train(
        cls,
        files: str | os.PathLike | Sequence[str | os.PathLike],
        vocab_size: int = 30522,
        min_frequency: int = 2,
        special_tokens: Sequence[str] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
        lowercase: bool = True,
        strip_accents: bool | None = None,
        clean_text: bool = True,
        handle_chinese_chars: bool = True,
        num_threads: int | None = None,
        **kwargs: Any,
    ) -> "WordPieceTokenizer":
        """Train a WordPiece vocabulary on text files and return the tokenizer using it.

        Algorithm (that of HF ``tokenizers``' ``WordPieceTrainer``: BPE merges with a ``##``
        continuation prefix; details in ``docs/tokenizer.md``): words are counted after the
        same BERT normalization and pre-tokenization the tokenizer applies; the vocabulary
        starts with ``special_tokens`` (in order) and every character seen (``c`` at a word
        start, ``##c`` inside), then repeatedly adds the merge of the most frequent adjacent
        pair until ``vocab_size`` entries or no pair occurs ``min_frequency`` times.
        Deterministic for any ``num_threads``. Settings the resulting tokenizer would reject (an
        empty special token or ``continuing_subword_prefix``, ``max_input_chars_per_word < 1``)
        raise ``ValueError`` before training; a corpus path that is not a regular file is an
        ``OSError`` naming it.
        """
        if isinstance(files, (str, os.PathLike)):
            files = [files]
        paths = [os.fspath(f) for f in files]
        if not paths:
            raise ValueError("train needs at least one file")
        # Every setting is checked before the (long) training, not by the constructor after it.
        vocab_size = _check_int("vocab_size", vocab_size, 1)
        min_frequency = _check_int("min_frequency", min_frequency, 0)
        num_threads = _check_num_threads(num_threads)
        _check_normalizer_flags(lowercase, strip_accents, clean_text, handle_chinese_chars)
        max_chars = _check_int("max_input_chars_per_word", kwargs.get("max_input_chars_per_word", 100), 1)
        prefix = kwargs.get("continuing_subword_prefix", "##")
        if not isinstance(prefix, str):
            raise TypeError(f"continuing_subword_prefix must be a str, got {type(prefix).__name__}")
        if not prefix:
            raise ValueError("continuing_subword_prefix must not be empty (got '')")
        specials = list(special_tokens)
        for i, t in enumerate(specials):
            if not isinstance(t, str):
                raise TypeError(f"special_tokens[{i}] must be a str, got {type(t).__name__}")
            if not t:
                raise ValueError(f"special tokens must not be empty strings: special_tokens[{i}] is ''")
        unk = kwargs.get("unk_token", "[UNK]")
        if unk not in specials:
            raise ValueError(f"special_tokens must contain the unknown token {unk!r}, got {specials!r}")
        if len(set(specials)) != len(specials):
            raise ValueError(f"special_tokens has duplicates: {specials!r}")
        strip = lowercase if strip_accents is None else strip_accents
        tokens = _native.train_wordpiece(
            paths,
            vocab_size,
            min_frequency,
            specials,
            clean_text=clean_text,
            handle_chinese_chars=handle_chinese_chars,
            strip_accents=strip,
            lowercase=lowercase,
            continuing_subword_prefix=prefix,
            max_input_chars_per_word=max_chars,
            num_threads=num_threads,
        )
        return cls(
            tokens,
            lowercase=lowercase,
            strip_accents=strip_accents,
            clean_text=clean_text,
            handle_chinese_chars=handle_chinese_chars,
            special_tokens=specials,
            num_threads=num_threads,
            **kwargs,
        )

    # ------------------------------------------------------------------ saving

    def to_tokenizer_json(self) -> dict:
        """This tokenizer in HF ``tokenizers``' ``tokenizer.json`` format (loadable by
        ``tokenizers.Tokenizer.from_str``)."""
        c = self._config
        special_ids = self._native.special_ids()
        cls_t, sep_t = c["cls_token"], c["sep_token"]

        def spec(tok: str) -> dict:
            return {"id": tok, "ids": [self.token_to_id(tok)], "tokens": [tok]}

        post = None
        if c["template"] and self.cls_id is not None and self.sep_id is not None:
            post = {
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": cls_t, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": sep_t, "type_id": 0}}],
                "pair": [
                    {"SpecialToken": {"id": cls_t, "type_id": 0}},
                    {"Sequence": {"id": "A", "type_id": 0}},
                    {"SpecialToken": {"id": sep_t, "type_id": 0}},
                    {"Sequence": {"id": "B", "type_id": 1}},
                    {"SpecialToken": {"id": sep_t, "type_id": 1}},
                ],
                "special_tokens": {cls_t: spec(cls_t), sep_t: spec(sep_t)},
            }
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": [
                {"id": i, "content": self._tokens[i], "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
                for i in special_ids
            ],
            "normalizer": {
                "type": "BertNormalizer",
                "clean_text": c["clean_text"],
                "handle_chinese_chars": c["handle_chinese_chars"],
                "strip_accents": c["strip_accents"],
                "lowercase": c["lowercase"],
            },
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "post_processor": post,
            "decoder": None if c["decoder"] is None else dict(c["decoder"]),
            "model": {
                "type": "WordPiece",
                "unk_token": c["unk_token"],
                "continuing_subword_prefix": c["continuing_subword_prefix"],
                "max_input_chars_per_word": c["max_input_chars_per_word"],
                "vocab": {t: i for i, t in enumerate(self._tokens)},
            },
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``tokenizer.json`` (HF format) to ``path``; returns the path."""
        p = Path(path)
        p.write_text(json.dumps(self.to_tokenizer_json(), ensure_ascii=False, indent=1), encoding="utf-8")
        return p

    def save_pretrained(self, directory: str | os.PathLike) -> list[Path]:
        """Write ``vocab.txt``, ``tokenizer.json``, ``tokenizer_config.json`` and
        ``special_tokens_map.json`` into ``directory`` (created if needed).

        :meth:`from_pretrained` and HF ``tokenizers`` read it back exactly, special token names
        included; so does transformers' ``AutoTokenizer``: ``tokenizer_class`` is
        ``BertTokenizer`` when that class rebuilds this very pipeline from ``vocab.txt`` and the
        config (default ``clean_text``, 100 characters a word, ``##``, the default decoder, the
        five named special tokens), else ``PreTrainedTokenizerFast`` (``tokenizer.json`` as is).
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        c = self._config
        vocab = d / "vocab.txt"
        vocab.write_text("".join(t + "\n" for t in self._tokens), encoding="utf-8")
        tj = self.save(d / "tokenizer.json")
        names = {k: c[k] for k in ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")}
        specials = {self._tokens[i] for i in self._native.special_ids()}
        bert_rebuilds_it = (
            c["clean_text"]
            and c["max_input_chars_per_word"] == 100
            and c["continuing_subword_prefix"] == "##"
            and c["decoder"] == {"type": "WordPiece", "prefix": "##", "cleanup": True}
            and self.cls_id is not None
            and self.sep_id is not None
            and specials == {t for t in names.values() if self.token_to_id(t) is not None}
        )
        cfg = {
            "tokenizer_class": "BertTokenizer" if bert_rebuilds_it else "PreTrainedTokenizerFast",
            "do_lower_case": c["lowercase"],
            "strip_accents": c["strip_accents"],
            "tokenize_chinese_chars": c["handle_chinese_chars"],
            **names,
        }
        tc = d / "tokenizer_config.json"
        tc.write_text(json.dumps(cfg, ensure_ascii=False, indent=1), encoding="utf-8")
        sm = d / "special_tokens_map.json"
        sm.write_text(json.dumps(names, ensure_ascii=False, indent=1), encoding="utf-8")
        return [vocab, tj, tc, sm]

    # ------------------------------------------------------------------ encoding

    def encode(
        self,
        text: str | Sequence[str],
        pair: str | Sequence[str] | None = None,
        add_special_tokens: bool = True,
        max_length: int | None = None,
        truncation: str = "longest_first",
        stride: int = 0,
        is_split_into_words: bool = False,
    ) -> Encoding:
        """Encode one text (and optional pair) like HF ``Tokenizer.encode`` with
        ``enable_truncation(max_length, stride=stride, strategy=truncation)``; see
        :class:`Encoding`.

        When truncation cuts tokens off, ``.overflowing`` holds the rest as HF does
        (``tokenizers`` ``Encoding::truncate`` + ``TemplateProcessing``): a cut sequence of ``n``
        tokens kept to ``t`` is split into windows ``[w * (t - stride), w * (t - stride) + t)``
        (the last clipped at ``n``), window 0 being the main encoding; each overflowing window
        gets the ``[CLS] .. [SEP]`` template. For a pair with windows ``A0..Ak`` and ``B0..Bm``,
        ``overflowing`` is ``(A1, B0), (A1, B1) .. (A1, Bm), (A2, B0) .. (Ak, Bm), (A0, B1) ..
        (A0, Bm)`` — HF's ``Encoding::merge_with`` order — and ``(Ai, B0)`` / ``(A0, Bj)`` carry
        nested ``overflowing`` lists ``(Ai, B1..Bm)`` / ``(A1..Ak, Bj)`` exactly as in HF.
        Raises ``ValueError`` where HF panics: a pair sequence truncated to ``t`` tokens with
        ``0 < t <= stride``.

        With ``is_split_into_words=True``, ``text`` (and ``pair``) is a list of words, as HF's
        ``is_pretokenized=True`` (transformers' ``is_split_into_words``): each word is
        pre-tokenized and encoded on its own, ``word_ids`` are indices into the list (so
        ``align_word_labels(enc.word_ids, word_labels)`` takes one label per given word), and
        ``offsets`` are character offsets into each word.
        """
        max_length, stride = _check_max_length(max_length, truncation, stride)
        ids, types, offsets, words, splits, k, m = self._native.encode_overflowing(
            text, pair, self._specials_added(add_special_tokens), max_length, truncation, stride,
            _check_flag("is_split_into_words", is_split_into_words),
        )
        bounds = splits.tolist()

        def row(r: int, nested: list[Encoding] | None = None) -> Encoding:
            s, e = bounds[r], bounds[r + 1]
            return Encoding(ids[s:e], types[s:e], offsets[s:e], words[s:e], nested if nested is not None else [])

        if pair is None:
            return row(0, [row(r) for r in range(1, 1 + k)])
        # Rows (see unimask_core::Tokenizer::encode_overflowing_into): (A0, B0); for i in 1..k:
        # (Ai, B0), (Ai, B1..Bm); then (A0, B1..Bm).
        index: dict[tuple[int, int], int] = {(0, 0): 0}
        r = 1
        for i in range(1, k + 1):
            for j in range(m + 1):
                index[i, j] = r
                r += 1
        for j in range(1, m + 1):
            index[0, j] = r
            r += 1
        plain = {ij: row(index[ij]) for ij in index if ij[0] >= 1 and ij[1] >= 1}
        made: dict[tuple[int, int], Encoding] = dict(plain)
        for i in range(1, k + 1):
            made[i, 0] = row(index[i, 0], [plain[i, j] for j in range(1, m + 1)])
        for j in range(1, m + 1):
            made[0, j] = row(index[0, j], [plain[i, j] for i in range(1, k + 1)])
        order = sorted(made, key=lambda ij: index[ij])
        return row(0, [made[ij] for ij in order])

    def encode_batch(
        self,
        texts: Sequence[str] | Sequence[Sequence[str]],
        pairs: Sequence[str] | Sequence[Sequence[str]] | None = None,
        add_special_tokens: bool = True,
        max_length: int | None = None,
        truncation: str = "longest_first",
        stride: int = 0,
        return_overflowing: bool = False,
        is_split_into_words: bool = False,
    ) -> RaggedBatch:
        """Encode many texts (in parallel, outside the GIL) into a :class:`RaggedBatch`.

        ``max_length`` counts the special tokens, as in HF (``[CLS] A [SEP]`` leaves
        ``max_length - 2`` for A); ``truncation`` is ``"longest_first"``, ``"only_first"`` or
        ``"only_second"``.

        Overflow: by default a truncated text keeps only its first window (HF's main
        ``Encoding``; the rest of the text is dropped). With ``return_overflowing=True`` each
        text's row is followed by its overflowing windows (HF ``Encoding.overflowing``, same
        order, ``stride`` tokens of overlap; see :meth:`encode`) and ``overflow_to_sample`` maps
        every row to the index of its text, like transformers' ``return_overflowing_tokens`` /
        ``overflow_to_sample_mapping`` (sliding windows for extractive QA, long documents).

        ``stride`` needs ``max_length`` and must be smaller than ``max_length`` minus the special
        tokens (HF: ``stride < max_len`` in ``Encoding::truncate``, a panic there); a pair
        sequence truncated to ``t`` tokens with ``0 < t <= stride`` also raises ``ValueError``
        naming the text (HF panics). Rows do not depend on ``num_threads``.

        With ``is_split_into_words=True`` every text (and pair) is a list of words (CoNLL-style
        tagging data): HF ``encode_batch(..., is_pretokenized=True)``, see :meth:`encode`;
        ``word_ids`` index each row's words.
        """
        max_length, stride = _check_max_length(max_length, truncation, stride)
        ids, types, offsets, words, splits, samples = self._native.encode_batch(
            texts, pairs, self._specials_added(add_special_tokens), max_length, truncation, stride,
            self.num_threads,
            _check_flag("return_overflowing", return_overflowing),
            _check_flag("is_split_into_words", is_split_into_words),
        )
        pad = self.pad_id
        return RaggedBatch(ids, types, offsets, words, splits, 0 if pad is None else pad, samples)

    def __call__(self, texts: Sequence[str], **kwargs: Any) -> RaggedBatch:
        """Shorthand for :meth:`encode_batch`."""
        return self.encode_batch(texts, **kwargs)

    def decode(self, ids: Iterable[int] | np.ndarray, skip_special_tokens: bool = True) -> str:
        """Ids back to text as HF ``Tokenizer.decode`` with this tokenizer's ``decoder`` (by
        default WordPiece: ``##`` pieces glued, cleanup of spaces before punctuation; see the
        class docstring). Raises ``ValueError`` naming an id outside the vocabulary."""
        if isinstance(ids, np.ndarray):
            if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
                raise TypeError(f"ids must be a 1-d integer array, got {ids.dtype} with shape {ids.shape}")
            ids = ids.tolist()  # Python ints: exact for every dtype (uint64 too)
        elif isinstance(ids, (str, bytes)):
            raise TypeError("ids must be a sequence of ints, got a string")
        return self._native.decode(list(ids), _check_flag("skip_special_tokens", skip_special_tokens))

    def encode_file(
        self, path: str | os.PathLike, out_prefix: str | os.PathLike, batch_bytes: int = 8 << 20
    ) -> "TokenShard":
        """Tokenize a corpus file (UTF-8, one sentence per line, blank lines between documents;
        lines end at ``\\n``, ``\\r\\n`` or ``\\r`` and are stripped, as
        :func:`unimask.corpus.read_documents` reads them) into the shard
        ``<out_prefix>.umshard`` without special tokens, streaming ``batch_bytes`` of text at a
        time (bounded memory). Returns the opened :class:`TokenShard`. The format (header,
        version, CRC-32) is documented in ``docs/tokenizer.md``. Invalid UTF-8 raises
        ``ValueError`` naming the line. The shard is written next to ``<out_prefix>.umshard`` and
        renamed over it when complete: that path must be a regular file (an old shard, replaced)
        or not exist, else ``ValueError`` "cannot write shard <path>: it is a directory" (or a
        device, named pipe or socket, also through a symlink) before any work, the path left as
        it was; a symlink to a regular file is replaced by the shard, its target kept.
        """
        batch_bytes = _check_int("batch_bytes", batch_bytes, 1)
        out = Path(os.fspath(out_prefix) + ".umshard")
        self._native.encode_file(os.fspath(path), os.fspath(out), batch_bytes, self.num_threads)
        return TokenShard(out)

    # ------------------------------------------------------------------ vocabulary

    def token_to_id(self, token: str) -> int | None:
        """Id of ``token``, or None."""
        return self._native.token_to_id(token)

    def id_to_token(self, id: int) -> str | None:
        """Token of ``id``, or None (any int that is no id of the vocabulary)."""
        i = _check_int("id", id, None, None)
        return self._native.id_to_token(i) if 0 <= i < self.vocab_size else None

    def get_vocab(self) -> list[str]:
        """Tokens in id order (a copy)."""
        return list(self._tokens)

    @property
    def vocab_size(self) -> int:
        """Number of vocabulary entries."""
        return self._native.vocab_size

    @property
    def unk_id(self) -> int:
        """Id of the unknown token."""
        return self._native.unk_id

    @property
    def cls_id(self) -> int | None:
        """Id of the classification token (None if absent)."""
        return self._native.cls_id

    @property
    def sep_id(self) -> int | None:
        """Id of the separator token (None if absent)."""
        return self._native.sep_id

    @property
    def pad_id(self) -> int | None:
        """Id of the padding token (None if absent)."""
        return self._native.pad_id

    @property
    def mask_id(self) -> int | None:
        """Id of the mask token (None if absent)."""
        return self._native.mask_id

    @property
    def num_threads(self) -> int | None:
        """Threads used by :meth:`encode_batch` (None = all cores)."""
        return self._num_threads

    @num_threads.setter
    def num_threads(self, value: int | None) -> None:
        self._num_threads = _check_num_threads(value)

    def _specials_added(self, add_special_tokens: Any) -> bool:
        """Whether an encode call adds ``[CLS]``/``[SEP]``: asked for, and this tokenizer has the template."""
        return _check_flag("add_special_tokens", add_special_tokens) and self._config["template"]

    # ------------------------------------------------------------------ pickling

    def __getstate__(self) -> dict:
        return {"tokens": self._tokens, "config": self._config, "num_threads": self._num_threads}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["tokens"], num_threads=state["num_threads"], **state["config"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"WordPieceTokenizer(vocab_size={self.vocab_size}, lowercase={self._config['lowercase']})"


def _check_flag(name: str, value: Any) -> bool:
    """A keyword flag as a bool; anything but a bool is a ``TypeError`` naming it."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def _check_max_length(max_length: int | None, truncation: str, stride: int) -> tuple[int | None, int]:
    """The truncation arguments of the encode calls; returns ``(max_length, stride)`` as ints."""
    max_length = _check_int("max_length", max_length, 0, allow_none=True)
    stride = _check_int("stride", stride, 0)
    if not isinstance(truncation, str) or truncation not in _TRUNCATIONS:
        raise ValueError(f"truncation must be one of {_TRUNCATIONS}, got {truncation!r}")
    return max_length, stride


class ChineseSegmenter:
    """Dictionary-based Chinese word segmentation in Rust, equal to ``jieba.cut(text, HMM=False)``
    with the same dictionary (jieba's ``dict.txt`` format: ``word freq [tag]`` per line).

    Algorithm (jieba 0.42): DAG of dictionary words over each run of han characters/ASCII
    alphanumerics, maximum log-probability path by dynamic programming, ASCII runs glued.
    """

    def __init__(self, dictionary: str | os.PathLike) -> None:
        self.path = os.fspath(dictionary)
        self._native = _native.Segmenter(self.path)

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Word spans ``(start, end)`` in characters, covering ``text`` in order."""
        return self._native.cut(text)

    def cut(self, text: str) -> list[str]:
        """The words of ``text`` (like ``list(jieba.cut(text, HMM=False))``)."""
        return [text[s:e] for s, e in self._native.cut(text)]

    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])  # type: ignore[misc]


class TokenShard:
    """A token shard written by :meth:`WordPieceTokenizer.encode_file`, memory-mapped.

    ``len(shard)`` is the number of documents; ``shard[i]`` is document ``i`` as a list of
    sentence token-id arrays (zero-copy views into the file); ``tokens``,
    ``sentence_offsets`` and ``document_offsets`` are the raw ``np.memmap`` columns. The header,
    the offsets and the CRC-32 are checked on open (``verify=False`` skips only the CRC pass
    over the whole file; the offsets are one cheap pass over their columns, always made): sizes
    in the header that do not match the file (or overflow 64 bits) and offsets that do not
    start at 0, decrease or do not end at the header's token (sentence) count are a
    ``ValueError`` naming the file and the offending value, a path that is not a regular file
    (directory, device, FIFO) an ``OSError``.
    ``path`` is a ``str``, ``bytes`` (decoded with :func:`os.fsdecode`) or path-like.

    Picklable: the copy (e.g. in a spawned DataLoader worker) reopens the path and checks that
    it is still the file this shard had open (same size and stored CRC-32, read from the
    header: no pass over the file); a file replaced in between raises ``ValueError`` ("changed
    since it was opened") instead of serving its tokens under an index built for the old one.
    """

    def __init__(self, path: str | bytes | os.PathLike, verify: bool = True) -> None:
        if not isinstance(path, (str, bytes, os.PathLike)):
            raise TypeError(f"path must be a str, bytes or os.PathLike, got {type(path).__name__}")
        self.path = Path(os.fsdecode(path))
        self.verify = verify
        h = _native.shard_header(os.fspath(self.path), verify)
        self.header = h
        self.vocab_size = int(h["vocab_size"])
        self.num_tokens = int(h["n_tokens"])
        self.num_sentences = int(h["n_sentences"])
        self.num_documents = int(h["n_documents"])
        dtype = np.dtype("<u2") if h["token_bytes"] == 2 else np.dtype("<u4")
        base = int(h["header_len"])
        tok_end = base + int(h["tokens_len"])

        def view(dt: np.dtype, offset: int, n: int) -> np.ndarray:
            if n == 0:
                return np.zeros(0, dtype=dt)
            return np.memmap(self.path, dtype=dt, mode="r", offset=offset, shape=(n,))

        self.tokens = view(dtype, base, self.num_tokens)
        self.sentence_offsets = view(np.dtype("<u8"), tok_end, self.num_sentences + 1)
        self.document_offsets = view(np.dtype("<u8"), tok_end + 8 * (self.num_sentences + 1), self.num_documents + 1)

    def __len__(self) -> int:
        return self.num_documents

    def sentence(self, j: int) -> np.ndarray:
        """Token ids of sentence ``j`` (a view)."""
        if not 0 <= j < self.num_sentences:
            raise IndexError(f"sentence {j} out of range ({self.num_sentences} sentences)")
        so = self.sentence_offsets
        return self.tokens[int(so[j]) : int(so[j + 1])]

    def __getitem__(self, i: int) -> list[np.ndarray]:
        """Document ``i``: its sentences' token ids."""
        n = self.num_documents
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"document index must be an int, got {type(i).__name__}")
        if not -n <= i < n:
            raise IndexError(f"document {i} out of range ({n} documents)")
        i = int(i) % n
        d = self.document_offsets
        return [self.sentence(j) for j in range(int(d[i]), int(d[i + 1]))]

    def _identity(self) -> tuple[int, int]:
        """``(file size, stored CRC-32)`` of the opened file (both from the validated header)."""
        h = self.header
        size = int(h["header_len"]) + int(h["tokens_len"]) + 8 * (self.num_sentences + 1) + 8 * (self.num_documents + 1)
        return size, int(h["crc32"])

    def __getstate__(self) -> dict:
        return {"path": self.path, "verify": False, "identity": self._identity()}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], verify=state["verify"])  # type: ignore[misc]
        want = state.get("identity")
        if want is not None and tuple(want) != self._identity():
            size, crc = want
            got_size, got_crc = self._identity()
            raise ValueError(
                f"token shard {str(self.path)!r} changed since it was opened (was {size} bytes with "
                f"CRC-32 {crc:#010x}, now {got_size} bytes with CRC-32 {got_crc:#010x}); "
                "rebuild the dataset over the new file"
            )

    def __repr__(self) -> str:
        return f"TokenShard({str(self.path)!r}, documents={self.num_documents}, sentences={self.num_sentences}, tokens={self.num_tokens})"
