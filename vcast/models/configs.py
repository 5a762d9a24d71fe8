"""Qwen3-VL architectures written in code: tiny ones for tests and offline use, real shapes for benchmarks.

The real shapes are those of the public `config.json` files of the Qwen3-VL Instruct checkpoints;
with random weights they cost exactly what the released models cost (same tensors, same kernels).
"""

from __future__ import annotations

from transformers import Qwen3VLConfig, Qwen3VLMoeConfig

# Special-token ids shared by the tiny tokenizer (vcast.models.tiny) and the tiny configs.
TINY_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
TINY_BYTE_VOCAB = 256  # a byte-level tokenizer: ids 0-255 are bytes, specials follow
TINY_VOCAB_SIZE = 320


def tiny_special_id(token: str) -> int:
    return TINY_BYTE_VOCAB + TINY_SPECIAL_TOKENS.index(token)


_VISION_COMMON = {"patch_size": 16, "temporal_patch_size": 2, "spatial_merge_size": 2, "in_channels": 3}

_REAL_TEXT = {
    # size: (hidden, intermediate, layers, heads, kv_heads, tie_embeddings)
    "2B": (2048, 6144, 28, 16, 8, True),
    "4B": (2560, 9728, 36, 32, 8, True),
    "8B": (4096, 12288, 36, 32, 8, False),
    "32B": (5120, 25600, 64, 64, 8, False),
}
_REAL_VISION = {
    # size: (depth, hidden, intermediate, heads, deepstack layers)
    "2B": (24, 1024, 4096, 16, [5, 11, 17]),
    "4B": (24, 1024, 4096, 16, [5, 11, 17]),
    "8B": (27, 1152, 4304, 16, [8, 16, 24]),
    "32B": (27, 1152, 4304, 16, [8, 16, 24]),
    "30B-A3B": (27, 1152, 4304, 16, [8, 16, 24]),
}
REAL_SIZES = ("2B", "4B", "8B", "32B", "30B-A3B")


def _token_ids(tiny: bool) -> dict:
    if tiny:
        return {
            "image_token_id": tiny_special_id("<|image_pad|>"),
            "video_token_id": tiny_special_id("<|video_pad|>"),
            "vision_start_token_id": tiny_special_id("<|vision_start|>"),
            "vision_end_token_id": tiny_special_id("<|vision_end|>"),
        }
    return {"image_token_id": 151655, "video_token_id": 151656, "vision_start_token_id": 151652,
            "vision_end_token_id": 151653}  # fmt: skip


def _rope(head_dim: int, theta: float) -> dict:
    # Qwen3-VL splits the rotary half-dimension over (t, h, w) as 24:20:20 for head_dim 128.
    half = head_dim // 2
    section = [half - 2 * (half * 20 // 64), half * 20 // 64, half * 20 // 64]
    return {"rope_type": "default", "rope_theta": theta, "mrope_section": section, "mrope_interleaved": True}


def tiny_config(*, moe: bool = False) -> Qwen3VLConfig | Qwen3VLMoeConfig:
    """A tiny Qwen3-VL (dense) or Qwen3-VL-MoE of the real architecture: 2 vision blocks with
    deepstack on both, 3 text layers, 32x32-pixel merged tokens, a 320-token vocabulary."""
    vision = {
        **_VISION_COMMON,
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": 64,
        "num_position_embeddings": 64,
        "deepstack_visual_indexes": [0, 1],
    }
    text = {
        "vocab_size": TINY_VOCAB_SIZE,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 4096,
        "rope_parameters": _rope(16, 10_000.0),
        "pad_token_id": tiny_special_id("<|endoftext|>"),
    }
    if moe:
        text |= {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "decoder_sparse_step": 1}
        return Qwen3VLMoeConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **_token_ids(True))
    return Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **_token_ids(True))


def real_config(size: str) -> Qwen3VLConfig | Qwen3VLMoeConfig:
    """The architecture of Qwen/Qwen3-VL-{size}-Instruct (size in REAL_SIZES), random weights implied."""
    if size not in REAL_SIZES:
        raise ValueError(f"size must be one of {', '.join(REAL_SIZES)}, got {size!r}")
    depth, v_hidden, v_inter, v_heads, deepstack = _REAL_VISION[size]
    common_text = {"vocab_size": 151936, "head_dim": 128, "max_position_embeddings": 262144,
                   "rope_parameters": _rope(128, 5_000_000.0), "rms_norm_eps": 1e-6}  # fmt: skip
    if size == "30B-A3B":
        text = {**common_text, "hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 48,
                "num_attention_heads": 32, "num_key_value_heads": 4, "num_experts": 128,
                "num_experts_per_tok": 8, "moe_intermediate_size": 768}  # fmt: skip
        tie, out_hidden, cls = False, 2048, Qwen3VLMoeConfig
    else:
        hidden, inter, layers, heads, kv, tie = _REAL_TEXT[size]
        text = {**common_text, "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
                "num_attention_heads": heads, "num_key_value_heads": kv}  # fmt: skip
        out_hidden, cls = hidden, Qwen3VLConfig
    vision = {**_VISION_COMMON, "depth": depth, "hidden_size": v_hidden, "intermediate_size": v_inter,
              "num_heads": v_heads, "out_hidden_size": out_hidden, "num_position_embeddings": 2304,
              "deepstack_visual_indexes": deepstack}  # fmt: skip
    return cls(text_config=text, vision_config=vision, tie_word_embeddings=tie, **_token_ids(False))
