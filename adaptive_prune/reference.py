"""Pure-PyTorch reference of every stage of the method (docs/METHOD.md is the specification).

This module is the specification in code: small, readable, device-agnostic (CPU and CUDA
tensors), computing in fp32 (fp64 when the input is fp64). It is the default implementation of
every ``torch.ops.adaptive_prune.*`` op; the C++ and Triton backends must reproduce it exactly on
tie-free inputs.

Packing conventions shared by all stages (FlashAttention ``cu_seqlens`` style, two levels):

- ``vision [N, D]``: the visual tokens of every image of every request, concatenated.
- ``cu_seqlens [n+1]``: image ``k`` owns rows ``cu_seqlens[k]:cu_seqlens[k+1]``.
- ``req_offsets [R+1]``: request ``r`` owns images ``req_offsets[r]:req_offsets[r+1]``.
- ``text [M, D]`` with ``text_offsets [R+1]``: request ``r`` owns text rows
  ``text_offsets[r]:text_offsets[r+1]`` (an empty range means "no text" for that request).

Ties are always broken towards the lower index (token, image or pool position).
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "compute_dtype",
    "normalize",
    "budget_scores",
    "allocate_budgets",
    "greedy_select",
    "global_greedy",
    "token_alignment",
    "pareto_select",
    "crowding_distance",
    "nondominated_fronts",
]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for fp16/bf16/fp32 inputs, fp64 for fp64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """``x_i / max(||x_i||, eps)`` row-wise, in the compute dtype. ``[*, D] -> [*, D]``."""
    x = x.to(compute_dtype(x.dtype))
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


def _bounds(offsets: torch.Tensor) -> list[int]:
    return [int(v) for v in offsets.tolist()]


# --------------------------------------------------------------------------------------------
# Stage 0: redundancy scores
# --------------------------------------------------------------------------------------------
def budget_scores(
    vision: torch.Tensor,
    cu_seqlens: torch.Tensor,
    req_offsets: torch.Tensor,
    text: torch.Tensor | None,
    text_offsets: torch.Tensor | None,
    sigma: float,
    tau_a: float,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image redundancy scores from one pass over ``vision``.

    Returns ``(d_intra [n], mult [n], att [n], d_inter [R])`` in the compute dtype.

    - ``D_intra(k)``: mean cosine distance over ordered pairs ``i != j`` of image ``k``, from the
      identity ``sum_{i!=j} x̂_i.x̂_j = ||s_k||^2 - sum_i ||x̂_i||^2`` (exact also for zero-norm
      tokens, whose normalised vector is 0); 0 when ``m_k <= 1``.
    - ``mult_k = sum_l exp(-(1 - C_kl) / sigma)`` over the nonempty images ``l`` of the same
      request, ``C_kl = mu_k . mu_l``, ``mu_k = s_k / max(||s_k||, eps)``; 0 for empty images.
    - ``att_k``: share of image ``k`` in ``softmax_i(tau_a * cos(t, x_i))`` over the request's
      tokens, averaged over the request's text rows ``t``; 0 without text.
    - ``D_inter(r)``: mean of ``1 - C_kl`` over ordered pairs ``k != l`` of nonempty images of
      request ``r``; 0 with fewer than two.
    """
    cd = compute_dtype(vision.dtype)
    dev = vision.device
    cu = _bounds(cu_seqlens)
    ro = _bounds(req_offsets)
    n = len(cu) - 1
    counts = torch.tensor([cu[k + 1] - cu[k] for k in range(n)], device=dev, dtype=cd)
    xh = normalize(vision, eps)
    img = torch.repeat_interleave(torch.arange(n, device=dev), counts.long())
    s = torch.zeros(n, vision.shape[1], device=dev, dtype=cd).index_add_(0, img, xh)
    sq = torch.zeros(n, device=dev, dtype=cd).index_add_(0, img, (xh * xh).sum(-1))
    pairs = counts * (counts - 1)
    off_diag = (s * s).sum(-1) - sq
    d_intra = torch.where(pairs > 0, 1.0 - off_diag / pairs.clamp_min(1.0), torch.zeros_like(pairs))
    mu = s / s.norm(dim=-1, keepdim=True).clamp_min(eps)

    mult = torch.zeros(n, device=dev, dtype=cd)
    att = torch.zeros(n, device=dev, dtype=cd)
    d_inter = torch.zeros(len(ro) - 1, device=dev, dtype=cd)
    to = _bounds(text_offsets) if text is not None and text_offsets is not None else None
    th = normalize(text, eps) if to is not None else None
    for r in range(len(ro) - 1):
        k0, k1 = ro[r], ro[r + 1]
        if k1 == k0:
            continue
        live = counts[k0:k1] > 0
        C = mu[k0:k1] @ mu[k0:k1].T
        w = torch.exp(-(1.0 - C) / sigma) * live[None, :]
        mult[k0:k1] = torch.where(live, w.sum(-1), torch.zeros_like(w[:, 0]))
        nl = int(live.sum())
        if nl >= 2:
            both = live[:, None] & live[None, :]
            both.fill_diagonal_(False)
            d_inter[r] = ((1.0 - C) * both).sum() / (nl * (nl - 1))
        if th is not None and to[r + 1] > to[r] and cu[k1] > cu[k0]:
            logits = tau_a * (th[to[r] : to[r + 1]] @ xh[cu[k0] : cu[k1]].T)  # [M_r, N_r]
            p = torch.softmax(logits, dim=-1)
            per_img = torch.zeros(p.shape[0], k1 - k0, device=dev, dtype=cd)
            per_img.index_add_(1, img[cu[k0] : cu[k1]] - k0, p)
            att[k0:k1] = per_img.mean(0)
    return d_intra, mult, att, d_inter


# --------------------------------------------------------------------------------------------
# Allocation
# --------------------------------------------------------------------------------------------
def _allocate_one(w: list[float], cap: list[int], mins: list[int], total: int) -> list[int]:
    """Water-filling + largest remainder for one request (float64, host)."""
    n = len(w)
    b = list(mins)
    rest = total - sum(mins)
    room = [cap[k] - mins[k] for k in range(n)]
    share = [0.0] * n
    active = [k for k in range(n) if room[k] > 0 and w[k] > 0]
    left = float(rest)
    while active and left > 0:
        wsum = 0.0
        for k in active:  # sequential on every Python (3.12's sum() is compensated)
            wsum += w[k]
        over = [k for k in active if left * w[k] / wsum >= room[k]]
        if not over:
            for k in active:
                share[k] = left * w[k] / wsum
            break
        for k in over:
            share[k] = float(room[k])
            left -= room[k]
        active = [k for k in active if k not in over]
    floors = [min(int(math.floor(share[k] + 1e-9)), room[k]) for k in range(n)]
    missing = rest - sum(floors)
    frac = sorted(
        (k for k in range(n) if floors[k] < room[k]),
        key=lambda k: (-(share[k] - floors[k]), k),
    )
    for k in frac[: max(missing, 0)]:
        floors[k] += 1
    return [b[k] + floors[k] for k in range(n)]


def allocate_budgets(
    weights: torch.Tensor,
    caps: torch.Tensor,
    mins: torch.Tensor,
    req_offsets: torch.Tensor,
    totals: torch.Tensor,
) -> torch.Tensor:
    """Per-image budgets ``b [n]`` (int64) with ``sum_k b_k == totals[r]`` per request.

    ``b_k = mins_k + share of (total - sum mins)`` proportional to ``weights_k``, capped at
    ``caps_k`` (water-filling: cap, redistribute, repeat), rounded by largest remainder with ties
    to the lower image index. Images with ``weights_k <= 0`` or no room get only ``mins_k``.
    Requires ``sum mins <= total <= sum caps`` per request.
    """
    ro = _bounds(req_offsets)
    w = weights.double().tolist()
    cap = [int(v) for v in caps.tolist()]
    mn = [int(v) for v in mins.tolist()]
    tot = [int(v) for v in totals.tolist()]
    out: list[int] = []
    for r in range(len(ro) - 1):
        k0, k1 = ro[r], ro[r + 1]
        out += _allocate_one(w[k0:k1], cap[k0:k1], mn[k0:k1], tot[r])
    return torch.tensor(out, dtype=torch.int64, device=weights.device)


# --------------------------------------------------------------------------------------------
# Stage 1: greedy selection inside each image
# --------------------------------------------------------------------------------------------
def greedy_select(
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
    picks ``argmax of the sum`` of those distances. Ties to the lower index.
    """
    cu = _bounds(cu_seqlens)
    bud = [int(v) for v in budgets.tolist()]
    rank = torch.full((vision.shape[0],), -1, dtype=torch.int64, device=vision.device)
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
        j = int(torch.argmax(xh @ mu))
        acc = dist[j].clone()
        for step in range(b):
            if step > 0:
                score = acc.masked_fill(picked, -math.inf)
                j = int(torch.argmax(score))
                acc = torch.minimum(acc, dist[j]) if mode == "maxmin" else acc + dist[j]
            picked[j] = True
            rank[a + j] = step
    return rank


# --------------------------------------------------------------------------------------------
# Stage 2: global diversity filter (max-min over the pool, recording gains)
# --------------------------------------------------------------------------------------------
def global_greedy(
    vision: torch.Tensor,
    pool: torch.Tensor,
    pool_offsets: torch.Tensor,
    reserved: torch.Tensor,
    num_picks: list[int],
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Max-min greedy over each request's pool, starting from its reserved tokens.

    ``pool [K]`` are rows of ``vision``; request ``r`` owns pool positions
    ``pool_offsets[r]:pool_offsets[r+1]``. Returns ``order [sum P]`` (global pool positions) and
    ``gains [sum P]``: for request ``r`` the first entries are its reserved positions in pool
    order (gain ``+inf``), followed by greedy picks (argmax over unpicked of the min cosine
    distance to the picked set, ties to the lower pool position) until ``P_r = num_picks[r]``
    entries; each pick's gain is that min distance at the moment it was picked.
    """
    po = _bounds(pool_offsets)
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
            if nres:
                acc = (1.0 - xh @ xh[res].T).min(dim=1).values
            else:  # no start set: the first pick is position 0 (callers always reserve one)
                acc = torch.full((e - a,), math.inf, dtype=cd, device=vision.device)
            picked = reserved[a:e].clone()
            for _ in range(P - nres):
                j = int(torch.argmax(acc.masked_fill(picked, -math.inf)))
                o.append(j)
                g.append(float(acc[j]))
                picked[j] = True
                acc = torch.minimum(acc, 1.0 - xh @ xh[j])
        orders.append(torch.tensor(o[:P], dtype=torch.int64) + a)
        gains.append(torch.tensor(g[:P], dtype=torch.float32))
    dev = vision.device
    order = torch.cat(orders) if orders else torch.zeros(0, dtype=torch.int64)
    gain = torch.cat(gains) if gains else torch.zeros(0, dtype=torch.float32)
    return order.to(dev), gain.to(dev)


def token_alignment(
    vision: torch.Tensor,
    rows: torch.Tensor,
    row_offsets: torch.Tensor,
    text: torch.Tensor,
    text_offsets: torch.Tensor,
    reduce: str,
    eps: float,
) -> torch.Tensor:
    """``a [K]`` float32: mean (``reduce="mean"``) or max over the request's text rows of
    ``cos(x_i, t)`` for every selected row ``i = rows[j]``; 0 for requests without text."""
    ro, to = _bounds(row_offsets), _bounds(text_offsets)
    out = torch.zeros(rows.shape[0], dtype=torch.float32, device=vision.device)
    for r in range(len(ro) - 1):
        if ro[r + 1] == ro[r] or to[r + 1] == to[r]:
            continue
        sim = (
            normalize(vision[rows[ro[r] : ro[r + 1]]], eps)
            @ normalize(text[to[r] : to[r + 1]], eps).T
        )
        out[ro[r] : ro[r + 1]] = (sim.mean(1) if reduce == "mean" else sim.max(1).values).float()
    return out


# --------------------------------------------------------------------------------------------
# Pareto selection
# --------------------------------------------------------------------------------------------
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


def pareto_select(
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
    so = _bounds(offsets)
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
