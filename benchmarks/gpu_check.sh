#!/usr/bin/env bash
# GPU check of the Triton backend, for a CUDA machine with a CUDA build of torch and triton
# already installed. Installs nothing, needs no network, fits in 10 minutes (the step caps sum
# to 485 s). Each step is its own process with its own time cap, so a crash (an illegal memory
# access poisons the CUDA context) or a timeout loses that step only; every step's log is
# written (tee) straight into the output folder, and the speed CSV after every scenario, so a
# run killed at any point leaves what it measured so far.
#
#   1. benchmarks/speed.py --device cuda, 16 x 576 real tokens lifted to D = 3584, bf16, keep
#      25 %, 64 text tokens: prune (Triton) with and without text, greedy one pick per step
#      and window 128, the reference (no text), divprune and cdpruner, the memory and matmul
#      floors, and the per-op split (first: the numbers that matter most);
#   2. the GPU tests in their own process, on all cores (pytest -n): tests/test_triton_gpu.py,
#      the Triton backend and row-engine files and the per-op files' triton/cuda cases,
#      compiled, on CUDA tensors;
#   3. benchmarks/speed.py, 64 x 1024 synthetic clustered tokens (window 128; the block engine
#      beside the default, which takes the row engine there: the pool's block would exceed
#      block_budget_mb; no reference, no one-pick-per-step row, divprune and cdpruner only);
#   4. benchmarks/greedy_rounds.py --quick: chain lengths and times of the greedy loops;
#   5. speed_rows: benchmarks/speed.py at 16 x 576 with the row engine (greedy_engine="rows",
#      kernels/_engine.py: a cooperative persistent kernel with device-wide barriers, never run
#      on a GPU before) beside the default (the block engine at that size): its own step, so
#      that a crash there costs nothing measured before;
#   6. benchmarks/gpu_counters.py: the row engine's counters (rounds, work, scans) from its
#      kernels on CUDA against its simulation, the counters and the model on the real 16 x 576
#      tokens, and each stage's op time by both engines (what the model predicts, measured);
#   7. a short table (also in summary.md).
#
# Usage:  bash benchmarks/gpu_check.sh [--dry-run] [OUTDIR]
#   OUTDIR   default ${OUT:-./gpu_check_out}; at most 10 files: summary.md, speed_16x576.log,
#            pytest.log, speed_64x1024.log, greedy_rounds.log, speed_rows.log,
#            gpu_counters.log, speed.csv, greedy_rounds.csv, gpu_counters.csv
#   --dry-run  the same steps on a CPU, for their plumbing: speed.py --dry-run (tiny synthetic
#            inputs), pytest --collect-only, greedy_rounds.py --dry-run and gpu_counters.py
#            --dry-run (Triton interpreted)
#   PYTHON=python3.12 to choose the interpreter; GPU_CHECK_WORKERS (pytest -n, default 12).
#
# No install step: a checkout has the Triton kernels in the top-level kernels/ folder, which
# setup.py installs as adaptive_prune.kernels. The script copies the sources into a throwaway
# run folder with that layout (adaptive_prune/kernels) and runs every step there, so
# `python -m pytest` (which puts the current folder first on sys.path) and the benchmark
# scripts (which put their repository first) import the package with its kernels. The C++ core
# is not built there: CPU tensors fall back to the reference (with a warning), which is fine.
set -u -o pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
DRY=0
OUTDIR=""
for a in "$@"; do
    case "$a" in
        --dry-run) DRY=1 ;;
        -h|--help) sed -n '2,42p' "$0"; exit 0 ;;
        -*) echo "gpu_check: unknown option $a"; exit 2 ;;
        *) OUTDIR=$a ;;
    esac
done
OUTDIR=${OUTDIR:-${OUT:-./gpu_check_out}}
mkdir -p "$OUTDIR" || { echo "gpu_check: cannot create $OUTDIR"; exit 2; }
OUTDIR=$(cd "$OUTDIR" && pwd)
SUMMARY=$OUTDIR/summary.md
START=$(date +%s)
export PYTHONUNBUFFERED=1
unset ADAPTIVE_PRUNE_BACKEND
if [ "$DRY" -eq 1 ]; then
    export CUDA_VISIBLE_DEVICES="" TRITON_INTERPRET=1
else
    unset TRITON_INTERPRET
fi

say() { echo "$*" | tee -a "$SUMMARY"; }
: > "$SUMMARY"
say "# gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ)$([ "$DRY" -eq 1 ] && echo ' (dry run, CPU)')"
say ""

if ! "$PY" -c "import torch" 2>/dev/null; then
    say "gpu_check: '$PY' cannot import torch (set PYTHON=... to the interpreter that has it)"
    exit 3
fi
if [ "$DRY" -eq 0 ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    say "gpu_check: torch sees no CUDA device here; nothing to check (run it on a GPU machine," \
        "or --dry-run for the plumbing)"
    exit 3
fi

# ---- the run folder: the sources with kernels/ as adaptive_prune/kernels -------------------
RUN=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_run.XXXXXX")
trap 'rm -rf "$RUN"' EXIT
for p in adaptive_prune benchmarks tests pyproject.toml; do
    cp -r "$ROOT/$p" "$RUN/" || { say "gpu_check: cannot copy $p"; exit 4; }
done
rm -rf "$RUN/adaptive_prune/kernels" "$RUN/benchmarks/results"
find "$RUN" \( -name '*.so' -o -name __pycache__ \) -prune -exec rm -rf {} +
cp -r "$ROOT/kernels" "$RUN/adaptive_prune/kernels"
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -n "$(git -C "$ROOT" status --porcelain 2>/dev/null)" ] && COMMIT="$COMMIT+dirty"
export ADAPTIVE_PRUNE_BENCH_COMMIT=$COMMIT
export PYTHONPATH="$RUN"
cd "$RUN"

"$PY" - <<'EOF' 2>&1 | tee -a "$SUMMARY"
import torch, adaptive_prune
from adaptive_prune import backends
try:
    import triton
    tv = triton.__version__
except ImportError:
    tv = "none"
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    dev = f"{p.name}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB"
else:
    dev = "no CUDA device"
print(f"- {dev} | torch {torch.__version__} (CUDA {torch.version.cuda}) | triton {tv}")
print(f"- package: {adaptive_prune.__file__}")
print(f"- triton backend: {backends.unavailable('triton') or 'available'}")
EOF
say "- commit $COMMIT, output folder $OUTDIR"
say ""

# ---- steps -------------------------------------------------------------------------------
# step NAME CAP_S CMD...: runs CMD under `timeout`, its output tee'd to $OUTDIR/NAME.log;
# records the exit status (124/137: time cap) in summary.md and in RC_<NAME>.
step() {
    local name=$1 cap=$2
    shift 2
    local t0
    t0=$(date +%s)
    echo; echo "== $name (cap ${cap} s) =="
    timeout -k 10 "$cap" "$@" 2>&1 | tee "$OUTDIR/$name.log"
    local rc=${PIPESTATUS[0]}
    local note=""
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then note=" (time cap)"; fi
    say "- $name: rc=$rc$note, $(( $(date +%s) - t0 )) s"
    printf -v "RC_${name//[^A-Za-z0-9]/_}" '%s' "$rc"
}

if [ "$DRY" -eq 1 ]; then
    SPEED=(--device cpu --dry-run --threads 1)
    TESTS=(--collect-only)
    ROUNDS=(--dry-run)
    COUNTERS=(--dry-run)
else
    SPEED=(--device cuda --runs 10 --row-budget 2)
    TESTS=()
    if "$PY" -c "import xdist" 2>/dev/null; then TESTS=(-n "${GPU_CHECK_WORKERS:-12}"); fi
    ROUNDS=(--csv "$OUTDIR/greedy_rounds.csv")
    COUNTERS=(--csv "$OUTDIR/gpu_counters.csv")
fi
COMMON=(--csv "$OUTDIR/speed.csv" --png "" --baselines divprune cdpruner)

step speed_16x576 140 "$PY" benchmarks/speed.py "${SPEED[@]}" "${COMMON[@]}" \
    --scenarios 16x576
step pytest 160 "$PY" -m pytest -q -p no:cacheprovider -o addopts="" -rfEX "${TESTS[@]}" \
    -m "gpu or interpreter" tests/test_triton_gpu.py tests/test_backend_triton.py \
    tests/test_triton_engine.py tests/test_backend_routing.py tests/test_op_*.py
step speed_64x1024 70 "$PY" benchmarks/speed.py "${SPEED[@]}" "${COMMON[@]}" \
    --scenarios 64x1024 --windows 128 --engines blocks --no-reference
if [ "$DRY" -eq 1 ]; then  # the kernels interpreted on CPU tensors
    step greedy_rounds 120 env ADAPTIVE_PRUNE_BACKEND=triton "$PY" benchmarks/greedy_rounds.py \
        --quick "${ROUNDS[@]}"
else
    step greedy_rounds 35 "$PY" benchmarks/greedy_rounds.py --quick "${ROUNDS[@]}"
fi
step speed_rows 25 "$PY" benchmarks/speed.py "${SPEED[@]}" "${COMMON[@]}" \
    --scenarios 16x576 --windows --engines rows --no-reference --baselines
if [ "$DRY" -eq 1 ]; then
    step gpu_counters 120 "$PY" benchmarks/gpu_counters.py "${COUNTERS[@]}"
else
    step gpu_counters 55 "$PY" benchmarks/gpu_counters.py "${COUNTERS[@]}"
fi

# ---- short table, last ---------------------------------------------------------------------
TESTS_LINE=$(grep -E "[0-9]+ (passed|failed|tests? collected)|error" "$OUTDIR/pytest.log" | tail -1)
SYNCS=$(grep -h "\[host syncs\]" "$OUTDIR/pytest.log" | sed 's/.*\[host syncs\] //' | sort -u \
    | paste -sd ';' -)
{
    echo
    echo "## gpu_check summary ($(( $(date +%s) - START )) s)"
    echo
    echo "| check | result |"
    echo "|---|---|"
    echo "| speed 16x576 | rc=$RC_speed_16x576 |"
    echo "| pytest (gpu + kernels on CUDA) | rc=$RC_pytest: ${TESTS_LINE:-no summary (time cap?)} |"
    echo "| host syncs | ${SYNCS:-not reported} |"
    echo "| speed 64x1024 | rc=$RC_speed_64x1024 |"
    echo "| greedy_rounds | rc=$RC_greedy_rounds |"
    echo "| speed, row engine | rc=$RC_speed_rows |"
    echo "| gpu_counters | rc=$RC_gpu_counters: $(grep -ho "agree = [A-Za-z]*" \
        "$OUTDIR/gpu_counters.log" 2>/dev/null | head -1) |"
    echo
    grep -E "^\| (stage [12] (rounds|rounds per request|picks per round|rounds picked|model|measured)|prune: Triton launches \(GPU\))" \
        "$OUTDIR/gpu_counters.log" 2>/dev/null || true
    echo
    grep -E "^\| 25% \| stage" "$OUTDIR/greedy_rounds.log" 2>/dev/null \
        | sed '1i | keep | stage | chain | window | rounds | picks/round | passes/pick | same | ms step | ms window |' \
        || true
    echo
    sed -n '/^### speed targets/,$p' "$OUTDIR/speed_16x576.log" "$OUTDIR/speed_64x1024.log" \
        "$OUTDIR/speed_rows.log" \
        2>/dev/null | grep -v "^failed rows" || true
} | tee -a "$SUMMARY"
[ "$RC_speed_16x576" -eq 0 ] && [ "$RC_pytest" -eq 0 ] && [ "$RC_speed_64x1024" -eq 0 ] \
    && [ "$RC_greedy_rounds" -eq 0 ] && [ "$RC_speed_rows" -eq 0 ] \
    && [ "$RC_gpu_counters" -eq 0 ]
