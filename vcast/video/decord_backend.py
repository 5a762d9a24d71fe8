"""The decord2 decoder, used only where it is known to return exactly the asked frames of the probed track.

decord opens the file on its own and picks its own video stream, by frame index, with no way to be told
which: it is used only when the probed track is the file's only video stream and its first stream, with
timestamps the probe could use.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .budget import split_targets
from .clip import BackendFailed
from .probe import Orientation, Probe

# (container, codec) pairs on which decord2 3.4 returned exactly the asked frames in our tests.
# Elsewhere it silently returns wrong ones: HEVC (MP4, MKV), MPEG-4 Part 2 with B-frames (MOV, AVI),
# H.264 in MPEG-TS (frames shifted), AVI and FLV, so those go to PyAV.
DECORD_EXACT = {
    ("mov", "h264"),
    ("matroska", "h264"),
    ("matroska", "vp8"),
    ("matroska", "vp9"),
    ("matroska", "ffv1"),
    ("avi", "mjpeg"),
    ("gif", "gif"),
}


def decord_module():
    """The decord module (the decord2 package), or None when it is not installed."""
    try:
        import decord
    except ImportError:
        return None
    return decord


def unsuitable(probe: Probe) -> str | None:
    """Why decord would not return the probed track's frames exactly, or None where it would."""
    if probe.in_order_only:
        # decord seeks by timestamp: with repeated or broken ones it returns the same frame several times,
        # and absurd ones (a 2^40 ms jump) make it abort the whole process (std::bad_alloc).
        return "decord needs usable timestamps"
    if probe.stream_index != 0 or probe.video_streams != 1:
        return "decord cannot be told which video stream to read"
    if probe.orientation != Orientation():
        # decord2 3.4 half-applies display rotation: 90-degree videos come out mis-shaped or fail.
        return "decord mishandles rotated videos"
    if (probe.container, probe.codec) not in DECORD_EXACT:
        return f"decord is not known to return exact frames for {probe.codec} in {probe.container}"
    return None


def decode_decord(path: Path, probe: Probe, targets: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Decode frames `targets` with decord2 -> (T, h, w, 3) uint8 RGB; BackendFailed if it cannot."""
    decord = decord_module()
    if decord is None:
        raise BackendFailed("decord is not installed")
    reason = unsuitable(probe)
    if reason is not None:
        raise BackendFailed(reason)
    height, width = out_hw
    scaled = (height, width) != (probe.height, probe.width)

    def run(chunk: np.ndarray) -> np.ndarray:
        reader = decord.VideoReader(
            str(path), ctx=decord.cpu(0), width=width if scaled else -1, height=height if scaled else -1, num_threads=1
        )
        if len(reader) != probe.total_frames:  # its frame index differs from ours: indices would not match
            raise BackendFailed(f"decord counts {len(reader)} frames, the container index {probe.total_frames}")
        return reader.get_batch(chunk.tolist()).asnumpy()

    runs = split_targets(probe, targets)
    try:
        if len(runs) == 1:
            frames = run(targets)
        else:
            with ThreadPoolExecutor(len(runs)) as pool:
                frames = np.concatenate(list(pool.map(run, runs)))
    except BackendFailed:
        raise
    except Exception as err:  # decord raises DECORDError, RuntimeError, AssertionError on files it cannot read
        raise BackendFailed(f"decord failed: {err}") from err
    if frames.shape != (targets.size, height, width, 3) or frames.dtype != np.uint8:
        expected = (targets.size, height, width, 3)
        raise BackendFailed(f"decord returned {frames.shape} {frames.dtype}, expected {expected}")
    return frames
