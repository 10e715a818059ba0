"""Tiled cosine similarity of tokens, fp32 accumulation, varlen segments.

The kernels share the tile loop ``acc += x_I . y_J^T`` over ``D`` (raw input dtype into
``tl.dot``, fp32 accumulator, nothing normalised in memory), then
``cos = acc * inv_I * inv_J`` with ``inv = 1 / max(||x||, eps)`` read from a pre-pass
(``_row_inv_norm_kernel``, one read of the rows; keeping the squared norms inside the ``tl.dot``
loop made the tiles spill registers on sm_90):

1. ``_token_similarity_blocks_kernel``: the per-segment similarity blocks the greedy steps read.
   Segment ``g`` (an image, or one request's candidate pool) has rows ``rows[off[g]:off[g+1]]``
   (``rows`` = identity for images) and gets an ``m_g x m_g`` fp32 block
   ``S_g[i, j] = x̂_i . x̂_j`` at ``base[g]`` of a flat scratch (row-major). Only tiles with
   ``j >= i`` are computed; each is stored twice (``S_g`` is exactly symmetric).
   Shapes: ``x [N, D]``; output ``[sum_g m_g^2]`` fp32. No ``N x N`` matrix, only the blocks.

2. ``_token_similarity_reduce_kernel``: row reductions, no matrix written. For every query row
   ``i`` of segment ``g`` against the key rows of the same segment ``g``:

   - ``MODE 0`` mean over keys (text alignment ``a_i``, ``align="mean"``),
   - ``MODE 1`` max over keys (``align="max"``),
   - ``MODE 2`` max over keys of an *earlier group* (cross-image redundancy ``r_i``:
     ``max cos(x_i, x_j)`` over candidates ``j`` of an earlier image, the hard filter's test),
   - ``MODE 3`` max over keys other than ``i`` itself (nearest-neighbour similarity; the
     nearest-neighbour diversity is ``d_i = 1 - result``).

   Output ``[Q]`` fp32; a segment without keys gives ``empty_value`` (0 for alignment, as the
   reference), and modes 2/3 give ``-inf`` when no key qualifies. Keys of another dtype than
   the queries are cast to the queries' dtype (``tl.dot`` takes one dtype).

Reference: :func:`adaptive_prune.reference.token_alignment` (modes 0/1) and the brute-force
definitions above (tests/test_backend_triton.py).
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from ._common import (
    _inv_norm,
    _locate,
    cdiv,
    cfg,
    dot_precision,
    empty,
    host_ints,
    kernel_input,
    next_pow2,
    pack,
    set_device,
    sim_config,
    sizes_of,
    square_bases,
    tile_cum,
)

MODES = {"mean": 0, "max": 1, "earlier_group_max": 2, "nearest_other_max": 3}


@triton.jit(do_not_specialize=["Q", "eps"])
def _row_inv_norm_kernel(
    x_ptr,  # [N, D]
    rows_ptr,  # [Q] int64 (GATHER)
    out_ptr,  # [Q] fp32: 1 / max(||x_row||, eps)
    Q,
    D,
    stride_x,
    eps,
    GATHER: tl.constexpr,
    BR: tl.constexpr,
    BD: tl.constexpr,
):
    o_q = tl.program_id(0).to(tl.int64) * BR + tl.arange(0, BR)  # [BR]
    m_q = o_q < Q
    if GATHER:
        r = tl.load(rows_ptr + o_q, mask=m_q, other=0)
    else:
        r = o_q
    ss = tl.zeros((BR,), dtype=tl.float32)
    for d0 in range(0, D, BD):
        o_d = d0 + tl.arange(0, BD)
        b = tl.load(
            x_ptr + r[:, None] * stride_x + o_d[None, :],
            mask=m_q[:, None] & (o_d < D)[None, :],
            other=0.0,
        ).to(tl.float32)
        ss += tl.sum(b * b, axis=1)
    tl.store(out_ptr + o_q, _inv_norm(ss, eps), mask=m_q)


@triton.jit(do_not_specialize=["n_seg"])
def _token_similarity_blocks_kernel(
    x_ptr,  # [N, D] input dtype, row stride stride_x
    rows_ptr,  # [Q] int64 gathered rows (GATHER) or unused
    seg_ptr,  # [n_seg+1] int64 segment offsets over rows
    cum_ptr,  # [n_seg+1] int64 cumulative tile counts (ceil(m/BM)^2 per segment)
    base_ptr,  # [n_seg] int64 start of every block in out
    inv_ptr,  # [Q] fp32 inverse norms of the (gathered) rows
    out_ptr,  # [sum m^2] fp32
    n_seg,
    D,
    stride_x,
    GATHER: tl.constexpr,
    BM: tl.constexpr,
    BK: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PREC: tl.constexpr,
):
    i_t = tl.program_id(0).to(tl.int64)
    i_g = _locate(cum_ptr, n_seg, i_t, BLOCK_N)
    a = tl.load(seg_ptr + i_g)  # int64 segment start
    m = (tl.load(seg_ptr + i_g + 1) - a).to(tl.int32)  # a segment's size fits int32
    nt = (m + BM - 1) // BM
    local = (i_t - tl.load(cum_ptr + i_g)).to(tl.int32)
    i_i = local // nt
    i_j = local % nt
    if i_j >= i_i:
        # int32 positions inside the segment; int64 only where rows or block offsets can be big
        o_i = i_i * BM + tl.arange(0, BM)  # [BM]
        o_j = i_j * BM + tl.arange(0, BM)  # [BM]
        m_i = o_i < m
        m_j = o_j < m
        if GATHER:
            r_i = tl.load(rows_ptr + a + o_i, mask=m_i, other=0)  # int64 rows
            r_j = tl.load(rows_ptr + a + o_j, mask=m_j, other=0)
            p_i = x_ptr + r_i[:, None] * stride_x  # [BM, 1]
            p_j = x_ptr + r_j[:, None] * stride_x
        else:
            x_a = x_ptr + a * stride_x  # scalar pointer to the segment's first row
            p_i = x_a + o_i[:, None].to(tl.int64) * stride_x
            p_j = x_a + o_j[:, None].to(tl.int64) * stride_x
        acc = tl.zeros((BM, BM), dtype=tl.float32)
        for k0 in range(0, D, BK):
            o_k = k0 + tl.arange(0, BK)
            m_k = o_k < D
            b_i = tl.load(p_i + o_k[None, :], mask=m_i[:, None] & m_k[None, :], other=0.0)
            b_j = tl.load(p_j + o_k[None, :], mask=m_j[:, None] & m_k[None, :], other=0.0)
            acc = tl.dot(b_i, tl.trans(b_j), acc, input_precision=PREC)  # [BM, BM]
        inv_i = tl.load(inv_ptr + a + o_i, mask=m_i, other=0.0)
        inv_j = tl.load(inv_ptr + a + o_j, mask=m_j, other=0.0)
        b_s = acc * inv_i[:, None] * inv_j[None, :]
        out_b = out_ptr + tl.load(base_ptr + i_g)  # scalar pointer to the block
        # upper triangle (j >= i) from this tile, the lower one from its transpose: S is
        # exactly symmetric even where a diagonal tile's dot is not
        up = m_i[:, None] & m_j[None, :] & (o_j[None, :] >= o_i[:, None])  # [BM, BM]
        tl.store(out_b + o_i[:, None].to(tl.int64) * m + o_j[None, :], b_s, mask=up)
        lo = m_j[:, None] & m_i[None, :] & (o_j[:, None] > o_i[None, :])  # transposed frame
        tl.store(out_b + o_j[:, None].to(tl.int64) * m + o_i[None, :], tl.trans(b_s), mask=lo)


@triton.jit(do_not_specialize=["n_seg", "empty_value"])
def _token_similarity_reduce_kernel(
    x_ptr,  # [Nx, D] queries' source
    qrows_ptr,  # [Q] int64 (QGATHER) query rows of x
    qseg_ptr,  # [n_seg+1] int64 query segment offsets
    qcum_ptr,  # [n_seg+1] int64 cumulative query tiles
    y_ptr,  # [Ny, D] keys' source
    krows_ptr,  # [K] int64 (KGATHER) key rows of y
    kseg_ptr,  # [n_seg+1] int64 key segment offsets
    qgrp_ptr,  # [Q] int64 query groups (MODE 2)
    kgrp_ptr,  # [K] int64 key groups (MODE 2)
    qinv_ptr,  # [Q] fp32 inverse norms of the queries
    kinv_ptr,  # [K] fp32 inverse norms of the keys
    out_ptr,  # [Q] fp32
    n_seg,
    D,
    stride_x,
    stride_y,
    empty_value,
    QGATHER: tl.constexpr,
    KGATHER: tl.constexpr,
    MODE: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PREC: tl.constexpr,
):
    i_t = tl.program_id(0).to(tl.int64)
    i_g = _locate(qcum_ptr, n_seg, i_t, BLOCK_N)
    qa = tl.load(qseg_ptr + i_g)
    qm = tl.load(qseg_ptr + i_g + 1) - qa
    ka = tl.load(kseg_ptr + i_g)
    km = tl.load(kseg_ptr + i_g + 1) - ka
    o_i = (i_t - tl.load(qcum_ptr + i_g)) * BM + tl.arange(0, BM)  # [BM]
    m_i = o_i < qm
    if QGATHER:
        r_i = tl.load(qrows_ptr + qa + o_i, mask=m_i, other=0)
    else:
        r_i = qa + o_i
    if MODE == 2:
        g_i = tl.load(qgrp_ptr + qa + o_i, mask=m_i, other=0)
    p_i = x_ptr + r_i[:, None] * stride_x
    inv_i = tl.load(qinv_ptr + qa + o_i, mask=m_i, other=0.0)
    if MODE == 0:
        run = tl.zeros((BM,), dtype=tl.float32)
    else:
        run = tl.full((BM,), float("-inf"), dtype=tl.float32)
    for j0 in range(0, km, BN):
        o_j = j0 + tl.arange(0, BN)  # [BN]
        m_j = o_j < km
        if KGATHER:
            r_j = tl.load(krows_ptr + ka + o_j, mask=m_j, other=0)
        else:
            r_j = ka + o_j
        p_j = y_ptr + r_j[:, None] * stride_y
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(0, D, BK):
            o_k = k0 + tl.arange(0, BK)
            m_k = o_k < D
            b_i = tl.load(p_i + o_k[None, :], mask=m_i[:, None] & m_k[None, :], other=0.0)
            b_j = tl.load(p_j + o_k[None, :], mask=m_j[:, None] & m_k[None, :], other=0.0)
            acc = tl.dot(b_i, tl.trans(b_j), acc, input_precision=PREC)
        inv_j = tl.load(kinv_ptr + ka + o_j, mask=m_j, other=0.0)
        b_c = acc * inv_i[:, None] * inv_j[None, :]  # [BM, BN]
        ok = m_i[:, None] & m_j[None, :]
        if MODE == 0:
            run += tl.sum(tl.where(ok, b_c, 0.0), axis=1)
        else:
            if MODE == 2:
                g_j = tl.load(kgrp_ptr + ka + o_j, mask=m_j, other=0)
                ok = ok & (g_j[None, :] < g_i[:, None])
            if MODE == 3:
                ok = ok & (r_j[None, :] != r_i[:, None])
            run = tl.maximum(run, tl.max(tl.where(ok, b_c, float("-inf")), axis=1))
    if MODE == 0:
        res = run / tl.maximum(km, 1).to(tl.float32)
    else:
        res = run
    res = tl.where(km > 0, res, empty_value)
    tl.store(out_ptr + qa + o_i, res, mask=m_i)


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------
_SHARED: contextvars.ContextVar[Optional[dict]] = contextvars.ContextVar(
    "adaptive_prune_shared_inv_norms", default=None
)


@contextlib.contextmanager
def shared_inv_norms():
    """Inside this block :func:`row_inv_norms` computes the inverse norms of all rows of a tensor
    once and serves every later request for the same tensor (same storage, shape, strides,
    dtype and ``eps``) from them, gathering rows where asked: one pass over ``vision`` for all
    the greedy and refinement launchers of one ``prune`` call, with bitwise the same values
    (one kernel computes every row the same way). The tensors must not be written inside it;
    the method opens it around one call (``backends.call_scope``)."""
    token = _SHARED.set({})
    try:
        yield
    finally:
        _SHARED.reset(token)


def row_inv_norms(x: torch.Tensor, Q: int, eps: float, rows: Optional[torch.Tensor] = None):
    """``1 / max(||x[rows[q]]||, eps)`` (or of ``x[q]``) for ``q < Q``, fp32 ``[Q]`` (read-only
    inside :func:`shared_inv_norms`)."""
    cache = _SHARED.get()
    if cache is not None and Q > 0 and x.shape[0] > 0:
        key = (x.data_ptr(), tuple(x.shape), tuple(x.stride()), x.dtype, x.device, float(eps))
        if key not in cache:  # the tensor is kept alive, so its storage is not reused meanwhile
            cache[key] = (x, _inv_norms(x, x.shape[0], eps, None))
        full = cache[key][1]
        return full[rows[:Q]] if rows is not None else full[:Q]
    return _inv_norms(x, Q, eps, rows)


def _inv_norms(x: torch.Tensor, Q: int, eps: float, rows: Optional[torch.Tensor]):
    out = empty(max(Q, 1), torch.float32, x.device)
    if Q == 0:
        return out
    D = x.shape[1]
    BR = cfg("norm_rows")
    BD = min(cfg("norm_cols"), max(16, next_pow2(D)))
    with set_device(x.device):
        _row_inv_norm_kernel[(cdiv(Q, BR),)](
            x, rows if rows is not None else out, out, Q, D, x.stride(0), float(eps),
            GATHER=rows is not None, BR=BR, BD=BD, num_warps=4,
        )  # fmt: skip
    return out


def similarity_blocks(
    x: torch.Tensor,
    seg: Sequence[int],
    eps: float,
    rows: Optional[torch.Tensor] = None,
    what: str = "similarity blocks",
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Per-segment similarity blocks. ``seg`` = host offsets over ``rows`` (or over ``x``).

    Returns ``(S [sum m^2] fp32, base [n_seg] int64 on x's device, base host list [n_seg+1])``.
    ``what`` names the blocks in the error raised when the device cannot hold them.
    """
    x = kernel_input(x)
    dev = x.device
    if rows is not None:
        rows = rows.to(device=dev, dtype=torch.int64).contiguous()
    sizes = sizes_of(seg)
    bases = square_bases(sizes)
    try:
        out = empty(bases[-1], torch.float32, dev)
    except torch.OutOfMemoryError as exc:
        raise torch.OutOfMemoryError(
            f"adaptive_prune: the {what} ({len(sizes)} blocks of up to {max(sizes)} x "
            f"{max(sizes)} fp32, {bases[-1] * 4 / 2**30:.2f} GiB in all) do not fit on {dev}. "
            "The stage-2 pool block grows with the candidate pool: smaller `lam`/`gamma` "
            "(e.g. lam=3, gamma=1.5) shrink it; the CPU kernels need no blocks. "
            f"The allocator said: {exc}"
        ) from exc
    BM, BK, warps, stages = sim_config(x.dtype)
    cum = tile_cum(sizes, BM, square=True)
    seg_d, cum_d, base_d = pack([seg, cum, bases[:-1]], dev)
    n_seg = len(sizes)
    if cum[-1] == 0:
        return out, base_d, bases
    D = x.shape[1]
    BK = min(BK, max(16, next_pow2(D)))
    inv = row_inv_norms(x, seg[-1], eps, rows)
    with set_device(dev):
        _token_similarity_blocks_kernel[(cum[-1],)](
            x,
            rows if rows is not None else seg_d,
            seg_d,
            cum_d,
            base_d,
            inv,
            out,
            n_seg,
            D,
            x.stride(0),
            GATHER=rows is not None,
            BM=BM,
            BK=BK,
            BLOCK_N=min(1024, next_pow2(n_seg + 1)),
            PREC=dot_precision(x.dtype),
            num_warps=warps,
            num_stages=stages,
        )
    return out, base_d, bases


def token_similarity_fwd(
    x: torch.Tensor,
    q_offsets: torch.Tensor,
    y: torch.Tensor,
    k_offsets: torch.Tensor,
    mode: str,
    eps: float,
    *,
    q_rows: Optional[torch.Tensor] = None,
    k_rows: Optional[torch.Tensor] = None,
    q_groups: Optional[torch.Tensor] = None,
    k_groups: Optional[torch.Tensor] = None,
    empty_value: float = 0.0,
) -> torch.Tensor:
    """Row reductions of cosine similarity, one value per query row.

    Args:
        x: ``[Nx, D]`` query source; queries are ``x[q_rows]`` (or all rows of ``x``).
        q_offsets: ``[S+1]`` offsets over the queries (CPU: no host sync).
        y: ``[Ny, D]`` key source; keys are ``y[k_rows]`` (or all rows of ``y``).
        k_offsets: ``[S+1]`` offsets over the keys; segment ``s`` of queries meets segment
            ``s`` of keys only.
        mode: ``"mean"``, ``"max"``, ``"earlier_group_max"`` (needs ``q_groups``/``k_groups``,
            e.g. image ids) or ``"nearest_other_max"`` (keys that are not the query row).
    Returns:
        ``[Q]`` fp32.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
    x, y = kernel_input(x), kernel_input(y)
    if x.dtype != y.dtype:
        y = y.to(x.dtype)
    dev = x.device
    qo, ko = host_ints(q_offsets), host_ints(k_offsets)
    if len(qo) != len(ko):
        raise ValueError("q_offsets and k_offsets must have the same number of segments")
    Q = qo[-1]
    out = empty(Q, torch.float32, dev)
    if Q == 0:
        return out
    BM = cfg("rows_tile")
    ksizes = sizes_of(ko)
    BN = min(cfg("rows_keys"), max(16, next_pow2(max(ksizes + [1]))))
    cum = tile_cum(sizes_of(qo), BM)
    qseg, kseg, qcum = pack([qo, ko, cum], dev)
    D = x.shape[1]
    BK = min(cfg("reduce_k"), max(16, next_pow2(D)))
    m = MODES[mode]
    dummy = qseg
    q_rows = None if q_rows is None else q_rows.to(device=dev, dtype=torch.int64).contiguous()
    k_rows = None if k_rows is None else k_rows.to(device=dev, dtype=torch.int64).contiguous()
    q_groups = None if q_groups is None else q_groups.to(device=dev, dtype=torch.int64)
    k_groups = None if k_groups is None else k_groups.to(device=dev, dtype=torch.int64)
    q_inv = row_inv_norms(x, Q, eps, q_rows)
    k_inv = row_inv_norms(y, ko[-1], eps, k_rows)
    with set_device(dev):
        _token_similarity_reduce_kernel[(cum[-1],)](
            x,
            q_rows if q_rows is not None else dummy,
            qseg,
            qcum,
            y,
            k_rows if k_rows is not None else dummy,
            kseg,
            q_groups if q_groups is not None else dummy,
            k_groups if k_groups is not None else dummy,
            q_inv,
            k_inv,
            out,
            len(qo) - 1,
            D,
            x.stride(0),
            y.stride(0),
            float(empty_value),
            QGATHER=q_rows is not None,
            KGATHER=k_rows is not None,
            MODE=m,
            BM=BM,
            BN=BN,
            BK=BK,
            BLOCK_N=min(1024, next_pow2(len(qo))),
            PREC=dot_precision(x.dtype),
            num_warps=cfg("reduce_warps"),
        )
    return out


__all__ = ["similarity_blocks", "token_similarity_fwd", "MODES"]
