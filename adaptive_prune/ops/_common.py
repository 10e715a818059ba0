"""Helpers shared by the op references and the baselines: compute dtype, row normalisation,
offsets, the one greedy loop (max-min or max-sum) and the one water-filling allocation.

Packing conventions shared by all ops (FlashAttention ``cu_seqlens`` style, two levels):

- ``vision [N, D]``: the visual tokens of every image of every request, concatenated.
- ``cu_seqlens [n+1]``: image ``k`` owns rows ``cu_seqlens[k]:cu_seqlens[k+1]``.
- ``req_offsets [R+1]``: request ``r`` owns images ``req_offsets[r]:req_offsets[r+1]``.
- ``text [M, D]`` with ``text_offsets [R+1]``: request ``r`` owns text rows
  ``text_offsets[r]:text_offsets[r+1]`` (an empty range means "no text" for that request).

Ties are always broken towards the lower index (token, image or pool position). Every greedy
pick goes through :func:`band_argmax`: the lowest index among the candidates whose score lies
within a tie band ``PICK_TIE`` of the largest, so that scores rounding alone would order (fp32
dots of different backends differ by ~1e-6) pick the same candidate everywhere.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Optional, Sequence

import torch

__all__ = [
    "PICK_TIE",
    "band_argmax",
    "band_snap",
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


# The pick tie band on the cosine scale (docs/METHOD.md, "Ties"). The same constant is
# csrc/common.h kPickTie and kernels/_common.py PICK_TIE (tests/test_ties.py checks they agree).
PICK_TIE = 1e-5


def band_argmax(scores: torch.Tensor, picked: Optional[torch.Tensor] = None, terms: int = 1) -> int:
    """The greedy's pick: ``M = max`` of ``scores [m]`` over the candidates (rows not marked in
    ``picked [m]``), then the LOWEST index among the candidates with score ``>= M - band``,
    ``band = PICK_TIE * terms`` (``terms``: how many distances each score sums, 1 for max-min
    and first picks). Computed in the scores' dtype (fp32: ``fl(fl(1e-5) * terms)``, then
    ``fl(M - band)``, the same operations as the C++ and Triton kernels). ``M = +inf`` keeps
    exactly the ``+inf`` candidates in the band."""
    s = scores if picked is None else scores.masked_fill(picked, -math.inf)
    top = s.max()
    band = torch.tensor(PICK_TIE, dtype=s.dtype, device=s.device) * terms
    hit = torch.nonzero(s >= top - band)
    return int(hit[0]) if hit.numel() else int(torch.argmax(s))  # (NaN scores: no band)


def band_snap(values: torch.Tensor, band: float = PICK_TIE) -> torch.Tensor:
    """``values [n]`` with every value within the tie band of a larger one made equal to it, so
    that sorts and comparisons of fp32 results that only rounding tells apart (the same
    quantity computed by two backends) come out the same: in decreasing order, the largest
    value not yet grouped is an anchor, every value ``>= anchor - band`` joins its group and
    takes its value. Same dtype and device; ``+-inf`` only group with themselves."""
    v = values.double().tolist()
    out = list(v)
    order = sorted(range(len(v)), key=lambda i: -v[i])
    i = 0
    while i < len(order):
        anchor = v[order[i]]
        j = i + 1
        while j < len(order) and v[order[j]] >= anchor - band:
            out[order[j]] = anchor
            j += 1
        i = j
    return torch.tensor(out, dtype=torch.float64).to(values.dtype).to(values.device)


def greedy_order(
    acc: torch.Tensor,
    picked: torch.Tensor,
    steps: int,
    row: Callable[[int], torch.Tensor],
    combine: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = torch.minimum,
    gains: Optional[list[float]] = None,
    summed: bool = False,
) -> list[int]:
    """The greedy loop of every max-min (farthest-point) and max-sum selection here.

    ``acc [m]`` holds each row's score against the rows picked so far (max-min: the smallest
    distance to them; max-sum: the summed distance), ``picked [m]`` marks the rows already
    taken (updated in place). Each of ``steps`` steps picks ``j = band_argmax(acc, picked)``
    (the lowest unpicked index within the tie band of the largest score), appends ``acc[j]``
    (its own score) to ``gains`` when a list is given, and folds the picked row's distances
    ``row(j) [m]`` into ``acc`` with ``combine`` (``torch.minimum`` for max-min, ``torch.add``
    for max-sum). ``summed``: ``acc`` is a sum of one distance per picked row (max-sum), so the
    band scales with the picked count (``PICK_TIE * t``: each distance carries its own rounding).
    Returns the picks in order.
    """
    order: list[int] = []
    terms = int(picked.sum()) if summed else 1
    for step in range(steps):
        j = band_argmax(acc, picked, max(terms, 1))
        order.append(j)
        if gains is not None:
            gains.append(float(acc[j]))
        picked[j] = True
        terms += int(summed)
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
