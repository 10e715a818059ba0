"""Baselines (adaptive_prune/baselines.py): the output contract of every baseline, and the
defining behaviour of each one pinned on small hand-built cases or against a brute force."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from _data import offsets, random_tokens, real_tokens

import adaptive_prune as ap
from adaptive_prune.methods import baselines as bl

BASELINES = [
    "random",
    "uniform",
    "divprune",
    "divprune_pooled",
    "dart",
    "cdpruner",
    "trimtokenator",
]


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


def check_valid(res, counts, B, q):
    idx = res.indices
    assert idx.dtype == torch.int64
    assert idx.numel() == B
    assert torch.unique(idx).numel() == B
    if B > 1:
        assert bool((idx[1:] > idx[:-1]).all())
    if B:
        assert 0 <= int(idx.min()) and int(idx.max()) < sum(counts)
    per = res.per_image.tolist()
    assert sum(per) == B
    for p, m in zip(per, counts):
        assert min(q, m) <= p <= m


# ------------------------------------------------------------------------------ registry
def test_every_baseline_is_registered_with_its_text_awareness():
    for name in BASELINES:
        assert name in ap.METHODS
    aware = {n for n in BASELINES if ap.METHODS[n].text_aware}
    assert aware == {"dart", "cdpruner", "trimtokenator"}


# ------------------------------------------------------------------------------ contract
@pytest.mark.parametrize("method", BASELINES)
@pytest.mark.parametrize(
    "counts,B,q",
    [
        ([12, 0, 9, 30], 10, 1),
        ([12, 0, 9, 30], 3, 1),  # budget == sum of minimums
        ([5, 5, 5, 5], 0, 0),
        ([7], 7, 1),  # keep everything
        ([1, 40, 2, 3], 7, 2),  # images smaller than the minimum, B == sum of minimums
        ([1, 40, 2, 3], 9, 2),
        ([40, 40, 1], 9, 0),
        ([64, 64, 64], 100, 3),
    ],
    ids=lambda v: str(v).replace(" ", ""),
)
@pytest.mark.parametrize("with_text", [False, True], ids=["notext", "text"])
def test_contract_on_random_tokens(method, counts, B, q, with_text):
    x, cu = random_tokens(counts, dim=24, seed=sum(counts) + B)
    t = torch.randn(3, 24, generator=torch.Generator().manual_seed(1)) if with_text else None
    res = ap.prune(x, cu, t, budget=B, method=method, min_per_image=q)
    check_valid(res, counts, B, q)
    again = ap.prune(x, cu, t, budget=B, method=method, min_per_image=q)
    assert torch.equal(res.indices, again.indices)  # deterministic


@pytest.mark.parametrize("method", BASELINES)
@pytest.mark.parametrize("keep", [0.05, 0.25, 0.6])
def test_contract_on_real_tokens(method, keep):
    x, cu, fx = real_tokens(max_images=6)
    counts = torch.diff(cu).tolist()
    t = torch.from_numpy(fx["query_tokens"].astype(np.float32))
    res = ap.prune(x, cu, t, keep_ratio=keep, method=method)
    check_valid(res, counts, int(math.floor(keep * x.shape[0] + 0.5)), 1)


@pytest.mark.parametrize("method", BASELINES)
def test_batch_equals_separate_calls(method):
    reqs = [[12, 0, 9], [30], [5, 5, 5, 5]]
    xs = [random_tokens(c, dim=16, seed=40 + r)[0] for r, c in enumerate(reqs)]
    texts = [torch.randn(3, 16), None, torch.randn(2, 16)]
    res = ap.prune_batch(
        torch.cat(xs),
        offsets([m for c in reqs for m in c]),
        offsets([len(c) for c in reqs]),
        texts,
        keep_ratio=[0.3, 0.5, 0.2],
        method=method,
    )
    row0 = 0
    for r, part in enumerate(res.split()):
        one = ap.prune(
            xs[r], offsets(reqs[r]), texts[r], keep_ratio=[0.3, 0.5, 0.2][r], method=method
        )
        assert torch.equal(part - row0, one.indices)
        row0 += xs[r].shape[0]


@pytest.mark.parametrize(
    "method,opts,err",
    [
        ("random", {"seed": -1}, ValueError),
        ("random", {"seed": 1.5}, ValueError),
        ("dart", {"pivots": 0}, ValueError),
        ("dart", {"norm": "l3"}, ValueError),
        ("dart", {"text_pivots": True}, ValueError),
        ("cdpruner", {"negate_relevance": 1}, ValueError),
        ("cdpruner", {"per_image": "yes"}, ValueError),
        ("trimtokenator", {"stage1_ratio": 0.0}, ValueError),
        ("trimtokenator", {"stage1_ratio": 1.5}, ValueError),
        ("uniform", {"seed": 0}, TypeError),
        ("divprune", {"lam": 3.0}, TypeError),
    ],
)
def test_bad_options_raise_clear_errors(method, opts, err):
    x, cu = random_tokens([10, 10], dim=8)
    name = next(iter(opts))
    with pytest.raises(err, match=name):
        ap.prune(x, cu, keep_ratio=0.5, method=method, **opts)


# ------------------------------------------------------------------------------ budgets
def test_proportional_budgets_equal_ratio_and_largest_remainder():
    # B/N = 10/40 = 1/4: 12 -> 3, 8 -> 2, 20 -> 5, exact
    assert bl.proportional_budgets([12, 8, 20], 10, 0) == [3, 2, 5]
    # shares 10/3 each: floors 3,3,3, one left goes to the lower index (ties)
    assert bl.proportional_budgets([10, 10, 10], 10, 0) == [4, 3, 3]
    # minimums bind: image 0's share 0.1 -> 2; others rescaled: 8 over 199 tokens
    b = bl.proportional_budgets([2, 99, 100], 10, 2)
    assert b == [2, 4, 4]
    assert bl.proportional_budgets([0, 5, 0], 3, 1) == [0, 3, 0]
    with pytest.raises(ValueError, match="budget"):
        bl.proportional_budgets([5, 5], 1, 1)


@pytest.mark.parametrize("seed", range(30))
def test_proportional_budgets_properties(seed):
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 50, size=int(rng.integers(1, 8))).tolist()
    N = sum(counts)
    q = int(rng.integers(0, 4))
    need = sum(min(q, m) for m in counts)
    if need > N:
        return
    B = int(rng.integers(need, N + 1))
    b = bl.proportional_budgets(counts, B, q)
    assert sum(b) == B
    for bk, m in zip(b, counts):
        assert min(q, m) <= bk <= m
    # the images above their minimum share one ratio r: |b_k - r m_k| < 1 for all of them,
    # i.e. the intervals ((b_k - 1) / m_k, (b_k + 1) / m_k) intersect
    free = [(bk, m) for bk, m in zip(b, counts) if m and bk > min(q, m)]
    if free:
        assert max((bk - 1) / m for bk, m in free) < min((bk + 1) / m for bk, m in free)


# ------------------------------------------------------------------------------ random
def test_random_is_seeded_and_honours_minimums():
    x, cu = random_tokens([50, 3, 50], dim=8)
    a = ap.prune(x, cu, budget=10, method="random", seed=7, min_per_image=2)
    b = ap.prune(x, cu, budget=10, method="random", seed=7, min_per_image=2)
    c = ap.prune(x, cu, budget=10, method="random", seed=8, min_per_image=2)
    assert torch.equal(a.indices, b.indices)
    assert not torch.equal(a.indices, c.indices)
    assert a.per_image[1] >= 2


# ------------------------------------------------------------------------------ uniform
def test_uniform_takes_bin_centres_per_image():
    x, cu = random_tokens([10, 20], dim=4)
    res = ap.prune(x, cu, budget=9, method="uniform", min_per_image=0)
    # budgets 3 and 6; centres floor((2i+1) m / 2b)
    assert res.indices.tolist() == [1, 5, 8] + [10 + v for v in (1, 5, 8, 11, 15, 18)]


# ------------------------------------------------------------------------------ DivPrune
def brute_divprune(x: torch.Tensor, k: int) -> list[int]:
    """The authors' formulation: full distance matrix, first pick = the token whose nearest
    neighbour is farthest, then re-reduce all picked rows every step (O(k^2 N))."""
    xh = unit(x.double())
    d = 1.0 - xh @ xh.T
    nn = d.clone()
    nn.fill_diagonal_(math.inf)
    order = [int(torch.argmax(nn.min(dim=1).values))]
    while len(order) < k:
        score = d[order].min(dim=0).values
        score[order] = -math.inf
        order.append(int(torch.argmax(score)))
    return order


def test_divprune_pick_order_on_a_hand_built_set():
    # unit vectors in the plane at these angles (degrees): a tight cluster near 0, an
    # isolated point at 100, one at 200 and one at 260
    ang = torch.tensor([0.0, 5.0, 10.0, 100.0, 200.0, 260.0]) * math.pi / 180
    x = torch.stack([torch.cos(ang), torch.sin(ang)], dim=1)
    order = bl._maxmin_order(unit(x), 6)
    # nearest-neighbour angles: 5, 5, 5, 90, 60, 60 -> first 100 deg (index 3); farthest from
    # it is 260 (160 deg); then 0 deg (100 deg from both picks, vs 95, 90 and 60)
    assert order[:3] == [3, 5, 0]
    assert order == brute_divprune(x, 6)


@pytest.mark.parametrize("seed", range(5))
def test_divprune_running_min_equals_the_authors_loop(seed):
    x, _ = random_tokens([120], dim=16, seed=seed)
    assert bl._divprune_rows(x, 40) == brute_divprune(x, 40)


def test_divprune_per_image_is_divprune_inside_each_image():
    counts = [30, 50]
    x, cu = random_tokens(counts, dim=12, seed=3)
    res = ap.prune(x, cu, budget=16, method="divprune", min_per_image=0)
    b = bl.proportional_budgets(counts, 16, 0)
    want = sorted(brute_divprune(x[:30], b[0]) + [30 + i for i in brute_divprune(x[30:], b[1])])
    assert res.indices.tolist() == want


def test_divprune_pooled_is_one_greedy_and_repairs_starved_images():
    counts = [40, 40, 2]
    x, cu = random_tokens(counts, dim=12, seed=5)
    x[80:] = x[0:2] + 1e-3  # image 2 duplicates two tokens of image 0: greedy skips it
    pure = ap.prune(x, cu, budget=10, method="divprune_pooled", min_per_image=0)
    assert pure.indices.tolist() == sorted(brute_divprune(x, 10))
    assert pure.per_image[2] == 0
    fixed = ap.prune(x, cu, budget=10, method="divprune_pooled", min_per_image=1)
    assert fixed.per_image[2] == 1
    # one (the latest) pick of another image made room
    assert len(set(pure.indices.tolist()) & set(fixed.indices.tolist())) == 9


def test_large_requests_use_row_by_row_similarity(monkeypatch):
    x, _ = random_tokens([90], dim=8, seed=9)
    xh = unit(x)
    full = (bl._divprune_rows(x, 30), bl.maxsum_rows(xh, 20))
    monkeypatch.setattr(bl, "_FULL_MATRIX_MAX", 10)
    assert bl._Similarity(xh).full is None
    assert (bl._divprune_rows(x, 30), bl.maxsum_rows(xh, 20)) == full


# ------------------------------------------------------------------------------ DART
def test_dart_keeps_the_tokens_least_similar_to_its_pivot():
    # token 0 has the largest norm (the pivot); cosines to it: 1 -> 0.9, 2 -> -0.8,
    # 3 -> 0.1, 4 -> -0.3, 5 -> 0.5
    cos = torch.tensor([0.9, -0.8, 0.1, -0.3, 0.5])
    sin = torch.sqrt(1 - cos**2)
    x = torch.cat([torch.tensor([[10.0, 0.0]]), torch.stack([cos, sin], 1)])
    assert sorted(bl.dart_rows(x, 3, None, n_pivots=1, norm="l2")) == [0, 2, 4]
    cu = torch.tensor([0, 6])
    res = ap.prune(x, cu, budget=3, method="dart", pivots=1, text_pivots=0, norm="l2")
    assert res.indices.tolist() == [0, 2, 4]


def test_dart_text_pivots_push_away_from_the_text():
    cos = torch.tensor([0.9, -0.8, 0.1, -0.3, 0.5])
    sin = torch.sqrt(1 - cos**2)
    x = torch.cat([torch.tensor([[10.0, 0.0]]), torch.stack([cos, sin], 1)])
    text = torch.tensor([[0.0, 1.0]])  # most similar to the tokens with large sin
    # two pivots (the image pivot, then the text): quota ceil(2/2)=1 each
    rows = bl.dart_rows(x, 3, text, n_pivots=1, norm="l2")
    assert rows[:2] == [0, 2]  # pivot, then least similar to it
    sims = (unit(x) @ text[0]).tolist()
    rest = [i for i in range(6) if i not in (0, 2)]
    assert rows[2] == min(rest, key=lambda i: (sims[i], i))


@pytest.mark.parametrize("b", range(1, 40, 3))
def test_dart_count_is_exact(b):
    x, _ = random_tokens([40], dim=8, seed=b)
    rows = bl.dart_rows(x, b, torch.randn(5, 8), n_pivots=4, norm="l1")
    assert len(rows) == len(set(rows)) == b


def test_dart_pivots_are_the_largest_l1_norms():
    x, _ = random_tokens([30], dim=8, seed=2)
    x[7] *= 10
    x[19] *= 9
    rows = bl.dart_rows(x, 5, None, n_pivots=2, norm="l1")
    assert rows[:2] == [7, 19]


# ------------------------------------------------------------------------------ CDPruner
def brute_greedy_logdet(L: torch.Tensor, k: int) -> list[int]:
    """Greedy MAP by brute force: add the item that maximises log det(L_S)."""
    S: list[int] = []
    for _ in range(k):
        best, arg = -math.inf, None
        for i in range(L.shape[0]):
            if i in S:
                continue
            idx = S + [i]
            v = torch.linalg.slogdet(L[idx][:, idx])
            val = v.logabsdet.item() if v.sign > 0 else -math.inf
            if val > best + 1e-12:
                best, arg = val, i
        S.append(arg)
    return S


@pytest.mark.parametrize("seed", range(4))
def test_dpp_greedy_map_matches_brute_force_logdet(seed):
    x, _ = random_tokens([25], dim=10, seed=seed)
    t = torch.randn(2, 10, generator=torch.Generator().manual_seed(seed))
    r = bl.cdpruner_relevance(x, t)
    xh = unit(x.double())
    L = r[:, None] * (xh @ xh.T) * r[None, :]
    order, gains = bl.dpp_greedy_map(xh, r, 8)
    assert order == brute_greedy_logdet(L, 8)
    # gains are the successive determinant ratios and never increase
    assert all(g1 >= g2 - 1e-12 for g1, g2 in zip(gains, gains[1:]))
    for t_ in range(1, 8):
        S = order[: t_ + 1]
        ratio = torch.det(L[S][:, S]) / torch.det(L[S[:-1]][:, S[:-1]])
        assert math.isclose(gains[t_], float(ratio), rel_tol=1e-6)


def test_dpp_first_pick_is_the_most_relevant_and_no_text_means_r_is_one():
    x, _ = random_tokens([20], dim=6, seed=1)
    t = x[13:14] * 2.0  # text = token 13's direction
    r = bl.cdpruner_relevance(x, t)
    assert int(torch.argmax(r)) == 13 and float(r.max()) == 1.0 and float(r.min()) == 0.0
    order, _ = bl.dpp_greedy_map(unit(x), r, 3)
    assert order[0] == 13
    assert torch.equal(bl.cdpruner_relevance(x, None), torch.ones(20, dtype=torch.float64))
    neg = bl.cdpruner_relevance(x, t, negate=True)
    assert int(torch.argmin(neg)) == 13


def test_cdpruner_is_rank_safe():
    # 60 tokens in 4 dimensions: the kernel has rank 4; ask for 30
    x, cu = random_tokens([60], dim=4, seed=11)
    order, gains = bl.dpp_greedy_map(unit(x), torch.ones(60, dtype=torch.float64), 30)
    assert len(order) == 4  # stops when the rank is exhausted
    res = ap.prune(x, cu, budget=30, method="cdpruner")
    assert res.indices.unique().numel() == 30
    pooled = ap.prune(x, cu, budget=30, method="cdpruner", per_image=False)
    assert pooled.indices.unique().numel() == 30
    # the fill continues by max-min distance from the DPP picks
    rows = bl.cdpruner_rows(unit(x), torch.ones(60, dtype=torch.float64), 30)
    assert rows[:4] == order
    assert rows == bl._continue_maxmin(unit(x), order, 30)


def test_cdpruner_per_image_uses_proportional_budgets_and_the_request_relevance():
    counts = [20, 40]
    x, cu = random_tokens(counts, dim=16, seed=4)
    t = torch.randn(2, 16, generator=torch.Generator().manual_seed(0))
    res = ap.prune(x, cu, t, budget=12, method="cdpruner", min_per_image=0)
    r = bl.cdpruner_relevance(x, t)
    xh = unit(x.float())
    want = bl.cdpruner_rows(xh[:20], r[:20], 4) + [
        20 + i for i in bl.cdpruner_rows(xh[20:], r[20:], 8)
    ]
    assert res.indices.tolist() == sorted(want)


# ------------------------------------------------------------------------------ TrimTokenator
def test_trimtokenator_alignment_is_negative_mean_squared_distance():
    x, _ = random_tokens([15], dim=5, seed=6)
    t = torch.randn(3, 5)
    want = -torch.cdist(x.double(), t.double()).pow(2).mean(1)
    assert torch.allclose(bl.trim_alignment(x.double(), t.double()), want)


def test_trimtokenator_filter_drops_the_least_aligned_tokens():
    x, cu = random_tokens([50], dim=8, seed=8)
    t = torch.randn(2, 8, generator=torch.Generator().manual_seed(2))
    alpha = bl.trim_alignment(x, t)
    worst = torch.argsort(alpha)[:10].tolist()  # outside the top 80%
    res = ap.prune(x, cu, t, budget=35, method="trimtokenator")
    assert not set(worst) & set(res.indices.tolist())
    # stage1_ratio=1: no filter, the same as without text
    a = ap.prune(x, cu, t, budget=20, method="trimtokenator", stage1_ratio=1.0)
    b = ap.prune(x, cu, None, budget=20, method="trimtokenator")
    assert torch.equal(a.indices, b.indices)


def brute_maxsum(x: torch.Tensor, k: int) -> list[int]:
    xh = unit(x.double())
    C = xh @ xh.T
    order = [int(torch.argmin(C.mean(1)))]
    while len(order) < k:
        score = (1 - C[:, order]).mean(1)
        score[order] = -math.inf
        order.append(int(torch.argmax(score)))
    return order


@pytest.mark.parametrize("seed", range(3))
def test_maxsum_greedy_matches_brute_force(seed):
    x, _ = random_tokens([60], dim=12, seed=seed)
    assert bl.maxsum_rows(unit(x.double()), 20) == brute_maxsum(x, 20)


# ------------------------------------------------------------------------------ all pairs
def test_the_baselines_differ_from_each_other_on_real_data():
    x, cu, fx = real_tokens(max_images=6)
    t = torch.from_numpy(fx["query_tokens"].astype(np.float32))
    sets = {
        m: set(ap.prune(x, cu, t, keep_ratio=0.1, method=m).indices.tolist()) for m in BASELINES
    }
    for a, b in itertools.combinations(BASELINES, 2):
        assert sets[a] != sets[b], (a, b)
