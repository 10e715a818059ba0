"""Small option grid for method v2 (issue 14): coverage, k-center and attention recall of
``adaptive`` with the given options, per split and keep ratio, averaged over the instances of
the given scenarios. Decisions use the ``tune`` columns; ``holdout`` is printed next to them.

Usage::

    python benchmarks/quality_v2_grid.py needle,retrieval '{"default": {}, "r0": {"refine": 0}}'

Prints one line per configuration: ``t10 cov kctr recall | h10 ... | t25 ... | h25 ...``
(``nan`` recall for scenarios without a query), 1 thread, the default backend. The v2 runs
are recorded in ``benchmarks/results/quality_v2_grid.md``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [p for p in (str(REPO), str(REPO / "benchmarks")) if p not in sys.path]

import quality as Q  # noqa: E402

import adaptive_prune as ap  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    inst = [i for i in Q.load_instances() if i.scenario in sys.argv[1].split(",")]
    for name, opts in json.loads(sys.argv[2]).items():
        cells = []
        for keep in (0.1, 0.25):
            for split in ("tune", "holdout"):
                cov, kc, rec = [], [], []
                for case in (i for i in inst if i.split == split):
                    k = ap.prune(case.tokens, case.cu, case.query, keep_ratio=keep, **opts).indices
                    cov.append(Q.coverage(case.tokens, k))
                    kc.append(Q.k_center(case.tokens, k))
                    if case.query is not None:
                        rec.append(Q.attention_recall(case.tokens, case.query, k))
                r = sum(rec) / len(rec) if rec else float("nan")
                cells.append(
                    f"{split[0]}{int(keep * 100)} {sum(cov) / len(cov):.4f} "
                    f"{sum(kc) / len(kc):.3f} {r:.3f}"
                )
        print(name, " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
