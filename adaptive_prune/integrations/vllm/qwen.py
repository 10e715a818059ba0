"""Pruning variants of vLLM's Qwen2-VL / Qwen2.5-VL models (imports vLLM; tested with 0.32.0).

Front end (processor subclass, in the API server process):
  the request's options and items give each item a placeholder count (``allocation.py``); the
  count and, when text-aware, the prompt's token ids travel with the item as two extra fields,
  and the item's cache key is salted with everything the count and selection depend on.
Model (in the engine-core / worker process):
  ``embed_multimodal`` runs the stock vision tower, keeps ``count`` rows of each item with
  ``adaptive_prune.prune`` (``selection.py``) and appends each kept row's (t, h, w) offset inside
  the item as extra columns; ``embed_input_ids`` strips those columns before the rows are merged
  and remembers the offsets of the batch's multimodal tokens; ``forward`` adds them to the
  positions. ``get_mrope_input_positions`` gives every placeholder of an item the item's start
  position and the text after it the position it has unpruned, so start + offset is each kept
  token's original M-RoPE position, whichever chunk of a chunked prefill it lands in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Optional

import numpy as np
import torch
from vllm.multimodal import MULTIMODAL_REGISTRY  # noqa: E402  (after our pure modules)
from vllm.multimodal.inputs import (  # noqa: E402
    MultiModalBatchedField,
    MultiModalFieldElem,
    MultiModalKwargsItem,
    MultiModalKwargsItems,
)
from vllm.multimodal.processing.processor import (  # noqa: E402
    MultiModalProcessingResult,
    PromptUpdateDetails,
)

from .allocation import (
    OPTION_NAMES,
    adaptive_weights,
    allocate_counts,
    frames_from_patches,
    item_minimums,
    item_signals,
    request_digest,
    resolve_options,
    total_budget,
)
from .selection import item_positions, select_rows

# Extra per-item fields (one set per modality, so that batched fields stay per modality).
KEEP_KEY = "ap_{}_keep"
TEXT_KEY = "ap_{}_text"
# Position offsets travel as (hi, lo) digit pairs in base 64 per axis: each digit is an integer
# below 256, exact in bf16 and fp16 as well as fp32.
POS_BASE = 64
POS_COLS = 6
MODALITIES = ("image", "video")
# The pixel signals read every second pixel of each patch (they resample to 192 px anyway).
SIGNAL_STRIDE = 2


def _encode_offsets(offsets: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[3, k]`` int offsets -> ``[k, 6]`` columns (t_hi, t_lo, h_hi, h_lo, w_hi, w_lo)."""
    if offsets.numel() and int(offsets.max()) >= POS_BASE * 256:
        raise ValueError(
            f"adaptive_prune: an item spans positions up to {int(offsets.max())}, more than the "
            f"{POS_BASE * 256} the position columns can carry"
        )
    hi, lo = offsets // POS_BASE, offsets % POS_BASE
    return torch.stack([hi[0], lo[0], hi[1], lo[1], hi[2], lo[2]], dim=1).to(dtype)


def _decode_offsets(cols: torch.Tensor) -> torch.Tensor:
    """``[k, 6]`` columns -> ``[3, k]`` int64 offsets."""
    c = cols.round().long()
    return torch.stack(
        [c[:, 0] * POS_BASE + c[:, 1], c[:, 2] * POS_BASE + c[:, 3], c[:, 4] * POS_BASE + c[:, 5]]
    )


# ---------------------------------------------------------------------------------- front end


class PruneProcessorMixin:
    """Mixed into a Qwen-VL multimodal processor: pruned placeholder counts and cache keys."""

    def _cached_apply_hf_processor(self, inputs, timing_ctx) -> MultiModalProcessingResult:
        hf_kwargs = dict(inputs.hf_processor_mm_kwargs)
        ours = {k: hf_kwargs.pop(k) for k in OPTION_NAMES if k in hf_kwargs}
        engine_kwargs = self.info.ctx.get_mm_config().mm_processor_kwargs or {}
        merged = {k: engine_kwargs[k] for k in OPTION_NAMES if k in engine_kwargs}
        merged.update(ours)
        opts = resolve_options(merged)
        # Every item is processed here (no processor cache): an item's count depends on the
        # whole request, so a cached item could not carry it.
        inputs = replace(inputs, hf_processor_mm_kwargs=hf_kwargs, cache=None)
        res = self._apply_hf_processor(inputs, timing_ctx)
        with timing_ctx.record("adaptive_prune_allocate"):
            return self._prune_result(res, inputs.prompt, opts)

    def _prune_result(self, res, prompt, opts) -> MultiModalProcessingResult:
        cfg = self.info.get_hf_config()
        vcfg = cfg.vision_config
        merge = int(vcfg.spatial_merge_size)
        items: list[tuple[str, int]] = [
            (m, i) for m in MODALITIES for i in range(len(res.kwargs.get(m, [])))
        ]
        sizes, grids = [], []
        for m, i in items:
            grid = res.kwargs[m][i][f"{m}_grid_thw"].data
            grids.append([int(x) for x in grid.tolist()])
            sizes.append(int(grid.prod()) // merge**2)
        n_all = sum(sizes)
        total = total_budget(n_all, opts.keep_ratio)
        item_minimums(opts.min_per_image, len(sizes))  # a per-item list of the wrong length
        if opts.keep_ratio >= 1.0:
            counts = list(sizes)
        elif opts.prune_mode == "proportional":
            counts = allocate_counts(sizes, total, opts.min_per_image)
        else:
            divs, thumbs = [], []
            for (m, i), grid in zip(items, grids):
                key = "pixel_values" if m == "image" else "pixel_values_videos"
                if key not in res.kwargs[m][i]:
                    raise ValueError(
                        "adaptive_prune: prune_mode='adaptive' scores pixels; with precomputed "
                        "embeddings use prune_mode='proportional'"
                    )
                frames = frames_from_patches(
                    res.kwargs[m][i][key].data,
                    grid,
                    int(vcfg.patch_size),
                    int(vcfg.temporal_patch_size),
                    merge,
                    int(getattr(vcfg, "in_channels", getattr(vcfg, "in_chans", 3))),
                    stride=SIGNAL_STRIDE,
                )
                d, t = item_signals(frames)
                divs.append(d)
                thumbs.append(t)
            counts = allocate_counts(
                sizes, total, opts.min_per_image, adaptive_weights(sizes, divs, thumbs)
            )

        text_ids: list[int] = []
        if opts.text_aware and opts.keep_ratio < 1.0:
            tok = self.info.get_tokenizer()
            skip = set(getattr(tok, "all_special_ids", []) or [])
            for name in (
                "image_token_id",
                "video_token_id",
                "vision_start_token_id",
                "vision_end_token_id",
            ):
                if getattr(cfg, name, None) is not None:
                    skip.add(int(getattr(cfg, name)))
            text_ids = [int(t) for t in prompt if int(t) not in skip]

        # The cache key of every item: its own hash plus everything its count and selection
        # depend on (the options, every item of the request in order, the prompt when used).
        all_hashes = [res.hashes[m][i] for m, i in items]
        digest = request_digest(opts.digest(), all_hashes, counts, text_ids)
        field = MultiModalBatchedField(keep_on_cpu=True)
        new_kwargs: dict[str, list] = {m: list(v) for m, v in res.kwargs.items()}
        new_hashes: dict[str, list[str]] = {m: list(v) for m, v in res.hashes.items()}
        new_updates: dict[str, list] = {m: list(v) for m, v in res.prompt_updates.items()}
        text = torch.tensor(text_ids, dtype=torch.long)
        for (m, i), count, size in zip(items, counts, sizes):
            item = MultiModalKwargsItem(dict(res.kwargs[m][i]))
            item[KEEP_KEY.format(m)] = MultiModalFieldElem(
                data=torch.tensor([count, size], dtype=torch.long), field=field
            )
            item[TEXT_KEY.format(m)] = MultiModalFieldElem(data=text.clone(), field=field)
            new_kwargs[m][i] = item
            new_hashes[m][i] = hashlib.sha256(
                f"{res.hashes[m][i]}|adaptive_prune|{digest}".encode()
            ).hexdigest()
            new_updates[m][i] = [
                replace(u, content=PromptUpdateDetails.from_seq(list(u.content.full[:1]) * count))
                for u in res.prompt_updates[m][i]
            ]
        return MultiModalProcessingResult(
            prompt_ids=res.prompt_ids,
            kwargs=MultiModalKwargsItems(new_kwargs),
            hashes=new_hashes,
            prompt_updates=new_updates,
        )


# ---------------------------------------------------------------------------------- model side


class PruneModelMixin:
    """Mixed into a Qwen-VL model class: selection in ``embed_multimodal``, exact positions."""

    _ap_pending: Optional[tuple[torch.Tensor, torch.Tensor]] = None

    def _ap_check_config(self, vllm_config) -> None:
        mm_config = vllm_config.model_config.get_multimodal_config()
        rate = getattr(mm_config, "video_pruning_rate", None)
        if rate:
            raise ValueError(
                "adaptive_prune: --video-pruning-rate (vLLM's EVS) cannot be combined with the "
                "adaptive_prune model variants; leave it unset and use keep_ratio"
            )
        pp = getattr(getattr(vllm_config, "parallel_config", None), "pipeline_parallel_size", 1)
        if pp and pp > 1:
            # later pipeline stages never see the embeddings that carry the kept positions
            raise ValueError(
                "adaptive_prune: pipeline parallelism is not supported by the adaptive_prune "
                "model variants (tensor parallelism is)"
            )
        comp = getattr(vllm_config, "compilation_config", None)
        if getattr(comp, "cudagraph_mm_encoder", False):
            raise ValueError(
                "adaptive_prune: cudagraph_mm_encoder=True bypasses embed_multimodal, where the "
                "selection runs; leave it off with the adaptive_prune model variants"
            )
        self.is_multimodal_pruning_enabled = False

    def _ap_hidden_size(self) -> int:
        cfg = self.config
        return int(getattr(cfg, "text_config", cfg).hidden_size)

    def _ap_t_scale(self, modality: str, second_per_grid: Optional[float]) -> float:
        if modality != "video":
            return 1.0
        tps = float(getattr(self.config.vision_config, "tokens_per_second", 1.0))
        return (1.0 if second_per_grid is None else float(second_per_grid)) * tps

    def embed_multimodal(self, **kwargs: object):
        extra = {k: kwargs.pop(k) for k in list(kwargs) if k.startswith("ap_")}
        embeds = super().embed_multimodal(**kwargs)
        if not extra or len(embeds) == 0:
            return embeds
        # The stock method returns the items of each modality in the order the modalities'
        # pixel keys appear in kwargs.
        order: list[str] = []
        for key in kwargs:
            m = {
                "pixel_values": "image",
                "image_embeds": "image",
                "pixel_values_videos": "video",
                "video_embeds": "video",
            }.get(key)
            if m is not None and m not in order:
                order.append(m)
        out = []
        idx = 0
        for m in order:
            grids = kwargs[f"{m}_grid_thw"]
            grids = grids if isinstance(grids, torch.Tensor) else torch.stack(list(grids))
            grids = grids.reshape(-1, 3)
            keep = _as_list(extra.get(KEEP_KEY.format(m)))
            texts = _as_list(extra.get(TEXT_KEY.format(m)))
            seconds = kwargs.get("second_per_grid_ts") if m == "video" else None
            seconds = _as_list(seconds) if seconds is not None else None
            for j in range(grids.shape[0]):
                rows = embeds[idx]
                idx += 1
                grid = [int(x) for x in grids[j].tolist()]
                count = int(keep[j][0]) if keep is not None else rows.shape[0]
                spg = float(seconds[j]) if seconds is not None else None
                out.append(self._ap_prune_item(m, rows, grid, count, texts and texts[j], spg))
        if idx != len(embeds):
            raise RuntimeError(
                f"adaptive_prune: {len(embeds)} encoder outputs for {idx} items (modality order)"
            )
        return tuple(out)

    def _ap_prune_item(self, modality, rows, grid, count, text_ids, second_per_grid):
        merge = int(self.config.vision_config.spatial_merge_size)
        t, h, w = grid
        if rows.shape[0] != t * (h // merge) * (w // merge):
            raise RuntimeError(f"adaptive_prune: {rows.shape[0]} rows for grid {grid}")
        text = None
        if text_ids is not None and len(text_ids) > 0:
            ids = torch.as_tensor(text_ids, dtype=torch.long, device=rows.device).reshape(-1)
            text = self.get_language_model().embed_input_ids(ids).to(rows.dtype)
        frame_sizes = [(h // merge) * (w // merge)] * t if modality == "video" else None
        kept = select_rows(rows, count, text, frame_sizes)
        offsets = item_positions(grid, merge, self._ap_t_scale(modality, second_per_grid))
        cols = _encode_offsets(offsets[:, kept.cpu()], rows.dtype).to(rows.device)
        _record_selection(modality, grid, kept, offsets[:, kept.cpu()])
        return torch.cat([rows[kept], cols], dim=1)

    def embed_input_ids(self, input_ids, multimodal_embeddings=None, *, is_multimodal=None):
        self._ap_pending = None
        if multimodal_embeddings is not None and len(multimodal_embeddings) > 0:
            width = self._ap_hidden_size()
            if multimodal_embeddings[0].shape[-1] == width + POS_COLS:
                offsets = _decode_offsets(torch.cat([e[:, width:] for e in multimodal_embeddings]))
                multimodal_embeddings = [e[:, :width] for e in multimodal_embeddings]
                where = torch.nonzero(is_multimodal, as_tuple=False).reshape(-1)
                if where.numel() != offsets.shape[1]:
                    raise RuntimeError(
                        f"adaptive_prune: {offsets.shape[1]} multimodal rows for "
                        f"{where.numel()} multimodal positions"
                    )
                self._ap_pending = (where, offsets.to(where.device))
        return super().embed_input_ids(
            input_ids, multimodal_embeddings, is_multimodal=is_multimodal
        )

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kw):
        pending, self._ap_pending = self._ap_pending, None
        if pending is not None and inputs_embeds is not None and positions.dim() == 2:
            where, offsets = pending
            if where.numel() and int(where.max()) < positions.shape[1]:
                positions = positions.clone()
                positions[:, where] += offsets.to(positions.dtype)
        return super().forward(
            input_ids,
            positions,
            intermediate_tensors=intermediate_tensors,
            inputs_embeds=inputs_embeds,
            **kw,
        )

    def get_mrope_input_positions(self, input_tokens, mm_features):
        """Positions of the pruned prompt: text as unpruned, every placeholder of an item at the
        item's start (``forward`` adds each kept token's offset), the text after an item at
        ``start + extent`` where ``extent`` is the unpruned item's ``max(t, h, w) + 1``."""
        merge = int(self.config.vision_config.spatial_merge_size)
        cols: list[np.ndarray] = []
        st = 0  # next token index
        nxt = 0  # next free position
        for f in sorted(mm_features, key=lambda f: f.mm_position.offset):
            off, length = int(f.mm_position.offset), int(f.mm_position.length)
            text_len = off - st
            cols.append(np.broadcast_to(np.arange(text_len) + nxt, (3, text_len)))
            base = nxt + text_len
            m = "image" if f.modality.startswith("image") else "video"
            grid = [int(x) for x in f.data[f"{m}_grid_thw"].data.tolist()]
            spg = None
            if m == "video" and f.data.get("second_per_grid_ts") is not None:
                spg = float(f.data["second_per_grid_ts"].data.item())
            extent = int(item_positions(grid, merge, self._ap_t_scale(m, spg)).max()) + 1
            cols.append(np.full((3, length), base, dtype=np.int64))
            st = off + length
            nxt = base + extent
        if st < len(input_tokens):
            text_len = len(input_tokens) - st
            cols.append(np.broadcast_to(np.arange(text_len) + nxt, (3, text_len)))
            nxt += text_len
        pos = np.concatenate(cols, axis=1) if cols else np.zeros((3, 0), np.int64)
        return torch.from_numpy(np.ascontiguousarray(pos, dtype=np.int64)), int(
            nxt - len(input_tokens)
        )


def _as_list(x: Any) -> Optional[list]:
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        return list(x.unbind(0))
    return list(x)


def _record_selection(modality, grid, kept, offsets) -> None:
    """Test hook: with ``ADAPTIVE_PRUNE_VLLM_RECORD=path``, append each selection as a JSON line."""
    import json
    import os

    path = os.environ.get("ADAPTIVE_PRUNE_VLLM_RECORD")
    if not path:
        return
    with open(path, "a") as fh:
        rec = {
            "modality": modality,
            "grid": grid,
            "kept": kept.cpu().tolist(),
            "offsets": offsets.tolist(),
        }
        fh.write(json.dumps(rec) + "\n")


# ---------------------------------------------------------------------------------- classes

from vllm.model_executor.models.qwen2_5_vl import (  # noqa: E402
    Qwen2_5_VLDummyInputsBuilder,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLMultiModalProcessor,
    Qwen2_5_VLProcessingInfo,
)
from vllm.model_executor.models.qwen2_vl import (  # noqa: E402
    Qwen2VLDummyInputsBuilder,
    Qwen2VLForConditionalGeneration,
    Qwen2VLMultiModalProcessor,
    Qwen2VLProcessingInfo,
)


class AdaptivePruneQwen2_5_VLProcessor(PruneProcessorMixin, Qwen2_5_VLMultiModalProcessor):
    pass


@MULTIMODAL_REGISTRY.register_processor(
    AdaptivePruneQwen2_5_VLProcessor,
    info=Qwen2_5_VLProcessingInfo,
    dummy_inputs=Qwen2_5_VLDummyInputsBuilder,
)
class AdaptivePruneQwen2_5_VL(PruneModelMixin, Qwen2_5_VLForConditionalGeneration):
    def __init__(self, *, vllm_config, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._ap_check_config(vllm_config)


class AdaptivePruneQwen2VLProcessor(PruneProcessorMixin, Qwen2VLMultiModalProcessor):
    pass


@MULTIMODAL_REGISTRY.register_processor(
    AdaptivePruneQwen2VLProcessor,
    info=Qwen2VLProcessingInfo,
    dummy_inputs=Qwen2VLDummyInputsBuilder,
)
class AdaptivePruneQwen2VL(PruneModelMixin, Qwen2VLForConditionalGeneration):
    def __init__(self, *, vllm_config, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._ap_check_config(vllm_config)


__all__: Sequence[str] = ["AdaptivePruneQwen2_5_VL", "AdaptivePruneQwen2VL"]
_unused: Mapping = {}
