"""Windowed max-min engine: the exact greedy loop of both greedy kernels in rounds, not steps.

The sequential max-min greedy is a dependency chain: each step reads one row of the
similarity block (a memory round trip) and reduces the running distances over the whole
segment before the next step can start. This engine produces **the same picks and the same
gains, bit for bit**, with far fewer dependent round trips, by taking many steps per round:

1. ``acc [K]`` (fp32, in a global scratch owned by the program) holds the exact running
   distances (``-inf`` for picked tokens). The window ``W`` is the ``L`` largest of them in the
   greedy's own order (value descending, index ascending), found by a four-way search on the
   fp32 bit pattern (an order-preserving int key: each pass counts the entries above three
   thresholds at once, one block reduction with no dependent memory round trip; about 13
   passes), then compacted in pool order. The bound ``(v_b, i_b)`` is the largest entry outside
   ``W`` in that order.
2. Load the ``|W| x |W|`` sub-block ``S[W, W]`` once (gathered, independent loads) and run the
   greedy inside the window on chip: pick the window's largest ``loc`` (ties to the lower pool
   index) and accept it while it beats the bound: ``loc > v_b`` or ``loc == v_b`` and its index
   ``< i_b``. Every token outside ``W`` has ``acc <= v_b`` now and can only decrease, so an
   accepted pick is exactly the sequential greedy's next pick, and ``loc`` (the window's running
   distance, updated with the same fp32 ``min(loc, 1 - S[j, w])``) is exactly its gain.
   The first window step always succeeds (the window holds the overall first maximum), so
   each round makes progress.
3. Apply the accepted rows to ``acc`` (one pass over ``acc``, ``U = 4`` rows loaded together),
   mark the picks ``-inf``, and start the next round.

Measured on the real 16 x 576 speed inputs (keep 25 %, the default pool of 9216 tokens,
``benchmarks/greedy_rounds.py``): 9200 sequential steps become 169 rounds with ``L = 64``;
every image's 575 stage-1 steps after the first pick become at most 19 rounds.

Used by :mod:`.greedy_select` (stage 1, max-min mode) and :mod:`.global_greedy` (stage 2).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _key(v):
    """fp32 -> int32 with the same order and the same ties (-0.0 and +0.0 both map to 0)."""
    b = v.to(tl.int32, bitcast=True)
    return tl.where(b >= 0, b, (b ^ 0x7FFFFFFF) + 1)


# The passes below keep per-lane partial results across chunks and reduce across the block
# once at the end: one block-wide reduction per pass, whatever the segment's length.
@triton.jit
def _acc_stats(acc_ptr, K, BLOCK: tl.constexpr):
    """Over ``acc_ptr[0:K]``: the number of live entries (``> -inf``), the smallest and the
    largest key among them."""
    o = tl.arange(0, BLOCK)
    n = tl.zeros((BLOCK,), dtype=tl.int32)
    k_min = tl.full((BLOCK,), 0x7FFFFFFF, tl.int32)
    k_max = tl.full((BLOCK,), -0x80000000, tl.int32)
    for c0 in range(0, K, BLOCK):
        oc = c0 + o
        v = tl.load(acc_ptr + oc, mask=oc < K, other=float("-inf"))
        live = v > float("-inf")
        k = _key(v)
        n += live.to(tl.int32)
        k_min = tl.minimum(k_min, tl.where(live, k, 0x7FFFFFFF))
        k_max = tl.maximum(k_max, tl.where(live, k, -0x80000000))
    return tl.sum(n, axis=0).to(tl.int64), tl.min(k_min, axis=0), tl.max(k_max, axis=0)


@triton.jit
def _count_above(acc_ptr, K, t, BLOCK: tl.constexpr):
    """``[FAN]``: the number of entries whose key exceeds each threshold of ``t [FAN]`` (int32),
    one pass over ``acc``."""
    o = tl.arange(0, BLOCK)
    c = tl.zeros((t.shape[0], BLOCK), dtype=tl.int32)
    for c0 in range(0, K, BLOCK):
        oc = c0 + o
        v = tl.load(acc_ptr + oc, mask=oc < K, other=float("-inf"))
        c += (_key(v)[None, :] > t[:, None]).to(tl.int32)
    return tl.sum(c, axis=1).to(tl.int64)


@triton.jit
def maxmin_rounds(
    s_ptr,  # fp32 similarity blocks
    base,  # start of this segment's K x K block (int64)
    K,  # segment size (int64)
    acc_ptr,  # segment's running distances [K] fp32 (initialised by the caller)
    win_ptr,  # this program's window scratch [L] int64
    wv_ptr,  # this program's window scratch [L] fp32
    out_ptr,  # RANK: rank of the segment's tokens; else the order output at the first slot
    gain_ptr,  # gains output at the first slot (ignored with RANK)
    first,  # RANK: the rank of the first pick made here; else the pool offset added to picks
    steps,  # picks to make (int64)
    stats_ptr,  # STATS: [2] int64 out: rounds, passes over acc
    RANK: tl.constexpr,
    STATS: tl.constexpr,
    BLOCK: tl.constexpr,
    L: tl.constexpr,
    FAN: tl.constexpr = 4,
    U: tl.constexpr = 4,
):
    """Make ``steps`` exact max-min picks from ``acc`` (see the module docstring).

    ``RANK``: ``out_ptr[j] = first + t`` for the ``t``-th pick ``j`` (stage 1's ranks); else
    ``out_ptr[t] = first + j`` and ``gain_ptr[t] = gain`` (stage 2's order and gains).
    ``STATS``: write the number of rounds and of passes over ``acc`` (benchmarks). ``FAN``:
    thresholds counted per search pass; ``U``: rows loaded together when applying the picks.
    """
    o = tl.arange(0, BLOCK)
    ow = tl.arange(0, L)
    done = tl.zeros((), dtype=tl.int64)
    n_rounds = tl.zeros((), dtype=tl.int64)
    n_passes = tl.zeros((), dtype=tl.int64)
    while done < steps:
        # the window: the L largest keys, ties by index (all live entries if there are <= L).
        # Bisection on the key: count(key > hi) <= L < count(key > lo) throughout.
        n_live, k_min, k_max = _acc_stats(acc_ptr, K, BLOCK)
        lo = k_min.to(tl.int64) - 1
        hi = lo
        c_hi = n_live
        if n_live > L:
            hi = k_max.to(tl.int64)
            c_hi = tl.zeros((), dtype=tl.int64)
            of = tl.arange(0, FAN)
            while hi - lo > 1:
                # FAN-ary search: thresholds lo = t_0 < t_1 <= ... <= t_{FAN-1} < hi; the
                # counts do not increase with q and count(t_0) > L, so the q with
                # count(t_q) > L form a prefix 0..q*; the new interval is (t_q*, t_q*+1]
                n_passes += 1
                t = lo + ((hi - lo) * of) // FAN
                c = _count_above(acc_ptr, K, t.to(tl.int32), BLOCK)
                q = tl.sum((c > L).to(tl.int32), axis=0) - 1
                lo = tl.sum(tl.where(of == q, t, 0), axis=0)
                nxt = of == q + 1
                hi = tl.where(q + 1 < FAN, tl.sum(tl.where(nxt, t, 0), axis=0), hi)
                c_hi = tl.where(q + 1 < FAN, tl.sum(tl.where(nxt, c, 0), axis=0), c_hi)
        # now count(key > hi) = c_hi <= L and count(key >= hi) > L: the key-hi group straddles
        # the window edge; its first L - c_hi members (pool order) complete the window.
        # Compact the window in pool order; the bound is the largest (key, -index) outside it.
        hi32 = hi.to(tl.int32)
        room = (L - c_hi).to(tl.int32)
        n_w = tl.zeros((), dtype=tl.int32)
        n_tie = tl.zeros((), dtype=tl.int32)
        b_k = tl.full((BLOCK,), -0x80000000, tl.int32)  # per lane: best key outside W so far
        b_i = tl.zeros((BLOCK,), dtype=tl.int64)  # and its index (earlier chunks win ties)
        for c0 in range(0, K, BLOCK):
            oc = c0 + o
            valid = oc < K
            v = tl.load(acc_ptr + oc, mask=valid, other=float("-inf"))
            k = _key(v)
            tie = (valid & (k == hi32)).to(tl.int32)
            t_rank = n_tie + tl.cumsum(tie, axis=0) - tie
            n_tie += tl.sum(tie, axis=0)
            inw = valid & ((k > hi32) | ((tie > 0) & (t_rank < room)))
            iw = inw.to(tl.int32)
            pos = n_w + tl.cumsum(iw, axis=0) - iw
            tl.store(win_ptr + pos, oc, mask=inw)
            tl.store(wv_ptr + pos, v, mask=inw)
            n_w += tl.sum(iw, axis=0)
            out_k = tl.where(inw | ~valid, -0x80000000, k)
            upd = out_k > b_k
            b_i = tl.where(upd, oc, b_i)
            b_k = tl.where(upd, out_k, b_k)
        # the bound: the largest key outside W, the lowest index among its holders
        bk = tl.max(b_k, axis=0)
        bi = tl.min(tl.where(b_k == bk, b_i, K), axis=0)
        tl.debug_barrier()
        wm = ow < n_w
        w_i = tl.load(win_ptr + ow, mask=wm, other=0)
        loc = tl.load(wv_ptr + ow, mask=wm, other=float("-inf"))
        sub = tl.load(  # [L, L]: S[W, W]
            s_ptr + base + w_i[:, None] * K + w_i[None, :],
            mask=wm[:, None] & wm[None, :],
            other=0.0,
        )
        go = done < steps
        n_acc = tl.zeros((), dtype=tl.int64)
        for _ in range(L):
            v, p = tl.max(loc, axis=0, return_indices=True)  # ties: lower window position
            j = tl.sum(tl.where(ow == p, w_i, 0), axis=0)
            kv = _key(v)
            ok = go & (v > float("-inf")) & ((kv > bk) | ((kv == bk) & (j < bi)))
            ok = ok & (done + n_acc < steps)
            if RANK:
                tl.store(out_ptr + j, first + done + n_acc, mask=ok)
            else:
                tl.store(out_ptr + done + n_acc, first + j, mask=ok)
                tl.store(gain_ptr + done + n_acc, v, mask=ok)
            tl.store(win_ptr + n_acc, j, mask=ok)  # the window is in registers (w_i) by now
            row = tl.sum(tl.where(ow[:, None] == p, sub, 0.0), axis=0)  # S[j, W]
            loc = tl.where(ok, tl.minimum(loc, 1.0 - row), loc)
            loc = tl.where(ok & (ow == p), float("-inf"), loc)
            n_acc += ok.to(tl.int64)
            go = ok
        tl.debug_barrier()
        # the accepted rows update the running distances; picks leave the race
        ou = tl.arange(0, U)
        for c0 in range(0, K, BLOCK):
            oc = c0 + o
            valid = oc < K
            a = tl.load(acc_ptr + oc, mask=valid, other=float("-inf"))
            for t0 in range(0, n_acc, U):  # U rows in flight at a time
                mu = t0 + ou < n_acc
                js = tl.load(win_ptr + t0 + ou, mask=mu, other=0)
                rows = tl.load(
                    s_ptr + base + js[:, None] * K + oc[None, :],
                    mask=mu[:, None] & valid[None, :],
                    other=0.0,
                )
                d = tl.min(tl.where(mu[:, None], 1.0 - rows, float("inf")), axis=0)
                hit = tl.max(((js[:, None] == oc[None, :]) & mu[:, None]).to(tl.int32), axis=0)
                a = tl.where(hit > 0, float("-inf"), tl.minimum(a, d))
            tl.store(acc_ptr + oc, a, mask=valid)
        tl.debug_barrier()
        done = tl.where(n_acc > 0, done + n_acc, steps)  # (n_acc >= 1 always; never spin)
        n_rounds += 1
        n_passes += 3  # live stats, compaction, update
    if STATS:
        tl.store(stats_ptr, n_rounds)
        tl.store(stats_ptr + 1, n_passes)
