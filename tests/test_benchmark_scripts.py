"""The GPU check's scripts, run for their logic on a CPU (CI has no GPU).

``benchmarks/gpu_check.sh`` is run once on a lent GPU machine with little time to spare: a
script that breaks on a path only that run takes wastes it. Here each script runs in a
subprocess on small synthetic inputs with the Triton kernels interpreted (the same code paths
as on a GPU except the timers), its printed checks and CSV rows are read back, and
``gpu_check.sh --dry-run`` is killed mid-run to check that what it measured stays behind.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import time
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


def _table_rows(out: str) -> dict[str, list[str]]:
    """``row name -> cells`` of the last markdown table rows printed (the table with ratios)."""
    rows = {}
    for line in out.split("### speed targets")[0].splitlines():
        if line.startswith("| ") and not line.startswith("| row |"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells
    return rows


def test_speed_cuda_dry_run_runs_every_row_on_the_triton_kernels(tmp_path):
    summary, csv_path = tmp_path / "summary.md", tmp_path / "speed.csv"
    p = run_script(
        "benchmarks/speed.py", "--device", "cuda", "--dry-run", "--scenarios", "16x576",
        "--summary", str(summary), "--csv", str(csv_path),
    )  # fmt: skip
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = p.stdout
    rows = _table_rows(out)
    # the greedy variants and the reference return the default's indices
    for row in ("adaptive (triton), greedy one pick per step",
                "adaptive (triton), greedy window 128", "adaptive (reference)"):  # fmt: skip
        assert "same indices as the default: True" in rows[row][-1], rows[row]
    assert rows["adaptive (triton), greedy one pick per step"][1] == "triton greedy_window=0"
    for row in ("adaptive (triton)", "divprune", "cdpruner", "floor: stage-2 pool GEMM (B1 x B1)"):
        assert row in rows, row
    assert "failed" not in out, out
    # the per-op split timed every op the method calls, on the Triton kernels (the routing's
    # choice in the block); the alignment comes from budget_scores, not token_alignment
    ops = next(line for line in out.splitlines() if line.startswith("per op, ms"))
    for op in ("budget_scores", "allocate_budgets", "greedy_select", "global_greedy",
               "pareto_select", "refine_medoids"):  # fmt: skip
        assert op in ops, ops
    assert "token_alignment" not in ops, ops
    assert summary.read_text().startswith("### speed targets"), summary.read_text()
    # one CSV row per table row, with the conditions
    with csv_path.open() as f:
        written = list(csv.DictReader(f))
    assert [r["row"] for r in written] == list(rows), written
    assert {r["device"] for r in written} == {"cuda (dry run)"}
    assert all(r["git_commit"] and r["torch"] and r["scenario"] == "16x576" for r in written)


def test_speed_cpu_dry_run_has_the_cpu_rows(tmp_path):
    p = run_script("benchmarks/speed.py", "--device", "cpu", "--dry-run", "--threads", "1")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = _table_rows(p.stdout)
    main = "adaptive (C++)" if "adaptive (C++)" in rows else "adaptive (reference: no C++)"
    assert rows[main][5] == "" or float(rows[main][5]) > 0, rows[main]  # x floor
    if main == "adaptive (C++)":
        dense = rows["adaptive (C++, dense: proj_dim=0)"]
        assert dense[1] == "cpp proj_dim=0" and dense[-1].endswith("True"), dense
        assert rows["adaptive (reference)"][6] == "1.0x", rows["adaptive (reference)"]
    for method in ("divprune", "cdpruner", "uniform", "floor: stage-1 + stage-2 pool"):
        assert method in rows, method
    assert "appended" not in p.stdout  # a dry run writes no CSV unless asked


def _scale_tables(out: str) -> dict[str, dict[str, list[str]]]:
    """``scenario -> row name -> cells`` of the scale cases' tables (the last table of each)."""
    tables: dict[str, dict[str, list[str]]] = {}
    name = None
    for line in out.splitlines():
        if line.startswith("## scale "):
            name = line.split()[2].rstrip(",")
            tables[name] = {}
        elif name and line.startswith("| ") and not line.startswith("| row |"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            tables[name][cells[0]] = cells
    return tables


def test_speed_cpu_scale_dry_run_times_every_case_against_divprune(tmp_path):
    csv_path, png = tmp_path / "speed.csv", tmp_path / "speed_cpu.png"
    before = sorted((ROOT / "benchmarks" / "results").iterdir())
    p = run_script(
        "benchmarks/speed.py", "--device", "cpu", "--dry-run", "--scale", "--scenarios", "",
        "--csv", str(csv_path), "--png", str(png),
    )  # fmt: skip
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert sorted((ROOT / "benchmarks" / "results").iterdir()) == before  # nothing written there
    tables = _scale_tables(p.stdout)
    assert list(tables) == ["images:2x48", "images:4x48", "isotropic:4x48", "big:1x600"], tables
    for rows in tables.values():
        main = "adaptive (C++)" if "adaptive (C++)" in rows else "adaptive (reference: no C++)"
        assert list(rows) == [main, f"{main}, refine=0", "divprune"], rows
        assert rows["divprune"][7] == "1.00", rows["divprune"]  # x divprune
        for cells in rows.values():
            assert float(cells[7]) > 0 and cells[2] != "-", cells
        chain, groups = int(rows[main][8]), int(rows[main][9])
        assert groups >= 1 and chain >= 1, rows[main]
        assert rows[f"{main}, refine=0"][8] == "", rows  # diagnostics on the default row only
    assert "1 run, no warm-up, in a forked child" in tables["big:1x600"]["divprune"][-1]
    with csv_path.open() as f:
        written = list(csv.DictReader(f))
    assert len(written) == 12 and {r["device"] for r in written} == {"cpu (dry run)"}
    assert all(r["git_commit"] and r["x_divprune"] for r in written), written
    assert [r["scenario"] for r in written[::3]] == list(tables)
    if "no matplotlib" not in p.stdout:
        assert (tmp_path / "speed_cpu_scale.png").stat().st_size > 0


def test_speed_cpu_scale_row_over_the_cap_did_not_finish(tmp_path):
    csv_path = tmp_path / "speed.csv"
    p = run_script(
        "benchmarks/speed.py", "--device", "cpu", "--dry-run", "--scale", "--scenarios", "",
        "--scale-cases", "big", "--cap", "0", "--csv", str(csv_path),
    )  # fmt: skip
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = _scale_tables(p.stdout)["big:1x600"]
    assert len(rows) == 3 and all("did not finish within 0 s" in c[-1] for c in rows.values())
    with csv_path.open() as f:
        written = list(csv.DictReader(f))
    assert [r["ms_median"] for r in written] == ["", "", ""], written


def test_append_csv_adds_columns_only_at_the_end(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import _harness as H
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    path = tmp_path / "x.csv"
    H.append_csv(path, [{"a": 1, "b": 2}], ["a", "b"])
    H.append_csv(path, [{"a": 3, "b": 4, "c": 5}], ["a", "b", "c"])  # extends the header
    with path.open() as f:
        assert list(csv.reader(f)) == [["a", "b", "c"], ["1", "2", ""], ["3", "4", "5"]]
    with pytest.raises(ValueError, match="move the old file aside"):
        H.append_csv(path, [{"c": 1}], ["c", "a", "b"])  # not an extension at the end


def test_greedy_rounds_dry_run_matches_the_step_loops():
    p = run_script("benchmarks/greedy_rounds.py", "--dry-run", "--quick")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = [line for line in p.stdout.splitlines() if line.startswith("| 25% | stage")]
    assert len(rows) == 2, p.stdout
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        steps, window, rounds, same = int(cells[2]), int(cells[3]), int(cells[4]), cells[7]
        assert window == 64 and same == "True", line
        assert rounds <= steps and (rounds >= 1 or steps == 0), line  # a round makes a pick
    assert "appended" not in p.stdout  # a dry run writes no CSV


def _bash() -> str:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    return bash


def test_gpu_check_script_parses_and_refuses_a_machine_without_cuda(tmp_path):
    bash = _bash()
    syntax = subprocess.run([bash, "-n", "benchmarks/gpu_check.sh"], cwd=ROOT,
                            capture_output=True, text=True)  # fmt: skip
    assert syntax.returncode == 0, syntax.stderr
    env = dict(CPU_ENV, PYTHON=sys.executable)
    p = subprocess.run([bash, "benchmarks/gpu_check.sh", str(tmp_path / "out")], cwd=ROOT,
                       capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert p.returncode == 3, p.stdout + p.stderr
    assert "no CUDA device" in p.stdout
    assert "no CUDA device" in (tmp_path / "out" / "summary.md").read_text()


def test_gpu_check_killed_mid_run_leaves_its_logs_and_csv(tmp_path):
    """The GPU machine kills the check at its time limit: what ran before must be in the
    output folder. A dry run is killed (SIGKILL, whole process group) as soon as the first
    speed step is over, i.e. during the next step."""
    bash, out = _bash(), tmp_path / "out"
    env = dict(CPU_ENV, PYTHON=sys.executable, TMPDIR=str(tmp_path))
    env.pop("OUT", None)
    proc = subprocess.Popen([bash, "benchmarks/gpu_check.sh", "--dry-run", str(out)], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    csv_path, summary_path = out / "speed.csv", out / "summary.md"
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and proc.poll() is None:
            step1_done = summary_path.exists() and "- speed_16x576: rc=" in summary_path.read_text()
            if step1_done and (out / "pytest.log").exists():
                break  # step 1 is over and step 2 (pytest) has begun its log: kill it there
            time.sleep(0.1)
        assert proc.poll() is None, "the dry run ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    assert rows and {r["scenario"] for r in rows} == {"16x576"}, rows
    log = (out / "speed_16x576.log").read_text()
    assert "| divprune |" in log and "appended" in log, log
    assert (out / "pytest.log").exists()  # the step it was killed in
    summary = summary_path.read_text()
    assert "- speed_16x576: rc=0" in summary, summary
    assert "## gpu_check summary" not in summary, summary  # it was killed before the end
    assert len(list(out.iterdir())) <= 8


def test_gpu_check_names_existing_test_files():
    """Every test file the GPU check hands to pytest exists (a missing one fails that step on
    the GPU machine, where there is no second try)."""
    text = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    paths = set(re.findall(r"tests/[\w*]+\.py", text))
    assert paths
    for p in sorted(paths):
        assert list(ROOT.glob(p)), f"gpu_check.sh names {p}, which matches no file"
