"""Helpers of the ops' own input checks (``check`` in every ``ops/<op>.py``).

The ops are public API (``torch.ops.adaptive_prune.<op>``), so each one validates its inputs:
a bad one gets a ValueError/TypeError that names the argument, before any backend runs. The
check runs on every call, in one place per path: the op's default body (devices without a
routing kernel) and the routing kernel of :mod:`adaptive_prune.backends`.

Cost. Shapes, dtypes, host lists and offsets (CPU tensors when :func:`adaptive_prune.prune`
calls the ops) are always checked. Checks that read the values of other tensors (weights,
budgets, rows, masks) run when those tensors are on the CPU, or when the op is called directly.
:func:`adaptive_prune.prune` runs its methods inside :func:`validated`: it has validated the
inputs the values derive from, so on a GPU the ops add no host synchronisation there.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterator, Optional, Sequence

import torch

_local = threading.local()

FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INTS = (torch.int32, torch.int64)


@contextlib.contextmanager
def validated() -> Iterator[None]:
    """Inside: the calling thread's op inputs come from a validated ``prune`` call, so the ops
    skip the checks that would read device (CUDA) values."""
    depth = getattr(_local, "depth", 0)
    _local.depth = depth + 1
    try:
        yield
    finally:
        _local.depth = depth


def readable(t: Optional[torch.Tensor]) -> bool:
    """Whether a check may read ``t``'s values: on the CPU, or outside :func:`validated`."""
    return t is not None and (t.device.type == "cpu" or getattr(_local, "depth", 0) == 0)


def fail(op: str, msg: str, kind: type = ValueError) -> None:
    raise kind(f"adaptive_prune::{op}: {msg}")


def tensor(op: str, name: str, t: Any, ndim: int, dtypes: Sequence[torch.dtype], what: str):
    """A dense ``ndim``-D tensor of one of ``dtypes`` (``what`` names them)."""
    if not isinstance(t, torch.Tensor):
        fail(op, f"{name} must be a torch.Tensor, got {type(t).__name__}", TypeError)
    if t.layout != torch.strided or t.device.type == "meta":
        what = f"got {t.layout} on {t.device}"
        fail(op, f"{name} must be a dense tensor with data, {what}", TypeError)
    if t.ndim != ndim:
        fail(op, f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        fail(op, f"{name} must have dtype {what}, got {t.dtype}", TypeError)
    return t


def offsets(op: str, name: str, t: Any, total: int, total_name: str) -> list[int]:
    """``[k+1]`` int offsets: start at 0, non-decreasing, end at ``total``. Read on the host
    (the ops read them anyway)."""
    tensor(op, name, t, 1, INTS, "int32 or int64")
    if t.shape[0] < 1:
        fail(op, f"{name} needs at least one entry (0)")
    vals = [int(v) for v in t.tolist()]
    if vals[0] != 0 or any(b < a for a, b in zip(vals, vals[1:])) or vals[-1] != total:
        fail(op, f"{name} must start at 0, never decrease and end at {total_name} = {total}")
    return vals


def option(op: str, name: str, value: Any, check: Callable[[Any], Optional[str]]) -> None:
    err = check(value)
    if err:
        fail(op, f"{name}={value!r}: expected {err}")


def choice(op: str, name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        fail(op, f"{name}={value!r}: expected one of {list(choices)}")


def int_list(op: str, name: str, v: Any, length: int) -> list[int]:
    if len(v) != length:
        fail(op, f"{name} has {len(v)} entries, expected {length} (one per segment)")
    return [int(x) for x in v]


def same_space(op: str, vision: torch.Tensor, text: torch.Tensor, name: str = "text") -> None:
    """``text`` lives in ``vision``'s space: same width, same device, fp64 iff vision is."""
    if text.shape[1] != vision.shape[1]:
        fail(op, f"{name} has width {text.shape[1]}, vision has width {vision.shape[1]}")
    if text.device != vision.device:
        fail(op, f"{name} is on {text.device}, vision on {vision.device}")
    if (text.dtype == torch.float64) != (vision.dtype == torch.float64):
        fail(
            op,
            f"{name} is {text.dtype} and vision {vision.dtype}: both or neither must be float64 "
            "(cast one; adaptive_prune.prune does this for you)",
            TypeError,
        )
