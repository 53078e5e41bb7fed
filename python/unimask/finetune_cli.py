"""``unimask finetune``, ``unimask predict`` and ``unimask faq``: fine-tune a classifier or a
tagger, run it on new data, build and query an FAQ index.

``unimask finetune --model DIR --train FILE --eval FILE --task classify --epochs N --output OUT``
trains a :class:`unimask.finetune.SequenceClassifier` on an HF BERT directory (``--task tag``: a
:class:`unimask.finetune.TokenClassifier` on tagged sentences, JSONL ``tokens``/``tags`` or CoNLL
columns, scored by word accuracy and entity F1, loadable with
``transformers.BertForTokenClassification``), writes
``OUT/metrics.json`` (accuracy, per-class/macro/micro F1 on the eval file, the training
history), and saves the model (+ label map in ``config.json``, + tokenizer) in ``OUT``,
loadable with ``SequenceClassifier.from_pretrained(OUT)`` (and, with ``--pooling cls``, with
``transformers.BertForSequenceClassification``). With ``--cvt-unlabeled FILE`` (CVT) the
auxiliary view heads go to ``OUT/cvt_heads.safetensors``, a side file the model loaders ignore.

``unimask faq build --model DIR --data FILE --index OUT`` encodes the questions of a JSONL/CSV/
TSV file (fields ``question``, ``answer``) once; ``unimask faq query --index OUT "text" -k 5``
prints the top-k entries as JSON lines.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .cli import number, run_command

__all__ = ["add_finetune_parser", "add_predict_parser", "add_faq_parser", "run_finetune", "run_predict", "run_faq",
           "add_parser", "run"]

#: CVT view heads written next to the model (``{view}.weight`` / ``{view}.bias``), not loaded by it
CVT_HEADS_FILE = "cvt_heads.safetensors"
#: ``--max-length`` of ``finetune`` / ``predict`` when none is given (cut to what the model holds)
DEFAULT_MAX_LENGTH = 128
#: ``faq build --max-length`` when none is given (sentence-transformers' max_seq_length of MiniLM)
FAQ_MAX_LENGTH = 256
#: seq2seq rows are ``[CLS] source [SEP] target [SEP]``
SEQ2SEQ_SPECIAL_TOKENS = 3


def _aux_weight(value: str) -> str | float:
    """``--aux-lm-weight``: ``siatl`` or a finite number >= 0 (``nan``/``inf`` are usage errors)."""
    if value == "siatl":
        return value
    try:
        return number(float, 0)(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"--aux-lm-weight must be 'siatl' or a finite number >= 0, "
                                         f"got {value!r}") from None


def _cvt_weight(value: str) -> float:
    try:
        w = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--cvt-weight must be a number, got {value!r}") from None
    if not math.isfinite(w) or w <= 0:
        raise argparse.ArgumentTypeError(f"--cvt-weight must be a finite number > 0, got {value!r}")
    return w


def add_finetune_parser(sub) -> argparse.ArgumentParser:
    """Register ``finetune`` on an ``add_subparsers()`` object."""
    p = sub.add_parser("finetune", help="fine-tune a BERT model directory: classifier, regressor, tagger, extractive QA or "
                            "UNILM seq2seq",
                       description=run_finetune.__doc__)
    p.add_argument("--model", required=True, help="HF BERT-style model directory (config.json, weights, vocab)")
    p.add_argument("--train", required=True, help="training file (.jsonl, .csv or .tsv)")
    p.add_argument("--eval", required=True, help="evaluation file (same format)")
    p.add_argument("--task", default="classify", choices=("classify", "regress", "tag", "qa", "seq2seq"),
                   help="classify (cross-entropy), regress (one float output, MSE), tag (one tag per word: "
                        "NER / POS; files are JSONL with word and tag lists, or CoNLL columns), qa "
                        "(extractive QA; SQuAD .json or JSON lines with question, context, answers) or seq2seq "
                        "(UNILM source -> target generation; rows with source and target fields)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--output", required=True, help="output directory (model, tokenizer, metrics.json)")
    p.add_argument("--from-scratch", action="store_true", help="keep the model's config but initialise weights randomly")
    p.add_argument("--text-field", default=None, help="field of the text (default 'text'; --task tag: the word list, "
                                                       "default 'tokens')")
    p.add_argument("--text-pair-field", default=None, help="second text of a pair (cross-encoder)")
    p.add_argument("--label-field", default=None, help="field of the label (default 'label'; --task tag: the tag "
                                                        "list, default 'tags')")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=number(float, 0), default=5e-5)
    p.add_argument("--weight-decay", type=number(float, 0), default=0.01)
    p.add_argument("--max-length", type=int, default=None,
                   help=f"tokens per example, [CLS]/[SEP] included (seq2seq: source tokens); at most the model's "
                        f"max_position_embeddings (seq2seq: less --max-target-length + {SEQ2SEQ_SPECIAL_TOKENS}); "
                        f"default {DEFAULT_MAX_LENGTH}, or that limit when smaller")
    p.add_argument("--pooling", default="cls", choices=("cls", "concat", "mean"),
                   help="cls: BERT pooler; concat: ULMFiT [last, max, mean]; mean")
    p.add_argument("--schedule", default="linear", choices=("linear", "stlr", "constant"),
                   help="linear warmup+decay (BERT) or slanted triangular (ULMFiT)")
    p.add_argument("--slanted-triangular", action="store_true", help="same as --schedule stlr")
    p.add_argument("--warmup-frac", type=number(float, 0, 1), default=0.1)
    p.add_argument("--discriminative-lr", action="store_true", help="ULMFiT per-layer rates, /2.6 per layer down")
    p.add_argument("--gradual-unfreeze", action="store_true", help="ULMFiT gradual unfreezing, one layer group per epoch")
    p.add_argument("--aux-lm-weight", type=_aux_weight, default=None, metavar="siatl|FLOAT",
                   help="auxiliary masked-LM loss weight during task training (siatl: 0.2 -> 0.1)")
    p.add_argument("--lm-finetune-steps", type=int, default=0, help="ULMFiT step 2: MLM steps on the task text first")
    p.add_argument("--extra-task", action="append", default=[], metavar="NAME=FILE",
                   help="MT-DNN: another labelled file sharing the encoder (own head; repeatable)")
    p.add_argument("--cvt-unlabeled", default=None, metavar="FILE",
                   help="CVT: unlabeled texts (.txt one per line, or .jsonl/.csv/.tsv with --text-field); "
                        "after each task step the left_to_right / right_to_left views' heads are trained "
                        "to match the full model's prediction on an unlabeled mini-batch")
    p.add_argument("--cvt-weight", type=_cvt_weight, default=None, metavar="FLOAT",
                   help="weight of the CVT consistency loss (default 1.0; needs --cvt-unlabeled); with --task tag "
                        "the views' per-token heads match the primary tags at every token")
    p.add_argument("--doc-stride", type=int, default=None,
                   help="qa: tokens shared by neighbouring windows of a long context (default: --max-length / 4)")
    p.add_argument("--max-answer-length", type=int, default=30, help="qa: longest answer in tokens")
    p.add_argument("--null-threshold", type=float, default=None,
                   help="qa, SQuAD 2.0: answer '' when the no-answer score beats the best span by more than this "
                        "(and score questions without an answer)")
    p.add_argument("--max-target-length", type=int, default=32,
                   help="seq2seq: target tokens kept for training and generated at most")
    p.add_argument("--num-beams", type=int, default=1, help="seq2seq: beam size of the decoding (1 = greedy)")
    p.add_argument("--mask-prob", type=float, default=0.7,
                   help="seq2seq: probability of masking each target token (UNILM: 0.7)")
    p.add_argument("--pack", action="store_true",
                   help="classify/regress/tag: pack each batch's examples into rows of --max-length (fewer padded "
                        "tokens, the same training; unimask.packing)")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute each encoder layer's activations in the backward instead of keeping them "
                        "(less memory, one more forward per step; the same training)")
    p.add_argument("--grad-accum", type=int, default=1,
                   help="micro-batches of --batch-size per optimizer step (effective batch = both multiplied)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                   help="bf16: autocast the forward passes (mixed precision; fp32 weights and optimizer)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=number(int, 1), default=None, help="torch intra-op threads")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run_finetune)
    return p


def run_finetune(args: argparse.Namespace) -> int:
    """Fine-tune and evaluate; exit 2 with a clear message on bad input (the arguments are checked
    before training: ``--max-length`` against the model's ``max_position_embeddings``, an output
    path that is a file). The errors the library raises for bad input (``ValueError``, a missing
    file) are reported the same way by :func:`unimask.cli.run_command`."""
    import torch  # noqa: PLC0415

    from .finetune import (  # noqa: PLC0415
        LabelMap,
        SequenceClassifier,
        finetune_classifier,
        load_examples,
        load_unlabeled,
    )
    from .tokenizer import WordPieceTokenizer  # noqa: PLC0415

    if args.threads:
        torch.set_num_threads(args.threads)
    log = (lambda _s: None) if args.quiet else (lambda s: print(s, file=sys.stderr))
    if Path(args.output).exists() and not Path(args.output).is_dir():
        print(f"unimask finetune: --output {args.output} is a file, not a directory", file=sys.stderr)
        return 2
    if args.task == "tag":
        return _run_tagging(args, log)
    if args.task == "qa":
        return _run_qa(args, log)
    if args.task == "seq2seq":
        return _run_seq2seq(args, log)
    args.text_field = args.text_field or "text"
    args.label_field = args.label_field or "label"
    regression = args.task == "regress"
    try:
        train = load_examples(args.train, args.text_field, args.label_field, args.text_pair_field, regression=regression)
        evals = load_examples(args.eval, args.text_field, args.label_field, args.text_pair_field, regression=regression)
        label_map = None if regression else LabelMap.from_examples(train)
        if label_map is not None:
            unknown = sorted({e.label for e in evals} - set(label_map.labels))
            if unknown:
                raise ValueError(f"{args.eval}: labels {unknown} never occur in {args.train} (labels: {label_map.labels})")
        unlabeled = None
        if args.cvt_weight is not None and args.cvt_unlabeled is None:
            raise ValueError("--cvt-weight needs --cvt-unlabeled FILE (the unlabeled texts of CVT)")
        if args.cvt_unlabeled is not None:
            if regression:
                raise ValueError("--cvt-unlabeled needs --task classify or tag (CVT matches class or tag "
                                 "distributions)")
            unlabeled = load_unlabeled(args.cvt_unlabeled, args.text_field, args.text_pair_field)
        extra = {}
        for spec in args.extra_task:
            name, sep, path = spec.partition("=")
            if not sep or not name or not path:
                raise ValueError(f"--extra-task must be NAME=FILE, got {spec!r}")
            extra[name] = load_examples(path, args.text_field, args.label_field, args.text_pair_field)
        tokenizer = WordPieceTokenizer.from_pretrained(args.model)
        torch.manual_seed(args.seed)
        model = SequenceClassifier.from_pretrained(
            args.model, label_map, from_scratch=args.from_scratch, pooling=args.pooling,
            problem_type="regression" if regression else "classification",
            num_labels=None if regression else len(label_map))
        args.max_length = _fit_max_length(model, args.max_length, log)
        cfg = _finetune_config(args, cvt_unlabeled=args.cvt_unlabeled, cvt_text_field=args.text_field,
                               cvt_weight=1.0 if args.cvt_weight is None else args.cvt_weight)
    except (ValueError, FileNotFoundError, TypeError) as e:
        print(f"unimask finetune: {e}", file=sys.stderr)
        return 2
    if not _to_device(model, args.device):
        return 2
    t0 = time.perf_counter()
    result = finetune_classifier(model, tokenizer, train, cfg, evals, log, extra_tasks=extra, unlabeled=unlabeled)
    out = _save_model(args.output, model, tokenizer)
    _save_cvt_heads(out, result)
    _write_metrics(out, args, t0, result, lm_losses=result["lm_losses"], cvt=result["cvt"])
    summary = {k: v for k, v in result["eval"].items() if not k.startswith("f1_")}
    print(json.dumps(summary))
    return 0


def _finetune_config(args: argparse.Namespace, **extra: Any):
    """The :class:`~unimask.finetune.FinetuneConfig` of the command line's schedule flags."""
    from .finetune import FinetuneConfig  # noqa: PLC0415

    return FinetuneConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        max_length=args.max_length, schedule="stlr" if args.slanted_triangular else args.schedule,
        warmup_frac=args.warmup_frac, discriminative_lr=args.discriminative_lr,
        gradual_unfreeze=args.gradual_unfreeze, aux_lm_weight=args.aux_lm_weight,
        lm_finetune_steps=args.lm_finetune_steps, seed=args.seed, log_every=0 if args.quiet else 10,
        precision=args.precision, grad_accum=args.grad_accum, pack=args.pack,
        gradient_checkpointing=args.gradient_checkpointing, **extra)


def _fit_max_length(model, given: int | None, note: Callable[[str], None], default: int = DEFAULT_MAX_LENGTH,
                    reserved: int = 0, reserved_for: str = "", minimum: int = 2,
                    default_from: str = "the default") -> int:
    """``--max-length`` for ``model``, whose position table ends at ``max_position_embeddings``
    (less ``reserved`` positions, taken by ``reserved_for``): ``given`` when it fits and is at
    least ``minimum``, else a ``ValueError`` naming it (rejected before any work, instead of a
    failure in the first batch long enough to exceed the table); without one, ``default`` (named
    ``default_from``) cut to that limit, with a ``note`` when cut (as transformers caps a tokenizer
    at ``model_max_length``)."""
    positions = model.config.max_position_embeddings
    limit = positions - reserved
    room = f"max_position_embeddings {positions}" + (f" less {reserved} for {reserved_for}" if reserved else "")
    if limit < minimum:
        raise ValueError(f"the model's {room} leaves {max(limit, 0)} positions for --max-length "
                         f"(at least {minimum} needed)")
    if given is None:
        if default > limit:
            note(f"--max-length {limit}, the model's limit ({room}), instead of {default_from} {default}")
            return limit
        return default
    if given < minimum:
        raise ValueError(f"--max-length must be >= {minimum}, got {given}")
    if given > limit:
        raise ValueError(f"--max-length {given} exceeds the model's limit of {limit} ({room})")
    return given


#: whether each task-specific flag of ``finetune`` was given
_GIVEN = {
    "--text-field": lambda a: a.text_field is not None,
    "--label-field": lambda a: a.label_field is not None,
    "--text-pair-field": lambda a: a.text_pair_field is not None,
    "--extra-task": lambda a: bool(a.extra_task),
    "--cvt-unlabeled": lambda a: a.cvt_unlabeled is not None,
    "--cvt-weight": lambda a: a.cvt_weight is not None,
    "--aux-lm-weight": lambda a: a.aux_lm_weight is not None,
    "--lm-finetune-steps": lambda a: a.lm_finetune_steps > 0,
    "--pooling": lambda a: a.pooling != "cls",
    "--pack": lambda a: a.pack,
}


def _refuse_flags(args: argparse.Namespace, task: str, flags: tuple[str, ...]) -> None:
    """``ValueError`` naming those of ``flags`` that were given, which ``--task task`` does not take."""
    given = [f for f in flags if _GIVEN[f](args)]
    if given:
        raise ValueError(f"--task {task} does not take {', '.join(given)}")


def _write_metrics(out: Path, args: argparse.Namespace, t0: float, result: dict[str, Any], **fields: Any) -> None:
    """``out/metrics.json``: the eval report, the run (files, model, seconds, config, per-step
    history) and the task's own ``fields``."""
    metrics = dict(result["eval"])
    metrics.update(fields)
    metrics.update(train_seconds=time.perf_counter() - t0, model=str(args.model), from_scratch=args.from_scratch,
                   train_file=str(args.train), eval_file=str(args.eval), config=result["config"],
                   history=result["history"])
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n", encoding="utf-8")


def _save_cvt_heads(out: Path, result: dict[str, Any]) -> None:
    """CVT's view heads, when the run had them: a side file, never part of the model's weights."""
    heads = result.get("cvt_heads")
    if heads is None:
        return
    from .models.checkpoint import save_safetensors  # noqa: PLC0415

    pooling = "per-token" if result["cvt"].get("per_token") else "mean"
    save_safetensors(heads.heads.state_dict(), out / CVT_HEADS_FILE,
                     {"format": "pt", "views": ",".join(heads.views), "pooling": pooling})
    result["cvt"]["heads_file"] = CVT_HEADS_FILE


def _to_device(model, device: str | None, prog: str = "unimask finetune") -> bool:
    """Move ``model`` to ``device`` (default: CUDA when available); False, with the reason on
    stderr, when that device cannot be used."""
    import torch  # noqa: PLC0415

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model.to(device)
    except (RuntimeError, AssertionError) as e:
        print(f"{prog}: cannot use device {device!r}: {e}", file=sys.stderr)
        return False
    return True


def _save_model(output: str, model, tokenizer) -> Path:
    """Write the model and its tokenizer to ``output`` (created) and return it."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _fit_source_length(model, given: int | None, max_target_length: int, note: Callable[[str], None],
                       default: int = DEFAULT_MAX_LENGTH, target_from: str = "--max-target-length",
                       default_from: str = "the default") -> int:
    """Source tokens of a seq2seq run (:func:`_fit_max_length`): ``[CLS] source [SEP] target [SEP]``
    is trained and generated inside the model's ``max_position_embeddings``; ``target_from``
    names where ``max_target_length`` comes from."""
    return _fit_max_length(model, given, note, default, reserved=max_target_length + SEQ2SEQ_SPECIAL_TOKENS,
                           reserved_for=f"{target_from} {max_target_length} + {SEQ2SEQ_SPECIAL_TOKENS} "
                                        "special tokens", minimum=1, default_from=default_from)


def _run_seq2seq(args: argparse.Namespace, log) -> int:
    """``--task seq2seq``: UNILM source -> target fine-tuning (see :mod:`unimask.finetune.seq2seq`)."""
    import torch  # noqa: PLC0415

    from .finetune import load_examples  # noqa: PLC0415
    from .finetune.seq2seq import finetune_seq2seq, seq2seq_finetuner  # noqa: PLC0415
    from .models import EncoderConfig, UnifiedLM  # noqa: PLC0415
    from .tokenizer import WordPieceTokenizer  # noqa: PLC0415

    try:
        _refuse_flags(args, "seq2seq", ("--pack", "--text-pair-field", "--extra-task", "--cvt-unlabeled", "--cvt-weight",
                                        "--aux-lm-weight", "--lm-finetune-steps", "--pooling"))
        if args.max_target_length < 1 or args.num_beams < 1 or not 0 < args.mask_prob <= 1:
            raise ValueError(f"--max-target-length and --num-beams must be >= 1 and --mask-prob in (0, 1], got "
                             f"{args.max_target_length}, {args.num_beams}, {args.mask_prob}")
        source, target = args.text_field or "source", args.label_field or "target"
        train = load_examples(args.train, source, target)
        evals = load_examples(args.eval, source, target)
        tokenizer = WordPieceTokenizer.from_pretrained(args.model)
        torch.manual_seed(args.seed)
        if args.from_scratch:
            config = EncoderConfig.from_json_file(Path(args.model) / "config.json")
            config.type_vocab_size = max(config.type_vocab_size, 6)
            model = UnifiedLM(config)
        else:
            model = UnifiedLM.from_pretrained(args.model)
        ft = seq2seq_finetuner(model, tokenizer, args.mask_prob)
        args.max_length = _fit_source_length(model, args.max_length, args.max_target_length, log)
        cfg = _finetune_config(args)
    except (ValueError, FileNotFoundError, TypeError) as e:
        print(f"unimask finetune: {e}", file=sys.stderr)
        return 2
    if not _to_device(model, args.device):
        return 2
    t0 = time.perf_counter()
    result = finetune_seq2seq(ft, tokenizer, train, cfg, evals, args.max_length, args.max_target_length,
                              args.num_beams, log)
    out = _save_model(args.output, model, tokenizer)
    cfg_path = out / "config.json"
    d = json.loads(cfg_path.read_text(encoding="utf-8"))
    d["unimask_task"] = {"task": "seq2seq", "max_source_length": args.max_length,
                         "max_target_length": args.max_target_length, "num_beams": args.num_beams,
                         "mask_prob": args.mask_prob, "source_field": source}
    cfg_path.write_text(json.dumps(d, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    _write_metrics(out, args, t0, result, task="seq2seq", max_target_length=args.max_target_length,
                   num_beams=args.num_beams, mask_prob=args.mask_prob)
    print(json.dumps({k: v for k, v in result["eval"].items() if k != "samples"}))
    return 0


def _check_doc_stride(args: argparse.Namespace) -> None:
    """``--doc-stride`` (default ``--max-length / 4``) against the resolved ``--max-length``."""
    if args.doc_stride is None:
        args.doc_stride = args.max_length // 4
    if not 0 <= args.doc_stride < args.max_length - 2:
        raise ValueError(f"--doc-stride must be in [0, --max-length - 2) = [0, {args.max_length - 2}), "
                         f"got {args.doc_stride}")


def _run_qa(args: argparse.Namespace, log) -> int:
    """``--task qa``: extractive QA on SQuAD-format files (see :mod:`unimask.finetune.qa`)."""
    import torch  # noqa: PLC0415

    from .finetune import QuestionAnswering  # noqa: PLC0415
    from .finetune.qa import finetune_qa, load_squad  # noqa: PLC0415
    from .tokenizer import WordPieceTokenizer  # noqa: PLC0415

    try:
        _refuse_flags(args, "qa", ("--pack", "--text-field", "--label-field", "--text-pair-field", "--extra-task",
                                   "--cvt-unlabeled", "--cvt-weight", "--aux-lm-weight", "--lm-finetune-steps",
                                   "--pooling"))
        if args.max_answer_length < 1:
            raise ValueError(f"--max-answer-length must be >= 1, got {args.max_answer_length}")
        train, evals = load_squad(args.train), load_squad(args.eval)
        if not any(e.answers for e in train):
            raise ValueError(f"{args.train}: no question has an answer")
        unanswered = [e.id for e in evals if not e.answers]
        if unanswered and args.null_threshold is None:
            raise ValueError(f"{args.eval}: questions {unanswered[:5]} have no gold answer to score against "
                             "(SQuAD 2.0 data: pass --null-threshold)")
        tokenizer = WordPieceTokenizer.from_pretrained(args.model)
        torch.manual_seed(args.seed)
        model = QuestionAnswering.from_pretrained(args.model, from_scratch=args.from_scratch,
                                                  max_answer_length=args.max_answer_length)
        args.max_length = _fit_max_length(model, args.max_length, log)
        _check_doc_stride(args)
        cfg = _finetune_config(args)
    except (ValueError, FileNotFoundError, TypeError) as e:
        print(f"unimask finetune: {e}", file=sys.stderr)
        return 2
    if not _to_device(model, args.device):
        return 2
    t0 = time.perf_counter()
    # a ValueError here (a question that leaves a window no more context than the stride) is
    # reported by unimask.cli.run_command
    result = finetune_qa(model, tokenizer, train, cfg, evals, args.doc_stride, log, args.null_threshold)
    out = _save_model(args.output, model, tokenizer)
    _write_metrics(out, args, t0, result, task="qa", doc_stride=args.doc_stride, windows=result["windows"],
                   null_threshold=args.null_threshold)
    print(json.dumps(result["eval"]))
    return 0


def _run_tagging(args: argparse.Namespace, log) -> int:
    """``--task tag``: a token classifier on tagged sentences (see :mod:`unimask.finetune.tagging`)."""
    import torch  # noqa: PLC0415

    from .finetune import (  # noqa: PLC0415
        TokenClassifier,
        finetune_tagger,
        load_tagged,
        tag_label_map,
    )
    from .tokenizer import WordPieceTokenizer  # noqa: PLC0415

    try:
        _refuse_flags(args, "tag", ("--text-pair-field", "--extra-task", "--pooling"))
        if args.cvt_weight is not None and args.cvt_unlabeled is None:
            raise ValueError("--cvt-weight needs --cvt-unlabeled FILE (the unlabeled texts of CVT)")
        words_field, tags_field = args.text_field or "tokens", args.label_field or "tags"
        train = load_tagged(args.train, words_field, tags_field)
        evals = load_tagged(args.eval, words_field, tags_field)
        label_map = tag_label_map(train)
        unknown = sorted({t for s in evals for t in s.tags} - set(label_map.labels))
        if unknown:
            raise ValueError(f"{args.eval}: tags {unknown} never occur in {args.train} (tags: {label_map.labels})")
        unlabeled = None
        if args.cvt_unlabeled is not None:  # plain texts (.txt lines, or the "text" field)
            from .finetune import load_unlabeled  # noqa: PLC0415

            unlabeled = [e.text for e in load_unlabeled(args.cvt_unlabeled, "text")]
        tokenizer = WordPieceTokenizer.from_pretrained(args.model)
        torch.manual_seed(args.seed)
        model = TokenClassifier.from_pretrained(args.model, label_map, from_scratch=args.from_scratch,
                                                num_labels=len(label_map))
        args.max_length = _fit_max_length(model, args.max_length, log)
        cfg = _finetune_config(args, cvt_unlabeled=args.cvt_unlabeled, cvt_text_field="text",
                               cvt_weight=1.0 if args.cvt_weight is None else args.cvt_weight)
    except (ValueError, FileNotFoundError, TypeError) as e:
        print(f"unimask finetune: {e}", file=sys.stderr)
        return 2
    if not _to_device(model, args.device):
        return 2
    t0 = time.perf_counter()
    result = finetune_tagger(model, tokenizer, train, cfg, evals, log, unlabeled=unlabeled)
    out = _save_model(args.output, model, tokenizer)
    _save_cvt_heads(out, result)
    _write_metrics(out, args, t0, result, task="tag", tags=label_map.labels, lm_losses=result["lm_losses"],
                   cvt=result["cvt"])
    print(json.dumps({k: v for k, v in result["eval"].items() if not k.startswith("f1_")}))
    return 0


def add_faq_parser(sub) -> argparse.ArgumentParser:
    """Register ``faq build`` / ``faq query`` on an ``add_subparsers()`` object."""
    p = sub.add_parser("faq", help="build or query a Siamese FAQ retrieval index")
    fsub = p.add_subparsers(dest="faq_command", required=True)
    b = fsub.add_parser("build", help="encode the FAQ questions once into an index directory")
    b.add_argument("--model", required=True, help="HF BERT-style model directory (a sentence encoder)")
    b.add_argument("--data", required=True, help="FAQ file (.jsonl/.csv/.tsv) with question and answer fields")
    b.add_argument("--index", required=True, help="output index directory")
    b.add_argument("--question-field", default="question")
    b.add_argument("--answer-field", default="answer")
    b.add_argument("--pooling", default="mean", choices=("mean", "cls", "max"))
    b.add_argument("--max-length", type=int, default=None,
                   help=f"tokens per question, [CLS]/[SEP] included, at most the model's max_position_embeddings "
                        f"(default {FAQ_MAX_LENGTH}, or that limit when smaller)")
    q = fsub.add_parser("query", help="top-k FAQ entries for a question")
    q.add_argument("--index", required=True)
    q.add_argument("question")
    q.add_argument("-k", type=int, default=5)
    q.add_argument("--search-dtype", default="float32", choices=("float32", "bfloat16"),
                   help="bfloat16: scan a bfloat16 copy, re-score a shortlist in float32 (faster)")
    p.set_defaults(func=run_faq)
    return p


def run_faq(args: argparse.Namespace) -> int:
    """``faq build`` / ``faq query``."""
    from .finetune.data import load_examples  # noqa: PLC0415
    from .finetune.siamese import FAQIndex, SiameseEncoder  # noqa: PLC0415

    try:
        if args.faq_command == "build":
            rows = load_examples(args.data, args.question_field, args.answer_field)
            enc = SiameseEncoder.from_pretrained(args.model, pooling=args.pooling)
            enc.max_length = _fit_max_length(enc.encoder, args.max_length,
                                             lambda s: print(f"unimask faq: {s}", file=sys.stderr), FAQ_MAX_LENGTH)
            index = FAQIndex.build(enc, [r.text for r in rows], [r.label for r in rows],
                                   model_dir=str(Path(args.model).resolve()))
            index.save(args.index)
            print(f"indexed {len(index)} questions into {args.index}", file=sys.stderr)
            return 0
        index = FAQIndex.load(args.index, search_dtype=args.search_dtype)
        for hit in index.query(args.question, args.k):
            print(json.dumps({"rank_score": round(hit.score, 6), "index": hit.index, "question": hit.question,
                              "answer": hit.answer}, ensure_ascii=False))
        return 0
    except (ValueError, FileNotFoundError) as e:
        print(f"unimask faq: {e}", file=sys.stderr)
        return 2


def add_predict_parser(sub) -> argparse.ArgumentParser:
    """Register ``predict`` on an ``add_subparsers()`` object."""
    p = sub.add_parser("predict", help="run a fine-tuned model (unimask finetune's output) on a file",
                       description=run_predict.__doc__)
    p.add_argument("--model", required=True, help="directory written by unimask finetune (or save_pretrained)")
    p.add_argument("--input", required=True,
                   help="classify/regress: .jsonl/.csv/.tsv rows or a .txt file of one text a line; "
                        "tag: .jsonl rows with a word list, CoNLL columns (word first), or a .txt file of one "
                        "sentence a line (split on whitespace); qa: SQuAD .json or JSON lines (question, "
                        "context; answers optional)")
    p.add_argument("--output", default=None, help="JSONL file to write (default: standard output); its directory "
                                                  "must exist")
    p.add_argument("--text-field", default=None, help="field of the text (default 'text'; tag: 'tokens')")
    p.add_argument("--text-pair-field", default=None, help="second text of a pair (cross-encoder)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, default=None,
                   help=f"tokens per input, [CLS]/[SEP] included, at most the model's max_position_embeddings "
                        f"(default {DEFAULT_MAX_LENGTH}, or that limit when smaller); seq2seq: source tokens "
                        "(default: the fine-tuning run's)")
    p.add_argument("--doc-stride", type=int, default=None,
                   help="qa: tokens shared by neighbouring windows (default: --max-length / 4)")
    p.add_argument("--null-threshold", type=float, default=None,
                   help="qa, SQuAD 2.0: answer '' when the no-answer score beats the best span by more than this")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.set_defaults(func=run_predict)
    return p


def _read_sentences(path: str, words_field: str) -> list:
    """Word lists to tag: ``.txt`` lines split on whitespace, else :func:`load_tagged` without tags."""
    from .finetune import TaggedSentence, load_tagged  # noqa: PLC0415

    p = Path(path)
    if p.suffix.lower() != ".txt":
        return load_tagged(p, words_field, None)
    if not p.is_file():
        raise FileNotFoundError(f"no such file: {p}")
    out = [TaggedSentence(line.split(), row=n) for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
           if line.strip()]
    if not out:
        raise ValueError(f"{p} has no sentences (only empty lines)")
    return out


def _saved_task(model_dir: str) -> dict[str, Any]:
    """The ``unimask_task`` block of a model directory's ``config.json`` (empty if none)."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no config.json in {model_dir}")
    return json.loads(path.read_text(encoding="utf-8")).get("unimask_task") or {}


def _predict_seq2seq(args: argparse.Namespace, saved: dict[str, Any], note: Callable[[str], None]) -> int:
    """``predict`` for a seq2seq model: ``{"output"}`` per source (``.txt`` lines or the source
    field of JSONL/CSV/TSV rows); lengths and beams are the fine-tuning run's, the source length
    ``--max-length`` when given (source and target must fit the model's positions)."""
    from .finetune import load_unlabeled  # noqa: PLC0415
    from .finetune.seq2seq import generate_texts, seq2seq_finetuner  # noqa: PLC0415
    from .models import UnifiedLM  # noqa: PLC0415
    from .tokenizer import WordPieceTokenizer  # noqa: PLC0415

    try:
        rows = load_unlabeled(args.input, args.text_field or saved.get("source_field", "source"))
        tokenizer = WordPieceTokenizer.from_pretrained(args.model)
        model = UnifiedLM.from_pretrained(args.model)
        ft = seq2seq_finetuner(model, tokenizer)
        max_target_length = int(saved.get("max_target_length", 32))
        source_length = _fit_source_length(model, args.max_length, max_target_length, note,
                                           int(saved.get("max_source_length", DEFAULT_MAX_LENGTH)),
                                           "the fine-tuning run's max_target_length",
                                           "the fine-tuning run's max_source_length")
    except (ValueError, FileNotFoundError, TypeError) as e:
        print(f"unimask predict: {e}", file=sys.stderr)
        return 2
    if not _to_device(model, args.device, "unimask predict"):
        return 2
    outputs = generate_texts(ft, tokenizer, [r.text for r in rows], source_length, max_target_length,
                             int(saved.get("num_beams", 1)), args.batch_size)
    _write_lines(args.output, [{"output": o} for o in outputs])
    return 0


def _write_lines(output: str | None, lines: list[dict[str, Any]]) -> None:
    """``lines`` as JSON lines into ``output`` (standard output when ``None``)."""
    text = "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines)
    if output:
        Path(output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


def run_predict(args: argparse.Namespace) -> int:
    """Predictions of a fine-tuned model, one JSON line per input row: ``{"label", "score",
    "probs"}`` for a classifier (softmax probabilities by label name), ``{"value"}`` for a
    regressor, ``{"tokens", "tags"}`` for a tagger, ``{"id", "answer", "score"}`` for extractive
    QA. Exit 2 with a clear message on bad input: checked first (``--output``'s directory,
    ``--max-length`` against the model's ``max_position_embeddings``), or raised by the library
    (``ValueError``, a missing file) and reported by :func:`unimask.cli.run_command`."""
    import torch  # noqa: PLC0415

    from .finetune import load_task_model, load_unlabeled, predict_tags  # noqa: PLC0415
    from .finetune.trainer import predict  # noqa: PLC0415
    from .tokenizer import WordPieceTokenizer  # noqa: PLC0415

    def note(text: str) -> None:
        print(f"unimask predict: {text}", file=sys.stderr)

    try:
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
        if args.output and not Path(args.output).parent.is_dir():
            raise ValueError(f"--output {args.output}: no such directory {Path(args.output).parent}")
        saved = _saved_task(args.model)
        if saved.get("task") == "seq2seq":
            return _predict_seq2seq(args, saved, note)
        model = load_task_model(args.model)
        tokenizer = WordPieceTokenizer.from_pretrained(args.model)
        task = getattr(model, "task", None)
        if task not in ("tag", "classify", "qa"):
            raise ValueError(f"{args.model} holds a {task!r} model; predict runs classifiers, regressors, taggers "
                             "and QA models")
        args.max_length = _fit_max_length(model, args.max_length, note)
        if task == "tag":
            if args.text_pair_field is not None:
                raise ValueError("a tagger takes single sentences: --text-pair-field does not apply")
            rows = _read_sentences(args.input, args.text_field or "tokens")
        elif task == "classify":
            rows = load_unlabeled(args.input, args.text_field or "text", args.text_pair_field)
        else:
            from .finetune.qa import load_squad  # noqa: PLC0415

            _check_doc_stride(args)
            rows = load_squad(args.input)
    except (ValueError, FileNotFoundError, TypeError) as e:
        print(f"unimask predict: {e}", file=sys.stderr)
        return 2
    if not _to_device(model, args.device, "unimask predict"):
        return 2
    if task == "tag":
        tags = predict_tags(model, tokenizer, rows, args.max_length, args.batch_size)
        lines = [{"tokens": list(r.words), "tags": t} for r, t in zip(rows, tags)]
    elif task == "qa":
        from .finetune.qa import predict_answers  # noqa: PLC0415

        # a ValueError here (a question too long for its window) is reported by unimask.cli.run_command
        answers = predict_answers(model, tokenizer, rows, args.max_length, args.doc_stride, args.batch_size,
                                  args.null_threshold)
        lines = [{"id": r.id, "answer": a, "score": s} for r, (a, s) in zip(rows, answers)]
    else:
        logits = predict(model, tokenizer, rows, args.max_length, args.batch_size)
        if model.problem_type == "regression":
            lines = [{"value": float(v)} for v in logits[:, 0].tolist()]
        else:
            probs = torch.softmax(logits.float(), -1)
            names = model.label_map.labels
            lines = [{"label": names[int(p.argmax())], "score": float(p.max()),
                      "probs": {n: float(x) for n, x in zip(names, p.tolist())}} for p in probs]
    _write_lines(args.output, lines)
    return 0


def add_parser(subparsers) -> None:
    """Register the subcommands (``finetune``, ``predict``, ``faq``) on the ``unimask`` CLI."""
    add_finetune_parser(subparsers)
    add_predict_parser(subparsers)
    add_faq_parser(subparsers)


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``finetune`` / ``predict`` / ``faq`` command as ``unimask`` does
    (:func:`unimask.cli.run_command`); returns the exit status."""
    return run_command(f"unimask {getattr(args, 'command', None) or 'finetune'}", args.func, args)
