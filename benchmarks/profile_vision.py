"""Vision tower variants on a random-weight Qwen3-VL: chunk size, torch.compile mode, CUDA graphs.

    python benchmarks/profile_vision.py [--size 8B] [--videos 32x448x448,128x352x640] [--runs 5]
                                        [--variants eager,compile-dynamic,compile-static,...] [--profile]
    python benchmarks/profile_vision.py --app [--videos ...] [--runs 5] [--out FILE]

`--app`: the vision tower exactly as `python app.py` serves it (`served_model`: the app's pixel budget,
compiled, warmed up and frozen), timed per video, with its CUDA kernels of one encode grouped by kind
(matrix products, attention, Inductor's fused kernels, copies, other) and the matrix products' achieved
TFLOP/s, from the tower's own shapes: how far the tower is from its arithmetic floor.

For each video and variant: median vision ms (CUDA events) over `--runs` after a warm-up that also
compiles, and the peak memory above what was held before (allocated, and reserved by the caching
allocator, which includes CUDA-graph pools). The same `encode_video` as the pipeline; features are
compared with the eager result, so a variant that changes the numbers shows.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks.bench import synthetic_clip
from vcast.models.vision_attention import use_batched_vision_attention
from vcast.models.vision_fast import LinearPatchEmbed, use_fused_vision_attention, use_linear_patch_embed
from vcast.pipeline import VideoQA

# name -> (torch.compile kwargs or None for eager, patches per chunk, vcast.models.vision_fast paths on,
#          SDPA backend or None for PyTorch's choice)
VARIANTS = {
    "eager": (None, 4096, False, None),
    "compile-dynamic": ({"dynamic": True}, 4096, False, None),
    "compile-static": ({"dynamic": False}, 4096, False, None),
    "compile-static-8192": ({"dynamic": False}, 8192, False, None),
    "cudagraphs-static": ({"dynamic": False, "mode": "reduce-overhead"}, 4096, False, None),
    "fast-eager": (None, 4096, True, None),
    "fast-compile-dynamic": ({"dynamic": True}, 4096, True, None),
    "fast-compile-static": ({"dynamic": False}, 4096, True, None),
    "fast-cudagraphs-static": ({"dynamic": False, "mode": "reduce-overhead"}, 4096, True, None),
    "fast-compile-dynamic-flash": ({"dynamic": True}, 4096, True, "flash"),
    "fast-compile-dynamic-8192": ({"dynamic": True}, 8192, True, None),
}


def _backend(name: str | None):
    if name is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel({"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                        "efficient": SDPBackend.EFFICIENT_ATTENTION}[name])  # fmt: skip


def time_variant(qa: VideoQA, prompt, chunk: int, runs: int) -> dict:
    qa.vision_chunk_patches = chunk
    with torch.inference_mode():
        first = qa.encode(prompt).features  # warm-up / compile
        reference = first.embeds.clone()
        del first
        torch.cuda.synchronize()
        times, peaks, reserved = [], [], []
        for _ in range(runs):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            held, held_reserved = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = qa.encode(prompt).features
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
            peaks.append((torch.cuda.max_memory_allocated() - held) / 2**20)
            reserved.append((torch.cuda.max_memory_reserved() - held_reserved) / 2**20)
            same = torch.equal(out.embeds, reference)
            del out
    return {"vision_ms": statistics.median(times), "min_ms": min(times), "peak_above_held_mb": max(peaks),
            "reserved_growth_mb": max(reserved), "repeatable": same}  # fmt: skip


def kernel_kind(name: str) -> str:
    """A CUDA kernel's kind, by its name."""
    lowered = name.lower()
    if lowered.startswith("triton"):  # first: Inductor names a kernel after what it fuses (e.g. "..._sdpa_...")
        return "Inductor's fused kernels"
    if any(k in lowered for k in ("flash", "fmha", "attention", "sdpa", "cutlass_mha", "mem_eff")):
        return "attention"
    if any(k in lowered for k in ("gemm", "nvjet", "cutlass", "splitk", "sm90_xmma", "cublas")):
        return "matrix products"
    if "copy" in lowered or "memcpy" in lowered or "memset" in lowered:
        return "copies"
    return "other"


def linear_flops(visual, patches: int, merged: int) -> float:
    """FLOPs of the vision tower's matrix products for `patches` patches (`merged` tokens after merging):
    2 * rows * in * out for every Linear (and the patch embedding), attention's products left out."""
    flops = 0.0
    for name, module in visual.named_modules():
        if not isinstance(module, torch.nn.Linear | torch.nn.Conv3d | LinearPatchEmbed):  # not the position table
            continue
        weight = module.weight
        rows = merged if "merger" in name else patches
        flops += 2.0 * rows * weight[0].numel() * weight.shape[0]
    return flops


def profile_app(args) -> None:
    """`--app`: time and profile the app's vision tower (see the module's docstring)."""
    import transformers

    from benchmarks.bench import served_model
    from vcast.pipeline import DEFAULT_MAX_PIXELS_PER_VIDEO

    qa = served_model(args.size, max_pixels_per_frame=1024 * 32 * 32, max_pixels_per_video=DEFAULT_MAX_PIXELS_PER_VIDEO)
    visual = qa.adapter.vision_tower
    rows = []
    for spec in args.videos.split(","):
        frames, height, width = (int(v) for v in spec.split("x"))
        prompt = qa.prompt(synthetic_clip(frames, height, width), "Describe the video.")
        row = {"video": spec, "chunk_patches": qa.vision_chunk_patches,
               **time_variant(qa, prompt, qa.vision_chunk_patches, args.runs)}  # fmt: skip
        with torch.inference_mode():
            features = qa.encode(prompt).features
        merged = int(features.embeds.shape[0])
        patches = merged * visual.spatial_merge_size**2
        activities = [torch.profiler.ProfilerActivity.CUDA]
        with torch.inference_mode(), torch.profiler.profile(activities=activities) as prof:
            qa.encode(prompt)
            torch.cuda.synchronize()
        kinds: dict[str, list[float]] = {}
        for event in prof.events():
            if event.device_type == torch.autograd.DeviceType.CUDA:
                entry = kinds.setdefault(kernel_kind(event.name), [0, 0.0])
                entry[0] += 1
                entry[1] += event.device_time_total / 1000
        gemm_ms = kinds.get("matrix products", [0, 0.0])[1]
        flops = linear_flops(visual, patches, merged)
        row.update({"patches": patches, "merged_tokens": merged,
                    "kernels": {k: {"count": n, "ms": round(ms, 2)} for k, (n, ms) in sorted(kinds.items())},
                    "kernel_ms": round(sum(ms for _, ms in kinds.values()), 2),
                    "matrix_product_tflop": round(flops / 1e12, 2),
                    "matrix_product_tflop_s": round(flops / 1e9 / gemm_ms, 1) if gemm_ms else None})  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=90))
    meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "transformers": transformers.__version__,
            "size": args.size, "setting": "the app's (served_model: pixel budget, compiled, warmed up, frozen)",
            "command": "python benchmarks/profile_vision.py " + " ".join(sys.argv[1:])}  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--size", default="8B")
    parser.add_argument("--videos", default="32x448x448,128x352x640")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="also print the top CUDA kernels of the last variant")
    parser.add_argument("--app", action="store_true", help="the vision tower as the app serves it, profiled by kind")
    parser.add_argument("--out", default="results/profile_vision.json")
    args = parser.parse_args(argv)
    if args.app:
        profile_app(args)
        return
    import transformers

    # Plain transformers vision paths plus batched attention; the "fast" variants add vision_fast's.
    qa = VideoQA.random_weights(args.size, max_pixels_per_frame=1024 * 32 * 32, batched_vision_attention=False)
    use_batched_vision_attention(qa.model)
    visual = qa.model.model.visual
    eager_features = {}
    rows = []
    fast = False
    for name in args.variants.split(","):
        compile_kwargs, chunk, want_fast, backend = VARIANTS[name]
        if want_fast and not fast:
            use_linear_patch_embed(qa.model)
            use_fused_vision_attention(qa.model)
            fast = True
        elif fast and not want_fast:
            raise SystemExit(f"{name}: list the variants without the fast paths first")
        visual._compiled_call_impl = None
        torch._dynamo.reset()
        if compile_kwargs is not None:
            visual.compile(**compile_kwargs)
        for spec in args.videos.split(","):
            frames, height, width = (int(v) for v in spec.split("x"))
            prompt = qa.prompt(synthetic_clip(frames, height, width), "Describe the video.")
            with _backend(backend):
                row = {"variant": name, "video": spec, "chunk_patches": chunk,
                       **time_variant(qa, prompt, chunk, args.runs)}  # fmt: skip
            with torch.inference_mode(), _backend(backend):
                features = qa.encode(prompt).features.embeds.float()
            if spec not in eager_features:
                eager_features[spec] = features
            row["max_abs_diff_vs_first_variant"] = float((features - eager_features[spec]).abs().max())
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.profile:
        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.inference_mode(), torch.profiler.profile(activities=activities) as prof:
            qa.encode(prompt)
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=70))
    meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "transformers": transformers.__version__,
            "size": args.size,
            "command": "python benchmarks/profile_vision.py " + " ".join(argv or sys.argv[1:])}  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
