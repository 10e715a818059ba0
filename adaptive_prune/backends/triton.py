"""The Triton backend: the table of CUDA implementations served by ``adaptive_prune.kernels``.

Interface used by :mod:`adaptive_prune.backends`: :func:`unavailable`, :func:`table` (op name ->
implementation with the public op's signature plus the knobs ``greedy_window`` and
``block_budget_mb``) and :func:`status`. Importing this module does not import Triton; the
kernel modules load on the first call of :func:`table`. The kernels never import the package:
what they cannot serve (float64 inputs, empty inputs) is routed to the reference before they
are called.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Callable, Optional

_STATE: dict[str, Any] = {}


def unavailable() -> Optional[str]:
    if "reason" not in _STATE:
        if importlib.util.find_spec("triton") is None:
            _STATE["reason"] = "triton is not installed (pip install triton)"
        else:
            try:
                table()
            except Exception as exc:  # noqa: BLE001 (any failure to load the kernels)
                _STATE["reason"] = (
                    f"the Triton kernels failed to load ({type(exc).__name__}: {exc})"
                )
            else:
                _STATE["reason"] = None
    return _STATE["reason"]


def table() -> dict[str, Callable]:
    if "table" in _STATE:
        return _STATE["table"]
    from .. import ops
    from ..kernels.allocate_budgets import MAX_IMAGES_PER_REQUEST, allocate_budgets_fwd
    from ..kernels.budget_scores import budget_scores_fwd
    from ..kernels.global_greedy import global_greedy_fwd
    from ..kernels.greedy_select import greedy_select_fwd
    from ..kernels.pareto_select import pareto_select_fwd
    from ..kernels.token_similarity import token_alignment_fwd

    def greedy(fwd: Callable) -> Callable:
        def impl(*args, greedy_window: Optional[int] = None, block_budget_mb=None):
            return fwd(*args, window=greedy_window, block_budget_mb=block_budget_mb)

        return impl

    def allocate_budgets(weights, caps, mins, req_offsets, totals):
        sizes = (req_offsets[1:] - req_offsets[:-1]).tolist() if req_offsets.numel() > 1 else []
        if max(sizes, default=0) > MAX_IMAGES_PER_REQUEST:  # one register block per request
            return ops.REFERENCE["allocate_budgets"](weights, caps, mins, req_offsets, totals)
        return allocate_budgets_fwd(weights, caps, mins, req_offsets, totals)

    _STATE["table"] = {
        "budget_scores": budget_scores_fwd,
        "allocate_budgets": allocate_budgets,
        "greedy_select": greedy(greedy_select_fwd),
        "global_greedy": greedy(global_greedy_fwd),
        "token_alignment": token_alignment_fwd,
        "pareto_select": pareto_select_fwd,
    }
    return _STATE["table"]


def status() -> dict[str, Any]:
    spec = importlib.util.find_spec("triton")
    version = None
    if spec is not None:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as dist_version

        try:
            version = dist_version("triton")
        except PackageNotFoundError:
            version = "unknown"
    return {"installed": spec is not None, "version": version, "loaded": "table" in _STATE}
