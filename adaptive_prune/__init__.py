"""adaptive_prune: adaptive visual-token pruning for multi-image multimodal LLMs.

Public API::

    res = adaptive_prune.prune(vision, cu_seqlens, text, keep_ratio=0.25)
    res.indices, res.per_image, res.mask, res.diagnostics

See README.md and docs/METHOD.md.
"""

from . import _backend, ops
from . import adaptive as _adaptive  # noqa: F401  (registers method="adaptive")
from . import baselines as _baselines  # noqa: F401  (registers the baseline methods)
from .adaptive import Diagnostics
from .functional import BatchPruneResult, PruneResult, prune, prune_batch
from .methods import METHODS
from .modules import AdaptiveTokenPruner

__version__ = "0.1.0"

_backend.load()

__all__ = [
    "prune",
    "prune_batch",
    "PruneResult",
    "BatchPruneResult",
    "Diagnostics",
    "AdaptiveTokenPruner",
    "METHODS",
    "ops",
    "__version__",
]
