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

from .configs import TINY_BYTE_VOCAB, TINY_SPECIAL_TOKENS, real_config, tiny_config

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


QWEN_SPECIAL_IDS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|vision_start|>": 151652,
    "<|vision_end|>": 151653,
    "<|image_pad|>": 151655,
    "<|video_pad|>": 151656,
}


def offline_tokenizer(special_ids: dict[str, int] | None = None) -> PreTrainedTokenizerFast:
    """Byte-level tokenizer (ids 0-255) plus Qwen's special tokens, built offline.

    special_ids: where the special tokens sit; None puts them right after the bytes (the tiny
    models' vocabulary), QWEN_SPECIAL_IDS at Qwen's own ids (for random models of real shapes).
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    if special_ids is None:
        special_ids = {token: TINY_BYTE_VOCAB + i for i, token in enumerate(TINY_SPECIAL_TOKENS)}
    vocab.update(special_ids)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(special_ids))
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=CHAT_TEMPLATE
    )


def offline_processor(
    max_pixels_per_frame: int = TINY_MAX_PIXELS_PER_FRAME, special_ids: dict[str, int] | None = None
) -> Qwen3VLProcessor:
    """The real Qwen3-VL processor around an offline tokenizer, with a per-frame pixel budget.

    Frames within the budget keep their size (rounded to multiples of 32 pixels); larger ones are
    scaled down to it.
    """
    video_processor = Qwen3VLVideoProcessor(
        size={"shortest_edge": 32 * 32 * 2, "longest_edge": max_pixels_per_frame * 2048},
        cap_pixels_per_frame=True,
        max_video_tokens=max_pixels_per_frame // (32 * 32),
    )
    image_processor = Qwen2VLImageProcessor(
        patch_size=16, merge_size=2, size={"shortest_edge": 32 * 32, "longest_edge": max_pixels_per_frame}
    )
    return Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=offline_tokenizer(special_ids),
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )


def tiny_processor() -> Qwen3VLProcessor:
    """The processor of the tiny models: at most 16 merged tokens (128 x 128 pixels) per frame."""
    return offline_processor(TINY_MAX_PIXELS_PER_FRAME)


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


def random_model(size: str, *, device: str | torch.device = "cuda", dtype: torch.dtype = torch.bfloat16,
                 attn_implementation: str = "sdpa", seed: int = 0):  # fmt: skip
    """A randomly initialised model with the real shapes of Qwen3-VL-{size}, built on `device`."""
    config = real_config(size)
    config._attn_implementation = attn_implementation
    cls = Qwen3VLMoeForConditionalGeneration if config.model_type == "qwen3_vl_moe" else Qwen3VLForConditionalGeneration
    torch.manual_seed(seed)
    with torch.device(device):
        model = cls._from_config(config, dtype=dtype)
    model.generation_config.eos_token_id = None  # random weights: always generate the full length
    model.generation_config.pad_token_id = QWEN_SPECIAL_IDS["<|endoftext|>"]
    return model.eval()
