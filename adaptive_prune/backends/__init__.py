"""Which implementation serves each op call.

Every op in :mod:`adaptive_prune.ops` has its pure-PyTorch reference as the default
implementation. Two faster backends each provide one table ``{op name: implementation}``:

- ``"cpp"`` (:mod:`.cpp`): the C++ core, CPU tensors;
- ``"triton"`` (:mod:`.triton`): the Triton kernels, CUDA tensors (CPU tensors only under the
  Triton interpreter, ``TRITON_INTERPRET=1``, and only when asked for by name).

:func:`install` registers, with one loop, a routing kernel for every op on the ``cpu`` and
``cuda`` devices. At each call it applies the shared guards (float64 inputs and empty inputs go
to the reference: the fast backends compute in fp32) and then asks the backend chosen for this
thread: :func:`backend` (a thread-local context manager) or, outside one, the process default
``ADAPTIVE_PRUNE_BACKEND`` (``auto`` when unset). ``auto`` takes the fast backend of the
tensors' device when it is there and the reference otherwise (once, with a warning that names
the cause and the fix); a backend asked for by name that cannot serve the call raises.

Knobs change the speed, never the result:

- ``cpp``: ``proj_dim`` (-1 auto, 0 dense, >0 projection dims of the exact pruned greedy and
  of the refinement's exact nearest-centre search),
  ``num_threads`` (default ``torch.get_num_threads()``);
- ``triton``: ``greedy_window`` (0 or a power of two in [16, 128]: picks per round of the exact
  windowed max-min engine, 0 = one pick per step), ``block_budget_mb`` (the most memory one
  launch's similarity blocks may take before a batch is split into consecutive groups) and
  ``greedy_engine`` (``"auto"``, the default: the row engine for a call whose largest segment's
  similarity block would exceed ``block_budget_mb``, else the block engine; ``"blocks"``; or
  ``"rows"``: the row engine without similarity blocks, for every max-min call with a window).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import warnings
from numbers import Integral, Real
from typing import Any, Callable, Iterator, Optional

import torch

from .. import ops

__all__ = ["BACKENDS", "ENV_VAR", "backend", "current", "install", "serving", "status"]

BACKENDS = ("auto", "reference", "cpp", "triton")
ENV_VAR = "ADAPTIVE_PRUNE_BACKEND"
DEVICES = ("cpu", "cuda")


def _int_knob(lo: int, what: str) -> Callable[[Any], Optional[str]]:
    def check(v: Any) -> Optional[str]:
        ok = isinstance(v, Integral) and not isinstance(v, bool) and int(v) >= lo
        return None if ok else what

    return check


def _window(v: Any) -> Optional[str]:
    ok = isinstance(v, Integral) and not isinstance(v, bool) and v in (0, 16, 32, 64, 128)
    return None if ok else "0 or a power of two in [16, 128]"


def _megabytes(v: Any) -> Optional[str]:
    ok = isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
    return None if ok else "a finite number >= 0"


# backend -> knob -> validator (returns what was expected, or None)
KNOBS: dict[str, dict[str, Callable[[Any], Optional[str]]]] = {
    "cpp": {
        "proj_dim": _int_knob(-1, "-1 (auto), 0 (dense) or a positive int"),
        "num_threads": _int_knob(1, "an int >= 1"),
    },
    "triton": {
        "greedy_window": _window,
        "block_budget_mb": _megabytes,
        "greedy_engine": lambda v: (
            None if v in ("auto", "blocks", "rows") else '"auto", "blocks" or "rows"'
        ),
    },
}

_local = threading.local()


def _check_name(name: Any, where: str) -> str:
    value = name.strip().lower() if isinstance(name, str) else name
    if value not in BACKENDS:
        raise ValueError(f"{where}: unknown backend {name!r}; expected one of {list(BACKENDS)}")
    return value


def _check_knobs(name: str, knobs: dict[str, Any]) -> None:
    allowed = {k: v for b, kv in KNOBS.items() if name in ("auto", b) for k, v in kv.items()}
    for key, value in knobs.items():
        if key not in allowed:
            raise TypeError(
                f"backend({name!r}) has no knob {key!r}; knobs: "
                + (", ".join(sorted(allowed)) or "none")
            )
        err = allowed[key](value)
        if err:
            raise ValueError(f"backend({name!r}): {key}={value!r}, expected {err}")


@contextlib.contextmanager
def backend(name: str = "auto", **knobs: Any) -> Iterator[None]:
    """Serve the ops called in this thread, inside the ``with`` block, with backend ``name``.

    ``name``: ``"auto"``, ``"reference"``, ``"cpp"`` or ``"triton"``; ``knobs``: that backend's
    speed settings (see the module docstring). An inner block replaces an outer one; other
    threads are not affected. Example::

        with adaptive_prune.backend("reference"):
            res = adaptive_prune.prune(vision, cu_seqlens, keep_ratio=0.25)
    """
    name = _check_name(name, "backend()")
    _check_knobs(name, knobs)
    stack = _local.__dict__.setdefault("stack", [])
    stack.append((name, dict(knobs)))
    try:
        yield
    finally:
        stack.pop()


def default() -> str:
    """The process default: ``ADAPTIVE_PRUNE_BACKEND`` (``auto`` when unset or empty)."""
    raw = os.environ.get(ENV_VAR, "").strip()
    return _check_name(raw or "auto", ENV_VAR)


def current() -> tuple[str, dict[str, Any]]:
    """``(backend name, knobs)`` that this thread's op calls use now."""
    stack = _local.__dict__.get("stack")
    if stack:
        return stack[-1]
    return default(), {}


# --------------------------------------------------------------------------------------------
# backends: availability and tables (loaded on first use)
# --------------------------------------------------------------------------------------------
def _module(name: str):
    if name == "cpp":
        from . import cpp as mod
    else:
        from . import triton as mod
    return mod


def call_scope(device: torch.device):
    """A context for one method call over inputs on ``device`` that do not change inside it:
    the backends' per-call caches live in it (the Triton launchers compute the inverse row
    norms of ``vision`` once for all its greedy and refinement launches). Results are the same
    with or without it. Loads the Triton kernels only where they may serve the call (CUDA
    tensors, or the ``triton`` backend asked for by name)."""
    if device.type == "cuda" or current()[0] == "triton":
        if unavailable("triton") is None:
            return _module("triton").call_scope()
    return contextlib.nullcontext()


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def unavailable(name: str) -> Optional[str]:
    """Why backend ``name`` cannot run here (None when it can)."""
    return _module(name).unavailable()


_WARNED: set[str] = set()


def _caller_stacklevel() -> int:
    """``stacklevel`` of the first frame outside adaptive_prune and torch (the user's call)."""
    inside = (os.path.dirname(os.path.dirname(__file__)), os.path.dirname(torch.__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None:
        if not frame.f_code.co_filename.startswith(inside):
            return level
        frame, level = frame.f_back, level + 1
    return 1


def _fallback_warning(device: str, fast: str, reason: str) -> None:
    if fast in _WARNED:
        return
    _WARNED.add(fast)
    warnings.warn(
        f"adaptive_prune: the {fast} backend is not available for {device} tensors ({reason}); "
        "the ops run the pure-PyTorch reference, which is much slower. "
        f"`python -m adaptive_prune info` shows the backends; set {ENV_VAR}=reference to "
        "choose the reference on purpose and silence this.",
        RuntimeWarning,
        stacklevel=_caller_stacklevel(),
    )


def _fp64(args: tuple) -> bool:
    return any(isinstance(a, torch.Tensor) and a.dtype == torch.float64 for a in args)


def serving(op_name: str, device: str, args: tuple = ()) -> tuple[str, dict[str, Any]]:
    """``(backend, knobs)`` that serves a call of ``op_name`` on ``device`` tensors ``args`` in
    this thread now; raises when a backend asked for by name cannot serve it."""
    name, knobs = current()
    if name == "reference":
        return "reference", {}
    if args and (_fp64(args) or args[0].numel() == 0):
        return "reference", {}  # the shared guards: fp32 backends, nothing to compute
    fast = {"cpu": "cpp", "cuda": "triton"}.get(device)
    if name == "auto":
        if fast is None:
            return "reference", {}
        why = unavailable(fast)
        if why is not None:
            _fallback_warning(device, fast, why)
            return "reference", {}
        if op_name not in _module(fast).table():
            return "reference", {}  # the backend has no implementation of this op (yet)
        return fast, {k: v for k, v in knobs.items() if k in KNOBS[fast]}
    if name == "triton" and device == "cpu" and _interpreting():
        fast = "triton"
    if name != fast:
        raise ValueError(
            f"backend {name!r} cannot serve {device} tensors (op {op_name}); "
            + (
                "the C++ backend runs on the CPU"
                if name == "cpp"
                else "Triton needs CUDA tensors (or TRITON_INTERPRET=1 on a CPU, for tests)"
            )
        )
    why = unavailable(name)
    if why is not None:
        raise RuntimeError(f"backend {name!r} is not available: {why}")
    if op_name not in _module(name).table():
        return "reference", {}  # the backend has no implementation of this op (yet)
    return name, knobs


def _router(op_name: str, device: str) -> Callable:
    reference = ops.REFERENCE[op_name]
    check = ops.CHECK[op_name]

    def kernel(*args):
        # the op's contract, before any backend runs; True: only the reference implements it
        if check(*args):
            return reference(*args)
        name, knobs = serving(op_name, device, args)
        impl = None if name == "reference" else _module(name).table().get(op_name)
        if impl is None:  # the reference, or an op this backend does not implement
            return reference(*args)
        return impl(*args, **knobs)

    kernel.__name__ = kernel.__qualname__ = f"{op_name}_{device}"
    return kernel


_INSTALLED = False


def install() -> None:
    """Register the routing kernel of every op on every device (once, at package import)."""
    global _INSTALLED
    if _INSTALLED:
        return
    for name, op in ops.ALL_OPS.items():
        for device in DEVICES:
            op.register_kernel(device)(_router(name, device))
    _INSTALLED = True


def status() -> dict[str, Any]:
    """What ``python -m adaptive_prune info`` prints: the choice now, each backend's state, and
    which backend ``auto`` gives each device."""
    name, knobs = current()
    out: dict[str, Any] = {"current": name, "knobs": knobs, "env": os.environ.get(ENV_VAR)}
    for fast in ("cpp", "triton"):
        out[fast] = _module(fast).status()
    out["auto"] = {
        dev: (fast if unavailable(fast) is None else "reference")
        for dev, fast in (("cpu", "cpp"), ("cuda", "triton"))
    }
    return out
