"""Hugging Face transformers integration: prefill only the visual tokens the pruner keeps.

::

    import adaptive_prune.hf

    handle = adaptive_prune.hf.attach(model, keep_ratio=0.25)   # method="adaptive", text_aware
    out = model.generate(**inputs, max_new_tokens=64)
    handle.last_kept        # per prefill row: positions of input_ids that reached the LM
    handle.detach()         # or: with adaptive_prune.hf.attach(...): ...

How it works (no subclassing, no copied model code; forward pre-hooks only):

1. A pre-hook on the vision-language model (``model.model``) remembers ``input_ids`` of the
   prefill (its language model is called with ``input_ids=None``) and, on decode steps of a
   manual loop that passes no ``position_ids``, injects the positions the unpruned model would
   have used.
2. ``get_image_features`` / ``get_video_features`` are wrapped on the instance (with
   ``functools.wraps``, so ``generate``'s signature inspection still works) to learn where each
   image, video and video frame starts.
3. A pre-hook on the language model sees the merged ``inputs_embeds``, the model's own full
   (M-)RoPE ``position_ids`` and the 2-D mask. At the prefill it calls
   :func:`adaptive_prune.prune` once per sample, keeps the text tokens plus the chosen visual
   tokens, drops the padding and left-pads every row to the longest kept row; embeddings, mask,
   positions (and Qwen3-VL's DeepStack features) are gathered with the same index, so every
   kept token keeps its original position. At decode steps it rebuilds the 2-D mask in the
   compact layout of the cache (``generate`` keeps passing the unpruned one).
4. A pre-hook on the top model refuses ``labels``; ``generate`` is wrapped to refuse chunked
   prefill, assisted decoding and continuing from an existing cache.

Tested with transformers ``>=5.24,<5.25`` (see :data:`TESTED_TRANSFORMERS`).
"""

from __future__ import annotations

import functools
import inspect
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import torch
from torch import nn

try:
    import transformers
    from transformers.cache_utils import DynamicCache
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "adaptive_prune.hf needs Hugging Face transformers: pip install 'adaptive_prune[hf]'"
    ) from exc

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
            f"adaptive_prune.hf supports only DynamicCache (the default), got "
            f"{type(cache).__name__}: static/compiled caches (cache_implementation='static', "
            "torch.compile) and other cache types are not supported with pruning, because the "
            "pruned prompt length differs from the input length. Use the default dynamic cache."
        )
    return int(cache.get_seq_length())


def _feasible_min(q: int, counts: list[int], budget: int) -> int:
    """Largest ``q' <= q`` with ``sum(min(q', m)) <= budget`` (so short budgets never fail)."""
    while q > 0 and sum(min(q, m) for m in counts) > budget:
        q -= 1
    return q


class PruneHandle:
    """Returned by :func:`attach`. ``detach()`` (or leaving the ``with`` block) undoes it.

    After every prefill:

    - ``last_kept``: list (one per prefill row, i.e. ``batch * num_beams`` under beam search)
      of int64 tensors: the positions in that row of the original, padded ``input_ids`` whose
      tokens reached the language model (text tokens and kept visual tokens; padding is not
      listed), ascending. In a plain forward the returned logits / hidden states are in this
      compact layout: row ``b`` holds ``len(last_kept[b])`` real entries at its right end.
    - ``last_num_visual``: per row ``(visual tokens before, visual tokens kept)``.
    - ``last_seq_len``: ``(unpruned prefill length L, pruned prefill length)``.
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
        self.last_seq_len: Optional[tuple[int, int]] = None

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
            out = []
            for row in tok:
                edges = torch.diff(
                    row.int(), prepend=row.new_zeros(1).int(), append=row.new_zeros(1).int()
                )
                starts = (edges == 1).nonzero().view(-1)
                ends = (edges == -1).nonzero().view(-1)
                out.append((ends - starts).tolist())
            return out
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

    def _select(self, samples: list[tuple[torch.Tensor, list[int], Any]]) -> list[torch.Tensor]:
        """Kept rows (ascending) of each sample's ``vision``, for ``(vision, units, text)``
        samples: one ``prune_batch`` call for all of them (one per distinct feasible minimum,
        which differs only when a sample's budget cannot give every unit ``min_per_image``)."""
        import adaptive_prune

        kw = dict(self.prune_kwargs)
        ratio = kw.pop("keep_ratio")
        budget = kw.pop("budget")
        q = kw.pop("min_per_image")
        groups: dict[int, list[int]] = {}
        budgets = []
        for i, (vision, units, _) in enumerate(samples):
            n = vision.shape[0]
            b = int(ratio * n + 0.5) if budget is None else int(budget)  # as prune rounds
            budgets.append(min(b, n))
            groups.setdefault(_feasible_min(q, units, budgets[-1]), []).append(i)
        out: list[Optional[torch.Tensor]] = [None] * len(samples)
        for q_i, members in groups.items():
            units = [u for i in members for u in samples[i][1]]
            cu = torch.zeros(len(units) + 1, dtype=torch.int64)
            cu[1:] = torch.tensor(units, dtype=torch.int64).cumsum(0)
            ro = [0]
            for i in members:
                ro.append(ro[-1] + len(samples[i][1]))
            res = adaptive_prune.prune_batch(
                torch.cat([samples[i][0] for i in members]),
                cu,
                torch.tensor(ro, dtype=torch.int64),
                [samples[i][2] for i in members],
                budget=[budgets[i] for i in members],
                min_per_image=q_i,
                **kw,
            )
            start = 0  # every request keeps exactly its budget: split on the host (no sync)
            for k, i in enumerate(members):
                rows = res.indices[start : start + budgets[i]]
                out[i] = rows - int(cu[ro[k]])  # global rows -> the sample's own
                start += budgets[i]
        return out  # type: ignore[return-value]

    def _prune_prefill(self, ctx: _Prefill, kw: dict) -> None:
        embeds: torch.Tensor = kw["inputs_embeds"]
        ids = ctx.input_ids.to(embeds.device)
        b, length, width = embeds.shape
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
        exclude = self._exclude.to(dev)
        text_mask = real & ~vis & ~torch.isin(ids, exclude)

        keep = ~vis & real  # [B, L] bool: text always kept
        # the samples' units in placeholder order (images and videos interleaved); identical
        # samples (e.g. beams) share one selection, all distinct ones go in one batched call
        seen: dict[tuple, list[int]] = {}
        rows_of: list[Optional[torch.Tensor]] = []
        owner: list[int] = []  # sample -> index into `unique`
        unique: list[tuple[torch.Tensor, list[int], Any]] = []
        unique_rows: list[torch.Tensor] = []
        for i in range(b):
            units = []
            for m in _MODALITIES:
                pos = tok[m][i].nonzero().view(-1)
                off = 0
                for n in segs[m][i]:
                    if n:
                        units.append(pos[off : off + n])
                    off += n
            if not units:  # a text-only sample in a batch with images
                rows_of.append(None)
                owner.append(-1)
                continue
            units.sort(key=lambda p: int(p[0]))
            rows = torch.cat(units)
            lens = [int(p.numel()) for p in units]
            vision = embeds[i, rows]
            text = embeds[i, text_mask[i]] if self.text_aware and bool(text_mask[i].any()) else None
            key = (tuple(ids[i].tolist()), tuple(real[i].tolist()))
            match = -1
            for j in seen.get(key, []):
                o_vision, o_lens, o_text = unique[j]
                if (
                    o_lens == lens
                    and torch.equal(o_vision, vision)
                    and (
                        (o_text is None and text is None)
                        or (o_text is not None and text is not None and torch.equal(o_text, text))
                    )
                ):
                    match = j  # identical sample (e.g. beams): identical choice
                    break
            if match < 0:
                match = len(unique)
                unique.append((vision, lens, text))
                unique_rows.append(rows)
                seen.setdefault(key, []).append(match)
            rows_of.append(rows)
            owner.append(match)
        chosen = self._select(unique) if unique else []
        kept_of = [unique_rows[j][c.to(unique_rows[j].device)] for j, c in enumerate(chosen)]
        num_visual = []
        for i in range(b):
            rows = rows_of[i]
            if rows is None:
                num_visual.append((0, 0))
                continue
            kept_rows = kept_of[owner[i]]
            keep[i, kept_rows] = True
            num_visual.append((int(rows.numel()), int(kept_rows.numel())))

        counts = keep.sum(1)
        lp = int(counts.max())
        # compact layout: row i holds its kept tokens, in order, at its right end
        slot = torch.arange(lp, device=dev).expand(b, lp)
        cmask_b = slot >= (lp - counts).view(-1, 1)
        idx = torch.zeros(b, lp, dtype=torch.long, device=dev)
        kept_pos = [keep[i].nonzero().view(-1) for i in range(b)]
        idx[cmask_b] = torch.cat(kept_pos)

        pos_full = M.full_positions(self.spec, kw.get("position_ids"), b, length, dev)
        if pos_full.ndim == 3:
            gather = idx.view(1, b, lp).expand(pos_full.shape[0], -1, -1)
            rope_rows = pos_full[1:] if pos_full.shape[0] == 4 else pos_full
            big = rope_rows.masked_fill(~real.view(1, b, length), -1).amax(dim=(0, 2))
        else:
            gather = idx
            big = pos_full.masked_fill(~real, -1).amax(dim=1)
        new_pos = pos_full.gather(-1, gather).masked_fill(~cmask_b, 0)

        kw["inputs_embeds"] = embeds.gather(1, idx.view(b, lp, 1).expand(-1, -1, width))
        kw["position_ids"] = new_pos
        mask_dtype = mask.dtype if mask is not None else torch.long
        cmask = cmask_b.to(mask_dtype)
        kw["attention_mask"] = cmask  # always explicit: gaps in positions must not look packed
        if self.spec.deepstack and kw.get("visual_pos_masks") is not None:
            vpm = kw["visual_pos_masks"].to(dev)
            sel = keep[vpm]
            kw["visual_pos_masks"] = vpm.gather(1, idx) & cmask_b
            ds = kw.get("deepstack_visual_embeds")
            if ds is not None:
                kw["deepstack_visual_embeds"] = [d[sel.to(d.device)] for d in ds]

        self.last_kept = kept_pos
        self.last_num_visual = num_visual
        self.last_seq_len = (length, lp)
        self._pending = _CacheState(True, length, lp, cmask, big + 1)

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


def _exclude_ids(model: nn.Module, inner: nn.Module, extra: Optional[Iterable[int]]) -> set[int]:
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
    if extra is not None:
        ids.update(int(x) for x in extra)
    return ids


def _check_version() -> None:
    from packaging.version import Version

    v = Version(transformers.__version__)
    if not (Version("5.24") <= v < Version("5.25")):
        warnings.warn(
            f"adaptive_prune.hf was tested with transformers {TESTED_TRANSFORMERS}; found "
            f"{transformers.__version__}. The hook points may have moved: run the adaptive_prune "
            "HF tests before trusting the output.",
            stacklevel=3,
        )


def attach(
    model: nn.Module,
    keep_ratio: Optional[float] = None,
    *,
    budget: Optional[int] = None,
    method: str = "adaptive",
    text_aware: bool = True,
    min_per_image: int = 1,
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
        min_per_image: every image / video frame keeps at least this many tokens (lowered for a
            sample whose budget cannot give every unit that many).
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
        raise RuntimeError("adaptive_prune.hf is already attached to this model; detach() first")
    if (keep_ratio is None) == (budget is None):
        raise ValueError(
            f"give exactly one of keep_ratio (in (0, 1]) or budget (visual tokens per sample); "
            f"got keep_ratio={keep_ratio!r}, budget={budget!r}"
        )
    if keep_ratio is not None and (
        isinstance(keep_ratio, bool)
        or not isinstance(keep_ratio, (int, float))
        or not 0.0 < float(keep_ratio) <= 1.0
    ):
        raise ValueError(f"keep_ratio must be a float in (0, 1], got {keep_ratio!r}")
    if budget is not None and (
        isinstance(budget, bool) or not isinstance(budget, int) or budget < 0
    ):
        raise ValueError(f"budget must be an int >= 0, got {budget!r}")
    if isinstance(min_per_image, bool) or not isinstance(min_per_image, int) or min_per_image < 0:
        raise ValueError(f"min_per_image must be an int >= 0, got {min_per_image!r}")
    if method not in adaptive_prune.METHODS:
        raise ValueError(f"unknown method={method!r}; available: {sorted(adaptive_prune.METHODS)}")
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
        keep_ratio=None if keep_ratio is None else float(keep_ratio),
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
        bool(text_aware),
        bool(split_video_frames),
        _exclude_ids(model, inner, text_exclude_ids),
    )
    handle._install()
    return handle
