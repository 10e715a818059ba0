"""``min_per_image`` as one minimum per image: validation, the guarantee for every method, the
batched form, and that a uniform sequence means the same as the int."""

from __future__ import annotations

import pytest
import torch

import adaptive_prune as ap

METHODS = ["adaptive", "random", "uniform", "divprune", "divprune_pooled", "dart", "cdpruner",
           "trimtokenator"]  # fmt: skip


def _inputs(seed: int = 0, counts=(40, 24, 56, 30)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(sum(counts), 32, generator=g)
    cu = torch.tensor([0] + torch.cumsum(torch.tensor(counts), 0).tolist())
    return x, cu, list(counts)


@pytest.mark.parametrize("method", METHODS)
def test_each_image_keeps_its_own_minimum(method):
    x, cu, counts = _inputs()
    mins = [30, 0, 2, 5]  # image 0 is a "document": keep at least 30 of its 40 tokens
    res = ap.prune(x, cu, budget=45, method=method, min_per_image=mins)
    per = res.per_image.tolist()
    assert sum(per) == 45
    assert all(p >= min(q, m) for p, q, m in zip(per, mins, counts)), (per, mins)


@pytest.mark.parametrize("form", ["list", "tuple", "tensor"])
def test_sequence_forms_and_uniform_sequence_equals_int(form):
    x, cu, _ = _inputs(1)
    t = torch.randn(5, 32, generator=torch.Generator().manual_seed(3))
    seq = {"list": [2] * 4, "tuple": (2,) * 4, "tensor": torch.full((4,), 2)}[form]
    for text in (None, t):
        a = ap.prune(x, cu, text, keep_ratio=0.2, min_per_image=2).indices
        b = ap.prune(x, cu, text, keep_ratio=0.2, min_per_image=seq).indices
        assert torch.equal(a, b)


def test_protection_raises_the_protected_image():
    x, cu, counts = _inputs(2)
    base = ap.prune(x, cu, budget=30).per_image.tolist()
    prot = ap.prune(x, cu, budget=30, min_per_image=[1, 1, 20, 1]).per_image.tolist()
    assert prot[2] >= 20 and sum(prot) == 30
    assert prot[2] >= base[2]


def test_batched_minimums_are_per_image_over_the_batch():
    x, cu, counts = _inputs(3, counts=(20, 20, 30, 10))
    ro = torch.tensor([0, 2, 4])
    mins = [15, 0, 1, 8]
    res = ap.prune_batch(x, cu, ro, budget=[18, 12], min_per_image=mins)
    per = res.per_image.tolist()
    assert per[0] >= 15 and per[3] >= 8
    assert per[0] + per[1] == 18 and per[2] + per[3] == 12


@pytest.mark.parametrize(
    "value, err, match",
    [
        ([1, 1, 1], ValueError, "min_per_image has 3 entries but there are 4 images"),
        ([1, -1, 1, 1], ValueError, r"min_per_image\[1\] must be an int >= 0"),
        ([1, 1.5, 1, 1], ValueError, r"min_per_image\[1\]"),
        ([1, True, 1, 1], ValueError, r"min_per_image\[1\]"),
        (torch.ones(4), TypeError, "integer dtype"),
        (torch.ones(2, 2, dtype=torch.int64), TypeError, "1-D"),
        ("1111", TypeError, "min_per_image must be an int"),
        (-1, ValueError, "min_per_image must be an int >= 0"),
        ([40, 24, 0, 0], ValueError, "below the sum of per-image minimums 64"),
    ],
)
def test_bad_minimums_are_clear_errors(value, err, match):
    x, cu, _ = _inputs()
    with pytest.raises(err, match=match):
        ap.prune(x, cu, budget=50, min_per_image=value)
