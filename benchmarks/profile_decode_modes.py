"""Decode modes on a random-weight Qwen3-VL: tokens/s and memory of prefill and decode, per method.

    python benchmarks/profile_decode_modes.py [--size 8B] [--videos 32x448x448,128x352x640]
                                              [--modes dynamic,static,compiled-layers] [--interleave]
                                              [--profile]

Each pass: the vision tower, selection (V-CAST R=0.25) or none (unpruned), then `generate` of
`--new-tokens` greedy tokens in the named mode: "dynamic" (generate's default cache, eager),
"static" (VideoQA's compile_decode with DecodeCaches(kept=2): static caches kept across passes,
compiled by generate into CUDA graphs; "static-math", "static-cudnn", "static-efficient", "static-default" put one SDPA
backend first), "compiled-layers" (each decoder layer torch.compiled, dynamic cache). Reports the
decode rate after the first token and the peak memory above the weights during prefill (to the
first token) and during decoding.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks.bench import synthetic_clip
from vcast.config import VCastConfig
from vcast.models.base import cache_argument, generation_attention
from vcast.models.decode import DecodeCaches, cache_bytes
from vcast.pipeline import VideoQA


class _Clock:
    def __init__(self):
        self.calls, self.first, self.prefill_peak = 0, None, None

    def put(self, value):
        self.calls += 1
        if self.calls == 2:
            torch.cuda.synchronize()
            self.first = time.perf_counter()
            self.prefill_peak = torch.cuda.max_memory_allocated()
            torch.cuda.reset_peak_memory_stats()

    def end(self):
        """Nothing to flush."""


def _attention(mode: str):
    """SDPA backends for generate: the library's choice, or "static-<backend>" to try one backend
    first (math, cudnn, efficient; "default" = PyTorch's own order)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = mode.partition("-")[2] if mode.startswith("static-") else ""
    if not backend:
        return generation_attention(torch.device("cuda"))
    if backend == "default":
        return contextlib.nullcontext()
    first = {"math": SDPBackend.MATH, "cudnn": SDPBackend.CUDNN_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION}
    others = (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH)
    rest = [b for b in others if b != first[backend]]
    return sdpa_kernel([first[backend], *rest], set_priority=True)


def one_pass(qa, prompt, ratio, mode, new_tokens):
    model = qa.model
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    held = torch.cuda.memory_allocated()
    with torch.inference_mode():
        prepared = qa.encode(prompt)
        selection = None if ratio is None else qa.select(prepared, "vcast", config=VCastConfig(retain_ratio=ratio))
        pinputs = qa.pass_inputs(prepared, selection)
        del prepared
        kwargs = {}
        if mode.startswith("static"):  # the pool's cache for this length, the same object every pass (vcast.bench)
            kwargs[cache_argument(model)] = cache = qa.decode_caches.get(int(pinputs.input_ids.shape[1]) + new_tokens)
            held -= cache_bytes(cache)
        clock = _Clock()
        with _attention(mode):
            model.generate(**pinputs.generate_kwargs(), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                           do_sample=False, streamer=clock, **kwargs)  # fmt: skip
        torch.cuda.synchronize()
        end = time.perf_counter()
    return {"tok_s": (new_tokens - 1) / (end - clock.first),
            "prefill_peak_mb": (clock.prefill_peak - held) / 2**20,
            "decode_peak_mb": (torch.cuda.max_memory_allocated() - held) / 2**20,
            "seq": int(pinputs.input_ids.shape[1])}  # fmt: skip


def _passes(qa, prompt, mode, args) -> dict:
    """A warm-up pass of each method, then `args.runs` measured passes of each: back to back, or
    interleaved (one pass of each method per round)."""
    ratios = (None, 0.25)
    results: dict = {ratio: [] for ratio in ratios}
    if args.interleave:
        for ratio in ratios:
            one_pass(qa, prompt, ratio, mode, args.new_tokens)
        for _ in range(args.runs):
            for ratio in ratios:
                results[ratio].append(one_pass(qa, prompt, ratio, mode, args.new_tokens))
        return results
    for ratio in ratios:
        one_pass(qa, prompt, ratio, mode, args.new_tokens)
        results[ratio] = [one_pass(qa, prompt, ratio, mode, args.new_tokens) for _ in range(args.runs)]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--size", default="8B")
    parser.add_argument("--videos", default="32x448x448,128x352x640")
    parser.add_argument("--modes", default="dynamic,static,compiled-layers")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--interleave", action="store_true",
                        help="alternate the methods pass by pass, as vcast.bench does (default: each method's "
                        "passes back to back)")  # fmt: skip
    args = parser.parse_args()
    qa = VideoQA.random_weights(args.size, max_pixels_per_frame=1024 * 32 * 32)
    for mode in args.modes.split(","):
        # kept=2: one cache per method, reused every pass (the committed results were taken so)
        qa.decode_caches = DecodeCaches(qa.model, kept=2) if mode.startswith("static") else None
        torch.compiler.reset()  # each mode compiles afresh (the SDPA backend is fixed when traced)
        qa.model.__dict__.pop("_compiled_call", None)
        if mode == "compiled-layers":  # each decoder layer compiled on its own (its layer_idx is a constant)
            torch._dynamo.config.recompile_limit = 4 * len(qa.model.model.language_model.layers)
            for layer in qa.model.model.language_model.layers:
                layer.compile(dynamic=True)
        for spec in args.videos.split(","):
            frames, height, width = (int(v) for v in spec.split("x"))
            prompt = qa.prompt(synthetic_clip(frames, height, width), "Describe the video.")
            try:
                results = _passes(qa, prompt, mode, args)
            except Exception as err:  # report and go on with the next mode
                print(json.dumps({"mode": mode, "video": spec, "error": repr(err)[:400]}))
                continue
            for ratio, res in results.items():
                row = {"mode": mode, "video": spec, "ratio": ratio, "seq": res[0]["seq"],
                       "order": "interleaved" if args.interleave else "back to back",
                       "tok_s": statistics.median(r["tok_s"] for r in res),
                       "tok_s_all": [round(r["tok_s"], 1) for r in res],
                       "prefill_peak_mb": max(r["prefill_peak_mb"] for r in res),
                       "decode_peak_mb": max(r["decode_peak_mb"] for r in res)}  # fmt: skip
                print(json.dumps(row), flush=True)
    if args.profile:
        for layer in qa.model.model.language_model.layers:
            layer._compiled_call_impl = None
        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=activities) as prof:
            one_pass(qa, prompt, None, "dynamic", 16)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=60))
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=20, max_name_column_width=60))


if __name__ == "__main__":
    main()
