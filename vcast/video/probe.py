"""One pass over the container, before any frame is decoded: which track, how many frames, their timestamps,
keyframes and decode order, the decoded size and the display rotation.

The probe decides which track is the video (the same one for every decoder), whether its timestamps can be
trusted, and refuses what can be refused from the container alone.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property
from pathlib import Path

import av
import numpy as np

from .clip import LIBRARY_ERRORS, VideoError
from .limits import DAMAGED, VIDEO_EXAMPLES, check_duration, check_resolution, format_seconds, image_error

# Two consecutive frames an hour apart are a broken or wrapped timestamp, not a recording: real wraps and
# damaged sample durations (2^32 ticks, 2^33 at 90 kHz, 2^40 ms) are 6 h and more.
_MAX_FRAME_GAP_S = 3600.0
# Decoders reorder at most 16 frames (H.264 and HEVC); a frame shown further from its place in the stream
# means timestamps that went backwards (a reset or a wrap), not B-frames.
_MAX_REORDER = 32
# A header claiming more than a day, or fewer than one frame per 10 s, is not trusted to refuse a video
# before its frames are indexed.
_MAX_HEADER_S = 24 * 3600.0
_MIN_HEADER_FPS = 0.1
# Frame rates taken at face value when frames must be timed by their count; 25 fps where none is.
_RATE_RANGE = (0.1, 500.0)
_FALLBACK_RATE = Fraction(25)
_IMAGE_CODECS = {"png", "apng", "mjpeg", "gif", "bmp", "tiff", "webp", "jpegxl", "jpeg2000"}


@dataclass(frozen=True)
class Orientation:
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
class Probe:
    """What one demux pass and one decoded frame tell about a video track.

    stream_index: the track's index among all of the container's streams (container.streams[i]).
    video_streams: how many video streams the container has (cover pictures included).
    pts: (N,) int64 presentation timestamps in `time_base` units, ascending (index = frame index).
    decode_order: (N,) int64 frame index of the k-th packet in decode order.
    keyframe: (N,) bool, True where the k-th packet in decode order is a keyframe.
    packet_bytes: (N,) int64 size of the k-th packet in decode order.
    container: the demuxer's first name ("mov", "matroska", "mpegts", "avi", ...).
    profile: the codec profile as FFmpeg names it ("High", "Constrained Baseline", ...; "" where none).
    in_order_only: True when the track has no usable timestamps: frames can only be counted in order, and
        are timed by the frame rate.
    open_options: the demuxer options every decoder must open the file with to see the same packets.
    notes: sentences for the user on how the video is read, where it is not read as usual.
    """

    stream_index: int
    video_streams: int
    container: str
    codec: str
    profile: str
    width: int
    height: int
    time_base: Fraction
    pts: np.ndarray
    decode_order: np.ndarray
    keyframe: np.ndarray
    packet_bytes: np.ndarray
    last_frame_duration: float
    orientation: Orientation
    in_order_only: bool = False
    open_options: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = ()

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

    def open(self, path: Path) -> av.container.InputContainer:
        """The file opened as the probe read it; `self.stream(container)` is the probed track."""
        return open_container(path, dict(self.open_options))

    def stream(self, container: av.container.InputContainer) -> av.video.stream.VideoStream:
        return container.streams[self.stream_index]

    def seek_starts(self, targets: np.ndarray) -> np.ndarray:
        """(T,) decode-order position of the keyframe to start decoding from, for each target frame.

        The last keyframe at or before the target in decode order whose own frame is not later than the
        target: a frame shown before its keyframe (open GOP) may reference the previous group of frames.
        """
        keys = np.flatnonzero(self.keyframe)
        starts = np.zeros(targets.size, dtype=np.int64)
        for i, target in enumerate(targets):
            j = np.searchsorted(keys, self.position[target], side="right") - 1
            while j >= 0 and self.decode_order[keys[j]] > target:
                j -= 1
            starts[i] = keys[j] if j >= 0 else 0
        return starts


def orientation(frame: av.VideoFrame) -> Orientation:
    """The transform that makes `frame` upright, from its display matrix, exactly as FFmpeg's autorotate.

    FFmpeg (fftools/ffmpeg_filter.c, ffplay.c) takes theta = -round(av_display_rotation_get(m)) and
    picks transpose / hflip / vflip by the signs of m; we do the same with np.rot90 and flips.
    """
    side_data = frame.side_data.get(av.sidedata.sidedata.Type.DISPLAYMATRIX) if frame.side_data else None
    if side_data is None:
        return Orientation()
    m = struct.unpack("=9i", bytes(side_data))  # 3x3 row-major, 16.16 fixed point
    scale0, scale1 = math.hypot(m[0], m[3]), math.hypot(m[1], m[4])
    if scale0 == 0 or scale1 == 0:
        return Orientation()
    theta = math.degrees(math.atan2(m[1] / scale1, m[0] / scale0))  # = -av_display_rotation_get(m)
    # Angles other than quarter turns do not occur in practice; the nearest quarter turn is the sane reading.
    theta = round(theta / 90) * 90 % 360
    if theta == 90:  # FFmpeg: transpose=cclock_flip if m[3] > 0 else transpose=clock
        return Orientation(90, 1, vflip=True) if m[3] > 0 else Orientation(90, 3)
    if theta == 270:  # FFmpeg: transpose=clock_flip if m[3] < 0 else transpose=cclock
        return Orientation(270, 3, vflip=True) if m[3] < 0 else Orientation(270, 1)
    if theta == 180:  # FFmpeg: hflip if m[0] < 0, vflip if m[4] < 0
        return Orientation(180, 0, vflip=m[4] < 0, hflip=m[0] < 0)
    return Orientation(0, 0, vflip=m[4] < 0)


def choose_video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    """The video track players show: the first one flagged default, else the first; a cover picture
    embedded in an audio file does not count."""
    tracks = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not tracks:
        if container.streams.audio:
            raise VideoError("This file contains only audio, no video track; upload a file with video.")
        raise VideoError(f"This file contains no video track; upload a video file such as {VIDEO_EXAMPLES}.")
    defaults = [s for s in tracks if s.disposition & av.stream.Disposition.default]
    return (defaults or tracks)[0]


class _InvalidTimeScale(Exception):
    """The MP4 track's time scale is invalid: read it again with its edit list ignored."""


def probe(path: Path, max_duration_s: float) -> Probe:
    """Open the file with PyAV, check what can be checked cheaply, then index every frame."""
    try:
        return _probe(path, max_duration_s, ())
    except _InvalidTimeScale:
        # FFmpeg's MP4 reader replaces a time scale of 0 by 1, then drops the frames that the edit list
        # (in valid movie-time units) no longer covers: all but the first. Without the edit list every
        # frame is there, to be counted in order.
        return _probe(path, max_duration_s, (("ignore_editlist", "1"),))


def open_container(path: Path, options: dict[str, str]) -> av.container.InputContainer:
    """The file opened for reading, undecodable metadata ignored: PyAV 18 takes `metadata_errors="ignore"`;
    PyAV 19 dropped the argument (and no longer fails on such metadata)."""
    try:
        return av.open(str(path), metadata_errors="ignore", options=options)
    except TypeError:
        return av.open(str(path), options=options)


def _probe(path: Path, max_duration_s: float, options: tuple[tuple[str, str], ...]) -> Probe:
    try:
        container = open_container(path, dict(options))
    except LIBRARY_ERRORS as err:
        raise VideoError(DAMAGED) from err
    with container:
        if container.format.name == "image2" or container.format.name.endswith("_pipe"):
            raise image_error(container.format.name.removesuffix("_pipe").upper())
        stream = choose_video_stream(container)
        if stream.codec_context is None:  # FFmpeg knows the container but has no decoder for the track
            raise VideoError("The video uses a codec that cannot be decoded here; convert it to H.264 .mp4.")
        codec = stream.codec_context.name
        time_base = _time_base(container, stream)
        if time_base is None and not options and container.format.name.startswith("mov"):
            raise _InvalidTimeScale
        header_duration = _header_duration(container, stream) if time_base is not None else None
        # Fail a 3-hour lecture before reading all of it; headers can be a little off, so the exact
        # check waits for the index unless the header is far beyond the limit.
        if header_duration is not None and header_duration > 1.1 * max_duration_s:
            check_duration(header_duration, max_duration_s)
        width, height = stream.codec_context.width, stream.codec_context.height
        if width and height:
            check_resolution(width, height)
        try:
            packets, demuxed, first_frame = _index_packets(container, stream)
        except LIBRARY_ERRORS as err:
            raise VideoError(DAMAGED) from err
        if not packets:
            raise VideoError("The video track contains no frames; upload a video that plays.")
        if first_frame is None:
            raise VideoError(
                f"None of the video's frames could be decoded (codec '{codec}'): the file is damaged or its codec "
                "is unsupported; export it again as H.264 .mp4."
            )
        check_resolution(first_frame.width, first_frame.height)
        track = {"stream_index": stream.index, "video_streams": len(container.streams.video), "codec": codec,
                 "profile": stream.codec_context.profile or ""}  # fmt: skip
        probe = _build_probe(stream, track | {"open_options": options}, packets, first_frame, time_base)
        # Only MP4/MOV headers state an exact frame count (their sample tables).
        expected = stream.frames if container.format.name.startswith("mov,mp4") else 0
    if probe.total_frames == 1 and codec in _IMAGE_CODECS:
        raise image_error(codec.upper())
    if demuxed < expected:  # the header lists frames the file no longer holds
        total = format_seconds(header_duration or expected / probe.fps)
        raise VideoError(
            f"The video is truncated: only {format_seconds(probe.duration)} of its {total} could be read (an "
            "incomplete download?); download or export it again."
        )
    check_duration(probe.duration, max_duration_s)
    return probe


def _time_base(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> Fraction | None:
    """The track's time base, or None where it is invalid.

    FFmpeg's MP4 reader turns a time scale of 0 into 1 (libavformat/mov.c, mov_read_mdhd); no MP4 writer
    counts a video track in whole seconds (FFmpeg's uses 10,000 ticks a second and more).
    """
    time_base = stream.time_base
    if time_base is None or time_base <= 0 or (time_base == 1 and container.format.name.startswith("mov")):
        return None
    return Fraction(time_base)


def _header_duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float | None:
    """The duration the header claims, in seconds, or None when it does not say or says nonsense."""
    if stream.duration and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration:
        seconds = container.duration / av.time_base
        if container.format.name.startswith("matroska") and container.start_time:
            # Matroska's Segment duration is the last frame's end time: a clip cut from an hour into a
            # recording, timestamps kept, claims the hour too.
            seconds -= container.start_time / av.time_base
    else:
        return None
    frames = stream.frames  # MP4/MOV's sample tables count the frames
    if not 0 < seconds <= _MAX_HEADER_S or (frames and frames / seconds < _MIN_HEADER_FPS):
        return None  # a wrapped or damaged timestamp: the frame index will tell
    return seconds


# One demuxed packet: (pts, or dts when pts is missing; is_keyframe; duration, in the stream's time base; bytes).
_Packet = tuple[int | None, bool, int, int]


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
        packets.append((pts, packet.is_keyframe, packet.duration or 0, packet.size))
    if first_frame is None:
        first_frame = _first_frame(decoder, None)  # frames held back by the decoder's reordering delay
    return packets, demuxed, first_frame


def _first_frame(decoder, packet) -> av.VideoFrame | None:
    try:
        frames = decoder.decode(packet)
    except av.FFmpegError:  # a damaged packet; later ones may decode
        return None
    return frames[0] if frames else None


def _build_probe(stream, track: dict, packets: list[_Packet], first_frame, time_base: Fraction | None) -> Probe:
    """Turn demuxed packets into the frame index: presentation order, decode order, keyframes; counted in
    order where the timestamps cannot be used."""
    common = track | {
        "container": stream.container.format.name.split(",")[0],
        "width": first_frame.width,
        "height": first_frame.height,
        "orientation": orientation(first_frame),
    }
    pts_list = [p[0] for p in packets]
    # AVI stores no presentation times: with B-frames its packet "pts" follow decode order.
    reordering_avi = common["container"] == "avi" and stream.codec_context.codec.reorder
    if reordering_avi or None in pts_list or len(set(pts_list)) != len(pts_list):
        return _in_order(stream, common, packets, problem=None)  # raw streams, AVI: no timestamps to use
    if time_base is None:
        return _in_order(stream, common, packets, problem="its track declares no valid time scale")
    problem = _timestamp_problem(np.array(pts_list, dtype=np.int64), time_base)
    if problem is not None:
        return _in_order(stream, common, packets, problem)
    if first_frame.pts is not None:
        # Frames shown before the first decodable one (a recording cut mid-GOP) can never be decoded.
        packets = [p for p in packets if p[0] >= first_frame.pts]
    return _timed(stream, common, packets, time_base)


def _timed(stream, common: dict, packets: list[_Packet], time_base: Fraction) -> Probe:
    """The index of a track with usable timestamps: frames in presentation order."""
    pts = np.array([p[0] for p in packets], dtype=np.int64)  # (N,) in decode order
    order = np.argsort(pts, kind="stable")  # frame index -> decode-order position
    decode_order = np.empty_like(order)
    decode_order[order] = np.arange(order.size)
    last_duration = float(packets[order[-1]][2] * time_base)
    if last_duration <= 0:  # unknown: use the typical spacing of the other frames
        gaps = np.diff(pts[order])
        last_duration = float(np.median(gaps) * time_base) if gaps.size else 1 / float(stream.average_rate or 25)
    return Probe(
        **common, time_base=time_base, pts=pts[order], decode_order=decode_order,
        keyframe=np.array([p[1] for p in packets], dtype=bool),
        packet_bytes=np.array([p[3] for p in packets], dtype=np.int64), last_frame_duration=last_duration,
    )  # fmt: skip


def _timestamp_problem(pts: np.ndarray, time_base: Fraction) -> str | None:
    """Why (N,) presentation timestamps in decode order cannot be trusted, in words for the user, or None."""
    order = np.argsort(pts, kind="stable")  # (N,) decode-order position of each frame
    if np.abs(order - np.arange(order.size)).max(initial=0) > _MAX_REORDER:
        return "they go backwards"
    gaps = np.diff(pts[order]) * float(time_base)  # (N - 1,) seconds between consecutive frames
    if gaps.size and gaps.max() > _MAX_FRAME_GAP_S:
        return "they jump by more than an hour between two frames"
    return None


def _nominal_rate(stream: av.video.stream.VideoStream) -> Fraction | None:
    """The track's frame rate as its headers state it, or None where none is plausible."""
    low, high = _RATE_RANGE
    for rate in (stream.average_rate, stream.guessed_rate, stream.codec_context.framerate):
        if rate and low <= rate <= high:
            return Fraction(rate)
    return None


def _in_order(stream, common: dict, packets: list[_Packet], problem: str | None) -> Probe:
    """The index of a track whose timestamps cannot be used: frames counted in decode order, timed by the
    frame rate; with a note for the user when `problem` says why the timestamps were not used."""
    rate = _nominal_rate(stream)
    notes: tuple[str, ...] = ()
    if problem is not None:
        timed = f"{float(rate):.2f}".rstrip("0").rstrip(".") + " fps" if rate else "25 fps (its frame rate is unknown)"
        notes = (f"This video's timestamps are unusable ({problem}), so its frames were read in order and timed at "
                 f"{timed}.",)  # fmt: skip
    time_base = 1 / (rate or _FALLBACK_RATE)
    ts = np.arange(len(packets), dtype=np.int64)
    return Probe(
        **common, time_base=time_base, pts=ts, decode_order=ts, keyframe=np.array([p[1] for p in packets], dtype=bool),
        packet_bytes=np.array([p[3] for p in packets], dtype=np.int64), last_frame_duration=float(time_base),
        in_order_only=True, notes=notes,
    )  # fmt: skip
