"""The adaptive method (docs/METHOD.md) composed from the ``adaptive_prune::*`` ops.

One call serves a whole batch of requests: every op below runs once for all requests (the ops
take two-level offsets), so a backend that implements an op as one kernel launch serves the
batch in one launch.

Host synchronisations (CUDA): exactly one, reading ``rho`` (with ``D_inter``) after stage 0,
because the pool sizes ``B1`` decide ``global_greedy``'s ``num_picks`` (a host list, the size
of its output). Everything else stays on the device or is known on the host: offsets are passed
to the ops as CPU tensors (the launchers read them for free), small host lists go to the
device through pinned non-blocking copies (:func:`_dev`; a pageable ``torch.tensor(...,
device="cuda")`` synchronises), the pool is built by a scatter instead of ``nonzero``, the
reserved counts are known from ``min_per_image``, and the final keep mask is turned into rows
by a stable sort of known size. Optional paths add their own: ``tau`` (hard filter),
``selection="weighted"``, diagnostics (none beyond the one above). docs/kernels.md lists them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from . import _checks as C
from . import ops
from .methods import Method, register_method

# Option name -> (default, validator). Defaults marked (tune) in docs/METHOD.md; the quality
# benchmark (benchmarks/quality.py) decides them and the README records why.
OPTIONS = {
    "sigma": (0.05, C.positive),  # multiplicity temperature
    "lam": (12.0, C.non_negative),  # candidate-pool growth: B1 = B + ceil(B * lam * (1 - rho))
    "tau_a": (10.0, C.positive),  # query-relevance softmax temperature
    "beta": (1.0, C.non_negative),  # weight of query relevance in the per-image budget
    "gamma": (6.0, C.at_least_one),  # candidate count P = ceil(gamma * B)
    "tau": (None, C.cosine_threshold_or_none),  # optional hard duplicate filter
    "intra": ("maxmin", C.one_of("maxmin", "maxsum")),  # stage-1 greedy objective
    "align": ("mean", C.one_of("mean", "max")),  # text alignment reduction
    "inter_image": (True, C.is_bool),  # False: no multiplicity, no stage 2 (ablation)
    "selection": ("pareto", C.one_of("pareto", "weighted")),  # with text: Pareto or 0.5/0.5 sum
    # with text: share of the non-reserved slots filled straight from the global greedy order
    # (largest gains) before the Pareto selection fills the rest (0 = Pareto only)
    "diversity_floor": (0.5, C.unit_interval),
    "eps": (1e-6, C.positive),  # norm floor
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


def _starts(vals: list[int]) -> list[int]:
    out = [0]
    for v in vals:
        out.append(out[-1] + v)
    return out


def _dev(values: list, dev: torch.device, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """A host list on ``dev`` without a host synchronisation (pinned, non-blocking on CUDA)."""
    t = torch.tensor(values, dtype=dtype)
    if dev.type == "cuda":
        return t.pin_memory().to(dev, non_blocking=True)
    return t.to(dev)


def _true_positions(mask: torch.Tensor, count: int) -> torch.Tensor:
    """Positions of the ``count`` True entries of ``mask``, ascending, without a host sync."""
    if mask.device.type == "cpu":
        return torch.nonzero(mask).flatten()
    return torch.argsort((~mask).to(torch.uint8), stable=True)[:count]


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
    """Run the method on a validated batch. Returns the kept global rows (sorted) and diagnostics.

    ``cu``/``ro``/``to`` are the host copies of the image, request and text offsets; ``budgets``
    the per-request ``B``. ``finite``: the caller's pending finiteness checks of the inputs,
    read with this function's one host read (after stage 0's scores, before anything that
    loops on the values) and raised there.
    """
    dev = vision.device
    n, R = len(cu) - 1, len(ro) - 1
    counts = [cu[k + 1] - cu[k] for k in range(n)]
    n_req = [cu[ro[r + 1]] - cu[ro[r]] for r in range(R)]
    text_rows = [to[r + 1] - to[r] for r in range(R)] if to is not None else [0] * R
    has_text = text is not None and any(text_rows)
    idx = torch.tensor
    # offsets stay on the CPU: every backend reads them on the host, so no sync is needed
    cu_t = idx(cu, dtype=torch.int64)
    ro_t = idx(ro, dtype=torch.int64)
    to_t = idx(to, dtype=torch.int64) if has_text else None
    eps = float(o["eps"])

    # ---- stage 0 ------------------------------------------------------------------------
    d_intra, mult, att, d_inter = ops.budget_scores(
        vision,
        cu_t,
        ro_t,
        text if has_text else None,
        to_t,
        float(o["sigma"]),
        float(o["tau_a"]),
        eps,
    )
    m = _dev(counts, dev, d_intra.dtype)
    live = m > 0
    if not o["inter_image"]:
        mult = live.to(mult.dtype)
    img_req = _dev([r for r in range(R) for _ in range(ro[r], ro[r + 1])], dev)
    n_live = torch.zeros(R, dtype=m.dtype, device=dev).index_add_(0, img_req, live.to(m.dtype))
    weights = m * (d_intra + 1e-3) / mult.clamp_min(1e-12)
    weights = weights * (1.0 + float(o["beta"]) * n_live[img_req] * att)
    weights = torch.where(live, weights, torch.zeros_like(weights))

    # ---- pool sizes B1 (host: one small transfer) ---------------------------------------
    intra_sum = torch.zeros(R, dtype=m.dtype, device=dev).index_add_(0, img_req, d_intra * live)
    mean_intra = intra_sum / n_live.clamp_min(1)
    rho_t = d_inter / (mean_intra + d_inter + eps)
    pending = finite.flags(rho_t.dtype, dev) if finite is not None else rho_t[:0]
    host = torch.cat([rho_t, d_inter, pending]).tolist()  # the one host sync of this function
    if finite is not None:
        finite.verify(host[2 * R :])
    rho, d_inter_host = host[:R], host[R : 2 * R]
    trivial = [budgets[r] in (0, n_req[r]) for r in range(R)]
    pool_sizes = []
    for r in range(R):
        B = budgets[r]
        if trivial[r] or not o["inter_image"]:
            pool_sizes.append(B)
        else:
            grow = math.ceil(B * float(o["lam"]) * (1.0 - rho[r]) - 1e-9)
            pool_sizes.append(min(n_req[r], B + max(grow, 0)))

    # ---- allocation + stage 1 -----------------------------------------------------------
    mins = [min(q, c) for c in counts]
    alloc_tot = [0 if trivial[r] else pool_sizes[r] for r in range(R)]
    alloc_min = [0 if trivial[r] else mins[k] for r in range(R) for k in range(ro[r], ro[r + 1])]
    b = ops.allocate_budgets(
        weights,
        idx(counts, dtype=torch.int64),
        idx(alloc_min, dtype=torch.int64),
        ro_t,
        idx(alloc_tot, dtype=torch.int64),
    )
    rank = ops.greedy_select(vision, cu_t, b, str(o["intra"]), eps)

    kept_parts: list[torch.Tensor] = []
    for r in range(R):  # trivial requests: everything or nothing
        if trivial[r] and budgets[r]:
            kept_parts.append(torch.arange(cu[ro[r]], cu[ro[r + 1]], device=dev))

    # pool in (image, pick order): image k's picks occupy positions cumb[k] + rank (a scatter
    # of known size K = sum b; unpicked tokens land in distinct dummy slots after K)
    N = vision.shape[0]
    K = sum(alloc_tot)
    img = torch.repeat_interleave(torch.arange(n, device=dev), _dev(counts, dev), output_size=N)
    cumb = torch.cumsum(b, 0) - b
    tok = torch.arange(N, device=dev)
    slot = torch.where(rank >= 0, cumb[img] + rank, K + tok)
    pool = torch.empty(K + N, dtype=torch.int64, device=dev).scatter_(0, slot, tok)[:K]
    n_cand = [budgets[r] if trivial[r] else 0 for r in range(R)]

    if not o["inter_image"]:
        kept_parts.append(pool)
        n_cand = list(pool_sizes)
    elif K:
        kept_parts += _stage2(
            vision,
            text,
            to,
            pool,
            (b, cumb),
            mins,
            ro,
            budgets,
            pool_sizes,
            trivial,
            has_text,
            text_rows,
            rank,
            img,
            o,
            n_cand,
        )

    kept = torch.cat(kept_parts) if kept_parts else torch.zeros(0, dtype=torch.int64, device=dev)
    kept = torch.sort(kept).values

    diags = None
    if want_diag:
        diags = []
        for r in range(R):
            k0, k1 = ro[r], ro[r + 1]
            bud = b[k0:k1] if not trivial[r] else (_dev(counts[k0:k1], dev) * (budgets[r] > 0))
            diags.append(
                Diagnostics(
                    d_intra=d_intra[k0:k1],
                    mult=mult[k0:k1],
                    att=att[k0:k1],
                    budgets=bud,
                    d_inter=float(d_inter_host[r]),
                    rho=float(rho[r]),
                    budget=budgets[r],
                    pool_size=pool_sizes[r],
                    candidates=n_cand[r],
                )
            )
    return kept, diags


def _stage2(
    vision,
    text,
    to,
    pool,
    b_cumb,
    mins,
    ro,
    budgets,
    pool_sizes,
    trivial,
    has_text,
    text_rows,
    rank,
    img,
    o,
    n_cand,
) -> list[torch.Tensor]:
    """Global diversity filter and final selection for the non-trivial requests."""
    dev = vision.device
    R = len(ro) - 1
    eps = float(o["eps"])
    pool_off = _starts([0 if trivial[r] else pool_sizes[r] for r in range(R)])
    b, img_start = b_cumb  # budgets and pool position of every image's first pick (device)
    reserved = rank[pool] < _dev(mins, dev)[img[pool]]
    # every image keeps its first min(q, m_k) picks (b_k >= that): the counts are known here
    n_res = [0 if trivial[r] else sum(mins[ro[r] : ro[r + 1]]) for r in range(R)]
    for r in range(R):
        if trivial[r] or n_res[r]:
            continue
        # q = 0: start from the first pick of the largest b_k (torch.argmax: first maximum)
        k = (ro[r] + torch.argmax(b[ro[r] : ro[r + 1]])).reshape(1)
        reserved.index_fill_(0, img_start.index_select(0, k), True)
        n_res[r] = 1
    picks = []
    for r in range(R):
        B = budgets[r]
        P = 0 if trivial[r] else min(pool_sizes[r], max(B, math.ceil(float(o["gamma"]) * B - 1e-9)))
        picks.append(max(P, n_res[r]))
    order, gains = ops.global_greedy(
        vision, pool, torch.tensor(pool_off, dtype=torch.int64), reserved, picks, eps
    )
    ord_off = _starts(picks)
    out, sel_rows, sel_gain, sel_off, sel_k, sel_req = [], [], [], [0], [], []
    for r in range(R):
        if trivial[r]:
            continue
        seg = order[ord_off[r] : ord_off[r + 1]]
        g = gains[ord_off[r] : ord_off[r + 1]]
        nr, B = n_res[r], budgets[r]
        if o["tau"] is not None:
            keep_c = _hard_filter(vision, pool[seg], img[pool[seg]], nr, B, float(o["tau"]), eps)
            seg, g = seg[keep_c], g[keep_c]
        n_cand[r] = int(seg.numel())
        rows = pool[seg]
        out.append(rows[:nr])
        if has_text and text_rows[r] and B > nr:
            # diversity floor: the first ceil(kappa * (B - nr)) greedy picks are kept outright
            nf = min(B - nr, math.ceil(float(o["diversity_floor"]) * (B - nr) - 1e-9))
            out.append(rows[nr : nr + nf])
            if B > nr + nf:
                sel_rows.append(rows[nr + nf :])
                sel_gain.append(g[nr + nf :])
                sel_off.append(sel_off[-1] + rows.numel() - nr - nf)
                sel_k.append(B - nr - nf)
                sel_req.append(r)
        else:
            out.append(rows[nr:B])
    if sel_rows:
        rows = torch.cat(sel_rows)
        # token_alignment wants contiguous text segments: gather the requests' text rows
        txt = torch.cat([text[to[r] : to[r + 1]] for r in sel_req])
        txt_off = _starts([to[r + 1] - to[r] for r in sel_req])
        off_t = torch.tensor(sel_off, dtype=torch.int64)
        a = ops.token_alignment(
            vision, rows, off_t, txt, torch.tensor(txt_off, dtype=torch.int64), str(o["align"]), eps
        )
        g = torch.cat(sel_gain)
        if o["selection"] == "pareto":
            keep = ops.pareto_select(g, a, off_t, sel_k)
        else:
            keep = _weighted_select(g, a, sel_off, sel_k)
        out.append(rows[_true_positions(keep, sum(sel_k))])
    return out


def _hard_filter(vision, rows, imgs, n_res, B, tau, eps) -> torch.Tensor:
    """Drop non-reserved candidates whose cosine to a candidate of an earlier image exceeds
    ``tau``, latest greedy position first, never below ``B`` candidates."""
    from .reference import normalize

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
