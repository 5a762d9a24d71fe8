"""What reading a video gives back (VideoClip) and the errors it raises."""

from __future__ import annotations

from dataclasses import dataclass

import av
import numpy as np

# What PyAV raises on bad data (its EOFError and InvalidDataError are FFmpegErrors); anything else is a
# bug and is not masked.
LIBRARY_ERRORS: tuple[type[BaseException], ...] = (av.FFmpegError, OSError)


class VideoError(ValueError):
    """A video that cannot be used. The message is one sentence fit to show a user, saying what to do."""


class BackendFailed(Exception):
    """A backend could not decode the requested frames; the caller may try another one.

    frame: the index of the frame that did not come out, when one is to blame.
    """

    def __init__(self, reason: str, frame: int | None = None):
        super().__init__(reason)
        self.frame = frame


class DecodeTimeout(Exception):
    """Decoding ran past the request's time budget (the estimate made before decoding was too low)."""


@dataclass(frozen=True, eq=False)
class VideoClip:
    """Frames sampled evenly over a video, with where they came from.

    frames: (F, H, W, 3) uint8 RGB, upright (display rotation applied), longer side <= max_side_px.
        F is even: consecutive pairs form Qwen3-VL's temporal groups.
    timestamps: (F,) float64 seconds since the first frame, from the container's time base.
    indices: (F,) int64 source frame indices in presentation order, non-decreasing (repeats only when
        more frames are asked for than the video has).
    fps: the source's average frame rate, total_frames / duration.
    duration: seconds from the first frame's start to the last frame's end.
    total_frames: N, the number of frames in the source.
    backend: "decord" or "pyav", the decoder that produced `frames`.
    source_size: (height, width) of the upright source before downscaling.
    rotation: clockwise degrees applied to the decoded frames to make them upright (0, 90, 180, 270).
    notes: sentences for the user about how the video was read where it was not read as usual (broken
        timestamps timed from the frame rate instead); empty for a normal video.
    """

    frames: np.ndarray
    timestamps: np.ndarray
    indices: np.ndarray
    fps: float
    duration: float
    total_frames: int
    backend: str
    source_size: tuple[int, int]
    rotation: int = 0
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        frames = self.frames
        if not (isinstance(frames, np.ndarray) and frames.ndim == 4 and frames.shape[-1] == 3):
            raise ValueError(f"frames must be a (F, H, W, 3) array, got {getattr(frames, 'shape', type(frames))}")
        if frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 RGB, got {frames.dtype}")
        if len(self.timestamps) != len(frames) or len(self.indices) != len(frames):
            raise ValueError(
                f"need one timestamp and one index per frame: {len(frames)} frames, "
                f"{len(self.timestamps)} timestamps, {len(self.indices)} indices"
            )

    @property
    def num_frames(self) -> int:
        """F, the number of sampled frames."""
        return int(self.frames.shape[0])

    @property
    def sampling_fps(self) -> float:
        """Sampled frames per second of video, F / duration."""
        return self.num_frames / self.duration

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the returned frames."""
        return int(self.frames.shape[1]), int(self.frames.shape[2])
