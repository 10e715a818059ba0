"""Build a tiny random-weight Qwen2.5-VL checkpoint that vLLM loads (no downloads, ~1.5 MB).

Usage: ``python tests/vllm/tiny_model.py OUT_DIR`` (also used by the engine tests and docs).
Text model: hidden 128, 2 layers, 4 heads / 2 KV heads (head_dim 32), M-RoPE sections [4, 6, 6].
Vision: depth 2, hidden 64, patch 14, merge 2; the processor keeps images between 4 and 64
merged tokens (28^2 * 4 .. 28^2 * 64 pixels).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or part['type'] == 'image_url' %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' or part['type'] == 'video_url' %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "What is in this picture? Describe the image in detail.",
    "How many objects are there? What color is the cat? Where is the rocket?",
    "Compare the two images and tell me what they have in common.",
    "The quick brown fox jumps over the lazy dog. A video of a moving ball.",
    "system user assistant You are a helpful assistant.",
]


def build(out: str | Path, kind: str = "qwen2_5_vl") -> Path:
    """Write the tiny checkpoint of ``kind`` (``qwen2_5_vl`` or ``qwen2_vl``) to ``out``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIALS[1:],
    )
    fast.chat_template = CHAT_TEMPLATE
    ids = {t: fast.convert_tokens_to_ids(t) for t in SPECIALS}
    vocab = 512
    assert max(ids.values()) < vocab

    torch.manual_seed(0)
    text = dict(
        vocab_size=vocab,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [4, 6, 6],
        },
        bos_token_id=None,
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
    )
    ids_kw = dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=None,
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
    )
    common = dict(patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
    if kind == "qwen2_vl":
        cfg = Qwen2VLConfig(
            text_config=text,
            vision_config=dict(
                depth=2, embed_dim=64, hidden_size=128, num_heads=2, mlp_ratio=2, **common
            ),
            **ids_kw,
        )
        model = Qwen2VLForConditionalGeneration(cfg)
        proc_cls = Qwen2VLProcessor
    else:
        cfg = Qwen2_5_VLConfig(
            text_config=text,
            vision_config=dict(
                depth=2,
                hidden_size=64,
                intermediate_size=128,
                num_heads=2,
                out_hidden_size=128,
                window_size=56,
                fullatt_block_indexes=[1],
                tokens_per_second=2,
                **common,
            ),
            **ids_kw,
        )
        model = Qwen2_5_VLForConditionalGeneration(cfg)
        proc_cls = Qwen2_5_VLProcessor
    with torch.no_grad():  # larger random weights: logprobs that differ visibly between inputs
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.08)
    model.save_pretrained(out)
    pix = dict(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 64)
    image_processor = Qwen2VLImageProcessor(**pix)
    video_processor = Qwen2VLVideoProcessor(**pix)
    processor = proc_cls(
        image_processor=image_processor,
        tokenizer=fast,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    gen = {"eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"]}
    (out / "generation_config.json").write_text(json.dumps(gen))
    return out


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "tiny-qwen2_5_vl"
    print(build(out, sys.argv[2] if len(sys.argv) > 2 else "qwen2_5_vl"))
