"""Hostile videos: small legal files that cost minutes to decode, tracks out of place, broken timestamps,
frames too thin for the model, animated images. Each gets its own sentence, or is read right.

Every file is written here (tests/_media.py), tiny and quick; "read right" means the exact frames: solid
colours or self-numbering frames that say which source frame they are.
"""

from __future__ import annotations

import itertools
import re
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from transformers.models.qwen2_vl.video_processing_qwen2_vl import smart_resize as qwen2_smart_resize
from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize as qwen3_smart_resize

from tests import _media as media
from tests._media import COLOURS, HEIGHT, WIDTH, frame_number, nearest_colour, numbered_frame
from vcast.video import VideoError, budget, read, read_video
from vcast.video.budget import decode_cost_s, decode_ranges, split_targets, too_slow_error, workers_for
from vcast.video.clip import DecodeTimeout
from vcast.video.limits import format_about, processor_aspect
from vcast.video.probe import Orientation, Probe, probe
from vcast.video.pyav import decode_pyav

NOTE = "This video's timestamps are unusable ({}), so its frames were read in order and timed at 10 fps."


def refusal(path: Path, **kwargs) -> str:
    with pytest.raises(VideoError) as caught:
        read_video(path, **kwargs)
    return str(caught.value)


def numbered(count: int) -> list[np.ndarray]:
    return [numbered_frame(i) for i in range(count)]


@pytest.fixture
def no_decoding(monkeypatch):
    """Make any decoding fail the test: what is refused must be refused from the probe alone."""

    def fail(*args, **kwargs):
        raise AssertionError("decoded a video that should have been refused before decoding")

    for name in ("decode_pyav", "decode_pyav_in_order"):
        monkeypatch.setattr(read, name, fail)
    monkeypatch.setattr(read.decord_backend, "decode_decord", fail)


# -- 1. decoding time: estimated from the container, refused before decoding --------------------------------------


def synthetic_probe(count: int, keyframe_every: int, width: int = 7680, height: int = 4320) -> Probe:
    """A probe of an H.264 High-profile track of `count` frames, 200 kB each, no B-frames, without any file."""
    order = np.arange(count, dtype=np.int64)
    return Probe(
        stream_index=0, video_streams=1, container="mov", codec="h264", profile="High", width=width,
        height=height, time_base=Fraction(1, 30), pts=order, decode_order=order,
        keyframe=order % keyframe_every == 0, packet_bytes=np.full(count, 200_000), last_frame_duration=1 / 30,
        orientation=Orientation(),
    )  # fmt: skip


def test_estimate_prices_every_frame_from_the_single_keyframe_of_an_8k_clip():
    info = synthetic_probe(600, keyframe_every=600)
    targets = np.linspace(0, 599, 32).round().astype(np.int64)
    assert len(split_targets(info, targets)) == 1  # threads would all start at frame 0: one decodes it all
    assert decode_ranges(info, targets) == ([(0, 0), *[(a + 1, b) for a, b in itertools.pairwise(targets)]], 0)
    per_frame = budget.DECODE_S_PER_MEGAPIXEL * 33.1776 + budget.DECODE_S_PER_KB * 200
    expected = 600 * per_frame + 32 * budget.CONVERT_S_PER_MEGAPIXEL * 33.1776
    cost = decode_cost_s(info, targets)
    assert cost == pytest.approx(expected) and cost == pytest.approx(35.8, abs=0.1)
    assert str(too_slow_error(info, cost, None)) == (
        "This video would take about 36 s to decode (a single keyframe in 600 frames at 7680x4320); re-encode it "
        "with more keyframes or at a lower resolution."
    )


def test_estimate_follows_the_decoder_plan_seek_to_a_keyframe_or_decode_on():
    info = synthetic_probe(300, keyframe_every=30, width=320, height=192)
    # 5 -> 12 decodes on; 70 is nearer its keyframe (60) than the decoder is: seek; 290 likewise.
    assert decode_ranges(info, np.array([5, 12, 70, 290])) == ([(0, 5), (6, 12), (60, 70), (270, 290)], 2)
    # Targets in separate groups of pictures go to one thread per core, each from its own keyframe.
    targets = np.arange(0, 300, 10)
    runs = split_targets(info, targets)
    assert len(runs) == workers_for(30) and np.array_equal(np.concatenate(runs), targets)
    decoded = seeks = 0
    for run in runs:
        ranges, run_seeks = decode_ranges(info, run)
        decoded += sum(last - first + 1 for first, last in ranges)
        seeks += run_seeks
    # Each decoded frame costs its pixels and its 200 kB; a seek costs SEEK_COST_FRAMES frames' pixels.
    pixels_s = budget.DECODE_S_PER_MEGAPIXEL * 0.06144
    expected = (decoded + seeks * budget.SEEK_COST_FRAMES) * pixels_s + decoded * 200 * budget.DECODE_S_PER_KB
    expected += 30 * budget.CONVERT_S_PER_MEGAPIXEL * 0.06144
    assert decode_cost_s(info, targets) == pytest.approx(expected)


def test_a_clip_with_one_keyframe_beyond_the_budget_is_refused_before_decoding(tmp_path, no_decoding):
    path = media.long_gop(tmp_path / "one_key.mp4", 300)
    info = probe(path, 600.0)
    targets = np.unique(read.sample_indices(300, info.duration, num_frames=16, max_frames=16))
    cost = decode_cost_s(info, targets)
    budget_s = decode_cost_s(info, np.array([0, 299])) / 2  # not even 2 frames fit
    assert refusal(path, num_frames=16, max_decode_s=budget_s) == (
        f"This video would take about {format_about(cost)} to decode (a single keyframe in 300 frames at "
        "320x192); re-encode it with more keyframes or at a lower resolution."
    )


def test_the_refusal_names_how_many_frames_would_fit_and_they_do(tmp_path):
    path = media.long_gop(tmp_path / "gop20.mp4", 240, keyframe_every=20)
    info = probe(path, 600.0)
    targets = np.unique(read.sample_indices(240, info.duration, num_frames=32, max_frames=32))
    budget_s = decode_cost_s(info, targets) / 3
    message = refusal(path, num_frames=32, max_decode_s=budget_s)
    pattern = (
        r"This video would take about [\d.]+ s to decode \(one keyframe every 20 frames at 320x192\); ask for at "
        r"most (\d+) frames, or re-encode it with more keyframes or at a lower resolution\."
    )
    fits = int(re.fullmatch(pattern, message).group(1))
    assert 2 <= fits < 32
    clip = read_video(path, num_frames=fits, max_decode_s=budget_s)
    assert [frame_number(f) for f in clip.frames] == clip.indices.tolist()
    assert refusal(path, num_frames=fits + 2, max_decode_s=budget_s).startswith("This video would take about")


def test_decoding_that_runs_past_the_budget_anyway_is_stopped_with_a_sentence(tmp_path, monkeypatch):
    path = media.long_gop(tmp_path / "one_key.mp4", 60)
    monkeypatch.setattr(read, "decode_cost_s", lambda *args, **kwargs: 0.0)  # an estimate far too low
    assert refusal(path, num_frames=4, max_decode_s=0.001, backend="pyav") == (
        "Decoding this video took longer than the 0.001 s limit; re-encode it with more keyframes or at a lower "
        "resolution, or ask for fewer frames."
    )
    info = probe(path, 600.0)
    with pytest.raises(DecodeTimeout):
        decode_pyav(path, info, np.arange(0, 60, 5), (HEIGHT, WIDTH), deadline=time.monotonic())


def test_no_budget_decodes_everything(tmp_path):
    path = media.long_gop(tmp_path / "one_key.mp4", 60)
    assert read_video(path, num_frames=60, max_frames=60, max_decode_s=None).num_frames == 60


# -- 2. the video track is not the first stream, or not the only one ---------------------------------------------

SIX = COLOURS[:6]


@pytest.mark.parametrize("name", ["audio_first.mp4", "audio_first.mkv", "audio_first.ts"])
def test_a_video_track_after_an_audio_track_gives_its_own_frames(tmp_path, name):
    fmt = "mpegts" if name.endswith(".ts") else None
    path = media.tracks(tmp_path / name, [SIX], audio_first=True, fmt=fmt)
    clip = read_video(path, num_frames=6)
    assert [nearest_colour(f) for f in clip.frames] == SIX
    assert clip.backend == "pyav"  # decord picks its own stream: not used where the video is not stream 0


@pytest.mark.parametrize(
    ("name", "audio_first", "default", "expected"),
    [
        ("two.mkv", False, None, SIX),  # no track flagged: the first
        ("audio_two.mkv", True, None, SIX),
        ("default_second.mp4", False, 1, [COLOURS[2]] * 6),  # the track flagged default, as players choose
    ],
)
def test_of_two_video_tracks_the_default_or_first_one_is_read(tmp_path, name, audio_first, default, expected):
    second = [COLOURS[2]] * 6
    path = media.tracks(tmp_path / name, [SIX, second], audio_first=audio_first, default=default)
    for backend in ("auto", "pyav"):
        clip = read_video(path, num_frames=6, backend=backend)
        assert [nearest_colour(f) for f in clip.frames] == expected and clip.backend == "pyav"


# -- 3. timestamps that start late, jump, go backwards, or have no valid unit -------------------------------------


def test_a_clip_cut_an_hour_into_a_recording_is_as_long_as_its_frames(tmp_path):
    for name in ("late.mkv", "late.mp4"):
        path = media.write_video(tmp_path / name, numbered(20), pts_ms=[3_600_000 + 100 * i for i in range(20)])
        clip = read_video(path, num_frames=4, max_duration_s=5.0)
        assert clip.duration == pytest.approx(2.0) and clip.notes == ()
        np.testing.assert_allclose(clip.timestamps, clip.indices / 10, atol=1e-9)
        assert [frame_number(f) for f in clip.frames] == clip.indices.tolist()


JUMP = "they jump by more than an hour between two frames"
BROKEN_TIMES = {
    # kind: (pts of each frame in ms, what the note says of them)
    "jump": ([100 * i + (2**40 if i >= 10 else 0) for i in range(20)], JUMP),  # once "305419 h 53 min long"
    "backwards": ([600_000 + 100 * i for i in range(40)] + [4_000 + 100 * i for i in range(40)], "they go backwards"),
}


@pytest.mark.parametrize("kind", list(BROKEN_TIMES))
def test_broken_timestamps_are_replaced_by_the_frame_count_with_a_note(tmp_path, kind):
    pts_ms, problem = BROKEN_TIMES[kind]
    path = media.packet_times(tmp_path / f"{kind}.mkv", numbered(len(pts_ms)), pts_ms)
    clip = read_video(path, num_frames=8, max_duration_s=60.0)
    assert clip.notes == (NOTE.format(problem),)
    assert clip.duration == pytest.approx(len(pts_ms) / 10)
    assert [frame_number(f) for f in clip.frames] == clip.indices.tolist() and clip.backend == "pyav"
    np.testing.assert_allclose(clip.timestamps, clip.indices / 10, atol=1e-9)


def test_concatenated_mpeg_ts_recordings_are_read_in_order(tmp_path):
    late = [600_000 + 100 * i for i in range(40)]
    first = media.write_video(tmp_path / "a.ts", numbered(40), fmt="mpegts", pts_ms=late)
    second = media.write_video(tmp_path / "b.ts", [numbered_frame(40 + i) for i in range(40)], fmt="mpegts")
    path = tmp_path / "joined.ts"
    path.write_bytes(first.read_bytes() + second.read_bytes())  # what `cat a.ts b.ts` makes
    clip = read_video(path, num_frames=8)
    # FFmpeg unwraps the restart into a forward jump of 2^33 ticks (26.5 h at 90 kHz).
    assert clip.notes == (NOTE.format(JUMP),)
    assert [frame_number(f) for f in clip.frames] == clip.indices.tolist() and clip.duration == pytest.approx(8.0)


def test_an_mp4_whose_time_scale_is_zero_is_read_whole_and_timed_by_its_frame_rate(tmp_path):
    path = media.zero_timescale(tmp_path / "zero.mp4", media.write_video(tmp_path / "ok.mp4", numbered(20)))
    clip = read_video(path, num_frames=20, max_frames=20)  # once: "truncated: only 17 min 04 s of its 2.0 s"
    assert clip.notes == (NOTE.format("its track declares no valid time scale"),)
    assert clip.duration == pytest.approx(2.0) and clip.total_frames == 20
    assert [frame_number(f) for f in clip.frames] == list(range(20))


# -- 4. frames whose aspect ratio passes at the source but not once scaled for the model -------------------------


def test_a_frame_too_thin_once_downscaled_is_refused_before_decoding(tmp_path, no_decoding):
    path = media.flat_video(tmp_path / "banner.mp4", 7960, 40)  # 199:1; at 1280 px wide it is 6 px high
    assert refusal(path) == (
        "The video is 7960x40 pixels; scaled to 1280x6 for the model, its frames would be more than 200 times "
        "wider than tall, which the model does not accept; crop it to a less elongated shape and try again."
    )


def test_a_thin_frame_that_stays_within_the_ratio_is_read(tmp_path):
    clip = read_video(media.flat_video(tmp_path / "strip.mp4", 6000, 40), num_frames=2)  # 1280x9: 142:1
    assert clip.frames.shape == (2, 9, 1280, 3)


def refuses(resize, *args, **kwargs) -> bool:
    try:
        resize(*args, **kwargs)
    except ValueError:
        return True
    return False


def test_our_aspect_rule_is_the_processors_rule():
    """processor_aspect(h, w) > 200 exactly where Qwen2-VL's or Qwen3-VL's smart_resize refuses the frame."""
    for height in range(1, 41):
        for width in (1000, 1280, 4000, 6000, 7960, 8000):
            refused = refuses(qwen2_smart_resize, height, width, factor=28) or refuses(
                qwen3_smart_resize, 2, height, width, factor=32
            )
            assert (processor_aspect(height, width) > 200) == refused, (height, width)


# -- 5. decord never reads a track whose timestamps the probe could not use ---------------------------------------


def test_repeated_timestamps_are_decoded_in_order_by_pyav_not_by_decord(tmp_path):
    path = media.packet_times(tmp_path / "pairs.mkv", numbered(12), [(i // 2) * 100 for i in range(12)])
    clip = read_video(path, num_frames=6)  # decord returned frames 0, 2, 4, 7, 10, 10 here on some runs
    assert clip.backend == "pyav" and [frame_number(f) for f in clip.frames] == [0, 2, 4, 7, 9, 11]
    assert refusal(path, num_frames=6, backend="decord") == (
        "decord could not decode this video (decord needs usable timestamps); use backend='auto' or 'pyav'."
    )


# -- 6. animated images: read as video where FFmpeg can, refused by name where it cannot --------------------------


def moving_bar(count: int) -> list[np.ndarray]:
    """Frames with a white bar 20 px wide at x = 20 i on a dark ground: each frame changes only two strips,
    so APNG and GIF writers store partial frames that must be composed in order."""
    frames = []
    for i in range(count):
        rgb = media.solid((20, 40, 60))
        rgb[:, 20 * i : 20 * i + 20] = 255
        frames.append(rgb)
    return frames


def bar_position(rgb: np.ndarray) -> int:
    return int(np.flatnonzero(rgb[HEIGHT // 2, :, 0] > 200)[0]) // 20


@pytest.mark.parametrize("name", ["bar.png", "bar.gif"])
def test_animated_png_and_gif_are_read_as_videos(tmp_path, name):
    path = media.animated_image(tmp_path / name, moving_bar(8))
    clip = read_video(path, num_frames=8)
    assert [bar_position(f) for f in clip.frames] == list(range(8))
    np.testing.assert_allclose(clip.timestamps, np.arange(8) / 10, atol=1e-9)


def test_an_animated_webp_is_refused_by_name(tmp_path, no_decoding):
    path = media.animated_image(tmp_path / "anim.webp", [media.solid(c) for c in COLOURS[:4]], lossless=True)
    assert refusal(path) == (
        "This is an animated WebP image, which cannot be decoded here; convert it to a video such as .mp4 and "
        "upload that."
    )


@pytest.mark.parametrize(("name", "kind"), [("still.webp", "WebP"), ("one.png", "PNG"), ("big_text.png", "PNG")])
def test_still_images_stay_still_images(tmp_path, name, kind):
    from PIL import Image, PngImagePlugin

    image = Image.fromarray(numbered_frame(3))
    if name == "big_text.png":  # its image data starts beyond the 4 KiB sniffed: FFmpeg tells
        info = PngImagePlugin.PngInfo()
        info.add_text("comment", "x" * 6000)
        image.save(path := tmp_path / name, pnginfo=info)
    else:
        image.save(path := tmp_path / name)
    assert refusal(path) == (
        f"This is a still image ({kind}), not a video; upload a video file such as .mp4, .mov, .webm or .mkv."
    )
