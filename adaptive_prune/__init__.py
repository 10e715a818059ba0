"""adaptive_prune: adaptive visual-token pruning for multi-image multimodal LLMs.

Public API::

    res = adaptive_prune.prune(vision, cu_seqlens, text, keep_ratio=0.25)
    res.indices, res.per_image, res.mask, res.diagnostics

    with adaptive_prune.backend("reference"):   # per-call backend choice (thread-local)
        ...

Layers (docs/architecture.md): :mod:`.api` (prune, prune_batch, results) and :mod:`.modules`
on top; :mod:`.methods` (the adaptive method and the baselines); :mod:`.ops` (each op's
definition, fake and reference); :mod:`.backends` (the C++ and Triton tables and the routing);
:mod:`.integrations` (Hugging Face, vLLM); :mod:`.cli` (demo, info).
"""

from . import backends, ops
from .api import BatchPruneResult, PruneResult, prune, prune_batch
from .backends import backend
from .methods import METHODS
from .methods.adaptive import Diagnostics
from .modules import AdaptiveTokenPruner

__version__ = "0.1.0"

backends.install()

__all__ = [
    "prune",
    "prune_batch",
    "PruneResult",
    "BatchPruneResult",
    "Diagnostics",
    "AdaptiveTokenPruner",
    "METHODS",
    "backend",
    "ops",
    "__version__",
]
