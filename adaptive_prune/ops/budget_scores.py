"""Op ``adaptive_prune::budget_scores`` (stage 0): per-image redundancy scores, image mean
directions and per-token text alignment from one pass over the tokens. Definition, fake and
reference (the specification in code)."""

from __future__ import annotations

from typing import Optional

import torch

from .. import _checks as C
from . import _contract as X
from ._common import bounds, compute_dtype, define, normalize

_OP = "budget_scores"


def check(
    vision: torch.Tensor,
    cu_seqlens: torch.Tensor,
    req_offsets: torch.Tensor,
    text: Optional[torch.Tensor],
    text_offsets: Optional[torch.Tensor],
    sigma: float,
    tau_a: float,
    eps: float,
    align: str,
) -> bool:
    """The op's contract: two-level offsets over ``vision``, text in the same space, and the
    temperatures in the ranges the fp32 computation supports."""
    X.tensor(_OP, "vision", vision, 2, X.FLOATS, "a float type")
    cu = X.offsets(_OP, "cu_seqlens", cu_seqlens, vision.shape[0], "N (rows of vision)")
    ro = X.offsets(_OP, "req_offsets", req_offsets, len(cu) - 1, "n (number of images)")
    if (text is None) != (text_offsets is None):
        X.fail(_OP, "give text and text_offsets together, or neither")
    if text is not None:
        X.tensor(_OP, "text", text, 2, X.FLOATS, "a float type")
        X.same_space(_OP, vision, text)
        to = X.offsets(_OP, "text_offsets", text_offsets, text.shape[0], "M (rows of text)")
        if len(to) != len(ro):
            X.fail(_OP, f"text_offsets has {len(to)} entries, req_offsets {len(ro)}")
    X.option(_OP, "sigma", sigma, C.SIGMA)
    X.option(_OP, "tau_a", tau_a, C.TAU_A)
    X.option(_OP, "eps", eps, C.EPS)
    X.choice(_OP, "align", align, ("mean", "max"))
    return False


def reference(
    vision: torch.Tensor,
    cu_seqlens: torch.Tensor,
    req_offsets: torch.Tensor,
    text: Optional[torch.Tensor],
    text_offsets: Optional[torch.Tensor],
    sigma: float,
    tau_a: float,
    eps: float,
    align: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image redundancy scores and per-token text alignment from one pass over ``vision``.

    Returns ``(d_intra [n], mult [n], att [n], d_inter [R], mu [n, D], a [N])`` in the compute
    dtype.

    - ``D_intra(k)``: mean cosine distance over ordered pairs ``i != j`` of image ``k``, from the
      identity ``sum_{i!=j} x̂_i.x̂_j = ||s_k||^2 - sum_i ||x̂_i||^2`` (exact also for zero-norm
      tokens, whose normalised vector is 0); 0 when ``m_k <= 1``.
    - ``mult_k = sum_l exp(-(1 - C_kl) / sigma)`` over the nonempty images ``l`` of the same
      request, ``C_kl = mu_k . mu_l``, ``mu_k = s_k / max(||s_k||, eps)``; 0 for empty images.
    - ``att_k``: share of image ``k`` in ``softmax_i(tau_a * cos(t, x_i))`` over the request's
      tokens, averaged over the request's text rows ``t``; 0 without text.
    - ``D_inter(r)``: mean of ``1 - C_kl`` over ordered pairs ``k != l`` of nonempty images of
      request ``r``; 0 with fewer than two.
    - ``mu [n, D]``: the image mean directions ``mu_k`` above (0 for empty images).
    - ``a_i``: mean (``align="mean"``) or max (``align="max"``) of ``cos(x_i, t)`` over the
      text rows ``t`` of token ``i``'s request (the cosines of ``att``'s logits); 0 without
      text. ``token_alignment`` computes the same quantity for any subset of the tokens.
    """
    cd = compute_dtype(vision.dtype)
    dev = vision.device
    cu = bounds(cu_seqlens)
    ro = bounds(req_offsets)
    n = len(cu) - 1
    counts = torch.tensor([cu[k + 1] - cu[k] for k in range(n)], device=dev, dtype=cd)
    xh = normalize(vision, eps)
    img = torch.repeat_interleave(torch.arange(n, device=dev), counts.long())
    s = torch.zeros(n, vision.shape[1], device=dev, dtype=cd).index_add_(0, img, xh)
    sq = torch.zeros(n, device=dev, dtype=cd).index_add_(0, img, (xh * xh).sum(-1))
    pairs = counts * (counts - 1)
    off_diag = (s * s).sum(-1) - sq
    d_intra = torch.where(pairs > 0, 1.0 - off_diag / pairs.clamp_min(1.0), torch.zeros_like(pairs))
    mu = s / s.norm(dim=-1, keepdim=True).clamp_min(eps)

    mult = torch.zeros(n, device=dev, dtype=cd)
    att = torch.zeros(n, device=dev, dtype=cd)
    d_inter = torch.zeros(len(ro) - 1, device=dev, dtype=cd)
    a = torch.zeros(vision.shape[0], device=dev, dtype=cd)
    to = bounds(text_offsets) if text is not None and text_offsets is not None else None
    th = normalize(text, eps) if to is not None else None
    for r in range(len(ro) - 1):
        k0, k1 = ro[r], ro[r + 1]
        if k1 == k0:
            continue
        live = counts[k0:k1] > 0
        C = mu[k0:k1] @ mu[k0:k1].T
        w = torch.exp(-(1.0 - C) / sigma) * live[None, :]
        mult[k0:k1] = torch.where(live, w.sum(-1), torch.zeros_like(w[:, 0]))
        nl = int(live.sum())
        if nl >= 2:
            both = live[:, None] & live[None, :]
            both.fill_diagonal_(False)
            d_inter[r] = ((1.0 - C) * both).sum() / (nl * (nl - 1))
        if th is not None and to[r + 1] > to[r] and cu[k1] > cu[k0]:
            cos = xh[cu[k0] : cu[k1]] @ th[to[r] : to[r + 1]].T  # [N_r, M_r]
            a[cu[k0] : cu[k1]] = cos.mean(1) if align == "mean" else cos.max(1).values
            p = torch.softmax(tau_a * cos.T, dim=-1)  # [M_r, N_r]
            per_img = torch.zeros(p.shape[0], k1 - k0, device=dev, dtype=cd)
            per_img.index_add_(1, img[cu[k0] : cu[k1]] - k0, p)
            att[k0:k1] = per_img.mean(0)
    return d_intra, mult, att, d_inter, mu, a


op = define("budget_scores", reference, check)


@op.register_fake
def _(vision, cu_seqlens, req_offsets, text, text_offsets, sigma, tau_a, eps, align):
    cd = compute_dtype(vision.dtype)
    n, R = cu_seqlens.shape[0] - 1, req_offsets.shape[0] - 1
    one = vision.new_empty((n,), dtype=cd)
    N, D = vision.shape
    d_inter, a = vision.new_empty((R,), dtype=cd), vision.new_empty((N,), dtype=cd)
    mu = vision.new_empty((n, D), dtype=cd)
    return one, torch.empty_like(one), torch.empty_like(one), d_inter, mu, a
