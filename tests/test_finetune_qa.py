"""Extractive QA (SQuAD recipe): data, windows and targets, answers, training, CLI.

Oracles: HF ``run_qa.py``'s ``prepare_train_features`` (transformers' ``BertTokenizerFast`` with
``truncation="only_second"``, ``stride``, ``return_overflowing_tokens``, offsets, and its
start/end loop) for the windows and their targets; a brute-force search over every window and
every span with ``transformers.BertForQuestionAnswering`` on the saved model for the answers;
SQuAD's normalisation by hand for the scores.

Questions are built on real text (the bundled English corpus): a context is the start of a
document, the question quotes a phrase of it ("Where does it say ...?") and the answer is that
phrase, so the model has to find the quoted words in the context; the untrained head scores
near zero.
"""

from __future__ import annotations

import json
import random

import pytest
import torch

from unimask.cli import main
from unimask.corpus import demo_corpus_path, read_documents
from unimask.finetune import FinetuneConfig, QuestionAnswering
from unimask.finetune.qa import QAExample, encode_qa, evaluate_qa, finetune_qa, load_squad, predict_answers
from unimask.tokenizer import WordPieceTokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _examples(n_words: int, k: int, limit: int, seed: int = 0) -> list[QAExample]:
    rng = random.Random(seed)
    out = []
    for doc in read_documents(demo_corpus_path("en")):
        words = " ".join(doc).split(" ")
        if len(words) < 20:
            continue
        ctx = " ".join(words[:n_words])
        words = ctx.split(" ")
        i = rng.randrange(0, len(words) - k)
        phrase = " ".join(words[i: i + k])
        if not phrase.strip() or ctx.count(phrase) != 1 or phrase != phrase.strip():
            continue
        out.append(QAExample(f"Where does it say {phrase.lower()}?", ctx, ((phrase, ctx.index(phrase)),), str(len(out))))
        if len(out) == limit:
            break
    rng.shuffle(out)
    return out


@pytest.fixture(scope="module")
def tok(minilm_dir) -> WordPieceTokenizer:
    return WordPieceTokenizer.from_pretrained(minilm_dir)


def test_load_squad_json_and_jsonl(tmp_path):
    squad = {"version": "1.1", "data": [{"title": "t", "paragraphs": [
        {"context": "The cat sat on the mat.", "qas": [
            {"id": "q1", "question": "Who sat?", "answers": [{"text": "The cat", "answer_start": 0},
                                                             {"text": "cat", "answer_start": 4}]},
            {"id": "q2", "question": "Where?", "answers": [], "is_impossible": True}]}]}]}
    j = tmp_path / "s.json"
    j.write_text(json.dumps(squad))
    got = load_squad(j)
    assert [(e.id, e.answers) for e in got] == [("q1", (("The cat", 0), ("cat", 4))), ("q2", ())]
    rows = tmp_path / "s.jsonl"
    rows.write_text(json.dumps({"id": "a", "question": "Who?", "context": "Ann met Bob.",
                                "answers": {"text": ["Bob"], "answer_start": [8]}}) + "\n")
    assert load_squad(rows) == [QAExample("Who?", "Ann met Bob.", (("Bob", 8),), "a")]
    rows.write_text(json.dumps({"question": "Who?", "context": "Ann met Bob.",
                                "answers": {"text": ["Bob"], "answer_start": [7]}}) + "\n")
    with pytest.raises(ValueError, match="answer 'Bob' is not at character 7"):
        load_squad(rows)
    rows.write_text('{"question": "Who?"}\n')
    with pytest.raises(ValueError, match=r"s.jsonl:1: expected question, context"):
        load_squad(rows)
    j.write_text('{"data": [{"no": 1}]}')
    with pytest.raises(ValueError, match="not SQuAD's"):
        load_squad(j)


def test_windows_and_targets_match_hf_run_qa(minilm_dir, tok):
    transformers = pytest.importorskip("transformers")
    ref = transformers.BertTokenizerFast.from_pretrained(str(minilm_dir))
    exs = _examples(120, 4, 40, seed=3) + [QAExample("No answer here?", "Just some words of context " * 20)]
    max_length, stride = 64, 16
    ours = encode_qa(tok, exs, max_length, stride)
    enc = ref([e.question for e in exs], [e.context for e in exs], truncation="only_second", max_length=max_length,
              stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True)
    assert ours["example"].tolist() == enc["overflow_to_sample_mapping"]
    assert ours["input_ids"].shape[0] == len(enc["input_ids"]) > len(exs)  # long contexts have several windows
    for r, ids in enumerate(enc["input_ids"]):
        assert ours["input_ids"][r, : len(ids)].tolist() == ids
        # prepare_train_features (HF run_qa.py), verbatim in substance.
        offsets, seq = enc["offset_mapping"][r], enc.sequence_ids(r)
        ex = exs[enc["overflow_to_sample_mapping"][r]]
        if not ex.answers:
            want = (0, 0)
        else:
            text, s_char = ex.answers[0]
            e_char = s_char + len(text)
            ts = 0
            while seq[ts] != 1:
                ts += 1
            te = len(ids) - 1
            while seq[te] != 1:
                te -= 1
            if not (offsets[ts][0] <= s_char and offsets[te][1] >= e_char):
                want = (0, 0)
            else:
                while ts < len(offsets) and offsets[ts][0] <= s_char:
                    ts += 1
                while offsets[te][1] >= e_char:
                    te -= 1
                want = (ts - 1, te + 1)
        assert (int(ours["start_positions"][r]), int(ours["end_positions"][r])) == want, r
        ctx = [i for i, s in enumerate(seq) if s == 1]
        assert ours["context_mask"][r].nonzero().flatten().tolist() == ctx


def _brute_force_answers(out_dir, exs, max_length, stride, max_answer_length, null_threshold=None):
    transformers = pytest.importorskip("transformers")
    model = transformers.BertForQuestionAnswering.from_pretrained(out_dir).eval()
    ref = transformers.BertTokenizerFast.from_pretrained(str(out_dir))
    answers = []
    with torch.no_grad():
        for ex in exs:
            enc = ref(ex.question, ex.context, truncation="only_second", max_length=max_length, stride=stride,
                      return_overflowing_tokens=True, return_offsets_mapping=True)
            best, null = (-float("inf"), ""), float("inf")
            for r, ids in enumerate(enc["input_ids"]):
                o = model(input_ids=torch.tensor([ids]), token_type_ids=torch.tensor([enc["token_type_ids"][r]]))
                s, e = o.start_logits[0].tolist(), o.end_logits[0].tolist()
                null = min(null, s[0] + e[0])
                ctx = [i for i, q in enumerate(enc.sequence_ids(r)) if q == 1]
                for i in ctx:
                    for j in ctx:
                        if i <= j < i + max_answer_length and s[i] + e[j] > best[0] + 1e-5:
                            off = enc["offset_mapping"][r]
                            best = (s[i] + e[j], ex.context[off[i][0]: off[j][1]])
            answers.append("" if null_threshold is not None and null - best[0] > null_threshold else best[1])
    return answers


def test_answers_match_a_brute_force_search_with_transformers(minilm_dir, tok, tmp_path):
    torch.manual_seed(0)
    model = QuestionAnswering.from_pretrained(minilm_dir, max_answer_length=6)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    exs = _examples(90, 3, 12, seed=5)
    got = predict_answers(model, tok, exs, 48, 12, batch_size=5)
    assert [a for a, _ in got] == _brute_force_answers(tmp_path, exs, 48, 12, 6)
    # SQuAD 2.0: the no-answer score against the best span, at thresholds that flip some answers.
    best = [sc for _, sc in got]
    nulls = [sc for _, sc in predict_answers(model, tok, exs, 48, 12, null_threshold=-1e9)]
    diffs = sorted(n - b for n, b in zip(nulls, best))
    # Thresholds in clear gaps between the examples' differences (the two models' logits agree
    # to ~1e-5, not to the last bit).
    gaps = [(b + a) / 2 for a, b in zip(diffs, diffs[1:]) if b - a > 1e-3]
    assert gaps, diffs
    for threshold in (diffs[0] - 1, gaps[len(gaps) // 2], diffs[-1] + 1):
        got = [a for a, _ in predict_answers(model, tok, exs, 48, 12, null_threshold=threshold)]
        assert got == _brute_force_answers(tmp_path, exs, 48, 12, 6, threshold)
        assert sum(a == "" for a in got) == sum(d > threshold for d in diffs)


def test_scores_follow_squad_normalisation(minilm_dir, tok, monkeypatch):
    exs = [QAExample("q", "The Cat sat.", (("The Cat", 0), ("Cat sat", 4))), QAExample("q", "a b c d", (("b c", 2),))]
    import unimask.finetune.qa as qa

    monkeypatch.setattr(qa, "predict_answers", lambda *a, **k: [("cat!", 1.0), ("c d", 1.0)])
    got = evaluate_qa(None, tok, exs)
    # Example 1: "cat" vs "cat" (articles dropped) -> EM 1; example 2: F1 of {c, d} vs {b, c} = 0.5.
    assert got == {"exact_match": 50.0, "f1": 75.0, "n": 2.0}
    # SQuAD 2.0: an unanswerable question is right only when the prediction is empty.
    exs2 = exs + [QAExample("q", "x y"), QAExample("q", "x y")]
    monkeypatch.setattr(qa, "predict_answers", lambda *a, **k: [("cat!", 1.0), ("c d", 1.0), ("", 0.0), ("x", 1.0)])
    got = evaluate_qa(None, tok, exs2, null_threshold=0.0)
    assert got == {"exact_match": 50.0, "f1": 62.5, "n": 4.0, "has_answer_f1": 75.0, "no_answer_accuracy": 50.0}
    with pytest.raises(ValueError, match="set null_threshold"):
        evaluate_qa(None, tok, exs2)


def test_finetune_qa_learns_to_find_the_quoted_phrase(minilm_dir, tok):
    exs = _examples(50, 3, 220, seed=0)
    train, evals = exs[:160], exs[160:]
    torch.manual_seed(0)
    model = QuestionAnswering.from_pretrained(minilm_dir, max_answer_length=10)
    before = evaluate_qa(model, tok, evals, 128, 32)
    result = finetune_qa(model, tok, train, FinetuneConfig(epochs=3, batch_size=16, lr=2e-4, max_length=128, seed=0),
                         evals, stride=32)
    after = result["eval"]
    assert after["f1"] > before["f1"] + 25, (before, after)
    losses = [h["loss"] for h in result["history"]]
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5])


def test_finetune_and_predict_cli_qa(minilm_dir, tmp_path):
    exs = _examples(80, 3, 60, seed=1)
    rows = [{"id": e.id, "question": e.question, "context": e.context,
             "answers": {"text": [e.answers[0][0]], "answer_start": [e.answers[0][1]]}} for e in exs]
    train, evals = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[:40]))
    evals.write_text("".join(json.dumps(r) + "\n" for r in rows[40:]))
    out = tmp_path / "out"
    argv = ["finetune", "--model", str(minilm_dir), "--train", str(train), "--eval", str(evals), "--task", "qa",
            "--epochs", "1", "--max-length", "64", "--doc-stride", "16", "--max-answer-length", "8",
            "--output", str(out), "--quiet"]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "qa" and metrics["windows"] > 40 and metrics["n"] == 20.0
    pred = tmp_path / "pred.jsonl"
    assert main(["predict", "--model", str(out), "--input", str(evals), "--output", str(pred),
                 "--max-length", "64", "--doc-stride", "16"]) == 0
    got = [json.loads(x) for x in pred.read_text().splitlines()]
    assert [g["id"] for g in got] == [r["id"] for r in rows[40:]]
    eval_exs = load_squad(evals)
    assert [g["answer"] for g in got] == _brute_force_answers(out, eval_exs, 64, 16, 8)
    # The reported scores are those of these answers.
    from unimask.finetune.metrics import exact_match, squad_f1

    em = 100 * sum(exact_match([g["answer"]], [e.answers[0][0]]) for g, e in zip(got, eval_exs)) / 20
    f1 = 100 * sum(squad_f1([g["answer"]], [e.answers[0][0]]) for g, e in zip(got, eval_exs)) / 20
    assert metrics["exact_match"] == pytest.approx(em) and metrics["f1"] == pytest.approx(f1)
    # SQuAD 2.0: questions without an answer need --null-threshold; predict applies it.
    unans = tmp_path / "unans.jsonl"
    unans.write_text(json.dumps({"id": "u", "question": "Who?", "context": "Nobody here.", "answers": {}}) + "\n")
    assert main(argv[:6] + [str(unans)] + argv[7:-3] + ["--output", str(tmp_path / "z")]) == 2
    assert main(["predict", "--model", str(out), "--input", str(evals), "--output", str(pred),
                 "--max-length", "64", "--doc-stride", "16", "--null-threshold=-1e9"]) == 0
    assert {json.loads(x)["answer"] for x in pred.read_text().splitlines()} == {""}
    # Flags that do not apply, and a stride the window cannot hold, exit 2.
    assert main(argv[:-3] + ["--pooling", "mean", "--output", str(tmp_path / "x")]) == 2
    assert main(argv[:-3] + ["--doc-stride", "62", "--output", str(tmp_path / "y")]) == 2


def test_loaders_turn_garbage_into_clear_errors(tmp_path):
    """Random bytes, random JSON and truncated files: load_squad / load_tagged either read
    something or raise ValueError (never another exception, never a hang)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from unimask.finetune import load_tagged

    json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                               lambda c: st.lists(c, max_size=4) | st.dictionaries(st.sampled_from(
                                   ["question", "context", "answers", "text", "answer_start", "tokens", "tags",
                                    "data", "paragraphs", "qas", "id"]), c, max_size=5), max_leaves=12)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(blob=st.one_of(st.binary(max_size=200).map(lambda b: b.decode("utf-8", "replace")),
                          json_values.map(json.dumps)),
           suffix=st.sampled_from([".json", ".jsonl", ".conll"]))
    def check(blob, suffix):
        path = tmp_path / f"f{suffix}"
        path.write_text(blob, encoding="utf-8")
        for load in (load_squad, load_tagged):
            try:
                load(path)
            except ValueError:
                pass

    check()
