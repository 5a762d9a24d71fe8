"""Where the time goes: torch profiler over the vision tower or over generation, random-weight Qwen3-VL.

python benchmarks/profile_gpu.py [--size 8B] [--what vision|decode] [--frames 128] [--tokens 16]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks.bench import synthetic_clip
from vcast import VCastConfig
from vcast.pipeline import VideoQA


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="8B")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--frames", type=int, default=128)
    parser.add_argument("--what", choices=("vision", "decode"), default="vision")
    args = parser.parse_args()
    qa = VideoQA.random_weights(args.size)
    prompt = qa.prompt(synthetic_clip(args.frames, 352, 640), "Describe the video.")
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    if args.what == "vision":
        with torch.inference_mode():
            for _ in range(2):
                qa.encode(prompt)
            with torch.profiler.profile(activities=activities) as prof:
                qa.encode(prompt)
                torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60))
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60))
        return
    with torch.inference_mode():
        prepared = qa.encode(prompt)
        pruned = qa.pass_inputs(prepared, qa.select(prepared, "vcast", config=VCastConfig()))
        kwargs = {**pruned.generate_kwargs(), "do_sample": False}
        qa.model.generate(**kwargs, max_new_tokens=4, min_new_tokens=4)
        with torch.profiler.profile(activities=activities) as prof:
            qa.model.generate(**kwargs, max_new_tokens=args.tokens, min_new_tokens=args.tokens)
            torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=50))
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=10, max_name_column_width=50))


if __name__ == "__main__":
    main()
