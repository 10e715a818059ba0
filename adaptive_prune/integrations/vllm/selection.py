"""Model-side logic of the vLLM plugin: which rows of an item to keep, and their positions.

Nothing here imports vLLM. An item is one image or one video; its encoder output has one row per
merged token in raster order (frame, row, column).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

import adaptive_prune


def select_rows(
    rows: torch.Tensor,
    count: int,
    text: Optional[torch.Tensor] = None,
    frame_sizes: Optional[Sequence[int]] = None,
) -> torch.Tensor:
    """Kept row indices (ascending, int64) of one item's ``[n, D]`` encoder output.

    An image runs the adaptive method on one image: the diversity greedy inside it, and with
    ``text`` the Pareto step against the prompt. A video (``frame_sizes`` given, one entry per
    frame) runs the full cross-frame method over its frames: the item's total ``count`` is fixed,
    its split across frames is the method's (no per-frame minimum).
    """
    n = rows.shape[0]
    if not 0 < count <= n:
        raise ValueError(f"adaptive_prune: an item of {n} rows cannot keep {count}")
    if count == n:
        return torch.arange(n, dtype=torch.long, device=rows.device)
    if frame_sizes is None:
        frame_sizes = [n]
    cu = torch.zeros(len(frame_sizes) + 1, dtype=torch.long)
    cu[1:] = torch.cumsum(torch.tensor([int(s) for s in frame_sizes]), 0)
    if int(cu[-1]) != n:
        raise ValueError(f"adaptive_prune: frame sizes {list(frame_sizes)} do not sum to {n}")
    min_per = 1 if len(frame_sizes) == 1 else 0
    res = adaptive_prune.prune(
        rows,
        cu.to(rows.device),
        text,
        budget=int(count),
        min_per_image=min_per,
        method="adaptive",
    )
    return res.indices.to(torch.long)


def item_positions(grid_thw: Sequence[int], merge_size: int, t_scale: float = 1.0) -> torch.Tensor:
    """Unpruned M-RoPE offsets ``[3, n]`` (t, h, w) of one item's merged tokens, relative to the
    position where the item starts; row order is the encoder's (frame, row, column).

    Frame ``i`` sits at temporal offset ``int(i * t_scale)`` (images: ``t_scale`` unused, one
    frame). The text after the item continues at ``offsets.max() + 1``.
    """
    t, h, w = (int(x) for x in grid_thw)
    h, w = h // merge_size, w // merge_size
    tt = (torch.arange(t, dtype=torch.float64) * float(t_scale)).long()
    tt = tt.view(-1, 1, 1).expand(t, h, w)
    hh = torch.arange(h).view(1, -1, 1).expand(t, h, w)
    ww = torch.arange(w).view(1, 1, -1).expand(t, h, w)
    return torch.stack([tt.reshape(-1), hh.reshape(-1), ww.reshape(-1)])
