"""Command line: answer a question about a video with V-CAST (and other methods) and without, with the costs.

python -m vcast VIDEO "QUESTION" [--model ID] [--methods vcast,evs] [--retain 0.25] [--frames N]
                                 [--no-compare] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import warnings
from collections.abc import Iterator

from .catalogue import default_model_id, gpu_memory_gib
from .config import ALLOCATIONS, VCastConfig
from .methods import METHODS
from .pipeline import DEFAULT_MAX_NEW_TOKENS, ModelError, VideoQA, check_methods, hub_reachable
from .report import cut_short, label, metric_text, result_record
from .video import VideoError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vcast", description=__doc__.strip().splitlines()[0])
    parser.add_argument("video", help="path to a video file")
    parser.add_argument("question", help="what to ask about the video")
    parser.add_argument("--model", default=None,
                        help="Hugging Face id or local folder of a supported checkpoint (Qwen3-VL, Qwen2.5-VL, "
                        "Qwen3.5, LLaVA-OneVision / LLaVA-Video), or tiny / tiny-<family> for the offline random "
                        "models (default: Qwen3-VL-8B on a GPU with 24 GiB, else Qwen3-VL-2B; tiny without the hub)")
    parser.add_argument("--methods", default="vcast",
                        help=f"comma-separated methods to run beside unpruned: {', '.join(METHODS)} (default vcast)")
    parser.add_argument("--retain", type=float, default=0.25, help="share of visual tokens kept, in (0, 1]")
    parser.add_argument("--frames", type=int, default=None, help="frames to sample (even; default: 2 per second)")
    parser.add_argument("--temperature", type=float, default=0.7, help="softmax temperature of V-CAST's allocation")
    parser.add_argument("--allocation", choices=ALLOCATIONS, default="curvature")
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument("--no-compare", action="store_true", help="skip the unpruned pass")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--compile-vision", action="store_true",
                        help="GPU only: torch.compile the vision tower (the first video pays a compilation)")
    parser.add_argument("--compile-prefill", action="store_true",
                        help="GPU only: torch.compile the LLM's decoder layers for the prefill and the recorded "
                        "decode steps (dense Qwen3-VL; the first answer pays a compilation)")  # fmt: skip
    parser.add_argument("--compile-decode", action="store_true",
                        help="GPU only: torch.compile the decode step instead of recording it (compiles per length)")
    return parser.parse_args(argv)


@contextlib.contextmanager
def held_warnings() -> Iterator[list[str]]:
    """Python warnings and library log lines raised inside, kept for later instead of printed: printed in
    the middle of a streamed answer, they would cut it in two."""
    held: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            held.append(record.getMessage())

    handler, loggers = Keep(logging.WARNING), [logging.getLogger("transformers"), logging.getLogger("vcast")]
    before = [(lg.handlers[:], lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.handlers, lg.propagate = [handler], False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        try:
            yield held
        finally:
            held.extend(str(w.message) for w in caught)
            for lg, (handlers, propagate) in zip(loggers, before, strict=True):
                lg.handlers, lg.propagate = handlers, propagate


def _model_options(args: argparse.Namespace, on_gpu: bool) -> tuple[dict, list[str]]:
    """VideoQA options from the flags, and notes for the user (compile flags do nothing useful on a CPU)."""
    notes = []
    if (args.compile_vision or args.compile_prefill or args.compile_decode) and not on_gpu:
        notes.append("--compile-vision / --compile-prefill / --compile-decode speed up a GPU only; without one they "
                     "are ignored.")  # fmt: skip
        return {}, notes
    return {"compile_vision": args.compile_vision, "compile_prefill": args.compile_prefill,
            "compile_decode": args.compile_decode}, notes  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with held_warnings() as held:
        code = _run(args)
    for line in dict.fromkeys(held):
        print(f"warning: {line}", file=sys.stderr)
    return code


def _run(args: argparse.Namespace) -> int:
    out = sys.stdout
    try:
        config = VCastConfig(retain_ratio=args.retain, temperature=args.temperature, allocation=args.allocation)
        methods = check_methods(args.methods.split(","))
        if args.frames is not None and args.frames < 2:
            raise ValueError(f"--frames must be at least 2, got {args.frames}")
        gpu_gib = gpu_memory_gib()
        model_id = args.model or (default_model_id(gpu_gib) if hub_reachable() else "tiny")
        options, notes = _model_options(args, gpu_gib > 0)
        qa = VideoQA.from_pretrained(model_id, **options)
        if qa.is_tiny:
            notes.append(f"{qa.model_id} has random weights: its answers are noise, its costs say nothing of pruning.")
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        current = [None]

        def on_token(name: str, piece: str) -> None:
            if args.json:
                return
            if name != current[0]:
                out.write(f"{'' if current[0] is None else chr(10)}{label(name)} answer: ")
                current[0] = name
            out.write(piece)
            out.flush()

        result = qa.answer(args.video, args.question, config=config, methods=methods, compare=not args.no_compare,
                           max_new_tokens=args.max_new_tokens, num_frames=args.frames, on_token=on_token)  # fmt: skip
    except (VideoError, ModelError, ValueError) as err:
        print(f"\nerror: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({**result_record(result), "compiled_decode": qa.decode_caches is not None,
                          "compiled_prefill": qa.prefill_compiled}, indent=2))
        return 0
    print("\n")
    print(metric_text(result, timings=not qa.is_tiny))
    if qa.is_tiny:
        print("(timings of a tiny model on a CPU mean nothing: the table shows tokens and memory only)")
    for sentence in cut_short(result):
        print(sentence)
    return 0


if __name__ == "__main__":
    sys.exit(main())
