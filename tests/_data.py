"""Shared test inputs: random tie-free tokens, the real fixture, packing helpers."""

from __future__ import annotations

import numpy as np
import torch


def offsets(counts: list[int]) -> torch.Tensor:
    out = [0]
    for c in counts:
        out.append(out[-1] + c)
    return torch.tensor(out, dtype=torch.int64)


def random_tokens(counts: list[int], dim: int = 32, seed: int = 0, dtype=torch.float32):
    """Gaussian tokens (almost surely tie-free at small sizes) and their ``cu_seqlens``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(sum(counts), dim, generator=g, dtype=torch.float64).to(dtype)
    return x, offsets(counts)


def real_tokens(max_images: int | None = None, dtype=torch.float32):
    """Real DINOv2-S/14-derived patch tokens from the bundled fixture."""
    from adaptive_prune.data import load_fixture

    fx = load_fixture()
    cu = fx["cu_seqlens"]
    n = len(cu) - 1 if max_images is None else min(max_images, len(cu) - 1)
    x = torch.from_numpy(fx["tokens"][: cu[n]].astype(np.float32)).to(dtype)
    return x, torch.from_numpy(cu[: n + 1].copy()), fx
