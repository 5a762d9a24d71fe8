"""V-CAST app: upload a video, ask a question, and see V-CAST's answer beside the unpruned model's.

    python app.py [--model ID_OR_FOLDER] [--host 0.0.0.0] [--port 7860] [--max-queue 32]

The model loads once, at start: `--model` or the VCAST_MODEL variable, else Qwen3-VL-8B-Instruct on a
GPU with enough memory and Qwen3-VL-2B-Instruct otherwise. Where the Hugging Face hub cannot be
reached, the app starts on the tiny random model and says so in a banner. Scripts call the named
endpoint `/analyze` (video file, question, optional settings) through gradio_client.

Every input that cannot work gets one sentence saying what to do, and the server keeps serving: see
docs/RELIABILITY.md for each bad input, fault and limit tried, with the message a user sees.
"""

from __future__ import annotations

# ZeroGPU attaches a GPU per call through `spaces`, which must be imported before torch touches CUDA.
# Everywhere else the package is absent and the app runs without it.
try:
    import spaces
except ImportError:
    spaces = None

import argparse
import atexit
import contextlib
import dataclasses
import functools
import gc
import json
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import cv2
import gradio as gr
import numpy as np
import torch
from gradio.data_classes import FileData
from gradio.route_utils import delete_files_created_by_app
from gradio_client.utils import is_file_obj_with_meta
from pydantic import ValidationInfo, model_validator

from vcast import VCastConfig
from vcast.config import ALLOCATIONS
from vcast.pipeline import DEFAULT_MAX_NEW_TOKENS, TINY_MODEL_ID, ModelError, QAResult, VideoQA, hub_reachable
from vcast.report import result_record
from vcast.video import VideoClip, VideoError, read_video
from viz import (
    AllocationRecord,
    CostMetric,
    SelectionRecord,
    allocation_figure,
    contact_sheet,
    cost_figure,
    overlay_frames,
)
from viz.export import save_selection_json, selection_to_dict
from viz.overlays import frame_groups

logger = logging.getLogger("vcast.app")

ROOT = Path(__file__).resolve().parent
EXAMPLES_JSON = ROOT / "assets" / "examples.json"
WARM_UP_CLIP = ROOT / "assets" / "smooth_motion.mp4"

# Limits a shared Space can afford; every one is told to the user next to the input it limits.
MAX_UPLOAD_MB = 200
MAX_DURATION_S = 300.0
MAX_FRAMES = 64
MAX_NEW_TOKENS = 512
MAX_QUESTION_CHARS = 2000  # a question, not a document: at most a few thousand tokens next to the video's
MAX_GENERATION_S = 50.0  # per answer; both answers and the vision tower must fit ZeroGPU's 120 s slice
MAX_QUEUE_SIZE = 32  # requests waiting beyond this are refused at once ("busy, try again") instead of hanging
GPU_CONCURRENCY = 1  # one model on one GPU: concurrent runs would share its memory and skew each other's timings
ZERO_GPU_DURATION_S = 120
ZERO_GPU_MEMORY_GIB = 70.0  # a ZeroGPU slice of an H200
DISPLAY_SIDE_PX = 640  # overlays are drawn on frames this large at most: sharp in the gallery, light in memory
OUTPUT_MAX_AGE_S = 3600  # uploads, outputs and per-session state older than this are deleted
CACHE_SWEEP_S = 600  # how often Gradio looks for such files
STREAM_INTERVAL_S = 0.1  # the answers refresh at most this often while they stream

# Qwen3-VL checkpoints the app offers -> GPU memory (GiB) each needs in bf16 with a 64-frame clip in flight.
QWEN3_VL_MODELS = {
    "Qwen/Qwen3-VL-2B-Instruct": 10.0,
    "Qwen/Qwen3-VL-4B-Instruct": 16.0,
    "Qwen/Qwen3-VL-8B-Instruct": 24.0,
    "Qwen/Qwen3-VL-32B-Instruct": 90.0,
}
LARGE_DEFAULT, SMALL_DEFAULT = "Qwen/Qwen3-VL-8B-Instruct", "Qwen/Qwen3-VL-2B-Instruct"

ON_ZERO_GPU = spaces is not None and os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "true")
COMPARE_OFF_TEXT = "(comparison off: tick “Compare with the unpruned model” to run it too)"


# -- start-up: which model, loaded once ----------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="V-CAST Gradio app")
    parser.add_argument("--model", default=os.environ.get("VCAST_MODEL") or None,
                        help="Hugging Face id or local folder of a Qwen3-VL checkpoint, or 'tiny' for the offline "
                             "random model (default: VCAST_MODEL, else 8B on a large GPU, 2B otherwise)")  # fmt: skip
    parser.add_argument("--host", default=None, help="address to bind (default: GRADIO_SERVER_NAME, else 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: GRADIO_SERVER_PORT, else 7860)")
    parser.add_argument("--max-queue", type=int, default=os.environ.get("VCAST_MAX_QUEUE", str(MAX_QUEUE_SIZE)),
                        help="requests that may wait for the model; more are refused with 'busy, try again' "
                             f"(default: VCAST_MAX_QUEUE, else {MAX_QUEUE_SIZE})")  # fmt: skip
    parser.add_argument("--compile", action="store_true",
                        default=os.environ.get("VCAST_COMPILE", "").lower() in ("1", "true"),
                        help="on a GPU, compile the vision tower and the decode step (CUDA graphs): faster answers, "
                             "V-CAST's shorter KV cache shows in tokens/s; each new video shape pays a compilation "
                             "once (default: VCAST_COMPILE; not on ZeroGPU)")  # fmt: skip
    return parser.parse_args(argv)


def gpu_memory_gib() -> float:
    """Total memory of the GPU the model would use; 0 without one."""
    if ON_ZERO_GPU:
        return ZERO_GPU_MEMORY_GIB
    if not torch.cuda.is_available():
        return 0.0
    return torch.cuda.get_device_properties(0).total_memory / 2**30


def default_model_id(gpu_gib: float) -> str:
    """Qwen3-VL-8B-Instruct on a GPU that holds it, Qwen3-VL-2B-Instruct otherwise (smaller GPU or CPU)."""
    return LARGE_DEFAULT if gpu_gib >= QWEN3_VL_MODELS[LARGE_DEFAULT] else SMALL_DEFAULT


def model_choices(loaded_id: str, *, hub_ok: bool, gpu_gib: float) -> list[str]:
    """The models the dropdown offers: the loaded one, and where the hub is reachable every checkpoint that fits
    the GPU (on the CPU only the 2B). On ZeroGPU each call runs in a process of its own, where a model loaded
    on demand would be lost, so only the start-up model is offered there."""
    if not hub_ok or ON_ZERO_GPU:
        return [loaded_id]
    fitting = [m for m, need_gib in QWEN3_VL_MODELS.items() if need_gib <= gpu_gib] or [SMALL_DEFAULT]
    return fitting if loaded_id in fitting else [loaded_id, *fitting]


def _with_limits(qa: VideoQA) -> VideoQA:
    """qa with the app's time limit per answer: a longer generation is cut there, and the user is told."""
    qa.max_generation_s = MAX_GENERATION_S
    return qa


def _load(model_id: str, *, compile_model: bool = False) -> VideoQA:
    """Load `model_id`; `compile_model` (app's --compile) compiles the vision tower and the decode step on
    a GPU. On ZeroGPU each call runs in a fresh process, which would pay the compilation every time."""
    if model_id == TINY_MODEL_ID:
        return _with_limits(VideoQA.tiny())
    options = {"device_map": "cuda"} if ON_ZERO_GPU else {}  # there the GPU is attached per call
    if compile_model and not ON_ZERO_GPU and torch.cuda.is_available():
        options.update(compile_vision=True, compile_decode=True)
    qa = _with_limits(VideoQA.from_pretrained(model_id, **options))
    if not ON_ZERO_GPU:  # there the GPU only exists inside a call
        warm_up(qa)
    return qa


def warm_up(qa: VideoQA, clip: Path = WARM_UP_CLIP) -> float:
    """Warm the model up on an example clip (see VideoQA.warm_up); returns the seconds it took."""
    if not clip.is_file():
        logger.warning("no warm-up: %s is missing, so the first run's timings include one-time set-up", clip)
        return 0.0
    seconds = qa.warm_up(clip)
    logger.info("warmed %s up in %.1f s", qa.model_id, seconds)
    return seconds


_TINY_NOTE = (
    "It runs a **tiny Qwen3-VL with random weights**: its answers are noise, but the token selection, the "
    "figures and the costs are computed for real."
)
_REAL_MODEL_HOWTO = (
    "For real answers, run the app where huggingface.co is reachable (it then loads "
    f"`{LARGE_DEFAULT}` on a large GPU, `{SMALL_DEFAULT}` otherwise), or pass a downloaded checkpoint: "
    "`python app.py --model /path/to/Qwen3-VL-2B-Instruct`."
)


def load_startup_model(
    requested: str | None, *, hub_ok: bool, gpu_gib: float, compile_model: bool = False
) -> tuple[VideoQA, str | None]:
    """The model to serve and the banner (Markdown) that says how the app is degraded, or None.

    Without a request: the default for this GPU where the hub is reachable, else the tiny model. A requested
    model that cannot be loaded leaves the app serving the tiny model, with a banner saying why.
    """
    model_id = requested or (default_model_id(gpu_gib) if hub_ok else TINY_MODEL_ID)
    try:
        qa = _load(model_id, compile_model=compile_model)
    except ModelError as err:
        logger.error("could not load %s, serving the tiny random model instead: %s", model_id, err)
        return _load(TINY_MODEL_ID), f"⚠️ **{err}** The app runs the tiny random model instead. {_TINY_NOTE}"
    if qa.is_tiny and requested:
        return qa, f"⚠️ **Demo model, as asked** (`tiny`). {_TINY_NOTE} {_REAL_MODEL_HOWTO}"
    if qa.is_tiny:
        return qa, f"⚠️ **The Hugging Face hub cannot be reached from here.** {_TINY_NOTE} {_REAL_MODEL_HOWTO}"
    if qa.device.type == "cpu":
        return qa, f"⚠️ **No GPU found:** `{qa.model_id}` runs on the CPU, so one answer takes minutes."
    return qa, None


def free_memory() -> None:
    """Return what dropped tensors held to the GPU, so the next request starts with it free."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class ModelSlot:
    """The one loaded model. Picking another model in the UI swaps it (one at a time: they share the GPU)."""

    def __init__(self, qa: VideoQA, *, compile_model: bool = False):
        self.qa: VideoQA | None = qa
        self.compile_model = compile_model
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str | None:
        return None if self.qa is None else self.qa.model_id

    def get(self, model_id: str) -> VideoQA:
        with self._lock:
            if self.qa is None or self.qa.model_id != model_id:
                self.qa = None  # free the old weights before the new ones arrive
                free_memory()
                self.qa = _load(model_id, compile_model=self.compile_model)
            return self.qa


def own_upload_folder() -> None:
    """Give this process an upload folder of its own, removed when it exits, unless GRADIO_TEMP_DIR names one.

    Gradio deletes its files at shutdown only once every connection has closed, which an open browser tab never
    does; a folder of our own goes whole. It must be set before the first component is made (each reads it then).
    """
    if os.environ.get("GRADIO_TEMP_DIR"):
        return
    folder = tempfile.mkdtemp(prefix="vcast-gradio-")
    os.environ["GRADIO_TEMP_DIR"] = folder
    atexit.register(shutil.rmtree, folder, ignore_errors=True)


ARGS = parse_args(sys.argv[1:] if __name__ == "__main__" else [])
if __name__ == "__main__":
    own_upload_folder()
HUB_OK = hub_reachable()
GPU_GIB = gpu_memory_gib()
_startup_qa, BANNER = load_startup_model(ARGS.model, hub_ok=HUB_OK, gpu_gib=GPU_GIB, compile_model=ARGS.compile)
MODELS = ModelSlot(_startup_qa, compile_model=ARGS.compile)
MODEL_ID = _startup_qa.model_id
MODEL_CHOICES = model_choices(MODEL_ID, hub_ok=HUB_OK, gpu_gib=GPU_GIB)
DEFAULT_FRAMES = 32 if GPU_GIB > 0 else 16


def load_examples(path: Path = EXAMPLES_JSON) -> list[list[str]]:
    """[[video path, question], ...] from assets/examples.json; [] (and a warning) where it is missing."""
    if not path.is_file():
        logger.warning("no examples: %s is missing (python assets/make_examples.py writes it)", path)
        return []
    records = json.loads(path.read_text(encoding="utf-8"))
    return [[str(path.parent / r["file"]), r["question"]] for r in records if (path.parent / r["file"]).is_file()]


EXAMPLES = load_examples()


# -- the GPU part: picklable in, picklable out (ZeroGPU runs it in a process of its own) ------------------


def _on_gpu(fn):
    """spaces.GPU on a ZeroGPU Space; elsewhere (no `spaces`, or a Space with a dedicated GPU) fn as is."""
    return spaces.GPU(duration=ZERO_GPU_DURATION_S)(fn) if spaces is not None else fn


@_on_gpu
def answer_stream(
    model_id: str, clip: VideoClip, question: str, config: VCastConfig, compare: bool, max_new_tokens: int
) -> Iterator[tuple[str, str | QAResult]]:
    """("vcast" | "full", text piece) as tokens arrive, then ("done", QAResult)."""
    qa = MODELS.get(model_id)
    yield from qa.stream(clip, question, config=config, compare=compare, max_new_tokens=max_new_tokens)


@contextlib.contextmanager
def closing(events: Iterator) -> Iterator[Iterator]:
    """events, closed on the way out where it can be: closing answer_stream's generator stops its generation."""
    try:
        yield events
    finally:
        if hasattr(events, "close"):
            events.close()


# -- plain helpers: settings in, figures and records out ------------------------------------------------


NOT_A_FILE = (
    "Send the video as a file: upload it (with gradio_client, pass handle_file('clip.mp4')); a path or URL given "
    "as text is not read."
)


class UploadedFile(FileData):
    """The video input's payload. Anything but a file payload (a path as text, a number) is refused with NOT_A_FILE,
    where Gradio's own message is a pydantic dump ("1 validation error for FileData ... 'meta' field must ...")."""

    @model_validator(mode="before")
    @classmethod
    def validate_model(cls, value: Any, info: ValidationInfo) -> Any:  # replaces FileData's check of the same name
        if info.context and info.context.get("validate_meta") and not is_file_obj_with_meta(value):
            raise TypeError(NOT_A_FILE)  # pydantic wraps a ValueError (gr.Error is one) in its dump, not a TypeError
        return value


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn every failure into a gr.Error whose message tells the user what to do; the server keeps serving."""
    try:
        yield
    except gr.Error:
        raise
    except (VideoError, ModelError, ValueError) as err:
        logger.info("refused: %s", err)  # the user's input, not a fault of the server: no traceback in the log
        raise gr.Error(str(err), print_exception=False) from err
    except torch.OutOfMemoryError as err:  # outside VideoQA.answer (which frees memory itself), e.g. a model swap
        free_memory()
        raise gr.Error(
            "The GPU ran out of memory on this video: sample fewer frames, or pick a smaller model."
        ) from err
    except Exception as err:
        logger.exception("run failed")
        raise gr.Error(
            f"The model failed on this video ({type(err).__name__}: {err}). Try again, or another clip."
        ) from err


def _number(value: Any, setting: str) -> float:
    """value as a finite float; ValueError naming the setting for anything else (text, NaN, a bool)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number):
        raise ValueError(f"{setting} must be a number, got {value!r}.")
    return number


def check_inputs(
    video: str | None,
    question: str | None,
    retain_percent: float,
    num_frames: int,
    temperature: float,
    allocation: str,
    *,
    model: str,
    max_new_tokens: int,
) -> VCastConfig:
    """The settings as a VCastConfig; ValueError with a user-facing message for anything unusable.

    The messages name each setting as the page labels it and as /analyze calls it: the endpoint takes any value,
    so that this check, not a slider's bounds, says what went wrong.
    """
    if not video:
        raise ValueError("Upload a video (or click one of the examples) first.")
    if not isinstance(question, str) or not question.strip():
        raise ValueError("Type a question about the video first.")
    if len(question) > MAX_QUESTION_CHARS:
        raise ValueError(
            f"The question is {len(question):,} characters long; shorten it to at most {MAX_QUESTION_CHARS:,}."
        )
    retain = _number(retain_percent, "Visual tokens kept (retain_percent)")
    if not 0 < retain <= 100:
        raise ValueError(
            f"Visual tokens kept (retain_percent) must be above 0 and at most 100 percent, got {retain:g}."
        )
    frames = _number(num_frames, "Frames sampled (num_frames)")
    if not 2 <= frames <= MAX_FRAMES or frames % 2:
        raise ValueError(f"Frames sampled (num_frames) must be an even number from 2 to {MAX_FRAMES}, got {frames:g}.")
    tokens = _number(max_new_tokens, "Max new tokens (max_new_tokens)")
    if not 1 <= tokens <= MAX_NEW_TOKENS or tokens % 1:
        raise ValueError(
            f"Max new tokens (max_new_tokens) must be a whole number from 1 to {MAX_NEW_TOKENS}, got {tokens:g}."
        )
    if model not in MODEL_CHOICES:  # the API could otherwise make the server load any folder or hub id
        raise ValueError(f"The model {model!r} is not offered here; choose one of: {', '.join(MODEL_CHOICES)}.")
    temperature = _number(temperature, "Allocation temperature (temperature)")
    return VCastConfig(retain_ratio=retain / 100.0, temperature=temperature, allocation=allocation)


def decode(video: str, num_frames: int) -> VideoClip:
    """The sampled frames, within the app's limits; VideoError with a user-facing message."""
    clip = read_video(video, num_frames=int(num_frames), max_frames=MAX_FRAMES, max_duration_s=MAX_DURATION_S,
                      max_file_mb=MAX_UPLOAD_MB)  # fmt: skip
    if clip.total_frames < 2:  # its "motion" would be one frame repeated: nothing for V-CAST to allocate over
        raise VideoError("This video holds a single frame (a still picture); upload a clip with at least 2 frames.")
    return clip


def selection_record(result: QAResult) -> SelectionRecord:
    _, rows, cols = result.grid
    return SelectionRecord.from_selection(
        result.selection, times_s=result.group_times, grid_hw=(rows, cols), config=result.config
    )


def comparison_budgets(result: QAResult) -> dict[str, np.ndarray]:
    """(T,) budgets of the same total under the allocations other than the one the run used."""
    return {name: np.asarray(b) for name, b in result.allocations.items() if name != result.config.allocation}


def downscale(frames: np.ndarray, max_side_px: int = DISPLAY_SIDE_PX) -> np.ndarray:
    """(F, H, W, 3) uint8 RGB -> (F, h, w, 3) with the longer side at most max_side_px."""
    height, width = frames.shape[1:3]
    scale = min(1.0, max_side_px / max(height, width))
    if scale == 1.0:
        return frames
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])


@dataclasses.dataclass(frozen=True)
class OverlayView:
    """What the overlay controls redraw from, kept per session.

    frames: (F, h, w, 3) uint8 RGB, downscaled for display; times_s: (F,) seconds;
    keep_masks: (T, rows, cols) bool; scores: (T, rows, cols) float32; budgets: (T,) int64.
    """

    frames: np.ndarray
    times_s: np.ndarray
    keep_masks: np.ndarray
    scores: np.ndarray
    budgets: np.ndarray

    @classmethod
    def from_result(cls, result: QAResult, record: SelectionRecord) -> OverlayView:
        return cls(
            frames=downscale(result.clip.frames),
            times_s=np.asarray(result.clip.timestamps, dtype=np.float64),
            keep_masks=record.keep_mask,
            scores=record.scores,
            budgets=record.budgets,
        )


def gallery_items(view: OverlayView, heatmap: bool) -> list[tuple[np.ndarray, str]]:
    """(overlay image, caption) per sampled frame."""
    mode = "heatmap" if heatmap else "kept"
    images = overlay_frames(view.frames, view.keep_masks, mode=mode, scores=view.scores)
    tokens_per_group = view.keep_masks.shape[1] * view.keep_masks.shape[2]
    budgets = view.budgets[frame_groups(len(images), len(view.budgets))]  # (F,): each frame shows its group's
    captions = [f"{t:.1f} s · {b}/{tokens_per_group} kept" for t, b in zip(view.times_s, budgets, strict=True)]
    return list(zip(images, captions, strict=True))


def sheet_image(view: OverlayView, heatmap: bool) -> np.ndarray:
    """(H, W, 3) uint8 RGB: every sampled frame with its overlay, captioned."""
    mode = "heatmap" if heatmap else "kept"
    tile_width = 320 if len(view.frames) <= 16 else 240
    return contact_sheet(
        view.frames, view.keep_masks, times_s=view.times_s, mode=mode, scores=view.scores, tile_width=tile_width
    )


def allocation_plot(result: QAResult, record: SelectionRecord, view: OverlayView):
    allocation = AllocationRecord.from_record(
        record, comparisons=comparison_budgets(result), thumbnails=view.frames[::2]
    )
    kept = int(record.budgets.sum())
    title = f"Where the budget goes · {kept} of {record.keep_mask.size} tokens kept"
    if result.config.allocation != "curvature":
        title += f" · allocation: {result.config.allocation}"
    return allocation_figure(allocation, title=title)


# The cost chart's panels, labelled short enough for four side by side; the table says what memory was measured.
COST_PANELS = (
    CostMetric("visual_tokens_kept", "visual tokens"),
    CostMetric("prefill_ms", "prefill", "ms"),
    CostMetric("ttft_ms", "first token", "ms"),
    CostMetric("peak_memory_mb", "peak memory", "MB"),
)


def cost_chart(result: QAResult):
    """V-CAST vs unpruned: visual tokens, prefill, time to first token, peak memory, with the ratios."""
    runs = [None if r is None else dataclasses.asdict(r.metrics) for r in (result.pruned, result.full)]
    for run in runs:
        if run is not None:
            run.pop("memory_kind")  # it would rename the memory panel to a label too long for a phone
    return cost_figure(runs[0], runs[1], metrics=COST_PANELS)


_METRIC_ROWS = (  # label, PassMetrics field, format
    ("Visual tokens to the LLM", "visual_tokens_kept", "{:,.0f}"),
    ("Sequence length", "sequence_length", "{:,.0f}"),
    ("Prefill (ms)", "prefill_ms", "{:,.1f}"),
    ("Time to first token (ms)", "ttft_ms", "{:,.1f}"),
    ("Decoding (tokens/s)", "decode_tokens_per_s", "{:,.1f}"),
    ("Total (ms)", "total_ms", "{:,.1f}"),
    ("Peak memory (MB)", "peak_memory_mb", "{:,.0f}"),
)
_MEMORY_LABELS = {"cuda_max_allocated": "Peak GPU memory (MB)", "process_rss": "Peak process memory, RSS (MB)"}


def metrics_rows(result: QAResult) -> list[list[str]]:
    """[label, V-CAST, unpruned, V-CAST / unpruned] per metric; '–' where there is no unpruned run."""
    pruned, full = result.pruned.metrics, None if result.full is None else result.full.metrics
    rows = []
    for label, field, fmt in _METRIC_ROWS:
        if field == "peak_memory_mb":
            label = _MEMORY_LABELS.get(pruned.memory_kind, label)
        ours = getattr(pruned, field)
        theirs = None if full is None else getattr(full, field)
        ratio = f"{ours / theirs:.2f}×" if theirs else "–"
        rows.append([label, fmt.format(ours), "–" if theirs is None else fmt.format(theirs), ratio])
    return rows


def metrics_markdown(result: QAResult) -> str:
    lines = ["| | V-CAST | unpruned | ratio |", "|:--|--:|--:|--:|"]
    lines += [f"| {' | '.join(row)} |" for row in metrics_rows(result)]
    m = result.pruned.metrics
    lines.append(
        f"\nThe vision encoder ({m.vision_ms:,.1f} ms) runs once for both; it and V-CAST's selection "
        f"({m.selection_ms:,.2f} ms) are counted in each run's time to first token and total."
    )
    return "\n".join(lines)


def stage_markdown(step: int, steps: int, stage: str) -> str:
    """The status line while a run is under way: 'Step 2 of 5 · **Encoding 16 frames…**'."""
    return f"Step {step} of {steps} · **{stage}…**"


def summary_markdown(result: QAResult, seconds: float, notes: Iterable[str] = ()) -> str:
    m = result.pruned.metrics
    share = m.visual_tokens_kept / max(m.visual_tokens_in, 1)
    summary = (
        f"**Done** in {seconds:.1f} s on `{result.model_id}` · {result.clip.num_frames} frames · "
        f"V-CAST kept **{m.visual_tokens_kept:,} of {m.visual_tokens_in:,}** visual tokens ({share:.0%})."
    )
    return " ".join([summary, *(f"⚠️ {note}" for note in notes)])


def cut_short_notes(result: QAResult, max_new_tokens: int, limit_s: float) -> list[str]:
    """A sentence for each answer that the time limit (limit_s per answer) stopped before it ended or reached
    max_new_tokens."""
    notes = []
    for name, run in (("V-CAST", result.pruned), ("unpruned", result.full)):
        if run is None:
            continue
        m = run.metrics
        generation_s = (m.total_ms - m.vision_ms - m.selection_ms) / 1000.0
        if m.new_tokens < max_new_tokens and generation_s >= limit_s:
            notes.append(
                f"The {name} answer was cut at the {limit_s:g} s time limit after {m.new_tokens} tokens; "
                "ask for a shorter answer or use fewer frames."
            )
    return notes


def _prune_outputs(folder: Path, max_age_s: float = OUTPUT_MAX_AGE_S) -> None:
    cutoff = time.time() - max_age_s
    for old in folder.iterdir():
        with contextlib.suppress(FileNotFoundError):  # another request may be pruning too
            if old.stat().st_mtime < cutoff:
                shutil.rmtree(old, ignore_errors=True)


@functools.cache
def outputs_folder() -> Path:
    """This process's folder (in the temp folder, where Gradio may serve from) for files the page offers;
    removed when the process exits."""
    folder = Path(tempfile.mkdtemp(prefix="vcast-app-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def save_selection_file(record: SelectionRecord) -> str:
    """Write the selection JSON for download; files older than OUTPUT_MAX_AGE_S are removed on the way."""
    outputs = outputs_folder()
    _prune_outputs(outputs)
    folder = Path(tempfile.mkdtemp(dir=outputs))
    return str(save_selection_json(record, folder / "vcast_selection.json"))


def finished(results: Iterable[QAResult]) -> QAResult:
    """The one result a stream ends with; ModelError where it ended without one."""
    for result in results:
        return result
    raise ModelError("The model stopped before it finished its answers; please run again.")


def api_record(result: QAResult, record: SelectionRecord, notes: list[str] | None = None) -> dict[str, Any]:
    """/analyze's answer: both answers with their metrics, the settings, the whole selection, and notes (one
    sentence each) on anything that limited the run, such as an answer cut at the time limit."""
    return {**result_record(result), "selection": selection_to_dict(record), "notes": notes or []}


class StopRequests:
    """The Stop button's requests, one per browser session: `run` checks its session's between two tokens.

    Gradio's own `cancels=` would end the run as a failure, and the failure handler would then hide the answers
    that the user stopped in order to read.
    """

    def __init__(self):
        self._events: dict[str | None, threading.Event] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def watching(self, session: str | None) -> Iterator[threading.Event]:
        """The event a run of `session` watches while it lasts (None: a run outside a browser, never stopped)."""
        event = threading.Event()
        with self._lock:
            self._events[session] = event
        try:
            yield event
        finally:
            with self._lock:
                if self._events.get(session) is event:
                    del self._events[session]

    def stop(self, session: str) -> None:
        with self._lock:
            event = self._events.get(session)
        if event is not None:
            event.set()


STOP_REQUESTS = StopRequests()
STOPPED_MARKDOWN = "**Stopped.** The answers end where the generation stopped; press Run to start again."


# -- handlers ----------------------------------------------------------------------------------------------


def analyze(
    video: str,
    question: str,
    retain_percent: float = 25.0,
    num_frames: int = DEFAULT_FRAMES,
    model: str = MODEL_ID,
    compare: bool = True,
    temperature: float = 0.7,
    allocation: str = "curvature",
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> dict[str, Any]:
    """Answer a question about a video with V-CAST (and, if compare, unpruned). Returns the answers, the metrics
    of each run and the selection (budget, curvature and kept grid cells of every temporal group)."""
    with user_errors():
        config = check_inputs(video, question, retain_percent, num_frames, temperature, allocation, model=model,
                              max_new_tokens=max_new_tokens)  # fmt: skip
        clip = decode(video, num_frames)
        with closing(answer_stream(model, clip, question, config, compare, int(max_new_tokens))) as events:
            result = finished(payload for kind, payload in events if kind == "done")
        notes = cut_short_notes(result, int(max_new_tokens), MODELS.get(model).max_generation_s)
        return api_record(result, selection_record(result), notes)


def run(
    video: str | None,
    question: str,
    retain_percent: float,
    num_frames: int,
    model: str,
    compare: bool,
    temperature: float,
    allocation: str,
    max_new_tokens: int,
    heatmap: bool,
    request: gr.Request | None = None,
) -> Iterator[dict]:
    """The Run button: say each stage as it starts, stream both answers, then draw figures, overlays and metrics.

    The Stop button of the same page (request's session) ends the generation at the next token; the answers so far
    stay on the page.
    """
    started = time.perf_counter()
    session = request.session_hash if request is not None else None
    with user_errors(), STOP_REQUESTS.watching(session) as stop:
        config = check_inputs(video, question, retain_percent, num_frames, temperature, allocation, model=model,
                              max_new_tokens=max_new_tokens)  # fmt: skip
        steps = 5 if compare else 4  # decode, encode, V-CAST answer, (unpruned answer,) draw
        # Clear the last results now, so the browser redraws while the video decodes, not while the model runs.
        yield {
            results: gr.Column(visible=True),
            vcast_answer: "",
            full_answer: "" if compare else COMPARE_OFF_TEXT,
            status: stage_markdown(1, steps, "Decoding and sampling the frames"),
            **{c: None for c in (metrics_table, cost_plot, budget_plot, sheet, selection_file)},
            gallery: [],
            stop_button: gr.Button(visible=True),
        }
        clip = decode(video, num_frames)
        texts = {"vcast": "", "full": ""}
        encoding = "Encoding" if MODELS.model_id == model else f"Loading {model} (first use), then encoding"
        yield {status: stage_markdown(2, steps, f"{encoding} {clip.num_frames} frames and selecting tokens")}
        stages = {"vcast": (3, "Generating the V-CAST answer"), "full": (4, "Generating the unpruned answer")}
        shown_at, shown_kind, done = 0.0, None, []
        # Leaving this block closes the stream, which stops the generation: on Stop (checked at each token), and
        # when Gradio closes this handler because the page was closed. The GPU then goes to the next request
        # instead of finishing an answer nobody reads.
        with closing(answer_stream(model, clip, question, config, compare, int(max_new_tokens))) as events:
            for kind, payload in events:
                if stop.is_set():  # leaving the loop closes the stream, which stops the generation
                    break
                if kind == "done":
                    done.append(payload)
                    break
                texts[kind] += payload
                # A few updates a second read as streaming; one per token would take CPU (and the GIL) from the
                # generation being timed.
                if kind == shown_kind and time.perf_counter() - shown_at < STREAM_INTERVAL_S:
                    continue
                shown_at, shown_kind = time.perf_counter(), kind
                step, stage = stages[kind]
                yield {
                    vcast_answer: texts["vcast"],
                    full_answer: texts["full"] if compare else COMPARE_OFF_TEXT,
                    status: stage_markdown(step, steps, stage),
                }

        if stop.is_set():
            yield {
                vcast_answer: texts["vcast"],
                full_answer: texts["full"] if compare else COMPARE_OFF_TEXT,
                status: STOPPED_MARKDOWN,
                stop_button: gr.Button(visible=False),
            }
            return
        result = finished(done)
        notes = cut_short_notes(result, int(max_new_tokens), MODELS.get(model).max_generation_s)
        yield {status: stage_markdown(steps, steps, "Drawing the figures and overlays")}
        record = selection_record(result)
        view = OverlayView.from_result(result, record)
        yield {
            vcast_answer: result.pruned.text,
            full_answer: result.full.text if result.full is not None else COMPARE_OFF_TEXT,
            status: summary_markdown(result, time.perf_counter() - started, notes),
            metrics_table: metrics_markdown(result),
            cost_plot: cost_chart(result),
            budget_plot: allocation_plot(result, record, view),
            gallery: gr.Gallery(value=gallery_items(view, heatmap), selected_index=0),
            frame_slider: gr.Slider(minimum=0, maximum=len(view.frames) - 1, value=0, step=1, interactive=True),
            sheet: sheet_image(view, heatmap),
            selection_file: save_selection_file(record),
            overlay_state: view,
            stop_button: gr.Button(visible=False),
        }


def after_failure() -> dict:
    """A failed run leaves only its error message: no stage under way, no half-cleared results."""
    return {status: "", results: gr.Column(visible=False), stop_button: gr.Button(visible=False)}


def stop_run(request: gr.Request) -> gr.Button:
    """The Stop button: ask this page's run to stop (it says so when it has), and hide the button."""
    STOP_REQUESTS.stop(request.session_hash)
    return gr.Button(visible=False)


def redraw_overlays(view: OverlayView | None, heatmap: bool, frame_index: int) -> dict:
    """The heatmap toggle: the gallery and the contact sheet in the other mode, on the same frame."""
    if view is None:
        return {gallery: gr.Gallery(), sheet: gr.Image()}
    return {
        gallery: gr.Gallery(value=gallery_items(view, heatmap), selected_index=int(frame_index)),
        sheet: sheet_image(view, heatmap),
    }


def show_frame(frame_index: int) -> gr.Gallery:
    """The frame slider: open that frame in the gallery's preview."""
    return gr.Gallery(selected_index=int(frame_index))


def frame_of_selection(evt: gr.SelectData) -> int:
    """A click on a gallery thumbnail moves the frame slider there."""
    return int(evt.index)


# -- layout and wiring ---------------------------------------------------------------------------------------

HOW_IT_WORKS = """
V-CAST (Video Curvature-Aware Spatio-Temporal pruning) drops most of the video's visual tokens right after the
vision encoder, without any training, and keeps the ones the model needs:

1. **Trajectory.** Each temporal group (2 frames for Qwen3-VL) is summarised by its mean token; the video becomes a
   path through feature space.
2. **Curvature.** Where that path turns sharply (a cut, an event, a change of motion) the curvature
   `1 − cos(step before, step after)` is high; steady scenes have low curvature.
3. **Budgets.** The token budget (the retention slider × all visual tokens) is split over the groups by
   `softmax(curvature / temperature)`: sharp turns get more tokens, every group keeps at least one.
4. **Tokens.** Inside each group V-CAST scores every token by how unlike the group's mean it is plus how large
   its norm is (the score heatmap) and keeps the best; kept tokens keep their original space-time positions,
   so the language model reads a shorter sequence of the same video: less prefill time and memory.

The figure shows the budgets (bars) against the curvature (line); the gallery shows which patches survived
(bright, outlined) and which were dropped (greyed). The unpruned run uses the same frames and the same vision
features, so the two answers differ only by the pruning.
"""

CSS = """
.gradio-container { max-width: 1280px !important; margin: 0 auto !important; }
#banner { background: rgba(245, 158, 11, 0.14); border-left: 4px solid #f59e0b; border-radius: 6px;
          padding: 10px 14px; }
#banner p { margin: 0; }
#video-in video { max-height: 420px; }  /* a portrait clip stays on screen */
#status { min-height: 3.2em; }
#metrics table { width: 100%; font-size: 0.92em; font-variant-numeric: tabular-nums; }
#metrics th, #metrics td { padding: 6px 8px; }
#metrics td:not(:first-child), #metrics th { white-space: nowrap; }
/* Four cost panels need ~640 px: narrower screens scroll the chart sideways instead of overlapping its titles. */
#cost-plot { overflow-x: auto !important; contain: inline-size; }
#cost-plot .js-plotly-plot { min-width: 640px; }
#gallery { contain: inline-size; }
"""
THEME = gr.themes.Soft(primary_hue="blue", neutral_hue="slate")

with gr.Blocks(
    title="V-CAST: which video tokens does a video LLM need?",
    delete_cache=(CACHE_SWEEP_S, OUTPUT_MAX_AGE_S),
    analytics_enabled=False,
) as demo:
    gr.Markdown(
        "# V-CAST · which video tokens does a video LLM really need?\n"
        "Upload a video and ask about it. V-CAST keeps a fraction of Qwen3-VL's visual tokens, spent where the video "
        "changes; you get its answer beside the unpruned model's, with what each cost."
    )
    gr.Markdown(BANNER or "", elem_id="banner", visible=BANNER is not None)
    # Made here, drawn in the right column: the examples beside the video fill it in.
    question_in = gr.Textbox(
        label="Question",
        placeholder="What happens in this video?",
        lines=2,
        max_length=MAX_QUESTION_CHARS,
        render=False,
    )
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=300):
            video_in = gr.Video(label="Video", sources=["upload"], elem_id="video-in")
            video_in.data_model = UploadedFile
            gr.Markdown(f"MP4, MOV, WebM or MKV · up to {MAX_UPLOAD_MB} MB and {MAX_DURATION_S / 60:.0f} minutes.")
            if EXAMPLES:
                gr.Examples(
                    EXAMPLES,
                    inputs=[video_in, question_in],
                    label="Examples: click one, then Run",
                    cache_examples=False,
                )
        with gr.Column(scale=6, min_width=300):
            question_in.render()
            with gr.Row():
                retain_in = gr.Slider(5, 100, value=25, step=1, label="Visual tokens kept (%)")
                frames_in = gr.Slider(2, MAX_FRAMES, value=DEFAULT_FRAMES, step=2, label="Frames sampled")
            model_in = gr.Dropdown(MODEL_CHOICES, value=MODEL_ID, label="Model", interactive=len(MODEL_CHOICES) > 1)
            compare_in = gr.Checkbox(value=True, label="Compare with the unpruned model")
            with gr.Accordion("Advanced", open=False):
                with gr.Row():
                    temperature_in = gr.Slider(
                        0.05, 5.0, value=0.7, step=0.05, label="Allocation temperature",
                        info="softmax(curvature / T): a lower T favours the sharpest turns",
                    )  # fmt: skip
                    allocation_in = gr.Dropdown(
                        list(ALLOCATIONS), value="curvature", label="Allocation strategy",
                        info="curvature is V-CAST; the others are baselines",
                    )  # fmt: skip
                max_tokens_in = gr.Slider(
                    8, MAX_NEW_TOKENS, value=DEFAULT_MAX_NEW_TOKENS, step=8, label="Max new tokens per answer"
                )
            with gr.Row():
                run_button = gr.Button("Run", variant="primary", scale=3)
                stop_button = gr.Button("Stop", variant="stop", visible=False, scale=1, min_width=80)
            status = gr.Markdown(elem_id="status")

    with gr.Column(visible=False) as results:
        with gr.Row(equal_height=True):
            vcast_answer = gr.Textbox(
                label="V-CAST answer", elem_id="vcast-answer", lines=5, max_lines=14, buttons=["copy"], min_width=300
            )
            full_answer = gr.Textbox(
                label="Unpruned answer", elem_id="full-answer", lines=5, max_lines=14, buttons=["copy"], min_width=300
            )
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                metrics_table = gr.Markdown(elem_id="metrics")
            with gr.Column(scale=3, min_width=640):
                cost_plot = gr.Plot(show_label=False, elem_id="cost-plot")
        budget_plot = gr.Plot(show_label=False)
        with gr.Row(equal_height=False):
            with gr.Column(scale=3, min_width=300):
                gallery = gr.Gallery(
                    label="Kept patches per frame", elem_id="gallery", columns=4, height=480, preview=True,
                    object_fit="contain", format="jpeg", allow_preview=True, buttons=["download", "fullscreen"],
                )  # fmt: skip
            with gr.Column(scale=1, min_width=220):
                frame_slider = gr.Slider(0, 1, value=0, step=1, label="Frame")
                heatmap_in = gr.Checkbox(value=False, label="Show the token-score heatmap")
                gr.Markdown(
                    "Bright, outlined patches were kept; greyed ones never reached the language model. The heatmap "
                    "colours every token by its score (brighter: more likely kept)."
                )
                selection_file = gr.File(label="Selection (JSON)", interactive=False)
        with gr.Accordion("Contact sheet: all sampled frames", open=True):
            sheet = gr.Image(show_label=False, format="jpeg", buttons=["download", "fullscreen"])
    with gr.Accordion("How V-CAST works", open=False):
        gr.Markdown(HOW_IT_WORKS)
    overlay_state = gr.State(None, time_to_live=OUTPUT_MAX_AGE_S)  # up to ~45 MB of frames per session

    overlay_outputs = [gallery, frame_slider, sheet, selection_file, overlay_state]
    answer_outputs = [results, vcast_answer, full_answer, status, metrics_table, cost_plot, budget_plot]
    settings = [retain_in, frames_in, model_in, compare_in, temperature_in, allocation_in, max_tokens_in]
    run_event = gr.on(
        [run_button.click, question_in.submit],
        run,
        inputs=[video_in, question_in, *settings, heatmap_in],
        outputs=[*answer_outputs, *overlay_outputs, stop_button],
        show_progress="minimal",
        show_progress_on=[status],
        concurrency_id="gpu",
        concurrency_limit=GPU_CONCURRENCY,
        api_visibility="private",
    )
    run_event.failure(
        after_failure, None, [status, results, stop_button], api_visibility="private", show_progress="hidden"
    )
    # Unqueued, so that Stop acts at once even when the queue is full.
    stop_button.click(stop_run, None, stop_button, queue=False, api_visibility="private", show_progress="hidden")
    heatmap_in.change(
        redraw_overlays, [overlay_state, heatmap_in, frame_slider], [gallery, sheet], api_visibility="private"
    )
    # Instant and GPU-free: outside the queue, so that browsing results works while the queue is full.
    frame_slider.change(
        show_frame, frame_slider, gallery, api_visibility="private", show_progress="hidden", queue=False
    )
    gallery.select(
        frame_of_selection, None, frame_slider, api_visibility="private", show_progress="hidden", queue=False
    )

    # /analyze: the scripting endpoint. Its button never shows; gradio_client calls it by name. Its settings come
    # through plain fields that take any value, so that check_inputs (not a slider's bounds) refuses one out of
    # range, with a message naming the setting: a slider would only say "Value 0 is less than minimum value 5".
    api_settings = [
        gr.Number(25.0, visible=False),  # retain_percent
        gr.Number(DEFAULT_FRAMES, visible=False),  # num_frames
        gr.Textbox(MODEL_ID, visible=False),  # model
        gr.Checkbox(True, visible=False),  # compare
        gr.Number(0.7, visible=False),  # temperature
        gr.Textbox("curvature", visible=False),  # allocation
        gr.Number(DEFAULT_MAX_NEW_TOKENS, visible=False),  # max_new_tokens
    ]
    api_result = gr.JSON(visible=False)
    gr.Button(visible=False).click(
        analyze,
        inputs=[video_in, question_in, *api_settings],
        outputs=api_result,
        api_name="analyze",
        concurrency_id="gpu",
        concurrency_limit=GPU_CONCURRENCY,
    )

# Beyond max_size waiting requests, Gradio refuses new ones at once: the page says "This application is currently
# busy. Please try again.", gradio_client raises QueueError("Queue is full! Please try again.").
demo.queue(max_size=ARGS.max_queue, default_concurrency_limit=4)


def launch_options() -> dict[str, Any]:
    """What launch() needs besides the address: theme, CSS, the upload limit, and errors shown to the user.

    show_error: requests that Gradio refuses before a handler runs (a file path that was not uploaded, a URL to a
    private address, a malformed value) then say why instead of "the upstream Gradio app has raised an exception".
    The handlers' own errors are gr.Error already.
    """
    return {
        "theme": THEME,
        "css": CSS,
        "max_file_size": f"{MAX_UPLOAD_MB}mb",
        "footer_links": ["api", "gradio"],
        "show_error": True,
    }


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Containers stop the app with SIGTERM: shut down as on Ctrl+C, and launch() returns.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    demo.launch(server_name=ARGS.host, server_port=ARGS.port, **launch_options())
    # Where the upload folder is not our own (GRADIO_TEMP_DIR set), delete what Gradio did not (see own_upload_folder).
    delete_files_created_by_app(demo, age=None)
