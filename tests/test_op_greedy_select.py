"""``adaptive_prune::greedy_select`` on every backend against a brute-force greedy.

The brute force recomputes every candidate's score from the whole picked set at every step
(O(b^2 m) per image, float64), independently of the reference's running update, and picks by
the spec's band rule (the lowest index within ``PICK_TIE`` of the best score; max-sum:
``PICK_TIE * t`` after ``t`` picks). Tie-free cases (tests/_inputs.py): every backend gives
exactly the brute force's ranks. Tie-heavy cases: every candidate's score lies clear of the band
edge (more than :data:`EDGE` from ``best - band``, so fp32 rounding cannot move it across), and
every backend gives exactly the brute force's and the reference's ranks too.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from _backends import BACKENDS, DTYPES, TIE, call, opcheck
from _inputs import ALL_DTYPES, CASES, EPS, MARGIN, TIE_FREE, TIE_HEAVY, offsets
from torch._subclasses.fake_tensor import FakeTensorMode

from adaptive_prune import ops
from adaptive_prune.ops import reference as ref
from adaptive_prune.ops._common import PICK_TIE

pytestmark = pytest.mark.usefixtures("poison")
OP = "greedy_select"
MODES = ["maxmin", "maxsum"]
# a tie-heavy case is decidable when no candidate's float64 score lies within this of the band
# edge ``best - band`` (fp32 scores of D <= 32 rows round by ~1e-7)
EDGE = 2e-6


# --------------------------------------------------------------------------------------------
# brute force
# --------------------------------------------------------------------------------------------
def unit(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return x / x.norm(dim=1, keepdim=True).clamp_min(EPS)


def step_scores(xh: torch.Tensor, picked: list[int], mode: str) -> torch.Tensor:
    """Every candidate's score against the picked set, from scratch (picked ones: -inf)."""
    if not picked:
        s = xh.sum(0)
        score = xh @ (s / s.norm().clamp_min(EPS))  # the first pick: closest to the mean
    else:
        d = 1.0 - xh @ xh[picked].T  # [m, t]
        score = d.min(1).values if mode == "maxmin" else d.sum(1)
    score = score.clone()
    score[picked] = -math.inf
    return score


def band(mode: str, picked: int) -> float:
    """The spec's tie band at a step with ``picked`` picks made (the first pick: 0)."""
    return PICK_TIE * picked if mode == "maxsum" and picked else PICK_TIE


def brute_greedy(x: torch.Tensor, b: int, mode: str) -> tuple[list[int], float, float]:
    """``(picks in order, smallest best-minus-runner-up gap, smallest distance of a candidate's
    score to the band edge)`` over the steps. Picks by the band rule."""
    xh = unit(x)
    picks: list[int] = []
    margin = edge = math.inf
    for _ in range(min(b, len(x))):
        score = step_scores(xh, picks, mode)
        top = torch.topk(score, min(2, len(x) - len(picks))).values
        if len(top) == 2:
            margin = min(margin, float(top[0] - top[1]))
        thr = float(top[0]) - band(mode, len(picks))
        live = score[score > -math.inf]
        edge = min(edge, float((live - thr).abs().min()))
        picks.append(int(torch.nonzero(score >= thr)[0]))  # the lowest index in the band
    return picks, margin, edge


@functools.cache
def brute_case(case_id: str, dtype: torch.dtype, mode: str) -> tuple[torch.Tensor, float, float]:
    """Brute-force ranks ``[N]`` of a case (as ``dtype`` tokens), the smallest margin and the
    smallest distance to a band edge."""
    c = CASES[case_id]
    x, cu = c.x(dtype), c.cu_seqlens.tolist()
    rank = torch.full((x.shape[0],), -1, dtype=torch.int64)
    margin = edge = math.inf
    for k in range(len(cu) - 1):
        picks, gap, e = brute_greedy(x[cu[k] : cu[k + 1]], c.budgets[k], mode)
        margin, edge = min(margin, gap), min(edge, e)
        for step, i in enumerate(picks):
            rank[cu[k] + i] = step
    return rank, margin, edge


def order_of(rank: torch.Tensor) -> list[int]:
    picked = torch.nonzero(rank >= 0).flatten()
    return picked[torch.argsort(rank[picked])].tolist()


def replay_gains(x: torch.Tensor, order: list[int], mode: str) -> list[float]:
    """Float64 score of every pick at its step; asserts each pick is a valid greedy step."""
    xh = unit(x)
    gains = []
    for t, j in enumerate(order):
        score = step_scores(xh, order[:t], mode)
        assert score[j] > -math.inf, f"step {t}: token {j} picked twice"
        assert float(score[j]) >= float(score.max()) - TIE, (
            f"step {t}: token {j} scores {float(score[j])}, the best {float(score.max())}"
        )
        gains.append(float(score[j]))
    return gains


def args_of(c, dtype, mode):
    return (c.x(dtype), c.cu_seqlens, torch.tensor(c.budgets), mode, EPS)


def check_structure(rank: torch.Tensor, c) -> None:
    assert rank.dtype == torch.int64 and rank.shape == (c.vision.shape[0],)
    cu = c.cu_seqlens.tolist()
    for k in range(len(cu) - 1):
        r = rank[cu[k] : cu[k + 1]]
        b = min(c.budgets[k], cu[k + 1] - cu[k])
        assert sorted(r[r >= 0].tolist()) == list(range(b)), f"image {k}: ranks {r.tolist()}"
        assert bool((r >= -1).all())


# --------------------------------------------------------------------------------------------
# the inputs are what they claim (in every dtype they run in)
# --------------------------------------------------------------------------------------------
# rounded to bf16, odd-sizes-text has a max-min decision within 2.4e-5 of a tie: fp32/fp16 only
TIE_FREE_PARAMS = [
    pytest.param(c.id, dt, id=f"{c.id}-{dt}")
    for c in TIE_FREE
    for dt in (["fp32", "fp16", "bf16"] if c.id in ALL_DTYPES else ["fp32"])
    if (c.id, dt) != ("odd-sizes-text", "bf16")
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case, dtype", TIE_FREE_PARAMS)
def test_tie_free_cases_have_a_margin(case, dtype, mode):
    _, margin, edge = brute_case(case, DTYPES[dtype], mode)
    assert margin > MARGIN and edge > EDGE


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", [c.id for c in TIE_HEAVY])
def test_tie_heavy_cases_are_clear_of_the_band_edge(case, mode):
    assert brute_case(case, torch.float32, mode)[2] > EDGE


# --------------------------------------------------------------------------------------------
# every backend
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case, dtype", TIE_FREE_PARAMS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_tie_free_matches_brute_force(backend, case, dtype, mode):
    if backend == "triton" and dtype == "bf16":
        pytest.skip("bf16 under the interpreter: tests/test_backend_triton.py")
    c = CASES[case]
    (rank,) = call(backend, OP, args_of(c, DTYPES[dtype], mode), keep_cpu=(1, 2))
    check_structure(rank, c)
    want = brute_case(case, DTYPES[dtype], mode)[0]
    assert torch.equal(rank, want)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", [c.id for c in TIE_HEAVY])
@pytest.mark.parametrize("backend", BACKENDS)
def test_tie_heavy_gives_the_same_picks_as_the_reference(backend, case, mode):
    c = CASES[case]
    args = args_of(c, torch.float32, mode)
    (rank,) = call(backend, OP, args, keep_cpu=(1, 2))
    check_structure(rank, c)
    assert torch.equal(rank, brute_case(case, torch.float32, mode)[0])
    assert torch.equal(rank, ref.greedy_select(*args))
    x, cu = c.x(torch.float32), c.cu_seqlens.tolist()
    for k in range(len(cu) - 1):  # every pick is a valid greedy step (within the band)
        replay_gains(x[cu[k] : cu[k + 1]], order_of(rank[cu[k] : cu[k + 1]]), mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_near_ties_go_to_the_lower_index(backend, mode):
    """Two-token images (both tokens have the same cosine to the mean: token 0 first), and
    images of a direction repeated at scales 1..3 after a second direction (the repeats score
    the same up to rounding: the lowest index among them is picked), in many random draws."""
    g = torch.Generator().manual_seed(5)
    two = torch.randn(2 * 40, 24, generator=g, dtype=torch.float64)
    u, v = torch.randn(2, 24, generator=g, dtype=torch.float64)
    scales = torch.tensor([1.0, 3.0, 2.0, 1.0, 3.0, 7.0], dtype=torch.float64)[:, None]
    rep = torch.cat([v[None] * 2, u[None] * scales])  # [7, 24]: v, then u six times
    x = torch.cat([two, rep, rep]).float()
    counts = [2] * 40 + [7, 7]
    budgets = [1] * 40 + [3, 3]
    args = (x, offsets(counts), torch.tensor(budgets), mode, EPS)
    (rank,) = call(backend, OP, args, keep_cpu=(1, 2))
    assert rank[0:80:2].tolist() == [0] * 40  # token 0 of every two-token image
    assert torch.equal(rank, ref.greedy_select(*args))
    for k in range(len(counts)):
        seg = rank[sum(counts[:k]) : sum(counts[: k + 1])]
        want = brute_greedy(x[sum(counts[:k]) : sum(counts[: k + 1])], budgets[k], mode)[0]
        assert order_of(seg) == want, f"image {k}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_budgets_of_zero_and_the_whole_image(backend):
    x = CASES["no-text-zero-row"].x(torch.float32)[:12]
    cu = offsets([5, 0, 7])
    (rank,) = call(backend, OP, (x, cu, torch.tensor([0, 0, 7]), "maxmin", EPS), keep_cpu=(1, 2))
    assert bool((rank[:5] == -1).all())
    assert sorted(rank[5:].tolist()) == list(range(7))
    with pytest.raises(ValueError, match=r"budgets\[2\] = 8 must lie in \[0, 7\]"):
        call(backend, OP, (x, cu, torch.tensor([0, 0, 8]), "maxmin", EPS), keep_cpu=(1, 2))


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_and_output_dtype_shape(backend):
    c = CASES["opcheck"]
    samples = [args_of(c, torch.float32, "maxmin"), args_of(c, torch.bfloat16, "maxsum")]
    if backend == "reference":  # int32 offsets, a non-contiguous fp16 input
        x = c.x(torch.float16).t().contiguous().t()
        samples.append((x, c.cu_seqlens.int(), torch.tensor(c.budgets), "maxmin", EPS))
    opcheck(backend, OP, samples)
    for args in samples:
        (rank,) = call(backend, OP, args, keep_cpu=(1, 2))
        with FakeTensorMode() as mode:
            fake = ops.ALL_OPS[OP](*[mode.from_tensor(a) if isinstance(a, torch.Tensor) else a
                                     for a in args])  # fmt: skip
        assert rank.dtype == fake.dtype == torch.int64 and rank.shape == fake.shape


# --------------------------------------------------------------------------------------------
# the reference in float64
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", [c.id for c in TIE_FREE])
def test_reference_fp64_matches_brute_force(case, mode):
    c = CASES[case]
    rank = ref.greedy_select(*args_of(c, torch.float64, mode))
    assert torch.equal(rank, brute_case(case, torch.float64, mode)[0])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", [c.id for c in TIE_HEAVY])
def test_reference_fp64_tie_heavy_matches_brute_force(case, mode):
    c = CASES[case]
    rank = ref.greedy_select(*args_of(c, torch.float64, mode))
    assert torch.equal(rank, brute_case(case, torch.float64, mode)[0])


def test_reference_ties_go_to_the_lower_index():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    rank = ref.greedy_select(x, offsets([4]), torch.tensor([3]), "maxmin", EPS)
    # mu is the diagonal: every token ties on representativeness -> token 0 first; then the
    # farthest (tokens 2 and 3 tie) -> token 2; then tokens 1 and 3 tie at distance 0 -> token 1
    assert rank.tolist() == [0, 2, 1, -1]
