"""vLLM plugin: prune the visual tokens of Qwen2-VL / Qwen2.5-VL requests at exact positions.

Installed as the ``vllm.general_plugins`` entry point ``adaptive_prune``; vLLM calls
:func:`register` in every process. Enable per model with
``--hf-overrides '{"architectures": ["AdaptivePruneQwen2_5_VLForConditionalGeneration"]}'``
and set the keep ratio per request with ``mm_processor_kwargs={"keep_ratio": 0.25}``.
See docs/vllm.md. Importing this package does not import vLLM; :func:`register` does.
"""

from __future__ import annotations

# Architecture name -> "module:Class" of the pruning variant.
ARCHITECTURES = {
    "AdaptivePruneQwen2_5_VLForConditionalGeneration": (
        "adaptive_prune.integrations.vllm.qwen:AdaptivePruneQwen2_5_VL"
    ),
    "AdaptivePruneQwen2VLForConditionalGeneration": (
        "adaptive_prune.integrations.vllm.qwen:AdaptivePruneQwen2VL"
    ),
}

TESTED_VLLM = "0.32.0"


def register() -> None:
    """Register the pruning variants with vLLM's model registry (idempotent)."""
    from vllm import ModelRegistry

    known = ModelRegistry.get_supported_archs()
    for arch, target in ARCHITECTURES.items():
        if arch not in known:
            ModelRegistry.register_model(arch, target)


__all__ = ["ARCHITECTURES", "TESTED_VLLM", "register"]
