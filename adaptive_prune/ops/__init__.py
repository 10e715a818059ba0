"""The method's stages as ``torch.library`` custom ops in the ``adaptive_prune`` namespace.

One module per op (``adaptive_prune/ops/<op>.py``) holds its definition (schema from the type
hints), its fake (meta) implementation for ``torch.compile`` / ``torch.export``, and its
pure-PyTorch reference, which is also the op's default implementation on every device.
:mod:`adaptive_prune.backends` registers the faster implementations (C++ on the CPU, Triton on
CUDA) with one loop over :data:`ALL_OPS`. The ops are inference-only: no autograd formula is
registered and the selection outputs are integer or boolean.

Packing: ``cu_seqlens [n+1]`` image offsets over tokens, ``req_offsets [R+1]`` request offsets
over images, ``text_offsets [R+1]`` over text rows (see :mod:`adaptive_prune.ops._common`).
"""

from __future__ import annotations

from . import (
    allocate_budgets,
    budget_scores,
    global_greedy,
    greedy_select,
    pareto_select,
    refine_medoids,
    token_alignment,
)

_MODULES = (
    budget_scores,
    allocate_budgets,
    greedy_select,
    global_greedy,
    token_alignment,
    pareto_select,
    refine_medoids,
)

# op name -> the public custom op (also ``torch.ops.adaptive_prune.<name>``)
ALL_OPS = {m.op._qualname.split("::")[1]: m.op for m in _MODULES}
# op name -> its pure-PyTorch reference
REFERENCE = {name: m.reference for name, m in zip(ALL_OPS, _MODULES)}

__all__ = ["ALL_OPS", "REFERENCE"]
