"""Decode and sample video frames: exact indices, real timestamps, one clear sentence per bad input.

`read_video(path)` returns a `VideoClip` whose F frames (F even, so that they pair into Qwen3-VL's
temporal groups of 2) are spaced evenly over the whole clip, with the source frame index and the
container timestamp of each. Every input that cannot be used raises `VideoError` (a ValueError)
whose message is one sentence fit to show a user; nothing else escapes for bad input, and nothing is
written to disk.

How a file is read:
1. Check the path and size, then probe with PyAV: the container, the video track, one demux pass
   over all packets (no decoding) for the exact frame count, presentation timestamps and keyframes,
   and the first decoded frame for pixel format and rotation metadata.
2. Choose the frames from the probe: F indices by `np.linspace(0, N - 1, F).round()`, the rule of
   transformers' own Qwen3-VL sampler, so the processor would pick the same frames.
3. Decode only those frames: decord2 first (the project's default backend), PyAV when decord is not
   installed, cannot open the file, counts frames differently from the probe, or is known to return
   wrong frames for the file (rotated videos; codecs and containers outside `_DECORD_EXACT`).
   The PyAV decoder is keyframe-aware: per target frame it seeks to the keyframe or keeps decoding
   forward, whichever decodes fewer frames, lets the decoder skip non-reference frames no target
   needs, and splits the targets over the CPU cores.
4. Convert to (H, W, 3) uint8 RGB (grayscale, 10-bit and palette formats included), downscale so the
   longer side is at most `max_side_px`, and apply the display rotation.
"""

from __future__ import annotations

import logging
import math
import os
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property
from pathlib import Path

import av
import numpy as np

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "decord", "pyav")
DEFAULT_MAX_FRAMES = 256
DEFAULT_MAX_DURATION_S = 600.0
DEFAULT_MAX_FILE_MB = 500.0
DEFAULT_MAX_SIDE_PX = 1280

# Decoding one frame of more than 8192 x 8192 pixels needs gigabytes; 8K video is 7680 x 4320.
_MAX_SOURCE_PIXELS = 8192 * 8192
# Qwen3-VL's processor rejects frames more than 200 times wider than tall or vice versa.
_MAX_ASPECT = 200
# A seek costs about as much as decoding this many frames (demuxer reset, decoder flush).
_SEEK_COST_FRAMES = 8
# Below this many target frames per worker, a second decoding thread costs more than it saves.
_MIN_FRAMES_PER_WORKER = 4
_VIDEO_EXAMPLES = ".mp4, .mov, .webm or .mkv"
_DAMAGED = (
    "The file could not be read as a video: it is damaged, truncated (an incomplete download?) or not a "
    f"video format; re-download it or export it again as {_VIDEO_EXAMPLES}."
)
# What PyAV raises on bad data (its EOFError and InvalidDataError are FFmpegErrors); anything else is a
# bug and is not masked.
_LIBRARY_ERRORS: tuple[type[BaseException], ...] = (av.FFmpegError, OSError)


class VideoError(ValueError):
    """A video that cannot be used. The message is one sentence fit to show a user, saying what to do."""


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


@dataclass(frozen=True)
class _Orientation:
    """How to make a decoded frame upright: np.rot90 by `quarter_turns` (counter-clockwise), then flips.

    degrees: the display rotation, clockwise, as FFmpeg reports it (90 for a phone video shot upright).
    """

    degrees: int = 0
    quarter_turns: int = 0
    vflip: bool = False
    hflip: bool = False

    @property
    def swaps_axes(self) -> bool:
        return self.quarter_turns % 2 == 1


@dataclass(frozen=True)
class _Probe:
    """What one demux pass and one decoded frame tell about a video track.

    pts: (N,) int64 presentation timestamps in `time_base` units, ascending (index = frame index).
    decode_order: (N,) int64 frame index of the k-th packet in decode order.
    keyframe: (N,) bool, True where the k-th packet in decode order is a keyframe.
    container: the demuxer's first name ("mov", "matroska", "mpegts", "avi", ...).
    in_order_only: True when the track has no usable timestamps: frames can only be counted in order.
    """

    stream_index: int
    container: str
    codec: str
    width: int
    height: int
    time_base: Fraction
    pts: np.ndarray
    decode_order: np.ndarray
    keyframe: np.ndarray
    last_frame_duration: float
    orientation: _Orientation
    in_order_only: bool = False

    @cached_property
    def position(self) -> np.ndarray:
        """(N,) int64 decode-order position of each frame."""
        return np.argsort(self.decode_order)

    @cached_property
    def frame_at(self) -> dict[int, int]:
        """Presentation timestamp -> frame index."""
        return {int(ts): i for i, ts in enumerate(self.pts)}

    @property
    def total_frames(self) -> int:
        return int(self.pts.shape[0])

    @property
    def duration(self) -> float:
        span = float((self.pts[-1] - self.pts[0]) * self.time_base)
        return span + self.last_frame_duration

    @property
    def fps(self) -> float:
        return self.total_frames / self.duration

    def timestamps(self, indices: np.ndarray) -> np.ndarray:
        """(F,) int frame indices -> (F,) float64 seconds since the first frame."""
        ticks = (self.pts[indices] - self.pts[0]).astype(np.float64)
        return ticks * (self.time_base.numerator / self.time_base.denominator)


class _BackendFailed(Exception):
    """A backend could not decode the requested frames; the caller may try another one.

    frame: the index of the frame that did not come out, when one is to blame.
    """

    def __init__(self, reason: str, frame: int | None = None):
        super().__init__(reason)
        self.frame = frame


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


def _check_settings(num_frames: int | None, fps: float, max_frames: int, backend: str, limits: dict[str, float]):
    """Raise ValueError (a caller's mistake, not the video's) for settings that cannot work."""
    if isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 2 or max_frames % 2:
        raise ValueError(f"max_frames must be an even integer >= 2 (frames pair into groups of 2), got {max_frames!r}")
    if num_frames is not None:
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 2 or num_frames % 2:
            raise ValueError(
                f"num_frames must be an even integer >= 2 (frames pair into groups of 2), or None to sample "
                f"by fps; got {num_frames!r}"
            )
        if num_frames > max_frames:
            raise ValueError(f"num_frames={num_frames} exceeds max_frames={max_frames}; raise max_frames or ask fewer")
    elif isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps < math.inf:
        raise ValueError(f"fps must be a finite number > 0 (frames sampled per second of video), got {fps!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    for name, value in limits.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name} must be a number > 0, got {value!r}")


def _format_seconds(seconds: float) -> str:
    """A duration as people say it: '45.2 s', '12 min 30 s', '3 h 05 min'."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _format_mb(size_mb: float) -> str:
    return f"{size_mb:,.1f} MB" if size_mb < 10 else f"{size_mb:,.0f} MB"


_IMAGE_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)
_IMAGE_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF", b"avif": "AVIF"}


def _check_file(path: Path, max_file_mb: float) -> bytes:
    """Fail on a missing, empty or too large file; return its first 4 KiB for sniffing."""
    try:
        if path.is_dir():
            raise VideoError(f"'{path}' is a folder, not a video file; pass the path of a video file.")
        if not path.is_file():
            raise VideoError(f"No video file at '{path}'; check the path, or upload the video again.")
        size_mb = path.stat().st_size / 2**20
        if size_mb == 0:
            raise VideoError("The file is empty (0 bytes); upload the video again.")
        if size_mb > max_file_mb:
            raise VideoError(
                f"The file is {_format_mb(size_mb)}, more than the {_format_mb(max_file_mb)} limit; "
                "trim or compress the video and try again."
            )
        with path.open("rb") as f:
            return f.read(4096)
    except OSError as err:
        raise VideoError(f"The file '{path}' could not be opened ({err.strerror}); check that it is readable.") from err


def _image_kind(head: bytes) -> str | None:
    """The image format whose signature starts `head`, or None."""
    for signature, kind in _IMAGE_SIGNATURES:
        # BMP's 2-byte signature is weak; require the header size field of a real BMP too.
        if head.startswith(signature) and (
            kind != "BMP" or head[14:15] in (b"\x0c", b"\x28", b"\x34", b"\x38", b"\x6c", b"\x7c")
        ):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head[4:8] == b"ftyp" and head[8:12] in _IMAGE_BRANDS:
        return _IMAGE_BRANDS[head[8:12]]
    return None


def _looks_like_text(head: bytes) -> bool:
    """True when the first bytes are printable UTF-8 with no NUL: a text file, not media."""
    if b"\x00" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 3:  # a multi-byte character cut at the end of `head` is fine
            return False
        text = head[: err.start].decode("utf-8")
    printable = sum(ch.isprintable() or ch in "\t\r\n\f" for ch in text)
    return printable >= 0.95 * max(len(text), 1)


def _check_not_a_video(head: bytes) -> None:
    """Fail on a file that is plainly not a video, judged from its first bytes (FFmpeg would open some
    of these as one-frame videos, or as subtitles)."""
    kind = _image_kind(head)
    if kind is not None:
        raise _image_error(kind)
    if _looks_like_text(head) and not head.startswith(b"YUV4MPEG2"):  # y4m: raw video behind a text header
        raise VideoError(f"This is a text file, not a video; upload a video file such as {_VIDEO_EXAMPLES}.")


def _check_duration(duration_s: float, max_duration_s: float) -> None:
    if duration_s > max_duration_s:
        raise VideoError(
            f"The video is {_format_seconds(duration_s)} long, more than the {_format_seconds(max_duration_s)} "
            "limit; trim it and try again."
        )


def _check_resolution(width: int, height: int) -> None:
    if width * height > _MAX_SOURCE_PIXELS:
        raise VideoError(
            f"The video is {width}x{height} pixels, beyond the supported {_MAX_SOURCE_PIXELS / 1e6:.0f} megapixels "
            "per frame; downscale it (for example to 1920x1080) and try again."
        )
    if max(width, height) > _MAX_ASPECT * min(width, height):
        raise VideoError(
            f"The video is {width}x{height} pixels; frames more than {_MAX_ASPECT} times wider than tall (or taller "
            "than wide) are not supported."
        )


def _orientation(frame: av.VideoFrame) -> _Orientation:
    """The transform that makes `frame` upright, from its display matrix, exactly as FFmpeg's autorotate.

    FFmpeg (fftools/ffmpeg_filter.c, ffplay.c) takes theta = -round(av_display_rotation_get(m)) and
    picks transpose / hflip / vflip by the signs of m; we do the same with np.rot90 and flips.
    """
    side_data = frame.side_data.get(av.sidedata.sidedata.Type.DISPLAYMATRIX) if frame.side_data else None
    if side_data is None:
        return _Orientation()
    m = struct.unpack("=9i", bytes(side_data))  # 3x3 row-major, 16.16 fixed point
    scale0, scale1 = math.hypot(m[0], m[3]), math.hypot(m[1], m[4])
    if scale0 == 0 or scale1 == 0:
        return _Orientation()
    theta = math.degrees(math.atan2(m[1] / scale1, m[0] / scale0))  # = -av_display_rotation_get(m)
    # Angles other than quarter turns do not occur in practice; the nearest quarter turn is the sane reading.
    theta = round(theta / 90) * 90 % 360
    if theta == 90:  # FFmpeg: transpose=cclock_flip if m[3] > 0 else transpose=clock
        return _Orientation(90, 1, vflip=True) if m[3] > 0 else _Orientation(90, 3)
    if theta == 270:  # FFmpeg: transpose=clock_flip if m[3] < 0 else transpose=cclock
        return _Orientation(270, 3, vflip=True) if m[3] < 0 else _Orientation(270, 1)
    if theta == 180:  # FFmpeg: hflip if m[0] < 0, vflip if m[4] < 0
        return _Orientation(180, 0, vflip=m[4] < 0, hflip=m[0] < 0)
    return _Orientation(0, 0, vflip=m[4] < 0)


def _video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    """The first real video track; a cover picture embedded in an audio file does not count."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    if container.streams.audio:
        raise VideoError("This file contains only audio, no video track; upload a file with video.")
    raise VideoError(f"This file contains no video track; upload a video file such as {_VIDEO_EXAMPLES}.")


def _probe(path: Path, max_duration_s: float) -> _Probe:
    """Open the file with PyAV, check what can be checked cheaply, then index every frame."""
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except _LIBRARY_ERRORS as err:
        raise VideoError(_DAMAGED) from err
    with container:
        if container.format.name == "image2" or container.format.name.endswith("_pipe"):
            raise _image_error(container.format.name.removesuffix("_pipe").upper())
        stream = _video_stream(container)
        if stream.codec_context is None:  # FFmpeg knows the container but has no decoder for the track
            raise VideoError("The video uses a codec that cannot be decoded here; convert it to H.264 .mp4.")
        codec = stream.codec_context.name
        header_duration = _header_duration(container, stream)
        # Fail a 3-hour lecture before reading all of it; headers can be a little off, so the exact
        # check waits for the index unless the header is far beyond the limit.
        if header_duration is not None and header_duration > 1.1 * max_duration_s:
            _check_duration(header_duration, max_duration_s)
        width, height = stream.codec_context.width, stream.codec_context.height
        if width and height:
            _check_resolution(width, height)
        try:
            packets, demuxed, first_frame = _index_packets(container, stream)
        except _LIBRARY_ERRORS as err:
            raise VideoError(_DAMAGED) from err
        if not packets:
            raise VideoError("The video track contains no frames; upload a video that plays.")
        if first_frame is None:
            raise VideoError(
                f"None of the video's frames could be decoded (codec '{codec}'): the file is damaged or its codec "
                "is unsupported; export it again as H.264 .mp4."
            )
        _check_resolution(first_frame.width, first_frame.height)
        probe = _build_probe(stream, codec, packets, first_frame)
        # Only MP4/MOV headers state an exact frame count (their sample tables).
        expected = stream.frames if container.format.name.startswith("mov,mp4") else 0
    if probe.total_frames == 1 and codec in _IMAGE_CODECS:
        raise _image_error(codec.upper())
    if demuxed < expected:  # the header lists frames the file no longer holds
        total = _format_seconds(header_duration or expected / probe.fps)
        raise VideoError(
            f"The video is truncated: only {_format_seconds(probe.duration)} of its {total} could be read (an "
            "incomplete download?); download or export it again."
        )
    _check_duration(probe.duration, max_duration_s)
    return probe


_IMAGE_CODECS = {"png", "apng", "mjpeg", "gif", "bmp", "tiff", "webp", "jpegxl", "jpeg2000"}


def _image_error(kind: str) -> VideoError:
    return VideoError(f"This is a still image ({kind}), not a video; upload a video file such as {_VIDEO_EXAMPLES}.")


def _header_duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float | None:
    """The duration the header claims, in seconds, or None when it does not say."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return None


# One demuxed packet: (pts, or dts when pts is missing; is_keyframe; duration), in the stream's time base.
_Packet = tuple[int | None, bool, int]


def _index_packets(container, stream) -> tuple[list[_Packet], int, av.VideoFrame | None]:
    """One demux pass over the track: its packets in decode order, how many, and its first frame.

    Packets flagged discard (trimmed away by an edit list) produce no frame and are left out of the
    index but counted. Packets are decoded only until the first frame appears, which tells the
    decoded size and the rotation.
    """
    packets: list[_Packet] = []
    demuxed = 0
    first_frame = None
    decoder = stream.codec_context
    for packet in container.demux(stream):
        if packet.size == 0:
            continue
        demuxed += 1
        if first_frame is None:
            first_frame = _first_frame(decoder, packet)
        if packet.is_discard:
            continue
        pts = packet.pts if packet.pts is not None else packet.dts
        packets.append((pts, packet.is_keyframe, packet.duration or 0))
    if first_frame is None:
        first_frame = _first_frame(decoder, None)  # frames held back by the decoder's reordering delay
    return packets, demuxed, first_frame


def _first_frame(decoder, packet) -> av.VideoFrame | None:
    try:
        frames = decoder.decode(packet)
    except av.FFmpegError:  # a damaged packet; later ones may decode
        return None
    return frames[0] if frames else None


def _build_probe(stream, codec: str, packets: list[_Packet], first_frame: av.VideoFrame) -> _Probe:
    """Turn demuxed packets into the frame index: presentation order, decode order, keyframes."""
    common = {
        "stream_index": stream.index,
        "container": stream.container.format.name.split(",")[0],
        "codec": codec,
        "width": first_frame.width,
        "height": first_frame.height,
        "orientation": _orientation(first_frame),
    }
    pts_list = [p[0] for p in packets]
    # AVI stores no presentation times: with B-frames its packet "pts" follow decode order.
    reordering_avi = common["container"] == "avi" and stream.codec_context.codec.reorder
    if reordering_avi or None in pts_list or len(set(pts_list)) != len(pts_list):
        # No usable timestamps (raw streams, AVI): assume a constant frame rate, decode in order.
        time_base = 1 / Fraction(stream.average_rate or stream.guessed_rate or 25)
        ts = np.arange(len(packets), dtype=np.int64)
        keyframe = np.array([p[1] for p in packets], dtype=bool)
        return _Probe(
            **common, time_base=time_base, pts=ts, decode_order=ts, keyframe=keyframe,
            last_frame_duration=float(time_base), in_order_only=True,
        )  # fmt: skip
    if first_frame.pts is not None:
        # Frames shown before the first decodable one (a recording cut mid-GOP) can never be decoded.
        packets = [p for p in packets if p[0] >= first_frame.pts]
    pts = np.array([p[0] for p in packets], dtype=np.int64)  # (N,) in decode order
    order = np.argsort(pts, kind="stable")  # frame index -> decode-order position
    decode_order = np.empty_like(order)
    decode_order[order] = np.arange(order.size)
    time_base = Fraction(stream.time_base)
    last_duration = float(packets[order[-1]][2] * time_base)
    if last_duration <= 0:  # unknown: use the typical spacing of the other frames
        gaps = np.diff(pts[order])
        last_duration = float(np.median(gaps) * time_base) if gaps.size else 1 / float(stream.average_rate or 25)
    return _Probe(
        **common, time_base=time_base, pts=pts[order], decode_order=decode_order,
        keyframe=np.array([p[1] for p in packets], dtype=bool), last_frame_duration=last_duration,
    )  # fmt: skip


def _output_size(probe: _Probe, max_side_px: int) -> tuple[int, int]:
    """(height, width) to decode to, before rotation: the source scaled so its longer side <= max_side_px."""
    height, width = probe.height, probe.width
    scale = min(1.0, max_side_px / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _upright(frames: np.ndarray, orientation: _Orientation) -> np.ndarray:
    """(T, H, W, 3) as decoded -> (T, H', W', 3) as displayed, C-contiguous."""
    frames = np.rot90(frames, orientation.quarter_turns, axes=(1, 2))
    if orientation.vflip:
        frames = frames[:, ::-1]
    if orientation.hflip:
        frames = frames[:, :, ::-1]
    return np.ascontiguousarray(frames)


def _decode_pyav(path: Path, probe: _Probe, targets: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Decode frames `targets` ((T,) ascending unique indices) -> (T, h, w, 3) uint8 RGB, before rotation.

    The targets are split into contiguous runs, one per CPU core, decoded in parallel threads (PyAV
    releases the GIL while decoding).
    """
    workers = max(1, min(_cpu_count(), targets.size // _MIN_FRAMES_PER_WORKER))
    if workers == 1:
        return _PyAVRun(path, probe, out_hw).decode(targets)
    with ThreadPoolExecutor(workers) as pool:
        parts = pool.map(lambda chunk: _PyAVRun(path, probe, out_hw).decode(chunk), np.array_split(targets, workers))
        return np.concatenate(list(parts))


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _seek_starts(probe: _Probe, targets: np.ndarray) -> np.ndarray:
    """(T,) decode-order position of the keyframe to start decoding from, for each target frame.

    The last keyframe at or before the target in decode order whose own frame is not later than the
    target: a frame shown before its keyframe (open GOP) may reference the previous group of frames.
    """
    keys = np.flatnonzero(probe.keyframe)
    starts = np.zeros(targets.size, dtype=np.int64)
    for i, target in enumerate(targets):
        j = np.searchsorted(keys, probe.position[target], side="right") - 1
        while j >= 0 and probe.decode_order[keys[j]] > target:
            j -= 1
        starts[i] = keys[j] if j >= 0 else 0
    return starts


class _PyAVRun:
    """One decoder over one container, decoding ascending target frames with as little work as it can.

    For each target it either decodes on from where it is or seeks to the target's keyframe, whichever
    decodes fewer frames; on the way it lets the decoder skip frames that no target needs and that no
    other frame references (skip_frame=NONREF), which leaves every other frame's pixels unchanged.
    """

    def __init__(self, path: Path, probe: _Probe, out_hw: tuple[int, int], *, seek: bool = True):
        self.path, self.probe, self.out_hw, self.may_seek = path, probe, out_hw, seek

    def decode(self, targets: np.ndarray) -> np.ndarray:
        """(T,) ascending frame indices -> (T, h, w, 3) uint8 RGB."""
        probe = self.probe
        starts = _seek_starts(probe, targets)
        self.wanted = {int(probe.pts[t]): k for k, t in enumerate(targets)}
        self.out: list[np.ndarray | None] = [None] * targets.size
        with av.open(str(self.path), metadata_errors="ignore") as container:
            self.container = container
            self.stream = container.streams.video[probe.stream_index]
            # One thread per decoder: the runs already use every core, and frame threads would
            # delay output and apply the per-packet skip setting to a later packet.
            self.stream.codec_context.thread_count = 1
            self.packets: Iterator[av.Packet] | None = None
            self.fed = -1  # decode-order position of the last packet sent to the decoder
            for k, target in enumerate(targets):
                if self.out[k] is not None:
                    continue
                goal = int(probe.position[target])
                if self.packets is None:
                    self._seek(int(starts[k]) if self.may_seek else 0)
                elif self.may_seek and goal - self.fed > goal - starts[k] + _SEEK_COST_FRAMES:
                    self._seek(int(starts[k]))
                self._feed_until(k)
                if self.out[k] is None:
                    raise _BackendFailed(f"frame {target} did not come out of the decoder", int(target))
        return np.stack(self.out)

    def _seek(self, start: int) -> None:
        """Position the demuxer at the keyframe at decode-order position `start`, decoder flushed."""
        if self.fed >= 0 or start > 0:
            key_pts = int(self.probe.pts[self.probe.decode_order[start]])
            self.container.seek(key_pts, stream=self.stream, backward=True)
            self.stream.codec_context.flush_buffers()
        self.packets = self.container.demux(self.stream)
        self.fed = start - 1
        self.landed = False

    def _feed_until(self, k: int) -> None:
        """Send packets to the decoder until target k has come out, collecting every target on the way."""
        probe, decoder = self.probe, self.stream.codec_context
        for packet in self.packets:
            if packet.size == 0:
                continue
            ts = packet.pts if packet.pts is not None else packet.dts
            frame = probe.frame_at.get(ts)
            if frame is not None:
                position = int(probe.position[frame])
                if not self.landed and position > self.fed + 1:
                    # The seek overshot our keyframe (an imprecise index): start over from the top.
                    raise _BackendFailed("seek landed after the keyframe")
                self.fed = max(self.fed, position)
            self.landed = True
            target = self.wanted.get(ts)
            decoder.skip_frame = "DEFAULT" if target is not None and self.out[target] is None else "NONREF"
            try:
                frames = decoder.decode(packet)
            except av.FFmpegError:  # a damaged packet: conceal it, as players do
                continue
            self._collect(frames)
            if self.out[k] is not None:
                return
        decoder.skip_frame = "DEFAULT"
        self._collect(decoder.decode(None))
        self.packets = None

    def _collect(self, frames: list[av.VideoFrame]) -> None:
        height, width = self.out_hw
        for frame in frames:
            k = self.wanted.get(frame.pts)
            if k is not None and self.out[k] is None:
                self.out[k] = frame.to_ndarray(format="rgb24", width=width, height=height, interpolation="AREA")


def _decode_pyav_in_order(path: Path, probe: _Probe, targets: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Decode every frame in order and keep `targets` by position: for tracks without usable timestamps."""
    height, width = out_hw
    out = {}
    wanted = set(targets.tolist())
    with av.open(str(path), metadata_errors="ignore") as container:
        stream = container.streams.video[probe.stream_index]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                out[i] = frame.to_ndarray(format="rgb24", width=width, height=height, interpolation="AREA")
            if i >= targets[-1]:
                break
    if len(out) < targets.size:
        raise _BackendFailed(f"only {len(out)} of {targets.size} frames were produced")
    return np.stack([out[i] for i in targets.tolist()])


# (container, codec) pairs on which decord2 3.4 returned exactly the asked frames in our tests.
# Elsewhere it silently returns wrong ones: HEVC (MP4, MKV), MPEG-4 Part 2 with B-frames (MOV, AVI),
# H.264 in MPEG-TS (frames shifted), AVI and FLV, so those go to PyAV.
_DECORD_EXACT = {
    ("mov", "h264"),
    ("matroska", "h264"),
    ("matroska", "vp8"),
    ("matroska", "vp9"),
    ("matroska", "ffv1"),
    ("avi", "mjpeg"),
    ("gif", "gif"),
}


def _decord_module():
    try:
        import decord
    except ImportError:
        return None
    return decord


def _decode_decord(path: Path, probe: _Probe, targets: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Decode frames `targets` with decord2 -> (T, h, w, 3) uint8 RGB; _BackendFailed if it cannot."""
    decord = _decord_module()
    if decord is None:
        raise _BackendFailed("decord is not installed")
    if probe.orientation != _Orientation():
        # decord2 3.4 half-applies display rotation: 90-degree videos come out mis-shaped or fail.
        raise _BackendFailed("decord mishandles rotated videos")
    if (probe.container, probe.codec) not in _DECORD_EXACT:
        raise _BackendFailed(f"decord is not known to return exact frames for {probe.codec} in {probe.container}")
    height, width = out_hw
    scaled = (height, width) != (probe.height, probe.width)

    def run(chunk: np.ndarray) -> np.ndarray:
        reader = decord.VideoReader(
            str(path), ctx=decord.cpu(0), width=width if scaled else -1, height=height if scaled else -1, num_threads=1
        )
        if len(reader) != probe.total_frames:  # its frame index differs from ours: indices would not match
            raise _BackendFailed(f"decord counts {len(reader)} frames, the container index {probe.total_frames}")
        return reader.get_batch(chunk.tolist()).asnumpy()

    workers = max(1, min(_cpu_count(), targets.size // _MIN_FRAMES_PER_WORKER))
    try:
        if workers == 1:
            frames = run(targets)
        else:
            with ThreadPoolExecutor(workers) as pool:
                frames = np.concatenate(list(pool.map(run, np.array_split(targets, workers))))
    except _BackendFailed:
        raise
    except Exception as err:  # decord raises DECORDError, RuntimeError, AssertionError on files it cannot read
        raise _BackendFailed(f"decord failed: {err}") from err
    if frames.shape != (targets.size, height, width, 3) or frames.dtype != np.uint8:
        raise _BackendFailed(
            f"decord returned {frames.shape} {frames.dtype}, expected {(targets.size, height, width, 3)}"
        )
    return frames


def read_video(
    path: str | os.PathLike,
    *,
    num_frames: int | None = None,
    fps: float = 2.0,
    max_frames: int = DEFAULT_MAX_FRAMES,
    max_duration_s: float = DEFAULT_MAX_DURATION_S,
    max_file_mb: float = DEFAULT_MAX_FILE_MB,
    max_side_px: int = DEFAULT_MAX_SIDE_PX,
    backend: str = "auto",
) -> VideoClip:
    """Decode frames spaced evenly over the whole video at `path`.

    num_frames: exactly this many frames (an even number <= max_frames); None samples `fps` frames
        per second of video instead, clamped to [2, max_frames] and made even.
    max_duration_s, max_file_mb: longer or larger inputs raise VideoError naming the limit.
    max_side_px: frames whose longer side exceeds this are downscaled, keeping the aspect ratio.
    backend: "auto" (decord2, else PyAV), "decord" or "pyav".
    Returns a VideoClip with frames (F, H, W, 3) uint8 RGB. Raises VideoError for any input that is
    not a usable video, and ValueError for settings that cannot work.
    """
    limits = {"max_duration_s": max_duration_s, "max_file_mb": max_file_mb, "max_side_px": max_side_px}
    _check_settings(num_frames, fps, max_frames, backend, limits)
    path = Path(path)

    # Cheap checks first (existence, size, the first bytes), then one pass over the container.
    _check_not_a_video(_check_file(path, max_file_mb))
    probe = _probe(path, max_duration_s)

    # Which frames: indices, then timestamps from the container's time base.
    indices = sample_indices(probe.total_frames, probe.duration, num_frames=num_frames, fps=fps, max_frames=max_frames)
    targets, inverse = np.unique(indices, return_inverse=True)
    out_hw = _output_size(probe, int(max_side_px))

    # Decode each distinct frame once, make it upright, and repeat it where it was asked for twice.
    frames, used = _decode(path, probe, targets, out_hw, backend)  # (T, h, w, 3)
    if probe.orientation != _Orientation():
        frames = _upright(frames, probe.orientation)
    if targets.size != indices.size:
        frames = frames[inverse]  # (F, H, W, 3)
    source_size = (probe.width, probe.height) if probe.orientation.swaps_axes else (probe.height, probe.width)
    return VideoClip(
        frames=frames,
        timestamps=probe.timestamps(indices),
        indices=indices,
        fps=probe.fps,
        duration=probe.duration,
        total_frames=probe.total_frames,
        backend=used,
        source_size=source_size,
        rotation=probe.orientation.degrees,
    )


def _decode(path: Path, probe: _Probe, targets: np.ndarray, out_hw: tuple[int, int], backend: str):
    """(T, h, w, 3) uint8 frames and the name of the backend that decoded them."""
    if backend in ("auto", "decord"):
        try:
            return _decode_decord(path, probe, targets, out_hw), "decord"
        except _BackendFailed as err:
            if backend == "decord":
                if _decord_module() is None:
                    raise ImportError("backend='decord' needs the decord2 package: pip install decord2") from err
                raise VideoError(f"decord could not decode this video ({err}); use backend='auto' or 'pyav'.") from err
            logger.info("decoding %s with PyAV: %s", path.name, err)
    try:
        if probe.in_order_only:
            return _decode_pyav_in_order(path, probe, targets, out_hw), "pyav"
        try:
            return _decode_pyav(path, probe, targets, out_hw), "pyav"
        except _BackendFailed as err:  # a seek went wrong: one pass from the start needs no seeking
            logger.info("decoding %s in one pass: %s", path.name, err)
            return _PyAVRun(path, probe, out_hw, seek=False).decode(targets), "pyav"
    except (_BackendFailed, *_LIBRARY_ERRORS) as err:
        frame = getattr(err, "frame", None)
        where = "" if frame is None else f" at {_format_seconds(float(probe.timestamps(np.array([frame]))[0]))}"
        raise VideoError(
            f"The video could not be decoded{where}: the file is damaged; export or download it again and retry."
        ) from err
