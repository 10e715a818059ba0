"""Helpers shared by the op references and the baselines: compute dtype, row normalisation,
offsets, the one greedy loop (max-min or max-sum) and the one water-filling allocation.

Packing conventions shared by all ops (FlashAttention ``cu_seqlens`` style, two levels):

- ``vision [N, D]``: the visual tokens of every image of every request, concatenated.
- ``cu_seqlens [n+1]``: image ``k`` owns rows ``cu_seqlens[k]:cu_seqlens[k+1]``.
- ``req_offsets [R+1]``: request ``r`` owns images ``req_offsets[r]:req_offsets[r+1]``.
- ``text [M, D]`` with ``text_offsets [R+1]``: request ``r`` owns text rows
  ``text_offsets[r]:text_offsets[r+1]`` (an empty range means "no text" for that request).

Ties are always broken towards the lower index (token, image or pool position).
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Optional, Sequence

import torch

__all__ = [
    "define",
    "compute_dtype",
    "normalize",
    "bounds",
    "greedy_order",
    "water_fill",
]


def define(name: str, reference: Callable, check: Callable):
    """The custom op ``adaptive_prune::<name>``: its schema is ``reference``'s signature, and its
    default implementation (every device without a routing kernel) checks the op's contract,
    then runs the reference. Inference-only: no autograd formula."""

    def default(*args, **kwargs):
        check(*args, **kwargs)
        return reference(*args, **kwargs)

    functools.update_wrapper(default, reference)  # name, docstring and signature
    return torch.library.custom_op(f"adaptive_prune::{name}", default, mutates_args=())


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for fp16/bf16/fp32 inputs, fp64 for fp64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """``x_i / max(||x_i||, eps)`` row-wise, in the compute dtype. ``[*, D] -> [*, D]``."""
    x = x.to(compute_dtype(x.dtype))
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


def bounds(offsets: torch.Tensor) -> list[int]:
    """Offsets tensor -> host list of ints."""
    return [int(v) for v in offsets.tolist()]


def greedy_order(
    acc: torch.Tensor,
    picked: torch.Tensor,
    steps: int,
    row: Callable[[int], torch.Tensor],
    combine: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = torch.minimum,
    gains: Optional[list[float]] = None,
) -> list[int]:
    """The greedy loop of every max-min (farthest-point) and max-sum selection here.

    ``acc [m]`` holds each row's score against the rows picked so far (max-min: the smallest
    distance to them; max-sum: the summed distance), ``picked [m]`` marks the rows already
    taken (updated in place). Each of ``steps`` steps picks ``j = argmax over unpicked rows of
    acc`` (ties to the lower index), appends ``acc[j]`` to ``gains`` when a list is given, and
    folds the picked row's distances ``row(j) [m]`` into ``acc`` with ``combine``
    (``torch.minimum`` for max-min, ``torch.add`` for max-sum). Returns the picks in order.
    """
    order: list[int] = []
    for step in range(steps):
        j = int(torch.argmax(acc.masked_fill(picked, -math.inf)))
        order.append(j)
        if gains is not None:
            gains.append(float(acc[j]))
        picked[j] = True
        if step + 1 < steps:
            acc = combine(acc, row(j))
    return order


def water_fill(
    weights: Sequence[float], lo: Sequence[int], hi: Sequence[int], total: int
) -> list[int]:
    """Integers ``b_k`` in ``[lo_k, hi_k]`` summing to ``total``, proportional to ``weights``.

    Shares ``s_k = total' * w_k / sum w`` over the free images (``w_k > 0`` and ``hi_k > lo_k``;
    the others sit at ``lo_k``); an image whose share reaches ``hi_k`` is fixed there, else one
    whose share falls below ``lo_k`` is fixed there, and the rest is shared again (water-filling;
    float64, sums in index order). The shares are then floored and the missing units go by
    largest remainder, ties to the lower index. The sum is ``total`` when the free images can
    take it (``sum lo <= total <= sum of hi over the free images + sum of lo over the rest``).
    """
    n = len(weights)
    share = [float(v) for v in lo]
    free = [k for k in range(n) if weights[k] > 0 and hi[k] > lo[k]]
    left = float(total - sum(lo[k] for k in range(n) if k not in set(free)))
    while free and left > 0:
        wsum = 0.0
        for k in free:  # sequential on every Python (3.12's sum() is compensated)
            wsum += weights[k]
        trial = {k: left * weights[k] / wsum for k in free}
        fixed = [k for k in free if trial[k] >= hi[k]]
        if not fixed:
            fixed = [k for k in free if trial[k] < lo[k]]
            if not fixed:
                for k in free:
                    share[k] = trial[k]
                break
            bound = lo
        else:
            bound = hi
        for k in fixed:
            share[k] = float(bound[k])
            left -= bound[k]
        gone = set(fixed)
        free = [k for k in free if k not in gone]
    floors = [min(int(math.floor(share[k] + 1e-9)), hi[k]) for k in range(n)]
    missing = total - sum(floors)
    order = sorted(
        (k for k in range(n) if floors[k] < hi[k]), key=lambda k: (-(share[k] - floors[k]), k)
    )
    for k in order[: max(missing, 0)]:
        floors[k] += 1
    return floors
