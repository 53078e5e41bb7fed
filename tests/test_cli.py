"""The ``unimask`` command line: info and bench, as a console script and as ``python -m``."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from unimask.cli import main


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "unimask", *args], capture_output=True, text=True, timeout=600)


def test_info_reports_native_build_and_accelerators():
    out = _run("info")
    assert out.returncode == 0, out.stderr
    import unimask

    assert f"unimask {unimask.__version__}" in out.stdout
    assert "core_version" in out.stdout
    assert "cuda available:" in out.stdout
    assert "triton kernels:" in out.stdout


def test_console_script_is_installed():
    exe = shutil.which("unimask")
    if exe is None:
        pytest.skip("the 'unimask' console script is not on PATH (package not installed with pip)")
    out = subprocess.run([exe, "info"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_bench_prints_ratio_table(tmp_path):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("Hello world.\nThis is a test.\n\nAnother document here.\n", encoding="utf-8")
    out = _run("bench", "--corpus", str(corpus), "--min-time", "0.01", "--filter", "attention")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    header = next(line for line in lines if line.startswith("benchmark"))
    assert "ratio" in header and "reference" in header
    rows = [line for line in lines if line.startswith("attention")]
    assert rows and rows[0].rstrip().endswith("x")


def test_bench_rejects_missing_corpus(tmp_path, capsys):
    assert main(["bench", "--corpus", str(tmp_path / "nope.txt")]) == 2
    assert "not found" in capsys.readouterr().err


def test_bench_rejects_unknown_filter(capsys):
    assert main(["bench", "--filter", "no-such-benchmark-xyz"]) == 2
    assert "no benchmark matches" in capsys.readouterr().err


def test_unknown_subcommand_exits_with_usage_error():
    out = _run("frobnicate")
    assert out.returncode == 2
    assert "invalid choice" in out.stderr


def test_building_the_parser_does_not_import_torch():
    code = "import sys\nfrom unimask.cli import build_parser\nbuild_parser()\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
