"""The benchmark manifest: one multiple-choice question about one video per JSON line.

Fields: `video` (a file, or a folder of frames; relative paths are relative to the manifest's folder),
`question`, `options` (list of option texts; "A. text" labels are recognised and removed), `answer`
(the letter, or the text of the right option); optional `id` (stable key for resuming; by default a hash
of video, question and options), `task`, `duration` (seconds, or a class such as "short"), `start` and
`end` (seconds: only that part of the video is sampled) and `fps` (frame rate of a folder of frames).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from .letters import LETTERS, option_letter, strip_labels

# Video-MME's classes are short (< 2 min), medium (4-15 min) and long (30-60 min); a duration in
# seconds goes to the class whose range is nearest (boundaries in the middle of the gaps).
_DURATION_CLASSES = ((180.0, "short"), (1350.0, "medium"), (math.inf, "long"))
_FIELDS = ("id", "video", "question", "options", "answer", "task", "duration", "start", "end", "fps")


class ManifestError(ValueError):
    """A manifest or benchmark folder that cannot be read; the message says where and what to fix."""


@dataclass(frozen=True)
class Item:
    """One question. `video` is an absolute path; `answer` is the right option's letter."""

    id: str
    video: str
    question: str
    options: tuple[str, ...]
    answer: str
    task: str = ""
    duration: float | str | None = None
    start: float | None = None
    end: float | None = None
    fps: float | None = None

    @property
    def duration_class(self) -> str:
        """ "short" / "medium" / "long" (or the class the manifest gives), "" when unknown."""
        if self.duration is None:
            return ""
        if isinstance(self.duration, str):
            return self.duration
        return next(name for limit, name in _DURATION_CLASSES if self.duration < limit)


def _answer_letter(answer: object, options: tuple[str, ...], where: str) -> str:
    if not isinstance(answer, str) or not answer.strip():
        raise ManifestError(f"{where}: 'answer' must be an option letter or an option's text, got {answer!r}")
    answer = answer.strip()
    letter = answer.strip("().").upper()
    if len(letter) == 1 and letter in LETTERS[: len(options)] and answer.strip("().").isalpha():
        return letter
    matches = [i for i, text in enumerate(options) if text.strip().lower() == answer.lower()]
    if len(matches) != 1:
        raise ManifestError(
            f"{where}: the answer {answer!r} is neither a letter A-{LETTERS[len(options) - 1]} "
            f"nor the text of exactly one option {list(options)}"
        )
    return option_letter(matches[0])


def _optional_number(record: dict, name: str, where: str) -> float | None:
    value = record.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ManifestError(f"{where}: {name!r} must be a number of seconds >= 0, got {value!r}")
    return float(value)


def default_id(video: str, question: str, options: tuple[str, ...]) -> str:
    """A stable key from what the item asks: the same item gets the same id in any manifest."""
    digest = hashlib.sha1(json.dumps([Path(video).name, question, list(options)]).encode("utf-8"))
    return digest.hexdigest()[:16]


def item_from_record(record: dict, base_dir: Path, where: str) -> Item:
    """Validate one manifest record. `where` ("file.jsonl line 3") prefixes error messages."""
    if not isinstance(record, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for name in ("video", "question"):
        if not isinstance(record.get(name), str) or not record[name].strip():
            raise ManifestError(f"{where}: {name!r} must be a non-empty string")
    options = record.get("options")
    if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) and o.strip() for o in options):
        raise ManifestError(f"{where}: 'options' must be a list of at least 2 non-empty strings")
    if len(options) > len(LETTERS):
        raise ManifestError(f"{where}: at most {len(LETTERS)} options, got {len(options)}")
    texts = strip_labels(options)
    video = record["video"]
    path = Path(video) if os.path.isabs(video) else base_dir / video
    duration = record.get("duration")
    if duration is not None and not isinstance(duration, str):
        duration = _optional_number(record, "duration", where)
    start, end = _optional_number(record, "start", where), _optional_number(record, "end", where)
    if start is not None and end is not None and end <= start:
        raise ManifestError(f"{where}: 'end' ({end}) must be after 'start' ({start})")
    item_id = record.get("id")
    return Item(
        id=str(item_id) if item_id not in (None, "") else default_id(video, record["question"], texts),
        video=str(path.resolve()),
        question=record["question"].strip(),
        options=texts,
        answer=_answer_letter(record.get("answer"), texts, where),
        task=str(record.get("task") or ""),
        duration=duration,
        start=start,
        end=end,
        fps=_optional_number(record, "fps", where),
    )


def _unique_ids(items: list[Item]) -> list[Item]:
    """Items with repeated ids get "-2", "-3", ... in order, so each (id, pass) is one result line."""
    seen: dict[str, int] = {}
    unique = []
    for item in items:
        count = seen.get(item.id, 0) + 1
        seen[item.id] = count
        unique.append(item if count == 1 else Item(**{**item.__dict__, "id": f"{item.id}-{count}"}))
    return unique


def load_manifest(path: str | os.PathLike) -> list[Item]:
    """Read a JSONL manifest (blank lines and lines starting with // are skipped)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise ManifestError(f"cannot read the manifest {path}: {err.strerror or err}") from err
    items = []
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("//"):
            continue
        where = f"{path.name} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ManifestError(f"{where}: not valid JSON ({err.msg})") from err
        items.append(item_from_record(record, path.parent, where))
    if not items:
        raise ManifestError(f"the manifest {path} holds no items")
    return _unique_ids(items)


def items_from_records(records: list[dict], base_dir: Path, source: str) -> list[Item]:
    """Validated items from records a benchmark reader produced."""
    items = [item_from_record(r, base_dir, f"{source} item {i}") for i, r in enumerate(records)]
    return _unique_ids(items)


def item_to_record(item: Item, relative_to: Path | None = None) -> dict:
    """The manifest record of an item (None fields left out); paths relative to `relative_to` if given."""
    record = {name: getattr(item, name) for name in _FIELDS}
    record["options"] = list(item.options)
    if relative_to is not None:
        record["video"] = os.path.relpath(item.video, relative_to)
    return {k: v for k, v in record.items() if v not in (None, "")}


def write_manifest(items: list[Item], path: str | os.PathLike) -> Path:
    """Write items as a JSONL manifest, video paths relative to the manifest's folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(item_to_record(item, path.parent.resolve()), ensure_ascii=False) for item in items]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
