"""Does a request of a new video shape pay a compilation after warm-up? First vs second request, per shape.

    python benchmarks/first_request.py [--model 8B] [--warm 32x448x448,128x352x640]
                                       [--new 64x336x592,96x448x256] [--vision app|eager|compiled]
                                       [--compile] [--keep-caches 2]

Builds the model as the app serves it (`--vision`; with `--compile`: compiled vision tower and decoding, decode
caches kept), warms it up
with one answer per `--warm` shape, then for each `--new` shape times two identical answers (V-CAST and
unpruned, 32 new tokens). The ratio first / second is what a user of a long-running server meets when a
new video length arrives (target: within 1.2x).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks.bench import PREFILL_SETTINGS, VISION_SETTINGS, served_model, synthetic_clip
from vcast.models.decode import DecodeCaches
from vcast.pipeline import VideoQA


def timed_answer(qa: VideoQA, spec: str, tokens: int) -> tuple[float, dict]:
    """Wall seconds of one answer (V-CAST and unpruned), and where the time went (ms)."""
    frames, height, width = (int(v) for v in spec.split("x"))
    clip = synthetic_clip(frames, height, width)
    torch.cuda.synchronize()
    start = time.perf_counter()
    result = qa.answer(clip, "Describe what happens in this video in detail.", max_new_tokens=tokens,
                       min_new_tokens=tokens)  # fmt: skip
    torch.cuda.synchronize()
    wall = time.perf_counter() - start
    full, pruned = result.full.metrics, result.pruned.metrics
    stages = {"vision": full.vision_ms, "selection": pruned.selection_ms,
              "unpruned_llm": full.total_ms - full.vision_ms, "vcast_llm": pruned.total_ms - pruned.vision_ms
              - pruned.selection_ms}  # fmt: skip
    stages["rest"] = wall * 1000 - sum(stages.values())  # the processor, positions, Python
    return wall, {k: round(v, 1) for k, v in stages.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--model", default="8B")
    parser.add_argument("--warm", default="32x448x448,128x352x640")
    parser.add_argument("--new", default="64x336x592,96x448x256,48x448x448")
    parser.add_argument("--compile", action="store_true", help="compile vision, and compile_decode")
    parser.add_argument("--vision", choices=VISION_SETTINGS, default="app",
                        help="the vision tower as the app serves it (default: for Qwen3-VL on a GPU compiled, warmed "
                        "up on 32 frames and frozen, before the --warm answers), eager, or compiled")  # fmt: skip
    parser.add_argument("--prefill", choices=PREFILL_SETTINGS, default="app",
                        help="the LLM's decoder layers as the app serves them (default: compiled for the prefill and "
                        "the decode steps, dense Qwen3-VL on a GPU), prefill-only, or eager")  # fmt: skip
    parser.add_argument("--keep-caches", type=int, default=0)
    parser.add_argument("--vision-sdpa", default=None,
                        help="vision attention SDPA backends, e.g. cudnn,flash (default: the library's, no cuDNN)")
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args(argv)
    qa = served_model(args.model, vision="compiled" if args.compile else args.vision, prefill=args.prefill,
                      **({"compile_decode": True} if args.compile else {}))  # fmt: skip
    if args.compile and args.keep_caches:
        qa.decode_caches = DecodeCaches(qa.model, kept=args.keep_caches)
    if args.vision_sdpa:
        qa.vision_sdpa_backends = args.vision_sdpa.split(",")
    started = time.perf_counter()
    for spec in args.warm.split(","):
        seconds, stages = timed_answer(qa, spec, args.tokens)
        print(json.dumps({"warm": spec, "s": round(seconds, 2), "ms": stages}), flush=True)
    print(json.dumps({"warm_up_s": round(time.perf_counter() - started, 1)}), flush=True)
    for spec in args.new.split(","):
        (first, stages_first), (second, stages_second) = (timed_answer(qa, spec, args.tokens) for _ in range(2))
        print(json.dumps({"new": spec, "first_s": round(first, 3), "second_s": round(second, 3),
                          "first_over_second": round(first / second, 2), "ms_first": stages_first,
                          "ms_second": stages_second}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
