"""The public surface: every name in ``unimask.__all__`` resolves, lazily, to the defining module's object."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import unimask


@pytest.mark.parametrize("name", [n for n in unimask.__all__ if n not in ("InternalError", "__version__")])
def test_public_name_resolves_to_its_module(name):
    module = importlib.import_module(f"unimask.{unimask._EXPORTS[name]}")
    assert getattr(unimask, name) is getattr(module, name)
    assert name in getattr(module, "__all__", [name])


def test_unknown_attribute_is_attribute_error():
    with pytest.raises(AttributeError, match="no_such_thing"):
        unimask.no_such_thing  # noqa: B018


def test_import_is_lazy_about_torch():
    code = "import sys, unimask; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
