"""Fine-tuning data: JSONL / CSV / TSV rows of ``(text[, text_pair], label)`` and label maps.

Every bad row raises ``ValueError`` naming the file, the 1-based row (line) number and the
field, e.g. ``train.jsonl row 7: field 'label' is missing (row has keys ['text'])``.
CSV/TSV files need a header line naming the fields. Label maps (label string <-> class id) are
built in sorted order for reproducibility and saved with the model (HF ``id2label`` /
``label2id`` in ``config.json``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Example", "LabelMap", "load_examples", "load_unlabeled", "detect_format"]


@dataclass(frozen=True)
class Example:
    """One row: ``text``, optional ``text_pair``, and ``label`` (str, float for regression,
    or None for unlabelled rows)."""

    text: str
    text_pair: str | None = None
    label: Any = None
    row: int = 0


def detect_format(path: str | Path) -> str:
    """``jsonl``, ``csv`` or ``tsv`` from the file extension (``.json``/``.jsonl``/``.ndjson``,
    ``.csv``, ``.tsv``/``.tab``)."""
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    if suffix in (".tsv", ".tab"):
        return "tsv"
    raise ValueError(f"cannot tell the format of {path} from its extension {suffix!r}; use .jsonl, .csv or .tsv "
                     "or pass fmt=")


def _rows(path: Path, fmt: str) -> Iterable[tuple[int, dict[str, Any]]]:
    with open(path, encoding="utf-8", newline="") as f:
        if fmt == "jsonl":
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path.name} row {n}: not valid JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(obj, dict):
                    raise ValueError(f"{path.name} row {n}: expected a JSON object, got {type(obj).__name__}")
                yield n, obj
        else:
            reader = csv.reader(f, delimiter="\t" if fmt == "tsv" else ",")
            header = next(reader, None)
            if header is None:
                return
            for n, values in enumerate(reader, 2):
                if not values:
                    continue
                if len(values) != len(header):
                    raise ValueError(f"{path.name} row {n}: {len(values)} fields but the header has {len(header)} "
                                     f"({header})")
                yield n, dict(zip(header, values))


def _text(obj: dict[str, Any], field: str, path: Path, n: int) -> str:
    if field not in obj:
        raise ValueError(f"{path.name} row {n}: field {field!r} is missing (row has keys {sorted(obj)})")
    value = obj[field]
    if not isinstance(value, str):
        raise ValueError(f"{path.name} row {n}: field {field!r} must be a string, got {type(value).__name__} {value!r}")
    if not value.strip():
        raise ValueError(f"{path.name} row {n}: field {field!r} is empty")
    return value


def load_examples(path: str | Path, text_field: str = "text", label_field: str | None = "label",
                  text_pair_field: str | None = None, fmt: str | None = None, regression: bool = False,
                  require_label: bool = True) -> list[Example]:
    """Read a JSONL/CSV/TSV file into :class:`Example` rows.

    Args:
        text_field, text_pair_field, label_field: column names (``text_pair_field`` for
            sentence pairs; ``label_field=None`` for unlabelled text).
        regression: labels must be numbers (floats) instead of class names.
        require_label: a missing label is an error (else the example's label is None).

    Labels are read as strings for classification (JSON ints become ``"1"``), so the same
    label map works for every format.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    fmt = fmt or detect_format(path)
    if fmt not in ("jsonl", "csv", "tsv"):
        raise ValueError(f"fmt must be 'jsonl', 'csv' or 'tsv', got {fmt!r}")
    out: list[Example] = []
    for n, obj in _rows(path, fmt):
        text = _text(obj, text_field, path, n)
        pair = _text(obj, text_pair_field, path, n) if text_pair_field else None
        label: Any = None
        if label_field is not None:
            if label_field not in obj or obj[label_field] is None or obj[label_field] == "":
                if require_label:
                    raise ValueError(f"{path.name} row {n}: field {label_field!r} is missing or empty "
                                     f"(row has keys {sorted(obj)})")
            else:
                raw = obj[label_field]
                if regression:
                    try:
                        label = float(raw)
                    except (TypeError, ValueError):
                        raise ValueError(f"{path.name} row {n}: field {label_field!r} must be a number for "
                                         f"regression, got {raw!r}") from None
                elif isinstance(raw, (str, int)) and not isinstance(raw, bool):
                    label = str(raw)
                else:
                    raise ValueError(f"{path.name} row {n}: field {label_field!r} must be a string or an int "
                                     f"class name, got {type(raw).__name__} {raw!r}")
        out.append(Example(text, pair, label, n))
    if not out:
        raise ValueError(f"{path} has no rows")
    return out


def load_unlabeled(path: str | Path, text_field: str = "text", text_pair_field: str | None = None) -> list[Example]:
    """Unlabeled texts (CVT's unlabeled data): a ``.txt`` file (one text per non-empty line)
    or a JSONL/CSV/TSV file read by :func:`load_examples` with no label field (other fields,
    labels included, are ignored). Returns label-less :class:`Example` rows."""
    path = Path(path)
    if path.suffix.lower() != ".txt":
        return load_examples(path, text_field, None, text_pair_field)
    if text_pair_field:
        raise ValueError(f"{path}: a .txt file holds single texts, not pairs (text_pair_field={text_pair_field!r}); "
                         "use a .jsonl/.csv/.tsv file with both fields")
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    with open(path, encoding="utf-8") as f:
        out = [Example(line.strip(), None, None, n) for n, line in enumerate(f, 1) if line.strip()]
    if not out:
        raise ValueError(f"{path} has no texts (only empty lines)")
    return out


class LabelMap:
    """Class names <-> ids, in the order given (:meth:`from_examples` sorts them)."""

    def __init__(self, labels: Sequence[str]) -> None:
        labels = [str(x) for x in labels]
        if len(set(labels)) != len(labels):
            raise ValueError(f"duplicate labels in {labels}")
        if not labels:
            raise ValueError("a label map needs at least one label")
        self.labels = labels
        self._ids = {x: i for i, x in enumerate(labels)}

    @classmethod
    def from_examples(cls, examples: Iterable[Example]) -> LabelMap:
        return cls(sorted({e.label for e in examples if e.label is not None}))

    def __len__(self) -> int:
        return len(self.labels)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelMap) and other.labels == self.labels

    def __repr__(self) -> str:
        return f"LabelMap({self.labels})"

    def encode(self, label: str, row: int | None = None) -> int:
        """Class id of ``label``; ``ValueError`` naming the row for an unknown label."""
        try:
            return self._ids[str(label)]
        except KeyError:
            where = f"row {row}: " if row is not None else ""
            raise ValueError(f"{where}label {label!r} is not in the label map {self.labels}") from None

    def decode(self, i: int) -> str:
        return self.labels[int(i)]

    def to_config(self) -> dict[str, Any]:
        """HF ``config.json`` keys: ``id2label`` (str ids), ``label2id``, ``num_labels``."""
        return {"id2label": {str(i): x for i, x in enumerate(self.labels)},
                "label2id": dict(self._ids), "num_labels": len(self.labels)}

    @classmethod
    def from_config(cls, d: dict[str, Any]) -> LabelMap | None:
        """Inverse of :meth:`to_config` (None when the config has no ``id2label``)."""
        id2label = d.get("id2label")
        if not id2label:
            return None
        return cls([id2label[str(i)] for i in range(len(id2label))])
