"""Op ``adaptive_prune::global_greedy`` (stage 2 filter): a max-min greedy over each request's
pool, inside groups of similar images, that records every pick's gain. Definition, fake and
reference."""

from __future__ import annotations

import math
from typing import Optional

import torch

from .. import _checks as C
from . import _contract as X
from ._common import bounds, compute_dtype, define, greedy_order, normalize

_OP = "global_greedy"


def check(
    vision: torch.Tensor,
    pool: torch.Tensor,
    pool_offsets: torch.Tensor,
    reserved: torch.Tensor,
    num_picks: list[int],
    eps: float,
    group_offsets: Optional[torch.Tensor] = None,
) -> bool:
    """The op's contract: pool rows in ``[0, N)``, ``reserved`` count of request ``r`` <=
    ``num_picks[r]`` <= its pool size, groups (when given) nested in the requests."""
    X.tensor(_OP, "vision", vision, 2, X.FLOATS, "a float type")
    X.tensor(_OP, "pool", pool, 1, (torch.int64,), "int64")
    X.tensor(_OP, "reserved", reserved, 1, (torch.bool,), "bool")
    if reserved.shape != pool.shape:
        X.fail(_OP, f"reserved has shape {tuple(reserved.shape)}, pool {tuple(pool.shape)}")
    po = X.offsets(_OP, "pool_offsets", pool_offsets, pool.shape[0], "K (entries of pool)")
    picks = X.int_list(_OP, "num_picks", num_picks, len(po) - 1)
    X.option(_OP, "eps", eps, C.EPS)
    if group_offsets is not None:
        go = X.offsets(_OP, "group_offsets", group_offsets, pool.shape[0], "K (entries of pool)")
        if not set(po) <= set(go):
            X.fail(
                _OP, "group_offsets must hold every pool offset (groups never straddle requests)"
            )
    for r, p in enumerate(picks):
        if not 0 <= p <= po[r + 1] - po[r]:
            X.fail(_OP, f"num_picks[{r}] = {p} must lie in [0, {po[r + 1] - po[r]}] (pool size)")
    if X.readable(pool) and pool.numel():
        lo, hi = torch.aminmax(pool)
        if int(lo) < 0 or int(hi) >= vision.shape[0]:
            X.fail(_OP, f"pool holds rows outside [0, {vision.shape[0]}) (rows of vision)")
    if X.readable(reserved) and reserved.numel():
        ends = torch.cumsum(reserved.long(), 0).tolist()
        n_res = [(ends[e - 1] if e else 0) - (ends[a - 1] if a else 0) for a, e in zip(po, po[1:])]
        for r, (nr, p) in enumerate(zip(n_res, picks)):
            if nr > p:
                X.fail(_OP, f"request {r} reserves {nr} positions but num_picks[{r}] = {p}")
    return False


def _distance_row(xh: torch.Tensor, group_of: list[int], go: list[int]):
    """Distances of pick ``j`` to the pool: ``1 - x̂ . x̂_j`` inside ``j``'s group, ``+inf``
    elsewhere (only the group's rows are computed)."""

    def row(j: int) -> torch.Tensor:
        g = group_of[j]
        out = torch.full((xh.shape[0],), math.inf, dtype=xh.dtype, device=xh.device)
        out[go[g] : go[g + 1]] = 1.0 - xh[go[g] : go[g + 1]] @ xh[j]
        return out

    return row


def reference(
    vision: torch.Tensor,
    pool: torch.Tensor,
    pool_offsets: torch.Tensor,
    reserved: torch.Tensor,
    num_picks: list[int],
    eps: float,
    group_offsets: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Max-min greedy over each request's pool, starting from its reserved tokens, where tokens
    of different groups never cover each other.

    ``pool [K]`` are rows of ``vision``; request ``r`` owns pool positions
    ``pool_offsets[r]:pool_offsets[r+1]``; group ``g`` owns ``group_offsets[g]:[g+1]`` (every
    request offset is a group offset: groups never straddle requests; None: one group per
    request). The distance between
    two pool tokens is ``1 - x̂_i . x̂_j`` inside a group and ``+inf`` across groups, so a
    group with no reserved token starts with its first position (gain ``+inf``), and the
    chain is the merge by gain of one max-min chain per group.

    Returns ``order [sum P]`` (global pool positions) and ``gains [sum P]``: for request
    ``r`` the first entries are its reserved positions in pool order (gain ``+inf``), followed
    by greedy picks (argmax over unpicked of the min cosine
    distance to the picked set, ties to the lower pool position) until ``P_r = num_picks[r]``
    entries; each pick's gain is that min distance at the moment it was picked.

    Also returns ``dist [K]`` float32: for every pool position, the minimum cosine distance
    ``1 - x̂_i . x̂_j`` over the chain entries ``j`` of its request that lie in its own group
    (reserved entries and greedy picks, the last pick included), i.e. its running minimum
    where the chain stopped; ``0`` for the chain entries themselves, ``+inf`` where its group
    has no chain entry (every position of a request with ``num_picks[r] = 0``).
    """
    po = bounds(pool_offsets)
    go = bounds(group_offsets) if group_offsets is not None else po
    cd = compute_dtype(vision.dtype)
    orders, gains = [], []
    for r in range(len(po) - 1):
        a, e, P = po[r], po[r + 1], int(num_picks[r])
        res = torch.nonzero(reserved[a:e]).flatten()
        nres = int(res.numel())
        o = res.tolist()
        g = [math.inf] * nres
        if P > nres:
            xh = normalize(vision[pool[a:e]], eps)
            gl = [v - a for v in go if a <= v <= e]  # this request's group offsets, local
            group_of = [t for t in range(len(gl) - 1) for _ in range(gl[t], gl[t + 1])]
            row = _distance_row(xh, group_of, gl)
            acc = torch.full((e - a,), math.inf, dtype=cd, device=vision.device)
            for j in res.tolist():  # min is exact: the order of the reserved rows is free
                acc = torch.minimum(acc, row(j))
            o += greedy_order(acc, reserved[a:e].clone(), P - nres, row, gains=g)
        orders.append(torch.tensor(o[:P], dtype=torch.int64) + a)
        gains.append(torch.tensor(g[:P], dtype=torch.float32))
    dev = vision.device
    order = torch.cat(orders) if orders else torch.zeros(0, dtype=torch.int64)
    gain = torch.cat(gains) if gains else torch.zeros(0, dtype=torch.float32)
    order = order.to(dev)
    dist = chain_dist(vision, pool, po, go, order, [int(p) for p in num_picks], eps)
    return order, gain.to(dev), dist


def chain_dist(
    vision: torch.Tensor,
    pool: torch.Tensor,
    po: list[int],
    go: list[int],
    order: torch.Tensor,
    picks: list[int],
    eps: float,
) -> torch.Tensor:
    """The op's ``dist [K]`` from its chain ``order``: per request, the distances of its pool
    to its chain entries (``+inf`` across groups), their minimum, ``0`` on the chain."""
    K = pool.shape[0]
    dev = vision.device
    dist = torch.full((K,), math.inf, dtype=torch.float32, device=dev)
    if K == 0:
        return dist
    sizes = torch.tensor([b - a for a, b in zip(go, go[1:])])
    gid = torch.repeat_interleave(torch.arange(len(go) - 1), sizes).to(dev)
    o0 = 0
    for r in range(len(po) - 1):
        a, e, P = po[r], po[r + 1], picks[r]
        ch = order[o0 : o0 + P]
        o0 += P
        if P == 0 or e == a:
            continue
        xh = normalize(vision[pool[a:e]], eps)
        d = 1.0 - xh @ xh[ch - a].T  # [m, P]
        d = d.masked_fill(gid[a:e, None] != gid[ch][None, :], math.inf)
        dr = d.amin(dim=1).float()
        dr[ch - a] = 0.0
        dist[a:e] = dr
    return dist


op = define("global_greedy", reference, check)


@op.register_fake
def _(vision, pool, pool_offsets, reserved, num_picks, eps, group_offsets=None):
    total = sum(num_picks)
    return (
        vision.new_empty((total,), dtype=torch.int64),
        vision.new_empty((total,), dtype=torch.float32),
        vision.new_empty((pool.shape[0],), dtype=torch.float32),
    )
