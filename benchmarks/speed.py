"""Speed benchmark: ``prune`` on one device against the reference, the baselines and the floors.

Usage::

    python benchmarks/speed.py --device cpu                 # D = 1024 and 3584, 1 and 2 threads
    python benchmarks/speed.py --device cpu --threads 1 --dims 1024
    python benchmarks/speed.py --device cpu --scale         # 16x576 + the scale cases, 1 thread
    python benchmarks/speed.py --device cpu --scale --scenarios '' --scale-cases images
    python benchmarks/speed.py --device cpu --scale --dry-run   # tiny shapes, nothing written
    python benchmarks/speed.py --device cuda                # 16x576 and 64x1024, D = 3584, bf16
    python benchmarks/speed.py --device cuda --dry-run      # the logic on a CPU, nothing written

Every row of a scenario is timed in the same process on the same inputs; the backend of each row
is chosen with ``adaptive_prune.backend(...)`` (nothing else is switched). Inputs, timers, the
per-op split, run conditions and the CSV writer live in ``benchmarks/_harness.py``.

Scenarios (keep 25 %):

- ``16x576``: 16 images x 576 real DINOv2-S/14 patch tokens (``_harness.real_576``) lifted to D
  by a seeded orthogonal map, which keeps every norm and cosine, so the selection problem is the
  same at every D; the fixture's 43-token query plus 21 noisy copies of its rows: 64 text rows
  (``--text-rows 43`` for the query alone, as the CPU rows before 2026-12-05).
- ``NxM`` (e.g. ``64x1024``): ``N`` synthetic clustered images of ``M`` tokens, every fourth a
  noisy copy of the previous one (``_harness.synthetic``), 64 text rows.

Rows, ``--device cpu`` (fp32 by default):

- ``adaptive (C++)``: ``backend("cpp")``; ``adaptive (C++, dense: proj_dim=0)``: the same kernels
  with the projection filter off (every distance the reference computes, computed);
  ``adaptive (reference)``: ``backend("reference")``, the pure-PyTorch ops in the same
  composition;
- every other registered method (the baselines; ``--baselines`` to choose), with the query when
  the method uses text;
- ``adaptive (C++), refine=0``: the same without the medoid refinement (stage 3);
- floors, timed alone on unit fp32 rows: the stage-1 per-image ``[m, m]`` similarity blocks, the
  stage-2 pool product ``B1 x B1 x D`` and its rows-only variant ``P x B1 x D``.

Scale cases, ``--device cpu --scale`` (issue 14: how the cost grows against per-image
``divprune``; 1 thread unless ``--threads``; D = 1024; ``--scale-cases`` to choose):

- ``images:Nx576``, N = 4, 16, 32, 64 (``--scale-images``): N real 576-token images with 64 text
  rows (``_harness.real_nx576``). The bundled data hold 12 distinct real 576-token images; the
  first 16 images are exactly the ``16x576`` scenario's (those 12 and 4 near-duplicate views of
  them, 5 % seeded noise) and image ``k >= 16`` is image ``k % 16`` with 5 % seeded noise (seed
  ``k``). N = 64 is 36,864 tokens. The curve of time against N is drawn in
  ``benchmarks/results/speed_scale.png``.
- ``isotropic:64x1024``: 64 x 1024 seeded Gaussian tokens (near-isotropic: the bounds cannot
  prune), no text.
- ``big:1x100000``: one image of 100,000 tokens (the 16 real images tiled with 5 % seeded noise),
  no text. Each of its rows is timed once, without a warm-up, in a forked child process capped
  at ``--cap`` seconds (default 120); a row over the cap is recorded as "did not finish" (no
  time) and its child is killed, so it never competes with the next row.

Each scale case times, in the same process on the same inputs: ``adaptive (C++)`` (default
options, its ``chain_length`` and ``groups`` from the diagnostics), ``adaptive (C++),
refine=0`` and per-image ``divprune``; ``x divprune`` = time / ``divprune``'s. The scale rows
(until 2026-12-05 measured by the stop-gap ``speed_scale.py``, whose rows were converted into
``speed.csv``) go to the same CSV.

Rows, ``--device cuda`` (bf16 by default):

- ``adaptive (triton)`` with and without text (``backend("triton")``), the greedy loops one pick
  per step (``backend("triton", greedy_window=0)``), with window 128 (the default is 64) and by
  the row engine (``backend("triton", greedy_engine="rows")``, ``--engines``), each with a
  note whether its indices equal the default's; ``adaptive (reference)`` without
  text and, while the candidates number at most 4000 (its Python Pareto step is O(P^2)), with;
- the baselines ``divprune``, ``divprune_pooled``, ``cdpruner``, ``dart``, ``uniform`` (only
  ``divprune`` and ``cdpruner`` above 20k tokens);
- floors: one read of ``vision`` (memory), the stage-1 similarity GEMMs (one batched GEMM) and
  the stage-2 pool GEMM ``B1 x B1 x D``.

Columns: median of up to ``--runs`` runs after a warm-up (CUDA events on a GPU, wall time on a
CPU; a slow row gets fewer runs so that it takes about ``--row-budget`` seconds, and a row
slower than that is timed once), the min-max range, ``x floor`` = time / (stage-1 floor +
stage-2 pool floor), ``ref / this`` = the reference's time / this row's (no-text rows
against the no-text reference) and ``x divprune`` = time / per-image ``divprune``'s. Then the
per-op split of the default adaptive row (each ``adaptive_prune::*`` op timed in separate
instrumented runs; the rest is Python and checks).

Outputs: the table of each scenario as it is measured, CSV rows appended to
``benchmarks/results/speed.csv`` after every scenario (date, commit, machine, CPU, load, GPU,
threads, torch/triton/CUDA versions, C++ core state, dtype, shapes), a PNG
(``benchmarks/results/speed_<device>.png``, ``--png ''`` for none) and, with ``--device cuda``,
a summary against the speed targets (``--summary FILE`` to also write it). On a shared machine
timings vary: compare rows of the same run.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [p for p in (str(REPO), str(REPO / "benchmarks")) if p not in sys.path]

import _harness as H  # noqa: E402

import adaptive_prune as ap  # noqa: E402
from adaptive_prune import backends  # noqa: E402
from adaptive_prune.ops._common import normalize  # noqa: E402

KEEP = 0.25
REF_MAX_CANDIDATES = 4000  # cuda: the reference's Pareto step is an O(P^2) Python loop
LARGE_TOKENS = 20000  # cuda: above this, only BASELINES_LARGE (the others are slow there)
BASELINES_CUDA = ("divprune", "divprune_pooled", "cdpruner", "dart", "uniform")
BASELINES_LARGE = ("divprune", "cdpruner")
DRY = (4, 48, 64)  # dry run: images, tokens, dim
SCALE_CASES = ("images", "isotropic", "big")
SCALE_IMAGES = (4, 16, 32, 64)
SCALE_DIM = 1024
BIG_TOKENS = 100_000
DRY_SCALE = {"images": (2, 4), "isotropic": (4, 48), "big": 600}  # dry run: tiny shapes, D = 64

CSV_FIELDS = (
    "date git_commit machine cpu load gpu torch triton cuda cpp device threads dtype scenario "
    "source dim images tokens_per_image text_rows keep_ratio budget pool_size candidates row "
    "kind backend ms_median ms_min ms_max runs x_floor ref_over_this note chain_length groups "
    "x_divprune"
).split()
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------
def scenario_inputs(name: str, dim: int, text_rows: Optional[int], dry: bool):
    """``(x, counts, text, source)`` of scenario ``name`` (float32, CPU)."""
    if dry:
        x, counts, text = H.synthetic(*DRY, text_rows=text_rows or 8)
        return x, counts, text, "synthetic (dry run)"
    if name == "16x576":
        try:
            x, counts, text = H.real_16x576(dim, text_rows)
            return x, counts, text, "real tokens, lifted"
        except (OSError, KeyError) as exc:  # data files missing: same shapes, synthetic content
            x, counts, text = H.synthetic(16, 576, dim, text_rows=text_rows or 43)
            return x, counts, text, f"synthetic ({type(exc).__name__})"
    try:
        n, m = (int(v) for v in name.split("x"))
    except ValueError:
        raise SystemExit(f"speed.py: scenario {name!r} is not '16x576' or 'NxM'") from None
    x, counts, text = H.synthetic(n, m, dim, seed=n * m, text_rows=text_rows or 64)
    return x, counts, text, "synthetic clustered"


# --------------------------------------------------------------------------------------------
# one scenario
# --------------------------------------------------------------------------------------------
HEADER = (
    "| row | backend | ms (median) | range | runs | x floor | ref / this | x divprune | chain "
    "| groups | note |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
)


class Rows:
    """The rows of one scenario, printed as they are measured."""

    def __init__(self, base: dict):
        self.base = base
        self.rows: list[dict] = []
        print(HEADER, flush=True)

    def add(self, row, kind, backend, times=None, note="", echo=True) -> dict:
        r = dict(self.base, row=row, kind=kind, backend=backend, note=note)
        if times:
            r.update(H.stats(times))
        self.rows.append(r)
        if echo:
            print(line(r), flush=True)
        return r

    def measure(self, row, kind, backend, fn: Callable[[], list], note="") -> Optional[dict]:
        """Add the row timed by ``fn`` (returns times); a failure becomes a row with its error,
        so one failing row does not hide the others."""
        try:
            times = fn()
        except Exception as exc:  # noqa: BLE001
            self.add(row, kind, backend, note=f"failed: {type(exc).__name__}: {exc}"[:240])
            return None
        return self.add(row, kind, backend, times, note() if callable(note) else note)

    def get(self, row) -> Optional[float]:
        return next((r.get("ms_median") for r in self.rows if r["row"] == row), None)


def line(r: dict) -> str:
    rng = f"{H.fmt_ms(r['ms_min'])}-{H.fmt_ms(r['ms_max'])}" if "ms_min" in r else "-"
    xf = f"{r['x_floor']:.2f}" if r.get("x_floor") is not None else ""
    rt = f"{r['ref_over_this']:.1f}x" if r.get("ref_over_this") is not None else ""
    xd = f"{r['x_divprune']:.2f}" if r.get("x_divprune") is not None else ""
    return (
        f"| {r['row']} | {r['backend']} | {H.fmt_ms(r.get('ms_median'))} | {rng} | "
        f"{r.get('runs', '-')} | {xf} | {rt} | {xd} | {r.get('chain_length', '')} | "
        f"{r.get('groups', '')} | {r.get('note', '')} |"
    )


def run_scenario(name: str, dim: int, threads: int, args) -> tuple[list[dict], dict]:
    dry, device = args.dry_run, args.device
    cuda = device == "cuda" and not dry  # dry runs keep every tensor on the CPU
    dev = torch.device("cuda" if cuda else "cpu")
    torch.set_num_threads(threads)
    x32, counts, t32, source = scenario_inputs(name, dim, args.text_rows, dry)
    dtype = DTYPES[args.dtype]
    x = x32.to(dev, dtype)
    text = None if args.no_text else t32.to(dev, dtype)
    cu = H.cu_seqlens(counts)
    runs, warmup = args.runs, 2 if cuda else 1

    def tm(fn):
        if dry:  # the logic, not the numbers: one call per row
            return lambda: H.once(fn, cuda)
        return lambda: H.timed(fn, runs, warmup, cuda, args.row_budget)

    def prune(t=text, method="adaptive", **kw):
        return lambda: ap.prune(x, cu, t, keep_ratio=KEEP, method=method, **kw)

    main_backend = "triton" if device == "cuda" else "cpp"
    if device == "cpu" and backends.unavailable("cpp") is not None:
        main_backend = "reference"  # no C++ core: the reference is what serves the CPU
    with ap.backend(main_backend):
        res = ap.prune(x, cu, text, keep_ratio=KEEP, return_diagnostics=True)
    d = res.diagnostics
    B, B1, P = d.budget, d.pool_size, d.candidates
    base = {
        "device": device + (" (dry run)" if dry else ""),
        "threads": threads,
        "dtype": args.dtype,
        "scenario": name,
        "source": source,
        "dim": dim,
        "images": len(counts),
        "tokens_per_image": counts[0],
        "text_rows": 0 if text is None else text.shape[0],
        "keep_ratio": KEEP,
        "budget": B,
        "pool_size": B1,
        "candidates": P,
    }
    print(
        f"\n## {name}, D = {dim}, {args.dtype}, {threads} thread(s), {source}: "
        f"B = {B}, pool B1 = {B1}, candidates P = {P}\n",
        flush=True,
    )
    rows = Rows(base)

    def timed_in(backend_name, fn, **knobs):
        def run():
            with ap.backend(backend_name, **knobs):
                return tm(fn)()

        return run

    def same_as_default(backend_name, t=text, **knobs) -> Callable[[], str]:
        def note():
            with ap.backend(backend_name, **knobs):
                got = ap.prune(x, cu, t, keep_ratio=KEEP).indices
            return f"same indices as the default: {bool(torch.equal(got, res.indices))}"

        return note

    # --- the adaptive method on each backend ----------------------------------------------
    if device == "cpu":
        label = "adaptive (C++)" if main_backend == "cpp" else "adaptive (reference: no C++)"
        r = rows.measure(label, "method", main_backend, timed_in(main_backend, prune()))
        if r:
            r.update(chain_length=d.chain_length, groups=d.groups)
        rows.measure(
            f"{label}, refine=0", "method", main_backend, timed_in(main_backend, prune(refine=0))
        )
        if main_backend == "cpp":
            rows.measure(
                "adaptive (C++, dense: proj_dim=0)",
                "method",
                "cpp proj_dim=0",
                timed_in("cpp", prune(), proj_dim=0),
                same_as_default("cpp", proj_dim=0),
            )
            rows.measure(
                "adaptive (reference)", "method", "reference", timed_in("reference", prune())
            )
    else:
        rows.measure("adaptive (triton)", "method", "triton", timed_in("triton", prune()))
        rows.measure(
            "adaptive (triton), no text", "method", "triton", timed_in("triton", prune(t=None))
        )
        for w in args.windows:
            label = "one pick per step" if w == 0 else f"window {w}"
            rows.measure(
                f"adaptive (triton), greedy {label}",
                "method",
                f"triton greedy_window={w}",
                timed_in("triton", prune(), greedy_window=w),
                same_as_default("triton", greedy_window=w),
            )
        for e in args.engines:
            rows.measure(
                f"adaptive (triton), {e} greedy engine",
                "method",
                f"triton greedy_engine={e}",
                timed_in("triton", prune(), greedy_engine=e),
                same_as_default("triton", greedy_engine=e),
            )
        if not args.no_reference:
            # one run each: stages 0-2 without the Pareto step, and with text only while the
            # reference's Python Pareto step, O(P^2) interpreted, stays affordable
            def ref_once(t):
                def run():
                    with ap.backend("reference"):
                        return H.once(prune(t=t), cuda)

                return run

            rows.measure(
                "adaptive (reference), no text", "method", "reference", ref_once(None), "1 run"
            )
            if text is not None and P <= REF_MAX_CANDIDATES:
                rows.measure(
                    "adaptive (reference)",
                    "method",
                    "reference",
                    ref_once(text),
                    "1 run; " + same_as_default("reference")(),
                )
            else:
                rows.add(
                    "adaptive (reference)",
                    "method",
                    "reference",
                    note=f"skipped: {P} candidates, its Python Pareto step is O(P^2)",
                )

    # --- the baselines ---------------------------------------------------------------------
    if args.baselines is not None:
        baselines = args.baselines
    elif device == "cpu":
        baselines = sorted(m for m in ap.METHODS if m != "adaptive")
    else:
        baselines = BASELINES_CUDA if x.shape[0] <= LARGE_TOKENS else BASELINES_LARGE
    for method in baselines:
        if method not in ap.METHODS:
            rows.add(method, "baseline", "", note="not registered")
            continue
        t = text if ap.METHODS[method].text_aware else None
        rows.measure(
            method,
            "baseline",
            "auto",
            tm(prune(t=t, method=method)),
            "with text" if t is not None else "",
        )

    # --- floors ----------------------------------------------------------------------------
    floor_parts = floors(rows, x, counts, B1, P, tm, device == "cuda")

    # --- ratios ----------------------------------------------------------------------------
    floor_ms = sum(floor_parts) if len(floor_parts) == 2 else None
    if floor_ms:
        rows.add(
            "floor: stage-1 + stage-2 pool",
            "floor",
            "torch",
            note="sum of the two medians",
            echo=False,
        )["ms_median"] = floor_ms
    ref_full = rows.get("adaptive (reference)") or rows.get("adaptive (reference: no C++)")
    ref_nt = rows.get("adaptive (reference), no text")
    div = rows.get("divprune")
    for r in rows.rows:
        ms = r.get("ms_median")
        if not ms or r["kind"] == "floor":
            continue
        if floor_ms:
            r["x_floor"] = ms / floor_ms
        ref = ref_nt if "no text" in r["row"] else ref_full
        if ref:
            r["ref_over_this"] = ref / ms
        if div:
            r["x_divprune"] = ms / div
    print("\nwith the ratios:\n\n" + HEADER)
    print("\n".join(line(r) for r in rows.rows), flush=True)

    # --- per-op split of the default adaptive row -------------------------------------------
    split = per_op(main_backend, prune(), cuda, n=1 if dry else 3, warm=not dry)
    info = {"B": B, "B1": B1, "P": P, "per_op": split}
    return rows.rows, info


def floors(rows: Rows, x, counts, B1, P, tm, gpu_rows: bool) -> list[float]:
    """Time the similarity products of the reference formulation alone; returns the medians
    of the stage-1 and stage-2 pool floors (the ``x floor`` denominator)."""
    m, n_img, dim = counts[0], len(counts), x.shape[1]
    out = []
    if gpu_rows:  # 16-bit GEMMs as the kernels run them, and one read of vision
        nbytes = x.numel() * x.element_size()
        r = rows.measure(
            "floor: read vision once", "floor", "torch", tm(lambda: torch.amax(x, dim=0))
        )
        if r:
            r["note"] = f"{nbytes / 1e9:.3f} GB at {nbytes / r['ms_median'] / 1e6:.0f} GB/s"
        xb = x.view(n_img, m, dim) if all(c == m for c in counts) else None
        xp = x[:B1].contiguous()
        parts = [
            (
                "floor: stage-1 similarity GEMMs",
                2 * n_img * m * m * dim,
                (lambda: torch.bmm(xb, xb.transpose(1, 2))) if xb is not None else None,
            ),
            ("floor: stage-2 pool GEMM (B1 x B1)", 2 * B1 * B1 * dim, lambda: torch.mm(xp, xp.T)),
        ]
    else:  # unit fp32 rows, as the reference computes them
        xn = normalize(x.float(), 1e-6).contiguous()
        cu = H.cu_seqlens(counts).tolist()
        blocks = [xn[cu[k] : cu[k + 1]] for k in range(n_img)]

        def stage1():
            for b in blocks:
                torch.mm(b, b.T)

        xp, xr = xn[:B1].contiguous(), xn[:P].contiguous()
        parts = [
            (
                f"floor: stage-1 blocks ({n_img} x [{m}, {m}])",
                2 * sum(c * c for c in counts) * dim,
                stage1,
            ),
            (f"floor: stage-2 pool [{B1}, {B1}]", 2 * B1 * B1 * dim, lambda: torch.mm(xp, xp.T)),
        ]
    for label, flops, fn in parts:
        if fn is None:
            continue
        r = rows.measure(label, "floor", "torch", tm(fn))
        if r:
            r["note"] = f"{flops / 1e12:.3f} TFLOP at {flops / r['ms_median'] / 1e9:.3g} TFLOP/s"
            out.append(r["ms_median"])
    if not gpu_rows:
        rows.measure(
            f"floor: stage-2 rows [{P}, {B1}]", "floor", "torch", tm(lambda: torch.mm(xr, xp.T))
        )
    return out


def per_op(backend_name: str, fn, cuda: bool, n: int, warm: bool = True) -> dict:
    """Mean ms per call of each ``adaptive_prune::*`` op in ``n`` instrumented runs of ``fn``
    (after one instrumented warm-up when ``warm``), plus the rest of the call's time."""
    with ap.backend(backend_name):
        if warm:
            with H.OpTimes(cuda):
                fn()
        ops, total = H.OpTimes(cuda), []
        with ops:
            for _ in range(n):
                total.append(H.once(fn, cuda)[0])
    out = {k: v / n for k, v in ops.ms.items()}
    out["rest (Python, checks)"] = statistics.fmean(total) - sum(out.values())
    return out


# --------------------------------------------------------------------------------------------
# scale cases (--device cpu --scale)
# --------------------------------------------------------------------------------------------
def scale_inputs(case: str, n: int, args) -> tuple[str, str, torch.Tensor, list[int], Optional[
        torch.Tensor]]:  # fmt: skip
    """``(scenario, source, x, counts, text)`` of scale case ``case`` (``n``: images of the
    ``images`` curve), float32 on the CPU."""
    dry = args.dry_run
    if case == "images":
        if dry:
            x, counts, text = H.synthetic(n, DRY[1], DRY[2], text_rows=8)
            return f"images:{n}x{DRY[1]}", "synthetic (dry run)", x, counts, text
        x, counts, text = H.real_nx576(n, SCALE_DIM, args.text_rows)
        src = "real tokens, lifted" + (f" ({n - H.IMAGES} seeded noisy copies)" if n > 16 else "")
        return f"images:{n}x{H.TOKENS}", src, x, counts, text
    if case == "isotropic":
        k, m = DRY_SCALE["isotropic"] if dry else (64, 1024)
        dim = DRY[2] if dry else SCALE_DIM
        x = torch.randn(k * m, dim, generator=torch.Generator().manual_seed(0))
        return f"isotropic:{k}x{m}", "seeded Gaussian (near-isotropic)", x, [m] * k, None
    if case == "big":
        if dry:
            m = DRY_SCALE["big"]
            x, _, _ = H.synthetic(1, m, DRY[2])
            return f"big:1x{m}", "synthetic (dry run)", x, [m], None
        base, _, _ = H.real_576(H.IMAGES)
        reps = math.ceil(BIG_TOKENS / base.shape[0])
        tiled = np.concatenate([H.noisy(base, 1000 + i) for i in range(reps)])[:BIG_TOKENS]
        src = "real tokens tiled with 5 % seeded noise, lifted"
        return f"big:1x{BIG_TOKENS}", src, H.lift(tiled, SCALE_DIM), [BIG_TOKENS], None
    raise SystemExit(f"speed.py: unknown scale case {case!r}; choose from {SCALE_CASES}")


def capped(fn: Callable[[], object], cap: float) -> tuple[Optional[float], object]:
    """``(ms, fn's return value)`` of one call of ``fn`` in a forked child process, or
    ``(None, None)`` when it does not finish within ``cap`` seconds (the child is then killed,
    so it never competes with the next row). The return value must be picklable."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    q = ctx.Queue()

    def child() -> None:
        with H.Timer() as t:
            out = fn()
        q.put((t.ms, out))

    p = ctx.Process(target=child, daemon=True)
    p.start()
    p.join(cap)
    if p.is_alive():
        p.kill()
        p.join()
        return None, None
    try:
        return q.get(timeout=5)
    except Exception:  # noqa: BLE001 (the child died without a result: say so in the row)
        return None, None


def recording(fn: Callable[[], object], last: list, args) -> Callable[[], list[float]]:
    """A timer of ``fn`` (one call in a dry run, else :func:`_harness.timed`) that keeps the
    return value of its last call in ``last[0]``."""

    def keep() -> None:
        last[0] = fn()

    if args.dry_run:
        return lambda: H.once(keep)
    return lambda: H.timed(keep, args.runs, 1, False, args.row_budget)


def run_scale_case(case: str, n: int, threads: int, backend_name: str, args) -> list[dict]:
    """The rows of one scale case: ``adaptive`` (with its diagnostics), ``refine=0`` and
    per-image ``divprune``, in this process on the same inputs; ``x divprune`` filled in."""
    torch.set_num_threads(threads)
    name, source, x, counts, text = scale_inputs(case, n, args)
    cu = H.cu_seqlens(counts)
    budget = int(KEEP * x.shape[0] + 0.5)  # as prune rounds keep_ratio
    base = {
        "device": "cpu" + (" (dry run)" if args.dry_run else ""),
        "threads": threads,
        "dtype": "float32",
        "scenario": name,
        "source": source,
        "dim": x.shape[1],
        "images": len(counts),
        "tokens_per_image": counts[0],
        "text_rows": 0 if text is None else text.shape[0],
        "keep_ratio": KEEP,
        "budget": budget,
    }
    cap = args.cap if case == "big" else None
    print(
        f"\n## scale {name}, D = {x.shape[1]}, float32, {threads} thread(s), {source}: "
        f"{x.shape[0]} tokens, B = {budget}"
        + (f", each row once in a child capped at {cap:g} s" if cap is not None else "")
        + "\n",
        flush=True,
    )
    rows = Rows(base)
    label = "adaptive (C++)" if backend_name == "cpp" else "adaptive (reference: no C++)"

    def adaptive(**kw):
        def call():
            with ap.backend(backend_name):
                res = ap.prune(x, cu, text, keep_ratio=KEEP, return_diagnostics=True, **kw)
            return res.diagnostics.chain_length, res.diagnostics.groups

        return call

    def divprune():
        ap.prune(x, cu, keep_ratio=KEEP, method="divprune")

    for row, kind, backend, fn in (
        (label, "method", backend_name, adaptive()),
        (f"{label}, refine=0", "method", backend_name, adaptive(refine=0)),
        ("divprune", "baseline", "auto", divprune),
    ):
        if cap is not None:
            ms, out = capped(fn, cap)
            if ms is None:
                rows.add(row, kind, backend, note=f"did not finish within {cap:g} s (1 run)")
                continue
            r = rows.add(row, kind, backend, [ms], "1 run, no warm-up, in a forked child")
        else:
            last: list = [None]
            r = rows.measure(row, kind, backend, recording(fn, last, args))
            out = last[0]
        if r is not None and kind == "method" and "refine" not in row and out is not None:
            r.update(chain_length=out[0], groups=out[1])
    div = rows.get("divprune")
    if div:
        for r in rows.rows:
            if r.get("ms_median"):
                r["x_divprune"] = r["ms_median"] / div
    print("\nwith the ratios:\n\n" + HEADER)
    print("\n".join(line(r) for r in rows.rows), flush=True)
    return rows.rows


def plot_scale(rows: list[dict], path: Path) -> None:
    """Time against the number of images (the ``images:*`` rows), one line per row label."""
    curve = [r for r in rows if str(r["scenario"]).startswith("images:") and r.get("ms_median")]
    if not curve:
        return
    try:
        import matplotlib
    except ImportError:
        print("no matplotlib: no PNG")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for label in dict.fromkeys(r["row"] for r in curve):
        pts = sorted((r["images"], r["ms_median"]) for r in curve if r["row"] == label)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        for n, ms in pts:
            ax.annotate(H.fmt_ms(ms), (n, ms), fontsize=7, textcoords="offset points",
                        xytext=(3, 3))  # fmt: skip
    r0 = curve[0]
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(f"images ({r0['tokens_per_image']} tokens each)")
    ax.set_ylabel("ms (median, log scale)")
    ax.set_title(
        f"cpu, D = {r0['dim']}, keep {KEEP:.0%}, {r0['text_rows']} text rows, "
        f"{r0['threads']} thread(s), {r0['git_commit']}",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


# --------------------------------------------------------------------------------------------
# summary, plot
# --------------------------------------------------------------------------------------------
def summary(all_rows: list[dict], gpu: str) -> str:
    """The speed targets of issue 5, checked on the cuda rows just measured."""
    lines = [
        f"### speed targets ({gpu}, keep {KEEP:.0%})",
        "",
        "| scenario | D | prune ms | < 0.5 ms | x ref (>= 20) | x ref, no text | "
        "vs divprune | vs cdpruner | greedy one pick per step: ms | row engine: ms | "
        "block engine: ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = dict.fromkeys((r["scenario"], r["dim"]) for r in all_rows)
    for name, dim in keys:
        rs = {r["row"]: r for r in all_rows if (r["scenario"], r["dim"]) == (name, dim)}

        def ms(row, rs=rs):
            return rs.get(row, {}).get("ms_median")

        t, ref = ms("adaptive (triton)"), ms("adaptive (reference)")
        t_nt, ref_nt = ms("adaptive (triton), no text"), ms("adaptive (reference), no text")

        def vs(method, t=t):
            o = ms(method)
            if t is None or o is None:
                return "-"
            return f"{o / t:.2f}x ({'faster' if t < o else 'slower'})"

        lines.append(
            f"| {name} | {dim} | {H.fmt_ms(t)} | {'yes' if t is not None and t < 0.5 else 'no'} | "
            f"{H.fmt_ms(ref / t) if ref and t else '-'} | "
            f"{H.fmt_ms(ref_nt / t_nt) if ref_nt and t_nt else '-'} | "
            f"{vs('divprune')} | {vs('cdpruner')} | "
            f"{H.fmt_ms(ms('adaptive (triton), greedy one pick per step'))} | "
            f"{H.fmt_ms(ms('adaptive (triton), rows greedy engine'))} | "
            f"{H.fmt_ms(ms('adaptive (triton), blocks greedy engine'))} |"
        )
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        print("no matplotlib: no PNG")
        return
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
        rows = [r for r in results[key] if r.get("ms_median")][::-1]
        names = [r["row"] for r in rows]
        vals = [r["ms_median"] for r in rows]
        colors = [
            "tab:gray"
            if r["kind"] == "floor"
            else "tab:green"
            if r["row"].startswith(("adaptive (C++)", "adaptive (triton)"))
            else "tab:blue"
            for r in rows
        ]
        ax.barh(names, vals, color=colors)
        ax.set_xscale("log")
        ax.set_xlabel("ms (median, log scale)")
        ax.set_title("{}: {}, D = {}, {} thread(s), {}".format(*key))
        for i, v in enumerate(vals):
            ax.text(v, i, f" {H.fmt_ms(v)}", va="center", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------
def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), required=True)
    p.add_argument(
        "--scenarios", default=None, help="comma list (cpu: 16x576; cuda: 16x576,64x1024)"
    )
    p.add_argument("--dims", type=int, nargs="+", default=None, help="cpu: 1024 3584; cuda: 3584")
    p.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=None,
        help="torch CPU threads, one scenario set each (cpu: 1 2; cuda: as is)",
    )
    p.add_argument(
        "--dtype", choices=sorted(DTYPES), default=None, help="cpu: float32; cuda: bfloat16"
    )
    p.add_argument(
        "--text-rows", type=int, default=None, help="64 (the 43-row query and noisy copies)"
    )
    p.add_argument("--no-text", action="store_true", help="no query (Pareto step off)")
    p.add_argument("--runs", type=int, default=None, help="cpu: 5; cuda: 20")
    p.add_argument("--row-budget", type=float, default=None, help="seconds (cpu 10, cuda 5)")
    p.add_argument("--baselines", nargs="*", default=None, help="baselines to time")
    p.add_argument(
        "--windows",
        type=int,
        nargs="*",
        default=[0, 128],
        help="cuda: greedy windows timed besides the default (0 = one pick per step)",
    )
    p.add_argument(
        "--engines",
        nargs="*",
        default=[],
        help="cuda: greedy engines timed besides the default (auto): rows (kernels/_engine.py) "
        "or blocks",
    )
    p.add_argument("--no-reference", action="store_true", help="cuda: no reference rows")
    p.add_argument(
        "--csv",
        type=Path,
        default=None,
        help="CSV to append to after every scenario (default "
        "benchmarks/results/speed.csv; a dry run writes only here)",
    )
    p.add_argument(
        "--png",
        default=None,
        help="PNG path ('' for none; default "
        "benchmarks/results/speed_<device>.png, none in a dry run)",
    )
    p.add_argument("--summary", type=Path, default=None, help="cuda: also write the summary")
    p.add_argument(
        "--scale",
        action="store_true",
        help="cpu: also the scale cases (images curve, isotropic, 100k-token image); threads "
        "default to 1",
    )
    p.add_argument(
        "--scale-cases",
        default=",".join(SCALE_CASES),
        help=f"comma list of scale cases (default {','.join(SCALE_CASES)})",
    )
    p.add_argument(
        "--scale-images",
        type=int,
        nargs="+",
        default=list(SCALE_IMAGES),
        help="images of the scale curve (default 4 16 32 64)",
    )
    p.add_argument(
        "--cap", type=float, default=120.0, help="seconds per row of the 100k-token image"
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help=f"the logic on {DRY[0]} synthetic images of {DRY[1]} tokens, D = "
        f"{DRY[2]}, one run per row, tensors on the CPU (--device cuda: the Triton "
        "kernels need TRITON_INTERPRET=1); writes only an explicit --csv",
    )
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    if cuda and not args.dry_run and not torch.cuda.is_available():
        print(
            "speed.py --device cuda needs a CUDA device (torch.cuda.is_available() is "
            "False); use --device cpu, or --dry-run for the logic."
        )
        return 2
    if args.scale and cuda:
        print("speed.py: --scale is a CPU benchmark (issue 14); use --device cpu")
        return 2
    scenarios = (
        ("16x576,64x1024" if cuda else "16x576") if args.scenarios is None else args.scenarios
    )
    args.scenarios = [s.strip() for s in scenarios.split(",") if s.strip()]
    args.scale_cases = [c.strip() for c in args.scale_cases.split(",") if c.strip()]
    for c in args.scale_cases:
        if c not in SCALE_CASES:
            p.error(f"--scale-cases: unknown case {c!r}; choose from {', '.join(SCALE_CASES)}")
    args.dims = args.dims or ([3584] if cuda else [1024, 3584])
    args.threads = args.threads or (
        [torch.get_num_threads()] if cuda else [1] if args.scale else [1, 2]
    )
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    if args.text_rows is None and (cuda or not args.dry_run):
        args.text_rows = 64
    args.runs = args.runs or (20 if cuda else 5)
    args.row_budget = args.row_budget or (5.0 if cuda else 10.0)
    csv_path = args.csv or (None if args.dry_run else H.RESULTS / "speed.csv")
    png = (
        args.png
        if args.png is not None
        else ("" if args.dry_run else str(H.RESULTS / f"speed_{args.device}.png"))
    )

    cond = H.conditions(cuda and not args.dry_run)
    print(
        f"# speed, --device {args.device}{' (dry run)' if args.dry_run else ''}: keep "
        f"{KEEP:.0%}, {args.dtype}, scenarios {args.scenarios}, D {args.dims}, threads "
        f"{args.threads}\n{cond['cpu']} | load {cond['load']} | GPU {cond['gpu']} | torch "
        f"{cond['torch']} | triton {cond['triton']} | CUDA {cond['cuda']} | C++ core "
        f"{cond['cpp']} | commit {cond['git_commit']} | {backends.ENV_VAR}="
        f"{os.environ.get(backends.ENV_VAR, '')} TRITON_INTERPRET="
        f"{os.environ.get('TRITON_INTERPRET', '')}",
        flush=True,
    )
    all_rows, results = [], {}
    for name in args.scenarios:
        for dim in [DRY[2]] if args.dry_run else args.dims:
            for threads in args.threads:
                rows, info = run_scenario(name, dim, threads, args)
                for r in rows:
                    r.update(cond)
                all_rows += rows
                results[(name, args.device, dim, threads, args.dtype)] = rows
                split = ", ".join(f"{k} {H.fmt_ms(v)}" for k, v in info["per_op"].items())
                print(f"\nper op, ms (mean of instrumented runs): {split}", flush=True)
                if csv_path is not None:
                    H.append_csv(csv_path, rows, CSV_FIELDS)
                    print(f"appended {len(rows)} rows to {csv_path}", flush=True)
    scale_rows: list[dict] = []
    if args.scale:
        backend_name = "cpp" if backends.unavailable("cpp") is None else "reference"
        cases = [
            ("images", n) for n in (DRY_SCALE["images"] if args.dry_run else args.scale_images)
        ]
        cases = [c for c in cases if "images" in args.scale_cases]
        cases += [(c, 1) for c in ("isotropic", "big") if c in args.scale_cases]
        for threads in args.threads:
            for case, n in cases:
                rows = run_scale_case(case, n, threads, backend_name, args)
                for r in rows:
                    r.update(cond)
                scale_rows += rows
                if csv_path is not None:
                    H.append_csv(csv_path, rows, CSV_FIELDS)
                    print(f"appended {len(rows)} rows to {csv_path}", flush=True)
        all_rows += scale_rows
    if cuda:
        s = summary(all_rows, cond["gpu"])
        if args.summary:
            args.summary.parent.mkdir(parents=True, exist_ok=True)
            args.summary.write_text(s + "\n")
        print("\n" + s)
    if png and results:
        plot(results, Path(png))
    if scale_rows and png:
        scale_png = (
            H.RESULTS / "speed_scale.png"
            if args.png is None
            else Path(png).with_name(Path(png).stem + "_scale.png")
        )
        plot_scale(scale_rows, scale_png)
    failed = [r["row"] for r in all_rows if str(r.get("note", "")).startswith("failed")]
    if failed:
        print(f"\nfailed rows: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
