"""Op ``adaptive_prune::pareto_select``: exactly ``k`` points per segment by non-dominated
fronts and crowding distance. Definition, fake and reference."""

from __future__ import annotations

import math

import torch

from . import _contract as X
from ._common import bounds, define

_OP = "pareto_select"


def check(gains: torch.Tensor, align: torch.Tensor, offsets: torch.Tensor, k: list[int]) -> bool:
    """The op's contract: ``0 <= k[r] <= segment size`` (exactly ``k[r]`` points exist)."""
    X.tensor(_OP, "gains", gains, 1, X.FLOATS, "a float type")
    X.tensor(_OP, "align", align, 1, X.FLOATS, "a float type")
    if align.shape != gains.shape:
        X.fail(_OP, f"align has shape {tuple(align.shape)}, gains {tuple(gains.shape)}")
    so = X.offsets(_OP, "offsets", offsets, gains.shape[0], "K (entries of gains)")
    ks = X.int_list(_OP, "k", k, len(so) - 1)
    for r, kr in enumerate(ks):
        if not 0 <= kr <= so[r + 1] - so[r]:
            X.fail(_OP, f"k[{r}] = {kr} must lie in [0, {so[r + 1] - so[r]}] (segment {r}'s size)")
    return False


def nondominated_fronts(f1: list[float], f2: list[float]) -> list[int]:
    """Front number (0 = non-dominated) of every point, both objectives maximised.

    ``i`` dominates ``j`` when ``f(i) >= f(j)`` on both and ``>`` on one; equal points share a
    front. O(K^2) brute force: the reference, not the fast path.
    """
    K = len(f1)
    dom_count = [0] * K
    dominated: list[list[int]] = [[] for _ in range(K)]
    for i in range(K):
        for j in range(K):
            if i != j and f1[i] >= f1[j] and f2[i] >= f2[j] and (f1[i] > f1[j] or f2[i] > f2[j]):
                dominated[i].append(j)
                dom_count[j] += 1
    front = [-1] * K
    current = [i for i in range(K) if dom_count[i] == 0]
    level = 0
    while current:
        nxt = []
        for i in current:
            front[i] = level
            for j in dominated[i]:
                dom_count[j] -= 1
                if dom_count[j] == 0:
                    nxt.append(j)
        current = nxt
        level += 1
    return front


def crowding_distance(members: list[int], f1: list[float], f2: list[float]) -> dict[int, float]:
    """NSGA-II crowding distance of the points of one front (ties in a sort by position)."""
    if len(members) <= 2:
        return {i: math.inf for i in members}
    dist = {i: 0.0 for i in members}
    for f in (f1, f2):
        srt = sorted(members, key=lambda i: (f[i], i))
        lo, hi = f[srt[0]], f[srt[-1]]
        dist[srt[0]] = dist[srt[-1]] = math.inf
        if hi - lo <= 0:
            continue
        for p in range(1, len(srt) - 1):
            dist[srt[p]] += (f[srt[p + 1]] - f[srt[p - 1]]) / (hi - lo)
    return dist


def reference(
    gains: torch.Tensor,
    align: torch.Tensor,
    offsets: torch.Tensor,
    k: list[int],
) -> torch.Tensor:
    """Keep mask ``[K]`` bool choosing exactly ``k[r]`` points of each segment.

    Points are in greedy order (position = tie-break). Whole non-dominated fronts are taken while
    they fit; the overflowing front is cut by crowding distance (descending), ties to the earlier
    position.
    """
    so = bounds(offsets)
    g, a = gains.double().tolist(), align.double().tolist()
    keep = torch.zeros(gains.shape[0], dtype=torch.bool)
    for r in range(len(so) - 1):
        s0, s1, kr = so[r], so[r + 1], int(k[r])
        if kr <= 0:
            continue
        fg, fa = g[s0:s1], a[s0:s1]
        front = nondominated_fronts(fg, fa)
        taken = 0
        for level in range(max(front) + 1 if front else 0):
            members = [i for i in range(len(front)) if front[i] == level]
            if taken + len(members) <= kr:
                for i in members:
                    keep[s0 + i] = True
                taken += len(members)
            else:
                cd = crowding_distance(members, fg, fa)
                for i in sorted(members, key=lambda i: (-cd[i], i))[: kr - taken]:
                    keep[s0 + i] = True
                taken = kr
            if taken == kr:
                break
    return keep.to(gains.device)


op = define("pareto_select", reference, check)


@op.register_fake
def _(gains, align, offsets, k):
    return gains.new_empty(gains.shape, dtype=torch.bool)
