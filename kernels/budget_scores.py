"""Stage 0: per-image redundancy scores and per-token text alignment from one pass over
``vision`` (varlen, batched).

Maths (docs/METHOD.md, Stage 0), for image ``k`` of request ``r``:

- ``x̂_i = x_i / max(||x_i||, eps)`` (fp32), ``s_k = sum_i x̂_i``, ``q_k = sum_i ||x̂_i||^2``;
- ``D_intra(k) = 1 - (||s_k||^2 - q_k) / (m_k (m_k - 1))``, 0 when ``m_k <= 1``;
- ``mu_k = s_k / max(||s_k||, eps)``, ``C_kl = mu_k . mu_l`` over the request's images;
- ``mult_k = sum_{l live} exp(-(1 - C_kl) / sigma)`` (0 for an empty image);
- ``D_inter(r) = mean over ordered live pairs k != l of (1 - C_kl)`` (0 with < 2 live images);
- ``att_k = mean over text rows t of sum_{i in k} softmax_i(tau_a cos(t, x_i))`` where the
  softmax runs over all tokens of the request (0 without text);
- ``a_i = mean`` (or ``max``, ``ALIGN_MAX``) ``over text rows t of cos(x_i, t)`` for every token
  of a request with text (0 otherwise): the cosines of the logits above.

Shapes: ``vision [N, D]``, ``cu_seqlens [n+1]``, ``req_offsets [R+1]``, ``text [M, D]``,
``text_offsets [R+1]``; outputs ``d_intra, mult, att [n]``, ``d_inter [R]``, ``mu [n, D]``
(from ``s_k``, one small torch op after the launches) and ``a [N]``, fp32.
Reference: :func:`adaptive_prune.reference.budget_scores`.

Launches (no atomics: deterministic):

1. ``_budget_scores_tile_kernel``, one program per tile of ``BT`` rows of one image: row norms,
   the tile's column sums of ``x̂`` (``[T, D]`` partials), ``sum ||x̂||^2``, and with text the
   tile's cosines ``cos(x_i, t)``: reduced per row to ``a_i``, and as logits ``tau_a cos`` to a
   per-text-row (max, sum of exp) pair.
   ``vision`` is read once (twice per tile from cache); the ``N x M`` logits are never stored.
2. ``_budget_scores_image_kernel``, one program per (image, column chunk): ``s_k``, ``q_k`` and
   the image's softmax partials (log-sum-exp merge of its tiles).
3. ``_budget_scores_request_kernel``, one program per request: ``C`` block by block from
   ``s`` (``n_r x n_r`` kept in registers, never stored), ``mult``, ``D_inter``, ``D_intra``,
   ``att``.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._common import (
    _inv_norm,
    _locate,
    cfg,
    dot_precision,
    empty,
    host_ints,
    kernel_input,
    next_pow2,
    pack,
    set_device,
    sizes_of,
    tile_cum,
)


@triton.jit(do_not_specialize=["n", "MT", "eps", "tau_a"])
def _budget_scores_tile_kernel(
    x_ptr,  # [N, D]
    t_ptr,  # [M, D] text (HAS_TEXT)
    cu_ptr,  # [n+1] int64
    tcum_ptr,  # [n+1] int64 cumulative tiles per image
    ireq_ptr,  # [n] int64 request of every image
    to_ptr,  # [R+1] int64 text offsets
    part_ptr,  # [T, D] fp32 out: column sums of x̂ per tile
    sqp_ptr,  # [T] fp32 out: sum of ||x̂||^2 per tile
    lmax_ptr,  # [T, MT] fp32 out: max logit per text row
    lsum_ptr,  # [T, MT] fp32 out: sum exp(logit - max) per text row
    al_ptr,  # [N] fp32 out: text alignment of every token (HAS_TEXT)
    n,
    D,
    stride_x,
    stride_t,
    MT,
    eps,
    tau_a,
    HAS_TEXT: tl.constexpr,
    ALIGN_MAX: tl.constexpr,
    BT: tl.constexpr,
    BD: tl.constexpr,
    BMT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PREC: tl.constexpr,
):
    i_t = tl.program_id(0).to(tl.int64)
    i_k = _locate(tcum_ptr, n, i_t, BLOCK_N)
    a = tl.load(cu_ptr + i_k) + (i_t - tl.load(tcum_ptr + i_k)) * BT
    e = tl.load(cu_ptr + i_k + 1)
    o_r = a + tl.arange(0, BT)  # [BT]
    m_r = o_r < e
    p_x = x_ptr + o_r[:, None] * stride_x
    ss = tl.zeros((BT,), dtype=tl.float32)
    for d0 in range(0, D, BD):
        o_d = d0 + tl.arange(0, BD)
        b_x = tl.load(p_x + o_d[None, :], mask=m_r[:, None] & (o_d < D)[None, :], other=0.0)
        f = b_x.to(tl.float32)
        ss += tl.sum(f * f, axis=1)
    inv = _inv_norm(ss, eps)  # [BT]
    for d0 in range(0, D, BD):
        o_d = d0 + tl.arange(0, BD)
        m_d = o_d < D
        b_x = tl.load(p_x + o_d[None, :], mask=m_r[:, None] & m_d[None, :], other=0.0)
        col = tl.sum(b_x.to(tl.float32) * inv[:, None], axis=0)  # [BD]
        tl.store(part_ptr + i_t * D + o_d, col, mask=m_d)
    tl.store(sqp_ptr + i_t, tl.sum(tl.where(m_r, ss * inv * inv, 0.0), axis=0))
    if HAS_TEXT:
        i_r = tl.load(ireq_ptr + i_k)
        ta = tl.load(to_ptr + i_r)
        tm = tl.load(to_ptr + i_r + 1) - ta
        a_sum = tl.zeros((BT,), dtype=tl.float32)
        a_max = tl.full((BT,), float("-inf"), dtype=tl.float32)
        for j0 in range(0, tm, BMT):
            o_j = j0 + tl.arange(0, BMT)  # [BMT]
            m_j = o_j < tm
            p_t = t_ptr + (ta + o_j)[:, None] * stride_t
            acc = tl.zeros((BT, BMT), dtype=tl.float32)
            sst = tl.zeros((BMT,), dtype=tl.float32)
            for d0 in range(0, D, BD):
                o_d = d0 + tl.arange(0, BD)
                m_d = o_d < D
                b_x = tl.load(p_x + o_d[None, :], mask=m_r[:, None] & m_d[None, :], other=0.0)
                b_t = tl.load(p_t + o_d[None, :], mask=m_j[:, None] & m_d[None, :], other=0.0)
                acc = tl.dot(b_x, tl.trans(b_t), acc, input_precision=PREC)
                ft = b_t.to(tl.float32)
                sst += tl.sum(ft * ft, axis=1)
            cos = acc * inv[:, None] * _inv_norm(sst, eps)[None, :]  # [BT, BMT]
            a_sum += tl.sum(tl.where(m_j[None, :], cos, 0.0), axis=1)
            a_max = tl.maximum(a_max, tl.max(tl.where(m_j[None, :], cos, float("-inf")), axis=1))
            logit = tl.where(m_r[:, None], tau_a * cos, float("-inf"))
            lm = tl.max(logit, axis=0)  # [BMT], finite: the tile has >= 1 row
            ls = tl.sum(tl.exp(logit - lm[None, :]), axis=0)
            tl.store(lmax_ptr + i_t * MT + o_j, lm, mask=m_j)
            tl.store(lsum_ptr + i_t * MT + o_j, ls, mask=m_j)
        if ALIGN_MAX:
            b_a = tl.where(tm > 0, a_max, 0.0)
        else:
            b_a = a_sum / tl.maximum(tm, 1).to(tl.float32)
        tl.store(al_ptr + o_r, b_a, mask=m_r)


@triton.jit(do_not_specialize=["MT"])
def _budget_scores_image_kernel(
    tcum_ptr,  # [n+1] int64
    ireq_ptr,  # [n] int64
    to_ptr,  # [R+1] int64
    part_ptr,  # [T, D]
    sqp_ptr,  # [T]
    lmax_ptr,  # [T, MT]
    lsum_ptr,  # [T, MT]
    s_ptr,  # [n, D] fp32 out
    sq_ptr,  # [n] fp32 out
    limg_ptr,  # [n, MT] fp32 out: image max logit per text row
    zimg_ptr,  # [n, MT] fp32 out: image sum exp(logit - limg)
    D,
    MT,
    HAS_TEXT: tl.constexpr,
    BD: tl.constexpr,
    BMT: tl.constexpr,
):
    i_k = tl.program_id(0).to(tl.int64)
    i_c = tl.program_id(1).to(tl.int64)
    t0 = tl.load(tcum_ptr + i_k)
    t1 = tl.load(tcum_ptr + i_k + 1)
    o_d = i_c * BD + tl.arange(0, BD)
    m_d = o_d < D
    s = tl.zeros((BD,), dtype=tl.float32)
    for t in range(t0, t1):
        s += tl.load(part_ptr + t * D + o_d, mask=m_d, other=0.0)
    tl.store(s_ptr + i_k * D + o_d, s, mask=m_d)
    if i_c == 0:
        sq = tl.zeros((), dtype=tl.float32)
        for t in range(t0, t1):
            sq += tl.load(sqp_ptr + t)
        tl.store(sq_ptr + i_k, sq)
        if HAS_TEXT:
            i_r = tl.load(ireq_ptr + i_k)
            tm = tl.load(to_ptr + i_r + 1) - tl.load(to_ptr + i_r)
            for j0 in range(0, tm, BMT):
                o_j = j0 + tl.arange(0, BMT)
                m_j = o_j < tm
                big = tl.full((BMT,), float("-inf"), dtype=tl.float32)
                for t in range(t0, t1):
                    big = tl.maximum(big, tl.load(lmax_ptr + t * MT + o_j, mask=m_j, other=0.0))
                z = tl.zeros((BMT,), dtype=tl.float32)
                for t in range(t0, t1):
                    lm = tl.load(lmax_ptr + t * MT + o_j, mask=m_j, other=0.0)
                    z += tl.exp(lm - big) * tl.load(lsum_ptr + t * MT + o_j, mask=m_j, other=0.0)
                tl.store(limg_ptr + i_k * MT + o_j, big, mask=m_j)
                tl.store(zimg_ptr + i_k * MT + o_j, z, mask=m_j)


@triton.jit(do_not_specialize=["MT", "sigma", "eps"])
def _budget_scores_request_kernel(
    cu_ptr,  # [n+1] int64
    ro_ptr,  # [R+1] int64
    to_ptr,  # [R+1] int64
    s_ptr,  # [n, D]
    sq_ptr,  # [n]
    limg_ptr,  # [n, MT]
    zimg_ptr,  # [n, MT]
    dintra_ptr,  # [n] out
    mult_ptr,  # [n] out
    att_ptr,  # [n] out
    dinter_ptr,  # [R] out
    D,
    MT,
    sigma,
    eps,
    HAS_TEXT: tl.constexpr,
    BN: tl.constexpr,
    BD: tl.constexpr,
    BMT: tl.constexpr,
):
    i_r = tl.program_id(0).to(tl.int64)
    k0 = tl.load(ro_ptr + i_r)
    k1 = tl.load(ro_ptr + i_r + 1)
    o_n = tl.arange(0, BN)
    if HAS_TEXT:
        tm = tl.load(to_ptr + i_r + 1) - tl.load(to_ptr + i_r)
    else:
        tm = 0
    n_live = tl.zeros((), dtype=tl.int64)
    d_sum = tl.zeros((), dtype=tl.float32)
    for kb in range(k0, k1, BN):
        o_k = kb + o_n  # [BN] images (rows of C)
        m_k = o_k < k1
        cnt_k = tl.load(cu_ptr + o_k + 1, mask=m_k, other=0) - tl.load(
            cu_ptr + o_k, mask=m_k, other=0
        )
        live_k = m_k & (cnt_k > 0)
        n_live += tl.sum(live_k.to(tl.int64), axis=0)
        mult = tl.zeros((BN,), dtype=tl.float32)
        dist = tl.zeros((BN,), dtype=tl.float32)
        nrm2 = tl.zeros((BN,), dtype=tl.float32)
        for lb in range(k0, k1, BN):
            o_l = lb + o_n  # [BN] images (columns of C)
            m_l = o_l < k1
            cnt_l = tl.load(cu_ptr + o_l + 1, mask=m_l, other=0) - tl.load(
                cu_ptr + o_l, mask=m_l, other=0
            )
            live_l = m_l & (cnt_l > 0)
            g = tl.zeros((BN, BN), dtype=tl.float32)
            na = tl.zeros((BN,), dtype=tl.float32)
            nb = tl.zeros((BN,), dtype=tl.float32)
            for d0 in range(0, D, BD):
                o_d = d0 + tl.arange(0, BD)
                m_d = o_d < D
                sa = tl.load(
                    s_ptr + o_k[:, None] * D + o_d[None, :],
                    mask=m_k[:, None] & m_d[None, :],
                    other=0.0,
                )
                sb = tl.load(
                    s_ptr + o_l[:, None] * D + o_d[None, :],
                    mask=m_l[:, None] & m_d[None, :],
                    other=0.0,
                )
                g = tl.dot(sa, tl.trans(sb), g, input_precision="ieee")
                na += tl.sum(sa * sa, axis=1)
                nb += tl.sum(sb * sb, axis=1)
            c = g * _inv_norm(na, eps)[:, None] * _inv_norm(nb, eps)[None, :]  # C block
            w = tl.exp(-(1.0 - c) / sigma)
            mult += tl.sum(tl.where(live_l[None, :], w, 0.0), axis=1)
            both = live_k[:, None] & live_l[None, :] & (o_k[:, None] != o_l[None, :])
            dist += tl.sum(tl.where(both, 1.0 - c, 0.0), axis=1)
            nrm2 = na
        d_sum += tl.sum(dist, axis=0)
        cf = cnt_k.to(tl.float32)
        pairs = cf * (cf - 1.0)
        sq = tl.load(sq_ptr + o_k, mask=m_k, other=0.0)
        d_intra = tl.where(pairs > 0, 1.0 - (nrm2 - sq) / tl.maximum(pairs, 1.0), 0.0)
        tl.store(dintra_ptr + o_k, d_intra, mask=m_k)
        tl.store(mult_ptr + o_k, tl.where(live_k, mult, 0.0), mask=m_k)
        att = tl.zeros((BN,), dtype=tl.float32)
        if HAS_TEXT:
            for j0 in range(0, tm, BMT):
                o_j = j0 + tl.arange(0, BMT)
                m_j = o_j < tm
                # request-wide max and normaliser of every text row's softmax
                big = tl.full((BMT,), float("-inf"), dtype=tl.float32)
                for lb in range(k0, k1, BN):
                    o_l = lb + o_n
                    m_l = o_l < k1
                    lm = tl.load(
                        limg_ptr + o_l[:, None] * MT + o_j[None, :],
                        mask=m_l[:, None] & m_j[None, :],
                        other=float("-inf"),
                    )
                    big = tl.maximum(big, tl.max(lm, axis=0))
                big = tl.where(big > float("-inf"), big, 0.0)  # no (-inf) - (-inf) below
                z = tl.zeros((BMT,), dtype=tl.float32)
                for lb in range(k0, k1, BN):
                    o_l = lb + o_n
                    m_l = o_l < k1
                    mm = m_l[:, None] & m_j[None, :]
                    lm = tl.load(
                        limg_ptr + o_l[:, None] * MT + o_j[None, :], mask=mm, other=float("-inf")
                    )
                    zl = tl.load(zimg_ptr + o_l[:, None] * MT + o_j[None, :], mask=mm, other=0.0)
                    fin = lm > float("-inf")
                    z += tl.sum(tl.where(fin, tl.exp(lm - big[None, :]) * zl, 0.0), axis=0)
                mk = m_k[:, None] & m_j[None, :]
                lk = tl.load(
                    limg_ptr + o_k[:, None] * MT + o_j[None, :], mask=mk, other=float("-inf")
                )
                zk = tl.load(zimg_ptr + o_k[:, None] * MT + o_j[None, :], mask=mk, other=0.0)
                ok = (lk > float("-inf")) & (z > 0)[None, :]
                share = tl.where(
                    ok, tl.exp(lk - big[None, :]) * zk / tl.where(z > 0, z, 1.0)[None, :], 0.0
                )
                att += tl.sum(share, axis=1)
            att = att / tl.maximum(tm, 1).to(tl.float32)
        tl.store(att_ptr + o_k, att, mask=m_k)
    d_inter = tl.where(
        n_live >= 2, d_sum / tl.maximum(n_live * (n_live - 1), 1).to(tl.float32), 0.0
    )
    tl.store(dinter_ptr + i_r, d_inter)


def budget_scores_fwd(
    vision: torch.Tensor,
    cu_seqlens: torch.Tensor,
    req_offsets: torch.Tensor,
    text: Optional[torch.Tensor],
    text_offsets: Optional[torch.Tensor],
    sigma: float,
    tau_a: float,
    eps: float,
    align: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``adaptive_prune::budget_scores`` on the device: ``(d_intra, mult, att [n], d_inter [R],
    mu [n, D], a [N])`` fp32. Offsets may be CPU tensors (no host sync) or device tensors (one sync
    each)."""
    if align not in ("mean", "max"):
        raise ValueError(f"align must be 'mean' or 'max', got {align!r}")
    x = kernel_input(vision)
    dev = x.device
    cu = host_ints(cu_seqlens)
    ro = host_ints(req_offsets)
    n, R = len(cu) - 1, len(ro) - 1
    D = x.shape[1]
    has_text = text is not None and text_offsets is not None and text.shape[0] > 0
    to = host_ints(text_offsets) if has_text else [0] * (R + 1)
    t_sizes = sizes_of(to)
    MT = max(t_sizes) if has_text else 0
    has_text = has_text and MT > 0
    f32 = torch.float32
    d_intra = empty(n, f32, dev)
    mult = empty(n, f32, dev)
    att = empty(n, f32, dev)
    d_inter = empty(R, f32, dev)
    a = empty(x.shape[0], f32, dev) if has_text else torch.zeros(x.shape[0], dtype=f32, device=dev)
    if R == 0:
        mu = torch.zeros((n, D), dtype=f32, device=dev)
        return d_intra.zero_(), mult.zero_(), att.zero_(), d_inter, mu, a
    BT = cfg("rows_tile")
    BD = min(cfg("budget_cols"), max(16, next_pow2(D)))
    tcum = tile_cum(sizes_of(cu), BT)
    T = tcum[-1]
    ireq = []
    for r in range(R):
        ireq += [r] * (ro[r + 1] - ro[r])
    cu_d, ro_d, to_d, tcum_d, ireq_d = pack([cu, ro, to, tcum, ireq], dev)
    t = kernel_input(text).to(x.dtype) if has_text else x
    MTs = max(MT, 1)
    part = empty((max(T, 1), D), f32, dev)
    sqp = empty(max(T, 1), f32, dev)
    lmax = empty((max(T, 1), MTs), f32, dev)
    lsum = empty(lmax.shape, lmax.dtype, dev)
    s = empty((max(n, 1), D), f32, dev)
    sq = empty(max(n, 1), f32, dev)
    limg = empty((max(n, 1), MTs), f32, dev)
    zimg = empty(limg.shape, limg.dtype, dev)
    BMT = min(64, max(16, next_pow2(MT))) if has_text else 16
    BD2 = min(256, max(16, next_pow2(D)))
    with set_device(dev):
        if T > 0:
            _budget_scores_tile_kernel[(T,)](
                x, t, cu_d, tcum_d, ireq_d, to_d, part, sqp, lmax, lsum, a,
                n, D, x.stride(0), t.stride(0), MTs, float(eps), float(tau_a),
                HAS_TEXT=has_text, ALIGN_MAX=align == "max", BT=BT, BD=BD, BMT=BMT,
                BLOCK_N=min(1024, next_pow2(n + 1)), PREC=dot_precision(x.dtype),
                num_warps=8,
            )  # fmt: skip
        if n > 0:
            _budget_scores_image_kernel[(n, triton.cdiv(D, BD2))](
                tcum_d, ireq_d, to_d, part, sqp, lmax, lsum, s, sq, limg, zimg, D, MTs,
                HAS_TEXT=has_text, BD=BD2, BMT=BMT, num_warps=4,
            )  # fmt: skip
        max_nr = max(sizes_of(ro)) if R else 1
        BN = min(32, max(16, next_pow2(max_nr)))
        # column step 32: with D specialised (aligned, vectorised loads) 64 spilled on sm_90
        _budget_scores_request_kernel[(R,)](
            cu_d, ro_d, to_d, s, sq, limg, zimg, d_intra, mult, att, d_inter,
            D, MTs, float(sigma), float(eps),
            HAS_TEXT=has_text, BN=BN, BD=min(32, max(16, next_pow2(D))), BMT=BMT, num_warps=8,
        )  # fmt: skip
    s = s[:n]
    mu = s / s.norm(dim=1, keepdim=True).clamp_min(eps)
    return d_intra, mult, att, d_inter, mu, a


__all__ = ["budget_scores_fwd"]
