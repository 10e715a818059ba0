"""The public ops keep their own contracts, and exotic inputs get errors that name the argument.

The ops are public API (``torch.ops.adaptive_prune.<op>``): each validates what ``prune`` would
have validated for it, on every backend (the check runs before any backend: ``ops/_contract.py``).
"""

from __future__ import annotations

import pytest
import torch
from _data import random_tokens
from conftest import TRITON_RUNS

import adaptive_prune as ap

_op = torch.ops.adaptive_prune

BACKENDS = ["reference"]
if ap.backends.unavailable("cpp") is None:
    BACKENDS.append("cpp")
if TRITON_RUNS:
    BACKENDS.append("triton")


def alloc(weights, caps, mins, totals, ro=None):
    ro = [0, len(caps)] if ro is None else ro
    return _op.allocate_budgets(
        torch.tensor(weights, dtype=torch.float32),
        torch.tensor(caps),
        torch.tensor(mins),
        torch.tensor(ro),
        torch.tensor(totals),
    )


# --------------------------------------------------------------------------------------------
# allocate_budgets: "sum b == totals" always, or a ValueError naming the argument
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "weights, caps, mins, total, expected",
    [
        ([0.0, 0.0, 0.0], [10, 15, 15], [1, 1, 1], 12, [10, 1, 1]),  # all zero: index order
        ([0.0, 2.0, 0.0], [10, 3, 15], [1, 1, 1], 12, [8, 3, 1]),  # positive image full first
        ([0.0, 0.0, 0.0], [2, 0, 5], [1, 0, 1], 6, [2, 0, 4]),
        ([1.0, 1.0, 0.0], [4, 4, 9], [0, 0, 0], 8, [4, 4, 0]),  # positive images absorb it
    ],
    ids=["all-zero", "one-positive-full", "zero-with-empty", "absorbed"],
)
def test_allocate_budgets_sums_to_total_with_zero_weights(
    backend, weights, caps, mins, total, expected
):
    with ap.backend(backend):
        b = alloc(weights, caps, mins, [total])
    assert int(b.sum()) == total
    assert b.tolist() == expected
    assert all(m <= v <= c for v, m, c in zip(b.tolist(), mins, caps))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "weights, caps, mins, totals, ro, match",
    [
        ([1.0, 1.0, 1.0], [10, 15, 15], [1, 1, 1], [41], None, r"totals\[0\] = 41"),
        ([1.0, 1.0, 1.0], [10, 15, 15], [1, 1, 1], [2], None, r"totals\[0\] = 2"),
        ([float("inf"), 1.0, 1.0], [10, 15, 15], [1, 1, 1], [12], None, "weights"),
        ([float("nan"), 1.0, 1.0], [10, 15, 15], [1, 1, 1], [12], None, "weights"),
        ([-1.0, 1.0, 1.0], [10, 15, 15], [1, 1, 1], [12], None, "weights"),
        ([1.0, 1.0, 1.0], [10, 15, 15], [1, 16, 1], [20], None, "mins"),
        ([1.0, 1.0, 1.0], [10, 15], [1, 1, 1], [12], None, "caps"),
        ([1.0, 1.0, 1.0], [10, 15, 15], [1, 1, 1], [12, 3], [0, 3], "totals"),
        ([1.0, 1.0, 1.0], [10, 15, 15], [1, 1, 1], [12], [0, 2], "req_offsets"),
    ],
    ids=[
        "above-caps",
        "below-mins",
        "inf-weight",
        "nan-weight",
        "negative-weight",
        "mins-above-caps",
        "caps-length",
        "totals-length",
        "offsets-end",
    ],
)
def test_allocate_budgets_rejects(backend, weights, caps, mins, totals, ro, match):
    with ap.backend(backend), pytest.raises(ValueError, match=match):
        alloc(weights, caps, mins, totals, ro)


# --------------------------------------------------------------------------------------------
# pareto_select: exactly k[r] points, so k[r] cannot exceed the segment
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_pareto_select_rejects_k_above_the_segment(backend):
    g, a = torch.rand(5), torch.rand(5)
    with ap.backend(backend):
        with pytest.raises(ValueError, match=r"k\[0\] = 9 must lie in \[0, 5\]"):
            _op.pareto_select(g, a, torch.tensor([0, 5]), [9])
        with pytest.raises(ValueError, match=r"k\[1\] = -1"):
            _op.pareto_select(g, a, torch.tensor([0, 2, 5]), [1, -1])
        with pytest.raises(ValueError, match="k has 1 entries"):
            _op.pareto_select(g, a, torch.tensor([0, 2, 5]), [1])
        keep = _op.pareto_select(g, a, torch.tensor([0, 5]), [5])
    assert int(keep.sum()) == 5


# --------------------------------------------------------------------------------------------
# the other ops: a bad argument is named, on every backend, before any kernel runs
# --------------------------------------------------------------------------------------------
def _base():
    x, cu = random_tokens([7, 0, 5], dim=8, seed=3)
    return x, cu


def _bad_calls():
    x, cu = _base()
    ro = torch.tensor([0, 3])
    t, to = torch.randn(2, 8), torch.tensor([0, 2])
    pool, po = torch.tensor([0, 3, 7, 9]), torch.tensor([0, 4])
    res = torch.tensor([True, False, False, False])
    return [
        ("budget_scores", (x, cu, ro, t, to, 1e-300, 10.0, 1e-6, "mean"), "sigma"),
        ("budget_scores", (x, cu, ro, t, to, 0.05, 1e300, 1e-6, "mean"), "tau_a"),
        ("budget_scores", (x, cu, ro, t, to, 0.05, 10.0, 0.0, "mean"), "eps"),
        ("budget_scores", (x, cu, ro, t, to, 0.05, 10.0, 1e-6, "sum"), "align"),
        ("budget_scores", (x, cu, ro, t, None, 0.05, 10.0, 1e-6, "mean"), "text_offsets"),
        ("budget_scores", (x, cu, ro, t.double(), to, 0.05, 10.0, 1e-6, "mean"), "text"),
        (
            "budget_scores",
            (x, cu, torch.tensor([0, 2]), None, None, 0.05, 10.0, 1e-6, "mean"),
            "req_off",
        ),
        (
            "budget_scores",
            (x, torch.tensor([0, 7, 5, 12]), ro, None, None, 0.05, 1, 1e-6, "max"),
            "cu_",
        ),
        ("greedy_select", (x, cu, torch.tensor([8, 0, 1]), "maxmin", 1e-6), r"budgets\[0\]"),
        ("greedy_select", (x, cu, torch.tensor([1, 1, 1]), "maxmin", 1e-6), r"budgets\[1\]"),
        ("greedy_select", (x, cu, torch.tensor([1, 0]), "maxmin", 1e-6), "budgets has 2"),
        ("greedy_select", (x, cu, torch.tensor([1, 0, 1]), "minmax", 1e-6), "mode"),
        ("global_greedy", (x, pool, po, res, [5], 1e-6), r"num_picks\[0\]"),
        ("global_greedy", (x, pool, po, res, [1, 1], 1e-6), "num_picks has 2"),
        ("global_greedy", (x, pool + 9, po, res, [2], 1e-6), "pool holds rows"),
        ("global_greedy", (x, pool, po, res[:3], [2], 1e-6), "reserved"),
        ("global_greedy", (x, pool, po, ~res, [2], 1e-6), "reserves 3"),
        ("token_alignment", (x, pool, po, t, to, "mean", 1e-6), None),
        ("token_alignment", (x, pool - 1, po, t, to, "mean", 1e-6), "rows holds rows"),
        ("token_alignment", (x, pool, po, t, to, "sum", 1e-6), "reduce"),
        ("token_alignment", (x, pool, po, t[:, :4], to, "mean", 1e-6), "text has width"),
        ("token_alignment", (x, pool, po, t, torch.tensor([0, 1, 2]), "mean", 1e-6), "text_off"),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", range(len(_bad_calls())))
def test_ops_name_the_bad_argument(backend, case):
    name, args, match = _bad_calls()[case]
    with ap.backend(backend):
        if match is None:  # the control: the same call with good arguments runs
            getattr(_op, name)(*args)
            return
        with pytest.raises((ValueError, TypeError), match=match):
            getattr(_op, name)(*args)


def test_the_default_body_checks_too():
    """Devices without a routing kernel run the op's default body, which checks as well."""
    from adaptive_prune.ops import allocate_budgets

    with pytest.raises(ValueError, match="weights must be finite"):
        allocate_budgets.op._init_fn(  # the Python body behind the custom op
            torch.tensor([float("inf"), 1.0]),
            torch.tensor([3, 3]),
            torch.tensor([1, 1]),
            torch.tensor([0, 2]),
            torch.tensor([4]),
        )


# --------------------------------------------------------------------------------------------
# exotic tensors and mixed dtypes through prune
# --------------------------------------------------------------------------------------------
X, CU = random_tokens([12, 9, 15], dim=8, seed=7)


@pytest.mark.parametrize("method", ["adaptive", "divprune", "cdpruner"])
def test_sparse_and_meta_inputs_get_a_type_error(method):
    with pytest.raises(TypeError, match="vision must be a dense"):
        ap.prune(X.to_sparse(), CU, keep_ratio=0.3, method=method)
    with pytest.raises(TypeError, match="vision is a meta tensor"):
        ap.prune(X.to("meta"), CU, keep_ratio=0.3, method=method)
    with pytest.raises(TypeError, match="text must be a dense"):
        ap.prune(X, CU, torch.randn(3, 8).to_sparse(), keep_ratio=0.3, method=method)
    with pytest.raises(TypeError, match="cu_seqlens must be a dense"):
        ap.prune(X, CU.to_sparse(), keep_ratio=0.3, method=method)


DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


@pytest.mark.parametrize("vd", DTYPES, ids=str)
@pytest.mark.parametrize("td", DTYPES, ids=str)
def test_every_dtype_pair_of_vision_and_text(vd, td):
    """All 16 pairs run; fp64 on one side is the other side's compute dtype (documented)."""
    t = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    v = X.to(vd)
    got = ap.prune(v, CU, t.to(td), keep_ratio=0.3)
    assert got.indices.numel() == round(0.3 * X.shape[0])
    if vd == torch.float64:
        same = ap.prune(v, CU, t.to(td).double(), keep_ratio=0.3)
    elif td == torch.float64:
        same = ap.prune(v, CU, t.to(td).float(), keep_ratio=0.3)
    else:
        return
    assert torch.equal(got.indices, same.indices)


@pytest.mark.parametrize("method", ["dart", "cdpruner", "trimtokenator"])
def test_baselines_take_mixed_dtypes(method):
    t = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    res = ap.prune(X, CU, t.double(), keep_ratio=0.3, method=method)
    assert res.indices.numel() == round(0.3 * X.shape[0])
    res = ap.prune(X.double(), CU, t.bfloat16(), keep_ratio=0.3, method=method)
    assert res.indices.numel() == round(0.3 * X.shape[0])


# --------------------------------------------------------------------------------------------
# allocate_budgets: the fast kernels against the reference (replaces the comparison that was in
# tests/test_triton_kernels.py: it also fed inputs whose total the positive-weight images cannot
# absorb, where the kernels do not implement the zero-weight rule yet and the router serves
# the reference)
# --------------------------------------------------------------------------------------------
def _random_allocations():
    import random

    rng = random.Random(0)
    for trial in range(60):
        R = rng.randint(1, 4)
        sizes = [rng.randint(0, 7) for _ in range(R)]
        ro = [0]
        for s in sizes:
            ro.append(ro[-1] + s)
        n = ro[-1]
        if n == 0:
            continue
        g = torch.Generator().manual_seed(trial)
        w = torch.rand(n, generator=g) * (torch.rand(n, generator=g) > 0.2)
        if trial % 3 == 0:
            w = torch.ones(n)  # equal weights: the remainder ties go to the lower index
        caps = torch.randint(0, 30, (n,), generator=g)
        mins = torch.minimum(torch.full((n,), rng.randint(0, 2)), caps)
        totals = []
        for r in range(R):
            lo, hi = int(mins[ro[r] : ro[r + 1]].sum()), int(caps[ro[r] : ro[r + 1]].sum())
            totals.append(rng.randint(lo, hi))
        yield w, caps, mins, torch.tensor(ro), torch.tensor(totals)


def test_allocate_budgets_kernels_match_the_reference():
    from adaptive_prune.ops import allocate_budgets as spec

    kernels = {}
    if ap.backends.unavailable("cpp") is None:
        kernels["cpp"] = ap.backends.cpp.table()["allocate_budgets"]
    if TRITON_RUNS:
        from adaptive_prune.kernels.allocate_budgets import allocate_budgets_fwd

        kernels["triton"] = allocate_budgets_fwd
    absorbed = 0
    for w, caps, mins, ro, tot in _random_allocations():
        want = spec.reference(w, caps, mins, ro, tot)
        assert torch.equal(want.sum().reshape(1), tot.sum().reshape(1))
        for r in range(ro.numel() - 1):
            assert int(want[ro[r] : ro[r + 1]].sum()) == int(tot[r])
        to_reference = spec.check(w, caps, mins, ro, tot)
        for name, fn in kernels.items():
            if not to_reference:  # the kernels' domain: they match exactly
                assert torch.equal(fn(w, caps, mins, ro, tot).cpu(), want), name
            with ap.backend(name):  # through the op: the router keeps the contract
                got = torch.ops.adaptive_prune.allocate_budgets(w, caps, mins, ro, tot)
            assert torch.equal(got.cpu(), want), name
        absorbed += not to_reference
    assert absorbed >= 30  # most random inputs are in the kernels' domain
