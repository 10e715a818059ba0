"""Op ``adaptive_prune::allocate_budgets``: per-image budgets by water-filling and largest
remainder. Definition, fake and reference."""

from __future__ import annotations

import torch

from ._common import bounds, water_fill


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
    to the lower image index. Images with ``weights_k <= 0`` or no room get only ``mins_k``.
    Requires ``sum mins <= total <= sum caps`` per request.
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
        extra = water_fill(w[k0:k1], [0] * (k1 - k0), room, tot[r] - sum(mn[k0:k1]))
        out += [mn[k] + e for k, e in zip(range(k0, k1), extra)]
    return torch.tensor(out, dtype=torch.int64, device=weights.device)


@torch.library.custom_op("adaptive_prune::allocate_budgets", mutates_args=())
def allocate_budgets(
    weights: torch.Tensor,
    caps: torch.Tensor,
    mins: torch.Tensor,
    req_offsets: torch.Tensor,
    totals: torch.Tensor,
) -> torch.Tensor:
    """Per-image budgets ``b [n]`` int64, ``sum b == totals[r]`` per request (water-filling)."""
    return reference(weights, caps, mins, req_offsets, totals)


@allocate_budgets.register_fake
def _(weights, caps, mins, req_offsets, totals):
    return weights.new_empty(weights.shape, dtype=torch.int64)


op = allocate_budgets
