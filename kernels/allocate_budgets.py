"""Per-image budgets on the device: water-filling plus largest remainder, one program per request.

For request ``r`` (images ``ro[r]:ro[r+1]``), in float64 like the reference:

- ``b_k = mins_k + floor_k`` with ``rest = total_r - sum mins``, ``room_k = caps_k - mins_k``;
- water-filling: the active images (``room > 0`` and ``w > 0``) share ``left`` (initially
  ``rest``) in proportion to ``w``; images whose share reaches ``room`` are capped and leave,
  the others' shares are recomputed from what is left, until nobody is capped;
- ``floor_k = min(floor(share_k + 1e-9), room_k)``; the ``rest - sum floor`` missing units go
  one each to the images with ``floor < room`` by decreasing ``share - floor``, ties to the
  lower image index.

Shapes: ``weights [n]`` (fp32), ``caps, mins [n]`` int64, ``req_offsets [R+1]``,
``totals [R]``; output ``b [n]`` int64 with ``sum b == totals[r]`` per request.
Reference: :func:`adaptive_prune.reference.allocate_budgets`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (
    Unsupported,
    empty,
    host_ints,
    next_pow2,
    pack,
    set_device,
    sizes_of,
    upload,
)

MAX_IMAGES_PER_REQUEST = 16384


@triton.jit
def _allocate_budgets_kernel(
    w_ptr,  # [n] weights
    cap_ptr,  # [n] int64
    min_ptr,  # [n] int64
    ro_ptr,  # [R+1] int64
    tot_ptr,  # [R] int64
    out_ptr,  # [n] int64
    BN: tl.constexpr,
):
    i_r = tl.program_id(0).to(tl.int64)
    k0 = tl.load(ro_ptr + i_r)
    nr = tl.load(ro_ptr + i_r + 1) - k0
    o = tl.arange(0, BN)
    m = o < nr
    w = tl.load(w_ptr + k0 + o, mask=m, other=0.0).to(tl.float64)
    cap = tl.load(cap_ptr + k0 + o, mask=m, other=0)
    mn = tl.load(min_ptr + k0 + o, mask=m, other=0)
    rest = tl.load(tot_ptr + i_r) - tl.sum(mn, axis=0)
    room = tl.where(m, cap - mn, 0)
    roomf = room.to(tl.float64)
    active = m & (room > 0) & (w > 0)
    share = tl.zeros((BN,), dtype=tl.float64)
    left = rest.to(tl.float64)
    go = (tl.sum(active.to(tl.int32), axis=0) > 0) & (left > 0)
    while go:
        wsum = tl.sum(tl.where(active, w, 0.0), axis=0)
        prop = left * w / wsum
        over = active & (prop >= roomf)
        n_over = tl.sum(over.to(tl.int32), axis=0)
        share = tl.where(active & (n_over == 0), prop, share)
        share = tl.where(over, roomf, share)
        left = left - tl.sum(tl.where(over, roomf, 0.0), axis=0)
        active = active & (~over)
        go = (n_over > 0) & (tl.sum(active.to(tl.int32), axis=0) > 0) & (left > 0)
    fl = tl.minimum(tl.floor(share + 1e-9).to(tl.int64), room)
    fl = tl.where(m, fl, 0)
    missing = rest - tl.sum(fl, axis=0)
    key = tl.where(m & (fl < room), share - fl.to(tl.float64), float("-inf"))
    for _ in range(0, missing):
        i = tl.argmax(key, axis=0, tie_break_left=True)
        hit = (o == i) & (key > float("-inf"))
        fl = tl.where(hit, fl + 1, fl)
        key = tl.where(o == i, float("-inf"), key)
    tl.store(out_ptr + k0 + o, mn + fl, mask=m)


def allocate_budgets_fwd(
    weights: torch.Tensor,
    caps: torch.Tensor,
    mins: torch.Tensor,
    req_offsets: torch.Tensor,
    totals: torch.Tensor,
) -> torch.Tensor:
    """``adaptive_prune::allocate_budgets`` on the device: ``b [n]`` int64 on ``weights``'s
    device. ``caps``, ``mins``, ``totals`` may be CPU or device tensors (copied without a
    sync); ``req_offsets`` is read on the host (free on the CPU, one sync on the device)."""
    dev = weights.device
    ro = host_ints(req_offsets)
    n = weights.shape[0]
    R = len(ro) - 1
    out = empty(n, torch.int64, dev)
    if n == 0 or R == 0:
        return out
    max_nr = max(sizes_of(ro))
    BN = max(16, next_pow2(max_nr))
    if max_nr > MAX_IMAGES_PER_REQUEST:  # the routing layer runs the reference instead
        raise Unsupported(
            f"allocate_budgets_fwd: a request has {max_nr} images; the kernel takes at most "
            f"{MAX_IMAGES_PER_REQUEST} per request"
        )
    (ro_d,) = pack([ro], dev)
    w = weights.contiguous()
    cap_d = upload(caps, dev)
    min_d = upload(mins, dev)
    tot_d = upload(totals, dev)
    with set_device(dev):
        _allocate_budgets_kernel[(R,)](
            w, cap_d, min_d, ro_d, tot_d, out, BN=BN, num_warps=4 if BN <= 1024 else 8
        )
    return out


__all__ = ["allocate_budgets_fwd"]
