"""Which model to load: the released checkpoints of every supported family, and the choice for this machine.

The CLI and the app choose alike: `default_model_id` is Qwen3-VL-8B on a GPU that holds it, Qwen3-VL-2B
otherwise (a smaller GPU or a CPU); where the Hugging Face hub cannot be reached, only the tiny offline
models (`tiny`, `tiny-<family>`) can run.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

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


def gpu_memory_gib() -> float:
    """Total memory of the GPU a model would use (the first); 0 without one."""
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
