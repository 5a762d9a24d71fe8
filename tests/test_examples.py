"""The example clips: listed, small, readable, deterministic, and built to show what each one teaches.

"Curvature" here is V-CAST's frame curvature computed on a pixel stand-in for the model's features
(each temporal group's two frames, averaged and shrunk to 64 x 36): a check that the clips are built
as described, not a claim about any model's features.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from vcast.core import frame_curvature
from vcast.video import VideoClip, read_video

ASSETS = Path(__file__).resolve().parents[1] / "assets"
RECORDS = json.loads((ASSETS / "examples.json").read_text())
BY_FILE = {record["file"]: record for record in RECORDS}


def _make_examples():
    spec = importlib.util.spec_from_file_location("make_examples", ASSETS / "make_examples.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_examples"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def _pixel_curvature(path: Path) -> tuple[np.ndarray, np.ndarray, VideoClip]:
    """(T,) group times in seconds, (T,) curvature, and the clip sampled at 2 fps."""
    clip = read_video(path, fps=2.0)
    small = np.stack([cv2.resize(f, (64, 36), interpolation=cv2.INTER_AREA) for f in clip.frames]) / 255.0
    groups = small.reshape(clip.num_frames // 2, 2, -1).mean(1)  # (T, 64 * 36 * 3)
    times = (clip.timestamps[0::2] + clip.timestamps[1::2]) / 2
    return times, frame_curvature(torch.from_numpy(groups).float()).numpy(), clip


def test_examples_json_lists_each_clip_with_a_question_and_a_lesson():
    assert len(RECORDS) >= 2
    for record in RECORDS:
        assert set(record) == {"file", "question", "what it teaches"}
        assert record["question"].endswith("?") and len(record["what it teaches"]) > 40


@pytest.mark.parametrize("name", list(BY_FILE))
def test_clip_is_small_10_to_30_seconds_and_readable(name):
    path = ASSETS / name
    assert path.stat().st_size <= 1.5e6
    clip = read_video(path, num_frames=8)
    assert 10.0 <= clip.duration <= 30.0
    assert clip.frames.shape[0] == 8 and clip.backend in ("decord", "pyav")


def test_generation_is_deterministic(tmp_path):
    make_examples = _make_examples()
    example = min(make_examples.EXAMPLES, key=lambda e: e.seconds)
    first = make_examples.write_clip(tmp_path / "a.mp4", example).read_bytes()
    second = make_examples.write_clip(tmp_path / "b.mp4", example).read_bytes()
    assert hashlib.sha256(first).digest() == hashlib.sha256(second).digest()
    assert [e.file for e in make_examples.EXAMPLES] == [r["file"] for r in RECORDS]


def test_scene_cuts_curvature_peaks_at_the_cuts_and_the_kite_is_red():
    times, curvature, clip = _pixel_curvature(ASSETS / "scene_cuts.mp4")
    interior = np.argsort(-curvature[1:-1])[:2] + 1
    cut_groups = {int(np.argmin(np.abs(times - (cut - 0.5)))) for cut in (7.0, 14.0)}  # the group before a cut
    assert all(min(abs(g - c) for c in cut_groups) <= 1 for g in interior), (times[interior], curvature)
    last = clip.frames[-1].astype(int)
    red = (last[..., 0] > 180) & (last[..., 1] < 80) & (last[..., 2] < 80)
    assert red.sum() > 1000  # the answer, a red kite, is on screen in the last scene


def test_brief_event_frames_turn_the_trajectory_and_carry_the_word():
    times, curvature, clip = _pixel_curvature(ASSETS / "brief_event.mp4")
    peak = int(np.argmax(curvature[1:-1])) + 1
    assert 11.0 <= times[peak] <= 12.5
    assert curvature[peak] > 1.5 and np.median(curvature[1:-1]) < 1.0
    sign = clip.frames[:, 130:240, 160:480].astype(int)  # where the yellow sign appears
    yellow = ((sign[..., 0] > 200) & (sign[..., 1] > 170) & (sign[..., 2] < 90)).mean(axis=(1, 2))  # (F,)
    shown = clip.timestamps[yellow > 0.5]
    assert shown.size >= 2 and shown.tolist() == [t for t in clip.timestamps if 11.0 <= t < 12.5]


def test_smooth_motion_curvature_is_flat():
    _, curvature, _ = _pixel_curvature(ASSETS / "smooth_motion.mp4")
    interior = curvature[1:-1]
    assert interior.max() - interior.min() < 0.2
    _, cuts, _ = _pixel_curvature(ASSETS / "scene_cuts.mp4")
    assert interior.max() < cuts[1:-1].max() - 0.2
