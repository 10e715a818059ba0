"""The C++ CPU backend: loads ``adaptive_prune._C`` and serves the ops' CPU kernels with it.

Design (docs/cpp.md). The C++ ops live in their own namespace, ``torch.ops.adaptive_prune_cpp``
(schemas in ``csrc/ops.cpp``, CPU kernels in ``csrc/cpu/``), so they never clash with the
public ``adaptive_prune::*`` ops that :mod:`adaptive_prune.ops` defines in Python. At package
import this module

1. imports the extension, whose static initialisers register the C++ ops (skipped with
   ``ADAPTIVE_PRUNE_DISABLE_EXT=1``);
2. registers a fake (meta) kernel for every ``adaptive_prune_cpp`` op (``torch.compile``,
   ``torch.export`` and ``opcheck`` need them);
3. registers thin wrappers as the ``"cpu"`` kernels of the public ops through
   :func:`adaptive_prune._backend.register`, so ``ADAPTIVE_PRUNE_BACKEND=reference`` turns them
   off. float64 tokens stay on the reference (the specification in fp64); the C++ kernels
   read fp32/fp16/bf16 and compute in fp32.

Warnings: none when the extension was simply not built (setup.py says so at build time and
``python -m adaptive_prune info`` shows :func:`status`); one when a built extension exists but
cannot be used (typically built against another torch: rebuild it).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import warnings
from typing import Any, Optional

import torch

from . import _backend, ops
from . import reference as ref

__all__ = ["HAS_EXT", "REASON", "SERVED_OPS", "status"]

MODULE = "adaptive_prune._C"
NAMESPACE = "adaptive_prune_cpp"
# public ops whose CPU kernel the extension provides (all of them)
SERVED_OPS = (
    "budget_scores",
    "allocate_budgets",
    "greedy_select",
    "global_greedy",
    "token_alignment",
    "pareto_select",
)
AUTO = -1  # proj_dim: let the kernel choose (see csrc/cpu/maxmin.h)
# proj_dim the public ops pass to the max-min kernels. It changes the speed, never the result
# (benchmarks set it to 0 to time the dense greedy).
PROJ_DIM = AUTO

HAS_EXT = False
REASON: Optional[str] = None  # why the extension is not used, when it is not
_PATH: Optional[str] = None
_BUILT_AGAINST: Optional[str] = None


def _disabled() -> bool:
    return os.environ.get("ADAPTIVE_PRUNE_DISABLE_EXT", "0").strip().lower() not in (
        "",
        "0",
        "false",
        "no",
        "off",
    )


def _load() -> Optional[str]:
    """Import the extension; returns None on success, else the reason it is not used."""
    global _PATH, _BUILT_AGAINST
    if _disabled():
        return "disabled by ADAPTIVE_PRUNE_DISABLE_EXT=1"
    try:
        spec = importlib.util.find_spec(MODULE)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return (
            "not built (install from source with a C++ compiler: "
            "`pip install --no-build-isolation .`, see docs/cpp.md)"
        )
    _PATH = spec.origin
    try:
        mod = importlib.import_module(MODULE)
    except Exception as exc:  # noqa: BLE001 (an undefined symbol is an ImportError, not only)
        reason = f"{_PATH} failed to load ({type(exc).__name__}: {exc})"
    else:
        _BUILT_AGAINST = getattr(mod, "torch_version", None)
        if _BUILT_AGAINST == torch.__version__:
            return None
        reason = f"{_PATH} was built against torch {_BUILT_AGAINST}, running {torch.__version__}"
    warnings.warn(
        f"adaptive_prune: the C++ extension is not used: {reason}. The CPU ops fall back to the "
        "pure-PyTorch reference; rebuild with `pip install --no-build-isolation .` (or set "
        "ADAPTIVE_PRUNE_DISABLE_EXT=1 to silence this).",
        RuntimeWarning,
        stacklevel=2,
    )
    return reason


# --------------------------------------------------------------------------------------------
# fakes of the C++ ops (same shapes as the public ops' fakes)
# --------------------------------------------------------------------------------------------
def _register_fakes() -> None:
    def fake(name):
        return torch.library.register_fake(f"{NAMESPACE}::{name}")

    @fake("budget_scores")
    def _(vision, cu_seqlens, req_offsets, text, text_offsets, sigma, tau_a, eps):
        n, R = cu_seqlens.shape[0] - 1, req_offsets.shape[0] - 1
        one = vision.new_empty((n,), dtype=torch.float32)
        return (
            one,
            torch.empty_like(one),
            torch.empty_like(one),
            vision.new_empty((R,), dtype=torch.float32),
        )

    @fake("allocate_budgets")
    def _(weights, caps, mins, req_offsets, totals):
        return weights.new_empty(weights.shape, dtype=torch.int64)

    @fake("greedy_select")
    def _(vision, cu_seqlens, budgets, mode, eps, proj_dim=AUTO):
        return vision.new_empty((vision.shape[0],), dtype=torch.int64)

    @fake("global_greedy")
    def _(vision, pool, pool_offsets, reserved, num_picks, eps, proj_dim=AUTO):
        total = sum(num_picks)
        return (
            vision.new_empty((total,), dtype=torch.int64),
            vision.new_empty((total,), dtype=torch.float32),
        )

    @fake("token_alignment")
    def _(vision, rows, row_offsets, text, text_offsets, reduce, eps):
        return vision.new_empty((rows.shape[0],), dtype=torch.float32)

    @fake("pareto_select")
    def _(gains, align, offsets, k):
        return gains.new_empty(gains.shape, dtype=torch.bool)


# --------------------------------------------------------------------------------------------
# CPU kernels of the public ops
# --------------------------------------------------------------------------------------------
def _fp64(*tensors) -> bool:
    return any(t is not None and t.dtype == torch.float64 for t in tensors)


def _budget_scores(vision, cu_seqlens, req_offsets, text, text_offsets, sigma, tau_a, eps):
    if _fp64(vision, text):
        return ref.budget_scores(
            vision, cu_seqlens, req_offsets, text, text_offsets, sigma, tau_a, eps
        )
    return torch.ops.adaptive_prune_cpp.budget_scores(
        vision, cu_seqlens, req_offsets, text, text_offsets, sigma, tau_a, eps
    )


def _allocate_budgets(weights, caps, mins, req_offsets, totals):
    return torch.ops.adaptive_prune_cpp.allocate_budgets(weights, caps, mins, req_offsets, totals)


def _greedy_select(vision, cu_seqlens, budgets, mode, eps):
    if _fp64(vision):
        return ref.greedy_select(vision, cu_seqlens, budgets, mode, eps)
    return torch.ops.adaptive_prune_cpp.greedy_select(
        vision, cu_seqlens, budgets, mode, eps, PROJ_DIM
    )


def _global_greedy(vision, pool, pool_offsets, reserved, num_picks, eps):
    if _fp64(vision):
        return ref.global_greedy(vision, pool, pool_offsets, reserved, num_picks, eps)
    return torch.ops.adaptive_prune_cpp.global_greedy(
        vision, pool, pool_offsets, reserved, list(num_picks), eps, PROJ_DIM
    )


def _token_alignment(vision, rows, row_offsets, text, text_offsets, reduce, eps):
    if _fp64(vision, text):
        return ref.token_alignment(vision, rows, row_offsets, text, text_offsets, reduce, eps)
    return torch.ops.adaptive_prune_cpp.token_alignment(
        vision, rows, row_offsets, text, text_offsets, reduce, eps
    )


def _pareto_select(gains, align, offsets, k):
    return torch.ops.adaptive_prune_cpp.pareto_select(gains, align, offsets, list(k))


_KERNELS = {
    "budget_scores": _budget_scores,
    "allocate_budgets": _allocate_budgets,
    "greedy_select": _greedy_select,
    "global_greedy": _global_greedy,
    "token_alignment": _token_alignment,
    "pareto_select": _pareto_select,
}


def status() -> dict[str, Any]:
    """What ``python -m adaptive_prune info`` prints about the C++ backend."""
    return {
        "available": HAS_EXT,
        "reason": REASON,
        "path": _PATH,
        "built_against_torch": _BUILT_AGAINST,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "serves": {name: _backend.active(name, "cpu") for name in SERVED_OPS},
        "env": {
            name: os.environ.get(name)
            for name in ("ADAPTIVE_PRUNE_DISABLE_EXT", "ADAPTIVE_PRUNE_BACKEND")
        },
    }


REASON = _load()
if REASON is None:
    HAS_EXT = True
    _register_fakes()
    for _name, _fn in _KERNELS.items():
        _backend.register(ops.ALL_OPS[_name], "cpu", "cpp", _fn)
else:
    _backend.UNAVAILABLE["cpp"] = REASON
