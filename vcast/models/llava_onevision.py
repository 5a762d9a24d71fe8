"""V-CAST for LLaVA-OneVision and the llava-hf LLaVA-Video conversions (Qwen2 LLM + SigLIP).

Each sampled frame is one temporal group: SigLIP encodes it alone (27 x 27 patches at 384 pixels),
the projector maps the patches, and a 2x bilinear pooling leaves 14 x 14 = 196 tokens per frame.
After the frames the model appends ONE `image_newline` token for the whole video: it is not a
frame token, so V-CAST never selects it and always keeps it, in its place after the last frame.
Positions are 1-D: kept tokens keep their original indices, so the pruned `position_ids` have
gaps, and an explicit all-ones `attention_mask` always goes with them (without a mask, transformers
reads gaps in position ids as boundaries of packed sequences and the attention is wrong).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ..core import Selection
from ..video import VideoClip
from .base import ModelAdapter, PassInputs, VisionFeatures, kept_rows, register, selection_on
from .chunks import encode_in_chunks
from .inputs import clip_to_processor_kwargs

# Frames per vision chunk: SigLIP-so400m activations of 16 frames stay a few hundred MB in bf16.
_CHUNK_FRAMES = 16


@register
class LlavaOnevisionAdapter(ModelAdapter):
    family = "llava_onevision"
    model_types = ("llava_onevision",)
    label = "LLaVA-OneVision / LLaVA-Video"
    checkpoints = ("llava-hf/llava-onevision-qwen2-7b-ov-hf", "llava-hf/LLaVA-Video-7B-Qwen2-hf",
                   "llava-hf/llava-onevision-qwen2-0.5b-ov-hf")  # fmt: skip
    frames_per_group = 1

    def video_kwargs(self, clip: VideoClip) -> dict[str, Any]:
        return {**clip_to_processor_kwargs(clip), **self.processor_kwargs}

    @property
    def vision_tower(self) -> torch.nn.Module:
        return self.model.model.vision_tower

    @property
    def pooled_side(self) -> int:
        """Tokens per side of a frame after the 2x pooling (14 for 384-pixel SigLIP with 14-pixel patches)."""
        vision = self.model.config.vision_config
        return math.ceil(vision.image_size // vision.patch_size / 2)

    def encode(self, inputs, *, chunk_patches: int | None = None, chunk_groups: int | None = None) -> VisionFeatures:
        """inputs["pixel_values_videos"]: (1, F, 3, S, S) frames -> F groups of pooled tokens + the newline.

        SigLIP sees each frame alone, so chunks of frames give the features of one pass.
        `chunk_patches` is accepted for symmetry with the Qwen families and sets the chunk by
        SigLIP patches per frame when given."""
        pixels = inputs["pixel_values_videos"]  # (1, F, 3, S, S)
        frames = int(pixels.shape[1])
        side = self.pooled_side
        per_frame = side * side
        vision = self.model.config.vision_config
        if chunk_groups is None:
            patches = (vision.image_size // vision.patch_size) ** 2
            chunk_groups = _CHUNK_FRAMES if chunk_patches is None else max(1, chunk_patches // patches)
        buffers: dict[str, torch.Tensor] = {}

        def encode_chunk(start: int, stop: int, chunk: torch.Tensor) -> None:
            out = self.model.model.get_video_features(chunk.unsqueeze(0), return_dict=True).pooler_output
            tokens = out[0]  # ((stop - start) * per_frame + 1, D): the frames, then the newline
            if not buffers:
                buffers["embeds"] = tokens.new_empty(frames * per_frame, tokens.shape[-1])
                buffers["tail"] = tokens[-1:].clone()  # (1, D) image_newline, the same in every chunk
            buffers["embeds"][start * per_frame : stop * per_frame] = tokens[:-1]

        encode_in_chunks(
            pixels[0], groups=frames, rows_per_group=1, most_groups=chunk_groups,
            device=self.vision_tower.device, dtype=self.vision_tower.dtype, encode_chunk=encode_chunk,
        )  # fmt: skip
        return VisionFeatures(embeds=buffers["embeds"], extras=(), grid=(frames, side, side), tail=buffers["tail"])

    def positions(self, prompt: dict, device: torch.device | None = None) -> torch.Tensor:
        """(1, L) the plain sequence positions of the unpruned prompt (as generate derives them)."""
        mask = prompt.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(prompt["input_ids"])
        positions = (mask.long().cumsum(-1) - 1).clamp_min(0)  # (1, L)
        return positions.to(device) if device is not None else positions

    def pass_inputs(self, inputs, features: VisionFeatures, positions: torch.Tensor,
                    selection: Selection | None = None) -> PassInputs:  # fmt: skip
        input_ids = inputs["input_ids"]  # (1, L)
        seq_keep = self.sequence_keep(input_ids, features, selection)  # (L,): the newline is always kept
        if selection is not None:
            selection = selection_on(selection, features.embeds.device)
        frames = kept_rows(features.embeds, selection)  # (K, D)
        video = torch.cat([frames, features.tail], dim=0).unsqueeze(0)  # (1, K+1, D)
        kept_ids = input_ids[:, seq_keep]  # (1, L')
        return PassInputs(
            input_ids=kept_ids,
            # V-CAST: always explicit; gapped position ids without a mask would be read as packed sequences.
            attention_mask=torch.ones_like(kept_ids),
            position_ids=positions[:, seq_keep],  # (1, L') original positions, with gaps
            mm_encoder_outputs={"video": BaseModelOutputWithPooling(pooler_output=video)},
            num_visual_tokens=int(video.shape[1]),
        )

    def processed_size(self, features: VisionFeatures) -> tuple[int, int]:
        size = self.model.config.vision_config.image_size
        return size, size

