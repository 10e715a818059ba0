"""Per-model facts for :mod:`adaptive_prune.integrations.hf`: which classes are supported and
how each one lays out its visual tokens and positions.

Checked against transformers 5.24.0 (``models/<name>/modeling_<name>.py``); see
``docs/hf.md`` for the line numbers. Everything here is read-only: nothing patches a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

__all__ = ["ModelSpec", "SPECS", "resolve", "visual_segments", "full_positions"]


@dataclass(frozen=True)
class ModelSpec:
    """How one model family feeds its language model.

    - ``rows_if_none``: how many position rows the language model builds when it is called
      with ``position_ids=None`` (3 for Qwen2/2.5-VL M-RoPE, 4 for Qwen3-VL (text row + 3),
      0 for plain 1-D positions ``[B, L]``).
    - ``mrope``: positions are multimodal (M-RoPE) rows ``[3 or 4, B, L]``.
    - ``deepstack``: the language model also takes ``visual_pos_masks`` and
      ``deepstack_visual_embeds`` (Qwen3-VL), which must be pruned with their tokens.
    - ``video_layout``: how a video's tokens split into frames: ``"grid"`` (Qwen: ``t`` equal
      parts from ``video_grid_thw``) or ``"llava"`` (``F`` equal parts plus one trailing
      newline token that goes with the last frame).
    """

    name: str
    top_class: str
    inner_class: str
    rows_if_none: int
    mrope: bool
    deepstack: bool
    video_layout: str


SPECS: dict[str, ModelSpec] = {
    "qwen2_vl": ModelSpec(
        "Qwen2-VL", "Qwen2VLForConditionalGeneration", "Qwen2VLModel", 3, True, False, "grid"
    ),
    "qwen2_5_vl": ModelSpec(
        "Qwen2.5-VL",
        "Qwen2_5_VLForConditionalGeneration",
        "Qwen2_5_VLModel",
        3,
        True,
        False,
        "grid",
    ),
    "qwen3_vl": ModelSpec(
        "Qwen3-VL", "Qwen3VLForConditionalGeneration", "Qwen3VLModel", 4, True, True, "grid"
    ),
    "llava_onevision": ModelSpec(
        "LLaVA-OneVision",
        "LlavaOnevisionForConditionalGeneration",
        "LlavaOnevisionModel",
        0,
        False,
        False,
        "llava",
    ),
}


def _class_names(obj: Any) -> set[str]:
    return {c.__name__ for c in type(obj).__mro__}


def resolve(model: nn.Module) -> tuple[ModelSpec, Optional[nn.Module], nn.Module, nn.Module]:
    """``(spec, top, inner, language_model)`` for a supported model, else ``NotImplementedError``.

    ``top`` is the ``*ForConditionalGeneration`` wrapper (None when the bare ``*Model`` was
    given), ``inner`` the vision-language model that merges image features into the
    embeddings, ``language_model`` the text decoder that ``inner`` calls.
    """
    supported = ", ".join(f"{s.name} ({k})" for k, s in SPECS.items())
    if not isinstance(model, nn.Module):
        raise TypeError(f"attach() needs a transformers model (nn.Module), got {type(model)}")
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    spec = SPECS.get(model_type)
    if spec is None:
        raise NotImplementedError(
            f"adaptive_prune.integrations.hf does not support {type(model).__name__} "
            f"(config.model_type={model_type!r}). Supported models: {supported}. "
            "Nothing was attached."
        )
    names = _class_names(model)
    if spec.top_class in names:
        top, inner = model, getattr(model, "model", None)
    elif spec.inner_class in names:
        top, inner = None, model
    else:
        raise NotImplementedError(
            f"{type(model).__name__} has model_type={model_type!r} but is neither "
            f"{spec.top_class} nor {spec.inner_class}; only those classes (or subclasses) are "
            "supported. Nothing was attached."
        )
    if inner is None or spec.inner_class not in _class_names(inner):
        raise NotImplementedError(
            f"{type(model).__name__}.model is not a {spec.inner_class}; this layout is not "
            "supported. Nothing was attached."
        )
    lm = getattr(inner, "language_model", None)
    if not isinstance(lm, nn.Module):
        raise NotImplementedError(f"{spec.inner_class} has no language_model submodule")
    return spec, top, inner, lm


def item_segments(
    spec: ModelSpec, modality: str, count: int, frames: Optional[int], split_frames: bool
) -> list[int]:
    """Split one image's or video's ``count`` tokens into the units the pruner sees.

    An image is one unit. A video is one unit per frame when ``split_frames`` and the frame
    count is known, else one unit.
    """
    if modality == "image" or not split_frames or not frames or frames <= 1:
        return [count]
    if spec.video_layout == "llava":
        per, rest = divmod(count - 1, frames)
        if rest or per <= 0:
            return [count]
        return [per] * (frames - 1) + [per + 1]
    per, rest = divmod(count, frames)
    if rest or per <= 0:
        return [count]
    return [per] * frames


def visual_segments(
    counts: list[int], token_mask_rows: torch.Tensor, segs_per_item: list[list[int]], modality: str
) -> list[list[int]]:
    """Assign the global list of items (images or videos, in placeholder order) to samples.

    Args:
        counts: token count of every item, in the order the model scatters them (row-major
            over the batch).
        token_mask_rows: ``[B]`` number of placeholder tokens of this modality per sample.
        segs_per_item: for each item, its unit lengths (summing to its count).

    Returns, per sample, the list of unit lengths, in placeholder order.
    """
    out: list[list[int]] = []
    it = 0
    for b, need in enumerate(token_mask_rows.tolist()):
        got: list[int] = []
        total = 0
        while total < need:
            if it >= len(counts):
                raise ValueError(
                    f"sample {b} has {need} {modality} tokens but the {modality} features run out "
                    f"after {total}; the {modality} placeholders and features do not match"
                )
            got.extend(segs_per_item[it])
            total += counts[it]
            it += 1
        if total != need:
            raise ValueError(
                f"sample {b} has {need} {modality} tokens, which is not a whole number of "
                f"{modality}s (the next boundary is at {total}); placeholders and features do "
                "not match"
            )
        out.append(got)
    if it != len(counts):
        raise ValueError(
            f"{len(counts) - it} {modality} feature block(s) left over after all placeholders "
            "were filled"
        )
    return out


def full_positions(
    spec: ModelSpec,
    position_ids: Optional[torch.Tensor],
    batch: int,
    length: int,
    device: torch.device,
) -> torch.Tensor:
    """The positions the language model would use for a prefill of ``length`` tokens.

    Returns ``[R, B, L]`` for M-RoPE models (R = 3 or 4) or ``[B, L]`` otherwise, exactly as
    the language model would build them from ``position_ids`` (None, ``[B, L]``, ``[1, L]``
    or ``[R, B, L]``) with an empty cache.
    """
    if position_ids is None:
        base = torch.arange(length, device=device)
        if spec.rows_if_none:
            return base.view(1, 1, -1).expand(spec.rows_if_none, batch, -1)
        return base.view(1, -1).expand(batch, -1)
    if position_ids.ndim == 1:
        position_ids = position_ids.view(1, -1)
    if position_ids.shape[-1] != length:
        raise ValueError(
            f"position_ids cover {position_ids.shape[-1]} tokens but the prefill has {length}"
        )
    if position_ids.ndim == 2:
        return position_ids.expand(batch, -1)
    if position_ids.ndim == 3:
        return position_ids.expand(-1, batch, -1)
    raise ValueError(f"unsupported position_ids shape {tuple(position_ids.shape)}")
