"""Word-level tagging: conlleval chunks, entity scores, data loading, label alignment, training,
and ``unimask finetune --task tag`` end to end.

Oracles: hand-worked chunkings (the ``conlleval`` / ``seqeval`` rules), a naive re-count of
entity precision / recall, transformers' ``BertTokenizerFast(is_split_into_words=True)`` word
ids for the label alignment, and the saved model re-evaluated with
``transformers.BertForTokenClassification`` + HF ``tokenizers`` (``is_pretokenized=True``).

The training task is synthetic tags on real text (the bundled English corpus split on
whitespace): ``DET`` on the articles ``the``/``a``/``an`` and ``NUM`` on runs of words
containing digits, in IOB2; the model has to read each word's identity from its pieces, and the
untrained head scores near zero.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from unimask.cli import main
from unimask.corpus import demo_corpus_path, read_documents
from unimask.finetune import (
    FinetuneConfig,
    LabelMap,
    TaggedSentence,
    TokenClassifier,
    encode_tagged,
    entity_scores,
    entity_spans,
    evaluate_tagger,
    finetune_tagger,
    load_tagged,
    predict_tags,
    tag_label_map,
)
from unimask.tokenizer import WordPieceTokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tags(words: list[str]) -> list[str]:
    out, prev = [], "O"
    for w in words:
        core = re.sub(r"\W", "", w.lower())
        if core in ("the", "a", "an"):
            t = "B-DET"
        elif any(c.isdigit() for c in w):
            t = "I-NUM" if prev in ("B-NUM", "I-NUM") else "B-NUM"
        else:
            t = "O"
        out.append(t)
        prev = t
    return out


@pytest.fixture(scope="module")
def sentences() -> list[TaggedSentence]:
    docs = read_documents(demo_corpus_path("en"))
    sents = [s.split() for d in docs for s in d if 3 <= len(s.split()) <= 30]
    with_num = [s for s in sents if any(c.isdigit() for c in " ".join(s))]
    plain = [s for s in sents if s not in with_num]
    mixed = [x for pair in zip(with_num, plain) for x in pair][:300]
    return [TaggedSentence(w, _tags(w), row=i) for i, w in enumerate(mixed)]


@pytest.fixture(scope="module")
def tok(minilm_dir) -> WordPieceTokenizer:
    return WordPieceTokenizer.from_pretrained(minilm_dir)


# conlleval / seqeval chunk rules, worked by hand.
@pytest.mark.parametrize("tags,want", [
    (["B-PER", "I-PER", "O", "B-LOC"], [("PER", 0, 2), ("LOC", 3, 4)]),
    (["I-PER", "I-PER", "I-LOC"], [("PER", 0, 2), ("LOC", 2, 3)]),  # IOB1: I- starts a chunk after O / a new type
    (["B-PER", "B-PER", "I-PER"], [("PER", 0, 1), ("PER", 1, 3)]),
    (["O", "I-MISC", "B-MISC", "O"], [("MISC", 1, 2), ("MISC", 2, 3)]),
    (["S-ORG", "B-LOC", "E-LOC", "E-LOC"], [("ORG", 0, 1), ("LOC", 1, 3), ("LOC", 3, 4)]),  # IOBES
    (["B-PER", "I-LOC", "I-LOC"], [("PER", 0, 1), ("LOC", 1, 3)]),
    (["O", "O"], []),
    ([], []),
])
def test_entity_spans_follow_conlleval(tags, want):
    assert entity_spans(tags) == want


def test_entity_scores_against_a_naive_count():
    rng = np.random.default_rng(0)
    vocab = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    gold = [[vocab[i] for i in rng.integers(0, 5, rng.integers(0, 12))] for _ in range(200)]
    pred = [[t if rng.random() < 0.8 else vocab[rng.integers(0, 5)] for t in g] for g in gold]
    got = entity_scores(pred, gold)
    g = {(k, *c) for k, s in enumerate(gold) for c in entity_spans(s)}
    p = {(k, *c) for k, s in enumerate(pred) for c in entity_spans(s)}
    precision, recall = len(p & g) / len(p), len(p & g) / len(g)
    assert got["precision"] == pytest.approx(precision)
    assert got["recall"] == pytest.approx(recall)
    assert got["f1"] == pytest.approx(2 * precision * recall / (precision + recall))
    per = {c[1] for c in g}
    assert per == {"PER", "LOC"} and 0 < got["f1_PER"] < 1
    assert entity_scores(gold, gold)["f1"] == 1.0
    with pytest.raises(ValueError, match="sentence 0: 1 predicted tags but 2 gold"):
        entity_scores([["O"]], [["O", "O"]])


def test_load_tagged_jsonl_and_conll(tmp_path):
    j = tmp_path / "a.jsonl"
    j.write_text('{"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]}\n\n{"tokens": ["x"], "tags": [3]}\n')
    got = load_tagged(j)
    assert [s.words for s in got] == [("EU", "rejects"), ("x",)] and got[1].tags == ("3",)
    c = tmp_path / "a.conll"
    c.write_text("-DOCSTART- -X- O O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n\nGerman JJ B-NP B-MISC\n")
    got = load_tagged(c)
    assert [(s.words, s.tags) for s in got] == [(("EU", "rejects"), ("B-ORG", "O")), (("German",), ("B-MISC",))]
    assert tag_label_map(got).labels == ["O", "B-MISC", "B-ORG"]
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"tokens": ["a", "b"], "tags": ["O"]}\n')
    with pytest.raises(ValueError, match=r"b.jsonl:1: 2 words but 1 tags"):
        load_tagged(bad)
    bad.write_text('{"tokens": "a b", "tags": ["O"]}\n')
    with pytest.raises(ValueError, match="must be a list of words"):
        load_tagged(bad)
    bad = tmp_path / "b.conll"
    bad.write_text("EU B-ORG\nrejects\n")
    with pytest.raises(ValueError, match=r"b.conll:2: expected a word and a tag"):
        load_tagged(bad)
    bad.write_text("\n\n")
    with pytest.raises(ValueError, match="holds no tagged sentence"):
        load_tagged(bad)


def test_labels_sit_on_first_pieces_like_transformers(minilm_dir, tok, sentences):
    transformers = pytest.importorskip("transformers")
    ref = transformers.BertTokenizerFast.from_pretrained(str(minilm_dir))
    lm = tag_label_map(sentences)
    chunk = sentences[:40] + [TaggedSentence(["", "U.S.", "tokenization"], ["O", "B-DET", "O"])]
    batch = encode_tagged(tok, chunk, 24, lm)
    for i, s in enumerate(chunk):
        enc = ref(list(s.words), is_split_into_words=True, truncation=True, max_length=24)
        want, prev = [], None
        for w in enc.word_ids():
            want.append(-100 if w is None or w == prev else lm.encode(s.tags[w]))
            prev = w
        n = len(want)
        assert batch["input_ids"][i, :n].tolist() == enc["input_ids"]
        assert batch["labels"][i, :n].tolist() == want
        assert (batch["labels"][i, n:] == -100).all()


def test_finetune_tagger_learns_and_predictions_match_labels(minilm_dir, tok, sentences):
    train, evals = sentences[:200], sentences[200:]
    lm = tag_label_map(sentences)
    torch.manual_seed(0)
    model = TokenClassifier.from_pretrained(minilm_dir, lm, num_labels=len(lm))
    before = evaluate_tagger(model, tok, evals, 64)
    cfg = FinetuneConfig(epochs=3, batch_size=16, lr=1e-4, max_length=64, seed=0)
    result = finetune_tagger(model, tok, train, cfg, evals)
    after = result["eval"]
    assert after["f1"] > 0.85 and after["f1"] > before["f1"] + 0.5, (before, after)
    assert after["f1_DET"] > 0.9 and after["f1_NUM"] > 0.6
    losses = [h["loss"] for h in result["history"]]
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    # The report re-counted from predict_tags.
    pred = predict_tags(model, tok, evals, 64)
    assert entity_scores(pred, [list(s.tags) for s in evals])["f1"] == pytest.approx(after["f1"])
    words = sum(len(s.words) for s in evals)
    assert after["accuracy"] == pytest.approx(
        sum(p == g for ps, s in zip(pred, evals) for p, g in zip(ps, s.tags)) / words)


def test_truncated_words_are_predicted_o(minilm_dir, tok):
    lm = LabelMap(["O", "B-DET"])
    model = TokenClassifier.from_pretrained(minilm_dir, lm, num_labels=2)
    s = TaggedSentence(["the"] * 30, ["B-DET"] * 30)
    pred = predict_tags(model, tok, [s], max_length=12)[0]
    assert pred[10:] == ["O"] * 20  # 10 words fit between [CLS] and [SEP]
    assert evaluate_tagger(model, tok, [s], 12)["words_without_token"] == 20


def _hf_predictions(out: Path, sentences: list[TaggedSentence], max_length: int) -> list[list[str]]:
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    model = transformers.BertForTokenClassification.from_pretrained(out).eval()
    tk = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    tk.no_padding()
    tk.enable_truncation(max_length)
    preds = []
    with torch.no_grad():
        for s in sentences:
            e = tk.encode(list(s.words), is_pretokenized=True)
            logits = model(input_ids=torch.tensor([e.ids]), token_type_ids=torch.tensor([e.type_ids])).logits[0]
            tags, prev = ["O"] * len(s.words), None
            for i, w in enumerate(e.word_ids):
                if w is not None and w != prev:
                    tags[w] = model.config.id2label[int(logits[i].argmax())]
                prev = w
            preds.append(tags)
    return preds


def test_finetune_cli_tag_task_end_to_end(minilm_dir, sentences, tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"tokens": list(s.words), "tags": list(s.tags)}) + "\n"
                             for s in sentences[:200]))
    evals = tmp_path / "eval.conll"  # the eval split in CoNLL columns
    evals.write_text("\n".join("\n".join(f"{w} {t}" for w, t in zip(s.words, s.tags)) + "\n"
                               for s in sentences[200:260]))
    out = tmp_path / "out"
    argv = ["finetune", "--model", str(minilm_dir), "--train", str(train), "--eval", str(evals), "--task", "tag",
            "--epochs", "3", "--batch-size", "8", "--lr", "1e-4", "--max-length", "48", "--output", str(out), "--quiet"]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "tag" and metrics["tags"] == ["O", "B-DET", "B-NUM", "I-NUM"]
    assert metrics["f1"] > 0.6
    # The saved model, re-run by transformers + HF tokenizers, gives the reported entity F1.
    evs = load_tagged(evals)
    hf_pred = _hf_predictions(out, evs, 48)
    assert entity_scores(hf_pred, [list(s.tags) for s in evs])["f1"] == pytest.approx(metrics["f1"])
    # Flags that do not apply to tagging are refused with exit code 2.
    assert main(argv[:-3] + ["--pooling", "mean", "--output", str(tmp_path / "x")]) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"tokens": ["a"], "tags": ["B-NEW"]}\n')
    assert main(["finetune", "--model", str(minilm_dir), "--train", str(train), "--eval", str(bad),
                 "--task", "tag", "--output", str(tmp_path / "y")]) == 2


def test_tagger_cvt_loss_is_the_mean_per_token_kl(minilm_dir, tok, sentences):
    """tagger_cvt_loss against a naive computation: teacher = primary tag distribution (eval
    mode), students = each view's per-position head, KL averaged over real tokens, then views."""
    from unimask.finetune import CrossViewHeads, tagger_cvt_loss

    lm = tag_label_map(sentences)
    torch.manual_seed(0)
    model = TokenClassifier.from_pretrained(minilm_dir, lm, num_labels=len(lm))
    heads = CrossViewHeads(model.config.hidden_size, len(lm))
    enc = tok.encode_batch([" ".join(s.words) for s in sentences[:6]], max_length=32).to_padded()
    ids, am = torch.from_numpy(enc["input_ids"]), torch.from_numpy(enc["attention_mask"])
    model.eval()  # no dropout in the students either, to compare exactly (training runs them with it)
    loss, per_view = tagger_cvt_loss(model, heads, ids, am)
    assert not model.training
    with torch.no_grad():
        p = torch.softmax(model(ids, am).logits.double(), -1)
        want = {}
        for v in heads.views:
            q = torch.log_softmax(heads.position_logits(model.encoder, v, ids, am).double(), -1)
            kl = (p * (p.log() - q)).sum(-1)
            want[v] = float(kl[am.bool()].mean())
    assert per_view == pytest.approx(want, rel=1e-4)
    assert loss.item() == pytest.approx(sum(want.values()) / 2, rel=1e-4)
    loss.backward()  # the students (heads, encoder) get gradients; the teacher is detached
    assert all(p_.grad is not None for p_ in heads.parameters())


def test_finetune_tagger_with_cvt_trains_the_view_heads(minilm_dir, tok, sentences, tmp_path):
    from unimask.finetune import CrossViewHeads, cross_view_kl

    lm = tag_label_map(sentences)
    torch.manual_seed(0)
    model = TokenClassifier.from_pretrained(minilm_dir, lm, num_labels=len(lm))
    docs = read_documents(demo_corpus_path("en"))
    unlabeled = [s for d in docs[200:260] for s in d][:96]
    cfg = FinetuneConfig(epochs=1, batch_size=16, lr=1e-4, max_length=48, seed=0, cvt_eval_max=64)
    result = finetune_tagger(model, tok, sentences[:96], cfg, sentences[200:230], unlabeled=unlabeled)
    assert all(h["cvt_loss"] is not None and set(h["cvt_kl"]) == {"left_to_right", "right_to_left"}
               for h in result["history"])
    trained = result["cvt"]["final_kl"]
    # Fresh heads against the same final model: the trained ones match the primary tags better.
    fresh = CrossViewHeads(model.config.hidden_size, len(lm))
    fresh.apply(model.encoder._init_weights)
    enc = tok.encode_batch(unlabeled[:64], max_length=48).to_padded()
    batch = {k: torch.from_numpy(v) for k, v in enc.items()}
    assert trained["mean"] < 0.75 * cross_view_kl(model, fresh, [batch], per_token=True)["mean"]
    assert trained == pytest.approx(cross_view_kl(model, result["cvt_heads"], [batch], per_token=True), rel=1e-4)
    # The CLI: --task tag --cvt-unlabeled writes the view heads beside the model.
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"tokens": list(s.words), "tags": list(s.tags)}) + "\n" for s in sentences[:48]))
    ul = tmp_path / "unlabeled.txt"
    ul.write_text("\n".join(unlabeled[:32]) + "\n")
    out = tmp_path / "out"
    assert main(["finetune", "--model", str(minilm_dir), "--train", str(train), "--eval", str(train), "--task", "tag",
                 "--epochs", "1", "--max-length", "32", "--cvt-unlabeled", str(ul), "--output", str(out),
                 "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["cvt"]["heads_file"] == "cvt_heads.safetensors" and (out / "cvt_heads.safetensors").is_file()
    assert metrics["cvt"]["per_token"] and metrics["history"][0]["cvt_loss"] is not None


def test_packed_tagger_runs_the_same_optimization(minilm_dir, tok, sentences):
    """pack=True: the sentences of each batch share rows without attending to each other; without
    dropout the per-step losses and weights equal the padded run's, and predictions too."""
    from unimask.models import EncoderConfig
    from unimask.packing import pack_padded

    train, evals = sentences[:48], sentences[200:230]
    lm = tag_label_map(sentences)
    runs = {}
    for pack in (False, True):
        torch.manual_seed(1)
        cfg_enc = EncoderConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                                attention_probs_dropout_prob=0.0)
        model = TokenClassifier(cfg_enc, lm)
        cfg = FinetuneConfig(epochs=1, batch_size=16, lr=1e-3, max_length=48, seed=2, pack=pack)
        result = finetune_tagger(model, tok, train, cfg, evals)
        runs[pack] = ([h["loss"] for h in result["history"]], model, result["eval"])
    np.testing.assert_allclose(runs[True][0], runs[False][0], rtol=1e-4)
    for (n, a), (_, b) in zip(runs[True][1].named_parameters(), runs[False][1].named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=n)
    assert runs[True][2]["f1"] == pytest.approx(runs[False][2]["f1"])
    model = runs[False][1].double().eval()
    assert predict_tags(model, tok, evals, 48, batch_size=8, pack=True) == predict_tags(model, tok, evals, 48, batch_size=8)
    # the packed logits are the padded ones, moved (fp64)
    batch = encode_tagged(tok, evals[:10], 48, lm)
    batch.pop("word_ids")
    with torch.no_grad():
        padded = model(**batch).logits
        p = pack_padded(batch, 48)
        flat = model(**p).logits.reshape(-1, len(lm))
        for i, (s, n) in enumerate(zip(p["doc_starts"].tolist(), p["doc_lengths"].tolist())):
            torch.testing.assert_close(flat[s:s + n], padded[i, :n], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(model(**p).loss, model(**batch).loss, rtol=1e-9, atol=1e-9)
