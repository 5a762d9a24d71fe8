"""Which model to load: the released checkpoints of every supported family, and the choice for this machine.

The CLI and the app choose alike: `default_model_id` is Qwen3-VL-8B on a GPU that holds it, Qwen3-VL-2B
otherwise (a smaller GPU or a CPU); where the Hugging Face hub cannot be reached, only the tiny offline
models (`tiny`, `tiny-<family>`) can run. `load_startup_model` is how a server starts: the model it serves and a
banner saying how it is degraded (a tiny random model, no GPU).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .models.configs import REAL_MODELS
from .pipeline import ModelError, VideoQA, tiny_family

logger = logging.getLogger(__name__)
TINY_MODELS = ("tiny", "tiny-qwen3_vl_moe", "tiny-qwen2_5_vl", "tiny-qwen3_5", "tiny-llava_onevision")


@dataclass(frozen=True)
class Checkpoint:
    """A released checkpoint: its hub id, family, and the GPU memory (GiB) it needs in bf16 with a
    64-frame clip in flight."""

    model_id: str
    family: str
    gpu_gib: float


CHECKPOINTS = (
    Checkpoint("Qwen/Qwen3-VL-2B-Instruct", "qwen3_vl", 10.0),
    Checkpoint("Qwen/Qwen3-VL-4B-Instruct", "qwen3_vl", 16.0),
    Checkpoint("Qwen/Qwen3-VL-8B-Instruct", "qwen3_vl", 24.0),
    Checkpoint("Qwen/Qwen3-VL-32B-Instruct", "qwen3_vl", 90.0),
    Checkpoint("Qwen/Qwen3-VL-30B-A3B-Instruct", "qwen3_vl", 75.0),
    Checkpoint("Qwen/Qwen2.5-VL-3B-Instruct", "qwen2_5_vl", 12.0),
    Checkpoint("Qwen/Qwen2.5-VL-7B-Instruct", "qwen2_5_vl", 24.0),
    Checkpoint("Qwen/Qwen3.5-2B", "qwen3_5", 10.0),
    Checkpoint("Qwen/Qwen3.5-9B", "qwen3_5", 28.0),
    Checkpoint("llava-hf/llava-onevision-qwen2-0.5b-ov-hf", "llava_onevision", 6.0),
    Checkpoint("llava-hf/llava-onevision-qwen2-7b-ov-hf", "llava_onevision", 24.0),
    Checkpoint("llava-hf/LLaVA-Video-7B-Qwen2-hf", "llava_onevision", 24.0),
)
LARGE_DEFAULT, SMALL_DEFAULT = "Qwen/Qwen3-VL-8B-Instruct", "Qwen/Qwen3-VL-2B-Instruct"
_NEEDS = {c.model_id: c.gpu_gib for c in CHECKPOINTS}
COMPILED_WARM_UP_FRAMES = 32  # frames of the warm-up answer when the vision tower is compiled (4 otherwise)
ZERO_GPU_GIB, ZERO_GPU_MAX_S = 70.0, 120  # a ZeroGPU slice of an H200, and its longest reservation


def gpu_memory_gib(*, zero_gpu: bool = False) -> float:
    """Total memory of the GPU a model would use (the first); 0 without one. zero_gpu: ZeroGPU's slice, which no
    process sees outside a call."""
    if zero_gpu:
        return ZERO_GPU_GIB
    if not torch.cuda.is_available():
        return 0.0
    return torch.cuda.get_device_properties(0).total_memory / 2**30


def default_model_id(gpu_gib: float) -> str:
    """Qwen3-VL-8B-Instruct on a GPU that holds it, Qwen3-VL-2B-Instruct otherwise (smaller GPU or CPU)."""
    return LARGE_DEFAULT if gpu_gib >= _NEEDS[LARGE_DEFAULT] else SMALL_DEFAULT


def fitting_models(gpu_gib: float) -> list[str]:
    """The checkpoints that fit this GPU (on a CPU: the small default only, minutes per answer)."""
    if gpu_gib <= 0:
        return [SMALL_DEFAULT]
    return [c.model_id for c in CHECKPOINTS if c.gpu_gib <= gpu_gib] or [SMALL_DEFAULT]


def model_choices(loaded_id: str, *, hub_ok: bool, gpu_gib: float) -> list[str]:
    """The models a user may pick: where the hub is reachable every checkpoint that fits (the loaded one
    first if it is not among them); offline the tiny model of every family."""
    if not hub_ok:
        return [loaded_id, *(m for m in TINY_MODELS if m != loaded_id)]
    fitting = fitting_models(gpu_gib)
    return fitting if loaded_id in fitting else [loaded_id, *fitting]


def offered_models(loaded_id: str, models: list[str] | None = None, *, hub_ok: bool, gpu_gib: float) -> list[str]:
    """What a server offers: `models` (default: `model_choices`) with the loaded model first, once: the one a request
    that names none gets."""
    models = models or model_choices(loaded_id, hub_ok=hub_ok, gpu_gib=gpu_gib)
    return [loaded_id, *(m for m in models if m != loaded_id)]


def startup_model_id(requested: str | None, *, hub_ok: bool, gpu_gib: float) -> str:
    """The model to load at start: the one asked for, else the default for this GPU where the hub is reachable,
    else the tiny offline model."""
    return requested or (default_model_id(gpu_gib) if hub_ok else TINY_MODELS[0])


class ModelSlot:
    """The one model a server holds (models share one GPU): `get(model_id)` returns it, loading `model_id` with
    `load` in place of the one held when it is another. Thread-safe; the old weights are freed before the new load."""

    def __init__(self, load: Callable[[str], Any], held: Any = None):
        self.load, self.held, self._lock = load, held, threading.Lock()

    @property
    def model_id(self) -> str | None:
        return None if self.held is None else self.held.model_id

    def get(self, model_id: str) -> Any:
        with self._lock:
            if self.model_id != model_id:
                self.held = None
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                self.held = self.load(model_id)
            return self.held


COMPILED_VISION_FAMILIES = ("qwen3_vl",)  # families whose vision tower is compiled by default (measured on an H200)


def family_of(model_id: str) -> str | None:
    """The family of a catalogued checkpoint or of `VideoQA.random_weights`' id ("random-weights:Qwen3-VL-8B");
    None for anything else (a local folder, an uncatalogued id)."""
    if model_id.startswith("random-weights:"):
        name = model_id.split(":", 1)[1]
        return "qwen3_vl" if name.startswith("Qwen3-VL-") else REAL_MODELS.get(name, (None,))[0]
    return next((c.family for c in CHECKPOINTS if c.model_id == model_id), None)


def compiles_by_default(model_id: str, *, zero_gpu: bool = False) -> bool:
    """Whether a server compiles `model_id` unless told otherwise (its vision tower, and its LLM's decoder layers for
    the prefill and the decode steps where `compile_prefill` serves the model): a model of a family in
    COMPILED_VISION_FAMILIES (`family_of`) on a dedicated CUDA GPU (not ZeroGPU, which lends a GPU per call)."""
    return family_of(model_id) in COMPILED_VISION_FAMILIES and not zero_gpu and torch.cuda.is_available()


def warm_up_for_serving(qa: VideoQA, video: Any) -> float:
    """Warm `qa` up on `video` for serving, then freeze what it compiles (`freeze_vision_compilation`: the vision
    tower and the LLM's compiled layers): a compiled model warms up on COMPILED_WARM_UP_FRAMES frames (a 4-frame
    warm-up left a 47 s compilation on an H200 for the first longer video), an eager one on 4. Where compiling fails,
    the model is served eagerly and the log says why. Returns the seconds it took."""
    if not (qa.vision_compiled or qa.prefill_compiled):
        return qa.warm_up(video, num_frames=4)
    started = time.perf_counter()
    try:
        qa.warm_up(video, num_frames=COMPILED_WARM_UP_FRAMES)
    except ModelError as err:
        logger.warning("serving %s eagerly (no compiled vision tower or prefill): %s", qa.model_id, err)
        qa.use_eager_vision()
        qa.use_eager_prefill()
        qa.warm_up(video, num_frames=4)
    decoder = qa.graph_decoder
    if qa.prefill_compiled and decoder is not None and decoder.compiled_steps and not decoder.stepped:
        logger.warning("%s: the warm-up ran no decode step, so the decode steps' compiled layers were not compiled "
                       "before freezing; steps will record eager kernels (slower)", qa.model_id)  # fmt: skip
    qa.freeze_vision_compilation()
    return time.perf_counter() - started


def load(model_id: str, *, max_generation_s: float, compile_model: bool | None = None, zero_gpu: bool = False,
         warm_up_video: str | None = None) -> VideoQA:  # fmt: skip
    """`model_id` as a server serves it: each answer cut at `max_generation_s`; the vision tower and, where
    `CompiledPrefill` serves the model (dense Qwen3-VL), the LLM's decoder layers compiled on a CUDA GPU where
    `compile_model` says so (None: `compiles_by_default`), for the prefill and for the graph-recorded decode steps
    (one compilation for every length; generate's own `compile_decode` is not used: it compiles every new length);
    warmed up on `warm_up_video` (`warm_up_for_serving`; a tiny model is not). zero_gpu: the weights go straight to
    "cuda", and there is no GPU outside a call to compile or warm up with."""
    # ZeroGPU: decoding stays eager (graph recording is untested on a GPU lent per call, in another process)
    zero = {"device_map": "cuda", "graph_decode": False} if zero_gpu else {}
    options = {"max_generation_s": max_generation_s, **zero}
    if compile_model is None:
        compile_model = compiles_by_default(model_id, zero_gpu=zero_gpu)
    if compile_model and not zero_gpu and torch.cuda.is_available() and tiny_family(model_id) is None:
        options.update(compile_vision=True, compile_prefill=True)
    qa = VideoQA.from_pretrained(model_id, **options)
    if warm_up_video is not None and not (zero_gpu or qa.is_tiny):
        logger.info("warmed %s up in %.1f s", model_id, warm_up_for_serving(qa, warm_up_video))
    return qa


def load_startup_model(requested: str | None, *, hub_ok: bool, gpu_gib: float, load: Callable[..., VideoQA],
                       **options: Any) -> tuple[VideoQA, str | None]:  # fmt: skip
    """The model to serve, `load(startup_model_id(...), **options)`, or where that fails the tiny offline one, and
    `degraded_banner`'s Markdown (or None); the log says so too."""
    why = "as asked" if requested else "the Hugging Face hub cannot be reached from here"
    try:
        qa = load(startup_model_id(requested, hub_ok=hub_ok, gpu_gib=gpu_gib), **options)
    except ModelError as err:
        qa, why = load(TINY_MODELS[0]), str(err)
    if qa.is_tiny:
        logger.warning("serving %s, a tiny random model (%s): its answers are noise", qa.model_id, why)
    return qa, degraded_banner(qa, why)


def degraded_banner(qa: VideoQA, why: str) -> str | None:
    """Markdown telling the user how the served `qa` falls short (why: why a tiny model serves), or None."""
    if qa.is_tiny:
        return (f"⚠️ **Offline demo: a tiny random model** ({why}). Its answers are noise; selections, figures "
                "and token counts are real. For real answers, run it where huggingface.co is reachable or give "
                "`--model` a downloaded checkpoint.")  # fmt: skip
    on_cpu = qa.device.type == "cpu"
    return f"⚠️ **No GPU:** `{qa.model_id}` runs on the CPU; an answer takes minutes." if on_cpu else None


def gpu_seconds(model_id: str, clip: Any, question: str, config: Any, methods: list[str], compare: bool,
                max_new_tokens: int) -> int:  # fmt: skip
    """ZeroGPU's reservation for one answer (the arguments of the app's answer_events; `clip` a VideoClip): the
    vision tower by frames, each pass by its token cap (about 20 tokens/s on a ZeroGPU slice), within the longest
    reservation there is."""
    return int(min(ZERO_GPU_MAX_S, 15 + 0.3 * clip.num_frames + (len(methods) + compare) * (3 + max_new_tokens / 20)))
