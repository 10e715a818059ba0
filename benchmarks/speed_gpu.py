"""GPU speed benchmark: ``prune`` with the Triton kernels against the reference and baselines.

Usage (on a CUDA machine; exits with a message elsewhere)::

    python benchmarks/speed_gpu.py                      # both scenarios, writes CSV + summary
    python benchmarks/speed_gpu.py --quick              # smoke run: fewer runs, no reference
    python benchmarks/speed_gpu.py --summary FILE.md    # also write the short summary table
    python benchmarks/speed_gpu.py --device cpu         # dry run of the logic (tests use it)

Scenarios (bf16, keep 25 %, 64 text tokens, D = 3584):

- ``16x576``: the 16 real 576-token images of ``benchmarks/speed_cpu.py`` (real DINOv2-S/14
  patch tokens lifted 384 -> 3584 by a fixed orthogonal map, which keeps every cosine), with
  the fixture's 43-token query plus 21 noisy copies of its rows as the 64 text tokens; falls
  back to the synthetic generator below if the data files are missing.
- ``64x1024``: synthetic: 64 images of 1024 tokens, each image a mixture of 24 seeded
  directions plus noise, every fourth image a noisy copy of the previous one (near-duplicates).

Rows, timed in the same process on the same GPU: ``adaptive (triton)`` (the default on CUDA)
with and without text, the same with the greedy loops run one pick per step and with a window
of 128 (``kernels/_maxmin.py``; the default window is 64), ``adaptive (reference)`` (the
pure-PyTorch reference ops in the same composition; one run, 16x576 only, without text, and
with text while the candidates number at most 4000: its Python Pareto step is O(P^2)), every
registered baseline among ``divprune``, ``divprune_pooled``, ``cdpruner``, ``dart``,
``uniform`` (same inputs; text where the method uses it; only ``divprune`` and ``cdpruner`` at
64x1024), and the floors: the memory floor (one read of ``vision``: a column max), the stage-1
matmul floor (the per-image ``m x m`` similarity GEMMs, one batched bf16 GEMM) and the stage-2
one (``B1 x B1 x D``). Also: where the time of ``adaptive (triton)`` goes, per op (each op
timed with CUDA events in a separate instrumented run).

Timing: CUDA events around each call, median of several runs after two warm-ups (a row gets
fewer runs when it is slow). Outputs: a markdown table per scenario, CSV rows appended to
``benchmarks/results/speed_gpu.csv`` (date, GPU name, CPU, torch/triton/CUDA versions, git
commit, shapes, dtype) and, last, a short summary with the speed targets of issue 5.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [p for p in (str(REPO), str(REPO / "benchmarks")) if p not in sys.path]  # _env

import _env  # noqa: E402
from _env import op_timers, reference_ops  # noqa: E402

KEEP = 0.25
DIM = 3584
TEXT_ROWS = 64
BASELINES = ("divprune", "divprune_pooled", "cdpruner", "dart", "uniform")
REF_MAX_CANDIDATES = 4000  # the reference's Pareto step is an O(P^2) Python loop
BASELINES_LARGE = ("divprune", "cdpruner")  # above 20k tokens (the others are slow there)
ROW_BUDGET_S = 5.0  # a slow row gets fewer runs so that it takes about this long

CSV_FIELDS = (
    "date git_commit machine gpu cpu torch triton cuda dtype dim images tokens_per_image "
    "text_rows keep_ratio budget pool_size candidates row kind ms_median ms_min ms_max runs "
    "ref_over_this note"
).split()


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------
def synthetic(images: int, tokens: int, dim: int, seed: int = 0):
    """Clustered tokens: each image mixes 24 directions; every 4th image repeats the last."""
    g = torch.Generator().manual_seed(seed)
    parts = []
    for k in range(images):
        if k % 4 == 3:
            prev = parts[-1]
            parts.append(prev + 0.05 * torch.randn(prev.shape, generator=g) * prev.std())
            continue
        centers = torch.randn(24, dim, generator=g)
        w = torch.rand(tokens, 24, generator=g) ** 4
        parts.append(w @ centers / 24 + 0.3 * torch.randn(tokens, dim, generator=g))
    x = torch.cat(parts)
    text = x[torch.randperm(x.shape[0], generator=g)[:TEXT_ROWS]]
    text = text + 0.2 * torch.randn(text.shape, generator=g) * text.std()
    return x, [tokens] * images, text


def real_16x576(dim: int):
    """The speed_cpu.py inputs (real tokens, lifted), with 64 text rows."""
    import speed_cpu  # noqa: PLC0415  (same inputs as the CPU benchmark)

    x_np, _, query = speed_cpu.real_576()
    x = speed_cpu.lift(x_np, dim)
    q = speed_cpu.lift(query, dim)
    g = torch.Generator().manual_seed(1)
    extra = q[torch.randint(0, q.shape[0], (TEXT_ROWS - q.shape[0],), generator=g)]
    extra = extra + 0.1 * torch.randn(extra.shape, generator=g) * extra.std()
    return x, [576] * 16, torch.cat([q, extra])[:TEXT_ROWS]


def scenario(name: str):
    if DEVICE != "cuda":  # dry run: small and synthetic
        return synthetic(4, 48, 64), "synthetic (dry run)"
    if name == "16x576":
        try:
            return real_16x576(DIM), "real tokens (speed_cpu.py), lifted"
        except Exception as exc:  # data files missing: same shapes, synthetic content
            return synthetic(16, 576, DIM), f"synthetic ({type(exc).__name__})"
    n, m = (int(v) for v in name.split("x"))
    return synthetic(n, m, DIM, seed=n * m), "synthetic clustered"


# --------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------
DEVICE = "cuda"  # --device cpu runs the script's logic on a CPU (a dry run; no GPU numbers)


class _Timer:
    """CUDA events on the GPU (wall time on the stream, host syncs inside included)."""

    def __enter__(self):
        if DEVICE == "cuda":
            self.t0, self.t1 = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            self.t0.record()
        else:
            self.c0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if DEVICE == "cuda":
            self.t1.record()
            self.t1.synchronize()
            self.ms = self.t0.elapsed_time(self.t1)
        else:
            self.ms = (time.perf_counter() - self.c0) * 1e3


def timed(fn: Callable[[], object], runs: int, warmup: int = 2) -> list[float]:
    """Times (ms) of up to ``runs`` calls after ``warmup`` calls (fewer runs when slow)."""
    first = None
    if DEVICE != "cuda":  # dry run: the logic, not the numbers
        runs, warmup = 1, 1
    for _ in range(max(warmup, 1)):
        with _Timer() as t:
            fn()
        first = t.ms if first is None else first
    n = max(1, min(runs, int(ROW_BUDGET_S * 1e3 / max(first, 1e-3))))
    out = []
    for _ in range(n):
        with _Timer() as t:
            fn()
        out.append(t.ms)
    return out


def once(fn: Callable[[], object]) -> list[float]:
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    with _Timer() as t:
        fn()
    return [t.ms]


# --------------------------------------------------------------------------------------------
# conditions, output
# --------------------------------------------------------------------------------------------
def conditions() -> dict:
    return {
        **_env.conditions(),
        "gpu": torch.cuda.get_device_name() if DEVICE == "cuda" else "none (CPU dry run)",
        "torch": torch.__version__,
        "triton": _env.triton_version(),
        "cuda": torch.version.cuda,
    }


def fmt(v: Optional[float]) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def append_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerows(rows)


# --------------------------------------------------------------------------------------------
# one scenario
# --------------------------------------------------------------------------------------------
def run_scenario(name: str, runs: int, with_reference: bool) -> tuple[list[dict], dict]:
    import adaptive_prune as ap

    (x_cpu, counts, t_cpu), source = scenario(name)
    dev = torch.device(DEVICE)
    x = x_cpu.to(dev, torch.bfloat16)
    text = t_cpu.to(dev, torch.bfloat16)
    cu = torch.tensor([0] + list(torch.tensor(counts).cumsum(0).tolist()), dtype=torch.int64)
    n_img, m = len(counts), counts[0]
    res = ap.prune(x, cu, text, keep_ratio=KEEP, return_diagnostics=True)
    d = res.diagnostics
    B, B1, P = d.budget, d.pool_size, d.candidates
    base = {"dtype": "bf16", "dim": x.shape[1], "images": n_img, "tokens_per_image": m,
            "text_rows": TEXT_ROWS, "keep_ratio": KEEP, "budget": B, "pool_size": B1,
            "candidates": P}  # fmt: skip
    rows: list[dict] = []

    def add(row, kind, times, note=""):
        stats = dict(ms_median=statistics.median(times), ms_min=min(times), ms_max=max(times))
        rows.append(dict(base, row=row, kind=kind, runs=len(times), note=note, **stats))

    add("adaptive (triton)", "method", timed(lambda: ap.prune(x, cu, text, keep_ratio=KEEP), runs),
        source)  # fmt: skip
    add("adaptive (triton), no text", "method",
        timed(lambda: ap.prune(x, cu, keep_ratio=KEEP), runs), source)  # fmt: skip
    # the greedy loops' variants (kernels/_maxmin.py): same outputs, other speed
    from adaptive_prune.kernels import _common as kc  # noqa: PLC0415

    default_window = kc.GREEDY_WINDOW
    for w in (0, 128):
        if w == default_window:
            continue
        kc.GREEDY_WINDOW = w
        try:
            label = "one pick per step" if w == 0 else f"window {w}"
            same = bool(torch.equal(ap.prune(x, cu, text, keep_ratio=KEEP).indices, res.indices))
            add(f"adaptive (triton), greedy {label}", "method",
                timed(lambda: ap.prune(x, cu, text, keep_ratio=KEEP), runs),
                f"same indices as the default window {default_window}: {same}")  # fmt: skip
        finally:
            kc.GREEDY_WINDOW = default_window
    if with_reference:
        # no text: stages 0-2 without the Pareto step (the triton row of the same name is
        # the comparison); with text only while the reference's Python Pareto step, O(P^2)
        # interpreted, stays affordable
        got: dict = {}
        with reference_ops():
            ref_nt = once(lambda: got.setdefault("nt", ap.prune(x, cu, keep_ratio=KEEP)))
        add("adaptive (reference), no text", "method", ref_nt, "1 run")
        if P <= REF_MAX_CANDIDATES:
            with reference_ops():
                ref_times = once(
                    lambda: got.setdefault("r", ap.prune(x, cu, text, keep_ratio=KEEP))
                )
            same = bool(torch.equal(got["r"].indices, res.indices))
            add("adaptive (reference)", "method", ref_times,
                f"1 run; same indices as triton: {same}")  # fmt: skip
        else:
            note = f"skipped: {P} candidates, its Python Pareto step is O(P^2)"
            rows.append(dict(base, row="adaptive (reference)", kind="method", note=note))
    for method in BASELINES if x.shape[0] <= 20000 else BASELINES_LARGE:
        if method not in ap.METHODS:
            continue
        t = text if ap.METHODS[method].text_aware else None
        try:
            times = timed(
                lambda t=t, method=method: ap.prune(x, cu, t, keep_ratio=KEEP, method=method),
                runs,
                1,
            )
            add(method, "baseline", times, "with text" if t is not None else "")
        except Exception as exc:  # a baseline failing must not hide the other numbers
            rows.append(dict(base, row=method, kind="baseline", note=f"failed: {exc}"[:200]))

    # floors
    nbytes = x.numel() * x.element_size()
    bw = timed(lambda: torch.amax(x, dim=0), runs)
    add("floor: read vision once", "floor", bw,
        f"{nbytes / 1e9:.3f} GB at {nbytes / statistics.median(bw) / 1e6:.0f} GB/s")  # fmt: skip
    dim = x.shape[1]
    xb = x.view(n_img, m, dim)
    flops1 = 2 * n_img * m * m * dim
    g1 = timed(lambda: torch.bmm(xb, xb.transpose(1, 2)), runs)
    add(
        "floor: stage-1 similarity GEMMs",
        "floor",
        g1,
        f"{flops1 / 1e12:.3f} TFLOP at {flops1 / statistics.median(g1) / 1e9:.0f} TFLOP/s",
    )
    xp = x[:B1].contiguous()
    flops2 = 2 * B1 * B1 * dim
    g2 = timed(lambda: torch.mm(xp, xp.T), runs)
    add(
        "floor: stage-2 pool GEMM (B1 x B1)",
        "floor",
        g2,
        f"{flops2 / 1e12:.3f} TFLOP at {flops2 / statistics.median(g2) / 1e9:.0f} TFLOP/s",
    )

    # where the time goes (instrumented: one sync per op)
    per_op: dict = {}
    with op_timers(per_op, _Timer):
        ap.prune(x, cu, text, keep_ratio=KEEP)
    per_op.clear()
    with op_timers(per_op, _Timer):
        ap.prune(x, cu, text, keep_ratio=KEEP)

    def med(name):
        return next((r.get("ms_median") for r in rows if r["row"] == name), None)

    for r in rows:  # no-text rows against the no-text reference, the others against the full one
        ref_ms = med("adaptive (reference), no text" if "no text" in r["row"] else
                     "adaptive (reference)")  # fmt: skip
        if ref_ms and r.get("ms_median") and r["kind"] != "floor":
            r["ref_over_this"] = ref_ms / r["ms_median"]
    info = {"name": name, "source": source, "B": B, "B1": B1, "P": P, "per_op": per_op}
    return rows, info


def table(rows: list[dict]) -> str:
    out = [
        "| row | median ms | min-max ms | runs | ref / this | note |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['row']} | {fmt(r.get('ms_median'))} | {fmt(r.get('ms_min'))}-"
            f"{fmt(r.get('ms_max'))} | {r.get('runs', '-')} | {fmt(r.get('ref_over_this'))} | "
            f"{r.get('note', '')} |"
        )
    return "\n".join(out)


def summary(all_rows: list[dict], gpu: str) -> str:
    """Issue 5's speed targets, checked on the rows just measured."""
    lines = [f"### speed targets ({gpu}, bf16, D = {DIM}, keep {KEEP:.0%}, "
             f"{TEXT_ROWS} text tokens)", "",
             "| scenario | prune ms | < 0.5 ms | x ref (>= 20) | x ref, no text | "
             "vs divprune | vs cdpruner | greedy one pick per step: ms |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name in dict.fromkeys(r["scenario"] for r in all_rows):
        rs = {r["row"]: r for r in all_rows if r["scenario"] == name}
        t = rs.get("adaptive (triton)", {}).get("ms_median")
        ref = rs.get("adaptive (reference)", {}).get("ms_median")
        t_nt = rs.get("adaptive (triton), no text", {}).get("ms_median")
        ref_nt = rs.get("adaptive (reference), no text", {}).get("ms_median")

        def vs(method, rs=rs, t=t):
            o = rs.get(method, {}).get("ms_median")
            if t is None or o is None:
                return "-"
            return f"{o / t:.2f}x ({'faster' if t < o else 'slower'})"

        lines.append(
            f"| {name} | {fmt(t)} | {'yes' if t is not None and t < 0.5 else 'no'} | "
            f"{fmt(ref / t) if ref and t else '-'} | "
            f"{fmt(ref_nt / t_nt) if ref_nt and t_nt else '-'} | "
            f"{vs('divprune')} | {vs('cdpruner')} | "
            f"{fmt(rs.get('adaptive (triton), greedy one pick per step', {}).get('ms_median'))} |"
        )
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    ap_ = argparse.ArgumentParser(description="GPU speed benchmark of adaptive_prune (Triton)")
    ap_.add_argument("--scenarios", default="16x576,64x1024")
    ap_.add_argument("--runs", type=int, default=20)
    ap_.add_argument("--quick", action="store_true", help="3 runs, no reference, no CSV")
    ap_.add_argument("--no-reference", action="store_true")
    ap_.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap_.add_argument("--summary", type=Path, default=None, help="also write the summary here")
    ap_.add_argument(
        "--device",
        default="cuda",
        choices=("cuda", "cpu"),
        help="cpu: a dry run of the script's logic on small synthetic inputs "
        "(one run per row, nothing written; with TRITON_INTERPRET=1 and "
        "ADAPTIVE_PRUNE_BACKEND=triton it runs the Triton kernels interpreted)",
    )
    args = ap_.parse_args(argv)
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cpu":  # dry run of the logic: one run per row, nothing written
        args.runs = 1
    elif not torch.cuda.is_available():
        print("speed_gpu.py needs a CUDA device (torch.cuda.is_available() is False); "
              "run benchmarks/speed_cpu.py on a CPU-only machine.")  # fmt: skip
        return 2
    from adaptive_prune import _backend
    from adaptive_prune import ops as ap_ops

    backends = {op: _backend.active(op, DEVICE) for op in ap_ops.ALL_OPS}
    print("backends on " + DEVICE + ": " + ", ".join(f"{k} {v}" for k, v in backends.items()))
    if DEVICE == "cuda" and _backend.active("greedy_select", "cuda") != "triton":
        print(f"warning: the Triton kernels are not active on CUDA "
              f"({_backend.UNAVAILABLE.get('triton', 'ADAPTIVE_PRUNE_BACKEND?')})")  # fmt: skip
    cond = conditions()
    runs = 3 if args.quick else args.runs
    print(f"GPU {cond['gpu']} | torch {cond['torch']} | triton {cond['triton']} | "
          f"CUDA {cond['cuda']} | commit {cond['git_commit']}")  # fmt: skip
    all_rows = []
    for name in [s.strip() for s in args.scenarios.split(",") if s.strip()]:
        with_ref = name == "16x576" and not (args.quick or args.no_reference)
        rows, info = run_scenario(name, runs, with_ref)
        for r in rows:
            r.update(cond, scenario=name)
        all_rows += rows
        print(f"\n## {name} x {rows[0]['dim']}, bf16 ({info['source']}): B = {info['B']}, "
              f"B1 = {info['B1']}, candidates = {info['P']}\n")  # fmt: skip
        print(table(rows))
        tot = sum(info["per_op"].values())
        ops_line = ", ".join(f"{k} {fmt(v)}" for k, v in info["per_op"].items())
        print(f"\nper op, ms (one instrumented run, sum {fmt(tot)}): {ops_line}")
    if not args.quick and DEVICE == "cuda":
        append_csv(args.out / "speed_gpu.csv", all_rows)
        print(f"\nappended {len(all_rows)} rows to {args.out / 'speed_gpu.csv'}")
    s = summary(all_rows, cond["gpu"])
    if args.summary:
        args.summary.parent.mkdir(parents=True, exist_ok=True)
        args.summary.write_text(s + "\n")
    print("\n" + s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
