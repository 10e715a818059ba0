"""Shared test setup: the ``device`` fixture, fixed seeds, and the Triton interpreter switch.

Triton chooses between compiling and interpreting when ``triton.jit`` decorates a kernel, i.e.
when ``adaptive_prune`` is imported. pytest imports this file before any test module, so on a
machine without CUDA it turns the interpreter on here (``TRITON_INTERPRET=1``, unless the
environment already says otherwise): the Triton kernels then run on CPU tensors, which is how
CI (``python -m pytest -q``, no GPU) tests them. ``import torch`` does not import triton.
"""

from __future__ import annotations

import importlib.util
import os
import random

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
HAS_TRITON = importlib.util.find_spec("triton") is not None
TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET", "") == "1"
# Where the Triton kernels can run in this session: on the GPU, or on the CPU when interpreted.
TRITON_RUNS = HAS_TRITON and (HAS_CUDA or TRITON_INTERPRET)
TRITON_SKIP_REASON = (
    "triton is not installed"
    if not HAS_TRITON
    else "Triton kernels need a CUDA device or TRITON_INTERPRET=1 set before the session starts"
)


def pytest_collection_modifyitems(config, items):
    no_gpu = pytest.mark.skip(reason="needs a CUDA device")
    no_triton = pytest.mark.skip(reason=TRITON_SKIP_REASON)
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(no_gpu)
        if "interpreter" in item.keywords and not TRITON_RUNS:
            item.add_marker(no_triton)


@pytest.fixture
def device() -> torch.device:
    """CUDA when available, else the CPU (where Triton kernels run interpreted)."""
    return torch.device("cuda" if HAS_CUDA else "cpu")


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture
def poison():
    """Fresh buffers start as NaN / the largest integer (torch's deterministic mode fills
    ``torch.empty``), so an output slot a kernel never writes fails the comparison. Used by the
    op and backend tests (``pytestmark = pytest.mark.usefixtures("poison")``)."""
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(was)
