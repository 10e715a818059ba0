"""CPU speed benchmark: every method of ``adaptive_prune.METHODS`` on the same real tokens.

Usage::

    python benchmarks/speed_cpu.py                    # D = 1024 and 3584, 1 and 2 threads
    python benchmarks/speed_cpu.py --quick            # smoke run (small, 1 thread), writes nothing
    python benchmarks/speed_cpu.py --dims 1024 --threads 1 --png benchmarks/results/speed_cpu.png

Inputs (the same for every row of one run): 16 images x 576 real patch tokens, keep 25 %
(``B = 2304``), with a text query. The tokens are real DINOv2-S/14 patch tokens (384-d): the
eight 576-token images of the fixture ``adaptive_prune/data/real_tokens.npz`` and the eight
576-token views of ``benchmarks/data/bench_tokens.npz``. Four of the latter are exact copies
of fixture images (rocket x3, coins); they get seeded Gaussian noise of 5 % of each token's
norm, so they act as near-duplicate views instead of creating exact ties. The query is the
fixture's exemplar query (43 tokens). Everything is lifted to ``D`` dims by a fixed, seeded
random orthogonal map ``384 -> D`` (``x -> Q x`` with ``Q^T Q = I``), which preserves every
norm and cosine, so the selection problem is the same at every ``D``; the lifted tokens have
rank 384 (no method here exploits that: the C++ filter projects to 16 dims).

Rows, all timed in the same process on the same inputs:

- ``adaptive (C++)``: ``prune`` with the C++ CPU kernels (``adaptive_prune._C``), the default
  when the extension is built; ``adaptive (C++, dense)``: the same kernels with the projection
  filter off (``proj_dim = 0``: every distance the reference computes, computed); ``adaptive
  (reference)``: the pure-PyTorch reference ops in the same composition.
- every other registered method (the baselines), with the query when the method uses text.
- floors, timed alone on unit fp32 rows: the similarity products the method needs in the
  reference formulation: the per-image ``[m_k, m_k]`` blocks of stage 1 (``sum m_k^2 D``) and
  the candidate-pool product of stage 2 (``B1 x B1 x D``, ``B1`` from the adaptive run); also
  the rows-only variant of stage 2 (``P x B1 x D``, the rows of the ``P`` picks).

Columns: median wall time of several runs after one warm-up (5 runs; fewer for slow rows, so
that a row takes about 10 s at most; a row slower than 10 s is timed once, by its warm-up),
the min-max range, ``x floor`` = time / (stage-1 blocks + stage-2 pool product), ``ref / this``
= adaptive reference time / this row's time. Also printed: where the time of ``adaptive
(C++)`` goes (per op; the rest is Python and input checks).

Outputs: a markdown table per (D, threads) on stdout, CSV rows appended to
``benchmarks/results/speed_cpu.csv`` (with date, machine, CPU model, threads, dtype, shapes,
torch/triton versions and git commit), and a PNG with ``--png``. On a shared machine timings
vary: compare rows of the same run, and re-run when a number matters.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [p for p in (str(REPO), str(REPO / "benchmarks")) if p not in sys.path]  # _env

import _env  # noqa: E402
from _env import op_timers, reference_ops  # noqa: E402

import adaptive_prune as ap  # noqa: E402
from adaptive_prune import _backend, _ext  # noqa: E402
from adaptive_prune.ops import reference as ref  # noqa: E402

FIXTURE = REPO / "adaptive_prune" / "data" / "real_tokens.npz"
BENCH = REPO / "benchmarks" / "data" / "bench_tokens.npz"
KEEP = 0.25
IMAGES, TOKENS = 16, 576
ROW_BUDGET_S = 10.0  # a slow row gets fewer runs so that it takes about this long

CSV_FIELDS = (
    "date git_commit machine cpu threads torch triton ext dtype dim images tokens_per_image "
    "text_rows keep_ratio budget pool_size candidates row kind ms_median ms_min ms_max runs "
    "x_floor ref_over_this"
).split()


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------
def real_576(quick: bool = False) -> tuple[np.ndarray, list[str], np.ndarray]:
    """16 x 576 real 384-d tokens (float32), image names, and the 43-token query."""
    fx = np.load(FIXTURE, allow_pickle=False)
    parts, names = [], []
    cu = fx["cu_seqlens"]
    for i in range(len(cu) - 1):
        if cu[i + 1] - cu[i] == TOKENS:
            parts.append(fx["tokens"][cu[i] : cu[i + 1]].astype(np.float32))
            names.append(str(fx["names"][i]))
    bench = np.load(BENCH, allow_pickle=False)
    for prefix in bench["index"]:
        c = bench[f"{prefix}/cu_seqlens"]
        for i in range(len(c) - 1):
            if c[i + 1] - c[i] != TOKENS:
                continue
            t = bench[f"{prefix}/tokens"][c[i] : c[i + 1]].astype(np.float32)
            name = str(bench[f"{prefix}/names"][i])
            if any(np.array_equal(t, p) for p in parts):  # an exact copy: make it a near-dup
                rng = np.random.default_rng(len(parts))
                scale = 0.05 * np.linalg.norm(t, axis=1, keepdims=True) / math.sqrt(t.shape[1])
                t = t + (rng.standard_normal(t.shape) * scale).astype(np.float32)
                name += "~"
            parts.append(t)
            names.append(name)
    assert len(parts) == IMAGES, f"expected {IMAGES} images of {TOKENS} tokens, got {len(parts)}"
    if quick:
        parts, names = parts[:4], names[:4]
    return np.concatenate(parts), names, fx["query_tokens"].astype(np.float32)


def lift(x: np.ndarray, dim: int, seed: int = 0) -> torch.Tensor:
    """``x [*, 384] -> [*, dim]`` by a fixed random orthogonal map (keeps norms and cosines)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, x.shape[1], generator=g, dtype=torch.float64))
    return (torch.from_numpy(x).double() @ q.T).float()


# --------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------
def timed(fn: Callable[[], object], runs: int) -> list[float]:
    """Wall times (ms) of ``runs`` calls after one warm-up; fewer runs for slow calls."""
    t0 = time.perf_counter()
    fn()
    warm = time.perf_counter() - t0
    if warm > ROW_BUDGET_S:  # a very slow row: first-call costs are noise next to it
        return [warm * 1e3]
    n = max(1, min(runs, int(ROW_BUDGET_S / max(warm, 1e-9))))
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


@contextlib.contextmanager
def proj_dim(value: int):
    saved = _ext.PROJ_DIM
    _ext.PROJ_DIM = value
    try:
        yield
    finally:
        _ext.PROJ_DIM = saved


def floors(x: torch.Tensor, counts: list[int], pool: int, picks: int, runs: int) -> dict:
    """The similarity products of the reference formulation, timed alone (unit fp32 rows)."""
    xn = ref.normalize(x, 1e-6).contiguous()
    cu = np.cumsum([0] + counts)
    blocks = [xn[cu[k] : cu[k + 1]] for k in range(len(counts))]

    def stage1():
        for b in blocks:
            torch.mm(b, b.T)

    xp = xn[:pool].contiguous()
    xr = xn[:picks].contiguous()
    return {
        "stage1": timed(stage1, runs),
        "pool": timed(lambda: torch.mm(xp, xp.T), runs),
        "rows": timed(lambda: torch.mm(xr, xp.T), runs),
    }


# --------------------------------------------------------------------------------------------
# conditions, output
# --------------------------------------------------------------------------------------------
def conditions() -> dict:
    return {
        **_env.conditions(),
        "torch": torch.__version__,
        "triton": _env.triton_version(),
        "ext": "built" if _ext.HAS_EXT else f"missing ({_ext.REASON})",
    }


def fmt_ms(v: float) -> str:
    return f"{v:,.1f}" if v < 1000 else f"{v:,.0f}"


def table(rows: list[dict]) -> str:
    out = ["| row | ms (median) | range | x floor | ref / this |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        rng = f"{fmt_ms(r['ms_min'])}-{fmt_ms(r['ms_max'])}"
        xf = f"{r['x_floor']:.2f}" if r["x_floor"] is not None else ""
        rt = f"{r['ref_over_this']:.1f}x" if r["ref_over_this"] is not None else ""
        out.append(f"| {r['row']} | {fmt_ms(r['ms_median'])} | {rng} | {xf} | {rt} |")
    return "\n".join(out)


def append_csv(path: Path, rows: list[dict]) -> None:
    new = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerows(rows)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(results)
    ncols = min(2, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    height = 0.42 * max(len(v) for v in results.values()) + 1.5
    fig, axes = plt.subplots(nrows, ncols, figsize=(7.5 * ncols, height * nrows), squeeze=False)
    for ax in axes.flat[len(keys) :]:
        ax.set_visible(False)
    for ax, key in zip(axes.flat, keys):
        rows = results[key]
        names = [r["row"] for r in rows][::-1]
        vals = [r["ms_median"] for r in rows][::-1]
        colors = [
            "tab:green"
            if n.startswith("adaptive (C++)")
            else "tab:gray"
            if n.startswith("floor")
            else "tab:blue"
            for n in names
        ]
        ax.barh(names, vals, color=colors)
        ax.set_xscale("log")
        ax.set_xlabel("ms (median, log scale)")
        ax.set_title(f"D = {key[0]}, {key[1]} thread(s), {key[2]}")
        for i, v in enumerate(vals):
            ax.text(v, i, f" {fmt_ms(v)}", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------
def run_one(x, counts, text, dtype, threads, runs, methods) -> tuple[list[dict], dict]:
    torch.set_num_threads(threads)
    cu = torch.tensor(np.cumsum([0] + counts), dtype=torch.int64)
    xd = x.to(dtype)
    td = text.to(dtype) if text is not None else None

    def call(method: str, with_text: bool):
        return lambda: ap.prune(xd, cu, td if with_text else None, keep_ratio=KEEP, method=method)

    diag = ap.prune(xd, cu, td, keep_ratio=KEEP, return_diagnostics=True).diagnostics
    rows: list[tuple[str, str, list[float]]] = []
    label = (
        "adaptive (C++)"
        if _backend.active("greedy_select", "cpu") == "cpp"
        else "adaptive (default backend: " + _backend.active("greedy_select", "cpu") + ")"
    )
    rows.append((label, "method", timed(call("adaptive", True), runs)))
    if _backend.active("greedy_select", "cpu") == "cpp":
        with proj_dim(0):
            rows.append(
                ("adaptive (C++, dense: proj_dim=0)", "method", timed(call("adaptive", True), runs))
            )
    with reference_ops():
        ref_times = timed(call("adaptive", True), runs)
    rows.append(("adaptive (reference)", "method", ref_times))
    for name in methods:
        if name == "adaptive":
            continue
        spec = ap.METHODS[name]
        rows.append((name, "method", timed(call(name, spec.text_aware), runs)))
    fl = floors(xd.float(), counts, diag.pool_size, diag.candidates, runs)
    floor_ms = statistics.median(fl["stage1"]) + statistics.median(fl["pool"])
    rows.append(
        (
            f"floor: stage-1 blocks ({len(counts)} x [{counts[0]}, {counts[0]}])",
            "floor",
            fl["stage1"],
        )
    )
    rows.append((f"floor: stage-2 pool [{diag.pool_size}, {diag.pool_size}]", "floor", fl["pool"]))
    rows.append((f"floor: stage-2 rows [{diag.candidates}, {diag.pool_size}]", "floor", fl["rows"]))
    ref_ms = statistics.median(ref_times)
    out = []
    for name, kind, ts in rows:
        med = statistics.median(ts)
        out.append(
            {
                "row": name,
                "kind": kind,
                "ms_median": med,
                "ms_min": min(ts),
                "ms_max": max(ts),
                "runs": len(ts),
                "x_floor": med / floor_ms if kind == "method" else None,
                "ref_over_this": ref_ms / med if kind == "method" else None,
            }
        )
    out.append(
        {
            "row": "floor: stage-1 blocks + stage-2 pool",
            "kind": "floor",
            "ms_median": floor_ms,
            "ms_min": min(fl["stage1"]) + min(fl["pool"]),
            "ms_max": max(fl["stage1"]) + max(fl["pool"]),
            "runs": len(fl["pool"]),
            "x_floor": 1.0,
            "ref_over_this": None,
        }
    )
    # where the time of the default adaptive call goes
    acc: dict = {}
    n = 3
    with op_timers(acc):
        t0 = time.perf_counter()
        for _ in range(n):
            call("adaptive", True)()
        total = (time.perf_counter() - t0) * 1e3 / n
    parts = {k: v / n for k, v in acc.items()}
    parts["rest (Python, checks)"] = total - sum(parts.values())
    info = {
        "budget": diag.budget,
        "pool_size": diag.pool_size,
        "candidates": diag.candidates,
        "breakdown": parts,
        "total": total,
    }
    return out, info


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 4 images, D=512, 1 thread")
    p.add_argument("--dims", type=int, nargs="+", default=[1024, 3584])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--no-text", action="store_true", help="no query (Pareto path off)")
    p.add_argument("--methods", nargs="+", default=None, help="subset of methods (default all)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--png", type=Path, default=None, help="also draw the timings here")
    args = p.parse_args(argv)
    if args.quick:
        args.dims, args.threads, args.runs = [512], [1], 2
    methods = args.methods or sorted(ap.METHODS)
    unknown = set(methods) - set(ap.METHODS)
    if unknown:
        p.error(f"unknown methods {sorted(unknown)}; available: {sorted(ap.METHODS)}")
    dtype = getattr(torch, args.dtype)
    tokens, names, query = real_576(args.quick)
    counts = [TOKENS] * len(names)
    cond = conditions()
    print(
        f"# CPU speed: {len(counts)} images x {TOKENS} real tokens, keep {KEEP:.0%}, "
        f"{'no text' if args.no_text else f'{query.shape[0]} text rows'}, {args.dtype}"
    )
    print(
        f"cpu {cond['cpu']} | torch {cond['torch']} | commit {cond['git_commit']} | "
        f"C++ extension: {cond['ext']}\nimages: {', '.join(names)}\n"
    )
    all_rows, results = [], {}
    for dim in args.dims:
        x = lift(tokens, dim)
        text = None if args.no_text else lift(query, dim)
        for threads in args.threads:
            rows, info = run_one(x, counts, text, dtype, threads, args.runs, methods)
            results[(dim, threads, args.dtype)] = rows
            print(
                f"## D = {dim}, {threads} thread(s): B = {info['budget']}, "
                f"pool B1 = {info['pool_size']}, candidates P = {info['candidates']}\n"
            )
            print(table(rows))
            bd = ", ".join(f"{k} {v:.1f}" for k, v in info["breakdown"].items())
            print(f"\nadaptive (C++) ms by op (mean of 3): {bd}; total {info['total']:.1f}\n")
            for r in rows:
                all_rows.append(
                    {
                        **cond,
                        **r,
                        "threads": threads,
                        "dtype": args.dtype,
                        "dim": dim,
                        "images": len(counts),
                        "tokens_per_image": TOKENS,
                        "text_rows": 0 if text is None else text.shape[0],
                        "keep_ratio": KEEP,
                        "budget": info["budget"],
                        "pool_size": info["pool_size"],
                        "candidates": info["candidates"],
                        "ms_median": f"{r['ms_median']:.3f}",
                        "ms_min": f"{r['ms_min']:.3f}",
                        "ms_max": f"{r['ms_max']:.3f}",
                        "x_floor": "" if r["x_floor"] is None else f"{r['x_floor']:.4f}",
                        "ref_over_this": ""
                        if r["ref_over_this"] is None
                        else f"{r['ref_over_this']:.3f}",
                    }
                )
    if args.quick:
        print("(quick run: nothing written)")
        return 0
    append_csv(args.out / "speed_cpu.csv", all_rows)
    print(f"appended {len(all_rows)} rows to {args.out / 'speed_cpu.csv'}")
    if args.png is not None:
        plot(results, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
