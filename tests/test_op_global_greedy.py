"""``adaptive_prune::global_greedy`` on every backend against a brute-force max-min greedy.

The brute force recomputes every pool candidate's min distance to the whole picked set at
every step (float64) and picks by the spec's band rule (the lowest pool position within
``PICK_TIE`` of the best; ``+inf`` scores: the lowest ``+inf`` position). Tie-free cases: every
backend gives exactly the brute force's order, and its gains within ``ATOL``. Tie-heavy cases:
every candidate's score lies clear of the band edge (more than :data:`EDGE`), and every backend
gives exactly the brute force's and the reference's order, the gains within ``ATOL``.
The third output ``dist`` (every pool position's distance to the nearest chain entry of its
group) is checked against a float64 brute force over the chain within ``DIST_ATOL``.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from _backends import ATOL, BACKENDS, DTYPES, call, opcheck
from _inputs import ALL_DTYPES, CASES, EPS, MARGIN, TIE_FREE, TIE_HEAVY, offsets
from torch._subclasses.fake_tensor import FakeTensorMode

from adaptive_prune import ops
from adaptive_prune.ops import reference as ref
from adaptive_prune.ops._common import PICK_TIE

pytestmark = pytest.mark.usefixtures("poison")
OP = "global_greedy"
# a tie-heavy case is decidable when no candidate's float64 score lies within this of the band
# edge ``best - PICK_TIE`` (fp32 scores of D <= 32 rows round by ~1e-7)
EDGE = 2e-6
DIST_ATOL = 1e-5


def unit(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return x / x.norm(dim=1, keepdim=True).clamp_min(EPS)


def pool_scores(xh: torch.Tensor, picked: list[int]) -> torch.Tensor:
    """Min distance of every pool position to the picked ones, from scratch (picked: -inf;
    nothing picked: +inf everywhere, so the first pick is position 0)."""
    if picked:
        score = (1.0 - xh @ xh[picked].T).min(1).values
    else:
        score = torch.full((xh.shape[0],), math.inf, dtype=xh.dtype)
    score[picked] = -math.inf
    return score


@functools.cache
def brute_case(case_id: str, dtype: torch.dtype):
    """``(order [sum P], gains [sum P] float64, smallest decision margin, smallest distance of
    a finite candidate score to the band edge)`` of a case."""
    c = CASES[case_id]
    x = c.x(dtype)
    pool, po, reserved, picks = c.pool()
    po = po.tolist()
    order, gains, margin, edge = [], [], math.inf, math.inf
    for r in range(len(po) - 1):
        a, e = po[r], po[r + 1]
        xh = unit(x[pool[a:e]])
        got = torch.nonzero(reserved[a:e]).flatten().tolist()[: picks[r]]
        g = [math.inf] * len(got)
        while len(got) < picks[r]:
            score = pool_scores(xh, got)
            top = torch.topk(score, min(2, e - a - len(got))).values
            if len(top) == 2 and got:
                margin = min(margin, float(top[0] - top[1]))
            thr = float(top[0]) - PICK_TIE  # +inf: exactly the +inf scores
            live = score[torch.isfinite(score)]
            if live.numel() and math.isfinite(thr):
                edge = min(edge, float((live - thr).abs().min()))
            j = int(torch.nonzero(score >= thr)[0])  # the lowest position in the band
            got.append(j)
            g.append(float(score[j]))
        order += [a + j for j in got]
        gains += g
    order = torch.tensor(order, dtype=torch.int64)
    return order, torch.tensor(gains, dtype=torch.float64), margin, edge


def brute_dist(x, pool, po, go, order) -> torch.Tensor:
    """``dist [K]`` float64 from a chain ``order``: every pool position's min distance to the
    chain entries of its group (groups never straddle requests), 0 on the chain, +inf where its
    group has none."""
    xh = unit(x[pool])
    sizes = torch.tensor(go if go is not None else po).diff()
    gid = torch.repeat_interleave(torch.arange(sizes.numel()), sizes).tolist()
    chain = order.tolist()
    dist = torch.full((pool.numel(),), math.inf, dtype=torch.float64)
    for i in range(pool.numel()):
        js = [j for j in chain if gid[j] == gid[i]]
        if i in js:
            dist[i] = 0.0
        elif js:
            dist[i] = float((1.0 - xh[js] @ xh[i]).min())
    return dist


def check_dist(dist, want):
    assert dist.dtype == torch.float32 and dist.shape == want.shape
    inf = torch.isinf(want)
    assert torch.equal(torch.isinf(dist), inf) and bool((dist[inf] > 0).all())
    assert bool((dist[want == 0] == 0).all()), "the chain entries have distance 0"
    torch.testing.assert_close(dist[~inf].double(), want[~inf], atol=DIST_ATOL, rtol=0)


def args_of(c, dtype):
    pool, po, reserved, picks = c.pool()
    return (c.x(dtype), pool, po, reserved, picks, EPS)


def check_structure(order, gains, c):
    pool, po, reserved, picks = c.pool()
    assert order.dtype == torch.int64 and gains.dtype == torch.float32
    assert order.shape == gains.shape == (sum(picks),)
    po, start = po.tolist(), 0
    for r in range(len(po) - 1):
        o = order[start : start + picks[r]]
        assert bool(((o >= po[r]) & (o < po[r + 1])).all()), f"request {r}: {o.tolist()}"
        assert o.unique().numel() == o.numel(), f"request {r}: a position picked twice"
        res = (torch.nonzero(reserved[po[r] : po[r + 1]]).flatten() + po[r]).tolist()
        n = min(len(res), picks[r])
        assert o[:n].tolist() == res[:n], f"request {r}: the reserved tokens come first"
        assert bool(torch.isinf(gains[start : start + n]).all())
        start += picks[r]


TIE_FREE_PARAMS = [
    pytest.param(c.id, dt, id=f"{c.id}-{dt}")
    for c in TIE_FREE
    for dt in (["fp32", "fp16", "bf16"] if c.id in ALL_DTYPES else ["fp32"])
]


@pytest.mark.parametrize("case, dtype", TIE_FREE_PARAMS)
def test_tie_free_cases_have_a_margin(case, dtype):
    _, _, margin, edge = brute_case(case, DTYPES[dtype])
    assert margin > MARGIN and edge > EDGE


@pytest.mark.parametrize("case", [c.id for c in TIE_HEAVY])
def test_tie_heavy_cases_are_clear_of_the_band_edge(case):
    assert brute_case(case, torch.float32)[3] > EDGE


@pytest.mark.parametrize("case, dtype", TIE_FREE_PARAMS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_tie_free_matches_brute_force(backend, case, dtype):
    if backend == "triton" and dtype == "bf16":
        pytest.skip("bf16 under the interpreter: tests/test_backend_triton.py")
    c = CASES[case]
    args = args_of(c, DTYPES[dtype])
    order, gains, dist = call(backend, OP, args, keep_cpu=(2,))
    check_structure(order, gains, c)
    want_o, want_g = brute_case(case, DTYPES[dtype])[:2]
    assert torch.equal(order, want_o)
    torch.testing.assert_close(gains.double(), want_g, atol=ATOL[DTYPES[dtype]], rtol=0)
    check_dist(dist.cpu(), brute_dist(args[0], args[1], args[2].tolist(), None, want_o))


ENGINES = [pytest.param(None, id="default"), pytest.param("rows", id="rows")]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_dist_with_groups(backend, engine):
    """``dist`` in groups: a group the chain never reaches (+inf), a request without picks
    (+inf everywhere), a request whose chain is only its reserved tokens, a request without
    reserved tokens; the chain entries themselves 0. ``engine="rows"`` (Triton): the row
    engine's own final running minima."""
    if engine is not None and backend not in ("triton", "cuda"):
        pytest.skip("greedy_engine is a Triton knob")
    knobs = {"greedy_engine": engine} if engine else {}
    g = torch.Generator().manual_seed(5)
    x = torch.randn(90, 16, generator=g)
    pool = torch.randperm(90, generator=g)[:70]
    po = offsets([30, 12, 10, 18])
    groups = torch.tensor([0, 10, 20, 30, 42, 47, 52, 62, 70])
    reserved = torch.zeros(70, dtype=torch.bool)
    reserved[[2, 44, 50]] = True
    # request 0: reserved in group 0, one pick (group 1's first position, gain +inf), group 2
    # unreached; request 1: no picks; request 2: its two reserved tokens only; request 3: 6
    picks = [2, 0, 2, 6]
    args = (x, pool, po, reserved, picks, EPS, groups)
    order, gains, dist = call(backend, OP, args, keep_cpu=(2, 6), **knobs)
    want_o, want_g, want_d = ref.global_greedy(*args)
    assert torch.equal(order.cpu(), want_o) and order.tolist()[:2] == [2, 10]
    want = brute_dist(x, pool, po.tolist(), groups.tolist(), want_o)
    assert bool(torch.isinf(want[20:42]).all()) and int((want == 0).sum()) == sum(picks)
    assert bool(torch.isfinite(want[42:52]).all())  # request 2: both groups hold a reserved one
    check_dist(dist.cpu(), want)
    check_dist(want_d, want)


@pytest.mark.parametrize("case", [c.id for c in TIE_HEAVY])
@pytest.mark.parametrize("backend", BACKENDS)
def test_tie_heavy_gives_the_same_picks_as_the_reference(backend, case):
    c = CASES[case]
    args = args_of(c, torch.float32)
    order, gains, _ = call(backend, OP, args, keep_cpu=(2,))
    check_structure(order, gains, c)
    want_o, want_g, _ = ref.global_greedy(*args)
    assert torch.equal(order, brute_case(case, torch.float32)[0])
    assert torch.equal(order, want_o)
    torch.testing.assert_close(gains, want_g, atol=ATOL[torch.float32], rtol=0)


# greedy engine variants (knobs change the speed, never the result): the C++ dense and projected
# greedy, the Triton step loop and the windowed engine with a window the band straddles
VARIANTS = {"a": {"cpp": {"proj_dim": 0}, "triton": {"greedy_window": 0}},
            "b": {"cpp": {"proj_dim": 8}, "triton": {"greedy_window": 16}}}  # fmt: skip


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_near_ties_go_to_the_lower_position(backend, variant):
    """A pool of a few directions, each repeated at scales 1, 2, 3 and 7 (the repeats'
    distances agree only up to rounding), one request with reserved tokens and one without
    (all +inf: its first position first), in groups: every backend and engine makes the
    reference's picks (the lowest position within the band) with its gains."""
    if backend == "reference" and variant != "a":
        pytest.skip("the reference has no knobs")
    g = torch.Generator().manual_seed(8)
    dirs = torch.randn(6, 12, generator=g, dtype=torch.float64)
    ids = torch.randint(0, 6, (110,), generator=g)
    scale = torch.tensor([1.0, 2.0, 3.0, 7.0], dtype=torch.float64)[torch.arange(110) % 4]
    x = (dirs[ids] * scale[:, None]).float()
    pool = torch.randperm(110, generator=g)
    po = offsets([60, 50])
    reserved = torch.zeros(110, dtype=torch.bool)
    reserved[[3, 40]] = True
    groups = torch.tensor([0, 25, 60, 80, 110])
    args = (x, pool, po, reserved, [30, 28], EPS, groups)
    knobs = VARIANTS[variant].get("triton" if backend == "cuda" else backend, {})
    order, gains, _ = call(backend, OP, args, keep_cpu=(2, 6), **knobs)
    want_o, want_g, _ = ref.global_greedy(*args)
    assert torch.equal(order, want_o)
    torch.testing.assert_close(gains, want_g, atol=ATOL[torch.float32], rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_without_reserved_tokens_the_first_pick_is_position_0(backend):
    x = CASES["no-text-zero-row"].x(torch.float32)
    pool, po = torch.tensor([4, 9, 1, 30, 17, 2]), offsets([1, 5])
    reserved = torch.zeros(6, dtype=torch.bool)
    order, gains, _ = call(backend, OP, (x, pool, po, reserved, [1, 3], EPS), keep_cpu=(2,))
    want_o, want_g, _ = ref.global_greedy(x, pool, po, reserved, [1, 3], EPS)
    assert order.tolist()[:2] == [0, 1] and torch.equal(order, want_o)
    assert bool(torch.isinf(gains[:2]).all())
    torch.testing.assert_close(gains, want_g, atol=ATOL[torch.float32], rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_and_output_dtype_shape(backend):
    c = CASES["opcheck"]
    samples = [args_of(c, torch.float32), args_of(c, torch.float16)]
    opcheck(backend, OP, samples)
    for args in samples:
        got = call(backend, OP, args, keep_cpu=(2,))
        with FakeTensorMode() as mode:
            fake = ops.ALL_OPS[OP](*[mode.from_tensor(a) if isinstance(a, torch.Tensor) else a
                                     for a in args])  # fmt: skip
        assert len(got) == len(fake) == 3
        for g, f, dt in zip(got, fake, (torch.int64, torch.float32, torch.float32)):
            assert g.dtype == f.dtype == dt and g.shape == f.shape


# --------------------------------------------------------------------------------------------
# the reference in float64
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", [c.id for c in TIE_FREE])
def test_reference_fp64_matches_brute_force(case):
    c = CASES[case]
    order, gains, _ = ref.global_greedy(*args_of(c, torch.float64))
    want_o, want_g = brute_case(case, torch.float64)[:2]
    assert torch.equal(order, want_o)
    # the reference returns float32 gains
    torch.testing.assert_close(gains.double(), want_g, atol=ATOL[torch.float32], rtol=0)


def test_reference_gains_never_increase():
    c = CASES["577"]
    order, gains, _ = ref.global_greedy(*args_of(c, torch.float64))
    n_res = int(c.pool()[2].sum())
    assert bool((gains[n_res:-1] >= gains[n_res + 1 :]).all())
