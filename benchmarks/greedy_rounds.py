"""How long the greedy loops' dependency chains are: one pick per step against the windowed
engine (``kernels/_maxmin.py``), on the real inputs of the speed benchmarks.

The max-min greedy is sequential: with one pick per step, every step waits for one row load
and one reduction over the whole segment. The windowed engine takes up to ``L`` exact picks
per round from an on-chip ``L x L`` sub-block; a round costs a few passes over the running
distances (the radix select of the window edge, the compaction) plus the pass that applies
the round's rows.
This script counts, with the real kernels (the Triton interpreter on a CPU, compiled on a
GPU), the steps, rounds and passes of every segment of both stages, checks that both variants
return the same picks and gains, and on a GPU times the two greedy ops.

Usage::

    python benchmarks/greedy_rounds.py            # 16 x 576 real tokens, keep 25 % and 10 %
    python benchmarks/greedy_rounds.py --quick    # keep 25 % only, windows 64
    python benchmarks/greedy_rounds.py --dry-run  # small synthetic input, nothing written

Inputs: the 16 real 576-token images of ``speed_cpu.py`` (384-dim DINOv2-S/14 patch tokens;
the speed benchmarks lift them to D = 3584 by an orthogonal map, which keeps every cosine, so
the picks and the chain lengths are the same), with the 64 text tokens of ``speed_gpu.py``.
Outputs: a table, rows appended to ``benchmarks/results/greedy_rounds.csv``.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [p for p in (str(REPO), str(REPO / "benchmarks")) if p not in sys.path]

import _env  # noqa: E402

OUT = REPO / "benchmarks" / "results" / "greedy_rounds.csv"
FIELDS = (
    "date git_commit machine cpu device torch triton images tokens_per_image keep_ratio "
    "stage segments steps window rounds passes picks_per_round passes_per_pick same_as_step "
    "ms_step ms_window"
).split()


def captured_calls(x, cu, text, keep):
    """The composition's greedy_select and global_greedy arguments for one prune() call (seen
    by a dispatch mode; ``gpu_counters.captured_calls``)."""
    import gpu_counters

    return gpu_counters.captured_calls(x, cu, text, keep)


def cuda_ms(fn, runs=5):
    """Median CUDA-event time (ms) of ``fn`` with the GPU benchmark's timer; None on a CPU."""
    if not torch.cuda.is_available():
        return None
    import speed_gpu

    return statistics.median(speed_gpu.timed(fn, runs, warmup=1))


def one_keep(x, cu, text, keep: float, windows, cond: dict) -> list[dict]:
    """Rows for one keep ratio: both greedy ops, one pick per step and every window."""
    from adaptive_prune.kernels.global_greedy import global_greedy_fwd
    from adaptive_prune.kernels.greedy_select import greedy_select_fwd

    calls = captured_calls(x, cu, text, keep)
    vision, cu_s, bud, mode, eps = calls["greedy_select"]
    _, pool, po, reserved, picks, _ = calls["global_greedy"]
    dev = vision.device

    def stage1(w, stats=None):
        return greedy_select_fwd(vision, cu_s, bud, mode, eps, window=w, stats=stats)

    def stage2(w, stats=None):
        return global_greedy_fwd(vision, pool, po, reserved, picks, eps, window=w, stats=stats)

    t0 = time.perf_counter()
    want = {"stage 1": stage1(0), "stage 2": stage2(0)}
    print(f"keep {keep:.0%}: step loops ran in {time.perf_counter() - t0:.1f} s", flush=True)
    ms_step = {"stage 1": cuda_ms(lambda: stage1(0)), "stage 2": cuda_ms(lambda: stage2(0))}
    sizes = [int(v) for v in (cu_s[1:] - cu_s[:-1]).tolist()]
    # stage 1 runs its images in parallel: its chain is the longest image's; stage 2's is the
    # request's greedy steps after the reserved tokens
    chain = {
        "stage 1": max(max(0, min(int(b), m) - 1) for b, m in zip(bud.tolist(), sizes)),
        "stage 2": sum(picks) - int(reserved.sum()),
    }
    segments = {"stage 1": cu_s.numel() - 1, "stage 2": po.numel() - 1}
    rows = []
    for w in windows:
        for stage, fn in (("stage 1", stage1), ("stage 2", stage2)):
            st = torch.zeros(segments[stage], 2, dtype=torch.int64, device=dev)
            got = fn(w, st)
            if stage == "stage 1":
                same = bool(torch.equal(got, want[stage]))
                rounds, passes = int(st[:, 0].max()), int(st[:, 1].max())
            else:
                same = all(bool(torch.equal(a, b)) for a, b in zip(got, want[stage]))
                rounds, passes = int(st[:, 0].sum()), int(st[:, 1].sum())
            steps = chain[stage]
            rows.append(cond | {
                "keep_ratio": keep, "stage": stage, "segments": segments[stage],
                "steps": steps, "window": w, "rounds": rounds, "passes": passes,
                "picks_per_round": round(steps / max(rounds, 1), 1),
                "passes_per_pick": round(passes / max(steps, 1), 2), "same_as_step": same,
                "ms_step": ms_step[stage], "ms_window": cuda_ms(lambda fn=fn, w=w: fn(w)),
            })  # fmt: skip
        print(f"  window {w}: done", flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="keep 25 %% and window 64 only")
    p.add_argument("--csv", type=Path, default=OUT)
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="the script's logic on 4 small synthetic images; nothing written",
    )
    args = p.parse_args(argv)

    import speed_gpu

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.dry_run:
        x, counts, text = speed_gpu.synthetic(4, 48, 64)
    else:
        import gpu_counters  # the same real inputs (speed_cpu.py does not import on this branch)

        x, counts, text = gpu_counters.real_16x576()
    x, text = x.to(dev), text.to(dev)
    cu = torch.tensor([0] + torch.tensor(counts).cumsum(0).tolist(), dtype=torch.int64)
    cond = _env.conditions() | {
        "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu (interpreter)",
        "torch": torch.__version__,
        "triton": _env.triton_version(),
        "images": len(counts),
        "tokens_per_image": counts[0],
    }
    rows = []
    for keep in (0.25,) if args.quick else (0.25, 0.10):
        rows += one_keep(x, cu, text, keep, (64,) if args.quick else (32, 64, 128), cond)
    hdr = ("| keep | stage | longest chain (steps) | window | rounds | picks/round | "
           "passes/pick | same picks + gains | ms step | ms window |")  # fmt: skip
    shape = f"{len(counts)} x {counts[0]} {'synthetic' if args.dry_run else 'real'} tokens"
    print(f"\n{cond['device']}, {shape}; stage 1: the longest image's chain "
          "(images run in parallel), stage 2: the request's chain\n")  # fmt: skip
    print(hdr)
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ms = [f"{r[k]:.3f}" if r[k] is not None else "-" for k in ("ms_step", "ms_window")]
        print(f"| {r['keep_ratio']:.0%} | {r['stage']} | {r['steps']} | {r['window']} | "
              f"{r['rounds']} | {r['picks_per_round']} | {r['passes_per_pick']} | "
              f"{r['same_as_step']} | {ms[0]} | {ms[1]} |")  # fmt: skip
    ok = all(r["same_as_step"] for r in rows)
    if args.dry_run:
        return 0 if ok else 1
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    new = not args.csv.exists()
    with args.csv.open("a", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        if new:
            wr.writeheader()
        wr.writerows(rows)
    print(f"\nappended {len(rows)} rows to {args.csv}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
