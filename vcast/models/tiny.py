"""Randomly initialised models of every supported family, with offline tokenizers and processors.

Everything is built in code (no hub access): the real model classes, the real processors and video
processors of each family, and a byte-level tokenizer carrying the family's special tokens. Answers
are noise; everything else (shapes, positions, processing, generation) is the real thing.
`tiny_model(family=...)` is small enough for CPU tests; `random_model(name)` has the real shapes of
a released checkpoint (for GPU benchmarks without the hub).
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForImageTextToText,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
    PreTrainedTokenizerFast,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)

from .configs import (
    LLAVA_SPECIAL_IDS,
    QWEN3_5_SPECIAL_IDS,
    REAL_MODELS,
    TINY_BYTE_VOCAB,
    TINY_LLAVA_IMAGE_SIZE,
    TINY_LLAVA_PATCH,
    TINY_SPECIAL_TOKENS,
    real_config_of,
    tiny_config,
)

# The Qwen chat layout, reduced to what a single-turn video or image question needs.
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
# LLaVA-OneVision's layout (llava-hf's template): the visual placeholders first, each on its own line.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
    "{% for item in message['content'] %}{% if item['type'] == 'video' %}<video>\n{% endif %}{% endfor %}"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    "{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Pixel budget of the tiny Qwen processors: 16 merged tokens per frame at most (128 x 128 pixels for
# Qwen3-VL's 32-pixel merged tokens), so a clip of 16 frames costs 128 visual tokens and CPU tests stay fast.
TINY_MAX_PIXELS_PER_FRAME = 128 * 128
TINY_MAX_TOKENS_PER_FRAME = 16

QWEN_SPECIAL_IDS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|vision_start|>": 151652,
    "<|vision_end|>": 151653,
    "<|image_pad|>": 151655,
    "<|video_pad|>": 151656,
}
_TINY_IDS = {token: TINY_BYTE_VOCAB + i for i, token in enumerate(TINY_SPECIAL_TOKENS)}
_TINY_QWEN_IDS = {token: _TINY_IDS[token] for token in QWEN_SPECIAL_IDS}
_TINY_LLAVA_IDS = {token: _TINY_IDS[token] for token in LLAVA_SPECIAL_IDS}


def offline_tokenizer(special_ids: dict[str, int] | None = None, chat_template: str = CHAT_TEMPLATE
                      ) -> PreTrainedTokenizerFast:  # fmt: skip
    """Byte-level tokenizer (ids 0-255) plus a family's special tokens, built offline.

    special_ids: where the special tokens sit; None puts Qwen's right after the bytes (the tiny
    models' vocabulary), QWEN_SPECIAL_IDS at Qwen's own ids (for random models of real shapes).
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    special_ids = _TINY_QWEN_IDS if special_ids is None else special_ids
    vocab.update(special_ids)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(special_ids))
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=chat_template
    )


def offline_processor(
    max_pixels_per_frame: int = TINY_MAX_PIXELS_PER_FRAME, special_ids: dict[str, int] | None = None
) -> Qwen3VLProcessor:
    """The real Qwen3-VL processor (Qwen3-VL and Qwen3.5) around an offline tokenizer, with a
    per-frame pixel budget. Frames within the budget keep their size (rounded to multiples of 32
    pixels); larger ones are scaled down to it."""
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


def qwen2_5_vl_processor(max_pixels_per_frame: int = TINY_MAX_TOKENS_PER_FRAME * 28 * 28,
                         special_ids: dict[str, int] | None = None) -> Qwen2_5_VLProcessor:  # fmt: skip
    """The real Qwen2.5-VL processor (14-pixel patches, 28-pixel merged tokens) around an offline
    tokenizer; `max_pixels_per_frame` caps each frame (Qwen2-VL's video processor budgets per frame)."""
    size = {"shortest_edge": 28 * 28 * 2, "longest_edge": max_pixels_per_frame}
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(patch_size=14, merge_size=2, size=size),
        tokenizer=offline_tokenizer(special_ids),
        # the per-frame cap of the reference qwen-vl-utils (transformers' default from 5.22 on)
        video_processor=Qwen2VLVideoProcessor(patch_size=14, merge_size=2, temporal_patch_size=2, size=size,
                                              cap_pixels_per_frame=True),
        chat_template=CHAT_TEMPLATE,
    )


def llava_onevision_processor(image_size: int = TINY_LLAVA_IMAGE_SIZE, patch_size: int = TINY_LLAVA_PATCH,
                              special_ids: dict[str, int] | None = None) -> LlavaOnevisionProcessor:  # fmt: skip
    """The real LLaVA-OneVision processor around an offline tokenizer: frames resized to
    image_size x image_size, (image_size / patch_size)^2 patches per frame before pooling."""
    side = {"height": image_size, "width": image_size}
    half = [0.5, 0.5, 0.5]  # SigLIP's normalisation, as in llava-hf's released processors
    special_ids = _TINY_LLAVA_IDS if special_ids is None else special_ids
    return LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=side, image_mean=half, image_std=half,
                                                     image_grid_pinpoints=[[image_size, image_size]]),
        tokenizer=offline_tokenizer(special_ids, LLAVA_CHAT_TEMPLATE),
        video_processor=LlavaOnevisionVideoProcessor(size=side, image_mean=half, image_std=half),
        num_image_tokens=(image_size // patch_size) ** 2,
        vision_feature_select_strategy="full",
        chat_template=LLAVA_CHAT_TEMPLATE,
    )  # fmt: skip


def tiny_processor(family: str = "qwen3_vl"):
    """The processor of a tiny model: at most 16 merged tokens per frame (LLaVA: 16 pooled tokens)."""
    if family == "qwen2_5_vl":
        return qwen2_5_vl_processor()
    if family == "llava_onevision":
        return llava_onevision_processor()
    return offline_processor(TINY_MAX_PIXELS_PER_FRAME)


def tiny_model(*, family: str = "qwen3_vl", seed: int = 0, moe: bool = False, attn_implementation: str = "sdpa",
               dtype: torch.dtype = torch.float32):  # fmt: skip
    """A tiny random model of `family`'s real architecture, in eval mode, deterministic for a given seed."""
    config = tiny_config(family, moe=moe)
    config._attn_implementation = attn_implementation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config)
    # Random weights make flat, near-uniform logits; a larger output scale makes greedy choices
    # decisive, so that tests comparing generated tokens are not decided by float ties.
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    model.generation_config.eos_token_id = None  # random weights: never stop early by chance
    model.generation_config.pad_token_id = config.get_text_config().pad_token_id
    return model.to(dtype).eval()


def random_model(name: str, *, device: str | torch.device = "cuda", dtype: torch.dtype = torch.bfloat16,
                 attn_implementation: str = "sdpa", seed: int = 0):  # fmt: skip
    """A randomly initialised model with the real shapes of a released checkpoint (`configs.real_config_of`:
    a Qwen3-VL size such as "8B", or "Qwen2.5-VL-7B", "Qwen3.5-9B", "LLaVA-OneVision-7B"), built on `device`."""
    config = real_config_of(name)
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype)
    model.generation_config.eos_token_id = None  # random weights: always generate the full length
    model.generation_config.pad_token_id = real_special_ids(name)["<|endoftext|>"]
    return model.eval()


def real_special_ids(name: str) -> dict[str, int]:
    """The special-token ids of a released checkpoint's tokenizer."""
    family = REAL_MODELS[name][0] if name in REAL_MODELS else "qwen3_vl"
    return {"qwen3_5": QWEN3_5_SPECIAL_IDS, "llava_onevision": LLAVA_SPECIAL_IDS}.get(family, QWEN_SPECIAL_IDS)


def real_processor(name: str, max_pixels_per_frame: int = 768 * 32 * 32):
    """An offline processor for random models of real shapes: the family's real processor with the
    checkpoint's special-token ids and a per-frame pixel budget (LLaVA: 384-pixel frames)."""
    family = REAL_MODELS[name][0] if name in REAL_MODELS else "qwen3_vl"
    ids = real_special_ids(name)
    if family == "qwen2_5_vl":
        return qwen2_5_vl_processor(max_pixels_per_frame * 28 * 28 // (32 * 32), ids)  # the same token budget
    if family == "llava_onevision":
        return llava_onevision_processor(384, 14, ids)
    return offline_processor(max_pixels_per_frame, ids)
