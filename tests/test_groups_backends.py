"""The grouped global chain (``global_greedy`` with ``group_offsets``): the reference against a
brute-force merge of per-group chains, and the C++ and Triton implementations against the
reference on tie-free inputs."""

from __future__ import annotations

import math

import pytest
import torch

import adaptive_prune as ap
from adaptive_prune.backends import cpp
from adaptive_prune.ops import reference as ref

EPS = 1e-6


def _case(seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(140, 16, generator=g, dtype=torch.float64).float()
    pool = torch.randperm(140, generator=g)[:100]
    po = torch.tensor([0, 45, 100])
    go = torch.tensor([0, 12, 30, 45, 45, 70, 100])  # an empty group as well
    res = torch.zeros(100, dtype=torch.bool)
    res[[2, 14, 50]] = True  # group 2 (30:45) and group 5 (70:100) have no reserved token
    return x, pool, po, res, go


def _naive(x, pool, po, res, go, picks):
    """One chain per request: argmax over unpicked of the min distance to the picked tokens of
    the same group (+inf when the group has none), ties to the lower position."""
    xh = x[pool] / x[pool].norm(dim=1, keepdim=True)
    gid = torch.repeat_interleave(torch.arange(len(go) - 1), go[1:] - go[:-1])
    order, gains = [], []
    for r in range(len(po) - 1):
        a, e = int(po[r]), int(po[r + 1])
        picked = [i for i in range(a, e) if res[i]]
        order += picked
        gains += [math.inf] * len(picked)
        while len(picked) < picks[r]:
            best, bv = None, -1.0
            for i in range(a, e):
                if i in picked:
                    continue
                mine = [j for j in picked if gid[j] == gid[i]]
                d = min((1.0 - float(xh[i] @ xh[j]) for j in mine), default=math.inf)
                if d > bv:
                    best, bv = i, d
            picked.append(best)
            order.append(best)
            gains.append(bv)
    return torch.tensor(order), torch.tensor(gains)


@pytest.mark.parametrize("seed", [0, 1])
def test_reference_is_the_merge_of_group_chains(seed):
    x, pool, po, res, go = _case(seed)
    picks = [30, 40]
    o, g, _ = ref.global_greedy(x, pool, po, res, picks, EPS, go)
    o2, g2 = _naive(x, pool, po, res, go, picks)
    assert torch.equal(o, o2)
    assert torch.allclose(g, g2.float(), atol=1e-5)


@pytest.mark.skipif(cpp.unavailable() is not None, reason="the C++ core is not built")
@pytest.mark.parametrize("picks", [[3, 2], [30, 40], [45, 55]])
def test_cpp_matches_reference(picks):
    x, pool, po, res, go = _case(3)
    want = ref.global_greedy(x, pool, po, res, picks, EPS, go)
    with ap.backend("cpp"):
        got = torch.ops.adaptive_prune.global_greedy(x, pool, po, res, picks, EPS, go)
    assert torch.equal(got[0], want[0])
    fin = torch.isfinite(want[1])
    assert torch.equal(torch.isfinite(got[1]), fin)
    assert torch.allclose(got[1][fin], want[1][fin], atol=1e-5)


@pytest.mark.interpreter
@pytest.mark.parametrize("window", [0, None], ids=["step", "window"])
def test_triton_matches_reference(window, device):
    from adaptive_prune.kernels.global_greedy import global_greedy_fwd

    x, pool, po, res, go = _case(4)
    picks = [30, 40]
    want = ref.global_greedy(x, pool, po, res, picks, EPS, go)
    o, g, _ = global_greedy_fwd(x.to(device), pool.to(device), po, res.to(device), picks, EPS, go,
                             window=window)  # fmt: skip
    assert torch.equal(o.cpu(), want[0])
    fin = torch.isfinite(want[1])
    assert torch.allclose(g.cpu()[fin], want[1][fin], atol=1e-5)
