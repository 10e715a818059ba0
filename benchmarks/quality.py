"""Quality benchmark: how much of what matters each pruner keeps, on real patch tokens.

Usage::

    python benchmarks/quality.py                 # main grid + starvation + ablation, both splits
    python benchmarks/quality.py --quick         # smoke run: prints, writes nothing
    python benchmarks/quality.py --skip-ablation --methods adaptive divprune_pooled

Data: ``benchmarks/data/bench_tokens.npz`` (real DINOv2-S/14 patch tokens of real images; layout
in ``benchmarks/data/make_bench_data.py``), two splits with disjoint source images: ``tune``
(the only split the default tuning looks at) and ``holdout``. Scenarios: ``near_dup``,
``needle``, ``mixed``, ``retrieval``.

**These are proxies computed on ViT features, not LMM accuracy.** Metrics, per instance, then
averaged over the instances of a scenario (``random``: also over seeds):

- ``coverage``: mean over all tokens of the cosine distance to the nearest kept token (lower
  is better); ``kcenter``: the max of that distance (lower is better).
- ``attn_recall``: share of the query's attention mass on kept tokens,
  ``mean_q sum_{i kept} softmax_i(TAU * cos(q, x_i))`` with ``TAU = 20`` (the query attends to
  about 25-110 tokens of 1600-2600); ``attn_recall_dot``: the same with scaled dot-product
  logits ``q . x_i / sqrt(D)`` on the raw tokens (a much sharper attention: 4-11 tokens).
- ``needle_keep``: share of the needle (or retrieval target) image's tokens that are kept;
  ``needle_cov``: mean cosine distance of the needle's tokens to the nearest kept token.
- ``group_min_ratio`` (``near_dup``): ``min over duplicate groups of (group's share of the
  kept tokens) / (its share of all tokens)``; 1 = every group got at least a proportional share.
- ``photo_share``: share of the kept tokens that lie on photos (vs textures/documents).
- ``starved``: nonempty images left with no token (run with ``min_per_image=0``; with the
  default ``min_per_image=1`` it is 0 by construction).
- ``valid``: 1 when the output has exactly ``B`` unique sorted in-range rows and honours
  ``min_per_image``.

Outputs (``--out``, default ``benchmarks/results``): ``quality.csv`` (one row per method,
split, scenario, keep ratio, metric, with the conditions), ``quality_ablation.csv``,
``quality.md`` (tables) and ``quality_<split>.png`` (quality against keep ratio, one line per
method).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [p for p in (str(REPO), str(REPO / "benchmarks")) if p not in sys.path]

import _harness as H  # noqa: E402  (run conditions, CSV writer)

import adaptive_prune as ap  # noqa: E402
from adaptive_prune import backends  # noqa: E402

DATA = REPO / "benchmarks" / "data" / "bench_tokens.npz"
RESULTS = REPO / "benchmarks" / "results"
SCENARIOS = ("near_dup", "needle", "mixed", "retrieval")
RATIOS = (0.05, 0.10, 0.25, 0.50)
METHODS = (
    "adaptive",
    "random",
    "uniform",
    "divprune",
    "divprune_pooled",
    "dart",
    "cdpruner",
    "trimtokenator",
)
TAU = 20.0
RANDOM_SEEDS = (0, 1, 2, 3, 4)
EPS = 1e-6
# Lower is better for these; higher for the rest of the ranked metrics.
LOWER_BETTER = {"coverage", "kcenter", "needle_cov", "starved"}
RANKED = ("coverage", "kcenter", "attn_recall", "needle_cov")


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
@dataclass
class Instance:
    key: str  # "{split}/{scenario}/{i}"
    split: str
    scenario: str
    tokens: torch.Tensor  # [N, D] float32
    cu: torch.Tensor  # [n+1] int64
    names: list
    kind: list
    group: list
    needle: int  # image index of the query's source, -1 without query
    query: Optional[torch.Tensor]  # [Q, D] float32 or None

    @property
    def counts(self) -> list[int]:
        c = self.cu.tolist()
        return [c[k + 1] - c[k] for k in range(len(c) - 1)]


def load_instances(path: Path = DATA, splits=("tune", "holdout")) -> list[Instance]:
    """Every benchmark instance of the given splits, tokens as float32."""
    out = []
    with np.load(path, allow_pickle=False) as z:
        for key in z["index"].tolist():
            split, scenario, _ = key.split("/")
            if split not in splits:
                continue
            q = z[f"{key}/query"]
            out.append(
                Instance(
                    key=key,
                    split=split,
                    scenario=scenario,
                    tokens=torch.from_numpy(z[f"{key}/tokens"].astype(np.float32)),
                    cu=torch.from_numpy(z[f"{key}/cu_seqlens"].astype(np.int64)),
                    names=z[f"{key}/names"].tolist(),
                    kind=z[f"{key}/kind"].tolist(),
                    group=z[f"{key}/group"].tolist(),
                    needle=int(z[f"{key}/needle"]),
                    query=torch.from_numpy(q.astype(np.float32)) if q.shape[0] else None,
                )
            )
    return out


# --------------------------------------------------------------------------------------------
# Metrics (pure functions of the tokens and the kept rows; tested in tests/test_quality_metrics)
# --------------------------------------------------------------------------------------------
def _unit(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return x / x.norm(dim=1, keepdim=True).clamp_min(EPS)


def nearest_kept_distance(x: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """``[N]`` float64: cosine distance of every token to its nearest kept token (``inf`` when
    nothing is kept)."""
    if kept.numel() == 0:
        return torch.full((x.shape[0],), math.inf, dtype=torch.float64)
    xh = _unit(x)
    return 1.0 - (xh @ xh[kept].T).max(dim=1).values


def coverage(x: torch.Tensor, kept: torch.Tensor) -> float:
    """Mean cosine distance of every token to its nearest kept token (lower is better)."""
    return float(nearest_kept_distance(x, kept).mean())


def k_center(x: torch.Tensor, kept: torch.Tensor) -> float:
    """Max cosine distance of any token to its nearest kept token (lower is better)."""
    return float(nearest_kept_distance(x, kept).max())


def attention_recall(
    x: torch.Tensor, query: torch.Tensor, kept: torch.Tensor, tau: float = TAU, dot: bool = False
) -> float:
    """Share of the query's softmax attention mass that falls on kept tokens, averaged over the
    query rows. Logits ``tau * cos(q, x_i)``, or ``q . x_i / sqrt(D)`` when ``dot``."""
    if dot:
        logits = query.double() @ x.double().T / math.sqrt(x.shape[1])
    else:
        logits = tau * (_unit(query) @ _unit(x).T)
    p = torch.softmax(logits, dim=1)
    return float(p[:, kept].sum(dim=1).mean())


def per_image_counts(counts: list[int], kept: torch.Tensor) -> list[int]:
    st = np.cumsum([0] + counts)
    k = kept.numpy()
    return [int(((k >= st[i]) & (k < st[i + 1])).sum()) for i in range(len(counts))]


def is_valid(kept: torch.Tensor, n_tokens: int, budget: int, counts: list[int], q: int) -> bool:
    """Exactly ``budget`` unique, sorted, in-range rows, and every image keeps its minimum."""
    if kept.dtype != torch.int64 or kept.ndim != 1 or kept.numel() != budget:
        return False
    if budget and (int(kept.min()) < 0 or int(kept.max()) >= n_tokens):
        return False
    if budget > 1 and not bool((kept[1:] > kept[:-1]).all()):
        return False
    per = per_image_counts(counts, kept)
    return all(p >= min(q, m) for p, m in zip(per, counts))


def group_min_ratio(counts: list[int], groups: list, kept: torch.Tensor) -> float:
    """``min over groups g of (kept share of g) / (token share of g)``."""
    per = per_image_counts(counts, kept)
    kept_g, tok_g = defaultdict(int), defaultdict(int)
    for c, p, g in zip(counts, per, groups):
        kept_g[g] += p
        tok_g[g] += c
    B, N = max(kept.numel(), 1), sum(counts)
    return min((kept_g[g] / B) / (tok_g[g] / N) for g in tok_g if tok_g[g])


def instance_metrics(inst: Instance, kept: torch.Tensor, budget: int, q: int) -> dict:
    """Every metric of one pruning result."""
    x, counts = inst.tokens, inst.counts
    d = nearest_kept_distance(x, kept)
    per = per_image_counts(counts, kept)
    out = {
        "coverage": float(d.mean()),
        "kcenter": float(d.max()),
        "starved": float(sum(1 for c, p in zip(counts, per) if c > 0 and p == 0)),
        "valid": float(is_valid(kept, x.shape[0], budget, counts, q)),
        "photo_share": sum(p for p, k in zip(per, inst.kind) if k == "photo") / max(budget, 1),
    }
    if inst.query is not None:
        out["attn_recall"] = attention_recall(x, inst.query, kept)
        out["attn_recall_dot"] = attention_recall(x, inst.query, kept, dot=True)
    if inst.needle >= 0:
        a, e = int(inst.cu[inst.needle]), int(inst.cu[inst.needle + 1])
        out["needle_keep"] = per[inst.needle] / (e - a)
        out["needle_cov"] = float(d[a:e].mean())
    if inst.scenario == "near_dup":
        out["group_min_ratio"] = group_min_ratio(counts, inst.group, kept)
    return out


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------
def run_one(inst: Instance, method: str, ratio: float, q: int, options: dict) -> dict:
    res = ap.prune(
        inst.tokens,
        inst.cu,
        inst.query,
        keep_ratio=ratio,
        method=method,
        min_per_image=q,
        **options,
    )
    budget = int(math.floor(ratio * inst.tokens.shape[0] + 0.5))
    return instance_metrics(inst, res.indices, budget, q)


def evaluate(
    instances: list[Instance],
    method: str,
    ratios,
    q: int = 1,
    options: Optional[dict] = None,
    seeds=RANDOM_SEEDS,
) -> dict:
    """``{(split, scenario, ratio): {metric: mean over instances (and seeds)}}`` plus, under the
    key ``(split, scenario, ratio, "cells")``, the per-instance metric dicts."""
    options = dict(options or {})
    out = {}
    for ratio in ratios:
        cells = defaultdict(list)
        for inst in instances:
            if method == "random" and "seed" not in options:
                runs = [run_one(inst, method, ratio, q, {"seed": s}) for s in seeds]
                m = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
            else:
                m = run_one(inst, method, ratio, q, options)
            cells[(inst.split, inst.scenario)].append((inst.key, m))
        for (split, scen), ms in cells.items():
            keys = sorted({k for _, m in ms for k in m})
            agg = {k: float(np.mean([m[k] for _, m in ms if k in m])) for k in keys}
            agg["n_instances"] = len(ms)
            out[(split, scen, ratio)] = agg
            out[(split, scen, ratio, "cells")] = ms
    return out


def cell_score(m: dict, r: dict) -> float:
    """Log-score of one (instance, ratio) cell against the reference ``r``: the mean of the
    *geometry* objective ``(log(r.cov / m.cov) + log(r.kc / m.kc)) / 2`` and, in query cells,
    the *query* objective ``log(m.recall / r.recall)`` (so a query cell gives half its weight
    to the query and half to the rest of the context). Positive: better than ``r``."""

    def lg(a: float, b: float) -> float:
        return math.log(max(a, 1e-12) / max(b, 1e-12))

    geo = 0.5 * (lg(r["coverage"], m["coverage"]) + lg(r["kcenter"], m["kcenter"]))
    if "attn_recall" not in m:
        return geo
    return 0.5 * (geo + lg(m["attn_recall"], r["attn_recall"]))


def quality_index(res: dict, ref: dict, split: str, scenario: Optional[str] = None) -> float:
    """``exp`` of the mean :func:`cell_score` over the split's (instance, keep ratio) cells
    (of one scenario when given): above 1 means better than ``ref`` (a geometric-mean ratio)."""
    logs = []
    for key, cells in res.items():
        if len(key) != 4 or key[0] != split or (scenario and key[1] != scenario):
            continue
        ref_cells = dict(ref[key])
        logs += [cell_score(m, ref_cells[inst_key]) for inst_key, m in cells]
    return math.exp(float(np.mean(logs))) if logs else float("nan")


# --------------------------------------------------------------------------------------------
# Conditions, CSV, tables, plots
# --------------------------------------------------------------------------------------------
def conditions(instances: list[Instance]) -> dict:
    env = H.conditions()
    return {
        **{k: env[k] for k in ("date", "git_commit", "machine", "cpu", "torch", "triton")},
        "threads": torch.get_num_threads(),
        "backend": backends.serving("greedy_select", "cpu")[0],
        "dtype": "float32 (stored float16)",
        "dim": int(instances[0].tokens.shape[1]) if instances else 0,
        "data": DATA.name,
        "tau": TAU,
    }


CSV_FIELDS = (
    "date git_commit machine cpu threads torch triton backend dtype dim data tau "
    "split scenario n_instances tokens images method options keep_ratio min_per_image "
    "metric value"
).split()


def csv_rows(cond: dict, instances, method: str, options: dict, q: int, res: dict) -> list[dict]:
    shapes = defaultdict(list)
    for inst in instances:
        shapes[(inst.split, inst.scenario)].append(inst)
    rows = []
    for key, agg in res.items():
        if len(key) != 3:
            continue
        split, scen, ratio = key
        insts = shapes[(split, scen)]
        for metric, value in agg.items():
            if metric == "n_instances":
                continue
            rows.append(
                {
                    **cond,
                    "split": split,
                    "scenario": scen,
                    "n_instances": agg["n_instances"],
                    "tokens": "/".join(str(i.tokens.shape[0]) for i in insts),
                    "images": "/".join(str(len(i.counts)) for i in insts),
                    "method": method,
                    "options": ";".join(f"{k}={v}" for k, v in sorted(options.items())),
                    "keep_ratio": ratio,
                    "min_per_image": q,
                    "metric": metric,
                    "value": f"{value:.6g}",
                }
            )
    return rows


def append_csv(path: Path, rows: list[dict]) -> None:
    H.append_csv(path, rows, CSV_FIELDS)


def _fmt(v: Optional[float], metric: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.4f}" if metric in ("coverage", "needle_cov") else f"{v:.3f}"


def metric_table(
    results: dict, methods, split: str, metric: str, ratios, scenarios=SCENARIOS
) -> str:
    """Markdown: rows = methods, columns = scenario @ keep ratio; best per column in bold."""
    cols = [
        (s, r)
        for s in scenarios
        for r in ratios
        if any(metric in results[m].get((split, s, r), {}) for m in methods)
    ]
    if not cols:
        return ""
    head = "| method | " + " | ".join(f"{s} {int(round(r * 100))}%" for s, r in cols) + " |"
    sep = "|---|" + "---:|" * len(cols)
    best = {}
    for c in cols:
        vals = [results[m][(split, *c)].get(metric) for m in methods]
        vals = [v for v in vals if v is not None]
        best[c] = (min if metric in LOWER_BETTER else max)(vals) if vals else None
    lines = [head, sep]
    for m in methods:
        cells = []
        for c in cols:
            v = results[m][(split, *c)].get(metric)
            s = _fmt(v, metric)
            cells.append(f"**{s}**" if v is not None and s == _fmt(best[c], metric) else s)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def readme_table(results: dict, methods, splits, ratio: float) -> str:
    """Compact markdown: rows = methods, columns = coverage and k-center of every scenario and
    attention recall of the query scenarios, at one keep ratio, for each split."""
    cols = []
    for s in SCENARIOS:
        cols += [(s, "coverage"), (s, "kcenter")]
        if s in ("needle", "retrieval"):
            cols.append((s, "attn_recall"))
    short = {"coverage": "cov", "kcenter": "k-ctr", "attn_recall": "recall"}
    lines = []
    for split in splits:
        head = "| method | " + " | ".join(f"{s} {short[m]}" for s, m in cols) + " |"
        lines += [
            f"Split `{split}`, keep {int(round(ratio * 100))}%:",
            "",
            head,
            "|---|" + "---:|" * len(cols),
        ]
        best = {}
        for s, m in cols:
            vals = [results[x][(split, s, ratio)][m] for x in methods]
            best[(s, m)] = _fmt((min if m in LOWER_BETTER else max)(vals), m)
        for x in methods:
            cells = []
            for s, m in cols:
                v = _fmt(results[x][(split, s, ratio)][m], m)
                cells.append(f"**{v}**" if v == best[(s, m)] else v)
            lines.append(f"| {x} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def losses(results: dict, methods, split: str, ratios, rel: float = 0.02) -> list[str]:
    """Where the best baseline beats ``adaptive`` by more than ``rel`` (relative) on a ranked
    metric."""
    out = []
    for s in SCENARIOS:
        for r in ratios:
            key = (split, s, r)
            a = results["adaptive"].get(key, {})
            for metric in RANKED:
                if metric not in a:
                    continue
                lower = metric in LOWER_BETTER
                cand = [(results[m][key][metric], m) for m in methods if m != "adaptive"]
                if not cand:
                    continue
                bv, bm = (min if lower else max)(cand)
                worse = a[metric] > bv * (1 + rel) if lower else a[metric] < bv * (1 - rel)
                if worse:
                    out.append(
                        f"{split} {s} {int(round(r * 100))}% {metric}: adaptive "
                        f"{_fmt(a[metric], metric)} vs {bm} {_fmt(bv, metric)}"
                    )
    return out


def plot(results: dict, methods, split: str, ratios, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    metrics = ("coverage", "kcenter", "attn_recall", "needle_cov")
    fig, axes = plt.subplots(len(metrics), len(SCENARIOS), figsize=(16, 13), squeeze=False)
    for i, metric in enumerate(metrics):
        for j, s in enumerate(SCENARIOS):
            ax = axes[i][j]
            drawn = False
            for m in methods:
                ys = [results[m].get((split, s, r), {}).get(metric) for r in ratios]
                if any(y is None for y in ys):
                    continue
                style = dict(lw=2.5, color="black") if m == "adaptive" else dict(lw=1.2)
                ax.plot([100 * r for r in ratios], ys, marker="o", ms=3, label=m, **style)
                drawn = True
            if not drawn:
                ax.text(
                    0.5, 0.5, "n/a (no query)", ha="center", va="center", transform=ax.transAxes
                )
                ax.set_xticks([])
                ax.set_yticks([])
            else:
                ax.set_xscale("log")
                if metric in LOWER_BETTER:
                    ax.set_yscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())
                ax.set_xticks([100 * r for r in ratios])
                ax.set_xticklabels([f"{100 * r:g}" for r in ratios])
            if i == 0:
                ax.set_title(s)
            if j == 0:
                arrow = "lower is better" if metric in LOWER_BETTER else "higher is better"
                ax.set_ylabel(f"{metric}\n({arrow})")
            if i == len(metrics) - 1:
                ax.set_xlabel("keep ratio (%)")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(
        f"Quality proxies on real DINOv2-S/14 patch tokens, split '{split}' "
        "(proxies, not LMM accuracy)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# Ablation
# --------------------------------------------------------------------------------------------
def ablation_grid(defaults: dict) -> list[tuple[str, dict]]:
    """One knob at a time around the current defaults (name, options), plus the METHOD.md
    starting point."""
    v1 = {"gamma": 6.0, "refine": 0, "group_dist": 2.0, "group_size": 1024, "aligned": 0.0}
    g = [("default", {}), ("v1 (one chain per request, gamma=6, no refine)", v1)]
    for v in (0.02, 0.1, 0.2):
        g.append((f"sigma={v}", {"sigma": v}))
    for v in (0.0, 3.0, 8.0, 16.0):
        g.append((f"lam={v}", {"lam": v}))
    for v in (1.5, 3.0, 4.5, 8.0):
        g.append((f"gamma={v}", {"gamma": v}))
    for v in (0.0, 2.0):
        g.append((f"beta={v}", {"beta": v}))
    for v in (5.0, 20.0):
        g.append((f"tau_a={v}", {"tau_a": v}))
    for v in (0.9, 0.95):
        g.append((f"tau={v}", {"tau": v}))
    g.append(("intra=maxsum", {"intra": "maxsum"}))
    g.append(("align=max", {"align": "max"}))
    g.append(("inter_image=False", {"inter_image": False}))
    g.append(("selection=weighted", {"selection": "weighted"}))
    for k in (0.0, 0.25, 0.75):
        g.append((f"diversity_floor={k}", {"diversity_floor": k}))
    for v in (0.0, 0.5, 2.0):
        g.append((f"aligned={v}", {"aligned": v}))
    for v in (0.0, 0.3, 2.0):  # 2.0: every image of a request in one group (v1's single chain)
        g.append((f"group_dist={v}", {"group_dist": v}))
    for v in (1, 2, 8):
        g.append((f"group_size={v}", {"group_size": v}))
    for v in (0, 2):
        g.append((f"refine={v}", {"refine": v}))
    # drop variants equal to the defaults
    return [(n, o) for n, o in g if not o or any(defaults.get(k) != v for k, v in o.items())]


SEARCH_SPACE = {
    "lam": (0.0, 1.0, 2.0, 3.0, 5.0, 8.0, 12.0, 16.0, 20.0, 50.0, 100.0, 1e6),
    "gamma": (1.0, 1.5, 2.0, 3.0, 4.5, 6.0, 8.0, 10.0),
    "beta": (0.0, 0.5, 1.0, 2.0, 3.0),
    "sigma": (0.02, 0.05, 0.1, 0.2),
    "tau_a": (5.0, 10.0, 20.0),
    "tau": (None, 0.9, 0.95),
    "intra": ("maxmin", "maxsum"),
    "align": ("mean", "max"),
    "inter_image": (True, False),
    "selection": ("pareto", "weighted"),
    # method v2 (docs/METHOD.md): diversity floor, aligned candidates, groups, refinement
    "diversity_floor": (0.0, 0.25, 0.5, 0.75),
    "aligned": (0.0, 0.5, 1.0, 2.0),
    "group_dist": (0.0, 0.05, 0.15, 0.3, 2.0),
    "group_size": (1, 2, 4, 8),
    "refine": (0, 1, 2),
}
# the values docs/METHOD.md writes down (method v2); v1's search started from lam=3, gamma=1.5
# without the v2 options (its trail: docs/quality.md)
METHOD_MD_START = {
    "sigma": 0.05,
    "lam": 12.0,
    "tau_a": 10.0,
    "beta": 1.0,
    "gamma": 1.5,
    "tau": None,
    "intra": "maxmin",
    "align": "mean",
    "inter_image": True,
    "selection": "pareto",
    "diversity_floor": 0.5,
    "aligned": 1.0,
    "group_dist": 0.15,
    "group_size": 4,
    "refine": 1,
}


def coordinate_search(instances, ref, ratios, start=METHOD_MD_START, min_gain=0.01, log=print):
    """The tuning rule, on the ``tune`` instances only: from ``start``, evaluate every single
    change in :data:`SEARCH_SPACE`; adopt the best one if it raises Q by more than ``min_gain``
    (relative; smaller gains are within what 6 instances can resolve); repeat until none does.
    Returns the options and the trail ``[(change, Q)]``."""
    cache = {}

    def q_of(opts):
        key = tuple(sorted(opts.items(), key=lambda kv: kv[0]))
        if key not in cache:
            res = evaluate(instances, "adaptive", ratios, options=opts)
            cache[key] = quality_index(res, ref, "tune")
        return cache[key]

    cur = dict(start)
    best_q = q_of(cur)
    trail = [("start (METHOD.md)", best_q)]
    log(f"search start Q={best_q:.4f}")
    while True:
        cand = []
        for k, vals in SEARCH_SPACE.items():
            for v in vals:
                if v == cur[k]:
                    continue
                q = q_of({**cur, k: v})
                cand.append((q, k, v))
                log(f"  {k}={v}: Q={q:.4f}")
        q, k, v = max(cand, key=lambda c: c[0])
        if q <= best_q * (1 + min_gain):
            log(f"stop: best single change {k}={v} gives Q={q:.4f} (<= {1 + min_gain:g} x)")
            trail.append((f"stop (best remaining: {k}={v}, Q {q:.4f})", best_q))
            return cur, trail
        cur[k] = v
        best_q = q
        trail.append((f"{k}={v}", q))
        log(f"adopt {k}={v}: Q={q:.4f}")


def summarise(res: dict, split: str) -> dict:
    """Means over the split's scenarios and ratios of the ranked metrics."""
    out = {}
    for metric in ("coverage", "kcenter", "attn_recall", "needle_cov"):
        vals = [a[metric] for k, a in res.items() if len(k) == 3 and k[0] == split and metric in a]
        out[metric] = float(np.mean(vals)) if vals else float("nan")
    return out


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: few cases, writes nothing")
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--ratios", nargs="+", type=float, default=list(RATIOS))
    p.add_argument("--splits", nargs="+", default=["tune", "holdout"])
    p.add_argument("--skip-ablation", action="store_true")
    p.add_argument(
        "--search",
        action="store_true",
        help="run the tuning rule (coordinate search on the tune split) and print its trail",
    )
    p.add_argument("--skip-starvation", action="store_true")
    p.add_argument("--out", type=Path, default=None, help=f"results folder (default {RESULTS})")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out_dir = args.out if args.out is not None else (None if args.quick else RESULTS)
    unknown = sorted(set(args.methods) - set(ap.METHODS))
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; available: {sorted(ap.METHODS)}")

    instances = load_instances(splits=tuple(args.splits))
    ratios = tuple(args.ratios)
    seeds = RANDOM_SEEDS
    if args.quick:
        seen, keep = set(), []
        for inst in instances:
            if (inst.split, inst.scenario) not in seen:
                seen.add((inst.split, inst.scenario))
                keep.append(inst)
        instances, ratios, seeds = keep, (0.10, 0.25), (0,)
        args.skip_ablation = args.skip_starvation = True
    cond = conditions(instances)
    print(f"# Quality benchmark ({len(instances)} instances, ratios {ratios})")
    print(f"conditions: {cond}\n")

    t0 = time.perf_counter()
    results, rows = {}, []
    for m in args.methods:
        t = time.perf_counter()
        results[m] = evaluate(instances, m, ratios, q=1, seeds=seeds)
        rows += csv_rows(cond, instances, m, {}, 1, results[m])
        print(f"  {m}: {time.perf_counter() - t:.1f} s", flush=True)

    starve = {}
    if not args.skip_starvation:
        for m in args.methods:
            starve[m] = evaluate(instances, m, (0.05, 0.10), q=0, seeds=seeds)
            rows += csv_rows(cond, instances, m, {}, 0, starve[m])
        print(f"  starvation pass done ({time.perf_counter() - t0:.1f} s)", flush=True)

    md = [
        "# Quality benchmark results",
        "",
        "Proxies computed on real DINOv2-S/14 patch tokens (`benchmarks/data/bench_tokens.npz`), "
        "**not LMM accuracy**. Generated by `benchmarks/quality.py`; conditions: "
        f"commit {cond['git_commit']}, torch {cond['torch']}, backend {cond['backend']}, "
        f"{cond['cpu']}, {cond['threads']} threads. min_per_image=1, attention temperature "
        f"{TAU:g}. Values are means over the instances of each scenario (1-2 per split); "
        "`random` is also averaged over seeds "
        f"{list(seeds)}. Best per column in bold.",
    ]
    md += [
        "",
        "## Summary (README-ready)",
        "",
        "cov = coverage, k-ctr = k-center (lower is better); recall = attention recall of "
        "the query (higher is better).",
        "",
    ]
    for ratio in (0.10, 0.25):
        if ratio in ratios:
            md += [readme_table(results, args.methods, args.splits, ratio)]
    for split in args.splits:
        md += ["", f"## Split `{split}`", ""]
        for metric in (
            "coverage",
            "kcenter",
            "attn_recall",
            "attn_recall_dot",
            "needle_keep",
            "needle_cov",
            "group_min_ratio",
            "photo_share",
        ):
            arrow = "lower" if metric in LOWER_BETTER else "higher"
            tbl = metric_table(results, args.methods, split, metric, ratios)
            if tbl:
                rank = f" ({arrow} is better)" if metric in RANKED else ""
                md += [f"### {metric}{rank}", "", tbl, ""]
        if starve:
            md += ["### starved images with min_per_image=0 (images left with no token)", ""]
            md += [metric_table(starve, args.methods, split, "starved", (0.05, 0.10)), ""]
        valid = all(
            a.get("valid", 1.0) == 1.0
            for m in args.methods
            for k, a in list(results[m].items()) + list(starve.get(m, {}).items())
            if len(k) == 3
        )
        md += [
            f"Validity (exact B, unique, sorted, minimums) of every output: "
            f"{'all valid' if valid else 'SOME INVALID'}.",
            "",
        ]
        if "adaptive" in results:
            lost = losses(results, args.methods, split, ratios)
            md += ["### Where adaptive loses (best baseline better by more than 2%)", ""]
            md += [f"- {x}" for x in lost] or ["- nowhere"]
            md += [""]

    abl_md = []
    if not args.skip_ablation and "adaptive" in args.methods:
        from adaptive_prune.methods.adaptive import OPTIONS

        defaults = {k: v[0] for k, v in OPTIONS.items()}
        ref_name = "divprune_pooled"
        ref = results.get(ref_name) or evaluate(instances, ref_name, ratios, seeds=seeds)
        abl_rows = []
        abl_md = [
            "## Ablation of the adaptive method's defaults",
            "",
            f"Current defaults: {defaults}. One option changed at a time. Q = geometric-mean "
            f"ratio against `{ref_name}` over the (instance, keep ratio) cells: per cell, "
            "geometry = mean of the coverage and k-center ratios, and in query cells the "
            "score is the mean of geometry and the attention-recall ratio (see "
            f"`cell_score`); Q > 1 beats {ref_name}. Per-scenario Q and means over scenarios "
            f"and ratios {list(ratios)} alongside. Tuning decisions use the `tune` columns "
            "only.",
            "",
            "| variant | Q tune | near_dup | needle | mixed | retrieval | cov | kc | recall "
            "| Q holdout | near_dup | needle | mixed | retrieval | cov | kc | recall |",
            "|---|" + "---:|" * 16,
        ]
        for name, opts in ablation_grid(defaults):
            t = time.perf_counter()
            opts = dict(opts)
            if not opts:
                res = results["adaptive"]
            else:
                res = evaluate(instances, "adaptive", ratios, options=opts)
            cells = []
            for s in ("tune", "holdout"):
                if s not in args.splits:
                    cells += ["–"] * 8
                    continue
                sm = summarise(res, s)
                qs = quality_index(res, ref, s)
                per = [quality_index(res, ref, s, scenario=sc) for sc in SCENARIOS]
                cells += [f"{qs:.4f}"] + [f"{v:.3f}" for v in per]
                cells += [
                    f"{sm['coverage']:.4f}",
                    f"{sm['kcenter']:.4f}",
                    f"{sm['attn_recall']:.4f}",
                ]
                base = {
                    **cond,
                    "split": s,
                    "scenario": "all",
                    "n_instances": "",
                    "tokens": "",
                    "images": "",
                    "method": "adaptive",
                    "options": name,
                    "keep_ratio": "all",
                    "min_per_image": 1,
                }
                for metric, v in sm.items():
                    abl_rows.append({**base, "metric": metric, "value": f"{v:.6g}"})
                abl_rows.append({**base, "metric": f"Q_vs_{ref_name}", "value": f"{qs:.6g}"})
                for sc, v in zip(SCENARIOS, per):
                    abl_rows.append(
                        {**base, "scenario": sc, "metric": f"Q_vs_{ref_name}", "value": f"{v:.6g}"}
                    )
            abl_md.append(f"| {name} | " + " | ".join(cells) + " |")
            print(abl_md[-1], f"({time.perf_counter() - t:.1f} s)", flush=True)
        abl_md.append("")
        baseline_q = [
            "",
            "Baselines on the same index (for scale):",
            "",
            "| method | Q tune | Q holdout |",
            "|---|---:|---:|",
        ]
        for m in args.methods:
            baseline_q.append(
                f"| {m} | {quality_index(results[m], ref, 'tune'):.4f} | "
                f"{quality_index(results[m], ref, 'holdout'):.4f} |"
                if "tune" in args.splits and "holdout" in args.splits
                else f"| {m} | | |"
            )
        abl_md += baseline_q + [""]
        if out_dir is not None:
            append_csv(out_dir / "quality_ablation.csv", abl_rows)

    if args.search:
        tune = [i for i in instances if i.split == "tune"]
        ref = results.get("divprune_pooled") or evaluate(instances, "divprune_pooled", ratios)
        best, trail = coordinate_search(tune, ref, ratios)
        abl_md += [
            "## Tuning rule: coordinate search on the tune split",
            "",
            "| step | Q tune |",
            "|---|---:|",
        ]
        abl_md += [f"| {name} | {q:.4f} |" for name, q in trail]
        abl_md += ["", f"Result: {best}", ""]

    md += [""] + abl_md
    md += [f"Total benchmark time: {time.perf_counter() - t0:.0f} s."]
    text = "\n".join(md)
    print()
    print(text)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        append_csv(out_dir / "quality.csv", rows)
        (out_dir / "quality.md").write_text(text + "\n")
        if not args.no_plot:
            for split in args.splits:
                plot(results, args.methods, split, ratios, out_dir / f"quality_{split}.png")
        print(f"\nwrote {out_dir}/quality.csv, quality.md, quality_*.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
