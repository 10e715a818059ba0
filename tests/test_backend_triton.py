"""Behaviour of the Triton backend only (kernels/ and adaptive_prune/backends/triton.py).

The per-op results on the shared inputs are in tests/test_op_*.py (parameter ``triton``). Here:

- the launchers' code paths against the reference: register-resident and chunked similarity
  blocks (``block``), one pick per step and the windowed max-min engine (``window``);
- the windowed engine against the step loops, bit for bit, on ties and across scales;
- block-budget grouping (``block_budget_mb``: consecutive launches, same output), the knobs
  through ``adaptive_prune.backend("triton", ...)``, and their validation;
- the similarity blocks and row reductions the greedy and alignment kernels are built on;
- bf16 inputs, upcast to fp32 under the interpreter (which mishandles bf16);
- clear errors: bad arguments, similarity blocks that do not fit;
- ``prune`` / ``prune_batch`` end to end against the reference backend.

Without a GPU these run under the Triton interpreter (tests/conftest.py turns it on) on small
shapes; with CUDA the ``device`` fixture is CUDA and they run compiled. Buffers are poisoned.
GPU-only checks (bf16 tensor cores, the speed-target shape, host syncs): tests/test_triton_gpu.py.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

pytest.importorskip("triton")

from adaptive_prune.kernels import _common  # noqa: E402
from adaptive_prune.kernels import global_greedy as global_greedy_module  # noqa: E402
from adaptive_prune.kernels import greedy_select as greedy_select_module  # noqa: E402
from adaptive_prune.kernels import token_similarity as token_similarity_module  # noqa: E402
from adaptive_prune.kernels.global_greedy import global_greedy_fwd  # noqa: E402
from adaptive_prune.kernels.greedy_select import greedy_select_fwd  # noqa: E402
from adaptive_prune.kernels.pareto_select import pareto_select_fwd  # noqa: E402
from adaptive_prune.kernels.token_similarity import (  # noqa: E402
    similarity_blocks,
    token_similarity_fwd,
)

import adaptive_prune  # noqa: E402
from adaptive_prune.ops import reference as ref  # noqa: E402

pytestmark = [pytest.mark.interpreter, pytest.mark.usefixtures("poison")]

EPS = 1e-6
# similarity / score tolerances (fp32 accumulation on both sides; fp16 inputs are exact in fp32)
ATOL = {torch.float32: 2e-6, torch.float16: 2e-6}
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16")]
# image sizes: one token, empty, odd sizes, different sizes
COUNTS = [1, 70, 0, 79, 37, 5]


def tokens(counts, dim=40, seed=0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(sum(counts), dim, generator=g, dtype=torch.float64)
    cu = [0]
    for c in counts:
        cu.append(cu[-1] + c)
    return x.to(dtype).to(device), torch.tensor(cu, dtype=torch.int64)


def brute_sim(x):
    xh = ref.normalize(x.cpu(), EPS)
    return xh @ xh.T


# --------------------------------------------------------------------------------------------
# token similarity
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gather", [False, True], ids=["images", "gathered-pool"])
def test_similarity_blocks(device, dtype, gather):
    x, cu = tokens(COUNTS, dtype=dtype, device=device)
    if gather:
        g = torch.Generator().manual_seed(1)
        rows = torch.randperm(x.shape[0], generator=g)[:150].to(device)
        seg = [0, 60, 60, 61, 150]
    else:
        rows, seg = None, cu.tolist()
    S, _, bases = similarity_blocks(x, seg, EPS, rows=rows)
    full = brute_sim(x[rows] if gather else x)
    for k in range(len(seg) - 1):
        a, e = seg[k], seg[k + 1]
        m = e - a
        blk = S[bases[k] : bases[k] + m * m].view(m, m).cpu()
        torch.testing.assert_close(blk, full[a:e, a:e], atol=ATOL[dtype], rtol=0)
        assert torch.equal(blk, blk.T)  # stored twice from one tile


def brute_reduce(x, qrows, qo, y, krows, ko, mode, grp=None):
    """One query at a time; keys ``y[krows[j]]``; ``grp`` = groups of the (shared) rows."""
    xh, yh = ref.normalize(x.cpu(), EPS), ref.normalize(y.cpu(), EPS)
    out = []
    for s in range(len(qo) - 1):
        for i in range(qo[s], qo[s + 1]):
            q = xh[qrows[i]]
            keys = list(range(ko[s], ko[s + 1]))
            if mode == "earlier_group_max":
                keys = [j for j in keys if grp[j] < grp[i]]
            if mode == "nearest_other_max":
                keys = [j for j in keys if int(krows[j]) != int(qrows[i])]
            if ko[s + 1] == ko[s]:
                out.append(0.0)
            elif not keys:
                out.append(float("-inf"))
            else:
                c = yh[krows[keys]] @ q
                out.append(float(c.mean() if mode == "mean" else c.max()))
    return torch.tensor(out, dtype=torch.float32)


@pytest.mark.parametrize("mode", ["mean", "max", "earlier_group_max", "nearest_other_max"])
def test_row_reductions(device, mode):
    x, _ = tokens([120], dim=48, seed=2, device=device)
    if mode in ("mean", "max"):
        y, _ = tokens([25], dim=48, seed=3, device=device)
        qrows = torch.randperm(120)[:70]
        qo, ko = [0, 30, 30, 70], [0, 9, 9, 9]  # the last segment has no keys
        got = token_similarity_fwd(
            x, torch.tensor(qo), y, torch.tensor(ko), mode, EPS, q_rows=qrows.to(device)
        )
        want = brute_reduce(x, qrows, qo, y, torch.arange(25), ko, mode)
    else:  # self-similarity inside each segment: queries and keys are the same rows
        qrows = torch.randperm(120)[:70]
        qo = [0, 40, 41, 70]  # the one-token segment has no "other" key
        grp = torch.randint(0, 4, (70,))
        got = token_similarity_fwd(
            x, torch.tensor(qo), x, torch.tensor(qo), mode, EPS,
            q_rows=qrows.to(device), k_rows=qrows.to(device),
            q_groups=grp.to(device), k_groups=grp.to(device),
        )  # fmt: skip
        want = brute_reduce(x, qrows, qo, x, qrows, qo, mode, grp)
    torch.testing.assert_close(got.cpu(), want, atol=2e-6, rtol=0)


# --------------------------------------------------------------------------------------------
# stage 1 and stage 2 greedy loops
# --------------------------------------------------------------------------------------------
# greedy loop variants: one pick per step, and the windowed engine (kernels/_maxmin.py) with a
# small and the default window
WINDOWS = [pytest.param(0, id="step"), pytest.param(16, id="win16"), pytest.param(64, id="win64")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block", [None, 32], ids=["registers", "chunked"])
@pytest.mark.parametrize(
    "mode, window",
    [("maxmin", w.values[0]) for w in WINDOWS] + [("maxsum", 0)],  # max-sum: one pick per step
    ids=[f"maxmin-{w.id}" for w in WINDOWS] + ["maxsum-step"],
)
def test_greedy_select_matches_reference(device, dtype, mode, block, window):
    x, cu = tokens(COUNTS, dtype=dtype, device=device)
    budgets = torch.tensor([1, 20, 0, 79, 50, 9])  # a full image, a budget above m_k
    got = greedy_select_fwd(x, cu, budgets, mode, EPS, block=block, window=window)
    want = ref.greedy_select(x.cpu(), cu, budgets, mode, EPS)
    assert torch.equal(got.cpu(), want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block", [None, 32], ids=["registers", "chunked"])
@pytest.mark.parametrize("window", WINDOWS)
def test_global_greedy_matches_reference(device, dtype, block, window):
    x, _ = tokens([300], dtype=dtype, device=device)
    pool = torch.randperm(300)[:200].to(device)
    po = torch.tensor([0, 90, 90, 91, 200, 200])
    reserved = torch.zeros(200, dtype=torch.bool)
    reserved[[0, 5, 17, 100, 150]] = True  # request 2 (one token) has none: first pick = 0
    picks = [40, 0, 1, 109, 0]  # the last non-empty request picks its whole pool
    got_o, got_g, _ = global_greedy_fwd(
        x, pool, po, reserved.to(device), picks, EPS, block=block, window=window
    )
    want_o, want_g, _ = ref.global_greedy(x.cpu(), pool.cpu(), po, reserved, picks, EPS)
    assert torch.equal(got_o.cpu(), want_o)
    torch.testing.assert_close(got_g.cpu(), want_g, atol=2e-6, rtol=0)


def tie_tokens(seed, n=230, dim=8):
    """Rows drawn from 25 directions, some scaled: exact and near ties everywhere."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(25, dim, generator=g)[torch.randint(0, 25, (n,), generator=g)]
    return x * torch.randint(1, 4, (n, 1), generator=g).float(), g


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("block", [None, 64], ids=["one-chunk", "chunked"])
def test_windowed_greedy_equals_step_loop_on_ties(device, seed, block):
    """The windowed engine makes the step loop's picks and gains bit for bit, ties included
    (both read the same similarity block): picks beyond a window's bound are never taken."""
    x, g = tie_tokens(seed)
    x = x.to(device)
    cu = torch.tensor([0, 90, 91, 91, 230])
    budgets = torch.tensor([90, 1, 0, 100 + seed])
    step = greedy_select_fwd(x, cu, budgets, "maxmin", EPS, block=block, window=0)
    pool = torch.randperm(230, generator=g)[:180].to(device)
    po = torch.tensor([0, 100, 180])
    reserved = torch.zeros(180, dtype=torch.bool)
    if seed % 2:
        reserved[[3, 7, 130]] = True  # else no reserved token: every distance starts at +inf
    picks = [100, 75 - seed]
    reserved = reserved.to(device)
    s_o, s_g, _ = global_greedy_fwd(x, pool, po, reserved, picks, EPS, block=block, window=0)
    for window in (16, 64):
        got = greedy_select_fwd(x, cu, budgets, "maxmin", EPS, block=block, window=window)
        assert torch.equal(got, step), window
        o, gains, _ = global_greedy_fwd(
            x, pool, po, reserved, picks, EPS, block=block, window=window
        )
        assert torch.equal(o, s_o), window
        assert torch.equal(gains, s_g), window


def test_windowed_greedy_equals_step_loop_across_scales(device):
    """Running distances spread over many binades (perturbations from 1 down to 1e-6, exact
    duplicates whose distance rounds to 0, -0.0 or slightly below 0): the engine's radix select
    of the window edge (8 key bits per pass below the live keys' common prefix) still makes the
    step loop's picks and gains, bit for bit."""
    g = torch.Generator().manual_seed(7)
    base = torch.randn(12, 24, generator=g)
    rows = []
    for i in range(200):
        scale = 10.0 ** -(i % 7)  # 1 ... 1e-6
        noise = torch.randn(24, generator=g) * scale * (0 if i % 11 == 0 else 1)
        rows.append(base[i % 12] * (1 + i % 3) + noise)
    x = torch.stack(rows).to(device)
    cu = torch.tensor([0, 120, 200])
    budgets = torch.tensor([110, 80])
    step = greedy_select_fwd(x, cu, budgets, "maxmin", EPS, block=64, window=0)
    pool = torch.randperm(200, generator=g)[:170].to(device)
    po = torch.tensor([0, 170])
    reserved = torch.zeros(170, dtype=torch.bool, device=device)
    s_o, s_g, _ = global_greedy_fwd(x, pool, po, reserved, [160], EPS, block=64, window=0)
    assert (s_g[1:] < 1e-6).any() and (s_g[1:] > 0.1).any()  # the spread is really there
    for window in (16, 32):
        got = greedy_select_fwd(x, cu, budgets, "maxmin", EPS, block=64, window=window)
        assert torch.equal(got, step), window
        o, gains, _ = global_greedy_fwd(x, pool, po, reserved, [160], EPS, block=64, window=window)
        assert torch.equal(o, s_o), window
        assert torch.equal(gains, s_g), window


@pytest.mark.parametrize("window", [0, 16])
def test_greedy_launchers_split_batches_over_the_block_budget(device, monkeypatch, window):
    """``block_budget_mb`` bounds the similarity blocks of one launch of the block engine: the
    segments run in consecutive groups (a segment over the budget alone), with the same output.
    (The default engine, ``"auto"``, would take the row engine for a segment over the budget:
    tests/test_triton_engine.py.)"""
    x, _ = tokens([30, 1, 45, 0, 20, 38], device=device)
    cu = torch.tensor([0, 30, 31, 76, 76, 96, 134])
    bud = torch.tensor([7, 1, 20, 0, 5, 38])
    g = torch.Generator().manual_seed(3)
    pool = torch.randperm(134, generator=g)[:110].to(device)
    po = torch.tensor([0, 40, 41, 41, 90, 110])  # a one-token and an empty request
    reserved = torch.zeros(110, dtype=torch.bool)
    reserved[[0, 5, 60, 95]] = True
    reserved = reserved.to(device)
    picks = [30, 1, 0, 35, 12]
    want_rank = greedy_select_fwd(x, cu, bud, "maxmin", EPS, window=window)
    want = global_greedy_fwd(x, pool, po, reserved, picks, EPS, window=window)
    calls = []
    real = token_similarity_module.similarity_blocks

    def spy(xx, seg, *a, **k):
        calls.append(len(seg) - 1)
        return real(xx, seg, *a, **k)

    # 0.01 MiB = 10485 B: blocks of 4 m^2 B group as images [30, 1] [45, 0, 20] [38] and
    # requests [40, 1, 0] [49] [20]; 0 MiB: every segment alone (empty ones launch nothing)
    for mb, groups in (("0.01", {"stage 1": [2, 3, 1], "stage 2": [3, 1, 1]}),
                       ("0", {"stage 1": [1] * 5, "stage 2": [1] * 4})):  # fmt: skip
        monkeypatch.setattr(greedy_select_module, "similarity_blocks", spy)
        monkeypatch.setattr(global_greedy_module, "similarity_blocks", spy)
        calls.clear()
        kw = dict(window=window, block_budget_mb=float(mb), engine="blocks")
        got_rank = greedy_select_fwd(x, cu, bud, "maxmin", EPS, **kw)
        assert torch.equal(got_rank, want_rank)
        assert calls == groups["stage 1"], (mb, calls)
        calls.clear()
        got = global_greedy_fwd(x, pool, po, reserved, picks, EPS, **kw)
        assert all(torch.equal(a, w) for a, w in zip(got, want)) and len(got) == 3
        assert calls == groups["stage 2"], (mb, calls)
    with pytest.raises(ValueError, match="block_budget_mb"):
        greedy_select_fwd(x, cu, bud, "maxmin", EPS, block_budget_mb=-1.0)


def test_greedy_window_is_checked():
    assert _common.check_window(None) == _common.DEFAULT_WINDOW == 64
    assert _common.check_window(32) == 32
    for bad in (100, -16, 8):
        with pytest.raises(ValueError, match="power of two"):
            _common.check_window(bad)
    with pytest.raises(ValueError, match="power of two"):
        _common.check_window(48)
    with pytest.raises(ValueError, match="power of two"):
        _common.check_window(256)
    assert _common.check_window(0) == 0 and _common.check_window(128) == 128


def test_global_greedy_rejects_bad_picks(device):
    x, _ = tokens([10], device=device)
    with pytest.raises(ValueError, match="num_picks"):
        global_greedy_fwd(x, torch.arange(10, device=device), torch.tensor([0, 10]),
                          torch.zeros(10, dtype=torch.bool, device=device), [11], EPS)  # fmt: skip
    with pytest.raises(ValueError, match="mode"):
        greedy_select_fwd(x, torch.tensor([0, 10]), torch.tensor([3]), "minmax", EPS)


def test_blocks_that_do_not_fit_raise_a_clear_out_of_memory_error(device, monkeypatch):
    """An allocation failure of the similarity blocks names them, their size and the knob."""
    from adaptive_prune.kernels import token_similarity

    real_empty = token_similarity.empty

    def tight(shape, dtype, dev):  # a device that holds nothing bigger than 1000 entries
        n = shape if isinstance(shape, int) else math.prod(shape)
        if n > 1000:
            raise torch.OutOfMemoryError(f"Tried to allocate {n * 4} bytes")
        return real_empty(shape, dtype, dev)

    monkeypatch.setattr(token_similarity, "empty", tight)
    x, _ = tokens([20, 40], device=device)
    keep = torch.zeros(60, dtype=torch.bool, device=device)
    with pytest.raises(torch.OutOfMemoryError, match=r"stage-2 pool .*40 x 40 fp32.*lam"):
        global_greedy_fwd(x, torch.arange(60, device=device), torch.tensor([0, 20, 60]), keep,
                          [5, 5], EPS)  # fmt: skip
    with pytest.raises(torch.OutOfMemoryError, match=r"stage-1 per-image .*Tried to allocate"):
        greedy_select_fwd(x, torch.tensor([0, 20, 60]), torch.tensor([3, 3]), "maxmin", EPS)
    small, _ = tokens([10, 20], device=device)  # 500 entries: fits
    got = greedy_select_fwd(small, torch.tensor([0, 10, 30]), torch.tensor([3, 3]), "maxmin", EPS)
    assert int((got >= 0).sum()) == 6  # ranks: 3 picks per image


def test_pareto_rejects_bad_k(device):
    with pytest.raises(ValueError, match="k has"):
        pareto_select_fwd(torch.rand(4, device=device), torch.rand(4, device=device),
                          torch.tensor([0, 4]), [1, 2])  # fmt: skip


# --------------------------------------------------------------------------------------------
# the knobs through the routing layer, bf16 under the interpreter
# --------------------------------------------------------------------------------------------
def test_knobs_reach_the_launchers_through_backend(device, monkeypatch):
    """``backend("triton", greedy_window=..., block_budget_mb=...)`` changes how the kernels
    run (one launch per image under a 0 MiB budget), never the result."""
    x, cu = tokens([30, 1, 45, 20], device=device)
    bud = torch.tensor([7, 1, 20, 5], device=device)
    want = ref.greedy_select(x.cpu(), cu, bud.cpu(), "maxmin", EPS)
    calls = []
    real = token_similarity_module.similarity_blocks

    def spy(xx, seg, *a, **k):
        calls.append(len(seg) - 1)
        return real(xx, seg, *a, **k)

    monkeypatch.setattr(greedy_select_module, "similarity_blocks", spy)
    for knobs, launches in (({}, [4]), ({"greedy_window": 0, "block_budget_mb": 0}, [1] * 4)):
        calls.clear()
        with adaptive_prune.backend("triton", **knobs):
            got = torch.ops.adaptive_prune.greedy_select(x, cu, bud, "maxmin", EPS)
        assert torch.equal(got.cpu(), want), knobs
        assert calls == launches, knobs


def test_bfloat16_is_upcast_under_the_interpreter():
    """The interpreter mishandles bf16, so the kernels see the exact fp32 upcast there: the
    results equal the reference's on the same (fp32-representable) values."""
    if not _common.INTERPRET:
        pytest.skip("on a GPU bf16 runs on the tensor cores (tests/test_triton_gpu.py)")
    x, cu = tokens([1, 30, 0, 23, 5], dtype=torch.bfloat16)
    assert _common.kernel_input(x).dtype == torch.float32
    assert torch.equal(_common.kernel_input(x), x.float())
    t, _ = tokens([4], seed=5, dtype=torch.bfloat16)
    ro, to = torch.tensor([0, 5]), torch.tensor([0, 4])
    bud = torch.tensor([1, 9, 0, 23, 2])
    pool = torch.arange(0, 59, 2)
    po = torch.tensor([0, 30])
    reserved = torch.zeros(30, dtype=torch.bool)
    reserved[[0, 3]] = True
    calls = {
        "budget_scores": (x, cu, ro, t, to, 0.05, 10.0, EPS, "max"),
        "greedy_select": (x, cu, bud, "maxmin", EPS),
        "global_greedy": (x, pool, po, reserved, [12], EPS),
        "token_alignment": (x, pool, po, t, to, "max", EPS),
    }
    for name, args in calls.items():
        with adaptive_prune.backend("triton"):
            got = getattr(torch.ops.adaptive_prune, name)(*args)
        want = getattr(ref, name)(*[a.float() if isinstance(a, torch.Tensor) and
                                    a.dtype == torch.bfloat16 else a for a in args])  # fmt: skip
        got = got if isinstance(got, tuple) else (got,)
        want = want if isinstance(want, tuple) else (want,)
        for g, w in zip(got, want):
            if g.dtype.is_floating_point:
                torch.testing.assert_close(g, w.to(g.dtype), atol=1e-5, rtol=1e-5, msg=name)
            else:
                assert torch.equal(g, w), name


CASES = {
    "no-text": dict(),
    "text": dict(text=True),
    "text-q0": dict(text=True, min_per_image=0),
    "q0": dict(min_per_image=0),
    "maxsum-text": dict(text=True, intra="maxsum"),
    "align-max-q2": dict(text=True, align="max", min_per_image=2),
    "keep-all": dict(keep_ratio=1.0),
}


# every case in fp32, a subset in fp16 (the interpreter is slow); a subset on the row engine
# (the default engine takes it only above the block budget)
PARAMS = (
    [pytest.param(c, torch.float32, None, id=f"{c}-fp32") for c in CASES]
    + [pytest.param(c, torch.float16, None, id=f"{c}-fp16") for c in ("text", "q0")]
    + [pytest.param(c, torch.float32, "rows", id=f"{c}-fp32-rows") for c in ("text", "q0")]
)


@pytest.mark.parametrize("case, dtype, engine", PARAMS)
def test_prune_matches_reference(device, case, dtype, engine):
    kw = dict(CASES[case])
    x, cu = tokens([1, 60, 0, 83, 37, 5], dtype=dtype, device=device)
    if kw.pop("text", False):
        kw["text"] = tokens([9], seed=3, dtype=dtype, device=device)[0]
    kw.setdefault("keep_ratio", 0.25)
    with adaptive_prune.backend("triton", **({"greedy_engine": engine} if engine else {})):
        got = adaptive_prune.prune(x, cu, return_diagnostics=True, **kw)
    with adaptive_prune.backend("reference"):
        want = adaptive_prune.prune(x, cu, return_diagnostics=True, **kw)
    assert torch.equal(got.indices.cpu(), want.indices.cpu())
    assert torch.equal(got.diagnostics.budgets.cpu(), want.diagnostics.budgets.cpu())
    assert got.diagnostics.pool_size == want.diagnostics.pool_size
    assert got.diagnostics.candidates == want.diagnostics.candidates


@pytest.mark.parametrize("engine", ["blocks", "rows"])
def test_prune_computes_row_norms_once(device, monkeypatch, engine):
    """Inside one ``prune`` (``backends.call_scope``) the greedy and refinement launchers share
    one pass of inverse row norms over ``vision`` (gathering the pool's rows from it), with the
    same result as a norm pass per launcher; outside a call nothing is kept."""
    x, cu = tokens([60, 1, 83, 37], device=device)
    text = tokens([9], seed=3, device=device)[0]
    passes = []
    real = token_similarity_module._inv_norms
    monkeypatch.setattr(
        token_similarity_module, "_inv_norms", lambda *a: passes.append(a[1]) or real(*a)
    )
    with adaptive_prune.backend("triton", greedy_engine=engine):
        got = adaptive_prune.prune(x, cu, text, keep_ratio=0.25)
        assert passes == [x.shape[0]]  # one pass, over every row of vision
        passes.clear()
        monkeypatch.setattr(token_similarity_module, "shared_inv_norms", contextlib.nullcontext)
        alone = adaptive_prune.prune(x, cu, text, keep_ratio=0.25)
        assert len(passes) >= 3  # stage 1, the pool (gathered) and the refinement
    assert torch.equal(got.indices.cpu(), alone.indices.cpu())
    assert token_similarity_module._SHARED.get() is None


def test_prune_batch_matches_reference(device):
    x, cu = tokens([40, 1, 55, 0, 30, 70, 20], device=device)
    ro = torch.tensor([0, 2, 2, 5, 7])  # request 1 has no image
    t, _ = tokens([12], seed=4, device=device)
    texts = [t[:5], None, t[5:], None]  # request 3 has no text
    kw = dict(keep_ratio=[0.3, 0.5, 0.2, 1.0])  # the last request keeps everything
    with adaptive_prune.backend("triton"):
        got = adaptive_prune.prune_batch(x, cu, ro, texts, **kw)
    with adaptive_prune.backend("reference"):
        want = adaptive_prune.prune_batch(x, cu, ro, texts, **kw)
    assert torch.equal(got.indices.cpu(), want.indices.cpu())
    assert torch.equal(got.per_image.cpu(), want.per_image.cpu())


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # interpreter
@pytest.mark.parametrize("where", ["vision", "text"])
def test_non_finite_input_is_reported_after_stage_0(device, where):
    """The finiteness checks are read with the composition's one read, after the Triton
    budget-score kernels ran on the bad values: still the clear error, nothing hangs."""
    x, cu = tokens([30, 0, 25], device=device)
    t = tokens([6], seed=3, device=device)[0]
    (x if where == "vision" else t)[4, 7] = float("nan")
    with pytest.raises(ValueError, match=f"{where} contains NaN or Inf values .first bad row: 4"):
        with adaptive_prune.backend("triton"):
            adaptive_prune.prune(x, cu, t, keep_ratio=0.3)
