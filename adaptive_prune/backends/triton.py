"""The Triton backend: the table of CUDA implementations served by ``adaptive_prune.kernels``.

Interface used by :mod:`adaptive_prune.backends`: :func:`unavailable`, :func:`table` (op name ->
implementation with the public op's signature plus the knobs ``greedy_window`` and
``block_budget_mb``) and :func:`status`. Importing this module does not import Triton; the
kernel modules load on the first call of :func:`table`.

The table is built by one loop over the ops: op ``X`` is served by ``adaptive_prune.kernels.X``'s
launcher ``X_fwd`` (an op without such a module is left to the reference). Knobs reach the
launchers that take them (``greedy_window`` is their ``window`` argument). A launcher raises
``kernels._common.Unsupported`` for an input its kernel does not take; the op then runs the
reference. The kernels never import the package.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
from typing import Any, Callable, Optional

from .. import ops

# knob name -> launcher argument name
KNOB_ARGS = {
    "greedy_window": "window",
    "block_budget_mb": "block_budget_mb",
    "greedy_engine": "engine",
}

_STATE: dict[str, Any] = {}


def unavailable() -> Optional[str]:
    if "reason" not in _STATE:
        if importlib.util.find_spec("triton") is None:
            _STATE["reason"] = "triton is not installed (pip install triton)"
        else:
            try:
                table()
            except Exception as exc:  # noqa: BLE001 (any failure to load the kernels)
                why = f"{type(exc).__name__}: {exc}"
                _STATE["reason"] = f"the Triton kernels failed to load ({why})"
            else:
                _STATE["reason"] = None
    return _STATE["reason"]


def _serve(name: str, fwd: Callable, unsupported: type) -> Callable:
    takes = set(inspect.signature(fwd).parameters)
    reference = ops.REFERENCE[name]

    def impl(*args, **knobs):
        kw = {KNOB_ARGS[k]: v for k, v in knobs.items() if KNOB_ARGS[k] in takes}
        try:
            return fwd(*args, **kw)
        except unsupported:
            return reference(*args)

    impl.__name__ = impl.__qualname__ = f"triton_{name}"
    return impl


def table() -> dict[str, Callable]:
    if "table" not in _STATE:
        common = importlib.import_module("adaptive_prune.kernels._common")
        table = {}
        for name in ops.ALL_OPS:  # an op without a kernel module is served by the reference
            module = f"adaptive_prune.kernels.{name}"
            if importlib.util.find_spec(module) is None:
                continue
            fwd = getattr(importlib.import_module(module), f"{name}_fwd")
            table[name] = _serve(name, fwd, common.Unsupported)
        _STATE["table"] = table
    return _STATE["table"]


def call_scope():
    """The Triton launchers' per-call scope (``kernels.token_similarity.shared_inv_norms``: one
    pass of row norms for all the launchers of a call), or a no-op before the kernels load."""
    if "table" not in _STATE:
        return contextlib.nullcontext()
    return importlib.import_module("adaptive_prune.kernels.token_similarity").shared_inv_norms()


def status() -> dict[str, Any]:
    spec = importlib.util.find_spec("triton")
    version = None
    if spec is not None:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as dist_version

        try:
            version = dist_version("triton")
        except PackageNotFoundError:
            version = "unknown"
    return {"installed": spec is not None, "version": version, "loaded": "table" in _STATE}
