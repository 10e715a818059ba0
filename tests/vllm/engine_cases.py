"""One vLLM engine configuration against transformers, run as a subprocess by test_engine.py.

Usage: ``python tests/vllm/engine_cases.py CASE MODEL_DIR OUT_JSON``

Each case starts one ``vllm.LLM`` (CPU, fp32, eager) on the tiny checkpoint, runs its requests
with ``max_tokens=1`` and top-5 logprobs, and writes a JSON report. For every pruned request the
reference is transformers running the same checkpoint on the same prompt with exactly the kept
visual rows (recorded by the plugin through ``ADAPTIVE_PRUNE_VLLM_RECORD``) at their original
M-RoPE positions, computed by transformers' own ``get_rope_index`` on the unpruned prompt.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

ARCH = "AdaptivePruneQwen2_5_VLForConditionalGeneration"
STOCK = "Qwen2_5_VLForConditionalGeneration"
PAD = {
    "image": "<|vision_start|><|image_pad|><|vision_end|>",
    "video": "<|vision_start|><|video_pad|><|vision_end|>",
}


def _prompt(parts: list[str], question: str) -> str:
    body = "".join(PAD[p] for p in parts)
    return f"<|im_start|>user\n{body}{question}<|im_end|>\n<|im_start|>assistant\n"


def _images(shapes, seed=0):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for h, w in shapes:
        # smooth random fields plus noise: images that differ in content and diversity
        base = rng.normal(size=(h // 14 + 1, w // 14 + 1, 3))
        up = np.kron(base, np.ones((14, 14, 1)))[:h, :w]
        img = 128 + 50 * up + rng.normal(0, 20, (h, w, 3))
        out.append(Image.fromarray(np.clip(img, 0, 255).astype("uint8")))
    return out


def _video(frames=4, h=112, w=140, fps=2.0, seed=5):
    import numpy as np

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (h, w, 3)).astype("float64")
    arr = np.stack([np.roll(base, 7 * i, axis=1) for i in range(frames)]).astype("uint8")
    meta = {
        "total_num_frames": frames,
        "fps": fps,
        "duration": frames / fps,
        "video_backend": "opencv",
        "frames_indices": list(range(frames)),
        "height": h,
        "width": w,
        "do_sample_frames": False,
    }
    return arr, meta


class Reference:
    """transformers Qwen2.5-VL on the same checkpoint (fp32, eager attention)."""

    def __init__(self, model_dir: str):
        import torch
        import transformers
        from transformers import AutoConfig, AutoProcessor

        torch.set_num_threads(1)
        self.proc = AutoProcessor.from_pretrained(model_dir)
        cls = {
            "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration,
            "qwen2_vl": transformers.Qwen2VLForConditionalGeneration,
        }[AutoConfig.from_pretrained(model_dir).model_type]
        self.model = cls.from_pretrained(
            model_dir, dtype=torch.float32, attn_implementation="eager"
        ).eval()

    def rope_index(self, enc):
        """transformers' own unpruned M-RoPE positions ``[3, 1, L]``."""
        kw = {}
        if self.model.config.model_type == "qwen2_5_vl":
            kw["second_per_grid_ts"] = enc.get("second_per_grid_ts")
        return self.model.model.get_rope_index(
            enc["input_ids"],
            enc["mm_token_type_ids"],
            image_grid_thw=enc.get("image_grid_thw"),
            video_grid_thw=enc.get("video_grid_thw"),
            **kw,
        )[0]

    def inputs(self, prompt, images=None, video=None):
        from transformers.video_utils import VideoMetadata

        kw = {}
        if images:
            kw["images"] = images
        if video is not None:
            arr, meta = video
            kw["videos"] = [arr]
            kw["video_metadata"] = [
                VideoMetadata(**{k: v for k, v in meta.items() if k != "do_sample_frames"})
            ]
            kw["do_sample_frames"] = False
        return self.proc(text=[prompt], return_tensors="pt", **kw)

    def run(self, enc, kept_by_item=None, compact=False):
        """Top logprobs of the next token with only ``kept_by_item`` visual rows (all rows when
        None), each at its original position. Returns (logprobs [V], pruned ids, positions)."""
        import torch

        m = self.model.model
        cfg = self.model.config
        ids = enc["input_ids"]
        with torch.no_grad():
            pos = self.rope_index(enc)
            emb = m.get_input_embeddings()(ids)
            feats = {}
            if "pixel_values" in enc:
                feats["image"] = list(
                    m.get_image_features(enc["pixel_values"], enc["image_grid_thw"]).pooler_output
                )
            if "pixel_values_videos" in enc:
                feats["video"] = list(
                    m.get_video_features(
                        enc["pixel_values_videos"], enc["video_grid_thw"]
                    ).pooler_output
                )
            tok = {"image": cfg.image_token_id, "video": cfg.video_token_id}
            keep = torch.ones(ids.shape[1], dtype=torch.bool)
            # items in prompt order: (modality, start, length)
            runs = []
            flat = ids[0].tolist()
            i = 0
            while i < len(flat):
                mod = next((k for k, v in tok.items() if flat[i] == v), None)
                if mod is None:
                    i += 1
                    continue
                j = i
                while j < len(flat) and flat[j] == tok[mod]:
                    j += 1
                runs.append((mod, i, j - i))
                i = j
            counters = {"image": 0, "video": 0}
            rows_by_item = []
            for k, (mod, start, length) in enumerate(runs):
                rows = feats[mod][counters[mod]]
                counters[mod] += 1
                assert rows.shape[0] == length
                emb[0, start : start + length] = rows
                rows_by_item.append(rows)
                if kept_by_item is not None:
                    mask = torch.zeros(length, dtype=torch.bool)
                    mask[torch.tensor(kept_by_item[k], dtype=torch.long)] = True
                    keep[start : start + length] = mask
            kept_pos = pos[:, :, keep]
            if compact:  # the wrong positions a naive pruner gives: 0..L-1 on every axis
                kept_pos = torch.arange(kept_pos.shape[-1]).view(1, 1, -1).expand(3, 1, -1)
            out = self.model.model.language_model(
                inputs_embeds=emb[:, keep], position_ids=kept_pos, use_cache=False
            )
            logits = self.model.lm_head(out.last_hidden_state[:, -1])
            lp = torch.log_softmax(logits.float(), -1)[0]
        return lp, ids[0, keep].tolist(), pos[:, 0, keep], runs, rows_by_item


def _llm(model_dir, arch, profile=False, **kw):
    """One engine. Memory profiling with dummy items (through the plugin's processor and
    model) runs only where ``profile`` is set, to keep the CI lane short."""
    from vllm import LLM

    args = dict(
        dtype="float32",
        enforce_eager=True,
        max_model_len=2048,
        limit_mm_per_prompt={"image": 4, "video": 1},
        hf_overrides={"architectures": [arch]},
        seed=0,
        gpu_memory_utilization=0.25,  # on the CPU backend: the share of RAM vLLM may reserve
        skip_mm_profiling=not profile,
    )
    args.update(kw)
    return LLM(model_dir, **args)


def _generate(llm, prompt, mm, kwargs=None, max_tokens=1):
    from vllm import SamplingParams

    req = {"prompt": prompt, "multi_modal_data": mm}
    if kwargs:
        req["mm_processor_kwargs"] = kwargs
    sp = SamplingParams(max_tokens=max_tokens, temperature=0.0, logprobs=5)
    o = llm.generate(req, sp, use_tqdm=False)[0]
    first = {int(t): float(lp.logprob) for t, lp in o.outputs[0].logprobs[0].items()}
    return {
        "prompt_ids": list(o.prompt_token_ids),
        "logprobs": first,
        "tokens": list(o.outputs[0].token_ids),
    }


def _records(path):
    if not Path(path).exists():
        return []
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _check_request(ref, enc, got, recs, budget_kr=None, min_per_image=1):
    """Compare one pruned vLLM request with transformers given the recorded selections."""
    import torch

    # records come in encoding order; put them in prompt order (per modality, order is kept)
    mods = [_modality_of(ref, t) for t in _item_tokens(ref, enc["input_ids"][0].tolist())]
    pools = {m: [r for r in recs if r["modality"] == m] for m in ("image", "video")}
    recs = [pools[m].pop(0) for m in mods]
    kept = [r["kept"] for r in recs]
    lp, ids, pos, runs, rows = ref.run(enc, kept)
    sizes = [length for _, _, length in runs]
    counts = [len(k) for k in kept]
    diff = max(abs(lp[t].item() - v) for t, v in got["logprobs"].items())
    lp_compact = ref.run(enc, kept, compact=True)[0]
    compact_diff = max(abs(lp_compact[t].item() - v) for t, v in got["logprobs"].items())
    # the kept rows' positions as the plugin computed them (item offsets + the item's start)
    pos_ok = True
    for (mod, start, _), rec in zip(runs, recs):
        off = torch.tensor(rec["offsets"])
        item_pos = ref.item_pos[(mod, start)][:, torch.tensor(rec["kept"], dtype=torch.long)]
        pos_ok &= bool(torch.equal(ref.item_base[(mod, start)][:, None] + off, item_pos))
    # independent re-run of the selection on transformers' encoder rows
    from adaptive_prune.integrations.vllm.selection import select_rows

    text = None
    if ref.text_ids is not None and len(ref.text_ids):
        text = ref.model.model.get_input_embeddings()(torch.tensor(ref.text_ids))
    resel = []
    for (mod, _, _), row, rec in zip(runs, rows, recs):
        t, h, w = rec["grid"]
        frames = [(h // 2) * (w // 2)] * t if mod == "video" else None
        with torch.no_grad():
            resel.append(select_rows(row, len(rec["kept"]), text, frames).tolist())
    return {
        "sizes": sizes,
        "counts": counts,
        "total": sum(counts),
        "expected_total": None
        if budget_kr is None
        else int(__import__("math").floor(budget_kr * sum(sizes) + 0.5)),
        "min_count": min(counts) if counts else 0,
        "prompt_ids_match": ids == got["prompt_ids"],
        "logprob_maxdiff": diff,
        "compact_positions_logprob_maxdiff": compact_diff,
        "positions_match": pos_ok,
        "reselect_match": resel == kept,
        "kept": kept,
    }


def _item_tokens(ref, flat):
    """The placeholder token of each item, in prompt order."""
    cfg = ref.model.config
    pads = {cfg.image_token_id, cfg.video_token_id}
    return [t for i, t in enumerate(flat) if t in pads and (i == 0 or flat[i - 1] != t)]


def _modality_of(ref, token):
    return "image" if token == ref.model.config.image_token_id else "video"


def _prepare_positions(ref, enc):
    """Unpruned positions from transformers' get_rope_index, per item: (start pos, [3, n])."""
    import torch

    ids = enc["input_ids"]
    pos = ref.rope_index(enc)
    tok = {ref.model.config.image_token_id: "image", ref.model.config.video_token_id: "video"}
    flat = ids[0].tolist()
    ref.item_pos, ref.item_base = {}, {}
    i = 0
    while i < len(flat):
        if flat[i] not in tok:
            i += 1
            continue
        j = i
        while j < len(flat) and flat[j] == flat[i]:
            j += 1
        ref.item_pos[(tok[flat[i]], i)] = pos[:, 0, i:j]
        # the item starts one past the vision-start token's position
        ref.item_base[(tok[flat[i]], i)] = torch.full((3,), int(pos[0, 0, i - 1]) + 1)
        i = j


def _text_ids(ref, prompt_ids):
    cfg = ref.model.config
    skip = set(ref.proc.tokenizer.all_special_ids)
    skip |= {cfg.image_token_id, cfg.video_token_id, cfg.vision_start_token_id}
    skip |= {cfg.vision_end_token_id}
    return [t for t in prompt_ids if t not in skip]


def run_case(case: str, model_dir: str) -> dict:
    record = tempfile.mktemp(suffix=".jsonl")
    os.environ["ADAPTIVE_PRUNE_VLLM_RECORD"] = record
    arch = ARCH
    if case == "qwen2_vl":  # the same code on Qwen2-VL: its own tiny checkpoint
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from tiny_model import build

        model_dir = str(build(tempfile.mkdtemp(), "qwen2_vl"))
        arch = "AdaptivePruneQwen2VLForConditionalGeneration"
    ref = Reference(model_dir)
    report: dict = {"case": case}

    def pruned(llm, prompt, mm, kwargs, images=None, video=None, text_aware=True):
        n0 = len(_records(record))
        got = _generate(llm, prompt, mm, kwargs)
        recs = _records(record)[n0:]
        enc = ref.inputs(prompt, images, video)
        _prepare_positions(ref, enc)
        if text_aware and kwargs.get("text_aware", True):
            ref.text_ids = _text_ids(ref, enc["input_ids"][0].tolist())
        else:
            ref.text_ids = None
        res = _check_request(ref, enc, got, recs, kwargs.get("keep_ratio"))
        res["num_records"] = len(recs)
        return res

    if case == "unpruned":
        imgs = _images([(112, 168), (224, 196)])
        prompt = _prompt(["image", "image"], "What is in this picture?")
        llm = _llm(model_dir, STOCK)
        stock = _generate(llm, prompt, {"image": imgs}, max_tokens=4)
        del llm
        enc = ref.inputs(prompt, imgs)
        lp, ids, *_ = ref.run(enc)
        report["stock_vs_hf"] = max(abs(lp[t].item() - v) for t, v in stock["logprobs"].items())
        report["stock_prompt_matches_hf"] = stock["prompt_ids"] == enc["input_ids"][0].tolist()
        llm = _llm(model_dir, ARCH, profile=True)
        ours = _generate(llm, prompt, {"image": imgs}, {"keep_ratio": 1.0}, max_tokens=4)
        report["keep1_identical"] = ours == stock
        report["keep1_prompt_len"] = len(ours["prompt_ids"])
        report["stock_prompt_len"] = len(stock["prompt_ids"])
    elif case == "multi_image":
        shapes = [(112, 168), (224, 224), (56, 252), (168, 112)]
        imgs = _images(shapes, seed=1)
        prompt = _prompt(["image"] * 4, "Compare the images.")
        llm = _llm(model_dir, ARCH)
        for mode in ("adaptive", "proportional"):
            kw = {"keep_ratio": 0.3, "prune_mode": mode, "text_aware": False}
            report[mode] = pruned(llm, prompt, {"image": imgs}, kw, images=imgs, text_aware=False)
    elif case == "qwen2_vl":
        imgs = _images([(168, 224), (112, 112)], seed=6)
        video = _video(seed=7)
        prompt = _prompt(["image", "video", "image"], "What happens here?")
        llm = _llm(model_dir, arch, enable_chunked_prefill=True, max_num_batched_tokens=16)
        kw = {"keep_ratio": 0.4}
        mm = {"image": imgs, "video": [video]}
        report["pruned"] = pruned(llm, prompt, mm, kw, images=imgs, video=video)
    elif case == "chunked":
        imgs = _images([(168, 224), (224, 168), (112, 112)], seed=2)
        prompt = _prompt(["image"] * 3, "Where is the rocket?")
        llm = _llm(
            model_dir,
            ARCH,
            enable_chunked_prefill=True,
            max_num_batched_tokens=16,
            enable_prefix_caching=False,
        )
        kw = {"keep_ratio": 0.4}
        report["pruned"] = pruned(llm, prompt, {"image": imgs}, kw, images=imgs)
    elif case == "video_image":
        imgs = _images([(112, 168)], seed=3)
        video = _video()
        prompt = _prompt(["video", "image"], "What happens in the video?")
        llm = _llm(model_dir, ARCH)
        kw = {"keep_ratio": 0.35, "prune_mode": "adaptive"}
        mm = {"image": imgs, "video": [video]}
        report["pruned"] = pruned(llm, prompt, mm, kw, images=imgs, video=video)
    elif case == "text_aware":
        imgs = _images([(224, 224)], seed=4)
        llm = _llm(model_dir, ARCH)
        for name, q in (("q1", "What color is the cat?"), ("q2", "How many objects are there?")):
            prompt = _prompt(["image"], q)
            report[name] = pruned(llm, prompt, {"image": imgs}, {"keep_ratio": 0.25}, images=imgs)
        # the first question again: the same prompt must reuse its own cache entry
        n0 = len(_records(record))
        again = _generate(
            llm, _prompt(["image"], "What color is the cat?"), {"image": imgs}, {"keep_ratio": 0.25}
        )
        report["repeat_new_records"] = len(_records(record)) - n0
        report["repeat_logprobs_equal"] = (
            again["logprobs"]
            == _generate(
                llm,
                _prompt(["image"], "What color is the cat?"),
                {"image": imgs},
                {"keep_ratio": 0.25},
            )["logprobs"]
        )
        # bad options: a clear error naming the argument, and the engine keeps serving
        errors = {}
        for kw in (
            {"keep_ratio": 0.0},
            {"keep_ratio": 1.5},
            {"prune_mode": "magic"},
            {"min_per_image": 0},
            {"keep_ratio": 0.01, "min_per_image": 2},
        ):
            try:
                _generate(llm, _prompt(["image"], "Hi"), {"image": imgs}, kw)
                errors[json.dumps(kw)] = None
            except Exception as exc:  # noqa: BLE001
                errors[json.dumps(kw)] = f"{type(exc).__name__}: {exc}"
        report["errors"] = errors
        report["after_errors_ok"] = bool(
            _generate(llm, _prompt(["image"], "Hi"), {"image": imgs}, {"keep_ratio": 0.5})["tokens"]
        )
    else:
        raise SystemExit(f"unknown case {case}")
    return report


def main() -> int:
    case, model_dir, out = sys.argv[1], sys.argv[2], sys.argv[3]
    report = run_case(case, model_dir)
    Path(out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
