"""``unimask predict``: a saved classifier, regressor or tagger run on a file.

Oracle: the same saved directory loaded by transformers (``BertForSequenceClassification`` /
``BertForTokenClassification``) and fed by HF ``tokenizers`` (``is_pretokenized=True`` for
word lists). The heads are freshly initialised (seeded): what is checked is that the command
reads every input format, runs the model that was saved and writes its outputs faithfully.
"""

from __future__ import annotations

import json

import pytest
import torch

from unimask.cli import main
from unimask.finetune import LabelMap, SequenceClassifier, TokenClassifier

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Je ne regrette rien", "42 is the answer, 7 is not",
         "naïve café owners", "東京は日本の首都です"]


@pytest.fixture(scope="module")
def hf():
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    return transformers, tokenizers


def _hf_tok(tokenizers, out, max_length=128):
    t = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    t.no_padding()
    t.enable_truncation(max_length)
    return t


def _save(model, minilm_dir, out):
    from unimask.tokenizer import WordPieceTokenizer

    model.save_pretrained(out)
    WordPieceTokenizer.from_pretrained(minilm_dir).save_pretrained(out)


def _lines(path):
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def test_predict_classifier_matches_transformers(minilm_dir, tmp_path, hf):
    transformers, tokenizers = hf
    torch.manual_seed(0)
    out = tmp_path / "cls"
    _save(SequenceClassifier.from_pretrained(minilm_dir, LabelMap(["neg", "neu", "pos"]), num_labels=3), minilm_dir, out)
    txt = tmp_path / "in.txt"
    txt.write_text("\n".join(TEXTS) + "\n\n", encoding="utf-8")
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t, "other": 1}) + "\n" for t in TEXTS), encoding="utf-8")
    pred_txt, pred_jsonl = tmp_path / "p1.jsonl", tmp_path / "p2.jsonl"
    assert main(["predict", "--model", str(out), "--input", str(txt), "--output", str(pred_txt)]) == 0
    assert main(["predict", "--model", str(out), "--input", str(jsonl), "--output", str(pred_jsonl),
                 "--batch-size", "2"]) == 0
    got, other = _lines(pred_txt), _lines(pred_jsonl)  # batches of 64 vs 2: padding differs
    assert [r["label"] for r in got] == [r["label"] for r in other]
    assert [r["score"] for r in got] == pytest.approx([r["score"] for r in other], abs=1e-5)
    ref = transformers.BertForSequenceClassification.from_pretrained(out).eval()
    tk = _hf_tok(tokenizers, out)
    assert len(got) == len(TEXTS)
    with torch.no_grad():
        for row, text in zip(got, TEXTS):
            e = tk.encode(text)
            p = torch.softmax(ref(input_ids=torch.tensor([e.ids]), token_type_ids=torch.tensor([e.type_ids])).logits[0], -1)
            assert row["label"] == ref.config.id2label[int(p.argmax())]
            assert row["score"] == pytest.approx(float(p.max()), abs=1e-4)
            assert [row["probs"][ref.config.id2label[i]] for i in range(3)] == pytest.approx(p.tolist(), abs=1e-4)


def test_predict_regressor_and_pairs(minilm_dir, tmp_path, hf, capsys):
    transformers, tokenizers = hf
    torch.manual_seed(1)
    out = tmp_path / "reg"
    _save(SequenceClassifier.from_pretrained(minilm_dir, None, problem_type="regression", num_labels=1),
          minilm_dir, out)
    data = tmp_path / "pairs.tsv"
    data.write_text("a\tb\n" + "".join(f"{t}\t{t[::-1]}\n" for t in TEXTS[:3]), encoding="utf-8")
    assert main(["predict", "--model", str(out), "--input", str(data), "--text-field", "a",
                 "--text-pair-field", "b"]) == 0
    got = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    ref = transformers.BertForSequenceClassification.from_pretrained(out).eval()
    tk = _hf_tok(tokenizers, out)
    with torch.no_grad():
        for row, t in zip(got, TEXTS[:3]):
            e = tk.encode(t, t[::-1])
            want = ref(input_ids=torch.tensor([e.ids]), token_type_ids=torch.tensor([e.type_ids])).logits[0, 0]
            assert row["value"] == pytest.approx(float(want), abs=1e-4)
    assert len(got) == 3


def test_predict_tagger_matches_transformers(minilm_dir, tmp_path, hf):
    transformers, tokenizers = hf
    torch.manual_seed(2)
    out = tmp_path / "tag"
    labels = LabelMap(["O", "B-X", "I-X"])
    _save(TokenClassifier.from_pretrained(minilm_dir, labels, num_labels=3), minilm_dir, out)
    sents = [t.split() for t in TEXTS] + [["", "U.S.", "tokenization"]]
    conll = tmp_path / "in.conll"
    conll.write_text("\n".join("\n".join(f"{w} O" for w in s if w) + "\n" for s in sents[:-1]), encoding="utf-8")
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("".join(json.dumps({"tokens": s}) + "\n" for s in sents), encoding="utf-8")
    txt = tmp_path / "in.txt"
    txt.write_text("\n".join(" ".join(s) for s in sents[:-1]) + "\n", encoding="utf-8")
    results = {}
    for name, path in (("conll", conll), ("jsonl", jsonl), ("txt", txt)):
        dest = tmp_path / f"{name}.out.jsonl"
        assert main(["predict", "--model", str(out), "--input", str(path), "--output", str(dest),
                     "--max-length", "16"]) == 0
        results[name] = _lines(dest)
    assert results["conll"] == results["txt"] == results["jsonl"][:-1]
    ref = transformers.BertForTokenClassification.from_pretrained(out).eval()
    tk = _hf_tok(tokenizers, out, 16)
    with torch.no_grad():
        for row, words in zip(results["jsonl"], sents):
            assert row["tokens"] == words
            e = tk.encode(words, is_pretokenized=True)
            logits = ref(input_ids=torch.tensor([e.ids]), token_type_ids=torch.tensor([e.type_ids])).logits[0]
            want, prev = ["O"] * len(words), None
            for i, w in enumerate(e.word_ids):
                if w is not None and w != prev:
                    want[w] = ref.config.id2label[int(logits[i].argmax())]
                prev = w
            assert row["tags"] == want


def test_predict_reports_bad_input(minilm_dir, tmp_path, capsys):
    assert main(["predict", "--model", str(minilm_dir), "--input", str(tmp_path / "x.txt")]) == 2
    assert "not a unimask fine-tuned model" in capsys.readouterr().err
    out = tmp_path / "tag"
    _save(TokenClassifier.from_pretrained(minilm_dir, LabelMap(["O", "B-X"]), num_labels=2), minilm_dir, out)
    assert main(["predict", "--model", str(out), "--input", str(tmp_path / "missing.txt")]) == 2
    assert "no such file" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    assert main(["predict", "--model", str(out), "--input", str(empty)]) == 2
    assert "no sentences" in capsys.readouterr().err
    assert main(["predict", "--model", str(out), "--input", str(empty), "--text-pair-field", "b"]) == 2
    assert main(["predict", "--model", str(out), "--input", str(empty), "--batch-size", "0"]) == 2
