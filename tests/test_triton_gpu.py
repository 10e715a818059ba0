"""GPU-only checks of the Triton backend (``pytest -m gpu``; skipped without CUDA).

- ``prune`` / ``prune_batch`` on CUDA (Triton kernels) against the same composition with the
  reference ops, in bf16, fp16 and fp32: identical indices on tie-free inputs;
- the large shape of the speed target (16 x 576 tokens, D = 3584, bf16): stage by stage
  against the reference, exact where the decisions are well separated, and as "equally valid"
  greedy orders (every pick within 1e-5 of the best score at its step) in general;
- the windowed greedy engine against the one-pick-per-step loops at the full default pool
  (same picks and gains, bit for bit);
- ``torch.library.opcheck`` of every op on CUDA tensors (device and CPU offsets);
- ``torch.compile`` of ``prune`` (Dynamo) and of an op (``fullgraph=True``, inductor);
- host synchronisations: exactly one in the adaptive composition, counted with
  ``torch.cuda.set_sync_debug_mode("warn")``.

The per-op tests (tests/test_op_*.py, parameter ``cuda``) and the Triton backend's own tests
(tests/test_backend_triton.py, whose ``device`` fixture is then CUDA) also run on the GPU.
"""

from __future__ import annotations

import warnings

import pytest
import torch

pytestmark = pytest.mark.gpu
pytest.importorskip("triton")

EPS = 1e-6
DTYPES = [
    pytest.param(torch.bfloat16, id="bf16"),
    pytest.param(torch.float16, id="fp16"),
    pytest.param(torch.float32, id="fp32"),
]


def tokens(counts, dim=64, seed=0, dtype=torch.float32, device="cuda"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(sum(counts), dim, generator=g, dtype=torch.float64)
    cu = [0]
    for c in counts:
        cu.append(cu[-1] + c)
    return x.to(dtype).to(device), torch.tensor(cu, dtype=torch.int64)


def test_triton_is_the_cuda_backend():
    from adaptive_prune import backends, ops

    assert backends.unavailable("triton") is None, backends.unavailable("triton")
    x = torch.ones(3, 4, device="cuda")
    for name in ops.ALL_OPS:
        assert backends.serving(name, "cuda", (x,))[0] == "triton", name


@pytest.mark.parametrize("engine", ["auto", "rows"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_text", [False, True], ids=["no-text", "text"])
def test_prune_on_cuda_matches_reference(dtype, with_text, engine):
    import adaptive_prune

    x, cu = tokens([1, 60, 0, 83, 37, 5], dtype=dtype)
    text = tokens([9], seed=3, dtype=dtype)[0] if with_text else None
    with adaptive_prune.backend("triton", greedy_engine=engine):
        got = adaptive_prune.prune(x, cu, text, keep_ratio=0.25, return_diagnostics=True)
    with adaptive_prune.backend("reference"):
        want = adaptive_prune.prune(x, cu, text, keep_ratio=0.25, return_diagnostics=True)
    assert got.indices.is_cuda
    assert torch.equal(got.indices, want.indices)
    assert torch.equal(got.diagnostics.budgets, want.diagnostics.budgets)
    assert got.diagnostics.pool_size == want.diagnostics.pool_size


def test_prune_batch_on_cuda_matches_reference():
    import adaptive_prune

    x, cu = tokens([40, 1, 55, 0, 30, 70, 20], dtype=torch.bfloat16)
    ro = torch.tensor([0, 2, 2, 5, 7])
    t = tokens([12], seed=4, dtype=torch.bfloat16)[0]
    texts = [t[:5], None, t[5:], None]
    kw = dict(keep_ratio=[0.3, 0.5, 0.2, 1.0], min_per_image=0)
    got = adaptive_prune.prune_batch(x, cu, ro, texts, **kw)
    with adaptive_prune.backend("reference"):
        want = adaptive_prune.prune_batch(x, cu, ro, texts, **kw)
    assert torch.equal(got.indices, want.indices)


# --------------------------------------------------------------------------------------------
# the speed-target shape
# --------------------------------------------------------------------------------------------
def _maxmin_is_valid(xh, acc, picks, gains=None, tol=1e-5):
    """``picks`` is a max-min greedy order over the rows ``xh`` (unit fp32) from the running
    distances ``acc`` (-inf = already picked), up to ``tol``; ``gains`` match ``acc``."""
    for t, j in enumerate(picks.tolist()):
        best = float(acc.max())
        assert float(acc[j]) > float("-inf") and float(acc[j]) >= best - tol, (t, j)
        if gains is not None:
            assert abs(float(gains[t]) - float(acc[j])) <= tol, (t, j)
        acc = torch.minimum(acc, 1.0 - xh @ xh[j])
        acc[j] = float("-inf")


def test_large_shape_stages_against_reference():
    """16 x 576 x 3584 bf16. Random high-dimensional tokens have near-ties in the greedy
    decisions (scores ~1 +- 0.05 over hundreds of candidates), so the orders are checked as
    valid greedy orders (within 1e-5 of the best at every step) rather than index by index."""
    from adaptive_prune.kernels.budget_scores import budget_scores_fwd
    from adaptive_prune.kernels.global_greedy import global_greedy_fwd
    from adaptive_prune.kernels.greedy_select import greedy_select_fwd
    from adaptive_prune.kernels.token_alignment import token_alignment_fwd

    from adaptive_prune.ops import reference as ref

    x, cu = tokens([576] * 16, dim=3584, dtype=torch.bfloat16)
    text = tokens([64], dim=3584, seed=9, dtype=torch.bfloat16)[0]
    ro, to = torch.tensor([0, 16]), torch.tensor([0, 64])
    got = budget_scores_fwd(x, cu, ro, text, to, 0.05, 10.0, EPS, "mean")
    want = ref.budget_scores(x, cu, ro, text, to, 0.05, 10.0, EPS, "mean")
    assert len(got) == len(want) == 6
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)

    budgets = torch.full((16,), 144)
    rank = greedy_select_fwd(x, cu, budgets, "maxmin", EPS)
    assert torch.equal((rank >= 0).view(16, 576).sum(1).cpu(), budgets)
    for k in (0, 7, 15):
        r = rank[576 * k : 576 * (k + 1)]
        order = torch.argsort(torch.where(r >= 0, r, 10**6))[:144]
        xh = ref.normalize(x[576 * k : 576 * (k + 1)], EPS)
        s = xh.sum(0)
        first = xh @ (s / s.norm())
        assert float(first[order[0]]) >= float(first.max()) - 1e-5
        acc = 1.0 - xh @ xh[order[0]]
        acc[order[0]] = float("-inf")
        _maxmin_is_valid(xh, acc, order[1:])

    pool = torch.randperm(9216, device="cuda")[:1200]
    po = torch.tensor([0, 1200])
    reserved = torch.zeros(1200, dtype=torch.bool, device="cuda")
    reserved[::100] = True  # 12 reserved
    order, gains, _ = global_greedy_fwd(x, pool, po, reserved, [400], EPS)
    assert torch.equal(order[:12].cpu(), torch.arange(0, 1200, 100))
    xh = ref.normalize(x[pool], EPS)
    acc = (1.0 - xh @ xh[reserved].T).min(1).values.masked_fill(reserved, float("-inf"))
    _maxmin_is_valid(xh, acc, order[12:], gains[12:])

    rows = pool[:1000]
    a = token_alignment_fwd(x, rows, torch.tensor([0, 1000]), text, to, "mean", EPS)
    torch.testing.assert_close(
        a, ref.token_alignment(x, rows, torch.tensor([0, 1000]), text, to, "mean", EPS),
        atol=1e-5, rtol=0,
    )  # fmt: skip


@pytest.mark.parametrize("window", [32, 64, 128])
def test_windowed_greedy_equals_step_loop_at_full_size(window):
    """The windowed engine (kernels/_maxmin.py) against the one-pick-per-step loops at the
    default pool of the speed target (every token of 16 x 576 x 3584 bf16 in the pool, the
    whole greedy order): the same picks and gains, bit for bit, and the same prune()."""
    from adaptive_prune.kernels.global_greedy import global_greedy_fwd
    from adaptive_prune.kernels.greedy_select import greedy_select_fwd

    import adaptive_prune

    x, cu = tokens([576] * 16, dim=3584, dtype=torch.bfloat16, seed=3)
    budgets = torch.full((16,), 576)
    want = greedy_select_fwd(x, cu, budgets, "maxmin", EPS, window=0)
    assert torch.equal(greedy_select_fwd(x, cu, budgets, "maxmin", EPS, window=window), want)
    pool = torch.randperm(9216, device="cuda")
    po = torch.tensor([0, 4000, 9216])  # two requests of different sizes
    reserved = torch.zeros(9216, dtype=torch.bool, device="cuda")
    reserved[::576] = True
    picks = [4000, 5000]
    o0, g0, _ = global_greedy_fwd(x, pool, po, reserved, picks, EPS, window=0)
    o1, g1, _ = global_greedy_fwd(x, pool, po, reserved, picks, EPS, window=window)
    assert torch.equal(o1, o0) and torch.equal(g1, g0)

    text = tokens([64], dim=3584, seed=6, dtype=torch.bfloat16)[0]
    with adaptive_prune.backend("triton", greedy_window=0):
        step = adaptive_prune.prune(x, cu, text, keep_ratio=0.25)
    with adaptive_prune.backend("triton", greedy_window=window):
        win = adaptive_prune.prune(x, cu, text, keep_ratio=0.25)
    assert torch.equal(win.indices, step.indices)


def test_large_shape_prune_invariants():
    import adaptive_prune

    x, cu = tokens([576] * 16, dim=3584, dtype=torch.bfloat16, seed=5)
    text = tokens([64], dim=3584, seed=6, dtype=torch.bfloat16)[0]
    a = adaptive_prune.prune(x, cu, text, keep_ratio=0.25)
    b = adaptive_prune.prune(x, cu, text, keep_ratio=0.25)
    assert torch.equal(a.indices, b.indices)  # deterministic
    assert a.indices.numel() == 2304 and a.indices.unique().numel() == 2304
    assert bool((a.indices[1:] > a.indices[:-1]).all())
    assert bool((a.per_image >= 1).all())


# --------------------------------------------------------------------------------------------
# op registration, compile, host syncs
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("offsets_on", ["cpu", "cuda"])
def test_opcheck_on_cuda(offsets_on):
    from adaptive_prune import ops

    x, cu = tokens([7, 0, 20, 1], dim=32, dtype=torch.bfloat16)
    t, _ = tokens([5], dim=32, seed=1, dtype=torch.bfloat16)

    def off(v):
        return torch.tensor(v, device=offsets_on)

    ro, to, po = off([0, 2, 4]), off([0, 2, 5]), off([0, 3, 7])
    cu = cu.to(offsets_on)
    pool = torch.tensor([0, 3, 5, 8, 9, 12, 27], device="cuda")
    reserved = torch.tensor([1, 0, 0, 1, 0, 0, 0], dtype=torch.bool, device="cuda")
    w = torch.tensor([1.0, 0.0, 2.0, 0.5], device="cuda")
    samples = {
        "budget_scores": (x, cu, ro, t, to, 0.05, 10.0, EPS, "mean"),
        "allocate_budgets": (w, off([7, 0, 20, 1]), off([1, 0, 1, 1]), ro, off([4, 10])),
        "greedy_select": (x, cu, torch.tensor([3, 0, 20, 1], device="cuda"), "maxmin", EPS),
        "global_greedy": (x, pool, po, reserved, [2, 3], EPS),
        "token_alignment": (x, pool, po, t, to, "mean", EPS),
        "pareto_select": (torch.rand(7, device="cuda"), torch.rand(7, device="cuda"), po, [2, 3]),
    }
    for name, args in samples.items():
        torch.library.opcheck(ops.ALL_OPS[name], args)


def test_torch_compile_prune():
    """``prune`` under Dynamo (graph breaks at its host syncs; the ops are opaque), and one op
    with ``fullgraph=True`` through inductor."""
    import adaptive_prune

    torch._dynamo.reset()
    x, cu = tokens([1, 60, 0, 83, 37, 5], dtype=torch.bfloat16)
    text = tokens([9], seed=3, dtype=torch.bfloat16)[0]
    eager = adaptive_prune.prune(x, cu, text, keep_ratio=0.25)
    compiled = torch.compile(adaptive_prune.prune, backend="eager")(x, cu, text, keep_ratio=0.25)
    assert torch.equal(eager.indices, compiled.indices)
    budgets = torch.tensor([1, 20, 0, 40, 10, 2], device="cuda")

    def stage1(v, b):
        return torch.ops.adaptive_prune.greedy_select(v, cu, b, "maxmin", EPS)

    want = stage1(x, budgets)
    got = torch.compile(stage1, fullgraph=True)(x, budgets)
    assert torch.equal(got, want)


def _count_syncs(fn) -> int:
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


@pytest.mark.parametrize("with_text", [False, True], ids=["no-text", "text"])
def test_host_syncs_of_the_composition(with_text, capsys):
    """docs/kernels.md: one sync in ``run_adaptive`` (rho -> B1 -> global_greedy's size)."""
    import adaptive_prune
    from adaptive_prune.methods import adaptive

    x, cu = tokens([576] * 4, dim=256, dtype=torch.bfloat16)
    text = tokens([16], dim=256, seed=2, dtype=torch.bfloat16)[0] if with_text else None
    cu_l = cu.tolist()
    to = [0, 16] if with_text else None
    opts = {k: v[0] for k, v in adaptive.OPTIONS.items()}

    def run():
        return adaptive.run_adaptive(x, cu_l, [0, 4], text, to, [576], 1, opts, False)

    run()  # compile the kernels, warm the allocators
    n_core = _count_syncs(run)
    adaptive_prune.prune(x, cu, text, keep_ratio=0.25)
    n_prune = _count_syncs(lambda: adaptive_prune.prune(x, cu, text, keep_ratio=0.25))
    with capsys.disabled():
        print(f"\n[host syncs] run_adaptive: {n_core}, prune (with input checks): {n_prune}")
    assert n_core == 1
    # functional.py's finiteness checks ride on the composition's read; the result check
    # (exactly B unique rows, minimums kept) adds one
    assert n_prune <= n_core + 1


def test_prune_refuses_cuda_graph_capture_clearly():
    """``prune`` reads stage 0's scores on the host, which a capture forbids: it says so before
    any work instead of failing inside a kernel launcher."""
    import adaptive_prune

    x, cu = tokens([60, 83])
    adaptive_prune.prune(x, cu, keep_ratio=0.25)  # kernels compiled outside the capture
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="cannot be captured in a CUDA graph"):
        with torch.cuda.graph(graph):
            adaptive_prune.prune(x, cu, keep_ratio=0.25)
