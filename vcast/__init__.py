"""V-CAST: training-free, curvature-aware pruning of video tokens for video LLMs."""

from .config import VCastConfig
from .core import (
    Selection,
    allocate_budgets,
    allocation_weights,
    frame_curvature,
    frame_means,
    select_tokens,
    token_scores,
    total_budget,
    uniqueness,
)
from .methods import METHODS, prune
from .models.inputs import clip_to_processor_kwargs
from .video import VideoClip, VideoError, read_video

__all__ = [
    "METHODS",
    "ModelError",
    "QAResult",
    "Selection",
    "VCastConfig",
    "VideoClip",
    "VideoError",
    "VideoQA",
    "allocate_budgets",
    "allocation_weights",
    "clip_to_processor_kwargs",
    "frame_curvature",
    "frame_means",
    "prune",
    "read_video",
    "select_tokens",
    "token_scores",
    "total_budget",
    "uniqueness",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "clip_to_processor_inputs":  # the name before 0.2 (the function returns the processor's kwargs)
        return clip_to_processor_kwargs
    # The model side (transformers) loads only when asked for: `import vcast` stays light.
    if name in ("VideoQA", "QAResult", "ModelError"):
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'vcast' has no attribute {name!r}")
