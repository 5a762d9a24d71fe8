"""What a user feels: from the uploaded file to the first token, stage by stage, per method.

    python benchmarks/e2e.py [--model 8B] [--seconds 60] [--size 1280x720] [--frames 32] [--methods vcast,evs]
                             [--runs 3] [--out results/e2e.json]

Writes a synthetic H.264 clip (moving shapes, a keyframe every 2 s, as phone and screen recordings have),
then for each run: `read_video` (decoding the sampled frames on the CPU), `VideoQA.prompt` (the processor),
`VideoQA.encode` (vision tower and positions), and per method the selection and `VideoQA.generate` up to its
first token and to its last (`--max-new-tokens`). Request to first token = decode + processor + vision +
selection + prefill of the first method. The model runs in the library's default settings; `--model tiny`
is a CPU smoke test of the script.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import av
import numpy as np
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks.bench import PREFILL_SETTINGS, VISION_SETTINGS, served_model
from vcast import VCastConfig, read_video
from vcast.pipeline import VideoQA, check_methods


def write_clip(path: Path, seconds: float, width: int, height: int, fps: int = 30, gop_s: float = 2.0) -> Path:
    """An H.264 clip of moving coloured boxes on a gradient, `gop_s` seconds between keyframes."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"g": str(int(fps * gop_s)), "preset": "veryfast", "crf": "23"}
        yy, xx = np.mgrid[0:height, 0:width]
        base = np.stack([xx * 255 // width, yy * 255 // height, np.full_like(xx, 90)], -1).astype(np.uint8)
        for i in range(int(seconds * fps)):
            frame = base.copy()
            x = (i * 7) % max(1, width - 160)
            frame[100:260, x : x + 160] = ((i // fps * 40) % 255, 200, 60)  # the colour changes each second
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _sync(qa: VideoQA) -> None:
    if qa.device.type == "cuda":
        torch.cuda.synchronize()


def one_request(qa: VideoQA, path: Path, frames: int, methods: list[str], tokens: int) -> dict:
    """Stage times (ms) of one request, as the app runs it: decode, processor, vision, then each method."""
    stages: dict[str, float] = {}
    start = time.perf_counter()
    clip = read_video(path, num_frames=frames)
    stages["decode"] = (time.perf_counter() - start) * 1000
    mark = time.perf_counter()
    prompt = qa.prompt(clip, "What changes in this video, and when?")
    stages["processor"] = (time.perf_counter() - mark) * 1000
    mark = time.perf_counter()
    prepared = qa.encode(prompt)
    _sync(qa)
    stages["vision"] = (time.perf_counter() - mark) * 1000
    per_method = {}
    for i, method in enumerate(methods):
        mark = time.perf_counter()
        selection = qa.select(prepared, method, config=VCastConfig())
        _sync(qa)
        selection_ms = (time.perf_counter() - mark) * 1000
        result = qa.generate(prepared, selection, max_new_tokens=tokens, min_new_tokens=tokens,
                             selection_ms=selection_ms)  # fmt: skip
        m = result.metrics
        per_method[method] = {"selection_ms": selection_ms, "prefill_ms": m.prefill_ms, "total_ms": m.total_ms,
                              "decode_tokens_per_s": m.decode_tokens_per_s}  # fmt: skip
        if i == 0:
            stages["selection"], stages["prefill"] = selection_ms, result.metrics.prefill_ms
            stages["request_to_first_token"] = (time.perf_counter() - start) * 1000 - (
                result.metrics.total_ms - result.metrics.ttft_ms
            )
    full = qa.generate(prepared, None, max_new_tokens=tokens, min_new_tokens=tokens)
    per_method["full"] = {"prefill_ms": full.metrics.prefill_ms, "total_ms": full.metrics.total_ms,
                          "decode_tokens_per_s": full.metrics.decode_tokens_per_s}  # fmt: skip
    # A user's total for one method's answer: decoding and processing the upload plus that pass.
    for entry in per_method.values():
        entry["with_upload_ms"] = stages["decode"] + stages["processor"] + entry["total_ms"]
    return {"stages": stages, "methods": per_method}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--model", default="8B")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT of the clip")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--methods", default="vcast")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--vision", choices=VISION_SETTINGS, default="app",
                        help="the vision tower as the app serves it (default), eager, or compiled")
    parser.add_argument("--prefill", choices=PREFILL_SETTINGS, default="app",
                        help="the LLM's decoder layers as the app serves them (default: compiled for the prefill and "
                        "the decode steps, dense Qwen3-VL on a GPU), prefill-only, or eager")  # fmt: skip
    parser.add_argument("--out", default="results/e2e.json")
    args = parser.parse_args(argv)
    methods = check_methods(args.methods.split(","))
    width, height = (int(v) for v in args.size.split("x"))
    qa = VideoQA.tiny() if args.model.startswith("tiny") else served_model(args.model, vision=args.vision,
                                                                                       prefill=args.prefill)
    with tempfile.TemporaryDirectory() as folder:
        path = write_clip(Path(folder) / "clip.mp4", args.seconds, width, height)
        one_request(qa, path, args.frames, methods, 4)  # warm-up
        runs = [one_request(qa, path, args.frames, methods, args.max_new_tokens) for _ in range(args.runs)]
    stages = {k: statistics.median(r["stages"][k] for r in runs) for k in runs[0]["stages"]}
    total = stages["request_to_first_token"]
    print(f"request to first token: {total:.0f} ms (median of {args.runs})")
    for name in ("decode", "processor", "vision", "selection", "prefill"):
        print(f"  {name:10s} {stages[name]:8.1f} ms  {100 * stages[name] / total:5.1f}%")
    for method in [*methods, "full"]:
        values = {k: statistics.median(r["methods"][method][k] for r in runs) for k in runs[0]["methods"][method]}
        print(f"{method:8s} " + "  ".join(f"{k} {v:.1f}" for k, v in values.items()))
    meta = {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "date": date.today().isoformat(), "model": qa.model_id,
            "command": "python benchmarks/e2e.py " + " ".join(sys.argv[1:] if argv is None else argv)}  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "median_stages_ms": stages, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
