"""Op ``adaptive_prune::greedy_select`` (stage 1): the greedy pick order inside every image.
Definition, fake and reference."""

from __future__ import annotations

import torch

from .. import _checks as C
from . import _contract as X
from ._common import band_argmax, bounds, define, greedy_order, normalize

_OP = "greedy_select"


def check(
    vision: torch.Tensor, cu_seqlens: torch.Tensor, budgets: torch.Tensor, mode: str, eps: float
) -> bool:
    """The op's contract: offsets over ``vision``'s rows, ``0 <= budgets[k] <= m_k``."""
    X.tensor(_OP, "vision", vision, 2, X.FLOATS, "a float type")
    cu = X.offsets(_OP, "cu_seqlens", cu_seqlens, vision.shape[0], "N (rows of vision)")
    X.tensor(_OP, "budgets", budgets, 1, X.INTS, "int32 or int64")
    if budgets.shape[0] != len(cu) - 1:
        X.fail(_OP, f"budgets has {budgets.shape[0]} entries for {len(cu) - 1} images")
    X.choice(_OP, "mode", mode, ("maxmin", "maxsum"))
    X.option(_OP, "eps", eps, C.EPS)
    if X.readable(budgets):
        for k, b in enumerate(budgets.tolist()):
            if not 0 <= b <= cu[k + 1] - cu[k]:
                X.fail(_OP, f"budgets[{k}] = {b} must lie in [0, {cu[k + 1] - cu[k]}] (m_{k})")
    return False


def reference(
    vision: torch.Tensor,
    cu_seqlens: torch.Tensor,
    budgets: torch.Tensor,
    mode: str,
    eps: float,
) -> torch.Tensor:
    """Greedy pick order inside every image. Returns ``rank [N]`` int64.

    ``rank[i]`` is the step at which token ``i`` was picked inside its image, or -1. Image ``k``
    picks ``budgets[k]`` tokens. First pick: ``argmax_i x̂_i . mu_k``. Then ``mode="maxmin"``
    picks ``argmax over unpicked i of min over picked j of (1 - x̂_i.x̂_j)``; ``mode="maxsum"``
    picks ``argmax of the sum`` of those distances. Every argmax is ``band_argmax``: the lowest
    index within ``PICK_TIE`` of the largest score (max-sum: ``PICK_TIE * t`` after ``t``
    picks), so near-ties go to the lower index on every backend.
    """
    cu = bounds(cu_seqlens)
    bud = [int(v) for v in budgets.tolist()]
    rank = torch.full((vision.shape[0],), -1, dtype=torch.int64, device=vision.device)
    combine = torch.minimum if mode == "maxmin" else torch.add
    for k in range(len(cu) - 1):
        a, e = cu[k], cu[k + 1]
        m, b = e - a, min(bud[k], e - a)
        if b <= 0:
            continue
        xh = normalize(vision[a:e], eps)
        s = xh.sum(0)
        mu = s / s.norm().clamp_min(eps)
        dist = 1.0 - xh @ xh.T  # [m, m]
        picked = torch.zeros(m, dtype=torch.bool, device=vision.device)
        first = band_argmax(xh @ mu)
        picked[first] = True
        order = [first] + greedy_order(
            dist[first].clone(), picked, b - 1, dist.__getitem__, combine, summed=mode == "maxsum"
        )
        rank[a + torch.tensor(order, device=vision.device)] = torch.arange(b, device=vision.device)
    return rank


op = define("greedy_select", reference, check)


@op.register_fake
def _(vision, cu_seqlens, budgets, mode, eps):
    return vision.new_empty((vision.shape[0],), dtype=torch.int64)
