"""The ``unimask bench`` FAQ case times the same work on both sides: unimask's ``FAQIndex.query``
and sentence-transformers' ``encode`` + ``util.semantic_search`` return the same top-k
candidates over the same 20k vectors (the reference is the oracle)."""

from __future__ import annotations


import pytest
import torch



def test_faq_bench_case_compares_the_same_query(corpus_paths):
    pytest.importorskip("sentence_transformers", reason="the FAQ case's reference side needs sentence-transformers")
    from unimask.bench_cases import all_cases
    from unimask.bench_cases.finetune import K, N_CANDIDATES, cases

    (case,) = cases()
    assert case.name in [c.name for c in all_cases()] and "FAQ" in case.name
    ours, ref, work, unit = case.setup(corpus_paths)
    assert (work, unit) == (1.0, "queries") and ref is not None
    threads = torch.get_num_threads()
    hits, theirs = ours(), ref()
    assert torch.get_num_threads() == threads  # both sides restore the thread count
    assert len(hits) == K
    assert [h.index for h in hits] == [t["corpus_id"] for t in theirs]
    assert [h.score for h in hits] == pytest.approx([t["score"] for t in theirs], abs=1e-5)
    assert max(h.index for h in hits) < N_CANDIDATES
