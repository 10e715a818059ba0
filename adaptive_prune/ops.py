"""The method's stages as ``torch.library`` custom ops in the ``adaptive_prune`` namespace.

Every op's default implementation is the pure-PyTorch reference (:mod:`adaptive_prune.reference`),
so it runs on any device; faster backends (C++ on CPU, Triton on CUDA) register per-device
kernels through :mod:`adaptive_prune._backend`. Each op has a fake (meta) implementation for
``torch.compile`` / ``torch.export``. The ops are inference-only: no autograd formula is
registered and the selection outputs are integer or boolean.

Packing (see :mod:`adaptive_prune.reference`): ``cu_seqlens [n+1]`` image offsets over tokens,
``req_offsets [R+1]`` request offsets over images, ``text_offsets [R+1]`` over text rows.
"""

from __future__ import annotations

from typing import Optional

import torch

from . import reference as ref

__all__ = [
    "budget_scores",
    "allocate_budgets",
    "greedy_select",
    "global_greedy",
    "token_alignment",
    "pareto_select",
    "ALL_OPS",
]


@torch.library.custom_op("adaptive_prune::budget_scores", mutates_args=())
def budget_scores(
    vision: torch.Tensor,
    cu_seqlens: torch.Tensor,
    req_offsets: torch.Tensor,
    text: Optional[torch.Tensor],
    text_offsets: Optional[torch.Tensor],
    sigma: float,
    tau_a: float,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stage 0. ``(d_intra [n], mult [n], att [n], d_inter [R])``, fp32 (fp64 for fp64 input)."""
    return ref.budget_scores(vision, cu_seqlens, req_offsets, text, text_offsets, sigma, tau_a, eps)


@budget_scores.register_fake
def _(vision, cu_seqlens, req_offsets, text, text_offsets, sigma, tau_a, eps):
    cd = ref.compute_dtype(vision.dtype)
    n, R = cu_seqlens.shape[0] - 1, req_offsets.shape[0] - 1
    one = vision.new_empty((n,), dtype=cd)
    return one, torch.empty_like(one), torch.empty_like(one), vision.new_empty((R,), dtype=cd)


@torch.library.custom_op("adaptive_prune::allocate_budgets", mutates_args=())
def allocate_budgets(
    weights: torch.Tensor,
    caps: torch.Tensor,
    mins: torch.Tensor,
    req_offsets: torch.Tensor,
    totals: torch.Tensor,
) -> torch.Tensor:
    """Per-image budgets ``b [n]`` int64, ``sum b == totals[r]`` per request (water-filling)."""
    return ref.allocate_budgets(weights, caps, mins, req_offsets, totals)


@allocate_budgets.register_fake
def _(weights, caps, mins, req_offsets, totals):
    return weights.new_empty(weights.shape, dtype=torch.int64)


@torch.library.custom_op("adaptive_prune::greedy_select", mutates_args=())
def greedy_select(
    vision: torch.Tensor, cu_seqlens: torch.Tensor, budgets: torch.Tensor, mode: str, eps: float
) -> torch.Tensor:
    """Stage 1. ``rank [N]`` int64: pick step of each token inside its image, -1 if unpicked."""
    return ref.greedy_select(vision, cu_seqlens, budgets, mode, eps)


@greedy_select.register_fake
def _(vision, cu_seqlens, budgets, mode, eps):
    return vision.new_empty((vision.shape[0],), dtype=torch.int64)


@torch.library.custom_op("adaptive_prune::global_greedy", mutates_args=())
def global_greedy(
    vision: torch.Tensor,
    pool: torch.Tensor,
    pool_offsets: torch.Tensor,
    reserved: torch.Tensor,
    num_picks: list[int],
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 2 filter. ``(order [sum P] int64 pool positions, gains [sum P] float32)``."""
    return ref.global_greedy(vision, pool, pool_offsets, reserved, num_picks, eps)


@global_greedy.register_fake
def _(vision, pool, pool_offsets, reserved, num_picks, eps):
    total = sum(num_picks)
    return (
        vision.new_empty((total,), dtype=torch.int64),
        vision.new_empty((total,), dtype=torch.float32),
    )


@torch.library.custom_op("adaptive_prune::token_alignment", mutates_args=())
def token_alignment(
    vision: torch.Tensor,
    rows: torch.Tensor,
    row_offsets: torch.Tensor,
    text: torch.Tensor,
    text_offsets: torch.Tensor,
    reduce: str,
    eps: float,
) -> torch.Tensor:
    """``a [K]`` float32: mean/max cosine of ``vision[rows]`` to the request's text rows."""
    return ref.token_alignment(vision, rows, row_offsets, text, text_offsets, reduce, eps)


@token_alignment.register_fake
def _(vision, rows, row_offsets, text, text_offsets, reduce, eps):
    return vision.new_empty((rows.shape[0],), dtype=torch.float32)


@torch.library.custom_op("adaptive_prune::pareto_select", mutates_args=())
def pareto_select(
    gains: torch.Tensor, align: torch.Tensor, offsets: torch.Tensor, k: list[int]
) -> torch.Tensor:
    """Pareto selection. Keep mask ``[K]`` bool with exactly ``k[r]`` per segment."""
    return ref.pareto_select(gains, align, offsets, k)


@pareto_select.register_fake
def _(gains, align, offsets, k):
    return gains.new_empty(gains.shape, dtype=torch.bool)


ALL_OPS = {
    "budget_scores": budget_scores,
    "allocate_budgets": allocate_budgets,
    "greedy_select": greedy_select,
    "global_greedy": global_greedy,
    "token_alignment": token_alignment,
    "pareto_select": pareto_select,
}
