"""Property tests (hypothesis): every output invariant of METHOD.md over random shapes,
budgets and options."""

from __future__ import annotations

import torch
from _data import offsets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import adaptive_prune as ap


@st.composite
def problems(draw):
    counts = draw(st.lists(st.integers(0, 14), min_size=1, max_size=5))
    n_tok = sum(counts)
    dim = draw(st.sampled_from([3, 8, 16]))
    seed = draw(st.integers(0, 2**16))
    q = draw(st.integers(0, 2))
    need = sum(min(q, m) for m in counts)
    B = draw(st.integers(need, n_tok)) if n_tok >= need else 0
    dup = draw(st.booleans())  # duplicate an image exactly: ties everywhere
    n_text = draw(st.sampled_from([0, 0, 1, 4]))
    opts = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "intra": st.sampled_from(["maxmin", "maxsum"]),
                "align": st.sampled_from(["mean", "max"]),
                "selection": st.sampled_from(["pareto", "weighted"]),
                "inter_image": st.booleans(),
                "lam": st.sampled_from([0.0, 1.0, 3.0]),
                "gamma": st.sampled_from([1.0, 1.5, 4.0]),
                "tau": st.sampled_from([None, 0.5, 0.99]),
                "sigma": st.sampled_from([0.01, 0.05, 1.0]),
                "beta": st.sampled_from([0.0, 1.0, 5.0]),
            },
        )
    )
    return counts, dim, seed, q, B, dup, n_text, opts


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_invariants(problem):
    counts, dim, seed, q, B, dup, n_text, opts = problem
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(sum(counts), dim, generator=g)
    cu = offsets(counts)
    if dup and len(counts) >= 2 and counts[0] == counts[1]:
        x[cu[1] : cu[2]] = x[cu[0] : cu[1]]
    text = torch.randn(n_text, dim, generator=g) if n_text else None
    res = ap.prune(x, cu, text, budget=B, min_per_image=q, return_diagnostics=True, **opts)
    idx = res.indices
    assert idx.numel() == B and idx.unique().numel() == B
    assert torch.equal(idx, torch.sort(idx).values)
    assert torch.equal(torch.nonzero(res.mask).flatten(), idx)
    for k, m in enumerate(counts):
        assert min(q, m) <= int(res.per_image[k]) <= m
    d = res.diagnostics
    assert int(d.budgets.sum()) == d.pool_size
    assert (d.budgets <= torch.tensor(counts)).all()
    assert B <= d.pool_size <= sum(counts)
    assert B <= d.candidates <= max(d.pool_size, B)
    assert ((d.d_intra >= -1e-6) & (d.d_intra <= 2 + 1e-6)).all()
    again = ap.prune(x, cu, text, budget=B, min_per_image=q, **opts)
    assert torch.equal(again.indices, idx)
