"""The command line: the demo on bundled real data and the info report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "adaptive_prune", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "args",
    [[], ["--query", "--keep", "0.1"], ["--method", "adaptive", "--keep", "0.5"]],
    ids=["default", "query", "keep-half"],
)
def test_demo_writes_png_and_table(tmp_path, args):
    out = tmp_path / "demo.png"
    p = run("demo", *args, "--out", str(out), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for word in ("chelsea", "D_intra", "kept %", "mult", "time:"):
        assert word in p.stdout
    from PIL import Image

    assert Image.open(out).size[0] > 500


def test_demo_per_image_minimums_and_no_pool_column(tmp_path):
    p = run("demo", "--min-per-image", "1,1,1,1,1,1,1,1,1,1,1,200,1", "--keep", "0.1",
            "--query", "--out", str(tmp_path / "d.png"), cwd=tmp_path)  # fmt: skip
    assert p.returncode == 0, p.stderr
    page = next(line for line in p.stdout.splitlines() if line.startswith("page"))
    assert int(page.split()[3]) >= 200  # the protected document page keeps its minimum
    assert "pool" not in p.stdout and "budget" not in p.stdout and "query rel." in p.stdout


def test_demo_default_output_path(tmp_path):
    p = run("demo", "--keep", "0.05", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "adaptive_prune_demo.png").exists()


def test_demo_rejects_bad_keep(tmp_path):
    p = run("demo", "--keep", "1.5", "--out", str(tmp_path / "x.png"), cwd=tmp_path)
    assert p.returncode != 0 and "keep_ratio must be in (0, 1]" in p.stderr


def test_info_lists_backends_and_ops(tmp_path):
    p = run("info", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    for word in ("torch", "reference", "cpp", "triton", "greedy_select", "pareto_select"):
        assert word in p.stdout
