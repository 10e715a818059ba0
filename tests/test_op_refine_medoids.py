"""``adaptive_prune::refine_medoids`` on every backend against a brute force in float64.

The brute force runs the spec's steps (docs/METHOD.md, stage 3) as plain loops over clusters,
in float64, and records the smallest margin of every decision it takes: the gap between a
position's nearest and second-nearest kept position and each radius against ``R - TIE``
(cosine scale), each candidate's cost against the tie band and the cheapest cost against the
centre's (per cluster member: a cost sums its members' distances).

- Tie-free cases (every margin above :data:`MARGIN`, every cost margin above
  :data:`COST_MARGIN`): every backend returns exactly the brute force's keep mask, after one or
  several steps. A cost exactly at the band's distance from another (the two members of a
  two-token cluster) is not a tie: the band decides it, far above rounding.
- Tie-heavy cases (duplicated tokens, two-token clusters): the outputs must be valid: every
  image keeps its count, fixed (kept, not movable) positions stay, each group's k-centre
  radius and sum of nearest-kept distances do not rise.

Inputs: tokens in blobs (so that medoid moves happen), a random pool over them split into
groups (with an empty group), and as the kept set of every group a max-min chain from its first
position, as the method's stage 2 gives.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from _backends import BACKENDS, call, opcheck, require
from torch._subclasses.fake_tensor import FakeTensorMode

from adaptive_prune import ops
from adaptive_prune.ops.refine_medoids import TIE

pytestmark = pytest.mark.usefixtures("poison")
OP = "refine_medoids"
EPS = 1e-6
# a decision is tie-free when it clears its threshold by more than this (float64): cosines,
# and costs per cluster member (fp32 rounds a cost of n members by about n * 1e-7)
MARGIN = 1e-4
COST_MARGIN = 5e-6


def unit(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return x / x.norm(dim=1, keepdim=True).clamp_min(EPS)


def brute_step(xh, img, keep, movable) -> tuple[list[bool], float, float]:
    """One step on one group: ``(new keep, smallest cosine margin, smallest cost margin per
    member)``."""
    m = len(keep)
    S = [i for i in range(m) if keep[i]]
    if not S or len(S) == m:
        return list(keep), math.inf, math.inf
    margin = cmargin = math.inf
    assign, dist = list(range(m)), [0.0] * m
    for i in range(m):
        if keep[i]:
            continue
        sims = sorted(((float(xh[i] @ xh[j]), -j) for j in S), reverse=True)
        if len(sims) > 1:
            margin = min(margin, sims[0][0] - sims[1][0])
        assign[i], dist[i] = -sims[0][1], 1.0 - sims[0][0]
    R = max(dist)
    new = list(keep)
    for j in S:
        if not movable[j]:
            continue
        members = [i for i in range(m) if assign[i] == j]
        tot, n = xh[members].sum(0), len(members)
        cost = {c: n - float(xh[c] @ tot) for c in members}
        cand = [c for c in members if img[c] == img[j] and (c == j or not keep[c])]
        band = TIE * n
        low = min(cost[c] for c in cand)
        for c in cand:
            cmargin = min(cmargin, abs(cost[c] - (low + band)) / n)
        best = min(c for c in cand if cost[c] <= low + band)
        if best == j:
            continue
        cmargin = min(cmargin, abs(low - (cost[j] - band)) / n)
        if low < cost[j] - band:
            rad = max(0.0 if i == best else 1.0 - float(xh[i] @ xh[best]) for i in members)
            margin = min(margin, abs(rad - (R - TIE)))
            if rad <= R - TIE:
                new[j], new[best] = False, True
    return new, margin, cmargin


def brute_refine(x, pool, go, image, keep, movable, steps):
    """``steps`` steps of every group (a step without a move ends the group's refinement):
    ``(keep [K] bool, smallest cosine margin, smallest cost margin per member)``."""
    out, margin, cmargin = keep.tolist(), math.inf, math.inf
    mov = movable.tolist()
    for a, e in zip(go, go[1:]):
        xh = unit(x[pool[a:e]])
        img = image[a:e].tolist()
        k = out[a:e]
        for _ in range(steps):
            nk, mg, cg = brute_step(xh, img, k, mov[a:e])
            margin, cmargin = min(margin, mg), min(cmargin, cg)
            if nk == k:
                break
            for i in range(e - a):
                mov[a + i] = mov[a + i] or (nk[i] and not k[i])
            k = nk
        out[a:e] = k
    return torch.tensor(out, dtype=torch.bool), margin, cmargin


def maxmin_chain(xh: torch.Tensor, picks: int) -> list[int]:
    acc = torch.full((xh.shape[0],), math.inf, dtype=xh.dtype)
    order = []
    for _ in range(picks):
        j = int(torch.argmax(acc))
        order.append(j)
        acc = torch.minimum(acc, 1.0 - xh @ xh[j])
        acc[order] = -math.inf
    return order


def make_case(seed, counts, group_sizes, dim=16, blobs=6, noise=0.35, dup=False, frac=0.25):
    """``(vision [N, D] float64, pool, group_offsets, image, keep, movable)``.

    Tokens: ``blobs`` random directions plus Gaussian noise (``dup``: every token repeated
    once, so nearest-centre and cost ties abound). The pool is a random permutation of all
    tokens, cut into groups of ``group_sizes``; each group keeps a max-min chain of about
    ``frac`` of its positions; 80 % of the kept positions are movable."""
    g = torch.Generator().manual_seed(seed)
    n = sum(counts)
    base = n // 2 if dup else n
    centres = torch.randn(blobs, dim, generator=g, dtype=torch.float64)
    x = centres[torch.randint(0, blobs, (base,), generator=g)]
    x = x + noise * torch.randn(base, dim, generator=g, dtype=torch.float64)
    if dup:
        x = torch.cat([x, x[: n - base]])
    img_of = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    K = sum(group_sizes)
    pool = torch.randperm(n, generator=g)[:K]
    go = [0]
    for s in group_sizes:
        go.append(go[-1] + s)
    keep = torch.zeros(K, dtype=torch.bool)
    for a, e in zip(go, go[1:]):
        if e > a:
            picks = max(1, round(frac * (e - a)))
            keep[torch.tensor(maxmin_chain(unit(x[pool[a:e]]), picks)) + a] = True
    movable = keep & (torch.rand(K, generator=g) < 0.8)
    return x, pool, torch.tensor(go), img_of[pool], keep, movable


# tie-free: seeds whose every decision clears MARGIN (checked by test_tie_free_cases_are_tie_free)
TIE_FREE = {
    "one-group": dict(seed=2, counts=[40], group_sizes=[40]),
    "groups-empty": dict(seed=2, counts=[30, 25, 20], group_sizes=[35, 0, 40]),
    "images-in-group": dict(seed=2, counts=[9, 31, 24], group_sizes=[64]),
    "wide": dict(seed=2, counts=[50, 46], group_sizes=[60, 36], dim=80),
}
TIE_HEAVY = {
    "dup-tokens": dict(seed=1, counts=[30, 30], group_sizes=[40, 20], dup=True),
    "two-token-clusters": dict(seed=4, counts=[16, 16], group_sizes=[32], frac=0.5, dup=True),
    "one-direction": dict(seed=6, counts=[20], group_sizes=[20], blobs=1, noise=0.0),
}


@functools.cache
def case(name: str):
    return make_case(**{**TIE_FREE, **TIE_HEAVY}[name])


def args_of(name: str, steps: int, dtype=torch.float32):
    x, pool, go, image, keep, movable = case(name)
    return (x.to(dtype), pool, go, image, keep, movable, steps, EPS)


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("name", TIE_FREE)
def test_tie_free_cases_are_tie_free(name, steps):
    x, pool, go, image, keep, movable = case(name)
    got, margin, cmargin = brute_refine(x.float().double(), pool, go.tolist(), image, keep,
                                        movable, steps)  # fmt: skip
    assert margin > MARGIN, f"{name}: a decision lies within {margin:.2e} of its threshold"
    assert cmargin > COST_MARGIN, f"{name}: a cost lies within {cmargin:.2e} of its threshold"
    assert not torch.equal(got, keep), f"{name}: nothing moves, the case tests nothing"


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("name", TIE_FREE)
@pytest.mark.parametrize("backend", BACKENDS)
def test_tie_free_matches_brute_force(backend, name, steps):
    args = args_of(name, steps)
    (got,) = call(backend, OP, args, keep_cpu=(2,))
    want = brute_refine(args[0].double(), *args[1:6], steps)[0]
    assert got.dtype == torch.bool and torch.equal(got, want)


@pytest.mark.parametrize("proj_dim", [0, 2, 8])
def test_cpp_projection_is_exact(proj_dim):
    """The C++ nearest-centre search gives the same result at every projection size."""
    args = args_of("wide", 3)
    want = brute_refine(args[0].double(), *args[1:6], 3)[0]
    (got,) = call("cpp", OP, args, keep_cpu=(2,), proj_dim=proj_dim)
    assert torch.equal(got, want)
    for threads in (1, 3):
        (again,) = call("cpp", OP, args, keep_cpu=(2,), proj_dim=proj_dim, num_threads=threads)
        assert torch.equal(again, got)


def kcentre_and_sum(xh, keep):
    d = (1.0 - (xh @ xh[keep].T).max(dim=1).values).clamp_min(0)
    return float(d.max()), float(d.sum())


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("name", TIE_HEAVY)
@pytest.mark.parametrize("backend", BACKENDS)
def test_tie_heavy_outputs_are_valid(backend, name, steps):
    args = args_of(name, steps)
    x, pool, go, image, keep, movable = args[:6]
    (got,) = call(backend, OP, args, keep_cpu=(2,))
    assert got.dtype == torch.bool and got.shape == keep.shape
    assert torch.equal(got[keep & ~movable], keep[keep & ~movable])  # fixed ones stay
    go = go.tolist()
    for a, e in zip(go, go[1:]):
        if e == a:
            continue
        for k in image[a:e].unique().tolist():  # every image keeps its count
            m = image[a:e] == k
            assert int((got[a:e] & m).sum()) == int((keep[a:e] & m).sum())
        xh = unit(x[pool[a:e]])
        r0, s0 = kcentre_and_sum(xh, keep[a:e])
        r1, s1 = kcentre_and_sum(xh, got[a:e])
        assert r1 <= r0 + 1e-6 and s1 <= s0 + 1e-5 * (e - a)


@pytest.mark.parametrize("backend", BACKENDS)
def test_steps_zero_and_empty_groups_change_nothing(backend):
    args = args_of("groups-empty", 0)
    (got,) = call(backend, OP, args, keep_cpu=(2,))
    assert torch.equal(got, args[4])
    # a group with no kept position, and one with every position kept
    x, pool, go, image, keep, movable, _, eps = args_of("groups-empty", 2)
    keep = keep.clone()
    keep[:35] = False
    keep[35:] = True
    (got,) = call(backend, OP, (x, pool, go, image, keep, keep, 2, eps), keep_cpu=(2,))
    assert torch.equal(got, keep)
    # an empty pool
    e = torch.zeros(0, dtype=torch.int64)
    b = torch.zeros(0, dtype=torch.bool)
    (got,) = call(backend, OP, (x, e, torch.tensor([0]), e, b, b, 1, eps), keep_cpu=(2,))
    assert got.shape == (0,) and got.dtype == torch.bool


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_and_fake(backend):
    samples = [args_of("groups-empty", 1), args_of("images-in-group", 2, torch.float16)]
    opcheck(backend, OP, samples)
    for args in samples:
        (got,) = call(backend, OP, args, keep_cpu=(2,))
        with FakeTensorMode() as mode:
            fake = ops.ALL_OPS[OP](
                *[mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
            )
        assert got.dtype == fake.dtype == torch.bool and got.shape == fake.shape


def test_cpp_matches_reference_on_real_tokens():
    """Real tokens (many near-duplicates, where the projection bound does the work): the C++
    op gives the reference's keep mask at every projection size and thread count."""
    require("cpp")
    from _data import real_tokens

    import adaptive_prune as ap

    x, cu, _ = real_tokens(4)
    res = ap.prune(x, cu, keep_ratio=0.25, refine=0)
    K = x.shape[0]
    pool = torch.arange(K)
    keep = torch.zeros(K, dtype=torch.bool)
    keep[res.indices] = True
    image = torch.repeat_interleave(torch.arange(len(cu) - 1), cu.diff())
    args = (x, pool, torch.tensor([0, K]), image, keep, keep.clone(), 2, EPS)
    with ap.backend("reference"):
        want = ops.ALL_OPS[OP](*args)
    assert not torch.equal(want, keep)
    for proj_dim in (-1, 0, 16):
        (got,) = call("cpp", OP, args, keep_cpu=(2,), proj_dim=proj_dim, num_threads=2)
        assert torch.equal(got, want), proj_dim
