"""CVT cross-view consistency in classification fine-tuning: ``unimask finetune --cvt-unlabeled``.

Task: the fortunes fixture (tests/fixtures/finetune/, see build_fortunes.py); the unlabeled
texts are the held-out file's texts with the labels dropped. Oracles: the encoder calls seen
by a spy (restricted attention modes, inputs = HF ``tokenizers``' encodings of the unlabeled
texts), the saved view heads re-applied by hand (mean pooling + linear, KL by its formula),
a control run without CVT, and the causal structure of the views (a change to the right of
position ``t`` cannot reach position ``t`` of the forward view).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from unimask.cli import main
from unimask.finetune import CrossViewHeads, FinetuneConfig, SequenceClassifier, finetune_classifier, load_task_model
from unimask.finetune.data import Example, LabelMap
from unimask.masks import BIDIRECTIONAL, LEFT_TO_RIGHT, RIGHT_TO_LEFT
from unimask.models import EncoderConfig, TransformerEncoder

FIXTURES = Path(__file__).parent / "fixtures" / "finetune"
N_TRAIN, N_UNLABELED, MAX_LEN = 48, 32, 32


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("fortunes_cvt")
    train = (FIXTURES / "fortunes_train.jsonl").read_text(encoding="utf-8").splitlines()[:N_TRAIN]
    evals = (FIXTURES / "fortunes_eval.jsonl").read_text(encoding="utf-8").splitlines()[:N_UNLABELED]
    (d / "train.jsonl").write_text("\n".join(train) + "\n", encoding="utf-8")
    (d / "eval.jsonl").write_text("\n".join(evals) + "\n", encoding="utf-8")
    # the unlabeled texts: the held-out texts without their labels
    unl = [json.dumps({"text": json.loads(x)["text"]}) for x in evals]
    (d / "unlabeled.jsonl").write_text("\n".join(unl) + "\n", encoding="utf-8")
    return {"train": d / "train.jsonl", "eval": d / "eval.jsonl", "unlabeled": d / "unlabeled.jsonl"}


def _argv(minilm_dir, split, out, *extra) -> list[str]:
    return ["finetune", "--model", str(minilm_dir), "--train", str(split["train"]), "--eval", str(split["eval"]),
            "--task", "classify", "--epochs", "3", "--output", str(out), "--max-length", str(MAX_LEN),
            "--batch-size", "16", "--lr", "5e-4", "--schedule", "constant", "--quiet", *extra]


def _hf_encodings(minilm_dir, texts: list[str]) -> list[tuple[int, ...]]:
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer.from_file(str(Path(minilm_dir) / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(MAX_LEN)
    return [tuple(tok.encode(t).ids) for t in texts]


def _kl_by_hand(model: SequenceClassifier, head_w: dict[str, torch.Tensor], ids: list[tuple[int, ...]]) -> float:
    """Mean over texts and views of KL(p_primary || p_view), one unpadded text at a time."""
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for row in ids:
            x = torch.tensor([row])
            p = torch.softmax(model(x).logits[0].double(), -1)
            for view, mode in (("left_to_right", LEFT_TO_RIGHT), ("right_to_left", RIGHT_TO_LEFT)):
                h = model.encoder(x, attn_mode=torch.tensor([mode])).last_hidden_state[0].mean(0)
                q = torch.softmax((head_w[f"{view}.weight"] @ h + head_w[f"{view}.bias"]).double(), -1)
                total += float((p * (p.log() - q.log())).sum())
                n += 1
    return total / n


def test_cvt_flag_end_to_end_restricted_views_and_lower_kl(minilm_dir, split, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    unl_texts = [json.loads(x)["text"] for x in split["unlabeled"].read_text().splitlines()]
    unl_ids = _hf_encodings(minilm_dir, unl_texts)
    seen: dict[int, set] = {BIDIRECTIONAL: set(), LEFT_TO_RIGHT: set(), RIGHT_TO_LEFT: set()}
    forward = TransformerEncoder.forward

    def spy(self, input_ids, token_type_ids=None, attention_mask=None, attn_mode=None, src_len=None, *a, **kw):
        modes = attn_mode.tolist() if attn_mode is not None else [BIDIRECTIONAL] * input_ids.shape[0]
        lens = attention_mask.sum(1).tolist() if attention_mask is not None else [input_ids.shape[1]] * len(modes)
        for m, row, n in zip(modes, input_ids.tolist(), lens):
            seen[m].add(tuple(row[: int(n)]))
        return forward(self, input_ids, token_type_ids, attention_mask, attn_mode, src_len, *a, **kw)

    monkeypatch.setattr(TransformerEncoder, "forward", spy)
    out = tmp_path / "cvt"
    assert main(_argv(minilm_dir, split, out, "--cvt-unlabeled", str(split["unlabeled"]), "--cvt-weight", "2")) == 0
    monkeypatch.setattr(TransformerEncoder, "forward", forward)

    # the consistency steps ran the encoder in both restricted modes, on the unlabeled texts only
    for mode in (LEFT_TO_RIGHT, RIGHT_TO_LEFT):
        assert seen[mode] == set(unl_ids), mode  # 9 steps x 16 rows cycle through all 32 texts
    train_ids = set(_hf_encodings(minilm_dir, [json.loads(x)["text"] for x in split["train"].read_text().splitlines()]))
    assert not (seen[LEFT_TO_RIGHT] & train_ids)
    assert train_ids <= seen[BIDIRECTIONAL]

    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["cvt_unlabeled"] == str(split["unlabeled"]) and m["config"]["cvt_weight"] == 2.0
    assert m["cvt"]["n_unlabeled"] == N_UNLABELED and m["cvt"]["weight"] == 2.0
    assert m["cvt"]["views"] == ["left_to_right", "right_to_left"] and m["cvt"]["heads_file"] == "cvt_heads.safetensors"
    steps = 3 * math.ceil(N_TRAIN / 16)
    assert len(m["history"]) == steps and all(h["cvt_loss"] is not None for h in m["history"])

    # the saved model is the primary classifier alone: unimask and transformers load it unchanged
    transformers = pytest.importorskip("transformers")
    ours = load_task_model(out).eval()
    hf = transformers.BertForSequenceClassification.from_pretrained(out).eval()
    x = torch.tensor([unl_ids[0]])
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, hf(input_ids=x).logits, atol=1e-4, rtol=1e-4)
    heads = load_file(str(out / "cvt_heads.safetensors"))
    assert sorted(heads) == ["left_to_right.bias", "left_to_right.weight", "right_to_left.bias", "right_to_left.weight"]
    kl_cvt = _kl_by_hand(ours, heads, unl_ids)
    assert kl_cvt == pytest.approx(m["cvt"]["final_kl"]["mean"], rel=1e-3, abs=1e-6)  # the report is right

    # control: the same run without CVT; its view heads stay at their initialisation
    control = tmp_path / "control"
    assert main(_argv(minilm_dir, split, control)) == 0
    mc = json.loads((control / "metrics.json").read_text())
    assert mc["cvt"] is None and mc["config"]["cvt_unlabeled"] is None
    assert not (control / "cvt_heads.safetensors").exists()
    ctrl_model = load_task_model(control)
    torch.manual_seed(0)
    fresh = CrossViewHeads(ctrl_model.config.hidden_size, ctrl_model.num_labels)
    fresh.apply(ctrl_model.encoder._init_weights)
    kl_control = _kl_by_hand(ctrl_model, {k.removeprefix("heads."): v for k, v in fresh.state_dict().items()}, unl_ids)
    print(f"cross-view KL on the unlabeled texts: CVT {kl_cvt:.4f}, control {kl_control:.4f}; "
          f"accuracy CVT {m['accuracy']:.3f}, control {mc['accuracy']:.3f}")
    assert kl_cvt < 0.5 * kl_control, (kl_cvt, kl_control)


def _tiny_cfg() -> EncoderConfig:
    return EncoderConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0)


def test_view_heads_see_only_their_side_and_pool_their_positions():
    torch.manual_seed(0)
    enc = TransformerEncoder(_tiny_cfg()).eval()
    heads = CrossViewHeads(32, 3).eval()
    ids = torch.randint(5, 120, (1, 10))
    changed = ids.clone()
    changed[0, 6] = (ids[0, 6] + 7) % 115 + 5  # change token 6
    with torch.no_grad():
        f1, f2 = heads.position_logits(enc, "left_to_right", ids), heads.position_logits(enc, "left_to_right", changed)
        b1, b2 = heads.position_logits(enc, "right_to_left", ids), heads.position_logits(enc, "right_to_left", changed)
        assert torch.equal(f1[0, :6], f2[0, :6])  # positions left of 6 cannot see it
        assert not torch.allclose(f1[0, 6:], f2[0, 6:], atol=1e-4)
        assert torch.equal(b1[0, 7:], b2[0, 7:])  # positions right of 6 cannot see it
        assert not torch.allclose(b1[0, :7], b2[0, :7], atol=1e-4)
        # the pooled prediction is the mean of the per-position ones over the real tokens, and
        # right padding (seq_len from the attention mask) changes nothing
        padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], 1)
        am = torch.cat([torch.ones(1, 10), torch.zeros(1, 4)], 1).long()
        for view, per_pos in (("left_to_right", f1), ("right_to_left", b1)):
            torch.testing.assert_close(heads(enc, view, ids)[0], per_pos[0].mean(0), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(heads(enc, view, padded, am)[0], per_pos[0].mean(0), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="view must be one of"):
        heads.position_logits(enc, "full", ids)
    with pytest.raises(ValueError, match="num_labels"):
        CrossViewHeads(32, 1)


@pytest.mark.parametrize("extra, message", [
    (["--cvt-weight", "-1"], "--cvt-weight must be a finite number > 0, got '-1'"),
    (["--cvt-weight", "nan"], "--cvt-weight must be a finite number > 0, got 'nan'"),
    (["--cvt-weight", "0"], "--cvt-weight must be a finite number > 0, got '0'"),
    (["--cvt-weight", "heavy"], "--cvt-weight must be a number, got 'heavy'"),
])
def test_bad_cvt_weight_is_a_usage_error(minilm_dir, split, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as e:
        main(_argv(minilm_dir, split, tmp_path / "o", "--cvt-unlabeled", str(split["unlabeled"]), *extra))
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_cvt_inputs_give_clear_errors(minilm_dir, split, tmp_path, capsys):
    def fails(*extra) -> str:
        assert main(_argv(minilm_dir, split, tmp_path / "o", *extra)) == 2
        assert not (tmp_path / "o" / "metrics.json").exists()
        return capsys.readouterr().err

    assert "--cvt-weight needs --cvt-unlabeled" in fails("--cvt-weight", "0.5")
    assert f"data file not found: {tmp_path / 'nope.txt'}" in fails("--cvt-unlabeled", str(tmp_path / "nope.txt"))
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\n")
    assert "blank.txt has no texts" in fails("--cvt-unlabeled", str(blank))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    assert "bad.jsonl row 2: field 'text' is missing" in fails("--cvt-unlabeled", str(bad))
    odd = tmp_path / "texts.md"
    odd.write_text("hello\n")
    assert "cannot tell the format" in fails("--cvt-unlabeled", str(odd))
    reg = tmp_path / "reg.jsonl"
    reg.write_text('{"text": "one", "label": 1.5}\n{"text": "two", "label": -2}\n')
    argv = _argv(minilm_dir, {**split, "train": reg, "eval": reg}, tmp_path / "o", "--cvt-unlabeled",
                 str(split["unlabeled"]))
    argv[argv.index("--task") + 1] = "regress"
    assert main(argv) == 2
    assert "--cvt-unlabeled needs --task classify" in capsys.readouterr().err


def test_cvt_config_and_api_errors(tmp_path):
    for w in (0, -0.5, float("inf"), "1"):
        with pytest.raises(ValueError, match="cvt_weight must be a finite number > 0"):
            FinetuneConfig(cvt_weight=w)
    with pytest.raises(TypeError, match="cvt_unlabeled must be a file path"):
        FinetuneConfig(cvt_unlabeled=["a text"])
    txt = tmp_path / "u.txt"
    txt.write_text("first text\n\nsecond text\n")
    assert FinetuneConfig(cvt_unlabeled=txt).cvt_unlabeled == str(txt)
    torch.manual_seed(0)
    reg = SequenceClassifier(_tiny_cfg(), problem_type="regression")
    train = [Example("a b", label=1.0)]

    class Tok:  # never reached: the CVT checks come first
        def encode_batch(self, *a, **k):
            raise AssertionError("tokenized before validating CVT inputs")

    with pytest.raises(ValueError, match="not defined for regression"):
        finetune_classifier(reg, Tok(), train, FinetuneConfig(epochs=1), unlabeled=["some text"])
    clf = SequenceClassifier(_tiny_cfg(), LabelMap(["x", "y"]))
    with pytest.raises(ValueError, match="at least one unlabeled text"):
        finetune_classifier(clf, Tok(), [Example("a", label="x")], FinetuneConfig(epochs=1), unlabeled=[])
    with pytest.raises(ValueError, match="non-empty strings"):
        finetune_classifier(clf, Tok(), [Example("a", label="x")], FinetuneConfig(epochs=1), unlabeled=["ok", "  "])
