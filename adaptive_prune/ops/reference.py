"""The pure-PyTorch reference of every op, gathered under the ops' names.

Each op's reference lives beside its definition (``adaptive_prune/ops/<op>.py``); this module
only collects them, so that tests, benchmarks and the backends can say ``ref.<op>(...)``. The
reference computes in fp32 (fp64 for fp64 inputs), runs on any device, and is what the C++ and
Triton backends must reproduce exactly on tie-free inputs (docs/METHOD.md).
"""

from __future__ import annotations

from ._common import compute_dtype, normalize
from .allocate_budgets import reference as allocate_budgets
from .budget_scores import reference as budget_scores
from .global_greedy import reference as global_greedy
from .greedy_select import reference as greedy_select
from .pareto_select import crowding_distance, nondominated_fronts
from .pareto_select import reference as pareto_select
from .refine_medoids import reference as refine_medoids
from .token_alignment import reference as token_alignment

__all__ = [
    "compute_dtype",
    "normalize",
    "budget_scores",
    "allocate_budgets",
    "greedy_select",
    "global_greedy",
    "token_alignment",
    "pareto_select",
    "refine_medoids",
    "crowding_distance",
    "nondominated_fronts",
]
