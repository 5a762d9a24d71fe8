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

HEIGHT, WIDTH = 96, 160  # decord2 3.4 mis-sizes some small frames (96 x 64); this size it reads
CODE_BITS = 10  # frame indices up to 1023, in 16-pixel blocks that survive lossy compression


def numbered_frame(i: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """(H, W, 3) uint8 RGB: the bits of i as white/black blocks in the top rows, a colour below."""
    frame = np.zeros((height, width, 3), np.uint8)
    block = width // CODE_BITS
    for bit in range(CODE_BITS):
        if i >> bit & 1:
            frame[: height // 3, bit * block : (bit + 1) * block] = 255
    frame[height // 3 :] = ((37 * i) % 200 + 30, (11 * i) % 200 + 30, 128)
    return frame


def frame_number(frame: np.ndarray) -> int:
    """Read back the index `numbered_frame` wrote (from an upright frame)."""
    height, width = frame.shape[:2]
    block = width // CODE_BITS
    rows = frame[4 : height // 3 - 4].astype(np.float64).mean(axis=(0, 2))  # (W,)
    bits = [rows[bit * block + 4 : (bit + 1) * block - 4].mean() > 128 for bit in range(CODE_BITS)]
    return sum(1 << bit for bit, on in enumerate(bits) if on)


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


# -- hostile inputs: tracks out of place, broken timestamps, costly decoding, animated images -----------------

# Solid colours far apart in RGB, so that a decoded frame says which one it is even after lossy compression.
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200)]


def solid(colour: tuple[int, int, int], height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """(H, W, 3) uint8 RGB of one colour."""
    return np.full((height, width, 3), colour, np.uint8)


def nearest_colour(rgb: np.ndarray, palette: list[tuple[int, int, int]] = COLOURS) -> tuple[int, int, int]:
    """The palette colour closest to the mean of an (H, W, 3) frame."""
    mean = rgb.reshape(-1, 3).mean(axis=0)
    return min(palette, key=lambda colour: float(np.abs(mean - colour).sum()))


def _add_audio(container: av.container.OutputContainer, fmt: str | None):
    """A silent audio stream: AAC (MP2 for MPEG-TS, which muxes it without extra setup)."""
    return container.add_stream("mp2" if fmt == "mpegts" else "aac", rate=16000)


def _mux_audio(container, stream, seconds: float) -> None:
    size = 1152 if stream.codec_context.name == "mp2" else 1024
    layout = "s16" if stream.codec_context.name == "mp2" else "fltp"
    dtype = np.int16 if layout == "s16" else np.float32
    for i in range(int(seconds * 16000 / size) + 1):
        audio = av.AudioFrame.from_ndarray(np.zeros((1, size), dtype), format=layout, layout="mono")
        audio.sample_rate, audio.pts = 16000, i * size
        container.mux(stream.encode(audio))
    container.mux(stream.encode())


def tracks(
    path: Path, videos: list[list[tuple[int, int, int]]], *, audio_first: bool = False, default: int | None = None,
    fmt: str | None = None, fps: int = 10,
) -> Path:  # fmt: skip
    """A file with one video track per list of colours (frame i of track t: solid videos[t][i]), after a silent
    audio track when audio_first; `default` flags that video track (and no other) as the default one."""
    with av.open(str(path), "w", format=fmt) as container:
        audio = _add_audio(container, fmt) if audio_first else None
        streams = []
        for t in range(len(videos)):
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
            stream.options = {"preset": "ultrafast", "crf": "12"}
            if default is not None:
                stream.disposition = av.stream.Disposition.default if t == default else av.stream.Disposition(0)
            streams.append(stream)
        for i in range(max(len(colours) for colours in videos)):
            for stream, colours in zip(streams, videos, strict=True):
                if i < len(colours):
                    container.mux(stream.encode(av.VideoFrame.from_ndarray(solid(colours[i]), format="rgb24")))
        if audio is not None:
            _mux_audio(container, audio, len(videos[0]) / fps)
        for stream in streams:
            container.mux(stream.encode())
    return path


def long_gop(path: Path, count: int, *, keyframe_every: int | None = None, height: int = 192, width: int = 320) -> Path:
    """`count` self-numbering frames with a keyframe every `keyframe_every` frames (default: only the first), no
    B-frames."""
    gop = str(keyframe_every or count)
    options = {"preset": "ultrafast", "crf": "12", "g": gop, "keyint_min": gop, "x264-params": "scenecut=0"}
    return write_video(path, [numbered_frame(i, height, width) for i in range(count)], options=options)


def packet_times(path: Path, frames: list[np.ndarray], pts_ms: list[int], *, fps: int = 10) -> Path:
    """An MKV (H.264, no B-frames) whose k-th frame is stored with presentation time pts_ms[k], whatever it is:
    repeated, going backwards, or jumping by hours, as broken remuxes and concatenations write them. (The
    writer's own timestamps are replaced packet by packet; decode times are the running minimum from the end,
    which Matroska accepts.)"""
    dts_ms = np.minimum.accumulate(np.array(pts_ms)[::-1])[::-1].tolist()  # non-decreasing, <= pts
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        stream.options = {"preset": "ultrafast", "bf": "0", "crf": "12"}
        stream.time_base = Fraction(1, 1000)
        packets = []
        for i, rgb in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            video_frame.pts, video_frame.time_base = i, Fraction(1, fps)
            packets += stream.encode(video_frame)
        packets += stream.encode()
        for packet, pts, dts in zip(packets, pts_ms, dts_ms, strict=True):  # no B-frames: packets in frame order
            packet.pts, packet.dts, packet.time_base = pts, dts, Fraction(1, 1000)
            container.mux(packet)
    return path


def zero_timescale(path: Path, source: Path) -> Path:
    """source (an MP4) with its video track's time scale (the mdhd box's) set to 0, which is invalid."""
    data = bytearray(source.read_bytes())
    box = data.find(b"mdhd")
    version = data[box + 4]
    at = box + 8 + (16 if version == 1 else 8)  # after version, flags, creation and modification times
    data[at : at + 4] = bytes(4)
    path.write_bytes(bytes(data))
    return path


def animated_image(path: Path, frames: list[np.ndarray], *, duration_ms: int = 100, **options) -> Path:
    """An animated WebP, PNG (APNG) or GIF, by path's suffix, written with Pillow."""
    from PIL import Image

    images = [Image.fromarray(rgb) for rgb in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration_ms, loop=0, **options)
    return path
