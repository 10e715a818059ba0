"""Which implementation each op runs on each device.

Every op in :mod:`adaptive_prune.ops` has the pure-PyTorch reference as its default
implementation. Faster backends register themselves per device type through :func:`register`:

- ``"cpp"``: the C++ extension (``adaptive_prune._C``), CPU kernels;
- ``"triton"``: the Triton kernels (``adaptive_prune.kernels``), CUDA; on a CPU only when the
  Triton interpreter is on (``TRITON_INTERPRET=1``) *and* ``ADAPTIVE_PRUNE_BACKEND=triton``.

``ADAPTIVE_PRUNE_BACKEND`` (``auto`` by default) forces one backend: ``reference`` disables all
others, ``cpp`` or ``triton`` allow only that one (the reference still serves what it lacks).
"""

from __future__ import annotations

import importlib
import os
from typing import Callable

BACKENDS = ("auto", "reference", "cpp", "triton")

# (op name, device type) -> backend name, for the ops that a faster backend serves.
_ACTIVE: dict[tuple[str, str], str] = {}


def requested() -> str:
    """The backend asked for by ``ADAPTIVE_PRUNE_BACKEND`` (validated)."""
    value = os.environ.get("ADAPTIVE_PRUNE_BACKEND", "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(
            f"ADAPTIVE_PRUNE_BACKEND={value!r} is not a backend; expected one of {BACKENDS}"
        )
    return value


def register(op, device_type: str, backend: str, fn: Callable) -> bool:
    """Register ``fn`` as ``op``'s kernel for ``device_type`` if ``backend`` is allowed.

    Returns whether it was registered. A backend never replaces another one already registered
    for the same op and device (registration order = priority).
    """
    want = requested()
    name = op._qualname if hasattr(op, "_qualname") else str(op)
    if want not in ("auto", backend) or (name, device_type) in _ACTIVE:
        return False
    op.register_kernel(device_type)(fn)
    _ACTIVE[(name, device_type)] = backend
    return True


def active(op_name: str, device_type: str) -> str:
    """Backend that serves ``adaptive_prune::<op_name>`` on ``device_type``."""
    return _ACTIVE.get((f"adaptive_prune::{op_name}", device_type), "reference")


# Optional backend modules, imported (and thereby registered) by :func:`load`, in priority order.
# Each module registers its kernels with :func:`register` at import and records why it is
# unavailable in ``UNAVAILABLE`` instead of raising.
BACKEND_MODULES = {"cpp": "adaptive_prune._ext", "triton": "adaptive_prune._triton_ops"}
UNAVAILABLE: dict[str, str] = {}


def load() -> None:
    """Import the optional backend modules that exist in this installation."""
    for backend, module in BACKEND_MODULES.items():
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                UNAVAILABLE[backend] = f"{type(exc).__name__}: {exc}"
            else:
                UNAVAILABLE[backend] = "not part of this installation"
