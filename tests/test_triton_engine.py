"""The row engine (kernels/_engine.py) of both greedy launchers, against the reference and the
block engine.

Under the Triton interpreter (no GPU) the engine runs one phase per launch; with CUDA the
persistent kernel runs (one launch, device-wide barriers). Shapes are small: the interpreter
runs programs one by one. Tiles are made small (``block=16``, window 16) so that segments span
many tiles and the merges of candidates from several tiles, tile edges and partial tiles are
exercised.

The engine picks by the band rule (``_engine.PICK_TIE``): the lowest index among the unpicked
entries within ``PICK_TIE`` of the largest value. :func:`band_greedy` is that rule one pick at a
time on fp32 distances: the oracle of the tie-heavy tests (exact ties, duplicated rows, D = 1,
2-token images). On tie-free inputs (every decision ahead by more than ``MARGIN``) the band
rule and the reference's argmax agree, and the engine is compared with the reference.
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("triton")

from _inputs import MARGIN, TIE_FREE, TIE_HEAVY  # noqa: E402
from adaptive_prune.kernels._common import check_engine, pick_engine  # noqa: E402
from adaptive_prune.kernels.global_greedy import global_greedy_fwd  # noqa: E402
from adaptive_prune.kernels.greedy_select import greedy_select_fwd  # noqa: E402

import adaptive_prune  # noqa: E402
from adaptive_prune.ops import reference as ref  # noqa: E402

pytestmark = pytest.mark.interpreter

EPS = 1e-6
PICK_TIE = 1e-5  # the engine's band (kernels/_engine.py)


@pytest.fixture(autouse=True)
def poison():
    """Fresh buffers start as NaN / the largest integer, so an unwritten output fails."""
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(was)


def gaussian(n, dim=24, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g, dtype=torch.float64).to(dtype), g


def brute_dist(x, picked):
    """``min over picked j of 1 - cos(x_i, x_j)`` in fp64; ``-inf`` at the picked rows."""
    xh = ref.normalize(x.double(), EPS)
    d = (1.0 - xh @ xh[picked].T).min(dim=1).values
    d[picked] = -math.inf
    return d


def band_greedy(x, init, steps, gid=None):
    """The engine's rule one pick at a time, in fp32: ``acc`` = min distance ``1 - cos`` to the
    picked set (``+inf`` across groups ``gid``), each step picks the lowest index among the
    unpicked entries with ``acc >= M - PICK_TIE`` (fp32), ``M`` their largest ``acc``; the
    gain is the pick's own ``acc``. Returns picks, gains and the smallest lead of a finite
    decision over the runner-up (fp32; ``inf`` when none), for the tie-free checks."""
    xf = x.detach().cpu().float()
    inv = 1.0 / xf.norm(dim=1).clamp_min(EPS)
    dist = 1.0 - (xf @ xf.T) * inv[:, None] * inv[None, :]
    if gid is not None:
        dist[gid[:, None] != gid[None, :]] = math.inf
    acc = torch.full((xf.shape[0],), math.inf)
    for j in init:
        acc = torch.minimum(acc, dist[:, j])
    acc[list(init)] = -math.inf
    tie = torch.tensor(PICK_TIE, dtype=torch.float32)
    order, gains, lead = [], [], math.inf
    for _ in range(steps):
        live = acc > -math.inf
        m = acc[live].max()
        j = int(torch.nonzero(live & (acc >= m - tie)).flatten()[0])
        rest = acc[live & (torch.arange(len(acc)) != j)]
        if math.isfinite(float(m)) and len(rest):
            lead = min(lead, float(m - rest.max()))
        order.append(j)
        gains.append(float(acc[j]))
        acc = torch.minimum(acc, dist[:, j])
        acc[j] = -math.inf
    return order, gains, lead


def band_select(x, cu, budgets, got):
    """Stage 1 by :func:`band_greedy` from the engine's own first pick (rank 0) of every image;
    the ranks it implies."""
    want = torch.full((x.shape[0],), -1, dtype=torch.int64)
    for k in range(len(cu) - 1):
        a, e = int(cu[k]), int(cu[k + 1])
        b = min(int(budgets[k]), e - a)
        if b <= 0:
            continue
        j0 = int(torch.nonzero(got[a:e].cpu() == 0).flatten()[0])
        order, _, _ = band_greedy(x[a:e], [j0], b - 1)
        want[a + torch.tensor([j0] + order)] = torch.arange(b)
    return want


def band_pool(x, pool, po, reserved, picks, go=None):
    """Stage 2 by :func:`band_greedy`: reserved positions first (gain +inf), then the band
    picks, per request; with ``go`` the groups' ids. Also the smallest decision lead."""
    po = [int(v) for v in po]
    go = [int(v) for v in go] if go is not None else po
    order, gains, lead = [], [], math.inf
    for r in range(len(po) - 1):
        a, e, P = po[r], po[r + 1], int(picks[r])
        res = torch.nonzero(reserved[a:e].cpu()).flatten().tolist()
        gl = [v - a for v in go if a <= v <= e]
        gid = torch.repeat_interleave(torch.arange(len(gl) - 1), torch.tensor(gl).diff())
        o, g, ld = band_greedy(x[pool[a:e].cpu()], res, max(P - len(res), 0), gid)
        order += [a + j for j in res + o]
        gains += [math.inf] * len(res) + g
        lead = min(lead, ld)
    return torch.tensor(order, dtype=torch.int64), torch.tensor(gains), lead


def image_groups(case, pool, po):
    """Group offsets over a case's pool: a new group wherever the pooled token's image changes
    (pools are in random order, so an image may span several groups; some have no reserved
    token)."""
    cu = case.cu_seqlens.tolist()
    img = [next(k for k in range(len(cu) - 1) if cu[k] <= int(i) < cu[k + 1]) for i in pool]
    po = [int(v) for v in po]
    go = sorted(set(po) | {q for q in range(1, len(img)) if img[q] != img[q - 1]})
    return torch.tensor(go, dtype=torch.int64)


@pytest.mark.parametrize(
    "dtype, block",
    [(torch.float32, 16), (torch.float32, None), (torch.float16, 32)],
    ids=["fp32-tile16", "fp32-tile64", "fp16-tile32"],
)
def test_stage1_rows_engine_matches_reference(device, dtype, block):
    counts = [1, 45, 0, 33, 16, 5]  # one token, empty, tile edges (16, 32 + 1), odd sizes
    x, _ = gaussian(sum(counts), dtype=dtype)
    x = x.to(device)
    cu = torch.tensor([0] + torch.tensor(counts).cumsum(0).tolist())
    budgets = torch.tensor([1, 30, 0, 33, 40, 2])  # whole image, budget above the size
    dist = torch.full((x.shape[0],), math.nan, device=device)
    got = greedy_select_fwd(
        x, cu, budgets, "maxmin", EPS, window=16, block=block, engine="rows", dist=dist
    )
    want = ref.greedy_select(x.cpu(), cu, budgets, "maxmin", EPS)
    assert torch.equal(got.cpu(), want)
    # every image with picks: dist is the distance to its picked set
    for k in range(len(counts)):
        a, e = int(cu[k]), int(cu[k + 1])
        picked = torch.nonzero(want[a:e] >= 0).flatten()
        if len(picked):
            torch.testing.assert_close(
                dist[a:e].cpu().double(), brute_dist(x[a:e].cpu(), picked), atol=1e-5, rtol=0
            )


@pytest.mark.parametrize("reserve", [True, False], ids=["reserved", "none-reserved"])
def test_stage2_rows_engine_matches_band_oracle(device, reserve):
    x, g = gaussian(160)
    x = x.to(device)
    pool = torch.randperm(160, generator=g)[:120].to(device)
    po = torch.tensor([0, 50, 50, 51, 120])  # an empty request, a one-token request
    reserved = torch.zeros(120, dtype=torch.bool)
    if reserve:
        reserved[[0, 5, 17, 60, 100]] = True
    picks = [20, 0, 1, 69]  # the last request picks its whole pool
    o, gains, dist = global_greedy_fwd(
        x, pool, po, reserved.to(device), picks, EPS, window=16, block=16, engine="rows"
    )
    # the band oracle (this input has decisions within PICK_TIE, where the band's lower
    # index and the reference's argmax part)
    wo, wg, _ = band_pool(x, pool, po, reserved, picks)
    assert torch.equal(o.cpu(), wo)
    torch.testing.assert_close(gains.cpu(), wg, atol=2e-6, rtol=0)
    # request 0: the distances to its reserved and picked rows (the last pick included), 0 at
    # those; request 3 (its whole pool picked): 0 everywhere
    sel = (wo[:20]).tolist()
    want = brute_dist(x[pool[:50]].cpu(), sel)
    want[sel] = 0.0
    torch.testing.assert_close(dist[:50].cpu().double(), want, atol=1e-5, rtol=0)
    assert bool((dist[51:] == 0).all()) and dist.shape == (120,)


def tie_tokens(seed, n=150, dim=16):
    """Rows from 12 patterns with entries in {-1, 0, 1} and 1, 4 or 16 nonzeros (norms 1, 2, 4),
    scaled by 1, 2 or 4: every cosine, distance and sum is exact in fp32 whatever the order of
    the additions, so all implementations see the same values, full of exact ties."""
    g = torch.Generator().manual_seed(seed)
    pats = torch.zeros(12, dim)
    for p in range(12):
        nnz = (1, 4, 16)[p % 3]
        idx = torch.randperm(dim, generator=g)[:nnz]
        pats[p, idx] = torch.randint(0, 2, (nnz,), generator=g).float() * 2 - 1
    x = pats[torch.randint(0, 12, (n,), generator=g)]
    return x * (2.0 ** torch.randint(0, 3, (n, 1), generator=g)).float(), g


@pytest.mark.parametrize("seed", [1])
def test_rows_engine_band_rule_on_exact_ties(device, seed):
    """On inputs full of exact ties the row engine makes the band oracle's picks and gains:
    the lowest index in the band, in the window, across tiles, across the bound and by the
    fallback scan."""
    x, g = tie_tokens(seed)
    x = x.to(device)
    cu = torch.tensor([0, 70, 71, 71, 150])
    budgets = torch.tensor([16, 1, 0, 18])
    got = greedy_select_fwd(x, cu, budgets, "maxmin", EPS, window=16, block=16, engine="rows")
    assert torch.equal(got.cpu(), band_select(x.cpu(), cu, budgets, got))
    pool = torch.randperm(150, generator=g)[:110].to(device)
    po = torch.tensor([0, 60, 110])
    reserved = torch.zeros(110, dtype=torch.bool, device=device)
    if seed % 2:
        reserved[[3, 7, 80]] = True
    picks = [14, 16]
    o, gains, _ = global_greedy_fwd(
        x, pool, po, reserved, picks, EPS, window=16, block=16, engine="rows"
    )
    wo, wg, _ = band_pool(x.cpu(), pool.cpu(), po, reserved, picks)
    assert torch.equal(o.cpu(), wo)
    assert torch.equal(gains.cpu(), wg)


@pytest.mark.parametrize("case", TIE_HEAVY, ids=lambda c: c.id)
def test_rows_engine_band_rule_on_tie_heavy_cases(device, case):
    """Duplicated rows and images, D = 1, 2-token images (tests/_inputs.TIE_HEAVY): both
    stages (stage 2 with a group per image, without for the slow dup-rows case) equal the
    band oracle; gains to rounding."""
    x = case.x(torch.float32).to(device)
    cu, budgets = case.cu_seqlens, torch.tensor(case.budgets)
    got = greedy_select_fwd(x, cu, budgets, "maxmin", EPS, window=16, block=16, engine="rows")
    assert torch.equal(got.cpu(), band_select(x.cpu(), cu, budgets, got))
    pool, po, reserved, picks = case.pool()
    go = image_groups(case, pool, po) if case.id != "dup-rows" else None  # (the slowest)
    o, gains, _ = global_greedy_fwd(
        x, pool.to(device), po, reserved.to(device), picks, EPS, go, window=16, block=16,
        engine="rows",
    )  # fmt: skip
    wo, wg, _ = band_pool(x.cpu(), pool, po, reserved, picks, go)
    assert torch.equal(o.cpu(), wo)
    torch.testing.assert_close(gains.cpu(), wg, atol=1e-6, rtol=0)


def test_rows_engine_fallback_scan(device):
    """D = 1 (every distance 0 or 2) with more tied entries than the window: the band reaches
    outside the window in every round, each round picks by the scan of the segment, and the
    picks are the band oracle's (the lowest live index)."""
    g = torch.Generator().manual_seed(5)
    x = torch.where(torch.rand(40, 1, generator=g) < 0.5, -1.0, 1.0) * 3.0
    x = x.to(device)
    cu = torch.tensor([0, 40])
    budgets = torch.tensor([8])
    st = torch.zeros(1, 3, dtype=torch.int64, device=device)
    got = greedy_select_fwd(x, cu, budgets, "maxmin", EPS, window=16, block=16, engine="rows",
                            stats=st)  # fmt: skip
    assert torch.equal(got.cpu(), band_select(x.cpu(), cu, budgets, got))
    assert 0 < int(st[0, 2]) <= int(st[0, 0])  # scans happened, at most one per round


def test_persistent_kernel_matches_reference_and_phase_launches(device):
    """The GPU path's one-launch loop (``_engine_persistent_kernel``: phases, device-wide
    barriers, the loop's exit) run here with one program under the interpreter (the barrier
    never waits) or on all SMs with CUDA: the same outputs as the band oracle, the reference
    (stage 1, tie-free) and the phase-per-launch path, ties and groups included."""
    x, g = tie_tokens(3)
    x = x.to(device)
    cu = torch.tensor([0, 70, 71, 71, 150])
    budgets = torch.tensor([16, 1, 0, 18])
    kw = dict(window=16, block=16, engine="rows")
    one = greedy_select_fwd(x, cu, budgets, "maxmin", EPS, persistent=True, **kw)
    assert torch.equal(one.cpu(), band_select(x.cpu(), cu, budgets, one))
    xg, _ = gaussian(150)
    xg = xg.to(device)
    one = greedy_select_fwd(xg, cu, budgets, "maxmin", EPS, persistent=True, **kw)
    assert torch.equal(one.cpu(), ref.greedy_select(xg.cpu(), cu, budgets, "maxmin", EPS))
    pool = torch.randperm(150, generator=g)[:110].to(device)
    po = torch.tensor([0, 60, 60, 110])
    reserved = torch.zeros(110, dtype=torch.bool, device=device)
    reserved[[3, 70]] = True
    picks = [16, 0, 18]
    go = torch.tensor([0, 20, 60, 60, 75, 110])  # groups; [75, 110) has no reserved token
    o, gains, _ = global_greedy_fwd(xg, pool, po, reserved, picks, EPS, go, persistent=True,
                                 **kw)  # fmt: skip
    wo, wg, _ = band_pool(xg.cpu(), pool.cpu(), po, reserved.cpu(), picks, go)
    assert torch.equal(o.cpu(), wo)
    torch.testing.assert_close(gains.cpu(), wg, atol=2e-6, rtol=0)
    o2, g2, _ = global_greedy_fwd(xg, pool, po, reserved, picks, EPS, go, persistent=False,
                               **kw)  # fmt: skip
    assert torch.equal(o, o2) and torch.equal(gains, g2)


@pytest.mark.parametrize("ties", [False, True], ids=["gaussian", "exact-ties"])
def test_window_merge_width_gives_the_same_picks(device, monkeypatch, ties):
    """Phase W merges its tiles' candidates ``MF - 1`` tiles per sort (``engine_merge`` keys):
    one tile per sort, three, or all 7 of the segment in one sort give the same picks, gains
    and final distances (the band oracle's), with ties (where the bound's key decides) and
    groups; the persistent loop too."""
    from adaptive_prune.kernels import _common

    x, g = tie_tokens(2, n=150) if ties else gaussian(150)
    x = x.to(device)
    pool = torch.randperm(150, generator=g)[:112].to(device)
    po = torch.tensor([0, 112])  # 7 tiles of 16
    go = torch.tensor([0, 50, 51, 112])
    reserved = torch.zeros(112, dtype=torch.bool, device=device)
    reserved[[5, 70]] = True
    picks = [40]
    wo, wg, _ = band_pool(x.cpu(), pool.cpu(), po, reserved.cpu(), picks, go)
    got = []
    for keys, persistent in [(32, False), (64, False), (128, True)]:
        monkeypatch.setitem(_common.CONFIGS, "engine_merge", (keys, keys))
        kw = dict(window=16, block=16, engine="rows", persistent=persistent)
        o, gains, dist = global_greedy_fwd(x, pool, po, reserved, picks, EPS, go, **kw)
        assert torch.equal(o.cpu(), wo), (keys, persistent)
        torch.testing.assert_close(gains.cpu(), wg, atol=2e-6, rtol=0)
        got.append((o, gains, dist))
    for o, gains, dist in got[1:]:
        assert torch.equal(o, got[0][0]) and torch.equal(gains, got[0][1])
        assert torch.equal(dist, got[0][2])


@pytest.mark.parametrize("case", [c for c in TIE_FREE if c.id != "577"], ids=lambda c: c.id)
def test_stage2_groups_match_reference(device, case):
    """Groups (tokens of different groups never cover each other; a group without a reserved
    token starts at its first position, gain +inf) on the tie-free cases, with one group per
    image run and also one group per request: the reference's picks and gains. Small tiles
    (16) so groups straddle tiles and sub-tiles."""
    x = case.x(torch.float32).to(device)
    pool, po, reserved, picks = case.pool()
    picks = [min(int(po[r + 1] - po[r]), p + 6) for r, p in enumerate(picks)]
    for go in (image_groups(case, pool, po), None):
        wo, wg, _ = ref.global_greedy(case.x(torch.float32), pool, po, reserved, picks, EPS, go)
        _, _, lead = band_pool(case.x(torch.float32), pool, po, reserved, picks, go)
        assert lead > MARGIN  # tie-free: the band rule and the argmax agree
        o, gains, _ = global_greedy_fwd(
            x, pool.to(device), po, reserved.to(device), picks, EPS, go, window=16, block=16,
            engine="rows",
        )  # fmt: skip
        assert torch.equal(o.cpu(), wo)
        torch.testing.assert_close(gains.cpu(), wg, atol=2e-6, rtol=0)


def test_stage2_groups_without_reserved_tokens(device):
    """More groups than the window, none reserved: every group's first position comes first
    (gain +inf, group order), then the chain; equal to the reference (tie-free values)."""
    x, g = gaussian(120, dim=32, seed=4)
    x = x.to(device)
    pool = torch.randperm(120, generator=g)[:100]
    po = torch.tensor([0, 1, 100])  # a one-token request, then 99 entries in 21 groups
    go = torch.tensor(sorted({0, 1, 100} | set(range(5, 100, 5))))
    reserved = torch.zeros(100, dtype=torch.bool)
    picks = [1, 40]
    wo, wg, _ = ref.global_greedy(x.cpu(), pool, po, reserved, picks, EPS, go)
    _, _, lead = band_pool(x.cpu(), pool, po, reserved, picks, go)
    assert lead > MARGIN
    o, gains, _ = global_greedy_fwd(x, pool.to(device), po, reserved.to(device), picks, EPS, go,
                                 window=16, block=16, engine="rows")  # fmt: skip
    assert torch.equal(o.cpu(), wo)
    assert torch.isinf(gains[1:21]).all() and o[1:21].tolist() == go[1:-1].tolist()
    torch.testing.assert_close(gains.cpu(), wg, atol=2e-6, rtol=0)


def test_rows_engine_stats_and_no_picks(device):
    """Rounds and distance work are reported; budgets of 0 and P = reserved make no round."""
    x, g = gaussian(64)
    x = x.to(device)
    cu = torch.tensor([0, 40, 64])
    st = torch.zeros(2, 2, dtype=torch.int64, device=device)
    r = greedy_select_fwd(x, cu, torch.tensor([0, 24]), "maxmin", EPS, window=16, engine="rows",
                          stats=st)  # fmt: skip
    assert torch.equal(r.cpu(), ref.greedy_select(x.cpu(), cu, torch.tensor([0, 24]), "maxmin",
                                                  EPS))  # fmt: skip
    assert st[0, 0] == 0 and st[1, 0] >= 2  # 23 picks after the first, at most 16 per round
    assert st[1, 1] > 0
    pool = torch.arange(64, device=device)
    po = torch.tensor([0, 64])
    reserved = torch.zeros(64, dtype=torch.bool, device=device)
    reserved[:3] = True
    o, gains, _ = global_greedy_fwd(x, pool, po, reserved, [3], EPS, window=16, engine="rows")
    assert o.tolist() == [0, 1, 2] and torch.isinf(gains).all()


def test_sketch_bound_skips_tiles_with_the_same_results(device):
    """The sketch bound (``sketch_dim``) only skips distance tiles it proves cannot lower a live
    entry: picks, gains, ranks and final distances are bitwise those without it, in both
    stages (stage 2 with groups), and it skips some tiles on low-rank tokens (where the
    projection holds nearly all of every row) while computing the rest."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(120, 6, generator=g, dtype=torch.float64)
    x = (a @ torch.randn(6, 32, generator=g, dtype=torch.float64)).float().to(device)
    cu = torch.tensor([0, 50, 51, 120])
    budgets = torch.tensor([20, 1, 24])
    kw = dict(window=16, block=16, engine="rows")
    out = {}
    for sk in (0, 16):
        st = torch.zeros(3, 4, dtype=torch.int64, device=device)
        d = torch.full((120,), math.nan, device=device)
        r = greedy_select_fwd(x, cu, budgets, "maxmin", EPS, stats=st, dist=d, sketch_dim=sk,
                              **kw)  # fmt: skip
        out[sk] = (r, d, st)
    assert torch.equal(out[16][0], out[0][0]) and torch.equal(out[16][1], out[0][1])
    assert int(out[16][2][:, 3].sum()) > 0 and int(out[0][2][:, 3].sum()) == 0
    assert int(out[16][2][:, 1].sum()) + int(out[16][2][:, 3].sum()) == int(out[0][2][:, 1].sum())
    pool = torch.randperm(120, generator=g)[:100].to(device)
    po = torch.tensor([0, 100])
    go = torch.tensor([0, 40, 100])
    reserved = torch.zeros(100, dtype=torch.bool, device=device)
    reserved[[0, 45]] = True
    for sk in (0, 32):
        st = torch.zeros(1, 4, dtype=torch.int64, device=device)
        o, gains, _ = global_greedy_fwd(x, pool, po, reserved, [30], EPS, go, stats=st,
                                     sketch_dim=sk, **kw)  # fmt: skip
        out[sk] = (o, gains, st)
    assert torch.equal(out[32][0], out[0][0]) and torch.equal(out[32][1], out[0][1])
    assert int(out[32][2][:, 3].sum()) > 0
    with pytest.raises(ValueError, match="sketch_dim"):
        greedy_select_fwd(x, cu, budgets, "maxmin", EPS, sketch_dim=24, **kw)


@pytest.mark.gpu
def test_row_engine_launch_replays_in_a_cuda_graph():
    """The row engine's GPU path is one launch (memsets + the persistent kernel, no host work):
    captured in a ``torch.cuda.CUDAGraph`` and replayed, with its outputs poisoned in between,
    it gives the eager call's picks and gains, groups included. (The launchers' prologues copy
    host offsets to the device, which a capture forbids: they run before it, as a serving loop
    with fixed shapes would keep them.)"""
    from adaptive_prune.kernels import global_greedy as gg

    x, g = gaussian(600, dim=64, seed=7)
    x = x.to(torch.bfloat16).cuda()
    pool = torch.randperm(600, generator=g)[:500].cuda()
    po = torch.tensor([0, 200, 500])
    go = torch.tensor([0, 80, 200, 300, 420, 500])
    reserved = torch.zeros(500, dtype=torch.bool, device="cuda")
    reserved[[0, 100, 310]] = True
    picks = [60, 120]
    want_o, want_g, _ = global_greedy_fwd(x, pool, po, reserved, picks, EPS, go, engine="rows")
    ooff = [0, 60, 180]
    order = torch.empty(180, dtype=torch.int64, device="cuda")
    gains = torch.empty(180, dtype=torch.float32, device="cuda")
    order, gains, launch = gg._rows_engine(
        x, po.tolist(), go.tolist(), pool, reserved, picks, ooff, EPS, 64, None, None,
        order, gains, plan_only=True,
    )  # fmt: skip
    launch()  # warm-up: compiles the kernel outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        launch()
    greedy = torch.ones(180, dtype=torch.bool, device="cuda")
    greedy[[0, 1, 60]] = False  # the reserved entries, written by the prologue
    for _ in range(2):
        order.masked_fill_(greedy, -7)
        gains.masked_fill_(greedy, float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(order, want_o)
        assert torch.equal(gains, want_g)


def test_engine_is_checked():
    assert check_engine(None) == "auto"
    with pytest.raises(ValueError, match="greedy engine"):
        check_engine("fast")
    # auto: the row engine exactly when the largest segment's m x m fp32 block exceeds the
    # budget (1 MiB holds a 512 x 512 block)
    assert pick_engine("auto", [512, 3], 1) == "blocks"
    assert pick_engine(None, [3, 513], 1) == "rows"
    assert pick_engine(None, [], 1) == "blocks"
    assert pick_engine("blocks", [10**6], 1) == "blocks" and pick_engine("rows", [1], 1) == "rows"
    assert pick_engine(None, [23170], None) == "blocks"  # the default budget: 2048 MiB
    assert pick_engine(None, [23171], None) == "rows"
    with pytest.raises(ValueError, match="block_budget_mb"):
        pick_engine(None, [5], float("nan"))


def test_auto_engine_routes_by_the_block_budget(device, monkeypatch):
    """Both launchers under the default engine ("auto"): within the block budget the block
    engine runs, above it the row engine, with the same picks; the routing layer's knob
    reaches the choice."""
    from adaptive_prune.kernels import global_greedy as gg
    from adaptive_prune.kernels import greedy_select as gs

    calls = []
    for mod in (gs, gg):
        real = mod._rows_engine
        monkeypatch.setattr(
            mod, "_rows_engine", lambda *a, _r=real, **k: calls.append(1) or _r(*a, **k)
        )
    x, g = gaussian(150)
    x = x.to(device)
    cu = torch.tensor([0, 40, 150])
    budgets = torch.tensor([10, 20])
    pool = torch.randperm(150, generator=g)[:90].to(device)
    po = torch.tensor([0, 90])
    reserved = torch.zeros(90, dtype=torch.bool, device=device)
    reserved[4] = True
    got = {}
    for mb in (1e-3, None):  # 1e-3 MiB: every block above 16 x 16 is over it; None: 2048 MiB
        kw = dict(window=16, block_budget_mb=mb)
        rank = greedy_select_fwd(x, cu, budgets, "maxmin", EPS, **kw)
        o, gains, dist = global_greedy_fwd(x, pool, po, reserved, [30], EPS, **kw)
        got[mb] = (rank, o, gains, dist, len(calls))
    assert got[1e-3][4] == 2 and got[None][4] == 2  # both stages on the rows, then neither
    assert torch.equal(got[1e-3][0], got[None][0]) and torch.equal(got[1e-3][1], got[None][1])
    torch.testing.assert_close(got[1e-3][2], got[None][2], atol=2e-6, rtol=0)
    torch.testing.assert_close(got[1e-3][3], got[None][3], atol=2e-6, rtol=0)
    with adaptive_prune.backend("triton", block_budget_mb=1e-3):  # the knob reaches "auto"
        torch.ops.adaptive_prune.greedy_select(x, cu, budgets.to(device), "maxmin", EPS)
    assert len(calls) == 3
    assert torch.equal(rank.cpu(), ref.greedy_select(x.cpu(), cu, budgets, "maxmin", EPS))


@pytest.mark.slow
def test_gpu_counters_dry_run_kernel_counts_equal_the_simulation():
    """``benchmarks/gpu_counters.py`` stands a PyTorch simulation in for the kernels on the real
    input; its dry run checks that the kernels' own rounds and work equal the simulation's on a
    small input (exit code 0) and prints the counters table."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    p = subprocess.run(
        [sys.executable, "benchmarks/gpu_counters.py", "--dry-run"], cwd=root, env=env,
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "agree = True" in p.stdout
    assert "| stage 2 rounds | rows |" in p.stdout
