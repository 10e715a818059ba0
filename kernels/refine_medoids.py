"""Stage 3 coverage refinement on the device: ``steps`` k-medoids steps per group of the kept
pool positions that never raise the group's k-centre radius.

Reference (the spec): :func:`adaptive_prune.ops.refine_medoids.reference`. Group ``g`` owns
pool positions ``group_offsets[g]:group_offsets[g+1]`` (rows ``pool[...]`` of ``vision``,
unit rows ``x̂``). One step on a group with kept set ``S``:

1. assignment ``c(i) = argmax_{j in S} x̂_i . x̂_j`` (ties to the lower position; a kept
   position is its own centre), ``d_i = 1 - x̂_i . x̂_c(i)``, ``R = max d_i``;
2. medoids: cost of member ``c`` of cluster ``j`` is ``n_j - x̂_c . s_j``; the cheapest
   candidate (``j``'s image, ``j`` or not kept, lowest position within ``TIE n_j``) replaces a
   movable ``j`` when it costs less than ``j``'s cost minus ``TIE n_j`` and the cluster's
   radius around it is at most ``R - TIE``.

Launches per step: the assignment is ``_refine_assign_kernel``, a tiled ``x_I . x_C^T``
(``tl.dot``, fp32 accumulation, ``cos = acc * inv_i * inv_c``) of every group's row tiles
against its kept positions, reduced on the fly to the best centre of every row (no
``m x |S|`` matrix is written). The kept positions of each group are listed first by a
stable sort of ``(group, not kept)``, so every group's centres are its first ``|S_g|`` sorted
entries in ascending position, and each program loops over ``|S_g|`` read on the device: no
host synchronisation. The medoid half is ``O(K D)`` of vectorised torch ops over all groups
at once (cluster ids are the centres' pool positions). A step without a move leaves the
inputs of the next one unchanged, so the ``steps`` steps run without the reference's early
exit and give the same result.

Shapes: ``vision [N, D]``, ``pool [K]`` int64, ``group_offsets [G+1]`` (host offsets: read on
the host), ``image [K]``, ``keep [K]`` / ``movable [K]`` bool; output ``keep [K]`` bool.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (
    _locate,
    cfg,
    dot_precision,
    empty,
    group_ids,
    host_ints,
    kernel_input,
    next_pow2,
    pack,
    set_device,
    sizes_of,
    tile_cum,
)
from .token_similarity import row_inv_norms

# the spec's tie band (ops/refine_medoids.py: TIE); the kernels never import the package
TIE = 1e-5


@triton.jit(do_not_specialize=["n_seg"])
def _refine_assign_kernel(
    x_ptr,  # [N, D] input dtype
    rows_ptr,  # [K] int64 pool rows of x
    cpos_ptr,  # [K] int64 pool positions, each group's kept ones first (ascending)
    seg_ptr,  # [n_seg+1] int64 group offsets over the pool
    cnt_ptr,  # [n_seg] int64 kept positions per group
    cum_ptr,  # [n_seg+1] int64 cumulative row tiles
    inv_ptr,  # [K] fp32 inverse norms of the pool rows
    best_ptr,  # [K] fp32 out: largest cosine to a kept position of the group (-inf: none)
    arg_ptr,  # [K] int64 out: its pool position (lowest on ties; -1: none)
    n_seg,
    D,
    stride_x,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PREC: tl.constexpr,
):
    i_t = tl.program_id(0).to(tl.int64)
    i_g = _locate(cum_ptr, n_seg, i_t, BLOCK_N)
    a = tl.load(seg_ptr + i_g)
    m = tl.load(seg_ptr + i_g + 1) - a
    c = tl.load(cnt_ptr + i_g).to(tl.int32)  # a group's size fits int32
    o_i = (i_t - tl.load(cum_ptr + i_g)) * BM + tl.arange(0, BM)  # [BM] local rows
    m_i = o_i < m
    r_i = tl.load(rows_ptr + a + o_i, mask=m_i, other=0)
    p_i = x_ptr + r_i[:, None] * stride_x  # [BM, 1]
    inv_i = tl.load(inv_ptr + a + o_i, mask=m_i, other=0.0)
    run = tl.full((BM,), float("-inf"), dtype=tl.float32)
    run_s = tl.full((BM,), -1, dtype=tl.int32)  # centre index (rank among the kept)
    for j0 in range(0, c, BN):
        o_j = j0 + tl.arange(0, BN)  # [BN] int32 centre indices
        m_j = o_j < c
        q_j = tl.load(cpos_ptr + a + o_j, mask=m_j, other=0)  # pool positions
        r_j = tl.load(rows_ptr + q_j, mask=m_j, other=0)
        p_j = x_ptr + r_j[:, None] * stride_x
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(0, D, BK):
            o_k = k0 + tl.arange(0, BK)
            m_k = o_k < D
            b_i = tl.load(p_i + o_k[None, :], mask=m_i[:, None] & m_k[None, :], other=0.0)
            b_j = tl.load(p_j + o_k[None, :], mask=m_j[:, None] & m_k[None, :], other=0.0)
            acc = tl.dot(b_i, tl.trans(b_j), acc, input_precision=PREC)  # [BM, BN]
        inv_j = tl.load(inv_ptr + q_j, mask=m_j, other=0.0)
        b_c = tl.where(m_j[None, :], acc * inv_i[:, None] * inv_j[None, :], float("-inf"))
        t_max = tl.max(b_c, axis=1)  # [BM]
        t_s = tl.min(tl.where(b_c == t_max[:, None], o_j[None, :], 2**30), axis=1)  # int32
        upd = t_max > run  # an earlier tile (lower positions) keeps equal values
        run = tl.where(upd, t_max, run)
        run_s = tl.where(upd, t_s, run_s)
    pos = tl.load(cpos_ptr + a + run_s, mask=m_i & (run_s >= 0), other=-1)
    tl.store(best_ptr + a + o_i, run, mask=m_i)
    tl.store(arg_ptr + a + o_i, pos, mask=m_i)


def _assign(x, rows, cpos, seg_d, cnt, cum, cum_d, inv, K, n_seg):
    """Best cosine to a kept position of the group, and that position, for every pool row."""
    dev = x.device
    best = empty(K, torch.float32, dev)
    arg = empty(K, torch.int64, dev)
    D = x.shape[1]
    BM, BN = cfg("rows_tile"), cfg("rows_keys")
    # fp32 goes through ieee FMA dots: K step 16 (32 spilled for sm_90, _compile_check)
    bk = cfg("sim_k_f32") if x.dtype == torch.float32 else cfg("reduce_k")
    BK = min(bk, max(16, next_pow2(D)))
    with set_device(dev):
        _refine_assign_kernel[(cum[-1],)](
            x, rows, cpos, seg_d, cnt, cum_d, inv, best, arg, n_seg, D, x.stride(0),
            BM=BM, BN=BN, BK=BK, BLOCK_N=min(1024, next_pow2(n_seg + 1)),
            PREC=dot_precision(x.dtype), num_warps=cfg("reduce_warps"),
        )  # fmt: skip
    return best, arg


def refine_medoids_fwd(
    vision: torch.Tensor,
    pool: torch.Tensor,
    group_offsets: torch.Tensor,
    image: torch.Tensor,
    keep: torch.Tensor,
    movable: torch.Tensor,
    steps: int,
    eps: float,
) -> torch.Tensor:
    """``keep [K]`` bool after ``steps`` refinement steps of every group (see the module
    docstring); the inputs are not modified."""
    go = host_ints(group_offsets)
    K = pool.shape[0]
    x = kernel_input(vision)
    dev = x.device
    keep = keep.to(dev).clone()
    if K == 0 or int(steps) <= 0:
        return keep
    sizes = sizes_of(go)
    n_seg = len(sizes)
    rows = pool.to(device=dev, dtype=torch.int64).contiguous()
    image = image.to(device=dev, dtype=torch.int64)
    movable = movable.to(dev).clone()
    BM = cfg("rows_tile")
    cum = tile_cum(sizes, BM)
    seg_d, cum_d = pack([go, cum], dev)
    gid = group_ids(go, dev)  # [K] group of every pool position
    (size_g,) = pack([sizes], dev)
    inv = row_inv_norms(x, K, eps, rows)
    xh = x[rows].float() * inv[:, None]  # [K, D] unit rows, fp32
    pos = torch.arange(K, device=dev)
    inf = torch.full((K,), float("inf"), device=dev)
    for _ in range(int(steps)):
        cnt = torch.zeros(n_seg, dtype=torch.int64, device=dev).index_add_(0, gid, keep.long())
        cpos = torch.sort(gid * 2 + (~keep).long(), stable=True).indices
        best, arg = _assign(x, rows, cpos, seg_d, cnt, cum, cum_d, inv, K, n_seg)
        # groups with no kept position, or only kept ones, do not change
        valid = (cnt > 0)[gid] & (cnt < size_g)[gid]
        centre = torch.where(keep | ~valid, pos, arg)
        dist = torch.where(keep | ~valid, torch.zeros_like(best), 1.0 - best)
        R = torch.zeros(n_seg, device=dev).scatter_reduce_(0, gid, dist, "amax")
        n = torch.bincount(centre, minlength=K).float()  # [K] cluster sizes (at centres)
        total = torch.zeros_like(xh).index_add_(0, centre, xh)
        cost = n[centre] - (xh * total[centre]).sum(dim=1)
        ok = valid & (image == image[centre]) & (~keep | (centre == pos)) & movable[centre]
        c_cost = torch.where(ok, cost, inf)
        low = inf.clone().scatter_reduce_(0, centre, c_cost, "amin")
        band = TIE * n
        at_low = ok & (c_cost <= low[centre] + band[centre])
        choice = torch.full((K,), K, dtype=torch.int64, device=dev).scatter_reduce_(
            0, centre, torch.where(at_low, pos, K), "amin"
        )  # [K] at every centre: its cheapest candidate (lowest position on ties)
        better = keep & valid & (choice < K) & (low < cost - band)
        to = torch.where(better, choice, pos)
        d_new = 1.0 - (xh * xh[to[centre]]).sum(dim=1)
        d_new = torch.where(pos == to[centre], torch.zeros_like(d_new), d_new)
        radius = torch.zeros(K, device=dev).scatter_reduce_(0, centre, d_new, "amax")
        move = better & (radius <= R[gid] - TIE)
        gained = torch.zeros(K, dtype=torch.int32, device=dev).scatter_reduce_(
            0, torch.where(move, choice, pos), move.int(), "amax"
        )
        new = (keep & ~move) | gained.bool()
        movable |= new & ~keep  # a moved centre stays movable at its new position
        keep = new
    return keep


__all__ = ["refine_medoids_fwd"]
