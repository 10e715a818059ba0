"""Registers the Triton kernels (``adaptive_prune.kernels``) as the ``cuda`` implementation of
the ``adaptive_prune::*`` ops, so :func:`adaptive_prune.prune` on CUDA tensors runs them.

On a CPU they are registered only for testing: when the Triton interpreter is on
(``TRITON_INTERPRET=1`` before the package is imported) *and* ``ADAPTIVE_PRUNE_BACKEND=triton``.
Without ``triton`` nothing is registered and ``_backend.UNAVAILABLE["triton"]`` says why;
importing :mod:`adaptive_prune` never fails because of Triton, and does not import it: the
kernel modules load on the first call of a registered op (a triton that then fails to load
makes the ops fall back to the reference, with one warning).

fp64 inputs are served by the reference (the kernels compute in fp32); under the interpreter
bf16 inputs are upcast to fp32 (the interpreter cannot do bf16).
"""

from __future__ import annotations

import importlib.util
import os

from . import _backend, ops
from . import reference as ref

REGISTERED: dict[str, tuple[str, ...]] = {}


def _fp64(*tensors) -> bool:
    import torch

    return any(t is not None and t.dtype == torch.float64 for t in tensors)


def _ensure_kernels_package() -> None:
    """Make ``adaptive_prune.kernels`` importable from a source checkout that was not installed.

    The kernels live in the top-level ``kernels/`` folder, which setup.py installs as
    ``adaptive_prune.kernels``. Run from a plain checkout (``PYTHONPATH=.``), that name does not
    exist yet: load the folder under it.
    """
    import importlib.util
    import sys
    from pathlib import Path

    name = "adaptive_prune.kernels"
    if name in sys.modules or importlib.util.find_spec(name) is not None:
        return
    init = Path(__file__).resolve().parent.parent / "kernels" / "__init__.py"
    if not init.is_file():
        return
    spec = importlib.util.spec_from_file_location(
        name, init, submodule_search_locations=[str(init.parent)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


def _build():
    from adaptive_prune.kernels.allocate_budgets import allocate_budgets_fwd
    from adaptive_prune.kernels.budget_scores import budget_scores_fwd
    from adaptive_prune.kernels.global_greedy import global_greedy_fwd
    from adaptive_prune.kernels.greedy_select import greedy_select_fwd
    from adaptive_prune.kernels.pareto_select import pareto_select_fwd
    from adaptive_prune.kernels.token_similarity import token_alignment_fwd

    def budget_scores(vision, cu_seqlens, req_offsets, text, text_offsets, sigma, tau_a, eps):
        if _fp64(vision, text):
            return ref.budget_scores(
                vision, cu_seqlens, req_offsets, text, text_offsets, sigma, tau_a, eps
            )
        return budget_scores_fwd(
            vision, cu_seqlens, req_offsets, text, text_offsets, sigma, tau_a, eps
        )

    def allocate_budgets(weights, caps, mins, req_offsets, totals):
        return allocate_budgets_fwd(weights, caps, mins, req_offsets, totals)

    def greedy_select(vision, cu_seqlens, budgets, mode, eps):
        if _fp64(vision):
            return ref.greedy_select(vision, cu_seqlens, budgets, mode, eps)
        return greedy_select_fwd(vision, cu_seqlens, budgets, mode, eps)

    def global_greedy(vision, pool, pool_offsets, reserved, num_picks, eps):
        if _fp64(vision):
            return ref.global_greedy(vision, pool, pool_offsets, reserved, num_picks, eps)
        return global_greedy_fwd(vision, pool, pool_offsets, reserved, num_picks, eps)

    def token_alignment(vision, rows, row_offsets, text, text_offsets, reduce, eps):
        if _fp64(vision, text):
            return ref.token_alignment(vision, rows, row_offsets, text, text_offsets, reduce, eps)
        return token_alignment_fwd(vision, rows, row_offsets, text, text_offsets, reduce, eps)

    def pareto_select(gains, align, offsets, k):
        if _fp64(gains, align):
            return ref.pareto_select(gains, align, offsets, k)
        return pareto_select_fwd(gains, align, offsets, k)

    return {
        "budget_scores": budget_scores,
        "allocate_budgets": allocate_budgets,
        "greedy_select": greedy_select,
        "global_greedy": global_greedy,
        "token_alignment": token_alignment,
        "pareto_select": pareto_select,
    }


_IMPLS: dict = {}


def _impl(name: str):
    """The launcher of op ``name``; the kernel modules (and triton) load on the first call, so
    ``import adaptive_prune`` does not pay for them. A triton that fails to load then falls
    back to the reference, with one warning."""
    if not _IMPLS:
        try:
            _ensure_kernels_package()
            _IMPLS.update(_build())
        except Exception as exc:
            import warnings

            reason = f"triton kernels failed to load ({type(exc).__name__}: {exc})"
            _backend.UNAVAILABLE["triton"] = reason
            warnings.warn(f"adaptive_prune: {reason}; using the reference ops", stacklevel=3)
            _IMPLS.update({n: getattr(ref, n) for n in ops.ALL_OPS})
    return _IMPLS[name]


def _lazy(name: str):
    def kernel(*args, **kwargs):
        return _impl(name)(*args, **kwargs)

    kernel.__name__ = f"triton_{name}"
    kernel.__qualname__ = kernel.__name__
    return kernel


def _interpreting() -> bool:
    # the variable Triton reads when a kernel is decorated (the kernels load after this check)
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def _register() -> None:
    if importlib.util.find_spec("triton") is None:
        _backend.UNAVAILABLE["triton"] = "triton is not installed (pip install triton)"
        return
    devices = ["cuda"]
    if _interpreting() and _backend.requested() == "triton":
        devices.append("cpu")
    for name in ops.ALL_OPS:
        fn = _lazy(name)
        done = tuple(d for d in devices if _backend.register(ops.ALL_OPS[name], d, "triton", fn))
        if done:
            REGISTERED[name] = done


def load_now() -> None:
    """Load the kernel modules now (e.g. before timing); raises nothing, see ``_impl``."""
    _impl("greedy_select")


_register()
