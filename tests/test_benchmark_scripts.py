"""The GPU check's scripts, run for their logic on a CPU (CI has no GPU).

``benchmarks/gpu_check.sh`` is run once on a lent GPU machine with little time to spare: a
script that breaks on a path only that run takes wastes it. Here each script runs in a
subprocess on small synthetic inputs with the Triton kernels interpreted (the same code paths
as on a GPU except the timers and the CSV), and its printed checks are read back.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.interpreter


# the scripts' CPU dry runs, on every machine: no GPU visible, the Triton kernels interpreted
CPU_ENV = dict(os.environ, TRITON_INTERPRET="1", ADAPTIVE_PRUNE_BACKEND="triton",
               CUDA_VISIBLE_DEVICES="")  # fmt: skip


def run_script(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=CPU_ENV, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def test_speed_gpu_dry_run_runs_every_row_on_the_triton_kernels(tmp_path):
    summary = tmp_path / "summary.md"
    p = run_script(
        "benchmarks/speed_gpu.py", "--device", "cpu", "--scenarios", "16x576",
        "--summary", str(summary),
    )  # fmt: skip
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = p.stdout
    # the greedy variants and the reference return the default's indices
    assert out.count("same indices as the default window 64: True") == 2, out
    assert "same indices as triton: True" in out, out
    assert ": False" not in out, out
    for row in ("| adaptive (triton) |", "| divprune |", "| cdpruner |", "floor: stage-2"):
        assert row in out, row
    # every op ran on the Triton kernels, and the per-op breakdown timed each of them
    backends = next(line for line in out.splitlines() if line.startswith("backends on cpu:"))
    ops = next(line for line in out.splitlines() if line.startswith("per op, ms"))
    for op in ("budget_scores", "allocate_budgets", "greedy_select", "global_greedy",
               "token_alignment", "pareto_select"):  # fmt: skip
        assert f"{op} triton" in backends, backends
        assert op in ops, ops
    assert summary.read_text().startswith("### speed targets"), summary.read_text()


def test_greedy_rounds_dry_run_matches_the_step_loops():
    p = run_script("benchmarks/greedy_rounds.py", "--dry-run", "--quick")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = [line for line in p.stdout.splitlines() if line.startswith("| 25% | stage")]
    assert len(rows) == 2, p.stdout
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        steps, window, rounds, same = int(cells[2]), int(cells[3]), int(cells[4]), cells[7]
        assert window == 64 and same == "True", line
        assert 1 <= rounds <= steps, line  # a round makes at least one pick
    assert "appended" not in p.stdout  # a dry run writes no CSV


def test_gpu_check_script_parses_and_refuses_a_machine_without_cuda():
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    syntax = subprocess.run([bash, "-n", "benchmarks/gpu_check.sh"], cwd=ROOT,
                            capture_output=True, text=True)  # fmt: skip
    assert syntax.returncode == 0, syntax.stderr
    env = dict(CPU_ENV, PYTHON=sys.executable)
    p = subprocess.run([bash, "benchmarks/gpu_check.sh"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, env=env)  # fmt: skip
    assert p.returncode == 3, p.stdout + p.stderr
    assert "no CUDA device" in p.stdout
