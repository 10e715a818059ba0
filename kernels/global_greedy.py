"""Stage 2 diversity filter: max-min greedy over each request's pool, recording gains.

Request ``r`` owns pool positions ``off[r]:off[r+1]`` (``K_r`` rows ``pool[...]`` of
``vision``) and returns ``P_r = num_picks[r]`` entries at ``order[sum_{s<r} P_s ...]``:

- first its reserved positions in pool order, with gain ``+inf``;
- then greedy picks: ``acc_i = min over picked j of (1 - x̂_i . x̂_j)`` (the picked set starts
  as the reserved tokens; without any, ``acc = +inf`` and the first pick is position 0), and
  ``j = argmax over unpicked i of acc_i`` by the band rule (``_common.band_first``: the lowest
  pool position within ``PICK_TIE`` of the largest); the pick's gain is ``acc_j`` at that
  moment.

Shapes: ``vision [N, D]``, ``pool [K]`` int64, ``pool_offsets [R+1]``, ``reserved [K]`` bool;
outputs ``order [sum P]`` int64 (global pool positions), ``gains [sum P]`` fp32 and ``dist [K]``
fp32 (every pool position's distance to the nearest chain entry of its request in its own group,
``0`` on the chain, ``+inf`` where the group has none: the row engine's final running minima,
else computed with torch after the chain, see ``_chain_dist``).
Reference: :func:`adaptive_prune.reference.global_greedy`.

Launches: the request's ``K_r x K_r`` similarity block (``token_similarity.similarity_blocks``
with the pool rows gathered), then ``_global_greedy_kernel`` with **one program per request**
running all of its ``P_r`` steps on the device (one block row read per step). The block is the
rows the greedy reads (``O(K_r^2 D)`` flops, ``4 K_r^2`` bytes): no matrix over all requests
and no host round trip per step.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from ._common import (
    MAX_REG_BLOCK,
    PICK_TIE,
    band_first,
    block_groups,
    cfg,
    check_window,
    empty,
    engine_tile,
    first_at_least,
    greedy_warps,
    group_ids,
    host_ints,
    kernel_input,
    next_pow2,
    pack,
    pick_engine,
    set_device,
    sizes_of,
)
from ._engine import run_engine
from ._maxmin import maxmin_rounds
from .token_similarity import row_inv_norms, similarity_blocks


@triton.jit
def _request(off_ptr, picks_ptr, ooff_ptr, base_ptr, i_r):
    """Request ``i_r``'s pool start and size, picks, output offset and block start."""
    a = tl.load(off_ptr + i_r)
    return (
        a,
        tl.load(off_ptr + i_r + 1) - a,
        tl.load(picks_ptr + i_r),
        tl.load(ooff_ptr + i_r),
        tl.load(base_ptr + i_r),
    )


@triton.jit
def _reserved_first(res_ptr, a, K, P, order_ptr, gain_ptr, BLOCK: tl.constexpr):
    """Write the request's reserved positions (pool order, gain +inf) at the start of its
    output (at most ``P``); return how many there are."""
    o = tl.arange(0, BLOCK)
    n_res = tl.zeros((), dtype=tl.int64)
    for c0 in range(0, K, BLOCK):
        oc = c0 + o
        rv = tl.load(res_ptr + a + oc, mask=oc < K, other=0).to(tl.int64)
        pos = n_res + tl.cumsum(rv, axis=0) - rv
        w = (rv > 0) & (pos < P)
        tl.store(order_ptr + pos, a + oc, mask=w)
        tl.store(gain_ptr + pos, tl.full((BLOCK,), float("inf"), tl.float32), mask=w)
        n_res += tl.sum(rv, axis=0)
    return n_res


@triton.jit
def _global_greedy_kernel(
    s_ptr,  # [sum K_r^2] fp32 pool similarity blocks
    base_ptr,  # [R] int64
    off_ptr,  # [R+1] int64 pool offsets
    res_ptr,  # [K] uint8 reserved mask
    picks_ptr,  # [R] int64 P_r
    ooff_ptr,  # [R+1] int64 output offsets
    order_ptr,  # [sum P] int64 out
    gain_ptr,  # [sum P] fp32 out
    acc_ptr,  # [K] fp32 scratch (chunked path only)
    SINGLE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    i_r = tl.program_id(0).to(tl.int64)
    a, K, P, o0, base = _request(off_ptr, picks_ptr, ooff_ptr, base_ptr, i_r)
    o = tl.arange(0, BLOCK)

    n_res = _reserved_first(res_ptr, a, K, P, order_ptr + o0, gain_ptr + o0, BLOCK)
    steps = tl.minimum(P, K) - n_res
    tl.debug_barrier()

    if SINGLE:
        valid = o < K
        acc = tl.where(valid, float("inf"), float("-inf"))
        if steps > 0:
            for t in range(0, n_res):
                jr = tl.load(order_ptr + o0 + t) - a
                row = tl.load(s_ptr + base + jr * K + o, mask=valid, other=0.0)
                acc = tl.minimum(acc, 1.0 - row)
        rv = tl.load(res_ptr + a + o, mask=valid, other=0)
        acc = tl.where(rv != 0, float("-inf"), acc)
        for step in range(0, steps):
            j = band_first(acc, o, PICK_TIE)
            v = tl.max(tl.where(o == j, acc, float("-inf")), axis=0)
            tl.store(order_ptr + o0 + n_res + step, a + j)
            tl.store(gain_ptr + o0 + n_res + step, v)
            row = tl.load(s_ptr + base + j * K + o, mask=valid, other=0.0)
            acc = tl.minimum(acc, 1.0 - row)
            acc = tl.where(o == j, float("-inf"), acc)
    else:
        best_v = tl.full((), float("-inf"), tl.float32)
        for c0 in range(0, K, BLOCK):
            oc = c0 + o
            vc = oc < K
            acc = tl.where(vc, float("inf"), float("-inf"))
            if steps > 0:
                for t in range(0, n_res):
                    jr = tl.load(order_ptr + o0 + t) - a
                    row = tl.load(s_ptr + base + jr * K + oc, mask=vc, other=0.0)
                    acc = tl.minimum(acc, 1.0 - row)
            rv = tl.load(res_ptr + a + oc, mask=vc, other=0)
            acc = tl.where(rv != 0, float("-inf"), acc)
            tl.store(acc_ptr + a + oc, acc, mask=vc)
            best_v = tl.maximum(best_v, tl.max(acc, axis=0))
        tl.debug_barrier()
        j = first_at_least(acc_ptr + a, K, best_v - PICK_TIE, BLOCK)
        tl.debug_barrier()
        for step in range(0, steps):
            g = tl.load(acc_ptr + a + j)
            tl.store(order_ptr + o0 + n_res + step, a + j)
            tl.store(gain_ptr + o0 + n_res + step, g)
            best_v = tl.full((), float("-inf"), tl.float32)
            for c0 in range(0, K, BLOCK):
                oc = c0 + o
                vc = oc < K
                row = tl.load(s_ptr + base + j * K + oc, mask=vc, other=0.0)
                acc = tl.load(acc_ptr + a + oc, mask=vc, other=float("-inf"))
                acc = tl.minimum(acc, 1.0 - row)
                acc = tl.where((oc == j) | (~vc), float("-inf"), acc)
                tl.store(acc_ptr + a + oc, acc, mask=vc)
                best_v = tl.maximum(best_v, tl.max(acc, axis=0))
            tl.debug_barrier()
            j = first_at_least(acc_ptr + a, K, best_v - PICK_TIE, BLOCK)
            tl.debug_barrier()


@triton.jit
def _global_greedy_window_kernel(
    s_ptr,  # [sum K_r^2] fp32 pool similarity blocks
    base_ptr,  # [R] int64
    off_ptr,  # [R+1] int64 pool offsets
    res_ptr,  # [K] uint8 reserved mask
    picks_ptr,  # [R] int64 P_r
    ooff_ptr,  # [R+1] int64 output offsets
    order_ptr,  # [sum P] int64 out
    gain_ptr,  # [sum P] fp32 out
    acc_ptr,  # [K] fp32 scratch: running distances
    win_ptr,  # [R * L] int64 scratch
    wv_ptr,  # [R * L] fp32 scratch
    stats_ptr,  # [R, 2] int64 rounds and passes (STATS only)
    BLOCK: tl.constexpr,
    L: tl.constexpr,
    STATS: tl.constexpr,
):
    """The same outputs as ``_global_greedy_kernel``, greedy steps by the windowed engine."""
    i_r = tl.program_id(0).to(tl.int64)
    a, K, P, o0, base = _request(off_ptr, picks_ptr, ooff_ptr, base_ptr, i_r)
    o = tl.arange(0, BLOCK)

    n_res = _reserved_first(res_ptr, a, K, P, order_ptr + o0, gain_ptr + o0, BLOCK)
    steps = tl.minimum(P, K) - n_res
    tl.debug_barrier()
    if steps > 0:
        # running distances from the reserved rows (+inf without any), reserved ones out
        for c0 in range(0, K, BLOCK):
            oc = c0 + o
            vc = oc < K
            acc = tl.where(vc, float("inf"), float("-inf"))
            for t in range(0, n_res):
                jr = tl.load(order_ptr + o0 + t) - a
                row = tl.load(s_ptr + base + jr * K + oc, mask=vc, other=0.0)
                acc = tl.minimum(acc, 1.0 - row)
            rv = tl.load(res_ptr + a + oc, mask=vc, other=0)
            acc = tl.where(rv != 0, float("-inf"), acc)
            tl.store(acc_ptr + a + oc, acc, mask=vc)
        tl.debug_barrier()
        maxmin_rounds(
            s_ptr,
            base,
            K,
            acc_ptr + a,
            win_ptr + i_r * L,
            wv_ptr + i_r * L,
            order_ptr + o0 + n_res,
            gain_ptr + o0 + n_res,
            a,
            steps,
            stats_ptr + i_r * 2,
            RANK=False,
            STATS=STATS,
            BLOCK=BLOCK,
            L=L,
        )


@triton.jit
def _rows_prologue_kernel(
    off_ptr,  # [R+1] int64 pool offsets
    res_ptr,  # [K] uint8 reserved mask
    picks_ptr,  # [R] int64 P_r
    ooff_ptr,  # [R+1] int64 output offsets
    order_ptr,  # [sum P] int64 out: the reserved positions first
    gain_ptr,  # [sum P] fp32 out
    lcnt_ptr,  # [R] int64 out: reserved rows the engine applies first
    steps_ptr,  # [R] int64 out: greedy picks after the reserved ones
    obase_ptr,  # [R] int64 out: output slot of the first greedy pick
    BLOCK: tl.constexpr,
):
    """Row engine prologue, one program per request: the reserved positions (pool order, gain
    +inf) and the engine's initial list (those same output entries, pool positions)."""
    i_r = tl.program_id(0).to(tl.int64)
    a = tl.load(off_ptr + i_r)
    K = tl.load(off_ptr + i_r + 1) - a
    P = tl.load(picks_ptr + i_r)
    o0 = tl.load(ooff_ptr + i_r)
    n_res = _reserved_first(res_ptr, a, K, P, order_ptr + o0, gain_ptr + o0, BLOCK)
    steps = tl.maximum(tl.minimum(P, K) - n_res, 0)
    tl.store(lcnt_ptr + i_r, n_res)  # applied even without steps: the final distances need them
    tl.store(steps_ptr + i_r, steps)
    tl.store(obase_ptr + i_r, o0 + n_res)


def _rows_engine(vision, po, go, pool, reserved, picks, ooff, eps, window, block, stats, order,
                 gains, persistent=None, plan_only=False, sketch_dim=0):  # fmt: skip
    """Stage 2's greedy by the row engine (``_engine.py``): no pool block; with groups
    (``go != po``) every pool entry carries its group id and cross-group distances are
    ``+inf``."""
    x = kernel_input(vision)
    dev = x.device
    R = len(po) - 1
    Q = po[-1]
    pool = pool.to(device=dev, dtype=torch.int64).contiguous()
    res = reserved.to(device=dev, dtype=torch.bool).contiguous().view(torch.uint8)
    off_d, picks_d, ooff_d = pack([po, picks, ooff], dev)
    inv = row_inv_norms(x, Q, eps, pool)
    lcnt, steps, obase, done = torch.zeros(4, R, dtype=torch.int64, device=dev)
    with set_device(dev):
        _rows_prologue_kernel[(R,)](
            off_d, res, picks_d, ooff_d, order, gains, lcnt, steps, obase,
            BLOCK=min(cfg("window_chunk"), next_pow2(max(sizes_of(po)))), num_warps=4,
        )  # fmt: skip
    state = dict(lst=order, loff=ooff_d, lcnt=lcnt, shift=off_d, steps=steps, done=done,
                 out=order, gain=gains, obase=obase, vbase=off_d)  # fmt: skip
    info = {} if stats is not None else None
    te = engine_tile(block, window, sizes_of(po), dev)
    gid = None
    if go != po:
        gid = group_ids(go, dev)
    if plan_only:  # tests: the prologue has run; the engine's one launch, to capture
        _, launch = run_engine(x, pool, inv, po, state, rank=False, window=window, tile=te,
                               persistent=True, gid=gid, plan_only=True,
                               sketch_dim=sketch_dim)  # fmt: skip
        return order, gains, launch
    acc = run_engine(x, pool, inv, po, state, rank=False, window=window, tile=te, stats=info,
                     persistent=persistent, gid=gid, sketch_dim=sketch_dim)  # fmt: skip
    if stats is not None:
        from .greedy_select import _per_segment

        stats.zero_()
        stats[:, 0] = info.get("rounds", torch.zeros(R, dtype=torch.int64, device=dev))
        stats[:, 1] = _per_segment(info, po, te)
        if stats.shape[1] > 2 and "scans" in info:  # rounds that picked by the fallback scan
            stats[:, 2] = info["scans"]
        if stats.shape[1] > 3:  # (entry, pick) pairs the sketch bound skipped
            stats[:, 3] = _per_segment(info, po, te, "tile_skipped")
    # every entry's final running minimum: -inf on the chain (0 there), +inf where its group
    # has no chain entry
    dist = acc[:Q].masked_fill(acc[:Q] == float("-inf"), 0.0)
    return order, gains, dist


def _chain_dist(vision, pool, po, go, order, ooff, eps) -> torch.Tensor:
    """``dist [K]`` fp32 from the chain ``order``: per request, ``1 - x̂_i . x̂_j`` of its pool
    rows to its chain entries (``+inf`` across groups), the minimum over the entries, ``0`` on
    the chain, ``+inf`` where the group has no entry. One ``K_r x P_r`` product per request
    (torch), for the block engines, whose running minima stop before the last pick and skip
    requests without greedy steps (the row engine returns its own)."""
    dev = vision.device
    K = po[-1]
    dist = torch.full((K,), float("inf"), dtype=torch.float32, device=dev)
    if K == 0:
        return dist
    pool = pool.to(device=dev, dtype=torch.int64)
    gid = group_ids(go, dev)
    for r in range(len(po) - 1):
        a, e, o0, o1 = po[r], po[r + 1], ooff[r], ooff[r + 1]
        if o1 == o0 or e == a:
            continue
        ch = order[o0:o1]
        x = vision[pool[a:e]].float()
        xh = x / x.norm(dim=1, keepdim=True).clamp_min(eps)
        d = (1.0 - xh @ xh[ch - a].T).masked_fill(gid[a:e, None] != gid[ch][None, :], float("inf"))
        dr = d.amin(dim=1)
        dr[ch - a] = 0.0
        dist[a:e] = dr
    return dist


def global_greedy_fwd(
    vision: torch.Tensor,
    pool: torch.Tensor,
    pool_offsets: torch.Tensor,
    reserved: torch.Tensor,
    num_picks: Sequence[int],
    eps: float,
    group_offsets: Optional[torch.Tensor] = None,
    *,
    block: Optional[int] = None,
    window: Optional[int] = None,
    block_budget_mb: Optional[float] = None,
    stats: Optional[torch.Tensor] = None,
    engine: Optional[str] = None,
    persistent: Optional[bool] = None,
    sketch_dim: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``adaptive_prune::global_greedy`` on the device: ``(order [sum P] int64, gains fp32,
    dist [K] fp32)`` (``dist``: see the module docstring).

    ``pool_offsets`` may be on the CPU (no host sync) or on the device (one sync to read it).
    ``block`` forces the lane count per program; ``window``: picks per round of the max-min
    engine (default ``DEFAULT_WINDOW``, 64; 0 = one pick per step). Same outputs either way.
    ``stats``: an ``[R, 2]`` int64 device tensor that receives every request's rounds and passes
    over its distances (windowed engine only; benchmarks).
    ``group_offsets`` (host or device, every pool offset among them): tokens of different groups
    never cover each other; their similarity entries are set to ``-inf`` (distance ``+inf``) in the
    pool blocks, so the kernels run unchanged. The blocks stay ``K_r x K_r`` (the work is not yet
    bounded by the groups). ``engine``: ``"auto"`` (default: ``"rows"`` when the largest request's
    pool block exceeds ``block_budget_mb``, else ``"blocks"``), ``"blocks"`` or ``"rows"``
    (``_engine.py``: no pool block, groups served by ``+inf`` distances across them; needs a window,
    else the blocks run; ``stats`` then receives rounds and the (entry, pick) distances computed;
    ``persistent``: force the one-launch loop on or off, default on a GPU; ``sketch_dim``: 0 (off),
    16 or 32, the row engine's sketch bound, same results; ``stats`` may have a third column
    (fallback-scan rounds) and a fourth (pairs the sketch bound skipped)).
    """
    # the offsets are read on the host once (one sync each for device tensors); the chain
    # takes them back as CPU tensors, which it reads for free
    po = host_ints(pool_offsets)
    go = host_ints(group_offsets) if group_offsets is not None else list(po)
    order, gains, dist = _chain_fwd(
        vision,
        pool,
        torch.tensor(po, dtype=torch.int64),
        reserved,
        num_picks,
        eps,
        torch.tensor(go, dtype=torch.int64),
        block=block,
        window=window,
        block_budget_mb=block_budget_mb,
        stats=stats,
        engine=engine,
        persistent=persistent,
        sketch_dim=sketch_dim,
    )
    if dist is not None:  # the row engine's running minima
        return order, gains, dist
    ooff = [0]
    for p in num_picks:
        ooff.append(ooff[-1] + int(p))
    return order, gains, _chain_dist(vision, pool, po, go, order, ooff, eps)


def _chain_fwd(
    vision: torch.Tensor,
    pool: torch.Tensor,
    pool_offsets: torch.Tensor,
    reserved: torch.Tensor,
    num_picks: Sequence[int],
    eps: float,
    group_offsets: Optional[torch.Tensor] = None,
    *,
    block: Optional[int] = None,
    window: Optional[int] = None,
    block_budget_mb: Optional[float] = None,
    stats: Optional[torch.Tensor] = None,
    engine: Optional[str] = None,
    persistent: Optional[bool] = None,
    sketch_dim: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """The chain (order and gains) of ``global_greedy_fwd``, and ``dist`` where the row engine
    ran (else ``None``)."""
    dev = vision.device
    po = host_ints(pool_offsets)
    go = host_ints(group_offsets) if group_offsets is not None else list(po)
    picks = [int(p) for p in num_picks]
    R = len(po) - 1
    if len(picks) != R:
        raise ValueError(f"num_picks has {len(picks)} entries but pool_offsets has {R} requests")
    sizes = sizes_of(po)
    for r in range(R):
        if picks[r] < 0 or picks[r] > sizes[r]:
            raise ValueError(f"num_picks[{r}] = {picks[r]} must lie in [0, pool size {sizes[r]}]")
    total = sum(picks)
    order = empty(total, torch.int64, dev)
    gains = empty(total, torch.float32, dev)
    if total == 0:
        return order, gains, None
    ooff = [0]
    for p in picks:
        ooff.append(ooff[-1] + p)
    window = check_window(window)
    if pick_engine(engine, sizes, block_budget_mb) == "rows" and window:
        return _rows_engine(vision, po, go, pool, reserved, picks, ooff, eps, window, block, stats,
                            order, gains, persistent, sketch_dim=sketch_dim)  # fmt: skip
    groups = block_groups(sizes, block_budget_mb)
    if len(groups) > 1:  # the pool blocks of all requests exceed the budget: a group at a time
        for a, b in groups:
            p0, p1 = po[a], po[b]
            o_g, g_g, _ = _chain_fwd(
                vision,
                pool[p0:p1],
                torch.tensor([p - p0 for p in po[a : b + 1]], dtype=torch.int64),
                reserved[p0:p1],
                picks[a:b],
                eps,
                torch.tensor([g - p0 for g in go if p0 <= g <= p1], dtype=torch.int64),
                block=block,
                window=window,
                block_budget_mb=block_budget_mb,
                stats=stats[a:b] if stats is not None else None,
                engine="blocks",
            )
            order[ooff[a] : ooff[b]] = o_g + p0  # the group's pool positions -> the batch's
            gains[ooff[a] : ooff[b]] = g_g
        return order, gains, None
    pool = pool.to(device=dev, dtype=torch.int64).contiguous()
    S, base_d, bases = similarity_blocks(
        vision, po, eps, rows=pool, what="stage-2 pool similarity blocks"
    )
    for r in range(R):  # groups: no similarity across them
        gl = sorted({g - po[r] for g in go if po[r] <= g <= po[r + 1]})
        if len(gl) > 2:
            ids = group_ids(gl, dev)
            blk = S[bases[r] : bases[r] + sizes[r] ** 2].view(sizes[r], sizes[r])
            blk.masked_fill_(ids[:, None] != ids[None, :], float("-inf"))
    off_d, picks_d, ooff_d = pack([po, picks, ooff], dev)
    res = reserved.to(device=dev, dtype=torch.bool).contiguous().view(torch.uint8)
    max_k = max(sizes)
    window = check_window(window)
    if window and block is None:  # the engine's passes run over chunks of the scratch
        block = min(next_pow2(max_k), cfg("window_chunk"))
    if block is None:
        block = next_pow2(max_k) if max_k <= MAX_REG_BLOCK else 4096
    block = max(16, int(block))
    single = max_k <= block
    if window:
        acc = empty((max(po[-1], 1),), torch.float32, dev)
        win = empty((R * window,), torch.int64, dev)
        wv = empty((R * window,), torch.float32, dev)
        if stats is not None:  # [R, 2] int64: rounds and passes over acc of every program
            stats.zero_()
        with set_device(dev):
            _global_greedy_window_kernel[(R,)](
                S,
                base_d,
                off_d,
                res,
                picks_d,
                ooff_d,
                order,
                gains,
                acc,
                win,
                wv,
                stats if stats is not None else win,
                BLOCK=block,
                L=window,
                STATS=stats is not None,
                num_warps=greedy_warps(block),
            )
        return order, gains, None
    acc = empty((po[-1] if not single else 1,), torch.float32, dev)
    with set_device(dev):
        _global_greedy_kernel[(R,)](
            S,
            base_d,
            off_d,
            res,
            picks_d,
            ooff_d,
            order,
            gains,
            acc,
            SINGLE=single,
            BLOCK=block,
            num_warps=greedy_warps(block),
        )
    return order, gains, None


__all__ = ["global_greedy_fwd"]
