"""What the Qwen families share: M-RoPE positions (t, h, w), temporal groups of 2 frames, merged patches.

Qwen3-VL, Qwen3.5 and Qwen2.5-VL all turn each pair of sampled frames into one temporal group of
h x w merged tokens, give every video token a 3-D rotary position from the model's own
`get_rope_index`, and take visual features through `generate(mm_encoder_outputs=...)`. A pruned
pass keeps the ids of the kept `<|video_pad|>` tokens, a 4-row `position_ids` (row 0 the plain
sequence index `arange(L')`, for cache positions and the causal mask; rows 1-3 the original (t, h, w)
positions) and the kept features. `generate` extends every row by +1 per new token (from the last
prompt position, the same as the model's own unpruned generation, which is what the tests compare).
"""

from __future__ import annotations

import inspect
from abc import abstractmethod
from typing import Any

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ..core import Selection
from ..video import VideoClip
from .base import ModelAdapter, PassInputs, VisionFeatures, kept_rows, selection_on
from .chunks import encode_in_chunks
from .inputs import clip_to_processor_kwargs

# Patches per vision chunk: large enough for efficient matrix products and few launches per
# patch, small enough that the vision tower's activations stay about 300 MB at 8B scale (below
# the LLM prefill's own peak with V-CAST at R = 0.25; docs/BENCHMARKS.md section 4.4).
DEFAULT_VISION_CHUNK_PATCHES = 8192

# Arguments of the models' `get_rope_index` that the processor may produce (names differ by family).
_ROPE_KEYS = ("mm_token_type_ids", "image_grid_thw", "video_grid_thw", "second_per_grid_ts", "attention_mask")


class MRopeAdapter(ModelAdapter):
    """The Qwen route; subclasses say how one chunk is encoded and what a pass's features look like."""

    frames_per_group = 2
    prompt_keys = ("input_ids", "mm_token_type_ids", "video_grid_thw", "second_per_grid_ts", "attention_mask")

    def video_kwargs(self, clip: VideoClip) -> dict[str, Any]:
        return {**clip_to_processor_kwargs(clip), **self.processor_kwargs}

    def check_single_video(self, inputs) -> None:
        if inputs["input_ids"].shape[0] != 1 or inputs["video_grid_thw"].shape[0] != 1:
            raise ValueError(
                "V-CAST answers one question about one video at a time (batch size 1); "
                f"got {inputs['input_ids'].shape[0]} prompts with {inputs['video_grid_thw'].shape[0]} videos."
            )

    @property
    def vision_tower(self) -> torch.nn.Module:
        return self.model.model.visual

    @property
    def merge(self) -> int:
        return self.model.config.vision_config.spatial_merge_size

    # -- vision -------------------------------------------------------------------------------------

    def encode(self, inputs, *, chunk_patches: int = DEFAULT_VISION_CHUNK_PATCHES,
               chunk_groups: int | None = None) -> VisionFeatures:  # fmt: skip
        """Run the vision tower over one video, `chunk_groups` temporal groups at a time.

        inputs["pixel_values_videos"]: (T*H*W, C*2*p*p) patches, on any device (each chunk moves to
        the vision tower's device when its turn comes); inputs["video_grid_thw"]: (1, 3) = (T, H, W).
        The vision attention never crosses temporal groups, and the position embeddings depend on
        (h, w) only, so chunks give the same features as one pass with the activation memory of a
        chunk. chunk_groups=None fits as many groups as `chunk_patches` patches allow.
        """
        T, H, W = (int(v) for v in inputs["video_grid_thw"][0].tolist())
        per_group = (H // self.merge) * (W // self.merge)
        most = chunk_groups if chunk_groups is not None else chunk_patches // (H * W)
        buffers: dict[str, Any] = {}

        def encode_chunk(start: int, stop: int, chunk: torch.Tensor) -> None:
            merged, layers = self.encode_chunk(chunk, stop - start, H, W)  # (n*N, D), [(n*N, D'), ...]
            if not buffers:  # the whole video's buffers: no concatenation copies at the end
                buffers["embeds"] = merged.new_empty(T * per_group, merged.shape[-1])
                buffers["extras"] = tuple(layer.new_empty(T * per_group, layer.shape[-1]) for layer in layers)
            rows = slice(start * per_group, stop * per_group)
            buffers["embeds"][rows] = merged
            for buffer, layer in zip(buffers["extras"], layers, strict=True):
                buffer[rows] = layer

        encode_in_chunks(
            inputs["pixel_values_videos"], groups=T, rows_per_group=H * W, most_groups=most,
            device=self.vision_tower.device, dtype=self.vision_dtype, encode_chunk=encode_chunk,
        )  # fmt: skip
        return VisionFeatures(embeds=buffers["embeds"], extras=buffers["extras"],
                              grid=(T, H // self.merge, W // self.merge))  # fmt: skip

    @property
    def vision_dtype(self) -> torch.dtype:
        return self.vision_tower.patch_embed.proj.weight.dtype

    @abstractmethod
    def encode_chunk(self, chunk: torch.Tensor, groups: int, H: int, W: int
                     ) -> tuple[torch.Tensor, list[torch.Tensor]]:  # fmt: skip
        """(groups*H*W, C*2*p*p) patches on the device -> merged tokens (groups*N, D) and the
        per-token layers that go with them (deepstack; empty for families without)."""

    def encoder_output(self, embeds: torch.Tensor, extras: tuple[torch.Tensor, ...]):
        """The family's `mm_encoder_outputs["video"]` for the kept tokens."""
        return BaseModelOutputWithPooling(pooler_output=(embeds,))

    # -- positions ----------------------------------------------------------------------------------

    def positions(self, prompt: dict, device: torch.device | None = None) -> torch.Tensor:
        """(3, 1, L) unpruned (t, h, w) rotary positions of the prompt, from the model's own rule.

        Computed where `prompt` lives: transformers' rule runs a few small tensor operations per
        frame pair, each a kernel launch and some a device sync when the ids are on a GPU; on host
        copies (`prompt_on_host`) it costs a fraction of that and overlaps the vision tower's GPU work.
        Every argument the processor produced and the model's rule takes is passed (Qwen2.5-VL's
        `second_per_grid_ts`: without it, the temporal step silently becomes 1).
        """
        rule = self.model.model.get_rope_index
        accepted = inspect.signature(rule).parameters
        kwargs = {key: prompt[key] for key in _ROPE_KEYS if key in accepted and prompt.get(key) is not None}
        positions, _ = rule(prompt["input_ids"], **kwargs)
        device = torch.device(device) if device is not None else positions.device
        if device != positions.device:
            if device.type == "cuda" and positions.device.type == "cpu":
                positions = positions.pin_memory()
            positions = positions.to(device, non_blocking=True)
        return positions

    # -- pass inputs --------------------------------------------------------------------------------

    def pass_inputs(self, inputs, features: VisionFeatures, positions: torch.Tensor,
                    selection: Selection | None = None) -> PassInputs:  # fmt: skip
        """Kept video tokens keep their original rotary positions (rows 1-3); dropped ones vanish
        from the ids, the features and every per-token layer alike, so the LLM never sees them."""
        input_ids = inputs["input_ids"]  # (1, L)
        seq_keep = self.sequence_keep(input_ids, features, selection)  # (L,)
        if selection is not None:
            selection = selection_on(selection, features.embeds.device)
        # V-CAST: the same selection slices (or merges) the merged tokens and every deepstack layer.
        embeds = kept_rows(features.embeds, selection)
        extras = tuple(kept_rows(layer, selection) for layer in features.extras)
        kept_ids = input_ids[:, seq_keep]  # (1, L')
        length = kept_ids.shape[1]
        text_row = torch.arange(length, device=input_ids.device).view(1, 1, length)
        position_ids = torch.cat([text_row, positions[:, :, seq_keep]], dim=0)  # (4, 1, L')
        return PassInputs(
            input_ids=kept_ids,
            attention_mask=torch.ones_like(kept_ids),
            position_ids=position_ids,
            mm_encoder_outputs={"video": self.encoder_output(embeds, extras)},
            num_visual_tokens=int(embeds.shape[0]),
        )

    def processed_size(self, features: VisionFeatures) -> tuple[int, int]:
        side = self.merge * self.model.config.vision_config.patch_size
        return features.grid[1] * side, features.grid[2] * side

