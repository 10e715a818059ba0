"""Every kernel variant the GPU launchers use compiles for sm_90 (H100/H200), without a GPU.

Runs ``python -m adaptive_prune.kernels._compile_check`` with the interpreter off: Triton lowers
each kernel to PTX and runs the bundled ``ptxas`` for the target, which catches type and layout
errors and shared-memory overuse that the interpreter cannot see. Register spills are printed
(the configs were chosen spill-free) but not asserted: they depend on the Triton version.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _has_nvidia_backend() -> bool:
    try:
        return importlib.util.find_spec("triton.backends.nvidia") is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.skipif(not _has_nvidia_backend(), reason="triton with its NVIDIA backend is needed")
def test_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # silences a triton 3.9 notice
    cmd = [sys.executable, "-m", "adaptive_prune.kernels._compile_check", "--arch", "90"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr[-3000:]
    assert proc.returncode == 0, out
    assert "all variants compile for sm_90" in proc.stdout, out
