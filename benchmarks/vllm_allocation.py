"""How close the vLLM plugin's pixel-based per-image counts come to the full method's allocation.

Usage::

    python benchmarks/vllm_allocation.py            # both splits, keep 10 / 25 / 50 %

Needs scikit-image and scikit-learn (the benchmark's source images; see
``benchmarks/data/make_bench_data.py``). For every instance of the quality benchmark
(``benchmarks/data/bench_tokens.npz``) the script re-renders each view's pixels with the same
seeds and boxes (it checks the view names against the npz), then compares per-image counts:

* ``token``: ``adaptive_prune.prune(tokens, keep_ratio)``'s kept count per image: the full
  method's allocation, from the DINOv2 tokens (no query);
* ``pixel``: the plugin's ``adaptive`` counts from the rendered pixels;
* ``proportional``: the plugin's ``proportional`` counts.

Metrics per instance, then averaged per scenario: ``tv``, the share of the budget placed on
other images than the token allocation places it (``0.5 * sum |a_k - t_k| / B``), and
``coverage``, the mean cosine distance of every token to the nearest kept token (lower is
better) when each image keeps its count with the plugin's per-image selection (for ``token``:
the full method's own selection). Also the Spearman correlation between the pixel diversity
and the token-space ``D_intra`` over the instance's images. Rows append to
``benchmarks/results/vllm_allocation.csv``.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [p for p in (str(REPO), str(REPO / "benchmarks")) if p not in sys.path]

import _env  # noqa: E402

import adaptive_prune  # noqa: E402
from adaptive_prune.integrations.vllm import allocation as al  # noqa: E402
from adaptive_prune.integrations.vllm import selection as sel  # noqa: E402

OUT = REPO / "benchmarks" / "results" / "vllm_allocation.csv"
BENCH = REPO / "benchmarks" / "data" / "bench_tokens.npz"


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def views_of_every_instance():
    """(prefix, rendered views as [3, H, W] tensors, names) in the npz's instance order."""
    mbd = _load(REPO / "benchmarks" / "data" / "make_bench_data.py", "_make_bench_data")
    b = mbd.Builder(encoder=None)
    for split_name, split in mbd.SPLITS.items():
        for scen_id, (scenario, count) in enumerate(mbd.SCENARIOS.items()):
            for inst in range(count):
                rng = np.random.default_rng(split["seed"] + 10 * scen_id + inst)
                views, _, _ = mbd.plan_instance(b, {**split, "_instance": inst}, scenario, rng)
                imgs = [
                    mbd.mf.render(
                        b.image(v.source), v.box, (v.hw[1], v.hw[0]), brightness=v.brightness
                    )
                    for v in views
                ]
                px = [torch.from_numpy(mbd.mf.to_pixels(im).copy()) for im in imgs]
                names = [f"{v.source}#{v.label}" for v in views]
                yield f"{split_name}/{scenario}/{inst}", px, names


def coverage(x: torch.Tensor, kept: torch.Tensor) -> float:
    xn = torch.nn.functional.normalize(x, dim=1)
    return float((1 - xn @ xn[kept].T).min(1).values.clamp(min=0).mean())


def spearman(a, b) -> float:
    ra = torch.tensor(a, dtype=torch.float64).argsort().argsort().double()
    rb = torch.tensor(b, dtype=torch.float64).argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(ra.norm() * rb.norm())
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def per_image_select(x, cu, counts) -> torch.Tensor:
    parts = []
    for k, c in enumerate(counts):
        lo, hi = int(cu[k]), int(cu[k + 1])
        parts.append(sel.select_rows(x[lo:hi], int(c)) + lo)
    return torch.cat(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--keep", type=float, nargs="+", default=[0.1, 0.25, 0.5])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    data = np.load(BENCH, allow_pickle=False)
    rows = []
    agg = defaultdict(list)
    for prefix, px, names in views_of_every_instance():
        want = [str(n) for n in data[f"{prefix}/names"]]
        assert names == want, (prefix, names, want)
        x = torch.from_numpy(data[f"{prefix}/tokens"].astype(np.float32))
        cu = torch.from_numpy(data[f"{prefix}/cu_seqlens"])
        sizes = (cu[1:] - cu[:-1]).tolist()
        sig = [al.item_signals(p[None]) for p in px]
        weights = al.adaptive_weights(sizes, [d for d, _ in sig], [t for _, t in sig])
        split, scenario, _ = prefix.split("/")
        for kr in args.keep:
            res = adaptive_prune.prune(x, cu, keep_ratio=kr, return_diagnostics=True)
            token = res.per_image.tolist()
            budget = sum(token)
            rho = spearman([d for d, _ in sig], res.diagnostics.d_intra.tolist())
            allocs = {
                "token": token,
                "pixel": al.allocate_counts(sizes, budget, 1, weights),
                "proportional": al.allocate_counts(sizes, budget, 1),
            }
            for name, counts in allocs.items():
                kept = res.indices if name == "token" else per_image_select(x, cu, counts)
                tv = 0.5 * sum(abs(a - t) for a, t in zip(counts, token)) / max(budget, 1)
                row = {
                    **_env.conditions(),
                    "split": split,
                    "scenario": scenario,
                    "instance": prefix,
                    "keep_ratio": kr,
                    "allocation": name,
                    "tv": round(tv, 4),
                    "coverage": round(coverage(x, kept), 5),
                    "spearman_pixel_vs_token_dintra": round(rho, 3),
                    "counts": " ".join(map(str, counts)),
                }
                rows.append(row)
                agg[(split, scenario, kr, name)].append(row)
    print("| split | scenario | keep | allocation | tv vs token | coverage | Spearman d |")
    print("|---|---|---:|---|---:|---:|---:|")
    for (split, scenario, kr, name), rs in agg.items():
        tv = np.mean([r["tv"] for r in rs])
        cov = np.mean([r["coverage"] for r in rs])
        rho = np.mean([r["spearman_pixel_vs_token_dintra"] for r in rs])
        print(f"| {split} | {scenario} | {kr} | {name} | {tv:.3f} | {cov:.4f} | {rho:+.2f} |")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    new = not OUT.exists()
    with open(OUT, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new:
            w.writeheader()
        w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
