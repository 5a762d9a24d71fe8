"""Tiny, randomly initialised Qwen3-VL models with an offline tokenizer and processor.

Everything is built in code (no hub access): the real model classes, the real Qwen3-VL processor
and video processor, and a byte-level tokenizer carrying Qwen's special tokens. Answers are noise;
everything else (shapes, positions, processing, generation) is the real thing.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2VLImageProcessor,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMoeForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)

from .configs import TINY_SPECIAL_TOKENS, tiny_config

# The Qwen3-VL chat layout, reduced to what a single-turn video or image question needs.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Pixel budget of the tiny processor: 16 merged tokens (128 x 128 pixels) per frame at most, so a
# clip of 16 frames costs 128 visual tokens and CPU tests stay fast.
TINY_MAX_PIXELS_PER_FRAME = 128 * 128


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer (ids 0-255) plus Qwen's special tokens (ids 256+), built offline."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(TINY_SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=CHAT_TEMPLATE
    )


def tiny_processor(max_pixels_per_frame: int = TINY_MAX_PIXELS_PER_FRAME) -> Qwen3VLProcessor:
    """The real Qwen3-VL processor around the tiny tokenizer, with a small per-frame pixel budget."""
    video_processor = Qwen3VLVideoProcessor(
        size={"shortest_edge": 32 * 32 * 2, "longest_edge": max_pixels_per_frame * 2048},
        cap_pixels_per_frame=False,
        max_video_tokens=max_pixels_per_frame // (32 * 32),
    )
    image_processor = Qwen2VLImageProcessor(
        patch_size=16, merge_size=2, size={"shortest_edge": 32 * 32, "longest_edge": max_pixels_per_frame}
    )
    return Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=tiny_tokenizer(),
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )


def tiny_model(
    *, seed: int = 0, moe: bool = False, attn_implementation: str = "sdpa", dtype: torch.dtype = torch.float32
) -> Qwen3VLForConditionalGeneration | Qwen3VLMoeForConditionalGeneration:
    """A tiny random Qwen3-VL (or Qwen3-VL-MoE), in eval mode, deterministic for a given seed."""
    config = tiny_config(moe=moe)
    config._attn_implementation = attn_implementation
    cls = Qwen3VLMoeForConditionalGeneration if moe else Qwen3VLForConditionalGeneration
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
    # Random weights make flat, near-uniform logits; a larger output scale makes greedy choices
    # decisive, so that tests comparing generated tokens are not decided by float ties.
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    model.generation_config.eos_token_id = None  # random weights: never stop early by chance
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    return model.to(dtype).eval()
