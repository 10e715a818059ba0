"""Public functions: :func:`prune` (one request) and :func:`prune_batch` (many requests)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import torch

from . import _checks as C
from ._tensors import segment_ids, to_device
from .methods import get_method
from .methods.adaptive import Diagnostics
from .ops._contract import validated

__all__ = ["PruneResult", "BatchPruneResult", "prune", "prune_batch"]


@dataclass
class PruneResult:
    """Result of :func:`prune`.

    - ``indices [B]`` int64: kept rows of ``vision``, sorted ascending, on ``vision``'s device.
    - ``per_image [n]`` int64: kept count of every image.
    - ``mask [N]`` bool: ``mask[indices] == True``.
    - ``diagnostics``: :class:`~adaptive_prune.Diagnostics` (adaptive method with
      ``return_diagnostics=True``), else None.
    """

    indices: torch.Tensor
    per_image: torch.Tensor
    mask: torch.Tensor
    diagnostics: Optional[Diagnostics] = None


@dataclass
class BatchPruneResult:
    """Result of :func:`prune_batch` (rows and images are global, over the packed batch).

    - ``indices [sum B_r]``: kept rows, sorted ascending (so grouped by request).
    - ``offsets [R+1]``: request ``r``'s kept rows are ``indices[offsets[r]:offsets[r+1]]``.
    - ``per_request [R]``, ``per_image [n]``, ``mask [N]``; ``diagnostics``: list per request.
    """

    indices: torch.Tensor
    offsets: torch.Tensor
    per_request: torch.Tensor
    per_image: torch.Tensor
    mask: torch.Tensor
    diagnostics: Optional[list] = None

    def split(self) -> list[torch.Tensor]:
        """Kept global rows of every request."""
        o = self.offsets.tolist()
        return [self.indices[o[r] : o[r + 1]] for r in range(len(o) - 1)]


def _per_request(value: Any, R: int, name: str) -> list:
    """A scalar (validated later) for every request, or one value per request."""
    if isinstance(value, torch.Tensor):
        value = value.item() if value.ndim == 0 else value.tolist()
    if not isinstance(value, (list, tuple)):
        return [value] * R
    if len(value) != R:
        raise ValueError(
            f"{name} must be a scalar or a sequence of {R} values (one per request), "
            f"got {len(value)} values"
        )
    return list(value)


def _pack_text(text, text_offsets, R, width, device, finite, vision_dtype):
    """Text as one ``[M, D]`` tensor plus ``[R+1]`` host offsets, or (None, None)."""
    if text is None:
        if text_offsets is not None:
            raise ValueError("text_offsets was given without text")
        return None, None
    if isinstance(text, (list, tuple)):
        if text_offsets is not None:
            raise ValueError(
                "give text as a list of per-request tensors or as a tensor with "
                "text_offsets, not both"
            )
        if len(text) != R:
            raise ValueError(f"text is a list of {len(text)} entries but there are {R} requests")
        parts, offs = [], [0]
        for r, t in enumerate(text):
            if t is None:
                offs.append(offs[-1])
                continue
            C.check_tokens(f"text[{r}]", t, width=width, device=device, finite=finite)
            parts.append(t)
            offs.append(offs[-1] + t.shape[0])
        if not parts:
            return None, None
        dtypes = {t.dtype for t in parts}
        cat = (
            torch.cat([t.to(parts[0].dtype) for t in parts])
            if len(dtypes) > 1
            else torch.cat(parts)
        )
        return _text_dtype(cat, vision_dtype), offs
    C.check_tokens("text", text, width=width, device=device, finite=finite)
    if text_offsets is None:
        if R != 1:
            raise ValueError("text for several requests needs text_offsets [R+1] (or a list)")
        offs = [0, text.shape[0]]
    else:
        offs = C.check_offsets("text_offsets", text_offsets, text.shape[0], "M", device)
        if len(offs) != R + 1:
            raise ValueError(
                f"text_offsets has {len(offs)} entries but there are {R} requests (need {R + 1})"
            )
    if offs[-1] == 0:
        return None, None
    return _text_dtype(text, vision_dtype), offs


def _text_dtype(text: torch.Tensor, vision_dtype: torch.dtype) -> torch.Tensor:
    """Text in a dtype the ops take with ``vision``: float64 when vision is float64 (exact),
    float32 when text alone is float64 (the compute dtype of the other inputs); other mixes
    (fp16/bf16/fp32) are taken as they are."""
    if vision_dtype == torch.float64 and text.dtype != torch.float64:
        return text.double()
    if text.dtype == torch.float64 and vision_dtype != torch.float64:
        return text.float()
    return text


def prune_batch(
    vision: torch.Tensor,
    cu_seqlens: torch.Tensor,
    request_offsets: torch.Tensor,
    text: Union[torch.Tensor, Sequence[Optional[torch.Tensor]], None] = None,
    text_offsets: Optional[torch.Tensor] = None,
    *,
    keep_ratio: Union[float, Sequence[float], None] = None,
    budget: Union[int, Sequence[int], torch.Tensor, None] = None,
    method: str = "adaptive",
    min_per_image: Union[int, Sequence[int], torch.Tensor] = 1,
    return_diagnostics: bool = False,
    **options: Any,
) -> BatchPruneResult:
    """Prune several requests, each with its own images and budget, in one call.

    Packing (two-level offsets, FlashAttention convention):

    - ``vision [N, D]``: the tokens of all images of all requests, concatenated;
    - ``cu_seqlens [n+1]``: image ``k`` owns rows ``cu_seqlens[k]:cu_seqlens[k+1]``;
    - ``request_offsets [R+1]``: request ``r`` owns images ``request_offsets[r]:[r+1]``;
    - ``text``: ``[M, D]`` with ``text_offsets [R+1]``, or a list of ``R`` tensors/None.

    ``min_per_image``: an int for every image, or one int per image over the whole batch
    (``n`` entries, in ``cu_seqlens`` order).

    ``keep_ratio`` (float, or one per request) or ``budget`` (int for every request, or one
    per request): exactly one. Each request keeps exactly its ``B_r`` tokens. The adaptive
    method serves all requests with one call of each op; baselines loop over requests.

    Example::

        res = prune_batch(vision, cu_seqlens, torch.tensor([0, 3, 5]), keep_ratio=[0.25, 0.5])
        first_request_rows, second_request_rows = res.split()
    """
    if isinstance(vision, torch.Tensor) and vision.is_cuda and _capturing():
        raise RuntimeError(
            "prune/prune_batch cannot be captured in a CUDA graph: the method reads stage 0's "
            "scores on the host (pool sizes and groups of similar images) and checks the "
            "result there. Call it outside the capture (its greedy kernels are capturable "
            "on their own; docs/kernels.md, 'CUDA graphs')."
        )
    # finiteness: read later with one host read (the adaptive composition's forced one)
    finite = C.FiniteChecks()
    vision = C.check_tokens("vision", vision, finite=finite)
    N, D = vision.shape
    dev = vision.device
    cu = C.check_offsets("cu_seqlens", cu_seqlens, N, "N (rows of vision)", dev)
    n = len(cu) - 1
    ro = C.check_offsets("request_offsets", request_offsets, n, "n (number of images)", dev)
    R = len(ro) - 1
    spec = get_method(method)
    if not isinstance(return_diagnostics, bool):
        raise TypeError(f"return_diagnostics must be True or False, got {return_diagnostics!r}")
    opts = C.check_options(method, options, spec.options)
    q = C.check_min_per_image(min_per_image, n)
    txt, to = _pack_text(text, text_offsets, R, D, dev, finite, vision.dtype)
    ratios = _per_request(keep_ratio, R, "keep_ratio")
    buds = _per_request(budget, R, "budget")
    counts = [cu[k + 1] - cu[k] for k in range(n)]
    budgets = []
    for r in range(R):
        where = f" for request {r}" if R > 1 else ""
        n_r = cu[ro[r + 1]] - cu[ro[r]]
        B = C.check_keep(ratios[r], buds[r], n_r, where)
        C.check_minimums(B, counts[ro[r] : ro[r + 1]], _slice(q, ro[r], ro[r + 1]), where)
        budgets.append(B)

    diags = None
    if spec.batched is not None:
        with validated():  # the ops skip the checks that would read device values
            kept, diags = spec.batched(
                vision, cu, ro, txt, to, budgets, q, opts, return_diagnostics, finite=finite
            )
    else:
        finite.check_now()
        parts = []
        for r in range(R):
            a, e = cu[ro[r]], cu[ro[r + 1]]
            t_r = txt[to[r] : to[r + 1]] if txt is not None and to[r + 1] > to[r] else None
            q_r = _slice(q, ro[r], ro[r + 1])
            local = spec.select(vision[a:e], counts[ro[r] : ro[r + 1]], t_r, budgets[r], q_r, opts)
            parts.append(local.to(device=dev, dtype=torch.int64) + a)
        kept = (
            torch.sort(torch.cat(parts)).values
            if parts
            else torch.zeros(0, dtype=torch.int64, device=dev)
        )
    mask = torch.zeros(N, dtype=torch.bool, device=dev)
    mask[kept] = True
    img = segment_ids(counts, dev, N)
    per_image = torch.zeros(n, dtype=torch.int64, device=dev).index_add_(
        0, img[kept], torch.ones_like(kept)
    )
    _check_result(method, kept, mask, per_image, budgets, counts, q)
    b_t = to_device(budgets, dev)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64, device=dev), torch.cumsum(b_t, 0)])
    return BatchPruneResult(kept, offsets, b_t, per_image, mask, diags)


def _capturing() -> bool:
    """Whether the current CUDA stream is being captured into a graph."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _slice(q, k0: int, k1: int):
    """The per-image minimums of images ``k0:k1`` (an int stands for every image)."""
    return q if isinstance(q, int) else q[k0:k1]


def _check_result(method, kept, mask, per_image, budgets, counts, q) -> None:
    """Every method must return exactly B unique rows per request, honouring the minimums.

    A violation is a bug in the method, never the user's fault: fail loudly, not silently.
    """
    total = sum(budgets)
    need = to_device(C.image_minimums(q, counts), per_image.device)
    unique, starved = torch.stack([mask.sum(), (per_image < need).sum()]).tolist()  # one sync
    if kept.numel() != total or unique != total:
        raise RuntimeError(
            f"internal error: method={method!r} returned {kept.numel()} rows "
            f"({unique} unique) for budgets {budgets}; please report this"
        )
    if starved:
        raise RuntimeError(
            f"internal error: method={method!r} left {starved} image(s) below "
            "min_per_image; please report this"
        )


def prune(
    vision: torch.Tensor,
    cu_seqlens: torch.Tensor,
    text: Optional[torch.Tensor] = None,
    *,
    keep_ratio: Optional[float] = None,
    budget: Optional[int] = None,
    method: str = "adaptive",
    min_per_image: Union[int, Sequence[int], torch.Tensor] = 1,
    return_diagnostics: bool = False,
    **options: Any,
) -> PruneResult:
    """Keep a content-adaptive subset of the visual tokens of one multi-image prompt.

    Args:
        vision: ``[N, D]`` visual tokens (fp32/fp16/bf16), LLM embedding space.
        cu_seqlens: ``[n+1]`` int32/int64 image offsets: image ``k`` is rows
            ``cu_seqlens[k]:cu_seqlens[k+1]`` (empty images allowed).
        text: optional ``[M, D]`` prompt-token embeddings in the same space.
        keep_ratio: ``B = floor(keep_ratio * N + 0.5)``, in (0, 1]; or
        budget: ``B`` directly, in [0, N]. Exactly one of the two.
        method: ``"adaptive"`` (the method) or a baseline (see ``adaptive_prune.METHODS``).
        min_per_image: every image keeps at least ``min(q_k, m_k)`` tokens: one int ``q`` for
            every image, or a sequence (or 1-D integer tensor) of one ``q_k`` per image, e.g.
            to protect a document page or a text-heavy screenshot.
        return_diagnostics: also return the per-image scores and budgets.
        **options: the method's knobs (``adaptive``: sigma, lam, tau_a, beta, gamma, tau,
            intra, align, inter_image, selection, diversity_floor, aligned, group_dist,
            group_size, refine, eps). Unknown names raise ``TypeError``.

    Returns:
        :class:`PruneResult` with ``indices [B]`` sorted ascending, ``per_image [n]``,
        ``mask [N]`` and ``diagnostics``.

    Example::

        res = adaptive_prune.prune(vision, cu_seqlens, text, keep_ratio=0.25)
        pruned = vision[res.indices]          # original order kept: position ids stay valid
    """
    if isinstance(cu_seqlens, torch.Tensor) and cu_seqlens.ndim == 1 and cu_seqlens.numel():
        n = cu_seqlens.shape[0] - 1
    else:
        n = 0
    req = torch.tensor([0, max(n, 0)], dtype=torch.int64)
    res = prune_batch(
        vision,
        cu_seqlens,
        req,
        text,
        None,
        keep_ratio=keep_ratio,
        budget=budget,
        method=method,
        min_per_image=min_per_image,
        return_diagnostics=return_diagnostics,
        **options,
    )
    diag = res.diagnostics[0] if res.diagnostics else None
    return PruneResult(res.indices, res.per_image, res.mask, diag)
