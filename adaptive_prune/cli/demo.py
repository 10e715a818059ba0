"""``python -m adaptive_prune demo``: the method on the bundled real tokens.

Runs :func:`adaptive_prune.prune` on the fixture (real DINOv2-S/14-derived patch tokens of 13
public-domain/CC0 photos, textures and documents at two resolutions), prints a per-image table
(tokens, kept, kept %, D_intra, multiplicity, and the query relevance when a query is given)
and the time taken, and writes a PNG that shows every image with its kept patches highlighted.
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
    p.add_argument(
        "--min-per-image",
        type=_minimums,
        default=1,
        metavar="Q[,Q...]",
        help="per-image minimum: one int for every image, or one per image separated by commas "
        "(e.g. to protect a document page; default 1)",
    )
    p.add_argument(
        "--out",
        default="adaptive_prune_demo.png",
        metavar="FILE.png",
        help="where to write the picture (default ./adaptive_prune_demo.png)",
    )
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")


def _minimums(text: str):
    try:
        vals = [int(v) for v in text.split(",")]
    except ValueError:
        msg = f"expected an int or comma-separated ints, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    return vals[0] if len(vals) == 1 and "," not in text else vals


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
        d_intra, mult, att, *_ = reference.budget_scores(
            vision,
            cu,
            torch.tensor([0, len(names)]),
            text,
            torch.tensor([0, text.shape[0]]) if text is not None else None,
            0.05,
            10.0,
            1e-6,
        )
    else:
        d_intra, mult, att = diag.d_intra, diag.mult, diag.att
    counts = (cu[1:] - cu[:-1]).tolist()
    kept = res.per_image.tolist()

    query = "chelsea (other view)" if args.query else "none"
    title = f"method={args.method}  keep_ratio={args.keep}  query={query}"
    print(title)
    rel = f"{'query rel.':>11}" if args.query else ""
    print(
        f"{'image':<22}{'kind':<10}{'tokens':>7}{'kept':>6}{'kept %':>8}{'D_intra':>9}{'mult':>7}"
        + rel
    )
    for k, name in enumerate(names):
        share = f"{float(att[k]):>11.3f}" if args.query else ""
        print(
            f"{name:<22}{kinds[k]:<10}{counts[k]:>7}{kept[k]:>6}"
            f"{100.0 * kept[k] / max(counts[k], 1):>7.1f}%{float(d_intra[k]):>9.3f}"
            f"{float(mult[k]):>7.2f}{share}"
        )
    total = sum(counts)
    print(
        f"{'total':<22}{'':<10}{total:>7}{res.indices.numel():>6}"
        f"{100.0 * res.indices.numel() / total:>7.1f}%"
    )
    if diag is not None:
        print(
            f"D_inter={diag.d_inter:.3f}  rho={diag.rho:.3f}  groups of similar images="
            f"{diag.groups}  chain length={diag.chain_length}"
        )
    if args.query:
        print("query rel. = the image's share of the query's attention (att_k)")
    print(
        f"time: {ms:.1f} ms for prune() on {total} tokens x {vision.shape[1]} dims, "
        f"{len(names)} images, device={dev}, threads={torch.get_num_threads()}"
    )

    out = Path(args.out)
    draw(fx, res.mask.cpu().numpy(), out, title)
    print(f"wrote {out}")
    return 0


def draw(fx: dict, mask: np.ndarray, out: Path, title: str) -> None:
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
        d.text((x, y + side + 4), label, fill=(0, 0, 0))
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
