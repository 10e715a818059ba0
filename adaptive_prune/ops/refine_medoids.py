"""Op ``adaptive_prune::refine_medoids`` (stage 3, coverage refinement): one k-medoids step
per group of the kept tokens, that never raises the group's k-centre radius. Definition, fake
and reference.

Packing: ``pool [K]`` rows of ``vision``; group ``g`` owns pool positions
``group_offsets[g]:group_offsets[g+1]``; ``image [K]`` the image of every pool position;
``keep [K]`` the kept positions, ``movable [K]`` those of them that may move.
"""

from __future__ import annotations

import torch

from .. import _checks as C
from . import _contract as X
from ._common import bounds, define, normalize

_OP = "refine_medoids"


# Tolerance of the step's comparisons (cosine scale, per cluster member): a move must lower the
# cluster's cost by more than this and keep its radius below the k-centre by more than this, so
# decisions that rounding alone would settle never move a token (stable under 1e-6 noise).
TIE = 1e-5


def _step(xh: torch.Tensor, img: torch.Tensor, keep: torch.Tensor, movable: torch.Tensor):
    """One refinement step on one group (see :func:`reference`); returns the new keep mask."""
    m = xh.shape[0]
    dev = xh.device
    centres = torch.nonzero(keep).flatten()  # [c] ascending positions
    c = centres.numel()
    if c == 0 or c == m:
        return keep
    best, slot = (xh @ xh[centres].T).max(dim=1)  # torch.max: first maximum on ties
    dist = 1.0 - best
    dist[centres] = 0.0
    slot[centres] = torch.arange(c, device=dev)  # a kept position is its own centre
    radius_now = dist.max()
    size = torch.bincount(slot, minlength=c).to(xh.dtype)  # [c]
    total = torch.zeros(c, xh.shape[1], dtype=xh.dtype, device=dev).index_add_(0, slot, xh)
    cost = size[slot] - (xh * total[slot]).sum(dim=1)  # [m] cost as its cluster's medoid
    centre = centres[slot]  # [m]
    pos = torch.arange(m, device=dev)
    ok = (img == img[centre]) & (~keep | (centre == pos)) & movable[centre]
    c_cost = torch.where(ok, cost, torch.full_like(cost, float("inf")))
    low = torch.full((c,), float("inf"), dtype=xh.dtype, device=dev)
    low = low.scatter_reduce_(0, slot, c_cost, "amin", include_self=True)
    # near-equal costs (a two-member cluster's members cost the same, up to rounding) are a
    # tie: the lowest position within TIE * cluster size of the cheapest wins
    band = TIE * size
    at_low = ok & (c_cost <= low[slot] + band[slot])
    choice = torch.full((c,), m, dtype=torch.int64, device=dev)
    choice = choice.scatter_reduce_(
        0, slot, torch.where(at_low, pos, torch.full_like(pos, m)), "amin", include_self=True
    )  # [c] the cheapest candidate of every cluster (lowest position on ties)
    better = (choice < m) & (low < cost[centres] - band)
    to = torch.where(better, choice, centres)
    d_new = 1.0 - (xh * xh[to[slot]]).sum(dim=1)
    d_new = torch.where(pos == to[slot], torch.zeros_like(d_new), d_new)
    radius = torch.zeros(c, dtype=xh.dtype, device=dev)
    radius = radius.scatter_reduce_(0, slot, d_new, "amax", include_self=True)
    move = better & (radius <= radius_now - TIE)
    new = keep.clone()
    new[centres[move]] = False
    new[choice[move]] = True
    return new


def check(
    vision: torch.Tensor,
    pool: torch.Tensor,
    group_offsets: torch.Tensor,
    image: torch.Tensor,
    keep: torch.Tensor,
    movable: torch.Tensor,
    steps: int,
    eps: float,
) -> bool:
    """The op's contract: pool rows in ``[0, N)``, one image id, keep and movable flag per pool
    position, group offsets over the pool, ``steps >= 0``."""
    X.tensor(_OP, "vision", vision, 2, X.FLOATS, "a float type")
    X.tensor(_OP, "pool", pool, 1, (torch.int64,), "int64")
    K = pool.shape[0]
    X.offsets(_OP, "group_offsets", group_offsets, K, "K (entries of pool)")
    X.tensor(_OP, "image", image, 1, X.INTS, "int32 or int64")
    X.tensor(_OP, "keep", keep, 1, (torch.bool,), "bool")
    X.tensor(_OP, "movable", movable, 1, (torch.bool,), "bool")
    for name, t in (("image", image), ("keep", keep), ("movable", movable)):
        if t.shape[0] != K:
            X.fail(_OP, f"{name} has {t.shape[0]} entries for {K} pool positions")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        X.fail(_OP, f"steps must be an int >= 0, got {steps!r}")
    X.option(_OP, "eps", eps, C.EPS)
    if X.readable(pool) and K:
        lo, hi = torch.aminmax(pool)
        if int(lo) < 0 or int(hi) >= vision.shape[0]:
            X.fail(_OP, f"pool holds rows outside [0, {vision.shape[0]}) (rows of vision)")
    return False


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
       that are ``j`` itself or not kept. Cost of a member ``c``: ``n_j - x̂_c . s_j`` with
       ``n_j`` the cluster's size and ``s_j`` the sum of its members' unit rows (the sum of the
       members' distances to ``c``).
    3. The cheapest candidate ``c*`` (the lowest position among the candidates within
       ``TIE * n_j`` of the cheapest cost: a tie band) replaces ``j`` when it costs less than
       ``j``'s cost minus ``TIE * n_j`` and the cluster's radius ``max_{i in cluster} (1 - x̂_i
       . x̂_c*)`` (0 for ``i = c*``) is at most ``R - TIE``. All moves of a step apply at
       once. The bands make decisions that rounding alone would settle (a two-member
       cluster's members cost the same) keep the token in place.

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


op = define("refine_medoids", reference, check)


@op.register_fake
def _(vision, pool, group_offsets, image, keep, movable, steps, eps):
    return keep.new_empty(keep.shape)
