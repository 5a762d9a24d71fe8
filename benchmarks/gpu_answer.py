"""GPU check: random-weight models with real shapes answer through `VideoQA.answer`, each method beside unpruned.

    python benchmarks/gpu_answer.py [--models 8B,Qwen2.5-VL-7B,LLaVA-OneVision-7B] [--frames 32,64]
                                    [--methods vcast] [--runs 3] [--max-new-tokens 32] [--out results/answer.json]

For each model (a Qwen3-VL size or a name of `vcast.models.configs.real_model_names()`) and each clip
length, builds `VideoQA.random_weights(model)` on the GPU and a synthetic clip of moving shapes, runs one
short warm-up answer, then `--runs` answers; reports each pass's median prefill, TTFT, total, decode
tokens/s and peak memory above the weights. Answers are noise (random weights); costs are those of the
real architecture, in the settings `python app.py` serves that model with (`--vision app`: for Qwen3-VL on a CUDA GPU
the vision tower compiled, warmed up on 32 frames and frozen; `--vision eager`: the library's default).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
from dataclasses import asdict
from datetime import date
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks.bench import PREFILL_SETTINGS, VISION_SETTINGS, served_model, synthetic_clip
from vcast import VCastConfig
from vcast.pipeline import FULL, VideoQA, check_methods

FIELDS = ("prefill_ms", "ttft_ms", "total_ms", "decode_tokens_per_s", "vision_ms", "selection_ms")


def measure(qa: VideoQA, frames: int, size: tuple[int, int], methods: list[str], runs: int,
            max_new_tokens: int, weights_mb: float) -> list[dict]:  # fmt: skip
    clip = synthetic_clip(frames, *size)
    question = "Describe what happens in this video in detail."
    qa.answer(clip, question, methods=methods, max_new_tokens=4)  # warm-up
    results = [qa.answer(clip, question, config=VCastConfig(), methods=methods, max_new_tokens=max_new_tokens,
                         min_new_tokens=max_new_tokens) for _ in range(runs)]  # fmt: skip
    rows = []
    for name in [*methods, FULL]:
        passes = [r.full if name == FULL else r.passes[name] for r in results]
        metrics = [asdict(p.metrics) for p in passes]
        row = {"model": qa.model_id, "frames": frames, "method": name, "runs": runs,
               "visual_tokens": metrics[0]["visual_tokens_kept"],
               "sequence_length": metrics[0]["sequence_length"]}  # fmt: skip
        row |= {key: statistics.median(m[key] for m in metrics) for key in FIELDS}
        row[f"{FIELDS[0]}_runs"] = [round(m["prefill_ms"], 1) for m in metrics]
        row["peak_above_weights_mb"] = max(m["peak_memory_mb"] for m in metrics) - weights_mb
        rows.append(row)
    base = rows[-1]
    for row in rows:
        for key in ("prefill_ms", "ttft_ms", "total_ms", "peak_above_weights_mb"):
            row[f"{key}_ratio"] = row[key] / base[key]
        row["decode_ratio"] = row["decode_tokens_per_s"] / base["decode_tokens_per_s"]
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | frames | method | visual tokens | prefill ms | TTFT ms | total ms | decode tok/s | "
             "peak above weights MB | prefill / unpruned | TTFT / unpruned | peak / unpruned |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['frames']} | {r['method']} | {r['visual_tokens']} | {r['prefill_ms']:.1f} | "
            f"{r['ttft_ms']:.1f} | {r['total_ms']:.0f} | {r['decode_tokens_per_s']:.1f} | "
            f"{r['peak_above_weights_mb']:.0f} | {r['prefill_ms_ratio']:.3f} | {r['ttft_ms_ratio']:.3f} | "
            f"{r['peak_above_weights_mb_ratio']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="8B")
    parser.add_argument("--frames", default="32,64")
    parser.add_argument("--size", default="448x448", help="HEIGHTxWIDTH of the synthetic clip")
    parser.add_argument("--methods", default="vcast")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--vision", choices=VISION_SETTINGS, default="app",
                        help="the vision tower as the app serves it (default), eager, or compiled")
    parser.add_argument("--prefill", choices=PREFILL_SETTINGS, default="app",
                        help="the LLM's decoder layers as the app serves them (default: compiled for the prefill and "
                        "the decode steps, dense Qwen3-VL on a GPU), prefill-only, or eager")  # fmt: skip
    parser.add_argument("--out", default="results/answer.json")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("gpu_answer.py needs a CUDA GPU")
    methods = check_methods(args.methods.split(","))
    size = tuple(int(v) for v in args.size.split("x"))
    rows = []
    for name in args.models.split(","):
        qa = served_model(name, vision=args.vision, prefill=args.prefill)
        weights_mb = torch.cuda.memory_allocated() / 2**20
        for frames in (int(f) for f in args.frames.split(",")):
            rows.extend(measure(qa, frames, size, methods, args.runs, args.max_new_tokens, weights_mb))
            print(table(rows[-len(methods) - 1 :]), flush=True)
        del qa
        gc.collect()
        torch.cuda.empty_cache()
    meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "date": date.today().isoformat(), "vision": args.vision, "prefill": args.prefill,
            "command": "python benchmarks/gpu_answer.py " + " ".join(sys.argv[1:] if argv is None else argv),
            }  # fmt: skip
    print(json.dumps(meta))
    print(table(rows))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
