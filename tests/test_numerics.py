"""Numerical range: option values the fp32 computation cannot take are rejected by name, values
it can take give valid outputs on every backend with no uninitialised memory read, and token
magnitudes are either scale-free (powers of two) or rejected with the argument named.

Every test here runs with poisoned allocations: ``torch.use_deterministic_algorithms`` makes
``torch.empty`` fill floats with NaN and integers with their largest value, so a slot that a
kernel or the composition leaves unwritten fails instead of passing by luck.
"""

from __future__ import annotations

import pytest
import torch
from _data import random_tokens
from conftest import TRITON_RUNS

import adaptive_prune as ap

BACKENDS = ["reference"]
if ap.backends.unavailable("cpp") is None:
    BACKENDS.append("cpp")
if TRITON_RUNS:
    BACKENDS.append("triton")

METHODS = ["adaptive", "random", "uniform", "divprune", "divprune_pooled", "dart", "cdpruner"]
METHODS.append("trimtokenator")

V = torch.randn(40, 8, generator=torch.Generator().manual_seed(0))
CU = torch.tensor([0, 10, 25, 40])
T = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))


@pytest.fixture(autouse=True)
def poison():
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(was)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "name, value",
    [
        ("beta", 1e300),
        ("sigma", 1e-300),
        ("sigma", 1e-9),
        ("tau_a", 1e300),
        ("lam", 1e308),
        ("gamma", 1e308),
        ("eps", 1e-300),
        ("eps", 1e300),
    ],
)
def test_options_outside_the_fp32_range_are_rejected(backend, name, value):
    with ap.backend(backend), pytest.raises(ValueError, match=f"option {name}="):
        ap.prune(V, CU, T, keep_ratio=0.3, **{name: value})


# the ends of every range: valid outputs on every backend, the same multiplicities
EXTREMES = [
    {"sigma": 1e-4},
    {"sigma": 1e6},
    {"beta": 1e4},
    {"tau_a": 1e4},
    {"tau_a": 1e-30},
    {"lam": 1e6, "gamma": 1e6},
    {"eps": 1e-18},
    {"eps": 1.0},
]


def _ids(opts: dict) -> str:
    return ",".join(f"{k}={v:g}" for k, v in opts.items())


@pytest.mark.parametrize("opts", EXTREMES, ids=_ids)
def test_options_at_the_ends_of_their_ranges_agree_across_backends(opts):
    v = V.clone()
    v[3] = 0.0  # a zero row: the norm floor eps is used
    out = {}
    for backend in BACKENDS:
        with ap.backend(backend):
            res = ap.prune(v, CU, T, keep_ratio=0.3, return_diagnostics=True, **opts)
        assert res.indices.numel() == 12 and torch.unique(res.indices).numel() == 12
        assert int(res.indices.min()) >= 0 and int(res.indices.max()) < 40
        d = res.diagnostics
        assert torch.isfinite(d.mult).all() and torch.isfinite(d.att).all()
        assert int(d.budgets.sum()) == d.pool_size
        out[backend] = d
    ref = out["reference"]
    for backend, d in out.items():
        torch.testing.assert_close(d.mult, ref.mult, rtol=2e-2, atol=1e-6, msg=backend)
        torch.testing.assert_close(d.att, ref.att, rtol=2e-2, atol=1e-6, msg=backend)


# --------------------------------------------------------------------------------------------
# magnitudes
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_huge_tokens_are_rejected_by_name(backend, method, dtype):
    with ap.backend(backend):
        with pytest.raises(ValueError, match="vision has values of magnitude"):
            ap.prune((V * 1e20).to(dtype), CU, T, keep_ratio=0.3, method=method)
        with pytest.raises(ValueError, match="text has values of magnitude"):
            ap.prune(V.to(dtype), CU, (T * 1e30).to(dtype), keep_ratio=0.3, method=method)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", METHODS)
def test_selection_does_not_depend_on_scale(backend, method):
    """Scaling by powers of two is exact: the same rows from 2^-10 to 2^50 (1e15), as long as
    the row norms stay above the norm floor eps (1e-6)."""
    x, cu = random_tokens([12, 9, 15], dim=8, seed=5)
    with ap.backend(backend):
        base = ap.prune(x, cu, T, keep_ratio=0.3, method=method).indices
        for e in (-10, 50):
            got = ap.prune(x * 2.0**e, cu, T * 2.0**e, keep_ratio=0.3, method=method).indices
            assert torch.equal(got, base), (method, e)


def test_the_magnitude_limit_follows_the_width():
    """fp32: about 4.6e18 / sqrt(D); what is just below it runs, on every backend."""
    from adaptive_prune._checks import max_abs

    lim = max_abs(torch.zeros(1, 8))
    assert 1e18 < lim < 2e18
    for backend in BACKENDS:
        with ap.backend(backend):
            res = ap.prune(V / V.abs().max() * lim * 0.5, CU, keep_ratio=0.3)
            assert res.indices.numel() == 12
            with pytest.raises(ValueError, match="overflow"):
                ap.prune(V / V.abs().max() * lim * 2, CU, keep_ratio=0.3)
