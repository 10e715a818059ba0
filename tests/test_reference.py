"""The pure-PyTorch reference against brute force (explicit pairwise sums, naive greedy loops,
peeling-based Pareto fronts) on tiny cases, in fp64."""

from __future__ import annotations

import math

import pytest
import torch
from _data import random_tokens, real_tokens

from adaptive_prune.ops import reference as ref

EPS = 1e-6


def explicit_d_intra(x: torch.Tensor) -> float:
    m = x.shape[0]
    if m <= 1:
        return 0.0
    xh = x / x.norm(dim=1, keepdim=True).clamp_min(EPS)
    cos = xh @ xh.T
    return float(sum(1 - cos[i, j] for i in range(m) for j in range(m) if i != j) / (m * (m - 1)))


@pytest.mark.parametrize("counts", [[5, 1, 0, 7], [2], [9, 9]], ids=str)
def test_d_intra_identity_random(counts):
    x, cu = random_tokens(counts, dim=8, seed=1, dtype=torch.float64)
    x[0] = 0.0  # a zero-norm token: the identity must stay exact
    d, *_ = ref.budget_scores(x, cu, torch.tensor([0, len(counts)]), None, None, 0.05, 10.0, EPS)
    for k in range(len(counts)):
        assert d[k].item() == pytest.approx(explicit_d_intra(x[cu[k] : cu[k + 1]]), abs=1e-12)


def test_d_intra_identity_real():
    x, cu, _ = real_tokens(max_images=3, dtype=torch.float64)
    x = x[::4]  # every 4th token of the first images keeps the explicit loop short
    cu = torch.div(cu + 3, 4, rounding_mode="floor")
    d, *_ = ref.budget_scores(x, cu, torch.tensor([0, 3]), None, None, 0.05, 10.0, EPS)
    for k in range(3):
        want = explicit_d_intra(x[cu[k] : cu[k + 1]])
        assert d[k].item() == pytest.approx(want, abs=1e-10)
        assert 0.0 < want < 1.5


def test_multiplicity_inter_and_attention_explicit():
    counts = [4, 3, 0, 5]
    x, cu = random_tokens(counts, dim=6, seed=2, dtype=torch.float64)
    t = torch.randn(2, 6, dtype=torch.float64)
    d, mult, att, dint = ref.budget_scores(
        x, cu, torch.tensor([0, 4]), t, torch.tensor([0, 2]), 0.3, 5.0, EPS
    )
    live = [k for k in range(4) if counts[k]]
    mu = {}
    for k in live:
        s = (x[cu[k] : cu[k + 1]] / x[cu[k] : cu[k + 1]].norm(dim=1, keepdim=True)).sum(0)
        mu[k] = s / s.norm()
    for k in live:
        want = sum(math.exp(-(1 - float(mu[k] @ mu[j])) / 0.3) for j in live)
        assert mult[k].item() == pytest.approx(want, rel=1e-12)
    assert mult[2].item() == 0.0
    pairs = [(k, j) for k in live for j in live if k != j]
    assert dint[0].item() == pytest.approx(
        sum(1 - float(mu[k] @ mu[j]) for k, j in pairs) / len(pairs), rel=1e-12
    )
    xh = x / x.norm(dim=1, keepdim=True)
    th = t / t.norm(dim=1, keepdim=True)
    p = torch.softmax(5.0 * th @ xh.T, dim=1)
    for k in range(4):
        assert att[k].item() == pytest.approx(float(p[:, cu[k] : cu[k + 1]].sum(1).mean()))
    assert float(att.sum()) == pytest.approx(1.0)


def test_single_image_has_no_inter_variation():
    x, cu = random_tokens([6], dim=4, seed=3)
    _, mult, _, dint = ref.budget_scores(x, cu, torch.tensor([0, 1]), None, None, 0.05, 10, EPS)
    assert dint.tolist() == [0.0] and mult.tolist() == pytest.approx([1.0])


# ---------------------------------------------------------------------------------- greedy
def naive_greedy(x: torch.Tensor, b: int, mode: str) -> list[int]:
    """O(k^2 m): recompute every candidate's score from the picked set at every step."""
    xh = x / x.norm(dim=1, keepdim=True).clamp_min(EPS)
    s = xh.sum(0)
    mu = s / s.norm().clamp_min(EPS)
    rep = [float(xh[i] @ mu) for i in range(len(x))]
    picks = [max(range(len(x)), key=lambda i: (rep[i], -i))]
    while len(picks) < b:
        best, best_i = -math.inf, -1
        for i in range(len(x)):
            if i in picks:
                continue
            dists = [1 - float(xh[i] @ xh[j]) for j in picks]
            v = min(dists) if mode == "maxmin" else sum(dists)
            if v > best:
                best, best_i = v, i
        picks.append(best_i)
    return picks


@pytest.mark.parametrize("mode", ["maxmin", "maxsum"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_matches_naive(mode, seed):
    counts = [11, 1, 0, 7, 13]
    budgets = [5, 1, 0, 7, 9]
    x, cu = random_tokens(counts, dim=5, seed=seed, dtype=torch.float64)
    rank = ref.greedy_select(x, cu, torch.tensor(budgets), mode, EPS)
    for k, (m, b) in enumerate(zip(counts, budgets)):
        r = rank[cu[k] : cu[k + 1]]
        want = naive_greedy(x[cu[k] : cu[k + 1]], b, mode) if b else []
        got = sorted((i for i in range(m) if r[i] >= 0), key=lambda i: int(r[i]))
        assert got == want
        assert sorted(r[r >= 0].tolist()) == list(range(b))


def test_greedy_ties_go_to_lower_index():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    rank = ref.greedy_select(x, torch.tensor([0, 4]), torch.tensor([3]), "maxmin", EPS)
    # mu is the diagonal: every token ties on representativeness -> token 0 first; then the
    # farthest (tokens 2 and 3 tie) -> token 2; then tokens 1 and 3 tie at distance 0 -> token 1
    assert rank.tolist() == [0, 2, 1, -1]


def test_global_greedy_matches_naive_and_gains_never_increase():
    x, _ = random_tokens([30], dim=6, seed=4, dtype=torch.float64)
    pool = torch.tensor([3, 7, 1, 20, 25, 11, 9, 14, 2, 28])
    reserved = torch.zeros(10, dtype=torch.bool)
    reserved[[1, 4]] = True
    order, gains = ref.global_greedy(x, pool, torch.tensor([0, 10]), reserved, [8], EPS)
    assert order[:2].tolist() == [1, 4] and torch.isinf(gains[:2]).all()
    xh = x / x.norm(dim=1, keepdim=True)
    picked = [1, 4]
    for step in range(2, 8):
        best = max(
            (p for p in range(10) if p not in picked),
            key=lambda p: (min(1 - float(xh[pool[p]] @ xh[pool[q]]) for q in picked), -p),
        )
        assert int(order[step]) == best
        want_gain = min(1 - float(xh[pool[best]] @ xh[pool[q]]) for q in picked)
        assert float(gains[step]) == pytest.approx(want_gain, abs=1e-6)
        picked.append(best)
    assert (gains[2:-1] >= gains[3:]).all()


# ---------------------------------------------------------------------------------- pareto
def peel_fronts(f1, f2):
    """Independent front computation: repeatedly remove the non-dominated set."""
    left, out, level = set(range(len(f1))), {}, 0
    while left:
        nd = {
            i
            for i in left
            if not any(
                f1[j] >= f1[i] and f2[j] >= f2[i] and (f1[j] > f1[i] or f2[j] > f2[i]) for j in left
            )
        }
        for i in nd:
            out[i] = level
        left -= nd
        level += 1
    return [out[i] for i in range(len(f1))]


def brute_pareto(f1, f2, k):
    front = peel_fronts(f1, f2)
    keep = []
    for level in range(max(front) + 1):
        members = [i for i in range(len(f1)) if front[i] == level]
        if len(keep) + len(members) <= k:
            keep += members
            continue
        if len(members) <= 2:
            cd = {i: math.inf for i in members}
        else:
            cd = {i: 0.0 for i in members}
            for f in (f1, f2):
                srt = sorted(members, key=lambda i: (f[i], i))
                cd[srt[0]] = cd[srt[-1]] = math.inf
                span = f[srt[-1]] - f[srt[0]]
                for p in range(1, len(srt) - 1):
                    if span > 0:
                        cd[srt[p]] += (f[srt[p + 1]] - f[srt[p - 1]]) / span
        keep += sorted(members, key=lambda i: (-cd[i], i))[: k - len(keep)]
        break
    return sorted(keep)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k", [1, 4, 9, 17])
def test_pareto_matches_brute_force(seed, k):
    g = torch.Generator().manual_seed(seed)
    K = 20
    f1 = torch.rand(K, generator=g).sort(descending=True).values  # gains: non-increasing
    f2 = torch.rand(K, generator=g)
    if seed % 2:  # coarse values create equal points and ties
        f1, f2 = (f1 * 4).round() / 4, (f2 * 4).round() / 4
    keep = ref.pareto_select(f1, f2, torch.tensor([0, K]), [k])
    assert int(keep.sum()) == k
    assert torch.nonzero(keep).flatten().tolist() == brute_pareto(f1.tolist(), f2.tolist(), k)
    kept, dropped = torch.nonzero(keep).flatten(), torch.nonzero(~keep).flatten()
    for j in dropped.tolist():  # no dropped point dominates a kept one
        for i in kept.tolist():
            assert not (f1[j] >= f1[i] and f2[j] >= f2[i] and (f1[j] > f1[i] or f2[j] > f2[i]))


def test_pareto_segments_are_independent():
    f1, f2 = torch.rand(12), torch.rand(12)
    both = ref.pareto_select(f1, f2, torch.tensor([0, 5, 12]), [2, 3])
    a = ref.pareto_select(f1[:5], f2[:5], torch.tensor([0, 5]), [2])
    b = ref.pareto_select(f1[5:], f2[5:], torch.tensor([0, 7]), [3])
    assert both.tolist() == a.tolist() + b.tolist()


# ------------------------------------------------------------------------------ allocation
def alloc(w, caps, mins, total):
    return ref.allocate_budgets(
        torch.tensor(w, dtype=torch.float64),
        torch.tensor(caps),
        torch.tensor(mins),
        torch.tensor([0, len(w)]),
        torch.tensor([total]),
    ).tolist()


def test_allocation_largest_remainder_ties_to_lower_index():
    assert alloc([1, 1, 1], [10, 10, 10], [0, 0, 0], 4) == [2, 1, 1]
    assert alloc([1, 1, 1], [10, 10, 10], [0, 0, 0], 5) == [2, 2, 1]
    assert alloc([1, 2, 1], [10, 10, 10], [0, 0, 0], 5) == [1, 3, 1]  # 1.25 2.5 1.25 -> 2.5 up


def test_allocation_water_filling_caps_and_minimums():
    assert alloc([10, 1, 1], [2, 10, 10], [0, 0, 0], 8) == [2, 3, 3]
    assert alloc([100, 1, 1, 1], [3, 4, 10, 10], [1, 1, 1, 1], 12) == [3, 3, 3, 3]
    assert alloc([5, 0, 1], [10, 3, 10], [1, 1, 1], 9) == [6, 1, 2]  # zero weight: min only
    assert alloc([1, 1], [0, 5], [0, 1], 5) == [0, 5]  # empty image gets nothing


@pytest.mark.parametrize("seed", range(20))
def test_allocation_invariants_random(seed):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 9, (1,), generator=g))
    caps = torch.randint(0, 30, (n,), generator=g).tolist()
    q = int(torch.randint(0, 4, (1,), generator=g))
    mins = [min(q, c) for c in caps]
    total = int(torch.randint(sum(mins), sum(caps) + 1, (1,), generator=g))
    w = (torch.rand(n, generator=g) * 5).tolist()
    b = alloc(w, caps, mins, total)
    assert sum(b) == total
    assert all(mn <= v <= c for v, mn, c in zip(b, mins, caps))
    # proportionality: uncapped images with more weight never get fewer extra tokens,
    # up to the one-token rounding slack of largest remainder
    free = [k for k in range(n) if mins[k] < b[k] < caps[k]]
    for i in free:
        for j in free:
            if w[i] > w[j]:
                assert b[i] - mins[i] >= b[j] - mins[j] - 1
