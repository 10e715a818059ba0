"""Windowed max-min engine: the exact greedy loop of both greedy kernels in rounds, not steps.

The sequential max-min greedy is a dependency chain: each step reads one row of the
similarity block (a memory round trip) and reduces the running distances over the whole
segment before the next step can start. This engine produces **the same picks and the same
gains, bit for bit**, with far fewer dependent round trips, by taking many steps per round:

1. ``acc [K]`` (fp32, in a global scratch owned by the program) holds the exact running
   distances (``-inf`` for picked tokens). The window ``W`` is the ``L`` largest of them in the
   greedy's own order (value descending, index ascending). Its edge, the ``(L+1)``-th largest
   order-preserving int key of the fp32 bits (``-0.0`` and ``+0.0`` alike), is found by an
   exact radix select: the live keys share every bit above the highest bit where the smallest
   and the largest differ (both known from the previous pass), and below it each pass
   histograms one 8-bit digit of the entries that match the digits found so far (``tl.
   histogram`` without a mask, which Triton < 3.4 lacks; at most 4 passes, no dependent
   memory access inside a pass). One more pass
   compacts ``W`` in pool order; the bound ``v_b`` is the largest value outside ``W``
   in that order.
2. Load the ``|W| x |W|`` sub-block ``S[W, W]`` once (gathered, independent loads) and run the
   greedy inside the window on chip with the pick band rule (``_common.band_first``): ``M`` =
   the window's largest ``loc``, the pick = the lowest pool index in the window with ``loc >=
   M - PICK_TIE``. It is accepted while the whole band lies inside the window: ``v_b < M -
   PICK_TIE``. Every token outside ``W`` has ``acc <= v_b`` now and can only decrease, so then
   ``M`` is the overall largest, no token outside is in the band, and an accepted pick is
   exactly the sequential greedy's next pick; ``loc`` (the window's running distance, updated
   with the same fp32 ``min(loc, 1 - S[j, w])``) is exactly its gain. When the first step of a
   round is refused (the band reaches past the window edge: many near-ties), one more pass
   over ``acc`` finds the lowest index with ``acc >= M - PICK_TIE`` (``M``, the window's first
   maximum, is the overall one), so each round makes progress.
3. Apply the accepted rows to ``acc`` (one pass over ``acc``, ``U = 4`` rows loaded together),
   mark the picks ``-inf``, and in the same pass gather the live count and key range for the
   next round's select. So a round costs at most 6 passes over ``acc`` (4 digits, compaction,
   update; typically 3-4 digits), not one pass per pick.

How many rounds that takes on real inputs: ``benchmarks/greedy_rounds.py`` and docs/kernels.md.

Used by :mod:`.greedy_select` (stage 1, max-min mode) and :mod:`.global_greedy` (stage 2).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._common import PICK_TIE, band_first, first_at_least


@triton.jit
def _key(v):
    """fp32 -> int32 with the same order and the same ties (-0.0 and +0.0 both map to 0)."""
    b = v.to(tl.int32, bitcast=True)
    return tl.where(b >= 0, b, (b ^ 0x7FFFFFFF) + 1)


# The passes below keep per-lane partial results across chunks and reduce across the block
# once at the end: one block-wide reduction (or one histogram merge) per pass, whatever the
# segment's length.
@triton.jit
def _ukey(v):
    """fp32 -> int64 in [0, 2^32): unsigned radix order = the order of ``_key``."""
    return _key(v).to(tl.int64) + 2147483648


@triton.jit
def _live_stats(v, valid, n, k_min, k_max):
    """Fold a chunk of running distances into the per-lane live count and key range."""
    live = valid & (v > float("-inf"))
    k = _key(v)
    n += live.to(tl.int32)
    k_min = tl.minimum(k_min, tl.where(live, k, 0x7FFFFFFF))
    k_max = tl.maximum(k_max, tl.where(live, k, -0x80000000))
    return n, k_min, k_max


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
        valid = oc < K
        v = tl.load(acc_ptr + oc, mask=valid, other=float("-inf"))
        n, k_min, k_max = _live_stats(v, valid, n, k_min, k_max)
    return tl.sum(n, axis=0).to(tl.int64), tl.min(k_min, axis=0), tl.max(k_max, axis=0)


@triton.jit
def _radix_hist(acc_ptr, K, prefix, shift, BLOCK: tl.constexpr, BINS: tl.constexpr):
    """Histogram of the 8-bit digit ``(u >> shift) & 255`` of the live entries whose higher
    bits equal ``prefix`` (``u = _ukey``), one pass over ``acc``. ``[2 * BINS]``: the other
    entries are counted in the upper half, spread by lane so that they never contend for one
    bin (``tl.histogram`` takes no mask before Triton 3.4); only the lower half is read."""
    o = tl.arange(0, BLOCK)
    spread = BINS + (o & (BINS - 1))
    hist = tl.zeros((2 * BINS,), dtype=tl.int32)
    for c0 in range(0, K, BLOCK):
        oc = c0 + o
        v = tl.load(acc_ptr + oc, mask=oc < K, other=float("-inf"))
        u = _ukey(v)
        sel = (v > float("-inf")) & ((u >> (shift + 8)) == prefix)
        digit = ((u >> shift) & (BINS - 1)).to(tl.int32)
        hist += tl.histogram(tl.where(sel, digit, spread), 2 * BINS)
    return hist


@triton.jit
def _radix_digit(hist, c_gt, r, BINS: tl.constexpr):
    """The digit ``d`` of the ``r``-th largest key among the entries counted in the lower half
    of ``hist [2 * BINS]``, given ``c_gt`` entries above them all: ``c_gt + #(digit > d) < r
    <= c_gt + #(digit >= d)``. Returns ``d`` and the new ``c_gt = c_gt + #(digit > d)``."""
    ob = tl.arange(0, 2 * BINS)
    h = tl.where(ob < BINS, hist, 0).to(tl.int64)
    above = tl.sum(h, axis=0) - tl.cumsum(h, axis=0)  # #(digit > b) for every bin b
    ok = (c_gt + above) < r  # a suffix of the bins (above does not increase); all upper bins
    d = 2 * BINS - tl.sum(ok.to(tl.int64), axis=0)
    return d, c_gt + tl.sum(tl.where(ob == d, above, 0), axis=0)


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
    U: tl.constexpr = 4,
    BINS: tl.constexpr = 256,
):
    """Make ``steps`` exact max-min picks from ``acc`` (see the module docstring).

    ``RANK``: ``out_ptr[j] = first + t`` for the ``t``-th pick ``j`` (stage 1's ranks); else
    ``out_ptr[t] = first + j`` and ``gain_ptr[t] = gain`` (stage 2's order and gains).
    ``STATS``: write the number of rounds and of passes over ``acc`` (benchmarks). ``U``: rows
    loaded together when applying the picks; ``BINS``: the radix (8 bits per digit).
    """
    o = tl.arange(0, BLOCK)
    ow = tl.arange(0, L)
    done = tl.zeros((), dtype=tl.int64)
    n_rounds = tl.zeros((), dtype=tl.int64)
    n_passes = tl.zeros((), dtype=tl.int64)
    # live count and key range; later rounds get them from the pass that applies the picks
    n_live, k_min, k_max = _acc_stats(acc_ptr, K, BLOCK)
    n_passes += 1
    while done < steps:
        # the window: the L largest keys, ties by index (all live entries if there are <= L).
        # hi = the (L+1)-th largest key, by an exact radix select on u = _ukey: the live keys
        # share the bits above the highest bit where k_min and k_max differ; below it, one
        # 8-bit digit per pass (a histogram of the entries that match the digits so far).
        # Then count(key > hi) = c_hi <= L < count(key >= hi).
        hi = k_min.to(tl.int64) - 1
        c_hi = n_live
        if n_live > L:
            u_min = k_min.to(tl.int64) + 2147483648
            x = u_min ^ (k_max.to(tl.int64) + 2147483648)
            n_dig = (x > 0).to(tl.int64) + (x > 0xFF).to(tl.int64)
            n_dig += (x > 0xFFFF).to(tl.int64) + (x > 0xFFFFFF).to(tl.int64)
            shift0 = 8 * tl.maximum(n_dig - 1, 0)
            prefix = u_min >> (8 * n_dig)  # the bits every live key shares
            c_gt = tl.zeros((), dtype=tl.int64)  # entries known to lie above the edge
            r = c_gt + (L + 1)  # the edge's rank
            for i in tl.static_range(4):
                if i < n_dig:
                    h = _radix_hist(acc_ptr, K, prefix, shift0 - 8 * i, BLOCK, BINS)
                    d, c_gt = _radix_digit(h, c_gt, r, BINS)
                    prefix = prefix * BINS + d
                    n_passes += 1
            hi = prefix - 2147483648
            c_hi = c_gt
        # now count(key > hi) = c_hi <= L and count(key >= hi) > L: the key-hi group straddles
        # the window edge; its first L - c_hi members (pool order) complete the window.
        # Compact the window in pool order; the bound is the largest key outside it.
        hi32 = hi.to(tl.int32)
        room = (L - c_hi).to(tl.int32)
        n_w = tl.zeros((), dtype=tl.int32)
        n_tie = tl.zeros((), dtype=tl.int32)
        b_k = tl.full((BLOCK,), -0x80000000, tl.int32)  # per lane: best key outside W so far
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
            b_k = tl.maximum(b_k, out_k)
        # the bound: the largest key outside W
        bk = tl.max(b_k, axis=0)
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
        top0 = tl.max(loc, axis=0)  # the overall largest acc (the window holds it)
        for _ in range(L):
            # the band rule in the window: W is in pool order, so the lowest window position
            # within the band holds the lowest pool index
            p = band_first(loc, ow, PICK_TIE)
            top = tl.max(loc, axis=0)
            v = tl.max(tl.where(ow == p, loc, float("-inf")), axis=0)
            j = tl.sum(tl.where(ow == p, w_i, 0), axis=0)
            ok = go & (top > float("-inf")) & (_key(top - PICK_TIE) > bk)
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
        if n_acc == 0:  # the band reaches outside the window: one pass over acc for the pick
            j = first_at_least(acc_ptr, K, top0 - PICK_TIE, BLOCK)
            v = tl.load(acc_ptr + j)
            if RANK:
                tl.store(out_ptr + j, first + done)
            else:
                tl.store(out_ptr + done, first + j)
                tl.store(gain_ptr + done, v)
            tl.store(win_ptr, j)
            n_acc += 1
            n_passes += 1
        tl.debug_barrier()
        # the accepted rows update the running distances; picks leave the race
        ou = tl.arange(0, U)
        n_l = tl.zeros((BLOCK,), dtype=tl.int32)
        k_lo = tl.full((BLOCK,), 0x7FFFFFFF, tl.int32)
        k_hi = tl.full((BLOCK,), -0x80000000, tl.int32)
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
            n_l, k_lo, k_hi = _live_stats(a, valid, n_l, k_lo, k_hi)
        n_live = tl.sum(n_l, axis=0).to(tl.int64)
        k_min = tl.min(k_lo, axis=0)
        k_max = tl.max(k_hi, axis=0)
        tl.debug_barrier()
        done = tl.where(n_acc > 0, done + n_acc, steps)  # (n_acc >= 1 always; never spin)
        n_rounds += 1
        n_passes += 2  # compaction, update (+ the next round's live count and key range)
    if STATS:
        tl.store(stats_ptr, n_rounds)
        tl.store(stats_ptr + 1, n_passes)
