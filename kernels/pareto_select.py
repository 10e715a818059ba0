"""Pareto selection on the device: non-dominated fronts, crowding distance, exact-``k`` cut.

Segment ``s`` holds ``K_s`` points (greedy order = local position ``i``) with objectives
``f1 = gains``, ``f2 = align``, both maximised; keep exactly ``k_s`` of them:
whole fronts while they fit, then the overflowing front by NSGA-II crowding distance
(descending), ties to the earlier position. ``i`` dominates ``j`` when it is ``>=`` on both and
``>`` on one; equal points share a front. Output: keep mask ``[K]`` bool.
Reference: :func:`adaptive_prune.reference.pareto_select` (bit-exact: same comparisons, and
the crowding distances are computed in float64 in the reference's order).

Two launches:

1. ``_pareto_rank_kernel`` (tiles of ``BT`` points, pairwise counts over the segment, O(K^2)
   spread over many programs): every point's position in the order ``(f1 desc, f2 desc, i
   asc)``, the start and size of its group of identical points; writes the sorted arrays.
2. ``_pareto_select_kernel`` (one program per segment): peels fronts in sorted order. In that
   order every dominator of a point comes before its group of identical points, so a remaining
   point is dominated iff the running max of ``f2`` over the remaining points before its group
   is ``>= f2``: one prefix-max scan per front (``tl.associative_scan``), chunked. The
   overflowing front is compacted; inside a front ``f1`` descending is ``f2`` ascending (and
   identical points sit together, index ascending), so both crowding sorts are read off the
   compacted order without sorting. The ``k - taken`` largest distances (ties to the lower
   position) are found by pairwise counts.
"""

from __future__ import annotations

from typing import Sequence

import torch
import triton
import triton.language as tl

from ._common import (
    _locate,
    _max_combine,
    cfg,
    empty,
    host_ints,
    next_pow2,
    pack,
    set_device,
    sizes_of,
    tile_cum,
)


@triton.jit(do_not_specialize=["n_seg"])
def _pareto_rank_kernel(
    f1_ptr,  # [K] fp32 gains
    f2_ptr,  # [K] fp32 alignment
    seg_ptr,  # [S+1] int64
    cum_ptr,  # [S+1] int64 cumulative tiles
    perm_ptr,  # [K] int64 out: local index at every sorted position
    sf1_ptr,  # [K] fp32 out: f1 in sorted order
    sf2_ptr,  # [K] fp32 out
    gst_ptr,  # [K] int64 out: sorted position where the point's identical group starts
    gsz_ptr,  # [K] int64 out: size of that group
    n_seg,
    BT: tl.constexpr,
    BJ: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    i_t = tl.program_id(0).to(tl.int64)
    i_s = _locate(cum_ptr, n_seg, i_t, BLOCK_N)
    a = tl.load(seg_ptr + i_s)
    K = tl.load(seg_ptr + i_s + 1) - a
    o_i = (i_t - tl.load(cum_ptr + i_s)) * BT + tl.arange(0, BT)  # [BT]
    m_i = o_i < K
    f1_i = tl.load(f1_ptr + a + o_i, mask=m_i, other=0.0)
    f2_i = tl.load(f2_ptr + a + o_i, mask=m_i, other=0.0)
    pos = tl.zeros((BT,), dtype=tl.int64)
    gst = tl.zeros((BT,), dtype=tl.int64)
    gsz = tl.zeros((BT,), dtype=tl.int64)
    for j0 in range(0, K, BJ):
        o_j = j0 + tl.arange(0, BJ)  # [BJ]
        m_j = (o_j < K)[None, :]
        f1_j = tl.load(f1_ptr + a + o_j, mask=o_j < K, other=0.0)[None, :]
        f2_j = tl.load(f2_ptr + a + o_j, mask=o_j < K, other=0.0)[None, :]
        eq1 = f1_j == f1_i[:, None]
        same = eq1 & (f2_j == f2_i[:, None])
        before = (f1_j > f1_i[:, None]) | (eq1 & (f2_j > f2_i[:, None]))  # [BT, BJ]
        gst += tl.sum((before & m_j).to(tl.int64), axis=1)
        gsz += tl.sum((same & m_j).to(tl.int64), axis=1)
        earlier = same & (o_j[None, :] < o_i[:, None])
        pos += tl.sum(((before | earlier) & m_j).to(tl.int64), axis=1)
    tl.store(perm_ptr + a + pos, o_i, mask=m_i)
    tl.store(sf1_ptr + a + pos, f1_i, mask=m_i)
    tl.store(sf2_ptr + a + pos, f2_i, mask=m_i)
    tl.store(gst_ptr + a + pos, gst, mask=m_i)
    tl.store(gsz_ptr + a + pos, gsz, mask=m_i)


@triton.jit
def _crowding_cut(
    a,
    K,
    L,
    need,
    perm_ptr,
    sf1_ptr,
    sf2_ptr,
    gst_ptr,
    gsz_ptr,
    fr_ptr,
    comp_ptr,
    cd_ptr,
    sel_ptr,
    CH: tl.constexpr,
    PT: tl.constexpr,
    PU: tl.constexpr,
):
    """Mark (``sel = 1``) the ``need`` members of front ``L`` with the largest crowding
    distance, ties to the lower local index."""
    o = tl.arange(0, CH)
    # compact the members of front L, in sorted order
    c = tl.zeros((), dtype=tl.int64)
    for c0 in range(0, K, CH):
        p = c0 + o
        mem = ((p < K) & (tl.load(fr_ptr + a + p, mask=p < K, other=-3) == L)).to(tl.int64)
        tl.store(comp_ptr + a + c + tl.cumsum(mem, axis=0) - mem, p, mask=mem > 0)
        c += tl.sum(mem, axis=0)
    tl.debug_barrier()
    p_first = tl.load(comp_ptr + a)
    p_last = tl.load(comp_ptr + a + c - 1)
    r1 = tl.load(sf1_ptr + a + p_first).to(tl.float64) - tl.load(sf1_ptr + a + p_last).to(
        tl.float64
    )
    r2 = tl.load(sf2_ptr + a + p_last).to(tl.float64) - tl.load(sf2_ptr + a + p_first).to(
        tl.float64
    )
    for t0 in range(0, c, CH):
        t = t0 + o
        vt = t < c
        p = tl.load(comp_ptr + a + t, mask=vt, other=0)
        f1 = tl.load(sf1_ptr + a + p, mask=vt, other=0.0).to(tl.float64)
        gs = t - (p - tl.load(gst_ptr + a + p, mask=vt, other=0))
        ge = gs + tl.load(gsz_ptr + a + p, mask=vt, other=1)
        # f2 order = compact order: neighbours t - 1 and t + 1
        p_prev = tl.load(comp_ptr + a + t - 1, mask=vt & (t >= 1), other=0)
        p_next = tl.load(comp_ptr + a + t + 1, mask=vt & (t + 1 < c), other=0)
        f2_prev = tl.load(sf2_ptr + a + p_prev, mask=vt & (t >= 1), other=0.0).to(tl.float64)
        f2_next = tl.load(sf2_ptr + a + p_next, mask=vt & (t + 1 < c), other=0.0).to(tl.float64)
        bnd2 = (t == 0) | (t == c - 1)
        # f1 ascending order = groups reversed, index ascending inside a group
        p_ge = tl.load(comp_ptr + a + ge, mask=vt & (ge < c), other=0)
        p_gs = tl.load(comp_ptr + a + gs - 1, mask=vt & (gs >= 1), other=0)
        f1_lo = tl.load(sf1_ptr + a + p_ge, mask=vt & (ge < c), other=0.0).to(tl.float64)
        f1_hi = tl.load(sf1_ptr + a + p_gs, mask=vt & (gs >= 1), other=0.0).to(tl.float64)
        f1_prev = tl.where(t > gs, f1, f1_lo)
        f1_next = tl.where(t < ge - 1, f1, f1_hi)
        bnd1 = ((t == gs) & (ge == c)) | ((t == ge - 1) & (gs == 0))
        d = tl.zeros((CH,), dtype=tl.float64)
        d = tl.where(r1 > 0, d + (f1_next - f1_prev) / tl.where(r1 > 0, r1, 1.0), d)
        d = tl.where(r2 > 0, d + (f2_next - f2_prev) / tl.where(r2 > 0, r2, 1.0), d)
        d = tl.where(bnd1 | bnd2, float("inf"), d)
        tl.store(cd_ptr + a + t, d, mask=vt)
    tl.debug_barrier()
    o_t = tl.arange(0, PT)
    o_u = tl.arange(0, PU)
    for t0 in range(0, c, PT):
        t = t0 + o_t  # [PT]
        vt = t < c
        p = tl.load(comp_ptr + a + t, mask=vt, other=0)
        d_t = tl.load(cd_ptr + a + t, mask=vt, other=0.0)
        l_t = tl.load(perm_ptr + a + p, mask=vt, other=0)
        better = tl.zeros((PT,), dtype=tl.int32)
        for u0 in range(0, c, PU):
            u = u0 + o_u  # [PU]
            vu = u < c
            p_u = tl.load(comp_ptr + a + u, mask=vu, other=0)
            d_u = tl.load(cd_ptr + a + u, mask=vu, other=0.0)
            l_u = tl.load(perm_ptr + a + p_u, mask=vu, other=0)
            gt = (d_u[None, :] > d_t[:, None]) | (
                (d_u[None, :] == d_t[:, None]) & (l_u[None, :] < l_t[:, None])
            )  # [PT, PU]
            better += tl.sum((gt & vu[None, :]).to(tl.int32), axis=1)
        tl.store(sel_ptr + a + p, (better < need).to(tl.int8), mask=vt)
    tl.debug_barrier()


@triton.jit
def _pareto_select_kernel(
    seg_ptr,  # [S+1] int64
    k_ptr,  # [S] int64
    perm_ptr,  # [K] int64
    sf1_ptr,  # [K] fp32
    sf2_ptr,  # [K] fp32
    gst_ptr,  # [K] int64
    gsz_ptr,  # [K] int64
    fr_ptr,  # [K] int32 scratch: front of every sorted position (-1 = not assigned)
    comp_ptr,  # [K] int64 scratch: compacted members of the cut front
    cd_ptr,  # [K] fp64 scratch: their crowding distances
    sel_ptr,  # [K] int8 scratch: chosen in the cut front
    keep_ptr,  # [K] uint8 out (local index order)
    CH: tl.constexpr,
    PT: tl.constexpr,
    PU: tl.constexpr,
):
    i_s = tl.program_id(0).to(tl.int64)
    a = tl.load(seg_ptr + i_s)
    K = tl.load(seg_ptr + i_s + 1) - a
    kk = tl.load(k_ptr + i_s)
    o = tl.arange(0, CH)
    for c0 in range(0, K, CH):
        p = c0 + o
        tl.store(fr_ptr + a + p, tl.full((CH,), -1, tl.int32), mask=p < K)
        tl.store(sel_ptr + a + p, tl.zeros((CH,), tl.int8), mask=p < K)
    tl.debug_barrier()
    taken = tl.zeros((), dtype=tl.int64)
    level = tl.zeros((), dtype=tl.int32)
    cut = tl.full((), -1, dtype=tl.int32)
    go = (kk > 0) & (kk < K)
    while go:
        carry = tl.full((), float("-inf"), tl.float32)
        cnt = tl.zeros((), dtype=tl.int64)
        for c0 in range(0, K, CH):
            p = c0 + o
            vp = p < K
            q = p - 1
            vq = vp & (q >= 0)
            f2q = tl.load(sf2_ptr + a + q, mask=vq, other=0.0)
            frq = tl.load(fr_ptr + a + q, mask=vq, other=-3)
            lastq = (
                tl.load(gst_ptr + a + q, mask=vq, other=0)
                + tl.load(gsz_ptr + a + q, mask=vq, other=0)
                - 1
            ) == q
            u = tl.where(vq & lastq & ((frq == -1) | (frq == level)), f2q, float("-inf"))
            pm = tl.maximum(tl.associative_scan(u, 0, _max_combine), carry)
            carry = tl.maximum(carry, tl.max(u, axis=0))
            f2p = tl.load(sf2_ptr + a + p, mask=vp, other=0.0)
            frp = tl.load(fr_ptr + a + p, mask=vp, other=-3)
            new = vp & (frp == -1) & (pm < f2p)
            tl.store(fr_ptr + a + p, tl.zeros((CH,), tl.int32) + level, mask=new)
            cnt += tl.sum(new.to(tl.int64), axis=0)
        tl.debug_barrier()
        if taken + cnt <= kk:
            taken += cnt
            level += 1
        else:
            _crowding_cut(a, K, level, kk - taken, perm_ptr, sf1_ptr, sf2_ptr, gst_ptr,
                          gsz_ptr, fr_ptr, comp_ptr, cd_ptr, sel_ptr, CH, PT, PU)  # fmt: skip
            cut = level
            taken = kk
        go = (taken < kk) & (cnt > 0)
    full = tl.where(cut >= 0, cut, level)
    keep_all = kk >= K
    for c0 in range(0, K, CH):
        p = c0 + o
        vp = p < K
        fr = tl.load(fr_ptr + a + p, mask=vp, other=-1)
        sel = tl.load(sel_ptr + a + p, mask=vp, other=0)
        keep = keep_all | ((fr >= 0) & (fr < full)) | (sel != 0)
        loc = tl.load(perm_ptr + a + p, mask=vp, other=0)
        tl.store(keep_ptr + a + loc, keep.to(tl.uint8), mask=vp)


def pareto_select_fwd(
    gains: torch.Tensor, align: torch.Tensor, offsets: torch.Tensor, k: Sequence[int]
) -> torch.Tensor:
    """``adaptive_prune::pareto_select`` on the device: keep mask ``[K]`` bool with exactly
    ``min(k[s], K_s)`` per segment. ``offsets`` may be on the CPU (no host sync)."""
    dev = gains.device
    so = host_ints(offsets)
    S = len(so) - 1
    kk = [int(v) for v in k]
    if len(kk) != S:
        raise ValueError(f"k has {len(kk)} entries but offsets has {S} segments")
    K = gains.shape[0]
    keep = empty(K, torch.uint8, dev)
    if K == 0:
        return keep.view(torch.bool)
    f1 = gains.to(torch.float32).contiguous()
    f2 = align.to(device=dev, dtype=torch.float32).contiguous()
    BT = cfg("pareto_tile")
    cum = tile_cum(sizes_of(so), BT)
    seg_d, cum_d, k_d = pack([so, cum, kk], dev)
    perm = empty(K, torch.int64, dev)
    sf1 = empty(K, torch.float32, dev)
    sf2 = empty(sf1.shape, sf1.dtype, dev)
    gst = empty(perm.shape, perm.dtype, dev)
    gsz = empty(perm.shape, perm.dtype, dev)
    fr = empty(K, torch.int32, dev)
    comp = empty(perm.shape, perm.dtype, dev)
    cd = empty(K, torch.float64, dev)
    sel = empty(K, torch.int8, dev)
    CH = cfg("pareto_chunk")
    with set_device(dev):
        if cum[-1] > 0:
            _pareto_rank_kernel[(cum[-1],)](
                f1, f2, seg_d, cum_d, perm, sf1, sf2, gst, gsz, S,
                BT=BT, BJ=cfg("pareto_pair_u"), BLOCK_N=min(1024, next_pow2(S + 1)), num_warps=4,
            )  # fmt: skip
        _pareto_select_kernel[(S,)](
            seg_d, k_d, perm, sf1, sf2, gst, gsz, fr, comp, cd, sel, keep,
            CH=CH, PT=cfg("pareto_pair_t"), PU=cfg("pareto_pair_u"),
            num_warps=4 if CH <= 512 else 8,
        )  # fmt: skip
    return keep.view(torch.bool)


__all__ = ["pareto_select_fwd"]
