"""The C++ backend: the table of CPU implementations served by the compiled core.

Interface used by :mod:`adaptive_prune.backends`: :func:`unavailable`, :func:`table` (op name ->
implementation with the public op's signature plus the knobs ``proj_dim`` and
``num_threads``) and :func:`status`.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Callable, Optional

import torch

from .. import ops

MODULE = "adaptive_prune._C"
NAMESPACE = "adaptive_prune_cpp"
AUTO = -1

_STATE: dict[str, Any] = {}


def _load() -> Optional[str]:
    if "reason" in _STATE:
        return _STATE["reason"]
    reason = None
    spec = importlib.util.find_spec(MODULE)
    if spec is None:
        reason = "the C++ core was not built"
    else:
        try:
            mod = importlib.import_module(MODULE)
        except Exception as exc:  # noqa: BLE001
            reason = f"{spec.origin} failed to load ({type(exc).__name__}: {exc})"
        else:
            built = getattr(mod, "torch_version", None)
            if built != torch.__version__:
                reason = f"built against torch {built}, running {torch.__version__}"
        _STATE["path"] = spec.origin
    _STATE["reason"] = reason
    return reason


def unavailable() -> Optional[str]:
    return _load()


def _wrap(name: str) -> Callable:
    fn = getattr(getattr(torch.ops, NAMESPACE), name)
    greedy = name in ("greedy_select", "global_greedy")

    def impl(*args, proj_dim: int = AUTO, num_threads: Optional[int] = None):
        args = tuple(list(a) if isinstance(a, (list, tuple)) else a for a in args)
        if name == "global_greedy" and len(args) == 6:
            args += (None,)  # group_offsets omitted: one group per request
        return fn(*args, proj_dim) if greedy else fn(*args)

    return impl


def table() -> dict[str, Callable]:
    if "table" not in _STATE:
        if _load() is not None:
            raise RuntimeError(f"the C++ backend is not available: {_STATE['reason']}")
        ns = getattr(torch.ops, NAMESPACE)
        _STATE["table"] = {name: _wrap(name) for name in ops.ALL_OPS if hasattr(ns, name)}
    return _STATE["table"]


def status() -> dict[str, Any]:
    return {"available": _load() is None, "reason": _load(), "path": _STATE.get("path")}
