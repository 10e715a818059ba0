"""The quality benchmark's metric functions (benchmarks/quality.py) on hand-built cases."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "quality.py"
_spec = importlib.util.spec_from_file_location("_quality_bench", _PATH)
Q = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = Q  # dataclasses look the module up
_spec.loader.exec_module(Q)

# e1, e2, -e1, and (e1 + e2) scaled: cosines to e1 are 1, 0, -1, 1/sqrt(2)
X = torch.tensor([[1.0, 0.0], [0.0, 3.0], [-2.0, 0.0], [5.0, 5.0]])


def test_coverage_and_k_center_by_hand():
    kept = torch.tensor([0])
    d = Q.nearest_kept_distance(X, kept)
    want = [0.0, 1.0, 2.0, 1.0 - 1.0 / math.sqrt(2.0)]
    assert d.tolist() == pytest.approx(want)
    assert Q.coverage(X, kept) == pytest.approx(sum(want) / 4)
    assert Q.k_center(X, kept) == pytest.approx(2.0)
    # keeping e1 and -e1: e2 is at distance 1 from both, (1,1) at 1 - 1/sqrt(2)
    kept = torch.tensor([0, 2])
    assert Q.k_center(X, kept) == pytest.approx(1.0)
    assert Q.coverage(X, torch.arange(4)) == pytest.approx(0.0, abs=1e-12)
    assert math.isinf(Q.k_center(X, torch.zeros(0, dtype=torch.int64)))


def test_attention_recall_by_hand():
    q = torch.tensor([[2.0, 0.0]])  # cosines 1, 0, -1, 1/sqrt(2)
    tau = 3.0
    w = [math.exp(tau * c) for c in (1.0, 0.0, -1.0, 1.0 / math.sqrt(2.0))]
    kept = torch.tensor([0, 3])
    want = (w[0] + w[3]) / sum(w)
    assert Q.attention_recall(X, q, kept, tau=tau) == pytest.approx(want)
    assert Q.attention_recall(X, q, torch.arange(4), tau=tau) == pytest.approx(1.0)
    # two query rows: the mean of the rows' recalls
    q2 = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    w2 = [math.exp(tau * c) for c in (0.0, 1.0, 0.0, 1.0 / math.sqrt(2.0))]
    want2 = 0.5 * (want + (w2[0] + w2[3]) / sum(w2))
    assert Q.attention_recall(X, q2, kept, tau=tau) == pytest.approx(want2)
    # scaled dot product on the raw vectors: logits q . x / sqrt(2)
    lg = [2.0 / math.sqrt(2), 0.0, -4.0 / math.sqrt(2), 10.0 / math.sqrt(2)]
    e = [math.exp(v) for v in lg]
    assert Q.attention_recall(X, q, kept, dot=True) == pytest.approx((e[0] + e[3]) / sum(e))


def test_validity_and_counts():
    counts = [2, 0, 2]
    assert Q.per_image_counts(counts, torch.tensor([0, 3])) == [1, 0, 1]
    assert Q.is_valid(torch.tensor([0, 3]), 4, 2, counts, 1)
    assert not Q.is_valid(torch.tensor([0, 1]), 4, 2, counts, 1)  # image 2 starved
    assert Q.is_valid(torch.tensor([0, 1]), 4, 2, counts, 0)
    assert not Q.is_valid(torch.tensor([3, 0]), 4, 2, counts, 0)  # unsorted
    assert not Q.is_valid(torch.tensor([0, 0]), 4, 2, counts, 0)  # duplicate
    assert not Q.is_valid(torch.tensor([0, 4]), 4, 2, counts, 0)  # out of range
    assert not Q.is_valid(torch.tensor([0]), 4, 2, counts, 0)  # wrong count


def test_group_min_ratio_by_hand():
    counts = [10, 10, 20]  # groups a, a, b: each holds half of the tokens
    groups = [0, 0, 1]
    kept = torch.tensor([0, 1, 2, 20])  # 3 of 4 kept in group a, 1 in group b
    assert Q.group_min_ratio(counts, groups, kept) == pytest.approx((1 / 4) / (20 / 40))


def test_instance_metrics_and_cell_score():
    inst = Q.Instance(
        key="t/needle/0",
        split="t",
        scenario="needle",
        tokens=X,
        cu=torch.tensor([0, 2, 4]),
        names=["a", "b"],
        kind=["photo", "texture"],
        group=[0, 1],
        needle=0,
        query=torch.tensor([[1.0, 0.0]]),
    )
    m = Q.instance_metrics(inst, torch.tensor([0, 3]), 2, 1)
    assert m["valid"] == 1.0 and m["starved"] == 0.0
    assert m["needle_keep"] == pytest.approx(0.5)
    assert m["photo_share"] == pytest.approx(0.5)
    assert m["needle_cov"] == pytest.approx(0.5 * (0.0 + 1.0 - 1.0 / math.sqrt(2.0)))
    # cell score: twice the coverage/k-center of the reference, same recall -> log(1/2)/2
    r = {"coverage": 0.1, "kcenter": 0.2, "attn_recall": 0.5}
    v = {"coverage": 0.2, "kcenter": 0.4, "attn_recall": 0.5}
    assert Q.cell_score(v, r) == pytest.approx(0.5 * math.log(0.5))
    v2 = {"coverage": 0.1, "kcenter": 0.2}
    assert Q.cell_score(v2, r) == pytest.approx(0.0)
