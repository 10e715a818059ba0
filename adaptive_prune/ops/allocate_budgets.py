"""Op ``adaptive_prune::allocate_budgets``: per-image budgets by water-filling and largest
remainder. Definition, fake and reference."""

from __future__ import annotations

import torch

from . import _contract as X
from ._common import bounds, define, water_fill

_OP = "allocate_budgets"


def check(
    weights: torch.Tensor,
    caps: torch.Tensor,
    mins: torch.Tensor,
    req_offsets: torch.Tensor,
    totals: torch.Tensor,
) -> bool:
    """The op's contract (ValueError/TypeError naming the argument). Returns True when the
    input needs the reference: the positive-weight images cannot absorb a request's total
    (the C++/Triton kernels do not implement the zero-weight rule yet)."""
    X.tensor(_OP, "weights", weights, 1, X.FLOATS, "a float type")
    n = weights.shape[0]
    for name, t in (("caps", caps), ("mins", mins)):
        X.tensor(_OP, name, t, 1, X.INTS, "int32 or int64")
        if t.shape[0] != n:
            X.fail(_OP, f"{name} has {t.shape[0]} entries, weights has {n} (one per image)")
    ro = X.offsets(_OP, "req_offsets", req_offsets, n, "n (entries of weights)")
    X.tensor(_OP, "totals", totals, 1, X.INTS, "int32 or int64")
    if totals.shape[0] != len(ro) - 1:
        X.fail(_OP, f"totals has {totals.shape[0]} entries, req_offsets {len(ro) - 1} requests")
    if X.readable(weights):
        w = weights.double()
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
            X.fail(_OP, "weights must be finite and >= 0")
    if not (X.readable(caps) and X.readable(mins) and X.readable(totals)):
        return False
    cap, mn, tot = caps.tolist(), mins.tolist(), totals.tolist()
    for k in range(n):
        if not 0 <= mn[k] <= cap[k]:
            X.fail(_OP, f"need 0 <= mins[k] <= caps[k]; image {k} has {mn[k]} and {cap[k]}")
    w = weights.tolist() if X.readable(weights) else None
    to_reference = False
    for r in range(len(ro) - 1):
        k0, k1 = ro[r], ro[r + 1]
        lo, hi = sum(mn[k0:k1]), sum(cap[k0:k1])
        if not lo <= tot[r] <= hi:
            X.fail(
                _OP,
                f"totals[{r}] = {tot[r]} must lie between the sum of its mins ({lo}) and the "
                f"sum of its caps ({hi})",
            )
        if w is not None:
            room = sum(cap[k] if w[k] > 0 else mn[k] for k in range(k0, k1))
            to_reference = to_reference or tot[r] > room
    return to_reference


def reference(
    weights: torch.Tensor,
    caps: torch.Tensor,
    mins: torch.Tensor,
    req_offsets: torch.Tensor,
    totals: torch.Tensor,
) -> torch.Tensor:
    """Per-image budgets ``b [n]`` (int64) with ``sum_k b_k == totals[r]`` per request.

    ``b_k = mins_k + share of (total - sum mins)`` proportional to ``weights_k``, capped at
    ``caps_k`` (water-filling: cap, redistribute, repeat), rounded by largest remainder with ties
    to the lower image index. Images with ``weights_k == 0`` or no room get only ``mins_k``,
    except when the positive-weight images cannot absorb the total even at their caps: then the
    rest goes to the zero-weight images with room, in index order, each filled to its cap before
    the next (so ``sum b == totals`` always holds). Requires finite ``weights >= 0``,
    ``0 <= mins <= caps`` and ``sum mins <= total <= sum caps`` per request (:func:`check`).
    """
    ro = bounds(req_offsets)
    w = weights.double().tolist()
    cap = [int(v) for v in caps.tolist()]
    mn = [int(v) for v in mins.tolist()]
    tot = [int(v) for v in totals.tolist()]
    out: list[int] = []
    for r in range(len(ro) - 1):
        k0, k1 = ro[r], ro[r + 1]
        room = [cap[k] - mn[k] for k in range(k0, k1)]
        # the positive-weight images first (the zero-weight ones have no room there)
        room_w = [room[i] if w[k] > 0 else 0 for i, k in enumerate(range(k0, k1))]
        extra = water_fill(w[k0:k1], [0] * (k1 - k0), room_w, tot[r] - sum(mn[k0:k1]))
        rest = tot[r] - sum(mn[k0:k1]) - sum(extra)
        for i, k in enumerate(range(k0, k1)):  # zero-weight images absorb what is left
            if rest <= 0:
                break
            if not w[k] > 0:
                add = min(rest, room[i] - extra[i])
                extra[i] += add
                rest -= add
        out += [mn[k] + e for k, e in zip(range(k0, k1), extra)]
    return torch.tensor(out, dtype=torch.int64, device=weights.device)


op = define("allocate_budgets", reference, check)


@op.register_fake
def _(weights, caps, mins, req_offsets, totals):
    return weights.new_empty(weights.shape, dtype=torch.int64)
