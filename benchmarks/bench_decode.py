"""Time `vcast.read_video` taking 32 frames from a 60 s 1280x720 H.264 clip, per backend.

    python benchmarks/bench_decode.py [--runs 7] [--workdir out/bench_decode] [--markdown docs/_decode_bench.md]

The clips are generated here (once, cached in --workdir) with libx264 (CRF 23, preset veryfast,
30 fps): moving shapes and a clock over either a textured background panning like a hand-held
camera (costly to decode, like camera footage) or a flat one (cheap, like slides or animation).
Two keyframe spacings each, because seeking cost depends on it: x264's default (every 250 frames,
8.3 s) and 1 s (30 frames, what phones write). Each row is the median (and min) wall time of
`read_video(path, num_frames=32, backend=...)` over --runs runs after one warm-up: probing,
decoding, RGB conversion, everything a caller waits for. Frames are checked to be identical across
backends. For reference: the plain decord call (`VideoReader(path).get_batch(indices)`), and
decoding the keyframe nearest to each target instead of the target (fast, but not the frames asked
for).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import date
from functools import partial
from pathlib import Path

import av
import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from vcast.video import read_video, sample_indices

WIDTH, HEIGHT, FPS, SECONDS, NUM_FRAMES = 1280, 720, 30, 60, 32
# (content, keyframe interval in frames or None for x264's default of 250)
CLIPS = [("textured", None), ("textured", 30), ("flat", None), ("flat", 30)]


def _textured_frame(i: int, texture: np.ndarray) -> np.ndarray:
    """A hand-held pan over a blurred-noise texture (costly to decode, like camera footage)."""
    x, y = int(400 + 380 * np.sin(i / 90)), int(200 + 180 * np.cos(i / 70))
    return texture[y : y + HEIGHT, x : x + WIDTH].copy()


def _flat_frame(i: int) -> np.ndarray:
    """A flat background whose colour changes every 5 s (cheap to decode, like slides or animation)."""
    frame = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    frame[:] = ((i // 150) * 40 % 255, 60, 90)
    return frame


def make_clip(path: Path, content: str, gop: int | None) -> Path:
    """Write a 60 s benchmark clip (deterministic: fixed seed, fixed encoder settings)."""
    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.integers(0, 256, (HEIGHT + 400, WIDTH + 800, 3), dtype=np.uint8), (0, 0), 3)
    options = {"crf": "23", "preset": "veryfast", "threads": "2"}
    if gop is not None:
        options.update(g=str(gop), keyint_min=str(gop))
    tmp = path.with_suffix(".part.mp4")
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt, stream.options = WIDTH, HEIGHT, "yuv420p", options
        for i in range(SECONDS * FPS):
            frame = _textured_frame(i, texture) if content == "textured" else _flat_frame(i)
            cx = int((i * 9) % (WIDTH + 200)) - 100
            cv2.circle(frame, (cx, 360 + int(120 * np.sin(i / 20))), 70, (230, 60, 40), -1)
            cv2.rectangle(frame, (900 - i % 600, 120), (1060 - i % 600, 260), (40, 200, 90), -1)
            cv2.putText(frame, f"{i // FPS:02d}.{i % FPS:02d}", (40, 680), cv2.FONT_HERSHEY_SIMPLEX, 2, (255,) * 3, 4)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    tmp.rename(path)
    return path


def nearest_keyframes(path: Path) -> np.ndarray:
    """Not exact, for reference: for each target, decode the keyframe nearest to it (a seek, one packet)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        keys = np.array(sorted(p.pts for p in container.demux(stream) if p.is_keyframe and p.pts is not None))
        total, time_base = stream.frames, float(stream.time_base)
        targets_s = sample_indices(total, SECONDS, num_frames=NUM_FRAMES, max_frames=256) * (SECONDS / total)
        chosen = keys[np.abs(keys[None, :] * time_base - targets_s[:, None]).argmin(axis=1)]
        decoder = stream.codec_context
        frames = []
        for pts in chosen:
            container.seek(int(pts), stream=stream, backward=True)
            decoder.flush_buffers()
            packet = next(p for p in container.demux(stream) if p.pts == pts)
            decoded = decoder.decode(packet) + decoder.decode(None)  # drain: no reordering delay to wait out
            frames.append(decoded[0].to_ndarray(format="rgb24"))
    return np.stack(frames)


def decord_get_batch(path: Path) -> np.ndarray:
    import decord

    reader = decord.VideoReader(str(path))
    indices = sample_indices(len(reader), len(reader) / reader.get_avg_fps(), num_frames=NUM_FRAMES, max_frames=256)
    return reader.get_batch(indices.tolist()).asnumpy()


def time_interleaved(methods: dict[str, Callable[[], object]], runs: int) -> dict[str, tuple[float, float]]:
    """Median and min seconds per method, timed in rotating order, so load from other processes on a
    shared machine falls on every method alike."""
    for fn in methods.values():
        fn()  # warm-up: page cache, lazy imports
    times: dict[str, list[float]] = {name: [] for name in methods}
    names = list(methods)
    for run in range(runs):
        for name in names[run % len(names) :] + names[: run % len(names)]:
            start = time.perf_counter()
            methods[name]()
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(t), min(t)) for name, t in times.items()}


def versions() -> dict[str, str]:
    import decord

    return {
        "python": platform.python_version(),
        "av (PyAV)": av.__version__,
        "FFmpeg libavcodec (PyAV)": ".".join(map(str, av.library_versions["libavcodec"])),
        "decord2": decord.__version__,
        "numpy": np.__version__,
    }


def machine() -> str:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):  # no /proc/cpuinfo (not Linux): keep platform's name
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0))
    # Other processes share the cores: the load says how quiet the machine was.
    load = os.getloadavg()[0]
    return f"{model}, {cores} cores available, {platform.system()} {platform.release()}, load {load:.1f} at start"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=Path("out/bench_decode"))
    parser.add_argument("--markdown", type=Path, help="write the results as a markdown fragment here")
    parser.add_argument("--json", type=Path, help="write the raw results as JSON here")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)

    rows = []
    for content, gop in CLIPS:
        path = args.workdir / f"bench_{content}_{WIDTH}x{HEIGHT}_{SECONDS}s_gop{gop or 'default'}.mp4"
        if not path.exists():
            print(f"generating {path} ...", flush=True)
            make_clip(path, content, gop)
        clip_name = f"{content}, {path.stat().st_size * 8 / SECONDS / 1e6:.1f} Mbit/s"
        gop_name = f"{gop or 250} frames" + (" (x264 default)" if gop is None else "")
        reference = read_video(path, num_frames=NUM_FRAMES, backend="pyav")
        assert reference.frames.shape == (NUM_FRAMES, HEIGHT, WIDTH, 3)
        methods, diffs = {}, {}
        for backend in ("auto", "decord", "pyav"):
            clip = read_video(path, num_frames=NUM_FRAMES, backend=backend)
            assert np.array_equal(clip.indices, reference.indices)
            name = f"`read_video(backend={backend!r})`" + (f" (used {clip.backend})" if backend == "auto" else "")
            methods[name] = partial(read_video, path, num_frames=NUM_FRAMES, backend=backend)
            diffs[name] = int(np.abs(clip.frames.astype(int) - reference.frames).max())
        methods["decord `get_batch` (plain)"] = partial(decord_get_batch, path)
        methods["nearest keyframes (not the asked frames)"] = partial(nearest_keyframes, path)
        for name, (median, best) in time_interleaved(methods, args.runs).items():
            rows.append({"clip": clip_name, "gop": gop_name, "method": name, "median_s": median, "min_s": best,
                         "max_pixel_diff": diffs.get(name, "")})  # fmt: skip
            print(rows[-1], flush=True)

    info = {"machine": machine(), "versions": versions(), "date": date.today().isoformat(), "runs": args.runs}
    if args.json:
        args.json.write_text(json.dumps({"info": info, "rows": rows}, indent=2))
    table = [
        "| clip | keyframe every | method | median (s) | min (s) | max pixel diff vs PyAV |",
        "|---|---|---|---:|---:|---:|",
    ]
    for row in rows:
        cells = [row["clip"], row["gop"], row["method"], f"{row['median_s']:.3f}", f"{row['min_s']:.3f}"]
        cells.append(row["max_pixel_diff"])
        table.append("| " + " | ".join(map(str, cells)) + " |")
    fragment = "\n".join(
        [
            f"### Video decoding: {NUM_FRAMES} frames from a {SECONDS} s {WIDTH}x{HEIGHT} H.264 clip",
            "",
            *table,
            "",
            f"Machine: {info['machine']}. Date: {info['date']}. Median and min of {args.runs} runs after one "
            "warm-up, methods interleaved.",
            "Versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()) + ".",
            f"Command: `python benchmarks/bench_decode.py {' '.join(sys.argv[1:])}`.",
            "",
        ]
    )
    print(fragment)
    if args.markdown:
        args.markdown.write_text(fragment)


if __name__ == "__main__":
    main()
