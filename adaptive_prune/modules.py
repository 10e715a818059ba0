"""``nn.Module`` drop-in: :class:`AdaptiveTokenPruner`."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from .api import PruneResult, prune


class AdaptiveTokenPruner(nn.Module):
    """Drop-in module that keeps a content-adaptive subset of visual tokens.

    ``forward(vision [N, D], cu_seqlens [n+1], text [M, D] | None) -> (vision[kept], result)``
    where ``result`` is the :class:`~adaptive_prune.PruneResult` (indices sorted ascending, so
    the kept tokens stay in their original order and their position ids stay valid).

    Example::

        pruner = AdaptiveTokenPruner(keep_ratio=0.25)
        kept_tokens, res = pruner(vision, cu_seqlens, text)
    """

    def __init__(
        self,
        keep_ratio: Optional[float] = None,
        budget: Optional[int] = None,
        method: str = "adaptive",
        min_per_image: int = 1,
        **options: Any,
    ) -> None:
        super().__init__()
        self.keep_ratio, self.budget = keep_ratio, budget
        self.method, self.min_per_image, self.options = method, min_per_image, dict(options)
        # Validate the configuration now, on an empty dummy call, so a bad option fails at
        # construction rather than at the first forward.
        from . import _checks
        from .methods import get_method

        _checks.check_options(method, self.options, get_method(method).options)
        if budget is None or keep_ratio is not None:
            _checks.check_keep(keep_ratio, budget, 0 if budget is None else int(1e18))
        else:
            _checks.check_keep(None, budget, int(1e18))  # the range is checked per call
        _checks.check_min_per_image(min_per_image)

    def forward(
        self,
        vision: torch.Tensor,
        cu_seqlens: torch.Tensor,
        text: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, PruneResult]:
        res = prune(
            vision,
            cu_seqlens,
            text,
            keep_ratio=self.keep_ratio,
            budget=self.budget,
            method=self.method,
            min_per_image=self.min_per_image,
            **self.options,
        )
        return vision[res.indices], res

    def extra_repr(self) -> str:
        keep = (
            f"keep_ratio={self.keep_ratio}"
            if self.keep_ratio is not None
            else f"budget={self.budget}"
        )
        opts = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"{keep}, method={self.method!r}, min_per_image={self.min_per_image}{opts}"
