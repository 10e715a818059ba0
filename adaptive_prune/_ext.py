"""The C++ CPU backend, wired to the public ops (a shim until the routing layer lands).

The kernels are :mod:`adaptive_prune.backends.cpp` (``adaptive_prune._core``, pybind11, no
torch at build time; docs/cpp.md). At package import this module registers its :data:`TABLE
<adaptive_prune.backends.cpp.TABLE>` entries as the ``"cpu"`` kernels of the public ops through
:func:`adaptive_prune._backend.register` (so ``ADAPTIVE_PRUNE_BACKEND=reference`` turns them
off). float64 tokens stay on the reference (the specification in fp64); the C++ kernels read
fp32/fp16/bf16 and compute in fp32. :data:`PROJ_DIM` is passed to the two greedy ops as their
``proj_dim`` knob (it changes the speed, never the result; benchmarks set 0 to time the dense
greedy).

Without the extension the public ops keep the reference, and the first CPU call warns once
(cause and fix), unless the extension was disabled on purpose.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from . import _backend, ops
from . import reference as ref
from .backends import cpp

__all__ = ["HAS_EXT", "REASON", "SERVED_OPS", "PROJ_DIM", "status"]

SERVED_OPS = cpp.OPS
AUTO = -1
PROJ_DIM = AUTO

HAS_EXT: bool = cpp.AVAILABLE
REASON: Optional[str] = cpp.REASON

# positions of the floating token arguments per op (float64 there -> the reference)
_TOKEN_ARGS = {
    "budget_scores": (0, 3),
    "greedy_select": (0,),
    "global_greedy": (0,),
    "token_alignment": (0, 3),
}
_KNOBBED = ("greedy_select", "global_greedy")


def _kernel(name: str):
    impl = cpp.TABLE[name]
    reference = getattr(ref, name)
    token_args = _TOKEN_ARGS.get(name, ())
    knobbed = name in _KNOBBED

    def fn(*args):
        if any(
            isinstance(args[i], torch.Tensor) and args[i].dtype == torch.float64 for i in token_args
        ):
            return reference(*args)
        return impl(*args, proj_dim=PROJ_DIM) if knobbed else impl(*args)

    fn.__name__ = name
    return fn


def _warning_reference(name: str):
    reference = getattr(ref, name)

    def fn(*args):
        cpp.warn_missing()
        return reference(*args)

    fn.__name__ = name
    return fn


def status() -> dict[str, Any]:
    """What ``python -m adaptive_prune info`` prints about the C++ backend."""
    out = cpp.status()
    out["serves"] = {name: _backend.active(name, "cpu") for name in SERVED_OPS}
    return out


if HAS_EXT:
    for _name in SERVED_OPS:
        _backend.register(ops.ALL_OPS[_name], "cpu", "cpp", _kernel(_name))
else:
    _backend.UNAVAILABLE["cpp"] = REASON
    if _backend.requested() == "auto" and not cpp._disabled():
        # the reference, with the one-time warning that the fast path is missing
        for _name in SERVED_OPS:
            _backend.register(ops.ALL_OPS[_name], "cpu", "reference", _warning_reference(_name))
