"""Stage 1: max-min (or max-sum) greedy selection inside every image, all images in one launch.

For image ``k`` with rows ``cu[k]:cu[k+1]`` (``m`` tokens) and budget ``b = min(budgets[k], m)``:

- first pick ``j_0 = argmax_i x̂_i . mu_k``; since ``mu_k = s_k / ||s_k||`` and
  ``x̂_i . s_k = sum_j S[i, j]``, this is the argmax of the row sums of the image's similarity
  block ``S = x̂ x̂^T`` (no extra pass over ``vision``);
- then ``acc_i = min over picked j of (1 - S[i, j])`` (``mode="maxmin"``) or the sum
  (``"maxsum"``), and ``j_t = argmax over unpicked i of acc_i``. Every argmax is the band rule
  (``_common.band_first``: the lowest index within ``PICK_TIE`` of the largest score; max-sum:
  ``PICK_TIE * t`` after ``t`` picks; the first pick on ``row sum / max(||s_k||, eps)``, the
  cosine scale, with ``||s_k||^2`` the sum of the row sums).

Output ``rank [N]`` int64: the step at which each token was picked inside its image, -1 if not.
Reference: :func:`adaptive_prune.reference.greedy_select`.

Launches: one similarity-block kernel (``token_similarity.similarity_blocks``: every image's
``m x m`` fp32 block, the only matrices written), then ``_greedy_select_kernel`` with **one
program per image**: the whole loop of ``b`` steps runs on the device, each step reading one
row of the block (``m`` floats). When ``m <= MAX_REG_BLOCK`` the running distances stay in
registers; longer images keep them in a global scratch and process chunks of ``BLOCK``.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._common import (
    MAX_REG_BLOCK,
    PICK_TIE,
    band_first,
    block_groups,
    cdiv,
    cfg,
    check_window,
    empty,
    engine_tile,
    first_at_least,
    greedy_warps,
    host_ints,
    kernel_input,
    next_pow2,
    pack,
    pick_engine,
    set_device,
    sizes_of,
    upload,
)
from ._engine import run_engine
from ._maxmin import maxmin_rounds
from .token_similarity import row_inv_norms, similarity_blocks


@triton.jit
def _block_row_sums(s_ptr, base, m, c0, BLOCK: tl.constexpr, BJ: tl.constexpr):
    """``sum_j S[j, c0 + o]`` for a chunk of ``BLOCK`` columns of an ``m x m`` block (equal to
    the row sums: the blocks are exactly symmetric). Invalid lanes are ``-inf``."""
    o = c0 + tl.arange(0, BLOCK)
    valid = o < m
    rs = tl.zeros((BLOCK,), dtype=tl.float32)
    for j0 in range(0, m, BJ):
        o_j = j0 + tl.arange(0, BJ)
        p = s_ptr + base + o_j[:, None] * m + o[None, :]  # [BJ, BLOCK]
        rs += tl.sum(tl.load(p, mask=(o_j < m)[:, None] & valid[None, :], other=0.0), axis=0)
    return tl.where(valid, rs, float("-inf"))


@triton.jit
def _first_pick_chunked(s_ptr, base, m, eps, sc_ptr, rank_ptr, BLOCK: tl.constexpr,
                        BJ: tl.constexpr):  # fmt: skip
    """The first pick of an image too long for registers: the row sums go to the scratch
    ``sc_ptr [m]`` (and ``rank`` is set to -1), then the band rule on ``row sum / max(||s||,
    eps)`` (``||s||^2 = sum of the row sums``) in a second pass over the scratch."""
    o = tl.arange(0, BLOCK)
    best_v = tl.full((), float("-inf"), tl.float32)
    for c0 in range(0, m, BLOCK):
        oc = c0 + o
        vc = oc < m
        tl.store(rank_ptr + oc, tl.full((BLOCK,), -1, dtype=tl.int64), mask=vc)
        rs = _block_row_sums(s_ptr, base, m, c0, BLOCK, BJ)
        tl.store(sc_ptr + oc, rs, mask=vc)
        best_v = tl.maximum(best_v, tl.max(rs, axis=0))
    tl.debug_barrier()
    tot = tl.zeros((BLOCK,), dtype=tl.float32)  # ||s||^2: a pass of its own (registers)
    for c0 in range(0, m, BLOCK):
        oc = c0 + o
        tot += tl.load(sc_ptr + oc, mask=oc < m, other=0.0)
    ns = tl.maximum(tl.sqrt_rn(tl.maximum(tl.sum(tot, axis=0), 0.0)), eps)
    # max(rs / ns) = max(rs) / ns (rounding is monotone); rs >= ns * thr is not: divide again
    thr = tl.div_rn(best_v, ns) - PICK_TIE
    o_best = tl.full((), 2**62, tl.int64)
    for c0 in range(0, m, BLOCK):
        oc = c0 + o
        vc = oc < m
        rs = tl.load(sc_ptr + oc, mask=vc, other=float("-inf"))
        hit = vc & (tl.div_rn(rs, ns) >= thr)
        o_best = tl.minimum(o_best, tl.min(tl.where(hit, oc.to(tl.int64), 2**62), axis=0))
    tl.debug_barrier()
    return o_best


@triton.jit
def _image(cu_ptr, bud_ptr, base_ptr, i_g):
    """Image ``i_g``'s first row, size, budget (at most its size) and block start."""
    a = tl.load(cu_ptr + i_g)
    m = tl.load(cu_ptr + i_g + 1) - a
    return a, m, tl.minimum(tl.load(bud_ptr + i_g), m), tl.load(base_ptr + i_g)


@triton.jit
def _greedy_select_kernel(
    s_ptr,  # [sum m^2] fp32 similarity blocks
    base_ptr,  # [n] int64 block starts
    cu_ptr,  # [n+1] int64 image offsets
    bud_ptr,  # [n] int64 budgets
    rank_ptr,  # [N] int64 out
    acc_ptr,  # [N] fp32 scratch (chunked path only)
    eps,
    MAXSUM: tl.constexpr,
    SINGLE: tl.constexpr,
    BLOCK: tl.constexpr,
    BJ: tl.constexpr,
):
    i_g = tl.program_id(0).to(tl.int64)
    a, m, b, base = _image(cu_ptr, bud_ptr, base_ptr, i_g)
    o = tl.arange(0, BLOCK)
    if SINGLE:
        valid = o < m
        rs = _block_row_sums(s_ptr, base, m, 0, BLOCK, BJ)
        ns = tl.maximum(tl.sqrt_rn(tl.maximum(tl.sum(tl.where(valid, rs, 0.0), axis=0), 0.0)), eps)
        j = band_first(tl.div_rn(rs, ns), o, PICK_TIE)
        if MAXSUM:
            acc = tl.where(valid, 0.0, float("-inf"))
        else:
            acc = tl.where(valid, float("inf"), float("-inf"))
        b_rank = tl.full((BLOCK,), -1, dtype=tl.int64)
        for step in range(0, b):
            row = tl.load(s_ptr + base + j * m + o, mask=valid, other=0.0)
            if MAXSUM:
                acc = acc + (1.0 - row)
            else:
                acc = tl.minimum(acc, 1.0 - row)
            hit = o == j
            acc = tl.where(hit, float("-inf"), acc)
            b_rank = tl.where(hit, step, b_rank)
            if MAXSUM:  # acc sums step + 1 distances
                j = band_first(acc, o, (tl.zeros((), tl.float32) + (step + 1)) * PICK_TIE)
            else:
                j = band_first(acc, o, PICK_TIE)
        tl.store(rank_ptr + a + o, b_rank, mask=valid)
    else:
        j = _first_pick_chunked(s_ptr, base, m, eps, acc_ptr + a, rank_ptr + a, BLOCK, BJ)
        for c0 in range(0, m, BLOCK):
            oc = c0 + o
            vc = oc < m
            if MAXSUM:
                init = tl.zeros((BLOCK,), dtype=tl.float32)
            else:
                init = tl.full((BLOCK,), float("inf"), dtype=tl.float32)
            tl.store(acc_ptr + a + oc, init, mask=vc)
        tl.debug_barrier()
        for step in range(0, b):
            tl.store(rank_ptr + a + j, tl.zeros((), dtype=tl.int64) + step)
            best_v = tl.full((), float("-inf"), tl.float32)
            for c0 in range(0, m, BLOCK):
                oc = c0 + o
                vc = oc < m
                row = tl.load(s_ptr + base + j * m + oc, mask=vc, other=0.0)
                acc = tl.load(acc_ptr + a + oc, mask=vc, other=float("-inf"))
                if MAXSUM:
                    acc = acc + (1.0 - row)
                else:
                    acc = tl.minimum(acc, 1.0 - row)
                acc = tl.where((oc == j) | (~vc), float("-inf"), acc)
                tl.store(acc_ptr + a + oc, acc, mask=vc)
                best_v = tl.maximum(best_v, tl.max(acc, axis=0))
            tl.debug_barrier()
            if MAXSUM:  # acc sums step + 1 distances
                thr = best_v - (tl.zeros((), tl.float32) + (step + 1)) * PICK_TIE
            else:
                thr = best_v - PICK_TIE
            j = first_at_least(acc_ptr + a, m, thr, BLOCK)
            tl.debug_barrier()


@triton.jit
def _greedy_select_window_kernel(
    s_ptr,  # [sum m^2] fp32 similarity blocks
    base_ptr,  # [n] int64 block starts
    cu_ptr,  # [n+1] int64 image offsets
    bud_ptr,  # [n] int64 budgets
    rank_ptr,  # [N] int64 out
    acc_ptr,  # [N] fp32 scratch: running distances
    win_ptr,  # [n * L] int64 scratch
    wv_ptr,  # [n * L] fp32 scratch
    stats_ptr,  # [n, 2] int64 rounds and passes (STATS only)
    eps,
    BLOCK: tl.constexpr,
    BJ: tl.constexpr,
    L: tl.constexpr,
    STATS: tl.constexpr,
):
    """Max-min mode with the windowed engine (``_maxmin.maxmin_rounds``): same ranks."""
    i_g = tl.program_id(0).to(tl.int64)
    a, m, b, base = _image(cu_ptr, bud_ptr, base_ptr, i_g)
    o = tl.arange(0, BLOCK)
    j = _first_pick_chunked(s_ptr, base, m, eps, acc_ptr + a, rank_ptr + a, BLOCK, BJ)
    if b > 0:
        tl.debug_barrier()
        tl.store(rank_ptr + a + j, tl.zeros((), dtype=tl.int64))
        for c0 in range(0, m, BLOCK):
            oc = c0 + o
            vc = oc < m
            row = tl.load(s_ptr + base + j * m + oc, mask=vc, other=0.0)
            acc = tl.where(oc == j, float("-inf"), 1.0 - row)
            tl.store(acc_ptr + a + oc, acc, mask=vc)
        tl.debug_barrier()
        maxmin_rounds(
            s_ptr,
            base,
            m,
            acc_ptr + a,
            win_ptr + i_g * L,
            wv_ptr + i_g * L,
            rank_ptr + a,
            wv_ptr,
            1,
            b - 1,
            stats_ptr + i_g * 2,
            RANK=True,
            STATS=STATS,
            BLOCK=BLOCK,
            L=L,
        )


@triton.jit
def _first_pick_kernel(
    x_ptr,  # [N, D]
    inv_ptr,  # [N] fp32 inverse norms
    cu_ptr,  # [n+1] int64
    bud_ptr,  # [n] int64
    s_ptr,  # [n, D] fp32 scratch: the images' sums of x̂
    rank_ptr,  # [N] int64 out: -1, and 0 at the first pick
    lst_ptr,  # [n] int64 out: the first pick (local), the row engine's initial list
    lcnt_ptr,  # [n] int64 out: 1, or 0 without a pick
    steps_ptr,  # [n] int64 out: the picks after the first
    sc_ptr,  # [N] fp32 scratch: the first-pick scores
    D,
    stride_x,
    eps,
    BR: tl.constexpr,
    BD: tl.constexpr,
):
    """Row engine prologue, one program per image: ``j_0 = argmax_i x̂_i . mu_k`` (the band
    rule: the lowest index within ``PICK_TIE``) from two passes over the image's rows and one
    over the scores, no block."""
    i_g = tl.program_id(0).to(tl.int64)
    a = tl.load(cu_ptr + i_g)
    m = tl.load(cu_ptr + i_g + 1) - a
    b = tl.minimum(tl.load(bud_ptr + i_g), m)
    o_r = tl.arange(0, BR)
    for d0 in range(0, D, BD):
        o_d = d0 + tl.arange(0, BD)
        col = tl.zeros((BD,), dtype=tl.float32)
        for r0 in range(0, m, BR):
            m_r = r0 + o_r < m
            xb = tl.load(
                x_ptr + (a + r0 + o_r)[:, None] * stride_x + o_d[None, :],
                mask=m_r[:, None] & (o_d < D)[None, :],
                other=0.0,
            ).to(tl.float32)
            inv = tl.load(inv_ptr + a + r0 + o_r, mask=m_r, other=0.0)
            col += tl.sum(xb * inv[:, None], axis=0)
        tl.store(s_ptr + i_g * D + o_d, col, mask=o_d < D)
    tl.debug_barrier()
    ssq = tl.zeros((BD,), dtype=tl.float32)
    for d0 in range(0, D, BD):
        o_d = d0 + tl.arange(0, BD)
        sv = tl.load(s_ptr + i_g * D + o_d, mask=o_d < D, other=0.0)
        ssq += sv * sv
    ns = tl.maximum(tl.sqrt_rn(tl.sum(ssq, axis=0)), eps)
    best_v = tl.full((), float("-inf"), tl.float32)
    for r0 in range(0, m, BR):
        m_r = r0 + o_r < m
        sc = tl.zeros((BR,), dtype=tl.float32)
        for d0 in range(0, D, BD):
            o_d = d0 + tl.arange(0, BD)
            xb = tl.load(
                x_ptr + (a + r0 + o_r)[:, None] * stride_x + o_d[None, :],
                mask=m_r[:, None] & (o_d < D)[None, :],
                other=0.0,
            ).to(tl.float32)
            sv = tl.load(s_ptr + i_g * D + o_d, mask=o_d < D, other=0.0)
            sc += tl.sum(xb * sv[None, :], axis=1)
        inv = tl.load(inv_ptr + a + r0 + o_r, mask=m_r, other=0.0)
        sc = tl.where(m_r, tl.div_rn(sc * inv, ns), float("-inf"))  # x̂_i . mu_k
        tl.store(sc_ptr + a + r0 + o_r, sc, mask=m_r)
        tl.store(rank_ptr + a + r0 + o_r, tl.full((BR,), -1, tl.int64), mask=m_r)
        best_v = tl.maximum(best_v, tl.max(sc, axis=0))
    tl.debug_barrier()
    best_i = first_at_least(sc_ptr + a, m, best_v - PICK_TIE, BR)  # the band rule
    best_i = tl.where(m > 0, best_i, 0)
    tl.store(rank_ptr + a + best_i, tl.zeros((), dtype=tl.int64), mask=b > 0)
    tl.store(lst_ptr + i_g, best_i)
    tl.store(lcnt_ptr + i_g, (b > 0).to(tl.int64))
    tl.store(steps_ptr + i_g, tl.maximum(b - 1, 0))


def _rows_engine(vision, cu, budgets, eps, window, block, stats, dist, persistent=None,
                 sketch_dim=0):  # fmt: skip
    """Stage 1's max-min greedy by the row engine (``_engine.py``): no similarity block."""
    x = kernel_input(vision)
    dev = x.device
    N, D = x.shape
    n = len(cu) - 1
    rank = empty(N, torch.int64, dev)
    (cu_d,) = pack([cu], dev)
    bud = upload(budgets, dev)
    inv = row_inv_norms(x, N, eps)
    zeros = torch.zeros(6, n, dtype=torch.int64, device=dev)
    lst, lcnt, steps, done, shift, loff = zeros
    loff.copy_(torch.arange(n, device=dev))
    s_scr = empty((n, D), torch.float32, dev)
    with set_device(dev):
        _first_pick_kernel[(n,)](
            x, inv, cu_d, bud, s_scr, rank, lst, lcnt, steps, empty(N, torch.float32, dev), D,
            x.stride(0), float(eps),
            BR=32, BD=min(128, max(16, next_pow2(D))), num_warps=4,
        )  # fmt: skip
    state = dict(lst=lst, loff=loff, lcnt=lcnt, shift=shift, steps=steps, done=done,
                 out=rank, gain=inv, obase=cu_d, vbase=torch.ones_like(lst))  # fmt: skip
    info = {} if stats is not None else None
    te = engine_tile(block, window, sizes_of(cu), dev)
    acc = run_engine(x, None, inv, cu, state, rank=True, window=window, tile=te, stats=info,
                     persistent=persistent, sketch_dim=sketch_dim)  # fmt: skip
    if stats is not None:
        stats.zero_()
        stats[:, 0] = info.get("rounds", torch.zeros(n, dtype=torch.int64, device=dev))
        stats[:, 1] = _per_segment(info, cu, te)
        if stats.shape[1] > 2 and "scans" in info:  # rounds that picked by the fallback scan
            stats[:, 2] = info["scans"]
        if stats.shape[1] > 3:  # (entry, pick) pairs the sketch bound skipped
            stats[:, 3] = _per_segment(info, cu, te, "tile_skipped")
    if dist is not None:
        dist.copy_(acc[:N])
    return rank


def _per_segment(info, seg, te, key="tile_work"):
    """Sum of the tiles' work (or ``key``) counters per segment (benchmarks)."""
    out = []
    t = 0
    work = info.get(key)
    for g in range(len(seg) - 1):
        nt = cdiv(seg[g + 1] - seg[g], te)
        out.append(int(work[t : t + nt].sum()) if work is not None and nt else 0)
        t += nt
    return torch.tensor(out, dtype=torch.int64)


def greedy_select_fwd(
    vision: torch.Tensor,
    cu_seqlens: torch.Tensor,
    budgets: torch.Tensor,
    mode: str,
    eps: float,
    *,
    block: Optional[int] = None,
    window: Optional[int] = None,
    block_budget_mb: Optional[float] = None,
    stats: Optional[torch.Tensor] = None,
    engine: Optional[str] = None,
    dist: Optional[torch.Tensor] = None,
    persistent: Optional[bool] = None,
    sketch_dim: int = 0,
) -> torch.Tensor:
    """``adaptive_prune::greedy_select`` on the device. Returns ``rank [N]`` int64.

    ``cu_seqlens`` may be on the CPU (no host sync) or on the device (one sync to read it).
    ``block`` forces the lane count per program (tests use a small one to run the chunked path).
    ``window``: picks per round of the max-min engine (default ``DEFAULT_WINDOW``, 64; 0 = one
    pick per step). Max-sum always runs one pick per step. ``stats``: an ``[n, 2]`` int64 device
    tensor that receives every image's rounds and passes over its distances (windowed engine only;
    benchmarks). ``engine``: ``"auto"`` (default: ``"rows"`` when the largest image's block exceeds
    ``block_budget_mb``, else ``"blocks"``), ``"blocks"`` or ``"rows"`` (``_engine.py``: no
    similarity block; max-min only, with a window; ``stats`` then receives rounds and the (entry,
    pick) distances computed, a third column the rounds picked by the fallback scan, a fourth the
    pairs the sketch bound skipped; ``dist [N]`` fp32, if given, every unpicked token's final
    running distance, ``-inf`` for picks; ``persistent``: force the one-launch loop on or off,
    default on a GPU; ``sketch_dim``: 0 (off), 16 or 32, the row engine's sketch bound, same
    results).
    """
    if mode not in ("maxmin", "maxsum"):
        raise ValueError(f"mode must be 'maxmin' or 'maxsum', got {mode!r}")
    cu = host_ints(cu_seqlens)
    engine = pick_engine(engine, sizes_of(cu), block_budget_mb)
    if engine == "rows" and mode == "maxmin" and check_window(window) and vision.shape[0]:
        if len(cu) > 1:
            w = check_window(window)
            return _rows_engine(vision, cu, budgets, eps, w, block, stats, dist, persistent,
                                sketch_dim)  # fmt: skip
    dev = vision.device
    N = vision.shape[0]
    rank = empty(N, torch.int64, dev)
    n = len(cu) - 1
    if N == 0 or n == 0:
        return rank.fill_(-1)
    groups = block_groups(sizes_of(cu), block_budget_mb)
    if len(groups) > 1:  # the blocks of all images exceed the budget: a group at a time
        for a, b in groups:
            rank[cu[a] : cu[b]] = greedy_select_fwd(
                vision[cu[a] : cu[b]],
                torch.tensor([c - cu[a] for c in cu[a : b + 1]], dtype=torch.int64),
                budgets[a:b],
                mode,
                eps,
                block=block,
                window=window,
                block_budget_mb=block_budget_mb,
                stats=stats[a:b] if stats is not None else None,
                engine="blocks",
            )
        return rank
    S, base_d, _ = similarity_blocks(vision, cu, eps, what="stage-1 per-image similarity blocks")
    cu_d = upload(cu, dev)
    bud = upload(budgets, dev)
    max_m = max(sizes_of(cu))
    window = check_window(window)
    if window and mode == "maxmin" and block is None:  # engine passes: chunks of the scratch
        block = min(next_pow2(max_m), cfg("window_chunk"))
    if block is None:
        block = next_pow2(max_m) if max_m <= MAX_REG_BLOCK else 4096
    block = max(16, int(block))
    single = max_m <= block
    if window and mode == "maxmin":
        acc = empty((N,), torch.float32, dev)
        win = empty((n * window,), torch.int64, dev)
        wv = empty((n * window,), torch.float32, dev)
        if stats is not None:  # [n, 2] int64: rounds and passes over acc of every program
            stats.zero_()
        with set_device(dev):
            _greedy_select_window_kernel[(n,)](
                S if S.numel() else acc,
                base_d,
                cu_d,
                bud,
                rank,
                acc,
                win,
                wv,
                stats if stats is not None else win,
                float(eps),
                BLOCK=block,
                BJ=max(1, min(64, 8192 // block)),
                L=window,
                STATS=stats is not None,
                num_warps=greedy_warps(block),
            )
        return rank
    acc = empty((N if not single else 1,), torch.float32, dev)
    with set_device(dev):
        _greedy_select_kernel[(n,)](
            S if S.numel() else acc,
            base_d,
            cu_d,
            bud,
            rank,
            acc,
            float(eps),
            MAXSUM=mode == "maxsum",
            SINGLE=single,
            BLOCK=block,
            BJ=max(1, min(64, 8192 // block)),
            num_warps=greedy_warps(block),
        )
    return rank


__all__ = ["greedy_select_fwd"]
