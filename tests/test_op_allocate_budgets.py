"""``adaptive_prune::allocate_budgets`` on every backend.

Hand-computed water-filling examples (caps, minimums, zero weights, largest-remainder ties to
the lower image index) hold on every backend. On random requests (tests/_inputs.py: random
weights, and equal weights full of remainder ties) every backend's budgets are identical to the
reference's (float64 logic on the same values), and the reference's satisfy the invariants.
"""

from __future__ import annotations

import pytest
import torch
from _backends import BACKENDS, call, opcheck
from _inputs import allocation_cases
from torch._subclasses.fake_tensor import FakeTensorMode

from adaptive_prune import ops
from adaptive_prune.ops import reference as ref

pytestmark = pytest.mark.usefixtures("poison")
OP = "allocate_budgets"
CASES = {c.id: c for c in allocation_cases()}


def args_of(c):
    return (c.weights, c.caps, c.mins, c.req_offsets, c.totals)


EXAMPLES = {
    # (weights, caps, mins, total) -> budgets
    "equal-remainders-4": ([1, 1, 1], [10, 10, 10], [0, 0, 0], 4, [2, 1, 1]),
    "equal-remainders-5": ([1, 1, 1], [10, 10, 10], [0, 0, 0], 5, [2, 2, 1]),
    "half-rounds-up": ([1, 2, 1], [10, 10, 10], [0, 0, 0], 5, [1, 3, 1]),  # 1.25 2.5 1.25
    "cap-redistributes": ([10, 1, 1], [2, 10, 10], [0, 0, 0], 8, [2, 3, 3]),
    "caps-and-minimums": ([100, 1, 1, 1], [3, 4, 10, 10], [1, 1, 1, 1], 12, [3, 3, 3, 3]),
    "zero-weight-gets-min": ([5, 0, 1], [10, 3, 10], [1, 1, 1], 9, [6, 1, 2]),
    "empty-image-gets-nothing": ([1, 1], [0, 5], [0, 1], 5, [0, 5]),
}


@pytest.mark.parametrize("example", list(EXAMPLES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_computed_examples(backend, example):
    w, caps, mins, total, want = EXAMPLES[example]
    args = (torch.tensor(w, dtype=torch.float32), torch.tensor(caps), torch.tensor(mins),
            torch.tensor([0, len(w)]), torch.tensor([total]))  # fmt: skip
    (got,) = call(backend, OP, args, keep_cpu=(1, 2, 3, 4))
    assert got.tolist() == want


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("backend", BACKENDS[1:])
def test_identical_to_the_reference(backend, case):
    c = CASES[case]
    (got,) = call(backend, OP, args_of(c), keep_cpu=(1, 2, 3, 4))
    assert torch.equal(got, ref.allocate_budgets(*args_of(c)))


@pytest.mark.parametrize("case", list(CASES))
def test_reference_invariants(case):
    c = CASES[case]
    b = ref.allocate_budgets(*args_of(c)).tolist()
    ro = c.req_offsets.tolist()
    w, caps, mins = c.weights.tolist(), c.caps.tolist(), c.mins.tolist()
    for r in range(len(ro) - 1):
        ks = range(ro[r], ro[r + 1])
        # the images with a positive weight can take the total: they do, the others stay at
        # their minimum. (Beyond that the sum falls short of the total and zero-weight images
        # may get one unit each from the largest-remainder step: reported, not specified.)
        room = sum(mins[k] for k in ks) + sum(caps[k] - mins[k] for k in ks if w[k] > 0)
        if int(c.totals[r]) <= room:
            assert sum(b[k] for k in ks) == int(c.totals[r])
            assert all(b[k] == mins[k] for k in ks if w[k] <= 0)
        else:
            assert sum(b[k] for k in ks) <= int(c.totals[r])
        assert all(mins[k] <= b[k] <= caps[k] for k in ks)
        # proportionality: uncapped images with more weight never get fewer extra tokens, up to
        # the one-token rounding slack of largest remainder
        free = [k for k in ks if mins[k] < b[k] < caps[k]]
        for i in free:
            for j in free:
                if w[i] > w[j]:
                    assert b[i] - mins[i] >= b[j] - mins[j] - 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_many_images_in_one_request(backend):
    g = torch.Generator().manual_seed(9)
    n = 300
    w = torch.rand(n, generator=g)
    caps = torch.randint(0, 9, (n,), generator=g)
    mins = torch.minimum(torch.ones(n, dtype=torch.int64), caps)
    args = (w, caps, mins, torch.tensor([0, n]), torch.tensor([int(caps.sum()) // 2]))
    (got,) = call(backend, OP, args, keep_cpu=(1, 2, 3, 4))
    assert torch.equal(got, ref.allocate_budgets(*args))


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_and_output_dtype_shape(backend):
    samples = [args_of(CASES["random-1"]), args_of(CASES["equal-weights-0"])]
    opcheck(backend, OP, samples)
    for args in samples:
        (got,) = call(backend, OP, args, keep_cpu=(1, 2, 3, 4))
        with FakeTensorMode() as mode:
            fake = ops.ALL_OPS[OP](*[mode.from_tensor(a) if isinstance(a, torch.Tensor) else a
                                     for a in args])  # fmt: skip
        assert got.dtype == fake.dtype == torch.int64 and got.shape == fake.shape
