"""Decode and sample video frames: exact indices, real timestamps, one clear sentence per bad input.

`read_video(path)` returns a `VideoClip` whose F frames (F even, so that they pair into Qwen3-VL's
temporal groups of 2) are spaced evenly over the whole clip, with the source frame index and the
container timestamp of each. Every input that cannot be used raises `VideoError` (a ValueError)
whose message is one sentence fit to show a user; nothing else escapes for bad input, and nothing is
written to disk.

How a file is read (one module per step):
1. `limits`: check the path, size and first bytes (images, animated WebP, text are refused here).
2. `probe`: one demux pass over the chosen video track (the default one, else the first) for the exact
   frame count, presentation timestamps, keyframes and packet sizes, and the first decoded frame for
   pixel format and rotation. Timestamps that cannot be trusted (missing, repeated, going backwards,
   jumping by hours, an invalid MP4 time scale) make the frames counted in order and timed by the frame
   rate, with a note for the user.
3. `read`: choose the frames (F indices by `np.linspace(0, N - 1, F).round()`, the rule of transformers'
   own Qwen3-VL sampler) and the output size; refuse frames the model's processor would not take and,
   with `budget`, requests whose decoding would take longer than `max_decode_s`.
4. `decord_backend` (decord2, the default) where it is known to return exactly the probed track's frames,
   else `pyav`: keyframe-aware seeking, skipping of frames no target needs, one thread per CPU core.
5. Convert to (H, W, 3) uint8 RGB (grayscale, 10-bit and palette formats included), downscale so the
   longer side is at most `max_side_px`, and apply the display rotation.
"""

from .clip import VideoClip, VideoError
from .limits import (
    BACKENDS,
    DEFAULT_MAX_DECODE_S,
    DEFAULT_MAX_DURATION_S,
    DEFAULT_MAX_FILE_MB,
    DEFAULT_MAX_FRAMES,
    DEFAULT_MAX_SIDE_PX,
)
from .read import read_video, sample_indices

__all__ = [
    "BACKENDS",
    "DEFAULT_MAX_DECODE_S",
    "DEFAULT_MAX_DURATION_S",
    "DEFAULT_MAX_FILE_MB",
    "DEFAULT_MAX_FRAMES",
    "DEFAULT_MAX_SIDE_PX",
    "VideoClip",
    "VideoError",
    "read_video",
    "sample_indices",
]
