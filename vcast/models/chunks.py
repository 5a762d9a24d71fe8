"""Moving a video's pixels to the vision tower chunk by chunk, for every family.

A video LLM's vision tower sees each temporal group on its own (attention never crosses groups), so
a video can be encoded a chunk of groups at a time with the same result and the activation memory of
one chunk. The pixels stay on the host until their chunk's turn; each copy runs one chunk ahead on a
side stream.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch

_SIDE_STREAMS: dict[torch.device, torch.cuda.Stream] = {}


def _side_stream(device: torch.device) -> torch.cuda.Stream:
    """One copy stream per device for the whole process: the caching allocator keeps freed blocks
    per stream, so a new stream per video would strand cached chunk buffers on each of them."""
    device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
    if device not in _SIDE_STREAMS:
        _SIDE_STREAMS[device] = torch.cuda.Stream(device)
    return _SIDE_STREAMS[device]


class ChunkLoader:
    """Moves chunks of patches to the device (and the vision tower's dtype) one chunk ahead.

    On CUDA, with patches on the host, each copy and cast runs on a side stream while the
    previous chunk computes; elsewhere it is a plain `.to()`. The patches should be in pinned
    memory (VideoQA pins them): a copy from pageable memory makes the host wait for it.
    """

    def __init__(self, patches: torch.Tensor, per_group: int, device: torch.device, dtype: torch.dtype):
        self.patches, self.per_group, self.device, self.dtype = patches, per_group, device, dtype
        side = device.type == "cuda" and patches.device.type == "cpu"
        self.stream = _side_stream(device) if side else None
        self.pending = None

    def fetch(self, start: int, stop: int) -> None:
        rows = self.patches[start * self.per_group : stop * self.per_group]
        if self.stream is None:
            self.pending = rows.to(self.device, non_blocking=True).to(self.dtype)
            return
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            self.pending = rows.to(self.device, non_blocking=True).to(self.dtype)

    def take(self) -> torch.Tensor:
        chunk, self.pending = self.pending, None
        if self.stream is not None:
            main = torch.cuda.current_stream(self.device)
            main.wait_stream(self.stream)
            chunk.record_stream(main)  # made on the side stream, used and freed on the main one
        return chunk


def chunk_bounds(groups: int, most: int) -> list[int]:
    """Boundaries of the fewest chunks of at most `most` groups each, as equal as they can be.

    16 groups at most 5 per chunk: [0, 4, 8, 12, 16] (4 x 4, not 5 + 5 + 5 + 1): no small, slow
    remainder chunk, and at most two chunk shapes (each shape is one compilation or CUDA graph).
    """
    if groups < 1 or most < 1:
        raise ValueError(f"chunk_bounds needs at least one group and one group per chunk, got {groups}, {most}")
    count = -(-groups // most)
    base, extra = divmod(groups, count)
    sizes = [base + 1] * extra + [base] * (count - extra)
    return [0, *itertools.accumulate(sizes)]


def encode_in_chunks(
    patches: torch.Tensor,
    *,
    groups: int,
    rows_per_group: int,
    most_groups: int,
    device: torch.device,
    dtype: torch.dtype,
    encode_chunk: Callable[[int, int, torch.Tensor], None],
) -> None:
    """Call `encode_chunk(start, stop, chunk)` for the groups [start, stop) of each chunk, in order.

    patches: the video's pixels, `rows_per_group` leading rows per temporal group, on any device;
    each chunk arrives on `device` in `dtype`, the next one's copy overlapping this one's compute.
    Chunks hold at most `most_groups` groups, spread evenly (`chunk_bounds`).
    """
    bounds = list(itertools.pairwise(chunk_bounds(groups, max(1, most_groups))))
    loader = ChunkLoader(patches, rows_per_group, device, dtype)
    loader.fetch(*bounds[0])
    for i, (start, stop) in enumerate(bounds):
        chunk = loader.take()
        if i + 1 < len(bounds):  # the next chunk's copy overlaps this chunk's compute
            loader.fetch(*bounds[i + 1])
        encode_chunk(start, stop, chunk)
        del chunk
