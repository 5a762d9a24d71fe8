"""The manifest, the Video-MME and MVBench readers, and reading the frames of an item."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import av
import cv2
import numpy as np
import pandas as pd
import pytest

from vcast.eval.clips import load_clip, read_frame_folder, read_window
from vcast.eval.manifest import Item, ManifestError, default_id, load_manifest, write_manifest
from vcast.eval.readers import load_items

RED, BLUE = (220, 30, 30), (30, 30, 220)


def _write_clip(path: Path, colours: list[tuple[int, int, int]], fps: int = 8) -> Path:
    """One 64 x 64 frame of each colour, at `fps` frames per second."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = 64
        stream.pix_fmt, stream.options = "yuv420p", {"preset": "ultrafast", "g": "4"}
        for colour in colours:
            rgb = np.empty((64, 64, 3), np.uint8)
            rgb[:] = colour
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())
    return path


def _jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_manifest_resolves_paths_letters_and_labels(tmp_path: Path):
    manifest = _jsonl(
        tmp_path / "m.jsonl",
        [
            {
                "video": "clips/a.mp4",
                "question": "Colour?",
                "options": ["A. red", "B. blue"],
                "answer": "b",
                "task": "colour",
                "duration": 12.5,
            },
            {
                "id": "q2",
                "video": "/abs/b.mp4",
                "question": "How many?",
                "options": ["1", "2", "3"],
                "answer": "2",
                "start": 1.0,
                "end": 3.5,
            },
        ],
    )
    first, second = load_manifest(manifest)
    assert first.video == str((tmp_path / "clips/a.mp4").resolve())
    assert (first.options, first.answer, first.task, first.duration_class) == (("red", "blue"), "B", "colour", "short")
    assert first.id == default_id("clips/a.mp4", "Colour?", ("red", "blue"))
    assert (second.id, second.answer, second.start, second.end) == ("q2", "B", 1.0, 3.5)  # "2" is option text


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"question": "q", "options": ["a", "b"], "answer": "A"}, "'video'"),
        ({"video": "v.mp4", "question": "q", "options": ["a"], "answer": "A"}, "at least 2"),
        ({"video": "v.mp4", "question": "q", "options": ["a", "b"], "answer": "C"}, "neither a letter"),
        ({"video": "v.mp4", "question": "q", "options": ["a", "b"], "answer": "A", "start": 5, "end": 2}, "'end'"),
        ({"video": "v.mp4", "question": "q", "options": ["a", "b"], "answer": "A", "duration": -1}, "'duration'"),
    ],
)
def test_manifest_errors_name_the_line_and_the_field(tmp_path: Path, record: dict, message: str):
    manifest = _jsonl(
        tmp_path / "m.jsonl", [{"video": "ok.mp4", "question": "q", "options": ["a", "b"], "answer": "A"}, record]
    )
    with pytest.raises(ManifestError, match=message) as info:
        load_manifest(manifest)
    assert "m.jsonl line 2" in str(info.value)


def test_manifest_rejects_broken_json_and_repeated_ids_get_suffixes(tmp_path: Path):
    with pytest.raises(ManifestError, match="line 1: not valid JSON"):
        load_manifest(_write(tmp_path / "bad.jsonl", '{"video": \n'))
    same = {"id": "x", "video": "v.mp4", "question": "q", "options": ["a", "b"], "answer": "A"}
    assert [it.id for it in load_manifest(_jsonl(tmp_path / "dup.jsonl", [same, same, same]))] == ["x", "x-2", "x-3"]


def test_written_manifest_reads_back_the_same_items_from_another_folder(tmp_path: Path):
    (tmp_path / "data").mkdir()
    items = load_manifest(
        _jsonl(
            tmp_path / "data" / "m.jsonl",
            [
                {
                    "video": "a.mp4",
                    "question": "Colour?",
                    "options": ["red", "blue"],
                    "answer": "B",
                    "task": "colour",
                    "duration": "long",
                    "start": 0.5,
                    "end": 2.0,
                },
                {"video": "frames/x", "question": "What next?", "options": ["up", "down"], "answer": "up", "fps": 3},
            ],
        )
    )
    again = load_manifest(write_manifest(items, tmp_path / "results" / "run" / "items.jsonl"))
    assert again == items
    line = json.loads((tmp_path / "results" / "run" / "items.jsonl").read_text().splitlines()[0])
    assert line["video"] == "../../data/a.mp4"  # relative: the folder pair can move together


def _videomme_rows() -> list[dict]:
    return [
        {
            "video_id": "001",
            "duration": "short",
            "domain": "Knowledge",
            "sub_category": "Astronomy",
            "url": "https://www.youtube.com/watch?v=abc",
            "videoID": "abc",
            "question_id": "001-1",
            "task_type": "Counting Problem",
            "question": "How many planets?",
            "options": ["A. 7.", "B. 8.", "C. 9.", "D. 10."],
            "answer": "B",
        },
        {
            "video_id": "002",
            "duration": "long",
            "domain": "Sports Competition",
            "sub_category": "Football",
            "url": "https://www.youtube.com/watch?v=xyz",
            "videoID": "xyz",
            "question_id": "002-1",
            "task_type": "OCR Problems",
            "question": "What is the score?",
            "options": ["A. 1-0.", "B. 2-1.", "C. 0-0.", "D. 3-2."],
            "answer": "D",
        },
    ]


def test_videomme_reader_takes_the_lmms_lab_parquet_and_data_folder(tmp_path: Path, monkeypatch):
    (tmp_path / "videomme").mkdir()
    (tmp_path / "videomme" / "test-00000-of-00001.parquet").write_bytes(b"PAR1")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "abc.mp4").write_bytes(b"")
    (tmp_path / "data" / "xyz.mkv").write_bytes(b"")  # lmms-eval also accepts .mkv
    frame = pd.DataFrame(_videomme_rows())
    frame["options"] = frame["options"].map(np.array)  # parquet lists come back as numpy arrays
    monkeypatch.setattr(pd, "read_parquet", lambda path: frame)  # no pyarrow needed to test the reader
    first, second = load_items(tmp_path)
    assert (first.id, first.task, first.duration_class, first.answer) == ("001-1", "Counting Problem", "short", "B")
    assert first.options == ("7.", "8.", "9.", "10.")
    assert first.video == str(tmp_path / "data" / "abc.mp4") and second.video == str(tmp_path / "data" / "xyz.mkv")


def test_videomme_reader_takes_the_official_nested_json(tmp_path: Path):
    (tmp_path / "videomme").mkdir()
    nested = [
        {
            "video_id": "001",
            "duration": "medium",
            "videoID": "abc",
            "questions": [
                {
                    "question_id": "001-1",
                    "task_type": "Action Reasoning",
                    "question": "Why?",
                    "options": ["A. a", "B. b", "C. c", "D. d"],
                    "answer": "C",
                }
            ],
        }
    ]
    (tmp_path / "videomme" / "videomme.json").write_text(json.dumps(nested))
    (item,) = load_items(tmp_path)
    assert (item.id, item.task, item.duration_class, item.answer) == ("001-1", "Action Reasoning", "medium", "C")
    assert item.video == str(tmp_path / "data" / "abc.mp4")  # missing: recorded as an error when run


def _mvbench(root: Path) -> Path:
    (root / "json").mkdir(parents=True)
    entries = {
        "action_sequence.json": [
            {
                "video": "S1.mp4",
                "question": "What happened?",
                "candidates": ["Sat.", "Ran."],
                "answer": "Ran.",
                "start": 2.0,
                "end": 6.5,
            }
        ],
        "action_antonym.json": [
            {"video": "v1.mp4", "question": "Which?", "candidates": ["up", "down", "none"], "answer": "down"}
        ],
        "episodic_reasoning.json": [
            {"video": "ep1", "question": "Why?", "candidates": ["a", "b"], "answer": "a", "start": 1.0, "end": 4.0}
        ],
        "object_existence.json": [{"video": "o1.mp4", "question": "Is?", "candidates": ["yes", "no"], "answer": "no"}],
        "moving_count.json": [{"video": "late.mp4", "question": "How many?", "candidates": ["1", "2"], "answer": "2"}],
    }
    for name, data in entries.items():
        (root / "json" / name).write_text(json.dumps(data))
    video = root / "video"
    for folder in ("star/Charades_v1_480", "ssv2_video_mp4", "tvqa/frames_fps3_hq/ep1", "clevrer/video_validation"):
        (video / folder).mkdir(parents=True)
    (video / "data0613" / "clevrer" / "video_validation").mkdir(parents=True)
    (video / "data0613" / "clevrer" / "video_validation" / "late.mp4").write_bytes(b"")
    return root


def test_mvbench_reader_maps_tasks_to_folders_bounds_and_letters(tmp_path: Path, caplog):
    with caplog.at_level(logging.WARNING, logger="vcast.eval.readers"):
        items = {item.task: item for item in load_items(_mvbench(tmp_path))}
    video = tmp_path / "video"
    sequence = items["Action Sequence"]  # official folder: full Charades videos, sampled within the bound
    assert (sequence.id, sequence.answer, sequence.start, sequence.end) == ("action_sequence-0", "B", 2.0, 6.5)
    assert sequence.video == str(video / "star/Charades_v1_480/S1.mp4")
    antonym = items["Action Antonym"]  # lmms-eval's converted folder
    assert antonym.video == str(video / "ssv2_video_mp4/v1.mp4") and antonym.answer == "B"
    episodic = items["Episodic Reasoning"]  # a folder of frames at 3 fps, with its bound
    assert (episodic.video, episodic.fps, episodic.start) == (str(video / "tvqa/frames_fps3_hq/ep1"), 3.0, 1.0)
    assert items["Moving Count"].video == str(video / "data0613/clevrer/video_validation/late.mp4")
    assert items["Object Existence"].start is None
    assert not any("left out" in r.message and "Action Sequence" in r.message for r in caplog.records)


def test_mvbench_reader_leaves_out_tasks_without_videos(tmp_path: Path, caplog):
    root = _mvbench(tmp_path)
    (root / "json" / "scene_transition.json").write_text(
        json.dumps([{"video": "s.mp4", "question": "q", "candidates": ["a", "b"], "answer": "a"}])
    )
    with caplog.at_level(logging.WARNING, logger="vcast.eval.readers"):
        tasks = {item.task for item in load_items(root)}
    assert "Scene Transition" not in tasks and len(tasks) == 5
    assert any("Scene Transition" in r.message and "left out" in r.message for r in caplog.records)


def test_an_unknown_folder_says_what_the_runner_reads(tmp_path: Path):
    with pytest.raises(ManifestError, match=r"Video-MME folder .* MVBench"):
        load_items(tmp_path)
    with pytest.raises(ManifestError, match="does not exist"):
        load_items(tmp_path / "nowhere")


def test_read_window_samples_only_the_part_asked_for(tmp_path: Path):
    clip_path = _write_clip(tmp_path / "half.mp4", [RED] * 8 + [BLUE] * 8, fps=8)  # red 0-1 s, blue 1-2 s
    window = read_window(clip_path, 1.0, 2.0, 4, max_side_px=1280)
    assert window.frames.shape == (4, 64, 64, 3)
    assert (window.frames[..., 2].mean(axis=(1, 2)) > 150).all()  # all blue
    assert window.timestamps[0] == 0.0 and (np.diff(window.timestamps) > 0).all()
    first_half = read_window(clip_path, 0.0, 1.0, 4, max_side_px=1280)
    assert (first_half.frames[..., 0].mean(axis=(1, 2)) > 150).all()  # all red


def test_read_frame_folder_takes_frames_at_its_rate_within_the_bound(tmp_path: Path):
    for i in range(12):  # 4 s at 3 fps: the brightness encodes the frame number
        cv2.imwrite(str(tmp_path / f"{i + 1:05d}.jpg"), np.full((32, 48, 3), 20 * i, np.uint8))
    clip = read_frame_folder(tmp_path, 4, fps=3.0, start=1.0, end=2.0, max_side_px=1280)
    assert clip.frames.shape == (4, 32, 48, 3)
    assert np.round(clip.frames.mean(axis=(1, 2, 3)) / 20).astype(int).tolist() == [3, 4, 5, 6]


def test_load_clip_reads_whole_videos_and_reports_missing_ones(tmp_path: Path):
    path = _write_clip(tmp_path / "c.mp4", [RED] * 6)
    item = Item(id="x", video=str(path), question="q", options=("a", "b"), answer="A")
    assert load_clip(item, 4).frames.shape == (4, 64, 64, 3)
    from vcast import VideoError

    with pytest.raises(VideoError, match="does not exist"):
        load_clip(Item(id="y", video=str(tmp_path / "gone.mp4"), question="q", options=("a", "b"), answer="A"), 4)
