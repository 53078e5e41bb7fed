"""``unimask finetune`` end to end and the acceptance experiment (small version).

Task: which Debian fortunes file (computers / food / love / politics) a fortune comes from;
fixture built by tests/fixtures/finetune/build_fortunes.py (see its docstring). The real
MiniLM checkpoint fine-tuned must beat the same architecture trained from scratch by a clear
margin on the held-out split, with the same protocol. The accuracy written to metrics.json is
checked against an independent re-evaluation of the saved model with
``transformers.BertForSequenceClassification`` and HF ``tokenizers``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from unimask.cli import main


pytestmark = pytest.mark.usefixtures("one_torch_thread")


FIXTURES = Path(__file__).parent / "fixtures" / "finetune"
N_TRAIN, N_EVAL = 160, 80  # the fixture is interleaved by label: a prefix is balanced


@pytest.fixture(scope="module")
def small_split(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("fortunes")
    for name, n in (("fortunes_train.jsonl", N_TRAIN), ("fortunes_eval.jsonl", N_EVAL)):
        lines = (FIXTURES / name).read_text(encoding="utf-8").splitlines()[:n]
        (d / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return d / "fortunes_train.jsonl", d / "fortunes_eval.jsonl"


def _finetune(minilm_dir, train, evals, out, *extra) -> dict:
    argv = ["finetune", "--model", str(minilm_dir), "--train", str(train), "--eval", str(evals),
            "--task", "classify", "--epochs", "2", "--output", str(out), "--text-field", "text",
            "--label-field", "label", "--max-length", "48", "--batch-size", "16", "--lr", "1e-4", "--quiet",
            *extra]
    assert main(argv) == 0
    return json.loads((out / "metrics.json").read_text())


def _hf_accuracy(out: Path, evals: Path) -> float:
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    model = transformers.BertForSequenceClassification.from_pretrained(out).eval()
    tok = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(48)
    rows = [json.loads(line) for line in evals.read_text().splitlines()]
    correct = 0
    with torch.no_grad():
        for r in rows:
            e = tok.encode(r["text"])
            logits = model(input_ids=torch.tensor([e.ids]), token_type_ids=torch.tensor([e.type_ids])).logits
            correct += model.config.id2label[int(logits.argmax())] == r["label"]
    return correct / len(rows)


def test_pretrained_minilm_beats_from_scratch_on_fortunes(minilm_dir, small_split, tmp_path):
    train, evals = small_split
    pre = _finetune(minilm_dir, train, evals, tmp_path / "pre")
    scratch = _finetune(minilm_dir, train, evals, tmp_path / "scratch", "--from-scratch")
    print(f"fortunes (4 classes, {N_TRAIN} train / {N_EVAL} held out): "
          f"pretrained {pre['accuracy']:.3f}, from scratch {scratch['accuracy']:.3f}")
    assert pre["accuracy"] >= scratch["accuracy"] + 0.25, (pre["accuracy"], scratch["accuracy"])
    assert pre["accuracy"] >= 0.6
    # metrics.json agrees with an independent evaluation of the saved model (transformers)
    assert _hf_accuracy(tmp_path / "pre", evals) == pytest.approx(pre["accuracy"], abs=1.5 / N_EVAL)
    cfg = json.loads((tmp_path / "pre" / "config.json").read_text())
    assert cfg["id2label"] == {"0": "computers", "1": "food", "2": "love", "3": "politics"}
    assert cfg["unimask_task"]["task"] == "classify"
    assert scratch["from_scratch"] is True and len(pre["history"]) == 2 * N_TRAIN // 16
    assert {"macro_f1", "micro_f1", "f1_food"} <= set(pre)


def test_finetune_cli_reports_bad_rows(minilm_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine", "label": "a"}\n{"text": "no label here"}\n', encoding="utf-8")
    rc = main(["finetune", "--model", str(minilm_dir), "--train", str(bad), "--eval", str(bad), "--epochs", "1",
               "--output", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "bad.jsonl row 2" in err and "'label'" in err
    unseen = tmp_path / "unseen.jsonl"
    unseen.write_text('{"text": "x", "label": "zzz"}\n', encoding="utf-8")
    ok = tmp_path / "ok.jsonl"
    ok.write_text('{"text": "x", "label": "a"}\n{"text": "y", "label": "b"}\n', encoding="utf-8")
    rc = main(["finetune", "--model", str(minilm_dir), "--train", str(ok), "--eval", str(unseen), "--epochs", "1",
               "--output", str(tmp_path / "o")])
    assert rc == 2 and "['zzz'] never occur" in capsys.readouterr().err


def test_finetune_cli_strategy_flags_run_and_are_recorded(minilm_dir, tmp_path):
    """Every strategy flag together on a tiny run: the recorded history shows each one acting."""
    rows = [json.loads(x) for x in (FIXTURES / "fortunes_train.jsonl").read_text().splitlines()[:24]]
    data = tmp_path / "tiny.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    argv = ["finetune", "--model", str(minilm_dir), "--train", str(data), "--eval", str(data), "--epochs", "2",
            "--output", str(tmp_path / "o"), "--max-length", "32", "--batch-size", "8", "--quiet",
            "--slanted-triangular", "--discriminative-lr", "--gradual-unfreeze", "--aux-lm-weight", "siatl",
            "--lm-finetune-steps", "2", "--pooling", "concat", "--lr", "1e-3"]
    assert main(argv) == 0
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    h = m["history"]
    assert len(m["lm_losses"]) == 2
    assert [x["unfrozen"] for x in h] == [1, 1, 1, 2, 2, 2]
    T = len(h)
    for x in h:
        assert x["gamma"] == pytest.approx(torch.exp(torch.linspace(-1.6, -2.3, T, dtype=torch.float64))[x["step"]].item())
        assert x["loss"] == pytest.approx(x["task_loss"] + x["gamma"] * x["lm_loss"], rel=1e-5)
        assert max(x["lrs"]) / min(x["lrs"]) == pytest.approx(2.6 ** 7, rel=1e-6)  # head vs embeddings
    assert m["config"]["schedule"] == "stlr"
    assert (tmp_path / "o" / "vocab.txt").is_file()


def test_finetune_cli_mtdnn_extra_task(minilm_dir, tmp_path):
    """--extra-task: one shared encoder, each step one task, tasks in proportion to batches."""
    rows = [json.loads(x) for x in (FIXTURES / "fortunes_train.jsonl").read_text().splitlines()[:40]]
    main_file = tmp_path / "topic.jsonl"
    main_file.write_text("".join(json.dumps(r) + "\n" for r in rows[:16]), encoding="utf-8")
    # second task from the same real texts: does the fortune contain an attribution ("--")?
    extra_file = tmp_path / "attrib.jsonl"
    extra_file.write_text("".join(json.dumps({"text": r["text"], "label": str("--" in r["text"])}) + "\n"
                                  for r in rows[16:40]), encoding="utf-8")
    argv = ["finetune", "--model", str(minilm_dir), "--train", str(main_file), "--eval", str(main_file),
            "--epochs", "1", "--output", str(tmp_path / "o"), "--max-length", "32", "--batch-size", "8",
            "--quiet", "--extra-task", f"attrib={extra_file}"]
    assert main(argv) == 0
    h = json.loads((tmp_path / "o" / "metrics.json").read_text())["history"]
    assert sorted((x["task"], x["batch"]) for x in h) == [("attrib", 0), ("attrib", 1), ("attrib", 2),
                                                         ("main", 0), ("main", 1)]
    assert main(argv[:-2] + ["--extra-task", "nofile"]) == 2


def test_finetune_cli_pack(minilm_dir, tmp_path, capsys):
    """--pack trains a classifier on packed rows (recorded in the config); tasks without a packed
    path (qa, seq2seq) refuse the flag."""
    rows = [json.loads(x) for x in (FIXTURES / "fortunes_train.jsonl").read_text().splitlines()[:24]]
    data = tmp_path / "tiny.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    argv = ["finetune", "--model", str(minilm_dir), "--train", str(data), "--eval", str(data), "--epochs", "1",
            "--output", str(tmp_path / "o"), "--max-length", "32", "--batch-size", "8", "--quiet", "--pack"]
    assert main(argv) == 0
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["config"]["pack"] is True and len(m["history"]) == 3 and 0.0 <= m["accuracy"] <= 1.0
    assert all(x["loss"] == x["loss"] for x in m["history"])  # finite, not NaN
    capsys.readouterr()
    assert main(["finetune", "--task", "qa", "--model", str(minilm_dir), "--train", str(data), "--eval", str(data),
                 "--output", str(tmp_path / "t"), "--pack"]) == 2
    assert "--task qa does not take --pack" in capsys.readouterr().err
