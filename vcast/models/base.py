"""The model adapter interface: everything family-specific about running V-CAST inside a video LLM.

A pass of V-CAST has five steps, the same for every family; an adapter supplies the family's
version of each, and `vcast.pipeline.VideoQA` composes them:
1. `processor_inputs(clip, question)`: the chat prompt and the processor's tensors for one video;
2. `encode(inputs)`: the vision tower over the video, in chunks of temporal groups -> `VisionFeatures`;
3. `positions(prompt)`: the model's own UNPRUNED position ids of the prompt;
4. (the selection, `vcast.prune`, on `features.grouped()`: (T, N, D), family-independent);
5. `pass_inputs(inputs, features, positions, selection)`: what `generate` needs for one pass, in
   which kept tokens keep their unpruned positions and dropped ones never reach the LLM.

The family is chosen by the checkpoint's `config.model_type` (`adapter_for`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from ..core import Selection
from ..methods import merge_features
from ..video import VideoClip


@dataclass(frozen=True)
class VisionFeatures:
    """The vision tower's output for one video, in LLM order (group-major, then row, then column).

    embeds: (T*N, D) merged tokens, the ones V-CAST selects from.
    extras: per-token companions of `embeds` that must be sliced with it, each (T*N, D')
        (Qwen3-VL's deepstack layers); empty for other families.
    grid: (T, h, w): T temporal groups of h x w merged tokens (N = h * w).
    tail: (n, D) tokens the family appends after the frames that are not frame tokens (LLaVA-OneVision's
        `image_newline`): never selected, always kept, in place; None where there are none.
    """

    embeds: torch.Tensor
    extras: tuple[torch.Tensor, ...]
    grid: tuple[int, int, int]
    tail: torch.Tensor | None = None

    def grouped(self) -> torch.Tensor:
        """(T, N, D) view of the merged tokens, the input of `vcast.prune` / `vcast.select_tokens`."""
        T, h, w = self.grid
        return self.embeds.view(T, h * w, -1)

    @property
    def num_tokens(self) -> int:
        """Visual tokens the unpruned prompt holds for this video (frame tokens + tail)."""
        return int(self.embeds.shape[0]) + (0 if self.tail is None else int(self.tail.shape[0]))


@dataclass(frozen=True)
class PassInputs:
    """Everything `model.generate` (or a forward) needs for one pass, pruned or not; batch size 1.

    input_ids, attention_mask: (1, L'); position_ids: (1, L') for 1-D families, (4, 1, L') for
    M-RoPE families (row 0 the plain sequence index, rows 1-3 the original (t, h, w) positions);
    mm_encoder_outputs: the kept visual features, in the family's own output type.
    num_visual_tokens: visual tokens this pass hands the LLM (kept frame tokens + tail).
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


def selection_on(selection: Selection, device: torch.device) -> Selection:
    """The selection with `keep` (and `assign`) on `device`, where the features live."""
    if selection.keep.device == device and (selection.assign is None or selection.assign.device == device):
        return selection
    assign = None if selection.assign is None else selection.assign.to(device)
    return dataclasses.replace(selection, keep=selection.keep.to(device), assign=assign)


def kept_rows(tensor: torch.Tensor, selection: Selection | None) -> torch.Tensor:
    """(T*N, D) -> (K, D): the rows a selection keeps (merging methods: each slot's mean), or all rows."""
    if selection is None:
        return tensor
    return merge_features(tensor, selection)


def cache_argument(model) -> str:
    """The keyword a model's forward and generate take a KV cache under: "cache" in the transformers
    versions whose forwards name it so (there "past_key_values" is deprecated, removed from forwards
    in 5.40), "past_key_values" before (5.18)."""
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


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


class ModelAdapter(ABC):
    """One family of video LLMs behind the five steps of a V-CAST pass (see the module docstring).

    An adapter wraps one loaded model and its processor; it changes neither.
    """

    family: ClassVar[str]  # "qwen3_vl", "qwen2_5_vl", ...
    model_types: ClassVar[tuple[str, ...]]  # the config.model_type values it serves
    label: ClassVar[str]  # a human name, e.g. "Qwen3-VL"
    checkpoints: ClassVar[tuple[str, ...]]  # released checkpoints it loads, for messages and the app
    frames_per_group: ClassVar[int]  # sampled frames per temporal group (the temporal patch size)
    prompt_keys: ClassVar[tuple[str, ...]] = ("input_ids", "attention_mask")

    def __init__(self, model, processor, processor_kwargs: dict | None = None):
        self.model, self.processor = model, processor
        self.processor_kwargs = processor_kwargs or {}

    # -- 1. prompt ----------------------------------------------------------------------------------

    def processor_inputs(self, clip: VideoClip, question: str) -> dict[str, Any]:
        """The processor's tensors for one question about one clip: ids etc. on the model's device,
        pixels on the host (pinned on CUDA: the vision tower takes them chunk by chunk)."""
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        kwargs = self.video_kwargs(clip)
        cuda = self.model.device.type == "cuda"
        if cuda:  # V-CAST: resize and normalise on the GPU (on 16 CPU cores, 44% of upload to first token)
            kwargs.setdefault("device", self.model.device)
        inputs = self.processor(text=[text], return_tensors="pt", **kwargs)
        pixels = inputs.pop("pixel_values_videos")
        inputs = inputs.to(self.model.device)
        if cuda:  # the patches wait in pinned host memory, so the vision tower's chunks hold the GPU's
            host = torch.empty(pixels.shape, dtype=pixels.dtype, pin_memory=True)
            pixels = host.copy_(pixels)
        inputs["pixel_values_videos"] = pixels
        self.check_single_video(inputs)
        return inputs

    @classmethod
    def pixel_budget(cls, max_pixels_per_video: int) -> dict[str, Any]:
        """Processor settings for a released checkpoint: a total budget of `max_pixels_per_video`
        pixels in Qwen3-VL's 32 x 32-pixel merged tokens (families with fixed frame sizes ignore it)."""
        return {}

    @abstractmethod
    def video_kwargs(self, clip: VideoClip) -> dict[str, Any]:
        """Keyword arguments of the processor call that carry `clip` (frames, metadata, pixel budget)."""

    def check_single_video(self, inputs) -> None:
        prompts = inputs["input_ids"].shape[0]
        if prompts != 1:
            raise ValueError(f"V-CAST answers one question about one video at a time (batch size 1); got {prompts}")

    def special_tokens(self) -> set[str]:
        """Control tokens of the tokenizer (chat turns, vision placeholders): never allowed in user text."""
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        tokens = set(tokenizer.all_special_tokens)
        tokens |= {str(t) for t in tokenizer.get_added_vocab()}
        return {t for t in tokens if t}

    # -- 2. vision ----------------------------------------------------------------------------------

    @abstractmethod
    def encode(self, inputs, *, chunk_patches: int) -> VisionFeatures:
        """Run the vision tower over the prompt's video, a chunk of temporal groups at a time."""

    @property
    @abstractmethod
    def vision_tower(self) -> torch.nn.Module:
        """The vision module (what `compile_vision` compiles)."""

    def speed_up_vision(self) -> bool:
        """Switch this model instance to faster, equal-result vision paths where the family has them.
        Returns whether anything changed."""
        return False

    # -- 3. positions -------------------------------------------------------------------------------

    def prompt_on_host(self, inputs) -> dict:
        """Host copies of the prompt tensors `positions` reads (a few KB). Take them before the
        vision tower starts: copying from the GPU later would wait for the whole vision pass."""
        return {key: inputs[key].cpu() for key in self.prompt_keys if inputs.get(key) is not None}

    @abstractmethod
    def positions(self, prompt: dict, device: torch.device | None = None) -> torch.Tensor:
        """The unpruned position ids of the prompt, by the model's own rule, on `device`."""

    # -- 5. pass inputs -----------------------------------------------------------------------------

    @abstractmethod
    def pass_inputs(self, inputs, features: VisionFeatures, positions: torch.Tensor,
                    selection: Selection | None = None) -> PassInputs:  # fmt: skip
        """One pass's generation inputs: all visual tokens (selection None) or the selection's."""

    # -- what the figures need ----------------------------------------------------------------------

    def group_times(self, clip: VideoClip) -> list[float]:
        """(T,) seconds: the middle of each temporal group's frames."""
        times = np.asarray(clip.timestamps, dtype=np.float64)
        usable = len(times) - len(times) % self.frames_per_group
        return times[:usable].reshape(-1, self.frames_per_group).mean(axis=1).tolist()

    @abstractmethod
    def processed_size(self, features: VisionFeatures) -> tuple[int, int]:
        """(height, width) in pixels of the frames the vision tower saw."""

    # -- shared helpers -----------------------------------------------------------------------------

    def video_token_slots(self, input_ids: torch.Tensor, expected: int) -> torch.Tensor:
        """(expected,) sequence indices of the video placeholder tokens of a (1, L) prompt."""
        video_token_id = self.video_token_id
        is_video = input_ids[0] == video_token_id  # (L,)
        count = int(is_video.sum())
        if count != expected:
            raise ValueError(f"the prompt holds {count} video tokens but the video has {expected}")
        return is_video.nonzero().squeeze(1)

    @property
    def video_token_id(self) -> int:
        config = self.model.config
        return getattr(config, "video_token_id", None) or config.video_token_index

    def sequence_keep(self, input_ids: torch.Tensor, features: VisionFeatures,
                      selection: Selection | None) -> torch.Tensor:  # fmt: skip
        """(L,) bool: the prompt positions a pass keeps (all text, the kept video tokens, the tail)."""
        slots = self.video_token_slots(input_ids, features.num_tokens)
        if selection is None:
            return torch.ones(input_ids.shape[1], dtype=torch.bool, device=input_ids.device)
        keep = ~(input_ids[0] == self.video_token_id)
        keep[slots[selection.keep.to(input_ids.device)]] = True
        frames = int(features.embeds.shape[0])
        keep[slots[frames:]] = True  # the tail (after the frame tokens) is never pruned
        return keep


_FAMILIES: dict[str, type[ModelAdapter]] = {}
FAMILY_ORDER = ("qwen3_vl", "qwen2_5_vl", "qwen3_5", "llava_onevision")  # how messages and menus list them


def register(cls: type[ModelAdapter]) -> type[ModelAdapter]:
    """Class decorator: make an adapter serve its model types."""
    for model_type in cls.model_types:
        _FAMILIES[model_type] = cls
    return cls


def families() -> dict[str, type[ModelAdapter]]:
    """family name -> adapter class, one entry per family."""
    _load_families()
    found = {cls.family: cls for cls in _FAMILIES.values()}
    return {name: found[name] for name in sorted(found, key=FAMILY_ORDER.index)}


def supported_model_types() -> tuple[str, ...]:
    _load_families()
    return tuple(_FAMILIES)


def unsupported_message(model_type: str | None) -> str:
    """One sentence naming the supported families and checkpoints, for any other model type."""
    names = "; ".join(f"{cls.label} ({', '.join(cls.checkpoints)})" for cls in families().values())
    return f"this checkpoint is a {model_type!r} model, and V-CAST supports these families: {names}."


def adapter_class(model_type: str | None) -> type[ModelAdapter]:
    """The adapter class for a config.model_type; ValueError naming the supported ones otherwise."""
    _load_families()
    if model_type not in _FAMILIES:
        raise ValueError(unsupported_message(model_type))
    return _FAMILIES[model_type]


def adapter_for(model, processor, processor_kwargs: dict | None = None) -> ModelAdapter:
    """The adapter of a loaded model's family (from `model.config.model_type`)."""
    return adapter_class(getattr(model.config, "model_type", None))(model, processor, processor_kwargs)


def _load_families() -> None:
    # The family modules register themselves on import; importing them here keeps base importable alone.
    from . import llava_onevision, qwen2_5_vl, qwen3_5, qwen3_vl  # noqa: F401
