#!/usr/bin/env bash
# GPU check of the Triton backend, for a CUDA machine with a CUDA build of torch (and the
# triton it ships with) already installed. Installs nothing from the network. Under 8 minutes:
#
#   1. the Triton test files on the GPU (pytest -m "gpu or interpreter"): every kernel against
#      the reference (compiled, on CUDA tensors), prune/prune_batch with the Triton backend,
#      bf16/fp16/fp32 against the reference, opcheck on CUDA, torch.compile of prune, the
#      host-sync count, the 16 x 576 x 3584 shape;
#   2. benchmarks/speed_gpu.py (16x576 and 64x1024, D = 3584, bf16, keep 25 %, 64 text
#      tokens): prune vs the reference and the baselines, memory and matmul floors; appends
#      benchmarks/results/speed_gpu.csv;
#   3. benchmarks/greedy_rounds.py --quick: the greedy loops' chain lengths (steps, rounds,
#      passes) and times, one pick per step against the windowed engine; appends
#      benchmarks/results/greedy_rounds.csv;
#   4. a short table, printed last.
#
# Usage:  bash benchmarks/gpu_check.sh        (PYTHON=python3.12 to choose the interpreter)
# Logs go to benchmarks/results/gpu_check/ and, when $OUT is set, are copied there too.
set -u -o pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
START=$(date +%s)
LOGDIR=benchmarks/results/gpu_check
export PYTHONUNBUFFERED=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET ADAPTIVE_PRUNE_BACKEND

if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "gpu_check: '$PY' cannot import torch (set PYTHON=... to the interpreter that has it)"
    exit 3
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: torch sees no CUDA device here; nothing to check (run it on a GPU machine)"
    exit 3
fi
mkdir -p "$LOGDIR"
rm -f "$LOGDIR/pytest.log" "$LOGDIR/speed_gpu.log" "$LOGDIR/speed_summary.md" \
    "$LOGDIR/greedy_rounds.log"
# A source checkout works as is (adaptive_prune._triton_ops maps kernels/ to
# adaptive_prune.kernels); install only if the package does not import.
if ! "$PY" -c "import adaptive_prune.kernels.greedy_select" 2>/dev/null; then
    echo "gpu_check: installing the package (no network needed, no C++ extension)"
    ADAPTIVE_PRUNE_BUILD_EXT=0 "$PY" -m pip install -q --no-build-isolation --no-deps -e . \
        || { echo "gpu_check: pip install failed"; exit 4; }
fi
"$PY" - <<'EOF'
import torch, triton, adaptive_prune
from adaptive_prune import _backend
p = torch.cuda.get_device_properties(0)
print(f"gpu_check: {p.name}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB | "
      f"torch {torch.__version__} (CUDA {torch.version.cuda}) | triton {triton.__version__}")
print("gpu_check: backend of greedy_select on cuda:", _backend.active("greedy_select", "cuda"),
      _backend.UNAVAILABLE or "")
EOF

echo; echo "== 1/3 tests (pytest -m 'gpu or interpreter') =="
timeout -k 10 250 "$PY" -m pytest -q -p no:cacheprovider -o addopts="" -rfEX \
    -m "gpu or interpreter" tests/test_triton_gpu.py tests/test_triton_kernels.py \
    tests/test_triton_backend.py 2>&1 | tee "$LOGDIR/pytest.log"
TEST_RC=${PIPESTATUS[0]}

echo; echo "== 2/3 benchmarks/speed_gpu.py =="
timeout -k 10 170 "$PY" benchmarks/speed_gpu.py --summary "$LOGDIR/speed_summary.md" 2>&1 \
    | tee "$LOGDIR/speed_gpu.log"
BENCH_RC=${PIPESTATUS[0]}

echo; echo "== 3/3 benchmarks/greedy_rounds.py --quick =="
timeout -k 5 40 "$PY" benchmarks/greedy_rounds.py --quick 2>&1 | tee "$LOGDIR/greedy_rounds.log"
ROUNDS_RC=${PIPESTATUS[0]}

if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
    cp "$LOGDIR"/*.log "$LOGDIR"/*.md benchmarks/results/speed_gpu.csv \
        benchmarks/results/greedy_rounds.csv "$OUT"/ 2>/dev/null || true
fi

# ---- short table, last --------------------------------------------------------------------
SUMMARY=$(grep -E "[0-9]+ (passed|failed)" "$LOGDIR/pytest.log" | tail -1)
SYNCS=$(grep -h "\[host syncs\]" "$LOGDIR/pytest.log" | sed 's/.*\[host syncs\] //' | sort -u \
    | paste -sd ';' -)
echo
echo "## gpu_check summary ($(( $(date +%s) - START )) s)"
echo
echo "| check | result |"
echo "|---|---|"
echo "| pytest (gpu + kernels on CUDA) | rc=$TEST_RC: ${SUMMARY:-no summary (timeout?)} |"
echo "| host syncs | ${SYNCS:-not reported} |"
echo "| speed_gpu.py | rc=$BENCH_RC |"
echo "| greedy_rounds.py | rc=$ROUNDS_RC |"
echo
grep -E "^\| 25% \| stage" "$LOGDIR/greedy_rounds.log" 2>/dev/null \
    | sed '1i | keep | stage | chain | window | rounds | picks/round | passes/pick | same | ms step | ms window |' \
    || true
echo
if [ -f "$LOGDIR/speed_summary.md" ]; then cat "$LOGDIR/speed_summary.md"; fi
[ "$TEST_RC" -eq 0 ] && [ "$BENCH_RC" -eq 0 ] && [ "$ROUNDS_RC" -eq 0 ]
