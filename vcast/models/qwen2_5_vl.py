"""V-CAST for Qwen2.5-VL: the Qwen route without deepstack, with window attention and timed M-RoPE.

Qwen2.5-VL's vision tower mixes windowed attention (windows of 112 x 112 pixels inside a frame
pair) with full attention over one frame pair at a time: no block attends across temporal groups,
so encoding in chunks of groups gives the features of one pass (tested). Its temporal rotary
position advances by `tokens_per_second * second_per_grid_ts` per group, so the processor's
`second_per_grid_ts` (seconds per temporal group, from the clip's metadata) must reach
`get_rope_index`; without it the step silently becomes `tokens_per_second`. Text after the video
continues at `start + max(h, w)`, below the video's last temporal position, and `generate`
continues every row at the last prompt position + 1, as the model's own unpruned generation does.
"""

from __future__ import annotations

from typing import Any

import torch

from ..video import VideoClip
from .base import register
from .mrope import MRopeAdapter
from .vision_attention import use_batched_vision_attention

_MERGED_PIXELS = 28 * 28  # one merged token: 2 x 2 patches of 14 pixels
_MIN_FRAME_TOKENS, _MAX_FRAME_TOKENS = 128, 768  # qwen-vl-utils' VIDEO_MIN_PIXELS / VIDEO_MAX_PIXELS in tokens


@register
class Qwen2_5_VLAdapter(MRopeAdapter):
    family = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)
    label = "Qwen2.5-VL"
    checkpoints = ("Qwen/Qwen2.5-VL-3B-Instruct", "Qwen/Qwen2.5-VL-7B-Instruct", "Qwen/Qwen2.5-VL-32B-Instruct",
                   "Qwen/Qwen2.5-VL-72B-Instruct")  # fmt: skip

    @classmethod
    def pixel_budget(cls, max_pixels_per_video: int) -> dict:
        return {"max_video_tokens": max_pixels_per_video // (32 * 32)}

    def video_kwargs(self, clip: VideoClip) -> dict[str, Any]:
        """Qwen2-VL's video processor caps pixels per frame: spread the video's token budget over the
        frames as qwen-vl-utils does (each frame between 128 and 768 merged tokens' worth)."""
        kwargs = super().video_kwargs(clip)
        budget = kwargs.pop("max_video_tokens", None)
        if budget is not None:
            per_frame = min(_MAX_FRAME_TOKENS * _MERGED_PIXELS, budget * _MERGED_PIXELS * 2 // clip.num_frames)
            per_frame = max(per_frame, int(_MIN_FRAME_TOKENS * _MERGED_PIXELS * 1.05))
            kwargs["size"] = {"shortest_edge": _MIN_FRAME_TOKENS * _MERGED_PIXELS, "longest_edge": per_frame}
        return kwargs

    def encode_chunk(self, chunk: torch.Tensor, groups: int, H: int, W: int) -> tuple[torch.Tensor, list]:
        grid = torch.tensor([[groups, H, W]], device=chunk.device)
        out = self.model.model.get_video_features(chunk, grid, return_dict=True)
        return out.pooler_output[0], []

    def speed_up_vision(self) -> bool:
        """Batched vision attention: one SDPA call per window size and layer instead of one per window (a
        32-frame clip has thousands of windows), the same features; SDPA only."""
        if self.model.config.vision_config._attn_implementation != "sdpa":
            return False
        use_batched_vision_attention(self.model)
        return True
