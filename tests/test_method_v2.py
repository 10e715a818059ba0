"""Method v2 (docs/METHOD.md): chain length per request, groups of similar images, and the
coverage refinement (``refine_medoids``) against brute force and its guarantees."""

from __future__ import annotations

import math

import pytest
import torch
from _data import random_tokens, real_tokens

import adaptive_prune as ap
from adaptive_prune.ops import reference as ref

EPS = 1e-6


# ------------------------------------------------------------------ chain length, groups
@pytest.mark.parametrize("keep", [0.05, 0.1, 0.25, 0.5])
@pytest.mark.parametrize("with_text", [False, True], ids=["no-text", "text"])
def test_chain_length_is_bounded(keep, with_text):
    x, cu, fx = real_tokens(6)
    text = torch.from_numpy(fx["query_tokens"]).float() if with_text else None
    d = ap.prune(x, cu, text, keep_ratio=keep, return_diagnostics=True).diagnostics
    B = d.budget
    if with_text:
        assert d.chain_length <= math.ceil(1.5 * B)
    else:
        assert d.chain_length <= B
        # without text the chain is exactly the kept tokens past the reserved ones
        assert d.chain_length == B - len(cu) + 1
    assert 1 <= d.groups <= len(cu) - 1


@pytest.mark.parametrize("size", [1, 2, 3])
def test_group_size_caps_the_groups(size):
    x, cu, _ = real_tokens(6)
    d = ap.prune(x, cu, keep_ratio=0.1, group_size=size, group_dist=2.0, return_diagnostics=True)
    assert d.diagnostics.groups == math.ceil(6 / size)


def test_make_groups_by_similarity():
    from adaptive_prune.methods.adaptive import make_groups

    C = [[1.0, 0.95, 0.2, 0.9], [0.95, 1.0, 0.1, 0.96], [0.2, 0.1, 1.0, 0.3], [0.9, 0.96, 0.3, 1]]
    sim = {(k, j): C[k][j] for k in range(4) for j in range(4)}
    assert make_groups(sim, [0, 1, 2, 3], 0.15, 4) == [[0, 1, 3], [2]]
    assert make_groups(sim, [0, 1, 2, 3], 0.15, 2) == [[0, 1], [2], [3]]
    assert make_groups(sim, [0, 1, 2, 3], 0.0, 4) == [[0], [1], [2], [3]]


def test_single_image_groups_equal_per_image_chains():
    """``group_size=1``: every image runs its own max-min chain for its share of B; with
    ``refine=0`` the kept tokens of each image are its own greedy prefix."""
    x, cu = random_tokens([30, 25, 40], dim=16, seed=4)
    res = ap.prune(x, cu, budget=20, group_size=1, refine=0, return_diagnostics=True)
    per = res.per_image.tolist()
    for k in range(3):
        a, e = int(cu[k]), int(cu[k + 1])
        rank = ref.greedy_select(x[a:e], torch.tensor([0, e - a]), torch.tensor([per[k]]),
                                 "maxmin", EPS)  # fmt: skip
        want = torch.nonzero(rank >= 0).flatten() + a
        got = res.indices[(res.indices >= a) & (res.indices < e)]
        assert torch.equal(got, want)


# ------------------------------------------------------------------ refine_medoids
from adaptive_prune.ops.refine_medoids import TIE  # noqa: E402  (the op's tie band)


def _naive_step(xh, img, keep, movable):
    """One refinement step, written as plain loops over clusters (docs/METHOD.md)."""
    m = xh.shape[0]
    S = set(i for i in range(m) if keep[i])
    if not S or len(S) == m:
        return keep.clone()
    cs = sorted(S)
    assign, dist = [], []
    for i in range(m):
        if i in S:
            assign.append(i)
            dist.append(0.0)
            continue
        sims = [float(xh[i] @ xh[j]) for j in cs]
        best = max(range(len(cs)), key=lambda t: (sims[t], -t))
        assign.append(cs[best])
        dist.append(1.0 - sims[best])
    R = max(dist)
    new = keep.clone()
    for j in cs:
        if not movable[j]:
            continue
        members = [i for i in range(m) if assign[i] == j]
        tot = xh[members].sum(0)

        def cost(c, members=members, tot=tot):
            return len(members) - float(xh[c] @ tot)

        cand = [c for c in members if img[c] == img[j] and (c == j or c not in S)]
        band = TIE * len(members)  # the op's tie band
        low = min(cost(c) for c in cand)
        best = min(c for c in cand if cost(c) <= low + band)
        if cost(best) < cost(j) - band:
            rad = max(0.0 if i == best else 1.0 - float(xh[i] @ xh[best]) for i in members)
            if rad <= R - TIE:
                new[j] = False
                new[best] = True
    return new


def _nearest(xh, keep):
    return (1.0 - (xh @ xh[keep].T).max(dim=1).values).clamp_min(0)


@pytest.mark.parametrize("seed", range(6))
def test_refine_matches_naive_and_never_hurts(seed):
    g = torch.Generator().manual_seed(seed)
    counts = [12, 9, 15]
    x = torch.randn(sum(counts), 8, generator=g, dtype=torch.float64)
    pool = torch.randperm(sum(counts), generator=g)[:30]
    image = torch.repeat_interleave(torch.arange(3), torch.tensor(counts))[pool]
    go = torch.tensor([0, 14, 30])
    keep = torch.zeros(30, dtype=torch.bool)
    keep[torch.randperm(30, generator=g)[:8]] = True
    movable = keep & (torch.rand(30, generator=g) < 0.8)
    got = ref.refine_medoids(x, pool, go, image, keep, movable, 1, EPS)
    xh = x[pool] / x[pool].norm(dim=1, keepdim=True)
    for a, e in ((0, 14), (14, 30)):
        want = _naive_step(xh[a:e], image[a:e], keep[a:e], movable[a:e])
        assert torch.equal(got[a:e], want)
        # same count per image, k-centre and total distance never rise
        for k in range(3):
            assert int((got[a:e] & (image[a:e] == k)).sum()) == int(
                (keep[a:e] & (image[a:e] == k)).sum()
            )
        before, after = _nearest(xh[a:e], keep[a:e]), _nearest(xh[a:e], got[a:e])
        assert after.max() <= before.max() + 1e-12
        assert after.sum() <= before.sum() + 1e-12
    # fixed positions never move
    assert torch.equal(got[keep & ~movable], keep[keep & ~movable])


def test_refine_lowers_coverage_on_real_tokens_at_equal_kcentre():
    x, cu, _ = real_tokens(6)
    xh = x / x.norm(dim=1, keepdim=True)
    out = {}
    for steps in (0, 1, 2):
        kept = ap.prune(x, cu, keep_ratio=0.1, refine=steps).indices
        d = 1.0 - (xh @ xh[kept].T).max(dim=1).values
        out[steps] = (float(d.mean()), float(d.max()))
    assert out[1][0] < out[0][0] and out[2][0] <= out[1][0] + 1e-7
    assert out[1][1] <= out[0][1] + 1e-6 and out[2][1] <= out[0][1] + 1e-6


def test_bad_v2_options_are_errors():
    x, cu = random_tokens([10, 10], dim=8)
    with pytest.raises(ValueError, match="option refine"):
        ap.prune(x, cu, budget=5, refine=-1)
    with pytest.raises(ValueError, match="option group_size"):
        ap.prune(x, cu, budget=5, group_size=0)
    with pytest.raises(ValueError, match="option group_dist"):
        ap.prune(x, cu, budget=5, group_dist=-0.1)
