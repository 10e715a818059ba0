"""Op ``adaptive_prune::refine_medoids`` (stage 3, coverage refinement): one k-medoids step
per group of the kept tokens, that never raises the group's k-centre radius. Definition, fake
and reference.

Packing: ``pool [K]`` rows of ``vision``; group ``g`` owns pool positions
``group_offsets[g]:group_offsets[g+1]``; ``image [K]`` the image of every pool position;
``keep [K]`` the kept positions, ``movable [K]`` those of them that may move.
"""

from __future__ import annotations

import torch

from ._common import bounds, normalize


def _step(xh: torch.Tensor, img: torch.Tensor, keep: torch.Tensor, movable: torch.Tensor):
    """One refinement step on one group (see :func:`reference`); returns the new keep mask."""
    m = xh.shape[0]
    dev = xh.device
    centres = torch.nonzero(keep).flatten()  # [c] ascending pool positions
    if centres.numel() == 0 or centres.numel() == m:
        return keep
    sim = xh @ xh[centres].T  # [m, c]
    best, slot = sim.max(dim=1)  # torch.max: the first maximum (lowest centre) on ties
    dist = 1.0 - best
    dist[centres] = 0.0
    slot[centres] = torch.arange(centres.numel(), device=dev)  # a centre is its own cluster
    kc = dist.max()
    # members of every cluster, sorted by cluster: every (candidate, member) pair of a cluster
    member = torch.argsort(slot, stable=True)  # [m]
    size = torch.bincount(slot, minlength=centres.numel())  # [c]
    start = torch.cumsum(size, 0) - size
    left = torch.repeat_interleave(member, size[slot[member]])  # candidate of every pair
    within = torch.arange(left.numel(), device=dev) - torch.repeat_interleave(
        torch.cumsum(size[slot[member]], 0) - size[slot[member]], size[slot[member]]
    )
    right = member[start[slot[left]] + within]  # member of every pair
    d = 1.0 - (xh[left] * xh[right]).sum(dim=1)
    d = torch.where(left == right, torch.zeros_like(d), d)
    cost = torch.zeros(m, dtype=xh.dtype, device=dev).index_add_(0, left, d)
    radius = torch.zeros(m, dtype=xh.dtype, device=dev).scatter_reduce_(
        0, left, d, "amax", include_self=True
    )
    centre = centres[slot]  # [m] the centre of every token's cluster
    # a candidate: in its centre's image, not another centre, radius within the k-centre
    ok = (img == img[centre]) & (~keep | (centre == torch.arange(m, device=dev))) & (radius <= kc)
    ok &= movable[centre]
    inf = torch.full_like(cost, float("inf"))
    c_cost = torch.where(ok, cost, inf)
    low = torch.full((centres.numel(),), float("inf"), dtype=xh.dtype, device=dev)
    low = low.scatter_reduce_(0, slot, c_cost, "amin", include_self=True)
    at_low = ok & (c_cost == low[slot])
    big = torch.full((centres.numel(),), m, dtype=torch.int64, device=dev)
    pos = torch.where(at_low, torch.arange(m, device=dev), torch.full_like(slot, m))
    choice = big.scatter_reduce_(0, slot, pos, "amin", include_self=True)  # [c]
    move = (choice < m) & (low < cost[centres])
    new = keep.clone()
    new[centres[move]] = False
    new[choice[move]] = True
    return new


def reference(
    vision: torch.Tensor,
    pool: torch.Tensor,
    group_offsets: torch.Tensor,
    image: torch.Tensor,
    keep: torch.Tensor,
    movable: torch.Tensor,
    steps: int,
    eps: float,
) -> torch.Tensor:
    """``steps`` refinement steps of the kept set of every group. Returns the new ``keep [K]``.

    One step, on the unit rows ``x̂`` of a group's pool positions with kept set ``S``:

    1. Assignment: every position ``i`` joins the cluster of its nearest kept position
       ``c(i) = argmax_{j in S} x̂_i . x̂_j`` (ties to the lower position; a kept position is
       its own centre), at distance ``d_i = 1 - x̂_i . x̂_{c(i)}`` (0 for kept positions).
       ``R = max_i d_i`` is the group's k-centre radius.
    2. Candidates of a movable centre ``j``: the members ``c`` of its cluster in ``j``'s image
       that are ``j`` itself or not kept, whose radius ``max_{i in cluster} (1 - x̂_i.x̂_c)`` is at
       most ``R``. Cost of ``c``: ``sum_{i in cluster} (1 - x̂_i . x̂_c)`` (0 for ``i = c``).
    3. Every movable centre whose cheapest candidate (ties to the lower position) costs strictly
       less than itself moves there; all moves of a step apply at once.

    Every image keeps its count, the k-centre radius of a group never rises and the sum of
    nearest-kept distances never rises (each cluster's cost falls, then the reassignment can
    only lower distances).
    """
    go = bounds(group_offsets)
    out = keep.clone()
    for g in range(len(go) - 1):
        a, e = go[g], go[g + 1]
        if e - a == 0 or steps <= 0:
            continue
        xh = normalize(vision[pool[a:e]], eps)
        k = out[a:e]
        for _ in range(int(steps)):
            nk = _step(xh, image[a:e], k, movable[a:e])
            if torch.equal(nk, k):
                break
            # a moved centre stays movable at its new position (only movable centres move)
            movable = movable.clone()
            movable[a:e] |= nk & ~k
            k = nk
        out[a:e] = k
    return out


@torch.library.custom_op("adaptive_prune::refine_medoids", mutates_args=())
def refine_medoids(
    vision: torch.Tensor,
    pool: torch.Tensor,
    group_offsets: torch.Tensor,
    image: torch.Tensor,
    keep: torch.Tensor,
    movable: torch.Tensor,
    steps: int,
    eps: float,
) -> torch.Tensor:
    """Coverage refinement. New keep mask ``[K]`` bool, same count per image."""
    return reference(vision, pool, group_offsets, image, keep, movable, steps, eps)


@refine_medoids.register_fake
def _(vision, pool, group_offsets, image, keep, movable, steps, eps):
    return keep.new_empty(keep.shape)


op = refine_medoids
