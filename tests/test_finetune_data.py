"""Data input (JSONL/CSV/TSV, errors naming row and field), label maps, and metrics vs
scikit-learn-style hand computations."""

from __future__ import annotations

import json

import pytest

from unimask.finetune import Example, LabelMap, load_examples
from unimask.finetune.metrics import accuracy, classification_report, exact_match, f1_scores, squad_f1


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_same_rows_from_jsonl_csv_tsv(tmp_path):
    rows = [{"text": "a, b", "pair": "x", "label": "pos"}, {"text": 'say "hi"', "pair": "y\tz", "label": "neg"}]
    j = _write(tmp_path / "d.jsonl", "".join(json.dumps(r) + "\n" for r in rows) + "\n")
    import csv

    for name, delim in (("d.csv", ","), ("d.tsv", "\t")):
        with open(tmp_path / name, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, ["text", "pair", "label"], delimiter=delim)
            w.writeheader()
            w.writerows(rows)
    got = [load_examples(p, text_pair_field="pair") for p in (j, tmp_path / "d.csv", tmp_path / "d.tsv")]
    for exs in got:
        assert [(e.text, e.text_pair, e.label) for e in exs] == [(r["text"], r["pair"], r["label"]) for r in rows]
    assert [e.row for e in got[0]] == [1, 2] and [e.row for e in got[1]] == [2, 3]  # csv row 1 is the header


@pytest.mark.parametrize("content,message", [
    ('{"text": "ok", "label": "a"}\n{"txt": "typo", "label": "a"}\n', "d.jsonl row 2: field 'text' is missing"),
    ('{"text": "ok", "label": "a"}\n{"text": "", "label": "a"}\n', "d.jsonl row 2: field 'text' is empty"),
    ('{"text": "ok", "label": "a"}\n{"text": 3, "label": "a"}\n', "d.jsonl row 2: field 'text' must be a string"),
    ('{"text": "ok", "label": "a"}\n{"text": "x"}\n', "d.jsonl row 2: field 'label' is missing"),
    ('{"text": "ok", "label": "a"}\n{"text": "x", "label": [1]}\n', "d.jsonl row 2: field 'label' must be a string"),
    ('{"text": "ok", "label": "a"}\n\n{"text": "x", "label": "a"\n', "d.jsonl row 3: not valid JSON"),
    ('["text", "label"]\n', "d.jsonl row 1: expected a JSON object, got list"),
])
def test_bad_rows_name_row_and_field(tmp_path, content, message):
    p = _write(tmp_path / "d.jsonl", content)
    with pytest.raises(ValueError) as e:
        load_examples(p)
    assert message in str(e.value)


def test_csv_errors_and_regression_labels(tmp_path):
    p = _write(tmp_path / "d.csv", "text,label\nfine,1.5\nbroken\n")
    with pytest.raises(ValueError, match=r"d.csv row 3: 1 fields but the header has 2"):
        load_examples(p)
    p = _write(tmp_path / "r.csv", "text,label\nfine,1.5\nbad,high\n")
    with pytest.raises(ValueError, match=r"r.csv row 3: field 'label' must be a number for regression, got 'high'"):
        load_examples(p, regression=True)
    p = _write(tmp_path / "ok.csv", "text,label\nfine,1.5\nmore,-2\n")
    assert [e.label for e in load_examples(p, regression=True)] == [1.5, -2.0]
    with pytest.raises(ValueError, match="extension"):
        load_examples(_write(tmp_path / "d.txt", "x"))
    with pytest.raises(FileNotFoundError):
        load_examples(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="no rows"):
        load_examples(_write(tmp_path / "e.jsonl", "\n"))


def test_int_labels_become_class_names_and_unlabelled_rows(tmp_path):
    p = _write(tmp_path / "d.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": "1"}\n{"text": "c"}\n')
    exs = load_examples(p, require_label=False)
    assert [e.label for e in exs] == ["1", "1", None]


def test_label_map_roundtrip_and_errors():
    lm = LabelMap.from_examples([Example("x", label="b"), Example("y", label="a"), Example("z", label="b")])
    assert lm.labels == ["a", "b"]
    assert LabelMap.from_config(lm.to_config()) == lm
    assert lm.to_config() == {"id2label": {"0": "a", "1": "b"}, "label2id": {"a": 0, "b": 1}, "num_labels": 2}
    assert lm.encode("b") == 1 and lm.decode(0) == "a"
    with pytest.raises(ValueError, match="row 7: label 'c' is not in the label map"):
        lm.encode("c", row=7)
    with pytest.raises(ValueError, match="duplicate"):
        LabelMap(["a", "a"])
    assert LabelMap.from_config({}) is None


def test_metrics_hand_computed():
    gold = ["a", "a", "b", "b", "c", "c"]
    pred = ["a", "b", "b", "b", "a", "c"]
    assert accuracy(pred, gold) == pytest.approx(4 / 6)
    f = f1_scores(pred, gold)
    # a: tp1 fp1 fn1 -> 0.5; b: tp2 fp1 fn0 -> p=2/3 r=1 f=0.8; c: tp1 fp0 fn1 -> p=1 r=.5 f=2/3
    assert f["f1_a"] == pytest.approx(0.5)
    assert f["f1_b"] == pytest.approx(0.8)
    assert f["f1_c"] == pytest.approx(2 / 3)
    assert f["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert f["micro_f1"] == pytest.approx(4 / 6)  # single-label: micro F1 == accuracy
    rep = classification_report(pred, gold, ["a", "b", "c", "d"])
    assert rep["f1_d"] == 0.0 and rep["accuracy"] == pytest.approx(4 / 6)
    with pytest.raises(ValueError):
        accuracy(["a"], ["a", "b"])
    # SQuAD normalisation: case, punctuation, articles
    assert exact_match(["The Eiffel Tower!", "paris"], ["eiffel tower", "Paris, France"]) == 0.5
    assert squad_f1(["the big red dog"], ["red dog"]) == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
