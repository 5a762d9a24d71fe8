"""VideoQA: load a video LLM once, answer questions about videos with V-CAST, other methods and unpruned.

One answer is three public steps, each done once per video however many methods are compared:
`prepare` (decode the video, run the processor, the vision tower and the unpruned positions), then
per method a selection (`select`, i.e. `vcast.prune`) and a generation (`generate`) from the same
features. `answer` composes them for a list of methods plus the unpruned model, and each pass
reports what it cost. The family-specific work sits behind `vcast.models.base.ModelAdapter`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation import BaseStreamer

from .config import ALLOCATIONS, VCastConfig
from .core import Selection, allocate_budgets, allocation_weights, total_budget
from .methods import METHOD_LABELS, METHODS, prune
from .models.base import ModelAdapter, PassInputs, VisionFeatures, adapter_class, adapter_for, cache_argument
from .models.base import generation_attention as _generation_attention
from .models.compiled_prefill import compiled_prefill_unsupported, inductor_options
from .models.decode import DecodeCaches
from .models.graph_decode import GraphDecoder
from .models.mrope import DEFAULT_VISION_CHUNK_PATCHES
from .video import VideoClip, read_video

DEFAULT_MODEL_ID = "Qwen/Qwen3-VL-8B-Instruct"
TINY_MODEL_ID = "tiny"
DEFAULT_MAX_NEW_TOKENS = 128
MAX_NEW_TOKENS_LIMIT = 2048  # a hard cap per pass, whatever the caller asks for
DEFAULT_MAX_GENERATION_S = 300.0  # wall-clock limit of one pass's generation
FULL = "full"  # the name of the unpruned pass among the methods' passes

# Called with (pass name, text piece) as a pass generates: each method in turn, then "full".
TokenCallback = Callable[[str, str], None]
# Called with ("selected", QAResult without passes) once every method has selected, then ("pass",
# PassResult) as each pass ends (a cancelled pass too, before Cancelled is raised).
EventCallback = Callable[[str, Any], None]


class ModelError(RuntimeError):
    """A model could not be loaded or run; the message is fit to show a user."""


class Cancelled(RuntimeError):
    """The request was cancelled (its `cancel` event was set) before it finished."""


_OUT_OF_MEMORY = (
    "The GPU ran out of memory on this video ({stage}). Sample fewer frames (e.g. 16), use a lower "
    "resolution or a shorter clip, or pick a smaller model; the next request starts with the memory freed."
)


class _CancelCriteria(StoppingCriteria):
    """Stops generate() between two tokens once `event` is set."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


@dataclass(frozen=True)
class PassMetrics:
    """The measured cost of one generation pass. Times in milliseconds.

    vision_ms (the shared vision tower plus the unpruned rotary positions) is counted in every
    pass's ttft_ms and total_ms, as if each pass had run alone; selection_ms is 0 for the full pass.
    peak_memory_mb is torch.cuda.max_memory_allocated on a GPU and the process RSS on a CPU
    (`memory_kind` says which).
    """

    visual_tokens_in: int
    visual_tokens_kept: int
    sequence_length: int
    vision_ms: float
    selection_ms: float
    prefill_ms: float
    ttft_ms: float
    decode_tokens_per_s: float
    total_ms: float
    new_tokens: int
    peak_memory_mb: float
    memory_kind: str
    decoding: str = "generate"  # "cuda_graphs", "eager_loop" (VideoQA's graph decoder) or "generate"


STOP_REASONS = {
    "end_of_text": "the model finished its answer",
    "token_limit": "the answer reached the new-token limit",
    "time_limit": "the answer reached the time limit",
    "cancelled": "the run was stopped",
}


@dataclass(frozen=True)
class PassResult:
    """One generation pass: its text, token ids, cost, and why it stopped (a key of STOP_REASONS)."""

    text: str
    token_ids: list[int]
    metrics: PassMetrics
    method: str = "vcast"
    stop_reason: str = "end_of_text"


@dataclass(frozen=True)
class Prompt:
    """One question about one decoded clip, through the processor: ids etc. on the model's device,
    pixels on the host (`VideoQA.prompt`); `VideoQA.encode` turns it into a `Prepared`."""

    clip: VideoClip
    question: str
    inputs: Any


@dataclass(frozen=True)
class Prepared:
    """One question about one video, decoded, processed and encoded once; every pass generates from it.

    clip: the decoded frames; question: the question as asked; inputs: the processor's tensors
    (ids on the model's device, pixels on the host); features: the vision tower's output
    (`features.grouped()`: (T, N, D), what selection methods take); positions: the model's own
    unpruned position ids of the prompt ((3, 1, L) for the Qwen families, (1, L) for LLaVA-OneVision);
    vision_ms: the vision tower plus positions; vision_peak_mb: peak memory during it.
    """

    clip: VideoClip
    question: str
    inputs: Any
    features: VisionFeatures
    positions: torch.Tensor
    vision_ms: float
    vision_peak_mb: float
    group_times: list[float]
    processed_size: tuple[int, int]

    @property
    def grid(self) -> tuple[int, int, int]:
        """(T, h, w): T temporal groups of h x w merged tokens."""
        return self.features.grid

    def grouped(self) -> torch.Tensor:
        """(T, N, D) merged tokens, the input of `vcast.prune` / `vcast.select_tokens`."""
        return self.features.grouped()


@dataclass(frozen=True)
class QAResult:
    """Every pass of one answer and everything needed to show why.

    passes: method name -> its pass, in the order the methods were asked for; full: the unpruned
    pass (None when compare=False); selections: method name -> its Selection (tensors on the CPU);
    grid: (T, h, w) merged-token grid; processed_size: (height, width) in pixels of the frames the
    vision tower saw; group_times: (T,) seconds, the middle of each temporal group's frames;
    allocations: per-group budgets of V-CAST's total under each allocation ("curvature", "uniform",
    "uniqueness"), for comparison plots; frames_per_group: sampled frames per temporal group (2 for
    the Qwen families, 1 for LLaVA-OneVision). `pruned` and `selection` are V-CAST's (else the first
    method's) pass and selection.
    """

    question: str
    passes: dict[str, PassResult]
    full: PassResult | None
    selections: dict[str, Selection]
    grid: tuple[int, int, int]
    processed_size: tuple[int, int]
    group_times: list[float]
    clip: VideoClip
    config: VCastConfig
    model_id: str
    family: str = "qwen3_vl"
    allocations: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    frames_per_group: int = 2

    @property
    def methods(self) -> list[str]:
        return list(self.passes)

    @property
    def main_method(self) -> str:
        """V-CAST where it ran, else the first method (of the passes, or of the selections before any pass)."""
        names = list(self.passes) or list(self.selections)
        return "vcast" if "vcast" in names else names[0]

    @property
    def pruned(self) -> PassResult | None:
        """The main method's pass (None before it has run)."""
        return self.passes.get(self.main_method)

    @property
    def selection(self) -> Selection:
        return self.selections[self.main_method]


class _Timer:
    """Wall-clock milliseconds of a region; on CUDA, measured with events around the region."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __enter__(self):
        if self.cuda:
            self._start, self._end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self._start.record()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self._end.record()
            self._end.synchronize()
            self.ms = self._start.elapsed_time(self._end)
        else:
            self.ms = (time.perf_counter() - self._t0) * 1000.0


class _PassStreamer(BaseStreamer):
    """Collects new token ids, stamps the first one, forwards decoded text pieces to a callback."""

    def __init__(self, tokenizer, on_text: Callable[[str], None] | None, device: torch.device):
        self.tokenizer, self.on_text, self.device = tokenizer, on_text, device
        self.token_ids: list[int] = []
        self.first_token_at: float | None = None
        self._prompt_seen = False
        self._printed = ""
        self.peak_rss = 0

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first hands over the prompt
            self._prompt_seen = True
            return
        ids = value.reshape(-1).tolist()  # a host sync: the token exists now
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.token_ids.extend(ids)
        if self.device.type != "cuda":
            self.peak_rss = max(self.peak_rss, _rss_bytes())
        if self.on_text is not None:
            text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
            if len(text) > len(self._printed) and not text.endswith("\ufffd"):  # wait out partial characters
                self.on_text(text[len(self._printed) :])
                self._printed = text

    def end(self) -> None:
        if self.on_text is not None:
            text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
            if len(text) > len(self._printed):
                self.on_text(text[len(self._printed) :])
            self._printed = text


def comparison_allocations(grouped: torch.Tensor, curvature: torch.Tensor, config: VCastConfig) -> dict[str, list[int]]:
    """Budgets every allocation strategy would give V-CAST's total, with the same bounds."""
    T, N, _ = grouped.shape
    total = total_budget(T, N, config)
    means = grouped.mean(dim=1, dtype=torch.float32)
    budgets = {}
    for name in ALLOCATIONS:
        weights = allocation_weights(curvature.to(means.device), means, allocation=name, temperature=config.temperature)
        budgets[name] = allocate_budgets(
            weights, total, min_per_frame=min(config.min_tokens_per_frame, N), cap=N
        ).tolist()
    return budgets


def hub_reachable(host: str = "huggingface.co", timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers on its HTTPS port (False at once where DNS fails)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT")
    if endpoint:
        host = endpoint.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def _rss_bytes() -> int:
    import psutil

    return psutil.Process(os.getpid()).memory_info().rss


def _check_static_cache_options(generation_kwargs: dict) -> None:
    """compile_decode hands generate one static cache of batch 1: refuse what needs another cache."""
    for name in ("past_key_values", "cache", "cache_implementation"):
        if name in generation_kwargs:
            raise ValueError(f"{name} cannot be passed with compile_decode, which provides the KV cache itself")
    for name in ("num_beams", "num_return_sequences"):
        if generation_kwargs.get(name, 1) != 1:
            raise ValueError(f"{name} > 1 needs several KV cache rows; compile_decode's cache has one. "
                             "Use a VideoQA without compile_decode.")  # fmt: skip


def check_methods(methods: Sequence[str] | str) -> list[str]:
    """The methods of an answer as a list of distinct known names; ValueError saying what is allowed."""
    names = [methods] if isinstance(methods, str) else list(methods)
    if not names:
        raise ValueError(f"choose at least one method: {', '.join(METHODS)}")
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method {unknown[0]!r}; the methods are {', '.join(METHODS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"each method may be asked for once, got {', '.join(names)}")
    return names


def random_weights_id(name: str) -> str:
    """The model id of `VideoQA.random_weights(name)`: "random-weights:Qwen3-VL-8B" for a Qwen3-VL size, else name."""
    from .models.configs import REAL_SIZES

    return f"random-weights:{f'Qwen3-VL-{name}' if name in REAL_SIZES else name}"


def tiny_family(model_id: str) -> str | None:
    """The family of a tiny model name ("tiny" -> "qwen3_vl", "tiny-qwen2_5_vl" -> "qwen2_5_vl"), else None."""
    if model_id == TINY_MODEL_ID:
        return "qwen3_vl"
    if model_id.startswith(TINY_MODEL_ID + "-"):
        return model_id[len(TINY_MODEL_ID) + 1 :]
    return None


DEFAULT_VISION_SDPA = ("flash", "efficient", "math")  # the vision attention's backends on a GPU (no cuDNN)
DEFAULT_MAX_PIXELS_PER_VIDEO = 16384 * 32 * 32  # the processor's pixel budget over a clip: 16384 merged tokens
# `compile_prefill` also runs the decode steps through the compiled layers (GraphDecoder.compile_prefill(steps=...)).
COMPILED_STEPS = True


class VideoQA:
    """A video LLM and its processor, loaded once, answering questions about videos.

    Build with `VideoQA.from_pretrained(model_id)` (hub or local folder), `VideoQA.tiny(family=...)`
    or `VideoQA.random_weights(name)`. Supported families: see `vcast.models.base.families()`.
    """

    def __init__(
        self,
        model,
        processor,
        *,
        model_id: str,
        vision_chunk_patches: int = DEFAULT_VISION_CHUNK_PATCHES,
        processor_kwargs: dict | None = None,
        batched_vision_attention: bool = True,
        compile_vision: bool | str = False,
        compile_decode: bool = False,
        graph_decode: bool | None = None,
        compile_prefill: bool = False,
        max_generation_s: float = DEFAULT_MAX_GENERATION_S,
    ):
        """Wrap a loaded `model` of a supported family and its `processor`.

        batched_vision_attention: faster, equal-result vision paths where the family has them
        (Qwen3-VL, Qwen3.5: one attention call per vision layer for all frame pairs, the patch
        embedding as a matrix product, the rotary embedding without layout copies; SDPA only).
        vision_chunk_patches: patches the vision tower encodes at once (activation memory vs speed).
        compile_vision: torch.compile the vision tower of this instance (fuses its elementwise work;
        the first video of each new shape pays the compilation, tens of seconds at 8B scale; on a GPU
        with kernels launched from C++, `inductor_options`); a string names the torch.compile mode
        (e.g. "reduce-overhead" for CUDA graphs) instead.
        compile_decode: decode from static KV caches (`vcast.models.decode`), which transformers'
        generate compiles into CUDA graphs on a GPU: each decode step is then bound by the GPU,
        where V-CAST's shorter cache pays, rather than by the host's Python. Cache lengths are
        rounded up to 64 tokens; the first request pays a compilation, the second length a
        recompilation with symbolic lengths, and each new length a graph recording. Each pass's
        cache is freed with it; `self.decode_caches = DecodeCaches(model, kept=2)` keeps them across
        requests instead (the reported peak memory then includes them). Greedy or sampled decoding
        of one sequence only (no beams). On the CPU the caches are used without compilation.
        graph_decode: decode each pass from a static KV cache with every step one CUDA-graph replay
        (`vcast.models.graph_decode`): no compilation, recorded per pass in one step's time, GPU-bound
        decoding. None (the default) turns it on where the model sits on one GPU; passes whose
        generation options it does not reproduce (beams, repetition penalties, ...) use generate.
        Ignored when compile_decode is set.
        compile_prefill: torch.compile the language model's decoder layers for the graph decoder's LLM
        prefill and decode steps (`vcast.models.compiled_prefill`: one graph set for every layer and prompt
        length, one for the one-token steps, which are then recorded as CUDA graphs of Inductor's kernels; the
        first answer compiles; on a GPU the kernels are launched from C++, `inductor_options`). Only with the graph
        decoder and decoder layers it serves (dense Qwen3-VL) on one device; ignored elsewhere (`prefill_compiled`
        says whether it is on).
        max_generation_s: wall-clock limit of each pass's generation (generate's max_time).
        Raises ValueError naming the supported families for a model of another family.
        """
        self.adapter: ModelAdapter = adapter_for(model, processor, processor_kwargs)
        if batched_vision_attention:
            self.adapter.speed_up_vision()
        if compile_vision:
            if isinstance(compile_vision, str):  # a mode names its own options
                self.adapter.vision_tower.compile(dynamic=True, mode=compile_vision)
            else:
                self.adapter.vision_tower.compile(dynamic=True, options=inductor_options(model.device) or None)
        self.decode_caches = DecodeCaches(model) if compile_decode else None
        if graph_decode is None:
            graph_decode = model.device.type == "cuda"
        self.graph_decoder = GraphDecoder(model) if graph_decode and not compile_decode else None
        serves = self.graph_decoder is not None and self.graph_decoder.device is not None  # one device: it prefills
        if compile_prefill and serves and compiled_prefill_unsupported(model) is None:
            self.graph_decoder.compile_prefill(steps=COMPILED_STEPS)
        self.model, self.processor, self.model_id = model, processor, model_id
        self.vision_chunk_patches = vision_chunk_patches
        # SDPA backends for the vision tower's attention on a GPU, by name ("flash", "efficient", "cudnn",
        # "math"); None: PyTorch's own order. Not cuDNN by default: PyTorch puts it first on Hopper, and it
        # plans every new shape anew, so the first video of a new size paid up to 3.5x the second's time
        # (H200, docs/BENCHMARKS.md section 10); flash is 4-5% slower on a known shape.
        self.vision_sdpa_backends: list[str] | None = list(DEFAULT_VISION_SDPA)
        self.max_generation_s = max_generation_s
        self.is_tiny = tiny_family(model_id) is not None
        self._compiled_shapes_only = False  # freeze_vision_compilation() was called

    @property
    def vision_compiled(self) -> bool:
        """Whether the vision tower runs through torch.compile (`compile_vision`, not undone by `use_eager_vision`)."""
        return getattr(self.adapter.vision_tower, "_compiled_call_impl", None) is not None

    def use_eager_vision(self) -> None:
        """Undo `compile_vision`: the vision tower runs eagerly from the next video on (for when compiling failed)."""
        self.adapter.vision_tower._compiled_call_impl = None
        self._compiled_shapes_only = False

    def freeze_vision_compilation(self) -> None:
        """Compile nothing more: from now on, a video whose shapes no compiled graph of the vision tower serves
        runs the tower eagerly instead of compiling one (torch.compiler's "eager_on_recompile" stance, during
        this instance's vision pass only). A server calls it after its warm-up, so that no request pays a
        compilation and the compiled graphs stay bounded. No effect on a tower that is not compiled.
        The compiled LLM prefill (`compile_prefill`) is frozen likewise."""
        self._compiled_shapes_only = self.vision_compiled
        if self.prefill_compiled:
            self.graph_decoder.compiled_prefill.freeze()

    @property
    def prefill_compiled(self) -> bool:
        """Whether the LLM's decoder layers run through torch.compile in the prefill, and in the decode steps where
        COMPILED_STEPS (`compile_prefill`, not undone by `use_eager_prefill`)."""
        return self.graph_decoder is not None and self.graph_decoder.compiled_prefill is not None

    def use_eager_prefill(self) -> None:
        """Undo `compile_prefill` (for when compiling failed)."""
        if self.graph_decoder is not None:
            self.graph_decoder.use_eager_prefill()

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def family(self) -> str:
        return self.adapter.family

    @property
    def processor_kwargs(self) -> dict:
        return self.adapter.processor_kwargs

    @classmethod
    def from_pretrained(
        cls,
        model_id: str = DEFAULT_MODEL_ID,
        *,
        device_map: str | dict | None = "auto",
        dtype: str | torch.dtype = "auto",
        attn_implementation: str | None = None,
        max_pixels_per_video: int = DEFAULT_MAX_PIXELS_PER_VIDEO,
        compile_vision: bool | str = False,
        compile_decode: bool = False,
        graph_decode: bool | None = None,
        compile_prefill: bool = False,
        vision_chunk_patches: int = DEFAULT_VISION_CHUNK_PATCHES,
        max_generation_s: float = DEFAULT_MAX_GENERATION_S,
        **loading_options,
    ) -> VideoQA:
        """Load a checkpoint of a supported family from the Hugging Face hub or a local folder.

        The family comes from the checkpoint's `config.model_type`. `max_pixels_per_video` is the
        processor's total pixel budget over the clip, in Qwen3-VL's 32 x 32-pixel merged tokens (the
        other Qwen families get the same token budget; LLaVA-OneVision's frames are always 384 pixels).
        `compile_vision`, `compile_decode`, `graph_decode`, `compile_prefill`, `vision_chunk_patches` and
        `max_generation_s` are VideoQA's (see `__init__`); other keywords go to transformers' `from_pretrained`.
        "tiny" or "tiny-<family>" builds the offline tiny model instead. Raises ModelError with what to do when
        the checkpoint is unreachable, unknown, or of an unsupported family.
        """
        options = {"compile_vision": compile_vision, "compile_decode": compile_decode, "graph_decode": graph_decode,
                   "compile_prefill": compile_prefill, "vision_chunk_patches": vision_chunk_patches,
                   "max_generation_s": max_generation_s}  # fmt: skip
        family = tiny_family(model_id)
        if family is not None:
            return cls.tiny(family=family, **options)
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

        # Without the hub, only a local folder or a copy in the local cache can load; find out in
        # seconds rather than after the hub client's retries.
        offline = not Path(model_id).is_dir() and not hub_reachable()
        if offline:
            loading_options.setdefault("local_files_only", True)
        try:
            config = AutoConfig.from_pretrained(model_id, local_files_only=offline)
        except (OSError, ValueError) as err:
            why = "the Hugging Face hub cannot be reached from here" if offline else "no such model was found"
            raise ModelError(
                f"Could not load the model {model_id!r}: {why}. Check the name and your connection, pass a local "
                "folder, or run offline on the tiny random model (`--model tiny`, VideoQA.tiny())."
            ) from err
        try:
            adapter = adapter_class(config.model_type)
        except ValueError as err:
            raise ModelError(f"{model_id!r}: {err}") from err
        loading = {"device_map": device_map, "dtype": dtype, **loading_options}
        if attn_implementation is not None:
            loading["attn_implementation"] = attn_implementation
        try:
            model = AutoModelForImageTextToText.from_pretrained(model_id, **loading).eval()
            processor = AutoProcessor.from_pretrained(model_id, local_files_only=offline)
        except OSError as err:
            raise ModelError(f"Could not load the weights of {model_id!r}: {err}") from err
        return cls(model, processor, model_id=model_id, processor_kwargs=adapter.pixel_budget(max_pixels_per_video),
                   **options)  # fmt: skip

    @classmethod
    def tiny(cls, seed: int = 0, *, family: str = "qwen3_vl", moe: bool = False, attn_implementation: str = "sdpa",
             **options) -> VideoQA:  # fmt: skip
        """A tiny random model of a family's real architecture ("qwen3_vl", "qwen3_vl_moe", "qwen2_5_vl",
        "qwen3_5", "qwen3_5_moe", "llava_onevision"), with an offline tokenizer and processor.
        `options` are VideoQA's (`compile_vision`, `vision_chunk_patches`, `max_generation_s`, ...)."""
        from .models.configs import TINY_FAMILIES
        from .models.tiny import tiny_model, tiny_processor

        if moe and family == "qwen3_vl":
            family = "qwen3_vl_moe"
        if family not in TINY_FAMILIES:
            raise ValueError(f"family must be one of {', '.join(TINY_FAMILIES)}, got {family!r}")
        model = tiny_model(family=family, seed=seed, attn_implementation=attn_implementation)
        processor = tiny_processor(family.removesuffix("_moe"))
        # Random weights pick bytes at random; keeping them to printable ASCII shows readable noise
        # instead of broken characters. Real checkpoints are left alone.
        vocab = processor.tokenizer.get_vocab()
        readable = {vocab[c] for c in map(chr, range(33, 127))} | {vocab["Ġ"]}  # "Ġ" is the space byte
        all_ids = range(model.config.get_text_config().vocab_size)
        model.generation_config.suppress_tokens = [i for i in all_ids if i not in readable]
        model_id = TINY_MODEL_ID if family == "qwen3_vl" else f"{TINY_MODEL_ID}-{family}"
        return cls(model, processor, model_id=model_id, **options)

    @classmethod
    def random_weights(
        cls,
        name: str = "8B",
        *,
        device: str | torch.device = "cuda",
        dtype: torch.dtype = torch.bfloat16,
        attn_implementation: str = "sdpa",
        max_pixels_per_frame: int = 768 * 32 * 32,
        max_pixels_per_video: int | None = DEFAULT_MAX_PIXELS_PER_VIDEO,
        **options,
    ) -> VideoQA:
        """A random-weight model with the real shapes of a released checkpoint and an offline processor:
        the real costs of that model, offline (benchmarks, GPU checks); its answers are noise.
        name: a Qwen3-VL size ("2B", "8B", "30B-A3B", ...) or "Qwen2.5-VL-7B", "Qwen3.5-9B",
        "LLaVA-OneVision-7B" (`vcast.models.configs.real_model_names()`)."""
        from .models.tiny import random_model, real_processor

        model = random_model(name, device=device, dtype=dtype, attn_implementation=attn_implementation)
        processor = real_processor(name, max_pixels_per_frame)
        # The processor's total budget over the clip, as from_pretrained (the app) sets it; None: frames capped only.
        budget = None if max_pixels_per_video is None else adapter_class(model.config.model_type).pixel_budget(
            max_pixels_per_video)  # fmt: skip
        return cls(model, processor, model_id=random_weights_id(name), processor_kwargs=budget, **options)

    # -- the public steps -------------------------------------------------------------------------

    def check_question(self, question: str) -> str:
        """The question if a model may read it; ValueError with what to change otherwise.

        Questions are user text: control tokens of the chat format typed into them (`<|im_end|>`,
        `<|video_pad|>`, ...) would be read as real turns or placeholders, so they are refused.
        """
        if not isinstance(question, str) or not question.strip():
            raise ValueError("Please ask a question about the video (the question is empty).")
        try:
            question.encode("utf-8")
        except UnicodeEncodeError as err:
            raise ValueError(
                "The question contains characters that are not valid text (a lone surrogate, e.g. from a broken "
                "paste or a wrongly encoded file); please retype it."
            ) from err
        found = [(question.find(t), -len(t), t) for t in self.adapter.special_tokens() if t in question]
        if found:
            token = min(found)[2]  # the first in the text (the longest where two start at once)
            raise ValueError(
                f"The question contains {token!r}, a control token of the model's chat format; remove it "
                "(questions are plain text)."
            )
        return question

    def prompt(self, video: str | os.PathLike | VideoClip, question: str, *,
               num_frames: int | None = None) -> Prompt:  # fmt: skip
        """Check the question, decode `video` (a path or a VideoClip) and run the processor: the CPU
        half of `prepare`. Raises VideoError for an unusable video, ValueError for a bad question."""
        self.check_question(question)
        clip = video if isinstance(video, VideoClip) else read_video(video, num_frames=num_frames)
        with self._model_errors(["preparing the frames"]):  # on a GPU the processor runs there
            inputs = self.adapter.processor_inputs(clip, question)
        return Prompt(clip=clip, question=question, inputs=inputs)

    def encode(self, prompt: Prompt, *, cancel: threading.Event | None = None) -> Prepared:
        """The vision tower over the prompt's video and the model's unpruned positions (timed): the
        GPU half of `prepare`. Raises ModelError when the model fails, Cancelled when `cancel` is set."""
        stage = ["encoding the frames"]
        with self._model_errors(stage):
            return self._encode(prompt, cancel or threading.Event())

    def prepare(self, video: str | os.PathLike | VideoClip, question: str, *, num_frames: int | None = None,
                cancel: threading.Event | None = None) -> Prepared:  # fmt: skip
        """Decode `video` (a path or a VideoClip), run the processor, the vision tower and the model's
        unpruned positions, once: every pass of every method then generates from the result
        (`prompt` then `encode`).

        Raises VideoError for an unusable video, ValueError for a question that cannot be asked,
        ModelError when the model fails (out of memory: what to try), Cancelled when `cancel` is set.
        """
        return self.encode(self.prompt(video, question, num_frames=num_frames), cancel=cancel)

    def select(self, prepared: Prepared, method: str = "vcast", *, config: VCastConfig | None = None,
               **options) -> Selection:  # fmt: skip
        """`vcast.prune` on the prepared features: `method` at `config.retain_ratio` (V-CAST also takes
        the config's temperature, allocation and minimum per group). The grid of the merged tokens is
        passed for the 2x2 methods. `options` go to `vcast.prune`."""
        config = config or VCastConfig()
        if method == "vcast":
            options = {"temperature": config.temperature, "min_tokens_per_frame": config.min_tokens_per_frame,
                       "allocation": config.allocation, **options}  # fmt: skip
        options.setdefault("grid_hw", tuple(prepared.grid[1:]))
        with torch.inference_mode():
            return prune(prepared.grouped(), method=method, retain_ratio=config.retain_ratio, **options)

    def pass_inputs(self, prepared: Prepared, selection: Selection | None = None) -> PassInputs:
        """What `generate` (or a plain forward) takes for one pass: all visual tokens (selection None)
        or the selection's, at their unpruned positions."""
        with torch.inference_mode():
            return self.adapter.pass_inputs(prepared.inputs, prepared.features, prepared.positions, selection)

    def generate(
        self,
        prepared: Prepared,
        selection: Selection | None = None,
        *,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        selection_ms: float = 0.0,
        on_token: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
        **generation_kwargs,
    ) -> PassResult:
        """Generate one pass from a `Prepared`: on `selection`'s tokens, or on all of them (None).

        Greedy unless sampling parameters are passed. `on_token(piece)` receives the text as it is
        generated; `selection_ms` (the selection's own time) is counted in the pass's TTFT and total.
        Setting `cancel` ends generation at the next token: the pass returns what it has, with
        stop_reason "cancelled".
        """
        _check_max_new_tokens(max_new_tokens)
        if self.decode_caches is not None:
            _check_static_cache_options(generation_kwargs)
        cancel = cancel or threading.Event()
        name = FULL if selection is None else selection.method
        stage = [f"generating the {METHOD_LABELS.get(name, 'unpruned')} answer"]
        with self._model_errors(stage):
            inputs = self.pass_inputs(prepared, selection)
            visual_in = prepared.features.num_tokens
            emit = None if on_token is None else (lambda _, piece: on_token(piece))
            return self._generate(name, inputs, visual_in, prepared.vision_ms, selection_ms, prepared.vision_peak_mb,
                                  max_new_tokens, emit, cancel, generation_kwargs)  # fmt: skip

    def answer(
        self,
        video: str | os.PathLike | VideoClip,
        question: str,
        *,
        config: VCastConfig | None = None,
        methods: Sequence[str] | str = ("vcast",),
        compare: bool = True,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        num_frames: int | None = None,
        on_token: TokenCallback | None = None,
        on_event: EventCallback | None = None,
        cancel: threading.Event | None = None,
        method_options: dict[str, dict] | None = None,
        **generation_kwargs,
    ) -> QAResult:
        """Answer `question` about `video` with each of `methods` (default V-CAST) and, if `compare`, unpruned.

        One decode, one vision pass and one set of positions serve every pass. All methods share
        `config.retain_ratio`; V-CAST also uses the config's other settings; `method_options` gives
        per-method options of `vcast.prune` (e.g. {"random_2x2": {"seed": 3}}). Greedy decoding unless
        sampling parameters are passed. `on_token(pass_name, text_piece)` receives each pass's text as
        it is generated (methods in order, then "full"); `on_event(kind, payload)` receives ("selected",
        the QAResult without passes) once every method has selected, and ("pass", PassResult) as each
        pass ends. Setting `cancel` stops the work at the next token or stage and raises Cancelled (a pass
        cut by it is still reported to `on_event`, with stop_reason "cancelled"). Running out of GPU
        memory frees what the request held and raises ModelError saying what to try.
        """
        config = config or VCastConfig()
        methods = check_methods(methods)
        if not isinstance(compare, bool):
            raise ValueError(f"compare must be True or False, got {compare!r}")
        _check_max_new_tokens(max_new_tokens)
        if self.decode_caches is not None:
            _check_static_cache_options(generation_kwargs)
        method_options = method_options or {}
        cancel = cancel or threading.Event()
        emit = on_event or (lambda kind, payload: None)
        prompt = self.prompt(video, question, num_frames=num_frames)
        stage = ["encoding the frames"]
        with self._model_errors(stage):
            prepared = self._encode(prompt, cancel)
            # Every method selects first (a fraction of a millisecond each): the figures can show before any answer.
            stage[0] = "selecting tokens"
            self._check(cancel)
            selected, selection_ms = {}, {}
            for method in methods:
                with _Timer(self.device) as selecting:
                    selected[method] = self.select(prepared, method, config=config, **method_options.get(method, {}))
                selection_ms[method] = selecting.ms
            curvature = selected[methods[0]].curvature
            result = QAResult(
                question=question, passes={}, full=None, grid=prepared.grid, processed_size=prepared.processed_size,
                selections={m: s.to("cpu") for m, s in selected.items()}, group_times=prepared.group_times,
                clip=prepared.clip, config=config, model_id=self.model_id, family=self.family,
                allocations=comparison_allocations(prepared.grouped(), curvature, config),
                frames_per_group=self.adapter.frames_per_group,
            )  # fmt: skip
            emit("selected", result)
            shown = _Shown.of(prepared)
            passes: dict[str, PassResult] = {}
            for i, method in enumerate([*methods, *[FULL] * compare]):
                stage[0] = f"generating the {METHOD_LABELS.get(method, 'unpruned')} answer"
                self._check(cancel)
                with _Timer(self.device) as building:
                    pass_inputs = self.pass_inputs(prepared, selected.pop(method, None))
                if i == len(methods) - 1 and not compare:
                    prepared = None  # the last pass holds its own slices: free the unpruned features first
                spent = selection_ms.get(method, 0.0) + (building.ms if method != FULL else 0.0)
                passes[method] = self._generate(
                    method, pass_inputs, shown.visual_tokens, shown.vision_ms, spent, shown.vision_peak_mb,
                    max_new_tokens, on_token, cancel, generation_kwargs,
                )  # fmt: skip
                del pass_inputs
                emit("pass", passes[method])
                self._check(cancel)
        return dataclasses.replace(result, full=passes.pop(FULL, None), passes=passes)

    def warm_up(self, video: str | os.PathLike | VideoClip, *, num_frames: int = 4) -> float:
        """One short run of both passes, so the first real request's timings hold no one-time set-up
        (CUDA context, kernel selection, compilation) that would otherwise land on the V-CAST pass,
        which runs first. Returns the seconds it took."""
        started = time.perf_counter()
        # Two tokens in every pass, even where the first is an end of text: the second is the first decode step,
        # which records the step's graph (and, with compiled steps, compiles them) before a server freezes.
        self.answer(video, "What happens in this video?", num_frames=num_frames, max_new_tokens=2, min_new_tokens=2)
        return time.perf_counter() - started

    def stream(self, video, question: str, **answer_kwargs) -> Iterator[tuple[str, Any]]:
        """`answer` as a stream of events: ("selected", QAResult without passes) once every method has
        selected; (pass name, text piece) as tokens arrive (each method's name, then "full"); ("pass",
        PassResult) as each pass ends; then ("done", QAResult). An error in the worker (Cancelled too) is
        raised here, in the caller's thread; closing the stream early cancels the work."""
        events: queue.Queue = queue.Queue()
        cancel = threading.Event()

        def work() -> None:
            try:
                result = self.answer(video, question, on_token=lambda name, piece: events.put((name, piece)),
                                     on_event=lambda kind, payload: events.put((kind, payload)), cancel=cancel,
                                     **answer_kwargs)  # fmt: skip
                events.put(("done", result))
            except BaseException as err:  # handed to the consumer, which re-raises it
                events.put(("error", err))

        worker = threading.Thread(target=work, name="vcast-stream", daemon=True)
        worker.start()
        try:
            while True:
                kind, payload = events.get()
                if kind == "error":
                    raise payload
                yield kind, payload
                if kind == "done":
                    return
        finally:
            # The consumer stopped early (closed the generator, e.g. a cancelled web request) or an
            # error ended the stream: the worker stops at its next token instead of running on.
            cancel.set()

    # -- internals ----------------------------------------------------------------------------------

    def _encode(self, prompt: Prompt, cancel: threading.Event) -> Prepared:
        self._check(cancel)
        self._reset_peak()
        with torch.inference_mode(), self._vision_backends(), self._vision_stance(), _Timer(self.device) as vision:
            on_host = self.adapter.prompt_on_host(prompt.inputs)
            features = self.adapter.encode(prompt.inputs, chunk_patches=self.vision_chunk_patches)
            positions = self.adapter.positions(on_host, device=self.device)  # overlaps the GPU work
        return Prepared(
            clip=prompt.clip, question=prompt.question, inputs=prompt.inputs, features=features, positions=positions,
            vision_ms=vision.ms, vision_peak_mb=self._peak_memory(), group_times=self.adapter.group_times(prompt.clip),
            processed_size=self.adapter.processed_size(features),
        )  # fmt: skip

    def _vision_stance(self):
        if not self._compiled_shapes_only:
            return contextlib.nullcontext()
        return torch.compiler.set_stance("eager_on_recompile")

    def _vision_backends(self):
        if not self.vision_sdpa_backends or self.device.type != "cuda":
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        names = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                 "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}  # fmt: skip
        return sdpa_kernel([names[n] for n in self.vision_sdpa_backends])

    @contextlib.contextmanager
    def _model_errors(self, stage: list[str]) -> Iterator[None]:
        """Turns out-of-memory and compilation failures into ModelError saying what to try."""
        try:
            yield
        except torch.OutOfMemoryError as err:
            self._free_memory()
            raise ModelError(_OUT_OF_MEMORY.format(stage=stage[0])) from err
        except torch._dynamo.exc.TorchDynamoException as err:  # compiling on a machine that cannot compile
            what = "the vision tower" if stage[0] == "encoding the frames" else "the LLM prefill or decode step"
            raise ModelError(
                f"Compiling {what} failed ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
                "run without compiling (compile_vision / compile_prefill / compile_decode; the app's --no-compile)."
            ) from err

    def _generate(
        self,
        name: str,
        pass_inputs: PassInputs,
        visual_tokens_in: int,
        vision_ms: float,
        selection_ms: float,
        vision_peak: float,
        max_new_tokens: int,
        on_token: TokenCallback | None,
        cancel: threading.Event,
        generation_kwargs: dict,
    ) -> PassResult:
        emit = None if on_token is None else (lambda piece: on_token(name, piece))
        streamer = _PassStreamer(self.processor.tokenizer, emit, self.device)
        self._reset_peak()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        decoding = self.decode(pass_inputs, max_new_tokens=max_new_tokens, streamer=streamer, cancel=cancel,
                               **generation_kwargs)  # fmt: skip
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        end = time.perf_counter()
        stop_reason = self._stop_reason(streamer.token_ids, max_new_tokens, cancel)
        first = streamer.first_token_at or end
        new_tokens = len(streamer.token_ids)
        prefill_ms = (first - start) * 1000.0
        decode_s = end - first
        peak = max(vision_peak, self._peak_memory(streamer.peak_rss))  # with kept caches, they count too
        metrics = PassMetrics(
            visual_tokens_in=visual_tokens_in,
            visual_tokens_kept=pass_inputs.num_visual_tokens,
            sequence_length=int(pass_inputs.input_ids.shape[1]),
            vision_ms=vision_ms,
            selection_ms=selection_ms,
            prefill_ms=prefill_ms,
            ttft_ms=vision_ms + selection_ms + prefill_ms,
            decode_tokens_per_s=(new_tokens - 1) / decode_s if new_tokens > 1 and decode_s > 0 else 0.0,
            total_ms=vision_ms + selection_ms + (end - start) * 1000.0,
            new_tokens=new_tokens,
            peak_memory_mb=peak,
            memory_kind="cuda_max_allocated" if self.device.type == "cuda" else "process_rss",
            decoding=decoding,
        )
        text = self.processor.tokenizer.decode(streamer.token_ids, skip_special_tokens=True)
        return PassResult(text=text, token_ids=list(streamer.token_ids), metrics=metrics, method=name,
                          stop_reason=stop_reason)  # fmt: skip

    def decode(self, pass_inputs: PassInputs, *, max_new_tokens: int, streamer: BaseStreamer | None = None,
               cancel: threading.Event | None = None, **generation_kwargs) -> str:  # fmt: skip
        """Prefill and decode one pass (the LLM part of `generate`), handing tokens to `streamer`
        (transformers' `put`/`end` protocol: the prompt first, then each new token). Stops at an
        end-of-text token (not before `min_new_tokens`, if given), after `max_new_tokens`, at
        `max_generation_s` or when `cancel` is set. Returns how it decoded:
        "cuda_graphs" or "eager_loop" (the graph decoder, `graph_decode`) or "generate" (transformers'
        generate: on the CPU, with compile_decode, or for options the graph decoder does not reproduce)."""
        cancel = cancel or threading.Event()
        decoder = self.graph_decoder
        if decoder is not None and decoder.unsupported(generation_kwargs) is None:
            return self._decode_with(decoder, pass_inputs, max_new_tokens, streamer, cancel, generation_kwargs)
        stop = StoppingCriteriaList([_CancelCriteria(cancel)])
        kwargs = {"do_sample": False, "max_new_tokens": max_new_tokens, "max_time": self.max_generation_s,
                  "stopping_criteria": stop, **generation_kwargs}  # fmt: skip
        if not kwargs.get("do_sample"):
            kwargs.setdefault("temperature", None)
            kwargs.setdefault("top_p", None)
            kwargs.setdefault("top_k", None)
        if self.decode_caches is not None:  # allocating the cache is part of this pass's prefill
            length = int(pass_inputs.input_ids.shape[1]) + max_new_tokens
            kwargs[cache_argument(self.model)] = self.decode_caches.get(length)
        with torch.inference_mode(), _generation_attention(self.device):
            self.model.generate(**pass_inputs.generate_kwargs(), streamer=streamer, **kwargs)
        return "generate"

    def _decode_with(self, decoder: GraphDecoder, pass_inputs: PassInputs, max_new_tokens: int,
                     streamer: BaseStreamer | None, cancel: threading.Event,
                     generation_kwargs: dict) -> str:  # fmt: skip
        if streamer is not None:
            streamer.put(pass_inputs.input_ids)
        started = time.perf_counter()
        limit = self.max_generation_s

        def on_token(token_id: int) -> bool:
            if streamer is not None:
                streamer.put(torch.tensor([token_id]))
            return cancel.is_set() or (limit is not None and time.perf_counter() - started > limit)

        try:
            with torch.inference_mode(), _generation_attention(self.device):
                decoder.run(pass_inputs, max_new_tokens=max_new_tokens, generation_kwargs=generation_kwargs,
                            on_token=on_token, stop_ids=self._eos_ids())  # fmt: skip
        finally:
            if streamer is not None:
                streamer.end()
        return decoder.mode

    def _eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        eos = set() if eos is None else {eos} if isinstance(eos, int) else set(eos)
        if self.processor.tokenizer.eos_token_id is not None:
            eos.add(self.processor.tokenizer.eos_token_id)
        return eos

    def _stop_reason(self, token_ids: list[int], max_new_tokens: int, cancel: threading.Event) -> str:
        """Why generation ended: cancelled, at the token cap, at an end-of-text token, else the time limit."""
        if cancel.is_set():
            return "cancelled"
        if len(token_ids) >= max_new_tokens:
            return "token_limit"
        if token_ids and token_ids[-1] in self._eos_ids():
            return "end_of_text"
        return "time_limit"

    @staticmethod
    def _check(cancel: threading.Event) -> None:
        if cancel.is_set():
            raise Cancelled("The request was cancelled.")

    def _free_memory(self) -> None:
        """Release what a failed request left behind, so the next one starts clean."""
        if self.decode_caches is not None:
            self.decode_caches.clear()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def _peak_memory(self, rss_seen: int = 0) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return max(rss_seen, _rss_bytes()) / 2**20


def _check_max_new_tokens(max_new_tokens: int) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
        raise ValueError(f"max_new_tokens must be a whole number, got {max_new_tokens!r}")
    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
        raise ValueError(f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS_LIMIT}, got {max_new_tokens}")



@dataclass(frozen=True)
class _Shown:
    """The parts of a Prepared that a QAResult shows, without the features' memory."""

    clip: VideoClip
    grid: tuple[int, int, int]
    processed_size: tuple[int, int]
    group_times: list[float]
    visual_tokens: int
    vision_ms: float
    vision_peak_mb: float

    @classmethod
    def of(cls, prepared: Prepared) -> _Shown:
        return cls(clip=prepared.clip, grid=prepared.grid, processed_size=prepared.processed_size,
                   group_times=prepared.group_times, visual_tokens=prepared.features.num_tokens,
                   vision_ms=prepared.vision_ms, vision_peak_mb=prepared.vision_peak_mb)  # fmt: skip
