"""Argument checks shared by the fine-tuning modules and the command line (no imports from
the rest of the package, so any module can use them without an import cycle)."""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["check_number", "range_text"]


def range_text(lo: float | None, hi: float | None, lo_open: bool = False, hi_open: bool = False) -> str:
    """The interval from ``lo`` to ``hi`` as a message suffix: ``" in [0, 1)"``, ``" >= 1"``,
    ``" < 5"``, or ``""`` when unbounded."""
    if lo is not None and hi is not None:
        return f" in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f" {'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f" {'<' if hi_open else '<='} {hi}"
    return ""


def check_number(name: str, value: Any, lo: float | None = None, hi: float | None = None, *,
                 lo_open: bool = False, hi_open: bool = False, integer: bool = False,
                 shown: Any = None, wrong_type: type[Exception] = ValueError) -> Any:
    """``value`` of the argument (or :class:`~unimask.finetune.FinetuneConfig` field) ``name``
    as an ``int`` (``integer``) or a finite ``float`` in the interval from ``lo`` to ``hi``
    (``lo_open`` / ``hi_open``: bound excluded); otherwise a ``ValueError`` naming ``name`` and
    the value (``shown``, if given, instead of ``value``). A value of the wrong type (a bool is
    not a number, a float is not an int) raises ``wrong_type`` (``ValueError`` unless the caller
    asks for ``TypeError``) with the same message; NaN and infinities are refused."""
    what = ("an int" if integer else "a finite number") + range_text(lo, hi, lo_open, hi_open)
    msg = f"{name} must be {what}, got {value if shown is None else shown!r}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral if integer else numbers.Real):
        raise wrong_type(msg)
    x = int(value) if integer else float(value)
    if not math.isfinite(x) or (lo is not None and (x <= lo if lo_open else x < lo)) \
            or (hi is not None and (x >= hi if hi_open else x > hi)):
        raise ValueError(msg)
    return x
