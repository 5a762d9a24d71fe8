"""Why one pass runs slower than another in the same process: the vision tower and decoding, pass by pass.

    python benchmarks/profile_passes.py [--model 8B] [--videos 32x448x448,128x352x640] [--rounds 3]

Runs V-CAST and unpruned passes through VideoQA's public steps in several orders and states and, for
each pass, records the vision tower's time, each decode step's time (from a streamer's timestamps:
median and slowest), the caching allocator's cudaMalloc/cudaFree calls during the vision tower and
during generation, and the memory held before the pass. Conditions:
- "answer": `VideoQA.answer` as the app calls it (V-CAST, then unpruned, from one vision pass);
- "reversed": one vision pass, the unpruned pass first, then V-CAST;
- "fresh": each pass after its own vision pass and `torch.cuda.empty_cache()`;
- "vision-after": the vision tower alone, after nothing, after an unpruned and after a V-CAST generation.
Run once plain and once with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to see the allocator's share.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks.bench import synthetic_clip
from vcast import VCastConfig
from vcast.pipeline import VideoQA


class StepClock:
    """A generate() streamer stamping every new token (after the prompt)."""

    def __init__(self):
        self.stamps: list[float] = []
        self.calls = 0

    def put(self, value):
        self.calls += 1
        if self.calls > 1:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.stamps.append(time.perf_counter())

    def end(self):
        """Nothing to flush."""


def _calls() -> dict[str, int]:
    stats = torch.cuda.memory_stats() if torch.cuda.is_available() else {}
    return {"malloc": stats.get("num_device_alloc", 0), "free": stats.get("num_device_free", 0)}


def _delta(before: dict, after: dict) -> dict:
    return {k: after[k] - before[k] for k in before}


def timed_encode(qa: VideoQA, prompt) -> tuple[object, dict]:
    before = _calls()
    prepared = qa.encode(prompt)
    return prepared, {"vision_ms": prepared.vision_ms, "vision_calls": _delta(before, _calls())}


def timed_generate(qa: VideoQA, prepared, selection, tokens: int) -> dict:
    inputs = qa.pass_inputs(prepared, selection)
    clock = StepClock()
    held = torch.cuda.memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0
    before = _calls()
    with torch.inference_mode():
        qa.model.generate(**inputs.generate_kwargs(), max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                          streamer=clock)  # fmt: skip
    steps = [1000 * (b - a) for a, b in zip(clock.stamps, clock.stamps[1:], strict=False)]
    return {"method": "full" if selection is None else "vcast", "held_mb": held,
            "decode_tok_s": 1000 / statistics.mean(steps), "step_ms_median": statistics.median(steps),
            "step_ms_max": max(steps), "generate_calls": _delta(before, _calls())}  # fmt: skip


def run(qa: VideoQA, spec: str, condition: str, rounds: int, tokens: int) -> list[dict]:
    frames, height, width = (int(v) for v in spec.split("x"))
    prompt = qa.prompt(synthetic_clip(frames, height, width), "Describe what happens in this video in detail.")
    config = VCastConfig()
    rows = []
    for r in range(rounds + 1):  # round 0 warms up
        if condition in ("answer", "reversed"):
            prepared, vision = timed_encode(qa, prompt)
            selection = qa.select(prepared, "vcast", config=config)
            order = [selection, None] if condition == "answer" else [None, selection]
            passes = [{**vision, **timed_generate(qa, prepared, s, tokens)} for s in order]
            del prepared
        elif condition == "fresh":
            passes = []
            for method in ("vcast", "full"):
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                prepared, vision = timed_encode(qa, prompt)
                selection = qa.select(prepared, "vcast", config=config) if method == "vcast" else None
                passes.append({**vision, **timed_generate(qa, prepared, selection, tokens)})
                del prepared
        else:  # vision-after
            passes = []
            for after in ("nothing", "full", "vcast"):
                if after != "nothing":
                    prepared = qa.encode(prompt)
                    selection = qa.select(prepared, "vcast", config=config) if after == "vcast" else None
                    timed_generate(qa, prepared, selection, tokens)
                    del prepared
                _, vision = timed_encode(qa, prompt)
                passes.append({"method": f"vision after {after}", **vision})
        if r:
            for p in passes:
                rows.append({"video": spec, "condition": condition, "round": r, **p})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--model", default="8B")
    parser.add_argument("--videos", default="32x448x448,128x352x640")
    parser.add_argument("--conditions", default="answer,reversed,fresh,vision-after")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--out", default="results/profile_passes.jsonl")
    args = parser.parse_args(argv)
    qa = VideoQA.tiny() if args.model == "tiny" else VideoQA.random_weights(args.model)  # tiny: a CPU smoke test
    rows = []
    for spec in args.videos.split(","):
        for condition in args.conditions.split(","):
            rows.extend(run(qa, spec, condition, args.rounds, args.new_tokens))
    alloc = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as handle:
        for row in rows:
            gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
            handle.write(json.dumps({**row, "alloc_conf": alloc, "gpu": gpu}) + "\n")
    summary: dict = {}
    for row in rows:
        key = (row["video"], row["condition"], row["method"])
        summary.setdefault(key, []).append(row)
    print(f"| video | condition | pass | vision ms | decode tok/s | step ms max | mallocs in generate | "
          f"({alloc or 'default allocator'})")
    for (video, condition, method), group in summary.items():
        vision = statistics.median(g["vision_ms"] for g in group)
        tok = statistics.median(g.get("decode_tok_s", 0) for g in group)
        worst = max(g.get("step_ms_max", 0) for g in group)
        mallocs = statistics.median(g.get("generate_calls", {}).get("malloc", 0) for g in group)
        print(f"| {video} | {condition} | {method} | {vision:.1f} | {tok:.1f} | {worst:.1f} | {mallocs:.0f} |")


if __name__ == "__main__":
    main()
