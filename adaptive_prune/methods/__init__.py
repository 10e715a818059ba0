"""Registry of selection methods reachable through ``prune(..., method=NAME)``.

A method is either *batched* (the adaptive method: it takes every request of a
``prune_batch`` call at once, so its ops run in one launch each) or *per request* (baselines: a
function of one request's tokens). Each declares its options as ``name -> (default, validator)``
so that unknown options and bad values are rejected before any work is done.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

# select(vision [N_r, D], counts: list[int], text [M_r, D] | None, budget: int,
#        min_per_image: int, options: dict) -> LongTensor of B unique local rows (any order)
SelectFn = Callable[[torch.Tensor, list, Optional[torch.Tensor], int, int, dict], torch.Tensor]


@dataclass(frozen=True)
class Method:
    name: str
    options: dict[str, tuple[Any, Callable[[Any], Optional[str]]]]
    select: Optional[SelectFn] = None
    batched: Optional[Callable[..., Any]] = None
    text_aware: bool = False
    description: str = ""


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is already registered")
    if (method.select is None) == (method.batched is None):
        raise ValueError("a method needs exactly one of select= or batched=")
    METHODS[method.name] = method
    return method


def get_method(name: Any) -> Method:
    if not isinstance(name, str) or name not in METHODS:
        raise ValueError(f"unknown method={name!r}; available methods: {sorted(METHODS)}")
    return METHODS[name]


# the methods register themselves on import
from . import adaptive, baselines  # noqa: E402, F401
