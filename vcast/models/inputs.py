"""Processor inputs from a decoded clip: the frames exactly as `read_video` sampled them."""

from __future__ import annotations

from typing import Any

from ..video import VideoClip


def clip_to_processor_kwargs(clip: VideoClip) -> dict[str, Any]:
    """Keyword arguments for a transformers video-LLM processor (Qwen3-VL) that reproduce `clip` exactly.

    Returns {"videos": [frames (F, H, W, 3) uint8], "video_metadata": [dict], "do_sample_frames": False},
    to splat into `processor(text=..., **inputs, return_tensors="pt")`. The processor then uses these
    F frames as they are (no resampling) and writes the timestamps of its temporal groups as
    frames_indices / fps, which equals `clip.timestamps` for constant-frame-rate sources (Qwen's own
    convention; for variable frame rates it is the average-rate approximation).
    """
    height, width = clip.size
    metadata = {
        "total_num_frames": clip.total_frames,
        "fps": clip.fps,
        "duration": clip.duration,
        "width": width,
        "height": height,
        "video_backend": clip.backend,
        "frames_indices": clip.indices.tolist(),
    }
    return {"videos": [clip.frames], "video_metadata": [metadata], "do_sample_frames": False}
