"""torch.library registration as a whole: the namespace, ``torch.compile`` of several ops in one
graph and of the public call. Per-op ``opcheck`` and fake shapes, on every backend:
tests/test_op_*.py."""

from __future__ import annotations

import pytest
import torch
from _data import offsets, random_tokens

import adaptive_prune as ap
from adaptive_prune import ops


def sample_args():
    x, cu = random_tokens([7, 0, 5, 9], dim=16, seed=1)
    ro = torch.tensor([0, 2, 4])
    text = torch.randn(5, 16)
    to = torch.tensor([0, 3, 5])
    b = torch.tensor([3, 0, 2, 4])
    pool = torch.tensor([0, 2, 4, 7, 8, 12, 13, 15, 18])
    po = torch.tensor([0, 3, 9])
    reserved = torch.tensor([1, 0, 0, 1, 0, 1, 0, 0, 0], dtype=torch.bool)
    gains = torch.tensor([0.9, 0.7, 0.5, 0.8, 0.6, 0.3, 0.2])
    align = torch.tensor([0.1, 0.5, 0.2, 0.3, 0.9, 0.4, 0.0])
    return {
        "budget_scores": [
            (x, cu, ro, text, to, 0.05, 10.0, 1e-6, "mean"),
            (x.half(), cu.int(), ro, None, None, 0.5, 1.0, 1e-6, "max"),
            (x.t().contiguous().t(), cu, ro, text[:, ::1], to, 0.05, 10.0, 1e-6, "max"),
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
        "greedy_select": [(x, cu, b, "maxmin", 1e-6), (x.bfloat16(), cu, b, "maxsum", 1e-6)],
        "global_greedy": [(x, pool, po, reserved, [2, 4], 1e-6)],
        "token_alignment": [
            (x, pool, po, text, to, "mean", 1e-6),
            (x, pool, po, text, to, "max", 1e-6),
        ],
        "pareto_select": [(gains, align, torch.tensor([0, 3, 7]), [2, 2])],
        "refine_medoids": [
            (x, pool, po, torch.tensor([0, 0, 1, 2, 2, 2, 3, 3, 3]), reserved, reserved, 2, 1e-6)
        ],
    }


def test_ops_compile_fullgraph():
    args = sample_args()

    @torch.compile(fullgraph=True, backend="eager")
    def stages(x, cu, b, pool, po, reserved, gains, align, ko):
        rank = torch.ops.adaptive_prune.greedy_select(x, cu, b, "maxmin", 1e-6)
        order, g, d = torch.ops.adaptive_prune.global_greedy(x, pool, po, reserved, [2, 4], 1e-6)
        keep = torch.ops.adaptive_prune.pareto_select(gains, align, ko, [2, 2])
        return rank, order, g, d, keep

    x, cu, b = args["greedy_select"][0][:3]
    pool, po, reserved = args["global_greedy"][0][1:4]
    gains, align, ko = args["pareto_select"][0][:3]
    got = stages(x, cu, b, pool, po, reserved, gains, align, ko)
    want = (
        torch.ops.adaptive_prune.greedy_select(x, cu, b, "maxmin", 1e-6),
        *torch.ops.adaptive_prune.global_greedy(x, pool, po, reserved, [2, 4], 1e-6),
        torch.ops.adaptive_prune.pareto_select(gains, align, ko, [2, 2]),
    )
    assert len(got) == len(want)
    for a, w in zip(got, want):
        assert torch.equal(a, w)


@pytest.mark.parametrize("with_text", [False, True], ids=["no-text", "text"])
def test_prune_under_torch_compile(with_text):
    x, cu = random_tokens([20, 9, 14], dim=16, seed=2)
    text = torch.randn(3, 16) if with_text else None

    def f(x, cu, text):
        return ap.prune(x, cu, text, keep_ratio=0.3).indices

    compiled = torch.compile(f, backend="eager")
    assert torch.equal(compiled(x, cu, text), f(x, cu, text))


def test_ops_are_in_the_namespace():
    for name in ops.ALL_OPS:
        assert hasattr(torch.ops.adaptive_prune, name)
    out = torch.ops.adaptive_prune.greedy_select(
        torch.eye(3), offsets([3]), torch.tensor([2]), "maxmin", 1e-6
    )
    assert sorted(out.tolist()) == [-1, 0, 1]
