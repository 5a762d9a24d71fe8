"""The app-level measurements of docs/BENCHMARKS.md in one process, sharing one served model (one start-up):

    python benchmarks/answer_suite.py [--model 8B] [--out results]

runs, in this order, with the app's defaults:
1. `benchmarks/first_request.py --model MODEL` (first right after the start-up warm-up, as in a new server: the first
   video of each new size against its second);
2. `benchmarks/gpu_answer.py --models MODEL --frames 32,128 --size 720x1280 --max-new-tokens 64 --runs 2`
   (the whole 64-token answer, V-CAST against unpruned), JSON in OUT/answer.json;
3. `benchmarks/e2e.py --model MODEL --seconds 60 --frames 32 --methods vcast --runs 3` (from the upload of a 60 s
   720p clip to the first token), JSON in OUT/e2e.json.
Each script run on its own builds and warms up its own model (minutes on a fresh GPU machine); here the later ones
reuse the first one's (`benchmarks.bench.SHARED_MODELS`). Bench invocations (`python -m vcast.bench`) stay separate
processes: their verdicts are meant to hold across processes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks import bench, e2e, first_request, gpu_answer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--model", default="8B")
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args(argv)
    bench.SHARED_MODELS = {}
    try:
        first_request.main(["--model", args.model])
        gpu_answer.main(["--models", args.model, "--frames", "32,128", "--size", "720x1280", "--max-new-tokens", "64",
                         "--runs", "2", "--out", str(args.out / "answer.json")])  # fmt: skip
        e2e.main(["--model", args.model, "--seconds", "60", "--frames", "32", "--methods", "vcast", "--runs", "3",
                  "--out", str(args.out / "e2e.json")])  # fmt: skip
    finally:
        bench.SHARED_MODELS = None


if __name__ == "__main__":
    main()
