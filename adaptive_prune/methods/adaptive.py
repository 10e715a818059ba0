"""The adaptive method (docs/METHOD.md) composed from the ``adaptive_prune::*`` ops, stage by
stage.

One call serves a whole batch of requests: every op runs once for all requests (the ops take
two-level offsets), so a backend that implements an op as one kernel launch serves the batch in
one launch. The stages are plain functions that take the batch's :class:`Plan` (host facts,
built once) and return their results:

- :func:`stage0_scores`: redundancy scores, the per-image weights and the image similarity
  (one pass over the tokens);
- :func:`read_host`: the one host read of the method (``rho``, the weights and the image
  similarities per request, with the inputs' pending finiteness flags) and what it decides on
  the host: the pool sizes ``B1``, the per-image pool budgets, the groups of similar images
  and every group's share of ``B`` (a :class:`Layout`);
- :func:`stage1_pool`: the per-image greedy and the pool in (group, image, pick) order;
- :func:`stage2_select`: the global diversity chain inside every group, the final (Pareto)
  selection with text, and the coverage refinement.

Host synchronisations (CUDA): exactly one, in :func:`read_host`: the group budgets decide
``global_greedy``'s ``num_picks`` (a host list, the size of its output). Everything else stays
on the device or is known on the host. Optional paths add their own: ``tau`` (hard filter),
``selection="weighted"``. docs/kernels.md lists them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from .. import _checks as C
from .._tensors import segment_ids, starts, to_device, true_positions
from ..backends import call_scope
from ..ops._common import band_snap, normalize
from . import Method, register_method

_op = torch.ops.adaptive_prune

# Option name -> (default, validator). Defaults marked (tune) in docs/METHOD.md; the quality
# benchmark (benchmarks/quality.py) decides them and the README records why.
OPTIONS = {
    "sigma": (0.05, C.SIGMA),  # multiplicity temperature
    # candidate-pool growth: B1 = min(N, B + ceil(B * lam * (1 - rho))); 1e6: every token
    "lam": (1e6, C.LAM),
    "tau_a": (10.0, C.TAU_A),  # query-relevance softmax temperature
    "beta": (1.0, C.BETA),  # weight of query relevance in the per-image budget
    # with text (or tau): the global chain runs to at most ceil(gamma * B) picks per request
    "gamma": (1.5, C.GAMMA),
    "tau": (None, C.cosine_threshold_or_none),  # optional hard duplicate filter
    "intra": ("maxmin", C.one_of("maxmin", "maxsum")),  # stage-1 greedy objective
    "align": ("mean", C.one_of("mean", "max")),  # text alignment reduction
    "inter_image": (True, C.is_bool),  # False: no multiplicity, no stage 2 (ablation)
    "selection": ("pareto", C.one_of("pareto", "weighted")),  # with text: Pareto or 0.5/0.5 sum
    # with text: share of the non-reserved slots filled straight from the global greedy order
    # (largest gains) before the Pareto selection fills the rest (0 = Pareto only)
    "diversity_floor": (0.5, C.unit_interval),
    # with text: best-aligned pool tokens off the chain offered to the Pareto cut, per slot
    "aligned": (1.0, C.non_negative),
    # images whose descriptors are within this cosine distance share a global chain
    "group_dist": (0.15, C.non_negative),
    "group_size": (4, C.int_at_least(1)),  # at most this many images per group
    "refine": (1, C.int_at_least(0)),  # coverage refinement steps (k-medoids, k-centre kept)
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
    groups: int = 0  # groups of similar images (one global chain each)
    chain_length: int = 0  # dependent picks of the global chains (reserved tokens excluded)


@dataclass(frozen=True)
class Plan:
    """Host facts of a validated batch, built once and read by every stage.

    ``cu`` image offsets over tokens ``[n+1]``, ``ro`` request offsets over images ``[R+1]``,
    ``to`` text offsets ``[R+1]`` (None without text), ``budgets`` the kept count ``B_r`` per
    request, ``mins`` the per-image minimum ``min(q_k, m_k)``.
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
    sim: torch.Tensor  # [sum_r n_r^2] image similarities C_kl, request blocks, row-major
    align: torch.Tensor  # [N] every token's text alignment (0 without text)


@dataclass(frozen=True)
class Layout:
    """Host decisions of :func:`read_host`.

    ``pool_sizes`` ``B1`` per request; ``b`` the per-image pool budgets (sum ``B1``);
    ``groups`` the images of every group (live requests only, request order, then by lowest
    image); ``group_request`` the request of every group; ``chain`` every request's number of
    global-chain entries (reserved included; 0 for trivial requests).
    """

    pool_sizes: list[int]
    rho: list[float]
    d_inter: list[float]
    b: list[int]
    groups: list[list[int]]
    group_request: list[int]
    chain: list[int]

    def group_pool(self) -> list[int]:
        return [sum(self.b[k] for k in g) for g in self.groups]


@dataclass(frozen=True)
class Pool:
    """Stage 1: every token's pick step ``rank`` inside its image (-1 if unpicked) and the
    pool ``rows`` in (group, image, pick) order; ``first`` is the pool position of every
    image's first pool entry; ``reserved`` marks the pool positions that are always kept."""

    rank: torch.Tensor  # [N] int64
    rows: torch.Tensor  # [K] int64, K = sum of the pool sizes
    first: torch.Tensor  # [n] int64
    image: torch.Tensor  # [N] int64, the image of every token
    reserved: torch.Tensor  # [K] bool


def stage0_scores(vision: torch.Tensor, text, plan: Plan, o: dict) -> Scores:
    """Redundancy scores (``budget_scores``), the per-image allocation weights and the image
    similarities ``C_kl = mu_k . mu_l`` inside every request."""
    dev = vision.device
    R = plan.R
    has_text = text is not None and plan.has_text
    eps = float(o["eps"])
    d_intra, mult, att, d_inter, mu, align = _op.budget_scores(
        vision,
        torch.tensor(plan.cu, dtype=torch.int64),
        torch.tensor(plan.ro, dtype=torch.int64),
        text if has_text else None,
        torch.tensor(plan.to, dtype=torch.int64) if has_text else None,
        float(o["sigma"]),
        float(o["tau_a"]),
        eps,
        str(o["align"]),
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
    rho = d_inter / (mean_intra + d_inter + eps)
    sim = _image_similarity(mu, plan)
    return Scores(d_intra, mult, att, d_inter, weights, rho, sim, align)


def _image_similarity(mu: torch.Tensor, plan: Plan) -> torch.Tensor:
    """``C_kl = mu_k . mu_l`` (``mu [n, D]``: ``budget_scores``' image mean directions) for
    every pair of images of a non-trivial request with more than one image (flattened request
    blocks)."""
    blocks = [
        mu[plan.ro[r] : plan.ro[r + 1]]
        for r in range(plan.R)
        if plan.ro[r + 1] - plan.ro[r] > 1 and not plan.trivial(r)
    ]
    if not blocks:
        return mu.new_zeros(0)
    return torch.cat([(m @ m.T).flatten() for m in blocks])


def make_groups(sim: dict, images: list[int], dist: float, size: int) -> list[list[int]]:
    """Groups of similar images of one request (ours): in ascending image order, every image
    not yet grouped opens a group and takes, among the later ungrouped images ``l`` with
    ``1 - C_kl <= dist``, the most similar ones (ties to the lower index) until the group has
    ``size`` images. ``sim[(k, l)] = C_kl``. Returns each group's images, ascending."""
    done: set[int] = set()
    groups = []
    for k in images:
        if k in done:
            continue
        near = [ll for ll in images if ll > k and ll not in done and 1.0 - sim[k, ll] <= dist]
        near.sort(key=lambda ll: (-sim[k, ll], ll))
        g = sorted([k] + near[: size - 1])
        done.update(g)
        groups.append(g)
    return groups


def read_host(
    scores: Scores, plan: Plan, o: dict, finite: Optional[C.FiniteChecks], has_text: list[bool]
) -> Layout:
    """The method's one host read (``rho``, ``D_inter``, the weights, the image similarities
    and the inputs' pending finiteness flags, raised here before anything loops on the
    values) and the host decisions it allows:

    - pool sizes ``B1 = min(N_r, B + ceil(B * lam * (1 - rho)))`` (``B`` for trivial requests
      and without the inter-image stage);
    - per-image pool budgets ``b_k`` (``allocate_budgets`` over the images, total ``B1``);
    - groups of similar images (:func:`make_groups`);
    - the global chain's entries per request: ``B`` without text, ``min(B1, max(B, ceil(gamma
      * B)))`` with text (or ``tau``).
    """
    R, n = plan.R, plan.n
    pending = finite.flags(scores.rho.dtype, scores.rho.device) if finite is not None else None
    parts = [scores.rho, scores.d_inter, scores.weights.to(scores.rho.dtype), scores.sim]
    if pending is not None:
        parts.append(pending)
    host = torch.cat([p.to(scores.rho.dtype) for p in parts]).tolist()
    nsim = scores.sim.numel()
    if finite is not None:
        finite.verify(host[2 * R + n + nsim :])
    rho, d_inter = host[:R], host[R : 2 * R]
    w = host[2 * R : 2 * R + n]
    flat = host[2 * R + n : 2 * R + n + nsim]
    counts = plan.counts
    sizes = []
    for r in range(R):
        B = plan.budgets[r]
        if plan.trivial(r) or not o["inter_image"]:
            sizes.append(B)
        else:
            grow = math.ceil(B * float(o["lam"]) * (1.0 - rho[r]) - 1e-9)
            sizes.append(min(plan.tokens(r), B + max(grow, 0)))
    img_req = plan.image_request()
    totals = [0 if plan.trivial(r) else sizes[r] for r in range(R)]
    mins = [0 if plan.trivial(img_req[k]) else plan.mins[k] for k in range(n)]
    w32 = torch.tensor(w, dtype=torch.float32)
    b = _op.allocate_budgets(
        w32,
        torch.tensor(counts, dtype=torch.int64),
        torch.tensor(mins, dtype=torch.int64),
        torch.tensor(plan.ro, dtype=torch.int64),
        torch.tensor(totals, dtype=torch.int64),
    ).tolist()
    groups, g_req, sim_at = [], [], 0
    for r in range(R):
        k0, k1 = plan.ro[r], plan.ro[r + 1]
        live = [k for k in range(k0, k1) if counts[k] > 0]
        if plan.trivial(r):
            continue
        if not o["inter_image"]:
            gs = [[k] for k in live]  # no global stage: every image alone keeps its b_k
        elif k1 - k0 > 1:
            nr = k1 - k0
            sim = {
                (k, ll): flat[sim_at + (k - k0) * nr + (ll - k0)]
                for k in range(k0, k1)
                for ll in range(k0, k1)
            }
            sim_at += nr * nr
            gs = make_groups(sim, live, float(o["group_dist"]), int(o["group_size"]))
        else:
            gs = [live]
        groups += gs
        g_req += [r] * len(gs)
    chain = [0] * R
    for r in range(R):
        if plan.trivial(r) or not o["inter_image"]:
            continue
        B = plan.budgets[r]
        P = B
        if has_text[r] or o["tau"] is not None:
            P = min(sizes[r], max(B, math.ceil(float(o["gamma"]) * B - 1e-9)))
        chain[r] = P
    return Layout(sizes, rho, d_inter, b, groups, g_req, chain)


def stage1_pool(vision: torch.Tensor, plan: Plan, lay: Layout, o: dict) -> Pool:
    """The per-image greedy (``greedy_select``) and the pool of every non-trivial request in
    (group, image, pick) order. An image whose pool budget is all its tokens (``b_k = m_k``)
    computes only its first ``max(min(q_k, m_k), 1)`` picks; the rest of it follows them in
    token order."""
    dev = vision.device
    N, n = vision.shape[0], plan.n
    counts = plan.counts
    b = lay.b
    sel = [
        max(min(plan.mins[k], counts[k]), 1) if b[k] == counts[k] > 0 else b[k] for k in range(n)
    ]
    rank = _op.greedy_select(
        vision,
        torch.tensor(plan.cu, dtype=torch.int64),
        to_device(sel, dev),
        str(o["intra"]),
        float(o["eps"]),
    )
    # image order of the pool: the groups in turn (images of trivial requests hold nothing);
    # image k's picks occupy pool positions first[k] + rank, unpicked tokens land in distinct
    # dummy slots after K, and the buffer is filled, so no path reads uninitialised memory
    perm = [k for g in lay.groups for k in g]
    grouped = set(perm)
    perm += [k for k in range(n) if k not in grouped]
    first_h = [0] * n
    at = 0
    for k in perm:
        first_h[k] = at
        at += b[k] if k in grouped else 0
    K = at
    image = segment_ids(counts, dev, N)
    first = to_device(first_h, dev)
    tok = torch.arange(N, device=dev)
    ranked = rank >= 0
    full = to_device([b[k] == counts[k] > 0 and k in grouped for k in range(n)], dev, torch.bool)
    rest = (~ranked) & full[image]
    # index of every such token among its image's rest, in token order
    seen = torch.cumsum(rest.long(), 0)
    before = torch.cat([seen.new_zeros(1), seen])[to_device(list(plan.cu[:-1]), dev)]
    idx = seen - 1 - before[image]
    sel_t = to_device(sel, dev)
    slot = torch.where(ranked, first[image] + rank, K + tok)
    slot = torch.where(rest, first[image] + sel_t[image] + idx, slot)
    rows = torch.full((K + N,), -1, dtype=torch.int64, device=dev).scatter_(0, slot, tok)[:K]
    mins = to_device(list(plan.mins), dev)
    r_rank = rank[rows]
    reserved = (r_rank >= 0) & (r_rank < mins[image[rows]])
    return Pool(rank, rows, first, image, reserved)


def stage2_select(
    vision: torch.Tensor, text, plan: Plan, scores: Scores, lay: Layout, pool: Pool, o: dict
) -> tuple[list[torch.Tensor], list[int]]:
    """Global diversity chain (``global_greedy`` over each request's pool from its reserved
    tokens, tokens of different groups never covering each other), the final selection of the
    non-trivial requests and the coverage refinement (``refine_medoids``). Returns the kept
    rows (in parts) and the number of candidates of the final selection of every request (0
    for trivial ones)."""
    dev = vision.device
    R = plan.R
    eps = float(o["eps"])
    g_off = starts([sum(lay.b[k] for k in g) for g in lay.groups])
    p_off = starts([0 if plan.trivial(r) else lay.pool_sizes[r] for r in range(R)])
    order, gains, dist = _op.global_greedy(
        vision,
        pool.rows,
        torch.tensor(p_off, dtype=torch.int64),
        pool.reserved,
        lay.chain,
        eps,
        torch.tensor(g_off, dtype=torch.int64),
    )
    ch_off = starts(lay.chain)
    K = pool.rows.numel()
    keep = torch.zeros(K, dtype=torch.bool, device=dev)
    movable = torch.zeros(K, dtype=torch.bool, device=dev)
    n_cand = [0] * R
    text_req = []
    for r in range(R):
        if plan.trivial(r):
            continue
        B = plan.budgets[r]
        seg = order[ch_off[r] : ch_off[r + 1]]
        nr = _reserved_count(plan, r)
        n_cand[r] = int(seg.numel())
        if text is not None and plan.text_rows(r):
            text_req.append((r, nr))  # (tau applies to requests without text only)
        elif o["tau"] is None:  # the chain is the selection
            keep[seg] = True
            movable[seg] = True
        else:
            rows_img = pool.image[pool.rows[seg]]
            kf = _hard_filter(vision, pool.rows[seg], rows_img, nr, B, float(o["tau"]), eps)
            n_cand[r] = int(kf.sum())
            seg = seg[kf][:B]
            keep[seg] = True
            movable[seg] = True
    if text_req:
        _final_selection(vision, scores, plan, lay, pool, order, gains, dist, ch_off, text_req,
                         keep, movable, n_cand, o)  # fmt: skip
    if int(o["refine"]) > 0:
        keep = _op.refine_medoids(
            vision,
            pool.rows,
            torch.tensor(g_off, dtype=torch.int64),
            pool.image[pool.rows],
            keep,
            movable,
            int(o["refine"]),
            eps,
        )
    n_keep = sum(plan.budgets[r] for r in range(R) if not plan.trivial(r))
    return [pool.rows[true_positions(keep, n_keep)]], n_cand


def _reserved_count(plan: Plan, r: int) -> int:
    return sum(plan.mins[plan.ro[r] : plan.ro[r + 1]])


def _final_selection(
    vision, scores, plan, lay, pool, order, gains, dist, ch_off, text_req, keep, movable, n_cand, o
) -> None:
    """With text: the diversity floor (the first ``ceil(kappa * (B - reserved))`` chain picks),
    then the Pareto (or weighted) cut to exactly the slots left, over the rest of the chain and
    as many best-aligned pool tokens off the chain as there are slots. Writes ``keep`` and
    ``movable`` (reserved and floor tokens may move in the refinement, Pareto picks stay)."""
    dev = vision.device
    kappa = float(o["diversity_floor"])
    p_off = starts([0 if plan.trivial(r) else lay.pool_sizes[r] for r in range(plan.R)])
    parts = []  # (r, slots, floor end)
    for r, nr in text_req:
        B = plan.budgets[r]
        seg = order[ch_off[r] : ch_off[r + 1]]
        nf = min(B - nr, math.ceil(kappa * (B - nr) - 1e-9))
        keep[seg[: nr + nf]] = True
        movable[seg[: nr + nf]] = True
        if B > nr + nf:
            parts.append((r, B - nr - nf, nr + nf))
    if not parts:
        return
    # alignment of every pool token: budget_scores' per-token alignment (fp32, as
    # token_alignment gives it)
    a_pool = scores.align[pool.rows].float()
    cand_pos, cand_g, cand_a, ks, sizes = [], [], [], [], []
    for r, slots, f_end in parts:
        a0 = p_off[r]
        # alignments and gains within the tie band of a larger one count as equal (band_snap):
        # the ranking, the candidate order and the fronts below then do not depend on how a
        # backend rounded them (docs/METHOD.md, "Ties")
        ar = band_snap(a_pool[a0 : p_off[r + 1]])
        seg = order[ch_off[r] : ch_off[r + 1]]
        on_chain = torch.zeros(ar.numel(), dtype=torch.bool, device=dev)
        on_chain[seg - a0] = True
        # the chain's entries are distinct pool positions: the off-chain count is known on
        # the host, so the positions come without a host sync
        n_off = ar.numel() - seg.numel()
        off_loc = true_positions(~on_chain, n_off)
        n_al = min(math.ceil(float(o["aligned"]) * slots - 1e-9), n_off)
        top = torch.argsort(-ar[off_loc].double(), stable=True)[:n_al]
        al_pos = off_loc[top] + a0
        # an off-chain token's gain: global_greedy's dist (its running minimum where the chain
        # stopped); 0 where its group has no chain entry (dist +inf)
        al_gain = dist[al_pos]
        al_gain = torch.where(torch.isinf(al_gain), torch.zeros_like(al_gain), al_gain)
        c_pos = torch.cat([seg[f_end:], al_pos])
        c_gain = band_snap(torch.cat([gains[ch_off[r] + f_end : ch_off[r + 1]].float(), al_gain]))
        # candidates by gain, largest first (ties: chain before aligned, then list order)
        srt = torch.argsort(-c_gain.double(), stable=True)
        c_pos, c_gain = c_pos[srt], c_gain[srt]
        cand_pos.append(c_pos)
        cand_g.append(c_gain)
        cand_a.append(ar[c_pos - a0])
        ks.append(slots)
        sizes.append(int(c_pos.numel()))
        n_cand[r] = f_end + sizes[-1]
    c_pos, c_g, c_a = torch.cat(cand_pos), torch.cat(cand_g), torch.cat(cand_a)
    off = starts(sizes)
    if o["selection"] == "pareto":
        sel = _op.pareto_select(c_g, c_a, torch.tensor(off, dtype=torch.int64), ks)
    else:
        sel = _weighted_select(c_g, c_a, off, ks)
    keep[c_pos[true_positions(sel, sum(ks))]] = True


def run_adaptive(
    vision: torch.Tensor,
    cu: list[int],
    ro: list[int],
    text: Optional[torch.Tensor],
    to: Optional[list[int]],
    budgets: list[int],
    q,
    o: dict,
    want_diag: bool,
    finite: Optional[C.FiniteChecks] = None,
) -> tuple[torch.Tensor, Optional[list[Diagnostics]]]:
    """Run the method on a validated batch. Returns the kept global rows (sorted) and, with
    ``want_diag``, the diagnostics of every request.

    ``cu``/``ro``/``to`` are the host copies of the image, request and text offsets; ``budgets``
    the per-request ``B``; ``q`` the per-image minimum (an int, or one int per image).
    ``finite``: the caller's pending finiteness checks of the inputs, read with the method's
    one host read.
    """
    counts = [cu[k + 1] - cu[k] for k in range(len(cu) - 1)]
    qs = [q] * len(counts) if isinstance(q, int) else list(q)
    plan = Plan(
        tuple(cu),
        tuple(ro),
        tuple(to) if to is not None else None,
        tuple(budgets),
        tuple(min(a, c) for a, c in zip(qs, counts)),
    )
    dev = vision.device
    has_text = [text is not None and plan.text_rows(r) > 0 for r in range(plan.R)]
    with call_scope(dev):  # the backends' per-call caches (one pass of row norms on Triton)
        scores = stage0_scores(vision, text, plan, o)
        lay = read_host(scores, plan, o, finite, has_text)
        pool = stage1_pool(vision, plan, lay, o)

        kept_parts: list[torch.Tensor] = []
        for r in range(plan.R):  # trivial requests: everything or nothing
            if plan.trivial(r) and budgets[r]:
                kept_parts.append(torch.arange(cu[ro[r]], cu[ro[r + 1]], device=dev))
        n_cand = [budgets[r] if plan.trivial(r) else 0 for r in range(plan.R)]
        if not o["inter_image"]:
            kept_parts.append(pool.rows)
            n_cand = list(lay.pool_sizes)
        elif pool.rows.numel():
            parts, cand = stage2_select(vision, text, plan, scores, lay, pool, o)
            kept_parts += parts
            n_cand = [n_cand[r] if plan.trivial(r) else cand[r] for r in range(plan.R)]
    kept = torch.cat(kept_parts) if kept_parts else torch.zeros(0, dtype=torch.int64, device=dev)
    kept = torch.sort(kept).values
    if not want_diag:
        return kept, None
    diags = []
    for r in range(plan.R):
        k0, k1 = ro[r], ro[r + 1]
        gi = [i for i, x in enumerate(lay.group_request) if x == r]
        if plan.trivial(r):
            bud = to_device(counts[k0:k1], dev) * (budgets[r] > 0)
        else:
            bud = to_device(lay.b[k0:k1], dev)
        chain = max(lay.chain[r] - _reserved_count(plan, r), 0) if lay.chain[r] else 0
        diags.append(
            Diagnostics(
                d_intra=scores.d_intra[k0:k1],
                mult=scores.mult[k0:k1],
                att=scores.att[k0:k1],
                budgets=bud,
                d_inter=float(lay.d_inter[r]),
                rho=float(lay.rho[r]),
                budget=budgets[r],
                pool_size=lay.pool_sizes[r],
                candidates=n_cand[r],
                groups=len(gi),
                chain_length=chain,
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
