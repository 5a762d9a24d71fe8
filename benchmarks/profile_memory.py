"""Where a pass's peak GPU memory goes: the live allocations at the peak, by the code that made them.

    python benchmarks/profile_memory.py [--size 8B] [--video 32x448x448] [--ratio 0.25]
                                        [--compile-decode] [--buckets 256,64,1] [--top 20]
                                        [--out memory.json]

Runs `vcast.bench`'s pass (vision, selection, timed prefill, generate) once per method to warm up
(and compile), then once more with PyTorch's allocator history on
(`torch.cuda.memory._record_memory_history`). Replaying that history gives the moment of the
highest allocated memory; the allocations made during the pass and still live then are grouped by
the innermost frame outside PyTorch (a line of vcast or transformers) and printed largest first,
above the phase peaks that `python -m vcast.bench` reports. With `--compile-decode`, `--buckets`
profiles the pass once per static-cache rounding.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks import bench
from vcast.models.decode import DEFAULT_CACHE_BUCKET, DecodeCaches
from vcast.pipeline import VideoQA

_OURS = ("/vcast/", "/transformers/", "torchinductor", "/benchmarks/")


def _label(frames: list[dict]) -> str:
    """The innermost frame of our code, transformers or compiled code, with the outermost vcast one."""
    inner = next((f for f in frames if any(key in f["filename"] for key in _OURS)), None)
    outer = next((f for f in reversed(frames) if "/vcast/" in f["filename"]), None)

    def name(frame):
        path = frame["filename"]
        for key in ("/vcast/", "/transformers/", "/benchmarks/"):
            if key in path:
                path = key.strip("/") + "/" + path.split(key, 1)[1]
        return f"{path}:{frame['line']} {frame['name']}"

    if inner is None:
        return "(no frame outside PyTorch)" if not frames else "torch: " + name(frames[0])
    label = name(inner)
    if outer is not None and outer is not inner:
        label += "  <- " + name(outer)
    return label


def peak_allocations(trace: list[dict]) -> tuple[int, list[tuple[int, str]]]:
    """Replays an allocator trace: the highest net bytes allocated during it, and the allocations
    (bytes, label) that were live at that moment. Blocks allocated before the trace began and freed
    during it lower the running total, as they lowered the allocator's."""
    live: dict[int, tuple[int, str]] = {}
    current = peak = 0
    at_peak: list[tuple[int, str]] = []
    for event in trace:
        action = event["action"]
        if action == "alloc":
            live[event["addr"]] = (event["size"], _label(event.get("frames", [])))
            current += event["size"]
            if current > peak:
                peak, at_peak = current, list(live.values())
        elif action == "free_completed":
            live.pop(event["addr"], None)
            current -= event["size"]
    return peak, at_peak


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--size", default="8B")
    parser.add_argument("--video", default="32x448x448")
    parser.add_argument("--ratio", type=float, default=0.25, help="V-CAST's retain ratio; 1 profiles the unpruned pass")
    parser.add_argument("--compile-decode", action="store_true")
    parser.add_argument("--buckets", default=str(DEFAULT_CACHE_BUCKET), help="static-cache roundings to profile")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("profile_memory.py needs a CUDA GPU")
    frames, height, width = (int(v) for v in args.video.split("x"))
    qa = VideoQA.random_weights(args.size, max_pixels_per_frame=1024 * 32 * 32, compile_vision=True,
                                compile_decode=args.compile_decode)  # fmt: skip
    clip = bench.synthetic_clip(frames, height, width)
    prompt = qa.prompt(clip, "Describe what happens in this video in detail.")
    method = None if args.ratio >= 1 else ("vcast", args.ratio)
    buckets = [int(b) for b in args.buckets.split(",")] if args.compile_decode else [None]
    report = []
    for bucket in buckets:
        if bucket is not None:
            qa.decode_caches = DecodeCaches(qa.model, bucket=bucket)
        print(f"--- {args.size} {args.video} R={args.ratio} static-cache bucket {bucket}")
        report.append({"bucket": bucket, **_profile(qa, prompt, method, args)})
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"args": vars(args), "profiles": report}, handle, indent=1)


def _profile(qa: VideoQA, prompt, method, args) -> dict:
    for each in (None, method):  # warm-up and compilation of both, in the bench's order
        bench.one_pass(qa, prompt, each, args.new_tokens)
    torch.cuda.synchronize()
    torch.cuda.memory._record_memory_history(max_entries=1_000_000, context="all", stacks="python")
    result = bench.one_pass(qa, prompt, method, args.new_tokens)
    torch.cuda.synchronize()
    snapshot = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    trace = snapshot["device_traces"][torch.cuda.current_device()]
    peak, live = peak_allocations(trace)
    groups: dict[str, list[int]] = defaultdict(list)
    for size, label in live:
        groups[label].append(size)
    ranked = sorted(groups.items(), key=lambda item: -sum(item[1]))
    print({key: round(value, 1) for key, value in result.items() if key.startswith("peak")})
    print(f"replayed peak above the pass's start: {peak / 2**20:.1f} MiB in {len(live)} live allocations")
    for label, sizes in ranked[: args.top]:
        print(f"{sum(sizes) / 2**20:9.1f} MiB  x{len(sizes):<4d} {label}", flush=True)
    return {
        "pass": result,
        "peak_mib": peak / 2**20,
        "groups": [{"label": label, "mib": sum(sizes) / 2**20, "count": len(sizes)} for label, sizes in ranked],
    }


if __name__ == "__main__":
    main()
