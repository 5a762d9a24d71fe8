"""Is an LLM prefill bound by the GPU or by the host? Host time, GPU time and host waits of each pass's prefill.

    python benchmarks/profile_prefill.py [--model 8B] [--videos 32x448x448,128x352x640] [--runs 5] [--out FILE]

For each video (the app's pixel budget) and each pass (V-CAST R = 0.25, unpruned), runs the LLM prefill (one forward
over the prompt into a static cache, as the graph decoder does, with generation's attention backends) `--runs` times
and reports, as medians:
- gpu_ms: CUDA-event time from the first kernel queued to the last one done;
- host_ms: time until the forward call returns on the host (before any synchronisation);
- kernel_ms: the sum of the CUDA kernels' own durations in one prefill (torch.profiler); gpu_ms - kernel_ms is the
  time the GPU sat idle inside the prefill;
- new_segments: memory segments the caching allocator had to request from the driver (cudaMalloc) per prefill;
- host_waits: operations in the forward that make the host wait for the device (`.item()`, `nonzero`, boolean
  indexing, `is_nonzero`), counted once with a dispatch-mode trace, with where they are.
When host_ms is close to gpu_ms the GPU was waiting for the host's launches: the prefill is host-bound, and its time
moves with the host's pace. `--model tiny` runs the tiny offline model on the CPU (a smoke test of this script).

    python benchmarks/profile_prefill.py --wrappers python,cpp [--videos 32x448x448] [--runs 5]

instead times the graph decoder's compiled prefill (the app's, `GraphDecoder.compile_prefill`) with each of Inductor's
wrappers, in one process on one host: "python", Inductor's default, launches each graph's kernels from generated
Python; "cpp" from generated C++ (`inductor_options`, the app's choice on a GPU); "-stacked" after either gives the
decoder `StackedPrefillCache`s, whose traced update makes each decoder layer one graph. Each wrapper's first prefills
compile (`compile_s`); then rounds alternate the wrappers, and each row keeps host_ms and gpu_ms as above and, on a
GPU, one more prefill's CUDA kernels by kind ("kernels": matrix products, attention, Inductor's fused kernels, ...).
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks.bench import synthetic_clip
from vcast.models.base import cache_argument, generation_attention
from vcast.models.decode import DecodeCaches
from vcast.models.graph_decode import GraphDecoder
from vcast.pipeline import VideoQA

_WAITS = {"aten.nonzero.default", "aten._local_scalar_dense.default", "aten.item.default", "aten.masked_select.default",
          "aten.is_nonzero.default", "aten.equal.default"}  # fmt: skip


class HostWaits(TorchDispatchMode):
    """Counts the operations that make the host wait for the device, by the two innermost non-torch frames."""

    def __init__(self):
        super().__init__()
        self.where: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        boolean_index = name == "aten.index.Tensor" and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or ()))  # fmt: skip
        if name in _WAITS or boolean_index:
            frames = [f for f in traceback.extract_stack()[:-1] if "/torch/" not in f.filename]
            place = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in frames[-2:])
            self.where[f"{name} at {place}"] += 1
        return func(*args, **(kwargs or {}))


def prefill_inputs(qa: VideoQA, pass_inputs, caches: DecodeCaches) -> dict:
    cache = caches.get(int(pass_inputs.input_ids.shape[1]) + 64)
    return dict(pass_inputs.generate_kwargs(), **{cache_argument(qa.model): cache, "use_cache": True,
                                                   "logits_to_keep": 1})  # fmt: skip


def host_and_gpu_ms(run, cuda: bool) -> tuple[float, float]:
    """(host ms, GPU ms) of `run()`: until it returns on the host, and from its first kernel queued to its last one
    done (CUDA events); on the CPU both are the wall time."""
    if cuda:
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
    began = time.perf_counter()
    run()
    host_ms = (time.perf_counter() - began) * 1000
    if not cuda:
        return host_ms, host_ms
    end.record()
    end.synchronize()
    return host_ms, start.elapsed_time(end)


def timed_prefill(qa: VideoQA, pass_inputs, caches: DecodeCaches) -> tuple[float, float]:
    """(host ms, GPU ms) of one prefill (`host_and_gpu_ms`)."""
    inputs = prefill_inputs(qa, pass_inputs, caches)

    def run() -> None:
        with torch.inference_mode(), generation_attention(qa.device):
            qa.model(**inputs)

    return host_and_gpu_ms(run, qa.device.type == "cuda")


def kernel_ms(qa: VideoQA, pass_inputs, caches: DecodeCaches) -> tuple[float | None, list]:
    """The summed duration of the CUDA kernels of one prefill, and the eight longest kernels as (name, ms, calls)
    (None, [] without CUDA)."""
    if qa.device.type != "cuda":
        return None, []
    from torch.profiler import ProfilerActivity, profile

    inputs = prefill_inputs(qa, pass_inputs, caches)
    with profile(activities=[ProfilerActivity.CUDA]) as prof, torch.inference_mode(), generation_attention(qa.device):
        qa.model(**inputs)
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    top = sorted(events, key=lambda e: -e.device_time_total)[:8]
    return (sum(e.device_time_total for e in events) / 1000,
            [(e.key[:70], round(e.device_time_total / 1000, 2), e.count) for e in top])  # fmt: skip


def video_passes(qa: VideoQA, spec: str) -> dict:
    """The pass inputs of V-CAST (R = 0.25) and of the unpruned pass for a synthetic FRAMESxHEIGHTxWIDTH clip."""
    frames, height, width = (int(v) for v in spec.split("x"))
    prepared = qa.prepare(synthetic_clip(frames, height, width), "Describe what happens in this video in detail.")
    return {"vcast": qa.pass_inputs(prepared, qa.select(prepared, "vcast")), "unpruned": qa.pass_inputs(prepared)}


# Each `--wrappers` name: Inductor's options, whether the caches are stacked (StackedPrefillCache), and whether short
# prefills are padded and replayed as CUDA graphs (`GraphDecoder.record_prefills`)
WRAPPERS = {"python": ({}, False, False), "cpp": ({"cpp_wrapper": True}, False, False),
            "python-stacked": ({}, True, False), "cpp-stacked": ({"cpp_wrapper": True}, True, False),
            "cpp-stacked-recorded": ({"cpp_wrapper": True}, True, True)}  # fmt: skip


def timed_decoder_prefill(decoder: GraphDecoder, pass_inputs) -> tuple[float, float]:
    """(host ms, GPU ms) of one prefill through `decoder` into an empty cache, as the app prefills."""
    length = int(pass_inputs.input_ids.shape[1])
    cache = decoder.cache_for(length, length + 64)

    def run() -> None:
        with torch.inference_mode():
            decoder.prefill(pass_inputs, cache)

    return host_and_gpu_ms(run, pass_inputs.input_ids.device.type == "cuda")


def kernels_by_kind(run) -> dict:
    """The CUDA kernels of one `run()` by kind (`kernel_kind`): {kind: {"count", "ms"}}, their total as "all", and the
twelve longest kernels as "top" ([name, ms, calls])."""
    from torch.profiler import ProfilerActivity, profile

    from benchmarks.profile_vision import kernel_kind

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    kinds: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
    names: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            for key, table in ((kernel_kind(event.name), kinds), ("all", kinds), (event.name[:80], names)):
                table[key][0] += 1
                table[key][1] += event.device_time_total / 1000
    out = {kind: {"count": count, "ms": round(ms, 2)} for kind, (count, ms) in sorted(kinds.items())}
    top = sorted(names.items(), key=lambda item: -item[1][1])[:12]
    return {**out, "top": [[name, round(ms, 2), count] for name, (count, ms) in top]}


def wrapper_rows(qa: VideoQA, wrappers: list[str], videos: list[str], runs: int) -> list[dict]:
    """The compiled prefill with each of Inductor's `wrappers`, one graph decoder each, rounds alternating them."""
    decoders = {}
    for name in wrappers:
        decoders[name] = GraphDecoder(qa.model)
        options, stacked, recorded = WRAPPERS[name]
        decoders[name].compile_prefill(options=options, stacked=stacked, recorded=recorded)
    rows = []
    for spec in videos:
        passes = video_passes(qa, spec)
        compile_s = {}
        for name, decoder in decoders.items():  # the first prefills compile (a new length: maybe again)
            began = time.perf_counter()
            for pass_inputs in passes.values():
                for _ in range(2):
                    timed_decoder_prefill(decoder, pass_inputs)
            compile_s[name] = time.perf_counter() - began
        times = {(name, method): [] for name in decoders for method in passes}
        for round_ in range(runs):
            order = list(decoders) if round_ % 2 == 0 else list(reversed(decoders))
            for name in order:
                for method, pass_inputs in passes.items():
                    times[name, method].append(timed_decoder_prefill(decoders[name], pass_inputs))
        for (name, method), measured in times.items():
            row = {"video": spec, "method": method, "wrapper": name,
                   "prompt_tokens": int(passes[method].input_ids.shape[1]),
                   "host_ms": statistics.median(t[0] for t in measured),
                   "gpu_ms": statistics.median(t[1] for t in measured),
                   "host_ms_runs": [round(t[0], 1) for t in measured],
                   "gpu_ms_runs": [round(t[1], 1) for t in measured],
                   "compile_s": round(compile_s[name], 1)}  # fmt: skip
            if qa.device.type == "cuda":
                decoder, pass_inputs = decoders[name], passes[method]
                length = int(pass_inputs.input_ids.shape[1])
                cache = decoder.cache_for(length, length + 64)
                with torch.inference_mode():
                    row["kernels"] = kernels_by_kind(lambda: decoder.prefill(pass_inputs, cache))  # noqa: B023
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def eager_rows(qa: VideoQA, videos: list[str], runs: int) -> list[dict]:
    """The plain forward's prefill of each pass (the default mode): times, kernels, new segments and host waits."""
    caches = DecodeCaches(qa.model)
    rows = []
    for spec in videos:
        passes = video_passes(qa, spec)
        waits = {}
        for method, pass_inputs in passes.items():
            spy = HostWaits()
            with spy, torch.inference_mode(), generation_attention(qa.device):
                qa.model(**prefill_inputs(qa, pass_inputs, caches))
            waits[method] = dict(spy.where)
        times: dict[str, list[tuple[float, float]]] = {m: [] for m in passes}
        segments: dict[str, list[int]] = {m: [] for m in passes}
        for _ in range(runs):  # interleaved, after the traced (warm-up) forward of each pass
            for method, pass_inputs in passes.items():
                before = new_segments(qa)
                times[method].append(timed_prefill(qa, pass_inputs, caches))
                segments[method].append(new_segments(qa) - before)
        kernels = {method: kernel_ms(qa, pass_inputs, caches) for method, pass_inputs in passes.items()}
        for method, pass_inputs in passes.items():
            row = {"video": spec, "method": method, "prompt_tokens": int(pass_inputs.input_ids.shape[1]),
                   "host_ms": statistics.median(t[0] for t in times[method]),
                   "gpu_ms": statistics.median(t[1] for t in times[method]),
                   "gpu_ms_runs": [round(t[1], 1) for t in times[method]],
                   "host_ms_runs": [round(t[0], 1) for t in times[method]], "kernel_ms": kernels[method][0],
                   "top_kernels": kernels[method][1],
                   "new_segments_runs": segments[method],
                   "host_waits": sum(waits[method].values()), "host_waits_where": waits[method]}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def new_segments(qa: VideoQA) -> int:
    return int(torch.cuda.memory_stats(qa.device).get("segment.all.allocated", 0)) if qa.device.type == "cuda" else 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--model", default="8B")
    parser.add_argument("--videos", default="32x448x448,128x352x640")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--wrappers", default=None,
                        help=f"time the compiled prefill with these of Inductor's wrappers ({', '.join(WRAPPERS)})")
    args = parser.parse_args(argv)
    wrappers = None if args.wrappers is None else args.wrappers.split(",")
    if wrappers is not None and not set(wrappers) <= set(WRAPPERS):
        parser.error(f"--wrappers takes {', '.join(WRAPPERS)}, got {args.wrappers}")
    qa = VideoQA.tiny() if args.model == "tiny" else VideoQA.random_weights(args.model)
    videos = args.videos.split(",")
    rows = eager_rows(qa, videos, args.runs) if wrappers is None else wrapper_rows(qa, wrappers, videos, args.runs)
    if args.out:
        import transformers

        meta = {"torch": torch.__version__, "transformers": transformers.__version__, "model": qa.model_id,
                "gpu": torch.cuda.get_device_name() if qa.device.type == "cuda" else None,
                "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv)}  # fmt: skip
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
