"""Baseline pruners in the same API as the adaptive method (``prune(..., method=NAME)``).

Each baseline is re-implemented from its paper's description (``docs/quality.md`` says
how the published code behaves and where ours differs); no code was copied. Every one returns
exactly ``B`` unique rows through :func:`adaptive_prune.prune` and honours ``min_per_image``.

=================== ==========================================================================
``random``          ``B`` tokens uniformly at random (option ``seed``), after ``min(q, m_k)``
                    random tokens of every image.
``uniform``         Proportional per-image budgets, then an even stride inside each image
                    (the centres of ``b_k`` equal bins of the raster order).
``divprune``        DivPrune per image: max-min (farthest-point) greedy on cosine distance,
                    first pick = the token whose nearest neighbour is farthest; proportional
                    per-image budgets.
``divprune_pooled`` DivPrune over all tokens of the request at once (one greedy).
``dart``            DART per image: pivots = the ``pivots`` tokens of largest L1 (or L2) norm,
                    plus the ``text_pivots`` text rows of largest norm; for each pivot in turn,
                    keep the not-yet-kept tokens least similar (cosine) to it, with an exact
                    quota so the image keeps exactly ``b_k``.
``cdpruner``        CDPruner: conditional DPP with kernel ``diag(r) S diag(r)`` (``S`` = cosine
                    similarity, ``r`` = min-max normalised mean cosine to the text, 1 without
                    text), fast greedy MAP; per image by default; rank-safe.
``trimtokenator``   TrimTokenator (the predecessor paper) per image: keep the top
                    ``stage1_ratio * m_k`` tokens by ``-mean_t ||x - t||^2`` (skipped without
                    text), then the max-sum (expected pairwise cosine distance) greedy.
=================== ==========================================================================

Per-image budgets (``uniform``, ``divprune``, ``dart``, ``cdpruner``, ``trimtokenator``): see
:func:`proportional_budgets`: every image keeps the same share ``B / N`` of its tokens as nearly
as integers allow, an image whose share is below ``min(q, m_k)`` is raised to that minimum and
the others are rescaled (water-filling), and the fractional parts are rounded by largest
remainder with ties to the lower image index, so the budgets sum to ``B`` exactly.

Pooled methods (``random``, ``divprune_pooled``, ``cdpruner`` with ``per_image=False``) take no
notice of images, so after their selection :func:`_repair_minimums` gives every image that has
fewer than ``min(q, m_k)`` tokens its missing ones (in the image's own DivPrune order) and drops
the same number of the latest picks of images that have more than their minimum.

Differences from the published code, all deliberate and documented in ``docs/quality.md``:
DivPrune uses the O(kN) running minimum (the authors' loop re-reduces all picked rows every step,
O(k^2 N), for the same picks); DART uses the input tokens for the norms and the cosines (we see
no key states), per image with an exact count (the reference returns ``4 + 8 * ceil(k / 8)``);
CDPruner does not negate the relevance by default (``negate_relevance=True`` restores the
CLIP-specific choice of the authors) and, unlike the reference, never repeats a token once the
kernel's rank is exhausted: it fills the rest of the budget by max-min distance.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import torch

from .. import _checks as C
from .._checks import image_minimums
from .._tensors import starts as _starts
from ..ops._common import compute_dtype, greedy_order, normalize, water_fill
from . import Method, register_method

__all__ = ["proportional_budgets", "BASELINES"]

EPS = 1e-6
# Up to this many tokens the greedy loops hold the full [N, N] cosine matrix (one GEMM; 8192^2
# fp32 = 256 MiB); above it they compute one similarity row per step (O(N D) memory traffic per
# pick instead of O(N)).
_FULL_MATRIX_MAX = 8192
# Greedy MAP stops when the best residual gain falls to this value (the kernel's diagonal is
# at most 1 and the DPP runs in float64, so exhausted directions leave ~1e-13).
_DPP_GAIN_FLOOR = 1e-9


# --------------------------------------------------------------------------------------------
# Budgets and shared greedy kernels
# --------------------------------------------------------------------------------------------
def proportional_budgets(
    counts: list[int], budget: int, min_per_image: Union[int, Sequence[int]]
) -> list[int]:
    """Per-image budgets proportional to the image sizes, with minimums, summing to ``budget``.

    ``b_k = m_k * r`` with one ratio ``r`` for all images, except that images with
    ``m_k * r < min(q, m_k)`` get exactly that minimum and ``r`` is recomputed over the others
    (repeat until stable; ``r`` only falls, so ``r <= budget / N <= 1`` and ``b_k <= m_k``).
    Fractional parts are rounded by largest remainder, ties to the lower image index.
    ``min_per_image``: ``q`` for every image, or one ``q_k`` per image.
    Requires ``sum_k min(q_k, m_k) <= budget <= sum_k m_k`` (checked by the public API).
    """
    mins = image_minimums(min_per_image, counts)
    if budget < sum(mins) or budget > sum(counts):
        raise ValueError(
            f"budget {budget} must lie between the sum of minimums {sum(mins)} and the number "
            f"of tokens {sum(counts)}"
        )
    return water_fill([float(m) for m in counts], mins, list(counts), budget)


class _Similarity:
    """Rows of the cosine-similarity matrix of ``xh [N, D]`` (unit rows), either precomputed
    (``N <= _FULL_MATRIX_MAX``) or computed one row per call."""

    def __init__(self, xh: torch.Tensor):
        self.xh = xh
        self.full = xh @ xh.T if xh.shape[0] <= _FULL_MATRIX_MAX else None

    def row(self, j: int) -> torch.Tensor:
        return self.full[j] if self.full is not None else self.xh @ self.xh[j]

    def nearest_neighbour_sim(self) -> torch.Tensor:
        """``max over j != i of cos(x_i, x_j)`` for every ``i`` (``-inf`` when ``N == 1``)."""
        N = self.xh.shape[0]
        out = torch.empty(N, dtype=self.xh.dtype, device=self.xh.device)
        step = 1024
        for a in range(0, N, step):
            e = min(N, a + step)
            blk = (self.full[a:e] if self.full is not None else self.xh[a:e] @ self.xh.T).clone()
            blk[torch.arange(e - a), torch.arange(a, e)] = -math.inf
            out[a:e] = blk.max(dim=1).values
        return out


def _maxmin_order(xh: torch.Tensor, k: int, first: Optional[int] = None) -> list[int]:
    """DivPrune's max-min greedy over unit rows ``xh [N, D]``: ``k`` picks in pick order.

    First pick ``first`` or, by default, the token whose nearest neighbour is farthest (argmax of
    ``1 - max_{j != i} cos``, i.e. argmin of the nearest-neighbour similarity); then
    ``argmax over unpicked i of min over picked j of (1 - cos(x_i, x_j))``, kept as a running
    minimum (O(kN) after the similarity rows). Ties to the lower index.
    """
    N = xh.shape[0]
    k = min(k, N)
    if k <= 0:
        return []
    sim = _Similarity(xh)
    if first is None:
        first = int(torch.argmin(sim.nearest_neighbour_sim())) if N > 1 else 0
    picked = torch.zeros(N, dtype=torch.bool, device=xh.device)
    picked[first] = True
    return [first] + greedy_order(1.0 - sim.row(first), picked, k - 1, lambda j: 1.0 - sim.row(j))


def _divprune_rows(x: torch.Tensor, k: int) -> list[int]:
    return _maxmin_order(normalize(x, EPS), k)


def _per_image(
    vision: torch.Tensor,
    counts: list[int],
    budget: int,
    q: int,
    pick: Callable[[torch.Tensor, int, int], list[int]],
) -> torch.Tensor:
    """Run ``pick(tokens_of_image_k, b_k, k) -> local rows`` on every image with its
    proportional budget; returns request-local rows."""
    b = proportional_budgets(counts, budget, q)
    st = _starts(counts)
    out: list[int] = []
    for k, bk in enumerate(b):
        if bk <= 0:
            continue
        if bk >= counts[k]:
            out.extend(range(st[k], st[k + 1]))
            continue
        rows = pick(vision[st[k] : st[k + 1]], bk, k)
        out.extend(st[k] + int(i) for i in rows)
    return torch.tensor(out, dtype=torch.int64, device=vision.device)


def _repair_minimums(
    order: list[int], vision: torch.Tensor, counts: list[int], q: int
) -> list[int]:
    """Make a pooled selection (``order``: request-local rows, in pick order) honour
    ``min(q, m_k)`` per image without changing its size.

    Every image short of its minimum receives its missing tokens in its own DivPrune order
    (skipping those already kept); as many of the latest picks of images above their minimum
    are dropped.
    """
    st = _starts(counts)
    img_of = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts)).tolist()
    have = [0] * len(counts)
    for i in order:
        have[img_of[i]] += 1
    mins = image_minimums(q, counts)
    need = [max(lo - h, 0) for lo, h in zip(mins, have)]
    if not any(need):
        return order
    kept = set(order)
    extra: list[int] = []
    for k, nk in enumerate(need):
        if nk == 0:
            continue
        mine = _divprune_rows(vision[st[k] : st[k + 1]], counts[k])
        add = [st[k] + i for i in mine if st[k] + i not in kept][:nk]
        extra.extend(add)
    drop = len(extra)
    out = list(order)
    for pos in range(len(out) - 1, -1, -1):
        if drop == 0:
            break
        k = img_of[out[pos]]
        if have[k] > mins[k]:
            have[k] -= 1
            out.pop(pos)
            drop -= 1
    return out + extra


def _full_or_empty(vision: torch.Tensor, budget: int) -> Optional[torch.Tensor]:
    N = vision.shape[0]
    if budget >= N:
        return torch.arange(N, device=vision.device)
    if budget <= 0:
        return torch.zeros(0, dtype=torch.int64, device=vision.device)
    return None


# --------------------------------------------------------------------------------------------
# random / uniform
# --------------------------------------------------------------------------------------------
def select_random(vision, counts, text, budget, q, options) -> torch.Tensor:
    """Uniformly random ``B`` tokens (seeded, CPU generator: the same picks on every device),
    after ``min(q, m_k)`` random tokens of every image."""
    done = _full_or_empty(vision, budget)
    if done is not None:
        return done
    g = torch.Generator().manual_seed(int(options["seed"]))
    st = _starts(counts)
    N = vision.shape[0]
    taken = torch.zeros(N, dtype=torch.bool)
    for k, (m, mk) in enumerate(zip(counts, image_minimums(q, counts))):
        if mk:
            taken[st[k] + torch.randperm(m, generator=g)[:mk]] = True
    rest = torch.nonzero(~taken).flatten()
    more = budget - int(taken.sum())
    taken[rest[torch.randperm(rest.numel(), generator=g)[:more]]] = True
    return torch.nonzero(taken).flatten().to(vision.device)


def _stride_rows(m: int, b: int) -> list[int]:
    """Centres of ``b`` equal bins of ``range(m)``: ``floor((i + 1/2) * m / b)``, unique for
    ``b <= m``."""
    return [((2 * i + 1) * m) // (2 * b) for i in range(b)]


def select_uniform(vision, counts, text, budget, q, options) -> torch.Tensor:
    """Proportional per-image budgets, even stride inside every image."""
    done = _full_or_empty(vision, budget)
    if done is not None:
        return done
    return _per_image(vision, counts, budget, q, lambda x, b, k: _stride_rows(x.shape[0], b))


# --------------------------------------------------------------------------------------------
# DivPrune
# --------------------------------------------------------------------------------------------
def select_divprune(vision, counts, text, budget, q, options) -> torch.Tensor:
    """DivPrune max-min greedy inside every image, proportional budgets."""
    done = _full_or_empty(vision, budget)
    if done is not None:
        return done
    return _per_image(vision, counts, budget, q, lambda x, b, k: _divprune_rows(x, b))


def select_divprune_pooled(vision, counts, text, budget, q, options) -> torch.Tensor:
    """One DivPrune greedy over all tokens of the request (images ignored), then minimums."""
    done = _full_or_empty(vision, budget)
    if done is not None:
        return done
    order = _divprune_rows(vision, budget)
    order = _repair_minimums(order, vision, counts, q)
    return torch.tensor(order, dtype=torch.int64, device=vision.device)


# --------------------------------------------------------------------------------------------
# DART
# --------------------------------------------------------------------------------------------
def _top_by_norm(x: torch.Tensor, k: int, kind: str) -> list[int]:
    """Rows of the ``k`` largest L1/L2 norms, largest first, ties to the lower index."""
    nrm = x.to(compute_dtype(x.dtype)).norm(p=1 if kind == "l1" else 2, dim=1)
    return torch.sort(nrm, descending=True, stable=True).indices[:k].tolist()


def dart_rows(
    x: torch.Tensor, b: int, text_pivots: Optional[torch.Tensor], n_pivots: int, norm: str
) -> list[int]:
    """DART on one image ``x [m, D]``: exactly ``b`` local rows.

    The ``min(n_pivots, b)`` tokens of largest norm are kept as pivots. The remaining
    ``b - |pivots|`` tokens are chosen pivot by pivot (image pivots first, then the text pivots
    ``[T, D]``): pivot ``p`` of the ``L`` left takes ``ceil(need / L)`` of the not-yet-kept tokens
    with the lowest cosine to it (ties to the lower index), so the total is exact.
    """
    m = x.shape[0]
    if b >= m:
        return list(range(m))
    piv = _top_by_norm(x, min(n_pivots, b), norm)
    xh = normalize(x, EPS)
    vecs = [xh[i] for i in piv]
    if text_pivots is not None and text_pivots.shape[0]:
        vecs += list(normalize(text_pivots, EPS).to(xh.dtype))
    kept = torch.zeros(m, dtype=torch.bool, device=x.device)
    kept[piv] = True
    out = list(piv)
    need = b - len(piv)
    for p, v in enumerate(vecs):
        if need <= 0:
            break
        take = -(-need // (len(vecs) - p))
        cos = (xh @ v).masked_fill(kept, math.inf)
        rows = torch.sort(cos, stable=True).indices[:take]
        kept[rows] = True
        out.extend(rows.tolist())
        need -= take
    return out


def select_dart(vision, counts, text, budget, q, options) -> torch.Tensor:
    """DART per image with proportional budgets; text pivots shared by all images."""
    done = _full_or_empty(vision, budget)
    if done is not None:
        return done
    tp = None
    if text is not None and options["text_pivots"] > 0:
        tp = text[_top_by_norm(text, int(options["text_pivots"]), options["norm"])]
    n_piv, norm = int(options["pivots"]), options["norm"]
    return _per_image(vision, counts, budget, q, lambda x, b, k: dart_rows(x, b, tp, n_piv, norm))


# --------------------------------------------------------------------------------------------
# CDPruner
# --------------------------------------------------------------------------------------------
def cdpruner_relevance(
    vision: torch.Tensor, text: Optional[torch.Tensor], negate: bool = False
) -> torch.Tensor:
    """``r [N]`` float64 in [0, 1]: mean cosine of every token to the text rows (negated when
    ``negate``), min-max normalised over the request; all ones without text or when constant."""
    N = vision.shape[0]
    if text is None or text.shape[0] == 0:
        return torch.ones(N, dtype=torch.float64, device=vision.device)
    rel = (normalize(vision, EPS).double() @ normalize(text, EPS).double().T).mean(dim=1)
    if negate:
        rel = -rel
    span = rel.max() - rel.min()
    if float(span) <= 0:
        return torch.ones_like(rel)
    return (rel - rel.min()) / span


def dpp_greedy_map(xh: torch.Tensor, r: torch.Tensor, k: int) -> tuple[list[int], list[float]]:
    """Fast greedy MAP inference (Chen et al., 2018) for ``L = diag(r) (xh xh^T) diag(r)``.

    Returns the picks and their gains (the residual ``d_j^2``, non-increasing), stopping early
    when the best gain is ``<= _DPP_GAIN_FLOOR`` (the kernel's rank is exhausted). Float64.
    Incremental Cholesky: ``e_i = (L_ji - <c_j, c_i>) / d_j``, ``d_i^2 -= e_i^2``; O(k N (D + k)).

    Memory: ``L`` has rank at most ``min(N, D)``, so at most that many picks have a positive
    gain (in exact arithmetic the residuals vanish after them). The loop stops there, which
    bounds the Cholesky rows to ``8 N min(k, N, D)`` bytes, no more than the float64 copy of
    the tokens (the unbounded ``8 N k`` was 8 GB for one 100k-token image at keep 10 %).
    """
    x = xh.double()
    r = r.double()
    N, D = x.shape
    k = min(k, N, D)
    d2 = r * r * (x * x).sum(dim=1)
    cis = torch.zeros(k, N, dtype=torch.float64, device=x.device)
    picked = torch.zeros(N, dtype=torch.bool, device=x.device)
    order: list[int] = []
    gains: list[float] = []
    for t in range(k):
        j = int(torch.argmax(d2.masked_fill(picked, -math.inf)))
        g = float(d2[j])
        if not g > _DPP_GAIN_FLOOR:
            break
        order.append(j)
        gains.append(g)
        picked[j] = True
        if t + 1 == k:
            break
        Lj = r[j] * r * (x @ x[j])
        e = (Lj - cis[:t].T @ cis[:t, j]) / math.sqrt(g)
        cis[t] = e
        d2 = d2 - e * e
    return order, gains


def cdpruner_rows(xh: torch.Tensor, r: torch.Tensor, b: int) -> list[int]:
    """CDPruner on unit rows ``xh`` with relevance ``r``: ``b`` unique rows. Greedy MAP while it
    has positive gain, then (rank exhausted) max-min cosine distance to the picks."""
    order, _ = dpp_greedy_map(xh, r, b)
    if len(order) < b:
        order = _continue_maxmin(xh, order, b)
    return order


def _continue_maxmin(xh: torch.Tensor, start: list[int], b: int) -> list[int]:
    """Extend ``start`` to ``b`` unique rows by max-min cosine distance (ties: lower index)."""
    if not start:
        return _maxmin_order(xh, b)
    picked = torch.zeros(xh.shape[0], dtype=torch.bool, device=xh.device)
    picked[start] = True
    acc = (1.0 - xh @ xh[start].T).min(dim=1).values
    return list(start) + greedy_order(acc, picked, b - len(start), lambda j: 1.0 - xh @ xh[j])


def select_cdpruner(vision, counts, text, budget, q, options) -> torch.Tensor:
    """Conditional DPP; per image with proportional budgets (``per_image=True``, as the
    published per-crop / per-frame deployments do) or one DPP over the request."""
    done = _full_or_empty(vision, budget)
    if done is not None:
        return done
    r = cdpruner_relevance(vision, text, bool(options["negate_relevance"]))
    xh = normalize(vision, EPS)
    if options["per_image"]:
        st = _starts(counts)
        return _per_image(
            vision,
            counts,
            budget,
            q,
            lambda x, b, k: cdpruner_rows(xh[st[k] : st[k + 1]], r[st[k] : st[k + 1]], b),
        )
    order = cdpruner_rows(xh, r, budget)
    order = _repair_minimums(order, vision, counts, q)
    return torch.tensor(order, dtype=torch.int64, device=vision.device)


# --------------------------------------------------------------------------------------------
# TrimTokenator (the predecessor)
# --------------------------------------------------------------------------------------------
def trim_alignment(x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """``alpha_i = -(1/M) sum_t ||x_i - t||^2`` (the paper's L2 proxy of mutual information),
    expanded as ``-(||x_i||^2 - 2 x_i . mean(t) + mean ||t||^2)``."""
    cd = compute_dtype(x.dtype)
    x, t = x.to(cd), text.to(cd)
    return -((x * x).sum(1) - 2.0 * (x @ t.mean(0)) + (t * t).sum(1).mean())


def maxsum_rows(xh: torch.Tensor, b: int) -> list[int]:
    """Max-sum (expected pairwise cosine distance) greedy: first the token of smallest mean
    cosine to all, then repeatedly the token of largest summed distance to the picks. Ties to the
    lower index."""
    N = xh.shape[0]
    b = min(b, N)
    if b <= 0:
        return []
    sim = _Similarity(xh)
    colsum = sim.full.sum(1) if sim.full is not None else xh @ xh.sum(0)
    j = int(torch.argmin(colsum))
    picked = torch.zeros(N, dtype=torch.bool, device=xh.device)
    picked[j] = True
    rest = greedy_order(
        1.0 - sim.row(j), picked, b - 1, lambda i: 1.0 - sim.row(i), torch.add, summed=True
    )
    return [j] + rest


def trimtokenator_rows(
    x: torch.Tensor, b: int, text: Optional[torch.Tensor], stage1_ratio: float
) -> list[int]:
    """TrimTokenator on one image: alignment filter to ``max(b, round(stage1_ratio * m))`` rows
    (no text: no filter), then the max-sum greedy to ``b``."""
    m = x.shape[0]
    keep = torch.arange(m, device=x.device)
    if text is not None and text.shape[0]:
        n1 = max(b, min(m, int(math.floor(stage1_ratio * m + 0.5))))
        alpha = trim_alignment(x, text)
        keep = torch.sort(alpha, descending=True, stable=True).indices[:n1]
    picks = maxsum_rows(normalize(x[keep], EPS), b)
    return keep[picks].tolist()


def select_trimtokenator(vision, counts, text, budget, q, options) -> torch.Tensor:
    """TrimTokenator per image with proportional budgets."""
    done = _full_or_empty(vision, budget)
    if done is not None:
        return done
    s1 = float(options["stage1_ratio"])
    return _per_image(vision, counts, budget, q, lambda x, b, k: trimtokenator_rows(x, b, text, s1))


# --------------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------------
BASELINES = (
    Method(
        name="random",
        options={"seed": (0, C.int_at_least(0))},
        select=select_random,
        description="uniformly random tokens (seeded), minimums first",
    ),
    Method(
        name="uniform",
        options={},
        select=select_uniform,
        description="equal keep ratio per image, even stride inside each image",
    ),
    Method(
        name="divprune",
        options={},
        select=select_divprune,
        description="DivPrune max-min greedy per image, proportional budgets",
    ),
    Method(
        name="divprune_pooled",
        options={},
        select=select_divprune_pooled,
        description="DivPrune max-min greedy over all tokens of the request",
    ),
    Method(
        name="dart",
        options={
            "pivots": (4, C.int_at_least(1)),
            "text_pivots": (4, C.int_at_least(0)),
            "norm": ("l1", C.one_of("l1", "l2")),
        },
        select=select_dart,
        text_aware=True,
        description="DART duplication-aware pivots per image (input tokens, exact count)",
    ),
    Method(
        name="cdpruner",
        options={
            "negate_relevance": (False, C.is_bool),
            "per_image": (True, C.is_bool),
        },
        select=select_cdpruner,
        text_aware=True,
        description="CDPruner conditional DPP (fast greedy MAP), rank-safe",
    ),
    Method(
        name="trimtokenator",
        options={"stage1_ratio": (0.8, C.positive_fraction)},
        select=select_trimtokenator,
        text_aware=True,
        description="TrimTokenator: L2 text-alignment filter, then max-sum greedy per image",
    ),
)

for _m in BASELINES:
    register_method(_m)
