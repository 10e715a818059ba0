"""``python -m adaptive_prune demo``: the method on the bundled real tokens.

Runs :func:`adaptive_prune.prune` on the fixture (real DINOv2-S/14-derived patch tokens of 13
public-domain/CC0 photos, textures and documents at two resolutions), prints a per-image table
(tokens, D_intra, multiplicity, budget, kept) and the time taken, and writes a PNG that shows
every image with its kept patches highlighted.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from ..api import prune
from ..data import load_fixture
from ..methods import METHODS
from ..ops import reference


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--keep",
        type=float,
        default=0.25,
        metavar="RATIO",
        help="keep ratio in (0, 1] (default 0.25)",
    )
    p.add_argument(
        "--method",
        default="adaptive",
        help=f"selection method (default adaptive; available: {sorted(METHODS)})",
    )
    p.add_argument(
        "--query",
        action="store_true",
        help="text-aware run: use the bundled exemplar query (a different view of "
        "the cat photo 'chelsea') as the text tokens",
    )
    p.add_argument("--min-per-image", type=int, default=1, help="per-image minimum (default 1)")
    p.add_argument(
        "--out",
        default="adaptive_prune_demo.png",
        metavar="FILE.png",
        help="where to write the picture (default ./adaptive_prune_demo.png)",
    )
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")


def run(args: argparse.Namespace) -> int:
    fx = load_fixture()
    dev = torch.device(args.device)
    vision = torch.from_numpy(fx["tokens"].astype(np.float32)).to(dev)
    cu = torch.from_numpy(fx["cu_seqlens"]).to(dev)
    text = torch.from_numpy(fx["query_tokens"].astype(np.float32)).to(dev) if args.query else None
    names, kinds = [str(s) for s in fx["names"]], [str(s) for s in fx["kind"]]

    kwargs = dict(keep_ratio=args.keep, method=args.method, min_per_image=args.min_per_image)
    prune(vision, cu, text, **kwargs)  # warm-up (first-call dispatch, lazy imports)
    t0 = time.perf_counter()
    res = prune(vision, cu, text, return_diagnostics=args.method == "adaptive", **kwargs)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    ms = (time.perf_counter() - t0) * 1e3

    diag = res.diagnostics
    if diag is None:  # baselines: show the same stage-0 scores for comparison
        d_intra, mult, *_ = reference.budget_scores(
            vision, cu, torch.tensor([0, len(names)]), None, None, 0.05, 10.0, 1e-6
        )
        budgets = None
    else:
        d_intra, mult, budgets = diag.d_intra, diag.mult, diag.budgets
    counts = (cu[1:] - cu[:-1]).tolist()
    kept = res.per_image.tolist()

    query = "chelsea (other view)" if args.query else "none"
    title = f"method={args.method}  keep_ratio={args.keep}  query={query}"
    print(title)
    print(
        f"{'image':<22}{'kind':<10}{'tokens':>7}{'D_intra':>9}{'mult':>7}"
        f"{'budget':>8}{'kept':>6}{'kept %':>8}"
    )
    for k, name in enumerate(names):
        bud = f"{int(budgets[k]):>8}" if budgets is not None else f"{'-':>8}"
        print(
            f"{name:<22}{kinds[k]:<10}{counts[k]:>7}{float(d_intra[k]):>9.3f}"
            f"{float(mult[k]):>7.2f}{bud}{kept[k]:>6}{100.0 * kept[k] / counts[k]:>7.1f}%"
        )
    total = sum(counts)
    print(
        f"{'total':<22}{'':<10}{total:>7}{'':>9}{'':>7}"
        f"{(diag.pool_size if diag else ''):>8}{res.indices.numel():>6}"
        f"{100.0 * res.indices.numel() / total:>7.1f}%"
    )
    if diag is not None:
        print(
            f"D_inter={diag.d_inter:.3f}  rho={diag.rho:.3f}  pool B1={diag.pool_size}  "
            f"candidates |C|={diag.candidates}  kept B={diag.budget}"
        )
    print(
        f"time: {ms:.1f} ms for prune() on {total} tokens x {vision.shape[1]} dims, "
        f"{len(names)} images, device={dev}, threads={torch.get_num_threads()}"
    )

    out = Path(args.out)
    draw(
        fx,
        res.mask.cpu().numpy(),
        out,
        title,
        budgets=None if budgets is None else [int(b) for b in budgets],
    )
    print(f"wrote {out}")
    return 0


def draw(fx: dict, mask: np.ndarray, out: Path, title: str, budgets=None) -> None:
    """One panel per image: kept patches at full brightness with a coloured outline, dropped
    patches dimmed, and a caption with the image name and kept/total counts."""
    from PIL import Image, ImageDraw

    thumbs, cu, grids = fx["thumbs"], fx["cu_seqlens"], fx["grid_hw"]
    n, side, pad, cap = len(thumbs), 224, 8, 30
    cols = min(5, n)
    rows = (n + cols - 1) // cols
    W, H = cols * (side + pad) + pad, rows * (side + pad + cap) + pad + 28
    canvas = Image.new("RGB", (W, H), (255, 255, 255))
    d = ImageDraw.Draw(canvas)
    d.text((pad, 8), title, fill=(0, 0, 0))
    for k in range(n):
        gh, gw = (int(v) for v in grids[k])
        keep = mask[cu[k] : cu[k + 1]].reshape(gh, gw)
        img = np.asarray(Image.fromarray(thumbs[k]).resize((side, side), Image.BICUBIC))
        ys = (np.arange(side) * gh // side)[:, None]
        xs = (np.arange(side) * gw // side)[None, :]
        lit = keep[ys, xs]
        shown = np.where(lit[..., None], img, (img * 0.25 + 20).astype(np.uint8))
        panel = Image.fromarray(shown.astype(np.uint8))
        pd = ImageDraw.Draw(panel)
        for r, c in zip(*np.nonzero(keep)):
            x0, y0 = c * side / gw, r * side / gh
            pd.rectangle([x0, y0, x0 + side / gw - 1, y0 + side / gh - 1], outline=(255, 200, 0))
        x, y = pad + (k % cols) * (side + pad), 28 + pad + (k // cols) * (side + pad + cap)
        canvas.paste(panel, (x, y))
        label = f"{fx['names'][k]}: {int(keep.sum())}/{gh * gw}"
        if budgets is not None:
            label += f" (b_k={budgets[k]})"
        d.text((x, y + side + 4), label, fill=(0, 0, 0))
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
