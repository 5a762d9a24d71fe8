"""Where the time goes: torch profiler over the vision tower or over generation, random-weight Qwen3-VL.

python benchmarks/profile_gpu.py [--size 8B] [--what vision|decode] [--frames 128] [--tokens 16]
"""

from __future__ import annotations

import argparse

import torch

from vcast import VCastConfig
from vcast.bench import synthetic_clip
from vcast.models import qwen3_vl
from vcast.pipeline import VideoQA


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="8B")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--frames", type=int, default=128)
    parser.add_argument("--what", choices=("vision", "decode"), default="vision")
    args = parser.parse_args()
    qa = VideoQA.random_weights(args.size)
    inputs = qa._processor_inputs(synthetic_clip(args.frames, 352, 640), "Describe the video.")
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    if args.what == "vision":
        with torch.inference_mode():
            for _ in range(2):
                qwen3_vl.encode_video(qa.model, inputs["pixel_values_videos"], inputs["video_grid_thw"])
            with torch.profiler.profile(activities=activities) as prof:
                qwen3_vl.encode_video(qa.model, inputs["pixel_values_videos"], inputs["video_grid_thw"])
                torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60))
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60))
        return
    with torch.inference_mode():
        features = qwen3_vl.encode_video(qa.model, inputs["pixel_values_videos"], inputs["video_grid_thw"])
        positions = qwen3_vl.rope_positions(qa.model, inputs)
        from vcast import select_tokens

        keep = select_tokens(features.grouped(), VCastConfig()).keep
        pruned = qwen3_vl.pass_inputs(qa.model, inputs, features, positions, keep)
        kwargs = {**pruned.generate_kwargs(), "do_sample": False}
        qa.model.generate(**kwargs, max_new_tokens=4, min_new_tokens=4)
        with torch.profiler.profile(activities=activities) as prof:
            qa.model.generate(**kwargs, max_new_tokens=args.tokens, min_new_tokens=args.tokens)
            torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=50))
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=10, max_name_column_width=50))


if __name__ == "__main__":
    main()
