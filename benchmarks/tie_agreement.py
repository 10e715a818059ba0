"""Do the backends agree on tie-heavy inputs? ``prune`` on random tie-heavy batches with the
reference, the C++ core and the Triton kernels (the interpreter on a CPU), and where they
differ, the first op whose output differs for the same inputs.

Inputs (seeded, the fuzz suite's tie-heavy kind, tests/test_fuzz.py ``build``): few distinct
rows drawn from a small integer grid (duplicated rows and images, equal distances), some zero
rows, D in {1, 2, 3, 8, 16}, 1-2 requests of 1-4 images of 1-40 tokens (2-token images
included), Gaussian text rows (0, 1 or 3) for most requests, fp32, the adaptive method with
``intra`` max-min or max-sum, ``inter_image`` on or off, budgets of 5-100 % (at least one row
per image).

For every case the reference's ``prune_batch`` runs under a dispatch mode that records every
``adaptive_prune::*`` call (name, arguments, outputs). Each backend then

- replays every recorded call with the reference's arguments: ``op_differs`` counts, per op,
  the cases where its integer outputs (ranks, budgets, orders, masks; ``global_greedy``'s order,
  not its float gains) differ for the same inputs;
- runs ``prune_batch`` itself, recorded too: ``prune_differs`` counts the cases whose kept rows
  differ, and for those, ``first_divergence`` names the first op of the backend's own chain
  whose integer outputs differ from the reference's chain, ``[same inputs]`` when that op got
  the same arguments (the op itself diverged) or ``[inputs differ]`` when float outputs of
  earlier ops (rounding), and what the method computed from them, already differed.

Usage::

    python benchmarks/tie_agreement.py --cases 200          # table, rows appended to the CSV
    python benchmarks/tie_agreement.py --cases 20 --dry-run # nothing written

Outputs: a table, one row per backend appended to ``benchmarks/results/tie_agreement.csv``.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [p for p in (str(REPO), str(REPO / "benchmarks")) if p not in sys.path]

import _harness as H  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

OUT = H.RESULTS / "tie_agreement.csv"
FIELDS = (
    "date git_commit machine cpu torch triton cpp backend cases prune_differs "
    "first_divergence op_differs seconds"
).split()


class Record(TorchDispatchMode):
    """Every ``adaptive_prune::*`` call inside the block: ``(name, op, args, outputs)``."""

    def __init__(self):
        super().__init__()
        self.calls: list = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = H._op_name(func)
        if name is not None:
            self.calls.append((name, func, tuple(args), out))
        return out


def make_case(seed: int) -> dict:
    g = random.Random(seed)
    images = [g.choice([1, 1, 2, 3, 4]) for _ in range(g.choice([1, 1, 2]))]
    sizes = [g.choice([1, 2, 2, 3, 7, 16, 33]) if g.random() < 0.5 else g.randint(1, 40)
             for _ in range(sum(images))]  # fmt: skip
    return {
        "seed": seed,
        "sizes": sizes,
        "images": images,
        "D": g.choice([1, 2, 3, 8, 16]),
        "zero_rows": g.random() < 0.3,
        "keep": [g.choice([g.uniform(0.05, 1.0), 0.25, 0.5]) for _ in images],
        "text_rows": [g.choice([0, 1, 3]) if g.random() < 0.6 else 0 for _ in images],
        "intra": g.choice(["maxmin", "maxsum"]),
        "inter_image": g.choice([True, False]),
    }


def build(case: dict):
    """The fuzz suite's tie-heavy tokens (tests/test_fuzz.py ``build``, ``ties=True``)."""
    gen = torch.Generator().manual_seed(case["seed"])
    N, D = sum(case["sizes"]), case["D"]
    base = torch.randint(-2, 3, (max(2, N // 4), D), generator=gen).float()
    x = base[torch.randint(0, base.shape[0], (N,), generator=gen)]
    if case["zero_rows"]:
        x[torch.rand(N, generator=gen) < 0.2] = 0.0
    text = [torch.randn(m, D, generator=gen) if m else None for m in case["text_rows"]]
    cu = H.cu_seqlens(case["sizes"])
    ro = H.cu_seqlens(case["images"])
    budget, a = [], 0
    for n_img, keep in zip(case["images"], case["keep"]):  # at least one row per image
        sz = case["sizes"][a : a + n_img]
        budget.append(max(len(sz), round(keep * sum(sz))))
        a += n_img
    kw = dict(budget=budget, intra=case["intra"], inter_image=case["inter_image"])
    return x, cu, ro, (text if any(case["text_rows"]) else None), kw


def kept(backend: str, x, cu, ro, text, kw) -> list[int]:
    import adaptive_prune as ap

    with ap.backend(backend):
        return ap.prune_batch(x, cu, ro, text, **kw).indices.tolist()


def ints(out) -> list:
    """The integer outputs of an op call (float outputs differ by rounding on every input)."""
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return [o.tolist() for o in outs if isinstance(o, torch.Tensor) and not o.is_floating_point()]


def same_args(a, b) -> bool:
    return all(
        (torch.equal(p, q) if torch.is_tensor(p) else p == q) for p, q in zip(a, b, strict=True)
    )


def op_differs(backend: str, calls) -> set:
    """The ops whose integer outputs differ on ``backend`` for the reference's arguments."""
    import adaptive_prune as ap

    out = set()
    for name, func, args, want in calls:
        with ap.backend(backend):
            got = func(*args)
        if ints(got) != ints(want):
            out.add(name)
    return out


def first_divergence(ref_calls, calls) -> str:
    """The first op of two chains whose integer outputs differ."""
    for (name, _, a1, o1), (name2, _, a2, o2) in zip(ref_calls, calls):
        if name != name2:
            return f"{name2} (call sequence differs)"
        if ints(o1) != ints(o2):
            return f"{name} [{'same inputs' if same_args(a1, a2) else 'inputs differ'}]"
    return "no op (the method after the ops)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cases", type=int, default=200)
    p.add_argument("--seed0", type=int, default=0, help="first seed (cases are seed0, seed0+1..)")
    p.add_argument("--backends", default="cpp,triton")
    p.add_argument("--dry-run", action="store_true", help="print only, write no CSV row")
    p.add_argument("--csv", type=Path, default=OUT)
    a = p.parse_args()
    backends = [b for b in a.backends.split(",") if b]
    torch.set_num_threads(1)
    differs = {b: 0 for b in backends}
    first = {b: Counter() for b in backends}
    per_op = {b: Counter() for b in backends}
    secs = {b: 0.0 for b in backends}
    for s in range(a.seed0, a.seed0 + a.cases):
        case = make_case(s)
        x, cu, ro, text, kw = build(case)
        with Record() as rec:
            want = kept("reference", x, cu, ro, text, kw)
        for b in backends:
            t0 = time.perf_counter()
            with Record() as mine:
                got = kept(b, x, cu, ro, text, kw)
            if got != want:
                differs[b] += 1
                first[b][first_divergence(rec.calls, mine.calls)] += 1
            per_op[b].update(op_differs(b, rec.calls))
            secs[b] += time.perf_counter() - t0
    cond = H.conditions()
    rows = []
    print(f"{a.cases} tie-heavy cases (seeds {a.seed0}..{a.seed0 + a.cases - 1}), fp32, "
          f"commit {cond['git_commit']}, cpp {cond['cpp']}")  # fmt: skip
    print(f"{'backend':8s} {'prune differs':>13s}  first divergence | ops differing on the "
          "same inputs (cases)")  # fmt: skip
    for b in backends:
        fd = "; ".join(f"{k}: {v}" for k, v in first[b].most_common()) or "-"
        od = "; ".join(f"{k}: {v}" for k, v in per_op[b].most_common()) or "none"
        print(f"{b:8s} {differs[b]:>13d}  {fd} | {od}")
        rows.append(dict(cond, backend=b, cases=a.cases, prune_differs=differs[b],
                         first_divergence=fd, op_differs=od,
                         seconds=round(secs[b], 1)))  # fmt: skip
    if not a.dry_run:
        H.append_csv(a.csv, rows, FIELDS)


if __name__ == "__main__":
    main()
