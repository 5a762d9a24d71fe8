"""Benchmarks as they lie on disk, converted to manifest items.

`load_items(path)` takes a manifest (.jsonl), a folder holding `manifest.jsonl`, a Video-MME folder or an
MVBench folder, and says what it expected when it recognises none.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .manifest import Item, ManifestError, items_from_records, load_manifest

logger = logging.getLogger(__name__)

# Video-MME as the Hugging Face dataset lmms-lab/Video-MME ships it: videomme/test-00000-of-00001.parquet
# (video_id, duration short/medium/long, domain, sub_category, url, videoID, question_id, task_type,
# question, options ["A. ...", ...], answer "A") and the videos unzipped to data/<videoID>.mp4 (lmms-eval
# also accepts .MP4 and .mkv): lmms_eval/tasks/videomme/utils.py, videomme_doc_to_visual, in
# github.com/EvolvingLMMs-Lab/lmms-eval. Some copies keep the videos in video/ instead of data/.
_VIDEOMME_VIDEO_DIRS = ("data", "video", "videos")
_VIDEOMME_SUFFIXES = (".mp4", ".MP4", ".mkv")

# MVBench (Hugging Face dataset OpenGVLab/MVBench): json/<task>.json lists {video, question, candidates,
# answer (the right candidate's text), start/end for bound tasks}; the videos unzip under video/. Task ->
# (json file, folder, bound) from the official evaluation, github.com/OpenGVLab/Ask-Anything,
# video_chat2/mvbench.ipynb (`data_list`); "bound" tasks ask about [start, end] seconds of the video.
# The dataset's "video" branch, which lmms-eval reads, holds the bound tasks' parts already cut
# (lmms_eval/tasks/mvbench/utils.py, DATA_LIST): those folders are tried second, without the bound.
# Files added after the first release lie under data0613/<folder> (the same utils.py).
_MVBENCH_TASKS = {
    "Action Sequence": ("action_sequence.json", "star/Charades_v1_480", True, "star/Charades_segment"),
    "Action Prediction": ("action_prediction.json", "star/Charades_v1_480", True, "star/Charades_segment"),
    "Action Antonym": ("action_antonym.json", "ssv2_video", False, "ssv2_video_mp4"),
    "Fine-grained Action": ("fine_grained_action.json", "Moments_in_Time_Raw/videos", False, None),
    "Unexpected Action": ("unexpected_action.json", "FunQA_test/test", False, None),
    "Object Existence": ("object_existence.json", "clevrer/video_validation", False, None),
    "Object Interaction": ("object_interaction.json", "star/Charades_v1_480", True, "star/Charades_segment"),
    "Object Shuffle": ("object_shuffle.json", "perception/videos", False, None),
    "Moving Direction": ("moving_direction.json", "clevrer/video_validation", False, None),
    "Action Localization": ("action_localization.json", "sta/sta_video", True, "sta/sta_video_segment"),
    "Scene Transition": ("scene_transition.json", "scene_qa/video", False, None),
    "Action Count": ("action_count.json", "perception/videos", False, None),
    "Moving Count": ("moving_count.json", "clevrer/video_validation", False, None),
    "Moving Attribute": ("moving_attribute.json", "clevrer/video_validation", False, None),
    "State Change": ("state_change.json", "perception/videos", False, None),
    "Fine-grained Pose": ("fine_grained_pose.json", "nturgbd", False, "nturgbd_convert"),
    "Character Order": ("character_order.json", "perception/videos", False, None),
    "Egocentric Navigation": ("egocentric_navigation.json", "vlnqa", False, None),
    "Episodic Reasoning": ("episodic_reasoning.json", "tvqa/frames_fps3_hq", True, "tvqa/video_fps3_hq_segment"),
    "Counterfactual Inference": ("counterfactual_inference.json", "clevrer/video_validation", False, None),
}
_MVBENCH_FRAME_FOLDERS = {"tvqa/frames_fps3_hq": 3.0}


def _read_table(path: Path) -> list[dict]:
    """Records of a .parquet (needs pandas + pyarrow), .json (a list) or .jsonl file."""
    if path.suffix == ".parquet":
        try:
            import pandas as pd

            return pd.read_parquet(path).to_dict(orient="records")
        except ImportError as err:
            raise ManifestError(
                f"reading {path.name} needs pyarrow: pip install pyarrow (or give the annotations as JSON)"
            ) from err
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    data = json.loads(text)
    if not isinstance(data, list):
        raise ManifestError(f"{path.name}: expected a JSON list of questions")
    return data


def _videomme_rows(records: list[dict]) -> list[dict]:
    """Flat rows: the parquet's are flat already; Video-MME's own JSON nests questions under each video."""
    rows = []
    for record in records:
        for question in record.get("questions") or [record]:
            rows.append({**record, **question})
    return rows


def _videomme_annotations(root: Path) -> list[Path]:
    for pattern in (
        "videomme/test-*.parquet",
        "videomme/*.json",
        "videomme/*.jsonl",
        "test-*.parquet",
        "videomme*.json",
        "videomme*.jsonl",
    ):
        found = sorted(root.glob(pattern))
        if found:
            return found
    return []


def _videomme_video(root: Path, video_id: str) -> Path:
    for folder in _VIDEOMME_VIDEO_DIRS:
        for suffix in _VIDEOMME_SUFFIXES:
            path = root / folder / f"{video_id}{suffix}"
            if path.exists():
                return path
    return root / "data" / f"{video_id}.mp4"  # missing: recorded as that item's error when it is run


def read_videomme(root: Path) -> list[Item]:
    """Video-MME items: task = task_type, duration = short/medium/long, id = question_id."""
    files = _videomme_annotations(root)
    if not files:
        raise ManifestError(f"{root}: no Video-MME annotations (videomme/test-*.parquet or videomme/*.json)")
    records = []
    for row in _videomme_rows([r for f in files for r in _read_table(f)]):
        video_id = str(row.get("videoID") or row.get("video_id"))
        records.append(
            {
                "id": str(row.get("question_id") or ""),
                "video": str(_videomme_video(root, video_id)),
                "question": row["question"],
                "options": [str(o) for o in row["options"]],
                "answer": row["answer"],
                "task": row.get("task_type") or "",
                "duration": row.get("duration"),
            }
        )
    return items_from_records(records, root, "Video-MME")


def _mvbench_folder(video_root: Path, official: str, bound: bool, cut: str | None) -> tuple[str, bool] | None:
    """The task's video folder that exists and whether the bound still applies (not to cut parts)."""
    for folder, applies in ((official, bound), (cut, False)):
        if folder and ((video_root / folder).is_dir() or (video_root / "data0613" / folder).is_dir()):
            return folder, applies
    return None


def _mvbench_path(video_root: Path, folder: str, name: str) -> Path:
    path = video_root / folder / name
    later = video_root / "data0613" / folder / name
    return later if not path.exists() and later.exists() else path


def read_mvbench(root: Path) -> list[Item]:
    """MVBench items: task = the task's name; id = "<json stem>-<index>"; tasks without videos are skipped."""
    video_root = root / "video" if (root / "video").is_dir() else root
    records = []
    for task, (json_name, official, bound, cut) in _MVBENCH_TASKS.items():
        annotations = root / "json" / json_name
        if not annotations.exists():
            logger.warning("MVBench: %s has no %s; the task is left out", task, annotations)
            continue
        found = _mvbench_folder(video_root, official, bound, cut)
        if found is None:
            logger.warning(
                "MVBench: no videos for %s (looked for %s%s under %s); the task is left out",
                task,
                official,
                f" and {cut}" if cut else "",
                video_root,
            )
            continue
        folder, applies = found
        for index, entry in enumerate(_read_table(annotations)):
            candidates = [str(c) for c in entry["candidates"]]
            answer = str(entry["answer"])  # the right candidate's text; its letter where it matches exactly
            record = {
                "id": f"{annotations.stem}-{index}",
                "video": str(_mvbench_path(video_root, folder, entry["video"])),
                "question": entry["question"],
                "options": candidates,
                "answer": chr(ord("A") + candidates.index(answer)) if answer in candidates else answer,
                "task": task,
            }
            start, end = entry.get("start"), entry.get("end")
            if applies and start is not None and end is not None and float(end) > max(0.0, float(start)):
                record["start"], record["end"] = max(0.0, float(start)), float(end)
            if folder in _MVBENCH_FRAME_FOLDERS:
                record["fps"] = _MVBENCH_FRAME_FOLDERS[folder]
            records.append(record)
    if not records:
        raise ManifestError(f"{root}: no MVBench task has both its json/<task>.json and its videos")
    return items_from_records(records, root, "MVBench")


def detect(path: Path) -> str:
    """ "manifest", "videomme" or "mvbench" for what lies at path."""
    if path.is_file():
        return "manifest"
    if (path / "manifest.jsonl").is_file():
        return "manifest"
    if _videomme_annotations(path):
        return "videomme"
    if (path / "json").is_dir() and any((path / "json" / spec[0]).exists() for spec in _MVBENCH_TASKS.values()):
        return "mvbench"
    raise ManifestError(
        f"{path}: not a benchmark this runner reads. Give a manifest (.jsonl, or a folder holding "
        "manifest.jsonl), a Video-MME folder (videomme/test-*.parquet + data/<videoID>.mp4) or an MVBench "
        "folder (json/<task>.json + video/<source folders>); see the README, 'Reproduce the accuracy claim'."
    )


def load_items(path: str | Path) -> list[Item]:
    """The items of a manifest or a benchmark folder."""
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"{path} does not exist")
    kind = detect(path)
    if kind == "manifest":
        return load_manifest(path if path.is_file() else path / "manifest.jsonl")
    return read_videomme(path) if kind == "videomme" else read_mvbench(path)
