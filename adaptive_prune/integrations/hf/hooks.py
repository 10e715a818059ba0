"""The hook lifecycle of the Hugging Face integration: attach/detach, hooks, cache, errors.

Users import :mod:`adaptive_prune.integrations.hf`, which re-exports :func:`attach` and
:class:`PruneHandle` from here. :func:`attach` validates its arguments, finds the model's parts
(:mod:`.models`) and installs a :class:`PruneHandle`; ``detach()`` removes everything again.
The tensor work of a pruned prefill (units, de-duplication, the compact layout, the gathers) is
in :mod:`.layout`; this module decides when it runs and carries its result to the decode steps
through the cache.

How it works (no subclassing, no copied model code; forward pre-hooks only):

1. A pre-hook on the vision-language model (``model.model``) remembers ``input_ids`` of the
   prefill (its language model is called with ``input_ids=None``) and, on decode steps of a
   manual loop that passes no ``position_ids``, injects the positions the unpruned model would
   have used.
2. ``get_image_features`` / ``get_video_features`` are wrapped on the instance (with
   ``functools.wraps``, so ``generate``'s signature inspection still works) to learn where each
   image, video and video frame starts.
3. A pre-hook on the language model sees the merged ``inputs_embeds``, the model's own full
   (M-)RoPE ``position_ids`` and the 2-D mask. At the prefill it selects the visual tokens of
   all distinct samples with one :func:`adaptive_prune.prune_batch` call
   (:func:`.layout.choose`), keeps the text tokens plus the chosen visual tokens, drops the
   padding and left-pads every row to the longest kept row; embeddings, mask, positions (and
   Qwen3-VL's DeepStack features) are gathered with the same index, so every kept token keeps
   its original position. At decode steps it rebuilds the 2-D mask in the compact layout of
   the cache (``generate`` keeps passing the unpruned one).
4. A pre-hook on the top model refuses ``labels``; ``generate`` is wrapped to refuse chunked
   prefill, assisted decoding and continuing from an existing cache.

Tested with transformers ``>=5.24,<5.25`` (see :data:`TESTED_TRANSFORMERS`).
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Optional, Union

import torch
from torch import nn

try:
    import transformers
    from transformers.cache_utils import DynamicCache
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "adaptive_prune.integrations.hf needs Hugging Face transformers: "
        "pip install 'adaptive_prune[hf]'"
    ) from exc

from . import layout as L
from . import models as M

__all__ = ["attach", "PruneHandle", "SUPPORTED_MODELS", "TESTED_TRANSFORMERS"]

#: transformers versions the integration was tested with (the ``hf`` extra pins the same range).
TESTED_TRANSFORMERS = ">=5.24,<5.25"
#: ``config.model_type`` -> model family name.
SUPPORTED_MODELS = {k: s.name for k, s in M.SPECS.items()}

_STATE_ATTR = "_adaptive_prune_state"
_HANDLE_ATTR = "_adaptive_prune_handle"
_MODALITIES = ("image", "video")


@dataclass
class _CacheState:
    """Stored on the ``DynamicCache`` of a pruned prefill; read at every decode step."""

    pruned: bool
    length: int  # unpruned prefill length L (columns of the caller's attention mask)
    compact_length: int  # Lp, cache entries written by the prefill
    compact_mask: Optional[torch.Tensor]  # [B, Lp]
    next_pos: Optional[torch.Tensor]  # [B]: 1 + the largest unpruned position of each row


@dataclass
class _Prefill:
    input_ids: torch.Tensor  # [B, L]
    mm: Optional[dict]  # mm_encoder_outputs given to the VLM forward (generate path), or None


@dataclass
class _Record:
    """What a wrapped ``get_*_features`` call returned, to split videos into frames."""

    out: Any
    by_id: dict  # id(item tensor) -> (item tensor, unit lengths)
    frames_all: Optional[int]  # LLaVA-OV: every video of the call has this many frames


def _bind(sig: inspect.Signature, args: tuple, kwargs: dict) -> dict:
    """All arguments of a call as one keyword dict (``**kwargs`` flattened in)."""
    bound = sig.bind_partial(*args, **kwargs)
    out = dict(bound.arguments)
    for name, p in sig.parameters.items():
        if p.kind is inspect.Parameter.VAR_KEYWORD and name in out:
            out.update(out.pop(name))
        elif p.kind is inspect.Parameter.VAR_POSITIONAL and name in out:
            raise TypeError("unexpected extra positional arguments")
    return out


def _cache_of(kw: dict) -> Any:
    cache = kw.get("cache")
    return kw.get("past_key_values") if cache is None else cache


def _check_cache(cache: Any) -> int:
    """Length of ``cache`` (0 when None); raises for cache types we cannot compact."""
    if cache is None:
        return 0
    if not isinstance(cache, DynamicCache):
        raise NotImplementedError(
            f"adaptive_prune.integrations.hf supports only DynamicCache (the default), got "
            f"{type(cache).__name__}: static/compiled caches (cache_implementation='static', "
            "torch.compile) and other cache types are not supported with pruning, because the "
            "pruned prompt length differs from the input length. Use the default dynamic cache."
        )
    return int(cache.get_seq_length())


class PruneHandle:
    """Returned by :func:`attach`. ``detach()`` (or leaving the ``with`` block) undoes it.

    After every prefill:

    - ``last_kept``: list (one per prefill row, i.e. ``batch * num_beams`` under beam search)
      of int64 tensors: the positions in that row of the original, padded ``input_ids`` whose
      tokens reached the language model (text tokens and kept visual tokens; padding is not
      listed), ascending. In a plain forward the returned logits / hidden states are in this
      compact layout: row ``b`` holds ``len(last_kept[b])`` real entries at its right end.
    - ``last_num_visual``: per row ``(visual tokens before, visual tokens kept)``.
    - ``last_units``: per row, the token counts of its visual units (images, video frames) in
      prompt order: what a per-image ``min_per_image`` list counts.
    - ``last_seq_len``: ``(unpruned prefill length L, pruned prefill length)``.

    ``min_per_image`` can be changed between calls (``handle.min_per_image = ...``, validated
    like :func:`attach`'s argument), e.g. to protect the document page of the next prompt.
    """

    def __init__(
        self,
        model: nn.Module,
        spec: M.ModelSpec,
        top: Optional[nn.Module],
        inner: nn.Module,
        lm: nn.Module,
        prune_kwargs: dict,
        text_aware: bool,
        split_video_frames: bool,
        exclude_ids: set[int],
    ):
        self.model = model
        self.spec = spec
        self._top, self._inner, self._lm = top, inner, lm
        self.prune_kwargs = prune_kwargs
        self.text_aware = text_aware
        self.split_video_frames = split_video_frames
        self._exclude = torch.tensor(sorted(exclude_ids), dtype=torch.long)
        cfg = inner.config
        self._image_id = int(cfg.image_token_id)
        self._video_id = int(cfg.video_token_id)
        self._ctx: Optional[_Prefill] = None
        self._records: dict[str, Optional[_Record]] = {m: None for m in _MODALITIES}
        self._pending: Optional[_CacheState] = None
        self._in_features = 0  # Qwen3-VL's get_video_features calls get_image_features
        self._hooks: list = []
        self._patched: list[tuple[Any, str, bool, Any, Any]] = []
        self.attached = False
        self.last_kept: Optional[list[torch.Tensor]] = None
        self.last_num_visual: Optional[list[tuple[int, int]]] = None
        self.last_units: Optional[list[list[int]]] = None
        self.last_seq_len: Optional[tuple[int, int]] = None

    @property
    def min_per_image(self) -> MinPerImage:
        """The minimum tokens per image / video frame of the next prefills: an int for every
        unit, a sequence with one int per unit of every row with visual units, or one such
        sequence per sample of the batch (see :func:`attach`)."""
        return self.prune_kwargs["min_per_image"]

    @min_per_image.setter
    def min_per_image(self, value: MinPerImage) -> None:
        self.prune_kwargs["min_per_image"] = _check_min_per_image(value)

    # ------------------------------------------------------------------ lifecycle
    def _install(self) -> None:
        inner_sig = inspect.signature(self._inner.forward)
        lm_sig = inspect.signature(self._lm.forward)
        self._hooks.append(
            self._inner.register_forward_pre_hook(
                functools.partial(self._inner_pre_hook, inner_sig), with_kwargs=True
            )
        )
        self._hooks.append(
            self._lm.register_forward_pre_hook(
                functools.partial(self._lm_pre_hook, lm_sig), with_kwargs=True
            )
        )
        self._hooks.append(self._lm.register_forward_hook(self._lm_post_hook, with_kwargs=True))
        if self._top is not None:
            top_sig = inspect.signature(self._top.forward)
            self._hooks.append(
                self._top.register_forward_pre_hook(
                    functools.partial(self._top_pre_hook, top_sig), with_kwargs=True
                )
            )
            self._patch(self._top, "generate", self._wrap_generate)
        for modality in _MODALITIES:
            if hasattr(self._inner, f"get_{modality}_features"):
                self._patch(
                    self._inner,
                    f"get_{modality}_features",
                    functools.partial(self._wrap_features, modality),
                )
        setattr(self.model, _HANDLE_ATTR, self)
        self.attached = True

    def _patch(self, obj: Any, name: str, make: Any) -> None:
        had = name in obj.__dict__
        previous = obj.__dict__.get(name)
        wrapper = make(getattr(obj, name))
        setattr(obj, name, wrapper)
        self._patched.append((obj, name, had, previous, wrapper))

    def detach(self) -> None:
        """Remove every hook and wrapper; the model behaves exactly as before ``attach``."""
        if not self.attached:
            return
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        for obj, name, had, previous, wrapper in reversed(self._patched):
            if obj.__dict__.get(name) is wrapper:
                if had:
                    setattr(obj, name, previous)
                else:
                    delattr(obj, name)
        self._patched.clear()
        if getattr(self.model, _HANDLE_ATTR, None) is self:
            delattr(self.model, _HANDLE_ATTR)
        self._ctx = None
        self._pending = None
        self._records = {m: None for m in _MODALITIES}
        self.attached = False

    def __enter__(self) -> PruneHandle:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.detach()

    def __repr__(self) -> str:
        state = "attached" if self.attached else "detached"
        return (
            f"PruneHandle({self.spec.name}, {state}, text_aware={self.text_aware}, "
            f"{self.prune_kwargs})"
        )

    # ------------------------------------------------------------------ wrappers
    def _wrap_generate(self, generate: Any) -> Any:
        @functools.wraps(generate)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            gc = kwargs.get("generation_config") or getattr(self._top, "generation_config", None)

            def setting(name: str) -> Any:
                return kwargs[name] if name in kwargs else getattr(gc, name, None)

            if setting("prefill_chunk_size") is not None:
                raise NotImplementedError(
                    "chunked prefill (prefill_chunk_size) is not supported with visual-token "
                    "pruning: the pruner needs the whole prompt in one prefill. Pass "
                    "prefill_chunk_size=None."
                )
            if kwargs.get("assistant_model") is not None or setting("prompt_lookup_num_tokens"):
                raise NotImplementedError(
                    "assisted / speculative decoding is not supported with visual-token pruning"
                )
            cache = _cache_of(kwargs)
            if _check_cache(cache) > 0:
                raise NotImplementedError(
                    "continuing generation from a non-empty cache (multi-turn reuse, chunked "
                    "prefill) is not supported with visual-token pruning; start from an empty "
                    "cache"
                )
            if setting("use_cache") is False:
                raise NotImplementedError(
                    "generate(use_cache=False) is not supported with visual-token pruning: it "
                    "re-runs the whole prompt every step. Use the default use_cache=True."
                )
            impl = setting("cache_implementation")
            if impl not in (None, "dynamic"):
                raise NotImplementedError(
                    f"cache_implementation={impl!r} is not supported with visual-token pruning "
                    "(static/compiled caches need a fixed prompt length); use the default "
                    "dynamic cache"
                )
            return generate(*args, **kwargs)

        return wrapper

    def _wrap_features(self, modality: str, fn: Any) -> Any:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self._in_features += 1
            try:
                out = fn(*args, **kwargs)
            finally:
                self._in_features -= 1
            if self._in_features == 0:  # outermost call only
                self._records[modality] = self._make_record(modality, sig, args, kwargs, out)
            return out

        return wrapper

    def _make_record(
        self, modality: str, sig: inspect.Signature, args: tuple, kwargs: dict, out: Any
    ) -> Optional[_Record]:
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            return None
        kw = _bind(sig, args, kwargs)
        frames: list[Optional[int]]
        frames_all = None
        items = list(pooled) if isinstance(pooled, (list, tuple)) else list(pooled.unbind(0))
        if modality == "video" and self.spec.video_layout == "grid":
            grid = kw.get("video_grid_thw")
            frames = [int(t) for t in grid[:, 0].tolist()] if grid is not None else []
        elif modality == "video":
            px = kw.get("pixel_values_videos")
            frames_all = int(px.shape[1]) if px is not None and px.ndim == 5 else None
            frames = [frames_all] * len(items)
        else:
            frames = [None] * len(items)
        if len(frames) != len(items):
            frames = [None] * len(items)
        by_id = {}
        if isinstance(pooled, (list, tuple)):
            for t, f in zip(items, frames):
                segs = M.item_segments(
                    self.spec, modality, int(t.shape[0]), f, self.split_video_frames
                )
                by_id[id(t)] = (t, segs)
        return _Record(out, by_id, frames_all)

    # ------------------------------------------------------------------ hooks
    def _top_pre_hook(
        self, sig: inspect.Signature, module: nn.Module, args: tuple, kwargs: dict
    ) -> None:
        kw = _bind(sig, args, kwargs)
        if kw.get("labels") is not None:
            raise NotImplementedError(
                "labels were passed to a model with visual-token pruning attached: training and "
                "loss computation are not supported (the pruned sequence no longer lines up "
                "with the labels). Call handle.detach() first."
            )

    def _inner_pre_hook(
        self, sig: inspect.Signature, module: nn.Module, args: tuple, kwargs: dict
    ) -> tuple[tuple, dict]:
        kw = _bind(sig, args, kwargs)
        cache = _cache_of(kw)
        past = _check_cache(cache)
        mm = kw.get("mm_encoder_outputs")
        has_visual = (
            kw.get("pixel_values") is not None
            or kw.get("pixel_values_videos") is not None
            or bool(mm)
        )
        if past == 0:
            mask = kw.get("attention_mask")
            if mask is not None and mask.ndim != 2:
                raise NotImplementedError(
                    f"a {mask.ndim}-D attention_mask is not supported with visual-token pruning; "
                    "pass the usual 2-D padding mask [batch, seq]"
                )
            ids = kw.get("input_ids")
            if ids is None:
                if has_visual:
                    raise ValueError(
                        "visual-token pruning needs input_ids to find the image/video "
                        "placeholders; inputs_embeds-only calls with images are not supported"
                    )
                self._ctx = None
            else:
                self._ctx = _Prefill(ids, mm if mm else None)
            if not mm:
                # plain forward: the features are computed inside this call, after this hook
                self._records = {m: None for m in _MODALITIES}
            return (), kw
        # a later step: the cache must come from a prefill this integration handled
        self._ctx = None
        state = getattr(cache, _STATE_ATTR, None)
        if state is None:
            raise NotImplementedError(
                "this call continues from a non-empty cache that was not filled by a pruned "
                "prefill (chunked prefill, or a cache built before attach()); this is not "
                "supported with visual-token pruning"
            )
        if has_visual:
            raise NotImplementedError(
                "new images or videos after the prefill (multi-turn with a reused cache) are "
                "not supported with visual-token pruning; start from an empty cache"
            )
        if state.pruned and kw.get("position_ids") is None:
            ref = kw.get("input_ids")
            ref = kw.get("inputs_embeds") if ref is None else ref
            q = int(ref.shape[1])
            step = past - state.compact_length
            pos = state.next_pos.view(-1, 1) + step + torch.arange(q, device=ref.device)
            if pos.shape[0] != ref.shape[0]:
                raise ValueError(
                    f"decode batch {ref.shape[0]} differs from the prefill batch {pos.shape[0]}"
                )
            kw["position_ids"] = (
                pos.view(1, *pos.shape).expand(3, -1, -1) if self.spec.mrope else pos
            )
        return (), kw

    def _lm_pre_hook(
        self, sig: inspect.Signature, module: nn.Module, args: tuple, kwargs: dict
    ) -> tuple[tuple, dict]:
        kw = _bind(sig, args, kwargs)
        cache = _cache_of(kw)
        past = _check_cache(cache)
        self._pending = None
        if past > 0:
            state = getattr(cache, _STATE_ATTR, None)
            if state is not None and state.pruned:
                kw["attention_mask"] = self._decode_mask(state, kw, past)
            return (), kw
        ctx, self._ctx = self._ctx, None
        embeds = kw.get("inputs_embeds")
        if (
            ctx is None
            or embeds is None
            or kw.get("input_ids") is not None
            or tuple(ctx.input_ids.shape) != tuple(embeds.shape[:2])
        ):
            self._passthrough(kw, embeds if embeds is not None else kw.get("input_ids"))
        else:
            try:
                self._prune_prefill(ctx, kw)
            finally:
                self._records = {m: None for m in _MODALITIES}  # do not keep features alive
        return (), kw

    def _lm_post_hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        state, self._pending = self._pending, None
        if state is None:
            return
        cache = getattr(output, "cache", None)
        if cache is None:
            cache = getattr(output, "past_key_values", None)
        if cache is None:
            cache = _cache_of(kwargs)
        if cache is not None:
            setattr(cache, _STATE_ATTR, state)

    # ------------------------------------------------------------------ prefill
    def _passthrough(self, kw: dict, ref: Optional[torch.Tensor]) -> None:
        """A prefill without anything to prune: record it and leave the call unchanged."""
        if ref is None:
            return
        b, length = int(ref.shape[0]), int(ref.shape[1])
        mask = kw.get("attention_mask")
        real = mask.bool() if mask is not None and mask.ndim == 2 else None
        self.last_kept = [
            (
                real[i].nonzero().view(-1)
                if real is not None
                else torch.arange(length, device=ref.device)
            )
            for i in range(b)
        ]
        self.last_num_visual = [(0, 0)] * b
        self.last_seq_len = (length, length)
        self._pending = _CacheState(False, length, length, None, None)

    def _segments(self, ctx: _Prefill, modality: str, tok: torch.Tensor) -> list[list[int]]:
        """Per sample, the unit lengths (image / video / frame) of this modality's tokens."""
        per_sample = tok.sum(1)
        if int(per_sample.sum()) == 0:
            return [[] for _ in range(tok.shape[0])]
        rec = self._records.get(modality)
        src = ctx.mm.get(modality) if ctx.mm is not None else (rec.out if rec else None)
        pooled = getattr(src, "pooler_output", None)
        if pooled is None:
            # no features seen (e.g. precomputed outside): one unit per contiguous run
            return [L.contiguous_runs(row) for row in tok]
        items = list(pooled) if isinstance(pooled, (list, tuple)) else list(pooled.unbind(0))
        counts = [int(t.shape[0]) for t in items]
        usable = rec is not None and rec.out is src
        segs = []
        for t, n in zip(items, counts):
            hit = rec.by_id.get(id(t)) if usable else None
            if hit is not None and hit[0] is t:
                segs.append(hit[1])
            elif usable and rec.frames_all:
                segs.append(
                    M.item_segments(self.spec, modality, n, rec.frames_all, self.split_video_frames)
                )
            else:
                segs.append([n])
        return M.visual_segments(counts, per_sample, segs, modality)

    def _prune_prefill(self, ctx: _Prefill, kw: dict) -> None:
        embeds: torch.Tensor = kw["inputs_embeds"]
        ids = ctx.input_ids.to(embeds.device)
        b, length, _ = embeds.shape
        dev = embeds.device
        mask = kw.get("attention_mask")
        real = (
            mask.bool() if mask is not None else torch.ones(b, length, dtype=torch.bool, device=dev)
        )
        tok = {"image": (ids == self._image_id) & real, "video": (ids == self._video_id) & real}
        vis = tok["image"] | tok["video"]
        if not bool(vis.any()):
            self._passthrough(kw, embeds)
            return
        segs = {m: self._segments(ctx, m, tok[m]) for m in _MODALITIES}
        text = L.text_mask(ids, real, vis, self._exclude.to(dev))

        # each row's units in placeholder order (images and videos interleaved)
        units = [
            L.unit_positions([tok[m][i] for m in _MODALITIES], [segs[m][i] for m in _MODALITIES])
            for i in range(b)
        ]
        prune_kwargs = dict(self.prune_kwargs)
        q = prune_kwargs["min_per_image"]
        minimums = L.row_minimums(q, [len(u) for u in units])
        if not isinstance(q, int):
            prune_kwargs["min_per_image"] = 0  # every row with units has its own minimums
        samples: list[Optional[L.Sample]] = []
        for i in range(b):
            if not units[i]:  # a text-only sample in a batch with images
                samples.append(None)
                continue
            rows = torch.cat(units[i])
            t = embeds[i, text[i]] if self.text_aware and bool(text[i].any()) else None
            key = (tuple(ids[i].tolist()), tuple(real[i].tolist()), minimums[i])
            lengths = [int(p.numel()) for p in units[i]]
            samples.append(L.Sample(rows, lengths, embeds[i, rows], t, key, minimums[i]))
        kept_rows = L.choose(samples, prune_kwargs)
        num_visual = [
            (0, 0) if s is None else (int(s.rows.numel()), int(k.numel()))
            for s, k in zip(samples, kept_rows)
        ]

        keep = L.keep_mask(real, vis, kept_rows)  # text always kept
        compact = L.compact_layout(keep)
        pos_full = M.full_positions(self.spec, kw.get("position_ids"), b, length, dev)
        kw["inputs_embeds"] = L.gather_tokens(embeds, compact)
        kw["position_ids"] = L.gather_positions(pos_full, compact)
        mask_dtype = mask.dtype if mask is not None else torch.long
        cmask = compact.mask.to(mask_dtype)
        kw["attention_mask"] = cmask  # always explicit: gaps in positions must not look packed
        if self.spec.deepstack and kw.get("visual_pos_masks") is not None:
            kw["visual_pos_masks"], ds = L.gather_deepstack(
                kw["visual_pos_masks"], kw.get("deepstack_visual_embeds"), keep, compact
            )
            if ds is not None:
                kw["deepstack_visual_embeds"] = ds

        self.last_kept = compact.kept
        self.last_num_visual = num_visual
        self.last_units = [[] if s is None else list(s.units) for s in samples]
        self.last_seq_len = (length, compact.length)
        self._pending = _CacheState(
            True, length, compact.length, cmask, L.next_positions(pos_full, real)
        )

    # ------------------------------------------------------------------ decode
    def _decode_mask(self, state: _CacheState, kw: dict, past: int) -> torch.Tensor:
        embeds = kw.get("inputs_embeds")
        ref = embeds if embeds is not None else kw.get("input_ids")
        q = int(ref.shape[1])
        extra = past - state.compact_length + q  # tokens after the prompt, this step included
        if extra <= 0:
            raise RuntimeError(
                f"the cache holds {past} entries, fewer than the pruned prompt "
                f"({state.compact_length}); was it cropped? This is not supported"
            )
        mask = kw.get("attention_mask")
        cm = state.compact_mask
        if cm.shape[0] != ref.shape[0]:
            raise ValueError(
                f"decode batch {ref.shape[0]} differs from the pruned prefill batch {cm.shape[0]}"
            )
        if mask is None:
            tail = cm.new_ones(cm.shape[0], extra)
        else:
            if mask.ndim != 2:
                raise NotImplementedError("only 2-D attention masks are supported while decoding")
            if mask.shape[1] != state.length + extra:
                raise ValueError(
                    f"attention_mask has {mask.shape[1]} columns but this pruned cache expects "
                    f"{state.length + extra} (the unpruned prompt length {state.length} plus "
                    f"{extra} new tokens); pass the mask in the original, unpruned layout"
                )
            tail = mask[:, state.length :].to(cm.dtype)
        return torch.cat([cm.to(ref.device), tail.to(ref.device)], dim=1)


def _exclude_ids(model: nn.Module, inner: nn.Module, extra: list[int]) -> set[int]:
    ids: set[int] = set()
    configs = [
        inner.config,
        getattr(inner.config, "text_config", None),
        getattr(model, "generation_config", None),
    ]
    names = (
        "image_token_id",
        "video_token_id",
        "vision_start_token_id",
        "vision_end_token_id",
        "pad_token_id",
        "bos_token_id",
        "eos_token_id",
    )
    for cfg in configs:
        for name in names:
            v = getattr(cfg, name, None) if cfg is not None else None
            if isinstance(v, int):
                ids.add(v)
            elif isinstance(v, (list, tuple)):
                ids.update(int(x) for x in v)
    ids.update(extra)
    return ids


# ---------------------------------------------------------------------------- argument checks
def _check_keep(keep_ratio: Any, budget: Any) -> tuple[Optional[float], Optional[int]]:
    if (keep_ratio is None) == (budget is None):
        raise ValueError(
            f"give exactly one of keep_ratio (in (0, 1]) or budget (visual tokens per sample); "
            f"got keep_ratio={keep_ratio!r}, budget={budget!r}"
        )
    if keep_ratio is not None:
        if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, Real):
            raise TypeError(f"keep_ratio must be a float in (0, 1], got {keep_ratio!r}")
        if not 0.0 < float(keep_ratio) <= 1.0:  # also refuses NaN
            raise ValueError(f"keep_ratio must be a float in (0, 1], got {keep_ratio!r}")
        return float(keep_ratio), None
    if isinstance(budget, bool) or not isinstance(budget, Integral):
        raise TypeError(f"budget must be an int >= 0 (visual tokens per sample), got {budget!r}")
    if budget < 0:
        raise ValueError(f"budget must be an int >= 0 (visual tokens per sample), got {budget!r}")
    return None, int(budget)


#: ``min_per_image``: an int, one int per image / video frame of a prompt, or one such
#: sequence per sample of the batch.
MinPerImage = Union[int, Sequence[int], Sequence[Sequence[int]], torch.Tensor]
_MIN_FORMS = (
    "an int >= 0, a sequence of ints >= 0 (one per image / video frame of the prompt, in "
    "prompt order) or a sequence of such sequences (one per sample of the batch)"
)


def _min_ints(q: Any, where: str) -> tuple[int, ...]:
    """A flat sequence of ints >= 0 (list, tuple, 1-D integer tensor) as a tuple."""
    if isinstance(q, torch.Tensor):
        if q.ndim != 1 or q.dtype.is_floating_point or q.dtype.is_complex or q.dtype == torch.bool:
            raise TypeError(
                f"{where} as a tensor must be 1-D with an integer dtype, got a {q.dtype} tensor "
                f"of shape {tuple(q.shape)}"
            )
        q = q.tolist()
    out = []
    for k, v in enumerate(q):
        if isinstance(v, bool) or not isinstance(v, Integral):
            raise TypeError(f"{where}[{k}] must be an int >= 0, got {v!r}")
        if v < 0:
            raise ValueError(f"{where}[{k}] must be an int >= 0, got {v!r}")
        out.append(int(v))
    return tuple(out)


def _check_min_per_image(q: Any) -> Union[int, tuple[int, ...], tuple[tuple[int, ...], ...]]:
    """``min_per_image`` as an int, a tuple of ints or a tuple of int tuples (see
    :func:`attach`); the lengths are checked against each prompt at the prefill."""
    if isinstance(q, bool) or isinstance(q, (str, bytes)):
        raise TypeError(f"min_per_image must be {_MIN_FORMS}, got {q!r}")
    if isinstance(q, Integral):
        if q < 0:
            raise ValueError(f"min_per_image must be an int >= 0, got {q!r}")
        return int(q)
    if isinstance(q, torch.Tensor):
        return _min_ints(q, "min_per_image")
    if not isinstance(q, Sequence):
        raise TypeError(f"min_per_image must be {_MIN_FORMS}, got {q!r}")
    nested = [
        isinstance(v, torch.Tensor) or (isinstance(v, Sequence) and not isinstance(v, (str, bytes)))
        for v in q
    ]
    if not any(nested):
        return _min_ints(q, "min_per_image")
    if not all(nested):
        raise TypeError(
            f"min_per_image mixes ints and sequences; it must be {_MIN_FORMS}, got {q!r}"
        )
    return tuple(_min_ints(v, f"min_per_image[{k}]") for k, v in enumerate(q))


def _check_flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def _check_token_ids(name: str, ids: Any) -> list[int]:
    """A collection of token ids (ints >= 0, e.g. a list or a 1-D int tensor) or None."""
    what = f"{name} must be None or a collection of token ids (ints >= 0)"
    if ids is None:
        return []
    if isinstance(ids, torch.Tensor):
        if ids.ndim != 1 or ids.dtype.is_floating_point or ids.dtype in (torch.bool,):
            raise TypeError(f"{what}; got a {ids.dtype} tensor of shape {tuple(ids.shape)}")
        ids = ids.tolist()
    elif isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise TypeError(f"{what}, got {ids!r}")
    out = []
    for v in ids:
        if isinstance(v, bool) or not isinstance(v, Integral):
            raise TypeError(f"{what}; got the element {v!r} of type {type(v).__name__}")
        if v < 0:
            raise ValueError(f"{what}; got the negative id {v}")
        out.append(int(v))
    return out


def _check_version() -> None:
    from packaging.version import Version

    v = Version(transformers.__version__)
    if not (Version("5.24") <= v < Version("5.25")):
        warnings.warn(
            f"adaptive_prune.integrations.hf was tested with transformers "
            f"{TESTED_TRANSFORMERS}; found {transformers.__version__}. The hook points may "
            "have moved: run the adaptive_prune HF tests before trusting the output.",
            stacklevel=3,
        )


def attach(
    model: nn.Module,
    keep_ratio: Optional[float] = None,
    *,
    budget: Optional[int] = None,
    method: str = "adaptive",
    text_aware: bool = True,
    min_per_image: MinPerImage = 1,
    split_video_frames: bool = True,
    text_exclude_ids: Optional[Iterable[int]] = None,
    **options: Any,
) -> PruneHandle:
    """Make ``model.generate(...)`` / ``model(...)`` prefill only the visual tokens kept.

    Args:
        model: a supported transformers model (``Qwen2VLForConditionalGeneration``,
            ``Qwen2_5_VLForConditionalGeneration``, ``Qwen3VLForConditionalGeneration``,
            ``LlavaOnevisionForConditionalGeneration``, or their bare ``*Model``). Anything else
            raises ``NotImplementedError``.
        keep_ratio: fraction of each sample's visual tokens to keep, in (0, 1]: the sample's
            budget is ``floor(keep_ratio * N + 0.5)`` over all its images and frames. Or
        budget: visual tokens kept per sample (clipped to the sample's count). Exactly one.
        method: selection method of :func:`adaptive_prune.prune` (``"adaptive"`` default).
        text_aware: give the pruner the prompt's own token embeddings (text tokens of that
            sample without padding, image/video placeholders and special tokens).
        min_per_image: every image / video frame (each a unit; a whole video with
            ``split_video_frames=False``) keeps at least this many tokens. An int applies to
            every unit and is lowered for a sample whose budget cannot give every unit that
            many. Per image: a sequence with one int per unit of the prompt, in prompt order
            (every prefill row with images must have that many units), or one such sequence
            per sample of the batch (``[[1, 200], [1]]``; beams and returned sequences of a
            sample share its list). Per-image minimums are never lowered: a sample whose budget
            cannot give them raises ``ValueError``, and so does a list whose length is not the
            prompt's number of units (``handle.last_units`` lists them). Can be changed between
            calls: ``handle.min_per_image = ...``.
        split_video_frames: each video frame is its own unit for the pruner (else each video).
        text_exclude_ids: extra token ids to leave out of the text given to the pruner (e.g.
            ``processor.tokenizer.all_special_ids``); image/video/vision start-end, bos, eos and
            pad ids are always left out.
        **options: passed through to :func:`adaptive_prune.prune` (the method's knobs).

    Returns:
        a :class:`PruneHandle`; use ``handle.detach()`` or ``with attach(...) as handle:``.

    Kept tokens keep their original (M-)RoPE positions, so the result equals the unmodified
    model with the dropped tokens masked out of attention. Unsupported: static caches,
    chunked prefill, continuing from an existing cache, assisted decoding, ``labels``.
    """
    import adaptive_prune

    spec, top, inner, lm = M.resolve(model)
    existing = getattr(model, _HANDLE_ATTR, None)
    if existing is not None and existing.attached:
        raise RuntimeError(
            "adaptive_prune.integrations.hf is already attached to this model; detach() first"
        )
    keep_ratio, budget = _check_keep(keep_ratio, budget)
    min_per_image = _check_min_per_image(min_per_image)
    if not isinstance(method, str):
        raise TypeError(f"method must be a str (a name in adaptive_prune.METHODS), got {method!r}")
    if method not in adaptive_prune.METHODS:
        raise ValueError(f"unknown method={method!r}; available: {sorted(adaptive_prune.METHODS)}")
    text_aware = _check_flag("text_aware", text_aware)
    split_video_frames = _check_flag("split_video_frames", split_video_frames)
    extra_ids = _check_token_ids("text_exclude_ids", text_exclude_ids)
    # dry run on a tiny input so that bad options fail here, not inside generate()
    g = torch.Generator().manual_seed(0)
    probe = torch.randn(6, 4, generator=g)
    adaptive_prune.prune(
        probe,
        torch.tensor([0, 3, 6]),
        torch.randn(2, 4, generator=g) if text_aware else None,
        budget=2,
        method=method,
        min_per_image=1,
        **options,
    )
    _check_version()
    prune_kwargs = dict(
        keep_ratio=keep_ratio,
        budget=budget,
        method=method,
        min_per_image=min_per_image,
        **options,
    )
    handle = PruneHandle(
        model,
        spec,
        top,
        inner,
        lm,
        prune_kwargs,
        text_aware,
        split_video_frames,
        _exclude_ids(model, inner, extra_ids),
    )
    handle._install()
    return handle
