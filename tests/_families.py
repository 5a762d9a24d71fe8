"""Tiny models of every supported family and their inputs, for the exactness tests (CPU, fp32)."""

from __future__ import annotations

import numpy as np
import torch

from vcast.models.base import adapter_for
from vcast.models.tiny import tiny_model, tiny_processor
from vcast.video import VideoClip

# (family name of VideoQA.tiny, the tiny model's family module): every family of the adapter interface.
FAMILIES = ("qwen3_vl", "qwen3_vl_moe", "qwen2_5_vl", "qwen3_5", "llava_onevision")
QUESTION = "What happens in this video?"


def random_clip(num_frames: int = 12, height: int = 96, width: int = 160, seed: int = 0) -> VideoClip:
    """Random frames at 10 fps, every 5th frame of a 60-frame source (timestamps 0, 0.5, 1.0, ...)."""
    frames = np.random.default_rng(seed).integers(0, 255, (num_frames, height, width, 3), dtype=np.uint8)
    indices = np.arange(num_frames) * 5
    return VideoClip(frames=frames, timestamps=indices / 10.0, indices=indices, fps=10.0, duration=num_frames / 2,
                     total_frames=5 * num_frames, backend="synthetic", source_size=(height, width))  # fmt: skip


def family_setup(family: str, *, seed: int = 0, attn: str = "sdpa", num_frames: int = 12):
    """A tiny model of `family`, its adapter, and the processor's inputs for a random clip."""
    model = tiny_model(family=family, seed=seed, attn_implementation=attn)
    adapter = adapter_for(model, tiny_processor(family.removesuffix("_moe")))
    inputs = adapter.processor_inputs(random_clip(num_frames, seed=seed), QUESTION)
    return model, adapter, inputs


def plain_inputs(inputs) -> dict:
    """What the plain model takes for the unpruned prompt (everything the processor produced)."""
    return dict(inputs)


def language_model(model) -> torch.nn.Module:
    return model.model.language_model


def capture_positions(model, run) -> list[torch.Tensor]:
    """The position_ids the language model receives in each forward of `run()` (prefill, then decode steps)."""
    seen: list[torch.Tensor] = []
    hook = language_model(model).register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["position_ids"].clone()), with_kwargs=True
    )
    try:
        with torch.inference_mode():
            run()
    finally:
        hook.remove()
    return seen
