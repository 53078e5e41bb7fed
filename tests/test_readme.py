"""The README stays true: its tour runs, and its two set-up commands are the ones CI uses."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"

pytestmark = pytest.mark.skipif(not README.is_file(), reason="README.md is not beside the tests (not a source checkout)")


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_tour_runs_and_trains():
    namespace: dict = {}
    exec(compile(_blocks("python")[0], "README tour", "exec"), namespace)  # noqa: S102 - our own README
    batch, loss = namespace["batch"], namespace["loss"].detach()
    assert set(batch["attn_mode"].tolist()) <= {0, 1, 2, 3}
    assert math.isfinite(float(loss)) and float(loss) > 0
    grads = [p.grad for p in namespace["model"].parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_exactly_two_setup_commands_and_ci_runs_the_test_one():
    setup = README.read_text(encoding="utf-8").split("## Set up", 1)[1].split("\n## ", 1)[0]
    commands = [b.strip() for b in re.findall(r"```bash\n(.*?)```", setup, flags=re.S)]
    assert len(commands) == 2, commands
    install, tests = commands
    assert "pip install" in install and "unimask pretrain" in install
    assert tests.endswith("python -m pytest tests")
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert "python -m pytest tests" in ci
