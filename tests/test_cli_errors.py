"""``unimask`` commands on bad input: one message naming the option or value on stderr, exit
status 2, no traceback; ``--max-length`` against the model's ``max_position_embeddings``.

Models: a tiny BERT directory (1 layer, hidden 32, ``max_position_embeddings`` 64) with the
MiniLM tokenizer, so a 200-word text is longer than the model can take. Oracles: the limits
worked by hand (64 positions; seq2seq ``64 - 32 - 3 = 29`` source tokens), HF ``tokenizers``
truncating at 64 for the clamped prediction, and the exception classes the library documents
as bad input (anything else must keep its traceback).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unimask.cli import main, run_command
from unimask.finetune import LabelMap, SequenceClassifier
from unimask.models import EncoderConfig, TransformerEncoder
from unimask.tokenizer import WordPieceTokenizer
from unimask.training import CheckpointError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

POSITIONS = 64
LONG = " ".join(["good"] * 200)  # 202 tokens with [CLS] and [SEP]


def _status(argv: list[str]) -> int:
    """``main(argv)``'s exit status, argparse's usage errors (``SystemExit``) included."""
    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code)


def _assert_user_error(capsys, argv: list[str], *fragments: str) -> str:
    code = _status(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    for f in fragments:
        assert f in err, err
    return err


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory, minilm_dir) -> Path:
    out = tmp_path_factory.mktemp("tinybert")
    torch.manual_seed(0)
    TransformerEncoder(EncoderConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=POSITIONS)).save_pretrained(out)
    WordPieceTokenizer.from_pretrained(minilm_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory, tiny_bert) -> Path:
    out = tmp_path_factory.mktemp("tinycls")
    torch.manual_seed(0)
    SequenceClassifier.from_pretrained(tiny_bert, LabelMap(["neg", "pos"]), num_labels=2).save_pretrained(out)
    WordPieceTokenizer.from_pretrained(tiny_bert).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("data")
    files = {
        "long_txt": (d / "long.txt", LONG + "\nshort text\n"),
        "train": (d / "train.jsonl", "".join(json.dumps({"text": f"{w} stuff " + LONG, "label": lab}) + "\n"
                                             for w, lab in [("good", "pos"), ("bad", "neg")] * 4)),
        "eval": (d / "eval.jsonl", "".join(json.dumps({"text": t, "label": lab}) + "\n"
                                           for t, lab in [("really good", "pos"), ("really bad", "neg")])),
        "s2s": (d / "s2s.jsonl", "".join(json.dumps({"source": s, "target": t}) + "\n"
                                         for s, t in [("hello world", "hi"), ("good morning", "morning"),
                                                      (LONG, "good")])),
        "faq": (d / "faq.jsonl", "".join(json.dumps({"question": q, "answer": a}) + "\n"
                                         for q, a in [("how do I log in", "use the form"), (LONG, "yes")])),
    }
    for path, text in files.values():
        path.write_text(text, encoding="utf-8")
    return {k: p for k, (p, _) in files.items()}


# ---------------------------------------------------------------------------------------------
# the one place that turns the library's bad-input exceptions into exit status 2


@pytest.mark.parametrize("error", [ValueError("--x 3 is bad"), FileNotFoundError(2, "No such file", "/no/such"),
                                   NotADirectoryError(20, "Not a directory", "/a/file/x"),
                                   CheckpointError("checkpoint /c.pt is corrupt")])
def test_run_command_reports_user_errors(capsys, error):
    def fail(_args):
        raise error

    assert run_command("unimask demo", fail, None) == 2
    err = capsys.readouterr().err
    assert err == f"unimask demo: {error}\n"


@pytest.mark.parametrize("error", [RuntimeError("a bug"), KeyError("a bug"), AttributeError("a bug"),
                                   OSError(28, "No space left on device")])
def test_run_command_keeps_tracebacks_of_other_errors(error):
    def fail(_args):
        raise error

    with pytest.raises(type(error)):
        run_command("unimask demo", fail, None)


# ---------------------------------------------------------------------------------------------
# --max-length against max_position_embeddings


def test_predict_rejects_max_length_beyond_the_model(capsys, tiny_classifier, data, tmp_path):
    out = tmp_path / "p.jsonl"
    _assert_user_error(capsys, ["predict", "--model", str(tiny_classifier), "--input", str(data["long_txt"]),
                                "--max-length", "1000", "--output", str(out)],
                       "--max-length 1000", f"limit of {POSITIONS}", f"max_position_embeddings {POSITIONS}")
    assert not out.exists()


def test_predict_default_max_length_is_cut_to_the_model(capsys, tiny_classifier, data, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    out = tmp_path / "p.jsonl"
    assert main(["predict", "--model", str(tiny_classifier), "--input", str(data["long_txt"]),
                 "--output", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"--max-length {POSITIONS}, the model's limit" in err and "instead of the default 128" in err
    got = [json.loads(x)["probs"] for x in out.read_text(encoding="utf-8").splitlines()]
    # oracle: HF tokenizers truncating at 64 tokens, the model run on those ids
    t = tokenizers.Tokenizer.from_file(str(tiny_classifier / "tokenizer.json"))
    t.no_padding()
    t.enable_truncation(POSITIONS)
    model = SequenceClassifier.from_pretrained(tiny_classifier).eval()
    for text, probs in zip([LONG, "short text"], got):
        ids = t.encode(text).ids
        assert len(ids) == min(POSITIONS, len(text.split()) + 2)
        with torch.no_grad():
            p = torch.softmax(model(torch.tensor([ids])).logits[0].float(), -1)
        assert [probs["neg"], probs["pos"]] == pytest.approx(p.tolist(), abs=1e-5)


def test_finetune_rejects_max_length_beyond_the_model(capsys, tiny_bert, data, tmp_path):
    out = tmp_path / "o"
    _assert_user_error(capsys, ["finetune", "--model", str(tiny_bert), "--train", str(data["train"]), "--eval",
                                str(data["eval"]), "--epochs", "1", "--output", str(out), "--max-length", "1000",
                                "--quiet"], "--max-length 1000", f"limit of {POSITIONS}")
    assert not out.exists()  # refused before training


def test_finetune_default_max_length_is_cut_to_the_model(capsys, tiny_bert, data, tmp_path):
    out = tmp_path / "o"
    assert main(["finetune", "--model", str(tiny_bert), "--train", str(data["train"]), "--eval", str(data["eval"]),
                 "--epochs", "1", "--batch-size", "4", "--output", str(out)]) == 0
    assert "instead of the default 128" in capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text())["config"]["max_length"] == POSITIONS


def test_seq2seq_source_length_leaves_room_for_the_target(capsys, tiny_bert, data, tmp_path):
    common = ["finetune", "--task", "seq2seq", "--model", str(tiny_bert), "--train", str(data["s2s"]), "--eval",
              str(data["s2s"]), "--epochs", "1", "--quiet"]
    room = POSITIONS - 32 - 3  # [CLS] source [SEP] target [SEP], --max-target-length 32 (the default)
    _assert_user_error(capsys, [*common, "--output", str(tmp_path / "a"), "--max-length", str(room + 1)],
                       f"--max-length {room + 1}", f"limit of {room}", "--max-target-length 32")
    _assert_user_error(capsys, [*common, "--output", str(tmp_path / "b"), "--max-target-length", "70"],
                       "--max-target-length 70")
    out = tmp_path / "ok"
    assert main([*common, "--output", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["unimask_task"]["max_source_length"] == room
    capsys.readouterr()
    # predict: the saved length by default, an explicit one validated the same way
    src = tmp_path / "src.txt"
    src.write_text(LONG + "\n", encoding="utf-8")
    assert main(["predict", "--model", str(out), "--input", str(src)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
    _assert_user_error(capsys, ["predict", "--model", str(out), "--input", str(src), "--max-length", "100"],
                       "--max-length 100", f"limit of {room}")


def test_faq_build_default_max_length_is_cut_to_the_model(capsys, tiny_bert, data, tmp_path):
    _assert_user_error(capsys, ["faq", "build", "--model", str(tiny_bert), "--data", str(data["faq"]), "--index",
                                str(tmp_path / "i0"), "--max-length", "300"], "--max-length 300")
    assert main(["faq", "build", "--model", str(tiny_bert), "--data", str(data["faq"]),
                 "--index", str(tmp_path / "i")]) == 0
    assert "instead of the default 256" in capsys.readouterr().err
    assert main(["faq", "query", "--index", str(tmp_path / "i"), LONG, "-k", "1"]) == 0


# ---------------------------------------------------------------------------------------------
# other bad arguments


def test_finetune_rejects_bad_optimizer_values(capsys, tiny_bert, data, tmp_path):
    common = ["finetune", "--model", str(tiny_bert), "--train", str(data["train"]), "--eval", str(data["eval"]),
              "--epochs", "1", "--output", str(tmp_path / "o"), "--quiet"]
    _assert_user_error(capsys, [*common, "--lr", "-1"], "argument --lr", "'-1'")
    _assert_user_error(capsys, [*common, "--lr", "nan"], "argument --lr", "'nan'")
    _assert_user_error(capsys, [*common, "--weight-decay", "-0.5"], "argument --weight-decay", "'-0.5'")
    _assert_user_error(capsys, [*common, "--warmup-frac", "2"], "argument --warmup-frac", "'2'")
    _assert_user_error(capsys, [*common, "--threads", "0"], "argument --threads", "'0'")
    file = tmp_path / "a_file"
    file.write_text("x")
    _assert_user_error(capsys, [*common[:-3], "--output", str(file), "--quiet"], f"--output {file}", "not a directory")


def test_predict_rejects_missing_output_directory(capsys, tiny_classifier, data):
    _assert_user_error(capsys, ["predict", "--model", str(tiny_classifier), "--input", str(data["long_txt"]),
                                "--output", "/nonexistent/dir/x.jsonl"], "/nonexistent/dir")


PRETRAIN = ["pretrain", "--max-documents", "40", "--batch-size", "4", "--steps", "2", "--hidden", "16", "--layers",
            "1", "--heads", "2", "--eval-every", "2", "--eval-batches", "1", "--checkpoint-every", "2",
            "--max-length", "16", "--device", "cpu", "--no-progress", "--warmup", "1"]


@pytest.mark.parametrize("flags, fragments", [
    (["--heads", "3"], ["--hidden 16", "--heads 3"]),
    (["--max-length", "4"], ["argument --max-length", "'4'"]),
    (["--grad-accum", "0"], ["argument --grad-accum", "'0'"]),
    (["--layers", "0"], ["argument --layers", "'0'"]),
    (["--lr", "-1"], ["argument --lr", "'-1'"]),
    (["--threads", "-1"], ["argument --threads", "'-1'"]),
    (["--precision", "fp16"], ["--precision fp16", "CUDA", "--precision bf16"]),
    (["--precision", "bf16", "--device", "meta"], ["--precision bf16", "CUDA or the CPU", "meta"]),
    (["--device", "bogus"], ["--device bogus"]),
    (["--vocab", "/nonexistent/vocab.txt"], ["--vocab /nonexistent/vocab.txt"]),
])
def test_pretrain_rejects_bad_arguments_before_training(capsys, tmp_path, flags, fragments):
    out = tmp_path / "run"
    _assert_user_error(capsys, [*PRETRAIN, "--output", str(out), *flags], *fragments)
    assert not out.exists()  # nothing was started


def test_pretrain_resume_from_a_corrupted_checkpoint_is_a_user_error(tmp_path):
    out = tmp_path / "run"
    assert main([*PRETRAIN, "--output", str(out)]) == 0
    ckpt = out / (out / "latest").read_text().strip()
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    # the console script itself (a subprocess): the message, status 2 and no traceback
    r = subprocess.run([sys.executable, "-m", "unimask", *PRETRAIN, "--output", str(out), "--resume", "--steps", "3"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert f"unimask pretrain: checkpoint {ckpt} is corrupt" in r.stderr, r.stderr


@pytest.mark.parametrize("device", ["cuda:1", "mps"])
def test_pretrain_under_torchrun_refuses_a_device_it_cannot_honour(monkeypatch, device):
    """torchrun gives each process cuda:LOCAL_RANK (or the CPU): a --device naming one GPU, or
    another kind of device, is a ValueError (a usage error, exit 2, for ``unimask pretrain``;
    it was silently replaced), raised before any process group is initialised. (Tested on the
    function: under torchrun's variables the command ends its process with ``os._exit``.)"""
    import torch.distributed as dist

    from unimask.cli import is_user_error
    from unimask.pretrain import _init_distributed

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ValueError, match=f"--device must be 'cuda'.*got {device!r}") as e:
        _init_distributed(device)
    assert is_user_error(e.value) and not dist.is_initialized()
