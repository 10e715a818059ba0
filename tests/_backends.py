"""The backends the per-op tests run on, how to call an op on one, and the tolerances.

``BACKENDS`` parametrizes every test in tests/test_op_*.py:

- ``reference``: the pure-PyTorch reference (``adaptive_prune.backend("reference")``), checked
  against the brute-force oracles written in the test files;
- ``cpp``: the C++ core on CPU tensors. Skipped with the reason when it is unavailable, except
  under ``ADAPTIVE_PRUNE_REQUIRE_EXT=1`` (CI), where that is a failure;
- ``triton``: the Triton kernels on CPU tensors under the interpreter (marker ``interpreter``;
  skipped where the interpreter is off, i.e. on a GPU machine, where ``cuda`` runs them);
- ``cuda``: the Triton kernels compiled, on CUDA tensors (marker ``gpu``).
"""

from __future__ import annotations

import os

import pytest
import torch
from conftest import HAS_CUDA, TRITON_INTERPRET

import adaptive_prune
from adaptive_prune import backends, ops

REQUIRE_EXT = os.environ.get("ADAPTIVE_PRUNE_REQUIRE_EXT", "0") == "1"

BACKENDS = [
    pytest.param("reference", id="reference"),
    pytest.param("cpp", id="cpp"),
    pytest.param("triton", id="triton", marks=pytest.mark.interpreter),
    pytest.param("cuda", id="cuda", marks=pytest.mark.gpu),
]
FAST = BACKENDS[1:]  # the backends compared with the reference

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# Absolute tolerance of a cosine-like fp32 quantity (a similarity, a distance, a gain, an
# alignment) against the float64 brute force or between two backends: both sides accumulate in
# fp32 (fp16/bf16 inputs are exact in fp32). One entry per input dtype.
ATOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-6, torch.bfloat16: 2e-6}
# Two float64 greedy scores closer than this are a tie: either pick is a valid greedy step.
TIE = 1e-5


def require(name: str) -> None:
    """Skip (or, for a required C++ core, fail) when backend ``name`` cannot run here."""
    if name == "cpp":
        why = backends.unavailable("cpp")
        if why is not None:
            if REQUIRE_EXT:
                pytest.fail(
                    f"ADAPTIVE_PRUNE_REQUIRE_EXT=1 but the C++ backend is unavailable: {why}"
                )
            pytest.skip(f"the C++ backend is unavailable: {why}")
    elif name == "triton":
        if not TRITON_INTERPRET:
            pytest.skip("the Triton interpreter is off (the `cuda` parameter runs the kernels)")
    elif name == "cuda" and not HAS_CUDA:
        pytest.skip("needs a CUDA device")


def device_of(name: str) -> torch.device:
    return torch.device("cuda" if name == "cuda" else "cpu")


def context(name: str, **knobs):
    """The ``adaptive_prune.backend`` block that serves an op with backend ``name``."""
    return adaptive_prune.backend("triton" if name == "cuda" else name, **knobs)


def _move(a, dev: torch.device, keep_cpu: tuple[int, ...], i: int):
    if isinstance(a, torch.Tensor) and i not in keep_cpu:
        return a.to(dev)
    return a


def call(name: str, op: str, args: tuple, keep_cpu: tuple[int, ...] = (), **knobs):
    """Run ``torch.ops.adaptive_prune.<op>(*args)`` on backend ``name`` and return the outputs
    on the CPU (a tuple). Tensors go to the backend's device except the argument positions in
    ``keep_cpu`` (host offsets). Also checks that the call really is served by ``name``."""
    require(name)
    dev = device_of(name)
    args = tuple(_move(a, dev, keep_cpu, i) for i, a in enumerate(args))
    with context(name, **knobs):
        served = backends.serving(op, dev.type, args)[0]
        out = ops.ALL_OPS[op](*args)
    want = "triton" if name == "cuda" else name
    assert served == want, f"{op} was served by {served}, not {want}"
    out = out if isinstance(out, tuple) else (out,)
    for o in out:
        assert o.device.type == dev.type, f"{op} output on {o.device}, inputs on {dev}"
    return tuple(o.cpu() for o in out)


def opcheck(name: str, op: str, samples: list[tuple]) -> None:
    """``torch.library.opcheck`` of op ``op`` served by backend ``name`` on every sample (on the
    first only under the interpreter: opcheck calls the op many times, and the ``cuda``
    parameter runs the same kernels on all of them)."""
    require(name)
    dev = device_of(name)
    if name == "triton":
        samples = samples[:1]
    with context(name):
        for args in samples:
            args = tuple(_move(a, dev, (), i) for i, a in enumerate(args))
            torch.library.opcheck(ops.ALL_OPS[op], args)
