"""Model architectures written in code: tiny ones for tests and offline use, real shapes for benchmarks.

Every family V-CAST supports (Qwen3-VL dense and MoE, Qwen2.5-VL, Qwen3.5 dense and MoE,
LLaVA-OneVision) has a tiny configuration of its real architecture. The real shapes are those of the
public `config.json` files of the released checkpoints; with random weights they cost exactly what the
released models cost (same tensors, same kernels).
"""

from __future__ import annotations

from transformers import (
    LlavaOnevisionConfig,
    PreTrainedConfig,
    Qwen2_5_VLConfig,
    Qwen3_5Config,
    Qwen3_5MoeConfig,
    Qwen3VLConfig,
    Qwen3VLMoeConfig,
)

# Special-token ids shared by the tiny tokenizer (vcast.models.tiny) and the tiny configs.
TINY_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<image>",  # LLaVA-OneVision's placeholders (the Qwen families leave them unused)
    "<video>",
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
TINY_FAMILIES = ("qwen3_vl", "qwen3_vl_moe", "qwen2_5_vl", "qwen3_5", "qwen3_5_moe", "llava_onevision")


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


def tiny_config(family: str = "qwen3_vl", *, moe: bool = False) -> PreTrainedConfig:
    """A tiny configuration of `family`'s real architecture (one of TINY_FAMILIES); `moe=True` with
    "qwen3_vl" means "qwen3_vl_moe" (the older spelling)."""
    if moe and family == "qwen3_vl":
        family = "qwen3_vl_moe"
    builders = {
        "qwen3_vl": _tiny_qwen3_vl, "qwen3_vl_moe": _tiny_qwen3_vl, "qwen2_5_vl": _tiny_qwen2_5_vl,
        "qwen3_5": _tiny_qwen3_5, "qwen3_5_moe": _tiny_qwen3_5, "llava_onevision": _tiny_llava_onevision,
    }  # fmt: skip
    if family not in builders:
        raise ValueError(f"family must be one of {', '.join(TINY_FAMILIES)}, got {family!r}")
    return builders[family](moe=family.endswith("_moe"))


def _tiny_text(**overrides) -> dict:
    """The language model shared by the tiny families: 3 layers of 64 dims, a 320-token vocabulary."""
    return {"vocab_size": TINY_VOCAB_SIZE, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096,
            "pad_token_id": tiny_special_id("<|endoftext|>"), "bos_token_id": None, "eos_token_id": None,
            **overrides}  # fmt: skip


def _tiny_qwen3_vl(*, moe: bool = False) -> Qwen3VLConfig | Qwen3VLMoeConfig:
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
    text = _tiny_text(head_dim=16, rope_parameters=_rope(16, 10_000.0))
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


def _tiny_qwen2_5_vl(*, moe: bool = False) -> Qwen2_5_VLConfig:
    """A tiny Qwen2.5-VL: 2 vision blocks (windowed, then full attention) on 14-pixel patches with
    windows of 2 x 2 merged tokens, and 2 tokens per second of temporal rotary step."""
    vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
              "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 56,
              "fullatt_block_indexes": [1], "tokens_per_second": 2, "hidden_act": "silu", "in_channels": 3}  # fmt: skip
    rope = {"rope_type": "default", "rope_theta": 10_000.0, "mrope_section": [2, 3, 3]}  # 8 = head_dim 16 / 2
    return Qwen2_5_VLConfig(text_config=_tiny_text(rope_parameters=rope), vision_config=vision,
                            tie_word_embeddings=False, **_token_ids(True))  # fmt: skip


def _tiny_qwen3_5(*, moe: bool = False) -> Qwen3_5Config | Qwen3_5MoeConfig:
    """A tiny Qwen3.5 (or Qwen3.5-MoE): Qwen3-VL's vision without deepstack, and a hybrid language
    model of 4 layers alternating Gated DeltaNet (linear attention) and full attention."""
    vision = {**_VISION_COMMON, "depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
              "out_hidden_size": 64, "num_position_embeddings": 64}  # fmt: skip
    # 32-dim heads with a quarter rotary: 8 rotary dims, split (t, h, w) = 2:1:1 pairs, interleaved.
    rope = {"rope_type": "default", "rope_theta": 10_000.0, "partial_rotary_factor": 0.25,
            "mrope_section": [2, 1, 1], "mrope_interleaved": True}  # fmt: skip
    text = _tiny_text(num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                      rope_parameters=rope, layer_types=["linear_attention", "full_attention"] * 2,
                      linear_conv_kernel_dim=4, linear_key_head_dim=8, linear_value_head_dim=8,
                      linear_num_key_heads=2, linear_num_value_heads=4)  # fmt: skip
    if moe:
        text |= {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                 "shared_expert_intermediate_size": 32}  # fmt: skip
        text.pop("intermediate_size")
        return Qwen3_5MoeConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **_token_ids(True))
    return Qwen3_5Config(text_config=text, vision_config=vision, tie_word_embeddings=False, **_token_ids(True))


# LLaVA-OneVision's tiny SigLIP: 64-pixel frames of 8-pixel patches (8 x 8), pooled to 4 x 4 = 16 tokens.
TINY_LLAVA_IMAGE_SIZE = 64
TINY_LLAVA_PATCH = 8


def _tiny_llava_onevision(*, moe: bool = False) -> LlavaOnevisionConfig:
    """A tiny LLaVA-OneVision: a 2-layer SigLIP on 64-pixel frames, the 2-layer projector, the 2x
    pooling (16 tokens per frame) and one image_newline per video, on a 3-layer Qwen2."""
    vision = {"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 2, "image_size": TINY_LLAVA_IMAGE_SIZE, "patch_size": TINY_LLAVA_PATCH,
              "vision_use_head": False}  # fmt: skip
    text = _tiny_text(model_type="qwen2", rope_parameters={"rope_type": "default", "rope_theta": 10_000.0})
    side = TINY_LLAVA_IMAGE_SIZE
    return LlavaOnevisionConfig(
        text_config=text, vision_config=vision, image_token_index=tiny_special_id("<image>"),
        video_token_index=tiny_special_id("<video>"), vision_feature_layer=-1, vision_feature_select_strategy="full",
        image_grid_pinpoints=[[side, side], [side, 2 * side], [2 * side, side], [2 * side, 2 * side]],
        tie_word_embeddings=False,
    )  # fmt: skip


# -- real shapes of the other families (random weights; see `real_config`) ------------------------------------

QWEN3_5_SPECIAL_IDS = {"<|endoftext|>": 248044, "<|im_start|>": 248045, "<|im_end|>": 248046,
                       "<|vision_start|>": 248053, "<|vision_end|>": 248054, "<|image_pad|>": 248056,
                       "<|video_pad|>": 248057}  # fmt: skip
LLAVA_SPECIAL_IDS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<image>": 151646,
                     "<video>": 151647}  # fmt: skip


def _qwen2_5_vl_7b() -> Qwen2_5_VLConfig:
    """Qwen/Qwen2.5-VL-7B-Instruct's config.json."""
    text = {"vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
            "num_attention_heads": 28, "num_key_value_heads": 4, "max_position_embeddings": 128000,
            "rms_norm_eps": 1e-6, "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0,
                                                      "mrope_section": [16, 24, 24]}}  # fmt: skip
    vision = {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "out_hidden_size": 3584,
              "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
              "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2, "hidden_act": "silu"}  # fmt: skip
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **_token_ids(False))


def _qwen3_5_9b() -> Qwen3_5Config:
    """Qwen/Qwen3.5-9B's config.json (without the multi-token-prediction head, which generation does not use)."""
    rope = {"rope_type": "default", "rope_theta": 10_000_000.0, "partial_rotary_factor": 0.25,
            "mrope_section": [11, 11, 10], "mrope_interleaved": True}  # fmt: skip
    text = {"vocab_size": 248320, "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 32,
            "num_attention_heads": 16, "num_key_value_heads": 4, "head_dim": 256, "max_position_embeddings": 262144,
            "rms_norm_eps": 1e-6, "rope_parameters": rope, "full_attention_interval": 4, "linear_conv_kernel_dim": 4,
            "linear_key_head_dim": 128, "linear_value_head_dim": 128, "linear_num_key_heads": 16,
            "linear_num_value_heads": 32}  # fmt: skip
    vision = {**_VISION_COMMON, "depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "num_heads": 16,
              "out_hidden_size": 4096, "num_position_embeddings": 2304, "hidden_act": "gelu_pytorch_tanh"}  # fmt: skip
    ids = {"image_token_id": 248056, "video_token_id": 248057, "vision_start_token_id": 248053,
           "vision_end_token_id": 248054}  # fmt: skip
    return Qwen3_5Config(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)


def _llava_onevision_7b() -> LlavaOnevisionConfig:
    """llava-hf/llava-onevision-qwen2-7b-ov-hf's config.json (Qwen2-7B + SigLIP-so400m without its last
    layer); llava-hf/LLaVA-Video-7B-Qwen2-hf has the same architecture."""
    text = {"model_type": "qwen2", "vocab_size": 152128, "hidden_size": 3584, "intermediate_size": 18944,
            "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
            "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0}}  # fmt: skip
    vision = {"model_type": "siglip_vision_model", "hidden_size": 1152, "intermediate_size": 4304,
              "num_hidden_layers": 26, "num_attention_heads": 16, "image_size": 384, "patch_size": 14,
              "vision_use_head": False}  # fmt: skip
    pinpoints = [[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)]
    return LlavaOnevisionConfig(text_config=text, vision_config=vision, image_token_index=151646,
                                video_token_index=151647, vision_feature_layer=-1,
                                vision_feature_select_strategy="full", image_grid_pinpoints=pinpoints,
                                tie_word_embeddings=False)  # fmt: skip


# name -> (family, config builder): the real shapes `VideoQA.random_weights(name)` builds.
REAL_MODELS = {
    "Qwen2.5-VL-7B": ("qwen2_5_vl", _qwen2_5_vl_7b),
    "Qwen3.5-9B": ("qwen3_5", _qwen3_5_9b),
    "LLaVA-OneVision-7B": ("llava_onevision", _llava_onevision_7b),
}


def real_model_names() -> tuple[str, ...]:
    """Every name `real_config` accepts: Qwen3-VL sizes ("8B" or "Qwen3-VL-8B") and the other families."""
    return (*(f"Qwen3-VL-{size}" for size in REAL_SIZES), *REAL_MODELS)


def real_config_of(name: str) -> PreTrainedConfig:
    """The architecture of a released checkpoint by short name: a Qwen3-VL size ("8B", "Qwen3-VL-8B",
    "30B-A3B") or one of REAL_MODELS ("Qwen2.5-VL-7B", "Qwen3.5-9B", "LLaVA-OneVision-7B")."""
    if name in REAL_MODELS:
        return REAL_MODELS[name][1]()
    size = name.removeprefix("Qwen3-VL-")
    if size in REAL_SIZES:
        return real_config(size)
    raise ValueError(f"model must be one of {', '.join(real_model_names())} (or a Qwen3-VL size), got {name!r}")
