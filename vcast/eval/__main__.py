"""Command line: score the unpruned model and pruning methods on a video QA benchmark.

python -m vcast.eval --data DIR_OR_MANIFEST --model ID --methods vcast,evs --retain 0.25 --frames 64
    [--subset N --seed S] --out results/eval/NAME
torchrun --nproc-per-node K -m vcast.eval ...   (one model copy per process; results merged at the end)
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..methods import METHODS
from ..pipeline import DEFAULT_MODEL_ID, ModelError
from ..video import VideoError
from .dist import rank_from_env
from .report import summary_markdown
from .runner import EvalError, EvalSettings, run
from .stats import DEFAULT_RESAMPLES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vcast.eval", description=__doc__.strip().splitlines()[0])
    parser.add_argument(
        "--data", required=True,
        help="a manifest (.jsonl) or a Video-MME / MVBench folder (README: 'Reproduce the accuracy claim')",
    )
    parser.add_argument("--out", required=True, help="results folder; rerun with the same --out to resume")
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL_ID,
        help=f"checkpoint id or folder, 'tiny' (offline random model) or 'random-weights:8B' "
        f"(real shapes, random weights: costs only); default {DEFAULT_MODEL_ID}",
    )
    parser.add_argument(
        "--methods",
        default="vcast",
        help=f"comma-separated methods scored against the unpruned pass: {', '.join(METHODS)}",
    )
    parser.add_argument("--retain", type=float, default=0.25, help="share of visual tokens kept, in (0, 1]")
    parser.add_argument("--frames", type=int, default=64, help="frames sampled per video (even)")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="answer length limit (lmms-eval uses 16)")
    parser.add_argument("--subset", type=int, default=None, help="score a stratified sample of N items")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subset and of the bootstrap")
    parser.add_argument("--retry-errors", action="store_true", help="redo passes that failed in earlier runs")
    parser.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES, help="bootstrap resamples")
    parser.add_argument("--no-png", action="store_true", help="skip summary.png (summary.html is always written)")
    parser.add_argument("--dtype", default="auto", help="model dtype for transformers (auto, bfloat16, ...)")
    parser.add_argument(
        "--gpus-per-rank",
        type=int,
        default=None,
        help="spread each process's model over this many GPUs (e.g. 2 for 32B); default: one GPU",
    )
    parser.add_argument(
        "--dist-timeout-h", type=float, default=48.0, help="hours a finished process waits for the slowest one"
    )
    parser.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)  # tests: a killed run
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> EvalSettings:
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    return EvalSettings(
        data=args.data,
        out=args.out,
        model=args.model,
        methods=methods,
        retain=args.retain,
        frames=args.frames,
        max_new_tokens=args.max_new_tokens,
        subset=args.subset,
        seed=args.seed,
        retry_errors=args.retry_errors,
        resamples=args.resamples,
        png=not args.no_png,
        dtype=args.dtype,
        gpus_per_rank=args.gpus_per_rank,
        dist_timeout_h=args.dist_timeout_h,
        stop_after=args.stop_after,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rank = rank_from_env()
    prefix = f"[rank {rank.rank}] " if rank.distributed else ""
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s")
    logging.getLogger("vcast").setLevel(logging.INFO)  # ours at INFO; libraries' (kaleido: per tab) at WARNING
    try:
        summary = run(settings_from_args(args))
    except (EvalError, ModelError, VideoError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if summary is not None:
        print(summary_markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
