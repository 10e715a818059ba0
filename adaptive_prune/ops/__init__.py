"""The method's stages as ``torch.library`` custom ops in the ``adaptive_prune`` namespace.

One module per op (``adaptive_prune/ops/<op>.py``) holds its pure-PyTorch reference (whose
signature is the op's schema), its contract ``check``, the op made from both by
:func:`~adaptive_prune.ops._common.define` (check, then the reference: the default
implementation on every device), and its fake (meta) implementation for ``torch.compile`` /
``torch.export``.
:mod:`adaptive_prune.backends` registers the faster implementations (C++ on the CPU, Triton on
CUDA) with one loop over :data:`ALL_OPS`. The ops are inference-only: no autograd formula is
registered and the selection outputs are integer or boolean.

Packing: ``cu_seqlens [n+1]`` image offsets over tokens, ``req_offsets [R+1]`` request offsets
over images, ``text_offsets [R+1]`` over text rows (see :mod:`adaptive_prune.ops._common`).
"""

from __future__ import annotations

import importlib
import pkgutil

# every public module of this package except the re-export module defines one op
_MODULES = [
    importlib.import_module(f"{__name__}.{info.name}")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name)
    if not info.name.startswith("_") and info.name != "reference"
]

# op name -> the public custom op (also ``torch.ops.adaptive_prune.<name>``)
ALL_OPS = {m.op._qualname.split("::")[1]: m.op for m in _MODULES}
# op name -> its pure-PyTorch reference
REFERENCE = {name: m.reference for name, m in zip(ALL_OPS, _MODULES)}
# op name -> its contract check: raises ValueError/TypeError naming the argument; returns True
# when only the reference implements that input (see ops/_contract.py)
CHECK = {name: m.check for name, m in zip(ALL_OPS, _MODULES)}

__all__ = ["ALL_OPS", "CHECK", "REFERENCE"]
