"""What the benchmark scripts share: the run conditions they record and op instrumentation.

Imported as ``_env`` by ``quality.py``, ``speed_cpu.py``, ``speed_gpu.py`` and ``hf_prefill.py``
(each puts this folder on ``sys.path``). Nothing here imports ``adaptive_prune`` at import time.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import platform
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (else what ``platform`` knows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(dirty: str = "+dirty", missing: str = "unknown") -> str:
    """Short HEAD of the repository, ``dirty`` appended when the tree has changes."""
    try:
        git = dict(cwd=REPO, capture_output=True, text=True, timeout=10)
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], **git).stdout.strip()
        changes = subprocess.run(["git", "status", "--porcelain"], **git).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return missing
    return (head or missing) + (dirty if changes else "")


def triton_version() -> str:
    try:
        import triton
    except ImportError:
        return "none"
    return triton.__version__


def conditions() -> dict:
    """The environment columns every CSV row starts with: date, commit, host, CPU."""
    return {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "machine": platform.node(),
        "cpu": cpu_model(),
    }


# --------------------------------------------------------------------------------------------
# swapping the ops of the adaptive composition
# --------------------------------------------------------------------------------------------
class WallTimer:
    """Host wall time (ms) of a ``with`` block, in ``.ms``."""

    def __enter__(self):
        self.c0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.ms = (time.perf_counter() - self.c0) * 1e3


@contextlib.contextmanager
def _swapped_ops(name: str, table: dict):
    from adaptive_prune.methods import adaptive

    saved = adaptive.ops
    adaptive.ops = type(name, (), table)
    try:
        yield
    finally:
        adaptive.ops = saved


def reference_ops():
    """Run the adaptive method with the pure-PyTorch reference of every op."""
    from adaptive_prune import ops
    from adaptive_prune.ops import reference as ref

    return _swapped_ops("ReferenceOps", {n: staticmethod(getattr(ref, n)) for n in ops.ALL_OPS})


@contextlib.contextmanager
def op_timers(acc: dict, timer=WallTimer):
    """Accumulate into ``acc`` the time (ms, as ``timer`` measures it) of every op the adaptive
    composition calls."""
    from adaptive_prune import adaptive, ops

    saved = adaptive.ops

    def wrap(name):
        fn = getattr(saved, name)

        def run(*a, **k):
            with timer() as t:
                r = fn(*a, **k)
            acc[name] = acc.get(name, 0.0) + t.ms
            return r

        return staticmethod(run)

    with _swapped_ops("TimedOps", {n: wrap(n) for n in ops.ALL_OPS}):
        yield
