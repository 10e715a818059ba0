"""``adaptive_prune::budget_scores`` on every backend against explicit pairwise sums.

The brute force sums ``1 - cos`` over the explicit off-diagonal pairs of every image (not the
reference's ``||s||^2`` identity), builds the multiplicity and inter-image variation from the
image means pair by pair, the attention share from one softmax per text row, and every token's
text alignment from its explicit cosines to the text rows (mean or max), in float64.
Scores are real numbers: every backend, on tie-free and tie-heavy cases alike, agrees with the
brute force within the dtype's tolerance times :data:`AMPLIFY`.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from _backends import ATOL, BACKENDS, DTYPES, call, opcheck
from _data import real_tokens
from _inputs import ALL_DTYPES, CASES, EPS, TIE_FREE, TIE_HEAVY, offsets
from torch._subclasses.fake_tensor import FakeTensorMode

from adaptive_prune import ops
from adaptive_prune.ops import reference as ref

pytestmark = pytest.mark.usefixtures("poison")
OP = "budget_scores"
SIGMA, TAU_A = 0.05, 10.0
# mult = sum exp(-(1 - C) / sigma) scales the rounding of the image means' cosines C by 1/sigma
# (the softmax of tau_a * cos by tau_a): scores get 5x the cosine tolerance, atol = rtol = 1e-5
# in fp32, a few times the largest difference seen (3e-6, mult, Triton interpreter)
AMPLIFY = 5.0


def unit(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return x / x.norm(dim=1, keepdim=True).clamp_min(EPS)


def brute_scores(x, cu, ro, text, to, sigma=SIGMA, tau_a=TAU_A, align="mean"):
    """``(d_intra [n], mult [n], att [n], d_inter [R], mu [n, D], a [N])`` float64 from
    explicit pairs."""
    cu, ro = cu.tolist(), ro.tolist()
    n, R = len(cu) - 1, len(ro) - 1
    xh = unit(x)
    d_intra = torch.zeros(n, dtype=torch.float64)
    mu = {}
    for k in range(n):
        m = cu[k + 1] - cu[k]
        if m == 0:
            continue
        blk = xh[cu[k] : cu[k + 1]]
        s = blk.sum(0)
        mu[k] = s / s.norm().clamp_min(EPS)
        if m > 1:
            off = ~torch.eye(m, dtype=torch.bool)
            d_intra[k] = (1.0 - blk @ blk.T)[off].sum() / (m * (m - 1))
    mult = torch.zeros(n, dtype=torch.float64)
    att = torch.zeros(n, dtype=torch.float64)
    d_inter = torch.zeros(R, dtype=torch.float64)
    mu_all = torch.zeros(n, x.shape[1], dtype=torch.float64)
    for k, m in mu.items():
        mu_all[k] = m
    a_tok = torch.zeros(x.shape[0], dtype=torch.float64)
    th = unit(text) if text is not None else None
    for r in range(R):
        live = [k for k in range(ro[r], ro[r + 1]) if k in mu]
        for k in live:
            mult[k] = sum(math.exp(-(1 - float(mu[k] @ mu[j])) / sigma) for j in live)
        pairs = [(k, j) for k in live for j in live if k != j]
        if pairs:
            d_inter[r] = sum(1 - float(mu[k] @ mu[j]) for k, j in pairs) / len(pairs)
        t0, t1 = (to[r], to[r + 1]) if th is not None else (0, 0)
        a, e = cu[ro[r]], cu[ro[r + 1]]
        if t1 > t0 and e > a:
            for t in range(t0, t1):
                p = torch.softmax(tau_a * (xh[a:e] @ th[t]), dim=0)
                for k in range(ro[r], ro[r + 1]):
                    att[k] += float(p[cu[k] - a : cu[k + 1] - a].sum()) / (t1 - t0)
            for i in range(a, e):
                cos = [float(xh[i] @ th[t]) for t in range(t0, t1)]
                a_tok[i] = sum(cos) / len(cos) if align == "mean" else max(cos)
    return d_intra, mult, att, d_inter, mu_all, a_tok


@functools.cache
def brute_case(case_id: str, dtype: torch.dtype, align: str = "mean"):
    c = CASES[case_id]
    to = c.text_offsets.tolist() if c.text is not None else None
    return brute_scores(c.x(dtype), c.cu_seqlens, c.req_offsets, c.t(dtype), to, align=align)


def args_of(c, dtype, with_text=True, align="mean"):
    text = c.t(dtype) if with_text else None
    to = c.text_offsets if with_text else None
    return (c.x(dtype), c.cu_seqlens, c.req_offsets, text, to, SIGMA, TAU_A, EPS, align)


def check(got, want, dtype, what=""):
    names = ("d_intra", "mult", "att", "d_inter", "mu", "a")
    assert len(got) == len(want) == len(names)
    for name, g, w in zip(names, got, want):
        assert g.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        tol = ATOL[dtype] * AMPLIFY
        torch.testing.assert_close(g.double(), w, atol=tol, rtol=tol, msg=f"{what} {name}")


PARAMS = [
    pytest.param(c.id, dt, id=f"{c.id}-{dt}")
    for c in TIE_FREE
    for dt in (["fp32", "fp16", "bf16"] if c.id in ALL_DTYPES else ["fp32"])
] + [pytest.param(c.id, "fp32", id=f"{c.id}-fp32") for c in TIE_HEAVY]


@pytest.mark.parametrize("case, dtype", PARAMS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_explicit_pairwise_sums(backend, case, dtype):
    if backend == "triton" and dtype == "bf16":
        pytest.skip("bf16 under the interpreter: tests/test_backend_triton.py")
    c, dt = CASES[case], DTYPES[dtype]
    got = call(backend, OP, args_of(c, dt), keep_cpu=(1, 2, 4))
    check(got, brute_case(case, dt), dt)
    if c.text is None:
        assert bool((got[2] == 0).all()) and bool((got[5] == 0).all())


@pytest.mark.parametrize("case", [c.id for c in TIE_FREE if c.text is not None])
@pytest.mark.parametrize("backend", BACKENDS)
def test_alignment_max_and_token_alignment(backend, case):
    """``align="max"`` against the explicit cosines, and both reductions equal to
    ``token_alignment`` over every token (the method reads one for the other)."""
    c = CASES[case]
    got = call(backend, OP, args_of(c, torch.float32, align="max"), keep_cpu=(1, 2, 4))
    check(got, brute_case(case, torch.float32, "max"), torch.float32, "max")
    rows = torch.arange(c.x(torch.float32).shape[0])
    row_off = c.cu_seqlens[c.req_offsets]
    for align in ("mean", "max"):
        a = call(backend, OP, args_of(c, torch.float32, align=align), keep_cpu=(1, 2, 4))[5]
        want = call(
            backend, "token_alignment",
            (c.x(torch.float32), rows, row_off, c.t(torch.float32), c.text_offsets, align, EPS),
            keep_cpu=(2, 4),
        )[0]  # fmt: skip
        tol = ATOL[torch.float32]
        torch.testing.assert_close(a.cpu(), want.cpu(), atol=tol, rtol=tol, msg=align)
        if backend in ("reference", "cpp"):  # the same products in the same order
            assert torch.equal(a.cpu(), want.cpu()), align


@pytest.mark.parametrize("backend", BACKENDS)
def test_without_text_attention_is_zero(backend):
    c = CASES["requests"]
    got = call(backend, OP, args_of(c, torch.float32, with_text=False), keep_cpu=(1, 2))
    want = brute_scores(c.x(torch.float32), c.cu_seqlens, c.req_offsets, None, None)
    check(got, want, torch.float32)
    assert bool((got[2] == 0).all())


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_image_has_no_inter_variation(backend):
    x = CASES["no-text-zero-row"].x(torch.float32)[:6]
    _, mult, _, d_inter, _, _ = call(
        backend, OP,
        (x, offsets([6]), offsets([1]), None, None, SIGMA, TAU_A, EPS, "mean"),
        keep_cpu=(1, 2),
    )  # fmt: skip
    assert d_inter.tolist() == [0.0] and mult.tolist() == pytest.approx([1.0], abs=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_and_output_dtype_shape(backend):
    c = CASES["opcheck"]
    samples = [
        args_of(c, torch.float32),
        args_of(c, torch.float32, align="max"),
        args_of(c, torch.float16, with_text=False),
    ]
    if backend == "reference":  # int32 offsets and a non-contiguous input
        x = c.x(torch.float32).t().contiguous().t()
        samples.append((x, c.cu_seqlens.int(), *args_of(c, torch.float32)[2:]))
    opcheck(backend, OP, samples)
    for args in samples:
        got = call(backend, OP, args, keep_cpu=(1, 2, 4))
        with FakeTensorMode() as mode:
            fake = ops.ALL_OPS[OP](*[mode.from_tensor(a) if isinstance(a, torch.Tensor) else a
                                     for a in args])  # fmt: skip
        n, R = len(c.counts), len(c.images_per_request)
        N, D = args[0].shape
        assert len(got) == len(fake) == 6
        for g, f, shape in zip(got, fake, [(n,), (n,), (n,), (R,), (n, D), (N,)]):
            assert g.dtype == f.dtype == torch.float32 and g.shape == f.shape == shape


# --------------------------------------------------------------------------------------------
# the reference in float64
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", [c.id for c in TIE_FREE + TIE_HEAVY])
def test_reference_fp64_matches_brute_force(case):
    c = CASES[case]
    got = ref.budget_scores(*args_of(c, torch.float64))
    check(got, brute_case(case, torch.float64), torch.float64, case)
    if c.text is not None:  # the attention shares of a request with text sum to 1
        ro, to = c.req_offsets.tolist(), c.text_offsets.tolist()
        cu = c.cu_seqlens.tolist()
        for r in range(len(ro) - 1):
            if to[r + 1] > to[r] and cu[ro[r + 1]] > cu[ro[r]]:
                assert float(got[2][ro[r] : ro[r + 1]].sum()) == pytest.approx(1.0)


def test_reference_d_intra_on_real_tokens():
    x, cu, _ = real_tokens(max_images=3, dtype=torch.float64)
    x = x[::4]  # every 4th token of the first images keeps the explicit sums short
    cu = torch.div(cu + 3, 4, rounding_mode="floor")
    d, *_ = ref.budget_scores(x, cu, offsets([3]), None, None, SIGMA, TAU_A, EPS, "mean")
    want = brute_scores(x, cu, offsets([3]), None, None)[0]
    torch.testing.assert_close(d, want, atol=1e-10, rtol=0)
    assert bool(((want > 0) & (want < 1.5)).all())
