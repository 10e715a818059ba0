"""The C++ CPU core (``adaptive_prune._core``) as CPU implementations of the ops.

``_core`` (sources in ``csrc/``, design in ``docs/cpp.md``) has one function per op on numpy
arrays: ``_core.<op>(*args, num_threads, **knobs)``, the public op's arguments in order. This
module turns it into :data:`TABLE`, op name -> a function with exactly the public op's signature
plus keyword-only knobs (``proj_dim=-1`` for the two greedy ops and ``refine_medoids``: -1
auto, 0 dense, > 0 projection dims; it changes the speed, never the result) and ``num_threads=None``
(``torch.get_num_threads()``). One generic wrapper serves every op: torch CPU tensors become
contiguous numpy arrays (float16/bfloat16/float32 -> float32, float64 stays float64, integers
-> int64, bool stays bool), lists become lists of ints, and the numpy outputs come back through
``torch.from_numpy``. The float64 guard (float64 tokens -> the reference) belongs to the routing
layer, not here.

Interface used by :mod:`adaptive_prune.backends`: :func:`unavailable` (None, or why the core
cannot run and how to fix it), :func:`table` and :func:`status`. Nothing here raises at import:
without the extension :data:`AVAILABLE` is False, :data:`REASON` says why and how to fix it,
and :data:`TABLE` is empty; the routing layer then warns once and runs the reference.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from typing import Any, Callable, Optional

import torch

from .. import ops

__all__ = ["AVAILABLE", "REASON", "TABLE", "unavailable", "table", "status"]

MODULE = "adaptive_prune._core"
FIX = (
    "install a C++ compiler (g++/clang) and the Python headers, then reinstall: "
    "pip install --force-reinstall --no-deps adaptive_prune"
)

AVAILABLE = False
REASON: Optional[str] = None
TABLE: dict[str, Callable] = {}
_core: Any = None
_PATH: Optional[str] = None


def _load() -> Optional[str]:
    """Import the extension; None on success, else why it is not used (with the fix)."""
    global _core, _PATH
    try:
        spec = importlib.util.find_spec(MODULE)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return (
            "not built: the package was installed without its C++ core (no C++ compiler was "
            f"found, or ADAPTIVE_PRUNE_BUILD_EXT=0); {FIX}"
        )
    _PATH = spec.origin
    try:
        _core = importlib.import_module(MODULE)
    except Exception as exc:  # noqa: BLE001 (a bad .so is an ImportError, or worse)
        return f"{_PATH} failed to load ({type(exc).__name__}: {exc}); {FIX}"
    return None


# --------------------------------------------------------------------------------------------
# the generic wrapper
# --------------------------------------------------------------------------------------------
def _to_numpy(value):
    if isinstance(value, torch.Tensor):
        if value.device.type != "cpu":
            raise ValueError(f"the C++ CPU backend got a tensor on {value.device}")
        if value.is_floating_point():
            if value.dtype != torch.float64:
                value = value.to(torch.float32)
        elif value.dtype != torch.bool:
            value = value.to(torch.int64)
        return value.detach().resolve_conj().contiguous().numpy()
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return value


def _to_torch(value):
    if isinstance(value, tuple):
        return tuple(torch.from_numpy(v) for v in value)
    return torch.from_numpy(value)


def _public_signature(name: str) -> Optional[inspect.Signature]:
    try:
        op = ops.ALL_OPS[name]
        return inspect.signature(getattr(op, "_init_fn", op))
    except Exception:  # noqa: BLE001 (the signature only documents; binding falls back)
        return None


def _make(name: str, fn: Callable, knobs: tuple[str, ...]) -> Callable:
    sig = _public_signature(name)
    defaults = {"proj_dim": -1}

    def impl(*args, num_threads: Optional[int] = None, **kwargs):
        extra = {k: kwargs.pop(k) for k in list(kwargs) if k in knobs}
        for k in ALL_KNOBS:  # a knob of the backend that this op does not take
            kwargs.pop(k, None)
        if sig is not None and kwargs:
            args = sig.bind(*args, **kwargs).args
        elif kwargs:
            raise TypeError(f"{name}() got unexpected keyword arguments {sorted(kwargs)}")
        nt = torch.get_num_threads() if num_threads is None else int(num_threads)
        return _to_torch(fn(*(_to_numpy(a) for a in args), num_threads=nt, **extra))

    impl.__name__ = impl.__qualname__ = name
    impl.__doc__ = f"C++ CPU implementation of adaptive_prune::{name} (adaptive_prune._core)."
    if sig is not None:
        params = list(sig.parameters.values())
        params += [
            inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=defaults.get(k))
            for k in knobs
        ]
        params.append(
            inspect.Parameter("num_threads", inspect.Parameter.KEYWORD_ONLY, default=None)
        )
        impl.__signature__ = sig.replace(parameters=params)
    return impl


# the backend's knobs besides num_threads (each op takes the ones it lists in _core.KNOBS)
ALL_KNOBS = ("proj_dim",)

REASON = _load()
if REASON is None:
    AVAILABLE = True
    _knobs = dict(getattr(_core, "KNOBS", {}))
    for _name in ops.ALL_OPS:  # an op the core does not have is served by the reference
        if hasattr(_core, _name):
            TABLE[_name] = _make(_name, getattr(_core, _name), tuple(_knobs.get(_name, ())))


def unavailable() -> Optional[str]:
    """None when the core serves the CPU ops, else why not (with the fix)."""
    return REASON


def table() -> dict[str, Callable]:
    """Op name -> C++ implementation (ops the core lacks are absent: the reference serves)."""
    if not AVAILABLE:
        raise RuntimeError(f"the C++ backend is not available: {REASON}")
    return TABLE


def status() -> dict[str, Any]:
    """What ``python -m adaptive_prune info`` prints about the C++ backend."""
    return {
        "available": AVAILABLE,
        "reason": REASON,
        "path": _PATH,
        "compiler": getattr(_core, "COMPILER", None),
        "isa": getattr(_core, "ISA", None),
        "ops": list(TABLE),
        "num_threads": torch.get_num_threads(),
    }
