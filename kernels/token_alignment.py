"""``adaptive_prune::token_alignment`` on the device: mean (or max) cosine of selected tokens to
their request's text rows.

Reference: :func:`adaptive_prune.ops.token_alignment.reference`. One launch of the tiled
row-reduction kernel of :mod:`.token_similarity` (mode ``mean`` or ``max``) over the selected
rows, with the text rows of each request as keys; requests without text get 0.
"""

from __future__ import annotations

import torch

from .token_similarity import token_similarity_fwd


def token_alignment_fwd(
    vision: torch.Tensor,
    rows: torch.Tensor,
    row_offsets: torch.Tensor,
    text: torch.Tensor,
    text_offsets: torch.Tensor,
    reduce: str,
    eps: float,
) -> torch.Tensor:
    """``a [K]`` fp32, the mean (or max) of ``cos(vision[rows[i]], t)`` over the text rows ``t``
    of ``i``'s request; 0 without text."""
    if reduce not in ("mean", "max"):
        raise ValueError(f"reduce must be 'mean' or 'max', got {reduce!r}")
    return token_similarity_fwd(
        vision, row_offsets, text, text_offsets, reduce, eps, q_rows=rows, empty_value=0.0
    )


__all__ = ["token_alignment_fwd"]
