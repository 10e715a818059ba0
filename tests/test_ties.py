"""Exact and near ties go the same way on every backend (docs/METHOD.md, "Ties").

- The pick tie band is one constant: ``ops/_common.py PICK_TIE``, ``kernels/_common.py
  PICK_TIE`` and the C++ core's ``kPickTie`` (exposed as ``_core.PICK_TIE``) agree.
- ``band_argmax`` (the reference's pick) is the spec's rule: the lowest index within the band
  of the largest score, ``+inf`` scores included.
- ``prune`` end to end on tie-heavy batches (the per-op tie-heavy cases of tests/_inputs.py and
  the fuzz suite's tie-heavy tokens: a small integer grid, duplicated rows, zero rows, D = 1,
  2-token images) keeps exactly the reference's rows on every backend.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from _backends import FAST, context, require
from _inputs import TIE_HEAVY

import adaptive_prune as ap
from adaptive_prune.ops._common import PICK_TIE, band_argmax


def test_the_band_is_one_constant_everywhere():
    pytest.importorskip("triton")
    from adaptive_prune.kernels import _common as kc

    assert kc.PICK_TIE.value == PICK_TIE
    require("cpp")
    from adaptive_prune import _core

    assert _core.PICK_TIE == float(np.float32(PICK_TIE))


def test_band_argmax_takes_the_lowest_index_within_the_band():
    s = torch.tensor([0.5, 0.7, 0.7 - 0.9 * PICK_TIE, 0.7 + 0.5 * PICK_TIE, 0.1])
    assert band_argmax(s) == 1  # 2 and 3 are in the band too, 1 is the lowest
    # without 1, the largest is 3: 2 lies 1.4 bands below it
    assert band_argmax(s, torch.tensor([False, True, False, False, False])) == 3
    assert band_argmax(s, torch.tensor([False, True, False, True, False])) == 2
    s = torch.tensor([0.5, 0.7 - 2 * PICK_TIE, 0.7])
    assert band_argmax(s) == 2  # outside the band: the largest wins
    assert band_argmax(s, terms=3) == 1  # max-sum after 3 picks: a band of 3 * PICK_TIE
    inf = torch.tensor([1.0, math.inf, 0.3, math.inf])
    assert band_argmax(inf) == 1  # +inf: the lowest +inf index
    assert band_argmax(inf, torch.tensor([False, True, False, False])) == 3


def fuzz_tie_batch(seed: int):
    """The fuzz suite's tie-heavy tokens (tests/test_fuzz.py ``build``), small: 1-4 images of
    1-24 tokens from a small integer grid, duplicated rows, maybe zero rows, D in {1, 2, 3, 8}."""
    g = random.Random(seed)
    sizes = [g.choice([1, 2, 2, 3, 7, 16]) if g.random() < 0.5 else g.randint(1, 24)
             for _ in range(g.choice([1, 2, 3, 4]))]  # fmt: skip
    D = g.choice([1, 2, 3, 8])
    gen = torch.Generator().manual_seed(seed)
    N = sum(sizes)
    base = torch.randint(-2, 3, (max(2, N // 4), D), generator=gen).float()
    x = base[torch.randint(0, base.shape[0], (N,), generator=gen)]
    if g.random() < 0.3:
        x[torch.rand(N, generator=gen) < 0.2] = 0.0
    cu = torch.tensor([0] + np.cumsum(sizes).tolist())
    keep = g.choice([0.25, 0.5, g.uniform(0.05, 1.0)])
    kw = dict(
        budget=max(len(sizes), round(keep * N)),  # at least one row per image
        intra=g.choice(["maxmin", "maxsum"]),
        inter_image=g.choice([True, False]),
    )
    return x, cu, kw


def kept(backend: str, x, cu, text, kw) -> list[int]:
    require(backend)
    dev = torch.device("cuda" if backend == "cuda" else "cpu")
    t = None if text is None else text.to(dev)
    with context(backend):
        return ap.prune(x.to(dev), cu, t, **kw).indices.cpu().tolist()


@pytest.mark.parametrize("intra", ["maxmin", "maxsum"])
@pytest.mark.parametrize("case", TIE_HEAVY, ids=lambda c: c.id)
@pytest.mark.parametrize("backend", FAST)
def test_prune_on_tie_heavy_cases_keeps_the_reference_rows(backend, case, intra):
    x, cu = case.x(torch.float32), case.cu_seqlens
    text = case.t(torch.float32)
    if text is not None:
        text = text[: case.text_rows[0]]  # prune() takes one request: the first one's text
    kw = dict(keep_ratio=0.5, intra=intra)
    assert kept(backend, x, cu, text, kw) == kept("reference", x, cu, text, kw)


# the Triton interpreter takes seconds per prune(): fewer seeds there
SEEDS = {"cpp": range(60), "triton": range(8), "cuda": range(60)}


@pytest.mark.parametrize("backend", FAST)
def test_prune_on_fuzz_tie_heavy_tokens_keeps_the_reference_rows(backend):
    require(backend)
    differ = []
    for seed in SEEDS[backend]:
        x, cu, kw = fuzz_tie_batch(seed)
        if kept(backend, x, cu, None, kw) != kept("reference", x, cu, None, kw):
            differ.append(seed)
    assert not differ, f"seeds whose kept rows differ from the reference: {differ}"


def test_cpp_ops_match_the_reference_op_by_op_on_tie_heavy_tokens():
    """Every op of the method, called with the reference's own arguments, gives the
    reference's integer outputs on the C++ core (so a disagreement cannot hide in one op and
    be undone by a later one)."""
    require("cpp")
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if str(func.name()).startswith("adaptive_prune::"):
                self.calls.append((func, args, out))
            return out

    def ints(out):
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return [o.tolist() for o in outs if torch.is_tensor(o) and not o.is_floating_point()]

    n_calls = 0
    for seed in range(30):
        x, cu, kw = fuzz_tie_batch(seed)
        with Record() as rec, ap.backend("reference"):
            ap.prune(x, cu, None, **kw)
        for func, args, out in rec.calls:
            with ap.backend("cpp"):
                got = func(*args)
            assert ints(got) == ints(out), f"seed {seed}: {func.name()}"
            n_calls += 1
    assert n_calls > 0


def test_fuzz_tie_batches_really_are_tie_heavy():
    """The generator makes what it claims: most batches hold duplicated rows."""
    dup = 0
    for seed in range(20):
        x, _, _ = fuzz_tie_batch(seed)
        dup += int(torch.unique(x, dim=0).shape[0] < x.shape[0])
    assert dup >= 15
