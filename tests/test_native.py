"""The binding layer: Rust panics and core errors reach Python as exceptions, never crashes."""

from __future__ import annotations

import subprocess
import sys

import pytest

import unimask
from unimask import _native


def test_panic_inside_rust_becomes_internal_error():
    with pytest.raises(unimask.InternalError, match="deliberate panic"):
        _native._debug_fail("panic")
    # the interpreter is still healthy and the same call path works afterwards
    assert _native._debug_fail("ok") == "ok"


def test_internal_error_is_a_runtime_error_not_a_base_exception():
    assert issubclass(unimask.InternalError, RuntimeError)
    with pytest.raises(RuntimeError, match="deliberate internal error"):
        _native._debug_fail("internal")


def test_invalid_input_maps_to_value_error_with_the_value():
    with pytest.raises(ValueError, match="deliberate invalid input"):
        _native._debug_fail("invalid")
    with pytest.raises(ValueError, match="nonsense"):
        _native._debug_fail("nonsense")


def test_wrong_argument_type_is_type_error():
    with pytest.raises(TypeError):
        _native._debug_fail(42)


def test_panic_in_a_fresh_process_exits_cleanly():
    # A panic must not abort the process: the child catches the exception and exits 0.
    code = (
        "import unimask\n"
        "try:\n"
        "    unimask._native._debug_fail('panic')\n"
        "except unimask.InternalError as e:\n"
        "    print('caught', type(e).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "caught InternalError" in out.stdout


def test_build_info_reports_versions():
    info = dict(_native.build_info())
    assert info["core_version"] == unimask.__version__ == info["bindings_version"]
    assert int(info["available_parallelism"]) >= 1
