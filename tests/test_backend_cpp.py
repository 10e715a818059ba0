"""The C++ CPU core (csrc/, adaptive_prune._core via adaptive_prune.backends.cpp) against the
pure-PyTorch reference.

- Every C++ op gives the reference's result: identical picks on tie-free inputs (and, where
  random inputs do hold a near-tie, the first difference is provably one: the fp64 scores of
  the two choices are within 1e-5), gains and scores within fp32 tolerance, identical
  allocations and Pareto masks (exact float64 logic, ties included).
- The projection filter of the max-min greedy never changes a result: every ``proj_dim``
  gives bitwise the same output as the dense greedy, on real tokens with near-duplicates.
- Results do not depend on the thread count (parallel over images / requests).
- ``opcheck`` on the public ops served by the C++ kernels; the C++ implementations
  (``backends.cpp.TABLE``) take every input dtype/layout the ops accept and return the public
  ops' output dtypes and shapes; ``_core`` itself takes and returns numpy arrays.
- Bad arguments raise ValueError (TypeError for a wrong dtype) naming the argument; float64
  stays on the reference; the package imports, and the first CPU call warns once (cause and
  fix), when the extension is missing or broken; nothing warns when it is disabled.

Skipped when the extension is not built, unless ``ADAPTIVE_PRUNE_REQUIRE_EXT=1`` (CI), which
turns a missing extension into a failure.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from _data import offsets, random_tokens, real_tokens
from hypothesis import given, settings
from hypothesis import strategies as st

import adaptive_prune as ap
from adaptive_prune import backends, ops
from adaptive_prune.backends import cpp
from adaptive_prune.ops import reference as ref

REQUIRE = os.environ.get("ADAPTIVE_PRUNE_REQUIRE_EXT", "0") == "1"
if not cpp.AVAILABLE and not REQUIRE:
    pytest.skip(f"C++ core not available: {cpp.REASON}", allow_module_level=True)
# ops without a C++ kernel yet (the routing serves them with the reference)
NOT_IN_CORE: set[str] = set()
SERVED_OPS = [name for name in ops.ALL_OPS if name not in NOT_IN_CORE]
_op = torch.ops.adaptive_prune


class _Cpp:
    """``backends.cpp.TABLE`` entries; the two greedy ops take ``proj_dim`` as a last
    positional argument here (the knob is keyword-only in TABLE)."""

    def __getattr__(self, name):
        fn = cpp.TABLE[name]
        if name in ("greedy_select", "global_greedy"):
            return lambda *args: fn(*args[:-1], proj_dim=args[-1])
        return fn


CPP = _Cpp()
EPS = 1e-6
TIE = 1e-5  # two fp64 scores closer than this are a tie: either choice is valid
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def test_extension_loaded():
    assert cpp.AVAILABLE, f"the C++ core is required here but not usable: {cpp.REASON}"
    st_ = cpp.status()
    assert st_["available"] and st_["path"] and set(st_["ops"]) == set(SERVED_OPS)
    assert cpp.AVAILABLE and cpp.REASON is None
    x = torch.ones(2, 2)
    with ap.backend("auto"):
        for name in SERVED_OPS:
            assert backends.serving(name, "cpu", (x,))[0] == "cpp"


# --------------------------------------------------------------------------------------------
# helpers: replay a greedy in fp64 to tell a real difference from a tie
# --------------------------------------------------------------------------------------------
def _unit64(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return x / x.norm(dim=-1, keepdim=True).clamp_min(EPS)


def _order_from_rank(rank: torch.Tensor) -> list[int]:
    picked = torch.nonzero(rank >= 0).flatten()
    return picked[torch.argsort(rank[picked])].tolist()


def _assert_same_or_tie(want: list[int], got: list[int], score_at, what: str) -> None:
    """Same pick sequence, or the first difference is a tie of the fp64 scores."""
    assert len(want) == len(got), f"{what}: {len(got)} picks, reference {len(want)}"
    for t, (a, b) in enumerate(zip(want, got)):
        if a != b:
            s = score_at(want[:t])
            gap = abs(float(s[a]) - float(s[b]))
            assert gap <= TIE, (
                f"{what}: step {t} picks {b}, reference {a}; fp64 scores {float(s[b])} vs "
                f"{float(s[a])} differ by {gap:.2e} (not a tie)"
            )
            return


def _maxmin_scores(xh: torch.Tensor, first_score: torch.Tensor | None):
    """score_at(prefix): what the greedy maximises after the picks `prefix` (fp64)."""

    def score_at(prefix):
        if not prefix:
            return first_score
        return (1.0 - xh @ xh[prefix].T).min(dim=1).values

    return score_at


def _check_greedy_select(x, cu, budgets, mode, rank_ref, rank_got):
    cu_l = cu.tolist()
    for k in range(len(cu_l) - 1):
        a, e = cu_l[k], cu_l[k + 1]
        want, got = _order_from_rank(rank_ref[a:e]), _order_from_rank(rank_got[a:e])
        xh = _unit64(x[a:e].float())
        s = xh.sum(0)
        first = xh @ (s / s.norm().clamp_min(EPS))
        if mode == "maxmin":
            score_at = _maxmin_scores(xh, first)
        else:

            def score_at(prefix, xh=xh, first=first):
                return first if not prefix else (1.0 - xh @ xh[prefix].T).sum(dim=1)

        _assert_same_or_tie(want, got, score_at, f"image {k}")


def _tie_free(x, cu, budgets) -> bool:
    """Whether no max-min decision of the reference (fp64) lies within 1e-4 of a tie (the
    spec's definition of a tie-free input)."""
    cu_l, b_l = cu.tolist(), budgets.tolist()
    for k in range(len(cu_l) - 1):
        a, e = cu_l[k], cu_l[k + 1]
        b = min(b_l[k], e - a)
        if b <= 0:
            continue
        xh = _unit64(x[a:e].float())
        s = xh.sum(0)
        score = xh @ (s / s.norm())
        picked = torch.zeros(e - a, dtype=torch.bool)
        acc = None
        for _ in range(b):
            sc = score.masked_fill(picked, -float("inf"))
            top = torch.topk(sc, min(2, int((~picked).sum()))).values
            if top.numel() == 2 and float(top[0] - top[1]) < 1e-4:
                return False
            j = int(torch.argmax(sc))
            picked[j] = True
            d = 1.0 - xh @ xh[j]
            acc = d if acc is None else torch.minimum(acc, d)
            score = acc
    return True


# --------------------------------------------------------------------------------------------
# stage 1: greedy_select
# --------------------------------------------------------------------------------------------
SHAPES = {
    "1tok": [1],
    "577": [577],
    "mixed": [64, 1, 0, 129, 33],
    "3x96": [96, 96, 96],
}


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
@pytest.mark.parametrize("mode", ["maxmin", "maxsum"])
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_greedy_select_matches_reference(shape, mode, dtype):
    counts = SHAPES[shape]
    x, cu = random_tokens(counts, dim=48, seed=len(shape), dtype=DTYPES[dtype])
    g = torch.Generator().manual_seed(3)
    budgets = torch.tensor([int(torch.randint(0, c + 1, (1,), generator=g)) for c in counts])
    if shape == "577":
        budgets = torch.tensor([100 if mode == "maxsum" else 577])
    want = ref.greedy_select(x, cu, budgets, mode, EPS)
    got = _op.greedy_select(x, cu, budgets, mode, EPS)  # public op -> C++ kernel
    assert got.dtype == torch.int64 and got.shape == want.shape
    assert torch.equal((got >= 0).sum(), (want >= 0).sum())
    _check_greedy_select(x, cu, budgets, mode, want, got)
    for pd in (0, 3, 16):
        assert torch.equal(CPP.greedy_select(x, cu, budgets, mode, EPS, pd), got)


def test_greedy_select_identical_on_tie_free_input():
    counts = [40, 17, 0, 63, 25]
    for seed in range(20):  # the first seed whose reference trajectory holds no near-tie
        x, cu = random_tokens(counts, dim=24, seed=100 + seed)
        budgets = torch.tensor([20, 9, 0, 30, 12])
        if _tie_free(x, cu, budgets):
            break
    else:
        pytest.fail("no tie-free input found")
    want = ref.greedy_select(x, cu, budgets, "maxmin", EPS)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        xd = x.to(dtype)
        if dtype != torch.float32 and not _tie_free(xd, cu, budgets):
            continue
        want_d = ref.greedy_select(xd, cu, budgets, "maxmin", EPS)
        assert torch.equal(_op.greedy_select(xd, cu, budgets, "maxmin", EPS), want_d)
    assert torch.equal(_op.greedy_select(x, cu, budgets, "maxmin", EPS), want)


# --------------------------------------------------------------------------------------------
# stage 2: global_greedy
# --------------------------------------------------------------------------------------------
def _random_pool(seed, sizes, reserve_every, dim=32, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    N = 3 * sum(sizes) + 5
    x = torch.randn(N, dim, generator=g, dtype=torch.float64).to(dtype)
    pool = torch.randperm(N, generator=g)[: sum(sizes)]
    po = offsets(sizes)
    reserved = torch.zeros(sum(sizes), dtype=torch.bool)
    if reserve_every:
        reserved[::reserve_every] = True
    return x, pool, po, reserved


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
@pytest.mark.parametrize(
    "case",
    [
        ([50], 7, [30]),  # one request
        ([40, 0, 90, 12], 5, [25, 0, 60, 12]),  # several, one empty, one taking the whole pool
        ([33, 20], 0, [20, 7]),  # no reserved token: start from position 0
    ],
    ids=["one", "several", "no-reserved"],
)
def test_global_greedy_matches_reference(case, dtype):
    sizes, every, picks = case
    x, pool, po, reserved = _random_pool(sum(sizes), sizes, every, dtype=DTYPES[dtype])
    o_ref, g_ref, _ = ref.global_greedy(x, pool, po, reserved, picks, EPS)
    o_got, g_got, d_got = _op.global_greedy(x, pool, po, reserved, picks, EPS)
    assert o_got.shape == o_ref.shape and g_got.dtype == torch.float32
    po_l = po.tolist()
    off = [0]
    for p in picks:
        off.append(off[-1] + p)
    for r in range(len(sizes)):
        a = po_l[r]
        xh = _unit64(x[pool[a : po_l[r + 1]]].float())
        want = (o_ref[off[r] : off[r + 1]] - a).tolist()
        got = (o_got[off[r] : off[r + 1]] - a).tolist()

        def score_at(prefix, xh=xh):  # prefix: the start set, then the greedy picks
            if not prefix:
                return torch.full((xh.shape[0],), float("inf"), dtype=xh.dtype)
            return (1.0 - xh @ xh[prefix].T).min(dim=1).values

        _assert_same_or_tie(want, got, score_at, f"request {r}")
        if want == got:
            torch.testing.assert_close(
                g_got[off[r] : off[r + 1]], g_ref[off[r] : off[r + 1]], atol=1e-5, rtol=0
            )
    for pd in (0, 2, 16):
        o_pd, g_pd, d_pd = CPP.global_greedy(x, pool, po, reserved, picks, EPS, pd)
        assert torch.equal(o_pd, o_got) and torch.equal(g_pd, g_got) and torch.equal(d_pd, d_got)


# --------------------------------------------------------------------------------------------
# the projection filter never changes a result; neither does the thread count
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real():
    x, cu, _ = real_tokens()
    # near-duplicates make the filter's job hard: two jittered copies of the first image
    g = torch.Generator().manual_seed(0)
    a, e = int(cu[0]), int(cu[1])
    dup = [
        x[a:e]
        + 0.02
        * x[a:e].norm(dim=1, keepdim=True)
        * torch.randn(e - a, x.shape[1], generator=g)
        / x.shape[1] ** 0.5
        for _ in range(2)
    ]
    x = torch.cat([x, *dup])
    cu = torch.cat([cu, cu[-1:] + (e - a), cu[-1:] + 2 * (e - a)])
    return x, cu


def test_projection_filter_is_exact_on_real_tokens(real):
    x, cu = real
    counts = (cu[1:] - cu[:-1]).tolist()
    budgets = torch.tensor([max(1, c // 2) for c in counts])
    dense = CPP.greedy_select(x, cu, budgets, "maxmin", EPS, 0)
    for pd in (-1, 1, 4, 16, 64):
        assert torch.equal(CPP.greedy_select(x, cu, budgets, "maxmin", EPS, pd), dense), pd
    # stage 2 over the stage-1 picks of every image, as the adaptive method builds its pool
    order = [
        i
        for k in range(len(counts))
        for i in (torch.tensor(_order_from_rank(dense[cu[k] : cu[k + 1]])) + cu[k]).tolist()
    ]
    pool = torch.tensor(order)
    reserved = torch.zeros(len(order), dtype=torch.bool)
    starts = torch.cumsum(torch.tensor([0] + budgets.tolist()[:-1]), 0)
    reserved[starts] = True
    po = torch.tensor([0, len(order)])
    P = [int(0.75 * len(order))]
    o0, g0, d0 = CPP.global_greedy(x, pool, po, reserved, P, EPS, 0)
    for pd in (-1, 1, 4, 16, 64):
        o, g, d = CPP.global_greedy(x, pool, po, reserved, P, EPS, pd)
        assert torch.equal(o, o0) and torch.equal(g, g0) and torch.equal(d, d0), pd


def test_dense_fallback_on_isotropic_tokens_is_exact():
    # iid Gaussian rows: every distance alike, the tests pass almost everything, the engine
    # switches to dense after a window of picks; the result must not change
    x, _ = random_tokens([400], dim=256, seed=9)
    pool = torch.arange(400)
    po = torch.tensor([0, 400])
    reserved = torch.zeros(400, dtype=torch.bool)
    reserved[::50] = True
    o0, g0, _ = CPP.global_greedy(x, pool, po, reserved, [400], EPS, 0)
    o1, g1, _ = CPP.global_greedy(x, pool, po, reserved, [400], EPS, 16)
    assert torch.equal(o0, o1) and torch.equal(g0, g1)
    cu = torch.tensor([0, 400])
    b = torch.tensor([400])
    assert torch.equal(
        CPP.greedy_select(x, cu, b, "maxmin", EPS, 16),
        CPP.greedy_select(x, cu, b, "maxmin", EPS, 0),
    )


def test_thread_count_does_not_change_results(real):
    x, cu = real
    counts = (cu[1:] - cu[:-1]).tolist()
    ro = torch.tensor([0, 4, len(counts)])
    budgets = torch.tensor([max(1, c // 3) for c in counts])
    text = x[:5] + 0.1
    to = torch.tensor([0, 5, 5])
    before = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            res = ap.prune_batch(x, cu, ro, text, to, keep_ratio=0.2)
            outs.append(
                (
                    CPP.greedy_select(x, cu, budgets, "maxmin", EPS, -1),
                    CPP.budget_scores(x, cu, ro, None, None, 0.05, 10.0, EPS, "mean"),
                    res.indices,
                )
            )
    finally:
        torch.set_num_threads(before)
    (r1, s1, i1), (r2, s2, i2) = outs
    assert torch.equal(r1, r2) and torch.equal(i1, i2)
    for a, b in zip(s1, s2):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------------------------
# stage 0, allocation, Pareto
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
@pytest.mark.parametrize("with_text", [False, True], ids=["no-text", "text"])
@pytest.mark.parametrize("align", ["mean", "max"])
def test_budget_scores_matches_reference(dtype, with_text, align):
    counts = [50, 0, 1, 77, 20, 33, 2]
    x, cu = random_tokens(counts, dim=40, seed=5, dtype=DTYPES[dtype])
    ro = torch.tensor([0, 1, 4, 4, 7])  # includes an empty request
    text = torch.randn(9, 40, generator=torch.Generator().manual_seed(1)).to(DTYPES[dtype])
    to = torch.tensor([0, 3, 3, 3, 9]) if with_text else None
    args = (x, cu, ro, text if with_text else None, to, 0.05, 10.0, EPS, align)
    want = ref.budget_scores(*args)
    got = _op.budget_scores(*args)
    assert len(got) == len(want) == 6
    for w, gv, name in zip(want, got, ["d_intra", "mult", "att", "d_inter", "mu", "a"]):
        assert gv.dtype == torch.float32 and gv.shape == w.shape, name
        torch.testing.assert_close(gv, w, atol=2e-5, rtol=2e-5, msg=name)
    if with_text:  # the alignment is the C++ token_alignment's, bitwise, on every token
        rows = torch.arange(x.shape[0])
        a = _op.token_alignment(x, rows, cu[ro], text, to, align, EPS)
        assert torch.equal(got[5], a)


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_token_alignment_matches_reference(dtype, reduce):
    x, _ = random_tokens([300], dim=40, seed=6, dtype=DTYPES[dtype])
    g = torch.Generator().manual_seed(3)
    rows = torch.randint(0, 300, (120,), generator=g)
    row_off = torch.tensor([0, 50, 50, 90, 120])  # includes an empty segment
    text = torch.randn(11, 40, generator=g).to(DTYPES[dtype])
    text_off = torch.tensor([0, 4, 6, 6, 11])  # request 2 has no text: zeros
    args = (x, rows, row_off, text, text_off, reduce, EPS)
    want = ref.token_alignment(*args)
    got = _op.token_alignment(*args)
    assert got.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert torch.equal(got[50:90], torch.zeros(40))


def _alloc_case(weights, caps, mins, totals):
    return (
        torch.tensor([w for ws in weights for w in ws], dtype=torch.float32),
        torch.tensor([c for cs in caps for c in cs], dtype=torch.int64),
        torch.tensor([m for ms in mins for m in ms], dtype=torch.int64),
        offsets([len(c) for c in caps]),  # request offsets over images
        torch.tensor(totals, dtype=torch.int64),
    )


@st.composite
def alloc_requests(draw):
    R = draw(st.integers(1, 3))
    ws, cs, ms, tots = [], [], [], []
    for _ in range(R):
        n = draw(st.integers(0, 6))
        cap = draw(st.lists(st.integers(0, 40), min_size=n, max_size=n))
        mn = [draw(st.integers(0, c)) for c in cap]
        # weights with repeats and zeros: remainder ties are likely
        w = draw(
            st.lists(st.sampled_from([0.0, 0.5, 1.0, 1.0, 2.5, 3.0, 7.0]), min_size=n, max_size=n)
        )
        tot = draw(st.integers(sum(mn), sum(cap))) if cap else 0
        ws.append(w)
        cs.append(cap)
        ms.append(mn)
        tots.append(tot)
    return _alloc_case(ws, cs, ms, tots)


@settings(max_examples=300, deadline=None)
@given(alloc_requests())
def test_allocate_budgets_identical(args):
    want = ref.allocate_budgets(*args)
    got = _op.allocate_budgets(*args)
    assert torch.equal(got, want)


def test_allocate_budgets_real_weights():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        n = int(torch.randint(1, 20, (1,), generator=g))
        w = torch.rand(n, generator=g, dtype=torch.float64) * torch.rand(1, generator=g) * 10
        caps = torch.randint(0, 600, (n,), generator=g)
        mins = torch.minimum(caps, torch.ones(n, dtype=torch.int64))
        total = int(torch.randint(int(mins.sum()), int(caps.sum()) + 1, (1,), generator=g))
        args = (w, caps, mins, torch.tensor([0, n]), torch.tensor([total]))
        assert torch.equal(_op.allocate_budgets(*args), ref.allocate_budgets(*args))


@st.composite
def pareto_segments(draw):
    S = draw(st.integers(1, 3))
    values = (
        st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.75, 1.0])
        if draw(st.booleans())
        else st.floats(-1, 1, allow_nan=False, width=32)
    )
    sizes = [draw(st.integers(0, 25)) for _ in range(S)]
    K = sum(sizes)
    gains = draw(st.lists(values, min_size=K, max_size=K))
    align = draw(st.lists(values, min_size=K, max_size=K))
    k = [draw(st.integers(0, s)) for s in sizes]
    return (
        torch.tensor(gains, dtype=torch.float32),
        torch.tensor(align, dtype=torch.float32),
        offsets(sizes),
        k,
    )


@settings(max_examples=300, deadline=None)
@given(pareto_segments())
def test_pareto_select_identical(args):
    assert torch.equal(_op.pareto_select(*args), ref.pareto_select(*args))


# --------------------------------------------------------------------------------------------
# the whole method
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("with_text", [False, True], ids=["no-text", "text"])
def test_prune_matches_reference_backend(with_text):
    x, cu = random_tokens([30, 45, 1, 25, 60], dim=32, seed=11)
    text = torch.randn(4, 32, generator=torch.Generator().manual_seed(2)) if with_text else None
    with ap.backend("cpp"):
        got = ap.prune(x, cu, text, keep_ratio=0.3, return_diagnostics=True)
    with ap.backend("reference"):
        want = ap.prune(x, cu, text, keep_ratio=0.3, return_diagnostics=True)
    assert torch.equal(got.indices, want.indices)
    assert torch.equal(got.diagnostics.budgets, want.diagnostics.budgets)


def test_float64_stays_on_reference():
    x, cu = random_tokens([20, 30], dim=16, seed=4, dtype=torch.float64)
    b = torch.tensor([5, 7])
    assert torch.equal(
        _op.greedy_select(x, cu, b, "maxmin", EPS), ref.greedy_select(x, cu, b, "maxmin", EPS)
    )
    d = _op.budget_scores(x, cu, torch.tensor([0, 2]), None, None, 0.05, 10.0, EPS, "mean")
    assert d[0].dtype == torch.float64
    # the C++ implementation itself computes in fp32: fp64 is routed around it
    assert torch.equal(
        CPP.greedy_select(x, cu, b, "maxmin", EPS, -1),
        CPP.greedy_select(x.float(), cu, b, "maxmin", EPS, -1),
    )


# --------------------------------------------------------------------------------------------
# registration: opcheck of the C++ ops and of the public ops with C++ kernels
# --------------------------------------------------------------------------------------------
def _cpp_samples():
    x, cu = random_tokens([7, 0, 5, 9], dim=16, seed=1)
    ro = torch.tensor([0, 2, 4])
    text = torch.randn(5, 16)
    to = torch.tensor([0, 3, 5])
    b = torch.tensor([3, 0, 2, 9])
    pool = torch.tensor([0, 2, 4, 7, 8, 12, 13, 15, 18])
    po = torch.tensor([0, 3, 9])
    reserved = torch.tensor([1, 0, 0, 1, 0, 1, 0, 0, 0], dtype=torch.bool)
    nc = x.t().contiguous().t()  # non-contiguous
    image = torch.tensor([0, 0, 0, 2, 2, 3, 3, 3, 3])  # the images of the pool rows
    return {
        "budget_scores": [
            (x, cu, ro, text, to, 0.05, 10.0, EPS, "mean"),
            (x.half(), cu.int(), ro, None, None, 0.5, 1.0, EPS, "max"),
            (nc, cu, ro, text.t().contiguous().t(), to, 0.05, 10.0, EPS, "max"),
        ],
        "allocate_budgets": [
            (
                torch.rand(4),
                torch.tensor([7, 0, 5, 9]),
                torch.tensor([1, 0, 1, 1]),
                ro,
                torch.tensor([5, 10]),
            ),
        ],
        "greedy_select": [
            (x, cu, b, "maxmin", EPS, -1),
            (nc, cu.int(), b, "maxmin", EPS, 4),
            (x.bfloat16(), cu, b, "maxsum", EPS, 0),
        ],
        "global_greedy": [
            (x, pool, po, reserved, [2, 4], EPS, -1),
            (nc.half(), pool, po, reserved, [3, 6], EPS, 2),
        ],
        "token_alignment": [
            (x, pool, po, text, to, "mean", EPS),
            (nc.bfloat16(), pool, po, text.half(), to, "max", EPS),
        ],
        "pareto_select": [
            (torch.rand(7), torch.rand(7), torch.tensor([0, 3, 7]), [2, 2]),
        ],
        "refine_medoids": [
            (x, pool, po, image, reserved, reserved, 1, EPS),
            (nc.half(), pool, po.int(), image.int(), reserved, reserved, 3, EPS),
        ],
    }


@pytest.mark.parametrize("name", SERVED_OPS)
def test_cpp_impl_outputs_match_public_op(name):
    """fp16/bf16, int32 offsets, non-contiguous inputs: same dtypes and shapes as the op."""
    for args in _cpp_samples()[name]:
        got = getattr(CPP, name)(*args)
        public = args[:-1] if name in ("greedy_select", "global_greedy") else args
        want = getattr(ref, name)(*public)
        got = got if isinstance(got, tuple) else (got,)
        want = want if isinstance(want, tuple) else (want,)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.dtype == w.dtype and g.shape == w.shape and g.device.type == "cpu"
            if not g.is_floating_point():
                assert torch.equal(g, w) or name == "greedy_select", (name, g, w)


def test_core_takes_and_returns_numpy():
    import numpy as np

    from adaptive_prune import _core

    x, cu = random_tokens([7, 5], dim=16, seed=3)
    xn, cun = x.numpy(), cu.numpy()
    rank = _core.greedy_select(xn, cun, np.array([3, 2]), "maxmin", EPS, num_threads=2)
    assert isinstance(rank, np.ndarray) and rank.dtype == np.int64 and rank.shape == (12,)
    assert np.array_equal(rank, ref.greedy_select(x, cu, torch.tensor([3, 2]), "maxmin", EPS))
    out = _core.budget_scores(
        xn, cun, np.array([0, 2]), None, None, 0.05, 10.0, EPS, "mean", num_threads=1
    )
    assert isinstance(out, tuple) and [a.dtype for a in out] == [np.float32] * 6
    with pytest.raises(TypeError):  # num_threads is keyword-only and required
        _core.greedy_select(xn, cun, np.array([3, 2]), "maxmin", EPS, 1)
    with pytest.raises(ValueError, match="num_threads"):
        _core.greedy_select(xn, cun, np.array([3, 2]), "maxmin", EPS, num_threads=0)
    assert _core.KNOBS["greedy_select"] == ("proj_dim",) and _core.KNOBS["pareto_select"] == ()


@pytest.mark.parametrize("name", SERVED_OPS)
def test_opcheck_public_op_with_cpp_kernel(name):
    for args in _cpp_samples()[name]:
        public = args[:-1] if name in ("greedy_select", "global_greedy") else args
        with ap.backend("cpp"):
            torch.library.opcheck(ops.ALL_OPS[name], public)


def test_compile_fullgraph_public_op_with_cpp_kernel():
    x, cu = random_tokens([12, 9], dim=16, seed=2)
    b = torch.tensor([4, 3])

    @torch.compile(fullgraph=True, backend="eager")
    def f(x, cu, b):
        return _op.greedy_select(x, cu, b, "maxmin", EPS)

    assert torch.equal(f(x, cu, b), ref.greedy_select(x, cu, b, "maxmin", EPS))


# --------------------------------------------------------------------------------------------
# bad arguments
# --------------------------------------------------------------------------------------------
def test_bad_arguments_name_the_argument():
    x, cu = random_tokens([5, 6], dim=8, seed=0)
    b = torch.tensor([2, 2])
    with pytest.raises(ValueError, match="cu_seqlens"):
        CPP.greedy_select(x, torch.tensor([0, 5, 12]), b, "maxmin", EPS, -1)
    with pytest.raises(ValueError, match="budgets"):
        CPP.greedy_select(x, cu, torch.tensor([1]), "maxmin", EPS, -1)
    with pytest.raises(ValueError, match="mode"):
        CPP.greedy_select(x, cu, b, "median", EPS, -1)
    with pytest.raises(ValueError, match="vision"):
        CPP.greedy_select(x[0], cu, b, "maxmin", EPS, -1)
    with pytest.raises(TypeError, match="cu_seqlens"):  # pybind11 lists the signature
        CPP.greedy_select(x, cu.float(), b, "maxmin", EPS, -1)
    pool, po = torch.tensor([0, 3, 10]), torch.tensor([0, 3])
    res = torch.zeros(3, dtype=torch.bool)
    with pytest.raises(ValueError, match="pool"):
        CPP.global_greedy(x, torch.tensor([0, 99, 1]), po, res, [2], EPS, -1)
    with pytest.raises(ValueError, match="num_picks"):
        CPP.global_greedy(x, pool, po, res, [4], EPS, -1)
    with pytest.raises(TypeError, match="reserved"):
        CPP.global_greedy(x, pool, po, res.int(), [2], EPS, -1)
    with pytest.raises(ValueError, match="reserved"):
        CPP.global_greedy(x, pool, po, res[:2], [2], EPS, -1)
    with pytest.raises(ValueError, match="k must"):
        CPP.pareto_select(torch.rand(3), torch.rand(3), torch.tensor([0, 3]), [1, 1])
    with pytest.raises(ValueError, match="reduce"):
        CPP.token_alignment(x, pool, po, x[:2], torch.tensor([0, 2]), "min", EPS)
    with pytest.raises(ValueError, match="text_offsets"):
        CPP.token_alignment(x, pool, po, x[:2], torch.tensor([0, 1, 2]), "mean", EPS)
    with pytest.raises(ValueError, match="totals"):
        CPP.allocate_budgets(torch.rand(2), b, b, torch.tensor([0, 2]), torch.tensor([1, 2]))


# --------------------------------------------------------------------------------------------
# loading: disabled, broken
# --------------------------------------------------------------------------------------------
def _run(code: str, env: dict, cwd: Path, flags: tuple = ()) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *flags, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_reference_backend_by_env_var_runs_without_warning(tmp_path):
    root = Path(ap.__file__).resolve().parent.parent
    out = _run(
        """
        import warnings; warnings.simplefilter("error")
        import adaptive_prune as ap, torch
        from adaptive_prune import backends
        x = torch.randn(40, 8)
        assert backends.serving("greedy_select", "cpu", (x,))[0] == "reference"
        r = ap.prune(x, torch.tensor([0, 15, 40]), keep_ratio=0.5)
        print("ok", r.indices.numel())
        """,
        {"ADAPTIVE_PRUNE_BACKEND": "reference", "PYTHONPATH": str(root)},
        tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert "ok 20" in out.stdout


@pytest.mark.parametrize("state", ["broken", "missing"])
def test_unusable_extension_warns_once_at_first_cpu_call(tmp_path, state):
    import sysconfig

    pkg = Path(ap.__file__).resolve().parent
    copy = tmp_path / "adaptive_prune"
    shutil.copytree(
        pkg, copy, ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__", "*.npz")
    )
    kernels = pkg.parent / "kernels"
    if not (copy / "kernels").exists() and kernels.exists():  # source layout: ./kernels
        shutil.copytree(kernels, copy / "kernels", ignore=shutil.ignore_patterns("__pycache__"))
    if state == "broken":
        suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
        (copy / f"_core{suffix}").write_bytes(b"not a shared object")
    want = "failed to load" if state == "broken" else "no C++ compiler"
    out = _run(
        f"""
        import warnings
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            import adaptive_prune as ap, torch
            from adaptive_prune import backends
            from adaptive_prune.backends import cpp
            from adaptive_prune.cli import info
            assert not [x for x in w if "cpp backend" in str(x.message)], "warned at import"
            assert not cpp.AVAILABLE and {want!r} in cpp.REASON
            assert {want!r} in backends.unavailable("cpp")
            assert "pip install --force-reinstall" in cpp.REASON
            x = torch.randn(40, 8)
            for _ in range(2):
                r = ap.prune(x, torch.tensor([0, 15, 40]), keep_ratio=0.5)
        msgs = [str(x.message) for x in w if "cpp backend" in str(x.message)]
        assert len(msgs) == 1 and {want!r} in msgs[0], msgs
        assert {want!r} in info.report()
        print("ok", r.indices.numel())
        """,
        # -S: no .pth files, so an editable install's finder cannot supply the real _core
        {"PYTHONPATH": os.pathsep.join([str(tmp_path), *site.getsitepackages()])},
        tmp_path,
        flags=("-S",),
    )
    assert out.returncode == 0, out.stderr + out.stdout
    assert "ok 20" in out.stdout
