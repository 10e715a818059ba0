"""CPU time the vLLM plugin adds per request, and (with a server) throughput by concurrency.

Usage::

    python benchmarks/vllm_overhead.py                  # 16 images x 576 tokens, D = 3584
    python benchmarks/vllm_overhead.py --quick          # 4 images, 2 runs: smoke test
    python benchmarks/vllm_overhead.py --serve-url http://localhost:8000 --model M \\
        --image-url URL                                 # requests/s at concurrency 1, 8, 32

Part 1 (no vLLM needed) times the two steps the plugin adds, with the plugin's own functions:

* ``allocation`` (front end, per request): undo the patch flattening of every image's
  ``pixel_values`` (the processor's layout: 16 images of 672 x 672 px = 48 x 48 patches of 14 px,
  576 merged tokens), score each (region diversity, thumbnail), and split the budget
  (``adaptive``); ``proportional`` is the split alone.
* ``selection`` (model, per request): ``select_rows`` on each image's 576 encoder rows in turn,
  as ``embed_multimodal`` runs it, with and without the 43 prompt rows. The rows are the real
  DINOv2 tokens of ``speed_cpu.py`` lifted to D by a fixed orthogonal map.

For scale, ``prune (whole request)`` is one ``adaptive_prune.prune`` call over all 16 images
(what the Hugging Face integration runs). Rows append to ``benchmarks/results/vllm_overhead.csv``
with the conditions.

Part 2 (``--serve-url``) sends the same chat request (``--images`` copies of ``--image-url``)
to a running vLLM server at concurrency 1, 8 and 32, once with ``keep_ratio`` 1.0 and once with
``--keep``, and records requests per second. Run it against a server started with the plugin's
architecture on a GPU (docs/vllm.md); this project has not had one yet.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [p for p in (str(REPO), str(REPO / "benchmarks")) if p not in sys.path]

import _env  # noqa: E402
import speed_cpu  # noqa: E402

import adaptive_prune  # noqa: E402
from adaptive_prune import _ext  # noqa: E402
from adaptive_prune.integrations.vllm import allocation as al  # noqa: E402
from adaptive_prune.integrations.vllm import selection as sel  # noqa: E402

OUT = REPO / "benchmarks" / "results" / "vllm_overhead.csv"
FIELDS = [
    "date",
    "git_commit",
    "machine",
    "cpu",
    "torch",
    "ext",
    "threads",
    "load_avg_1min",
    "dtype",
    "dim",
    "images",
    "tokens_per_image",
    "text_rows",
    "keep_ratio",
    "row",
    "ms_median",
    "ms_min",
    "ms_max",
    "runs",
    "concurrency",
    "requests_per_s",
]


def patches(img: torch.Tensor, p: int = 14, tp: int = 2, m: int = 2) -> torch.Tensor:
    """One ``[C, H, W]`` image in the Qwen-VL processor's flattened patch layout."""
    c, h, w = img.shape
    gh, gw = h // p, w // p
    x = img[None].repeat(tp, 1, 1, 1).reshape(1, tp, c, gh // m, m, p, gw // m, m, p)
    return x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(gh * gw, c * tp * p * p)


def timed(fn, runs: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def part1(args) -> list[dict]:
    torch.set_num_threads(args.threads)
    x, _, query = speed_cpu.real_576(quick=args.quick)
    n_img = x.shape[0] // 576
    rows = speed_cpu.lift(x, args.dim)
    text = speed_cpu.lift(query, args.dim)
    g = torch.Generator().manual_seed(0)
    side = 48 * 14
    pix = []
    for _ in range(n_img):  # smooth random fields plus noise, in normalised units
        base = torch.randn(3, 7, 7, generator=g)
        img = torch.nn.functional.interpolate(base[None], size=(side, side), mode="bilinear")[0]
        pix.append(patches(img + 0.3 * torch.randn(3, side, side, generator=g)))
    grid = [1, 48, 48]
    sizes = [576] * n_img
    total = al.total_budget(sum(sizes), args.keep)

    def allocate_adaptive():
        divs, thumbs = [], []
        for pv in pix:
            d, t = al.item_signals(al.frames_from_patches(pv, grid, 14, 2, 2, stride=2))
            divs.append(d)
            thumbs.append(t)
        return al.allocate_counts(sizes, total, 1, al.adaptive_weights(sizes, divs, thumbs))

    counts = allocate_adaptive()
    items = [rows[k * 576 : (k + 1) * 576] for k in range(n_img)]
    cu = torch.arange(0, n_img + 1) * 576

    def select(t):
        return [sel.select_rows(r, c, t) for r, c in zip(items, counts)]

    runs = args.runs
    cases = [
        ("allocation: adaptive (front end)", allocate_adaptive),
        ("allocation: proportional (front end)", lambda: al.allocate_counts(sizes, total, 1)),
        ("selection, text-aware (model)", lambda: select(text)),
        ("selection, no text (model)", lambda: select(None)),
        (
            "prune (whole request, for scale)",
            lambda: adaptive_prune.prune(rows, cu, text, keep_ratio=args.keep),
        ),
    ]
    cond = {
        **_env.conditions(),
        "torch": torch.__version__,
        "ext": "built" if _ext.HAS_EXT else "missing",
        "threads": args.threads,
        "load_avg_1min": round(os.getloadavg()[0], 2),  # other jobs on the machine
        "dtype": "float32",
        "dim": args.dim,
        "images": n_img,
        "tokens_per_image": 576,
        "text_rows": text.shape[0],
        "keep_ratio": args.keep,
    }
    out = []
    for name, fn in cases:
        ms = timed(fn, runs)
        out.append(
            {
                **cond,
                "row": name,
                "ms_median": round(statistics.median(ms), 3),
                "ms_min": round(min(ms), 3),
                "ms_max": round(max(ms), 3),
                "runs": runs,
            }
        )
    return out


def _request(url: str, model: str, image_url: str, images: int, keep: float) -> None:
    content = [{"type": "image_url", "image_url": {"url": image_url}}] * images
    content = content + [{"type": "text", "text": "Describe the pictures."}]
    body = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 32,
        "temperature": 0.0,
        "mm_processor_kwargs": {"keep_ratio": keep},
    }
    req = urllib.request.Request(
        url.rstrip("/") + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=600) as r:
        r.read()


def part2(args) -> list[dict]:
    out = []
    cond = {**_env.conditions(), "torch": torch.__version__, "images": args.images}
    for keep in (1.0, args.keep):
        for conc in (1, 8, 32):
            n = max(2 * conc, 8)
            done = []
            lock = threading.Lock()
            todo = list(range(n))

            def worker(keep=keep, todo=todo, done=done, lock=lock):
                while True:
                    with lock:
                        if not todo:
                            return
                        todo.pop()
                    _request(args.serve_url, args.model, args.image_url, args.images, keep)
                    with lock:
                        done.append(1)

            _request(args.serve_url, args.model, args.image_url, args.images, keep)  # warm-up
            t0 = time.perf_counter()
            threads = [threading.Thread(target=worker) for _ in range(conc)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            rps = len(done) / (time.perf_counter() - t0)
            out.append(
                {
                    **cond,
                    "keep_ratio": keep,
                    "row": f"serve {args.model}",
                    "concurrency": conc,
                    "requests_per_s": round(rps, 3),
                    "runs": n,
                }
            )
            print(f"keep {keep}  concurrency {conc:>2}: {rps:.2f} requests/s")
    return out


def append(rows: list[dict]) -> None:
    new = not OUT.exists()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with open(OUT, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerows(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dim", type=int, default=3584)
    ap.add_argument("--keep", type=float, default=0.25)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="4 images, 2 runs, nothing written")
    ap.add_argument("--serve-url", default=None)
    ap.add_argument("--model", default=None)
    ap.add_argument("--image-url", default=None)
    ap.add_argument("--images", type=int, default=16)
    args = ap.parse_args(argv)
    if args.quick:
        args.runs = 2
    if args.serve_url:
        if not (args.model and args.image_url):
            ap.error("--serve-url needs --model and --image-url")
        rows = part2(args)
    else:
        rows = part1(args)
        print("| step | ms (median) | min-max |\n|---|---:|---:|")
        for r in rows:
            print(f"| {r['row']} | {r['ms_median']:.1f} | {r['ms_min']:.1f}-{r['ms_max']:.1f} |")
        c = rows[0]
        print(
            f"\n{c['images']} images x {c['tokens_per_image']} tokens, D = {c['dim']}, "
            f"keep {c['keep_ratio']}, {c['text_rows']} text rows, fp32, {c['threads']} thread(s), "
            f"{c['cpu']}, torch {c['torch']}, C++ extension {c['ext']}, commit {c['git_commit']}, "
            f"load average {c['load_avg_1min']}"
        )
    if not args.quick:
        append(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
