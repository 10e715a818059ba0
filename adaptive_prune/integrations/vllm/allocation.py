"""Front-end logic of the vLLM plugin: options, per-item token counts, pixel signals.

Nothing here imports vLLM, so it is unit-tested in the package's own test venv. vLLM fixes the
number of placeholder tokens of every multimodal item before the vision encoder runs, so the
counts are decided here from what the front end holds: the items' grid sizes and their pixels.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Mapping, Optional, Sequence, Union

import torch

# "proportional" is the default: on the quality benchmark the pixel-based "adaptive" split is
# not closer to the full method's token-space allocation (docs/quality.md).
MODES = ("proportional", "adaptive")

# Names a request may set through ``mm_processor_kwargs`` (they never reach the HF processor).
OPTION_NAMES = ("keep_ratio", "prune_mode", "min_per_image", "text_aware")

# Environment variables holding the engine-wide defaults (read in every vLLM process).
ENV_DEFAULTS = {
    "keep_ratio": "ADAPTIVE_PRUNE_VLLM_KEEP_RATIO",
    "prune_mode": "ADAPTIVE_PRUNE_VLLM_MODE",
    "min_per_image": "ADAPTIVE_PRUNE_VLLM_MIN_PER_IMAGE",
    "text_aware": "ADAPTIVE_PRUNE_VLLM_TEXT_AWARE",
}

# Adaptive mode: 6 x 6 regions per image, 8 gradient-orientation bins, 16 x 16 thumbnails.
REGIONS = 6
REGION_PX = 32
ORIENT_BINS = 8
THUMB = 16
# Multiplicity temperature on thumbnail cosine distance, and the floor of the relative
# diversity (an image at the floor still gets a tenth of an average image's weight per token).
SIGMA_DUP = 0.05
DIVERSITY_FLOOR = 0.1


@dataclass(frozen=True)
class PruneOptions:
    keep_ratio: float = 1.0
    prune_mode: str = "proportional"
    min_per_image: Union[int, tuple[int, ...]] = 1  # or one per item: images, then videos
    text_aware: bool = True

    def digest(self) -> str:
        """Stable text that goes into every cache key the options affect."""
        return (
            f"keep_ratio={self.keep_ratio!r};prune_mode={self.prune_mode};"
            f"min_per_image={self.min_per_image};text_aware={self.text_aware}"
        )


def _parse_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"adaptive_prune: {name} must be a boolean, got {value!r}")


def check_options(
    keep_ratio: Any = 1.0,
    prune_mode: Any = "proportional",
    min_per_image: Any = 1,
    text_aware: Any = True,
) -> PruneOptions:
    """Validate request options; every error names the argument and the value."""
    if isinstance(keep_ratio, str):
        try:
            keep_ratio = float(keep_ratio)
        except ValueError:
            raise ValueError(
                f"adaptive_prune: keep_ratio must be a number in (0, 1], got {keep_ratio!r}"
            ) from None
    if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, Real):
        raise ValueError(
            f"adaptive_prune: keep_ratio must be a number in (0, 1], got {keep_ratio!r}"
        )
    kr = float(keep_ratio)
    if math.isnan(kr) or not 0.0 < kr <= 1.0:
        raise ValueError(f"adaptive_prune: keep_ratio must be in (0, 1], got {keep_ratio!r}")
    if prune_mode not in MODES:
        raise ValueError(
            f"adaptive_prune: prune_mode must be one of {', '.join(MODES)}, got {prune_mode!r}"
        )
    if isinstance(min_per_image, (list, tuple)):
        q: Union[int, tuple[int, ...]] = tuple(
            _check_minimum(v, f"min_per_image[{k}]") for k, v in enumerate(min_per_image)
        )
    else:
        q = _check_minimum(min_per_image, "min_per_image")
    return PruneOptions(kr, str(prune_mode), q, _parse_bool("text_aware", text_aware))


def _check_minimum(value: Any, name: str) -> int:
    """One item minimum: an int >= 1 (or its decimal string, as environment variables give)."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(
            f"adaptive_prune: {name} must be an integer >= 1 (min_per_image: one int, or a list "
            f"with one int per item, images then videos), got {value!r}"
        )
    if int(value) < 1:
        # vLLM cannot hold a multimodal item with zero placeholder tokens.
        raise ValueError(
            f"adaptive_prune: {name} must be >= 1 (vLLM needs at least one token per item), got "
            f"{value!r}"
        )
    return int(value)


def resolve_options(
    request: Optional[Mapping[str, Any]], environ: Optional[Mapping[str, str]] = None
) -> PruneOptions:
    """Request values (``mm_processor_kwargs``) over engine-wide defaults (environment)."""
    import os

    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name, var in ENV_DEFAULTS.items():
        if environ.get(var) not in (None, ""):
            values[name] = environ[var]
    for name in OPTION_NAMES:
        if request is not None and request.get(name) is not None:
            values[name] = request[name]
    return check_options(**values)


def total_budget(num_tokens: int, keep_ratio: float) -> int:
    """The request's kept total ``floor(keep_ratio * N + 0.5)``, as in ``adaptive_prune.prune``."""
    return int(math.floor(float(keep_ratio) * int(num_tokens) + 0.5))


def item_minimums(min_per_item: Union[int, Sequence[int]], n_items: int) -> list[int]:
    """One minimum per item: ``min_per_item`` repeated, or the list itself when its length is
    ``n_items`` (``ValueError`` naming ``min_per_image`` otherwise)."""
    if isinstance(min_per_item, Integral):
        return [int(min_per_item)] * n_items
    qs = [int(q) for q in min_per_item]
    if len(qs) != n_items:
        raise ValueError(
            f"adaptive_prune: min_per_image has {len(qs)} entries but the request has "
            f"{n_items} items (give one per item: its images, then its videos, each in prompt "
            "order)"
        )
    return qs


def allocate_counts(
    sizes: Sequence[int],
    total: int,
    min_per_item: Union[int, Sequence[int]] = 1,
    weights: Optional[Sequence[float]] = None,
) -> list[int]:
    """Split ``total`` over items of ``sizes`` tokens.

    Each item first gets ``min(q_k, m_k)`` (``min_per_item``: one ``q`` for every item, or one
    per item in the order of ``sizes``); the rest is shared in proportion to
    ``weights`` (default: the sizes), capped at ``m_k`` (water-filling: cap, redistribute the
    excess, repeat), then rounded by largest remainder with ties to the lower index. The counts
    sum to ``total`` exactly.
    """
    sizes = [int(m) for m in sizes]
    if any(m < 0 for m in sizes):
        raise ValueError(f"adaptive_prune: item sizes must be >= 0, got {sizes}")
    n_all = sum(sizes)
    if not 0 <= total <= n_all:
        raise ValueError(f"adaptive_prune: total must be in [0, {n_all}], got {total}")
    qs = item_minimums(min_per_item, len(sizes))
    if isinstance(min_per_item, Integral):
        what = f"min_per_image={min_per_item} for each of its {len(sizes)} items"
    else:
        what = f"the min_per_image entries {qs}"
    base = [min(q, m) for q, m in zip(qs, sizes)]
    if sum(base) > total:
        raise ValueError(
            f"adaptive_prune: the request keeps {total} visual tokens, fewer than {what} "
            f"({sum(base)}); raise keep_ratio or lower min_per_image"
        )
    w = [float(m) for m in sizes] if weights is None else [float(x) for x in weights]
    if len(w) != len(sizes) or any(not math.isfinite(x) or x < 0 for x in w):
        raise ValueError(f"adaptive_prune: weights must be {len(sizes)} finite values >= 0")
    rest = total - sum(base)
    room = [m - b for m, b in zip(sizes, base)]
    share = [0.0] * len(sizes)
    active = [k for k in range(len(sizes)) if room[k] > 0]
    left = float(rest)
    while active and left > 1e-9:
        wsum = sum(w[k] for k in active)
        if wsum <= 0:  # no weight left: share by remaining room
            wts = {k: float(room[k] - share[k]) for k in active}
            wsum = sum(wts.values())
        else:
            wts = {k: w[k] for k in active}
        capped = [k for k in active if share[k] + left * wts[k] / wsum >= room[k]]
        if not capped:
            for k in active:
                share[k] += left * wts[k] / wsum
            left = 0.0
            break
        for k in capped:
            left -= room[k] - share[k]
            share[k] = float(room[k])
        active = [k for k in active if k not in capped]
    floors = [min(int(math.floor(s + 1e-9)), room[k]) for k, s in enumerate(share)]
    missing = rest - sum(floors)
    order = sorted(
        (k for k in range(len(sizes)) if floors[k] < room[k]),
        key=lambda k: (-(share[k] - floors[k]), k),
    )
    for k in order[:missing]:
        floors[k] += 1
    counts = [b + f for b, f in zip(base, floors)]
    assert sum(counts) == total, (counts, total)
    return counts


# ---------------------------------------------------------------------------------------------
# Pixel signals (adaptive mode)


def frames_from_patches(
    pixel_values: torch.Tensor,
    grid_thw: Sequence[int],
    patch_size: int,
    temporal_patch_size: int,
    merge_size: int,
    channels: int = 3,
    stride: int = 1,
) -> torch.Tensor:
    """Undo the Qwen-VL patch flattening of one item: ``[T, C, H / stride, W / stride]`` (first
    frame of each temporal patch, every ``stride``-th pixel), in the processor's normalised
    units."""
    t, h, w = (int(x) for x in grid_thw)
    m, p, tp = merge_size, patch_size, temporal_patch_size
    x = pixel_values.reshape(t, h // m, w // m, m, m, channels, tp, p, p)[
        ..., 0, ::stride, ::stride
    ]
    q = x.shape[-1]
    # (t, hb, wb, mh, mw, c, ph, pw) -> (t, c, hb, mh, ph, wb, mw, pw)
    x = x.permute(0, 5, 1, 3, 6, 2, 4, 7)
    return x.reshape(t, channels, h * q, w * q).float()


def region_diversity(frame: torch.Tensor, regions: int = REGIONS) -> float:
    """Mean pairwise Euclidean distance between region descriptors of one ``[C, H, W]`` frame.

    The frame is first area-resampled to ``regions * REGION_PX`` pixels a side. Each of
    ``regions x regions`` regions is described by its per-channel mean and standard deviation,
    its mean gradient magnitude and a magnitude-weighted, normalised histogram of gradient
    orientations (``ORIENT_BINS`` bins over [0, pi))."""
    c = frame.shape[0]
    side = regions * REGION_PX
    f = torch.nn.functional.adaptive_avg_pool2d(frame[None].float(), (side, side))[0]
    gray = f.mean(0)
    gy = torch.zeros_like(gray)
    gx = torch.zeros_like(gray)
    gy[1:-1] = (gray[2:] - gray[:-2]) / 2
    gx[:, 1:-1] = (gray[:, 2:] - gray[:, :-2]) / 2
    mag = torch.sqrt(gx * gx + gy * gy)
    ang = torch.remainder(torch.atan2(gy, gx), math.pi)
    bins = torch.clamp((ang / math.pi * ORIENT_BINS).long(), max=ORIENT_BINS - 1)

    def blocks(x: torch.Tensor) -> torch.Tensor:  # [..., side, side] -> [..., R*R, px*px]
        lead = x.shape[:-2]
        x = x.reshape(*lead, regions, REGION_PX, regions, REGION_PX).transpose(-3, -2)
        return x.reshape(*lead, regions * regions, REGION_PX * REGION_PX)

    px = blocks(f)  # [C, R*R, px*px]
    mg = blocks(mag)  # [R*R, px*px]
    region = torch.arange(regions * regions).repeat_interleave(REGION_PX * REGION_PX)
    hist = torch.zeros(regions * regions * ORIENT_BINS)
    hist.index_add_(0, region * ORIENT_BINS + blocks(bins).reshape(-1), mg.reshape(-1))
    hist = hist.view(regions * regions, ORIENT_BINS)
    hist = hist / mg.sum(1, keepdim=True).clamp(min=1e-6)
    desc = torch.cat(
        [
            px.mean(2).T,
            px.std(2, unbiased=False).T,
            mg.mean(1, keepdim=True),
            hist,
        ],
        dim=1,
    )  # [R*R, 2C + 1 + bins]
    n = desc.shape[0]
    assert desc.shape[1] == 2 * c + 1 + ORIENT_BINS
    dist = torch.cdist(desc[None].double(), desc[None].double())[0]
    return float(dist.sum() / (n * (n - 1)))


def thumbnail(frame: torch.Tensor, size: int = THUMB) -> torch.Tensor:
    """Grey ``size x size`` thumbnail, mean-centred and unit-norm (for near-duplicate tests)."""
    g = frame.mean(0, keepdim=True)[None]
    t = torch.nn.functional.adaptive_avg_pool2d(g, (size, size)).reshape(-1)
    t = t - t.mean()
    return t / max(float(t.norm()), 1e-6)


def adaptive_weights(
    sizes: Sequence[int],
    diversity: Sequence[float],
    thumbs: Sequence[torch.Tensor],
    sigma: float = SIGMA_DUP,
) -> list[float]:
    """``w_k = m_k * max(d_k / mean d, DIVERSITY_FLOOR) / mult_k`` with
    ``mult_k = sum_l exp(-(1 - cos(thumb_k, thumb_l)) / sigma)`` over the request's items."""
    n = len(sizes)
    if n == 0:
        return []
    d = torch.tensor([float(x) for x in diversity], dtype=torch.float64)
    mean_d = float(d.mean())
    rel = d / mean_d if mean_d > 0 else torch.ones_like(d)
    rel = torch.clamp(rel, min=DIVERSITY_FLOOR)
    th = torch.stack([t.double() for t in thumbs])
    cos = th @ th.T
    mult = torch.exp(-(1.0 - cos).clamp(min=0) / sigma).sum(1)
    return [float(m) * float(r) / float(u) for m, r, u in zip(sizes, rel, mult)]


def item_signals(frames: torch.Tensor, max_frames: int = 4) -> tuple[float, torch.Tensor]:
    """(diversity, thumbnail) of one item's ``[T, C, H, W]`` frames; a video is scored on up to
    ``max_frames`` evenly spaced frames (mean diversity, mean thumbnail)."""
    t = frames.shape[0]
    pick = sorted({int(round(x)) for x in torch.linspace(0, t - 1, min(t, max_frames)).tolist()})
    div = sum(region_diversity(frames[i]) for i in pick) / len(pick)
    th = torch.stack([thumbnail(frames[i]) for i in pick]).mean(0)
    th = th / max(float(th.norm()), 1e-6)
    return div, th


def request_digest(*parts: Any) -> str:
    """Short hash of everything a request's counts and selections depend on."""
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode())
        h.update(b"\x00")
    return h.hexdigest()[:32]
