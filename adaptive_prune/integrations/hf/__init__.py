"""Hugging Face transformers integration: prefill only the visual tokens the pruner keeps.

::

    import adaptive_prune.integrations.hf as aphf

    handle = aphf.attach(model, keep_ratio=0.25)   # method="adaptive", text_aware=True
    out = model.generate(**inputs, max_new_tokens=64)
    handle.last_kept        # per prefill row: positions of input_ids that reached the LM
    handle.last_num_visual  # per prefill row: (visual tokens, visual tokens kept)
    handle.detach()         # or: with aphf.attach(model, keep_ratio=0.25) as handle: ...

Supported: Qwen2-VL, Qwen2.5-VL, Qwen3-VL and LLaVA-OneVision (``*ForConditionalGeneration`` or
the bare ``*Model``), transformers ``>=5.24,<5.25``; every kept token keeps its original
(M-)RoPE position. Details and limitations: ``docs/hf.md``.

Modules: :mod:`.hooks` (the hook lifecycle: :func:`attach`, :class:`PruneHandle`, cache
handling, errors for unsupported uses; needs transformers), :mod:`.layout` (the pure tensor
logic: units, de-duplication, the compact layout, the gathers; torch only) and :mod:`.models`
(per-model facts). transformers is imported on first use of :func:`attach` (or the other names
below), so :mod:`.layout` and :mod:`.models` import without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .hooks import SUPPORTED_MODELS, TESTED_TRANSFORMERS, PruneHandle, attach

__all__ = ["attach", "PruneHandle", "SUPPORTED_MODELS", "TESTED_TRANSFORMERS"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import hooks  # raises ImportError naming the missing extra without transformers

        return getattr(hooks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
