"""Op ``adaptive_prune::token_alignment``: mean/max cosine of selected tokens to their
request's text rows. Definition, fake and reference."""

from __future__ import annotations

import torch

from ._common import bounds, normalize


def reference(
    vision: torch.Tensor,
    rows: torch.Tensor,
    row_offsets: torch.Tensor,
    text: torch.Tensor,
    text_offsets: torch.Tensor,
    reduce: str,
    eps: float,
) -> torch.Tensor:
    """``a [K]`` float32: mean (``reduce="mean"``) or max over the request's text rows of
    ``cos(x_i, t)`` for every selected row ``i = rows[j]``; 0 for requests without text."""
    ro, to = bounds(row_offsets), bounds(text_offsets)
    out = torch.zeros(rows.shape[0], dtype=torch.float32, device=vision.device)
    for r in range(len(ro) - 1):
        if ro[r + 1] == ro[r] or to[r + 1] == to[r]:
            continue
        sim = (
            normalize(vision[rows[ro[r] : ro[r + 1]]], eps)
            @ normalize(text[to[r] : to[r + 1]], eps).T
        )
        out[ro[r] : ro[r + 1]] = (sim.mean(1) if reduce == "mean" else sim.max(1).values).float()
    return out


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
    return reference(vision, rows, row_offsets, text, text_offsets, reduce, eps)


@token_alignment.register_fake
def _(vision, rows, row_offsets, text, text_offsets, reduce, eps):
    return vision.new_empty((rows.shape[0],), dtype=torch.float32)


op = token_alignment
