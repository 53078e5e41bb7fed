"""The built wheel: abi3, self-contained (native module, package, kernels, corpus), installable.

CI (``.ci/run``) builds the release wheel and passes it as ``UNIMASK_WHEEL``. Without it the test
builds a wheel from this checkout with maturin (slower, same checks).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    given = os.environ.get("UNIMASK_WHEEL")
    if given:
        path = Path(given)
        assert path.is_file(), f"UNIMASK_WHEEL={given} does not exist"
        return path
    maturin = shutil.which("maturin")
    if maturin is None or not (REPO / "pyproject.toml").is_file():
        pytest.skip("no UNIMASK_WHEEL given and no maturin + source checkout to build one")
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([maturin, "build", "-q", "-o", str(out), "-i", sys.executable], cwd=REPO, check=True, timeout=1500)
    return next(out.glob("unimask-*.whl"))


def test_wheel_is_abi3_and_contains_everything(wheel):
    assert "-cp310-abi3-" in wheel.name, wheel.name
    names = set(zipfile.ZipFile(wheel).namelist())
    assert any(n.startswith("unimask/_native") and n.endswith(".so") for n in names), sorted(names)
    for required in (
        "unimask/__init__.py",
        "unimask/cli.py",
        "unimask/kernels/__init__.py",
        "unimask/data/demo_en.txt",
        "unimask/data/demo_zh.txt",
        "unimask/data/PROVENANCE.md",
    ):
        assert required in names, required
    kernel_sources = {n for n in names if n.startswith("unimask/kernels/") and n.endswith(".py")}
    repo_kernels = {f"unimask/kernels/{p.name}" for p in (REPO / "kernels").glob("*.py")} if (REPO / "kernels").is_dir() else set()
    assert repo_kernels <= kernel_sources
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(meta).decode()
    for dep in ("numpy", "torch", "triton"):
        assert f"Requires-Dist: {dep}" in text, dep
    assert "platform_machine == 'x86_64'" in text  # triton only where it installs
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    entry_points = zipfile.ZipFile(wheel).read(entry).decode().replace(" ", "")
    assert "unimask=unimask.cli:main" in entry_points


def test_wheel_installs_into_a_fresh_venv_and_imports(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    # dependencies (numpy, torch, ...) come from the current environment's site directories
    # (CI layers them through .pth files too); unimask only from the wheel: the new venv's own
    # site-packages comes first on sys.path.
    deps = [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and Path(p).is_dir()]
    deps.append(sysconfig.get_paths()["purelib"])
    Path(site, "00-deps.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--ignore-installed", str(wheel)], check=True, timeout=600)
    code = (
        "import unimask, unimask._native, unimask.kernels, unimask.corpus\n"
        "import os\n"
        "print(unimask.__file__)\n"
        "print(unimask.kernels.__file__)\n"
        "print(unimask.corpus.demo_corpus_path('zh'))\n"
    )
    out = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for line in out.stdout.splitlines():
        assert line.startswith(site), (line, site)
    info = subprocess.run([str(venv / "bin" / "unimask"), "info"], capture_output=True, text=True, timeout=300)
    assert info.returncode == 0, info.stderr
    assert "triton kernels:" in info.stdout
