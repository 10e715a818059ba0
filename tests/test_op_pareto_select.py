"""``adaptive_prune::pareto_select`` on every backend against a peeling brute force.

The brute force finds the fronts by repeatedly removing the non-dominated set (not the
reference's domination counts) and cuts the overflowing front by NSGA-II crowding distance.
Every backend compares the same float values with the same rules, so the masks are identical
on tie-free and tie-heavy cases alike (equal values, identical points).
"""

from __future__ import annotations

import math

import pytest
import torch
from _backends import BACKENDS, call, opcheck
from _inputs import pareto_cases
from torch._subclasses.fake_tensor import FakeTensorMode

from adaptive_prune import ops
from adaptive_prune.ops import reference as ref

pytestmark = pytest.mark.usefixtures("poison")
OP = "pareto_select"
CASES = {c.id: c for c in pareto_cases()}


def dominates(f1, f2, i, j) -> bool:
    return f1[i] >= f1[j] and f2[i] >= f2[j] and (f1[i] > f1[j] or f2[i] > f2[j])


def peel_fronts(f1, f2):
    """Front number of every point: repeatedly remove the non-dominated set."""
    left, out, level = set(range(len(f1))), {}, 0
    while left:
        nd = {i for i in left if not any(dominates(f1, f2, j, i) for j in left)}
        for i in nd:
            out[i] = level
        left -= nd
        level += 1
    return [out[i] for i in range(len(f1))]


def brute_pareto(f1, f2, k) -> list[int]:
    """Kept positions: whole fronts while they fit, then the largest crowding distances."""
    if not f1 or k <= 0:
        return []
    front = peel_fronts(f1, f2)
    keep: list[int] = []
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


def brute_mask(c) -> torch.Tensor:
    so = c.offsets.tolist()
    f1, f2 = c.gains.double().tolist(), c.align.double().tolist()
    mask = torch.zeros(len(f1), dtype=torch.bool)
    for s in range(len(so) - 1):
        a, e = so[s], so[s + 1]
        for i in brute_pareto(f1[a:e], f2[a:e], c.k[s]):
            mask[a + i] = True
    return mask


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_brute_force(backend, case):
    c = CASES[case]
    (got,) = call(backend, OP, (c.gains, c.align, c.offsets, c.k), keep_cpu=(2,))
    assert got.dtype == torch.bool and got.shape == c.gains.shape
    assert bool((got.view(torch.uint8) <= 1).all())  # a valid bool in every byte
    assert torch.equal(got, brute_mask(c))
    so = c.offsets.tolist()
    f1, f2 = c.gains.tolist(), c.align.tolist()
    for s in range(len(c.k)):  # exactly min(k, K_s); whoever dominates a kept point is kept
        a, e = so[s], so[s + 1]
        assert int(got[a:e].sum()) == min(c.k[s], e - a)
        for i in range(a, e):
            for j in range(a, e):
                if got[i] and dominates(f1, f2, j, i):
                    assert got[j], (s, i, j)


@pytest.mark.parametrize("backend", BACKENDS)
def test_segments_are_independent(backend):
    g = torch.Generator().manual_seed(5)
    f1, f2 = torch.rand(12, generator=g), torch.rand(12, generator=g)

    def run(a, b, off, k):
        return call(backend, OP, (a, b, torch.tensor(off), k), keep_cpu=(2,))[0]

    both = run(f1, f2, [0, 5, 12], [2, 3])
    assert (
        both.tolist()
        == run(f1[:5], f2[:5], [0, 5], [2]).tolist() + run(f1[5:], f2[5:], [0, 7], [3]).tolist()
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_and_output_dtype_shape(backend):
    g = torch.Generator().manual_seed(6)
    samples = [
        (torch.rand(7, generator=g), torch.rand(7, generator=g), torch.tensor([0, 3, 7]), [2, 2]),
        (torch.rand(5, generator=g), torch.zeros(5), torch.tensor([0, 0, 5]), [0, 5]),
    ]
    opcheck(backend, OP, samples)
    for args in samples:
        (got,) = call(backend, OP, args, keep_cpu=(2,))
        with FakeTensorMode() as mode:
            fake = ops.ALL_OPS[OP](*[mode.from_tensor(a) if isinstance(a, torch.Tensor) else a
                                     for a in args])  # fmt: skip
        assert got.dtype == fake.dtype == torch.bool and got.shape == fake.shape


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k", [1, 4, 9, 17])
def test_reference_matches_brute_force_fp64(seed, k):
    g = torch.Generator().manual_seed(seed)
    K = 20
    f1 = torch.rand(K, generator=g, dtype=torch.float64).sort(descending=True).values
    f2 = torch.rand(K, generator=g, dtype=torch.float64)
    if seed % 2:  # coarse values create equal points and ties
        f1, f2 = (f1 * 4).round() / 4, (f2 * 4).round() / 4
    keep = ref.pareto_select(f1, f2, torch.tensor([0, K]), [k])
    assert torch.nonzero(keep).flatten().tolist() == brute_pareto(f1.tolist(), f2.tolist(), k)
