"""The pure-PyTorch reference of every op, gathered under the ops' names.

Each op's reference lives beside its definition (``adaptive_prune/ops/<op>.py``); this module
only collects them, so that tests, benchmarks and the backends can say ``ref.<op>(...)``. The
reference computes in fp32 (fp64 for fp64 inputs), runs on any device, and is what the C++ and
Triton backends must reproduce exactly on tie-free inputs (docs/METHOD.md).
"""

from __future__ import annotations

from . import REFERENCE
from ._common import compute_dtype, normalize
from .pareto_select import crowding_distance, nondominated_fronts

# one name per op: ``reference.<op>(...)``
globals().update(REFERENCE)

__all__ = ["compute_dtype", "normalize", "crowding_distance", "nondominated_fronts", *REFERENCE]
