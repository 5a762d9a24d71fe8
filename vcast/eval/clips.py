"""The frames of one benchmark item: a whole video, a part of one (start/end), or a folder of frames.

Whole videos go through `vcast.read_video` with limits fit for benchmarks (Video-MME's long videos last
an hour; no decode-time budget). MVBench asks some questions about a part of a video (its `bound` tasks)
or about a folder of frames (TVQA, 3 frames per second); those are sampled here the same way:
`num_frames` evenly spaced times over the part, each taking the frame shown at that time. Errors are
`VideoError`s.
"""

from __future__ import annotations

import math
from pathlib import Path

import av
import cv2
import numpy as np

from ..video import DEFAULT_MAX_SIDE_PX, VideoClip, VideoError, read_video
from .manifest import Item

MAX_DURATION_S = 4 * 3600.0
MAX_FILE_MB = 50_000.0
DEFAULT_FOLDER_FPS = 3.0  # MVBench's TVQA frames (tvqa/frames_fps3_hq)
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def _fit(rgb: np.ndarray, max_side_px: int) -> np.ndarray:
    """Downscale (H, W, 3) uint8 so that the longer side is at most max_side_px."""
    height, width = rgb.shape[:2]
    scale = max_side_px / max(height, width)
    if scale >= 1.0:
        return rgb
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def _clip(frames: list[np.ndarray], times: list[float], fps: float, total: int, backend: str) -> VideoClip:
    stacked = np.stack(frames)  # (F, H, W, 3) uint8
    times_arr = np.asarray(times, dtype=np.float64)
    duration = float(times_arr[-1] - times_arr[0]) + 1.0 / fps
    return VideoClip(
        frames=stacked,
        timestamps=times_arr - times_arr[0],
        indices=np.round(times_arr * fps).astype(np.int64),
        fps=fps,
        duration=duration,
        total_frames=total,
        backend=backend,
        source_size=stacked.shape[1:3],
    )


def read_window(path: Path, start: float, end: float | None, num_frames: int, *, max_side_px: int) -> VideoClip:
    """num_frames frames at evenly spaced times in [start, end] seconds of a video file (one decode
    pass from the keyframe before start). Display rotation is not applied (MVBench's sources have none)."""
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            fps = float(stream.average_rate or stream.guessed_rate or 30)
            known = float(container.duration) / av.time_base if container.duration else math.inf
            stop = min(end if end is not None else math.inf, known)
            if start >= stop:
                raise VideoError(
                    f"{path.name}: the part from {start:.1f} s starts after the video ends ({known:.1f} s)."
                )
            targets = np.linspace(start, stop - 0.5 / fps, num_frames) if math.isfinite(stop) else None
            if targets is None:
                raise VideoError(f"{path.name}: the video's length is unknown; give 'end' for the part to sample.")
            origin = stream.start_time or 0  # times count from the first frame, as read_video's do
            if start > 0 and stream.time_base:
                container.seek(origin + int(start / stream.time_base), stream=stream, backward=True)
            frames, times = [], []
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                t = float((frame.pts - origin) * stream.time_base)
                while len(frames) < num_frames and targets[len(frames)] <= t + 0.5 / fps:
                    frames.append(_fit(frame.to_ndarray(format="rgb24"), max_side_px))
                    times.append(t)
                if len(frames) == num_frames:
                    break
    except (av.error.FFmpegError, IndexError, OSError) as err:
        raise VideoError(f"{path.name} could not be read as a video ({type(err).__name__}).") from err
    if not frames:
        raise VideoError(f"{path.name}: no frames between {start:.1f} s and {stop:.1f} s.")
    while len(frames) < num_frames:  # the stream ended early: hold its last frame
        frames.append(frames[-1])
        times.append(times[-1])
    return _clip(frames, times, fps, total=max(1, round((stop - start) * fps)), backend="pyav")


def read_frame_folder(
    folder: Path, num_frames: int, *, fps: float, start: float | None, end: float | None, max_side_px: int
) -> VideoClip:
    """num_frames images spaced evenly over a folder of frames (sorted by name; frame i at i / fps s)."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
    if not files:
        raise VideoError(f"the folder {folder.name} holds no frames ({', '.join(sorted(_IMAGE_SUFFIXES))}).")
    first = min(len(files) - 1, max(0, round((start or 0.0) * fps)))
    last = len(files) - 1 if end is None else min(len(files) - 1, max(first, round(end * fps)))
    indices = np.linspace(first, last, num_frames).round().astype(np.int64)
    frames = []
    for index in indices:
        bgr = cv2.imread(str(files[index]), cv2.IMREAD_COLOR)
        if bgr is None:
            raise VideoError(f"the frame {files[index].name} in {folder.name} could not be read.")
        frames.append(_fit(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), max_side_px))
    if len({f.shape for f in frames}) > 1:
        raise VideoError(f"the frames in {folder.name} differ in size.")
    return _clip(frames, (indices / fps).tolist(), fps, total=len(files), backend="frames")


def load_clip(item: Item, num_frames: int, *, max_side_px: int = DEFAULT_MAX_SIDE_PX) -> VideoClip:
    """The item's frames: (F, H, W, 3) uint8 RGB, F = num_frames (even)."""
    path = Path(item.video)
    if path.is_dir():
        return read_frame_folder(
            path,
            num_frames,
            fps=item.fps or DEFAULT_FOLDER_FPS,
            start=item.start,
            end=item.end,
            max_side_px=max_side_px,
        )
    if not path.exists():
        raise VideoError(f"the video {path} does not exist.")
    if item.start is not None or item.end is not None:
        return read_window(path, item.start or 0.0, item.end, num_frames, max_side_px=max_side_px)
    # No decode-time budget: a benchmark waits for its long videos rather than losing them.
    return read_video(
        path,
        num_frames=num_frames,
        max_duration_s=MAX_DURATION_S,
        max_file_mb=MAX_FILE_MB,
        max_side_px=max_side_px,
        max_decode_s=None,
    )
