"""``unimask pretrain``: pretrain a small UNILM (or BERT / GPT / MASS) model on a text corpus.

With no arguments it trains a small UNILM model on the bundled English demo corpus on the CPU
in a few minutes and prints the held-out MLM loss as it falls. The script reads top to bottom:
tokenize the corpus -> split documents into train / held-out -> build the model -> a
resumable :class:`CorpusBatches` source -> :class:`unimask.training.Trainer`.

The data path is unimask's own: a WordPiece vocabulary trained on the corpus (or ``--vocab``)
with :class:`unimask.tokenizer.WordPieceTokenizer`, and :class:`CorpusCollator`, which feeds
the Rust collators of :mod:`unimask.collators` (one per objective).

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
from typing import TYPE_CHECKING

from .cli import number, run_command

if TYPE_CHECKING:  # torch is imported where it is used, so building the CLI parser stays light
    import torch

__all__ = [
    "add_parser",
    "run",
    "main",
    "make_tokenizer",
    "make_collate",
    "CorpusCollator",
    "CorpusBatches",
    "SpecialIds",
    "tokenize_corpus",
    "build_model",
]

OBJECTIVES = ("unilm", "mlm", "causal", "mass")
#: Objectives whose batches can be packed rows (``pack=True``): their targets stay inside each document.
PACKABLE = ("mlm", "unilm")
Batch = dict[str, "torch.Tensor"]
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


def make_tokenizer(corpus: str | Path, vocab: str | Path | None = None, vocab_size: int = 8000,
                   output: str | Path | None = None):
    """The WordPiece tokenizer of a pretraining run and its special ids.

    ``vocab`` may be a ``vocab.txt`` or a BERT model directory (``from_pretrained``). Without
    it, a WordPiece vocabulary of ``vocab_size`` is trained on ``corpus`` with
    :meth:`unimask.tokenizer.WordPieceTokenizer.train` (deterministic, well under a second on
    the bundled corpus), so the default run needs nothing but the package. A tokenizer saved
    in ``output/tokenizer`` by an earlier run is reused (``--resume`` sees the same vocabulary).
    Returns ``(tokenizer, encode, special)``, ``encode(list[str]) -> list[list[int]]`` without
    special tokens.
    """
    from .tokenizer import WordPieceTokenizer  # noqa: PLC0415

    saved = Path(output) / "tokenizer" if output is not None else None
    if vocab is not None:
        vocab = Path(vocab)
        tok = WordPieceTokenizer.from_pretrained(vocab) if vocab.is_dir() else WordPieceTokenizer.from_vocab(vocab)
    elif saved is not None and (saved / "vocab.txt").is_file():
        tok = WordPieceTokenizer.from_pretrained(saved)
    else:
        tok = WordPieceTokenizer.train([str(corpus)], vocab_size=vocab_size)
    if saved is not None and not (saved / "vocab.txt").is_file():
        tok.save_pretrained(saved)
    missing = [n for n in ("pad_id", "cls_id", "sep_id", "mask_id") if getattr(tok, n) is None]
    if missing:
        raise ValueError(f"the vocabulary has no {', '.join(m[:-3].upper() for m in missing)} token(s): {vocab}")
    special = SpecialIds(tok.pad_id, tok.cls_id, tok.sep_id, tok.mask_id, tok.vocab_size)

    def encode(texts: list[str]) -> list[list[int]]:
        batch = tok.encode_batch(texts, add_special_tokens=False)
        ids, splits = batch.ids_flat, batch.row_splits
        return [ids[splits[i]:splits[i + 1]].astype("int64").tolist() for i in range(len(texts))]

    return tok, encode, special


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
# the data step: examples -> batches through unimask's Rust collators


class CorpusCollator:
    """Batches of one objective from ``(document, sentence)`` examples, via :mod:`unimask.collators`.

    ``__call__(examples, seeds)`` -> batch dict (the collators' contract). Example ``k`` is
    built with ``random.Random(seeds[k])`` (the choice of a second segment) and masked by the
    Rust collator with sample index ``seeds[k]``, so a sample does not depend on the batch it
    lands in or on the process that builds it (data-parallel ranks see the same samples).

    Samples per objective:

    * ``unilm``: ``(sentence, next sentence)`` pairs (a document's last sentence alone) for
      :class:`~unimask.collators.UnifiedLMCollator`, which draws the attention mode per sample.
      The second segment is always the true continuation, so the seq2seq samples learn to
      generate it; NSP (random second segments) is left to the ``mlm`` objective.
    * ``mlm``: BERT pairs for :class:`~unimask.collators.MLMCollator` + NSP: the next
      sentence with probability 0.5 (label 0), else a sentence of another document (label 1).
    * ``causal``: the sentence and those following it in its document, up to ``max_length``,
      for :class:`~unimask.collators.CausalLMCollator` (``[CLS]``/``[SEP]`` as BOS/EOS).
    * ``mass``: the sentence, for :class:`~unimask.collators.MASSCollator`.

    ``pack=True`` (:class:`unimask.packing.PackingCollator`, rows of ``max_length``, no padding
    but a row's tail, attention inside each document): ``mlm``: each sentence is one document
    ``[CLS] sentence [SEP]``, no NSP; ``unilm``: each pair is collated as above (its own mode)
    and is one document.

    Picklable.
    """

    def __init__(self, documents: list[list[list[int]]], objective: str, max_length: int,
                 special: SpecialIds, mask_prob: float = 0.15, max_predictions: int = 20,
                 pack: bool = False) -> None:
        from .collators import CausalLMCollator, MASSCollator, MLMCollator, UnifiedLMCollator  # noqa: PLC0415

        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if max_length < 8:
            raise ValueError(f"max_length must be >= 8, got {max_length}")
        if not documents:
            raise ValueError("documents is empty")
        if pack and objective not in PACKABLE:
            raise ValueError(f"packing needs one of the objectives {PACKABLE} (targets inside each document), got {objective!r}")
        self.documents = documents
        self.objective = objective
        self.max_length = max_length
        self.pack = pack
        self.special = special
        ids = dict(vocab_size=special.vocab_size, pad_id=special.pad, cls_id=special.cls,
                   sep_id=special.sep, mask_id=special.mask)
        masking = dict(mlm_probability=mask_prob, max_predictions=max_predictions,
                       max_length=max_length, truncation=True)
        if objective == "unilm" and pack:
            from .packing import PackingCollator  # noqa: PLC0415

            self.collator = PackingCollator(UnifiedLMCollator(**ids, **masking), max_length)
        elif objective == "unilm":
            self.collator = UnifiedLMCollator(**ids, **masking)
        elif objective == "mlm" and pack:
            from .packing import PackingCollator  # noqa: PLC0415

            self.collator = PackingCollator(MLMCollator(**ids, **masking), max_length)
        elif objective == "mlm":
            self.collator = MLMCollator(**ids, **masking, add_special_tokens=True)
        elif objective == "causal":
            self.collator = CausalLMCollator(vocab_size=special.vocab_size, pad_id=special.pad,
                                             bos_id=special.cls, eos_id=special.sep,
                                             max_length=max_length, truncation=True)
        else:
            self.collator = MASSCollator(**ids, max_length=max_length, truncation=True)

    def _random_sentence(self, d: int, rng: random.Random) -> list[int]:
        od = rng.randrange(len(self.documents))
        if od == d and len(self.documents) > 1:
            od = (od + 1) % len(self.documents)
        odoc = self.documents[od]
        return odoc[rng.randrange(len(odoc))]

    def _sample(self, ex: Example, rng: random.Random):
        d, s = ex
        doc = self.documents[d]
        nxt = doc[s + 1] if s + 1 < len(doc) else None
        if self.objective == "unilm":
            return (doc[s], nxt) if nxt is not None else doc[s]
        if self.objective == "mlm" and self.pack:
            return [self.special.cls, *doc[s][: self.max_length - 2], self.special.sep]
        if self.objective == "mlm":
            if nxt is not None and rng.random() < 0.5:
                return (doc[s], nxt, 0)
            return (doc[s], self._random_sentence(d, rng), 1)
        if self.objective == "causal":
            ids = list(doc[s])
            k = s + 1
            while len(ids) < self.max_length - 2 and k < len(doc):
                ids += doc[k]
                k += 1
            return ids[: self.max_length - 2]
        return doc[s][: self.max_length]

    def __call__(self, examples: Sequence[Example], seeds: Sequence[int]) -> Batch:
        if len(examples) != len(seeds):
            raise ValueError(f"one seed per example: got {len(examples)} examples and {len(seeds)} seeds")
        samples = [self._sample(ex, random.Random(seed)) for ex, seed in zip(examples, seeds)]
        if self.objective == "causal":
            return self.collator(samples)
        return self.collator(samples, indices=[int(x) % (1 << 63) for x in seeds])


def make_collate(documents: list[list[list[int]]], objective: str, max_length: int,
                 special: SpecialIds, pack: bool = False) -> Callable[[Sequence[Example], Sequence[int]], Batch]:
    """The data step: a collator ``(examples, seeds) -> batch`` for ``objective`` (``pack``:
    sentences packed into rows, ``mlm`` only; see :class:`CorpusCollator`)."""
    return CorpusCollator(documents, objective, max_length, special, pack=pack)


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
        self._perm_epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> torch.Tensor:
        import torch  # noqa: PLC0415

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
    p.set_defaults(func=command)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", type=Path, default=None, help="text corpus (one sentence per line, blank line between documents); default: bundled English demo corpus")
    p.add_argument("--objective", choices=OBJECTIVES, default="unilm")
    p.add_argument("--vocab", type=Path, default=None, help="vocab.txt or BERT model directory (default: train a WordPiece vocabulary on the corpus)")
    p.add_argument("--vocab-size", type=int, default=8000, help="size of the vocabulary trained when --vocab is not given")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps (default 300)")
    p.add_argument("--batch-size", type=int, default=32, help="micro-batch size per process")
    p.add_argument("--grad-accum", type=number(int, 1), default=1)
    p.add_argument("--max-length", type=number(int, 8), default=64, help="tokens per row, [CLS]/[SEP] included (>= 8)")
    p.add_argument("--pack", action="store_true",
                   help="mlm, unilm: pack each batch's samples into rows of --max-length (attention stays in each sample; "
                        "mlm: sentences, no NSP; unilm: each pair with its own mode)")
    p.add_argument("--lr", type=number(float, 0), default=1e-3)
    p.add_argument("--warmup", type=number(int, 0), default=30, help="warmup steps")
    p.add_argument("--hidden", type=number(int, 1), default=128)
    p.add_argument("--layers", type=number(int, 1), default=2)
    p.add_argument("--heads", type=number(int, 1), default=4, help="attention heads (must divide --hidden)")
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--eval-batches", type=int, default=8)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--max-documents", type=int, default=None, help="use only the first N documents")
    p.add_argument("--output", type=Path, default=Path("unimask-pretrain"),
                   help="output directory (without --resume it must hold no checkpoint of an earlier run)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT's latest checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="auto: bf16 (or fp16) autocast on CUDA, fp32 elsewhere; bf16 also autocasts on the CPU "
                        "(faster on CPUs with AVX512-BF16 or AMX); fp16 needs a CUDA device")
    p.add_argument("--distributed", choices=("ddp", "fsdp"), default="ddp", help="under torchrun")
    p.add_argument("--threads", type=number(int, 1), default=None, help="torch CPU threads")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute each layer's activations in the backward instead of keeping them "
                        "(less memory, one more forward per step; same losses)")
    p.add_argument("--no-progress", action="store_true")


def _init_distributed(device: str | None) -> tuple[int, int, str | None]:
    """Initialise torch.distributed when launched by torchrun (gloo on CPU, NCCL on CUDA)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1, device
    import torch  # noqa: PLC0415
    import torch.distributed as dist  # noqa: PLC0415

    # torchrun starts one process per device: each takes cuda:LOCAL_RANK (or the CPU), so a
    # device naming one GPU, or another kind of device, cannot be honoured in every process
    if device is not None and device not in ("cpu", "cuda"):
        raise ValueError(f"under torchrun --device must be 'cuda' (each process uses cuda:LOCAL_RANK) or 'cpu', got {device!r}")
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


def _earlier_checkpoints(output: Path) -> list[str]:
    """The checkpoint files (``step-*.pt``, ``latest``) already in ``output``, at most 3 named."""
    if not output.is_dir():
        return []
    names = sorted(p.name for p in output.glob("step-*.pt"))
    if (output / "latest").exists():
        names.insert(0, "latest")
    return names[:3] + ([f"{len(names) - 3} more"] if len(names) > 3 else [])


def run(args: argparse.Namespace) -> int:
    """Run ``unimask pretrain`` with parsed arguments; returns the exit code (2, with a message on
    stderr, for a bad argument found before training starts; other bad input raises the library's
    ``ValueError`` / :class:`unimask.training.CheckpointError`, which the command reports).

    Without ``--resume``, an ``--output`` that already holds checkpoints (``step-*.pt`` or
    ``latest``) is refused: a fresh run there would mix its checkpoints with the earlier run's."""
    import torch  # noqa: PLC0415

    from .corpus import demo_corpus_path  # noqa: PLC0415
    from .models import set_gradient_checkpointing  # noqa: PLC0415
    from .training import Trainer, TrainingConfig  # noqa: PLC0415

    corpus = args.corpus or demo_corpus_path("en")
    if not Path(corpus).is_file():
        print(f"unimask pretrain: corpus file not found: {corpus}", file=sys.stderr)
        return 2
    if args.steps < 1 or args.batch_size < 1:
        print(f"unimask pretrain: --steps and --batch-size must be >= 1 (got {args.steps}, {args.batch_size})", file=sys.stderr)
        return 2
    if args.pack and args.objective not in PACKABLE:
        print(f"unimask pretrain: --pack needs --objective {' or '.join(PACKABLE)} (got {args.objective})", file=sys.stderr)
        return 2
    if args.hidden % args.heads:
        print(f"unimask pretrain: --hidden {args.hidden} is not divisible by --heads {args.heads}", file=sys.stderr)
        return 2
    if args.vocab is not None and not args.vocab.exists():
        print(f"unimask pretrain: --vocab {args.vocab}: no such file or directory", file=sys.stderr)
        return 2
    if not args.resume:
        earlier = _earlier_checkpoints(args.output)
        if earlier:
            print(f"unimask pretrain: --output {args.output} already holds an earlier run's checkpoints "
                  f"({', '.join(earlier)}); continue that run with --resume, or choose another --output",
                  file=sys.stderr)
            return 2
    try:
        device_type = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu")).type
    except RuntimeError as e:  # not a device string
        print(f"unimask pretrain: --device {args.device}: {e}", file=sys.stderr)
        return 2
    if device_type == "cuda" and not torch.cuda.is_available():
        print(f"unimask pretrain: --device {args.device}: CUDA is not available", file=sys.stderr)
        return 2
    if args.precision == "bf16" and device_type not in ("cuda", "cpu"):
        print(f"unimask pretrain: --precision bf16 autocasts on CUDA or the CPU, got device {args.device}; "
              f"use --precision fp32", file=sys.stderr)
        return 2
    if args.precision == "fp16" and device_type != "cuda":
        print(f"unimask pretrain: --precision fp16 needs a CUDA device (loss scaling), got device {args.device or 'cpu'}; "
              f"use --precision bf16 (CPU autocast), fp32 or auto", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    rank, world, device = _init_distributed(args.device)
    say = print if rank == 0 else (lambda *a, **k: None)
    random.seed(args.seed)
    torch.manual_seed(args.seed)

    tokenizer, encode, special = make_tokenizer(corpus, args.vocab, args.vocab_size, args.output if rank == 0 else None)
    docs = tokenize_corpus(corpus, encode, args.max_documents)
    n_held = max(1, len(docs) // 50)
    train_docs, held_docs = docs[:-n_held], docs[-n_held:]
    if not train_docs:
        print(f"unimask pretrain: corpus {corpus} has too few documents ({len(docs)})", file=sys.stderr)
        return 2
    collate_train = make_collate(train_docs, args.objective, args.max_length, special, args.pack)
    collate_held = make_collate(held_docs, args.objective, args.max_length, special, args.pack)
    source = CorpusBatches(examples_of(train_docs), collate_train, args.batch_size, args.seed, rank, world)
    held_ex = examples_of(held_docs)
    n_eval = min(len(held_ex), args.eval_batches * args.batch_size)
    eval_batches = [collate_held(held_ex[i:min(i + args.batch_size, n_eval)], list(range(10_000 + i, 10_000 + min(i + args.batch_size, n_eval))))
                    for i in range(0, n_eval, args.batch_size)]
    n_train = sum(len(d) for d in train_docs)
    say(f"unimask pretrain: objective {args.objective}{' (packed rows)' if args.pack else ''}, corpus {corpus} ({len(train_docs)} train / "
        f"{len(held_docs)} held-out documents, {n_train} sentences), {world} process(es), device {device or 'auto'}")

    model = build_model(args.objective, special.vocab_size, args.max_length, args.hidden, args.layers, args.heads)
    if args.gradient_checkpointing:
        set_gradient_checkpointing(model)
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
    if trainer.sharded:  # FSDP (any world size): gather the DTensor shards (collective), rank 0 saves
        full = trainer._model_state()
        if rank == 0:
            model = build_model(args.objective, special.vocab_size, args.max_length, args.hidden, args.layers, args.heads)
            model.load_state_dict(full)
    if rank == 0:
        model.save_pretrained(args.output / "model")
        tokenizer.save_pretrained(args.output / "model")
        first = trainer.state.evals[0]["eval_loss"] if trainer.state.evals else float("nan")
        say(f"done: step {final['step']}, held-out loss {first:.4f} -> {final.get('eval_loss', float('nan')):.4f}; "
            f"model in {args.output / 'model'}, loss curve {args.output / 'loss_curve.png'}")
    if world > 1:
        import torch.distributed as dist  # noqa: PLC0415

        dist.barrier()
        dist.destroy_process_group()
    return 0


def command(args: argparse.Namespace) -> int:
    """``unimask pretrain`` / ``python -m unimask.pretrain``: :func:`run`; when launched by
    ``torchrun`` the process then ends at once with ``os._exit`` (stdout/stderr flushed; every
    output file is already closed and fsynced).

    Why: gloo's worker threads outlive ``destroy_process_group`` (``ProcessGroupGloo`` has no
    ``shutdown``), and one of them may still be dropping the last collective's work, whose
    tensors hold Python objects; if that happens while the interpreter finalizes, taking the
    GIL kills the thread inside C++ and the process aborts ("terminate called without an
    active exception", SIGABRT) after a run that finished. Seen about once in 20 two-rank
    FSDP runs on a loaded 2-core machine (core dump: ``AsyncAllgatherCoalescedWork``
    destructor in ``ProcessGroupGloo::runLoop`` during ``Py_FinalizeEx``); the upstream
    discussion is pytorch/pytorch#179291. Skipping finalization removes the race."""
    code = run(args)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def main(argv: list[str] | None = None) -> int:
    """``python -m unimask.pretrain`` (the lead wires ``add_parser``/``run`` into ``unimask``); bad
    input is reported as ``unimask`` reports it (:func:`unimask.cli.run_command`)."""
    p = argparse.ArgumentParser(prog="unimask pretrain", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run_command("unimask pretrain", command, p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
