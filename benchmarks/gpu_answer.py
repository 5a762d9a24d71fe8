"""GPU check: a random-weight model with the real shapes of a Qwen3-VL size answers through VideoQA.

    python benchmarks/gpu_answer.py [--size 8B] [--frames 32] [--height 448] [--width 448] [--out results/answer.json]

Builds `VideoQA.random_weights(size)` on the GPU, a synthetic clip of moving shapes, and runs
`VideoQA.answer` with both passes (V-CAST and unpruned) after one warm-up; prints both passes'
metrics. Answers are noise (random weights); costs are those of the real architecture.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
from dataclasses import asdict
from datetime import date

import torch
import transformers

from vcast import VCastConfig
from vcast.bench import synthetic_clip
from vcast.pipeline import VideoQA


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="8B")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--height", type=int, default=448)
    parser.add_argument("--width", type=int, default=448)
    parser.add_argument("--retain", type=float, default=0.25)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--attn", default="sdpa")
    parser.add_argument("--out", default="results/answer.json")
    args = parser.parse_args()

    qa = VideoQA.random_weights(args.size, attn_implementation=args.attn)
    weights_mb = torch.cuda.memory_allocated() / 2**20
    clip = synthetic_clip(args.frames, args.height, args.width)
    config = VCastConfig(retain_ratio=args.retain)
    qa.answer(clip, "What happens in this video?", config=config, max_new_tokens=4)  # warm-up
    result = qa.answer(clip, "What happens in this video?", config=config, max_new_tokens=args.max_new_tokens)
    rows = {"V-CAST": asdict(result.pruned.metrics), "unpruned": asdict(result.full.metrics)}
    meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "date": date.today().isoformat(), "model": qa.model_id,
            "weights_mb": round(weights_mb), "frames": args.frames, "size": [args.height, args.width],
            "grid_thw": list(result.grid), "retain_ratio": args.retain, "attn": args.attn}  # fmt: skip
    print(json.dumps(meta))
    print("| metric | V-CAST | unpruned | ratio |\n|---|---|---|---|")
    for key in rows["V-CAST"]:
        a, b = rows["V-CAST"][key], rows["unpruned"][key]
        if isinstance(a, (int, float)):
            ratio = f"{a / b:.2f}" if b else "-"
            print(
                f"| {key} | {a:.2f} | {b:.2f} | {ratio} |"
                if isinstance(a, float)
                else f"| {key} | {a} | {b} | {ratio} |"
            )
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "passes": rows}, indent=2))


if __name__ == "__main__":
    main()
