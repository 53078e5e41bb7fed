"""Packed rows vs padded rows: one MLM pretraining step (collate + forward + backward) on short
documents (and one UNILM pretraining step on sentence pairs, :func:`setup_unilm`, and one
sentence-classifier fine-tuning step, :func:`setup_classifier`), the same 64 sentences of the bundled English corpus either padded to the longest
(the usual batch: ``MLMCollator``) or packed into rows of 128 (``PackingCollator`` + the
encoder's ``cu_seqlens`` path). Small BERT (hidden 256, 4 layers), fp32, on the default device.

Run: ``python -m pytest bench/bench_packing.py --benchmark-only`` (ratio printed by
bench/conftest.py: padded time / packed time), or ``python bench/bench_packing.py`` for a table
with the token counts.

On the bundled corpus a padded batch of 64 sentences is ~70% padding; packed, ~6%. On the CPU the
packed attention runs documents batched by length bucket (``sdpa_attention_varlen``), which pads
within a bucket; on CUDA the varlen Triton kernel does not pad at all.
"""

from __future__ import annotations

import sys
import time

import pytest

torch = pytest.importorskip("torch")

from unimask.collators import MLMCollator  # noqa: E402
from unimask.corpus import demo_corpus_path  # noqa: E402
from unimask.models import BertForPretraining, EncoderConfig  # noqa: E402
from unimask.packing import PackingCollator  # noqa: E402
from unimask.pretrain import make_tokenizer, tokenize_corpus  # noqa: E402

BATCH, MAX_LEN = 64, 128
_STATE: dict = {}


def _stepper(model, batches: list, make_batch, dev: str):
    """One training step per call on the next of ``batches`` (cycled), made by ``make_batch``
    (collate + forward + backward); returns the batch's token slots."""
    pos = [0]

    def step() -> int:
        batch = make_batch(batches[pos[0] % len(batches)])
        pos[0] += 1
        batch.pop("next_sentence_label", None)
        batch = {k: v.to(dev) for k, v in batch.items()}
        model(**batch).loss.backward()
        model.zero_grad(set_to_none=True)
        return int(batch["input_ids"].numel())

    return step


def setup() -> dict:
    """``{side: step}``: ``unimask`` = packed rows, ``reference`` = padded rows."""
    if _STATE:
        return _STATE
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    tok, encode, sp = make_tokenizer(demo_corpus_path("en"))
    docs = tokenize_corpus(demo_corpus_path("en"), encode, max_documents=400)
    sentences = [[sp.cls] + s[: MAX_LEN - 2] + [sp.sep] for d in docs for s in d]
    batches = [sentences[i:i + BATCH] for i in range(0, len(sentences) - BATCH + 1, BATCH)]
    cfg = EncoderConfig(vocab_size=sp.vocab_size, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=1024, max_position_embeddings=512)
    torch.manual_seed(0)
    model = BertForPretraining(cfg).to(dev).train()
    padded = MLMCollator(tokenizer=tok, seed=0)
    packed = PackingCollator(MLMCollator(tokenizer=tok, seed=0), max_length=MAX_LEN)

    _STATE.update(unimask=_stepper(model, batches, packed, dev), reference=_stepper(model, batches, padded, dev), device=dev,
                  real_tokens=sum(len(s) for s in batches[0]))
    return _STATE


_CLS: dict = {}


def setup_classifier() -> dict:
    """``{side: step}`` for one fine-tuning step of a sentence classifier (small BERT, batches of
    32 sentences of the bundled corpus, labels: whether the sentence holds a digit):
    ``unimask`` = ``FinetuneConfig(pack=True)``'s batches (:func:`unimask.packing.pack_padded`),
    ``reference`` = the padded batches."""
    if _CLS:
        return _CLS
    from unimask.corpus import read_documents  # noqa: PLC0415
    from unimask.finetune import Example, LabelMap, SequenceClassifier  # noqa: PLC0415
    from unimask.finetune.trainer import encode_examples  # noqa: PLC0415
    from unimask.packing import pack_padded  # noqa: PLC0415

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    tok, _encode, sp = make_tokenizer(demo_corpus_path("en"))
    texts = [s for d in read_documents(demo_corpus_path("en")) for s in d][:2048]
    examples = [Example(t, None, "num" if any(c.isdigit() for c in t) else "text") for t in texts]
    lm = LabelMap(["num", "text"])
    cfg = EncoderConfig(vocab_size=sp.vocab_size, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=1024, max_position_embeddings=512)
    torch.manual_seed(0)
    model = SequenceClassifier(cfg, lm).to(dev).train()
    batches = [examples[i:i + 32] for i in range(0, len(examples) - 31, 32)]

    def padded(chunk):
        return encode_examples(tok, chunk, MAX_LEN, lm)

    def packed(chunk):
        return pack_padded(padded(chunk), MAX_LEN)

    _CLS.update(unimask=_stepper(model, batches, packed, dev), reference=_stepper(model, batches, padded, dev), device=dev)
    return _CLS


def _time_sides(state: dict, steps: int, prefix: str = "") -> float:
    """Time ``steps`` steps of each side; print ms/step and token slots; return padded / packed."""
    sides = {"packed": state["unimask"], "padded": state["reference"]}
    for fn in sides.values():
        fn()
    took = {}
    for name, fn in sides.items():
        t = time.perf_counter()
        slots = sum(fn() for _ in range(steps))
        if state["device"] == "cuda":
            torch.cuda.synchronize()
        took[name] = (time.perf_counter() - t) / steps
        print(f"{prefix}{name:7s} {took[name] * 1e3:8.1f} ms/step  {slots / steps:7.0f} token slots/batch")
    return took["padded"] / took["packed"]


_UNI: dict = {}


def setup_unilm() -> dict:
    """``{side: step}`` for one UNILM pretraining step (small UnifiedLM, batches of 64
    ``(sentence, next sentence)`` pairs of the bundled corpus, each with its own attention mode):
    ``unimask`` = ``unimask pretrain --objective unilm --pack``'s batches (each pair collated
    alone, then packed into rows of 128), ``reference`` = the same pairs padded."""
    if _UNI:
        return _UNI
    from unimask.models import UnifiedLM  # noqa: PLC0415
    from unimask.pretrain import examples_of, make_collate  # noqa: PLC0415

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    _tok, encode, sp = make_tokenizer(demo_corpus_path("en"))
    docs = tokenize_corpus(demo_corpus_path("en"), encode, max_documents=400)
    chunks = [[(ex, 7 * i + j) for j, ex in enumerate(examples_of(docs)[i:i + BATCH])]
              for i in range(0, 20 * BATCH, BATCH)]
    cfg = EncoderConfig(vocab_size=sp.vocab_size, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=1024, max_position_embeddings=512, type_vocab_size=6)
    torch.manual_seed(0)
    model = UnifiedLM(cfg).to(dev).train()
    sides = {}
    for side, pack in (("unimask", True), ("reference", False)):
        collate = make_collate(docs, "unilm", MAX_LEN, sp, pack)
        sides[side] = _stepper(model, chunks, lambda c, f=collate: f([e for e, _ in c], [s for _, s in c]), dev)
    _UNI.update(sides, device=dev)
    return _UNI


#: benchmark group (the device is appended) -> the setup that builds its packed and padded sides
CASES = {
    f"mlm_step_short_sentences_b{BATCH}": setup,
    "classifier_step_b32": setup_classifier,
    f"unilm_step_pairs_b{BATCH}": setup_unilm,
}


@pytest.mark.parametrize("side", ["unimask", "reference"])
@pytest.mark.parametrize("case", list(CASES))
def bench_packed_vs_padded_step(case, side, side_benchmark, benchmark):
    state = CASES[case]()
    fn = state[side]
    fn()  # warm-up
    benchmark.group = f"{case}_packed_vs_padded_{state['device']}"
    side_benchmark(side, fn)


def main(steps: int = 5) -> None:
    state = setup()
    print(f"device {state['device']}; packed is {_time_sides(state, steps):.2f}x faster per step")
    ratio = _time_sides(setup_unilm(), steps, "unilm ")
    print(f"UNILM pretraining: packed is {ratio:.2f}x faster per step")
    ratio = _time_sides(setup_classifier(), steps, "classifier ")
    print(f"classifier fine-tuning: packed is {ratio:.2f}x faster per step")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
