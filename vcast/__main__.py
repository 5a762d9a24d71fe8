"""Command line: answer a question about a video with V-CAST and without, and show the costs.

python -m vcast VIDEO "QUESTION" [--model ID] [--retain 0.25] [--frames N] [--no-compare] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from .config import ALLOCATIONS, VCastConfig
from .pipeline import DEFAULT_MAX_NEW_TOKENS, DEFAULT_MODEL_ID, ModelError, QAResult, VideoQA
from .video import VideoError

_METRIC_ROWS = (
    ("visual tokens", "visual_tokens_kept", "{:.0f}"),
    ("sequence length", "sequence_length", "{:.0f}"),
    ("vision ms (shared)", "vision_ms", "{:.1f}"),
    ("selection ms", "selection_ms", "{:.2f}"),
    ("prefill ms", "prefill_ms", "{:.1f}"),
    ("time to first token ms", "ttft_ms", "{:.1f}"),
    ("decode tokens/s", "decode_tokens_per_s", "{:.1f}"),
    ("total ms", "total_ms", "{:.1f}"),
    ("peak memory MB", "peak_memory_mb", "{:.0f}"),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vcast", description=__doc__.strip().splitlines()[0])
    parser.add_argument("video", help="path to a video file")
    parser.add_argument("question", help="what to ask about the video")
    parser.add_argument("--model", default=DEFAULT_MODEL_ID,
                        help=f"Hugging Face id or local folder of a Qwen3-VL checkpoint, or 'tiny' for the offline "
                             f"random model (default {DEFAULT_MODEL_ID})")  # fmt: skip
    parser.add_argument("--retain", type=float, default=0.25, help="share of visual tokens kept, in (0, 1]")
    parser.add_argument("--frames", type=int, default=None, help="frames to sample (even; default: 2 per second)")
    parser.add_argument("--temperature", type=float, default=0.7, help="softmax temperature of the allocation")
    parser.add_argument("--allocation", choices=ALLOCATIONS, default="curvature")
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument("--no-compare", action="store_true", help="skip the unpruned pass")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument(
        "--compile-vision", action="store_true",
        help="torch.compile the vision tower (faster on a GPU; the first video pays a compilation)",
    )  # fmt: skip
    parser.add_argument(
        "--compile-decode", action="store_true",
        help="decode from static KV caches compiled into CUDA graphs (faster tokens/s on a GPU; each new "
        "cache length pays a compilation)",
    )  # fmt: skip
    return parser.parse_args(argv)


def result_record(result: QAResult) -> dict:
    """A JSON-ready summary: both answers, their metrics and the per-group allocation."""
    selection = result.selection
    return {
        "model": result.model_id,
        "question": result.question,
        "config": asdict(result.config),
        "vcast": {"answer": result.pruned.text, "metrics": asdict(result.pruned.metrics)},
        "full": None if result.full is None else {"answer": result.full.text, "metrics": asdict(result.full.metrics)},
        "grid_thw": list(result.grid),
        "group_times_s": [round(t, 3) for t in result.group_times],
        "budgets": selection.budgets.tolist(),
        "curvature": [round(c, 5) for c in selection.curvature.tolist()],
    }


def _print_metrics(result: QAResult) -> None:
    passes = [("V-CAST", result.pruned)] + ([("unpruned", result.full)] if result.full else [])
    header = f"{'':24}" + "".join(f"{name:>12}" for name, _ in passes) + ("       ratio" if result.full else "")
    print(header)
    for label, field, fmt in _METRIC_ROWS:
        values = [getattr(p.metrics, field) for _, p in passes]
        row = f"{label:24}" + "".join(f"{fmt.format(v):>12}" for v in values)
        if result.full and values[1]:
            row += f"{values[0] / values[1]:>12.2f}"
        print(row)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = VCastConfig(retain_ratio=args.retain, temperature=args.temperature, allocation=args.allocation)
        if args.frames is not None and args.frames < 2:
            raise ValueError(f"--frames must be at least 2, got {args.frames}")
        qa = VideoQA.from_pretrained(args.model, compile_vision=args.compile_vision, compile_decode=args.compile_decode)
        if qa.is_tiny and not args.json:
            print("note: the tiny offline model has random weights; its answers are noise.", file=sys.stderr)

        def show(name: str, piece: str) -> None:
            if not args.json:
                print(piece, end="", flush=True)

        if not args.json:
            print("V-CAST answer: ", end="", flush=True)
        started = {"full": False}

        def on_token(name: str, piece: str) -> None:
            if name == "full" and not started["full"] and not args.json:
                started["full"] = True
                print("\nunpruned answer: ", end="", flush=True)
            show(name, piece)

        result = qa.answer(args.video, args.question, config=config, compare=not args.no_compare,
                           max_new_tokens=args.max_new_tokens, num_frames=args.frames, on_token=on_token)  # fmt: skip
    except (VideoError, ModelError, ValueError) as err:
        print(f"\nerror: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({**result_record(result), "compiled_decode": qa.decode_caches is not None}, indent=2))
    else:
        print("\n")
        _print_metrics(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
