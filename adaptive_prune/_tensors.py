"""Small tensor helpers shared by the API and the methods (no host synchronisation)."""

from __future__ import annotations

from typing import Sequence

import torch


def starts(sizes: Sequence[int]) -> list[int]:
    """Offsets ``[0, s0, s0 + s1, ...]`` of consecutive segments of the given sizes."""
    out = [0]
    for v in sizes:
        out.append(out[-1] + v)
    return out


def to_device(values: list, dev: torch.device, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """A host list on ``dev`` without a host synchronisation (pinned, non-blocking on CUDA)."""
    t = torch.tensor(values, dtype=dtype)
    if dev.type == "cuda":
        return t.pin_memory().to(dev, non_blocking=True)
    return t.to(dev)


def true_positions(mask: torch.Tensor, count: int) -> torch.Tensor:
    """Positions of the ``count`` True entries of ``mask``, ascending, without a host sync."""
    if mask.device.type == "cpu":
        return torch.nonzero(mask).flatten()
    return torch.argsort((~mask).to(torch.uint8), stable=True)[:count]


def segment_ids(sizes: Sequence[int], dev: torch.device, total: int) -> torch.Tensor:
    """``[total]`` int64: the segment of every element (segment ``k`` has ``sizes[k]``)."""
    return torch.repeat_interleave(
        torch.arange(len(sizes), device=dev), to_device(list(sizes), dev), output_size=total
    )
