"""read_video: the checks, the probe, the choice of frames, the decode-time budget and the decoders, composed."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

from . import decord_backend
from .budget import decode_cost_s, timeout_error, too_slow_error
from .clip import LIBRARY_ERRORS, BackendFailed, DecodeTimeout, VideoClip, VideoError
from .limits import (
    DEFAULT_MAX_DECODE_S,
    DEFAULT_MAX_DURATION_S,
    DEFAULT_MAX_FILE_MB,
    DEFAULT_MAX_FRAMES,
    DEFAULT_MAX_SIDE_PX,
    check_file,
    check_not_a_video,
    check_output_aspect,
    check_settings,
    format_seconds,
)
from .probe import Orientation, Probe, probe
from .pyav import PyAVRun, decode_pyav, decode_pyav_in_order

logger = logging.getLogger(__name__)


def sample_indices(
    total_frames: int, duration_s: float, *, num_frames: int | None = None, fps: float = 2.0, max_frames: int
) -> np.ndarray:
    """Source frame indices spaced evenly over the whole clip: (F,) int64, F even, non-decreasing.

    num_frames: exactly this many frames (repeating frames if the video has fewer).
    Otherwise `fps` frames per second of video, clamped to [2, max_frames] and to the number of
    frames in the video, rounded down to an even count. Spacing follows transformers' Qwen3-VL
    sampler: linspace(0, N - 1, F) rounded half to even, so first and last frames are included.
    """
    if num_frames is None:
        count = int(duration_s * fps)  # floor, as transformers' Qwen3-VL sampler does
        count = min(max(count, 2), max_frames, total_frames)
        num_frames = max(2, count - count % 2)
    return np.linspace(0, total_frames - 1, num_frames).round().astype(np.int64)


def output_size(probe: Probe, max_side_px: int) -> tuple[int, int]:
    """(height, width) to decode to, before rotation: the source scaled so its longer side <= max_side_px."""
    height, width = probe.height, probe.width
    scale = min(1.0, max_side_px / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _upright(frames: np.ndarray, orientation: Orientation) -> np.ndarray:
    """(T, H, W, 3) as decoded -> (T, H', W', 3) as displayed, C-contiguous."""
    frames = np.rot90(frames, orientation.quarter_turns, axes=(1, 2))
    if orientation.vflip:
        frames = frames[:, ::-1]
    if orientation.hflip:
        frames = frames[:, :, ::-1]
    return np.ascontiguousarray(frames)


def read_video(
    path: str | os.PathLike,
    *,
    num_frames: int | None = None,
    fps: float = 2.0,
    max_frames: int = DEFAULT_MAX_FRAMES,
    max_duration_s: float = DEFAULT_MAX_DURATION_S,
    max_file_mb: float = DEFAULT_MAX_FILE_MB,
    max_side_px: int = DEFAULT_MAX_SIDE_PX,
    max_decode_s: float | None = DEFAULT_MAX_DECODE_S,
    backend: str = "auto",
) -> VideoClip:
    """Decode frames spaced evenly over the whole video at `path`.

    num_frames: exactly this many frames (an even number <= max_frames); None samples `fps` frames
        per second of video instead, clamped to [2, max_frames] and made even.
    max_duration_s, max_file_mb: longer or larger inputs raise VideoError naming the limit.
    max_side_px: frames whose longer side exceeds this are downscaled, keeping the aspect ratio.
    max_decode_s: the most decoding one call may take, in seconds of one CPU core: a video whose decoding
        is estimated (from its keyframes, resolution and bytes) to take longer is refused before decoding,
        naming the cause and how many frames would fit; decoding that runs past it anyway is stopped.
        None: no limit.
    backend: "auto" (decord2, else PyAV), "decord" or "pyav".
    Returns a VideoClip with frames (F, H, W, 3) uint8 RGB. Raises VideoError for any input that is
    not a usable video, and ValueError for settings that cannot work.
    """
    limits = {"max_duration_s": max_duration_s, "max_file_mb": max_file_mb, "max_side_px": max_side_px}
    check_settings(num_frames, fps, max_frames, backend, limits | {"max_decode_s": max_decode_s})
    path = Path(path)

    # Cheap checks first (existence, size, the first bytes), then one pass over the container.
    check_not_a_video(check_file(path, max_file_mb))
    info = probe(path, max_duration_s)
    for note in info.notes:
        logger.warning("%s: %s", path.name, note)

    # Which frames and at what size; refuse what the model's processor or the time budget would not take.
    indices = sample_indices(info.total_frames, info.duration, num_frames=num_frames, fps=fps, max_frames=max_frames)
    targets, inverse = np.unique(indices, return_inverse=True)
    out_hw = output_size(info, int(max_side_px))
    check_output_aspect((info.width, info.height), out_hw)
    if max_decode_s is not None:
        _check_decode_budget(info, targets, max_decode_s)

    # Decode each distinct frame once, make it upright, and repeat it where it was asked for twice.
    frames, used = _decode(path, info, targets, out_hw, backend, max_decode_s)  # (T, h, w, 3)
    if info.orientation != Orientation():
        frames = _upright(frames, info.orientation)
    if targets.size != indices.size:
        frames = frames[inverse]  # (F, H, W, 3)
    source_size = (info.width, info.height) if info.orientation.swaps_axes else (info.height, info.width)
    return VideoClip(
        frames=frames,
        timestamps=info.timestamps(indices),
        indices=indices,
        fps=info.fps,
        duration=info.duration,
        total_frames=info.total_frames,
        backend=used,
        source_size=source_size,
        rotation=info.orientation.degrees,
        notes=info.notes,
    )


def _check_decode_budget(info: Probe, targets: np.ndarray, max_decode_s: float) -> None:
    """Refuse, before decoding, a request whose decoding is estimated to take more than max_decode_s,
    saying how many frames would fit where fewer would."""
    cost_s = decode_cost_s(info, targets)
    if cost_s <= max_decode_s:
        return
    fits = _most_frames_within(info, max_decode_s, below=targets.size)
    raise too_slow_error(info, cost_s, fits)


def _most_frames_within(info: Probe, max_decode_s: float, *, below: int) -> int | None:
    """The largest even frame count under `below` whose frames decode within the budget, or None.

    Bisection: spreading more frames over the same clip never decodes less.
    """

    def fits(count: int) -> bool:
        indices = sample_indices(info.total_frames, info.duration, num_frames=count, max_frames=count)
        return decode_cost_s(info, np.unique(indices)) <= max_decode_s

    low, high = 0, (below - 1) // 2  # in pairs of frames: 2 * low fits (0: nothing does), 2 * (high + 1) does not
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(2 * middle) else (low, middle - 1)
    return 2 * low if low else None


def _decode(
    path: Path, info: Probe, targets: np.ndarray, out_hw: tuple[int, int], backend: str, max_decode_s: float | None
) -> tuple[np.ndarray, str]:
    """(T, h, w, 3) uint8 frames and the name of the backend that decoded them."""
    deadline = None if max_decode_s is None else time.monotonic() + max_decode_s
    if backend in ("auto", "decord"):
        try:
            return decord_backend.decode_decord(path, info, targets, out_hw), "decord"
        except BackendFailed as err:
            if backend == "decord":
                if decord_backend.decord_module() is None:
                    raise ImportError("backend='decord' needs the decord2 package: pip install decord2") from err
                raise VideoError(f"decord could not decode this video ({err}); use backend='auto' or 'pyav'.") from err
            logger.info("decoding %s with PyAV: %s", path.name, err)
    try:
        return _decode_pyav(path, info, targets, out_hw, deadline), "pyav"
    except DecodeTimeout as err:
        raise timeout_error(max_decode_s) from err
    except (BackendFailed, *LIBRARY_ERRORS) as err:
        frame = getattr(err, "frame", None)
        where = "" if frame is None else f" at {format_seconds(float(info.timestamps(np.array([frame]))[0]))}"
        raise VideoError(
            f"The video could not be decoded{where}: the file is damaged; export or download it again and retry."
        ) from err


def _decode_pyav(
    path: Path, info: Probe, targets: np.ndarray, out_hw: tuple[int, int], deadline: float | None
) -> np.ndarray:
    if info.in_order_only:
        return decode_pyav_in_order(path, info, targets, out_hw, deadline)
    try:
        return decode_pyav(path, info, targets, out_hw, deadline)
    except BackendFailed as err:  # a seek went wrong: one pass from the start needs no seeking
        logger.info("decoding %s in one pass: %s", path.name, err)
        return PyAVRun(path, info, out_hw, seek=False, deadline=deadline).decode(targets)
