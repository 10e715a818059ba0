"""End to end with the Triton backend: ``prune`` / ``prune_batch`` and ``opcheck`` of every op.

Inside ``adaptive_prune.backend("triton")`` every op dispatches to its Triton launcher (on CPU
tensors through the interpreter, on CUDA tensors compiled); the results are compared with the
same calls inside ``adaptive_prune.backend("reference")``.
"""

from __future__ import annotations

import pytest
import torch

import adaptive_prune
from adaptive_prune import backends, ops

pytestmark = pytest.mark.interpreter
EPS = 1e-6


def tokens(counts, dim=40, seed=0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(sum(counts), dim, generator=g, dtype=torch.float64)
    cu = [0]
    for c in counts:
        cu.append(cu[-1] + c)
    return x.to(dtype).to(device), torch.tensor(cu, dtype=torch.int64)


# ops without a Triton kernel yet: the routing serves them with the reference (torch ops on
# the device); issue 14 left refine_medoids for the GPU engine work
NO_TRITON_KERNEL_YET = {"refine_medoids"}


def test_every_op_runs_triton(device):
    x = torch.ones(3, 4, device=device)
    with adaptive_prune.backend("triton"):
        for name in ops.ALL_OPS:
            want = "reference" if name in NO_TRITON_KERNEL_YET else "triton"
            assert backends.serving(name, device.type, (x,))[0] == want, name


CASES = {
    "no-text": dict(),
    "text": dict(text=True),
    "text-q0": dict(text=True, min_per_image=0),
    "q0": dict(min_per_image=0),
    "maxsum-text": dict(text=True, intra="maxsum"),
    "align-max-q2": dict(text=True, align="max", min_per_image=2),
    "keep-all": dict(keep_ratio=1.0),
}


# every case in fp32, a subset in fp16 (the interpreter is slow)
PARAMS = [pytest.param(c, torch.float32, id=f"{c}-fp32") for c in CASES] + [
    pytest.param(c, torch.float16, id=f"{c}-fp16") for c in ("text", "q0")
]


@pytest.mark.parametrize("case, dtype", PARAMS)
def test_prune_matches_reference(device, case, dtype):
    kw = dict(CASES[case])
    x, cu = tokens([1, 60, 0, 83, 37, 5], dtype=dtype, device=device)
    if kw.pop("text", False):
        kw["text"] = tokens([9], seed=3, dtype=dtype, device=device)[0]
    kw.setdefault("keep_ratio", 0.25)
    with adaptive_prune.backend("triton"):
        got = adaptive_prune.prune(x, cu, return_diagnostics=True, **kw)
    with adaptive_prune.backend("reference"):
        want = adaptive_prune.prune(x, cu, return_diagnostics=True, **kw)
    assert torch.equal(got.indices.cpu(), want.indices.cpu())
    assert torch.equal(got.diagnostics.budgets.cpu(), want.diagnostics.budgets.cpu())
    assert got.diagnostics.pool_size == want.diagnostics.pool_size
    assert got.diagnostics.candidates == want.diagnostics.candidates


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


def test_opcheck_every_op(device):
    x, cu = tokens([7, 0, 20, 1], dim=32, device=device)
    t, _ = tokens([5], dim=32, seed=1, device=device)
    ro, to = torch.tensor([0, 2, 4]), torch.tensor([0, 2, 5])
    pool = torch.tensor([0, 3, 5, 8, 9, 12, 27], device=device)
    po = torch.tensor([0, 3, 7])
    reserved = torch.tensor([1, 0, 0, 1, 0, 0, 0], dtype=torch.bool, device=device)
    w = torch.tensor([1.0, 0.0, 2.0, 0.5], device=device)
    samples = {
        "budget_scores": (x, cu, ro, t, to, 0.05, 10.0, EPS),
        "allocate_budgets": (w, torch.tensor([7, 0, 20, 1]), torch.tensor([1, 0, 1, 1]), ro,
                             torch.tensor([4, 10])),
        "greedy_select": (x, cu, torch.tensor([3, 0, 20, 1], device=device), "maxmin", EPS),
        "global_greedy": (x, pool, po, reserved, [2, 3], EPS),
        "token_alignment": (x, pool, po, t, to, "mean", EPS),
        "pareto_select": (torch.rand(7, device=device), torch.rand(7, device=device), po, [2, 3]),
    }  # fmt: skip
    with adaptive_prune.backend("triton"):
        for name, args in samples.items():
            torch.library.opcheck(ops.ALL_OPS[name], args)
