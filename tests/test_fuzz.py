"""Fuzz suite: random shapes, dtypes, options, budgets and ties, through ``prune`` on every backend.

Every case runs in a forked child with a time limit (a hang or a crash fails the case, not the
session). Each case must give, on every backend, either a valid output (exactly ``B`` unique
sorted rows per request, the per-image minimums) or a ValueError/TypeError that names the
argument at fault; every backend must give the same kind of outcome, and tie-free inputs
(continuous fp32/fp64 tokens, D >= 2) the same rows exactly.

CI mode: ``FUZZ_CASES`` = 30 cases (about a minute on 2 cores), the Triton interpreter on the
first 3 that run the adaptive method (it takes seconds per call). Long mode::

    ADAPTIVE_PRUNE_FUZZ=2000 python -m pytest -q tests/test_fuzz.py

runs 2000 cases, Triton on every adaptive one when it runs here (the seeds are the case
numbers, so a failure names the seed that reproduces it: ``ADAPTIVE_PRUNE_FUZZ_SEED=<seed>``
runs that one).
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import random
import traceback

import pytest
import torch
from conftest import TRITON_RUNS

import adaptive_prune as ap

LONG = int(os.environ.get("ADAPTIVE_PRUNE_FUZZ", "0") or 0)
ONLY = os.environ.get("ADAPTIVE_PRUNE_FUZZ_SEED")
FUZZ_CASES = LONG or 30
FUZZ_TRITON = FUZZ_CASES if LONG else 3
TIME_LIMIT_S = 120.0 if LONG else 60.0

BACKENDS = ["reference"]
if ap.backends.unavailable("cpp") is None:
    BACKENDS.append("cpp")

# words an error must contain to name its argument
ARGUMENTS = (
    "vision",
    "text",
    "cu_seqlens",
    "request_offsets",
    "keep_ratio",
    "budget",
    "min_per_image",
    "method",
    "option",
)

METHODS = ["adaptive"] * 6 + [
    "random",
    "uniform",
    "divprune",
    "divprune_pooled",
    "dart",
    "cdpruner",
    "trimtokenator",
]

# option -> (valid sampler, invalid values)
OPTIONS = {
    "sigma": (lambda g: 10 ** g.uniform(-4, 1), [0.0, 1e-300, -1.0, math.nan, math.inf]),
    "tau_a": (lambda g: 10 ** g.uniform(-2, 4), [0.0, 1e300, -2.0]),
    "beta": (lambda g: g.choice([0.0, 1.0, 10 ** g.uniform(-3, 4)]), [1e300, -0.5]),
    "lam": (lambda g: g.choice([0.0, 3.0, 12.0, 10 ** g.uniform(-2, 6)]), [1e308, -1.0]),
    "gamma": (lambda g: g.choice([1.0, 6.0, 10 ** g.uniform(0, 6)]), [0.5, 1e308]),
    "eps": (lambda g: 10 ** g.uniform(-18, 0), [0.0, 1e-30, 1e300]),
    "tau": (lambda g: g.choice([None, g.uniform(-0.9, 1.0)]), [-1.0, 2.0]),
    "intra": (lambda g: g.choice(["maxmin", "maxsum"]), ["max"]),
    "align": (lambda g: g.choice(["mean", "max"]), ["sum"]),
    "inter_image": (lambda g: g.choice([True, False]), [1]),
    "selection": (lambda g: g.choice(["pareto", "weighted"]), ["best"]),
    "diversity_floor": (lambda g: g.choice([0.0, 0.5, 1.0, g.random()]), [1.5, math.nan]),
}


def make_case(seed: int) -> dict:
    """One random case: tensors built in the child from this description."""
    g = random.Random(seed)
    R = g.choice([1, 1, 2, 3])
    images = [g.choice([1, 1, 2, 3, 4]) for _ in range(R)]
    sizes = [
        g.choice([0, 1, 2, 3, 7, 16, 33]) if g.random() < 0.3 else g.randint(1, 40)
        for _ in range(sum(images))
    ]
    if sum(sizes) == 0:
        sizes[0] = 5
    dtype = g.choice(["float32"] * 4 + ["float64", "float16", "bfloat16"])
    ties = g.random() < 0.35
    method = g.choice(METHODS)
    case = {
        "seed": seed,
        "sizes": sizes,
        "images": images,
        "D": g.choice([1, 2, 3, 8, 16, 24]),
        "dtype": dtype,
        "ties": ties,
        "zero_rows": ties and g.random() < 0.5,
        "text_rows": [g.choice([0, 1, 3]) if g.random() < 0.6 else 0 for _ in range(R)],
        "text_dtype": dtype if g.random() < 0.8 else g.choice(["float32", "float64", "float16"]),
        "method": method,
        "min_per_image": g.choice([0, 1, 1, 2]),
        "options": {},
        "scale": g.choice([1.0] * 8 + [2.0**40, 1e25]),
    }
    if g.random() < 0.5:
        case["keep_ratio"] = [g.choice([g.uniform(0.01, 1.0), 1.0, 0.05]) for _ in range(R)]
    else:
        total = [sum(sizes[sum(images[:r]) : sum(images[: r + 1])]) for r in range(R)]
        case["budget"] = [g.randint(0, t) for t in total]
    if method == "adaptive":
        for name in g.sample(sorted(OPTIONS), g.randint(0, 4)):
            valid, invalid = OPTIONS[name]
            case["options"][name] = valid(g) if g.random() < 0.85 else g.choice(invalid)
    if g.random() < 0.05:  # one wholly bad argument
        case["bad"] = g.choice(["keep_ratio", "min_per_image", "option"])
    return case


def build(case: dict):
    g = torch.Generator().manual_seed(case["seed"])
    N, D = sum(case["sizes"]), case["D"]
    if case["ties"]:  # few distinct rows (duplicates, equal distances), maybe zero rows
        base = torch.randint(-2, 3, (max(2, N // 4), D), generator=g).float()
        x = base[torch.randint(0, base.shape[0], (N,), generator=g)]
        if case["zero_rows"]:
            x[torch.rand(N, generator=g) < 0.2] = 0.0
    else:
        x = torch.randn(N, D, generator=g)
    x = (x * case["scale"]).to(getattr(torch, case["dtype"]))
    cu = torch.tensor([0] + list(torch.tensor(case["sizes"]).cumsum(0).tolist()))
    ro = torch.tensor([0] + list(torch.tensor(case["images"]).cumsum(0).tolist()))
    text = None
    if any(case["text_rows"]):
        text = [
            torch.randn(m, D, generator=g).to(getattr(torch, case["text_dtype"])) if m else None
            for m in case["text_rows"]
        ]
    kw = dict(method=case["method"], min_per_image=case["min_per_image"], **case["options"])
    if "keep_ratio" in case:
        kw["keep_ratio"] = case["keep_ratio"]
    else:
        kw["budget"] = case["budget"]
    bad = case.get("bad")
    if bad == "keep_ratio":
        kw.pop("budget", None)
        kw["keep_ratio"] = 1.5
    elif bad == "min_per_image":
        kw["min_per_image"] = -1
    elif bad == "option":
        kw["no_such_option"] = 1
    return x, cu, ro, text, kw


def run_case(case: dict, backend: str):
    """``("ok", kept rows)`` or ``("error", type name, message)``; raises on anything else."""
    x, cu, ro, text, kw = build(case)
    try:
        with ap.backend(backend):
            res = ap.prune_batch(x, cu, ro, text, **kw)
    except (ValueError, TypeError) as exc:
        return ("error", type(exc).__name__, str(exc))
    # a valid output (prune_batch also checks counts and minimums itself)
    N = x.shape[0]
    idx = res.indices
    assert idx.dtype == torch.int64 and bool((idx[1:] > idx[:-1]).all())
    assert idx.numel() == 0 or (0 <= int(idx[0]) and int(idx[-1]) < N)
    assert int(res.offsets[-1]) == idx.numel()
    return ("ok", idx.tolist())


def tie_free(case: dict) -> bool:
    """Continuous fp32/fp64 tokens of width >= 2 (at D = 1 every cosine is +-1: all ties)."""
    return not case["ties"] and case["dtype"] in ("float32", "float64") and case["D"] >= 2


def _child(conn, case, backends):
    torch.set_num_threads(1)  # OpenMP teams do not survive fork(): stay single-threaded here
    # poisoned allocations: torch.empty fills NaN / the largest integer, so a slot that a
    # kernel leaves unwritten shows up as an error or a wrong row instead of passing by luck
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        conn.send(("done", {b: run_case(case, b) for b in backends}))
    except BaseException:  # noqa: BLE001 - reported to the parent with the traceback
        conn.send(("crash", traceback.format_exc()))
    finally:
        conn.close()


def in_child(case: dict, backends: list[str]) -> dict:
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, case, backends))
    proc.start()
    child.close()
    if not parent.poll(TIME_LIMIT_S):
        proc.kill()
        proc.join()
        pytest.fail(f"case {case} did not finish in {TIME_LIMIT_S} s")
    kind, payload = parent.recv()
    proc.join()
    if kind != "done":
        pytest.fail(f"case {case} crashed:\n{payload}")
    return payload


def _seeds() -> list[int]:
    return [int(ONLY)] if ONLY else list(range(FUZZ_CASES))


# the cases that also run the Triton kernels (interpreted on a CPU: seconds per call): the first
# FUZZ_TRITON that use the ops (the adaptive method; the baselines run the same code everywhere)
TRITON_SEEDS = {s for s in _seeds() if make_case(s)["method"] == "adaptive"}
TRITON_SEEDS = set(sorted(TRITON_SEEDS)[:FUZZ_TRITON])


@pytest.mark.parametrize("seed", _seeds(), ids=lambda s: f"seed{s}")
def test_fuzz_case(seed):
    case = make_case(seed)
    backends = list(BACKENDS)
    if TRITON_RUNS and seed in TRITON_SEEDS:
        # the interpreter has no bf16, and fp64 goes to the reference on every backend: the
        # cases that run Triton are fp32 or fp16
        if case["dtype"] not in ("float32", "float16"):
            case["dtype"] = "float32"
        backends.append("triton")
    out = in_child(case, backends)
    ref = out["reference"]
    for b, got in out.items():
        if got[0] == "error":
            assert got[1] in ("ValueError", "TypeError")
            assert any(a in got[2] for a in ARGUMENTS), f"{b}: error names no argument: {got}"
        assert got[0] == ref[0], f"{b} gave {got[:2]}, the reference {ref[:2]} ({case})"
        if got[0] == "error":
            assert got[1:] == ref[1:], f"{b}: {got} vs reference {ref}"
        elif tie_free(case):
            assert got[1] == ref[1], f"{b} selected other rows than the reference ({case})"
