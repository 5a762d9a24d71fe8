"""What is checked before and around decoding: settings, the file, its first bytes, size and shape limits,
and the sentences that say so."""

from __future__ import annotations

import math
from pathlib import Path

from .clip import VideoError

BACKENDS = ("auto", "decord", "pyav")
DEFAULT_MAX_FRAMES = 256
DEFAULT_MAX_DURATION_S = 600.0
DEFAULT_MAX_FILE_MB = 500.0
DEFAULT_MAX_SIDE_PX = 1280
DEFAULT_MAX_DECODE_S = 30.0

# Decoding one frame of more than 8192 x 8192 pixels needs gigabytes; 8K video is 7680 x 4320.
MAX_SOURCE_PIXELS = 8192 * 8192
# Qwen's processors reject frames more than 200 times wider than tall or vice versa (smart_resize in
# transformers' qwen2_vl and qwen3_vl processors).
MAX_ASPECT = 200
# The side lengths Qwen's processors round frames to (patch 14 x merge 2, patch 16 x merge 2): Qwen3-VL
# first scales a frame with a side below its factor up to it, truncating both sides to whole pixels.
PROCESSOR_FACTORS = (28, 32)
VIDEO_EXAMPLES = ".mp4, .mov, .webm or .mkv"
DAMAGED = (
    "The file could not be read as a video: it is damaged, truncated (an incomplete download?) or not a "
    f"video format; re-download it or export it again as {VIDEO_EXAMPLES}."
)


def check_settings(num_frames: int | None, fps: float, max_frames: int, backend: str, limits: dict[str, float | None]):
    """Raise ValueError (a caller's mistake, not the video's) for settings that cannot work.

    limits: name -> value of each limit that must be a number > 0; a None value means no limit and is
    accepted only for max_decode_s.
    """
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
        if value is None and name == "max_decode_s":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name} must be a number > 0{' or None' * (name == 'max_decode_s')}, got {value!r}")


def format_seconds(seconds: float) -> str:
    """A duration as people say it: '45.2 s', '12 min 30 s', '3 h 05 min'."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def format_about(seconds: float) -> str:
    """An estimate as people say it: '0.16 s', '4.5 s', '45 s', '4 min', '1 h 05 min' (no false precision)."""
    if seconds < 1:
        return f"{seconds:.2g} s"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{round(seconds)} s"
    return format_seconds(60 * round(seconds / 60))


def format_mb(size_mb: float) -> str:
    return f"{size_mb:,.1f} MB" if size_mb < 10 else f"{size_mb:,.0f} MB"


def check_file(path: Path, max_file_mb: float) -> bytes:
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
                f"The file is {format_mb(size_mb)}, more than the {format_mb(max_file_mb)} limit; "
                "trim or compress the video and try again."
            )
        with path.open("rb") as f:
            return f.read(4096)
    except OSError as err:
        raise VideoError(f"The file '{path}' could not be opened ({err.strerror}); check that it is readable.") from err


_IMAGE_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)
_IMAGE_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF", b"avif": "AVIF"}
ANIMATED = "animated"  # what _png_animation says of a PNG with an animation control chunk


def _png_animation(head: bytes) -> str | None:
    """'animated' when the PNG's chunks hold an animation control (acTL) before the image data (APNG),
    'still' when the image data comes first, None when `head` ends before either."""
    at = 8  # after the signature: chunks of length (4 bytes), type (4), data, CRC (4)
    while at + 8 <= len(head):
        kind = head[at + 4 : at + 8]
        if kind == b"acTL":
            return ANIMATED
        if kind == b"IDAT":
            return "still"
        at += 12 + int.from_bytes(head[at : at + 4], "big")
    return None


def _webp_is_animated(head: bytes) -> bool:
    """True for an animated WebP: an extended header (VP8X) with its animation flag, or an ANIM chunk."""
    return (head[12:16] == b"VP8X" and len(head) > 20 and bool(head[20] & 0x02)) or b"ANIM" in head[12:64]


def image_kind(head: bytes) -> str | None:
    """The image format whose signature starts `head` ('PNG', 'animated WebP', ...), or None.

    An animated PNG (APNG), or a PNG whose chunks `head` does not reach, is not called an image here:
    FFmpeg reads APNG as a video, and tells a still PNG from one when it opens it.
    """
    for signature, kind in _IMAGE_SIGNATURES:
        # BMP's 2-byte signature is weak; require the header size field of a real BMP too.
        if head.startswith(signature) and (
            kind != "BMP" or head[14:15] in (b"\x0c", b"\x28", b"\x34", b"\x38", b"\x6c", b"\x7c")
        ):
            return kind if kind != "PNG" or _png_animation(head) == "still" else None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "animated WebP" if _webp_is_animated(head) else "WebP"
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


def check_not_a_video(head: bytes) -> None:
    """Fail on a file that is plainly not a video, judged from its first bytes (FFmpeg would open some
    of these as one-frame videos, or as subtitles)."""
    kind = image_kind(head)
    if kind is not None:
        raise image_error(kind)
    if _looks_like_text(head) and not head.startswith(b"YUV4MPEG2"):  # y4m: raw video behind a text header
        raise VideoError(f"This is a text file, not a video; upload a video file such as {VIDEO_EXAMPLES}.")


def image_error(kind: str) -> VideoError:
    if kind == "animated WebP":  # FFmpeg 8.1's WebP decoder reads still images only
        return VideoError(
            "This is an animated WebP image, which cannot be decoded here; convert it to a video such as .mp4 "
            "and upload that."
        )
    return VideoError(f"This is a still image ({kind}), not a video; upload a video file such as {VIDEO_EXAMPLES}.")


def check_duration(duration_s: float, max_duration_s: float) -> None:
    if duration_s > max_duration_s:
        raise VideoError(
            f"The video is {format_seconds(duration_s)} long, more than the {format_seconds(max_duration_s)} "
            "limit; trim it and try again."
        )


def check_resolution(width: int, height: int) -> None:
    if width * height > MAX_SOURCE_PIXELS:
        raise VideoError(
            f"The video is {width}x{height} pixels, beyond the supported {MAX_SOURCE_PIXELS / 1e6:.0f} megapixels "
            "per frame; downscale it (for example to 1920x1080) and try again."
        )
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise VideoError(
            f"The video is {width}x{height} pixels; frames more than {MAX_ASPECT} times wider than tall (or taller "
            "than wide) are not supported."
        )


def processor_aspect(height: int, width: int) -> float:
    """The aspect ratio Qwen's processors check (smart_resize) for a frame of this size, the largest over
    their factors: Qwen3-VL first scales a side shorter than the factor up to it, truncating to whole pixels,
    which can stretch a frame a few pixels high beyond the ratio it had."""
    ratios = [max(height, width) / min(height, width)]
    for factor in PROCESSOR_FACTORS:
        if height < factor or width < factor:
            scale = max(factor / height, factor / width)
            h, w = int(height * scale), int(width * scale)
            ratios.append(max(h, w) / min(h, w))
    return max(ratios)


def check_output_aspect(source_wh: tuple[int, int], out_hw: tuple[int, int]) -> None:
    """Fail when the downscaled frames would be refused by the model's processor for their aspect ratio:
    rounding a short side of a few pixels can push a frame that passed `check_resolution` beyond it."""
    height, width = out_hw
    if processor_aspect(height, width) > MAX_ASPECT:
        shape = "wider than tall" if width > height else "taller than wide"
        raise VideoError(
            f"The video is {source_wh[0]}x{source_wh[1]} pixels; scaled to {width}x{height} for the model, its "
            f"frames would be more than {MAX_ASPECT} times {shape}, which the model does not accept; crop it to "
            "a less elongated shape and try again."
        )
