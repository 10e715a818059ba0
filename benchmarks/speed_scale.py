"""CPU speed of ``prune`` (adaptive) against per-image ``divprune``, at the issue-14 shapes and
as the number of images grows. A stop-gap for the method work until ``benchmarks/speed.py``
lands; same conventions (table on stdout, CSV rows with the conditions).

Usage::

    python benchmarks/speed_scale.py                   # every case below, 1 thread
    python benchmarks/speed_scale.py --cases base      # 16 x 576 only
    python benchmarks/speed_scale.py --quick           # tiny smoke run, writes nothing

Cases (keep 25 %, D = 1024 unless stated; "real" = real DINOv2-S/14 patch tokens of the
fixture and the quality data, lifted to D by a fixed random orthogonal map, which keeps every
cosine; images repeated beyond the 16 distinct 576-token ones get 5 % seeded noise):

- ``base``: 16 x 576 real tokens, 64 text rows (the fixture's 43 query rows and 21 noisy
  copies), at D = 1024 and D = 3584;
- ``images``: n x 576 real tokens with text, n = 4, 16, 32, 64 (the curve of time against the
  number of images; n = 64 is 36,864 tokens);
- ``isotropic``: 64 x 1024 Gaussian tokens (near-isotropic), no text;
- ``big``: one image of 100,000 tokens (real tokens tiled with 5 % noise), no text, timed once
  with a cap (``--cap`` seconds; a run over the cap is recorded as such).

Every row: the median of ``--runs`` runs after one warm-up (one run when a run exceeds 10 s),
``prune`` (default options, and with ``refine=0``) and ``divprune`` in the same process on
the same inputs, and the ratios to ``divprune``.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [p for p in (str(REPO), str(REPO / "benchmarks")) if p not in sys.path]

import _harness as _env  # noqa: E402

import adaptive_prune as ap  # noqa: E402
from adaptive_prune import backends  # noqa: E402

FIXTURE = REPO / "adaptive_prune" / "data" / "real_tokens.npz"
BENCH = REPO / "benchmarks" / "data" / "bench_tokens.npz"
CSV = REPO / "benchmarks" / "results" / "speed_scale.csv"
FIELDS = (
    "date git_commit machine cpu threads torch backend case dim images tokens text_rows "
    "budget method ms_median runs chain_length groups ratio_to_divprune"
).split()


def real_images() -> tuple[list[np.ndarray], np.ndarray]:
    """The 16 distinct 576-token real images (384-d) and the 43-row query."""
    fx = np.load(FIXTURE, allow_pickle=False)
    parts = []
    cu = fx["cu_seqlens"]
    for i in range(len(cu) - 1):
        if cu[i + 1] - cu[i] == 576:
            parts.append(fx["tokens"][cu[i] : cu[i + 1]].astype(np.float32))
    bench = np.load(BENCH, allow_pickle=False)
    for prefix in bench["index"]:
        c = bench[f"{prefix}/cu_seqlens"]
        for i in range(len(c) - 1):
            t = bench[f"{prefix}/tokens"][c[i] : c[i + 1]].astype(np.float32)
            if c[i + 1] - c[i] == 576 and not any(np.array_equal(t, p) for p in parts):
                parts.append(t)
    return parts[:16], fx["query_tokens"].astype(np.float32)


def noisy(t: np.ndarray, seed: int, scale: float = 0.05) -> np.ndarray:
    rng = np.random.default_rng(seed)
    s = scale * np.linalg.norm(t, axis=1, keepdims=True) / math.sqrt(t.shape[1])
    return t + (rng.standard_normal(t.shape) * s).astype(np.float32)


def lift(x: np.ndarray, dim: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, x.shape[1], generator=g, dtype=torch.float64))
    return (torch.from_numpy(x).double() @ q.T).float()


def text_rows(query: np.ndarray, rows: int) -> np.ndarray:
    extra = [noisy(query[i % len(query)][None], 100 + i)[0] for i in range(rows - len(query))]
    return np.concatenate([query, np.stack(extra)]) if extra else query[:rows]


def images_case(imgs, n: int) -> tuple[np.ndarray, list[int]]:
    parts = [imgs[k % len(imgs)] if k < len(imgs) else noisy(imgs[k % len(imgs)], k)
             for k in range(n)]  # fmt: skip
    return np.concatenate(parts), [p.shape[0] for p in parts]


def timed(fn, runs: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    fn()  # warm-up
    first = time.perf_counter() - t0
    if first > 10.0:
        return first * 1e3, 1
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3, runs


def capped(fn, cap: float) -> float:
    """Wall ms of one call in a forked child process, or ``inf`` when it does not finish
    within ``cap`` seconds (the child is then terminated, so it never competes with the next
    row)."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    q = ctx.Queue()

    def go():
        t0 = time.perf_counter()
        fn()
        q.put((time.perf_counter() - t0) * 1e3)

    p = ctx.Process(target=go, daemon=True)
    p.start()
    p.join(cap)
    if p.is_alive():
        p.terminate()
        p.join()
        return math.inf
    return q.get() if not q.empty() else math.inf


def run_case(name, x, counts, text, runs, cap=None):
    cu = torch.tensor([0] + np.cumsum(counts).tolist())
    rows = []
    res = {}

    def adaptive():
        res["d"] = ap.prune(x, cu, text, keep_ratio=0.25, return_diagnostics=True).diagnostics

    def no_refine():
        ap.prune(x, cu, text, keep_ratio=0.25, refine=0)

    def divprune():
        ap.prune(x, cu, keep_ratio=0.25, method="divprune")

    methods = [("adaptive", adaptive), ("adaptive refine=0", no_refine), ("divprune", divprune)]
    for method, fn in methods:
        if cap is None:
            ms, n = timed(fn, runs)
        else:
            ms, n = capped(fn, cap), 1
        rows.append((method, ms, n))
    d = res.get("d")
    div_ms = rows[-1][1]
    out = []
    for method, ms, n in rows:
        out.append(
            dict(
                case=name,
                dim=x.shape[1],
                images=len(counts),
                tokens=x.shape[0],
                text_rows=0 if text is None else text.shape[0],
                budget=int(math.floor(0.25 * x.shape[0] + 0.5)),
                method=method,
                ms_median=round(ms, 1),
                runs=n,
                chain_length=d.chain_length if (d is not None and method == "adaptive") else "",
                groups=d.groups if (d is not None and method == "adaptive") else "",
                ratio_to_divprune=round(ms / div_ms, 2) if math.isfinite(div_ms) else "",
            )
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", nargs="+", default=["base", "images", "isotropic", "big"])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cap", type=float, default=120.0, help="seconds, for the big case")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    imgs, query = real_images()
    backend = backends.serving("global_greedy", "cpu")[0]
    rows = []
    if args.quick:
        x, counts = images_case([i[:64] for i in imgs], 4)
        rows += run_case("quick", lift(x, 384), counts, lift(query[:8], 384), 1)
    if "base" in args.cases and not args.quick:
        x, counts = images_case(imgs, 16)
        for dim in (1024, 3584):
            t = lift(text_rows(query, 64), dim)
            rows += run_case("base", lift(x, dim), counts, t, args.runs)
    if "images" in args.cases and not args.quick:
        t = lift(text_rows(query, 64), 1024)
        for n in (4, 16, 32, 64):
            x, counts = images_case(imgs, n)
            rows += run_case("images", lift(x, 1024), counts, t, args.runs)
    if "isotropic" in args.cases and not args.quick:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(64 * 1024, 1024, generator=g)
        rows += run_case("isotropic", x, [1024] * 64, None, 1)
    if "big" in args.cases and not args.quick:
        base = np.concatenate(imgs)
        reps = math.ceil(100_000 / base.shape[0])
        x = np.concatenate([noisy(base, 1000 + i) for i in range(reps)])[:100_000]
        rows += run_case("big", lift(x, 1024), [100_000], None, 1, cap=args.cap)
    cond = _env.conditions()
    cond.update(threads=args.threads, torch=torch.__version__, backend=backend)
    print(f"conditions: {cond}")
    print("| case | D | images | tokens | text | B | method | ms | runs | chain | groups "
          "| x divprune |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        ms = "did not finish" if not math.isfinite(r["ms_median"]) else r["ms_median"]
        print(f"| {r['case']} | {r['dim']} | {r['images']} | {r['tokens']} | {r['text_rows']} "
              f"| {r['budget']} | {r['method']} | {ms} | {r['runs']} | {r['chain_length']} "
              f"| {r['groups']} | {r['ratio_to_divprune']} |")  # fmt: skip
    if args.quick:
        return
    new = not CSV.exists()
    with open(CSV, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        if new:
            w.writeheader()
        for r in rows:
            w.writerow({**cond, **r})
    print(f"appended {len(rows)} rows to {CSV}")


if __name__ == "__main__":
    main()
