"""The vLLM plugin's pure logic (no vLLM needed): options, counts, pixel signals, selection,
positions. Checked against brute force and against adaptive_prune.prune itself."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import adaptive_prune
from adaptive_prune.integrations.vllm import allocation as al
from adaptive_prune.integrations.vllm import selection as sel


# ------------------------------------------------------------------------------------ options
@pytest.mark.parametrize(
    "kw, name",
    [
        ({"keep_ratio": 0.0}, "keep_ratio"),
        ({"keep_ratio": 1.5}, "keep_ratio"),
        ({"keep_ratio": float("nan")}, "keep_ratio"),
        ({"keep_ratio": "abc"}, "keep_ratio"),
        ({"keep_ratio": True}, "keep_ratio"),
        ({"prune_mode": "magic"}, "prune_mode"),
        ({"min_per_image": 0}, "min_per_image"),
        ({"min_per_image": 1.5}, "min_per_image"),
        ({"min_per_image": [1, 0]}, r"min_per_image\[1\]"),
        ({"min_per_image": [1, "x"]}, r"min_per_image\[1\]"),
        ({"min_per_image": [[1]]}, r"min_per_image\[0\]"),
        ({"min_per_image": {"a": 1}}, "min_per_image"),
        ({"text_aware": "maybe"}, "text_aware"),
    ],
)
def test_bad_options_name_the_argument(kw, name):
    with pytest.raises(ValueError, match=name):
        al.check_options(**kw)


def test_options_request_over_environment():
    env = {"ADAPTIVE_PRUNE_VLLM_KEEP_RATIO": "0.5", "ADAPTIVE_PRUNE_VLLM_MODE": "adaptive"}
    assert al.resolve_options({}, env) == al.PruneOptions(0.5, "adaptive", 1, True)
    got = al.resolve_options({"keep_ratio": 0.25, "text_aware": False}, env)
    assert got == al.PruneOptions(0.25, "adaptive", 1, False)
    assert al.PruneOptions().prune_mode == "proportional"
    assert al.resolve_options(None, {}) == al.PruneOptions()
    with pytest.raises(ValueError, match="keep_ratio"):
        al.resolve_options({}, {"ADAPTIVE_PRUNE_VLLM_KEEP_RATIO": "2"})


@pytest.mark.parametrize("n, kr", [(130, 0.3), (7, 0.5), (64, 0.25), (5, 0.1), (1000, 0.333)])
def test_total_budget_matches_prune(n, kr):
    want = int(math.floor(kr * n + 0.5))
    assert al.total_budget(n, kr) == want
    res = adaptive_prune.prune(torch.randn(n, 8), torch.tensor([0, n]), keep_ratio=kr)
    assert res.indices.numel() == want


# ------------------------------------------------------------------------------------ counts
def _brute_force_counts(sizes, total, q, weights):
    """Reference: the water-filled real shares, then every integer rounding that sums to total
    and respects [min, m_k]; pick the one closest to the shares (L1), ties lexicographic by
    preferring extra tokens on lower indices. ``q``: one minimum, or one per item; ``weights``
    None: the sizes."""
    qs = list(q) if isinstance(q, (list, tuple)) else [q] * len(sizes)
    weights = [float(m) for m in sizes] if weights is None else weights
    base = [min(a, m) for a, m in zip(qs, sizes)]
    share = [float(b) for b in base]
    free = [k for k in range(len(sizes)) if sizes[k] > base[k]]
    left = total - sum(base)
    while free and left > 1e-12:
        wsum = sum(weights[k] for k in free) or float(len(free))
        ws = {k: (weights[k] if sum(weights[j] for j in free) > 0 else 1.0) for k in free}
        add = {k: left * ws[k] / wsum for k in free}
        over = [k for k in free if share[k] + add[k] >= sizes[k]]
        if not over:
            for k in free:
                share[k] += add[k]
            break
        for k in over:
            left -= sizes[k] - share[k]
            share[k] = float(sizes[k])
        free = [k for k in free if k not in over]
    best = None
    ranges = [range(base[k], sizes[k] + 1) for k in range(len(sizes))]
    for c in itertools.product(*ranges):
        if sum(c) != total or any(c[k] < math.floor(share[k] + 1e-9) for k in range(len(c))):
            continue
        key = (round(sum(abs(c[k] - share[k]) for k in range(len(c))), 9), [-x for x in c])
        if best is None or key < best[0]:
            best = (key, list(c))
    return best[1], share


@pytest.mark.parametrize("seed", range(40))
def test_allocate_counts_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 5, (1,), generator=g))
    sizes = torch.randint(0, 9, (n,), generator=g).tolist()
    q = int(torch.randint(1, 3, (1,), generator=g))
    lo = sum(min(q, m) for m in sizes)
    if lo > sum(sizes):
        return
    total = int(torch.randint(lo, sum(sizes) + 1, (1,), generator=g))
    weights = (torch.rand(n, generator=g) * torch.tensor(sizes).float()).tolist()
    got = al.allocate_counts(sizes, total, q, weights)
    want, share = _brute_force_counts(sizes, total, q, weights)
    assert sum(got) == total
    assert all(min(q, m) <= c <= m for c, m in zip(got, sizes))
    assert all(abs(c - s) < 1 for c, s in zip(got, share)), (got, share)
    assert got == want, (sizes, total, q, weights, share)


def test_proportional_counts_follow_sizes():
    assert al.allocate_counts([24, 64, 18, 24], 39, 1) == [8, 18, 6, 7]
    assert al.allocate_counts([10, 10], 5, 1) == [3, 2]  # tie: the lower index first
    assert al.allocate_counts([4, 100], 104, 1) == [4, 100]


def test_counts_infeasible_minimum_is_an_error():
    with pytest.raises(ValueError, match="min_per_image=2"):
        al.allocate_counts([10, 10, 10], 5, 2)
    with pytest.raises(ValueError, match=r"min_per_image entries \[1, 5, 1\]"):
        al.allocate_counts([10, 10, 10], 6, [1, 5, 1])


def test_per_item_minimums():
    """A per-request list: one minimum per item (images, then videos), validated and digested;
    the protected item keeps at least its minimum and the counts are the water-filling of the
    rest, as with one minimum (the brute force of every rounding agrees)."""
    opts = al.resolve_options({"min_per_image": [1, 30, 1]}, {})
    assert opts.min_per_image == (1, 30, 1)
    assert (
        "min_per_image=(1, 30, 1)" in opts.digest()
        and opts.digest() != al.PruneOptions(0.5).digest()
    )
    assert al.check_options(min_per_image=["2", 3]).min_per_image == (2, 3)
    sizes, total = [24, 64, 18], 27
    plain = al.allocate_counts(sizes, total, 1)
    got = al.allocate_counts(sizes, total, [1, 1, 12])
    assert sum(got) == total and got[2] >= 12 > plain[2], (plain, got)
    want, _ = _brute_force_counts(sizes, total, [1, 1, 12], None)
    assert got == want
    assert al.allocate_counts(sizes, total, [2, 2, 2]) == al.allocate_counts(sizes, total, 2)
    with pytest.raises(ValueError, match="min_per_image has 2 entries but the request has 3"):
        al.allocate_counts(sizes, total, [1, 1])
    with pytest.raises(ValueError, match="min_per_image has 2 entries but the request has 3"):
        al.item_minimums((1, 1), 3)


# ------------------------------------------------------------------------------------ signals
def _patches(img: torch.Tensor, p=14, tp=2, m=2):
    """Forward Qwen-VL patch flattening of one [C, H, W] image (the processor's layout)."""
    c, h, w = img.shape
    gh, gw = h // p, w // p
    x = img[None].repeat(tp, 1, 1, 1)  # (tp, c, H, W)
    x = x.reshape(1, tp, c, gh // m, m, p, gw // m, m, p)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # t, hb, wb, mh, mw, c, tp, ph, pw
    return x.reshape(gh * gw, c * tp * p * p), [1, gh, gw]


def test_frames_from_patches_inverts_the_processor_layout():
    img = torch.randn(3, 56, 84)
    pv, grid = _patches(img)
    back = al.frames_from_patches(pv, grid, 14, 2, 2)
    assert back.shape == (1, 3, 56, 84)
    assert torch.equal(back[0], img)
    half = al.frames_from_patches(pv, grid, 14, 2, 2, stride=2)
    assert torch.equal(half[0], img[:, ::2, ::2])


def test_region_diversity_orders_flat_below_structured():
    flat = torch.zeros(3, 84, 84)
    stripes = torch.zeros(3, 84, 84)
    stripes[:, :, ::8] = 1.0
    half = torch.zeros(3, 84, 84)
    half[:, :42] = 1.0
    half[0, 42:, 42:] = -1.0
    assert al.region_diversity(flat) == 0.0
    assert al.region_diversity(half) > al.region_diversity(stripes) >= 0.0


def test_adaptive_weights_share_duplicates():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 56, 56, generator=g), torch.randn(3, 56, 56, generator=g)
    ta, tb = al.thumbnail(a), al.thumbnail(b)
    w = al.adaptive_weights([16, 16, 16], [1.0, 1.0, 1.0], [ta, ta, tb])
    # two copies of one image together weigh what the single distinct image weighs
    assert w[0] == pytest.approx(w[1])
    assert w[0] + w[1] == pytest.approx(w[2], rel=0.02)
    # diversity scales the weight; the floor keeps a flat image from getting nothing
    w = al.adaptive_weights([16, 16], [0.0, 2.0], [ta, tb])
    assert w[0] == pytest.approx(al.DIVERSITY_FLOOR * 16, rel=0.02)


# ------------------------------------------------------------------------------------ selection
def test_select_rows_image_is_prune_on_one_image():
    g = torch.Generator().manual_seed(1)
    rows, text = torch.randn(48, 32, generator=g), torch.randn(5, 32, generator=g)
    for t in (None, text):
        got = sel.select_rows(rows, 11, t)
        want = adaptive_prune.prune(rows, torch.tensor([0, 48]), t, budget=11).indices
        assert torch.equal(got, want)
        assert got.numel() == 11 and torch.all(got[1:] > got[:-1])
    assert not torch.equal(sel.select_rows(rows, 11, text), sel.select_rows(rows, 11, None))
    assert torch.equal(sel.select_rows(rows, 48, text), torch.arange(48))


def test_select_rows_video_splits_freely_across_frames():
    g = torch.Generator().manual_seed(2)
    frame = torch.randn(12, 16, generator=g)
    rows = torch.cat([frame, frame + 1e-3 * torch.randn(12, 16, generator=g), torch.randn(12, 16)])
    got = sel.select_rows(rows, 9, None, [12, 12, 12])
    want = adaptive_prune.prune(rows, torch.tensor([0, 12, 24, 36]), budget=9, min_per_image=0)
    assert torch.equal(got, want.indices)
    per_frame = torch.bincount(got // 12, minlength=3)
    assert per_frame.sum() == 9 and per_frame[1] < per_frame[2]  # the near-copy frame gets less


def test_select_rows_bad_count():
    with pytest.raises(ValueError, match="cannot keep"):
        sel.select_rows(torch.randn(4, 8), 5)
    with pytest.raises(ValueError, match="frame sizes"):
        sel.select_rows(torch.randn(4, 8), 2, None, [3, 3])


# ------------------------------------------------------------------------------------ positions
def _stock_positions(grid, merge, t_scale):
    """Brute force: one loop per token in raster (frame, row, column) order."""
    t, h, w = grid
    out = []
    for i in range(t):
        for y in range(h // merge):
            for x in range(w // merge):
                out.append((int(i * t_scale), y, x))
    return torch.tensor(out).T


@pytest.mark.parametrize(
    "grid, t_scale", [([1, 8, 12], 1.0), ([1, 16, 4], 1.0), ([3, 4, 6], 2.0), ([4, 2, 2], 0.7)]
)
def test_item_positions_brute_force(grid, t_scale):
    got = sel.item_positions(grid, 2, t_scale)
    assert torch.equal(got, _stock_positions(grid, 2, t_scale))
