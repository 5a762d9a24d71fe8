"""Vision attention for videos (Qwen3-VL, Qwen3.5, Qwen2.5-VL), batched SDPA calls instead of one per segment.

Qwen3-VL's vision tower attends within each frame pair (temporal group) only. With SDPA or eager
attention, transformers splits the packed sequence and calls attention once per group and layer:
64 groups x 27 layers is 1728 small calls for a 128-frame clip, and the Python loop, not the GPU,
sets the pace. All groups of a video have the same size, so the same attention is one batched
call over a (groups, heads, patches, dim) tensor: the same function, computed in one launch.
Qwen2.5-VL's windowed layers attend within windows of 8 x 8 patches, cut at each frame's border: a few
distinct sizes, each one batched call (a 32-frame clip has thousands of windows per layer).

It plugs in through transformers' public `AttentionInterface` under a name containing "flash",
which makes the vision attention hand over the packed sequence with its `cu_seqlens` (the
variable-length path) instead of splitting it itself. Only the vision tower of a loaded model is
switched to it (`use_batched_vision_attention`); no transformers class is modified.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

VISION_ATTENTION = "vcast_flash_equal_groups"


def equal_groups_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    scaling: float | None = None,
    dropout: float = 0.0,
    cu_seq_lens_q: torch.Tensor | None = None,
    max_length_q: int | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Bidirectional attention within each packed segment.

    query, key, value: (1, heads, S, dim), S the packed length; cu_seq_lens_q: (n + 1,) segment
    boundaries; max_length_q: the longest segment. Returns ((1, S, heads, dim), None), the layout
    transformers' attention functions return.
    """
    _, heads, length, dim = query.shape
    if cu_seq_lens_q is None or max_length_q is None:
        raise ValueError(f"{VISION_ATTENTION} serves Qwen3-VL's packed vision attention, which passes cu_seqlens")
    num_segments = cu_seq_lens_q.numel() - 1
    if num_segments * max_length_q == length:  # every segment has the longest length: all equal
        q, k, v = (t[0].view(heads, num_segments, max_length_q, dim).transpose(0, 1) for t in (query, key, value))
        out = F.scaled_dot_product_attention(q, k, v, scale=scaling)  # (n, heads, L, dim)
        return out.transpose(1, 2).reshape(1, length, heads, dim), None
    # Segments of different sizes (Qwen2.5-VL's windows, cut at a frame's border; several images in one
    # call): one batched call per distinct length, gathered from and scattered back to the packed sequence.
    bounds = cu_seq_lens_q.tolist()
    by_length: dict[int, list[int]] = {}
    for start, stop in itertools.pairwise(bounds):
        by_length.setdefault(stop - start, []).append(start)
    out = query.new_empty(length, heads, dim)  # (S, heads, dim)
    for size, starts in by_length.items():
        index = (torch.tensor(starts)[:, None] + torch.arange(size)).to(query.device)  # (n, size)
        q, k, v = (t[0][:, index].transpose(0, 1) for t in (query, key, value))  # (n, heads, size, dim)
        out[index] = F.scaled_dot_product_attention(q, k, v, scale=scaling).transpose(1, 2)  # (n, size, heads, dim)
    return out.unsqueeze(0), None  # (1, S, heads, dim)


AttentionInterface.register(VISION_ATTENTION, equal_groups_attention)


def use_batched_vision_attention(model) -> None:
    """Switch the vision tower of a loaded Qwen3-VL, Qwen3.5 or Qwen2.5-VL model (this instance only) to
    batched attention."""
    # V-CAST: only the vision config of this instance changes; the language model keeps its own.
    model.config.vision_config._attn_implementation = VISION_ATTENTION
