"""V-CAST for Qwen3-VL (dense and MoE) through the public transformers API.

The route (see docs/DESIGN-NOTES.md): run the vision tower once, in chunks of temporal groups;
compute the unpruned 3-D positions with the model's own `get_rope_index`; select; hand the pruned
ids, a 4-row position tensor and the pruned merged + deepstack features to `model.generate` via
`mm_encoder_outputs`. No transformers class is modified, so any attention implementation works and
other models in the process are untouched.
"""

from __future__ import annotations

import torch
from transformers.vision_utils import (
    get_vision_cu_seqlens,
    get_vision_interpolation_indices_and_weights,
    get_vision_position_ids,
)

from .base import register
from .mrope import MRopeAdapter
from .vision_attention import use_batched_vision_attention
from .vision_fast import use_fused_vision_attention, use_linear_patch_embed


@register
class Qwen3VLAdapter(MRopeAdapter):
    """Qwen3-VL, dense and MoE: M-RoPE, 2 frames per group, deepstack features sliced with the tokens."""

    family = "qwen3_vl"
    model_types = ("qwen3_vl", "qwen3_vl_moe")
    label = "Qwen3-VL"
    checkpoints = (
        "Qwen/Qwen3-VL-2B-Instruct", "Qwen/Qwen3-VL-4B-Instruct", "Qwen/Qwen3-VL-8B-Instruct",
        "Qwen/Qwen3-VL-32B-Instruct", "Qwen/Qwen3-VL-30B-A3B-Instruct",
    )  # fmt: skip

    @classmethod
    def pixel_budget(cls, max_pixels_per_video: int) -> dict:
        # Qwen3-VL's video processor budgets pixels over the whole clip, and caps each frame as the
        # reference qwen-vl-utils does.
        return {"size": {"shortest_edge": 128 * 32 * 32, "longest_edge": max_pixels_per_video},
                "cap_pixels_per_frame": True}  # fmt: skip

    def encode_chunk(self, chunk: torch.Tensor, groups: int, H: int, W: int) -> tuple[torch.Tensor, list]:
        grid = torch.tensor([[groups, H, W]])  # on the host: shapes only, no device sync
        out = self.model.model.get_video_features(chunk, grid, return_dict=True, **self._geometry(groups, H, W))
        # The model's own output class for its video features (not exported by transformers): pass
        # inputs hand the kept features back in it.
        self.__dict__["_output_type"] = type(out)
        return out.pooler_output[0], [layer[0] for layer in getattr(out, "deepstack_features", None) or ()]

    def encoder_output(self, embeds: torch.Tensor, extras: tuple[torch.Tensor, ...]):
        output_type = self.__dict__.get("_output_type")
        if output_type is None:
            raise ValueError("pass_inputs needs the features of this adapter's encode()")
        return output_type(pooler_output=(embeds,), deepstack_features=[(layer,) for layer in extras])

    def _geometry(self, groups: int, H: int, W: int) -> dict:
        """The vision tower's shape-only inputs for a chunk of `groups` groups of H x W patches.

        Computed once per chunk size with transformers' own helpers and handed to every chunk, so the
        vision forward neither recomputes them nor waits on the device for `.item()`/`.tolist()`.
        """
        cache = self.__dict__.setdefault("_geometries", {})
        key = (groups, H, W)
        if key not in cache:
            visual = self.vision_tower
            grid = torch.tensor([[groups, H, W]], device=visual.device)
            interp_indices, interp_weights = get_vision_interpolation_indices_and_weights(
                grid, num_grid_per_side=visual.num_grid_per_side, mode=visual.interpolation_mode,
                align_corners=visual.interpolation_align_corners, spatial_merge_size=visual.spatial_merge_size,
            )  # fmt: skip
            cache[key] = {
                "interp_indices": interp_indices,
                "interp_weights": interp_weights,
                "position_ids": get_vision_position_ids(grid, visual.spatial_merge_size),
                "cu_seqlens": get_vision_cu_seqlens(grid),
                "max_seqlen": H * W,  # every segment is one group of H x W patches
            }
        return cache[key]

    def speed_up_vision(self) -> bool:
        """Batched vision attention, fused rotary attention and the patch embedding as a matrix
        product (`vision_attention`, `vision_fast`): the same features, faster; SDPA only."""
        if self.model.config.vision_config._attn_implementation != "sdpa":
            return False
        use_batched_vision_attention(self.model)
        use_fused_vision_attention(self.model)
        use_linear_patch_embed(self.model)
        return True
