"""V-CAST for Qwen3-VL (dense and MoE) through the public transformers API.

The route (see docs/DESIGN-NOTES.md): run the vision tower once, in chunks of temporal groups;
compute the unpruned 3-D positions with the model's own `get_rope_index`; select with
`vcast.core`; hand the pruned ids, a 4-row position tensor and the pruned merged + deepstack
features to `model.generate` via `mm_encoder_outputs`. No transformers class is modified, so any
attention implementation works and other models in the process are untouched.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass

import torch
from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures
from transformers.vision_utils import (
    get_vision_cu_seqlens,
    get_vision_interpolation_indices_and_weights,
    get_vision_position_ids,
)

SUPPORTED_MODEL_TYPES = ("qwen3_vl", "qwen3_vl_moe")
# Patches per vision chunk: large enough for efficient matrix products and few launches per
# patch, small enough that the vision tower's activations stay about 300 MB at 8B scale (below
# the LLM prefill's own peak with V-CAST at R = 0.25; docs/BENCHMARKS.md section 4.4).
DEFAULT_VISION_CHUNK_PATCHES = 8192


@dataclass(frozen=True)
class VisionFeatures:
    """The vision tower's output for one video, in LLM order (group-major, then row, then column).

    embeds: (T*N, D) merged tokens; deepstack: one (T*N, D) tensor per deepstack layer;
    grid: (T, h, w), T temporal groups of h x w merged tokens (N = h * w).
    """

    embeds: torch.Tensor
    deepstack: tuple[torch.Tensor, ...]
    grid: tuple[int, int, int]

    def grouped(self) -> torch.Tensor:
        """(T, N, D) view of the merged tokens, the input of `vcast.select_tokens`."""
        T, h, w = self.grid
        return self.embeds.view(T, h * w, -1)


@dataclass(frozen=True)
class PassInputs:
    """Everything `model.generate` needs for one pass (pruned or not); batch size 1.

    input_ids, attention_mask: (1, L'); position_ids: (4, 1, L'): row 0 is the plain sequence
    index (cache positions and the causal mask), rows 1-3 the original (t, h, w) rotary positions.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    mm_encoder_outputs: dict
    num_visual_tokens: int

    def generate_kwargs(self) -> dict:
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "position_ids": self.position_ids,
            "mm_encoder_outputs": self.mm_encoder_outputs,
        }


def generation_attention(device: torch.device):
    """Scaled-dot-product backends for generation: flash, memory-efficient, math; not cuDNN.

    During decoding the key length grows by one every step, and PyTorch's cuDNN attention builds
    a new execution plan for every new shape: most of a decode step's host time went there
    (measured on an H200, torch 2.11). A context manager, so nothing outside generation changes.
    """
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def check_supported(model) -> None:
    """Fail early, naming the supported families, for a checkpoint of another architecture."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"V-CAST supports Qwen3-VL checkpoints (dense 2B/4B/8B/32B and MoE 30B-A3B; model types "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}); this checkpoint is a {model_type!r} model."
        )


def check_single_video(inputs) -> None:
    if inputs["input_ids"].shape[0] != 1 or inputs["video_grid_thw"].shape[0] != 1:
        raise ValueError(
            "V-CAST answers one question about one video at a time (batch size 1); "
            f"got {inputs['input_ids'].shape[0]} prompts with {inputs['video_grid_thw'].shape[0]} videos."
        )


def encode_video(
    model,
    pixel_values_videos: torch.Tensor,
    video_grid_thw: torch.Tensor,
    *,
    chunk_groups: int | None = None,
    chunk_patches: int = DEFAULT_VISION_CHUNK_PATCHES,
) -> VisionFeatures:
    """Run the vision tower over one video, `chunk_groups` temporal groups at a time.

    pixel_values_videos: (T*H*W, C*2*16*16) patches from the processor, on any device (each chunk
    moves to the model's device when its turn comes); video_grid_thw: (1, 3) patch grid (T, H, W).
    Qwen3-VL's vision attention never crosses temporal groups, and its position embeddings depend
    on (h, w) only, so encoding in chunks gives the same features while activation memory stays
    that of one chunk. chunk_groups=None fits as many groups as `chunk_patches` patches allow;
    either way the groups are spread over the fewest chunks as evenly as possible (`chunk_bounds`).
    """
    T, H, W = (int(v) for v in video_grid_thw[0].tolist())
    merge = model.config.vision_config.spatial_merge_size
    tokens_per_group = (H // merge) * (W // merge)
    step = max(1, chunk_groups if chunk_groups is not None else chunk_patches // (H * W))
    device = model.model.visual.device
    geometry: dict[int, dict] = {}
    embeds, deepstack = None, ()
    bounds = list(itertools.pairwise(chunk_bounds(T, step)))
    dtype = model.model.visual.patch_embed.proj.weight.dtype
    loader = _ChunkLoader(pixel_values_videos, H * W, device, dtype)
    loader.fetch(*bounds[0])
    for i, (start, stop) in enumerate(bounds):
        if stop - start not in geometry:
            geometry[stop - start] = _chunk_geometry(model, stop - start, H, W, device)
        chunk = loader.take()
        if i + 1 < len(bounds):  # the next chunk's copy overlaps this chunk's compute
            loader.fetch(*bounds[i + 1])
        grid = torch.tensor([[stop - start, H, W]])  # on the host: shapes only, no device sync
        out = model.model.get_video_features(chunk, grid, return_dict=True, **geometry[stop - start])
        merged, layers = out.pooler_output[0], [layer[0] for layer in out.deepstack_features]
        if embeds is None:  # the whole video's buffers: no concatenation copies at the end
            embeds = merged.new_empty(T * tokens_per_group, merged.shape[-1])
            deepstack = tuple(layer.new_empty(T * tokens_per_group, layer.shape[-1]) for layer in layers)
        rows = slice(start * tokens_per_group, stop * tokens_per_group)
        embeds[rows] = merged
        for buffer, layer in zip(deepstack, layers, strict=True):
            buffer[rows] = layer
        del out, merged, layers
    return VisionFeatures(embeds=embeds, deepstack=deepstack, grid=(T, H // merge, W // merge))


_SIDE_STREAMS: dict[torch.device, torch.cuda.Stream] = {}


def _side_stream(device: torch.device) -> torch.cuda.Stream:
    """One copy stream per device for the whole process: the caching allocator keeps freed blocks
    per stream, so a new stream per video would strand cached chunk buffers on each of them."""
    device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
    if device not in _SIDE_STREAMS:
        _SIDE_STREAMS[device] = torch.cuda.Stream(device)
    return _SIDE_STREAMS[device]


class _ChunkLoader:
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


def _chunk_geometry(model, groups: int, H: int, W: int, device: torch.device) -> dict:
    """The vision tower's shape-only inputs for a chunk of `groups` groups of H x W patches.

    Computed once per chunk size with transformers' own helpers and handed to every chunk, so the
    vision forward neither recomputes them nor waits on the device for `.item()`/`.tolist()`.
    """
    visual = model.model.visual
    grid = torch.tensor([[groups, H, W]], device=device)
    interp_indices, interp_weights = get_vision_interpolation_indices_and_weights(
        grid, num_grid_per_side=visual.num_grid_per_side, mode=visual.interpolation_mode,
        align_corners=visual.interpolation_align_corners, spatial_merge_size=visual.spatial_merge_size,
    )  # fmt: skip
    cu_seqlens = get_vision_cu_seqlens(grid)
    return {
        "interp_indices": interp_indices,
        "interp_weights": interp_weights,
        "position_ids": get_vision_position_ids(grid, visual.spatial_merge_size),
        "cu_seqlens": cu_seqlens,
        "max_seqlen": H * W,  # every segment is one group of H x W patches
    }


PROMPT_KEYS = ("input_ids", "mm_token_type_ids", "video_grid_thw", "attention_mask")


def prompt_on_host(inputs) -> dict:
    """Host copies of the prompt tensors `rope_positions` reads (a few KB). Take them before the
    vision tower starts: copying from the GPU later would wait for the whole vision pass."""
    return {key: inputs[key].cpu() for key in PROMPT_KEYS if inputs.get(key) is not None}


def rope_positions(model, inputs, device: torch.device | str | None = None) -> torch.Tensor:
    """(3, 1, L) unpruned (t, h, w) rotary positions of the prompt, from the model's own rule.

    Computed where `inputs` live. transformers' rule runs a few small tensor operations per
    frame pair, each a kernel launch and some a device sync when the ids are on a GPU; on host
    copies (`prompt_on_host`) it costs a fraction of that and overlaps the vision tower's GPU work.
    `device`: where the result goes (a non-blocking copy from pinned memory on CUDA).
    """
    positions, _ = model.model.get_rope_index(
        inputs["input_ids"],
        mm_token_type_ids=inputs["mm_token_type_ids"],
        video_grid_thw=inputs["video_grid_thw"],
        attention_mask=inputs.get("attention_mask"),
    )
    device = torch.device(device) if device is not None else positions.device
    if device != positions.device:
        if device.type == "cuda" and positions.device.type == "cpu":
            positions = positions.pin_memory()
        positions = positions.to(device, non_blocking=True)
    return positions


def pass_inputs(
    model, inputs, features: VisionFeatures, positions: torch.Tensor, keep: torch.Tensor | None = None
) -> PassInputs:
    """Build one pass's generation inputs; `keep` (K,) ascending flat indices into T*N, or None for all.

    Kept video tokens keep their original rotary positions (rows 1-3); dropped ones vanish from
    the ids, the features and every deepstack layer alike, so the LLM never sees them.
    """
    input_ids = inputs["input_ids"]  # (1, L)
    video_token_id = model.config.video_token_id
    is_video = input_ids[0] == video_token_id  # (L,)
    num_video = int(features.embeds.shape[0])
    if int(is_video.sum()) != num_video:
        raise ValueError(f"the prompt holds {int(is_video.sum())} video tokens but the video has {num_video}")
    if keep is None:
        seq_keep = torch.ones_like(is_video)
        embeds, deepstack = features.embeds, features.deepstack
    else:
        keep = keep.to(input_ids.device)
        video_slots = is_video.nonzero().squeeze(1)  # (T*N,) sequence index of each video token
        seq_keep = ~is_video
        seq_keep[video_slots[keep]] = True
        keep = keep.to(features.embeds.device)
        # V-CAST: the same keep indices slice the merged tokens and every deepstack layer.
        embeds = features.embeds.index_select(0, keep)
        deepstack = tuple(layer.index_select(0, keep) for layer in features.deepstack)
    kept_ids = input_ids[:, seq_keep]  # (1, L')
    length = kept_ids.shape[1]
    text_row = torch.arange(length, device=input_ids.device).view(1, 1, length)
    position_ids = torch.cat([text_row, positions[:, :, seq_keep]], dim=0)  # (4, 1, L')
    encoder_output = BaseModelOutputWithDeepstackFeatures(
        pooler_output=(embeds,), deepstack_features=[(layer,) for layer in deepstack]
    )
    return PassInputs(
        input_ids=kept_ids,
        attention_mask=torch.ones_like(kept_ids),
        position_ids=position_ids,
        mm_encoder_outputs={"video": encoder_output},
        num_visual_tokens=int(embeds.shape[0]),
    )
