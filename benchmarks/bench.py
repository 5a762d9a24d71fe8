"""GPU benchmark: unpruned vs V-CAST (and other methods) on random-weight models with real shapes.

    python -m vcast.bench [--sizes 8B] [--videos 32x448x448,64x352x640,128x352x640]
                          [--ratios 0.25,0.15] [--methods vcast] [--runs 5] [--new-tokens 64]
                          [--out results/bench.json]

--sizes takes Qwen3-VL sizes (2B, 4B, 8B, 32B, 30B-A3B) and the other families' real shapes
(Qwen2.5-VL-7B, Qwen3.5-9B, LLaVA-OneVision-7B). For each model and synthetic video (frames x height
x width), each method (unpruned, and each of --methods at each retain ratio) is measured the way a
user meets it: vision tower, selection, LLM prefill, then
generation of `--new-tokens` tokens. Times are medians of `--runs` rounds, taken with CUDA events,
after a warm-up pass of each method; each round runs every method once, interleaved, so drift of the
machine falls on all methods alike; Python's garbage collector is paused during each pass.
"prefill" = vision + selection + LLM prefill (one forward over the prompt); "TTFT" = vision +
selection + time to the first generated token through `generate`; decode tokens/s is
measured after the first token. "peak above weights" is torch.cuda.max_memory_allocated during the
whole pass (vision to the last token) minus the memory held before it (weights); the JSON also
splits it by phase (vision and selection, the timed prefill, generate). Each pass holds only what
it needs: the V-CAST pass frees the unpruned features once it has sliced its own.
The model runs in the settings `python app.py` serves it with on this machine: decoding graph-recorded on a GPU and,
for Qwen3-VL on a CUDA GPU, the vision tower and (dense models) the LLM prefill's decoder layers compiled, warmed up
on 32 frames and frozen (no compilation after that); `--vision eager --prefill eager` measures VideoQA's eager default
instead.
`--sizes tiny` runs the tiny offline model on the CPU: a smoke test of this script (CI runs it).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

import numpy as np
import torch

from vcast import catalogue
from vcast.config import VCastConfig
from vcast.methods import METHODS
from vcast.models.base import cache_argument, generation_attention
from vcast.models.decode import DEFAULT_CACHE_BUCKET, DecodeCaches, cache_bytes
from vcast.models.mrope import DEFAULT_VISION_CHUNK_PATCHES
from vcast.pipeline import (
    DEFAULT_MAX_PIXELS_PER_VIDEO,
    Prompt,
    VideoQA,
    check_methods,
    random_weights_id,
    tiny_family,  # fmt: skip
)
from vcast.video import VideoClip

# A method of the benchmark: (name in vcast.METHODS, retain ratio), or None for the unpruned pass.
Method = tuple[str, float] | None


@dataclass
class Row:
    size: str
    frames: int
    height: int
    width: int
    method: str
    retain_ratio: float
    visual_tokens: int
    sequence_length: int
    vision_ms: float
    selection_ms: float
    llm_prefill_ms: float
    prefill_ms: float
    ttft_ms: float
    decode_tokens_per_s: float
    peak_above_weights_mb: float | None  # None on the CPU
    # Where the peak falls: the highest memory above weights in each phase of the pass (GPU only)
    peak_vision_mb: float | None = None  # vision tower and selection, up to the pass inputs
    peak_prefill_mb: float | None = None  # the timed LLM prefill
    peak_generate_mb: float | None = None  # generate: its own prefill and the decode steps
    # Memory held before each round's pass (weights, compiled graphs' pools): growth would be a leak
    held_before_mb_runs: list[float] | None = None
    prefill_ms_runs: list[float] | None = None  # each round's prefill, to see spread and outliers
    stage_ms_runs: list[list[float]] | None = None  # each round's [vision, selection, LLM prefill]
    # each round's cudaMalloc / cudaFree calls while the static cache was made and during the timed forward
    prefill_device_calls_runs: list[dict] | None = None
    decode_tokens_per_s_runs: list[float] | None = None
    # this method's figure over unpruned's of the same round: the ratios' spread across rounds
    prefill_ratio_runs: list[float] | None = None
    decode_ratio_runs: list[float] | None = None
    # the host's pace before each round's pass (host_pace_us): microseconds per small device operation
    host_us_per_op_runs: list[float] | None = None
    decoding_runs: list[str] | None = None  # how each round decoded ("cuda_graphs", "eager_loop", "generate")
    # each round's host time to queue the LLM prefill (near llm_prefill_ms: the prefill waited for the host)
    llm_prefill_host_ms_runs: list[float] | None = None
    recording_ms_runs: list[float] | None = None  # each round's host time recording the decode step (graph decoder)


def synthetic_clip(num_frames: int, height: int, width: int) -> VideoClip:
    """Moving coloured squares on gradients with a scene change halfway: (F, H, W, 3) uint8, 2 fps."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for i in range(num_frames):
        second_scene = i >= num_frames // 2
        blue = np.full_like(xx, 200 if second_scene else 60)
        frames[i] = np.stack([xx * 255 // width, yy * 255 // height, blue], -1).astype(np.uint8)
        x = (i * 13) % max(1, width - 64)
        frames[i, 40:104, x : x + 64] = (230, 40, 40) if second_scene else (40, 40, 230)
    frames = np.clip(frames.astype(np.int16) + rng.integers(-6, 7, frames.shape), 0, 255).astype(np.uint8)
    indices = np.arange(num_frames) * 15
    return VideoClip(frames=frames, timestamps=indices / 30.0, indices=indices, fps=30.0,
                     duration=num_frames / 2.0, total_frames=num_frames * 15, backend="synthetic",
                     source_size=(height, width))  # fmt: skip


class _Stopwatch:
    """Stage stopwatch: mark(name) after each stage, then ms() gives each stage's milliseconds.

    CUDA events on a GPU (no host sync between stages); on the CPU, where every operation is
    synchronous, the host clock.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[str, object]] = []
        self.mark("start")

    def mark(self, name: str) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append((name, event))
        else:
            self.marks.append((name, time.perf_counter()))

    def ms(self) -> dict[str, float]:
        if self.cuda:
            self.marks[-1][1].synchronize()
            return {name: prev.elapsed_time(cur) for (_, prev), (name, cur) in itertools.pairwise(self.marks)}
        return {name: (cur - prev) * 1000.0 for (_, prev), (name, cur) in itertools.pairwise(self.marks)}


class _FirstTokenClock:
    """A generate() streamer that notes when the first new token exists."""

    def __init__(self, device: torch.device):
        self.calls, self.first, self.cuda = 0, None, device.type == "cuda"

    def put(self, value: torch.Tensor) -> None:
        self.calls += 1
        if self.calls == 2:  # the first call hands over the prompt
            if self.cuda:
                torch.cuda.synchronize()
            self.first = time.perf_counter()

    def end(self) -> None:
        """Nothing to flush: the clock only notes the first token."""


def _phase_peak(cuda: bool) -> int | None:
    """The highest allocated bytes since the last call (or the pass's start), then a new phase.
    No sync needed: the caching allocator counts on the host, when an allocation is requested."""
    if not cuda:
        return None
    peak = torch.cuda.max_memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    return peak


def _cublas_workspace(model) -> None:
    """Makes sure cuBLAS holds its matmul workspace before a pass's memory is taken.

    cuBLAS allocates one workspace per process and stream (about 33 MB on an H200) at the first
    matmul and keeps it, so in eager use it is part of what the process holds, like the weights.
    But PyTorch frees it whenever it records or warms up a CUDA graph (compiled decoding does, in
    generate), and the next pass's first matmul allocates it again: without this, that pass
    would be charged for a fixed, process-wide buffer that the eager passes never see.
    """
    weight = next(model.parameters())
    one = torch.ones(8, 8, device=weight.device, dtype=weight.dtype)
    torch.mm(one, one)


def _device_calls(cuda: bool) -> dict[str, int]:
    """The caching allocator's cudaMalloc and cudaFree calls so far (host-side counters, no sync)."""
    stats = torch.cuda.memory_stats() if cuda else {}
    return {"malloc": stats.get("num_device_alloc", 0), "free": stats.get("num_device_free", 0)}


def _calls_between(first: dict[str, int], second: dict[str, int]) -> dict[str, int]:
    return {key: second[key] - first[key] for key in first}


def decoder_cache(decoder, length: int, tokens: int) -> tuple[object, int]:
    """The cache the graph decoder prefills a pass of `length` prompt tokens into (`GraphDecoder.cache_for`), and the
    bytes this pass uses that were held before it (as `pass_cache`): where its prefill is a recorded one, its cache if
    an earlier pass left it, any cache it displaced, and the free part of the recorded prefills' memory pool, which
    its replay works in (allocated at the recording, so never counted in `max_memory_allocated`)."""
    graphs = decoder.prefill_graphs
    if graphs is None:
        return decoder.caches.get(tokens), 0
    kept = graphs.kept_caches()
    cache = decoder.cache_for(length, tokens)
    if not graphs.serves(cache):
        return cache, 0
    still = graphs.kept_caches()
    own = cache_bytes(cache) if any(held is cache for held in kept) else 0
    displaced = sum(cache_bytes(held) for held in kept if not any(held is now for now in still))
    return cache, own + displaced + (graphs.pool_bytes(free_only=True) if cache.layers[0].keys.is_cuda else 0)


def pass_cache(caches: DecodeCaches, tokens: int) -> tuple[object, int]:
    """The pass's static cache, and the bytes of it and of any cache it displaced that were
    allocated before the pass (so inside the memory held then), yet are this pass's to count: a
    kept cache is this pass's memory, and a displaced one may be freed during the pass (counting
    it as freed can overstate the pass's peak, never understate it)."""
    reused = caches.length_for(tokens) in caches.lengths()
    before = caches.held_bytes()
    cache = caches.get(tokens)
    own = cache_bytes(cache) if reused else 0
    displaced = before - own - caches.held_bytes(besides=cache)
    return cache, own + displaced


HOST_PACE_OPS = 256  # small device operations timed by host_pace_us


def host_pace_us(device: torch.device) -> float:
    """Microseconds the host takes per small device operation launched back to back (then waited for): how fast
    this process's host runs right now. On a GPU each operation is far shorter than its launch, so this is the
    host's pace, which launch-paced stages (selection, the compiled graphs' wrappers, a short prefill) follow: a
    round whose host ran slow shows here rather than as an unexplained jump."""
    cuda = device.type == "cuda"
    x = torch.zeros(1, device=device)
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(HOST_PACE_OPS):
        x.add_(1)
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / HOST_PACE_OPS * 1e6


def one_pass(qa: VideoQA, prompt: Prompt, method: Method, new_tokens: int) -> dict:
    """Vision, selection (V-CAST only), LLM prefill, then generation; returns times and memory, and the host's
    pace just before the pass (`host_pace_us`).

    Python's garbage collector runs before the pass and is paused during it, as `timeit` does: a
    full collection over the compiler's many objects takes tens of milliseconds, and would land
    in whichever method's timing happened to trip it."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        pace = host_pace_us(qa.device)
        return {**measured_pass(qa, prompt, method, new_tokens), "host_us_per_op": pace}
    finally:
        if was_enabled:
            gc.enable()


def measured_pass(qa: VideoQA, prompt: Prompt, method: Method, new_tokens: int) -> dict:
    """One pass of `method` through VideoQA's public steps (encode, select, pass inputs), then a timed
    LLM prefill and a generation of exactly `new_tokens` tokens. Times in ms, memory in MB."""
    model, device = qa.model, qa.device
    cuda = device.type == "cuda"
    if cuda:
        _cublas_workspace(model)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        held = held_before = torch.cuda.memory_allocated()
    with torch.inference_mode():
        clock = _Stopwatch(device)
        prepared = qa.encode(prompt)
        clock.mark("vision")
        selection = None
        if method is not None:
            selection = qa.select(prepared, method[0], config=VCastConfig(retain_ratio=method[1]))
        pass_inputs = qa.pass_inputs(prepared, selection)
        if selection is not None:
            del prepared  # a pruned pass holds only its slices from here on
        clock.mark("selection")
        phase_peaks = {"vision": _phase_peak(cuda)}
        calls_before = _device_calls(cuda)
        cache = None
        if qa.decode_caches is not None:
            # A new static cache, or with --keep-decode-caches the one every earlier pass of this
            # length used. The timed prefill writes into it, as generate's prefill does: a dynamic
            # cache beside it would count a second cache in the peak.
            cache, charged = pass_cache(qa.decode_caches, int(pass_inputs.input_ids.shape[1]) + new_tokens)
            if cuda:
                held -= charged
        elif qa.graph_decoder is not None:  # the default on a GPU: the static cache its prefill writes into
            length = int(pass_inputs.input_ids.shape[1])
            cache, charged = decoder_cache(qa.graph_decoder, length, length + new_tokens)
            if cuda:
                held -= charged
        calls_cache = _device_calls(cuda)
        cache_kwarg = {} if cache is None else {cache_argument(model): cache}
        prefill_began = time.perf_counter()
        if qa.graph_decoder is not None and qa.decode_caches is None:  # as the decoder prefills (maybe compiled)
            out = qa.graph_decoder.prefill(pass_inputs, cache)
        else:
            out = model(**pass_inputs.generate_kwargs(), use_cache=True, logits_to_keep=1, **cache_kwarg)
        # the host's time to queue the prefill: close to its GPU time, the prefill waited for the host
        prefill_host_ms = (time.perf_counter() - prefill_began) * 1000.0
        clock.mark("llm_prefill")
        del out
        phase_peaks["prefill"] = _phase_peak(cuda)
        calls_forward = _device_calls(cuda)
        times = clock.ms()
        if qa.decode_caches is not None:
            cache.reset()
        else:
            del cache, cache_kwarg  # the decoder allocates its own, as in the app

        first_token = _FirstTokenClock(device)
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        if qa.decode_caches is not None:
            with generation_attention(device):
                model.generate(**pass_inputs.generate_kwargs(), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                               do_sample=False, streamer=first_token, **{cache_argument(model): cache})  # fmt: skip
            decoding = "generate"
        else:  # VideoQA's own decoding: the graph decoder on a GPU, generate elsewhere
            decoding = qa.decode(pass_inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                 streamer=first_token)  # fmt: skip
        if cuda:
            torch.cuda.synchronize()
        end = time.perf_counter()
        phase_peaks["generate"] = _phase_peak(cuda)
    peaks = {f"peak_{name}_mb": None if peak is None else (peak - held) / 2**20 for name, peak in phase_peaks.items()}
    return {
        **times,
        **peaks,
        "held_before_mb": held_before / 2**20 if cuda else None,
        "prefill_device_calls": {
            "cache": _calls_between(calls_before, calls_cache),
            "forward": _calls_between(calls_cache, calls_forward),
        }
        if cuda
        else None,
        "first_token_ms": (first_token.first - start) * 1000.0,
        "decode_tokens_per_s": (new_tokens - 1) / (end - first_token.first),
        # GPU memory only: on the CPU the process's memory says nothing about one pass.
        "peak_above_weights_mb": max(peaks.values()) if cuda else None,
        "visual_tokens": pass_inputs.num_visual_tokens,
        "sequence_length": int(pass_inputs.input_ids.shape[1]),
        "decoding": decoding,
        "llm_prefill_host_ms": prefill_host_ms,
        # the graph decoder's recording of its step, inside the decode time (None: nothing recorded)
        "recording_ms": qa.graph_decoder.recording_ms if decoding == "cuda_graphs" else None,
    }


def _present(passes: list[dict], key: str) -> list[float]:
    """The pass values of `key` that were measured (GPU memory figures are None on the CPU)."""
    return [r[key] for r in passes if r[key] is not None]


def _label(method: Method) -> str:
    return "unpruned" if method is None else method[0]


def measure_video(qa: VideoQA, size: str, frames: int, height: int, width: int, methods: list[Method],
                  runs: int, new_tokens: int, warmup_s: float = 0.0) -> list[Row]:  # fmt: skip
    """Unpruned and each (method, ratio) on one synthetic video: warm-up passes of every method (at
    least one each, and for at least `warmup_s` seconds), then `runs` rounds that run every method once,
    in alternating order (forward, then backward: ABBA), so drift of the machine (clocks, memory
    growth, other load) falls on all methods alike. One Row per method, medians over the rounds, with
    each round's ratio to unpruned's same round."""
    prompt = qa.prompt(synthetic_clip(frames, height, width), "Describe what happens in this video in detail.")
    methods = [None, *methods]
    started = time.perf_counter()
    while True:  # warm-up (and compilation, if any): a process's first minute runs slower (measured)
        for method in methods:
            one_pass(qa, prompt, method, new_tokens)
        if time.perf_counter() - started >= warmup_s:
            break
    results: dict[Method, list[dict]] = {method: [] for method in methods}
    for r in range(runs):
        for method in methods if r % 2 == 0 else methods[::-1]:
            results[method].append(one_pass(qa, prompt, method, new_tokens))
    base = results[None]
    rows = []
    for method in methods:
        passes = results[method]

        def med(key: str, passes=passes) -> float:
            return statistics.median(r[key] for r in passes)

        vision, selection, llm = med("vision"), med("selection"), med("llm_prefill")

        def most(key: str, passes=passes) -> float | None:
            values = _present(passes, key)
            return max(values) if values else None

        rows.append(Row(
            size=size, frames=frames, height=height, width=width,
            method=_label(method), retain_ratio=1.0 if method is None else method[1],
            visual_tokens=passes[0]["visual_tokens"], sequence_length=passes[0]["sequence_length"],
            vision_ms=vision, selection_ms=selection, llm_prefill_ms=llm, prefill_ms=vision + selection + llm,
            ttft_ms=vision + selection + med("first_token_ms"), decode_tokens_per_s=med("decode_tokens_per_s"),
            peak_above_weights_mb=most("peak_above_weights_mb"), peak_vision_mb=most("peak_vision_mb"),
            peak_prefill_mb=most("peak_prefill_mb"), peak_generate_mb=most("peak_generate_mb"),
            prefill_ms_runs=[r["vision"] + r["selection"] + r["llm_prefill"] for r in passes],
            stage_ms_runs=[[r["vision"], r["selection"], r["llm_prefill"]] for r in passes],
            prefill_device_calls_runs=_present(passes, "prefill_device_calls") or None,
            held_before_mb_runs=_present(passes, "held_before_mb") or None,
            decode_tokens_per_s_runs=[r["decode_tokens_per_s"] for r in passes],
            prefill_ratio_runs=[_prefill(r) / _prefill(b) for r, b in zip(passes, base, strict=True)],
            decode_ratio_runs=[r["decode_tokens_per_s"] / b["decode_tokens_per_s"]
                               for r, b in zip(passes, base, strict=True)],
            host_us_per_op_runs=_present(passes, "host_us_per_op") or None,
            decoding_runs=_present(passes, "decoding") or None,
            llm_prefill_host_ms_runs=[r["llm_prefill_host_ms"] for r in passes],
            recording_ms_runs=_present(passes, "recording_ms") or None,
        ))  # fmt: skip
    return rows


_NAMES = {"vcast": "V-CAST", "evs": "EVS", "vidcom2": "VidCom2"}


def _prefill(measured: dict) -> float:
    return measured["vision"] + measured["selection"] + measured["llm_prefill"]


DEFAULT_TOLERANCE = 0.10  # a ratio whose rounds spread more than this (relative to its median) is flagged


def spread(values: list[float]) -> float:
    """(max - min) / median of per-round values: how far the rounds disagree."""
    middle = statistics.median(values)
    return (max(values) - min(values)) / middle if middle else float("inf")


def _ratio_cell(median: float, runs: list[float] | None, tolerance: float, digits: int) -> str:
    """The median ratio, its rounds' range, and a flag where the rounds disagree beyond the tolerance."""
    if not runs or len(runs) < 2:
        return f"{median:.{digits}f}"
    flag = " (rounds disagree)" if spread(runs) > tolerance else ""
    return f"{median:.{digits}f} [{min(runs):.{digits}f}-{max(runs):.{digits}f}]{flag}"


def disagreements(rows: list[Row], tolerance: float = DEFAULT_TOLERANCE) -> list[str]:
    """One line per ratio whose rounds spread beyond `tolerance`: such a median is not a verdict."""
    lines = []
    for r in rows:
        for name, runs in (("prefill", r.prefill_ratio_runs), ("decode", r.decode_ratio_runs)):
            if r.method != "unpruned" and runs and len(runs) > 1 and spread(runs) > tolerance:
                where = f"{r.size} {r.frames} frames {r.method} R={r.retain_ratio:g}"
                base = next((u for u in rows if u.method == "unpruned" and (u.size, u.frames, u.height, u.width)
                             == (r.size, r.frames, r.height, r.width)), None)  # fmt: skip
                host = (r.host_us_per_op_runs or []) + ((base.host_us_per_op_runs or []) if base else [])
                pace = f" (host {min(host):.1f}-{max(host):.1f} us per launch)" if host else ""
                lines.append(f"{where}: {name} ratio rounds {min(runs):.3f}-{max(runs):.3f}, "
                             f"spread {spread(runs):.0%} > {tolerance:.0%}{pace}")  # fmt: skip
    return lines


def table(rows: list[Row], tolerance: float = DEFAULT_TOLERANCE) -> str:
    lines = [
        "| model | frames, size | method | visual tokens | vision ms | selection ms | LLM prefill ms | prefill ms "
        "| prefill / unpruned | TTFT ms | decode tok/s | decode / unpruned | peak above weights MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = {}
    for r in rows:
        key = (r.size, r.frames, r.height, r.width)
        if r.method == "unpruned":
            base[key] = r
        ref = base.get(key)
        prefill = decode = "-"
        if ref and r.method != "unpruned":
            prefill_runs = r.prefill_ratio_runs or [r.prefill_ms / ref.prefill_ms]
            decode_runs = r.decode_ratio_runs or [r.decode_tokens_per_s / ref.decode_tokens_per_s]
            prefill = _ratio_cell(statistics.median(prefill_runs), r.prefill_ratio_runs, tolerance, 3)
            decode = _ratio_cell(statistics.median(decode_runs), r.decode_ratio_runs, tolerance, 2)
        elif ref:
            prefill, decode = "1.000", "1.00"
        peak = "-" if r.peak_above_weights_mb is None else f"{r.peak_above_weights_mb:.0f}"
        name = "unpruned" if r.method == "unpruned" else f"{_NAMES.get(r.method, r.method)} R={r.retain_ratio:g}"
        lines.append(
            f"| {r.size} | {r.frames}, {r.width}x{r.height} | {name} | {r.visual_tokens} | {r.vision_ms:.1f} | "
            f"{r.selection_ms:.2f} | {r.llm_prefill_ms:.1f} | {r.prefill_ms:.1f} | {prefill} | {r.ttft_ms:.1f} | "
            f"{r.decode_tokens_per_s:.1f} | {decode} | {peak} |"
        )
    return "\n".join(lines)


VISION_SETTINGS = ("app", "eager", "compiled")
# "app": the decoder layers compiled for the prefill and the decode steps, as the app; "prefill-only": for the prefill,
# the steps recording the eager kernels (before 2026-12-03); "eager": neither; "unstacked": as the app before the
# stacked caches (before 2026-12-03's fifth session: each layer's graphs split around its cache update); "recorded":
# as the app, with prompts up to 4096 tokens padded and replayed as CUDA graphs (`GraphDecoder.record_prefills`)
PREFILL_SETTINGS = ("app", "prefill-only", "eager", "unstacked", "recorded")


# Served models kept and handed out again for the same arguments, when a runner sets this to a dict (one start-up for
# several measurements of one process: benchmarks/answer_suite.py); None, the default: every call builds its own.
SHARED_MODELS: dict[str, VideoQA] | None = None


def served_model(name: str, *, vision: str = "app", prefill: str = "app", **options) -> VideoQA:
    """`VideoQA.random_weights(name, **options)` with its vision tower as `vision` says: "app", as `python app.py`
    serves that model on this machine (for Qwen3-VL on a CUDA GPU compiled, warmed up on 32 frames and frozen by
    `catalogue.warm_up_for_serving`; eager otherwise); "eager"; "compiled" (compiled for any family, no warm-up, not
    frozen). `prefill` "app": the LLM's decoder layers compiled where the app compiles them (`compile_prefill`, with
    the vision tower), for the prefill and the decode steps, with stacked caches (each layer one compiled graph);
    "prefill-only": for the prefill only; "eager": not; "unstacked": as "app", with a cache per layer whose update
    splits each layer's graphs (the app before stacked caches); "recorded": as "app", with prompts up to 4096 tokens
    padded and replayed as CUDA graphs (`GraphDecoder.record_prefills`: their caches and memory pool stay held).
    Decoding is VideoQA's default (graph-recorded on one GPU) unless `options` say otherwise."""
    if vision not in VISION_SETTINGS:
        raise ValueError(f"vision must be one of {', '.join(VISION_SETTINGS)}, got {vision!r}")
    if prefill not in PREFILL_SETTINGS:
        raise ValueError(f"prefill must be one of {', '.join(PREFILL_SETTINGS)}, got {prefill!r}")
    key = repr((name, vision, prefill, sorted(options.items())))
    if SHARED_MODELS is not None and key in SHARED_MODELS:
        return SHARED_MODELS[key]
    served = catalogue.compiles_by_default(random_weights_id(name))
    compiled = vision == "compiled" or (vision == "app" and served)
    options.setdefault("compile_vision", compiled)
    options.setdefault("compile_prefill", prefill != "eager" and served)
    qa = VideoQA.random_weights(name, **options)
    if prefill == "prefill-only" and qa.graph_decoder is not None:
        qa.graph_decoder.compiled_steps = False
    if prefill == "unstacked" and qa.prefill_compiled:  # each layer's graphs split around the cache update
        qa.graph_decoder.compile_prefill(steps=True, stacked=False, recorded=False)
    if prefill == "recorded" and qa.prefill_compiled:
        qa.graph_decoder.record_prefills()
    if vision == "app":
        clip = synthetic_clip(catalogue.COMPILED_WARM_UP_FRAMES, 360, 640)  # the app's example clips are 640 x 360
        seconds = catalogue.warm_up_for_serving(qa, clip)
        print(json.dumps({"warm_up_for_serving_s": round(seconds, 1), "vision_compiled": qa.vision_compiled,
                          "prefill_compiled": qa.prefill_compiled}), flush=True)  # fmt: skip
    if SHARED_MODELS is not None:
        SHARED_MODELS[key] = qa
    return qa


def _model(size: str, args) -> VideoQA:
    """A random-weight model of the real shapes of `size` on the GPU (`served_model`), or the tiny model on the CPU."""
    compile_vision = {None: False, "default": True}.get(args.compile_vision, args.compile_vision)
    family = tiny_family(size)
    if family is not None:  # a smoke test of this script (CI runs it), not a benchmark
        return VideoQA.tiny(family=family, attn_implementation=args.attn, compile_vision=compile_vision,
                            compile_decode=args.compile_decode,
                            vision_chunk_patches=args.vision_chunk_patches)  # fmt: skip
    budget = {"app": DEFAULT_MAX_PIXELS_PER_VIDEO, "none": None}[args.pixel_budget]
    vision = args.vision if args.compile_vision is None else "compiled"
    return served_model(size, vision=vision, prefill=args.prefill, attn_implementation=args.attn,
                        max_pixels_per_frame=1024 * 32 * 32,
                        max_pixels_per_video=budget, compile_decode=args.compile_decode,
                        vision_chunk_patches=args.vision_chunk_patches,
                        **({} if args.compile_vision is None else {"compile_vision": compile_vision}))  # fmt: skip


def vision_setting(args) -> str:
    """The meta's words for how the vision tower ran."""
    if args.vision == "eager" and args.compile_vision is None:
        return "eager"
    if args.compile_vision is not None or args.vision == "compiled":
        return f"torch.compile ({args.compile_vision or 'default'})"
    return ("as the app serves it: torch.compile for Qwen3-VL on a CUDA GPU, warmed up on 32 frames and frozen "
            "(catalogue.warm_up_for_serving); eager otherwise")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vcast.bench", description=__doc__.strip().splitlines()[0])
    parser.add_argument("--sizes", default="8B",
                        help="Qwen3-VL sizes 2B,4B,8B,32B,30B-A3B and/or Qwen2.5-VL-7B,Qwen3.5-9B,LLaVA-OneVision-7B "
                        "(random weights, real shapes); tiny or tiny-<family>: a CPU smoke test")  # fmt: skip
    parser.add_argument("--videos", default="32x448x448,64x352x640,128x352x640", help="FRAMESxHEIGHTxWIDTH,...")
    parser.add_argument("--ratios", default="0.25,0.15")
    parser.add_argument("--pixel-budget", choices=("app", "none"), default="app",
                        help="app: the processor's total pixel budget over the clip that from_pretrained (the app) "
                        "sets (16384 x 32 x 32; a 128 x 352 x 640 clip gives 7680 visual tokens); none: frames are "
                        "only capped one by one (that clip gives 14080, the setting of issue 7's figures)")  # fmt: skip
    parser.add_argument("--methods", default="vcast",
                        help=f"comma-separated, measured at each ratio beside unpruned: {', '.join(METHODS)} "
                        "(the 2x2 methods at 0.25 only)")  # fmt: skip
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup-s", type=float, default=None,
                        help="warm up each video for at least this many seconds (default 20 on a GPU, 0 on the CPU): "
                        "a new process's first minute runs slower")  # fmt: skip
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="flag a ratio whose rounds spread more than this fraction of its median")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--attn", default="sdpa")
    parser.add_argument(
        "--compile-vision",
        nargs="?",
        const="default",
        default=None,
        help="torch.compile the vision tower (optionally naming a mode, e.g. reduce-overhead), for every family and "
        "with no freezing; default: as the app serves it",
    )
    parser.add_argument("--vision", choices=VISION_SETTINGS, default="app",
                        help="the vision tower as the app serves it (default: compiled for Qwen3-VL on a GPU, warmed "
                        "up and frozen), eager (VideoQA's default), or compiled")  # fmt: skip
    parser.add_argument("--prefill", choices=PREFILL_SETTINGS, default="app",
                        help="the LLM's decoder layers as the app serves them (default: compiled for the prefill "
                        "and the decode steps for dense Qwen3-VL on a GPU, with the vision tower), prefill-only, "
                        "eager, or unstacked (the app's, with a cache per layer: each layer's graphs split "
                        "around its cache update, the default before 2026-12-03's fifth session), or recorded (the "
                        "app's, with prompts up to 4096 tokens padded and replayed as CUDA graphs: an option that "
                        "holds memory between requests; docs/BENCHMARKS.md section 19)")  # fmt: skip
    parser.add_argument("--vision-chunk-patches", type=int, default=DEFAULT_VISION_CHUNK_PATCHES)
    parser.add_argument("--compile-decode", action="store_true",
                        help="decode from static KV caches, which generate() compiles into CUDA graphs (VideoQA's "
                        "compile_decode: a new cache per pass)")  # fmt: skip
    parser.add_argument("--cache-bucket", type=int, default=DEFAULT_CACHE_BUCKET,
                        help="with --compile-decode: round static-cache lengths up to a multiple of this")  # fmt: skip
    parser.add_argument("--keep-decode-caches", action="store_true",
                        help="with --compile-decode: keep one cache per method across passes (DecodeCaches(kept=N)); "
                        "no recording again, but each cache is held through the other passes' vision")  # fmt: skip
    parser.add_argument("--out", default="results/bench.json")
    args = parser.parse_args(argv)
    sizes = args.sizes.split(",")
    tiny = all(tiny_family(size) is not None for size in sizes)
    if not torch.cuda.is_available() and not tiny:
        raise SystemExit("python -m vcast.bench needs a CUDA GPU for the real model sizes; without one, only "
                         "--sizes tiny runs (a smoke test of the script, not a benchmark).")  # fmt: skip
    if args.cache_bucket < 1:
        raise SystemExit("--cache-bucket must be at least 1 (token)")
    if args.new_tokens < 2 or args.runs < 1:
        raise SystemExit("--new-tokens must be at least 2 (the decode rate is taken after the first) and --runs >= 1")
    import transformers

    videos = [tuple(int(v) for v in spec.split("x")) for spec in args.videos.split(",")]
    ratios = [float(r) for r in args.ratios.split(",")]
    try:
        names = check_methods(args.methods.split(","))
    except ValueError as err:
        raise SystemExit(f"--methods: {err}") from err
    methods: list[Method] = [(name, r) for name in names for r in ratios if not name.endswith("_2x2") or r == 0.25]
    if not methods:
        raise SystemExit("--methods: the 2x2 methods keep exactly 1 token of 4; add 0.25 to --ratios")
    device_name = "cpu" if tiny else torch.cuda.get_device_name()
    meta = {"gpu": device_name, "torch": torch.__version__, "cuda": torch.version.cuda,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "date": date.today().isoformat(), "attn": args.attn, "runs": args.runs, "new_tokens": args.new_tokens,
            "command": "python -m vcast.bench " + " ".join(sys.argv[1:] if argv is None else argv)}  # fmt: skip
    if args.keep_decode_caches and not args.compile_decode:
        raise SystemExit("--keep-decode-caches goes with --compile-decode")
    meta["decode"] = "graph-recorded static cache, fused step (VideoQA's default on one GPU)" if not tiny else "eager"
    if args.compile_decode:
        held = "one kept per method across passes" if args.keep_decode_caches else "a new one per pass"
        meta["decode"] = f"static caches ({held}, lengths rounded up to {args.cache_bucket}), compiled by generate"
    meta["vision"] = vision_setting(args)
    meta["prefill"] = "eager"  # filled in from the model: what ran, not what was asked
    meta["vision_chunk_patches"] = args.vision_chunk_patches
    warmup_s = args.warmup_s if args.warmup_s is not None else (0.0 if tiny else 20.0)
    meta["order"] = (f"warm-up passes of every method for at least {warmup_s:g} s, then rounds running each method "
                     "once, alternating forward and backward order (ABBA)")  # fmt: skip
    meta["tolerance"] = args.tolerance
    rows: list[Row] = []
    for size in sizes:
        qa = _model(size, args)
        if qa.prefill_compiled:
            how = "warmed up and frozen, as the app" if qa.graph_decoder.compiled_prefill.frozen else "not frozen"
            steps = "and the decode steps" if qa.graph_decoder.compiled_steps else "not the decode steps"
            meta["prefill"] = f"decoder layers compiled ({how}; {steps})"
            graphs = qa.graph_decoder.prefill_graphs
            if graphs is not None and graphs.record:
                meta["prefill"] += (f"; prompts up to {graphs.max_tokens} tokens padded to a multiple of "
                                    f"{graphs.bucket} and replayed as CUDA graphs")  # fmt: skip
        if qa.decode_caches is not None:  # with --keep-decode-caches one per method: each round alternates all
            kept = 1 + len(methods) if args.keep_decode_caches else 0
            qa.decode_caches = DecodeCaches(qa.model, bucket=args.cache_bucket, kept=kept)
        for frames, height, width in videos:
            video_rows = measure_video(qa, size, frames, height, width, methods, args.runs, args.new_tokens,
                                       warmup_s)  # fmt: skip
            rows.extend(video_rows)
            if qa.graph_decoder is not None and qa.graph_decoder.failure is not None:  # say it, not only in the log
                meta[f"graph_decoder_failure_{size}"] = qa.graph_decoder.failure
                print(f"graph decoder: recording failed, decoding eagerly ({qa.graph_decoder.failure})", flush=True)
            graphs = qa.graph_decoder.prefill_graphs if qa.graph_decoder is not None else None
            if graphs is not None and graphs.record:
                meta[f"prefill_recordings_{size}"] = graphs.recordings
                if graphs.failure is not None:
                    meta[f"prefill_recording_failure_{size}"] = graphs.failure
                    print(f"recorded prefills: recording failed, prefilling eagerly ({graphs.failure})", flush=True)
            print("\n".join(table(video_rows, args.tolerance).splitlines()[2:]), flush=True)
        del qa
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    print(json.dumps(meta))
    print(table(rows, args.tolerance))
    flagged = disagreements(rows, args.tolerance)
    for line in flagged:
        print(f"not a verdict: {line}")
    meta["disagreements"] = flagged
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=2))


if __name__ == "__main__":
    main()
