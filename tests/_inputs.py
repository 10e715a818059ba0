"""Shared op inputs for the per-op tests (tests/test_op_*.py): tie-free and tie-heavy cases.

A :class:`TokenCase` is one packed batch (``vision``, ``cu_seqlens``, requests, text) with the
arguments every token op derives from it (greedy budgets, a stage-2 pool with reserved tokens).
Tokens are generated in float64 and cast to the tested dtype, so the brute-force oracles can
replay exactly the values a backend sees.

- Tie-free cases (:data:`TIE_FREE`): Gaussian tokens with fixed seeds. Every greedy decision
  (first pick, every max-min / max-sum step, every stage-2 step) beats the runner-up by more
  than :data:`MARGIN` in float64 (the greedy op tests check this), so every backend must make
  exactly the reference's picks.
- Tie-heavy cases (:data:`TIE_HEAVY`): duplicated rows and images, rows that differ only by a
  positive scale, ``D = 1`` and 2-token images (both tokens have the same cosine to their
  mean). Tied scores agree only up to rounding; the pick band rule (docs/METHOD.md, "Ties")
  sends them to the lower index on every backend, so the greedy op tests assert the
  reference's picks here too (no score lies within rounding of a band edge: the tests check).

Pareto and allocation inputs (:func:`pareto_cases`, :func:`allocation_cases`) come in the same
two kinds: continuous values, and coarse grids / equal weights full of ties.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Optional

import torch
from _data import offsets

EPS = 1e-6
# a decision is tie-free when the best candidate beats the runner-up by more than this (fp64)
MARGIN = 1e-4


@dataclass(frozen=True)
class TokenCase:
    """One packed batch and the per-op arguments derived from it (all CPU, float64 tokens)."""

    id: str
    vision: torch.Tensor  # [N, D] float64
    counts: list[int]  # tokens per image
    images_per_request: list[int]
    text_rows: list[int]  # text rows per request (0 = no text)
    text: Optional[torch.Tensor]  # [M, D] float64
    budgets: list[int]  # greedy_select picks per image (at most the image's size)
    pool_fraction: float = 1.0  # share of each request's tokens in the stage-2 pool
    extra_picks: int = 8  # stage-2 picks beyond the reserved tokens
    ties: bool = False
    seed: int = 0
    notes: str = field(default="", compare=False)

    # ---- packing ---------------------------------------------------------------------------
    @property
    def cu_seqlens(self) -> torch.Tensor:
        return offsets(self.counts)

    @property
    def req_offsets(self) -> torch.Tensor:
        return offsets(self.images_per_request)

    @property
    def text_offsets(self) -> Optional[torch.Tensor]:
        return offsets(self.text_rows) if self.text is not None else None

    def x(self, dtype: torch.dtype) -> torch.Tensor:
        return self.vision.to(dtype)

    def t(self, dtype: torch.dtype) -> Optional[torch.Tensor]:
        return None if self.text is None else self.text.to(dtype)

    # ---- stage-2 pool ----------------------------------------------------------------------
    def pool(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
        """``(pool [K], pool_offsets [R+1], reserved [K] bool, num_picks [R])``.

        Request ``r``'s pool is a fixed random subset (``pool_fraction``) of its tokens in a
        fixed random order; the first pooled token of every image is reserved (as the method
        reserves each image's first pick), and ``num_picks[r]`` adds ``extra_picks`` greedy
        picks (capped at the pool size)."""
        g = torch.Generator().manual_seed(1000 + self.seed)
        cu = offsets(self.counts).tolist()
        ro = offsets(self.images_per_request).tolist()
        pool, po, reserved, picks = [], [0], [], []
        for r in range(len(ro) - 1):
            rows = torch.arange(cu[ro[r]], cu[ro[r + 1]])
            keep = max(int(round(len(rows) * self.pool_fraction)), min(len(rows), 1))
            rows = rows[torch.randperm(len(rows), generator=g)[:keep]].tolist()
            image = [next(k for k in range(len(cu) - 1) if cu[k] <= i < cu[k + 1]) for i in rows]
            seen: set[int] = set()
            res = []
            for k in image:
                res.append(k not in seen)
                seen.add(k)
            pool += rows
            reserved += res
            po.append(len(pool))
            picks.append(min(len(rows), sum(res) + self.extra_picks))
        return (
            torch.tensor(pool, dtype=torch.int64),
            torch.tensor(po, dtype=torch.int64),
            torch.tensor(reserved, dtype=torch.bool),
            picks,
        )


def _gauss(n: int, dim: int, g: torch.Generator) -> torch.Tensor:
    return torch.randn(n, dim, generator=g, dtype=torch.float64)


def _case(id, counts, ipr, text_rows, budgets, dim=32, seed=0, zero_rows=(), **kw) -> TokenCase:
    g = torch.Generator().manual_seed(seed)
    x = _gauss(sum(counts), dim, g)
    x[list(zero_rows)] = 0.0  # zero-norm tokens (their unit vector is 0)
    text = _gauss(sum(text_rows), dim, g) if sum(text_rows) else None
    budgets = [min(b, m) for b, m in zip(budgets, counts)]  # the op's contract: b_k <= m_k
    return TokenCase(id, x, counts, ipr, text_rows, text, budgets, seed=seed, **kw)


def _tie_case(id, x, counts, ipr, text_rows, budgets, seed=0, **kw) -> TokenCase:
    g = torch.Generator().manual_seed(seed + 77)
    text = _gauss(sum(text_rows), x.shape[1], g) if sum(text_rows) else None
    budgets = [min(b, m) for b, m in zip(budgets, counts)]  # the op's contract: b_k <= m_k
    return TokenCase(id, x, counts, ipr, text_rows, text, budgets, ties=True, seed=seed, **kw)


def _tie_free() -> list[TokenCase]:
    return [
        # odd sizes, a 1-token and an empty image, budgets up to an image's size
        _case("odd-sizes-text", [1, 37, 0, 23, 5], [5], [6], [1, 9, 0, 23, 7], seed=11),
        # several requests: one without images, one without text
        _case(
            "requests",
            [13, 0, 29, 1, 17],
            [2, 0, 3],
            [4, 3, 0],
            [4, 0, 8, 1, 6],
            seed=12,
            pool_fraction=0.7,
        ),
        _case("no-text-zero-row", [19, 8, 11], [3], [0], [6, 3, 11], seed=13, zero_rows=[22]),
        _case("one-token-images", [1, 1, 1], [2, 1], [2, 0], [1, 1, 1], seed=14),
        # one 577-token image (a ViT-L/14 336 px image with its CLS token)
        _case(
            "577",
            [577],
            [1],
            [5],
            [24],
            seed=27,
            pool_fraction=0.25,
            extra_picks=16,
        ),
    ]


def _tie_heavy() -> list[TokenCase]:
    cases = []
    # duplicated rows: 12 directions, rows scaled by 1..3 (same unit vector up to rounding)
    g = torch.Generator().manual_seed(21)
    dirs = _gauss(12, 8, g)
    x = dirs[torch.randint(0, 12, (90,), generator=g)] * torch.randint(1, 4, (90, 1), generator=g)
    cases.append(_tie_case("dup-rows", x, [40, 1, 0, 49], [4], [3], [20, 1, 0, 30], seed=21))
    # duplicated images: image 1 repeats image 0; a request of two identical images
    g = torch.Generator().manual_seed(22)
    a = _gauss(15, 16, g)
    x = torch.cat([a, a, _gauss(7, 16, g), a[:7]])
    cases.append(_tie_case("dup-images", x, [15, 15, 7, 7], [2, 2], [2, 0], [6, 6, 7, 3], seed=22))
    # D = 1: every unit vector is +1 or -1
    g = torch.Generator().manual_seed(23)
    x = torch.randint(1, 4, (14, 1), generator=g).double()
    x = x * torch.where(torch.rand(14, 1, generator=g) < 0.4, -1.0, 1.0).double()
    cases.append(_tie_case("d1", x, [9, 4, 1], [3], [2], [5, 4, 1], seed=23, extra_picks=6))
    # 2-token images: both tokens have the same cosine to their image's mean
    g = torch.Generator().manual_seed(24)
    cases.append(
        _tie_case("two-token", _gauss(8, 8, g), [2, 2, 2, 2], [2, 2], [1, 2], [1, 2, 2, 1], seed=24)
    )
    return cases


TIE_FREE: list[TokenCase] = _tie_free()
TIE_HEAVY: list[TokenCase] = _tie_heavy()
# a tiny batch for torch.library.opcheck (which calls the op several times per sample)
OPCHECK = _case("opcheck", [7, 0, 5, 1], [2, 2], [2, 3], [3, 0, 2, 1], dim=16, seed=5)
CASES = {c.id: c for c in TIE_FREE + TIE_HEAVY + [OPCHECK]}
# the tie-free cases that also run in fp16 and bf16 (the others in fp32: the interpreter is slow)
ALL_DTYPES = ("odd-sizes-text", "requests")


# --------------------------------------------------------------------------------------------
# Pareto and allocation inputs
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParetoCase:
    id: str
    gains: torch.Tensor  # [K] float32
    align: torch.Tensor  # [K] float32
    offsets: torch.Tensor  # [S+1]
    k: list[int]
    ties: bool


def pareto_cases() -> list[ParetoCase]:
    """Tie-free: continuous values (gains non-increasing along each segment, as in the method,
    or anti-correlated with the alignment: large fronts that the crowding cut decides).
    Tie-heavy: a coarse grid with equal values and identical points. Segments of 0-90 points
    (more than 64 exercises the kernels' chunked loops)."""
    out = []
    for seed in range(12):
        rng = random.Random(seed)
        g = torch.Generator().manual_seed(seed)
        sizes = [rng.randint(0, 90) for _ in range(rng.randint(1, 3))]
        so = offsets(sizes)
        K = int(so[-1])
        kind = seed % 4
        if kind == 0:
            f1, f2 = torch.rand(K, generator=g), torch.rand(K, generator=g)
            name = "random"
        elif kind == 1:
            f1 = torch.randint(0, 5, (K,), generator=g).float()
            f2 = torch.randint(0, 5, (K,), generator=g).float()
            name = "grid"
        elif kind == 2:
            f1 = torch.sort(torch.rand(K, generator=g), descending=True).values
            f2 = torch.rand(K, generator=g)
            name = "sorted-gains"
        else:
            f1 = torch.rand(K, generator=g)
            f2 = 1 - f1 + 0.01 * torch.randint(0, 3, (K,), generator=g).float()
            name = "anti-correlated"
        k = [rng.randint(0, s) for s in sizes]
        out.append(ParetoCase(f"{name}-{seed}", f1, f2, so, k, ties=kind in (1, 3)))
    return out


@dataclass(frozen=True)
class AllocCase:
    id: str
    weights: torch.Tensor  # [n] float32
    caps: torch.Tensor  # [n] int64
    mins: torch.Tensor
    req_offsets: torch.Tensor
    totals: torch.Tensor  # [R]
    ties: bool


def allocation_cases(count: int = 60) -> list[AllocCase]:
    """Random requests of 0-7 images; every third case has equal weights (the largest-remainder
    ties go to the lower image index), the others random weights with some zeros."""
    out = []
    for trial in range(count):
        rng = random.Random(trial)
        g = torch.Generator().manual_seed(trial)
        sizes = [rng.randint(0, 7) for _ in range(rng.randint(1, 4))]
        if sum(sizes) == 0:
            sizes[0] = 1
        n = sum(sizes)
        ro = offsets(sizes)
        ties = trial % 3 == 0
        w = (
            torch.ones(n)
            if ties
            else torch.rand(n, generator=g) * (torch.rand(n, generator=g) > 0.2)
        )
        caps = torch.randint(0, 30, (n,), generator=g)
        mins = torch.minimum(torch.full((n,), rng.randint(0, 2)), caps)
        totals = []
        for r in range(len(sizes)):
            lo = int(mins[ro[r] : ro[r + 1]].sum())
            hi = int(caps[ro[r] : ro[r + 1]].sum())
            totals.append(rng.randint(lo, hi))
        kind = "equal-weights" if ties else "random"
        out.append(AllocCase(f"{kind}-{trial}", w, caps, mins, ro, torch.tensor(totals), ties))
    return out
