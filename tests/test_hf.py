"""adaptive_prune.hf on tiny random-weight transformers models built from configs (no downloads).

The key proof is the oracle (test_oracle_*): a pruned run must equal the *unmodified* model
run with the dropped tokens masked out of attention and the original (M-)RoPE position ids
passed explicitly. Eager attention everywhere, fp32.
"""

from __future__ import annotations

import functools
import itertools
from types import SimpleNamespace

import pytest
import torch

transformers = pytest.importorskip("transformers")

import adaptive_prune  # noqa: E402
import adaptive_prune.integrations.hf as aphf  # noqa: E402
from adaptive_prune.integrations.hf import layout  # noqa: E402

TOL = 1e-5
V, PAD, BOS, EOS = 200, 0, 1, 2
IMG, VID, VS, VE = 190, 191, 188, 189
KINDS = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava_onevision"]
QWEN = KINDS[:3]


# ---------------------------------------------------------------------------- tiny models
def _qwen_text(**kw):
    d = dict(
        vocab_size=V,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
    )
    d.update(kw)
    return d


@functools.cache
def _build(kind: str, patch: int = 4):
    T = transformers
    torch.manual_seed(0)
    ids = dict(
        image_token_id=IMG, video_token_id=VID, vision_start_token_id=VS, vision_end_token_id=VE
    )
    vis = dict(patch_size=patch, spatial_merge_size=2, temporal_patch_size=2)
    if kind == "qwen2_vl":
        cfg = T.Qwen2VLConfig(
            text_config=_qwen_text(),
            vision_config=dict(
                depth=1, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, **vis
            ),
            **ids,
        )
        model = T.Qwen2VLForConditionalGeneration(cfg)
    elif kind == "qwen2_5_vl":
        cfg = T.Qwen2_5_VLConfig(
            text_config=_qwen_text(),
            vision_config=dict(
                depth=2,
                hidden_size=32,
                intermediate_size=64,
                num_heads=2,
                out_hidden_size=64,
                window_size=4 * patch,
                fullatt_block_indexes=[1],
                tokens_per_second=2,
                **vis,
            ),
            **ids,
        )
        model = T.Qwen2_5_VLForConditionalGeneration(cfg)
    elif kind == "qwen3_vl":
        text = _qwen_text(head_dim=16)
        text["rope_parameters"]["mrope_interleaved"] = True
        cfg = T.Qwen3VLConfig(
            text_config=text,
            vision_config=dict(
                depth=2,
                hidden_size=32,
                intermediate_size=64,
                num_heads=2,
                out_hidden_size=64,
                num_position_embeddings=64,
                deepstack_visual_indexes=[0, 1],
                **vis,
            ),
            **ids,
        )
        model = T.Qwen3VLForConditionalGeneration(cfg)
    else:
        cfg = T.LlavaOnevisionConfig(
            text_config=dict(
                model_type="qwen2",
                vocab_size=V,
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                pad_token_id=PAD,
                bos_token_id=BOS,
                eos_token_id=EOS,
            ),
            vision_config=dict(
                model_type="siglip_vision_model",
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=1,
                num_attention_heads=2,
                image_size=16,
                patch_size=4,
                vision_use_head=False,
            ),
            image_token_index=IMG,
            video_token_index=VID,
            image_grid_pinpoints=[[16, 16], [16, 32], [32, 16], [32, 32]],
            vision_feature_layer=-1,
            vision_feature_select_strategy="full",
        )
        model = T.LlavaOnevisionForConditionalGeneration(cfg)
    model.set_attn_implementation("eager")
    assert model.model.language_model.config._attn_implementation == "eager"
    return model.eval()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The models are tiny: one thread is fastest and immune to oversubscription."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def model(request):
    m = _build(request.param)
    yield m
    assert getattr(m, "_adaptive_prune_handle", None) is None, "a test left a handle attached"


# ---------------------------------------------------------------------------- inputs
def _qwen_inputs(model, samples, seed=0):
    """Left-padded batch. Items: ("image", h, w) / ("video", t, h, w) in patches (h, w even)."""
    g = torch.Generator().manual_seed(seed)
    vc = model.config.vision_config
    m2 = vc.spatial_merge_size**2
    pdim = 3 * vc.temporal_patch_size * vc.patch_size**2
    qwen3 = model.config.model_type == "qwen3_vl"
    rnd = lambda k: torch.randint(3, 150, (k,), generator=g).tolist()
    rows, img_px, img_grid, vid_px, vid_grid = [], [], [], [], []
    for items in samples:
        ids, tt = [BOS] + rnd(3), [0] * 4
        for it in items:
            if it[0] == "image":
                _, h, w = it
                n = h * w // m2
                ids += [VS] + [IMG] * n + [VE]
                tt += [0] + [1] * n + [0]
                img_px.append(torch.randn(h * w, pdim, generator=g))
                img_grid.append([1, h, w])
            else:
                _, t, h, w = it
                n = h * w // m2
                if qwen3:  # Qwen3-VL: a timestamp before every frame
                    for _ in range(t):
                        ids += rnd(2) + [VS] + [VID] * n + [VE]
                        tt += [0, 0, 0] + [2] * n + [0]
                else:
                    ids += [VS] + [VID] * (n * t) + [VE]
                    tt += [0] + [2] * (n * t) + [0]
                vid_px.append(torch.randn(t * h * w, pdim, generator=g))
                vid_grid.append([t, h, w])
            ids += rnd(2)
            tt += [0, 0]
        ids += rnd(4)
        tt += [0] * 4
        rows.append((ids, tt))
    L = max(len(r[0]) for r in rows)
    input_ids = torch.full((len(rows), L), PAD, dtype=torch.long)
    mask = torch.zeros(len(rows), L, dtype=torch.long)
    mtt = torch.zeros(len(rows), L, dtype=torch.long)
    for b, (ids, tt) in enumerate(rows):
        input_ids[b, L - len(ids) :] = torch.tensor(ids)
        mask[b, L - len(ids) :] = 1
        mtt[b, L - len(ids) :] = torch.tensor(tt)
    out = dict(input_ids=input_ids, attention_mask=mask, mm_token_type_ids=mtt)
    if img_px:
        out.update(pixel_values=torch.cat(img_px), image_grid_thw=torch.tensor(img_grid))
    if vid_px:
        out.update(pixel_values_videos=torch.cat(vid_px), video_grid_thw=torch.tensor(vid_grid))
    return out


def _llava_inputs(model, samples, seed=0):
    """Left-padded batch. Items: ("image", H, W) pixels in {16, 32}; ("video", frames)."""
    g = torch.Generator().manual_seed(seed)
    S = model.config.vision_config.image_size
    rnd = lambda k: torch.randint(3, 150, (k,), generator=g).tolist()
    imgs = [it for items in samples for it in items if it[0] == "image"]
    vids = [it for items in samples for it in items if it[0] == "video"]
    out, icount, vcount = {}, [], 0
    with torch.no_grad():  # the placeholder counts come from the model (anyres + newlines)
        if imgs:
            out["pixel_values"] = torch.randn(len(imgs), 5, 3, S, S, generator=g)
            out["image_sizes"] = torch.tensor([[it[1], it[2]] for it in imgs])
            out["batch_num_images"] = torch.tensor(
                [sum(it[0] == "image" for it in items) for items in samples]
            )
            feats = model.model.get_image_features(
                out["pixel_values"],
                out["image_sizes"],
                batch_num_images=out["batch_num_images"],
                return_dict=True,
            ).pooler_output
            icount = [f.shape[0] for f in feats]
        if vids:
            out["pixel_values_videos"] = torch.randn(len(vids), vids[0][1], 3, S, S, generator=g)
            vf = model.model.get_video_features(out["pixel_values_videos"], return_dict=True)
            vcount = vf.pooler_output.shape[1]
    rows, ii = [], 0
    for items in samples:
        ids = [BOS] + rnd(3)
        for it in items:
            if it[0] == "image":
                ids += [IMG] * icount[ii]
                ii += 1
            else:
                ids += [VID] * vcount
            ids += rnd(2)
        rows.append(ids + rnd(4))
    L = max(map(len, rows))
    input_ids = torch.full((len(rows), L), PAD, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for b, ids in enumerate(rows):
        input_ids[b, L - len(ids) :] = torch.tensor(ids)
        mask[b, L - len(ids) :] = 1
    out.update(input_ids=input_ids, attention_mask=mask)
    return out


# batch 2, left padding, different numbers of images per sample, images + video
MIXED = {
    "qwen": [
        [("image", 4, 4), ("video", 2, 4, 4)],
        [("image", 4, 6), ("image", 4, 4), ("image", 6, 4)],
    ],
    "llava": [[("image", 16, 32), ("video", 2)], [("image", 16, 16), ("image", 32, 16)]],
}


def _inputs(model, samples=None, seed=0):
    if model.config.model_type == "llava_onevision":
        return _llava_inputs(model, samples or MIXED["llava"], seed)
    return _qwen_inputs(model, samples or MIXED["qwen"], seed)


# ---------------------------------------------------------------------------- oracle helpers
def _generate_positions(model, inp):
    """The unpruned position ids generate() computes: [4, B, L] for Qwen, [B, L] for LLaVA."""
    mask = inp["attention_mask"]
    text = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    if model.config.model_type == "llava_onevision":
        return text
    kw = {k: inp[k] for k in ("image_grid_thw", "video_grid_thw", "mm_token_type_ids") if k in inp}
    rope, _ = model.model.get_rope_index(inp["input_ids"], attention_mask=mask, **kw)
    return torch.cat([text[None], rope], 0)


def _forward_positions(model, inp):
    """The unpruned position ids of a plain forward: [3, B, L] for Qwen, arange for LLaVA."""
    if model.config.model_type == "llava_onevision":
        b, L = inp["input_ids"].shape
        return torch.arange(L).expand(b, L)
    return _generate_positions(model, inp)[1:]


def _kept_mask(inp, kept):
    mask = torch.zeros_like(inp["attention_mask"])
    for i, k in enumerate(kept):
        mask[i, k] = 1
    return mask


def _gen(model, inp, **kw):
    kw.setdefault("max_new_tokens", 4)
    return model.generate(
        **inp, do_sample=False, output_logits=True, return_dict_in_generate=True, **kw
    )


def _max_diff(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a, b))


# ---------------------------------------------------------------------------- (1) identity
@pytest.mark.parametrize("model", KINDS, indirect=True)
def test_keep_all_is_identical(model, monkeypatch):
    """keep_ratio=1.0 goes through the pruner and the gather path and changes nothing."""
    inp = _inputs(model)
    calls = []
    real_prune = adaptive_prune.prune_batch
    monkeypatch.setattr(
        adaptive_prune, "prune_batch", lambda *a, **k: calls.append(1) or real_prune(*a, **k)
    )
    with torch.no_grad():
        ref_f = model(**inp).logits
        ref_g = _gen(model, inp, max_new_tokens=5)
        with aphf.attach(model, keep_ratio=1.0) as h:
            out_f = model(**inp).logits
            out_g = _gen(model, inp, max_new_tokens=5)
            assert h.last_seq_len == (inp["input_ids"].shape[1],) * 2
            assert all(a == b > 0 for a, b in h.last_num_visual)
    assert calls, "the pruning path was not taken"
    assert torch.equal(out_f, ref_f)
    assert torch.equal(out_g.sequences, ref_g.sequences)
    for a, b in zip(out_g.logits, ref_g.logits):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------- (2) oracle
@pytest.mark.parametrize("num_beams", [1, 3], ids=["greedy", "beams3"])
@pytest.mark.parametrize("model", KINDS, indirect=True)
def test_oracle_generate(model, num_beams):
    """Pruned generate == unmodified generate with dropped tokens masked + original positions."""
    inp = _inputs(model)
    with torch.no_grad():
        full = _gen(model, inp, num_beams=num_beams)
        with aphf.attach(model, keep_ratio=0.3) as h:
            out = _gen(model, inp, num_beams=num_beams)
            kept = h.last_kept[::num_beams]
            assert len(h.last_kept) == 2 * num_beams
            # beams of one sample see the same pruned prompt
            for i in range(2):
                for j in range(num_beams):
                    assert torch.equal(h.last_kept[i * num_beams + j], kept[i])
        ref = _gen(
            model,
            {**inp, "attention_mask": _kept_mask(inp, kept)},
            num_beams=num_beams,
            position_ids=_generate_positions(model, inp),
        )
    assert torch.equal(out.sequences, ref.sequences)
    assert _max_diff(out.logits, ref.logits) < TOL
    assert _max_diff(out.logits, full.logits) > 1e-3, "pruning had no effect: the test is vacuous"


@pytest.mark.parametrize("model", KINDS, indirect=True)
def test_oracle_generate_sdpa(model):
    """The same oracle under SDPA attention (transformers' default)."""
    inp = _inputs(model)
    model.set_attn_implementation("sdpa")
    try:
        with torch.no_grad():
            with aphf.attach(model, keep_ratio=0.3) as h:
                out = _gen(model, inp, num_beams=3)
                kept = h.last_kept[::3]
            ref = _gen(
                model,
                {**inp, "attention_mask": _kept_mask(inp, kept)},
                num_beams=3,
                position_ids=_generate_positions(model, inp),
            )
    finally:
        model.set_attn_implementation("eager")
    assert torch.equal(out.sequences, ref.sequences)
    assert _max_diff(out.logits, ref.logits) < TOL


@pytest.mark.parametrize("kind", ["qwen3_vl", "llava_onevision"])
def test_bf16(kind):
    """bf16 weights and features reach the pruner as they are; the oracle holds to bf16
    rounding."""
    model = _build.__wrapped__(kind).to(torch.bfloat16)
    inp = {
        k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in _inputs(model).items()
    }
    with torch.no_grad():
        with aphf.attach(model, keep_ratio=0.3) as h:
            out = _gen(model, inp)
            kept = h.last_kept
        ref = _gen(
            model,
            {**inp, "attention_mask": _kept_mask(inp, kept)},
            position_ids=_generate_positions(model, inp),
        )
    assert h.last_seq_len[1] < h.last_seq_len[0]
    assert (out.logits[0] - ref.logits[0]).abs().max() < 1e-2


@pytest.mark.parametrize("model", KINDS, indirect=True)
def test_oracle_forward_and_manual_decode(model):
    """Plain forward + a hand-written decode loop (no position_ids): same oracle."""
    inp = _inputs(model)
    steps = 3
    with torch.no_grad(), aphf.attach(model, keep_ratio=0.3) as h:
        out = model(**inp, use_cache=True)
        kept, lp = h.last_kept, h.last_seq_len[1]
        assert out.logits.shape[1] == lp and out.cache.get_seq_length() == lp
        mask, cache, tok, logits = inp["attention_mask"], out.cache, None, [out.logits]
        for _ in range(steps):
            tok = logits[-1][:, -1].argmax(-1, keepdim=True)
            mask = torch.cat([mask, torch.ones_like(tok)], 1)
            o = model(input_ids=tok, attention_mask=mask, cache=cache)
            cache = o.cache
            logits.append(o.logits)
    with torch.no_grad():
        pos = _forward_positions(model, inp)
        mask = _kept_mask(inp, kept)
        ref = model(**{**inp, "attention_mask": mask}, position_ids=pos, use_cache=True)
        for i, k in enumerate(kept):  # prefill: compare every kept token
            assert (out.logits[i, lp - len(k) :] - ref.logits[i, k]).abs().max() < TOL
        rows = pos if pos.ndim == 3 else pos[None]
        nxt = rows.masked_fill(inp["attention_mask"][None] == 0, -1).amax((0, 2)) + 1
        cache = ref.cache
        for t in range(steps):
            tok = logits[t][:, -1].argmax(-1, keepdim=True)  # feed the pruned run's tokens
            mask = torch.cat([mask, torch.ones_like(tok)], 1)
            p = (nxt + t).view(-1, 1)
            p = p.view(1, -1, 1).expand(3, -1, -1) if pos.ndim == 3 else p
            o = model(input_ids=tok, attention_mask=mask, cache=cache, position_ids=p)
            cache = o.cache
            assert (o.logits - logits[t + 1]).abs().max() < TOL


@pytest.mark.parametrize("model", ["qwen2_5_vl", "qwen3_vl"], indirect=True)
def test_oracle_text_only_sample_and_no_padding(model):
    """A sample without images next to one with images; a single unpadded video sample."""
    for samples in ([[("image", 4, 4), ("image", 6, 4)], []], [[("video", 3, 4, 4)]]):
        inp = _inputs(model, samples)
        with torch.no_grad():
            with aphf.attach(model, keep_ratio=0.25) as h:
                out = _gen(model, inp)
                kept = h.last_kept
            ref = _gen(
                model,
                {**inp, "attention_mask": _kept_mask(inp, kept)},
                position_ids=_generate_positions(model, inp),
            )
        assert torch.equal(out.sequences, ref.sequences)
        assert _max_diff(out.logits, ref.logits) < TOL


@pytest.mark.parametrize("model", ["qwen3_vl", "llava_onevision"], indirect=True)
def test_oracle_other_method_with_beams(model):
    """A baseline method (random if registered) through the same path; beams share its choice."""
    method = "random" if "random" in adaptive_prune.METHODS else "adaptive"
    inp = _inputs(model)
    with torch.no_grad():
        with aphf.attach(model, keep_ratio=0.5, method=method) as h:
            out = _gen(model, inp, num_beams=3)
            kept = h.last_kept[::3]
        ref = _gen(
            model,
            {**inp, "attention_mask": _kept_mask(inp, kept)},
            num_beams=3,
            position_ids=_generate_positions(model, inp),
        )
    assert torch.equal(out.sequences, ref.sequences)
    assert _max_diff(out.logits, ref.logits) < TOL


@pytest.mark.parametrize("model", ["qwen2_vl", "llava_onevision"], indirect=True)
def test_beams_share_one_choice_with_a_nondeterministic_selector(model, monkeypatch):
    """Beam search reorders the cache across the beams of a sample: they must all have been
    pruned alike, even by a selector that answers differently on every call."""
    seeds = itertools.count()

    def fickle(vision, cu_seqlens, request_offsets, text=None, *, budget, **kw):
        g = torch.Generator().manual_seed(next(seeds))
        cu, ro = cu_seqlens.tolist(), request_offsets.tolist()
        parts = []
        for r, b in enumerate(budget):
            a, e = cu[ro[r]], cu[ro[r + 1]]
            parts.append((a + torch.randperm(e - a, generator=g)[:b]).sort().values)
        return SimpleNamespace(indices=torch.cat(parts))

    inp = _inputs(model)
    with torch.no_grad():
        with aphf.attach(model, keep_ratio=0.4) as h:
            monkeypatch.setattr(adaptive_prune, "prune_batch", fickle)
            out = _gen(model, inp, num_beams=3)
            kept = h.last_kept[::3]
            for i in range(2):
                for j in range(3):
                    assert torch.equal(h.last_kept[3 * i + j], kept[i])
        ref = _gen(
            model,
            {**inp, "attention_mask": _kept_mask(inp, kept)},
            num_beams=3,
            position_ids=_generate_positions(model, inp),
        )
    assert torch.equal(out.sequences, ref.sequences)
    assert _max_diff(out.logits, ref.logits) < TOL


@pytest.mark.parametrize("model", ["qwen3_vl", "llava_onevision"], indirect=True)
def test_oracle_forward_without_mask_or_cache(model):
    """One unpadded sample, no attention_mask, use_cache=False: the kept tokens' positions have
    gaps, which must not be mistaken for packed sequences."""
    samples = (
        [[("image", 4, 4), ("video", 2, 4, 4)]]
        if model.config.model_type != "llava_onevision"
        else [[("image", 16, 32)]]
    )
    inp = _inputs(model, samples)
    del inp["attention_mask"]
    with torch.no_grad():
        with aphf.attach(model, keep_ratio=0.3) as h:
            out = model(**inp, use_cache=False).logits
            (kept,) = h.last_kept
        full = {**inp, "attention_mask": torch.ones_like(inp["input_ids"])}
        ref = model(
            **inp,
            attention_mask=_kept_mask(full, [kept]),
            position_ids=_forward_positions(model, full),
            use_cache=False,
        ).logits
    assert out.shape[1] == len(kept) < inp["input_ids"].shape[1]
    assert (out[0] - ref[0, kept]).abs().max() < TOL


def test_real_image_processor_and_sampling():
    """Pixels from transformers' own Qwen2-VL image processor (PIL backend, images of three
    sizes) and multinomial sampling: the oracle still holds."""
    np = pytest.importorskip("numpy")
    image = pytest.importorskip("PIL.Image")
    model = _build("qwen2_5_vl", patch=14)
    proc = transformers.Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 64)
    rng = np.random.default_rng(0)
    shapes = [(100, 140), (60, 60), (90, 50)]
    imgs = [image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in shapes]
    px = proc(images=imgs, return_tensors="pt")
    counts = (px["image_grid_thw"].prod(-1) // 4).tolist()
    rows = [
        [BOS, 5, 6, VS] + [IMG] * counts[0] + [VE, 7, 8],
        [BOS, VS] + [IMG] * counts[1] + [VE, 9, VS] + [IMG] * counts[2] + [VE, 10, 11],
    ]
    L = max(map(len, rows))
    ids = torch.tensor([[PAD] * (L - len(r)) + r for r in rows])
    inp = dict(
        input_ids=ids,
        attention_mask=(ids != PAD).long(),
        mm_token_type_ids=(ids == IMG).long(),
        **px,
    )
    with torch.no_grad():
        with aphf.attach(model, keep_ratio=0.3) as h:
            torch.manual_seed(1)
            out = _gen(model, inp, num_beams=2)
            kept = h.last_kept[::2]
            torch.manual_seed(2)
            sampled = model.generate(
                **inp,
                do_sample=True,
                max_new_tokens=4,
                output_logits=True,
                return_dict_in_generate=True,
            )
            kept_s = h.last_kept
        ref = _gen(
            model,
            {**inp, "attention_mask": _kept_mask(inp, kept)},
            num_beams=2,
            position_ids=_generate_positions(model, inp),
        )
        torch.manual_seed(2)
        ref_s = model.generate(
            **{**inp, "attention_mask": _kept_mask(inp, kept_s)},
            position_ids=_generate_positions(model, inp),
            do_sample=True,
            max_new_tokens=4,
            output_logits=True,
            return_dict_in_generate=True,
        )
    assert [a for a, _ in h.last_num_visual] == [counts[0], counts[1] + counts[2]]
    assert torch.equal(out.sequences, ref.sequences)
    assert _max_diff(out.logits, ref.logits) < TOL
    assert torch.equal(sampled.sequences, ref_s.sequences)
    assert _max_diff(sampled.logits, ref_s.logits) < TOL


# ---------------------------------------------------------------------------- (3) lengths
def _spy_lm(model):
    """Record what reaches the language model: sequence length and rotary position ids."""
    lm = model.model.language_model
    seen = {"len": [], "pos": []}
    hooks = [
        lm.layers[0].register_forward_pre_hook(lambda m, a: seen["len"].append(a[0].shape[1])),
        lm.rotary_emb.register_forward_pre_hook(lambda m, a: seen["pos"].append(a[1].clone())),
    ]
    return seen, hooks


@pytest.mark.parametrize("model", KINDS, indirect=True)
def test_prefill_shrinks_and_positions_match(model):
    inp = _inputs(model)
    real = inp["attention_mask"].sum(1)
    vis = ((inp["input_ids"] == IMG) | (inp["input_ids"] == VID)).sum(1)
    with torch.no_grad():
        seen_u, hooks = _spy_lm(model)
        model.generate(**inp, max_new_tokens=4, do_sample=False)
        for hk in hooks:
            hk.remove()
        seen_p, hooks = _spy_lm(model)
        with aphf.attach(model, keep_ratio=0.25) as h:
            model.generate(**inp, max_new_tokens=4, do_sample=False)
            kept, nv, (L, lp) = h.last_kept, h.last_num_visual, h.last_seq_len
        for hk in hooks:
            hk.remove()
    dropped = torch.tensor([a - b for a, b in nv])
    assert torch.equal(torch.tensor([a for a, _ in nv]), vis)
    assert (dropped > 0).all()
    assert [len(k) for k in kept] == (real - dropped).tolist()  # each row: exactly the pruned count
    assert L == inp["input_ids"].shape[1] and lp == int((real - dropped).max())
    assert seen_u["len"][0] == L and seen_p["len"][0] == lp  # what the LM really prefilled
    assert seen_p["len"][1:] == [1, 1, 1]
    # prefill: each kept token has its unpruned position; decode: positions identical
    pu, pp = seen_u["pos"][0], seen_p["pos"][0]
    for i, k in enumerate(kept):
        assert torch.equal(pp[..., i, lp - len(k) :], pu[..., i, k])
    assert len(seen_u["pos"]) == len(seen_p["pos"]) == 4
    for a, b in zip(seen_u["pos"][1:], seen_p["pos"][1:]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("model", ["qwen2_5_vl"], indirect=True)
def test_single_sample_shrinks_by_exact_count(model):
    inp = _inputs(model, [[("image", 4, 4), ("image", 4, 8), ("video", 2, 4, 4)]])
    with torch.no_grad(), aphf.attach(model, budget=5) as h:
        out = model(**inp)
    ((before, after),) = h.last_num_visual
    assert before == 4 + 8 + 8 and after == 5
    assert out.logits.shape[1] == inp["input_ids"].shape[1] - (before - after)


# ---------------------------------------------------------------------------- behaviour
@pytest.mark.parametrize("model", ["qwen2_5_vl", "qwen3_vl", "llava_onevision"], indirect=True)
def test_pruner_inputs(model, monkeypatch):
    """One batched pruner call per prefill, one request per sample; images and frames are
    separate units; text is the prompt's own token embeddings without placeholders, padding
    and special tokens."""
    calls = []  # one entry per request: (vision, image offsets, text, options with its budget)
    batches = []
    real_prune = adaptive_prune.prune_batch

    def spy(vision, cu, ro, text=None, *, budget, **kw):
        batches.append(len(ro) - 1)
        c, o = cu.tolist(), ro.tolist()
        for r in range(len(o) - 1):
            a = c[o[r]]
            calls.append((vision[a : c[o[r + 1]]], [v - a for v in c[o[r] : o[r + 1] + 1]],
                          text[r], dict(kw, budget=budget[r])))  # fmt: skip
        return real_prune(vision, cu, ro, text, budget=budget, **kw)

    monkeypatch.setattr(adaptive_prune, "prune_batch", spy)
    inp = _inputs(model)
    emb = model.get_input_embeddings()
    with torch.no_grad(), aphf.attach(model, keep_ratio=0.25) as h:
        model(**inp)
        kept = h.last_kept
    assert batches == [2] and len(calls) == 2
    if model.config.model_type == "llava_onevision":
        frames = inp["pixel_values_videos"].shape[1]
        per = (((inp["input_ids"][0] == VID).sum().item()) - 1) // frames
        video_units = [per] * (frames - 1) + [per + 1]  # the newline goes with the last frame
        n_img0 = (inp["input_ids"][0] == IMG).sum().item()
        assert calls[0][1] == [0, n_img0] + [
            n_img0 + sum(video_units[: j + 1]) for j in range(frames)
        ]
    else:
        assert calls[0][1] == [0, 4, 8, 12]  # image (4) + video of 2 frames (4 + 4)
        assert calls[1][1] == [0, 6, 10, 16]  # three images
    special = torch.tensor([IMG, VID, VS, VE, PAD, BOS, EOS])
    for i, (vision, cu, text, kw) in enumerate(calls):
        ids, m = inp["input_ids"][i], inp["attention_mask"][i].bool()
        want = ids[m & ~torch.isin(ids, special)]
        assert torch.equal(text, emb(want))
        assert kw["method"] == "adaptive" and "keep_ratio" not in kw
        assert kw["budget"] == int(0.25 * vision.shape[0] + 0.5)
        # every image / frame keeps at least min_per_image=1 token
        vis_pos = ((ids == IMG) | (ids == VID)).nonzero().view(-1)
        kept_vis = torch.isin(vis_pos, kept[i])
        for a, b in zip(cu[:-1], cu[1:]):
            assert kept_vis[a:b].any()
    calls.clear()
    with (
        torch.no_grad(),
        aphf.attach(model, keep_ratio=0.25, text_aware=False, split_video_frames=False),
    ):
        model(**inp)
    assert all(c[2] is None for c in calls)
    if model.config.model_type != "llava_onevision":
        assert calls[0][1] == [0, 4, 12]


def _kept_per_unit(inp, handle, beams=1):
    """Per prefill row: how many visual tokens of each of its units (``handle.last_units``, in
    prompt order) reached the language model."""
    ids, mask = inp["input_ids"], inp["attention_mask"].bool()
    out = []
    for r, (units, kept) in enumerate(zip(handle.last_units, handle.last_kept)):
        i = r // beams
        vis = (((ids[i] == IMG) | (ids[i] == VID)) & mask[i]).nonzero().view(-1)
        assert sum(units) == len(vis)
        out.append([int(c.sum()) for c in torch.isin(vis, kept).long().split(units)])
    return out


@pytest.mark.parametrize("model", ["qwen2_5_vl", "qwen3_vl", "llava_onevision"], indirect=True)
def test_per_image_minimum_protects_an_image(model):
    """``handle.min_per_image`` with one list per sample (the beams of a sample share it): the
    image / frame that kept the smallest share by default keeps at least its minimum, and the
    pruned generate still equals the masked unmodified model (the oracle)."""
    beams = 2
    inp = _inputs(model)
    with torch.no_grad():
        with aphf.attach(model, keep_ratio=0.3) as h:
            model(**inp)
            default, units = _kept_per_unit(inp, h), h.last_units
            mins, protected = [], []
            for u, d in zip(units, default):
                k = min(range(len(u)), key=lambda j: (d[j] / u[j], j))
                q = [0] * len(u)
                q[k] = min(u[k], sum(d))  # as much of it as the sample's budget allows
                mins.append(q)
                protected.append(k)
            h.min_per_image = mins
            out = _gen(model, inp, num_beams=beams)
            got = _kept_per_unit(inp, h, beams)
            kept = h.last_kept[::beams]
        ref = _gen(
            model,
            {**inp, "attention_mask": _kept_mask(inp, kept)},
            num_beams=beams,
            position_ids=_generate_positions(model, inp),
        )
    assert len(got) == len(units) * beams
    for r, counts in enumerate(got):
        i = r // beams
        assert all(c >= m for c, m in zip(counts, mins[i])), (counts, mins[i])
        assert sum(counts) == sum(default[i])  # the same budget
        assert counts[protected[i]] > default[i][protected[i]]  # the minimum binds
    assert torch.equal(out.sequences, ref.sequences)
    assert _max_diff(out.logits, ref.logits) < TOL


@pytest.mark.parametrize("model", ["qwen2_vl"], indirect=True)
def test_per_image_minimum_forms_and_errors(model):
    """One flat list for a one-sample prompt (attach or the handle, a list or an int tensor);
    a wrong length, a wrong number of samples or an infeasible minimum fails naming
    min_per_image, and the handle still works afterwards."""
    inp = _inputs(model, [[("image", 4, 4), ("image", 4, 8), ("video", 2, 4, 4)]])
    with torch.no_grad(), aphf.attach(model, keep_ratio=0.5, min_per_image=[0, 8, 0, 0]) as h:
        model(**inp)
        assert h.last_units == [[4, 8, 4, 4]] and h.min_per_image == (0, 8, 0, 0)
        assert _kept_per_unit(inp, h)[0][1] == 8  # the whole image, of a budget of 10
        h.min_per_image = torch.tensor([0, 0, 0, 4])
        model(**inp)
        assert _kept_per_unit(inp, h)[0][3] == 4
        for bad, match in [
            ([1, 2], "min_per_image has 2 entries but prefill row 0 has 4"),
            ([[1, 2, 3, 4], [1, 1, 1, 1]], "2 per-sample lists but the prefill has 1 rows"),
            ([[1, 2, 3]], r"min_per_image\[0\] has 3 entries but sample 0 has 4"),
            ([0, 9, 4, 0], "min_per_image asks for 12 visual tokens"),
        ]:
            h.min_per_image = bad
            with pytest.raises(ValueError, match=match):
                model(**inp)
        with pytest.raises(ValueError, match="min_per_image"):
            h.min_per_image = [1, -1]
        h.min_per_image = 1
        model(**inp)
        assert min(_kept_per_unit(inp, h)[0]) >= 1
    for bad, err in [([1, -1], ValueError), ([1, 1.5], TypeError), ([[1], 2], TypeError),
                     ("12", TypeError), (torch.ones(2), TypeError), ([True], TypeError),
                     (None, TypeError), ([[1, 2], [3, -1]], ValueError)]:  # fmt: skip
        with pytest.raises(err, match="min_per_image"):
            aphf.attach(model, keep_ratio=0.5, min_per_image=bad)
        assert getattr(model, "_adaptive_prune_handle", None) is None


@pytest.mark.parametrize("model", ["qwen2_5_vl"], indirect=True)
def test_text_exclude_ids_forms(model, monkeypatch):
    """Any collection of ints (list, tuple, set, range, generator, 1-D int tensor) is accepted
    and leaves those ids out of the text given to the pruner."""
    texts = []
    real_prune = adaptive_prune.prune_batch

    def spy(vision, cu, ro, text=None, **kw):
        texts.append(text)
        return real_prune(vision, cu, ro, text, **kw)

    monkeypatch.setattr(adaptive_prune, "prune_batch", spy)
    inp = _inputs(model)
    ids, m = inp["input_ids"], inp["attention_mask"].bool()
    special = torch.tensor([IMG, VID, VS, VE, PAD, BOS, EOS])
    t = int(ids[0][m[0] & ~torch.isin(ids[0], special)][0])  # a text token of sample 0
    emb = model.get_input_embeddings()
    forms = [[t], (t,), {t}, range(t, t + 1), (x for x in [t]), torch.tensor([t])]
    for form in forms:
        texts.clear()
        with torch.no_grad(), aphf.attach(model, keep_ratio=0.5, text_exclude_ids=form):
            model(**inp)
        out = torch.cat([special, torch.tensor([t])])
        for i, text in enumerate(texts[0]):
            want = ids[i][m[i] & ~torch.isin(ids[i], out)]
            assert torch.equal(text, emb(want))
        assert texts[0][0].shape[0] < int((m[0] & ~torch.isin(ids[0], special)).sum())


@pytest.mark.parametrize("model", ["qwen2_vl"], indirect=True)
def test_last_kept_semantics(model):
    inp = _inputs(model)
    with torch.no_grad(), aphf.attach(model, keep_ratio=0.3) as h:
        model(**inp)
    ids, mask = inp["input_ids"], inp["attention_mask"].bool()
    for i, k in enumerate(h.last_kept):
        assert k.dtype == torch.long and torch.equal(k, k.sort().values)
        assert mask[i, k].all()  # padding never listed
        vis = (ids[i] == IMG) | (ids[i] == VID)
        text_pos = (mask[i] & ~vis).nonzero().view(-1)
        assert torch.isin(text_pos, k).all()  # all text reaches the LM
        assert int(vis[k].sum()) == h.last_num_visual[i][1]


@pytest.mark.parametrize("model", ["qwen3_vl"], indirect=True)
def test_detach_restores_model(model):
    inp = _inputs(model)
    lm = model.model.language_model
    with torch.no_grad():
        ref = model(**inp).logits
        h = aphf.attach(model, keep_ratio=0.3)
        assert "generate" in model.__dict__ and "get_image_features" in model.model.__dict__
        pruned = model(**inp).logits
        h.detach()
        h.detach()  # idempotent
        after = model(**inp).logits
    assert pruned.shape[1] < ref.shape[1]
    assert torch.equal(after, ref)
    for mod in (model, model.model, lm):
        assert not mod._forward_pre_hooks and not mod._forward_hooks
    assert "generate" not in model.__dict__
    assert not any(k.startswith("get_") for k in model.model.__dict__)


@pytest.mark.parametrize("model", ["qwen2_5_vl"], indirect=True)
def test_bare_inner_model(model):
    inp = _inputs(model)
    with torch.no_grad(), aphf.attach(model.model, keep_ratio=0.3) as h:
        out = model.model(**inp)
    assert out.last_hidden_state.shape[1] == h.last_seq_len[1] < inp["input_ids"].shape[1]


# ---------------------------------------------------------------------------- (4) errors
def _unsupported_models():
    T = transformers
    tiny = dict(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    yield T.Qwen2ForCausalLM(T.Qwen2Config(**tiny))
    yield T.LlavaForConditionalGeneration(
        T.LlavaConfig(
            text_config=dict(model_type="qwen2", **tiny),
            vision_config=dict(
                model_type="siglip_vision_model",
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=1,
                num_attention_heads=2,
                image_size=16,
                patch_size=4,
            ),
            image_token_index=40,
        )
    )


def test_unsupported_models_raise():
    for m in _unsupported_models():
        with pytest.raises(NotImplementedError, match="does not support .*Supported models"):
            aphf.attach(m, keep_ratio=0.5)
        assert not any(mod._forward_pre_hooks for mod in m.modules())
        assert "generate" not in m.__dict__
    with pytest.raises(TypeError):
        aphf.attach(object(), keep_ratio=0.5)


@pytest.mark.parametrize("model", ["qwen2_5_vl"], indirect=True)
def test_bad_arguments_raise(model):
    for kw, err, name in [
        (dict(), ValueError, "keep_ratio"),
        (dict(keep_ratio=0.5, budget=3), ValueError, "keep_ratio"),
        (dict(keep_ratio=0.0), ValueError, "keep_ratio"),
        (dict(keep_ratio=1.5), ValueError, "keep_ratio"),
        (dict(keep_ratio=float("nan")), ValueError, "keep_ratio"),
        (dict(keep_ratio="0.5"), TypeError, "keep_ratio"),
        (dict(keep_ratio=True), TypeError, "keep_ratio"),
        (dict(budget=-1), ValueError, "budget"),
        (dict(budget=2.5), TypeError, "budget"),
        (dict(budget="8"), TypeError, "budget"),
        (dict(keep_ratio=0.5, method="nope"), ValueError, "method"),
        (dict(keep_ratio=0.5, method=["adaptive"]), TypeError, "method"),
        (dict(keep_ratio=0.5, not_an_option=1), TypeError, "not_an_option"),
        (dict(keep_ratio=0.5, min_per_image=-1), ValueError, "min_per_image"),
        (dict(keep_ratio=0.5, min_per_image=1.5), TypeError, "min_per_image"),
        (dict(keep_ratio=0.5, min_per_image=True), TypeError, "min_per_image"),
        (dict(keep_ratio=0.5, text_aware="yes"), TypeError, "text_aware"),
        (dict(keep_ratio=0.5, text_aware=None), TypeError, "text_aware"),
        (dict(keep_ratio=0.5, split_video_frames=1), TypeError, "split_video_frames"),
        (dict(keep_ratio=0.5, text_exclude_ids="abc"), TypeError, "text_exclude_ids"),
        (dict(keep_ratio=0.5, text_exclude_ids="123"), TypeError, "text_exclude_ids"),
        (dict(keep_ratio=0.5, text_exclude_ids=5), TypeError, "text_exclude_ids"),
        (dict(keep_ratio=0.5, text_exclude_ids=[3, "4"]), TypeError, "text_exclude_ids"),
        (dict(keep_ratio=0.5, text_exclude_ids=[3, 4.0]), TypeError, "text_exclude_ids"),
        (dict(keep_ratio=0.5, text_exclude_ids=[3, -1]), ValueError, "text_exclude_ids"),
        (dict(keep_ratio=0.5, text_exclude_ids=torch.ones(2)), TypeError, "text_exclude_ids"),
        (dict(keep_ratio=0.5, text_exclude_ids=torch.ones(2, 2, dtype=torch.long)), TypeError,
         "text_exclude_ids"),
    ]:  # fmt: skip
        with pytest.raises(err, match=name):
            aphf.attach(model, **kw)
        assert getattr(model, "_adaptive_prune_handle", None) is None
    with aphf.attach(model, keep_ratio=0.5), pytest.raises(RuntimeError, match="already"):
        aphf.attach(model, keep_ratio=0.5)


@pytest.mark.parametrize("model", ["qwen2_5_vl", "llava_onevision"], indirect=True)
def test_unsupported_uses_raise(model):
    inp = _inputs(model)
    with torch.no_grad():
        foreign = model(**inp, use_cache=True).cache  # built before attach
        with aphf.attach(model, keep_ratio=0.3):
            with pytest.raises(NotImplementedError, match="static"):
                model.generate(**inp, max_new_tokens=2, cache_implementation="static")
            static = transformers.StaticCache(config=model.config, max_cache_len=128)
            with pytest.raises(NotImplementedError, match="DynamicCache"):
                model(**inp, cache=static)
            with pytest.raises(NotImplementedError, match="chunked prefill"):
                model.generate(**inp, max_new_tokens=2, prefill_chunk_size=8)
            with pytest.raises(NotImplementedError, match="non-empty cache"):
                model(input_ids=inp["input_ids"][:, -1:], cache=foreign)
            with pytest.raises(NotImplementedError, match="non-empty cache"):
                model.generate(**inp, max_new_tokens=2, cache=foreign)
            with pytest.raises(NotImplementedError, match="labels"):
                model(**inp, labels=inp["input_ids"])
            with pytest.raises(NotImplementedError, match="use_cache=False"):
                model.generate(**inp, max_new_tokens=2, use_cache=False)
            emb = model.get_input_embeddings()(inp["input_ids"])
            px = {k: v for k, v in inp.items() if k not in ("input_ids",)}
            with pytest.raises(ValueError, match="needs input_ids"):
                model(inputs_embeds=emb, **px)
            out = model(**inp, use_cache=True)  # a pruned cache ...
            with pytest.raises(ValueError, match="columns"):  # ... with a wrong-length mask
                model(
                    input_ids=inp["input_ids"][:, -1:],
                    cache=out.cache,
                    attention_mask=torch.ones(2, 5, dtype=torch.long),
                )


@pytest.mark.parametrize("budget", [None, 3])
def test_batched_selection_equals_one_call_per_sample(budget):
    """The handle selects all samples of a prefill with one ``prune_batch`` call (one per
    distinct feasible minimum): the same rows as ``prune`` on each sample alone."""
    g = torch.Generator().manual_seed(5)
    units = [[5, 7, 4], [9], [3, 3, 3, 3, 2], [6, 6]]
    samples = []
    for i, u in enumerate(units):
        text = torch.randn(4, 16, generator=g) if i != 1 else None  # sample 1: no text
        samples.append((torch.randn(sum(u), 16, generator=g), u, text))
    kw = dict(keep_ratio=0.3 if budget is None else None, budget=budget, method="adaptive",
              min_per_image=2)  # fmt: skip
    calls = []
    real = adaptive_prune.prune_batch

    def spy(*a, **k):
        calls.append(k["min_per_image"])
        return real(*a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(adaptive_prune, "prune_batch", spy)
        got = layout.select(samples, kw)
    qs = []
    for (vision, u, text), rows in zip(samples, got):
        n = vision.shape[0]
        b = min(int(0.3 * n + 0.5) if budget is None else budget, n)
        qs.append(layout.feasible_min(2, u, b))
        cu = torch.tensor([0] + list(itertools.accumulate(u)))
        want = adaptive_prune.prune(vision, cu, text, budget=b, min_per_image=qs[-1]).indices
        assert torch.equal(rows, want)
    assert sorted(calls) == sorted(set(qs))  # one call per distinct feasible minimum
    if budget == 3:  # 3 tokens cannot give 5 units 1 each, nor 3 units 2 each: three groups
        assert sorted(set(qs)) == [0, 1, 2]
