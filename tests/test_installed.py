"""Under CI the tests must exercise the installed wheel, not the source tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import unimask

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(os.environ.get("UNIMASK_EXPECT_INSTALLED") != "1", reason="only meaningful under .ci/run, which installs the wheel")
def test_tests_run_against_the_installed_package():
    where = Path(unimask.__file__).resolve()
    assert "site-packages" in where.parts, where
    assert REPO / "python" not in where.parents, where
