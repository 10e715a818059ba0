"""The row engine (kernels/_engine.py) of both greedy launchers, against the reference and the
block engine.

Under the Triton interpreter (no GPU) the engine runs one phase per launch; with CUDA the
persistent kernel runs (one launch, device-wide barriers). Shapes are small: the interpreter
runs programs one by one. Tiles are made small (``block=16``, window 16) so that segments span
many tiles and the merges of candidates from several tiles, tile edges and partial tiles are
exercised.
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("triton")

from adaptive_prune.kernels._common import check_engine  # noqa: E402
from adaptive_prune.kernels.global_greedy import global_greedy_fwd  # noqa: E402
from adaptive_prune.kernels.greedy_select import greedy_select_fwd  # noqa: E402

from adaptive_prune.ops import reference as ref  # noqa: E402

pytestmark = pytest.mark.interpreter

EPS = 1e-6


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
def test_stage2_rows_engine_matches_reference(device, reserve):
    x, g = gaussian(160)
    x = x.to(device)
    pool = torch.randperm(160, generator=g)[:120].to(device)
    po = torch.tensor([0, 50, 50, 51, 120])  # an empty request, a one-token request
    reserved = torch.zeros(120, dtype=torch.bool)
    if reserve:
        reserved[[0, 5, 17, 60, 100]] = True
    picks = [20, 0, 1, 69]  # the last request picks its whole pool
    dist = torch.full((120,), math.nan, device=device)
    o, gains = global_greedy_fwd(
        x, pool, po, reserved.to(device), picks, EPS, window=16, block=16, engine="rows",
        dist=dist,
    )  # fmt: skip
    wo, wg = ref.global_greedy(x.cpu(), pool.cpu(), po, reserved, picks, EPS)
    assert torch.equal(o.cpu(), wo)
    torch.testing.assert_close(gains.cpu(), wg, atol=2e-6, rtol=0)
    # request 0: the final running distances to its reserved and picked rows
    sel = (wo[:20]).tolist()
    torch.testing.assert_close(
        dist[:50].cpu().double(), brute_dist(x[pool[:50]].cpu(), sel), atol=1e-5, rtol=0
    )


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


@pytest.mark.parametrize("seed", range(2))
def test_rows_engine_equals_step_loop_on_ties(device, seed):
    """On inputs full of exact ties the row engine makes the step loop's picks and gains: ties go
    to the lower index in the window, across tiles and across the bound. (Not compared with the
    reference here: its first pick, ``argmax x̂ . mu``, rounds ``s / ||s||`` and so can split an
    exact tie of ``x̂ . s``, which both kernels use.)"""
    x, g = tie_tokens(seed)
    x = x.to(device)
    cu = torch.tensor([0, 70, 71, 71, 150])
    budgets = torch.tensor([60, 1, 0, 80])
    step = greedy_select_fwd(x, cu, budgets, "maxmin", EPS, window=0)
    got = greedy_select_fwd(x, cu, budgets, "maxmin", EPS, window=16, block=16, engine="rows")
    assert torch.equal(got, step)
    pool = torch.randperm(150, generator=g)[:110].to(device)
    po = torch.tensor([0, 60, 110])
    reserved = torch.zeros(110, dtype=torch.bool, device=device)
    if seed % 2:
        reserved[[3, 7, 80]] = True
    picks = [45, 50]
    s_o, s_g = global_greedy_fwd(x, pool, po, reserved, picks, EPS, window=0)
    o, gains = global_greedy_fwd(
        x, pool, po, reserved, picks, EPS, window=16, block=16, engine="rows"
    )
    assert torch.equal(o, s_o)
    assert torch.equal(gains, s_g)


def test_persistent_kernel_matches_reference_and_phase_launches(device):
    """The GPU path's one-launch loop (``_engine_persistent_kernel``: phases, device-wide
    barriers, the loop's exit) run here with one program under the interpreter (the barrier
    never waits) or on all SMs with CUDA: the same outputs as the reference and the
    phase-per-launch path, ties included."""
    x, g = tie_tokens(3)
    x = x.to(device)
    cu = torch.tensor([0, 70, 71, 71, 150])
    budgets = torch.tensor([60, 1, 0, 80])
    kw = dict(window=16, block=16, engine="rows")
    one = greedy_select_fwd(x, cu, budgets, "maxmin", EPS, persistent=True, **kw)
    assert torch.equal(one, greedy_select_fwd(x, cu, budgets, "maxmin", EPS, window=0))
    xg, _ = gaussian(150)
    xg = xg.to(device)
    one = greedy_select_fwd(xg, cu, budgets, "maxmin", EPS, persistent=True, **kw)
    assert torch.equal(one.cpu(), ref.greedy_select(xg.cpu(), cu, budgets, "maxmin", EPS))
    pool = torch.randperm(150, generator=g)[:110].to(device)
    po = torch.tensor([0, 60, 60, 110])
    reserved = torch.zeros(110, dtype=torch.bool, device=device)
    reserved[[3, 70]] = True
    picks = [45, 0, 50]
    o, gains = global_greedy_fwd(xg, pool, po, reserved, picks, EPS, persistent=True, **kw)
    wo, wg = ref.global_greedy(xg.cpu(), pool.cpu(), po, reserved.cpu(), picks, EPS)
    assert torch.equal(o.cpu(), wo)
    torch.testing.assert_close(gains.cpu(), wg, atol=2e-6, rtol=0)
    o2, g2 = global_greedy_fwd(xg, pool, po, reserved, picks, EPS, persistent=False, **kw)
    assert torch.equal(o, o2) and torch.equal(gains, g2)


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
    o, gains = global_greedy_fwd(x, pool, po, reserved, [3], EPS, window=16, engine="rows")
    assert o.tolist() == [0, 1, 2] and torch.isinf(gains).all()


def test_engine_is_checked():
    assert check_engine(None) in ("blocks", "rows")
    with pytest.raises(ValueError, match="greedy engine"):
        check_engine("fast")


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
