"""Public API: output contract, edge cases, bad input, determinism, dtypes, batches, module."""

from __future__ import annotations

import math
import re

import pytest
import torch
from _data import offsets, random_tokens, real_tokens

import adaptive_prune as ap


def check_valid(res, cu, B, q=1):
    idx = res.indices
    counts = (cu[1:] - cu[:-1]).tolist()
    assert idx.dtype == torch.int64 and idx.numel() == B
    assert torch.equal(idx, torch.sort(idx).values)
    assert idx.unique().numel() == B
    if B:
        assert 0 <= int(idx.min()) and int(idx.max()) < int(cu[-1])
    assert res.mask.dtype == torch.bool and int(res.mask.sum()) == B
    assert torch.equal(torch.nonzero(res.mask).flatten(), idx)
    assert sum(res.per_image.tolist()) == B
    for k, m in enumerate(counts):
        assert min(q, m) <= int(res.per_image[k]) <= m
        assert int(res.mask[cu[k] : cu[k + 1]].sum()) == int(res.per_image[k])


# ------------------------------------------------------------------------------ contract
@pytest.mark.parametrize("with_text", [False, True], ids=["no-text", "text"])
@pytest.mark.parametrize("keep", [0.05, 0.25, 0.5, 1.0])
def test_real_tokens_contract(with_text, keep):
    x, cu, fx = real_tokens(max_images=5)
    text = torch.from_numpy(fx["query_tokens"].astype("float32")) if with_text else None
    res = ap.prune(x, cu, text, keep_ratio=keep, return_diagnostics=True)
    B = math.floor(keep * x.shape[0] + 0.5)
    check_valid(res, cu, B)
    d = res.diagnostics
    assert d.budget == B and d.pool_size >= B and B <= d.candidates <= d.pool_size
    assert int(d.budgets.sum()) == d.pool_size
    assert ((d.budgets >= res.per_image) & (d.budgets <= cu[1:] - cu[:-1])).all()


def test_redundant_images_get_smaller_budgets_on_real_data():
    x, cu, fx = real_tokens()
    res = ap.prune(x, cu, keep_ratio=0.25)
    kinds = [str(k) for k in fx["kind"]]
    counts = (cu[1:] - cu[:-1]).float()
    share = (res.per_image.float() / counts).tolist()
    photos = [s for s, k in zip(share, kinds) if k == "photo"]
    flat = [s for s, k in zip(share, kinds) if k != "photo"]
    assert min(photos) > max(flat)  # content-aware: textures/documents keep the least


def test_query_moves_budget_to_the_queried_image():
    x, cu, fx = real_tokens()
    q = torch.from_numpy(fx["query_tokens"].astype("float32"))
    k = [str(s) for s in fx["names"]].index(str(fx["query_source"]))
    blind = ap.prune(x, cu, keep_ratio=0.1)
    aware = ap.prune(x, cu, q, keep_ratio=0.1)
    assert int(aware.per_image[k]) > int(blind.per_image[k])


def test_duplicate_images_share_a_budget():
    x, cu = random_tokens([40, 40], dim=16, seed=5)
    dup = torch.cat([x[:40], x[:40] + 1e-3 * torch.randn(40, 16), x[40:]])
    cu3 = offsets([40, 40, 40])
    res = ap.prune(dup, cu3, keep_ratio=0.2, return_diagnostics=True)
    d = res.diagnostics
    assert d.mult[0] > 1.9 and d.mult[1] > 1.9 and d.mult[2] < 1.1
    # the two copies together keep about what the distinct image keeps, not twice as much
    assert int(res.per_image[0] + res.per_image[1]) < 1.5 * int(res.per_image[2])


# ------------------------------------------------------------------------------ edge cases
@pytest.mark.parametrize(
    "counts",
    [[0, 5, 0, 3], [1, 1, 1], [1], [17], [0, 0, 4]],
    ids=["empty-images", "one-token-images", "single-token", "one-image", "leading-empty"],
)
@pytest.mark.parametrize("q", [0, 1])
def test_edge_shapes(counts, q):
    x, cu = random_tokens(counts, dim=8, seed=6)
    N = x.shape[0]
    need = sum(min(q, m) for m in counts)
    for B in sorted({need, max(need, N // 2), N}):
        check_valid(ap.prune(x, cu, budget=B, min_per_image=q), cu, B, q)
        check_valid(ap.prune(x, cu, torch.randn(3, 8), budget=B, min_per_image=q), cu, B, q)


def test_budget_equal_to_n_keeps_everything_and_zero_keeps_nothing():
    x, cu = random_tokens([4, 6], seed=7)
    assert ap.prune(x, cu, budget=10).indices.tolist() == list(range(10))
    assert ap.prune(x, cu, keep_ratio=1.0).indices.tolist() == list(range(10))
    assert ap.prune(x, cu, budget=0, min_per_image=0).indices.numel() == 0


def test_zero_norm_tokens_are_valid():
    x, cu = random_tokens([6, 6], dim=8, seed=8)
    x[[0, 3, 7]] = 0.0
    check_valid(ap.prune(x, cu, budget=5), cu, 5)
    check_valid(ap.prune(torch.zeros(12, 8), cu, torch.zeros(2, 8), budget=5), cu, 5)


def test_int32_offsets_and_text_of_zero_rows():
    x, cu = random_tokens([5, 9], seed=9)
    a = ap.prune(x, cu.to(torch.int32), torch.zeros(0, 32), budget=6)
    b = ap.prune(x, cu, budget=6)
    assert torch.equal(a.indices, b.indices)


# ------------------------------------------------------------------------------ determinism
@pytest.mark.parametrize("with_text", [False, True], ids=["no-text", "text"])
def test_deterministic(with_text):
    x, cu = random_tokens([30, 12, 25], seed=10)
    t = torch.randn(4, 32) if with_text else None
    a = ap.prune(x, cu, t, keep_ratio=0.3)
    b = ap.prune(x, cu, t, keep_ratio=0.3)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.per_image, b.per_image)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("with_text", [False, True], ids=["no-text", "text"])
def test_low_precision_inputs_agree_with_fp32(dtype, with_text):
    # computing in fp32 from fp16/bf16 inputs == computing on the same values given in fp32
    x, cu = random_tokens([20, 13, 31], dim=16, seed=11)
    x = x.to(dtype)
    t = torch.randn(3, 16).to(dtype) if with_text else None
    low = ap.prune(x, cu, t, keep_ratio=0.3)
    full = ap.prune(x.float(), cu, None if t is None else t.float(), keep_ratio=0.3)
    assert torch.equal(low.indices, full.indices)


# ------------------------------------------------------------------------------ batches
@pytest.mark.parametrize("method", ["adaptive", "adaptive-no-inter"])
def test_batch_equals_separate_calls(method):
    opts = {"inter_image": False} if method == "adaptive-no-inter" else {}
    reqs = [[12, 0, 9], [30], [5, 5, 5, 5], [7, 8]]
    xs = [random_tokens(c, dim=16, seed=20 + r)[0] for r, c in enumerate(reqs)]
    texts = [torch.randn(3, 16), None, torch.randn(2, 16), None]
    ratios = [0.3, 0.5, 1.0, 0.2]
    x = torch.cat(xs)
    cu = offsets([m for c in reqs for m in c])
    ro = offsets([len(c) for c in reqs])
    res = ap.prune_batch(x, cu, ro, texts, keep_ratio=ratios, **opts)
    parts = res.split()
    row0 = 0
    for r, c in enumerate(reqs):
        one = ap.prune(xs[r], offsets(c), texts[r], keep_ratio=ratios[r], **opts)
        assert torch.equal(parts[r] - row0, one.indices)
        row0 += xs[r].shape[0]
    assert res.per_request.tolist() == [p.numel() for p in parts]


def test_batch_packed_text_equals_list_text():
    x, cu = random_tokens([10, 10, 10], dim=8, seed=30)
    t0, t2 = torch.randn(2, 8), torch.randn(4, 8)
    ro = torch.tensor([0, 1, 2, 3])
    a = ap.prune_batch(x, cu, ro, [t0, None, t2], budget=[3, 4, 5])
    b = ap.prune_batch(x, cu, ro, torch.cat([t0, t2]), torch.tensor([0, 2, 2, 6]), budget=[3, 4, 5])
    assert torch.equal(a.indices, b.indices)


# ------------------------------------------------------------------------------ module
def test_module_drop_in():
    x, cu = random_tokens([10, 20], seed=31)
    pruner = ap.AdaptiveTokenPruner(keep_ratio=0.25, gamma=2.0)
    kept, res = pruner(x, cu)
    assert torch.equal(kept, x[res.indices])
    assert "keep_ratio=0.25" in repr(pruner) and "gamma=2.0" in repr(pruner)
    with pytest.raises(TypeError, match="unknown option"):
        ap.AdaptiveTokenPruner(keep_ratio=0.25, gamma_typo=2.0)
    with pytest.raises(ValueError, match="keep_ratio"):
        ap.AdaptiveTokenPruner(keep_ratio=1.5)


# ------------------------------------------------------------------------------ bad input
X, CU = random_tokens([4, 6], dim=8, seed=40)


@pytest.mark.parametrize("method", ["adaptive", "divprune", "cdpruner"])
@pytest.mark.parametrize("where", ["vision", "text[1]"])
def test_non_finite_inputs_are_named_for_every_method(method, where):
    """prune_batch queues its NaN/Inf checks and reads them in one go (the adaptive method with
    its own forced read): every method still names the tensor and its first bad row."""
    x, cu = random_tokens([4, 6, 5, 3], dim=8, seed=41)
    texts = [torch.randn(3, 8), torch.randn(4, 8)]
    if where == "vision":
        x[7, 2] = math.inf
    else:
        texts[1][2, 0] = -math.inf
    ro = torch.tensor([0, 2, 4])
    bad_row = 7 if where == "vision" else 2
    with pytest.raises(ValueError, match=rf"{re.escape(where)} contains NaN or Inf values "
                       rf"\(first bad row: {bad_row}\)"):  # fmt: skip
        ap.prune_batch(x, cu, ro, texts, keep_ratio=0.5, method=method)


def test_adaptive_reads_its_input_checks_with_the_composition_read(monkeypatch):
    """No read of its own for the finiteness flags on the adaptive path (a GPU sync each)."""
    from adaptive_prune import _checks

    def forbidden(self):
        raise AssertionError("check_now() called on the adaptive path")

    monkeypatch.setattr(_checks.FiniteChecks, "check_now", forbidden)
    x, cu = random_tokens([4, 6], dim=8, seed=42)
    res = ap.prune(x, cu, torch.randn(3, 8), keep_ratio=0.5)
    assert res.indices.numel() == 5
    with pytest.raises(AssertionError, match="check_now"):  # the baselines do read at once
        ap.prune(x, cu, keep_ratio=0.5, method="divprune")


@pytest.mark.parametrize(
    "call, err, match",
    [
        (lambda: ap.prune(X.numpy(), CU, keep_ratio=0.5), TypeError, "vision must be a torch"),
        (lambda: ap.prune(X[0], CU, keep_ratio=0.5), ValueError, "vision must be 2-D"),
        (lambda: ap.prune(X.long(), CU, keep_ratio=0.5), TypeError, "vision must be float"),
        (lambda: ap.prune(X.clone().fill_(math.nan), CU, keep_ratio=0.5), ValueError, "NaN"),
        (
            lambda: ap.prune(
                torch.where(torch.arange(10)[:, None] == 3, math.inf, X), CU, keep_ratio=0.5
            ),
            ValueError,
            "first bad row: 3",
        ),
        (lambda: ap.prune(X, CU.float(), keep_ratio=0.5), TypeError, "cu_seqlens must have dtype"),
        (lambda: ap.prune(X, [0, 4, 10], keep_ratio=0.5), TypeError, "cu_seqlens must be an int"),
        (
            lambda: ap.prune(X, torch.tensor([1, 4, 10]), keep_ratio=0.5),
            ValueError,
            "must start at 0",
        ),
        (
            lambda: ap.prune(X, torch.tensor([0, 6, 4, 10]), keep_ratio=0.5),
            ValueError,
            "non-decreasing",
        ),
        (lambda: ap.prune(X, torch.tensor([0, 4, 9]), keep_ratio=0.5), ValueError, "must end at N"),
        (lambda: ap.prune(X, torch.tensor([[0, 4, 10]]), keep_ratio=0.5), ValueError, "1-D"),
        (lambda: ap.prune(X, CU, torch.randn(2, 5), keep_ratio=0.5), ValueError, "width 5"),
        (
            lambda: ap.prune(X, CU, torch.full((2, 8), math.nan), keep_ratio=0.5),
            ValueError,
            "text contains NaN",
        ),
        (lambda: ap.prune(X, CU, keep_ratio=0.0), ValueError, r"keep_ratio must be in \(0, 1\]"),
        (lambda: ap.prune(X, CU, keep_ratio=1.01), ValueError, "keep_ratio must be in"),
        (lambda: ap.prune(X, CU, keep_ratio=math.nan), ValueError, "keep_ratio must be in"),
        (lambda: ap.prune(X, CU, keep_ratio="half"), TypeError, "keep_ratio must be a float"),
        (lambda: ap.prune(X, CU, budget=-1), ValueError, r"budget must be in \[0, N=10\]"),
        (lambda: ap.prune(X, CU, budget=11), ValueError, r"budget must be in \[0, N=10\]"),
        (lambda: ap.prune(X, CU, budget=2.5), TypeError, "budget must be an int"),
        (lambda: ap.prune(X, CU), ValueError, "exactly one of keep_ratio"),
        (lambda: ap.prune(X, CU, keep_ratio=0.5, budget=3), ValueError, "exactly one"),
        (lambda: ap.prune(X, CU, budget=1), ValueError, "below the sum of per-image minimums 2"),
        (
            lambda: ap.prune(X, CU, budget=3, min_per_image=2),
            ValueError,
            "budget 3 is below the sum of per-image minimums 4",
        ),
        (lambda: ap.prune(X, CU, budget=3, min_per_image=-1), ValueError, "min_per_image"),
        (lambda: ap.prune(X, CU, budget=3, method="nope"), ValueError, "unknown method='nope'"),
        (
            lambda: ap.prune(X, CU, budget=3, sigmaa=1.0),
            TypeError,
            r"unknown option\(s\) \['sigmaa'\]",
        ),
        (lambda: ap.prune(X, CU, budget=3, sigma=0), ValueError, "option sigma=0"),
        (lambda: ap.prune(X, CU, budget=3, intra="avg"), ValueError, "option intra='avg'"),
        (lambda: ap.prune(X, CU, budget=3, gamma=0.5), ValueError, "option gamma=0.5"),
        (lambda: ap.prune(X, CU, budget=3, tau=2.0), ValueError, "option tau=2.0"),
        (
            lambda: ap.prune_batch(X, CU, torch.tensor([0, 1]), keep_ratio=0.5),
            ValueError,
            "request_offsets must end at n",
        ),
        (
            lambda: ap.prune_batch(X, CU, torch.tensor([0, 1, 2]), keep_ratio=[0.5]),
            ValueError,
            "sequence of 2 values",
        ),
        (
            lambda: ap.prune_batch(X, CU, torch.tensor([0, 1, 2]), [None], keep_ratio=0.5),
            ValueError,
            "2 requests",
        ),
        (
            lambda: ap.prune_batch(X, CU, torch.tensor([0, 1, 2]), budget=[1, 0]),
            ValueError,
            "for request 1",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_bad_input_raises_clear_error(call, err, match):
    with pytest.raises(err, match=match):
        call()


def test_text_on_another_device_is_rejected():
    meta_text = torch.empty(2, 8, device="meta")
    with pytest.raises(ValueError, match="text is on meta but vision is on cpu"):
        ap.prune(X, CU, meta_text, keep_ratio=0.5)


def test_diversity_floor_one_ignores_alignment_and_zero_is_pure_pareto():
    x, cu = random_tokens([25, 18, 30], dim=16, seed=41)
    t = torch.randn(3, 16)
    blind = ap.prune(x, cu, keep_ratio=0.3, beta=0.0)
    floor1 = ap.prune(x, cu, t, keep_ratio=0.3, beta=0.0, diversity_floor=1.0)
    assert torch.equal(floor1.indices, blind.indices)  # every slot taken from the greedy order
    floor0 = ap.prune(x, cu, t, keep_ratio=0.3, beta=0.0, diversity_floor=0.0)
    half = ap.prune(x, cu, t, keep_ratio=0.3, beta=0.0)
    assert not torch.equal(floor0.indices, blind.indices)  # alignment matters without a floor
    # the default floor (0.5) keeps the reserved tokens (one per image) and the first
    # ceil(0.5 * (B - 3)) greedy picks, all of which the text-blind run keeps too
    B = blind.indices.numel()
    shared = set(blind.indices.tolist()) & set(half.indices.tolist())
    assert len(shared) >= 3 + math.ceil(0.5 * (B - 3))
    assert not torch.equal(half.indices, blind.indices)
    with pytest.raises(ValueError, match="diversity_floor=1.5"):
        ap.prune(x, cu, t, keep_ratio=0.3, diversity_floor=1.5)
