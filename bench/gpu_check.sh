#!/usr/bin/env bash
# The one prepared GPU check of unimask's Triton attention (correctness + benchmark table).
#
# Run from anywhere on a CUDA machine with torch + triton (no install, no Rust, no network):
#     bash bench/gpu_check.sh                # full run, ~6-8 minutes incl. autotuning/compiles
#     QUICK=1 bash bench/gpu_check.sh        # fewer cases/shapes (~3 minutes)
# Results: markdown table on stdout; $OUT/gpu_attention.json and $OUT/gpu_attention.log
# (OUT defaults to ./gpu_results). BUDGET (seconds, default 420) stops starting new bench
# shapes; the whole script is killed at BUDGET + 150 s so it always returns.
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-./gpu_results}
BUDGET=${BUDGET:-420}
mkdir -p "$OUT"
unset TRITON_INTERPRET
export TRITON_PRINT_AUTOTUNING=${TRITON_PRINT_AUTOTUNING:-1}
echo "== machine"; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | head -5
echo "== python: $($PY -c 'import sys; print(sys.executable, sys.version.split()[0])' 2>&1)"
$PY - <<'PY' 2>&1
for name in ("torch", "triton"):
    try:
        mod = __import__(name)
        print(f"{name} {mod.__version__}")
    except ImportError as e:
        print(f"{name} MISSING ({e}): no registry access here; bring a wheel (see .library device README)")
PY
ARGS=(--out "$OUT" --budget-s "$BUDGET")
[ "${QUICK:-0}" = "1" ] && ARGS+=(--quick)
timeout $((BUDGET + 150)) "$PY" bench/gpu_attention.py "${ARGS[@]}" 2>&1 | tee "$OUT/gpu_attention.log"
rc=${PIPESTATUS[0]}
echo "== exit code $rc (124 = killed by timeout; partial results are in $OUT/gpu_attention.json)"
exit "$rc"
