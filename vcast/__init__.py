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

__all__ = [
    "Selection",
    "VCastConfig",
    "allocate_budgets",
    "allocation_weights",
    "frame_curvature",
    "frame_means",
    "select_tokens",
    "token_scores",
    "total_budget",
    "uniqueness",
]
__version__ = "0.1.0"
