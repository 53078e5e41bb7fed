"""The ``unimask`` command: ``info``, ``bench``, ``pretrain``, ``finetune``, ``predict``, ``faq``."""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import platform
import sys
from collections.abc import Callable
from pathlib import Path

from ._checks import range_text

__all__ = ["main", "build_parser", "run_command", "is_user_error"]


def _version_of(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cmd_info(_args: argparse.Namespace) -> int:
    """Print versions, the native build, and whether CUDA and the Triton kernels are usable."""
    from . import __version__, _native  # noqa: PLC0415

    print(f"unimask {__version__}")
    print(f"python {platform.python_version()} ({sys.executable})")
    print(f"platform {platform.platform()}")
    print("native build:")
    for key, value in _native.build_info():
        print(f"  {key}: {value}")
    for dist in ("numpy", "torch", "triton", "tokenizers", "transformers"):
        print(f"{dist} {_version_of(dist)}")
    try:
        import torch  # noqa: PLC0415

        cuda = torch.cuda.is_available()
        dev = torch.cuda.get_device_name(0) if cuda else "-"
        print(f"cuda available: {cuda} ({dev})")
    except ImportError as e:  # pragma: no cover - torch is a dependency
        cuda = False
        print(f"cuda available: False (torch import failed: {e})")
    try:
        from .kernels import unified_attention as _k  # noqa: F401, PLC0415

        kernels = "importable"
    except ImportError as e:
        kernels = f"not importable ({e})"
    print(f"triton kernels: {kernels}; used for attention: {cuda and kernels == 'importable'}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Run every benchmark case (unimask vs its reference, same run) and print the ratio table."""
    from .benchmarking import all_cases, format_table, run_case  # noqa: PLC0415
    from .corpus import demo_corpus_paths  # noqa: PLC0415

    corpus = [Path(p) for p in args.corpus] if args.corpus else demo_corpus_paths()
    for p in corpus:
        if not p.is_file():
            print(f"unimask bench: corpus file not found: {p}", file=sys.stderr)
            return 2
    cases = [c for c in all_cases() if not args.filter or args.filter in c.name]
    if not cases:
        print(f"unimask bench: no benchmark matches {args.filter!r}", file=sys.stderr)
        return 2
    from tqdm import tqdm  # noqa: PLC0415

    results = []
    for case in tqdm(cases, desc="benchmarks", unit="case", file=sys.stderr):
        results.append(run_case(case, corpus, min_time=args.min_time))
    print(f"corpus: {', '.join(str(p) for p in corpus)}")
    print(format_table(results))
    return 0


def number(kind: type = int, minimum: float | None = None, maximum: float | None = None) -> Callable[[str], float]:
    """An ``argparse`` ``type``: a finite ``kind`` (``int`` or ``float``) in ``[minimum, maximum]``;
    anything else is a usage error naming the option and the value (exit status 2)."""
    what = ("an integer" if kind is int else "a number") + range_text(minimum, maximum)

    def parse(value: str) -> float:
        try:
            x = kind(value)
        except ValueError:
            x = None
        if x is None or not math.isfinite(x) or (minimum is not None and x < minimum) \
                or (maximum is not None and x > maximum):
            raise argparse.ArgumentTypeError(f"must be {what}, got {value!r}")
        return x

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unimask", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="versions, native build, CUDA/Triton availability")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("bench", help="benchmarks vs reference libraries, same run, ratio table")
    p.add_argument("--corpus", nargs="+", metavar="FILE", help="text files (default: bundled demo corpus)")
    p.add_argument("--filter", default="", help="only cases whose name contains this text")
    p.add_argument("--min-time", type=float, default=0.5, help="seconds to time each side (default 0.5)")
    p.set_defaults(func=cmd_bench)

    from . import pretrain  # noqa: PLC0415 - imports torch; only needed to build the parser

    pretrain.add_parser(sub)
    from . import finetune_cli  # noqa: PLC0415 - registers finetune, faq
    finetune_cli.add_parser(sub)
    return parser


#: ``OSError`` subclasses by which a file or directory the user named cannot be used
PATH_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


def is_user_error(e: BaseException) -> bool:
    """Whether ``e`` is one of the ways the library reports bad input: ``ValueError`` (a value),
    :data:`PATH_ERRORS` (a path) or :class:`unimask.training.CheckpointError` (a missing,
    truncated or corrupted checkpoint). Anything else is a bug and keeps its traceback."""
    if isinstance(e, (ValueError, *PATH_ERRORS)):
        return True
    training = sys.modules.get("unimask.training")  # imported by whatever raised a CheckpointError
    return training is not None and isinstance(e, training.CheckpointError)


def run_command(prog: str, func, args: argparse.Namespace) -> int:
    """``func(args)`` as the exit status; a user error (:func:`is_user_error`) is printed as
    ``prog: message`` on stderr and gives exit status 2, without a traceback."""
    try:
        return int(func(args) or 0)
    except Exception as e:  # noqa: BLE001 - re-raised unless it is a user error
        if not is_user_error(e):
            raise
        print(f"{prog}: {str(e) or type(e).__name__}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``unimask`` console script. Bad input (see :func:`is_user_error`)
    gives one message on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    return run_command(f"unimask {args.command}", args.func, args)
