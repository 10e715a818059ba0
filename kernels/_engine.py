"""Row engine: the exact max-min greedy of both greedy ops with no similarity block, spread over
many programs, in rounds of several exact picks (docs/kernels.md, "Engine v2").

Segment ``g`` (an image in stage 1, a request's pool in stage 2) has ``K_g`` entries, entry
``i`` being row ``rows[off[g] + i]`` of ``x`` (or row ``off[g] + i`` without ``rows``). The
greedy keeps ``acc [K]``, the running minimum distance ``1 - cos`` of every entry to the picks
so far (``-inf`` once picked; ``+inf`` between entries of different groups ``gid``) and
repeatedly picks by the **band rule**: the lowest index among the unpicked entries with
``acc >= M - PICK_TIE`` (fp32), ``M`` the largest unpicked ``acc``; the gain is the pick's own
``acc``. The engine makes the same picks with the same gains as that one-pick-per-step loop:

- **Tiles** of ``TE`` entries (a multiple of ``L``) own their slice of ``acc``. Phase T of a
  round, for every tile of every unfinished segment: apply the picks of the previous round
  (``sel``, at most ``L``; the first call applies the initial list: stage 1's first pick,
  stage 2's reserved tokens) with ``L x L`` distance tiles computed on the fly by ``tl.dot``
  from ``x`` (``1 - (x_i . x_j) inv_i inv_j``, ``+inf`` across groups; no block is ever
  stored), then write the tile's ``L`` best entries in greedy order (``cand``: packed int64
  keys, value then lower index) and its ``(L+1)``-th best (``nxt``). Sub-tiles without a live
  entry, or (groups) sharing no group with the picks, are skipped.
- Phase W, one program per unfinished segment: merge the candidates of its tiles into the
  segment's ``L`` best (the window ``W``; ``tl.sort`` of ``MF x L`` keys, the running best
  and ``MF - 1`` tiles' candidates at a time, so a segment of ``T`` tiles takes
  ``ceil(T / (MF - 1))`` sorts in sequence) and the
  bound ``b`` = the best key outside ``W``: the best evicted candidate or any tile's ``nxt``.
  Every entry outside ``W`` has a key ``<= b`` (a tile's non-candidates lie below its ``nxt``).
  Then the ``L x L`` distance tile ``W x W`` (the same helper, so the same values as phase T
  computes for the same pairs) and the band rule inside the window: ``tau = M_W - PICK_TIE``
  and ``j`` = the lowest window index with ``loc >= tau``, accepted while the key ``(tau, j)``
  beats ``b``: then no entry outside ``W`` holds the maximum or lies in the band below ``j``
  (entries outside can only fall), so each accepted pick is exactly the one-at-a-time rule's
  next pick and its window distance is exactly its gain. If the round's first step is
  refused (the band reaches outside the window), one pick by a scan of the segment's ``acc``:
  the lowest index with ``acc >= M - PICK_TIE``. Every round makes at least one pick.

On a GPU ``_engine_persistent_kernel`` runs the whole loop in one launch of at most one program
per SM, phases separated by a device-wide barrier (an atomic counter). The Triton interpreter
runs programs one after another, where such a barrier would deadlock: there the launcher runs
one phase per launch (``_tiles_kernel``, ``_window_kernel``) with the same bodies.

Scratch: ``acc [Q]`` fp32, ``cand [T, L]`` int64, ``nxt [T]``, ``sel [n, L]`` and a few ``[n]``
vectors: ``O(Q + T L)``, never ``O(K^2)``. After the loop ``acc`` holds every unpicked entry's
final running-minimum distance (returned by the launchers on request).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._common import PICK_TIE, _locate, cdiv, empty, set_device
from ._maxmin import _key

NEG = tl.constexpr(-9223372036854775808)  # int64 min: "no candidate"
# PICK_TIE (kernels/_common.py): the pick band of every greedy step, the lowest index among the
# unpicked entries whose value is >= M - PICK_TIE (fp32), M the largest unpicked value; with
# M = +inf the band is the +inf entries.
SCAN = tl.constexpr(256)  # lanes of the fallback scan of a segment's acc (phase W)


@triton.jit
def _pack(v, i):
    """fp32 value and local index -> int64 key; keys order like the greedy (value descending,
    then index ascending) and are unique within a segment."""
    return (_key(v).to(tl.int64) << 32) + (0xFFFFFFFF - i.to(tl.int64))


@triton.jit
def _unpack_index(k):
    return 0xFFFFFFFF - (k & 0xFFFFFFFF)


@triton.jit
def _merge(top, c, L: tl.constexpr):
    """Keep the ``L`` largest of ``top [L] (sorted descending) + c [L]``; also return the
    largest key dropped."""
    s = tl.sort(tl.reshape(tl.join(top, c), (2 * L,)), descending=True)
    hi, lo = tl.split(tl.trans(tl.reshape(s, (2, L))))
    return hi, tl.max(lo, axis=0)


@triton.jit
def _dist_tile(
    x_ptr, r_e, m_e, inv_e, r_p, m_p, inv_p, D, stride_x,
    L: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """``[L, L]`` fp32: ``1 - cos`` of entry rows ``r_e`` (tile rows) against pick rows ``r_p``
    (tile columns). One helper for every pair, so a pair's distance is the same in both phases."""
    p_e = x_ptr + r_e[:, None] * stride_x
    p_p = x_ptr + r_p[:, None] * stride_x
    acc = tl.zeros((L, L), dtype=tl.float32)
    for k0 in range(0, D, BK):
        o_k = k0 + tl.arange(0, BK)
        m_k = o_k < D
        b_e = tl.load(p_e + o_k[None, :], mask=m_e[:, None] & m_k[None, :], other=0.0)
        b_p = tl.load(p_p + o_k[None, :], mask=m_p[:, None] & m_k[None, :], other=0.0)
        acc = tl.dot(b_e, tl.trans(b_p), acc, input_precision=PREC)
    return 1.0 - acc * inv_e[:, None] * inv_p[None, :]


@triton.jit
def _sketch_may_lower(
    sk_ptr, rr_ptr, sk_margin, gid_ptr, a, oe, m_e, jl, m_p, v,
    GROUPS: tl.constexpr, L: tl.constexpr, DP: tl.constexpr,
):  # fmt: skip
    """False when the sketch bound proves that no pick of the chunk ``jl`` lowers any live
    entry of the sub-tile ``oe`` (and none of them is a pick): ``cos(i, j) <= p_i . p_j + r_i
    r_j``, so ``d(i, j) >= 1 - ub - sk_margin >= v_i`` for every pair; the margin covers the
    fp32 rounding of the bound and of the exact distance, so skipping leaves ``acc`` bitwise
    unchanged."""
    o_d = tl.arange(0, DP)
    p_e = tl.load(sk_ptr + (a + oe)[:, None] * DP + o_d[None, :], mask=m_e[:, None], other=0.0)
    p_p = tl.load(sk_ptr + (a + jl)[:, None] * DP + o_d[None, :], mask=m_p[:, None], other=0.0)
    r_e = tl.load(rr_ptr + a + oe, mask=m_e, other=0.0)
    r_p = tl.load(rr_ptr + a + jl, mask=m_p, other=0.0)
    ub = tl.dot(p_e, tl.trans(p_p), input_precision="ieee") + r_e[:, None] * r_p[None, :]
    m_b = tl.broadcast_to(m_p[None, :], (L, L))
    if GROUPS:  # other groups are at +inf: never lowered
        g_e = tl.load(gid_ptr + a + oe, mask=m_e, other=-1)
        g_p = tl.load(gid_ptr + a + jl, mask=m_p, other=-2)
        m_b = m_b & (g_e[:, None] == g_p[None, :])
    lb = tl.min(tl.where(m_b, 1.0 - ub - sk_margin, float("inf")), axis=1)  # [L]
    hit = tl.max(((oe[:, None] == jl[None, :]) & m_p[None, :]).to(tl.int32), axis=1)
    lower = ((lb < v) & (v > float("-inf"))) | (hit > 0)
    return tl.max(lower.to(tl.int32), axis=0) > 0


@triton.jit
def _rows_of(rows_ptr, a, o, m, GATHER: tl.constexpr):
    if GATHER:
        return tl.load(rows_ptr + a + o, mask=m, other=0)
    return a + o.to(tl.int64)


@triton.jit
def _phase_tiles(
    i_p, n_p,  # this program, programs
    x_ptr, rows_ptr, gid_ptr, inv_ptr, acc_ptr, off_ptr, tcum_ptr, n_seg, n_tiles,
    lst_ptr, loff_ptr, lcnt_ptr, shift_ptr,  # INIT: initial pick lists (local = value - shift)
    sel_ptr, nsel_ptr, steps_ptr, done_ptr, cand_ptr, nxt_ptr, stat_ptr,
    sk_ptr, rr_ptr, sk_margin,  # SKETCH: [Q, DP] fp32 projections, [Q] residual norms
    D, stride_x,
    INIT: tl.constexpr, CAND: tl.constexpr, GATHER: tl.constexpr, GROUPS: tl.constexpr,
    STATS: tl.constexpr, SKETCH: tl.constexpr, DP: tl.constexpr,
    TE: tl.constexpr, L: tl.constexpr, BK: tl.constexpr, BLOCK_N: tl.constexpr,
    PREC: tl.constexpr,
):  # fmt: skip
    """Phase T over tiles ``i_p, i_p + n_p, ...`` (see the module docstring)."""
    ow = tl.arange(0, L)
    for t in range(i_p, n_tiles, n_p):
        g = _locate(tcum_ptr, n_seg, t, BLOCK_N)
        a = tl.load(off_ptr + g)
        K = tl.load(off_ptr + g + 1) - a
        e0 = (t - tl.load(tcum_ptr + g)) * TE
        if INIT:
            lp = lst_ptr + tl.load(loff_ptr + g)
            n = tl.load(lcnt_ptr + g)
            shift = tl.load(shift_ptr + g)
        else:
            lp = sel_ptr + g * L
            n = tl.load(nsel_ptr + g)
            shift = tl.zeros((), dtype=tl.int64)
        live_seg = tl.load(done_ptr + g) < tl.load(steps_ptr + g)
        top = tl.full((L,), NEG, tl.int64)
        nx = tl.full((), NEG, tl.int64)
        work = tl.zeros((), dtype=tl.int64)
        skipped = tl.zeros((), dtype=tl.int64)
        if (n > 0) | (CAND & live_seg) | INIT:
            for s0 in range(0, TE, L):
                oe = e0 + s0 + ow  # [L] local entries
                m_e = oe < K
                if INIT:
                    v = tl.where(m_e, float("inf"), float("-inf"))
                else:
                    v = tl.load(acc_ptr + a + oe, mask=m_e, other=float("-inf"))
                if (n > 0) & (tl.max((v > float("-inf")).to(tl.int32), axis=0) > 0):
                    r_e = _rows_of(rows_ptr, a, oe, m_e, GATHER)
                    inv_e = tl.load(inv_ptr + a + oe, mask=m_e, other=0.0)
                    if GROUPS:
                        g_e = tl.load(gid_ptr + a + oe, mask=m_e, other=-1)
                        g_lo = tl.min(tl.where(m_e, g_e, 0x7FFFFFFF), axis=0)
                        g_hi = tl.max(g_e, axis=0)
                    for c0 in range(0, n, L):  # the picks, L at a time
                        m_p = c0 + ow < n
                        jl = tl.load(lp + c0 + ow, mask=m_p, other=0) - shift
                        near = True
                        if GROUPS:  # groups are contiguous: a pick outside [g_lo, g_hi] is +inf
                            g_p = tl.load(gid_ptr + a + jl, mask=m_p, other=-2)
                            near = tl.max((m_p & (g_p >= g_lo) & (g_p <= g_hi)).to(tl.int32), 0) > 0
                        exact = near
                        if SKETCH:
                            exact = near & _sketch_may_lower(
                                sk_ptr, rr_ptr, sk_margin, gid_ptr, a, oe, m_e, jl, m_p, v,
                                GROUPS, L, DP,
                            )  # fmt: skip
                            skipped += tl.where(near & (not exact), L * L, 0)
                        if exact:
                            r_p = _rows_of(rows_ptr, a, jl, m_p, GATHER)
                            inv_p = tl.load(inv_ptr + a + jl, mask=m_p, other=0.0)
                            d = _dist_tile(x_ptr, r_e, m_e, inv_e, r_p, m_p, inv_p, D, stride_x,
                                           L, BK, PREC)  # fmt: skip
                            m_d = tl.broadcast_to(m_p[None, :], (L, L))
                            if GROUPS:  # tokens of different groups never cover each other
                                m_d = m_d & (g_e[:, None] == g_p[None, :])
                            d = tl.min(tl.where(m_d, d, float("inf")), axis=1)
                            hit = tl.max(((oe[:, None] == jl[None, :]) & m_p[None, :]).to(tl.int32),
                                         1)  # fmt: skip
                            v = tl.where(hit > 0, float("-inf"), tl.minimum(v, d))
                            work += L * L
                    tl.store(acc_ptr + a + oe, v, mask=m_e)
                elif INIT:
                    tl.store(acc_ptr + a + oe, v, mask=m_e)
                if CAND:
                    keys = tl.where(m_e & (v > float("-inf")), _pack(v, oe), NEG)
                    top, dropped = _merge(top, keys, L)
                    nx = tl.maximum(nx, dropped)
        if CAND & live_seg:
            tl.store(cand_ptr + t * L + ow, top)
            tl.store(nxt_ptr + t, nx)
        if STATS:
            tl.store(stat_ptr + t, tl.load(stat_ptr + t) + work)
            tl.store(stat_ptr + n_tiles + t, tl.load(stat_ptr + n_tiles + t) + skipped)


@triton.jit
def _phase_window(
    i_p, n_p,
    x_ptr, rows_ptr, gid_ptr, inv_ptr, acc_ptr, off_ptr, tcum_ptr, n_seg,
    sel_ptr, nsel_ptr, steps_ptr, done_ptr, cand_ptr, nxt_ptr,
    out_ptr, gain_ptr, obase_ptr, vbase_ptr, stat_ptr,
    D, stride_x,
    RANK: tl.constexpr, GATHER: tl.constexpr, GROUPS: tl.constexpr, STATS: tl.constexpr,
    L: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr, MF: tl.constexpr,
):  # fmt: skip
    """Phase W over segments ``i_p, i_p + n_p, ...``: the round's exact picks."""
    ow = tl.arange(0, L)
    for g in range(i_p, n_seg, n_p):
        done = tl.load(done_ptr + g)
        steps = tl.load(steps_ptr + g)
        n_acc = tl.zeros((), dtype=tl.int64)
        if done < steps:
            a = tl.load(off_ptr + g)
            top = tl.full((L,), NEG, tl.int64)
            bound = tl.full((), NEG, tl.int64)
            # the window: the L best of the tiles' candidates, MF - 1 tiles per sort of MF x L
            # keys (row 0 holds the running best; a descending sort viewed as [MF, L] has its
            # L best in row 0, the column maxima, and the best dropped key in the other rows)
            t_lo = tl.load(tcum_ptr + g)
            t_hi = tl.load(tcum_ptr + g + 1)
            o_r = tl.arange(0, MF)
            for t0 in range(t_lo, t_hi, MF - 1):
                t_r = t0 + o_r - 1  # [MF] the tile of every row (row 0: the running best)
                m_r = (o_r > 0) & (t_r < t_hi)
                ck = tl.load(cand_ptr + t_r[:, None] * L + ow[None, :], mask=m_r[:, None],
                             other=NEG)  # fmt: skip
                ck = tl.where(o_r[:, None] == 0, top[None, :], ck)
                srt = tl.reshape(tl.sort(tl.reshape(ck, (MF * L,)), descending=True), (MF, L))
                top = tl.max(srt, axis=0)
                dropped = tl.max(tl.max(tl.where(o_r[:, None] > 0, srt, NEG), axis=1), axis=0)
                nx = tl.max(tl.load(nxt_ptr + t_r, mask=m_r, other=NEG), axis=0)
                bound = tl.maximum(bound, tl.maximum(dropped, nx))
            m_w = top != NEG
            w_i = tl.where(m_w, _unpack_index(top), 0)  # [L] local entries, greedy order
            loc = tl.load(acc_ptr + a + w_i, mask=m_w, other=float("-inf"))
            r_w = _rows_of(rows_ptr, a, w_i, m_w, GATHER)
            inv_w = tl.load(inv_ptr + a + w_i, mask=m_w, other=0.0)
            sub = _dist_tile(x_ptr, r_w, m_w, inv_w, r_w, m_w, inv_w, D, stride_x, L, BK, PREC)
            if GROUPS:
                g_w = tl.load(gid_ptr + a + w_i, mask=m_w, other=-1)
                sub = tl.where(g_w[:, None] == g_w[None, :], sub, float("inf"))
            go = done < steps
            obase = tl.load(obase_ptr + g)
            vbase = tl.load(vbase_ptr + g)
            top_v = tl.max(tl.where(m_w, loc, float("-inf")), axis=0)  # the segment's max
            for _ in range(L):
                # the band rule inside the window: M = its largest live value, the pick is the
                # lowest index among live entries >= M - PICK_TIE
                live = m_w & (loc > float("-inf"))
                tau = tl.max(tl.where(live, loc, float("-inf")), axis=0) - PICK_TIE
                j = tl.min(tl.where(live & (loc >= tau), w_i, 0x7FFFFFFF), axis=0)
                p = tl.min(tl.where(live & (w_i == j), ow, L), axis=0)
                # exact while no entry outside W can be in the band (nor hold M): they all
                # have keys <= bound and only fall, so (tau, j) beating the bound proves it
                ok = go & (p < L) & (_pack(tau, j) > bound) & (done + n_acc < steps)
                v = tl.sum(tl.where(ow == p, loc, 0.0), axis=0)
                if RANK:
                    tl.store(out_ptr + obase + j, vbase + done + n_acc, mask=ok)
                else:
                    tl.store(out_ptr + obase + done + n_acc, vbase + j, mask=ok)
                    tl.store(gain_ptr + obase + done + n_acc, v, mask=ok)
                tl.store(sel_ptr + g * L + n_acc, j, mask=ok)
                col = tl.sum(tl.where(ow[None, :] == p, sub, 0.0), axis=1)  # d(W, pick)
                loc = tl.where(ok, tl.minimum(loc, col), loc)
                loc = tl.where(ok & (ow == p), float("-inf"), loc)
                n_acc += ok.to(tl.int64)
                go = ok
            if (n_acc == 0) & (done < steps):
                # the band reaches outside the window (values within PICK_TIE of the max, or
                # more +inf entries than L): the round's one pick is the lowest index of the
                # whole segment with acc >= M - PICK_TIE (acc is exact here), by a scan
                K = tl.load(off_ptr + g + 1) - a
                tau = top_v - PICK_TIE
                o_s = tl.arange(0, SCAN)
                jb = tl.full((SCAN,), 0x7FFFFFFF, tl.int64)
                for s0 in range(0, K, SCAN):
                    vs = tl.load(acc_ptr + a + s0 + o_s, mask=s0 + o_s < K, other=float("-inf"))
                    jb = tl.minimum(jb, tl.where((vs > float("-inf")) & (vs >= tau), s0 + o_s,
                                                 0x7FFFFFFF))  # fmt: skip
                j = tl.min(jb, axis=0)
                v = tl.load(acc_ptr + a + j)
                if RANK:
                    tl.store(out_ptr + obase + j, vbase + done)
                else:
                    tl.store(out_ptr + obase + done, vbase + j)
                    tl.store(gain_ptr + obase + done, v)
                tl.store(sel_ptr + g * L, j)
                n_acc += 1
                if STATS:
                    tl.store(stat_ptr + n_seg + g, tl.load(stat_ptr + n_seg + g) + 1)
            # n_acc >= 1 (a window pick or the scan's); never spin
            tl.store(done_ptr + g, tl.where(n_acc > 0, done + n_acc, steps))
            if STATS:
                tl.store(stat_ptr + g, tl.load(stat_ptr + g) + 1)
        tl.store(nsel_ptr + g, n_acc)


@triton.jit
def _unfinished(steps_ptr, done_ptr, n_seg, BLOCK_N: tl.constexpr):
    o = tl.arange(0, BLOCK_N)
    c = tl.zeros((), dtype=tl.int32)
    for g0 in range(0, n_seg, BLOCK_N):
        m = g0 + o < n_seg
        st = tl.load(steps_ptr + g0 + o, mask=m, other=0, volatile=True)
        dn = tl.load(done_ptr + g0 + o, mask=m, other=0, volatile=True)
        c += tl.sum((dn < st).to(tl.int32), axis=0)
    return c


@triton.jit
def _grid_barrier(bar_ptr, n_p, epoch):
    """Every program arrives (one release add per program), then waits until all ``n_p`` have
    arrived for the ``epoch``-th time. Needs all programs resident (grid <= SMs)."""
    tl.debug_barrier()
    tl.atomic_add(bar_ptr, 1, sem="release", scope="gpu")
    seen = tl.atomic_add(bar_ptr, 0, sem="acquire", scope="gpu")
    while seen < epoch * n_p:
        seen = tl.atomic_add(bar_ptr, 0, sem="acquire", scope="gpu")
    tl.debug_barrier()


@triton.jit
def _tiles_kernel(
    x_ptr, rows_ptr, gid_ptr, inv_ptr, acc_ptr, off_ptr, tcum_ptr, n_seg, n_tiles,
    lst_ptr, loff_ptr, lcnt_ptr, shift_ptr,
    sel_ptr, nsel_ptr, steps_ptr, done_ptr, cand_ptr, nxt_ptr, stat_ptr,
    sk_ptr, rr_ptr, sk_margin,  # SKETCH: [Q, DP] fp32 projections, [Q] residual norms
    D, stride_x,
    INIT: tl.constexpr, CAND: tl.constexpr, GATHER: tl.constexpr, GROUPS: tl.constexpr,
    STATS: tl.constexpr, SKETCH: tl.constexpr, DP: tl.constexpr,
    TE: tl.constexpr, L: tl.constexpr, BK: tl.constexpr, BLOCK_N: tl.constexpr,
    PREC: tl.constexpr,
):  # fmt: skip
    _phase_tiles(
        tl.program_id(0), tl.num_programs(0),
        x_ptr, rows_ptr, gid_ptr, inv_ptr, acc_ptr, off_ptr, tcum_ptr, n_seg, n_tiles,
        lst_ptr, loff_ptr, lcnt_ptr, shift_ptr,
        sel_ptr, nsel_ptr, steps_ptr, done_ptr, cand_ptr, nxt_ptr, stat_ptr,
        sk_ptr, rr_ptr, sk_margin, D, stride_x,
        INIT, CAND, GATHER, GROUPS, STATS, SKETCH, DP, TE, L, BK, BLOCK_N, PREC,
    )  # fmt: skip


@triton.jit
def _window_kernel(
    x_ptr, rows_ptr, gid_ptr, inv_ptr, acc_ptr, off_ptr, tcum_ptr, n_seg,
    sel_ptr, nsel_ptr, steps_ptr, done_ptr, cand_ptr, nxt_ptr,
    out_ptr, gain_ptr, obase_ptr, vbase_ptr, stat_ptr,
    D, stride_x,
    RANK: tl.constexpr, GATHER: tl.constexpr, GROUPS: tl.constexpr, STATS: tl.constexpr,
    L: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr, MF: tl.constexpr,
):  # fmt: skip
    _phase_window(
        tl.program_id(0), tl.num_programs(0),
        x_ptr, rows_ptr, gid_ptr, inv_ptr, acc_ptr, off_ptr, tcum_ptr, n_seg,
        sel_ptr, nsel_ptr, steps_ptr, done_ptr, cand_ptr, nxt_ptr,
        out_ptr, gain_ptr, obase_ptr, vbase_ptr, stat_ptr, D, stride_x,
        RANK, GATHER, GROUPS, STATS, L, BK, PREC, MF,
    )  # fmt: skip


@triton.jit
def _engine_persistent_kernel(
    x_ptr, rows_ptr, gid_ptr, inv_ptr, acc_ptr, off_ptr, tcum_ptr, n_seg, n_tiles,
    lst_ptr, loff_ptr, lcnt_ptr, shift_ptr,
    sel_ptr, nsel_ptr, steps_ptr, done_ptr, cand_ptr, nxt_ptr,
    out_ptr, gain_ptr, obase_ptr, vbase_ptr, tstat_ptr, wstat_ptr, bar_ptr,
    sk_ptr, rr_ptr, sk_margin,
    D, stride_x,
    RANK: tl.constexpr, GATHER: tl.constexpr, GROUPS: tl.constexpr, STATS: tl.constexpr,
    SKETCH: tl.constexpr, DP: tl.constexpr,
    TE: tl.constexpr, L: tl.constexpr, BK: tl.constexpr, BLOCK_N: tl.constexpr,
    PREC: tl.constexpr, MF: tl.constexpr,
):  # fmt: skip
    """The whole engine in one launch: grid <= SMs, phases separated by ``_grid_barrier``.
    Data written by other programs (``cand``, ``acc``, ``sel``...) is read only after a barrier
    (release add, acquire spin: the PTX memory model's release/acquire pattern)."""
    i_p = tl.program_id(0)
    n_p = tl.num_programs(0)
    _phase_tiles(
        i_p, n_p, x_ptr, rows_ptr, gid_ptr, inv_ptr, acc_ptr, off_ptr, tcum_ptr, n_seg, n_tiles,
        lst_ptr, loff_ptr, lcnt_ptr, shift_ptr,
        sel_ptr, nsel_ptr, steps_ptr, done_ptr, cand_ptr, nxt_ptr, tstat_ptr,
        sk_ptr, rr_ptr, sk_margin, D, stride_x,
        True, True, GATHER, GROUPS, STATS, SKETCH, DP, TE, L, BK, BLOCK_N, PREC,
    )  # fmt: skip
    epoch = 1
    _grid_barrier(bar_ptr, n_p, epoch)
    # ``done`` changes only in phase W; every program reads it between phase T and the barrier
    # that follows, where no phase W can run, so all programs take the same decision
    cont = _unfinished(steps_ptr, done_ptr, n_seg, BLOCK_N)
    while cont > 0:
        _phase_window(
            i_p, n_p, x_ptr, rows_ptr, gid_ptr, inv_ptr, acc_ptr, off_ptr, tcum_ptr, n_seg,
            sel_ptr, nsel_ptr, steps_ptr, done_ptr, cand_ptr, nxt_ptr,
            out_ptr, gain_ptr, obase_ptr, vbase_ptr, wstat_ptr, D, stride_x,
            RANK, GATHER, GROUPS, STATS, L, BK, PREC, MF,
        )  # fmt: skip
        epoch += 1
        _grid_barrier(bar_ptr, n_p, epoch)
        _phase_tiles(
            i_p, n_p, x_ptr, rows_ptr, gid_ptr, inv_ptr, acc_ptr, off_ptr, tcum_ptr, n_seg, n_tiles,
            lst_ptr, loff_ptr, lcnt_ptr, shift_ptr,
            sel_ptr, nsel_ptr, steps_ptr, done_ptr, cand_ptr, nxt_ptr, tstat_ptr,
            sk_ptr, rr_ptr, sk_margin, D, stride_x,
            False, True, GATHER, GROUPS, STATS, SKETCH, DP, TE, L, BK, BLOCK_N, PREC,
        )  # fmt: skip
        cont = _unfinished(steps_ptr, done_ptr, n_seg, BLOCK_N)
        epoch += 1
        _grid_barrier(bar_ptr, n_p, epoch)


def sketch(x, rows, inv, Q: int, dp: int, chunk: int = 1024):
    """The sketch bound's data for entries ``q < Q`` (rows ``rows[q]`` of ``x``, or ``q``):
    ``p [Q, dp]`` fp32, the unit rows ``x̂_q`` projected on an orthonormal basis ``P [D, dp]``
    (a QR of ``dp`` entries spread over the segments: the span of real tokens), and ``r [Q]``,
    the norms of the residuals ``x̂_q - P p_q``, computed directly (not as ``sqrt(1 - |p|^2)``,
    which loses all precision near 0). Then ``x̂_i . x̂_j = p_i . p_j + e_i . e_j <= p_i . p_j +
    r_i r_j``. Eager PyTorch on the device, ``chunk`` rows at a time (``O(Q dp)`` kept)."""
    dev = x.device
    pick = torch.linspace(0, Q - 1, steps=min(dp, Q), device=dev).round().long()
    xr = x[rows[pick] if rows is not None else pick].float() * inv[pick, None]
    basis = torch.zeros(x.shape[1], dp, dtype=torch.float32, device=dev)
    basis[:, : pick.numel()] = torch.linalg.qr(xr.T).Q
    p = torch.empty(Q, dp, dtype=torch.float32, device=dev)
    r = torch.empty(Q, dtype=torch.float32, device=dev)
    for c0 in range(0, Q, chunk):
        c1 = min(Q, c0 + chunk)
        idx = rows[c0:c1] if rows is not None else torch.arange(c0, c1, device=dev)
        xc = x[idx].float() * inv[c0:c1, None]
        pc = xc @ basis
        p[c0:c1] = pc
        r[c0:c1] = torch.linalg.vector_norm(xc - pc @ basis.T, dim=1)
    return p, r


_NO_COOPERATIVE = False


def _cooperative_refused(err: Exception) -> None:
    """Remember (for this process) that the persistent launch was refused, with one warning."""
    import warnings

    global _NO_COOPERATIVE
    _NO_COOPERATIVE = True
    warnings.warn(
        f"adaptive_prune: the row engine's cooperative launch was refused ({err}); it runs one "
        "launch per phase (one host read per round) from now on in this process",
        RuntimeWarning,
        stacklevel=3,
    )


def merge_rows(window: int, merge: Optional[int] = None) -> int:
    """Rows of phase W's merge sort (``merge`` keys per sort, or the config's): a power of two
    ``>= 2``; each sort takes ``rows - 1`` tiles' candidates and the running best."""
    from ._common import cfg, next_pow2

    keys = cfg("engine_merge") if merge is None else int(merge)
    return max(2, next_pow2(max(keys, 1)) // int(window))


def engine_warps(window: int) -> int:
    """Warps per program on a GPU (window 32 with 8 warps spilled registers on sm_90)."""
    return 4 if window <= 32 else 8


def run_engine(
    x: torch.Tensor,
    rows: Optional[torch.Tensor],
    inv: torch.Tensor,
    seg: list[int],
    state: dict,
    *,
    rank: bool,
    window: int,
    tile: int,
    persistent: Optional[bool] = None,
    stats: Optional[dict] = None,
    gid: Optional[torch.Tensor] = None,
    plan_only: bool = False,
    sketch_dim: int = 0,
    merge: Optional[int] = None,
):
    """Run the engine over segments with host offsets ``seg``; returns ``acc`` (final running
    distances). ``state``: device tensors prepared by the caller's prologue, all ``[n]`` int64
    unless said: ``lst`` (initial pick lists), ``loff``, ``lcnt``, ``shift``, ``steps``,
    ``done`` (zeros), ``out``, ``gain`` (fp32; any tensor with ``rank``), ``obase``, ``vbase``.
    ``persistent``: one launch with device-wide barriers (default on a GPU when the tiles fit
    one program per SM), else one launch per phase and a host read per round (interpreter).
    ``stats``: filled with ``tile_work [T]`` ((entry, pick) distances computed per tile),
    ``rounds [n]``, ``scans [n]`` (rounds whose one pick came from the fallback scan) and
    ``launches``. ``gid [Q]`` int64 (optional): every entry's group, groups contiguous inside a
    segment; entries of different groups are at distance ``+inf`` (their dots are skipped
    where a whole sub-tile and the picks share no group). ``plan_only`` (persistent only):
    allocate, launch nothing, return ``(acc, launch)``: ``launch()`` runs the whole loop
    (memsets + one kernel, no host work: CUDA-graph capturable), again on every call.
    ``sketch_dim`` (0: off; 16 or 32): phase T tests the sketch bound (:func:`sketch`) before
    each distance tile and skips the tiles it proves cannot lower a live entry: the same
    results bit for bit; ``stats["tile_skipped"]`` counts the skipped (entry, pick) pairs.
    ``merge``: keys per sort of phase W's merge (tests; default the config's).
    """
    from ._common import INTERPRET, dot_precision, next_pow2, pack

    dev = x.device
    n = len(seg) - 1
    L, TE = int(window), int(tile)
    tcum = [0]
    for g in range(n):
        tcum.append(tcum[-1] + cdiv(seg[g + 1] - seg[g], TE))
    T = tcum[-1]
    off_d, tcum_d = pack([seg, tcum], dev)
    acc = empty(max(seg[-1], 1), torch.float32, dev)
    cand = empty((max(T, 1), L), torch.int64, dev)
    nxt = empty(max(T, 1), torch.int64, dev)
    sel = empty((max(n, 1), L), torch.int64, dev)
    nsel = torch.zeros(max(n, 1), dtype=torch.int64, device=dev)
    tstat = torch.zeros(2 * max(T, 1), dtype=torch.int64, device=dev)  # computed, skipped
    wstat = torch.zeros(2 * max(n, 1), dtype=torch.int64, device=dev)  # rounds, scan rounds
    s = state
    D = x.shape[1]
    BK = min(32 if x.dtype != torch.float32 else 16, max(16, next_pow2(D)))
    if INTERPRET:
        BK = min(64, max(16, next_pow2(D)))
    prec = dot_precision(x.dtype)
    gather = rows is not None
    rows_a = rows if gather else off_d
    BLOCK_N = min(1024, next_pow2(n + 1))
    gid_a = gid if gid is not None else off_d
    tile_args = (x, rows_a, gid_a, inv, acc, off_d, tcum_d, n, T, s["lst"], s["loff"], s["lcnt"],
                 s["shift"], sel, nsel, s["steps"], s["done"], cand, nxt)  # fmt: skip
    win_args = (x, rows_a, gid_a, inv, acc, off_d, tcum_d, n, sel, nsel, s["steps"], s["done"],
                cand, nxt, s["out"], s["gain"], s["obase"], s["vbase"])  # fmt: skip
    kw = dict(GATHER=gather, GROUPS=gid is not None, STATS=stats is not None, L=L, BK=BK,
              PREC=prec)  # fmt: skip
    mf = merge_rows(L, merge)
    DP = int(sketch_dim)
    if DP and (DP < 16 or DP & (DP - 1)):
        raise ValueError(f"sketch_dim must be 0 or a power of two >= 16, got {sketch_dim}")
    if DP and T and n:
        sk, rr = sketch(x, rows, inv, seg[-1], DP)
        # the bound's and the exact distance's fp32 rounding: a few units of 2^-24 per term
        margin = 8.0 * (D + DP + 16) * 2.0**-24 + 1e-6
    else:
        sk, rr, margin = acc, acc, 0.0
    skw = dict(SKETCH=bool(DP), DP=max(DP, 16))
    launches = 0
    if T == 0 or n == 0:
        return (acc, lambda: None) if plan_only else acc
    if persistent is None:
        persistent = dev.type == "cuda" and not INTERPRET and not _NO_COOPERATIVE
    with set_device(dev):
        if persistent:
            # every program must be resident for the barrier: at most one per SM (one program
            # under the interpreter, where the barrier then never waits: tests run this path),
            # launched cooperatively on a GPU, so the driver refuses a grid that cannot be
            # resident at once instead of letting the barrier wait forever
            n_sm = 1 if INTERPRET else torch.cuda.get_device_properties(dev).multi_processor_count
            grid = min(T, n_sm)
            bar = torch.zeros(1, dtype=torch.int32, device=dev)
            coop = {} if INTERPRET else {"launch_cooperative_grid": True}

            def launch():
                # everything the loop mutates starts afresh: one launch (and its memsets) with
                # no host work, so it can be captured in a CUDA graph and replayed
                for t in (s["done"], nsel, bar, tstat, wstat):
                    t.zero_()
                with set_device(dev):
                    _engine_persistent_kernel[(grid,)](
                        *tile_args, s["out"], s["gain"], s["obase"], s["vbase"], tstat, wstat,
                        bar, sk, rr, margin, D, x.stride(0), RANK=rank, TE=TE, BLOCK_N=BLOCK_N,
                        MF=mf, num_warps=engine_warps(L), **kw, **skw, **coop,
                    )  # fmt: skip

            if plan_only:
                return acc, launch
            try:
                launch()
                launches = 1
            except RuntimeError as e:
                if INTERPRET or "COOPERATIVE" not in str(e).upper():
                    raise
                # the driver refused the cooperative grid (e.g. other work holds the SMs under
                # MPS): the same rounds, one launch per phase, from here on
                _cooperative_refused(e)
                persistent = False
        if not persistent:
            _tiles_kernel[(T,)](*tile_args, tstat, sk, rr, margin, D, x.stride(0), INIT=True,
                                CAND=True, TE=TE, BLOCK_N=BLOCK_N, **kw, **skw)  # fmt: skip
            launches += 1
            while bool((s["done"][:n] < s["steps"][:n]).any()):  # a host read per round
                _window_kernel[(n,)](*win_args, wstat, D, x.stride(0), RANK=rank, MF=mf, **kw)
                _tiles_kernel[(T,)](*tile_args, tstat, sk, rr, margin, D, x.stride(0),
                                    INIT=False, CAND=True, TE=TE, BLOCK_N=BLOCK_N, **kw,
                                    **skw)  # fmt: skip
                launches += 2
    if stats is not None:
        stats.update(tile_work=tstat[:T], tile_skipped=tstat[T : 2 * T], rounds=wstat[:n],
                     scans=wstat[n : 2 * n], launches=launches, tiles=T)  # fmt: skip
    return acc


__all__ = ["run_engine"]
