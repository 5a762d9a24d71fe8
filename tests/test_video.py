"""Video input: exact sampling, real timestamps, rotation, formats, and one clear error per bad input.

Every video here is written by the test itself with PyAV (or OpenCV), most of them "self-numbering":
frame i carries i as a row of black/white blocks, so a decoded frame says which source frame it is.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import _media as media
from tests._media import HEIGHT, WIDTH, frame_number, numbered_frame
from vcast.models.inputs import clip_to_processor_kwargs
from vcast.video import VideoClip, VideoError, decord_backend, read_video, sample_indices


def write_video(path: Path, frames: np.ndarray, *, options: dict[str, str] | None = None, **kwargs) -> Path:
    """`_media.write_video` at high quality (x264 crf 12), so that decoded pixels stay near the originals."""
    if kwargs.get("codec", "libx264") == "libx264":
        options = {"crf": "12", **(options or {})}
    return media.write_video(path, frames, options=options, **kwargs)


def numbered_video(path: Path, count: int, **kwargs) -> Path:
    return write_video(path, np.stack([numbered_frame(i) for i in range(count)]), **kwargs)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """Small self-numbering clips shared by the tests (written once per run)."""
    root = tmp_path_factory.mktemp("clips")
    return {
        "cfr": numbered_video(root / "cfr.mp4", 50),
        "long_gop": numbered_video(root / "gop.mp4", 90, options={"g": "30", "bf": "3"}),
        "vp9": numbered_video(root / "vp9.webm", 24, codec="libvpx-vp9"),
        "mjpeg": numbered_video(root / "mjpeg.avi", 24, codec="mjpeg", pix_fmt="yuvj420p"),
        "gif": numbered_video(root / "anim.gif", 24, codec="gif", pix_fmt="rgb8"),
        "h264_10bit": numbered_video(root / "10bit.mp4", 24, pix_fmt="yuv420p10le"),
        "hevc_10bit": numbered_video(
            root / "10bit_hevc.mp4", 24, codec="libx265", pix_fmt="yuv420p10le", options={"x265-params": "log-level=0"}
        ),
        "gray": numbered_video(root / "gray.mkv", 24, codec="ffv1", pix_fmt="gray"),
    }


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_indices_and_timestamps_are_exact_on_a_self_numbering_clip(clips, backend):
    clip = read_video(clips["cfr"], num_frames=8, backend=backend)
    expected = np.linspace(0, 49, 8).round().astype(np.int64)
    assert clip.backend == backend
    np.testing.assert_array_equal(clip.indices, expected)
    assert [frame_number(f) for f in clip.frames] == expected.tolist()
    np.testing.assert_allclose(clip.timestamps, expected / 10, rtol=0, atol=1e-9)
    assert clip.total_frames == 50 and clip.fps == pytest.approx(10.0) and clip.duration == pytest.approx(5.0)
    assert clip.frames.shape == (8, HEIGHT, WIDTH, 3) and clip.frames.dtype == np.uint8


def test_seeking_decoder_finds_every_frame_across_groups_of_pictures(clips):
    """Targets in every position of 30-frame GOPs with B-frames: seeks, decoding on, skipped frames."""
    clip = read_video(clips["long_gop"], num_frames=30, backend="pyav")
    assert [frame_number(f) for f in clip.frames] == clip.indices.tolist()
    dense = read_video(clips["long_gop"], num_frames=90, max_frames=90, backend="pyav")
    assert [frame_number(f) for f in dense.frames] == list(range(90))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(half=st.integers(1, 45), max_side_px=st.sampled_from([160, 100]))
def test_any_frame_count_gives_the_asked_frames(clips, half, max_side_px):
    clip = read_video(clips["long_gop"], num_frames=2 * half, max_frames=90, max_side_px=max_side_px, backend="pyav")
    assert clip.indices.tolist() == np.linspace(0, 89, 2 * half).round().astype(int).tolist()
    assert [frame_number(f) for f in clip.frames] == clip.indices.tolist()
    assert clip.frames.shape[1:] == ((HEIGHT, WIDTH, 3) if max_side_px == WIDTH else (60, 100, 3))


def test_paths_with_spaces_and_non_ascii_characters(tmp_path):
    folder = tmp_path / "my vidéos 日本"
    folder.mkdir()
    path = numbered_video(folder / "clip été.mp4", 12)
    for backend in ("auto", "pyav"):
        clip = read_video(path, num_frames=4, backend=backend)
        assert [frame_number(f) for f in clip.frames] == clip.indices.tolist()


CONTAINERS = {
    # name: write_video kwargs; every one with B-frames or other reordering where the codec has it
    "h264.mp4": {"options": {"g": "12", "bf": "3"}},
    "h264.mkv": {"options": {"g": "12", "bf": "3"}},
    "h264.ts": {"fmt": "mpegts", "options": {"g": "12", "bf": "3"}},
    "h264.avi": {"options": {"g": "12", "bf": "3"}},
    "h264.flv": {"options": {"g": "12", "bf": "3"}},
    "hevc.mp4": {"codec": "libx265", "options": {"x265-params": "log-level=0:keyint=12:bframes=3"}},
    "mpeg4.mov": {"codec": "mpeg4", "options": {"g": "12", "bf": "2"}},
    "vp8.webm": {"codec": "libvpx", "options": {"g": "12"}},
}


@pytest.mark.parametrize("name", list(CONTAINERS))
def test_every_container_gives_exactly_the_asked_frames(tmp_path, name):
    """decord2 returns wrong frames for several of these (TS, AVI, FLV, HEVC, MPEG-4 B-frames): auto must not."""
    path = numbered_video(tmp_path / name, 60, **CONTAINERS[name])
    for num_frames in (4, 16, 60):
        clip = read_video(path, num_frames=num_frames, max_frames=60)
        assert [frame_number(f) for f in clip.frames] == clip.indices.tolist(), (clip.backend, num_frames)
        np.testing.assert_allclose(clip.timestamps, clip.indices / 10, atol=1e-9)


def test_forcing_decord_where_it_is_not_exact_is_refused(tmp_path):
    path = numbered_video(tmp_path / "h264.ts", 24, fmt="mpegts")
    with pytest.raises(VideoError, match=r"use backend='auto' or 'pyav'"):
        read_video(path, num_frames=4, backend="decord")


@pytest.mark.parametrize(("duration_s", "fps", "max_frames", "expected"), [(5.0, 2.0, 256, 10), (5.0, 100.0, 16, 16)])
def test_fps_sampling_count_is_even_and_clamped(clips, duration_s, fps, max_frames, expected):
    clip = read_video(clips["cfr"], fps=fps, max_frames=max_frames)
    assert clip.num_frames == expected and clip.num_frames % 2 == 0
    assert clip.sampling_fps == pytest.approx(expected / duration_s)


def test_fps_sampling_never_repeats_frames_and_keeps_at_least_two(tmp_path):
    few = read_video(numbered_video(tmp_path / "three.mp4", 3), fps=30.0)
    assert few.indices.tolist() == [0, 2]  # 3 frames: the largest even count of distinct frames
    one = read_video(numbered_video(tmp_path / "one.mp4", 1))
    assert one.indices.tolist() == [0, 0] and np.array_equal(one.frames[0], one.frames[1])


@settings(max_examples=200, deadline=None)
@given(total=st.integers(1, 5000), half=st.integers(1, 200))
def test_sampling_matches_transformers_qwen3_vl_sampler(total, half):
    from transformers import Qwen3VLVideoProcessor
    from transformers.video_utils import VideoMetadata

    num_frames = 2 * half
    ours = sample_indices(total, total / 30, num_frames=num_frames, max_frames=400)
    if num_frames <= total:  # the Qwen sampler caps the count at the number of frames
        theirs = Qwen3VLVideoProcessor().sample_frames(VideoMetadata(total_num_frames=total, fps=30.0), num_frames)
        np.testing.assert_array_equal(ours, theirs)
    assert ours.size == num_frames and ours[0] == 0 and ours[-1] == total - 1 and (np.diff(ours) >= 0).all()


def test_variable_frame_rate_timestamps_come_from_the_container(tmp_path):
    pts_ms = [0, 100, 200, 250, 300, 600, 700, 710, 720, 1000, 1500, 1533]
    for name in ("vfr.mkv", "vfr.mp4"):
        path = numbered_video(tmp_path / name, len(pts_ms), pts_ms=pts_ms, fps=30)
        clip = read_video(path, num_frames=len(pts_ms), max_frames=len(pts_ms))
        assert clip.indices.tolist() == list(range(len(pts_ms)))
        assert [frame_number(f) for f in clip.frames] == clip.indices.tolist()
        np.testing.assert_allclose(clip.timestamps, np.array(pts_ms) / 1000, rtol=0, atol=1e-9)
        assert clip.duration > 1.533 and clip.fps == pytest.approx(len(pts_ms) / clip.duration)


def _marked_frames(count: int = 4) -> np.ndarray:
    """(N, 96, 160, 3) frames, black with a white block in the top-left corner."""
    frames = np.zeros((count, HEIGHT, WIDTH, 3), np.uint8)
    frames[:, :32, :48] = 255
    return frames


def _white_corner(frame: np.ndarray) -> str:
    h, w = frame.shape[0] // 4, frame.shape[1] // 4
    corners = {"top-left": frame[:h, :w], "top-right": frame[:h, -w:], "bottom-left": frame[-h:, :w]}
    corners["bottom-right"] = frame[-h:, -w:]
    return max(corners, key=lambda name: corners[name].mean())


@pytest.mark.parametrize(
    ("rotation", "hflip", "degrees", "shape", "corner"),
    [
        (-90, False, 90, (WIDTH, HEIGHT), "top-right"),  # a phone held upright: turn clockwise
        (90, False, 270, (WIDTH, HEIGHT), "bottom-left"),
        (180, False, 180, (HEIGHT, WIDTH), "bottom-right"),
        (0, True, 180, (HEIGHT, WIDTH), "top-right"),  # mirrored (FFmpeg reads it as 180 + vflip)
    ],
)
@pytest.mark.skipif(
    not hasattr(av.video.stream.VideoStream, "set_display_rotation"), reason="writing rotation needs PyAV >= 18"
)
def test_rotation_metadata_is_applied(tmp_path, rotation, hflip, degrees, shape, corner):
    path = write_video(tmp_path / "rotated.mp4", _marked_frames(), rotation=rotation, hflip=hflip)
    clip = read_video(path, num_frames=2)
    assert clip.rotation == degrees
    assert clip.frames.shape[1:3] == shape and clip.source_size == shape
    assert _white_corner(clip.frames[0]) == corner
    assert clip.backend == "pyav"  # decord2 mishandles rotation, so auto must not use it
    assert clip.frames.flags["C_CONTIGUOUS"]


@pytest.mark.parametrize("name", ["h264_10bit", "hevc_10bit", "gray"])
def test_grayscale_and_10_bit_become_8_bit_rgb(clips, name):
    clip = read_video(clips[name], num_frames=4)
    assert clip.frames.dtype == np.uint8 and clip.frames.shape == (4, HEIGHT, WIDTH, 3)
    assert [frame_number(f) for f in clip.frames] == clip.indices.tolist()
    if name == "gray":
        assert np.array_equal(clip.frames[..., 0], clip.frames[..., 1])
        assert np.array_equal(clip.frames[..., 1], clip.frames[..., 2])
    else:
        expected = np.stack([numbered_frame(i) for i in clip.indices])
        assert np.abs(clip.frames[:, 40:, 10:-10].astype(int) - expected[:, 40:, 10:-10]).mean() < 3


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_large_frames_are_downscaled_keeping_the_aspect_ratio(tmp_path, backend):
    frames = np.stack([numbered_frame(i, 360, 640) for i in range(4)])
    path = write_video(tmp_path / "big.mp4", frames)
    clip = read_video(path, num_frames=4, max_side_px=320, backend=backend)
    assert clip.frames.shape == (4, 180, 320, 3) and clip.source_size == (360, 640)
    assert [frame_number(f) for f in clip.frames] == [0, 1, 2, 3]


@pytest.mark.parametrize("name", ["cfr", "vp9", "mjpeg", "gif", "h264_10bit", "gray"])
def test_decord_and_pyav_give_the_same_frames(clips, name):
    a = read_video(clips[name], num_frames=6, backend="decord")
    b = read_video(clips[name], num_frames=6, backend="pyav")
    assert (a.backend, b.backend) == ("decord", "pyav")
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.timestamps, b.timestamps)
    diff = np.abs(a.frames.astype(int) - b.frames.astype(int))
    # 8-bit sources convert identically; 10-bit ones differ by dithering, at a few edge pixels.
    assert diff.mean() < 0.5 and np.percentile(diff, 99) <= 2


def test_auto_uses_pyav_when_decord_is_not_installed(clips, monkeypatch):
    monkeypatch.setattr(decord_backend, "decord_module", lambda: None)
    clip = read_video(clips["cfr"], num_frames=4)
    assert clip.backend == "pyav" and [frame_number(f) for f in clip.frames] == clip.indices.tolist()
    with pytest.raises(ImportError, match="pip install decord2"):
        read_video(clips["cfr"], num_frames=4, backend="decord")


def test_auto_prefers_decord_and_falls_back_when_decord_cannot_read(tmp_path, clips):
    assert read_video(clips["cfr"], num_frames=2).backend == "decord"
    frames = np.stack([numbered_frame(i, 64, 96) for i in range(4)])
    small = write_video(tmp_path / "small.mp4", frames)  # decord2 3.4 fails on 96 x 64 frames
    clip = read_video(small, num_frames=4)
    assert clip.backend == "pyav" and clip.frames.shape == (4, 64, 96, 3)


def test_opencv_written_clip_reads_with_exact_indices(tmp_path):
    path = str(tmp_path / "opencv.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 8.0, (WIDTH, HEIGHT))
    for i in range(16):
        writer.write(cv2.cvtColor(numbered_frame(i), cv2.COLOR_RGB2BGR))
    writer.release()
    clip = read_video(path, num_frames=4)
    assert [frame_number(f) for f in clip.frames] == clip.indices.tolist() == [0, 5, 10, 15]
    np.testing.assert_allclose(clip.timestamps, np.array([0, 5, 10, 15]) / 8, atol=1e-9)


def _truncated(path: Path, source: Path, fraction: float, faststart: bool) -> Path:
    if faststart:
        frames = np.stack([numbered_frame(i) for i in range(40)])
        with av.open(str(source), "w", options={"movflags": "faststart"}) as container:
            stream = container.add_stream("libx264", rate=10)
            stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
            for rgb in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
            container.mux(stream.encode())
    data = source.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def _empty_track(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        container.start_encoding()  # write the header, then no frames at all
    return path


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


BAD_INPUTS = {
    # name: (make(tmp_path, clips) -> path, read_video kwargs, pattern the message must match)
    "missing": (lambda d, c: d / "nowhere.mp4", {}, r"No video file at"),
    "folder": (lambda d, c: d, {}, r"is a folder"),
    "empty": (lambda d, c: _bytes(d / "empty.mp4", b""), {}, r"empty"),
    "text": (lambda d, c: _bytes(d / "notes.mp4", "Grüße, hello\n".encode() * 50), {}, r"text file"),
    "png": (lambda d, c: media.png(d / "still.png"), {}, r"still image \(PNG\)"),
    "png_renamed": (lambda d, c: media.png(d / "still.png").rename(d / "still.mp4"), {}, r"still image \(PNG\)"),
    "jpeg": (
        lambda d, c: cv2.imwrite(str(d / "a.jpg"), numbered_frame(1)) and d / "a.jpg",
        {},
        r"still image \(JPEG\)",
    ),
    "one_frame_gif": (lambda d, c: numbered_video(d / "still.gif", 1, codec="gif", pix_fmt="rgb8"), {}, r"image"),
    "wav": (lambda d, c: media.wav(d / "sound.wav"), {}, r"only audio"),
    "m4a": (lambda d, c: media.m4a(d / "sound.m4a"), {}, r"only audio"),
    "garbage": (lambda d, c: _bytes(d / "x.mp4", bytes(range(256)) * 64), {}, r"damaged"),
    "truncated_moov_at_end": (
        lambda d, c: _truncated(d / "cut.mp4", c["cfr"], 0.7, faststart=False),
        {},
        r"truncated|damaged",
    ),
    "truncated_download": (lambda d, c: _truncated(d / "cut.mp4", d / "fs.mp4", 0.5, faststart=True), {}, r"truncated"),
    "no_frames": (lambda d, c: _empty_track(d / "none.mp4"), {}, r"no frames|no video track"),
    "too_long": (lambda d, c: c["cfr"], {"max_duration_s": 2.0}, r"5\.0 s long, more than the 2\.0 s limit"),
    "too_big": (lambda d, c: c["cfr"], {"max_file_mb": 0.001}, r"more than the 0\.0 MB limit|limit"),
    "too_narrow": (
        lambda d, c: write_video(d / "thin.mp4", np.zeros((2, 4, 1000, 3), np.uint8)),
        {},
        r"times wider than tall",
    ),
}


@pytest.mark.parametrize("kind", list(BAD_INPUTS))
def test_every_bad_input_raises_one_video_error_naming_the_problem(tmp_path, clips, kind):
    make, kwargs, pattern = BAD_INPUTS[kind]
    path = make(tmp_path, clips)
    with pytest.raises(VideoError) as caught:
        read_video(path, **kwargs)
    message = str(caught.value)
    assert re.search(pattern, message), message
    assert message.endswith(".") and "\n" not in message and len(message) < 300


def test_limits_are_named_in_the_message_as_people_say_them(tmp_path, clips):
    slow = numbered_video(tmp_path / "slow.mkv", 2, pts_ms=[0, 100_000], fps=1)  # 2 frames 100 s apart, 1 s each
    with pytest.raises(VideoError, match=r"is 1 min 41 s long, more than the 1 min 30 s limit; trim it"):
        read_video(slow, max_duration_s=90.0)
    with pytest.raises(VideoError, match=r"MB, more than the 0\.0 MB limit; trim or compress"):
        read_video(clips["cfr"], max_file_mb=0.00001)


def test_bad_settings_are_value_errors_for_the_caller_not_video_errors(clips):
    for kwargs in ({"num_frames": 7}, {"num_frames": 0}, {"max_frames": 9}, {"fps": 0.0}, {"backend": "opencv"}):
        with pytest.raises(ValueError) as caught:
            read_video(clips["cfr"], **kwargs)
        assert not isinstance(caught.value, VideoError)


def test_no_temp_files_are_left_behind(tmp_path, clips, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    read_video(clips["cfr"], num_frames=4)
    read_video(clips["gif"], num_frames=4)
    with pytest.raises(VideoError):
        read_video(_truncated(tmp_path / "cut.mp4", clips["cfr"], 0.5, faststart=False))
    assert list(scratch.iterdir()) == []


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0.0, 1.0), flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=8))
def test_damaged_files_give_a_clip_or_a_video_error_never_anything_else(clips, tmp_path_factory, cut, flips):
    data = bytearray(clips["long_gop"].read_bytes())
    for where, value in flips:
        data[int(where * (len(data) - 1))] = value
    path = tmp_path_factory.mktemp("damaged") / "damaged.mp4"
    path.write_bytes(bytes(data[: max(1, int(cut * len(data)))]))
    try:
        clip = read_video(path, num_frames=6)
    except VideoError as err:
        assert str(err).endswith(".")
        return
    assert clip.frames.shape[0] == 6 and clip.frames.dtype == np.uint8 and clip.timestamps.shape == (6,)


def _offline_qwen3_vl_processor():
    """The real Qwen3-VL processor with a throwaway word-level tokenizer: no downloads."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    specials = ["<|video_pad|>", "<|image_pad|>", "<|vision_start|>", "<|vision_end|>"]
    vocab = {token: i for i, token in enumerate([*specials, "<unk>"])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", additional_special_tokens=specials)
    video_processor = Qwen3VLVideoProcessor(
        size={"shortest_edge": 32 * 32, "longest_edge": 64 * 32 * 32 * 64}, cap_pixels_per_frame=True
    )
    return Qwen3VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=fast, video_processor=video_processor)


def test_processor_kwargs_give_one_temporal_group_per_frame_pair_and_the_clip_timestamps(clips):
    clip = read_video(clips["cfr"], num_frames=12)
    processor = _offline_qwen3_vl_processor()
    inputs = clip_to_processor_kwargs(clip)
    out = processor.video_processor(**inputs, return_metadata=True, return_tensors="pt")
    assert out["video_grid_thw"][0, 0].item() == clip.num_frames // 2

    # The prompt's "<t seconds>" of each temporal group: the mean time of its two frames.
    placeholder = processor.replace_video_token(out, 0)
    stamps = [float(t) for t in re.findall(r"<([\d.]+) seconds>", placeholder)]
    group_times = (clip.timestamps[0::2] + clip.timestamps[1::2]) / 2
    assert stamps == [float(f"{t:.1f}") for t in group_times]

    # Two runs see identical tensors: no resampling, no randomness.
    again = processor.video_processor(**clip_to_processor_kwargs(clip), return_tensors="pt")
    assert (out["pixel_values_videos"] == again["pixel_values_videos"]).all()


def test_processor_call_with_text_accepts_the_helper_output(clips):
    clip = read_video(clips["cfr"], num_frames=4)
    processor = _offline_qwen3_vl_processor()
    out = processor(text=["<|video_pad|>"], return_tensors="pt", **clip_to_processor_kwargs(clip))
    grid = out["video_grid_thw"][0]
    assert grid[0].item() == 2
    video_tokens = (out["input_ids"][0] == processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")).sum()
    assert video_tokens.item() == grid.prod().item() // 4


def test_clip_is_a_plain_record(clips):
    clip = read_video(clips["cfr"], num_frames=4)
    assert isinstance(clip, VideoClip) and clip.size == (HEIGHT, WIDTH)
    assert clip.indices.dtype == np.int64 and clip.timestamps.dtype == np.float64
    assert isinstance(clip.fps, float) and isinstance(clip.duration, float) and isinstance(clip.total_frames, int)
    with pytest.raises(AttributeError):
        clip.fps = 3.0  # frozen


def test_reading_a_file_object_path_and_str_agree(clips):
    as_str = read_video(str(clips["cfr"]), num_frames=4)
    as_path = read_video(clips["cfr"], num_frames=4)
    assert np.array_equal(as_str.frames, as_path.frames)
