"""Prefill time and length of a Hugging Face VLM with and without visual-token pruning.

Random weights built from configs (nothing is downloaded). For every config it runs one plain
prefill (``model(**inputs, logits_to_keep=1)``, what ``generate`` does first) without the
integration, then with ``adaptive_prune.integrations.hf.attach`` at each keep ratio, and reports the
language model's prefill length, the whole prefill time (vision encoder included), the language
model's share and the pruning overhead (selection + gather, inside the LM pre-hook).

Configs:

- ``tiny``: the test-sized Qwen2.5-VL (hidden 64, 2 layers).
- ``qwen2_5_vl_7b``: Qwen2.5-VL-7B-Instruct widths (hidden 3584, MLP 18944, 28 heads / 4 KV,
  vocab 152064; vision 1280 wide). On a CPU only ``--layers`` LM layers (default 2 of 28) and
  ``--vision-layers`` vision blocks (default 2 of 32) are built; on CUDA the full depth. The
  table says which. Skipped when the weights would not fit in the available memory.

Usage::

    python benchmarks/hf_prefill.py                      # tiny + 7B widths, CPU
    python benchmarks/hf_prefill.py --configs tiny --ratios 1.0,0.5,0.25,0.1
    python benchmarks/hf_prefill.py --device cuda --dtype bf16   # full depth on a GPU

Appends one CSV row per (config, mode) to ``benchmarks/results/hf_prefill.csv``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [p for p in (str(ROOT), str(ROOT / "benchmarks")) if p not in sys.path]

import _harness as H  # noqa: E402  (run conditions)
import transformers  # noqa: E402

import adaptive_prune  # noqa: E402
import adaptive_prune.integrations.hf as aphf  # noqa: E402

IMG, VS, VE = 151655, 151652, 151653
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _config(name: str, layers: int, vision_layers: int, device: str):
    """(config, description, LM layers used / of, vision layers used / of)."""
    T = transformers
    if name == "tiny":
        text = dict(
            vocab_size=200,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            bos_token_id=1,
            eos_token_id=2,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [2, 3, 3],
            },
        )
        vision = dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=64,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            fullatt_block_indexes=[1],
        )
        cfg = T.Qwen2_5_VLConfig(
            text_config=text,
            vision_config=vision,
            image_token_id=190,
            video_token_id=191,
            vision_start_token_id=188,
            vision_end_token_id=189,
        )
        return cfg, (2, 2), (2, 2)
    if name == "qwen2_5_vl_7b":
        full_lm, full_vis = 28, 32
        n_lm = full_lm if device == "cuda" and not layers else (layers or 2)
        n_vis = full_vis if device == "cuda" and not vision_layers else (vision_layers or 2)
        text = dict(
            vocab_size=152064,
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=n_lm,
            num_attention_heads=28,
            num_key_value_heads=4,
            max_position_embeddings=128000,
            rms_norm_eps=1e-6,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 1000000.0,
                "mrope_section": [16, 24, 24],
            },
        )
        fullatt = [i for i in (7, 15, 23, 31) if i < n_vis] or [n_vis - 1]
        vision = dict(
            depth=n_vis,
            hidden_size=1280,
            intermediate_size=3420,
            num_heads=16,
            out_hidden_size=3584,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            fullatt_block_indexes=fullatt,
            tokens_per_second=2,
        )
        cfg = T.Qwen2_5_VLConfig(
            text_config=text,
            vision_config=vision,
            image_token_id=IMG,
            video_token_id=151656,
            vision_start_token_id=VS,
            vision_end_token_id=VE,
        )
        return cfg, (n_lm, full_lm), (n_vis, full_vis)
    raise SystemExit(f"unknown config {name!r}; choose from tiny, qwen2_5_vl_7b")


def _param_bytes(cfg, dtype) -> int:
    t, v = cfg.text_config, cfg.vision_config
    h, f, voc = t.hidden_size, t.intermediate_size, t.vocab_size
    kv = t.num_key_value_heads * (h // t.num_attention_heads)
    lm = 2 * voc * h + t.num_hidden_layers * (2 * h * h + 2 * h * kv + 3 * h * f)
    vis = v.depth * (4 * v.hidden_size**2 + 3 * v.hidden_size * v.intermediate_size)
    return (lm + vis) * torch.tensor([], dtype=dtype).element_size()


def _mem_available() -> int:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.mem_get_info()[0]
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def _inputs(cfg, images: int, image_px: int, text_tokens: int, device, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    vc = cfg.vision_config
    side = image_px // vc.patch_size
    side -= side % vc.spatial_merge_size
    n_tok = side * side // vc.spatial_merge_size**2
    pdim = 3 * vc.temporal_patch_size * vc.patch_size**2
    hi = 180 if cfg.text_config.vocab_size < 1000 else 150000  # below the special ids
    rnd = lambda k: torch.randint(3, hi, (k,), generator=g).tolist()
    img_id, vs, ve = cfg.image_token_id, cfg.vision_start_token_id, cfg.vision_end_token_id
    ids, tt = rnd(8), [0] * 8
    for _ in range(images):
        ids += [vs] + [img_id] * n_tok + [ve] + rnd(2)
        tt += [0] + [1] * n_tok + [0, 0, 0]
    ids += rnd(text_tokens)
    tt += [0] * text_tokens
    px = torch.randn(images * side * side, pdim, generator=g)
    return dict(
        input_ids=torch.tensor([ids], device=device),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=device),
        mm_token_type_ids=torch.tensor([tt], device=device),
        pixel_values=px.to(device, dtype),
        image_grid_thw=torch.tensor([[1, side, side]] * images, device=device),
    ), n_tok * images


class _Timer:
    """Times the LM pre-hook (pruning) and the LM forward via forward hooks."""

    def __init__(self, lm, sync):
        self.lm, self.sync, self.t = lm, sync, {}
        self.hooks = [
            lm.register_forward_pre_hook(self._mark("start"), prepend=True),
            lm.register_forward_hook(self._mark("end")),
        ]

    def after_attach(self):
        self.hooks.append(self.lm.register_forward_pre_hook(self._mark("lm")))

    def _mark(self, key):
        def hook(*_):
            self.sync()
            self.t[key] = time.perf_counter()

        return hook

    def remove(self):
        for h in self.hooks:
            h.remove()


def _once(model, inp, sync, ratio, method):
    """One timed prefill: (total ms, LM ms, pruning ms, pruned length, kept visual or None)."""
    lm = model.model.language_model
    timer = _Timer(lm, sync)
    handle = None
    try:
        if ratio is not None:
            handle = aphf.attach(model, keep_ratio=ratio, method=method)
            timer.after_attach()
        sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            model(**inp, logits_to_keep=1, use_cache=True)
        sync()
        t1 = time.perf_counter()
    finally:
        timer.remove()
        if handle is not None:
            handle.detach()
    lm_start = timer.t.get("lm", timer.t["start"])
    kept = handle.last_num_visual[0][1] if handle is not None else None
    lp = handle.last_seq_len[1] if handle is not None else inp["input_ids"].shape[1]
    return (
        1e3 * (t1 - t0),
        1e3 * (timer.t["end"] - lm_start),
        1e3 * (lm_start - timer.t["start"]),
        lp,
        kept,
    )


def _run(model, inp, reps, sync, ratios, method):
    """Round-robin over the modes (unmodified, then each ratio) so that a busy machine slows
    them alike; one warm-up round; medians of ``reps`` rounds."""
    modes = [None] + list(ratios)
    runs = {m: [] for m in modes}
    for rnd in range(reps + 1):
        for m in modes:
            res = _once(model, inp, sync, m, method)
            if rnd:
                runs[m].append(res)
    out = {}
    for m, rs in runs.items():
        out[m] = tuple(statistics.median(r[i] for r in rs) for i in range(3)) + rs[-1][3:]
    return out


def _machine(device) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{H.cpu_model()} ({os.cpu_count()} cpus)"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", default="tiny,qwen2_5_vl_7b")
    ap.add_argument("--ratios", default="1.0,0.5,0.25")
    ap.add_argument("--method", default="adaptive")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--image-px", type=int, default=448, help="square image side in pixels")
    ap.add_argument("--text-tokens", type=int, default=32)
    ap.add_argument("--layers", type=int, default=0, help="LM layers of the 7B config (0: auto)")
    ap.add_argument("--vision-layers", type=int, default=0)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    ap.add_argument("--csv", default=str(ROOT / "benchmarks" / "results" / "hf_prefill.csv"))
    ap.add_argument("--no-csv", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    ratios = [float(r) for r in args.ratios.split(",")]
    env = dict(
        date=dt.datetime.now().isoformat(timespec="seconds"),
        machine=_machine(device.type),
        device=device.type,
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        transformers=transformers.__version__,
        adaptive_prune=adaptive_prune.__version__,
        commit=H.git_commit(dirty="-dirty", missing="none"),
    )
    rows = []
    for name in args.configs.split(","):
        cfg, (n_lm, full_lm), (n_vis, full_vis) = _config(
            name, args.layers, args.vision_layers, device.type
        )
        need = _param_bytes(cfg, dtype)
        avail = _mem_available()
        if need > 0.8 * avail:
            print(
                f"# skipping {name}: weights need {need / 2**30:.1f} GiB, "
                f"{avail / 2**30:.1f} GiB available",
                file=sys.stderr,
            )
            continue
        torch.manual_seed(0)
        with torch.device(device):  # build in place, in the target dtype
            model = transformers.Qwen2_5_VLForConditionalGeneration._from_config(cfg, dtype=dtype)
        model.eval()
        inp, n_vis_tok = _inputs(cfg, args.images, args.image_px, args.text_tokens, device, dtype)
        seq = inp["input_ids"].shape[1]
        layers = f"{n_lm}/{full_lm} LM, {n_vis}/{full_vis} vision"
        base = dict(
            config=name,
            layers=layers,
            dtype=args.dtype,
            images=args.images,
            image_px=args.image_px,
            method="-",
            keep_ratio=1.0,
            seq_len=seq,
            visual_tokens=n_vis_tok,
            kept_visual=n_vis_tok,
        )
        res = _run(model, inp, args.reps, sync, ratios, args.method)
        ref_total, ref_lm = res[None][0], res[None][1]
        for r, (total, lm_ms, pr_ms, lp, kept) in res.items():
            row = dict(
                base,
                prefill_ms=total,
                lm_ms=lm_ms,
                prune_ms=pr_ms,
                speedup=ref_total / total,
                lm_speedup=ref_lm / lm_ms,
            )
            if r is None:
                row.update(mode="unmodified")
            else:
                row.update(
                    mode="pruned", method=args.method, keep_ratio=r, seq_len=lp, kept_visual=kept
                )
            rows.append(row)
        del model
    if not rows:
        raise SystemExit("nothing ran")
    cols = [
        "config",
        "layers",
        "mode",
        "method",
        "keep_ratio",
        "seq_len",
        "kept_visual",
        "prefill_ms",
        "lm_ms",
        "prune_ms",
        "speedup",
        "lm_speedup",
    ]
    print(
        f"\n{env['machine']}, {env['device']}, {env['threads']} threads, torch {env['torch']}, "
        f"transformers {env['transformers']}, {args.dtype}, {args.images} images of "
        f"{args.image_px}px + {args.text_tokens} text tokens, batch 1, "
        f"median of {args.reps} round-robin rounds\n"
    )
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        cells = [
            f"{row[c]:.1f}"
            if c.endswith("_ms")
            else f"{row[c]:.2f}x"
            if c.endswith("speedup")
            else str(row[c])
            for c in cols
        ]
        print("| " + " | ".join(cells) + " |")
    if not args.no_csv:
        path = Path(args.csv)
        path.parent.mkdir(parents=True, exist_ok=True)
        fields = list(env) + [
            "config",
            "layers",
            "dtype",
            "images",
            "image_px",
            "visual_tokens",
            "mode",
            "method",
            "keep_ratio",
            "seq_len",
            "kept_visual",
            "prefill_ms",
            "lm_ms",
            "prune_ms",
            "speedup",
            "lm_speedup",
        ]
        new = not path.exists()
        with path.open("a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
            if new:
                w.writeheader()
            for row in rows:
                w.writerow(
                    {
                        **env,
                        **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()},
                    }
                )
        print(f"\nappended {len(rows)} rows to {path}")


if __name__ == "__main__":
    main()
