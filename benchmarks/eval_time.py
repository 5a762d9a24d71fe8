"""How long `python -m vcast.eval` takes per item on this GPU: a synthetic benchmark on random-weight real shapes.

    python benchmarks/eval_time.py [--model random-weights:8B] [--items 12] [--seconds 60] [--frames 64]
                                   [--methods vcast,evs,vidcom2] [--out results/eval_time]

Writes `--clips` synthetic H.264 clips (1280x720, a keyframe every 2 s) and a manifest of `--items` four-option
questions over them, then runs the evaluation runner on it. The runner's summary.json reports the mean seconds
per item and the hours per 100 items (every pass: unpruned and each method). Accuracy of random weights is
meaningless and is not what this measures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks.e2e import write_clip
from vcast.eval.__main__ import main as eval_main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--model", default="random-weights:8B")
    parser.add_argument("--items", type=int, default=12)
    parser.add_argument("--clips", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--methods", default="vcast,evs,vidcom2")
    parser.add_argument("--out", default="results/eval_time")
    args = parser.parse_args(argv)
    out = Path(args.out)
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    for c in range(args.clips):
        if not (data / f"clip{c}.mp4").is_file():
            write_clip(data / f"clip{c}.mp4", args.seconds + c, 1280, 720)
    lines = [
        {"video": f"clip{i % args.clips}.mp4", "question": f"Question {i}: what colour is the moving box at the end?",
         "options": ["red", "green", "blue", "white"], "answer": "ABCD"[i % 4], "task": f"task{i % 2}",
         "duration": args.seconds}
        for i in range(args.items)
    ]  # fmt: skip
    manifest = data / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    eval_main(["--data", str(manifest), "--model", args.model, "--methods", args.methods, "--frames",
               str(args.frames), "--out", str(out / "run"), "--no-png"])  # fmt: skip
    summary = json.loads((out / "run" / "summary.json").read_text())
    print(json.dumps({"items": summary.get("items"), "time": summary.get("time")}, indent=1))


if __name__ == "__main__":
    main()
