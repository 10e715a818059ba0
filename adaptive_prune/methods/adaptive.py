"""The adaptive method (docs/METHOD.md) composed from the ``adaptive_prune::*`` ops, stage by
stage.

One call serves a whole batch of requests: every op runs once for all requests (the ops take
two-level offsets), so a backend that implements an op as one kernel launch serves the batch in
one launch. The stages are plain functions that take the batch's :class:`Plan` (host facts,
built once) and return their results:

- :func:`stage0_scores`: redundancy scores and the per-image weights (one pass over the tokens);
- :func:`read_pool_sizes`: the one host read of the method (``rho`` per request, with the
  inputs' pending finiteness flags) and the pool sizes ``B1`` it decides;
- :func:`stage1_pool`: per-image budgets and the per-image greedy; the pool in (image, pick)
  order;
- :func:`stage2_select`: the global diversity filter and the final (Pareto) selection.

Host synchronisations (CUDA): exactly one, in :func:`read_pool_sizes`, because ``B1`` decides
``global_greedy``'s ``num_picks`` (a host list, the size of its output). Everything else stays
on the device or is known on the host: offsets are passed to the ops as CPU tensors (the
launchers read them for free), small host lists go to the device through pinned non-blocking
copies, the pool is built by a scatter instead of ``nonzero``, the reserved counts are known
from the minimums, and the final keep mask becomes rows by a stable sort of known size.
Optional paths add their own: ``tau`` (hard filter), ``selection="weighted"``. docs/kernels.md
lists them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from .. import _checks as C
from .._tensors import segment_ids, starts, to_device, true_positions
from ..ops._common import normalize
from . import Method, register_method

_op = torch.ops.adaptive_prune

# Option name -> (default, validator). Defaults marked (tune) in docs/METHOD.md; the quality
# benchmark (benchmarks/quality.py) decides them and the README records why.
OPTIONS = {
    "sigma": (0.05, C.SIGMA),  # multiplicity temperature
    "lam": (12.0, C.LAM),  # candidate-pool growth: B1 = B + ceil(B * lam * (1 - rho))
    "tau_a": (10.0, C.TAU_A),  # query-relevance softmax temperature
    "beta": (1.0, C.BETA),  # weight of query relevance in the per-image budget
    "gamma": (6.0, C.GAMMA),  # candidate count P = ceil(gamma * B)
    "tau": (None, C.cosine_threshold_or_none),  # optional hard duplicate filter
    "intra": ("maxmin", C.one_of("maxmin", "maxsum")),  # stage-1 greedy objective
    "align": ("mean", C.one_of("mean", "max")),  # text alignment reduction
    "inter_image": (True, C.is_bool),  # False: no multiplicity, no stage 2 (ablation)
    "selection": ("pareto", C.one_of("pareto", "weighted")),  # with text: Pareto or 0.5/0.5 sum
    # with text: share of the non-reserved slots filled straight from the global greedy order
    # (largest gains) before the Pareto selection fills the rest (0 = Pareto only)
    "diversity_floor": (0.5, C.unit_interval),
    "eps": (1e-6, C.EPS),  # norm floor
}


@dataclass
class Diagnostics:
    """What the adaptive method decided for one request (tensors on the input's device)."""

    d_intra: torch.Tensor  # [n] intra-image diversity
    mult: torch.Tensor  # [n] multiplicity (duplicates share a budget)
    att: torch.Tensor  # [n] query relevance (0 without text)
    budgets: torch.Tensor  # [n] stage-1 budgets b_k, sum == pool_size
    d_inter: float  # inter-image variation
    rho: float  # D_inter / (mean D_intra + D_inter)
    budget: int  # B, the final number of kept tokens
    pool_size: int  # B1, stage-1 picks
    candidates: int  # |C|, candidates of the final selection


@dataclass(frozen=True)
class Plan:
    """Host facts of a validated batch, built once and read by every stage.

    ``cu`` image offsets over tokens ``[n+1]``, ``ro`` request offsets over images ``[R+1]``,
    ``to`` text offsets ``[R+1]`` (None without text), ``budgets`` the kept count ``B_r`` per
    request, ``mins`` the per-image minimum ``min(q, m_k)``.
    """

    cu: tuple[int, ...]
    ro: tuple[int, ...]
    to: Optional[tuple[int, ...]]
    budgets: tuple[int, ...]
    mins: tuple[int, ...]

    @property
    def n(self) -> int:
        return len(self.cu) - 1

    @property
    def R(self) -> int:
        return len(self.ro) - 1

    @property
    def counts(self) -> list[int]:
        return [self.cu[k + 1] - self.cu[k] for k in range(self.n)]

    def tokens(self, r: int) -> int:
        """``N_r``, the tokens of request ``r``."""
        return self.cu[self.ro[r + 1]] - self.cu[self.ro[r]]

    def text_rows(self, r: int) -> int:
        return 0 if self.to is None else self.to[r + 1] - self.to[r]

    @property
    def has_text(self) -> bool:
        return any(self.text_rows(r) for r in range(self.R))

    def trivial(self, r: int) -> bool:
        """Request ``r`` keeps all or none of its tokens: no work."""
        return self.budgets[r] in (0, self.tokens(r))

    def image_request(self) -> list[int]:
        """The request of every image."""
        return [r for r in range(self.R) for _ in range(self.ro[r], self.ro[r + 1])]


@dataclass(frozen=True)
class Scores:
    """Stage 0 on the device: the ops' scores plus what the allocation derives from them."""

    d_intra: torch.Tensor  # [n]
    mult: torch.Tensor  # [n]
    att: torch.Tensor  # [n]
    d_inter: torch.Tensor  # [R]
    weights: torch.Tensor  # [n] allocation weights w_k
    rho: torch.Tensor  # [R] D_inter / (mean D_intra + D_inter + eps)


@dataclass(frozen=True)
class Pool:
    """Stage 1: per-image budgets ``b`` (summing to ``B1`` per request), every token's pick
    step ``rank`` inside its image (-1 if unpicked) and the pool ``rows`` in (image, pick)
    order; ``first`` is the pool position of every image's first pick."""

    b: torch.Tensor  # [n] int64
    rank: torch.Tensor  # [N] int64
    rows: torch.Tensor  # [K] int64, K = sum of the pool sizes
    first: torch.Tensor  # [n] int64
    image: torch.Tensor  # [N] int64, the image of every token


def stage0_scores(vision: torch.Tensor, text, plan: Plan, o: dict) -> Scores:
    """Redundancy scores (``budget_scores``) and the per-image allocation weights."""
    dev = vision.device
    R = plan.R
    has_text = text is not None and plan.has_text
    d_intra, mult, att, d_inter = _op.budget_scores(
        vision,
        torch.tensor(plan.cu, dtype=torch.int64),
        torch.tensor(plan.ro, dtype=torch.int64),
        text if has_text else None,
        torch.tensor(plan.to, dtype=torch.int64) if has_text else None,
        float(o["sigma"]),
        float(o["tau_a"]),
        float(o["eps"]),
    )
    m = to_device(plan.counts, dev, d_intra.dtype)
    live = m > 0
    if not o["inter_image"]:
        mult = live.to(mult.dtype)
    img_req = to_device(plan.image_request(), dev)
    # per-request sums over the images by segment_reduce (a sequential sum in image order, as
    # index_add_ on the CPU); Inductor's CPU code generation fails on an index_add_ into [R]
    per_req = to_device([plan.ro[r + 1] - plan.ro[r] for r in range(R)], dev)
    n_live = torch.segment_reduce(live.to(m.dtype), "sum", lengths=per_req, unsafe=True)
    weights = m * (d_intra + 1e-3) / mult.clamp_min(1e-12)
    weights = weights * (1.0 + float(o["beta"]) * n_live[img_req] * att)
    weights = torch.where(live, weights, torch.zeros_like(weights))
    intra_sum = torch.segment_reduce(d_intra * live, "sum", lengths=per_req, unsafe=True)
    mean_intra = intra_sum / n_live.clamp_min(1)
    rho = d_inter / (mean_intra + d_inter + float(o["eps"]))
    return Scores(d_intra, mult, att, d_inter, weights, rho)


def read_pool_sizes(
    scores: Scores, plan: Plan, o: dict, finite: Optional[C.FiniteChecks]
) -> tuple[list[int], list[float], list[float]]:
    """The method's one host read: ``rho`` and ``D_inter`` per request, with the inputs'
    pending finiteness flags (raised here, before anything loops on the values). Returns the
    pool sizes ``B1 = min(N_r, B + ceil(B * lam * (1 - rho)))`` (``B`` for trivial requests and
    without the inter-image stage), ``rho`` and ``D_inter``."""
    R = plan.R
    rho_t = scores.rho
    pending = finite.flags(rho_t.dtype, rho_t.device) if finite is not None else rho_t[:0]
    host = torch.cat([rho_t, scores.d_inter, pending]).tolist()
    if finite is not None:
        finite.verify(host[2 * R :])
    rho, d_inter = host[:R], host[R : 2 * R]
    sizes = []
    for r in range(R):
        B = plan.budgets[r]
        if plan.trivial(r) or not o["inter_image"]:
            sizes.append(B)
        else:
            grow = math.ceil(B * float(o["lam"]) * (1.0 - rho[r]) - 1e-9)
            sizes.append(min(plan.tokens(r), B + max(grow, 0)))
    return sizes, rho, d_inter


def stage1_pool(
    vision: torch.Tensor, plan: Plan, weights: torch.Tensor, pool_sizes: list[int], o: dict
) -> Pool:
    """Per-image budgets by water-filling (``allocate_budgets``), the per-image greedy
    (``greedy_select``), and the pool of every non-trivial request in (image, pick) order."""
    dev = vision.device
    R, N = plan.R, vision.shape[0]
    counts = plan.counts
    totals = [0 if plan.trivial(r) else pool_sizes[r] for r in range(R)]
    mins = [0 if plan.trivial(r) else plan.mins[k] for k, r in enumerate(plan.image_request())]
    b = _op.allocate_budgets(
        weights,
        torch.tensor(counts, dtype=torch.int64),
        torch.tensor(mins, dtype=torch.int64),
        torch.tensor(plan.ro, dtype=torch.int64),
        torch.tensor(totals, dtype=torch.int64),
    )
    rank = _op.greedy_select(
        vision, torch.tensor(plan.cu, dtype=torch.int64), b, str(o["intra"]), float(o["eps"])
    )
    # image k's picks occupy pool positions first[k] + rank (a scatter of known size K;
    # unpicked tokens land in distinct dummy slots after K). allocate_budgets's contract
    # (sum b == totals, checked by the op) makes the scatter write every slot; the buffer is
    # filled anyway, so no path can ever read uninitialised memory.
    K = sum(totals)
    image = segment_ids(counts, dev, N)
    first = torch.cumsum(b, 0) - b
    tok = torch.arange(N, device=dev)
    slot = torch.where(rank >= 0, first[image] + rank, K + tok)
    rows = torch.full((K + N,), -1, dtype=torch.int64, device=dev).scatter_(0, slot, tok)[:K]
    return Pool(b, rank, rows, first, image)


def stage2_select(
    vision: torch.Tensor, text, plan: Plan, pool: Pool, pool_sizes: list[int], o: dict
) -> tuple[list[torch.Tensor], list[int]]:
    """Global diversity filter (``global_greedy`` over each pool, from the reserved tokens) and
    the final selection of the non-trivial requests. Returns the kept rows (in parts) and the
    number of candidates ``|C|`` of every request (0 for trivial ones)."""
    dev = vision.device
    R = plan.R
    eps = float(o["eps"])
    live = [r for r in range(R) if not plan.trivial(r)]
    pool_off = starts([0 if plan.trivial(r) else pool_sizes[r] for r in range(R)])
    rows_img = pool.image[pool.rows]
    reserved = pool.rank[pool.rows] < to_device(list(plan.mins), dev)[rows_img]
    # every image keeps its first min(q, m_k) picks (b_k >= that): the counts are known here
    n_res = [0] * R
    for r in live:
        n_res[r] = sum(plan.mins[plan.ro[r] : plan.ro[r + 1]])
        if n_res[r] == 0:
            # q = 0: start from the first pick of the largest b_k (torch.argmax: first maximum)
            k = (plan.ro[r] + torch.argmax(pool.b[plan.ro[r] : plan.ro[r + 1]])).reshape(1)
            reserved.index_fill_(0, pool.first.index_select(0, k), True)
            n_res[r] = 1
    picks = [0] * R
    for r in live:
        B = plan.budgets[r]
        P = min(pool_sizes[r], max(B, math.ceil(float(o["gamma"]) * B - 1e-9)))
        picks[r] = max(P, n_res[r])
    order, gains = _op.global_greedy(
        vision, pool.rows, torch.tensor(pool_off, dtype=torch.int64), reserved, picks, eps
    )
    ord_off = starts(picks)
    out: list[torch.Tensor] = []
    n_cand = [0] * R
    pareto: list[tuple[int, torch.Tensor, torch.Tensor, int]] = []  # (r, rows, gains, k)
    for r in live:
        seg = order[ord_off[r] : ord_off[r + 1]]
        g = gains[ord_off[r] : ord_off[r + 1]]
        nr, B = n_res[r], plan.budgets[r]
        if o["tau"] is not None:
            keep = _hard_filter(vision, pool.rows[seg], rows_img[seg], nr, B, float(o["tau"]), eps)
            seg, g = seg[keep], g[keep]
        n_cand[r] = int(seg.numel())
        rows = pool.rows[seg]
        out.append(rows[:nr])
        if text is not None and plan.text_rows(r) and B > nr:
            # diversity floor: the first ceil(kappa * (B - nr)) greedy picks are kept outright
            nf = min(B - nr, math.ceil(float(o["diversity_floor"]) * (B - nr) - 1e-9))
            out.append(rows[nr : nr + nf])
            if B > nr + nf:
                pareto.append((r, rows[nr + nf :], g[nr + nf :], B - nr - nf))
        else:
            out.append(rows[nr:B])
    if pareto:
        out.append(_final_selection(vision, text, plan, pareto, o))
    return out, n_cand


def _final_selection(vision, text, plan: Plan, parts, o: dict) -> torch.Tensor:
    """Text alignment of the remaining candidates and the Pareto (or weighted) cut to exactly
    the slots left of every request."""
    rows = torch.cat([p[1] for p in parts])
    g = torch.cat([p[2] for p in parts])
    ks = [p[3] for p in parts]
    off = starts([p[1].numel() for p in parts])
    off_t = torch.tensor(off, dtype=torch.int64)
    # token_alignment wants contiguous text segments: gather the requests' text rows
    to = plan.to
    txt = torch.cat([text[to[r] : to[r + 1]] for r, *_ in parts])
    txt_off = torch.tensor(starts([to[r + 1] - to[r] for r, *_ in parts]), dtype=torch.int64)
    a = _op.token_alignment(vision, rows, off_t, txt, txt_off, str(o["align"]), float(o["eps"]))
    if o["selection"] == "pareto":
        keep = _op.pareto_select(g, a, off_t, ks)
    else:
        keep = _weighted_select(g, a, off, ks)
    return rows[true_positions(keep, sum(ks))]


def run_adaptive(
    vision: torch.Tensor,
    cu: list[int],
    ro: list[int],
    text: Optional[torch.Tensor],
    to: Optional[list[int]],
    budgets: list[int],
    q: int,
    o: dict,
    want_diag: bool,
    finite: Optional[C.FiniteChecks] = None,
) -> tuple[torch.Tensor, Optional[list[Diagnostics]]]:
    """Run the method on a validated batch. Returns the kept global rows (sorted) and, with
    ``want_diag``, the diagnostics of every request.

    ``cu``/``ro``/``to`` are the host copies of the image, request and text offsets; ``budgets``
    the per-request ``B``; ``q`` the per-image minimum. ``finite``: the caller's pending
    finiteness checks of the inputs, read with the method's one host read.
    """
    counts = [cu[k + 1] - cu[k] for k in range(len(cu) - 1)]
    plan = Plan(
        tuple(cu),
        tuple(ro),
        tuple(to) if to is not None else None,
        tuple(budgets),
        tuple(min(q, c) for c in counts),
    )
    dev = vision.device
    scores = stage0_scores(vision, text, plan, o)
    pool_sizes, rho, d_inter = read_pool_sizes(scores, plan, o, finite)
    pool = stage1_pool(vision, plan, scores.weights, pool_sizes, o)

    kept_parts: list[torch.Tensor] = []
    for r in range(plan.R):  # trivial requests: everything or nothing
        if plan.trivial(r) and budgets[r]:
            kept_parts.append(torch.arange(cu[ro[r]], cu[ro[r + 1]], device=dev))
    n_cand = [budgets[r] if plan.trivial(r) else 0 for r in range(plan.R)]
    if not o["inter_image"]:
        kept_parts.append(pool.rows)
        n_cand = list(pool_sizes)
    elif pool.rows.numel():
        parts, cand = stage2_select(vision, text, plan, pool, pool_sizes, o)
        kept_parts += parts
        n_cand = [n_cand[r] if plan.trivial(r) else cand[r] for r in range(plan.R)]
    kept = torch.cat(kept_parts) if kept_parts else torch.zeros(0, dtype=torch.int64, device=dev)
    kept = torch.sort(kept).values
    if not want_diag:
        return kept, None
    diags = []
    for r in range(plan.R):
        k0, k1 = ro[r], ro[r + 1]
        if plan.trivial(r):
            bud = to_device(counts[k0:k1], dev) * (budgets[r] > 0)
        else:
            bud = pool.b[k0:k1]
        diags.append(
            Diagnostics(
                d_intra=scores.d_intra[k0:k1],
                mult=scores.mult[k0:k1],
                att=scores.att[k0:k1],
                budgets=bud,
                d_inter=float(d_inter[r]),
                rho=float(rho[r]),
                budget=budgets[r],
                pool_size=pool_sizes[r],
                candidates=n_cand[r],
            )
        )
    return kept, diags


def _hard_filter(vision, rows, imgs, n_res, B, tau, eps) -> torch.Tensor:
    """Drop non-reserved candidates whose cosine to a candidate of an earlier image exceeds
    ``tau``, latest greedy position first, never below ``B`` candidates."""
    xh = normalize(vision[rows], eps)
    sim = xh @ xh.T
    earlier = imgs[None, :] < imgs[:, None]
    dup = ((sim > tau) & earlier).any(dim=1)
    dup[:n_res] = False
    keep = torch.ones(rows.numel(), dtype=torch.bool, device=rows.device)
    budget_to_drop = rows.numel() - B
    for i in reversed(torch.nonzero(dup).flatten().tolist()):
        if budget_to_drop <= 0:
            break
        keep[i] = False
        budget_to_drop -= 1
    return keep


def _weighted_select(g, a, off, k) -> torch.Tensor:
    """Ablation: equal-weight sum of min-max normalised gain and alignment, top-k per segment,
    ties to the earlier greedy position."""
    keep = torch.zeros(g.numel(), dtype=torch.bool, device=g.device)
    for r in range(len(off) - 1):
        gs, as_ = g[off[r] : off[r + 1]].double(), a[off[r] : off[r + 1]].double()

        def mm(v):
            span = v.max() - v.min()
            return (v - v.min()) / span if float(span) > 0 else torch.zeros_like(v)

        score = 0.5 * mm(gs) + 0.5 * mm(as_)
        top = torch.argsort(-score, stable=True)[: k[r]]
        keep[off[r] + top] = True
    return keep


register_method(
    Method(
        name="adaptive",
        options=OPTIONS,
        batched=run_adaptive,
        text_aware=True,
        description="content-adaptive per-image budgets, intra-image greedy, global diversity "
        "filter and text-aware Pareto selection (TrimTokenator-LC)",
    )
)
