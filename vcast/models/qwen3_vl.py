"""V-CAST for Qwen3-VL (dense and MoE) through the public transformers API.

The route (see docs/DESIGN-NOTES.md): run the vision tower once, in chunks of temporal groups;
compute the unpruned 3-D positions with the model's own `get_rope_index`; select with
`vcast.core`; hand the pruned ids, a 4-row position tensor and the pruned merged + deepstack
features to `model.generate` via `mm_encoder_outputs`. No transformers class is modified, so any
attention implementation works and other models in the process are untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

SUPPORTED_MODEL_TYPES = ("qwen3_vl", "qwen3_vl_moe")
DEFAULT_VISION_CHUNK_GROUPS = 16


@dataclass(frozen=True)
class VisionFeatures:
    """The vision tower's output for one video, in LLM order (group-major, then row, then column).

    embeds: (T*N, D) merged tokens; deepstack: one (T*N, D) tensor per deepstack layer;
    grid: (T, h, w), T temporal groups of h x w merged tokens (N = h * w).
    """

    embeds: torch.Tensor
    deepstack: tuple[torch.Tensor, ...]
    grid: tuple[int, int, int]

    def grouped(self) -> torch.Tensor:
        """(T, N, D) view of the merged tokens, the input of `vcast.select_tokens`."""
        T, h, w = self.grid
        return self.embeds.view(T, h * w, -1)


@dataclass(frozen=True)
class PassInputs:
    """Everything `model.generate` needs for one pass (pruned or not); batch size 1.

    input_ids, attention_mask: (1, L'); position_ids: (4, 1, L'): row 0 is the plain sequence
    index (cache positions and the causal mask), rows 1-3 the original (t, h, w) rotary positions.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    mm_encoder_outputs: dict
    num_visual_tokens: int

    def generate_kwargs(self) -> dict:
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "position_ids": self.position_ids,
            "mm_encoder_outputs": self.mm_encoder_outputs,
        }


def check_supported(model) -> None:
    """Fail early, naming the supported families, for a checkpoint of another architecture."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"V-CAST supports Qwen3-VL checkpoints (dense 2B/4B/8B/32B and MoE 30B-A3B; model types "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}); this checkpoint is a {model_type!r} model."
        )


def check_single_video(inputs) -> None:
    if inputs["input_ids"].shape[0] != 1 or inputs["video_grid_thw"].shape[0] != 1:
        raise ValueError(
            "V-CAST answers one question about one video at a time (batch size 1); "
            f"got {inputs['input_ids'].shape[0]} prompts with {inputs['video_grid_thw'].shape[0]} videos."
        )


def encode_video(
    model, pixel_values_videos: torch.Tensor, video_grid_thw: torch.Tensor, *, chunk_groups: int | None = None
) -> VisionFeatures:
    """Run the vision tower over one video, `chunk_groups` temporal groups at a time.

    pixel_values_videos: (T*H*W, C*2*16*16) patches from the processor; video_grid_thw: (1, 3)
    patch grid (T, H, W). Qwen3-VL's vision attention never crosses temporal groups, and its
    position embeddings depend on (h, w) only, so encoding in chunks gives the same features while
    activation memory stays that of one chunk. None encodes everything at once.
    """
    T, H, W = (int(v) for v in video_grid_thw[0].tolist())
    merge = model.config.vision_config.spatial_merge_size
    rows_per_group = H * W
    step = T if chunk_groups is None else max(1, chunk_groups)
    embeds, deepstack = [], []
    for start in range(0, T, step):
        stop = min(start + step, T)
        grid = torch.tensor([[stop - start, H, W]], device=video_grid_thw.device, dtype=video_grid_thw.dtype)
        chunk = pixel_values_videos[start * rows_per_group : stop * rows_per_group]
        out = model.model.get_video_features(chunk, grid, return_dict=True)
        embeds.append(out.pooler_output[0])  # (groups * N, D)
        deepstack.append([layer[0] for layer in out.deepstack_features])
    return VisionFeatures(
        embeds=torch.cat(embeds) if len(embeds) > 1 else embeds[0],
        deepstack=tuple(torch.cat(layer) if len(layer) > 1 else layer[0] for layer in zip(*deepstack, strict=True)),
        grid=(T, H // merge, W // merge),
    )


def rope_positions(model, inputs) -> torch.Tensor:
    """(3, 1, L) unpruned (t, h, w) rotary positions of the prompt, from the model's own rule."""
    positions, _ = model.model.get_rope_index(
        inputs["input_ids"],
        mm_token_type_ids=inputs["mm_token_type_ids"],
        video_grid_thw=inputs["video_grid_thw"],
        attention_mask=inputs.get("attention_mask"),
    )
    return positions


def pass_inputs(
    model, inputs, features: VisionFeatures, positions: torch.Tensor, keep: torch.Tensor | None = None
) -> PassInputs:
    """Build one pass's generation inputs; `keep` (K,) ascending flat indices into T*N, or None for all.

    Kept video tokens keep their original rotary positions (rows 1-3); dropped ones vanish from
    the ids, the features and every deepstack layer alike, so the LLM never sees them.
    """
    input_ids = inputs["input_ids"]  # (1, L)
    video_token_id = model.config.video_token_id
    is_video = input_ids[0] == video_token_id  # (L,)
    num_video = int(features.embeds.shape[0])
    if int(is_video.sum()) != num_video:
        raise ValueError(f"the prompt holds {int(is_video.sum())} video tokens but the video has {num_video}")
    if keep is None:
        seq_keep = torch.ones_like(is_video)
        embeds, deepstack = features.embeds, features.deepstack
    else:
        keep = keep.to(input_ids.device)
        video_slots = is_video.nonzero().squeeze(1)  # (T*N,) sequence index of each video token
        seq_keep = ~is_video
        seq_keep[video_slots[keep]] = True
        keep = keep.to(features.embeds.device)
        # V-CAST: the same keep indices slice the merged tokens and every deepstack layer.
        embeds = features.embeds.index_select(0, keep)
        deepstack = tuple(layer.index_select(0, keep) for layer in features.deepstack)
    kept_ids = input_ids[:, seq_keep]  # (1, L')
    length = kept_ids.shape[1]
    text_row = torch.arange(length, device=input_ids.device).view(1, 1, length)
    position_ids = torch.cat([text_row, positions[:, :, seq_keep]], dim=0)  # (4, 1, L')
    encoder_output = BaseModelOutputWithDeepstackFeatures(
        pooler_output=(embeds,), deepstack_features=[(layer,) for layer in deepstack]
    )
    return PassInputs(
        input_ids=kept_ids,
        attention_mask=torch.ones_like(kept_ids),
        position_ids=position_ids,
        mm_encoder_outputs={"video": encoder_output},
        num_visual_tokens=int(embeds.shape[0]),
    )
