"""FAQ retrieval: top-1 on a hand-written paraphrase set with the real MiniLM, top-k vs a numpy
brute force, save/load, the cross-encoder rerank, and the ``unimask faq`` CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from unimask.cli import main
from unimask.finetune import CrossEncoderReranker, FAQIndex, LabelMap, SequenceClassifier, SiameseEncoder
from unimask.tokenizer import WordPieceTokenizer


pytestmark = pytest.mark.usefixtures("one_torch_thread")


FIX = Path(__file__).parent / "fixtures" / "finetune"


def _rows(name):
    return [json.loads(x) for x in (FIX / name).read_text(encoding="utf-8").splitlines() if x.strip()]


@pytest.fixture(scope="module")
def index(minilm_dir):
    faq = _rows("faq.jsonl")
    enc = SiameseEncoder.from_pretrained(minilm_dir)
    return FAQIndex.build(enc, [r["question"] for r in faq], [r["answer"] for r in faq], model_dir=str(minilm_dir))


def test_paraphrased_queries_retrieve_their_question(index):
    queries = _rows("faq_queries.jsonl")
    top1 = top5 = 0
    for q in queries:
        hits = index.query(q["query"], k=5)
        top1 += hits[0].question == q["question"]
        top5 += any(h.question == q["question"] for h in hits)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    print(f"FAQ paraphrases: top-1 {top1}/{len(queries)}, top-5 {top5}/{len(queries)}")
    assert top1 >= 0.8 * len(queries)
    assert top5 >= 0.9 * len(queries)
    # the answer travels with the question
    hit = index.query("When is the library open?", k=1)[0]
    assert "Saturday" in hit.answer


def test_topk_equals_numpy_brute_force(index):
    q = ["Is there a printer I can use?", "kids events", "parking"]
    qv = index.encoder.encode(q).numpy()
    sims = qv @ index.vectors.numpy().T
    scores, idx = index.search_vectors(torch.from_numpy(qv), k=4)
    for r in range(len(q)):
        expect = np.argsort(-sims[r], kind="stable")[:4]
        assert idx[r].tolist() == expect.tolist()
        np.testing.assert_allclose(scores[r].numpy(), sims[r][expect], rtol=1e-6)
    assert np.allclose(np.linalg.norm(index.vectors.numpy(), axis=1), 1.0, atol=1e-5)
    assert index.search_vectors(torch.from_numpy(qv), k=1000)[0].shape == (3, len(index))


def test_bfloat16_scan_with_exact_rescoring_equals_exact_search(index):
    g = torch.Generator().manual_seed(0)
    fill = torch.nn.functional.normalize(torch.randn(20_000, index.vectors.shape[1], generator=g), dim=-1)
    vectors = torch.cat([index.vectors, fill])
    names = index.questions + [f"r{i}" for i in range(len(fill))]
    exact = FAQIndex(index.encoder, vectors, names, names, normalized=True)
    fast = FAQIndex(index.encoder, vectors, names, names, normalized=True, search_dtype="bfloat16")
    queries = [r["query"] for r in _rows("faq_queries.jsonl")]
    qv = index.encoder.encode(queries)
    qv = torch.cat([qv, fill[:20] + 0.05 * torch.randn(20, fill.shape[1], generator=g)])  # near random rows too
    s1, i1 = exact.search_vectors(qv, 5)
    s2, i2 = fast.search_vectors(qv, 5)
    assert torch.equal(i1, i2)
    assert torch.allclose(s1, s2, atol=1e-6)
    with pytest.raises(ValueError, match="search_dtype"):
        FAQIndex(index.encoder, vectors[:3], names[:3], names[:3], search_dtype="int8")


def test_save_load_roundtrip(index, tmp_path):
    index.save(tmp_path / "idx")
    again = FAQIndex.load(tmp_path / "idx")
    assert again.questions == index.questions and again.answers == index.answers
    assert torch.equal(again.vectors, index.vectors)
    a = index.query("My library card is missing", 3)
    b = again.query("My library card is missing", 3)
    assert [h.index for h in a] == [h.index for h in b]
    with pytest.raises(FileNotFoundError, match="not an FAQ index"):
        FAQIndex.load(tmp_path)
    with pytest.raises(ValueError, match="non-empty"):
        index.query("   ")


def test_cross_encoder_rerank_orders_by_the_cross_encoder(index, minilm_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    ce = SequenceClassifier.from_pretrained(minilm_dir, LabelMap(["different", "same"])).eval()
    ce.save_pretrained(tmp_path / "ce")
    tok = WordPieceTokenizer.from_pretrained(minilm_dir)
    reranker = CrossEncoderReranker(ce, tok)
    query = "How much do I pay if my book is overdue?"
    cosine = index.query(query, k=6)
    hits = index.query(query, k=6, reranker=reranker, rerank_top=6)
    assert {h.index for h in hits} == {h.index for h in cosine}  # same candidates, new order
    # oracle: the same cross-encoder loaded by transformers, scored pair by pair
    hf = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "ce").eval()
    expected = {}
    for h in cosine:
        e = tok.encode(query, h.question)
        with torch.no_grad():
            logits = hf(input_ids=torch.from_numpy(e.ids.astype(np.int64))[None],
                        token_type_ids=torch.from_numpy(e.type_ids.astype(np.int64))[None]).logits[0]
        expected[h.index] = torch.log_softmax(logits, -1)[1].item()
    assert [h.index for h in hits] == sorted(expected, key=lambda i: -expected[i])
    for h in hits:
        assert h.score == pytest.approx(expected[h.index], abs=1e-4)


def test_faq_cli_build_and_query(minilm_dir, tmp_path, capsys):
    idx = tmp_path / "faq_index"
    assert main(["faq", "build", "--model", str(minilm_dir), "--data", str(FIX / "faq.jsonl"), "--index", str(idx)]) == 0
    capsys.readouterr()
    assert main(["faq", "query", "--index", str(idx), "Do you have wireless internet?", "-k", "2",
                 "--search-dtype", "bfloat16"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2
    assert lines[0]["question"] == "Is there free Wi-Fi in the library?"
    assert "LIBRARY-GUEST" in lines[0]["answer"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q1", "answer": "a1"}\n{"question": 5, "answer": "a2"}\n', encoding="utf-8")
    assert main(["faq", "build", "--model", str(minilm_dir), "--data", str(bad), "--index", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl row 2" in err and "'question'" in err
