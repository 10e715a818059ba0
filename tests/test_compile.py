"""``torch.compile(adaptive_prune.prune)`` with the default Inductor backend, as the README
claims: it compiles (with graph breaks at the host reads) and returns exactly the eager rows.

Inductor compiles C++ on the CPU (30-60 s per variant on 2 cores), so there are two variants:
static shapes without text, ``dynamic=True`` with text. ``tests/test_ops.py`` covers the ops
under ``fullgraph=True``.
"""

from __future__ import annotations

import pytest
import torch

import adaptive_prune as ap


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize(
    "with_text, dynamic", [(False, False), (True, True)], ids=["static-no-text", "dynamic-text"]
)
def test_prune_compiles_with_inductor(with_text, dynamic):
    g = torch.Generator().manual_seed(0)
    v = torch.randn(192, 32, generator=g)
    cu = torch.tensor([0, 64, 128, 192])
    text = torch.randn(6, 32, generator=g) if with_text else None
    compiled = torch.compile(ap.prune, dynamic=dynamic)  # default backend: inductor
    got = compiled(v, cu, text, keep_ratio=0.25)
    want = ap.prune(v, cu, text, keep_ratio=0.25)
    assert torch.equal(got.indices, want.indices)
    assert torch.equal(got.per_image, want.per_image)
    assert torch.equal(got.mask, want.mask)
    if dynamic:  # another size through the same compiled function
        v2, cu2 = v[:150], torch.tensor([0, 40, 100, 150])
        assert torch.equal(
            compiled(v2, cu2, text, keep_ratio=0.25).indices,
            ap.prune(v2, cu2, text, keep_ratio=0.25).indices,
        )
