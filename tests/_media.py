"""Small media files written by the reliability tests themselves: good, odd and broken videos, images and audio.

Each writer takes the path to write and returns it; all are small (kilobytes) and quick (well under a second,
the 8K ones about one) and deterministic.
"""

from __future__ import annotations

import wave
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

HEIGHT, WIDTH = 96, 160


def frame(i: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """(H, W, 3) uint8 RGB: a colour that changes with i, a white marker that moves, a white top-left corner
    (so that an upright frame can be told from a turned one)."""
    rgb = np.empty((height, width, 3), np.uint8)
    rgb[:] = ((37 * i) % 200 + 30, (11 * i) % 200 + 30, 128)
    x = (16 * i) % max(width - 16, 1)
    rgb[height // 2 :, x : x + 16] = 255
    rgb[: height // 4, : width // 4] = 255
    return rgb


def write_video(
    path: Path,
    frames: list[np.ndarray] | np.ndarray,
    *,
    fps: int = 10,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    pts_ms: list[int] | None = None,
    rotation: int | None = None,
    hflip: bool = False,
    fmt: str | None = None,
    options: dict[str, str] | None = None,
) -> Path:
    """Encode (H, W, 3) uint8 RGB frames (a list or an (N, H, W, 3) array) with PyAV. pts_ms gives each
    frame's time (a variable frame rate); rotation and hflip write display-matrix metadata (degrees
    counter-clockwise, as PyAV takes them); fmt names the container; options are the encoder's (for
    libx264 the default is the ultrafast preset)."""
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], pix_fmt
        if options is not None:
            stream.options = options
        elif codec == "libx264":
            stream.options = {"preset": "ultrafast"}
        if pts_ms is not None:
            stream.codec_context.time_base = stream.time_base = Fraction(1, 1000)
        if rotation is not None or hflip:
            stream.set_display_rotation(rotation or 0, hflip=hflip)
        for i, rgb in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            if pts_ms is not None:
                video_frame.pts, video_frame.time_base = pts_ms[i], Fraction(1, 1000)
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode())
    return path


def clip(path: Path, count: int = 20, **kwargs) -> Path:
    """A plain landscape clip of `count` frames at 10 fps."""
    return write_video(path, [frame(i) for i in range(count)], **kwargs)


def flat_video(path: Path, width: int, height: int, count: int = 2) -> Path:
    """`count` grey frames of width x height, written plane by plane (no RGB copy of a huge frame)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        grey = av.VideoFrame(width, height, "yuv420p")
        for plane in grey.planes:
            plane.update(np.full(plane.buffer_size, 110, np.uint8).tobytes())
        for _ in range(count):
            container.mux(stream.encode(grey))
        container.mux(stream.encode())
    return path


def empty_track(path: Path) -> Path:
    """An MP4 whose video track holds no frames: what `ffmpeg -t 0` writes for a 0-second clip."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        container.start_encoding()
    return path


def faststart_clip(path: Path, count: int = 40) -> Path:
    """A clip with its index (moov) before the frames, as web players and uploads like it."""
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for i in range(count):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame(i), format="rgb24")))
        container.mux(stream.encode())
    return path


def truncated(path: Path, source: Path, fraction: float) -> Path:
    """The first `fraction` of source's bytes: an interrupted download."""
    data = source.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def corrupted(path: Path, source: Path, *, seed: int = 0) -> Path:
    """source with a quarter of its bytes, from a third of the way in, overwritten with random bytes."""
    data = bytearray(source.read_bytes())
    start, length = len(data) // 3, len(data) // 4
    data[start : start + length] = np.random.default_rng(seed).integers(0, 256, length, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def png(path: Path) -> Path:
    cv2.imwrite(str(path), cv2.cvtColor(frame(3), cv2.COLOR_RGB2BGR))
    return path


def wav(path: Path) -> Path:
    """One second of a tone, no video track."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes((np.sin(np.arange(8000) / 5) * 8000).astype(np.int16).tobytes())
    return path


def m4a(path: Path) -> Path:
    """AAC audio in an MP4 container (what a phone's voice memo is), no video track."""
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(10):
            samples = (np.sin(np.arange(1024) / 7 + i) * 0.3).astype(np.float32)[None]
            audio = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            audio.sample_rate, audio.pts = 16000, i * 1024
            container.mux(stream.encode(audio))
        container.mux(stream.encode())
    return path
